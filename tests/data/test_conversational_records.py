"""Records as people have them: TRL's conversational and implicit-prompt forms, HH-RLHF
transcripts, UltraFeedback (raw rows with per-aspect ratings, and the binarised pairs), TRL's
unpaired KTO form, RealToxicityPrompts' nested prompt, JSON arrays; malformed conversations
stop with file:line and field, or are counted skips."""
import json

import numpy as np
import pytest

from rlhf_jax import data
from rlhf_jax.data import DataFormatError, read_records
from tests.chat_tokenizers import chat_tokenizer

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


TRL_PAIRWISE = [
    # explicit conversational prompt (TRL's "conversational preference")
    {"prompt": [S("be kind"), U("what colour is the sky?")], "chosen": [A("it is blue")],
     "rejected": [A("it is green")]},
    # implicit prompt: whole conversations sharing their prompt
    {"chosen": [U("what colour is the sky?"), A("it is blue")],
     "rejected": [U("what colour is the sky?"), A("it is green")]},
    # UltraFeedback binarised: a prompt string beside whole conversations
    {"prompt": "what colour is the sky?", "chosen": [U("what colour is the sky?"),
                                                     A("it is blue")],
     "rejected": [U("what colour is the sky?"), A("it is green")], "score_chosen": 8.0,
     "score_rejected": 3.0},
    # HH-RLHF transcripts (multi-turn)
    {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what colour is the sky?"
               "\n\nAssistant: it is blue",
     "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what colour is the sky?"
                 "\n\nAssistant: it is green"},
]


def test_every_pairwise_form_reads_as_one_conversation(tmp_path):
    records, stats = read_records(_jsonl(tmp_path / "p.jsonl", TRL_PAIRWISE), "pairwise")
    assert stats.kept == 4 and stats.lines == [1, 2, 3, 4]
    assert records[0]["prompt"] == [S("be kind"), U("what colour is the sky?")]
    for rec in records[1:3]:
        assert rec["prompt"] == [U("what colour is the sky?")]
    assert records[3]["prompt"] == [U("hi"), A("hello"), U("what colour is the sky?")]
    for rec in records:
        assert rec["responses"] == [[A("it is blue")], [A("it is green")]]


@pytest.mark.parametrize("row,match", [
    ({"prompt": [U("q")], "chosen": "a", "rejected": "b"},
     r"p.jsonl:1: the record mixes formats: field 'prompt' is a message list but field "
     r"'chosen' is text"),
    ({"prompt": [{"content": "q"}], "chosen": [A("a")], "rejected": [A("b")]},
     r"p.jsonl:1: field 'prompt' message 0: 'role' is missing"),
    ({"prompt": [{"role": "user"}], "chosen": [A("a")], "rejected": [A("b")]},
     r"p.jsonl:1: field 'prompt' message 0: 'content' is missing"),
    ({"prompt": [{"role": "bot", "content": "q"}], "chosen": [A("a")], "rejected": [A("b")]},
     r"field 'prompt' message 0: unknown role 'bot'"),
    ({"prompt": [U("q"), A("a")], "chosen": [A("a")], "rejected": [A("b")]},
     r"field 'prompt' must end on a user turn, not 'assistant'"),
    ({"prompt": [U("q")], "chosen": [U("a")], "rejected": [A("b")]},
     r"field 'chosen' must hold assistant turns only, found user"),
    ({"prompt": [U("q"), S("late")], "chosen": [A("a")], "rejected": [A("b")]},
     r"field 'prompt' message 1: a system message may only open the conversation"),
    ({"chosen": [U("q"), A("a")], "rejected": "\n\nHuman: q\n\nAssistant: b"},
     r"mixes formats: fields 'chosen' and 'rejected' must both be text or both message lists"),
    ({"prompt": "another question", "chosen": [U("q"), A("a")], "rejected": [U("q"), A("b")]},
     r"mixes formats: field 'prompt' is text that differs"),
    ({"chosen": [U("q"), A("a")], "rejected": [U("other"), A("b")]},
     r"fields 'chosen'/'rejected' share no prompt ending on a user turn"),
    ({"prompt": [U("q")], "chosen": [A(" ")], "rejected": [A("b")]},
     r"field 'chosen': the response is empty"),
    ({"prompt": [U("q")], "chosen": [A("a")], "rejected": [{"role": "assistant",
                                                             "content": 3}]},
     r"field 'rejected' message 0: 'content' must be a string, got int"),
])
def test_malformed_conversations_are_named_or_skipped(tmp_path, row, match):
    path = _jsonl(tmp_path / "p.jsonl", [row, TRL_PAIRWISE[0]])
    with pytest.raises(DataFormatError, match=match):
        read_records(path, "pairwise")
    records, stats = read_records(path, "pairwise", on_error="skip")
    assert len(records) == 1 and stats.skipped == 1 and sum(stats.reasons.values()) == 1


