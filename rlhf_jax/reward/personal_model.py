"""`PersonalRewardModel`: a personalised reward (`reward.personal`) as a small service. The basis
(a reward model with K' heads) is frozen; each user is a Laplace posterior over their weights,
updated after each of their comparisons, and the state is saved and restored with Orbax."""
from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rlhf_jax.data.conversation import prompt_from_text
from rlhf_jax.data.preference import PAD, tokenize_record
from rlhf_jax.reward.personal import expected_information, laplace_posterior
from rlhf_jax.reward.scoring import reward_model_scorer

_MIN_ROWS = 8  # comparisons are padded to a power of two >= this: few compiled shapes


@partial(jax.jit, static_argnums=0)
def _members(scorer, *seq):
    """Every basis head's reward [B, K'], compiled once per basis model and shape (shared by
    every `PersonalRewardModel` of that model)."""
    return scorer.members(*seq)


def _bucket(n: int) -> int:
    return max(_MIN_ROWS, 1 << max(n - 1, 0).bit_length())


def fit_posterior(d, prior: tuple, init=None) -> tuple[np.ndarray, np.ndarray]:
    """The Laplace posterior (mean, cov) of a user's weights from comparisons' feature
    differences `d` [k, K'] (k may be 0: the prior) and the prior (μ₀, Σ₀), from `init` (default
    μ₀): `reward.personal.laplace_posterior` on rows padded to a power of two, so that few
    shapes compile."""
    mean0 = np.asarray(prior[0], np.float32)
    d = np.asarray(d, np.float32).reshape(-1, len(mean0))
    size = _bucket(len(d))
    padded = np.zeros((size, len(mean0)), np.float32)
    padded[:len(d)] = d
    valid = (np.arange(size) < len(d)).astype(np.float32)
    mean, cov = laplace_posterior(padded, valid, jnp.asarray(mean0), jnp.asarray(prior[1]),
                                  jnp.asarray(mean0 if init is None else init))
    return np.asarray(mean), np.asarray(cov)


