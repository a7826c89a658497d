"""One PPO iteration as a `step_fn(state, batch)` for `train.run_training`: rollout, update, β.

The train state is the ordinary `TrainState`: `params` = {"policy": ...} or {"policy": ...,
"critic": ...}, and `helpers["kl"]` the KL controller's state, so checkpoints and exact resume
come from the training infrastructure unchanged.
"""
from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax.models import TransformerConfig
from rlhf_jax.ppo.config import ConstraintConfig, KLConfig, PPOConfig, RolloutConfig
from rlhf_jax.ppo.constraint import lagrange_update
from rlhf_jax.ppo.kl import (KLControllerState, adaptive_kl_init, adaptive_kl_update,
                            fixed_kl_init, fixed_kl_update)
from rlhf_jax.ppo.rollout import RewardTerm, make_rollout, rollout_metrics
from rlhf_jax.ppo.update import ppo_update
from rlhf_jax.sampling import SamplingConfig


def kl_controller(kl: KLConfig) -> tuple[Callable[[], KLControllerState], Callable]:
    """The (init, update) pair of the configured β controller."""
    if kl.controller == "fixed":
        return partial(fixed_kl_init, kl.beta), fixed_kl_update
    return (partial(adaptive_kl_init, kl.beta),
            partial(adaptive_kl_update, target=kl.target, horizon=kl.horizon))


class ZipBatches:
    """Prompt batches with an optional PPO-ptx text stream; both positions are checkpointed."""

    def __init__(self, prompts: Iterator, ptx: Optional[Iterator] = None):
        self.prompts, self.ptx = prompts, ptx

    def __iter__(self):
        return self

    def __next__(self):
        return {"prompts": next(self.prompts), "ptx": None if self.ptx is None else next(self.ptx)}

    def get_state(self) -> dict:
        """Both iterators' positions (JSON)."""
        return {"prompts": self.prompts.get_state(),
                "ptx": None if self.ptx is None else self.ptx.get_state()}

    def set_state(self, state: dict):
        """Restore the positions saved by `get_state`."""
        self.prompts.set_state(state["prompts"])
        if self.ptx is not None and state.get("ptx") is not None:
            self.ptx.set_state(state["ptx"])


def make_ppo_step(*, config: TransformerConfig, ref_params: Any, score_params: Any,
                  score_fn: Callable, sampling: SamplingConfig, rollout: RolloutConfig,
                  ppo: PPOConfig, tx: optax.GradientTransformation, kl_update: Callable,
                  critic_config: Optional[TransformerConfig] = None,
                  reward_terms: Sequence[RewardTerm] = (),
                  constraint: Optional[ConstraintConfig] = None,
                  cost: Optional[RewardTerm] = None,
                  place_batch: Optional[Callable[[Any], Any]] = None) -> Callable:
    """`step_fn(state, batch) -> (state, metrics)`: one PPO iteration (Ouyang et al. 2022).

    `batch` is {"prompts": {"tokens", "mask"} [B, P], "ptx": text batch or None}; with
    `rollout.group_size` k each prompt is sampled k times. The key of iteration s is
    fold_in(run key, s), so a resumed run draws exactly what the uninterrupted one did. Metrics
    include the rollout statistics, the update's losses, β, and the seconds spent in generate /
    score / update. `ref_params` is laid over the policy's weights (LoRA: None, or
    copies of `lora.modules_to_save`), read with adapters off. `place_batch` puts host batches on the mesh (e.g.
    `train.global_batch_from_local`); by default they go to the default device. With an
    enabled `constraint`, the `cost` term's mean is held at most `constraint.limit` by a
    Lagrange multiplier in `state.helpers["constraint"]` (`ppo.constraint`), logged as
    constraint/lambda and constraint/cost; a `cost` without a constraint is only measured.
    `score_params` are `score_fn`'s parameters, or `fn(state) -> parameters` when they change
    between iterations (a reward model refreshed during the run: `stages.refresh`).
    """
    constrained = constraint is not None and constraint.enabled
    if constrained and cost is None:
        raise ValueError(f"constraint.cost={constraint.cost!r} is set but no cost term was given")
    put = place_batch or (lambda tree: jax.tree.map(jnp.asarray, tree))
    params_of = score_params if callable(score_params) else lambda state: score_params

    def step_fn(state, batch):
        start = time.perf_counter()
        prompts = batch["prompts"]
        tokens, mask = put(tuple(np.repeat(np.asarray(prompts[k]), rollout.group_size, axis=0)
                                 for k in ("tokens", "mask")))
        key = jax.random.fold_in(state.key(), state.step)
        kl_state = state.helpers["kl"]
        stats: dict = {}
        lagrange = state.helpers["constraint"] if constrained else None
        ro = make_rollout(state.params, ref_params, params_of(state), tokens, mask,
                          jax.random.fold_in(key, 0), kl_state.beta, config=config,
                          sampling=sampling, rollout=rollout, score_fn=score_fn,
                          critic_config=critic_config, reward_terms=reward_terms,
                          cost=cost, cost_multiplier=0.0 if lagrange is None else
                          float(lagrange.multiplier), stats=stats)
        metrics = rollout_metrics(ro, kl_state.beta)
        clock = time.perf_counter()
        ptx = None if batch.get("ptx") is None else put(dict(batch["ptx"]))
        # frozen leaves (LoRA's base, shared with the reference) are not donated to the update
        trainable, frozen = tx.split(state.params) if getattr(tx, "freezes", False) \
            else (state.params, None)
        params, opt_state, update_metrics = ppo_update(
            trainable, state.opt_state, ro, jax.random.fold_in(key, 1), ptx, frozen,
            config=config, critic_config=critic_config, ppo=ppo, tx=tx)
        params = params if frozen is None else tx.merge(params, frozen)
        jax.block_until_ready(params)
        stats["time/update"] = time.perf_counter() - clock
        new_kl = kl_update(kl_state, metrics["kl/sequence"], tokens.shape[0])
        helpers = {**state.helpers, "kl": new_kl}
        if constrained:
            stats["constraint/lambda"] = float(lagrange.multiplier)  # the one this rollout used
            helpers["constraint"] = lagrange_update(lagrange, stats["constraint/cost"],
                                                    limit=constraint.limit, lr=constraint.lr)
        state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              helpers=helpers)
        stats["time/iteration"] = time.perf_counter() - start
        return state, {**metrics, **update_metrics, **stats}

    return step_fn
