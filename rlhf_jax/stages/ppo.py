"""PPO against a reward model as a library function: `train_ppo(PPOStageConfig(...))`."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import jax

from rlhf_jax import data, eval as rl_eval, models, ppo, reward, sharding, train
from rlhf_jax.models import CheckpointFormatError, TransformerConfig
from rlhf_jax.sampling import SamplingConfig
from rlhf_jax.stages.common import (StageResult, builtin_file, check_batch_size,
                                    data_note, export_policy, model_overrides, optimizer_config,
                                    shardings_of, start_run, train_with_checkpoints, warn)
from rlhf_jax.stages.configs.ppo import PPOStageConfig, PromptData, PtxData  # noqa: F401
from rlhf_jax.stages.decisions import DecisionRecorder
from rlhf_jax.stages.layout import RunLayout
from rlhf_jax.stages.refresh import RewardRefresher
from rlhf_jax.stages.scoring import cost_term, reward_scorer, reward_terms
from rlhf_jax.train import ConfigError


@dataclasses.dataclass
class PPOModels:
    """Everything loaded, sharded on the mesh. `params` is the trainable {"policy"[, "critic"]}."""

    config: TransformerConfig
    reward_config: TransformerConfig
    reward_params: Any
    reward_outputs: int
    tokenizer: Any
    # LoRA: None (the policy's own weights, read with adapters off) or copies of the modules
    # that train in full (`lora.modules_to_save`), laid over the policy's weights
    ref_params: Any
    params: dict
    critic_lora: bool = False  # the separate critic carries adapters (same lora config)
    objectives: tuple = ()  # a multi-objective reward model's heads, by name

    @property
    def critic_config(self):
        """The separate critic's config, or None when the value head is on the policy."""
        if "critic" not in self.params:
            return None
        return self.reward_config.replace(lora=_critic_lora(self.config.lora)) \
            if self.critic_lora else self.reward_config

    def freeze_rule(self):
        """The optimiser's frozen-leaf rule: with LoRA the policy's base (and an adapted
        critic's) train no weights but their adapters; None without LoRA."""
        if not self.config.lora.enabled:
            return None
        return models.frozen_base(*(("policy", "critic") if self.critic_lora else ("policy",)),
                                  train=self.config.lora.modules_to_save)

    def scorer(self, std_coef: float = 0.0, objective_weights: str = "") \
            -> reward.reward_model_scorer:
        """The reward model as a PPO score_fn (`reward_scorer`)."""
        return reward_scorer(self.reward_config, self.reward_outputs, self.objectives,
                             std_coef, objective_weights)


