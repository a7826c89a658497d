"""The whole pipeline and its stages on someone else's model and data: a tiny Llama made with
transformers and given a ChatML template, conversational files written as TRL's and HH-RLHF's
users write them. Every stage tokenises through the template, sampling stops on its end-of-turn
token, and the report shows conversations by role."""
import json
import math

import numpy as np
import pytest

from rlhf_jax import data, models, stages
from rlhf_jax.stages.pipeline import PipelineConfig
from rlhf_jax.train import OptimizerConfig
from tests.chat_tokenizers import CHATML, make_chat_model, conversation_files

pytestmark = pytest.mark.slow
LENGTHS = dict(max_prompt_len=48, max_new_tokens=12)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    tok = make_chat_model(root / "policy")
    return {"root": root, "tok": tok, "policy": root / "policy", **conversation_files(root)}


def _stage(cfg, **fields):
    return stages.pipeline._replace(cfg, fields)


@pytest.fixture(scope="module")
def pipeline_run(own):
    cfg = PipelineConfig(run_dir=str(own["root"] / "run"), policy_dir=str(own["policy"]),
                         preference_file=str(own["prefs"]), prompts_file=str(own["prompts"]),
                         sft_file=str(own["sft"]), eval_samples=16, report_samples=4,
                         **LENGTHS)
    cfg = _stage(cfg, **{"sft.steps": 6, "sft.batch_size": 8, "sft.optim.warmup_steps": 2,
                         "sft.data.max_len": 64,
                         "reward.steps": 8, "reward.batch_size": 8, "reward.eval_every": 4,
                         "reward.optim.warmup_steps": 2,
                         "ppo.steps": 2, "ppo.batch_size": 8, "ppo.eval_prompts": 8})
    return cfg, stages.run_pipeline(cfg)


