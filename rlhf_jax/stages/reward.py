"""Reward-model training as a library function: `train_reward_model(RewardConfig(...))`."""
from __future__ import annotations

import dataclasses
import json

import jax

from rlhf_jax import data, models, reward, sharding, train
from rlhf_jax.checkpoint import CheckpointConfig
from rlhf_jax.stages.common import (GlobalBatches, RunConfig, StageResult, builtin_file,
                                    builtin_tokenizer, check_batch_size, freeze_rule, shapes_note,
                                    jit_train_step, labelled_dataset, model_overrides,
                                    optimizer_config, shardings_of, start_run,
                                    train_with_checkpoints)
from rlhf_jax.stages.layout import RunLayout
from rlhf_jax.train import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class RewardData:
    """Labels: a JSONL/JSON/Parquet `train_file` of `kind` pairwise | ranking | rating | binary,
    plain or conversational (`data.read_records`; empty: `builtin_pairs` comparisons by the
    built-in simulated annotators); ratings are declared on [rating_low, rating_high];
    `on_error` is "raise" or "skip" for malformed records. Lengths of 0 take the built-in
    task's (8 prompt and 10 response tokens) or, for a file, real data's (512 and 256);
    batches are padded to the `buckets` rungs of their longest prompt and response."""

    train_file: str = ""  # JSONL/JSON/Parquet labels; empty: the built-in simulated annotators
    # pairwise (TRL / HH-RLHF / UltraFeedback too) | ranking | rating | binary
    kind: str = "pairwise"
    rating_low: float = 0.0  # lowest rating the file's scale allows
    rating_high: float = 1.0  # highest rating the file's scale allows
    on_error: str = "raise"  # raise: stop at a malformed record; skip: skip and count it
    validation_fraction: float = 0.1  # share of the records held out for evaluation
    builtin_pairs: int = 2000  # comparisons the built-in task generates
    max_prompt_len: int = 0  # prompt tokens kept (cut from the left); 0: 8 built-in, 512 a file
    max_response_len: int = 0  # response tokens kept; 0: 10 built-in, 256 a file
    buckets: str = "auto"  # padded lengths: auto (4 rungs halving from the max) | off | list

    BUILTIN_LENGTHS = (8, 10)  # (prompt, response) tokens of the built-in task
    FILE_LENGTHS = (512, 256)  # and of a file of real data

    def __post_init__(self):
        for name in ("max_prompt_len", "max_response_len"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.{name}={getattr(self, name)}: expected > 0 (or 0: the "
                                 "default)")
        data.ladder(max(self.max_prompt_len, 1), self.buckets)  # a malformed spec fails here

    @property
    def prompt_len(self) -> int:
        """`max_prompt_len`, or its default for the built-in task or a file."""
        return self.max_prompt_len or (self.FILE_LENGTHS if self.train_file
                                       else self.BUILTIN_LENGTHS)[0]

    @property
    def response_len(self) -> int:
        """`max_response_len`, or its default for the built-in task or a file."""
        return self.max_response_len or (self.FILE_LENGTHS if self.train_file
                                         else self.BUILTIN_LENGTHS)[1]


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop after `patience` evaluations without improvement of `metric` (0: never)."""

    metric: str = "eval/loss"  # evaluation metric to watch
    patience: int = 0  # evaluations without improvement before stopping (0: never)
    mode: str = "min"  # min or max: which direction is better


@dataclasses.dataclass(frozen=True)
class RewardConfig(RunConfig):
    """A reward model (scalar head, or an ensemble of `num_reward_outputs` heads) on a backbone
    from `model_dir` (local HF directory) or a randomly initialised `preset`."""

    run_dir: str = "runs/reward"
    model_dir: str = ""  # local Hugging Face directory of the backbone; empty: the preset
    chat_template: str = ""  # a Jinja chat template file for the tokenizer (empty: its own)
    preset: str = "tiny-llama"  # built-in model size when model_dir is empty
    num_reward_outputs: int = 1  # reward heads: > 1 is an ensemble on one backbone
    dropout: float = 0.0  # embedding / attention / residual dropout while training
    data: RewardData = RewardData()
    loss: reward.RewardLossConfig = reward.RewardLossConfig(centering_coef=0.01)
    steps: int = 300  # optimiser steps in total
    batch_size: int = 32  # examples per step, over all processes
    optim: OptimizerConfig = OptimizerConfig(learning_rate=1e-3, warmup_steps=20,
                                             total_steps=0, weight_decay=0.01)
    eval_every: int = 50  # steps between held-out evaluations (0: never)
    early_stopping: EarlyStopping = EarlyStopping()
    normalise_samples: int = 512  # responses whose rewards the export normalises to mean 0, std 1
    checkpoint: CheckpointConfig = CheckpointConfig(save_every=50, keep_last=2, keep_best=1,
                                                    best_metric="eval/accuracy", best_mode="max")

    def __post_init__(self):
        super().__post_init__()
        if self.num_reward_outputs < 1:
            raise ValueError(f"num_reward_outputs={self.num_reward_outputs}: expected >= 1")
        fraction = self.data.validation_fraction
        if not 0 <= fraction < 1:
            raise ValueError(f"data.validation_fraction={fraction}: expected 0 <= x < 1")
        ck = self.checkpoint
        needs_eval = [f"{k}={v}" for k, v in (
            ("eval_every", self.eval_every), ("early_stopping.patience",
                                              self.early_stopping.patience),
            ("checkpoint.keep_best", ck.keep_best if ck.best_metric.startswith("eval/") else 0))
            if v]
        if fraction == 0 and needs_eval:
            raise ValueError(f"data.validation_fraction=0 holds nothing out, but "
                             f"{', '.join(needs_eval)} evaluate on the held-out split: set a "
                             "fraction > 0 or turn those off (0)")


def train_reward_model(cfg: RewardConfig) -> StageResult:
    """Train, evaluate on the held-out split, normalise (Ziegler et al. 2019, §2.2) and export
    to `<run_dir>/export`; held-out metrics go to `<run_dir>/eval_summary.json` and the result."""
    layout = RunLayout(cfg.run_dir)
    mesh, rules = start_run(cfg, layout)
    key, dc = jax.random.key(cfg.seed), cfg.data
    drop = dict(embd_dropout=cfg.dropout, attn_dropout=cfg.dropout, resid_dropout=cfg.dropout)
    config, model, params = models.load_or_init_model(
        cfg.model_dir, cfg.preset, mesh, rules, jax.random.fold_in(key, 0), heads=("reward",),
        num_reward_outputs=cfg.num_reward_outputs, **drop, **model_overrides(cfg))
    if cfg.model_dir:
        tokenizer = models.load_tokenizer(cfg.model_dir, config)
    else:  # built-in task: simulated annotators and a tokenizer trained on its corpus
        tokenizer = builtin_tokenizer(layout)
    tokenizer = data.use_template(tokenizer, cfg.chat_template)
    train_file = dc.train_file or builtin_file(layout, "comparisons",
                                               data.builtin.write_comparisons,
                                               n=dc.builtin_pairs, seed=cfg.seed)
    ds, note = labelled_dataset(dc, train_file, tokenizer, layout, cfg.seed)
    held_out = "validation" in ds.splits
    shape = dict(prompt_len=dc.prompt_len, num_responses=max(2, ds.num_responses),
                 pad_id=tokenizer.pad_token_id or 0)
    check_batch_size("batch_size", cfg.batch_size, mesh)
    tx = train.make_optimizer(optimizer_config(cfg.optim, cfg.steps), params,
                              freeze=freeze_rule(cfg))
    abstract, init_state = train.compile_init(
        lambda p: train.create_train_state(p, tx, jax.random.fold_in(key, 1),
                                           param_shardings=shardings_of(params)), params)
    loss = reward.make_reward_loss(model, cfg.loss, dropout=cfg.dropout > 0 or (
        cfg.lora.enabled and cfg.lora.dropout > 0))
    step = jit_train_step(train.make_train_step(loss, tx), abstract,
                          sharding.batch_sharding(mesh, rules, 1))
    batches = GlobalBatches(data.preference_batches(
        [ds.splits["train"]], cfg.batch_size // jax.process_count(), seed=cfg.seed, **shape),
        mesh, rules)
    note += shapes_note(batches, "prompt×response")

    def evaluate(state):
        if not held_out:
            return {}
        return reward.evaluate_comparisons(model, state.params, ds.splits["validation"],
                                           annotators=ds.annotators, batch_size=cfg.batch_size,
                                           **shape)

    es = cfg.early_stopping
    result = train_with_checkpoints(
        cfg, layout, step=step, abstract_state=abstract, init_state=init_state,
        batches=batches, mesh=mesh, rules=rules, eval_fn=evaluate, eval_every=cfg.eval_every,
        early_stop_metric=es.metric, patience=es.patience, early_stop_mode=es.mode,
        leaf_names=train.leaf_names(params), progress_keys=("train/loss", "reward/accuracy"))
    if result.preempted:
        print(f"preempted at step {result.step}", flush=True)
        return StageResult(str(layout.root), None, result.step, True, data=(note,),
                           warnings=tuple(layout.read_warnings()))
    with sharding.activation_sharding(mesh, rules):  # as in training: reuses its eval program
        params, norm = reward.normalise_reward_params(
            model, result.state.params, ds.splits["train"], max_samples=cfg.normalise_samples,
            batch_size=cfg.batch_size, **shape)
        summary = {**evaluate(result.state.replace(params=params)), "normalisation": norm,
                   "data": ds.stats, "steps": result.step, "stopped_early": result.stopped_early}
    if train.is_main_process():
        reward.write_summary(layout.eval_summary, summary)
    reward.save_reward_model(layout.export, config, params, tokenizer=tokenizer,
                             metadata={"normalisation": norm})  # collective; adapters merged
    if config.lora.enabled:  # the backbone's adapter alone (the head is in the export)
        backbone = dataclasses.replace(config.lora, modules_to_save=())  # no LM head here
        models.save_peft_adapter(layout.adapter, config.replace(lora=backbone), params)
    metrics = {k: v for k, v in summary.items() if k.startswith("eval/")}
    print(json.dumps(metrics), flush=True)
    return StageResult(str(layout.root), str(layout.export), result.step, False, metrics,
                       data=(note,), warnings=tuple(layout.read_warnings()))
