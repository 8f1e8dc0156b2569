# %% [markdown]
# # Lesson 1: autograd by hand
#
# Training follows the gradient of a loss downhill. `minitspeft` computes gradients the way
# PyTorch does: while it computes forward, every operation records a node of a graph; then
# `backward()` walks the graph from the loss back to the inputs and applies the chain rule
# at each node. This lesson does the same thing by hand, next to the engine:
#
# 1. a computation graph on paper and in code, and the chain rule through it;
# 2. why the gradients of a node used twice **add**;
# 3. tensors: each op's backward is a vector-Jacobian product, and broadcasting's is a sum
#    (`unbroadcast`);
# 4. checking any gradient with central differences, by hand and with the package's
#    checker `minitspeft.testing.check_grad`.
#
# Every claim is checked with an `assert`, so if the lesson ever stops telling the truth it
# fails. Run it as `python tutorials/01_autograd_by_hand.py`, or open it as a notebook (the
# README's Lessons section says how). `--out DIR` saves its picture as a PNG.

# %% [markdown]
# Every lesson starts with the same small cell: it reads `--out` (ignoring the arguments a
# notebook kernel passes to itself) and loads matplotlib if it is installed. Without
# matplotlib, the terminal drawings are all you get, and they say the same thing.

# %%
import argparse
import os
import sys

import numpy as np

import minitspeft as mt
from minitspeft.extend import unbroadcast
from minitspeft.testing import central_difference, check_grad

NOTEBOOK = "ipykernel" in sys.modules  # Jupyter, JupyterLab, VS Code's notebook or interactive window
parser = argparse.ArgumentParser(description="Lesson 1: autograd by hand")
parser.add_argument("--out", help="save the pictures as PNG files in this folder")
OUT = parser.parse_known_args([] if NOTEBOOK else None)[0].out
plt = None
if NOTEBOOK or OUT:
    try:
        import matplotlib
        if not NOTEBOOK:
            matplotlib.use("Agg")  # files only: a script never opens a window
        import matplotlib.pyplot as plt
    except ImportError:
        pass


def picture(fig, name):
    """Show ``fig`` inline in a notebook; save it as ``OUT/name`` when ``--out`` is given."""
    if OUT:
        os.makedirs(OUT, exist_ok=True)
        fig.savefig(os.path.join(OUT, name), dpi=100)
        print(f"(saved {os.path.join(OUT, name)})")
    if NOTEBOOK:
        plt.show()
    plt.close(fig)


# %% [markdown]
# ## 1. A graph on paper
#
# Take `L = tanh(x * y + x)` at `x = 0.5`, `y = -1.5`. Written as one node per operation:
#
# ```
#   x ──┬──► [*] ── a ──► [+] ── b ──► [tanh] ── L
#   y ──┘             x ──┘
# ```
#
# Forward: `a = x y = -0.75`, `b = a + x = -0.25`, `L = tanh(b)`.
# Backward, from `L` to the leaves, one local derivative per edge (the **chain rule**):
#
# ```
# dL/dL = 1
# dL/db = 1 - tanh(b)^2               (tanh' = 1 - tanh^2)
# dL/da = dL/db * 1                   (b = a + x: d b/d a = 1)
# dL/dy = dL/da * x                   (a = x y:   d a/d y = x)
# dL/dx = dL/da * y  +  dL/db * 1     (x feeds two nodes: one term per path)
# ```
#
# The engine works in float64 here, so it should agree with these formulas to about 1e-15.

# %%
x = mt.Tensor(np.float64(0.5), requires_grad=True)  # leaves: the inputs we want gradients for
y = mt.Tensor(np.float64(-1.5), requires_grad=True)
a = x * y
b = a + x
L = b.tanh()
a.retain_grad()  # intermediates keep their gradient only when asked (as in PyTorch)
b.retain_grad()
L.backward()  # dL/dL = 1 for a one-element tensor

dL_db = 1 - np.tanh(-0.25) ** 2
dL_da = dL_db
by_hand = {"b": dL_db, "a": dL_da, "y": dL_da * 0.5, "x": dL_da * -1.5 + dL_db}
engine = {"b": b.grad, "a": a.grad, "y": y.grad, "x": x.grad}
print(f"L = {float(L):.6f}")
for name in ("b", "a", "y", "x"):
    print(f"dL/d{name}: by hand {by_hand[name]:+.12f}   engine {float(engine[name]):+.12f}")
    assert abs(by_hand[name] - float(engine[name])) < 1e-14

