"""The inventory of bad inputs (the README's Troubleshooting table): each one ends in a clear error
naming what was wrong, raised before anything changed, or, where an answer exists, in the right answer."""

from __future__ import annotations

import numpy as np
import pytest

import minitspeft as mt
import minitspeft.io
import minitspeft.optim
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


def _shape_mismatch_step():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(3))
    a.grad, b.grad = np.ones(2), np.ones(3)
    b.data = np.ones(2)  # the parameter changed shape after its gradient was set
    AdamW([a, b]).step()


def _wrong_grad_shape():
    a = mt.Tensor(np.ones(3), requires_grad=True)
    a.grad = np.ones(3)
    a.data = np.ones(2)  # the tensor changed shape after its gradient was set
    (a * 2).sum().backward()


def _rule_returning_none():
    a = mt.Tensor(np.ones(2), requires_grad=True)
    mt.Tensor.from_op(a.data * 2, (a,), lambda g: None, "double").sum().backward()


def _onto_a_file(tmp_path):
    (tmp_path / "afile").write_text("")
    get_peft_model(_vit(), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(str(tmp_path / "afile"))


def _gate(**kw):
    from minitspeft.peft import gated_update

    b = mt.Tensor(np.ones((2, 3)))
    return gated_update(b, b, kw.pop("tau", nn.Parameter(np.array(0.5))), **kw)


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
    "a memory setting out of range": (lambda t: mt.memory.keep_freed_memory(top_pad_mb=-1), ValueError,
                                      r"keep_freed_memory: top_pad_mb must be an integer in \[0, 2047\]"),
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
    "fit on a backend the model is not on": (
        lambda t: fit(_vit(), *_images(), steps=1, progress=False,
                      backend="strict" if mt.get_backend() == "numpy" else "numpy"),
        ValueError, r"fit: the model's parameters are \w+ arrays, but it would train on the \w+ backend"),
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
    "a gradient left from before a reshape, in a step": (lambda t: _shape_mismatch_step(), ValueError,
                                                r"parameter 1 has shape \(2,\) but its gradient \(3,\)"),
    "a gradient of another shape assigned": (lambda t: setattr(_param(), "grad", np.ones(5)), ValueError,
                                             r"grad: a tensor of shape \(2,\) was assigned a gradient of shape \(5,\)"),
    "a gradient of another dtype assigned": (lambda t: setattr(nn.Parameter(np.ones(2, np.float32)), "grad",
                                                               np.ones(2)), TypeError,
                                             "grad: a float32 tensor was assigned a float64 gradient"),
    "an unknown optimiser group setting": (lambda t: AdamW([{"params": [_param()], "lrr": 1.0}]), ValueError,
                                           r"unknown settings \['lrr'\]"),
    "a model where its parameters belong": (lambda t: AdamW(nn.Linear(2, 2)), TypeError,
                                            "params must be an iterable"),
    "None as the model": (lambda t: get_peft_model(None, LoraConfig()), TypeError, "model must be a minitspeft Module"),
    "None as the config": (lambda t: nn.Transformer(None), TypeError, "config must be a TransformerConfig"),
    "a Tensor plus None": (lambda t: mt.Tensor(np.ones(2)) + None, TypeError, "add: cannot combine"),
    "a tensor of strings": (lambda t: mt.Tensor("abc"), TypeError, "data must be numbers"),
    "from_op without a backward rule": (lambda t: mt.Tensor.from_op(np.ones(2), (), None, "op"), TypeError,
                                        "backward must be callable"),
    "a backward rule that returns None": (lambda t: _rule_returning_none(), RuntimeError,
                                          "backward of 'double': the rule must return a tuple"),
    "a .grad left from before a reshape": (lambda t: _wrong_grad_shape(), RuntimeError, r"\.grad of shape \(3,\)"),
    "a negative gate temperature": (lambda t: _gate(temperature=-1.0), ValueError,
                                    "gated_update: temperature must be > 0"),
    "a NaN threshold": (lambda t: _gate(tau=nn.Parameter(np.array(np.nan))), ValueError, "tau is nan"),
    "softmax over an empty axis": (lambda t: F.softmax(mt.Tensor(np.ones((2, 0)))), ValueError, "is empty"),
    "softmax over an axis out of range": (lambda t: F.softmax(mt.Tensor(np.ones(2)), axis=3), ValueError,
                                          "softmax: axis 3 is out of range"),
    "a linear bias of the wrong shape": (lambda t: F.linear(mt.Tensor(np.ones((2, 3))), mt.Tensor(np.ones((4, 3))),
                                                            mt.Tensor(np.ones(3))), ValueError, "linear: bias shape"),
    "a float in a shape": (lambda t: mt.Tensor(np.ones(6)).reshape(2.0, 3), TypeError, "reshape: the shape"),
    "a string dropout probability": (lambda t: F.dropout(mt.Tensor(np.ones(2)), "0.5"), ValueError, "dropout: p"),
    "a string seed for generate": (lambda t: _lm().generate(np.array([[1]]), 2, seed="a"), ValueError,
                                   "generate: seed"),
    "None as a path": (lambda t: mt.io.load_arrays(None), TypeError, "load_arrays: path must be"),
    "save_pretrained onto a file": (_onto_a_file, NotADirectoryError, "is not a folder"),
    "a schedule factor past 1": (lambda t: mt.optim.warmup_cosine(5, 10, 0, min_factor=2.0), ValueError,
                                 "min_factor"),
    "a NaN learning-rate factor": (lambda t: mt.optim.set_lr_factor(AdamW([_param()]), float("nan")), ValueError,
                                   "set_lr_factor: factor"),
    "a NaN lower bound": (lambda t: nn.Parameter(np.ones(1), lower_bound=float("nan")), ValueError,
                          "Parameter: lower_bound"),
    "a 1-d embedding table": (lambda t: F.embedding(np.array([0]), mt.Tensor(np.ones(3))), ValueError,
                              "embedding: weight must be"),
    "a float ignore_index": (lambda t: F.cross_entropy(mt.Tensor(np.ones((2, 3))), np.array([0, 1]),
                                                       ignore_index=1.5), ValueError, "ignore_index"),
    "a negative LayerNorm eps": (lambda t: nn.LayerNorm(3, eps=-1.0), ValueError, "LayerNorm: eps"),
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
