"""Cross-checks against PyTorch: models, optimisers, fused ops and LoRA agree with ``torch`` in float64.

PyTorch is an optional, test-only reference (it is not a dependency of the
package): this whole module is skipped when ``torch`` cannot be imported.

The PyTorch modules below are written here, by hand, to mirror the documented
design (pre-LayerNorm blocks, LayerNorm eps 1e-5, GELU in tanh form, attention
scaled by ``1/sqrt(head_dim)``, ``Linear`` weights stored ``(out, in)``) with
exactly the same parameter names, so that a minitspeft state dict loads into
them with ``strict=True``. Every check prints its largest absolute difference
(run with ``-s`` to see them).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn
TF = torch.nn.functional

import minitspeft as mt
from minitspeft import functional as F
from minitspeft import nn
from minitspeft.optim import SGD, AdamW

# the cross-checks hand NumPy arrays to torch.from_numpy: run them on the NumPy backend only
pytestmark = pytest.mark.skipif(mt.get_backend() != "numpy", reason="torch cross-checks need the NumPy backend")

MODEL_TOL = 1e-8  # logits and gradients of whole models
OPTIM_TOL = 1e-12  # parameters after optimiser steps
OP_TOL = 1e-12  # single fused ops


# --------------------------------------------------------------------------- helpers
def _np(a) -> np.ndarray:
    """A float64 host array from a minitspeft array/Tensor or a torch tensor."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    if isinstance(a, mt.Tensor):
        a = a.data
    return np.asarray(mt.to_numpy(a))


def _t(a, requires_grad: bool = False):
    t = torch.from_numpy(np.array(_np(a), copy=True))
    return t.requires_grad_(requires_grad)


def _check(name: str, ours, ref, tol: float) -> float:
    """Assert ``|ours - ref| <= tol * max(1, max|ref|)`` elementwise; print and return the max abs diff.

    The tolerance is absolute for values of order one and relative to the
    largest reference value otherwise (so large and tiny entries alike are held
    to ``tol`` of the tensor's scale)."""
    a, b = _np(ours), _np(ref)
    assert a.shape == b.shape, f"{name}: shape {a.shape} vs torch {b.shape}"
    assert a.dtype == np.float64 and b.dtype == np.float64, f"{name}: dtypes {a.dtype} / {b.dtype}"
    both_nan = np.isnan(a) & np.isnan(b)
    assert not (np.isnan(a) ^ np.isnan(b)).any(), f"{name}: NaN pattern differs"
    diff = float(np.max(np.abs(np.where(both_nan, 0.0, a - b)), initial=0.0))
    scale = max(1.0, float(np.max(np.abs(np.where(both_nan, 0.0, b)), initial=0.0)))
    print(f"[torch-crosscheck] {name}: max|diff| = {diff:.3e} (scale {scale:.3g})")
    assert diff <= tol * scale, f"{name}: max abs diff {diff:.3e} > {tol:g} * {scale:.3g}"
    return diff


