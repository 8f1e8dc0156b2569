# %% [markdown]
# # Lesson 3: a transformer, with every shape written
#
# The models the token gate will act on are small transformers: a text model (an encoder
# classifier or a causal language model) and a vision transformer (ViT). This lesson opens
# one up, with the shape of every array written next to it:
#
# 1. the path of a batch through the model, and its parameter count by hand;
# 2. multi-head self-attention written out by hand, equal to `nn.MultiHeadAttention`;
# 3. the causal mask: a token never sees the future;
# 4. LayerNorm and its backward pass, derived and checked;
# 5. training the causal language model on a toy sequence;
# 6. training the ViT on handwritten digits.
#
# Names follow minGPT and PyTorch: `B` batch, `T` tokens, `C = n_embd` channels,
# `n_head` heads of `head_dim = C / n_head` channels. Run it as
# `python tutorials/03_transformer_shapes.py` (`MINITSPEFT_QUICK=1` for a faster, smaller
# run; `--out DIR` saves the pictures), or open it as a notebook.

# %%
import argparse
import math
import os
import sys

import numpy as np

import minitspeft as mt
from minitspeft import functional as F
from minitspeft import nn
from minitspeft.data import digits_task
from minitspeft.testing import check_grad
from minitspeft.train import evaluate, fit
from minitspeft.viz import heatmap

QUICK = os.environ.get("MINITSPEFT_QUICK", "") not in ("", "0")
NOTEBOOK = "ipykernel" in sys.modules
parser = argparse.ArgumentParser(description="Lesson 3: a transformer, with every shape written")
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


# %% [markdown]
# ## 1. The path of a batch, and the parameter count
#
# A causal language model over a vocabulary of 7 tokens, 12 positions, `n_embd = 32`,
# 2 heads, 1 block (the `"nano"` preset). A batch of token ids `(B, T)` becomes:
#
# ```
# tok_emb(ids) + pos_emb[:T]     (B, T, C)     one learned vector per token id and per position
# blocks: x + attn(ln1(x))       (B, T, C)     pre-LayerNorm residual block...
#         x + mlp(ln2(x))        (B, T, C)     ...MLP of width 4C
# ln_f                           (B, T, C)
# head                           (B, T, vocab) next-token logits at every position
# ```
#
# Counting by hand (a `Linear(i, o)` has `i * o` weights and `o` biases; a LayerNorm has
# `2C`): embeddings `V C + T_max C`; per block two LayerNorms, four `C x C` projections
# and the MLP's `C x 4C` and `4C x C`; then `ln_f` and the head.

