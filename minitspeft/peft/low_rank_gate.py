"""The paper's gate on a LoRA update, judged and applied in low rank, so that closed tokens cost little.

A LoRA update is ``d = s B u`` per token, with ``u = A x`` (``r`` numbers),
``B`` ``(C, r)`` and ``s`` the scaling. The gate needs only its length, and
that is a quadratic form in ``u`` (derived here)::

    ||d||^2 = s^2 u^T (B^T B) u

so the gate is judged from ``u`` and the small ``r x r`` matrix ``M = B^T B``
without forming ``d`` or taking its norm over ``C`` channels.

The update itself is applied as ``(S u) (s B)^T``: the closed tokens' rows of
``u`` are zeroed, not skipped. Gathering the open rows, multiplying only those
and scattering them back into ``b`` was measured here (NumPy, ``N = 2048``,
``r = 8``, ``C = 128`` and ``512``) 1.4-2.8x slower than the masked product at
densities 0.5 and 1.0; at 0.2 it was 18% faster for 128 channels and 19%
slower for 512. At this rank the product costs about as much as moving the
rows, so the gate keeps the one simple path.
:func:`gated_lora_update` is three ops, each with its own backward:

1. :func:`lora_ratio`: ``r = ||d|| / (||b|| + eps)`` from the quadratic form.
   Backward, with ``k`` the gradient reaching ``r``:
   ``dr_i/du_i = s^2 M u_i / (||d_i|| (||b_i|| + eps))``; summed over tokens,
   ``sum_i k_i dr_i/dB = s^2 B sum_i w_i u_i u_i^T`` with
   ``w_i = k_i / (||d_i|| (||b_i|| + eps))``; ``dr/db`` as for
   :func:`~minitspeft.peft.gate.token_ratio`, skipped at the tokens whose
   ``k`` is exactly zero (the ``"rect"`` surrogate away from ``tau``).
2. :func:`~minitspeft.peft.gate.threshold_step`: ``S = 1[r >= tau]`` with the
   straight-through surrogate.
3. :func:`apply_lora`: ``out = b + S s B u``. Backward: ``db = g``,
   ``du_i = S_i s B^T g_i``, ``dB = s sum_i S_i g_i u_i^T`` and
   ``dS_i = <g_i, d_i> = s <B^T g_i, u_i>``: all low rank.

Because ``S`` is one node, the gradient from the regulariser and the one
from ``out`` meet there, and the ratio's backward runs once. The values are
those of :func:`~minitspeft.peft.gate.gated_update` on ``d = s u B^T`` up to
float rounding (the tests check outputs and gradients against it). Where the
quadratic form over- or underflows the dtype, :func:`lora_ratio` falls back
to :func:`~minitspeft.peft.gate.token_ratio` on the formed update.
"""

from __future__ import annotations

from .. import backend
from ..extend import require_tensor
from ..reductions import stable_norm
from ..tensor import Tensor
from .gate import _check_settings, _ratio_grad_b, threshold_step, token_ratio


def _check(op: str, b: Tensor, u: Tensor, weight: Tensor) -> None:
    for name, t in (("b", b), ("u", u), ("lora_B", weight)):
        require_tensor(op, name, t)
    if b.ndim == 0 or u.ndim != b.ndim or u.shape[:-1] != b.shape[:-1]:
        raise ValueError(f"{op}: b {b.shape} and u {u.shape} must be (..., C) and (..., r) "
                         "with the same leading shape")
    if weight.shape != (b.shape[-1], u.shape[-1]):
        raise ValueError(f"{op}: lora_B has shape {weight.shape}, expected (C, r) = "
                         f"{(b.shape[-1], u.shape[-1])} from b {b.shape} and u {u.shape}")


