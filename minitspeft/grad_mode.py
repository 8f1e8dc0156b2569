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

        @mt.no_grad()
        def evaluate(...): ...
    """

    _mode = False

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
