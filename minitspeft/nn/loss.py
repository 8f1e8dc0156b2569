"""Loss modules: ``CrossEntropyLoss`` (after ``torch.nn.CrossEntropyLoss``)."""

from __future__ import annotations

from .. import functional as F
from ..checks import check, check_number, is_int
from ..tensor import Tensor
from .module import Module

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss(Module):
    """Cross-entropy between logits and integer class targets, as PyTorch's ``torch.nn.CrossEntropyLoss``;
    ``loss(logits, targets)`` is ``functional.cross_entropy(logits, targets, ...)`` with these settings.

    Args:
        reduction: ``"mean"`` (over the targets that are not ignored), ``"sum"`` or ``"none"``.
        ignore_index: a target value that adds no loss and no gradient (default -100, as in PyTorch).
        label_smoothing: in ``[0, 1)``; the target distribution becomes ``(1 - eps) onehot + eps / C``.
        weight: must be None: per-class weights are not implemented (``functional.cross_entropy`` has none).

    The settings after ``weight`` are keywords only: PyTorch's second and fourth positions hold its
    deprecated ``size_average`` and ``reduce``, which are not taken here.

    Forward: logits ``(N, C)`` or ``(..., C)`` (float), targets ``(N,)`` or ``(...)`` (integers in ``[0, C)``
    or ``ignore_index``) -> a scalar, or per-position losses for ``"none"``. One difference from PyTorch:
    a ``"mean"`` over targets that are all ignored is 0 here, where PyTorch gives NaN.

    Raises:
        ValueError: for a ``weight``, a bad setting (when built), or the targets ``functional.cross_entropy``
            refuses.
    """

    def __init__(self, weight=None, *, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        if weight is not None:
            raise ValueError("CrossEntropyLoss: per-class weight is not implemented here; pass weight=None")
        check(reduction in ("mean", "sum", "none"), "CrossEntropyLoss", "reduction", reduction,
              "'mean', 'sum' or 'none'")
        check(is_int(ignore_index), "CrossEntropyLoss", "ignore_index", ignore_index, "an integer")
        check_number("CrossEntropyLoss", "label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.reduction, self.ignore_index, self.label_smoothing = reduction, int(ignore_index), float(label_smoothing)

    def forward(self, logits: Tensor, targets) -> Tensor:
        return F.cross_entropy(logits, targets, reduction=self.reduction, ignore_index=self.ignore_index,
                               label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}"
