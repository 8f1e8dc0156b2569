"""fit: exact resume, checkpoints that never half-write, NaN stops; SGD and optimiser state."""

import os
import re

import numpy as np
import pytest
from toy import toy_images

import minitspeft as mt
from minitspeft import nn
from minitspeft.optim import SGD, AdamW, clip_grad_norm
from minitspeft.peft import GateConfig, LoraConfig, get_peft_model
from minitspeft.train import CHECKPOINT, batch_indices, evaluate, fit, predict


def _model(gated=False, dropout=0.1):
    mt.manual_seed(0)
    cfg = nn.TransformerConfig(n_layer=1, n_head=2, n_embd=16, n_classes=3, pooling="cls", dropout=dropout)
    model = nn.ViT(cfg, patch_size=2, image_size=4)
    if gated:
        return get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "fc1"], modules_to_save=["head"]),
                              gate=GateConfig(sparsity_weight=0.05, tau_lr=0.01, warmup_steps=3))
    return model


KW = dict(steps=12, batch_size=8, lr=1e-2, warmup_steps=2, seed=3, progress=False)


@pytest.mark.parametrize("gated", [False, True])
def test_resume_ends_bit_for_bit_where_the_uninterrupted_run_ends(tmp_path, gated):
    x, y = toy_images()
    ref = _model(gated)
    full = fit(ref, x, y, **KW)

    first = _model(gated)
    fit(first, x, y, **{**KW, "steps": 12}, checkpoint_dir=str(tmp_path), checkpoint_every=5)
    # simulate a crash after step 5: keep the step-5 checkpoint by rerunning to it in a fresh folder
    part = tmp_path / "part"
    interrupted = _model(gated)
    with pytest.raises(KeyboardInterrupt):
        _fit_until(interrupted, x, y, str(part), stop_after=5)
    resumed = _model(gated)
    out = fit(resumed, x, y, **KW, checkpoint_dir=str(part), resume=True)
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert [h["loss"] for h in out.history] == [h["loss"] for h in full.history]
    for a, b in zip(first.state_dict().values(), ref.state_dict().values(), strict=True):
        np.testing.assert_array_equal(a, b)  # checkpointing itself changes nothing


def _fit_until(model, x, y, folder, stop_after):
    """Run fit with checkpoints every step and interrupt it after ``stop_after`` steps."""
    import minitspeft.train as train

    real = train.save_checkpoint

    def save_then_maybe_stop(folder_, model_, opt, step, history, fingerprint):
        real(folder_, model_, opt, step, history, fingerprint)
        if step == stop_after:
            raise KeyboardInterrupt

    train.save_checkpoint = save_then_maybe_stop
    try:
        fit(model, x, y, **KW, checkpoint_dir=folder, checkpoint_every=1)
    finally:
        train.save_checkpoint = real


