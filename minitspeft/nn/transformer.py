"""The text transformer: config and presets, MLP, pre-LayerNorm block, encoder classifier and causal LM.

Layout and names follow minGPT and PyTorch (pre-LayerNorm blocks, GELU in its
tanh form, LayerNorm eps 1e-5; the state-dict names are listed in
docs/design.md), so a state dict maps one-to-one onto the same modules
written in PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend
from .. import functional as F
from ..checks import check, check_int, check_number, is_int
from ..config import Config
from ..tensor import Tensor, no_grad
from .attention import MultiHeadAttention
from .layers import Dropout, Embedding, LayerNorm, Linear
from .module import Module, ModuleList, module_backend

PRESETS = {
    "nano": {"n_layer": 1, "n_head": 2, "n_embd": 32},
    "micro": {"n_layer": 2, "n_head": 4, "n_embd": 64},
    "mini": {"n_layer": 4, "n_head": 4, "n_embd": 128},
}


@dataclass
class TransformerConfig(Config):
    """Sizes of a tiny transformer.

    Attributes:
        vocab_size: number of token ids (unused by the ViT).
        block_size: longest sequence (tokens) the position table holds.
        n_layer, n_head, n_embd: depth, heads, width (``n_embd % n_head == 0``).
        mlp_ratio: MLP hidden width is ``mlp_ratio * n_embd``.
        dropout: dropout probability in attention, MLP and embeddings.
        causal: causal self-attention (a language model).
        n_classes: classifier outputs, or None for a language-model head.
        pooling: ``"mean"`` over tokens or ``"cls"`` (the first token) for classifiers.

    Sizes may be NumPy integers; :meth:`validate` stores them as Python ints (and ``dropout`` as a float),
    so the config stays JSON-able.

    Raises:
        ValueError: naming the first bad field (checked when built, by ``replace`` and by ``validate()``).
    """

    vocab_size: int = 16
    block_size: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    mlp_ratio: int = 4
    dropout: float = 0.0
    causal: bool = False
    n_classes: int | None = None
    pooling: str = "mean"

    @classmethod
    def preset(cls, name: str, **overrides) -> "TransformerConfig":
        """A named size (``"nano"``, ``"micro"``, ``"mini"``; see ``PRESETS``) with any field overridden.

        Raises:
            ValueError: for an unknown name (the message lists the known ones).
        """
        if name not in PRESETS:
            raise ValueError(f"TransformerConfig.preset: unknown preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def validate(self) -> None:
        """Check every field (see the class docstring)."""
        n = "TransformerConfig"
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            check_int(n, name, getattr(self, name))
        check(self.n_embd % self.n_head == 0, n, "n_embd", self.n_embd, f"divisible by n_head {self.n_head}")
        check_number(n, "dropout", self.dropout, 0, 1, high_open=True)
        check_int(n, "n_classes", self.n_classes, allow_none=True)
        check(self.pooling in ("mean", "cls"), n, "pooling", self.pooling, "'mean' or 'cls'")
        check(isinstance(self.causal, bool), n, "causal", self.causal, "a bool")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio", "n_classes"):
            if getattr(self, name) is not None:  # NumPy integers are welcome, and stored as Python ints (JSON-able)
                setattr(self, name, int(getattr(self, name)))
        self.dropout = float(self.dropout)


def check_config(op: str, config) -> None:
    """``config`` is a valid :class:`TransformerConfig` (checked again: dataclass fields can be reassigned).

    Raises:
        TypeError: for anything else; ValueError: from :meth:`TransformerConfig.validate`.
    """
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"{op}: config must be a TransformerConfig, got {type(config).__name__}")
    config.validate()


class MLP(Module):
    """``fc2(gelu(fc1(x)))`` with hidden width ``mlp_ratio * n_embd``; input and output ``(..., n_embd)``."""

    def __init__(self, n_embd: int, mlp_ratio: int = 4, dropout: float = 0.0, dtype=None):
        self.fc1 = Linear(n_embd, mlp_ratio * n_embd, dtype=dtype)
        self.fc2 = Linear(mlp_ratio * n_embd, n_embd, dtype=dtype)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Block(Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``.

    Input and output ``(B, T, n_embd)``.
    """

    def __init__(self, config: TransformerConfig, dtype=None):
        c = config
        self.ln1 = LayerNorm(c.n_embd, dtype=dtype)
        self.attn = MultiHeadAttention(c.n_embd, c.n_head, c.dropout, c.causal, dtype=dtype)
        self.ln2 = LayerNorm(c.n_embd, dtype=dtype)
        self.mlp = MLP(c.n_embd, c.mlp_ratio, c.dropout, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _Trunk(Module):
    """What every model here shares after its embeddings: dropout, the blocks, the final LayerNorm, the head.

    Subclasses set ``config``, ``drop``, ``blocks``, ``ln_f`` and ``head``.
    """

    def run_blocks(self, x: Tensor) -> Tensor:
        """Embedded tokens ``(B, T, n_embd)`` -> final states ``(B, T, n_embd)``."""
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def classify(self, x: Tensor) -> Tensor:
        """Pool final states ``(B, T, n_embd)`` (first token or mean) and apply the head: ``(B, n_classes)``."""
        pooled = x[:, 0] if self.config.pooling == "cls" else x.mean(axis=1)  # (B, n_embd)
        return self.head(pooled)


class Transformer(_Trunk):
    """A text transformer over integer token ids: an encoder classifier or a causal language model.

    With ``config.n_classes`` set, ``forward`` pools the final states
    (``pooling="mean"`` over tokens or ``"cls"``: the first token) and returns
    class logits ``(B, n_classes)``. With ``n_classes=None`` it returns
    next-token logits ``(B, T, vocab_size)`` (set ``causal=True`` for a
    language model).

    Args:
        config: a :class:`TransformerConfig`.
        dtype: parameter dtype (default float32).

    Forward: integer ids ``(B, T)`` with ``T <= block_size`` and values in
    ``[0, vocab_size)``.

    Raises:
        ValueError: for float ids, ids out of range (NumPy would silently
            wrap a negative one), a sequence longer than ``block_size``, or
            ids that are not 2-D.
    """

    def __init__(self, config: TransformerConfig, dtype=None):
        check_config("Transformer", config)
        c = self.config = config
        self.tok_emb = Embedding(c.vocab_size, c.n_embd, dtype=dtype)
        self.pos_emb = Embedding(c.block_size, c.n_embd, dtype=dtype)
        self.drop = Dropout(c.dropout)
        self.blocks = ModuleList([Block(c, dtype=dtype) for _ in range(c.n_layer)])
        self.ln_f = LayerNorm(c.n_embd, dtype=dtype)
        self.head = Linear(c.n_embd, c.n_classes or c.vocab_size, dtype=dtype)

    def check_ids(self, idx):
        """Return ``idx`` as a backend integer array after checking dtype, shape and range."""
        data = idx.data if isinstance(idx, Tensor) else backend.asarray(idx)
        c = self.config
        if data.dtype.kind not in "iu":
            raise ValueError(f"Transformer: token ids must be integers, got dtype {data.dtype}")
        if data.ndim != 2:
            raise ValueError(f"Transformer: token ids must be (B, T), got shape {tuple(data.shape)}")
        if data.shape[1] == 0 or data.shape[0] == 0:
            raise ValueError(f"Transformer: token ids must hold at least one sequence of one token, "
                             f"got shape {tuple(data.shape)}")
        if data.shape[1] > c.block_size:
            raise ValueError(f"Transformer: sequence length {data.shape[1]} exceeds block_size {c.block_size}")
        low, high = backend.extent(data)  # not empty: checked above
        if low < 0 or high >= c.vocab_size:
            raise ValueError(f"Transformer: token ids must be in [0, {c.vocab_size}), got min {low} and max {high}")
        return data

    def features(self, idx) -> Tensor:
        """Token states after the final LayerNorm: ``(B, T, n_embd)``."""
        ids = self.check_ids(idx)
        T = ids.shape[1]
        return self.run_blocks(self.tok_emb(ids) + self.pos_emb.weight[:T])  # (B, T, n_embd)

    def forward(self, idx) -> Tensor:
        x = self.features(idx)
        if self.config.n_classes is None:
            return self.head(x)  # (B, T, vocab_size)
        return self.classify(x)  # (B, n_classes)

    @no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None) -> np.ndarray:
        """Extend ``idx`` ``(B, T)`` by sampling ``max_new_tokens`` tokens, one at a time (as minGPT does).

        Args:
            idx: integer ids ``(B, T)``, ``T >= 1``.
            max_new_tokens: tokens to add (>= 0).
            temperature: divides the logits (> 0); 0 is not allowed, use ``top_k=1`` for greedy.
            top_k: sample only among the ``top_k`` most likely tokens (None: all).
            seed: seed of the sampler (host NumPy generator); None draws a fresh one.

        Returns:
            A host int64 array ``(B, T + max_new_tokens)``. The context is
            cropped to the last ``block_size`` tokens at each step.

        Raises:
            ValueError: for a model that is not a causal language model, or bad arguments.
        """
        c = self.config
        if c.n_classes is not None or not c.causal:
            raise ValueError("generate: needs a causal language model (causal=True, n_classes=None)")
        check_int("generate", "max_new_tokens", max_new_tokens, 0)
        check_number("generate", "temperature", temperature, 0, low_open=True)
        if top_k is not None:
            check(is_int(top_k) and 1 <= top_k <= c.vocab_size, "generate", "top_k", top_k,
                  f"None or an integer in [1, vocab_size={c.vocab_size}]")
        with backend.using(module_backend(self)):  # where the model is, as predict; the result is on the host
            return self._generate(idx, max_new_tokens, temperature, top_k, seed)

    def _generate(self, idx, max_new_tokens: int, temperature: float, top_k, seed) -> np.ndarray:
        c = self.config
        out = backend.to_numpy(self.check_ids(idx)).astype(np.int64)
        if out.shape[1] == 0:
            raise ValueError("generate: idx must hold at least one token per row")
        if seed is not None:
            check_int("generate", "seed", seed, 0)
        rng = np.random.default_rng(seed)
        with self.eval_mode():
            for _ in range(max_new_tokens):
                logits = backend.to_numpy(self(out[:, -c.block_size:]).data[:, -1]).astype(np.float64)
                logits /= temperature
                if top_k is not None:
                    kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
                    logits = np.where(logits < kth, -np.inf, logits)
                p = np.exp(logits - logits.max(axis=-1, keepdims=True))
                p /= p.sum(axis=-1, keepdims=True)
                nxt = np.array([rng.choice(c.vocab_size, p=row) for row in p])
                out = np.concatenate([out, nxt[:, None]], axis=1)
        return out
