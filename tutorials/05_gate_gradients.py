# %% [markdown]
# # Lesson 5: a gradient through a hard gate
#
# TS-PEFT (Ma et al., arXiv 2511.16147) applies a PEFT update `d_i` to token `i` of a layer
# only if it is large next to the frozen output `b_i`:
#
# ```
# r_i   = ||d_i|| / (||b_i|| + eps)      the update's relative size
# S_i   = 1[r_i >= tau]                  exactly 0 or 1; one learned threshold tau per layer
# out_i = b_i + S_i d_i
# ```
#
# That forward pass is the paper's. How `tau` (and the update) learn through a 0/1 step is
# this project's own construction, derived in `docs/gate.md`; this lesson rebuilds it number
# by number, in float64:
#
# 1. the gate's forward pass;
# 2. why the step's true derivative (0) teaches nothing, shown by finite differences;
# 3. the straight-through estimator and the identity `S = H + phi - stop_gradient(phi)`;
# 4. the three surrogates `phi`, drawn side by side;
# 5. `dL/dtau` by hand against the engine;
# 6. both paths into `d` and `b`, and what `grad_through_ratio=False` removes;
# 7. the straight-through gradient as the exact gradient of a smooth twin;
# 8. the surrogate's width, and the proximal reading of the gate (derived here).
#
# Run it as `python tutorials/05_gate_gradients.py` (`--out DIR` saves the picture), or
# open it as a notebook.

# %%
import argparse
import os
import sys

import numpy as np

import minitspeft as mt
from minitspeft.peft import GateConfig, TokenGate, surrogate_grad, surrogate_step, token_ratio
from minitspeft.testing import check_grad

NOTEBOOK = "ipykernel" in sys.modules
parser = argparse.ArgumentParser(description="Lesson 5: a gradient through a hard gate")
parser.add_argument("--out", help="save the pictures as PNG files in this folder")
OUT = parser.parse_known_args([] if NOTEBOOK else None)[0].out
plt = None
if NOTEBOOK or OUT:
    try:
        import matplotlib
        if not NOTEBOOK:
            matplotlib.use("Agg")
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


def show(a):
    """Round for printing; adding 0.0 turns a -0.0 into 0.0."""
    return np.round(a, 4) + 0.0


np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. The forward pass
#
# One gated layer, five tokens of three channels: `b` and `d` are `(N, C) = (5, 3)`, and
# `r` and `S` are `(N,) = (5,)`. The updates grow from token 0 to token 4; `tau = 0.6`.

# %%
rng = np.random.default_rng(0)
b = rng.normal(size=(5, 3))
d = rng.normal(size=(5, 3)) * np.array([[0.1], [0.3], [0.6], [1.0], [2.0]])
TAU, T, EPS = 0.6, 0.2, 1e-6
gate = TokenGate(GateConfig(surrogate="sigmoid", temperature=T, eps=EPS, tau_init=TAU), dtype=np.float64)
bt, dt = mt.Tensor(b, requires_grad=True), mt.Tensor(d, requires_grad=True)
out = gate(bt, dt)

r = np.linalg.norm(d, axis=1) / (np.linalg.norm(b, axis=1) + EPS)
S = (r >= TAU).astype(float)
print("r =", show(r))
print("S =", gate.last_S.data, "  (tau = 0.6)")
assert np.array_equal(gate.last_S.data, S) and 0 < S.sum() < 5  # some tokens open, some closed
assert np.array_equal(out.data[S == 0], b[S == 0])  # a closed token keeps b, bit for bit
assert np.allclose(out.data[S == 1], (b + d)[S == 1], rtol=0, atol=1e-15)

# %% [markdown]
# ## 2. The step's true derivative is 0
#
# Take the loss `L = <g, out>` for a fixed upstream gradient `g` (whatever the layers above
# would send back). Nudge `tau` by `+-h` and difference: unless `tau` crosses some `r_i`,
# not one gate changes, so `L` does not change either, **exactly**. The step is flat on both
# sides of its jump: its derivative is 0 everywhere except at `r = tau`, where it does not
# exist. A gradient of 0 would never move `tau`.

