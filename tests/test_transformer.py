"""The text Transformer: learning, causality, generation, input checks, dtypes."""

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import functional as F
from minitspeft import nn
from minitspeft.optim import AdamW


def _lm(dtype=None, **kw):
    mt.manual_seed(0)
    cfg = nn.TransformerConfig.preset("nano", vocab_size=7, block_size=12, causal=True, **kw)
    return nn.Transformer(cfg, dtype=dtype)


def _train(model, x, y, steps, lr=1e-2):
    opt = AdamW(list(model.parameters()), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_causal_lm_learns_a_cyclic_sequence():
    model = _lm()
    starts = np.arange(7)
    seqs = (starts[:, None] + np.arange(13)[None]) % 7  # 0 1 2 ... 6 0 1 ..., every phase
    loss = _train(model, seqs[:, :-1], seqs[:, 1:], steps=150)
    assert loss < 0.02
    out = model.generate(np.array([[3]]), max_new_tokens=8, top_k=1)
    np.testing.assert_array_equal(out[0], (3 + np.arange(9)) % 7)


def test_encoder_learns_to_spot_a_token():
    mt.manual_seed(1)
    model = nn.Transformer(nn.TransformerConfig.preset("nano", vocab_size=6, block_size=8, n_classes=2))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(64, 8))
    y = rng.integers(0, 2, size=64)
    x[y == 1, rng.integers(0, 8, size=(y == 1).sum())] = 5  # class 1: token 5 somewhere
    x[y == 0] = np.where(x[y == 0] == 5, 0, x[y == 0])
    loss = _train(model, x, y, steps=120)
    assert loss < 0.05
    assert (model(x).data.argmax(-1) == y).mean() == 1.0


def test_logits_at_t_ignore_later_tokens():
    model = _lm(dtype=np.float64)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 7, size=(3, 10))
    b = a.copy()
    b[:, 6:] = rng.integers(0, 7, size=(3, 4))
    la, lb = model(a).data, model(b).data
    np.testing.assert_array_equal(la[:, :6], lb[:, :6])
    assert not np.allclose(la[:, 6:], lb[:, 6:])


def test_causality_of_gradients():
    model = _lm(dtype=np.float64)
    emb = model.tok_emb.weight
    ids = np.arange(6)[None] % 7
    model(ids)[0, 2].sum().backward()
    used = np.flatnonzero(np.abs(emb.grad).sum(1))
    assert set(used) <= {0, 1, 2}  # only tokens at positions 0..2 influence position 2


@pytest.mark.parametrize("ids,needle", [
    (np.array([[0, -1]]), r"in \[0, 7\)"),
    (np.array([[0, 7]]), r"in \[0, 7\)"),
    (np.zeros((1, 13), dtype=int), "exceeds block_size 12"),
    (np.zeros((1, 3)), "must be integers"),
    (np.zeros(3, dtype=int), r"\(B, T\)"),
])
def test_bad_token_ids_are_refused(ids, needle):
    with pytest.raises(ValueError, match=needle):
        _lm()(ids)


def test_generate_is_seeded_crops_context_and_checks_arguments():
    model = _lm()
    a = model.generate(np.zeros((2, 1), dtype=int), 20, temperature=0.8, top_k=3, seed=5)
    b = model.generate(np.zeros((2, 1), dtype=int), 20, temperature=0.8, top_k=3, seed=5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 21) and a.min() >= 0 and a.max() < 7  # longer than block_size 12: context cropped
    assert model.training  # mode restored
    for kwargs in ({"temperature": 0}, {"top_k": 0}, {"top_k": 8}, {"max_new_tokens": -1}):
        args = {"max_new_tokens": 2, **kwargs}
        with pytest.raises(ValueError, match="generate"):
            model.generate(np.zeros((1, 1), dtype=int), **args)
    enc = nn.Transformer(nn.TransformerConfig(vocab_size=5, n_classes=2))
    with pytest.raises(ValueError, match="causal language model"):
        enc.generate(np.zeros((1, 1), dtype=int), 1)


def test_state_dict_names():
    names = set(_lm().state_dict())
    assert {"tok_emb.weight", "pos_emb.weight", "ln_f.weight", "ln_f.bias", "head.weight", "head.bias",
            "blocks.0.attn.q_proj.weight", "blocks.0.mlp.fc2.bias"} <= names


def test_presets_and_overrides():
    cfg = nn.TransformerConfig.preset("micro", vocab_size=9)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size) == (2, 4, 64, 9)
    with pytest.raises(ValueError, match="known"):
        nn.TransformerConfig.preset("huge")


def test_to_double_and_back():
    model = _lm()
    assert model.head.weight.dtype == np.float32
    model.double()
    assert all(p.dtype == np.float64 for p in model.parameters())
    logits = model(np.zeros((1, 4), dtype=int))
    assert logits.dtype == np.float64
    model.float()
    assert all(p.dtype == np.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="Module.to"):
        model.to(np.int32)


def test_repr_names_the_layers():
    text = repr(_lm())
    assert "Transformer(" in text and "(q_proj): Linear(in_features=32, out_features=32, bias=True)" in text


@pytest.mark.parametrize("ids", [np.zeros((1, 0), dtype=int), np.zeros((0, 3), dtype=int)])
def test_empty_ids_are_refused(ids):
    with pytest.raises(ValueError, match="at least one"):
        _lm()(ids)


@pytest.mark.parametrize("kwargs", [{"dropout": "0.1"}, {"n_classes": True}])
def test_config_rejects_wrong_types(kwargs):
    with pytest.raises(ValueError, match="TransformerConfig"):
        nn.TransformerConfig(**kwargs)


def test_generate_rejects_a_fractional_count():
    with pytest.raises(ValueError, match="generate"):
        _lm().generate(np.zeros((1, 1), dtype=int), 2.5)


@pytest.mark.parametrize("value", [[[0.0] * 32] * 7, np.zeros((7, 32), dtype=complex)])
def test_load_state_dict_takes_lists_and_refuses_complex(value):
    model = _lm(dtype=np.float64)
    state = model.state_dict()
    state["tok_emb.weight"] = value
    if isinstance(value, list):
        model.load_state_dict(state)
        assert not model.tok_emb.weight.data.any()
    else:
        with pytest.raises(ValueError, match="non-real"):
            model.load_state_dict(state)
