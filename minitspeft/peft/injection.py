"""Adapter injection: find the target layers, check everything, then wrap them in place (after Hugging Face
``peft``'s ``inject_adapter_in_model``).

:func:`inject_adapter_in_model` is what :class:`~minitspeft.peft.model.PeftModel`
calls when it is built; it returns an :class:`Injection`, the record that lets
``PeftModel.unload`` put the model back exactly as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..nn.layers import Linear
from ..nn.module import Module
from ..nn.transformer import Block
from .adapter import AdapterLayer
from .base import ModulesToSaveWrapper, PeftLayer
from .config import AdapterConfig, GateConfig, LoraConfig
from .gate import check_gate_dtype
from .lora import LoraLinear

__all__ = ["Injection", "inject_adapter_in_model"]


@dataclass
class Injection:
    """What :func:`inject_adapter_in_model` changed.

    Attributes:
        replaced: ``(dotted name, original module)`` for every wrapped layer and
            ``modules_to_save`` entry, in the order they were replaced.
        requires_grad: ``{id(parameter): requires_grad}`` of the model's parameters before injection.
    """

    replaced: list = field(default_factory=list)
    requires_grad: dict = field(default_factory=dict)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _lora_targets(modules: dict, config: LoraConfig) -> list:
    linear = [n for n, m in modules.items() if n and isinstance(m, Linear)]
    spec = config.target_modules
    if spec == "all-linear":
        hits = [n for n in linear if not _matches(n, "head")]
        if not hits:
            raise ValueError("get_peft_model: 'all-linear' found no Linear layer besides the output head")
        return hits
    if isinstance(spec, str):
        hits = [n for n in linear if re.fullmatch(spec, n)]
        if not hits:
            raise ValueError(f"get_peft_model: target_modules pattern {spec!r} matches no Linear layer; "
                             f"Linear layers are {linear}")
        return hits
    targets = []
    for t in spec:
        hits = [n for n in modules if n and _matches(n, t)]
        if not hits:
            raise ValueError(f"get_peft_model: target module {t!r} matches no layer; Linear layers are {linear}")
        for n in hits:
            if not isinstance(modules[n], Linear):
                raise ValueError(f"get_peft_model: target {n!r} is a {type(modules[n]).__name__}, not a Linear")
        targets += [n for n in hits if n not in targets]
    return targets


def _adapter_targets(modules: dict, config: AdapterConfig) -> list:
    blocks = [n for n, m in modules.items() if isinstance(m, Block)]
    if not blocks:
        raise ValueError("get_peft_model: bottleneck adapters need transformer Blocks; the model has none")
    parts = ("attn", "mlp") if config.placement == "houlsby" else ("mlp",)
    return [f"{b}.{p}" for b in blocks for p in parts]


def _saved_modules(modules: dict, names) -> list:
    saved = []
    for s in names or []:
        hits = [n for n in modules if n and _matches(n, s)]
        if not hits:
            raise ValueError(f"get_peft_model: modules_to_save entry {s!r} matches no module; "
                             f"modules are {[n for n in modules if n]}")
        saved += [n for n in hits if n not in saved]
    return saved


def _check_request(model: Module, config, gate) -> tuple:
    """``(modules, targets, saved)`` after every check of :func:`inject_adapter_in_model` (see there)."""
    if not isinstance(model, Module):
        raise TypeError(f"get_peft_model: model must be a minitspeft Module, got {type(model).__name__}")
    if not isinstance(config, (LoraConfig, AdapterConfig)):
        raise TypeError(f"get_peft_model: config must be a LoraConfig or AdapterConfig, got {type(config).__name__}")
    if gate is not None and not isinstance(gate, GateConfig):
        raise TypeError(f"get_peft_model: gate must be a GateConfig or None, got {type(gate).__name__}")
    modules = dict(model.named_modules())
    if any(isinstance(m, (PeftLayer, ModulesToSaveWrapper)) for m in modules.values()):
        raise ValueError("get_peft_model: the model already holds adapters; wrap a fresh model")
    if isinstance(config, LoraConfig):
        targets = _lora_targets(modules, config)
    else:
        targets = _adapter_targets(modules, config)
    if gate is not None:
        for dtype in {p.dtype for name in targets for p in modules[name].parameters()}:
            check_gate_dtype("get_peft_model", gate, dtype)
    saved = _saved_modules(modules, config.modules_to_save)
    overlap = [n for n in saved if any(t == n or t.startswith(n + ".") for t in targets)]
    if overlap:
        raise ValueError(f"get_peft_model: modules_to_save {overlap} contain adapter targets; pick one or the other")
    return modules, targets, saved


def inject_adapter_in_model(model: Module, config, gate: GateConfig | None = None) -> Injection:
    """Wrap ``model``'s targets in place with LoRA, DoRA or bottleneck adapters (token-gated when ``gate`` is given).

    Every parameter of ``model`` is frozen; the adapter weights, the gates'
    thresholds and routers, the biases (``bias="all"``) and copies of the
    ``modules_to_save`` are created trainable.

    Args:
        model: any :class:`~minitspeft.nn.Module` (adapters need transformer ``Block``s).
        config: a :class:`LoraConfig` (LoRA or DoRA) or :class:`AdapterConfig`.
        gate: a :class:`GateConfig` for TS-PEFT (arXiv 2511.16147), or None for dense PEFT.

    Returns:
        The :class:`Injection` record.

    Raises:
        TypeError: for a config of the wrong type.
        ValueError: if a target or ``modules_to_save`` entry matches nothing
            (the message lists the candidates), a target is not a ``Linear``,
            or the model already holds adapters. Nothing is changed when it is raised.
    """
    modules, targets, saved = _check_request(model, config, gate)
    # everything is checked: now change the model
    injection = Injection(requires_grad={id(p): p.requires_grad for p in model.parameters()})
    model.requires_grad_(False)
    positions = model.pos_emb.weight.shape[0] if isinstance(getattr(model, "pos_emb", None), Module) else None
    for name in targets:  # adapter weights and thresholds are created trainable
        original = modules[name]
        if isinstance(config, LoraConfig):
            layer = LoraLinear(original, config, gate, positions=positions)
        else:
            block = modules[name.rpartition(".")[0]]
            layer = AdapterLayer(original, block.ln1.normalized_shape, config, gate, dtype=block.ln1.weight.dtype,
                                 positions=positions)
        model.set_submodule(name, layer)
        injection.replaced.append((name, original))
    for name in saved:
        model.set_submodule(name, ModulesToSaveWrapper(modules[name]))
        injection.replaced.append((name, modules[name]))
    if getattr(config, "bias", "none") == "all":
        for name, p in model.named_parameters():
            if name.endswith(".bias") and ".original_module." not in name:
                p.requires_grad_(True)
    return injection
