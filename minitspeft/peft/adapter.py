"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021), optionally token-gated.

An adapter wraps a sub-layer (a block's ``attn`` or ``mlp``) whose output
``h`` has ``n_embd`` channels and adds ``d = adapter_up(act(adapter_down(h)))``:
``out = h + d``. ``adapter_up`` starts at zero, so the adapter starts as the
identity. The frozen sub-layer becomes ``attn.base_layer`` (or ``mlp.base_layer``).
"""

from __future__ import annotations

from .. import backend
from .. import functional as F
from ..nn.layers import Linear
from ..nn.module import Module
from ..tensor import Tensor
from .base import PeftLayer
from .config import AdapterConfig, GateConfig

ACTIVATIONS = {"gelu": F.gelu, "relu": lambda t: t.relu(), "tanh": lambda t: t.tanh()}


class AdapterLayer(PeftLayer):
    """``out = h + S * adapter_up(act(adapter_down(h)))`` with ``h = base_layer(x)`` (``S = 1`` when ungated).

    Args:
        base_layer: the frozen sub-layer; its output must be ``(..., n_embd)``.
        n_embd: channels of ``h``.
        config: an :class:`AdapterConfig` (bottleneck size, activation).
        gate: a :class:`GateConfig` to gate the update per token, or None.
        positions: the model's longest sequence, for a router gate's per-position offsets (or None).

    Raises:
        ValueError: if ``h`` does not have ``n_embd`` channels (at forward time).
    """

    def __init__(self, base_layer: Module, n_embd: int, config: AdapterConfig, gate: GateConfig | None = None,
                 dtype=None, positions: int | None = None):
        self.base_layer = base_layer
        self.n_embd = n_embd
        self.bottleneck = config.bottleneck_size(n_embd)
        self.activation = config.activation
        self.adapter_down = Linear(n_embd, self.bottleneck, dtype=dtype)
        self.adapter_up = Linear(self.bottleneck, n_embd, dtype=dtype)
        xp = backend.xp
        self.adapter_up.weight.data = xp.zeros_like(self.adapter_up.weight.data)
        self.adapter_up.bias.data = xp.zeros_like(self.adapter_up.bias.data)
        self._init_gate(gate, self.adapter_up.weight.dtype, n_embd, positions)

    def delta(self, x: Tensor, b: Tensor) -> Tensor:
        """The adapter's update from the sub-layer output ``b`` ``(..., n_embd)``."""
        if b.shape[-1] != self.n_embd:
            raise ValueError(f"AdapterLayer: sub-layer output {b.shape} does not have n_embd={self.n_embd} channels")
        return self.adapter_up(ACTIVATIONS[self.activation](self.adapter_down(b)))

    def merge(self) -> None:
        """Refused: a bottleneck adapter is non-linear and cannot be folded into a weight.

        Raises:
            RuntimeError: always (naming the reason).
        """
        self._refuse_gated_merge("merge")
        raise RuntimeError("merge: a bottleneck adapter is non-linear (down, activation, up), "
                           "so it cannot be folded into the base weights; use disable_adapter() instead")

    def unmerge(self) -> None:
        """Nothing to undo: adapters never merge."""

    def extra_repr(self) -> str:
        return f"bottleneck={self.bottleneck}, activation={self.activation!r}, gated={self.gate is not None}"
