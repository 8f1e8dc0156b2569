"""The low-rank gate on a LoRA update is the paper's gate on ``d = s u B^T``: same outputs, gates and gradients."""

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import nn
from minitspeft.nn import Parameter
from minitspeft.peft import GateConfig, LoraConfig, get_peft_model
from minitspeft.peft.config import SURROGATES
from minitspeft.peft.gate import gated_update
from minitspeft.peft.low_rank_gate import gated_lora_update
from minitspeft.testing import check_grad

S_ = 2.0  # scaling


def _inputs(seed=0, lead=(3, 6), C=5, R=2, dtype=np.float64):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=lead + (C,)).astype(dtype)
    u = (rng.normal(size=lead + (R,)) * rng.uniform(0.05, 1.5, size=lead + (1,))).astype(dtype)
    W = rng.normal(size=(C, R)).astype(dtype)
    return b, u, W


def _both(b, u, W, tau, through=True, surrogate="sigmoid", temperature=0.3):
    """Run the fused low-rank gate and gated_update on d = s u W^T; backward a loss using out and S."""
    results = []
    for fused in (True, False):
        tb, tu, tW = (mt.Tensor(a.copy(), requires_grad=True) for a in (b, u, W))
        t = Parameter(np.asarray(tau, dtype=b.dtype))
        if fused:
            out, S, r = gated_lora_update(tb, tu, tW, S_, t, surrogate, temperature, 1e-6, through)
        else:
            out, S, r = gated_update(tb, (tu @ tW.swapaxes(0, 1)) * S_, t, surrogate, temperature, 1e-6, through)
        g = np.random.default_rng(9).normal(size=out.shape)
        ((out * mt.Tensor(g)).sum() + S.sum() * 0.7).backward()
        results.append({"out": out.data, "S": S.data, "r": r, "b": tb.grad, "u": tu.grad, "W": tW.grad,
                        "tau": t.grad})
    return results


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("through", [True, False])
@pytest.mark.parametrize("tau", [0.0, 0.4, 0.9, 50.0])
def test_outputs_gates_and_gradients_match_the_gate_on_the_formed_update(surrogate, through, tau):
    fused, plain = _both(*_inputs(), tau=tau, through=through, surrogate=surrogate)
    assert 0 < fused["S"].mean() < 1 or tau in (0.0, 50.0)
    np.testing.assert_array_equal(fused["S"], plain["S"])
    for key in ("out", "r", "b", "u", "W", "tau"):
        np.testing.assert_allclose(fused[key], plain[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_float64_gradient_check_of_the_direct_terms():
    """Without the ratio's path (and S held fixed away from ties) ``out`` is an ordinary function of
    ``b``, ``u`` and ``B``: central differences check the low-rank products ``B^T g`` and ``g u^T``."""
    b, u, W = _inputs(seed=3)
    tau = Parameter(np.asarray(0.5))

    def fn(tb, tu, tW):
        return gated_lora_update(tb, tu, tW, S_, tau, "sigmoid", 0.3, grad_through_ratio=False)[0]

    fused = gated_lora_update(*(mt.Tensor(a) for a in (b, u, W)), S_, tau)[1].data
    assert 0 < fused.mean() < 1
    check_grad(fn, b, u, W)


def test_a_zero_B_opens_every_gate_at_tau_0_with_finite_gradients():
    b, u, _ = _inputs(seed=1)
    fused, plain = _both(b, u, np.zeros((5, 2)), tau=0.0)
    assert fused["S"].all() and np.isfinite(fused["u"]).all() and np.isfinite(fused["W"]).all()
    for key in ("out", "b", "u", "W", "tau"):
        np.testing.assert_allclose(fused[key], plain[key], rtol=1e-12, atol=1e-14, err_msg=key)


@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_magnitudes_past_the_quadratic_forms_range_fall_back_to_the_exact_gate(scale):
    b, u, W = _inputs(seed=2, dtype=np.float32)
    fused, plain = _both(b * np.float32(scale), u * np.float32(scale), W, tau=0.5, temperature=0.3)
    np.testing.assert_array_equal(fused["S"], plain["S"])
    for key in ("out", "r", "b", "u", "W"):
        assert np.isfinite(fused[key]).all(), key
        np.testing.assert_allclose(fused[key], plain[key], rtol=1e-5, atol=0, err_msg=key)


def test_lengths_whose_product_overflows_keep_their_gradient():
    """``||b|| ~ 1e20`` and ``||d|| ~ 4e18`` in float32: the update's square fits (no fallback), their product
    does not, so the ratio's backward must divide one factor at a time."""
    b, u, W = _inputs(seed=2, dtype=np.float32)
    b, u = b * np.float32(5e19), u * np.float32(1e18)
    q = ((u @ W.T) ** 2).astype(np.float64).sum(-1)
    product = np.sqrt(q) * S_ * np.linalg.norm(b.astype(np.float64), axis=-1)
    assert np.isfinite(((u @ W.T) ** 2).sum(-1)).all() and (product > 3.4e38).any()
    r = S_ * np.sqrt(q) / np.linalg.norm(b.astype(np.float64), axis=-1)
    fused, plain = _both(b, u, W, tau=float(np.median(r)) * 0.999, temperature=0.3)
    np.testing.assert_array_equal(fused["S"], plain["S"])
    for key in ("b", "u", "W", "tau"):
        assert np.isfinite(fused[key]).all(), key
        np.testing.assert_allclose(fused[key], plain[key], rtol=1e-4, atol=0, err_msg=key)


def test_bad_shapes_and_non_tensors_are_refused_by_name():
    b, u, W = (mt.Tensor(a) for a in _inputs())
    tau = Parameter(np.asarray(0.5))
    with pytest.raises(ValueError, match=r"gated_lora_update: lora_B has shape \(2, 5\), expected \(C, r\)"):
        gated_lora_update(b, u, W.swapaxes(0, 1), S_, tau)
    with pytest.raises(ValueError, match="gated_lora_update: b .* and u .* same leading shape"):
        gated_lora_update(b, u[:2], W, S_, tau)
    with pytest.raises(TypeError, match="gated_lora_update: u must be a Tensor"):
        gated_lora_update(b, u.data, W, S_, tau)


def _model(seed=0):
    mt.manual_seed(seed)
    cfg = nn.TransformerConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=16, n_classes=3)
    gate = GateConfig(temperature=1.0, tau_init=3.5)
    model = get_peft_model(nn.Transformer(cfg, dtype=np.float64),
                           LoraConfig(r=2, target_modules=["q_proj", "fc1"], init_lora_weights=False), gate=gate)
    return model


def test_a_gated_lora_model_gives_what_the_generic_gate_gives():
    """LoraLinear takes the low-rank path; forcing the generic one gives the same loss and gradients."""
    ids = np.random.default_rng(0).integers(0, 12, size=(4, 8))
    runs = []
    for generic in (False, True):
        model = _model()
        if generic:
            for _, layer in model.peft_layers():
                layer.gated = lambda x, b, layer=layer: layer.gate(b, layer.delta(x, b))
        loss = model(ids).sum() + model.sparsity_loss()
        loss.backward()
        runs.append((loss.data, {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
                     [g.last_S.data for _, g in model.gates()]))
    (l1, g1, s1), (l2, g2, s2) = runs
    np.testing.assert_allclose(l1, l2, rtol=1e-12)
    assert g1.keys() == g2.keys() and any("tau" in n for n in g1)
    for n in g1:
        np.testing.assert_allclose(g1[n], g2[n], rtol=1e-9, atol=1e-12, err_msg=n)
    for a, b in zip(s1, s2):
        np.testing.assert_array_equal(a, b)
    assert 0 < np.mean([s.mean() for s in s1]) < 1
