# %% [markdown]
# # Lesson 2: add your own op, and prove its gradient
#
# Every op in `minitspeft` has the same three parts:
#
# 1. compute the result on arrays (`backend.xp` is NumPy, or CuPy on a GPU);
# 2. write `backward(g)`: given `g`, the gradient of the result (the result's shape), return
#    one gradient per input, in input order, or `None` for an input that needs none;
# 3. wrap both with `Tensor.from_op(result, inputs, backward, name)`, which records the
#    graph only when some input requires a gradient.
#
# `minitspeft.extend` holds the helpers the package's own ops are written with
# (`unary_op`, `binary_op`, `tensor_input`, `unbroadcast`), and
# `minitspeft.testing.check_grad` is the checker its tests use (lesson 1, section 4).
#
# The example is `softplus(x) = log(1 + e^x)`, a smooth ReLU whose derivative is
# `sigmoid(x) = 1 / (1 + e^-x)`. Written naively, both overflow; this lesson writes them so
# they don't, and **checks** that at `x = -1000` and `x = +1000`.
#
# Run it as `python tutorials/02_add_your_own_op.py`, or open it as a notebook.

# %%
import numpy as np

import minitspeft as mt
from minitspeft import backend
from minitspeft.extend import binary_op, tensor_input, unary_op
from minitspeft.testing import check_grad

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. Why the textbook formula is not enough
#
# `e^1000` does not fit in a float64 (the largest is about `1.8e308`, `e^709`), so
# `log(1 + e^1000)` comes out `inf`, although the answer is simply 1000. The derivative has the
# same problem on the other side: `1 / (1 + e^1000)` is right (0) only after an overflow.

# %%
big = np.array([-1000.0, 1000.0])
with np.errstate(over="ignore"):  # let NumPy overflow silently, to see what comes out
    naive_value = np.log(1 + np.exp(big))
    naive_slope = 1 / (1 + np.exp(-big))
    print("naive softplus at -1000, +1000:", naive_value)
assert naive_value[1] == np.inf

with np.errstate(over="raise"):  # the same formula, with overflow made an error
    try:
        np.exp(-big)
    except FloatingPointError as exc:
        print("the naive derivative overflows:", exc)

# %% [markdown]
# The cure is to never exponentiate a positive number. With `m = max(x, 0)`:
#
# ```
# softplus(x) = m + log1p(e^-|x|)                  (e^-|x| <= 1 always)
# sigmoid(x)  = 1 / (1 + e^-|x|)       for x >= 0
#             = e^-|x| / (1 + e^-|x|)   for x <  0
# ```
#
# Both equalities are exact algebra (`log(1 + e^x) = x + log(1 + e^-x)`). For very negative
# `x`, `e^-|x|` *underflows* to 0, which is harmless: the true values there, about
# `e^-1000 ~ 1e-434`, are below the smallest float64 anyway, so 0 is the correctly rounded answer.

# %%
def _parts(x_data):
    """``(m, e)`` with ``m = max(x, 0)`` and ``e = exp(-|x|)`` in ``(0, 1]``: nothing overflows."""
    xp = backend.xp
    return xp.maximum(x_data, 0), xp.exp(-xp.abs(x_data))


def stable_sigmoid(x_data):
    """``1 / (1 + e^-x)`` for a backend array, written from ``e = e^-|x|`` so it never overflows."""
    _, e = _parts(x_data)
    return backend.xp.where(x_data >= 0, 1 / (1 + e), e / (1 + e))


def softplus_from_op(x: mt.Tensor) -> mt.Tensor:
    """``log(1 + e^x)`` (stable), with the three parts written out; d/dx = sigmoid(x)."""
    m, e = _parts(x.data)
    out = m + backend.xp.log1p(e)  # part 1: the result, on arrays

    def backward(g):  # part 2: g has out's shape; return one gradient per input
        return (g * stable_sigmoid(x.data),)

    return mt.Tensor.from_op(out, (x,), backward, "softplus")  # part 3: record the node


# %% [markdown]
# ## 2. The same op with the helpers
#
# `unary_op(name, x, out, local_grad)` is parts 2 and 3 for any elementwise op: it multiplies
# `g` by `local_grad()`, called only when a backward pass needs it. `@tensor_input` turns a
# wrong argument (a NumPy array, say) into a `TypeError` that names the op, instead of an
# obscure failure deeper down.

# %%
@tensor_input
def softplus(x: mt.Tensor) -> mt.Tensor:
    """``log(1 + e^x)`` for a Tensor ``x`` of any shape, stable for every finite ``x``; d/dx = sigmoid(x)."""
    m, e = _parts(x.data)
    return unary_op("softplus", x, m + backend.xp.log1p(e), lambda: stable_sigmoid(x.data))


try:
    softplus(np.array([1.0]))
except TypeError as exc:
    print("TypeError:", exc)

# %% [markdown]
# ## 3. Prove it
#
# Three checks, in float64, the way the package tests its own ops:
#
# - the forward equals NumPy's own stable `np.logaddexp(0, x)` (that is `log(e^0 + e^x)`)
#   everywhere from -1000 to 1000, to rounding;
# - the gradient equals central differences, element by element (`check_grad`); where HIPS
#   `autograd` is installed (the test extra), also its gradient of the same formula;
# - at `x = -1000` and `x = +1000`, with overflow and invalid values made errors, the values
#   are `0` and `1000` and the derivatives `0` and `1`, exactly.

