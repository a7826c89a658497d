"""The admin page's numbers on labels whose agreement, position bias and timing are known."""
import random

import krippendorff
import numpy as np
import pytest

from rlhf_jax.labelling import LabelStore
from rlhf_jax.labelling.stats import pair_judgments, position_counts, summarise
from tests.labelling.conftest import simple_tasks


@pytest.fixture
def labelled(tmp_path):
    """4 annotators label 5 two-response tasks: a, b and c always prefer response 0, d always
    response 1; annotator k takes k + 1 seconds a label and rates response 0 with 5 + (k == 3)."""
    store = LabelStore(f"sqlite:///{tmp_path / 'l.sqlite'}", labels_per_task=4)
    names = "abcd"
    for n in names:
        store.add_annotator(n)
    store.add_annotator("root", "admin")
    store.add_tasks(simple_tasks(5))
    shown = []
    for k, n in enumerate(names):
        while (a := store.next_assignment(n, random.Random(k), now=100.0)) is not None:
            ranks = [0, 1] if n != "d" else [1, 0]
            store.submit(a.id, n, ranks, ratings=[5 + (n == "d"), None], now=100.0 + k + 1)
            shown.append((n, a.shown_order))
    yield store, shown
    store.close()


def test_summary_of_known_labels(labelled):
    store, shown = labelled
    s = summarise(store, store.labels())
    assert (s["tasks"], s["labels"], s["tasks_complete"], s["preference_units"]) == (5, 20, 5, 5)
    # each unit: a, b, c say +1 and d says −1 → 3 of 6 rater pairs agree
    assert s["pairwise_agreement"] == pytest.approx(0.5)
    matrix = np.array([[1.0] * 5, [1.0] * 5, [1.0] * 5, [-1.0] * 5])
    ref = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal")
    assert s["krippendorff_alpha"] == pytest.approx(ref, rel=1e-12)
    # Fleiss (1971): P_i = 0.5, p = (0.75, 0.25): κ = (0.5 − 0.625) / (1 − 0.625) = −1/3
    assert s["fleiss_kappa"] == pytest.approx(-1 / 3) and s["fleiss_units"] == 5
    rows = {r["annotator"]: r for r in s["annotators"]}
    assert set(rows) == set("abcd")  # the admin is not an annotator
    for k, n in enumerate("abcd"):
        assert rows[n]["labels"] == 5 and rows[n]["median_s"] == pytest.approx(k + 1)
        assert rows[n]["agreement_with_others"] == (0.0 if n == "d" else 1.0)
    # position bias, counted by hand from the stored orders
    first = sum((order[0] == 0) == (n != "d") for n, order in shown)
    assert s["position_bias"]["n"] == 20 and s["position_bias"]["rate"] == first / 20
    for n in "abcd":
        mine = [(order[0] == 0) == (n != "d") for m, order in shown if m == n]
        assert rows[n]["first_shown_preferred"] == pytest.approx(np.mean(mine))
    # ratings: only response 0 is rated, 5 by three annotators and 6 by one
    ratings = np.array([[5.0] * 5] * 3 + [[6.0] * 5])
    assert s["rating_units"] == 5
    assert s["rating_alpha"] == pytest.approx(krippendorff.alpha(
        reliability_data=ratings, level_of_measurement="interval"), rel=1e-12)


def test_rankings_as_pairwise_judgments_and_position_counts(labelled):
    store, _ = labelled
    lab = store.labels()[0]
    three = lab.__class__(**{**lab.__dict__, "ranks": [2, 0, 0], "shown_order": [2, 1, 0]})
    assert pair_judgments(three) == {(0, 1): -1, (0, 2): -1, (1, 2): 0}
    assert position_counts([three]) == (0, 0)  # rankings of three are not binomial trials
    tie = lab.__class__(**{**lab.__dict__, "ranks": [0, 0], "shown_order": [1, 0]})
    second_won = lab.__class__(**{**lab.__dict__, "ranks": [0, 1], "shown_order": [1, 0]})
    first_won = lab.__class__(**{**lab.__dict__, "ranks": [1, 0], "shown_order": [1, 0]})
    assert position_counts([tie, second_won, first_won, first_won]) == (2, 3)
