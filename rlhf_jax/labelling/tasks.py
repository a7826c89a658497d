"""Labelling tasks: a prompt with 2..K responses, read from JSONL or sampled from a policy."""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import numpy as np

from rlhf_jax import data, models
from rlhf_jax.data import DataFormatError, iter_raw_records
from rlhf_jax.data.records import check_data_file
from rlhf_jax.sampling import SamplingConfig, generate

MAX_RESPONSES = 9  # responses are lettered A-I and ranked with one digit


def read_tasks(path, max_responses: int = MAX_RESPONSES) -> list[dict]:
    """Tasks from a JSONL file, one object a line: {"prompt": str, "responses": [str, …]
    (2..max_responses, distinct, not empty), optional "id": str, optional "meta": object}.
    A malformed line raises `DataFormatError` naming the file, line and field."""
    path = check_data_file(path)
    out, ids = [], set()
    for line, rec in iter_raw_records(path):
        where = f"{path}:{line}"
        if isinstance(rec, Exception):
            raise rec
        if not isinstance(rec, dict):
            raise DataFormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        prompt = rec.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataFormatError(f"{where}: field 'prompt' must be a non-empty string")
        responses = rec.get("responses")
        if (not isinstance(responses, list) or not 2 <= len(responses) <= max_responses
                or not all(isinstance(r, str) and r.strip() for r in responses)):
            raise DataFormatError(f"{where}: field 'responses' must be a list of 2 to "
                                  f"{max_responses} non-empty strings")
        if len(set(responses)) != len(responses):
            raise DataFormatError(f"{where}: field 'responses' holds the same text twice")
        tid = rec.get("id")
        if tid is not None and (not isinstance(tid, str) or not 0 < len(tid) <= 128):
            raise DataFormatError(f"{where}: field 'id' must be a string of 1-128 characters")
        if tid is not None and tid in ids:
            raise DataFormatError(f"{where}: field 'id'={tid!r} repeats an earlier task's id")
        ids.add(tid)
        meta = rec.get("meta", {})
        if not isinstance(meta, dict):
            raise DataFormatError(f"{where}: field 'meta' must be a JSON object")
        out.append({"prompt": prompt, "responses": responses, "id": tid, "meta": meta})
    if not out:
        raise DataFormatError(f"{path}: no tasks")
    return out


def sample_tasks(policy_dir: str, prompts: list[str], *, num_responses: int = 2,
                 max_prompt_len: int = 64, sampling: Optional[SamplingConfig] = None,
                 seed: int = 0, batch_size: int = 64, max_tries: int = 4) -> list[dict]:
    """Tasks sampled on the spot: `num_responses` distinct responses to each prompt from the
    policy checkpoint at `policy_dir` (a Hugging Face directory), through our sampler
    (`sampling.generate`). Responses that come out empty or repeated are resampled up to
    `max_tries` times; a prompt that still lacks distinct responses is left out. Each task's
    meta records the policy directory and the seed."""
    config, params = models.load_hf_checkpoint(policy_dir)
    tok = models.load_tokenizer(policy_dir, config)
    if sampling is None:
        sampling = SamplingConfig(max_new_tokens=24)
    eos = (() if tok.eos_token_id is None else (tok.eos_token_id,)) + sampling.eos_token_ids
    sampling = dataclasses.replace(sampling, eos_token_ids=tuple(dict.fromkeys(eos)),
                                   pad_token_id=tok.pad_token_id or 0)
    counts = {"prompts_truncated": 0}
    key = jax.random.key(seed)
    found = [[] for _ in prompts]
    for attempt in range(max_tries):
        todo = [i for i, f in enumerate(found) if len(f) < num_responses]
        if not todo:
            break
        for start in range(0, len(todo), batch_size):
            rows = [i for i in todo[start:start + batch_size] for _ in range(num_responses)]
            enc = np.stack([data.preference.encode_prompt(tok, prompts[i], max_prompt_len,
                                                          counts) for i in rows])
            batch = data.prompt_arrays(enc, tok.pad_token_id or 0)
            out = generate(params, batch["tokens"], batch["mask"],
                           jax.random.fold_in(key, attempt * 100_003 + start),
                           config=config, sampling=sampling)
            toks, mask = jax.device_get((out.tokens, out.mask))
            for i, t, m in zip(rows, toks, mask):
                text = tok.decode(t[m > 0], skip_special_tokens=True)
                if text.strip() and text not in found[i] and len(found[i]) < num_responses:
                    found[i].append(text)
    return [{"prompt": p, "responses": r, "id": None,
             "meta": {"policy_dir": str(policy_dir), "seed": seed}}
            for p, r in zip(prompts, found) if len(r) == num_responses]
