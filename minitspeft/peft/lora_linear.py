"""A LoRA (or DoRA) layer's whole forward as one op: the base product and the update through one merged weight.

For an ungated LoRA layer, ``W0 x + bias + s B A x`` equals ``W' x + bias``
with ``W' = W0 + s B A``, so :func:`lora_linear` forms ``W'`` (``C_out x
C_in``, cheap) and makes one matrix product instead of the base product, two
skinny LoRA products, a scaling and a sum over ``(N, C_out)`` arrays. The
backward, derived here from ``y = x W'^T + bias``::

    dx    = g W'
    dW0   = g^T x                    (only if the base weight is trained)
    dbias = sum over tokens of g
    dB    = s g^T u      with u = x A^T   (N, r)
    dA    = s (g B)^T x

is one full product for ``dx`` and skinny ones for ``A`` and ``B``. The
values equal the separate products' up to float rounding (the tests check
outputs and gradients against :class:`~minitspeft.peft.lora.LoraLinear`'s
generic path). The layer uses it when nothing else acts between the two
branches: no dropout in training, no gate.

DoRA (Liu et al. 2024) is the same product scaled per output row:
``h = c * (W' x) + bias`` with ``c = m / ||W'||_row``, the norm held constant
in the backward pass as the paper recommends. :func:`dora_linear` computes it
with ``z = x W'^T`` and ``g_z = c g``: ``dx = g_z W'``, ``dm = sum over tokens
of g z / ||W'||_row``, and ``dA``, ``dB`` as above with ``g_z`` for ``g``.
"""

from __future__ import annotations

from .. import backend
from ..extend import require_tensor
from ..tensor import Tensor


def merged_weight(weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float):
    """``W0 + scaling * B @ A`` as a backend array ``(C_out, C_in)`` (peft's merged weight)."""
    merged = lora_B.data @ lora_A.data
    merged *= weight.dtype.type(scaling)
    merged += weight.data
    return merged


def row_norm(merged):
    """``||W'||`` of each row of a merged weight ``(C_out, C_in)`` (over the input dimension): ``(C_out,)``."""
    return backend.xp.sqrt((merged * merged).sum(axis=1))


def _check_shapes(op: str, x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor) -> None:
    for name, t in (("x", x), ("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B)):
        require_tensor(op, name, t)
    if bias is not None:
        require_tensor(op, "bias", bias)
    C_out, C_in = weight.shape if weight.ndim == 2 else (None, None)
    R = lora_A.shape[0] if lora_A.ndim == 2 else None
    if (C_out is None or x.ndim == 0 or x.shape[-1] != C_in or lora_A.shape != (R, C_in)
            or lora_B.shape != (C_out, R) or (bias is not None and bias.shape != (C_out,))):
        raise ValueError(f"{op}: shapes do not fit: x {x.shape}, weight {weight.shape} (out, in), "
                         f"lora_A {lora_A.shape} (r, in), lora_B {lora_B.shape} (out, r), "
                         f"bias {None if bias is None else bias.shape}")


def lora_linear(x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor,
                scaling: float) -> Tensor:
    """``x @ (W0 + scaling * B @ A).T + bias`` with the LoRA gradients of the separate branches.

    Args:
        x: ``(..., C_in)``; weight: the base ``W0`` ``(C_out, C_in)``; bias: ``(C_out,)`` or None;
            lora_A: ``(r, C_in)``; lora_B: ``(C_out, r)``; scaling: ``lora_alpha / r``.

    Returns:
        ``(..., C_out)``, the dtype of ``x``'s product with the weights.

    Raises:
        TypeError: if an input is not a Tensor.
        ValueError: naming the shapes when they do not fit together.

    Formulas: the module docstring (the LoRA update of Hu et al. 2021, merged as peft's ``merge`` does).
    """
    _check_shapes("lora_linear", x, weight, bias, lora_A, lora_B)
    return _merged_product(x, weight, bias, lora_A, lora_B, scaling, merged_weight(weight, lora_A, lora_B, scaling))


def _merged_product(x, weight, bias, lora_A, lora_B, scaling, merged) -> Tensor:
    """The op of :func:`lora_linear`, given the shapes checked and ``merged = W0 + s B A``."""
    C_out, C_in = weight.shape
    s = weight.dtype.type(scaling)
    x2 = x.data.reshape(-1, C_in)
    out = x2 @ merged.T
    if bias is not None:
        out += bias.data
    parents = (x, weight, lora_A, lora_B) + (() if bias is None else (bias,))

    def backward(g):
        g2 = g.reshape(-1, C_out)
        gx = (g2 @ merged).reshape(x.shape) if x.requires_grad else None
        gw = g2.T @ x2 if weight.requires_grad else None
        gA = ((g2 @ lora_B.data).T @ x2) * s if lora_A.requires_grad else None
        gB = (g2.T @ (x2 @ lora_A.data.T)) * s if lora_B.requires_grad else None
        grads = (gx, gw, gA, gB)
        return grads if bias is None else grads + ((g2.sum(axis=0) if bias.requires_grad else None),)

    return Tensor.from_op(out.reshape(x.shape[:-1] + (C_out,)), parents, backward, "lora_linear")


def dora_linear(x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor,
                magnitude: Tensor, scaling: float) -> Tensor:
    """DoRA's ``m / ||W'||_row * (x @ W'.T) + bias`` with ``W' = W0 + scaling * B @ A``, as one op.

    Args:
        x, weight, bias, lora_A, lora_B, scaling: as in :func:`lora_linear`;
            magnitude: DoRA's ``m`` ``(C_out,)``.

    Returns:
        ``(..., C_out)``.

    Raises:
        TypeError: if an input is not a Tensor; ValueError: naming the shapes when they do not fit.

    Formulas: the module docstring (DoRA, Liu et al. 2024, section 4.3 for the constant norm; the
    backward derived here).
    """
    _check_shapes("dora_linear", x, weight, bias, lora_A, lora_B)
    require_tensor("dora_linear", "magnitude", magnitude)
    if magnitude.shape != weight.shape[:1]:
        raise ValueError(f"dora_linear: magnitude shape {magnitude.shape} does not match weight {weight.shape}")
    merged = merged_weight(weight, lora_A, lora_B, scaling)  # formed once: the product and the norm share it
    z = _merged_product(x, weight, None, lora_A, lora_B, scaling, merged)  # x W'^T, with its own backward
    norm = row_norm(merged)  # ||W'||_row, a constant here
    c = magnitude.data / norm
    out = z.data * c
    if bias is not None:
        out += bias.data
    parents = (z, magnitude) + (() if bias is None else (bias,))

    def backward(g):
        gz = g * c if z.requires_grad else None
        gm = (g * z.data).reshape(-1, g.shape[-1]).sum(axis=0) / norm if magnitude.requires_grad else None
        grads = (gz, gm)
        return grads if bias is None else grads + ((g.reshape(-1, g.shape[-1]).sum(axis=0)
                                                    if bias.requires_grad else None),)

    return Tensor.from_op(out, parents, backward, "dora_linear")
