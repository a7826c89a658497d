"""Supervised fine-tuning as a library function: `train_sft(SFTConfig(...))`."""
from __future__ import annotations

import jax

from rlhf_jax import data, losses, models, sharding, train
from rlhf_jax.stages.common import (GlobalBatches, StageResult, builtin_file,
                                    builtin_tokenizer, check_batch_size, data_note, export_policy,
                                    freeze_rule, jit_train_step, model_overrides, optimizer_config,
                                    shardings_of, start_run, train_with_checkpoints)
from rlhf_jax.stages.configs.sft import SFTConfig, SFTData  # noqa: F401 (re-exported)
from rlhf_jax.stages.layout import RunLayout


def _tokenizer(cfg: SFTConfig, layout: RunLayout):
    """The tokenizer (None for token progressions) and the model-config overrides it implies."""
    if cfg.data.source != "text":
        return None, {}
    if cfg.model_dir:
        return data.use_template(models.load_tokenizer(cfg.model_dir), cfg.chat_template), {}
    tokenizer = data.use_template(builtin_tokenizer(layout), cfg.chat_template)
    return tokenizer, {"vocab_size": len(tokenizer)}


def _row_len(dc: SFTData, config: models.TransformerConfig) -> int:
    """The text rows' length: `data.max_len`, or its default cut to a GPT-2 model's learned
    positions (beyond them it has no position embedding)."""
    if not config.is_gpt2:
        return dc.row_len
    if dc.max_len > config.max_position_embeddings:
        raise ValueError(f"data.max_len={dc.max_len} exceeds the model's "
                         f"{config.max_position_embeddings} learned positions "
                         f"(max_position_embeddings): set --config.data.max_len to at most "
                         f"{config.max_position_embeddings}")
    return min(dc.row_len, config.max_position_embeddings)


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
        if config.is_gpt2 and cfg.length > config.max_position_embeddings:
            raise ValueError(f"length={cfg.length} exceeds the model's "
                             f"{config.max_position_embeddings} learned positions "
                             "(max_position_embeddings)")
        batches = data.progression_batches(batch_size=local, length=cfg.length,
                                           vocab_size=config.vocab_size, seed=cfg.seed)
    else:
        dc = cfg.data
        text_file = dc.file or builtin_file(layout, "corpus", data.builtin.write_texts,
                                            seed=cfg.seed)
        texts = train.main_process_first(
            data.build_sft_dataset, text_file, tokenizer, layout.built_data,
            max_len=_row_len(dc, config), on_error=dc.on_error,
            train_on_prompt=dc.train_on_prompt,
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
