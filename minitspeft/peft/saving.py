"""Saving and loading adapters in Hugging Face ``peft``'s layout (``save_pretrained`` / ``from_pretrained``).

``adapter_model.npz`` is the unit: the adapter's arrays and, inside the same
file, the record that rebuilds it. It is written atomically
(:mod:`minitspeft.io`), so a save that is interrupted leaves the old adapter
or the new one. ``adapter_config.json`` is written after it, as a readable
copy of the record; loading uses the record inside the ``.npz`` and warns if
the copy differs (a hand edit or an interrupted save).

The record (format 2) is flat, as peft writes ``adapter_config.json``: the
``peft_type`` (``"LORA"`` for LoRA and DoRA, ``"BOTTLENECK_ADAPTER"`` for
bottleneck adapters) and every config field (``r``, ``lora_alpha``,
``target_modules``, ``use_dora``, ...) at the top level, plus this project's
keys ``format_version``, ``method``, ``base_model_class`` and ``token_gate``
(the :class:`GateConfig` fields, or null). The arrays are named as peft names
them: ``base_model.model.`` and the name in the base model
(``base_model.model.blocks.0.attn.q_proj.lora_A.weight``), with a
``modules_to_save`` copy under its module's own name
(``base_model.model.head.weight``); peft's adapter name ``default`` is not
in the names, as in peft's files.

Older files still load: format 1 (a nested record ``{"peft_type": "LoraConfig",
"config": {...}, "gate": {...}}`` and arrays named as
``PeftModel.adapter_state_dict``), and files from before the record moved
into the ``.npz`` (format 1, the record in ``adapter_config.json`` only).
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from .. import backend
from ..io import load_arrays, save_json, save_npz
from .base import ModulesToSaveWrapper
from .config import AdapterConfig, GateConfig, LoraConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.npz"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
WEIGHTS_PREFIX = "base_model.model."
GATE_KEY = "token_gate"
# The record's top-level keys that are not config fields.
RECORD_KEYS = ("format_version", "peft_type", "method", "base_model_class", GATE_KEY)
PEFT_TYPES = {"LORA": LoraConfig, "BOTTLENECK_ADAPTER": AdapterConfig}
_FORMAT_1_TYPES = {"LoraConfig": LoraConfig, "AdapterConfig": AdapterConfig}


def adapter_record(peft_model) -> dict:
    """The record saved with an adapter (format 2, flat as peft's ``adapter_config.json``; derived here).

    Returns:
        ``{"format_version": 2, "peft_type": ..., <every config field>, "method": ...,
        "base_model_class": ..., "token_gate": <GateConfig fields> or None}``, JSON-able.
    """
    config, gate = peft_model.peft_config, peft_model.gate_config
    return {"format_version": FORMAT_VERSION, "peft_type": config.peft_type, **config.to_dict(),
            "method": peft_model.method, "base_model_class": type(peft_model.base_model).__name__,
            GATE_KEY: None if gate is None else gate.to_dict()}


def file_names(base_model, names) -> dict:
    """``{name in PeftModel.adapter_state_dict: name in the file}``, as peft names saved weights.

    The file name is ``base_model.model.`` plus the name in the base model; a
    ``modules_to_save`` copy drops its ``modules_to_save.`` part, so
    ``head.modules_to_save.weight`` is saved as ``base_model.model.head.weight``
    (as in Hugging Face peft, whose adapter name ``default`` is dropped too).
    """
    wrappers = [n + "." for n, m in base_model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    out = {}
    for name in names:
        key = name
        for w in wrappers:
            if name.startswith(w + "modules_to_save."):
                key = w + name[len(w + "modules_to_save."):]
        out[name] = WEIGHTS_PREFIX + key
    return out


def save_adapter(peft_model, directory: str) -> None:
    """``PeftModel.save_pretrained`` (see there)."""
    if not any(True for _ in peft_model.peft_layers()):
        raise ValueError("save_pretrained: the model holds no adapters (merge_and_unload() or unload() removed "
                         "them); save the base model's state_dict instead")
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"save_pretrained: directory must be a str or os.PathLike, got {type(directory).__name__}")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"save_pretrained: {directory!r} exists and is not a folder")
    record = adapter_record(peft_model)
    state = peft_model.adapter_state_dict()
    names = file_names(peft_model.base_model, state)
    os.makedirs(directory, exist_ok=True)
    save_npz(os.path.join(directory, WEIGHTS_NAME), {names[k]: v for k, v in state.items()}, record)
    save_json(os.path.join(directory, CONFIG_NAME), record)


def _read_unit(directory: str) -> tuple:
    """``(arrays, record)`` of a saved adapter; the record inside the ``.npz`` wins over the JSON copy."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"from_pretrained: directory must be a str or os.PathLike, got {type(directory).__name__}")
    weights, side_path = os.path.join(directory, WEIGHTS_NAME), os.path.join(directory, CONFIG_NAME)
    if not os.path.exists(weights):
        raise FileNotFoundError(f"from_pretrained: no {WEIGHTS_NAME} in {directory!r}")
    arrays, record = load_arrays(weights)
    side, damaged = None, None
    if os.path.exists(side_path):
        with open(side_path) as fh:
            try:
                side = json.load(fh)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                damaged = exc
    if record is None:  # written before the record moved into the .npz
        if damaged is not None:
            raise ValueError(f"from_pretrained: {CONFIG_NAME} is not valid JSON: {damaged}")
        if side is None:
            raise FileNotFoundError(f"from_pretrained: {WEIGHTS_NAME} holds no record and there is no {CONFIG_NAME}")
        return arrays, side
    if damaged is not None or (side is not None and side != record):
        warnings.warn(f"from_pretrained: {CONFIG_NAME} in {directory!r} differs from the record saved inside "
                      f"{WEIGHTS_NAME} (a hand edit or an interrupted save); using the record saved with the "
                      "weights", RuntimeWarning, stacklevel=4)
    return arrays, record


def configs_from(meta) -> tuple:
    """Rebuild ``(config, gate)`` from a saved record of format 2 (flat) or 1 (nested), refusing anything unknown.

    Raises:
        ValueError: naming the format, type, field or method that does not fit.
    """
    if not isinstance(meta, dict):
        raise ValueError("from_pretrained: the config is not a JSON object")
    version = meta.get("format_version")
    if version not in READABLE_FORMATS or isinstance(version, bool):
        raise ValueError(f"from_pretrained: unsupported adapter format {version!r}; this version reads formats "
                         f"{list(READABLE_FORMATS)}")
    if version == 1:
        kinds, fields, gate_fields = _FORMAT_1_TYPES, meta.get("config"), meta.get("gate")
    else:
        kinds, gate_fields = PEFT_TYPES, meta.get(GATE_KEY)
        fields = {k: v for k, v in meta.items() if k not in RECORD_KEYS}
    kind = kinds.get(meta.get("peft_type"))
    if kind is None:
        raise ValueError(f"from_pretrained: unknown peft_type {meta.get('peft_type')!r} in a format {version} "
                         f"record; known: {sorted(kinds)}")
    try:
        config = kind.from_dict(fields)
        gate = None if gate_fields is None else GateConfig.from_dict(gate_fields)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"from_pretrained: the saved config has unknown or missing fields or bad values: "
                         f"{exc}") from None
    expected = ("ts-" if gate is not None else "") + config.method
    if meta.get("method") != expected:
        raise ValueError(f"from_pretrained: method {meta.get('method')!r} does not match its config ({expected!r})")
    return config, gate


