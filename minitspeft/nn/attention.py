"""Multi-head scaled dot-product self-attention (Vaswani et al. 2017), optionally causal."""

from __future__ import annotations

import math

from .. import backend
from .. import functional as F
from ..ops import where
from ..tensor import Tensor
from .layers import Dropout, Linear
from .module import Module


class MultiHeadAttention(Module):
    """Self-attention with ``n_head`` heads over ``n_embd`` channels.

    Args:
        n_embd: model width; must be divisible by ``n_head``.
        n_head: number of heads, ``head_dim = n_embd // n_head``.
        dropout: dropout on the attention weights and the output.
        causal: mask future positions (position t attends to ``<= t`` only).

    Sub-modules ``q_proj, k_proj, v_proj, o_proj`` are ``Linear(n_embd, n_embd)``.
    Input and output ``(B, T, n_embd)``. Scores are scaled by ``1/sqrt(head_dim)``.

    Raises:
        ValueError: if ``n_embd`` is not divisible by ``n_head``, or the input
            is not ``(B, T, n_embd)``.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, causal: bool = False, dtype=None):
        if n_head < 1 or n_embd % n_head:
            raise ValueError(f"MultiHeadAttention: n_embd {n_embd} must be divisible by n_head {n_head}")
        self.n_embd, self.n_head, self.causal = n_embd, n_head, causal
        self.q_proj = Linear(n_embd, n_embd, dtype=dtype)
        self.k_proj = Linear(n_embd, n_embd, dtype=dtype)
        self.v_proj = Linear(n_embd, n_embd, dtype=dtype)
        self.o_proj = Linear(n_embd, n_embd, dtype=dtype)
        self.attn_drop = Dropout(dropout)
        self.resid_drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[-1] != self.n_embd:
            raise ValueError(f"MultiHeadAttention: expected input (B, T, {self.n_embd}), got {x.shape}")
        B, T, C = x.shape
        hd = C // self.n_head

        def heads(t: Tensor) -> Tensor:
            return t.reshape(B, T, self.n_head, hd).transpose(0, 2, 1, 3)  # (B, n_head, T, head_dim)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        scores = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(hd))  # (B, n_head, T, T)
        if self.causal:
            xp = backend.xp
            future = xp.triu(xp.ones((T, T), dtype=bool), k=1)
            scores = where(future, float("-inf"), scores)  # softmax gives exactly 0 there
        att = self.attn_drop(F.softmax(scores, axis=-1))
        y = att @ v  # (B, n_head, T, head_dim)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, n_embd)
        return self.resid_drop(self.o_proj(y))

    def extra_repr(self) -> str:
        return f"n_embd={self.n_embd}, n_head={self.n_head}, causal={self.causal}"
