"""Gradient checks and regression tests for the primitive ops and the Tensor engine.

Every op's backward rule is checked against central differences in float64
(``minitspeft.testing.check_grad``), and every forward against the NumPy expression it
stands for. Inputs are kept away from the points where an op has a kink
(relu, abs, clip, maximum), where a central difference would be meaningless.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import ops, reductions
from minitspeft.tensor import Tensor

from minitspeft.testing import check_grad


def _rng(seed=0):
    return np.random.default_rng(seed)


def _away(x, points=(0.0,), margin=0.1):
    """Move entries of ``x`` that lie within ``margin`` of a kink in ``points`` out of it."""
    x = np.array(x, dtype=np.float64)
    for p in points:
        near = np.abs(x - p) < margin
        x[near] = p + np.where(x[near] >= p, margin, -margin) * 2
    return x


def _forward(fn, *arrays):
    return np.asarray(fn(*[Tensor(a) for a in arrays]).data)


# --------------------------------------------------------------- helper sanity


def test_check_grad_catches_a_wrong_backward_rule():
    """The helper itself must fail on a rule that is wrong (here: d/dx x^2 taken as x)."""

    def bad_square(x):
        return Tensor.from_op(x.data * x.data, (x,), lambda g: (g * x.data,), "bad_square")

    with pytest.raises(AssertionError):
        check_grad(bad_square, _rng().standard_normal((3, 2)))


def test_check_grad_catches_a_rule_right_only_for_uniform_upstream():
    """A rule that ignores the upstream gradient's values is caught by the random projection."""

    def bad_double(x):
        return Tensor.from_op(2 * x.data, (x,), lambda g: (2 * np.ones_like(g) * g.mean(),), "bad_double")

    with pytest.raises(AssertionError):
        check_grad(bad_double, _rng().standard_normal(5))


# ------------------------------------------------------- elementwise binary ops

BINARY = {
    "add": (ops.add, np.add),
    "sub": (ops.sub, np.subtract),
    "mul": (ops.mul, np.multiply),
    "div": (ops.div, np.divide),
    "maximum": (ops.maximum, np.maximum),
    "minimum": (ops.minimum, np.minimum),
    "pow": (ops.pow, np.power),
    "add_operator": (lambda a, b: a + b, np.add),
    "sub_operator": (lambda a, b: a - b, np.subtract),
    "mul_operator": (lambda a, b: a * b, np.multiply),
    "div_operator": (lambda a, b: a / b, np.divide),
    "pow_operator": (lambda a, b: a ** b, np.power),
}

SHAPE_PAIRS = [
    ((3, 4), (3, 4)),
    ((3, 1), (1, 4)),
    ((4,), (2, 3, 4)),
    ((2, 3, 4), (4,)),
    ((2, 1, 4), (3, 1)),
    ((), (2, 3)),
    ((2, 3), ()),
    ((1,), (3, 1)),
]


def _binary_inputs(name, sa, sb, seed):
    rng = _rng(seed)
    a = rng.standard_normal(sa)
    b = rng.standard_normal(sb)
    if name.startswith("div"):
        b = np.sign(b + 1e-3) * rng.uniform(0.5, 2.0, sb)  # away from 0
    if name.startswith("pow"):
        a = rng.uniform(0.5, 2.0, sa)  # positive base: d/db = a^b log a is defined
    return a, b


@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=str)
@pytest.mark.parametrize("name", list(BINARY))
def test_binary_forward_and_gradient(name, shapes):
    op, ref = BINARY[name]
    a, b = _binary_inputs(name, *shapes, seed=len(name))
    np.testing.assert_allclose(_forward(op, a, b), ref(a, b), rtol=1e-14, atol=0)
    check_grad(op, a, b)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_minimum_split_gradient_evenly_at_ties(name):
    op = getattr(ops, name)
    a = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = Tensor(np.array([1.0, 0.0, 5.0]), requires_grad=True)
    op(a, b).backward(np.array([2.0, 4.0, 8.0]))
    if name == "maximum":
        np.testing.assert_array_equal(a.grad, [1.0, 4.0, 0.0])
        np.testing.assert_array_equal(b.grad, [1.0, 0.0, 8.0])
    else:
        np.testing.assert_array_equal(a.grad, [1.0, 0.0, 8.0])
        np.testing.assert_array_equal(b.grad, [1.0, 4.0, 0.0])


