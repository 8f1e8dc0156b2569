"""Training and evaluation loops, with tqdm progress bars, checkpoints and exact resume.

``fit`` reads as its steps: check the data (:func:`_checked_data`), build the
optimiser (:func:`build_optimizer`), then per step set the learning rate
(warm-up, then cosine), take one :func:`train_step` (cross-entropy plus the
gate's sparsity regulariser for a gated :class:`PeftModel` once the gate's
``warmup_steps`` are over), record the gate statistics, and checkpoint. The
gates' thresholds and routers stay frozen during the warm-up because their
optimiser groups say so (``frozen_until``). A loss that stops being finite
stops training with an error naming the step.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from . import backend
from .backend import to_numpy as _to_numpy
from .backend import using as _using_backend
from . import functional as F
from .checkpoint import CHECKPOINT, load_checkpoint, run_fingerprint, save_checkpoint
from .checks import check_int, check_number
from .nn.module import Module
from .optim import AdamW, clip_grad_norm, set_lr_factor, warmup_cosine
from .peft.base import ModulesToSaveWrapper, PeftLayer
from .peft.model import PeftModel
from .tensor import Tensor, no_grad


@dataclass
class FitResult:
    """What :func:`fit` measured.

    Attributes:
        history: one dict per step: ``step``, ``loss`` (cross-entropy), ``acc``
            (batch accuracy), and for gated models ``density`` (mean over
            gated layers) and ``tau`` (list per gated layer).
        seconds: wall-clock time of the loop.
        notes: the gate problems ``fit`` warned about (dead layers, stuck thresholds).
    """

    history: list = field(default_factory=list)
    seconds: float = 0.0
    notes: list = field(default_factory=list)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices of the mini-batch at ``step``: epoch ``e`` uses its own seeded permutation of ``range(n)``.

    A pure function of its arguments, so a resumed run sees exactly the batches
    the uninterrupted run would have seen. The last partial batch of an epoch is dropped.
    """
    batch_size = min(batch_size, n)
    epoch, i = divmod(step, n // batch_size)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[i * batch_size:(i + 1) * batch_size]


def fit(model: Module, x, y, *, steps: int, batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.0,
        warmup_steps: int = 0, seed: int = 0, desc: str = "train", progress: bool = True,
        max_grad_norm: float | None = None, checkpoint_dir: str | None = None, checkpoint_every: int = 0,
        resume: bool = False, blas_threads: int | None = 1, backend: str | None = None) -> FitResult:
    """Train with AdamW on cross-entropy (plus the gate regulariser for gated models).

    Args:
        model: a Module or :class:`PeftModel` mapping a batch of ``x`` to logits
            ``(B, n_classes)``, or ``(B, T, vocab)`` for targets ``(B, T)``.
        x: host array ``(N, ...)`` of inputs; y: integer labels ``(N,)`` or ``(N, T)``.
        steps: optimiser steps (>= 1).
        batch_size: examples per step (>= 1).
        lr: peak learning rate; weight_decay: AdamW decoupled decay.
        warmup_steps: linear learning-rate warm-up before the cosine decay.
        seed: seeds batch order and dropout (>= 0).
        desc: label of the progress bar; progress: show the bar.
        max_grad_norm: clip the gradients' joint norm to this (None: no clipping).
        checkpoint_dir: folder for ``checkpoint.npz``, written every
            ``checkpoint_every`` steps (0: only at the end) when given.
        resume: continue from the checkpoint in ``checkpoint_dir`` if there is
            one; the resumed run ends bit-for-bit where the uninterrupted run ends.
        blas_threads: host BLAS threads during training (:func:`~minitspeft.backend.blas_threads`;
            fixed so that results do not depend on the machine's thread settings; None: leave them).
        backend: the array backend to train on (``"numpy"``, ``"cupy"``, ``"strict"``; None: the one the
            model's parameters are on, as a PyTorch model's device decides where it runs). The model must
            have been built on it; it is the active backend during the run, and the previous one after.

    Returns:
        A :class:`FitResult` (its history includes the steps before a resume).

    Warns:
        RuntimeWarning: once, the first time a gated layer is dead (all gates
            closed) or its threshold stuck (zero surrogate derivative everywhere).

    Sizes, seeds and rates may be NumPy numbers (``np.int64(8)``) as well as Python ones.

    Raises:
        ValueError: for mismatched ``x``/``y`` lengths, non-positive sizes, a model whose adapter is merged
            (``merge_adapter()``) or disabled (inside ``disable_adapter()``), a model whose parameters are
            not arrays of the backend it trains on, an unknown backend, or a checkpoint from other
            settings; all before the first step, and nothing is changed then.
        ImportError: for ``backend="cupy"`` where CuPy cannot be imported.
        FloatingPointError: naming the step at which the loss became NaN or infinite.
    """
    x, y = _checked_data(model, x, y, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         warmup_steps=warmup_steps, seed=seed, max_grad_norm=max_grad_norm,
                         checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
                         blas_threads=blas_threads)
    with _using_backend(_check_backend("fit", model, backend)):
        return _fit(model, x, y, steps, batch_size, lr, weight_decay, warmup_steps, seed, desc, progress,
                    max_grad_norm, checkpoint_dir, checkpoint_every, resume, blas_threads)


def _fit(model, x, y, steps, batch_size, lr, weight_decay, warmup_steps, seed, desc, progress, max_grad_norm,
         checkpoint_dir, checkpoint_every, resume, blas_threads) -> FitResult:
    """:func:`fit`'s loop, after its checks, on the backend it trains on."""
    # NumPy numbers are welcome; as Python numbers they keep the checkpoint's record JSON-able
    steps, batch_size, warmup_steps, seed, checkpoint_every = map(int, (steps, batch_size, warmup_steps, seed,
                                                                         checkpoint_every))
    lr, weight_decay, max_grad_norm = float(lr), float(weight_decay), _float_or_none(max_grad_norm)
    backend.manual_seed(seed)
    peft = model if isinstance(model, PeftModel) and model.gate_config is not None else None
    opt = build_optimizer(model, lr, weight_decay)
    fingerprint = run_fingerprint(model, opt, x, y, {
        "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "warmup_steps": warmup_steps, "seed": seed, "max_grad_norm": max_grad_norm})
    result, first = FitResult(), 0
    if resume and os.path.exists(os.path.join(checkpoint_dir, CHECKPOINT)):
        first, result.history = load_checkpoint(checkpoint_dir, model, opt, fingerprint, steps)
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(first, steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True,
               initial=first, total=steps)
    with backend.blas_threads(blas_threads), bar:  # the bar closes even when a step raises
        for step in bar:
            set_lr_factor(opt, warmup_cosine(step, steps, warmup_steps))
            regularise = peft is not None and step >= peft.gate_config.warmup_steps
            idx = batch_indices(step, len(x), batch_size, seed)
            try:
                record = train_step(model, opt, x[idx], backend.asarray(y[idx]), regularise, max_grad_norm)
            except FloatingPointError as exc:
                raise FloatingPointError(f"fit: {exc} at step {step} ({desc}); lower lr or check inputs") from None
            record = {"step": step, **record}
            if peft is not None:
                _record_gates(peft, record, result, step, check=regularise and not result.notes)
            result.history.append(record)
            bar.set_postfix(_postfix(record), refresh=False)
            if checkpoint_dir is not None and _checkpoint_due(step + 1, steps, checkpoint_every):
                save_checkpoint(checkpoint_dir, model, opt, step + 1, result.history, fingerprint)
    result.seconds = time.perf_counter() - start
    return result


def _checked_data(model: Module, x, y, **settings) -> tuple:
    """``(x, y)`` as host arrays after every check of :func:`fit`'s arguments (see there)."""
    if not isinstance(model, Module):
        raise TypeError(f"fit: model must be a minitspeft Module, got {type(model).__name__}")
    x, y = backend.to_numpy(x), backend.to_numpy(y)  # batches are cut on the host and moved one by one
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit: x {x.shape} and y {y.shape} must hold the same number (> 0) of examples")
    if y.dtype.kind not in "iu":
        raise ValueError(f"fit: y must hold integer class labels, got dtype {y.dtype}")
    for name, low in (("steps", 1), ("batch_size", 1), ("warmup_steps", 0), ("seed", 0), ("checkpoint_every", 0)):
        check_int("fit", name, settings[name], low)
    check_number("fit", "lr", settings["lr"], 0)
    check_number("fit", "weight_decay", settings["weight_decay"], 0)
    check_number("fit", "max_grad_norm", settings["max_grad_norm"], 0, low_open=True, allow_none=True)
    check_int("fit", "blas_threads", settings["blas_threads"], allow_none=True)
    if settings["checkpoint_dir"] is None and (settings["resume"] or settings["checkpoint_every"]):
        raise ValueError("fit: resume=True and checkpoint_every need a checkpoint_dir")
    _check_adapters_active(model)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("fit: the model has no trainable parameters (a PeftModel loaded with "
                         "from_pretrained is frozen unless is_trainable=True)")
    return x, y


def _check_backend(op: str, model: Module, name) -> str | None:
    """The backend ``op`` runs ``model`` on: ``name``, else the one the model's parameters are on (the
    active one for a model without parameters, or with them on several backends).

    Raises:
        ValueError: for an unknown name, or a model whose parameters are another backend's arrays.
        ImportError: for ``"cupy"`` where CuPy cannot be imported.
    """
    if name is not None and name not in backend.BACKENDS:
        raise ValueError(f"{op}: unknown backend {name!r}; expected one of {', '.join(backend.BACKENDS)}")
    found = {str(backend.backend_of(p.data)) for p in model.parameters()}
    if name is None and len(found) == 1 and found <= set(backend.BACKENDS):
        name = found.pop()
    wanted = name or backend.get_backend()
    if wanted != backend.get_backend():
        with backend.using(wanted):  # a backend that cannot load says so (ImportError) before anything runs
            pass
    some = "some of " if wanted in found else ""
    found -= {wanted}
    if found:
        verb = "train" if op == "fit" else "run"
        raise ValueError(f"{op}: {some}the model's parameters are {', '.join(sorted(found))} arrays, but it would {verb} "
                         f"on the {wanted} backend; build the model after mt.set_backend({wanted!r}) (arrays are "
                         "never moved between backends)")
    return name


def _float_or_none(value):
    return None if value is None else float(value)


def _check_adapters_active(model: Module) -> None:
    """Refuse to train a model with a merged or disabled adapter layer: such a layer computes the base
    output, so its adapter would get no gradient (``backward`` would fail, or the run would train nothing).

    Raises:
        ValueError: naming ``fit``, the state, up to three of the layers, and what to do instead.
    """
    for flag, kinds, state, fix in (
            ("merged", (PeftLayer,), "merged into the base weights (merge_adapter())", "call unmerge_adapter() first"),
            ("disabled", (PeftLayer, ModulesToSaveWrapper), "disabled (inside `with model.disable_adapter():`)",
             "call fit outside that block")):
        names = [n for n, m in model.named_modules() if isinstance(m, kinds) and getattr(m, flag, False)]
        if names:
            shown = ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")
            raise ValueError(f"fit: the adapter is {state} in {shown}; such a layer computes the base model's "
                             f"output and its adapter gets no gradient, so nothing would train: {fix}")


def build_optimizer(model: Module, lr: float, weight_decay: float = 0.0) -> AdamW:
    """The AdamW :func:`fit` trains with: a :class:`PeftModel`'s :meth:`~PeftModel.optimizer_groups` (gate
    groups with their own rates, frozen during the gate's warm-up), else every trainable parameter."""
    if isinstance(model, PeftModel):
        return AdamW(model.optimizer_groups(lr, weight_decay), lr=lr, weight_decay=weight_decay)
    return AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


def model_input(model: Module, xb):
    """A batch as the model takes it: floating host arrays become Tensors of the model's dtype (so plain
    layers such as ``nn.Linear`` or ``nn.Sequential`` train too); integer ids and Tensors pass as they are."""
    if isinstance(xb, Tensor) or getattr(xb, "dtype", None) is None or xb.dtype.kind != "f":
        return xb
    dtype = next((p.dtype for p in model.parameters()), None)
    return Tensor(backend.asarray(xb), dtype=dtype)


def train_step(model: Module, opt, xb, yb, regularise: bool = False, max_grad_norm: float | None = None) -> dict:
    """One optimiser step on a batch; return ``{"loss": cross-entropy, "acc": batch accuracy}``.

    The loss is cross-entropy, plus the gate regulariser
    (:meth:`PeftModel.sparsity_loss`) when ``regularise``; gradients are
    clipped to ``max_grad_norm`` when given.

    Raises:
        FloatingPointError: if the loss is NaN or infinite (nothing is updated then).
    """
    yb = backend.asarray(yb.data if isinstance(yb, Tensor) else yb)  # host labels: moved once, explicitly
    logits = model(model_input(model, xb))
    ce = F.cross_entropy(logits, yb)
    loss = (ce + model.sparsity_loss()) if regularise else ce
    value = float(loss.data)
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value}")
    opt.zero_grad()
    loss.backward()
    if max_grad_norm is not None:
        clip_grad_norm(opt.parameters(), max_grad_norm)
    opt.step()
    return {"loss": float(ce.data), "acc": float((logits.data.argmax(axis=-1) == yb).mean())}


def _record_gates(peft: PeftModel, record: dict, result: FitResult, step: int, check: bool) -> None:
    """Add the gates' mean ``density`` and every ``tau`` to ``record``; with ``check``, note (and warn
    about, once) the dead layers and stuck thresholds of this step."""
    stats = peft.gate_stats()
    record["density"] = float(np.mean([s["density"] for s in stats.values()]))
    record["tau"] = [s["tau"] for s in stats.values()]
    problems = peft.gate_problems(stats) if check else None
    if problems:
        result.notes.append(f"at step {step}: {problems}")
        warnings.warn(f"fit: {result.notes[-1]}", RuntimeWarning, stacklevel=3)


def _postfix(record: dict) -> dict:
    postfix = {"loss": f"{record['loss']:.3f}", "acc": f"{record['acc']:.2f}"}
    if "density" in record:
        postfix["density"] = f"{record['density']:.2f}"
    return postfix


def _checkpoint_due(done: int, steps: int, every: int) -> bool:
    """A checkpoint is written after the last step and after every ``every`` steps (``every`` 0: only the last)."""
    return done == steps or (every > 0 and done % every == 0)


@no_grad()
def predict(model: Module, x, batch_size: int = 256, blas_threads: int | None = 1,
            backend: str | None = None) -> np.ndarray:
    """Class predictions ``(N,)`` (or ``(N, T)`` for per-token logits), int64 on the host, in evaluation
    mode; restores the previous mode. Zero examples give an empty array.

    ``blas_threads`` and ``backend`` as in :func:`fit` (None: the backend the model's parameters are on).

    Raises:
        ValueError: for a ``batch_size`` that is not an integer >= 1, an unknown backend, or one the
            model's parameters are not on.
    """
    check_int("predict", "batch_size", batch_size)
    with _using_backend(_check_backend("predict", model, backend)):
        return _predict(model, x, batch_size, blas_threads)


def _predict(model: Module, x, batch_size: int, blas_threads) -> np.ndarray:
    """:func:`predict` on the backend of the model."""
    if isinstance(x, Tensor) or backend.backend_of(x) not in (None, "numpy", backend.get_backend()):
        x = backend.to_numpy(x.data if isinstance(x, Tensor) else x)  # another backend's: over through the host
    with model.eval_mode(), backend.blas_threads(blas_threads):
        preds = [backend.to_numpy(model(model_input(model, x[i:i + batch_size])).data.argmax(axis=-1))
                 for i in range(0, len(x), batch_size)]
    return np.concatenate(preds).astype(np.int64) if preds else np.zeros((0,), dtype=np.int64)


def evaluate(model: Module, x, y, batch_size: int = 256, backend: str | None = None) -> float:
    """Accuracy in ``[0, 1]`` of ``model`` on ``(x, y)`` (evaluation mode, no graph); ``backend`` as in
    :func:`predict`.

    Raises:
        ValueError: if ``x`` and ``y`` hold different numbers of examples, none, or labels whose shape
            is not that of the predictions (``(N,)``, or ``(N, T)`` for per-token logits): a ``y`` of
            shape ``(N, 1)`` would otherwise broadcast against ``(N,)`` and give a wrong accuracy.
    """
    _check_backend("evaluate", model, backend)
    y = _to_numpy(y)  # the accuracy is counted on the host
    if y.ndim == 0 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"evaluate: x has {len(x)} examples and y has shape {y.shape}; they must match "
                         "and be non-empty")
    preds = predict(model, x, batch_size, backend=backend)
    if preds.shape != y.shape:
        raise ValueError(f"evaluate: labels of shape {y.shape} do not match the predictions' shape {preds.shape}")
    return float((preds == y).mean())
