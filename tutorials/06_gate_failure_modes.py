"""Lesson 3: how a learned gate fails, how to see it, and why the threshold is a proximal step.

Run it:  python tutorials/03_gate_failure_modes.py

Three short trainings of a tiny ViT with TS-LoRA on a toy image task show
the two failure modes described in docs/gate.md (derived here, not in the paper):

1. a *dead layer*: tau outruns r (which starts at 0, because B starts at 0),
   every gate of the layer closes, and S = 0 blocks the direct gradient to
   the update, so the layer cannot recover;
2. a *stuck threshold*: with a narrow surrogate, r sits far from tau, the
   surrogate derivative is 0 at every token, and tau never moves;
3. the cure for (1): a warm-up that keeps tau frozen until r has grown.

Each run prints what `gate_stats()` and `fit` report.
"""

import warnings

import numpy as np

import minitspeft as mt
from minitspeft import functional as F
from minitspeft import nn
from minitspeft.peft import GateConfig, LoraConfig, get_peft_model
from minitspeft.train import fit


def toy_images(n=64, seed=0):
    """Class c lights up row c of a 4x4 image."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    x = rng.uniform(0, 0.3, size=(n, 4, 4)).astype(np.float32)
    x[np.arange(n), y] += 0.7
    return x, y


def run(title, gate, steps=40):
    mt.manual_seed(0)
    cfg = nn.TransformerConfig(n_layer=1, n_head=2, n_embd=16, n_classes=3, pooling="cls")
    pm = get_peft_model(nn.ViT(cfg, patch_size=2, image_size=4),
                        LoraConfig(r=4, target_modules=["q_proj", "v_proj", "fc1"]), gate=gate)
    x, y = toy_images()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the same message is kept in result.notes
        result = fit(pm, x, y, steps=steps, batch_size=16, lr=1e-2, seed=0, progress=False)
    print(f"\n{title}")
    for name, s in pm.gate_stats().items():
        print(f"  {name:22s} tau={s['tau']:.3f}  density={s['density']:.2f}  mean r={s['mean_r']:.3f}"
              f"  dead={s['dead']}  stuck={s['stuck']}")
    for note in result.notes:
        print("  fit noted:", note[:110], "...")
    return pm, result


# 1. a large threshold learning rate and a strong regulariser: tau races ahead of r
dead, _ = run("1. tau_lr=0.1, sparsity_weight=1.0: dead layers",
              GateConfig(sparsity_weight=1.0, tau_lr=0.1, temperature=0.2))
assert any(s["dead"] for s in dead.gate_stats().values())

# 2. a narrow rectangular surrogate far from every r: no gradient reaches tau
stuck, _ = run("2. surrogate='rect', temperature=0.001: stuck thresholds",
                          GateConfig(surrogate="rect", temperature=0.001, sparsity_weight=0.1, tau_lr=0.01))
x, y = toy_images()
stuck.zero_grad()
(F.cross_entropy(stuck(x), y) + stuck.sparsity_loss()).backward()
largest = max(abs(float(t.grad)) for t in stuck.thresholds())
print(f"  largest |d loss / d tau| on a fresh batch: {largest} (tau now only coasts on AdamW's momentum)")
assert largest == 0.0

# 3. the same settings as (1) with a warm-up: r grows first, then tau moves
warm, _ = run("3. as (1) but warmup_steps=20: the layers learn before the gates tighten",
              GateConfig(sparsity_weight=1.0, tau_lr=0.1, temperature=0.2, warmup_steps=20), steps=60)

# 4. the proximal reading (derived here): for one token with update u and frozen output b,
#    argmin_v ||v - u||^2 + lam * ||b||^2 * 1[v != 0]  keeps u when ||u||^2 >= lam ||b||^2 and drops it
#    otherwise: a hard threshold on ||u|| / ||b|| at sqrt(lam), i.e. the gate with tau = sqrt(lam).
rng = np.random.default_rng(1)
b, u, lam = rng.normal(size=4), rng.normal(size=4), 0.5
keep_cost = lam * (b @ b)  # v = u: no distance, pays the L0 penalty
drop_cost = u @ u  # v = 0: no penalty, pays the distance
gate_open = np.linalg.norm(u) / np.linalg.norm(b) >= np.sqrt(lam)
print(f"\n4. proximal step: keep costs {keep_cost:.3f}, drop costs {drop_cost:.3f};"
      f" the gate with tau = sqrt(lambda) is {'open' if gate_open else 'closed'}")
assert gate_open == (keep_cost <= drop_cost)
