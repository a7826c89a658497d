"""Understanding and auditing reward models: token attributions, concept activation vectors,
activation atlases and reward-hacking diagnostics."""
from rlhf_jax.interpret.attribution import (METHODS, RULES, Attribution, LogProbTarget,
                                            RewardTarget, attribute, gradient_x_input,
                                            integrated_gradients, occlusion, quadrature)
from rlhf_jax.interpret import atlas, concepts, hacking, report, text