# %% [markdown]
# `x` is used twice: by the product and by the sum. A change of `x` moves `L` along both
# paths at once, so its gradient is the **sum** of the two paths' terms. Check it against a
# central difference of `L` itself (section 4 explains why this estimate is so accurate):
# the sum agrees, either path alone does not.

# %%
def L_of(xv):
    return np.tanh(xv * -1.5 + xv)


h = 1e-5
numeric = (L_of(0.5 + h) - L_of(0.5 - h)) / (2 * h)
path_product, path_sum = dL_da * -1.5, dL_db * 1
print(f"central difference {numeric:+.10f}")
print(f"path through a     {path_product:+.10f}")
print(f"path through b     {path_sum:+.10f}")
print(f"their sum          {path_product + path_sum:+.10f}")
assert abs(numeric - (path_product + path_sum)) < 1e-9
assert abs(numeric - path_product) > 0.4 and abs(numeric - path_sum) > 0.4

# %% [markdown]
# The engine adds them the same way: `backward()` visits the nodes in reverse topological
# order (every consumer of a node before the node), so by the time it reaches `x`, both
# contributions have been summed. Leaves also **accumulate** across calls: a second
# `backward()` adds the same gradients again, which is why training loops zero them
# (`x.grad = None`, or `zero_grad()` on a model or optimiser).

# %%
first = float(x.grad)
L.backward()  # the graph is still there: run it again
print(f"x.grad after one backward {first:+.6f}, after two {float(x.grad):+.6f}")
assert float(x.grad) == 2 * first
x.grad = None

# %% [markdown]
# ## 2. Tensors: a backward rule is a vector-Jacobian product
#
# For an op `out = f(inp)` on arrays, `backward(g)` receives `g = dL/dout` (the shape of
# `out`) and returns `dL/dinp` (the shape of `inp`). It never builds the Jacobian. For a
# matrix product `out = W @ v`, with `W (3, 4)`, `v (4, 2)` and `out (3, 2)`:
#
# ```
# dL/dW = g @ v.T     (3, 2) @ (2, 4) -> (3, 4)
# dL/dv = W.T @ g     (4, 3) @ (3, 2) -> (4, 2)
# ```
#
# Each result has exactly its input's shape: a quick check of any hand-derived rule.

# %%
rng = np.random.default_rng(0)
W = mt.Tensor(rng.normal(size=(3, 4)), requires_grad=True)
v = mt.Tensor(rng.normal(size=(4, 2)), requires_grad=True)
g = rng.normal(size=(3, 2))  # pretend this came from the layers above
(W @ v).backward(g)
print("dL/dW shape", W.grad.shape, " dL/dv shape", v.grad.shape)
assert np.allclose(W.grad, g @ v.data.T, rtol=1e-14, atol=0)
assert np.allclose(v.grad, W.data.T @ g, rtol=1e-14, atol=0)

# %% [markdown]
# ## 3. Broadcasting, and why its backward is a sum
#
# Adding a bias `(3,)` to a batch `(4, 3)` broadcasts it: NumPy behaves as if the bias were
# copied to 4 rows. A copy used 4 times is a node used 4 times, so, as in section 1, its
# gradient is the sum of the 4 rows of `g`. A `(4, 1)` column stretched across 3 columns
# sums over the columns instead. `minitspeft.extend.unbroadcast(g, shape)` does exactly
# this: sum over the axes broadcasting added, then over the axes it stretched from 1.

# %%
X = mt.Tensor(rng.normal(size=(4, 3)), requires_grad=True)
bias = mt.Tensor(rng.normal(size=(3,)), requires_grad=True)
column = mt.Tensor(rng.normal(size=(4, 1)), requires_grad=True)
out = X + bias + column  # (4, 3)
g = rng.normal(size=out.shape)
out.backward(g)
print("out", out.shape, "| X.grad", X.grad.shape, "| bias.grad", bias.grad.shape,
      "| column.grad", column.grad.shape)
