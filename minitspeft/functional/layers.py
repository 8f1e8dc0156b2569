"""Fused layer functions: ``layer_norm``, ``linear``, ``dropout`` and ``embedding``, each with a
hand-derived backward (its formula in each docstring)."""

from __future__ import annotations

from .. import backend
from ..checks import check_number, is_int
from ..extend import require_tensor, tensor_input
from ..tensor import Tensor

__all__ = ["layer_norm", "linear", "dropout", "embedding"]


def _normalise(x, eps: float) -> tuple:
    """``(xhat, 1 / sqrt(var + eps))`` over the last axis, right at any magnitude.

    Where the mean or the squares overflow (``|x|`` past about 1.8e19 in
    float32), that row is computed from ``x / s`` with ``s = max |x|``:
    ``xhat = c / sqrt(var(c) + eps / s^2)`` with ``c = x / s - mean(x / s)``,
    the same value, since layer normalisation is scale-invariant up to ``eps``.
    Other rows get exactly the plain formula.
    """
    xp = backend.xp
    with backend.quiet_overflow():
        mu = x.mean(axis=-1, keepdims=True)
        xhat = x - mu  # centred, then scaled in place
        square = xhat * xhat
        var = square.mean(axis=-1, keepdims=True)
        del square
        inv_std = 1 / xp.sqrt(var + xp.asarray(eps, dtype=x.dtype))
        xhat *= inv_std
    risky = ~xp.isfinite(inv_std) | ~xp.isfinite(var)  # squares overflowed, or (eps tiny) underflowed
    if bool(risky.any()):
        with backend.quiet_overflow():
            s = xp.where(risky, xp.abs(x).max(axis=-1, keepdims=True), 1)
            c = x / s - (x / s).mean(axis=-1, keepdims=True)
            root = xp.sqrt((c * c).mean(axis=-1, keepdims=True) + xp.asarray(eps, dtype=x.dtype) / s / s)
            xhat = xp.where(risky, c / root, xhat)
            inv_std = xp.where(risky, 1 / (s * root), inv_std)
    return xhat, inv_std


