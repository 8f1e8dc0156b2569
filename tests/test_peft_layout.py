"""The adapter files in Hugging Face peft's layout, older layouts still loading, and peft's habits on the API."""

import dataclasses
import json
import warnings

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import nn
from minitspeft.io import load_arrays, save_npz
from minitspeft.peft import AdapterConfig, GateConfig, LoraConfig, PeftModel, get_peft_model
from minitspeft.peft.base import PeftLayer
from minitspeft.peft.saving import RECORD_KEYS

# the LoraConfig / AdapterConfig fields that format-1 files were written without
NEW_FIELDS = ("task_type", "base_model_name_or_path", "inference_mode", "fan_in_fan_out")
CASES = {
    "lora": (LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["head"]), None),
    "dora": (LoraConfig(r=2, target_modules=["v_proj"], use_dora=True), None),
    "ts-lora": (LoraConfig(r=2, target_modules=["q_proj", "fc1"], bias="all"), GateConfig(temperature=0.3)),
    "adapter": (AdapterConfig(bottleneck=3, placement="pfeiffer"), None),
    "ts-adapter": (AdapterConfig(bottleneck=2), GateConfig(surrogate="rect")),
}


def _vit(seed=0, dtype=np.float64):
    mt.manual_seed(seed)
    cfg = nn.TransformerConfig(n_layer=2, n_head=2, n_embd=8, n_classes=3, pooling="cls")
    return nn.ViT(cfg, patch_size=2, image_size=4, dtype=dtype)


def _trained(name, dtype=np.float64):
    config, gate = CASES[name]
    pm = get_peft_model(_vit(dtype=dtype), config, gate=gate)
    rng = np.random.default_rng(1)
    for p in pm.parameters():
        if p.requires_grad:  # stand-in for training: move every trainable weight
            p.data = (p.data + rng.normal(scale=0.1, size=p.shape)).astype(p.dtype)
    for tau in pm.thresholds():
        tau.data = np.asarray(0.05, dtype=tau.dtype)
    return pm.eval()


def _images():
    return np.random.default_rng(2).uniform(size=(3, 4, 4))


def _write_format_1(pm, directory, record_inside=True):
    """Write ``pm`` as the code before format 2 did: a nested record (inside the .npz, or in the JSON file only,
    as the oldest files), arrays named as adapter_state_dict, and configs without the fields added since."""
    config = {k: v for k, v in pm.peft_config.to_dict().items() if k not in NEW_FIELDS}
    record = {"format_version": 1, "method": pm.method, "base_model_class": type(pm.base_model).__name__,
              "peft_type": type(pm.peft_config).__name__, "config": config,
              "gate": None if pm.gate_config is None else pm.gate_config.to_dict()}
    directory.mkdir(exist_ok=True)
    save_npz(str(directory / "adapter_model.npz"), pm.adapter_state_dict(), record if record_inside else None)
    (directory / "adapter_config.json").write_text(json.dumps(record, indent=2, sort_keys=True))


# ------------------------------------------------------------------ the layout
def test_the_json_is_flat_as_peft_writes_it(tmp_path):
    pm = get_peft_model(_vit(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                                           task_type="SEQ_CLS"))
    pm.save_pretrained(str(tmp_path))
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA" and meta["r"] == 4 and meta["lora_alpha"] == 8
    assert meta["lora_dropout"] == 0.1 and meta["target_modules"] == ["q_proj", "v_proj"]
    assert meta["use_dora"] is False and meta["bias"] == "none" and meta["fan_in_fan_out"] is False
    assert meta["task_type"] == "SEQ_CLS" and meta["base_model_name_or_path"] is None
    assert meta["format_version"] == 2 and meta["method"] == "lora" and meta["base_model_class"] == "ViT"
    assert meta["token_gate"] is None and "config" not in meta and "gate" not in meta
    assert set(meta) == set(LoraConfig().to_dict()) | set(RECORD_KEYS)
    assert load_arrays(str(tmp_path / "adapter_model.npz"))[1] == meta  # the same record inside the unit


@pytest.mark.parametrize("name,peft_type", [("dora", "LORA"), ("ts-lora", "LORA"), ("adapter", "BOTTLENECK_ADAPTER"),
                                            ("ts-adapter", "BOTTLENECK_ADAPTER")])
