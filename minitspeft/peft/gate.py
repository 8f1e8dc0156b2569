"""The token gate of TS-PEFT (arXiv 2511.16147): apply a PEFT update only where it is large enough.

For one gated layer, with ``b`` the frozen path's output and ``d`` the PEFT
update, both ``(..., C)``, and one token per leading index ``i``::

    r_i   = ||d_i|| / (||b_i|| + eps)        # token_ratio
    S_i   = 1[r_i >= tau]                    # threshold_step: exactly 0 or 1
    out_i = b_i + S_i * d_i

The relative-magnitude test and ``S_i = 1[r_i >= tau]`` are the paper's; the
straight-through backward below, the ``eps`` guard and the zero-norm
convention are derived here (TS-PEFT.md). Chaining the two fused ops with
the product gives exactly TS-PEFT.md's gradients::

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
    if b.shape != d.shape:
        raise ValueError(f"token_ratio: base output shape {b.shape} and update shape {d.shape} differ")
    xp = backend.xp
    nb = xp.sqrt((b.data * b.data).sum(axis=-1))  # (...)
    nd = xp.sqrt((d.data * d.data).sum(axis=-1))
    denom = nb + b.dtype.type(eps)
    r = nd / denom

    def unit(v, n):  # v / ||v||, and 0 where ||v|| = 0
        safe = xp.where(n > 0, n, 1)
        return v * (1 / safe)[..., None]

    def backward(g):
        gb = gd = None
        if d.requires_grad:
            gd = unit(d.data, nd) * (g / denom)[..., None]
        if b.requires_grad:
            gb = unit(b.data, nb) * (-g * nd / (denom * denom))[..., None]
        return gb, gd

    return Tensor._from_op(r, (b, d), backward, "token_ratio")


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


class TokenGate(Module):
    """One learnable threshold ``tau`` (shape ``()``, kept ``>= 0``) gating a layer's update per token.

    ``forward(b, d)`` takes the frozen output ``b`` and the update ``d``, both
    ``(..., C)``, and returns ``b + S * d``. It keeps the last gate values
    (``last_S``, with their graph, for the sparsity regulariser) and running
    statistics for ``gate_stats()``.

    Args:
        config: a :class:`GateConfig`.
        dtype: dtype of ``tau`` (that of the gated layer).
    """

    def __init__(self, config: GateConfig, dtype=None):
        self.config = config
        dtype = dtype or backend.get_default_dtype()
        self.tau = Parameter(backend.xp.asarray(config.tau_init, dtype=dtype), lower_bound=0.0)
        self.last_S = None
        self.reset_stats()

    def reset_stats(self) -> None:
        """Forget the running per-position counts (not ``tau``)."""
        self.last_density = float("nan")
        self.last_mean_r = float("nan")
        self._pos_open = None
        self._pos_count = 0

    def forward(self, b: Tensor, d: Tensor) -> Tensor:
        c = self.config
        if c.grad_through_ratio:
            r = token_ratio(b, d, c.eps)
        else:
            r = token_ratio(b.detach(), d.detach(), c.eps)
        S = threshold_step(r, self.tau, c.surrogate, c.temperature)  # (...)
        self._record(S, r)
        return b + S.reshape(*S.shape, 1) * d

    def _record(self, S: Tensor, r: Tensor) -> None:
        self.last_S = S
        self.last_density = float(S.data.mean())
        self.last_mean_r = float(r.data.mean())
        per_pos = S.data.reshape(-1, S.shape[-1]) if S.ndim >= 2 else S.data.reshape(-1, 1)  # (N, T)
        if self._pos_open is not None and self._pos_open.shape[0] != per_pos.shape[1]:
            self._pos_open, self._pos_count = None, 0  # a new sequence length starts new counts
        opened = per_pos.sum(axis=0)
        self._pos_open = opened if self._pos_open is None else self._pos_open + opened
        self._pos_count += per_pos.shape[0]

    def position_density(self):
        """Fraction of updates applied at each token position since the last reset, as a NumPy array ``(T,)``."""
        if self._pos_open is None:
            return None
        return backend.to_numpy(self._pos_open) / max(self._pos_count, 1)

    def extra_repr(self) -> str:
        c = self.config
        return f"surrogate={c.surrogate!r}, temperature={c.temperature}, tau={float(self.tau.data):.4g}"
