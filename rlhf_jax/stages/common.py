"""What every training stage shares: the run settings, the result, and the training shell
(config check, mesh, batches on the mesh, checkpoint restore or fresh init, the loop, metrics,
preemption)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import jax

from rlhf_jax import data, models, sharding, train
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.stages.configs.run import RunConfig, StageResult
from rlhf_jax.stages.layout import RunLayout, check_run_config, record_run_config
from rlhf_jax.train import OptimizerConfig


def shapes_note(batches, axes: str = "tokens") -> str:
    """"; N padded shapes (…)" of bucketed batches (each shape compiles a step once), "; packed
    …" of packed ones, "" otherwise."""
    batches = getattr(batches, "local", batches)  # through GlobalBatches
    if isinstance(batches, data.PackedBatches):
        return (f"; packed {batches.examples_per_row():.1f} texts per row of "
                f"{batches.row_len} tokens")
    if isinstance(batches, data.BucketedBatches):
        return "; " + data.describe_shapes(batches.shapes(), axes)
    return ""


def warn(layout: RunLayout, message: str) -> None:
    """Print `warning: <message>` and record it in the run's warnings.json (once; main process),
    so that a resumed run and the pipeline's report still show it."""
    if not train.is_main_process():
        return
    print(f"warning: {message}", flush=True)
    seen = layout.read_warnings()
    if message not in seen:
        layout.warnings.parent.mkdir(parents=True, exist_ok=True)
        layout.warnings.write_text(json.dumps(seen + [message], indent=1))


def labelled_dataset(dc, train_file: str, tokenizer, layout: RunLayout, seed: int):
    """The prepared preference dataset of a stage's data settings `dc` (a `RewardData`): built
    once by the main process, its one-line description printed, and refused when
    `dc.validation_fraction` > 0 leaves no held-out records. Returns (dataset, line)."""
    ds = train.main_process_first(
        data.build_preference_dataset, train_file, dc.kind, tokenizer, layout.built_data,
        max_prompt_len=dc.prompt_len, max_response_len=dc.response_len,
        rating_range=(dc.rating_low, dc.rating_high), on_error=dc.on_error,
        validation_fraction=dc.validation_fraction, seed=seed, buckets=dc.buckets)
    note = data_note(ds.stats, {k: f"data.{k}" for k in ("max_prompt_len", "max_response_len")},
                     layout=layout)
    if dc.validation_fraction > 0 and "validation" not in ds.splits:
        raise ValueError(f"{train_file}: no held-out records are left with "
                         f"data.validation_fraction={dc.validation_fraction} ({note}); use more "
                         "records or a larger fraction")
    return ds, note


def data_note(stats: dict, keys: dict, batches=None, axes: str = "",
              layout: Optional[RunLayout] = None) -> str:
    """`data.describe_dataset` of a prepared dataset, printed once (main process), with the
    padded shapes its batches take (bucketed: each compiles the step once) or its packing; a
    limit that cuts most prompts or responses is also a warning (`warn`, when `layout` is
    given)."""
    line = data.describe_dataset(stats, keys) + shapes_note(batches, axes)
    if train.is_main_process():
        print(line, flush=True)
    if layout is not None:
        for message in data.truncation_warnings(stats, keys):
            warn(layout, message)
    return line


def shardings_of(tree):
    """The shardings of a tree of arrays (for `train.create_train_state(param_shardings=)`)."""
    return jax.tree.map(lambda x: x.sharding, tree)


def model_overrides(cfg: RunConfig) -> dict:
    """The model settings a stage's config chooses for the models it trains."""
    return {"remat": cfg.remat, "attention": cfg.attention, "logit_chunk": cfg.logit_chunk,
            "lora": cfg.lora}


def freeze_rule(cfg: RunConfig):
    """The optimiser's frozen-leaf rule for a stage that trains one model: with LoRA the base
    (backbone and LM head) is frozen and adapters and added heads train; None otherwise."""
    return models.frozen_base("", train=cfg.lora.modules_to_save) if cfg.lora.enabled \
        else None


