"""The benchmark's PyTorch and HIPS autograd twins take the same step as minitspeft (tiny configuration).

From the same weights and batch: the same loss, the same gates, the same gradients and, after a few
AdamW steps, the same trainable parameters, up to float32 rounding. Each twin is skipped where its
library is not installed.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from minitspeft import backend, nn
from minitspeft.bench import config, steps
from minitspeft.bench.measure import worker
from minitspeft.peft import GateConfig, LoraConfig, get_peft_model
from minitspeft.train import build_optimizer, train_step

TINY = config.CONFIGS["tiny"]
IMPLS = {"torch": "minitspeft.bench.torch_twin", "autograd": "minitspeft.bench.autograd_twin"}


def twin_module(impl: str):
    pytest.importorskip(impl)
    return importlib.import_module(IMPLS[impl])


def prepared(variant: str):
    """The tiny benchmark model with LoRA's ``B`` drawn at random (as ``steps.force_density`` does) and,
    gated, each ``tau`` (still trainable) halfway between the two middle ratios: about half the gates
    open, no ratio within rounding of its threshold, and every trainable parameter has a gradient."""
    model, _ = steps.build(TINY, variant)
    rng = np.random.default_rng(1)
    for _, layer in model.peft_layers():
        w = layer.lora_B.weight
        w.data = backend.asarray(rng.normal(0, 0.05, size=w.shape).astype(w.dtype))
    if variant == "ts-lora":
        model(steps.batch(TINY)[0])
        for _, gate in model.gates():
            r = np.sort(backend.to_numpy(gate.last_score).ravel())
            k = len(r) // 2
            assert r[k] - r[k - 1] > 1e-4
            gate.tau.data = backend.asarray(np.asarray((r[k - 1] + r[k]) / 2, dtype=gate.tau.dtype))
    return model


def trainable(model) -> dict:
    return {n.removeprefix("base_model."): p for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("variant", config.VARIANTS)
@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_the_twin_takes_the_same_steps(impl, variant):
    module = twin_module(impl)
    model = prepared(variant)
    run, twin = module.step(TINY, variant, model)  # copies the model's arrays now
    opt = build_optimizer(model, TINY.lr)
    ids, labels = steps.batch(TINY)
    y = backend.asarray(labels)
    for i in range(3):
        ours = train_step(model, opt, ids, y, regularise=variant == "ts-lora")["loss"]
        theirs = run()["loss"]
        assert theirs == pytest.approx(ours, rel=1e-5), f"step {i}"
        gates = {name: backend.to_numpy(g.last_S.data) for name, g in model.gates()}
        assert twin.gate_values().keys() == gates.keys()
        for name, S in twin.gate_values().items():
            np.testing.assert_array_equal(S, gates[name], err_msg=f"step {i}, {name}")
        if i == 0:  # AdamW's first step is blind to a gradient's scale: compare the gradients themselves
            grads = twin.trainable_grads()
            assert grads.keys() == trainable(model).keys()
            for name, p in trainable(model).items():
                g = backend.to_numpy(p.grad)
                assert np.abs(g).max() > 0, name
                np.testing.assert_allclose(grads[name], g, rtol=1e-4, atol=1e-5 * np.abs(g).max(), err_msg=name)
    if variant == "ts-lora":
        assert 0 < twin.density() < 1 and twin.density() == pytest.approx(steps.density(model))
    arrays = twin.trainable_arrays()
    for name, p in trainable(model).items():
        assert arrays[name].dtype == np.float32
        np.testing.assert_allclose(arrays[name], backend.to_numpy(p.data), rtol=1e-3, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_the_twin_starts_from_the_benchmark_model_with_its_trainable_set(impl):
    """From ``steps.build`` as it stands (``B = 0``, ``tau = 0``: every gate open, the update ``d = 0``,
    where the ratio's norm has gradient 0): one finite step, the same loss and moved thresholds."""
    module = twin_module(impl)
    model, opt = steps.build(TINY, "ts-lora")
    names = {n.removeprefix("base_model.") for n, p in model.named_parameters() if p.requires_grad}
    assert names == {n for n in names if n.endswith((".lora_A.weight", ".lora_B.weight", ".gate.tau"))}
    run, twin = module.step(TINY, "ts-lora")
    ours = train_step(model, opt, *steps.batch(TINY), regularise=True)["loss"]
    assert run()["loss"] == pytest.approx(ours, rel=1e-5) and twin.density() == 1.0
    arrays = twin.trainable_arrays()
    assert arrays.keys() == names
    for name, p in trainable(model).items():
        assert np.isfinite(arrays[name]).all()
        np.testing.assert_allclose(arrays[name], backend.to_numpy(p.data), rtol=1e-3, atol=1e-5, err_msg=name)
    assert all(arrays[n] > 0 for n in names if n.endswith("tau"))  # the regulariser pushes tau up


def test_a_twin_refuses_what_it_does_not_build():
    cfg = nn.TransformerConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=16, n_classes=10)
    model = get_peft_model(nn.Transformer(cfg), LoraConfig(r=2, target_modules=steps.TARGETS),
                           gate=GateConfig(surrogate="rect"))
    with pytest.raises(NotImplementedError, match="only the benchmark's model"):
        steps.twin_spec(TINY, "ts-lora", model)
    case = {"impl": "torch", "variant": "ts-lora", "config": TINY.to_dict(), "density": 0.5, "forward_only": False,
            "warmup": 0, "steps": 1, "threads": 1}
    with pytest.raises(ValueError, match="training step only"):
        worker(case)
    with pytest.raises(ValueError, match="unknown impl"):
        worker({**case, "impl": "jax", "density": None})
