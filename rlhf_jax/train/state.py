"""The train state pytree and the jitted update step (accumulation, non-finite protection)."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlhf_jax.train.optim import Optimizer, apply_updates, merge_trees


@struct.dataclass
class TrainState:
    """Everything a run needs to continue bit for bit: saved whole by the checkpoint.

    `rng` holds raw key data (uint32) so that it serialises; `helpers` holds the state of any
    (init, update) helper such as a KL controller or running reward statistics.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    helpers: Any = struct.field(default_factory=dict)
    skipped: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.int32))
    consecutive_skips: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.int32))

    def key(self) -> jax.Array:
        """The run's base PRNG key (typed)."""
        return jax.random.wrap_key_data(self.rng)


def create_train_state(params: Any, tx: optax.GradientTransformation, seed_or_key,
                       helpers: Any = None, param_shardings: Any = None) -> TrainState:
    """A step-0 state; `seed_or_key` is an int seed or a typed PRNG key.

    `param_shardings` (a tree of shardings shaped like `params`; pass it when calling this under
    jit, e.g. through `compile_init`) lays every optimiser-state leaf that mirrors a parameter
    (Adam's moments) out like that parameter. Without it the compiler sees zeros with no data
    dependence on the parameters and replicates them, so under FSDP each device would hold
    whole moments (ZeRO's point, Rajbhandari et al. 2020, is that it holds only its shard).
    """
    key = jax.random.key(seed_or_key) if isinstance(seed_or_key, int) else seed_or_key
    opt_state = tx.init(params)
    if param_shardings is not None:
        inner = tx
        if isinstance(tx, Optimizer):  # the state mirrors the trainable leaves only
            inner, param_shardings = tx.inner, tx.split(param_shardings)[0]
        opt_state = optax.tree_map_params(
            inner, lambda leaf, sharding: jax.lax.with_sharding_constraint(leaf, sharding),
            opt_state, param_shardings, transform_non_params=lambda leaf: leaf)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      rng=jax.random.key_data(key), helpers={} if helpers is None else helpers)


SumLossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, tuple[jax.Array, dict]]]


def accumulate_gradients(sum_loss_fn: SumLossFn, params: Any, batch: Any, key: jax.Array,
                         num_microbatches: int = 1):
    """Exact masked-mean gradients over micro-batches (docs/design.md: divide once).

    `sum_loss_fn(params, micro_batch, key) -> (loss_sum, (count, metric_sums))` returns sums over
    its tokens/examples and their count. Sums and counts are accumulated over the micro-batches
    (a `lax.scan`; the batch's leading axis is split) and divided once, so the result equals the
    full-batch mean whatever the tokens per micro-batch. Returns (loss, grads, metrics, count).
    """
    grad_fn = jax.value_and_grad(sum_loss_fn, has_aux=True)
    if num_microbatches == 1:
        (loss_sum, (count, sums)), grads = grad_fn(params, batch, key)
    else:
        def split(x):
            if x.shape[0] % num_microbatches:
                raise ValueError(f"batch leading axis {x.shape[0]} is not divisible by "
                                 f"num_microbatches={num_microbatches}")
            return x.reshape(num_microbatches, x.shape[0] // num_microbatches, *x.shape[1:])
        micro = jax.tree.map(split, batch)

        def body(carry, inputs):
            i, mb = inputs
            (l, (c, s)), g = grad_fn(params, mb, jax.random.fold_in(key, i))
            acc_l, acc_c, acc_s, acc_g = carry
            return (acc_l + l, acc_c + c, jax.tree.map(jnp.add, acc_s, s),
                    jax.tree.map(jnp.add, acc_g, g)), None

        shapes = jax.eval_shape(sum_loss_fn, params, jax.tree.map(lambda x: x[0], micro), key)
        zeros_s = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1][1])
        init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros_s,
                jax.tree.map(jnp.zeros_like, params))
        (loss_sum, count, sums, grads), _ = jax.lax.scan(
            body, init, (jnp.arange(num_microbatches), micro))
    denom = jnp.maximum(count, 1)
    grads = jax.tree.map(lambda g: g / denom, grads)
    return loss_sum / denom, grads, jax.tree.map(lambda s: s / denom, sums), count


def trainable_gradients(sum_loss_fn: SumLossFn, tx, params: Any, batch: Any, key: jax.Array,
                        num_microbatches: int = 1):
    """`accumulate_gradients` with respect to the trainable leaves of `tx` (an `Optimizer`)
    only: the gradient tree holds None at frozen leaves, whose weight gradients are then never
    formed. With a plain optax transformation every leaf is differentiated."""
    if not isinstance(tx, Optimizer) or not tx.freezes:
        return accumulate_gradients(sum_loss_fn, params, batch, key, num_microbatches)
    trainable, frozen = tx.split(params)
    return accumulate_gradients(lambda t, b, k: sum_loss_fn(merge_trees(t, frozen), b, k),
                                trainable, batch, key, num_microbatches)


def make_train_step(sum_loss_fn: SumLossFn, tx: optax.GradientTransformation, *,
                    num_microbatches: int = 1):
    """A pure step `(state, batch) -> (state, metrics)` to jit (donate the state).

    The step key is `fold_in(state.key, step)`. A non-finite loss or gradient skips the update:
    params and optimiser state stay as they were, `skipped` and `consecutive_skips` count it, and
    metrics report "train/skipped", "train/loss_finite", "train/grads_finite" and
    "train/nonfinite_leaf" (index of the first parameter leaf with a non-finite gradient), which
    the shell uses to name the culprit.
    """
    def step_fn(state: TrainState, batch):
        key = jax.random.fold_in(state.key(), state.step)
        loss, grads, metrics, count = trainable_gradients(sum_loss_fn, tx, state.params, batch,
                                                          key, num_microbatches)
        # one flag per parameter leaf (frozen leaves have no gradient: finite), in leaf order
        leaf_ok = jnp.stack([jnp.array(True) if g is None else jnp.all(jnp.isfinite(g))
                             for g in jax.tree.leaves(grads, is_leaf=lambda x: x is None)])
        loss_ok, grads_ok = jnp.isfinite(loss), jnp.all(leaf_ok)
        ok = loss_ok & grads_ok
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa
        skip = (~ok).astype(jnp.int32)
        state = state.replace(step=state.step + 1, params=keep(new_params, state.params),
                              opt_state=keep(new_opt, state.opt_state),
                              skipped=state.skipped + skip,
                              consecutive_skips=(state.consecutive_skips + 1) * skip)
        out = {"train/loss": loss, "train/grad_norm": optax.tree_utils.tree_norm(grads),
               "train/count": count, "train/skipped": skip.astype(jnp.float32),
               "train/loss_finite": loss_ok, "train/grads_finite": grads_ok,
               "train/nonfinite_leaf": jnp.argmin(leaf_ok)}
        out.update({f"train/{k}" if "/" not in k else k: v for k, v in metrics.items()})
        return state, out
    return step_fn
