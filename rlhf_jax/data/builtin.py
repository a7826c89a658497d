"""A built-in preference task, so the pipeline runs with nothing downloaded.

Sentences are drawn from small word lists; a programmatic gold score counts pleasant minus
unpleasant words; simulated annotators compare two responses through Bradley–Terry noise, each
with their own temperature, so they disagree. A tokenizer is trained on the corpus on the fly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SUBJECTS = ["the cat", "my friend", "the movie", "this book", "the weather", "our trip",
            "the food", "the team", "her song", "the game"]
PLEASANT = ["good", "great", "happy", "lovely", "wonderful", "kind", "bright", "fun"]
UNPLEASANT = ["bad", "awful", "sad", "boring", "terrible", "dull", "rude", "ugly"]
NEUTRAL = ["was", "is", "seemed", "felt", "and", "very", "quite", "today", "really", "so"]
PROMPTS = [f"tell me about {s}:" for s in SUBJECTS]


def gold_score(text: str) -> float:
    """Pleasant minus unpleasant words: the programmatic judge of the built-in task."""
    words = text.replace(",", " ").split()
    return float(sum(w in PLEASANT for w in words) - sum(w in UNPLEASANT for w in words))


def random_response(rng: np.random.Generator, length: int = 6) -> str:
    """A short sentence of neutral, pleasant and unpleasant words."""
    pool = NEUTRAL + PLEASANT + UNPLEASANT
    return " ".join(rng.choice(pool) for _ in range(length))


def corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Prompt + response texts for tokenizer training and supervised fine-tuning."""
    rng = np.random.default_rng(seed)
    return [f"{rng.choice(PROMPTS)} {random_response(rng)}" for _ in range(n)]


def simulate_annotators(pairs, gold_fn, *, temperatures=(0.5, 1.0, 2.0), seed: int = 0):
    """Pairwise records labelled by noisy simulated annotators.

    `pairs` are (prompt, response_1, response_2); annotator a (drawn uniformly per pair) prefers
    y₁ over y₂ with probability σ((g(y₁) − g(y₂)) / T_a) (Bradley & Terry 1952), g = `gold_fn(
    prompt, response)`: the higher T_a, the noisier the annotator, so annotators disagree.
    """
    rng = np.random.default_rng(seed)
    records = []
    for prompt, a, b in pairs:
        who = int(rng.integers(len(temperatures)))
        p_a = 1.0 / (1.0 + np.exp(-(gold_fn(prompt, a) - gold_fn(prompt, b)) / temperatures[who]))
        chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
        records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                        "annotator_id": f"annotator_{who}"})
    return records


def write_jsonl(path, records) -> Path:
    """Write records as JSON lines (creating the directory; atomically, via a temporary file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)
    return path


def write_comparisons(path, n: int, *, seed: int = 0,
                      annotator_temperatures=(0.5, 1.0, 2.0)) -> Path:
    """JSONL of `n` comparisons of random sentences (of different gold score) labelled by
    `simulate_annotators` with the word-count judge `gold_score`."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        a, b = random_response(rng), random_response(rng)
        while gold_score(a) == gold_score(b):
            b = random_response(rng)
        pairs.append((str(rng.choice(PROMPTS)), a, b))
    return write_jsonl(path, simulate_annotators(pairs, lambda p, r: gold_score(r),
                                                 temperatures=annotator_temperatures, seed=seed))


def write_prompts(path, n: int = 0) -> Path:
    """JSONL with a `prompt` field: the built-in prompts (each repeated to `n` rows if given)."""
    rows = [PROMPTS[i % len(PROMPTS)] for i in range(max(n, len(PROMPTS)))]
    return write_jsonl(path, [{"prompt": p} for p in rows])


def write_texts(path, n: int = 2000, seed: int = 0) -> Path:
    """JSONL with a `text` field: the built-in corpus (e.g. PPO-ptx data)."""
    return write_jsonl(path, [{"text": t} for t in corpus(n, seed)])


def train_tokenizer(directory, *, vocab_size: int = 256, seed: int = 0):
    """A word-piece-free BPE tokenizer trained on the built-in corpus, saved for transformers."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<pad>", "<eos>", "<unk>"])
    tok.train_from_iterator(corpus(seed=seed), trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>",
                                                pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(str(directory))
    return fast
