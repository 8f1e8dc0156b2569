"""Straight-through surrogates: what stands in for the derivative of the hard step ``1[z >= 0]``.

The step's true derivative is 0 everywhere except at ``z = 0``, so a gate
``S = 1[score >= tau]`` passes no gradient on its own. The backward pass
replaces ``dS/dz`` by ``phi'(z)``, the derivative of a smooth (or
piecewise-linear) step ``phi`` (Bengio et al. 2013's straight-through
estimator; the temperature-scaled forms are derived here):

- ``"sigmoid"``: ``phi(z) = sigma(z / T)``, ``phi'(z) = sigma'(z / T) / T``;
- ``"rect"``: ``phi(z) = clip(z / (2T) + 1/2, 0, 1)``, ``phi'(z) = 1[|z| <= T] / (2T)``;
- ``"identity"``: ``phi(z) = z``, ``phi'(z) = 1`` (the plain estimator).

Written as one expression, the gate is ``S = H + phi(z) - stop_gradient(phi(z))``
with ``H`` the hard step: forward ``H``, backward ``phi'``
(:func:`~minitspeft.peft.gate.reference_gate` builds exactly that).
"""

from __future__ import annotations

from .. import backend
from ..checks import check_number
from ..ops import clip
from ..tensor import Tensor

SURROGATES = ("sigmoid", "rect", "identity")


def _check(op: str, surrogate: str, temperature=1.0) -> None:
    if surrogate not in SURROGATES:
        raise ValueError(f"{op}: unknown surrogate {surrogate!r}; choose from {SURROGATES}")
    check_number(op, "temperature", temperature, 0, low_open=True)


def surrogate_grad(z, surrogate: str, temperature: float):
    """``phi'(z)``, the straight-through stand-in for the step's derivative at ``z = score - tau``.

    Args:
        z: float array (any shape), on the backend or on the host (a NumPy array); temperature: ``T > 0``
            in units of ``z``.

    Returns:
        An array of ``z``'s shape and dtype, where ``z`` is (:func:`~minitspeft.backend.array_module`).

    Raises:
        ValueError: for an unknown surrogate or a temperature that is not a finite number > 0.
    """
    _check("surrogate_grad", surrogate, temperature)
    xp = backend.array_module(z)
    T = z.dtype.type(temperature)
    if surrogate == "sigmoid":
        e = xp.exp(-xp.abs(z / T))  # sigma'(u) = e^-|u| / (1 + e^-|u|)^2, stable for any u
        return e / ((1 + e) * (1 + e)) / T
    if surrogate == "rect":
        return (xp.abs(z) <= T).astype(z.dtype) / (2 * T)
    return xp.ones_like(z)


def surrogate_step(z: Tensor, surrogate: str, temperature: float) -> Tensor:
    """``phi(z)`` as a Tensor: the smooth step whose derivative is :func:`surrogate_grad`
    (used by the readable reference gate and the lessons, not by the fused ops).

    Raises:
        ValueError: for an unknown surrogate.
    """
    _check("surrogate_step", surrogate, temperature)
    if surrogate == "sigmoid":
        return (z * (1.0 / temperature)).sigmoid()
    if surrogate == "rect":
        return clip(z * (0.5 / temperature) + 0.5, 0.0, 1.0)
    return z
