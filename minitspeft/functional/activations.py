"""Fused activations: ``softmax``, ``log_softmax``, ``gelu``, ``softplus``, ``silu``, ``leaky_relu``,
each with a hand-derived backward.

Forward in array code, backward written out (its formula in each docstring);
:mod:`minitspeft.functional.reference` composes the same functions from
primitive ops, and the tests compare the two.
"""

from __future__ import annotations

import math

from .. import backend
from ..checks import is_int
from ..extend import tensor_input, torch_names
from ..ops import sigmoid_array
from ..tensor import Tensor

__all__ = ["softmax", "log_softmax", "gelu", "softplus", "silu", "leaky_relu"]


def _check_axis(op: str, x: Tensor, axis) -> None:
    """``axis`` an integer in ``[-ndim, ndim)`` naming a non-empty axis of ``x``."""
    if not is_int(axis) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis {axis!r} is out of range for a tensor of shape {x.shape}")
    if x.shape[axis] == 0:
        raise ValueError(f"{op}: axis {axis} of shape {x.shape} is empty; there is nothing to normalise over")


def _floating(data):
    """``data`` itself when floating, else as float64 (what NumPy's promotion gives integers), so that
    the in-place steps below have a floating buffer."""
    return data if data.dtype.kind == "f" else data.astype(backend.xp.float64)


@tensor_input
@torch_names
def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """Softmax along ``axis``, shifted by the maximum so large logits never overflow.

    Backward (derived here from ``y = e^x / sum e^x``):
    ``dx = y * (g - sum(g * y, axis))``.
    """
    _check_axis("softmax", x, axis)
    xp = backend.xp
    data = _floating(x.data)
    if axis in (-1, data.ndim - 1):  # rows (N, C), in blocks that stay in cache (backend.blocks)
        rows, ax = data.reshape(-1, data.shape[-1]), -1
        pieces = backend.blocks(rows.shape[0], rows.shape[1] * rows.itemsize)
    else:  # another axis: in one piece
        rows, ax, pieces = data, axis, [...]
    y = xp.empty_like(rows)
    for sl in pieces:
        xb, yb = rows[sl], y[sl]
        xp.subtract(xb, xb.max(axis=ax, keepdims=True), out=yb)  # shifted, exponentiated, normalised
        xp.exp(yb, out=yb)
        yb /= yb.sum(axis=ax, keepdims=True)

    def backward(g):
        g2 = g.reshape(rows.shape)
        dx = xp.empty_like(y)
        for sl in pieces:
            gb, yb, db = g2[sl], y[sl], dx[sl]
            xp.multiply(gb, yb, out=db)
            xp.subtract(gb, db.sum(axis=ax, keepdims=True), out=db)
            db *= yb
        return (dx.reshape(x.shape),)

    return Tensor.from_op(y.reshape(x.shape), (x,), backward, "softmax")


def log_softmax_array(data, axis):
    """``data - logsumexp(data)`` along ``axis`` on a backend array (the forward of :func:`log_softmax`)."""
    xp = backend.xp
    shifted = data - data.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


