"""AI judges: answer log-probs read against transformers' PyTorch model, order averaging that
cancels a judge built to always answer "A", classifier and constitution judges."""
import json

import jax
import numpy as np
import pytest
import torch
import transformers

from rlhf_jax.models import DecoderModel, init_params, preset, save_hf_checkpoint
from rlhf_jax.rlaif import (ClassifierJudge, ConstitutionJudge, LMJudge, parse_constitution)
from rlhf_jax.rlaif.judges import TEMPLATE

WORDS = ("which response is more positive better the conversation tell me about cat dog it was "
         "good bad happy sad A B reasoning think before answering").split()


def _tokenizer(directory):
    """A word-level tokenizer in which "A", "B" and "is" are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[EOS]", ":", "?", "."] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                pad_token="[PAD]", eos_token="[EOS]")
    fast.save_pretrained(str(directory))
    return fast


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    """A random judge and one built to answer "A" whatever it reads: attention and MLP outputs
    are zeroed, so the last position's state is the embedding of the template's last word
    ("is"), and the LM head's "A" column points along it."""
    root = tmp_path_factory.mktemp("judges")
    tok = _tokenizer(root / "tok")
    config = preset("tiny-llama", vocab_size=len(tok))
    params = init_params(DecoderModel(config), jax.random.key(0))
    random_dir = save_hf_checkpoint(root / "random", config, params, tokenizer=tok)
    p = jax.tree.map(np.array, params)
    for name, layer in p["transformer"].items():
        if name.startswith("block_"):
            layer["attn"]["out"]["kernel"][...] = 0.0
            layer["mlp"]["down"]["kernel"][...] = 0.0
    is_id, a_id = tok.convert_tokens_to_ids("is"), tok.convert_tokens_to_ids("A")
    emb = p["transformer"]["wte"]["embedding"]
    e = emb[is_id] / np.linalg.norm(emb[is_id])
    p["lm_head"]["kernel"][:, a_id] = 40.0 * e
    biased_dir = save_hf_checkpoint(root / "biased", config, p, tokenizer=tok)
    return tok, random_dir, biased_dir


PROMPTS = ["tell me about the cat", "tell me about the dog", "tell me about it"]
A = ["it was good", "it was sad", "happy happy"]
B = ["it was bad", "it was happy", "sad"]