SCALAR_CASES = {
    # name: (function of one Tensor, the same in NumPy)
    "x+s": (lambda x: x + 0.1, lambda x: x + 0.1),
    "s+x": (lambda x: 0.1 + x, lambda x: 0.1 + x),
    "x-s": (lambda x: x - 0.1, lambda x: x - 0.1),
    "s-x": (lambda x: 0.1 - x, lambda x: 0.1 - x),
    "x*s": (lambda x: x * 0.1, lambda x: x * 0.1),
    "s*x": (lambda x: 0.1 * x, lambda x: 0.1 * x),
    "x/s": (lambda x: x / 0.1, lambda x: x / 0.1),
    "s/x": (lambda x: 0.1 / x, lambda x: 0.1 / x),
    "x**s": (lambda x: x ** 0.1, lambda x: x ** 0.1),
    "s**x": (lambda x: 0.1 ** x, lambda x: 0.1 ** x),
    "int_s**x": (lambda x: 2 ** x, lambda x: 2.0 ** x),
    "x+int": (lambda x: x + 3, lambda x: x + 3),
    "add(s,x)": (lambda x: ops.add(0.1, x), lambda x: 0.1 + x),
    "sub(s,x)": (lambda x: ops.sub(0.1, x), lambda x: 0.1 - x),
    "mul(s,x)": (lambda x: ops.mul(0.1, x), lambda x: 0.1 * x),
    "div(s,x)": (lambda x: ops.div(0.1, x), lambda x: 0.1 / x),
    "maximum(x,s)": (lambda x: ops.maximum(x, 0.1), lambda x: np.maximum(x, 0.1)),
    "maximum(s,x)": (lambda x: ops.maximum(0.1, x), lambda x: np.maximum(0.1, x)),
    "minimum(x,s)": (lambda x: ops.minimum(x, 0.1), lambda x: np.minimum(x, 0.1)),
    "minimum(s,x)": (lambda x: ops.minimum(0.1, x), lambda x: np.minimum(0.1, x)),
    "where(c,x,s)": (lambda x: ops.where(np.array([True, False, True, False]), x, 0.1),
                     lambda x: np.where(np.array([True, False, True, False]), x, 0.1)),
    "where(c,s,x)": (lambda x: ops.where(np.array([True, False, True, False]), 0.1, x),
                     lambda x: np.where(np.array([True, False, True, False]), 0.1, x)),
}


@pytest.mark.parametrize("name", list(SCALAR_CASES))
def test_python_scalar_operand_forward_and_gradient(name):
    """Scalars on either side, in float64: the forward is NumPy's to the last bit, the gradient checks."""
    fn, ref = SCALAR_CASES[name]
    x = np.array([0.03, 0.07, 0.15, 0.6])  # positive, on both sides of the scalar 0.1, off the kink
    out = fn(Tensor(x))
    assert out.dtype == np.float64
    np.testing.assert_allclose(np.asarray(out.data), ref(x), rtol=1e-15, atol=0)
    check_grad(fn, x)


# -------------------------------------------------------- elementwise unary ops

UNARY = {
    # name: (function, NumPy reference, input generator)
    "neg": (ops.neg, np.negative, lambda r: r.standard_normal((3, 4))),
    "neg_operator": (lambda x: -x, np.negative, lambda r: r.standard_normal((3, 4))),
    "exp": (ops.exp, np.exp, lambda r: r.standard_normal((3, 4))),
    "log": (ops.log, np.log, lambda r: r.uniform(0.2, 3.0, (3, 4))),
    "sqrt": (ops.sqrt, np.sqrt, lambda r: r.uniform(0.2, 3.0, (3, 4))),
    "tanh": (ops.tanh, np.tanh, lambda r: r.standard_normal((3, 4)) * 2),
    "sigmoid": (ops.sigmoid, lambda x: 1 / (1 + np.exp(-x)), lambda r: r.standard_normal((3, 4)) * 3),
    "relu": (ops.relu, lambda x: np.maximum(x, 0), lambda r: _away(r.standard_normal((3, 4)))),
    "abs": (ops.abs, np.abs, lambda r: _away(r.standard_normal((3, 4)))),
    "clip": (lambda x: ops.clip(x, -0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7),
             lambda r: _away(r.standard_normal((3, 4)) * 2, points=(-0.5, 0.7))),
    "clip_lo": (lambda x: ops.clip(x, -0.5), lambda x: np.clip(x, -0.5, None),
                lambda r: _away(r.standard_normal((3, 4)), points=(-0.5,))),
    "clip_hi": (lambda x: ops.clip(x, None, 0.3), lambda x: np.clip(x, None, 0.3),
                lambda r: _away(r.standard_normal((3, 4)), points=(0.3,))),
    "pow2": (lambda x: x ** 2, lambda x: x ** 2, lambda r: r.standard_normal((3, 4))),
    "pow3": (lambda x: x ** 3, lambda x: x ** 3, lambda r: r.standard_normal((3, 4))),
    "pow2.0": (lambda x: ops.pow(x, 2.0), lambda x: x ** 2, lambda r: r.standard_normal((3, 4))),
    "pow0.5": (lambda x: x ** 0.5, np.sqrt, lambda r: r.uniform(0.2, 3.0, (3, 4))),
    "pow-1.5": (lambda x: x ** -1.5, lambda x: x ** -1.5, lambda r: r.uniform(0.5, 3.0, (3, 4))),
    "method_exp_log": (lambda x: x.exp().log(), lambda x: x, lambda r: r.standard_normal((3, 4))),
    "method_sqrt_tanh": (lambda x: x.sqrt().tanh(), lambda x: np.tanh(np.sqrt(x)),
                         lambda r: r.uniform(0.2, 3.0, (3, 4))),
    "method_sigmoid_relu_abs": (lambda x: x.sigmoid() + x.relu() + x.abs(),
                                lambda x: 1 / (1 + np.exp(-x)) + np.maximum(x, 0) + np.abs(x),
                                lambda r: _away(r.standard_normal((3, 4)))),
}


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_forward_and_gradient(name):
    fn, ref, gen = UNARY[name]
    x = gen(_rng(len(name)))
    np.testing.assert_allclose(_forward(fn, x), ref(x), rtol=1e-13, atol=1e-15)
    check_grad(fn, x)


