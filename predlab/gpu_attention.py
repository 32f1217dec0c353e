"""Multi-head attention for 12-wide heads and up to ~60 tokens as one Triton kernel, forward and backward.

The GPU's plain-op attention makes the [B*H, Tq, T] scores, scaled and masked scores, weights
and their gradients as separate tensors in memory. Here one program takes one (sample, head):
its q, k and v (at most 64 x 16 after padding) sit in registers, and only y and the softmax's
log-sum-exp per query go back to memory. The backward recomputes the weights from those.

attention(kernel="triton") in predlab.model uses it (PREDLAB_GPU_ATTENTION=triton). It needs
Triton and a CUDA tensor; with TRITON_INTERPRET=1 set before Triton is imported, it runs on
CPU tensors too (slowly: that is how the CPU tests check its maths).
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
import triton
import triton.language as tl

from .model import TRITON_ATTENTION_MAX_TOKENS

Tensor = torch.Tensor
MAX_TOKENS = TRITON_ATTENTION_MAX_TOKENS


@triton.jit
def _scores(Q, K, V, Bias, sqb, sqt, skb, skt, svb, svt, Tq, T, scale,
            H: tl.constexpr, HS: tl.constexpr, BQ: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """This program's (sample, head): q [BQ, BD], k and v [BT, BD] in float32 (zero padded), the
    scaled and masked scores [BQ, BT] (-inf past T), and the offsets and masks of its rows."""
    pid = tl.program_id(0)
    b = (pid // H).to(tl.int64)                        # 64-bit offsets: batches past ~2^31 / (T * 3D) elements
    h = pid % H
    iq = tl.arange(0, BQ)
    it = tl.arange(0, BT)
    d = tl.arange(0, BD)
    mqd = (iq < Tq)[:, None] & (d < HS)[None, :]
    mtd = (it < T)[:, None] & (d < HS)[None, :]
    q = tl.load(Q + b * sqb + iq[:, None] * sqt + h * HS + d[None, :], mask=mqd, other=0.0).to(tl.float32)
    k = tl.load(K + b * skb + it[:, None] * skt + h * HS + d[None, :], mask=mtd, other=0.0).to(tl.float32)
    v = tl.load(V + b * svb + it[:, None] * svt + h * HS + d[None, :], mask=mtd, other=0.0).to(tl.float32)
    bias = tl.load(Bias + b * T + it, mask=it < T, other=float("-inf"))        # key mask; -inf past T
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale + bias[None, :]
    return q, k, v, s, b, h, iq, it, d, mqd, mtd


@triton.jit
def _forward_kernel(Q, K, V, Bias, Y, Lse, sqb, sqt, skb, skt, svb, svt, Tq, T, scale,
                    H: tl.constexpr, HS: tl.constexpr, BQ: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    q, k, v, s, b, h, iq, it, d, mqd, mtd = _scores(Q, K, V, Bias, sqb, sqt, skb, skt, svb, svt, Tq, T, scale,
                                                    H, HS, BQ, BT, BD)
    m = tl.max(s, 1)
    p = tl.exp(s - m[:, None])
    den = tl.sum(p, 1)
    p = p / den[:, None]
    y = tl.dot(p, v, input_precision="ieee")
    D = H * HS
    tl.store(Y + b * Tq * D + iq[:, None] * D + h * HS + d[None, :], y.to(Y.dtype.element_ty), mask=mqd)
    tl.store(Lse + (b * H + h) * Tq + iq, m + tl.log(den), mask=iq < Tq)


@triton.jit
def _backward_kernel(Q, K, V, Bias, Lse, DY, DQ, DK, DV, sqb, sqt, skb, skt, svb, svt,
                     sdqb, sdqt, sdkb, sdkt, sdvb, sdvt, Tq, T, scale,
                     H: tl.constexpr, HS: tl.constexpr, BQ: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    q, k, v, s, b, h, iq, it, d, mqd, mtd = _scores(Q, K, V, Bias, sqb, sqt, skb, skt, svb, svt, Tq, T, scale,
                                                    H, HS, BQ, BT, BD)
    D = H * HS
    dy = tl.load(DY + b * Tq * D + iq[:, None] * D + h * HS + d[None, :], mask=mqd, other=0.0).to(tl.float32)
    lse = tl.load(Lse + (b * H + h) * Tq + iq, mask=iq < Tq, other=0.0)
    p = tl.exp(s - lse[:, None])                       # the forward's weights; rows past Tq meet dy = 0
    dv = tl.dot(tl.trans(p), dy, input_precision="ieee")
    dp = tl.dot(dy, tl.trans(v), input_precision="ieee")
    ds = p * (dp - tl.sum(p * dp, 1)[:, None])         # softmax backward: gradient of the scores
    dq = tl.dot(ds, k, input_precision="ieee") * scale
    dk = tl.dot(tl.trans(ds), q, input_precision="ieee") * scale
    tl.store(DQ + b * sdqb + iq[:, None] * sdqt + h * HS + d[None, :], dq.to(DQ.dtype.element_ty), mask=mqd)
    tl.store(DK + b * sdkb + it[:, None] * sdkt + h * HS + d[None, :], dk.to(DK.dtype.element_ty), mask=mtd)
    tl.store(DV + b * sdvb + it[:, None] * sdvt + h * HS + d[None, :], dv.to(DV.dtype.element_ty), mask=mtd)


def launch_on(t: Tensor):
    """The device context for a launch on t's GPU: Triton launches on the current device, which
    is cuda:0 unless set, whatever device the tensors are on (a model on cuda:1 in evaluate)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))          # tl.dot takes sides of 16 or more


