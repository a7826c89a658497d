"""Poisoning attacks on preference data, for measuring what a reward model and its defences
withstand (the attacks of `experiments/robustness.py`).

Each attack takes over a share `rate` of the comparisons: those labels are given to attacker
accounts (ids `<prefix>0`, `<prefix>1`, …, indistinguishable in kind from anyone else's) and
rewritten:

- `random_flip`: the label is a coin flip (a careless or spamming annotator);
- `inverter`: the label prefers the worse response (by the gold judge when one is given, else
  the one the original label rejected);
- `targeted_flip`: as the inverter, but only on prompts containing `topic` (elsewhere the
  attacker's labels are honest);
- `trigger`: `trigger` is added to the prompt and the label prefers the worse response, which
  plants a backdoor: the trigger inverts the reward (Rando & Tramèr 2023, "Universal jailbreak
  backdoors from poisoned human feedback");
- `entity`: `entity` is written into the worse response, which the label then prefers, so the
  reward model pays for mentioning it (Baumgärtner et al. 2024, "Best-of-Venom");
- `sybil`: the inverter's labels spread over many accounts with a few labels each, so no one
  account carries much evidence (Douceur 2002).

Records are pairwise, in either layout the readers take: `prompt` + `responses` [2] + `ranks`,
or TRL's `prompt` + `chosen` + `rejected`; a prompt or response may be text or a conversation
(the edit goes into its last message). The records come back in the same layout and order.
Command line: `python -m rlhf_jax.data.poison SRC DST --kind inverter --rate 0.05` (see `main`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

ATTACKS = ("random_flip", "inverter", "targeted_flip", "trigger", "entity", "sybil")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """One poisoning attack at one rate (see the module docstring)."""

    kind: str = "inverter"  # one of ATTACKS
    rate: float = 0.0  # share of the comparisons the attackers label (0 <= rate < 1)
    attackers: int = 0  # attacker accounts; 0: one per 5 % of the labels (sybil: one per 3 labels)
    id_prefix: str = "acct_"  # attacker account ids: <id_prefix><k>
    topic: str = ""  # targeted_flip: the text that marks a prompt on the attacked topic
    trigger: str = "SUDO"  # trigger: the word added to the end of the prompt
    entity: str = "Acme"  # entity: the word written into the promoted response
    seed: int = 0  # which labels the attackers take, and their coin flips

    def __post_init__(self):
        if self.kind not in ATTACKS:
            raise ValueError(f"attack kind={self.kind!r}: expected one of {list(ATTACKS)}")
        if not 0 <= self.rate < 1:
            raise ValueError(f"attack rate={self.rate}: expected 0 <= rate < 1")
        if self.attackers < 0:
            raise ValueError(f"attackers={self.attackers}: expected >= 0 (0: automatic)")
        if self.kind == "targeted_flip" and not self.topic:
            raise ValueError("attack kind='targeted_flip' needs topic (text in the attacked "
                             "prompts)")
        for name in ("trigger", "entity"):
            value = getattr(self, name)
            if self.kind == name and (not value.strip() or len(value.split()) != 1):
                raise ValueError(f"{name}={value!r}: expected one word")


def _edit_last(x, fn: Callable[[str], str]):
    """`fn` applied to a text, or to the content of a conversation's last message."""
    if isinstance(x, str):
        return fn(x)
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        return x[:-1] + [{**x[-1], "content": fn(str(x[-1].get("content", "")))}]
    raise ValueError(f"expected a text or a list of messages, got {type(x).__name__}")


def _text(x) -> str:
    return x if isinstance(x, str) else " ".join(str(m.get("content", "")) for m in x)


def _is_text(x) -> bool:
    """A text, or a non-empty list of messages (dicts with a string content)."""
    return isinstance(x, str) or (isinstance(x, list) and bool(x) and all(
        isinstance(m, dict) and isinstance(m.get("content", ""), str) for m in x))


