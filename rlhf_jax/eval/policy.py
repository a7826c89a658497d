"""Evaluate a policy: sample responses, judge them by gold and proxy scorers and the profanity
classifier, measure KL, and summarise them with the alignment metrics of `eval.metrics`."""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.data import prompt_text
from rlhf_jax.eval.metrics import distinct_n_bootstrap, mean_se
from rlhf_jax.eval.scorers import PROFANITY_THRESHOLD, profanity_probabilities
from rlhf_jax.losses.kl import kl_estimate
from rlhf_jax.models import TransformerConfig, response_logprobs
from rlhf_jax.sampling import SamplingConfig, generate


def sequence_kl(logp_bt, ref_logp_bt, mask_bt):
    """Two estimates of KL(π ‖ π_ref) per response [B] from the log-probabilities of its
    sampled tokens under the policy (`logp_bt`, which drew them) and the reference, summed over
    the real tokens (Schulman 2020, "Approximating KL divergence"):

    - k1 = Σ_t log π(y_t) − log π_ref(y_t): unbiased, but one response's value can be negative,
      and so can a small sample's mean when the policy is close to the reference;
    - k3 = Σ_t (r_t − 1) − log r_t with r_t = π_ref(y_t) / π(y_t): unbiased too (E_π[r_t − 1]
      = 0 at each prefix when the policy samples its full distribution), and never negative
      (x − 1 ≥ log x), with less variance near the reference. Computed as expm1(log r) − log r,
      exact for small log r. Under top-k / top-p sampling E[r_t − 1] ≤ 0, so k3 then reads low.

    The per-token terms are `losses.kl_estimate`'s "k1" and "k3", as PPO's penalty uses them.
    """
    logp, ref = logp_bt.astype(jnp.float32), ref_logp_bt.astype(jnp.float32)
    return tuple(jnp.sum(kl_estimate(logp, ref, k) * mask_bt, axis=1) for k in ("k1", "k3"))


def _no_proxy(params, prompt_tokens, prompt_mask, response_tokens, response_mask):
    return jnp.full(response_tokens.shape[:1], jnp.nan)


@partial(jax.jit, static_argnames=("config", "temperature", "proxy_fn"))
def _judge(ref_params, proxy_params, *seq, config, temperature, proxy_fn):
    """Reference log-probs and proxy scores of sampled responses, in one compiled program."""
    return (response_logprobs(ref_params, *seq, config=config, temperature=temperature),
            proxy_fn(proxy_params, *seq))


def evaluate_policy(params, ref_params, config: TransformerConfig, prompts: dict, key, *,
                    sampling: SamplingConfig, tokenizer,
                    gold_fn: Optional[Callable[[str, str], float]] = None,
                    proxy_fn: Optional[Callable] = None, proxy_params=None,
                    prompt_texts: Optional[Sequence] = None,
                    cost_fn: Optional[Callable] = None) -> dict:
    """Sample one response per prompt row and judge it.

    Returns per-sample rows (prompt, response, gold, proxy, kl, kl_k3, length, eos, profanity,
    profane) and their summary (`summarise`): the gold score `gold_fn(prompt, response)` (NaN
    without one), the proxy (reward-model) score `proxy_fn(proxy_params, prompt_tokens,
    prompt_mask, response_tokens, response_mask)`, the sequence KL(π ‖ π_ref) estimated over
    the sampled tokens at the sampling temperature by k1 = Σ_t log π(y_t) − log π_ref(y_t)
    (`kl`) and by the never-negative k3 (`kl_k3`; `sequence_kl`),
    the response length in tokens, whether it ended in EOS, and the profanity classifier's
    probability (`eval.scorers.profanity_probabilities`, one call for all responses) with its
    flag `profane` = 1 when it exceeds 0.5.
    The reference is read with adapters off (`config.without_lora()`): with LoRA, pass the
    policy's own parameters as `ref_params`. `cost_fn(prompt_tokens, prompt_mask,
    response_tokens, response_mask)` (host arrays; e.g. a constrained cost, `ppo.RewardTerm`'s
    `fn`) adds each row's `cost`. `prompt_texts` (one per row: text or a message
    list) are the rows' prompts as given, kept in the rows and shown to `gold_fn` as text
    (`data.prompt_text`); without them a prompt is its decoded tokens. A response is decoded
    without control tokens (a chat template's end of turn included).
    """
    tokens, mask = prompts["tokens"], prompts["mask"]
    out = generate(params, tokens, mask, key, config=config, sampling=sampling)
    ref_logp, proxy = _judge(ref_params, proxy_params, tokens, mask, out.tokens, out.mask,
                             config=config.without_lora(), temperature=sampling.temperature,
                             proxy_fn=proxy_fn or _no_proxy)
    kl, kl3 = sequence_kl(out.logprobs, ref_logp, out.mask)
    host = jax.device_get((tokens, mask, out.tokens, out.mask, kl, kl3, proxy,
                           out.ended_with_eos))
    rows = []
    if prompt_texts is not None and len(prompt_texts) != len(host[0]):
        prompt_texts = None  # another process's rows: decode them
    for i, (p, pm, r, rm, k, k3, s, eos) in enumerate(zip(*host)):
        prompt = (prompt_texts[i] if prompt_texts is not None
                  else tokenizer.decode(p[pm > 0], skip_special_tokens=True))
        response = tokenizer.decode(r[rm > 0], skip_special_tokens=True)
        rows.append({"prompt": prompt, "response": response,
                     "gold": gold_fn(prompt_text(prompt), response) if gold_fn
                     else float("nan"),
                     "proxy": float(s), "kl": float(k), "kl_k3": float(k3),
                     "length": int(rm.sum()), "eos": bool(eos)})
    for row, prob in zip(rows, profanity_probabilities([r["response"] for r in rows])):
        row["profanity"], row["profane"] = float(prob), int(prob > PROFANITY_THRESHOLD)
    if cost_fn is not None:
        for row, c in zip(rows, np.asarray(cost_fn(*host[:4]), np.float64)):
            row["cost"] = float(c)
    return {"summary": summarise(rows), "rows": rows}


