"""Settings that defeat a run are said at once: most responses without an end token at PPO's
first iteration, most prompts or responses cut by a length limit; stages record them so the
report repeats them."""
import json
from types import SimpleNamespace

import numpy as np

from rlhf_jax import data, stages
from rlhf_jax.sampling import SamplingConfig
from rlhf_jax.stages.common import warn
from rlhf_jax.stages.ppo import check_first_iteration


def _step(eos_fraction):
    def step(state, batch):
        return SimpleNamespace(step=np.int32(state.step + 1)), {
            "response/eos_fraction": np.float32(eos_fraction)}
    return step


def test_first_iteration_warns_when_most_responses_lack_an_end(tmp_path, capsys):
    layout = stages.RunLayout(tmp_path / "ppo")
    cfg = stages.PPOStageConfig(batch_size=32)
    sampling = SamplingConfig(max_new_tokens=10, eos_token_ids=(7,))
    step = check_first_iteration(_step(0.03), layout, cfg, sampling)
    state = SimpleNamespace(step=0)
    for _ in range(3):
        state, _ = step(state, None)
    (message,) = layout.read_warnings()
    assert "PPO iteration 1: 97% of the 32 responses reached sampling.max_new_tokens=10" in \
        message and "rollout.missing_eos_penalty=-1.0" in message and "ids [7]" in message
    assert capsys.readouterr().out.count("warning: PPO iteration 1") == 1  # once per run
    # most responses ending: nothing to say
    layout2 = stages.RunLayout(tmp_path / "ppo2")
    check_first_iteration(_step(0.6), layout2, cfg, sampling)(SimpleNamespace(step=0), None)
    assert layout2.read_warnings() == []


def test_truncation_warnings_name_the_setting(tmp_path):
    stats = {"file": "f.jsonl", "kind": "pairwise", "prompts": 10, "responses": 20,
             "prompts_truncated": 6, "responses_truncated": 10,
             "limits": {"max_prompt_len": 8, "max_response_len": 12}}
    (w,) = data.truncation_warnings(stats, {"max_prompt_len": "data.max_prompt_len"})
    assert w.startswith("f.jsonl: 6 of 10 prompts (60%) are cut to data.max_prompt_len=8") and \
        w.endswith("raise data.max_prompt_len")
    stats["responses_truncated"] = 11
    assert len(data.truncation_warnings(stats)) == 2
    layout = stages.RunLayout(tmp_path / "run")
    warn(layout, "x")
    warn(layout, "x")  # recorded once
    assert json.loads(layout.warnings.read_text()) == ["x"]
