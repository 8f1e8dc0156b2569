# %% [markdown]
# # Lesson 6: when gates fail
#
# Lesson 5 showed how a gradient reaches the threshold `tau` through a hard gate. This
# lesson trains gated LoRA models and makes that machinery fail on purpose, in the two ways
# `docs/gate.md` describes (derived in this project, not in the paper):
#
# 1. a **dead layer**: `tau` outruns `r` (which starts at 0, because LoRA's `B` starts at 0),
#    every gate of the layer closes, and `S = 0` cuts the update off from its gradient;
# 2. a **stuck threshold**: with a narrow surrogate, `r` sits outside the band where `phi'` is
#    non-zero at every token, so `dL/dtau` is exactly 0 and `tau` stops moving;
#
# and then cures the first with a **warm-up**. Each case is judged by what matters, the
# accuracy on held-out images, next to dense LoRA and to training the new head alone.
#
# The task: a small ViT pretrained on handwritten digits 0-4 is fine-tuned on digits 5-9,
# with LoRA (`r = 4`) on all six projections of its block and a new, trainable head. It
# averages all tokens' final states (`pooling="mean"`), so every token's update can reach the
# classifier. The gate settings were chosen on a validation split of the training images
# (seeds 0-4); the numbers below are on the test split. Run it as
# `python tutorials/06_gate_failure_modes.py` (seeds 0-2, under a minute;
# `MINITSPEFT_QUICK=1`: seed 0 only; `--out DIR` saves the picture), or open it as a notebook.

# %%
import argparse
import os
import sys
import warnings

import numpy as np

import minitspeft as mt
from minitspeft import functional as F
from minitspeft import nn
from minitspeft.data import digits_task
from minitspeft.peft import GateConfig, LoraConfig, get_peft_model
from minitspeft.train import evaluate, fit

QUICK = os.environ.get("MINITSPEFT_QUICK", "") not in ("", "0")
NOTEBOOK = "ipykernel" in sys.modules
parser = argparse.ArgumentParser(description="Lesson 6: when gates fail")
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


SEEDS = (0,) if QUICK else (0, 1, 2)
STEPS = 120

# %% [markdown]
# ## The backbone and two references
#
# The frozen backbone is pretrained on 0-4 (a few seconds). Then two references on 5-9: the
# new head trained alone on the frozen features (a model whose updates are all switched
# off), and dense LoRA (what the updates add).

# %%
def vit(n_classes=5):
    config = nn.TransformerConfig(n_layer=1, n_head=2, n_embd=32, n_classes=n_classes, pooling="mean")
    return nn.ViT(config, patch_size=2, image_size=8)


old, new = digits_task((0, 1, 2, 3, 4), seed=0), digits_task((5, 6, 7, 8, 9), seed=0)
mt.manual_seed(0)
backbone = vit()
fit(backbone, old.x_train, old.y_train, steps=200, batch_size=64, lr=3e-3, warmup_steps=20, progress=False)
print(f"backbone on digits 0-4: test accuracy {evaluate(backbone, old.x_test, old.y_test):.3f}")


