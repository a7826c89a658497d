"""Memory budget of the real jitted steps at 1B and 8B, measured without a GPU.

For Llama-family configs of TinyLlama-1.1B's and Llama-3-8B's shapes (bfloat16 parameters,
AdamW moments and compute by default, `--param-dtype`), this compiles the programs the stages
run — allocating nothing: every argument is a `jax.ShapeDtypeStruct` carrying its sharding under
the FSDP preset (`sharding.make_mesh("fsdp=-1")`, `sharding.logical_rules("fsdp")`), the train
state is laid out by `train.compile_init` as the stages do — and prints XLA's memory analysis
per device for

* reward: the reward stage's step (`reward.make_reward_loss` → `train.make_train_step` →
  `stages.common.jit_train_step`, state donated), 16 pairs × 512 tokens;
* sft: the SFT stage's step (its `sum_loss`, next-token NLL), 32 sequences × 512 tokens;
* ppo_update: `ppo.ppo_update` (policy and separate critic trained by one AdamW, epochs ×
  minibatches in one scan, `--ppo-minibatches 1`: all 64 rollouts in each gradient step),
  rollouts of 64 × (256 prompt + 256 response) tokens;
* ppo_score: `ppo.score_responses` (reference log-probs, critic values, reward-model scores);
* decode: `sampling.generate` (KV cache, 256 new tokens after 256-token prompts, batch 64).

args, out, alias and temp are `compiled.memory_analysis()`'s argument, output, alias (donated
inputs reused as outputs) and temporary sizes; a program's peak is taken as args + out − alias
+ temp (all it allocates; an upper bound, as outputs need not be live at the temporaries' peak).
A PPO iteration keeps four models on the devices — policy and critic with their AdamW moments,
the frozen reference and the reward model — while each program runs, and only some are its
arguments: +resid adds the live state a program does not take (reference + reward model for
the update; the moments for scoring; critic, moments, reference and reward model for
decoding), and total = peak + resid is what a device must hold. Training steps use
`--remat full` by default (each block keeps only its input for the backward pass);
`--logit-chunk` (default 8192) computes teacher-forced log-probs over vocabulary chunks when the
library has the option (`TransformerConfig.logit_chunk`; otherwise it prints "logit_chunk: not
available"), so [B, T, V] logits never exist.

The train state comes from `train.create_train_state` under `train.compile_init`, passing
`param_shardings` as the stages do where the library has it (each AdamW moment split like its
parameter); without it the moments came out replicated on every device under FSDP.
`--opt-state sharded` forces the split layout whatever the library does. `--moment-dtype`
stores the moments in float32 or bfloat16 whatever the parameters' dtype
(`OptimizerConfig.moment_dtype`, where the library has it; default: the parameters' dtype).

Each device count runs in a child process of this script (`--devices N`, with
XLA_FLAGS=--xla_force_host_platform_device_count=N set before JAX starts, CPU backend, FSDP
over all N); the parent collects their JSON lines and prints one table, then "what
dominates" per step: the largest of trained state (params + moments + gradients), frozen
models and temporaries, the analytic sizes beside them (logits [B, T, V] float32, attention
scores [B, H, T, T] float32 per layer, block inputs kept for the backward pass, KV cache), and
the groups of temporaries live at the peak of XLA's schedule (from a dump of each compile:
buffer assignment, live ranges, op names; `--no-breakdown` skips it).

Three things differ from a GPU compile; the table estimates the first and, in part, the
third. (1) XLA:CPU drops jax.checkpoint's optimization barriers before scheduling (XLA:GPU
after), so its schedule may recompute every layer of a rematerialised backward right after the
forward pass and keep it all live; temp* / total* estimate the same program with one layer's
backward values live at a time (see `_live_at_peak.live_at_peak`): what a GPU schedule keeps
beyond a layer's backward is that layer's gradients, reduced to this device's shard. (2)
XLA:CPU upcasts bfloat16 matmul operands to float32 here, so float32 copies of weights and
activations appear among its temporaries. (3) Under FSDP each device's weight gradient is a
full-size partial sum. XLA:GPU's pipeline turns the partitioner's all-reduce + slice of it
into one reduce-scatter (its ReduceScatterCreator pass; not checked on a GPU here); XLA:CPU
has no such pass, all-reduces it at full size in float32 and then keeps its shard, and
its all-reduce combiner merges the all-reduces of many layers (and the clipping norm's partial
sums) into a few, so every layer's full-size float32 gradient waits for the last one (26 GiB
of them on the 8B PPO update over 8 devices, 6 sequences a device). `--cpu-combiner off` (default)
compiles without that combiner (XLA_FLAGS --xla_disable_hlo_passes=cpu-all-reduce-combiner),
so each layer's gradient is reduced and sliced when it is made, as the GPU's reduce-scatter
does, though at full size in float32. XLA:CPU's default scheduler also lengthens live ranges to
run independent ops on threads in parallel; `--cpu-scheduler memory` (default) turns that off.
Read these as the CPU compiler's account of the programs, not a GPU measurement.

Baseline: the reward step at 1B on one device needed ~85 GiB of temporaries, measured on an
H100 before this change (issue #13). Targets: reward-step temporaries ≤ 16 GiB at 1B on one
device; the PPO update, all four models resident, within 60 GiB at 1B on one device and per
device at 8B with FSDP over 8. The last line is `memory: ratio=<85 / reward-step temp at 1B>
reward_1b_temp_gib=<temp> ppo_1b_gib=<ppo_update total, 1 device> ppo_8b_fsdp8_gib=<ppo_update
total per device, 8 devices>`, XLA:CPU's numbers as measured (the line before it gives the
estimates).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import _common  # benchmarks/ is the script's directory
from _live_at_peak import live_at_peak
from _memory_table import GIB, gib, print_table

BASELINE_TEMP_GIB = 85.0  # reward step, 1B, 1 device: H100, before this change
STEPS = ("reward", "sft", "ppo_update", "ppo_score", "decode")
LLAMA = _common.LLAMA_SIZES  # 1b, 8b and tiny (a smoke test)
MARK = "MEMJSON "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1b,8b", help="comma-separated: 1b, 8b (tiny: smoke test)")
    p.add_argument("--steps", default=",".join(STEPS),
                   help=f"comma-separated subset of {','.join(STEPS)}; 'ppo' means "
                        "ppo_update,ppo_score,decode")
    p.add_argument("--device-counts", default="1,8",
                   help="fake CPU device counts, one child process each (FSDP over all)")
    p.add_argument("--devices", type=int, default=0, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--param-dtype", choices=("bfloat16", "float32"), default="bfloat16",
                   help="parameter (and AdamW moment) storage dtype")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                   help="compute dtype")
    p.add_argument("--remat", choices=("none", "full", "dots", "dots_no_batch"), default="full",
                   help="block rematerialisation of the training steps (default full)")
    p.add_argument("--attention", default="",
                   help="the models' attention kernel (TransformerConfig.attention: xla, jax; "
                        "cudnn needs a GPU); empty: the library's default")
    p.add_argument("--logit-chunk", type=int, default=8192,
                   help="vocabulary chunk of teacher-forced log-probs (0: full logits)")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--reward-length", type=int, default=512)
    p.add_argument("--sft-batch", type=int, default=32)
    p.add_argument("--sft-length", type=int, default=512)
    p.add_argument("--rollouts", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--response-len", type=int, default=256)
    p.add_argument("--ppo-epochs", type=int, default=4)
    p.add_argument("--ppo-minibatches", type=int, default=1,
                   help="minibatches per epoch (1: the whole rollout is one gradient step)")
    p.add_argument("--opt-state", choices=("as-built", "sharded"), default="as-built",
                   help="AdamW moments as the stages lay them out (train.create_train_state "
                        "under train.compile_init), or forced to split like their parameters")
    p.add_argument("--top", type=int, default=4,
                   help="groups of temporaries live at the peak listed per step")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                   help="skip the live-at-peak breakdown (it dumps each compile to a temp dir)")
    p.add_argument("--cpu-scheduler", choices=("memory", "concurrency"), default="memory",
                   help="XLA:CPU's HLO scheduler: memory-minimising (default), or its own "
                        "default, which lengthens live ranges to run ops on threads in parallel")
    p.add_argument("--cpu-combiner", choices=("off", "on"), default="off",
                   help="XLA:CPU's all-reduce combiner: off (default; each layer's gradient is "
                        "reduced when it is made, as a GPU's reduce-scatter is) or on (its "
                        "default: many layers' full-size gradients wait for one all-reduce)")
    p.add_argument("--moment-dtype", choices=("", "float32", "bfloat16"), default="",
                   help="AdamW moments' storage dtype (OptimizerConfig.moment_dtype; empty: "
                        "the parameters')")
    args = p.parse_args(argv)
    args.sizes = [s for s in args.sizes.split(",") if s]
    steps = []
    for s in filter(None, args.steps.split(",")):
        steps += ["ppo_update", "ppo_score", "decode"] if s == "ppo" else [s]
    bad = [s for s in steps if s not in STEPS] + [s for s in args.sizes if s not in LLAMA]
    if bad:
        p.error(f"unknown step or size {bad}; steps: {STEPS}, sizes: {tuple(LLAMA)}")
    args.steps = list(dict.fromkeys(steps))
    return args


# ---- the child: compile each step on this process's devices -----------------------------------

def child(args) -> None:
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding, PartitionSpec

    from rlhf_jax import losses, models, ppo, reward, sharding, train
    from rlhf_jax.sampling import SamplingConfig, generate, kv_cache_bytes
    from rlhf_jax.stages.common import jit_train_step

    if jax.device_count() != args.devices:
        raise SystemExit(f"--devices {args.devices}: JAX sees {jax.device_count()} devices "
                         "(run without --devices: the parent sets XLA_FLAGS)")
    if args.cpu_scheduler == "memory" and "concurrency_optimized_scheduler=false" not in \
            os.environ.get("XLA_FLAGS", ""):
        print("warning: XLA_FLAGS lacks --xla_cpu_enable_concurrency_optimized_scheduler=false; "
              "XLA:CPU's default scheduler is measured (run without --devices)", flush=True)
    mesh, rules = sharding.make_mesh("fsdp=-1"), sharding.logical_rules("fsdp")
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    fields = {f.name for f in dataclasses.fields(models.TransformerConfig)}
    chunk_ok = "logit_chunk" in fields
    chunk = args.logit_chunk if chunk_ok else 0
    if not chunk_ok:
        print("logit_chunk: not available", flush=True)
    ppo_fields = {f.name for f in dataclasses.fields(ppo.PPOConfig)}

    def emit(**row):
        print(MARK + json.dumps(row), flush=True)

    nbytes = _common.shard_bytes

    def abstract_params(model):
        return _common.abstract_params(model, mesh, rules)

    def weight_elements(*trees) -> frozenset:
        """Element counts of the weights' per-device shards: a layer's gradients reduced to this
        device's shard outlive its backward; its full-size values (gathered weights, unreduced
        gradients) need not, on a GPU (see live_at_peak)."""
        leaves = [x for t in trees for x in jax.tree.leaves(t)]
        return frozenset(math.prod(x.sharding.shard_shape(x.shape)) for x in leaves)

    def batch_struct(shape, dtype):
        return _common.batch_struct(shape, dtype, mesh, rules)

    def train_state(params, helpers=None):
        moments = {"moment_dtype": args.moment_dtype} if args.moment_dtype else {}
        if moments and "moment_dtype" not in {
                f.name for f in dataclasses.fields(train.OptimizerConfig)}:
            raise SystemExit("--moment-dtype: this library's OptimizerConfig has no moment_dtype")
        tx = train.make_optimizer(train.OptimizerConfig(learning_rate=1e-5, total_steps=1000,
                                                        weight_decay=0.01, **moments), params)
        extra = {}  # as the stages call it: moments laid out like their parameters
        if "param_shardings" in inspect.signature(train.create_train_state).parameters:
            extra["param_shardings"] = jax.tree.map(lambda x: x.sharding, params)
        abstract, _ = train.compile_init(
            lambda p: train.create_train_state(p, tx, jax.random.key(1), helpers=helpers,
                                               **extra), params)
        if args.opt_state == "sharded":  # each moment split like its parameter
            replicated = NamedSharding(mesh, PartitionSpec())
            shs = optax.tree_map_params(
                tx, lambda _, sh: sh, abstract.opt_state,
                jax.tree.map(lambda x: x.sharding, params),
                transform_non_params=lambda _: replicated)
            abstract = abstract.replace(opt_state=jax.tree.map(
                lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                abstract.opt_state, shs))
        return tx, abstract

    def measure(step, size, cfg, lower, *, resident=0, trained=0, opt=0, frozen=0,
                analytic=None, weights=frozenset()):
        """Lower and compile `lower()`'s program and emit its memory analysis as a JSON line."""
        start = time.perf_counter()
        with sharding.activation_sharding(mesh, rules):
            lowered = lower()
        opts = {}
        with tempfile.TemporaryDirectory(prefix="memory_dump_") as dump:
            if args.breakdown:
                opts["xla_dump_to"] = dump
            compiled = lowered.compile(compiler_options=opts)
            seconds = time.perf_counter() - start
            found = (live_at_peak(dump, args.top, weights) if args.breakdown
                     else {"live": 0, "groups": [], "ordered": 0, "ordered_groups": []})
        m = compiled.memory_analysis()
        peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                + m.temp_size_in_bytes)
        # the barrier-order estimate: XLA's temporaries less what early recomputation added
        ordered = m.temp_size_in_bytes - (found["live"] - found["ordered"])
        emit(size=size, devices=args.devices, step=step, compile_s=seconds,
             args=m.argument_size_in_bytes, out=m.output_size_in_bytes,
             alias=m.alias_size_in_bytes, temp=m.temp_size_in_bytes, peak=peak,
             resident=resident, total=peak + resident, trained=trained, opt=opt, frozen=frozen,
             analytic=analytic or {}, live_temp=found["live"], top=found["groups"],
             ordered_top=found["ordered_groups"],
             ordered_temp=ordered if args.breakdown else None,
             ordered_total=peak + resident - m.temp_size_in_bytes + ordered
             if args.breakdown else None, remat=cfg.remat,
             logit_chunk=getattr(cfg, "logit_chunk", None), attention=cfg.attention)
        del compiled

    for size in args.sizes:
        base = dict(LLAMA[size], dtype=args.dtype, param_dtype=args.param_dtype)
        if args.attention:
            base["attention"] = args.attention
        if chunk_ok:  # a chunk wider than the vocabulary would only pad it
            base["logit_chunk"] = min(chunk, LLAMA[size]["vocab_size"])
        cfg = models.TransformerConfig(**base, remat=args.remat)
        infer = models.TransformerConfig(**base)  # decoding and scoring: no backward pass
        itemsize = jnp.dtype(args.dtype).itemsize
        h, v, layers, d = cfg.num_heads, cfg.vocab_size, cfg.num_layers, cfg.hidden_size

        def acts(seqs, length, models_n=1, lm=True, scored=0):
            """Analytic per-device sizes for `seqs` sequences of `length` tokens."""
            b = max(seqs // shards, 1)
            out = {"attn_scores_per_layer_f32": b * h * length * length * 4,
                   "block_inputs": models_n * layers * b * length * d * itemsize}
            if lm:
                # full logits cover every position; chunked ones only the scored positions
                out["logits_f32"] = (b * (scored or length) * min(chunk, v) * 4 if chunk
                                     else b * length * v * 4)
            return out

        if "reward" in args.steps:
            model = models.DecoderModel(cfg, heads=("reward",))
            tx, state = train_state(abstract_params(model))
            b, t = args.pairs, args.reward_length
            batch = _common.preference_batch_struct(b, t, mesh, rules)
            loss = reward.make_reward_loss(model, reward.RewardLossConfig(centering_coef=0.01))
            step = jit_train_step(train.make_train_step(loss, tx), state,
                                  sharding.batch_sharding(mesh, rules, 1))
            measure("reward", size, cfg, lambda: step.lower(state, batch),
                    weights=weight_elements(state.params),
                    trained=nbytes(state.params), opt=nbytes(state.opt_state),
                    analytic=acts(2 * b, t, lm=False))

        if "sft" in args.steps:
            model = models.DecoderModel(cfg)
            tx, state = train_state(abstract_params(model))

            def sum_loss(p, batch, rng):  # as stages/sft.py's train_sft
                out = model.apply({"params": p}, batch["tokens"], batch["mask"],
                                  skip_logits=getattr(cfg, "logit_chunk", 0) > 0)
                total, count = losses.model_nll_sum(out, p, cfg, batch["tokens"],
                                                    losses.next_token_targets(batch["mask"]))
                return total, (count, {"train/nll": total})

            shape = (args.sft_batch, args.sft_length)
            batch = {"tokens": batch_struct(shape, jnp.int32),
                     "mask": batch_struct(shape, jnp.int32)}
            step = jit_train_step(train.make_train_step(sum_loss, tx), state,
                                  sharding.batch_sharding(mesh, rules))
            measure("sft", size, cfg, lambda: step.lower(state, batch),
                    weights=weight_elements(state.params),
                    trained=nbytes(state.params), opt=nbytes(state.opt_state),
                    analytic=acts(*shape))

        if not {"ppo_update", "ppo_score", "decode"} & set(args.steps):
            continue
        policy = abstract_params(models.DecoderModel(cfg))
        critic = abstract_params(models.DecoderModel(cfg, heads=("value",)))
        rm = abstract_params(models.DecoderModel(cfg, heads=("reward",)))
        ref = policy  # a frozen copy of the policy: same shapes and shardings
        tx, state = train_state({"policy": policy, "critic": critic},
                                helpers={"kl": ppo.fixed_kl_init(0.05)})
        b, pl, nl = args.rollouts, args.prompt_len, args.response_len
        key = jax.eval_shape(lambda: jax.random.key(0))
        prompt = batch_struct((b, pl), jnp.int32)
        resp = batch_struct((b, nl), jnp.int32)
        sizes = dict(policy=nbytes(state.params["policy"]), critic=nbytes(state.params["critic"]),
                     opt=nbytes(state.opt_state), ref=nbytes(ref), rm=nbytes(rm))
        frozen = sizes["ref"] + sizes["rm"]

        if "ppo_update" in args.steps:
            f32 = lambda: batch_struct((b, nl), jnp.float32)  # noqa: E731
            rollout = ppo.Rollout(
                prompt_tokens=prompt, prompt_mask=prompt, response_tokens=resp,
                response_mask=resp, logprobs=f32(), ref_logprobs=f32(), values=f32(),
                scores=batch_struct((b,), jnp.float32), kl=f32(), rewards=f32(),
                advantages=f32(), returns=f32(), ended_with_eos=batch_struct((b,), jnp.bool_),
                temperature=1.0)
            extra = {"logit_chunk": chunk} if "logit_chunk" in ppo_fields else {}
            ppo_cfg = ppo.PPOConfig(epochs=args.ppo_epochs, num_minibatches=args.ppo_minibatches,
                                    **extra)
            measure("ppo_update", size, cfg, lambda: ppo.ppo_update.lower(
                state.params, state.opt_state, rollout, key, None, config=cfg, ppo=ppo_cfg,
                tx=tx, critic_config=cfg), resident=frozen,
                weights=weight_elements(state.params),
                trained=sizes["policy"] + sizes["critic"], opt=sizes["opt"], frozen=frozen,
                analytic=acts(b // args.ppo_minibatches, pl + nl, models_n=2, scored=nl))

        if "ppo_score" in args.steps:
            scorer = reward.reward_model_scorer(infer)
            measure("ppo_score", size, infer, lambda: ppo.score_responses.lower(
                state.params, ref, rm, prompt, prompt, resp, resp, config=infer,
                critic_config=infer, temperature=1.0, score_fn=scorer,
                with_values=True), resident=sizes["opt"],
                trained=sizes["policy"] + sizes["critic"], opt=sizes["opt"], frozen=frozen,
                analytic={k: v for k, v in acts(b, pl + nl, scored=nl).items()
                          if k != "block_inputs"})

        if "decode" in args.steps:
            sampling = SamplingConfig(max_new_tokens=nl)
            measure("decode", size, infer, lambda: generate.lower(
                state.params["policy"], prompt, prompt, key, config=infer,
                sampling=sampling),
                resident=sizes["critic"] + sizes["opt"] + frozen, trained=sizes["policy"],
                opt=sizes["opt"], frozen=frozen,
                analytic={"kv_cache": kv_cache_bytes(infer, max(b // shards, 1), pl, nl),
                          "logits_f32": max(b // shards, 1) * v * 4})


# ---- the parent: one child per device count, then the table -----------------------------------

def child_command(args, devices: int) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--devices", str(devices)]
    for name in ("sizes", "steps"):
        cmd += [f"--{name}", ",".join(getattr(args, name))]
    for name in ("param_dtype", "dtype", "remat", "logit_chunk", "pairs", "reward_length",
                 "sft_batch", "sft_length", "rollouts", "prompt_len", "response_len",
                 "ppo_epochs", "ppo_minibatches", "top", "cpu_scheduler", "opt_state",
                 "attention", "cpu_combiner", "moment_dtype"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return cmd + ([] if args.breakdown else ["--no-breakdown"])


def main():
    args = parse_args()
    if args.devices:
        return child(args)
    start = time.perf_counter()
    rows, failed = [], []
    for n in [int(c) for c in args.device_counts.split(",") if c]:
        flags = f" --xla_force_host_platform_device_count={n}"
        if args.cpu_scheduler == "memory":  # as a flag: compiler_options does not reach it
            flags += " --xla_cpu_enable_concurrency_optimized_scheduler=false"
        if args.cpu_combiner == "off":
            flags += " --xla_disable_hlo_passes=cpu-all-reduce-combiner"
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + flags).strip())
        t0 = time.perf_counter()
        proc = subprocess.Popen(child_command(args, n), env=env, stdout=subprocess.PIPE,
                                text=True)
        for line in proc.stdout:
            if line.startswith(MARK):
                row = json.loads(line[len(MARK):])
                rows.append(row)
                print(f"[{n} device(s)] {row['size']} {row['step']}: temp {gib(row['temp'])} "
                      f"GiB, total {gib(row['total'])} GiB (compiled in {row['compile_s']:.1f}"
                      " s)", flush=True)
            else:
                print(f"[{n} device(s)] {line.rstrip()}", flush=True)
        if proc.wait():
            failed.append(f"{n} device(s): exit {proc.returncode}")
        print(f"[{n} device(s)] child finished in {time.perf_counter() - t0:.0f} s", flush=True)
    first = rows[0] if rows else {"logit_chunk": "?", "attention": "?"}
    print(f"\nconfig: param_dtype={args.param_dtype} dtype={args.dtype}; training steps "
          f"remat={args.remat} (decoding and scoring: none); logit_chunk={first['logit_chunk']}; "
          f"attention={first['attention']}; FSDP preset (mesh fsdp=-1) on the CPU backend, "
          f"{args.cpu_scheduler} scheduler, all-reduce combiner {args.cpu_combiner}; AdamW "
          f"moments {args.opt_state}, {args.moment_dtype or args.param_dtype}; PPO "
          f"epochs={args.ppo_epochs} minibatches={args.ppo_minibatches}; "
          f"wall {time.perf_counter() - start:.0f} s")
    print_table(rows)
    if failed:
        print("FAILED: " + "; ".join(failed))

    def pick(size, devices, step, key):
        for r in rows:
            if (r["size"], r["devices"], r["step"]) == (size, devices, step) and \
                    r.get(key) is not None:
                return r[key] / GIB
        return float("nan")
    if any(r.get("ordered_temp") is not None for r in rows):
        print(f"estimate with one layer's backward live at a time: reward_1b_temp_gib="
              f"{pick('1b', 1, 'reward', 'ordered_temp'):.2f} ppo_1b_gib="
              f"{pick('1b', 1, 'ppo_update', 'ordered_total'):.2f} ppo_8b_fsdp8_gib="
              f"{pick('8b', 8, 'ppo_update', 'ordered_total'):.2f}")
    temp = pick("1b", 1, "reward", "temp")
    ratio = BASELINE_TEMP_GIB / temp if temp == temp and temp > 0 else float("nan")
    print(f"memory: ratio={ratio:.2f} reward_1b_temp_gib={temp:.2f} "
          f"ppo_1b_gib={pick('1b', 1, 'ppo_update', 'total'):.2f} "
          f"ppo_8b_fsdp8_gib={pick('8b', 8, 'ppo_update', 'total'):.2f}", flush=True)


if __name__ == "__main__":
    main()
