"""Reward-model refresh during PPO (`PPOStageConfig.refresh`): after every `refresh.every`-th
iteration the current policy's fresh samples are labelled, the reward model is measured on them
and trained on the newest labelled pairs, and PPO goes on scoring with it (why:
`reward.refresh`)."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from rlhf_jax import data, eval as rl_eval, models, offline, ppo, reward, train
from rlhf_jax.sampling import SamplingConfig, generate
from rlhf_jax.stages.common import check_batch_size
from rlhf_jax.stages.configs.ppo import PPOStageConfig
from rlhf_jax.train import ConfigError, OptimizerConfig


def refresh_update(model: models.DecoderModel, tx, *, steps: int, batch_size: int,
                   heldout: int, prompt_len: int):
    """`update(params, buffer, labels, fresh, reference, key) -> (params, buffer, labels,
    metrics)`, to jit: one refresh of the reward model `model`.

    `fresh` holds one refresh's n pairs, tokens/mask [n, 2, T] with `ranks` [n, 2] (0: the
    preferred response) and `labelled` [n] (False: a tie, left out); the last `heldout` pairs
    are held out. The reward model is measured on the fresh pairs before it learns from them
    (`refresh/accuracy_fresh`: on every labelled pair, text it never saw;
    `refresh/accuracy_heldout_before` on the held-out ones), the other labelled pairs join the
    `buffer` (`reward.buffer_add`: the newest kept), and `steps` steps of the reward stage's
    Bradley–Terry objective (`reward.make_reward_loss`, `train.make_train_step` with `tx`, its
    state fresh at every refresh) each take `batch_size` pairs drawn from the buffer
    (`reward.buffer_batch`; key `key`; `steps` 0: none, the model is only measured). With a
    `reference` set, {"tokens", "mask"} [N, T] of
    reference-policy responses, the head is then normalised to mean 0 / std 1 on it
    (`reward.renormalised_head`; `refresh/reference_std` is the spread it had before). Then
    `refresh/accuracy_heldout` and `refresh/loss_heldout` measure the model on the held-out
    pairs. `labels` counts the labelled pairs of every refresh so far."""
    loss = reward.make_reward_loss(model, reward.RewardLossConfig())
    train_step = train.make_train_step(loss, tx)

    def update(params, buffer, labels, fresh, reference, key):
        tokens, mask = reward.chosen_first(fresh["tokens"], fresh["mask"], fresh["ranks"])
        labelled = fresh["labelled"]
        held = jnp.arange(tokens.shape[0]) >= tokens.shape[0] - heldout
        held_out = reward.pair_batch(tokens, mask, labelled & held, prompt_len)
        seen = reward.pair_accuracy(loss, params, reward.pair_batch(tokens, mask, labelled,
                                                                    prompt_len))
        before = reward.pair_accuracy(loss, params, held_out)
        buffer = reward.buffer_add(buffer, tokens, mask, labelled & ~held)
        state = train.create_train_state(params, tx, jax.random.fold_in(key, 0))

        def body(state, i):
            batch = reward.buffer_batch(buffer, jax.random.fold_in(jax.random.fold_in(key, 1),
                                                                   i), batch_size, prompt_len)
            state, out = train_step(state, batch)
            return state, (out["train/loss"], out["train/skipped"])

        trained, spread = {}, {}
        if steps:  # 0: measure only
            state, (losses, skipped) = jax.lax.scan(body, state, jnp.arange(steps))
            params = state.params
            trained = {"refresh/loss": jnp.mean(losses), "refresh/skipped": jnp.sum(skipped)}
        if reference is not None:
            rewards = model.apply({"params": params}, reference["tokens"],
                                  reference["mask"]).reward
            rewards = rewards.reshape(rewards.shape[0], -1)
            params = reward.renormalised_head(params, rewards)
            spread = {"refresh/reference_std": jnp.mean(jnp.std(rewards, 0))}
        after = reward.pair_accuracy(loss, params, held_out)
        labels = labels + jnp.sum(labelled).astype(labels.dtype)
        return params, buffer, labels, {**spread, **trained,
            "refresh/accuracy_fresh": seen["accuracy"],
            "refresh/accuracy_heldout_before": before["accuracy"],
            "refresh/accuracy_heldout": after["accuracy"],
            "refresh/loss_heldout": after["loss"], "refresh/pairs": seen["pairs"],
            "refresh/buffer": buffer["count"].astype(jnp.float32),
            "refresh/labels": labels.astype(jnp.float32)}

    return update


class RewardRefresher:
    """The PPO stage's reward-model refresh (`cfg.refresh`, a `RewardRefreshConfig`).

    `wrap(step_fn)` runs a refresh after every `every`-th iteration s: `prompts` prompts drawn
    from `source` (the prompt split) without replacement by key k_s = fold_in(fold_in(run key,
    s), 2) (PPO's iteration s + 1 takes children 0 and 1 of the same node, the refresh child 2),
    each answered twice by the current policy; the pairs labelled on the host by the judge or a
    simulated annotator around it (`reward.pair_labels`; a pair of two identical responses is
    left out, like a tie); then `refresh_update`. With `normalise`, its reference set is the
    `reference(state)` policy's (read with `reference_config`) answers drawn as a refresh at
    step 0 would draw them, k_0: the same set at every refresh, and sampled again alike by a
    resumed run. The refreshed parameters, the buffer and the label count live in the train
    state (`state.helpers["refresh"]`), so every checkpoint holds the refresh it followed and a
    resumed run refreshes exactly as the uninterrupted one; `reward_params(state)` is what
    PPO's `score_params` reads each iteration. Single process only (the samples are judged on
    one host); a multi-objective reward model is refused (a label says which response is
    better, not by which objective).
    """

    def __init__(self, cfg: PPOStageConfig, m, tokenizer, sampling: SamplingConfig, source,
                 mesh, rules, *, reference, reference_config: models.TransformerConfig):
        rc = cfg.refresh
        if jax.process_count() > 1:
            raise ConfigError(f"refresh.every={rc.every}: the refresh judges the fresh samples "
                              "on one host and runs on a single process only; set "
                              "refresh.every=0")
        if m.objectives:
            raise ConfigError(f"refresh.every={rc.every}: the reward model at {cfg.reward_dir} "
                              f"has objectives {list(m.objectives)}; a refresh's labels say "
                              "which response is better, not by which objective")
        check_batch_size("refresh.prompts × 2", 2 * rc.prompts, mesh)
        self.rc, self.m, self.sampling, self.source = rc, m, sampling, source
        self.pad_id = tokenizer.pad_token_id or 0
        self.prompt_len = int(source[0]["prompt"].shape[0])
        self.judge = ppo.text_reward_term(rc.judge, 1.0, tokenizer,
                                          rl_eval.TEXT_TERMS[rc.judge]).fn
        self.place = lambda tree: train.global_batch_from_local(tree, mesh, rules)
        self.replicated = NamedSharding(mesh, PartitionSpec())
        model = models.DecoderModel(m.reward_config, heads=("reward",),
                                    num_reward_outputs=m.reward_outputs)
        tx = train.make_optimizer(OptimizerConfig(learning_rate=rc.learning_rate,
                                                  total_steps=max(rc.steps, 1),
                                                  schedule="constant"),
                                  m.reward_params)
        self.update = refresh_update(model, tx, steps=rc.steps, batch_size=rc.batch_size,
                                     heldout=rc.heldout, prompt_len=self.prompt_len)
        self.reference, self.reference_config = reference, reference_config
        self._jitted = self._reference_set = None

    def initial_helpers(self) -> dict:
        """The train state's refresh helpers at step 0: the loaded reward model, an empty
        buffer, no labels."""
        put = lambda x: jax.device_put(x, self.replicated)  # noqa: E731
        buffer = reward.buffer_init(self.rc.buffer, self.prompt_len + self.sampling.max_new_tokens)
        return {"refresh": {"params": self.m.reward_params, "buffer": jax.tree.map(put, buffer),
                            "labels": put(np.zeros((), np.int32))}}

    @staticmethod
    def reward_params(state):
        """The reward model PPO scores with at `state`: the newest refresh's."""
        return state.helpers["refresh"]["params"]

    def wrap(self, step_fn):
        """`step_fn` followed, after every `every`-th iteration, by a refresh whose metrics
        join the iteration's."""

        def step(state, batch):
            state, metrics = step_fn(state, batch)
            if int(state.step) % self.rc.every:
                return state, metrics
            state, extra = self.refresh(state)
            return state, {**metrics, **extra}

        return step

    def _answers(self, key, params, config):
        """The refresh prompts of key `key` (each twice: [2n, P]) and the answers of the policy
        `params` (read with `config`) to them."""
        n = self.rc.prompts
        idx = jax.random.choice(jax.random.fold_in(key, 0), len(self.source), (n,),
                                replace=n > len(self.source))
        stored = np.stack([self.source[int(i)]["prompt"] for i in np.asarray(idx)])
        arrays = data.prompt_arrays(np.repeat(stored, 2, axis=0), self.pad_id)
        tokens, mask = self.place((arrays["tokens"], arrays["mask"]))
        return tokens, mask, generate(params, tokens, mask, jax.random.fold_in(key, 1),
                                      config=config, sampling=self.sampling)

    def reference_set(self, state) -> dict | None:
        """{"tokens", "mask"} [2n, P+N] of the reference policy's answers that `normalise`
        normalises on (None without it, or with `steps` 0); sampled once per process."""
        if self.rc.normalise and self.rc.steps and self._reference_set is None:
            key = jax.random.fold_in(jax.random.fold_in(state.key(), 0), 2)
            tokens, mask, sample = self._answers(key, self.reference(state),
                                                 self.reference_config)
            self._reference_set = {"tokens": jnp.concatenate([tokens, sample.tokens], 1),
                                   "mask": jnp.concatenate([mask, sample.mask], 1)}
        return self._reference_set

    def _labelled_pairs(self, state, key):
        """The fresh pairs of the refresh with key `key`: (`fresh` for `refresh_update`, the
        judge's scores [2n])."""
        rc, n = self.rc, self.rc.prompts
        tokens, mask, sample = self._answers(key, state.params["policy"], self.m.config)
        host = jax.device_get((tokens, mask, sample.tokens, sample.mask))
        scores = np.asarray(self.judge(*host), np.float64)
        simulated = rc.labels == "simulated"
        uniform = np.asarray(jax.random.uniform(jax.random.fold_in(key, 2), (n,))) \
            if simulated else None
        a_wins, labelled = reward.pair_labels(scores[0::2], scores[1::2], uniform,
                                              temperature=rc.temperature if simulated else 0.0)
        r_tok, r_mask = host[2] * host[3], host[3]
        same = np.all((r_tok[0::2] == r_tok[1::2]) & (r_mask[0::2] == r_mask[1::2]), axis=1)
        labelled = labelled & ~same
        label_scores = np.stack([a_wins, ~a_wins], axis=1).reshape(-1).astype(np.float32)
        batch = offline.online_preference_batch(
            tokens, mask, sample.tokens, sample.mask, label_scores, np.ones(2 * n, np.int32),
            samples_per_prompt=2)
        return {"tokens": batch.tokens, "mask": batch.mask, "ranks": batch.ranks,
                "labelled": labelled}, scores

    def refresh(self, state):
        """(state with the refreshed reward model, the refresh's metrics) after iteration
        `state.step`."""
        start = time.perf_counter()
        key = jax.random.fold_in(jax.random.fold_in(state.key(), int(state.step)), 2)
        fresh, scores = self._labelled_pairs(state, key)
        held = state.helpers["refresh"]
        if self._jitted is None:  # keep the helpers' shardings: PPO's programs stay compiled
            shard = jax.tree.map(lambda x: x.sharding, held)
            self._jitted = jax.jit(self.update, out_shardings=(
                shard["params"], shard["buffer"], shard["labels"], None))
        params, buffer, labels, metrics = self._jitted(
            held["params"], held["buffer"], held["labels"], fresh, self.reference_set(state),
            jax.random.fold_in(key, 3))
        jax.block_until_ready(params)
        helpers = {**state.helpers, "refresh": {"params": params, "buffer": buffer,
                                                "labels": labels}}
        return state.replace(helpers=helpers), {
            **metrics, "refresh/judge_score": float(scores.mean()),
            "refresh/tie_fraction": float(1.0 - fresh["labelled"].mean()),
            "time/refresh": time.perf_counter() - start}

    def export(self, path, state, tokenizer, reward_dir: str) -> None:
        """Write the refreshed reward model of `state` to `path` (`reward.save_reward_model`;
        collective); `reward_head.json` names the model it was refreshed from, the labels it
        learnt from and whether its head was normalised on the reference set."""
        reward.save_reward_model(path, self.m.reward_config, self.reward_params(state),
                                 tokenizer=tokenizer, metadata={
                                     "refreshed_from": str(reward_dir),
                                     "refresh_labels": int(state.helpers["refresh"]["labels"]),
                                     "refresh_every": self.rc.every,
                                     "refresh_normalised": self.rc.normalise})
