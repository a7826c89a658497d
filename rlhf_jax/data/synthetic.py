"""A built-in synthetic corpus for demos and tests: nothing is downloaded."""
from __future__ import annotations

import grain
import jax
import numpy as np


def progression_example(index: int, *, length: int, vocab_size: int, seed: int) -> dict:
    """Tokens (a + b·t) mod V with (a, b) fixed by `index`: learnable from context."""
    rng = np.random.default_rng([seed, index])
    a, b = rng.integers(0, vocab_size), rng.integers(1, 8)
    tokens = ((a + b * np.arange(length)) % vocab_size).astype(np.int32)
    return {"tokens": tokens, "mask": np.ones(length, np.int32)}


def progression_batches(*, batch_size: int, length: int, vocab_size: int, seed: int = 0,
                        num_examples: int = 4096):
    """An endless, shuffled, checkpointable grain iterator of {"tokens", "mask"} batches (each
    process draws from its own 1/process_count of the examples)."""
    ds = (grain.MapDataset.range(num_examples)[jax.process_index()::jax.process_count()]
          .shuffle(seed=seed).repeat(None)
          .map(lambda i: progression_example(int(i), length=length, vocab_size=vocab_size,
                                             seed=seed))
          .batch(batch_size, drop_remainder=True))
    return iter(ds.to_iter_dataset())