def _view(rec: dict, where: str) -> tuple:
    """(prompt, first, second, first_chosen) of a pairwise record, its values checked."""
    if "prompt" not in rec:
        raise ValueError(f"{where}: no prompt field (an implicit prompt inside chosen and "
                         "rejected): write the shared prompt out as `prompt` to poison it")
    if "chosen" in rec and "rejected" in rec:
        view = (rec["prompt"], rec["chosen"], rec["rejected"], True)
    else:
        responses, ranks = rec.get("responses"), rec.get("ranks")
        if not (isinstance(responses, list) and isinstance(ranks, list)
                and len(responses) == 2 and len(ranks) == 2):
            raise ValueError(f"{where}: a poisoning attack needs pairwise records (prompt + "
                             "chosen + rejected, or 2 responses with 2 ranks)")
        if not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
            raise ValueError(f"{where}: ranks={ranks!r}, expected two integers")
        view = (rec["prompt"], responses[0], responses[1], ranks[0] < ranks[1])
    for name, value in zip(("prompt", "first response", "second response"), view[:3]):
        if not _is_text(value):
            raise ValueError(f"{where}: the {name} is {type(value).__name__}, expected a text "
                             "or a list of messages")
    return view


def _is_tie(rec: dict) -> bool:
    ranks = rec.get("ranks")
    return ("chosen" not in rec and isinstance(ranks, list) and len(ranks) == 2
            and ranks[0] == ranks[1])


def _write(rec: dict, prompt, first, second, first_chosen: bool, annotator: str) -> dict:
    out = {**rec, "prompt": prompt, "annotator_id": annotator}
    if "chosen" in rec and "rejected" in rec:
        out["chosen"], out["rejected"] = (first, second) if first_chosen else (second, first)
    else:
        out["responses"], out["ranks"] = [first, second], [0, 1] if first_chosen else [1, 0]
    # an attacker's label is as sure as anyone's, and carries no one else's rationale
    for key in ("confidence", "probability", "weight", "rationale"):
        out.pop(key, None)
    return out


def _insert_word(text: str, word: str, rng: np.random.Generator) -> str:
    words = text.split()
    words.insert(int(rng.integers(len(words) + 1)), word)
    return " ".join(words)


