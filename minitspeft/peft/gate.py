"""The token gate of TS-PEFT (arXiv 2511.16147): apply a PEFT update only where it is large enough.

For one gated layer, with ``b`` the frozen path's output and ``d`` the PEFT
update, both ``(..., C)``, and one token per leading index ``i``::

    r_i   = ||d_i|| / (||b_i|| + eps)        # token_ratio
    S_i   = 1[r_i >= tau]                    # threshold_step: exactly 0 or 1
    out_i = b_i + S_i * d_i

The relative-magnitude test and ``S_i = 1[r_i >= tau]`` are the paper's; the
straight-through backward below, the ``eps`` guard and the zero-norm
convention are derived here (docs/gate.md derives them). The clearest form
of the gate is :func:`reference_gate`, composed from primitives:
``S = H + phi(z) - stop_gradient(phi(z))`` with ``z = r - tau`` and ``H`` the
hard step. :func:`gated_update` is the same gate as two fused nodes, ``S``
and ``out = b + S d`` made from it, whose backward is exactly the equations
below (``dL/dS`` from ``out`` and from the regulariser meet at ``S``, so the
ratio's chain runs once); chaining the smaller fused ops
:func:`token_ratio` and :func:`threshold_step` with the product gives the
same gradients again (the tests check all three)::

    dL/dS_i   = <g_i, d_i>
    dL/dd_i   = S_i g_i + dL/dS_i * phi'(r_i - tau) * dr_i/dd_i
    dL/db_i   = g_i     + dL/dS_i * phi'(r_i - tau) * dr_i/db_i
    dL/dtau   = -sum_i dL/dS_i * phi'(r_i - tau)
"""

from __future__ import annotations

from .. import backend
from ..nn.module import Module, Parameter
from ..checks import check_number
from ..extend import require_tensor
from ..reductions import stable_norm
from ..tensor import Tensor
from .config import GateConfig
from .selection import router_score, sequence_ratio, top_k_step
from .surrogates import surrogate_grad, surrogate_step


def _ratio(b, d, eps: float) -> tuple:
    """Arrays ``(||b||, ||d||, ||b|| + eps, r)`` over the last axis; the norms are right at any magnitude
    (:func:`~minitspeft.reductions.stable_norm`)."""
    nb = stable_norm(b, -1)[..., 0]  # (...)
    nd = stable_norm(d, -1)[..., 0]
    denom = nb + b.dtype.type(eps)
    return nb, nd, denom, nd / denom


def _ratio_grad_b(k, nd, denom, r):
    """``-k ||d|| / (||b|| + eps)^2``, the factor of ``b / ||b||`` in ``k dr/db``, without overflowing
    where ``(||b|| + eps)^2`` does not fit the dtype (there it is ``-k r / (||b|| + eps)``)."""
    xp = backend.xp
    with backend.quiet_overflow():
        square = denom * denom
        coef = -k * nd / square
        big = ~xp.isfinite(square) | (square < xp.finfo(square.dtype).tiny)  # overflow, or underflow (tiny eps)
        return xp.where(big, -k * r / xp.where(big, denom, 1), coef)  # no branch: the host never has to look


def _unit(v, n):
    """``v / ||v||`` row by row, and 0 where ``||v|| = 0`` (the norm's subgradient at 0)."""
    xp = backend.xp
    return v * (1 / xp.where(n > 0, n, 1))[..., None]


def _check_pair(op: str, b: Tensor, d: Tensor) -> None:
    require_tensor(op, "b", b)
    require_tensor(op, "d", d)
    if b.shape != d.shape:
        raise ValueError(f"{op}: base output shape {b.shape} and update shape {d.shape} differ")
    if b.ndim == 0:
        raise ValueError(f"{op}: b and d must be (..., C) with at least one axis, got 0-d tensors")


def _check_settings(op: str, tau: Tensor | None, eps: float | None, temperature: float | None = None) -> None:
    """``tau`` a finite scalar Tensor; ``eps`` and ``temperature`` finite numbers > 0."""
    if temperature is not None:
        check_number(op, "temperature", temperature, 0, low_open=True)
    if tau is not None:
        require_tensor(op, "tau", tau)
        if tau.size != 1:
            raise ValueError(f"{op}: tau must be a scalar, got shape {tau.shape}")
        if not bool(backend.xp.isfinite(tau.data).all()):
            raise ValueError(f"{op}: tau is {float(tau.data.reshape(()))}; a threshold must be finite")
    if eps is not None:
        check_number(op, "eps", eps, 0, low_open=True)


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
    _check_settings("token_ratio", None, eps)
    nb, nd, denom, r = _ratio(b.data, d.data, eps)

    def backward(g):
        gd = _unit(d.data, nd) * (g / denom)[..., None] if d.requires_grad else None
        gb = _unit(b.data, nb) * _ratio_grad_b(g, nd, denom, r)[..., None] if b.requires_grad else None
        return gb, gd

    return Tensor.from_op(r, (b, d), backward, "token_ratio")


