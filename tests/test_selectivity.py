"""Selectivity measures: the provably useless updates really are useless, and the AUC and densities are right."""

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import nn
from minitspeft.peft import AdapterConfig, GateConfig, LoraConfig, get_peft_model
from minitspeft.selectivity import gate_selectivity, roc_auc, salient_ratio, useless_layers
from minitspeft.tensor import Tensor

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]


def _text(pooling="cls", n_layer=2, seed=0):
    mt.manual_seed(seed)
    return nn.Transformer(nn.TransformerConfig(n_classes=4, pooling=pooling, n_layer=n_layer, n_embd=16, n_head=2,
                                               block_size=12))


def _vit(seed=0):
    mt.manual_seed(seed)
    return nn.ViT(nn.TransformerConfig(n_classes=4, pooling="cls", n_layer=2, n_embd=16, n_head=2),
                  patch_size=2, image_size=4)


def _perturb_non_cls(layer, seed, scale=1.0):
    """Add noise to ``layer``'s update at every position but 0. Replacing ``delta`` routes the layer
    through its generic (unfused) path, so a comparison first installs ``scale=0``: same path, no noise."""
    original = layer.delta
    rng = np.random.default_rng(seed)

    def delta(x, b):
        d = original(x, b)
        noise = rng.normal(size=d.shape).astype(d.dtype) * d.dtype.type(scale)
        noise[:, 0] = 0
        return d + Tensor(noise)

    layer.delta = delta


def _random_lora(model):
    return get_peft_model(model, LoraConfig(r=2, target_modules=TARGETS, init_lora_weights=False))


def _random_adapters(model):
    pm = get_peft_model(model, AdapterConfig(bottleneck=4))
    rng = np.random.default_rng(1)
    for _, layer in pm.peft_layers():
        layer.adapter_up.weight.data = rng.normal(size=layer.adapter_up.weight.shape).astype(np.float32)
    return pm


CASES = [("text", _random_lora), ("text", _random_adapters), ("vit", _random_lora), ("vit", _random_adapters)]


@pytest.mark.parametrize("kind, wrap", CASES)
def test_useless_updates_leave_the_logits_bit_identical(kind, wrap):
    x = np.random.default_rng(0).integers(0, 15, size=(5, 9)) if kind == "text" else \
        np.random.default_rng(0).uniform(size=(5, 4, 4))
    pm = wrap(_text() if kind == "text" else _vit()).eval()
    useless = useless_layers(pm)
    assert useless and all(n.startswith("blocks.1.") for n in useless)
    for name in useless:
        _perturb_non_cls(pm.base_model.get_submodule(name), seed=0, scale=0.0)
    before = pm(x).data.copy()
    for i, name in enumerate(useless):
        _perturb_non_cls(pm.base_model.get_submodule(name), seed=i)
    np.testing.assert_array_equal(pm(x).data, before)
    # the other layers' updates do reach the logits: the set is not too large
    for name, _ in pm.peft_layers():
        if name in useless:
            continue
        fresh = wrap(_text() if kind == "text" else _vit()).eval()
        _perturb_non_cls(fresh.base_model.get_submodule(name), seed=9, scale=0.0)
        fresh_before = fresh(x).data.copy()
        _perturb_non_cls(fresh.base_model.get_submodule(name), seed=9)
        assert not np.array_equal(fresh(x).data, fresh_before), name


def test_the_useless_set_is_the_last_blocks_per_position_layers():
    pm = _random_lora(_text(n_layer=3))
    assert useless_layers(pm) == ["blocks.2.attn.q_proj", "blocks.2.attn.o_proj", "blocks.2.mlp.fc1",
                                  "blocks.2.mlp.fc2"]
    assert useless_layers(_random_adapters(_text())) == ["blocks.1.attn", "blocks.1.mlp"]
    assert useless_layers(_random_lora(_text(pooling="mean"))) == []  # every position reaches the mean
    lm = nn.Transformer(nn.TransformerConfig(n_layer=1, n_embd=16, n_head=2, causal=True))
    assert useless_layers(_random_lora(lm)) == []


