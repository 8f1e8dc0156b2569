"""The token gate: forward exactly ``b + 1[r >= tau] d``, backward exactly the equations of docs/gate.md."""

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import ops
from minitspeft.nn import Parameter
from minitspeft.peft import GateConfig, TokenGate, threshold_step, token_ratio
from minitspeft.peft.config import SURROGATES

EPS = 1e-6


def _inputs(seed=0, shape=(3, 5, 4)):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=shape)
    d = rng.normal(size=shape) * rng.uniform(0.1, 2.0, size=shape[:-1] + (1,))
    return b, d


def _gate(surrogate="sigmoid", temperature=0.5, tau=0.8, through=True):
    g = TokenGate(GateConfig(surrogate=surrogate, temperature=temperature, eps=EPS, grad_through_ratio=through),
                  dtype=np.float64)
    g.tau.data = np.asarray(tau, dtype=np.float64)
    return g


def _phi_prime(z, surrogate, T):
    if surrogate == "sigmoid":
        s = 1 / (1 + np.exp(-z / T))
        return s * (1 - s) / T
    if surrogate == "rect":
        return (np.abs(z) <= T) / (2 * T)
    return np.ones_like(z)


def test_forward_is_exactly_the_hard_gate():
    b, d = _inputs()
    gate = _gate(tau=0.8)
    out = gate(mt.Tensor(b), mt.Tensor(d)).data
    r = np.linalg.norm(d, axis=-1) / (np.linalg.norm(b, axis=-1) + EPS)
    S = (r >= 0.8).astype(float)
    assert 0 < S.mean() < 1  # the test data opens some gates and closes others
    np.testing.assert_array_equal(out, b + S[..., None] * d)
    # closed tokens are exactly the base output, open ones exactly base + update
    assert np.array_equal(out[S == 0], b[S == 0])


def test_ties_open():
    b, d = _inputs(1)
    r = token_ratio(mt.Tensor(b), mt.Tensor(d), EPS).data
    tau = mt.Tensor(r[1, 2])  # exactly the ratio of token (1, 2)
    S = threshold_step(mt.Tensor(r), tau).data
    assert S[1, 2] == 1.0
    assert set(np.unique(S)) <= {0.0, 1.0}
    np.testing.assert_array_equal(S, (r >= r[1, 2]).astype(float))


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("through", [True, False])
def test_backward_matches_the_written_equations(surrogate, through):
    b, d = _inputs(2)
    T, tau = 0.5, 0.8
    rng = np.random.default_rng(3)
    g = rng.normal(size=b.shape)
    bt, dt = mt.Tensor(b, requires_grad=True), mt.Tensor(d, requires_grad=True)
    gate = _gate(surrogate, T, tau, through)
    gate(bt, dt).backward(g)

    nb, nd = np.linalg.norm(b, axis=-1), np.linalg.norm(d, axis=-1)
    r = nd / (nb + EPS)
    S = (r >= tau).astype(float)
    dS = (g * d).sum(-1)  # dL/dS_i = <g_i, d_i>
    p = _phi_prime(r - tau, surrogate, T)
    dr_dd = d / (nd * (nb + EPS))[..., None]
    dr_db = -(nd / (nb + EPS) ** 2)[..., None] * b / nb[..., None]
    k = float(through)
    np.testing.assert_allclose(dt.grad, S[..., None] * g + k * (dS * p)[..., None] * dr_dd, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bt.grad, g + k * (dS * p)[..., None] * dr_db, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gate.tau.grad, -(dS * p).sum(), rtol=1e-10)


def _straight_through_composed(b, d, tau, surrogate, T):
    """The same gate from primitives: ``S_hard + phi(r - tau) - stop_gradient(phi(r - tau))``."""
    r = (d * d).sum(axis=-1).sqrt() / ((b * b).sum(axis=-1).sqrt() + EPS)
    z = r - tau
    if surrogate == "sigmoid":
        phi = (z * (1.0 / T)).sigmoid()
    elif surrogate == "rect":
        phi = ops.clip(z * (1.0 / (2 * T)), -0.5, 0.5)
    else:
        phi = z
    hard = mt.Tensor((r.data >= tau.data).astype(r.dtype))
    S = hard + phi - phi.detach()
    return b + S.reshape(*S.shape, 1) * d


