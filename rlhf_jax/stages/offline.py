"""Offline preference optimisation and offline RL from logged feedback as a library function:
`train_offline(OfflineConfig(...))` — DPO, cDPO, robust DPO, IPO, SimPO, ORPO, KTO, AWR and
filtered behaviour cloning on comparisons, rankings, binary feedback or ratings."""
from __future__ import annotations

import json
from pathlib import Path

import jax

from rlhf_jax import data, models, offline, sharding, train
from rlhf_jax.stages.common import (GlobalBatches, StageResult, builtin_file,
                                    check_batch_size, export_policy, shapes_note, freeze_rule,
                                    labelled_dataset, load_policy, optimizer_config,
                                    shardings_of, start_run, train_with_checkpoints, warn)
from rlhf_jax.stages.configs.offline import OfflineConfig, OfflineData  # noqa: F401
from rlhf_jax.stages.layout import RunLayout


def _reference_identity(cfg: OfflineConfig) -> dict:
    """What the reference policy is, for the cache key: the directory's weight files (names,
    sizes, modification times) or the preset and seed it was initialised from."""
    where = cfg.reference_dir or cfg.policy_dir
    if not where:
        return {"preset": cfg.preset, "seed": cfg.seed}
    files = sorted(Path(where).glob("*.safetensors*")) + sorted(Path(where).glob("config.json"))
    return {"policy_dir": str(Path(where).resolve()),
            "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


_SHAPE_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "intermediate_size", "tie_word_embeddings")


def _reference_model(cfg: OfflineConfig, config, mesh, rules):
    """(model, params) of the reference at `cfg.reference_dir`: read in full with its own plain
    config (no adapters, no int8 base, whatever the policy's LoRA settings), its weights sharded
    like the policy's; with LoRA they replace every module of the policy's in the reference
    overlay. Its architecture must be the policy's (`_SHAPE_FIELDS`)."""
    ref_config, ref_model, ref = models.load_or_init_model(
        cfg.reference_dir, cfg.preset, mesh, rules, jax.random.key(0), remat=config.remat,
        attention=config.attention, logit_chunk=config.logit_chunk)
    differ = [f"{f} {getattr(ref_config, f)} != {getattr(config, f)}" for f in _SHAPE_FIELDS
              if getattr(ref_config, f) != getattr(config, f)]
    if differ:
        raise models.CheckpointFormatError(
            f"reference_dir={cfg.reference_dir!r} is another architecture than the policy "
            f"({cfg.policy_dir or cfg.preset}): {'; '.join(differ)}")
    return ref_model, ref


