"""More habits a PyTorch user brings: the optimiser's one-object state dict, nn.Sequential and friends,
model.to(device), NumPy integers wherever an int goes, and clear refusals where this project differs."""

from __future__ import annotations

import os

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
    theirs = torch.nn.Parameter(torch.tensor(ours.data.copy()))
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
