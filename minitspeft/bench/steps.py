"""The benchmark step in minitspeft, through its public API: build once, then time ``step()`` calls;
and what its twins copy (:func:`twin_spec`)."""

from __future__ import annotations

import numpy as np

from .. import backend, nn
from ..peft import GateConfig, LoraConfig, get_peft_model
from ..tensor import no_grad
from ..train import build_optimizer, train_step
from .config import BenchConfig

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]


def batch(config: BenchConfig, seed: int = 0) -> tuple:
    """A fixed batch: token ids ``(batch_size, seq_len)`` int64 and labels ``(batch_size,)`` int64 (host)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, size=(config.batch_size, config.seq_len))
    return ids, rng.integers(0, config.n_classes, size=config.batch_size)


def build(config: BenchConfig, variant: str):
    """The benchmark model (a PeftModel) and its AdamW: LoRA on every projection, gated for ``ts-lora``."""
    backend.manual_seed(0)
    cfg = nn.TransformerConfig(vocab_size=config.vocab_size, block_size=config.seq_len, n_layer=config.n_layer,
                               n_head=config.n_head, n_embd=config.n_embd, mlp_ratio=config.mlp_ratio,
                               n_classes=config.n_classes, pooling="mean")
    gate = None
    if variant == "ts-lora":
        gate = GateConfig(surrogate="sigmoid", temperature=config.temperature, tau_init=config.tau_init,
                          sparsity_weight=config.sparsity_weight)
    lora = LoraConfig(r=config.r, lora_alpha=config.lora_alpha, target_modules=TARGETS)
    model = get_peft_model(nn.Transformer(cfg), lora, gate=gate)
    return model, build_optimizer(model, config.lr)


def force_density(model, ids, density: float) -> None:
    """Set every gate's ``tau`` (and freeze it) so that about ``density`` of its tokens open on ``ids``.

    LoRA's ``B`` is drawn at random first, so that the ratios ``r`` are spread; ``tau`` is the
    ``1 - density`` quantile of each layer's ``r``, set layer by layer in the order of the forward pass
    (a layer's ratios depend on the gates before it, so each is read after those are set).
    """
    rng = np.random.default_rng(1)
    for _, layer in model.peft_layers():
        layer.lora_B.weight.data = backend.asarray(
            rng.normal(0, 0.5, size=layer.lora_B.weight.shape).astype(layer.lora_B.weight.dtype))
    for _, gate in model.gates():
        with no_grad():
            model(ids)
        score = backend.to_numpy(gate.last_score)
        q = np.quantile(score, 1 - density) if density < 1 else 0.0
        gate.tau.data = backend.asarray(np.asarray(q, dtype=gate.tau.dtype))
        gate.tau.requires_grad_(False)


def minitspeft_step(config: BenchConfig, variant: str, density: float | None = None, forward_only: bool = False):
    """Return ``(run, model)``: ``run()`` is one training step (forward, backward, AdamW) on a fixed batch,
    or with ``forward_only`` one inference forward. ``density`` (TS-LoRA) forces the share of open gates;
    that step updates with learning rate 0 (AdamW does all its work), so the share stays where it was put."""
    model, opt = build(config, variant)
    ids, labels = batch(config)
    if density is not None and variant == "ts-lora":
        force_density(model, ids, density)  # frozen thresholds: the optimiser skips them
        for group in opt.param_groups:  # the same work per step, but A and B stay put, and so do the gates
            group["lr"] = 0.0
    y = backend.asarray(labels)
    regularise = variant == "ts-lora" and density is None
    if forward_only:
        model.eval()

        @no_grad()
        def run():
            return model(ids)
    else:
        def run():
            return train_step(model, opt, ids, y, regularise=regularise)

    return run, model


def twin_spec(config: BenchConfig, variant: str, model=None) -> dict:
    """What a twin (PyTorch, HIPS autograd) needs to take the same step from the same state.

    ``model`` is a PeftModel from :func:`build` (built here when None), perhaps changed since. Returns
    ``arrays`` ``{name: host array}`` (every parameter, copied; names relative to the base model),
    ``groups`` (per optimiser group of :func:`~minitspeft.train.build_optimizer`: the ``names`` it trains,
    i.e. those with ``requires_grad``, and its ``lr``, ``betas``, ``eps``, ``weight_decay``), ``bounds``
    ``{name: lower bound}`` (the thresholds), ``scaling`` (LoRA's), ``gate`` (the GateConfig or None) and
    the batch ``ids``, ``labels``.

    Raises:
        NotImplementedError: for what the twins do not build (another gate variant, a regulariser
            target or bounds, a gate warm-up, DoRA, dropout).
    """
    if model is None:
        model, opt = build(config, variant)
    else:
        opt = build_optimizer(model, config.lr)
    gc, lc = model.gate_config, model.peft_config
    plain = gc is None or (gc.surrogate == "sigmoid" and gc.score == "ratio" and gc.keep_ratio is None
                           and gc.target_density is None and gc.warmup_steps == 0
                           and not (gc.bounds_weight and (gc.density_floor > 0 or gc.density_ceiling < 1)))
    if not plain or lc.use_dora or lc.lora_dropout or model.base_model.config.dropout:
        raise NotImplementedError("twin_spec: the twins build only the benchmark's model and gate")
    names = {id(p): n.removeprefix("base_model.") for n, p in model.named_parameters()}
    groups = [{"names": [names[id(p)] for p in g["params"] if p.requires_grad],
               **{k: g[k] for k in ("lr", "betas", "eps", "weight_decay")}} for g in opt.param_groups]
    ids, labels = batch(config)
    return {"arrays": {names[id(p)]: backend.to_numpy(p.data).copy() for p in model.parameters()},
            "groups": [g for g in groups if g["names"]],
            "bounds": {names[id(p)]: p.lower_bound for p in opt.parameters()
                       if p.requires_grad and p.lower_bound is not None},
            "scaling": lc.scaling, "gate": gc, "ids": ids, "labels": labels}


def density(model) -> float:
    """Mean share of token updates applied in the model's last forward (1.0 without gates)."""
    stats = model.gate_stats() if model.gate_config is not None else {}
    return float(np.mean([v["density"] for v in stats.values()])) if stats else 1.0
