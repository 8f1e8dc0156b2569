"""Property-based robustness over the public API: random shapes (0-d and empty included), axes, magnitudes
and settings. Every call returns the right result or raises one of the documented exceptions
(``ValueError``, ``TypeError``, ``IndexError``); nothing else, and no NaN where a finite answer exists."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minitspeft as mt
from minitspeft import functional as F
from minitspeft.nn import Parameter, TransformerConfig
from minitspeft.peft import AdapterConfig, GateConfig, LoraConfig, gated_update

DOCUMENTED = (ValueError, TypeError, IndexError)

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
axis_specs = st.one_of(st.none(), st.integers(-4, 4), st.tuples(st.integers(-4, 4)),
                       st.tuples(st.integers(-4, 4), st.integers(-4, 4)), st.booleans(), st.floats(-2, 2),
                       st.text(max_size=1))
anything = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=3),
                     st.lists(st.integers(0, 2), max_size=2))


@given(shape=shapes, axis=axis_specs, name=st.sampled_from(["sum", "mean", "max", "min", "norm", "var"]),
       keepdims=st.booleans(), seed=st.integers(0, 2**16))
def test_reductions_match_numpy_or_raise_a_documented_error(shape, axis, name, keepdims, seed):
    x = np.random.default_rng(seed).normal(size=shape)
    try:
        got = getattr(mt.Tensor(x), name)(axis=axis, keepdims=keepdims)
    except DOCUMENTED:
        return
    np_axis = tuple(axis) if isinstance(axis, tuple) else axis
    if x.ndim == 0 and axis is not None:  # a 0-d tensor's axis 0 or -1 reduces nothing (PyTorch's rule)
        np_axis = ()
    if name == "norm":
        want = np.sqrt((x * x).sum(axis=np_axis, keepdims=keepdims))
    else:
        want = getattr(np, name)(x, axis=np_axis, keepdims=keepdims)
    np.testing.assert_allclose(got.data, want, rtol=1e-12, atol=1e-12)


magnitudes = st.sampled_from([1e-30, 1e-12, 1.0, 1e12, 1e30])


@given(scale=magnitudes, seed=st.integers(0, 2**16), rows=st.integers(1, 3), width=st.integers(2, 6))
def test_fused_ops_stay_right_at_any_float32_magnitude(scale, seed, rows, width):
    """In float32, wherever the float64 answer is finite and representable, the fused ops give it."""
    x64 = np.random.default_rng(seed).normal(size=(rows, width)) * scale
    x32 = x64.astype(np.float32)
    x64 = x32.astype(np.float64)  # the same numbers, computed without overflow
    checks = {
        "layer_norm": (lambda t: F.layer_norm(t, None, None), lambda a: (a - a.mean(-1, keepdims=True))
                       / np.sqrt(a.var(-1, keepdims=True) + 1e-5)),
        "softmax": (F.softmax, lambda a: np.exp(a - a.max(-1, keepdims=True))
                    / np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)),
        "norm": (lambda t: t.norm(axis=-1), lambda a: np.sqrt((a * a).sum(-1))),
        "gelu": (F.gelu, None),
    }
    for name, (fn, ref) in checks.items():
        t = mt.Tensor(x32, requires_grad=True)
        out = fn(t)
        out.backward(np.ones(out.shape, np.float32))
        assert np.all(np.isfinite(out.data)), name
        assert np.all(np.isfinite(t.grad)), name
        if ref is not None:  # float32 rounding of the inputs' own scale is the tolerance
            want = ref(x64)
            np.testing.assert_allclose(out.data, want, rtol=2e-5, atol=2e-6 * np.abs(want).max(), err_msg=name)


@given(sb=magnitudes, sd=magnitudes, tau=st.floats(0, 3), seed=st.integers(0, 2**16))
def test_the_gate_keeps_r_right_and_every_gradient_finite_at_any_magnitude(sb, sd, tau, seed):
    rng = np.random.default_rng(seed)
    b32 = (rng.normal(size=(2, 3, 4)) * sb).astype(np.float32)
    d32 = (rng.normal(size=(2, 3, 4)) * sd).astype(np.float32)
    b, d = mt.Tensor(b32, requires_grad=True), mt.Tensor(d32, requires_grad=True)
    t = Parameter(np.array(tau, np.float32))
    out, S, r = gated_update(b, d, t)
    b64, d64 = b32.astype(np.float64), d32.astype(np.float64)
    want = np.linalg.norm(d64, axis=-1) / (np.linalg.norm(b64, axis=-1) + 1e-6)
    np.testing.assert_allclose(r, want, rtol=1e-5, atol=np.finfo(np.float32).tiny)  # subnormal r loses digits
    (out.sum() * 1e-30 + S.sum()).backward()
    for g in (b.grad, d.grad, t.grad):
        assert np.all(np.isfinite(g))


@given(cls=st.sampled_from([LoraConfig, AdapterConfig, GateConfig, TransformerConfig]), data=st.data())
def test_a_config_with_random_field_values_is_built_or_refused_with_a_value_error(cls, data):
    import dataclasses

    fields = [f.name for f in dataclasses.fields(cls)]
    chosen = data.draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True))
    values = {name: data.draw(anything) for name in chosen}
    try:
        config = cls(**values)
    except ValueError:
        return
    assert cls.from_dict(config.to_dict()) == config  # what was accepted is a valid config


@given(shape=shapes, seed=st.integers(0, 2**16), index=st.one_of(
    st.integers(-6, 6), st.tuples(st.integers(-6, 6), st.integers(-6, 6)), st.slices(6)))
def test_indexing_matches_numpy_or_raises_index_error(shape, seed, index):
    x = np.random.default_rng(seed).normal(size=shape)
    try:
        want = x[index]
    except (IndexError, TypeError):
        with pytest.raises(DOCUMENTED):
            mt.Tensor(x)[index]
        return
    t = mt.Tensor(x, requires_grad=True)
    got = t[index]
    np.testing.assert_array_equal(got.data, want)
    if got.size:
        got.sum().backward()
        assert math.isclose(float(t.grad.sum()), float(np.ones_like(x)[index].sum()))