ULTRAFEEDBACK = {
    "source": "evol_instruct", "instruction": "Name a colour.",
    "models": ["m1", "m2", "m3"],
    "completions": [
        {"model": "m1", "response": "Blue.", "annotations": {
            "helpfulness": {"Rating": "5", "Rationale": "right"},
            "honesty": {"Rating": "4", "Rationale": "sure"},
            "instruction_following": {"Rating": "5", "Rationale": "ok"},
            "truthfulness": {"Type": ["0"], "Rating": "5", "Rationale": "true"}},
         "fine-grained_score": 4.75, "overall_score": 8.0},
        {"model": "m2", "response": "A dog.", "annotations": {
            "helpfulness": {"Rating": "1"}, "honesty": {"Rating": "N/A"},
            "instruction_following": {"Rating": "1"}, "truthfulness": {"Rating": "2"}},
         "fine-grained_score": 1.33, "overall_score": 2.0},
        {"model": "m3", "response": "Green, I think.", "annotations": {
            "helpfulness": {"Rating": "4"}, "honesty": {"Rating": "3"},
            "instruction_following": {"Rating": "4"}, "truthfulness": {"Rating": "5"}},
         "fine-grained_score": 4.0, "overall_score": 7.0}]}


def test_ultrafeedback_rows_keep_named_ratings(tmp_path):
    path = _jsonl(tmp_path / "uf.jsonl", [ULTRAFEEDBACK])
    (rank,), _ = read_records(path, "ranking")
    assert rank["prompt"] == [U("Name a colour.")]
    assert [r[0]["content"] for r in rank["responses"]] == ["Blue.", "Green, I think.",
                                                             "A dog."]
    assert rank["ranks"] == [0, 1, 2]
    (pair,), _ = read_records(path, "pairwise")
    assert pair["responses"] == [[A("Blue.")], [A("A dog.")]]  # best against worst
    rated, stats = read_records(path, "rating", rating_range=(1, 5))
    assert stats.read == 1 and stats.kept == 3
    assert rated[0]["ratings"] == {"helpfulness": 5.0, "honesty": 4.0,
                                   "instruction_following": 5.0, "truthfulness": 5.0}
    assert rated[0]["rating"] == pytest.approx(4.75)  # the fine-grained score
    assert "honesty" not in rated[1]["ratings"]  # N/A is no rating
    tok = chat_tokenizer(template="chatml", vocab_size=400)
    ds = data.build_preference_dataset(path, "rating", tok, tmp_path / "built",
                                       max_prompt_len=32, max_response_len=16,
                                       rating_range=(1, 5), validation_fraction=0.0)
    assert ds.aspects == ["helpfulness", "honesty", "instruction_following", "truthfulness"]
    batch = next(data.preference_batches([ds.splits["train"]], 3, prompt_len=32,
                                         num_responses=1, num_epochs=1, shuffle=False))
    by_row = {int(i): a for i, a in zip(batch.index, batch.aspects)}
    honesty = sorted(by_row[i][1] for i in by_row)
    assert np.isnan(honesty[-1]) or np.isnan(honesty[0])  # one completion has no honesty
    assert np.nanmax(batch.aspects) == 1.0  # a 5 on [1, 5] is +1


def test_unpaired_kto_form_and_nested_prompt_field(tmp_path):
    kto = _jsonl(tmp_path / "kto.jsonl", [
        {"prompt": "p", "completion": "c", "label": True},
        {"prompt": [U("q")], "completion": [A("c")], "label": False}])
    records, _ = read_records(kto, "binary")
    assert [r["label"] for r in records] == [1, 0]
    assert records[1]["responses"] == [[A("c")]]
    rtp = _jsonl(tmp_path / "rtp.jsonl", [
        {"filename": "x", "prompt": {"text": "So I said", "toxicity": 0.2},
         "continuation": {"text": "hello"}}])
    (rec,), _ = read_records(rtp, "prompt", field="prompt.text")
    assert rec["prompt"] == "So I said"
    with pytest.raises(DataFormatError, match="rtp.jsonl:1: field 'prompt' is an object; name "
                                              "the text inside it, e.g. prompts.field"):
        read_records(rtp, "prompt")
    sft = _jsonl(tmp_path / "sft.jsonl", [{"messages": [S("s"), U("q"), A("a")]},
                                          {"prompt": [U("q")], "completion": [A("a")]},
                                          {"text": "plain"}])
    records, _ = read_records(sft, "text")
    assert [sorted(r) for r in records] == [["annotator_id", "messages", "rationale"],
                                            ["annotator_id", "completion", "prompt",
                                             "rationale"],
                                            ["annotator_id", "rationale", "text"]]


