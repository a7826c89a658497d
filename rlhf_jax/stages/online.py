"""Online DPO as a library function: `train_online_dpo(OnlineDPOConfig(...))` — the pairwise
offline losses (DPO, cDPO, robust DPO, IPO, SimPO, ORPO) on the policy's own samples, ranked at
every step by a reward model, a constitution's AI judge or a text judge (Guo et al. 2024,
"Direct language model alignment from online AI feedback")."""
from __future__ import annotations

import json

import jax
import numpy as np

from rlhf_jax import data, eval as rl_eval, models, offline, ppo, rlaif, train
from rlhf_jax.stages.common import (StageResult, check_batch_size, export_policy, freeze_rule,
                                    load_policy, model_overrides, optimizer_config,
                                    shardings_of, start_run, train_with_checkpoints)
from rlhf_jax.stages.configs.online import CONSTITUTION, REWARD_MODEL, OnlineDPOConfig
from rlhf_jax.stages.layout import RunLayout
from rlhf_jax.stages.ppo import (check_positions, load_ppo_models, prompt_source,
                                 resolve_sampling)
from rlhf_jax.train import ConfigError


def _policy_and_judge(cfg: OnlineDPOConfig, layout: RunLayout, mesh, rules, key):
    """(tokenizer, policy config, policy params, reference overlay, judge). The judge is
    `judge(prompt_tokens, prompt_mask, response_tokens, response_mask) -> scores`: the reward
    model at `cfg.reward_dir` (jitted, on the mesh; the policy is then loaded beside it and must
    share its tokenizer, as in PPO), a constitution's AI judge comparing each prompt's answers
    pairwise (`rlaif.round_robin_scores`) or a text scorer, on the host. The reference overlay
    is what `offline.make_offline_loss` lays over the policy's weights: a copy of them, or with LoRA
    only the modules that train in full (the base, adapters off, is the reference)."""
    if cfg.judge == REWARD_MODEL:
        m = load_ppo_models(cfg.policy_dir, cfg.reward_dir, preset=cfg.preset, critic="none",
                            mesh=mesh, rules=rules, key=key, model_options=model_overrides(cfg))
        score = jax.jit(m.scorer(cfg.reward_std_coef, cfg.objective_weights))
        if cfg.reward_std_coef > 0 and m.reward_outputs < 2:
            raise ConfigError(f"reward_std_coef={cfg.reward_std_coef} needs an ensemble reward "
                              f"model, but {cfg.reward_dir} has one head")
        tokenizer = data.use_template(m.tokenizer, cfg.chat_template)
        return (tokenizer, m.config, m.params["policy"], m.ref_params,
                lambda *seq: score(m.reward_params, *seq))
    if jax.process_count() > 1:
        raise ConfigError(f"judge={cfg.judge!r}: a text judge reads every sample on one host; "
                          "with several processes judge by the reward model")
    tokenizer, config, _, params = load_policy(cfg, layout, mesh, rules, key)
    ref = (None if not cfg.loss.uses_reference else models.reference_overlay(config, params)
           if config.lora.enabled else jax.tree.map(lambda x: x.copy(), params))  # donated
    if cfg.judge == CONSTITUTION:
        try:
            ai = rlaif.constitution_judge(cfg.constitution, cfg.judge_model_dir, seed=cfg.seed)
        except ValueError as e:  # a malformed constitution or a missing LM judge
            raise ConfigError(str(e)) from None
        decode = lambda t, m: [tokenizer.decode(r[w > 0], skip_special_tokens=True)  # noqa
                               for r, w in zip(t, m)]

        def judge(prompt_tokens, prompt_mask, response_tokens, response_mask):
            p, pm, r, rm = jax.device_get((prompt_tokens, prompt_mask, response_tokens,
                                           response_mask))
            return rlaif.round_robin_scores(ai, decode(p, pm), decode(r, rm),
                                            cfg.samples_per_prompt, seed=cfg.seed)

        return tokenizer, config, params, ref, judge
    term = ppo.text_reward_term(cfg.judge, 1.0, tokenizer, rl_eval.TEXT_TERMS[cfg.judge])
    return tokenizer, config, params, ref, lambda *seq: term.fn(*jax.device_get(seq))


