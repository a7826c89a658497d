"""Understanding and auditing reward models: token attributions, concept activation vectors,
activation atlases, reward-hacking diagnostics and the tamper-evident decision log."""
from rlhf_jax.interpret.attribution import (METHODS, RULES, Attribution, LogProbTarget,
                                            RewardTarget, attribute, gradient_x_input,
                                            integrated_gradients, occlusion, quadrature)
from rlhf_jax.interpret import atlas, concepts, hacking, report, text
from rlhf_jax.interpret.hash_chain import VerifyResult, verify_log

# the decision log (`interpret.decisions`) and its scorer, imported on first use so that
# `python -m rlhf_jax.interpret.decisions` does not find the module already imported by its package
_LAZY = {"decisions": None, "DecisionLog": "decisions", "DecisionLogError": "decisions",
         "input_hash": "decisions", "model_hash": "decisions", "record_override": "decisions",
         "text_hash": "decisions", "logged_scorer": None, "LoggedScorer": "logged_scorer"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module = importlib.import_module(f"rlhf_jax.interpret.{_LAZY[name] or name}")
        return module if _LAZY[name] is None else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
