"""The PPO stage's settings."""
from __future__ import annotations

import dataclasses

from rlhf_jax import data, eval as rl_eval, ppo
from rlhf_jax.checkpoint import CheckpointConfig
from rlhf_jax.ppo.config import ConstraintConfig
from rlhf_jax.sampling import SamplingConfig
from rlhf_jax.stages.configs.refresh import RewardRefreshConfig
from rlhf_jax.stages.configs.run import RunConfig
from rlhf_jax.train import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class PromptData:
    """Prompts: the `field` of a JSONL/JSON/Parquet `file` — text, a conversation ending on a
    user turn (rendered with the chat template's generation prompt), or an HH-RLHF transcript;
    a dotted `field` reads a nested one (RealToxicityPrompts: `prompt.text`). Empty file: the
    built-in prompts. `max_prompt_len` 0 keeps 8 tokens of the built-in prompts and 512 of a
    file's; rollouts are padded to the `buckets` rung of their longest prompt."""

    file: str = ""  # JSONL/JSON/Parquet with prompts; empty: the built-in prompts
    field: str = "prompt"  # the prompt's field; dotted for a nested one (prompt.text)
    max_prompt_len: int = 0  # prompt tokens kept (cut from the left); 0: 8 built-in, 512 a file
    on_error: str = "raise"  # raise: stop at a malformed record; skip: skip and count it
    buckets: str = "auto"  # padded prompt lengths: auto (4 rungs halving from the max) | off

    def __post_init__(self):
        if self.max_prompt_len < 0:
            raise ValueError(f"prompts.max_prompt_len={self.max_prompt_len}: expected > 0 (or "
                             "0: the default)")
        data.ladder(max(self.max_prompt_len, 1), self.buckets)  # a malformed spec fails here

    @property
    def prompt_len(self) -> int:
        """`max_prompt_len`, or its default for the built-in prompts (8) or a file (512)."""
        return self.max_prompt_len or (512 if self.file else 8)


@dataclasses.dataclass(frozen=True)
class PtxData:
    """PPO-ptx text (`text`, `messages` or `prompt` + `completion` records, each ending with
    EOS or its end of turn; empty file: the built-in corpus), used when ppo.ptx_coef > 0."""

    file: str = ""  # JSONL/JSON/Parquet of texts or conversations; empty: the built-in corpus
    batch_size: int = 16  # text rows per iteration, over all processes
    max_len: int = 0  # tokens per text row; 0: 24 for the built-in corpus, 1024 for a file

    def __post_init__(self):
        if self.max_len < 0:
            raise ValueError(f"ptx.max_len={self.max_len}: expected > 0 (or 0: the default)")

    @property
    def row_len(self) -> int:
        """The row length: `max_len`, or its default for the built-in corpus or a file."""
        return self.max_len or (1024 if self.file else 24)


# the smallest value of each text scorer (a constraint's limit below it cannot be met)
_LOWEST = {"profanity": 0.0, "repetition": 0.0, "words": 0.0, "vader": -1.0,
           "vader_diverse": -1.0}


def _default_terms() -> dict:
    return {"vader": 0.0, "repetition": 0.0, "words": 0.0}


