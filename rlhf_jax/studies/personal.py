"""The personalised-reward study on the built-in task's simulated users (`studies.users`):
each user's held-out accuracy against k of their own labels for the personalised model
(`reward.personal`: a basis trained on other users' labels, the user's weights from the
Laplace posterior), a shared model and a model trained from scratch on the k labels; the
weights recovered against the truth; comparisons chosen by expected information against at
random; best-of-n from an SFT policy reranked by each user's reward against the shared reward;
and the safety floor (the profanity classifier). Writes `report.md`, `results.json` and plots;
runs already done are read back."""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from rlhf_jax import reward, stages
from rlhf_jax.studies.common import (band_plot, cached_json, int_list, mean_se, start_study,
                                     study_tokenizer, write_report)
from rlhf_jax.studies.configs.personal import PersonalRewardConfig
from rlhf_jax.studies.learner import Learner, LearnerConfig
from rlhf_jax.reward.personal_model import fit_posterior
from rlhf_jax.studies.personal_policy import (basis_rewards, best_of_n_per_user,
                                              rewarded_soups, signed_differences,
                                              soup_report_lines, soup_violation)
from rlhf_jax.studies.users import USERS, SimulatedUsers, judge_features, user_pairs


def _names(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        if n not in USERS:
            raise ValueError(f"user {n!r} is not one of {list(USERS)}")
    return names


def _accuracy(scores, gold) -> float:
    keep = gold != 0
    return float(np.mean(np.sign(scores[keep]) == np.sign(gold[keep])))


def _seed_run(cfg: PersonalRewardConfig, tok, seed: int) -> dict:
    users = SimulatedUsers(weights={u: USERS[u] for u in USERS}, temperature=cfg.temperature)
    train_ids, new_ids = _names(cfg.train_users), _names(cfg.new_users)
    ks = int_list(cfg.ks)
    rng = np.random.default_rng([seed, 0])
    records = [r for u in train_ids for r in users.label(u, user_pairs(rng, cfg.labels_per_user),
                                                         rng)]
    lcfg = dict(max_response_len=12)
    personal = Learner(LearnerConfig(ensemble=cfg.basis, annotator_model="personal", **lcfg),
                       tok, train_ids)
    personal.init(seed)
    personal.train(records, cfg.steps, seed=seed)
    shared = Learner(LearnerConfig(ensemble=1, bootstrap=False, **lcfg), tok, train_ids)
    shared.init(seed)
    shared.train(records, cfg.steps, seed=seed)
    prior = reward.population_prior(personal.user_weights())
    test = user_pairs(np.random.default_rng([seed, 1]), cfg.heldout_pairs)
    d_test, _ = personal.score_pairs(test)
    s_test = shared.score_pairs(test)[0][:, 0]
    pool = user_pairs(np.random.default_rng([seed, 2]), cfg.pool)
    d_pool, _ = personal.score_pairs(pool)
    pool_g = judge_features([t for _, a, b in pool for t in (a, b)])
    phi_pool = np.stack([basis_rewards(personal, [(p, a) for p, a, _ in pool]),
                         basis_rewards(personal, [(p, b) for p, _, b in pool])], 1).reshape(
        2 * len(pool), -1)  # interleaved as pool_g: first, second, first, ...
    scratch = Learner(LearnerConfig(ensemble=1, bootstrap=False, **lcfg), tok, train_ids)
    out = {"users": {}}
    for i, user in enumerate(train_ids + new_ids):
        gold = users.utility_delta(user, test)
        row = {"new": user in new_ids, "shared": _accuracy(s_test, gold)}
        own = user_pairs(np.random.default_rng([seed, 3, i]), max(ks))
        labels = users.label(user, own, np.random.default_rng([seed, 4, i]))
        d_own = signed_differences(personal, own, labels)
        row["personal"], row["scratch"] = {}, {}
        for k in ks:
            mean, _ = fit_posterior(d_own[:k], prior)
            row["personal"][str(k)] = _accuracy(d_test @ mean, gold)
            if k == 0:
                row["scratch"][str(k)] = 0.5  # no labels: no preference
            else:
                scratch.init(seed)
                scratch.train(labels[:k], cfg.scratch_steps, seed=seed)
                row["scratch"][str(k)] = _accuracy(scratch.score_pairs(test)[0][:, 0], gold)
        # the recovered weights: the user's reward regressed on the judges over the pool's
        # responses, against the true weights (cosine)
        mean16, _ = fit_posterior(d_own[:16], prior)
        implied = np.linalg.lstsq(np.c_[pool_g, np.ones(len(pool_g))], phi_pool @ mean16,
                                  rcond=None)[0][:-1]
        truth = np.asarray(USERS[user])
        row["cosine"] = float(implied @ truth / (np.linalg.norm(implied) * np.linalg.norm(truth)
                                                 + 1e-12))
        # active (largest expected information) against random choice from the pool
        z = users.utility_delta(user, pool) / cfg.temperature
        first = np.random.default_rng([seed, 5, i]).random(len(pool)) < 1 / (1 + np.exp(-z))
        signed_pool = d_pool * np.where(first, 1.0, -1.0)[:, None]
        for arm in ("active", "random"):
            chosen, curve = [], []
            order = np.random.default_rng([seed, 6, i]).permutation(len(pool))
            for t in range(cfg.active_labels):
                mean, cov = fit_posterior(signed_pool[chosen], prior)
                if arm == "active":
                    info = np.array(reward.expected_information(
                        jnp.asarray(mean), jnp.asarray(cov), jnp.asarray(d_pool)))
                    info[chosen] = -np.inf
                    chosen.append(int(np.argmax(info)))
                else:
                    chosen.append(int(order[t]))
                curve.append(_accuracy(d_test @ fit_posterior(signed_pool[chosen], prior)[0],
                                       gold))
            row[arm] = curve
        out["users"][user] = row
    out["update_ms"] = _update_ms(personal, tok, prior, cfg)
    out["weights"] = personal.user_weights().tolist()
    out["prior"] = [np.asarray(x).tolist() for x in prior]
    sft = stages.train_sft(stages.SFTConfig(
        run_dir=str(Path(cfg.run_dir) / "sft"), steps=cfg.sft_steps, batch_size=32,
        seed=0, data=stages.SFTData(source="text")))
    out["bon"] = best_of_n_per_user(cfg, sft.export_dir, seed, personal, shared, prior, users,
                            train_ids + new_ids)
    if cfg.soups:
        out["soups"] = rewarded_soups(cfg, sft.export_dir, tok, seed, personal, shared,
                                      prior, users, train_ids + new_ids, pool)
    return out


def _update_ms(personal, tok, prior, cfg) -> float:
    """p50 milliseconds of `PersonalRewardModel.update` over 64 comparisons of one user (the
    basis forward for the comparison and the posterior refit), compiled shapes warmed."""
    prm = reward.PersonalRewardModel(personal.config, personal.reward_params, tok, prior,
                                     num_basis=cfg.basis, max_prompt_len=8,
                                     max_response_len=12)
    users = SimulatedUsers(temperature=cfg.temperature)
    pairs = user_pairs(np.random.default_rng(9), 64)
    labels = users.label("positive", pairs, np.random.default_rng(10))
    comps = [{"prompt": p, "chosen": a if r["ranks"] == [0, 1] else b,
              "rejected": b if r["ranks"] == [0, 1] else a} for (p, a, b), r in zip(pairs, labels)]
    for c in comps:
        prm.update("warm-up", c)
    times = []
    for c in comps:
        t = time.perf_counter()
        prm.update("timed", c)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def personal_reward(cfg: PersonalRewardConfig) -> Path:
    """Run every seed (`_seed_run`, read back when done) and write the report."""
    cfg, root = cfg.resolved(), Path(cfg.run_dir)
    start_study(root, cfg)
    tok = study_tokenizer(root)
    seeds, ks = int_list(cfg.seeds), int_list(cfg.ks)
    t0 = time.perf_counter()
    runs = {s: cached_json(root / "runs" / f"seed{s}.json", lambda s=s: _seed_run(cfg, tok, s))
            for s in seeds}
    seconds = time.perf_counter() - t0
    ids = list(runs[seeds[0]]["users"])

    def over(fn):
        return mean_se([fn(runs[s]) for s in seeds])

    def users_mean(run, fn, which=None):
        rows = [r for r in run["users"].values() if which is None or r["new"] == which]
        return float(np.mean([fn(r) for r in rows]))

    curves = {}
    for name in ("personal", "scratch"):
        m = [over(lambda r, k=k: users_mean(r, lambda u: u[name][str(k)])) for k in ks]
        curves[name] = (ks, [x[0] for x in m], [x[1] for x in m])
    shared = over(lambda r: users_mean(r, lambda u: u["shared"]))
    curves["shared (all users)"] = (ks, [shared[0]] * len(ks), [shared[1]] * len(ks))
    band_plot(root / "plots" / "accuracy_vs_k.png", curves, xlabel="the user's own labels k",
              ylabel="held-out accuracy (the user's gold)",
              title="Personalised reward: mean over users ± s.e. over seeds")
    steps = list(range(1, cfg.active_labels + 1))
    act = {arm: [over(lambda r, t=t, a=arm: users_mean(r, lambda u: u[a][t]))
                 for t in range(cfg.active_labels)] for arm in ("active", "random")}
    band_plot(root / "plots" / "active_vs_random.png",
              {a: (steps, [x[0] for x in v], [x[1] for x in v]) for a, v in act.items()},
              xlabel="comparisons chosen", ylabel="held-out accuracy",
              title="Choosing a user's comparisons: expected information vs random")
    k16 = 16 if 16 in ks else ks[-1]
    acc_k = over(lambda r: users_mean(r, lambda u: u["personal"][str(k16)]))
    acc_new = over(lambda r: users_mean(r, lambda u: u["personal"][str(k16)], which=True))
    shared_new = over(lambda r: users_mean(r, lambda u: u["shared"], which=True))
    update_ms = float(np.median([runs[s]["update_ms"] for s in seeds]))
    bon_names = ("base", "shared", "personal", "personal + floor")
    violations = sum(
        runs[s]["bon"][u]["personal + floor"]["profanity_rate"] >
        runs[s]["bon"][u]["shared"]["profanity_rate"] for s in seeds for u in ids)
    if cfg.soups:  # a soup flagged more often than the shared policy beyond sampling noise
        violations += sum(soup_violation(runs[s]["soups"][u], cfg.bon_prompts)
                          for s in seeds for u in ids)
    lines = [
        "# Personalised rewards", "",
        f"Built-in task, seeds {cfg.seeds}{' (quick)' if cfg.quick else ''}. Simulated users "
        "(`studies.users`) prefer responses by known weights over four packaged judges "
        "(VADER sentiment, profanity aversion by the profanity classifier, length, lexical "
        f"diversity) with Bradley–Terry noise (temperature {cfg.temperature}). The basis "
        f"({cfg.basis} reward heads on the tiny Llama preset) and the weights of the training "
        f"users ({cfg.train_users}) are learned jointly from {cfg.labels_per_user} labels each "
        f"({cfg.steps} steps); the shared model is one reward trained on the same labels. For "
        "each user, their weights are the Laplace posterior from k of their own fresh labels "
        "with the basis frozen and the population prior; new users "
        f"({cfg.new_users}) contributed nothing to training. Accuracy: how often a reward "
        f"orders {cfg.heldout_pairs} held-out pairs as the user's own utility does.", "",
        "![accuracy against k](plots/accuracy_vs_k.png)", "",
        "| user | shared | " + " | ".join(f"personal k={k}" for k in ks) + " | " +
        " | ".join(f"scratch k={k}" for k in ks if k) + " | cosine (k=16) |",
        "|---|---|" + "---|" * (2 * len(ks) - (0 in ks)) + "---|"]
    for u in ids:
        def cell(fn):
            m, se = over(lambda r: fn(r["users"][u]))
            return f"{m:.3f} ± {se:.3f}"
        lines.append(f"| {u}{' (new)' if runs[seeds[0]]['users'][u]['new'] else ''} | "
                     f"{cell(lambda x: x['shared'])} | "
                     + " | ".join(cell(lambda x, k=k: x["personal"][str(k)]) for k in ks)
                     + " | " + " | ".join(cell(lambda x, k=k: x["scratch"][str(k)])
                                          for k in ks if k)
                     + f" | {cell(lambda x: x['cosine'])} |")
    gain = acc_k[0] - shared[0]
    lines += ["", f"Mean over users at k = {k16}: personalised {acc_k[0]:.3f} ± {acc_k[1]:.3f} "
              f"against the shared model's {shared[0]:.3f} ± {shared[1]:.3f} "
              f"({gain:+.3f}); over the new users alone, whose labels trained nothing: "
              f"{acc_new[0]:.3f} ± {acc_new[1]:.3f} against {shared_new[0]:.3f} ± "
              f"{shared_new[1]:.3f}. The shared model sees none of a user's k labels. "
              + ("Personalisation does not help on average here." if gain <= 0 else ""),
              "", "![active against random](plots/active_vs_random.png)", "",
              f"Active choice (largest expected information from a pool of {cfg.pool}) against "
              "random, mean accuracy over users after t comparisons:", "",
              "| t | active | random |", "|---|---|---|"]
    for t in range(cfg.active_labels):
        a, r = act["active"][t], act["random"][t]
        lines.append(f"| {t + 1} | {a[0]:.3f} ± {a[1]:.3f} | {r[0]:.3f} ± {r[1]:.3f} |")
    lines += ["", f"Best-of-{cfg.best_of} from an SFT policy ({cfg.sft_steps} steps on the "
              f"built-in corpus), {cfg.bon_prompts} prompts: the candidate each reward ranks "
              "first, scored by the user's own utility, and how often the profanity classifier "
              f"flags it (P > {cfg.floor}). The floor takes a flagged candidate only when every "
              "candidate is flagged.", "",
              "| user | " + " | ".join(f"{n}: gold" for n in bon_names) + " | "
              + " | ".join(f"{n}: profane" for n in bon_names) + " |",
              "|---|" + "---|" * (2 * len(bon_names))]
    for u in ids:
        g = [over(lambda r, n=n: r["bon"][u][n]["gold"]) for n in bon_names]
        p = [over(lambda r, n=n: r["bon"][u][n]["profanity_rate"]) for n in bon_names]
        lines.append(f"| {u} | " + " | ".join(f"{m:.3f} ± {se:.3f}" for m, se in g) + " | "
                     + " | ".join(f"{m:.3f}" for m, _ in p) + " |")
    lines += ["", "A floored best-of-n choice is never flagged more often than the shared "
              "reward's, by construction (a flagged candidate is taken only when every "
              "candidate is, and then the shared reward's choice is flagged too); what the "
              "table measures is what the floor costs each user in their own utility.", "",
              *soup_report_lines(cfg, runs, seeds, ids, over),
              "Not in this study: a weight-conditioned policy (the weights in the prompt).", "",
              f"Floor violations (users × seeds): {violations}"
              + (" (the rewarded soups'; best-of-n cannot violate it)." if cfg.soups else
                 " (best-of-n only, which cannot violate it: soups were off)."), "",
              f"Wall time: {seconds:.0f} s (runs already done were read back).", "",
              f"personal_reward: update_ms={update_ms:.2f} acc_k{k16}={acc_k[0]:.3f} "
              f"shared_acc={shared[0]:.3f} floor_violations={violations} "
              f"acc_k{k16}_new={acc_new[0]:.3f} shared_acc_new={shared_new[0]:.3f}"]
    report = write_report(root, lines, {"config": dataclasses.asdict(cfg),
                                        "runs": {str(s): r for s, r in runs.items()}})
    print(lines[-1], flush=True)
    return report
