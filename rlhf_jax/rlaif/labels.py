"""AI labels: a judge's verdicts on response pairs as the project's pairwise records."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from rlhf_jax.rlaif.constitution import load_constitution
from rlhf_jax.rlaif.judges import CLASSIFIERS, ConstitutionJudge, LMJudge

DEFAULT_CONSTITUTION = Path(__file__).parent / "constitutions" / "default.toml"


def constitution_judge(path: str = "", lm_dir: str = "", seed: int = 0) -> ConstitutionJudge:
    """The judge of the constitution at `path` (empty: the packaged default, classifier judges
    only); principles judged by "lm" use the Hugging Face directory `lm_dir`."""
    cons = load_constitution(path or DEFAULT_CONSTITUTION, known_judges=CLASSIFIERS)
    judges = {}
    if any(p.judge == "lm" for p in cons.principles):
        if not lm_dir:
            raise ValueError(f"{path}: a principle is judged by 'lm': give the judge model "
                             "directory (judge_model_dir)")
        judges["lm"] = LMJudge(lm_dir, seed=seed)
    return ConstitutionJudge(cons, judges, seed=seed)


def ai_label(judge, pairs: Sequence[tuple], *, judge_name: Optional[str] = None) -> list[dict]:
    """Pairwise records from (prompt, a, b) pairs: the judge's choice as `chosen`, its
    probability that `chosen` is better as `probability` (a soft label, ≥ 0.5: the reward
    loss treats 1 − p as that label's flip probability), its rationale, and
    `annotator_id = "ai:<judge>:<principle>"`."""
    prompts, a, b = ([p[i] for p in pairs] for i in range(3))
    out = judge.compare(prompts, a, b)
    name = judge_name or getattr(judge, "name", "judge")
    principles = out.principles or [""] * len(pairs)
    records = []
    for (p, x, y), prob, why, pid in zip(pairs, out.prob_a, out.rationales, principles):
        first = prob >= 0.5
        records.append({"prompt": p, "chosen": x if first else y, "rejected": y if first else x,
                        "probability": float(max(prob, 1.0 - prob)),
                        "annotator_id": f"ai:{name}:{pid}" if pid else f"ai:{name}",
                        "rationale": why})
    return records



