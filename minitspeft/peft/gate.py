"""The token gate of TS-PEFT (arXiv 2511.16147): apply a PEFT update only where it is large enough.

For one gated layer, with ``b`` the frozen path's output and ``d`` the PEFT
update, both ``(..., C)``, and one token per leading index ``i``::

    r_i   = ||d_i|| / (||b_i|| + eps)        # token_ratio
    S_i   = 1[r_i >= tau]                    # threshold_step: exactly 0 or 1
    out_i = b_i + S_i * d_i

The relative-magnitude test and ``S_i = 1[r_i >= tau]`` are the paper's; the
straight-through backward below, the ``eps`` guard and the zero-norm
convention are derived here (TS-PEFT.md). :func:`gated_update` is the whole
gate as one fused op whose backward is exactly TS-PEFT.md's equations; the
same gradients come from chaining the smaller fused ops :func:`token_ratio`
and :func:`threshold_step` with the product (the tests check both)::

    dL/dS_i   = <g_i, d_i>
    dL/dd_i   = S_i g_i + dL/dS_i * phi'(r_i - tau) * dr_i/dd_i
    dL/db_i   = g_i     + dL/dS_i * phi'(r_i - tau) * dr_i/db_i
    dL/dtau   = -sum_i dL/dS_i * phi'(r_i - tau)
"""

from __future__ import annotations

from .. import backend
from ..nn.module import Module, Parameter
from ..tensor import Tensor
from .config import GateConfig


def _ratio(b, d, eps: float) -> tuple:
    """Arrays ``(||b||, ||d||, ||b|| + eps, r)`` over the last axis."""
    xp = backend.xp
    nb = xp.sqrt((b * b).sum(axis=-1))  # (...)
    nd = xp.sqrt((d * d).sum(axis=-1))
    denom = nb + b.dtype.type(eps)
    return nb, nd, denom, nd / denom


def _unit(v, n):
    """``v / ||v||`` row by row, and 0 where ``||v|| = 0`` (the norm's subgradient at 0)."""
    xp = backend.xp
    return v * (1 / xp.where(n > 0, n, 1))[..., None]


def _check_pair(op: str, b: Tensor, d: Tensor) -> None:
    if b.shape != d.shape:
        raise ValueError(f"{op}: base output shape {b.shape} and update shape {d.shape} differ")


def token_ratio(b: Tensor, d: Tensor, eps: float) -> Tensor:
    """Per-token relative size of the update: ``r = ||d|| / (||b|| + eps)`` over the last axis.

    Args:
        b, d: ``(..., C)`` float Tensors of the same shape.
        eps: positive guard, so that ``r`` stays finite where ``b`` is zero.

    Returns:
        ``r`` of shape ``(...)``.

    Raises:
        ValueError: if the shapes differ.

    Backward (derived here): ``dr/dd = d / (||d|| (||b|| + eps))`` and
    ``dr/db = -||d|| / (||b|| + eps)^2 * b / ||b||``; where a norm is zero its
    direction is taken as 0, the norm's subgradient at 0.
    """
    _check_pair("token_ratio", b, d)
    nb, nd, denom, r = _ratio(b.data, d.data, eps)

    def backward(g):
        gd = _unit(d.data, nd) * (g / denom)[..., None] if d.requires_grad else None
        gb = _unit(b.data, nb) * (-g * nd / (denom * denom))[..., None] if b.requires_grad else None
        return gb, gd

    return Tensor._from_op(r, (b, d), backward, "token_ratio")


