"""Reward-model training as a library function: `train_reward_model(RewardConfig(...))`."""
from __future__ import annotations

import dataclasses
import json

import jax

from rlhf_jax import data, models, reward, sharding, train
from rlhf_jax.stages.common import (GlobalBatches, StageResult, builtin_file,
                                    builtin_tokenizer, check_batch_size, freeze_rule, shapes_note,
                                    jit_train_step, labelled_dataset, model_overrides,
                                    optimizer_config, shardings_of, start_run,
                                    train_with_checkpoints)
from rlhf_jax.stages.configs.reward import EarlyStopping, RewardConfig, RewardData  # noqa: F401
from rlhf_jax.stages.layout import RunLayout


def _check_objectives(objectives: tuple, named: list, path) -> None:
    """Every objective the records name must be a head, and records that name objectives need
    heads for them (else their `objective` fields would be silently ignored)."""
    unknown = sorted(set(named) - set(objectives))
    if named and not objectives:
        raise train.ConfigError(f"{path}: records name objectives {named} but objectives is "
                                f"empty: set --config.objectives={','.join(named)}")
    if unknown:
        raise train.ConfigError(f"{path}: records name objectives {unknown} that are not among "
                                f"objectives={','.join(objectives)!r}")


def train_reward_model(cfg: RewardConfig) -> StageResult:
    """Train, evaluate on the held-out split, normalise (Ziegler et al. 2019, §2.2) and export
    to `<run_dir>/export`; held-out metrics go to `<run_dir>/eval_summary.json` and the result."""
    layout = RunLayout(cfg.run_dir)
    mesh, rules = start_run(cfg, layout)
    key, dc = jax.random.key(cfg.seed), cfg.data
    drop = dict(embd_dropout=cfg.dropout, attn_dropout=cfg.dropout, resid_dropout=cfg.dropout)
    objectives = reward.parse_objectives(cfg.objectives)
    config, model, params = models.load_or_init_model(
        cfg.model_dir, cfg.preset, mesh, rules, jax.random.fold_in(key, 0), heads=("reward",),
        num_reward_outputs=len(objectives) or cfg.num_reward_outputs, **drop,
        **model_overrides(cfg))
    if cfg.model_dir:
        tokenizer = models.load_tokenizer(cfg.model_dir, config)
    else:  # built-in task: simulated annotators and a tokenizer trained on its corpus
        tokenizer = builtin_tokenizer(layout)
    tokenizer = data.use_template(tokenizer, cfg.chat_template)
    train_file = dc.train_file or builtin_file(layout, "comparisons",
                                               data.builtin.write_comparisons,
                                               n=dc.builtin_pairs, seed=cfg.seed)
    ds, note = labelled_dataset(dc, train_file, tokenizer, layout, cfg.seed)
    _check_objectives(objectives, ds.objectives, train_file)
    held_out = "validation" in ds.splits
    shape = dict(prompt_len=dc.prompt_len, num_responses=max(2, ds.num_responses),
                 pad_id=tokenizer.pad_token_id or 0)
    check_batch_size("batch_size", cfg.batch_size, mesh)
    tx = train.make_optimizer(optimizer_config(cfg.optim, cfg.steps), params,
                              freeze=freeze_rule(cfg))
    abstract, init_state = train.compile_init(
        lambda p: train.create_train_state(p, tx, jax.random.fold_in(key, 1),
                                           param_shardings=shardings_of(params)), params)
    if objectives:  # one head per objective (no dropout: deterministic heads)
        loss = reward.make_objective_reward_loss(model, cfg.loss, objectives,
                                                 data_objectives=ds.objectives,
                                                 aspects=ds.aspects)
    else:
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
        out = reward.evaluate_comparisons(model, state.params, ds.splits["validation"],
                                          annotators=ds.annotators, batch_size=cfg.batch_size,
                                          **shape)
        if objectives:  # each objective's head on the comparisons about it
            out.update(reward.evaluate_objectives(model, state.params, ds.splits["validation"],
                                                  objectives, ds.objectives,
                                                  batch_size=cfg.batch_size, **shape))
        return out

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
    meta = {"normalisation": norm, **({"objectives": list(objectives)} if objectives else {})}
    reward.save_reward_model(layout.export, config, params, tokenizer=tokenizer,
                             metadata=meta)  # collective; adapters merged
    if config.lora.enabled:  # the backbone's adapter alone (the head is in the export)
        backbone = dataclasses.replace(config.lora, modules_to_save=())  # no LM head here
        models.save_peft_adapter(layout.adapter, config.replace(lora=backbone), params)
    metrics = {k: v for k, v in summary.items() if k.startswith("eval/")}
    print(json.dumps(metrics), flush=True)
    return StageResult(str(layout.root), str(layout.export), result.step, False, metrics,
                       data=(note,), warnings=tuple(layout.read_warnings()))
