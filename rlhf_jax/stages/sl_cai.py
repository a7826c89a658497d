"""SL-CAI, the supervised stage of Constitutional AI (Bai et al. 2022, §3): the policy critiques
and revises its own answers against a constitution, and the SFT stage fine-tunes it on prompt +
final revision (`train_sl_cai(CritiqueRevisionConfig(...))`, `experiments/critique_revision.py`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rlhf_jax import data, models, rlaif, train
from rlhf_jax.sampling import SamplingConfig, TextSampler
from rlhf_jax.stages.layout import check_run_config, record_run_config
from rlhf_jax.stages.configs.sl_cai import CritiqueRevisionConfig  # noqa: F401 (re-exported)
from rlhf_jax.stages.sft import train_sft


def train_sl_cai(cfg: CritiqueRevisionConfig):
    """Generate response → critique → revision for `cfg.rounds` rounds, store all of it, and
    fine-tune the policy on prompt + final revision (`stages.train_sft`, run dir `<run_dir>/sft`,
    export `<run_dir>/sft/export`). Returns the SFT stage's result."""
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    if not Path(cfg.policy_dir).is_dir():
        raise models.CheckpointFormatError(f"policy_dir={cfg.policy_dir!r} does not exist (run "
                                           "the main job first, or point it at a policy)")
    cons = rlaif.load_constitution(cfg.constitution or rlaif.DEFAULT_CONSTITUTION,
                                   known_judges=rlaif.CLASSIFIERS)
    texts = ([r["prompt"] for r in data.read_records(cfg.prompts_file, "prompt")[0]]
             if cfg.prompts_file else list(data.builtin.PROMPTS))
    prompts = [texts[i % len(texts)] for i in range(cfg.num_prompts)]
    revisions = root / "revisions.jsonl"
    generation = {k: v for k, v in train.config_to_dict(cfg).items() if k not in ("sft",
                                                                                   "run_dir")}
    check_run_config(root / "generation.json", generation)  # no stale revisions reused
    if not (root / "generation.json").is_file():  # written last: marks a finished generation
        sampler = TextSampler(cfg.policy_dir, max_len=cfg.max_len,
                              sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens))
        records = rlaif.critique_revision(sampler, cons, prompts, rounds=cfg.rounds,
                                          seed=cfg.seed)
        kept = [_sft_record(r["prompt"], r["final"]) for r in records if r["final"].strip()]
        data.builtin.write_jsonl(root / "sft_texts.jsonl", kept)
        data.builtin.write_jsonl(revisions, records)
        record_run_config(root / "generation.json", generation)
        print(f"{len(records)} prompts critiqued and revised ({cfg.rounds} round(s)); "
              f"{len(kept)} revisions for fine-tuning -> {revisions}", flush=True)
    sft = dataclasses.replace(cfg.sft, run_dir=str(root / "sft"), model_dir=cfg.policy_dir,
                              seed=cfg.seed,
                              data=dataclasses.replace(cfg.sft.data, source="text",
                                                       file=str(root / "sft_texts.jsonl")))
    return train_sft(sft)


def _sft_record(prompt, final: str) -> dict:
    """What SFT learns from a revision: the revision after its prompt, the prompt itself not
    learnt (Bai et al. 2022, §3.1: fine-tune on the final revisions); for a conversation the
    revision is its assistant turn (through the chat template)."""
    if isinstance(prompt, str):
        return {"prompt": prompt, "completion": f" {final}"}
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": final}]}