@dataclasses.dataclass(frozen=True)
class PPOStageConfig(RunConfig):
    """PPO (or RLOO / GRPO) from a reward model with a per-token KL penalty toward the policy's
    initial weights (Ouyang et al. 2022; defaults from Huang et al. 2023).

    `critic`: "reward" (a separate critic initialised from the reward model) or "shared" (a value
    head on the policy); critic-free advantages (`rollout.advantage` rloo / grpo) use neither.
    `sampling`'s EOS ids are completed with the chat template's end-of-turn token, the
    tokenizer's EOS and `stop_tokens` (comma-separated single vocabulary tokens that end a
    response); its pad id is replaced by the tokenizer's. An ensemble reward model scores
    mean − `reward_std_coef`·std.
    `reward_terms` weights text scorers (`eval.TEXT_TERMS`) added to the score; `monitor_terms`
    are logged each iteration without weight, the first also judges the before/after samples.
    `decision_log` appends every iteration's reward-model decisions to a hash-chained JSONL
    (`interpret.DecisionLog`; see `stages.decisions.DecisionRecorder`). `refresh` (off by default) retrains the
    reward model on labelled samples of the current policy every `refresh.every` iterations
    (`stages.refresh`).
    """

    run_dir: str = "runs/ppo"
    log_every: int = 5
    policy_dir: str = ""  # local HF directory of the policy (= reference); empty: preset
    chat_template: str = ""  # a Jinja chat template file for the tokenizer (empty: its own)
    preset: str = "tiny-llama"  # built-in model size when policy_dir is empty
    reward_dir: str = "runs/reward/export"  # the export of RewardConfig's default run_dir
    critic: str = "reward"  # reward: critic initialised from the reward model; shared: value head
    critic_lora: bool = True  # with lora.rank > 0: the critic trains adapters (False: all weights)
    reward_std_coef: float = 0.0  # ensemble reward: score mean - k*std (0: the mean)
    # a multi-objective reward model's heads: name=weight,... (empty: equal weights)
    objective_weights: str = ""
    prompts: PromptData = PromptData()
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=10)
    stop_tokens: str = ""  # comma-separated single tokens that end a response like EOS
    rollout: ppo.RolloutConfig = ppo.RolloutConfig(missing_eos_penalty=-1.0)
    kl: ppo.KLConfig = ppo.KLConfig()
    ppo: ppo.PPOConfig = ppo.PPOConfig(num_minibatches=2)
    ptx: PtxData = PtxData()
    # a cost whose mean is held at most a limit by a learned Lagrange multiplier (Safe RLHF)
    constraint: ConstraintConfig = ConstraintConfig()
    # text scorer name -> weight added to the score (0: off)
    reward_terms: dict = dataclasses.field(default_factory=_default_terms)
    monitor_terms: str = ""  # comma-separated text scorers logged without weight
    steps: int = 40  # PPO iterations in total
    batch_size: int = 32  # prompts per iteration (× rollout.group_size samples)
    optim: OptimizerConfig = OptimizerConfig(learning_rate=1e-4, total_steps=0,
                                             schedule="constant")
    eval_prompts: int = 16  # samples written before and after training
    checkpoint: CheckpointConfig = CheckpointConfig(save_every=10, keep_last=2)
    # JSONL decision log (empty: off): each iteration appends one hash-chained entry per sampled
    # response (reward-model hash, input hash, the reward model's score before clipping, terms
    # and the missing-EOS penalty, ensemble std); check it with `python -m
    # rlhf_jax.interpret.decisions verify FILE`
    decision_log: str = ""
    # reward-model refresh on the policy's own samples every refresh.every iterations (0: off)
    refresh: RewardRefreshConfig = RewardRefreshConfig()

    def __post_init__(self):
        super().__post_init__()
        if self.critic not in ("reward", "shared"):
            raise ValueError(f"critic={self.critic!r}: expected 'reward' or 'shared'")
        if self.reward_std_coef < 0:
            raise ValueError(f"reward_std_coef={self.reward_std_coef}: expected >= 0")
        names = set(rl_eval.TEXT_TERMS)
        cost = self.constraint.cost
        if cost and cost not in names and not cost.startswith("objective:"):
            raise ValueError(f"constraint.cost={cost!r}: expected one of {sorted(names)} or "
                             "objective:<name>")
        lowest = _LOWEST.get(cost)
        if lowest is not None and self.constraint.limit < lowest:
            raise ValueError(f"constraint.limit={self.constraint.limit}: the {cost} cost is "
                             f"never below {lowest}, so the limit could not be met")
        if self.constraint.cost and self.reward_terms.get(self.constraint.cost):
            raise ValueError(f"constraint.cost={self.constraint.cost!r} is also weighted in "
                             f"reward_terms ({self.reward_terms[self.constraint.cost]}): it "
                             "would count twice; set reward_terms."
                             f"{self.constraint.cost}=0")
        for name in list(self.reward_terms) + list(filter(None, self.monitor_terms.split(","))):
            if name not in names:
                raise ValueError(f"unknown text scorer {name!r} in reward_terms/monitor_terms; "
                                 f"expected some of {sorted(names)}")