def load_ppo_models(policy_dir: str, reward_dir: str, *, preset: str, critic: str, mesh, rules,
                    key, model_options: Optional[dict] = None,
                    critic_lora: bool = True) -> PPOModels:
    """The reward model from its export; the policy from a local HF directory (or `preset`,
    randomly initialised, with the reward model's vocabulary); the reference as a frozen copy of
    the policy; the critic initialised from the reward model (`critic="reward"`), a value head
    on the policy (`critic="shared"`) or none (`critic="none"`, for critic-free advantages).
    The two tokenizers must agree. `model_options` (remat, attention, lora) apply to every
    trained model. With LoRA (`model_options["lora"]`) the reference is the policy's own base
    with adapters off (no copy), and a critic initialised from the reward model trains
    adapters on its frozen backbone (`critic_lora`) or all its weights."""
    if critic not in ("reward", "shared", "none"):
        raise ConfigError(f"critic={critic!r}: expected 'reward', 'shared' or 'none'")
    if not os.path.isdir(reward_dir):
        raise CheckpointFormatError(
            f"reward_dir={str(reward_dir)!r} does not exist; train one first with "
            "`python experiments/train_reward.py` or point --config.reward_dir at a reward "
            "model export")
    rm_config, rm_params, rm_meta = reward.load_reward_model(reward_dir)
    options = dict(model_options or {})
    lora = options.get("lora", models.LoraConfig())
    rm_config = rm_config.replace(**{k: v for k, v in options.items() if k != "lora"})
    rm_model = models.DecoderModel(rm_config, heads=("reward",),
                                   num_reward_outputs=rm_meta["num_outputs"])
    rm_params = sharding.shard_params(rm_params, models.logical_axes(rm_model), mesh, rules)
    tokenizer = models.load_tokenizer(reward_dir, rm_config)
    heads = ("lm", "value") if critic == "shared" else ("lm",)
    overrides = {**options, **({} if policy_dir else {"vocab_size": rm_config.vocab_size})}
    config, _, policy = models.load_or_init_model(policy_dir, preset, mesh, rules, key,
                                                  heads=heads, **overrides)
    if policy_dir:
        policy_tok = models.load_tokenizer(policy_dir, config)
        if policy_tok.get_vocab() != tokenizer.get_vocab():
            raise CheckpointFormatError(
                f"the tokenizers of policy_dir={str(policy_dir)!r} and reward_dir="
                f"{str(reward_dir)!r} differ; the reward model must read the policy's tokens")
    if config.vocab_size != rm_config.vocab_size:
        raise CheckpointFormatError(f"policy vocab_size {config.vocab_size} != reward model "
                                    f"vocab_size {rm_config.vocab_size}")
    copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)  # noqa: E731 - the update donates
    # LoRA: the reference is the frozen base itself, read with adapters off
    ref = models.reference_overlay(config, policy) if lora.enabled else \
        {k: v for k, v in copy(policy).items() if k != "value_head"}
    params = {"policy": policy}
    critic_lora = critic_lora and lora.enabled and critic == "reward"
    if critic == "reward":
        critic_params = reward.critic_from_reward_model(rm_params)
        if critic_lora:  # the reward model's backbone, frozen, with fresh adapters
            cmodel = models.DecoderModel(rm_config.replace(lora=_critic_lora(lora)),
                                         heads=("value",))
            axes = models.logical_axes(cmodel)
            fresh = jax.jit(lambda k: models.adapter_params(models.init_params(cmodel, k)))(
                jax.random.fold_in(key, 1))
            fresh = sharding.shard_params(fresh, models.adapter_params(axes), mesh, rules)
            if lora.quantized:  # the critic's base as int8 too
                critic_params = jax.jit(models.quantize_base)(critic_params)
            critic_params = models.add_adapters(critic_params, fresh)
            critic_params["value_head"] = copy(critic_params["value_head"])
        else:
            critic_params = copy(critic_params)
        params["critic"] = critic_params
    return PPOModels(config, rm_config, rm_params, int(rm_meta["num_outputs"]), tokenizer, ref,
                     params, critic_lora, tuple(rm_meta.get("objectives", ())))


def _critic_lora(lora: models.LoraConfig) -> models.LoraConfig:
    """The critic's adapters: the policy's, without modules_to_save (it has no LM head)."""
    return dataclasses.replace(lora, modules_to_save=())


def _reference(m: PPOModels, state):
    """The reference policy's weights: with LoRA the state's own policy (read with adapters
    off; its frozen base is the state's, not the arrays `m` was loaded with) with the initial
    copies of `lora.modules_to_save` laid over it; else the copy."""
    if not m.config.lora.enabled:
        return m.ref_params
    return {**state.params["policy"], **(m.ref_params or {})}


def stop_token_ids(tokenizer, spec: str) -> tuple:
    """Vocabulary ids of the comma-separated stop tokens (each must be a single token)."""
    ids = []
    for text in filter(None, spec.split(",")):
        found = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(found) != 1:
            raise ConfigError(f"stop_tokens: {text!r} is not one token of the vocabulary "
                              f"(it tokenises to {found})")
        ids.append(int(found[0]))
    return tuple(ids)


def check_batch_sizes(cfg: PPOStageConfig, mesh) -> None:
    """Batch sizes must split over the mesh's batch axes, the processes and the minibatches."""
    minibatches = [("ppo.num_minibatches", cfg.ppo.num_minibatches)]
    check_batch_size("batch_size × rollout.group_size", cfg.batch_size * cfg.rollout.group_size,
                     mesh, minibatches)
    check_batch_size("batch_size", cfg.batch_size, mesh)
    check_batch_size("eval_prompts", cfg.eval_prompts, mesh)
    if cfg.ppo.ptx_coef > 0:
        check_batch_size("ptx.batch_size", cfg.ptx.batch_size, mesh, minibatches)


