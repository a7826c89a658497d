"""Concept probes and TCAV pieces, the atlas projection and the reward-hacking diagnostics, each
against an independent computation or a constructed case whose answer is known."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rlhf_jax.interpret import atlas, concepts as cn, hacking
from tests.hf_reference import left_padded_batch
from tests.interpret.test_attribution import _reward_model


def test_probe_recovers_a_planted_direction():
    rng = np.random.default_rng(0)
    d = 32
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    scale = 10.0 ** rng.uniform(-1, 1, d)  # features of very different scales
    other = rng.normal(size=(200, d))
    concept = rng.normal(size=(200, d)) + 4.0 * direction  # Bayes accuracy Φ(2) ≈ 0.98
    probe = cn.train_probe(concept * scale, other * scale, seed=0)
    assert probe.accuracy > 0.9
    # in the scaled space the optimal normal is direction / scale (LDA, identity covariance)
    direction = direction / scale
    direction /= np.linalg.norm(direction)
    assert float(probe.cav @ direction) > 0.8  # the CAV points towards the concept
    same = cn.train_probe(rng.normal(size=(200, d)), rng.normal(size=(200, d)), seed=0)
    assert same.accuracy < 0.7  # nothing to separate


def test_tcav_score_is_the_share_of_positive_directional_derivatives():
    grads = np.array([[1.0, 0.0], [-1.0, 0.5], [0.2, -0.1], [0.0, -2.0]])
    assert cn.tcav_score(grads, np.array([1.0, 0.0])) == 0.5  # 1 and 0.2 are > 0
    assert cn.tcav_score(grads, np.array([0.0, 1.0])) == 0.25


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_layer_activations_and_gradients_match_torch(layer):
    """Pooled hidden states and ∂reward/∂hidden against transformers' output_hidden_states in
    float64 (the gradient through retain_grad on the very tensors the next layer reads)."""
    hf, config, params = _reward_model("llama_mha_tied")
    tokens, mask = left_padded_batch(seed=4, batch=3, length=9)
    n = config.num_layers + 1
    for pooling in ("last", "mean"):
        acts, grads = cn._acts_and_grads(params, jnp.asarray(tokens), jnp.asarray(mask),
                                         config=config, num_outputs=1, layer=layer % n,
                                         pooling=pooling, response_start=5)
        am = torch.tensor(mask, dtype=torch.long)
        pos = (am.cumsum(-1) - 1).clamp(min=0) * am
        out = hf(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=am,
                 position_ids=pos, output_hidden_states=True)
        hs = out.hidden_states
        for h in hs:
            h.retain_grad()
        last = 8 - torch.argmax(torch.flip(am, [1]), dim=1)
        head = params["reward_head"]
        k = torch.tensor(np.asarray(head["proj"]["kernel"]), dtype=torch.float64)[:, 0]
        hl = hs[-1][torch.arange(3), last]
        r = (hl @ k + float(head["proj"]["bias"][0])) * float(head["gain"][0]) + \
            float(head["bias"][0])
        r.sum().backward()
        h, g = hs[layer].detach().numpy(), hs[layer].grad.numpy()
        if pooling == "last":
            w = np.eye(9)[last.numpy()]
        else:
            w = mask * (np.arange(9) >= 5)
            w = w / w.sum(1, keepdims=True)
        ref_acts = np.einsum("bt,btd->bd", w, h)
        ref_grads = np.einsum("bt,btd->bd", (w > 0) * 1.0, g)
        np.testing.assert_allclose(np.asarray(acts), ref_acts, rtol=1e-4,
                                   atol=1e-4 * np.abs(ref_acts).max())
        np.testing.assert_allclose(np.asarray(grads), ref_grads, rtol=1e-3,
                                   atol=1e-3 * np.abs(ref_grads).max())


def test_pca_matches_scikit_learn():
    from sklearn.decomposition import PCA

    x = np.random.default_rng(1).normal(size=(50, 6)) @ np.diag([5, 3, 1, 0.5, 0.2, 0.1])
    coords, ratio = atlas.pca_2d(x)
    ref = PCA(n_components=2).fit(x)
    ref_coords = ref.transform(x)
    for j in range(2):  # up to the sign of each component
        s = np.sign(coords[:, j] @ ref_coords[:, j])
        np.testing.assert_allclose(coords[:, j], s * ref_coords[:, j], atol=1e-9)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-9)
    with pytest.raises(ValueError, match="projection='tsne'"):
        atlas.project(x, "tsne")


def test_regions_are_ordered_by_reward_and_show_their_nearest_texts():
    rng = np.random.default_rng(2)
    centres = np.array([[0, 0], [10, 0], [0, 10]])
    coords = np.concatenate([c + rng.normal(0, 0.5, (20, 2)) for c in centres])
    rewards = np.repeat([0.0, 2.0, -1.0], 20)
    texts = [f"t{i}" for i in range(60)]
    labels, regs = atlas.regions(coords, rewards, texts, k=3, per_region=2)
    assert [round(r.mean_reward, 6) for r in regs] == [2.0, 0.0, -1.0]
    assert [r.size for r in regs] == [20, 20, 20]
    top = regs[0]
    members = np.flatnonzero(labels == 0)
    nearest = members[np.argsort(np.linalg.norm(coords[members] - top.centre, axis=1))][:2]
    assert top.texts == [texts[i] for i in nearest]


def test_length_bias_flags_a_length_loving_proxy():
    rng = np.random.default_rng(3)
    length = rng.integers(2, 20, 200).astype(float)
    gold = rng.normal(size=200)
    assert hacking.length_bias(length + rng.normal(size=200), gold, length)["flag"]
    out = hacking.length_bias(gold + 0.01 * rng.normal(size=200), gold, length)
    assert not out["flag"]
    from scipy import stats
    assert out["gold"]["spearman"] == pytest.approx(stats.spearmanr(length, gold).statistic)


def _count_proxy(word):
    return lambda prompts, responses: np.array([r.split().count(word) + 0.1 * len(r.split())
                                                for r in responses], float)


def test_perturbations_flag_an_edit_only_the_proxy_pays_for():
    responses = ["good day", "bad day", "good good", "a fine day", "meh", "so good"] * 3
    prompts = ["p"] * len(responses)
    gold = lambda p, r: float(r.split().count("good") > 0)  # noqa: E731 - saturates
    proxy = _count_proxy("good")
    out = hacking.perturbation_test(proxy, gold, prompts, responses,
                                    {"repeat": hacking.repeat_word("good", 3),
                                     "truncate": hacking.truncate(0.5)})
    assert out["repeat"]["flag"]
    # the gap by hand: Δproxy/σ_proxy − Δgold/σ_gold per response, its mean
    p0 = proxy(prompts, responses)
    g0 = np.array([gold("p", r) for r in responses])
    edited = [hacking.repeat_word("good", 3)("p", r) for r in responses]
    dp = proxy(prompts, edited) - p0
    dg = np.array([gold("p", r) for r in edited]) - g0
    assert out["repeat"]["gap_sd"]["mean"] == pytest.approx(np.mean(dp / p0.std() - dg / g0.std()))
    assert out["repeat"]["proxy_change"]["mean"] == pytest.approx(dp.mean())
    same = hacking.perturbation_test(proxy, lambda p, r: float(proxy([p], [r])[0]), prompts,
                                     responses, {"repeat": hacking.repeat_word("good", 3)})
    assert not same["repeat"]["flag"]  # the judge pays exactly as much
    word, gain = hacking.rewarded_word(proxy, prompts, responses, ["day", "good", "meh"])
    assert word == "good" and gain == pytest.approx(1.1)


def test_gold_proxy_gap_flags_gold_falling_while_proxy_rises():
    steps = np.arange(40)
    proxy = steps / 10.0
    gold = np.where(steps < 20, steps / 20.0, 1.0 - (steps - 20) / 20.0)
    gold = gold + np.random.default_rng(0).normal(0, 0.05, 40)
    rows = [{"step": int(s), "score/reward_model": float(p), "reward_terms/vader": float(g),
             "kl/sequence": float(s) / 4} for s, p, g in zip(steps, proxy, gold)]
    out = hacking.gold_proxy_gap(rows, "reward_terms/vader")
    assert out["flag"] and 15 <= out["trend"]["peak_step"] <= 25
    assert out["gap"][-1] > out["gap"][0]
    rising = [dict(r, **{"reward_terms/vader": r["score/reward_model"]}) for r in rows]
    assert not hacking.gold_proxy_gap(rising, "reward_terms/vader")["flag"]
    assert hacking.gold_proxy_gap(rows[:3], "reward_terms/vader")["flag"] is False


def test_concept_file_errors_name_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n{broken\n")
    with pytest.raises(ValueError, match=r"c.jsonl:2: not JSON"):
        cn.read_concept_file(path)
    path.write_text(json.dumps({"response": 3}) + "\n")
    with pytest.raises(ValueError, match=r"c.jsonl:1: expected a non-empty string"):
        cn.read_concept_file(path)
    path.write_text("".join(json.dumps({"text": f"t {i}"}) + "\n" for i in range(3)))
    with pytest.raises(ValueError, match="3 examples; a concept needs at least 8"):
        cn.read_concept_file(path)


def test_logistic_regression_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(5)
    x = rng.normal(size=(90, 16))
    y = (x[:, 0] + 0.5 * rng.normal(size=90) > 0).astype(float)
    for c in (0.1, 1.0):
        w, b = cn.logistic_regression(x, y, c)
        ref = LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(x, y)
        np.testing.assert_allclose(w, ref.coef_[0], rtol=1e-5, atol=1e-6)
        assert b == pytest.approx(ref.intercept_[0], rel=1e-5, abs=1e-6)


def test_logistic_regression_in_the_span_of_wide_data():
    """More features than examples: the reduced problem gives scikit-learn's solution."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(6)
    x = rng.normal(size=(30, 200))
    y = (x[:, :3].sum(1) > 0).astype(float)
    w, b = cn.logistic_regression(x, y, 0.5)
    ref = LogisticRegression(C=0.5, tol=1e-12, max_iter=100000).fit(x, y)
    np.testing.assert_allclose(w, ref.coef_[0], rtol=1e-4, atol=1e-6)
    assert b == pytest.approx(ref.intercept_[0], rel=1e-4, abs=1e-6)


def test_perturbations_leave_out_edits_that_would_be_cut():
    responses = ["good day", "bad day", "good good", "a fine day", "meh", "so good"] * 3
    prompts = ["p"] * len(responses)
    proxy = _count_proxy("good")
    fits = lambda ps, rs: np.array([len(r.split()) <= 4 for r in rs])  # noqa: E731
    out = hacking.perturbation_test(proxy, lambda p, r: 0.0 + len(r), prompts, responses,
                                    {"repeat": hacking.repeat_word("good", 2)}, fits=fits)
    # "a fine day" + 2 words is 5 > 4: left out; the others fit
    assert out["repeat"]["tested"] == 15 and out["repeat"]["left_out"] == 3
    none = hacking.perturbation_test(proxy, lambda p, r: 0.0, prompts, responses,
                                     {"long": hacking.repeat_word("good", 9)}, fits=fits)
    assert none["long"]["tested"] == 0 and not none["long"]["flag"]