def test_clip_gradient_is_zero_where_clamped():
    x = Tensor(np.array([-2.0, -0.2, 0.4, 3.0]), requires_grad=True)
    ops.clip(x, -1.0, 1.0).backward(np.array([5.0, 6.0, 7.0, 8.0]))
    np.testing.assert_array_equal(x.grad, [0.0, 6.0, 7.0, 0.0])


def test_relu_and_abs_gradient_zero_at_zero():
    x = Tensor(np.array([0.0, 0.0]), requires_grad=True)
    (ops.relu(x) + ops.abs(x)).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0])


def test_sigmoid_forward_is_finite_for_large_inputs():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    with np.errstate(over="raise", invalid="raise"):
        y = ops.sigmoid(Tensor(x)).data
    np.testing.assert_allclose(y, [0.0, np.exp(-50.0) / (1 + np.exp(-50.0)), 0.5, 1 / (1 + np.exp(-50.0)), 1.0],
                               rtol=1e-15, atol=0)


# ------------------------------------------------------------------ reductions

AXES = [None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "var"])
def test_reduction_forward_and_gradient(name, axis, keepdims):
    x = _rng(3).standard_normal((2, 3, 4))
    np_axis = axis
    fn = lambda t: getattr(reductions, name)(t, axis, keepdims)  # noqa: E731
    method = lambda t: getattr(t, name)(axis=axis, keepdims=keepdims)  # noqa: E731
    expected = getattr(np, name)(x, axis=np_axis, keepdims=keepdims)
    got = _forward(fn, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(_forward(method, x), expected, rtol=1e-14, atol=1e-15)
    check_grad(fn, x)


def test_max_gradient_is_shared_among_ties():
    x = Tensor(np.array([[1.0, 3.0, 3.0, 2.0], [4.0, 4.0, 4.0, 0.0]]), requires_grad=True)
    x.max(axis=1).backward(np.array([1.0, 6.0]))
    np.testing.assert_allclose(x.grad, [[0.0, 0.5, 0.5, 0.0], [2.0, 2.0, 2.0, 0.0]])
    y = Tensor(np.array([5.0, 1.0, 5.0]), requires_grad=True)
    y.max().backward()
    np.testing.assert_allclose(y.grad, [0.5, 0.0, 0.5])


def test_mean_divides_by_the_count_of_reduced_elements_only():
    x = Tensor(np.ones((2, 3, 4)), requires_grad=True)
    x.mean(axis=(0, 2)).sum().backward()
    np.testing.assert_allclose(x.grad, np.full((2, 3, 4), 1.0 / 8.0))


# ------------------------------------------------------------------- shape ops

SHAPE_OPS = {
    "reshape_2d": (lambda x: ops.reshape(x, (4, 6)), lambda x: x.reshape(4, 6)),
    "reshape_flat": (lambda x: ops.reshape(x, (-1,)), lambda x: x.reshape(-1)),
    "reshape_method_varargs": (lambda x: x.reshape(6, 2, 2), lambda x: x.reshape(6, 2, 2)),
    "reshape_method_tuple": (lambda x: x.reshape((3, 8)), lambda x: x.reshape(3, 8)),
    "transpose_none": (lambda x: ops.transpose(x), lambda x: x.transpose()),
    "transpose_102": (lambda x: ops.transpose(x, (1, 0, 2)), lambda x: x.transpose(1, 0, 2)),
    "transpose_201": (lambda x: ops.transpose(x, (2, 0, 1)), lambda x: x.transpose(2, 0, 1)),
    "transpose_negative": (lambda x: ops.transpose(x, (-1, 0, -2)), lambda x: x.transpose(2, 0, 1)),
    "transpose_method": (lambda x: x.transpose(0, 2, 1), lambda x: x.transpose(0, 2, 1)),
    "T": (lambda x: x.T, lambda x: x.T),
    "swapaxes_02": (lambda x: ops.swapaxes(x, 0, 2), lambda x: np.swapaxes(x, 0, 2)),
    "swapaxes_negative": (lambda x: x.swapaxes(-1, -2), lambda x: np.swapaxes(x, -1, -2)),
    "broadcast_to_same_rank": (lambda x: ops.broadcast_to(x[:, :1, :], (2, 5, 4)),
                               lambda x: np.broadcast_to(x[:, :1, :], (2, 5, 4))),
    "broadcast_to_new_axes": (lambda x: ops.broadcast_to(x[0, 0], (3, 2, 4)),
                              lambda x: np.broadcast_to(x[0, 0], (3, 2, 4))),
    "broadcast_to_3x1": (lambda x: ops.broadcast_to(x[0, :, :1], (2, 3, 5)),
                         lambda x: np.broadcast_to(x[0, :, :1], (2, 3, 5))),
}


@pytest.mark.parametrize("name", list(SHAPE_OPS))
def test_shape_op_forward_and_gradient(name):
    fn, ref = SHAPE_OPS[name]
    x = _rng(4).standard_normal((2, 3, 4))
    np.testing.assert_array_equal(_forward(fn, x), ref(x))
    check_grad(fn, x)


_MASK = np.array([[True, False, True, True, False],
                  [False, False, True, False, True],
                  [True, True, False, False, False],
                  [False, True, True, True, True]])

GETITEM = {
    "int": 1,
    "negative_int": -1,
    "slice": slice(1, 3),
    "step_slice": (slice(None), slice(None, None, 2)),
    "reversed_slice": (slice(None, None, -1), slice(1, None)),
    "int_and_slice": (2, slice(1, 4)),
    "ellipsis": (Ellipsis, 2),
    "int_array_repeats": np.array([0, 2, 0, 0, 3]),
    "int_array_2d_repeats": np.array([[0, 1], [1, 1]]),
    "int_list_columns_repeats": (slice(None), [0, 0, 4, 4, 4]),
    "paired_int_arrays_repeats": (np.array([1, 1, 3, 1]), np.array([2, 2, 0, 2])),
    "negative_int_array": np.array([-1, -1, 0]),
    "bool_mask_2d": _MASK,
    "bool_mask_rows": np.array([True, False, True, True]),
    "bool_mask_columns": (slice(None), np.array([False, True, True, False, True])),
}


@pytest.mark.parametrize("name", list(GETITEM))
def test_getitem_forward_and_gradient(name):
    index = GETITEM[name]
    x = _rng(5).standard_normal((4, 5))
    fn = lambda t: t[index]  # noqa: E731
    np.testing.assert_array_equal(_forward(fn, x), x[index])
    check_grad(fn, x)


def test_getitem_repeated_indices_add_up():
    x = Tensor(np.zeros(4), requires_grad=True)
    x[np.array([1, 1, 1, 3])].backward(np.array([1.0, 2.0, 4.0, 8.0]))
    np.testing.assert_array_equal(x.grad, [0.0, 7.0, 0.0, 8.0])


def test_getitem_accepts_tensor_indices():
    x = _rng(6).standard_normal((4, 5))
    idx = Tensor(np.array([3, 0, 3]))
    mask = Tensor(_MASK)
    np.testing.assert_array_equal(_forward(lambda t: t[idx], x), x[[3, 0, 3]])
    check_grad(lambda t: t[idx], x)
    check_grad(lambda t: t[mask], x)
    check_grad(lambda t: t[idx, Tensor(np.array([1, 1, 4]))], x)


def test_getitem_out_of_range_raises_index_error_naming_the_shape():
    x = Tensor(np.zeros((2, 3)))
    with pytest.raises(IndexError, match=r"\(2, 3\)"):
        x[5]


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_forward_and_gradient(axis):
    rng = _rng(7)
    shapes = {0: [(1, 3), (2, 3), (3, 3)], 1: [(2, 1), (2, 4), (2, 2)], -1: [(2, 2), (2, 3), (2, 1)]}[axis]
    arrays = [rng.standard_normal(s) for s in shapes]
    fn = lambda *ts: ops.concat(list(ts), axis=axis)  # noqa: E731
    np.testing.assert_array_equal(_forward(fn, *arrays), np.concatenate(arrays, axis=axis))
    check_grad(fn, *arrays)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_stack_forward_and_gradient(axis):
    rng = _rng(8)
    arrays = [rng.standard_normal((2, 3)) for _ in range(3)]
    fn = lambda *ts: ops.stack(list(ts), axis=axis)  # noqa: E731
    np.testing.assert_array_equal(_forward(fn, *arrays), np.stack(arrays, axis=axis))
    check_grad(fn, *arrays)


def test_concat_and_stack_reject_mismatched_shapes():
    a, b = Tensor(np.zeros((2, 3))), Tensor(np.zeros((2, 4)))
    with pytest.raises(ValueError):
        ops.concat([a, b], axis=0)
    with pytest.raises(ValueError):
        ops.stack([a, b])


@pytest.mark.parametrize("shapes", [
    ((3, 4), (3, 4), (3, 4)),
    ((3, 1), (4,), ()),
    ((4,), (3, 1), (3, 4)),
    ((2, 1, 4), (3, 1), (1, 4)),
], ids=str)
def test_where_forward_and_gradient(shapes):
    sc, sa, sb = shapes
    rng = _rng(9)
    cond = rng.random(sc) > 0.4
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    fn = lambda ta, tb: ops.where(cond, ta, tb)  # noqa: E731
    np.testing.assert_array_equal(_forward(fn, a, b), np.where(cond, a, b))
    check_grad(fn, a, b)
    check_grad(lambda ta, tb: ops.where(Tensor(cond), ta, tb), a, b)


# ----------------------------------------------------------------------- matmul

MATMUL_SHAPES = [
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((4,), (4,)),
    ((3, 4), (4, 5)),
    ((2, 3, 4), (2, 4, 5)),
    ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)),
    ((1, 3, 4), (2, 4, 5)),
    ((4,), (2, 4, 5)),
    ((2, 3, 4), (4,)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_forward_and_gradient(shapes):
    rng = _rng(10)
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    np.testing.assert_allclose(_forward(ops.matmul, a, b), a @ b, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(_forward(lambda x, y: x @ y, a, b), a @ b, rtol=1e-14, atol=1e-14)
    check_grad(ops.matmul, a, b)


def test_matmul_with_a_numpy_array_on_either_side():
    rng = _rng(11)
    a, w = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    check_grad(lambda t: t @ w, a)
    check_grad(lambda t: a @ t, w)


# ------------------------------------------------------------ error messages


@pytest.mark.parametrize("sa, sb", [((3, 4), (5, 6)), ((2, 3, 4), (3, 4, 5)), ((4,), (3,)), ((2, 3), (4,))])
def test_matmul_shape_mismatch_raises_value_error_naming_both_shapes(sa, sb):
    with pytest.raises(ValueError) as info:
        ops.matmul(Tensor(np.zeros(sa)), Tensor(np.zeros(sb)))
    assert str(sa) in str(info.value) and str(sb) in str(info.value)


@pytest.mark.parametrize("op", [ops.add, ops.sub, ops.mul, ops.div, ops.maximum, ops.pow])
def test_broadcast_mismatch_raises_value_error_naming_both_shapes(op):
    sa, sb = (3, 4), (5,)
    with pytest.raises(ValueError) as info:
        op(Tensor(np.ones(sa)), Tensor(np.ones(sb)))
    assert str(sa) in str(info.value) and str(sb) in str(info.value)


def test_broadcast_to_and_reshape_mismatch_raise_value_error():
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        ops.broadcast_to(Tensor(np.ones((3, 4))), (3, 5))
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        ops.reshape(Tensor(np.ones((3, 4))), (5, 2))


# ------------------------------------------------------- engine regression tests


def test_node_used_on_several_paths_receives_the_sum():
    x = Tensor(np.array([0.5, -1.5, 2.0]), requires_grad=True)
    h = x * 2.0                       # used three times below
    z = (h * h + h + ops.exp(h)).sum()  # dz/dx = 2 * (2h + 1 + e^h)
    z.backward()
    hv = 2.0 * x.data
    np.testing.assert_allclose(x.grad, 2.0 * (2.0 * hv + 1.0 + np.exp(hv)), rtol=1e-14)

    y = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (y + y + y).sum().backward()
    np.testing.assert_array_equal(y.grad, [3.0, 3.0])


def test_in_place_accumulation_never_writes_into_an_array_another_node_holds():
    """backward() adds a node's third and later gradients in place, into the sum it made itself. Here
    ``add`` hands one upstream array to both parents, ``reshape`` hands on views of it, and ``h``
    collects six contributions: a sum written into a shared array would change the other gradients."""

    def fn(x):
        h = x * 1.0
        a = h + h  # both parents get the same upstream array
        b = a.reshape(4).reshape(2, 2) + h + a  # views of a's gradient
        return a * 3.0 + b * b + h * h.sum()

    check_grad(fn, np.array([[1.0, -2.0], [0.5, 3.0]]))


def test_diamond_graph_gradient():
    """Two branches from one node rejoin: checked numerically."""

    def fn(x):
        h = ops.tanh(x)
        left = (h * 3.0).exp()
        right = h.sum(axis=0, keepdims=True) * h
        return left / (1.0 + right * right)

    check_grad(fn, _rng(12).standard_normal((3, 2)))


def test_repeated_backward_accumulates_into_leaf_grad():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    w = Tensor(np.array([0.5, 0.25, 2.0]), requires_grad=True)
    loss = (x * x * w).sum()
    loss.backward()
    first_x, first_w = x.grad.copy(), w.grad.copy()
    np.testing.assert_allclose(first_x, 2 * x.data * w.data)
    np.testing.assert_allclose(first_w, x.data ** 2)
    loss.backward()  # the graph is kept; the same gradients are added again
    np.testing.assert_allclose(x.grad, 2 * first_x)
    np.testing.assert_allclose(w.grad, 2 * first_w)
    # a different graph adds into the same leaf too
    (x * 10.0).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * first_x + 10.0)
    x.grad = None
    (x * 10.0).sum().backward()
    np.testing.assert_allclose(x.grad, np.full(3, 10.0))


def test_leaf_grad_is_an_independent_writable_array():
    """The first gradient is copied, not the (possibly read-only broadcast) upstream array."""
    x = Tensor(np.zeros((2, 3)), requires_grad=True)
    x.sum().backward()
    x.grad += 1.0  # must not raise (broadcast views are read-only)
    np.testing.assert_array_equal(x.grad, np.full((2, 3), 2.0))
    y = Tensor(np.ones(3), requires_grad=True)
    g = np.array([1.0, 2.0, 3.0])
    y.backward(g)
    y.grad *= 0
    np.testing.assert_array_equal(g, [1.0, 2.0, 3.0])


def test_intermediate_grad_is_none_unless_retained():
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    h = x * 3.0
    k = h + 1.0
    (k * k).sum().backward()
    assert h.grad is None and k.grad is None
    assert not h.is_leaf and x.is_leaf

    x2 = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    h2 = x2 * 3.0
    h2.retain_grad()
    k2 = h2 + 1.0
    (k2 * k2).sum().backward()
    np.testing.assert_allclose(h2.grad, 2 * (h2.data + 1.0))
    np.testing.assert_allclose(x2.grad, 3 * h2.grad)
    assert k2.grad is None


def test_retain_grad_on_a_tensor_without_grad_raises():
    with pytest.raises(RuntimeError):
        Tensor(np.ones(2)).retain_grad()


def test_long_chain_backpropagates_without_recursion_error():
    n = 100_000
    assert n > sys.getrecursionlimit()
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    c = 1.0 + 1.0 / n
    for _ in range(n):
        y = y * c
    y.backward()
    np.testing.assert_allclose(x.grad, c ** n, rtol=1e-9)  # (1 + 1/n)^n, about e


def test_backward_on_non_scalar_needs_a_gradient():
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    y = x * 2.0
    with pytest.raises(RuntimeError):
        y.backward()
    with pytest.raises(ValueError):
        y.backward(np.ones(3))
    y.backward(np.ones((2, 2)))
    np.testing.assert_array_equal(x.grad, np.full((2, 2), 2.0))
    # a one-element tensor of any rank takes the implicit gradient 1
    z = Tensor(np.ones((1, 1)), requires_grad=True)
    (z * 5.0).backward()
    np.testing.assert_array_equal(z.grad, [[5.0]])


def test_backward_on_a_tensor_without_graph_raises():
    with pytest.raises(RuntimeError):
        (Tensor(np.ones(2)) * 2.0).sum().backward()


@pytest.mark.parametrize("data", [[1, 2, 3], np.arange(3), np.array([True, False]), 7])
def test_integer_and_bool_tensors_cannot_require_grad(data):
    with pytest.raises(TypeError):
        Tensor(data, requires_grad=True)
    t = Tensor(data)
    with pytest.raises(TypeError):
        t.requires_grad_()
    assert not t.requires_grad


def test_requires_grad_cannot_change_on_non_leaf():
    y = Tensor(np.ones(2), requires_grad=True) * 2.0
    with pytest.raises(RuntimeError):
        y.requires_grad_(False)


# ------------------------------------------------------------------- dtypes

F32_CASES = {
    "affine": lambda x: x * 2.0 + 1,
    "scalar_left": lambda x: (2.0 - x) / 3.0 + 0.5 * x,
    "rdiv": lambda x: 1.5 / (x + 3.0),
    "pow2": lambda x: x ** 2,
    "pow3": lambda x: x ** 3,
    "pow_half": lambda x: (x + 3.0) ** 0.5,
    "pow_float": lambda x: (x + 3.0) ** 1.7,
    "rpow": lambda x: 2.0 ** x,
    "mean": lambda x: x.mean(axis=0),
    "max": lambda x: x.max(axis=1, keepdims=True) * 0.3,
    "maximum_scalar": lambda x: ops.maximum(x, 0.25) + ops.maximum(0.25, x),
    "minimum_scalar": lambda x: ops.minimum(x, 0.25) + ops.minimum(0.25, x),
    "where_scalar": lambda x: ops.where(x.data > 0, x, 0.5) + ops.where(x.data > 0, 0.5, x),
    "clip": lambda x: ops.clip(x, -0.5, 0.5),
    "unary_chain": lambda x: ops.sigmoid(ops.tanh(x).exp()).log().abs().relu() + ops.sqrt(x * x + 1.0),
    "getitem": lambda x: x[np.array([0, 0, 1])] * 1e-3,
    "matmul": lambda x: x @ Tensor(np.ones((3, 2), np.float32)),
    "concat": lambda x: ops.concat([x, x * 0.5], axis=0),
    "stack": lambda x: ops.stack([x, 1.0 - x], axis=-1),
}


@pytest.mark.parametrize("name", list(F32_CASES))
def test_float32_stays_float32_in_data_and_grad(name):
    fn = F32_CASES[name]
    x = Tensor(np.array([[0.3, -1.2, 2.0], [0.7, 0.1, -0.4]], dtype=np.float32), requires_grad=True)
    out = fn(x)
    assert out.dtype == np.float32, f"forward promoted to {out.dtype}"
    out.backward(np.ones(out.shape, dtype=np.float32))
    assert x.grad is not None and x.grad.dtype == np.float32, f"grad dtype {None if x.grad is None else x.grad.dtype}"


def test_float32_affine_example_from_the_brief():
    x = Tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    y = (x * 2.0 + 1).sum()
    assert y.dtype == np.float32 and y.data.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, np.array([2.0, 2.0], dtype=np.float32))