def gated_update(b: Tensor, d: Tensor, tau: Tensor, surrogate: str = "sigmoid", temperature: float = 0.1,
                 eps: float = 1e-6, grad_through_ratio: bool = True) -> tuple:
    """The whole gate as two fused nodes: ``S = 1[r >= tau]`` and ``out = b + S d`` per token.

    Args:
        b: frozen output ``(..., C)``; d: update ``(..., C)``; tau: scalar ``()``.
        surrogate, temperature: the straight-through derivative (:func:`surrogate_grad`).
        eps: guard of the ratio; grad_through_ratio: let gradients reach ``b``
            and ``d`` through ``r`` as well.

    Returns:
        ``(out, S, r)``: ``out`` ``(..., C)``; ``S`` ``(...)``, the gates as a
        Tensor whose backward is the straight-through one (what the
        regulariser differentiates: ``dS/dtau = -phi'(r - tau)`` and, with
        ``grad_through_ratio``, ``phi'(r - tau) dr``); and ``r`` ``(...)``,
        the ratios as a backend array. ``out`` and ``S`` come from one forward pass.

    Raises:
        ValueError: if the shapes of ``b`` and ``d`` differ or ``tau`` is not a scalar.

    Backward (the module's equations, derived here). ``out``'s own backward is
    ``db = g``, ``dd_i = S_i g_i`` and ``dL/dS_i = <g_i, d_i>``, handed to ``S``
    (``out`` is made from ``S``). ``S``'s backward then runs the straight-through
    chain once for everything that reached it (``out`` and the regulariser),
    with ``k_i = dL/dS_i phi'(r_i - tau)``: ``dd_i += k_i dr_i/dd_i``,
    ``db_i += k_i dr_i/db_i`` (these two only with ``grad_through_ratio``) and
    ``dtau = -sum_i k_i``: :func:`threshold_step` after :func:`token_ratio`.
    """
    _check_pair("gated_update", b, d)
    _check_settings("gated_update", tau, eps, temperature)
    nb, nd, denom, r = _ratio(b.data, d.data, eps)
    t = tau.data.reshape(())
    hard = (r >= t).astype(b.dtype)  # ties open
    out = b.data + hard[..., None] * d.data

    def backward_S(g):
        """Gradients of ``(b, d, tau)`` from ``dL/dS`` (the straight-through chain)."""
        k = g * surrogate_grad(r - t, surrogate, temperature)
        gb = gd = gt = None
        if grad_through_ratio and d.requires_grad:
            gd = _unit(d.data, nd) * (k / denom)[..., None]
        if grad_through_ratio and b.requires_grad:
            gb = _unit(b.data, nb) * _ratio_grad_b(k, nd, denom, r)[..., None]
        if tau.requires_grad:
            gt = (-k.sum()).reshape(tau.shape).astype(tau.dtype)
        return gb, gd, gt

    S = Tensor.from_op(hard, (b, d, tau), backward_S, "gated_update.S")

    def backward_out(g):
        gd = hard[..., None] * g if d.requires_grad else None
        gS = (g * d.data).sum(axis=-1) if S.requires_grad else None
        return (g if b.requires_grad else None), gd, gS

    return Tensor.from_op(out, (b, d, S), backward_out, "gated_update"), S, r


def threshold_step(r: Tensor, tau: Tensor, surrogate: str = "sigmoid", temperature: float = 0.1) -> Tensor:
    """The hard gate ``S = 1[r >= tau]`` (ties open) with a straight-through backward.

    Args:
        r: ratios ``(...)``; tau: a scalar Tensor ``()``.
        surrogate, temperature: see :func:`surrogate_grad`.

    Returns:
        ``S`` with ``r``'s shape and dtype, exactly 0.0 or 1.0.

    Backward (straight-through, derived here): ``dS/dr = phi'(r - tau)``,
    ``dS/dtau = -phi'(r - tau)``.
    """
    require_tensor("threshold_step", "r", r)
    _check_settings("threshold_step", tau, None, temperature)
    t = tau.data.reshape(())
    S = (r.data >= t).astype(r.dtype)

    def backward(g):
        gp = g * surrogate_grad(r.data - t, surrogate, temperature)
        return gp, (-gp.sum()).reshape(tau.shape).astype(tau.dtype)

    return Tensor.from_op(S, (r, tau), backward, "threshold_step")


