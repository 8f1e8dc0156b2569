"""``PeftLayer`` (what every wrapped layer shares: a frozen path, an update, an optional token gate)
and ``ModulesToSaveWrapper`` (a whole module trained next to the adapters)."""

from __future__ import annotations

import copy

from ..nn.module import Module
from ..tensor import Tensor
from .config import GateConfig
from .gate import TokenGate


class PeftLayer(Module):
    """Base of the wrapped layers. A subclass sets ``base_layer`` and implements ``delta(x, b)``.

    ``forward(x)`` computes the frozen output ``b = base_layer(x)`` and returns
    ``b + d`` with ``d = delta(x, b)``, or ``b + S * d`` when a gate is set
    (TS-PEFT, arXiv 2511.16147). While ``merged`` it returns ``b`` (the update
    is inside the weight); while ``disabled`` it returns the base output,
    unmerging first if needed.
    """

    def _init_gate(self, gate: GateConfig | None, dtype, channels: int, positions: int | None = None) -> None:
        self.gate = TokenGate(gate, dtype=dtype, channels=channels, positions=positions) if gate is not None else None
        self.disabled = False
        self.merged = False

    def delta(self, x: Tensor, b: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self.disabled and self.merged:
            self.unmerge()  # a disabled layer must compute the true base output (as peft does)
        b = self.base_layer(x)
        if self.disabled or self.merged:
            if self.gate is not None:
                self.gate.last_S = None  # no gate ran in this pass: the regulariser skips this layer
            return b
        if self.gate is not None:
            return self.gated(x, b)
        return b + self.delta(x, b)

    def gated(self, x: Tensor, b: Tensor) -> Tensor:
        """``b + S d`` through the layer's gate (a subclass may compute the same more cheaply)."""
        return self.gate(b, self.delta(x, b))

    def merge(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def unmerge(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _refuse_gated_merge(self, op: str) -> None:
        if self.gate is not None:
            raise RuntimeError(
                f"{op}: this layer is token-gated (TS-PEFT); its update is applied or not per token, "
                "so it cannot be folded into the base weight W0"
            )


class ModulesToSaveWrapper(Module):
    """A module trained in full next to the adapters: ``original_module`` (frozen) and a trainable
    copy ``modules_to_save``, used unless the adapter is disabled (as in ``peft``)."""

    def __init__(self, module: Module):
        self.original_module = module
        self.modules_to_save = copy.deepcopy(module)
        self.modules_to_save.requires_grad_(True)
        self.disabled = False

    def forward(self, *args, **kwargs):
        active = self.original_module if self.disabled else self.modules_to_save
        return active(*args, **kwargs)
