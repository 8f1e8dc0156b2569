"""The benchmark's configurations and the names of what it runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

VARIANTS = ("lora", "ts-lora")


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark model and step (all three implementations build exactly this).

    A pre-LayerNorm encoder (tanh GELU, mean pooling, ``n_classes`` outputs),
    float32, frozen, with LoRA (``r``, ``lora_alpha``) on q, k, v, o, fc1 and
    fc2 of every block; ``ts-lora`` gates each update (sigmoid surrogate,
    ``temperature``, ``tau_init``). One step is forward, cross-entropy (plus
    ``sparsity_weight * mean(S)`` for ``ts-lora``), backward and an AdamW
    update (``lr``) of the trainable parameters.
    """

    vocab_size: int = 64
    seq_len: int = 64
    batch_size: int = 32
    n_embd: int = 128
    n_head: int = 4
    n_layer: int = 4
    mlp_ratio: int = 4
    n_classes: int = 10
    r: int = 8
    lora_alpha: float = 16.0
    temperature: float = 0.1
    tau_init: float = 0.0
    sparsity_weight: float = 0.01
    lr: float = 1e-3

    def to_dict(self) -> dict:
        return asdict(self)


def update_flop_share(config: BenchConfig) -> dict:
    """The share of the step's floating-point work that a closed token could skip: LoRA's ``B u``.

    Per token and block (derived here; a multiply-add is 2 FLOPs; ``C = n_embd``,
    ``H = mlp_ratio * C``, ``T = seq_len``), the forward costs ``8 C^2 + 4 C H`` in the frozen
    projections, ``4 T C`` in attention and ``2 r (5 C + H)`` in each of LoRA's ``A x`` and ``B u``
    (``q, k, v, o, fc1, fc2``); the backward of a frozen base costs ``8 C^2 + 4 C H`` (input gradients
    only), ``8 T C`` in attention and ``8 r (5 C + H)`` in LoRA. Only the forward's ``B u`` belongs
    to one token's update alone: the backward needs ``B^T g`` at every token the surrogate reaches.

    Returns:
        ``{"forward": share of the forward, "step": share of forward + backward}`` (fractions).
    """
    C, T, r = config.n_embd, config.seq_len, config.r
    H = config.mlp_ratio * C
    lora = 2 * r * (5 * C + H)  # one of A x or B u, all six targets
    forward = 8 * C * C + 4 * C * H + 4 * T * C + 2 * lora
    backward = 8 * C * C + 4 * C * H + 8 * T * C + 4 * lora
    return {"forward": lora / forward, "step": lora / (forward + backward)}


CONFIGS = {
    "bench-small": BenchConfig(),
    "tiny": BenchConfig(vocab_size=16, seq_len=8, batch_size=4, n_embd=16, n_head=2, n_layer=1, r=2),
    # for a GPU: about 64x bench-small's work per step (some 10 s a step on a laptop CPU)
    "large": BenchConfig(seq_len=256, batch_size=16, n_embd=512, n_head=8, n_layer=8),
}


def scaled(config: BenchConfig, **changes) -> BenchConfig:
    """A copy of ``config`` with some sizes changed (for the scaling table)."""
    return replace(config, **changes)
