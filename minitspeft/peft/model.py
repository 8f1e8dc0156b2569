"""``PeftModel``: a model with adapters in place; gate statistics, merging, disabling, saving (after ``peft``)."""

from __future__ import annotations

import contextlib

from .. import backend
from ..nn.module import Module, module_backend
from ..tensor import Tensor
from .base import ModulesToSaveWrapper, PeftLayer
from .config import AdapterConfig, GateConfig
from .injection import inject_adapter_in_model
from .saving import load_adapter, save_adapter

_ADAPTER_PARTS = (".lora_A.", ".lora_B.", ".lora_magnitude_vector", ".gate.tau", ".gate.router_",
                  ".adapter_down.", ".adapter_up.", ".modules_to_save.")


class PeftModel(Module):
    """A model whose target layers carry adapters; everything else is frozen.

    Build it with ``get_peft_model(model, config, gate)`` (or ``PeftModel(model, config, gate)``, the
    same); calling it calls the wrapped model.
    Parameter names gain the prefix ``base_model.``; the names of
    :meth:`adapter_state_dict` and :meth:`gate_stats` are relative to the
    base model, and adapter files name the arrays as peft does,
    ``base_model.model.`` plus that name (see :mod:`~minitspeft.peft.saving`).

    One adapter per model: :attr:`active_adapter` is always peft's default
    name ``"default"``, and ``peft_config`` is that adapter's config itself
    (in peft it is a dict ``{"default": config}``).

    Attributes:
        base_model: the wrapped model (changed in place); also :meth:`get_base_model`.
        peft_config: the :class:`LoraConfig` or :class:`AdapterConfig`.
        gate_config: the :class:`GateConfig`, or None for dense PEFT.
    """

    def __init__(self, model: Module, config, gate: GateConfig | None = None):
        """Wrap ``model``'s targets in place (:func:`~minitspeft.peft.injection.inject_adapter_in_model`).
        With ``config.inference_mode`` the adapter is built frozen, as in peft. The adapter's arrays are
        made on the backend of ``model``'s parameters (as peft puts them on the base layer's device).

        Raises:
            TypeError, ValueError: as ``inject_adapter_in_model``; ``model`` is unchanged then.
        """
        with backend.using(module_backend(model)):
            injection = inject_adapter_in_model(model, config, gate)
        self.base_model = model
        self.peft_config = config
        self.gate_config = gate
        self._replaced = injection.replaced  # (name, original module): to unwrap
        self._requires_grad = injection.requires_grad
        if config.inference_mode:
            model.requires_grad_(False)

    @property
    def active_adapter(self) -> str:
        """``"default"``, peft's name for a model's one adapter (read-only: there is only one here)."""
        return "default"

    def get_base_model(self) -> Module:
        """The wrapped model, with its adapters in place (as Hugging Face peft's ``get_base_model``).

        It is ``self.base_model``: in peft that attribute is a tuner around the
        model and ``get_base_model()`` unwraps it; here there is no tuner.
        """
        return self.base_model

    def generate(self, *args, **kwargs):
        """The base model's ``generate`` (a causal :class:`~minitspeft.nn.Transformer`'s), through the adapters
        and gates, as ``PeftModel.generate`` in Hugging Face peft; same arguments and result.

        Raises:
            AttributeError: if the base model has no ``generate``.
        """
        if not hasattr(self.base_model, "generate"):
            raise AttributeError(f"generate: the base model, a {type(self.base_model).__name__}, has no generate "
                                 "(a causal Transformer has)")
        return self.base_model.generate(*args, **kwargs)

    @property
    def method(self) -> str:
        """``"lora"``, ``"dora"`` or ``"adapter"``, prefixed ``"ts-"`` when gated."""
        return ("ts-" if self.gate_config is not None else "") + self.peft_config.method

    def forward(self, *args, **kwargs):
        """The base model's forward, with the adapters (and gates) in it. Each gate's ``last_S`` of the
        previous pass (and the graph it holds) is let go first, so two graphs are never alive at once."""
        for _, gate in self.gates():
            gate.last_S = None
        return self.base_model(*args, **kwargs)

    # ------------------------------------------------------------ adapters
    def peft_layers(self):
        """Yield ``(name, layer)`` for every wrapped layer (LoRA, DoRA or adapter), names relative to the base model."""
        for name, m in self.base_model.named_modules():
            if isinstance(m, PeftLayer):
                yield name, m

    def gates(self):
        """Yield ``(layer_name, TokenGate)`` for every gated layer."""
        for name, m in self.peft_layers():
            if m.gate is not None:
                yield name, m.gate

    def thresholds(self) -> list:
        """The ``tau`` Parameters of all gates (none for gates with a ``keep_ratio``)."""
        return [g.tau for _, g in self.gates() if g.tau is not None]

    def adapter_state_dict(self) -> dict:
        """``{name: array}`` (copies) of what :meth:`save_pretrained` writes: adapter weights, thresholds,
        trained copies of ``modules_to_save``, and the biases when ``bias="all"``.

        Names are relative to the base model (``blocks.0.attn.q_proj.lora_A.weight``,
        ``head.modules_to_save.weight``), as ever; the file gives them peft's names
        (``base_model.model.blocks.0.attn.q_proj.lora_A.weight``, ``base_model.model.head.weight``)."""
        bias_all = getattr(self.peft_config, "bias", "none") == "all"
        return {name: p.data.copy() for name, p in self.base_model.named_parameters()
                if any(part in "." + name for part in _ADAPTER_PARTS)
                or (bias_all and name.endswith(".bias") and ".original_module." not in name)}

    def print_trainable_parameters(self) -> None:
        """Print ``trainable params: N || all params: M || trainable%: P`` (as ``peft`` does)."""
        trainable, total = self.num_parameters(trainable_only=True), self.num_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    def routers(self) -> list:
        """The router Parameters (``router_weight``, ``router_position_bias``) of gates with ``score="router"``."""
        return [p for _, g in self.gates() for name, p in g.named_parameters() if name.startswith("router_")]

    def optimizer_groups(self, lr: float, weight_decay: float = 0.0, tau_lr: float | None = None) -> list:
        """Parameter groups for an optimiser: the trainable weights; the thresholds (``"name": "tau"``) with
        their own learning rate (``tau_lr``, else the gate config's ``tau_lr``, else ``lr``); the routers
        (``"name": "router"``, the gate config's ``router_lr`` or ``lr``). Gate groups have no weight decay
        and ``frozen_until`` set to the gate config's ``warmup_steps``: the optimiser leaves them where they
        are for that many steps (see :class:`~minitspeft.optim.Optimizer`)."""
        taus, routers = self.thresholds(), self.routers()
        gate_ids = {id(p) for p in taus + routers}
        weights = [p for p in self.parameters() if p.requires_grad and id(p) not in gate_ids]
        groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}]
        gc = self.gate_config
        frozen = {"weight_decay": 0.0, "frozen_until": gc.warmup_steps} if gc is not None else {}
        if taus:
            groups.append({"params": taus, "lr": tau_lr or gc.tau_lr or lr, "name": "tau", **frozen})
        if routers:
            groups.append({"params": routers, "lr": gc.router_lr or lr, "name": "router", **frozen})
        return groups

    # -------------------------------------------------------------- gates
    def sparsity_loss(self) -> Tensor:
        """The gate regulariser over all gated tokens and layers of the last forward pass (derived here).

        ``sparsity_weight * mean(S)``, or ``sparsity_weight * (mean(S) - target_density)^2``
        when a target is set, plus the density-bounds penalty
        ``bounds_weight * mean_l(relu(density_floor - D_l)^2 + relu(D_l - density_ceiling)^2)``
        over the layers' densities ``D_l = mean(S_l)`` (after DyT's minimum-rate
        loss). ``S`` carries the surrogate gradient, so the first term pushes
        the thresholds up and the bounds push each layer back inside them. A
        zero scalar when there is no gate or both weights are 0.
        """
        gc = self.gate_config
        S = [g.last_S for _, g in self.gates() if g.last_S is not None]
        dtype = S[0].dtype if S else backend.get_default_dtype()
        loss = Tensor(backend.xp.zeros((), dtype=dtype))
        if gc is None or not S:
            return loss
        S = [s for s in S if s.size]  # an empty batch gates no token
        if not S:
            return loss
        if gc.sparsity_weight:
            count = sum(s.size for s in S)
            total = S[0].sum()
            for s in S[1:]:
                total = total + s.sum()
            density = total * (1.0 / count)
            if gc.target_density is None:
                loss = density * gc.sparsity_weight
            else:
                gap = density - gc.target_density
                loss = gap * gap * gc.sparsity_weight
        if gc.bounds_weight and (gc.density_floor > 0 or gc.density_ceiling < 1):
            penalty = None
            for s in S:
                d_l = s.mean()
                below, above = (gc.density_floor - d_l).relu(), (d_l - gc.density_ceiling).relu()
                term = below * below + above * above
                penalty = term if penalty is None else penalty + term
            loss = loss + penalty * (gc.bounds_weight / len(S))
        return loss

    def reset_gate_stats(self) -> None:
        """Forget every gate's running per-position counts."""
        for _, g in self.gates():
            g.reset_stats()

    def gate_stats(self) -> dict:
        """Per gated layer: ``density`` and ``mean_r`` of the last forward, ``tau``,
        ``position_density`` (NumPy ``(T,)``, running since the last reset), and two failure flags:
        ``dead`` (every gate closed, so no gradient reaches the update directly) and ``stuck``
        (the surrogate derivative is ~0 at every token, so ``tau`` cannot move)."""
        return {
            name: {"density": g.last_density, "tau": None if g.tau is None else float(g.tau.data),
                   "mean_r": g.last_mean_r,
                   "position_density": g.position_density(), "dead": g.dead, "stuck": g.stuck}
            for name, g in self.gates()
        }

    def gate_problems(self, stats: dict | None = None) -> str | None:
        """A sentence naming the dead layers and stuck thresholds of the last forward, or None.

        ``stats`` is a :meth:`gate_stats` result to reuse (computed when omitted)."""
        stats = self.gate_stats() if stats is None else stats
        dead = [n for n, v in stats.items() if v["dead"]]
        stuck = [n for n, v in stats.items() if v["stuck"]]
        parts = []
        if dead:
            parts.append(f"dead layers {dead} (every gate closed: their updates get no direct gradient; "
                         "lower sparsity_weight or tau_lr, or add warmup_steps)")
        if stuck:
            advice = "widen temperature" if self.gate_config.surrogate == "sigmoid" else \
                "widen temperature or use surrogate='sigmoid'"
            parts.append(f"stuck thresholds {stuck} (the surrogate derivative is ~0 at every token, so tau "
                         f"cannot move; {advice})")
        return "; ".join(parts) or None

    # ------------------------------------------------------ merge, disable
    def merge_adapter(self) -> None:
        """Fold every LoRA/DoRA update into its base weight (merging twice equals merging once).

        Raises:
            RuntimeError: on a gated model (a token-dependent update cannot be
                folded into ``W0``) or on bottleneck adapters (non-linear).
                Nothing is merged when it is raised.
        """
        if self.gate_config is not None:
            raise RuntimeError(
                "merge_adapter: this model is token-gated (TS-PEFT): each token's update is applied or not "
                "by its own gate, so the updates cannot be folded into the base weights W0"
            )
        if isinstance(self.peft_config, AdapterConfig):
            raise RuntimeError("merge_adapter: bottleneck adapters are non-linear and cannot be merged")
        for _, m in self.peft_layers():
            m.merge()

    def unmerge_adapter(self) -> None:
        """Restore the exact base weights saved by :meth:`merge_adapter`."""
        for _, m in self.peft_layers():
            m.unmerge()

    def merge_and_unload(self) -> Module:
        """Merge, then put the base layers (with merged weights) and the trained copies of
        ``modules_to_save`` back in place; return the plain base model.

        Raises:
            RuntimeError: as :meth:`merge_adapter`.
        """
        self.merge_adapter()
        for name, m in list(self.base_model.named_modules()):
            if isinstance(m, PeftLayer):
                self.base_model.set_submodule(name, m.base_layer)
            elif isinstance(m, ModulesToSaveWrapper):
                self.base_model.set_submodule(name, m.modules_to_save)
        self._replaced = []
        return self.base_model

    def unload(self) -> Module:
        """Remove every adapter without merging: the base model as it was before wrapping
        (merged weights restored first, then its parameters' ``requires_grad``)."""
        self.unmerge_adapter()
        for name, original in reversed(self._replaced):
            self.base_model.set_submodule(name, original)
        for p in self.base_model.parameters():
            p.requires_grad_(self._requires_grad.get(id(p), p.requires_grad))
        self._replaced = []
        return self.base_model

    @contextlib.contextmanager
    def disable_adapter(self):
        """Context manager: inside it the model computes the base model's output.

        Nests: the adapters stay off until the outermost block exits, then
        each layer returns to the state it had before. Merged layers are
        unmerged inside and merged again on exit.
        """
        layers = [m for m in self.base_model.modules() if isinstance(m, (PeftLayer, ModulesToSaveWrapper))]
        previous = [m.disabled for m in layers]
        merged = [m for m in layers if getattr(m, "merged", False)]
        for m in merged:  # the base output needs the base weights
            m.unmerge()
        for m in layers:
            m.disabled = True
        try:
            yield self
        finally:
            for m, was in zip(layers, previous, strict=True):
                m.disabled = was
            for m in merged:
                m.merge()

    # ------------------------------------------------------ save and load
    def save_pretrained(self, directory: str) -> None:
        """Write the adapter into ``directory`` as one unit, in peft's layout: ``adapter_model.npz`` holds
        :meth:`adapter_state_dict` under peft's names (``base_model.model.`` first; no pickle) and the
        record of how to rebuild it (flat, as peft's ``adapter_config.json``: ``peft_type``, every config
        field, and ``format_version``, ``method``, ``base_model_class``, ``token_gate``);
        ``adapter_config.json`` is a readable copy of that record. Arrays keep the model's dtype.

        Raises:
            ValueError: if the model holds no adapters any more (after ``merge_and_unload`` or ``unload``).
            OSError: if ``directory`` cannot be created or written (a previous save there stays whole).
        """
        save_adapter(self, directory)

    @classmethod
    def from_pretrained(cls, base_model: Module, directory: str, is_trainable: bool = False) -> "PeftModel":
        """Wrap ``base_model`` as the saved adapter describes and load its weights.

        Args:
            base_model: a model of the same architecture as the one trained.
            directory: a folder written by :meth:`save_pretrained`.
            is_trainable: keep the adapter trainable; otherwise it is frozen
                and the model put in evaluation mode (for inference). The loaded
                config's ``inference_mode`` is ``not is_trainable``, as in peft.

        Files of every format load: the current one and format 1 (nested record, arrays
        named without ``base_model.model.``), see :mod:`~minitspeft.peft.saving`.

        Each array is cast to the dtype of the parameter it loads into (as
        ``torch``'s ``load_state_dict`` copies into a parameter). When that
        changes values (a float64 adapter into a float32 model), a ``RuntimeWarning``
        names the arrays and both dtypes; build the base model in the file's dtype
        to load them exactly. A cast that widens (float32 into float64) is exact and silent.

        Raises:
            FileNotFoundError: if ``adapter_model.npz`` is missing.
            ValueError: for an unknown format, method or config field, a damaged file,
                weights whose names, shapes or dtypes do not fit the model (all
                listed), or values the model's dtype cannot hold (they would become
                infinite). ``base_model`` is left unchanged when it is raised.
        """
        with backend.using(module_backend(base_model)):
            return load_adapter(cls, base_model, directory, is_trainable)  # onto the base model's backend
