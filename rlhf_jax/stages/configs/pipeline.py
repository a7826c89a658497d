"""The main job's settings: every stage's config, and the fields the pipeline sets in them."""
from __future__ import annotations

import dataclasses

from rlhf_jax import eval as rl_eval, models, offline
from rlhf_jax.ppo import KLConfig
from rlhf_jax.stages.configs.offline import OfflineConfig
from rlhf_jax.stages.configs.online import OnlineDPOConfig
from rlhf_jax.stages.configs.ppo import PPOStageConfig
from rlhf_jax.stages.configs.reward import RewardConfig
from rlhf_jax.stages.configs.sft import SFTConfig, SFTData


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The whole run. Each stage's settings are its own config (`sft`, `reward`, `ppo`,
    `online`, `offline`); the pipeline sets their run directories, seeds, compilation cache and inputs
    (model_dir / policy_dir, data files, prompt and response lengths) from its fields below.

    `method` picks how the policy learns from the comparisons: "ppo" (GAE with a critic),
    "rloo" or "grpo" (critic-free, `group_size` samples per prompt) against the reward model,
    "best_of_n" (no training: `best_of_n` samples of the starting policy reranked by the
    reward model), an offline method straight from the comparisons (`offline.METHODS`:
    dpo, cdpo, rdpo, ipo, simpo, orpo, kto, awr, filtered_bc), or "online_dpo" (the policy's
    own samples, ranked at every step by the reward model, or by `online.judge`; its loss is
    `online.loss.method`, DPO by default). The reward model is trained in every case: it is the
    proxy the report measures. PPO, RLOO and GRPO can refresh it on labelled samples of the
    policy during training (`ppo.refresh`, off by default; `stages.refresh`).

    `policy_dir`: a local HF directory to start from (with its tokenizer, and its chat template
    or `chat_template`); empty: the tiny preset with a tokenizer trained on the built-in corpus.
    Files may hold plain text or conversations (`data.read_records`); conversations go through
    the chat template in every stage, and responses end with its end-of-turn token.
    Lengths of 0 are sized for the data: 8 prompt / 10 response tokens on the built-in task,
    512 / 256 with a `policy_dir` (`prompt_len`, `new_tokens`). `preference_file`: your pairwise
    comparisons; empty: simulated annotators (Bradley–Terry noise with `annotator_temperatures`
    around the `gold` judge of `eval.TEXT_TERMS`) label pairs of SFT samples. `sft.steps = 0`
    skips SFT (then `policy_dir` is needed).
    """

    run_dir: str = "runs/pipeline"  # where every stage's files go (layout: stages.PipelineLayout)
    seed: int = 0  # seed of every stage
    # local HF directory to start from; empty: the tiny preset + built-in tokenizer
    policy_dir: str = ""
    sft_file: str = ""  # JSONL/Parquet text field for SFT; empty: the built-in corpus
    # your pairwise comparisons; empty: simulated annotators label SFT samples
    preference_file: str = ""
    prompts_file: str = ""  # JSONL/JSON/Parquet prompts; empty: the built-in prompts
    prompts_field: str = "prompt"  # the prompts' field; dotted for a nested one (prompt.text)
    # a Jinja chat template file for the tokenizer (empty: the tokenizer's own, if any)
    chat_template: str = ""
    # the judge behind the simulated annotators and the report (eval.TEXT_TERMS)
    gold: str = "vader"
    # the simulated annotators' own judge when it differs from gold; empty: gold
    annotator_judge: str = ""
    # one Bradley-Terry temperature per simulated annotator
    annotator_temperatures: str = "0.15,0.3,0.6"
    # who labels the comparisons: human (the simulated annotators) or ai (a constitution judge)
    feedback: str = "human"
    constitution: str = ""  # feedback=ai: constitution file; empty: the packaged default
    judge_model_dir: str = ""  # feedback=ai: HF directory of the LM judge ("lm" principles)
    comparisons: int = 1500  # prompts whose sample pairs the simulated annotators label
    # prompt tokens kept in every stage; 0: 8 on the built-in task, 512 with a policy_dir
    max_prompt_len: int = 0
    # response tokens sampled in every stage; 0: 10 on the built-in task, 256 with a policy_dir
    max_new_tokens: int = 0
    eval_samples: int = 160  # responses per policy in the final evaluation
    report_samples: int = 8  # samples per policy shown in the report
    # ppo | rloo | grpo | best_of_n | dpo | cdpo | rdpo | ipo | simpo | orpo | kto | awr |
    # filtered_bc | online_dpo
    method: str = "ppo"
    group_size: int = 4  # rloo / grpo: samples per prompt
    best_of_n: int = 16  # best_of_n: samples per prompt reranked by the reward model
    allow_config_change: bool = False  # continue a run directory whose stored config differs
    # compiled programs cached for all stages: auto (<run_dir>/compile_cache), off, or a
    # directory; a JAX_COMPILATION_CACHE_DIR of yours is kept (train.enable_compilation_cache)
    compile_cache: str = "auto"
    # LoRA adapters for the reward model and the policy stage (and SFT when it starts from a
    # policy_dir: a randomly initialised preset is trained fully); rank 0: full fine-tuning
    lora: models.LoraConfig = models.LoraConfig()
    lora_reward: bool = True  # with lora.rank > 0: the reward model trains adapters too
    sft: SFTConfig = SFTConfig(steps=150, batch_size=32, data=SFTData(source="text"))
    reward: RewardConfig = RewardConfig(steps=300, batch_size=32, eval_every=50)
    ppo: PPOStageConfig = PPOStageConfig(steps=150, batch_size=32, kl=KLConfig(beta=0.02))
    offline: OfflineConfig = OfflineConfig(steps=200, batch_size=32, eval_every=50)
    online: OnlineDPOConfig = OnlineDPOConfig(steps=150, batch_size=16)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        if self.method in ("rloo", "grpo") and self.group_size < 2:
            raise ValueError(f"group_size={self.group_size}: {self.method} needs >= 2 samples "
                             "per prompt")
        if self.best_of_n < 1:
            raise ValueError(f"best_of_n={self.best_of_n}: expected >= 1")
        if self.method in offline.METHODS:
            offline.check_method_kind(self.method, self.reward.data.kind, "reward.data.kind")
        for name in ("gold", "annotator_judge"):
            value = getattr(self, name)
            if value not in rl_eval.TEXT_TERMS and (value or name == "gold"):
                raise ValueError(f"{name}={value!r}: expected one of "
                                 f"{sorted(rl_eval.TEXT_TERMS)}")
        if self.feedback not in ("human", "ai"):
            raise ValueError(f"feedback={self.feedback!r}: expected 'human' or 'ai'")
        if self.sft.steps <= 0 and not self.policy_dir:
            raise ValueError("sft.steps=0 needs policy_dir (the policy to start PPO from)")
        try:
            temps = [float(t) for t in self.annotator_temperatures.split(",")]
        except ValueError:
            temps = []
        if not temps or min(temps) <= 0:
            raise ValueError(f"annotator_temperatures={self.annotator_temperatures!r}: expected "
                             "comma-separated positive numbers, one per annotator")
        for name in ("max_prompt_len", "max_new_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected > 0 (or 0: the "
                                 "default)")
        for stage, fields in _PIPELINE_OWNED.items():
            default = PipelineConfig.__dataclass_fields__[stage].default
            for path, source in fields.items():
                if _get(getattr(self, stage), path) != _get(default, path):
                    raise ValueError(f"{stage}.{path} is set by the pipeline (from {source}); "
                                     f"set {source} instead")


    @property
    def prompt_len(self) -> int:
        """`max_prompt_len`, or its default: 8 on the built-in task, 512 with a policy_dir."""
        return self.max_prompt_len or (512 if self.policy_dir else 8)

    @property
    def new_tokens(self) -> int:
        """`max_new_tokens`, or its default: 10 on the built-in task, 256 with a policy_dir."""
        return self.max_new_tokens or (256 if self.policy_dir else 10)


PPO_FAMILY = ("ppo", "rloo", "grpo")


METHODS = PPO_FAMILY + ("best_of_n",) + offline.METHODS + ("online_dpo",)


STAGES = ("sft", "reward", "ppo", "online", "offline")


# Fields of the stage configs that the pipeline sets itself, and from what.
_PIPELINE_OWNED = {
    "sft": {"run_dir": "run_dir", "seed": "seed", "model_dir": "policy_dir", "lora": "lora",
            "chat_template": "chat_template",
            "allow_config_change": "allow_config_change", "compile_cache": "compile_cache",
            "data.file": "sft_file",
            "data.source": "the built-in text task"},
    "reward": {"run_dir": "run_dir", "seed": "seed", "model_dir": "the SFT export or policy_dir",
               "chat_template": "chat_template",
               "lora": "lora and lora_reward",
               "allow_config_change": "allow_config_change", "compile_cache": "compile_cache",
               "data.train_file": "preference_file", "data.max_prompt_len": "max_prompt_len",
               "data.max_response_len": "max_new_tokens"},
    "ppo": {"run_dir": "run_dir", "seed": "seed", "policy_dir": "the SFT export or policy_dir",
            "chat_template": "chat_template", "prompts.field": "prompts_field",
            "lora": "lora",
            "reward_dir": "the reward stage's export",
            "allow_config_change": "allow_config_change", "compile_cache": "compile_cache",
            "prompts.file": "prompts_file",
            "prompts.max_prompt_len": "max_prompt_len",
            "sampling.max_new_tokens": "max_new_tokens", "monitor_terms": "gold",
            "rollout.advantage": "method", "rollout.group_size": "group_size"},
    "online": {"run_dir": "run_dir", "seed": "seed", "lora": "lora",
               "chat_template": "chat_template",
               "policy_dir": "the SFT export or policy_dir",
               "reward_dir": "the reward stage's export",
               "allow_config_change": "allow_config_change", "compile_cache": "compile_cache",
               "prompts.file": "prompts_file", "prompts.field": "prompts_field",
               "prompts.max_prompt_len": "max_prompt_len",
               "sampling.max_new_tokens": "max_new_tokens"},
    "offline": {"run_dir": "run_dir", "seed": "seed", "lora": "lora",
                "chat_template": "chat_template",
                "policy_dir": "the SFT export or policy_dir",
                "allow_config_change": "allow_config_change", "compile_cache": "compile_cache",
                "data.train_file": "preference_file", "data.kind": "reward.data.kind",
                "data.max_prompt_len": "max_prompt_len",
                "data.max_response_len": "max_new_tokens", "loss.method": "method",
                "data.rating_low": "reward.data.rating_low",
                "data.rating_high": "reward.data.rating_high",
                "data.on_error": "reward.data.on_error"},
}


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _replace(obj, values: dict):
    """`obj` (a frozen dataclass) with the dotted-path fields of `values` replaced."""
    top, nested = {}, {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    top.update({head: _replace(getattr(obj, head), sub) for head, sub in nested.items()})
    return dataclasses.replace(obj, **top)