def _warps(BQ: int, BT: int) -> int:
    """Warps per program for a [BQ, BT] score tile. Compiled for sm_90, the backward with fewer
    warps than this needs 189-255 registers a thread at 16 x 64, 32 x 32 and 64 x 64, and
    spills at 64 x 64 in bf16; with these, every variant fits in 34-123 registers without
    spills (tests/test_triton_compile.py)."""
    n = BQ * BT
    return 8 if n >= 4096 else 4 if n >= 512 else 2


def _split(x: Tensor, n_heads: int):
    D = x.shape[-1] // 3
    q, k, v = (x[..., i * D:(i + 1) * D] for i in range(3))
    return q, k, v, D, D // n_heads


class TritonAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(hs) + bias) v per head, as predlab.model.attention's "math" kernel.

    x: qkv [B, T, 3D]; bias [B, 1, 1, T] additive key mask -> y [B, T, D] in x's dtype (the
    products and the softmax run in float32). The kernels take queries apart from keys (Tq
    of them, strides of their own); every caller passes the T queries of qkv.
    """

    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor, n_heads: int) -> Tensor:
        x = x.contiguous()
        B, T, _ = x.shape
        q, k, v, D, hs = _split(x, n_heads)
        Tq = q.shape[1]
        bias = bias.reshape(B, T).float().contiguous()
        y = x.new_empty(B, Tq, D)
        lse = torch.empty(B, n_heads, Tq, device=x.device, dtype=torch.float32)
        BT, BQ = _block(T), _block(Tq)
        with launch_on(x):
            _forward_kernel[(B * n_heads,)](
                q, k, v, bias, y, lse, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                Tq, T, 1.0 / math.sqrt(hs), H=n_heads, HS=hs, BQ=BQ, BT=BT, BD=_block(hs),
                num_warps=_warps(BQ, BT), enable_fp_fusion=True)
        ctx.save_for_backward(x, bias, lse)
        ctx.n_heads = n_heads
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, bias, lse = ctx.saved_tensors
        n_heads = ctx.n_heads
        if torch.is_grad_enabled():     # create_graph=True: through torch's ops, as predlab.fastops' kernels do
            from .model import attention     # (the kernel's dx carries no graph: a second derivative lost its term)
            with torch.enable_grad():
                y = attention(x, bias.to(x.dtype).view(x.shape[0], 1, 1, -1), n_heads, kernel="math")
                return torch.autograd.grad(y, x, dy, create_graph=True)[0], None, None
        B, T, _ = x.shape
        q, k, v, D, hs = _split(x, n_heads)
        Tq = q.shape[1]
        dx = torch.empty_like(x)
        dq, dk, dv, _, _ = _split(dx, n_heads)
        BT, BQ = _block(T), _block(Tq)
        with launch_on(x):
            _backward_kernel[(B * n_heads,)](
                q, k, v, bias, lse, dy.contiguous(), dq, dk, dv,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                dq.stride(0), dq.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
                Tq, T, 1.0 / math.sqrt(hs), H=n_heads, HS=hs, BQ=BQ, BT=BT, BD=_block(hs),
                num_warps=_warps(BQ, BT), enable_fp_fusion=True)
        return dx, None, None


def attention(x: Tensor, bias: Tensor, n_heads: int) -> Tensor:
    """TritonAttention.apply, for predlab.model.attention's arguments (which falls back to its
    "math" kernel past MAX_TOKENS)."""
    if x.shape[1] > MAX_TOKENS:
        raise ValueError(f"the triton attention kernel takes at most {MAX_TOKENS} tokens ({MAX_TOKENS - 3} boids), "
                         f"got {x.shape[1]}: a sample's scores live in registers")
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the triton attention kernel runs on CUDA tensors, not {x.device.type} ones "
                         "(or on any under TRITON_INTERPRET=1, set before Triton is imported)")
    # contiguous here, on the graph: the copy forward would make has none, and a gradient of the gradient goes
    # back through what the Function saved
    return TritonAttention.apply(x.contiguous(), bias, n_heads)
