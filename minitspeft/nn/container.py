"""``Sequential``: modules applied one after another (after ``torch.nn.Sequential``)."""

from __future__ import annotations

from collections import OrderedDict

from ..checks import is_int
from .module import Module

__all__ = ["Sequential"]


class Sequential(Module):
    """Modules applied in order, as PyTorch's ``torch.nn.Sequential``: ``Sequential(m0, m1)(x) == m1(m0(x))``.

    The children are named ``"0"``, ``"1"``, ... (so state-dict keys read ``"0.weight"``, as in PyTorch),
    or by the keys of a single ``OrderedDict`` argument. ``len(seq)``, ``for m in seq``, ``seq[i]``
    (negative ``i`` counts from the end), ``seq[a:b]`` (a ``Sequential`` of those modules, under their
    names, as PyTorch) and ``seq.append(m)`` work as in PyTorch.

    Args:
        *modules: Modules, or one ``OrderedDict`` of ``{name: Module}``.

    Input and output: whatever the first module takes and the last one returns.

    Raises:
        TypeError: for an argument that is not a Module.
        ValueError: for a name that is not a non-empty string without dots, or that would hide an
            attribute of the class (``"forward"``, ``"training"``, ...), or is used twice.
    """

    def __init__(self, *modules):
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            self._check_child(name, m)
        for name, m in items:
            setattr(self, name, m)

    def _check_child(self, name, module) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"Sequential: {name!r} must be a Module, got {type(module).__name__}")
        if not isinstance(name, str) or not name or "." in name or hasattr(type(self), name):
            raise ValueError(f"Sequential: the name {name!r} must be a non-empty string without dots that is not "
                             "an attribute of Sequential")
        if name in vars(self):
            raise ValueError(f"Sequential: the name {name!r} is used twice")

    def _items(self) -> list:
        return list(self.named_children())

    def __len__(self) -> int:
        return len(self._items())

    def __iter__(self):
        return iter([m for _, m in self._items()])

    def __getitem__(self, index):
        """The module at position ``index``, or a ``Sequential`` of the modules of a slice.

        Raises:
            IndexError: for ``index`` outside ``[-len, len)``; TypeError: for an index that is not an
                integer or a slice.
        """
        items = self._items()
        if isinstance(index, slice):
            return Sequential(OrderedDict(items[index]))
        if not is_int(index):
            raise TypeError(f"Sequential: indices must be integers or slices, got {type(index).__name__}")
        if not -len(items) <= index < len(items):
            raise IndexError(f"Sequential: index {index} is out of range for {len(items)} modules")
        return items[index][1]

    def append(self, module: Module) -> "Sequential":
        """Add ``module`` at the end, named ``str(len(self))``; return ``self`` (as PyTorch).

        Raises:
            TypeError, ValueError: as the constructor.
        """
        name = str(len(self))
        self._check_child(name, module)
        setattr(self, name, module)
        return self

    def forward(self, x):
        for m in self:
            x = m(x)
        return x
