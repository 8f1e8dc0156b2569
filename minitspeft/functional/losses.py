"""Losses: the fused ``cross_entropy`` and ``nll_loss``, ``binary_cross_entropy_with_logits`` and
``mse_loss``, each with its backward's formula in its docstring (PyTorch's names and reductions)."""

from __future__ import annotations

from .. import backend
from ..checks import is_int
from ..extend import tensor_input
from ..ops import sigmoid_array
from ..tensor import Tensor
from .activations import log_softmax_array

__all__ = ["cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "mse_loss"]


def _checked_targets(logits: Tensor, targets, reduction: str, ignore_index: int, label_smoothing: float,
                     op: str = "cross_entropy"):
    """``targets`` as a backend integer array after every check of :func:`cross_entropy` or :func:`nll_loss`
    (``op``; see there)."""
    xp = backend.xp
    if logits.ndim == 0:
        raise ValueError(f"{op}: logits must be (..., C) with at least one axis, got a 0-d tensor")
    t = targets.data if isinstance(targets, Tensor) else xp.asarray(targets)
    if not is_int(ignore_index):
        raise ValueError(f"{op}: ignore_index must be an integer, got {ignore_index!r}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1), got {label_smoothing}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{op}: unknown reduction {reduction!r}; expected 'mean', 'sum' or 'none'")
    if t.dtype.kind not in "iu":
        raise ValueError(f"{op}: targets must be integers, got dtype {t.dtype}")
    if t.shape != logits.shape[:-1]:
        raise ValueError(f"{op}: targets shape {t.shape} does not match logits shape {logits.shape}")
    n_classes = logits.shape[-1]
    bad = (t != ignore_index) & ((t < 0) | (t >= n_classes))
    if bool(bad.any()):
        raise ValueError(
            f"{op}: target {int(t[bad].ravel()[0])} outside [0, {n_classes}) for logits shape {logits.shape}"
        )
    return t


@tensor_input
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
    t = _checked_targets(logits, targets, reduction, ignore_index, label_smoothing)
    n_classes = logits.shape[-1]
    valid = t != ignore_index
    safe_t = xp.where(valid, t, 0)
    logp = log_softmax_array(logits.data, -1)
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


def _check_reduction(op: str, reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{op}: unknown reduction {reduction!r}; expected 'mean', 'sum' or 'none'")


def _reduce(op: str, losses, reduction: str, count=None):
    """``losses`` (an array) reduced as ``reduction``, and the factor that spreads ``g`` back."""
    _check_reduction(op, reduction)
    if reduction == "none":
        return losses, 1
    n = losses.size if count is None else count
    scale = 1 / max(n, 1) if reduction == "mean" else 1
    return losses.sum() * losses.dtype.type(scale), scale


@tensor_input
def nll_loss(log_probs: Tensor, targets, reduction: str = "mean", ignore_index: int = -100) -> Tensor:
    """Negative log-likelihood of integer ``targets`` under ``log_probs`` (``(..., C)``, the output of
    ``log_softmax``): ``l_i = -log_probs[i, t_i]``; ``cross_entropy`` is ``nll_loss(log_softmax(z))``.

    Classes are on the last axis, as in :func:`cross_entropy` here (PyTorch puts them on axis 1 for
    inputs of more than 2 dimensions; for ``(N, C)`` the two agree). ``"mean"`` averages over the
    non-ignored targets (0 when all are ignored). Backward: ``-g_i`` at ``[i, t_i]``, 0 elsewhere.

    Raises:
        ValueError: as :func:`cross_entropy` (targets shape, dtype, range, reduction).
    """
    xp = backend.xp
    t = _checked_targets(log_probs, targets, reduction, ignore_index, 0.0, op="nll_loss")
    valid = t != ignore_index
    safe_t = xp.where(valid, t, 0)[..., None]
    picked = xp.take_along_axis(log_probs.data, safe_t, axis=-1)[..., 0]
    losses = xp.where(valid, -picked, xp.zeros((), dtype=picked.dtype))
    out, scale = _reduce("nll_loss", losses, reduction, int(valid.sum()))

    def backward(g):
        g = xp.broadcast_to(g * scale, t.shape) * valid
        grad = xp.zeros(log_probs.shape, dtype=g.dtype)
        flat = grad.reshape(-1, grad.shape[-1])  # a view: one row per position, one target in each
        flat[xp.arange(flat.shape[0]), safe_t.reshape(-1)] = -g.reshape(-1)  # no repeats: plain assignment
        return (grad,)

    return Tensor.from_op(out, (log_probs,), backward, "nll_loss")


def _same_shape(op: str, a: Tensor, b) -> Tensor:
    b = b if isinstance(b, Tensor) else Tensor(backend.xp.asarray(b, dtype=a.dtype))
    if b.shape != a.shape:
        raise ValueError(f"{op}: input shape {a.shape} and target shape {b.shape} differ "
                         "(no broadcasting here: it hides shape mistakes)")
    return b


@tensor_input
def binary_cross_entropy_with_logits(logits: Tensor, targets, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of probabilities ``sigmoid(z)`` against ``targets`` in ``[0, 1]`` of the same
    shape (``torch.nn.functional.binary_cross_entropy_with_logits``), computed without overflow as
    ``max(z, 0) - z y + log1p(exp(-|z|))``. d/dz = sigmoid(z) - y (derived here); the targets get no
    gradient.

    Raises:
        ValueError: for shapes that differ, targets outside ``[0, 1]``, or an unknown reduction.
    """
    xp = backend.xp
    _check_reduction("binary_cross_entropy_with_logits", reduction)
    y = _same_shape("binary_cross_entropy_with_logits", logits, targets).data
    if y.size and (bool((y < 0).any()) or bool((y > 1).any())):
        raise ValueError("binary_cross_entropy_with_logits: targets must be in [0, 1]")
    z = logits.data
    losses = xp.maximum(z, 0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))
    out, scale = _reduce("binary_cross_entropy_with_logits", losses, reduction)

    def backward(g):
        return ((sigmoid_array(z) - y) * (g * scale),)

    return Tensor.from_op(out, (logits,), backward, "binary_cross_entropy_with_logits")


@tensor_input
def mse_loss(x: Tensor, target, reduction: str = "mean") -> Tensor:
    """Mean squared error ``(x - target)^2`` reduced as ``reduction`` (``torch.nn.functional.mse_loss``),
    composed of primitive ops, so a target that requires gradients gets one too.

    Raises:
        ValueError: for shapes that differ or an unknown reduction.
    """
    target = _same_shape("mse_loss", x, target)
    _check_reduction("mse_loss", reduction)
    d = x - target
    sq = d * d
    return sq if reduction == "none" else sq.sum() if reduction == "sum" else sq.mean()