def test_every_method_names_its_peft_type_and_keeps_the_gate_under_one_key(tmp_path, name, peft_type):
    pm = _trained(name)
    pm.save_pretrained(str(tmp_path))
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == peft_type == pm.peft_config.peft_type and meta["method"] == name
    gate = CASES[name][1]
    assert meta["token_gate"] == (None if gate is None else gate.to_dict())
    assert not set(GateConfig().to_dict()) & set(meta)  # the gate's fields never leak to the top level
    if peft_type == "LORA":
        assert meta["use_dora"] is (name == "dora")


def test_no_config_field_collides_with_the_record_keys():
    for kind in (LoraConfig, AdapterConfig):
        assert not {f.name for f in dataclasses.fields(kind)} & set(RECORD_KEYS)


def test_arrays_are_named_as_peft_names_them(tmp_path):
    pm = _trained("lora")
    pm.save_pretrained(str(tmp_path))
    arrays, _ = load_arrays(str(tmp_path / "adapter_model.npz"))
    want = {f"base_model.model.blocks.{i}.attn.q_proj.lora_{ab}.weight" for i in (0, 1) for ab in "AB"}
    assert set(arrays) == want | {"base_model.model.head.weight", "base_model.model.head.bias"}
    state = pm.adapter_state_dict()  # in memory, names stay relative to the base model
    np.testing.assert_array_equal(arrays["base_model.model.head.weight"], state["head.modules_to_save.weight"])
    np.testing.assert_array_equal(arrays["base_model.model.blocks.1.attn.q_proj.lora_B.weight"],
                                  state["blocks.1.attn.q_proj.lora_B.weight"])


def test_dora_gate_and_bias_arrays_keep_their_peft_names(tmp_path):
    for name, wanted in (("dora", "base_model.model.blocks.0.attn.v_proj.lora_magnitude_vector"),
                         ("ts-lora", "base_model.model.blocks.1.mlp.fc1.gate.tau"),
                         ("ts-lora", "base_model.model.blocks.0.attn.q_proj.base_layer.bias"),
                         ("adapter", "base_model.model.blocks.1.mlp.adapter_up.weight")):
        _trained(name).save_pretrained(str(tmp_path / name))
        arrays, _ = load_arrays(str(tmp_path / name / "adapter_model.npz"))
        assert wanted in arrays, sorted(arrays)
        assert all(k.startswith("base_model.model.") and ".default" not in k for k in arrays)


@pytest.mark.parametrize("name", CASES)
def test_a_saved_adapter_loads_back_exactly(tmp_path, name):
    pm = _trained(name)
    pm.save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(_vit(), str(tmp_path))
    np.testing.assert_array_equal(loaded(_images()).data, pm(_images()).data)
    assert loaded.peft_config.to_dict() == {**pm.peft_config.to_dict(), "inference_mode": True}


# ------------------------------------------------------------- older layouts
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("record_inside", [True, False], ids=["format-1", "json-only"])
def test_format_1_files_still_load(tmp_path, name, record_inside):
    pm = _trained(name)
    _write_format_1(pm, tmp_path, record_inside)
    assert not any(k.startswith("base_model.") for k in load_arrays(str(tmp_path / "adapter_model.npz"))[0])
    loaded = PeftModel.from_pretrained(_vit(), str(tmp_path))
    np.testing.assert_array_equal(loaded(_images()).data, pm(_images()).data)
    assert loaded.method == name and loaded.gate_config == pm.gate_config


def test_a_format_1_file_resaved_is_format_2(tmp_path):
    pm = _trained("ts-lora")
    _write_format_1(pm, tmp_path / "old")
    PeftModel.from_pretrained(_vit(), str(tmp_path / "old")).save_pretrained(str(tmp_path / "new"))
    meta = json.loads((tmp_path / "new" / "adapter_config.json").read_text())
    assert meta["format_version"] == 2 and meta["peft_type"] == "LORA" and meta["token_gate"]["temperature"] == 0.3
    again = PeftModel.from_pretrained(_vit(), str(tmp_path / "new"))
    np.testing.assert_array_equal(again(_images()).data, pm(_images()).data)


def test_a_format_2_record_with_unprefixed_arrays_is_refused(tmp_path):
    """The record says how the arrays are named: format 2 means peft's names, so bare names do not load."""
    pm = _trained("lora")
    pm.save_pretrained(str(tmp_path))
    _, record = load_arrays(str(tmp_path / "adapter_model.npz"))
    save_npz(str(tmp_path / "adapter_model.npz"), pm.adapter_state_dict(), record)
    base = _vit()
    with pytest.raises(ValueError, match=r"missing \['base_model.model.blocks.0.attn.q_proj.lora_A.weight'"):
        PeftModel.from_pretrained(base, str(tmp_path))
    assert not any(isinstance(m, PeftLayer) for m in base.modules())