def _perturb(model, seed: int) -> None:
    """Move every parameter off its initial value (LayerNorm weights 1, biases 0, tiny embeddings),
    so that each one's gradient is exercised, keeping float64."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    new = {k: v + 0.2 * rng.standard_normal(v.shape) for k, v in state.items()}
    model.load_state_dict(new)


def _compare_model(label: str, ours, theirs, inputs_ours, inputs_torch, targets, lm: bool) -> None:
    """Load our weights into ``theirs`` (strict), compare logits, then every parameter gradient after CE."""
    state = ours.state_dict()
    assert all(v.dtype == np.float64 for v in state.values())
    missing, unexpected = theirs.load_state_dict({k: _t(v) for k, v in state.items()}, strict=True)
    assert not missing and not unexpected
    assert set(dict(theirs.named_parameters())) == set(state)

    logits = ours(inputs_ours)
    t_logits = theirs(inputs_torch)
    _check(f"{label} logits", logits, t_logits, MODEL_TOL)

    loss = F.cross_entropy(logits, targets)
    if lm:
        V = t_logits.shape[-1]
        t_loss = TF.cross_entropy(t_logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1))
    else:
        t_loss = TF.cross_entropy(t_logits, torch.from_numpy(targets))
    _check(f"{label} loss", loss, t_loss, MODEL_TOL)

    ours.zero_grad()
    loss.backward()
    t_loss.backward()
    t_params = dict(theirs.named_parameters())
    worst = 0.0
    for name, p in ours.named_parameters():
        assert p.grad is not None, f"{label}: no gradient for {name}"
        assert t_params[name].grad is not None, f"{label}: torch has no gradient for {name}"
        a, b = _np(p.grad), _np(t_params[name].grad)
        diff = float(np.max(np.abs(a - b)))
        scale = max(1.0, float(np.max(np.abs(b))))
        assert diff <= MODEL_TOL * scale, f"{label}: gradient of {name} differs by {diff:.3e}"
        worst = max(worst, diff)
    print(f"[torch-crosscheck] {label} grads ({len(t_params)} params): max|diff| = {worst:.3e}")


# --------------------------------------------------------------------------- torch mirrors
class TorchAttention(tnn.Module):
    """Hand-written multi-head self-attention with separate q/k/v/o projections."""

    def __init__(self, n_embd: int, n_head: int, causal: bool):
        super().__init__()
        self.n_head, self.causal = n_head, causal
        self.q_proj = tnn.Linear(n_embd, n_embd)
        self.k_proj = tnn.Linear(n_embd, n_embd)
        self.v_proj = tnn.Linear(n_embd, n_embd)
        self.o_proj = tnn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        hd = C // self.n_head

        def heads(t):
            return t.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, H, T, hd)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
        if self.causal:
            future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
            scores = scores.masked_fill(future, float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class TorchMLP(tnn.Module):
    def __init__(self, n_embd: int, mlp_ratio: int):
        super().__init__()
        self.fc1 = tnn.Linear(n_embd, mlp_ratio * n_embd)
        self.fc2 = tnn.Linear(mlp_ratio * n_embd, n_embd)

    def forward(self, x):
        return self.fc2(TF.gelu(self.fc1(x), approximate="tanh"))


class TorchBlock(tnn.Module):
    def __init__(self, c: nn.TransformerConfig):
        super().__init__()
        self.ln1 = tnn.LayerNorm(c.n_embd, eps=1e-5)
        self.attn = TorchAttention(c.n_embd, c.n_head, c.causal)
        self.ln2 = tnn.LayerNorm(c.n_embd, eps=1e-5)
        self.mlp = TorchMLP(c.n_embd, c.mlp_ratio)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def _pool(x, c: nn.TransformerConfig):
    return x[:, 0] if c.pooling == "cls" else x.mean(dim=1)


class TorchTransformer(tnn.Module):
    """Encoder classifier (``n_classes`` set) or language model (``n_classes=None``)."""

    def __init__(self, c: nn.TransformerConfig):
        super().__init__()
        self.c = c
        self.tok_emb = tnn.Embedding(c.vocab_size, c.n_embd)
        self.pos_emb = tnn.Embedding(c.block_size, c.n_embd)
        self.blocks = tnn.ModuleList([TorchBlock(c) for _ in range(c.n_layer)])
        self.ln_f = tnn.LayerNorm(c.n_embd, eps=1e-5)
        self.head = tnn.Linear(c.n_embd, c.n_classes or c.vocab_size)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb.weight[:T]
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return self.head(x if self.c.n_classes is None else _pool(x, self.c))


class TorchViT(tnn.Module):
    """ViT classifier. Patches come from ``F.unfold`` (row-major patches, each flattened as (C, p, p)),
    an independent route to the ordering minitspeft documents."""

    def __init__(self, c: nn.TransformerConfig, patch_size: int, image_size: int, channels: int):
        super().__init__()
        self.c, self.p, self.channels = c, patch_size, channels
        n_tokens = (image_size // patch_size) ** 2 + 1
        self.patch_emb = tnn.Linear(channels * patch_size * patch_size, c.n_embd)
        self.cls_token = tnn.Parameter(torch.zeros(1, 1, c.n_embd))
        self.pos_emb = tnn.Embedding(n_tokens, c.n_embd)
        self.blocks = tnn.ModuleList([TorchBlock(c) for _ in range(c.n_layer)])
        self.ln_f = tnn.LayerNorm(c.n_embd, eps=1e-5)
        self.head = tnn.Linear(c.n_embd, c.n_classes)

    def forward(self, images):
        if images.dim() == 3:
            images = images.unsqueeze(1)  # (B, 1, H, W)
        B = images.shape[0]
        patches = TF.unfold(images, kernel_size=self.p, stride=self.p).transpose(1, 2)  # (B, L, C*p*p)
        tok = self.patch_emb(patches)
        x = torch.cat([self.cls_token.expand(B, 1, -1), tok], dim=1) + self.pos_emb.weight
        for block in self.blocks:
            x = block(x)
        return self.head(_pool(self.ln_f(x), self.c))


# --------------------------------------------------------------------------- 2. whole models
def _text_case(pooling: str | None, seed: int):
    mt.manual_seed(seed)
    lm = pooling is None
    cfg = nn.TransformerConfig(vocab_size=11, block_size=12, n_layer=2, n_head=4, n_embd=16, mlp_ratio=4,
                               causal=lm, n_classes=None if lm else 5, pooling=pooling or "mean")
    ours = nn.Transformer(cfg, dtype=np.float64)
    _perturb(ours, seed)
    theirs = TorchTransformer(cfg).double()
    rng = np.random.default_rng(seed + 100)
    B, T = 3, 9  # T < block_size: exercises the position-table slice
    idx = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets = rng.integers(0, cfg.vocab_size, size=(B, T)) if lm else rng.integers(0, cfg.n_classes, size=B)
    return ours, theirs, idx, targets


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encoder_classifier_matches_torch(pooling):
    ours, theirs, idx, targets = _text_case(pooling, seed=1 if pooling == "mean" else 2)
    _compare_model(f"encoder[{pooling}]", ours, theirs, idx, torch.from_numpy(idx), targets, lm=False)


def test_causal_lm_matches_torch():
    ours, theirs, idx, targets = _text_case(None, seed=3)
    _compare_model("causal LM", ours, theirs, idx, torch.from_numpy(idx), targets, lm=True)


def test_causal_lm_is_causal_in_torch_mirror_too():
    """Changing the last token changes no earlier logit, in both implementations."""
    ours, theirs, idx, _ = _text_case(None, seed=4)
    theirs.load_state_dict({k: _t(v) for k, v in ours.state_dict().items()})
    idx2 = idx.copy()
    idx2[:, -1] = (idx2[:, -1] + 1) % ours.config.vocab_size
    a, b = _np(ours(idx)), _np(ours(idx2))
    np.testing.assert_array_equal(a[:, :-1], b[:, :-1])
    with torch.no_grad():
        ta, tb = theirs(torch.from_numpy(idx)), theirs(torch.from_numpy(idx2))
    np.testing.assert_array_equal(ta[:, :-1].numpy(), tb[:, :-1].numpy())


@pytest.mark.parametrize("pooling,channels", [("cls", 1), ("mean", 1), ("cls", 3)])
def test_vit_matches_torch(pooling, channels):
    seed = {("cls", 1): 5, ("mean", 1): 6, ("cls", 3): 7}[(pooling, channels)]
    mt.manual_seed(seed)
    cfg = nn.TransformerConfig(n_layer=2, n_head=2, n_embd=16, mlp_ratio=2, n_classes=4, pooling=pooling)
    ours = nn.ViT(cfg, patch_size=2, image_size=8, channels=channels, dtype=np.float64)
    assert ours.cls_token.shape == (1, 1, 16)
    _perturb(ours, seed)
    theirs = TorchViT(cfg, patch_size=2, image_size=8, channels=channels).double()
    rng = np.random.default_rng(seed + 100)
    B = 3
    shape = (B, 8, 8) if channels == 1 else (B, channels, 8, 8)  # (B, 8, 8): one grey channel
    images = rng.standard_normal(shape)
    targets = rng.integers(0, cfg.n_classes, size=B)
    _compare_model(f"ViT[{pooling}, C={channels}]", ours, theirs, images, torch.from_numpy(images), targets,
                   lm=False)


# --------------------------------------------------------------------------- 3. optimisers
def _param_shapes():
    return [(4, 3), (5,), (2, 3, 2), (1,)]


def _run_optimisers(make_ours, make_theirs, label: str, lrs, skip=None, seed: int = 0):
    """Step both optimisers with identical random grads, changing lr through param_groups; compare after each step."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in _param_shapes()]
    ours = [nn.Parameter(v.copy()) for v in init]
    theirs = [torch.from_numpy(v.copy()).requires_grad_(True) for v in init]
    opt, t_opt = make_ours(ours), make_theirs(theirs)
    assert len(opt.param_groups) == len(t_opt.param_groups)
    worst = 0.0
    for step, lr in enumerate(lrs):
        for g, tg in zip(opt.param_groups, t_opt.param_groups, strict=True):
            g["lr"] = tg["lr"] = lr * (1.0 if g is opt.param_groups[0] else 0.5)
        for i, (p, tp) in enumerate(zip(ours, theirs, strict=True)):
            if skip is not None and (step, i) in skip:  # no gradient this step: both must leave it alone
                p.grad, tp.grad = None, None
                continue
            g = rng.standard_normal(p.shape) * 10.0 ** rng.integers(-3, 2)
            p.grad, tp.grad = g.copy(), torch.from_numpy(g.copy())
        opt.step()
        t_opt.step()
        for i, (p, tp) in enumerate(zip(ours, theirs, strict=True)):
            a, b = _np(p), _np(tp)
            diff = float(np.max(np.abs(a - b)))
            assert diff <= OPTIM_TOL * max(1.0, float(np.max(np.abs(b)))), \
                f"{label}: param {i} differs by {diff:.3e} after step {step + 1}"
            worst = max(worst, diff)
    # the parameters really moved (a silent no-op would also "agree")
    moved = max(float(np.max(np.abs(_np(p) - v))) for p, v in zip(ours, init, strict=True))
    assert moved > 1e-3, f"{label}: parameters barely moved ({moved:.2e})"
    print(f"[torch-crosscheck] {label} ({len(lrs)} steps): max|diff| = {worst:.3e}")


