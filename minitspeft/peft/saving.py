"""Saving and loading adapters (after Hugging Face ``peft``'s ``save_pretrained`` / ``from_pretrained``).

``adapter_model.npz`` is the unit: the adapter's arrays and, inside the same
file, the record that rebuilds it (method, configs, base model class). It is
written atomically (:mod:`minitspeft.io`), so a save that is interrupted
leaves the old adapter or the new one. ``adapter_config.json`` is written
after it, as a readable copy of the record; loading uses the record inside
the ``.npz`` and warns if the copy differs (a hand edit or an interrupted
save). Files written before the record moved into the ``.npz`` are read
from ``adapter_config.json``.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from .. import backend
from ..io import load_arrays, save_json, save_npz
from .config import AdapterConfig, GateConfig, LoraConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.npz"
FORMAT_VERSION = 1


def adapter_record(peft_model) -> dict:
    """The record saved with an adapter: format, method, base model class and every config field."""
    return {"format_version": FORMAT_VERSION, "method": peft_model.method,
            "base_model_class": type(peft_model.base_model).__name__,
            "peft_type": type(peft_model.peft_config).__name__, "config": peft_model.peft_config.to_dict(),
            "gate": None if peft_model.gate_config is None else peft_model.gate_config.to_dict()}


def save_adapter(peft_model, directory: str) -> None:
    """``PeftModel.save_pretrained`` (see there)."""
    if not any(True for _ in peft_model.peft_layers()):
        raise ValueError("save_pretrained: the model holds no adapters (merge_and_unload() or unload() removed "
                         "them); save the base model's state_dict instead")
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"save_pretrained: directory must be a str or os.PathLike, got {type(directory).__name__}")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"save_pretrained: {directory!r} exists and is not a folder")
    os.makedirs(directory, exist_ok=True)
    record = adapter_record(peft_model)
    save_npz(os.path.join(directory, WEIGHTS_NAME), peft_model.adapter_state_dict(), record)
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
                      "weights", RuntimeWarning, stacklevel=3)
    return arrays, record


def configs_from(meta) -> tuple:
    """Rebuild ``(config, gate)`` from a saved record, refusing anything unknown.

    Raises:
        ValueError: naming the format, type, field or method that does not fit.
    """
    kinds = {"LoraConfig": LoraConfig, "AdapterConfig": AdapterConfig}
    if not isinstance(meta, dict):
        raise ValueError("from_pretrained: the config is not a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"from_pretrained: unsupported adapter format {meta.get('format_version')!r}")
    kind = kinds.get(meta.get("peft_type"))
    if kind is None:
        raise ValueError(f"from_pretrained: unknown peft_type {meta.get('peft_type')!r}; known: {sorted(kinds)}")
    try:
        config = kind.from_dict(meta["config"])
        gate = None if meta.get("gate") is None else GateConfig.from_dict(meta["gate"])
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


def load_adapter(cls, base_model, directory: str, is_trainable: bool = False):
    """``PeftModel.from_pretrained`` (see there): everything is read and checked, then the model is wrapped;
    if anything still fails, the wrapping is undone before the error propagates."""
    arrays, record = _read_unit(directory)
    config, gate = configs_from(record)
    saved_class = record.get("base_model_class")
    if saved_class is not None and saved_class != type(base_model).__name__:
        raise ValueError(f"from_pretrained: the adapter was trained on a {saved_class}, "
                         f"not a {type(base_model).__name__}")
    model = cls(base_model, config, gate)
    try:
        bounds = {n: p.lower_bound for n, p in model.base_model.named_parameters() if p.lower_bound is not None}
        problems = _problems(model.adapter_state_dict(), arrays, bounds)
        if problems:
            raise ValueError(f"from_pretrained: the saved adapter does not fit this model: {'; '.join(problems)}")
        params = dict(model.base_model.named_parameters())
        values = {k: backend.asarray(v, dtype=params[k].dtype).copy() for k, v in arrays.items()}
    except BaseException:
        model.unload()
        raise
    for k, v in values.items():
        params[k].data = v
    if not is_trainable:
        model.requires_grad_(False)
        model.eval()
    return model