def test_an_unknown_format_names_the_ones_this_version_reads(tmp_path):
    pm = _trained("lora")
    pm.save_pretrained(str(tmp_path))
    arrays, record = load_arrays(str(tmp_path / "adapter_model.npz"))
    save_npz(str(tmp_path / "adapter_model.npz"), arrays, {**record, "format_version": 3})
    (tmp_path / "adapter_config.json").unlink()
    with pytest.raises(ValueError, match=r"unsupported adapter format 3; this version reads formats \[1, 2\]"):
        PeftModel.from_pretrained(_vit(), str(tmp_path))


def test_the_record_inside_the_unit_wins_over_an_edited_json_copy(tmp_path):
    pm = _trained("lora")
    pm.save_pretrained(str(tmp_path))
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**meta, "lora_alpha": 999.0}))
    with pytest.warns(RuntimeWarning, match="differs from the record"):
        loaded = PeftModel.from_pretrained(_vit(), str(tmp_path))
    assert loaded.peft_config.lora_alpha == pm.peft_config.lora_alpha
    np.testing.assert_array_equal(loaded(_images()).data, pm(_images()).data)


# ------------------------------------------------------------ peft's fields
def test_peft_fields_have_peft_defaults_and_round_trip(tmp_path):
    assert (LoraConfig().task_type, LoraConfig().base_model_name_or_path) == (None, None)
    assert (LoraConfig().fan_in_fan_out, LoraConfig().inference_mode, LoraConfig().bias) == (False, False, "none")
    config = LoraConfig(r=2, target_modules=["q_proj"], task_type="SEQ_CLS", base_model_name_or_path="vit-digits-0-4")
    get_peft_model(_vit(), config).save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(_vit(), str(tmp_path), is_trainable=True)
    assert loaded.peft_config == config and loaded.peft_config is not config
    adapter = AdapterConfig(bottleneck=2, task_type="FEATURE_EXTRACTION", base_model_name_or_path="vit")
    get_peft_model(_vit(), adapter).save_pretrained(str(tmp_path / "adapter"))
    assert PeftModel.from_pretrained(_vit(), str(tmp_path / "adapter"), is_trainable=True).peft_config == adapter


def test_inference_mode_freezes_the_adapter_and_from_pretrained_sets_it_as_peft_does(tmp_path):
    frozen = get_peft_model(_vit(), LoraConfig(r=2, target_modules=["q_proj"], inference_mode=True))
    assert frozen.num_parameters(trainable_only=True) == 0
    live = get_peft_model(_vit(), LoraConfig(r=2, target_modules=["q_proj"]))
    assert live.num_parameters(trainable_only=True) == 2 * (2 * 8 + 8 * 2)
    live.save_pretrained(str(tmp_path))
    trainable = PeftModel.from_pretrained(_vit(), str(tmp_path), is_trainable=True)
    assert trainable.peft_config.inference_mode is False and trainable.num_parameters(trainable_only=True) == 64
    assert PeftModel.from_pretrained(_vit(), str(tmp_path)).peft_config.inference_mode is True
    base = frozen.unload()
    assert all(p.requires_grad for p in base.parameters())  # unload restores what the model had


def test_linear_stores_its_weight_out_by_in_which_is_why_fan_in_fan_out_is_refused():
    assert nn.Linear(3, 5).weight.shape == (5, 3)
    with pytest.raises(ValueError, match=r"LoraConfig: fan_in_fan_out must be False, got True: .*"
                                         r"\(out_features, in_features\), as torch.nn.Linear"):
        LoraConfig(fan_in_fan_out=True)


