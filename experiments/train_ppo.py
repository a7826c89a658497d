"""PPO from reward-model feedback, with exact resume: rerun the same command to continue.

    python experiments/train_reward.py          # the reward model (built-in task by default)
    python experiments/train_ppo.py [--config.policy_dir=D --config.prompts.file=prompts.jsonl]
"""
import json
import os
import sys

import jax

from rlhf_jax import checkpoint, data, eval as rl_eval, models, ppo, sharding, train
from rlhf_jax.eval.scorers import TEXT_TERMS
from rlhf_jax.ppo.setup import load_ppo_models
from rlhf_jax.sampling import SamplingConfig
from rlhf_jax.train.setup import compile_init, leaf_names

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "ppo.py")


def write_samples(path, models_, params, prompts, key, sampling, gold_fn=None):
    """Responses to fixed prompts with their reward-model (and gold) scores, as JSONL."""
    result = rl_eval.evaluate_policy(params, models_.ref_params, models_.config, prompts, key,
                                     sampling=sampling, tokenizer=models_.tokenizer,
                                     gold_fn=gold_fn, proxy_params=models_.reward_params,
                                     proxy_fn=ppo.reward_model_scorer(models_.reward_config))
    if train.is_main_process():
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in result["rows"])
    return result["summary"]


def stop_ids(tokenizer, spec: str) -> tuple:
    """Vocabulary ids of the comma-separated stop tokens (each must be a single token)."""
    ids = []
    for text in filter(None, spec.split(",")):
        found = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(found) != 1:
            raise train.ConfigError(f"stop_tokens: {text!r} is not one token of the vocabulary "
                                    f"(it tokenises to {found})")
        ids.append(int(found[0]))
    return tuple(ids)


