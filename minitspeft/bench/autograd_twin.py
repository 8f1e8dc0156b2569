"""The benchmark step in HIPS autograd: the same model, weights, batch, loss and AdamW as minitspeft's.

Imported only by the benchmark's worker process (and the tests), never by
``import minitspeft``. The model is a function of a dict of arrays named as
minitspeft's parameters (``blocks.0.attn.q_proj.lora_A.weight``, ...), written
with ``autograd.numpy``; ``autograd.value_and_grad`` differentiates the loss
with respect to the trainable ones only, and a NumPy AdamW
(:class:`AdamW`, minitspeft's formulas) updates them. The formulas are those of
:mod:`minitspeft.nn.transformer` and :mod:`minitspeft.functional`: tanh GELU
(Hendrycks and Gimpel 2016), LayerNorm eps 1e-5, attention
``softmax(q k^T / sqrt(head_dim)) v`` (Vaswani et al. 2017), LoRA
``b + scaling B A x`` (Hu et al. 2021) and the TS-PEFT gate (:func:`gate`).
"""

from __future__ import annotations

import math

import autograd.numpy as anp
import numpy as np
from autograd import value_and_grad
from autograd.tracer import getval

from .config import BenchConfig
from .steps import twin_spec

_GELU_K = math.sqrt(2.0 / math.pi)


def linear(x, w, b=None):
    """``x @ w.T + b``: ``x`` ``(..., in)``, ``w`` ``(out, in)``, ``b`` ``(out,)`` -> ``(..., out)``."""
    y = x @ w.T
    return y if b is None else y + b


def layer_norm(x, w, b, eps=1e-5):
    """``(x - mean) / sqrt(var + eps) * w + b`` over the last axis (biased variance, as PyTorch)."""
    c = x - anp.mean(x, axis=-1, keepdims=True)
    return c / anp.sqrt(anp.mean(c * c, axis=-1, keepdims=True) + eps) * w + b


def gelu(x):
    """``0.5 x (1 + tanh(k (x + 0.044715 x^3)))``, ``k = sqrt(2/pi)``."""
    return 0.5 * x * (1 + anp.tanh(_GELU_K * (x + 0.044715 * x * x * x)))


def sigmoid(u):
    """``1 / (1 + e^-u)`` as ``(1 + tanh(u / 2)) / 2``: stable for any ``u`` (and no SciPy needed)."""
    return 0.5 * (anp.tanh(0.5 * u) + 1.0)


def log_softmax(logits):
    """``logits - logsumexp(logits)`` over the last axis, shifted by the (constant) row maximum."""
    shifted = logits - getval(anp.max(logits, axis=-1, keepdims=True))
    return shifted - anp.log(anp.sum(anp.exp(shifted), axis=-1, keepdims=True))


def norm(v):
    """``||v||`` over the last axis, with gradient 0 where ``v = 0`` (minitspeft's and PyTorch's convention)."""
    sq = anp.sum(v * v, axis=-1)
    return anp.where(sq > 0, anp.sqrt(anp.where(sq > 0, sq, 1.0)), 0.0)


def gate(b, d, tau, config):
    """TS-PEFT (arXiv 2511.16147), as :func:`minitspeft.peft.gate.reference_gate`: ``(b + S d, S)``.

    ``b, d`` ``(..., C)``; ``r = ||d|| / (||b|| + eps)`` ``(...)``, ``z = r - tau``,
    ``S = H + phi(z) - stop_gradient(phi(z))`` with ``H = 1[z >= 0]`` and ``phi(z) = sigmoid(z / T)``
    (:mod:`minitspeft.peft.surrogates`); ``getval`` is the stop-gradient.
    """
    nb, nd = (b, d) if config.grad_through_ratio else (getval(b), getval(d))
    z = norm(nd) / (norm(nb) + config.eps) - tau
    phi = sigmoid(z / config.temperature)
    S = (getval(z) >= 0).astype(b.dtype) + (phi - getval(phi))  # the bracket is exactly 0: S is exactly H
    return b + S[..., None] * d, S


def forward(p: dict, ids, config: BenchConfig, scaling: float, gate_config, gates: dict):
    """Logits ``(B, n_classes)`` for ids ``(B, T)``; each gated layer's ``S`` ``(B, T)`` goes into ``gates``."""

    def lora(name, x):
        b = linear(x, p[f"{name}.base_layer.weight"], p[f"{name}.base_layer.bias"])
        d = linear(linear(x, p[f"{name}.lora_A.weight"]), p[f"{name}.lora_B.weight"]) * scaling
        if gate_config is None:
            return b + d
        out, gates[name] = gate(b, d, p[f"{name}.gate.tau"], gate_config)
        return out

    B, T = ids.shape
    C, H = config.n_embd, config.n_head
    hd = C // H
    x = p["tok_emb.weight"][ids] + p["pos_emb.weight"][:T]  # (B, T, C)
    for i in range(config.n_layer):
        blk = f"blocks.{i}"
        h = layer_norm(x, p[f"{blk}.ln1.weight"], p[f"{blk}.ln1.bias"])
        q, k, v = (anp.transpose(anp.reshape(lora(f"{blk}.attn.{n}_proj", h), (B, T, H, hd)), (0, 2, 1, 3))
                   for n in "qkv")  # (B, H, T, hd)
        s = (q @ anp.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(hd))  # (B, H, T, T)
        e = anp.exp(s - getval(anp.max(s, axis=-1, keepdims=True)))  # the shift changes no value or gradient
        y = (e / anp.sum(e, axis=-1, keepdims=True)) @ v  # (B, H, T, hd)
        x = x + lora(f"{blk}.attn.o_proj", anp.reshape(anp.transpose(y, (0, 2, 1, 3)), (B, T, C)))
        h = layer_norm(x, p[f"{blk}.ln2.weight"], p[f"{blk}.ln2.bias"])
        x = x + lora(f"{blk}.mlp.fc2", gelu(lora(f"{blk}.mlp.fc1", h)))
    pooled = anp.mean(layer_norm(x, p["ln_f.weight"], p["ln_f.bias"]), axis=1)  # (B, C)
    return linear(pooled, p["head.weight"], p["head.bias"])


