"""The GEGLU gate, gelu_tanh(g) * u, as one Triton kernel forward and one backward.

On a GPU, torch's ops make it in two kernels (gelu, product) and its backward in four (two
products, gelu's backward, and the concatenation of the gate's and the input's gradients),
each a full pass over [tokens, 96] or [tokens, 192] tensors, and keep gelu(g) for backward.
Here the forward reads [g | u] once and writes y; the backward reads [g | u] and dy once and
writes [dg | du]. The maths is predlab.fastops' CPU kernel's: 0.5 (1 + tanh(z)) as
sigmoid(2 z), z = sqrt(2/pi) (g + 0.044715 g^3), in float32 whatever the input dtype.

Block.geglu in predlab.model uses it with PREDLAB_GPU_GEGLU=triton. It needs Triton and a
CUDA tensor; with TRITON_INTERPRET=1 set before Triton is imported, it runs on CPU tensors too
(slowly: that is how the CPU tests check its maths).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor
ROWS = 32                                 # rows per program


@triton.jit
def _load(GU, r, c, F, N):
    """Rows r of [g | u] (float32), their mask, and e = exp(-2 z) and s = sigmoid(2 z) of g,
    z = sqrt(2/pi) (g + 0.044715 g^3); sqrt(2/pi) = 0.7978845608028654."""
    mask = (r < N)[:, None] & (c < F)[None, :]
    base = r.to(tl.int64)[:, None] * (2 * F) + c[None, :]
    g = tl.load(GU + base, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + base + F, mask=mask, other=0.0).to(tl.float32)
    t = -2.0 * 0.7978845608028654 * (g + 0.044715 * g * g * g)
    e = tl.exp(tl.minimum(t, 88.0))                 # finite: e * s * s below stays a number
    s = 1.0 / (1.0 + e)
    return g, u, e, s, mask


@triton.jit
def _forward_kernel(GU, Y, N, F, BF: tl.constexpr, ROWS_: tl.constexpr):
    r = tl.program_id(0) * ROWS_ + tl.arange(0, ROWS_)
    c = tl.arange(0, BF)
    g, u, e, s, mask = _load(GU, r, c, F, N)
    y = g * s * u
    tl.store(Y + r.to(tl.int64)[:, None] * F + c[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(GU, DY, DGU, N, F, BF: tl.constexpr, ROWS_: tl.constexpr):
    r = tl.program_id(0) * ROWS_ + tl.arange(0, ROWS_)
    c = tl.arange(0, BF)
    g, u, e, s, mask = _load(GU, r, c, F, N)
    dy = tl.load(DY + r.to(tl.int64)[:, None] * F + c[None, :], mask=mask, other=0.0).to(tl.float32)
    dgelu = s + g * (e * s * s) * (2.0 * 0.7978845608028654) * (1.0 + 3.0 * 0.044715 * g * g)
    base = r.to(tl.int64)[:, None] * (2 * F) + c[None, :]
    tl.store(DGU + base, (dy * u * dgelu).to(DGU.dtype.element_ty), mask=mask)
    tl.store(DGU + base + F, (dy * g * s).to(DGU.dtype.element_ty), mask=mask)


class TritonGEGLU(torch.autograd.Function):
    """[..., 2F] = [g | u] -> gelu_tanh(g) * u [..., F], in the input's dtype."""

    @staticmethod
    def forward(ctx, gu: Tensor) -> Tensor:
        gu = gu.contiguous()
        F = gu.shape[-1] // 2
        N = gu.numel() // (2 * F)
        y = gu.new_empty(gu.shape[:-1] + (F,))
        _forward_kernel[(triton.cdiv(N, ROWS),)](gu, y, N, F, BF=triton.next_power_of_2(F), ROWS_=ROWS)
        ctx.save_for_backward(gu)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        (gu,) = ctx.saved_tensors
        F = gu.shape[-1] // 2
        N = gu.numel() // (2 * F)
        dgu = torch.empty_like(gu)
        _backward_kernel[(triton.cdiv(N, ROWS),)](gu, dy.contiguous(), dgu, N, F, BF=triton.next_power_of_2(F),
                                                  ROWS_=ROWS)
        return dgu


def geglu(gu: Tensor) -> Tensor:
    """gelu_tanh(gu[..., :F]) * gu[..., F:], fused (CUDA tensors, or any under TRITON_INTERPRET=1)."""
    if gu.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the triton GEGLU kernel runs on CUDA tensors, not {gu.device.type} ones "
                         "(or on any under TRITON_INTERPRET=1, set before Triton is imported)")
    if gu.shape[-1] % 2:
        raise ValueError(f"GEGLU needs [gate | up] of even width, got {gu.shape[-1]}")
    return TritonGEGLU.apply(gu)
