"""The fused ops of :mod:`minitspeft.functional`, composed from primitive ops: the readable versions.

Each function here computes what its fused namesake computes, with the same
arguments, but as a chain of primitives (``exp``, ``sum``, ``mul``, ...)
whose gradients the engine derives by itself. Read these first; the fused
ops are faster, use less memory and stay exact for large logits, and the
tests check that fused and reference agree in value and gradient (float64,
to about 1e-12). Checks of bad input live in the fused ops only.
"""

from __future__ import annotations

import math

from .. import backend
from ..ops import exp, log, sqrt, tanh
from ..tensor import Tensor

__all__ = ["softmax", "log_softmax", "cross_entropy", "layer_norm", "gelu", "linear", "dropout", "embedding"]


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``exp(x - max x) / sum(exp(x - max x))`` along ``axis``."""
    e = exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``(x - max x) - log(sum(exp(x - max x)))`` along ``axis``."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - log(exp(shifted).sum(axis=axis, keepdims=True))


def cross_entropy(logits: Tensor, targets, reduction: str = "mean", ignore_index: int = -100,
                  label_smoothing: float = 0.0) -> Tensor:
    """``-sum_c q_c log_softmax(logits)_c`` per position, ``q = (1 - eps) onehot(target) + eps / C``.

    ``logits`` ``(..., C)``, integer ``targets`` ``(...)``; ignored targets
    give 0; ``"mean"`` divides by the number of targets not ignored (at least 1).
    """
    xp = backend.xp
    t = targets.data if isinstance(targets, Tensor) else xp.asarray(targets)
    n_classes = logits.shape[-1]
    valid = t != ignore_index
    onehot = xp.arange(n_classes) == xp.where(valid, t, 0)[..., None]  # (..., C)
    q = (onehot * (1 - label_smoothing) + label_smoothing / n_classes) * valid[..., None]
    q = Tensor(q.astype(logits.dtype))
    losses = -(log_softmax(logits) * q).sum(axis=-1)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / float(max(int(valid.sum()), 1))


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis (population variance)."""
    centred = x - x.mean(axis=-1, keepdims=True)
    var = (centred * centred).mean(axis=-1, keepdims=True)
    out = centred / sqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def gelu(x: Tensor) -> Tensor:
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (the tanh form)."""
    k = math.sqrt(2.0 / math.pi)
    return 0.5 * x * (1.0 + tanh(k * (x + 0.044715 * x ** 3)))


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias``."""
    out = x @ weight.T
    return out + bias if bias is not None else out


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``x * keep / (1 - p)`` with ``keep`` drawn exactly as the fused op draws it (``backend.host_rng()``)."""
    if not training or p == 0:
        return x
    keep = backend.host_rng().random(x.shape) >= p
    return x * Tensor(backend.asarray(keep.astype(x.dtype))) / (1 - p)


def embedding(ids, weight: Tensor) -> Tensor:
    """``weight[ids]``: indexing, whose gradient adds the rows of repeated ids."""
    return weight[ids.data if isinstance(ids, Tensor) else ids]
