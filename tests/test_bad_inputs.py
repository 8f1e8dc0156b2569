"""The inventory of bad inputs (the README's Troubleshooting table): each one ends in a clear error
naming what was wrong, raised before anything changed, or, where an answer exists, in the right answer."""

from __future__ import annotations

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import functional as F
from minitspeft import nn, ops
from minitspeft.optim import SGD, AdamW, clip_grad_norm
from minitspeft.peft import GateConfig, LoraConfig, get_peft_model
from minitspeft.train import evaluate, fit, predict


def _vit():
    mt.manual_seed(0)
    return nn.ViT(nn.TransformerConfig(n_layer=1, n_head=2, n_embd=8, n_classes=3, pooling="cls"),
                  patch_size=2, image_size=4)


def _lm():
    mt.manual_seed(0)
    return nn.Transformer(nn.TransformerConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=5, block_size=6,
                                               causal=True))


def _images(n=6):
    return np.random.default_rng(0).uniform(size=(n, 4, 4)), np.arange(n) % 3


def _param():
    return nn.Parameter(np.ones(2))


def _merged_then_saved(tmp_path):
    pm = get_peft_model(_vit(), LoraConfig(r=2, target_modules=["q_proj"]))
    pm.merge_and_unload()
    pm.save_pretrained(str(tmp_path))


def _stale_graph():
    a = mt.Tensor(np.ones(3), requires_grad=True)
    y = (a * a).sum()
    a.data = a.data * 2
    y.backward()


# (what you give, the exception, a pattern of its message); the README's Troubleshooting table lists them
CASES = {
    "a NumPy array where a Tensor belongs": (lambda t: nn.Linear(3, 2)(np.ones((4, 3))), TypeError,
                                             "linear: x must be a Tensor"),
    "a NumPy array to an op": (lambda t: ops.exp(np.ones(2)), TypeError, "exp: x must be a Tensor"),
    "an axis out of range": (lambda t: mt.Tensor(np.ones((2, 3))).sum(axis=2), ValueError, "sum: axis 2"),
    "a float axis": (lambda t: mt.Tensor(np.ones((2, 3))).mean(axis=1.5), TypeError, "mean: axis must be"),
    "a bool axis": (lambda t: mt.Tensor(np.ones((2, 3))).max(axis=True), TypeError, "max: axis must be"),
    "swapaxes out of range": (lambda t: mt.Tensor(np.ones((2, 3))).swapaxes(0, 2), ValueError, "swapaxes"),
    "transpose axes out of range": (lambda t: mt.Tensor(np.ones((2, 3))).transpose(0, 3), ValueError,
                                    "transpose"),
    "0-d logits": (lambda t: F.cross_entropy(mt.Tensor(np.array(1.0)), np.array(0)), ValueError,
                   "cross_entropy: logits"),
    "labels shaped (N, 1)": (lambda t: evaluate(_vit(), _images()[0], _images()[1][:, None]), ValueError,
                             r"labels of shape \(6, 1\)"),
    "a ModuleList index out of range": (lambda t: nn.ModuleList([nn.Linear(2, 2)])[1], IndexError,
                                        "index 1 is out of range for 1"),
    "an empty ModuleList": (lambda t: nn.ModuleList()[0], IndexError, "out of range for 0"),
    "a temperature too small for float32": (lambda t: get_peft_model(_vit(), LoraConfig(r=2),
                                                                     gate=GateConfig(temperature=1e-50)),
                                            ValueError, "temperature=1e-50 is below"),
    "lr NaN": (lambda t: AdamW([_param()], lr=float("nan")), ValueError, "AdamW: lr must be"),
    "betas of one number": (lambda t: AdamW([_param()], betas=(0.9,)), ValueError, "AdamW: betas"),
    "SGD momentum NaN": (lambda t: SGD([_param()], momentum=float("nan")), ValueError, "SGD: momentum"),
    "max_norm 0": (lambda t: clip_grad_norm([_param()], 0.0), ValueError, "clip_grad_norm: max_norm"),
    "max_grad_norm 0 in fit": (lambda t: fit(_vit(), *_images(), steps=1, max_grad_norm=0.0, progress=False),
                               ValueError, "fit: max_grad_norm"),
    "negative warmup_steps": (lambda t: fit(_vit(), *_images(), steps=1, warmup_steps=-1, progress=False),
                              ValueError, "fit: warmup_steps"),
    "checkpoint_every without a folder": (lambda t: fit(_vit(), *_images(), steps=1, checkpoint_every=1,
                                                        progress=False), ValueError, "checkpoint_dir"),
    "a float batch_size": (lambda t: fit(_vit(), *_images(), steps=1, batch_size=4.0, progress=False),
                           ValueError, "fit: batch_size"),
    "float labels": (lambda t: fit(_vit(), _images()[0], _images()[1] * 1.0, steps=1, progress=False),
                     ValueError, "integer class labels"),
    "saving after merge_and_unload": (_merged_then_saved, ValueError, "holds no adapters"),
    "changing .data under a graph": (lambda t: _stale_graph(), RuntimeError, "backward of 'mul'"),
    "token ids out of range": (lambda t: _lm()(np.array([[0, 7]])), ValueError, r"token ids must be in \[0, 5\)"),
    "float token ids": (lambda t: _lm()(np.array([[0.0, 1.0]])), ValueError, "integers"),
    "a sequence past block_size": (lambda t: _lm()(np.zeros((1, 7), dtype=int)), ValueError, "block_size 6"),
    "images of the wrong size": (lambda t: _vit()(np.zeros((2, 5, 5))), ValueError, "expected images"),
    "generate with top_k 0": (lambda t: _lm().generate(np.array([[1]]), 2, top_k=0), ValueError, "top_k"),
    "a LoRA rank of 0": (lambda t: LoraConfig(r=0), ValueError, "LoraConfig: r must be an integer >= 1"),
    "a target that matches nothing": (lambda t: get_peft_model(_vit(), LoraConfig(target_modules=["nope"])),
                                      ValueError, "matches no layer"),
    "dropout p = 1": (lambda t: nn.Dropout(1.0), ValueError, r"Dropout: p must be in \[0, 1\)"),
    "a Linear of width 0": (lambda t: nn.Linear(0, 2), ValueError, "Linear: in_features must be"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_input_ends_in_a_clear_error(case, tmp_path):
    call, error, pattern = CASES[case]
    with pytest.raises(error, match=pattern):
        call(tmp_path)


def test_predict_on_no_examples_is_an_empty_array():
    out = predict(_vit(), np.zeros((0, 4, 4)))
    assert out.shape == (0,) and out.dtype == np.int64


def test_the_readme_troubleshooting_table_lists_every_case():
    import pathlib

    text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    missing = [case for case in CASES if f"| {case} |" not in section]
    assert not missing, missing
