"""Personalised rewards r_u = w_u · φ: the Laplace posterior equals a float64 optimiser's mode
and Hessian, the predictive probability and expected information equal their definitions, the
joint loss equals its formula, and the service updates, scores, chooses, saves and restores —
on a tokenizer with a chat template and conversational prompts as well as plain text."""
import numpy as np
import pytest
import scipy.optimize

import jax
import jax.numpy as jnp

from rlhf_jax import data, models, reward
from rlhf_jax.data import PreferenceBatch
from rlhf_jax.reward.personal import (expected_information, laplace_posterior,
                                      make_personal_reward_loss, population_prior,
                                      predictive_probability)
from tests.chat_tokenizers import chat_tokenizer


def _data(seed=0, n=40, k=4):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=k) * 1.5
    f = rng.normal(size=(n, k))
    first = rng.random(n) < 1 / (1 + np.exp(-f @ w_true))
    return np.where(first[:, None], f, -f), w_true  # chosen − rejected


def _reference(d, mu0, cov0):
    """The MAP and the inverse Hessian there, in float64 by BFGS and by hand."""
    p0 = np.linalg.inv(cov0)

    def f(w):
        z = d @ w
        return np.sum(np.logaddexp(0, -z)) + 0.5 * (w - mu0) @ p0 @ (w - mu0)

    w = scipy.optimize.minimize(f, mu0, method="BFGS", options={"gtol": 1e-12}).x
    p = 1 / (1 + np.exp(-d @ w))
    h = (d * (p * (1 - p))[:, None]).T @ d + p0
    return w, np.linalg.inv(h)


def test_laplace_posterior_equals_a_float64_optimiser():
    d, _ = _data()
    mu0 = np.array([0.5, -0.2, 0.0, 0.3])
    cov0 = np.array([[1.0, 0.3, 0, 0], [0.3, 2.0, 0, 0], [0, 0, 0.5, 0.1], [0, 0, 0.1, 1.0]])
    want_mean, want_cov = _reference(d, mu0, cov0)
    # padding rows (valid 0) are ignored, whatever they hold
    padded = np.concatenate([d, np.full((24, 4), 7.0)])
    valid = np.r_[np.ones(len(d)), np.zeros(24)]
    mean, cov = laplace_posterior(padded, valid, jnp.asarray(mu0, jnp.float32),
                                  jnp.asarray(cov0, jnp.float32))
    # float32 Newton against a float64 optimum: the gradient there is ~1e-6 relative
    np.testing.assert_allclose(np.asarray(mean), want_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(cov), want_cov, rtol=1e-4, atol=1e-6)
    # no data: the prior itself
    mean0, c0 = laplace_posterior(padded, np.zeros(len(padded)), jnp.asarray(mu0, jnp.float32),
                                  jnp.asarray(cov0, jnp.float32))
    np.testing.assert_allclose(np.asarray(mean0), mu0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(c0), cov0, rtol=1e-5, atol=1e-6)


def test_separable_comparisons_with_a_weak_prior_converge():
    """Every label agrees with w·d > 0: the likelihood alone has no mode, and an undamped
    Newton step from far away overshoots; the prior's mode is still found."""
    rng = np.random.default_rng(1)
    f = rng.normal(size=(12, 3))
    d = f * np.sign(f @ np.array([1.0, -1.0, 0.5]))[:, None]
    cov0 = np.eye(3) * 100.0
    want, _ = _reference(d, np.zeros(3), cov0)
    mean, _ = laplace_posterior(d, np.ones(12), jnp.zeros(3), jnp.asarray(cov0, jnp.float32),
                                init=jnp.asarray([-20.0, 20.0, -20.0]))
    np.testing.assert_allclose(np.asarray(mean), want, rtol=1e-3)


