"""``check_grad``: the one gradient checker, for the package's tests, the tutorials and anyone writing an op.

For ``out = fn(x_1, ..., x_k)`` it draws a random upstream gradient ``v`` of
``out``'s shape and differentiates the scalar ``L = <v, fn(x_1, ..., x_k)>``
(HIPS autograd's random-projection idea). Reverse mode gives ``dL/dx_i`` as
``x_i.grad`` after ``out.backward(v)``. It is compared, in float64, with

- a central difference for every element of every input,
  ``dL/dx_i[j] ~ (L(x + h e_j) - L(x - h e_j)) / (2 h)``;
- a central difference along one random direction ``u`` of all inputs at
  once, ``<grad, u>``, which also catches gradients leaking between inputs;
- optionally an *oracle*: the same function written with ``autograd.numpy``
  and differentiated by HIPS autograd (the ``test`` extra installs it).

Both differences are Richardson-extrapolated, ``(4 D(h/2) - D(h)) / 3``,
which cancels the ``h^2`` error term. Because ``v`` is random (not all
ones), a rule that is right only for a uniform upstream gradient (a common
mistake in normalisation layers) is caught.
"""

from __future__ import annotations

import numpy as np

from .backend import to_numpy
from .tensor import Tensor

__all__ = ["check_grad", "central_difference"]


class GradcheckError(AssertionError):
    """A gradient, or the forward value, differs from its reference (an ``AssertionError``, for test runners)."""


def _fail(message: str) -> None:
    raise GradcheckError(message)


def _value(fn, arrays) -> np.ndarray:
    """``fn``'s forward on constant tensors (no graph), as a float64 NumPy array."""
    out = fn(*[Tensor(a.copy()) for a in arrays])
    if not isinstance(out, Tensor):
        _fail(f"check_grad: fn must return a Tensor, got {type(out).__name__}")
    return np.asarray(out.numpy(), dtype=np.float64)


def _difference(fn, base, direction, v, h) -> float:
    base, direction, v = [to_numpy(x) for x in base], [to_numpy(d) for d in direction], to_numpy(v)  # on the host
    plus = [x + h * d for x, d in zip(base, direction)]
    minus = [x - h * d for x, d in zip(base, direction)]
    return float(np.sum(v * (_value(fn, plus) - _value(fn, minus)))) / (2 * h)


def central_difference(fn, base, direction, v, h: float = 1e-6) -> float:
    """Richardson-extrapolated central difference of ``<v, fn(*base)>`` along ``direction``.

    Args:
        fn: a function of Tensors returning a Tensor.
        base, direction: lists of float64 arrays, one per input (same shapes); NumPy arrays, or arrays of
            the active backend (copied to the host: the differences are taken there).
        v: the upstream weights, an array of the output's shape.
        h: the step.

    Returns:
        The directional derivative as a Python float. Source: central
        differences with one Richardson step (textbook numerical analysis).
    """
    coarse = _difference(fn, base, direction, v, h)
    fine = _difference(fn, base, direction, v, h / 2)
    return (4 * fine - coarse) / 3


def _reverse_mode(fn, arrays, rng) -> tuple:
    """``(out, grads, v)``: the forward value, ``x_i.grad`` after ``backward(v)``, and ``v``."""
    leaves = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*leaves)
    if not isinstance(out, Tensor):
        _fail(f"check_grad: fn must return a Tensor, got {type(out).__name__}")
    if not out.requires_grad:
        _fail("check_grad: the output does not require grad (no graph was recorded)")
    if out.dtype != np.float64:
        _fail(f"check_grad: the output has dtype {out.dtype}, expected float64")
    v = rng.standard_normal(out.shape)
    out.backward(v)
    grads = []
    for i, (a, leaf) in enumerate(zip(arrays, leaves)):
        if leaf.grad is None:
            _fail(f"check_grad: input {i}: .grad is None after backward()")
        g = to_numpy(leaf.grad)  # the checks below run on the host: an explicit copy on a GPU backend
        if g.shape != a.shape or g.dtype != np.float64:
            _fail(f"check_grad: input {i}: gradient {g.dtype} {g.shape}, expected float64 {a.shape}")
        if not np.all(np.isfinite(g)):
            _fail(f"check_grad: input {i}: non-finite gradient {g}")
        grads.append(g)
        if not np.array_equal(leaf.numpy(), a):
            _fail(f"check_grad: forward or backward modified input {i} in place")
    return np.asarray(out.numpy()), grads, v


