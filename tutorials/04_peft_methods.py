# %% [markdown]
# # Lesson 4: parameter-efficient fine-tuning
#
# Fine-tuning every weight of a pretrained model is expensive: a gradient and two AdamW
# moments per weight, and a full copy of the model per task. Parameter-efficient
# fine-tuning (PEFT) **freezes** the model and trains a small **update** next to it. This
# lesson takes the three methods the token gate is applied to, with Hugging Face `peft`'s
# names and API:
#
# 1. freezing, and what `get_peft_model` leaves trainable;
# 2. LoRA (Hu et al. 2021): a low-rank update `scaling * B A`, its scaling and rsLoRA's;
# 3. DoRA (Liu et al. 2024): a learned magnitude per row and a LoRA-updated direction;
# 4. bottleneck adapters (Houlsby et al. 2019);
# 5. parameter counts, by hand;
# 6. merge and unmerge, and why a token-gated layer cannot merge.
#
# Everything runs in float64 so that "equal" can mean equal to rounding. Run it as
# `python tutorials/04_peft_methods.py`, or open it as a notebook.

# %%
import numpy as np

import minitspeft as mt
from minitspeft import nn
from minitspeft.peft import AdapterConfig, GateConfig, LoraConfig, LoraLinear, get_peft_model

np.set_printoptions(precision=4, suppress=True)


def model():
    """A small text classifier in float64 (2 blocks, n_embd 32, 2 heads), the same weights every time."""
    mt.manual_seed(0)
    config = nn.TransformerConfig(vocab_size=16, block_size=8, n_layer=2, n_head=2, n_embd=32, n_classes=3)
    return nn.Transformer(config, dtype=np.float64)


ids = np.random.default_rng(0).integers(0, 16, size=(4, 8))  # (B, T) token ids
base_logits = model()(ids).data  # (4, 3)

# %% [markdown]
# ## 1. Freezing
#
# `get_peft_model(model, config)` wraps the target layers in place and freezes every
# parameter of the model; only the new update weights train. A frozen parameter gets no
# gradient at all (its `.grad` stays `None`), so it costs no gradient work or optimiser state.
# (A new task's new head is listed in `modules_to_save=["head"]`: it then trains too.)

