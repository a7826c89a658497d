"""Supervised fine-tuning with exact resume: rerun the same command to continue a stopped run.

    python experiments/train_sft.py [--config experiments/configs/sft.py] [--config.steps=500]
"""
import os
import sys

import jax

from rlhf_jax import checkpoint, data, losses, models, sharding, train
from rlhf_jax.train.setup import compile_init, leaf_names, load_or_init_model

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "sft.py")


def main(argv):
    cfg = train.parse_config(argv, DEFAULT)
    train.initialize()
    mesh, rules = sharding.make_mesh(cfg.mesh), sharding.logical_rules(cfg.sharding)
    key = jax.random.key(cfg.seed)
    if cfg.data.source not in ("progression", "text"):
        raise train.ConfigError(f"data.source={cfg.data.source!r}: expected 'progression' or "
                                "'text'")
    tokenizer, overrides = None, {}
    if cfg.data.source == "text":
        if cfg.model_dir:
            tokenizer = models.load_tokenizer(cfg.model_dir)
        else:  # built-in: a tokenizer trained on the built-in corpus
            tokenizer = data.builtin.train_tokenizer(os.path.join(cfg.run_dir, "tokenizer"))
            overrides["vocab_size"] = len(tokenizer)
    config, model, params = load_or_init_model(cfg.model_dir, cfg.preset, mesh, rules,
                                               jax.random.fold_in(key, 0), dtype=cfg.dtype,
                                               **overrides)
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise models.CheckpointFormatError(
            f"{cfg.model_dir}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"vocab_size is {config.vocab_size}")
    tx = train.make_optimizer(train.OptimizerConfig(total_steps=cfg.steps, **cfg.optim), params)
    abstract, init_state = compile_init(
        lambda p: train.create_train_state(p, tx, jax.random.fold_in(key, 1)), params)

    def sum_loss(p, batch, rng):
        logits = model.apply({"params": p}, batch["tokens"], batch["mask"]).logits
        # a target needs a real predecessor (left-padded rows)
        targets = batch["mask"].at[:, 1:].multiply(batch["mask"][:, :-1])
        total, count = losses.next_token_nll_sum(logits, batch["tokens"], targets)
        return total, (count, {"train/nll": total})

    state_sh = jax.tree.map(lambda a: a.sharding, abstract)
    step = jax.jit(train.make_train_step(sum_loss, tx, num_microbatches=cfg.num_microbatches),
                   in_shardings=(state_sh, sharding.batch_sharding(mesh, rules)),
                   out_shardings=(state_sh, None), donate_argnums=0)
    ckpt = checkpoint.Checkpointer(checkpoint.CheckpointConfig(
        os.path.join(cfg.run_dir, "checkpoints"), **cfg.checkpoint))
    if tokenizer is None:
        batches = data.progression_batches(batch_size=cfg.batch_size, length=cfg.length,
                                           vocab_size=config.vocab_size, seed=cfg.seed)
    else:
        text_file = cfg.data.file or str(data.builtin.write_texts(
            os.path.join(cfg.run_dir, "data", "corpus.jsonl"), seed=cfg.seed))
        texts = data.build_prompt_dataset(text_file, tokenizer,
                                          os.path.join(cfg.run_dir, "data", "built"),
                                          max_prompt_len=cfg.data.max_len, field="text",
                                          append_eos=True)
        batches = data.prompt_batches(texts.splits["train"], cfg.batch_size // jax.process_count(),
                                      pad_id=tokenizer.pad_token_id or 0, seed=cfg.seed)
    restored = ckpt.restore(abstract)
    if restored is None:
        state = init_state()
    else:
        state = restored.state
        batches.set_state(restored.data_state)
        print(f"resumed from step {restored.step}", flush=True)
    with sharding.activation_sharding(mesh, rules):
        result = train.run_training(
            step, state, batches, total_steps=cfg.steps, checkpointer=ckpt,
            writer=train.MetricWriter(cfg.run_dir), config=cfg.to_dict(),
            log_every=cfg.log_every, max_consecutive_skips=cfg.max_consecutive_skips,
            leaf_names=leaf_names(params))
    ckpt.close()
    if not result.preempted and train.is_main_process():
        from rlhf_jax.models import save_hf_checkpoint
        save_hf_checkpoint(os.path.join(cfg.run_dir, "export"), config,
                           result.state.params, tokenizer=tokenizer, overwrite=True)
    print(f"{'preempted' if result.preempted else 'finished'} at step {result.step}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
