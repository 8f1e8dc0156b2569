"""Optimisers and learning-rate schedules (after ``torch.optim``).

Parameter groups work as in PyTorch: pass a list of dicts, each with
``"params"`` and any per-group settings (``lr``, ``weight_decay``). Only
parameters with ``requires_grad`` and a gradient are updated. A group with
``"frozen_until": k`` keeps its parameters where they are for the first
``k`` steps (the gate's warm-up), whatever the schedule sets its ``lr`` to. A parameter
with a ``lower_bound`` (the gate threshold ``tau``) is projected onto
``>= lower_bound`` after every step: the proximal step for that constraint,
done here so that no training loop can forget it.
"""

from __future__ import annotations

import math

from . import backend
from .checks import check, check_int, check_number, is_number
from .nn.module import Parameter
from .reductions import stable_norm
from .tensor import Tensor


class Optimizer:
    """Base class: holds parameter groups and implements ``zero_grad`` and the projection.

    Args:
        params: an iterable of Parameters, or of dicts ``{"params": [...], **settings}``.
        defaults: settings a group takes when it does not set them.

    Attributes:
        param_groups: the groups (dicts), each with its settings and ``initial_lr``.
        state: per-parameter state (by ``id``), e.g. AdamW's moments.
        step_count: the number of :meth:`step` calls so far (saved in :meth:`state_dict`).

    A group's ``frozen_until`` (an int >= 0, default 0) makes :meth:`lr_of`
    return 0 for the first ``frozen_until`` steps, so its parameters do not
    move; AdamW's moment estimates still see their gradients meanwhile.

    Raises:
        ValueError: for an empty parameter list, a parameter in two groups, or a bad ``frozen_until``.
        TypeError: for something that is not a Parameter.
    """

    def __init__(self, params, defaults: dict):
        n = type(self).__name__
        if isinstance(params, Tensor) or not hasattr(params, "__iter__"):
            raise TypeError(f"{n}: params must be an iterable of Parameters or of dicts (e.g. "
                            f"model.parameters()), got {type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError(f"{n}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups, seen = [], set()
        for i, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise ValueError(f"{n}: parameter group {i} must be a dict with a 'params' entry")
            unknown = sorted(set(group) - set(defaults) - {"params", "name", "frozen_until", "initial_lr"})
            if unknown:
                raise ValueError(f"{n}: parameter group {i} has unknown settings {unknown}; known: "
                                 f"{sorted(defaults) + ['frozen_until', 'name']}")
            group = {**defaults, **group, "params": list(group["params"])}
            for p in group["params"]:
                if not isinstance(p, Parameter):
                    raise TypeError(f"{type(self).__name__}: expected Parameters, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError(f"{type(self).__name__}: a parameter appears in more than one group")
                seen.add(id(p))
            group.setdefault("initial_lr", group["lr"])
            check_int(type(self).__name__, "frozen_until", group.setdefault("frozen_until", 0), 0)
            self._check_group(group)
            self.param_groups.append(group)
        self.state: dict = {}
        self.step_count = 0

    def _check_group(self, group: dict) -> None:
        """Check a group's settings (subclasses add their own); raise ``ValueError`` naming the bad one."""
        n = type(self).__name__
        check_number(n, "lr", group["lr"], 0)
        check_number(n, "weight_decay", group["weight_decay"], 0)

    _state_keys: tuple = ()  # the per-parameter state arrays a subclass keeps besides "step"

    def lr_of(self, group: dict) -> float:
        """The learning rate of ``group`` for the step about to be taken: 0 while the group is frozen."""
        return 0.0 if self.step_count < group["frozen_until"] else group["lr"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients of every parameter in every group (``grad = None``), or with
        ``set_to_none=False`` fill the existing ones with zeros in place (PyTorch's two modes)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def parameters(self) -> list:
        """Every parameter of every group, in order (the order :meth:`state_dict` numbers them in)."""
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> tuple:
        """``(arrays, meta)``: per-parameter state arrays named ``"{index}.{key}"`` and a JSON-able dict
        with the groups' settings and the per-parameter step counts."""
        arrays, steps = {}, {}
        for i, p in enumerate(self.parameters()):
            st = self.state.get(id(p))
            if st is None:
                continue
            for key, value in st.items():
                if key == "step":
                    steps[str(i)] = value
                else:
                    arrays[f"{i}.{key}"] = value
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        for g in groups:
            if "betas" in g:
                g["betas"] = list(g["betas"])
        return arrays, {"groups": groups, "steps": steps, "step_count": self.step_count}

    def load_state_dict(self, arrays: dict, meta: dict) -> None:
        """Restore what :meth:`state_dict` returned, for the same parameters in the same order.

        Raises:
            ValueError: if the group count, an index, or a state array's shape does not match, or the
                step count is missing; nothing is changed when it is raised.
        """
        if not hasattr(arrays, "items") or not isinstance(meta, dict) or not isinstance(meta.get("groups"), list):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected (arrays dict, meta dict) from "
                            "state_dict()")
        params = self.parameters()
        if not isinstance(meta.get("step_count"), int):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved state has no step count")
        if len(meta["groups"]) != len(self.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: {len(meta['groups'])} groups saved, "
                             f"{len(self.param_groups)} present")
        state: dict = {}
        for name, value in arrays.items():
            idx, _, key = name.partition(".")
            if not idx.isdigit() or int(idx) >= len(params) or tuple(value.shape) != params[int(idx)].shape:
                raise ValueError(f"{type(self).__name__}.load_state_dict: state {name!r} does not fit the parameters")
            p = params[int(idx)]
            state.setdefault(id(p), {})[key] = backend.asarray(value, dtype=p.dtype).copy()
        for idx, step in meta["steps"].items():
            if not idx.isdigit() or int(idx) >= len(params) or not isinstance(step, int) or step < 1:
                raise ValueError(f"{type(self).__name__}.load_state_dict: step {step!r} of parameter {idx!r} "
                                 "does not fit the parameters")
            state.setdefault(id(params[int(idx)]), {})["step"] = int(step)
        for key_set in state.values():
            if set(key_set) != {"step", *self._state_keys}:
                raise ValueError(f"{type(self).__name__}.load_state_dict: a parameter's state has keys "
                                 f"{sorted(key_set)}, expected {sorted({'step', *self._state_keys})}")
        if meta["step_count"] < 0:
            raise ValueError(f"{type(self).__name__}.load_state_dict: step count {meta['step_count']} is negative")
        for group, saved in zip(self.param_groups, meta["groups"], strict=True):
            if set(saved) != set(group) - {"params"}:
                raise ValueError(f"{type(self).__name__}.load_state_dict: saved group settings {sorted(saved)} "
                                 f"are not this optimiser's {sorted(set(group) - {'params'})}")
        for group, saved in zip(self.param_groups, meta["groups"], strict=True):
            group.update({k: (tuple(v) if k == "betas" else v) for k, v in saved.items()})
        self.state = state
        self.step_count = meta["step_count"]

    def _check_grads(self) -> None:
        """Before anything moves: every gradient has its parameter's shape, and a bounded parameter's (a gate
        threshold's) is finite, since the projection ``max(tau, 0)`` would keep a NaN forever.

        Raises:
            ValueError: for a gradient of the wrong shape; FloatingPointError: for a non-finite bounded one.
        """
        for i, p in enumerate(self.parameters()):
            if p.grad is None:
                continue
            if tuple(p.grad.shape) != p.shape:
                raise ValueError(f"{type(self).__name__}.step: parameter {i} has shape {p.shape} but its gradient "
                                 f"{tuple(p.grad.shape)}; nothing was updated")
            if p.lower_bound is not None and not bool(backend.xp.isfinite(p.grad).all()):
                raise FloatingPointError(f"{type(self).__name__}.step: parameter {i} (shape {p.shape}, lower bound "
                                         f"{p.lower_bound}) has a non-finite gradient; nothing was updated")

    def _project(self, p: Parameter) -> None:
        if p.lower_bound is not None:
            p.data = backend.xp.maximum(p.data, p.dtype.type(p.lower_bound))

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay.

    As ``torch.optim.SGD``: ``d = g + weight_decay * p``; with momentum,
    ``buf = momentum * buf + (1 - dampening) * d`` (``buf = d`` on the first
    step) and ``d = d + momentum * buf`` (Nesterov) or ``d = buf``; then
    ``p <- p - lr * d`` (Sutskever et al. 2013).

    Raises:
        ValueError: for negative settings, or Nesterov without momentum or with dampening.
    """

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov))

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        for name in ("momentum", "dampening"):
            check_number("SGD", name, group[name], 0)
        check(isinstance(group["nesterov"], bool), "SGD", "nesterov", group["nesterov"], "a bool")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")

    def step(self) -> None:
        """Update every parameter that has a gradient, then apply lower bounds."""
        self._check_grads()
        for group in self.param_groups:
            lr, mu, damp, wd = self.lr_of(group), group["momentum"], group["dampening"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None or not p.requires_grad:
                    continue
                d = p.grad + wd * p.data if wd else p.grad
                if mu:
                    st = self.state.get(id(p))
                    if st is None:
                        st = self.state[id(p)] = {"step": 0, "momentum_buffer": d.copy()}
                    else:
                        st["momentum_buffer"] = mu * st["momentum_buffer"] + (1 - damp) * d
                    st["step"] += 1
                    d = d + mu * st["momentum_buffer"] if group["nesterov"] else st["momentum_buffer"]
                p.data = p.data - lr * d
                self._project(p)
        self.step_count += 1


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov and Hutter 2019, Algorithm 2).

    For each parameter with gradient ``g`` at step ``t``::

        p <- p - lr * weight_decay * p
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    Args:
        params: Parameters or groups (see :class:`Optimizer`).
        lr: learning rate (> 0 unless a group overrides it).
        betas: ``(b1, b2)``, each in ``[0, 1)``.
        eps: added to the denominator.
        weight_decay: decoupled decay factor (>= 0).

    Raises:
        ValueError: naming a setting outside its range.
    """

    _state_keys = ("m", "v")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        betas = group["betas"]
        ok = isinstance(betas, (tuple, list)) and len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas)
        check(ok, "AdamW", "betas", betas, "a pair (b1, b2), each in [0, 1)")
        group["betas"] = tuple(betas)
        check_number("AdamW", "eps", group["eps"], 0)

    def step(self) -> None:
        """Update every parameter that has a gradient, then apply lower bounds."""
        self._check_grads()
        xp = backend.xp
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = self.lr_of(group), group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None or not p.requires_grad:
                    continue
                st = self.state.setdefault(id(p), {"step": 0, "m": xp.zeros_like(p.data), "v": xp.zeros_like(p.data)})
                st["step"] += 1
                t = st["step"]
                g = p.grad
                if wd:
                    p.data = p.data * (1 - lr * wd)
                st["m"] = b1 * st["m"] + (1 - b1) * g
                st["v"] = b2 * st["v"] + (1 - b2) * (g * g)
                m_hat = st["m"] / (1 - b1**t)
                v_hat = st["v"] / (1 - b2**t)
                p.data = p.data - lr * m_hat / (xp.sqrt(v_hat) + eps)
                self._project(p)
        self.step_count += 1


def warmup_cosine(step: int, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0) -> float:
    """Learning-rate factor: linear warm-up to 1 over ``warmup_steps``, then cosine decay to ``min_factor``.

    Args:
        step: the step about to be taken, counted from 0.
        total_steps: length of the schedule (>= 1).
        warmup_steps: steps of linear warm-up (>= 0).
        min_factor: factor at the end of the decay.

    Source: Loshchilov and Hutter 2017 (SGDR) cosine annealing, with linear warm-up.
    """
    check_int("warmup_cosine", "step", step, 0)
    check_int("warmup_cosine", "total_steps", total_steps)
    check_int("warmup_cosine", "warmup_steps", warmup_steps, 0)
    check_number("warmup_cosine", "min_factor", min_factor, 0, 1)
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr_factor(optimizer: Optimizer, factor: float) -> None:
    """Set every group's ``lr`` to ``initial_lr * factor`` (call once per step with :func:`warmup_cosine`)."""
    check_number("set_lr_factor", "factor", factor, 0)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale gradients in place so their joint L2 norm is at most ``max_norm``; return the norm before clipping.

    ``params`` is one Parameter or an iterable of them (as ``torch.nn.utils.clip_grad_norm_``); the
    norm is right even where the squares of the gradients would overflow or underflow.

    Raises:
        ValueError: unless ``max_norm`` is a finite number > 0 (0 or less would silently not clip).
    """
    check_number("clip_grad_norm", "max_norm", max_norm, 0, low_open=True)
    params = [params] if isinstance(params, Tensor) else list(params)  # one tensor or many, as in PyTorch
    params = [p for p in params if p.grad is not None]
    # each gradient's norm is right at any magnitude; hypot joins them without overflow (in float64)
    total = math.hypot(*[float(stable_norm(p.grad, tuple(range(p.grad.ndim))).reshape(())) for p in params])
    if total > max_norm > 0:
        scale = max_norm / (total + 1e-6)
        for p in params:
            p.grad = p.grad * p.grad.dtype.type(scale)
    return total


clip_grad_norm_ = clip_grad_norm  # PyTorch's name (the trailing underscore: it changes the gradients in place)