def export_policy(layout: RunLayout, config, params, tokenizer) -> None:
    """Write the trained model to `layout.export` (adapters merged: a plain Hugging Face
    directory) and, with LoRA, the adapter alone in PEFT's format to `layout.adapter`.
    Collective: call it on every process."""
    models.save_hf_checkpoint(layout.export, config, params, tokenizer=tokenizer,
                              overwrite=True)
    if config.lora.enabled:
        models.save_peft_adapter(layout.adapter, config, params)


def optimizer_config(optim: OptimizerConfig, steps: int) -> OptimizerConfig:
    """The optimiser settings with the schedule's length defaulting to the stage's steps."""
    if optim.total_steps:
        return optim
    if optim.warmup_steps > steps:
        raise train.ConfigError(f"optim.warmup_steps={optim.warmup_steps} exceeds steps={steps} "
                                "(the schedule's length when optim.total_steps is 0)")
    return dataclasses.replace(optim, total_steps=steps)


def resolved_config(cfg) -> dict:
    """The config as the run uses it (JSON): the optimiser's schedule length filled in, except
    for a constant schedule without warmup, which does not depend on it."""
    optim = getattr(cfg, "optim", None)
    if isinstance(optim, OptimizerConfig) and not (optim.schedule == "constant"
                                                   and optim.warmup_steps == 0):
        cfg = dataclasses.replace(cfg, optim=optimizer_config(optim, cfg.steps))
    return train.config_to_dict(cfg)


