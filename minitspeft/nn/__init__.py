"""Layers and models, after ``torch.nn``: ``Module``, ``Parameter``, ``Linear``, ..., ``ViT``."""

from .attention import MultiHeadAttention
from .layers import Dropout, Embedding, LayerNorm, Linear
from .module import Module, ModuleList, Parameter
from .transformer import MLP, Block, Transformer, TransformerConfig
from .vit import ViT

__all__ = [
    "Module", "ModuleList", "Parameter", "Linear", "Embedding", "LayerNorm", "Dropout",
    "MultiHeadAttention", "MLP", "Block", "TransformerConfig", "Transformer", "ViT",
]
