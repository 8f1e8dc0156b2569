"""Gradient checks for the fused ops of ``minitspeft.functional``.

Each fused op is checked three ways in float64:

1. its backward against central differences (``minitspeft.testing.check_grad``);
2. its forward and gradient against the same function composed from the
   primitive ops in ``ops.py`` (whose own rules ``test_ops.py`` checks);
3. its forward against an independent NumPy reference where one is natural
   (``np.logaddexp.reduce`` for the log-sum-exp, the tanh formula for GELU).

Large-logit tests use magnitudes 1e3 and 1e4, where an unshifted
``exp`` overflows to inf.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import backend
from minitspeft import functional as F
from minitspeft.functional import reference as FR
from minitspeft.tensor import Tensor

from minitspeft.testing import check_grad


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _keep_host_rng():
    """Tests here reseed the library's host generator; give the previous one back afterwards."""
    saved = backend.get_rng_state()
    yield
    backend.set_rng_state(saved)


def _compare_to_composite(fused, composite, *arrays, seed=0, rtol=1e-12, atol=1e-13):
    """Forward and gradient (random upstream) of ``fused`` equal those of ``composite``."""
    v = None
    results = []
    for fn in (fused, composite):
        leaves = [Tensor(a.copy(), requires_grad=True) for a in arrays]
        out = fn(*leaves)
        if v is None:
            v = _rng(seed + 100).standard_normal(out.shape)
        out.backward(v)
        results.append((np.asarray(out.data), [leaf.grad for leaf in leaves]))
    (out_f, grads_f), (out_c, grads_c) = results
    assert out_f.shape == out_c.shape
    np.testing.assert_allclose(out_f, out_c, rtol=rtol, atol=atol, err_msg="forward")
    for i, (gf, gc) in enumerate(zip(grads_f, grads_c)):
        np.testing.assert_allclose(gf, gc, rtol=rtol, atol=atol, err_msg=f"gradient of input {i}")


# ------------------------------------------------------------ references
# the composed versions live in the package (minitspeft.functional.reference)


def np_logsumexp(x, axis=-1):
    return np.logaddexp.reduce(x, axis=axis, keepdims=True)


# ---------------------------------------------------------------- softmax


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_gradient_and_composite(axis):
    x = _rng(1).standard_normal((3, 4, 5))
    fn = lambda t: F.softmax(t, axis=axis)  # noqa: E731
    check_grad(fn, x)
    _compare_to_composite(fn, lambda t: FR.softmax(t, axis=axis), x)
    np.testing.assert_allclose(F.softmax(Tensor(x), axis=axis).data, np.exp(x - np_logsumexp(x, axis)), rtol=1e-13)


@pytest.mark.parametrize("axis", [-1, 0, 2])
def test_log_softmax_gradient_and_composite(axis):
    x = _rng(2).standard_normal((3, 4, 5))
    fn = lambda t: F.log_softmax(t, axis=axis)  # noqa: E731
    check_grad(fn, x)
    _compare_to_composite(fn, lambda t: FR.log_softmax(t, axis=axis), x)
    np.testing.assert_allclose(F.log_softmax(Tensor(x), axis=axis).data, x - np_logsumexp(x, axis), rtol=1e-13)


