"""Loading what a PPO run needs: reward model, tokenizer, policy, frozen reference and critic."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from rlhf_jax import models, sharding
from rlhf_jax.models import CheckpointFormatError, TransformerConfig
from rlhf_jax.ppo.rollout import critic_from_reward_model
from rlhf_jax.reward import load_reward_model
from rlhf_jax.train.config import ConfigError
from rlhf_jax.train.setup import load_or_init_model


@dataclasses.dataclass
class PPOModels:
    """Everything loaded, sharded on the mesh. `params` is the trainable {"policy"[, "critic"]}."""

    config: TransformerConfig
    reward_config: TransformerConfig
    reward_params: Any
    tokenizer: Any
    ref_params: Any
    params: dict

    @property
    def critic_config(self):
        """The separate critic's config, or None when the value head is on the policy."""
        return self.reward_config if "critic" in self.params else None


def load_ppo_models(policy_dir: str, reward_dir: str, *, preset: str, critic: str, mesh, rules,
                    key) -> PPOModels:
    """The reward model from its export; the policy from a local HF directory (or `preset`,
    randomly initialised, with the reward model's vocabulary); the reference as a frozen copy of
    the policy; the critic initialised from the reward model (`critic="reward"`) or a value head
    on the policy (`critic="shared"`). The two tokenizers must agree."""
    if critic not in ("reward", "shared"):
        raise ConfigError(f"critic={critic!r}: expected 'reward' or 'shared'")
    if not os.path.isdir(reward_dir):
        raise CheckpointFormatError(
            f"reward_dir={str(reward_dir)!r} does not exist; train one first with "
            "`python experiments/train_reward.py` or point --config.reward_dir at a reward "
            "model export")
    rm_config, rm_params, rm_meta = load_reward_model(reward_dir)
    rm_model = models.DecoderModel(rm_config, heads=("reward",),
                                   num_reward_outputs=rm_meta["num_outputs"])
    rm_params = sharding.shard_params(rm_params, models.logical_axes(rm_model), mesh, rules)
    tokenizer = models.load_tokenizer(reward_dir, rm_config)
    heads = ("lm",) if critic == "reward" else ("lm", "value")
    overrides = {} if policy_dir else {"vocab_size": rm_config.vocab_size}
    config, _, policy = load_or_init_model(policy_dir, preset, mesh, rules, key, heads=heads,
                                           **overrides)
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
    ref = {k: v for k, v in copy(policy).items() if k != "value_head"}
    params = {"policy": policy}
    if critic == "reward":
        params["critic"] = copy(critic_from_reward_model(rm_params))
    return PPOModels(config, rm_config, rm_params, tokenizer, ref, params)
