"""Understanding and auditing reward models: token attributions, concept activation vectors,
activation atlases and reward-hacking diagnostics."""
from rlhf_jax.interpret.attribution import (METHODS, RULES, Attribution, LogProbTarget,
                                            RewardTarget, attribute, gradient_x_input,
                                            integrated_gradients, occlusion, quadrature)
from rlhf_jax.interpret import atlas, concepts, hacking, report, text

# the decision log (`interpret.decisions`), imported on first use so that `python -m
# rlhf_jax.interpret.decisions` does not find the module already imported by its package
_DECISIONS = ("DecisionLog", "DecisionLogError", "LoggedScorer", "VerifyResult", "input_hash",
              "model_hash", "record_override", "text_hash", "verify_log")


def __getattr__(name):
    if name == "decisions" or name in _DECISIONS:
        import importlib
        module = importlib.import_module("rlhf_jax.interpret.decisions")
        return module if name == "decisions" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
