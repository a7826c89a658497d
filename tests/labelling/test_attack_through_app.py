"""Attacker accounts label through the app as anyone would (data.poison.attacker_choice), the
screening reads every annotator's labels against a judge's margins, quarantines the inverters
in the store with its evidence, logs each decision, and the export leaves them out."""
import json

import numpy as np

from rlhf_jax import data
from rlhf_jax.data.poison import AttackConfig, attacker_choice
from rlhf_jax.interpret import DecisionLog, verify_log
from rlhf_jax.labelling import export_all
from rlhf_jax.studies.screen_app import screen_app_annotators
from tests.labelling.conftest import app_env, form_fields

GOLD = (lambda prompt, text: data.builtin.gold_score(text))  # noqa: E731
HONEST = [f"h{i}" for i in range(5)]
ATTACKERS = ["acct_0", "acct_1"]


def _label_all(store, client, who, choose):
    c = client(who)
    for _ in range(200):
        page = c.get("/label")
        f = form_fields(page.text)
        if "assignment" not in f:
            return
        a = store.assignment(int(f["assignment"]), who)
        shown = [a.task.responses[i] for i in a.shown_order]
        assert c.post("/label", data={**f, "choice": str(choose(a.task.prompt, shown))}
                      ).status_code == 303


def test_inverters_labelling_through_the_app_are_quarantined_and_left_out(tmp_path):
    rng = np.random.default_rng(0)
    tasks = [{"prompt": str(rng.choice(data.builtin.PROMPTS)),
              "responses": [data.builtin.random_response(rng, 6),
                            data.builtin.random_response(rng, 6)], "id": f"t{i}"}
             for i in range(40)]
    store, _, client = app_env(f"sqlite:///{tmp_path / 'l.sqlite'}",
                               annotators=HONEST + ATTACKERS, tasks=tasks, labels_per_task=7)
    try:
        def honest(prompt, shown):
            g = [GOLD(prompt, r) for r in shown]
            best = int(np.argmax(g)) if g[0] != g[1] else int(rng.integers(2))
            return best if rng.random() < 0.9 else 1 - best

        inverter = AttackConfig(kind="inverter")
        for who in HONEST:
            _label_all(store, client, who, honest)
        for who in ATTACKERS:
            _label_all(store, client, who,
                       lambda p, shown: attacker_choice(inverter, p, shown, rng, GOLD))
        assert len(store.labels()) == 40 * 7
        log = DecisionLog(tmp_path / "decisions.jsonl")
        margin = lambda pairs: np.array([GOLD(p, a) - GOLD(p, b) for p, a, b in pairs])  # noqa
        out = screen_app_annotators(store, margin, log=log)
        assert sorted(out["quarantined"]) == ATTACKERS
        assert sorted(store.quarantined()) == ATTACKERS
        assert all(out["annotators"][h]["action"] == "keep" for h in HONEST)
        why = store.quarantined()["acct_0"]
        assert why.actor == "annotator_screening"
        assert json.loads(why.reason)["kappa"] < 0
        assert verify_log(log.path).ok
        entries = [json.loads(x) for x in log.path.read_text().splitlines()]
        assert {e["target"] for e in entries} == {f"annotator:{a}" for a in HONEST + ATTACKERS}
        # screening again changes nothing: they are quarantined already
        assert screen_app_annotators(store, margin)["quarantined"] == []
        manifest = export_all(store.labels(), tmp_path / "export", (1, 7),
                              leave_out_annotators=store.quarantined())
        kept = [json.loads(x) for x in (tmp_path / "export" / "pairwise.jsonl").open()]
        assert kept and not {r["annotator_id"] for r in kept} & set(ATTACKERS)
        assert sorted(manifest["left_out"]["annotators"]) == ATTACKERS
    finally:
        store.close()
