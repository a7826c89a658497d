"""Real-length batching: a few padded shapes instead of one maximum, and packing.

Padding every row to the longest allowed length wastes most of the compute on long-tailed data
(a median of 200 tokens padded to 1024 spends ~80 % of the FLOPs on padding). Here:

- `ladder(max_len)` gives the padded lengths allowed (the "rungs"): by default four, halving
  from the maximum (1024 → 128, 256, 512, 1024), none under 16 — so the number of compiled
  programs stays bounded by the rungs of each padded axis;
- `LengthSource` wraps a random-access source with each example's lengths and its rungs;
- `BucketedBatches` groups examples of similar length (HF's group-by-length sampler: shuffle,
  sort windows of `window` batches by length, cut into batches, shuffle the batches), pads each
  batch to the rungs of its longest example, and resumes exactly from (epoch, batch);
- `pack_rows` (first-fit into rows of a fixed length) is SFT's packing plan: several examples
  per row, kept apart by segment ids (see `data.sft`).

Plans are computed from the seed and the epoch alone, over the global batch, so every process
takes the same shapes at the same step and its own rows of each batch.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

MIN_RUNG = 16


def _processes() -> tuple[int, int]:
    """(this process's index, the process count); JAX is imported here, not with the module,
    so that config checks (`ladder`) run without it."""
    import jax

    return jax.process_index(), jax.process_count()


def ladder(max_len: int, spec: str = "auto") -> tuple[int, ...]:
    """The padded lengths of an axis of at most `max_len`: "auto" (four rungs halving from
    `max_len`, none under 16), "off" (`max_len` only), or comma-separated lengths (`max_len`
    is added as the top rung)."""
    if spec == "off":
        return (max_len,)
    if spec == "auto":
        rungs = {max_len >> k for k in range(4) if (max_len >> k) >= MIN_RUNG}
    else:
        try:
            rungs = {int(x) for x in spec.split(",") if x.strip()}
        except ValueError:
            raise ValueError(f"buckets={spec!r}: expected 'auto', 'off' or comma-separated "
                             "lengths") from None
        if not rungs or min(rungs) < 1:
            raise ValueError(f"buckets={spec!r}: lengths must be positive")
        rungs = {r for r in rungs if r < max_len}
    return tuple(sorted(rungs | {max_len}))


def rung_of(lengths: np.ndarray, rungs: Sequence[int]) -> np.ndarray:
    """The smallest rung that holds each length (lengths above the top rung get the top)."""
    rungs = np.asarray(rungs)
    return rungs[np.minimum(np.searchsorted(rungs, lengths), len(rungs) - 1)]


class LengthSource:
    """A random-access source (len, getitem) with each example's lengths [N, A] (one column
    per padded axis: prompt and response, or the text) and the rungs of each axis."""

    def __init__(self, source, lengths: np.ndarray, rungs: Sequence[Sequence[int]]):
        self.source, self.lengths = source, np.asarray(lengths, np.int64).reshape(len(source), -1)
        self.rungs = tuple(tuple(r) for r in rungs)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return self.source[i]

    def __iter__(self):
        return (self.source[i] for i in range(len(self.source)))

    @property
    def bucketed(self) -> bool:
        """Whether any axis has more than one rung."""
        return any(len(r) > 1 for r in self.rungs)

    def buckets_for(self, local_batch: int, num_epochs: Optional[int]) -> bool:
        """Whether batches of `local_batch` rows per process are grouped by length: with
        several rungs, unless a repeated pass holds fewer examples than one global batch (a
        tiny dataset is repeated into fixed-shape batches instead)."""
        return self.bucketed and (num_epochs is not None
                                  or len(self) >= local_batch * _processes()[1])

    def shape_of(self, indices) -> tuple[int, ...]:
        """The padded shape of a batch of these examples: each axis's rung of its longest."""
        longest = self.lengths[np.asarray(indices)].max(0)
        return tuple(int(rung_of(n, r)) for n, r in zip(longest, self.rungs))


def _sort_key(src: LengthSource, idx: np.ndarray) -> np.ndarray:
    """Examples ordered by their rungs, axis by axis, then by total length."""
    cols = [rung_of(src.lengths[idx, a], r) for a, r in enumerate(src.rungs)]
    return np.lexsort([src.lengths[idx].sum(1)] + cols[::-1])


