"""TransformerPredator: the browser's predator transformer (SPEC.md section 6), exactly.

Tokens [CLS] + [CTX] + predator + one per boid; pre-norm blocks with fused-QKV attention
and a GEGLU feed-forward; tanh(output . x_CLS). Batches are padded: mask [B, N] marks the
live boids, and padding keys get a score of -inf so that a batch gives the
same numbers as one sequence at a time.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig, as_config, attention_bytes, memory_problem

try:  # numba kernels for float32 CPU tensors (GEGLU, attention); without numba, torch's ops
    from . import fastops
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the model usable without it
    fastops = None

Tensor = torch.Tensor
TOKEN_TYPES = ("cls", "ctx", "predator", "boid")
# A padded key's score: its weight is exactly 0 whatever the real keys' scores (a row always has the
# three real tokens [CLS], [CTX] and the predator, so never NaN). A finite -1e9 lost to real scores
# below about -1e9, or a padded key's own score 1e9 above the real ones: the batch's answers then
# parted from the browser's, which has no padding (weights a few epochs of training never reach).
MASKED = float("-inf")

# torch's CPU softmax over a last dimension narrower than its vector (16 floats with AVX-512) runs
# a scalar path: 14-17 ns an element at 4-15 keys against ~1 ns at 16+, and its backward 5-6 ns
# against 0.2 (batch 256, one thread, Intel Xeon). A flock of 12 boids or fewer (a quarter of the
# default episodes' samples) has 15 tokens or fewer, so its scores get MASKED keys up to this
# width: the softmax of those keys is exactly 0, and the others' weights are within a few ulp.
SOFTMAX_MIN_KEYS = 16


def softmax_keys(w: Tensor) -> Tensor:
    """torch.softmax(w, -1), with a last dimension under SOFTMAX_MIN_KEYS on a CPU made that wide
    with MASKED keys first (the result is the view of the real keys; autograd goes through)."""
    T = w.shape[-1]
    if T >= SOFTMAX_MIN_KEYS or w.device.type != "cpu":
        return torch.softmax(w, -1)
    return torch.softmax(F.pad(w, (0, SOFTMAX_MIN_KEYS - T), value=MASKED), -1)[..., :T]


def softmax_keys_backward(dw: Tensor, w: Tensor) -> Tensor:
    """The gradient of the scores from dw and softmax_keys' output w, widened as it was."""
    T = w.shape[-1]
    if T >= SOFTMAX_MIN_KEYS or w.device.type != "cpu":
        return torch._softmax_backward_data(dw, w, -1, w.dtype)
    pad = (0, SOFTMAX_MIN_KEYS - T)        # the widened keys' weights are 0, so their gradient is too
    return torch._softmax_backward_data(F.pad(dw, pad), F.pad(w, pad), -1, w.dtype)[..., :T]