# %%
g = rng.normal(size=(5, 3))


def loss_at(tau):
    return float(np.sum(g * (b + (r >= tau)[:, None] * d)))


gaps = np.abs(r - TAU)
for h in (1e-2, 1e-4, 1e-6):
    fd = (loss_at(TAU + h) - loss_at(TAU - h)) / (2 * h)
    print(f"h = {h:.0e}: (L(tau + h) - L(tau - h)) / 2h = {fd}")
    assert h < gaps.min() and fd == 0.0
print(f"(the nearest r is {gaps.min():.3f} away from tau)")

# %% [markdown]
# ## 3. The straight-through estimator
#
# Keep the hard step forward, but let its *backward* pass use the derivative `phi'` of a
# smooth stand-in `phi` (a surrogate). With `z = r - tau` and `H = 1[z >= 0]`, one
# expression does both:
#
# ```
# S = H + phi(z) - stop_gradient(phi(z))
# ```
#
# Forward, the two `phi` terms cancel, so `S = H`. Backward, `H` and the stopped term are
# constants, so `dS/dz = phi'(z)`, hence `dS/dtau = -phi'(z)`. In code, `stop_gradient` is
# `.detach()`. One subtlety: in floating point, `(1 + phi) - phi` can miss 1 by one rounding
# (1.1e-16). That is why the package's fused gate (`gated_update`) computes `H` itself, and
# uses this expression only in its readable twin (`reference_gate`).

# %%
tau = mt.Tensor(np.float64(TAU), requires_grad=True)
z = mt.Tensor(r) - tau  # (5,)
phi = surrogate_step(z, "sigmoid", T)  # sigma(z / T)
H = mt.Tensor((z.data >= 0).astype(float))
S_st = H + phi - phi.detach()
print("S - H         =", S_st.data - H.data)
assert np.abs(S_st.data - H.data).max() <= np.finfo(np.float64).eps and np.all(S_st.data[H.data == 0] == 0)
p = np.linspace(0.01, 0.99, 99)
misses = (1 + p) - p - 1
print(f"(1 + p) - p - 1 for p = 0.01, 0.02, ..., 0.99: {np.count_nonzero(misses)} of 99 are not 0, "
      f"the largest {np.abs(misses).max():.2e}")
assert 0 < np.count_nonzero(misses) and np.abs(misses).max() <= np.finfo(np.float64).eps
S_st.backward(np.ones(5))  # d(sum S) / d tau = -sum phi'(z)
print("d sum(S)/dtau =", float(tau.grad), "  -sum phi'(z) =", -surrogate_grad(r - TAU, "sigmoid", T).sum())
assert np.isclose(float(tau.grad), -surrogate_grad(r - TAU, "sigmoid", T).sum(), rtol=1e-12)

# %% [markdown]
# ## 4. Three surrogates, side by side
#
# `GateConfig.surrogate` picks `phi`; `temperature` `T` sets its width, in units of `r`:
#
# ```
# sigmoid:   phi(z) = sigma(z / T)                  phi'(z) = sigma'(z / T) / T     peak 1/(4T)
# rect:      phi(z) = clip(z / (2T) + 1/2, 0, 1)    phi'(z) = 1[|z| <= T] / (2T)    0 outside |z| <= T
# identity:  phi(z) = z                             phi'(z) = 1                     the plain estimator
# ```
#
# The step jumps by 1, and `sigmoid'` and `rect'` each have area 1 under their curve: they
# spread the jump over a band of width about `T`. `identity` passes derivative 1 to every
# token however far it is from the threshold.

# %%
zs = np.linspace(-1, 1, 2001)
curves = {name: (surrogate_step(mt.Tensor(zs), name, T).data, surrogate_grad(zs, name, T))
          for name in ("sigmoid", "rect", "identity")}
