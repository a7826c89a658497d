"""Memory of full fine-tuning vs LoRA in the real jitted steps, measured without a GPU.

For Llama-family configs (TinyLlama-1.1B's, Llama-3.2-3B's and Llama-3-8B's shapes, bfloat16
parameters and compute, AdamW moments in the parameters' dtype, adapters in float32), this
compiles — allocating nothing: every argument is a `jax.ShapeDtypeStruct` with its FSDP
sharding — the programs the stages run and reads XLA's `compiled.memory_analysis()`:

* reward: the reward stage's step (`reward.make_reward_loss` → `train.make_train_step`,
  state donated), 16 pairs × 512 tokens;
* ppo_update: `ppo.ppo_update` over 64 rollouts × (256 + 256) tokens, 4 epochs; full
  fine-tuning trains policy and critic (initialised from the reward model) and keeps a frozen
  copy of the policy as the reference; LoRA trains the adapters (and the value head) and passes
  the frozen bases as the update's non-donated `frozen` argument — the reference is the policy's
  own base read with adapters off, so there is no reference copy. The reward model is resident
  in both (it scores every rollout);
* dpo: the offline stage's step with the reference scored in the step (`reference="step"`):
  full fine-tuning passes a frozen copy of the policy; LoRA reads the base with adapters off.

LoRA here is rank 16 (α 32) on the attention projections q, k, v, o (`--rank`, `--targets`).
Per step and mode it prints trainable parameters, optimiser-state bytes, argument bytes (what
the program takes: parameters, state, batch), resident bytes (arguments + models that stay on
the device while the program runs but are not its arguments: the reward model during the PPO
update), temporaries and peak = resident + out − alias + temp, all per device. Training steps
use `remat="full"` and `logit_chunk=8192` as `benchmarks/memory.py` does; the same three
caveats of XLA:CPU apply (it upcasts bfloat16 matmul operands, keeps full-size float32
gradients under FSDP and may hoist rematerialised recomputation), so temporaries are the CPU
compiler's account; parameters, moments and resident bytes do not depend on the backend.

Then, for each model size on 1 and 8 (fake CPU) devices under the FSDP preset, the LoRA PPO
update's peak per device with the 64 rollouts in m = 1 or 4 minibatches per epoch
(`--fit-minibatches`; smaller minibatches hold fewer activations), and the largest size whose
peak fits in 24 GB (`--budget-gb`), written size@m with the fewest minibatches that fit.

Targets (issue #15): LoRA's optimiser state ≤ 2% of full fine-tuning's, LoRA PPO resident
bytes ≤ 0.6× of full fine-tuning's. The last line is `lora_memory: ratio=<full / LoRA PPO
resident bytes> opt_state_frac=<LoRA / full optimiser bytes, PPO> ppo_resident_frac=<LoRA /
full PPO resident bytes> largest_fit_1dev=… largest_fit_8dev=…`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

GB, GIB = 1e9, 2.0 ** 30
MARK = "LORAMEM "
SIZES = dict(_common.LLAMA_SIZES)
# Llama-3.2-3B's shape
SIZES["3b"] = dict(model_type="llama", vocab_size=128256, hidden_size=3072, num_layers=28,
                   num_heads=24, num_kv_heads=8, intermediate_size=8192,
                   max_position_embeddings=8192, rope_theta=500000.0, norm_eps=1e-5,
                   qkv_bias=False, out_bias=False, mlp_bias=False, tie_word_embeddings=True,
                   bos_token_id=128000, eos_token_ids=(128001,))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1b", help="the full-vs-LoRA comparison's model size")
    p.add_argument("--fit-sizes", default="1b,3b,8b",
                   help="sizes whose LoRA PPO update is checked against the budget")
    p.add_argument("--device-counts", default="1,8")
    p.add_argument("--budget-gb", type=float, default=24.0)
    p.add_argument("--minibatches", type=int, default=1,
                   help="PPO minibatches per epoch in the full-vs-LoRA table (1: all rollouts "
                        "in each gradient step, as benchmarks/memory.py)")
    p.add_argument("--fit-minibatches", default="1,4",
                   help="PPO minibatch counts tried in the fit search (the stage's default is 2)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--targets", default="q,k,v,o")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--rollouts", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--response-len", type=int, default=256)
    p.add_argument("--dpo-pairs", type=int, default=16)
    p.add_argument("--error-size", default="1b",
                   help="model shape whose logits error of the int8 base is measured")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)  # "devices:size:steps:modes"
    return p.parse_args(argv)


def child(args) -> None:
    import jax
    import jax.numpy as jnp

    from rlhf_jax import models, offline, ppo, reward, sharding, train

    devices, size, steps, modes = args.child.split(":")
    assert jax.device_count() == int(devices), (jax.device_count(), devices)
    mesh, rules = sharding.make_mesh("fsdp=-1"), sharding.logical_rules("fsdp")
    base = dict(SIZES[size], dtype="bfloat16", param_dtype="bfloat16", remat="full",
                logit_chunk=8192)
    lora_cfg = models.LoraConfig(rank=args.rank, alpha=args.alpha, targets=args.targets)

    nbytes = _common.shard_bytes

    def abstract_params(model):
        return _common.abstract_params(model, mesh, rules)

    def batch_struct(shape, dtype):
        return _common.batch_struct(shape, dtype, mesh, rules)

    def state_of(params, freeze, helpers=None):
        tx = train.make_optimizer(train.OptimizerConfig(learning_rate=1e-5, total_steps=1000,
                                                        weight_decay=0.01), params, freeze=freeze)
        shardings = jax.tree.map(lambda x: x.sharding, params)
        abstract, _ = train.compile_init(lambda p: train.create_train_state(
            p, tx, jax.random.key(1), helpers=helpers, param_shardings=shardings), params)
        return tx, abstract

    def emit(step, mode, lowered, *, trainable, opt, extra_resident=0, notes=""):
        start = time.perf_counter()
        compiled = lowered.compile()
        m = compiled.memory_analysis()
        resident = m.argument_size_in_bytes + extra_resident
        peak = resident + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
        print(MARK + json.dumps(dict(
            devices=int(devices), size=size, step=step, mode=mode, trainable=trainable,
            opt=opt, args=m.argument_size_in_bytes, resident=resident,
            temp=m.temp_size_in_bytes, out=m.output_size_in_bytes,
            alias=m.alias_size_in_bytes, peak=peak, notes=notes,
            compile_s=round(time.perf_counter() - start, 1))), flush=True)

    def trainable_count(tx, params):
        return models.count_params(tx.split(params)[0])

    for mode in modes.split(","):
        lora = mode in ("lora", "qlora")
        adapters = (dataclasses.replace(lora_cfg, quantize_base="int8") if mode == "qlora"
                    else lora_cfg if lora else models.LoraConfig())
        cfg = models.TransformerConfig(**base, lora=adapters)
        freeze = models.frozen_base if lora else None

        if "error" in steps:  # logits of the int8 base against the float base (runs it)
            plain = cfg.replace(lora=models.LoraConfig())
            params = jax.jit(lambda k: models.init_params(models.DecoderModel(plain), k))(
                jax.random.key(0))
            q = jax.jit(models.quantize_base)(params)
            tokens = jax.random.randint(jax.random.key(1), (2, 64), 0, plain.vocab_size)
            a = jax.jit(lambda p: models.DecoderModel(plain).apply({"params": p}, tokens).logits)(
                params)
            b = jax.jit(lambda p: models.DecoderModel(cfg.without_lora()).apply(
                {"params": p}, tokens).logits)(q)
            d = jnp.abs(a - b)
            print(MARK + json.dumps(dict(
                devices=int(devices), size=size, step="error", mode=mode, tokens=128,
                max_abs=float(d.max()), mean_abs=float(d.mean()), logit_std=float(a.std()),
                argmax_agree=float(jnp.mean(a.argmax(-1) == b.argmax(-1))))), flush=True)
            continue

        if "reward" in steps:
            model = models.DecoderModel(cfg, heads=("reward",))
            params = abstract_params(model)
            tx, state = state_of(params, freeze("") if lora else None)
            batch = _common.preference_batch_struct(args.pairs, args.length, mesh, rules)
            loss = reward.make_reward_loss(model, reward.RewardLossConfig(centering_coef=0.01))
            step = jax.jit(train.make_train_step(loss, tx), donate_argnums=0)
            with sharding.activation_sharding(mesh, rules):
                lowered = step.lower(state, batch)
            emit("reward", mode, lowered, trainable=trainable_count(tx, params),
                 opt=nbytes(state.opt_state))

        if "ppo" in steps:
            policy = abstract_params(models.DecoderModel(cfg))
            critic = abstract_params(models.DecoderModel(cfg, heads=("value",)))
            # the stage loads the reward model as exported: no adapters, no int8 base
            rm = abstract_params(models.DecoderModel(cfg.replace(lora=models.LoraConfig()),
                                                     heads=("reward",)))
            params = {"policy": policy, "critic": critic}
            tx, state = state_of(params, freeze("policy", "critic") if lora else None,
                                 helpers={"kl": ppo.fixed_kl_init(0.05)})
            b, pl, nl = args.rollouts, args.prompt_len, args.response_len
            prompt, resp = batch_struct((b, pl), jnp.int32), batch_struct((b, nl), jnp.int32)
            f32 = lambda: batch_struct((b, nl), jnp.float32)  # noqa: E731
            rollout = ppo.Rollout(
                prompt_tokens=prompt, prompt_mask=prompt, response_tokens=resp,
                response_mask=resp, logprobs=f32(), ref_logprobs=f32(), values=f32(),
                scores=batch_struct((b,), jnp.float32), kl=f32(), rewards=f32(),
                advantages=f32(), returns=f32(), ended_with_eos=batch_struct((b,), jnp.bool_),
                temperature=1.0)
            key = jax.eval_shape(lambda: jax.random.key(0))
            pcfg = ppo.PPOConfig(epochs=4, num_minibatches=args.minibatches)
            trainable, frozen = tx.split(state.params) if lora else (state.params, None)
            # full fine-tuning keeps a frozen copy of the policy as the reference; LoRA reads
            # the policy's own base. The reward model is resident in both.
            ref = 0 if lora else nbytes({k: v for k, v in policy.items()})
            with sharding.activation_sharding(mesh, rules):
                lowered = ppo.ppo_update.lower(trainable, state.opt_state, rollout, key, None,
                                               frozen, config=cfg, ppo=pcfg, tx=tx,
                                               critic_config=cfg)
            emit("ppo_update", mode, lowered, trainable=trainable_count(tx, params),
                 opt=nbytes(state.opt_state), extra_resident=ref + nbytes(rm),
                 notes="resident: + reward model" + ("" if lora else " + reference copy"))

        if "dpo" in steps:
            model = models.DecoderModel(cfg)
            params = abstract_params(model)
            tx, state = state_of(params, freeze("") if lora else None)
            batch = _common.preference_batch_struct(
                args.dpo_pairs, args.prompt_len + args.response_len, mesh, rules,
                prompt_len=args.prompt_len, index=True)
            lc = offline.OfflineLossConfig(method="dpo")
            ref_model = models.DecoderModel(cfg.without_lora()) if lora else None
            inputs = {"batch": batch} if lora else {"batch": batch, "ref_params": params}

            def step_fn(state, inputs):
                loss = offline.make_offline_loss(model, lc, inputs.get("ref_params"), ref_model)
                return train.make_train_step(loss, tx)(
                    state, {k: v for k, v in inputs.items() if k != "ref_params"})
            with sharding.activation_sharding(mesh, rules):
                lowered = jax.jit(step_fn, donate_argnums=0).lower(state, inputs)
            emit("dpo", mode, lowered, trainable=trainable_count(tx, params),
                 opt=nbytes(state.opt_state),
                 notes="reference: base with adapters off" if lora else
                 "reference: a frozen copy (an argument)")


def run_child(args, devices: int, size: str, steps: str, modes: str,
              minibatches: int = 0) -> list[dict]:
    flags = (os.environ.get("XLA_FLAGS", "") +
             f" --xla_force_host_platform_device_count={devices}"
             " --xla_cpu_enable_concurrency_optimized_scheduler=false").strip()
    cmd = [sys.executable, os.path.abspath(__file__), "--child",
           f"{devices}:{size}:{steps}:{modes}"]
    for name in ("rank", "alpha", "targets", "pairs", "length", "rollouts", "prompt_len",
                 "response_len", "dpo_pairs", "minibatches", "error_size"):
        value = minibatches if name == "minibatches" and minibatches else getattr(args, name)
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    rows = [json.loads(line[len(MARK):]) for line in out.stdout.splitlines()
            if line.startswith(MARK)]
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"child {devices}:{size}:{steps}:{modes} failed ({out.returncode})")
    return rows


def main():
    args = parse_args()
    if args.child:
        child(args)
        return
    t0 = time.perf_counter()
    rows = run_child(args, 1, args.size, "reward,ppo,dpo", "full,lora,qlora")
    print(f"full fine-tuning vs LoRA r={args.rank} α={args.alpha:g} on {args.targets}, "
          f"{args.size}, bf16 params, 1 device (GiB per device; XLA:CPU memory analysis)")
    print(f"{'step':<11} {'mode':<5} {'trainable':>13} {'opt_state':>9} {'args':>7} "
          f"{'resident':>8} {'temp':>7} {'peak':>7}  notes")
    by = {(r["step"], r["mode"]): r for r in rows}
    for r in rows:
        print(f"{r['step']:<11} {r['mode']:<5} {r['trainable']:>13,} {r['opt'] / GIB:>9.3f} "
              f"{r['args'] / GIB:>7.2f} {r['resident'] / GIB:>8.2f} {r['temp'] / GIB:>7.2f} "
              f"{r['peak'] / GIB:>7.2f}  {r['notes']}")
    for step in ("reward", "ppo_update", "dpo"):
        f, lo, q = by[(step, "full")], by[(step, "lora")], by[(step, "qlora")]
        print(f"{step}: LoRA trains {lo['trainable'] / f['trainable']:.2%} of the parameters; "
              f"optimiser state {lo['opt'] / f['opt']:.2%} of full; resident "
              f"{lo['resident'] / f['resident']:.3f}x (int8 base {q['resident'] / f['resident']:.3f}x);"
              f" peak {lo['peak'] / f['peak']:.3f}x (int8 base {q['peak'] / f['peak']:.3f}x)")
    err = run_child(args, 1, args.error_size, "error", "qlora")[0]
    print(f"int8 base vs bfloat16 base, {args.error_size} shape with random weights (std 0.02), "
          f"{err['tokens']} tokens: max |Δlogit| {err['max_abs']:.4f}, mean {err['mean_abs']:.5f} "
          f"(logit std {err['logit_std']:.3f}); next-token argmax agreement "
          f"{err['argmax_agree']:.4f}")
    fits = {}
    print(f"\nLoRA PPO update (policy + critic adapters; reward model resident), peak per "
          f"device, FSDP, {args.rollouts} rollouts split into m minibatches per epoch; budget "
          f"{args.budget_gb:g} GB")
    for devices in (int(d) for d in args.device_counts.split(",")):
        for size in args.fit_sizes.split(","):
            for mb in (int(m) for m in args.fit_minibatches.split(",")):
                if devices == 1 and size == args.size and mb == args.minibatches:
                    r = by[("ppo_update", "lora")]
                else:
                    r = run_child(args, devices, size, "ppo", "lora", mb)[0]
                ok = r["peak"] <= args.budget_gb * GB
                print(f"  {size:<3} on {devices} device(s), m={mb}: peak {r['peak'] / GB:7.2f} "
                      f"GB (resident {r['resident'] / GB:.2f}, temp {r['temp'] / GB:.2f}) "
                      f"{'fits' if ok else 'does not fit'}", flush=True)
                if ok:
                    fits[devices] = f"{size}@m{mb}"
                    break  # the fewest minibatches that fit this size
    f, lo = by[("ppo_update", "full")], by[("ppo_update", "lora")]
    print(f"measured in {time.perf_counter() - t0:.0f} s")
    print(f"lora_memory: ratio={f['resident'] / lo['resident']:.2f} "
          f"opt_state_frac={lo['opt'] / f['opt']:.4f} "
          f"ppo_resident_frac={lo['resident'] / f['resident']:.3f} "
          f"largest_fit_1dev={fits.get(1, 'none')} largest_fit_8dev={fits.get(8, 'none')}")


if __name__ == "__main__":
    main()
