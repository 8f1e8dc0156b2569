"""Whether ops record a graph: ``no_grad``, ``enable_grad`` and ``is_grad_enabled`` (after PyTorch).

The flag is per thread, as in PyTorch: ``no_grad()`` in one thread does not
stop another thread's training step from recording its graph.
"""

from __future__ import annotations

import functools
import threading


class _GradMode(threading.local):
    """One flag per thread; True (record) unless a ``no_grad`` block is active."""

    enabled = True


_grad_mode = _GradMode()


def is_grad_enabled() -> bool:
    """Return whether ops currently record a graph (in this thread)."""
    return _grad_mode.enabled


class no_grad:
    """Context manager and decorator that stops ops from recording a graph.

    Example::

        with mt.no_grad():
            logits = model(x)      # no graph, no gradient memory

        @mt.no_grad()              # or @mt.no_grad, as PyTorch allows
        def evaluate(...): ...

    Raises:
        TypeError: for an argument that is not a function.
    """

    _mode = False

    def __new__(cls, func=None):
        self = super().__new__(cls)
        if func is None:
            return self
        if not callable(func):
            raise TypeError(f"{cls.__name__}: takes no argument, or the function it decorates; got "
                            f"{type(func).__name__}")
        return self(func)  # used as a bare decorator

    def __enter__(self):
        # a stack, so that one object can be entered twice (nested) and still restore the right mode
        self.__dict__.setdefault("_prev", []).append(_grad_mode.enabled)
        _grad_mode.enabled = self._mode
        return self

    def __exit__(self, *exc):
        _grad_mode.enabled = self._prev.pop()
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with type(self)():
                return fn(*args, **kwargs)

        return wrapper


class enable_grad(no_grad):
    """Context manager and decorator that turns graph recording back on inside ``no_grad``."""

    _mode = True
