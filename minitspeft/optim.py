"""Optimisers and learning-rate schedules (after ``torch.optim``).

Parameter groups work as in PyTorch: pass a list of dicts, each with
``"params"`` and any per-group settings (``lr``, ``weight_decay``). Only
parameters with ``requires_grad`` and a gradient are updated. A group with
``"frozen_until": k`` keeps its parameters where they are for the first
``k`` steps (the gate's warm-up), whatever the schedule sets its ``lr`` to. A parameter
with a ``lower_bound`` (the gate threshold ``tau``) is projected onto
``>= lower_bound`` after every step: the proximal step for that constraint,
done here so that no training loop can forget it.

Settings are stored as Python numbers, and :meth:`step` reads them as such, so a NumPy scalar
(``lr=np.float64(1e-3)``) never turns float32 parameters into float64 ones. :meth:`Optimizer.state_dict`
returns one dict laid out as PyTorch's (copies, not views); :mod:`minitspeft.optim_state` checks it on
loading and gives its flat form for files.
"""

from __future__ import annotations

import math
import warnings

from . import backend
from .checks import check, check_int, check_number, is_int, is_number
from .nn.module import Parameter
from .optim_state import checked_groups, checked_state, state_dict_from_arrays, state_dict_to_arrays
from .reductions import stable_norm
from .tensor import Tensor

