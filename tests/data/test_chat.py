"""Conversations through chat templates, token for token against transformers'
`apply_chat_template` on templates built here (ChatML, Qwen2's default system prompt,
Llama-3), plus the plain form, prompt truncation and SFT masks."""
import numpy as np
import pytest

from rlhf_jax import data
from rlhf_jax.data import ChatEncoder, ChatTemplateError
from tests.chat_tokenizers import CHATML, chat_tokenizer

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731

CONVERSATIONS = [
    ([U("hello world")], [A("the cat sat on the mat")]),
    ([S("be kind"), U("hello world"), A("a dog ran"), U("how are you?")],
     [A("a kind word and a warm day")]),
    ([U("tell me about the cat"), A("quite happy"), U("and today?")],
     [A("happy today"), A("and a warm day")]),  # a completion of two assistant turns
]


@pytest.fixture(scope="module", params=["chatml", "qwen2", "llama3"])
def templated(request):
    return request.param, chat_tokenizer(template=request.param, vocab_size=400)


@pytest.mark.parametrize("case", range(len(CONVERSATIONS)))
def test_ids_equal_transformers_template(templated, case):
    name, tok = templated
    prompt, response = CONVERSATIONS[case]
    enc = ChatEncoder(tok)
    want_prompt = tok.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    whole = tok.apply_chat_template(prompt + response)["input_ids"]
    got_prompt, cut = enc.prompt_ids(prompt)
    got_response = enc.response_ids(prompt, response)
    assert got_prompt == want_prompt and not cut
    # the response is the whole conversation's ids after the prompt, through the end of turn
    n = len(got_prompt) + len(got_response)
    assert got_prompt + got_response == whole[:n]
    eot = {"chatml": "<|im_end|>", "qwen2": "<|im_end|>", "llama3": "<|eot_id|>"}[name]
    assert got_response[-1] == tok.convert_tokens_to_ids(eot) == enc.end_of_turn
    assert tok.decode(whole[n:]).strip() == ""  # only the template's trailing newline is left
    # BOS and EOS once: Llama-3's BOS comes from the template only; no EOS after the end of turn
    ids = got_prompt + got_response
    assert ids.count(tok.bos_token_id) == (1 if name == "llama3" else 0)
    assert tok.eos_token_id not in ids
    assert enc.stop_ids == (enc.end_of_turn, tok.eos_token_id)
    if name == "qwen2" and prompt[0]["role"] != "system":  # the default system prompt
        assert "You are a helpful assistant." in tok.decode(got_prompt)


