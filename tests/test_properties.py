"""Property-based gradient tests: every primitive op and every fused op against two oracles.

For each op, Hypothesis draws shapes (1-3 dims of size 1-4, broadcastable
pairs with dims of 1 and missing leading dims), float64 inputs from the op's
domain (kept away from kinks and ties where the derivative is undefined),
sometimes in a non-contiguous memory layout, and a seed for the random
upstream gradient ``v``. ``strategies.check_vjp`` then compares
minitspeft's gradient of ``<v, f(x)>``

1. with a central difference of minitspeft's own forward in float64, per
   element and along a random direction (``rtol=1e-6``, ``atol=1e-8``), and
2. with the full gradient HIPS ``autograd`` computes for the same function
   written in ``autograd.numpy``, with the same ``v`` (``rtol=1e-10``,
   ``atol=1e-12``),

and the forward with the ``autograd.numpy`` one (``rtol=atol=1e-12``).
At ties (``max``, ``maximum``), where no derivative exists, only the
convention shared with autograd (the gradient is split evenly) is compared.

Profiles (``tests/conftest.py``): ``dev`` by default, ``ci`` under ``CI`` or
``HYPOTHESIS_PROFILE=ci``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

autograd = pytest.importorskip("autograd")
import autograd.numpy as anp
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from strategies import (
    away_from,
    broadcast_pair,
    broadcast_source,
    broadcast_triple,
    check_vjp,
    distinct_arrays,
    float_arrays,
    grid,
    magnitudes,
    reals,
    reduced_axes,
    reduction_axes,
    seeds,
    shapes,
)

import minitspeft as mt
from minitspeft import backend, ops
from minitspeft import functional as F
from minitspeft import reductions as R
from minitspeft.tensor import Tensor

# ------------------------------------------------------- elementwise binary

BINARY = {
    # name: (minitspeft op, autograd.numpy op, elements of a, elements of b)
    "add": (ops.add, anp.add, reals(), reals()),
    "sub": (ops.sub, anp.subtract, reals(), reals()),
    "mul": (ops.mul, anp.multiply, reals(), reals()),
    "div": (ops.div, anp.divide, reals(), magnitudes(0.5, 3.0)),
    # tensor exponent: a positive base, so d/db = a^b log a exists
    "pow": (ops.pow, anp.power, reals(0.5, 2.5), reals(-2.0, 2.0)),
    # a on the lattice 0.2 k, b on 0.2 k + 0.1: never a tie, |a - b| >= 0.1
    "maximum": (ops.maximum, anp.maximum, grid(), grid(offset=0.1)),
    "minimum": (ops.minimum, anp.minimum, grid(), grid(offset=0.1)),
}

OPERATORS = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "pow": lambda a, b: a ** b,
}


@pytest.mark.parametrize("name", list(BINARY))
@given(data=st.data(), shape_pair=broadcast_pair(), seed=seeds)
def test_binary_op_with_broadcasting(name, data, shape_pair, seed):
    op, ref, ea, eb = BINARY[name]
    if name in OPERATORS and data.draw(st.booleans(), label="use operator"):
        op = OPERATORS[name]
    a = data.draw(float_arrays(shape_pair[0], ea), label="a")
    b = data.draw(float_arrays(shape_pair[1], eb), label="b")
    check_vjp(op, ref, a, b, seed=seed)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
@given(data=st.data(), shape_pair=broadcast_pair(), seed=seeds)
def test_maximum_minimum_at_ties_split_the_gradient_like_autograd(name, data, shape_pair, seed):
    """Values from {-1, 0, 1}: many exact ties, where both libraries give each side half."""
    op, ref = getattr(ops, name), getattr(anp, name)
    few = st.sampled_from([-1.0, 0.0, 1.0])
    a = data.draw(float_arrays(shape_pair[0], few), label="a")
    b = data.draw(float_arrays(shape_pair[1], few), label="b")
    check_vjp(op, ref, a, b, seed=seed, numeric=False)


CONSTANT_CASES = {
    # name: (function of Tensor x and constant c, the same in autograd.numpy,
    #        elements of x, elements of c)
    "x+c": (lambda x, c: x + c, lambda x, c: x + c, reals(), reals()),
    "c+x": (lambda x, c: c + x, lambda x, c: c + x, reals(), reals()),
    "x-c": (lambda x, c: x - c, lambda x, c: x - c, reals(), reals()),
    "c-x": (lambda x, c: c - x, lambda x, c: c - x, reals(), reals()),
    "x*c": (lambda x, c: x * c, lambda x, c: x * c, reals(), reals()),
    "c*x": (lambda x, c: c * x, lambda x, c: c * x, reals(), reals()),
    "x/c": (lambda x, c: x / c, lambda x, c: x / c, reals(), magnitudes(0.5, 3.0)),
    "c/x": (lambda x, c: c / x, lambda x, c: c / x, magnitudes(0.5, 3.0), reals()),
    "x**c": (lambda x, c: x ** c, lambda x, c: x ** c, reals(0.5, 2.5),
             st.one_of(st.sampled_from([2, 3, 2.0, 3.0, 0, 1, -1, 0.5]), reals(-2.0, 2.0))),
    "c**x": (lambda x, c: c ** x, lambda x, c: c ** x, reals(-2.0, 2.0), reals(0.5, 2.5)),
    "pow(x,c)": (ops.pow, anp.power, reals(0.5, 2.5), reals(-2.0, 2.0)),
    # clamping against a constant: x and c on interleaved lattices, so never a tie
    "maximum(x,c)": (ops.maximum, anp.maximum, grid(), grid(offset=0.1)),
    "minimum(c,x)": (lambda x, c: ops.minimum(c, x), lambda x, c: anp.minimum(c, x), grid(), grid(offset=0.1)),
    "pow(c,x)": (ops.pow, lambda x, c: anp.power(c, x), reals(-2.0, 2.0), reals(0.5, 2.5)),
}


@pytest.mark.parametrize("name", list(CONSTANT_CASES))
@given(data=st.data(), shape_pair=broadcast_pair(), as_array=st.booleans(), seed=seeds)
def test_constant_operand_on_either_side(name, data, shape_pair, as_array, seed):
    """A Python number or a NumPy array (broadcast against x) as the other operand; only x gets a gradient."""
    fn, ref, ex, ec = CONSTANT_CASES[name]
    x = data.draw(float_arrays(shape_pair[0], ex), label="x")
    if as_array:
        c = data.draw(float_arrays(shape_pair[1], ec), label="c")
    else:
        c = data.draw(ec, label="c")
    if name == "pow(c,x)":
        check_vjp(lambda t: ops.pow(c, t), lambda a: ref(a, c), x, seed=seed)
    else:
        check_vjp(lambda t: fn(t, c), lambda a: ref(a, c), x, seed=seed)


@given(data=st.data(), shape_pair=broadcast_pair(), seed=seeds)
def test_pow_integer_exponent_tensor_with_a_negative_base(data, shape_pair, seed):
    """A frozen exponent Tensor of integers: the base may be negative; only the base needs a gradient."""
    a = data.draw(float_arrays(shape_pair[0], magnitudes(0.5, 2.0)), label="a")
    b = data.draw(float_arrays(shape_pair[1], st.sampled_from([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0])), label="b")
    check_vjp(lambda t: ops.pow(t, Tensor(b)), lambda x: anp.power(x, b), a, seed=seed)


# -------------------------------------------------------- elementwise unary

UNARY = {
    # name: (minitspeft op, autograd.numpy op, elements of the domain)
    "neg": (lambda x: -x, anp.negative, reals()),
    "neg_fn": (ops.neg, anp.negative, reals()),
    "exp": (lambda x: x.exp(), anp.exp, reals()),
    "log": (lambda x: x.log(), anp.log, reals(0.1, 5.0)),
    "sqrt": (lambda x: x.sqrt(), anp.sqrt, reals(0.1, 5.0)),
    "tanh": (lambda x: x.tanh(), anp.tanh, reals()),
    "sigmoid": (lambda x: x.sigmoid(), lambda x: 1.0 / (1.0 + anp.exp(-x)), reals(-6.0, 6.0)),
    "relu": (lambda x: x.relu(), lambda x: anp.maximum(x, 0.0), magnitudes(0.05, 3.0)),
    "abs": (lambda x: x.abs(), anp.abs, magnitudes(0.05, 3.0)),
}


@pytest.mark.parametrize("name", list(UNARY))
@given(data=st.data(), shape=shapes(), seed=seeds)
def test_unary_op(name, data, shape, seed):
    op, ref, elements = UNARY[name]
    x = data.draw(float_arrays(shape, elements), label="x")
    check_vjp(op, ref, x, seed=seed)


@given(data=st.data(), shape=shapes(), seed=seeds)
def test_clip(data, shape, seed):
    kind = data.draw(st.sampled_from(["both", "lo", "hi"]), label="bounds")
    lo = data.draw(reals(-2.0, 0.5), label="lo")
    hi = lo + data.draw(reals(0.3, 3.0), label="width")
    lo, hi = (lo if kind != "hi" else None), (hi if kind != "lo" else None)
    x = data.draw(float_arrays(shape, away_from((lo, hi), -4.0, 4.0, margin=0.05)), label="x")
    check_vjp(lambda t: ops.clip(t, lo, hi), lambda a: anp.clip(a, lo, hi), x, seed=seed)


# ------------------------------------------------------------- shape ops


def _factorizations(size: int, max_dims: int = 3):
    """Every shape of 1..max_dims dims whose sizes multiply to ``size``."""
    out = []
    for ndim in range(1, max_dims + 1):
        for dims in itertools.product(range(1, size + 1), repeat=ndim):
            if math.prod(dims) == size:
                out.append(dims)
    return out


@given(data=st.data(), shape=shapes(), seed=seeds)
def test_reshape(data, shape, seed):
    target = data.draw(st.sampled_from(_factorizations(math.prod(shape))), label="target")
    if data.draw(st.booleans(), label="use -1"):
        k = data.draw(st.integers(0, len(target) - 1), label="-1 at")
        target = target[:k] + (-1,) + target[k + 1:]
    x = data.draw(float_arrays(shape), label="x")
    as_method = data.draw(st.booleans(), label="method")
    fn = (lambda t: t.reshape(*target)) if as_method else (lambda t: ops.reshape(t, target))
    check_vjp(fn, lambda a: anp.reshape(a, target), x, seed=seed)


@given(data=st.data(), shape=shapes(), seed=seeds)
def test_transpose(data, shape, seed):
    ndim = len(shape)
    axes = data.draw(st.one_of(st.none(), st.permutations(range(ndim))), label="axes")
    if axes is not None:
        axes = tuple(ax - ndim if data.draw(st.booleans()) else ax for ax in axes)
    x = data.draw(float_arrays(shape), label="x")
    # autograd's transpose VJP mishandles negative axes: give it the non-negative ones
    ref_axes = None if axes is None else tuple(ax % ndim for ax in axes)
    check_vjp(lambda t: ops.transpose(t, axes), lambda a: anp.transpose(a, ref_axes), x, seed=seed)


@given(data=st.data(), shape=shapes(), seed=seeds)
def test_swapaxes(data, shape, seed):
    ndim = len(shape)
    a1 = data.draw(st.integers(-ndim, ndim - 1), label="axis1")
    a2 = data.draw(st.integers(-ndim, ndim - 1), label="axis2")
    x = data.draw(float_arrays(shape), label="x")
    check_vjp(lambda t: t.swapaxes(a1, a2), lambda a: anp.swapaxes(a, a1, a2), x, seed=seed)


@given(data=st.data(), target=shapes(), seed=seeds)
def test_broadcast_to(data, target, seed):
    source = data.draw(broadcast_source(target), label="source shape")
    x = data.draw(float_arrays(source), label="x")
    # autograd's broadcast_to cannot add leading dims; adding zeros broadcasts the same way
    check_vjp(lambda t: ops.broadcast_to(t, target), lambda a: anp.zeros(target) + a, x, seed=seed)


# --------------------------------------------------------------- getitem


@st.composite
def _slice_or_int(draw, n: int):
    if draw(st.booleans()):
        return draw(st.integers(-n, n - 1))
    bound = st.one_of(st.none(), st.integers(-n - 1, n + 1))
    return slice(draw(bound), draw(bound), draw(st.sampled_from([None, 1, 2, 3, -1, -2])))


@st.composite
def _int_array(draw, n: int, with_repeat: bool = True, shape=None):
    """Integer indices into an axis of length ``n`` (negative ones too), with at least one repeat."""
    shape = draw(shapes(min_dims=1, max_dims=2, max_side=4)) if shape is None else shape
    idx = draw(hnp.arrays(np.int64, shape, elements=st.integers(-n, n - 1)))
    if with_repeat and idx.size > 1:
        flat = idx.reshape(-1).copy()
        flat[-1] = flat[0]  # a repeated index: its gradients must add up
        idx = flat.reshape(shape)
    return idx


@st.composite
def indices(draw, shape: tuple):
    """An index for an array of ``shape``: basic (ints, slices, Ellipsis), integer arrays, or boolean masks."""
    ndim = len(shape)
    kinds = ["basic", "ellipsis", "int_array", "int_list", "bool_full", "bool_leading"]
    if ndim >= 2:
        kinds += ["int_array_on_axis_1", "paired_int_arrays", "bool_on_axis_1"]
    kind = draw(st.sampled_from(kinds))
    if kind == "basic":
        k = draw(st.integers(1, ndim))
        return tuple(draw(_slice_or_int(n)) for n in shape[:k])
    if kind == "ellipsis":
        return (Ellipsis, draw(_slice_or_int(shape[-1])))
    if kind == "int_array":
        return draw(_int_array(shape[0]))
    if kind == "int_list":
        return draw(_int_array(shape[0], shape=(draw(st.integers(1, 5)),))).tolist()
    if kind == "bool_full":
        return draw(hnp.arrays(np.bool_, shape))
    if kind == "bool_leading":
        k = draw(st.integers(1, ndim))
        return draw(hnp.arrays(np.bool_, shape[:k]))
    if kind == "int_array_on_axis_1":
        return (slice(None), draw(_int_array(shape[1])))
    if kind == "paired_int_arrays":
        pair = draw(broadcast_pair(min_dims=1, max_dims=2))
        return (draw(_int_array(shape[0], shape=pair[0])), draw(_int_array(shape[1], shape=pair[1])))
    return (slice(None), draw(hnp.arrays(np.bool_, (shape[1],))))  # bool_on_axis_1


@given(data=st.data(), shape=shapes(), seed=seeds)
def test_getitem(data, shape, seed):
    index = data.draw(indices(shape), label="index")
    x = data.draw(float_arrays(shape), label="x")
    check_vjp(lambda t: t[index], lambda a: a[index], x, seed=seed)


@given(data=st.data(), shape=shapes(), seed=seeds)
def test_getitem_with_tensor_indices(data, shape, seed):
    """Integer and boolean index Tensors behave like the arrays they hold."""
    if data.draw(st.booleans(), label="mask"):
        raw = data.draw(hnp.arrays(np.bool_, shape), label="mask")
    else:
        raw = data.draw(_int_array(shape[0]), label="ids")
    x = data.draw(float_arrays(shape), label="x")
    check_vjp(lambda t: t[Tensor(raw)], lambda a: a[raw], x, seed=seed)


# ----------------------------------------------------- concat, stack, where


@given(data=st.data(), shape=shapes(), seed=seeds)
def test_concat(data, shape, seed):
    ndim = len(shape)
    axis = data.draw(st.integers(-ndim, ndim - 1), label="axis")
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=4), label="sizes along axis")
    arrays = []
    for n in sizes:
        s = list(shape)
        s[axis] = n
        arrays.append(data.draw(float_arrays(tuple(s)), label="piece"))
    check_vjp(lambda *ts: mt.concat(list(ts), axis=axis), lambda *xs: anp.concatenate(list(xs), axis=axis),
              *arrays, seed=seed)


@given(data=st.data(), shape=shapes(), count=st.integers(1, 4), seed=seeds)
def test_stack(data, shape, count, seed):
    ndim = len(shape)
    axis = data.draw(st.integers(-ndim - 1, ndim), label="axis")
    arrays = [data.draw(float_arrays(shape), label="piece") for _ in range(count)]
    check_vjp(lambda *ts: mt.stack(list(ts), axis=axis), lambda *xs: anp.stack(list(xs), axis=axis),
              *arrays, seed=seed)


@given(data=st.data(), shape_triple=broadcast_triple(), cond_as_tensor=st.booleans(), seed=seeds)
def test_where(data, shape_triple, cond_as_tensor, seed):
    sc, sa, sb = shape_triple
    cond = data.draw(hnp.arrays(np.bool_, sc), label="condition")
    a = data.draw(float_arrays(sa), label="a")
    b = data.draw(float_arrays(sb), label="b")
    c = Tensor(cond) if cond_as_tensor else cond
    # autograd's where VJP does not sum over dims only the condition adds: broadcast a and b first
    full = np.broadcast_shapes(sc, sa, sb)
    check_vjp(lambda ta, tb: mt.where(c, ta, tb),
              lambda x, y: anp.where(cond, anp.zeros(full) + x, anp.zeros(full) + y), a, b, seed=seed)


# ---------------------------------------------------------------- matmul


@st.composite
def matmul_shapes(draw):
    """Shapes for every matmul form: 1-D @ 1-D, 1-D @ N-D, N-D @ 1-D, 2-D @ 2-D and batched with broadcast batch dims."""
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batch_a, batch_b = draw(broadcast_pair(min_dims=0, max_dims=2, max_side=3))
    a_1d, b_1d = draw(st.booleans()), draw(st.booleans())
    sa = (k,) if a_1d else (*batch_a, n, k)
    sb = (k,) if b_1d else (*batch_b, k, m)
    return sa, sb


@given(data=st.data(), shape_pair=matmul_shapes(), use_operator=st.booleans(), seed=seeds)
def test_matmul(data, shape_pair, use_operator, seed):
    a = data.draw(float_arrays(shape_pair[0]), label="a")
    b = data.draw(float_arrays(shape_pair[1]), label="b")
    op = (lambda x, y: x @ y) if use_operator else ops.matmul
    check_vjp(op, anp.matmul, a, b, seed=seed)


# ------------------------------------------------------------ reductions


@pytest.mark.parametrize("name", ["sum", "mean"])
@given(data=st.data(), shape=shapes(), keepdims=st.booleans(), seed=seeds)
def test_sum_and_mean(name, data, shape, keepdims, seed):
    axis = data.draw(reduction_axes(len(shape)), label="axis")
    x = data.draw(float_arrays(shape), label="x")
    op, ref = getattr(R, name), getattr(anp, name)
    check_vjp(lambda t: op(t, axis, keepdims), lambda a: ref(a, axis=axis, keepdims=keepdims), x, seed=seed)


@pytest.mark.parametrize("name", ["max", "min"])
@given(data=st.data(), shape=shapes(), keepdims=st.booleans(), seed=seeds)
def test_max_and_min_without_ties(name, data, shape, keepdims, seed):
    axis = data.draw(reduction_axes(len(shape)), label="axis")
    x = data.draw(distinct_arrays(shape), label="x")  # pairwise >= 0.1 apart: a unique extremum
    method = data.draw(st.booleans(), label="method")
    op = (lambda t: getattr(t, name)(axis, keepdims)) if method else (lambda t: getattr(R, name)(t, axis, keepdims))
    check_vjp(op, lambda a: getattr(anp, name)(a, axis=axis, keepdims=keepdims), x, seed=seed)


@pytest.mark.parametrize("name", ["max", "min"])
@given(data=st.data(), shape=shapes(), keepdims=st.booleans(), seed=seeds)
def test_max_and_min_at_ties_share_the_gradient_like_autograd(name, data, shape, keepdims, seed):
    axis = data.draw(reduction_axes(len(shape)), label="axis")
    x = data.draw(float_arrays(shape, st.sampled_from([-1.0, 0.0, 1.0])), label="x")
    check_vjp(lambda t: getattr(R, name)(t, axis, keepdims),
              lambda a: getattr(anp, name)(a, axis=axis, keepdims=keepdims), x, seed=seed, numeric=False)


@given(data=st.data(), shape=shapes(), keepdims=st.booleans(), correction=st.sampled_from([0, 1]), seed=seeds)
def test_var(data, shape, keepdims, correction, seed):
    axis = data.draw(reduction_axes(len(shape)), label="axis")
    x = data.draw(float_arrays(shape), label="x")
    count = math.prod(shape[ax] for ax in reduced_axes(axis, len(shape)))
    if count - correction <= 0:  # no degrees of freedom left: NaN with a warning, as NumPy and PyTorch
        with pytest.warns(RuntimeWarning, match="no degrees of freedom"):
            out = R.var(Tensor(x), axis, keepdims, correction)
        assert np.isnan(out.data).all()
        return
    check_vjp(lambda t: t.var(axis, keepdims, correction),
              lambda a: anp.var(a, axis=axis, ddof=correction, keepdims=keepdims), x, seed=seed)


def _norm_ref(a, axis, keepdims):
    return anp.sqrt(anp.sum(a * a, axis=axis, keepdims=keepdims))


@given(data=st.data(), shape=shapes(), keepdims=st.booleans(), seed=seeds)
def test_norm_of_nonzero_vectors(data, shape, keepdims, seed):
    axis = data.draw(reduction_axes(len(shape)), label="axis")
    x = data.draw(float_arrays(shape, magnitudes(0.5, 3.0)), label="x")  # every vector has norm >= 0.5
    method = data.draw(st.booleans(), label="method")
    op = (lambda t: t.norm(axis, keepdims)) if method else (lambda t: R.norm(t, axis, keepdims))
    check_vjp(op, lambda a: _norm_ref(a, axis, keepdims), x, seed=seed)


@given(data=st.data(), shape=shapes(), keepdims=st.booleans(), seed=seeds)
def test_norm_at_an_exact_zero_vector_has_a_finite_zero_gradient(data, shape, keepdims, seed):
    """Some reduced vectors are exactly zero: their norm is 0 and their gradient is 0 (not NaN);
    the other vectors get ``v x / ||x||``, the gradient autograd gives for nonzero vectors."""
    axis = data.draw(reduction_axes(len(shape)), label="axis")
    axes = reduced_axes(axis, len(shape))
    kept_shape = tuple(1 if i in axes else n for i, n in enumerate(shape))
    zero = data.draw(hnp.arrays(np.bool_, kept_shape), label="zero vectors")
    if data.draw(st.booleans(), label="all zero"):
        zero[...] = True
    x = data.draw(float_arrays(shape, magnitudes(0.5, 3.0)), label="x")
    x = np.where(zero, 0.0, x)

    t = Tensor(x, requires_grad=True)
    out = R.norm(t, axis, keepdims)
    expected = np.asarray(_norm_ref(x, axis, keepdims))
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)
    v = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(v)
    assert np.all(np.isfinite(t.grad)), t.grad
    zero_full = np.broadcast_to(zero, shape)
    np.testing.assert_array_equal(t.grad[zero_full], 0.0)

    n = np.sqrt(np.sum(x * x, axis=axes, keepdims=True))
    v_full = v if keepdims else np.expand_dims(v, axes)
    want = np.where(zero_full, 0.0, v_full * x / np.where(n > 0, n, 1.0))
    np.testing.assert_allclose(t.grad, want, rtol=1e-12, atol=1e-14)
    if not zero.any():
        check_vjp(lambda s: R.norm(s, axis, keepdims), lambda a: _norm_ref(a, axis, keepdims), x, seed=seed)


# ------------------------------------------------------------ fused ops


def _logsumexp(a, axis):
    return anp.log(anp.sum(anp.exp(a), axis=axis, keepdims=True))  # |a| <= 5: no overflow


@given(data=st.data(), shape=shapes(), seed=seeds)
def test_softmax(data, shape, seed):
    ndim = len(shape)
    axis = data.draw(st.integers(-ndim, ndim - 1), label="axis")
    x = data.draw(float_arrays(shape, reals(-5.0, 5.0)), label="x")
    check_vjp(lambda t: F.softmax(t, axis), lambda a: anp.exp(a - _logsumexp(a, axis)), x, seed=seed)


@given(data=st.data(), shape=shapes(), seed=seeds)
def test_log_softmax(data, shape, seed):
    ndim = len(shape)
    axis = data.draw(st.integers(-ndim, ndim - 1), label="axis")
    x = data.draw(float_arrays(shape, reals(-5.0, 5.0)), label="x")
    check_vjp(lambda t: F.log_softmax(t, axis), lambda a: a - _logsumexp(a, axis), x, seed=seed)


def _cross_entropy_ref(z, t, reduction, ignore_index, label_smoothing):
    """The documented loss: ``-sum_c q_c log softmax(z)_c`` with ``q = (1 - eps) onehot + eps / C``,
    zero at ignored targets; ``mean`` divides by the number of non-ignored targets (at least 1)."""
    n_classes = z.shape[-1]
    valid = t != ignore_index
    onehot = (np.where(valid, t, 0)[..., None] == np.arange(n_classes)).astype(np.float64)
    q = (1 - label_smoothing) * onehot + label_smoothing / n_classes
    losses = -anp.sum(q * (z - _logsumexp(z, -1)), axis=-1) * valid
    if reduction == "none":
        return losses
    if reduction == "sum":
        return anp.sum(losses)
    return anp.sum(losses) / max(int(valid.sum()), 1)


@given(data=st.data(), lead=shapes(min_dims=0, max_dims=2), n_classes=st.integers(1, 5),
       reduction=st.sampled_from(["mean", "sum", "none"]),
       label_smoothing=st.one_of(st.just(0.0), reals(0.0, 0.9)), seed=seeds)
def test_cross_entropy(data, lead, n_classes, reduction, label_smoothing, seed):
    ignore_index = data.draw(st.sampled_from([-100, -1, n_classes - 1]), label="ignore_index")
    classes = st.one_of(st.integers(0, n_classes - 1), st.just(ignore_index))
    targets = data.draw(hnp.arrays(np.int64, lead, elements=classes), label="targets")
    z = data.draw(float_arrays((*lead, n_classes), reals(-5.0, 5.0)), label="logits")
    t = Tensor(targets) if data.draw(st.booleans(), label="targets as Tensor") else targets
    check_vjp(lambda s: F.cross_entropy(s, t, reduction=reduction, ignore_index=ignore_index,
                                        label_smoothing=label_smoothing),
              lambda a: _cross_entropy_ref(a, targets, reduction, ignore_index, label_smoothing),
              z, seed=seed)


@given(data=st.data(), shape=shapes(), eps=st.sampled_from([1e-5, 1e-3, 0.5]),
       weight_kind=st.sampled_from(["none", "trained", "frozen"]), with_bias=st.booleans(), seed=seeds)
def test_layer_norm(data, shape, eps, weight_kind, with_bias, seed):
    C = shape[-1]
    x = data.draw(distinct_arrays(shape), label="x")  # no zero-variance rows of 2+ elements
    w = data.draw(float_arrays((C,)), label="weight")
    b = data.draw(float_arrays((C,)), label="bias")
    frozen_w = Tensor(w)

    def ref(xa, *params):
        mu = anp.mean(xa, axis=-1, keepdims=True)
        var = anp.mean((xa - mu) ** 2, axis=-1, keepdims=True)
        out = (xa - mu) / anp.sqrt(var + eps)
        params = list(params)
        if weight_kind == "trained":
            out = out * params.pop(0)
        elif weight_kind == "frozen":
            out = out * w
        if with_bias:
            out = out + params.pop(0)
        return out

    def fn(xt, *params):
        params = list(params)
        weight = params.pop(0) if weight_kind == "trained" else (frozen_w if weight_kind == "frozen" else None)
        bias = params.pop(0) if with_bias else None
        return F.layer_norm(xt, weight, bias, eps=eps)

    inputs = [x] + ([w] if weight_kind == "trained" else []) + ([b] if with_bias else [])
    check_vjp(fn, ref, *inputs, seed=seed)


_GELU_K = math.sqrt(2.0 / math.pi)


@given(data=st.data(), shape=shapes(), seed=seeds)
def test_gelu(data, shape, seed):
    x = data.draw(float_arrays(shape, reals(-4.0, 4.0)), label="x")
    check_vjp(F.gelu, lambda a: 0.5 * a * (1 + anp.tanh(_GELU_K * (a + 0.044715 * a ** 3))), x, seed=seed)


@given(data=st.data(), lead=shapes(min_dims=0, max_dims=2), n_in=st.integers(1, 4), n_out=st.integers(1, 4),
       with_bias=st.booleans(), seed=seeds)
def test_linear(data, lead, n_in, n_out, with_bias, seed):
    x = data.draw(float_arrays((*lead, n_in)), label="x")
    w = data.draw(float_arrays((n_out, n_in)), label="weight")
    if with_bias:
        b = data.draw(float_arrays((n_out,)), label="bias")
        check_vjp(F.linear, lambda xa, wa, ba: anp.matmul(xa, wa.T) + ba, x, w, b, seed=seed)
    else:
        check_vjp(F.linear, lambda xa, wa: anp.matmul(xa, wa.T), x, w, seed=seed)


def _dropout_with_fixed_mask(x, p, training, mask_seed, seed):
    """Reseeding before every call fixes the mask, so dropout is the linear map ``x * mask``."""
    saved_rng = backend.get_rng_state()
    try:
        def fn(t):
            backend.manual_seed(mask_seed)
            return F.dropout(t, p, training=training)

        mask = np.asarray(fn(Tensor(np.ones(x.shape))).data)
        if training and p > 0:
            scale = 1.0 / (1.0 - p)
            assert np.all((mask == 0.0) | np.isclose(mask, scale, rtol=1e-15, atol=0)), mask
        else:
            np.testing.assert_array_equal(mask, 1.0)
        check_vjp(fn, lambda a: a * mask, x, seed=seed)
    finally:
        backend.set_rng_state(saved_rng)  # leave the global generator as other tests expect it


@given(data=st.data(), shape=shapes(), p=reals(0.05, 0.9), mask_seed=st.integers(0, 2**16), seed=seeds)
def test_dropout_in_training_with_a_fixed_mask(data, shape, p, mask_seed, seed):
    x = data.draw(float_arrays(shape), label="x")
    _dropout_with_fixed_mask(x, p, True, mask_seed, seed)


@given(data=st.data(), shape=shapes(), p=st.one_of(st.just(0.0), reals(0.05, 0.9)), seed=seeds)
def test_dropout_is_the_identity_in_eval_or_at_p_0(data, shape, p, seed):
    x = data.draw(float_arrays(shape), label="x")
    training = data.draw(st.booleans(), label="training") if p == 0.0 else False
    _dropout_with_fixed_mask(x, p, training, 0, seed)


@given(data=st.data(), n=st.integers(1, 5), dim=st.integers(1, 4), ids_shape=shapes(max_dims=2),
       ids_as_tensor=st.booleans(), seed=seeds)
def test_embedding(data, n, dim, ids_shape, ids_as_tensor, seed):
    ids = data.draw(hnp.arrays(np.int64, ids_shape, elements=st.integers(0, n - 1)), label="ids")
    if ids.size > 1:
        flat = ids.reshape(-1).copy()
        flat[-1] = flat[0]  # a repeated id: its rows of g must add up
        ids = flat.reshape(ids_shape)
    w = data.draw(float_arrays((n, dim)), label="weight")
    i = Tensor(ids) if ids_as_tensor else ids
    check_vjp(lambda t: F.embedding(i, t), lambda a: a[ids], w, seed=seed)


# ------------------------------------------------------------ pinned cases
# Structural corner cases that a dozen random examples (the ``ci`` profile) may not
# reach, checked with the same two oracles on every run: permutations that are not
# their own inverse, reductions over non-leading axis subsets, logits in Fortran
# order with 3 dims, every matmul form, and the like.


def _normal(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def _distinct(shape, seed):
    n = math.prod(shape)
    return np.random.default_rng(seed).permutation(n).reshape(shape) * 0.1 - 1.0


def _seeded_dropout(t, p, mask_seed):
    saved_rng = backend.get_rng_state()
    try:
        backend.manual_seed(mask_seed)
        return F.dropout(t, p)
    finally:
        backend.set_rng_state(saved_rng)  # leave the global generator as other tests expect it


_CE_TARGETS = np.array([[0, 3, -100], [2, 2, 1]])

PINNED = {
    # name: (minitspeft function, autograd.numpy function, inputs)
    "transpose_3_cycle": (lambda t: ops.transpose(t, (1, 2, 0)), lambda a: anp.transpose(a, (1, 2, 0)),
                          [_normal((2, 3, 4), 0)]),
    "transpose_3_cycle_negative_axes": (lambda t: t.transpose(-1, 0, 1), lambda a: anp.transpose(a, (2, 0, 1)),
                                        [_normal((2, 3, 4), 1)]),
    "sum_axes_0_2": (lambda t: t.sum((0, 2)), lambda a: anp.sum(a, axis=(0, 2)), [_normal((2, 3, 4), 2)]),
    "sum_axes_1_2_square": (lambda t: t.sum((2, 1)), lambda a: anp.sum(a, axis=(1, 2)), [_normal((2, 3, 3), 3)]),
    "mean_axes_0_2_negative": (lambda t: t.mean((-1, 0)), lambda a: anp.mean(a, axis=(0, 2)),
                               [_normal((3, 2, 3), 4)]),
    "max_axes_0_2": (lambda t: t.max((0, 2)), lambda a: anp.max(a, axis=(0, 2)), [_distinct((2, 3, 4), 5)]),
    "min_axes_1_2_square": (lambda t: t.min((1, 2)), lambda a: anp.min(a, axis=(1, 2)), [_distinct((2, 3, 3), 6)]),
    "var_axes_1_2_unbiased": (lambda t: t.var((1, 2), correction=1), lambda a: anp.var(a, axis=(1, 2), ddof=1),
                              [_normal((2, 3, 3), 7)]),
    "norm_axes_0_2": (lambda t: t.norm((0, 2)), lambda a: _norm_ref(a, (0, 2), False), [_normal((3, 2, 3), 8)]),
    "cross_entropy_fortran_3d_logits": (
        lambda t: F.cross_entropy(t, _CE_TARGETS, label_smoothing=0.1),
        lambda a: _cross_entropy_ref(a, _CE_TARGETS, "mean", -100, 0.1),
        [np.asfortranarray(_normal((2, 3, 4), 9))]),
    "cross_entropy_strided_3d_logits_none": (
        lambda t: F.cross_entropy(t, _CE_TARGETS, reduction="none"),
        lambda a: _cross_entropy_ref(a, _CE_TARGETS, "none", -100, 0.0),
        [_normal((2, 3, 8), 10)[..., ::2]]),
    "softmax_fortran_axis_0": (lambda t: F.softmax(t, 0), lambda a: anp.exp(a - _logsumexp(a, 0)),
                               [np.asfortranarray(_normal((3, 2, 4), 11))]),
    "matmul_1d_1d": (ops.matmul, anp.matmul, [_normal((4,), 12), _normal((4,), 13)]),
    "matmul_1d_2d": (ops.matmul, anp.matmul, [_normal((4,), 14), _normal((4, 3), 15)]),
    "matmul_2d_1d": (ops.matmul, anp.matmul, [_normal((3, 4), 16), _normal((4,), 17)]),
    "matmul_1d_batched": (ops.matmul, anp.matmul, [_normal((4,), 18), _normal((2, 4, 3), 19)]),
    "matmul_batched_1d": (ops.matmul, anp.matmul, [_normal((2, 3, 4), 20), _normal((4,), 21)]),
    "matmul_broadcast_batches": (ops.matmul, anp.matmul, [_normal((2, 1, 3, 4), 22), _normal((3, 4, 2), 23)]),
    "matmul_fortran_operands": (ops.matmul, anp.matmul,
                                [np.asfortranarray(_normal((3, 4), 24)), np.asfortranarray(_normal((4, 2), 25))]),
    "getitem_paired_int_arrays_with_repeats": (
        lambda t: t[np.array([1, 1, 3, 1]), np.array([2, 2, 0, 2])],
        lambda a: a[np.array([1, 1, 3, 1]), np.array([2, 2, 0, 2])], [_normal((4, 5), 26)]),
    "getitem_bool_mask_on_axis_1": (lambda t: t[:, np.array([True, False, True])],
                                    lambda a: a[:, np.array([True, False, True])], [_normal((2, 3, 2), 27)]),
    "where_condition_adds_dims": (
        lambda ta, tb: mt.where(np.arange(24).reshape(2, 3, 4) % 3 == 0, ta, tb),
        lambda a, b: anp.where(np.arange(24).reshape(2, 3, 4) % 3 == 0, anp.zeros((2, 3, 4)) + a,
                               anp.zeros((2, 3, 4)) + b),
        [_normal((4,), 28), _normal((3, 1), 29)]),
    "maximum_broadcast_both_sides": (ops.maximum, anp.maximum,
                                     [_distinct((2, 1, 4), 30), _distinct((3, 1), 31) + 0.05]),
    "stack_negative_axis": (lambda *ts: mt.stack(list(ts), axis=-1), lambda *xs: anp.stack(list(xs), axis=-1),
                            [_normal((2, 3), 32), _normal((2, 3), 33), _normal((2, 3), 34)]),
    "concat_negative_axis": (lambda *ts: mt.concat(list(ts), axis=-2),
                             lambda *xs: anp.concatenate(list(xs), axis=-2),
                             [_normal((2, 1, 3), 35), _normal((2, 3, 3), 36)]),
    "layer_norm_3d": (lambda x, w, b: F.layer_norm(x, w, b),
                      lambda x, w, b: (x - anp.mean(x, -1, keepdims=True))
                      / anp.sqrt(anp.var(x, -1, keepdims=True) + 1e-5) * w + b,
                      [_normal((2, 3, 4), 37), _normal((4,), 38), _normal((4,), 39)]),
    "linear_3d": (F.linear, lambda x, w, b: anp.matmul(x, w.T) + b,
                  [_normal((2, 3, 4), 40), _normal((5, 4), 41), _normal((5,), 42)]),
    "dropout_half_seeded": (lambda t: _seeded_dropout(t, 0.5, 3),
                            lambda a: a * _seeded_dropout(Tensor(np.ones((3, 4))), 0.5, 3).numpy(),
                            [_normal((3, 4), 45)]),
    "embedding_2d_ids_with_repeats": (lambda w: F.embedding(np.array([[0, 2, 0], [1, 2, 2]]), w),
                                      lambda w: w[np.array([[0, 2, 0], [1, 2, 2]])], [_normal((4, 3), 46)]),
    "square_reuses_its_input": (lambda t: t ** 2, lambda a: a ** 2, [_normal((3, 2), 43)]),
    "diamond_graph": (lambda t: (t * 2.0 + t.exp()) * t, lambda a: (a * 2.0 + anp.exp(a)) * a,
                      [_normal((2, 3), 44)]),
}


@pytest.mark.parametrize("name", list(PINNED))
def test_pinned_corner_case(name):
    fn, ref, inputs = PINNED[name]
    check_vjp(fn, ref, *inputs, seed=len(name))