def _lengths(u2, W, scaling):
    """``(M u, ||d||)`` for every token from the quadratic form, or None where it is not safe:
    a square that overflows, or a nonzero update whose square falls below the normal range."""
    xp = backend.xp
    with backend.quiet_overflow():
        uM = u2 @ (W.T @ W)  # (N, r)
        q = (uM * u2).sum(axis=-1)  # ||B u||^2
    overflow = ~xp.isfinite(q).all() | ~xp.isfinite(uM).all()
    tiny = W.any() & ((q < xp.finfo(q.dtype).tiny * 2**24) & (u2 != 0).any(axis=-1)).any()  # (or cancelled)
    if bool(overflow | tiny):  # one look from the host (a GPU synchronises once), not three
        return None  # the direct norm is exact in both cases, this is not
    return uM, q.dtype.type(scaling) * xp.sqrt(xp.maximum(q, 0))


def _row_norms(b2):
    """``||b_i||`` of each row of ``b2`` ``(N, C)`` as one fused sum of squares (``einsum``: no ``(N, C)``
    temporary), with :func:`~minitspeft.reductions.stable_norm` wherever a square over- or underflows."""
    xp = backend.xp
    with backend.quiet_overflow():
        n = xp.sqrt(xp.einsum("ij,ij->i", b2, b2))
    if bool((xp.isfinite(n) & (n >= xp.sqrt(xp.finfo(n.dtype).tiny))).all()):
        return n
    return stable_norm(b2, -1)[:, 0]


def lora_ratio(b: Tensor, u: Tensor, lora_B: Tensor, scaling: float, eps: float = 1e-6) -> Tensor:
    """``r = ||s B u|| / (||b|| + eps)`` per token, from ``u`` without forming the update.

    Args:
        b: the frozen output ``(..., C)``; u: ``lora_A(x)`` ``(..., r)``; lora_B: ``(C, r)``;
            scaling: ``s = lora_alpha / r``; eps: the ratio's guard (> 0).

    Returns:
        ``r`` ``(...)``, equal to :func:`~minitspeft.peft.gate.token_ratio` of ``b`` and ``s u B^T``
        up to float rounding.

    Raises:
        TypeError: if an input is not a Tensor; ValueError: for shapes that do not fit.

    Backward: step 1 of the module docstring (derived here).
    """
    _check("lora_ratio", b, u, lora_B)
    _check_settings("lora_ratio", None, eps)
    xp = backend.xp
    C, R = b.shape[-1], u.shape[-1]
    b2, u2, W = b.data.reshape(-1, C), u.data.reshape(-1, R), lora_B.data
    lengths = _lengths(u2, W, scaling)
    if lengths is None:  # extreme magnitudes: the ratio of the formed update, exact at any size
        return token_ratio(b, (u @ lora_B.swapaxes(0, 1)) * scaling, eps)
    uM, nd = lengths
    nb = _row_norms(b2)
    denom = nb + b.dtype.type(eps)
    r = nd / denom

    def backward(g):
        k = g.reshape(-1)
        gb = gu = gW = None
        with backend.quiet_overflow():  # one division at a time: ||b|| ||d|| can overflow where r does not
            w = k / denom / xp.where(nd > 0, nd, 1) * (nd > 0)  # 0 where the update is 0 (subgradient)
            w *= b.dtype.type(scaling) ** 2
        if u.requires_grad:
            gu = (uM * w[:, None]).reshape(u.shape)
        if lora_B.requires_grad:
            gW = W @ (u2.T @ (u2 * w[:, None]))
        if b.requires_grad:
            coef = _ratio_grad_b(k, nd, denom, r) / xp.where(nb > 0, nb, 1)  # times b (b / ||b|| * ||b||)
            active = xp.flatnonzero(k)
            if active.size == k.size:
                gb = b2 * coef[:, None]
            elif active.size:  # the surrogate is exactly flat at the other tokens: nothing to add there
                gb = xp.zeros_like(b2)
                gb[active] = b2[active] * coef[active, None]
            gb = None if gb is None else gb.reshape(b.shape)  # None: flat at every token
        return gb, gu, gW

    return Tensor.from_op(r.reshape(b.shape[:-1]), (b, u, lora_B), backward, "lora_ratio")


