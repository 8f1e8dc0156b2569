"""``Module`` and ``Parameter``: the containers every layer is built from (after ``torch.nn``).

A module finds its parameters and sub-modules by looking at its attributes
in the order they were assigned, so ``named_parameters()`` and
``state_dict()`` names follow the attribute names: ``blocks.0.attn.q_proj.weight``.
"""

from __future__ import annotations

import contextlib
import re
from collections import OrderedDict


from .. import backend
from ..checks import check, is_int, is_number
from ..tensor import Tensor


class Parameter(Tensor):
    """A leaf Tensor that a module owns and an optimiser updates (``requires_grad=True`` by default).

    Args:
        data: array-like or Tensor; float data keeps its dtype.
        requires_grad: whether the optimiser should train it.
        lower_bound: optional float; optimisers project the parameter onto
            ``>= lower_bound`` after every step (used for the gate threshold ``tau``).
    """

    def __init__(self, data, requires_grad: bool = True, lower_bound: float | None = None):
        super().__init__(data.data if isinstance(data, Tensor) else data)
        if lower_bound is not None:
            check(is_number(lower_bound), "Parameter", "lower_bound", lower_bound, "a finite number or None")
        self.lower_bound = lower_bound
        self.requires_grad_(requires_grad)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, requires_grad={self.requires_grad})"


_DEVICE = re.compile(r"(cpu|cuda|mps|xpu|hip|meta)(:\d+)?")


def _device_name(value) -> str | None:
    """``value`` as a device string (``"cuda:0"``; a ``torch.device`` as its string), or None if it is not one."""
    text = str(value) if type(value).__name__ == "device" else value
    return text if isinstance(text, str) and _DEVICE.fullmatch(text) else None


_calls = 0  # modules being called now: only the outermost call checks the backend (one look per forward)


def module_backend(module) -> str | None:
    """The backend whose arrays the module's parameters are (its first parameter's); None for a module
    without parameters, or for something that is not a Module (its own checks then say what is wrong)."""
    first = next(module.parameters(), None) if isinstance(module, Module) else None
    return None if first is None else backend.backend_of(first.data)


def _check_active_backend(module: "Module") -> None:
    name = module_backend(module)
    if name is not None and name != backend.get_backend():
        raise RuntimeError(f"{type(module).__name__}: its parameters are {name} arrays but the active backend is "
                           f"{backend.get_backend()}; call it inside mt.backend.using({name!r}) or after "
                           f"mt.set_backend({name!r}) (fit, predict, evaluate and generate do that themselves)")


