"""The gate variants: exact forwards, and backwards equal to the straight-through derivative of a smooth twin.

For every variant the gate is ``out = b + S d`` with ``S = 1[score >= t]``.
Its backward pass must equal the exact derivative of the smooth function

    f(b, d, tau, w) = b + (H0 + phi(score(b, d, w) - t) - phi0) d

with the hard gates ``H0``, the offsets ``phi0`` (and for top-k the per-sequence
boundary ``t``) frozen at the point of evaluation: that is what
"straight-through" means. The tests compute ``f`` in NumPy and differentiate
it by central differences in float64, independently of the engine.
"""

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import nn
from minitspeft.nn import Parameter
from minitspeft.peft import (GATE_VARIANTS, GateConfig, LoraConfig, TokenGate, get_peft_model, reference_gate,
                             sequence_ratio, token_ratio, top_k_step)
from minitspeft.peft.selection import keep_count
from minitspeft.testing import central_difference

EPS = 1e-6
T_SIG = 0.4


def _inputs(seed=0, shape=(3, 6, 4)):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=shape)
    d = rng.normal(size=shape) * rng.uniform(0.1, 2.0, size=shape[:-1] + (1,))
    return b, d


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _np_score(config, b, d, w, b0):
    """The variant's score in NumPy (the router reads the direction of the frozen ``b0``)."""
    r = np.linalg.norm(d, axis=-1) / (np.linalg.norm(b, axis=-1) + EPS)
    if config.score == "ratio":
        return r
    if config.score == "seq_ratio":
        return (r + EPS) / (r.mean(axis=-1, keepdims=True) + EPS)
    u = b0 / (np.linalg.norm(b0, axis=-1, keepdims=True) + EPS)
    return 1 + u @ w


def _gate(name, tau=0.9, seed=3, **fields):
    config = GateConfig.variant(name, surrogate="sigmoid", temperature=T_SIG, eps=EPS, **fields)
    gate = TokenGate(config, dtype=np.float64, channels=4)
    if gate.tau is not None:
        gate.tau.data = np.asarray(tau, dtype=np.float64)
    if config.score == "router":
        gate.router_weight.data = np.random.default_rng(seed).normal(size=4)
    return gate


VARIANT_CASES = [("paper", {}), ("seq-ratio", {}), ("top-k", {}), ("top-k", {"keep_ratio": 0.3}),
                 ("bounded", {}), ("router", {}), ("paper", {"grad_through_ratio": False}),
                 ("seq-ratio", {"grad_through_ratio": False})]


@pytest.mark.parametrize("name, fields", VARIANT_CASES)
def test_forward_is_exactly_b_plus_S_d(name, fields):
    b, d = _inputs()
    gate = _gate(name, **fields)
    out = gate(mt.Tensor(b), mt.Tensor(d)).data
    S = gate.last_S.data
    assert set(np.unique(S)) <= {0.0, 1.0}
    np.testing.assert_array_equal(out, b + S[..., None] * d)
    w = gate.router_weight.data if gate.config.score == "router" else None
    s = _np_score(gate.config, b, d, w, b)
    np.testing.assert_allclose(gate.last_score, s, rtol=1e-12)
    if gate.config.keep_ratio is None:
        np.testing.assert_array_equal(S, (gate.last_score >= 0.9).astype(float))
        assert 0 < S.mean() < 1, "the test point must open some gates and close others"
    else:
        k = keep_count(gate.config.keep_ratio, b.shape[1])
        assert (S.sum(axis=-1) == k).all()
        kept_min = np.where(S == 1, s, np.inf).min(axis=-1)
        dropped_max = np.where(S == 0, s, -np.inf).max(axis=-1)
        assert (kept_min >= dropped_max).all()  # the kept tokens are the best-scoring ones