# %%
sweep = np.linspace(-1000, 1000, 20001)
reference = np.logaddexp(0, sweep)
assert np.allclose(softplus(mt.Tensor(sweep)).data, reference, rtol=1e-15, atol=1e-300)
assert np.array_equal(softplus(mt.Tensor(sweep)).data, softplus_from_op(mt.Tensor(sweep)).data)
print("forward = np.logaddexp(0, x) on [-1000, 1000]")

x_np = np.random.default_rng(0).normal(size=(3, 4)) * 3
grads, v = check_grad(softplus, x_np)
print("gradient = central differences; at the first element:",
      f"{grads[0].ravel()[0] / v.ravel()[0]:.6f} = sigmoid({x_np.ravel()[0]:.4f})")
try:
    import autograd.numpy as anp
except ImportError:
    print("(HIPS autograd is not installed: the oracle check is skipped)")
else:
    check_grad(softplus, x_np, oracle=lambda t: anp.logaddexp(0.0, t))
    print("gradient = HIPS autograd's, to 1e-10")

with np.errstate(over="raise", invalid="raise", divide="raise"):
    x = mt.Tensor(big, requires_grad=True)
    y = softplus(x)
    y.backward(np.ones(2))
print("softplus at -1000, +1000:", y.data, "  derivative:", x.grad)
assert y.data.tolist() == [0.0, 1000.0] and x.grad.tolist() == [0.0, 1.0]

# %% [markdown]
# ## 4. The checker catches wrong rules
#
# Two classic mistakes: the wrong derivative (`e^x` instead of `sigmoid(x)`), and forgetting to
# multiply by `g` (right only when every upstream gradient is 1: `check_grad`'s random `v`
# catches it). Each raises `AssertionError` naming the input.

# %%
def wrong_derivative(x):
    m, e = _parts(x.data)
    return unary_op("wrong", x, m + np.log1p(e), lambda: np.exp(x.data))


def forgot_g(x):
    m, e = _parts(x.data)
    return mt.Tensor.from_op(m + np.log1p(e), (x,), lambda g: (stable_sigmoid(x.data),), "forgot_g")


for bad in (wrong_derivative, forgot_g):
    try:
        check_grad(bad, x_np)
    except AssertionError as exc:
        reason = next(line for line in str(exc).splitlines() if line.startswith("check_grad"))
        print(f"{bad.__name__}: caught. {reason}")
    else:
        raise AssertionError(f"check_grad missed {bad.__name__}")

# %% [markdown]
# ## 5. An op of two inputs that broadcast
#
# `logaddexp(a, b) = log(e^a + e^b)`, stably `max(a, b) + log1p(e^-|a - b|)`, has
# `d/da = sigmoid(a - b)` and `d/db = sigmoid(b - a)`. `binary_op` does the rest: it turns a
# constant (a Python number, an array) into a tensor of the other input's dtype, checks that
# the shapes broadcast, and sums each gradient back to its input's shape with `unbroadcast`
# (lesson 1, section 3). So `softplus(x)` is just `logaddexp(x, 0.0)`, bit for bit.

# %%
def logaddexp(a, b) -> mt.Tensor:
    """``log(e^a + e^b)`` of two broadcasting Tensors (or constants), stable for every finite input."""
    xp = backend.xp
    return binary_op("logaddexp", a, b,
                     lambda p, q: xp.maximum(p, q) + xp.log1p(xp.exp(-xp.abs(p - q))),
                     lambda g, p, q, out: g * stable_sigmoid(p - q),
                     lambda g, p, q, out: g * stable_sigmoid(q - p))


rng = np.random.default_rng(1)
grads, _ = check_grad(logaddexp, rng.normal(size=(3, 4)), rng.normal(size=(4,)))
print("logaddexp (3, 4) with (4,): gradient shapes", [gr.shape for gr in grads])
assert [gr.shape for gr in grads] == [(3, 4), (4,)]
assert np.array_equal(logaddexp(mt.Tensor(sweep), 0.0).data, softplus(mt.Tensor(sweep)).data)
try:
    logaddexp(mt.Tensor(np.ones(3)), mt.Tensor(np.ones(4)))
except ValueError as exc:
    print("ValueError:", exc)

# %% [markdown]
# ## 6. It composes with everything else
#
# A new op is a node like any other: gradients flow through it into a weight.

# %%
w = mt.Tensor(np.ones(4), requires_grad=True)
loss = softplus(mt.Tensor(x_np) @ w).sum()  # (3, 4) @ (4,) -> (3,) -> ()
loss.backward()
expected = (stable_sigmoid(x_np @ np.ones(4))[:, None] * x_np).sum(axis=0)
print("d loss / d w =", w.grad)
assert np.allclose(w.grad, expected, rtol=1e-14, atol=0)

# %% [markdown]
# ## What you saw
#
# - An op is a result, a `backward(g)` and `Tensor.from_op`; `unary_op` and `binary_op` write
#   the bookkeeping (`g` times the local derivative; broadcasting summed back).
# - `softplus` written as `max(x, 0) + log1p(e^-|x|)`, with its derivative from `e^-|x|`,
#   is exact at `x = +-1000`, where the textbook formula gives `inf`.
# - `check_grad` passes a right rule and catches a wrong one, including a rule that forgot `g`.
#
# Next, lesson 3 builds a transformer out of ops like these, with every shape written down.
