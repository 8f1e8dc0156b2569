"""Fused activations: ``softmax``, ``log_softmax`` and ``gelu``, each with a hand-derived backward.

Forward in array code, backward written out (its formula in each docstring);
:mod:`minitspeft.functional.reference` composes the same functions from
primitive ops, and the tests compare the two.
"""

from __future__ import annotations

import math

from .. import backend
from ..tensor import Tensor

__all__ = ["softmax", "log_softmax", "gelu"]


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """Softmax along ``axis``, shifted by the maximum so large logits never overflow.

    Backward (derived here from ``y = e^x / sum e^x``):
    ``dx = y * (g - sum(g * y, axis))``.
    """
    xp = backend.xp
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    e = xp.exp(shifted)
    y = e / e.sum(axis=axis, keepdims=True)

    def backward(g):
        return (y * (g - (g * y).sum(axis=axis, keepdims=True)),)

    return Tensor.from_op(y, (x,), backward, "softmax")


def log_softmax_array(data, axis):
    """``data - logsumexp(data)`` along ``axis`` on a backend array (the forward of :func:`log_softmax`)."""
    xp = backend.xp
    shifted = data - data.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``x - logsumexp(x)`` along ``axis``, exact for logits of any magnitude.

    Backward: ``dx = g - softmax(x) * sum(g, axis)``.
    """
    xp = backend.xp
    out = log_softmax_array(x.data, axis)

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)

    return Tensor.from_op(out, (x,), backward, "log_softmax")


_GELU_K = math.sqrt(2.0 / math.pi)


def gelu(x: Tensor) -> Tensor:
    """GELU in its tanh form (Hendrycks and Gimpel 2016, as in GPT-2):
    ``0.5 x (1 + tanh(k (x + 0.044715 x^3)))``, ``k = sqrt(2/pi)``.

    Backward (derived here), with ``t`` the tanh:
    ``0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 * 0.044715 x^2)``.
    """
    xp = backend.xp
    d = x.data
    x2 = d * d
    t = xp.tanh(_GELU_K * (d + 0.044715 * x2 * d))
    out = 0.5 * d * (1 + t)

    def backward(g):
        local = 0.5 * (1 + t) + 0.5 * d * (1 - t * t) * _GELU_K * (1 + 3 * 0.044715 * x2)
        return (g * local,)

    return Tensor.from_op(out, (x,), backward, "gelu")