class _Attention(torch.autograd.Function):
    """Multi-head softmax(q k^T / sqrt(hs) + bias) v from fused projections, with its own backward.

    For float32 and 12-wide heads (the browser's model) predlab.fastops.attention is faster still
    and attention("auto") takes it; this kernel serves float64 and other head widths.
    The same maths as F.scaled_dot_product_attention. On a CPU, that kernel is slow for
    12-wide heads and ~50 tokens and barely uses a second thread; here the heads are split
    with one copy, the products whose result would be 12 wide are made transposed (T wide,
    which MKL runs ~25% faster), and the [B*H, T, T] weights are made and used a slice of
    about 0.5 MB at a time, so that the passes over them stay in cache: forward + backward of
    one layer at 128 x 53 tokens on one thread, as the trainer's split parts run it, takes 8-9 ms
    against SDPA's 10 (predlab.bench prints both). Those small slices suit one thread: on 2
    threads with a backward SDPA was faster (256 x 53: 12 against 24 ms), so attention("auto")
    takes SDPA there. With float32 on one thread the copies between token and head layouts are
    predlab.fastops' (4-8% faster a layer).

    x: qkv [B, T, 3D] (q | k | v, heads contiguous inside each); bias [B, 1, 1, T] additive
    key mask -> y [B, T, D]. Saves the per-head projections and the attention weights for
    backward; with keep False (no backward follows) each slice's weights are dropped once used.
    """

    # floats of weights per slice where a backward follows: its passes read them again from the cache
    BACKWARD_FLOATS = 1 << 17

    @staticmethod
    def _slices(n: int, T: int, on_cpu: bool = True, floats: int = BACKWARD_FLOATS):
        if not on_cpu:                                   # slices are for a CPU's caches
            return [slice(0, n)]
        step = max(16, floats // max(T * T, 1))
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    @staticmethod
    def no_backward_floats() -> int:
        """Floats of weights per slice where no backward follows (DAgger's student, validation,
        evaluation): the weights are made, used and dropped, and at 2 threads slices of 128k made
        each slice's small products wait on each other. 4M at 2 threads and 1M on one took a layer
        from 3.4 to 1.6 ms (batch 90) and 44.9 to 23.2 ms (1024) at 2 threads, on par on one
        (Intel Xeon with AVX-512, NOTES.md). Each weight is computed as before: the same bits."""
        return 1 << 20 if torch.get_num_threads() == 1 else 1 << 22

    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor, n_heads: int, floats: int = BACKWARD_FLOATS,
                keep: bool = True) -> Tensor:
        B, T, width = x.shape
        H, D = n_heads, width // 3
        hs, BH = D // H, B * n_heads
        # numba head copies on one thread (as in the trainer's split batches); torch's threaded ones else
        fast = fastops is not None and fastops.supports(x) and torch.get_num_threads() == 1
        if fast:
            heads = fastops.split_heads(x, 3, H)                              # (3, BH, T, hs)
        else:
            heads = x.reshape(B, T, 3, H, hs).permute(2, 0, 3, 1, 4).reshape(3, BH, T, hs)
        q, k, v = heads[0], heads[1], heads[2]
        scale = 1.0 / math.sqrt(hs)
        bias_bh = bias.expand(B, H, 1, T).reshape(BH, 1, T)
        yT = x.new_empty(BH, hs, T)           # products made transposed: 53 wide, not 12, run faster
        ws = []
        for s in _Attention._slices(BH, T, x.device.type == "cpu", floats):
            w = torch.baddbmm(bias_bh[s], q[s], k[s].transpose(1, 2), alpha=scale)
            w = softmax_keys(w)
            torch.bmm(v[s].transpose(1, 2), w.transpose(1, 2), out=yT[s])      # (w v)^T
            if keep:
                ws.append(w)                                                    # (slice, T, T)
            del w                     # else dropped here, not held with every other slice's to the end
        ctx.save_for_backward(heads, *ws)
        ctx.dims = (B, T, H, hs, scale, floats)
        return _merge(yT.view(1, B, H, hs, T), fast)

    @staticmethod
    def backward(ctx, dy: Tensor):
        if torch.is_grad_enabled():     # create_graph=True: its out= products and head copies carry no graph
            raise RuntimeError("the sliced attention kernel gives a first-order gradient only: for a gradient of "
                               "a gradient (create_graph=True), set predlab.model.CPU_ATTENTION = 'math' (or "
                               "PREDLAB_CPU_ATTENTION=math before predlab is imported)")
        heads, *ws = ctx.saved_tensors
        B, T, H, hs, scale, floats = ctx.dims
        BH = B * H
        q, k, v = heads[0], heads[1], heads[2]
        fast = fastops is not None and fastops.supports(dy) and torch.get_num_threads() == 1
        if fast:
            dyh = fastops.split_heads(dy, 1, H)[0]                              # (BH, T, hs)
        else:
            dyh = dy.reshape(B, T, H, hs).transpose(1, 2).reshape(BH, T, hs)
        d = heads.new_empty(3, BH, hs, T)                                       # gradients, transposed
        dqT, dkT, dvT = d[0], d[1], d[2]
        for s, w in zip(_Attention._slices(BH, T, dy.device.type == "cpu", floats), ws):
            torch.bmm(dyh[s].transpose(1, 2), w, out=dvT[s])                     # (w^T dy)^T
            dw = torch.bmm(dyh[s], v[s].transpose(1, 2))
            ds = softmax_keys_backward(dw, w)                                   # d scores / scale
            torch.bmm(k[s].transpose(1, 2), ds.transpose(1, 2), out=dqT[s])      # (ds k)^T
            torch.bmm(q[s].transpose(1, 2), ds, out=dkT[s])                      # (ds^T q)^T
        dqT.mul_(scale)
        dkT.mul_(scale)
        return _merge(d.view(3, B, H, hs, T), fast), None, None, None, None


def _merge(d: Tensor, fast: bool) -> Tensor:
    """Per-head results made transposed, d [parts, B, H, hs, T] -> [B, T, parts * H * hs]."""
    if fast:
        return fastops.merge_heads_t(d)
    P, B, H, hs, T = d.shape
    return d.permute(1, 4, 0, 2, 3).reshape(B, T, P * H * hs)


# Off the CPU, "auto" attention is plain tensor ops: on an H200 at batch 16384 that trained at
# 557k samples/s against 444k with F.scaled_dot_product_attention, whose memory-efficient
# kernel pads 12-wide heads to 32 and ~30 tokens to 64-row tiles (predlab.bench, NOTES.md).
# "triton" (predlab.gpu_attention: one fused kernel per sample and head) is there to be measured
# against it: `python -m predlab.bench` has a row for it where Triton is installed.
GPU_ATTENTION = os.environ.get("PREDLAB_GPU_ATTENTION") or "math"     # (set empty: unset, as shells mean it)
ATTENTION_KERNELS = ("auto", "fused", "sliced", "sdpa", "math", "triton")
GPU_ATTENTION_KERNELS = ("auto", "math", "sdpa", "sliced", "triton")     # "fused" is the CPU's (numba); auto: math
# On a CPU, "auto" below picks by dtype, head width and threads; PREDLAB_CPU_ATTENTION=sliced (or sdpa, math)
# takes another kernel where the bench (`python -m predlab.bench`, its attention line) finds it faster on a
# machine. "fused" where it does not run (float64, other head widths) falls back to the choice of "auto".
CPU_ATTENTION = os.environ.get("PREDLAB_CPU_ATTENTION") or "auto"
CPU_ATTENTION_KERNELS = ("auto", "fused", "sliced", "sdpa", "math")
# The fused kernel holds a sample's scores in registers: up to 64 tokens it fits without
# spilling (sm_90); at 128 its backward spills ~6.7 KB a thread and at 256 it needs more shared
# memory than a block has. Longer sequences (a world of 62+ boids) take the "math" kernel.
TRITON_ATTENTION_MAX_TOKENS = 64