def finetune(gate=None, head_only=False):
    """Fine-tune on 5-9 once per seed: a new head, LoRA on every projection (gated by ``gate`` if given).
    Returns ``[(model, FitResult, test accuracy)]``, one per seed."""
    runs = []
    for seed in SEEDS:
        mt.manual_seed(seed)
        model = vit()
        model.load_state_dict(backbone.state_dict())
        model.head = nn.Linear(32, 5)  # digits 5-9 are new classes
        if head_only:
            model.requires_grad_(False)
            model.head.requires_grad_(True)
        else:
            config = LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"],
                                modules_to_save=["head"])
            model = get_peft_model(model, config, gate=gate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # fit keeps the same message in result.notes
            result = fit(model, new.x_train, new.y_train, steps=STEPS, batch_size=64, lr=1e-2, seed=seed,
                         progress=False)
        runs.append((model, result, evaluate(model, new.x_test, new.y_test)))
    return runs


def accuracy(runs):
    """Mean test accuracy over the seeds."""
    return float(np.mean([acc for _, _, acc in runs]))


def report(title, runs):
    model, result, _ = runs[0]
    print(f"\n{title}: test accuracy {accuracy(runs):.3f} (per seed: {[round(a, 3) for *_, a in runs]})")
    print(f"  seed {SEEDS[0]}, after training:")
    for name, s in model.gate_stats().items():
        print(f"  {name:22s} tau={s['tau']:.3f}  density={s['density']:.2f}  mean r={s['mean_r']:.3f}"
              f"  dead={s['dead']!s:5}  stuck={s['stuck']}")
    for note in result.notes:
        print("  fit warned:", note[:100], "...")


head, dense = finetune(head_only=True), finetune()
print(f"head only: {accuracy(head):.3f}   dense LoRA: {accuracy(dense):.3f}   "
      f"({len(new.y_test)} test images; one image = {1 / len(new.y_test):.4f})")
assert accuracy(dense) >= accuracy(head) + 0.15  # the updates matter on this task

# %% [markdown]
# ## 1. A dead layer
#
# A fast threshold: `tau_lr = 0.3`, thirty times LoRA's learning rate. At step 0 every `r`
# is 0 and every gate is open (ties open). The regulariser pulls `tau` up at once, and
# nothing else pulls on it yet (with `d = 0` the task's gradient on `tau` is 0). AdamW
# normalises each step, so `tau` climbs by about `tau_lr` per step however weak that pull is,
# while `r` grows only as fast as `B` does. Within a few steps `tau > r` at every token:
# every gate closes, `S = 0`, and the update's direct gradient `S_i g_i` is gone.

# %%
dead = finetune(GateConfig(sparsity_weight=0.3, tau_lr=0.3, temperature=0.2))
report("1. sparsity_weight=0.3, tau_lr=0.3: dead layers", dead)
history = dead[0][1].history
print("  step  density  largest tau")
for h in history[:6]:
    print(f"  {h['step']:4d}  {h['density']:7.3f}  {max(h['tau']):11.3f}")
for model, result, _ in dead:
    assert min(h["density"] for h in result.history[:6]) == 0.0  # every gate of every layer closed
    assert any(s["dead"] for s in model.gate_stats().values())
    assert np.mean([s["density"] for s in model.gate_stats().values()]) < 0.2
assert accuracy(dead) <= accuracy(dense) - (0.10 if QUICK else 0.12)

# %% [markdown]
# Some dead layers are flagged `stuck` as well: with `tau` far above every `r`, `phi'` is about
# 0 at every token, so the threshold has stopped moving too. A few layers are not dead at the
# end: they reopened at a few tokens, through the path through `r` (lesson 5), too late.
#
# Is the update really cut off? Compare the gradient that `lora_B` of a dead layer receives on
# a fresh batch with the one it would receive if its gates were open (`tau = 0`, just for
# this measurement). Closed, only the path through `r` is left, scaled by `phi'(r - tau)`,
# which is tiny once `tau` is far above `r`.

# %%
def b_grad_norms(model):
    model.zero_grad()
    F.cross_entropy(model(new.x_train[:64]), new.y_train[:64]).backward()
    return {name: float(np.linalg.norm(layer.lora_B.weight.grad)) for name, layer in model.peft_layers()}


model = dead[0][0]
dead_names = [name for name, s in model.gate_stats().items() if s["dead"]]
closed = b_grad_norms(model)
saved = {name: gate.tau.data for name, gate in model.gates()}
for _, gate in model.gates():
    gate.tau.data = np.zeros_like(gate.tau.data)  # every gate open
opened = b_grad_norms(model)
for name, gate in model.gates():
    gate.tau.data = saved[name]
for name in dead_names:
    print(f"  {name:22s} |dL/dB| closed {closed[name]:.2e}, opened {opened[name]:.2e}")
assert all(closed[name] < 0.01 * opened[name] for name in dead_names)

# %% [markdown]
# ## 2. A stuck threshold
#
# Now a narrow rectangular surrogate, `phi'(z) = 1[|z| <= T] / (2T)` with `T = 0.005`, and a
# slow threshold (`tau_lr = 0.001`). At step 0, `r = tau = 0` is inside the band, so the
# regulariser nudges `tau` up by 0.001. But `r` grows faster: after a step or two every
# token's `r` is more than `T` above `tau`, and `phi'` is exactly 0 at every token. From then
# on `dL/dtau` is exactly 0, from the task and from the regulariser alike: `tau` stays near
# 0.006 and every gate stays open. Accuracy is not harmed, but the gate has stopped learning
# which updates to skip, although `sparsity_weight` asks for fewer.

# %%
stuck = finetune(GateConfig(surrogate="rect", temperature=0.005, sparsity_weight=0.1, tau_lr=0.001))
report("2. surrogate='rect', temperature=0.005: stuck thresholds", stuck)
for model, _, _ in stuck:
    model.zero_grad()
    (F.cross_entropy(model(new.x_train[:64]), new.y_train[:64]) + model.sparsity_loss()).backward()
    largest = max(abs(float(t.grad)) for t in model.thresholds())
    assert largest == 0.0 and all(s["stuck"] for s in model.gate_stats().values())
    assert min(s["density"] for s in model.gate_stats().values()) == 1.0
print(f"  largest |dL/dtau| on a fresh batch, every seed: {largest}")
assert abs(accuracy(stuck) - accuracy(dense)) <= 0.03

# %% [markdown]
# ## 3. The cure for dead layers: a warm-up
#
# The settings of 1, but for the first half of training the thresholds are frozen (at 0: every
# gate open) and the regulariser is off (`warmup_steps`). The updates grow first. When `tau`
# starts to move, `r` is far from 0, and the task's own gradient on `tau` pushes back wherever
# an update helps: the gates now close only the updates the task can spare.

# %%
warm = finetune(GateConfig(sparsity_weight=0.3, tau_lr=0.3, temperature=0.2, warmup_steps=STEPS // 2))
report(f"3. as 1, with warmup_steps={STEPS // 2}", warm)
for model, result, _ in warm:
    assert all(h["density"] == 1.0 for h in result.history[:STEPS // 2])  # open during the warm-up
    assert 0.2 <= np.mean([s["density"] for s in model.gate_stats().values()]) <= 0.8
assert accuracy(warm) >= accuracy(dead) + (0.10 if QUICK else 0.12)
assert accuracy(warm) >= accuracy(dense) - (0.06 if QUICK else 0.05)

# %% [markdown]
# A layer that closes *after* the warm-up (in seed 0, `q_proj`; `fit` warns then) is not the same
# failure as a dead one: its update grew first, and the accuracy says the task could spare it.

# %% [markdown]
# Density and the largest `tau` over training (seed 0), for the three gated runs (`fit` records
# `tau` after each step's update):

# %%
runs = {"1. dead": dead[0][1], "2. stuck": stuck[0][1], "3. warm-up": warm[0][1]}
print("step  " + "".join(f"{name:>20s}" for name in runs))
print("      " + f"{'density':>10s}{'max tau':>10s}" * len(runs))
for step in (0, 1, 2, 5, 10, 30, 59, 60, 61, 65, 80, 100, 119):
    print(f"{step:4d}  " + "".join(f"{r.history[step]['density']:10.2f}{max(r.history[step]['tau']):10.3f}"
                                   for r in runs.values()))
if plt is not None:
    fig, (ax_d, ax_t) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, r in runs.items():
        line = ax_d.plot([h["density"] for h in r.history], label=name)[0]
        ax_t.plot([max(h["tau"]) for h in r.history], color=line.get_color(), label=name)
    for ax in (ax_d, ax_t):
        ax.axvline(STEPS // 2, color="gray", linestyle=":", linewidth=1)
    ax_d.set(xlabel="step", ylabel="density (training batch)", ylim=(-0.02, 1.02), title="density")
    ax_t.set(xlabel="step", ylabel="largest tau", title="threshold (dotted: the warm-up ends)")
    ax_d.legend(fontsize=8)
    fig.tight_layout()
    picture(fig, "06_density_and_tau.png")

# %% [markdown]
# ## What you saw
#
# | run | what the gates did | test accuracy |
# |---|---|---|
# | head only | no update at all | the floor |
# | dense LoRA | every update applied | the ceiling |
# | 1. dead | `tau` outran `r`: every gate closed within a few steps, before the updates grew | far below dense |
# | 2. stuck | `phi' = 0` at every token: `tau` frozen near 0, every gate open | as dense |
# | 3. warm-up | the updates grew first; then the gates closed about half of them | near dense |
#
# `gate_stats()` flags both failures (`dead`, `stuck`), and `fit` warns once when either
# appears. The margins asserted (dense LoRA at least 0.15 above the head alone; the dead run
# at least 0.12 below dense and the warm-up run at least 0.12 above it, 0.10 in the quick run
# of seed 0 alone) hold for each of seeds 0-4, on the validation split and on the test split.
# A dead layer is not always dead for good: some reopen at a few tokens later, through the
# path through `r`, but they lose the steps in which the update should have grown.
#
# Next, lesson 7 asks whether a gate that works selects *tokens*, or only layers.