@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_softmax_and_log_softmax_exact_for_large_logits(scale):
    x = _rng(3).standard_normal((4, 6)) * scale
    x[0, :2] = scale  # a tied maximum
    x[1] = -scale     # a whole row of equal, very negative logits
    ref_logp = x - np_logsumexp(x)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = F.softmax(Tensor(x)).data
        logp = F.log_softmax(Tensor(x)).data
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(logp))
    np.testing.assert_allclose(logp, ref_logp, rtol=1e-14, atol=1e-14 * scale)
    np.testing.assert_allclose(y, np.exp(ref_logp), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(y[1], 1.0 / 6.0, rtol=1e-14)

    # gradients are finite and follow the closed forms
    g = _rng(4).standard_normal(x.shape)
    xs = Tensor(x, requires_grad=True)
    F.softmax(xs).backward(g)
    p = np.exp(ref_logp)
    np.testing.assert_allclose(xs.grad, p * (g - (g * p).sum(-1, keepdims=True)), rtol=1e-10, atol=1e-14)
    xl = Tensor(x, requires_grad=True)
    F.log_softmax(xl).backward(g)
    np.testing.assert_allclose(xl.grad, g - p * g.sum(-1, keepdims=True), rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------- cross-entropy

CE_CASES = {
    "2d": ((5, 4), [0, 3, 1, 3, 2], -100),
    "2d_ignored": ((5, 4), [0, -100, 1, -100, 2], -100),
    "3d": ((2, 3, 4), [[0, 1, 2], [3, 3, 0]], -100),
    "3d_ignored": ((2, 3, 4), [[0, -100, 2], [3, 3, -100]], -100),
    "custom_ignore_index": ((6, 3), [0, 1, 2, 1, 1, 0], 1),
    "1d": ((4,), 2, -100),
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", list(CE_CASES))
def test_cross_entropy_gradient_and_composite(case, reduction):
    shape, targets, ignore = CE_CASES[case]
    targets = np.asarray(targets)
    x = _rng(5).standard_normal(shape)
    fn = lambda t: F.cross_entropy(t, targets, reduction=reduction, ignore_index=ignore)  # noqa: E731
    check_grad(fn, x)
    _compare_to_composite(fn, lambda t: FR.cross_entropy(t, targets, reduction, ignore), x)


def test_cross_entropy_matches_numpy_reference_and_ignores_targets():
    x = _rng(6).standard_normal((5, 4))
    t = np.array([2, -100, 0, 3, -100])
    logp = x - np_logsumexp(x)
    per = np.array([-logp[i, t[i]] if t[i] != -100 else 0.0 for i in range(5)])
    np.testing.assert_allclose(F.cross_entropy(Tensor(x), t, reduction="none").data, per, rtol=1e-14)
    np.testing.assert_allclose(F.cross_entropy(Tensor(x), t, reduction="sum").data, per.sum(), rtol=1e-14)
    np.testing.assert_allclose(F.cross_entropy(Tensor(x), t).data, per.sum() / 3, rtol=1e-14)  # mean over 3 valid

    xt = Tensor(x, requires_grad=True)
    F.cross_entropy(xt, Tensor(t)).backward()
    expected = np.exp(logp)
    expected[np.arange(5), np.where(t >= 0, t, 0)] -= 1
    expected[t == -100] = 0.0
    np.testing.assert_allclose(xt.grad, expected / 3, rtol=1e-12, atol=1e-15)


def test_cross_entropy_with_every_target_ignored_is_zero_with_zero_gradient():
    x = Tensor(_rng(7).standard_normal((3, 4)), requires_grad=True)
    loss = F.cross_entropy(x, np.full(3, -100))
    assert float(loss.data) == 0.0
    loss.backward()
    np.testing.assert_array_equal(x.grad, np.zeros((3, 4)))


@pytest.mark.parametrize("perm", ["swapaxes", "transpose2d"])
def test_cross_entropy_on_non_contiguous_logits(perm):
    """Logits that are a transposed view (as after a swapaxes in a model) must give the same gradient."""
    rng = _rng(8)
    if perm == "swapaxes":
        z = rng.standard_normal((3, 2, 4))  # (T, B, C), used as (B, T, C)
        t = np.array([[0, 1, 2], [3, 0, 1]])
        fn = lambda a: F.cross_entropy(a.swapaxes(0, 1), t, reduction="sum")  # noqa: E731
        comp = lambda a: FR.cross_entropy(a.swapaxes(0, 1), t, "sum")  # noqa: E731
    else:
        z = rng.standard_normal((4, 5))  # (C, N), used as (N, C)
        t = np.array([0, 1, 2, 3, 3])
        fn = lambda a: F.cross_entropy(a.T, t, reduction="sum")  # noqa: E731
        comp = lambda a: FR.cross_entropy(a.T, t, "sum")  # noqa: E731
    check_grad(fn, z)
    _compare_to_composite(fn, comp, z)


@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_cross_entropy_exact_for_large_logits(scale):
    x = _rng(9).standard_normal((5, 4)) * scale
    t = np.array([0, 1, 2, 3, np.argmax(x[4])])
    logp = x - np_logsumexp(x)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        losses = F.cross_entropy(Tensor(x), t, reduction="none").data
    assert np.all(np.isfinite(losses))
    np.testing.assert_allclose(losses, -logp[np.arange(5), t], rtol=1e-14, atol=1e-14 * scale)
    xt = Tensor(x, requires_grad=True)
    F.cross_entropy(xt, t).backward()
    expected = np.exp(logp)
    expected[np.arange(5), t] -= 1
    assert np.all(np.isfinite(xt.grad))
    np.testing.assert_allclose(xt.grad, expected / 5, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("targets", [
    np.array([0, 4, 1]),           # == n_classes
    np.array([0, 9, 1]),           # > n_classes
    np.array([0, -1, 1]),          # negative, not the ignore index
    np.array([-5, 0, 1]),
    np.array([0.0, 1.0, 2.0]),     # float targets
    np.array([0.0, 1.0, 2.0], dtype=np.float32),
    np.array([True, False, True]),  # bool is not an integer class id
    np.array([0, 1]),              # wrong shape
    np.array([[0, 1, 2]]),         # wrong rank
], ids=lambda t: f"{t.dtype}{t.tolist()}")
def test_cross_entropy_rejects_bad_targets(targets):
    with pytest.raises(ValueError):
        F.cross_entropy(Tensor(np.zeros((3, 4)), requires_grad=True), targets)


def test_cross_entropy_rejects_unknown_reduction():
    with pytest.raises(ValueError):
        F.cross_entropy(Tensor(np.zeros((3, 4))), np.array([0, 1, 2]), reduction="avg")


# ------------------------------------------------------------- layer norm

LN_CASES = {
    "weight_and_bias": (True, True),
    "weight_only": (True, False),
    "bias_only": (False, True),
    "neither": (False, False),
}


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 5)], ids=str)
@pytest.mark.parametrize("case", list(LN_CASES))
def test_layer_norm_gradient_and_composite(case, shape):
    has_w, has_b = LN_CASES[case]
    rng = _rng(10)
    C = shape[-1]
    arrays = [rng.standard_normal(shape) * 2 + 0.5]
    if has_w:
        arrays.append(rng.uniform(0.5, 2.0, C) * np.sign(rng.standard_normal(C)))  # not all ones
    if has_b:
        arrays.append(rng.standard_normal(C))

    def unpack(ts):
        x = ts[0]
        w = ts[1] if has_w else None
        b = ts[-1] if has_b else None
        return x, w, b

    fn = lambda *ts: F.layer_norm(*unpack(ts))  # noqa: E731
    comp = lambda *ts: FR.layer_norm(*unpack(ts))  # noqa: E731
    check_grad(fn, *arrays)
    _compare_to_composite(fn, comp, *arrays)


def test_layer_norm_forward_matches_numpy():
    rng = _rng(11)
    x, w, b = rng.standard_normal((3, 7)), rng.standard_normal(7), rng.standard_normal(7)
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(F.layer_norm(Tensor(x), Tensor(w), Tensor(b)).data, expected, rtol=1e-12, atol=1e-14)


def test_layer_norm_after_a_trainable_linear_map():
    """LayerNorm(x @ W + c) with learnable W, c, gamma, beta and a random upstream gradient.

    With an all-ones upstream gradient and gamma = 1 the input gradient of a
    layer norm is exactly zero, which would hide a wrong rule; check_grad
    draws a random one and gamma is random.
    """
    rng = _rng(12)
    x = rng.standard_normal((4, 3))
    W = rng.standard_normal((3, 5))
    c = rng.standard_normal(5)
    gamma = rng.uniform(0.5, 1.5, 5)
    beta = rng.standard_normal(5)
    fn = lambda x_, W_, c_, g_, b_: F.layer_norm(x_ @ W_ + c_, g_, b_)  # noqa: E731
    comp = lambda x_, W_, c_, g_, b_: FR.layer_norm(x_ @ W_ + c_, g_, b_)  # noqa: E731
    grads, _ = check_grad(fn, x, W, c, gamma, beta)
    assert np.abs(grads[1]).max() > 1e-3  # the weight really receives a gradient
    _compare_to_composite(fn, comp, x, W, c, gamma, beta)


def test_layer_norm_frozen_affine_parameters_get_no_gradient():
    rng = _rng(13)
    x = Tensor(rng.standard_normal((2, 4)), requires_grad=True)
    w, b = Tensor(rng.standard_normal(4)), Tensor(rng.standard_normal(4))
    out = F.layer_norm(x, w, b)
    grads = out._backward(backend.xp.ones(out.shape))
    assert grads[1] is None and grads[2] is None
    out.backward(rng.standard_normal(out.shape))
    assert w.grad is None and b.grad is None and x.grad is not None


def test_layer_norm_rejects_wrong_parameter_shape():
    with pytest.raises(ValueError):
        F.layer_norm(Tensor(np.zeros((2, 4))), Tensor(np.ones(3)), None)


# ------------------------------------------------------------------ GELU


def test_gelu_forward_matches_tanh_formula_and_gradient():
    x = np.concatenate([_rng(14).standard_normal(20) * 3, [0.0, -6.0, 6.0, 1e-3]])
    k = np.sqrt(2.0 / np.pi)
    expected = 0.5 * x * (1.0 + np.tanh(k * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(F.gelu(Tensor(x)).data, expected, rtol=1e-14, atol=1e-16)
    check_grad(F.gelu, x.reshape(4, 6))
    _compare_to_composite(F.gelu, FR.gelu, x.reshape(4, 6))


def test_gelu_is_close_to_the_exact_erf_form():
    x = np.linspace(-5, 5, 41)
    exact = 0.5 * x * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x]))
    np.testing.assert_allclose(F.gelu(Tensor(x)).data, exact, atol=1e-3)


