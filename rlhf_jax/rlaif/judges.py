"""AI judges behind one interface: `judge.compare(prompts, responses_a, responses_b, principle)`
returns the probability that each response A is better than its B, and optional rationales.

- `LMJudge`: any local Hugging Face causal LM. The question, prompt and both responses go into a
  template ending in "The better response is"; the judge reads the next-token log-probabilities
  of the two answer tokens (" A", " B") — no free-form parsing — so P(A) = σ(ℓ_A − ℓ_B). Each
  comparison is asked in both presentation orders and the two answers averaged, which cancels a
  judge's preference for a position (Zheng et al. 2023, "Judging LLM-as-a-judge", §3.4; Lee et
  al. 2023, RLAIF, §2.1). With `chain_of_thought`, the judge first writes a rationale with our
  sampler, then the answer's log-probs are read after it (Lee et al. 2023, §2.1.1).
- `ClassifierJudge`: a packaged scorer (text → score, higher better), P(A) = σ((s_A − s_B)/T).
- `ConstitutionJudge`: per comparison one principle drawn by weight and judged by its judge
  (Bai et al. 2022, §4.1), or every principle's probability averaged by weight.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import data, models
from rlhf_jax.eval import scorers
from rlhf_jax.rlaif.constitution import Constitution, Principle
from rlhf_jax.sampling import SamplingConfig, generate

TEMPLATE = ("{question}\n\nConversation: {prompt}\n\nResponse A: {a}\n\nResponse B: {b}\n\n"
            "{reasoning}The better response is")
COT_REQUEST = "Think about which response is better before answering.\nReasoning:"


@dataclasses.dataclass
class Judgement:
    """P(A better) per comparison, with rationales (empty strings when none)."""

    prob_a: np.ndarray
    rationales: list
    principles: list = dataclasses.field(default_factory=list)


def _builtin_gold(prompt: str, response: str) -> float:
    return data.builtin.gold_score(response)


# the packaged profanity classifier lives in eval.scorers; re-exported here for older callers
profanity_probability = scorers.profanity_probability
profanity_probabilities = scorers.profanity_probabilities
profanity_rate = scorers.profanity_rate


# packaged classifier judges: name -> (text score, higher = better; temperature of σ)
CLASSIFIERS: dict = {
    "no_profanity": (lambda p, r: -profanity_probability(p, r), 0.1),
    "vader": (scorers.vader_compound, 0.1),
    "builtin_gold": (_builtin_gold, 0.5),
    "no_repetition": (lambda p, r: -scorers.repetition_fraction(p, r), 0.1),
    "brevity": (lambda p, r: -scorers.word_count(p, r), 1.0),
}


class ClassifierJudge:
    """P(A) = σ((s(A) − s(B)) / temperature) from a scorer `score(prompt, response)`."""

    def __init__(self, name: str, score: Optional[Callable] = None,
                 temperature: Optional[float] = None):
        if score is None:
            if name not in CLASSIFIERS:
                raise ValueError(f"classifier judge {name!r}: expected one of "
                                 f"{sorted(CLASSIFIERS)} or a score function")
            score, default_t = CLASSIFIERS[name]
            temperature = temperature or default_t
        if not (temperature or 1.0) > 0:
            raise ValueError(f"temperature={temperature}: expected > 0")
        self.name, self.score, self.temperature = name, score, float(temperature or 1.0)

    def compare(self, prompts, a, b, principle: Optional[Principle] = None) -> Judgement:
        sa = np.array([self.score(p, r) for p, r in zip(prompts, a)], np.float64)
        sb = np.array([self.score(p, r) for p, r in zip(prompts, b)], np.float64)
        return Judgement(1.0 / (1.0 + np.exp(-(sa - sb) / self.temperature)), [""] * len(sa))


class LMJudge:
    """A language-model judge from a local Hugging Face causal-LM directory (see the module
    docstring). Texts longer than `max_len` tokens lose their beginning (the question); keep
    `max_len` large enough for your template and responses."""

    def __init__(self, model_dir: str, *, max_len: int = 256, batch_size: int = 32,
                 answers: tuple = (" A", " B"), template: str = TEMPLATE,
                 chain_of_thought: bool = False, rationale_tokens: int = 48, seed: int = 0):
        self.config, self.params = models.load_hf_checkpoint(model_dir)
        self.tok = models.load_tokenizer(model_dir, self.config)
        self.name = f"lm:{model_dir}"
        ids = []
        for ans in answers:
            enc = self.tok(ans, add_special_tokens=False)["input_ids"]
            if len(enc) != 1:
                raise ValueError(f"answer {ans!r} is {len(enc)} tokens in {model_dir}'s "
                                 "tokenizer; the judge reads one token per answer: choose "
                                 "answers that are single tokens")
            ids.append(enc[0])
        if ids[0] == ids[1]:
            raise ValueError(f"answers {answers!r} map to the same token")
        self.answer_ids = jnp.asarray(ids, jnp.int32)
        if "{reasoning}" not in template:
            raise ValueError("template must contain {reasoning} (where a chain-of-thought "
                             "rationale goes; empty otherwise)")
        self.max_len, self.batch_size, self.template = max_len, batch_size, template
        self.cot, self.rationale_tokens, self.seed = chain_of_thought, rationale_tokens, seed
        self.model = models.DecoderModel(self.config)

    @partial(jax.jit, static_argnums=0)
    def _answer_logits(self, params, tokens, mask):
        out = self.model.apply({"params": params}, tokens, mask, last_logits_only=True)
        logp = jax.nn.log_softmax(out.logits[:, -1].astype(jnp.float32), axis=-1)
        return logp[:, self.answer_ids]  # [B, 2]: log P(" A"), log P(" B")

    def _encode(self, texts: Sequence[str], length: int) -> tuple:
        pad = self.tok.pad_token_id or 0
        toks = np.full((len(texts), length), pad, np.int32)
        mask = np.zeros((len(texts), length), np.int32)
        for i, t in enumerate(texts):
            ids = self.tok(t, add_special_tokens=False)["input_ids"][-length:]
            if ids:
                toks[i, -len(ids):] = ids
                mask[i, -len(ids):] = 1
        return toks, mask

    def answer_logprobs(self, texts: Sequence[str]) -> np.ndarray:
        """[N, 2] log-probabilities of the two answer tokens after each text (batched, jitted,
        one compiled shape)."""
        out = []
        for s in range(0, len(texts), self.batch_size):
            part = list(texts[s:s + self.batch_size])
            part += [part[0]] * (self.batch_size - len(part))
            toks, mask = self._encode(part, self.max_len)
            out.append(np.asarray(self._answer_logits(self.params, toks, mask)))
        return np.concatenate(out)[:len(texts)]

    def _rationales(self, texts: Sequence[str], key) -> list[str]:
        sampling = SamplingConfig(max_new_tokens=self.rationale_tokens, temperature=1.0,
                                  eos_token_ids=() if self.tok.eos_token_id is None else
                                  (self.tok.eos_token_id,),
                                  pad_token_id=self.tok.pad_token_id or 0)
        out = []
        for s in range(0, len(texts), self.batch_size):
            part = list(texts[s:s + self.batch_size])
            n = len(part)
            part += [part[0]] * (self.batch_size - n)
            toks, mask = self._encode(part, self.max_len - self.rationale_tokens)
            res = generate(self.params, toks, mask, jax.random.fold_in(key, s),
                           config=self.config, sampling=sampling)
            t, m = jax.device_get((res.tokens, res.mask))
            out += [self.tok.decode(t[i][m[i] > 0], skip_special_tokens=True) for i in range(n)]
        return out

    def texts(self, prompts, a, b, question: str, rationales=None) -> list[str]:
        """The judge's inputs in the order given (A = `a`)."""
        out = []
        for i, (p, x, y) in enumerate(zip(prompts, a, b)):
            reasoning = "" if rationales is None else f"{COT_REQUEST} {rationales[i]}\n\n"
            out.append(self.template.format(question=question, prompt=p, a=x, b=y,
                                            reasoning=reasoning))
        return out

    def compare_one_order(self, prompts, a, b, question: str, key=None) -> Judgement:
        """P(A) with A shown first, no order averaging (what position bias looks like)."""
        rationales = None
        if self.cot:  # the template up to the reasoning slot, then the request to reason
            head = self.template.split("{reasoning}")[0]
            asks = [head.format(question=question, prompt=p, a=x, b=y) + COT_REQUEST
                    for p, x, y in zip(prompts, a, b)]
            rationales = [r.strip() for r in self._rationales(
                asks, key if key is not None else jax.random.key(self.seed))]
        lp = self.answer_logprobs(self.texts(prompts, a, b, question, rationales))
        return Judgement(1.0 / (1.0 + np.exp(lp[:, 1] - lp[:, 0])),
                         rationales or [""] * len(a))

    def compare(self, prompts, a, b, principle: Optional[Principle] = None) -> Judgement:
        """P(A better), averaged over both presentation orders."""
        question = principle.question if principle else "Which response is better?"
        key = jax.random.key(self.seed)
        ab = self.compare_one_order(prompts, a, b, question, jax.random.fold_in(key, 0))
        ba = self.compare_one_order(prompts, b, a, question, jax.random.fold_in(key, 1))
        rationales = [f"(A first) {x}\n(B first) {y}" if x or y else ""
                      for x, y in zip(ab.rationales, ba.rationales)]
        return Judgement(0.5 * (ab.prob_a + (1.0 - ba.prob_a)), rationales)


