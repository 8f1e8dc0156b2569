"""The engine at its edges, each class of case tested as a class: derivatives at exceptional points,
every dtype a reduction accepts, 0-d tensors and their axes, empty reductions, and mixed indexing."""

from __future__ import annotations

import importlib.util
import itertools
import warnings

import numpy as np
import pytest

from minitspeft import Tensor
from minitspeft.testing import check_grad

BASES = [-2.0, -0.5, 0.0, 0.5, 2.0]
EXPONENTS = [-1.0, 0.0, 0.5, 1.0, 2.5]


def _pow_grads(x, y):
    a, b = Tensor(np.array([x]), requires_grad=True), Tensor(np.array([y]), requires_grad=True)
    with np.errstate(all="ignore"):  # the forward's own 0 ** -1 = inf
        (a ** b).sum().backward()
    return float(a.grad[0]), float(b.grad[0])


@pytest.mark.parametrize("x, y", [(0.0, 0.0), (2.0, 0.0), (-2.0, 0.0)])
def test_the_derivative_of_x_to_the_zero_is_zero_everywhere(x, y):
    assert _pow_grads(x, y)[0] == 0.0


@pytest.mark.parametrize("x, y, want", [(0.0, 2.0, 0.0), (0.0, 0.0, 0.0), (0.0, -1.0, -np.inf),
                                        (-2.0, 2.0, np.nan), (-0.5, 0.5, np.nan)])
def test_the_exponents_derivative_at_a_base_of_zero_or_below_is_pytorchs(x, y, want):
    """0 at a zero base with y >= 0, -inf with y < 0, NaN at a negative base: never a silent 0 there."""
    np.testing.assert_equal(_pow_grads(x, y)[1], want)


def test_pow_has_no_nan_gradient_where_the_true_derivative_is_finite():
    """Over a grid of bases and exponents, each gradient is NaN only where the derivative is undefined:
    d/dx at a negative base with a fractional exponent, d/dy at a negative base."""
    for x, y in itertools.product(BASES, EXPONENTS):
        ga, gb = _pow_grads(x, y)
        assert not np.isnan(ga) or (x < 0 and y != int(y)), (x, y, ga)
        assert not np.isnan(gb) or x < 0, (x, y, gb)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is an oracle here, if installed")
def test_pow_gradients_match_pytorch_over_the_grid():
    import torch

    for x, y in itertools.product(BASES, EXPONENTS):
        a = torch.tensor([x], dtype=torch.float64, requires_grad=True)
        b = torch.tensor([y], dtype=torch.float64, requires_grad=True)
        (a ** b).sum().backward()
        np.testing.assert_allclose(_pow_grads(x, y), (a.grad.item(), b.grad.item()), rtol=1e-12, err_msg=(x, y))


DTYPES = [np.bool_, np.uint8, np.int8, np.uint64, np.int64, np.float32, np.float64]


def _extremes(dtype, rng):
    if dtype is np.bool_:
        return rng.integers(0, 2, size=(4, 5)).astype(bool)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=(4, 5), dtype=dtype, endpoint=True)
        a[0, 0], a[1, 1] = info.min, info.max  # the values a negation would wrap
        return a
    return rng.normal(size=(4, 5)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["min", "max", "sum"])
@pytest.mark.parametrize("axis", [None, 0, 1, (0, 1)])
def test_reductions_are_exact_for_every_dtype(dtype, name, axis):
    a = _extremes(dtype, np.random.default_rng(0))
    got = getattr(Tensor(a), name)(axis=axis)
    want = getattr(np, name)(a, axis=axis)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.data, want)


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "var", "norm"])
@pytest.mark.parametrize("axis", [0, -1, (0,), (-1,)])
def test_a_0d_tensor_takes_axis_0_and_minus_1_as_pytorch_does(name, axis):
    t = Tensor(np.array(3.0), requires_grad=True)
    out = getattr(t, name)(axis=axis)
    want = {"var": 0.0}.get(name, 3.0)
    assert out.shape == () and out.item() == want
    out.backward()
    assert t.grad.shape == ()
    with pytest.raises(ValueError, match=f"{name}: axis 1 is out of range for a tensor with 0 dimensions"):
        getattr(t, name)(axis=1)


@pytest.mark.parametrize("name, correction", [("mean", None), ("var", 0), ("var", 1)])
def test_a_reduction_over_no_elements_is_nan_as_in_numpy(name, correction):
    a = np.zeros((0, 3))
    kwargs = {} if correction is None else {"correction": correction}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = getattr(np, name)(a, axis=0, **({} if correction is None else {"ddof": correction}))
    with pytest.warns(RuntimeWarning) if name == "var" else warnings.catch_warnings():
        got = getattr(Tensor(a), name)(axis=0, **kwargs)
    np.testing.assert_array_equal(got.data, want)
    assert np.isnan(got.data).all() and got.shape == (3,)


def test_one_element_with_correction_1_has_a_nan_variance_and_a_warning():
    with pytest.warns(RuntimeWarning, match="var: 1 elements with correction 1 leave no degrees of freedom"):
        v = Tensor(np.array([2.0]), requires_grad=True).var(correction=1)
    assert np.isnan(v.item())


def test_mixed_indexing_places_the_advanced_axes_as_numpy_does():
    """``x[1, :, 3:11:2, idx, 0:2]``: the integer and the array are advanced indices split by slices, so
    NumPy puts their axis first, shape (2, 3, 4, 2); PyTorch would give (3, 4, 2, 2). minitspeft follows
    NumPy (documented at ``getitem``), forward and backward."""
    a = np.arange(2 * 3 * 12 * 5 * 4, dtype=float).reshape(2, 3, 12, 5, 4)
    idx = np.array([0, 2])
    out = Tensor(a)[1, :, 3:11:2, idx, 0:2]
    assert out.shape == a[1, :, 3:11:2, idx, 0:2].shape == (2, 3, 4, 2)
    np.testing.assert_array_equal(out.data, a[1, :, 3:11:2, idx, 0:2])
    check_grad(lambda t: t[1, :, 3:11:2, idx, 0:2] * 2.0, a)
