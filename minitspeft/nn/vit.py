"""The vision transformer (Dosovitskiy et al. 2021) for small images: patches as tokens plus a CLS token."""

from __future__ import annotations

from .. import backend
from ..checks import check_int
from ..ops import broadcast_to, concat
from ..tensor import Tensor
from .layers import Dropout, Embedding, LayerNorm, Linear
from .module import ModuleList, Parameter
from .transformer import Block, TransformerConfig, _Trunk, check_config


class ViT(_Trunk):
    """Vision transformer classifier (Dosovitskiy et al. 2021) for small images.

    Each ``patch_size x patch_size`` patch becomes a token (``patch_emb``, a
    Linear of the flattened patch); a learned ``cls_token`` is prepended at
    position 0; ``pos_emb`` holds one vector per position.

    Args:
        config: ``n_classes`` must be set; ``pooling`` picks the CLS token
            (``"cls"``) or the mean over all tokens.
        patch_size: side of a square patch in pixels.
        image_size: side of the square image in pixels, divisible by ``patch_size``.
        channels: colour channels (1 for grey images).

    Forward: float images ``(B, H, W)`` (one channel) or ``(B, C, H, W)`` ->
    logits ``(B, n_classes)``.

    Raises:
        ValueError: for a config without ``n_classes``, sizes that are not integers >= 1 (Python or
            NumPy) or do not divide, or images of the wrong shape or a non-numeric dtype.
    """

    def __init__(self, config: TransformerConfig, patch_size: int = 2, image_size: int = 8,
                 channels: int = 1, dtype=None):
        check_config("ViT", config)
        if config.n_classes is None:
            raise ValueError("ViT: config.n_classes must be set for an image classifier")
        for name, value in (("patch_size", patch_size), ("image_size", image_size), ("channels", channels)):
            check_int("ViT", name, value)
        if image_size % patch_size:
            raise ValueError(f"ViT: image_size {image_size} must be divisible by patch_size {patch_size}")
        self.config = config
        self.patch_size, self.image_size, self.channels = int(patch_size), int(image_size), int(channels)
        self.grid = image_size // patch_size
        self.n_tokens = self.grid * self.grid + 1  # patches + CLS
        c = config
        self.patch_emb = Linear(channels * patch_size * patch_size, c.n_embd, dtype=dtype)
        cls = backend.host_rng().normal(0.0, 0.02, size=(1, 1, c.n_embd))
        self.cls_token = Parameter(backend.asarray(cls.astype(self.patch_emb.weight.dtype)))
        self.pos_emb = Embedding(self.n_tokens, c.n_embd, dtype=dtype)
        self.drop = Dropout(c.dropout)
        self.blocks = ModuleList([Block(c, dtype=dtype) for _ in range(c.n_layer)])
        self.ln_f = LayerNorm(c.n_embd, dtype=dtype)
        self.head = Linear(c.n_embd, c.n_classes, dtype=dtype)

    def patchify(self, images) -> Tensor:
        """Cut images into flattened patches: ``(B, [C,] H, W)`` -> ``(B, n_patches, C * p * p)``.

        Patches are ordered row by row, so token ``1 + i * grid + j`` is patch ``(i, j)``.
        """
        data = images.data if isinstance(images, Tensor) else backend.asarray(images)
        if data.dtype.kind not in "fiu":
            raise ValueError(f"ViT: images must be numeric, got dtype {data.dtype}")
        given = tuple(data.shape)
        if data.ndim == 3 and self.channels == 1:
            data = data[:, None]
        expected = (self.channels, self.image_size, self.image_size)
        if data.ndim != 4 or tuple(data.shape[1:]) != expected:
            raise ValueError(
                f"ViT: expected images (B, {self.channels}, {self.image_size}, {self.image_size})"
                f"{' or (B, H, W)' if self.channels == 1 else ''}, got shape {given}"
            )
        B, C, p, g = data.shape[0], self.channels, self.patch_size, self.grid
        x = data.astype(self.cls_token.dtype, copy=False)  # (patch_emb may be wrapped by an adapter)
        x = x.reshape(B, C, g, p, g, p).transpose(0, 2, 4, 1, 3, 5)  # (B, g, g, C, p, p)
        return Tensor(x.reshape(B, g * g, C * p * p))  # (B, n_patches, C*p*p)

    def features(self, images) -> Tensor:
        """Token states after the final LayerNorm: ``(B, n_tokens, n_embd)``."""
        patches = self.patchify(images)
        B = patches.shape[0]
        tok = self.patch_emb(patches)  # (B, n_patches, n_embd)
        cls = broadcast_to(self.cls_token, (B, 1, self.config.n_embd))
        return self.run_blocks(concat([cls, tok], axis=1) + self.pos_emb.weight)  # (B, n_tokens, n_embd)

    def forward(self, images) -> Tensor:
        return self.classify(self.features(images))  # (B, n_classes)
