"""Online DPO's pieces: ranks from a judge's scores (ties, answers without EOS), the step's
`PreferenceBatch` against one built by `batch_examples`, and one whole step (sample, judge,
update) whose loss equals `offline_loss_sums` recomputed independently on the same samples."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import offline, train
from rlhf_jax.models import DecoderModel, init_params, preset
from rlhf_jax.offline import OfflineLossConfig, offline_loss_sums, sequence_logprobs
from rlhf_jax.data.preference import PAD, batch_examples
from rlhf_jax.sampling import SamplingConfig, generate
from rlhf_jax.stages.online import online_update

CONFIG = preset("tiny-gpt2", vocab_size=16, hidden_size=32, num_heads=4,
                max_position_embeddings=32)
EOS, TARGET, K = 5, 3, 3


def _ranks_by_hand(scores, ended):
    """Rank of each answer = how many of its row's answers beat it, an answer with EOS beating
    one without and otherwise the higher score winning (Python tuples, compared in order)."""
    out = []
    for s_row, e_row in zip(scores, ended):
        keys = [(bool(e), float(s)) for s, e in zip(s_row, e_row)]
        out.append([sum(other > mine for other in keys) for mine in keys])
    return np.asarray(out, np.int32)


def test_ranks_share_ties_and_put_answers_without_eos_last():
    scores = np.array([[0.2, 0.9, 0.2, -0.5], [0.0, 0.0, 0.0, 0.0], [1.0, 0.5, 0.7, -1.0]],
                      np.float32)
    ended = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 0, 1]], bool)
    ranks = np.asarray(offline.judged_ranks(jnp.asarray(scores), jnp.asarray(ended)))
    np.testing.assert_array_equal(ranks, [[1, 0, 1, 3], [0, 0, 0, 0], [2, 0, 3, 1]])
    np.testing.assert_array_equal(ranks, _ranks_by_hand(scores, ended))
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, (20, 4)).astype(np.float32)  # many ties
    ended = rng.random((20, 4)) < 0.6
    np.testing.assert_array_equal(offline.judged_ranks(scores, ended),
                                  _ranks_by_hand(scores, ended))


def _hand_batch(prompt_tokens, prompt_mask, response_tokens, response_mask, ranks, pad_id=0):
    """The same samples through the loaders' own path: stored examples (PAD = −1 outside the
    masks) batched by `batch_examples`."""
    pad = PAD
    examples = []
    for row in range(len(ranks)):
        rows = slice(row * K, (row + 1) * K)
        examples.append({
            "prompt": np.where(prompt_mask[row * K] > 0, prompt_tokens[row * K], pad),
            "responses": np.where(response_mask[rows] > 0, response_tokens[rows], pad),
            "ranks": ranks[row], "rating": 0.0, "has_rating": 0, "annotator": -1})
    return batch_examples(examples, prompt_len=prompt_tokens.shape[1], num_responses=K,
                               pad_id=pad_id)


def _target_count(prompt_tokens, prompt_mask, response_tokens, response_mask):
    """A host judge with many ties: how many response tokens are TARGET."""
    return np.asarray(((response_tokens == TARGET) * response_mask).sum(1), np.float32)


@pytest.mark.parametrize("method", ["dpo", "simpo"])
def test_one_step_loss_is_the_offline_loss_of_its_judged_samples(method):
    model = DecoderModel(CONFIG)
    params = init_params(model, jax.random.key(0))
    copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)  # noqa: E731
    start, ref = copy(params), copy(params)
    lc = OfflineLossConfig(method=method, beta=0.2)
    tx = train.make_optimizer(train.OptimizerConfig(learning_rate=1e-2, total_steps=10,
                                                    schedule="constant"), params)
    state = train.create_train_state(params, tx, jax.random.key(7))
    sampling = SamplingConfig(max_new_tokens=8, eos_token_ids=(EOS,))
    update = jax.jit(online_update(model, lc, tx, K), donate_argnums=0)
    extra = {"ref_params": ref} if lc.uses_reference else {}
    step = offline.make_online_step(config=CONFIG, sampling=sampling, judge=_target_count,
                                    update=lambda s, x: update(s, {**x, **extra}),
                                    samples_per_prompt=K)
    prompts = np.asarray(jax.random.randint(jax.random.key(1), (6, 4), 1, 16), np.int32)
    prompt_mask = np.ones_like(prompts)
    prompt_mask[:2, :2] = 0  # two left-padded prompts
    prompts = np.where(prompt_mask > 0, prompts, 0)
    state, metrics = step(state, {"tokens": prompts, "mask": prompt_mask})
    assert int(state.step) == 1

    # the same samples again, from the key the step documents: fold_in(fold_in(key, 0), 0)
    pt, pm = np.repeat(prompts, K, axis=0), np.repeat(prompt_mask, K, axis=0)
    out = generate(start, pt, pm, jax.random.fold_in(jax.random.fold_in(jax.random.key(7), 0), 0),
                   config=CONFIG, sampling=sampling)
    rt, rm, ended = (np.asarray(x) for x in (out.tokens, out.mask, out.ended_with_eos))
    scores = _target_count(pt, pm, rt, rm).reshape(-1, K)
    ranks = _ranks_by_hand(scores, ended.reshape(-1, K))
    assert 0 < ended.mean() < 1 and len(np.unique(scores)) > 1  # both rules are exercised
    batch = _hand_batch(pt, pm, rt, rm, ranks)
    built = offline.online_preference_batch(pt, pm, rt, rm, scores.reshape(-1), ended,
                                            samples_per_prompt=K)
    for name in ("tokens", "mask", "ranks", "valid", "is_comparison", "weight"):
        np.testing.assert_array_equal(getattr(built, name), getattr(batch, name), err_msg=name)

    logp, lengths = sequence_logprobs(model, start, batch.tokens, batch.mask, batch.prompt_len)
    reference = None
    if lc.uses_reference:
        reference = {"responses": sequence_logprobs(model, ref, batch.tokens, batch.mask,
                                                    batch.prompt_len)[0]}
    loss_sum, (count, sums) = offline_loss_sums(lc, logp, lengths, batch, reference)
    np.testing.assert_allclose(metrics["train/loss"], loss_sum / count, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["rewards/accuracy"], sums["rewards/accuracy"] / count,
                               atol=1e-6)
    # the judge's view of the same pairs: best of each row against each answer below it
    best = ranks.argmin(1)
    pairs = [(r, j) for r in range(len(ranks)) for j in range(K) if ranks[r, j] > ranks[r, best[r]]]
    assert float(count) == len(pairs) == metrics["pairs/used"]
    np.testing.assert_allclose(metrics["pairs/tie_fraction"], 1 - len(pairs) / (6 * (K - 1)))
    np.testing.assert_allclose(metrics["judge/score_mean"], scores.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["judge/chosen_minus_rejected"],
                               np.mean([scores[r, best[r]] - scores[r, j] for r, j in pairs]),
                               rtol=1e-6)
    assert metrics["judge/calls"] == 6 * K
    np.testing.assert_allclose(metrics["response/length"], rm.sum(1).mean())
    np.testing.assert_allclose(metrics["response/eos_fraction"], ended.mean())
    assert {"time/generate", "time/judge", "time/update"} <= set(metrics)
    if method == "dpo":  # at the reference, every implicit reward is 0: DPO's loss is log 2
        np.testing.assert_allclose(metrics["train/loss"], np.log(2.0), rtol=1e-6)
