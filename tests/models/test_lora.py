"""LoRA adapters: exact identity at step 0, the adapted forward against an explicit W + s·A·B,
merging, PEFT's format both ways (checked with the `peft` library on transformers' PyTorch
models), bad adapter files, axis names, and the frozen-base rule."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rlhf_jax import models
from rlhf_jax.models import (DecoderModel, LoraConfig, load_hf_checkpoint, load_peft_adapter,
                             merge_adapters, save_hf_checkpoint, save_peft_adapter)
from tests.hf_reference import hf_logits, left_padded_batch, make_hf_model

import peft  # noqa: E402 - a declared test dependency (setup.cfg [test])

# float32 logits of two implementations of the same network: both accumulate the same matmuls
# of width <= 64 in different orders (relative error ~ 64 · 2^-24 per product), far below 1e-4
# on logits of magnitude ~1; 1e-4 is the bound.
TOL = 1e-4
ALL = ("q", "k", "v", "o", "gate", "up", "down")


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _perturb(params, seed=0, scale=0.05):
    """Non-zero B matrices (and fresh A), so adapters change the output."""
    rng = np.random.default_rng(seed)

    def walk(tree):
        if not isinstance(tree, dict):
            return tree
        out = {k: walk(v) for k, v in tree.items()}
        for leaf in ("lora_a", "lora_b"):
            if leaf in out:
                x = out[leaf]
                out[leaf] = jnp.asarray(rng.normal(0, scale, x.shape), x.dtype)
        return out
    return walk(params)


def _adapted(name, targets, rank=4, **lora):
    """(hf model, base config, base params, adapted config, adapted params with non-zero B)."""
    import tempfile
    hf = make_hf_model(name)
    d = tempfile.mkdtemp()
    hf.save_pretrained(d)
    config, params = load_hf_checkpoint(d)
    acfg = config.replace(lora=LoraConfig(rank=rank, alpha=8.0, targets=targets, **lora))
    adapters = models.adapter_params(models.init_params(DecoderModel(acfg), jax.random.key(1)))
    return hf, config, params, acfg, _perturb(_merge(params, adapters))


def _merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("preset,targets", [("tiny-llama", ALL), ("tiny-gpt2", ("q", "k", "v", "o",
                                                                               "up", "down"))])
def test_step_zero_logits_equal_base_exactly(preset, targets):
    base = models.preset(preset)
    cfg = base.replace(lora=LoraConfig(rank=8, targets=targets))
    params = models.init_params(DecoderModel(cfg), jax.random.key(0))
    b_leaves = [x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
                if str(p[-1].key) == "lora_b"]
    assert len(b_leaves) == base.num_layers * (len(targets) if preset == "tiny-llama" else 4)
    assert all(np.all(np.asarray(x) == 0) for x in b_leaves)
    tokens, mask = left_padded_batch(seed=3)
    tokens = tokens % base.vocab_size
    ours = DecoderModel(cfg).apply({"params": params}, tokens, mask).logits
    ref = DecoderModel(base).apply({"params": models.strip_adapters(params)}, tokens, mask).logits
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))  # bitwise: B = 0


def test_base_params_identical_with_and_without_adapters():
    """Adding adapters does not change how the base is initialised (same RNG paths)."""
    base = models.preset("tiny-llama")
    p0 = models.init_params(DecoderModel(base), jax.random.key(0))
    p1 = models.init_params(DecoderModel(base.replace(lora=LoraConfig(rank=4, targets=ALL))),
                            jax.random.key(0))
    assert jax.tree.structure(p0) == jax.tree.structure(models.strip_adapters(p1))
    for a, b in zip(_leaves(p0), _leaves(models.strip_adapters(p1))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rslora", [False, True])
def test_adapted_forward_equals_explicit_merged_weights(rslora):
    """Forward with adapters == forward of the base with W + s·A·B built by hand in float64."""
    base = models.preset("tiny-llama")
    cfg = base.replace(lora=LoraConfig(rank=4, alpha=6.0, rslora=rslora, targets=ALL))
    params = _perturb(models.init_params(DecoderModel(cfg), jax.random.key(0)))
    s = 6.0 / (np.sqrt(4) if rslora else 4)
    assert cfg.lora.scale == pytest.approx(s)

    def merge(tree):
        if isinstance(tree, dict) and "lora_a" in tree:
            a, b = np.asarray(tree["lora_a"], np.float64), np.asarray(tree["lora_b"], np.float64)
            w = np.asarray(tree["kernel"], np.float64) + s * np.tensordot(a, b, axes=1)
            return {k: v for k, v in tree.items() if k not in ("lora_a", "lora_b")} | {
                "kernel": jnp.asarray(w, jnp.float32)}
        return {k: merge(v) for k, v in tree.items()} if isinstance(tree, dict) else tree
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 9)))
    ours = DecoderModel(cfg).apply({"params": params}, tokens).logits
    ref = DecoderModel(base).apply({"params": merge(params)}, tokens).logits
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5)
    # merge_adapters gives the same plain model
    mcfg, merged = merge_adapters(cfg, params)
    assert not mcfg.lora.enabled and not models.has_adapters(merged)
    np.testing.assert_allclose(
        np.asarray(DecoderModel(mcfg).apply({"params": merged}, tokens).logits),
        np.asarray(ref), atol=1e-5)


def test_reference_is_base_with_adapters_off():
    """`without_lora()` applied to the adapted tree ignores the adapters: the base model."""
    base = models.preset("tiny-gpt2")
    cfg = base.replace(lora=LoraConfig(rank=4, targets=("q", "k", "v")))
    params = _perturb(models.init_params(DecoderModel(cfg), jax.random.key(0)))
    tokens = jnp.ones((1, 5), jnp.int32)
    off = DecoderModel(cfg.without_lora()).apply({"params": params}, tokens).logits
    ref = DecoderModel(base).apply({"params": models.strip_adapters(params)}, tokens).logits
    on = DecoderModel(cfg).apply({"params": params}, tokens).logits
    np.testing.assert_array_equal(np.asarray(off), np.asarray(ref))
    assert np.abs(np.asarray(on) - np.asarray(off)).max() > 1e-4


def test_adapters_carry_their_base_weights_axis_names():
    cfg = models.preset("tiny-llama", lora=LoraConfig(rank=4, targets=ALL))
    axes = models.logical_axes(DecoderModel(cfg))
    attn, mlp = axes["transformer"]["block_0"]["attn"], axes["transformer"]["block_0"]["mlp"]
    assert tuple(attn["q"]["lora_a"]) == ("embed", "lora_rank")
    assert tuple(attn["q"]["lora_b"]) == ("lora_rank", "heads", "head_dim")
    assert tuple(attn["out"]["lora_a"]) == ("heads", "head_dim", "lora_rank")
    assert tuple(attn["out"]["lora_b"]) == ("lora_rank", "embed")
    assert tuple(mlp["down"]["lora_a"]) == ("mlp", "lora_rank")
    assert tuple(mlp["down"]["lora_b"]) == ("lora_rank", "embed")


def test_lora_config_errors():
    with pytest.raises(ValueError, match="lora.targets has \\['qq'\\]"):
        LoraConfig(rank=4, targets=("qq",))
    with pytest.raises(ValueError, match="lora.rank=-1"):
        LoraConfig(rank=-1)
    assert LoraConfig(rank=2, targets="q, v").targets == ("q", "v")
    with pytest.raises(ValueError, match="GPT-2 fuses q, k and v"):
        models.preset("tiny-gpt2", lora=LoraConfig(rank=4, targets=("q", "v")))
    with pytest.raises(ValueError, match="'gate'"):
        models.preset("tiny-gpt2", lora=LoraConfig(rank=4, targets=("gate",)))


def test_frozen_base_rule():
    frozen = models.frozen_base("policy")
    assert frozen("policy/transformer/block_0/attn/q/kernel")
    assert not frozen("policy/transformer/block_0/attn/q/lora_a")
    assert frozen("policy/lm_head/kernel")
    assert not frozen("policy/value_head/kernel")
    assert not frozen("critic/transformer/block_0/attn/q/kernel")
    whole = models.frozen_base("")
    assert whole("transformer/wte/embedding") and not whole("reward_head/proj/kernel")


@pytest.mark.parametrize("name,targets", [
    ("llama3_gqa_bias", ALL), ("llama_mha_tied", ("q", "v")),
    ("gpt2", ("q", "k", "v", "o", "up", "down")), ("gpt2", ("o",))])
def test_peft_loads_our_adapter_and_we_load_it_back(name, targets, tmp_path):
    hf, config, params, acfg, aparams = _adapted(name, targets)
    base_dir = save_hf_checkpoint(tmp_path / "base", config, params)
    adapter_dir = save_peft_adapter(tmp_path / "adapter", acfg, aparams)
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert saved["r"] == 4 and saved["lora_alpha"] == 8.0
    tokens, mask = left_padded_batch(seed=2)
    ours = np.asarray(DecoderModel(acfg).apply({"params": aparams}, tokens, mask).logits)
    # PEFT, on transformers' PyTorch model of the same base
    torch_base = transformers.AutoModelForCausalLM.from_pretrained(base_dir).float().eval()
    peft_model = peft.PeftModel.from_pretrained(torch_base, str(adapter_dir)).eval()
    theirs = hf_logits(peft_model, tokens, mask)
    real = mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() < TOL
    # the adapters really change the model (the comparison above could not pass by accident)
    base_logits = hf_logits(hf, tokens, mask)
    assert np.abs(base_logits[real] - theirs[real]).max() > 10 * TOL
    # back: the same adapter leaves and config
    cfg2, p2 = load_peft_adapter(adapter_dir, config, params)
    assert cfg2.lora.targets == acfg.lora.targets and cfg2.lora.rank == 4
    for a, b in zip(_leaves(models.adapter_params(aparams)),
                    _leaves(models.adapter_params(p2))):
        np.testing.assert_allclose(a, b, rtol=0, atol=0)
    # the merged export is a plain model that transformers reads with the adapted logits
    merged_dir = save_hf_checkpoint(tmp_path / "merged", acfg, aparams)
    merged = transformers.AutoModelForCausalLM.from_pretrained(merged_dir).float().eval()
    assert np.abs(hf_logits(merged, tokens, mask)[real] - ours[real]).max() < TOL


def test_we_load_an_adapter_that_peft_wrote(tmp_path):
    hf = make_hf_model("llama_mha_tied")
    hf.save_pretrained(tmp_path / "base")
    cfg = peft.LoraConfig(r=2, lora_alpha=5, target_modules=["k_proj", "down_proj"],
                          init_lora_weights=False)  # random B: a non-trivial adapter
    torch.manual_seed(0)
    pm = peft.get_peft_model(hf, cfg).eval()
    pm.save_pretrained(tmp_path / "adapter")
    config, params = load_hf_checkpoint(tmp_path / "base")
    acfg, aparams = load_peft_adapter(tmp_path / "adapter", config, params)
    assert acfg.lora.targets == ("k", "down") and acfg.lora.scale == pytest.approx(2.5)
    tokens, mask = left_padded_batch(seed=4)
    ours = np.asarray(DecoderModel(acfg).apply({"params": aparams}, tokens, mask).logits)
    theirs = hf_logits(pm, tokens, mask)
    real = mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() < TOL


def _write_adapter(tmp_path, name="gpt2", targets=("q", "k", "v", "o", "up", "down")):
    _, config, params, acfg, aparams = _adapted(name, targets)
    return config, params, save_peft_adapter(tmp_path / "adapter", acfg, aparams)


def _edit_config(adapter_dir, **changes):
    path = adapter_dir / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_bad_adapter_files_name_the_problem(tmp_path):
    from rlhf_jax.models import CheckpointFormatError
    from rlhf_jax.models._safetensors import SafetensorsFile, save_safetensors
    config, params, adapter = _write_adapter(tmp_path)
    # wrong rank: the config says 8, the tensors have 4 rows
    _edit_config(adapter, r=8)
    with pytest.raises(CheckpointFormatError, match=r"lora_A.weight' has shape \(4, 32\); r=8"):
        load_peft_adapter(adapter, config, params)
    # a target module the model does not have
    _edit_config(adapter, r=4, target_modules=["q_proj"])
    with pytest.raises(CheckpointFormatError, match="target module 'q_proj' is not a projection"):
        load_peft_adapter(adapter, config, params)
    _edit_config(adapter, target_modules=["attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                          "mlp.c_proj"])
    load_peft_adapter(adapter, config, params)  # restored: loads
    # a shape mismatch in one tensor
    f = SafetensorsFile(adapter / "adapter_model.safetensors")
    tensors = {k: np.array(f.get(k)) for k in f.keys()}
    bad = "base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight"
    tensors[bad] = tensors[bad][:-1]
    save_safetensors(str(adapter / "adapter_model.safetensors"), tensors)
    with pytest.raises(CheckpointFormatError, match=bad.replace(".", r"\.")):
        load_peft_adapter(adapter, config, params)
    # a missing tensor
    del tensors[bad]
    save_safetensors(str(adapter / "adapter_model.safetensors"), tensors)
    with pytest.raises(CheckpointFormatError, match="is missing"):
        load_peft_adapter(adapter, config, params)
    # unsupported variants and broken JSON
    _edit_config(adapter, use_dora=True)
    with pytest.raises(CheckpointFormatError, match="use_dora"):
        load_peft_adapter(adapter, config, params)
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointFormatError, match="adapter_config.json: not valid JSON"):
        load_peft_adapter(adapter, config, params)
    with pytest.raises(CheckpointFormatError, match="no adapter_config.json"):
        load_peft_adapter(tmp_path, config, params)


def test_int8_base_quantization_bound_and_forward():
    """quantize_base: each weight within half a step of its float value (the rounding bound);
    the int8 model's forward equals the plain model's over the dequantized weights; with
    adapters, merging dequantizes and adds s·A·B."""
    base = models.preset("tiny-llama")
    params = models.init_params(DecoderModel(base), jax.random.key(0))
    q = models.quantize_base(params)
    attn = q["transformer"]["block_0"]["attn"]
    assert attn["q"]["kernel"].dtype == jnp.int8 and attn["q"]["kernel_scale"].shape == (4, 16)
    assert attn["out"]["kernel_scale"].shape == (64,)  # per output channel of [h, hd, d]
    assert q["transformer"]["wte"]["embedding"].dtype == jnp.float32  # embeddings stay float
    for path in (("attn", "q"), ("attn", "out"), ("mlp", "down")):
        w = np.asarray(params["transformer"]["block_1"][path[0]][path[1]]["kernel"], np.float64)
        node = q["transformer"]["block_1"][path[0]][path[1]]
        s = np.asarray(node["kernel_scale"], np.float64)
        deq = np.asarray(node["kernel"], np.float64) * s
        assert np.all(np.abs(deq - w) <= s / 2 * (1 + 1e-6) + 1e-12), path
    qcfg = base.replace(lora=LoraConfig(rank=4, targets=ALL, quantize_base="int8"))
    qparams = _perturb(models.add_adapters(q, models.adapter_params(
        models.init_params(DecoderModel(qcfg), jax.random.key(1)))))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 7)))
    mcfg, merged = merge_adapters(qcfg, qparams)
    assert not mcfg.lora.quantized and not models.has_adapters(merged)
    assert merged["transformer"]["block_0"]["attn"]["q"]["kernel"].dtype == jnp.float32
    ours = DecoderModel(qcfg).apply({"params": qparams}, tokens).logits
    plain = DecoderModel(mcfg).apply({"params": merged}, tokens).logits
    np.testing.assert_allclose(np.asarray(ours), np.asarray(plain), atol=1e-5)
    # the reference (adapters off) reads the int8 base, not the raw int8 values
    off = DecoderModel(qcfg.without_lora()).apply({"params": qparams}, tokens).logits
    deq_cfg, deq = merge_adapters(qcfg.without_lora(), models.strip_adapters(qparams))
    np.testing.assert_array_equal(
        np.asarray(off), np.asarray(DecoderModel(deq_cfg).apply({"params": deq}, tokens).logits))


def test_load_or_init_with_an_int8_base_trains_only_adapters(tmp_path):
    from rlhf_jax import sharding, train
    hf = make_hf_model("llama3_gqa_bias")
    hf.save_pretrained(tmp_path / "base")
    mesh, rules = sharding.make_mesh("fsdp=-1"), sharding.logical_rules("fsdp")
    lora = LoraConfig(rank=2, targets=("q", "v"), quantize_base="int8")
    cfg, model, params = models.load_or_init_model(str(tmp_path / "base"), "", mesh, rules,
                                                   jax.random.key(0), lora=lora)
    k = params["transformer"]["block_0"]["mlp"]["up"]["kernel"]
    assert k.dtype == jnp.int8 and "lora_a" in params["transformer"]["block_0"]["attn"]["q"]
    tokens, mask = left_padded_batch(seed=5)
    ours = np.asarray(model.apply({"params": params}, tokens, mask).logits)
    ref = hf_logits(hf, tokens, mask)
    real = mask.astype(bool)
    # int8 weights (error ≤ s/2 per weight, s = max|W|/127) perturb these 2-layer logits of
    # magnitude ~0.1 by far less than 1e-2; the float model matches to 1e-4 (test_parity)
    assert np.abs(ours[real] - ref[real]).max() < 1e-2
    tx = train.make_optimizer(train.OptimizerConfig(total_steps=10), params,
                              freeze=models.frozen_base(""))
    trainable, _ = tx.split(params)
    names = {p[-1].key for p, _ in jax.tree_util.tree_flatten_with_path(trainable)[0]}
    assert names == {"lora_a", "lora_b"}
    # the adapter alone round-trips onto the int8 base, which stays int8
    save_peft_adapter(tmp_path / "adapter", cfg, params)
    cfg2, params2 = load_peft_adapter(tmp_path / "adapter", cfg, models.strip_adapters(params))
    assert cfg2.lora.quantized and cfg2.lora.targets == ("q", "v")
    np.testing.assert_array_equal(
        np.asarray(DecoderModel(cfg2).apply({"params": params2}, tokens, mask).logits), ours)
    out = save_hf_checkpoint(tmp_path / "export", cfg, params)  # dequantized, plain
    back = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    assert np.abs(hf_logits(back, tokens, mask)[real] - ours[real]).max() < TOL


def test_lm_head_as_module_to_save_round_trips_through_peft(tmp_path):
    """modules_to_save=lm_head: the head trains in full (the freeze rule leaves it trainable),
    PEFT loads our file with the trained head, and we read PEFT's back."""
    _, config, params, _, _ = _adapted("llama3_gqa_bias", ("q", "v"))
    acfg = config.replace(lora=LoraConfig(rank=4, alpha=8.0, targets=("q", "v"),
                                          modules_to_save=("lm_head",)))
    aparams = _perturb(models.add_adapters(params, models.adapter_params(
        models.init_params(DecoderModel(acfg), jax.random.key(1)))))
    head = np.asarray(aparams["lm_head"]["kernel"])
    aparams["lm_head"] = {"kernel": jnp.asarray(head + 0.05 * np.sign(head))}  # "trained"
    frozen = models.frozen_base("", train=acfg.lora.modules_to_save)
    assert not frozen("lm_head/kernel") and frozen("transformer/wte/embedding")
    overlay = models.reference_overlay(acfg, params)
    assert set(overlay) == {"lm_head"}
    base_dir = save_hf_checkpoint(tmp_path / "base", config, params)
    adapter_dir = save_peft_adapter(tmp_path / "adapter", acfg, aparams)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())[
        "modules_to_save"] == ["lm_head"]
    tokens, mask = left_padded_batch(seed=6)
    ours = np.asarray(DecoderModel(acfg).apply({"params": aparams}, tokens, mask).logits)
    torch_base = transformers.AutoModelForCausalLM.from_pretrained(base_dir).float().eval()
    theirs = hf_logits(peft.PeftModel.from_pretrained(torch_base, str(adapter_dir)).eval(),
                       tokens, mask)
    real = mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() < TOL
    cfg2, p2 = load_peft_adapter(adapter_dir, config, params)
    assert cfg2.lora.modules_to_save == ("lm_head",)
    np.testing.assert_array_equal(np.asarray(p2["lm_head"]["kernel"]),
                                  np.asarray(aparams["lm_head"]["kernel"]))
    with pytest.raises(ValueError, match="ties its LM head"):
        models.preset("tiny-gpt2", lora=LoraConfig(rank=2, targets=("o",),
                                                   modules_to_save=("lm_head",)))


