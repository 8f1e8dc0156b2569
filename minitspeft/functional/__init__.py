"""Fused ops: a forward pass in array code and a backward pass derived by hand.

Each op here could be composed from the primitives in ``ops``;
:mod:`minitspeft.functional.reference` does exactly that, as the readable
version, and the tests compare the two. Fusing saves memory and time and,
more importantly, keeps the ops numerically exact for large inputs. Every
docstring states the derivative its backward uses.

- :mod:`~minitspeft.functional.activations`: ``softmax``, ``log_softmax``, ``gelu``, ``softplus``,
  ``silu``, ``leaky_relu``;
- :mod:`~minitspeft.functional.losses`: ``cross_entropy``, ``nll_loss``,
  ``binary_cross_entropy_with_logits``, ``mse_loss``;
- :mod:`~minitspeft.functional.layers`: ``layer_norm``, ``linear``, ``dropout``, ``embedding``, ``one_hot``.

As ``torch.nn.functional`` does, it also offers the engine's ``relu``, ``sigmoid``, ``tanh`` and ``pad``.
"""

from ..indexing import pad
from ..ops import relu, sigmoid, tanh
from . import reference
from .activations import gelu, leaky_relu, log_softmax, silu, softmax, softplus
from .layers import dropout, embedding, layer_norm, linear, one_hot
from .losses import binary_cross_entropy_with_logits, cross_entropy, mse_loss, nll_loss

__all__ = ["softmax", "log_softmax", "cross_entropy", "layer_norm", "gelu", "linear", "dropout", "embedding",
           "softplus", "silu", "leaky_relu", "one_hot", "nll_loss", "binary_cross_entropy_with_logits",
           "mse_loss", "relu", "sigmoid", "tanh", "pad", "reference"]
