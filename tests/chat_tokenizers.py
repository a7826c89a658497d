"""Tiny chat tokenizers built in the tests (nothing is downloaded): a byte-level BPE with the
control tokens of three chat-template families, and their Jinja templates written after the
published ones — ChatML (Qwen2-style, with and without Qwen2's default system prompt) and
Llama-3 (BOS in the template, `<|eot_id|>` ending each turn)."""
from __future__ import annotations

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Qwen2's template: a default system prompt when the conversation has none
QWEN2 = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
    "message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

TEMPLATES = {"chatml": CHATML, "qwen2": QWEN2, "llama3": LLAMA3}
CONTROL = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eot_id|>"]
CORPUS = ["the cat sat on the mat", "a dog ran in the park", "hello world, how are you?",
          "reward models learn from human comparisons", "user assistant system",
          "You are a helpful assistant.", "tell me about the cat: quite happy today",
          "what is good? a kind word and a warm day"]


def chat_tokenizer(directory=None, template: str = "chatml", vocab_size: int = 160):
    """A byte-level BPE tokenizer with every family's control tokens (special) and the named
    template (`TEMPLATES`, or None for no template); EOS `<|endoftext|>`, and for "llama3" a
    BOS that the tokenizer itself also adds to plain text (as Llama-3's does)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<|endoftext|>"] + CONTROL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    kwargs = dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                  additional_special_tokens=CONTROL[:2] + CONTROL[3:])
    if template == "llama3":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
        kwargs["bos_token"] = "<|begin_of_text|>"
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    if template:
        fast.chat_template = TEMPLATES[template]
    if directory is not None:
        fast.save_pretrained(str(directory))
    return fast


def make_chat_model(directory, template: str = "chatml", seed: int = 0):
    """A tiny Llama made with transformers (GQA, 2 layers, width 32) and `chat_tokenizer`,
    saved as a Hugging Face directory: what a user brings as `policy_dir`."""
    import torch
    import transformers

    tok = chat_tokenizer(template=template, vocab_size=400)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).float().eval()
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return tok


CHAT_TOPICS = ["the cat", "a dog", "the park", "a warm day", "the mat", "human comparisons"]


def conversation_files(directory, n: int = 48) -> dict:
    """Preference, prompt and SFT files as TRL's and HH-RLHF's users write them, mixing every
    conversational form: explicit message-list prompts with a system turn, implicit prompts
    (whole conversations), HH-RLHF transcripts and multi-turn prompts."""
    import json
    from pathlib import Path

    directory = Path(directory)
    u = lambda text: {"role": "user", "content": text}  # noqa: E731
    a = lambda text: {"role": "assistant", "content": text}  # noqa: E731
    prefs, prompts, sft = [], [], []
    for i in range(n):
        topic = CHAT_TOPICS[i % len(CHAT_TOPICS)]
        q = f"tell me about {topic} number {i}"
        good, bad = f"{topic} is quite happy today", f"{topic} sat on the mat"
        form = i % 4
        if form == 0:
            prefs.append({"prompt": [{"role": "system", "content": "be kind"}, u(q)],
                          "chosen": [a(good)], "rejected": [a(bad)]})
        elif form == 1:
            prefs.append({"chosen": [u(q), a(good)], "rejected": [u(q), a(bad)]})
        elif form == 2:
            prefs.append({"chosen": f"\n\nHuman: hello\n\nAssistant: hi\n\nHuman: {q}"
                                    f"\n\nAssistant: {good}",
                          "rejected": f"\n\nHuman: hello\n\nAssistant: hi\n\nHuman: {q}"
                                      f"\n\nAssistant: {bad}"})
        else:
            prefs.append({"prompt": [u("hello"), a("hi"), u(q)], "chosen": [a(good)],
                          "rejected": [a(bad)]})
        prompts.append({"prompt": [u("hello"), a("hi"), u(q)] if i % 2 else [u(q)]})
        sft.append({"messages": [u(q), a(good)]})
    paths = {}
    for name, rows in (("prefs", prefs), ("prompts", prompts), ("sft", sft)):
        paths[name] = directory / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths
