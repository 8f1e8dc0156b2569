"""What a token gate thresholds (its *score*) and how it picks tokens: the gate variants.

TS-PEFT (arXiv 2511.16147) scores token ``i`` of a gated layer by the ratio
``r_i = ||d_i|| / ||b_i||`` and opens it where ``r_i >= tau``, one ``tau``
per layer (:func:`~minitspeft.peft.gate.gated_update`). Measured on the needle
task, that threshold learns whether a layer's update helps *overall*: its
gradient ``dL/dtau = -sum_i <g_i, d_i> phi'(r_i - tau)`` is one number summed
over every token, and the layers end all-open or all-closed
(``docs/token-selection.md``). This module holds the alternatives, each
written from the engine's ops so that its backward pass follows from theirs:

- :func:`sequence_ratio` (derived here): ``s_i = (r_i + eps) / (mean_j r_j + eps)``
  over the tokens ``j`` of the same sequence, so one ``tau`` picks tokens
  relative to their own sequence; ``s = 1`` wherever a sequence's ratios are equal.
- :func:`router_score` (after the learned routers of Mixture-of-Depths,
  arXiv 2404.02258, and DyT, NeurIPS 2024; it departs from the paper's norm
  ratio): ``s_i = 1 + w . b_i / ||b_i||`` with a learned vector ``w`` per layer.
- :func:`top_k_step` (Mixture-of-Depths' per-sequence capacity; CoDA,
  arXiv 2304.04947): open exactly ``ceil(k T)`` tokens of each sequence,
  the highest scores, with a straight-through backward.

Scores have shape ``(..., T)``: one per token, the tokens of one sequence on the last axis.
"""

from __future__ import annotations

import math

from .. import backend
from ..reductions import stable_norm
from ..tensor import Tensor
from .surrogates import surrogate_grad


def sequence_ratio(r: Tensor, eps: float) -> Tensor:
    """The ratio normalised within each sequence: ``s_i = (r_i + eps) / (mean_j r_j + eps)`` (derived here).

    Args:
        r: per-token ratios ``(..., T)`` (float); the mean runs over the last axis.
        eps: positive guard; with it ``s = 1`` where all of a sequence's ratios are 0 (LoRA's start, B = 0).

    Returns:
        ``s`` ``(..., T)``, mean about 1 in each sequence. Composed from the
        engine's ops, so its gradient is theirs:
        ``ds_i/dr_j = [i = j] / (m + eps) - (r_i + eps) / (T (m + eps)^2)`` with ``m`` the mean.
    """
    e = r.dtype.type(eps)
    return (r + e) / (r.mean(axis=-1, keepdims=True) + e)


def router_score(b: Tensor, weight: Tensor, eps: float, position_bias: Tensor | None = None) -> Tensor:
    """A learned per-token score ``s_i = 1 + w . b_i / (||b_i|| + eps) + p_t(i)`` (after MoD and DyT routers).

    The router reads the direction of the frozen output ``b_i`` (detached: the
    score trains ``w`` and ``p`` only, never the layers below), plus a learned
    offset ``p_t`` for the token's position ``t`` in its sequence: content
    decides where tokens move around, position where the layout is fixed
    (a CLS token, image borders). With ``w = 0`` and ``p = 0`` every score is
    1, above a threshold that starts at 0: the layer starts dense.

    Args:
        b: frozen output ``(..., T, C)``; weight: ``w`` ``(C,)``.
        eps: guard of the norm.
        position_bias: ``p`` ``(P,)`` with ``P >= T``, or None (no offset; so for a 2-D ``b``).

    Returns:
        ``s`` ``(..., T)``.

    Raises:
        ValueError: if ``weight`` is not ``(C,)`` or ``position_bias`` is shorter than the sequence.
    """
    if weight.shape != (b.shape[-1],):
        raise ValueError(f"router_score: weight has shape {weight.shape}, expected ({b.shape[-1]},) for b {b.shape}")
    bd = b.data
    u = bd / (stable_norm(bd, -1) + bd.dtype.type(eps))  # (..., T, C) unit rows
    s = Tensor(u) @ weight + 1.0  # (..., T)
    if position_bias is None or b.ndim < 3:
        return s
    T = b.shape[-2]
    if position_bias.shape[0] < T:
        raise ValueError(f"router_score: position_bias holds {position_bias.shape[0]} positions, "
                         f"the sequence has {T}")
    return s + position_bias[:T]


def keep_count(keep_ratio: float, n_tokens: int) -> int:
    """How many of ``n_tokens`` a per-sequence budget ``keep_ratio`` opens: ``ceil(keep_ratio * n_tokens)``,
    at least 1 (a float guard keeps ``0.5 * 10`` at 5, not 6)."""
    return max(1, min(n_tokens, math.ceil(keep_ratio * n_tokens - 1e-9)))


def top_k_step(s: Tensor, keep_ratio: float, surrogate: str = "sigmoid", temperature: float = 0.1) -> tuple:
    """Open the ``keep_count(keep_ratio, T)`` highest-scoring tokens of each sequence (Mixture-of-Depths' capacity).

    Args:
        s: scores ``(..., T)``; a 1-D ``s`` is one sequence.
        keep_ratio: the share of each sequence's tokens to open, in ``(0, 1]``.
        surrogate, temperature: the straight-through derivative, as :func:`surrogate_grad`.

    Returns:
        ``(S, t)``: the gate Tensor ``S`` ``(..., T)``, exactly 0 or 1 with
        exactly ``k`` ones per sequence (ties broken towards earlier tokens),
        and the backend array ``t`` ``(..., 1)``, each sequence's boundary:
        halfway between its ``k``-th and ``(k+1)``-th highest score (its lowest
        score when all are kept).

    Backward (straight-through, derived here): ``dS_i/ds_i = phi'(s_i - t)``
    with ``t`` held constant, as if each sequence had its own threshold ``t``.
    """
    xp = backend.xp
    T = s.shape[-1]
    k = keep_count(keep_ratio, T)
    order = xp.argsort(-s.data, axis=-1, kind="stable")  # (..., T): best first
    ranks = xp.argsort(order, axis=-1, kind="stable")  # rank of each token in its sequence
    S = (ranks < k).astype(s.dtype)
    ordered = xp.take_along_axis(s.data, order, axis=-1)
    if k < T:
        t = (ordered[..., k - 1:k] + ordered[..., k:k + 1]) / 2
    else:
        t = ordered[..., T - 1:T]
    z = s.data - t

    def backward(g):
        return (g * surrogate_grad(z, surrogate, temperature),)

    return Tensor.from_op(S, (s,), backward, "top_k_step"), t
