"""save_pretrained / from_pretrained: exact round trips, and every kind of bad file refused without side effects."""

import json

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import nn
from minitspeft.io import load_arrays, save_npz
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


def _peft_name(name):
    """The name peft gives an ``adapter_state_dict`` entry in the file (written out here, not computed by the code)."""
    return "base_model.model." + name.replace("head.modules_to_save.", "head.")


@pytest.mark.parametrize("name", CASES)
def test_round_trip_is_exact(name, tmp_path):
    pm = _trained(name)
    pm.save_pretrained(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.npz"]
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    fields = CASES[name][0].to_dict()
    assert meta["method"] == name and {k: meta[k] for k in fields} == fields  # flat, as peft writes it
    saved, record = load_arrays(str(tmp_path / "adapter_model.npz"))
    saved = set(saved)
    assert saved == {_peft_name(k) for k in pm.adapter_state_dict()} and record == meta  # the record travels inside
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
    """Change the saved record (inside adapter_model.npz, and its readable copy the same way)."""
    arrays, meta = load_arrays(str(tmp_path / "adapter_model.npz"))
    change(meta)
    save_npz(str(tmp_path / "adapter_model.npz"), arrays, meta)
    (tmp_path / "adapter_config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage,needle", [
    (lambda m: m.update(method="ts-lora"), "does not match"),
    (lambda m: m.update(peft_type="PREFIX_TUNING"), "unknown peft_type"),
    (lambda m: m.update(rank=4), "unknown or missing fields"),
    (lambda m: m.update(r=0), "r must be"),
    (lambda m: m.update(format_version=99), "unsupported adapter format"),
    (lambda m: m.update(target_modules=["k_proj"]), "does not fit"),
])
def test_bad_configs_are_refused_and_change_nothing(tmp_path, damage, needle):
    _trained("lora").save_pretrained(str(tmp_path))
    _rewrite_config(tmp_path, damage)
    _load_is_refused(tmp_path, needle)


def _load_is_refused(tmp_path, needle):
    """Loading the adapter in ``tmp_path`` raises ``ValueError`` matching ``needle`` and changes nothing."""
    base = _vit()
    before = base.state_dict()
    with pytest.raises(ValueError, match=needle):
        PeftModel.from_pretrained(base, str(tmp_path))
    _unchanged(base, before)


def test_wrong_shapes_and_damaged_weights_are_refused(tmp_path):
    _trained("lora").save_pretrained(str(tmp_path))
    weights = tmp_path / "adapter_model.npz"
    arrays, record = load_arrays(str(weights))
    arrays["base_model.model.blocks.0.attn.q_proj.lora_A.weight"] = np.zeros((5, 16))
    save_npz(str(weights), arrays, record)
    base = _vit()
    before = base.state_dict()
    with pytest.raises(ValueError, match=r"wrong shapes \['base_model.model.blocks.0.attn.q_proj.lora_A.weight"):
        PeftModel.from_pretrained(base, str(tmp_path))
    _unchanged(base, before)
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(ValueError, match="damaged"):
        PeftModel.from_pretrained(base, str(tmp_path))
    _unchanged(base, before)
    _trained("lora").save_pretrained(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{oops")  # only the readable copy: the unit is whole
    with pytest.warns(RuntimeWarning, match="differs from the record"):
        PeftModel.from_pretrained(_vit(), str(tmp_path))


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


@pytest.mark.parametrize("bad", [np.zeros((2, 16), dtype=np.int64), np.zeros((2, 16), dtype=complex)])
def test_a_weight_of_the_wrong_dtype_is_refused_and_the_base_model_is_left_unwrapped(tmp_path, bad):
    _trained("lora").save_pretrained(str(tmp_path))
    _refused_after_replacing(tmp_path, "base_model.model.blocks.0.attn.q_proj.lora_A.weight", bad, "non-float dtypes")


def _refused_after_replacing(tmp_path, name, value, needle):
    """Replace one saved array (inside the unit, record kept); loading is refused and changes nothing."""
    weights = str(tmp_path / "adapter_model.npz")
    arrays, record = load_arrays(weights)
    arrays[name] = value
    save_npz(weights, arrays, record)
    _load_is_refused(tmp_path, needle)


def test_saving_after_merge_and_unload_is_refused_instead_of_writing_an_empty_adapter(tmp_path):
    pm = get_peft_model(_vit(), LoraConfig(r=2, target_modules=["q_proj"]))
    pm.merge_and_unload()
    with pytest.raises(ValueError, match="holds no adapters"):
        pm.save_pretrained(str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fail_at", ["weights", "config"])
def test_an_interrupted_save_pretrained_loads_the_old_adapter_or_the_new_one(tmp_path, monkeypatch, fail_at):
    """New weights with an old config can never load together: the record travels inside the weights file."""
    import os

    import minitspeft.io as io

    old = get_peft_model(_vit(), LoraConfig(r=2, lora_alpha=4.0, target_modules=["q_proj"], init_lora_weights=False))
    old.save_pretrained(str(tmp_path))
    mt.manual_seed(7)
    new = get_peft_model(_vit(), LoraConfig(r=2, lora_alpha=64.0, target_modules=["q_proj"],
                                            init_lora_weights=False))
    real = os.replace

    def replace(src, dst):
        if dst.endswith("adapter_model.npz" if fail_at == "weights" else "adapter_config.json"):
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(str(tmp_path))
    monkeypatch.undo()
    want = old if fail_at == "weights" else new
    if fail_at == "config":  # the readable copy is stale: loading says so and uses the weights' own record
        with pytest.warns(RuntimeWarning, match="interrupted save"):
            loaded = PeftModel.from_pretrained(_vit(), str(tmp_path))
    else:
        loaded = PeftModel.from_pretrained(_vit(), str(tmp_path))
    assert loaded.peft_config.lora_alpha == want.peft_config.lora_alpha
    x = _images()
    np.testing.assert_array_equal(loaded(x).data, want.eval()(x).data)


@pytest.mark.parametrize("value", [-0.5, float("nan")])
def test_a_saved_threshold_that_is_negative_or_nan_is_refused(tmp_path, value):
    pm = get_peft_model(_vit(), LoraConfig(r=2, target_modules=["q_proj"]), gate=GateConfig())
    pm.save_pretrained(str(tmp_path))
    _refused_after_replacing(tmp_path, "base_model.model.blocks.0.attn.q_proj.gate.tau", np.array(value, np.float32),
                             "non-finite or out-of-bound")
