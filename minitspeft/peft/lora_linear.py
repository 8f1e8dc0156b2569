"""A LoRA layer's whole forward as one op: the base product and the update through one merged weight.

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
branches: no dropout in training, no DoRA, no gate.
"""

from __future__ import annotations

from ..extend import require_tensor
from ..tensor import Tensor


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
    for name, t in (("x", x), ("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B)):
        require_tensor("lora_linear", name, t)
    if bias is not None:
        require_tensor("lora_linear", "bias", bias)
    C_out, C_in = weight.shape if weight.ndim == 2 else (None, None)
    R = lora_A.shape[0] if lora_A.ndim == 2 else None
    if (C_out is None or x.ndim == 0 or x.shape[-1] != C_in or lora_A.shape != (R, C_in)
            or lora_B.shape != (C_out, R) or (bias is not None and bias.shape != (C_out,))):
        raise ValueError(f"lora_linear: shapes do not fit: x {x.shape}, weight {weight.shape} (out, in), "
                         f"lora_A {lora_A.shape} (r, in), lora_B {lora_B.shape} (out, r), "
                         f"bias {None if bias is None else bias.shape}")
    s = weight.dtype.type(scaling)
    merged = lora_B.data @ lora_A.data
    merged *= s
    merged += weight.data  # W0 + s B A
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
