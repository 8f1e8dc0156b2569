"""More habits a PyTorch user brings: the optimiser's one-object state dict, nn.Sequential and friends,
model.to(device), NumPy integers wherever an int goes, and clear refusals where this project differs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from toy import toy_images

import minitspeft as mt
from minitspeft import nn
from minitspeft.io import load_arrays, save_arrays
from minitspeft.optim import SGD, AdamW, state_dict_from_arrays, state_dict_to_arrays
from minitspeft.train import CHECKPOINT, fit


def _stepped(opt_cls=AdamW, steps=3, **kw):
    """An optimiser over two groups (three parameters, the last never given a gradient), stepped ``steps`` times."""
    rng = np.random.default_rng(0)
    a, b, c = nn.Parameter(np.ones((2, 3))), nn.Parameter(np.ones(4)), nn.Parameter(np.ones(1))
    opt = opt_cls([{"params": [a]}, {"params": [b, c], "lr": 0.02}], lr=0.05, **kw)
    for _ in range(steps):
        a.grad, b.grad = rng.normal(size=(2, 3)), rng.normal(size=4)
        opt.step()
    return opt, (a, b, c)


# ------------------------------------------------------------------ optimizer.state_dict()
def test_the_state_dict_is_one_object_laid_out_as_torchs():
    opt, _ = _stepped()
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups", "step_count"} and sd["step_count"] == 3
    assert sorted(sd["state"]) == [0, 1]  # parameter 2 never had a gradient, so it has no state
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"} and sd["state"][0]["step"] == 3
    assert sd["state"][0]["exp_avg"].shape == (2, 3)
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1, 2]]
    assert [g["lr"] for g in sd["param_groups"]] == [0.05, 0.02] and sd["param_groups"][0]["betas"] == (0.9, 0.999)
    sgd, _ = _stepped(SGD, momentum=0.9)
    assert set(sgd.state_dict()["state"][1]) == {"step", "momentum_buffer"}


def test_adamw_state_matches_torchs_values_under_the_same_names():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    ours = nn.Parameter(rng.normal(size=(3, 2)))
    theirs = torch.nn.Parameter(torch.tensor(ours.numpy()))
    opt = AdamW([ours], lr=0.1, weight_decay=0.1)
    topt = torch.optim.AdamW([theirs], lr=0.1, weight_decay=0.1)
    for g in rng.normal(size=(3, 3, 2)):
        ours.grad, theirs.grad = g, torch.tensor(g)
        opt.step()
        topt.step()
    mine, torch_state = opt.state_dict()["state"][0], topt.state_dict()["state"][0]
    assert set(mine) == set(torch_state)
    for key in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_allclose(mine[key], torch_state[key].numpy(), rtol=1e-12)
    assert mine["step"] == int(torch_state["step"])


def test_the_state_dict_never_aliases_the_live_state():
    opt, (a, b, _) = _stepped()
    sd = opt.state_dict()
    kept = {i: st["exp_avg"].copy() for i, st in sd["state"].items()}
    for st in sd["state"].values():
        st["exp_avg"][...] = 123.0  # changing the result leaves the optimiser alone
    sd["param_groups"][0]["lr"] = 9.0
    assert opt.param_groups[0]["lr"] == 0.05
    for st in opt.state.values():
        assert not (st["exp_avg"] == 123.0).any()
    sd = opt.state_dict()
    a.grad, b.grad = np.ones((2, 3)), np.ones(4)
    opt.step()  # and the next step leaves the result alone
    for i, st in sd["state"].items():
        np.testing.assert_array_equal(st["exp_avg"], kept[i])


@pytest.mark.parametrize("opt_cls, kw", [(AdamW, {}), (SGD, {"momentum": 0.9, "nesterov": True})])
def test_a_loaded_state_continues_bit_for_bit(opt_cls, kw):
    opt, params = _stepped(opt_cls, **kw)
    sd = opt.state_dict()
    copies = [nn.Parameter(p.data.copy()) for p in params]
    again = opt_cls([{"params": copies[:1]}, {"params": copies[1:], "lr": 0.5}], lr=0.9, **kw)
    again.load_state_dict(sd)
    assert again.param_groups[1]["lr"] == 0.02 and again.step_count == 3
    for g in np.random.default_rng(2).normal(size=(3, 10)):
        for ps in (params, copies):
            ps[0].grad, ps[1].grad = g[:6].reshape(2, 3), g[6:]
        opt.step()
        again.step()
    for p, q in zip(params, copies, strict=True):
        np.testing.assert_array_equal(p.data, q.data)


BAD_STATES = [
    (lambda sd: sd["param_groups"].pop(), "1 parameter groups saved, 2 present"),
    (lambda sd: sd["param_groups"][1]["params"].pop(), "group 1 saved 1 parameter indices, 2 present"),
    (lambda sd: sd["param_groups"][0].update(momentum=0.9), "group 0's saved settings"),
    (lambda sd: sd["param_groups"][0].pop("eps"), "group 0's saved settings"),
    (lambda sd: sd["param_groups"][1].update(lr=-1.0), "group 1: .*lr must be >= 0"),
    (lambda sd: sd["param_groups"][0].update(betas=(0.9, 1.5)), "group 0: .*betas"),
    (lambda sd: sd["param_groups"][1].update(params=[1, 1]), "index 1: not an integer, or listed twice"),
    (lambda sd: sd["state"][0].update(exp_avg=np.zeros((3, 2))), r"parameter 0's 'exp_avg' is \(3, 2\) float64"),
    (lambda sd: sd["state"][1].update(exp_avg_sq=np.zeros(4, dtype=np.int64)), "'exp_avg_sq' is .*int64"),
    (lambda sd: sd["state"][1].update(exp_avg_sq=[0.0] * 4), "'exp_avg_sq' is list"),
    (lambda sd: sd["state"][0].pop("exp_avg"), "parameter 0's state has keys"),
    (lambda sd: sd["state"][0].update(step=0), r"step 0 is not in \[1, step_count=3\]"),
    (lambda sd: sd["state"][0].update(step=4), r"step 4 is not in \[1, step_count=3\]"),
    (lambda sd: sd["state"].update({7: sd["state"][0]}), "index 7, which no group lists"),
    (lambda sd: sd.update(step_count=-1), "step_count must be an integer >= 0"),
    (lambda sd: sd.pop("step_count"), r"has no \['step_count'\]"),
    (lambda sd: sd.update(state=[]), "'state' must be a dict"),
]


@pytest.mark.parametrize("change, needle", BAD_STATES)
def test_load_state_dict_checks_everything_before_it_changes_anything(change, needle):
    source, _ = _stepped()
    sd = source.state_dict()
    change(sd)
    target, _ = _stepped(steps=1)
    target.param_groups[0]["lr"] = 0.7
    before = target.state_dict()
    with pytest.raises(ValueError, match=f"AdamW.load_state_dict: .*{needle}"):
        target.load_state_dict(sd)
    after = target.state_dict()
    assert after["step_count"] == 1 and after["param_groups"] == before["param_groups"]
    for i, st in before["state"].items():
        for key, value in st.items():
            np.testing.assert_array_equal(after["state"][i][key], value)


def test_load_state_dict_refuses_what_is_not_a_state_dict():
    opt, _ = _stepped()
    with pytest.raises(TypeError, match="AdamW.load_state_dict: expected the dict state_dict"):
        opt.load_state_dict([opt.state_dict()])


def test_the_old_two_argument_form_still_loads_with_a_deprecation_warning():
    opt, _ = _stepped()
    arrays, record = state_dict_to_arrays(opt.state_dict())
    arrays = {k.replace("exp_avg_sq", "v").replace("exp_avg", "m"): v for k, v in arrays.items()}  # the old names
    for g in record["groups"]:
        del g["params"]  # the old record had no indices
    again, _ = _stepped(steps=0)
    with pytest.warns(DeprecationWarning, match="load_state_dict\\(arrays, meta\\) is deprecated"):
        again.load_state_dict(arrays, record)
    for key in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(again.state_dict()["state"][1][key], opt.state_dict()["state"][1][key])
    assert again.step_count == 3
    with pytest.raises(TypeError, match="expected \\(arrays dict, record dict"):
        state_dict_from_arrays(arrays, None, [1, 2])


@pytest.mark.parametrize("opt_cls", [AdamW, SGD])
def test_numpy_float_settings_keep_float32_parameters_float32(opt_cls):
    p = nn.Parameter(np.ones(3, dtype=np.float32))
    opt = opt_cls([p], lr=np.float64(1e-2), weight_decay=np.float64(0.1), momentum=np.float64(0.9)) \
        if opt_cls is SGD else opt_cls([p], lr=np.float64(1e-2), betas=(np.float64(0.9), 0.99), eps=np.float64(1e-8))
    for _ in range(2):
        p.grad = np.ones(3, dtype=np.float32)
        opt.step()
        opt.param_groups[0]["lr"] = np.float64(1e-3)  # set by hand, as a schedule in a torch loop would
    assert p.dtype == np.float32 and all(v.dtype == np.float32 for k, v in opt.state[id(p)].items() if k != "step")
    assert type(opt.param_groups[0]["weight_decay"]) is float
    assert type(mt.optim.warmup_cosine(np.int64(1), np.int64(10), np.int64(2))) is float


def _to_old_checkpoint(folder):
    """Rewrite a checkpoint in the layout written before the state dict took PyTorch's (AdamW's m and v,
    groups without indices)."""
    path = os.path.join(folder, CHECKPOINT)
    arrays, meta = load_arrays(path)
    arrays = {(k.replace(".exp_avg_sq", ".v").replace(".exp_avg", ".m") if k.startswith("optim.") else k): v
              for k, v in arrays.items()}
    for g in meta["optim"]["groups"]:
        del g["params"]
    save_arrays(path, arrays, meta)
    assert any(k.endswith(".m") for k in load_arrays(path)[0])


def _small_model():
    mt.manual_seed(0)
    return nn.ViT(nn.TransformerConfig(n_layer=1, n_head=2, n_embd=16, n_classes=3, pooling="cls"), 2, 4)


def test_an_old_checkpoint_still_resumes_bit_for_bit(tmp_path):
    x, y = toy_images()
    kw = dict(steps=6, batch_size=8, lr=1e-2, seed=1, progress=False)
    ref = _small_model()
    fit(ref, x, y, **kw)
    fit(_small_model(), x, y, **{**kw, "steps": 6}, checkpoint_dir=str(tmp_path / "full"))
    import minitspeft.train as train

    real, calls = train.save_checkpoint, []

    def stop_after_3(folder, model, opt, step, history, fingerprint):
        real(folder, model, opt, step, history, fingerprint)
        calls.append(step)
        if step == 3:
            raise KeyboardInterrupt

    train.save_checkpoint = stop_after_3
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(_small_model(), x, y, **kw, checkpoint_dir=str(tmp_path / "part"), checkpoint_every=1)
    finally:
        train.save_checkpoint = real
    _to_old_checkpoint(str(tmp_path / "part"))
    resumed = _small_model()
    fit(resumed, x, y, **kw, checkpoint_dir=str(tmp_path / "part"), checkpoint_every=1, resume=True)
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    arrays, meta = load_arrays(str(tmp_path / "part" / CHECKPOINT))  # rewritten in the new layout
    assert any(k.endswith(".exp_avg") for k in arrays) and "params" in meta["optim"]["groups"][0]


# ------------------------------------------------------------------ nn.Sequential, ReLU, GELU, CrossEntropyLoss
def _mlp():
    mt.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_sequential_names_its_children_by_position_and_applies_them_in_order():
    seq = _mlp()
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2"] and list(seq.children()) == list(seq)
    assert len(seq) == 3 and seq[-1] is seq[2] and isinstance(seq[1], nn.ReLU) and seq[np.int64(0)] is seq[0]
    x = mt.Tensor(np.random.default_rng(0).normal(size=(5, 3)))
    np.testing.assert_array_equal(seq(x).data, seq[2](seq[1](seq[0](x))).data)
    tail = seq[1:]
    assert isinstance(tail, nn.Sequential) and [n for n, _ in tail.named_children()] == ["1", "2"]  # as torch
    assert tail[0] is seq[1]
    assert seq.append(nn.ReLU()) is seq and len(seq) == 4 and "3" in dict(seq.named_children())


def test_sequential_state_dict_loads_into_torchs_and_gives_the_same_output():
    torch = pytest.importorskip("torch")
    seq = _mlp()
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    theirs.load_state_dict({k: torch.tensor(mt.to_numpy(v).astype(np.float64)) for k, v in seq.state_dict().items()},
                           strict=True)
    x = np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_allclose(seq.double()(mt.Tensor(x)).data, theirs(torch.tensor(x)).detach().numpy(), rtol=1e-12)


def test_sequential_takes_an_ordered_dict_and_refuses_what_it_cannot_hold():
    from collections import OrderedDict

    seq = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.GELU())]))
    assert list(seq.state_dict()) == ["fc.weight", "fc.bias"] and seq[1] is seq.act
    with pytest.raises(TypeError, match="Sequential: '1' must be a Module, got function"):
        nn.Sequential(nn.ReLU(), lambda x: x)
    for name in ("forward", "a.b", ""):
        with pytest.raises(ValueError, match="Sequential: the name"):
            nn.Sequential(OrderedDict([(name, nn.ReLU())]))
    with pytest.raises(IndexError, match="index 2 is out of range for 2 modules"):
        seq[2]  # noqa: B018
    with pytest.raises(TypeError, match="indices must be integers or slices, got str"):
        seq["fc"]  # noqa: B018


def test_relu_module_and_its_gradient_and_no_pretend_inplace():
    x = mt.Tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    nn.ReLU()(x).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="ReLU: inplace must be False"):
        nn.ReLU(inplace=True)


# x, GELU(x) and its derivative, from the formulas in 40-digit arithmetic (mpmath)
GELU_EXACT = [(-10.0, -7.619853024160526e-23, -7.618400096464814e-22),
              (-6.0, -5.9195258702261885e-09, -3.5468709453902015e-08),
              (-1.0, -0.15865525393145705, -0.0833154705876863),
              (0.5, 0.34573123063700656, 0.8674951246561629), (3.0, 2.99595030590511, 1.011945647204184)]


def test_gelu_tanh_is_the_projects_fused_gelu_and_none_is_the_exact_form():
    x, value, slope = (np.array(c) for c in zip(*GELU_EXACT))
    t = mt.Tensor(x, requires_grad=True)
    np.testing.assert_array_equal(nn.GELU(approximate="tanh")(t).data, mt.functional.gelu(t).data)
    out = nn.GELU()(t)
    out.sum().backward()
    assert nn.GELU().approximate == "none"
    np.testing.assert_allclose(out.data, value, rtol=1e-14)  # the far tail too (erfc, not 1 + erf)
    np.testing.assert_allclose(t.grad, slope, rtol=1e-14)
    grid = mt.Tensor(np.linspace(-6, 6, 41))
    assert 1e-4 < np.abs(nn.GELU()(grid).data - mt.functional.gelu(grid).data).max() < 1e-3


def test_gelu_matches_torchs_default_where_torch_is_exact():
    torch = pytest.importorskip("torch")
    x = np.linspace(-3, 6, 37)
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.GELU()(tx).sum().backward()
    u = mt.Tensor(x, requires_grad=True)
    out = nn.GELU()(u)
    out.sum().backward()
    np.testing.assert_allclose(out.data, torch.nn.GELU()(tx).detach().numpy(), rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(u.grad, tx.grad.numpy(), rtol=1e-13, atol=1e-300)


def test_gelu_exact_gradient_dtype_and_infinities():
    from minitspeft.nn.activation import gelu_exact
    from minitspeft.testing import check_grad

    check_grad(gelu_exact, np.random.default_rng(0).normal(size=(3, 4)) * 3)
    x32 = mt.Tensor(np.array([-1.0, 0.5], dtype=np.float32), requires_grad=True)
    out = nn.GELU()(x32)
    out.sum().backward()
    assert out.dtype == np.float32 and x32.grad.dtype == np.float32
    inf = mt.Tensor(np.array([-np.inf, np.inf, np.nan]), requires_grad=True)
    y = gelu_exact(inf)
    y.sum().backward()
    np.testing.assert_array_equal(y.data[:2], [0.0, np.inf])
    np.testing.assert_array_equal(inf.grad[:2], [0.0, 1.0])
    assert np.isnan(y.data[2]) and np.isnan(inf.grad[2])
    with pytest.raises(ValueError, match="GELU: approximate must be 'none' or 'tanh'"):
        nn.GELU(approximate="erf")


@pytest.mark.parametrize("kw", [{}, {"reduction": "sum"}, {"reduction": "none", "ignore_index": 1},
                                {"label_smoothing": 0.1, "ignore_index": np.int64(0)}])
def test_cross_entropy_loss_is_functional_cross_entropy_and_matches_torch(kw):
    rng = np.random.default_rng(0)
    logits, targets = rng.normal(size=(6, 4)), np.array([0, 1, 2, 3, 1, 0])
    ours = nn.CrossEntropyLoss(**kw)(mt.Tensor(logits), targets).data
    np.testing.assert_array_equal(ours, mt.functional.cross_entropy(mt.Tensor(logits), targets, **kw).data)
    torch = pytest.importorskip("torch")
    theirs = torch.nn.CrossEntropyLoss(**{k: (int(v) if k == "ignore_index" else v) for k, v in kw.items()})
    np.testing.assert_allclose(ours, theirs(torch.tensor(logits), torch.tensor(targets)).numpy(), rtol=1e-12)


def test_cross_entropy_loss_refuses_bad_settings_when_built():
    with pytest.raises(ValueError, match="CrossEntropyLoss: reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        nn.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match="CrossEntropyLoss: label_smoothing must be in \\[0, 1\\), got 1.0"):
        nn.CrossEntropyLoss(label_smoothing=1.0)
    with pytest.raises(ValueError, match="CrossEntropyLoss: ignore_index must be an integer"):
        nn.CrossEntropyLoss(ignore_index=True)
    with pytest.raises(ValueError, match="per-class weight is not implemented"):
        nn.CrossEntropyLoss(weight=np.ones(3))
    with pytest.raises(TypeError):
        nn.CrossEntropyLoss(None, None, -100)  # torch's positional size_average is not silently taken as another


# ------------------------------------------------------------------ model.to(device), .cpu(), .cuda()
def test_to_its_own_device_is_a_no_op_that_returns_the_module_and_dtype_casts_still_work():
    seq = _mlp()
    dev = mt.get_default_device()  # "cpu" on NumPy, "cuda" on CuPy and the strict stand-in
    before = seq.state_dict()
    own = seq.cpu if dev == "cpu" else seq.cuda
    assert seq.to(dev) is seq and own() is seq and seq.to(device=dev) is seq
    for k, v in seq.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
        assert v.dtype == np.float32
    assert seq.to(dev, np.float64) is seq and all(p.dtype == np.float64 for p in seq.parameters())
    seq.to(dtype="float32")
    assert all(p.dtype == np.float32 for p in seq.parameters())


@pytest.mark.backends("numpy")
def test_to_cuda_on_the_numpy_backend_says_how_to_get_a_gpu_and_changes_nothing():
    seq = _mlp()
    for call in (lambda: seq.to("cuda", "float64"), seq.cuda, lambda: seq.to("cuda:0")):
        with pytest.raises(RuntimeError, match=r'pip install "minitspeft\[gpu\]".*mt.set_backend\("cupy"\)'):
            call()
    assert all(p.dtype == np.float32 for p in seq.parameters())  # the dtype was not cast before the refusal


@pytest.mark.backends("strict", "cupy")
def test_to_cpu_on_a_device_backend_is_refused_and_changes_nothing():
    seq = _mlp()
    calls = [lambda: seq.to("cpu", "float64"), seq.cpu]
    for call in calls:
        with pytest.raises(RuntimeError, match=r"device arrays .*build the model again after mt.set_backend"):
            call()
    if mt.get_backend() == "strict":
        with pytest.raises(RuntimeError, match="the strict stand-in has one device"):
            seq.to("cuda:1", "float64")
    assert all(p.dtype == np.float32 for p in seq.parameters())  # the dtype was not cast before the refusal


@pytest.mark.parametrize("args, kwargs, error, needle", [
    (("mps",), {}, ValueError, "unknown device 'mps'"),
    (("cpu:1",), {}, ValueError, "unknown device 'cpu:1'"),
    (("gpu",), {}, TypeError, "'gpu' is neither a device"),
    (("float32", "float64"), {}, TypeError, "got two dtypes, 'float32' and 'float64'"),
    (("cpu", "cuda"), {}, TypeError, "got two devices, 'cpu' and 'cuda'"),
    ((np.float64,), {"dtype": np.float32}, TypeError, "got two dtypes"),
    ((np.int32,), {}, ValueError, "expected float32 or float64"),
    ((), {"device": 3}, TypeError, "device must be 'cpu', 'cuda' or 'cuda:N'"),
])
def test_to_refuses_what_it_cannot_do(args, kwargs, error, needle):
    with pytest.raises(error, match=f"Module.to: {needle}"):
        _mlp().to(*args, **kwargs)


# ------------------------------------------------------------------ NumPy integers wherever an int goes
INTS = [np.int64, np.int32]


@pytest.mark.parametrize("I", INTS)
def test_numpy_integers_seed_and_size_the_layers(I):
    mt.manual_seed(I(3))
    a = nn.Linear(I(3), I(2)).weight.data
    mt.manual_seed(3)
    np.testing.assert_array_equal(a, nn.Linear(3, 2).weight.data)
    emb, ln = nn.Embedding(I(5), I(4)), nn.LayerNorm(I(4))
    assert emb.weight.shape == (5, 4) and ln.weight.shape == (4,) and type(emb.num_embeddings) is int
    assert nn.ModuleList([nn.ReLU()])[I(0)] is not None and isinstance(nn.Sequential(nn.ReLU())[I(-1)], nn.ReLU)


@pytest.mark.parametrize("I", INTS)
def test_numpy_integers_size_a_transformer_and_its_config_stays_json(I):
    cfg = nn.TransformerConfig(vocab_size=I(7), block_size=I(8), n_layer=I(1), n_head=I(2), n_embd=I(16),
                               mlp_ratio=I(2), n_classes=I(3))
    assert json.loads(json.dumps(cfg.to_dict()))["n_embd"] == 16 and type(cfg.n_head) is int
    vit = nn.ViT(nn.TransformerConfig.preset("nano", n_classes=I(3), pooling="cls"), patch_size=I(2),
                 image_size=I(4), channels=I(1))
    assert vit(np.zeros((2, 4, 4))).shape == (2, 3) and type(vit.patch_size) is int


@pytest.mark.parametrize("I", INTS)
def test_numpy_integers_in_generation(I):
    mt.manual_seed(0)
    lm = nn.Transformer(nn.TransformerConfig.preset("nano", vocab_size=7, block_size=12, causal=True))
    idx = np.zeros((1, 2), dtype=np.int64)
    np.testing.assert_array_equal(lm.generate(idx, I(4), top_k=I(3), seed=I(5)),
                                  lm.generate(idx, 4, top_k=3, seed=5))


@pytest.mark.parametrize("I", INTS)
def test_numpy_integer_rank_trains_and_saves(I, tmp_path):
    from minitspeft.peft import LoraConfig, get_peft_model

    config = LoraConfig(r=I(4), target_modules=["q_proj"])
    assert type(config.r) is int
    pm = get_peft_model(_small_model(), config)
    pm.save_pretrained(str(tmp_path))  # the JSON record of the config
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 4


@pytest.mark.parametrize("I", INTS)
def test_numpy_integers_in_fit_predict_and_evaluate(I, tmp_path):
    from minitspeft.train import evaluate, predict

    x, y = toy_images()
    plain = fit(_small_model(), x, y, steps=4, batch_size=8, warmup_steps=1, seed=2, progress=False).history
    model = _small_model()
    numpy_ints = fit(model, x, y, steps=I(4), batch_size=I(8), warmup_steps=I(1), seed=I(2), progress=False,
                     checkpoint_dir=str(tmp_path), checkpoint_every=I(2), blas_threads=I(1), lr=np.float64(3e-3),
                     weight_decay=np.float32(0.0), max_grad_norm=np.float64(10.0)).history
    assert [h["loss"] for h in numpy_ints] == [h["loss"] for h in plain]
    assert all(p.dtype == np.float32 for p in model.parameters())  # the NumPy float lr promoted nothing
    assert load_arrays(str(tmp_path / CHECKPOINT))[1]["step"] == 4  # the record was JSON-able
    np.testing.assert_array_equal(predict(model, x, batch_size=I(16), blas_threads=I(1)), predict(model, x))
    assert evaluate(model, x, y, batch_size=I(16)) == evaluate(model, x, y)
    with mt.backend.blas_threads(I(1)):
        pass


def test_a_gate_config_with_numpy_integers_checkpoints_and_resumes(tmp_path):
    from minitspeft.peft import GateConfig, LoraConfig, get_peft_model

    x, y = toy_images()
    gated = get_peft_model(_small_model(), LoraConfig(r=2), gate=GateConfig(warmup_steps=np.int64(2)))
    kw = dict(steps=3, batch_size=8, progress=False, checkpoint_dir=str(tmp_path))
    first = fit(gated, x, y, **kw).history
    assert fit(gated, x, y, **kw, resume=True).history == first  # the fingerprint was saved and matched


@pytest.mark.parametrize("call, needle", [
    (lambda: mt.manual_seed(True), "manual_seed: seed must be an integer >= 0, got True"),
    (lambda: mt.manual_seed(3.7), "manual_seed: seed must be an integer >= 0, got 3.7"),
    (lambda: mt.manual_seed("3"), "manual_seed: seed must be an integer >= 0, got '3'"),
    (lambda: mt.manual_seed(np.int64(-1)), "manual_seed: seed must be an integer >= 0"),
    (lambda: mt.backend.blas_threads(np.True_), "blas_threads: n must be None or an integer >= 1"),
    (lambda: nn.Linear(True, 2), "Linear: in_features must be an integer >= 1, got True"),
    (lambda: nn.ViT(nn.TransformerConfig(n_classes=3), patch_size=2.0, image_size=4), "ViT: patch_size"),
    (lambda: fit(_small_model(), *toy_images(), steps=True, progress=False), "fit: steps must be an integer"),
])
def test_bools_floats_and_strings_are_still_refused_where_an_int_goes(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()


# ------------------------------------------------------------------ reported frictions
def test_a_bogus_backend_in_the_environment_fails_the_import_naming_the_valid_names():
    env = {**os.environ, "MINITSPEFT_BACKEND": "bogus"}
    proc = subprocess.run([sys.executable, "-c", "import minitspeft"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode != 0
    assert "ValueError: MINITSPEFT_BACKEND='bogus' is not a backend; valid names: numpy, cupy" in proc.stderr
    env["MINITSPEFT_BACKEND"] = "numpy"
    proc = subprocess.run([sys.executable, "-c", "import minitspeft as mt; print(mt.get_backend())"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.stdout.strip() == "numpy", proc.stderr


@pytest.mark.parametrize("value", ["0", "1000", "two", str((os.cpu_count() or 1) + 1)])
def test_bench_threads_must_be_between_one_and_the_cpu_count(value, capsys):
    from minitspeft.bench.__main__ import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--threads", value])
    assert info.value.code == 2
    assert f"--threads: must be an integer in [1, {os.cpu_count() or 1}]" in capsys.readouterr().err
    assert build_parser().parse_args(["--threads", str(os.cpu_count() or 1)]).threads == (os.cpu_count() or 1)


def _lora():
    from minitspeft.peft import LoraConfig, get_peft_model

    return get_peft_model(_small_model(), LoraConfig(r=2, target_modules=["q_proj", "fc1"], modules_to_save=["head"]))


@pytest.mark.parametrize("state", ["merged", "disabled"])
def test_fit_refuses_a_merged_or_disabled_adapter_before_any_step(state, tmp_path):
    pm = _lora()
    x, y = toy_images()
    fit(pm, x, y, steps=2, batch_size=8, progress=False)  # B is no longer zero, so merging changes W0
    needle = {"merged": r"fit: the adapter is merged into the base weights \(merge_adapter\(\)\) in "
                        r"base_model.blocks.0.attn.q_proj.*call unmerge_adapter\(\) first",
              "disabled": r"fit: the adapter is disabled \(inside `with model.disable_adapter\(\):`\) in "
                          r"base_model.blocks.0.attn.q_proj.*call fit outside that block"}[state]
    rng = mt.backend.get_rng_state()
    if state == "merged":
        pm.merge_adapter()
        before = pm.state_dict()
        with pytest.raises(ValueError, match=needle):
            fit(pm, x, y, steps=2, batch_size=8, progress=False, checkpoint_dir=str(tmp_path))
    else:
        with pm.disable_adapter():
            before = pm.state_dict()
            with pytest.raises(ValueError, match=needle):
                fit(pm, x, y, steps=2, batch_size=8, progress=False, checkpoint_dir=str(tmp_path))
    for k, v in pm.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert mt.backend.get_rng_state() == rng and list(tmp_path.iterdir()) == []  # not seeded, nothing written
    if state == "merged":
        pm.unmerge_adapter()
    assert len(fit(pm, x, y, steps=1, batch_size=8, progress=False).history) == 1  # and trains again after


def test_configs_with_numpy_scalars_save_as_json(tmp_path):
    from minitspeft.peft import AdapterConfig, GateConfig, PeftModel, get_peft_model

    mt.manual_seed(0)
    vit = nn.ViT(nn.TransformerConfig(n_classes=3, pooling="cls"), patch_size=2, image_size=8)
    pm = get_peft_model(vit, AdapterConfig(bottleneck=np.int64(8)), gate=GateConfig(temperature=np.float32(0.25)))
    pm.save_pretrained(str(tmp_path))
    mt.manual_seed(0)
    again = PeftModel.from_pretrained(nn.ViT(nn.TransformerConfig(n_classes=3, pooling="cls"), patch_size=2,
                                             image_size=8), str(tmp_path))
    assert again.peft_config.bottleneck == 8 and type(again.peft_config.bottleneck) is int
    assert again.gate_config.temperature == 0.25
