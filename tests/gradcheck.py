"""Numerical gradient checking for the autograd engine (test helper, not a test module).

The check follows HIPS autograd's ``check_grads`` idea of a random
projection: for ``out = fn(x_1, ..., x_k)`` draw a random upstream gradient
``v`` of ``out``'s shape and look at the scalar

    L(x_1, ..., x_k) = <v, fn(x_1, ..., x_k)>.

Reverse mode gives ``dL/dx_i`` as ``x_i.grad`` after ``out.backward(v)``; a
central difference in float64 gives it independently, one element at a time:

    dL/dx_i[j] ~ (L(x_i + eps e_j) - L(x_i - eps e_j)) / (2 eps).

Because ``v`` is random (not all ones), a backward rule that is only right
for a uniform upstream gradient (a common mistake in normalisation layers)
is caught. A second check along a random direction ``u`` of all inputs at
once, ``<grad, u>`` against ``(L(x + eps u) - L(x - eps u)) / (2 eps)``,
also catches gradients that leak between inputs.
"""

from __future__ import annotations

import numpy as np

from minitspeft.tensor import Tensor


def _scalar(fn, arrays, v) -> float:
    """``<v, fn(*arrays)>`` evaluated on fresh constant tensors (no graph recorded)."""
    out = fn(*[Tensor(a.copy()) for a in arrays])
    assert isinstance(out, Tensor), f"fn must return a Tensor, got {type(out)}"
    return float(np.sum(v * np.asarray(out.data, dtype=np.float64)))


def check_grad(fn, *arrays, eps=1e-6, rtol=1e-6, atol=1e-8, seed=0):
    """Compare reverse-mode gradients of ``fn`` with central differences in float64.

    Args:
        fn: a function of Tensors (one per array) returning a Tensor.
        *arrays: float64 NumPy arrays, the points at which to differentiate.
            Every one becomes a leaf Tensor with ``requires_grad=True``.
        eps: step of the central difference.
        rtol, atol: tolerances of ``numpy.testing.assert_allclose``
            (analytic against numeric).
        seed: seed of the random upstream gradient ``v`` and direction ``u``.

    Returns:
        The list of analytic gradients (NumPy arrays), one per input, so a
        test can make further checks on them.

    Raises:
        AssertionError: if a gradient is missing, has the wrong shape or
            dtype, or differs from the numerical one.
    """
    arrays = [np.asarray(a) for a in arrays]
    for a in arrays:
        assert a.dtype == np.float64, f"check_grad needs float64 inputs, got {a.dtype}"
    rng = np.random.default_rng(seed)

    # analytic: backward of <v, out> is backward of out with upstream v
    leaves = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*leaves)
    assert isinstance(out, Tensor), f"fn must return a Tensor, got {type(out)}"
    assert out.requires_grad, "the output does not require grad (no graph was recorded)"
    v = rng.standard_normal(out.shape)
    out.backward(np.asarray(v, dtype=np.float64))
    analytic = []
    for i, leaf in enumerate(leaves):
        assert leaf.grad is not None, f"input {i}: .grad is None after backward()"
        assert leaf.grad.shape == arrays[i].shape, (
            f"input {i}: gradient shape {leaf.grad.shape} != input shape {arrays[i].shape}")
        assert leaf.grad.dtype == np.float64, f"input {i}: gradient dtype {leaf.grad.dtype}, expected float64"
        analytic.append(np.array(leaf.grad))

    # numeric: central difference of <v, fn> for each element of each input
    for i, a in enumerate(arrays):
        numeric = np.zeros_like(a)
        for j in np.ndindex(a.shape):
            plus = [b.copy() for b in arrays]
            minus = [b.copy() for b in arrays]
            plus[i][j] += eps
            minus[i][j] -= eps
            numeric[j] = (_scalar(fn, plus, v) - _scalar(fn, minus, v)) / (2 * eps)
        np.testing.assert_allclose(analytic[i], numeric, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of input {i} (shape {a.shape})")

    # projection along one random direction of all inputs together
    u = [rng.standard_normal(a.shape) for a in arrays]
    plus = [a + eps * d for a, d in zip(arrays, u)]
    minus = [a - eps * d for a, d in zip(arrays, u)]
    directional = (_scalar(fn, plus, v) - _scalar(fn, minus, v)) / (2 * eps)
    projected = sum(float(np.sum(g * d)) for g, d in zip(analytic, u))
    scale = sum(float(np.sum(np.abs(g * d))) for g, d in zip(analytic, u))
    assert abs(projected - directional) <= atol + rtol * max(abs(directional), scale), (
        f"directional derivative: analytic {projected!r} vs numeric {directional!r}")

    for i, (a, leaf) in enumerate(zip(arrays, leaves)):
        np.testing.assert_array_equal(leaf.data, a, err_msg=f"forward or backward modified input {i} in place")
    return analytic