def check_batch_sizes(cfg, mesh):
    """Batch sizes must split over the mesh's batch axes, the processes and the minibatches."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = cfg.batch_size * cfg.rollout.group_size
    checks = [("batch_size × rollout.group_size", rows, (shards, cfg.ppo.num_minibatches)),
              ("batch_size", cfg.batch_size, (jax.process_count(),))]
    if cfg.ppo.ptx_coef > 0:
        checks.append(("ptx.batch_size", cfg.ptx.batch_size,
                       (shards, cfg.ppo.num_minibatches, jax.process_count())))
    for field, value, divisors in checks:
        for d in divisors:
            if value % d:
                raise train.ConfigError(
                    f"{field} = {value} must be divisible by {d} (data×fsdp devices = {shards}, "
                    f"ppo.num_minibatches = {cfg.ppo.num_minibatches}, processes = "
                    f"{jax.process_count()})")


def main(argv):
    cfg = train.parse_config(argv, DEFAULT)
    train.initialize()
    mesh, rules = sharding.make_mesh(cfg.mesh), sharding.logical_rules(cfg.sharding)
    key = jax.random.key(cfg.seed)
    m = load_ppo_models(cfg.policy_dir, cfg.reward_dir, preset=cfg.preset, critic=cfg.critic,
                        mesh=mesh, rules=rules, key=jax.random.fold_in(key, 0))
    config, tokenizer, params = m.config, m.tokenizer, m.params
    pad_id = tokenizer.pad_token_id or 0
    prompt_file = cfg.prompts.file or str(data.builtin.write_prompts(
        os.path.join(cfg.run_dir, "data", "prompts.jsonl"), n=200))
    prompt_ds = data.build_prompt_dataset(
        prompt_file, tokenizer, os.path.join(cfg.run_dir, "data", "built"),
        max_prompt_len=cfg.prompts.max_prompt_len, on_error=cfg.prompts.on_error)
    check_batch_sizes(cfg, mesh)
    local = cfg.batch_size // jax.process_count()
    batches = data.prompt_batches(prompt_ds.splits["train"], local, pad_id=pad_id, seed=cfg.seed)
    ptx_batches = None
    if cfg.ppo.ptx_coef > 0:
        ptx_file = cfg.ptx.file or str(data.builtin.write_texts(
            os.path.join(cfg.run_dir, "data", "ptx.jsonl"), seed=cfg.seed))
        ptx_ds = data.build_prompt_dataset(ptx_file, tokenizer,
                                           os.path.join(cfg.run_dir, "data", "built"),
                                           max_prompt_len=cfg.ptx.max_len, field="text")
        ptx_batches = data.prompt_batches(ptx_ds.splits["train"],
                                          cfg.ptx.batch_size // jax.process_count(),
                                          pad_id=pad_id, seed=cfg.seed + 1)
    eos = (() if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)) + stop_ids(
        tokenizer, cfg.stop_tokens)
    sampling = SamplingConfig(eos_token_ids=eos, pad_token_id=pad_id, **cfg.sampling)
    rollout = ppo.RolloutConfig(**cfg.rollout)
    ppo_cfg = ppo.PPOConfig(temperature=sampling.temperature, **cfg.ppo)
    kl_init, kl_update = ppo.kl_controller(ppo.KLConfig(**cfg.kl))
    terms = tuple(ppo.text_reward_term(name, weight, tokenizer, TEXT_TERMS[name])
                  for name, weight in cfg.reward_terms.items() if weight)
    for name in filter(None, cfg.monitor_terms.split(",")):  # logged, weight 0
        if name not in TEXT_TERMS:
            raise train.ConfigError(f"monitor_terms: unknown scorer {name!r}; expected some of "
                                    f"{sorted(TEXT_TERMS)}")
        terms += (ppo.text_reward_term(name, 0.0, tokenizer, TEXT_TERMS[name]),)
    tx = train.make_optimizer(train.OptimizerConfig(total_steps=cfg.steps, **cfg.optim), params)
    abstract, init_state = compile_init(
        lambda p: train.create_train_state(p, tx, jax.random.fold_in(key, 1),
                                           helpers={"kl": kl_init()}), params)
    step = ppo.make_ppo_step(
        config=config, critic_config=m.critic_config, ref_params=m.ref_params,
        score_params=m.reward_params, score_fn=ppo.reward_model_scorer(m.reward_config),
        sampling=sampling, rollout=rollout, ppo=ppo_cfg, tx=tx,
        kl_update=kl_update, reward_terms=terms,
        place_batch=lambda b: train.global_batch_from_local(b, mesh, rules))
    ckpt = checkpoint.Checkpointer(checkpoint.CheckpointConfig(
        os.path.join(cfg.run_dir, "checkpoints"), **cfg.checkpoint))
    zipped = ppo.ZipBatches(batches, ptx_batches)
    restored = ckpt.restore(abstract)
    state = init_state() if restored is None else restored.state
    if restored is not None:
        zipped.set_state(restored.data_state)
        print(f"resumed from step {restored.step}", flush=True)
    eval_src = data.prompt_batches(prompt_ds.splits["train"], cfg.eval_prompts, pad_id=pad_id,
                                   seed=cfg.seed + 2, shuffle=True)
    eval_prompts = train.global_batch_from_local(next(eval_src), mesh, rules)
    gold_fn = TEXT_TERMS.get(cfg.monitor_terms.split(",")[0])  # the first monitored judge
    samples = lambda name, p: write_samples(  # noqa: E731
        os.path.join(cfg.run_dir, f"samples_{name}.jsonl"), m, p, eval_prompts,
        jax.random.fold_in(key, 2), sampling, gold_fn)
    with sharding.activation_sharding(mesh, rules):
        if restored is None:
            samples("before", m.ref_params)
        result = train.run_training(
            step, state, zipped, total_steps=cfg.steps, checkpointer=ckpt,
            writer=train.MetricWriter(cfg.run_dir), config=cfg.to_dict(),
            log_every=cfg.log_every, leaf_names=leaf_names(params),
            progress_keys=("score/mean", "kl/sequence", "time/iteration"))
        ckpt.close()
        if result.preempted:
            return print(f"preempted at step {result.step}", flush=True)
        after = samples("after", result.state.params["policy"])
    if train.is_main_process():
        models.save_hf_checkpoint(os.path.join(cfg.run_dir, "export"), config,
                                  result.state.params["policy"], tokenizer=tokenizer,
                                  overwrite=True)
    print(json.dumps({"steps": result.step, "beta": float(result.state.helpers["kl"].beta),
                      "reward_model_score_after": after["proxy"]["mean"]}),
          flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