def test_checkpoint_from_other_settings_is_refused_and_changes_nothing(tmp_path):
    x, y = toy_images()
    fit(_model(), x, y, **KW, checkpoint_dir=str(tmp_path))
    model = _model()
    before = model.state_dict()
    with pytest.raises(ValueError, match="other settings"):
        fit(model, x, y, **{**KW, "lr": 5e-3}, checkpoint_dir=str(tmp_path), resume=True)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_damaged_checkpoint_is_refused_and_changes_nothing(tmp_path):
    x, y = toy_images()
    fit(_model(), x, y, **KW, checkpoint_dir=str(tmp_path))
    path = tmp_path / CHECKPOINT
    path.write_bytes(path.read_bytes()[:100])
    model = _model()
    before = model.state_dict()
    with pytest.raises(ValueError, match="damaged"):
        fit(model, x, y, **KW, checkpoint_dir=str(tmp_path), resume=True)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_checkpoint_files_hold_no_pickles_and_no_temporaries(tmp_path):
    x, y = toy_images()
    fit(_model(), x, y, **KW, checkpoint_dir=str(tmp_path), checkpoint_every=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, CHECKPOINT + ".json"]
    with np.load(tmp_path / CHECKPOINT, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_nan_loss_stops_naming_the_step():
    x, y = toy_images()
    x = x.copy()
    x[np.arange(len(x)) == 5] = np.nan  # one poisoned example
    with pytest.raises(FloatingPointError, match=r"at step \d+"):
        fit(_model(dropout=0.0), x, y, **KW)


def test_fit_is_deterministic_and_learns():
    x, y = toy_images(60)
    a, b = _model(dropout=0.0), _model(dropout=0.0)
    ra = fit(a, x, y, **{**KW, "steps": 40})
    rb = fit(b, x, y, **{**KW, "steps": 40})
    assert [h["loss"] for h in ra.history] == [h["loss"] for h in rb.history]
    assert evaluate(a, x, y) > 0.9


def test_batch_indices_cover_each_epoch_once():
    seen = np.concatenate([batch_indices(s, 20, 5, seed=1) for s in range(4)])
    assert sorted(seen) == list(range(20))
    assert not np.array_equal(batch_indices(0, 20, 5, 1), batch_indices(4, 20, 5, 1))  # a new epoch reshuffles
    np.testing.assert_array_equal(batch_indices(7, 20, 5, 1), batch_indices(7, 20, 5, 1))


@pytest.mark.parametrize("nesterov,dampening,wd", [(False, 0.0, 0.0), (False, 0.3, 0.1), (True, 0.0, 0.05)])
def test_sgd_follows_the_written_update(nesterov, dampening, wd):
    p = nn.Parameter(np.array([1.0, -2.0, 0.5]))
    opt = SGD([p], lr=0.1, momentum=0.9, dampening=dampening, weight_decay=wd, nesterov=nesterov)
    x, buf = p.data.copy(), None
    for g in np.random.default_rng(0).normal(size=(4, 3)):
        p.grad = g
        opt.step()
        d = g + wd * x
        buf = d.copy() if buf is None else 0.9 * buf + (1 - dampening) * d
        x = x - 0.1 * (d + 0.9 * buf if nesterov else buf)
        np.testing.assert_allclose(p.data, x, rtol=1e-14)


def test_sgd_rejects_bad_nesterov():
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([nn.Parameter(np.zeros(1))], momentum=0.0, nesterov=True)


def test_optimizer_state_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(6, 2, 3))
    a = nn.Parameter(np.ones((2, 3)))
    b = nn.Parameter(np.ones((2, 3)))
    opt_a = AdamW([a], lr=0.05)
    for g in grads[:3]:
        a.grad = g
        opt_a.step()
    state = opt_a.state_dict()
    b.data = a.data.copy()
    opt_b = AdamW([b], lr=0.05)
    opt_b.load_state_dict(state)
    for g in grads[3:]:
        a.grad, b.grad = g, g.copy()
        opt_a.step()
        opt_b.step()
    np.testing.assert_array_equal(a.data, b.data)


def test_clip_grad_norm():
    p, q = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(1))
    p.grad, q.grad = np.array([3.0, 0.0]), np.array([4.0])
    assert clip_grad_norm([p, q], 1.0) == pytest.approx(5.0)
    assert np.sqrt((p.grad ** 2).sum() + (q.grad ** 2).sum()) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("opt_cls", [SGD, AdamW])
def test_frozen_until_holds_a_group_whatever_the_schedule_sets(opt_cls):
    """A group with frozen_until=k keeps its values for k steps even if its lr is set afterwards, then moves."""
    from minitspeft.optim import set_lr_factor

    free, held = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(3))
    opt = opt_cls([{"params": [free]}, {"params": [held], "frozen_until": 3}], lr=0.1)
    for step in range(5):
        set_lr_factor(opt, 1.0)  # the schedule sets every group's lr, the frozen one's included
        free.grad, held.grad = np.ones(3), np.ones(3)
        before = held.data.copy()
        opt.step()
        assert np.array_equal(held.data, before) == (step < 3), step
        assert opt.step_count == step + 1
    assert not np.array_equal(free.data, np.ones(3))


