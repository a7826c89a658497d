"""Iterative preference learning's settings."""
from __future__ import annotations

import dataclasses

from rlhf_jax import eval as rl_eval, offline
from rlhf_jax.reward.config import ACQUISITIONS
from rlhf_jax.stages.configs.offline import OfflineConfig, OfflineData
from rlhf_jax.stages.configs.reward import RewardConfig
from rlhf_jax.train import OptimizerConfig

LABEL_SOURCES = ("judge", "simulated", "app")
REWARD_MODEL = "reward_model"  # the judge that is the reward model at `reward_dir`
CONSTITUTION = "constitution"  # the AI judge of a written constitution (`rlaif`)


@dataclasses.dataclass(frozen=True)
class IterativeDPOConfig:
    """Iterative DPO (Xiong et al. 2024, "Iterative preference learning from human feedback:
    bridging theory and practice for RLHF under KL-constraint"; OpenRLHF's iterative DPO): for
    rounds r = 0, 1, …, `rounds` − 1 the round's starting policy (round 0: `policy_dir`, then
    the last round's) answers `prompts_per_round` prompts `samples_per_prompt` times, the
    answers are labelled, and the offline stage (`offline`, DPO by default) trains on the labels
    from that policy, against the initial policy (`reference="initial"`, the paper's KL anchor)
    or the round's start ("previous").

    `labels`:
    - "judge": `judge` (the reward model at `reward_dir`, the mean of its heads: an
      ensemble's members or a multi-objective model's objectives, equally weighted;
      "constitution", the AI judge of the constitution file `constitution` comparing every
      pair of a prompt's answers, an answer scoring its expected wins,
      `rlaif.round_robin_scores`; or a text scorer of `eval.TEXT_TERMS`) scores every answer
      and each prompt gives its best answer against its worst (RLHFlow's best-vs-worst pairs);
      equal scores give no pair.
    - "simulated": Bradley–Terry annotators with `annotator_temperatures` around the text
      scorer `judge` label pairs of answers.
    - "app": the pairs become tasks in the labelling app's database `app_db`; the run stops
      until each has `app_labels_per_task` labels, and a rerun goes on (as active learning).
    With people in the loop (simulated or app), `acquisition` (random | entropy | disagreement |
    bald, `reward.acquisition`, scored by the reward model at `reward_dir`, an ensemble for the
    last two, not a multi-objective model) chooses `labels_per_round` of every prompt's
    candidate pairs, at most one per prompt until each prompt with a candidate has one, then
    the best of the rest; empty: one pair per prompt, its first two distinct answers.

    `refresh_reward`: after each round the reward stage (`reward`) trains a new reward model on
    `reward_file` (e.g. the comparisons `reward_dir` learned from) and every label so far,
    from `policy_dir`'s backbone; it is the next round's `reward_dir` (judge and acquisition).
    `train_on`: "all" labels so far or this "round"'s. Rerun with more `rounds` to go on.
    """

    run_dir: str = "runs/iterative_dpo"  # one directory per round, config.json, history.jsonl
    seed: int = 0  # seeds the prompts drawn, the sampling, the labels and the stages
    # the round-0 policy (a local HF directory): the main job's SFT export by default
    policy_dir: str = "runs/pipeline/sft/export"
    chat_template: str = ""  # a Jinja chat template file for the tokenizer (empty: its own)
    prompts_file: str = ""  # prompts (text or conversations); empty: the built-in prompts
    prompts_field: str = "prompt"  # the prompts' field; dotted for a nested one
    max_prompt_len: int = 8  # prompt tokens kept (from the left)
    max_new_tokens: int = 10  # answer tokens sampled
    # answer tokens the offline stage and the reward model read, the end of turn included
    # (0: max_new_tokens + 2, the main job's); a chat template's end of turn may take more
    max_response_len: int = 0
    temperature: float = 1.0  # sampling temperature
    rounds: int = 3  # rounds in all (a rerun with more goes on)
    prompts_per_round: int = 128  # prompts drawn each round
    samples_per_prompt: int = 4  # K >= 2 answers per prompt
    labels: str = "judge"  # judge | simulated | app
    # reward_model | constitution | a text scorer (vader, vader_diverse, words, ...)
    judge: str = REWARD_MODEL
    constitution: str = ""  # judge=constitution: its file (empty: the packaged default)
    judge_model_dir: str = ""  # judge=constitution: HF directory of the LM judge ("lm" principles)
    reward_dir: str = "runs/pipeline/reward/export"  # the reward model (judge, acquisition)
    annotator_temperatures: str = "0.15,0.3,0.6"  # labels=simulated: Bradley-Terry noise
    app_db: str = ""  # labels=app: the labelling app's database (path or URL)
    app_labels_per_task: int = 1  # labels=app: annotators per pair
    acquisition: str = ""  # labels simulated | app: random | entropy | disagreement | bald
    labels_per_round: int = 0  # with acquisition: pairs per round (0: one per prompt drawn)
    train_on: str = "all"  # all (every round's labels so far) | round (this round's)
    reference: str = "initial"  # initial (round 0's policy) | previous (the round's start)
    refresh_reward: bool = False  # retrain the reward model on every label after each round
    reward_file: str = ""  # refresh_reward: comparisons it learns from besides the labels
    offline: OfflineConfig = OfflineConfig(
        steps=60, batch_size=32, eval_every=0, data=OfflineData(validation_fraction=0.0),
        optim=OptimizerConfig(learning_rate=3e-4, warmup_steps=5, total_steps=0,
                              weight_decay=0.0))
    reward: RewardConfig = RewardConfig(steps=150)

    def __post_init__(self):
        if not self.policy_dir:
            raise ValueError("policy_dir: iterative DPO starts from a trained policy (a local "
                             "HF directory, e.g. the main job's runs/pipeline/sft/export)")
        if self.labels not in LABEL_SOURCES:
            raise ValueError(f"labels={self.labels!r}: expected one of {LABEL_SOURCES}")
        if self.judge not in (REWARD_MODEL, CONSTITUTION) and \
                self.judge not in rl_eval.TEXT_TERMS:
            raise ValueError(f"judge={self.judge!r}: expected {REWARD_MODEL!r}, "
                             f"{CONSTITUTION!r} or one of {sorted(rl_eval.TEXT_TERMS)}")
        if (self.constitution or self.judge_model_dir) and self.judge != CONSTITUTION:
            raise ValueError("constitution / judge_model_dir are the constitution judge's; "
                             f"judge={self.judge!r} does not read them")
        if self.labels == "simulated" and self.judge in (REWARD_MODEL, CONSTITUTION):
            raise ValueError("labels=simulated: the annotators follow a text scorer; set judge "
                             f"to one of {sorted(rl_eval.TEXT_TERMS)}")
        if self.labels == "app" and not self.app_db:
            raise ValueError("labels=app needs app_db (the labelling app's database)")
        if self.acquisition and self.acquisition not in ACQUISITIONS:
            raise ValueError(f"acquisition={self.acquisition!r}: expected one of "
                             f"{ACQUISITIONS} (or empty)")
        if self.acquisition and self.labels == "judge":
            raise ValueError("acquisition chooses which pairs go to people: it needs labels="
                             "simulated or app (a judge labels every answer anyway)")
        needs_rm = (self.labels == "judge" and self.judge == REWARD_MODEL) or \
            bool(self.acquisition)
        if needs_rm and not self.reward_dir:
            raise ValueError("reward_dir: the judge or the acquisition function reads a reward "
                             "model; set it (e.g. runs/pipeline/reward/export)")
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt={self.samples_per_prompt}: a pair needs >= 2")
        if self.max_response_len < 0:
            raise ValueError(f"max_response_len={self.max_response_len}: expected >= 0")
        for name in ("rounds", "prompts_per_round", "max_prompt_len", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        if self.labels_per_round < 0 or (self.labels_per_round and not self.acquisition):
            raise ValueError(f"labels_per_round={self.labels_per_round}: a count >= 0, used "
                             "with an acquisition function")
        if self.train_on not in ("all", "round"):
            raise ValueError(f"train_on={self.train_on!r}: expected 'all' or 'round'")
        if self.reference not in ("initial", "previous"):
            raise ValueError(f"reference={self.reference!r}: expected 'initial' or 'previous'")
        if self.offline.loss.method not in offline.PAIRWISE and not self.offline.loss.custom:
            raise ValueError(f"offline.loss.method={self.offline.loss.method!r}: the rounds "
                             f"give pairs: a pairwise loss ({', '.join(offline.PAIRWISE)})")
        if self.offline.data.kind != "pairwise":
            raise ValueError("offline.data.kind: the rounds' labels are pairwise")
        for name in ("offline", "reward"):  # each round's stage, found before any sampling
            stage = getattr(self, name)
            if not stage.optim.total_steps and stage.optim.warmup_steps > stage.steps:
                raise ValueError(f"{name}.optim.warmup_steps={stage.optim.warmup_steps} "
                                 f"exceeds {name}.steps={stage.steps} (each round's schedule)")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: expected > 0")

    @property
    def response_len(self) -> int:
        """`max_response_len`, or max_new_tokens + 2."""
        return self.max_response_len or self.max_new_tokens + 2

    @property
    def temperatures(self) -> tuple:
        """The simulated annotators' temperatures."""
        try:
            temps = tuple(float(t) for t in self.annotator_temperatures.split(",") if t.strip())
        except ValueError:
            temps = ()
        if not temps or min(temps) <= 0:
            raise ValueError(f"annotator_temperatures={self.annotator_temperatures!r}: "
                             "expected comma-separated positive numbers")
        return temps
