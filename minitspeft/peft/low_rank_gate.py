"""The paper's gate on a LoRA update, judged and applied in low rank, so that closed tokens cost little.

A LoRA update is ``d = s B u`` per token, with ``u = A x`` (``r`` numbers),
``B`` ``(C, r)`` and ``s`` the scaling. The gate needs only its length, and
that is a quadratic form in ``u`` (derived here)::

    ||d||^2 = s^2 u^T (B^T B) u

so :func:`gated_lora_update` judges every token from ``u`` and the small
``r x r`` matrix ``M = B^T B`` without forming ``d``, then computes ``B u``
only for the open tokens. Its backward is low rank too: with ``g`` the
upstream gradient, ``<g_i, d_i> = s <B^T g_i, u_i>``; the ratio's
derivatives are ``dr_i/du_i = s^2 M u_i / (||d_i|| (||b_i|| + eps))`` and,
summed over tokens, ``sum_i k_i dr_i/dB = s^2 B sum_i w_i u_i u_i^T`` with
``w_i = k_i / (||d_i|| (||b_i|| + eps))``; the direct term is ``s S_i B^T g_i``
for ``u_i`` and ``s sum_i S_i g_i u_i^T`` for ``B``. Only ``dr/db`` is a full
``(N, C)`` array, and it is skipped for the tokens where the surrogate's
derivative is exactly zero (the ``"rect"`` surrogate away from ``tau``).

The values are those of :func:`~minitspeft.peft.gate.gated_update` applied
to ``d = s u B^T`` up to float rounding (the tests check outputs and
gradients against it). Where the quadratic form over- or underflows the
dtype, the call falls back to exactly that composition.
"""

from __future__ import annotations

from .. import backend
from ..extend import require_tensor
from ..reductions import stable_norm
from ..tensor import Tensor
from .gate import _check_pair, _check_settings, _ratio_grad_b, gated_update
from .surrogates import surrogate_grad


def _check(b: Tensor, u: Tensor, weight: Tensor) -> None:
    for name, t in (("b", b), ("u", u), ("lora_B", weight)):
        require_tensor("gated_lora_update", name, t)
    if b.ndim == 0 or u.ndim != b.ndim or u.shape[:-1] != b.shape[:-1]:
        raise ValueError(f"gated_lora_update: b {b.shape} and u {u.shape} must be (..., C) and (..., r) "
                         "with the same leading shape")
    if weight.shape != (b.shape[-1], u.shape[-1]):
        raise ValueError(f"gated_lora_update: lora_B has shape {weight.shape}, expected (C, r) = "
                         f"{(b.shape[-1], u.shape[-1])} from b {b.shape} and u {u.shape}")


