"""The benchmark step in PyTorch (CPU): the same model, weights, batch, loss and AdamW as minitspeft's.

Imported only by the benchmark's worker process (and the tests), never by
``import minitspeft``. The modules mirror minitspeft's, with the same
parameter names (``blocks.0.attn.q_proj.lora_A.weight``, ...), so the
minitspeft model's arrays load with ``load_state_dict(strict=True)``:

- ``Transformer``: ``tok_emb(ids) + pos_emb[:T]`` ``(B, T, C)``, pre-LayerNorm
  ``Block``s, ``ln_f``, mean over tokens ``(B, C)``, ``head`` ``(B, n_classes)``;
- ``Block``: ``x + attn(ln1(x))``, then ``x + fc2(gelu(fc1(ln2(x))))``, GELU in
  its tanh form, ``LayerNorm`` eps 1e-5 (as :mod:`minitspeft.nn.transformer`);
- ``Attention``: separate ``q_proj, k_proj, v_proj, o_proj``, heads
  ``(B, n_head, T, head_dim)``, ``softmax(q k^T / sqrt(head_dim)) v``, written out
  (not ``scaled_dot_product_attention``), as :mod:`minitspeft.nn.attention`;
- ``LoraLinear``: ``b = W0 x + bias``, ``d = scaling B A x`` (Hu et al. 2021), ``b + d``
  or, gated, ``b + S d`` (:class:`Gate`).

The trainable set, the optimiser groups and the thresholds' bound come from
:func:`~minitspeft.bench.steps.twin_spec`, i.e. from minitspeft's own optimiser.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import BenchConfig
from .steps import twin_spec


class Gate(nn.Module):
    """The TS-PEFT token gate (arXiv 2511.16147) as :func:`minitspeft.peft.gate.reference_gate` writes it.

    ``b, d`` ``(..., C)``: ``r = ||d|| / (||b|| + eps)`` over the last axis ``(...)``, ``z = r - tau``,
    ``S = H + phi(z) - stop_gradient(phi(z))`` with ``H = 1[z >= 0]`` and ``phi(z) = sigmoid(z / T)``
    (:mod:`minitspeft.peft.surrogates`); returns ``b + S[..., None] d`` and keeps ``S`` in ``last_S``.
    """

    def __init__(self, config):
        super().__init__()
        self.tau = nn.Parameter(torch.zeros(()))
        self.config, self.last_S = config, None

    def forward(self, b: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        c = self.config
        nb, nd = (b, d) if c.grad_through_ratio else (b.detach(), d.detach())
        r = torch.linalg.vector_norm(nd, dim=-1) / (torch.linalg.vector_norm(nb, dim=-1) + c.eps)
        z = r - self.tau
        phi = torch.sigmoid(z / c.temperature)
        S = (z >= 0).to(b.dtype) + (phi - phi.detach())  # the bracket is exactly 0: S is exactly H
        self.last_S = S
        return b + S[..., None] * d


class LoraLinear(nn.Module):
    """``base_layer(x) + scaling * lora_B(lora_A(x))``, the update gated per token when ``gate`` is given."""

    def __init__(self, n_in: int, n_out: int, r: int, scaling: float, gate=None):
        super().__init__()
        self.base_layer = nn.Linear(n_in, n_out)
        self.lora_A = nn.Linear(n_in, r, bias=False)
        self.lora_B = nn.Linear(r, n_out, bias=False)
        self.scaling = scaling
        self.gate = Gate(gate) if gate is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base_layer(x)
        d = self.lora_B(self.lora_A(x)) * self.scaling
        return b + d if self.gate is None else self.gate(b, d)


class Attention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017), not causal: ``(B, T, C)`` -> ``(B, T, C)``."""

    def __init__(self, config: BenchConfig, lora):
        super().__init__()
        self.n_head = config.n_head
        C = config.n_embd
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (lora(C, C) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hd = C // self.n_head

        def heads(t):
            return t.reshape(B, T, self.n_head, hd).transpose(1, 2)  # (B, n_head, T, head_dim)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        att = torch.softmax((q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hd)), dim=-1)  # (B, n_head, T, T)
        return self.o_proj((att @ v).transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))``, hidden width ``mlp_ratio * n_embd``."""

    def __init__(self, config: BenchConfig, lora):
        super().__init__()
        self.fc1 = lora(config.n_embd, config.mlp_ratio * config.n_embd)
        self.fc2 = lora(config.mlp_ratio * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LayerNorm block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, config: BenchConfig, lora):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.n_embd, eps=1e-5), nn.LayerNorm(config.n_embd, eps=1e-5)
        self.attn, self.mlp = Attention(config, lora), MLP(config, lora)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """The benchmark's encoder classifier: ids ``(B, T)`` int64 -> logits ``(B, n_classes)``."""

    def __init__(self, config: BenchConfig, scaling: float, gate=None):
        super().__init__()
        C = config.n_embd

        def lora(n_in, n_out):
            return LoraLinear(n_in, n_out, config.r, scaling, gate)

        self.tok_emb, self.pos_emb = nn.Embedding(config.vocab_size, C), nn.Embedding(config.seq_len, C)
        self.blocks = nn.ModuleList([Block(config, lora) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(C, eps=1e-5)
        self.head = nn.Linear(C, config.n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(ids) + self.pos_emb.weight[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x).mean(dim=1))

    def gates(self) -> dict:
        """``{layer name: Gate}`` for every gated layer, in module order."""
        return {n.removesuffix(".gate"): m for n, m in self.named_modules() if isinstance(m, Gate)}

    def trainable_arrays(self) -> dict:
        """``{name: NumPy copy}`` of the trainable parameters."""
        return {n: p.detach().numpy().copy() for n, p in self.named_parameters() if p.requires_grad}

    def trainable_grads(self) -> dict:
        """``{name: NumPy copy}`` of the trainable parameters' gradients from the last step."""
        return {n: p.grad.numpy().copy() for n, p in self.named_parameters() if p.requires_grad}

    def gate_values(self) -> dict:
        """``{layer name: S}`` (NumPy ``(B, T)``, exactly 0 or 1) of the last forward."""
        return {n: g.last_S.detach().numpy().copy() for n, g in self.gates().items() if g.last_S is not None}

    def density(self) -> float:
        """Mean share of token updates applied in the last forward (1.0 without gates), as ``steps.density``."""
        values = [S.mean() for S in self.gate_values().values()]
        return float(sum(values) / len(values)) if values else 1.0


def step(config: BenchConfig, variant: str, model=None) -> tuple:
    """``(run, twin)``: ``run()`` is one training step in PyTorch and returns ``{"loss": cross-entropy}``.

    The twin starts from the minitspeft ``model`` (``steps.build(config, variant)`` when None): every
    parameter copied, ``requires_grad`` on exactly what minitspeft's optimiser trains. One step is
    forward, ``cross_entropy`` (plus, gated, ``sparsity_weight * mean(S)`` over all gated tokens of all
    layers, as ``PeftModel.sparsity_loss``), backward, ``torch.optim.AdamW`` with minitspeft's groups,
    then ``tau <- max(tau, 0)`` (the bound minitspeft's optimiser projects onto).
    """
    spec = twin_spec(config, variant, model)
    gate = spec["gate"]
    twin = Transformer(config, spec["scaling"], gate)
    twin.load_state_dict({n: torch.from_numpy(a) for n, a in spec["arrays"].items()}, strict=True)
    params = dict(twin.named_parameters())
    trained = {n for g in spec["groups"] for n in g["names"]}
    for n, p in params.items():
        p.requires_grad_(n in trained)
    opt = torch.optim.AdamW([{"params": [params[n] for n in g["names"]],
                              **{k: g[k] for k in ("lr", "betas", "eps", "weight_decay")}} for g in spec["groups"]])
    bounded = [(params[n], bound) for n, bound in spec["bounds"].items()]
    ids, labels = torch.from_numpy(spec["ids"]), torch.from_numpy(spec["labels"])

    def run() -> dict:
        ce = F.cross_entropy(twin(ids), labels)
        loss = ce
        if gate is not None and gate.sparsity_weight:
            loss = ce + gate.sparsity_weight * torch.cat([g.last_S.reshape(-1) for g in twin.gates().values()]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p, bound in bounded:
                p.clamp_(min=bound)
        return {"loss": ce.item()}

    return run, twin