def test_with_mean_pooling_every_update_matters():
    x = np.random.default_rng(0).integers(0, 15, size=(5, 9))
    pm = _random_lora(_text(pooling="mean")).eval()
    _perturb_non_cls(pm.base_model.get_submodule("blocks.1.mlp.fc2"), seed=0, scale=0.0)
    before = pm(x).data.copy()
    _perturb_non_cls(pm.base_model.get_submodule("blocks.1.mlp.fc2"), seed=0)
    assert not np.array_equal(pm(x).data, before)


def test_roc_auc_matches_the_pairwise_count():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, size=30).astype(float), rng.integers(0, 5, size=40).astype(float)
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert roc_auc(pos, neg) == pytest.approx(pairs, rel=1e-12)
    assert roc_auc([2.0, 3.0], [0.0, 1.0]) == 1.0 and roc_auc([0.0], [1.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5
    assert np.isnan(roc_auc([], [1.0]))


def test_gate_selectivity_counts_what_the_gates_applied():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 15, size=(20, 9))
    mask = np.zeros(x.shape, dtype=bool)
    mask[:, 2:4] = True
    pm = get_peft_model(_text(), LoraConfig(r=2, target_modules=TARGETS, init_lora_weights=False),
                        gate=GateConfig(tau_init=0.3))
    sel = gate_selectivity(pm, x, mask, batch_size=7)  # several batches
    pm.eval()
    pm(x)
    useless = useless_layers(pm)
    applied = []
    for name, gate in pm.gates():
        S, s = gate.last_S.data, gate.last_score
        row = sel["layers"][name]
        assert row["density"] == pytest.approx(S.mean())
        assert row["salient_density"] == pytest.approx(S[:, 2:4].mean())
        other = np.ones(x.shape, dtype=bool)
        other[:, [0, 2, 3]] = False
        assert row["other_density"] == pytest.approx(S[other].mean())
        assert row["token_auc"] == pytest.approx(roc_auc(s[:, 2:4], s[other]))
        assert row["seq_spread"] == pytest.approx(S[:, 1:].std(axis=1).mean())
        assert row["useless"] == (name in useless)
        if name in useless:
            applied.append(S[:, 1:])
    assert sel["useless_density"] == pytest.approx(np.concatenate(applied).mean())
    block0 = [sel["layers"][n]["salient_density"] for n in sel["layers"] if n.startswith("blocks.0.")]
    assert sel["blocks"][0]["salient_density"] == pytest.approx(np.mean(block0))
    assert salient_ratio({"salient_density": 0.6, "other_density": 0.2}) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="mask has shape"):
        gate_selectivity(pm, x, mask[:, :4])
    with pytest.raises(ValueError, match="no token gates"):
        gate_selectivity(_random_lora(_text()), x)


def test_a_gate_on_another_token_axis_is_left_out_and_named():
    """With ``all-linear`` a ViT's ``patch_emb`` is gated too; it sees the patches before the CLS token is
    put in front (one token fewer), so its position 0 is not the CLS: it is listed, not measured."""
    pm = get_peft_model(_vit(), LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False),
                        gate=GateConfig(tau_init=0.3))
    x = np.random.default_rng(1).normal(size=(6, 4, 4))
    pm(x)
    shapes = {name: tuple(gate.last_S.shape) for name, gate in pm.gates()}
    full = max(s[1] for s in shapes.values())
    mask = np.zeros((6, full), dtype=bool)
    mask[:, 1] = True
    sel = gate_selectivity(pm, x, mask)
    assert sel["skipped"] == {"patch_emb": (6, full - 1)} and "patch_emb" not in sel["layers"]
    assert set(sel["layers"]) == {n for n, s in shapes.items() if s[1] == full}
    assert all(0 <= row["salient_density"] <= 1 for row in sel["layers"].values())