def _lengths(u2, W, scaling):
    """``(M u, ||d||)`` for every token from the quadratic form, or None where it is not safe:
    a square that overflows, or a nonzero update whose square falls below the normal range."""
    xp = backend.xp
    with backend.quiet_overflow():
        uM = u2 @ (W.T @ W)  # (N, r)
        q = (uM * u2).sum(axis=-1)  # ||B u||^2
    finfo = xp.finfo(q.dtype)
    if not bool(xp.isfinite(q).all()) or not bool(xp.isfinite(uM).all()):
        return None
    if bool(W.any()) and bool(((q < finfo.tiny * 2**24) & (u2 != 0).any(axis=-1)).any()):
        return None  # tiny (or cancelled) lengths: the direct norm is exact there, this is not
    return uM, q.dtype.type(scaling) * xp.sqrt(xp.maximum(q, 0))


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
        ``(out, S, r)`` exactly as :func:`~minitspeft.peft.gate.gated_update`
        returns them for ``d = scaling * u @ lora_B.T``.

    Raises:
        TypeError: if an input is not a Tensor.
        ValueError: if the shapes do not fit or ``tau`` is not a finite scalar.

    Formulas: the module docstring (derived here from the paper's gate).
    """
    _check(b, u, lora_B)
    _check_settings("gated_lora_update", tau, eps, temperature)
    lengths = _lengths(u.data.reshape(-1, u.shape[-1]), lora_B.data, scaling)
    if lengths is None:  # extreme magnitudes: the direct composition, exact at any size
        d = (u @ lora_B.swapaxes(0, 1)) * scaling
        _check_pair("gated_lora_update", b, d)
        return gated_update(b, d, tau, surrogate, temperature, eps, grad_through_ratio)
    return _LowRankGate(b, u, lora_B, tau, scaling, lengths, surrogate, temperature, eps,
                        grad_through_ratio).tensors()


class _LowRankGate:
    """One call's forward values and its two backward rules (``out`` and ``S``), in ``(N, ...)`` rows."""

    def __init__(self, b, u, lora_B, tau, scaling, lengths, surrogate, temperature, eps, grad_through_ratio):
        xp = backend.xp
        self.b, self.u, self.lora_B, self.tau = b, u, lora_B, tau
        C, R = b.shape[-1], u.shape[-1]
        self.b2, self.u2, self.W = b.data.reshape(-1, C), u.data.reshape(-1, R), lora_B.data
        self.uM, self.nd = lengths
        self.s = b.dtype.type(scaling)
        self.nb = stable_norm(self.b2, -1)[:, 0]
        self.denom = self.nb + b.dtype.type(eps)
        self.r = self.nd / self.denom
        self.t = tau.data.reshape(())
        self.hard = (self.r >= self.t).astype(b.dtype)  # ties open
        self.phi = surrogate_grad(self.r - self.t, surrogate, temperature)
        self.through = grad_through_ratio
        out = self.b2.copy()
        rows = xp.flatnonzero(self.hard)
        if rows.size == self.hard.size:
            out += (self.u2 @ self.W.T) * self.s
        elif rows.size:
            out[rows] += (self.u2[rows] @ self.W.T) * self.s  # B u for the open tokens only
        self.out = out

    def tensors(self) -> tuple:
        """``(out, S, r)`` as :func:`gated_lora_update` returns them."""
        lead, parents = self.b.shape[:-1], (self.b, self.u, self.lora_B, self.tau)
        out = Tensor.from_op(self.out.reshape(self.b.shape), parents, self.backward_out, "gated_lora_update")
        S = Tensor.from_op(self.hard.reshape(lead), parents, self.backward_S, "gated_lora_update.S")
        return out, S, self.r.reshape(lead)

    def through_S(self, k) -> list:
        """Gradients ``[b, u, B, tau]`` (rows) through ``r`` from ``k = dL/dS * phi'(r - tau)``."""
        xp, s, nd = backend.xp, self.s, self.nd
        grads = [None, None, None, None]
        if self.tau.requires_grad:
            grads[3] = (-k.sum()).reshape(self.tau.shape).astype(self.tau.dtype)
        if not self.through:
            return grads
        w = k / xp.where(nd > 0, self.denom * nd, 1) * (nd > 0)  # 0 where the update is 0 (subgradient)
        w *= s * s
        if self.u.requires_grad:
            grads[1] = self.uM * w[:, None]
        if self.lora_B.requires_grad:
            grads[2] = self.W @ (self.u2.T @ (self.u2 * w[:, None]))
        if self.b.requires_grad:
            coef = _ratio_grad_b(k, nd, self.denom, self.r) / xp.where(self.nb > 0, self.nb, 1)  # of b / ||b||
            active = xp.flatnonzero(k)
            if active.size == k.size:
                grads[0] = self.b2 * coef[:, None]
            elif active.size:  # the surrogate is exactly flat at the other tokens: nothing to add there
                grads[0] = xp.zeros_like(self.b2)
                grads[0][active] = self.b2[active] * coef[active, None]
        return grads

    def shaped(self, grads) -> tuple:
        gb, gu, gW, gt = grads
        return (None if gb is None else gb.reshape(self.b.shape), None if gu is None else gu.reshape(self.u.shape),
                gW, gt)

    def backward_out(self, g) -> tuple:
        g2 = g.reshape(self.b2.shape)
        gBu = g2 @ self.W  # (N, r): B^T g per token
        grads = self.through_S(self.s * (gBu * self.u2).sum(axis=-1) * self.phi)  # <g, d> = s <B^T g, u>
        direct = (self.s * self.hard)[:, None]
        if self.u.requires_grad:
            grads[1] = gBu * direct if grads[1] is None else grads[1] + gBu * direct
        if self.lora_B.requires_grad:
            gW = g2.T @ (self.u2 * direct)
            grads[2] = gW if grads[2] is None else grads[2] + gW
        if self.b.requires_grad:
            if grads[0] is None:
                grads[0] = g2
            else:
                grads[0] += g2
        return self.shaped(grads)

    def backward_S(self, g) -> tuple:
        return self.shaped(self.through_S(g.reshape(-1) * self.phi))