def reference_gate(b: Tensor, d: Tensor, score: Tensor, tau, surrogate: str = "sigmoid",
                   temperature: float = 0.1) -> tuple:
    """The gate in its most readable form, composed from primitives: ``S = H + phi(z) - stop_gradient(phi(z))``.

    ``z = score - tau``, ``H = 1[z >= 0]`` is the hard step (a constant) and
    ``phi`` the surrogate's smooth step (:func:`surrogate_step`): the forward
    value of ``S`` is ``H`` up to one rounding (``(1 + phi) - phi`` can miss 1 by 1.1e-16;
    :func:`gated_update` computes ``H`` itself), its gradient is ``phi'(z)``. The fused
    :func:`gated_update` and the variants of :class:`TokenGate` must give the
    same outputs and gradients (the tests check it).

    Args:
        b, d: ``(..., C)``; score: ``(...)`` Tensor; tau: a scalar Tensor or a
            backend array broadcastable to ``score`` (a per-sequence boundary, held constant).

    Returns:
        ``(out, S)``: ``b + S d`` ``(..., C)`` and ``S`` ``(...)``.
    """
    z = score - tau
    phi = surrogate_step(z, surrogate, temperature)
    hard = Tensor((z.data >= 0).astype(score.dtype))
    S = hard + phi - phi.detach()
    return b + S.reshape(S.shape + (1,)) * d, S


def check_gate_dtype(op: str, config: GateConfig, dtype) -> None:
    """Refuse a ``temperature`` or ``eps`` below the smallest normal number of ``dtype``: it would round to
    0 (or lose its precision) there and make ``phi'`` or ``r`` NaN.

    Raises:
        ValueError: naming ``op``, the setting, its value and the dtype.
    """
    xp = backend.xp
    tiny = float(xp.finfo(dtype).tiny)
    for name in ("temperature", "eps"):
        value = getattr(config, name)
        if value < tiny:
            raise ValueError(f"{op}: {name}={value!r} is below the smallest normal {xp.dtype(dtype).name} "
                             f"({tiny:.3g}), so it is useless in this layer's dtype; use a larger value")


STUCK_PEAK = 1e-4  # below this share of phi'(0) at every token, the threshold gets no usable gradient


