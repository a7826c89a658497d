"""PPO against a trained reward model with a per-token KL penalty toward the reference policy."""
from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.run_dir = "runs/ppo"
    c.seed = 0
    c.policy_dir = ""  # local HF directory of the policy (= reference); empty: random preset
    c.preset = "tiny-llama"
    c.reward_dir = "runs/reward/export"  # written by experiments/train_reward.py
    c.critic = "reward"  # "reward": separate critic initialised from the reward model; "shared"
    c.mesh = "fsdp=-1"
    c.sharding = "fsdp"
    c.prompts = ConfigDict(dict(file="", max_prompt_len=8, on_error="raise"))
    c.sampling = ConfigDict(dict(max_new_tokens=10, temperature=1.0, top_k=0, top_p=1.0))
    # extra tokens that end a response like EOS (comma-separated, each one vocabulary token,
    # e.g. "." or "\n"): the response is truncated after the first one
    c.stop_tokens = ""
    c.rollout = ConfigDict(dict(gamma=1.0, lam=0.95, kl_estimator="k1", missing_eos_penalty=-1.0,
                                whiten_rewards=False, whiten_advantages=True, reward_clip=0.0,
                                advantage="gae", group_size=1))
    c.kl = ConfigDict(dict(controller="fixed", beta=0.05, target=6.0, horizon=10000.0))
    c.ppo = ConfigDict(dict(epochs=4, num_minibatches=2, clip=0.2, value_clip=0.2,
                            value_coef=0.1, entropy_coef=0.0, ptx_coef=0.0))
    # PPO-ptx text (JSONL/Parquet with a `text` field; empty: the built-in corpus)
    c.ptx = ConfigDict(dict(file="", batch_size=16, max_len=24))
    # extra text-based reward terms: name → weight (rlhf_jax.eval.TEXT_TERMS); 0 disables
    c.reward_terms = ConfigDict(dict(vader=0.0, repetition=0.0, words=0.0))
    c.monitor_terms = ""  # comma-separated TEXT_TERMS logged each iteration without weight

    c.steps = 40
    c.batch_size = 32  # prompts per iteration (× group_size samples)
    c.optim = ConfigDict(dict(learning_rate=1e-4, warmup_steps=0, schedule="constant",
                              weight_decay=0.0, clip_norm=1.0))
    c.log_every = 5
    c.eval_prompts = 16  # samples written before/after to samples.jsonl
    c.checkpoint = ConfigDict(dict(save_every=10, keep_last=2, async_save=True))
    return c
