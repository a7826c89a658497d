"""The entry scripts' shell: config file + `--config.x=` overrides → stage config → stage, with
a user's mistakes reported as one line instead of a traceback."""
from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Callable, Sequence, Union

from rlhf_jax import train
from rlhf_jax.checkpoint import NoReadableCheckpointError
from rlhf_jax.data import ChatTemplateError, DataFormatError
from rlhf_jax.losses import CustomLossError
from rlhf_jax.models import CheckpointFormatError, CorruptCheckpointError, UnsupportedConfigError
from rlhf_jax.rlaif import ConstitutionError
from rlhf_jax.train.config_help import class_summary, config_help

# Errors that a user's config, data, paths or checkpoints cause (each names what is wrong);
# anything else is a bug and keeps its traceback.
USER_ERRORS = (train.ConfigError, DataFormatError, CheckpointFormatError, CorruptCheckpointError,
               UnsupportedConfigError, NoReadableCheckpointError, train.NonFiniteError,
               ConstitutionError, ChatTemplateError, CustomLossError)


def run_script(stage: Union[Callable, str], config_cls, argv: Sequence[str],
               default_config: str):
    """Parse `argv` against the config file, build `config_cls` and call `stage` with it (a
    function, or its `module:function` name, imported only once the config is good: `--help`
    and config mistakes answer without loading JAX).

    `--help` lists every config key with its default and description. `--quick` is
    `--config.quick=true` on every script whose config has a quick mode, and refused on the
    others. A user error prints `error: <message>` on stderr and exits with status 2.
    """
    if "--quick" in argv:
        if "quick" not in {f.name for f in dataclasses.fields(config_cls)}:
            print(f"error: --quick: this script ({config_cls.__name__}) has no quick mode",
                  file=sys.stderr, flush=True)
            raise SystemExit(2)
        argv = ["--config.quick=true" if a == "--quick" else a for a in argv]
    if "--help" in argv or "-h" in argv:
        print(f"{class_summary(config_cls)}\n\nOverride any key with --config.KEY=VALUE "
              f"(defaults from {default_config}):\n")
        print("\n".join(config_help(config_cls())))
        raise SystemExit(0)
    try:
        cfg = train.config_from_dict(config_cls, train.parse_config(argv, default_config))
        if isinstance(stage, str):
            module, _, name = stage.partition(":")
            stage = getattr(importlib.import_module(module), name)
        return stage(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
