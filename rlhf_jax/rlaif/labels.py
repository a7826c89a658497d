"""AI labels: a judge's verdicts on response pairs as the project's pairwise records."""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

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





def round_robin_scores(judge, prompts: Sequence, answers: Sequence[str], k: int, *,
                       seed: int = 0) -> np.ndarray:
    """Scores [N] of N = B·K answers (prompt-major: rows b·K … b·K + K − 1 answer prompt b)
    from a pairwise judge (`judge.compare(prompts, a, b).prob_a`): each answer's expected wins
    against the other K − 1 answers to its prompt, s_i = Σ_{j≠i} P(i ≻ j) (a Borda count with
    the judge's probabilities; for K = 2 the pair's two probabilities), from K(K − 1)/2
    comparisons per prompt. A judge that draws principles at random (`ConstitutionJudge` in
    "sample" mode) is reseeded from `seed` and the texts, so the same answers get the same scores
    (a resumed run judges as the uninterrupted one)."""
    n = len(answers)
    if n % k or len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts and {n} answers: expected K = {k} answers "
                         "per prompt, prompt-major")
    pairs = [(b + i, b + j) for b in range(0, n, k) for i in range(k) for j in range(i + 1, k)]
    if hasattr(judge, "rng"):
        digest = zlib.crc32("\x00".join(map(str, [*prompts, *answers])).encode())
        judge.rng = np.random.default_rng([seed, digest])
    out = judge.compare([prompts[i] for i, _ in pairs], [answers[i] for i, _ in pairs],
                        [answers[j] for _, j in pairs])
    scores = np.zeros(n, np.float64)
    for (i, j), p in zip(pairs, np.asarray(out.prob_a, np.float64)):
        scores[i] += p
        scores[j] += 1.0 - p
    return scores.astype(np.float32)
