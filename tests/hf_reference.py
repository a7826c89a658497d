"""Tiny random-init Hugging Face models and tokenizers, built locally (nothing is downloaded)."""
from __future__ import annotations

import numpy as np
import torch
import transformers

VOCAB = 97

# name -> (config class name, kwargs); covers MHA/GQA, tied/untied, with/without QKV bias,
# default and Llama-3 rope scaling.
TINY_CONFIGS = {
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64)),
    "llama_mha_tied": ("LlamaConfig", dict(hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=4, tie_word_embeddings=True,
                                           max_position_embeddings=64)),
    "llama3_gqa_bias": ("LlamaConfig", dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
        max_position_embeddings=64, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8})),
    "mistral_gqa": ("MistralConfig", dict(hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=1, head_dim=16,
                                          tie_word_embeddings=False, sliding_window=64,
                                          max_position_embeddings=64)),
    "qwen2_gqa_tied": ("Qwen2Config", dict(hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=2, tie_word_embeddings=True,
                                           max_position_embeddings=64)),
}


def make_hf_model(name: str, seed: int = 0, noise: float = 0.02):
    """A random-init transformers causal LM in float32 and eval mode (weights + noise·N(0, 1))."""
    cls_name, kwargs = TINY_CONFIGS[name]
    kwargs = dict(kwargs, vocab_size=VOCAB)
    if cls_name == "GPT2Config":
        kwargs.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():  # break the zero/one inits so every parameter is exercised
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model


def left_padded_batch(seed: int = 0, batch: int = 3, length: int = 10, vocab: int = VOCAB):
    """tokens and mask [B, T] with 0, 3, 5, ... leading pads per row."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for b in range(batch):
        pads = min(2 * b + (1 if b else 0), length - 1)
        mask[b, :pads] = 0
        tokens[b, :pads] = 0
    return tokens, mask


def hf_logits(model, tokens, mask) -> np.ndarray:
    """The reference logits, position ids from the mask as our models derive them."""
    ids = torch.tensor(tokens, dtype=torch.long)
    am = torch.tensor(mask, dtype=torch.long)
    pos = (am.cumsum(-1) - 1).clamp(min=0) * am
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=am, position_ids=pos).logits.float().numpy()


def train_tiny_tokenizer(directory, vocab_size: int = 90):
    """A byte-level BPE tokenizer trained on a few sentences, saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = ["the cat sat on the mat", "a dog ran in the park", "hello world, how are you?",
              "reward models learn from human comparisons"] * 4
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # a fixed initial alphabet (digits and punctuation; the corpus adds its own letters):
    # ByteLevel.alphabet() comes in a different order in every process, so a slice of it (and
    # with it the merges that fit in vocab_size, and every test string's token count) changed
    # from run to run
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=list("0123456789.,:;!?'\"()-_/"))
    tok.train_from_iterator(corpus, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                                pad_token="<|endoftext|>")
    fast.save_pretrained(str(directory))
    return fast
