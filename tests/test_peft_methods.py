"""LoRA, rsLoRA, DoRA and bottleneck adapters against values computed independently in NumPy."""

import numpy as np
import pytest
from minitspeft.testing import central_difference, check_grad

import minitspeft as mt
from minitspeft import nn
from minitspeft.peft import (AdapterConfig, AdapterLayer, GateConfig, LoraConfig, LoraLinear, ModulesToSaveWrapper,
                             get_peft_model)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]


def _vit(seed=0):
    mt.manual_seed(seed)
    cfg = nn.TransformerConfig(n_layer=2, n_head=2, n_embd=16, n_classes=3, pooling="cls")
    return nn.ViT(cfg, patch_size=2, image_size=4, dtype=np.float64)


def _images(n=4, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 4, 4))


def _linear(n_in=5, n_out=3, seed=0):
    mt.manual_seed(seed)
    return nn.Linear(n_in, n_out, dtype=np.float64)


class _Holder(nn.Module):
    def __init__(self, layer):
        self.proj = layer

    def forward(self, x):
        return self.proj(x)


def _wrapped_linear(config, n_in=5, n_out=3, gate=None):
    pm = get_peft_model(_Holder(_linear(n_in, n_out)), config, gate=gate)
    return pm, pm.base_model.proj


def test_rslora_scaling_in_the_forward():
    pm, layer = _wrapped_linear(LoraConfig(r=4, lora_alpha=6, target_modules=["proj"], use_rslora=True,
                                           init_lora_weights=False))
    x = np.random.default_rng(0).normal(size=(2, 5))
    W, b = layer.base_layer.weight.data, layer.base_layer.bias.data
    A, B = layer.lora_A.weight.data, layer.lora_B.weight.data
    np.testing.assert_allclose(pm(mt.Tensor(x)).data, x @ W.T + b + (6 / np.sqrt(4)) * x @ A.T @ B.T, rtol=1e-12)


def test_gaussian_init_has_zero_b_and_std_one_over_r():
    mt.manual_seed(0)
    layer = LoraLinear(nn.Linear(400, 300, dtype=np.float64), LoraConfig(r=5, init_lora_weights="gaussian"))
    assert not layer.lora_B.weight.data.any()
    assert layer.lora_A.weight.data.std() == pytest.approx(1 / 5, rel=0.05)


def test_dropout_only_in_training_and_only_on_the_update():
    pm, layer = _wrapped_linear(LoraConfig(r=2, lora_alpha=2, lora_dropout=0.5, target_modules=["proj"],
                                           init_lora_weights=False))
    x = np.random.default_rng(0).normal(size=(64, 5))
    W, b = layer.base_layer.weight.data, layer.base_layer.bias.data
    A, B = layer.lora_A.weight.data, layer.lora_B.weight.data
    exact = x @ W.T + b + x @ A.T @ B.T
    pm.eval()
    np.testing.assert_allclose(pm(mt.Tensor(x)).data, exact, rtol=1e-12)
    pm.train()
    mt.manual_seed(3)
    noisy = pm(mt.Tensor(x)).data
    mt.manual_seed(3)
    keep = mt.backend.host_rng().random(x.shape) >= 0.5  # the mask the layer drew
    np.testing.assert_allclose(noisy, x @ W.T + b + (x * keep / 0.5) @ A.T @ B.T, rtol=1e-12)


def test_dora_magnitude_init_and_forward_on_a_known_weight():
    base = nn.Linear(3, 2, dtype=np.float64)
    base.weight.data = np.array([[3.0, 0.0, 4.0], [1.0, 2.0, 2.0]])
    base.bias.data = np.array([0.5, -1.0])
    mt.manual_seed(0)
    layer = LoraLinear(base, LoraConfig(r=2, lora_alpha=2, use_dora=True))  # B = 0: W' = W0
    np.testing.assert_allclose(layer.lora_magnitude_vector.data, [5.0, 3.0])
    x = np.array([[1.0, 1.0, 1.0], [0.0, -2.0, 1.0]])
    np.testing.assert_allclose(layer(mt.Tensor(x)).data, x @ base.weight.data.T + base.bias.data, rtol=1e-12)
    # now a real update and a changed magnitude
    A = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    B = np.array([[0.2, -0.1], [0.0, 0.3]])
    layer.lora_A.weight.data, layer.lora_B.weight.data = A, B
    layer.lora_magnitude_vector.data = np.array([2.0, 7.0])
    Wp = base.weight.data + 1.0 * B @ A
    expected = np.array([2.0, 7.0]) / np.linalg.norm(Wp, axis=1) * (x @ Wp.T) + base.bias.data
    np.testing.assert_allclose(layer(mt.Tensor(x)).data, expected, rtol=1e-12)


