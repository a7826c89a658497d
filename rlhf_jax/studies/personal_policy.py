"""The personalised-reward study's policy side and the helpers both sides share: a user's
posterior from labelled pairs, the basis heads' rewards of texts, best-of-n from an SFT policy
reranked by each user's reward (with the safety floor), and rewarded soups of LoRA policies
trained by PPO against each basis head (Ramé et al. 2023). `studies.personal` runs them."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from rlhf_jax import models, ppo, reward, stages
from rlhf_jax.data import builtin
from rlhf_jax.eval.scorers import profanity_probabilities
from rlhf_jax.reward.personal_model import fit_posterior
from rlhf_jax.sampling import SamplingConfig, TextSampler
from rlhf_jax.studies.users import USERS, judge_features, user_pairs


def signed_differences(learner, pairs, labels):
    """φ(chosen) − φ(rejected) [n, K'] of labelled pairs."""
    d, _ = learner.score_pairs(pairs)
    sign = np.array([1.0 if r["ranks"] == [0, 1] else -1.0 for r in labels], np.float32)
    return d * sign[:, None]


def export_head(learner, head: int, path: Path, tok, items) -> str:
    """Head `head` of a learner's reward model as a one-output reward-model export, normalised
    to mean 0 / std 1 on `items` ((prompt, response) pairs), for the PPO stage."""
    params = learner.reward_params
    h = jax.device_get(params["reward_head"])
    one = {"proj": {"kernel": h["proj"]["kernel"][:, head:head + 1],
                    "bias": h["proj"]["bias"][head:head + 1]},
           "gain": h["gain"][head:head + 1], "bias": h["bias"][head:head + 1]}
    raw = basis_rewards(learner, items)[:, head:head + 1]
    gain, bias = reward.normalised_head(one["gain"], one["bias"], raw)
    one = dict(one, gain=gain, bias=bias)
    reward.save_reward_model(path, learner.config,
                             {"transformer": jax.device_get(params["transformer"]),
                              "reward_head": one}, tokenizer=tok)
    return str(path)


def rewarded_soups(cfg, policy_dir, tok, seed, personal, shared, prior, users, ids, pool) -> dict:
    """Rewarded soups (Ramé et al. 2023): one LoRA policy per basis head and one for the shared
    reward, each by PPO from the SFT policy; for each user the ingredients mixed by their k = 16
    posterior weights on the simplex (`models.soup_weights`, `models.rewarded_soup`), sampled
    once per prompt and scored by the user's own utility, against the shared policy's
    samples."""
    root = Path(cfg.run_dir) / "soups" / f"seed{seed}"
    items = [(p, r) for p, a, b in pool for r in (a, b)]
    heads = [(f"head{k}", personal, k) for k in range(cfg.basis)] + [("shared", shared, 0)]
    policies = {}
    for name, learner, k in heads:
        rm = export_head(learner, k, root / name / "reward", tok, items)
        result = stages.train_ppo(stages.PPOStageConfig(
            run_dir=str(root / name / "ppo"), policy_dir=str(policy_dir), reward_dir=rm,
            seed=seed, steps=cfg.soup_steps, batch_size=16, eval_prompts=8,
            lora=models.LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o")),
            constraint=ppo.ConstraintConfig(cost="profanity", limit=cfg.soup_cost_limit),
            checkpoint=dataclasses.replace(stages.PPOStageConfig().checkpoint,
                                           save_every=cfg.soup_steps)))
        policies[name] = models.load_hf_checkpoint(result.export_dir)
    config = policies["head0"][0]
    prompts = [builtin.PROMPTS[i % len(builtin.PROMPTS)] for i in range(cfg.bon_prompts)]
    sampling = SamplingConfig(max_new_tokens=10)

    def sample(params):
        texts = TextSampler.from_params(config, params, tok, max_len=8, sampling=sampling)(
            prompts, jax.random.key(seed + 70))
        return [t or "." for t in texts]

    shared_texts = sample(policies["shared"][1])
    shared_g = judge_features(shared_texts)
    shared_flag = profanity_probabilities(shared_texts) > cfg.floor
    out = {}
    for i, user in enumerate(ids):
        own = user_pairs(np.random.default_rng([seed, 3, i]), 16)
        labels = users.label(user, own, np.random.default_rng([seed, 4, i]))
        mean, _ = fit_posterior(signed_differences(personal, own, labels), prior)
        lam = models.soup_weights(mean)
        _, soup = models.rewarded_soup(config, [policies[f"head{k}"][1]
                                                for k in range(cfg.basis)], lam)
        texts = sample(soup)
        truth = np.asarray(USERS[user])
        out[user] = {"weights": lam.tolist(),
                     "soup": {"gold": float((judge_features(texts) @ truth).mean()),
                              "profanity_rate": float((profanity_probabilities(texts)
                                                       > cfg.floor).mean())},
                     "shared": {"gold": float((shared_g @ truth).mean()),
                                "profanity_rate": float(shared_flag.mean())}}
    return out


def basis_rewards(learner, items) -> np.ndarray:
    """The basis heads' rewards [N, K'] of (prompt, response) items."""
    prm = reward.PersonalRewardModel(learner.config, learner.reward_params, learner.tok,
                                     (np.zeros(learner.cfg.ensemble),
                                      np.eye(learner.cfg.ensemble)),
                                     num_basis=learner.cfg.ensemble,
                                     max_prompt_len=learner.cfg.max_prompt_len,
                                     max_response_len=learner.cfg.max_response_len)
    out = []
    for s in range(0, len(items), 256):
        part = items[s:s + 256]
        out.append(prm.features([p for p, _ in part], [r for _, r in part]))
    return np.concatenate(out)


def best_of_n_per_user(cfg, policy_dir, seed, personal, shared, prior, users, ids) -> dict:
    """Best-of-n from the SFT policy for each user: the candidate their reward (k = 16 posterior)
    ranks first, the shared reward's first, and the first sample; each by the user's own gold
    (utility), with the profanity classifier's rate; and the personal choice under the safety
    floor (a flagged candidate only when every candidate is flagged)."""
    sampler = TextSampler(policy_dir, max_len=8, sampling=SamplingConfig(max_new_tokens=10))
    prompts = [builtin.PROMPTS[i % len(builtin.PROMPTS)] for i in range(cfg.bon_prompts)]
    flat = [p for p in prompts for _ in range(cfg.best_of)]
    samples = [s or "." for s in sampler(flat, jax.random.key(seed + 50))]
    n = cfg.best_of
    phi = basis_rewards(personal, list(zip(flat, samples))).reshape(len(prompts), n, -1)
    shared_r = basis_rewards(shared, list(zip(flat, samples)))[:, 0].reshape(len(prompts), n)
    profane = profanity_probabilities(samples).reshape(len(prompts), n)
    g = judge_features(samples).reshape(len(prompts), n, -1)
    out = {}
    for i, user in enumerate(ids):
        own = user_pairs(np.random.default_rng([seed, 3, i]), 16)
        labels = users.label(user, own, np.random.default_rng([seed, 4, i]))
        mean, _ = fit_posterior(signed_differences(personal, own, labels), prior)
        utility = g @ np.asarray(USERS[user])
        mine = phi @ mean
        floored = np.where(profane > cfg.floor, -np.inf, mine)
        floored = np.where(np.isinf(floored).all(1, keepdims=True), mine, floored)
        picks = {"base": np.zeros(len(prompts), int), "shared": shared_r.argmax(1),
                 "personal": mine.argmax(1), "personal + floor": floored.argmax(1)}
        rows = np.arange(len(prompts))
        out[user] = {name: {"gold": float(utility[rows, c].mean()),
                            "profanity_rate": float((profane[rows, c] > cfg.floor).mean())}
                     for name, c in picks.items()}
    return out


def soup_violation(row: dict, n: int) -> bool:
    """Whether a user's soup is flagged more often than the shared policy by more than twice
    the standard error of the difference of two rates over n samples each."""
    p, q = row["soup"]["profanity_rate"], row["shared"]["profanity_rate"]
    se = np.sqrt((p * (1 - p) + q * (1 - q)) / n)
    return bool(p - q > max(2 * se, 0.0) and p > q)


def soup_report_lines(cfg, runs, seeds, ids, over) -> list[str]:
    """The report's rewarded-soups table (none when soups are off)."""
    if not cfg.soups:
        return []
    lines = [f"Rewarded soups: one LoRA policy per basis head and one for the shared reward, "
             f"each {cfg.soup_steps} PPO iterations from the SFT policy against that head "
             "(normalised on the pool's responses) under the operator's constraint (mean "
             f"profanity probability at most {cfg.soup_cost_limit}, `ppo.constraint`); each "
             "user's soup mixes the heads' policies by their k = 16 weights (negative weights "
             "get no share), one sample per prompt, scored by the user's own utility. A soup "
             "flagged more often than the shared policy by more than twice the standard error "
             "of the difference counts as a floor violation:", "",
             "| user | soup weights (seed 0) | soup: gold | shared policy: gold | soup: profane "
             "| shared policy: profane |", "|---|---|---|---|---|---|"]
    for u in ids:
        s = [over(lambda r, n=n: r["soups"][u][n]["gold"]) for n in ("soup", "shared")]
        p = [over(lambda r, n=n: r["soups"][u][n]["profanity_rate"]) for n in ("soup", "shared")]
        w = ", ".join(f"{x:.2f}" for x in runs[seeds[0]]["soups"][u]["weights"])
        lines.append(f"| {u} | {w} | {s[0][0]:.3f} ± {s[0][1]:.3f} | {s[1][0]:.3f} ± "
                     f"{s[1][1]:.3f} | {p[0][0]:.3f} | {p[1][0]:.3f} |")
    gain = over(lambda r: float(np.mean([r["soups"][u]["soup"]["gold"] -
                                         r["soups"][u]["shared"]["gold"] for u in ids])))
    verdict = ("the soups beat the shared policy" if gain[0] > 2 * gain[1] else
               "the soups do worse than the shared policy" if gain[0] < -2 * gain[1] else
               "the soups do not beat the shared policy here (the difference is within two "
               "standard errors)")
    flagged = over(lambda r: float(np.mean([r["soups"][u]["shared"]["profanity_rate"]
                                            for u in ids])))
    note = (f" The policies did not reach the constraint in {cfg.soup_steps} iterations: the "
            f"shared policy's samples are flagged {flagged[0]:.2f} of the time (a flag is "
            f"P > {cfg.floor}; the limit is a mean probability of {cfg.soup_cost_limit})."
            if flagged[0] > cfg.soup_cost_limit else "")
    return lines + ["", f"Mean over users, soup minus shared policy in the user's own utility: "
                        f"{gain[0]:+.3f} ± {gain[1]:.3f}: {verdict}.{note}", ""]
