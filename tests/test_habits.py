"""The habits a PyTorch user brings, where this round added them: each works as in torch, or is refused clearly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import minitspeft as mt
from minitspeft.testing import check_grad


def test_the_submodules_are_there_after_importing_the_package_alone():
    code = ("import minitspeft as mt; print(mt.nn.Linear.__name__, mt.optim.AdamW.__name__, mt.functional.gelu.__name__,"
            " mt.peft.LoraConfig.__name__, mt.train.fit.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["Linear", "AdamW", "gelu", "LoraConfig", "fit"], proc.stderr
    with pytest.raises(AttributeError, match="module 'minitspeft' has no attribute 'nope'"):
        mt.nope  # noqa: B018


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "var", "norm"])
def test_dim_and_keepdim_are_axis_and_keepdims(name):
    x = mt.Tensor(np.random.default_rng(0).normal(size=(2, 3, 4)))
    torch_style = getattr(x, name)(dim=1, keepdim=True)
    if name in ("max", "min"):  # with dim=, PyTorch's (values, indices)
        values, indices = torch_style
        np.testing.assert_array_equal(indices.data, getattr(np, "arg" + name)(x.data, axis=1)[:, None])
        torch_style = torch_style.values
    np.testing.assert_array_equal(torch_style.data, getattr(x, name)(axis=1, keepdims=True).data)
    with pytest.raises(TypeError, match=f"{name}: got both axis and dim"):
        getattr(x, name)(1, dim=1)
    with pytest.raises(TypeError, match=f"{name}: got both keepdims and keepdim"):
        getattr(x, name)(keepdims=True, keepdim=True)


def test_softmax_takes_dim():
    x = mt.Tensor(np.random.default_rng(1).normal(size=(2, 3)))
    np.testing.assert_array_equal(mt.functional.softmax(x, dim=0).data, mt.functional.softmax(x, axis=0).data)


def test_one_element_tensors_convert_to_python_numbers_by_value():
    assert float(mt.Tensor(np.array([1.5]))) == 1.5 and int(mt.Tensor(np.array(2.7))) == 2
    assert bool(mt.Tensor(np.array(0.0))) is False and bool(mt.Tensor(np.array([3.0]))) is True
    for convert in (float, int, bool):
        with pytest.raises(ValueError, match=f"{convert.__name__}: only a tensor with one element"):
            convert(mt.Tensor(np.ones(2)))


def test_numpy_sees_the_data_and_tolist_gives_numbers():
    t = mt.Tensor(np.arange(6.0).reshape(2, 3))
    a = np.asarray(t)
    assert a.dtype == np.float64 and a.shape == (2, 3) and np.asarray(t, dtype=np.float32).dtype == np.float32
    assert t.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and t.numel() == 6


def test_clone_and_casts_pass_the_gradient_back_in_the_tensors_dtype():
    t = mt.Tensor(np.array([1.0, -2.0], dtype=np.float32), requires_grad=True)
    c, d = t.clone(), t.double()
    assert c.data is not t.data and d.dtype == np.float64 and d.float().dtype == np.float32
    (c * 2.0 + d * 3.0).sum().backward()
    assert t.grad.dtype == np.float32
    np.testing.assert_array_equal(t.grad, [5.0, 5.0])
    check_grad(lambda x: x.clone() * x.to("float64"), np.array([0.5, 2.0]))
    with pytest.raises(TypeError, match="to_dtype: a tensor that requires gradients can only be cast to a floating"):
        t.to("int64")


def test_no_grad_works_with_and_without_parentheses():
    @mt.no_grad
    def bare():
        return mt.is_grad_enabled()

    @mt.no_grad()
    def called():
        return mt.is_grad_enabled()

    assert bare() is False and called() is False and mt.is_grad_enabled() is True
    with pytest.raises(TypeError, match="no_grad: takes no argument, or the function it decorates"):
        mt.no_grad(3)


@pytest.mark.parametrize("owner", ["module", "optimizer"])
def test_zero_grad_sets_to_none_or_fills_zeros_in_place(owner):
    layer = mt.nn.Linear(3, 2)
    target = layer if owner == "module" else mt.optim.AdamW(layer.parameters())
    layer(mt.Tensor(np.ones((4, 3)))).sum().backward()
    grad = layer.weight.grad
    target.zero_grad(set_to_none=False)
    assert layer.weight.grad is grad and not grad.any()
    target.zero_grad()
    assert layer.weight.grad is None


def test_clip_grad_norm_has_pytorchs_name_too():
    assert mt.optim.clip_grad_norm_ is mt.optim.clip_grad_norm