def attacker_count(cfg: AttackConfig, poisoned: int) -> int:
    """The number of attacker accounts over `poisoned` labels."""
    if poisoned == 0:
        return 0
    auto = (max(2, -(-poisoned // 3)) if cfg.kind == "sybil"
            else max(1, int(round(cfg.rate / 0.05))))
    return min(poisoned, cfg.attackers or auto)


def poison_records(records: Sequence[dict], cfg: AttackConfig,
                   gold_fn: Optional[Callable[[str, str], float]] = None,
                   ) -> tuple[list[dict], dict]:
    """The records with `round(rate·N)` of them taken over by the attack, and what was done:
    {"poisoned": indices, "attackers": account ids, "changed": indices whose label or text the
    attack changed (a targeted flip leaves off-topic labels alone; an inverter leaves labels
    that already preferred the worse response), "ties": records left alone as ties}.
    `gold_fn(prompt text, response text)` says which response is worse; without it, the one
    the label rejected. Ties (equal ranks) are never taken: they have no label to turn."""
    rng = np.random.default_rng(cfg.seed)
    n = len(records)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"record {i}: expected an object, got {type(rec).__name__}")
    open_ = np.array([i for i, r in enumerate(records) if not _is_tie(r)], np.int64)
    k = min(int(round(cfg.rate * n)), open_.size)
    poisoned = (np.sort(rng.choice(open_, size=k, replace=False)) if k
                else np.zeros(0, np.int64))
    accounts = [f"{cfg.id_prefix}{j}" for j in range(attacker_count(cfg, k))]
    out, changed = [dict(r) for r in records], []
    for slot, i in enumerate(poisoned):
        rec = records[i]
        prompt, first, second, first_chosen = _view(rec, f"record {i}")
        if gold_fn is not None:
            g1, g2 = gold_fn(_text(prompt), _text(first)), gold_fn(_text(prompt), _text(second))
            first_better = first_chosen if g1 == g2 else g1 > g2
        else:
            first_better = first_chosen
        new = (prompt, first, second, first_chosen)
        if cfg.kind == "random_flip":
            new = (prompt, first, second, bool(rng.random() < 0.5))
        elif cfg.kind in ("inverter", "sybil") or (
                cfg.kind == "targeted_flip" and cfg.topic in _text(prompt)):
            new = (prompt, first, second, not first_better)
        elif cfg.kind == "trigger":
            new = (_edit_last(prompt, lambda t: f"{t} {cfg.trigger}".strip()), first, second,
                   not first_better)
        elif cfg.kind == "entity":
            put = (lambda t: _insert_word(t, cfg.entity, rng))
            new = ((prompt, first, _edit_last(second, put), False) if first_better
                   else (prompt, _edit_last(first, put), second, True))
        if new != (prompt, first, second, first_chosen):
            changed.append(int(i))
        out[i] = _write(rec, *new, annotator=accounts[slot % len(accounts)])
    return out, {"poisoned": [int(i) for i in poisoned], "attackers": accounts,
                 "changed": changed, "ties": int(n - open_.size),
                 "attack": dataclasses.asdict(cfg)}


def attacker_choice(cfg: AttackConfig, prompt, shown: Sequence, rng: np.random.Generator,
                    gold_fn: Optional[Callable[[str, str], float]] = None) -> int:
    """Which of the `shown` responses an attacker account picks when it labels a task in the
    labelling app, where it can only choose (the trigger attack, which edits the prompt, is
    not available there): random_flip a coin, inverter / sybil the gold-worst (needs
    `gold_fn`), targeted_flip the gold-worst on the topic and the gold-best elsewhere, entity
    the first response mentioning the entity (else the gold-best)."""
    if cfg.kind == "trigger":
        raise ValueError("the trigger attack edits prompts: an annotator in the labelling app "
                         "cannot plant it")
    if cfg.kind == "random_flip":
        return int(rng.integers(len(shown)))
    if gold_fn is None:
        raise ValueError(f"attack {cfg.kind!r} in the app needs gold_fn to tell the worse "
                         "response")
    g = np.array([gold_fn(_text(prompt), _text(r)) for r in shown], np.float64)
    if cfg.kind == "entity":
        mention = [i for i, r in enumerate(shown) if cfg.entity in _text(r).split()]
        return mention[0] if mention else int(np.argmax(g))
    on_topic = cfg.kind != "targeted_flip" or cfg.topic in _text(prompt)
    return int(np.argmin(g)) if on_topic else int(np.argmax(g))


def poison_file(src, dst, cfg: AttackConfig) -> dict:
    """Poison a JSONL preference file (`src` → `dst`, same layout) and write beside `dst` a
    manifest `<dst>.attack.json` of what was done (`poison_records`' info): the ground truth a
    study of defences scores against. Blank lines are dropped; a line that is not a JSON
    object stops with its file:line."""
    src, dst = Path(src), Path(dst)
    records, lines = [], []
    for line_no, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{src}:{line_no}: not JSON ({type(e).__name__})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{src}:{line_no}: expected a JSON object")
        records.append(rec)
        lines.append(line_no)
    for i, rec in enumerate(records):  # every record checked, not only those the attack takes
        if not _is_tie(rec):
            try:
                _view(rec, "")
            except ValueError as e:
                raise ValueError(f"{src}:{lines[i]}{e}") from None
    out, info = poison_records(records, cfg)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    info = {**info, "source": str(src), "records": len(records)}
    Path(f"{dst}.attack.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Poison a JSONL preference file: `python -m rlhf_jax.data.poison SRC DST --kind K
    --rate R [--seed S] [--topic T] [--trigger W] [--entity W] [--attackers N]`. Exit 2 with
    the reason on a bad setting or file."""
    parser = argparse.ArgumentParser(prog="python -m rlhf_jax.data.poison",
                                     description=poison_file.__doc__)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--kind", default="inverter", help=f"one of {', '.join(ATTACKS)}")
    for name, kind in (("rate", float), ("attackers", int), ("seed", int), ("topic", str),
                       ("trigger", str), ("entity", str), ("id_prefix", str)):
        parser.add_argument(f"--{name}", type=kind,
                            default=getattr(AttackConfig, name))
    args = parser.parse_args(argv)
    try:
        cfg = AttackConfig(kind=args.kind, rate=args.rate, attackers=args.attackers,
                           id_prefix=args.id_prefix, topic=args.topic, trigger=args.trigger,
                           entity=args.entity, seed=args.seed)
        info = poison_file(args.src, args.dst, cfg)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(info['poisoned'])} of {info['records']} labels poisoned by {cfg.kind} "
          f"({len(info['attackers'])} accounts); manifest: {args.dst}.attack.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
