"""Labelling tasks: a prompt with 2..K responses, read from JSONL or sampled from a policy."""
from __future__ import annotations

from typing import Optional

import jax

from rlhf_jax.data import DataFormatError, iter_raw_records
from rlhf_jax.data.conversation import (ConversationError, check_completion, check_messages,
                                        check_prompt, prompt_record_text, response_text)
from rlhf_jax.data.records import check_data_file
from rlhf_jax.labelling.config import MAX_RESPONSES
from rlhf_jax.labelling.entities import unstorable
from rlhf_jax.sampling import SamplingConfig, TextSampler



def read_tasks(path, max_responses: int = MAX_RESPONSES) -> list[dict]:
    """Tasks from a JSONL/JSON/Parquet file, one object a record: {"prompt": text or a
    conversation (messages ending on a user turn), "responses": [2..max_responses distinct,
    non-empty texts, or assistant turns], optional "id": str, optional "meta": object}.
    A conversation is stored as its JSON message list (`data.prompt_record_text`), each
    response as its text. A malformed record, or one holding text no database stores (a NUL
    character, an unpaired surrogate), raises `DataFormatError` naming the file, line and
    field."""
    path = check_data_file(path)
    out, ids = [], set()
    for line, rec in iter_raw_records(path):
        where = f"{path}:{line}"
        if isinstance(rec, Exception):
            raise rec
        if not isinstance(rec, dict):
            raise DataFormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        for field in ("prompt", "responses", "id", "meta"):
            why = unstorable(rec.get(field))
            if why:
                raise DataFormatError(f"{where}: field {field!r} {why}, which no database "
                                      "stores")
        prompt = _prompt(rec.get("prompt"), where)
        responses = rec.get("responses")
        if isinstance(responses, list) and not isinstance(prompt, str):
            responses = [_reply(r, where) for r in responses]
        if (not isinstance(responses, list) or not 2 <= len(responses) <= max_responses
                or not all(isinstance(r, str) and r.strip() for r in responses)):
            kind = "strings" if isinstance(prompt, str) else "assistant replies"
            raise DataFormatError(f"{where}: field 'responses' must be a list of 2 to "
                                  f"{max_responses} non-empty {kind}")
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
        out.append({"prompt": prompt_record_text(prompt), "responses": responses, "id": tid,
                    "meta": meta})
    if not out:
        raise DataFormatError(f"{path}: no tasks")
    return out


def _prompt(value, where: str):
    """A task's prompt: non-empty text, or messages ending on a user turn."""
    if isinstance(value, (list, dict)):
        try:
            return check_prompt(check_messages(value, "prompt"))
        except ConversationError as e:
            raise DataFormatError(f"{where}: {e}") from None
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(f"{where}: field 'prompt' must be a non-empty string or a list "
                              "of messages")
    return value


def _reply(value, where: str):
    """A response to a conversation: its text, or the text of its assistant turns."""
    if isinstance(value, str):
        return value
    try:
        return response_text(check_completion(check_messages(value, "responses"), "responses"))
    except ConversationError as e:
        raise DataFormatError(f"{where}: {e}") from None


def sample_tasks(policy_dir: str, prompts: list, *, num_responses: int = 2,
                 max_prompt_len: int = 64, sampling: Optional[SamplingConfig] = None,
                 seed: int = 0, batch_size: int = 64, max_tries: int = 4,
                 sampler: Optional[TextSampler] = None) -> list[dict]:
    """Tasks sampled on the spot: `num_responses` distinct responses to each prompt from the
    policy checkpoint at `policy_dir` (a Hugging Face directory), through our sampler
    (`sampling.TextSampler`; pass `sampler` to reuse a loaded one). Responses that come out
    empty, repeated or unstorable (a NUL character) are resampled up to `max_tries` times; a
    prompt that still lacks distinct responses is left out. Each task's meta records the
    policy directory and the seed. A prompt may be a conversation (sampled through the chat
    template, stored as JSON)."""
    if sampler is None:
        sampler = TextSampler(policy_dir, max_len=max_prompt_len, sampling=sampling,
                              batch_size=batch_size)
    key = jax.random.key(seed)
    found = [[] for _ in prompts]
    for attempt in range(max_tries):
        rows = [i for i, f in enumerate(found) if len(f) < num_responses
                for _ in range(num_responses)]
        if not rows:
            break
        texts = sampler([prompts[i] for i in rows], jax.random.fold_in(key, attempt))
        for i, text in zip(rows, texts):
            if (text and text not in found[i] and len(found[i]) < num_responses
                    and not unstorable(text)):
                found[i].append(text)
    return [{"prompt": prompt_record_text(p), "responses": r, "id": None,
             "meta": {"policy_dir": str(policy_dir), "seed": seed}}
            for p, r in zip(prompts, found) if len(r) == num_responses]