def _check_device(module: "Module", device) -> None:
    """Refuse (``TypeError``, ``ValueError`` or ``RuntimeError``, see :meth:`Module.to`) a device the parameters
    are not on."""
    name = _device_name(device)
    if name is None:
        raise TypeError(f"Module.to: device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (kind == "cpu" and index not in ("", "0")):
        raise ValueError(f"Module.to: unknown device {name!r}; this project runs on 'cpu' (NumPy) or 'cuda' (CuPy)")
    params = list(module.parameters())
    on_host = all(backend.is_host_array(p.data) for p in params)
    moving = "moving a built model between NumPy and CuPy is not implemented"
    if kind == "cpu" and not on_host:
        raise RuntimeError(f"Module.to({name!r}): the parameters are device arrays ({backend.get_backend()} backend) "
                           f"and {moving}; build the model again after mt.set_backend(\"numpy\")")
    if kind == "cuda" and backend.get_default_device() != "cuda":
        raise RuntimeError(f"Module.to({name!r}): the active backend is NumPy (the CPU); to run on a GPU, "
                           "pip install \"minitspeft[gpu]\", call mt.set_backend(\"cupy\") (or set "
                           f"MINITSPEFT_BACKEND=cupy) and build the model after it; {moving}")
    if kind == "cuda" and any(backend.is_host_array(p.data) for p in params):
        raise RuntimeError(f"Module.to({name!r}): the parameters are NumPy arrays (built before "
                           f"mt.set_backend(\"cupy\")) and {moving}; build the model again")
    if kind == "cuda" and index not in ("", "0") and backend.get_backend() == "strict":
        raise RuntimeError(f"Module.to({name!r}): the strict stand-in has one device, 'cuda' (or 'cuda:0')")
    if kind == "cuda" and index and backend.get_backend() == "cupy" and any(
            int(p.data.device.id) != int(index) for p in params):
        raise RuntimeError(f"Module.to({name!r}): the parameters are on another GPU, and moving them between GPUs "
                           "is not implemented; choose the GPU (cupy.cuda.Device) before building the model")


class Module:
    """Base class of all layers and models.

    Subclasses set parameters and sub-modules as attributes in ``__init__``
    and implement ``forward``; calling the module calls ``forward``.
    """

    training = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        """``forward``; the outermost call first checks that the parameters are the active backend's arrays.

        Raises:
            RuntimeError: for a model built on another backend (naming both), before anything runs.
        """
        global _calls
        if _calls == 0:
            _check_active_backend(self)
        _calls += 1
        try:
            return self.forward(*args, **kwargs)
        finally:
            _calls -= 1

    # ----------------------------------------------------------- traversal
    def _children_items(self):
        for name, value in vars(self).items():
            if isinstance(value, (Module, Parameter)):
                yield name, value

    def named_modules(self, prefix: str = ""):
        """Yield ``(name, module)`` for this module (name ``""``) and every sub-module, depth first."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, mod = stack.pop()
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            yield name, mod
            children = [(f"{name}.{k}" if name else k, v) for k, v in mod._children_items() if isinstance(v, Module)]
            stack.extend(reversed(children))

    def modules(self):
        """Yield every module, this one first."""
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        """Yield ``(name, module)`` for each direct sub-module, in the order they were assigned (as
        ``torch.nn.Module.named_children``)."""
        for name, value in self._children_items():
            if isinstance(value, Module):
                yield name, value

    def children(self):
        """Yield each direct sub-module (as ``torch.nn.Module.children``)."""
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix: str = ""):
        """Yield ``(dotted_name, Parameter)`` for every parameter, each object once."""
        seen = set()
        for mod_name, mod in self.named_modules(prefix):
            for k, v in mod._children_items():
                if isinstance(v, Parameter) and id(v) not in seen:
                    seen.add(id(v))
                    yield (f"{mod_name}.{k}" if mod_name else k), v

    def parameters(self):
        """Yield every parameter once, frozen ones included."""
        for _, p in self.named_parameters():
            yield p

    def get_submodule(self, name: str) -> "Module":
        """Return the sub-module at dotted ``name``.

        Raises:
            AttributeError: naming the missing part.
        """
        mod = self
        for part in name.split(".") if name else []:
            child = getattr(mod, part, None)
            if not isinstance(child, Module):
                raise AttributeError(f"get_submodule: {type(mod).__name__} has no sub-module {part!r} (in {name!r})")
            mod = child
        return mod

    def set_submodule(self, name: str, module: "Module") -> None:
        """Put ``module`` at dotted ``name`` (its parent must exist), as ``torch.nn.Module.set_submodule``.

        Raises:
            AttributeError: naming the missing parent.
        """
        parent, _, attr = name.rpartition(".")
        setattr(self.get_submodule(parent), attr, module)

    # --------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> "Module":
        """Set training mode (dropout active) on this module and all sub-modules."""
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        """Set evaluation mode: ``train(False)``."""
        return self.train(False)

    @contextlib.contextmanager
    def eval_mode(self):
        """Context manager: evaluation mode inside the block (dropout off); on exit, even after an error,
        every sub-module gets back the mode it had before.

        Example::

            with model.eval_mode(), mt.no_grad():
                logits = model(x)
        """
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            yield self
        finally:
            for m, mode in modes:
                m.training = mode

    def requires_grad_(self, flag: bool = True) -> "Module":
        """Set ``requires_grad`` on every parameter."""
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (``grad = None``), or with ``set_to_none=False`` fill the existing
        gradients with zeros in place (PyTorch's two modes)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    # --------------------------------------------------------- state dicts
    def state_dict(self) -> "OrderedDict[str, object]":
        """Return ``{name: array}`` with a copy of every parameter's data (backend arrays)."""
        return OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays from ``state`` into the parameters, cast to each parameter's dtype.

        Args:
            state: ``{name: array}`` as returned by :meth:`state_dict`.
            strict: if true, missing and unexpected keys are errors.

        Raises:
            ValueError: listing every missing, unexpected and wrong-shaped key
                at once; nothing is changed when it is raised.
        """
        if not hasattr(state, "items"):
            raise TypeError(f"load_state_dict ({type(self).__name__}): state must be a dict of arrays, got "
                            f"{type(state).__name__}")
        params = dict(self.named_parameters())
        state = {k: backend.asarray(v.data if isinstance(v, Tensor) else v) for k, v in state.items()}
        bad = [f"{k} ({v.dtype})" for k, v in state.items() if v.dtype.kind not in "fiu"]
        if bad:
            raise ValueError(f"load_state_dict ({type(self).__name__}): non-real values for {bad}")
        missing = [k for k in params if k not in state]
        unexpected = [k for k in state if k not in params]
        wrong = [
            f"{k}: expected {params[k].shape}, got {tuple(state[k].shape)}"
            for k in params
            if k in state and tuple(state[k].shape) != params[k].shape
        ]
        problems = []
        if strict and missing:
            problems.append(f"missing keys {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys {unexpected}")
        if wrong:
            problems.append(f"wrong shapes [{'; '.join(wrong)}]")
        if problems:
            raise ValueError(f"load_state_dict ({type(self).__name__}): " + ", ".join(problems))
        for k, p in params.items():
            if k in state:
                p.data = backend.asarray(state[k], dtype=p.dtype).copy()

    def to(self, *args, device=None, dtype=None) -> "Module":
        """As ``torch.nn.Module.to``: ``to(dtype)``, ``to(device)``, ``to(device, dtype)``, or the keywords;
        returns the module itself.

        Args:
            dtype: float32 or float64 (a NumPy dtype or its name): every floating parameter is cast in place
                and its gradient dropped.
            device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (or a ``torch.device``). A module's arrays live
                where the backend that built it put them (:mod:`minitspeft.backend`), and moving a built
                module between NumPy and CuPy is not implemented, so this only checks that the parameters
                are already on ``device``: a no-op then, else an error saying how to get there.

        Raises:
            TypeError: for an argument that is neither a device nor a dtype, or two of one kind.
            ValueError: for an unknown device, or a dtype other than float32 and float64.
            RuntimeError: for a device the parameters are not on (``"cuda"`` on the NumPy backend names
                ``pip install "minitspeft[gpu]"`` and ``mt.set_backend("cupy")``).
        Nothing is changed when any of them is raised.
        """
        for a in args:
            kind = "device" if _device_name(a) is not None else "dtype"
            seen = device if kind == "device" else dtype
            if seen is not None:
                raise TypeError(f"Module.to: got two {kind}s, {seen!r} and {a!r}; give at most one device and one dtype")
            device, dtype = (a, dtype) if kind == "device" else (device, a)
        if device is not None:
            _check_device(self, device)
        if dtype is not None:
            try:
                dt = backend.xp.dtype(dtype)
            except TypeError:
                raise TypeError(f"Module.to: {dtype!r} is neither a device ('cpu', 'cuda') nor a dtype") from None
            if dt not in (backend.xp.float32, backend.xp.float64):
                raise ValueError(f"Module.to: expected float32 or float64, got {dt}")
            for p in self.parameters():
                if p.dtype.kind == "f":
                    p.data = p.data.astype(dt)
                    p.grad = None
        return self

    def cpu(self) -> "Module":
        """``to("cpu")``, as ``torch.nn.Module.cpu``: checks that the parameters are on the host (see :meth:`to`)."""
        return self.to("cpu")

    def cuda(self) -> "Module":
        """``to("cuda")``, as ``torch.nn.Module.cuda``: checks that the parameters are on the GPU (see :meth:`to`)."""
        return self.to("cuda")

    def double(self) -> "Module":
        """``to(float64)``: for gradient checks."""
        return self.to("float64")

    def float(self) -> "Module":
        """``to(float32)``: the training default."""
        return self.to("float32")

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Count parameter elements (only trainable ones if asked)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        children = [(k, v) for k, v in self._children_items() if isinstance(v, Module)]
        for k, v in children:
            child = repr(v).replace("\n", "\n  ")
            lines.append(f"  ({k}): {child}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")

    def extra_repr(self) -> str:
        return ""


class ModuleList(Module):
    """A list of sub-modules named ``0, 1, 2, ...`` (as in ``torch.nn.ModuleList``)."""

    def __init__(self, modules=()):
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __len__(self) -> int:
        return sum(1 for _ in self._children_items())

    def __getitem__(self, i: int) -> Module:
        """The ``i``-th module; negative ``i`` counts from the end, as for a list.

        Raises:
            IndexError: for ``i`` outside ``[-len, len)`` (an empty list has no index).
            TypeError: for an index that is not an integer.
        """
        if not is_int(i):
            raise TypeError(f"ModuleList: indices must be integers, got {type(i).__name__}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"ModuleList: index {i} is out of range for {n} modules")
        return getattr(self, str(i % n))

    def __iter__(self):
        for _, m in self._children_items():
            yield m
