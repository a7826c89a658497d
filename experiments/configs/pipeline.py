"""The end-to-end RLHF run: SFT → simulated comparisons → reward model → PPO → evaluation."""
from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.run_dir = "runs/pipeline"
    c.seed = 0
    # a local HF directory to start from (with its tokenizer); empty: the tiny preset, randomly
    # initialised, with a tokenizer trained on the built-in corpus
    c.policy_dir = ""
    c.sft_file = ""  # JSONL/Parquet `text` field for SFT; empty: the built-in corpus
    # your comparisons (JSONL/Parquet, pairwise); empty: simulated annotators judge SFT samples
    c.preference_file = ""
    c.prompts_file = ""  # JSONL/Parquet `prompt` field; empty: the built-in prompts
    c.gold = "vader"  # the judge (rlhf_jax.eval.TEXT_TERMS) behind the simulated annotators
    c.annotator_temperatures = "0.15,0.3,0.6"  # one Bradley–Terry temperature per annotator
    c.comparisons = 1500
    c.max_prompt_len = 8
    c.max_new_tokens = 10
    c.eval_samples = 160  # responses per policy in the final evaluation
    c.report_samples = 8
    # overrides passed to each stage's script (experiments/configs/{sft,reward,ppo}.py)
    c.sft = ConfigDict(dict(steps=150, batch_size=32, preset="tiny-llama"))
    c.reward = ConfigDict(dict(steps=300, batch_size=32, eval_every=50))
    c.ppo = ConfigDict(dict(steps=150, batch_size=32, kl=ConfigDict(dict(beta=0.02))))
    return c
