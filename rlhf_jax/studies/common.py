"""What the studies share: comma-separated settings, the study's tokenizer,
runs cached as JSON (a stopped study resumes from what it has), the refusal of a directory that
holds another config's results, mean ± standard error over seeds, plots with ±1 s.e. bands, the
first budget that reaches a target, and the report files (`report.md`, `results.json`)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from rlhf_jax import data, eval as rl_eval, models
from rlhf_jax.stages.layout import check_run_config, record_run_config, write_json


def int_list(spec: str) -> list[int]:
    """The integers of a comma-separated setting ("0,1,2")."""
    return [int(s) for s in spec.split(",") if s.strip()]


def float_list(spec: str) -> list[float]:
    """The numbers of a comma-separated setting ("0.15,0.3")."""
    return [float(s) for s in spec.split(",") if s.strip()]


def mean_se(values) -> tuple[float, float]:
    """(mean, standard error) of `eval.metrics.mean_se`: sample std / √n, 0 for one value."""
    m = rl_eval.mean_se(values)
    return m["mean"], m["stderr"]


def study_tokenizer(root: Path):
    """The tokenizer of the built-in task in `<root>/tokenizer`, trained there once."""
    path = root / "tokenizer"
    return (models.load_tokenizer(path) if (path / "tokenizer.json").is_file()
            else data.builtin.train_tokenizer(path))


def cached_json(path: Path, fn):
    """fn()'s JSON result, computed once (a stopped study resumes from what it has)."""
    if path.is_file():
        return json.loads(path.read_text())
    out = fn()
    write_json(path, out)
    return out


def band_plot(path: Path, series: dict, *, xlabel: str, ylabel: str, title: str,
              logx: bool = False, hline=None) -> None:
    """Lines with ±1 s.e. bands: series = {name: (x, mean, se)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for i, (name, (x, m, se)) in enumerate(series.items()):
        x, m, se = (np.asarray(a, np.float64) for a in (x, m, se))
        ax.plot(x, m, "o-", ms=3, lw=1.5, color=f"C{i}", label=name)
        ax.fill_between(x, m - se, m + se, color=f"C{i}", alpha=0.2)
    if hline is not None:
        ax.axhline(hline[0], color="k", ls=":", lw=1, label=hline[1])
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def first_reaching(x: Sequence[float], y: Sequence[float], target: float):
    """The smallest x where y reaches `target`, linearly interpolated between grid points;
    None if it never does. Reached at the first grid point, the answer is only a bound (≤ x₀)."""
    for i, (xi, yi) in enumerate(zip(x, y)):
        if yi >= target:
            if i == 0:
                return float(xi)
            x0, y0 = x[i - 1], y[i - 1]
            return float(x0 + (target - y0) / (yi - y0) * (xi - x0))
    return None


def fmt_reached(v, digits: int = 0, first=None) -> str:
    """A budget from `first_reaching` for a table: "not reached", or "≤ x" where it is only a
    bound (reached at the first grid point `first`)."""
    if v is None:
        return "not reached"
    return f"≤ {v:.{digits}f}" if first is not None and v <= first else f"{v:.{digits}f}"


def start_study(root: Path, cfg) -> None:
    """Refuse a study directory that holds results of a different config (they would be read
    back as this one's)."""
    root.mkdir(parents=True, exist_ok=True)
    config = dataclasses.asdict(cfg)
    check_run_config(root / "config.json", config)
    record_run_config(root / "config.json", config)


def write_report(root: Path, lines: list[str], results: dict) -> Path:
    """Write `report.md` (the lines) and `results.json` into `root`; return the report's path."""
    (root / "results.json").write_text(json.dumps(results, indent=2, default=str))
    report = root / "report.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"report: {report}", flush=True)
    return report
