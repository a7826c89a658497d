"""The evaluation stage's settings."""
from __future__ import annotations

import dataclasses

from rlhf_jax import eval as rl_eval
from rlhf_jax.sampling import SamplingConfig
from rlhf_jax.stages.configs.ppo import PromptData


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Sample one response to each of the first `samples` prompts of `prompts.file` from
    `policy_dir` (through its chat template, or `chat_template`) and judge them: the
    profanity classifier's rate (alt-profanity-check, packaged and offline: the toxicity
    measure here), the `gold` text judge, distinct-1/2, length, the share ending in an end
    token; KL to `reference_dir` when given; the reward model at `reward_dir` as a proxy when
    given. Writes eval.json, samples.jsonl and report.md to `run_dir`."""

    run_dir: str = "runs/eval"  # where eval.json, samples.jsonl and report.md go
    policy_dir: str = ""  # the policy to evaluate (a local Hugging Face directory)
    reference_dir: str = ""  # the KL reference (a local HF directory); empty: no KL
    reward_dir: str = ""  # a reward-model export to score the responses; empty: none
    # a multi-objective reward model's heads: name=weight,... as PPO used them (empty: equal)
    objective_weights: str = ""
    chat_template: str = ""  # a Jinja chat template file for the tokenizer (empty: its own)
    prompts: PromptData = PromptData()
    samples: int = 256  # prompts evaluated (the file's first ones; 0: every prompt)
    batch_size: int = 32  # prompts sampled at once
    gold: str = "vader"  # a text judge of eval.TEXT_TERMS
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=32)
    seed: int = 0  # sampling seed
    report_samples: int = 8  # samples shown in the report

    def __post_init__(self):
        if self.gold not in rl_eval.TEXT_TERMS:
            raise ValueError(f"gold={self.gold!r}: expected one of {sorted(rl_eval.TEXT_TERMS)}")
        if self.samples < 0 or self.batch_size < 1:
            raise ValueError(f"samples={self.samples}, batch_size={self.batch_size}: expected "
                             "samples >= 0 and batch_size >= 1")
