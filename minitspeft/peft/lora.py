"""The LoRA layer (Hu et al. 2021) and its weight-decomposed form DoRA (Liu et al. 2024).

A target ``Linear`` named ``q_proj`` becomes a ``LoraLinear`` whose frozen
layer is ``q_proj.base_layer`` and whose update weights are
``q_proj.lora_A.weight`` ``(r, in_features)``, ``q_proj.lora_B.weight``
``(out_features, r)`` and, for DoRA, ``q_proj.lora_magnitude_vector``
``(out_features,)``, as in Hugging Face ``peft``.
"""

from __future__ import annotations

from .. import backend
from ..nn.layers import Dropout, Linear
from ..nn.module import Parameter
from ..tensor import Tensor
from .base import PeftLayer
from .config import GateConfig, LoraConfig
from .lora_linear import dora_linear, lora_linear, merged_weight, row_norm
from .low_rank_gate import gated_lora_update


class LoraLinear(PeftLayer):
    """LoRA: ``h = W0 x + bias + S * scaling * B A dropout(x)`` (``S = 1`` when ungated).

    DoRA (``use_dora=True``): with ``W' = W0 + scaling B A`` and its row norms
    ``||W'||_row`` (over the input dimension, shape ``(out_features,)``)::

        h = m / ||W'||_row * (W' x) + bias

    computed as the frozen output plus an update ``d`` (so a gate can act on it)::

        d = (m / ||W'||_row - 1) * (W0 x) + m / ||W'||_row * scaling * B A dropout(x)

    ``||W'||_row`` is treated as a constant in the backward pass, as the DoRA
    paper recommends (Liu et al. 2024, section 4.3) to save memory; ``m``
    starts at ``||W0 + scaling B A||_row``, so the layer starts as the base layer.
    Dropout, if any, applies to the low-rank branch's input only.

    Args:
        base_layer: the frozen ``Linear`` being adapted.
        config: a :class:`LoraConfig`.
        gate: a :class:`GateConfig` to gate the update per token, or None.
        positions: the model's longest sequence, for a router gate's per-position offsets (or None).

    Initialisation (as in ``peft``): ``init_lora_weights=True``: A
    Kaiming-uniform (bound ``1/sqrt(in_features)``), B zero; ``"gaussian"``: A
    normal with standard deviation ``1/r``, B zero; ``False``: both random
    (for tests and debugging; the layer does not start as the base layer).

    Input ``(..., in_features)``, output ``(..., out_features)``.

    Raises:
        TypeError: if ``base_layer`` is not a ``Linear``.
    """

    def __init__(self, base_layer: Linear, config: LoraConfig, gate: GateConfig | None = None,
                 positions: int | None = None):
        if not isinstance(base_layer, Linear):
            raise TypeError(f"LoraLinear: base_layer must be a Linear, got {type(base_layer).__name__}")
        dtype = base_layer.weight.dtype
        self.base_layer = base_layer
        self.r, self.scaling, self.use_dora = config.r, config.scaling, config.use_dora
        self.lora_dropout = Dropout(config.lora_dropout)
        self.lora_A = Linear(base_layer.in_features, config.r, bias=False, dtype=dtype)
        self.lora_B = Linear(config.r, base_layer.out_features, bias=False, dtype=dtype)
        init = config.init_lora_weights
        if init == "gaussian":
            values = backend.host_rng().normal(0.0, 1.0 / config.r, size=self.lora_A.weight.shape)
            self.lora_A.weight.data = backend.asarray(values.astype(dtype))
        if init:
            self.lora_B.weight.data = backend.xp.zeros_like(self.lora_B.weight.data)
        if self.use_dora:
            self.lora_magnitude_vector = Parameter(self.combined_weight_norm())
        self._init_gate(gate, dtype, base_layer.out_features, positions)
        self._unmerged_weight = None

    def delta_weight(self):
        """``scaling * B @ A`` as a backend array ``(out_features, in_features)``."""
        w = self.lora_B.weight
        return (w.data @ self.lora_A.weight.data) * w.dtype.type(self.scaling)

    def combined_weight_norm(self):
        """``||W0 + scaling B A||`` of each row (over the input dimension): a backend array ``(out_features,)``."""
        return row_norm(merged_weight(self.base_layer.weight, self.lora_A.weight, self.lora_B.weight, self.scaling))

    def delta(self, x: Tensor, b: Tensor) -> Tensor:
        """The update ``d`` (LoRA or DoRA, see the class docstring), shape ``(..., out_features)``."""
        lora = self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
        if not self.use_dora:
            return lora
        # the norm is a constant here (no gradient), as DoRA recommends
        scale = self.lora_magnitude_vector * Tensor(1 / self.combined_weight_norm())  # (out,)
        w0x = b - self.base_layer.bias if self.base_layer.bias is not None else b
        return (scale - 1) * w0x + scale * lora

    def _own_delta(self) -> bool:
        """This class's own ``delta``: the fused ops compute exactly that update, so a subclass or
        instance that replaces ``delta`` gets the generic path, which calls it."""
        return "delta" not in vars(self) and type(self).delta is LoraLinear.delta

    def forward(self, x: Tensor) -> Tensor:
        """``W0 x + bias + scaling B A x`` (see the class docstring). An ungated LoRA layer with no dropout
        at work runs it as one op through the merged weight (:func:`~minitspeft.peft.lora_linear.lora_linear`,
        or :func:`~minitspeft.peft.lora_linear.dora_linear` for DoRA)."""
        drop = self.lora_dropout
        if (self.gate is None and self._own_delta() and not self.disabled and not self.merged
                and (drop.p == 0 or not drop.training)):
            base, A, B = self.base_layer, self.lora_A.weight, self.lora_B.weight
            if self.use_dora:
                return dora_linear(x, base.weight, base.bias, A, B, self.lora_magnitude_vector, self.scaling)
            return lora_linear(x, base.weight, base.bias, A, B, self.scaling)
        return super().forward(x)

    def gated(self, x: Tensor, b: Tensor) -> Tensor:
        """The gated update. For the paper's gate on a LoRA (not DoRA) update, the fused low-rank op
        :func:`~minitspeft.peft.low_rank_gate.gated_lora_update`: the gate is judged from ``u = A x``
        and applied as ``b + (S u) (s B)^T``; otherwise the generic ``gate(b, delta(x, b))``."""
        gate, c = self.gate, self.gate.config
        if self.use_dora or not self._own_delta() or c.score != "ratio" or c.keep_ratio is not None:
            return super().gated(x, b)
        u = self.lora_A(self.lora_dropout(x))
        out, S, score = gated_lora_update(b, u, self.lora_B.weight, self.scaling, gate.tau, c.surrogate,
                                          c.temperature, c.eps, c.grad_through_ratio)
        gate.record(S, score, gate.tau.data.reshape(()))
        return out

    def merge(self) -> None:
        """Fold the update into the base weight (idempotent); keeps an independent copy to unmerge.

        LoRA: ``W0 + scaling B A``; DoRA: ``m / ||W'||_row * W'`` row by row.

        Raises:
            RuntimeError: on a gated layer: a token-dependent update cannot be
                folded into one weight matrix.
        """
        self._refuse_gated_merge("merge")
        if self.merged:
            return
        w = self.base_layer.weight
        self._unmerged_weight = w.data.copy()
        merged = merged_weight(w, self.lora_A.weight, self.lora_B.weight, self.scaling)
        if self.use_dora:
            merged = merged * (self.lora_magnitude_vector.data / row_norm(merged))[:, None]
        w.data = merged
        self.merged = True

    def unmerge(self) -> None:
        """Restore the exact base weight saved by :meth:`merge` (no-op when not merged)."""
        if not self.merged:
            return
        self.base_layer.weight.data = self._unmerged_weight
        self._unmerged_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        kind = "DoRA" if self.use_dora else "LoRA"
        return f"{kind}, r={self.r}, scaling={self.scaling:.4g}, gated={self.gate is not None}, merged={self.merged}"