class ConstitutionJudge:
    """Judges each comparison by the constitution: mode "sample" draws one principle per
    comparison by weight (Bai et al. 2022, §4.1); "weighted" averages every principle's
    probability by weight. `judges` maps a principle's `judge` name to a judge ("lm" included
    when a principle uses it); classifier names not given are built from CLASSIFIERS."""

    def __init__(self, constitution: Constitution, judges: Optional[dict] = None,
                 seed: int = 0):
        self.constitution = constitution
        self.judges = dict(judges or {})
        for p in constitution.principles:
            if p.judge not in self.judges:
                if p.judge == "lm":
                    raise ValueError(f"principle {p.id!r} needs an LM judge: pass "
                                     "judges={'lm': LMJudge(model_dir)}")
                self.judges[p.judge] = ClassifierJudge(p.judge)
        self.rng = np.random.default_rng(seed)
        self.name = "constitution"

    def compare(self, prompts, a, b, principle=None) -> Judgement:
        n, cons = len(prompts), self.constitution
        if cons.mode == "weighted":
            probs = np.zeros(n)
            for w, p in zip(cons.weights(), cons.principles):
                probs += w * self.judges[p.judge].compare(prompts, a, b, p).prob_a
            return Judgement(probs, [""] * n, ["all"] * n)
        pick = self.rng.choice(len(cons.principles), size=n, p=cons.weights())
        probs, rationales = np.zeros(n), [""] * n
        for k, p in enumerate(cons.principles):
            idx = np.flatnonzero(pick == k)
            if idx.size:
                j = self.judges[p.judge].compare([prompts[i] for i in idx],
                                                 [a[i] for i in idx], [b[i] for i in idx], p)
                probs[idx] = j.prob_a
                for i, r in zip(idx, j.rationales):
                    rationales[i] = r
        return Judgement(probs, rationales, [cons.principles[k].id for k in pick])
