"""Training checkpoints: one atomic ``.npz`` per checkpoint, and a fingerprint of everything that shapes a run.

A checkpoint holds the model's and the optimiser's state, the host RNG, the
step, the history, and the run's *fingerprint*: the loop's settings, the
model (its class, configurations and parameter shapes), the PEFT and gate
configurations, every optimiser group's settings and a hash of the training
data. ``fit(resume=True)`` continues only from a checkpoint whose fingerprint
equals the new run's, and the refusal names the fields that differ. It is
saved and loaded as one unit (:mod:`minitspeft.io`), and a load that fails
changes nothing.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from . import backend
from .io import load_arrays, save_arrays
from .nn.module import Module
from .optim_state import state_dict_from_arrays, state_dict_to_arrays

CHECKPOINT = "checkpoint.npz"

__all__ = ["CHECKPOINT", "run_fingerprint", "save_checkpoint", "load_checkpoint"]


def _data_hash(x, y) -> str:
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(x), np.ascontiguousarray(y)):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def _configs(model: Module) -> dict:
    """The configurations of ``model`` (and of the base model inside a PeftModel) as plain dicts."""
    out = {"class": type(model).__name__}
    base = getattr(model, "base_model", None)
    if base is not None:
        out["base_class"] = type(base).__name__
    for owner in (model, base):
        config = getattr(owner, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            out["config"] = config.to_dict()
    for name in ("peft_config", "gate_config"):
        config = getattr(model, name, None)
        out[name] = None if config is None else config.to_dict()
    for name in ("patch_size", "image_size", "channels"):
        if hasattr(base or model, name):
            out[name] = getattr(base or model, name)
    return out


def _plain(value):
    """``value`` with NumPy scalars as Python numbers and tuples as lists, nested (a config may hold
    ``np.int64(8)``): JSON-able, and equal to what a saved record reads back as."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def run_fingerprint(model: Module, opt, x, y, loop: dict) -> dict:
    """What must be equal for a checkpoint to continue a run: ``{"loop", "data", "model", "parameters",
    "frozen_weights", "optimizer"}``, JSON-able even where a config holds NumPy numbers
    (``frozen_weights`` hashes the values of the frozen parameters, so a run on another base model of the
    same shape is refused).

    Args:
        model: the model being trained; opt: its optimiser (its groups' settings count, not their ``lr``,
            which the schedule moves); x, y: the training data (hashed); loop: ``fit``'s own settings.
    """
    params = [f"{n}:{tuple(p.shape)}:{p.dtype}:{int(p.requires_grad)}" for n, p in model.named_parameters()]
    frozen = hashlib.sha256()  # the frozen weights' values: resuming on another base model is refused
    for n, p in model.named_parameters():
        if not p.requires_grad:
            frozen.update(n.encode())
            frozen.update(np.ascontiguousarray(backend.to_numpy(p.data)).tobytes())
    groups = [{k: v for k, v in g.items() if k not in ("params", "lr")} | {"n_params": len(g["params"])}
              for g in opt.param_groups]
    return _plain({"loop": dict(loop), "data": {"n": len(x), "sha256": _data_hash(x, y)}, "model": _configs(model),
                   "parameters": hashlib.sha256("\n".join(params).encode()).hexdigest()[:32],
                   "frozen_weights": frozen.hexdigest()[:32], "optimizer": groups})


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out | {f"{prefix}.len": len(value)}
    return {prefix: value}


def differences(saved: dict, current: dict) -> list:
    """``["field: saved -> current", ...]`` for every (dotted) field that differs."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, "(absent)") != b.get(k, "(absent)")]


def save_checkpoint(folder: str, model: Module, opt, step: int, history: list, fingerprint: dict) -> str:
    """Write model, optimiser and RNG state after ``step`` steps to ``folder/checkpoint.npz`` as one unit
    (a readable copy of its record goes to ``checkpoint.npz.json``); return the path.

    The optimiser's state dict is stored in its flat form (:func:`~minitspeft.optim_state.state_dict_to_arrays`):
    arrays ``optim.{index}.{key}`` and the record's ``"optim"`` entry. The file is written whole or not at all
    (:func:`~minitspeft.io.save_arrays`), so weights and record are both new or both old.

    Raises:
        OSError: if the folder cannot be created or written (the previous checkpoint stays whole).
    """
    os.makedirs(folder, exist_ok=True)
    arrays = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_arrays, opt_meta = state_dict_to_arrays(opt.state_dict())  # the optimiser's state dict, flat
    arrays.update({f"optim.{k}": v for k, v in opt_arrays.items()})
    meta = {"step": step, "history": history, "rng": backend.get_rng_state(), "optim": opt_meta,
            "fingerprint": fingerprint}
    path = os.path.join(folder, CHECKPOINT)
    save_arrays(path, arrays, meta)
    return path


def _check_record(where: str, meta, steps: int) -> None:
    if not isinstance(meta, dict):
        raise ValueError(f"{where} holds no record (a file from elsewhere, or written by an older version)")
    step, history = meta.get("step"), meta.get("history")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 < step <= steps:
        raise ValueError(f"{where}: its step {step!r} is not in [1, steps={steps}]")
    if not isinstance(history, list) or len(history) != step or not all(isinstance(h, dict) for h in history):
        raise ValueError(f"{where}: its history does not hold one record per step up to {step}")
    for key in ("rng", "optim", "fingerprint"):
        if not isinstance(meta.get(key), dict):
            raise ValueError(f"{where}: its record has no {key!r} object")


def _check_values(where: str, model: Module, arrays: dict) -> None:
    """Every saved array is a finite float array, and a bounded parameter's values respect its bound."""
    bounds = {f"model.{n}": p.lower_bound for n, p in model.named_parameters()}
    for name, value in arrays.items():
        if value.dtype.kind != "f" or not np.isfinite(value).all():
            raise ValueError(f"{where}: array {name!r} is not finite floating point ({value.dtype}); the file is "
                             "damaged")
        bound = bounds.get(name)
        if bound is not None and (value < bound).any():
            raise ValueError(f"{where}: {name!r} holds values below its lower bound {bound}")


def load_checkpoint(folder: str, model: Module, opt, fingerprint: dict, steps: int) -> tuple:
    """Restore a checkpoint written by :func:`save_checkpoint`; return ``(step, history)``. Files written before
    the optimiser's state dict took PyTorch's layout (AdamW's ``m`` and ``v``, groups without indices) load too.

    Raises:
        ValueError: if the file is damaged, its record is incomplete, its step is past ``steps``,
            it was written by a run with another fingerprint (naming every field that differs), or
            it does not fit the model or optimiser. Model, optimiser and RNG are unchanged then.
    """
    where = f"fit: the checkpoint in {folder!r}"
    arrays, meta = load_arrays(os.path.join(folder, CHECKPOINT))
    _check_record(where, meta, steps)
    diff = differences(meta["fingerprint"], fingerprint)
    if diff:
        raise ValueError(f"{where} was written by a run with other settings: {'; '.join(diff)}")
    _check_values(where, model, arrays)
    before = (model.state_dict(), opt.state_dict(), backend.get_rng_state())
    try:
        opt_state = state_dict_from_arrays({k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")},
                                           meta["optim"], [len(g["params"]) for g in opt.param_groups], where)
        model.load_state_dict({k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")})
        opt.load_state_dict(opt_state)
        backend.set_rng_state(meta["rng"])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        model.load_state_dict(before[0])
        opt.load_state_dict(before[1])
        backend.set_rng_state(before[2])
        raise ValueError(f"{where} does not fit this model/optimiser: {exc}") from exc
    return meta["step"], list(meta["history"])