def plan_epoch(src: LengthSource, batch_size: int, *, seed: int, epoch: int, shuffle: bool,
               drop_remainder: bool, window: int = 64) -> list[np.ndarray]:
    """One epoch's batches of example indices (global batch `batch_size`): in order, or
    shuffled; sorted by length within windows of `window` batches; the last partial batch
    dropped or kept (shorter). Shuffled batches come in a shuffled order."""
    n = len(src)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    span = window * batch_size if shuffle else n
    batches = []
    for start in range(0, n, span):
        chunk = order[start:start + span]
        chunk = chunk[_sort_key(src, chunk)]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if batches and len(batches[-1]) < batch_size and drop_remainder:
        batches.pop()
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class BucketedBatches:
    """Batches of `src` grouped by length (`plan_epoch`), each padded to its own shape.

    `make(indices, shape, valid)` builds this process's batch from its rows of the global batch
    (`valid` is False for the padding rows of a last partial batch, which repeat its first
    example and must weigh nothing). Repeats forever
    (`num_epochs=None`, partial batches dropped) or for `num_epochs` (kept, padded). The state
    is {"epoch", "batch"}: exact resume.
    """

    def __init__(self, src: LengthSource, local_batch: int, make: Callable, *, seed: int = 0,
                 shuffle: bool = True, num_epochs: Optional[int] = None):
        self.src, self.local_batch, self.make = src, local_batch, make
        self.seed, self.shuffle, self.num_epochs = seed, shuffle, num_epochs
        self.global_batch = local_batch * _processes()[1]
        if num_epochs is None and len(src) < self.global_batch:
            raise ValueError(f"{len(src)} examples are fewer than one batch of "
                             f"{self.global_batch}")
        self.epoch, self.batch, self._plan = 0, 0, None

    def _batches(self) -> list:
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (self.epoch, plan_epoch(
                self.src, self.global_batch, seed=self.seed, epoch=self.epoch,
                shuffle=self.shuffle, drop_remainder=self.num_epochs is None))
        return self._plan[1]

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self.num_epochs is not None and self.epoch >= self.num_epochs:
                raise StopIteration
            batches = self._batches()
            if self.batch < len(batches):
                break
            self.epoch, self.batch = self.epoch + 1, 0
        rows = batches[self.batch]
        self.batch += 1
        shape = self.src.shape_of(rows)
        # a last, partial batch: the empty slots repeat the batch's first example, marked
        # invalid (weight 0), so every process gets real rows to read even when its whole
        # share is padding
        full = np.full(self.global_batch, rows[0], np.int64)
        full[:len(rows)] = rows
        valid = np.arange(self.global_batch) < len(rows)
        p = _processes()[0]
        mine = slice(p * self.local_batch, (p + 1) * self.local_batch)
        return self.make(full[mine], shape, valid[mine])

    def get_state(self) -> dict:
        """The position: epoch and batch within it."""
        return {"epoch": self.epoch, "batch": self.batch}

    def set_state(self, state: dict) -> None:
        """Resume at a position from `get_state`."""
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def shapes(self) -> dict:
        """{padded shape: batches} of the first epoch's plan (what will be compiled)."""
        out: dict = {}
        for rows in plan_epoch(self.src, self.global_batch, seed=self.seed, epoch=0,
                               shuffle=self.shuffle, drop_remainder=self.num_epochs is None):
            shape = self.src.shape_of(rows)
            out[shape] = out.get(shape, 0) + 1
        return dict(sorted(out.items()))


def fixed_batches(source, batch_size: int, arrays: Callable, *, seed: int, shuffle: bool,
                  num_epochs: Optional[int], what: str, batch_fn: Optional[Callable] = None):
    """Batches of one fixed shape from grain: this process's share of `source`, shuffled with
    `seed`, repeated `num_epochs` times (None: forever), each example mapped by `arrays`,
    batched by `batch_fn` (default: stacked), the last partial batch dropped."""
    import grain

    ds = grain.MapDataset.source(source)[_processes()[0]::_processes()[1]]
    if len(ds) < batch_size and num_epochs is not None:
        raise ValueError(f"{len(ds)} {what} per process is fewer than batch_size={batch_size}")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs).map(arrays)
    return iter(ds.batch(batch_size, drop_remainder=True, batch_fn=batch_fn).to_iter_dataset())


def pack_rows(lengths: np.ndarray, order: np.ndarray, row_len: int,
              open_rows: int = 8) -> list[list[int]]:
    """First-fit packing: examples in `order` go into the first of the last `open_rows` rows
    with room for them (`row_len` tokens), else start a new row. Returns rows of indices."""
    rows, room = [], []
    for i in order:
        n = int(lengths[i])
        for r in range(max(0, len(rows) - open_rows), len(rows)):
            if room[r] >= n:
                rows[r].append(int(i))
                room[r] -= n
                break
        else:
            rows.append([int(i)])
            room.append(row_len - n)
    return rows


def describe_shapes(shapes: dict, axes: str) -> str:
    """"N padded shapes (axes a×b: k batches, ...)" for the data note."""
    parts = ", ".join(f"{'×'.join(map(str, s))}: {n}" for s, n in shapes.items())
    return f"{len(shapes)} padded shape{'s' if len(shapes) != 1 else ''} ({axes}: {parts})"
