"""The table `benchmarks/memory.py` prints: XLA's memory analysis per device and step, the
estimates beside it, and what dominates each step's memory."""
from __future__ import annotations

GIB = 2.0 ** 30


def gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def dominant(row: dict) -> str:
    """The largest part of the device's total: the trained state (parameters, AdamW moments and
    the gradients, ≈ parameters), the frozen models, or the temporaries (and of those, the
    largest group live at the peak)."""
    training = row["step"] in ("reward", "sft", "ppo_update")
    parts = {"trained state (params+moments+grads)":
             (2 * row["trained"] + row["opt"]) if training else row["trained"] + row["opt"],
             "frozen models": row["frozen"], "temporaries": row["temp"]}
    name = max(parts, key=parts.get)
    text = f"{name} ({gib(parts[name])})"
    if row["top"]:
        t = row["top"][0]
        text += (f"; largest at the temp peak: {t['count']} x {t['shape']} = {gib(t['bytes'])} "
                 f"({t['op']})")
    return text


def est(row: dict, key: str) -> str:
    return "-" if row.get(key) is None else gib(row[key])


def print_table(rows: list[dict]) -> None:
    head = (f"{'size':<5}{'dev':>4} {'step':<11}{'args':>8}{'out':>8}{'alias':>8}{'temp':>8}"
            f"{'peak':>8}{'+resid':>8}{'total':>8} |{'temp*':>7}{'total*':>8}{'compile':>9}")
    print("GiB per device (XLA:CPU's memory analysis); peak = args + out - alias + temp; "
          "+resid = live state the program does not take; total = peak + resid.\n"
          "temp*, total*: estimates with one layer's backward values live at a time, as in a "
          "schedule that keeps jax.checkpoint's barriers (see live_at_peak)")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['size']:<5}{r['devices']:>4} {r['step']:<11}{gib(r['args']):>8}"
              f"{gib(r['out']):>8}{gib(r['alias']):>8}{gib(r['temp']):>8}{gib(r['peak']):>8}"
              f"{gib(r['resident']):>8}{gib(r['total']):>8} |{est(r, 'ordered_temp'):>7}"
              f"{est(r, 'ordered_total'):>8}{r['compile_s']:>8.1f}s")
    print("\nwhat dominates (GiB per device):")
    for r in rows:
        an = ", ".join(f"{k}={gib(v)}" for k, v in r["analytic"].items())
        print(f"  {r['size']} x{r['devices']} {r['step']}: {dominant(r)}")
        print(f"      trained params {gib(r['trained'])}, AdamW moments {gib(r['opt'])}, frozen "
              f"models {gib(r['frozen'])}; analytic: {an}")
        if r["top"]:
            print(f"      temporaries live at the schedule's peak ({gib(r['live_temp'])}):")
            for t in r["top"]:
                print(f"        {gib(t['bytes']):>7} = {t['count']:>3} x {t['shape']:<22} "
                      f"{t['op']}")
        if r.get("ordered_top") and r["ordered_temp"] < r["temp"]:
            print(f"      at the estimate's peak ({gib(r['ordered_temp'])}), one layer's "
                  "backward values live:")
            for t in r["ordered_top"]:
                print(f"        {gib(t['bytes']):>7} = {t['count']:>3} x {t['shape']:<22} "
                      f"{t['op']}")