@pytest.mark.parametrize("name, fields", VARIANT_CASES)
def test_backward_is_the_straight_through_derivative(name, fields):
    b0, d0 = _inputs(1)
    gate = _gate(name, **fields)
    config = gate.config
    b, d = mt.Tensor(b0.copy(), requires_grad=True), mt.Tensor(d0.copy(), requires_grad=True)
    out = gate(b, d)
    v = np.random.default_rng(2).normal(size=out.shape)
    out.backward(v)
    w0 = gate.router_weight.data.copy() if config.score == "router" else None
    tau0 = float(gate.tau.data) if gate.tau is not None else None
    s0 = _np_score(config, b0, d0, w0, b0)
    H0 = gate.last_S.data.copy()
    t = tau0 if tau0 is not None else top_k_step(mt.Tensor(s0), config.keep_ratio)[1]

    def f(bb, dd, tt, ww):
        if config.grad_through_ratio or config.score == "router":
            s = _np_score(config, bb, dd, ww, b0)
        else:
            s = s0  # no gradient through the score
        thr, thr0 = (tt, tau0) if tau0 is not None else (t, t)
        S = H0 + _sigmoid((s - thr) / T_SIG) - _sigmoid((s0 - thr0) / T_SIG)
        return float(np.sum(v * (bb + S[..., None] * dd)))

    args = [b0, d0, tau0, w0]

    def numeric(i):
        """Central differences of the smooth twin ``f`` in its ``i``-th argument, element by element."""
        x = np.asarray(args[i], dtype=np.float64)

        def f_i(t):
            return mt.Tensor(np.asarray(f(*[t.data if k == i else a for k, a in enumerate(args)])))

        g = np.zeros_like(x)
        for j in np.ndindex(x.shape):
            e = np.zeros_like(x)
            e[j] = 1.0
            g[j] = central_difference(f_i, [x], [e], np.ones(()))
        return g

    np.testing.assert_allclose(b.grad, numeric(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d.grad, numeric(1), rtol=1e-5, atol=1e-7)
    if tau0 is not None:
        np.testing.assert_allclose(gate.tau.grad, numeric(2), rtol=1e-5, atol=1e-7)
    if w0 is not None:
        np.testing.assert_allclose(gate.router_weight.grad, numeric(3), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["paper", "seq-ratio", "router"])
def test_variant_equals_the_readable_reference(name):
    """``reference_gate`` (``H + phi - stop_gradient(phi)``) on the same score gives the same output and gradients."""
    b0, d0 = _inputs(4)
    grads = []
    for use_reference in (False, True):
        gate = _gate(name)
        b, d = mt.Tensor(b0.copy(), requires_grad=True), mt.Tensor(d0.copy(), requires_grad=True)
        if use_reference:
            out, _ = reference_gate(b, d, gate.score(b, d), gate.tau, "sigmoid", T_SIG)
        else:
            out = gate(b, d)
        out.backward(np.random.default_rng(5).normal(size=out.shape))
        params = [gate.tau.grad] + ([gate.router_weight.grad] if name == "router" else [])
        grads.append((out.data, b.grad, d.grad, *params))
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_sequence_ratio_is_one_where_a_sequence_is_uniform_and_averages_one():
    r = mt.Tensor(np.array([[0.0, 0.0, 0.0], [0.2, 0.4, 0.6]]))
    s = sequence_ratio(r, EPS).data
    np.testing.assert_allclose(s[0], 1.0)
    np.testing.assert_allclose(s[1].mean(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(s[1], np.array([0.5, 1.0, 1.5]), rtol=1e-5)


def test_router_starts_open_and_learns_which_tokens_to_close():
    """With ``w = 0`` every score is 1 (all open); a penalty on the open gates moves ``w``
    against the tokens' directions, weighted by the surrogate."""
    b0, d0 = _inputs(6)
    gate = TokenGate(GateConfig.variant("router", temperature=0.5), dtype=np.float64, channels=4)
    out = gate(mt.Tensor(b0), mt.Tensor(d0))
    assert (gate.last_S.data == 1).all() and np.array_equal(out.data, b0 + d0)
    gate.last_S.sum().backward()
    u = b0 / (np.linalg.norm(b0, axis=-1, keepdims=True) + 1e-6)
    phi = _sigmoid(2.0) * (1 - _sigmoid(2.0)) / 0.5  # phi'(1 - 0) at T = 0.5
    np.testing.assert_allclose(gate.router_weight.grad, phi * u.sum(axis=(0, 1)), rtol=1e-6)


def test_top_k_keeps_ceil_k_T_and_breaks_ties_towards_earlier_tokens():
    s = mt.Tensor(np.array([[0.5, 0.5, 0.5, 0.5], [4.0, 1.0, 3.0, 2.0]]))
    S, t = top_k_step(s, 0.5)
    np.testing.assert_array_equal(S.data, [[1, 1, 0, 0], [1, 0, 1, 0]])
    np.testing.assert_array_equal(t[:, 0], [0.5, 2.5])
    assert keep_count(0.3, 10) == 3 and keep_count(0.01, 10) == 1 and keep_count(1.0, 7) == 7
    assert keep_count(0.5, 10) == 5  # 0.5 * 10 is 5, whatever the float rounding


def _base(n_layer=2, seed=0):
    mt.manual_seed(seed)
    cfg = nn.TransformerConfig(n_classes=3, pooling="cls", n_layer=n_layer, n_embd=16, n_head=2, block_size=12)
    return nn.Transformer(cfg)


def _model(gate, n_layer=2, seed=0):
    return get_peft_model(_base(n_layer, seed), LoraConfig(r=2, target_modules=["q_proj", "k_proj", "fc1"],
                                                           init_lora_weights=False), gate=gate)


def test_density_bounds_push_each_layer_back_inside():
    """A layer above the ceiling gets a gradient that raises its threshold; one below the floor lowers it."""
    x = np.random.default_rng(0).integers(0, 15, size=(4, 10))
    for tau, floor, ceiling, sign in ((0.0, 0.0, 0.5, -1), (50.0, 0.5, 1.0, +1)):
        pm = _model(GateConfig(temperature=50.0, density_floor=floor, density_ceiling=ceiling, bounds_weight=1.0))
        for t in pm.thresholds():
            t.data = np.asarray(tau, dtype=t.dtype)
        pm(x)
        loss = pm.sparsity_loss()
        dens = [g.last_density for _, g in pm.gates()]
        gap = [max(floor - v, 0) ** 2 + max(v - ceiling, 0) ** 2 for v in dens]
        np.testing.assert_allclose(float(loss.data), np.mean(gap), rtol=1e-5)
        loss.backward()
        for t in pm.thresholds():
            assert np.sign(float(t.grad)) == sign  # gradient descent moves tau the other way


def test_bounds_off_inside_and_without_weight():
    x = np.random.default_rng(0).integers(0, 15, size=(4, 10))
    pm = _model(GateConfig(density_floor=0.0, density_ceiling=1.0, bounds_weight=1.0))
    pm(x)
    assert float(pm.sparsity_loss().data) == 0.0
    pm = _model(GateConfig(density_ceiling=0.1, bounds_weight=0.0))
    pm(x)
    assert float(pm.sparsity_loss().data) == 0.0


@pytest.mark.parametrize("name", GATE_VARIANTS)
def test_every_variant_trains_saves_and_loads(name, tmp_path):
    from minitspeft.peft import PeftModel
    from minitspeft.train import fit
    x = np.random.default_rng(1).integers(0, 15, size=(32, 10))
    y = x[:, 1] % 3
    pm = _model(GateConfig.variant(name, sparsity_weight=0.1, temperature=0.5))
    fit(pm, x, y, steps=4, batch_size=8, lr=1e-2, progress=False)
    pm.save_pretrained(str(tmp_path))
    again = PeftModel.from_pretrained(_base(), str(tmp_path))
    assert again.gate_config == pm.gate_config
    np.testing.assert_array_equal(again(x).data, pm.eval()(x).data)
    if name == "router":
        assert any(k.endswith("gate.router_weight") for k in again.adapter_state_dict())
    if name == "top-k":
        assert pm.thresholds() == [] and all(v["tau"] is None for v in pm.gate_stats().values())


def test_variant_names_and_errors():
    assert GATE_VARIANTS[0] == "paper" and {"seq-ratio", "top-k", "bounded", "router"} <= set(GATE_VARIANTS)
    assert GateConfig.variant("paper") == GateConfig()
    assert GateConfig.variant("top-k", keep_ratio=0.25).keep_ratio == 0.25
    with pytest.raises(ValueError, match="unknown gate variant 'nope'"):
        GateConfig.variant("nope")
    for bad in ({"keep_ratio": 0.0}, {"keep_ratio": 1.5}, {"score": "norm"}, {"density_floor": -0.1},
                {"density_floor": 0.6, "density_ceiling": 0.5}, {"bounds_weight": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GateConfig(**bad)
    with pytest.raises(ValueError, match="channels"):
        TokenGate(GateConfig(score="router"))
    with pytest.raises(ValueError, match="router_score"):
        from minitspeft.peft import router_score
        router_score(mt.Tensor(np.ones((2, 3))), Parameter(np.zeros(4)), EPS)
    assert token_ratio  # re-exported for the lessons