def apply_lora(b: Tensor, u: Tensor, lora_B: Tensor, scaling: float, S: Tensor) -> Tensor:
    """``out = b + S * s B u`` per token (``S u`` first, so a closed token's row of the product is 0).

    Args:
        b: ``(..., C)``; u: ``(..., r)``; lora_B: ``(C, r)``; scaling: ``s``;
            S: the gates ``(...)``, each exactly 0 or 1 (what a threshold gives).

    Returns:
        ``out`` ``(..., C)``.

    Raises:
        TypeError: if an input is not a Tensor; ValueError: for shapes that do not fit or
            an ``S`` that is not all 0 and 1.

    Backward: step 3 of the module docstring (derived here).
    """
    _check("apply_lora", b, u, lora_B)
    require_tensor("apply_lora", "S", S)
    C, R = b.shape[-1], u.shape[-1]
    if S.shape != b.shape[:-1]:
        raise ValueError(f"apply_lora: S has shape {S.shape}, expected b's leading shape {b.shape[:-1]}")
    hard = S.data.reshape(-1)
    if not bool(((hard == 0) | (hard == 1)).all()):
        raise ValueError("apply_lora: S must hold only 0 and 1 (a threshold's gates)")
    b2, u2 = b.data.reshape(-1, C), u.data.reshape(-1, R)
    sW = lora_B.data * b.dtype.type(scaling)  # (C, r): the scaling on the small factor
    uS = u2 * hard[:, None]  # closed tokens' rows are zero (see the module docstring)
    out = uS @ sW.T
    out += b2

    def backward(g):
        g2 = g.reshape(-1, C)
        gBu = g2 @ sW  # (N, r): s B^T g per token
        gS = (gBu * u2).sum(axis=-1).reshape(S.shape) if S.requires_grad else None  # <g, d>
        gu = (gBu * hard[:, None]).reshape(u.shape) if u.requires_grad else None
        gW = (g2.T @ uS) * b.dtype.type(scaling) if lora_B.requires_grad else None
        return (g if b.requires_grad else None), gu, gW, gS

    return Tensor.from_op(out.reshape(b.shape), (b, u, lora_B, S), backward, "apply_lora")


def gated_lora_update(b: Tensor, u: Tensor, lora_B: Tensor, scaling: float, tau: Tensor,
                      surrogate: str = "sigmoid", temperature: float = 0.1, eps: float = 1e-6,
                      grad_through_ratio: bool = True) -> tuple:
    """``out = b + S * scaling * B u`` per token with ``S = 1[r >= tau]``, ``r = ||d|| / (||b|| + eps)``.

    Args:
        b: the frozen output ``(..., C)``; u: ``lora_A(x)`` ``(..., r)``;
            lora_B: LoRA's B weight ``(C, r)``; scaling: ``lora_alpha / r``.
        tau, surrogate, temperature, eps, grad_through_ratio: as in
            :func:`~minitspeft.peft.gate.gated_update`.

    Returns:
        ``(out, S, r)`` as :func:`~minitspeft.peft.gate.gated_update` returns them for
        ``d = scaling * u @ lora_B.T`` (``r`` a backend array).

    Raises:
        TypeError: if an input is not a Tensor.
        ValueError: if the shapes do not fit or ``tau`` is not a finite scalar.

    Formulas: the module docstring (derived here from the paper's gate).
    """
    _check("gated_lora_update", b, u, lora_B)
    _check_settings("gated_lora_update", tau, eps, temperature)
    judged = (b, u, lora_B) if grad_through_ratio else (b.detach(), u.detach(), lora_B.detach())
    r = lora_ratio(*judged, scaling, eps)
    S = threshold_step(r, tau, surrogate, temperature)
    return apply_lora(b, u, lora_B, scaling, S), S, r.data
