"""What is live at the peak of a compiled program's schedule, read from XLA's dump of one compile
(`xla_dump_to`): its buffer assignment, live ranges and the JAX ops behind each value
(`benchmarks/memory.py` prints it)."""
from __future__ import annotations

import math
import os
import re


def _hlo_ops(path: str, names: set) -> dict:
    """The JAX op (metadata op_name) behind each named HLO value. A fusion without metadata
    takes the op of its fused computation (its root's, or a rematerialised one inside it);
    a value still without one (a wrapped convert, say) takes its first operand's."""
    info, comp_op, comp = {}, {}, None
    with open(path) as f:
        for line in f:
            if not line.startswith(" "):
                head = re.match(r"(?:ENTRY\s+)?%?([\w.\-]+) .*\{\s*$", line)
                comp = head.group(1) if head else comp
                continue
            m = re.match(r"\s*(ROOT\s+)?%?([\w.\-]+) = [^(]*\(%?([\w.\-]*)", line)
            if not m:
                continue
            op = re.search(r'op_name="([^"]*)"', line)
            op = op.group(1) if op else ""
            if op and (m.group(1) or "rematted_computation" in op
                       or not comp_op.get(comp)):
                if "rematted_computation" not in comp_op.get(comp, ""):
                    comp_op[comp] = op
            called = re.search(r"calls=%?([\w.\-]+)", line)
            info[m.group(2)] = (op, called.group(1) if called else None, m.group(3))

    def resolve(name, hops=0):
        op, called, first = info.get(name, ("", None, None))
        op = op or comp_op.get(called, "")
        return op if op or hops >= 3 or not first else resolve(first, hops + 1)
    return {n: resolve(n) for n in names}


def _short(op: str) -> str:
    op = re.sub(r"block_\d+", "block_N", op)
    op = re.sub(r"^jit\([^)]*\)/", "", op).replace("rematted_computation", "remat")
    return op.replace("transpose(jvp(DecoderModel))", "bwd").replace("jvp(DecoderModel)", "fwd")


def live_at_peak(dump_dir: str, top: int, weight_elements=frozenset()) -> dict:
    """The temporaries live at the peak of the program's schedule, from the dump of one compile
    (`xla_dump_to`): `*buffer-assignment.txt` gives each value of the preallocated temporary
    allocation its size and shape, `*live-range.txt` its live range over the flattened schedule,
    `*cpu_after_optimizations.txt` the JAX op that made it.

    Returns {"live": bytes at the peak, "groups": the largest groups live there (by shape and
    op, layer numbers folded into block_N), "ordered": the peak if the values of at most one
    layer's backward pass were live at a time, "ordered_groups": the groups live then}.

    "ordered" estimates what a schedule that keeps jax.checkpoint's barriers holds. The backward
    of a rematerialised block recomputes its forward behind an optimization barrier on the
    block's inputs and incoming cotangent, so nothing of layer k's backward can start before
    the cotangent of layer k + 1 exists. XLA:GPU removes the barriers after scheduling; XLA:CPU
    removes them before (OptimizationBarrierExpander runs ahead of its scheduler), so the CPU
    schedule may recompute every layer right after the forward pass and keep it all live. The
    estimate counts, at every point of the schedule, the values of the backward of checkpointed
    blocks (op names `transpose(...)/checkpoint/.../block_<k>/`) of one layer only — the
    largest — except those with one of `weight_elements` (memory.py passes the weights'
    per-device element counts: a layer's gradients reduced to this device's shard, which
    legitimately accumulate over layers until the optimiser step). A layer's full-size values
    (weights gathered for its recomputation, its unreduced gradients, activations that happen
    to have a whole weight's size) count as that layer's: a GPU schedule gathers a layer's
    weights when it needs them and reduce-scatters its gradients when it has made them.
    """
    import numpy as np

    def one(pattern):
        found = [f for f in os.listdir(dump_dir) if f.endswith(pattern)]
        return os.path.join(dump_dir, found[0]) if found else None
    files = [one("buffer-assignment.txt"), one("live-range.txt"),
             one("cpu_after_optimizations.txt")]
    if None in files:
        return {"live": 0, "groups": [], "ordered": 0, "ordered_groups": []}
    sizes, temp = {}, False
    with open(files[0]) as f:
        for line in f:
            if line.startswith("allocation"):
                temp = "preallocated-temp" in line
            # a value is an instruction and, for a tuple's elements, a shape index: X, X{1}
            m = re.match(r" value: <\d+ ([\w.\-]+)(\{[\d,]*\})? @\S+> \(size=(\d+),"
                         r"offset=\d+\): (\S+)", line)
            if m and temp:
                sizes[m.group(1) + (m.group(2) or "{}")] = (int(m.group(3)),
                                                            m.group(4).split("{")[0])
    ranges = []  # (value, instruction, first, last)
    with open(files[1]) as f:
        for line in f:
            m = re.match(r"\s+([\w.\-]+)(\{[\d,]*\}):(\d+)-(\d+)$", line)
            if m and m.group(1) + m.group(2) in sizes:
                ranges.append((m.group(1) + m.group(2), m.group(1), int(m.group(3)),
                               int(m.group(4))))
    if not ranges:
        return {"live": 0, "groups": [], "ordered": 0, "ordered_groups": []}
    ops = _hlo_ops(files[2], {r[1] for r in ranges})
    steps = max(r[3] for r in ranges) + 2
    layers: dict = {}  # (model path, layer) of a layer's backward values -> row of `remat`
    rows = []
    for value, name, a, b in ranges:
        layer = re.search(r"transpose\(.*?/checkpoint/(?:.*/)?block_(\d+)/", ops.get(name, ""))
        shape = sizes[value][1]
        elements = 0 if shape.startswith("(") else math.prod(
            int(d) for d in re.findall(r"\d+", shape.split("[", 1)[1]))
        # a gradient all-reduced and kept at full size outlives its layer on any backend
        if layer and elements not in weight_elements and not name.startswith("all-reduce"):
            key = (ops[name][:layer.start()], layer.group(1))
            rows.append(layers.setdefault(key, len(layers)))
        else:
            rows.append(-1)
    other = np.zeros(steps, np.int64)
    remat = np.zeros((max(len(layers), 1), steps), np.int64)
    for (value, _, a, b), row in zip(ranges, rows):
        target = other if row < 0 else remat[row]
        target[a] += sizes[value][0]
        target[b + 1] -= sizes[value][0]
    other, remat = np.cumsum(other), np.cumsum(remat, axis=1)
    live_t, ordered_t = other + remat.sum(0), other + remat.max(0)

    def groups_at(t: int, layer_row=None) -> list[dict]:
        found: dict = {}
        for (value, name, a, b), row in zip(ranges, rows):
            if a <= t <= b and (layer_row is None or row in (-1, layer_row)):
                op = _short(ops.get(name, ""))
                size, shape = sizes[value]
                g = found.setdefault((shape, op), {"shape": shape, "op": op[-90:] or "(fusion)",
                                                   "bytes": 0, "count": 0})
                g["bytes"] += size
                g["count"] += 1
        return sorted(found.values(), key=lambda g: -g["bytes"])[:top]

    at, at_ordered = int(np.argmax(live_t)), int(np.argmax(ordered_t))
    return {"live": int(live_t[at]), "groups": groups_at(at),
            "ordered": int(ordered_t[at_ordered]),
            "ordered_groups": groups_at(at_ordered, int(np.argmax(remat[:, at_ordered])))}
