"""Multi-objective reward models: records name the objective a label is about, the loss trains
that objective's head (every head for a label about none, the head named like a per-aspect
rating by regression), each objective's held-out accuracy is reported, and PPO scores with a
weighted combination of the heads."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rlhf_jax import data, models, ppo, reward, stages, train
from rlhf_jax.data import PreferenceBatch
from rlhf_jax.reward import RewardLossConfig

ROOT = Path(__file__).resolve().parents[2]


def test_names_and_weights_are_checked():
    assert reward.parse_objectives(" helpful, harmless ,") == ("helpful", "harmless")
    with pytest.raises(ValueError, match="distinct"):
        reward.parse_objectives("a,a")
    np.testing.assert_array_equal(reward.objective_weights("harmless=2,helpful=0.5",
                                                           ("helpful", "harmless", "concise")),
                                  [0.5, 2.0, 0.0])
    with pytest.raises(ValueError, match=r"over the reward model's objectives \['helpful'\]"):
        reward.objective_weights("kind=1", ("helpful",))
    with pytest.raises(ValueError, match="gives 2 heads, but num_reward_outputs=3"):
        stages.RewardConfig(objectives="a,b", num_reward_outputs=3)
    with pytest.raises(ValueError, match="one weight per head"):
        reward.reward_model_scorer(models.preset("tiny-llama"), 3, weights=(1.0, 2.0))


@pytest.mark.parametrize("rating_about", [-1, 1])
def test_loss_equals_its_formula(rating_about):
    cfg = models.preset("tiny-llama")
    model = models.DecoderModel(cfg, heads=("reward",), num_reward_outputs=3)
    params = models.init_params(model, jax.random.key(0))
    rng = np.random.default_rng(0)
    b, t = 6, 7
    # rows: comparison about objective "b" (data index 1 → head 2), about none, about "a"
    # (head 0), a tie, a single rated response with aspect "c" (head 1) rated, padding
    objectives, data_objectives, aspects = ("a", "c", "b"), ("a", "b"), ("c", "z")
    tokens = rng.integers(1, 50, (b, 2, t)).astype(np.int32)
    valid = np.array([[1, 1], [1, 1], [1, 1], [1, 1], [1, 0], [1, 1]], np.int32)
    batch = PreferenceBatch(
        tokens=tokens, mask=np.ones((b, 2, t), np.int32),
        ranks=np.array([[0, 1], [1, 0], [0, 1], [0, 0], [0, 99], [0, 1]], np.int32),
        valid=valid, is_comparison=np.array([1, 1, 1, 1, 0, 1], np.int32),
        rating=np.array([0, 0, 0, 0, 0.4, 0], np.float32),
        has_rating=np.array([0, 0, 0, 0, 1, 0], np.int32), annotator=np.full(b, -1, np.int32),
        weight=np.array([1, 1, 1, 1, 1, 0], np.float32), index=np.arange(b, dtype=np.int32),
        aspects=np.array([[np.nan, 0.1]] * 4 + [[-0.6, np.nan], [np.nan, np.nan]], np.float32),
        objective=np.array([1, -1, 0, 0, rating_about, 1], np.int32), prompt_len=3)
    loss_cfg = RewardLossConfig(scalar_weight=0.5, centering_coef=0.1)
    total, (count, metrics) = reward.make_objective_reward_loss(
        model, loss_cfg, objectives, data_objectives=data_objectives, aspects=aspects)(
        params, batch, None)
    r = np.asarray(reward.batch_rewards(model, params, batch), np.float64)  # [B, 2, 3]
    head_of_row = {0: [2], 1: [0, 1, 2], 2: [0], 3: [0]}
    want, correct = 0.0, 0.0
    for i, heads in head_of_row.items():
        c, j = (0, 1) if batch.ranks[i, 0] <= batch.ranks[i, 1] else (1, 0)
        for h in heads:
            if batch.ranks[i, 0] != batch.ranks[i, 1]:  # a tie has no preference
                want += np.logaddexp(0, -(r[i, c, h] - r[i, j, h]))
            want += 0.1 * (r[i, 0, h] + r[i, 1, h]) ** 2
        if batch.ranks[i, 0] != batch.ranks[i, 1]:
            pick = r[i, :, heads[0]] if len(heads) == 1 else r[i].mean(-1)
            correct += pick[c] > pick[j]
    if rating_about < 0:  # the rated response: head 1 ("c") to its named rating −0.6, heads
        # 0 and 2 to the overall 0.4
        want += 0.5 * ((r[4, 0, 1] + 0.6) ** 2 + (r[4, 0, 0] - 0.4) ** 2
                       + (r[4, 0, 2] - 0.4) ** 2)
    else:  # a rating about objective "b" (head 2) trains that head alone
        want += 0.5 * (r[4, 0, 2] - 0.4) ** 2
    np.testing.assert_allclose(float(total), want / 3, rtol=1e-5)
    assert float(count) == 5  # four comparisons and one rating
    assert float(metrics["reward/accuracy"]) == correct


def test_one_objective_is_the_single_reward_loss():
    """With one objective and no objective fields the loss is `reward.make_reward_loss`'s."""
    cfg = models.preset("tiny-llama")
    model = models.DecoderModel(cfg, heads=("reward",))
    params = models.init_params(model, jax.random.key(2))
    rng = np.random.default_rng(1)
    b, t = 6, 7
    batch = PreferenceBatch(
        tokens=rng.integers(1, 50, (b, 2, t)).astype(np.int32),
        mask=np.ones((b, 2, t), np.int32),
        ranks=np.array([[0, 1], [1, 0], [0, 1], [0, 0], [0, 99], [0, 1]], np.int32),
        valid=np.array([[1, 1]] * 4 + [[1, 0], [1, 1]], np.int32),
        is_comparison=np.array([1, 1, 1, 1, 0, 1], np.int32),
        rating=np.array([0, 0, 0, 0, 0.4, 0], np.float32),
        has_rating=np.array([0, 0, 0, 0, 1, 0], np.int32), annotator=np.full(b, -1, np.int32),
        weight=np.array([1, 1, 1, 1, 1, 0], np.float32), index=np.arange(b, dtype=np.int32),
        prompt_len=3)
    lc = RewardLossConfig(scalar_weight=0.5, centering_coef=0.1)
    mine = reward.make_objective_reward_loss(model, lc, ("only",))(params, batch, None)
    built = reward.make_reward_loss(model, lc)(params, batch, None)
    np.testing.assert_allclose(float(mine[0]), float(built[0]), rtol=1e-6)
    assert float(mine[1][0]) == float(built[1][0])