def _groups(params, **second):
    return [{"params": params[:2]}, {"params": params[2:], **second}]


def test_adamw_matches_torch_step_for_step():
    lrs = [1e-2, 3e-2, 5e-3, 5e-3, 2e-2, 1e-3, 4e-2, 1e-2]
    skip = {(2, 1), (3, 1), (5, 3)}  # grads missing on some steps: per-parameter step counts
    kw = {"lr": 1e-2, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}
    _run_optimisers(lambda ps: AdamW(_groups(ps, weight_decay=0.3), **kw),
                    lambda ps: torch.optim.AdamW(_groups(ps, weight_decay=0.3), **kw),
                    "AdamW", lrs, skip=skip, seed=10)


def test_adamw_defaults_match_torch():
    lrs = [1e-3] * 3 + [1e-1] * 3
    _run_optimisers(lambda ps: AdamW(ps), lambda ps: torch.optim.AdamW(ps), "AdamW(defaults)", lrs, seed=11)


SGD_CASES = {
    "plain": {},
    "wd": {"weight_decay": 0.05},
    "momentum": {"momentum": 0.9},
    "momentum+dampening+wd": {"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01},
    "nesterov+wd": {"momentum": 0.8, "nesterov": True, "weight_decay": 0.02},
}


@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_matches_torch_step_for_step(case):
    kw = {"lr": 0.05, **SGD_CASES[case]}
    lrs = [0.05, 0.1, 0.02, 0.02, 0.07, 0.01]
    skip = {(2, 0), (3, 2)}
    _run_optimisers(lambda ps: SGD(_groups(ps, weight_decay=kw.get("weight_decay", 0.0) * 2), **kw),
                    lambda ps: torch.optim.SGD(_groups(ps, weight_decay=kw.get("weight_decay", 0.0) * 2), **kw),
                    f"SGD[{case}]", lrs, skip=skip, seed=20 + list(SGD_CASES).index(case))


# --------------------------------------------------------------------------- 4. functional ops
def _grad_pair(ours_out, t_out, rng):
    """Back-propagate the same random upstream gradient (or 1 for a scalar) through both outputs."""
    if ours_out.data.size == 1 and ours_out.ndim == 0:
        ours_out.backward()
        t_out.backward()
    else:
        g = rng.standard_normal(ours_out.shape)
        ours_out.backward(g)
        t_out.backward(torch.from_numpy(g))


CE_CASES = [(red, ls, ign) for red in ("mean", "sum", "none") for ls in (0.0, 0.1, 0.35) for ign in (None, -100, 2)]


@pytest.mark.parametrize("reduction,label_smoothing,ignore_index", CE_CASES)
def test_cross_entropy_matches_torch(reduction, label_smoothing, ignore_index):
    rng = np.random.default_rng(50 + CE_CASES.index((reduction, label_smoothing, ignore_index)))
    worst = 0.0
    for shape in [(7, 5), (2, 4, 6)]:  # (N, C) and (B, T, C): classes last here, second in torch
        logits = rng.standard_normal(shape) * 3
        t = rng.integers(0, shape[-1], size=shape[:-1])
        kw = {}
        if ignore_index is not None:
            flat = t.reshape(-1)
            flat[[0, 3]] = ignore_index  # a couple of ignored positions (with 2, every target 2 is ignored)
            kw["ignore_index"] = ignore_index
        x = mt.Tensor(logits.copy(), requires_grad=True)
        out = F.cross_entropy(x, t, reduction=reduction, label_smoothing=label_smoothing, **kw)
        tx = _t(logits, requires_grad=True)
        t_in = tx if len(shape) == 2 else tx.movedim(-1, 1)
        t_out = TF.cross_entropy(t_in, torch.from_numpy(t), reduction=reduction,
                                 label_smoothing=label_smoothing, **kw)
        label = f"cross_entropy[{reduction}, ls={label_smoothing}, ignore={ignore_index}, {shape}]"
        worst = max(worst, _check(label + " value", out, t_out, OP_TOL))
        _grad_pair(out, t_out, rng)
        worst = max(worst, _check(label + " grad", x.grad, tx.grad, OP_TOL))
        if ignore_index is not None:
            assert np.all(_np(x.grad).reshape(-1, shape[-1])[[0, 3]] == 0)


@pytest.mark.parametrize("affine", ["weight+bias", "weight", "none"])
def test_layer_norm_matches_torch(affine):
    rng = np.random.default_rng(30)
    C = 7
    x_np = rng.standard_normal((3, 4, C)) * 2 + 5  # an offset mean
    w_np, b_np = rng.standard_normal(C), rng.standard_normal(C)
    x = mt.Tensor(x_np.copy(), requires_grad=True)
    w = mt.Tensor(w_np.copy(), requires_grad=True) if affine != "none" else None
    b = mt.Tensor(b_np.copy(), requires_grad=True) if affine == "weight+bias" else None
    tx = _t(x_np, True)
    tw = _t(w_np, True) if w is not None else None
    tb = _t(b_np, True) if b is not None else None
    out = F.layer_norm(x, w, b, 1e-5)
    t_out = TF.layer_norm(tx, (C,), tw, tb, eps=1e-5)
    _check(f"layer_norm[{affine}] value", out, t_out, OP_TOL)
    _grad_pair(out, t_out, rng)
    _check(f"layer_norm[{affine}] grad x", x.grad, tx.grad, OP_TOL)
    if w is not None:
        _check(f"layer_norm[{affine}] grad weight", w.grad, tw.grad, OP_TOL)
    if b is not None:
        _check(f"layer_norm[{affine}] grad bias", b.grad, tb.grad, OP_TOL)


def test_layer_norm_module_matches_torch_module():
    rng = np.random.default_rng(31)
    ln = nn.LayerNorm(6, dtype=np.float64)
    tln = tnn.LayerNorm(6).double()
    assert ln.eps == tln.eps == 1e-5
    x_np = rng.standard_normal((5, 6)) * 1e-3  # small variance: eps matters
    _check("LayerNorm module (tiny variance)", ln(mt.Tensor(x_np)), tln(torch.from_numpy(x_np)), OP_TOL)


def test_gelu_tanh_matches_torch():
    rng = np.random.default_rng(32)
    x_np = np.concatenate([rng.standard_normal(200) * 3, np.linspace(-12, 12, 97), [0.0, -30.0, 30.0]])
    x, tx = mt.Tensor(x_np.copy(), requires_grad=True), _t(x_np, True)
    out, t_out = F.gelu(x), TF.gelu(tx, approximate="tanh")
    _check("gelu(tanh) value", out, t_out, OP_TOL)
    _grad_pair(out, t_out, rng)
    _check("gelu(tanh) grad", x.grad, tx.grad, OP_TOL)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_log_softmax_matches_torch(axis):
    rng = np.random.default_rng(33 + axis)
    x_np = rng.standard_normal((4, 6, 5)) * 4
    x_np[0, 0] += 800.0  # logits far from zero: the max shift must keep it exact
    x, tx = mt.Tensor(x_np.copy(), requires_grad=True), _t(x_np, True)
    out, t_out = F.log_softmax(x, axis=axis), TF.log_softmax(tx, dim=axis)
    _check(f"log_softmax[axis={axis}] value", out, t_out, OP_TOL)  # values up to ~1e3: held relative to that
    _grad_pair(out, t_out, rng)
    _check(f"log_softmax[axis={axis}] grad", x.grad, tx.grad, OP_TOL)


def test_softmax_matches_torch():
    rng = np.random.default_rng(36)
    x_np = rng.standard_normal((3, 5, 7)) * 5
    x, tx = mt.Tensor(x_np.copy(), requires_grad=True), _t(x_np, True)
    out, t_out = F.softmax(x, axis=-1), torch.softmax(tx, dim=-1)
    _check("softmax value", out, t_out, OP_TOL)
    _grad_pair(out, t_out, rng)
    _check("softmax grad", x.grad, tx.grad, OP_TOL)


# --------------------------------------------------------------------------- 5. LoRA
@pytest.mark.parametrize("use_rslora", [False, True])
def test_lora_linear_matches_hand_written_torch(use_rslora):
    from minitspeft.peft import LoraConfig, get_peft_model

    class Net(nn.Module):
        def __init__(self):
            self.proj = nn.Linear(6, 5, dtype=np.float64)
            self.other = nn.Linear(5, 5, dtype=np.float64)

        def forward(self, x):
            return self.other(self.proj(x))

    mt.manual_seed(40)
    model = Net()
    cfg = LoraConfig(r=3, lora_alpha=5.0, target_modules=["proj"], init_lora_weights=False, use_rslora=use_rslora)
    peft = get_peft_model(model, cfg)
    layer = peft.base_model.proj
    W, b = _np(layer.base_layer.weight), _np(layer.base_layer.bias)
    A, B = _np(layer.lora_A.weight), _np(layer.lora_B.weight)
    assert A.shape == (3, 6) and B.shape == (5, 3) and A.dtype == B.dtype == np.float64
    assert np.any(B != 0), "init_lora_weights=False must give a random B"
    scaling = 5.0 / (math.sqrt(3) if use_rslora else 3)
    assert layer.scaling == pytest.approx(scaling)

    rng = np.random.default_rng(41)
    x_np = rng.standard_normal((2, 4, 6))
    g_np = rng.standard_normal((2, 4, 5))
    out = layer(mt.Tensor(x_np))
    loss = (out * mt.Tensor(g_np)).sum()
    loss.backward()

    tx, tW, tb = torch.from_numpy(x_np), torch.from_numpy(W), torch.from_numpy(b)
    tA, tB = _t(A, True), _t(B, True)
    t_out = tx @ tW.T + tb + scaling * (tx @ tA.T) @ tB.T
    (t_out * torch.from_numpy(g_np)).sum().backward()
    label = f"LoRA[rslora={use_rslora}]"
    _check(f"{label} output", out, t_out, OP_TOL)
    _check(f"{label} grad lora_A", layer.lora_A.weight.grad, tA.grad, OP_TOL)
    _check(f"{label} grad lora_B", layer.lora_B.weight.grad, tB.grad, OP_TOL)
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None  # frozen

    # merging folds exactly the same update into W
    layer.merge()
    _check(f"{label} merged output", layer(mt.Tensor(x_np)), t_out, OP_TOL)
    layer.unmerge()