def online_update(model: models.DecoderModel, loss_cfg: offline.OfflineLossConfig, tx,
                  samples_per_prompt: int, reference_model: models.DecoderModel | None = None):
    """`update(state, inputs) -> (state, metrics)` (to jit, donating the state) of
    `offline.make_online_step`: the step's samples and scores become a `PreferenceBatch`
    (`offline.online_preference_batch`), the loss is `offline.make_offline_loss`'s on it
    (`inputs["ref_params"]`: the reference, laid over the policy's weights read by
    `reference_model` with LoRA), and `train.make_train_step` updates; the metrics add
    `offline.judged_pair_stats`."""

    def update(state, inputs):
        batch = offline.online_preference_batch(
            inputs["prompt_tokens"], inputs["prompt_mask"], inputs["response_tokens"],
            inputs["response_mask"], inputs["scores"], inputs["ended"],
            samples_per_prompt=samples_per_prompt)
        loss = offline.make_offline_loss(model, loss_cfg, inputs.get("ref_params"),
                                         reference_model)
        state, metrics = train.make_train_step(loss, tx)(state, {"batch": batch})
        return state, {**metrics, **offline.judged_pair_stats(batch, inputs["scores"])}

    return update


def train_online_dpo(cfg: OnlineDPOConfig) -> StageResult:
    """Run `cfg.steps` online steps (sample K answers per prompt, judge, take the pairwise loss
    on the judged pairs, update) with exact resume; export the policy to `<run_dir>/export`.

    Each step logs the loss and the pairwise metrics of `offline_loss_sums` (implicit rewards
    of chosen and rejected, their margin and accuracy), the judge's mean score of the samples
    and its chosen − rejected gap, the share of pairs skipped as ties, the sample length and EOS
    share, the seconds spent generating, judging and updating, and the judge calls so far.
    Rerunning resumes exactly (the sampling key is derived from the seed and the step); SIGTERM
    saves and returns a preempted result. The result's metrics hold the last step's judge score.
    """
    layout = RunLayout(cfg.run_dir)
    mesh, rules = start_run(cfg, layout)
    key, k = jax.random.key(cfg.seed), cfg.samples_per_prompt
    check_batch_size("batch_size", cfg.batch_size, mesh)
    tokenizer, config, params, ref, judge = _policy_and_judge(cfg, layout, mesh, rules,
                                                              jax.random.fold_in(key, 0))
    check_positions(cfg, config)
    pad_id = tokenizer.pad_token_id or 0
    _, prompts, note = prompt_source(cfg, layout, tokenizer, pad_id)
    lc = cfg.loss
    model = models.DecoderModel(config)
    # LoRA: the reference is the policy's own base read with adapters off (no copy)
    ref_model = models.DecoderModel(config.without_lora()) if config.lora.enabled else None
    extra = {"ref_params": ref} if lc.uses_reference and ref is not None else {}
    tx = train.make_optimizer(optimizer_config(cfg.optim, cfg.steps), params,
                              freeze=freeze_rule(cfg))
    abstract, init_state = train.compile_init(
        lambda p: train.create_train_state(p, tx, jax.random.fold_in(key, 1),
                                           param_shardings=shardings_of(params)), params)

    state_sh = jax.tree.map(lambda a: a.sharding, abstract)
    jitted = jax.jit(online_update(model, lc, tx, k, ref_model),
                     out_shardings=(state_sh, None), donate_argnums=0)
    step = offline.make_online_step(
        config=config, sampling=resolve_sampling(tokenizer, cfg), judge=judge,
        update=lambda state, inputs: jitted(state, {**inputs, **extra}), samples_per_prompt=k,
        place_batch=lambda b: train.global_batch_from_local(b, mesh, rules),
        # the constitution's judge compares every pair: K(K − 1)/2 calls per prompt
        calls_per_sample=(k - 1) / 2 if cfg.judge == CONSTITUTION else 1.0)
    result = train_with_checkpoints(
        cfg, layout, step=step, abstract_state=abstract, init_state=init_state,
        batches=prompts, mesh=mesh, rules=rules, leaf_names=train.leaf_names(params),
        progress_keys=("train/loss", "rewards/accuracy", "judge/score_mean"))
    if result.preempted:
        print(f"preempted at step {result.step}", flush=True)
        return StageResult(str(layout.root), None, result.step, True, data=(note,),
                           warnings=tuple(layout.read_warnings()))
    export_policy(layout, config, result.state.params, tokenizer)  # collective
    rows = [r for r in layout.read_metrics() if "judge/score_mean" in r] \
        if train.is_main_process() else []
    metrics = {"steps": result.step, "judge": cfg.judge,
               "judge_score_last": rows[-1]["judge/score_mean"] if rows else float(np.nan)}
    print(json.dumps(metrics), flush=True)
    return StageResult(str(layout.root), str(layout.export), result.step, False, metrics,
                       data=(note,), warnings=tuple(layout.read_warnings()))
