"""Simulated users label by their known weights over the packaged judges (a personalised reward
learned from their labels is measured by the study's test, tests/integration/
test_personal_study.py, which runs it on one device as a user does)."""
import numpy as np
import pytest

from rlhf_jax.eval.scorers import profanity_probability, repetition_fraction, vader_compound
from rlhf_jax.studies.users import USERS, SimulatedUsers, judge_features, user_pairs


def test_judges_are_the_packaged_scorers():
    texts = ["the cat was lovely", "awful awful rude ugly", "so"]
    g = judge_features(texts)
    for row, t in zip(g, texts):
        np.testing.assert_allclose(row, [vader_compound("", t), -profanity_probability("", t),
                                         len(t.split()) / 10, 1 - repetition_fraction("", t)],
                                   rtol=1e-12)
    assert len(USERS) >= 8


def test_labels_follow_each_users_bradley_terry_probability():
    users = SimulatedUsers(temperature=0.5)
    pairs = user_pairs(np.random.default_rng(0), 600)
    for user in ("positive", "negative"):
        z = users.utility_delta(user, pairs) / 0.5
        labels = users.label(user, pairs, np.random.default_rng(1))
        first = np.array([r["ranks"] == [0, 1] for r in labels])
        p = 1 / (1 + np.exp(-z))
        se = np.sqrt(np.sum(p * (1 - p))) / len(p)
        assert abs(first.mean() - p.mean()) < 4 * se
        assert {r["annotator_id"] for r in labels} == {user}
    # users who disagree: the positive and the negative user rank most pairs oppositely
    pos, neg = users.utility_delta("positive", pairs), users.utility_delta("negative", pairs)
    assert np.mean(np.sign(pos) != np.sign(neg)) > 0.8
    with pytest.raises(ValueError, match="user 'x': 2 weights"):
        SimulatedUsers(weights={"x": (1.0, 2.0)})