# ---------------------------------------------------------------- linear


@pytest.mark.parametrize("x_shape", [(3, 4), (2, 3, 4), (4,)], ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_gradient_and_composite(x_shape, with_bias):
    rng = _rng(15)
    arrays = [rng.standard_normal(x_shape), rng.standard_normal((5, 4))]
    if with_bias:
        arrays.append(rng.standard_normal(5))
    fn = lambda *ts: F.linear(*ts)  # noqa: E731

    out = F.linear(*[Tensor(a) for a in arrays])
    expected = arrays[0] @ arrays[1].T + (arrays[2] if with_bias else 0.0)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.data, expected, rtol=1e-13, atol=1e-14)
    check_grad(fn, *arrays)
    _compare_to_composite(fn, FR.linear, *arrays)


def test_linear_frozen_weight_gets_no_gradient_and_shape_errors():
    rng = _rng(16)
    x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w, b = Tensor(rng.standard_normal((5, 4))), Tensor(rng.standard_normal(5))
    out = F.linear(x, w, b)
    grads = out._backward(backend.xp.ones(out.shape))
    assert grads[1] is None and grads[2] is None
    out.sum().backward()
    assert w.grad is None and b.grad is None
    np.testing.assert_allclose(x.grad, np.ones((3, 5)) @ w.data)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        F.linear(x, Tensor(np.zeros((5, 3))))