def test_float_lists_default_to_float32():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.array([1.0, 2.0])).dtype == np.float64


def test_gradient_has_the_dtype_of_its_tensor_when_dtypes_mix():
    """tensor.py: 'Gradients have the dtype of their tensor' - also for a float32 leaf in a float64 graph."""
    x32 = Tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    y64 = Tensor(np.array([3.0, 4.0]), requires_grad=True)
    (x32 * y64).sum().backward()
    assert y64.grad.dtype == np.float64
    assert x32.grad.dtype == np.float32


def test_float64_array_operand_does_not_promote_float32():
    """ops.py: 'Python scalars and arrays ... never promote a float32 tensor (they are cast to its dtype first)'."""
    x = Tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    y = x * np.array([0.5, 0.25]) + np.array(1.0)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


# ------------------------------------------------------------------ no_grad


def test_no_grad_context_manager_records_no_graph():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    assert mt.is_grad_enabled()
    with mt.no_grad():
        assert not mt.is_grad_enabled()
        y = (x * 2.0).exp().sum()
    assert mt.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf and y._parents == ()
    with pytest.raises(RuntimeError):
        y.backward()
    # the graph built after the block works again
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])


def test_no_grad_restores_state_after_an_exception_and_nests():
    with pytest.raises(KeyError):
        with mt.no_grad():
            raise KeyError("boom")
    assert mt.is_grad_enabled()
    x = Tensor(np.array([1.0]), requires_grad=True)
    with mt.no_grad():
        with mt.no_grad():
            pass
        assert not mt.is_grad_enabled()
        with mt.enable_grad():
            z = x * 3.0
        assert not mt.is_grad_enabled()
    assert z.requires_grad
    z.backward()
    np.testing.assert_array_equal(x.grad, [3.0])