def test_step_count_is_saved_and_a_state_without_it_is_refused():
    p = nn.Parameter(np.ones(2))
    opt = AdamW([{"params": [p], "frozen_until": 2}], lr=0.1)
    p.grad = np.ones(2)
    opt.step()
    state = opt.state_dict()
    again = AdamW([{"params": [nn.Parameter(np.ones(2))], "frozen_until": 2}], lr=0.1)
    again.load_state_dict(state)
    assert again.step_count == 1 and again.lr_of(again.param_groups[0]) == 0.0
    del state["step_count"]
    fresh = AdamW([nn.Parameter(np.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="step_count"):
        fresh.load_state_dict(state)
    assert fresh.step_count == 0 and fresh.state == {}


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_frozen_until_must_be_a_non_negative_integer(bad):
    with pytest.raises(ValueError, match="frozen_until"):
        AdamW([{"params": [nn.Parameter(np.ones(1))], "frozen_until": bad}])


def test_peft_model_gate_groups_carry_the_gate_warmup():
    groups = {g.get("name"): g for g in _model(gated=True).optimizer_groups(1e-2)}
    assert groups["tau"]["frozen_until"] == 3 and groups["tau"]["weight_decay"] == 0.0
    assert "frozen_until" not in groups[None]


# ------------------------------------------------- resume refuses what changed


def _gated(sparsity_weight=0.05, lora_alpha=16.0, tau_lr=0.01, temperature=0.1):
    mt.manual_seed(0)
    cfg = nn.TransformerConfig(n_layer=1, n_head=2, n_embd=16, n_classes=3, pooling="cls", dropout=0.1)
    return get_peft_model(nn.ViT(cfg, patch_size=2, image_size=4),
                          LoraConfig(r=2, lora_alpha=lora_alpha, target_modules=["q_proj", "fc1"],
                                     modules_to_save=["head"]),
                          gate=GateConfig(sparsity_weight=sparsity_weight, tau_lr=tau_lr, warmup_steps=3,
                                          temperature=temperature))


@pytest.mark.parametrize("change, field", [
    (dict(model=lambda: _gated(sparsity_weight=5.0)), "gate_config.sparsity_weight"),
    (dict(model=lambda: _gated(temperature=0.3)), "gate_config.temperature"),
    (dict(model=lambda: _gated(lora_alpha=64.0)), "peft_config.lora_alpha"),
    (dict(model=lambda: _gated(tau_lr=0.05)), "optimizer[1].initial_lr"),
    (dict(data=lambda x, y: (x[::-1].copy(), y[::-1].copy())), "data.sha256"),
    (dict(kw={"max_grad_norm": 1.0}), "loop.max_grad_norm"),
])
def test_resume_refuses_any_change_that_shapes_the_run_and_names_it(tmp_path, change, field):
    x, y = toy_images()
    fit(_gated(), x, y, **KW, checkpoint_dir=str(tmp_path))
    model = change.get("model", _gated)()
    xx, yy = change.get("data", lambda a, b: (a, b))(x, y)
    before = model.state_dict()
    with pytest.raises(ValueError, match=re.escape(field)):
        fit(model, xx, yy, **{**KW, **change.get("kw", {})}, checkpoint_dir=str(tmp_path), resume=True)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_a_model_of_another_shape_is_refused():
    x, y = toy_images()
    mt.manual_seed(0)
    wide = nn.ViT(nn.TransformerConfig(n_layer=1, n_head=2, n_embd=32, n_classes=3, pooling="cls"),
                  patch_size=2, image_size=4)
    import minitspeft.train as train

    fp_a = train.run_fingerprint(_model(), train.build_optimizer(_model(), 0.01), x, y, {})
    fp_b = train.run_fingerprint(wide, train.build_optimizer(wide, 0.01), x, y, {})
    from minitspeft.checkpoint import differences

    assert any(d.startswith("model.config.n_embd") for d in differences(fp_a, fp_b))
    assert any(d.startswith("parameters") for d in differences(fp_a, fp_b))


def _rewrite_record(tmp_path, change):
    from minitspeft.io import load_arrays, save_arrays

    arrays, meta = load_arrays(str(tmp_path / CHECKPOINT))
    change(meta)
    save_arrays(str(tmp_path / CHECKPOINT), arrays, meta)


@pytest.mark.parametrize("change, needle", [
    (lambda m: m.update(step="12"), "step"), (lambda m: m.update(step=99), r"not in \[1, steps=12\]"),
    (lambda m: m.update(history=m["history"][:3]), "history"), (lambda m: m.pop("rng"), "'rng'"),
    (lambda m: m["rng"].update(bit_generator="MT19937"), "does not fit"),
    (lambda m: m["optim"].pop("step_count"), "does not fit"),
])
def test_a_checkpoint_with_a_bad_record_is_refused_and_changes_nothing(tmp_path, change, needle):
    x, y = toy_images()
    fit(_model(), x, y, **KW, checkpoint_dir=str(tmp_path))
    _rewrite_record(tmp_path, change)
    model = _model()
    before = model.state_dict()
    rng_before = mt.backend.get_rng_state()
    with pytest.raises(ValueError, match=needle):
        fit(model, x, y, **KW, checkpoint_dir=str(tmp_path), resume=True)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_an_interrupted_checkpoint_write_keeps_the_previous_checkpoint_and_resume_is_exact(tmp_path, monkeypatch):
    """The step-8 checkpoint write dies before its rename: the step-4 checkpoint is still whole, and a resume
    from it ends where the uninterrupted run ends."""
    import minitspeft.io as io

    x, y = toy_images()
    full = fit(_model(), x, y, **KW)
    real_replace, calls = os.replace, {"n": 0}

    def replace(src, dst):
        if dst.endswith(CHECKPOINT):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt  # the second checkpoint (after step 8) never lands
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), x, y, **KW, checkpoint_dir=str(tmp_path), checkpoint_every=4)
    monkeypatch.undo()
    resumed = _model()
    out = fit(resumed, x, y, **KW, checkpoint_dir=str(tmp_path), resume=True)
    assert len(out.history) == 12 and out.history[4]["step"] == 4
    assert [h["loss"] for h in out.history] == [h["loss"] for h in full.history]


