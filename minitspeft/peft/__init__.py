"""Parameter-efficient fine-tuning, after Hugging Face ``peft``, plus the TS-PEFT token gate.

``get_peft_model(model, LoraConfig(...) or AdapterConfig(...), gate=GateConfig(...))``
wraps the target layers and returns a :class:`PeftModel`.
"""

from .adapter import AdapterLayer
from .base import ModulesToSaveWrapper, PeftLayer
from .config import GATE_VARIANTS, AdapterConfig, GateConfig, LoraConfig
from .gate import TokenGate, gated_update, reference_gate, threshold_step, token_ratio
from .selection import router_score, sequence_ratio, top_k_step
from .surrogates import SURROGATES, surrogate_grad, surrogate_step
from .injection import Injection, inject_adapter_in_model
from .lora import LoraLinear
from .mapping import get_peft_model
from .model import PeftModel

__all__ = [
    "LoraConfig", "AdapterConfig", "GateConfig", "PeftLayer", "LoraLinear", "AdapterLayer", "ModulesToSaveWrapper",
    "TokenGate", "PeftModel", "get_peft_model", "token_ratio", "threshold_step", "surrogate_grad",
    "GATE_VARIANTS", "SURROGATES", "gated_update", "reference_gate", "surrogate_step", "sequence_ratio",
    "router_score", "top_k_step", "inject_adapter_in_model", "Injection",
]
