"""An optimiser's state dict: the checks :meth:`Optimizer.load_state_dict` makes before it changes anything,
and the flat form a file holds (named arrays plus a JSON-able record).

The state dict itself is laid out as PyTorch's (``{"state": {index: {...}}, "param_groups": [...]}``, see
:meth:`minitspeft.optim.Optimizer.state_dict`). These functions take the optimiser as an argument and
import nothing from :mod:`minitspeft.optim`, which imports them.
"""

from __future__ import annotations

from . import backend
from .checks import check_int, check_number, is_int

__all__ = ["state_dict_to_arrays", "state_dict_from_arrays", "checked_groups", "checked_state", "LEGACY_KEYS"]

LEGACY_KEYS = {"m": "exp_avg", "v": "exp_avg_sq"}  # AdamW's moments before they took PyTorch's names


def _length(value) -> str:
    return str(len(value)) if isinstance(value, (list, tuple)) else "no"


def checked_groups(opt, n: str, saved_groups) -> tuple:
    """``(settings per group, {saved index: Parameter})`` for ``opt`` after checking ``saved_groups``: one
    per group of ``opt``, each listing as many indices as its group has parameters (mapped in order, as
    PyTorch maps them), with the same setting names and values the optimiser accepts. Changes nothing.

    Raises:
        ValueError: naming ``n`` (the caller) and the first mismatch.
    """
    if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(opt.param_groups):
        raise ValueError(f"{n}: {_length(saved_groups)} parameter groups saved, {len(opt.param_groups)} present")
    out, params = [], {}
    for i, (group, saved) in enumerate(zip(opt.param_groups, saved_groups, strict=True)):
        ids = saved.get("params") if isinstance(saved, dict) else None
        if not isinstance(ids, (list, tuple)) or len(ids) != len(group["params"]):
            raise ValueError(f"{n}: group {i} saved {_length(ids)} parameter indices, "
                             f"{len(group['params'])} present")
        settings = {k: v for k, v in saved.items() if k != "params"}
        if set(settings) != set(group) - {"params"}:
            raise ValueError(f"{n}: group {i}'s saved settings {sorted(settings)} are not this optimiser's "
                             f"{sorted(set(group) - {'params'})}")
        trial = {**settings, "params": group["params"]}
        try:
            check_int(n, "frozen_until", trial["frozen_until"], 0)
            check_number(n, "initial_lr", trial["initial_lr"], 0)
            opt._check_group(trial)  # the optimiser's own checks (they normalise, e.g. betas to a tuple)
        except ValueError as exc:
            raise ValueError(f"{n}: group {i}: {exc}") from None
        for idx, p in zip(ids, group["params"], strict=True):
            if not is_int(idx) or idx in params:
                raise ValueError(f"{n}: group {i} lists the index {idx!r}: not an integer, or listed twice")
            params[idx] = p
        out.append({k: v for k, v in trial.items() if k != "params"})
    return out, params


def checked_state(opt, n: str, saved_state, params: dict, step_count: int) -> dict:
    """The new ``opt.state`` (keyed by ``id``, arrays copied in each parameter's dtype) after checking every
    entry of ``saved_state``: an index some group lists, the keys ``{"step", *opt._state_keys}``, a step in
    ``[1, step_count]``, floating arrays of the parameter's shape. Changes nothing.

    Raises:
        ValueError: naming ``n`` and the first mismatch.
    """
    if not isinstance(saved_state, dict):
        raise ValueError(f"{n}: 'state' must be a dict, got {type(saved_state).__name__}")
    keys, state = {"step", *opt._state_keys}, {}
    for idx, st in saved_state.items():
        if isinstance(idx, bool) or idx not in params:
            raise ValueError(f"{n}: there is state for parameter index {idx!r}, which no group lists")
        p = params[idx]
        if not isinstance(st, dict) or set(st) != keys:
            found = sorted(st) if isinstance(st, dict) else type(st).__name__
            raise ValueError(f"{n}: parameter {idx}'s state has keys {found}, expected {sorted(keys)}")
        if not is_int(st["step"]) or not 1 <= st["step"] <= step_count:
            raise ValueError(f"{n}: parameter {idx}'s step {st['step']!r} is not in [1, step_count={step_count}]")
        for key in opt._state_keys:
            v = st[key]
            if not (hasattr(v, "shape") and hasattr(v, "dtype")) or tuple(v.shape) != p.shape or v.dtype.kind != "f":
                got = f"{tuple(v.shape)} {v.dtype}" if hasattr(v, "dtype") else type(v).__name__
                raise ValueError(f"{n}: parameter {idx}'s {key!r} is {got}; expected a floating array of "
                                 f"shape {p.shape}")
        state[id(p)] = {"step": int(st["step"]),
                        **{k: backend.asarray(st[k], dtype=p.dtype).copy() for k in opt._state_keys}}
    return state


def state_dict_to_arrays(state_dict: dict) -> tuple:
    """The flat form of a state dict, for a file: ``(arrays, record)`` with the arrays named
    ``"{index}.{key}"`` and a JSON-able ``record = {"groups": [...], "steps": {"index": step},
    "step_count": n}`` (each group's settings with its ``"params"`` indices; tuples become lists).
    The arrays are those of ``state_dict`` (not copied again). Derived here.
    """
    arrays = {f"{i}.{k}": v for i, st in state_dict["state"].items() for k, v in st.items() if k != "step"}
    steps = {str(i): st["step"] for i, st in state_dict["state"].items()}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return arrays, {"groups": groups, "steps": steps, "step_count": state_dict["step_count"]}


def state_dict_from_arrays(arrays: dict, record: dict, group_sizes: list, owner: str = "state_dict_from_arrays") \
        -> dict:
    """The state dict back from :func:`state_dict_to_arrays`'s ``(arrays, record)``, or from the older flat
    form (groups without ``"params"``, AdamW's moments named ``m`` and ``v``): a group without indices gets
    the next ``group_sizes[i]`` ones, in order. Only the layout is checked here; the values are checked by
    :meth:`~minitspeft.optim.Optimizer.load_state_dict`.

    Raises:
        TypeError: unless ``arrays`` is a mapping and ``record`` a dict with a ``"groups"`` list and a
            ``"steps"`` dict; ValueError: for an array or step name that is not ``"{index}[.{key}]"``.
    """
    if not hasattr(arrays, "items") or not isinstance(record, dict) or not isinstance(record.get("groups"), list) \
            or not isinstance(record.get("steps"), dict):
        raise TypeError(f"{owner}: expected (arrays dict, record dict with 'groups' and 'steps'), got "
                        f"({type(arrays).__name__}, {type(record).__name__})")
    groups, first = [], 0
    for g, size in zip(record["groups"], list(group_sizes) + [0] * len(record["groups"])):
        g = dict(g) if isinstance(g, dict) else {"params": None}
        g.setdefault("params", list(range(first, first + size)))
        first += size
        groups.append({k: (tuple(v) if k == "betas" and isinstance(v, list) else v) for k, v in g.items()})
    state: dict = {}
    for name, value in [*arrays.items(), *((f"{i}.step", s) for i, s in record["steps"].items())]:
        idx, _, key = str(name).partition(".")
        if not idx.isdigit() or not key:
            raise ValueError(f"{owner}: the state entry {name!r} is not named '{{index}}.{{key}}'")
        state.setdefault(int(idx), {})[LEGACY_KEYS.get(key, key)] = value
    return {"state": state, "param_groups": groups, "step_count": record.get("step_count")}