def auto_attention_kernel(device_type: str, dtype: torch.dtype, head_width: int, backward: bool,
                          threads: Optional[int] = None) -> str:
    """The kernel attention(kernel="auto") runs for qkv on this device type, of this dtype and head
    width, with or without a backward to follow, on `threads` intra-op threads (None: the threads set
    now). The memory checks count by it too (keeps_square)."""
    if device_type != "cpu":
        # the GPU's switches, checked here as the CPU's below: the memory check at start-up asks, so a typo is
        # refused before any work (it ended the first training step in a traceback, after the data was made)
        problem = gpu_switch_problem()
        if problem:
            raise ValueError(problem)
        return "math" if GPU_ATTENTION == "auto" else GPU_ATTENTION
    fused_runs = fastops is not None and dtype == torch.float32 and head_width == fastops.ATTENTION_HEAD
    if CPU_ATTENTION != "auto":
        if CPU_ATTENTION not in CPU_ATTENTION_KERNELS:
            raise ValueError(f"PREDLAB_CPU_ATTENTION={CPU_ATTENTION!r}: use one of {', '.join(CPU_ATTENTION_KERNELS)}")
        if CPU_ATTENTION != "fused" or fused_runs:
            return CPU_ATTENTION
    if fused_runs:
        # forward + backward of a layer at 128 x 53 tokens on one thread (a split part's): 8-12 ms
        # against the sliced kernel's 11-18 and SDPA's 11-16; on par with SDPA on 2 threads (NOTES.md)
        return "fused"
    if (torch.get_num_threads() if threads is None else threads) > 1 and backward:
        # the sliced kernel's slices suit one thread, as the trainer's split parts run it; a forward +
        # backward on 2 threads ran 1.1-2x faster in SDPA (a training step unsplit, --cpu_split 1: 12-24%)
        return "sdpa"
    return "sliced"


def keeps_square(kernel: str, device_type: str) -> bool:
    """Whether this attention kernel holds every sample's [T, T] scores or weights at once. Not the fused
    kernel (one sample's weights per thread), nor torch's SDPA on a CPU, a flash kernel that works in
    blocks of keys: at 2,000 boids and batch 64 a training step on either took under 1.1 GB, where its
    weights would be 24 GiB. The sliced kernel keeps every slice's weights for its backward."""
    return not (kernel == "fused" or (kernel == "sdpa" and device_type == "cpu"))