@pytest.mark.parametrize("kw, needle", [
    ({"max_grad_norm": 0.0}, "max_grad_norm"), ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ({"warmup_steps": -1}, "warmup_steps"), ({"checkpoint_every": 5}, "checkpoint_dir"),
    ({"batch_size": 8.0}, "batch_size"), ({"lr": float("nan")}, "lr"), ({"steps": True}, "steps"),
    ({"seed": -1}, "seed"),
])
def test_fit_refuses_settings_that_would_be_ignored_or_fail_later(kw, needle):
    x, y = toy_images()
    with pytest.raises(ValueError, match=needle):
        fit(_model(), x, y, **{**KW, **kw})


def test_fit_trains_on_the_backend_it_is_given_and_gives_the_active_one_back():
    x, y = toy_images()
    before = mt.get_backend()
    with mt.backend.using("strict"):
        model = _model(gated=True)
    ref = _model(gated=True)  # the same model on the active backend
    out = fit(model, x, y, **KW, backend="strict")
    assert mt.get_backend() == before
    assert all(mt.backend.backend_of(p.data) == "strict" for p in model.parameters())
    expected = fit(ref, x, y, **KW).history
    np.testing.assert_allclose([h["loss"] for h in out.history], [h["loss"] for h in expected], rtol=1e-5)


