"""LoRA wrapping, freezing, merging and the gated model's API."""

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import functional as F
from minitspeft import nn
from minitspeft.optim import AdamW
from minitspeft.peft import GateConfig, LoraConfig, LoraLinear, get_peft_model

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]


def _vit(seed=0, dtype=np.float64):
    mt.manual_seed(seed)
    cfg = nn.TransformerConfig(n_layer=2, n_head=2, n_embd=16, n_classes=3, pooling="cls")
    return nn.ViT(cfg, patch_size=2, image_size=4, dtype=dtype)


def _images(n=5, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 4, 4))


@pytest.mark.parametrize("gate", [None, GateConfig(sparsity_weight=0.1)])
def test_lora_at_init_leaves_output_unchanged(gate):
    model = _vit()
    x = _images()
    before = model(x).data.copy()
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS), gate=gate)
    np.testing.assert_array_equal(pm(x).data, before)


def test_wrapping_names_freezing_and_counts(capsys):
    pm = get_peft_model(_vit(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "fc1"],
                                           modules_to_save=["head"]), gate=GateConfig())
    names = dict(pm.named_parameters())
    assert "base_model.blocks.0.attn.q_proj.base_layer.weight" in names
    assert names["base_model.blocks.0.attn.q_proj.lora_A.weight"].shape == (4, 16)
    assert names["base_model.blocks.0.attn.q_proj.lora_B.weight"].shape == (16, 4)
    assert names["base_model.blocks.1.mlp.fc1.gate.tau"].shape == ()
    trainable = {n for n, p in names.items() if p.requires_grad}
    expected = {n for n in names
                if ".lora_" in n or n.endswith(".tau") or n.startswith("base_model.head.modules_to_save.")}
    assert trainable == expected
    n_train = sum(p.size for n, p in names.items() if n in expected)
    n_all = sum(p.size for p in names.values())
    pm.print_trainable_parameters()
    out = capsys.readouterr().out.strip()
    assert out == f"trainable params: {n_train:,} || all params: {n_all:,} || trainable%: {100 * n_train / n_all:.4f}"


def test_scaling_and_update_formula():
    model = _vit()
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False))
    layer = model.blocks[0].attn.q_proj
    assert isinstance(layer, LoraLinear) and layer.scaling == 2.0
    x = np.random.default_rng(2).normal(size=(3, 16))
    W, bias = layer.base_layer.weight.data, layer.base_layer.bias.data
    A, B = layer.lora_A.weight.data, layer.lora_B.weight.data
    np.testing.assert_allclose(layer(mt.Tensor(x)).data, x @ W.T + bias + 2.0 * x @ A.T @ B.T, rtol=1e-12)
    assert LoraConfig(r=4, lora_alpha=8, use_rslora=True).scaling == 4.0
    del pm


def test_unknown_target_lists_candidates():
    with pytest.raises(ValueError, match="qkv.*q_proj"):
        get_peft_model(_vit(), LoraConfig(target_modules=["qkv"]))


def test_failed_wrap_changes_nothing():
    model = _vit()
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError):
        get_peft_model(model, LoraConfig(target_modules=["q_proj", "nope"]))
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert not any(isinstance(m, LoraLinear) for m in model.modules())


def test_wrapping_twice_is_refused():
    model = _vit()
    get_peft_model(model, LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="already"):
        get_peft_model(model, LoraConfig(target_modules=["k_proj"]))


def test_merge_unmerge_and_disable():
    model = _vit()
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    x = _images()
    with pm.disable_adapter():
        base = pm(x).data.copy()
    adapted = pm(x).data.copy()
    assert not np.allclose(base, adapted)
    w0 = model.blocks[0].attn.q_proj.base_layer.weight.data.copy()
    pm.merge_adapter()
    pm.merge_adapter()  # twice equals once
    np.testing.assert_allclose(pm(x).data, adapted, rtol=1e-10, atol=1e-12)
    pm.unmerge_adapter()
    np.testing.assert_array_equal(model.blocks[0].attn.q_proj.base_layer.weight.data, w0)
    np.testing.assert_allclose(pm(x).data, adapted, rtol=1e-12)


def test_merge_refused_on_gated_model():
    pm = get_peft_model(_vit(), LoraConfig(target_modules=["q_proj"]), gate=GateConfig())
    w0 = pm.base_model.blocks[0].attn.q_proj.base_layer.weight.data.copy()
    with pytest.raises(RuntimeError, match="token"):
        pm.merge_adapter()
    np.testing.assert_array_equal(pm.base_model.blocks[0].attn.q_proj.base_layer.weight.data, w0)
    with pm.disable_adapter():
        pm(_images())


def test_tau_group_projection_and_sparsity_loss():
    gate = GateConfig(sparsity_weight=0.5, tau_lr=0.3)
    pm = get_peft_model(_vit(), LoraConfig(target_modules=TARGETS), gate=gate)
    groups = pm.optimizer_groups(lr=1e-3, weight_decay=0.1)
    assert groups[1]["lr"] == 0.3 and groups[1]["weight_decay"] == 0.0
    assert len(groups[1]["params"]) == 2 * len(TARGETS)
    opt = AdamW(groups)
    x, y = _images(8), np.arange(8) % 3
    loss = F.cross_entropy(pm(x), y) + pm.sparsity_loss()
    # all gates open at start: mean(S) = 1
    assert pm.sparsity_loss().item() == pytest.approx(0.5)
    loss.backward()
    for tau in pm.thresholds():
        tau.grad = np.asarray(1.0)  # a gradient that would push tau below zero
    opt.step()
    assert all(float(t.data) == 0.0 for t in pm.thresholds())  # projected back onto tau >= 0


def test_target_density_loss():
    pm = get_peft_model(_vit(), LoraConfig(target_modules=["fc1"]), gate=GateConfig(sparsity_weight=2.0,
                                                                                    target_density=0.25))
    pm(_images())
    assert pm.sparsity_loss().item() == pytest.approx(2.0 * (1.0 - 0.25) ** 2)


@pytest.mark.parametrize("field,value", [("r", 0), ("r", 2.5), ("lora_alpha", 0), ("lora_dropout", 1.0),
                                         ("target_modules", []), ("bias", "some"), ("use_dora", "yes"),
                                         ("init_lora_weights", "uniform"), ("target_modules", "("),
                                         ("modules_to_save", "head")])
def test_lora_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        LoraConfig(**{field: value})


def test_injection_is_what_peft_model_is_built_from_and_unload_undoes_it():
    from minitspeft.peft import PeftModel, inject_adapter_in_model

    def fresh():
        mt.manual_seed(0)
        return nn.Transformer(nn.TransformerConfig(n_layer=1, n_head=2, n_embd=8, n_classes=2, block_size=6))

    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], modules_to_save=["head"])
    plain = fresh()
    injection = inject_adapter_in_model(plain, config)
    assert [n for n, _ in injection.replaced] == ["blocks.0.attn.q_proj", "blocks.0.attn.v_proj", "head"]
    assert not any(p.requires_grad for n, p in plain.named_parameters() if "base_layer" in n)
    a, b = PeftModel(fresh(), config), get_peft_model(fresh(), config)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    before = fresh().state_dict()
    restored = PeftModel(fresh(), config).unload()
    assert list(restored.state_dict()) == list(before)
    assert all(p.requires_grad for p in restored.parameters())