def _problems(expected: dict, arrays: dict, bounds: dict) -> list:
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    wrong = [f"{k}: expected {expected[k].shape}, got {arrays[k].shape}"
             for k in expected if k in arrays and arrays[k].shape != expected[k].shape]
    dtypes = [f"{k}: {v.dtype}" for k, v in arrays.items() if v.dtype.kind != "f"]
    values = [k for k, v in arrays.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    values += [k for k, v in arrays.items() if k in bounds and v.dtype.kind == "f" and (v < bounds[k]).any()]
    return [f"{what} {items}" for what, items in (("missing", missing), ("unexpected", unexpected),
                                                  ("wrong shapes", wrong), ("non-float dtypes", dtypes),
                                                  ("non-finite or out-of-bound values", values)) if items]


def _cast(arrays: dict, dtypes: dict) -> tuple:
    """``(values, lossy, overflow)``: each array cast to its parameter's dtype (a backend array); the names
    (with ``file dtype -> model dtype``) whose values the cast changed, and those it made non-finite."""
    values, lossy, overflow = {}, [], []
    for k, v in arrays.items():
        with np.errstate(over="ignore", invalid="ignore"):
            host = v.astype(dtypes[k])  # a copy
        if v.dtype != host.dtype:
            what = f"{k} ({v.dtype} -> {host.dtype})"
            if not np.isfinite(host).all():
                overflow.append(what)
            elif not np.array_equal(host, v):
                lossy.append(what)
        values[k] = backend.asarray(host)
    return values, lossy, overflow


def _listed(items: list, most: int = 6) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def load_adapter(cls, base_model, directory: str, is_trainable: bool = False):
    """``PeftModel.from_pretrained`` (see there): everything is read and checked, then the model is wrapped;
    if anything still fails, the wrapping is undone before the error propagates."""
    arrays, record = _read_unit(directory)
    config, gate = configs_from(record)
    saved_class = record.get("base_model_class")
    if saved_class is not None and saved_class != type(base_model).__name__:
        raise ValueError(f"from_pretrained: the adapter was trained on a {saved_class}, "
                         f"not a {type(base_model).__name__}")
    config = config.replace(inference_mode=not is_trainable)  # as peft does
    model = cls(base_model, config, gate)
    try:
        expected = model.adapter_state_dict()
        peft_names = record["format_version"] >= 2  # format 1 named the arrays as adapter_state_dict
        names = file_names(model.base_model, expected) if peft_names else {k: k for k in expected}
        params = dict(model.base_model.named_parameters())
        bounds = {names[k]: params[k].lower_bound for k in expected if params[k].lower_bound is not None}
        problems = _problems({names[k]: v for k, v in expected.items()}, arrays, bounds)
        if problems:
            raise ValueError(f"from_pretrained: the saved adapter does not fit this model: {'; '.join(problems)}")
        values, lossy, overflow = _cast(arrays, {names[k]: params[k].dtype for k in expected})
        if overflow:
            raise ValueError(f"from_pretrained: saved values overflow the model's dtype: {_listed(overflow)}")
    except BaseException:
        model.unload()
        raise
    if lossy:
        warnings.warn(f"from_pretrained: {len(lossy)} saved arrays lose precision when cast to the model's dtype: "
                      f"{_listed(lossy)}; build the base model in the file's dtype (e.g. .double()) to load them "
                      "exactly", RuntimeWarning, stacklevel=3)
    for k in expected:
        params[k].data = values[names[k]]
    if not is_trainable:
        model.requires_grad_(False)
        model.eval()
    return model
