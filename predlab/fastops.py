"""CPU kernels for the model, in numba: the fused GEGLU gate (with a vectorisable exp of its
own) and the attention's copies between token and head layouts.

gelu(g) * u with gelu the tanh approximation of SPEC.md section 6, forward and backward, each
as one pass over the [rows, 2F] output of the merged gate|up projection. torch spends five
passes on it (gelu, product, and in backward two products and gelu_backward) and its tanh
costs about 3 ns per element on a 2-core laptop-class CPU; here one pass computes
0.5 x (1 + tanh(z)) as x * sigmoid(2 z) with an exp of its own that LLVM vectorises (Cody-Waite
range reduction, a degree-7 polynomial, the exponent set in the bits: within 2 float32 ulp of
exp). The results match torch's to float32 rounding (tests hold them to float64 maths as
closely as torch's own ops get).

The kernels take float32 numpy views of CPU tensors and release the GIL, so the trainer's
batch halves run them side by side. With more than one torch thread and enough rows, the
GEGLU's rows are split over a small thread pool; the head copies are used on one thread only.
"""
from __future__ import annotations

import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

F32 = np.float32
# contract: multiply-adds become FMAs (no reassociation: results stay as the source orders them).
_JIT = dict(cache=True, error_model="numpy", nogil=True, fastmath={"contract"})
EXP_LO, EXP_HI = F32(-87.0), F32(88.0)   # below EXP_LO, exp is 0 (float32 denormal range); above, clamped
_C = F32(2.0 * math.sqrt(2.0 / math.pi))  # sigmoid(2 z) = 0.5 (1 + tanh(z)), z = sqrt(2/pi) (x + 0.044715 x^3)
_A = F32(0.044715)
_MIN_PARALLEL_ROWS = 2048                 # GEGLU rows per thread, at least (a hand-off costs more below)


def cached_njit(owner: str, jit: dict, **options):
    """numba's njit with the options jit (a module's dict) and options. Where numba finds no folder to
    write its cache in (a read-only install and no writable home), cache=True fails the import with
    "cannot cache function": jit["cache"] is then turned off, so that owner's kernels are compiled at
    each start instead, with one warning."""
    def make(f):
        if jit["cache"]:
            try:
                return njit(**jit, **options)(f)
            except RuntimeError as e:
                jit["cache"] = False
                warnings.warn(f"{owner}: {e}; its kernels are compiled at each start instead (set "
                              "NUMBA_CACHE_DIR to a writable folder to keep them)", stacklevel=2)
        return njit(**jit, **options)(f)
    return make


def _njit(**options):
    return cached_njit("predlab.fastops", _JIT, **options)


