"""CPU kernels for the model, in numba: the fused GEGLU gate (with a vectorisable exp of its
own), the attention in one pass per sample and head (see its section below), and the sliced
attention's copies between token and head layouts.

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
GEGLU's rows and the attention's samples are split over a small thread pool; the head copies
are used on one thread only.
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
                return njit(**{**jit, **options})(f)
            except RuntimeError as e:
                jit["cache"] = False
                warnings.warn(f"{owner}: {e}; its kernels are compiled at each start instead (set "
                              "NUMBA_CACHE_DIR to a writable folder to keep them)", stacklevel=2)
        return njit(**{**jit, **options})(f)
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
            a = -_C * (g + _A * g * g * g)
            s = F32(1.0) / (F32(1.0) + fast_exp(a))
            s = F32(0.0) if a > EXP_HI else s      # fast_exp's clamp left 6e-39, which a huge up made huge
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
            a = -_C * (g + _A * g * g * g)
            e = fast_exp(a)
            s = F32(1.0) / (F32(1.0) + e)                       # 1 - s = e * s, without cancellation
            es2 = e * s * s
            s = F32(0.0) if a > EXP_HI else s                   # as in _geglu_forward
            es2 = F32(0.0) if a > EXP_HI else es2
            dgelu = s + g * es2 * _C * (F32(1.0) + F32(3.0) * _A * g * g)
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


def _over_rows(kernel, rows: int, *arrays, min_rows: int = _MIN_PARALLEL_ROWS) -> None:
    """kernel(*arrays, lo, hi) over all rows, split over torch's thread count when worth it (at
    least min_rows a part; parts run in a small pool, the first on the calling thread)."""
    parts = min(torch.get_num_threads(), rows // max(min_rows, 1))
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
        F = h.shape[-1] // 2           # (h is contiguous: geglu makes it so, on the graph)
        h2 = h.view(-1, 2 * F)
        y = h.new_empty(h.shape[:-1] + (F,))
        _over_rows(_geglu_forward, h2.shape[0], h2.numpy(), y.view(-1, F).numpy())
        ctx.save_for_backward(h)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (h,) = ctx.saved_tensors
        if torch.is_grad_enabled():     # create_graph=True: a gradient of this gradient, through torch's ops
            with torch.enable_grad():    # (numba's arrays carry none: "Can't call numpy() on Tensor that ...")
                F = h.shape[-1] // 2
                y = torch.nn.functional.gelu(h[..., :F], approximate="tanh") * h[..., F:]
                return torch.autograd.grad(y, h, dy, create_graph=True)[0]
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
    if h.dim() == 0 or h.shape[-1] % 2:     # [g | u] halves: an odd width was read as rows of another width
        raise ValueError(f"geglu takes [..., 2F] (gate and up side by side), got shape {tuple(h.shape)}")
    h = h.contiguous()                       # on the graph (see attention)
    return _GEGLU.apply(h)


# ---------------------------------------------------------------------------------------------------
# Attention in one pass per sample and head, for the browser's 12-wide heads.
#
# predlab.model's sliced kernel makes each product with MKL's batched GEMM, which runs [T, 12] x
# [12, T] products at ~35 GFLOP/s on one core, and copies q, k, v into head layout and the result
# back. Here each (sample, head) is done in one go, reading q, k, v straight from the fused
# projection [B, T, 3D] and writing y (and in backward d[q | k | v]) straight into token layout.
# The scores are held key-major, a row per key and the queries along it (padded to a multiple of
# 16), so every loop runs over queries and vectorises: a row is 12 multiply-adds per query with
# the key's 12 numbers in registers; the softmax over keys is an element-wise max and sum across
# rows; y^T and dq^T are four rows of weights at a time; dv and dk are 12 sums along a row.
# The 12 terms are written out: with a loop over the head width LLVM stores and reloads the row
# once per term, at half the speed. Other head widths take the sliced kernel.
# The weights are not kept for backward: it makes them again, which costs about what writing and
# reading them back cost (a sample's weights stay in cache, ~14 KB at 53 tokens), and keeps
# 27 MB less at batch 256 x 50 boids.
ATTENTION_HEAD = 12
_QUERY_PAD = 16                                    # queries: two 8-float vectors (LLVM's width here), one AVX-512
_ATTENTION_MIN_WORK = 1 << 16                      # samples x tokens^2 per pool part, at least
_SUMS = {"contract", "reassoc", "nsz"}             # backward: dv, dk are sums along a row, vectorised


@_njit()
def _pair_weights(x, bias, b, o, q, P, m, inv, scale):
    """The attention weights of sample b's head at column o, into P [T, Tp] (key j, query i: P[j, i]),
    from q^T in q [12, Tp]; m and inv [Tp] are the kernel's buffers. The forward calls it, and the
    backward again instead of keeping the weights: one function, compiled with the forward's flags
    (`contract` only; the backward's `reassoc` could reorder its sums), so both get the same bits."""
    T = x.shape[1]
    D = x.shape[2] // 3
    Tp = P.shape[1]
    for i in range(Tp):
        m[i] = F32(-3.0e38)
    for j in range(T):                      # scores, a key's row at a time, and their max
        row = P[j]
        kj = x[b, j, D + o:D + o + 12]
        k0, k1, k2, k3, k4, k5 = kj[0], kj[1], kj[2], kj[3], kj[4], kj[5]
        k6, k7, k8, k9, k10, k11 = kj[6], kj[7], kj[8], kj[9], kj[10], kj[11]
        bj = bias[b, j]
        for i in range(Tp):
            s = (k0 * q[0, i] + k1 * q[1, i] + k2 * q[2, i] + k3 * q[3, i] + k4 * q[4, i]
                 + k5 * q[5, i] + k6 * q[6, i] + k7 * q[7, i] + k8 * q[8, i] + k9 * q[9, i]
                 + k10 * q[10, i] + k11 * q[11, i])
            s = s * scale + bj
            row[i] = s
            m[i] = max(m[i], s)
    for i in range(Tp):
        inv[i] = F32(0.0)
    for j in range(T):
        row = P[j]
        for i in range(Tp):
            e = fast_exp(row[i] - m[i])     # a masked key: exactly 0
            row[i] = e
            inv[i] += e
    for i in range(Tp):
        inv[i] = F32(1.0) / inv[i]
    for j in range(T):
        row = P[j]
        for i in range(Tp):
            row[i] *= inv[i]


@_njit()
def _attention_forward(x, bias, y, H, scale, Tp, lo, hi):
    """y = softmax(q k^T scale + bias) v per head, samples lo..hi. x [B, T, 3D] (q | k | v, heads of
    12 contiguous in each), bias [B, T] (added to each key's scores), y [B, T, D] out; Tp: the
    queries padded to a multiple of 16. A sample's weights are made, used and dropped in a buffer."""
    T = x.shape[1]
    D = x.shape[2] // 3
    q = np.zeros((12, Tp), np.float32)             # q^T, queries past T stay 0
    yT = np.empty((12, Tp), np.float32)
    m = np.empty(Tp, np.float32)
    inv = np.empty(Tp, np.float32)
    scratch = np.empty((T, Tp), np.float32)
    for b in range(lo, hi):
        for h in range(H):
            o = h * 12
            for i in range(T):
                for c in range(12):
                    q[c, i] = x[b, i, o + c]
            _pair_weights(x, bias, b, o, q, scratch, m, inv, scale)
            P = scratch
            for c in range(12):                     # y^T[c] = sum over keys of v[j, c] w[j]
                yc = yT[c]
                for i in range(Tp):
                    yc[i] = F32(0.0)
                vo = 2 * D + o + c
                j = 0
                while j + 4 <= T:
                    v0, v1, v2, v3 = x[b, j, vo], x[b, j + 1, vo], x[b, j + 2, vo], x[b, j + 3, vo]
                    p0, p1, p2, p3 = P[j], P[j + 1], P[j + 2], P[j + 3]
                    for i in range(Tp):
                        yc[i] += v0 * p0[i] + v1 * p1[i] + v2 * p2[i] + v3 * p3[i]
                    j += 4
                while j < T:
                    v0 = x[b, j, vo]
                    p0 = P[j]
                    for i in range(Tp):
                        yc[i] += v0 * p0[i]
                    j += 1
            for i in range(T):
                for c in range(12):
                    y[b, i, o + c] = yT[c, i]


@_njit(fastmath=_SUMS)
def _attention_backward(x, bias, dy, dx, H, scale, Tp, lo, hi):
    """d[q | k | v] = dx [B, T, 3D] from dy [B, T, D] and x, bias as _attention_forward had them,
    samples lo..hi; each sample's weights are made again (_pair_weights), not kept from the forward."""
    T = x.shape[1]
    D = x.shape[2] // 3
    q = np.zeros((12, Tp), np.float32)             # q^T and dy^T, queries past T stay 0
    g = np.zeros((12, Tp), np.float32)
    dqT = np.empty((12, Tp), np.float32)
    dS = np.empty((T, Tp), np.float32)
    rs = np.empty(Tp, np.float32)
    P = np.empty((T, Tp), np.float32)
    m = np.empty(Tp, np.float32)
    inv = np.empty(Tp, np.float32)
    for b in range(lo, hi):
        for h in range(H):
            o = h * 12
            for i in range(T):
                for c in range(12):
                    q[c, i] = x[b, i, o + c]
                    g[c, i] = dy[b, i, o + c]
            _pair_weights(x, bias, b, o, q, P, m, inv, scale)
            for i in range(Tp):
                rs[i] = F32(0.0)
            for j in range(T):                      # dw = dy v^T by rows; dv; and sum_j w dw per query
                p = P[j]
                dp = dS[j]
                vj = x[b, j, 2 * D + o:2 * D + o + 12]
                v0, v1, v2, v3, v4, v5 = vj[0], vj[1], vj[2], vj[3], vj[4], vj[5]
                v6, v7, v8, v9, v10, v11 = vj[6], vj[7], vj[8], vj[9], vj[10], vj[11]
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = F32(0.0)
                for i in range(Tp):
                    pi = p[i]
                    g0, g1, g2, g3, g4, g5 = g[0, i], g[1, i], g[2, i], g[3, i], g[4, i], g[5, i]
                    g6, g7, g8, g9, g10, g11 = g[6, i], g[7, i], g[8, i], g[9, i], g[10, i], g[11, i]
                    d = (v0 * g0 + v1 * g1 + v2 * g2 + v3 * g3 + v4 * g4 + v5 * g5
                         + v6 * g6 + v7 * g7 + v8 * g8 + v9 * g9 + v10 * g10 + v11 * g11)
                    dp[i] = d
                    rs[i] += pi * d
                    a0 += pi * g0; a1 += pi * g1; a2 += pi * g2; a3 += pi * g3; a4 += pi * g4; a5 += pi * g5
                    a6 += pi * g6; a7 += pi * g7; a8 += pi * g8; a9 += pi * g9; a10 += pi * g10; a11 += pi * g11
                dv = dx[b, j, 2 * D + o:2 * D + o + 12]
                dv[0], dv[1], dv[2], dv[3], dv[4], dv[5] = a0, a1, a2, a3, a4, a5
                dv[6], dv[7], dv[8], dv[9], dv[10], dv[11] = a6, a7, a8, a9, a10, a11
            for j in range(T):                      # d scores = w (dw - sum_j w dw); dk
                p = P[j]
                ds = dS[j]
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = F32(0.0)
                for i in range(Tp):
                    s = p[i] * (ds[i] - rs[i])
                    ds[i] = s
                    a0 += s * q[0, i]; a1 += s * q[1, i]; a2 += s * q[2, i]; a3 += s * q[3, i]
                    a4 += s * q[4, i]; a5 += s * q[5, i]; a6 += s * q[6, i]; a7 += s * q[7, i]
                    a8 += s * q[8, i]; a9 += s * q[9, i]; a10 += s * q[10, i]; a11 += s * q[11, i]
                dk = dx[b, j, D + o:D + o + 12]
                dk[0], dk[1], dk[2], dk[3] = a0 * scale, a1 * scale, a2 * scale, a3 * scale
                dk[4], dk[5], dk[6], dk[7] = a4 * scale, a5 * scale, a6 * scale, a7 * scale
                dk[8], dk[9], dk[10], dk[11] = a8 * scale, a9 * scale, a10 * scale, a11 * scale
            # dq^T[c] = sum over keys of k[j, c] d scores[j]: the forward's y^T loop, written again because
            # compiled here (reassoc) it ran faster: forward + backward 8.1-8.4 ms at 128 x 53 on one thread,
            # 8.5-10.0 with one helper for both, inlined or called
            for c in range(12):
                dc = dqT[c]
                for i in range(Tp):
                    dc[i] = F32(0.0)
                ko = D + o + c
                j = 0
                while j + 4 <= T:
                    k0, k1, k2, k3 = x[b, j, ko], x[b, j + 1, ko], x[b, j + 2, ko], x[b, j + 3, ko]
                    s0, s1, s2, s3 = dS[j], dS[j + 1], dS[j + 2], dS[j + 3]
                    for i in range(Tp):
                        dc[i] += k0 * s0[i] + k1 * s1[i] + k2 * s2[i] + k3 * s3[i]
                    j += 4
                while j < T:
                    k0 = x[b, j, ko]
                    s0 = dS[j]
                    for i in range(Tp):
                        dc[i] += k0 * s0[i]
                    j += 1
            for i in range(T):
                for c in range(12):
                    dx[b, i, o + c] = dqT[c, i] * scale


def attention_supports(x: torch.Tensor, n_heads: int) -> bool:
    """Whether attention() runs for qkv x [B, T, 3D]: float32 on the CPU, heads 12 wide."""
    return supports(x) and x.dim() == 3 and x.shape[-1] == 3 * n_heads * ATTENTION_HEAD


def _forward(x: torch.Tensor, bias: torch.Tensor, n_heads: int):
    """y from qkv x and the key mask bias; returns y, the x and mask the kernel read, and its settings."""
    B, T, _ = x.shape
    x = x.contiguous()
    keys = bias.expand(B, 1, 1, T).reshape(B, T).to(torch.float32).contiguous()
    tp = -(-T // _QUERY_PAD) * _QUERY_PAD
    # (T = 0: no tokens, an empty y)
    scale, min_rows = F32(1.0 / math.sqrt(ATTENTION_HEAD)), max(1, _ATTENTION_MIN_WORK // max(1, T * T))
    y = x.new_empty(B, T, n_heads * ATTENTION_HEAD)
    _over_rows(_attention_forward, B, x.numpy(), keys.numpy(), y.numpy(), n_heads, scale, tp, min_rows=min_rows)
    return y, x, keys, (n_heads, scale, tp, min_rows)


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor, n_heads: int) -> torch.Tensor:
        y, x, keys, ctx.dims = _forward(x, bias, n_heads)
        ctx.save_for_backward(x, keys)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, keys = ctx.saved_tensors
        n_heads, scale, tp, min_rows = ctx.dims
        if torch.is_grad_enabled():     # create_graph=True: through torch's ops, as _GEGLU's backward
            from .model import attention
            with torch.enable_grad():
                y = attention(x, keys.view(x.shape[0], 1, 1, -1), n_heads, kernel="math")
                return torch.autograd.grad(y, x, dy, create_graph=True)[0], None, None
        dx = torch.empty_like(x)
        _over_rows(_attention_backward, x.shape[0], x.numpy(), keys.numpy(), dy.contiguous().numpy(), dx.numpy(),
                   n_heads, scale, tp, min_rows=min_rows)
        return dx, None, None


def attention(x: torch.Tensor, bias: torch.Tensor, n_heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(12) + bias) v per head: qkv x [B, T, 3D] (q | k | v, heads contiguous in
    each; float32 on the CPU, heads 12 wide: see attention_supports), bias [B, 1, 1, T] additive key
    mask -> y [B, T, D]. Each sample's weights are made, used and dropped in a buffer of the kernel's;
    a backward makes them again (the same bits), so only x and the mask are kept for it."""
    if not attention_supports(x, n_heads):
        raise ValueError(f"the fused attention runs on float32 CPU qkv [B, T, 3 * {ATTENTION_HEAD} * heads], "
                         f"got {x.dtype} {tuple(x.shape)} on {x.device} with {n_heads} heads")
    bias = bias.detach()      # the mask: attention() gives a bias that asks for its gradient to the math kernel
    if torch.is_grad_enabled() and x.requires_grad:
        # contiguous here, on the graph: the copy _forward makes has none, and a gradient of the gradient
        # (the backward's create_graph path) goes back through what the Function saved
        return _FusedAttention.apply(x.contiguous(), bias, n_heads)
    return _forward(x, bias, n_heads)[0]