class AdamW:
    """Adam with decoupled weight decay (Loshchilov and Hutter 2019), as :class:`minitspeft.optim.AdamW`::

        p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps);  then p <- max(p, bound) if bounded

    ``groups``: ``[{"names", "lr", "betas", "eps", "weight_decay"}]``; ``bounds``: ``{name: lower bound}``.
    """

    def __init__(self, params: dict, groups: list, bounds: dict):
        self.groups, self.bounds, self.t = groups, bounds, 0
        self.m = {n: np.zeros_like(params[n]) for g in groups for n in g["names"]}
        self.v = {n: np.zeros_like(params[n]) for n in self.m}

    def step(self, params: dict, grads: dict) -> None:
        """Update ``params`` (a dict of arrays) in place from ``grads`` (same names)."""
        self.t += 1
        t = self.t
        for g in self.groups:
            lr, (b1, b2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
            for n in g["names"]:
                p, grad = params[n], grads[n]
                if wd:
                    p = p * (1 - lr * wd)
                self.m[n] = b1 * self.m[n] + (1 - b1) * grad
                self.v[n] = b2 * self.v[n] + (1 - b2) * (grad * grad)
                p = p - lr * (self.m[n] / (1 - b1**t)) / (np.sqrt(self.v[n] / (1 - b2**t)) + eps)
                params[n] = np.maximum(p, p.dtype.type(self.bounds[n])) if n in self.bounds else p


class Twin:
    """The twin's state: ``frozen`` and ``trainable`` dicts of arrays, the last forward's ``S`` (``gates``)
    and the last step's gradients (``grads``)."""

    def __init__(self, frozen: dict, trainable: dict):
        self.frozen, self.trainable, self.gates, self.grads = frozen, trainable, {}, {}

    def trainable_arrays(self) -> dict:
        """``{name: copy}`` of the trainable parameters."""
        return {n: a.copy() for n, a in self.trainable.items()}

    def trainable_grads(self) -> dict:
        """``{name: copy}`` of the trainable parameters' gradients from the last step."""
        return {n: np.array(g) for n, g in self.grads.items()}

    def gate_values(self) -> dict:
        """``{layer name: S}`` (``(B, T)``, exactly 0 or 1) of the last forward."""
        return {n: np.array(S) for n, S in self.gates.items()}

    def density(self) -> float:
        """Mean share of token updates applied in the last forward (1.0 without gates), as ``steps.density``."""
        values = [S.mean() for S in self.gate_values().values()]
        return float(sum(values) / len(values)) if values else 1.0


def step(config: BenchConfig, variant: str, model=None) -> tuple:
    """``(run, twin)``: ``run()`` is one training step in HIPS autograd and returns ``{"loss": cross-entropy}``.

    The twin starts from the minitspeft ``model`` (``steps.build(config, variant)`` when None): every
    parameter copied, differentiated with respect to exactly what minitspeft's optimiser trains. One step
    is forward, cross-entropy (plus, gated, ``sparsity_weight * mean(S)`` over all gated tokens of all
    layers, as ``PeftModel.sparsity_loss``), ``value_and_grad``, then :class:`AdamW`.
    """
    spec = twin_spec(config, variant, model)
    gate_config, arrays = spec["gate"], spec["arrays"]
    trained = [n for g in spec["groups"] for n in g["names"]]
    twin = Twin({n: a for n, a in arrays.items() if n not in trained}, {n: arrays[n] for n in trained})
    opt = AdamW(twin.trainable, spec["groups"], spec["bounds"])
    ids, labels = spec["ids"], spec["labels"]
    weight = gate_config.sparsity_weight if gate_config is not None else 0.0
    aux = {}

    def loss(trainable: dict):
        gates = {}
        logits = forward({**twin.frozen, **trainable}, ids, config, spec["scaling"], gate_config, gates)
        logp = log_softmax(logits)  # (B, n_classes)
        ce = -anp.mean(logp[np.arange(len(labels)), labels])
        twin.gates = {n: getval(S) for n, S in gates.items()}
        aux["ce"] = getval(ce)
        if not weight:
            return ce
        return ce + weight * anp.mean(anp.concatenate([anp.reshape(S, (-1,)) for S in gates.values()]))

    grad_fn = value_and_grad(loss)

    def run() -> dict:
        _, twin.grads = grad_fn(twin.trainable)
        opt.step(twin.trainable, twin.grads)
        return {"loss": float(aux["ce"])}

    return run, twin
