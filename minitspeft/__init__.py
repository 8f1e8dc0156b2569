"""minitspeft: token-selective parameter-efficient fine-tuning (TS-PEFT, arXiv 2511.16147) in NumPy.

A minimal autograd engine, a tiny transformer, LoRA and the token gate that
decides per token whether the update is applied. Start with
``python -m minitspeft.demo`` and the README.
"""

import importlib

from . import memory
from .backend import get_backend, get_default_device, manual_seed, set_backend, to_numpy
from .tensor import Tensor, enable_grad, is_grad_enabled, no_grad, tensor
from . import comparisons, conversions, indexing, ops, reductions  # noqa: F401 - they attach Tensor's methods
from .comparisons import equal, isfinite, isnan
from .creation import arange, eye, full, ones, ones_like, rand, randn, zeros, zeros_like
from .indexing import chunk, gather, masked_fill, split, tril, triu
from .ops import (abs, ceil, clip, cos, exp, expm1, floor, log, log1p, matmul, maximum, minimum,  # noqa: A004
                  relu, round, sigmoid, sign, sin, sqrt, tanh)
from .reductions import all, any, argmax, argmin, cumsum, logsumexp, mean, prod, std, sum, var  # noqa: A004
from .shape_ops import concat, flatten, flip, squeeze, stack, unsqueeze, where

cat = concat  # PyTorch's name

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
    "concat", "cat", "stack", "where",
    "zeros", "ones", "full", "arange", "eye", "zeros_like", "ones_like", "randn", "rand",
    "abs", "ceil", "clip", "cos", "exp", "expm1", "floor", "log", "log1p", "matmul", "maximum", "minimum", "relu",
    "round", "sigmoid", "sign", "sin", "sqrt", "tanh",
    "all", "any", "argmax", "argmin", "cumsum", "logsumexp", "mean", "prod", "std", "sum", "var",
    "flatten", "flip", "squeeze", "unsqueeze", "chunk", "gather", "masked_fill", "split", "tril", "triu",
    "equal", "isfinite", "isnan",
    "set_backend", "get_backend", "get_default_device", "to_numpy", "manual_seed",
]
