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

from .gpu_attention import launch_on

Tensor = torch.Tensor
BLOCK, WARPS = 1024, 4                    # elements of y per program, and warps: 8 elements a thread
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)   # a global that kernels may read


@triton.jit
def _load(GU, i, n, F: tl.constexpr):
    """For flat indices i of y [rows, F]: g and u (float32) from [g | u] [rows, 2F], the mask, and
    s = sigmoid(2 z) and es2 = exp(-2 z) s^2 of g, z = sqrt(2/pi) (g + 0.044715 g^3)."""
    mask = i < n
    src = (i // F) * (2 * F) + i % F
    g = tl.load(GU + src, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + src + F, mask=mask, other=0.0).to(tl.float32)
    t = -2.0 * SQRT_2_OVER_PI * (g + 0.044715 * g * g * g)
    e = tl.exp(tl.minimum(t, 88.0))                 # finite: e * s * s stays a number
    s = 1.0 / (1.0 + e)
    # past the clamp both are 0, as in predlab.fastops: s stayed 6e-39, which an up of 3e38 made -1.8e6
    far = t > 88.0
    return g, u, tl.where(far, 0.0, e * s * s), tl.where(far, 0.0, s), mask, src


@triton.jit
def _forward_kernel(GU, Y, n, F: tl.constexpr, BLOCK_: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK_ + tl.arange(0, BLOCK_)
    g, u, es2, s, mask, src = _load(GU, i, n, F)
    tl.store(Y + i, (g * s * u).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(GU, DY, DGU, n, F: tl.constexpr, BLOCK_: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK_ + tl.arange(0, BLOCK_)
    g, u, es2, s, mask, src = _load(GU, i, n, F)
    dy = tl.load(DY + i, mask=mask, other=0.0).to(tl.float32)
    dgelu = s + g * es2 * (2.0 * SQRT_2_OVER_PI) * (1.0 + 3.0 * 0.044715 * g * g)
    tl.store(DGU + src, (dy * u * dgelu).to(DGU.dtype.element_ty), mask=mask)
    tl.store(DGU + src + F, (dy * g * s).to(DGU.dtype.element_ty), mask=mask)


class TritonGEGLU(torch.autograd.Function):
    """[..., 2F] = [g | u] -> gelu_tanh(g) * u [..., F], in the input's dtype."""

    @staticmethod
    def forward(ctx, gu: Tensor) -> Tensor:
        gu = gu.contiguous()
        F = gu.shape[-1] // 2
        y = gu.new_empty(gu.shape[:-1] + (F,))
        n = y.numel()
        with launch_on(gu):
            _forward_kernel[(triton.cdiv(n, BLOCK),)](gu, y, n, F=F, BLOCK_=BLOCK, num_warps=WARPS,
                                                      enable_fp_fusion=True)
        ctx.save_for_backward(gu)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        (gu,) = ctx.saved_tensors
        F = gu.shape[-1] // 2
        if torch.is_grad_enabled():     # create_graph=True: through torch's ops, as predlab.fastops' _GEGLU
            with torch.enable_grad():
                y = torch.nn.functional.gelu(gu[..., :F], approximate="tanh") * gu[..., F:]
                return torch.autograd.grad(y, gu, dy, create_graph=True)[0]
        dgu = torch.empty_like(gu)
        n = dgu.numel() // 2
        with launch_on(gu):
            _backward_kernel[(triton.cdiv(n, BLOCK),)](gu, dy.contiguous(), dgu, n, F=F, BLOCK_=BLOCK,
                                                       num_warps=WARPS, enable_fp_fusion=True)
        return dgu


def geglu(gu: Tensor) -> Tensor:
    """gelu_tanh(gu[..., :F]) * gu[..., F:], fused (CUDA tensors, or any under TRITON_INTERPRET=1)."""
    if gu.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the triton GEGLU kernel runs on CUDA tensors, not {gu.device.type} ones "
                         "(or on any under TRITON_INTERPRET=1, set before Triton is imported)")
    if gu.shape[-1] % 2:
        raise ValueError(f"GEGLU needs [gate | up] of even width, got {gu.shape[-1]}")
    # contiguous here, on the graph: the copy forward would make has none, and a gradient of the gradient goes
    # back through what the Function saved
    return TritonGEGLU.apply(gu.contiguous())
