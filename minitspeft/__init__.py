"""minitspeft: token-selective parameter-efficient fine-tuning (TS-PEFT, arXiv 2511.16147) in NumPy.

A minimal autograd engine, a tiny transformer, LoRA and the token gate that
decides per token whether the update is applied. Start with
``python -m minitspeft.demo`` and the README.
"""

import importlib

from . import memory
from .backend import get_backend, manual_seed, set_backend, to_numpy
from .tensor import Tensor, enable_grad, is_grad_enabled, no_grad, tensor
from . import ops, reductions  # noqa: F401 - importing them attaches the operators and methods to Tensor
from .shape_ops import concat, stack, where

__version__ = "0.1.0"

_SUBMODULES = ("nn", "optim", "functional", "peft", "train", "data", "testing", "extend")


def __getattr__(name: str):
    """``mt.nn``, ``mt.optim``, ``mt.functional``, ``mt.peft``, ``mt.train``, ... after ``import minitspeft as mt``
    alone, as ``torch.nn`` is there after ``import torch`` (each imported when first used)."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'minitspeft' has no attribute {name!r}")


memory._on_import()  # keep freed array memory for reuse (glibc; MINITSPEFT_KEEP_FREED_MEMORY=0 turns it off)

__all__ = [
    "Tensor", "tensor", "no_grad", "enable_grad", "is_grad_enabled",
    "concat", "stack", "where",
    "set_backend", "get_backend", "to_numpy", "manual_seed",
]