def test_dora_backward_treats_the_norm_as_a_constant():
    pm, layer = _wrapped_linear(LoraConfig(r=2, lora_alpha=4, target_modules=["proj"], use_dora=True,
                                           init_lora_weights=False), n_in=4, n_out=6)  # non-square
    layer.lora_magnitude_vector.data = layer.lora_magnitude_vector.data * np.linspace(0.5, 1.5, 6)
    rng = np.random.default_rng(1)
    x, g = rng.normal(size=(3, 4)), rng.normal(size=(3, 6))
    xt = mt.Tensor(x, requires_grad=True)
    pm(xt).backward(g)
    W0 = layer.base_layer.weight.data
    m = layer.lora_magnitude_vector.data
    A, B = layer.lora_A.weight.data, layer.lora_B.weight.data
    c = np.linalg.norm(W0 + 2 * B @ A, axis=1)  # the constant
    # out = (m / c) * (x (W0 + 2 B A)^T) + b  ->  hand-derived gradients with c constant
    u = x @ (W0 + 2 * B @ A).T
    np.testing.assert_allclose(layer.lora_magnitude_vector.grad, (g * u / c).sum(0), rtol=1e-10)
    gs = g * m / c  # gradient reaching W' x
    np.testing.assert_allclose(layer.lora_B.weight.grad, 2 * gs.T @ (x @ A.T), rtol=1e-10)
    np.testing.assert_allclose(layer.lora_A.weight.grad, 2 * B.T @ gs.T @ x, rtol=1e-10)
    np.testing.assert_allclose(xt.grad, gs @ (W0 + 2 * B @ A), rtol=1e-10)
    assert layer.base_layer.weight.grad is None


def _directional_check(fn, param, seed=0, h=1e-6):
    """Compare <param.grad, u> with a central difference of sum(v * fn()) along a random direction u."""
    rng = np.random.default_rng(seed)
    out = fn()
    v = rng.normal(size=out.shape)
    param.grad = None
    out.backward(v)
    u = rng.normal(size=param.shape)
    base = param.data.copy()

    def at(w):
        param.data = w.data
        return fn()

    try:
        numeric = central_difference(at, [base], [u], v, h)
    finally:
        param.data = base
    assert (param.grad * u).sum() == pytest.approx(numeric, rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("config", [
    LoraConfig(r=3, lora_alpha=5, target_modules=["proj"], init_lora_weights=False),
    LoraConfig(r=3, lora_alpha=5, target_modules=["proj"], init_lora_weights=False, use_rslora=True),
    LoraConfig(r=3, lora_alpha=5, target_modules=["proj"], init_lora_weights=False, use_dora=True),
])
def test_central_difference_through_lora_and_dora(config):
    pm, layer = _wrapped_linear(config, n_in=4, n_out=5)
    x = np.random.default_rng(2).normal(size=(3, 4))
    check_grad(lambda t: pm(t), x)  # the input path is exact for every variant
    if config.use_dora:  # A and B skip the norm's derivative by design (checked above); m is exact
        _directional_check(lambda: pm(mt.Tensor(x)), layer.lora_magnitude_vector)
    else:
        _directional_check(lambda: pm(mt.Tensor(x)), layer.lora_A.weight)
        _directional_check(lambda: pm(mt.Tensor(x)), layer.lora_B.weight, seed=1)


def test_merge_unmerge_dora_exact_on_non_square_layers():
    model = _vit()
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"], use_dora=True,
                                          init_lora_weights=False))
    for _, layer in pm.peft_layers():
        layer.lora_magnitude_vector.data = layer.lora_magnitude_vector.data * 1.3
    x = _images()
    adapted = pm(x).data.copy()
    w0 = {n: m.base_layer.weight.data.copy() for n, m in pm.peft_layers()}
    pm.merge_adapter()
    once = {n: m.base_layer.weight.data.copy() for n, m in pm.peft_layers()}
    pm.merge_adapter()
    for n, m in pm.peft_layers():
        np.testing.assert_array_equal(m.base_layer.weight.data, once[n])  # twice equals once
    np.testing.assert_allclose(pm(x).data, adapted, rtol=1e-10, atol=1e-12)
    pm.unmerge_adapter()
    for n, m in pm.peft_layers():
        np.testing.assert_array_equal(m.base_layer.weight.data, w0[n])
        assert m.base_layer.weight.data is not once[n]