def test_no_grad_as_decorator():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    seen = []

    @mt.no_grad()
    def evaluate(t):
        """Docstring kept."""
        seen.append(mt.is_grad_enabled())
        return t * t

    y = evaluate(x)
    assert seen == [False]
    assert mt.is_grad_enabled()
    assert not y.requires_grad and y._parents == ()
    assert evaluate.__name__ == "evaluate" and evaluate.__doc__ == "Docstring kept."
    np.testing.assert_array_equal(y.data, [1.0, 4.0])


# ----------------------------------------------------------- frozen inputs

FROZEN_BINARY = {
    "add": ops.add, "sub": ops.sub, "mul": ops.mul, "div": ops.div, "pow": ops.pow,
    "maximum": ops.maximum, "matmul": ops.matmul,
    "where": lambda a, b: ops.where(np.array([[True, False, True], [False, True, True]]), a, b),
}


@pytest.mark.parametrize("frozen_side", [0, 1])
@pytest.mark.parametrize("name", list(FROZEN_BINARY))
def test_frozen_input_gets_no_gradient(name, frozen_side):
    op = FROZEN_BINARY[name]
    rng = _rng(13)
    if name == "matmul":
        arrays = [rng.standard_normal((2, 3)), rng.standard_normal((3, 3))]
    else:
        arrays = [rng.uniform(0.5, 2.0, (2, 3)), rng.uniform(0.5, 2.0, (2, 3))]
    tensors = [Tensor(a, requires_grad=(i != frozen_side)) for i, a in enumerate(arrays)]
    out = op(*tensors)
    assert out.requires_grad
    grads = out._backward(mt.backend.xp.ones(out.shape))
    assert grads[frozen_side] is None, "the backward rule computed a gradient for a frozen input"
    assert grads[1 - frozen_side] is not None
    out.backward(np.ones(out.shape))
    assert tensors[frozen_side].grad is None
    live = tensors[1 - frozen_side]
    ref = [Tensor(a, requires_grad=True) for a in arrays]
    op(*ref).backward(np.ones(out.shape))
    np.testing.assert_allclose(live.grad, ref[1 - frozen_side].grad)