def summarise(rows: list[dict]) -> dict:
    """The alignment metrics of judged rows, each {"mean", "stderr"}: gold, proxy, KL (`kl`:
    k1; `kl_k3`: k3, where the rows have it; `sequence_kl`) and length (tokens) as mean ± std
    (ddof=1) / √n; `profanity_rate`, the same of the 0/1 flag
    P(profane) > 0.5; `distinct_1` and `distinct_2`, distinct n-grams over the responses / their
    total words (Li et al. 2016), with a bootstrap standard error over responses
    (`metrics.distinct_n_bootstrap`: 200 resamples, seed 0). Also the EOS fraction and the
    count. The win rate needs a reference's rows: `metrics.win_rate`."""
    column = lambda name: np.array([r[name] for r in rows], np.float64)  # noqa: E731
    summary = {name: mean_se(column(name)) for name in ("gold", "proxy", "kl", "kl_k3", "length")
               if name != "kl_k3" or all(name in r for r in rows)}
    summary["profanity_rate"] = mean_se(column("profane"))
    texts = [r["response"] for r in rows]
    for n in (1, 2):
        summary[f"distinct_{n}"] = distinct_n_bootstrap(texts, n)
    summary["eos_fraction"] = float(column("eos").mean())
    summary["samples"] = len(rows)
    return summary


def best_of_n_kl(n: int) -> float:
    """KL(π_best-of-n ‖ π) = log n − (n − 1)/n nats (Stiennon et al. 2020, appendix G.3; Gao et
    al. 2022, eq. 1): exact when the n samples never repeat, an upper bound otherwise (Beirami
    et al. 2024), so a policy that often repeats a response is closer than this."""
    return float(np.log(n) - (n - 1) / n)


def evaluate_best_of_n(ref_params, config: TransformerConfig, prompts: dict, key, *, n: int,
                       sampling: SamplingConfig, tokenizer, proxy_fn: Callable, proxy_params,
                       gold_fn: Optional[Callable[[str, str], float]] = None,
                       chunk: int = 256, prompt_texts: Optional[Sequence] = None,
                       cost_fn: Optional[Callable] = None, cost_limit: float = 0.0) -> dict:
    """Best-of-n reranking: sample `n` responses per prompt row from the policy, keep the one
    the proxy (reward model) scores highest, and judge it as `evaluate_policy` does. The KL
    is the analytic `best_of_n_kl(n)` for every row (an upper bound when samples repeat; the
    sampled-token estimates are 0: the samples come from the reference itself, so the rows
    carry no `kl_k3`). Rows are sampled in chunks of `chunk`.

    With a `cost_fn` (as `evaluate_policy`'s) the choice is constrained: only candidates whose
    cost is at most `cost_limit` compete, and a prompt whose n candidates all exceed it keeps
    its least costly one, so no reward buys a candidate past the limit (rejection before
    reranking: the best-of-n counterpart of Safe RLHF's constraint, Dai et al. 2023). The
    summary then adds `cost` (mean ± s.e. over the chosen), `over_limit` (the fraction of
    prompts with no candidate within the limit) and `limit`."""
    tokens, mask = (np.asarray(x) for x in jax.device_get((prompts["tokens"], prompts["mask"])))
    rep_t, rep_m = np.repeat(tokens, n, axis=0), np.repeat(mask, n, axis=0)
    texts = None if prompt_texts is None else [t for t in prompt_texts for _ in range(n)]
    rows = []
    for start in range(0, len(rep_t), chunk):
        part = {"tokens": rep_t[start:start + chunk], "mask": rep_m[start:start + chunk]}
        rows += evaluate_policy(ref_params, ref_params, config, part,
                                jax.random.fold_in(key, start), sampling=sampling,
                                tokenizer=tokenizer, gold_fn=gold_fn, proxy_fn=proxy_fn,
                                proxy_params=proxy_params,
                                prompt_texts=None if texts is None
                                else texts[start:start + chunk], cost_fn=cost_fn)["rows"]
    kl = best_of_n_kl(n)
    groups = [rows[i:i + n] for i in range(0, len(rows), n)]
    if cost_fn is None:
        best = [max(g, key=lambda r: r["proxy"]) for g in groups]
    else:
        allowed = [[r for r in g if r["cost"] <= cost_limit] for g in groups]
        best = [max(ok, key=lambda r: r["proxy"]) if ok else min(g, key=lambda r: r["cost"])
                for ok, g in zip(allowed, groups)]
    best = [{**{k: v for k, v in r.items() if k != "kl_k3"}, "kl": kl} for r in best]
    summary = {**summarise(best), "n": n}
    if cost_fn is not None:
        summary.update(cost=mean_se(np.array([r["cost"] for r in best], np.float64)),
                       over_limit=float(np.mean([not ok for ok in allowed])),
                       limit=float(cost_limit))
    return {"summary": summary, "rows": best}