def resolve_sampling(tokenizer, cfg: PPOStageConfig) -> SamplingConfig:
    """`cfg.sampling` with the chat template's end of turn and the tokenizer's EOS
    (`data.ChatEncoder.stop_ids`), the stop tokens and the tokenizer's pad id (`cfg`: any
    sampling stage's config with `sampling` and `stop_tokens`, e.g. online DPO's)."""
    eos = data.encoder_for(tokenizer).stop_ids + \
        stop_token_ids(tokenizer, cfg.stop_tokens) + cfg.sampling.eos_token_ids
    return dataclasses.replace(cfg.sampling, eos_token_ids=tuple(dict.fromkeys(eos)),
                               pad_token_id=tokenizer.pad_token_id or 0)


def _helpers(cfg: PPOStageConfig, kl_init) -> dict:
    """The train state's helpers: β's controller, and the constraint's multiplier when a cost
    is constrained (both checkpointed: a resumed run continues them exactly)."""
    helpers = {"kl": kl_init()}
    if cfg.constraint.enabled:
        helpers["constraint"] = ppo.lagrange_init(cfg.constraint.multiplier)
    return helpers


def check_positions(cfg, config: TransformerConfig) -> None:
    """A GPT-2 policy has no position embedding beyond its learned positions: prompt and
    response lengths must fit them (named by their settings, not found at compile time).
    `cfg`: a sampling stage's config (`prompts`, `sampling`; PPO's also its pretraining mix)."""
    total = cfg.prompts.prompt_len + cfg.sampling.max_new_tokens
    if config.is_gpt2 and total > config.max_position_embeddings:
        raise ConfigError(f"prompts.max_prompt_len={cfg.prompts.prompt_len} + "
                          f"sampling.max_new_tokens={cfg.sampling.max_new_tokens} = {total} "
                          f"tokens exceed the policy's {config.max_position_embeddings} learned "
                          "positions (max_position_embeddings): lower them (in the main job: "
                          "max_prompt_len, max_new_tokens)")
    ptx = getattr(cfg, "ppo", None) is not None and cfg.ppo.ptx_coef > 0
    if config.is_gpt2 and ptx and \
            cfg.ptx.max_len > config.max_position_embeddings:
        raise ConfigError(f"ptx.max_len={cfg.ptx.max_len} exceeds the policy's "
                          f"{config.max_position_embeddings} learned positions "
                          "(max_position_embeddings)")


def prompt_source(cfg, layout: RunLayout, tokenizer, pad_id: int):
    """(the prepared prompt dataset, this process's share of `cfg.batch_size` prompts per
    batch, its one-line description) of a sampling stage's `cfg.prompts` (a `PromptData`;
    empty file: 200 built-in prompts), shuffled by `cfg.seed`; checkpointable."""
    prompt_file = cfg.prompts.file or builtin_file(layout, "prompts", data.builtin.write_prompts,
                                                   n=200)
    prompt_ds = train.main_process_first(data.build_prompt_dataset, prompt_file, tokenizer,
                                         layout.built_data,
                                         max_prompt_len=cfg.prompts.prompt_len,
                                         on_error=cfg.prompts.on_error, field=cfg.prompts.field,
                                         buckets=cfg.prompts.buckets)
    batches = data.prompt_batches(prompt_ds.splits["train"],
                                  cfg.batch_size // jax.process_count(), pad_id=pad_id,
                                  seed=cfg.seed)
    note = data_note(prompt_ds.stats, {"max_prompt_len": "prompts.max_prompt_len"}, batches,
                     "prompt", layout=layout)
    return prompt_ds, batches, note


def _ptx_batches(cfg: PPOStageConfig, layout: RunLayout, tokenizer, pad_id: int,
                 config: TransformerConfig):
    if cfg.ppo.ptx_coef <= 0:
        return None, None
    ptx_file = cfg.ptx.file or builtin_file(layout, "ptx", data.builtin.write_texts,
                                            seed=cfg.seed)
    row_len = cfg.ptx.row_len  # the default cut to a GPT-2 policy's learned positions
    row_len = min(row_len, config.max_position_embeddings) if config.is_gpt2 else row_len
    ptx_ds = train.main_process_first(data.build_sft_dataset, ptx_file, tokenizer,
                                      layout.built_data, max_len=row_len,
                                      buckets="off")
    note = data_note(ptx_ds.stats, {"max_prompt_len": "ptx.max_len"}, layout=layout)
    return note, data.sft_batches(ptx_ds.splits["train"],
                                  cfg.ptx.batch_size // jax.process_count(), pad_id=pad_id,
                                  seed=cfg.seed + 1)