def forward_attention_bytes(samples: int, n_heads: int, tokens: int, device_type: str, dtype: torch.dtype,
                            head_width: int, threads: Optional[int] = None) -> int:
    """Bytes, at most, that one layer's attention holds at once in a forward with no backward (predict),
    by the kernel attention("auto") takes on `threads` threads (None: the threads set now): the fused or
    flash kernel's buffers, or the sliced kernel's scores and weights of one slice, or (other kernels)
    every sample's."""
    size = torch.empty(0, dtype=dtype).element_size()
    threads = torch.get_num_threads() if threads is None else threads
    kernel = auto_attention_kernel(device_type, dtype, head_width, backward=False, threads=threads)
    if not keeps_square(kernel, device_type):
        return attention_bytes(samples, n_heads, tokens, fused=True, threads=threads, backward=False) * size // 4
    if kernel == "sliced" and device_type == "cpu":
        rows = min(samples * n_heads, max(16, _Attention.no_backward_floats() // tokens ** 2))   # its _slices
        return 2 * rows * tokens ** 2 * size
    return attention_bytes(samples, n_heads, tokens) * size // 4


def forward_bytes(samples: int, tokens: int, config: ModelConfig, device_type: str, dtype: torch.dtype,
                  threads: Optional[int] = None) -> int:
    """Bytes, at most, that a forward of `samples` samples of `tokens` tokens with no backward (predict,
    validation, a policy's) holds at once beside the model: a block's [B, T, .] terms, 12 D + 8 F a
    token, and one layer's attention (forward_attention_bytes)."""
    D, F, H = config.d_model, config.ffn_hidden, config.n_heads
    size = torch.empty(0, dtype=dtype).element_size()
    return (samples * tokens * (12 * D + 8 * F) * size
            + forward_attention_bytes(samples, H, tokens, device_type, dtype, D // H, threads))


def attention(x: Tensor, bias: Tensor, n_heads: int, kernel: str = "auto") -> Tensor:
    """Multi-head attention of every token: qkv [B, T, 3D] -> y [B, T, D] (the last block's
    [CLS]-only attention is Block.cls_attention).

    bias [B, 1, 1, T] is the additive key mask. kernel "fused" (predlab.fastops.attention: one numba
    pass per sample and head, for float32 CPU tensors and 12-wide heads, the browser's), "sliced"
    (_Attention, any CPU dtype and width), "sdpa" (F.scaled_dot_product_attention), "math"
    (softmax(q k^T / sqrt(hs) + bias) v in plain tensor ops), "triton" (predlab.gpu_attention's fused
    kernel: CUDA tensors, or CPU ones under TRITON_INTERPRET=1) or "auto" (on a CPU fused where it
    runs, else sliced, but sdpa where a backward follows on 2+ threads; or CPU_ATTENTION where the
    environment variable PREDLAB_CPU_ATTENTION sets one; GPU_ATTENTION elsewhere, which
    PREDLAB_GPU_ATTENTION sets). Same maths. The model's bias is a constant mask, which the fused, sliced and
    triton kernels give no gradient: a bias that asks for one takes the math kernel.
    """
    if kernel == "auto":
        width = 3 * n_heads
        kernel = auto_attention_kernel(x.device.type, x.dtype, x.shape[-1] // width if x.shape[-1] % width == 0 else 0,
                                       x.requires_grad and torch.is_grad_enabled())
    if kernel not in ATTENTION_KERNELS[1:]:
        raise ValueError(f"attention kernel {kernel!r}: use one of "
                         f"{', '.join(ATTENTION_KERNELS[1:])}")
    if bias.requires_grad and torch.is_grad_enabled() and kernel not in ("sdpa", "math"):
        kernel = "math"
    if kernel == "sliced" and x.device.type != "cpu" and torch.is_autocast_enabled(x.device.type):
        kernel = "math"   # the sliced kernel writes into buffers of the input's dtype: no mixed precision
    if kernel == "triton" and x.shape[1] > TRITON_ATTENTION_MAX_TOKENS:
        kernel = "math"
    if kernel == "fused":
        if fastops is None:
            raise ValueError("the fused attention kernel needs numba (pip install numba)")
        return fastops.attention(x, bias, n_heads)
    if kernel == "sliced":
        backward = x.requires_grad and torch.is_grad_enabled()
        return _Attention.apply(x, bias, n_heads,
                                _Attention.BACKWARD_FLOATS if backward else _Attention.no_backward_floats(), backward)
    if kernel == "triton":
        return _triton("gpu_attention", "attention", "PREDLAB_GPU_ATTENTION")(x, bias, n_heads)
    B, T, width = x.shape
    D = width // 3
    q, k, v = (t.view(B, T, n_heads, D // n_heads).transpose(1, 2) for t in x.split(D, dim=-1))
    if kernel == "math":
        # 3-D products: the scale and the key mask go into the first product's epilogue (baddbmm)
        # instead of two more passes over the [B*H, T, T] scores, forward and backward
        hs, BH = D // n_heads, B * n_heads
        w = torch.baddbmm(bias.expand(B, n_heads, 1, T).reshape(BH, 1, T), q.reshape(BH, T, hs),
                          k.reshape(BH, T, hs).transpose(1, 2), alpha=1.0 / math.sqrt(hs))
        y = torch.bmm(torch.softmax(w, -1), v.reshape(BH, T, hs)).view(B, n_heads, T, hs)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return y.transpose(1, 2).reshape(B, T, D)


def gpu_switch_problem() -> Optional[str]:
    """What is wrong with the PREDLAB_GPU_* variables (read at import), or None. They have no effect on a CPU."""
    for name, value, known in (("PREDLAB_GPU_ATTENTION", GPU_ATTENTION, GPU_ATTENTION_KERNELS),
                               ("PREDLAB_GPU_GEGLU", GPU_GEGLU, ("torch", "triton")),
                               ("PREDLAB_GPU_LAYER_NORM", GPU_LAYER_NORM, ("auto", "compiled", "torch"))):
        if value not in known:
            return f"{name}={value!r}: use one of {', '.join(known)}"
    return None


def _triton(module: str, what: str, switch: str):
    """predlab.<module>'s entry point, with an error that says what is missing where it cannot run."""
    import importlib
    try:
        mod = importlib.import_module(f".{module}", __package__)
    except ImportError as e:
        raise RuntimeError(f"the triton {what} kernel ({switch}=triton) needs Triton, which CUDA builds of "
                           f"torch install ({e})") from e
    return getattr(mod, what)


# GEGLU off the CPU: "torch" (gelu, then the product: the default) or "triton" (predlab.gpu_geglu:
# one kernel forward, one backward), to be measured against each other: `python -m predlab.bench`
# has a row for it where Triton is installed.
GPU_GEGLU = os.environ.get("PREDLAB_GPU_GEGLU") or "torch"


# LayerNorm of 48-wide rows: torch's CUDA kernel gives each row a block of its own (0.64 ms a
# call at batch 16384 on an H200); torch.compile's kernel takes many rows per block. "auto":
# compiled on a GPU when Triton and a C compiler are there, for training passes only (no
# recompiles for no_grad passes, which are not where the time goes). "torch": never.
GPU_LAYER_NORM = os.environ.get("PREDLAB_GPU_LAYER_NORM") or "auto"
_compiled_layer_norm = None


def _can_compile() -> bool:
    import shutil
    try:   # Triton that inductor can use on this GPU (sm_70 and newer), not only installed
        from torch.utils._triton import has_triton
        usable = has_triton()
    except Exception:  # noqa: BLE001 (a torch without this helper, or a broken Triton)
        usable = False
    return usable and bool(os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang"))


def layer_norm(mod: nn.LayerNorm, x: Tensor) -> Tensor:
    """mod(x): torch's kernel, or on a GPU the compiled one (see GPU_LAYER_NORM). Same maths."""
    global _compiled_layer_norm, GPU_LAYER_NORM
    if x.device.type != "cuda" or GPU_LAYER_NORM == "torch" or not torch.is_grad_enabled():
        return mod(x)
    if GPU_LAYER_NORM not in ("auto", "compiled"):
        raise ValueError(f"PREDLAB_GPU_LAYER_NORM={GPU_LAYER_NORM!r}: use auto, compiled or torch")
    if _compiled_layer_norm is None:
        if GPU_LAYER_NORM == "auto" and not _can_compile():
            GPU_LAYER_NORM = "torch"
            return mod(x)
        _compiled_layer_norm = torch.compile(
            lambda x, w, b, eps: F.layer_norm(x, (x.shape[-1],), w, b, eps), dynamic=True)
    # contiguous rows: the [CLS]-only block's strided x[:, :1] would be a variant of its own.
    # Inductor still specialises a few row-count ranges per autocast state, which passes
    # dynamo's default of 8 variants in a run that trains both ways: a higher limit here.
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    try:
        with torch._dynamo.config.patch(recompile_limit=64):
            y = _compiled_layer_norm(rows, mod.weight, mod.bias, mod.eps)
    except Exception as e:  # noqa: BLE001 (inductor's errors have many types)
        if GPU_LAYER_NORM == "compiled" or torch.cuda.is_current_stream_capturing():
            raise                      # asked for explicitly, or too late to fall back inside a capture
        import warnings
        warnings.warn(f"the compiled LayerNorm does not build here ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); using torch's (PREDLAB_GPU_LAYER_NORM=torch "
                      "skips the attempt)", stacklevel=2)
        GPU_LAYER_NORM = "torch"
        return mod(x)
    return y.view(x.shape)


_THREAD = threading.local()


@contextlib.contextmanager
def dropout_generator(generator: Union[torch.Generator, None]):
    """Within this block, this thread's Dropout masks come from `generator` (None: torch's
    default one, as outside the block). The CPU trainer's split halves, run in two threads at
    once, each draw from a generator of their own, so a run with dropout is reproducible
    whichever thread draws first."""
    old = getattr(_THREAD, "generator", None)
    _THREAD.generator = generator
    try:
        yield
    finally:
        _THREAD.generator = old


class Dropout(nn.Dropout):
    """nn.Dropout, drawing from the generator dropout_generator set for this thread, if any."""

    def forward(self, x: Tensor) -> Tensor:
        g = getattr(_THREAD, "generator", None)
        if g is None or not self.training or self.p == 0 or g.device != x.device:
            return super().forward(x)
        keep = 1.0 - self.p
        if keep <= 0:
            return x * 0.0
        # u < keep for u uniform in [0, 1): torch's bernoulli_ draws the same masks at half the speed
        mask = torch.rand(x.shape, generator=g, device=x.device).lt_(keep).div_(keep)
        return x * (mask if mask.dtype == x.dtype else mask.to(x.dtype))


class Block(nn.Module):
    """x = x + Attention(LN1(x)); x = x + GEGLU(LN2(x))."""

    def __init__(self, d: int, n_heads: int, ffn_hidden: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d, eps=1e-6)
        self.gate = nn.Linear(d, ffn_hidden)
        self.up = nn.Linear(d, ffn_hidden)
        self.down = nn.Linear(ffn_hidden, d)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor, need_weights: bool = False, cls_only: bool = False):
        """x [B, T, D], bias [B, 1, 1, T] additive key mask -> (x, weights [B, H, T, T] or None).

        cls_only: the [CLS] query alone (cls_attention: no key or value is made), then the output
        and feed-forward for token 0 only -> x [B, 1, D]. The last block needs nothing else (the
        head reads x_CLS): it saves a third of a forward's products at 50 boids.
        """
        B, T, D = x.shape
        H = self.n_heads
        h = layer_norm(self.ln1, x)
        w = None
        if need_weights:
            q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in self.qkv(h).split(D, dim=-1))  # (B, H, T, hs)
            scores = q @ k.transpose(-2, -1) / math.sqrt(D // H) + bias          # (B, H, T, T)
            w = scores.softmax(-1)
            y = (w @ v).transpose(1, 2).reshape(B, T, D)                         # (B, T, D)
        elif cls_only:
            y = self.cls_attention(h, bias)                                      # (B, 1, D)
            x = x[:, :1]
        else:
            qkv = self.qkv(h)                                                    # (B, T, 3D)
            y = attention(qkv, bias.to(qkv.dtype), H)                            # (B, T, D)
        x = x + self.drop(self.attn_out(y))
        x = x + self.drop(self.down(self.geglu(layer_norm(self.ln2, x))))
        return x, w

    def cls_weights(self, x: Tensor, bias: Tensor) -> Tensor:
        """The [CLS] query's attention weights over every token, x [B, T, D] (the block's input), bias
        [B, 1, 1, T] -> [B, H, T]: row 0 of forward(need_weights=True)'s weights, by the same maths,
        without the other T - 1 rows."""
        B, T, D = x.shape
        H = self.n_heads
        hs = D // H
        h = layer_norm(self.ln1, x)
        wq, wk, _ = self.qkv.weight.split(D)
        bq, bk, _ = self.qkv.bias.split(D)
        q = F.linear(h[:, :1], wq, bq).view(B, 1, H, hs).transpose(1, 2)        # (B, H, 1, hs)
        k = F.linear(h, wk, bk).view(B, T, H, hs).transpose(1, 2)               # (B, H, T, hs)
        scores = q @ k.transpose(-2, -1) / math.sqrt(hs) + bias                 # (B, H, 1, T)
        return scores.softmax(-1)[:, :, 0]

    def cls_attention(self, h: Tensor, bias: Tensor) -> Tensor:
        """The attention of the [CLS] query alone: h [B, T, D] (LN1's output), bias [B, 1, 1, T]
        -> y [B, 1, D], before attn_out.

        The maths of attention() on this block's projections, with the key and value projections
        folded into the query. Per head, q . (Wk h_t + bk) = (Wk^T q) . h_t + q . bk, where q . bk
        is the same for every key and the softmax ignores it (so the key bias gets a zero
        gradient, as in exact maths it does either way); and, as the weights sum to 1,
        sum_t w_t (Wv h_t + bv) = Wv (sum_t w_t h_t) + bv. So no key or value is made for any
        token: per sample 2 D^2 + 2 H T D multiply-adds besides the query's, instead of
        2 D^2 T + 2 T D (25k instead of 249k at 50 boids). Keys, values and their attention took
        7% of a training step on a CPU. Results agree with the unfolded form to float32 rounding.
        """
        B, T, D = h.shape
        H = self.n_heads
        hs = D // H
        wq, wk, wv = self.qkv.weight.split(D)                                    # each (D, D)
        bq, _, bv = self.qkv.bias.split(D)
        q = F.linear(h[:, 0], wq, bq).view(B, H, hs)
        qk = torch.bmm(q.transpose(0, 1), wk.view(H, hs, D)).transpose(0, 1)     # (B, H, D): Wk^T q per head
        scores = torch.baddbmm(bias.reshape(B, 1, T), qk, h.transpose(1, 2), alpha=1.0 / math.sqrt(hs))
        w = softmax_keys(scores)                                                 # (B, H, T)
        hbar = torch.bmm(w, h)                                                   # (B, H, D): sum_t w_t h_t
        y = torch.bmm(hbar.transpose(0, 1), wv.view(H, hs, D).transpose(1, 2))    # (H, B, hs)
        return (y.transpose(0, 1).reshape(B, D) + bv).view(B, 1, D)

    def geglu(self, h: Tensor) -> Tensor:
        """gelu_tanh(gate(h)) * up(h): one projection to [gate | up], then the fused CPU kernel
        (predlab.fastops) for float32 on a CPU, torch's ops elsewhere (or on a GPU the fused
        Triton kernel, see GPU_GEGLU)."""
        F_ = self.gate.out_features
        gu = F.linear(h, torch.cat([self.gate.weight, self.up.weight]), torch.cat([self.gate.bias, self.up.bias]))
        if fastops is not None and fastops.supports(gu):
            return fastops.geglu(gu)
        if GPU_GEGLU not in ("torch", "triton") and gu.device.type != "cpu":    # a GPU switch: none on a CPU
            raise ValueError(f"PREDLAB_GPU_GEGLU={GPU_GEGLU!r}: use torch or triton")
        if GPU_GEGLU == "triton" and gu.device.type != "cpu":
            return _triton("gpu_geglu", "geglu", "PREDLAB_GPU_GEGLU")(gu)
        g, u = gu.split(F_, dim=-1)
        return F.gelu(g, approximate="tanh") * u


def parameter_count(d_model: int, n_layers: int, ffn_hidden: int) -> int:
    """TransformerPredator's parameters for these sizes, without building it."""
    d, f = d_model, ffn_hidden
    return n_layers * (4 * d * d + 3 * d * f + 9 * d + 2 * f) + 17 * d + 2


def _check_batch(batch, p: Tensor) -> None:
    """InputError naming the key when batch is not a padded batch for a model with parameter p."""
    from .data import InputError, check_batch
    if not isinstance(batch, Mapping):
        raise InputError(f"the model takes a batch dict of tensors, not {type(batch).__name__}")
    check_batch(batch)
    if batch["mask"].dtype != torch.bool:
        raise InputError(f"batch['mask'] must be a bool tensor (True = boid), got {batch['mask'].dtype}")
    for k in ("context", "predator", "boids", "mask"):
        v = batch[k]
        if k != "mask" and v.dtype != p.dtype:
            raise InputError(f"batch[{k!r}] is {v.dtype}, the model's weights are {p.dtype}")
        if v.device != p.device:
            raise InputError(f"batch[{k!r}] is on {v.device}, the model is on {p.device}")


def check_has_weights(model: nn.Module) -> None:
    """ValueError when the model's weights are on the meta device (shapes without values): predict, the
    attention views, evaluation and export failed deep in torch ("Tensor.item() cannot be called on
    meta tensors", a torch.nonzero registration error) without saying that the model holds no weights."""
    p = next(iter(model.parameters()), None)
    if p is not None and p.device.type == "meta":
        raise ValueError("the model's weights are on the meta device: shapes without values. Give it weights "
                         "first: model.to_empty(device='cpu'), then load_state_dict or load_from_javascript")


def weights_memory_problem(cfg: ModelConfig) -> Optional[str]:
    """Why a model of cfg's sizes cannot fit in this machine's memory, or None."""
    count = parameter_count(cfg.d_model, cfg.n_layers, cfg.ffn_hidden)
    problem = memory_problem([(f"{count:,} float32 parameters (d_model={cfg.d_model}, n_layers={cfg.n_layers}, "
                               f"ffn_hidden={cfg.ffn_hidden})", 4 * count)], "the model's weights")
    return problem and problem + "; choose smaller sizes"


class TransformerPredator(nn.Module):
    """The predator policy. model(batch) -> actions [B, 2] in [-1, 1].

    batch: context [B, 2], predator [B, 2], boids [B, N, 4], mask [B, N] (bool, True = boid).
    The defaults are ModelConfig's, so TransformerPredator() is the model the CLI trains.
    """

    def __init__(self, d_model: int = ModelConfig.d_model, n_heads: int = ModelConfig.n_heads,
                 n_layers: int = ModelConfig.n_layers, ffn_hidden: int = ModelConfig.ffn_hidden,
                 dropout: float = ModelConfig.dropout):
        super().__init__()
        self.config = ModelConfig(d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                                  ffn_hidden=ffn_hidden, dropout=dropout)
        self.config.validate()
        problem = weights_memory_problem(self.config)
        if problem:
            raise ValueError(problem)
        d = d_model
        self.cls_embedding = nn.Parameter(torch.zeros(d))
        self.type_embeddings = nn.Parameter(torch.zeros(len(TOKEN_TYPES), d))   # cls, ctx, predator, boid
        self.ctx_projection = nn.Linear(2, d, bias=False)
        self.predator_projection = nn.Linear(4, d, bias=False)
        self.boid_projection = nn.Linear(4, d, bias=False)
        self.layers = nn.ModuleList(Block(d, n_heads, ffn_hidden, dropout) for _ in range(n_layers))
        self.output = nn.Linear(d, 2)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: Union[ModelConfig, Mapping, None]) -> "TransformerPredator":
        """Build from a ModelConfig or its dict (as stored in checkpoints); None gives ModelConfig's
        defaults. TypeError for anything else, ValueError for unknown fields or bad sizes."""
        cfg = as_config(ModelConfig, cfg, "cfg")
        return cls(cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.ffn_hidden, cfg.dropout)

    @classmethod
    def for_weights(cls, cfg: Union[ModelConfig, Mapping, None]) -> "TransformerPredator":
        """from_config for a model whose weights are then loaded: its initial weights are drawn apart from
        torch's global random numbers, so that loading one leaves a seeded run's stream where it was (a
        resume that loaded its folder's best model drew other dropout masks than the run it went on)."""
        with torch.random.fork_rng(devices=[]):
            return cls.from_config(cfg)

    def reset_parameters(self, generator: torch.Generator = None) -> None:
        """Small normal init (std 0.02), zero biases, unit LayerNorm scales; the residual projections (attn_out,
        down) scaled by 1 / sqrt(2 * layers)."""
        for name, p in self.named_parameters():
            if p.dim() >= 2 or name == "cls_embedding":
                with torch.no_grad():
                    p.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("ln1.weight") or name.endswith("ln2.weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)
        with torch.no_grad():
            for blk in self.layers:  # scale residual projections by depth (GPT-2 style)
                blk.attn_out.weight.mul_(1 / math.sqrt(2 * len(self.layers)))
                blk.down.weight.mul_(1 / math.sqrt(2 * len(self.layers)))

    # ------------------------------------------------------------------ forward
    def embed(self, batch: Mapping[str, Tensor]) -> Tuple[Tensor, Tensor]:
        """Token embeddings [B, 3 + N, D] and the additive key mask [B, 1, 1, 3 + N]."""
        ctx, pred, boids, mask = batch["context"], batch["predator"], batch["boids"], batch["mask"]
        B, N, _ = boids.shape
        te = self.type_embeddings
        cls_tok = (self.cls_embedding + te[0]).expand(B, 1, -1)                            # (B, 1, D)
        ctx_tok = (self.ctx_projection(ctx) + te[1]).unsqueeze(1)                          # (B, 1, D)
        pred_in = F.pad(pred, (0, 2))                                                      # [velX, velY, 0, 0]
        pred_tok = (self.predator_projection(pred_in) + te[2]).unsqueeze(1)                # (B, 1, D)
        boid_tok = self.boid_projection(boids) + te[3]                                     # (B, N, D)
        x = torch.cat([cls_tok, ctx_tok, pred_tok, boid_tok], 1)                           # (B, T, D)
        keep = torch.cat([mask.new_ones(B, 3, dtype=torch.bool), mask.bool()], 1)          # (B, T)
        bias = torch.zeros(B, 1, 1, 3 + N, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(~keep[:, None, None, :], MASKED)
        return x, bias

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Actions [B, 2] for a padded batch (fast attention path).

        A batch that is not one (a list, numpy arrays, float64, a missing key, another device) is named
        as forward_with_attention names it, once torch has failed on it: the checks cost nothing on a
        good batch. Values are not checked (NaN in, NaN out): predict and forward_with_attention check them.
        """
        try:
            x, bias = self.embed(batch)
        except (TypeError, KeyError, IndexError, AttributeError, RuntimeError, ValueError) as e:
            # ("mat1 and mat2 must have the same dtype", "'list' object has no attribute", and an unbatched
            # batch's "not enough values to unpack": InputError names the key, as a ValueError itself)
            failed = e
        else:
            failed = None
        if failed is not None:
            _check_batch(batch, next(self.parameters()))
            raise failed
        last = len(self.layers) - 1
        for i, blk in enumerate(self.layers):
            x, _ = blk(x, bias, cls_only=i == last)
        return torch.tanh(self.output(x[:, 0]))

    def forward_with_attention(self, batch: Mapping[str, Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """Actions [B, 2] and the attention weights of every layer, each [B, H, T, T].

        Token order: CLS, CTX, PRED, boid 0..N-1 (see token_labels); padded keys get weight 0.
        Raises InputError (a ValueError) naming the key for a batch that is not one: a missing
        key, a wrong shape, NaN or infinity, a mask that is not bool, another dtype or device
        than the model's. A batch of 0 samples gives [0, 2] actions and [0, H, T, T] weights.
        """
        _check_batch(batch, next(self.parameters()))
        x, bias = self.embed(batch)
        weights = []
        for blk in self.layers:
            x, w = blk(x, bias, need_weights=True)
            weights.append(w)
        return torch.tanh(self.output(x[:, 0])), weights

    def forward_with_cls_attention(self, batch: Mapping[str, Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """Actions [B, 2] and [CLS]'s attention weights in every layer, each [B, H, T]: row 0 of
        forward_with_attention's [B, H, T, T] (to float rounding), what the attention views draw.

        Only the [CLS] query's scores are made, and the blocks run their usual kernels: the memory is
        that of a forward, where forward_with_attention holds every layer's [B, H, T, T] (one frame
        of 10,000 boids took 6.7 GB, 512 frames of 1,000 boids more than 30 GB). Checks the batch as
        forward_with_attention does.
        """
        _check_batch(batch, next(self.parameters()))
        x, bias = self.embed(batch)
        weights = []
        last = len(self.layers) - 1
        for i, blk in enumerate(self.layers):
            weights.append(blk.cls_weights(x, bias))
            x, _ = blk(x, bias, cls_only=i == last)
        return torch.tanh(self.output(x[:, 0])), weights

    @staticmethod
    def token_labels(n_boids: int) -> List[str]:
        """Labels of the T = 3 + n_boids tokens, as attention viewers take them."""
        return ["CLS", "CTX", "PRED"] + [f"boid {i}" for i in range(n_boids)]

    # ------------------------------------------------------------------ conveniences
    @torch.no_grad()
    def predict(self, structured_inputs: Union[Mapping, Sequence[Mapping]]) -> Tensor:
        """Action for one browser-form dict -> [2], or for a list of dicts -> [B, 2] (eval mode)."""
        from .data import InputError, collate

        single = isinstance(structured_inputs, Mapping)
        if not single and (isinstance(structured_inputs, (str, bytes)) or not isinstance(structured_inputs, Iterable)):
            raise InputError(f"predict takes a structured-input dict or a list of them, not "
                             f"{type(structured_inputs).__name__}")
        check_has_weights(self)
        p = next(self.parameters())
        samples = [structured_inputs] if single else list(structured_inputs)     # any iterable of dicts
        if not samples:
            return torch.zeros(0, 2, dtype=p.dtype, device=p.device)
        batch = collate(samples, dtype=p.dtype)   # a float64 model keeps float64 inputs
        B, T = batch["mask"].shape[0], batch["mask"].shape[1] + 3
        need = forward_bytes(B, T, self.config, p.device.type, p.dtype)
        # on a GPU its own memory: the host's refused batches that fit there, or let through ones that did not
        gpu = p.device.type == "cuda"
        problem = memory_problem([(f"a forward over {T} tokens ({T - 3} boids) for {B} sample(s)", need)],
                                 f"{B} sample(s) of {T - 3} boids",
                                 torch.cuda.get_device_properties(p.device).total_memory if gpu else None,
                                 f"the {{}} of {torch.cuda.get_device_name(p.device)}" if gpu else "this machine's {}")
        if problem:
            raise InputError(problem + "; predict fewer boids at a time")
        outside = _warn_outside_page_range(batch)
        batch = {k: v.to(p.device) if k == "mask" else v.to(p.device, p.dtype) for k, v in batch.items()}
        was_training = self.training
        self.eval()
        try:
            out = self(batch)
        finally:
            self.train(was_training)
        bad = (~torch.isfinite(out).all(1)).nonzero().flatten().tolist()
        if bad:
            if not all(bool(torch.isfinite(q).all()) for q in self.parameters()):
                why = "the model's weights hold NaN or infinite values"
            elif outside:       # finite but huge inputs overflow inside (browser inputs are scaled to about [-1, 1])
                why = "their inputs are far outside the range the browser feeds it (scaled values of order 1)"
            else:               # the inputs are the page's: weights far beyond training's overflow a float32 forward
                why = (f"the model's {str(p.dtype).replace('torch.', '')} forward overflows on its weights (values "
                       f"far beyond what training makes)" + ("; the page computes in float64: model.double() runs "
                                                             "them as it does" if p.dtype != torch.float64 else ""))
            raise InputError(f"the action of sample(s) {bad[:5]} is NaN or infinite: {why}")
        return out[0] if single else out

    def export_to_javascript(self) -> Dict:
        """The browser's weight dict (SPEC.md section 7), plain Python lists of floats."""
        from .export import model_to_params
        return model_to_params(self)

    def load_from_javascript(self, params: Mapping) -> "TransformerPredator":
        """Load a browser weight dict (validated first; sizes must match this model)."""
        from .export import load_params_into
        load_params_into(self, params)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


_FIELDS = {"context": ("canvasWidth", "canvasHeight"), "predator": ("velX", "velY"),
           "boids": ("relX", "relY", "velX", "velY")}


def _warn_outside_page_range(batch: Mapping[str, Tensor]) -> bool:
    """A warning naming the first input the page does not give (SPEC.md section 4): a canvas size
    (W / 1000) outside [0, 65.536], a velocity outside [-1, 1] (/ 3.5, clamped), or an offset to a boid
    (wrap-aware, / 1000) more than half the canvas (which the page gives only in the frame after its
    window shrinks). Inputs in pixels gave actions without a word. True where it warned."""
    from .config import MAX_CANVAS, MAX_DISTANCE
    ctx = batch["context"].detach().double()
    problems = []
    bad = (ctx < 0) | (ctx > MAX_CANVAS / MAX_DISTANCE * (1 + 1e-6))      # 0: a minimised window's
    if bool(bad.any()):
        b, j = bad.nonzero()[0].tolist()
        problems.append((b, f"context.{_FIELDS['context'][j]} is {float(ctx[b, j]):g}, where the page gives the "
                            f"canvas size / {MAX_DISTANCE:g}, in [0, {MAX_CANVAS / MAX_DISTANCE:g}]"))
    pred = batch["predator"].detach().double()
    bad = pred.abs() > 1 + 1e-6
    if bool(bad.any()):
        b, j = bad.nonzero()[0].tolist()
        problems.append((b, f"predator.{_FIELDS['predator'][j]} is {float(pred[b, j]):g}, where the page gives "
                            "velocities / 3.5, clamped to [-1, 1]"))
    boids, live = batch["boids"].detach().double(), batch["mask"].to(batch["boids"].device)
    if boids.shape[1]:
        # half the canvas, and the wrap margins (10 px a boid, 20 the predator) to spare
        half = ctx[:, None, :] / 2 + 30 / MAX_DISTANCE
        far = torch.cat([boids[..., :2].abs() > half, boids[..., 2:].abs() > 1 + 1e-6], -1) & live[..., None]
        if bool(far.any()):
            b, i, j = far.nonzero()[0].tolist()
            why = (f"more than half the canvas ({_FIELDS['context'][j]} {float(ctx[b, j]):g}), where the page gives "
                   f"wrap-aware offsets / {MAX_DISTANCE:g}" if j < 2 else
                   "where the page gives velocities / 3.5, clamped to [-1, 1]")
            problems.append((b, f"boids[{i}].{_FIELDS['boids'][j]} is {float(boids[b, i, j]):g}, {why}"))
    if problems:
        b, what = min(problems, key=lambda x: x[0])
        warnings.warn(f"sample {b}'s {what}: inputs in pixels, or unscaled?", stacklevel=4)   # predict's caller
    return bool(problems)