def test_predictive_probability_and_information_equal_their_definitions():
    rng = np.random.default_rng(2)
    mean = np.array([0.8, -0.5, 0.2], np.float32)
    a = rng.normal(size=(3, 3))
    cov = (a @ a.T / 3 + 0.1 * np.eye(3)).astype(np.float32)
    cand = rng.normal(size=(6, 3)).astype(np.float32)
    # E_w[σ(w·d)] by Monte Carlo (200k draws: standard error < 1e-3); the probit
    # approximation's own error is below 0.02 at these variances (MacKay 1992, Fig. 1)
    w = rng.multivariate_normal(mean, cov, size=200_000)
    mc = (1 / (1 + np.exp(-(w @ cand.T)))).mean(0)
    p = np.asarray(predictive_probability(mean, cov, cand))
    np.testing.assert_allclose(p, mc, atol=0.02)
    # the entropy reduction of the Laplace posterior when a comparison with weight p(1-p) is
    # added: ½ (log det H_new − log det H)
    info = np.asarray(expected_information(mean, cov, cand))
    h = np.linalg.inv(cov.astype(np.float64))
    for i, d in enumerate(cand.astype(np.float64)):
        h_new = h + p[i] * (1 - p[i]) * np.outer(d, d)
        want = 0.5 * (np.linalg.slogdet(h_new)[1] - np.linalg.slogdet(h)[1])
        np.testing.assert_allclose(info[i], want, rtol=1e-4)
    # a comparison along the posterior's widest direction tells more than one across it
    evals, evecs = np.linalg.eigh(cov)
    wide, narrow = evecs[:, -1], evecs[:, 0]
    probe = np.stack([wide, narrow]).astype(np.float32)
    i_wide, i_narrow = np.asarray(expected_information(jnp.zeros(3), cov, probe))
    assert i_wide > i_narrow


def test_population_prior_is_the_shrunk_covariance():
    w = np.random.default_rng(3).normal(size=(6, 4)) * [1, 2, 0.5, 1]
    mean, cov = population_prior(w, shrinkage=0.2)
    s = np.cov(w.T)
    want = 0.8 * s + 0.2 * np.trace(s) / 4 * np.eye(4)
    np.testing.assert_allclose(np.asarray(mean), w.mean(0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(cov), want, rtol=1e-5, atol=2e-6)
    assert np.linalg.eigvalsh(np.asarray(cov)).min() > 0


def _batch(b=6, t=7, seed=0):
    rng = np.random.default_rng(seed)
    return PreferenceBatch(
        tokens=rng.integers(1, 50, (b, 2, t)).astype(np.int32), mask=np.ones((b, 2, t), np.int32),
        ranks=np.array([[0, 1], [1, 0], [0, 1], [0, 0], [1, 0], [0, 1]], np.int32),
        valid=np.ones((b, 2), np.int32), is_comparison=np.ones(b, np.int32),
        rating=np.zeros(b, np.float32), has_rating=np.zeros(b, np.int32),
        annotator=np.array([0, 1, 2, 0, -1, 1], np.int32),
        weight=np.array([1, 1, 1, 1, 1, 0], np.float32), index=np.arange(b, dtype=np.int32),
        prompt_len=3)


@pytest.mark.parametrize("basis", [3, 1])
def test_joint_loss_equals_its_formula(basis):
    cfg = models.preset("tiny-llama")
    model = models.DecoderModel(cfg, heads=("reward",), num_reward_outputs=basis)
    params = {"model": models.init_params(model, jax.random.key(0)),
              "users": jnp.asarray(np.random.default_rng(4).normal(size=(3, basis)),
                                   jnp.float32)}
    batch = _batch()
    total, (count, metrics) = make_personal_reward_loss(model, prior_precision=0.5)(
        params, batch, None)
    phi = np.asarray(reward.batch_rewards(model, params["model"], batch), np.float64)
    phi = phi.reshape(6, 2, basis)
    users = np.asarray(params["users"], np.float64)
    want, n, correct = 0.0, 0.0, 0.0
    for i in range(6):
        if batch.weight[i] == 0 or batch.ranks[i, 0] == batch.ranks[i, 1]:
            continue  # padding, and a tie (no preference)
        a = batch.annotator[i]
        w = users[a] if a >= 0 else users.mean(0)
        c, r = (0, 1) if batch.ranks[i, 0] < batch.ranks[i, 1] else (1, 0)
        z = w @ (phi[i, c] - phi[i, r])
        want += np.logaddexp(0, -z) + (0.25 * w @ w if a >= 0 else 0.0)
        n, correct = n + 1, correct + (z > 0)
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    assert float(count) == n == 4 and float(metrics["reward/accuracy"]) == correct


@pytest.fixture(scope="module")
def service():
    """A randomly initialised basis of 3 heads with a ChatML tokenizer."""
    tok = chat_tokenizer(template="chatml", vocab_size=400)
    cfg = models.preset("tiny-llama", vocab_size=len(tok))
    model = models.DecoderModel(cfg, heads=("reward",), num_reward_outputs=3)
    params = models.init_params(model, jax.random.key(1))
    prior = (np.array([1.0, 0.5, -0.5], np.float32), np.eye(3, dtype=np.float32) * 2.0)
    return lambda: reward.PersonalRewardModel(cfg, params, tok, prior, num_basis=3,
                                              max_prompt_len=48, max_response_len=12)


COMPARISONS = [
    {"prompt": "tell me about the cat:", "chosen": "the cat was lovely", "rejected": "awful"},
    {"prompt": [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "how was the trip?"}],
     "chosen": [{"role": "assistant", "content": "fun and bright"}],
     "rejected": [{"role": "assistant", "content": "dull and rude, really"}]},
    {"prompt": "tell me about the weather:", "chosen": "sad", "rejected": "great great great"},
]


