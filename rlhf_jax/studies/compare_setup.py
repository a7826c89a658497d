"""The method comparison's setup: which methods it compares, the setting each one sweeps, the
tiny budgets of a quick run, and the base run (SFT policy, comparisons, reward model) that every
method of a seed shares."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rlhf_jax import eval as rl_eval
from rlhf_jax.stages.configs.pipeline import METHODS, PipelineConfig, _replace


# Each method's sweep: the setting that trades reward against staying near the start, and its
# values (weakest pull away from the reference first). Budgets are the pipeline's defaults:
# PPO / RLOO / GRPO 150 iterations of 32 sampled responses (RLOO / GRPO: `group_size` = 4 for
# each of 8 prompts), the offline methods 200 steps of 32 rows (a comparison's two responses
# each), online DPO 150 steps of 16 prompts × 2 samples judged by the reward model, best-of-n n
# samples per evaluation prompt; the report states them.
SWEEPS = {
    "ppo": ("ppo.kl.beta", (0.1, 0.02, 0.0)),
    "rloo": ("ppo.kl.beta", (0.1, 0.02)),
    "grpo": ("ppo.kl.beta", (0.1, 0.02)),
    "best_of_n": ("best_of_n", (2, 4, 16)),
    "dpo": ("offline.loss.beta", (0.5, 0.1)),
    "cdpo": ("offline.loss.beta", (0.5, 0.1)),
    "rdpo": ("offline.loss.beta", (0.5, 0.1)),
    "ipo": ("offline.loss.beta", (0.5, 0.1)),
    "kto": ("offline.loss.beta", (0.5, 0.1)),
    "simpo": ("offline.loss.simpo_beta", (1.0, 2.5)),
    "orpo": ("offline.loss.orpo_lambda", (0.1, 1.0)),
    "awr": ("offline.loss.temperature", (1.0, 0.25)),
    "filtered_bc": ("offline.loss.top_fraction", (1.0, 0.5)),
    "online_dpo": ("online.loss.beta", (0.5, 0.1)),
    "iterative_dpo": ("offline.loss.beta", (0.5, 0.1)),
}
# the methods the study compares: the main job's and iterative DPO (`studies.iterative_dpo`,
# which composes the offline stage into rounds)
COMPARED = METHODS + ("iterative_dpo",)
# iterative DPO's budget: rounds of prompts × samples ranked by the seed's reward model (best
# against worst), each round's DPO steps of rows from the last round's policy; quick: less
ITERATIVE = {"rounds": 3, "prompts_per_round": 128, "samples_per_prompt": 4,
             "offline.steps": 60, "offline.batch_size": 32}
QUICK_ITERATIVE = {"rounds": 2, "prompts_per_round": 32, "offline.steps": 8}
# alignment metrics of the responses, besides gold, proxy and KL, in the second table
TEXT_METRICS = ("profanity_rate", "distinct_1", "distinct_2", "length")
# the setting whose gold score is followed over its training iterations
OVEROPTIMISATION = ("ppo", 0.0)
# a quick study: the base run near the main job's (an SFT policy and a reward model good enough
# for PPO without a KL penalty to climb and then fall: SFT at its default 150 steps), every
# method on tiny budgets, except the over-optimisation setting, which keeps the full study's
# 150 iterations (about 0.2 s each on 2 cores) so that its rise and fall shows
QUICK = {"comparisons": 1000, "reward.steps": 150, "reward.eval_every": 50,
         "ppo.steps": 8, "offline.steps": 16, "offline.eval_every": 8, "online.steps": 8,
         "eval_samples": 32}
QUICK_OVEROPTIMISATION = {"ppo.steps": 150}
# a quick study's rough cost of each method (for sharing the runs out between the workers)
QUICK_COST = {"ppo": 5.0, "best_of_n": 2.5, "kto": 1.5, "rloo": 1.5, "grpo": 1.5,
              "online_dpo": 1.5, "iterative_dpo": 2.0}


# the main job's fields a study passes on unchanged
USER_INPUTS = ("policy_dir", "sft_file", "preference_file", "prompts_file", "prompts_field",
               "chat_template", "max_prompt_len", "max_new_tokens")


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """The study: `methods` (comma-separated, from `COMPARED`: the main job's and
    iterative DPO) over `seeds`, on the built-in task or your own model and files (plain or
    conversational). The simulated annotators judge by `annotator_judge`; the methods are
    scored by `gold` (by default a judge the annotators' signal only partly captures, so that
    over-optimisation can show). `quick`: one setting per method and tiny budgets."""

    run_dir: str = "runs/compare"  # where the study's runs, report.md and plots/ go
    seeds: str = "0,1"  # comma-separated seeds: one base run and every method per seed
    methods: str = ",".join(COMPARED)  # comma-separated methods to compare
    gold: str = "vader_diverse"  # the judge that scores the methods (eval.TEXT_TERMS)
    annotator_judge: str = "vader"  # the simulated annotators' judge (eval.TEXT_TERMS)
    # one setting per method, tiny budgets but PPO's at β = 0 (a few minutes on 2 cores); the
    # methods then share `workers` processes (peak memory is the process's, not the method's)
    quick: bool = False
    # your own inputs, passed to every base run (the main job's fields of the same names):
    policy_dir: str = ""  # a local HF directory to start from; empty: the tiny preset
    sft_file: str = ""  # SFT texts or conversations; empty: the built-in corpus
    sft_steps: int = -1  # SFT steps (-1: the main job's, or the quick budget; 0: no SFT)
    preference_file: str = ""  # your comparisons; empty: simulated annotators label samples
    prompts_file: str = ""  # prompts (text or conversations); empty: the built-in prompts
    prompts_field: str = "prompt"  # the prompts' field; dotted for a nested one
    chat_template: str = ""  # a Jinja chat template file for the tokenizer
    max_prompt_len: int = 0  # 0: the main job's default (8; 512 with a policy_dir)
    max_new_tokens: int = 0  # 0: the main job's default (10; 256 with a policy_dir)
    # runs at once, each in its own process (> 1 shortens the study on several cores, but the
    # reported times then include the runs' competition for them)
    workers: int = 1

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"workers={self.workers}: expected >= 1")
        if self.sft_steps == 0 and not self.policy_dir:
            raise ValueError("sft_steps=0 needs policy_dir (the policy every method starts from)")
        for name, items in (("seeds", self.seeds.split(",")), ("methods", self.method_list)):
            if len(set(items)) != len(items):
                raise ValueError(f"{name}={getattr(self, name)!r} names one twice")
        unknown = [m for m in self.method_list if m not in COMPARED]
        if unknown or not self.method_list:
            raise ValueError(f"methods={self.methods!r}: expected some of {', '.join(COMPARED)}")
        try:
            [int(s) for s in self.seeds.split(",")]
        except ValueError:
            raise ValueError(f"seeds={self.seeds!r}: expected comma-separated integers") from None
        for name in ("gold", "annotator_judge"):
            if getattr(self, name) not in rl_eval.TEXT_TERMS:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of "
                                 f"{sorted(rl_eval.TEXT_TERMS)}")

    @property
    def method_list(self) -> list[str]:
        """The methods, in order."""
        return [m for m in self.methods.split(",") if m]

    @property
    def seed_list(self) -> list[int]:
        """The seeds, in order."""
        return [int(s) for s in self.seeds.split(",")]


def sweep(cfg: CompareConfig, method: str) -> tuple[str, tuple]:
    """The swept key and the values this study runs (quick: one, PPO's the unregularised)."""
    key, values = SWEEPS[method]
    if cfg.quick:
        values = (OVEROPTIMISATION[1],) if method == OVEROPTIMISATION[0] else values[:1]
    return key, values


def quick_groups(cfg: CompareConfig) -> list[list[str]]:
    """A quick study's methods (of each seed) shared out between `cfg.workers` processes: the
    costliest first, each to the least loaded process so far (longest processing time first,
    Graham 1969), each process's methods in the study's order."""
    groups = [[] for _ in range(min(cfg.workers, len(cfg.method_list)))]
    load = [0.0] * len(groups)
    for m in sorted(cfg.method_list, key=lambda m: -QUICK_COST.get(m, 1.0)):
        i = load.index(min(load))
        groups[i].append(m)
        load[i] += QUICK_COST.get(m, 1.0)
    return [[m for m in cfg.method_list if m in g] for g in groups if g]


def base_config(cfg: CompareConfig, seed: int) -> PipelineConfig:
    """The pipeline whose SFT policy, comparisons and reward model every method of `seed`
    shares (its own best-of-n run is not used)."""
    root = Path(cfg.run_dir)
    base = _replace(PipelineConfig(), {
        "run_dir": str(root / f"seed{seed}" / "base"), "seed": seed, "gold": cfg.gold,
        "annotator_judge": cfg.annotator_judge, "method": "best_of_n", "best_of_n": 1,
        "compile_cache": str(root / "compile_cache"),
        **{name: getattr(cfg, name) for name in USER_INPUTS}})
    base = _replace(base, QUICK) if cfg.quick else base
    return base if cfg.sft_steps < 0 else _replace(base, {"sft.steps": cfg.sft_steps})


def iterative_config(cfg: CompareConfig, pcfg: PipelineConfig, policy_dir: str,
                     reward_dir: str, beta: float):
    """Iterative DPO on a seed's base run: from its SFT policy, judged by its reward model,
    on the study's prompts and lengths, with `ITERATIVE`'s budget (quick: `QUICK_ITERATIVE`'s)
    and DPO's β = `beta`."""
    from rlhf_jax.studies.configs.iterative import IterativeDPOConfig

    budget = {**ITERATIVE, **(QUICK_ITERATIVE if cfg.quick else {})}
    return _replace(IterativeDPOConfig(), {
        **budget, "run_dir": pcfg.run_dir, "seed": pcfg.seed, "policy_dir": policy_dir,
        "reward_dir": reward_dir, "chat_template": pcfg.chat_template,
        "prompts_file": pcfg.prompts_file, "prompts_field": pcfg.prompts_field,
        "max_prompt_len": pcfg.prompt_len, "max_new_tokens": pcfg.new_tokens,
        "offline.loss.beta": beta, "offline.compile_cache": pcfg.compile_cache,
        "reward.compile_cache": pcfg.compile_cache})
