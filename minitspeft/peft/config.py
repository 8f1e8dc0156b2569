"""Configurations, named after Hugging Face ``peft``: ``LoraConfig``, ``AdapterConfig`` and the token gate's
``GateConfig``.

Every field is checked when the config is built (:class:`~minitspeft.config.Config`);
a bad value raises ``ValueError`` naming the field, before anything is wrapped.
The fields peft's configs share (``task_type``, ``base_model_name_or_path``,
``inference_mode``) are accepted and saved, and each config names its
``peft_type`` in peft's style.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..checks import check, check_int, check_number, is_number
from ..config import Config


# Hugging Face peft's task types (``peft.TaskType``); ``task_type`` is kept and saved, and changes nothing here.
TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")


def _check_peft_fields(owner: str, config) -> None:
    """The fields every peft config shares: ``task_type``, ``base_model_name_or_path``, ``inference_mode``."""
    check(config.task_type is None or config.task_type in TASK_TYPES, owner, "task_type", config.task_type,
          f"None or one of peft's task types {TASK_TYPES}")
    name = config.base_model_name_or_path
    check(name is None or (isinstance(name, str) and bool(name)), owner, "base_model_name_or_path", name,
          "None or a non-empty string")
    check(isinstance(config.inference_mode, bool), owner, "inference_mode", config.inference_mode, "a bool")


def _check_names(cls: str, field_name: str, value, allow_none: bool) -> None:
    ok = (value is None and allow_none) or (
        isinstance(value, (list, tuple)) and all(isinstance(t, str) and t for t in value))
    check(ok, cls, field_name, value, "a list of module names" + (" or None" if allow_none else ""))


@dataclass
class LoraConfig(Config):
    r"""Low-rank adaptation (Hu et al. 2021): ``h = W0 x + scaling * B A x``; DoRA with ``use_dora``.

    Attributes:
        r: rank of the update (>= 1).
        lora_alpha: scale numerator (> 0); ``scaling = lora_alpha / r``, or
            ``lora_alpha / sqrt(r)`` with ``use_rslora`` (Kalajdzievski 2023).
        lora_dropout: dropout on the adapter's input, training only, in ``[0, 1)``.
        target_modules: which ``Linear`` layers to adapt: a list of names or
            dotted-name suffixes (``["q_proj", "v_proj"]``), a regular
            expression matched against the whole dotted name
            (``r"blocks\.0\..*_proj"``), or ``"all-linear"`` (every Linear
            but the output ``head``), as in Hugging Face ``peft``.
        use_rslora: rank-stabilised scaling.
        use_dora: weight-decomposed LoRA (Liu et al. 2024).
        init_lora_weights: ``True`` (A Kaiming-uniform, B zero: a no-op at
            start), ``"gaussian"`` (A normal with std ``1/r``, B zero) or
            ``False`` (both random, for debugging).
        bias: ``"none"`` (biases stay frozen) or ``"all"`` (every bias trains);
            peft's third value, ``"lora_only"``, is refused.
        modules_to_save: names of whole modules (e.g. a new ``"head"``) to
            train and save as well; each gets a trainable copy, and the
            original is used while the adapter is disabled.
        task_type: None or one of peft's task types (:data:`TASK_TYPES`,
            e.g. ``"SEQ_CLS"``). **No effect here** (peft uses it to pick a
            model class); kept and saved.
        base_model_name_or_path: None or a name for the base model. **No effect
            here**; kept and saved, for the reader of ``adapter_config.json``.
        inference_mode: as in peft: ``True`` builds the adapter frozen.
            ``PeftModel.from_pretrained`` sets it to ``not is_trainable``, as peft does.
        fan_in_fan_out: must be ``False``. peft's ``True`` is for layers that
            store their weight ``(in_features, out_features)``, such as GPT-2's
            ``Conv1D``; this project's ``Linear`` stores ``(out_features,
            in_features)``, as ``torch.nn.Linear``, so ``True`` is refused.

    :attr:`peft_type` is ``"LORA"`` (also for DoRA), as in peft.

    Raises:
        ValueError: naming the first invalid field and its value.
    """

    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: list | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: bool | str = True
    bias: str = "none"
    modules_to_save: list | None = None
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    inference_mode: bool = False
    fan_in_fan_out: bool = False

    @property
    def method(self) -> str:
        """``"lora"`` or ``"dora"``."""
        return "dora" if self.use_dora else "lora"

    @property
    def peft_type(self) -> str:
        """``"LORA"``, for LoRA and DoRA alike (DoRA is ``use_dora=True``), as in Hugging Face peft."""
        return "LORA"

    def validate(self) -> None:
        """Check every field (see the class docstring)."""
        n = "LoraConfig"
        check_int(n, "r", self.r)
        self.r = int(self.r)  # a NumPy integer is kept as a Python int, so the saved config stays JSON-able
        check_number(n, "lora_alpha", self.lora_alpha, 0, low_open=True)
        check_number(n, "lora_dropout", self.lora_dropout, 0, 1, high_open=True)
        if isinstance(self.target_modules, str):
            check(bool(self.target_modules), n, "target_modules", self.target_modules, "a non-empty pattern")
            if self.target_modules != "all-linear":
                try:
                    re.compile(self.target_modules)
                except re.error as exc:
                    raise ValueError(f"{n}: target_modules is not a valid regular expression: {exc}") from None
        else:
            _check_names(n, "target_modules", self.target_modules, allow_none=False)
            check(len(self.target_modules) > 0, n, "target_modules", self.target_modules, "a non-empty list")
            self.target_modules = list(self.target_modules)
        check(isinstance(self.use_rslora, bool), n, "use_rslora", self.use_rslora, "a bool")
        check(isinstance(self.use_dora, bool), n, "use_dora", self.use_dora, "a bool")
        init = self.init_lora_weights
        check(isinstance(init, bool) or init == "gaussian", n, "init_lora_weights", init, "True, False or 'gaussian'")
        check(self.bias in ("none", "all"), n, "bias", self.bias,
              "'none' or 'all'" + (" (peft's 'lora_only' is not supported here)" if self.bias == "lora_only" else ""))
        _check_names(n, "modules_to_save", self.modules_to_save, allow_none=True)
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
        _check_peft_fields(n, self)
        check(isinstance(self.fan_in_fan_out, bool), n, "fan_in_fan_out", self.fan_in_fan_out, "a bool")
        if self.fan_in_fan_out:
            raise ValueError(f"{n}: fan_in_fan_out must be False, got True: this project's Linear stores its weight "
                             "(out_features, in_features), as torch.nn.Linear, so there is nothing to transpose; "
                             "peft's True is for layers that store (in_features, out_features), such as GPT-2's "
                             "Conv1D")

    @property
    def scaling(self) -> float:
        """``lora_alpha / r`` (or ``lora_alpha / sqrt(r)`` with rsLoRA)."""
        return self.lora_alpha / (self.r ** 0.5 if self.use_rslora else self.r)


PLACEMENTS = ("houlsby", "pfeiffer")
ADAPTER_ACTIVATIONS = ("gelu", "relu", "tanh")


@dataclass
class AdapterConfig(Config):
    """Bottleneck adapters (Houlsby et al. 2019): ``h + up(act(down(h)))`` after a block's sub-layers.

    Attributes:
        reduction_factor: bottleneck size is ``n_embd // reduction_factor``
            (at least 1); ignored when ``bottleneck`` is given.
        bottleneck: explicit bottleneck size (>= 1), or None.
        placement: ``"houlsby"`` (after the attention and after the MLP of
            every block) or ``"pfeiffer"`` (after the MLP only; Pfeiffer et al. 2021).
        activation: ``"gelu"``, ``"relu"`` or ``"tanh"``.
        modules_to_save: as in :class:`LoraConfig`.
        task_type, base_model_name_or_path, inference_mode: peft's shared
            fields, as in :class:`LoraConfig` (the first two have no effect here).

    :attr:`peft_type` is ``"BOTTLENECK_ADAPTER"``: peft has no bottleneck
    adapter, so the name is this project's, in peft's style (peft's
    ``ADAPTION_PROMPT`` is LLaMA-Adapter, another method).

    Raises:
        ValueError: naming the first invalid field and its value.
    """

    reduction_factor: int = 16
    bottleneck: int | None = None
    placement: str = "houlsby"
    activation: str = "gelu"
    modules_to_save: list | None = None
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    inference_mode: bool = False

    @property
    def method(self) -> str:
        """``"adapter"``."""
        return "adapter"

    @property
    def peft_type(self) -> str:
        """``"BOTTLENECK_ADAPTER"`` (derived here, in peft's upper-case style; see the class docstring)."""
        return "BOTTLENECK_ADAPTER"

    def validate(self) -> None:
        """Check every field (see the class docstring)."""
        n = "AdapterConfig"
        check_int(n, "reduction_factor", self.reduction_factor)
        check_int(n, "bottleneck", self.bottleneck, allow_none=True)
        check(self.placement in PLACEMENTS, n, "placement", self.placement, f"one of {PLACEMENTS}")
        check(self.activation in ADAPTER_ACTIVATIONS, n, "activation", self.activation,
              f"one of {ADAPTER_ACTIVATIONS}")
        _check_names(n, "modules_to_save", self.modules_to_save, allow_none=True)
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
        _check_peft_fields(n, self)

    def bottleneck_size(self, n_embd: int) -> int:
        """The bottleneck width for a model of width ``n_embd``."""
        return self.bottleneck if self.bottleneck is not None else max(1, n_embd // self.reduction_factor)


SURROGATES = ("sigmoid", "rect", "identity")
SCORES = ("ratio", "seq_ratio", "router")
# The named gate variants: the GateConfig fields each one sets (anything else stays as given).
_VARIANTS = {
    "paper": {"score": "ratio"},
    "seq-ratio": {"score": "seq_ratio", "tau_init": 0.5},
    "top-k": {"score": "ratio", "keep_ratio": 0.5},
    "bounded": {"score": "ratio", "density_floor": 0.1, "density_ceiling": 0.9, "bounds_weight": 1.0},
    "router": {"score": "router"},
}
GATE_VARIANTS = tuple(_VARIANTS)


@dataclass
class GateConfig(Config):
    """The token-selective gate of TS-PEFT (arXiv 2511.16147) and its variants; the details are derived here.

    Per token ``i`` of a gated layer: ``r_i = ||d_i|| / (||b_i|| + eps)``,
    ``S_i = 1[r_i >= tau]``, output ``b_i + S_i d_i``.

    Attributes:
        surrogate: straight-through derivative of the step: ``"sigmoid"``,
            ``"rect"`` or ``"identity"``.
        temperature: width ``T`` of the surrogate (> 0), in units of ``r``.
        eps: guard in the ratio's denominator (> 0).
        grad_through_ratio: let the surrogate's gradient reach ``d`` and ``b`` through ``r``.
        sparsity_weight: ``lambda`` of the regulariser ``lambda * mean(S)`` (>= 0).
        target_density: if set, in ``(0, 1]``: the regulariser becomes
            ``lambda * (mean(S) - target_density)^2``.
        tau_init: starting threshold (>= 0); 0 opens every gate.
        tau_lr: learning rate of the thresholds (> 0), or None for the model's.
        warmup_steps: steps (>= 0) with thresholds and routers frozen and no regulariser.
        score: what is thresholded: ``"ratio"`` (the paper's ``r``),
            ``"seq_ratio"`` (``r`` normalised per sequence) or ``"router"``
            (a learned per-token score; departs from the paper). See
            :mod:`minitspeft.peft.selection`.
        keep_ratio: if set, in ``(0, 1]``: no threshold; each sequence opens its
            ``ceil(keep_ratio * T)`` highest-scoring tokens (Mixture-of-Depths' budget).
        density_floor, density_ceiling: per-layer density bounds,
            ``0 <= floor <= ceiling <= 1``, enforced by the penalty
            ``bounds_weight * mean_l(relu(floor - D_l)^2 + relu(D_l - ceiling)^2)``
            over the gated layers ``l`` with densities ``D_l`` (after DyT's minimum-rate loss).
        bounds_weight: weight of that penalty (>= 0; 0 turns it off).
        router_lr: learning rate of the router weights (> 0), or None for the model's.

    :meth:`variant` builds the named variants of :data:`GATE_VARIANTS`.

    Raises:
        ValueError: naming the first invalid field.
    """

    surrogate: str = "sigmoid"
    temperature: float = 0.1
    eps: float = 1e-6
    grad_through_ratio: bool = True
    sparsity_weight: float = 0.0
    target_density: float | None = None
    tau_init: float = 0.0
    tau_lr: float | None = None
    warmup_steps: int = 0
    score: str = "ratio"
    keep_ratio: float | None = None
    density_floor: float = 0.0
    density_ceiling: float = 1.0
    bounds_weight: float = 0.0
    router_lr: float | None = None

    @classmethod
    def variant(cls, name: str, **fields) -> "GateConfig":
        """The named gate variant (one of :data:`GATE_VARIANTS`) with any other field set by ``fields``.

        ``"paper"``: the ratio and one threshold per layer (TS-PEFT, arXiv 2511.16147);
        ``"seq-ratio"``: the ratio normalised within each sequence, ``tau_init=0.5`` (derived here);
        ``"top-k"``: the ``ceil(T / 2)`` largest ratios of each sequence (Mixture-of-Depths, arXiv 2404.02258);
        ``"bounded"``: the paper's gate with per-layer density bounds 0.1..0.9 (after DyT, NeurIPS 2024);
        ``"router"``: a learned per-token score (after MoD and DyT; departs from the paper).
        ``fields`` may override what the variant sets (e.g. ``keep_ratio=0.3``).

        Raises:
            ValueError: for an unknown name (listing the known ones) or an invalid field.
        """
        if name not in _VARIANTS:
            raise ValueError(f"GateConfig.variant: unknown gate variant {name!r}; choose from {GATE_VARIANTS}")
        return cls(**{**_VARIANTS[name], **fields})

    def validate(self) -> None:
        """Check every field (see the class docstring)."""
        n = "GateConfig"
        check(self.surrogate in SURROGATES, n, "surrogate", self.surrogate, f"one of {SURROGATES}")
        check_number(n, "temperature", self.temperature, 0, low_open=True)
        check_number(n, "eps", self.eps, 0, low_open=True)
        check(isinstance(self.grad_through_ratio, bool), n, "grad_through_ratio", self.grad_through_ratio, "a bool")
        check_number(n, "sparsity_weight", self.sparsity_weight, 0)
        check_number(n, "target_density", self.target_density, 0, 1, low_open=True, allow_none=True)
        check_number(n, "tau_init", self.tau_init, 0)
        check_number(n, "tau_lr", self.tau_lr, 0, low_open=True, allow_none=True)
        check_int(n, "warmup_steps", self.warmup_steps, 0)
        check(self.score in SCORES, n, "score", self.score, f"one of {SCORES}")
        check_number(n, "keep_ratio", self.keep_ratio, 0, 1, low_open=True, allow_none=True)
        check_number(n, "density_floor", self.density_floor, 0, 1)
        check(is_number(self.density_ceiling) and self.density_floor <= self.density_ceiling <= 1, n,
              "density_ceiling", self.density_ceiling, f"in [density_floor={self.density_floor}, 1]")
        check_number(n, "bounds_weight", self.bounds_weight, 0)
        check_number(n, "router_lr", self.router_lr, 0, low_open=True, allow_none=True)