def test_service_updates_scores_and_chooses(service):
    prm = service()
    mean0, cov0 = prm.weights("ann")
    np.testing.assert_array_equal(mean0, prm.prior[0])  # an unseen user: the prior
    phi = {i: prm.features([c["prompt"]] * 2, [c["chosen"], c["rejected"]])
           for i, c in enumerate(COMPARISONS)}
    for c in COMPARISONS:
        mean, cov = prm.update("ann", c)
    d = np.concatenate([phi[i][:1] - phi[i][1:] for i in range(3)])
    want_mean, want_cov = _reference(d.astype(np.float64), prm.prior[0].astype(np.float64),
                                     prm.prior[1].astype(np.float64))
    np.testing.assert_allclose(mean, want_mean, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(cov, want_cov, rtol=1e-3, atol=1e-5)
    assert prm.users["ann"]["d"].shape == (3, 3)
    # scores: E[w_u] · φ, per user; another user keeps the prior
    prompts, responses = ["tell me about our trip:"] * 2, ["lovely", "rude and ugly"]
    f = prm.features(prompts, responses)
    np.testing.assert_allclose(prm.score("ann", prompts, responses), f @ mean, rtol=1e-5)
    np.testing.assert_allclose(prm.score("bob", prompts, responses), f @ prm.prior[0],
                               rtol=1e-5)
    # the chosen candidate is the one of largest expected information
    cands = [(c["prompt"], c["chosen"], c["rejected"]) for c in COMPARISONS]
    best, info = prm.choose("ann", cands)
    assert best == int(np.argmax(info)) and info.shape == (3,) and (info >= 0).all()
    with pytest.raises(KeyError, match="missing field 'rejected'"):
        prm.update("ann", {"prompt": "x", "chosen": "y"})
    assert prm.features([], []).shape == (0, 3) and prm.score("ann", [], []).shape == (0,)


def test_service_state_is_saved_and_restored(service, tmp_path):
    prm = service()
    prm.update("ann", COMPARISONS[0])
    assert prm.save(tmp_path / "state") == 1
    prm.update("ann", COMPARISONS[1])
    prm.update("bob", COMPARISONS[2])
    assert prm.save(tmp_path / "state") == 2
    assert prm.save(tmp_path / "state") == 3  # nothing new: still a new step, no error
    again = service()
    assert again.restore(tmp_path / "state") == 3 and again.updates == 3
    for user in ("ann", "bob"):
        for a, b in zip(prm.weights(user), again.weights(user)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(prm.users[user]["d"], again.users[user]["d"])
    # an earlier step kept (the two newest are: 2 and 3); an update continues from it, and
    # the next save goes after the newest step, which a plain restore then reads
    assert again.restore(tmp_path / "state", step=2) == 2
    fresh = service()
    fresh.restore(tmp_path / "state", step=2)
    fresh.users.pop("bob")
    fresh.users["ann"] = {k: v[:1] if k in ("d", "label") else v
                          for k, v in fresh.users["ann"].items()}
    fresh.update("ann", COMPARISONS[1])  # one comparison dropped and given again: same data
    np.testing.assert_allclose(fresh.weights("ann")[0], prm.weights("ann")[0], rtol=1e-5)
    assert fresh.save(tmp_path / "state") == 4
    latest = service()
    assert latest.restore(tmp_path / "state") == 4 and set(latest.users) == {"ann"}
    with pytest.raises(FileNotFoundError, match="no saved personal-reward state"):
        service().restore(tmp_path / "nothing")



def test_labels_from_the_app_update_their_annotators_weights(service, tmp_path):
    """The labelling app's annotators are users: each label updates its annotator's posterior
    as it arrives (the basis stays frozen); a hook that fails leaves the label saved."""
    import re

    from starlette.testclient import TestClient

    from rlhf_jax import labelling

    store = labelling.LabelStore(f"sqlite:///{tmp_path / 'l.sqlite'}", labels_per_task=1)
    token = store.add_annotator("ann1")
    conv = [{"role": "user", "content": "how was the trip?"}]
    store.add_tasks([{"prompt": data.prompt_record_text(conv),  # as the app's task files
                      "responses": ["fun and bright", "dull and rude"], "id": "t0"}])
    prm = service()
    client = TestClient(labelling.create_app(store, on_label=prm.add_label),
                        base_url="http://127.0.0.1", follow_redirects=False)
    assert client.get("/login", params={"token": token}).status_code == 303
    page = client.get("/label").text
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page))
    a = store.assignment(int(fields["assignment"]), "ann1")
    r = client.post("/label", data={**fields, "choice": str(a.shown_order.index(1))})
    assert r.status_code == 303  # response 1 ("dull and rude") chosen
    want = service()
    want.update("ann1", {"prompt": conv,
                         "chosen": [{"role": "assistant", "content": "dull and rude"}],
                         "rejected": [{"role": "assistant", "content": "fun and bright"}]})
    np.testing.assert_allclose(prm.weights("ann1")[0], want.weights("ann1")[0], rtol=1e-6)
    assert len(prm.users["ann1"]["d"]) == 1
    # an edit in the app replaces what the label said: now the other response is chosen
    lab = store.labels("ann1")[0]
    page = client.get(f"/labels/{lab.id}").text
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page))
    r = client.post(f"/labels/{lab.id}", data={**fields, "choice": str(a.shown_order.index(0))})
    assert r.status_code == 303 and store.labels("ann1")[0].ranks == [0, 1]
    other = service()
    other.update("ann1", {"prompt": conv,
                          "chosen": [{"role": "assistant", "content": "fun and bright"}],
                          "rejected": [{"role": "assistant", "content": "dull and rude"}]})
    assert len(prm.users["ann1"]["d"]) == 1
    np.testing.assert_allclose(prm.weights("ann1")[0], other.weights("ann1")[0], rtol=1e-5)

    def broken(label):
        raise RuntimeError("no")

    store.add_tasks([{"prompt": "p", "responses": ["x", "y"], "id": "t1"}])
    client = TestClient(labelling.create_app(store, on_label=broken),
                        base_url="http://127.0.0.1", follow_redirects=False)
    client.get("/login", params={"token": token})
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"',
                             client.get("/label").text))
    assert client.post("/label", data={**fields, "choice": "0"}).status_code == 303
    assert len(store.labels("ann1")) == 2