def gated_update(b: Tensor, d: Tensor, tau: Tensor, surrogate: str = "sigmoid", temperature: float = 0.1,
                 eps: float = 1e-6, grad_through_ratio: bool = True) -> tuple:
    """The whole gate as one fused op: ``out = b + 1[r >= tau] d`` per token.

    Args:
        b: frozen output ``(..., C)``; d: update ``(..., C)``; tau: scalar ``()``.
        surrogate, temperature: the straight-through derivative (:func:`surrogate_grad`).
        eps: guard of the ratio; grad_through_ratio: let gradients reach ``b``
            and ``d`` through ``r`` as well.

    Returns:
        ``(out, r, S)``: the Tensor ``out`` ``(..., C)`` and the backend arrays
        ``r`` and ``S`` ``(...)`` of the forward pass (for statistics).

    Raises:
        ValueError: if the shapes of ``b`` and ``d`` differ or ``tau`` is not a scalar.

    Backward: TS-PEFT.md's equations (derived here), with ``k_i = <g_i, d_i> phi'(r_i - tau)``:
    ``dd_i = S_i g_i + k_i dr_i/dd_i``, ``db_i = g_i + k_i dr_i/db_i``,
    ``dtau = -sum_i k_i`` (the ``dr`` terms only with ``grad_through_ratio``).
    """
    _check_pair("gated_update", b, d)
    if tau.size != 1:
        raise ValueError(f"gated_update: tau must be a scalar, got shape {tau.shape}")
    nb, nd, denom, r = _ratio(b.data, d.data, eps)
    t = tau.data.reshape(())
    S = (r >= t).astype(b.dtype)  # ties open
    out = b.data + S[..., None] * d.data

    def backward(g):
        k = (g * d.data).sum(axis=-1) * surrogate_grad(r - t, surrogate, temperature)  # (...)
        gb = gd = gt = None
        if d.requires_grad:
            gd = S[..., None] * g
            if grad_through_ratio:
                gd = gd + _unit(d.data, nd) * (k / denom)[..., None]
        if b.requires_grad:
            gb = g
            if grad_through_ratio:
                gb = g + _unit(b.data, nb) * (-k * nd / (denom * denom))[..., None]
        if tau.requires_grad:
            gt = (-k.sum()).reshape(tau.shape).astype(tau.dtype)
        return gb, gd, gt

    return Tensor._from_op(out, (b, d, tau), backward, "gated_update"), r, S


def surrogate_grad(z, surrogate: str, temperature: float):
    """``phi'(z)``, the straight-through stand-in for the step's derivative at ``z = r - tau``.

    ``"sigmoid"``: ``sigma'(z / T) / T``; ``"rect"``: ``1[|z| <= T] / (2T)``;
    ``"identity"``: 1. Source: TS-PEFT.md (derived here). ``z`` is a backend array.

    Raises:
        ValueError: for an unknown surrogate.
    """
    xp = backend.xp
    T = z.dtype.type(temperature)
    if surrogate == "sigmoid":
        e = xp.exp(-xp.abs(z / T))  # sigma'(u) = e^-|u| / (1 + e^-|u|)^2, stable for any u
        return e / ((1 + e) * (1 + e)) / T
    if surrogate == "rect":
        return (xp.abs(z) <= T).astype(z.dtype) / (2 * T)
    if surrogate == "identity":
        return xp.ones_like(z)
    raise ValueError(f"surrogate_grad: unknown surrogate {surrogate!r}")


def threshold_step(r: Tensor, tau: Tensor, surrogate: str = "sigmoid", temperature: float = 0.1) -> Tensor:
    """The hard gate ``S = 1[r >= tau]`` (ties open) with a straight-through backward.

    Args:
        r: ratios ``(...)``; tau: a scalar Tensor ``()``.
        surrogate, temperature: see :func:`surrogate_grad`.

    Returns:
        ``S`` with ``r``'s shape and dtype, exactly 0.0 or 1.0.

    Backward (TS-PEFT.md, derived here): ``dS/dr = phi'(r - tau)``,
    ``dS/dtau = -phi'(r - tau)``.
    """
    if tau.size != 1:
        raise ValueError(f"threshold_step: tau must be a scalar, got shape {tau.shape}")
    t = tau.data.reshape(())
    S = (r.data >= t).astype(r.dtype)

    def backward(g):
        gp = g * surrogate_grad(r.data - t, surrogate, temperature)
        return gp, (-gp.sum()).reshape(tau.shape).astype(tau.dtype)

    return Tensor._from_op(S, (r, tau), backward, "threshold_step")


STUCK_PEAK = 1e-4  # below this share of phi'(0) at every token, tau gets no usable gradient