def _against_oracle(oracle, arrays, out, grads, v, rtol, atol, fwd_tol) -> None:
    """Compare the forward with ``oracle`` and the gradients with HIPS autograd's gradients of it."""
    try:
        import autograd  # noqa: PLC0415 - optional (the test extra)
        import autograd.numpy as anp  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError("check_grad: an oracle needs HIPS autograd (pip install -e '.[test]')") from exc
    want = to_numpy(oracle(*[a.copy() for a in arrays]))  # an oracle may build its constants with the library
    if want.shape != out.shape:
        _fail(f"check_grad: forward shape {out.shape} != oracle shape {want.shape}")
    np.testing.assert_allclose(out, want, rtol=fwd_tol, atol=fwd_tol, err_msg="check_grad: forward vs the oracle")

    def projected(*xs):
        return anp.sum(v * oracle(*xs))

    for i, a in enumerate(arrays):
        expected = autograd.grad(projected, i)(*[b.copy() for b in arrays])
        np.testing.assert_allclose(grads[i], expected, rtol=rtol, atol=atol,
                                   err_msg=f"check_grad: gradient of input {i} (shape {a.shape}) vs HIPS autograd")


def _against_differences(fn, arrays, grads, v, rng, eps, rtol, atol, per_element) -> None:
    """Compare the gradients with central differences: element by element, then along a random direction."""
    if per_element:
        zeros = [np.zeros_like(a) for a in arrays]
        for i, a in enumerate(arrays):
            approx = np.zeros_like(a)
            for j in np.ndindex(a.shape):
                direction = [z.copy() for z in zeros]
                direction[i][j] = 1.0
                approx[j] = central_difference(fn, arrays, direction, v, eps)
            np.testing.assert_allclose(grads[i], approx, rtol=rtol, atol=atol,
                                       err_msg=f"check_grad: gradient of input {i} (shape {a.shape}) "
                                               "vs central differences")
    u = [rng.standard_normal(a.shape) for a in arrays]
    directional = central_difference(fn, arrays, u, v, eps)
    analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, u))
    scale = sum(float(np.sum(np.abs(g * d))) for g, d in zip(grads, u))
    if not abs(analytic - directional) <= atol + rtol * max(abs(directional), scale):
        _fail(f"check_grad: directional derivative: reverse mode {analytic!r} vs central difference {directional!r}")


def check_grad(fn, *arrays, eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-8, seed: int = 0,
               per_element: bool = True, numeric: bool = True, oracle=None, oracle_rtol: float = 1e-10,
               oracle_atol: float = 1e-12, forward_tol: float = 1e-12) -> tuple:
    """Check ``fn``'s reverse-mode gradients in float64 (see the module docstring for the method).

    Args:
        fn: a function of minitspeft Tensors (one per array) returning a Tensor.
        *arrays: float64 NumPy arrays (any memory layout), the point to
            differentiate at; each becomes a leaf that requires a gradient.
        eps: step ``h`` of the central differences; rtol, atol: their tolerances.
        seed: seed of the random upstream gradient ``v`` and direction ``u``.
        per_element: difference every element of every input (off: only the
            random direction, for large inputs).
        numeric: compare with central differences at all; pass False only at
            points where ``fn`` is not differentiable (ties), where only the
            oracle's convention can be compared.
        oracle: optional; the same function written with ``autograd.numpy`` on
            arrays. The forward must match it to ``forward_tol`` and the
            gradients its HIPS autograd gradients to ``oracle_rtol``/``oracle_atol``.

    Returns:
        ``(grads, v)``: the reverse-mode gradients (NumPy arrays, one per input)
        and the upstream gradient used, for further checks.

    Raises:
        TypeError: if an input is not a float64 NumPy array (or scalar).
        GradcheckError (an ``AssertionError``): naming the input when a
            gradient is missing, has the wrong shape or dtype, is not finite,
            differs from its references, or when ``fn`` changed an input in place.
    """
    arrays = tuple(arrays)
    for i, a in enumerate(arrays):
        if not isinstance(a, (np.ndarray, np.float64)) or a.dtype != np.float64:
            raise TypeError(f"check_grad: input {i} must be a float64 NumPy array, got "
                            f"{getattr(a, 'dtype', type(a).__name__)}")
    saved = [np.array(a, copy=True) for a in arrays]
    rng = np.random.default_rng(seed)
    out, grads, v = _reverse_mode(fn, saved, rng)
    if oracle is not None:
        _against_oracle(oracle, saved, out, grads, v, oracle_rtol, oracle_atol, forward_tol)
    if numeric:
        _against_differences(fn, saved, grads, v, rng, eps, rtol, atol, per_element)
    return grads, v
