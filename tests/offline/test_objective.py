"""The offline objectives over preference batches against float64 NumPy references: which
pairs and examples each method forms from comparisons, rankings, binary feedback and ratings;
the policy's sequence log-probs; cached and in-step reference log-probs give the same loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import offline, train
from rlhf_jax.data import PreferenceBatch
from rlhf_jax.models import DecoderModel, init_params, preset, response_logprobs
from rlhf_jax.offline import OfflineLossConfig, offline_loss_sums


def _batch(ranks, valid, rating=None, has_rating=None, weight=None, k=3, t=4):
    b = len(ranks)
    return PreferenceBatch(
        tokens=np.zeros((b, k, t), np.int32), mask=np.ones((b, k, t), np.int32),
        ranks=np.asarray(ranks, np.int32), valid=np.asarray(valid, np.int32),
        is_comparison=(np.asarray(valid).sum(1) >= 2).astype(np.int32),
        rating=np.zeros(b, np.float32) if rating is None else np.asarray(rating, np.float32),
        has_rating=np.zeros(b, np.int32) if has_rating is None else np.asarray(has_rating,
                                                                              np.int32),
        annotator=np.full(b, -1, np.int32),
        weight=np.ones(b, np.float32) if weight is None else np.asarray(weight, np.float32),
        index=np.arange(b, dtype=np.int32), prompt_len=2)


BIG = np.iinfo(np.int32).max
# row 0: a ranking of three (best is response 1); row 1: a comparison (response 1 chosen);
# row 2: a comparison that ties (no pair); row 3: a padding row (weight 0)
PAIR_BATCH = dict(ranks=[[1, 0, 2], [1, 0, BIG], [0, 0, BIG], [0, 1, BIG]],
                  valid=[[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 0]],
                  weight=[1, 1, 1, 0])
PAIRS = [(0, 1, 0), (0, 1, 2), (1, 1, 0)]  # (row, chosen, rejected) the batch must form


def _logsig(x):
    return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("method", ["dpo", "ipo", "simpo", "cdpo", "orpo"])
def test_pairwise_methods_form_best_vs_each_other_pairs(method):
    rng = np.random.default_rng(0)
    logp, ref = rng.normal(-20, 3, (4, 3)), rng.normal(-20, 3, (4, 3))
    lengths = rng.integers(3, 9, (4, 3)).astype(np.float64)
    cfg = OfflineLossConfig(method=method, beta=0.3, label_smoothing=0.2, simpo_beta=1.5,
                            gamma=0.4, orpo_lambda=0.5)
    total, (count, sums) = offline_loss_sums(
        cfg, jnp.asarray(logp, jnp.float32), jnp.asarray(lengths, jnp.float32),
        _batch(**PAIR_BATCH), {"responses": jnp.asarray(ref, jnp.float32)})
    want = []
    for row, c, r in PAIRS:
        h = (logp[row, c] - ref[row, c]) - (logp[row, r] - ref[row, r])
        avg_c, avg_r = logp[row, c] / lengths[row, c], logp[row, r] / lengths[row, r]
        if method == "dpo":
            want.append(-_logsig(cfg.beta * h))
        elif method == "cdpo":
            eps = cfg.label_smoothing
            want.append(-(1 - eps) * _logsig(cfg.beta * h) - eps * _logsig(-cfg.beta * h))
        elif method == "ipo":
            want.append((h - 1 / (2 * cfg.beta)) ** 2)
        elif method == "simpo":
            want.append(-_logsig(cfg.simpo_beta * (avg_c - avg_r) - cfg.gamma))
        else:
            log_odds = lambda a: a - np.log1p(-np.exp(a))  # noqa: E731
            want.append(-avg_c - cfg.orpo_lambda * _logsig(log_odds(avg_c) - log_odds(avg_r)))
    assert float(count) == 3
    # float32 evaluation of O(10)-sized terms: relative error a few ulp (~1e-6)
    np.testing.assert_allclose(float(total), np.sum(want), rtol=1e-5)
    if method in ("dpo", "ipo", "cdpo"):
        margin = [cfg.beta * ((logp[i, c] - ref[i, c]) - (logp[i, r] - ref[i, r]))
                  for i, c, r in PAIRS]
        np.testing.assert_allclose(float(sums["rewards/margin"]), np.sum(margin), rtol=1e-5)
        assert float(sums["rewards/accuracy"]) == sum(m > 0 for m in margin)


def test_kto_reads_binary_labels_and_comparisons():
    # rows 0-1: binary feedback (rating +1 desirable, -1 undesirable); row 2: a comparison whose
    # second response is chosen; row 3: padding
    batch = _batch(ranks=[[0, BIG], [0, BIG], [1, 0], [0, BIG]],
                   valid=[[1, 0], [1, 0], [1, 1], [1, 0]], rating=[1, -1, 0, 1],
                   has_rating=[1, 1, 0, 1], weight=[1, 1, 1, 0], k=2)
    rng = np.random.default_rng(1)
    logp, ref = rng.normal(-10, 2, (4, 2)), rng.normal(-10, 2, (4, 2))
    part_p, part_r = rng.normal(-12, 2, 4), rng.normal(-13, 2, 4)
    cfg = OfflineLossConfig(method="kto", beta=0.2, desirable_weight=1.3,
                            undesirable_weight=0.7)
    total, (count, sums) = offline_loss_sums(
        cfg, jnp.asarray(logp, jnp.float32), jnp.ones((4, 2)), batch,
        {"responses": jnp.asarray(ref, jnp.float32), "partners": jnp.asarray(part_r,
                                                                            jnp.float32)},
        jnp.asarray(part_p, jnp.float32))
    z0 = max(0.0, np.mean(part_p - part_r))  # TRL and the paper: the batch's mean, clamped
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    examples = [(0, 0, True), (1, 0, False), (2, 1, True), (2, 0, False)]
    want = 0.0
    for row, k, good in examples:
        r = logp[row, k] - ref[row, k]
        lam = 1.3 if good else 0.7
        want += lam - lam * sig(cfg.beta * ((r - z0) if good else (z0 - r)))
    assert float(count) == 4 and float(sums["kto/desirable"]) == 2
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    np.testing.assert_allclose(float(sums["kto/kl_reference_point"]) / 4, z0, rtol=1e-5)


def test_awr_and_filtered_bc_on_ratings():
    batch = _batch(ranks=[[0]] * 5, valid=[[1]] * 5, rating=[0.5, -1.0, 1.0, 0.0, 0.9],
                   has_rating=[1, 1, 1, 1, 0], k=1)  # the last row has no label
    logp = np.array([[-3.0], [-5.0], [-2.0], [-4.0], [-1.0]])
    cfg = OfflineLossConfig(method="awr", temperature=0.5, max_weight=3.0)
    total, (count, sums) = offline_loss_sums(cfg, jnp.asarray(logp, jnp.float32),
                                             jnp.ones((5, 1)), batch)
    r = np.array([0.5, -1.0, 1.0, 0.0])
    w = np.minimum(np.exp((r - r.mean()) / 0.5), 3.0)
    assert float(count) == 4
    np.testing.assert_allclose(float(total), np.sum(-w * logp[:4, 0]), rtol=1e-6)
    assert float(sums["awr/clipped"]) == 1
    cfg = OfflineLossConfig(method="filtered_bc", top_fraction=0.5)
    total, (count, sums) = offline_loss_sums(cfg, jnp.asarray(logp, jnp.float32),
                                             jnp.ones((5, 1)), batch)
    # rows 0 and 2, the two best of the four labelled ones, averaged over the kept two
    assert float(total) == pytest.approx(3.0 + 2.0) and float(count) == 2
    assert float(sums["bc/kept_fraction"]) / 2 == 0.5 and float(sums["bc/threshold"]) / 2 == 0.5


def test_a_method_given_the_wrong_kind_names_what_it_reads():
    with pytest.raises(ValueError, match=r"data.kind='rating': method 'dpo' learns from "
                                         r"pairwise \| ranking records"):
        offline.check_method_kind("dpo", "rating")
    with pytest.raises(ValueError, match=r"method='ppo': expected one of dpo, cdpo"):
        OfflineLossConfig(method="ppo")
    with pytest.raises(ValueError, match=r"beta=0.0 is out of range"):
        OfflineLossConfig(beta=0.0)


@pytest.fixture(scope="module")
def tiny():
    config = preset("tiny-llama", vocab_size=40)
    model = DecoderModel(config)
    params = init_params(model, jax.random.key(0))
    ref = init_params(model, jax.random.key(1))
    rng = np.random.default_rng(0)
    source = []
    for i in range(10):  # prompts of 4 (left-padded), 2 responses of 5 (right-padded)
        prompt = rng.integers(3, 40, 4).astype(np.int32)
        prompt[:i % 3] = -1
        responses = rng.integers(3, 40, (2, 5)).astype(np.int32)
        responses[1, 5 - i % 4:] = -1
        source.append({"prompt": prompt, "responses": responses,
                       "ranks": np.array([i % 2, 1 - i % 2], np.int32), "rating": 0.0,
                       "has_rating": 0, "annotator": -1, "rationale": ""})
    return config, model, params, ref, source


def test_sequence_logprobs_are_the_sum_of_response_token_logprobs(tiny):
    config, model, params, _, source = tiny
    from rlhf_jax.data import preference_batches

    batch = next(preference_batches([source], 4, prompt_len=4, num_responses=2, shuffle=False,
                                    num_epochs=1))
    total, lengths = offline.sequence_logprobs(model, params, batch.tokens, batch.mask, 4)
    t = batch.tokens.reshape(8, -1)
    m = batch.mask.reshape(8, -1)
    per_token = response_logprobs(params, t[:, :4], m[:, :4], t[:, 4:], m[:, 4:],
                                  config=config)
    np.testing.assert_allclose(np.asarray(total).reshape(-1), np.asarray(per_token).sum(1),
                               rtol=1e-6, atol=1e-5)
    assert np.asarray(lengths).reshape(-1).tolist() == m[:, 4:].sum(1).tolist()


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_cached_and_in_step_reference_give_the_same_loss(tiny, method):
    """The cache is made by a separate program over batches of 4; the step scores a batch of
    6 itself. Log-prob sums of 5 tokens (|Σ| ≈ 20 nats) computed by programs of different
    batch shapes agree to a few float32 ulp (~1e-5 absolute); the loss scales them by β."""
    from rlhf_jax.data import preference_batches
    from rlhf_jax.sharding import logical_rules, make_mesh

    config, model, params, ref, source = tiny
    kto = method == "kto"
    mesh, rules = make_mesh("data=1", jax.devices()[:1]), logical_rules("dp")
    place = lambda tree: train.global_batch_from_local(tree, mesh, rules)  # noqa: E731
    cache = offline.compute_reference_cache(model, ref, source, batch_size=4, prompt_len=4,
                                            num_responses=2, pad_id=0, kto=kto, place=place)
    assert set(cache) == ({"responses", "partners"} if kto else {"responses"})
    it = offline.OfflineInputs(preference_batches([source], 6, prompt_len=4, num_responses=2,
                                                  seed=3), source, kto=kto, num_responses=2,
                               pad_id=0, cache=cache)
    cached = next(it)
    in_step = {k: v for k, v in cached.items() if k != "reference"}
    cfg = OfflineLossConfig(method=method, beta=0.5)
    grad = jax.grad(lambda p, loss, x: loss(p, x, None)[0])
    cached_loss = offline.make_offline_loss(model, cfg)(params, cached, None)
    step_loss = offline.make_offline_loss(model, cfg, ref)(params, in_step, None)
    np.testing.assert_allclose(float(cached_loss[0]), float(step_loss[0]), rtol=1e-5,
                               atol=1e-5)
    assert float(cached_loss[1][0]) == float(step_loss[1][0]) > 0
    g_cached = grad(params, offline.make_offline_loss(model, cfg), cached)
    g_step = grad(params, offline.make_offline_loss(model, cfg, ref), in_step)
    for a, b in zip(jax.tree.leaves(g_cached), jax.tree.leaves(g_step)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # the cache is indexed like the source: row i of the batch reads example batch.index[i]
    idx = cached["batch"].index
    np.testing.assert_array_equal(cached["reference"]["responses"], cache["responses"][idx])


def test_every_process_gets_the_same_number_of_epoch_batches(tiny, monkeypatch):
    """A pass over a split that the processes share unevenly (10 rows over 3 processes: 4, 3
    and 3) has as many batches on each process, the missing ones weightless, so a collective
    in the consumer never waits on a process that has finished."""
    source = tiny[4]
    counts, weights = [], []
    for p in range(3):
        monkeypatch.setattr(jax, "process_count", lambda: 3)
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        batches = list(offline.epoch_batches(source, 2, prompt_len=4, num_responses=2,
                                             pad_id=0))
        counts.append(len(batches))
        weights.append(sum(float(b.weight.sum()) for b in batches))
    assert counts == [2, 2, 2] and weights == [4.0, 3.0, 3.0]