def test_fit_refuses_a_backend_its_model_is_not_on_before_anything_changes():
    x, y = toy_images()
    model = _model()
    other = "numpy" if mt.get_backend() != "numpy" else "strict"
    weights = {k: mt.to_numpy(v) for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"parameters are {mt.get_backend()} arrays, but it would train on the "
                                         f"{other} backend; build the model after mt.set_backend"):
        fit(model, x, y, **KW, backend=other)
    with pytest.raises(ValueError, match="fit: unknown backend 'gpu'"):
        fit(model, x, y, **KW, backend="gpu")
    assert all(np.array_equal(mt.to_numpy(v), weights[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=f"predict: the model's parameters are .* would run on the {other}"):
        predict(model, x, backend=other)


def test_without_backend_fit_predict_and_evaluate_run_where_the_model_is():
    """As a PyTorch model's device decides where it runs: the active backend may be another one."""
    x, y = toy_images()
    model, here = _model(), mt.get_backend()
    other = "numpy" if here != "numpy" else "strict"
    with mt.backend.using(other):
        fit(model, x, y, **KW)
        preds = predict(model, x)
        acc = evaluate(model, x, mt.backend.asarray(y))  # labels may be any backend's array
        assert mt.get_backend() == other  # given back after each
    assert all(mt.backend.backend_of(p.data) == here for p in model.parameters())
    np.testing.assert_array_equal(preds, predict(model, x))
    assert acc == evaluate(model, x, y)


def test_fit_refuses_float_labels_and_mismatched_shapes():
    x, y = toy_images()
    with pytest.raises(ValueError, match="integer class labels"):
        fit(_model(), x, y.astype(float), **KW)
    with pytest.raises(ValueError, match="same number"):
        fit(_model(), x, y[:-1], **KW)


def test_fit_and_predict_run_with_the_blas_thread_count_fixed():
    """Results must not depend on the machine's thread settings: inside fit and predict BLAS has 1 thread."""
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []

    class Probe(nn.Module):
        def __init__(self):
            self.inner = _model(dropout=0.0)

        def forward(self, x):
            seen.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
            return self.inner(x)

    x, y = toy_images()
    with threadpool_limits(limits=2, user_api="blas"):
        outer = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
        fit(Probe(), x, y, **{**KW, "steps": 2})
        predict(Probe(), x)
        fit(Probe(), x, y, **{**KW, "steps": 1}, blas_threads=None)
    assert seen[:3] == [{1}] * 3 and seen[-1] == outer  # None leaves the caller's setting alone
    with pytest.raises(ValueError, match="blas_threads"):
        fit(_model(), x, y, **KW, blas_threads=0)


def test_a_checkpoint_whose_record_is_not_an_object_is_refused(tmp_path):
    from minitspeft.io import load_arrays, save_arrays

    x, y = toy_images()
    fit(_model(), x, y, **KW, checkpoint_dir=str(tmp_path))
    arrays, _ = load_arrays(str(tmp_path / CHECKPOINT))
    save_arrays(str(tmp_path / CHECKPOINT), arrays, ["not", "an", "object"])
    with pytest.raises(ValueError, match="holds no record"):
        fit(_model(), x, y, **KW, checkpoint_dir=str(tmp_path), resume=True)


def test_clip_grad_norm_is_right_at_any_magnitude_and_takes_one_parameter():
    p = nn.Parameter(np.ones(2, np.float32))
    p.grad = np.array([1e30, 1e30], np.float32)  # the squares overflow float32
    assert clip_grad_norm([p], 1.0) == pytest.approx(np.sqrt(2) * 1e30, rel=1e-6)
    np.testing.assert_allclose(p.grad, [2 ** -0.5] * 2, rtol=1e-5)
    p.grad = np.array([3e-30, 4e-30], np.float32)  # the squares underflow
    assert clip_grad_norm(p, 1.0) == pytest.approx(5e-30, rel=1e-6)


@pytest.mark.parametrize("damage, needle", [
    (lambda a, m: a.pop(next(k for k in a if k.endswith(".exp_avg"))), "does not fit"),
    (lambda a, m: m["optim"].update(step_count=-3), "does not fit"),
    (lambda a, m: a.update({k: a[k] * np.nan for k in list(a)[:1]}), "not finite"),
    (lambda a, m: a.update({k: a[k].astype(np.int64) for k in a if "lora_A" in k}), "not finite floating point"),
    (lambda a, m: a.update({k: a[k] - 5.0 for k in a if k.endswith("gate.tau")}), "below its lower bound"),
])
def test_a_damaged_checkpoint_is_refused_before_the_model_changes(tmp_path, damage, needle):
    from minitspeft.io import load_arrays, save_arrays

    x, y = toy_images()
    fit(_gated(), x, y, **KW, checkpoint_dir=str(tmp_path))
    arrays, meta = load_arrays(str(tmp_path / CHECKPOINT))
    damage(arrays, meta)
    save_arrays(str(tmp_path / CHECKPOINT), arrays, meta)
    model = _gated()
    before = model.state_dict()
    with pytest.raises(ValueError, match=needle):
        fit(model, x, y, **KW, checkpoint_dir=str(tmp_path), resume=True)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_resume_on_another_base_model_of_the_same_shape_is_refused(tmp_path):
    x, y = toy_images()
    fit(_gated(), x, y, **KW, checkpoint_dir=str(tmp_path))
    other = _gated()
    other.base_model.blocks[0].attn.k_proj.weight.data = other.base_model.blocks[0].attn.k_proj.weight.data + 1.0
    with pytest.raises(ValueError, match="frozen_weights"):
        fit(other, x, y, **KW, checkpoint_dir=str(tmp_path), resume=True)


def test_an_optimiser_refuses_the_state_of_another_kind():
    p = nn.Parameter(np.ones(2))
    adam = AdamW([p])
    p.grad = np.ones(2)
    adam.step()
    with pytest.raises(ValueError, match="load_state_dict"):
        SGD([nn.Parameter(np.ones(2))], momentum=0.9).load_state_dict(adam.state_dict())
    with pytest.raises(TypeError, match="expected the dict state_dict"):
        AdamW([nn.Parameter(np.ones(2))]).load_state_dict(([], {}))
