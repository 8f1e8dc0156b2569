"""Fused ops: a forward pass in array code and a backward pass derived by hand.

Each op here could be composed from the primitives in ``ops`` (the tests do
exactly that and compare); fusing them saves memory and time and, more
importantly, keeps them numerically exact for large inputs. Every docstring
states the derivative its backward uses.
"""

from __future__ import annotations

import math

from . import backend
from .tensor import Tensor


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


def _log_softmax_array(data, axis):
    xp = backend.xp
    shifted = data - data.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``x - logsumexp(x)`` along ``axis``, exact for logits of any magnitude.

    Backward: ``dx = g - softmax(x) * sum(g, axis)``.
    """
    xp = backend.xp
    out = _log_softmax_array(x.data, axis)

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)

    return Tensor.from_op(out, (x,), backward, "log_softmax")


def cross_entropy(logits: Tensor, targets, reduction: str = "mean", ignore_index: int = -100,
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy between ``logits`` and integer class ``targets``.

    Args:
        logits: float Tensor ``(N, C)`` or ``(..., C)``.
        targets: integer array or Tensor with the leading shape of ``logits``
            (``(N,)`` or ``(...)``), values in ``[0, C)`` or ``ignore_index``.
        reduction: ``"mean"`` (over non-ignored targets; 0 when every target
            is ignored, where PyTorch gives NaN), ``"sum"`` or ``"none"``.
        ignore_index: a target value that contributes no loss and no gradient.
        label_smoothing: ``eps`` in ``[0, 1)``: the target distribution becomes
            ``(1 - eps) onehot + eps / C`` (as in PyTorch).

    Returns:
        A scalar Tensor, or per-position losses for ``"none"``.

    Raises:
        ValueError: for a wrong targets shape, a float targets array, a target
            outside ``[0, C)``, or an unknown reduction.

    Loss ``l_i = -sum_c q_ic log softmax(z_i)_c`` with ``q_i`` the (smoothed)
    target distribution; backward (derived here): ``dz_i = (softmax(z_i) - q_i) * g_i``.
    """
    xp = backend.xp
    t = targets.data if isinstance(targets, Tensor) else xp.asarray(targets)
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: unknown reduction {reduction!r}; expected 'mean', 'sum' or 'none'")
    if t.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: targets must be integers, got dtype {t.dtype}")
    if t.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets shape {t.shape} does not match logits shape {logits.shape}")
    n_classes = logits.shape[-1]
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= n_classes))
    if bool(bad.any()):
        raise ValueError(
            f"cross_entropy: target {int(t[bad].ravel()[0])} outside [0, {n_classes}) for logits shape {logits.shape}"
        )
    safe_t = xp.where(valid, t, 0)
    logp = _log_softmax_array(logits.data, -1)
    picked = xp.take_along_axis(logp, safe_t[..., None], axis=-1)[..., 0]
    eps = logp.dtype.type(label_smoothing)
    if label_smoothing:
        picked = (1 - eps) * picked + eps * logp.mean(axis=-1)
    losses = xp.where(valid, -picked, xp.zeros((), dtype=logp.dtype))
    count = int(valid.sum())
    if reduction == "none":
        out = losses
    elif reduction == "sum":
        out = losses.sum()
    else:
        out = losses.sum() / xp.asarray(max(count, 1), dtype=logp.dtype)

    def backward(g):
        if reduction == "mean":
            g = xp.broadcast_to(g / max(count, 1), t.shape)
        elif reduction == "sum":
            g = xp.broadcast_to(g, t.shape)
        grad = xp.exp(logp).reshape(-1, n_classes)  # (N, C); a fresh array, whatever the logits' layout
        if label_smoothing:
            grad -= eps / n_classes
        grad[xp.arange(grad.shape[0]), safe_t.reshape(-1)] -= 1 - eps  # one target per row: no repeats
        return (grad.reshape(logp.shape) * (g * valid)[..., None],)

    return Tensor.from_op(out, (logits,), backward, "cross_entropy")


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Layer normalisation over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    Args:
        x: ``(..., C)``; weight, bias: ``(C,)`` or None.

    Backward (derived here), with ``xhat`` the normalised input,
    ``s = sqrt(var + eps)`` and ``gh = g * weight``:
    ``dx = (gh - mean(gh) - xhat * mean(gh * xhat)) / s``,
    ``dweight = sum(g * xhat)``, ``dbias = sum(g)`` over the leading axes.
    """
    xp = backend.xp
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (C,):
            raise ValueError(f"layer_norm: {name} shape {p.shape} does not match normalized size {C} of x {x.shape}")
    mu = x.data.mean(axis=-1, keepdims=True)
    centred = x.data - mu
    var = (centred * centred).mean(axis=-1, keepdims=True)
    inv_std = 1 / xp.sqrt(var + xp.asarray(eps, dtype=x.dtype))
    xhat = centred * inv_std
    out = xhat
    if weight is not None:
        out = out * weight.data
    if bias is not None:
        out = out + bias.data
    parents = [x] + [p for p in (weight, bias) if p is not None]

    def backward(g):
        grads = []
        if x.requires_grad:
            gh = g * weight.data if weight is not None else g
            dx = (gh - gh.mean(axis=-1, keepdims=True)
                  - xhat * (gh * xhat).mean(axis=-1, keepdims=True)) * inv_std
            grads.append(dx)
        else:
            grads.append(None)
        lead = tuple(range(g.ndim - 1))
        if weight is not None:
            grads.append((g * xhat).sum(axis=lead) if weight.requires_grad else None)
        if bias is not None:
            grads.append(g.sum(axis=lead) if bias.requires_grad else None)
        return tuple(grads)

    return Tensor.from_op(out, parents, backward, "layer_norm")


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


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` as one matrix product over all leading axes.

    Args:
        x: ``(..., in_features)``; weight: ``(out_features, in_features)``;
            bias: ``(out_features,)`` or None.

    Raises:
        ValueError: naming the shapes when ``x``'s last axis is not ``in_features``.

    Backward: ``dx = g @ W``, ``dW = g^T x``, ``db = sum(g)`` (leading axes flattened).
    """
    if weight.ndim != 2 or x.shape[-1:] != weight.shape[1:]:
        raise ValueError(f"linear: input shape {x.shape} does not match weight shape {weight.shape} (out, in)")
    lead = x.shape[:-1]
    x2 = x.data.reshape(-1, weight.shape[1])  # (N, in)
    out = x2 @ weight.data.T
    if bias is not None:
        out = out + bias.data
    out = out.reshape(*lead, weight.shape[0])
    parents = (x, weight) if bias is None else (x, weight, bias)

    def backward(g):
        g2 = g.reshape(-1, weight.shape[0])  # (N, out)
        gx = (g2 @ weight.data).reshape(x.shape) if x.requires_grad else None
        gw = g2.T @ x2 if weight.requires_grad else None
        if bias is None:
            return gx, gw
        return gx, gw, (g2.sum(axis=0) if bias.requires_grad else None)

    return Tensor.from_op(out, parents, backward, "linear")


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability ``p`` and scale the rest by ``1/(1-p)``.

    Identity when ``training`` is false or ``p == 0``. The mask is drawn on
    the host from ``backend.host_rng()``. Raises ``ValueError`` unless ``0 <= p < 1``.
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0:
        return x
    keep = backend.host_rng().random(x.shape) >= p
    mask = backend.asarray(keep.astype(x.dtype) / x.dtype.type(1 - p))
    return Tensor.from_op(x.data * mask, (x,), lambda g: (g * mask,), "dropout")


def embedding(ids, weight: Tensor) -> Tensor:
    """Look up rows of ``weight`` ``(num_embeddings, dim)`` for integer ``ids`` of any shape.

    Raises:
        ValueError: for non-integer ids or ids outside ``[0, num_embeddings)``
            (NumPy would silently wrap a negative id).

    Backward: rows of ``g`` are added into ``dweight`` at their ids (repeats add up).
    """
    xp = backend.xp
    idx = ids.data if isinstance(ids, Tensor) else xp.asarray(ids)
    if idx.dtype.kind not in "iu":
        raise ValueError(f"embedding: ids must be integers, got dtype {idx.dtype}")
    n = weight.shape[0]
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(
            f"embedding: ids must be in [0, {n}), got min {int(idx.min())} and max {int(idx.max())}"
        )

    def backward(g):
        full = xp.zeros(weight.shape, dtype=g.dtype)
        backend.scatter_add(full, idx.reshape(-1), g.reshape(-1, weight.shape[1]))
        return (full,)

    return Tensor.from_op(weight.data[idx], (weight,), backward, "embedding")


__all__ = ["softmax", "log_softmax", "cross_entropy", "layer_norm", "gelu", "linear", "dropout",
           "embedding"]
