"""``Config``: the base class of every configuration (model sizes, PEFT methods, the gate).

A config is a dataclass whose fields are checked by :meth:`Config.validate`
when it is built, when :meth:`Config.replace` makes a changed copy, and when
:meth:`Config.from_dict` reads a saved one, so a bad value is refused with a
``ValueError`` naming the field before anything is built from it.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Config"]


def _plain(value):
    """``value`` with NumPy scalars (also inside lists and tuples) turned into Python numbers."""
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "shape", None) == () else value


@dataclasses.dataclass
class Config:
    """Base of the configurations; subclasses are dataclasses that implement :meth:`validate`."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field (subclasses: raise ``ValueError`` naming the first bad one)."""

    def to_dict(self) -> dict:
        """The fields as a dict; NumPy scalars (``np.int64(8)``, ``np.float32(0.1)``) become Python numbers,
        so the dict is JSON-able whenever the values are."""
        return {k: _plain(v) for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed, checked again.

        Raises:
            ValueError: for an unknown field name, or a value :meth:`validate` refuses.
        """
        self._refuse_unknown("replace", changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, fields: dict) -> "Config":
        """Build a config from :meth:`to_dict`'s output.

        Raises:
            ValueError: for unknown or missing fields (listing them), or a value :meth:`validate` refuses.
        """
        cls._refuse_unknown("from_dict", fields)
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in fields]
        if missing:
            raise ValueError(f"{cls.__name__}.from_dict: missing fields {missing}")
        return cls(**fields)

    @classmethod
    def _refuse_unknown(cls, op: str, fields: dict) -> None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}.{op}: unknown fields {unknown}; known: {sorted(known)}")