def test_merge_and_unload_returns_a_plain_model():
    model = _vit()
    pm = get_peft_model(model, LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False,
                                          modules_to_save=["head"]))
    pm.base_model.head.modules_to_save.weight.data += 0.5
    x = _images()
    adapted = pm(x).data.copy()
    plain = pm.merge_and_unload()
    assert not any(isinstance(m, (LoraLinear, ModulesToSaveWrapper)) for m in plain.modules())
    assert isinstance(plain.blocks[0].attn.q_proj, nn.Linear)
    np.testing.assert_allclose(plain(x).data, adapted, rtol=1e-10, atol=1e-12)


def test_nested_disable_adapter():
    pm = get_peft_model(_vit(), LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False,
                                           modules_to_save=["head"]))
    pm.base_model.head.modules_to_save.weight.data += 1.0
    x = _images()
    adapted = pm(x).data.copy()
    with pm.disable_adapter():
        base = pm(x).data.copy()
        with pm.disable_adapter():
            np.testing.assert_array_equal(pm(x).data, base)
        np.testing.assert_array_equal(pm(x).data, base)  # still off until the outermost exit
    np.testing.assert_array_equal(pm(x).data, adapted)
    fresh = _vit()
    np.testing.assert_allclose(fresh(x).data, base, rtol=1e-12)  # disabled = the untouched base model


@pytest.mark.parametrize("placement,expected", [("houlsby", {"attn", "mlp"}), ("pfeiffer", {"mlp"})])
def test_adapter_placement_identity_start_and_counts(placement, expected):
    model = _vit()
    x = _images()
    before = model(x).data.copy()
    pm = get_peft_model(model, AdapterConfig(reduction_factor=4, placement=placement))
    np.testing.assert_array_equal(pm(x).data, before)  # adapter_up starts at zero
    names = {n.rsplit(".", 1)[-1] for n, _ in pm.peft_layers()}
    assert names == expected
    n_adapters = 2 * len(expected)  # 2 blocks
    per = (16 * 4 + 4) + (4 * 16 + 16)  # down (16 -> 4) and up (4 -> 16) with biases
    assert pm.num_parameters(trainable_only=True) == n_adapters * per
    assert "blocks.0.mlp.adapter_down.weight" in pm.adapter_state_dict()
    with pytest.raises(RuntimeError, match="non-linear"):
        pm.merge_adapter()


def test_adapter_forward_formula_and_gradients():
    model = _vit()
    pm = get_peft_model(model, AdapterConfig(bottleneck=3, activation="tanh", placement="pfeiffer"))
    layer = model.blocks[1].mlp
    assert isinstance(layer, AdapterLayer)
    rng = np.random.default_rng(0)
    layer.adapter_up.weight.data = rng.normal(size=(16, 3))
    h_in = rng.normal(size=(2, 5, 16))
    h = layer.base_layer(mt.Tensor(h_in)).data
    Wd, bd = layer.adapter_down.weight.data, layer.adapter_down.bias.data
    Wu, bu = layer.adapter_up.weight.data, layer.adapter_up.bias.data
    np.testing.assert_allclose(layer(mt.Tensor(h_in)).data, h + np.tanh(h @ Wd.T + bd) @ Wu.T + bu, rtol=1e-12)
    check_grad(lambda t: layer(t), h_in)
    del pm


