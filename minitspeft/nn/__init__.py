"""Layers and models, after ``torch.nn``: ``Module``, ``Parameter``, ``Linear``, ``Sequential``, ..., ``ViT``."""

from .activation import GELU, ReLU
from .attention import MultiHeadAttention
from .container import Sequential
from .layers import Dropout, Embedding, LayerNorm, Linear
from .loss import CrossEntropyLoss
from .module import Module, ModuleList, Parameter
from .transformer import MLP, Block, Transformer, TransformerConfig
from .vit import ViT

__all__ = [
    "Module", "ModuleList", "Sequential", "Parameter", "Linear", "Embedding", "LayerNorm", "Dropout",
    "ReLU", "GELU", "CrossEntropyLoss",
    "MultiHeadAttention", "MLP", "Block", "TransformerConfig", "Transformer", "ViT",
]
