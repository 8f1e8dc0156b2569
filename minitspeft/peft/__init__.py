"""Parameter-efficient fine-tuning, after Hugging Face ``peft``, plus the TS-PEFT token gate.

``get_peft_model(model, LoraConfig(...), gate=GateConfig(...))`` wraps the
target layers and returns a :class:`PeftModel`.
"""

from .config import GateConfig, LoraConfig
from .gate import TokenGate, surrogate_grad, threshold_step, token_ratio
from .lora import LoraLinear
from .model import PeftModel, get_peft_model

__all__ = [
    "LoraConfig", "GateConfig", "LoraLinear", "TokenGate", "PeftModel", "get_peft_model",
    "token_ratio", "threshold_step", "surrogate_grad",
]