def check_first_iteration(step_fn, layout: RunLayout, cfg: PPOStageConfig,
                          sampling: SamplingConfig, share: float = 0.5):
    """`step_fn` that, after the run's first iteration, warns (`stages.common.warn`) when more
    than `share` of the responses reached `sampling.max_new_tokens` without an end token: each
    of those gets `rollout.missing_eos_penalty` instead of the reward model's score, so PPO
    would learn from the penalty alone. One host fetch of one metric, once."""
    checked = [False]

    def step(state, batch):
        state, metrics = step_fn(state, batch)
        if not checked[0]:
            checked[0] = True
            eos = float(metrics["response/eos_fraction"])
            if 1.0 - eos > share:
                n = cfg.batch_size * cfg.rollout.group_size
                penalty = cfg.rollout.missing_eos_penalty
                cost = (f"each gets rollout.missing_eos_penalty={penalty} instead of the reward "
                        "model's score, so PPO learns from the penalty, not the reward model"
                        if penalty is not None else "the reward model scores them cut short")
                warn(layout, f"PPO iteration {int(state.step)}: {1.0 - eos:.0%} of the {n} "
                             "responses reached sampling.max_new_tokens="
                             f"{sampling.max_new_tokens} (the main job's max_new_tokens) "
                             f"without an end token; {cost}. Raise max_new_tokens, or check "
                             "that the policy ends its answers (its chat template's end of "
                             f"turn or EOS: ids {list(sampling.eos_token_ids)})")
        return state, metrics

    return step


