"""How fast the entry scripts answer: `--help`, and a mistyped config key reported as an error,
for every script in experiments/, against TRL's command line (`trl sft --help`, `trl dpo
--help`) measured in the same run.

Each command runs in a fresh process (what a user waits for), `--repeats` times; the median
wall time is reported. The scripts read and check their config before importing JAX, TFDS or
Orbax (lazy package exports, config dataclasses in light modules), so the time is Python's
start and the config machinery. Last line: `cli_startup: ratio=<TRL's median ÷ our slowest
script's median> ...`.
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import report

ROOT = Path(__file__).resolve().parents[1]


def seconds(cmd, repeats: int) -> tuple[float, int]:
    """Median wall seconds of `cmd` and its exit status."""
    times, code = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        code = subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode
        times.append(time.perf_counter() - start)
    return statistics.median(times), code


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ours = {}
    for script in sorted((ROOT / "experiments").glob("*.py")):
        help_s, help_code = seconds([sys.executable, str(script), "--help"], args.repeats)
        typo_s, typo_code = seconds([sys.executable, str(script), "--config.no_such_key=1"],
                                    args.repeats)
        ours[script.name] = (help_s, typo_s)
        print(f"{script.name:28s} --help {help_s:5.2f} s (exit {help_code}); a mistyped key "
              f"{typo_s:5.2f} s (exit {typo_code})", flush=True)
    trl = Path(sys.executable).with_name("trl")
    peer = {}
    for sub in ("sft", "dpo"):
        peer[sub], code = seconds([str(trl), sub, "--help"], args.repeats)
        print(f"peer: trl {sub} --help {peer[sub]:.2f} s (exit {code})", flush=True)
    slowest = max(max(v) for v in ours.values())
    peer_s = statistics.median(peer.values())
    report("cli_startup", peer_s / slowest, device="cpu", dtype="-", ours_slowest_s=slowest,
           ours_median_help_s=statistics.median(v[0] for v in ours.values()),
           peer_help_s=peer_s, scripts=len(ours))


if __name__ == "__main__":
    main()
