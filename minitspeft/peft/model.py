"""``get_peft_model`` and ``PeftModel``: wrap a model's target layers, freeze the rest (after Hugging Face ``peft``)."""

from __future__ import annotations

import contextlib

from .. import backend
from ..nn.layers import Linear
from ..nn.module import Module
from ..tensor import Tensor
from .config import GateConfig, LoraConfig
from .gate import TokenGate
from .lora import LoraLinear


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


class PeftModel(Module):
    """A model whose target layers carry adapters; everything else is frozen.

    Build it with :func:`get_peft_model`. Calling it calls the wrapped model.
    Parameter names gain the prefix ``base_model.``.

    Attributes:
        base_model: the wrapped model (changed in place).
        peft_config: the :class:`LoraConfig`.
        gate_config: the :class:`GateConfig`, or None for dense PEFT.
    """

    def __init__(self, model: Module, config: LoraConfig, gate: GateConfig | None = None):
        self.base_model = model
        self.peft_config = config
        self.gate_config = gate

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    # ------------------------------------------------------------ adapters
    def lora_layers(self):
        """Yield ``(name, LoraLinear)`` for every adapted layer (names relative to the base model)."""
        for name, m in self.base_model.named_modules():
            if isinstance(m, LoraLinear):
                yield name, m

    def gates(self):
        """Yield ``(layer_name, TokenGate)`` for every gated layer."""
        for name, m in self.lora_layers():
            if m.gate is not None:
                yield name, m.gate

    def thresholds(self) -> list:
        """The ``tau`` Parameters of all gates."""
        return [g.tau for _, g in self.gates()]

    def print_trainable_parameters(self) -> None:
        """Print ``trainable params: N || all params: M || trainable%: P`` (as ``peft`` does)."""
        trainable, total = self.num_parameters(trainable_only=True), self.num_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    def optimizer_groups(self, lr: float, weight_decay: float = 0.0, tau_lr: float | None = None) -> list:
        """Parameter groups for an optimiser: trainable weights, then the thresholds with their own
        learning rate (``tau_lr``, else the gate config's ``tau_lr``, else ``lr``) and no weight decay."""
        taus = {id(t) for t in self.thresholds()}
        weights = [p for p in self.parameters() if p.requires_grad and id(p) not in taus]
        groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}]
        if taus:
            t_lr = tau_lr or (self.gate_config.tau_lr if self.gate_config else None) or lr
            groups.append({"params": self.thresholds(), "lr": t_lr, "weight_decay": 0.0, "name": "tau"})
        return groups

    # -------------------------------------------------------------- gates
    def sparsity_loss(self) -> Tensor:
        """The gate regulariser over all gated tokens and layers of the last forward pass.

        ``sparsity_weight * mean(S)``, or ``sparsity_weight * (mean(S) - target_density)^2``
        when a target is set (TS-PEFT.md, derived here). ``S`` carries the
        surrogate gradient, so the loss pushes ``tau`` up. A zero scalar when
        there is no gate or the weight is 0.
        """
        gc = self.gate_config
        S = [g.last_S for _, g in self.gates() if g.last_S is not None]
        dtype = S[0].dtype if S else backend.get_default_dtype()
        if gc is None or not S or gc.sparsity_weight == 0:
            return Tensor(backend.xp.zeros((), dtype=dtype))
        count = sum(s.size for s in S)
        total = S[0].sum()
        for s in S[1:]:
            total = total + s.sum()
        density = total * (1.0 / count)
        if gc.target_density is None:
            return density * gc.sparsity_weight
        gap = density - gc.target_density
        return gap * gap * gc.sparsity_weight

    def project_thresholds(self) -> None:
        """Apply ``tau <- max(tau, 0)`` to every gate (the optimisers here already do it after each step)."""
        for tau in self.thresholds():
            tau.data = backend.xp.maximum(tau.data, tau.dtype.type(0))

    def reset_gate_stats(self) -> None:
        """Forget every gate's running per-position counts."""
        for _, g in self.gates():
            g.reset_stats()

    def gate_stats(self) -> dict:
        """Per gated layer: ``density`` and ``mean_r`` of the last forward, ``tau``, and
        ``position_density`` (NumPy ``(T,)``, running since the last reset)."""
        return {
            name: {
                "density": g.last_density,
                "tau": float(g.tau.data),
                "mean_r": g.last_mean_r,
                "position_density": g.position_density(),
            }
            for name, g in self.gates()
        }

    # ------------------------------------------------------ merge, disable
    def merge_adapter(self) -> None:
        """Fold every LoRA update into its base weight (idempotent).

        Raises:
            RuntimeError: on a gated model: a token-dependent update cannot be
                folded into ``W0``. Nothing is merged when it is raised.
        """
        if self.gate_config is not None:
            raise RuntimeError(
                "merge_adapter: this model is token-gated (TS-PEFT): each token's update is applied or not "
                "by its own gate, so the updates cannot be folded into the base weights W0"
            )
        for _, m in self.lora_layers():
            m.merge()

    def unmerge_adapter(self) -> None:
        """Restore the base weights saved by :meth:`merge_adapter`."""
        for _, m in self.lora_layers():
            m.unmerge()

    @contextlib.contextmanager
    def disable_adapter(self):
        """Context manager: inside it the model computes the base model's output (nests)."""
        layers = [m for _, m in self.lora_layers()]
        previous = [m.disabled for m in layers]
        for m in layers:
            m.disabled = True
        try:
            yield self
        finally:
            for m, was in zip(layers, previous, strict=True):
                m.disabled = was