def train_ppo(cfg: PPOStageConfig, *,
              extra_reward_terms: Sequence[ppo.RewardTerm] = ()) -> StageResult:
    """Run `cfg.steps` PPO iterations with exact resume; export the policy to `<run_dir>/export`.

    Samples of the initial and final policy, judged by the reward model (and the first monitored
    scorer), go to `samples_before.jsonl` / `samples_after.jsonl`. `extra_reward_terms` adds
    weighted host-side terms of your own (see `ppo.RewardTerm`). The result's metrics hold the
    final β and the reward-model score of the final samples. With `cfg.refresh` the reward model
    is refreshed on the policy's samples (`stages.refresh`): PPO, the decision log and the
    samples' proxy score use the newest refresh, exported to `<run_dir>/reward_refreshed`; the
    critic starts from the loaded reward model all the same.
    """
    layout = RunLayout(cfg.run_dir)
    mesh, rules = start_run(cfg, layout)
    key = jax.random.key(cfg.seed)
    check_batch_sizes(cfg, mesh)
    recorder = DecisionRecorder(cfg) if cfg.decision_log else None
    critic = cfg.critic if cfg.rollout.advantage == "gae" else "none"
    m = load_ppo_models(cfg.policy_dir, cfg.reward_dir, preset=cfg.preset, critic=critic,
                        mesh=mesh, rules=rules, key=jax.random.fold_in(key, 0),
                        model_options=model_overrides(cfg), critic_lora=cfg.critic_lora)
    if cfg.reward_std_coef > 0 and m.reward_outputs < 2:
        raise ConfigError(f"reward_std_coef={cfg.reward_std_coef} needs an ensemble reward "
                          f"model, but {cfg.reward_dir} has one head")
    tokenizer = data.use_template(m.tokenizer, cfg.chat_template)
    pad_id = tokenizer.pad_token_id or 0
    check_positions(cfg, m.config)
    prompt_ds, prompt_batches, note = prompt_source(cfg, layout, tokenizer, pad_id)
    notes = [note]
    ptx_note, ptx_batches = _ptx_batches(cfg, layout, tokenizer, pad_id, m.config)
    notes += [ptx_note] if ptx_note else []
    batches = ppo.ZipBatches(prompt_batches, ptx_batches)
    sampling = resolve_sampling(tokenizer, cfg)
    kl_init, kl_update = ppo.kl_controller(cfg.kl)
    tx = train.make_optimizer(optimizer_config(cfg.optim, cfg.steps), m.params,
                              freeze=m.freeze_rule())
    refresher = RewardRefresher(
        cfg, m, tokenizer, sampling, prompt_ds.splits["train"], mesh, rules,
        reference=lambda state: _reference(m, state),
        reference_config=m.config.without_lora()) if cfg.refresh.enabled else None
    abstract, init_state = train.compile_init(
        lambda p, extra: train.create_train_state(p, tx, jax.random.fold_in(key, 1),
                                                  helpers={**_helpers(cfg, kl_init), **extra},
                                                  param_shardings=shardings_of(m.params)),
        m.params, refresher.initial_helpers() if refresher else {})
    score_fn = m.scorer(cfg.reward_std_coef, cfg.objective_weights)
    # the reward model PPO scores with at a state: the loaded one, or the newest refresh's
    score_params = refresher.reward_params if refresher else lambda state: m.reward_params
    if recorder:
        recorder.set_reward_model(score_fn, score_params)
    step = ppo.make_ppo_step(
        config=m.config, critic_config=m.critic_config, ref_params=m.ref_params,
        score_params=score_params, score_fn=score_fn, sampling=sampling,
        rollout=cfg.rollout, ppo=cfg.ppo, tx=tx, kl_update=kl_update,
        reward_terms=reward_terms(cfg, tokenizer) + tuple(extra_reward_terms)
        + ((recorder.term,) if recorder else ()),
        constraint=cfg.constraint,
        cost=cost_term(cfg, tokenizer, m.reward_config, m.reward_outputs, m.objectives,
                       m.reward_params),
        place_batch=lambda b: train.global_batch_from_local(b, mesh, rules))
    step = recorder.wrap(step) if recorder else step
    step = refresher.wrap(step) if refresher else step
    step = check_first_iteration(step, layout, cfg, sampling)
    eval_src = data.prompt_batches(prompt_ds.splits["train"],
                                   cfg.eval_prompts // jax.process_count(), pad_id=pad_id,
                                   seed=cfg.seed + 2, shuffle=True, texts=True)
    eval_local = next(eval_src)
    eval_texts = [data.prompt_from_text(t) for t in eval_local.pop("texts")]
    eval_prompts = train.global_batch_from_local(eval_local, mesh, rules)
    gold_fn = rl_eval.TEXT_TERMS.get(cfg.monitor_terms.split(",")[0])

    def write_samples(name, state, params, reference) -> dict:
        result = rl_eval.evaluate_policy(params, reference, m.config, eval_prompts,
                                         jax.random.fold_in(key, 2), sampling=sampling,
                                         tokenizer=tokenizer, gold_fn=gold_fn,
                                         proxy_fn=score_fn, proxy_params=score_params(state),
                                         prompt_texts=eval_texts)
        if train.is_main_process():
            with open(layout.samples(name), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in result["rows"])
        return result["summary"]

    result = train_with_checkpoints(
        cfg, layout, step=step, abstract_state=abstract, init_state=init_state,
        batches=batches, mesh=mesh, rules=rules,
        before=lambda state: write_samples("before", state, *[_reference(m, state)] * 2),
        leaf_names=train.leaf_names(m.params),
        progress_keys=("score/mean", "kl/sequence", "time/iteration"))
    if result.preempted:
        print(f"preempted at step {result.step}", flush=True)
        return StageResult(str(layout.root), None, result.step, True, data=tuple(notes),
                           warnings=tuple(layout.read_warnings()))
    with sharding.activation_sharding(mesh, rules):
        after = write_samples("after", result.state, result.state.params["policy"],
                              _reference(m, result.state))
    export_policy(layout, m.config, result.state.params["policy"], tokenizer)  # collective
    if refresher:  # collective
        refresher.export(layout.refreshed_reward, result.state, tokenizer, cfg.reward_dir)
    metrics = {"steps": result.step, "beta": float(result.state.helpers["kl"].beta),
               "reward_model_score_after": after["proxy"]["mean"]}
    if cfg.constraint.enabled:  # the multiplier the constraint ended at
        metrics["constraint_lambda"] = float(result.state.helpers["constraint"].multiplier)
    print(json.dumps(metrics), flush=True)
    return StageResult(str(layout.root), str(layout.export), result.step, False, metrics,
                       data=tuple(notes), warnings=tuple(layout.read_warnings()))