print("phi'(z) for T = 0.2, one column per 0.1 of z (darker: larger)")
print("z:       -1        0         1")
for name, (_, dphi) in curves.items():
    column = dphi[::100]
    print(f"{name:9s}" + "".join(" .:-=+*#%@"[min(9, int(v / 1.25 * 9 + 0.5))] for v in column),
          f"  peak {dphi.max():.3f}")
wide = np.linspace(-5, 5, 200001)  # 25 T on each side: the tails are below 1e-10


def area(y):
    """The area under ``y`` over ``wide`` (the trapezoid rule)."""
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(wide)))


print(f"areas under phi': sigmoid {area(surrogate_grad(wide, 'sigmoid', T)):.6f}, "
      f"rect {area(surrogate_grad(wide, 'rect', T)):.4f}")
assert np.isclose(surrogate_grad(np.zeros(1), "sigmoid", T)[0], 1 / (4 * T), rtol=1e-12)
assert np.isclose(area(surrogate_grad(wide, "sigmoid", T)), 1, atol=1e-6)
assert np.isclose(area(surrogate_grad(wide, "rect", T)), 1, atol=1e-3)
assert np.all(surrogate_grad(zs, "rect", T)[np.abs(zs) > T + 1e-12] == 0)
assert np.all(surrogate_grad(zs, "identity", T) == 1)
if plt is not None:
    fig, (ax_phi, ax_grad) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_phi.step(zs, (zs >= 0).astype(float), color="black", linewidth=2, label="hard step H", where="post")
    for name, (p, dphi) in curves.items():
        ax_phi.plot(zs, p, label=name)
        ax_grad.plot(zs, dphi, label=name)
    ax_phi.set(xlabel="z = r - tau", ylabel="phi(z)", ylim=(-0.2, 1.2), title=f"forward stand-ins (T = {T})")
    ax_grad.set(xlabel="z = r - tau", ylabel="phi'(z)", title="what the backward pass uses")
    ax_phi.legend(fontsize=8)
    ax_grad.legend(fontsize=8)
    fig.tight_layout()
    picture(fig, "05_surrogates.png")

# %% [markdown]
# ## 5. `dL/dtau` by hand, against the engine
#
# With `g_i = dL/dout_i` and `out_i = b_i + S_i d_i`:
#
# ```
# dL/dS_i = <g_i, d_i>
# dL/dtau = sum_i dL/dS_i dS_i/dtau = - sum_i <g_i, d_i> phi'(r_i - tau)
# ```
#
# Every token contributes, open or closed, weighted by how close its `r` is to `tau`.

# %%
out.backward(g)  # the gate of section 1, with the g of section 2
dL_dS = (g * d).sum(axis=1)
dphi = surrogate_grad(r - TAU, "sigmoid", T)
by_hand = -(dL_dS * dphi).sum()
print("token   r      S   <g_i,d_i>  phi'(r_i - tau)  -<g_i,d_i> phi'")
for i in range(5):
    print(f"{i:5d}  {r[i]:.3f}  {int(S[i])}  {dL_dS[i]:+9.4f}  {dphi[i]:15.4f}  {-dL_dS[i] * dphi[i]:+14.4f}")
print(f"dL/dtau by hand {by_hand:+.12f}, engine {float(gate.tau.grad):+.12f}")
assert abs(by_hand - float(gate.tau.grad)) <= 1e-10

# %% [markdown]
# ## 6. Both paths into `d` and `b`
#
# The update `d_i` reaches the loss twice: directly through `S_i d_i`, and through `r_i`,
# which decides `S_i`. So does `b_i`: directly (`out_i = b_i + ...`), and through the
# denominator of `r_i`. With `k_i = <g_i, d_i> phi'(r_i - tau)`:
#
# ```
# dL/dd_i = S_i g_i  +  k_i dr_i/dd_i,     dr_i/dd_i =  d_i / (||d_i|| (||b_i|| + eps))
# dL/db_i =     g_i  +  k_i dr_i/db_i,     dr_i/db_i = -||d_i|| / (||b_i|| + eps)^2 * b_i / ||b_i||
# ```
#
# A closed token (`S_i = 0`) gets no direct gradient into `d_i`: only its path through `r`.
# `b` is frozen weights' output, but it depends on the layer's input, so its gradient
# travels further down, and it is changed by the ratio path too.