__all__ = ["Optimizer", "SGD", "AdamW", "warmup_cosine", "set_lr_factor", "clip_grad_norm", "clip_grad_norm_",
           "state_dict_to_arrays", "state_dict_from_arrays"]


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
            check_number(type(self).__name__, "initial_lr", group["initial_lr"], 0)
            group["frozen_until"], group["initial_lr"] = int(group["frozen_until"]), float(group["initial_lr"])
            self.param_groups.append(group)
        self.state: dict = {}
        self.step_count = 0

    def _check_group(self, group: dict) -> None:
        """Check a group's settings (subclasses add their own) and store numbers as Python floats; raise
        ``ValueError`` naming the bad one."""
        n = type(self).__name__
        for name in ("lr", "weight_decay"):
            check_number(n, name, group[name], 0)
            group[name] = float(group[name])

    _state_keys: tuple = ()  # the per-parameter state arrays a subclass keeps besides "step"

    def lr_of(self, group: dict) -> float:
        """The learning rate of ``group`` for the step about to be taken (a Python float, whatever was stored
        in the group): 0 while the group is frozen."""
        return 0.0 if self.step_count < group["frozen_until"] else float(group["lr"])

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

    def state_dict(self) -> dict:
        """The optimiser's state as one dict, laid out as PyTorch's ``torch.optim.Optimizer.state_dict()``::

            {"state": {index: {"step": int, "exp_avg": array, ...}},   # only parameters stepped so far
             "param_groups": [{"lr": ..., "weight_decay": ..., ..., "params": [index, ...]}],
             "step_count": int}

        ``index`` numbers the parameters over all groups in order (:meth:`parameters`). The per-parameter
        keys are ``_state_keys`` (``exp_avg``, ``exp_avg_sq`` for AdamW, ``momentum_buffer`` for SGD, as in
        PyTorch). ``step_count`` is not in PyTorch's dict (its schedulers count their own steps): it is the
        number of :meth:`step` calls, which ``frozen_until`` reads.

        Unlike PyTorch, which returns references to its live tensors, the arrays are copies and the groups
        new dicts: changing the result never changes the optimiser, and later steps never change the result.
        """
        index = {id(p): i for i, p in enumerate(self.parameters())}
        state = {index[id(p)]: {k: (v if k == "step" else v.copy()) for k, v in self.state[id(p)].items()}
                 for p in self.parameters() if id(p) in self.state}
        groups, first = [], 0
        for g in self.param_groups:
            groups.append({**{k: v for k, v in g.items() if k != "params"},
                           "params": list(range(first, first + len(g["params"])))})
            first += len(g["params"])
        return {"state": state, "param_groups": groups, "step_count": self.step_count}

    def load_state_dict(self, state_dict: dict, meta: dict | None = None) -> None:
        """Restore what :meth:`state_dict` returned (as ``torch.optim.Optimizer.load_state_dict``): the saved
        parameters map in order onto this optimiser's, group by group. The arrays are copied (cast to each
        parameter's dtype); the groups' settings are replaced by the saved ones.

        The old two-argument form ``load_state_dict(arrays, meta)`` (the flat form of
        :func:`state_dict_to_arrays`) still works, with a ``DeprecationWarning``.

        Raises:
            TypeError: for something that is not such a dict.
            ValueError: naming ``load_state_dict`` and the mismatch: the number of groups or of parameters in
                a group, a group's setting names or values, an index, a state's keys, a step, an array's shape
                or dtype (floating only), the step count. Everything is checked before anything changes, so
                nothing is changed when it is raised.
        """
        n = f"{type(self).__name__}.load_state_dict"
        if meta is not None:  # the flat form, as state_dict() returned it before
            warnings.warn(f"{n}(arrays, meta) is deprecated: pass the one dict state_dict() returns",
                          DeprecationWarning, stacklevel=2)
            state_dict = state_dict_from_arrays(state_dict, meta, [len(g["params"]) for g in self.param_groups], n)
        if not isinstance(state_dict, dict):
            raise TypeError(f"{n}: expected the dict state_dict() returns, got {type(state_dict).__name__}")
        missing = [k for k in ("state", "param_groups", "step_count") if k not in state_dict]
        if missing:
            raise ValueError(f"{n}: the state dict has no {missing} (keys: {sorted(map(str, state_dict))})")
        step_count = state_dict["step_count"]
        if not is_int(step_count) or step_count < 0:
            raise ValueError(f"{n}: step_count must be an integer >= 0, got {step_count!r}")
        groups, params = checked_groups(self, n, state_dict["param_groups"])
        state = checked_state(self, n, state_dict["state"], params, int(step_count))
        for group, saved in zip(self.param_groups, groups, strict=True):
            group.update(saved)
        self.state = state
        self.step_count = int(step_count)

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
            group[name] = float(group[name])
        check(isinstance(group["nesterov"], bool), "SGD", "nesterov", group["nesterov"], "a bool")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")

    def step(self) -> None:
        """Update every parameter that has a gradient, then apply lower bounds."""
        self._check_grads()
        for group in self.param_groups:
            lr, mu, damp, wd = self.lr_of(group), *map(float, (group["momentum"], group["dampening"],
                                                               group["weight_decay"]))
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

    _state_keys = ("exp_avg", "exp_avg_sq")  # m and v of the algorithm, under PyTorch's names

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        betas = group["betas"]
        ok = isinstance(betas, (tuple, list)) and len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas)
        check(ok, "AdamW", "betas", betas, "a pair (b1, b2), each in [0, 1)")
        group["betas"] = tuple(float(b) for b in betas)
        check_number("AdamW", "eps", group["eps"], 0)
        group["eps"] = float(group["eps"])

    def step(self) -> None:
        """Update every parameter that has a gradient, then apply lower bounds."""
        self._check_grads()
        xp = backend.xp
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = self.lr_of(group), map(float, group["betas"]), float(group["eps"]), \
                float(group["weight_decay"])
            for p in group["params"]:
                if p.grad is None or not p.requires_grad:
                    continue
                st = self.state.setdefault(id(p), {"step": 0, "exp_avg": xp.zeros_like(p.data),
                                                   "exp_avg_sq": xp.zeros_like(p.data)})
                st["step"] += 1
                t = st["step"]
                g = p.grad
                if wd:
                    p.data = p.data * (1 - lr * wd)
                st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * g
                st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * (g * g)
                m_hat = st["exp_avg"] / (1 - b1**t)
                v_hat = st["exp_avg_sq"] / (1 - b2**t)
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
    step, total_steps, warmup_steps, min_factor = int(step), int(total_steps), int(warmup_steps), float(min_factor)
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr_factor(optimizer: Optimizer, factor: float) -> None:
    """Set every group's ``lr`` to ``initial_lr * factor`` (call once per step with :func:`warmup_cosine`)."""
    check_number("set_lr_factor", "factor", factor, 0)
    for group in optimizer.param_groups:
        group["lr"] = float(group["initial_lr"]) * float(factor)


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
    # each gradient's norm is right at any magnitude; hypot joins them without overflow (in float64), on
    # the host, from one copy of all the norms (one synchronisation on a GPU, not one per parameter)
    norms = [stable_norm(p.grad, tuple(range(p.grad.ndim))).reshape(()).astype("float64") for p in params]
    total = math.hypot(*backend.to_numpy(backend.xp.stack(norms)).tolist()) if norms else 0.0
    if total > max_norm > 0:
        scale = max_norm / (total + 1e-6)
        for p in params:
            p.grad = p.grad * p.grad.dtype.type(scale)
    return total


clip_grad_norm_ = clip_grad_norm  # PyTorch's name (the trailing underscore: it changes the gradients in place)