# %%
mt.manual_seed(0)
cfg = nn.TransformerConfig.preset("nano", vocab_size=7, block_size=12, causal=True)
lm = nn.Transformer(cfg)
V, Tmax, C, H = cfg.vocab_size, cfg.block_size, cfg.n_embd, cfg.n_head
per_block = 2 * (2 * C) + 4 * (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
by_hand = V * C + Tmax * C + cfg.n_layer * per_block + 2 * C + (C * V + V)
print(f"parameters by hand {by_hand:,}, counted by the model {lm.num_parameters():,}")
assert by_hand == lm.num_parameters()

ids = np.array([[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 0, 1]])  # (B, T) = (2, 6)
x = lm.tok_emb(ids) + lm.pos_emb.weight[:ids.shape[1]]
print("ids", ids.shape, "-> embedded", x.shape, "-> logits", lm(ids).shape)
assert x.shape == (2, 6, C) and lm(ids).shape == (2, 6, V)

# %% [markdown]
# ## 2. Multi-head self-attention by hand
#
# Every token asks a question (query `q`), offers a label (key `k`) and a content (value `v`),
# each a linear map of its `C` channels. With `n_head` heads, the channels are split into
# `n_head` groups of `head_dim`, and each head attends on its own:
#
# ```
# q, k, v = q_proj(x), k_proj(x), v_proj(x)                (B, T, C)
# split:    reshape (B, T, n_head, head_dim), transpose   (B, n_head, T, head_dim)
# scores  = q @ k^T / sqrt(head_dim)                      (B, n_head, T, T)   query t, key s
# weights = softmax(scores) over s                        (B, n_head, T, T)   each row sums to 1
# y       = weights @ v                                   (B, n_head, T, head_dim)
# merge:    transpose, reshape                            (B, T, C)
# out     = o_proj(y)                                     (B, T, C)
# ```
#
# Dividing by `sqrt(head_dim)` keeps the scores' spread independent of the width. Written
# out in float64 it must equal the module, to rounding.

# %%
def attention_by_hand(attn, x, causal):
    """Self-attention of ``attn`` (an ``nn.MultiHeadAttention``) on ``x`` ``(B, T, C)``; returns (out, weights)."""
    B, T, C = x.shape
    hd = C // attn.n_head

    def split(t):  # (B, T, C) -> (B, n_head, T, head_dim)
        return t.reshape(B, T, attn.n_head, hd).transpose(0, 2, 1, 3)

    q, k, v = split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
    scores = (q @ k.swapaxes(-1, -2)) * (1 / math.sqrt(hd))  # (B, n_head, T, T)
    if causal:  # query t may look at keys s <= t only
        future = np.triu(np.ones((T, T), dtype=bool), k=1)  # True above the diagonal
        scores = mt.where(future, float("-inf"), scores)
    weights = F.softmax(scores, axis=-1)  # (B, n_head, T, T)
    y = (weights @ v).transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C)
    return attn.o_proj(y), weights


mt.manual_seed(1)
attn = nn.MultiHeadAttention(n_embd=8, n_head=2, dtype=np.float64)
xs = mt.Tensor(np.random.default_rng(0).normal(size=(2, 5, 8)))  # (B, T, C) = (2, 5, 8)
mine, weights = attention_by_hand(attn, xs, causal=False)
print("out", mine.shape, "weights", weights.shape)
assert weights.shape == (2, 2, 5, 5)
assert np.allclose(mine.data, attn(xs).data, rtol=0, atol=1e-13)
assert np.allclose(weights.data.sum(axis=-1), 1, rtol=0, atol=1e-14)

# %% [markdown]
# ## 3. The causal mask
#
# A language model predicts token `t + 1` from tokens `<= t`, so it must not look ahead. The
# mask sets every score above the diagonal to `-inf` before the softmax, and `e^-inf = 0`:
# the future gets weight **exactly** 0. So changing a later token cannot change an earlier
# output, not even in the last bit.

# %%
causal = nn.MultiHeadAttention(n_embd=8, n_head=2, causal=True, dtype=np.float64)
causal.load_state_dict(attn.state_dict())  # the same weights, now masked
mine, weights = attention_by_hand(causal, xs, causal=True)
assert np.allclose(mine.data, causal(xs).data, rtol=0, atol=1e-13)
print("head 0, sequence 0: weights (query t down, key s across)")
print(np.round(weights.data[0, 0], 3))
assert np.all(weights.data[..., np.triu_indices(5, k=1)[0], np.triu_indices(5, k=1)[1]] == 0)
changed = xs.data.copy()
changed[:, 3:] += 10.0  # change tokens 3 and 4 only
before, after = causal(xs).data, causal(mt.Tensor(changed)).data
assert np.array_equal(before[:, :3], after[:, :3]) and not np.allclose(before[:, 3:], after[:, 3:])
print("outputs at tokens 0-2 unchanged, bit for bit, after tokens 3-4 changed")

