"""Fused ops: a forward pass in array code and a backward pass derived by hand.

Each op here could be composed from the primitives in ``ops``;
:mod:`minitspeft.functional.reference` does exactly that, as the readable
version, and the tests compare the two. Fusing saves memory and time and,
more importantly, keeps the ops numerically exact for large inputs. Every
docstring states the derivative its backward uses.

- :mod:`~minitspeft.functional.activations`: ``softmax``, ``log_softmax``, ``gelu``;
- :mod:`~minitspeft.functional.losses`: ``cross_entropy``;
- :mod:`~minitspeft.functional.layers`: ``layer_norm``, ``linear``, ``dropout``, ``embedding``.
"""

from . import reference
from .activations import gelu, log_softmax, softmax
from .layers import dropout, embedding, layer_norm, linear
from .losses import cross_entropy

__all__ = ["softmax", "log_softmax", "cross_entropy", "layer_norm", "gelu", "linear", "dropout", "embedding",
           "reference"]
