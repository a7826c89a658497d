"""The reward model's decisions during PPO, appended to a tamper-evident decision log."""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from rlhf_jax import interpret, ppo, train
from rlhf_jax.stages.configs.ppo import PPOStageConfig
from rlhf_jax.train import ConfigError


class DecisionRecorder:
    """Appends each PPO iteration's reward-model decisions to `cfg.decision_log` (process 0),
    with context "ppo/iteration N run_dir=<absolute run_dir>" (N counts from 1, as the steps of
    metrics.jsonl do).

    The rollout's rows reach the host through a zero-weight `ppo.RewardTerm` (it adds 0 to the
    score and shows as `reward_terms/decision_log` = 0 in the metrics), where
    `interpret.LoggedScorer` scores them with the reward model once more: the step returns no
    per-row scores and `Rollout.scores` is the score after clipping, terms and the missing-EOS
    penalty, without the ensemble's members. So one extra reward-model forward pass per
    iteration (counted in `time/score`), only with the log on; without it nothing in the step
    changes.

    Resuming: a run restarted from a checkpoint at step c repeats iterations c+1… that may
    already be in the log (they ran after the checkpoint, before the interruption). The newest
    entry of this run dir is looked up once, from the end of the log, and iterations up to its N
    are not logged again: exact resume redraws the same rollouts for them (same keys and
    weights, up to the platform's determinism). A run started from step 0 logs every
    iteration, even if the log holds an earlier attempt's entries for this run dir.
    """

    def __init__(self, cfg: PPOStageConfig):
        self.log = interpret.DecisionLog(cfg.decision_log)
        self.run_dir = str(Path(cfg.run_dir).resolve())
        self.scorer = self.params = self.params_of = None
        self.iteration, self.logged_through = 0, None
        self.term = ppo.RewardTerm("decision_log", 0.0, self._record)
        if jax.process_count() > 1:
            raise ConfigError("decision_log is supported on a single process only (the "
                              "rollout's rows are fetched to one host); leave it empty")
        if train.is_main_process():
            try:
                self.log.head()  # refuse a torn log before any work starts
            except (interpret.DecisionLogError, OSError) as e:
                raise ConfigError(f"decision_log={cfg.decision_log!r}: {e}") from None

    def set_reward_model(self, score_fn, reward_params) -> None:
        """The PPO score function and the reward model's parameters whose decisions are logged,
        or `fn(state)` giving those of each iteration (a refreshed reward model)."""
        self.scorer = interpret.LoggedScorer(score_fn, self.log)
        self.params_of = reward_params if callable(reward_params) else lambda state: reward_params

    def context(self, iteration: int) -> str:
        """The context of iteration `iteration`'s decisions."""
        return f"ppo/iteration {iteration} run_dir={self.run_dir}"

    def _newest_logged(self) -> int:
        prefix, suffix = "ppo/iteration ", f" run_dir={self.run_dir}"

        def ours(entry):
            ctx = entry.get("context")
            return isinstance(ctx, str) and ctx.startswith(prefix) and ctx.endswith(suffix) \
                and ctx[len(prefix):-len(suffix)].isdigit()

        entry = self.log.find_last(ours)
        return 0 if entry is None else int(entry["context"][len(prefix):-len(suffix)])

    def wrap(self, step_fn):
        """`step_fn` that tells the term which iteration runs."""

        def step(state, batch):
            self.iteration, self.params = int(state.step) + 1, self.params_of(state)
            if self.logged_through is None:  # the first iteration of this process
                resumed = self.iteration > 1 and train.is_main_process()
                self.logged_through = self._newest_logged() if resumed else 0
            return step_fn(state, batch)

        return step

    def _record(self, prompt_tokens, prompt_mask, response_tokens, response_mask):
        if train.is_main_process() and self.iteration > self.logged_through:
            self.scorer(self.params, prompt_tokens, prompt_mask, response_tokens, response_mask,
                        context=self.context(self.iteration))
        return np.zeros(len(prompt_tokens), np.float32)
