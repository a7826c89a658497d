"""The online DPO stage's settings."""
from __future__ import annotations

import dataclasses

from rlhf_jax import eval as rl_eval, offline
from rlhf_jax.checkpoint import CheckpointConfig
from rlhf_jax.sampling import SamplingConfig
from rlhf_jax.stages.configs.ppo import PromptData
from rlhf_jax.stages.configs.run import RunConfig
from rlhf_jax.train import OptimizerConfig

REWARD_MODEL = "reward_model"  # the judge that is the reward model at `reward_dir`
CONSTITUTION = "constitution"  # the AI judge of a written constitution (`rlaif`)


@dataclasses.dataclass(frozen=True)
class OnlineDPOConfig(RunConfig):
    """Online DPO (Guo et al. 2024, "Direct language model alignment from online AI
    feedback"): every step the current policy answers `batch_size` prompts
    `samples_per_prompt` times, `judge` scores the answers, and the pairwise loss
    `loss.method` (`offline.PAIRWISE`: dpo, cdpo, rdpo, ipo, simpo, orpo) is taken on each
    prompt's best answer against each answer ranked below it, with the initial policy (LoRA: its
    base, adapters off) as the reference.

    `judge`: "reward_model" (the export at `reward_dir`, as in PPO: an ensemble scores mean −
    `reward_std_coef`·std, a multi-objective model Σ λ_k r_k by `objective_weights`) or a text
    scorer of `eval.TEXT_TERMS` (e.g. "vader", the built-in task's gold judge, for studies).
    "constitution": the AI judge of the constitution file `constitution` (empty: the packaged
    default; principles judged by "lm" read the language model at `judge_model_dir`) compares every
    pair of a prompt's answers, and an answer's score is its expected wins
    (`rlaif.round_robin_scores`). Equal scores are ties, which the loss skips; an answer without EOS
    ranks below every answer that has one. `sampling` and `stop_tokens` are PPO's: the chat
    template's end of turn and the tokenizer's EOS end a response. The loss reads log-probabilities
    at temperature 1 (the policy's own), whatever the sampling temperature.
    """

    run_dir: str = "runs/online_dpo"
    policy_dir: str = ""  # local HF directory of the policy (= reference); empty: preset
    chat_template: str = ""  # a Jinja chat template file for the tokenizer (empty: its own)
    preset: str = "tiny-llama"  # built-in model size when policy_dir is empty
    # reward_model | constitution | a text scorer (vader, vader_diverse, words, ...)
    judge: str = REWARD_MODEL
    constitution: str = ""  # judge=constitution: its file (empty: the packaged default)
    judge_model_dir: str = ""  # judge=constitution: HF directory of the LM judge ("lm" principles)
    reward_dir: str = "runs/reward/export"  # judge=reward_model: the reward model's export
    reward_std_coef: float = 0.0  # ensemble reward: score mean - k*std (0: the mean)
    # a multi-objective reward model's heads: name=weight,... (empty: equal weights)
    objective_weights: str = ""
    prompts: PromptData = PromptData()
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=10)
    stop_tokens: str = ""  # comma-separated single tokens that end a response like EOS
    samples_per_prompt: int = 2  # K >= 2 answers per prompt, ranked by the judge
    loss: offline.OfflineLossConfig = offline.OfflineLossConfig()
    steps: int = 100  # steps in total (each samples, judges and updates once)
    batch_size: int = 16  # prompts per step, over all processes (× samples_per_prompt answers)
    optim: OptimizerConfig = OptimizerConfig(learning_rate=1e-4, warmup_steps=0,
                                             total_steps=0, schedule="constant",
                                             weight_decay=0.0)
    checkpoint: CheckpointConfig = CheckpointConfig(save_every=20, keep_last=2)

    def __post_init__(self):
        super().__post_init__()
        if self.loss.method not in offline.PAIRWISE:
            raise ValueError(f"loss.method={self.loss.method!r}: online DPO takes a pairwise "
                             f"loss, one of {', '.join(offline.PAIRWISE)} (KTO, AWR and "
                             "filtered BC read labels, not pairs)")
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt={self.samples_per_prompt}: online DPO needs "
                             ">= 2 answers per prompt to make a pair")
        if self.judge not in (REWARD_MODEL, CONSTITUTION) and \
                self.judge not in rl_eval.TEXT_TERMS:
            raise ValueError(f"judge={self.judge!r}: expected {REWARD_MODEL!r}, "
                             f"{CONSTITUTION!r} or a text scorer, one of "
                             f"{sorted(rl_eval.TEXT_TERMS)}")
        if (self.constitution or self.judge_model_dir) and self.judge != CONSTITUTION:
            raise ValueError("constitution / judge_model_dir are the constitution judge's; "
                             f"judge={self.judge!r} does not read them")
        if self.judge == REWARD_MODEL and not self.reward_dir:
            raise ValueError("judge='reward_model' needs reward_dir (a reward model's export, "
                             "from experiments/train_reward.py); or judge by a text scorer")
        if self.reward_std_coef < 0:
            raise ValueError(f"reward_std_coef={self.reward_std_coef}: expected >= 0")
        if self.judge != REWARD_MODEL and (self.reward_std_coef or self.objective_weights):
            raise ValueError(f"reward_std_coef / objective_weights shape a reward model's "
                             f"score; judge={self.judge!r} is no reward model")