@pytest.mark.parametrize("surrogate", SURROGATES)
def test_backward_matches_straight_through_composition(surrogate):
    b, d = _inputs(4)
    g = np.random.default_rng(5).normal(size=b.shape)
    T, tau = 0.5, 0.8
    fused_b, fused_d = mt.Tensor(b, requires_grad=True), mt.Tensor(d, requires_grad=True)
    gate = _gate(surrogate, T, tau)
    out = gate(fused_b, fused_d)
    out.backward(g)
    comp_b, comp_d = mt.Tensor(b, requires_grad=True), mt.Tensor(d, requires_grad=True)
    comp_tau = mt.Tensor(np.float64(tau), requires_grad=True)
    ref = _straight_through_composed(comp_b, comp_d, comp_tau, surrogate, T)
    ref.backward(g)
    # (hard + phi) - phi can differ from hard in the last bit, so the forward is compared to 1e-12 here
    np.testing.assert_allclose(out.data, ref.data, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fused_d.grad, comp_d.grad, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fused_b.grad, comp_b.grad, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gate.tau.grad, comp_tau.grad, rtol=1e-9)


@pytest.mark.parametrize("surrogate", SURROGATES)
def test_zero_inputs_stay_finite(surrogate):
    b = np.zeros((2, 3, 4))
    d = np.zeros((2, 3, 4))
    d[0, 0] = 1.0  # one token with an update over a zero base
    bt, dt = mt.Tensor(b, requires_grad=True), mt.Tensor(d, requires_grad=True)
    gate = _gate(surrogate, 0.5, 0.0)
    out = gate(bt, dt)
    out.backward(np.ones(b.shape))
    for arr in (out.data, bt.grad, dt.grad, gate.tau.grad):
        assert np.all(np.isfinite(arr))
    # tau = 0 and r = 0 everywhere else: every gate is open (ties open)
    assert gate.last_density == 1.0


def test_sparsity_surrogate_pushes_tau_up():
    b, d = _inputs(6)
    gate = _gate("sigmoid", 0.5, 0.8)
    gate(mt.Tensor(b), mt.Tensor(d))
    gate.last_S.mean().backward()
    assert float(gate.tau.grad) < 0  # a descent step on mean(S) raises tau


def test_statistics_count_positions():
    b, d = _inputs(7, shape=(4, 6, 3))
    gate = _gate(tau=0.8)
    gate(mt.Tensor(b), mt.Tensor(d))
    gate(mt.Tensor(b[:2]), mt.Tensor(d[:2]))
    r = np.linalg.norm(d, axis=-1) / (np.linalg.norm(b, axis=-1) + EPS)
    S = (r >= 0.8).astype(float)
    expected = (S.sum(0) + S[:2].sum(0)) / 6
    np.testing.assert_allclose(gate.position_density(), expected)
    assert gate.last_density == pytest.approx(S[:2].mean())


def test_threshold_rejects_non_scalar_tau():
    with pytest.raises(ValueError, match="threshold_step"):
        threshold_step(mt.Tensor(np.ones(3)), Parameter(np.ones(2)))


@pytest.mark.parametrize("field,value", [("surrogate", "step"), ("temperature", 0.0), ("temperature", -1.0),
                                         ("eps", 0.0), ("sparsity_weight", -0.1), ("target_density", 0.0),
                                         ("target_density", 1.5), ("tau_init", -0.1), ("tau_lr", 0.0),
                                         ("warmup_steps", -1), ("temperature", float("nan"))])
def test_gate_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        GateConfig(**{field: value})


def test_the_fused_gates_S_output_backpropagates_like_threshold_step_after_token_ratio():
    """gated_update's second output S is the straight-through gate: its gradient to b, d and tau equals the
    composition threshold_step(token_ratio(b, d), tau), to the last bit."""
    from minitspeft.peft import gated_update

    b0, d0 = _inputs(9)
    w = np.random.default_rng(10).normal(size=b0.shape[:-1])
    grads = []
    for fused in (True, False):
        b, d = mt.Tensor(b0.copy(), requires_grad=True), mt.Tensor(d0.copy(), requires_grad=True)
        tau = Parameter(np.array(0.8))
        if fused:
            _, S, r = gated_update(b, d, tau, "sigmoid", 0.3, EPS)
            np.testing.assert_array_equal(r, token_ratio(b, d, EPS).data)
        else:
            S = threshold_step(token_ratio(b, d, EPS), tau, "sigmoid", 0.3)
        (S * mt.Tensor(w)).sum().backward()
        grads.append((b.grad, d.grad, tau.grad, S.data))
    for got, want in zip(*grads):
        np.testing.assert_array_equal(got, want)


