"""The LoRA layer (Hu et al. 2021), optionally token-gated (TS-PEFT, arXiv 2511.16147).

A target ``Linear`` named ``q_proj`` becomes a ``LoraLinear`` whose frozen
layer is ``q_proj.base_layer`` and whose update weights are
``q_proj.lora_A.weight`` ``(r, in_features)`` and ``q_proj.lora_B.weight``
``(out_features, r)``, as in Hugging Face ``peft``.
"""

from __future__ import annotations

from .. import backend
from ..nn.layers import Dropout, Linear
from ..nn.module import Module
from ..tensor import Tensor
from .config import GateConfig, LoraConfig
from .gate import TokenGate


class LoraLinear(Module):
    """``h = W0 x + bias + S * scaling * B A dropout(x)``, with ``S = 1`` when ungated.

    Args:
        base_layer: the frozen ``Linear`` being adapted.
        config: a :class:`LoraConfig` (``r``, ``lora_alpha``, ``lora_dropout``,
            ``use_rslora``, ``init_lora_weights``).
        gate: a :class:`GateConfig` to gate the update per token, or None.

    Initialisation (as in ``peft``): A Kaiming-uniform (bound ``1/sqrt(in_features)``),
    B zero, so the layer starts as the base layer. With
    ``init_lora_weights=False`` B is random too (for tests and debugging).

    Input ``(..., in_features)``, output ``(..., out_features)``.
    """

    def __init__(self, base_layer: Linear, config: LoraConfig, gate: GateConfig | None = None):
        if not isinstance(base_layer, Linear):
            raise TypeError(f"LoraLinear: base_layer must be a Linear, got {type(base_layer).__name__}")
        dtype = base_layer.weight.dtype
        self.base_layer = base_layer
        self.r = config.r
        self.scaling = config.scaling
        self.lora_dropout = Dropout(config.lora_dropout)
        self.lora_A = Linear(base_layer.in_features, config.r, bias=False, dtype=dtype)
        self.lora_B = Linear(config.r, base_layer.out_features, bias=False, dtype=dtype)
        if config.init_lora_weights:
            self.lora_B.weight.data = backend.xp.zeros_like(self.lora_B.weight.data)
        self.gate = TokenGate(gate, dtype=dtype) if gate is not None else None
        self.disabled = False
        self.merged = False
        self._unmerged_weight = None

    def delta(self, x: Tensor) -> Tensor:
        """The update ``scaling * B A dropout(x)``, shape ``(..., out_features)``."""
        return self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        b = self.base_layer(x)
        if self.disabled or self.merged:
            return b
        d = self.delta(x)
        return self.gate(b, d) if self.gate is not None else b + d

    def delta_weight(self):
        """``scaling * B @ A`` as a backend array ``(out_features, in_features)``."""
        return (self.lora_B.weight.data @ self.lora_A.weight.data) * self.lora_B.weight.dtype.type(self.scaling)

    def merge(self) -> None:
        """Fold the update into the base weight (idempotent); keeps an independent copy to unmerge.

        Raises:
            RuntimeError: on a gated layer: a token-dependent update cannot be
                folded into one weight matrix.
        """
        if self.gate is not None:
            raise RuntimeError(
                "merge: this LoRA layer is token-gated (TS-PEFT); its update depends on each token's gate, "
                "so it cannot be folded into the base weight W0"
            )
        if self.merged:
            return
        w = self.base_layer.weight
        self._unmerged_weight = w.data.copy()
        w.data = w.data + self.delta_weight()
        self.merged = True

    def unmerge(self) -> None:
        """Restore the base weight saved by :meth:`merge` (no-op when not merged)."""
        if not self.merged:
            return
        self.base_layer.weight.data = self._unmerged_weight
        self._unmerged_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:.4g}, gated={self.gate is not None}, merged={self.merged}"

