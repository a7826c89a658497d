"""One online update of a user's personalised reward (`reward.PersonalRewardModel.update`): the
frozen basis scores the new comparison's two responses, and the user's Laplace posterior is
refitted on all their comparisons so far (k = 1 … 64), with the default model (the tiny-llama
preset, 4 basis heads, the built-in tokenizer and lengths).

The peer, in the same run: the same posterior by SciPy (BFGS for the mode in float64, the
Hessian by hand) on the same feature differences, plus our same forward pass for the
features. Last line: `personal_update: ratio=<peer ms ÷ ours ms (p50)> update_ms=<p50> …`;
the target is update_ms ≤ 100 on 2 CPU cores for k ≤ 64.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import scipy.optimize

from _common import report
from rlhf_jax import models, reward
from rlhf_jax.studies.common import study_tokenizer
from rlhf_jax.studies.users import SimulatedUsers, user_pairs


def scipy_posterior(d, mu0, cov0):
    """The reference fit: BFGS mode of the log posterior and the inverse Hessian there."""
    p0 = np.linalg.inv(cov0)

    def f(w):
        return np.sum(np.logaddexp(0, -(d @ w))) + 0.5 * (w - mu0) @ p0 @ (w - mu0)

    w = scipy.optimize.minimize(f, mu0, method="BFGS").x
    p = 1 / (1 + np.exp(-(d @ w)))
    return w, np.linalg.inv((d * (p * (1 - p))[:, None]).T @ d + p0)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--comparisons", type=int, default=64)
    parser.add_argument("--basis", type=int, default=4)
    args = parser.parse_args()
    tok = study_tokenizer(Path(tempfile.mkdtemp()))
    cfg = models.preset("tiny-llama", vocab_size=len(tok))
    model = models.DecoderModel(cfg, heads=("reward",), num_reward_outputs=args.basis)
    params = models.init_params(model, jax.random.key(0))
    k = args.basis
    prm = reward.PersonalRewardModel(cfg, params, tok, (np.zeros(k), np.eye(k)), num_basis=k)
    users = SimulatedUsers()
    pairs = user_pairs(np.random.default_rng(0), args.comparisons)
    labels = users.label("positive", pairs, np.random.default_rng(1))
    comparisons = [{"prompt": p, "chosen": a if r["ranks"] == [0, 1] else b,
                    "rejected": b if r["ranks"] == [0, 1] else a}
                   for (p, a, b), r in zip(pairs, labels)]
    # warm-up: compile every padded shape once (a server compiles them at start)
    warm = reward.PersonalRewardModel(cfg, params, tok, (np.zeros(k), np.eye(k)), num_basis=k)
    for c in comparisons:
        warm.update("warm", c)
    ours, peer = [], []
    for c in comparisons:
        t = time.perf_counter()
        prm.update("u", c)
        ours.append(time.perf_counter() - t)
        d = prm.users["u"]["d"].astype(np.float64)
        t = time.perf_counter()
        phi = prm.features([c["prompt"]] * 2, [c["chosen"], c["rejected"]])  # same forward
        scipy_posterior(np.concatenate([d[:-1], phi[:1] - phi[1:]]), np.zeros(k), np.eye(k))
        peer.append(time.perf_counter() - t)
    ms, peer_ms = 1e3 * statistics.median(ours), 1e3 * statistics.median(peer)
    worst = 1e3 * max(ours)
    mean, _ = prm.weights("u")
    print(f"{args.comparisons} updates of one user, {k} basis heads: p50 {ms:.2f} ms, max "
          f"{worst:.2f} ms (ours); SciPy posterior + the same forward: p50 {peer_ms:.2f} ms")
    print(f"posterior mean after {args.comparisons}: {np.round(mean, 3).tolist()}")
    report("personal_update", peer_ms / ms, device=jax.devices()[0].platform, dtype="float32",
           update_ms=ms, max_ms=worst, peer_ms=peer_ms, k=args.comparisons, basis=k)


if __name__ == "__main__":
    main()
