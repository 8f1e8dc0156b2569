"""Lesson 2: add your own op to the engine, and prove its gradient.

Run it:  python tutorials/02_add_your_own_op.py

Every op in minitspeft has the same three parts (see minitspeft/extend.py and
minitspeft/ops.py):

1. compute the result on arrays (``backend.xp`` is NumPy or CuPy);
2. write ``backward(g)``: given the upstream gradient ``g`` (the output's
   shape), return one gradient per input, in input order, or ``None`` for an
   input that needs none;
3. wrap both with ``Tensor.from_op(result, inputs, backward, name)``, which
   records the graph only when some input requires a gradient.

Then test it the way the project tests its own ops: compare the gradient with
a central difference in float64, and the forward with the same function
composed from existing ops.

Our example: softplus(x) = log(1 + exp(x)), whose derivative is sigmoid(x).
"""

import numpy as np

import minitspeft as mt
from minitspeft import backend
from minitspeft.testing import check_grad


def softplus(x: mt.Tensor) -> mt.Tensor:
    """``log(1 + exp(x))``, computed stably as ``max(x, 0) + log1p(exp(-|x|))``.

    d/dx = sigmoid(x) (derived here).
    """
    xp = backend.xp
    out = xp.maximum(x.data, 0) + xp.log1p(xp.exp(-xp.abs(x.data)))

    def backward(g):
        return (g * (1 / (1 + xp.exp(-x.data))),)  # one gradient per input

    return mt.Tensor.from_op(out, (x,), backward, "softplus")


# --- check 1: the forward agrees with the op composed from primitives
x_np = np.random.default_rng(0).normal(size=(3, 4)) * 3
composed = (mt.Tensor(x_np).exp() + 1).log().data
np.testing.assert_allclose(softplus(mt.Tensor(x_np)).data, composed, rtol=1e-12)
print("forward matches log(1 + exp(x))")

# --- check 2: the gradient agrees with central differences, in float64
# check_grad draws a random upstream gradient v, runs softplus(x).backward(v),
# and compares x.grad with (L(x + h e_j) - L(x - h e_j)) / 2h for every element
# j of L = <v, softplus(x)>, and once along a random direction of all of x.
# It raises an AssertionError naming the input if they differ.
grads, v = check_grad(softplus, x_np)
print("gradient matches central differences; d/dx at the first element:",
      f"{grads[0].ravel()[0] / v.ravel()[0]:.4f} = sigmoid({x_np.ravel()[0]:.3f})")

# the checker catches a wrong rule: d/dx log(1 + e^x) is not exp(x)
def wrong_softplus(x):
    out = softplus(x).data
    return mt.Tensor.from_op(out, (x,), lambda g: (g * np.exp(x.data),), "wrong_softplus")

try:
    check_grad(wrong_softplus, x_np)
except AssertionError:
    print("a wrong backward rule is caught")
else:
    raise SystemExit("check_grad missed a wrong rule")

# --- check 3: it stays exact where the naive formula overflows
big = softplus(mt.Tensor(np.array([1000.0, -1000.0]))).data
assert np.all(np.isfinite(big)) and big[0] == 1000.0
print("softplus(1000) =", big[0], " softplus(-1000) =", big[1])

# --- and it composes with everything else: gradients flow through it
w = mt.Tensor(np.ones(4), requires_grad=True)
loss = softplus(mt.Tensor(x_np) @ w).sum()
loss.backward()
print("d loss / d w =", np.round(w.grad, 4))