assert np.array_equal(X.grad, g)
assert np.array_equal(bias.grad, g.sum(axis=0)) and np.array_equal(bias.grad, unbroadcast(g, (3,)))
assert np.array_equal(column.grad, g.sum(axis=1, keepdims=True))
assert np.array_equal(column.grad, unbroadcast(g, (4, 1)))

# %% [markdown]
# ## 4. Checking a gradient with central differences
#
# Any gradient can be checked without knowing its formula:
# `f'(x) ~ (f(x + h) - f(x - h)) / (2h)`. Taylor's theorem says the error of this estimate
# is about `h^2 f'''(x) / 6` (the `h` terms cancel, which a one-sided difference does not).
# But each `f` value is rounded (about 1e-16 relative in float64), and dividing by `2h`
# magnifies that: a rounding error of about `1e-16 / h`. So the error falls like `h^2`
# until rounding takes over, near `h ~ 1e-5`. Watch it for `f = tanh` at `x = 0.3`.

# %%
x0, exact = 0.3, 1 - np.tanh(0.3) ** 2
steps = [10.0 ** -k for k in range(1, 11)]
errors = [abs((np.tanh(x0 + s) - np.tanh(x0 - s)) / (2 * s) - exact) for s in steps]
print("   h        error   (one # per factor of 10 above 1e-17)")
for s, e in zip(steps, errors):
    print(f"{s:7.0e}  {e:9.2e}  " + "#" * max(0, int(np.log10(e) + 17)))
assert 0.5e4 < errors[0] / errors[2] < 2e4  # h 100x smaller: error 10,000x smaller (h^2)
assert errors[9] > 100 * errors[4]  # at h = 1e-10 rounding dominates again
if plt is not None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.loglog(steps, errors, "o-", label="central difference error")
    ax.loglog(steps[:6], [s ** 2 * 0.2 for s in steps[:6]], "--", color="gray", label="truncation ~ h^2")
    ax.loglog(steps[4:], [1e-16 / s for s in steps[4:]], ":", color="gray", label="rounding ~ 1e-16 / h")
    ax.set(xlabel="h", ylabel="|estimate - exact|", title="tanh'(0.3): truncation vs rounding")
    ax.legend(fontsize=8)
    fig.tight_layout()
    picture(fig, "01_central_difference.png")

# %% [markdown]
# That is why gradient checks run in **float64**: in float32 (rounding about 1e-7) the best
# achievable error is around 1e-4 or 1e-5, too coarse to tell a right rule from a slightly
# wrong one.
#
# The package's checker, `minitspeft.testing.check_grad(fn, *arrays)`, does this for every
# element of every input at once. It draws a random upstream gradient `v`, runs
# `fn(...).backward(v)`, and compares each input's `.grad` with central differences of
# `<v, fn(...)>` (with one Richardson step, which cancels the `h^2` term too), element by
# element and along one random direction of all inputs together. A random `v` catches rules
# that are right only when the upstream gradient is all ones. It raises `AssertionError`,
# naming the input, on any disagreement. Here it checks a small layer with a broadcast bias.

# %%
def layer(X, W, bias):
    return (X @ W + bias).tanh()  # (4, 3) @ (3, 2) + (2,) -> (4, 2)


arrays = [rng.normal(size=(4, 3)), rng.normal(size=(3, 2)), rng.normal(size=(2,))]
grads, v = check_grad(layer, *arrays)
print("check_grad passed; gradient shapes:", [gr.shape for gr in grads])
direction = [np.zeros_like(arr) for arr in arrays]
direction[2][0] = 1.0  # the first bias entry alone
one = central_difference(layer, arrays, direction, v)
print(f"dL/dbias[0]: engine {grads[2][0]:+.10f}, central difference {one:+.10f}")
assert abs(grads[2][0] - one) < 1e-8

# %% [markdown]
# ## What you saw
#
# - The engine's gradients are the chain rule, node by node: equal to the hand-derived
#   values to 1e-14 in float64.
# - A node used on several paths receives the **sum** of their gradients; a broadcast is
#   such a reuse, so its gradient is summed back to the input's shape (`unbroadcast`).
# - A central difference is accurate to about `h^2` until rounding (about `1e-16 / h`)
#   takes over; `check_grad` uses it, in float64, to test any op.
#
# Next, lesson 2 writes a new op with its own backward rule and proves it with `check_grad`.
