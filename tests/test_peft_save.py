"""save_pretrained / from_pretrained: exact round trips, and every kind of bad file refused without side effects."""

import json

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import nn
from minitspeft.peft import AdapterConfig, GateConfig, LoraConfig, PeftModel, get_peft_model
from minitspeft.peft.base import PeftLayer

CASES = {
    "lora": (LoraConfig(r=4, target_modules=["q_proj", "fc2"], modules_to_save=["head"]), None),
    "dora": (LoraConfig(r=2, target_modules="all-linear", use_dora=True), None),
    "ts-lora": (LoraConfig(r=4, target_modules=["v_proj"]), GateConfig(sparsity_weight=0.1, temperature=0.3)),
    "adapter": (AdapterConfig(bottleneck=3, modules_to_save=["head"]), None),
    "ts-adapter": (AdapterConfig(reduction_factor=4, placement="pfeiffer"), GateConfig(surrogate="rect")),
}


def _vit(seed=0):
    mt.manual_seed(seed)
    cfg = nn.TransformerConfig(n_layer=2, n_head=2, n_embd=16, n_classes=3, pooling="cls")
    return nn.ViT(cfg, patch_size=2, image_size=4, dtype=np.float64)


def _trained(name):
    config, gate = CASES[name]
    pm = get_peft_model(_vit(), config, gate=gate)
    rng = np.random.default_rng(1)
    for p in pm.parameters():
        if p.requires_grad:  # stand-in for training: move every adapter weight
            p.data = p.data + rng.normal(scale=0.1, size=p.shape)
    for tau in pm.thresholds():
        tau.data = np.asarray(0.05)
    return pm


def _images():
    return np.random.default_rng(2).uniform(size=(3, 4, 4))


@pytest.mark.parametrize("name", CASES)
def test_round_trip_is_exact(name, tmp_path):
    pm = _trained(name)
    pm.save_pretrained(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.npz"]
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["method"] == name and meta["config"] == CASES[name][0].to_dict()
    with np.load(tmp_path / "adapter_model.npz", allow_pickle=False) as z:
        saved = set(z.files)
    assert saved == set(pm.adapter_state_dict())
    assert not any("base_layer" in k or "original_module" in k for k in saved)  # adapter weights only
    loaded = PeftModel.from_pretrained(_vit(), str(tmp_path))
    x = _images()
    pm.eval()
    np.testing.assert_array_equal(loaded(x).data, pm(x).data)
    assert loaded.method == name
    assert loaded.num_parameters(trainable_only=True) == 0 and not loaded.training
    trainable = PeftModel.from_pretrained(_vit(), str(tmp_path), is_trainable=True)
    assert trainable.num_parameters(trainable_only=True) == pm.num_parameters(trainable_only=True)


def _unchanged(model, before):
    assert not any(isinstance(m, PeftLayer) for m in model.modules())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert all(p.requires_grad for p in model.parameters())


def _rewrite_config(tmp_path, change):
    path = tmp_path / "adapter_config.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage,needle", [
    (lambda m: m.update(method="ts-lora"), "does not match"),
    (lambda m: m.update(peft_type="PrefixConfig"), "unknown peft_type"),
    (lambda m: m["config"].update(rank=4), "unknown or missing fields"),
    (lambda m: m["config"].update(r=0), "r must be"),
    (lambda m: m.update(format_version=99), "unsupported adapter format"),
    (lambda m: m["config"].update(target_modules=["k_proj"]), "does not fit"),
])
def test_bad_configs_are_refused_and_change_nothing(tmp_path, damage, needle):
    _trained("lora").save_pretrained(str(tmp_path))
    _rewrite_config(tmp_path, damage)
    base = _vit()
    before = base.state_dict()
    with pytest.raises(ValueError, match=needle):
        PeftModel.from_pretrained(base, str(tmp_path))
    _unchanged(base, before)


def test_wrong_shapes_and_damaged_weights_are_refused(tmp_path):
    _trained("lora").save_pretrained(str(tmp_path))
    weights = tmp_path / "adapter_model.npz"
    with np.load(weights) as z:
        arrays = dict(z)
    arrays["blocks.0.attn.q_proj.lora_A.weight"] = np.zeros((5, 16))
    np.savez(weights, **arrays)
    base = _vit()
    before = base.state_dict()
    with pytest.raises(ValueError, match=r"wrong shapes \['blocks.0.attn.q_proj.lora_A.weight"):
        PeftModel.from_pretrained(base, str(tmp_path))
    _unchanged(base, before)
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(ValueError, match="damaged"):
        PeftModel.from_pretrained(base, str(tmp_path))
    _unchanged(base, before)
    (tmp_path / "adapter_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        PeftModel.from_pretrained(base, str(tmp_path))


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        PeftModel.from_pretrained(_vit(), str(tmp_path))


def test_unload_restores_the_base_model():
    base = _vit()
    before = base.state_dict()
    pm = get_peft_model(base, LoraConfig(target_modules=["q_proj"], modules_to_save=["head"]))
    _unchanged(pm.unload(), before)


def test_unload_after_merge_restores_the_original_weights():
    base = _vit()
    x = _images()
    before = base(x).data.copy()
    pm = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "fc1"], init_lora_weights=False))
    pm.merge_adapter()
    np.testing.assert_array_equal(pm.unload()(x).data, before)


def test_adapter_for_another_architecture_is_refused(tmp_path):
    _trained("lora").save_pretrained(str(tmp_path))
    mt.manual_seed(0)
    text = nn.Transformer(nn.TransformerConfig(vocab_size=8, n_layer=2, n_head=2, n_embd=16, n_classes=3))
    with pytest.raises(ValueError, match="trained on a ViT, not a Transformer"):
        PeftModel.from_pretrained(text, str(tmp_path))


def test_fit_refuses_a_frozen_model(tmp_path):
    from minitspeft.train import fit

    _trained("lora").save_pretrained(str(tmp_path))
    frozen = PeftModel.from_pretrained(_vit(), str(tmp_path))
    with pytest.raises(ValueError, match="no trainable parameters.*is_trainable=True"):
        fit(frozen, _images(), np.array([0, 1, 2]), steps=1, progress=False)