class PersonalRewardModel:
    """r_u(x, y) = w_u · φ(x, y) for every user u: `update(user, comparison)` after each of
    their labels, `score(user, prompts, responses)`, `weights(user)` (posterior mean and
    covariance; the population prior for a user never seen), `choose(user, candidates)` (the
    comparison to ask next), `save(dir)` / `restore(dir)`.

    `config`, `params`: the basis, a reward model with K' heads (`num_basis`); `prior`: the
    population prior (μ₀, Σ₀) (`reward.personal.population_prior`); texts are cut to
    `max_prompt_len` / `max_response_len` tokens as the reward stage cuts them."""

    def __init__(self, config, params, tokenizer, prior: tuple, *, num_basis: int,
                 max_prompt_len: int = 8, max_response_len: int = 10):
        self.config, self.params, self.tok = config, params, tokenizer
        self.num_basis = num_basis
        self.prior = tuple(np.asarray(x, np.float32) for x in prior)
        if self.prior[0].shape != (num_basis,) or self.prior[1].shape != (num_basis,) * 2:
            raise ValueError(f"prior: expected a mean [{num_basis}] and a covariance "
                             f"[{num_basis}, {num_basis}], got {self.prior[0].shape} and "
                             f"{self.prior[1].shape}")
        self.max_prompt_len, self.max_response_len = max_prompt_len, max_response_len
        self._scorer = reward_model_scorer(config, num_outputs=num_basis)
        # user -> {"d": [k, K'] comparisons, "label": [k] the app's label id of each (−1: none),
        # "mean", "cov"}
        self.users: dict[str, dict] = {}
        self.updates = 0
        self._lock = threading.Lock()

    # features ----------------------------------------------------------------------------
    def features(self, prompts: Sequence, responses: Sequence) -> np.ndarray:
        """φ(x, y) [N, K'] of each prompt with its response (plain text or messages)."""
        if len(prompts) == 0:
            return np.zeros((0, self.num_basis), np.float32)
        counts = {"prompts_truncated": 0, "responses_truncated": 0}
        rows = [tokenize_record({"prompt": p, "responses": [r]}, self.tok, self.max_prompt_len,
                                self.max_response_len, self.tok.eos_token_id, counts)
                for p, r in zip(prompts, responses, strict=True)]
        n = len(rows)
        size = _bucket(n)
        prompt = np.full((size, self.max_prompt_len), PAD, np.int32)
        response = np.full((size, self.max_response_len), PAD, np.int32)
        for i, (p, r) in enumerate(rows + [rows[0]] * (size - n)):
            prompt[i], response[i] = p, r[0]
        pad_id = self.tok.pad_token_id or 0
        out = _members(self._scorer, self.params, np.where(prompt == PAD, pad_id, prompt),
                            (prompt != PAD).astype(np.int32),
                            np.where(response == PAD, pad_id, response),
                            (response != PAD).astype(np.int32))
        return np.asarray(out)[:n]

    # users -------------------------------------------------------------------------------
    def weights(self, user: str) -> tuple[np.ndarray, np.ndarray]:
        """The posterior mean [K'] and covariance [K', K'] of `user`'s weights; the population
        prior for a user with no comparisons."""
        state = self.users.get(user)
        return (self.prior[0].copy(), self.prior[1].copy()) if state is None else \
            (state["mean"].copy(), state["cov"].copy())

    def update(self, user: str, comparison: dict) -> tuple[np.ndarray, np.ndarray]:
        """Add one comparison {"prompt", "chosen", "rejected"} of `user` and refit their
        posterior from its last mean (the basis stays frozen). Returns `weights(user)`."""
        for key in ("prompt", "chosen", "rejected"):
            if key not in comparison:
                raise KeyError(f"comparison: missing field {key!r} (expected prompt, chosen, "
                               "rejected)")
        phi = self.features([comparison["prompt"]] * 2,
                            [comparison["chosen"], comparison["rejected"]])
        return self.add_differences(user, phi[:1] - phi[1:])

    def add_label(self, label) -> tuple[np.ndarray, np.ndarray]:
        """Add a label of the labelling app (`labelling.Label`: its annotator is the user; every
        pair of responses it ranks apart is a comparison) and refit that user's posterior once;
        a label seen before (edited in the app) replaces its earlier comparisons. Pass it as the
        app's `on_label` (`labelling.create_app(store, on_label=prm.add_label)`), which calls it
        after each new or edited label."""
        prompt = prompt_from_text(label.task.prompt)
        responses = [r if isinstance(prompt, str) or isinstance(r, list)
                     else [{"role": "assistant", "content": r}] for r in label.task.responses]
        pairs = [(i, j) for i in range(len(responses)) for j in range(len(responses))
                 if label.ranks[i] < label.ranks[j]]
        d = np.zeros((0, self.num_basis), np.float32)
        if pairs:  # all tied: no preference to learn from
            phi = self.features([prompt] * len(responses), responses)
            d = np.stack([phi[i] - phi[j] for i, j in pairs])
        return self.add_differences(label.annotator_id, d, label_id=int(label.id))

    def add_differences(self, user: str, d_nk, label_id: int = -1) \
            -> tuple[np.ndarray, np.ndarray]:
        """Add comparisons as feature differences φ(chosen) − φ(rejected) [n, K'] and refit;
        with a `label_id` (≥ 0) they replace the comparisons that label gave before."""
        d_nk = np.asarray(d_nk, np.float32).reshape(-1, self.num_basis)
        with self._lock:  # the app calls this from its worker threads
            state = self.users.get(user) or {
                "d": np.zeros((0, self.num_basis), np.float32),
                "label": np.zeros(0, np.int64), "mean": self.prior[0]}
            keep = (state["label"] != label_id) if label_id >= 0 else \
                np.ones(len(state["d"]), bool)
            d = np.concatenate([state["d"][keep], d_nk])
            labels = np.concatenate([state["label"][keep],
                                     np.full(len(d_nk), label_id, np.int64)])
            # a replaced label removes data: refit from the prior's mean, not the last mode
            init = state["mean"] if keep.all() else self.prior[0]
            if len(d):
                mean, cov = self._fit(d, init)
                self.users[user] = {"d": d, "label": labels, "mean": mean, "cov": cov}
            else:
                self.users.pop(user, None)  # no comparison left: the prior again
            self.updates += 1
        return self.weights(user)

    def _fit(self, d: np.ndarray, init) -> tuple[np.ndarray, np.ndarray]:
        return fit_posterior(d, self.prior, init)

    def score(self, user: str, prompts: Sequence, responses: Sequence) -> np.ndarray:
        """r_u = E[w_u] · φ(x, y) [N] under `user`'s posterior (the prior's mean if unseen)."""
        return self.features(prompts, responses) @ self.weights(user)[0]

    def choose(self, user: str, candidates: Sequence[tuple]) -> tuple[int, np.ndarray]:
        """The candidate (prompt, response a, response b) whose label is expected to tell most
        about `user`'s weights (`reward.personal.expected_information`): (its index, every
        candidate's value)."""
        prompts = [c[0] for c in candidates]
        phi_a = self.features(prompts, [c[1] for c in candidates])
        phi_b = self.features(prompts, [c[2] for c in candidates])
        mean, cov = self.weights(user)
        info = np.asarray(expected_information(jnp.asarray(mean), jnp.asarray(cov),
                                               jnp.asarray(phi_a - phi_b)))
        return int(np.argmax(info)), info

    # state ---------------------------------------------------------------------------------
    def save(self, directory) -> int:
        """Write the prior and every user's comparisons (with their label ids) and posterior
        with Orbax, as the step after the newest one in `directory` (the two newest are kept:
        a crash mid-save leaves the last one). Returns the step written."""
        names = sorted(self.users)
        k = self.num_basis

        def stacked(key, empty):
            return np.concatenate([self.users[u][key] for u in names]) if names else empty

        state = {"prior_mean": self.prior[0], "prior_cov": self.prior[1],
                 "d": stacked("d", np.zeros((0, k), np.float32)),
                 "label": stacked("label", np.zeros(0, np.int64)),
                 "owner": np.concatenate([np.full(len(self.users[u]["d"]), i, np.int32)
                                          for i, u in enumerate(names)]) if names
                 else np.zeros(0, np.int32),
                 "means": np.stack([self.users[u]["mean"] for u in names]) if names
                 else np.zeros((0, k), np.float32),
                 "covs": np.stack([self.users[u]["cov"] for u in names]) if names
                 else np.zeros((0, k, k), np.float32)}
        with _manager(directory) as manager:
            step = max(manager.all_steps(), default=0) + 1  # never an existing step
            manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                users=ocp.args.JsonSave({"names": names, "num_basis": k,
                                         "updates": self.updates})), force=True)
            manager.wait_until_finished()
        return step

    def restore(self, directory, step: Optional[int] = None) -> int:
        """Load the state `save` wrote (its newest step unless `step`); returns the step."""
        with _manager(directory) as manager:
            steps = manager.all_steps()
            if not steps:
                raise FileNotFoundError(f"{directory}: no saved personal-reward state")
            step = max(steps) if step is None else step
            out = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), users=ocp.args.JsonRestore()))
        meta, state = out["users"], {k: np.asarray(v) for k, v in out["state"].items()}
        if meta["num_basis"] != self.num_basis:
            raise ValueError(f"{directory}: saved for {meta['num_basis']} basis rewards, this "
                             f"model has {self.num_basis}")
        self.prior = (state["prior_mean"], state["prior_cov"])
        self.users = {u: {"d": state["d"][state["owner"] == i],
                          "label": state["label"][state["owner"] == i],
                          "mean": state["means"][i], "cov": state["covs"][i]}
                      for i, u in enumerate(meta["names"])}
        self.updates = int(meta["updates"])
        return step


def _manager(directory):
    return ocp.CheckpointManager(Path(directory).absolute(), item_names=("state", "users"),
                                 options=ocp.CheckpointManagerOptions(
                                     max_to_keep=2, create=True,
                                     enable_async_checkpointing=False))

