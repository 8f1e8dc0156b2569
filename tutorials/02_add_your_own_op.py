"""Lesson 2: add your own op to the engine, and prove its gradient.

Run it:  python tutorials/02_add_your_own_op.py

Every op in minitspeft has the same three parts (see minitspeft/ops.py):

1. compute the result on arrays (``backend.xp`` is NumPy or CuPy);
2. write ``backward(g)``: given the upstream gradient ``g`` (the output's
   shape), return one gradient per input, in input order, or ``None`` for an
   input that needs none;
3. wrap both with ``Tensor._from_op(result, inputs, backward, name)``, which
   records the graph only when some input requires a gradient.

Then test it the way the project tests its own ops: compare the gradient with
a central difference in float64, and the forward with the same function
composed from existing ops.

Our example: softplus(x) = log(1 + exp(x)), whose derivative is sigmoid(x).
"""

import numpy as np

import minitspeft as mt
from minitspeft import backend


def softplus(x: mt.Tensor) -> mt.Tensor:
    """``log(1 + exp(x))``, computed stably as ``max(x, 0) + log1p(exp(-|x|))``.

    d/dx = sigmoid(x) (derived here).
    """
    xp = backend.xp
    out = xp.maximum(x.data, 0) + xp.log1p(xp.exp(-xp.abs(x.data)))

    def backward(g):
        return (g * (1 / (1 + xp.exp(-x.data))),)  # one gradient per input

    return mt.Tensor._from_op(out, (x,), backward, "softplus")


# --- check 1: the forward agrees with the op composed from primitives
x_np = np.random.default_rng(0).normal(size=(3, 4)) * 3
composed = (mt.Tensor(x_np).exp() + 1).log().data
np.testing.assert_allclose(softplus(mt.Tensor(x_np)).data, composed, rtol=1e-12)
print("forward matches log(1 + exp(x))")

# --- check 2: the gradient agrees with a central difference, in float64
x = mt.Tensor(x_np, requires_grad=True)
v = np.random.default_rng(1).normal(size=x.shape)  # a random upstream gradient
softplus(x).backward(v)

h = 1e-6
numeric = np.zeros_like(x_np)
for i in np.ndindex(x_np.shape):
    step = np.zeros_like(x_np)
    step[i] = h
    up = (softplus(mt.Tensor(x_np + step)).data * v).sum()
    down = (softplus(mt.Tensor(x_np - step)).data * v).sum()
    numeric[i] = (up - down) / (2 * h)
np.testing.assert_allclose(x.grad, numeric, rtol=1e-6, atol=1e-9)
print("gradient matches a central difference (max abs error "
      f"{np.abs(x.grad - numeric).max():.1e})")

# --- check 3: it stays exact where the naive formula overflows
big = softplus(mt.Tensor(np.array([1000.0, -1000.0]))).data
assert np.all(np.isfinite(big)) and big[0] == 1000.0
print("softplus(1000) =", big[0], " softplus(-1000) =", big[1])

# --- and it composes with everything else: gradients flow through it
w = mt.Tensor(np.ones(4), requires_grad=True)
loss = softplus(mt.Tensor(x_np) @ w).sum()
loss.backward()
print("d loss / d w =", np.round(w.grad, 4))