# %%
nb, nd = np.linalg.norm(b, axis=1), np.linalg.norm(d, axis=1)
k = dL_dS * dphi
dr_dd = d / (nd * (nb + EPS))[:, None]
dr_db = -(nd / (nb + EPS) ** 2)[:, None] * b / nb[:, None]
dd_hand = S[:, None] * g + k[:, None] * dr_dd
db_hand = g + k[:, None] * dr_db
closed = int(np.flatnonzero(S == 0)[0])
print(f"token {closed} (closed): direct part {show(S[closed] * g[closed])}, path through r "
      f"{show(k[closed] * dr_dd[closed])}, engine's dL/dd {show(dt.grad[closed])}")
print(f"dL/db - g (the ratio path into b), per token: {show(np.linalg.norm(bt.grad - g, axis=1))}")
assert np.allclose(dt.grad, dd_hand, rtol=0, atol=1e-10) and np.allclose(bt.grad, db_hand, rtol=0, atol=1e-10)
assert np.allclose(dt.grad[closed], k[closed] * dr_dd[closed], rtol=0, atol=1e-12)
assert np.abs(bt.grad - g).max() > 0.01

# %% [markdown]
# `GateConfig(grad_through_ratio=False)` cuts the paths through `r`: the update and `b` get
# only their direct parts, while `dL/dtau` is unchanged (it never went through `r`). Then a
# closed token's update receives nothing at all.

# %%
flat = TokenGate(GateConfig(temperature=T, eps=EPS, tau_init=TAU, grad_through_ratio=False), dtype=np.float64)
bt2, dt2 = mt.Tensor(b, requires_grad=True), mt.Tensor(d, requires_grad=True)
flat(bt2, dt2).backward(g)
assert np.array_equal(dt2.grad, S[:, None] * g) and np.array_equal(bt2.grad, g)
assert np.isclose(float(flat.tau.grad), float(gate.tau.grad), rtol=1e-14)
print("without the ratio path: dL/dd = S g, dL/db = g, and dL/dtau is the same:", float(flat.tau.grad))

# %% [markdown]
# ## 7. A smooth twin with the same gradient
#
# Where does this gradient come from, if not from the step? Freeze the hard part at the
# current point: `H0 = 1[r >= tau]` and `phi0 = phi(r - tau)`, computed once, as constants.
# The function `twin(b, d, tau) = b + (H0 + phi(r(b, d) - tau) - phi0) d` is smooth, equals
# the gate at this point, and its **true** gradient (central differences, `check_grad`) is
# the straight-through gradient of sections 5 and 6.

# %%
H0, phi0 = mt.Tensor(S), mt.Tensor(surrogate_step(mt.Tensor(r - TAU), "sigmoid", T).data)


def twin(b_, d_, tau_):
    S_ = H0 + surrogate_step(token_ratio(b_, d_, EPS) - tau_, "sigmoid", T) - phi0  # (5,)
    return b_ + S_.reshape(5, 1) * d_  # (5, 3)


assert np.allclose(twin(mt.Tensor(b), mt.Tensor(d), mt.Tensor(np.float64(TAU))).data, out.data, rtol=0, atol=1e-15)
grads, v = check_grad(twin, b, d, np.array(TAU))  # passes: the twin's gradient is right
bt3, dt3, tau3 = (mt.Tensor(a, requires_grad=True) for a in (b, d, np.float64(TAU)))
gate3 = TokenGate(GateConfig(temperature=T, eps=EPS, tau_init=TAU), dtype=np.float64)
gate3(bt3, dt3).backward(v)  # the real gate, with check_grad's upstream gradient v
assert np.allclose(grads[0], bt3.grad, atol=1e-10) and np.allclose(grads[1], dt3.grad, atol=1e-10)
assert np.isclose(grads[2], float(gate3.tau.grad), atol=1e-10)
print("the smooth twin's true gradient = the gate's straight-through gradient (b, d and tau)")

