"""An ungated LoRA layer runs as one op through the merged weight: same values and gradients as its branches."""

import numpy as np
import pytest

import minitspeft as mt
from minitspeft.nn import Linear
from minitspeft.peft import LoraConfig
from minitspeft.peft.base import PeftLayer
from minitspeft.peft.lora import LoraLinear
from minitspeft.peft.lora_linear import dora_linear, lora_linear
from minitspeft.testing import check_grad


def _layer(bias=True, dropout=0.0, seed=0, use_dora=False):
    mt.manual_seed(seed)
    layer = LoraLinear(Linear(6, 5, bias=bias, dtype=np.float64),
                       LoraConfig(r=3, lora_alpha=5, lora_dropout=dropout, init_lora_weights=False, use_dora=use_dora))
    if use_dora:  # a magnitude away from the initial norm, so that every term of the update matters
        layer.lora_magnitude_vector.data = layer.lora_magnitude_vector.data * np.linspace(0.5, 1.5, 5)
    return layer


def _run(layer, x, generic: bool):
    xt = mt.Tensor(x.copy(), requires_grad=True)
    out = PeftLayer.forward(layer, xt) if generic else layer(xt)
    g = np.random.default_rng(4).normal(size=out.shape)
    layer.zero_grad()
    (out * mt.Tensor(g)).sum().backward()
    return out, xt.grad, {n: p.grad.copy() for n, p in layer.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_the_fused_layer_gives_the_branches_values_and_gradients(bias, use_dora):
    layer = _layer(bias, use_dora=use_dora)
    layer.base_layer.requires_grad_(True)  # the base trained too: every gradient is compared
    x = np.random.default_rng(1).normal(size=(2, 4, 6))
    fused, generic = _run(layer, x, False), _run(layer, x, True)
    op = "dora_linear" if use_dora else "lora_linear"
    assert fused[0].op == op and generic[0].op != op
    np.testing.assert_allclose(fused[0].data, generic[0].data, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fused[1], generic[1], rtol=1e-12, atol=1e-12)
    assert fused[2].keys() == generic[2].keys() and len(fused[2]) == (4 if bias else 3) + use_dora  # W0, A, B (, b, m)
    for name in fused[2]:
        np.testing.assert_allclose(fused[2][name], generic[2][name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_float64_gradient_check_of_every_input():
    rng = np.random.default_rng(2)
    arrays = [rng.normal(size=s) for s in [(3, 6), (5, 6), (5,), (3, 6), (5, 3)]]
    check_grad(lambda x, w, b, A, B: lora_linear(x, w, b, A, B, 1.7), *arrays)


def test_float64_gradient_check_of_doras_input_and_magnitude():
    """The row norm of W' is a constant in DoRA's backward (as DoRA recommends), so only ``x`` and ``m``,
    on which it does not depend, have true derivatives to check by differences."""
    rng = np.random.default_rng(3)
    w, b, A, B = (mt.Tensor(rng.normal(size=s)) for s in [(5, 6), (5,), (3, 6), (5, 3)])
    check_grad(lambda x, m: dora_linear(x, w, b, A, B, m, 1.7), rng.normal(size=(2, 3, 6)), rng.uniform(0.5, 2, 5))


def test_dropout_in_training_takes_the_branches_and_in_eval_the_fused_op():
    layer = _layer(dropout=0.5)
    x = mt.Tensor(np.ones((2, 6)))
    assert layer(x).op != "lora_linear"
    layer.eval()
    assert layer(x).op == "lora_linear"


def test_bad_shapes_are_named():
    w, A, B = mt.Tensor(np.ones((5, 6))), mt.Tensor(np.ones((3, 6))), mt.Tensor(np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"lora_linear: shapes do not fit: x \(2, 4\), weight \(5, 6\)"):
        lora_linear(mt.Tensor(np.ones((2, 4))), w, None, A, B, 1.0)
    with pytest.raises(ValueError, match=r"lora_B \(3, 5\) \(out, r\)"):
        lora_linear(mt.Tensor(np.ones((2, 6))), w, None, A, B.swapaxes(0, 1), 1.0)
    with pytest.raises(TypeError, match="lora_linear: x must be a Tensor"):
        lora_linear(np.ones((2, 6)), w, None, A, B, 1.0)
    with pytest.raises(ValueError, match=r"dora_linear: shapes do not fit: x \(2, 4\)"):
        dora_linear(mt.Tensor(np.ones((2, 4))), w, None, A, B, mt.Tensor(np.ones(5)), 1.0)
    with pytest.raises(ValueError, match=r"dora_linear: magnitude shape \(4,\) does not match weight \(5, 6\)"):
        dora_linear(mt.Tensor(np.ones((2, 6))), w, None, A, B, mt.Tensor(np.ones(4)), 1.0)


def test_a_replaced_delta_is_honoured_by_the_ungated_and_the_gated_layer():
    """The fused ops compute LoRA's own update; a layer whose delta is replaced takes the generic path."""
    from minitspeft.peft import GateConfig

    for gate, dora in ((None, False), (None, True), (GateConfig(tau_init=0.0), False)):
        mt.manual_seed(0)
        layer = LoraLinear(Linear(6, 5, dtype=np.float64), LoraConfig(r=3, init_lora_weights=False, use_dora=dora),
                           gate=gate)
        x = mt.Tensor(np.random.default_rng(0).normal(size=(2, 6)))
        plain = layer(x).data.copy()
        layer.delta = lambda x, b: mt.Tensor(np.full(b.shape, 100.0))
        np.testing.assert_allclose(layer(x).data, layer.base_layer(x).data + 100.0)
        assert not np.allclose(plain, layer(x).data)