# %% [markdown]
# ## 4. LayerNorm, forward and backward
#
# LayerNorm normalises each token's `C` channels: with `mu` and `var` their mean and
# (population) variance, `s = sqrt(var + eps)` and `xhat = (x - mu) / s`, it returns
# `xhat * weight + bias`. Its backward, with `gh = g * weight`, is (derived here):
#
# ```
# d xhat_j / d x_k = (delta_jk - 1/C - xhat_j xhat_k / C) / s
# dx_k = sum_j gh_j d xhat_j / d x_k = (gh_k - mean(gh) - xhat_k mean(gh * xhat)) / s
# dweight = sum over tokens of g * xhat,   dbias = sum over tokens of g
# ```
#
# Two things follow, and the numbers must show them. Shifting a token's channels by a
# constant does not change `xhat` at all, so `dx` sums to 0 over the channels. Scaling them
# changes `xhat` only through `eps`, so `dx` is orthogonal to `xhat` up to a term of relative
# size `eps / (var + eps)` (about 1e-5 here; exactly orthogonal with `eps = 0`).

# %%
rng = np.random.default_rng(2)
xv, w, bv = rng.normal(size=(4, 6)), rng.normal(size=6), rng.normal(size=6)  # 4 tokens, C = 6
g = rng.normal(size=(4, 6))
xt, wt, bt = (mt.Tensor(a, requires_grad=True) for a in (xv, w, bv))
F.layer_norm(xt, wt, bt).backward(g)

mu, s = xv.mean(-1, keepdims=True), np.sqrt(xv.var(-1, keepdims=True) + 1e-5)
xhat = (xv - mu) / s
gh = g * w
dx = (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True)) / s
print("max |dx by hand - engine|:", np.abs(dx - xt.grad).max())
assert np.allclose(dx, xt.grad, rtol=0, atol=1e-12)
assert np.allclose(wt.grad, (g * xhat).sum(0), rtol=0, atol=1e-12) and np.allclose(bt.grad, g.sum(0))
cosine = (dx * xhat).sum(-1) / (np.linalg.norm(dx, axis=-1) * np.linalg.norm(xhat, axis=-1))
print("per token: sum of dx", np.abs(dx.sum(-1)).max(), "| cosine(dx, xhat)", np.abs(cosine).max())
assert np.allclose(dx.sum(-1), 0, rtol=0, atol=1e-12) and np.abs(cosine).max() < 1e-4
check_grad(F.layer_norm, xv, w, bv)
print("check_grad agrees")

# %% [markdown]
# ## 5. Train the causal language model
#
# The toy sequence is `0 1 2 3 4 5 6 0 1 ...`: every next token is determined by the current
# one. Seven training sequences (each start) of 12 inputs and 12 targets, the inputs shifted
# by one. `fit` trains with AdamW; the loss is the cross-entropy of every next token. Then
# greedy generation (`top_k=1`) from `3` must continue the cycle.

# %%
mt.manual_seed(0)
lm = nn.Transformer(cfg)
seqs = (np.arange(7)[:, None] + np.arange(13)) % 7  # (7, 13)
steps = 60 if QUICK else 150
history = fit(lm, seqs[:, :-1], seqs[:, 1:], steps=steps, batch_size=7, lr=1e-2, progress=False).history
generated = lm.generate(np.array([[3]]), max_new_tokens=8, top_k=1)
print(f"loss: step 0 {history[0]['loss']:.3f} (ln 7 = {np.log(7):.3f}), last {history[-1]['loss']:.4f}")
print("generated from [3]:", generated)
assert abs(history[0]["loss"] - np.log(7)) < 0.5  # it starts as a guess among 7 tokens
assert history[-1]["loss"] < (0.05 if QUICK else 0.01)
assert generated.tolist() == [[3, 4, 5, 6, 0, 1, 2, 3, 4]]

# %% [markdown]
# Which earlier token does each position look at? Rerun the first block's attention by hand
# on the trained model (the same code as section 2) and draw head 0. The upper triangle is
# exactly 0: the mask. Below it, the pattern is whatever training found useful; the cycle
# needs only the current token, which the residual stream carries anyway, so do not read
# too much into it.

