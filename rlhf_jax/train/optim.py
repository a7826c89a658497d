"""Optimiser factory: AdamW with warmup + schedule, global-norm clipping, decay masks, frozen
leaves that get neither gradients nor optimiser state."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import optax

from rlhf_jax.train.moments import scale_by_adam_stored
from rlhf_jax.train.optim_config import OptimizerConfig


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Linear warmup, then cosine / linear decay or a constant rate."""
    end = cfg.learning_rate * cfg.end_lr_fraction
    decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps,
                                            alpha=cfg.end_lr_fraction)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.learning_rate, end, decay_steps)
    else:
        after = optax.constant_schedule(cfg.learning_rate)
    if cfg.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def path_str(path) -> str:
    """A pytree key path as "a/b/c"."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def decay_mask(params: Any) -> Any:
    """True for weight matrices and embeddings; False for biases, norm scales and head gains."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: path_str(path).rsplit("/", 1)[-1] in ("kernel", "embedding")
        and x.ndim >= 2, params)


def _under(path: str, prefixes: Sequence[str]) -> bool:
    """Whether the "a/b/c" path is one of the prefixes or lies below one."""
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def frozen_labels(params: Any, frozen: Sequence[str]) -> Any:
    """"frozen" for leaves under any of the path prefixes, "trainable" otherwise."""
    prefixes = tuple(p.strip("/") for p in frozen)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if _under(path_str(path), prefixes) else "trainable", params)


class Optimizer(NamedTuple):
    """An optax transformation that sees only the trainable leaves.

    `init(params)` and `update(grads, state, params)` take full trees; frozen leaves are dropped
    first (`split`), so they hold no optimiser state, and `grads` may carry None for them (the
    step differentiates with respect to the trainable leaves only, so the frozen weights get no
    gradient buffers either). The returned updates hold None at frozen leaves: apply them with
    `apply_updates`. `inner` is the optax chain over the trainable tree; `is_frozen(path)` the
    rule ("a/b/c" paths).
    """

    init: Callable
    update: Callable
    inner: optax.GradientTransformation
    is_frozen: Callable[[str], bool]

    def split(self, tree: Any) -> tuple[Any, Any]:
        """(trainable, frozen): two trees shaped like `tree` with None at the other's leaves."""
        return (_select(tree, lambda path: not self.is_frozen(path)),
                _select(tree, self.is_frozen))

    @staticmethod
    def merge(trainable: Any, frozen: Any) -> Any:
        """The full tree from `split`'s two halves."""
        return merge_trees(trainable, frozen)

    @property
    def freezes(self) -> bool:
        """Whether any rule freezes leaves (False: every leaf trains)."""
        return self.is_frozen is not _nothing_frozen


def _nothing_frozen(path: str) -> bool:
    return False


def _select(tree: Any, keep: Callable[[str], bool]) -> Any:
    """`tree` with None at the leaves whose path `keep` rejects."""
    return jax.tree_util.tree_map_with_path(lambda p, x: x if keep(path_str(p)) else None, tree)


def merge_trees(trainable: Any, frozen: Any) -> Any:
    """The full tree from `Optimizer.split`'s two halves."""
    return jax.tree.map(lambda t, f: f if t is None else t, trainable, frozen,
                        is_leaf=lambda x: x is None)


def apply_updates(params: Any, updates: Any) -> Any:
    """`optax.apply_updates` where None updates (frozen leaves) keep the parameter as it is."""
    return jax.tree.map(lambda p, u: p if u is None else optax.apply_updates(p, u), params,
                        updates, is_leaf=lambda x: x is None)


def make_optimizer(cfg: OptimizerConfig, params: Any,
                   freeze: Optional[Callable[[str], bool]] = None) -> Optimizer:
    """The optimiser for `params`: clip → AdamW(schedule, masked decay) over the trainable leaves
    (Adam's moments in `cfg.moment_dtype` when set, `train.moments`).

    Leaves under `cfg.frozen` prefixes, and those for which `freeze(path)` is true (e.g.
    `models.frozen_base()` for LoRA: the base frozen, adapters and heads trained), are frozen:
    no gradient, no moments, no update. Global-norm clipping sees the trainable leaves only.
    """
    if cfg.total_steps <= 0:
        raise ValueError("OptimizerConfig.total_steps is 0: set the schedule's length")
    missing = [p for p in cfg.frozen if not any(
        lab == "frozen" for lab in jax.tree.leaves(frozen_labels(params, [p])))]
    if missing:
        raise ValueError(f"OptimizerConfig.frozen names {missing}, which match no parameter path")
    if cfg.moment_dtype:  # optax.adamw's chain with the moments stored in moment_dtype
        adamw = optax.chain(
            scale_by_adam_stored(cfg.b1, cfg.b2, cfg.eps, dtype=cfg.moment_dtype),
            optax.add_decayed_weights(cfg.weight_decay, decay_mask),
            optax.scale_by_learning_rate(learning_rate_schedule(cfg)))
    else:
        adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                            weight_decay=cfg.weight_decay, mask=decay_mask)
    chain = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw) \
        if cfg.clip_norm > 0 else adamw
    # kept inside multi_transform (every leaf it sees is trainable) so that the optimiser
    # state has the layout of earlier versions, and their checkpoints still resume
    inner = optax.multi_transform(
        {"trainable": chain, "frozen": optax.set_to_zero()},
        lambda tree: jax.tree.map(lambda _: "trainable", tree))
    prefixes = tuple(p.strip("/") for p in cfg.frozen)
    if not prefixes and freeze is None:
        rule = _nothing_frozen
    else:
        def rule(path: str) -> bool:
            return _under(path, prefixes) or bool(freeze is not None and freeze(path))

    def trainable(tree):
        return _select(tree, lambda path: not rule(path))
    if not jax.tree.leaves(trainable(params)):
        raise ValueError("every parameter is frozen (OptimizerConfig.frozen and the LoRA rule); "
                         "nothing would train")

    def init(params):
        return inner.init(trainable(params))

    def update(grads, state, params=None):
        return inner.update(trainable(grads), state,
                            None if params is None else trainable(params))

    return Optimizer(init, update, inner, rule)