def get_peft_model(model: Module, config: LoraConfig, gate: GateConfig | None = None) -> PeftModel:
    """Wrap ``model``'s target ``Linear`` layers with LoRA (token-gated when ``gate`` is given), in place.

    Every parameter of ``model`` is frozen, then the adapter weights, the
    thresholds ``tau``, the biases (``bias="all"``) and the modules in
    ``config.modules_to_save`` are made trainable.

    Args:
        model: any :class:`~minitspeft.nn.Module`.
        config: a :class:`LoraConfig`.
        gate: a :class:`GateConfig` for TS-PEFT, or None for dense LoRA.

    Returns:
        A :class:`PeftModel`.

    Raises:
        TypeError: for a config of the wrong type.
        ValueError: if a ``target_modules`` or ``modules_to_save`` entry
            matches no layer (the message lists the candidates), if a target
            is not a ``Linear``, or if the model already holds LoRA layers.
            Nothing is changed when it is raised.
    """
    if not isinstance(config, LoraConfig):
        raise TypeError(f"get_peft_model: config must be a LoraConfig, got {type(config).__name__}")
    if gate is not None and not isinstance(gate, GateConfig):
        raise TypeError(f"get_peft_model: gate must be a GateConfig or None, got {type(gate).__name__}")
    modules = dict(model.named_modules())
    if any(isinstance(m, (LoraLinear, TokenGate)) for m in modules.values()):
        raise ValueError("get_peft_model: the model already holds LoRA layers; wrap a fresh model")
    linear_names = [n for n, m in modules.items() if isinstance(m, Linear)]
    targets = []
    for t in config.target_modules:
        hits = [n for n in modules if n and _matches(n, t)]
        if not hits:
            raise ValueError(f"get_peft_model: target module {t!r} matches no layer; Linear layers are {linear_names}")
        for n in hits:
            if not isinstance(modules[n], Linear):
                raise ValueError(f"get_peft_model: target {n!r} is a {type(modules[n]).__name__}, not a Linear")
        targets += [n for n in hits if n not in targets]
    saved = []
    for s in config.modules_to_save or []:
        hits = [n for n in modules if n and _matches(n, s)]
        if not hits:
            raise ValueError(f"get_peft_model: modules_to_save entry {s!r} matches no module; modules are "
                             f"{[n for n in modules if n]}")
        saved += hits

    model.requires_grad_(False)
    for name in targets:  # adapter weights and thresholds are created trainable
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, LoraLinear(modules[name], config, gate))
    if config.bias == "all":
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.requires_grad_(True)
    for name in saved:  # trained in place (peft keeps a separate copy; this project does not yet)
        model.get_submodule(name).requires_grad_(True)
    return PeftModel(model, config, gate)