class TokenGate(Module):
    """A token gate for one layer's update: ``out_i = b_i + S_i d_i`` with ``S_i`` exactly 0 or 1.

    What is thresholded (``config.score``) and how tokens are picked
    (``config.keep_ratio``) make the gate variants (:data:`GATE_VARIANTS`):

    - ``score="ratio"``, threshold (the paper's, TS-PEFT arXiv 2511.16147):
      ``S_i = 1[r_i >= tau]``, fused (:func:`gated_update`; on LoRA its low-rank form);
    - ``score="seq_ratio"``: ``S_i = 1[s_i >= tau]`` with ``s`` the ratio
      normalised per sequence (:func:`~minitspeft.peft.selection.sequence_ratio`);
    - ``score="router"``: ``S_i = 1[1 + w . b_i/||b_i|| + p_t(i) >= tau]`` with a
      learned ``router_weight`` ``w`` ``(C,)`` and per-position offsets ``p``
      (:func:`~minitspeft.peft.selection.router_score`; departs from the paper);
    - ``keep_ratio=k``: no ``tau``; each sequence opens its ``ceil(k T)``
      best-scoring tokens (:func:`~minitspeft.peft.selection.top_k_step`).

    The paper's gate is the fused :func:`gated_update`; the other variants are
    composed from ops: the score, a straight-through step
    (:func:`threshold_step` or ``top_k_step``), then ``b + S d``. Either way
    the forward keeps its ``S`` in ``last_S``: the regulariser differentiates
    that very tensor, so there is one gate, not a second copy for the loss.

    Args:
        config: a :class:`GateConfig`.
        dtype: dtype of ``tau`` and ``router_weight`` (that of the gated layer).
        channels: ``C``, the width of ``b`` and ``d`` (needed by the router).
        positions: the longest sequence, for the router's per-position offsets (None: none).

    Raises:
        ValueError: for a ``temperature`` or ``eps`` too small to be represented in ``dtype``, or
            ``score="router"`` without ``channels``.

    Attributes:
        tau: the threshold Parameter ``()``, kept ``>= 0``; None with a ``keep_ratio``.
        router_weight: ``(C,)`` Parameter for ``score="router"``, else absent;
        router_position_bias: ``(positions,)`` Parameter for the router when ``positions`` is given.
        last_S: the last forward's gates ``(...)`` (exactly 0 or 1) as a Tensor that carries the
            straight-through gradient; None before the first forward or after a pass that applied no gate.
        last_score: the last forward's scores ``(...)`` (a backend array), what was thresholded.
    """

    def __init__(self, config: GateConfig, dtype=None, channels: int | None = None, positions: int | None = None):
        self.config = config
        dtype = dtype or backend.get_default_dtype()
        xp = backend.xp
        check_gate_dtype("TokenGate", config, dtype)
        self.tau = None if config.keep_ratio is not None else \
            Parameter(xp.asarray(config.tau_init, dtype=dtype), lower_bound=0.0)
        if config.score == "router":
            if channels is None:
                raise ValueError("TokenGate: score='router' needs the number of channels of the gated output")
            self.router_weight = Parameter(xp.zeros((channels,), dtype=dtype))
            if positions is not None:
                self.router_position_bias = Parameter(xp.zeros((positions,), dtype=dtype))
        self.last_S = None
        self.last_score = None
        self._last_threshold = None
        self.reset_stats()

    def reset_stats(self) -> None:
        """Forget the running per-position counts (not ``tau``)."""
        self._pos_open = None
        self._pos_count = 0

    def score(self, b: Tensor, d: Tensor) -> Tensor:
        """What the gate thresholds, ``(...)`` per token (see the class docstring)."""
        c = self.config
        if c.score == "router":
            return router_score(b, self.router_weight, c.eps, getattr(self, "router_position_bias", None))
        if not c.grad_through_ratio:
            b, d = b.detach(), d.detach()
        r = token_ratio(b, d, c.eps)
        return sequence_ratio(r, c.eps) if c.score == "seq_ratio" else r

    def forward(self, b: Tensor, d: Tensor) -> Tensor:
        """``b + S d`` with ``b``, ``d`` ``(..., C)`` and the gates ``S`` ``(...)``; keeps ``S`` in ``last_S``."""
        c = self.config
        if c.score == "ratio" and c.keep_ratio is None:  # the paper's gate, fused
            out, S, s = gated_update(b, d, self.tau, c.surrogate, c.temperature, c.eps, c.grad_through_ratio)
            t = self.tau.data.reshape(())
        else:
            _check_pair("TokenGate", b, d)
            score = self.score(b, d)
            if c.keep_ratio is None:
                S, t = threshold_step(score, self.tau, c.surrogate, c.temperature), self.tau.data.reshape(())
            else:
                S, t = top_k_step(score, c.keep_ratio, c.surrogate, c.temperature)
            out, s = b + S.reshape(S.shape + (1,)) * d, score.data
        self.record(S, s, t)
        return out

    def record(self, S: Tensor, score, threshold) -> None:
        """Keep a forward's gates ``S`` ``(...)`` (a Tensor), its scores (a backend array of ``S``'s shape)
        and the threshold (a backend array), and count the open tokens per position. ``forward`` calls
        it; so does a layer that runs this gate's fused low-rank form
        (:func:`~minitspeft.peft.low_rank_gate.gated_lora_update`)."""
        self.last_S, self.last_score, self._last_threshold = S, score, threshold.copy()
        self._count_positions(S.data)

    def _count_positions(self, S) -> None:
        per_pos = S.reshape(-1, S.shape[-1]) if S.ndim >= 2 else S.reshape(-1, 1)  # (N, T)
        if self._pos_open is not None and self._pos_open.shape[0] != per_pos.shape[1]:
            self._pos_open, self._pos_count = None, 0  # a new sequence length starts new counts
        opened = per_pos.sum(axis=0)
        self._pos_open = opened if self._pos_open is None else self._pos_open + opened
        self._pos_count += per_pos.shape[0]

    @property
    def last_density(self) -> float:
        """Fraction of the last forward's updates that were applied (NaN when no gate ran)."""
        return float("nan") if self.last_S is None else float(self.last_S.data.mean())

    @property
    def last_mean_r(self) -> float:
        """Mean score of the last forward (NaN when no gate ran)."""
        return float("nan") if self.last_S is None else float(self.last_score.mean())

    @property
    def last_surrogate_peak(self) -> float:
        """The largest surrogate derivative of the last forward over its tokens, as a share of ``phi'(0)``."""
        if self.last_S is None or not self.last_score.size:
            return float("nan")
        c, s = self.config, self.last_score
        peak = surrogate_grad(backend.xp.zeros((), dtype=s.dtype), c.surrogate, c.temperature)
        return float(surrogate_grad(s - self._last_threshold, c.surrogate, c.temperature).max() / peak)

    @property
    def dead(self) -> bool:
        """Every gate of the last forward was closed: no direct gradient reaches the update."""
        return self.last_density == 0.0

    @property
    def stuck(self) -> bool:
        """The surrogate derivative was (numerically) zero at every token: the threshold cannot move."""
        return self.last_surrogate_peak < STUCK_PEAK

    def position_density(self):
        """Fraction of updates applied at each token position since the last reset, as a NumPy array ``(T,)``."""
        if self._pos_open is None:
            return None
        return backend.to_numpy(self._pos_open) / max(self._pos_count, 1)

    def extra_repr(self) -> str:
        c = self.config
        where = f"tau={float(self.tau.data):.4g}" if self.tau is not None else f"keep_ratio={c.keep_ratio}"
        return f"score={c.score!r}, surrogate={c.surrogate!r}, temperature={c.temperature}, {where}"
