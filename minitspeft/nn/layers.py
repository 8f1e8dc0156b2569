"""Basic layers: ``Linear``, ``Embedding``, ``LayerNorm``, ``Dropout`` (after ``torch.nn``).

Initial values are drawn on the host from ``backend.host_rng()`` (seed it with
``mt.manual_seed``), so a seed gives the same weights on every backend.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend
from .. import functional as F
from ..checks import check_int, check_number
from ..tensor import Tensor
from .module import Module, Parameter


def _dtype(dtype):
    return np.dtype(dtype) if dtype is not None else backend.get_default_dtype()


def _uniform(shape, bound: float, dtype) -> Parameter:
    values = backend.host_rng().uniform(-bound, bound, size=shape).astype(_dtype(dtype))
    return Parameter(backend.asarray(values))


def _check_positive(op: str, **sizes) -> tuple:
    """The ``sizes`` as Python ints after checking each is an integer >= 1 (NumPy integers too).

    Raises:
        ValueError: naming ``op``, the size and its value.
    """
    for name, n in sizes.items():
        check_int(op, name, n)
    return tuple(int(n) for n in sizes.values())


class Linear(Module):
    """``y = x @ weight.T + bias``, weight stored ``(out_features, in_features)`` as in PyTorch.

    Args:
        in_features, out_features: sizes (positive ints).
        bias: add a learnable bias ``(out_features,)``.
        dtype: parameter dtype (default: the backend default, float32).

    Input ``(..., in_features)``, output ``(..., out_features)``.
    Initialisation (PyTorch's default): weight and bias uniform in
    ``[-1/sqrt(in_features), 1/sqrt(in_features)]``.

    Raises:
        ValueError: for non-positive sizes, or an input whose last axis is
            not ``in_features`` (from ``F.linear``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None):
        in_features, out_features = _check_positive("Linear", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = _uniform((out_features, in_features), bound, dtype)
        self.bias = _uniform((out_features,), bound, dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``embedding_dim``, looked up by integer id.

    Initialisation: normal, standard deviation 0.02 (GPT-2's choice).
    Input: integer ids of any shape; output: ``ids.shape + (embedding_dim,)``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=None):
        num_embeddings, embedding_dim = _check_positive("Embedding", num_embeddings=num_embeddings,
                                                        embedding_dim=embedding_dim)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        values = backend.host_rng().normal(0.0, 0.02, size=(num_embeddings, embedding_dim))
        self.weight = Parameter(backend.asarray(values.astype(_dtype(dtype))))

    def forward(self, ids) -> Tensor:
        return F.embedding(ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Layer normalisation over the last axis of size ``normalized_shape`` (weight 1, bias 0 at init).

    Input and output ``(..., normalized_shape)``. ``eps`` 1e-5 as in PyTorch.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5, dtype=None):
        (normalized_shape,) = _check_positive("LayerNorm", normalized_shape=normalized_shape)
        check_number("LayerNorm", "eps", eps, 0)
        self.normalized_shape, self.eps = normalized_shape, eps
        self.weight = Parameter(backend.xp.ones(normalized_shape, dtype=_dtype(dtype)))
        self.bias = Parameter(backend.xp.zeros(normalized_shape, dtype=_dtype(dtype)))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class Dropout(Module):
    """Inverted dropout with probability ``p``, active only in training mode.

    Raises:
        ValueError: unless ``0 <= p < 1``.
    """

    def __init__(self, p: float = 0.0):
        check_number("Dropout", "p", p, 0, 1, high_open=True)
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