# %%
lora = get_peft_model(model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
lora.print_trainable_parameters()
lora(ids).sum().backward()
trainable = [name for name, p in lora.named_parameters() if p.requires_grad]
print(len(trainable), "trainable tensors, e.g.", trainable[:2])
assert all(".lora_A." in n or ".lora_B." in n for n in trainable) and len(trainable) == 2 * 2 * 2
assert all(p.grad is None for p in lora.parameters() if not p.requires_grad)

# %% [markdown]
# ## 2. LoRA: a low-rank update
#
# A target `Linear` with frozen weight `W0 (out, in)` becomes `h = W0 x + bias + scaling * B (A x)`
# with `A (r, in)` and `B (out, r)`. The update `scaling * B A` is an `(out, in)` matrix of
# rank at most `r`, stored in `r (in + out)` numbers instead of `in * out`. `B` starts at 0,
# so the wrapped model starts as the base model, **exactly**.

# %%
q = lora.base_model.blocks[0].attn.q_proj  # a LoraLinear
print(q)
print("A", q.lora_A.weight.shape, " B", q.lora_B.weight.shape, " scaling", q.scaling)
assert np.array_equal(lora(ids).data, base_logits)  # B = 0: nothing changed yet
q.lora_B.weight.data = np.random.default_rng(1).normal(size=q.lora_B.weight.shape)  # as if trained
delta = q.delta_weight()  # scaling * B @ A, (out, in)
print("update", delta.shape, "rank", np.linalg.matrix_rank(delta))
assert delta.shape == (32, 32) and np.linalg.matrix_rank(delta) == 4
x = mt.Tensor(np.random.default_rng(2).normal(size=(5, 32)))
assert np.allclose(q(x).data, q.base_layer(x).data + x.data @ delta.T, rtol=0, atol=1e-12)

# %% [markdown]
# **Scaling.** LoRA multiplies the update by `scaling = lora_alpha / r`. rsLoRA
# (Kalajdzievski 2023, `use_rslora=True`) uses `lora_alpha / sqrt(r)` instead. Why: `B A x` is
# a sum of `r` terms, so with entries of a fixed size its norm grows like `sqrt(r)`. Divided
# by `r`, the update shrinks like `1 / sqrt(r)` as the rank grows (a larger rank then learns
# more slowly); divided by `sqrt(r)`, its size does not depend on `r`. Measured with random
# `A` and `B` of fixed entry size, on 256 random inputs:

# %%
rng = np.random.default_rng(3)
xs = rng.normal(size=(256, 64))
print("   r   ||update x|| / ||x||:  lora_alpha / r   lora_alpha / sqrt(r)")
size = {}
for r in (2, 8, 32, 128):
    A, B = rng.normal(size=(r, 64)) / 8, rng.normal(size=(64, r)) / 8  # entries of a fixed size
    ratio = np.linalg.norm(xs @ A.T @ B.T, axis=1).mean() / np.linalg.norm(xs, axis=1).mean()
    size[r] = (LoraConfig(r=r, lora_alpha=16).scaling * ratio, LoraConfig(r=r, lora_alpha=16, use_rslora=True).scaling * ratio)
    print(f"{r:4d}   {size[r][0]:31.3f}   {size[r][1]:20.3f}")
assert 5 < size[2][0] / size[128][0] < 12  # sqrt(128 / 2) = 8
assert 0.75 < size[2][1] / size[128][1] < 1.33

# %% [markdown]
# ## 3. DoRA: magnitude and direction
#
# DoRA writes the adapted weight as a length times a direction, row by row. With
# `W' = W0 + scaling B A` and `||W'||_row` the norm of each output row (shape `(out,)`):
#
# ```
# h = m / ||W'||_row * (W' x) + bias         m: a learned magnitude per row, (out,)
# ```
#
# `m` starts at `||W0||_row`, so the layer starts as the base layer. LoRA's `B A` can then
# only turn the rows (the direction); their lengths are exactly `m`, whatever `B` is. As the
# DoRA paper recommends, `||W'||_row` is treated as a constant in the backward pass.

# %%
dora = get_peft_model(model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True))
layer = dora.base_model.blocks[0].attn.q_proj
m = layer.lora_magnitude_vector
print("m", m.shape, "starts at ||W0||_row:", np.allclose(m.data, np.linalg.norm(layer.base_layer.weight.data, axis=1)))
assert np.allclose(dora(ids).data, base_logits, rtol=0, atol=1e-12)
layer.lora_B.weight.data = np.random.default_rng(1).normal(size=layer.lora_B.weight.shape)  # turn the rows
W_prime = layer.base_layer.weight.data + layer.delta_weight()
effective = (m.data / np.linalg.norm(W_prime, axis=1))[:, None] * W_prime  # what the layer applies
x = mt.Tensor(np.random.default_rng(2).normal(size=(5, 32)))
assert np.allclose(layer(x).data, x.data @ effective.T + layer.base_layer.bias.data, rtol=0, atol=1e-12)
assert np.allclose(np.linalg.norm(effective, axis=1), m.data, rtol=1e-12)  # lengths: exactly m
turn = np.degrees(np.arccos(np.sum(effective * layer.base_layer.weight.data, axis=1) / m.data ** 2))
print(f"after changing B: row lengths still m; rows turned by {turn.min():.1f} to {turn.max():.1f} degrees")

# %% [markdown]
# ## 4. Bottleneck adapters
#
# An adapter sits after a whole sub-layer (attention or MLP) with output `h (B, T, C)`:
# `out = h + up(act(down(h)))`, with `down: C -> bottleneck` and `up: bottleneck -> C`. `up`
# starts at zero, so the adapter starts as the identity. Houlsby placement puts one after
# the attention and one after the MLP of every block. Unlike LoRA, the update is not linear
# in `x` (there is an activation in the middle).

# %%
adapters = get_peft_model(model(), AdapterConfig(bottleneck=8, placement="houlsby"))
print(adapters.base_model.blocks[0].attn)
assert np.array_equal(adapters(ids).data, base_logits)

# %% [markdown]
# ## 5. Parameter counts, by hand
#
# For a target `Linear(in, out)`: LoRA trains `r (in + out)`; DoRA adds `out` (the magnitude);
# an adapter on `C` channels trains `C b + b` (down) and `b C + C` (up); a gate adds one `tau`
# per layer. All projections here are `32 -> 32`; `fc1` is `32 -> 128`, `fc2` `128 -> 32`.

# %%
C, r, b = 32, 4, 8
qv = 2 * 2 * r * (C + C)  # q_proj and v_proj of 2 blocks
all_linear = 2 * (4 * r * (C + C) + r * (C + 4 * C) + r * (4 * C + C))  # all six projections of 2 blocks
by_hand = {"lora q,v": qv, "dora q,v": qv + 2 * 2 * C, "adapters": 2 * 2 * (C * b + b + b * C + C),
           "lora all-linear": all_linear, "ts-lora all-linear": all_linear + 2 * 6}