def test_plain_form_without_template():
    tok = chat_tokenizer(template=None, vocab_size=400)
    enc = ChatEncoder(tok)
    prompt, response = CONVERSATIONS[1]
    ids, _ = enc.prompt_ids(prompt)
    text = ("\n\nSystem: be kind\n\nHuman: hello world\n\nAssistant: a dog ran\n\nHuman: how "
            "are you?\n\nAssistant:")
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert enc.response_ids(prompt, response) == tok(
        " a kind word and a warm day", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert enc.stop_ids == (tok.eos_token_id,)
    # plain text: the tokenizer's own BOS once (a Llama-3-like tokenizer adds one)
    llama = chat_tokenizer(template="llama3", vocab_size=400)
    enc = ChatEncoder(llama)
    ids, _ = enc.prompt_ids("the cat")
    assert ids[0] == llama.bos_token_id and ids.count(llama.bos_token_id) == 1
    assert ids == llama("the cat")["input_ids"]


def test_given_template_replaces_the_tokenizers(tmp_path):
    tok = chat_tokenizer(template=None, vocab_size=400)
    (tmp_path / "t.jinja").write_text(CHATML)
    data.use_template(tok, str(tmp_path / "t.jinja"))
    assert ChatEncoder(tok).end_of_turn == tok.convert_tokens_to_ids("<|im_end|>")
    (tmp_path / "bad.jinja").write_text("no template here")
    with pytest.raises(ChatTemplateError, match="bad.jinja.*not a Jinja template"):
        data.use_template(tok, str(tmp_path / "bad.jinja"))


@pytest.mark.parametrize("template", ["chatml", "llama3", None])
def test_truncation_keeps_generation_prompt_and_control_tokens(template):
    tok = chat_tokenizer(template=template, vocab_size=400)
    enc = ChatEncoder(tok)
    last = "how are you? tell me about the cat and a dog in the park"
    prompt = [S("be kind"), U("hello world"), A("the cat sat"), U(last)]
    full, _ = enc.prompt_ids(prompt)
    # what must stay whole: BOS, the system turn and the last user turn's header before its
    # text; its end of turn and the generation prompt after it
    head, tail = enc.render([S("be kind"), U("@@")], True).split("@@")
    head = head.rstrip(" ")  # the plain form's "Human: " space goes with the text's first word
    shortest = None
    for limit in range(len(full) - 1, 0, -1):
        try:
            ids, cut = enc.prompt_ids(prompt, limit)
        except ChatTemplateError as e:
            assert f"max_prompt_len={limit} is too small" in str(e)
            break
        assert cut and len(ids) <= limit
        text = tok.decode(ids)
        assert text.startswith(head) and text.endswith(tail), text
        middle = text[len(head):len(text) - len(tail)]
        assert middle and last.endswith(middle.lstrip(" ")), middle  # the text's end is kept
        shortest = len(ids)
    assert shortest is not None and shortest < len(full) - 10
    # the limit that failed had no room for one token of text
    assert limit < len(tok(head + "x" + tail, add_special_tokens=False)["input_ids"]) + (
        1 if template is None else 0)


def test_sft_masks_match_transformers_assistant_mask():
    """The learnt tokens of a conversation are its assistant turns with their end of turn:
    transformers' `return_assistant_tokens_mask` of a ChatML template marked with
    {% generation %} is the reference."""
    marked = ("{% for message in messages %}"
              "{% if message['role'] == 'assistant' %}"
              "{{ '<|im_start|>assistant\n' }}{% generation %}"
              "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
              "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
              "'<|im_end|>' + '\n' }}{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tok = chat_tokenizer(template="chatml", vocab_size=400)
    tok.chat_template = marked
    enc = ChatEncoder(tok)
    for prompt, response in CONVERSATIONS:
        messages = prompt + response
        ref = tok.apply_chat_template(messages, return_assistant_tokens_mask=True)
        ids, mask = enc.sft_ids({"messages": messages})
        assert ids == ref["input_ids"] and mask == ref["assistant_masks"]
        ids2, mask2 = enc.sft_ids({"messages": messages}, train_on_prompt=True)
        assert ids2 == ids and mask2 == [1] * len(ids)
        # prompt + completion learns the completion's turns only
        ids3, mask3 = enc.sft_ids({"prompt": prompt, "completion": response})
        first = len(enc.prompt_ids(prompt)[0])
        assert ids3 == ids and not any(mask3[:first]) and mask3[first:] == mask[first:]


def test_sft_plain_forms():
    tok = chat_tokenizer(template=None, vocab_size=400)
    enc = ChatEncoder(tok)
    ids, mask = enc.sft_ids({"text": "the cat sat"})
    assert ids == tok("the cat sat", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert mask == [1] * len(ids)
    ids, mask = enc.sft_ids({"prompt": "the cat", "completion": " sat"})
    n = len(tok("the cat", add_special_tokens=False)["input_ids"])
    assert mask == [0] * n + [1] * (len(ids) - n) and ids[-1] == tok.eos_token_id
    ids, mask = enc.sft_ids({"messages": [U("hi"), A("a dog"), U("ok")]})
    learnt = tok.decode([i for i, m in zip(ids, mask) if m])
    assert learnt == " a dog"  # the trailing user turn and its EOS are not learnt


def test_template_that_breaks_the_prefix_is_refused():
    tok = chat_tokenizer(template="chatml", vocab_size=400)
    # a template that writes the generation prompt differently from a finished assistant turn
    tok.chat_template = CHATML.replace("'<|im_start|>assistant\n'", "'<|im_start|>bot\n'")
    with pytest.raises(ChatTemplateError, match="do not start with the prompt's tokens"):
        ChatEncoder(tok).response_ids([U("hi")], [A("yo")])


def test_encode_prompt_batch_layout():
    tok = chat_tokenizer(template="chatml", vocab_size=400)
    counts = {"prompts_truncated": 0}
    row = data.preference.encode_prompt(tok, [U("hello world")], 40, counts)
    ids = tok.apply_chat_template([U("hello world")], add_generation_prompt=True)["input_ids"]
    assert row[-len(ids):].tolist() == ids and (row[:-len(ids)] == -1).all()
    assert counts["prompts_truncated"] == 0
    assert np.asarray(row).dtype == np.int32


def test_template_without_an_end_of_turn_learns_eos():
    """A template that ends no turn (Alpaca-like): the response ends with EOS, and SFT learns
    that EOS, so the model learns to stop where sampling stops."""
    tok = chat_tokenizer(template="chatml", vocab_size=400)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ':\n' + m['content'] + '\n\n' }}"
                         "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:\n' }}"
                         "{% endif %}")
    enc = ChatEncoder(tok)
    assert enc.end_of_turn is None and enc.stop_ids == (tok.eos_token_id,)
    prompt, response = [U("hello world")], [A("the cat sat")]
    assert enc.response_ids(prompt, response)[-1] == tok.eos_token_id
    ids, mask = enc.sft_ids({"messages": prompt + response})
    assert ids[-1] == tok.eos_token_id and mask[-1] == 1
    assert ids.count(tok.eos_token_id) == 1


def test_a_slow_tokenizer_cuts_a_prompt_by_pieces():
    from transformers import ByT5Tokenizer

    tok = ByT5Tokenizer()  # a Python tokenizer: no offsets
    tok.chat_template = CHATML
    enc = ChatEncoder(tok)
    prompt = [S("be kind"), U("how are you? tell me about the cat and a dog in the park")]
    ids, cut = enc.prompt_ids(prompt, 100)
    text = tok.decode(ids)
    assert cut and len(ids) == 100
    assert text.startswith("<|im_start|>system\nbe kind<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("in the park<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ChatTemplateError, match="max_prompt_len=60 is too small"):
        enc.prompt_ids(prompt, 60)


def test_sft_rows_whose_learnt_tokens_are_cut_away_are_named(tmp_path):
    """A conversation whose assistant turn lies wholly beyond max_len would train on nothing:
    it is refused with its file:line, or skipped and counted."""
    import json

    tok = chat_tokenizer(template="chatml", vocab_size=400)
    path = tmp_path / "sft.jsonl"
    long = [U("tell me " + "about the cat " * 30), A("it sat")]
    path.write_text("\n".join(json.dumps(r) for r in (
        {"messages": [U("hi"), A("hello there")]}, {"messages": long},
        {"messages": [U("and you"), A("fine")]})) + "\n")
    with pytest.raises(data.DataFormatError, match=r"sft.jsonl:2: every learnt token lies "
                                                   r"beyond data.max_len=32"):
        data.sft.build_sft_dataset(path, tok, tmp_path / "built", max_len=32)
    built = data.sft.build_sft_dataset(path, tok, tmp_path / "built", max_len=32,
                                       on_error="skip")
    assert built.stats["skipped"] == 1 and built.stats["prompts"] == 2
    assert len(built.splits["train"]) == 2