def _records(n, seed):
    """Comparisons of the built-in task about "positive" (the gold sentiment) or "brief"
    (fewer words), half each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = str(rng.choice(data.builtin.PROMPTS))
        a = data.builtin.random_response(rng, int(rng.integers(2, 9)))
        b = data.builtin.random_response(rng, int(rng.integers(2, 9)))
        if i % 2:
            objective, better = "brief", len(a.split()) < len(b.split())
            if len(a.split()) == len(b.split()):
                continue
        else:
            objective = "positive"
            ga, gb = data.builtin.gold_score(a), data.builtin.gold_score(b)
            if ga == gb:
                continue
            better = ga > gb
        chosen, rejected = (a, b) if better else (b, a)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                    "objective": objective})
    return out


@pytest.mark.slow
def test_each_head_learns_its_objective_and_ppo_weighs_them(tmp_path):
    """The stages in a process of their own on one CPU device, as a user runs them (in the
    test process's 8 fake devices on 2 cores, XLA's collectives were seen to abort under
    load); every check is in `_each_head_scenario`."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    code = ("import sys; from pathlib import Path; from tests.reward.test_objectives import "
            "_each_head_scenario; _each_head_scenario(Path(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]


def _each_head_scenario(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records(1400, 0)))
    cfg = train.config_from_dict(stages.RewardConfig, {
        "run_dir": str(tmp_path / "rm"), "objectives": "positive,brief", "steps": 150,
        "eval_every": 75, "normalise_samples": 64, "checkpoint": {"save_every": 75},
        "data": {"train_file": str(path), "validation_fraction": 0.15,
                 "max_prompt_len": 8, "max_response_len": 10}})
    result = stages.train_reward_model(cfg)
    summary = json.loads((tmp_path / "rm" / "eval_summary.json").read_text())
    # each objective's head on the held-out comparisons about it (chance: 0.5)
    assert summary["eval/accuracy_objective/positive"] > 0.8, summary
    assert summary["eval/accuracy_objective/brief"] > 0.8, summary
    # one number for both (the heads' mean on every comparison) is worse than either head on
    # its own objective (measured: 0.81 against 1.00 and 0.99)
    assert summary["eval/accuracy"] < min(summary["eval/accuracy_objective/positive"],
                                          summary["eval/accuracy_objective/brief"]) - 0.05
    meta = json.loads((tmp_path / "rm" / "export" / "reward_head.json").read_text())
    assert meta["objectives"] == ["positive", "brief"] and meta["num_outputs"] == 2
    # the heads disagree where the objectives do: a long positive answer against a short
    # negative one
    rm_config, rm_params, _ = reward.load_reward_model(result.export_dir)
    tok = models.load_tokenizer(result.export_dir, rm_config)
    rows = [data.preference.tokenize_record(
        {"prompt": "tell me about the cat:", "responses": [r]}, tok, 8, 10, tok.eos_token_id,
        {"prompts_truncated": 0, "responses_truncated": 0})
        for r in ("good lovely great wonderful kind happy", "awful")]
    prompt = np.stack([p for p, _ in rows])
    resp = np.stack([r[0] for _, r in rows])
    pad = tok.pad_token_id or 0
    args = (np.where(prompt < 0, pad, prompt), (prompt >= 0).astype(np.int32),
            np.where(resp < 0, pad, resp), (resp >= 0).astype(np.int32))
    heads = np.asarray(reward.reward_model_scorer(rm_config, 2).members(rm_params, *args))
    assert heads[0, 0] > heads[1, 0] and heads[0, 1] < heads[1, 1], heads
    # PPO's score is the weighted sum of the heads
    m = stages.ppo.PPOModels(rm_config, rm_config, rm_params, 2, tok, None, {},
                             objectives=("positive", "brief"))
    score = np.asarray(m.scorer(0.0, "positive=1,brief=0.25")(rm_params, *args))
    np.testing.assert_allclose(score, heads @ [1.0, 0.25], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m.scorer()(rm_params, *args)), heads.mean(1),
                               rtol=1e-5)
    with pytest.raises(train.ConfigError, match="not an ensemble"):
        m.scorer(0.5)
    # PPO for one objective under a constraint on the other's head (cost = − its reward)
    ppo_cfg = stages.PPOStageConfig(
        run_dir=str(tmp_path / "ppo"), reward_dir=result.export_dir, steps=2, batch_size=8,
        eval_prompts=8, log_every=1, objective_weights="positive=1",
        constraint=ppo.ConstraintConfig(cost="objective:brief", limit=0.0, multiplier=0.5))
    stages.train_ppo(ppo_cfg)
    rows = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").open()]
    first, last = rows[0], rows[-1]
    assert np.isfinite(first["constraint/cost"]) and first["constraint/lambda"] == 0.5
    np.testing.assert_allclose(last["constraint/lambda"],
                               0.5 * np.exp(0.5 * first["constraint/cost"]), rtol=1e-5)
    with pytest.raises(train.ConfigError, match=r"has objectives \['positive', 'brief'\]"):
        stages.train_ppo(dataclasses.replace(
            ppo_cfg, run_dir=str(tmp_path / "ppo2"),
            constraint=ppo.ConstraintConfig(cost="objective:kind")))
    # a file whose records name objectives the config lacks is refused, naming them
    with pytest.raises(train.ConfigError, match=r"records name objectives \['brief', "
                                                r"'positive'\] but objectives is empty"):
        stages.train_reward_model(train.config_from_dict(stages.RewardConfig, {
            "run_dir": str(tmp_path / "rm2"), "steps": 30, "eval_every": 0,
            "checkpoint": {"keep_best": 0},
            "data": {"train_file": str(path), "max_prompt_len": 8, "max_response_len": 10}}))