@pytest.mark.parametrize("kind,fields,needle", [
    (LoraConfig, {"fan_in_fan_out": 1}, "LoraConfig: fan_in_fan_out must be a bool, got 1"),
    (LoraConfig, {"task_type": "CLASSIFY"}, "LoraConfig: task_type must be None or one of peft's task types"),
    (LoraConfig, {"base_model_name_or_path": ""}, "LoraConfig: base_model_name_or_path must be None or a non-empty"),
    (LoraConfig, {"base_model_name_or_path": 3}, "base_model_name_or_path must be .*, got 3"),
    (LoraConfig, {"inference_mode": "yes"}, "LoraConfig: inference_mode must be a bool, got 'yes'"),
    (LoraConfig, {"bias": "lora_only"}, r"LoraConfig: bias must be 'none' or 'all' \(peft's 'lora_only' is not "),
    (LoraConfig, {"bias": "some"}, r"LoraConfig: bias must be 'none' or 'all', got 'some'"),
    (AdapterConfig, {"task_type": "causal_lm"}, "AdapterConfig: task_type must be .*, got 'causal_lm'"),
    (AdapterConfig, {"inference_mode": None}, "AdapterConfig: inference_mode must be a bool, got None"),
])
def test_bad_peft_fields_are_refused_in_the_constructor(kind, fields, needle):
    with pytest.raises(ValueError, match=needle):
        kind(**fields)


def test_a_saved_peft_field_with_a_bad_value_is_refused(tmp_path):
    get_peft_model(_vit(), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(str(tmp_path))
    arrays, record = load_arrays(str(tmp_path / "adapter_model.npz"))
    save_npz(str(tmp_path / "adapter_model.npz"), arrays, {**record, "fan_in_fan_out": True})
    (tmp_path / "adapter_config.json").unlink()
    base = _vit()
    with pytest.raises(ValueError, match="fan_in_fan_out must be False"):
        PeftModel.from_pretrained(base, str(tmp_path))
    assert not any(isinstance(m, PeftLayer) for m in base.modules())


# ------------------------------------------------------------ peft's methods
def test_get_base_model_and_active_adapter():
    base = _vit()
    pm = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    assert pm.get_base_model() is base is pm.base_model
    assert pm.active_adapter == "default"
    with pytest.raises(AttributeError):
        pm.active_adapter = "other"


# -------------------------------------------------------------------- dtypes
def test_a_float64_adapter_into_a_float32_model_warns_naming_arrays_and_dtypes(tmp_path):
    pm = _trained("lora", dtype=np.float64)
    pm.save_pretrained(str(tmp_path))
    with pytest.warns(RuntimeWarning, match=r"6 saved arrays lose precision .*base_model.model.blocks.0.attn.q_proj"
                                            r".lora_A.weight \(float64 -> float32\)"):
        loaded = PeftModel.from_pretrained(_vit(dtype=np.float32), str(tmp_path))
    A = loaded.base_model.blocks[0].attn.q_proj.lora_A.weight.data
    assert A.dtype == np.float32
    np.testing.assert_array_equal(A, pm.base_model.blocks[0].attn.q_proj.lora_A.weight.data.astype(np.float32))


def test_exact_casts_are_silent(tmp_path):
    """float32 into float64 widens; float64 values that float32 holds exactly lose nothing either."""
    pm = _trained("lora", dtype=np.float32)
    pm.save_pretrained(str(tmp_path / "f32"))
    _write_format_1(pm, tmp_path / "f64")
    arrays, record = load_arrays(str(tmp_path / "f64" / "adapter_model.npz"))
    save_npz(str(tmp_path / "f64" / "adapter_model.npz"), {k: v.astype(np.float64) for k, v in arrays.items()}, record)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wide = PeftModel.from_pretrained(_vit(dtype=np.float64), str(tmp_path / "f32"))
        same = PeftModel.from_pretrained(_vit(dtype=np.float32), str(tmp_path / "f64"))
    w = pm.base_model.head.modules_to_save.weight.data
    assert wide.base_model.head.modules_to_save.weight.dtype == np.float64
    np.testing.assert_array_equal(wide.base_model.head.modules_to_save.weight.data, w)
    np.testing.assert_array_equal(same(_images()).data, pm(_images()).data)


def test_values_the_model_dtype_cannot_hold_are_refused_before_any_change(tmp_path):
    _trained("lora").save_pretrained(str(tmp_path))
    arrays, record = load_arrays(str(tmp_path / "adapter_model.npz"))
    arrays["base_model.model.head.bias"] = np.full(3, 1e300)
    save_npz(str(tmp_path / "adapter_model.npz"), arrays, record)
    (tmp_path / "adapter_config.json").unlink()
    base = _vit(dtype=np.float32)
    before = base.state_dict()
    with pytest.raises(ValueError, match=r"overflow the model's dtype: base_model.model.head.bias "
                                         r"\(float64 -> float32\)"):
        PeftModel.from_pretrained(base, str(tmp_path))
    assert not any(isinstance(m, PeftLayer) for m in base.modules())
    for k, v in base.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