wrapped = {
    "lora q,v": lora, "dora q,v": dora, "adapters": adapters,
    "lora all-linear": get_peft_model(model(), LoraConfig(r=r, target_modules="all-linear")),
    "ts-lora all-linear": get_peft_model(model(), LoraConfig(r=r, target_modules="all-linear"), gate=GateConfig()),
}
total = model().num_parameters()
print(f"the model: {total:,} parameters")
for name, pm in wrapped.items():
    counted = pm.num_parameters(trainable_only=True)
    print(f"{name:20s} by hand {by_hand[name]:6,}   counted {counted:6,}   ({100 * counted / total:.1f}% of the model)")
    assert by_hand[name] == counted

# %% [markdown]
# ## 6. Merge and unmerge
#
# LoRA's update is linear, so after training it can be folded into the weight once:
# `W0 <- W0 + scaling B A` (for DoRA, `m / ||W'||_row * W'`). The merged model computes the same
# outputs with no extra cost per token. `unmerge_adapter()` restores the saved `W0` exactly,
# and merging twice is merging once.

# %%
for name, pm in (("lora", lora), ("dora", dora)):
    before = pm(ids).data
    w0 = pm.base_model.blocks[0].attn.q_proj.base_layer.weight.data.copy()
    pm.merge_adapter()
    pm.merge_adapter()
    merged = pm(ids).data
    pm.unmerge_adapter()
    print(f"{name}: merged outputs differ by {np.abs(merged - before).max():.1e}; W0 restored exactly:",
          np.array_equal(pm.base_model.blocks[0].attn.q_proj.base_layer.weight.data, w0))
    assert np.allclose(merged, before, rtol=0, atol=1e-12) and not np.allclose(before, base_logits)
    assert np.array_equal(pm.base_model.blocks[0].attn.q_proj.base_layer.weight.data, w0)

# %% [markdown]
# **Why a token gate cannot merge.** A gated layer applies the update to some tokens and not
# to others: token `i` gets `W0 x_i` or `(W0 + scaling B A) x_i`, decided by its own `r_i`.
# No single matrix does both. The best one, fitted by least squares over the tokens, still
# misses; for the ungated layer it fits to rounding.

# %%
rng = np.random.default_rng(4)
base = nn.Linear(16, 16, dtype=np.float64)
gated = LoraLinear(base, LoraConfig(r=4), gate=GateConfig())
gated.lora_B.weight.data = rng.normal(size=(16, 4)) * 0.3  # as if trained
xs = mt.Tensor(rng.normal(size=(200, 16)))  # 200 tokens
gated(xs)
gated.gate.tau.data = np.median(gated.gate.last_score)  # a threshold that opens about half of them
out = gated(xs).data
print(f"gate open on {int(gated.gate.last_S.data.sum())} of 200 tokens")
assert 50 < gated.gate.last_S.data.sum() < 150
X1 = np.hstack([xs.data, np.ones((200, 1))])  # fit a weight and a bias
for label, target in (("ungated", xs.data @ (base.weight.data + gated.delta_weight()).T + base.bias.data),
                      ("gated", out)):
    fit = np.linalg.lstsq(X1, target, rcond=None)[0]
    miss = np.linalg.norm(X1 @ fit - target) / np.linalg.norm(target)
    print(f"{label:8s} best single matrix misses by {miss:.1e} (relative)")
    assert (miss < 1e-12) if label == "ungated" else (miss > 1e-2)
ts = wrapped["ts-lora all-linear"]
try:
    ts.merge_adapter()
except RuntimeError as exc:
    print("merge_adapter on a gated model:", exc)
else:
    raise AssertionError("a gated model merged")
try:
    adapters.merge_adapter()
except RuntimeError as exc:
    print("merge_adapter on adapters:", exc)

# %% [markdown]
# ## What you saw
#
# - PEFT freezes the model (`.grad` stays `None`) and trains a small update; the wrapped
#   model starts exactly as the base model.
# - LoRA's update has rank `r`; `lora_alpha / r` shrinks it like `1 / sqrt(r)` at a fixed entry
#   size, rsLoRA's `lora_alpha / sqrt(r)` does not.
# - DoRA's rows have length exactly `m`; `B A` turns them.
# - The counts: `r (in + out)` per LoRA layer, `+ out` for DoRA, `2 C b + b + C` per adapter,
#   one `tau` per gated layer.
# - LoRA and DoRA merge (to 1e-12) and unmerge (exactly); a token-gated layer cannot, since
#   no single matrix reproduces it.
#
# Next, lesson 5 opens the gate itself: how a gradient gets through a 0/1 step.
