"""PPO from reward-model feedback, with exact resume: rerun the same command to continue.

    python experiments/train_reward.py          # the reward model (built-in task by default)
    python experiments/train_ppo.py [--config.policy_dir=D --config.prompts.file=prompts.jsonl]
"""
import json
import os
import sys

import jax
import numpy as np

from rlhf_jax import checkpoint, data, models, ppo, reward, sharding, train
from rlhf_jax.models import CheckpointFormatError
from rlhf_jax.sampling import SamplingConfig, generate
from rlhf_jax.train.setup import compile_init, leaf_names, load_or_init_model

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "ppo.py")


def load_models(cfg, mesh, rules, key):
    """Reward model, tokenizer, policy (+ frozen reference copy) and trainable params."""
    if not os.path.isdir(cfg.reward_dir):
        raise CheckpointFormatError(
            f"reward_dir={cfg.reward_dir!r} does not exist; train one first with "
            "`python experiments/train_reward.py` or point --config.reward_dir at a reward "
            "model export")
    rm_config, rm_params, rm_meta = reward.load_reward_model(cfg.reward_dir)
    rm_model = models.DecoderModel(rm_config, heads=("reward",),
                                   num_reward_outputs=rm_meta["num_outputs"])
    rm_params = sharding.shard_params(rm_params, models.logical_axes(rm_model), mesh, rules)
    tokenizer = models.load_tokenizer(cfg.reward_dir, rm_config)
    heads = ("lm",) if cfg.critic == "reward" else ("lm", "value")
    if cfg.critic not in ("reward", "shared"):
        raise train.ConfigError(f"critic={cfg.critic!r}: expected 'reward' or 'shared'")
    if cfg.policy_dir:
        config, _, policy = load_or_init_model(cfg.policy_dir, cfg.preset, mesh, rules, key,
                                               heads=heads)
        policy_tok = models.load_tokenizer(cfg.policy_dir, config)
        if policy_tok.get_vocab() != tokenizer.get_vocab():
            raise CheckpointFormatError(
                f"the tokenizers of policy_dir={cfg.policy_dir!r} and reward_dir="
                f"{cfg.reward_dir!r} differ; the reward model must read the policy's tokens")
    else:
        config, _, policy = load_or_init_model("", cfg.preset, mesh, rules, key, heads=heads,
                                               vocab_size=rm_config.vocab_size)
    if config.vocab_size != rm_config.vocab_size:
        raise CheckpointFormatError(f"policy vocab_size {config.vocab_size} != reward model "
                                    f"vocab_size {rm_config.vocab_size}")
    ref = {k: v for k, v in jax.tree.map(lambda x: x.copy(), policy).items() if k != "value_head"}
    params = {"policy": policy}
    if cfg.critic == "reward":  # a copy: the update donates its buffers
        params["critic"] = jax.tree.map(lambda x: x.copy(), ppo.critic_from_reward_model(rm_params))
    return config, rm_config, rm_params, tokenizer, ref, params


def write_samples(path, tokenizer, params, config, score_fn, rm_params, prompts, key, sampling):
    """Sampled responses to fixed prompts with their reward-model scores (JSONL)."""
    out = generate(params, prompts["tokens"], prompts["mask"], key, config=config,
                   sampling=sampling)
    scores = score_fn(rm_params, prompts["tokens"], prompts["mask"], out.tokens, out.mask)
    rows = [{"prompt": tokenizer.decode(p[m > 0], skip_special_tokens=True),
             "response": tokenizer.decode(r[rm > 0], skip_special_tokens=True),
             "reward_model_score": float(s)}
            for p, m, r, rm, s in zip(*jax.device_get((prompts["tokens"], prompts["mask"],
                                                       out.tokens, out.mask, scores)))]
    if train.is_main_process():
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def check_batch_sizes(cfg, mesh):
    """Batch sizes must split over the mesh's batch axes, the processes and the minibatches."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = cfg.batch_size * cfg.rollout.group_size
    for field, value, divisors in (
            ("batch_size × rollout.group_size", rows, (shards, cfg.ppo.num_minibatches)),
            ("batch_size", cfg.batch_size, (jax.process_count(),)),
            ("ptx.batch_size", cfg.ptx.batch_size if cfg.ppo.ptx_coef > 0 else shards,
             (shards, cfg.ppo.num_minibatches, jax.process_count()))):
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
    config, rm_config, rm_params, tokenizer, ref, params = load_models(
        cfg, mesh, rules, jax.random.fold_in(key, 0))
    critic_config = rm_config if "critic" in params else None
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
    eos = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
    sampling = SamplingConfig(eos_token_ids=eos, pad_token_id=pad_id, **cfg.sampling)
    rollout = ppo.RolloutConfig(**cfg.rollout)
    ppo_cfg = ppo.PPOConfig(temperature=sampling.temperature, **cfg.ppo)
    kl_init, kl_update = ppo.kl_controller(ppo.KLConfig(**cfg.kl))
    terms = tuple(ppo.text_reward_term(name, weight, tokenizer, ppo.TEXT_TERMS[name])
                  for name, weight in cfg.reward_terms.items() if weight)
    tx = train.make_optimizer(train.OptimizerConfig(total_steps=cfg.steps, **cfg.optim), params)
    abstract, init_state = compile_init(
        lambda p: train.create_train_state(p, tx, jax.random.fold_in(key, 1),
                                           helpers={"kl": kl_init()}), params)
    score_fn = ppo.reward_model_scorer(rm_config)
    step = ppo.make_ppo_step(
        config=config, critic_config=critic_config, ref_params=ref, score_params=rm_params,
        score_fn=score_fn, sampling=sampling, rollout=rollout, ppo=ppo_cfg, tx=tx,
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
    eval_sampling = SamplingConfig(eos_token_ids=eos, pad_token_id=pad_id, **cfg.sampling)
    with sharding.activation_sharding(mesh, rules):
        if restored is None:
            write_samples(os.path.join(cfg.run_dir, "samples_before.jsonl"), tokenizer, ref,
                          config, score_fn, rm_params, eval_prompts,
                          jax.random.fold_in(key, 2), eval_sampling)
        result = train.run_training(
            step, state, zipped, total_steps=cfg.steps, checkpointer=ckpt,
            writer=train.MetricWriter(cfg.run_dir), config=cfg.to_dict(),
            log_every=cfg.log_every, leaf_names=leaf_names(params),
            progress_keys=("score/mean", "kl/sequence", "time/iteration"))
        ckpt.close()
        if result.preempted:
            return print(f"preempted at step {result.step}", flush=True)
        after = write_samples(os.path.join(cfg.run_dir, "samples_after.jsonl"), tokenizer,
                              result.state.params["policy"], config, score_fn, rm_params,
                              eval_prompts, jax.random.fold_in(key, 2), eval_sampling)
    if train.is_main_process():
        models.save_hf_checkpoint(os.path.join(cfg.run_dir, "export"), config,
                                  result.state.params["policy"], tokenizer=tokenizer,
                                  overwrite=True)
    print(json.dumps({"steps": result.step, "beta": float(result.state.helpers["kl"].beta),
                      "score_after": float(np.mean([r["reward_model_score"] for r in after]))}),
          flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