def test_rewarded_soup_mixes_the_adapters_updates():
    """θ = Σ λ_i θ_i over ingredients that share a base: W + Σ λ_i s·A_i·B_i in every adapted
    kernel (by hand in float64), the base elsewhere; λ from a user's weights on the simplex."""
    cfg = models.preset("tiny-llama").replace(lora=LoraConfig(rank=4, alpha=6.0, targets=ALL))
    base = models.init_params(DecoderModel(cfg), jax.random.key(0))
    ingredients = [_perturb(base, seed=i) for i in range(3)]
    lam = models.soup_weights([2.0, -1.0, 0.5])
    np.testing.assert_allclose(lam, [0.8, 0.0, 0.2])
    np.testing.assert_allclose(models.soup_weights([-1.0, 0.0]), [0.5, 0.5])
    plain, soup = models.rewarded_soup(cfg, ingredients, lam)
    assert not plain.lora.enabled and not models.has_adapters(soup)
    s = cfg.lora.scale
    q_in = [p["transformer"]["block_0"]["attn"]["q"] for p in ingredients]
    want = np.asarray(q_in[0]["kernel"], np.float64) + sum(
        float(l) * s * np.tensordot(np.asarray(q["lora_a"], np.float64),
                                    np.asarray(q["lora_b"], np.float64), axes=1)
        for l, q in zip(lam, q_in))
    np.testing.assert_allclose(np.asarray(soup["transformer"]["block_0"]["attn"]["q"]
                                          ["kernel"]), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(soup["transformer"]["wte"]["embedding"]),
                                  np.asarray(base["transformer"]["wte"]["embedding"]))
    # one ingredient with all the weight is that policy merged
    _, alone = models.rewarded_soup(cfg, ingredients, [0.0, 1.0, 0.0])
    _, merged = merge_adapters(cfg, ingredients[1])
    for a, b in zip(_leaves(alone), _leaves(merged)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="sum to 1"):
        models.rewarded_soup(cfg, ingredients, [0.5, 0.2, 0.2])
