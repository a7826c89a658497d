"""Compare every policy-learning method on the built-in task: PPO, RLOO, GRPO, best-of-n and the
offline methods (DPO, cDPO, robust DPO, IPO, SimPO, ORPO, KTO, AWR, filtered BC), each over a
sweep of its KL-controlling setting, on the same comparisons and reward model per seed.

    python experiments/compare_methods.py [--quick] [--config.seeds=0,1,2]
        [--config.methods=ppo,dpo,kto] [--config.run_dir=runs/compare]

Writes `<run_dir>/report.md` (gold-vs-KL frontier, a table of gains, KL, time and memory, and
over-optimisation under PPO without a KL penalty), `results.json` and `plots/`. `--quick` is
one setting per method with tiny budgets (minutes); the default takes under half an hour on
two CPU cores. Rerunning reuses every finished run.
"""
import os
import sys

from rlhf_jax import stages, studies

DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "compare.py")


def main(argv):
    return stages.run_script("rlhf_jax.studies:compare_methods", studies.CompareConfig,
                             argv, DEFAULT)


if __name__ == "__main__":
    main(sys.argv[1:])
