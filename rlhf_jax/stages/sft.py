"""Supervised fine-tuning as a library function: `train_sft(SFTConfig(...))`."""
from __future__ import annotations

import dataclasses

import jax

from rlhf_jax import data, losses, models, sharding, train
from rlhf_jax.checkpoint import CheckpointConfig
from rlhf_jax.data.buckets import ladder
from rlhf_jax.stages.common import (GlobalBatches, RunConfig, StageResult, builtin_file,
                                    builtin_tokenizer, check_batch_size, data_note, export_policy,
                                    freeze_rule, jit_train_step, model_overrides, optimizer_config,
                                    shardings_of, start_run, train_with_checkpoints)
from rlhf_jax.stages.layout import RunLayout
from rlhf_jax.train import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class SFTData:
    """What to learn: "progression" (synthetic token sequences of `SFTConfig.length`) or "text"
    (a JSONL/JSON/Parquet `file` of `text`, `messages` or `prompt` + `completion` records, see
    `data.sft`; empty file: the built-in corpus, with a tokenizer trained on it when there is
    no model_dir), rows of at most `max_len` tokens (0: 24 for the built-in corpus, 1024 for a
    file). Conversations learn their assistant turns only unless `train_on_prompt`.
    `packing`: "auto" packs a file's texts several to a row (segment ids keep them apart) and
    leaves the built-in corpus unpacked; "on" / "off". Unpacked batches are padded to the
    `buckets` rung of their longest row (`data.buckets.ladder`)."""

    # progression (synthetic tokens) or text (a JSONL/JSON/Parquet file of texts/conversations)
    source: str = "progression"
    file: str = ""  # the text file; empty: the built-in corpus
    max_len: int = 0  # tokens per row (longer rows are cut); 0: 24 built-in, 1024 for a file
    train_on_prompt: bool = False  # learn prompts and user turns too (default: responses only)
    packing: str = "auto"  # auto (a file: on; built-in corpus: off) | on | off
    buckets: str = "auto"  # padded lengths: auto (4 rungs halving from max_len) | off | list
    on_error: str = "raise"  # raise: stop at a malformed record; skip: skip and count it

    def __post_init__(self):
        if self.source not in ("progression", "text"):
            raise ValueError(f"data.source={self.source!r}: expected 'progression' or 'text'")
        if self.packing not in ("auto", "on", "off"):
            raise ValueError(f"data.packing={self.packing!r}: expected auto, on or off")
        if self.max_len < 0:
            raise ValueError(f"data.max_len={self.max_len}: expected > 0 (or 0: the default)")
        ladder(max(self.max_len, 1), self.buckets)  # a malformed spec fails here

    @property
    def row_len(self) -> int:
        """The row length: `max_len`, or its default for the built-in corpus or a file."""
        return self.max_len or (1024 if self.file else 24)

    @property
    def packed(self) -> bool:
        """Whether texts are packed several to a row."""
        return self.packing == "on" or (self.packing == "auto" and bool(self.file))


@dataclasses.dataclass(frozen=True)
class SFTConfig(RunConfig):
    """Next-token cross-entropy on text, from a local HF directory (`model_dir`) or a randomly
    initialised `preset`, with exact resume from the run directory."""

    run_dir: str = "runs/sft"
    model_dir: str = ""  # local Hugging Face directory to start from; empty: the preset
    chat_template: str = ""  # a Jinja chat template file for the tokenizer (empty: its own)
    # built-in model size when model_dir is empty (tiny-llama, tiny-gpt2, ...)
    preset: str = "tiny-llama"
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 | float16
    data: SFTData = SFTData()
    steps: int = 200  # optimiser steps in total
    batch_size: int = 16  # sequences per step, over all processes
    length: int = 32  # sequence length of the "progression" source
    num_microbatches: int = 1  # gradient accumulation: micro-batches per step
    optim: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, warmup_steps=20,
                                             total_steps=0, weight_decay=0.01)
    checkpoint: CheckpointConfig = CheckpointConfig(save_every=50, keep_last=2)