@intrinsic
def _int_bits_as_float(typingctx, x):
    """The float32 whose bits are the low 32 bits of integer x (a register reinterpretation)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width != 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(x), codegen


@_njit(inline="always")
def fast_exp(x):
    """exp(x) for float32 x, vectorisable: 0 below -87, NaN stays NaN, clamped at exp(88)."""
    t = EXP_LO if x < EXP_LO else x
    t = EXP_HI if t > EXP_HI else t
    n = (t * F32(1.4426950408889634) + F32(12582912.0)) - F32(12582912.0)   # round(t / ln 2)
    r = (t - n * F32(0.693359375)) - n * F32(-2.12194440e-4)               # t - n ln 2, |r| <= 0.35
    p = F32(1.0 / 5040.0)
    p = p * r + F32(1.0 / 720.0)
    p = p * r + F32(1.0 / 120.0)
    p = p * r + F32(1.0 / 24.0)
    p = p * r + F32(1.0 / 6.0)
    p = p * r + F32(0.5)
    p = p * r + F32(1.0)
    p = p * r + F32(1.0)
    k = np.int32(n if n == n else F32(0.0))       # NaN: a defined integer here, p carries the NaN
    e = p * _int_bits_as_float((k + np.int32(127)) << np.int32(23))                  # p * 2^n
    return F32(0.0) if x < EXP_LO else e


@_njit()
def exp_into(x, out):
    """out[i] = fast_exp(x[i]) over 1-D float32 arrays (for tests and the benchmark)."""
    for i in range(x.shape[0]):
        out[i] = fast_exp(x[i])


@_njit()
def _geglu_forward(h, y, lo, hi):
    """y[i, j] = gelu(h[i, j]) * h[i, F + j] for rows lo..hi; h [M, 2F], y [M, F]."""
    F = y.shape[1]
    for i in range(lo, hi):
        for j in range(F):
            g = h[i, j]
            s = F32(1.0) / (F32(1.0) + fast_exp(-_C * (g + _A * g * g * g)))
            y[i, j] = g * s * h[i, F + j]


@_njit()
def _geglu_backward(h, dy, dh, lo, hi):
    """dh = d(sum dy * gelu(g) * u)/d[g | u] for rows lo..hi; h, dh [M, 2F], dy [M, F]."""
    F = dy.shape[1]
    for i in range(lo, hi):
        for j in range(F):
            g = h[i, j]
            u = h[i, F + j]
            d = dy[i, j]
            e = fast_exp(-_C * (g + _A * g * g * g))
            s = F32(1.0) / (F32(1.0) + e)                       # 1 - s = e * s, without cancellation
            dgelu = s + g * (e * s * s) * _C * (F32(1.0) + F32(3.0) * _A * g * g)
            dh[i, j] = d * u * dgelu
            dh[i, F + j] = d * g * s


_POOL: Optional[ThreadPoolExecutor] = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            _POOL = ThreadPoolExecutor(workers, thread_name_prefix="predlab-fastops")
        return _POOL


def _over_rows(kernel, rows: int, *arrays) -> None:
    """kernel(*arrays, lo, hi) over all rows, split over torch's thread count when worth it
    (parts run in a small pool, the first on the calling thread)."""
    parts = min(torch.get_num_threads(), rows // _MIN_PARALLEL_ROWS)
    if parts <= 1:
        kernel(*arrays, 0, rows)
        return
    bounds = [rows * i // parts for i in range(parts + 1)]
    pool = _pool(parts - 1)
    futures = [pool.submit(kernel, *arrays, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    kernel(*arrays, bounds[0], bounds[1])                 # the first part on this thread
    for f in futures:
        f.result()


@_njit()
def _copy_by_sample(src, dst):
    """dst[...] = src for two [B, T, parts, H, hs] views (either may be strided), a sample at a time."""
    B, T, P, H, C = src.shape
    for b in range(B):
        for t in range(T):
            for p in range(P):
                for h in range(H):
                    for c in range(C):
                        dst[b, t, p, h, c] = src[b, t, p, h, c]


# The attention's head copies, on one thread (the trainer's split batches; with more threads,
# torch's threaded copies are faster). Each goes a sample at a time, so that both sides of
# the sample's [T, parts * H * hs] block stay in cache.
def split_heads(x: torch.Tensor, parts: int, n_heads: int) -> torch.Tensor:
    """x [B, T, parts * H * hs] (parts side by side, heads contiguous in each) -> [parts, B * H, T, hs].

    The copy torch makes for x.view(B, T, parts, H, hs).permute(2, 0, 3, 1, 4).
    """
    B, T, W = x.shape
    hs = W // (parts * n_heads)
    out = x.new_empty(parts, B * n_heads, T, hs)
    _copy_by_sample(x.contiguous().view(B, T, parts, n_heads, hs).numpy(),
                    out.view(parts, B, n_heads, T, hs).numpy().transpose(1, 3, 0, 2, 4))
    return out


def merge_heads_t(d: torch.Tensor) -> torch.Tensor:
    """d [parts, B, H, hs, T] (per-head results made transposed) -> [B, T, parts * H * hs].

    The copy torch makes for d.permute(1, 4, 0, 2, 3). Torch's gathers with stride T: on data
    just written it took 2.1 ms of one layer's backward at batch 128 x 53 tokens, and in a
    cold-cache test 6 ms against 0.6-0.8 ms here.
    """
    P, B, H, hs, T = d.shape
    out = d.new_empty(B, T, P * H * hs)
    _copy_by_sample(d.contiguous().numpy().transpose(1, 4, 0, 2, 3), out.view(B, T, P, H, hs).numpy())
    return out


def supports(h: torch.Tensor) -> bool:
    """Whether the fused kernel runs for this tensor (float32 on the CPU); else use torch's ops."""
    return h.device.type == "cpu" and h.dtype == torch.float32


class _GEGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        h = h.contiguous()
        F = h.shape[-1] // 2
        h2 = h.view(-1, 2 * F)
        y = h.new_empty(h.shape[:-1] + (F,))
        _over_rows(_geglu_forward, h2.shape[0], h2.numpy(), y.view(-1, F).numpy())
        ctx.save_for_backward(h)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (h,) = ctx.saved_tensors
        F = h.shape[-1] // 2
        h2 = h.view(-1, 2 * F)
        dh = torch.empty_like(h)
        _over_rows(_geglu_backward, h2.shape[0], h2.numpy(), dy.contiguous().view(-1, F).numpy(),
                   dh.view(-1, 2 * F).numpy())
        return dh


def geglu(h: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(h[..., :F]) * h[..., F:] for float32 CPU h [..., 2F], fused (see supports())."""
    if not supports(h):
        raise ValueError(f"the fused GEGLU runs on float32 CPU tensors, got {h.dtype} on {h.device}")
    return _GEGLU.apply(h)