# %%
ids = seqs[:1, :-1]  # (1, 12)
x = lm.tok_emb(ids) + lm.pos_emb.weight[:12]
_, weights = attention_by_hand(lm.blocks[0].attn, lm.blocks[0].ln1(x), causal=True)
att = weights.data[0, 0]  # (T, T)
print(heatmap(att[:8, :8], "head 0, first 8 positions (query down, key across)"))
assert np.all(np.triu(att, k=1) == 0)
if plt is not None:
    fig, ax = plt.subplots(figsize=(4, 3.5))
    im = ax.imshow(att, cmap="viridis", vmin=0, vmax=1)
    ax.set(xlabel="key position s", ylabel="query position t", title="trained LM, block 0, head 0")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    picture(fig, "03_causal_attention.png")

# %% [markdown]
# ## 6. Train the ViT on handwritten digits
#
# The digits are 8x8 grey images (the UCI set bundled with the package). The ViT cuts each
# into 2x2 patches, so 16 patches of 4 pixels, embeds each as a token, and puts a learned
# CLS token in front; the classifier reads the CLS token's final state:
#
# ```
# images (B, 8, 8) -> patches (B, 16, 4) -> patch_emb (B, 16, C) -> [CLS] + patches (B, 17, C)
# -> + pos_emb -> blocks -> ln_f -> state of token 0 (B, C) -> head (B, 10)
# ```

# %%
digits = digits_task(range(10), seed=0)
mt.manual_seed(0)
vit = nn.ViT(nn.TransformerConfig(n_layer=1, n_head=2, n_embd=32, n_classes=10, pooling="cls"),
             patch_size=2, image_size=8)
batch = digits.x_train[:3]
print("images", batch.shape, "-> patches", vit.patchify(batch).shape, "-> tokens", vit.features(batch).shape,
      "-> logits", vit(batch).shape)
assert vit.patchify(batch).shape == (3, 16, 4) and vit.features(batch).shape == (3, 17, 32)
steps = 250 if QUICK else 600
vit_history = fit(vit, digits.x_train, digits.y_train, steps=steps, batch_size=64, lr=3e-3,
                  warmup_steps=steps // 10, progress=False).history
accuracy = evaluate(vit, digits.x_test, digits.y_test)
print(f"{len(digits.y_train)} training images, {steps} steps: test accuracy {accuracy:.3f} "
      f"on {len(digits.y_test)} images (chance: 0.1)")
assert accuracy >= (0.75 if QUICK else 0.85)  # seeds 0-4 gave 0.81-0.89 (quick), 0.89-0.95

# %% [markdown]
# The loss per step (each a batch of 64), smoothed over 20 steps:

# %%
losses = np.array([h["loss"] for h in vit_history])
smooth = np.convolve(losses, np.ones(20) / 20, mode="valid")
for step in range(0, len(smooth), max(1, len(smooth) // 8)):
    print(f"step {step:4d}  loss {smooth[step]:.3f}  " + "#" * int(20 * smooth[step] / smooth[0]))
assert smooth[-1] < 0.5 * smooth[0]
if plt is not None:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(losses, alpha=0.3, label="per step")
    ax.plot(np.arange(len(smooth)) + 19, smooth, label="mean of 20 steps")
    ax.set(xlabel="step", ylabel="cross-entropy", title="ViT on digits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    picture(fig, "03_vit_loss.png")

# %% [markdown]
# ## What you saw
#
# - Attention is four linear maps, a `(T, T)` table of softmax weights per head, and a
#   reshape at each end; written by hand it equals the module to 1e-13.
# - The causal mask gives the future weight exactly 0, so earlier outputs are unchanged, bit
#   for bit, when later tokens change.
# - LayerNorm's gradient removes the mean and the `xhat` direction; the hand-derived rule
#   equals the engine's to 1e-12.
# - The language model learns the cycle (loss under 0.05, generation `3 4 5 6 0 1 2 3 4`);
#   the ViT reads digits (test accuracy at least 0.85, 0.75 in the quick run; seeds 0-4
#   gave 0.89-0.95 and 0.81-0.89).
#
# Next, lesson 4 freezes such a model and adapts it with LoRA, DoRA and adapters.