def test_last_S_is_the_gate_of_the_last_forward_and_clears_when_no_gate_runs():
    from minitspeft import nn
    from minitspeft.peft import LoraConfig, get_peft_model

    mt.manual_seed(0)
    model = nn.Transformer(nn.TransformerConfig(n_layer=1, n_head=2, n_embd=8, n_classes=2, block_size=6))
    pm = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False),
                        gate=GateConfig(sparsity_weight=1.0, tau_init=0.5))
    (_, gate), = pm.gates()
    ids = np.array([[1, 2, 3, 4]])
    pm(ids)
    S = gate.last_S
    assert S.shape == (1, 4) and S.requires_grad
    pm.sparsity_loss().backward()  # differentiates that very S
    assert pm.thresholds()[0].grad is not None
    with pm.disable_adapter():
        pm(ids)
    assert gate.last_S is None and float(pm.sparsity_loss().data) == 0.0


def test_the_gate_with_b_and_d_at_1e30_keeps_r_tau_and_its_gradient_finite():
    """b = d = 1e30 (float32) used to give r = NaN, a closed gate and a NaN tau.grad kept forever by the
    projection; now r = ||d|| / (||b|| + eps) = 1 and every gradient is finite."""
    from minitspeft.optim import AdamW
    from minitspeft.peft import gated_update

    b = mt.Tensor(np.full((2, 3, 4), 1e30, np.float32), requires_grad=True)
    d = mt.Tensor(np.full((2, 3, 4), 1e30, np.float32), requires_grad=True)
    tau = Parameter(np.array(0.5, np.float32), lower_bound=0.0)
    out, S, r = gated_update(b, d, tau)
    np.testing.assert_allclose(r, 1.0, rtol=1e-6)
    assert (S.data == 1).all()
    (out.mean() * 1e-30 + S.mean()).backward()
    assert all(np.isfinite(g).all() for g in (b.grad, d.grad, tau.grad))
    tau.grad = np.array(np.nan, np.float32)  # and a NaN that got here anyway is refused, nothing moved
    opt = AdamW([tau], lr=0.1)
    with pytest.raises(FloatingPointError, match="non-finite gradient"):
        opt.step()
    assert float(tau.data) == 0.5 and opt.state == {}


@pytest.mark.parametrize("field", ["temperature", "eps"])
def test_settings_that_round_to_zero_in_the_layers_dtype_are_refused(field):
    with pytest.raises(ValueError, match=f"{field}=1e-50 is below the smallest normal float32"):
        TokenGate(GateConfig(**{field: 1e-50}), dtype=np.float32)
    TokenGate(GateConfig(**{field: 1e-50}), dtype=np.float64)  # representable there


def test_the_regulariser_after_an_empty_batch_is_zero():
    from minitspeft import nn
    from minitspeft.peft import LoraConfig, get_peft_model

    mt.manual_seed(0)
    vit = nn.ViT(nn.TransformerConfig(n_layer=1, n_head=2, n_embd=8, n_classes=2, pooling="cls"),
                 patch_size=2, image_size=4)
    pm = get_peft_model(vit, LoraConfig(r=2, target_modules=["q_proj"]), gate=GateConfig(sparsity_weight=1.0))
    pm(np.zeros((0, 4, 4)))
    assert float(pm.sparsity_loss().data) == 0.0


def test_tiny_inputs_with_a_tiny_eps_keep_every_gradient_finite():
    """b, d ~ 1e-30 with eps = 1e-35 (float32): (||b|| + eps)^2 underflows; the gradient to b stays finite
    and matches a float64 computation of the same numbers."""
    from minitspeft.peft import gated_update

    rng = np.random.default_rng(3)
    b0, d0 = rng.normal(size=(3, 4)) * 1e-30, rng.normal(size=(3, 4)) * 1e-30
    grads = []
    for dtype in (np.float32, np.float64):
        b = mt.Tensor(b0.astype(dtype), requires_grad=True)
        d = mt.Tensor(d0.astype(dtype), requires_grad=True)
        tau = Parameter(np.array(0.5, dtype))
        out, S, _ = gated_update(b, d, tau, eps=1e-35)
        (S * mt.Tensor(np.arange(1.0, 4.0).astype(dtype))).sum().backward()
        grads.append(b.grad.astype(np.float64))
    assert np.isfinite(grads[0]).all()
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4)
