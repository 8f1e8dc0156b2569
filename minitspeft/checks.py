"""Argument checks shared by every layer: one way to say "a positive integer", "a finite number", ...

Each check raises ``ValueError`` naming the owner (the op, class or config),
the argument and the value, e.g. ``LoraConfig: r must be an integer >= 1, got 0``.
Booleans are never accepted as numbers (``True`` is an ``int`` in Python).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

__all__ = ["is_int", "is_number", "one_axis", "check", "check_int", "check_number"]


def is_int(x) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(x, Integral) and not isinstance(x, bool)


def one_axis(op: str, axis, ndim: int) -> int:
    """``axis`` (an integer in ``[-ndim, ndim)``) as a non-negative int.

    Raises:
        IndexError: naming ``op`` for an axis out of range (as PyTorch). TypeError: for a non-integer.
    """
    if not is_int(axis):
        raise TypeError(f"{op}: dim must be an integer, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise IndexError(f"{op}: dim {axis} is out of range for a tensor with {ndim} dimensions")
    return int(axis) % ndim


def is_number(x) -> bool:
    """A finite real number (Python or NumPy), not a bool, NaN or infinity."""
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def check(cond: bool, owner: str, name: str, value, need: str) -> None:
    """Raise ``ValueError("{owner}: {name} must be {need}, got {value!r}")`` unless ``cond``."""
    if not cond:
        raise ValueError(f"{owner}: {name} must be {need}, got {value!r}")


def check_int(owner: str, name: str, value, low: int = 1, allow_none: bool = False) -> None:
    """``value`` is an integer ``>= low`` (or None, if allowed).

    Raises:
        ValueError: naming ``owner``, ``name`` and ``value`` otherwise.
    """
    if value is None and allow_none:
        return
    check(is_int(value) and value >= low, owner, name, value,
          f"an integer >= {low}" + (" or None" if allow_none else ""))


def check_number(owner: str, name: str, value, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> None:
    """``value`` is a finite number in the interval given by ``low`` and ``high`` (or None, if allowed).

    ``low_open`` / ``high_open`` exclude the end points, so
    ``check_number(o, "p", p, 0, 1, high_open=True)`` asks for ``[0, 1)``.

    Raises:
        ValueError: naming ``owner``, ``name``, the interval and ``value`` otherwise.
    """
    if value is None and allow_none:
        return
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if low is not None and high is not None:
        need = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        need = f"{'>' if low_open else '>='} {low}"
    elif high is not None:
        need = f"{'<' if high_open else '<='} {high}"
    else:
        need = "a finite number"
    check(ok, owner, name, value, need + (" or None" if allow_none else ""))
