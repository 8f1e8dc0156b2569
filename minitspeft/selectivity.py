"""Does a token gate select tokens? Its choices measured against what is known about the tokens.

Two kinds of ground truth (``docs/token-selection.md`` derives both):

- **salient tokens**: the needle task marks the tokens that decide the label
  (the two markers and their values). A gate that selects tokens should open
  there more often than on fillers, and its score (what it thresholds) should
  rank them higher: ``token_auc`` is the ROC AUC of the score between salient
  and other non-CLS tokens (0.5: no information; 1: every salient token above
  every filler).
- **provably useless updates**: a classifier that pools the CLS token reads
  only the last block's output at position 0. In that block the outputs of
  ``q_proj``, ``o_proj``, ``fc1`` and ``fc2`` (and adapters on its ``attn`` and
  ``mlp``) at every other position never reach position 0: attention mixes
  positions only through the keys and values, and everything after it acts
  position by position. ``useless_density`` is the share of those updates the
  gates still apply; a gate that selects tokens should drive it to 0.

The functions run on the host with NumPy (an experiment-layer module).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from . import backend
from .nn.module import module_backend
from .tensor import no_grad

USELESS_PARTS = ("attn.q_proj", "attn.o_proj", "mlp.fc1", "mlp.fc2", "attn", "mlp")


def useless_layers(peft_model) -> list:
    """Names of the wrapped layers whose updates at non-CLS positions cannot change the logits.

    Derived here: with ``pooling="cls"`` the logits read only the last block's
    output at position 0, and in that block only ``k_proj`` and ``v_proj`` carry
    other positions into position 0 (through attention); ``q_proj``, ``o_proj``,
    ``fc1``, ``fc2`` and sub-layer adapters act per position. Empty for mean
    pooling, a language model, or a model without ``blocks``.

    Args:
        peft_model: a :class:`~minitspeft.peft.PeftModel` over a ``Transformer`` or ``ViT``.

    Returns:
        A list of layer names (as in ``gate_stats()``), possibly empty.
    """
    config = getattr(peft_model.base_model, "config", None)
    if config is None or config.n_classes is None or config.pooling != "cls" or config.causal:
        return []
    last = f"blocks.{config.n_layer - 1}."
    return [name for name, _ in peft_model.peft_layers()
            if name.startswith(last) and name[len(last):] in USELESS_PARTS]


def roc_auc(positive, negative) -> float:
    """ROC AUC: the probability that a random positive scores above a random negative (ties count half).

    Computed from average ranks (the Mann-Whitney U statistic). NaN when either set is empty.

    Args:
        positive, negative: 1-D arrays of scores (lists, NumPy or backend arrays).
    """
    pos = backend.to_numpy(positive).astype(np.float64).ravel()  # device scores: one explicit copy each
    neg = backend.to_numpy(negative).astype(np.float64).ravel()
    if not len(pos) or not len(neg):
        return float("nan")
    values = np.concatenate([pos, neg])
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values))
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends, strict=True):  # tied values share their average rank (1-based)
        ranks[order[s:e]] = (s + e + 1) / 2
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


@no_grad()
def gate_selectivity(peft_model, x, mask=None, batch_size: int = 256) -> dict:
    """Run ``x`` through a gated model (evaluation mode) and measure where its gates open.

    Args:
        peft_model: a gated :class:`~minitspeft.peft.PeftModel` whose gates see
            ``(B, T, C)`` (position 0 is the CLS token).
        x: inputs ``(N, ...)``; mask: optional bool ``(N, T)``, True at the
            salient tokens (position 0 never counts as salient or other).
        batch_size: examples per forward pass.

    Returns:
        ``{"layers": {name: {...}}, "blocks": [...], "useless_density": float or None, "skipped": {...}}``.
        Gates that see another token axis than most (a ViT's ``patch_emb``, before the CLS token is
        put in front) are left out and listed in ``skipped`` with the shape they saw. Per layer:
        ``density``, ``cls_density`` (at position 0), ``non_cls_density``,
        ``seq_spread`` (the standard deviation of ``S`` over a sequence's
        non-CLS tokens, averaged over sequences), ``useless``
        (whether :func:`useless_layers` lists it) and, with a mask,
        ``salient_density``, ``other_density`` and ``token_auc``. Per block
        (``blocks.{i}``, in order): the means of those over the block's gated
        layers. ``useless_density``: applied share of the provably useless
        updates (None when the model has none).

    Raises:
        ValueError: if the model has no gates, or ``mask`` does not match the gates' ``(N, T)``.
    """
    gates = dict(peft_model.gates())
    if not gates:
        raise ValueError("gate_selectivity: the model has no token gates")
    useless = set(useless_layers(peft_model))
    S_all, s_all = _run_gates(peft_model, gates, x, batch_size)
    shapes = {name: np.concatenate(S_all[name]).shape for name in gates}
    seen = Counter(shapes.values()).most_common(1)[0][0]  # the model's (N, T): what most gates see
    skipped = {name: shape for name, shape in shapes.items() if shape != seen}
    gates = {name: gate for name, gate in gates.items() if name not in skipped}
    if mask is not None:
        if np.shape(mask) != seen:
            raise ValueError(f"gate_selectivity: mask has shape {np.shape(mask)}, the gates saw {seen}")
        salient = backend.to_numpy(mask).astype(bool)  # a new host array (the mask may be on the device)
        other = ~salient
        salient[:, 0] = other[:, 0] = False  # position 0 (CLS) counts as neither
    layers = {}
    for name in gates:
        S, s = np.concatenate(S_all[name]), np.concatenate(s_all[name]).astype(np.float64)  # (N, T)
        row = {"density": float(S.mean()), "cls_density": float(S[:, 0].mean()),
               "non_cls_density": float(S[:, 1:].mean()),
               "seq_spread": float(S[:, 1:].std(axis=1).mean()), "useless": name in useless}
        if mask is not None:
            row.update(salient_density=float(S[salient].mean()), other_density=float(S[other].mean()),
                       token_auc=roc_auc(s[salient], s[other]))
        layers[name] = (row, S)
    useless_rows = [S[:, 1:] for name, (_, S) in layers.items() if name in useless]
    useless_density = float(np.mean(np.concatenate([u.ravel() for u in useless_rows]))) if useless_rows else None
    layer_rows = {name: row for name, (row, _) in layers.items()}
    return {"layers": layer_rows, "blocks": _by_block(layer_rows), "useless_density": useless_density,
            "skipped": skipped}


def _run_gates(peft_model, gates: dict, x, batch_size: int) -> tuple:
    """Each gate's ``S`` and score over ``x``, batch by batch on the host: ``({name: [S, ...]}, {name: [...]})``."""
    S_all = {n: [] for n in gates}
    s_all = {n: [] for n in gates}
    with backend.using(module_backend(peft_model)), peft_model.eval_mode():  # where the model is
        for i in range(0, len(x), batch_size):
            peft_model(x[i:i + batch_size])
            for name, gate in gates.items():
                S_all[name].append(backend.to_numpy(gate.last_S.data))
                s_all[name].append(backend.to_numpy(gate.last_score))
    return S_all, s_all


def _by_block(layer_rows: dict) -> list:
    """Means of each numeric field over the gated layers of each block ``blocks.{i}``, in block order."""
    blocks = sorted({int(n.split(".")[1]) for n in layer_rows if n.startswith("blocks.")})
    out = []
    for b in blocks:
        rows = [r for n, r in layer_rows.items() if n.startswith(f"blocks.{b}.")]
        keys = [k for k, v in rows[0].items() if isinstance(v, float)]
        out.append({k: float(np.mean([r[k] for r in rows])) for k in keys})
    return out


def salient_ratio(block: dict) -> float:
    """``salient_density / other_density`` of one block (inf when no other token is open)."""
    other = block["other_density"]
    return float("inf") if other == 0 else block["salient_density"] / other