# ------------------------------------------------------------- embedding


def test_embedding_forward_gradient_and_composite_with_repeated_ids():
    rng = _rng(17)
    W = rng.standard_normal((6, 3))
    ids = np.array([[0, 2, 2], [5, 0, 2]])
    fn = lambda w: F.embedding(ids, w)  # noqa: E731
    np.testing.assert_array_equal(F.embedding(ids, Tensor(W)).data, W[ids])
    grads, _ = check_grad(fn, W)
    _compare_to_composite(fn, lambda w: FR.embedding(ids, w), W)
    np.testing.assert_array_equal(grads[0][[1, 3, 4]], 0.0)  # unused rows get nothing

    # repeated ids add up: row 2 is used three times
    w = Tensor(W, requires_grad=True)
    F.embedding(Tensor(ids), w).backward(np.ones((2, 3, 3)))
    np.testing.assert_array_equal(w.grad[:, 0], [2.0, 0.0, 3.0, 0.0, 0.0, 1.0])


@pytest.mark.parametrize("ids", [np.array([0, -1]), np.array([6]), np.array([[1, 7]]), np.array([0.0, 1.0])],
                         ids=lambda a: f"{a.dtype}{a.tolist()}")
def test_embedding_rejects_bad_ids(ids):
    with pytest.raises(ValueError):
        F.embedding(ids, Tensor(np.zeros((6, 3)), requires_grad=True))


# --------------------------------------------------------------- dropout


def test_dropout_training_scales_kept_elements_and_gradient_is_the_mask():
    mt.manual_seed(123)
    p = 0.3
    x_np = _rng(18).uniform(0.5, 1.5, (100, 100))
    x = Tensor(x_np, requires_grad=True)
    out = F.dropout(x, p, training=True)
    y = np.asarray(out.data)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x_np[kept] / (1 - p), rtol=1e-15)
    assert abs((~kept).mean() - p) < 0.03  # about p of the elements are dropped (std 0.005)
    g = _rng(19).standard_normal(y.shape)
    out.backward(g)
    mask = kept / (1 - p)
    np.testing.assert_allclose(x.grad, g * mask, rtol=1e-15)

    # same as multiplying by the mask as a constant Tensor, in forward and gradient
    x2 = Tensor(x_np, requires_grad=True)
    out2 = x2 * Tensor(mask)
    out2.backward(g)
    np.testing.assert_allclose(out2.data, y, rtol=1e-15)
    np.testing.assert_allclose(x2.grad, x.grad, rtol=1e-15)


