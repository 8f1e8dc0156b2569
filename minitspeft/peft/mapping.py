"""``get_peft_model``: wrap a model's target layers with adapters and return a :class:`PeftModel` (after Hugging
Face ``peft``). The work happens in :mod:`~minitspeft.peft.injection`, which ``PeftModel`` calls."""

from __future__ import annotations

from ..nn.module import Module
from .config import GateConfig
from .model import PeftModel

__all__ = ["get_peft_model"]


def get_peft_model(model: Module, config, gate: GateConfig | None = None) -> PeftModel:
    """Wrap ``model``'s targets with LoRA, DoRA or bottleneck adapters (token-gated when ``gate`` is given), in place.

    Every parameter of ``model`` is frozen; the adapter weights, the
    thresholds ``tau``, the biases (``bias="all"``) and copies of the
    ``modules_to_save`` are trainable.

    Args:
        model: any :class:`~minitspeft.nn.Module` (adapters need transformer ``Block``s).
        config: a :class:`LoraConfig` (LoRA or DoRA) or :class:`AdapterConfig`.
        gate: a :class:`GateConfig` for TS-PEFT (arXiv 2511.16147), or None for dense PEFT.

    Returns:
        A :class:`PeftModel`.

    Raises:
        TypeError: for a config of the wrong type.
        ValueError: if a target or ``modules_to_save`` entry matches nothing
            (the message lists the candidates), a target is not a ``Linear``,
            or the model already holds adapters. Nothing is changed when it is raised.
    """
    return PeftModel(model, config, gate)