# %% [markdown]
# ## 8. The surrogate's width decides who learns
#
# `phi'` is large only within a few `T` of `tau`. A narrow surrogate leaves most tokens
# without a gradient to `tau`; if every token is outside the band, the threshold is stuck
# (lesson 6 makes that happen in training). A wide one lets far-away tokens pull on `tau`.

# %%
print("token r:          ", show(r))
for width in (0.02, 0.2, 2.0):
    print(f"phi' with T = {width:<4}:", show(surrogate_grad(r - TAU, "sigmoid", width)))
far = np.abs(r - TAU) > 10 * 0.02
assert np.all(surrogate_grad(r - TAU, "sigmoid", 0.02)[far] < 1e-2)

# %% [markdown]
# ## The proximal reading (derived here)
#
# Later versions of the paper describe the training as proximal optimisation with a sparsity
# regulariser. One way to read that (derived in `docs/gate.md`, not the paper's algorithm):
# charge token `i` a fixed price `c_i` for applying any update at all, and find the update
# `v` closest to the dense one, `u = d_i`:
#
# ```
# prox(u) = argmin_v  1/2 ||v - u||^2 + c_i 1[v != 0]
# ```
#
# Only two candidates can win: `v = 0` costs `1/2 ||u||^2`; any `v != 0` pays `c_i`, and `v = u`
# pays nothing more. So `u` is kept exactly when `1/2 ||u||^2 >= c_i`. With the price
# `c_i = tau^2 (||b_i|| + eps)^2 / 2`, that is `||u|| >= tau (||b_i|| + eps)`, i.e. `r_i >= tau`:
# the gate. Check it on 2,000 random tokens, and check that no random candidate `v` beats the
# better of the two.

# %%
rng = np.random.default_rng(1)
bs, us = rng.normal(size=(2000, 3)), rng.normal(size=(2000, 3)) * rng.uniform(0, 1.5, size=(2000, 1))
price = TAU ** 2 * (np.linalg.norm(bs, axis=1) + EPS) ** 2 / 2
keep = 0.5 * (us ** 2).sum(axis=1) >= price  # cost(v = 0) >= cost(v = u)
prox_gate = TokenGate(GateConfig(tau_init=TAU, eps=EPS), dtype=np.float64)
prox_gate(mt.Tensor(bs), mt.Tensor(us))
print(f"tokens kept by the proximal rule: {keep.sum()}, opened by the gate: {int(prox_gate.last_S.data.sum())}")
assert np.array_equal(prox_gate.last_S.data, keep.astype(float))
best = np.minimum(0.5 * (us ** 2).sum(axis=1), price)
for _ in range(50):
    cand = us + rng.normal(size=us.shape) * 0.3
    assert np.all(0.5 * ((cand - us) ** 2).sum(axis=1) + price >= best)

# %% [markdown]
# ## What you saw
#
# - The hard step's true derivative is exactly 0 (finite differences), so the gate trains
#   through a surrogate: `S = H + phi - stop_gradient(phi)` is `H` forward (to one rounding)
#   and `phi'` backward.
# - `dL/dtau = -sum_i <g_i, d_i> phi'(r_i - tau)`, by hand equal to the engine to 1e-10; the
#   update and `b` each get a direct part and a part through `r`, and
#   `grad_through_ratio=False` removes the second.
# - That gradient is the exact gradient of a smooth twin frozen at the current point.
# - The gate is the proximal operator of a per-token price `tau^2 (||b_i|| + eps)^2 / 2`.
#
# Next, lesson 6 trains gated models and makes the gate fail on purpose.