def test_dropout_mask_follows_the_seed():
    x = Tensor(np.ones((20, 20)))
    mt.manual_seed(7)
    a = F.dropout(x, 0.5).data
    mt.manual_seed(7)
    b = F.dropout(x, 0.5).data
    c = F.dropout(x, 0.5).data
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


def test_dropout_eval_and_p_zero_are_identity():
    x = Tensor(_rng(20).standard_normal((4, 5)), requires_grad=True)
    for out in (F.dropout(x, 0.5, training=False), F.dropout(x, 0.0, training=True)):
        np.testing.assert_array_equal(out.data, x.data)
        x.grad = None
        g = _rng(21).standard_normal((4, 5))
        out.backward(g)
        np.testing.assert_array_equal(x.grad, g)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError):
        F.dropout(Tensor(np.ones(3)), p)


# ------------------------------------------------------------------ dtypes

F32_FUSED = {
    "softmax": lambda x, r: F.softmax(x),
    "log_softmax": lambda x, r: F.log_softmax(x, axis=0),
    "cross_entropy": lambda x, r: F.cross_entropy(x, np.array([0, 3, -100])),
    "layer_norm": lambda x, r: F.layer_norm(x, Tensor(r.standard_normal(4).astype(np.float32)),
                                            Tensor(r.standard_normal(4).astype(np.float32))),
    "gelu": lambda x, r: F.gelu(x),
    "linear": lambda x, r: F.linear(x, Tensor(r.standard_normal((2, 4)).astype(np.float32)),
                                    Tensor(np.zeros(2, np.float32))),
    "dropout": lambda x, r: F.dropout(x, 0.25),
    "embedding": lambda x, r: F.embedding(np.array([2, 0, 2]), x),
}


@pytest.mark.parametrize("name", list(F32_FUSED))
def test_fused_ops_keep_float32(name):
    rng = _rng(22)
    x = Tensor(rng.standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    out = F32_FUSED[name](x, rng)
    assert out.dtype == np.float32
    out.backward(np.ones(out.shape, np.float32))
    assert x.grad.dtype == np.float32


def test_reference_cross_entropy_with_label_smoothing_and_dropout_match_the_fused_ops():
    """The references the package ships agree with the fused ops on the options the cases above skip."""
    x = _rng(23).standard_normal((5, 4))
    t = np.array([0, 3, -100, 1, 2])
    for smoothing in (0.0, 0.2):
        _compare_to_composite(lambda z: F.cross_entropy(z, t, label_smoothing=smoothing),
                              lambda z: FR.cross_entropy(z, t, label_smoothing=smoothing), x)
    backend.manual_seed(5)
    fused = F.dropout(Tensor(x), 0.3).data
    backend.manual_seed(5)
    composed = FR.dropout(Tensor(x), 0.3).data  # the same draw from the host generator
    assert (fused == 0).sum() > 0
    np.testing.assert_allclose(composed, fused, rtol=1e-15)


def test_the_issue_examples_at_large_magnitude_give_the_right_answer_in_float32():
    """layer_norm of [1e30, -1e30, 0, 5] used to return zeros with a zero gradient; gelu's gradient was NaN
    past ~1.8e19. Both now match a float64 computation of the same numbers."""
    x = np.array([[1e30, -1e30, 0.0, 5.0]], np.float32)
    t = Tensor(x, requires_grad=True)
    out = F.layer_norm(t, None, None)
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean()) / np.sqrt(x64.var() + 1e-5)
    np.testing.assert_allclose(out.data, want, rtol=1e-6)
    v = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    out.backward(v)
    assert np.all(np.isfinite(t.grad)) and np.abs(t.grad).max() > 0  # tiny (1e-30 scale) but not lost
    g = Tensor(np.array([2e19, -2e19, 3e38, -3e38], np.float32), requires_grad=True)
    F.gelu(g).sum().backward()
    np.testing.assert_array_equal(g.grad, [1.0, 0.0, 1.0, 0.0])


@pytest.mark.parametrize("shape, axis", [((3,), 0), ((3,), -1), ((2, 3), 1), ((2, 3), 0), ((2, 12000, 3), 2)])
def test_softmax_over_the_last_axis_named_either_way_and_across_blocks(shape, axis):
    """The last axis runs block by block (24,000 rows of 3 span three blocks); named by its positive
    index it must reduce over that axis, not over the blocks' own first axis."""
    x = np.random.default_rng(0).normal(size=shape)
    y = F.softmax(mt.Tensor(x), axis).data
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=axis, keepdims=True), rtol=1e-13)