def test_json_array_file_with_line_numbers(tmp_path):
    path = tmp_path / "prefs.json"
    rows = TRL_PAIRWISE[:2] + [{"prompt": [U("q")], "chosen": [A("a")]}]
    path.write_text(json.dumps(rows, indent=2))
    starts = [i + 1 for i, text in enumerate(path.read_text().splitlines()) if text == "  {"]
    records, stats = read_records(path, "pairwise", on_error="skip")
    assert len(records) == 2 and stats.lines == starts[:2] and stats.skipped == 1
    with pytest.raises(DataFormatError, match=rf"prefs.json:{starts[2]}: field 'rejected' is "
                                              "missing"):
        read_records(path, "pairwise")
    # datasets' to_json writes JSON lines under .json: read as lines
    lines = tmp_path / "lines.json"
    lines.write_text("".join(json.dumps(r) + "\n" for r in TRL_PAIRWISE))
    assert len(read_records(lines, "pairwise")[0]) == 4
    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"prompt": "p", "chosen": "a", "rejected": "b"},\n {"prompt": }\n]')
    with pytest.raises(DataFormatError, match=r"broken.json:3: not valid JSON"):
        read_records(broken, "pairwise")


@pytest.mark.parametrize("template", ["chatml", "llama3", None])
def test_built_dataset_holds_the_templates_tokens(tmp_path, template):
    tok = chat_tokenizer(template=template, vocab_size=400)
    path = _jsonl(tmp_path / "p.jsonl", TRL_PAIRWISE * 3)
    ds = data.build_preference_dataset(path, "pairwise", tok, tmp_path / "built",
                                       max_prompt_len=64, max_response_len=16,
                                       validation_fraction=0.0)
    enc = data.ChatEncoder(tok)
    records, _ = read_records(path, "pairwise")
    src = ds.splits["train"]  # each example's lengths, in the source's own order
    for i in range(len(src)):
        ex = src[i]
        assert src.lengths[i].tolist() == [int((ex["prompt"] >= 0).sum()),
                                           int((ex["responses"] >= 0).sum(1).max())]
    stored = {tuple(np.asarray(ex["prompt"])[np.asarray(ex["prompt"]) >= 0].tolist()):
              ex for ex in ds.splits["train"]}
    for rec in records:
        ids = enc.prompt_ids(rec["prompt"])[0]
        if template:
            assert ids == tok.apply_chat_template(rec["prompt"], add_generation_prompt=True)[
                "input_ids"]
        ex = stored[tuple(ids)]
        for k, response in enumerate(rec["responses"]):
            r = np.asarray(ex["responses"][k])
            assert r[r >= 0].tolist() == enc.response_ids(rec["prompt"], response)
            assert r[r >= 0][-1] in enc.stop_ids  # every response ends with its end of turn


def test_length_setting_that_cuts_every_response_is_refused(tmp_path):
    tok = chat_tokenizer(template="chatml", vocab_size=400)
    path = _jsonl(tmp_path / "p.jsonl", TRL_PAIRWISE)
    with pytest.raises(DataFormatError, match=r"every one of the 8 responses was cut to "
                                              r"max_response_len=2 tokens.*raise "
                                              r"max_response_len"):
        data.build_preference_dataset(path, "pairwise", tok, tmp_path / "b", max_prompt_len=64,
                                      max_response_len=2, validation_fraction=0.0)
    # a prompt limit below the template's control tokens: named, with the line, or skipped
    with pytest.raises(DataFormatError, match=r"p.jsonl:1: max_prompt_len=4 is too small"):
        data.build_preference_dataset(path, "pairwise", tok, tmp_path / "b", max_prompt_len=4,
                                      max_response_len=16, validation_fraction=0.0)


def test_a_kept_prompt_reads_back_as_it_was():
    """Prompts kept beside their ids (`prompt_record_text`) read back as the same prompt; text
    that only looks like a message list stays text."""
    conv = [S("be brief"), U("hi"), A("hello"), U("and now?")]
    for prompt in ("plain text", conv, [U("ünïcode")]):
        assert data.prompt_from_text(data.prompt_record_text(prompt)) == prompt
    for text in ('[{"role": "robot", "content": "x"}]',  # unknown role
                 '[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]',
                 '[{"role": "user"}]', '[{"role": "user", "content": "q"', '[{}]'):
        assert data.prompt_from_text(text) == text
