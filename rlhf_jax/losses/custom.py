"""Your own loss in place of a built-in one, named in a config as `module:function`.

A stage's config holds the name (`--config.loss.custom=my_losses:dpo_variant`,
`--config.ppo.policy_loss=my_losses:gspo`), so the run records it and a resumed run uses it
again. The name is `package.module:attribute` (importable), `path/to/file.py:attribute` (a file
loaded by path) or `__main__:attribute` (a function defined in a notebook or script);
`loss_name(fn)` gives a callable's name. `sum_form` lets a loss return either the step's
`(loss_sum, (count, metric_sums))` or a plain `(loss, metrics)` mean.

A reward or offline loss must weight each example by `batch.weight` (`Σ wᵢ·ℓᵢ / Σ wᵢ`, as the
built-in losses do): rows that only fill a batch (a last partial batch, a length bucket's
remainder) have weight 0 and must not count.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable


class CustomLossError(ValueError):
    """A custom loss name that does not resolve to a callable."""


def loss_name(fn: Callable) -> str:
    """`module:qualname` of a top-level function (what `resolve_loss` takes back)."""
    name = getattr(fn, "__qualname__", "")
    if not name or "<" in name:
        raise CustomLossError(f"{fn!r} has no importable name (a lambda or a nested function): "
                              "define it at the top level of a module or notebook")
    return f"{fn.__module__}:{name}"


def resolve_loss(spec: str, field: str = "loss.custom") -> Callable:
    """The callable a `module:function` / `file.py:function` name points at."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise CustomLossError(f"{field}={spec!r}: expected module:function or "
                              "path/to/file.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise CustomLossError(f"{field}={spec!r}: {path} is not a file")
            key = f"_custom_loss_{abs(hash(str(path.resolve())))}"
            module = sys.modules.get(key)
            if module is None:
                loader = importlib.util.spec_from_file_location(key, path)
                module = importlib.util.module_from_spec(loader)
                loader.loader.exec_module(module)
                sys.modules[key] = module
        else:
            module = importlib.import_module(module_name)
    except CustomLossError:
        raise
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module's
        raise CustomLossError(f"{field}={spec!r}: cannot import {module_name!r} "
                              f"({type(e).__name__}: {e})") from None
    target = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise CustomLossError(f"{field}={spec!r}: {module_name!r} has no {attr!r}")
    if not callable(target):
        raise CustomLossError(f"{field}={spec!r}: {attr!r} is not callable")
    return target


def with_context(fn: Callable, **context) -> Callable:
    """`fn` with the keyword arguments it declares among `context` (e.g. `model`) bound."""
    params = inspect.signature(fn).parameters
    wanted = {k: v for k, v in context.items() if k in params}
    if not wanted:
        return fn
    return lambda *args: fn(*args, **wanted)


def sum_form(out, field: str = "loss.custom"):
    """A loss's result as the step's `(loss_sum, (count, metric_sums))`: given in that form,
    or as `(loss, metrics)` with `loss` a mean (count 1: the step's division leaves it as is)."""
    if not isinstance(out, tuple) or len(out) != 2:
        raise CustomLossError(f"{field}: a loss returns (loss, metrics) or (loss_sum, (count, "
                              f"metric_sums)), not {type(out).__name__}")
    loss, aux = out
    if isinstance(aux, dict):
        return loss, (1.0, dict(aux))
    if isinstance(aux, tuple) and len(aux) == 2 and isinstance(aux[1], dict):
        return loss, aux
    raise CustomLossError(f"{field}: the second element must be a metrics dict or (count, "
                          "metric sums)")
