"""Activation modules: ``ReLU`` and ``GELU`` (after ``torch.nn.ReLU`` and ``torch.nn.GELU``).

``GELU(approximate="tanh")`` is this project's fused ``functional.gelu``, the tanh form the transformer
uses. ``GELU()`` is PyTorch's default, the exact form with the Gaussian CDF, computed here by
:func:`gelu_exact` with ``erfc`` per element (exact, and much slower than the tanh form).
"""

from __future__ import annotations

import math


from .. import backend
from .. import functional as F
from ..extend import tensor_input
from ..ops import relu
from ..tensor import Tensor
from .module import Module

__all__ = ["ReLU", "GELU", "gelu_exact"]

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _erfc(a):
    """``erfc`` elementwise in float64 on the active backend (Python's ``math.erfc`` on the host; CuPy's
    ``cupyx.scipy.special.erfc`` on a GPU)."""
    if backend.get_backend() == "cupy":  # pragma: no cover - needs a GPU
        from cupyx.scipy.special import erfc  # noqa: PLC0415 - optional dependency

        return erfc(a.astype(backend.xp.float64))
    host = backend.to_numpy(a).reshape(-1).tolist()  # the explicit copy to the host (a no-op on NumPy)
    return backend.asarray([math.erfc(v) for v in host], dtype="float64").reshape(a.shape)


@tensor_input
def gelu_exact(x: Tensor) -> Tensor:
    """GELU in its exact form (Hendrycks and Gimpel 2016; PyTorch's ``approximate="none"``):
    ``x * Phi(x)`` with the standard normal CDF ``Phi(x) = 0.5 * erfc(-x / sqrt(2))``.

    Input and output: any shape, the input's floating dtype (integers give float64); computed in float64.
    Backward (derived here): ``Phi(x) + x * phi(x)``, ``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)``. Where
    ``Phi`` or ``phi`` is exactly 0 (``x`` below about -38, and the infinities) the product with ``x`` is
    taken as 0, so ``gelu(-inf) = 0`` with derivative 0 and ``gelu(inf) = inf`` with derivative 1
    (PyTorch gives NaN at -inf).

    ``erfc`` rather than ``1 + erf``: it keeps the tiny values of ``Phi`` far in the negative tail.
    """
    xp = backend.xp
    dtype = x.dtype if x.dtype.kind == "f" else xp.float64
    d = x.data.astype(xp.float64)
    cdf = 0.5 * _erfc(-d * _SQRT_HALF)
    with backend.quiet_overflow():
        out = xp.where(cdf == 0, 0.0, d * cdf)

    def backward(g):
        with backend.quiet_overflow():
            pdf = xp.exp(-0.5 * d * d) * _INV_SQRT_2PI
            local = cdf + xp.where(pdf == 0, 0.0, d * pdf)
        return ((g * local).astype(x.dtype, copy=False),)

    return Tensor.from_op(out.astype(dtype), (x,), backward, "gelu_exact")


class ReLU(Module):
    """``max(x, 0)`` elementwise, as PyTorch's ``torch.nn.ReLU`` (derivative 0 at 0, as there).

    Input and output: any shape and floating dtype.

    Raises:
        ValueError: for ``inplace=True``: this project's ops never overwrite their input, and a layer that
            said it did would be wrong about the input tensor afterwards.
    """

    def __init__(self, inplace: bool = False):
        if inplace is not False:
            raise ValueError(f"ReLU: inplace must be False (ops here never overwrite their input), got {inplace!r}")

    def forward(self, x: Tensor) -> Tensor:
        return relu(x)


class GELU(Module):
    """GELU, as PyTorch's ``torch.nn.GELU``.

    Args:
        approximate: ``"none"`` (PyTorch's default): the exact ``x * Phi(x)`` (:func:`gelu_exact`, exact and
            slow, one ``erfc`` per element on the host); ``"tanh"``: the tanh form
            ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, this project's fused ``functional.gelu``,
            which the transformer's MLP uses. The two differ by up to about 5e-4.

    Input and output: any shape, the input's floating dtype.

    Raises:
        ValueError: for another ``approximate``.
    """

    def __init__(self, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh' (as in PyTorch), got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x) if self.approximate == "tanh" else gelu_exact(x)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"