@tensor_input
@torch_names
def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``x - logsumexp(x)`` along ``axis``, exact for logits of any magnitude.

    Backward: ``dx = g - softmax(x) * sum(g, axis)``.
    """
    _check_axis("log_softmax", x, axis)
    xp = backend.xp
    out = log_softmax_array(x.data, axis)

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)

    return Tensor.from_op(out, (x,), backward, "log_softmax")


_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_FLAT = 100.0  # tanh(k (x + 0.044715 x^3)) rounds to exactly +-1 well before |x| = 100


@tensor_input
def gelu(x: Tensor) -> Tensor:
    """GELU in its tanh form (Hendrycks and Gimpel 2016, as in GPT-2):
    ``0.5 x (1 + tanh(k (x + 0.044715 x^3)))``, ``k = sqrt(2/pi)``.

    Backward (derived here), with ``t`` the tanh:
    ``0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 * 0.044715 x^2)``; finite for every finite ``x``
    (1 for large positive ``x``, 0 for large negative).
    """
    xp = backend.xp
    d = _floating(x.data).reshape(-1)  # the steps below run in place, block by block (backend.blocks)
    t, out = xp.empty_like(d), xp.empty_like(d)
    with backend.quiet_overflow():  # x^3 overflows past ~7e12 in float32; tanh(+-inf) is the right limit
        for sl in backend.blocks(d.size, d.itemsize):
            db, tb, ob = d[sl], t[sl], out[sl]
            xp.multiply(db, db, out=tb)
            tb *= 0.044715
            tb *= db
            tb += db
            tb *= _GELU_K
            xp.tanh(tb, out=tb)  # t = tanh(k (x + 0.044715 x^3))
            xp.add(tb, 1, out=ob)
            ob *= 0.5  # before x: 2 x would overflow where 0.5 (1 + t) x does not
            ob *= db

    def backward(g):
        # past |x| = 100, t is exactly +-1 and the second term exactly 0: clipping x there keeps
        # inf * 0 (x^2 overflows past ~1.8e19 in float32) out of it and changes nothing below
        g = g.reshape(-1)
        local = xp.empty_like(d)
        for sl in backend.blocks(d.size, d.itemsize):
            tb, lb = t[sl], local[sl]
            dc = xp.clip(d[sl], -_GELU_FLAT, _GELU_FLAT)
            tmp = tb * tb
            xp.multiply(dc, 0.5, out=lb)
            xp.subtract(1, tmp, out=tmp)
            lb *= tmp
            lb *= _GELU_K  # 0.5 dc (1 - t^2) k
            xp.multiply(dc, dc, out=tmp)
            tmp *= 3 * 0.044715
            tmp += 1
            lb *= tmp
            xp.add(tb, 1, out=tmp)
            tmp *= 0.5
            lb += tmp
            lb *= g[sl]
        return (local.reshape(x.shape),)

    out = out.reshape(x.shape)
    return Tensor.from_op(out, (x,), backward, "gelu")


@tensor_input
def softplus(x: Tensor, beta: float = 1.0) -> Tensor:
    """``log(1 + exp(beta x)) / beta`` (``torch.nn.functional.softplus``), computed as
    ``max(z, 0) + log1p(exp(-|z|))`` with ``z = beta x``, so it is finite and exact at every finite ``x``
    (``softplus(-1000) = 0``, ``softplus(1000) = 1000``). d/dx = sigmoid(beta x).

    Raises:
        ValueError: for ``beta`` that is not a positive number.
    """
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta > 0:
        raise ValueError(f"softplus: beta must be a positive number, got {beta!r}")
    xp = backend.xp
    z = _floating(x.data) * beta if beta != 1 else _floating(x.data)
    out = xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))
    if beta != 1:
        out = out / beta
    return Tensor.from_op(out.astype(z.dtype, copy=False), (x,), lambda g: (g * sigmoid_array(z),), "softplus")


@tensor_input
def silu(x: Tensor) -> Tensor:
    """SiLU (swish), ``x sigmoid(x)`` (Elfwing et al. 2018; ``torch.nn.functional.silu``).
    d/dx = s (1 + x (1 - s)) with ``s = sigmoid(x)`` (derived by the product rule)."""
    s = sigmoid_array(_floating(x.data))
    return Tensor.from_op(x.data * s, (x,), lambda g: (g * s * (1 + x.data * (1 - s)),), "silu")


@tensor_input
def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """``x`` where ``x > 0``, else ``negative_slope * x`` (``torch.nn.functional.leaky_relu``).
    d/dx = 1 where ``x > 0``, ``negative_slope`` elsewhere (at 0 too, as in PyTorch).

    Raises:
        ValueError: for a slope that is not a finite number.
    """
    if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool) \
            or not math.isfinite(negative_slope):
        raise ValueError(f"leaky_relu: negative_slope must be a finite number, got {negative_slope!r}")
    xp = backend.xp
    pos = x.data > 0
    slope = x.dtype.type(negative_slope) if x.dtype.kind == "f" else negative_slope
    out = xp.where(pos, x.data, x.data * slope)
    return Tensor.from_op(out, (x,), lambda g: (xp.where(pos, g, g * slope),), "leaky_relu")