class TokenGate(Module):
    """One learnable threshold ``tau`` (shape ``()``, kept ``>= 0``) gating a layer's update per token.

    ``forward(b, d)`` takes the frozen output ``b`` and the update ``d``, both
    ``(..., C)``, and returns ``b + S * d`` through :func:`gated_update`. It
    keeps running statistics for ``gate_stats()`` and, for the sparsity
    regulariser, ``last_S``: the last gate values as a Tensor whose gradient
    is the surrogate's.

    Args:
        config: a :class:`GateConfig`.
        dtype: dtype of ``tau`` (that of the gated layer).
    """

    def __init__(self, config: GateConfig, dtype=None):
        self.config = config
        dtype = dtype or backend.get_default_dtype()
        self.tau = Parameter(backend.xp.asarray(config.tau_init, dtype=dtype), lower_bound=0.0)
        self._inputs = None
        self._soft = None
        self.reset_stats()

    def reset_stats(self) -> None:
        """Forget the running per-position counts (not ``tau``)."""
        self.last_density = float("nan")
        self.last_mean_r = float("nan")
        self.last_surrogate_peak = float("nan")
        self._last_S = None
        self._pos_open = None
        self._pos_count = 0

    def forward(self, b: Tensor, d: Tensor) -> Tensor:
        c = self.config
        out, r, S = gated_update(b, d, self.tau, c.surrogate, c.temperature, c.eps, c.grad_through_ratio)
        self._inputs = (b, d) if out.requires_grad else None  # for last_S, built only if asked for
        self._soft = None
        self._record(S, r)
        return out

    def forget_last(self) -> None:
        """Drop the last forward's gates (after a pass that applied none), so the regulariser skips this layer."""
        self._inputs, self._soft, self._last_S = None, None, None

    @property
    def last_S(self) -> Tensor | None:
        """The last forward's gates ``S`` ``(...)`` (exactly 0 or 1), carrying the surrogate gradient
        towards ``tau`` (and through ``r`` when ``grad_through_ratio``): what the regulariser uses."""
        if self._inputs is None:
            return None if self._last_S is None else Tensor(self._last_S)
        if self._soft is None:
            b, d = self._inputs
            c = self.config
            if not c.grad_through_ratio:
                b, d = b.detach(), d.detach()
            self._soft = threshold_step(token_ratio(b, d, c.eps), self.tau, c.surrogate, c.temperature)
        return self._soft

    def _record(self, S, r) -> None:
        xp = backend.xp
        self._last_S = S
        self.last_density = float(S.mean())
        self.last_mean_r = float(r.mean())
        z = r - self.tau.data.reshape(())
        peak = surrogate_grad(xp.zeros((), dtype=r.dtype), self.config.surrogate, self.config.temperature)
        self.last_surrogate_peak = float(surrogate_grad(z, self.config.surrogate, self.config.temperature).max()
                                         / peak) if z.size else float("nan")
        per_pos = S.reshape(-1, S.shape[-1]) if S.ndim >= 2 else S.reshape(-1, 1)  # (N, T)
        if self._pos_open is not None and self._pos_open.shape[0] != per_pos.shape[1]:
            self._pos_open, self._pos_count = None, 0  # a new sequence length starts new counts
        opened = per_pos.sum(axis=0)
        self._pos_open = opened if self._pos_open is None else self._pos_open + opened
        self._pos_count += per_pos.shape[0]

    @property
    def dead(self) -> bool:
        """Every gate of the last forward was closed: no direct gradient reaches the update."""
        return self.last_density == 0.0

    @property
    def stuck(self) -> bool:
        """The surrogate derivative was (numerically) zero at every token: ``tau`` cannot move."""
        return self.last_surrogate_peak < STUCK_PEAK

    def position_density(self):
        """Fraction of updates applied at each token position since the last reset, as a NumPy array ``(T,)``."""
        if self._pos_open is None:
            return None
        return backend.to_numpy(self._pos_open) / max(self._pos_count, 1)

    def extra_repr(self) -> str:
        c = self.config
        return f"surrogate={c.surrogate!r}, temperature={c.temperature}, tau={float(self.tau.data):.4g}"