def _tokenizer(cfg: SFTConfig, layout: RunLayout):
    """The tokenizer (None for token progressions) and the model-config overrides it implies."""
    if cfg.data.source != "text":
        return None, {}
    if cfg.model_dir:
        return data.use_template(models.load_tokenizer(cfg.model_dir), cfg.chat_template), {}
    tokenizer = data.use_template(builtin_tokenizer(layout), cfg.chat_template)
    return tokenizer, {"vocab_size": len(tokenizer)}


def train_sft(cfg: SFTConfig) -> StageResult:
    """Fine-tune with next-token NLL; export the model (and tokenizer) to `<run_dir>/export`.

    Rerunning with the same config resumes from the newest checkpoint; SIGTERM saves and returns
    a preempted result.
    """
    layout = RunLayout(cfg.run_dir)
    mesh, rules = start_run(cfg, layout)
    key = jax.random.key(cfg.seed)
    tokenizer, overrides = _tokenizer(cfg, layout)
    config, model, params = models.load_or_init_model(
        cfg.model_dir, cfg.preset, mesh, rules, jax.random.fold_in(key, 0), dtype=cfg.dtype,
        **overrides, **model_overrides(cfg))
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise models.CheckpointFormatError(
            f"{cfg.model_dir}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"vocab_size is {config.vocab_size}")
    check_batch_size("batch_size", cfg.batch_size, mesh)
    tx = train.make_optimizer(optimizer_config(cfg.optim, cfg.steps), params,
                              freeze=freeze_rule(cfg))
    abstract, init_state = train.compile_init(
        lambda p: train.create_train_state(p, tx, jax.random.fold_in(key, 1),
                                           param_shardings=shardings_of(params)), params)

    dropout = config.lora.enabled and config.lora.dropout > 0  # adapter dropout (PEFT's)

    def sum_loss(p, batch, rng):
        out = model.apply({"params": p}, batch["tokens"], batch["mask"],
                          batch.get("positions"), segment_ids=batch.get("segment_ids"),
                          skip_logits=config.logit_chunk > 0, deterministic=not dropout,
                          rngs={"dropout": rng} if dropout else None)
        targets = losses.next_token_targets(batch["mask"])
        if "loss_mask" in batch:  # learnt tokens only (responses; no segment's first token)
            targets = targets * batch["loss_mask"]
        total, count = losses.model_nll_sum(out, p, config, batch["tokens"], targets)
        return total, (count, {"train/nll": total})

    step = jit_train_step(train.make_train_step(sum_loss, tx,
                                                num_microbatches=cfg.num_microbatches),
                          abstract, sharding.batch_sharding(mesh, rules))
    local = cfg.batch_size // jax.process_count()
    notes = ()
    if tokenizer is None:
        batches = data.progression_batches(batch_size=local, length=cfg.length,
                                           vocab_size=config.vocab_size, seed=cfg.seed)
    else:
        dc = cfg.data
        text_file = dc.file or builtin_file(layout, "corpus", data.builtin.write_texts,
                                            seed=cfg.seed)
        texts = train.main_process_first(
            data.build_sft_dataset, text_file, tokenizer, layout.built_data,
            max_len=dc.row_len, on_error=dc.on_error, train_on_prompt=dc.train_on_prompt,
            buckets=dc.buckets)
        batches = data.sft_batches(texts.splits["train"], local,
                                   pad_id=tokenizer.pad_token_id or 0, seed=cfg.seed,
                                   packing=dc.packed)
        notes = (data_note(texts.stats, {"max_prompt_len": "data.max_len"},
                           batches=batches, layout=layout),)
    result = train_with_checkpoints(
        cfg, layout, step=step, abstract_state=abstract, init_state=init_state,
        batches=GlobalBatches(batches, mesh, rules), mesh=mesh, rules=rules,
        leaf_names=train.leaf_names(params))
    print(f"{'preempted' if result.preempted else 'finished'} at step {result.step}", flush=True)
    warnings = tuple(layout.read_warnings())
    if result.preempted:
        return StageResult(str(layout.root), None, result.step, True, data=notes,
                           warnings=warnings)
    export_policy(layout, config, result.state.params, tokenizer)  # collective
    return StageResult(str(layout.root), str(layout.export), result.step, False, data=notes,
                       warnings=warnings)