def test_all_frozen_inputs_record_no_graph():
    a, b = Tensor(np.ones(3)), Tensor(np.ones(3))
    out = ops.exp(a * b + 1.0)
    assert not out.requires_grad and out._parents == () and out._backward is None


def test_frozen_branch_in_a_larger_graph():
    w = Tensor(np.array([[1.0, 2.0], [3.0, 4.0]]))  # frozen
    x = Tensor(np.array([0.5, -0.5]), requires_grad=True)
    h = ops.tanh(w @ x)
    (h * w.sum(axis=0)).sum().backward()
    assert w.grad is None
    assert x.grad is not None


def test_no_grad_is_per_thread():
    import threading

    seen = {}
    entered, release = threading.Event(), threading.Event()

    def other():
        with mt.no_grad():
            entered.set()
            release.wait(5)
            seen["other"] = mt.is_grad_enabled()

    t = threading.Thread(target=other)
    t.start()
    entered.wait(5)
    x = Tensor(np.ones(2), requires_grad=True)
    seen["main"] = (x * 2.0).requires_grad  # the other thread's no_grad must not leak here
    release.set()
    t.join()
    assert seen == {"main": True, "other": False}


# ------------------------------------------------------- the extension API


def test_from_op_names_the_op_when_a_rule_returns_the_wrong_count_or_shape():
    x = Tensor(_rng().standard_normal(3), requires_grad=True)
    two = Tensor.from_op(x.data * 2, (x,), lambda g: (g, g), "two_grads")
    with pytest.raises(RuntimeError, match=r"'two_grads'.*2 gradients for 1 inputs"):
        two.sum().backward()
    flat = Tensor.from_op(x.data * 2, (x,), lambda g: (g.sum(keepdims=True),), "flat")
    with pytest.raises(RuntimeError, match=r"'flat'.*input 0 has shape \(1,\)"):
        flat.sum().backward()
    assert x.grad is None and two.op == "two_grads" and x.op == ""