def test_target_regex_and_all_linear():
    pm = get_peft_model(_vit(), LoraConfig(target_modules=r"blocks\.0\.attn\.[qv]_proj"))
    assert [n for n, _ in pm.peft_layers()] == ["blocks.0.attn.q_proj", "blocks.0.attn.v_proj"]
    pm = get_peft_model(_vit(), LoraConfig(target_modules="all-linear"))
    names = [n for n, _ in pm.peft_layers()]
    assert "head" not in names and "patch_emb" in names and len(names) == 1 + 2 * 6
    with pytest.raises(ValueError, match="matches no Linear"):
        get_peft_model(_vit(), LoraConfig(target_modules=r"nothing\d"))


def test_parameter_counts_lora_and_dora():
    n_embd, r = 16, 4
    per_layer = {"q_proj": (16, 16), "k_proj": (16, 16), "v_proj": (16, 16), "o_proj": (16, 16),
                 "fc1": (16, 64), "fc2": (64, 16)}
    lora = 2 * sum(r * (i + o) for i, o in per_layer.values())
    pm = get_peft_model(_vit(), LoraConfig(r=r, target_modules=TARGETS))
    assert pm.num_parameters(trainable_only=True) == lora
    pm = get_peft_model(_vit(), LoraConfig(r=r, target_modules=TARGETS, use_dora=True), gate=GateConfig())
    assert pm.num_parameters(trainable_only=True) == lora + 2 * sum(o for _, o in per_layer.values()) + 2 * 6
    total = sum(p.size for p in _vit().parameters())
    assert pm.num_parameters() == total + lora + 2 * sum(o for _, o in per_layer.values()) + 2 * 6
    assert n_embd == 16


def test_modules_to_save_trains_a_copy():
    model = _vit()
    original = model.head.weight.data.copy()
    pm = get_peft_model(model, LoraConfig(target_modules=["q_proj"], modules_to_save=["head"]))
    wrapper = model.head
    assert isinstance(wrapper, ModulesToSaveWrapper)
    assert wrapper.modules_to_save.weight.requires_grad and not wrapper.original_module.weight.requires_grad
    wrapper.modules_to_save.weight.data += 1.0
    np.testing.assert_array_equal(wrapper.original_module.weight.data, original)
    assert "head.modules_to_save.weight" in pm.adapter_state_dict()


def test_disable_adapter_on_a_merged_model_gives_the_base_output():
    pm = get_peft_model(_vit(), LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False, use_dora=True))
    x = _images()
    with pm.disable_adapter():
        base = pm(x).data.copy()
    adapted = pm(x).data.copy()
    pm.merge_adapter()
    with pm.disable_adapter():
        np.testing.assert_allclose(pm(x).data, base, rtol=1e-12)
    np.testing.assert_allclose(pm(x).data, adapted, rtol=1e-10, atol=1e-12)  # merged again on exit
    assert all(layer.merged for _, layer in pm.peft_layers())
    layer = pm.base_model.blocks[0].attn.q_proj
    layer.disabled = True  # set by hand on a merged layer: it still computes the true base output
    with pm.disable_adapter():
        pass
    assert layer.disabled


def test_generate_on_the_peft_model_is_the_adapted_base_models():
    from minitspeft.peft import GateConfig

    def lm():
        mt.manual_seed(0)
        return nn.Transformer(nn.TransformerConfig.preset("nano", vocab_size=7, block_size=12, causal=True))

    plain = lm()
    peft = get_peft_model(lm(), LoraConfig(r=2, target_modules=["q_proj", "fc1"], init_lora_weights=False),
                          gate=GateConfig())
    ids = np.array([[1, 2]])
    out = peft.generate(ids, max_new_tokens=4, top_k=1)
    assert out.shape == (1, 6) and np.array_equal(out, peft.get_base_model().generate(ids, 4, top_k=1))
    with peft.disable_adapter():
        assert np.array_equal(peft.generate(ids, 4, top_k=1), plain.generate(ids, 4, top_k=1))
    vit = get_peft_model(nn.ViT(nn.TransformerConfig(n_layer=1, n_head=2, n_embd=8, n_classes=2), patch_size=2,
                                image_size=4), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(AttributeError, match="generate: the base model, a ViT, has no generate"):
        vit.generate(ids, 1)
