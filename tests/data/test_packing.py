"""Packed SFT rows: attention and positions never cross examples, so the summed loss and its
gradients equal those of the same examples unpacked (one row each); bucketed batches cover every
example once per epoch, in a bounded set of shapes, and resume exactly."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from rlhf_jax import data, losses, models
from rlhf_jax.data.buckets import LengthSource, ladder, plan_epoch
from rlhf_jax.data.preference import PAD
from rlhf_jax.data.sft import packed_row, sft_arrays


def _examples(rng, n, max_len, vocab):
    out = []
    for _ in range(n):
        k = int(rng.integers(3, max_len // 2))
        tokens = np.full(max_len, PAD, np.int32)
        loss = np.zeros(max_len, np.int32)
        tokens[-k:] = rng.integers(1, vocab, k)
        loss[-k:] = rng.integers(0, 2, k)  # e.g. assistant turns only
        out.append({"tokens": tokens, "loss": loss})
    return out


def _nll_sum(model, config, params, batch):
    out = model.apply({"params": params}, batch["tokens"], batch["mask"],
                      batch.get("positions"), segment_ids=batch.get("segment_ids"))
    targets = losses.next_token_targets(batch["mask"]) * batch["loss_mask"]
    return losses.model_nll_sum(out, params, config, batch["tokens"], targets)


@pytest.mark.parametrize("preset,attention", [("tiny-llama", "xla"), ("tiny-llama", "jax"),
                                              ("tiny-gpt2", "xla")])
def test_packed_loss_and_gradients_equal_unpacked(preset, attention):
    rng = np.random.default_rng(0)
    config = models.preset(preset, vocab_size=61, attention=attention)
    model = models.DecoderModel(config)
    params = models.init_params(model, jax.random.key(0))
    examples = _examples(rng, 7, 16, 61)
    unpacked = {k: jnp.asarray(v) for k, v in sft_arrays(
        np.stack([e["tokens"] for e in examples]), np.stack([e["loss"] for e in examples]),
        0).items()}
    rows = [packed_row(examples[:3], 32, 0), packed_row(examples[3:], 32, 0)]
    packed = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
    assert int(packed["segment_ids"].max()) == 4
    assert np.asarray(packed["positions"][0, :3]).tolist() == [0, 1, 2]

    # compiled, as training runs them (op by op, the gradients took 8-30 s to dispatch); the
    # largest difference is under a quarter of each tolerance
    nll = jax.jit(lambda p, batch: _nll_sum(model, config, p, batch))
    grad = jax.jit(jax.grad(lambda p, batch: _nll_sum(model, config, p, batch)[0]))

    (a, na), (b, nb) = nll(params, unpacked), nll(params, packed)
    assert float(na) == float(nb) > 0  # the same targets
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    ga, gb = grad(params, unpacked), grad(params, packed)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-6)
    # without segment ids the packed rows would attend across examples: a different loss
    crossed = dict(packed, segment_ids=None, positions=None)
    assert abs(float(nll(params, crossed)[0]) - float(a)) > 1e-3


def test_ladder_and_rungs():
    assert ladder(1024) == (128, 256, 512, 1024)
    assert ladder(24) == (24,) and ladder(8) == (8,)  # the built-in task: one shape
    assert ladder(512, "off") == (512,) and ladder(300, "64,128") == (64, 128, 300)
    with pytest.raises(ValueError, match="buckets='x'"):
        ladder(64, "x")


def test_bucketed_plan_covers_each_example_once_and_resumes_exactly():
    rng = np.random.default_rng(1)
    n = 203
    lengths = np.stack([rng.integers(1, 400, n), rng.integers(1, 200, n)], 1)
    src = LengthSource(list(range(n)), lengths, (ladder(512), ladder(256)))
    seen = np.concatenate(plan_epoch(src, 8, seed=0, epoch=0, shuffle=False,
                                     drop_remainder=False))
    assert sorted(seen.tolist()) == list(range(n))
    shuffled = plan_epoch(src, 8, seed=0, epoch=0, shuffle=True, drop_remainder=True)
    flat = np.concatenate(shuffled)
    assert len(flat) == len(set(flat.tolist())) == (n // 8) * 8
    shapes = {src.shape_of(b) for b in shuffled}
    assert len(shapes) <= 16 and all(p in (64, 128, 256, 512) and r in (32, 64, 128, 256)
                                     for p, r in shapes)
    # every batch is padded to the rungs of its own longest example
    for b in shuffled:
        p, r = src.shape_of(b)
        assert lengths[b, 0].max() <= p and lengths[b, 1].max() <= r
    # padding saved: far fewer padded tokens than padding everything to the maximum
    padded = sum(sum(src.shape_of(b)) * len(b) for b in shuffled)
    assert padded < 0.7 * len(flat) * (512 + 256)

    def take(it, k):
        return [next(it) for _ in range(k)]

    make = lambda idx, shape, valid: (tuple(idx.tolist()), shape)  # noqa: E731
    a = data.BucketedBatches(src, 8, make, seed=3)
    first = take(a, 40)  # crosses into a second epoch
    b = data.BucketedBatches(src, 8, make, seed=3)
    take(b, 17)
    state = b.get_state()
    c = data.BucketedBatches(src, 8, make, seed=3)
    c.set_state(state)
    assert take(c, 23) == first[17:]



def test_packed_batches_cover_every_example_and_resume_exactly():
    rng = np.random.default_rng(2)
    examples = _examples(rng, 40, 32, 50)
    lengths = np.array([(e["tokens"] != PAD).sum() for e in examples])
    src = LengthSource(examples, lengths, (ladder(32, "off"),))
    once = data.PackedBatches(src, 4, row_len=32, pad_id=0, seed=1, num_epochs=1)
    batches = list(once)
    real = sum(int(b["mask"].sum()) for b in batches)
    assert real == lengths.sum()  # every example once, none cut
    assert all(b["tokens"].shape == (4, 32) for b in batches)
    assert once.examples_per_row() > 1.5  # several examples share a row

    def take(it, k):
        return [next(it)["tokens"].copy() for _ in range(k)]

    a = data.PackedBatches(src, 4, row_len=32, pad_id=0, seed=1)
    first = take(a, 12)  # crosses epochs
    b = data.PackedBatches(src, 4, row_len=32, pad_id=0, seed=1)
    take(b, 5)
    c = data.PackedBatches(src, 4, row_len=32, pad_id=0, seed=1)
    c.set_state(b.get_state())
    for x, y in zip(take(c, 7), first[5:]):
        np.testing.assert_array_equal(x, y)


def test_a_finite_pass_over_several_processes_reads_every_example_once(monkeypatch):
    """On 2 processes a last batch no longer than one process's share leaves the second
    process only padding: it still gets real rows to read, all weighing nothing."""
    from rlhf_jax.data import buckets

    rng = np.random.default_rng(3)
    lengths = np.stack([rng.integers(1, 60, 10), rng.integers(1, 30, 10)], 1)
    src = LengthSource(list(range(10)), lengths, (ladder(64), ladder(32)))
    seen = []
    for p in (0, 1):
        monkeypatch.setattr(buckets, "_processes", lambda p=p: (p, 2))
        for idx, shape, valid in data.BucketedBatches(
                src, 4, lambda i, s, v: (i, s, v), shuffle=False, num_epochs=1):
            assert (idx >= 0).all() and len(idx) == 4
            seen += idx[valid].tolist()
    assert sorted(seen) == list(range(10))