@tensor_input
def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Layer normalisation over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    Args:
        x: ``(..., C)``; weight, bias: ``(C,)`` or None.

    Right for inputs of any finite magnitude (rows past the squares' range are rescaled first).

    Backward (derived here), with ``xhat`` the normalised input,
    ``s = sqrt(var + eps)`` and ``gh = g * weight``:
    ``dx = (gh - mean(gh) - xhat * mean(gh * xhat)) / s``,
    ``dweight = sum(g * xhat)``, ``dbias = sum(g)`` over the leading axes.
    """
    xp = backend.xp
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"layer_norm: x must be (..., C) with C >= 1, got shape {x.shape}")
    check_number("layer_norm", "eps", eps, 0)
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            require_tensor("layer_norm", name, p)
        if p is not None and p.shape != (C,):
            raise ValueError(f"layer_norm: {name} shape {p.shape} does not match normalized size {C} of x {x.shape}")
    xhat, inv_std = _normalise(x.data, eps)
    out = xhat
    if weight is not None:
        out = out * weight.data
    if bias is not None and out is xhat:
        out = out + bias.data  # xhat itself is kept for the backward
    elif bias is not None:
        out += bias.data
    parents = [x] + [p for p in (weight, bias) if p is not None]

    def backward(g):
        grads = []
        if x.requires_grad:
            dx = g * weight.data if weight is not None else g.copy()  # gh, then turned into dx in place
            tmp = dx * xhat
            m2 = tmp.mean(axis=-1, keepdims=True)
            dx -= dx.mean(axis=-1, keepdims=True)
            xp.multiply(xhat, m2, out=tmp)
            dx -= tmp
            dx *= inv_std
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


@tensor_input
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` as one matrix product over all leading axes.

    Args:
        x: ``(..., in_features)``; weight: ``(out_features, in_features)``;
            bias: ``(out_features,)`` or None.

    Raises:
        ValueError: naming the shapes when ``x``'s last axis is not ``in_features``.

    Backward: ``dx = g @ W``, ``dW = g^T x``, ``db = sum(g)`` (leading axes flattened).
    """
    require_tensor("linear", "weight", weight)
    if bias is not None:
        require_tensor("linear", "bias", bias)
        if bias.shape != weight.shape[:1]:
            raise ValueError(f"linear: bias shape {bias.shape} does not match weight shape {weight.shape} (out, in)")
    if weight.ndim != 2 or x.shape[-1:] != weight.shape[1:]:
        raise ValueError(f"linear: input shape {x.shape} does not match weight shape {weight.shape} (out, in)")
    lead = x.shape[:-1]
    x2 = x.data.reshape(-1, weight.shape[1])  # (N, in)
    out = x2 @ weight.data.T
    if bias is not None:
        out += bias.data  # in place: ``out`` is new
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


@tensor_input
def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability ``p`` and scale the rest by ``1/(1-p)``.

    Identity when ``training`` is false or ``p == 0``. The mask is drawn on
    the host from ``backend.host_rng()``. Raises ``ValueError`` unless ``0 <= p < 1``.
    """
    check_number("dropout", "p", p, 0, 1, high_open=True)
    if not training or p == 0:
        return x
    keep = backend.host_rng().random(x.shape) >= p
    mask = backend.asarray(keep.astype(x.dtype) / x.dtype.type(1 - p))
    return Tensor.from_op(x.data * mask, (x,), lambda g: (g * mask,), "dropout")


def _integer_ids(op: str, ids):
    """``ids`` (an array or Tensor) as a backend integer array. Raises ValueError naming ``op`` otherwise."""
    idx = ids.data if isinstance(ids, Tensor) else backend.asarray(ids)
    if idx.dtype.kind not in "iu":
        raise ValueError(f"{op}: ids must be integers, got dtype {idx.dtype}")
    return idx


def _check_id_range(op: str, idx, n: int) -> None:
    """Raise ValueError naming ``op`` for an id outside ``[0, n)`` (NumPy would wrap a negative one)."""
    if not idx.size:
        return
    low, high = backend.extent(idx)
    if low < 0 or high >= n:
        raise ValueError(f"{op}: ids must be in [0, {n}), got min {low} and max {high}")


def embedding(ids, weight: Tensor) -> Tensor:
    """Look up rows of ``weight`` ``(num_embeddings, dim)`` for integer ``ids`` of any shape.

    Raises:
        ValueError: for non-integer ids or ids outside ``[0, num_embeddings)``
            (NumPy would silently wrap a negative id).

    Backward: rows of ``g`` are added into ``dweight`` at their ids (repeats add up).
    """
    xp = backend.xp
    require_tensor("embedding", "weight", weight)
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be (num_embeddings, dim), got shape {weight.shape}")
    idx = _integer_ids("embedding", ids)
    _check_id_range("embedding", idx, weight.shape[0])

    def backward(g):
        full = xp.zeros(weight.shape, dtype=g.dtype)
        backend.scatter_add(full, idx.reshape(-1), g.reshape(-1, weight.shape[1]))
        return (full,)

    return Tensor.from_op(weight.data[idx], (weight,), backward, "embedding")


def one_hot(ids, num_classes: int = -1) -> Tensor:
    """``(..., num_classes)`` int64 rows with a 1 at each integer id of ``ids`` (``...``)
    (``torch.nn.functional.one_hot``); ``num_classes=-1`` takes ``max(ids) + 1``. No gradient.

    Raises:
        ValueError: for non-integer ids, a negative id, an id ``>= num_classes``, or ``num_classes=-1``
            with no ids.
    """
    idx = _integer_ids("one_hot", ids)
    if not is_int(num_classes) or num_classes < -1:
        raise ValueError(f"one_hot: num_classes must be -1 or a non-negative integer, got {num_classes!r}")
    if num_classes == -1:
        if idx.size == 0:
            raise ValueError("one_hot: cannot infer num_classes from no ids; pass num_classes")
        num_classes = int(idx.max()) + 1
    _check_id_range("one_hot", idx, num_classes)
    return Tensor((idx[..., None] == backend.xp.arange(int(num_classes))).astype("int64"))
