"""load_or_init_model: checkpoint weights are used, only missing heads are initialised."""
import jax
import numpy as np

from rlhf_jax.models import DecoderModel, init_params, preset, save_hf_checkpoint
from rlhf_jax.sharding import logical_rules, make_mesh
from rlhf_jax.models import load_or_init_model


def test_heads_from_untied_checkpoint(tmp_path):
    config = preset("tiny-llama")  # untied LM head
    saved = init_params(DecoderModel(config), jax.random.key(0))
    path = save_hf_checkpoint(tmp_path / "ckpt", config, saved)
    mesh, rules = make_mesh("fsdp=2", devices=jax.devices()[:2]), logical_rules("fsdp")

    _, _, reward = load_or_init_model(str(path), "", mesh, rules, jax.random.key(1),
                                      heads=("reward",))
    assert set(reward) == {"transformer", "reward_head"}  # no unused LM head loaded
    for a, b in zip(jax.tree.leaves(reward["transformer"]), jax.tree.leaves(saved["transformer"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    _, _, policy = load_or_init_model(str(path), "", mesh, rules, jax.random.key(1),
                                      heads=("lm", "value"))
    assert set(policy) == {"transformer", "lm_head", "value_head"}
    np.testing.assert_array_equal(np.asarray(policy["lm_head"]["kernel"]),
                                  np.asarray(saved["lm_head"]["kernel"]))
    assert np.asarray(policy["value_head"]["kernel"]).std() > 0  # freshly initialised