def test_answer_logprobs_match_transformers(judges):
    tok, random_dir, _ = judges
    judge = LMJudge(str(random_dir), max_len=64, batch_size=4)
    texts = judge.texts(PROMPTS, A, B, "which response is more positive ?")
    ours = judge.answer_logprobs(texts)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(random_dir),
                                                           torch_dtype=torch.float32).eval()
    ids = [tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")]
    for text, row in zip(texts, ours):
        x = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(hf(x).logits[0, -1].double(), -1).numpy()
        # float32 forwards of a 2-layer model: log-probs agree to ~1e-5 (O(1) values)
        np.testing.assert_allclose(row, logp[ids], atol=2e-4)
    got = judge.compare_one_order(PROMPTS, A, B, "which response is more positive ?").prob_a
    np.testing.assert_allclose(got, 1 / (1 + np.exp(ours[:, 1] - ours[:, 0])), rtol=1e-6)


def test_order_averaging_cancels_a_judge_that_always_says_a(judges):
    _, _, biased_dir = judges
    judge = LMJudge(str(biased_dir), max_len=64, batch_size=4)
    q = "which response is more positive ?"
    ab = judge.compare_one_order(PROMPTS, A, B, q).prob_a
    ba = judge.compare_one_order(PROMPTS, B, A, q).prob_a
    assert (ab > 0.99).all() and (ba > 0.99).all()  # "A" whichever response is shown first
    np.testing.assert_allclose(judge.compare(PROMPTS, A, B).prob_a, 0.5, atol=0.01)


def test_order_averaging_direction(judges):
    _, random_dir, _ = judges
    judge = LMJudge(str(random_dir), max_len=64, batch_size=4)
    q = "Which response is better?"  # compare's question without a principle
    ab = judge.compare_one_order(PROMPTS, A, B, q).prob_a
    ba = judge.compare_one_order(PROMPTS, B, A, q).prob_a
    both = judge.compare(PROMPTS, A, B).prob_a
    np.testing.assert_allclose(both, 0.5 * (ab + 1 - ba), rtol=1e-6)
    np.testing.assert_allclose(judge.compare(PROMPTS, B, A).prob_a, 1 - both, rtol=1e-6)
    assert not np.allclose(ab, 1 - ba)  # the random judge is position-biased: averaging matters


def test_chain_of_thought_stores_a_rationale(judges):
    _, random_dir, _ = judges
    judge = LMJudge(str(random_dir), max_len=96, batch_size=4, chain_of_thought=True,
                    rationale_tokens=6)
    out = judge.compare(PROMPTS, A, B)
    assert len(out.rationales) == 3 and all("(A first)" in r for r in out.rationales)
    assert ((out.prob_a > 0) & (out.prob_a < 1)).all()


def test_answers_must_be_single_distinct_tokens(judges):
    _, random_dir, _ = judges
    with pytest.raises(ValueError, match="is 2 tokens"):
        LMJudge(str(random_dir), answers=(" A A", " B"))
    with pytest.raises(ValueError, match="same token"):
        LMJudge(str(random_dir), answers=(" A", "A"))
    with pytest.raises(ValueError, match=r"\{reasoning\}"):
        LMJudge(str(random_dir), template=TEMPLATE.replace("{reasoning}", ""))


def test_classifier_and_constitution_judges():
    judge = ClassifierJudge("vader")
    from rlhf_jax.eval.scorers import vader_compound
    want = 1 / (1 + np.exp(-np.array([vader_compound(p, a) - vader_compound(p, b)
                                      for p, a, b in zip(PROMPTS, A, B)]) / 0.1))
    np.testing.assert_allclose(judge.compare(PROMPTS, A, B).prob_a, want, rtol=1e-12)
    assert judge.compare(PROMPTS, A, B).prob_a[0] > 0.9  # "good" beats "bad"
    own = ClassifierJudge("length", score=lambda p, r: len(r), temperature=2.0)
    np.testing.assert_allclose(own.compare(["p"], ["aaaa"], ["aa"]).prob_a,
                               [1 / (1 + np.exp(-1.0))])
    with pytest.raises(ValueError, match="classifier judge 'nope'"):
        ClassifierJudge("nope")
    cons = parse_constitution({"mode": "sample", "principles": [
        {"id": "positive", "question": "q1", "judge": "vader", "weight": 3},
        {"id": "short", "question": "q2", "judge": "brevity", "weight": 1}]})
    cj = ConstitutionJudge(cons, seed=0)
    n = 400
    out = cj.compare(["p"] * n, ["good good"] * n, ["bad"] * n)
    frac = np.mean([p == "positive" for p in out.principles])
    assert abs(frac - 0.75) < 0.07  # drawn by weight (s.e. ~0.02)
    pos = np.array([p == "positive" for p in out.principles])
    assert (out.prob_a[pos] > 0.99).all() and (out.prob_a[~pos] < 0.5).all()
    weighted = ConstitutionJudge(parse_constitution({"mode": "weighted", "principles": json.loads(
        json.dumps([{"id": "positive", "question": "q", "judge": "vader", "weight": 3},
                    {"id": "short", "question": "q", "judge": "brevity"}]))}))
    w = weighted.compare(["p"], ["good good"], ["bad"]).prob_a
    np.testing.assert_allclose(w, 0.75 * ClassifierJudge("vader").compare(
        ["p"], ["good good"], ["bad"]).prob_a + 0.25 * ClassifierJudge("brevity").compare(
        ["p"], ["good good"], ["bad"]).prob_a)
    with pytest.raises(ValueError, match="needs an LM judge"):
        ConstitutionJudge(parse_constitution({"principles": [{"id": "x", "question": "q"}]}))


def test_round_robin_scores_count_expected_wins():
    """Each answer's score is Σ_j P(i ≻ j) over the other answers to its prompt (brute force
    over every ordered pair); a prompt's scores sum to its K(K − 1)/2 comparisons; a judge that
    draws principles gives the same answers the same scores, call after call."""
    from rlhf_jax.rlaif import round_robin_scores

    own = ClassifierJudge("length", score=lambda p, r: len(r), temperature=3.0)
    rng = np.random.default_rng(0)
    k, prompts = 4, ["p0", "p1", "p2"]
    answers = ["x" * int(n) for n in rng.integers(0, 9, size=len(prompts) * k)]
    flat_prompts = [p for p in prompts for _ in range(k)]
    got = round_robin_scores(own, flat_prompts, answers, k)
    want = np.zeros(len(answers))
    for i in range(len(answers)):
        for j in range(len(answers)):
            if i != j and i // k == j // k:
                want[i] += 1 / (1 + np.exp(-(len(answers[i]) - len(answers[j])) / 3.0))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got.reshape(-1, k).sum(1), k * (k - 1) / 2, rtol=1e-6)
    cons = parse_constitution({"mode": "sample", "principles": [
        {"id": "positive", "question": "q1", "judge": "vader"},
        {"id": "short", "question": "q2", "judge": "brevity"}]})
    cj = ConstitutionJudge(cons, seed=0)
    texts = ["good day", "bad", "a fine and long answer", "awful"] * 3
    first = round_robin_scores(cj, flat_prompts, texts, k, seed=1)
    cj.compare(["p"] * 7, ["a"] * 7, ["b"] * 7)  # the judge's own draws move on
    np.testing.assert_array_equal(round_robin_scores(cj, flat_prompts, texts, k, seed=1), first)
    with pytest.raises(ValueError, match="expected K = 4 answers per prompt"):
        round_robin_scores(own, flat_prompts[:5], answers[:5], k)
