"""AI feedback: a written constitution, AI judges (a language model reading answer log-probs,
packaged classifiers, a constitution of principles) and their labels."""
from rlhf_jax.rlaif.constitution import (Constitution, ConstitutionError, Principle,
                                         load_constitution, parse_constitution)
from rlhf_jax.rlaif.judges import (CLASSIFIERS, ClassifierJudge, ConstitutionJudge, Judgement,
                                   LMJudge)
from rlhf_jax.rlaif.judges import (profanity_probabilities, profanity_probability,
                                   profanity_rate)
from rlhf_jax.rlaif.labels import DEFAULT_CONSTITUTION, ai_label, constitution_judge
from rlhf_jax.rlaif.critique import critique_revision
