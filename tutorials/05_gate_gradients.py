"""Lesson 1: how a gradient gets through a hard 0/1 gate.

Run it:  python tutorials/01_gate_gradients.py

TS-PEFT (arXiv 2511.16147) applies a LoRA update d_i at token i only if it is
large relative to the frozen output b_i:

    r_i = ||d_i|| / (||b_i|| + eps),   S_i = 1[r_i >= tau],   out_i = b_i + S_i d_i

The step 1[r >= tau] is flat almost everywhere, so its true derivative is 0
and tau would never learn. The straight-through trick (derived here, see
docs/gate.md) keeps the hard 0/1 in the forward pass and uses a smooth stand-in
phi'(r - tau) in the backward pass. This lesson builds one gated layer by
hand, prints every number, and checks the engine against the formulas.
"""

import numpy as np

import minitspeft as mt
from minitspeft.peft import GateConfig, TokenGate

np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# Four tokens, three channels. b: the frozen layer's output; d: the LoRA update.
b = rng.normal(size=(4, 3))
d = rng.normal(size=(4, 3)) * np.array([[0.1], [0.5], [1.0], [2.0]])  # growing updates

gate = TokenGate(GateConfig(surrogate="sigmoid", temperature=0.2), dtype=np.float64)
gate.tau.data = np.asarray(0.6)

bt, dt = mt.Tensor(b, requires_grad=True), mt.Tensor(d, requires_grad=True)
out = gate(bt, dt)

r = np.linalg.norm(d, axis=1) / (np.linalg.norm(b, axis=1) + 1e-6)
print("step 1 - the forward pass")
print("  r   =", r)
print("  S   =", gate.last_S.data, "  (tau = 0.6; exactly 0 or 1)")
print("  closed tokens keep b exactly:", np.array_equal(out.data[r < 0.6], b[r < 0.6]))

# Pretend the loss is <g, out> for a fixed upstream gradient g.
g = rng.normal(size=(4, 3))
out.backward(g)

print("\nstep 2 - what the gate's gradient is made of")
dS = (g * d).sum(axis=1)
print("  dL/dS_i = <g_i, d_i>          =", dS)
s = 1 / (1 + np.exp(-(r - 0.6) / 0.2))
phi = s * (1 - s) / 0.2
print("  phi'(r_i - tau)  (sigmoid, T=0.2) =", phi)
print("  dL/dtau = -sum dL/dS_i phi'   =", -(dS * phi).sum())
print("  the engine says dL/dtau       =", float(gate.tau.grad))
assert np.isclose(float(gate.tau.grad), -(dS * phi).sum())

print("\nstep 3 - the update's gradient: S_i g_i plus the path through r")
direct = (r >= 0.6)[:, None] * g
print("  closed tokens get no direct gradient, only the surrogate's share:")
print("  direct part   :", direct[0], "(token 0, closed)")
print("  engine's total:", dt.grad[0])

print("\nstep 4 - a surrogate's width decides who learns")
for T in (0.02, 0.2, 2.0):
    s = 1 / (1 + np.exp(-(r - 0.6) / T))
    print(f"  T = {T:<4}: phi' = {s * (1 - s) / T}")
print("  With T = 0.02 tokens far from tau get ~0: a threshold can get stuck.")
