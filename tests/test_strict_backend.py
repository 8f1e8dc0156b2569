"""The strict stand-in for CuPy (``minitspeft.strict_xp``): what it refuses, what it counts, and that a
whole TS-LoRA workflow runs on it and gives the NumPy backend's numbers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import backend, strict_xp

PACKAGE = Path(mt.__file__).parent
HERE = Path(__file__).parent


@pytest.fixture
def strict():
    before = backend.get_backend()
    backend.set_backend("strict")
    yield strict_xp
    backend.set_backend(before)


def _as_package_code(source: str, **names):
    """Run ``source`` as if it were a module of the package (the stand-in's refusals apply there)."""
    exec(compile(source, str(PACKAGE / "slip.py"), "exec"), dict(names))  # noqa: S102 - a test probe


def test_arrays_are_their_own_type_and_go_to_the_host_only_explicitly(strict):
    t = mt.randn(2, 3)
    assert isinstance(t.data, strict_xp.StrictArray) and not isinstance(t.data, np.ndarray)
    host = mt.to_numpy(t.data)
    assert type(host) is np.ndarray and np.array_equal(host, t.numpy())
    assert isinstance(t.data.sum(), strict_xp.StrictArray) and t.data.sum().shape == ()  # 0-d, as CuPy


@pytest.mark.parametrize("slip", [
    "np.asarray(a)",                 # __array__
    "a + np.ones(3)",                # mixing in an operator
    "np.ones(3) * a",                # ... on either side
    "backend.xp.maximum(a, np.zeros(3))",  # mixing in a function call
    "a[np.array([0, 1])]",           # a host index array
])
def test_package_code_that_slips_into_numpy_raises(strict, slip):
    a = backend.xp.asarray(np.arange(3.0))
    with pytest.raises(TypeError, match="strict backend"):
        _as_package_code(slip, np=np, a=a, backend=backend)


def test_numpy_scalars_and_ufuncs_on_device_arrays_stay_on_the_device(strict):
    a = backend.xp.asarray(np.arange(3.0, dtype=np.float32))
    out = {}
    _as_package_code("out['x'] = np.float32(2) * np.exp(a)", np=np, a=a, out=out)
    assert isinstance(out["x"], strict_xp.StrictArray) and out["x"].dtype == np.float32


def test_transfers_are_counted_and_can_be_forbidden(strict):
    a = backend.xp.asarray(np.arange(3.0))
    before = strict_xp.transfer_count()
    float(a.sum()), a.get(), a.tolist()
    assert strict_xp.transfer_count() == before + 3
    with strict_xp.no_transfers():
        b = (a * 2).sum()  # device work only: allowed
        with pytest.raises(strict_xp.HostTransferError, match="item"):
            b.item()


def test_host_data_given_to_the_engine_is_moved_explicitly(strict):
    x = mt.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    x.data = np.ones((2, 3))  # a host array assigned to .data goes to the device
    assert isinstance(x.data, strict_xp.StrictArray)
    y = x[np.array([1, 0])]   # a host index array too
    y.sum().backward()
    np.testing.assert_array_equal(mt.to_numpy(x.grad), np.ones((2, 3)))


def _flow(backend_name: str) -> dict:
    env = {**os.environ, "MINITSPEFT_BACKEND": backend_name}
    proc = subprocess.run([sys.executable, str(HERE / "strict_flow.py")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _device_backends() -> list:
    """The strict stand-in, and CuPy where it imports and sees a GPU."""
    return ["strict"] + (["cupy"] if backend.gpu_available() else [])


# The stand-in computes with NumPy, so it must agree to float32's last bits; a GPU sums in another order
# (and its scatter-add in no fixed order), so float32 there is compared with the CPU's result, looser.
TOLERANCE = {"strict": dict(rtol=1e-6, atol=1e-7), "cupy": dict(rtol=2e-4, atol=2e-5)}


@pytest.mark.backends("numpy")  # it starts one process per backend itself
@pytest.mark.parametrize("device", _device_backends())
def test_a_ts_lora_workflow_on_a_device_backend_gives_the_numpy_backends_numbers(device):
    ours, ref = _flow(device), _flow("numpy")
    assert ours["backend"] == device and ref["backend"] == "numpy"
    np.testing.assert_allclose(ours["logits"], ref["logits"], **TOLERANCE[device])
    np.testing.assert_allclose(ours["taus"], ref["taus"], **TOLERANCE[device])
    assert ours["generated"] == ref["generated"]


def test_the_namespace_serves_only_what_cupy_has(strict):
    assert backend.xp.take_along_axis is not None and backend.xp.float32 is np.float32
    for name in ("linalg", "random", "add_docstring", "errstate"):  # NumPy has them; CuPy has not, or not as is
        with pytest.raises(AttributeError, match=f"xp.{name} is not among the names"):
            getattr(backend.xp, name)


def test_every_array_function_the_package_calls_is_one_cupy_has():
    """A static scan, so that code no test reaches (a GPU-only branch aside: backend.py's) is covered too."""
    import re

    used = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("backend.py", "strict_xp.py"):
            continue
        for name in re.findall(r"\bxp\.([A-Za-z_]\w*)", path.read_text()):
            used.setdefault(name, path.name)
    missing = {name: where for name, where in used.items() if name not in strict_xp.CUPY_NAMES}
    assert not missing, missing


def test_state_dicts_cross_between_backends_explicitly():
    """A model's and an optimiser's state saved on a device load on NumPy, and the other way round, as a
    CUDA state dict loads into a CPU model in PyTorch: through the host, counted."""
    from minitspeft import nn
    from minitspeft.optim import AdamW

    def trained(name):
        with backend.using(name):
            mt.manual_seed(0)
            model = nn.Linear(4, 3)
            opt = AdamW(model.parameters(), lr=0.1)
            (model(mt.Tensor(np.ones((2, 4)))) ** 2).sum().backward()
            opt.step()
            return model, opt

    for source, target in (("strict", "numpy"), ("numpy", "strict")):
        model, opt = trained(source)
        fresh, fresh_opt = trained(target)
        with backend.using(target):
            before = strict_xp.transfer_count()
            fresh.load_state_dict(model.state_dict())
            fresh_opt.load_state_dict(opt.state_dict())
            assert (strict_xp.transfer_count() > before) == (source == "strict")
        assert {backend.backend_of(p.data) for p in fresh.parameters()} == {target}
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(mt.to_numpy(fresh.state_dict()[k]), mt.to_numpy(v))


def test_a_device_tensor_seen_from_the_numpy_backend(strict):
    t = mt.randn(2, 2)
    backend.set_backend("numpy")
    assert backend.is_host_array(t.cpu().data) and t.cpu().tolist() == t.tolist()  # by its own array
    again = mt.Tensor(t.data)  # another backend's array: over through the host
    assert backend.is_host_array(again.data) and again.tolist() == t.tolist()


def test_data_shaped_results_and_repr_count_as_synchronisations(strict):
    a = backend.xp.asarray(np.array([0.0, 2.0, 0.0, 3.0]))
    for look in (lambda: a[a > 1], lambda: backend.xp.flatnonzero(a), lambda: backend.xp.nonzero(a), lambda: repr(a)):
        before = strict_xp.transfer_count()
        look()
        assert strict_xp.transfer_count() == before + 1
        with strict_xp.no_transfers(), pytest.raises(strict_xp.HostTransferError):
            look()
    before = strict_xp.transfer_count()
    a[backend.xp.asarray(np.array([1, 3]))]  # an integer index: the shape is known, nothing waits
    assert strict_xp.transfer_count() == before


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_asking_for_cupy_where_it_is_missing_names_the_extra_before_anything_runs():
    from minitspeft import nn
    from minitspeft.train import fit, predict

    model = nn.Linear(2, 2)
    x, y = np.ones((4, 2)), np.zeros(4, dtype=int)
    for call in (lambda: fit(model, x, y, steps=1, progress=False, backend="cupy"),
                 lambda: predict(model, x, backend="cupy")):
        with pytest.raises(ImportError, match=r'pip install "minitspeft\[gpu\]"'):
            call()
    assert backend.get_backend() == mt.get_backend()


def _lm(name):
    from minitspeft import nn

    with backend.using(name):
        mt.manual_seed(0)
        return nn.Transformer(nn.TransformerConfig.preset("nano", vocab_size=7, block_size=12, causal=True))


@pytest.mark.backends("numpy")  # it builds on both backends itself
@pytest.mark.parametrize("built, active", [("strict", "numpy"), ("numpy", "strict")])
def test_a_model_called_on_another_backend_says_so_and_generate_follows_the_model(built, active):
    from minitspeft.peft import GateConfig, LoraConfig, get_peft_model
    from minitspeft.selectivity import gate_selectivity
    from minitspeft.train import predict

    model = get_peft_model(_lm(built), LoraConfig(r=2, target_modules=["q_proj"]), gate=GateConfig())
    ids = np.array([[3, 1]])
    with backend.using(built):
        expected = model.generate(ids, max_new_tokens=3, top_k=1)
        S = gate_selectivity(model, ids)["layers"]
    with backend.using(active):
        with pytest.raises(RuntimeError, match=f"PeftModel: its parameters are {built} arrays but the active "
                                               f"backend is {active}; call it inside mt.backend.using"):
            model(ids)
        assert np.array_equal(model.generate(ids, max_new_tokens=3, top_k=1), expected)  # where the model is
        assert gate_selectivity(model, ids)["layers"] == S
        with backend.using(built):
            host_ids = mt.Tensor(ids)  # a Tensor of the model's backend
        assert predict(model, host_ids).shape == (1, 2)
        assert mt.get_backend() == active  # given back each time


def test_a_model_on_two_backends_is_named_as_such():
    from minitspeft import nn
    from minitspeft.train import fit

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    other = "strict" if mt.get_backend() == "numpy" else "numpy"
    with backend.using(other):
        model[1].weight.data = backend.xp.zeros((2, 2))
    with pytest.raises(ValueError, match=f"fit: some of the model's parameters are {other} arrays"):
        fit(model, np.ones((4, 2)), np.zeros(4, dtype=int), steps=1, progress=False, backend=mt.get_backend())


def test_a_device_name_the_project_does_not_know_is_named():
    with pytest.raises(TypeError, match=r"to: 'tpu' is neither a device \('cpu', 'cuda'\) nor a dtype"):
        mt.ones(2).to("tpu")


@pytest.mark.backends("numpy")  # it builds on both backends itself
def test_adapters_are_made_and_loaded_on_the_base_models_backend(tmp_path):
    from minitspeft.peft import GateConfig, LoraConfig, PeftModel, get_peft_model

    model = get_peft_model(_lm("strict"), LoraConfig(r=2, target_modules=["q_proj"]), gate=GateConfig())
    assert {backend.backend_of(p.data) for p in model.parameters()} == {"strict"}  # numpy is active
    model.save_pretrained(str(tmp_path))
    again = PeftModel.from_pretrained(_lm("strict"), str(tmp_path))
    assert {backend.backend_of(p.data) for p in again.parameters()} == {"strict"} and mt.get_backend() == "numpy"