def train_offline(cfg: OfflineConfig) -> StageResult:
    """Train with `cfg.loss.method` on the logged feedback, evaluating the same objective and
    its implicit-reward accuracy on the held-out split; export the policy (and tokenizer) to
    `<run_dir>/export`. Rerunning resumes exactly; SIGTERM saves and returns a preempted result.
    """
    layout = RunLayout(cfg.run_dir)
    mesh, rules = start_run(cfg, layout)
    key, dc, lc = jax.random.key(cfg.seed), cfg.data, cfg.loss
    tokenizer, config, model, params = load_policy(cfg, layout, mesh, rules,
                                                   jax.random.fold_in(key, 0))
    train_file = dc.train_file or builtin_file(layout, "comparisons",
                                               data.builtin.write_comparisons,
                                               n=dc.builtin_pairs, seed=cfg.seed)
    ds, note = labelled_dataset(dc, train_file, tokenizer, layout, cfg.seed)
    if ds.objectives:  # the offline methods have one preference; say what they do with these
        warn(layout, f"{train_file}: records name objectives {ds.objectives}; the offline "
                     "methods learn one preference from every label, whichever objective it is "
                     "about (a multi-objective reward model keeps them apart: the reward stage's "
                     "objectives)")
    held_out = "validation" in ds.splits
    check_batch_size("batch_size", cfg.batch_size, mesh,
                     [("num_microbatches", cfg.num_microbatches)])
    pad_id, kto = tokenizer.pad_token_id or 0, lc.method == "kto"
    shape = dict(prompt_len=dc.prompt_len, num_responses=max(1, ds.num_responses),
                 pad_id=pad_id)
    place = lambda tree: train.global_batch_from_local(tree, mesh, rules)  # noqa: E731
    ref_params, caches = None, {}
    # LoRA: the reference is the policy's own base with adapters off (no copy of the weights)
    ref_model = models.DecoderModel(config.without_lora()) if config.lora.enabled else None
    if lc.uses_reference and cfg.reference_dir:  # another policy, read in full
        ref_model, ref_params = _reference_model(cfg, config, mesh, rules)
    elif lc.uses_reference:
        # the weights the reference is computed from: with LoRA the policy's own (at step 0 it
        # is the reference), else a copy (the update donates the policy)
        ref_params = params if ref_model else jax.tree.map(lambda x: x.copy(), params)
    if lc.uses_reference:
        if cfg.reference == "cached":
            ident = _reference_identity(cfg)
            with sharding.activation_sharding(mesh, rules):  # as the step is compiled
                for split, source in ds.splits.items():
                    caches[split] = offline.cached_reference(
                        layout.built_data / f"reference-{split}.npz",
                        {"data": ds.fingerprint, "split": split, "reference": ident,
                         "kto": kto, "model": repr(config)},
                        lambda: offline.compute_reference_cache(
                            ref_model or model, ref_params, source, batch_size=cfg.batch_size,
                            kto=kto, place=place, **shape))
        if cfg.reference == "cached":
            ref_params = None  # no second copy of the weights while training
        elif ref_model is not None and not cfg.reference_dir:
            ref_params = models.reference_overlay(config, params)  # LoRA: the saved modules
    tx = train.make_optimizer(optimizer_config(cfg.optim, cfg.steps), params,
                              freeze=freeze_rule(cfg))
    abstract, init_state = train.compile_init(
        lambda p: train.create_train_state(p, tx, jax.random.fold_in(key, 1),
                                           param_shardings=shardings_of(params)), params)

    def step_fn(state, inputs):
        loss = offline.make_offline_loss(model, lc, inputs.get("ref_params"), ref_model)
        rest = {k: v for k, v in inputs.items() if k != "ref_params"}
        return train.make_train_step(loss, tx, num_microbatches=cfg.num_microbatches)(state, rest)

    def inputs_sharding(with_ref: bool):
        batch_sh = sharding.batch_sharding(mesh, rules, 1)
        sh = {"batch": batch_sh}
        if kto:
            sh["partners"] = batch_sh
        if caches:
            sh["reference"] = batch_sh
        if with_ref and ref_params is not None:
            sh["ref_params"] = shardings_of(ref_params)
        return sh

    state_sh = jax.tree.map(lambda a: a.sharding, abstract)
    jitted = jax.jit(step_fn, in_shardings=(state_sh, inputs_sharding(True)),
                     out_shardings=(state_sh, None), donate_argnums=0)
    extra = {} if ref_params is None else {"ref_params": ref_params}
    step = lambda state, inputs: jitted(state, {**inputs, **extra})  # noqa: E731

    def inputs(split: str, local_iter):
        return GlobalBatches(offline.OfflineInputs(
            local_iter, ds.splits[split], kto=kto, num_responses=shape["num_responses"],
            pad_id=pad_id, cache=caches.get(split)), mesh, rules)

    local = cfg.batch_size // jax.process_count()
    batches = inputs("train", data.preference_batches([ds.splits["train"]], local,
                                                      seed=cfg.seed, **shape))
    note += shapes_note(batches, "prompt×response")
    eval_sums = jax.jit(lambda p, x: offline.make_offline_loss(
        model, lc, x.get("ref_params"), ref_model)(
            p, {k: v for k, v in x.items() if k != "ref_params"}, None))

    def evaluate(state):
        if not held_out:
            return {}
        total, count, sums = 0.0, 0.0, {}
        for x in inputs("validation", offline.epoch_batches(ds.splits["validation"], local,
                                                            **shape)):
            loss, (n, metric) = jax.device_get(eval_sums(state.params, {**x, **extra}))
            total, count = total + float(loss), count + float(n)
            for k, v in metric.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        count = max(count, 1.0)
        return {"eval/loss": total / count, "eval/count": count,
                **{f"eval/{k}": v / count for k, v in sums.items()}}

    result = train_with_checkpoints(
        cfg, layout, step=step, abstract_state=abstract, init_state=init_state,
        batches=batches, mesh=mesh, rules=rules, eval_fn=evaluate, eval_every=cfg.eval_every,
        leaf_names=train.leaf_names(params),
        progress_keys=("train/loss", "rewards/accuracy") if lc.method in offline.PAIRWISE
        else ("train/loss",))
    if result.preempted:
        print(f"preempted at step {result.step}", flush=True)
        return StageResult(str(layout.root), None, result.step, True, data=(note,),
                           warnings=tuple(layout.read_warnings()))
    with sharding.activation_sharding(mesh, rules):
        metrics = evaluate(result.state)
    if train.is_main_process():
        layout.eval_summary.write_text(json.dumps(
            {**metrics, "method": lc.method, "steps": result.step, "data": ds.stats}, indent=1))
    export_policy(layout, config, result.state.params, tokenizer)  # collective
    print(json.dumps(metrics), flush=True)
    return StageResult(str(layout.root), str(layout.export), result.step, False, metrics,
                       data=(note,), warnings=tuple(layout.read_warnings()))

