"""The everyday ops a PyTorch user reaches for: each gradient-checked in float64 against central
differences, and against PyTorch itself where it is installed (values and gradients)."""

from __future__ import annotations

import numpy as np
import pytest

import minitspeft as mt
from minitspeft import functional as F
from minitspeft.testing import check_grad

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # the PyTorch comparisons are skipped, the gradient checks still run
    torch = None

RNG = np.random.default_rng(7)


def _x(*shape, low=-2.0, high=2.0):
    return RNG.uniform(low, high, size=shape)


def _avoid_ties(a, step=0.05):
    """Values kept away from 0 and from each other's kinks (for leaky_relu and clamp)."""
    return np.where(np.abs(a) < step, a + 3 * step, a)


GATHER_INDEX = np.array([[0, 2, 2], [1, 0, 1]])
MASK = np.array([[True, False, True], [False, False, True]])
TARGETS = np.array([2, 0, 1, 2])

# name: (our function, PyTorch's function or None, the float64 inputs)
CASES = {
    "sin": (lambda a: a.sin(), lambda a: a.sin(), [_x(3, 4)]),
    "cos": (lambda a: a.cos(), lambda a: a.cos(), [_x(3, 4)]),
    "log1p": (lambda a: a.log1p(), lambda a: a.log1p(), [_x(3, 4, low=-0.9)]),
    "expm1": (lambda a: a.expm1(), lambda a: a.expm1(), [_x(3, 4)]),
    # below 20: past it PyTorch's softplus returns x itself (its threshold), 2e-10 from the exact value
    "softplus": (F.softplus, TF.softplus if torch else None, [_x(3, 4, low=-18, high=18)]),
    "softplus_beta": (lambda a: F.softplus(a, beta=2.0), (lambda a: TF.softplus(a, beta=2.0)) if torch else None,
                      [_x(3, 4)]),
    "silu": (F.silu, TF.silu if torch else None, [_x(3, 4, low=-6, high=6)]),
    "leaky_relu": (lambda a: F.leaky_relu(a, 0.1), (lambda a: TF.leaky_relu(a, 0.1)) if torch else None,
                   [_avoid_ties(_x(3, 4))]),
    "clamp": (lambda a: a.clamp(min=-1.0, max=1.0), lambda a: a.clamp(min=-1.0, max=1.0),
              [_avoid_ties(_avoid_ties(_x(3, 4)) - 1) + 1]),
    "unsqueeze": (lambda a: a.unsqueeze(1) * a.unsqueeze(-1), lambda a: a.unsqueeze(1) * a.unsqueeze(-1),
                  [_x(2, 3)]),
    "squeeze": (lambda a: a.squeeze(), lambda a: a.squeeze(), [_x(2, 1, 3, 1)]),
    "squeeze_dim": (lambda a: a.squeeze(1), lambda a: a.squeeze(1), [_x(2, 1, 3, 1)]),
    "flatten": (lambda a: mt.flatten(a, 1), lambda a: torch.flatten(a, 1), [_x(2, 3, 4)]),
    "permute": (lambda a: a.permute(2, 0, 1), lambda a: a.permute(2, 0, 1), [_x(2, 3, 4)]),
    "view": (lambda a: a.view(4, 6), lambda a: a.view(4, 6), [_x(2, 3, 4)]),
    "expand": (lambda a: a.expand(2, 3, -1), lambda a: a.expand(2, 3, -1), [_x(3, 1)]),
    "flip": (lambda a: a.flip((0, 2)), lambda a: a.flip((0, 2)), [_x(2, 3, 4)]),
    "pad": (lambda a: F.pad(a, (1, 2, 0, 1), value=0.5), lambda a: TF.pad(a, (1, 2, 0, 1), value=0.5),
            [_x(2, 3, 4)]),
    "tril": (lambda a: a.tril(-1), lambda a: a.tril(-1), [_x(2, 4, 4)]),
    "triu": (lambda a: a.triu(1), lambda a: a.triu(1), [_x(4, 5)]),
    "chunk": (lambda a: mt.concat([c * (i + 1) for i, c in enumerate(a.chunk(3, dim=1))], axis=1),
              lambda a: torch.cat([c * (i + 1) for i, c in enumerate(a.chunk(3, dim=1))], dim=1), [_x(2, 7)]),
    "split": (lambda a: mt.concat([c * (i + 1) for i, c in enumerate(a.split([1, 3, 0], dim=0))], axis=0),
              lambda a: torch.cat([c * (i + 1) for i, c in enumerate(a.split([1, 3, 0], dim=0))], dim=0),
              [_x(4, 2)]),
    "repeat": (lambda a: a.repeat(2, 1, 3), lambda a: a.repeat(2, 1, 3), [_x(2, 3)]),
    "prod": (lambda a: a.prod(dim=1), lambda a: a.prod(dim=1), [_x(3, 4)]),
    "prod_all": (lambda a: a.prod(), lambda a: a.prod(), [_x(2, 3)]),
    "std": (lambda a: a.std(dim=0, correction=1), lambda a: a.std(dim=0, correction=1), [_x(5, 3)]),
    "logsumexp": (lambda a: a.logsumexp(dim=-1), lambda a: a.logsumexp(dim=-1), [_x(3, 5, low=-5, high=5)]),
    "logsumexp_keepdim": (lambda a: a.logsumexp(dim=(0, 2), keepdim=True),
                          lambda a: a.logsumexp(dim=(0, 2), keepdim=True), [_x(2, 3, 4)]),
    "cumsum": (lambda a: a.cumsum(1), lambda a: a.cumsum(1), [_x(3, 4)]),
    "gather": (lambda a: a.gather(1, GATHER_INDEX), lambda a: a.gather(1, torch.from_numpy(GATHER_INDEX)),
               [_x(2, 4)]),
    "masked_fill": (lambda a: a.masked_fill(mt.Tensor(MASK), -3.0),
                    lambda a: a.masked_fill(torch.from_numpy(MASK), -3.0), [_x(2, 3)]),
    "nll_loss": (lambda a: F.nll_loss(F.log_softmax(a), TARGETS),
                 lambda a: TF.nll_loss(TF.log_softmax(a, -1), torch.from_numpy(TARGETS)), [_x(4, 3)]),
    "nll_loss_sum": (lambda a: F.nll_loss(a, TARGETS, reduction="sum"),
                     lambda a: TF.nll_loss(a, torch.from_numpy(TARGETS), reduction="sum"), [_x(4, 3)]),
    "bce_with_logits": (lambda a, y: F.binary_cross_entropy_with_logits(a, y.detach()),
                        lambda a, y: TF.binary_cross_entropy_with_logits(a, y.detach()),
                        [_x(3, 4, low=-8, high=8), _x(3, 4, low=0, high=1)]),
    "mse_loss": (F.mse_loss, TF.mse_loss if torch else None, [_x(3, 4), _x(3, 4)]),
    "mse_loss_none": (lambda a, b: F.mse_loss(a, b, reduction="none"),
                      (lambda a, b: TF.mse_loss(a, b, reduction="none")) if torch else None, [_x(3, 4), _x(3, 4)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_central_differences(name):
    ours, _, arrays = CASES[name]
    if name == "bce_with_logits":  # the targets get no gradient: check the logits only
        y = arrays[1]
        check_grad(lambda a: ours(a, mt.Tensor(y)), arrays[0])
    else:
        check_grad(ours, *arrays)


@pytest.mark.skipif(torch is None, reason="needs PyTorch")
@pytest.mark.parametrize("name", sorted(CASES))
def test_values_and_gradients_match_pytorch(name):
    ours, theirs, arrays = CASES[name]
    xs = [mt.Tensor(a.copy(), requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, ref = ours(*xs), theirs(*ts)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    v = RNG.standard_normal(out.shape)
    out.backward(v)
    ref.backward(torch.from_numpy(v))
    for x, t in zip(xs, ts):
        if t.grad is not None and x.grad is not None:
            np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("op", ["sign", "floor", "ceil", "round"])
def test_piecewise_constant_ops_have_zero_gradient_and_numpys_values(op):
    a = np.array([-2.5, -0.5, 0.0, 0.5, 1.5, 2.5])
    x = mt.Tensor(a, requires_grad=True)
    out = getattr(x, op)()
    np.testing.assert_array_equal(out.numpy(), getattr(np, op)(a))
    out.sum().backward()
    assert x.grad is not None and not np.any(x.grad)


@pytest.mark.parametrize("row", [[2.0, 0.0, 3.0, 4.0], [0.0, 5.0, 0.0, 2.0], [1.5, 2.0, -1.0, 3.0]])
def test_prod_gradient_is_the_product_of_the_others_even_at_zeros(row):
    a = np.array(row)
    x = mt.Tensor(a, requires_grad=True)
    x.prod().backward()
    others = [np.prod(np.delete(a, i)) for i in range(a.size)]  # the definition, not prod / x_i
    np.testing.assert_allclose(x.grad, others, rtol=1e-14)


def test_softplus_and_logsumexp_are_finite_where_the_naive_formulas_overflow():
    x = mt.Tensor(np.array([-1000.0, 0.0, 1000.0], dtype=np.float32), requires_grad=True)
    out = F.softplus(x)
    np.testing.assert_allclose(out.numpy(), [0.0, np.log(2.0), 1000.0], rtol=1e-6)
    out.sum().backward()
    np.testing.assert_allclose(x.grad, [0.0, 0.5, 1.0], atol=1e-7)
    big = mt.Tensor(np.array([[1000.0, 1000.0], [-np.inf, -np.inf]]), requires_grad=True)
    lse = big.logsumexp(dim=1)
    assert lse.numpy()[0] == pytest.approx(1000.0 + np.log(2.0))
    assert lse.numpy()[1] == -np.inf  # every element -inf: -inf, as PyTorch


def test_comparisons_are_elementwise_boolean_tensors_without_a_graph():
    a = mt.Tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    b = mt.Tensor([[3.0], [2.0]])
    for op, ref in [("__eq__", np.equal), ("__ne__", np.not_equal), ("__lt__", np.less),
                    ("__le__", np.less_equal), ("__gt__", np.greater), ("__ge__", np.greater_equal)]:
        out = getattr(a, op)(b)
        assert isinstance(out, mt.Tensor) and out.dtype == np.bool_ and not out.requires_grad
        np.testing.assert_array_equal(out.numpy(), ref(a.numpy(), b.numpy()))
    assert (a == 2.0).tolist() == [[False, True, False]] and (2.0 < a).tolist() == [[False, False, True]]
    assert {a: 1}[a] == 1  # tensors still hash by identity


def test_equal_compares_shape_and_values_not_identity():
    a = mt.Tensor([1.0, 2.0])
    assert a.equal(mt.Tensor([1.0, 2.0])) and mt.equal(a, [1, 2])
    assert not a.equal(mt.Tensor([[1.0, 2.0]])) and not a.equal(mt.Tensor([1.0, 3.0]))
    assert not mt.Tensor([np.nan]).equal(mt.Tensor([np.nan]))


def test_isnan_isfinite_any_all_argmax_argmin():
    a = np.array([[1.0, np.nan, -np.inf], [4.0, 0.0, 2.0]])
    x = mt.Tensor(a)
    np.testing.assert_array_equal(x.isnan().numpy(), np.isnan(a))
    np.testing.assert_array_equal(mt.isfinite(x).numpy(), np.isfinite(a))
    b = mt.Tensor([[0, 3, 0], [0, 0, 0]])
    assert b.any().item() and not b.all().item()
    assert b.any(dim=1).tolist() == [True, False] and b.all(axis=0, keepdims=True).shape == (1, 3)
    c = mt.Tensor([[3.0, 7.0, 7.0], [-1.0, -5.0, 0.0]])
    assert c.argmax().item() == 1 and c.argmin().item() == 4  # flat, first at ties
    assert c.argmax(dim=1).tolist() == [1, 2] and c.argmin(1, keepdim=True).shape == (2, 1)
    assert c.argmax(dim=1).dtype == np.int64
    with pytest.raises(ValueError, match="argmax"):
        mt.zeros(0).argmax()


def test_creation_functions_follow_pytorchs_shapes_and_dtypes():
    assert mt.zeros(2, 3).shape == (2, 3) == mt.ones((2, 3)).shape and mt.zeros(2).dtype == np.float32
    assert mt.zeros(np.int64(2), np.int32(3)).shape == (2, 3)
    assert mt.full((2,), 7).dtype == np.int64 and mt.full((2,), 7.0).dtype == np.float32
    assert mt.full((1,), True).dtype == np.bool_
    assert mt.arange(4).tolist() == [0, 1, 2, 3] and mt.arange(1, 2, 0.5).tolist() == [1.0, 1.5]
    assert mt.arange(3).dtype == np.int64 and mt.arange(3.0).dtype == np.float32
    np.testing.assert_array_equal(mt.eye(2, 3).numpy(), np.eye(2, 3))
    like = mt.Tensor(np.ones((2, 2)))
    assert mt.zeros_like(like).dtype == np.float64 and mt.ones_like(like, dtype="float32").dtype == np.float32
    x = mt.zeros(3, requires_grad=True)
    assert x.requires_grad and x.is_leaf


def test_random_tensors_come_from_the_seeded_host_generator():
    mt.manual_seed(3)
    a, u = mt.randn(4, 5), mt.rand(1000)
    mt.manual_seed(3)
    assert mt.randn(4, 5).equal(a) and a.dtype == np.float32
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0 and abs(float(u.mean()) - 0.5) < 0.05
    assert mt.randn(2, dtype="float64").dtype == np.float64


@pytest.mark.parametrize("call, error", [
    (lambda: mt.zeros(2, -1), ValueError), (lambda: mt.ones(2.5), TypeError), (lambda: mt.zeros(True), TypeError),
    (lambda: mt.arange(0, 3, 0), ValueError), (lambda: mt.randn(2, dtype="int64"), TypeError),
    (lambda: mt.full((2,), "a"), TypeError), (lambda: mt.zeros(2, dtype="int64", requires_grad=True), TypeError),
])
def test_creation_rejects_bad_sizes_and_dtypes(call, error):
    with pytest.raises(error):
        call()


def test_size_is_the_count_and_callable_as_in_pytorch():
    x = mt.zeros(2, 3, 4)
    assert x.size == 24 == x.numel() and x.size() == (2, 3, 4) and x.size(1) == 3 and x.size(-1) == 4
    with pytest.raises(IndexError, match="size"):
        x.size(3)


def test_one_hot():
    out = F.one_hot(np.array([[0, 2], [1, 1]]), 3)
    assert out.shape == (2, 2, 3) and out.dtype == np.int64
    np.testing.assert_array_equal(out.numpy()[0], [[1, 0, 0], [0, 0, 1]])
    assert F.one_hot(np.array([3])).shape == (1, 4)
    with pytest.raises(ValueError, match="one_hot"):
        F.one_hot(np.array([3]), 3)


@pytest.mark.parametrize("call, error, words", [
    (lambda x: x.gather(1, np.array([[0, 4, 0], [0, 0, 0]])), IndexError, "gather"),
    (lambda x: x.gather(1, np.array([0, 1])), ValueError, "gather"),
    (lambda x: x.split([1, 2], dim=0), ValueError, "split"),
    (lambda x: x.chunk(0), ValueError, "chunk"),
    (lambda x: F.pad(x, (1,)), ValueError, "pad"),
    (lambda x: F.pad(x, (-1, 0)), ValueError, "pad"),
    (lambda x: x.masked_fill(np.ones((2, 3)), 0.0), TypeError, "masked_fill"),
    (lambda x: x.masked_fill(np.ones((2,), bool), 0.0), ValueError, "masked_fill"),
    (lambda x: F.mse_loss(x, mt.zeros(3)), ValueError, "mse_loss"),
    (lambda x: F.nll_loss(x, np.array([0, 5])), ValueError, "nll_loss"),
    (lambda x: F.binary_cross_entropy_with_logits(x, mt.full((2, 3), 2.0)), ValueError, "targets"),
    (lambda x: x.unsqueeze(3), IndexError, "unsqueeze"),
    (lambda x: x.expand(3, 3), ValueError, "broadcast"),
    (lambda x: x.repeat(2), ValueError, "repeat"),
    (lambda x: x.flatten(1, 0), ValueError, "flatten"),
    (lambda x: x.cumsum(2), IndexError, "cumsum"),
    (lambda x: mt.tril(mt.zeros(3)), ValueError, "tril"),
])
def test_bad_arguments_raise_naming_the_op(call, error, words):
    x = mt.Tensor(np.zeros((2, 3)), requires_grad=True)
    with pytest.raises(error, match=words):
        call(x)


def test_max_and_min_with_dim_give_pytorchs_values_and_indices():
    x = mt.Tensor(np.array([[1.0, 5.0], [7.0, 2.0]]), requires_grad=True)
    values, indices = x.max(dim=1)
    assert values.tolist() == [5.0, 7.0] and indices.tolist() == [1, 0]
    assert x.min(dim=0).indices.tolist() == [0, 1] and x.max(dim=1, keepdim=True).values.shape == (2, 1)
    assert x.max(1).tolist() == [5.0, 7.0]  # NumPy's axis (positional or axis=): the values alone
    x.max(dim=0).values.sum().backward()
    np.testing.assert_array_equal(x.grad, [[0.0, 1.0], [1.0, 0.0]])


def test_reducing_a_non_empty_axis_of_an_empty_tensor_gives_an_empty_result():
    e = mt.zeros(0, 3)
    assert e.max(1).shape == (0,) and e.argmin(1).shape == (0,) and e.sum(1).shape == (0,)
    with pytest.raises(ValueError, match="empty axis"):
        e.max(0)


def test_std_of_a_constant_has_zero_gradient_as_in_pytorch():
    x = mt.Tensor(np.ones((2, 3)), requires_grad=True)
    x.std(dim=1, correction=1).sum().backward()
    np.testing.assert_array_equal(x.grad, np.zeros((2, 3)))


def test_masks_combine_with_and_or_xor_not():
    x = mt.arange(6)
    assert ((x > 1) & (x < 4)).tolist() == [False, False, True, True, False, False]
    assert ((x < 1) | (x > 4)).tolist() == [True, False, False, False, False, True]
    assert (~(x > 2)).tolist() == [True, True, True, False, False, False]
    assert ((x > 1) ^ (x > 3)).tolist() == [False, False, True, True, False, False]
    with pytest.raises(TypeError, match="logical_and"):
        mt.ones(2) & mt.ones(2)


def test_torch_keywords_on_joins_pad_and_to():
    a = mt.ones(2, 1)
    assert mt.cat([a, a], dim=1).shape == (2, 2) and mt.stack([a, a], dim=0).shape == (2, 2, 1)
    assert F.pad(mt.ones(2), (1, 0), mode="constant", value=3.0).tolist() == [3.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="mode"):
        F.pad(a, (1, 1), mode="reflect")


def test_cpu_and_to_a_device_follow_the_backend():
    """NumPy is PyTorch's "cpu": ``cpu()`` and ``to("cpu")`` are the tensor itself and ``"cuda"`` is refused.
    On CuPy (and the strict stand-in) ``"cuda"`` is the tensor itself, and ``cpu()`` a detached host copy."""
    a = mt.ones(2, 1, requires_grad=True)
    assert a.to(mt.get_default_device()) is a
    if mt.get_default_device() == "cpu":
        assert a.cpu() is a and a.to("cpu") is a
        with pytest.raises(RuntimeError, match="minitspeft\\[gpu\\]"):
            a.to("cuda")
    else:
        host = a.to("cpu")
        assert mt.backend.is_host_array(host.data) and host.tolist() == [[1.0], [1.0]]
        assert not host.requires_grad and a.to("cuda") is a and a.to("cuda:0") is a and a.cuda() is a
    assert a.device == mt.get_default_device()


def test_to_takes_a_device_and_a_dtype_together_as_in_pytorch():
    a = mt.ones(2, 1, requires_grad=True)
    dev = mt.get_default_device()
    for b in (a.to(dev, "float64"), a.to(device=dev, dtype=np.float64), a.to(np.float64)):
        assert b.dtype == np.float64 and b.device == dev and b.requires_grad
    b.sum().backward()
    assert a.grad.dtype == np.float32  # the gradient is cast back to the tensor's dtype
    with pytest.raises(TypeError, match="to: got two dtypes"):
        a.to("float32", "float64")
    with pytest.raises(TypeError, match="to: got two devices"):
        a.to("cpu", "cuda")


def test_size_survives_pickle_and_deepcopy():
    import copy
    import pickle

    s = mt.zeros(2, 3).size
    for again in (pickle.loads(pickle.dumps(s)), copy.deepcopy(s)):
        assert again == 6 and again() == (2, 3) and again(-1) == 3


def test_fit_trains_a_plain_sequential_on_float_arrays():
    from minitspeft import nn
    from minitspeft.train import fit, predict

    mt.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    x = np.random.default_rng(0).normal(size=(64, 4))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)
    fit(model, x, y, steps=60, batch_size=16, lr=3e-2, progress=False)
    assert (predict(model, x) == y).mean() > 0.8  # chance is about 0.4
