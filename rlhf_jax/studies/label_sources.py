"""Where the active-learning loop's labels come from: simulated annotators around the gold judge,
a preference file whose pairs are the pool (a pair's label is revealed when it is acquired), or
the labelling app, whose database gets the acquired pairs as tasks and gives back their labels
once people have labelled them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rlhf_jax import data, train
from rlhf_jax.labelling.tasks import sample_tasks
from rlhf_jax.sampling import TextSampler
from rlhf_jax.studies.pairs import builtin_pairs, pair_key, pair_record


class LabelSource:
    """Where the loop's labels come from (`cfg.labels` of an `ActiveConfig`): `pool(rng, n,
    exclude)` candidate pairs, `label(pairs, rng, tag)` their records, or None while the
    labelling app has not labelled them yet."""

    def __init__(self, cfg):
        self.cfg, self.sim = cfg, cfg.annotators()
        self.file_labels = {}
        if cfg.labels == "file":
            recs, _ = data.read_records(cfg.labels_file, "pairwise")
            if any(isinstance(r["prompt"], list) for r in recs):
                raise data.DataFormatError(
                    f"{cfg.labels_file}: active learning reads plain-text pairs; this file "
                    "holds conversations (train a reward model on them with the reward stage)")
            for r in recs:  # responses in the file's order: chosen first
                key = (r["prompt"], *sorted(r["responses"]))
                self.file_labels[key] = (r["responses"][0], r["annotator_id"])
            self.file_pairs = [(k[0], k[1], k[2]) for k in self.file_labels]
        # the policy is loaded once; every round's pool reuses it and its compiled sampler
        self.sampler = TextSampler(cfg.policy_dir, max_len=64) if cfg.policy_dir else None

    def pool(self, rng: np.random.Generator, n: int, exclude: set) -> list[tuple]:
        """n candidate pairs (fewer in file mode when the file runs out), none of whose
        `pair_key` is in `exclude`."""
        if self.cfg.labels == "file":
            left = [p for p in self.file_pairs if pair_key(p) not in exclude]
            idx = rng.permutation(len(left))[:n]
            return [left[i] for i in idx]
        if self.sampler is not None:
            prompts = [str(rng.choice(data.builtin.PROMPTS)) for _ in range(n)]
            tasks = sample_tasks(self.cfg.policy_dir, prompts, num_responses=2,
                                 seed=int(rng.integers(2**31)), sampler=self.sampler)
            return [(t["prompt"], *t["responses"]) for t in tasks
                    if pair_key((t["prompt"], *t["responses"])) not in exclude]
        return [p for p in builtin_pairs(rng, n) if pair_key(p) not in exclude]

    def label(self, pairs: list[tuple], rng: np.random.Generator, tag: str):
        """Records of `pairs` in shown order (simulated, from the file, or the app's labels of
        tasks `<tag>-<i>`); None while the app has not labelled them all."""
        if self.cfg.labels == "simulated":
            return self.sim.label(pairs, rng)
        if self.cfg.labels == "file":
            out = []
            for p in pairs:
                chosen, who = self.file_labels[(p[0], *sorted(p[1:]))]
                out.append(pair_record(p, first_chosen=chosen == p[1], annotator=who))
            return out
        return app_labels(self.cfg, pairs, tag)


def open_app_store(cfg):
    """The labelling app's store at `cfg.app_db` (a path: SQLite; or a database URL) with
    `cfg.app_labels_per_task` labels a task; one that cannot be opened (a missing folder, a
    file that is no database, a server down) stops by name."""
    from sqlalchemy.exc import DBAPIError

    from rlhf_jax.labelling.store import LabelStore

    url = cfg.app_db if "://" in cfg.app_db else f"sqlite:///{Path(cfg.app_db).resolve()}"
    try:
        return LabelStore(url, labels_per_task=cfg.app_labels_per_task)
    except DBAPIError as e:
        raise train.ConfigError(f"app_db={cfg.app_db}: cannot open the labelling app's "
                                f"database ({e.orig}); expected a writable SQLite file path "
                                "or a database URL") from None


def app_labels(cfg, pairs: list[tuple], tag: str, source: str = "active_learning"):
    """Put the pairs into the labelling app as tasks (ids `<tag>-<i>`), and return their labels
    once every one has `app_labels_per_task` of them (else None: wait). Each label becomes a
    record in the order that annotator was shown the responses; `source` names the loop in
    each task's meta. A stored task with the same id but other texts (another run sharing the
    database) stops the run rather than borrow its labels, and a database that cannot be
    opened stops it by name (`open_app_store`)."""
    store = open_app_store(cfg)
    try:
        store.add_tasks([{"prompt": p, "responses": [a, b], "id": f"{tag}-{i}",
                          "meta": {"source": source, "run": cfg.run_dir}}
                         for i, (p, a, b) in enumerate(pairs)])
        labs = [lab for lab in store.labels() if lab.task.uid.startswith(f"{tag}-")]
    finally:
        store.close()
    by_task = {}
    for lab in labs:
        by_task.setdefault(lab.task.uid, []).append(lab)
    if sum(len(v) >= cfg.app_labels_per_task for v in by_task.values()) < len(pairs):
        return None
    out = []
    for i, (p, a, b) in enumerate(pairs):
        for lab in by_task[f"{tag}-{i}"]:
            if (lab.task.prompt, lab.task.responses) != (p, [a, b]):
                raise train.ConfigError(
                    f"app_db={cfg.app_db}: task {lab.task.uid} holds other texts than this "
                    "run acquired; another run uses the same task ids")
            if lab.ranks[0] == lab.ranks[1]:
                continue  # a tie says nothing about which is better
            first, second = lab.shown_order
            resp = [a, b]
            out.append(pair_record((p, resp[first], resp[second]),
                                   first_chosen=lab.ranks[first] < lab.ranks[second],
                                   annotator=lab.annotator_id))
    return out
