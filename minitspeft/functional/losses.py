"""The fused cross-entropy loss, with a hand-derived backward (its formula in the docstring)."""

from __future__ import annotations

from .. import backend
from ..checks import is_int
from ..extend import tensor_input
from ..tensor import Tensor
from .activations import log_softmax_array

__all__ = ["cross_entropy"]


def _checked_targets(logits: Tensor, targets, reduction: str, ignore_index: int, label_smoothing: float):
    """``targets`` as a backend integer array after every check of :func:`cross_entropy` (see there)."""
    xp = backend.xp
    if logits.ndim == 0:
        raise ValueError("cross_entropy: logits must be (..., C) with at least one axis, got a 0-d tensor")
    t = targets.data if isinstance(targets, Tensor) else xp.asarray(targets)
    if not is_int(ignore_index):
        raise ValueError(f"cross_entropy: ignore_index must be an integer, got {ignore_index!r}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: unknown reduction {reduction!r}; expected 'mean', 'sum' or 'none'")
    if t.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: targets must be integers, got dtype {t.dtype}")
    if t.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets shape {t.shape} does not match logits shape {logits.shape}")
    n_classes = logits.shape[-1]
    bad = (t != ignore_index) & ((t < 0) | (t >= n_classes))
    if bool(bad.any()):
        raise ValueError(
            f"cross_entropy: target {int(t[bad].ravel()[0])} outside [0, {n_classes}) for logits shape {logits.shape}"
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