def check_writable(run_dir: str) -> None:
    """Create `run_dir` if needed and prove it can be written, or raise a `ConfigError` naming
    it (a path through a file, a read-only place), before any work starts."""
    root = Path(run_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write_check_{jax.process_index()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise train.ConfigError(f"run_dir={run_dir!r} cannot be written ({e.strerror})") \
            from None


def start_run(cfg, layout: RunLayout):
    """Start the distributed runtime when configured, check that the run directory can be
    written, turn on the compilation cache (`cfg.compile_cache`), check that the config matches
    the one recorded there (see `check_run_config`; the config is recorded when training
    starts), and build the device mesh: (mesh, rules)."""
    train.initialize()
    check_writable(cfg.run_dir)
    train.enable_compilation_cache(str(layout.compile_cache) if cfg.compile_cache == "auto"
                                   else cfg.compile_cache)  # before anything compiles
    check_run_config(layout.config, resolved_config(cfg), allow_change=cfg.allow_config_change,
                     defaults=resolved_config(type(cfg)()))
    return sharding.make_mesh(cfg.mesh), sharding.logical_rules(cfg.sharding)


def check_batch_size(field: str, value: int, mesh, also: Sequence[tuple[str, int]] = ()) -> None:
    """A batch must split evenly over the mesh's batch axes (data × fsdp), the processes, and
    any further (name, divisor) in `also` (e.g. PPO minibatches)."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    divisors = [("data×fsdp devices", shards), ("processes", jax.process_count()), *also]
    for name, d in divisors:
        if value % d:
            raise train.ConfigError(f"{field} = {value} must be divisible by {d} ({name})")


class GlobalBatches:
    """Wraps a per-process batch iterator: each batch is assembled into global arrays sharded
    over the mesh's batch axes (`train.global_batch_from_local`); the position is the wrapped
    iterator's, so checkpoints and exact resume see through it."""

    def __init__(self, local: Iterator, mesh, rules):
        self.local, self.mesh, self.rules = local, mesh, rules

    def __iter__(self):
        return self

    def __next__(self):
        return train.global_batch_from_local(next(self.local), self.mesh, self.rules)

    def get_state(self):
        """The wrapped iterator's position."""
        return self.local.get_state()

    def set_state(self, state):
        """Restore the wrapped iterator's position."""
        self.local.set_state(state)


def builtin_file(layout: RunLayout, name: str, write: Callable, **kwargs) -> str:
    """Write a built-in data file (`write(path, **kwargs)`, e.g. `data.builtin.write_prompts`)
    into the layout once, on process 0; return its path."""
    path = layout.builtin_data(name)
    train.on_main_process(write, path, **kwargs)
    return str(path)


def builtin_tokenizer(layout: RunLayout):
    """The tokenizer trained on the built-in corpus, saved in the layout (trained once, on
    process 0; the other processes load it)."""
    tokenizer = train.on_main_process(data.builtin.train_tokenizer, layout.tokenizer)
    return tokenizer if tokenizer is not None else models.load_tokenizer(layout.tokenizer)


def load_policy(cfg: RunConfig, layout: RunLayout, mesh, rules, key):
    """(tokenizer, config, model, params) of a stage that trains a policy with no reward model
    beside it: `cfg.policy_dir` (a local HF directory and its tokenizer) or the `cfg.preset`,
    randomly initialised, with the built-in tokenizer; `cfg.chat_template` given to the
    tokenizer, the stage's model settings (`model_overrides`) applied. A tokenizer larger than
    the model's vocabulary is refused."""
    if cfg.policy_dir:
        tok = models.load_tokenizer(cfg.policy_dir, models.load_hf_config(cfg.policy_dir))
        tokenizer, overrides = data.use_template(tok, cfg.chat_template), {}
    else:
        tokenizer = data.use_template(builtin_tokenizer(layout), cfg.chat_template)
        overrides = {"vocab_size": len(tokenizer)}
    config, model, params = models.load_or_init_model(cfg.policy_dir, cfg.preset, mesh, rules,
                                                      key, **overrides, **model_overrides(cfg))
    if len(tokenizer) > config.vocab_size:
        raise models.CheckpointFormatError(
            f"{cfg.policy_dir}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"vocab_size is {config.vocab_size}")
    return tokenizer, config, model, params


def jit_train_step(step_fn: Callable, abstract_state, batch_sharding):
    """`step_fn` jitted with the state's shardings in and out, donating the old state."""
    state_sh = jax.tree.map(lambda a: a.sharding, abstract_state)
    return jax.jit(step_fn, in_shardings=(state_sh, batch_sharding),
                   out_shardings=(state_sh, None), donate_argnums=0)


def train_with_checkpoints(cfg, layout: RunLayout, *, step: Callable, abstract_state,
                           init_state: Callable[[], Any], batches: Iterator, mesh, rules,
                           before: Optional[Callable[[Any], None]] = None,
                           **loop_kwargs) -> train.LoopResult:
    """Record the stage config `cfg` in the layout, resume from the newest readable checkpoint
    (or start from `init_state()`), then run `train.run_training` for `cfg.steps` under the
    mesh's activation sharding, writing metrics to the layout.

    `cfg` is a `RunConfig` with `steps` and `checkpoint` (a `CheckpointConfig` whose empty
    directory means the layout's); `batches` must expose get_state/set_state (exact resume).
    `before(state)` runs only on a fresh start (e.g. samples of the initial policy). Prints
    "resumed from step N" when resuming.
    """
    config = resolved_config(cfg)
    record_run_config(layout.config, config)
    directory = cfg.checkpoint.directory or str(layout.checkpoints)
    ckpt = Checkpointer(dataclasses.replace(cfg.checkpoint, directory=directory))
    restored = ckpt.restore(abstract_state)
    if restored is None:
        state, loop_state = init_state(), None
    else:
        state, loop_state = restored.state, restored.loop_state
        batches.set_state(restored.data_state)
        print(f"resumed from step {restored.step}", flush=True)
    writer = train.MetricWriter(layout.metrics, layout.tensorboard,
                                resume_step=0 if restored is None else restored.step)
    try:
        with sharding.activation_sharding(mesh, rules):
            if restored is None and before is not None:
                before(state)
            return train.run_training(step, state, batches, total_steps=cfg.steps,
                                      checkpointer=ckpt, writer=writer, config=config,
                                      loop_state=loop_state, log_every=cfg.log_every,
                                      max_consecutive_skips=cfg.max_consecutive_skips,
                                      **loop_kwargs)
    finally:
        ckpt.close()
        writer.close()
