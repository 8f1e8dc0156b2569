"""Training and evaluation loops for classifiers, with tqdm progress bars.

``fit`` runs AdamW with a warm-up-then-cosine learning rate, adds the gate's
sparsity regulariser when the model is a gated :class:`PeftModel`, keeps the
thresholds frozen (and the regulariser off) for the gate's ``warmup_steps``,
and stops with a clear error if the loss stops being finite.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from . import backend
from . import functional as F
from .nn.module import Module
from .optim import AdamW, set_lr_factor, warmup_cosine
from .peft.model import PeftModel
from .tensor import no_grad


@dataclass
class FitResult:
    """What :func:`fit` measured.

    Attributes:
        history: one dict per step: ``step``, ``loss`` (cross-entropy), ``acc``
            (batch accuracy), and for gated models ``density`` (mean over
            gated layers) and ``tau`` (list per gated layer).
        seconds: wall-clock time of the loop.
    """

    history: list = field(default_factory=list)
    seconds: float = 0.0


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless shuffled mini-batch index arrays, a fresh permutation each epoch."""
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield perm[i:i + batch_size]


def fit(model: Module, x, y, *, steps: int, batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.0,
        warmup_steps: int = 0, seed: int = 0, desc: str = "train", progress: bool = True) -> FitResult:
    """Train a classifier with cross-entropy (plus the gate regulariser for gated models).

    Args:
        model: a Module or :class:`PeftModel` mapping a batch of ``x`` to logits ``(B, n_classes)``.
        x: host array ``(N, ...)`` of inputs; y: integer ``(N,)`` labels.
        steps: optimiser steps (>= 1).
        batch_size: examples per step (>= 1).
        lr: peak learning rate; weight_decay: AdamW decoupled decay.
        warmup_steps: linear learning-rate warm-up before the cosine decay.
        seed: seeds batch order and dropout (>= 0).
        desc: label of the progress bar; progress: show the bar.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: for mismatched ``x``/``y`` lengths or non-positive sizes.
        FloatingPointError: naming the step at which the loss became NaN or infinite.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit: x has {len(x)} examples and y has {len(y)}; they must match and be non-empty")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"fit: steps and batch_size must be >= 1, got {steps} and {batch_size}")
    backend.manual_seed(seed)
    rng = np.random.default_rng(seed)
    peft = model if isinstance(model, PeftModel) else None
    gated = peft is not None and peft.gate_config is not None
    gate_warmup = peft.gate_config.warmup_steps if gated else 0
    if peft is not None:
        opt = AdamW(peft.optimizer_groups(lr, weight_decay), lr=lr, weight_decay=weight_decay)
    else:
        opt = AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    result = FitResult()
    batches = _batches(len(x), min(batch_size, len(x)), rng)
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step in bar:
        set_lr_factor(opt, warmup_cosine(step, steps, warmup_steps))
        gates_on = gated and step >= gate_warmup
        if gated and not gates_on:
            for group in opt.param_groups:
                if group.get("name") == "tau":
                    group["lr"] = 0.0
        idx = next(batches)
        xb, yb = x[idx], backend.asarray(y[idx])
        logits = model(xb)
        ce = F.cross_entropy(logits, yb)
        loss = (ce + peft.sparsity_loss()) if gates_on else ce
        value = float(loss.data)
        if not math.isfinite(value):
            bar.close()
            raise FloatingPointError(f"fit: loss became {value} at step {step} ({desc}); lower lr or check inputs")
        opt.zero_grad()
        loss.backward()
        opt.step()
        acc = float((logits.data.argmax(axis=-1) == yb).mean())
        record = {"step": step, "loss": float(ce.data), "acc": acc}
        postfix = {"loss": f"{record['loss']:.3f}", "acc": f"{acc:.2f}"}
        if gated:
            stats = peft.gate_stats()
            record["density"] = float(np.mean([s["density"] for s in stats.values()]))
            record["tau"] = [s["tau"] for s in stats.values()]
            postfix["density"] = f"{record['density']:.2f}"
        result.history.append(record)
        bar.set_postfix(postfix, refresh=False)
    bar.close()
    result.seconds = time.perf_counter() - start
    return result


@no_grad()
def predict(model: Module, x, batch_size: int = 256) -> np.ndarray:
    """Class predictions ``(N,)`` (int64, on the host) in evaluation mode; restores the previous mode."""
    was_training = model.training
    model.eval()
    try:
        preds = [backend.to_numpy(model(x[i:i + batch_size]).data.argmax(axis=-1))
                 for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(preds).astype(np.int64)


def evaluate(model: Module, x, y, batch_size: int = 256) -> float:
    """Accuracy in ``[0, 1]`` of ``model`` on ``(x, y)`` (evaluation mode, no graph)."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"evaluate: x has {len(x)} examples and y has {len(y)}; they must match and be non-empty")
    return float((predict(model, x, batch_size) == np.asarray(y)).mean())
