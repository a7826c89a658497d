"""Export stored labels as the project's preference JSONL kinds (`rlhf_jax.data.read_records`)."""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

from rlhf_jax.labelling.store import Label

KINDS = ("pairwise", "ranking", "rating")


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def _common(lab: Label) -> dict:
    return {"annotator_id": lab.annotator_id, "rationale": lab.rationale,
            "task_id": lab.task.uid, "label_id": lab.id,
            "shown_order": lab.shown_order, "shown_at": _iso(lab.shown_at),
            "submitted_at": _iso(lab.submitted_at)}


def export_records(labels: Sequence[Label], kind: str) -> tuple[list[dict], dict]:
    """(records, counts) of one kind, each carrying `annotator_id`, `rationale`, the task id,
    the shown order and the timestamps:

    - "pairwise": two-response tasks not judged a tie → {"prompt", "chosen", "rejected"};
    - "ranking": every label that prefers something → {"prompt", "responses", "ranks"}
      (0 = best, ties kept);
    - "rating": every rated response → {"prompt", "response", "rating"}.

    A task whose prompt is a conversation exports conversational records: the prompt as its
    messages and each response as an assistant turn (`data.read_records` reads both forms).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    out, counts = [], {"labels": len(labels), "records": 0, "ties_left_out": 0,
                       "not_pairwise": 0}
    for lab in labels:
        t, ranks = lab.task, lab.ranks
        conversation = t.conversation
        prompt = t.prompt if conversation is None else conversation
        reply = (lambda text: text) if conversation is None else (  # noqa: E731
            lambda text: [{"role": "assistant", "content": text}])
        if kind == "pairwise":
            if len(t.responses) != 2:
                counts["not_pairwise"] += 1
                continue
            if ranks[0] == ranks[1]:
                counts["ties_left_out"] += 1
                continue
            best = 0 if ranks[0] < ranks[1] else 1
            out.append({"prompt": prompt, "chosen": reply(t.responses[best]),
                        "rejected": reply(t.responses[1 - best]), **_common(lab)})
        elif kind == "ranking":
            if len(set(ranks)) < 2:
                counts["ties_left_out"] += 1
                continue
            out.append({"prompt": prompt, "responses": [reply(r) for r in t.responses],
                        "ranks": ranks, **_common(lab)})
        else:
            for i, (resp, rating) in enumerate(zip(t.responses, lab.ratings)):
                if rating is not None:
                    out.append({"prompt": prompt, "response": reply(resp), "rating": rating,
                                "response_index": i, **_common(lab)})
    counts["records"] = len(out)
    return out, counts


def write_jsonl(path, records: Sequence[dict]) -> None:
    """Write records as JSONL atomically (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def leave_out(labels: Sequence[Label], annotators: Iterable[str]) -> tuple[list[Label], dict]:
    """(the labels not by `annotators`, {"annotators": those ids, sorted, "labels": how many
    labels were left out})."""
    skip = set(annotators)
    kept = [lab for lab in labels if lab.annotator_id not in skip]
    return kept, {"annotators": sorted(skip), "labels": len(labels) - len(kept)}


def export_all(labels: Sequence[Label], out_dir, likert: tuple[int, int],
               leave_out_annotators: Optional[Iterable[str]] = None) -> dict:
    """Write `pairwise.jsonl`, `ranking.jsonl` and `rating.jsonl` (each only if it has records)
    and `export.json` (counts, and the rating range to pass as `rating_range`) to `out_dir`.
    With `leave_out_annotators` (e.g. `store.quarantined()`), their labels are not written and
    the manifest's "left_out" says whose and how many."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"rating_range": list(likert), "files": {}}
    if leave_out_annotators is not None:
        labels, manifest["left_out"] = leave_out(labels, leave_out_annotators)
    for kind in KINDS:
        records, counts = export_records(labels, kind)
        if records:
            write_jsonl(out_dir / f"{kind}.jsonl", records)
            manifest["files"][kind] = {"file": f"{kind}.jsonl", **counts}
    (out_dir / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