def test_pipeline_reads_conversations_through_the_template(own, pipeline_run):
    cfg, result = pipeline_run
    run = own["root"] / "run"
    assert result.preempted_stage is None
    tok = own["tok"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    # SFT learnt assistant turns only, packed (a file's texts)
    sft_line = next(x for x in result_data(run) if "(text)" in x)
    assert "packed" in sft_line
    # the reward model's data: every response ends with the template's end of turn, and the
    # prompts are the template's rendering with the generation prompt
    built = next((run / "reward" / "data" / "built").glob("prefs-*"))
    stats = json.loads((built / "stats.json").read_text())
    assert stats["kept"] == 48 and stats["responses_truncated"] == 0
    ds = data.build_preference_dataset(own["prefs"], "pairwise", tok, built.parent,
                                       max_prompt_len=48, max_response_len=14)
    for ex in list(ds.splits["train"])[:8]:
        responses = np.asarray(ex["responses"])
        for r in responses:
            assert r[r >= 0][-1] == im_end
        prompt = np.asarray(ex["prompt"])
        text = tok.decode(prompt[prompt >= 0])
        assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    # sampling stops on the end of turn; the exports carry the template
    ppo_cfg = stages.pipeline.stage_configs(cfg, stages.PipelineLayout(str(run)),
                                            str(run / "sft" / "export"), str(own["prefs"]))[2]
    exported = models.load_tokenizer(str(run / "ppo" / "export"))
    assert exported.chat_template == tok.chat_template
    assert stages.resolve_sampling(exported, ppo_cfg).eos_token_ids[:2] == (im_end,
                                                                            tok.eos_token_id)
    # evaluation keeps each prompt as a conversation; the report shows it by role
    ev = json.loads((run / "eval.json").read_text())
    row = ev["before"]["rows"][0]
    assert isinstance(row["prompt"], list) and row["prompt"][-1]["role"] == "user"
    report = (run / "report.md").read_text()
    samples = report[report.index("## Samples"):]
    assert "**user:** tell me about" in samples and "<|im_start|>" not in samples
    assert all(line.count("|") - line.count("\\|") == 5
               for line in samples.splitlines() if line.startswith("| ") and "---" not in line)


def result_data(run):
    info = json.loads((run / "run.json").read_text())
    return info["data"]


def test_offline_stage_on_conversations_and_unpaired_feedback(own, tmp_path):
    result = stages.train_offline(stages.OfflineConfig(
        run_dir=str(tmp_path / "dpo"), policy_dir=str(own["policy"]), steps=4, batch_size=8,
        optim=OptimizerConfig(learning_rate=1e-3, warmup_steps=1),
        eval_every=2, data=stages.OfflineData(train_file=str(own["prefs"]), max_prompt_len=48,
                                              max_response_len=14)))
    assert result.export_dir and np.isfinite(result.metrics["eval/loss"])
    # TRL's unpaired KTO form: prompt / completion / boolean label, conversational
    u = lambda t: {"role": "user", "content": t}  # noqa: E731
    a = lambda t: {"role": "assistant", "content": t}  # noqa: E731
    rows = [{"prompt": [u(f"tell me about the cat {i}")],
             "completion": [a("quite happy today" if i % 2 else "sat on the mat")],
             "label": bool(i % 2)} for i in range(24)]
    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from rlhf_jax import offline
    result = stages.train_offline(stages.OfflineConfig(
        run_dir=str(tmp_path / "kto"), policy_dir=str(own["policy"]), steps=2, batch_size=8,
        optim=OptimizerConfig(learning_rate=1e-3, warmup_steps=1),
        eval_every=0, data=stages.OfflineData(train_file=str(path), kind="binary",
                                              max_prompt_len=32, max_response_len=12,
                                              validation_fraction=0.0),
        loss=offline.OfflineLossConfig(method="kto")))
    assert result.step == 2


def test_template_given_for_a_tokenizer_without_one(own, tmp_path):
    """A model whose tokenizer has no template gets one from a file; its SFT learns the
    assistant turns of conversations, and the export carries the template."""
    policy = tmp_path / "bare"
    make_chat_model(policy, template=None)
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    result = stages.train_sft(stages.SFTConfig(
        run_dir=str(tmp_path / "sft"), model_dir=str(policy), chat_template=str(template),
        steps=3, batch_size=8, optim=OptimizerConfig(warmup_steps=1),
        data=stages.SFTData(source="text", file=str(own["sft"]),
                                                   max_len=64)))
    assert models.load_tokenizer(result.export_dir).chat_template == CHATML
    assert "packed" in result.data[0] and "48 kept" in result.data[0]
    with pytest.raises(data.ChatTemplateError, match="missing.jinja.*cannot be read"):
        stages.train_sft(stages.SFTConfig(
            run_dir=str(tmp_path / "sft2"), model_dir=str(policy),
            chat_template=str(tmp_path / "missing.jinja"), steps=1, batch_size=8,
            optim=OptimizerConfig(warmup_steps=0),
            data=stages.SFTData(source="text", file=str(own["sft"]), max_len=64)))


def test_evaluate_a_policy_on_realtoxicityprompts_prompts(own, tmp_path):
    """RealToxicityPrompts' file as distributed: the prompt is the nested `prompt.text`."""
    rows = [{"filename": f"{i:04d}.txt", "begin": 0, "end": 40, "challenging": i % 3 == 0,
             "prompt": {"text": f"so the cat number {i} said", "toxicity": 0.1 * (i % 5),
                        "profanity": 0.0},
             "continuation": {"text": "hello", "toxicity": 0.0}} for i in range(12)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from rlhf_jax.sampling import SamplingConfig
    summary = stages.evaluate_prompts(stages.EvalConfig(
        run_dir=str(tmp_path / "eval"), policy_dir=str(own["policy"]),
        reference_dir=str(own["policy"]),
        prompts=stages.PromptData(file=str(path), field="prompt.text", max_prompt_len=32),
        samples=10, batch_size=8, sampling=SamplingConfig(max_new_tokens=8)))
    assert summary["samples"] == 10 and 0.0 <= summary["profanity_rate"]["mean"] <= 1.0
    assert abs(summary["kl"]["mean"]) < 1e-4  # the policy against itself
    samples = [json.loads(x) for x in (tmp_path / "eval" / "samples.jsonl").read_text()
               .splitlines()]
    assert [s["prompt"] for s in samples] == [r["prompt"]["text"] for r in rows[:10]]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| profanity_rate |" in report and "field `prompt.text`" in report
    with pytest.raises(data.DataFormatError, match="field 'prompt' is an object"):
        stages.evaluate_prompts(stages.EvalConfig(
            run_dir=str(tmp_path / "eval2"), policy_dir=str(own["policy"]),
            prompts=stages.PromptData(file=str(path))))
    # a conversation whose system turn leaves no room within the length stops at its line
    convs = tmp_path / "convs.jsonl"
    convs.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "be kind " * 20}, {"role": "user", "content": "hi"}])))
    with pytest.raises(data.DataFormatError, match=r"convs.jsonl:2: max_prompt_len=16 is too "
                                                   r"small"):
        stages.evaluate_prompts(stages.EvalConfig(
            run_dir=str(tmp_path / "eval3"), policy_dir=str(own["policy"]),
            prompts=stages.PromptData(file=str(convs), max_prompt_len=16)))


def test_method_comparison_on_conversations(own, tmp_path):
    """The comparison on the user's model and conversational files: every method starts from
    their policy and learns from their comparisons, and the report's tables are filled."""
    from rlhf_jax import studies
    cfg = studies.CompareConfig(
        run_dir=str(tmp_path / "compare"), seeds="0", methods="dpo,best_of_n", quick=True,
        policy_dir=str(own["policy"]), sft_steps=0, preference_file=str(own["prefs"]),
        prompts_file=str(own["prompts"]), **LENGTHS)
    report = studies.compare_methods(cfg).read_text()
    assert "| DPO |" in report and "| best-of-n |" in report
    base = tmp_path / "compare" / "seed0" / "base"
    info = json.loads((base / "run.json").read_text())
    assert info["preference_file"] == str(own["prefs"]) and not (base / "sft").exists()
    runs = json.loads((tmp_path / "compare" / "results.json").read_text())["runs"]
    assert {r["method"] for r in runs} == {"dpo", "best_of_n"}
    assert all(math.isfinite(r["after_gold"]["mean"]) for r in runs)
    with pytest.raises(ValueError, match="sft_steps=0 needs policy_dir"):
        studies.CompareConfig(sft_steps=0)