def test_attach_methods_refuses_to_replace_the_engine():
    from minitspeft.tensor import attach_methods

    with pytest.raises(RuntimeError, match="backward"):
        attach_methods({"backward": lambda self: None})
    assert Tensor.backward.__module__ == "minitspeft.tensor"


def test_tensor_module_imports_no_op_module():
    """The engine depends one way: tensor.py names no op module, the op modules attach themselves."""
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(sys.modules["minitspeft.tensor"].__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert imported <= {"__future__", None, "grad_mode"}, imported
    assert Tensor.__add__ is ops.add and Tensor.sum is reductions.sum.__wrapped__  # methods skip the type check


def test_enable_grad_works_as_a_decorator_inside_no_grad():
    @mt.enable_grad()
    def record(t):
        return t * 2

    x = Tensor(np.ones(2), requires_grad=True)
    with mt.no_grad():
        assert record(x).requires_grad
        assert not (x * 2).requires_grad


def test_check_grad_refuses_non_float64_and_catches_in_place_changes_and_a_wrong_oracle():
    pytest.importorskip("autograd")
    import autograd.numpy as anp

    with pytest.raises(TypeError, match="float64"):
        check_grad(lambda t: t * 2, np.ones(3, np.float32))

    def sneaky(t):
        t.data *= 1.0 + 1e-3  # an op that changes its input's array in place
        return t * 2

    x = _rng().standard_normal(3)
    grads, v = check_grad(lambda t: t.tanh(), x, oracle=anp.tanh)
    np.testing.assert_allclose(grads[0], v * (1 - np.tanh(x) ** 2), rtol=1e-12)
    with pytest.raises(AssertionError, match="oracle"):
        check_grad(lambda t: t.tanh(), x, oracle=anp.sin)
    with pytest.raises(AssertionError):
        check_grad(sneaky, x)


def test_one_no_grad_object_entered_twice_restores_grad_mode():
    cm = mt.no_grad()
    with cm:
        with cm:
            assert not mt.is_grad_enabled()
        assert not mt.is_grad_enabled()
    assert mt.is_grad_enabled()


def test_a_nan_norm_keeps_a_nan_gradient():
    x = Tensor(np.array([np.nan, 1.0]), requires_grad=True)
    x.norm().backward()
    assert np.isnan(x.grad).all()
