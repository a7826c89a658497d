"""Train a reward model on comparisons / rankings / ratings; evaluate, normalise and export it.

    python experiments/train_reward.py [--config.data.train_file=prefs.jsonl --config.model_dir=D]
"""
import json
import os
import sys

import jax

from rlhf_jax import checkpoint, data, models, reward, sharding, train
from rlhf_jax.train.setup import compile_init, leaf_names, load_or_init_model

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "reward.py")


def main(argv):
    cfg = train.parse_config(argv, DEFAULT)
    train.initialize()
    mesh, rules = sharding.make_mesh(cfg.mesh), sharding.logical_rules(cfg.sharding)
    key, dc = jax.random.key(cfg.seed), cfg.data
    drop = dict(embd_dropout=cfg.dropout, attn_dropout=cfg.dropout, resid_dropout=cfg.dropout)
    config, model, params = load_or_init_model(
        cfg.model_dir, cfg.preset, mesh, rules, jax.random.fold_in(key, 0), heads=("reward",),
        num_reward_outputs=cfg.num_reward_outputs, **drop)
    if cfg.model_dir:
        tokenizer = models.load_tokenizer(cfg.model_dir, config)
    else:  # built-in task: simulated annotators and a tokenizer trained on its corpus
        tokenizer = data.builtin.train_tokenizer(os.path.join(cfg.run_dir, "tokenizer"))
    train_file = dc.train_file or str(data.builtin.write_comparisons(
        os.path.join(cfg.run_dir, "data", "comparisons.jsonl"), dc.builtin_pairs, seed=cfg.seed))
    ds = data.build_preference_dataset(
        train_file, dc.kind, tokenizer, os.path.join(cfg.run_dir, "data", "built"),
        max_prompt_len=dc.max_prompt_len, max_response_len=dc.max_response_len,
        rating_range=(dc.rating_low, dc.rating_high), on_error=dc.on_error,
        validation_fraction=dc.validation_fraction, seed=cfg.seed)
    shape = dict(prompt_len=dc.max_prompt_len, num_responses=max(2, ds.num_responses),
                 pad_id=tokenizer.pad_token_id or 0)
    tx = train.make_optimizer(train.OptimizerConfig(total_steps=cfg.steps, **cfg.optim), params)
    abstract, init_state = compile_init(
        lambda p: train.create_train_state(p, tx, jax.random.fold_in(key, 1)), params)
    loss = reward.make_reward_loss(model, reward.RewardLossConfig(**cfg.loss),
                                   dropout=cfg.dropout > 0)
    state_sh = jax.tree.map(lambda a: a.sharding, abstract)
    step = jax.jit(train.make_train_step(loss, tx), out_shardings=(state_sh, None),
                   in_shardings=(state_sh, sharding.batch_sharding(mesh, rules, 1)),
                   donate_argnums=0)
    batches = data.preference_batches([ds.splits["train"]], cfg.batch_size, seed=cfg.seed, **shape)
    ckpt = checkpoint.Checkpointer(checkpoint.CheckpointConfig(
        os.path.join(cfg.run_dir, "checkpoints"), **cfg.checkpoint))
    restored = ckpt.restore(abstract)
    state, loop_state = (init_state(), None) if restored is None else (restored.state,
                                                                        restored.loop_state)
    if restored is not None:
        batches.set_state(restored.data_state)
        print(f"resumed from step {restored.step}", flush=True)
    evaluate = lambda s: reward.evaluate_comparisons(  # noqa: E731
        model, s.params, ds.splits["validation"], annotators=ds.annotators,
        batch_size=cfg.batch_size, **shape)
    es = cfg.early_stopping
    with sharding.activation_sharding(mesh, rules):
        result = train.run_training(
            step, state, batches, total_steps=cfg.steps, checkpointer=ckpt,
            writer=train.MetricWriter(cfg.run_dir), config=cfg.to_dict(),
            log_every=cfg.log_every, eval_fn=evaluate, eval_every=cfg.eval_every,
            early_stop_metric=es.metric, patience=es.patience, early_stop_mode=es.mode,
            loop_state=loop_state, leaf_names=leaf_names(params),
            progress_keys=("train/loss", "reward/accuracy"))
    ckpt.close()
    if result.preempted:
        return print(f"preempted at step {result.step}", flush=True)
    params, norm = reward.normalise_reward_params(model, result.state.params, ds.splits["train"],
                                                  max_samples=cfg.normalise_samples,
                                                  batch_size=cfg.batch_size, **shape)
    summary = {**evaluate(result.state.replace(params=params)), "normalisation": norm,
               "data": ds.stats, "steps": result.step, "stopped_early": result.stopped_early}
    if train.is_main_process():
        reward.write_summary(os.path.join(cfg.run_dir, "eval_summary.json"), summary)
        reward.save_reward_model(os.path.join(cfg.run_dir, "export"), config, params,
                                 tokenizer=tokenizer, metadata={"normalisation": norm})
    print(json.dumps({k: v for k, v in summary.items() if k.startswith("eval/")}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
