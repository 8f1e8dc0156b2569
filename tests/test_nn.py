"""Modules, state dicts, the ViT and AdamW."""

import math

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import functional as F
from minitspeft import nn
from minitspeft.optim import AdamW, warmup_cosine
from minitspeft.testing import central_difference


def _vit(dtype=np.float64):
    mt.manual_seed(0)
    cfg = nn.TransformerConfig(n_layer=2, n_head=2, n_embd=8, n_classes=3, pooling="cls")
    return nn.ViT(cfg, patch_size=2, image_size=4, dtype=dtype)


def test_state_dict_names_follow_design():
    names = list(_vit().state_dict())
    expected_block = [f"blocks.0.{n}" for n in (
        "ln1.weight", "ln1.bias",
        "attn.q_proj.weight", "attn.q_proj.bias", "attn.k_proj.weight", "attn.k_proj.bias",
        "attn.v_proj.weight", "attn.v_proj.bias", "attn.o_proj.weight", "attn.o_proj.bias",
        "ln2.weight", "ln2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")]
    for name in ["cls_token", "patch_emb.weight", "pos_emb.weight", "ln_f.weight", "head.weight", *expected_block]:
        assert name in names
    assert _vit().state_dict()["blocks.0.mlp.fc1.weight"].shape == (32, 8)  # (out, in)


def test_linear_matches_pytorch_layout():
    mt.manual_seed(3)
    lin = nn.Linear(5, 2, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(4, 3, 5))
    np.testing.assert_allclose(lin(mt.Tensor(x)).data, x @ lin.weight.data.T + lin.bias.data, rtol=1e-12)
    with pytest.raises(ValueError, match=r"linear.*\(4, 3\).*\(2, 5\)"):
        lin(mt.Tensor(np.ones((4, 3))))


def test_load_state_dict_reports_all_problems_and_changes_nothing():
    model = _vit()
    state = model.state_dict()
    before = model.state_dict()
    bad = dict(state)
    del bad["head.bias"]
    bad["extra.weight"] = np.zeros(2)
    bad["head.weight"] = np.zeros((4, 8))
    bad["ln_f.weight"] = np.full(8, 7.0)
    with pytest.raises(ValueError) as info:
        model.load_state_dict(bad)
    msg = str(info.value)
    assert "head.bias" in msg and "extra.weight" in msg and "head.weight" in msg
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_state_dict_round_trip_is_exact_and_independent():
    a, b = _vit(), _vit()
    for p in b.parameters():
        p.data = p.data + 1.0
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).uniform(size=(2, 4, 4))
    np.testing.assert_array_equal(a(x).data, b(x).data)
    b.blocks[0].ln1.weight.data[:] = 5.0
    assert not np.array_equal(a.blocks[0].ln1.weight.data, b.blocks[0].ln1.weight.data)


@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 4), (2, 2, 4, 4)])
def test_vit_rejects_wrong_image_shapes(shape):
    with pytest.raises(ValueError, match="ViT: expected images"):
        _vit()(np.zeros(shape))


def test_vit_rejects_non_numeric_images():
    with pytest.raises(ValueError, match="numeric"):
        _vit()(np.array([[["a"] * 4] * 4]))


def test_patch_order_is_row_major():
    model = _vit()
    img = np.arange(16, dtype=float).reshape(1, 4, 4)
    patches = model.patchify(img).data
    np.testing.assert_array_equal(patches[0, 1], [2, 3, 6, 7])  # patch (0, 1)
    np.testing.assert_array_equal(patches[0, 2], [8, 9, 12, 13])  # patch (1, 0)


def test_vit_parameter_gradients_match_central_difference():
    model = _vit()
    x = np.random.default_rng(1).uniform(size=(3, 4, 4))
    y = np.array([0, 2, 1])
    F.cross_entropy(model(x), y).backward()
    rng = np.random.default_rng(2)
    for name in ("blocks.1.attn.k_proj.weight", "blocks.0.ln1.weight", "cls_token", "pos_emb.weight"):
        p = dict(model.named_parameters())[name]
        u = rng.normal(size=p.shape)
        base = p.data.copy()

        def loss_at(w, p=p):
            p.data = w.data
            return F.cross_entropy(model(x), y)

        numeric = central_difference(loss_at, [base], [u], np.ones(()))
        p.data = base
        assert (p.grad * u).sum() == pytest.approx(numeric, rel=1e-6, abs=1e-9), name


def test_vit_learns_a_tiny_problem():
    model = _vit(np.float32)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=48)
    x = np.zeros((48, 4, 4), dtype=np.float32)
    for i, c in enumerate(y):  # class c lights up row c
        x[i, c] = 1.0
    x += rng.normal(scale=0.1, size=x.shape).astype(np.float32)
    opt = AdamW(list(model.parameters()), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    assert model.blocks[0].attn.q_proj.weight.grad.dtype == np.float32


def test_adamw_matches_written_update():
    p = nn.Parameter(np.array([1.0, -2.0]))
    opt = AdamW([p], lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.5)
    g1, g2 = np.array([0.5, -1.0]), np.array([0.2, 0.3])
    x, m, v = p.data.copy(), 0.0, 0.0
    for t, g in enumerate([g1, g2], start=1):
        p.grad = g
        opt.step()
        x = x * (1 - 0.1 * 0.5)
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        x = x - 0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.99**t)) + 1e-8)
        np.testing.assert_allclose(p.data, x, rtol=1e-13)


def test_warmup_cosine_shape():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(70, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 60 / 90)))


@pytest.mark.parametrize("kwargs", [dict(n_embd=10, n_head=4), dict(n_layer=0), dict(pooling="max"),
                                    dict(dropout=1.0), dict(n_classes=0)])
def test_config_validation(kwargs):
    with pytest.raises(ValueError, match="TransformerConfig"):
        nn.TransformerConfig(**kwargs)


def test_eval_mode_restores_every_modules_own_mode_even_after_an_error():
    model = _vit()
    model.train()
    model.blocks[0].eval()  # a mixed state: eval_mode must give back exactly this
    before = [m.training for m in model.modules()]
    with model.eval_mode():
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError, match="inside"):
        with model.eval_mode():
            raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == before
