"""The gate inside models and training: every PEFT method, sparsity control, warm-up, failure flags."""

import warnings

import numpy as np
import pytest
from toy import toy_images

import minitspeft as mt
from minitspeft import nn
from minitspeft.peft import AdapterConfig, GateConfig, LoraConfig, get_peft_model
from minitspeft.train import fit


def _vit(dtype=None):
    mt.manual_seed(0)
    cfg = nn.TransformerConfig(n_layer=1, n_head=2, n_embd=16, n_classes=3, pooling="cls")
    return nn.ViT(cfg, patch_size=2, image_size=4, dtype=dtype)


def _trained_density(gate, steps=60):
    x, y = toy_images(64)
    pm = get_peft_model(_vit(), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "fc1"]), gate=gate)
    result = fit(pm, x, y, steps=steps, batch_size=16, lr=1e-2, seed=0, progress=False)
    return float(np.mean([h["density"] for h in result.history[-10:]])), pm


CONFIGS = {
    "lora": LoraConfig(r=3, target_modules=["q_proj", "fc2"], init_lora_weights=False),
    "dora": LoraConfig(r=3, target_modules=["q_proj", "fc2"], init_lora_weights=False, use_dora=True),
    "adapter": AdapterConfig(bottleneck=4),
}


@pytest.mark.parametrize("method", CONFIGS)
def test_gated_layers_output_exactly_b_plus_hard_gate_times_d(method):
    model = _vit(np.float64)
    pm = get_peft_model(model, CONFIGS[method], gate=GateConfig())
    rng = np.random.default_rng(0)
    for p in pm.parameters():
        if p.requires_grad and p.ndim == 2:
            p.data = rng.normal(scale=0.3, size=p.shape)  # make the updates non-zero
    for name, layer in pm.peft_layers():
        x = rng.normal(size=(3, 5, getattr(layer.base_layer, "in_features", 16)))
        b = layer.base_layer(mt.Tensor(x))
        d = layer.delta(mt.Tensor(x), b)
        r = np.linalg.norm(d.data, axis=-1) / (np.linalg.norm(b.data, axis=-1) + 1e-6)
        # about half the tokens open; for DoRA and adapters the median token sits exactly on the threshold.
        # LoRA runs the gate's low-rank form (the same gate up to rounding, tests/test_low_rank_gate.py),
        # so there tau sits between two ratios and the output is compared to rounding
        exact = method != "lora"
        tau = np.median(r) if exact else np.mean(np.sort(r.ravel())[r.size // 2 - 1:r.size // 2 + 1])
        layer.gate.tau.data = np.asarray(tau)
        S = (r >= tau).astype(float)
        assert 0 < S.mean() < 1, name  # both open and closed tokens are exercised
        out = layer(mt.Tensor(x)).data
        np.testing.assert_array_equal(layer.gate.last_S.data, S)
        if exact:
            np.testing.assert_array_equal(out, b.data + S[..., None] * d.data)
        else:
            np.testing.assert_allclose(out, b.data + S[..., None] * d.data, rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings("ignore:fit. at step:RuntimeWarning")  # a layer may close whole: that is allowed here
def test_density_falls_as_sparsity_weight_rises():
    dense, _ = _trained_density(GateConfig(sparsity_weight=0.0, tau_lr=0.02, temperature=0.2))
    sparse, _ = _trained_density(GateConfig(sparsity_weight=0.5, tau_lr=0.02, temperature=0.2))
    assert sparse < dense - 0.2


@pytest.mark.filterwarnings("ignore:fit. at step:RuntimeWarning")
def test_target_density_is_approached():
    density, _ = _trained_density(GateConfig(sparsity_weight=20.0, target_density=0.5, tau_lr=0.02,
                                             temperature=0.2), steps=120)
    assert abs(density - 0.5) < 0.15


def test_warmup_freezes_thresholds_then_releases_them():
    x, y = toy_images(64)
    gate = GateConfig(sparsity_weight=0.5, tau_lr=0.05, warmup_steps=8, temperature=0.2)
    pm = get_peft_model(_vit(), LoraConfig(r=4, target_modules=["q_proj", "fc1"]), gate=gate)
    result = fit(pm, x, y, steps=20, batch_size=16, lr=1e-2, seed=0, progress=False)
    taus = np.array([h["tau"] for h in result.history])
    assert np.all(taus[:8] == 0.0)  # frozen during the warm-up
    assert np.any(taus[-1] > 0.0)  # moving after it


def test_dead_layer_is_flagged_and_fit_warns_once():
    x, y = toy_images(64)
    pm = get_peft_model(_vit(), LoraConfig(r=4, target_modules=["q_proj", "fc1"]),
                        gate=GateConfig(tau_init=50.0, sparsity_weight=0.1))
    pm(x[:4])
    stats = pm.gate_stats()
    assert all(v["dead"] and v["density"] == 0.0 for v in stats.values())
    assert "dead layers" in pm.gate_problems()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(pm, x, y, steps=5, batch_size=16, progress=False)
    gate_warnings = [w for w in caught if "dead layers" in str(w.message)]
    assert len(gate_warnings) == 1 and "at step 0" in str(gate_warnings[0].message)


def test_stuck_threshold_is_flagged():
    pm = get_peft_model(_vit(np.float64), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False),
                        gate=GateConfig(surrogate="rect", temperature=0.01))
    x = np.random.default_rng(0).uniform(size=(4, 4, 4))
    pm(x)  # tau = 0 and every r far above 0.01: the rect surrogate is 0 everywhere
    (stats,) = pm.gate_stats().values()
    assert stats["stuck"] and not stats["dead"]
    assert "stuck thresholds" in pm.gate_problems()
    pm.base_model.blocks[0].attn.q_proj.gate.config = GateConfig(surrogate="sigmoid", temperature=10.0)
    pm(x)
    assert not pm.gate_stats()["blocks.0.attn.q_proj"]["stuck"]
    assert pm.gate_problems() is None


def test_sparsity_loss_gradient_reaches_tau_and_the_update():
    pm = get_peft_model(_vit(np.float64), LoraConfig(r=4, target_modules=["fc1"], init_lora_weights=False),
                        gate=GateConfig(sparsity_weight=1.0, temperature=0.5))
    layer = pm.base_model.blocks[0].mlp.fc1
    layer.gate.tau.data = np.asarray(0.3)
    pm(np.random.default_rng(0).uniform(size=(4, 4, 4)))
    pm.sparsity_loss().backward()
    assert float(layer.gate.tau.grad) < 0  # descent raises tau
    assert np.abs(layer.lora_B.weight.grad).sum() > 0  # through r: shrinking updates also lowers mean(S)


def test_a_disabled_pass_leaves_no_stale_gates_for_the_regulariser():
    pm = get_peft_model(_vit(), LoraConfig(r=4, target_modules=["q_proj"]), gate=GateConfig(sparsity_weight=1.0))
    x, _ = toy_images(4)
    pm(x)
    assert pm.sparsity_loss().item() == 1.0  # every gate open at the start
    with pm.disable_adapter():
        pm(x)
    assert pm.sparsity_loss().item() == 0.0  # no gate was applied in the last pass


@pytest.mark.parametrize("field,value", [("tau_init", float("inf")), ("sparsity_weight", float("inf")),
                                         ("temperature", float("inf"))])
def test_gate_config_rejects_infinities(field, value):
    with pytest.raises(ValueError, match=field):
        GateConfig(**{field: value})
