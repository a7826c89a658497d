"""What the reports print, on any run: table cells that stay one valid row whatever a response
holds, KL estimates that cannot mislead (k3 never negative, no "-0.000"), plots that keep
every point, and a headline that says when the gold score rose and then fell."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.eval import report as R
from rlhf_jax.eval.policy import sequence_kl

NASTY = "line one\nline two\r\nthree | four \\| five\x00six\x07\x7f\x85\u2028<b>&\ud800 tab\tend"


def test_sequence_kl_against_a_float64_loop():
    rng = np.random.default_rng(0)
    logp = np.log(rng.uniform(0.05, 1, (3, 6))).astype(np.float32)
    ref = np.log(rng.uniform(0.05, 1, (3, 6))).astype(np.float32)
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5], np.int32)
    k1, k3 = (np.asarray(x) for x in sequence_kl(jnp.asarray(logp), jnp.asarray(ref),
                                                  jnp.asarray(mask)))
    for b in range(3):
        want1 = want3 = 0.0
        for t in range(6):
            if mask[b, t]:
                r = np.exp(np.float64(ref[b, t]) - np.float64(logp[b, t]))
                want1 += -np.log(r)
                want3 += (r - 1) - np.log(r)
        assert k1[b] == pytest.approx(want1, rel=1e-5) and k3[b] == pytest.approx(want3, rel=1e-5)
    assert np.all(k3 >= 0)
    # tiny log-ratios: k3 ≈ (log r)² / 2 (float32 exp(x) − 1 − x would lose it entirely)
    tiny = sequence_kl(jnp.zeros((1, 1)), jnp.full((1, 1), 1e-4), jnp.ones((1, 1)))[1]
    assert float(tiny[0]) == pytest.approx(0.5e-8, rel=1e-2)


def test_k1_and_k3_estimate_the_exact_kl_of_a_categorical():
    """Schulman 2020: both are unbiased for KL(p ‖ q) over samples of p; k3 never negative."""
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(8))
    q = 0.9 * p + 0.1 * rng.dirichlet(np.ones(8))  # near the reference
    exact = float(np.sum(p * np.log(p / q)))
    y = rng.choice(8, size=(20000, 1), p=p)
    k1, k3 = (np.asarray(x) for x in sequence_kl(jnp.asarray(np.log(p)[y], jnp.float32),
                                                  jnp.asarray(np.log(q)[y], jnp.float32),
                                                  jnp.ones((20000, 1))))
    for k in (k1, k3):
        assert abs(k.mean() - exact) < 4 * k.std() / np.sqrt(len(k))
    assert k3.min() >= 0 and k1.min() < 0  # single samples of k1 go negative
    assert k3.std() < k1.std()  # close to the reference, k3 varies less


def test_table_text_keeps_a_cell_one_valid_row():
    cell = R.table_text(NASTY)
    assert "\n" not in cell and "\r" not in cell and "\x00" not in cell and "\x85" not in cell
    assert cell.count("<br>") == 4 and "&lt;b>&amp;" in cell and "\ufffd" in cell
    # every pipe is escaped by an odd number of backslashes: none ends the cell
    for i, c in enumerate(cell):
        if c == "|":
            run = len(cell[:i]) - len(cell[:i].rstrip("\\"))
            assert run % 2 == 1, cell
    cell.encode("utf-8")  # a lone surrogate would fail here
    assert R.line_text("a\nb\u2029c\x00") == "a b c"
    assert R.prompt_cell([{"role": "us|er", "content": "hi\nthere"}]) == \
        "**us\\|er:** hi<br>there"


def test_number_never_prints_negative_zero():
    assert R.number(-0.0001) == "0.000" and R.number(-0.0001, signed=True) == "+0.000"
    assert R.number(-0.0006) == "-0.001" and R.number(0.25, 2, signed=True) == "+0.25"
    assert R.number(float("nan")) == "—" and R.number(None) == "—"
    assert R.mean_se_text({"mean": -1e-9, "stderr": 1e-9}) == "0.000 ± 0.000"


def test_data_limits_keep_every_point():
    lo, hi = R.data_limits([0.2, 1.0, float("nan")], 0.3, 1.0)
    assert lo < 0.2 and hi > 1.0
    assert R.data_limits([], 0.3, 1.0)[0] < 0.3


def assert_tables_are_whole(text: str) -> None:
    """Every row of each Markdown table (consecutive lines starting with |) has as many cells
    as its header, counting only unescaped pipes."""
    blocks, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line.replace("\\\\", "").replace("\\|", ""))
        elif block:
            blocks.append(block)
            block = []
    assert blocks
    for block in blocks:
        assert len({row.count("|") for row in block}) == 1, block


def _evaluation(gold_after, response=NASTY, kl=-0.0001):
    def summ(g):
        return {"gold": {"mean": g, "stderr": 0.02}, "proxy": {"mean": 0.5, "stderr": 0.1},
                "kl": {"mean": kl, "stderr": 0.01}, "kl_k3": {"mean": 0.0001, "stderr": 0.0001},
                "length": {"mean": 5.0, "stderr": 0.1}, "eos_fraction": 1.0, "samples": 32}

    rows = [{"prompt": [{"role": "user", "content": "a\nb|c"}], "response": response,
             "gold": -0.0001, "proxy": 1.0}]
    return {"before": {"summary": summ(0.2), "rows": rows},
            "after": {"summary": summ(gold_after), "rows": rows}}


def _report(tmp_path, policy_rows, ev, **info):
    return R.write_report(
        tmp_path / "report.md", tmp_path / "plots",
        info={"seed": 0, "stage_seconds": {"ppo": 1.0}, "preference_file": "mine.jsonl",
              "before_label": "before (initial policy)", "data": ["a\nb\x00"], **info},
        reward_rows=[{"step": s, "reward/accuracy": 1.0} for s in range(1, 5)]
        + [{"step": 4, "eval/accuracy": 1.0}],
        reward_summary={"eval/accuracy": 1.0, "eval/pairs": 80, "eval/loss": 0.1,
                        "eval/ece": 0.01}, policy_rows=policy_rows, evaluation=ev,
        gold_key="reward_terms/vader").read_text()


def _rows(gold):
    return [{"step": i + 1, "kl/sequence": 0.3 * i, "score/reward_model": 0.01 * i,
             "reward_terms/vader": float(g)} for i, g in enumerate(gold)]


def test_report_stays_valid_text_and_markdown(tmp_path):
    text = _report(tmp_path, _rows(np.linspace(0.2, 0.4, 20)), _evaluation(0.4))
    raw = (tmp_path / "report.md").read_bytes()
    assert b"\x00" not in raw and all(c >= 32 or c in (9, 10) for c in raw)
    assert_tables_are_whole(text)
    assert "-0.000" not in text and "initial policy policy" not in text
    assert "(initial policy, where PPO started)" in text
    assert "| KL, k1 | KL, k3 (≥ 0) |" in text and "Approximating KL divergence" in text
    assert "Over-optimisation" not in text  # a steady rise


def test_reward_plot_keeps_a_perfect_accuracy(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    limits = {}
    close = plt.close

    def record(fig):
        limits[fig.axes[0].get_title()] = fig.axes[0].get_ylim()
        close(fig)

    monkeypatch.setattr(plt, "close", record)
    _report(tmp_path, _rows(np.linspace(0.2, 0.4, 20)), _evaluation(0.4))
    low, high = limits["Reward model: agreement with the annotators"]
    assert low <= 0.3 and high > 1.0  # the held-out accuracy of 1.0 is inside the axes


def test_headline_says_when_gold_rose_and_fell(tmp_path):
    t = np.arange(150)
    gold = np.where(t < 40, 0.2 + 0.55 * t / 40, 0.75 - 0.6 * (t - 40) / 110)
    gold = gold + np.random.default_rng(0).normal(0, 0.05, 150)
    text = _report(tmp_path, _rows(gold), _evaluation(0.12))
    head = next(line for line in text.splitlines() if line.startswith("Gold improvement"))
    assert "**Over-optimisation: the gold score rose and then fell during PPO.**" in head
    assert "peaked at 0.7" in head and "ended at 0." in head and "iteration 150" in head
    assert "0.120 ± 0.020 in the evaluation, below the peak" in head and "Welch" in head
    # the same trajectory, but the evaluation finds the final policy at the peak: said so
    text = _report(tmp_path, _rows(gold), _evaluation(0.75))
    assert "does not confirm the fall" in text
    # a run without the fall: only its gain
    text = _report(tmp_path, _rows(0.2 + t / 300), _evaluation(0.7))
    head = next(line for line in text.splitlines() if line.startswith("Gold improvement"))
    assert head == "Gold improvement: **+0.500** (0.200 → 0.700)."


def test_warnings_and_a_custom_loss_are_in_the_report(tmp_path):
    warning = "ppo: 97% of the 32 responses reached | max_new_tokens=10\nwithout an end token"
    text = _report(tmp_path, _rows(np.linspace(0.2, 0.4, 20)), _evaluation(0.4),
                   warnings=[warning], custom_loss="my_losses:gspo")
    head = text[:text.index("## Data")]
    assert "## Warnings" in head and "97% of the 32 responses" in head
    assert_tables_are_whole(text)
    assert "PPO with the loss `my_losses:gspo`" in text
    plain = _report(tmp_path, _rows(np.linspace(0.2, 0.4, 20)), _evaluation(0.4))
    assert "## Warnings" not in plain
