"""Performance benchmark: data generation, training throughput, memory and matmul peak, in one run.

`python -m predlab.bench [--json OUT] [--quick] [--threads 2] [--gpu-only]` prints a table of samples/s with
ratios against a naive per-sample baseline measured in the same run (browser-form dicts, one
sample at a time: the seed's design) and against the seed's quoted figures. Timings are wall
clock, best of a few repeats, so other load on the machine shows up as lower numbers. Where
CUDA exists, the GPU figures follow (run_gpu); --gpu-only measures those alone.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import time
from typing import Dict, Optional

try:
    import resource
except ImportError:       # Windows: no getrusage
    resource = None

import torch
import torch.nn.functional as F

from .config import (FlagParser, ModelConfig, TrainConfig, WorldConfig, _training_work, bounded_number,
                     memory_problem, sample_bytes, step_bytes_training, strict_json)
from .data import EpisodeGenerator, SampleSet, collate, rollout_chunk, to_dicts, CHUNK_EPISODES
from .evaluate import ModelPolicy
from .export import silence_stderr
from . import model as model_module
from .model import TransformerPredator
from .sim import World
from .teacher import TeacherPolicy

# The seed project's figures (2-core CPU): what its design measured, and what it advertised.
SEED_MEASURED = {"train_cpu": 470.0, "generate_cpu": 510.0}
SEED_ADVERTISED = {"train_cpu": 500.0, "train_gpu": 5000.0}
TARGETS = {"train_default": 4700.0, "train_50": 3500.0, "generate": 100_000.0, "train_gpu": 1_000_000.0}


# ---------------------------------------------------------------------- FLOPs and the machine's peak
def forward_flops(cfg: ModelConfig, n_boids: int, cls_only_last: bool = False) -> int:
    """2 x multiply-adds of one forward pass for one sample with n_boids boids (T = 3 + n_boids).

    Counts the matmuls (projections, QKV, scores, weighted values, output, GEGLU, head), which
    dominate; LayerNorm, softmax and activations are a few percent and left out. With
    cls_only_last, the last block as TransformerPredator.forward runs it: the [CLS] query only,
    with the key and value projections folded into it (Block.cls_attention).
    """
    d, f, L, T, H = cfg.d_model, cfg.ffn_hidden, cfg.n_layers, 3 + n_boids, cfg.n_heads
    embed = 2 * d * (2 + 4 + 4 * n_boids)                    # ctx, predator, boids (no bias)
    per_token = 2 * (3 * d * d + d * d + 2 * d * f + f * d)  # qkv, attn_out, gate + up, down
    attention = 2 * 2 * T * T * d                            # q k^T and w v over all heads
    full_block = T * per_token + attention
    last = full_block
    if cls_only_last:
        # q, Wk^T q, Wv hbar and attn_out; scores and hbar = sum_t w_t h_t; the feed-forward
        last = 2 * (4 * d * d + 2 * H * T * d + 2 * d * f + f * d)
    return embed + (L - 1) * full_block + last + 2 * d * 2


def train_flops(cfg: ModelConfig, n_boids: float, cls_only_last: bool = False) -> float:
    """Forward + backward (about 3x forward) for one sample; n_boids may be a mean (interpolated)."""
    lo = int(math.floor(n_boids))
    frac = n_boids - lo
    return 3.0 * ((1 - frac) * forward_flops(cfg, lo, cls_only_last) + frac * forward_flops(cfg, lo + 1, cls_only_last))


def mean_train_flops(cfg: ModelConfig, data: SampleSet, cls_only_last: bool = False) -> float:
    """train_flops averaged over data's samples, each at its own flock size: attention grows with the square
    of the tokens, so the FLOPs at the mean flock size fell 3% short on the default episodes. (Padding to a
    batch's widest sample is work done but not useful, and not counted.)"""
    counts = torch.bincount(data.n.long().cpu())
    have = counts.nonzero().flatten().tolist()
    return sum(int(counts[n]) * train_flops(cfg, n, cls_only_last) for n in have) / max(len(data), 1)


def matmul_gflops(threads: int = 2, size: int = 1024, seconds: float = 1.0) -> float:
    """Measured float32 matmul GFLOP/s on `threads` threads (best of a short loop)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        c = torch.empty(size, size)
        torch.mm(a, b, out=c)
        best, t_end = math.inf, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
        return 2 * size ** 3 / best / 1e9
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------- data generation
def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def bench_generation(episodes: int = CHUNK_EPISODES, cfg: Optional[WorldConfig] = None, repeats: int = 2,
                     device="cpu", threads: Optional[int] = None, frames: int = 50) -> Dict[str, float]:
    """Labelled samples per second of rollout_chunk in this process (best of `repeats`).

    Episodes are cut to `frames` frames (the rate per frame does not depend on the length). A few
    frames of a few episodes run first, untimed: the process's first rollout loads the compiled
    kernels and starts their threads (0.2-0.3 s on 2 cores), and timed, it made the bench's first
    figure, one thread's, 4-5 times too low with --quick's single repeat (85,000 samples/s against
    390,000 once warm), which then missed the 100,000 target at --threads 1.
    """
    cfg = WorldConfig(**{**vars(cfg or WorldConfig()), "frames": frames})
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        rollout_chunk(min(episodes, 8), WorldConfig(**{**vars(cfg), "frames": min(frames, 2)}), seed=999,
                      device=device)
        _sync(device)
        best, t_stop = None, time.perf_counter() + 8.0     # a loaded machine gets fewer repeats
        for r in range(repeats):
            if best is not None and time.perf_counter() > t_stop:
                break
            _sync(device)
            t0 = time.perf_counter()
            s = rollout_chunk(episodes, cfg, seed=1000 + r, device=device)
            _sync(device)
            dt = time.perf_counter() - t0
            if best is None or len(s) / dt > best["samples_per_s"]:
                best = {"samples": len(s), "seconds": dt, "samples_per_s": len(s) / dt}
        return best
    finally:
        torch.set_num_threads(old)


class PaddedPolicy(ModelPolicy):
    """ModelPolicy as it ran before its CPU forwards were planned (the baseline of bench_dagger): the
    flocks sorted by size in chunks of 256, each padded to its widest, on all of torch's threads."""

    def _plan(self, counts, device):
        return self._even_chunks(len(counts))

    def _forwards(self, subs, device):
        return [self.model(sub) for sub in subs]


def bench_dagger(episodes: int = 100, cfg: Optional[WorldConfig] = None, repeats: int = 2,
                 frames: int = 100) -> Dict[str, float]:
    """Labelled samples per second of a DAgger epoch's episodes (EpisodeGenerator.generate, beta 0.1:
    the model drives 9 in 10), with ModelPolicy and with PaddedPolicy, alternating, best of `repeats`
    each. The model is untrained (its forward costs what a trained one's does). Episodes are cut to
    `frames` frames."""
    cfg = WorldConfig(**{**vars(cfg or WorldConfig()), "frames": frames})
    model = TransformerPredator()
    model.reset_parameters(torch.Generator().manual_seed(0))
    model.eval()
    rates = {"planned": 0.0, "padded": 0.0}
    with EpisodeGenerator(cfg, seed=0, progress=False) as gen:     # bars filled a log or pipe of the table
        gen.generate(4, stream=1, student=ModelPolicy(model), beta=0.0)        # compiled kernels loaded, untimed
        for r in range(repeats):
            for name, policy in (("planned", ModelPolicy(model)), ("padded", PaddedPolicy(model))):
                t0 = time.perf_counter()
                s = gen.generate(episodes, stream=2 + r, student=policy, beta=0.1)
                rates[name] = max(rates[name], len(s) / (time.perf_counter() - t0))
    return {"episodes": episodes, "frames": frames, "samples_per_s": rates["planned"],
            "padded_samples_per_s": rates["padded"]}


def naive_generation(frames: int = 60, cfg: Optional[WorldConfig] = None, seed: int = 0,
                     episodes: int = 4) -> Dict[str, float]:
    """The seed's design: every frame turned into a browser dict, the teacher called per dict.

    Episodes of the world's own flock sizes (as the fast figure's), `frames` frames each, after an untimed
    episode that warms the code paths up: one unwarmed window of one 50-boid episode gave 169 to 894
    samples/s from one run to the next, and the ratio against it swung as much."""
    cfg = cfg or WorldConfig()
    g = torch.Generator().manual_seed(seed)
    teacher = TeacherPolicy()
    count, seconds = 0, 0.0
    for e in range(episodes + 1):
        world = World.random(1, cfg, generator=g)
        t0 = time.perf_counter()
        for _ in range(frames if e else min(frames, 10)):
            d = to_dicts(world.observe())[0]
            a = teacher.get_normalized_action(d)
            world.step(a[None].float())
            if e:
                count += 1
        if e:       # the first: the warm-up
            seconds += time.perf_counter() - t0
    return {"samples": count, "seconds": seconds, "samples_per_s": count / seconds, "episodes": episodes}


# ---------------------------------------------------------------------- training
def samples_with_boids(n_boids: int, min_samples: int, cfg: Optional[WorldConfig] = None, seed: int = 0) -> SampleSet:
    """Samples where every row has exactly n_boids live boids (episodes of that size, before catches)."""
    cfg = cfg or WorldConfig()
    cfg = WorldConfig(**{**vars(cfg), "boids_min": n_boids, "boids_max": n_boids})
    parts, have, chunk = [], 0, 0
    while have < min_samples:
        s = rollout_chunk(128, cfg, seed=seed + chunk)
        s = s.select((s.n == n_boids).nonzero().squeeze(1))
        parts.append(s)
        have += len(s)
        chunk += 1
    s = SampleSet.cat(parts)
    return s.select(torch.arange(min_samples))


def make_trainer(data: SampleSet, batch_size: int = 256, device="cpu", model_cfg: Optional[ModelConfig] = None,
                 **kw):
    """A SupervisedTrainer on `data` with the browser-size model (dropout as configured)."""
    from .train import SupervisedTrainer
    # the same weights each time, from a generator of its own: the caller's random states as they were (a fork of
    # them all started CUDA on every GPU of the machine for a CPU figure)
    model = TransformerPredator.for_weights(model_cfg or ModelConfig())
    model.reset_parameters(torch.Generator().manual_seed(0))
    kw.setdefault("world_config", WorldConfig())      # (no checkpoint or catch check: any world will do)
    return SupervisedTrainer(model, data, data, batch_size=batch_size, device=device, **kw)


def bench_training(data: SampleSet, batch_size: int = 256, seconds: float = 6.0, piece: int = 2048, device="cpu",
                   threads: Optional[int] = None, **trainer_kw) -> Dict[str, float]:
    """Training samples/s (forward + backward + clip + AdamW step) with SupervisedTrainer.

    Runs train_epoch on successive pieces of `piece` samples for about `seconds` and reports
    the best piece, which keeps bursts of other load on the machine out of the figure.
    """
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        tr = make_trainer(data, batch_size, device, **trainer_kw)
        piece = min(piece, len(data))
        pieces = [data.select(torch.arange(i, min(i + piece, len(data)))) for i in range(0, len(data), piece)]
        tr.train_epoch(pieces[0].select(torch.arange(min(len(pieces[0]), 2 * batch_size))))   # warm-up
        rates, t_end, k = [], time.perf_counter() + seconds, 0
        while time.perf_counter() < t_end or not rates:
            rates.append(tr.train_epoch(pieces[k % len(pieces)])["samples_per_s"])
            k += 1
        return {"samples": len(data), "samples_per_s": max(rates), "median_samples_per_s": sorted(rates)[len(rates) // 2],
                "mean_boids": float(data.n.float().mean()), "parts": tr.split_parts()}
    finally:
        torch.set_num_threads(old)


def naive_training(data: SampleSet, batch_size: int = 256, steps: int = 3) -> Dict[str, float]:
    """The seed's design: samples kept as browser dicts, every batch collated from them in Python,
    explicit attention, a per-parameter AdamW loop. An untimed first step, then the best of `steps`
    (the first call ran about 25% slow, and a single timing swung by 2x from run to run)."""
    model = TransformerPredator.for_weights(ModelConfig())
    model.reset_parameters(torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    kernels, model_module.fastops = model_module.fastops, None    # torch's ops alone, as the seed ran: its GEGLU
    try:                                                          # ran in predlab's numba kernel
        return _naive_steps(model, opt, data, batch_size, steps)
    finally:
        model_module.fastops = kernels


def _naive_steps(model, opt, data: SampleSet, batch_size: int, steps: int) -> Dict[str, float]:
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: (steps + 1) * batch_size]
    sub = data.select(idx)
    dicts = to_dicts(sub.batch(torch.arange(len(sub))))
    targets = sub.target
    rates = []
    for k, i in enumerate(range(0, len(dicts), batch_size)):
        t0 = time.perf_counter()
        b = collate(dicts[i:i + batch_size])
        out, _ = model.forward_with_attention(b)
        loss = F.mse_loss(out, targets[i:i + batch_size])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if k:       # the first: the warm-up
            rates.append(len(dicts[i:i + batch_size]) / (time.perf_counter() - t0))
    if not rates:   # data of a single batch: that one, warm-up and all
        rates.append(len(dicts) / (time.perf_counter() - t0))
    return {"samples": len(dicts), "samples_per_s": max(rates), "steps": len(rates)}


# ---------------------------------------------------------------------- attention kernels
def bench_attention(batch_size: int = 256, n_boids: int = 50, cfg: Optional[ModelConfig] = None,
                    repeats: int = 10, threads: Optional[int] = None) -> Dict[str, float]:
    """Milliseconds for forward + backward of one layer's attention, per kernel (best of repeats),
    on `threads` torch threads (None: as set).

    "fused" is the CPU kernel the model uses (predlab.fastops.attention, where numba is installed),
    "sliced" the one it uses for float64 and other head widths (predlab.model._Attention), "sdpa"
    F.scaled_dot_product_attention; same maths.
    """
    if threads:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return {**bench_attention(batch_size, n_boids, cfg, repeats), "threads": threads}
        finally:
            torch.set_num_threads(old)
    from .model import attention, fastops
    cfg = cfg or ModelConfig()
    T, D = 3 + n_boids, cfg.d_model
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(batch_size, T, 3 * D, generator=g).requires_grad_(True)
    bias = torch.zeros(batch_size, 1, 1, T)
    dy = torch.randn(batch_size, T, D, generator=g)
    best = {"fused": math.inf, "sliced": math.inf, "sdpa": math.inf}
    if fastops is None or not fastops.attention_supports(qkv, cfg.n_heads):
        del best["fused"]
    for r in range(repeats + 1):                     # interleaved, so load hits both alike
        for kernel in best:
            t0 = time.perf_counter()
            attention(qkv, bias, cfg.n_heads, kernel=kernel).backward(dy)
            if r:
                best[kernel] = min(best[kernel], (time.perf_counter() - t0) * 1e3)
    return {"fused_ms": best.get("fused"), "sliced_ms": best["sliced"], "sdpa_ms": best["sdpa"], "tokens": T,
            "batch_size": batch_size}


def bench_geglu(batch_size: int = 256, n_boids: int = 50, cfg: Optional[ModelConfig] = None,
                repeats: int = 10) -> Optional[Dict[str, float]]:
    """Milliseconds for forward + backward of one layer's GEGLU gate, per implementation.

    "fused" is predlab.fastops.geglu (the CPU path), "torch" is gelu(gate) * up in torch's ops
    (the GPU path); same maths. None where numba is missing.
    """
    from . import model as M
    if M.fastops is None:
        return None
    cfg = cfg or ModelConfig()
    T, Fh = 3 + n_boids, cfg.ffn_hidden
    g = torch.Generator().manual_seed(0)
    h = torch.randn(batch_size, T, 2 * Fh, generator=g).requires_grad_(True)
    dy = torch.randn(batch_size, T, Fh, generator=g)

    def plain(x):
        gate, up = x.split(Fh, dim=-1)
        return F.gelu(gate, approximate="tanh") * up

    best = {"fused": math.inf, "torch": math.inf}
    for r in range(repeats + 1):                     # interleaved, so load hits both alike
        for name, fn in (("fused", M.fastops.geglu), ("torch", plain)):
            t0 = time.perf_counter()
            fn(h).backward(dy)
            if r:
                best[name] = min(best[name], (time.perf_counter() - t0) * 1e3)
    return {"fused_ms": best["fused"], "torch_ms": best["torch"], "tokens": T, "batch_size": batch_size}


# ---------------------------------------------------------------------- memory
def training_memory(data: SampleSet, batch_size: int = 256, cpu_split: int = 0, steps: int = 3) -> Dict[str, float]:
    """Tensor memory of one CPU training step on batch_size rows of data, as the trainer runs it, in MiB.

    One step of SupervisedTrainer.train_epoch at the threads set now: with a split batch, each part's
    forward on its own thread (one intra-op thread), the parts side by side. activations: bytes saved
    for backward by the step's forwards, all parts together (each part holds its own until its
    backward); state: weights, their gradients and AdamW's two moments, plus each part's own
    gradients, summed after the parts. Measured on one whole batch in one forward at 2 threads, it
    took torch's attention, which training at 2 threads does not run: 77 MiB against the 99 the step
    saves. What the step holds at its peak is more (backward allocates while the saved tensors are
    held): peak_mib, from step_peak. Also the bench process's peak resident set size (torch itself and
    every figure measured before this one), and counted_mib: what predlab.train's memory check counts
    for the step and the model's state.
    """
    import threading
    rows = data.select(torch.arange(min(batch_size, len(data))))
    tr = make_trainer(rows, batch_size, cpu_split=cpu_split)
    seen, saved, lock, forwards, held = set(), [0], threading.Lock(), [0], []

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        with lock:
            # held until the step ends: a part whose backward ran first frees what it saved, and the other
            # part's forward, still running (or not yet begun, on a busy machine), could be handed the same
            # address, and its tensor taken for one already counted
            held.append(t)
            if key not in seen:
                seen.add(key)
                saved[0] += t.untyped_storage().nbytes()
        return t

    real = tr._forward

    def counted(batch):       # in whichever thread the step runs it: saved-tensor hooks are per thread
        with lock:
            forwards[0] += 1
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return real(batch)

    tr._forward = counted
    threads = torch.get_num_threads()
    try:
        tr.train_epoch(rows)
    finally:
        torch.set_num_threads(threads)      # (train_epoch puts it back; a failure must too)
        held.clear()
    params = sum(p.numel() * p.element_size() for p in tr.model.parameters())
    state = (4 + (forwards[0] if forwards[0] > 1 else 0)) * params
    mib = 2 ** 20
    rss = peak_rss_mib()
    peak = step_peak(rows, batch_size, cpu_split, steps)
    # (a polled peak below what all parts save is still the figure: on a busy machine one part's backward can
    # free its tensors before the other's forward has made its own, and polling misses the tops of spikes)
    step = next(b for d, b in _training_work(TrainConfig(batch_size=len(rows), threads=threads, cpu_split=cpu_split),
                                             WorldConfig(boids_max=int(rows.n.max())), tr.model.config)
                if d.startswith("a training step"))
    counted = step + 4 * params   # 16 B a weight
    return {"activations_mib": saved[0] / mib, "state_mib": state / mib, "total_mib": (saved[0] + state) / mib,
            "counted_mib": counted / mib,
            "peak_mib": None if peak is None else peak / mib, "peak_steps": steps,
            "parts": forwards[0], "threads": threads, "rows": len(rows),
            "mean_boids": float(rows.n.float().mean()), "process_peak_rss_mib": rss}


def peak_rss_mib() -> Optional[float]:
    """This process's peak resident set size in MiB, or None where there is no getrusage (Windows)."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024     # bytes on macOS, KiB on Linux


def _heap_counter():
    """A function giving the bytes the C allocator has handed out (glibc's mallinfo2), or None elsewhere."""
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError, TypeError):        # TypeError: Windows opens no library by None
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
    mallinfo2.restype = MallInfo2

    def allocated() -> int:
        m = mallinfo2()
        return m.uordblks + m.hblkhd        # small blocks in the arenas, and the large ones mapped apart
    return allocated


def step_peak(rows: SampleSet, batch_size: int = 256, cpu_split: int = 0, steps: int = 3) -> Optional[int]:
    """The most bytes one training step held above what was held before it, over `steps` steps of fresh
    trainers: the C allocator's count (glibc, where torch's CPU tensors come from, every thread's), polled in
    a thread while the step runs. The saved tensors alone miss what backward allocates while the forward's
    are still held, and the forward's temporaries: 98.7 MiB saved, against steps that peaked at 99-118.
    None where the count is not to be had (not glibc)."""
    import threading
    allocated = _heap_counter()
    if allocated is None:
        return None
    # the count must see torch's tensors: under a preloaded jemalloc or tcmalloc glibc's malloc stays idle
    before, probe = allocated(), torch.empty(1 << 22)       # 16 MiB
    if allocated() - before < probe.nbytes:
        return None
    del probe
    best = 0
    for _ in range(steps):
        tr = make_trainer(rows, batch_size, cpu_split=cpu_split)
        base, high, done = allocated(), [0], threading.Event()

        def poll():
            while not done.is_set():
                high[0] = max(high[0], allocated())
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        threads = torch.get_num_threads()
        try:
            tr.train_epoch(rows)
        finally:
            done.set()
            poller.join()
            torch.set_num_threads(threads)
        # and once after it: what the step made and keeps (AdamW's moments) was held at its peak too, where a
        # poller kept off the CPU for the whole step read nothing
        best = max(best, high[0] - base, allocated() - base)
    return best


def gpu_training_memory(data: SampleSet, batch_size: int = 256, **trainer_kw) -> Dict[str, float]:
    """Peak CUDA memory of training at batch_size (only where CUDA exists)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    tr = make_trainer(data, batch_size, "cuda", **trainer_kw)
    tr.train_epoch(data.select(torch.arange(min(len(data), 4 * batch_size))))
    torch.cuda.synchronize()
    return {"peak_mib": (torch.cuda.max_memory_allocated() - base) / 2 ** 20}


# ---------------------------------------------------------------------- GPU
GPU_BATCHES = (256, 4096, 16384)
# Every batch size runs the GPU_MODES; batches of VARIANT_MIN_BATCH and more also run the
# VARIANT_MODES, each against "graphs fp32" in the same run (at batch 256 the GPU waits on
# launches, and the target is at the large batches):
# - "graphs tf32": --tf32, float32 products on tensor cores;
# - "graphs torch LN": torch's LayerNorm kernel (PREDLAB_GPU_LAYER_NORM=torch), the baseline of
#   the compiled LayerNorm;
# - "graphs triton ...": the fused Triton kernels (PREDLAB_GPU_ATTENTION / PREDLAB_GPU_GEGLU),
#   where Triton is installed; "graphs triton+tf32" is everything not yet the default at once;
#   "graphs bf16 triton" the kernels on bf16 activations (half the bytes; the plain ops' casts
#   around the attention and GEGLU are gone).
GPU_MODES = {"eager fp32": {"cuda_graphs": False}, "graphs fp32": {"cuda_graphs": True},
             "graphs bf16": {"cuda_graphs": True, "autocast": True}}
# each variant: name, what its ratio line calls it (None: printed its own way), trainer settings,
# whether it needs Triton
_VARIANTS = (
    ("graphs tf32", "TF32 products", {"tf32": True}, False),
    ("graphs torch LN", None, {"layer_norm": "torch"}, False),
    ("graphs triton attn", "fused Triton attention", {"attention": "triton"}, True),
    ("graphs triton GEGLU", "fused Triton GEGLU", {"geglu": "triton"}, True),
    ("graphs triton both", "fused Triton attention and GEGLU", {"attention": "triton", "geglu": "triton"}, True),
    ("graphs triton+tf32", "fused Triton attention and GEGLU with TF32",
     {"attention": "triton", "geglu": "triton", "tf32": True}, True),
    ("graphs bf16 triton", "fused Triton attention and GEGLU on bf16 activations",
     {"autocast": True, "attention": "triton", "geglu": "triton"}, True),
)
_HAVE_TRITON = importlib.util.find_spec("triton") is not None
VARIANT_MODES = {name: {"cuda_graphs": True, **kw} for name, _, kw, triton in _VARIANTS if _HAVE_TRITON or not triton}
VARIANT_LABELS = {name: label for name, label, _, _ in _VARIANTS if label}
VARIANT_MIN_BATCH = 4096
# the modes predlab.train runs: its float32 numerics and default kernels, with CUDA graphs (its default) or without
# (--no-cuda_graphs). The GPU target is judged on these: bf16 and TF32 change what the model computes, and the Triton
# kernels are opt-in
TRAINER_GPU_MODES = ("graphs fp32", "eager fp32")
# predlab.model's kernel switches that a mode may set (for its run only)
SWITCHES = {"layer_norm": "GPU_LAYER_NORM", "attention": "GPU_ATTENTION", "geglu": "GPU_GEGLU"}


def bench_training_gpu(data: SampleSet, batch_size: int, seconds: float = 3.0, device="cuda",
                       **trainer_kw) -> Dict[str, float]:
    """GPU training samples/s: whole epochs over `data` held on the device (the best epoch,
    after a warm-up epoch that moves the data, compiles and captures the CUDA graphs).

    layer_norm / attention / geglu (in trainer_kw) set predlab.model's GPU_LAYER_NORM /
    GPU_ATTENTION / GPU_GEGLU for this run only; the rest goes to SupervisedTrainer."""
    from . import model as M
    old = {name: getattr(M, name) for name in SWITCHES.values()}
    for key, name in SWITCHES.items():
        setattr(M, name, trainer_kw.pop(key, None) or old[name])
    try:
        tr = make_trainer(data, batch_size, device, **trainer_kw)
        t0 = time.perf_counter()
        tr.train_epoch(data)
        warmup = time.perf_counter() - t0
        rates, t_end = [], time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(rates) < 2:
            rates.append(tr.train_epoch(data)["samples_per_s"])
        del tr
        # the LayerNorm that ran: "auto" falls back to torch's by itself (no Triton or C compiler), which made
        # the table's compiled-against-torch ratio one of torch's kernel against itself
        layer_norm = ("compiled" if torch.device(device).type == "cuda" and M.GPU_LAYER_NORM != "torch"
                      and M._compiled_layer_norm is not None else "torch")
    finally:
        for name, value in old.items():
            setattr(M, name, value)
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return {"samples": len(data), "epochs": len(rates), "samples_per_s": max(rates), "warmup_s": warmup,
            "median_samples_per_s": sorted(rates)[len(rates) // 2], "mean_boids": float(data.n.float().mean()),
            "layer_norm": layer_norm}


def profile_training(data: SampleSet, batch_size: int, device="cuda", top: int = 12, **trainer_kw) -> Dict:
    """Where an eager training step's time goes: the `top` GPU kernels (CPU operators on a CPU)
    by their own time per step, from one profiled epoch over `data` after a warm-up epoch.

    Eager (no CUDA graphs) so that every kernel shows; at batch 16384 eager and graphed steps
    ran within 2% of each other on an H200 (README). On a CPU the batch is not split in two
    threads (cpu_split=1). trainer_kw go to SupervisedTrainer."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    on_gpu = torch.device(device).type == "cuda"
    if not on_gpu:                                         # the profiler sees this thread's operators only
        trainer_kw.setdefault("cpu_split", 1)
    tr = make_trainer(data, batch_size, device, cuda_graphs=False, **trainer_kw)
    tr.train_epoch(data)                                   # warm-up: compiles, moves the data
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=acts) as prof:
        wall = tr.train_epoch(data)["epoch_time"]
    del tr
    steps = math.ceil(len(data) / batch_size)
    kind = DeviceType.CUDA if on_gpu else DeviceType.CPU
    rows = []
    for e in prof.key_averages():
        if e.device_type != kind:
            continue
        own = (getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)) if on_gpu \
            else e.self_cpu_time_total                     # microseconds over the epoch
        if own > 0:
            rows.append({"name": e.key, "calls_per_step": e.count / steps, "ms_per_step": own / 1e3 / steps})
    rows.sort(key=lambda r: -r["ms_per_step"])
    total = sum(r["ms_per_step"] for r in rows)
    for r in rows:
        r["share"] = r["ms_per_step"] / max(total, 1e-12)
    return {"batch_size": batch_size, "steps": steps, "unit": "kernels" if on_gpu else "operators",
            "ms_per_step": total, "wall_ms_per_step": wall * 1e3 / steps,
            "calls_per_step": sum(r["calls_per_step"] for r in rows), "top": rows[:top]}


def val_after_training(data: SampleSet, val: SampleSet, batch_size: int, epochs: int, device="cuda",
                       **trainer_kw) -> float:
    """Val MSE after `epochs` epochs over data from the same seed (for comparing modes on equal steps)."""
    tr = make_trainer(data, batch_size, device, **trainer_kw)
    tr.val_dataset = val
    for _ in range(epochs):
        tr.train_epoch(data)
        tr.epoch += 1
    return tr.validate()


def batch_sizes(text: str) -> tuple:
    """--gpu-batches' sizes, "256,4096,1e4", as predlab.train reads a count (1e4 and 4096.0 too); () for
    anything else: a size below 1 or not whole, an empty item."""
    parse = bounded_number(int, 1)
    try:
        return tuple(parse(b) for b in text.split(","))
    except argparse.ArgumentTypeError:
        return ()


def gpu_sweep_memory(batches, quick: bool = False, device="cuda") -> Optional[str]:
    """Why run_gpu at these batch sizes cannot fit in memory, or None. At its largest batch it holds
    64 batches' worth of samples, made on the host from a repeated pool and a selection of it (two
    copies there), and on the GPU those samples and a training step's activations (counted at
    worst, as predlab.train counts them)."""
    b, world, mc = max(batches), WorldConfig(), ModelConfig()
    samples = max(64 * b, 1 << 14 if quick else 1 << 17) * sample_bytes(world.boids_max)
    device = torch.device(device)
    return (memory_problem([(f"the samples of batch {b:,} (64 batches' worth) and the copy they are made from",
                             2 * samples)], f"batch {b:,}")
            or memory_problem([(f"the samples of batch {b:,} (64 batches' worth)", samples),
                               (f"a training step's activations at batch {b:,}",
                                step_bytes_training(b, mc, world.boids_max))], f"batch {b:,}",
                              have=torch.cuda.get_device_properties(device).total_memory,
                              where=f"the {{}} of {torch.cuda.get_device_name(device)}"))


def run_gpu(quick: bool = False, world: Optional[WorldConfig] = None, batches=GPU_BATCHES,
            modes: Optional[Dict[str, Dict]] = None, seconds: Optional[float] = None,
            fixed_boids: int = 50, device="cuda", pool_episodes: Optional[int] = None,
            min_samples: Optional[int] = None, variant_min_batch: int = VARIANT_MIN_BATCH) -> Dict:
    """The GPU figures: training samples/s by batch size and mode (eager launches, CUDA graphs,
    bf16 autocast or TF32 with graphs, kernel variants) on the default episodes, the best mode
    at 50 boids, bf16's and TF32's val MSE against float32's after the same data and steps,
    generation with the torch world on the GPU, peak memory, and a profile of eager steps.
    modes: by default GPU_MODES, and VARIANT_MODES at batches of variant_min_batch or more; a
    variant that raises is listed under "failed" with its error, and the run goes on.
    device, pool_episodes and min_samples exist so that a test can run it all on a CPU in
    seconds (no memory figure there). The caller's random states are as they were after it."""
    # its seed 0, then the caller's states back (a bare seed reset them): the CPU's and the bench's GPU's
    with torch.random.fork_rng(devices=[torch.device(device)] if torch.device(device).type == "cuda" else []):
        return _run_gpu(quick, world, batches, modes, seconds, fixed_boids, device, pool_episodes, min_samples,
                        variant_min_batch)


def _run_gpu(quick, world, batches, modes, seconds, fixed_boids, device, pool_episodes, min_samples,
             variant_min_batch) -> Dict:
    world = world or WorldConfig()
    seconds = seconds or (1.0 if quick else 3.0)
    torch.random.default_generator.manual_seed(0)     # the CPU's and the bench's own GPU's, no other (not forked)
    if torch.device(device).type == "cuda":
        with torch.cuda.device(torch.device(device)):
            torch.cuda.manual_seed(0)
    pool = rollout_chunk(pool_episodes or (32 if quick else 256), world, seed=7)
    val = rollout_chunk(max(2, (pool_episodes or 256) // 8), world, seed=8)   # held out: another seed
    mcfg = ModelConfig()
    min_samples = min_samples or (1 << 14 if quick else 1 << 17)
    on_gpu = torch.device(device).type == "cuda"
    gpu_name = torch.cuda.get_device_name(torch.device(device)) if on_gpu else str(device)    # the GPU used, not GPU 0
    res: Dict = {"device": gpu_name, "train": [], "failed": []}
    for b in batches:
        # ~64 steps per epoch, at least 2^17 samples (the pool repeated: a throughput figure)
        want = max(64 * b, min_samples)
        data = SampleSet.cat([pool] * math.ceil(want / len(pool))).select(torch.arange(want))
        at_b = modes or {**GPU_MODES, **(VARIANT_MODES if b >= variant_min_batch else {})}
        for name, kw in at_b.items():
            try:
                r = bench_training_gpu(data, b, seconds, device, **kw)
            except Exception as e:        # a variant that fails (a kernel that does not compile here, say)
                if name not in VARIANT_MODES:
                    raise
                res["failed"].append({"batch_size": b, "mode": name, "error": f"{type(e).__name__}: {e}"})
                _progress(f"  GPU batch {b:,} {name}: failed ({type(e).__name__}: {str(e)[:300]})")
                continue
            r.update(batch_size=b, mode=name, data="default")
            _progress(f"  GPU batch {b:,} {name}: {r['samples_per_s']:,.0f} samples/s (warm-up {r['warmup_s']:.1f} s)")
            # averaged over the samples' own flock sizes, as on the CPU: at the mean size it fell 2.7% short
            r["tflops"] = r["samples_per_s"] * mean_train_flops(mcfg, data, cls_only_last=True) / 1e12
            res["train"].append(r)
    best = trainer_best(res["train"])
    fifty = samples_with_boids(fixed_boids, min_samples // 4, world)
    want = max(64 * best["batch_size"], min_samples)
    fifty = SampleSet.cat([fifty] * math.ceil(want / len(fifty))).select(torch.arange(want))
    r = bench_training_gpu(fifty, best["batch_size"], seconds, device,
                           **{**GPU_MODES, **VARIANT_MODES, **(modes or {})}[best["mode"]])
    r.update(batch_size=best["batch_size"], mode=best["mode"], data=f"{fixed_boids} boids")
    r["tflops"] = r["samples_per_s"] * mean_train_flops(mcfg, fifty, cls_only_last=True) / 1e12
    res["train"].append(r)
    # bf16 autocast and TF32 against float32: the same data, seed and number of steps
    want = min_samples // 2
    cb = min(256 if quick else 1024, want // 8)
    data = SampleSet.cat([pool] * math.ceil(want / len(pool))).select(torch.arange(want))
    res["bf16_check"] = {"batch_size": cb, "epochs": 4, "samples": len(data), "val_samples": len(val), **{
        key: val_after_training(data, val, cb, 4, device, cuda_graphs=True, **kw)
        for key, kw in (("val_mse_fp32", {}), ("val_mse_bf16", {"autocast": True}), ("val_mse_tf32", {"tf32": True}))}}
    res["generate"] = bench_generation(min(4 * CHUNK_EPISODES, min_samples // 8), world,
                                       repeats=1 if quick else 2, device=device, frames=min(50, world.frames))
    # at each batch size as named: 4 batches of it (the pool alone was fewer rows than a batch of 16384 when quick)
    res["memory"] = ({str(b): gpu_training_memory(SampleSet.cat([pool] * math.ceil(4 * b / len(pool))), b,
                                                  cuda_graphs=True)["peak_mib"] for b in batches} if on_gpu else {})
    # where the time goes at the largest batch: 8 eager steps of the default modes
    b = max(batches)
    data = SampleSet.cat([pool] * math.ceil(8 * b / len(pool))).select(torch.arange(8 * b))
    try:
        res["profile"] = profile_training(data, b, device)
    except Exception as e:                # no profiler support here costs the profile, not the figures
        res["profile"] = {"error": f"{type(e).__name__}: {e}"}
    return res


def trainer_best(rows) -> Optional[Dict]:
    """The fastest default-episode row of the modes predlab.train runs (TRAINER_GPU_MODES), else of any mode."""
    rows = [r for r in rows if r["data"] == "default"]
    ours = [r for r in rows if r["mode"] in TRAINER_GPU_MODES] or rows
    return max(ours, key=lambda r: r["samples_per_s"]) if ours else None


def print_gpu_table(g: Dict) -> None:
    print(f"GPU: {g['device']}")
    row = "{:<14} {:>7} {:<18} {:>12} {:>12} {:>8} {:>9} {:>5}"
    print(row.format("data", "batch", "mode", "samples/s", "median", "TFLOP/s", "warm-up", "met"))
    for r in g["train"]:
        print(row.format(r["data"], r["batch_size"], r["mode"], f"{r['samples_per_s']:,.0f}",
                         f"{r['median_samples_per_s']:,.0f}", f"{r['tflops']:.2f}", f"{r['warmup_s']:.1f} s",
                         # the target is of the default episodes: a row of 50-boid flocks is not judged by it
                         ("-" if r["data"] != "default" else "yes" if r["samples_per_s"] >= TARGETS["train_gpu"]
                          else "no") + ("" if r["mode"] in TRAINER_GPU_MODES else "*")))
    if any(r["mode"] not in TRAINER_GPU_MODES for r in g["train"]):
        print("(* not predlab.train's default numerics or kernels, which the target is judged on: bf16 and TF32 "
              "(--tf32, opt-in) change what the model computes, and the Triton kernels are opt-in)")
    rate = {(r["batch_size"], r["mode"]): r["samples_per_s"] for r in g["train"] if r["data"] == "default"}
    for (b, mode), x in rate.items():
        base = rate.get((b, "graphs fp32"))
        compiled = next((r.get("layer_norm") == "compiled" for r in g["train"]
                         if (r["batch_size"], r["mode"], r["data"]) == (b, "graphs fp32", "default")), False)
        if base and mode == "graphs torch LN" and compiled:
            print(f"compiled LayerNorm at batch {b}: {base / x:.2f}x torch's (graphs fp32 / graphs torch LN)")
        elif base and mode == "graphs torch LN":
            print(f"compiled LayerNorm at batch {b}: not run (torch's ran in graphs fp32 too: no Triton or C "
                  f"compiler, its compile failed (a warning above), or PREDLAB_GPU_LAYER_NORM=torch)")
        variant = VARIANT_LABELS.get(mode)
        if base and variant:
            print(f"{variant} at batch {b}: {x / base:.2f}x ({mode} / graphs fp32)")
    print("(warm-up: the first epoch, with compilation and graph captures)")
    for f in g.get("failed", []):
        print(f"failed at batch {f['batch_size']}: {f['mode']}: {f['error'][:500]}")
    c = g["bf16_check"]
    print(f"val MSE (in float32, as the browser runs it) after {c['epochs']} epochs of {c['samples']:,} samples "
          f"at batch {c['batch_size']}, trained in float32 {c['val_mse_fp32']:.5f}, "
          f"bf16 autocast {c['val_mse_bf16']:.5f} "
          f"({c['val_mse_bf16'] / c['val_mse_fp32']:.3f}x), TF32 {c['val_mse_tf32']:.5f} "
          f"({c['val_mse_tf32'] / c['val_mse_fp32']:.3f}x)")
    print(f"data generation on the GPU (torch world): {g['generate']['samples_per_s']:,.0f} samples/s")
    if g["memory"]:
        print("peak training memory (CUDA graphs): " + ", ".join(f"batch {b}: {m:,.0f} MiB"
                                                                 for b, m in g["memory"].items()))
    if g.get("profile", {}).get("error"):
        print(f"profile of eager steps: failed ({g['profile']['error'][:500]})")
    elif g.get("profile"):
        print_profile(g["profile"])


def print_profile(p: Dict) -> None:
    print(f"where an eager training step's time goes at batch {p['batch_size']:,}: {p['calls_per_step']:,.0f} "
          f"{p['unit']}, {p['ms_per_step']:.2f} ms of their own time per step ({p['wall_ms_per_step']:.2f} ms wall "
          "under the profiler)")
    for r in p["top"]:
        name = r["name"] if len(r["name"]) <= 70 else r["name"][:67] + "..."
        print(f"  {r['ms_per_step']:8.3f} ms {100 * r['share']:5.1f}%  x{r['calls_per_step']:<5.0f} {name}")


# ---------------------------------------------------------------------- the run
def cpu_model() -> str:
    """The CPU's name ("Intel(R) Xeon(R) ..."), from /proc/cpuinfo on Linux, else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int) -> Dict:
    """Where and when the figures were measured: platform, CPU, threads, torch, load, GPU and the date (UTC),
    so that a --json file says which host it is of (the command line's flags go beside it: main)."""
    return {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": threads,
            "torch": torch.__version__,
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,     # None: not Unix
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_attention": model_module.CPU_ATTENTION,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run(quick: bool = False, threads: int = 2, train_samples: Optional[int] = None, naive_frames: int = 40,
        naive_steps: int = 2, batch_size: int = 256, seconds: Optional[float] = None,
        gpu: Optional[bool] = None, world: Optional[WorldConfig] = None, fixed_boids: int = 50,
        pool_episodes: int = 128, gpu_batches=GPU_BATCHES, gpu_modes: Optional[Dict[str, Dict]] = None,
        cpu_split: int = 0) -> Dict:
    """Measure everything; returns a dict (see print_table). quick=True shortens every timing.
    cpu_split: the trainer's cpu_split for the training figures at `threads` (0 = its auto).

    world / fixed_boids / pool_episodes exist so that a test can run the whole thing in seconds.
    """
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:     # the caller's thread count back after: a notebook's, or the test suite's 1, was left at `threads`
        return _run(quick, threads, train_samples, naive_frames, naive_steps, batch_size, seconds, gpu, world,
                    fixed_boids, pool_episodes, gpu_batches, gpu_modes, cpu_split)
    finally:
        torch.set_num_threads(old_threads)


def _run(quick, threads, train_samples, naive_frames, naive_steps, batch_size, seconds, gpu, world, fixed_boids,
         pool_episodes, gpu_batches, gpu_modes, cpu_split) -> Dict:
    world = world or WorldConfig()
    seconds = seconds or (2.0 if quick else 6.0)
    train_samples = train_samples or (4_096 if quick else 16_384)
    reps = 1 if quick else 2
    mcfg = ModelConfig()
    res: Dict = {"machine": machine(threads)}
    res["matmul_gflops"] = matmul_gflops(threads, seconds=0.5 if quick else 1.5)
    # at 1 thread the same figure: measured twice, the two differed and the fractions used the lower
    res["matmul_gflops_1thread"] = (res["matmul_gflops"] if threads == 1 else
                                    matmul_gflops(1, seconds=0.5 if quick else 1.5))

    gen = {t: bench_generation(CHUNK_EPISODES, world, repeats=reps, threads=t, frames=min(50, world.frames))
           for t in sorted({1, threads})}
    best_t = max(gen, key=lambda t: gen[t]["samples_per_s"])
    res["generate"] = {**gen[best_t], "threads": best_t, "by_threads": {str(t): g for t, g in gen.items()},
                       "naive": naive_generation(naive_frames, world)}

    pool = rollout_chunk(pool_episodes, world, seed=7)
    default = pool.select(torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:train_samples])
    fifty = samples_with_boids(fixed_boids, train_samples // 2, world)
    for name, data in (("train_default", default), ("train_50", fifty)):
        piece = 8192 if not quick else 2048
        r = bench_training(data, batch_size, seconds=seconds, piece=piece, threads=threads, cpu_split=cpu_split)
        r["one_thread"] = bench_training(data, batch_size, seconds=seconds / 2, piece=piece, threads=1)["samples_per_s"]
        r["naive"] = naive_training(data, batch_size, steps=naive_steps)
        r["flop_per_sample"] = mean_train_flops(mcfg, data)
        r["executed_flop_per_sample"] = mean_train_flops(mcfg, data, cls_only_last=True)
        r["gflops"] = r["samples_per_s"] * r["executed_flop_per_sample"] / 1e9
        r["fraction_of_matmul_peak"] = r["gflops"] / res["matmul_gflops"]
        r["effective_gflops"] = r["samples_per_s"] * r["flop_per_sample"] / 1e9
        r["effective_fraction_of_matmul_peak"] = r["effective_gflops"] / res["matmul_gflops"]
        res[name] = r
    res["memory_cpu_b256_n50"] = training_memory(fifty, batch_size, cpu_split)
    # as training runs it: each split part's rows on one thread (the split's threads set one for
    # themselves, whatever the machine has); and the whole batch on all the threads
    parts = res["train_50"]["parts"]
    res["attention_cpu"] = {
        **bench_attention(max(1, batch_size // parts), fixed_boids, mcfg, repeats=5 if quick else 10,
                          threads=1 if parts > 1 else threads), "parts": parts,
        "whole_batch": bench_attention(batch_size, fixed_boids, mcfg, repeats=5 if quick else 10, threads=threads)}
    res["geglu_cpu"] = bench_geglu(batch_size, fixed_boids, mcfg, repeats=5 if quick else 10)
    res["dagger_cpu"] = bench_dagger(32 if quick else 100, world, repeats=reps, frames=min(50 if quick else 100,
                                                                                          world.frames))

    gpu = torch.cuda.is_available() if gpu is None else gpu
    res["gpu"], res["train_gpu"] = None, None       # None: no CUDA device here
    if gpu:
        try:
            res["gpu"] = run_gpu(quick, world, batches=gpu_batches, modes=gpu_modes)
        except Exception as e:      # noqa: BLE001 (the CPU figures, minutes of them, are kept: the run threw all away)
            import traceback
            res["gpu"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            _progress(f"  GPU: failed ({type(e).__name__}: {str(e)[:300]})")
        best = trainer_best(res["gpu"].get("train", []))
        if best is not None:
            res["train_gpu"], res["train_gpu_mode"] = best["samples_per_s"], best["mode"]
    res["quick"], res["targets"] = quick, dict(TARGETS)
    # None: not judged here (training targets are of 2 threads; no GPU)
    res["met"] = {"generate": res["generate"]["samples_per_s"] >= TARGETS["generate"],
                  **{k: res[k]["samples_per_s"] >= TARGETS[k] if threads == 2 else None
                     for k in ("train_default", "train_50")},
                  "train_gpu": None if res["train_gpu"] is None else res["train_gpu"] >= TARGETS["train_gpu"]}
    return res


def print_table(res: Dict) -> None:
    """The figures, with ratios against the naive baseline, the seed's figures and the targets."""
    m = res["machine"]
    print(f"machine: {m.get('cpu', '?')}, {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}, CUDA: "
          f"{m['cuda'] or 'none'}" +
          (f", load average at start {m['load_avg_1min']:.1f}" if m.get("load_avg_1min") is not None else "") +
          (f", PREDLAB_CPU_ATTENTION={m['cpu_attention']}" if m.get("cpu_attention", "auto") != "auto" else "") +
          (f"; {m['date']}" if m.get("date") else "") + ("; --quick: smaller sizes" if res.get("quick") else ""))
    threads = m["threads"]
    print(f"float32 matmul (1024^2): {res['matmul_gflops']:.1f} GFLOP/s on {threads} thread{'s' * (threads != 1)}"
          + (f", {res['matmul_gflops_1thread']:.1f} on 1" if threads != 1 else ""))
    if threads > 1 and res["matmul_gflops"] < res["matmul_gflops_1thread"]:
        print(f"note: the {threads}-thread peak measured below the 1-thread one: the machine was busy, and the "
              f"fractions of it below read high")
    print()
    rows = [("figure", "samples/s", "1 thread", "x naive", "x seed", "target", "met")]
    # the training targets and the seed's figures are of 2 threads: not judged at others
    judged = threads == 2

    def line(label, rate, one, naive, seed, target):
        rows.append((label, f"{rate:,.0f}", one, f"{rate / naive:.1f}" if naive else "",
                     f"{rate / seed:.1f}" if seed else "", f"{target:,.0f}" if target else "",
                     ("yes" if rate >= target else "no") if target else ""))

    g = res["generate"]
    by = g["by_threads"]
    line(f"data generation (1 process, {g['threads']} thr)", g["samples_per_s"], f"{by['1']['samples_per_s']:,.0f}",
         g["naive"]["samples_per_s"], SEED_MEASURED["generate_cpu"], TARGETS["generate"])
    for key, label in (("train_default", "training, default episodes"), ("train_50", "training, 50 boids")):
        r = res[key]
        parts = r.get("parts", 1)
        # the seed's 470 was measured on its default episodes only: at 50 boids it is no baseline
        line(f"{label} ({threads} thr{f', {parts} parts' if parts > 1 else ''})", r["samples_per_s"],
             f"{r['one_thread']:,.0f}", r["naive"]["samples_per_s"],
             SEED_MEASURED["train_cpu"] if key == "train_default" and judged else None,
             TARGETS[key] if judged else None)
    g_res = res.get("gpu")
    if g_res and g_res.get("error"):
        rows.append(("training, GPU", "failed", "", "", "", f"{TARGETS['train_gpu']:,.0f}", "?"))
    elif g_res:
        best = trainer_best(g_res["train"])
        line(f"training, GPU ({best['mode']}, batch {best['batch_size']})", best["samples_per_s"], "", None,
             SEED_ADVERTISED["train_gpu"], TARGETS["train_gpu"])
        fastest = max((r for r in g_res["train"] if r["data"] == "default"), key=lambda r: r["samples_per_s"])
        if fastest["samples_per_s"] > best["samples_per_s"]:     # a variant: listed, not judged (see the GPU table)
            line(f"training, GPU ({fastest['mode']}, batch {fastest['batch_size']})*", fastest["samples_per_s"], "",
                 None, None, None)
    else:
        rows.append(("training, GPU", "not measured", "", "", "", f"{TARGETS['train_gpu']:,.0f}", "?"))
    # the label column as wide as its longest label: a fixed 36 let "(2 thr, 2 parts)" push a row's figures right
    row = "{:<%d} {:>12} {:>9} {:>8} {:>8} {:>10} {:>4}" % max(len(r[0]) for r in rows)
    for r in rows:
        print(row.format(*r))
    if not judged:
        print(f"(the training targets and the seed's training figure are of 2 threads: not judged at {threads})")
    if any(r[0].endswith("*") for r in rows):
        print("(* not predlab.train's default numerics or kernels: bf16 and TF32 (--tf32, opt-in) change what the "
              "model computes, and the Triton kernels are opt-in; the target is judged on the row above it)")
    if g_res and g_res.get("error"):
        print(f"GPU: failed, the CPU figures above stand: {g_res['error'][:500]}\n"
              + "".join(g_res.get("traceback", "").splitlines(keepends=True)[-8:]))
    print()
    for key, label in (("train_default", "default episodes"), ("train_50", "50 boids")):
        r = res[key]
        print(f"{label}: mean {r['mean_boids']:.1f} boids; {r['flop_per_sample'] / 1e6:.1f} MFLOP per training sample "
              f"(averaged over the samples' flock sizes) for the full model ({r['effective_gflops']:.1f} GFLOP/s "
              f"effective), {r['executed_flop_per_sample'] / 1e6:.1f} "
              f"MFLOP executed (last block CLS only): {r['gflops']:.1f} GFLOP/s = "
              f"{100 * r['fraction_of_matmul_peak']:.0f}% of the measured matmul peak "
              f"({100 * r['effective_fraction_of_matmul_peak']:.0f}% at the full model's count)")
    a = res["attention_cpu"]
    w = a["whole_batch"]
    how = (f"one split part's {a['batch_size']} rows on {a['threads']} thread(s), as training runs it"
           if a["parts"] > 1 else f"batch {a['batch_size']} on {a['threads']} thread(s)")
    def kernels(r):
        base = r.get("fused_ms") or r["sliced_ms"]
        return ((f"predlab's fused kernel {r['fused_ms']:.1f} ms, " if r.get("fused_ms") else "")
                + f"predlab's sliced kernel {r['sliced_ms']:.1f} ms ({r['sliced_ms'] / base:.2f}x), "
                f"F.scaled_dot_product_attention {r['sdpa_ms']:.1f} ms ({r['sdpa_ms'] / base:.2f}x)")
    whole = f"; the whole batch of {w['batch_size']} on {w['threads']} thread(s): {kernels(w)}"
    print(f"attention, forward + backward of one layer at {a['tokens']} tokens (CPU), {how}: {kernels(a)}"
          + ("" if a["parts"] <= 1 else whole))
    gg = res.get("geglu_cpu")
    if gg:
        print(f"GEGLU gate, forward + backward of one layer at batch {gg['batch_size']} x {gg['tokens']} tokens (CPU): "
              f"predlab's fused kernel {gg['fused_ms']:.1f} ms, torch's ops {gg['torch_ms']:.1f} ms "
              f"({gg['torch_ms'] / gg['fused_ms']:.2f}x)")
    d = res.get("dagger_cpu")
    if d:
        print(f"DAgger episodes, the model driving ({d['episodes']} episodes of {d['frames']} frames, CPU): "
              f"{d['samples_per_s']:,.0f} samples/s; one padded forward on all threads, as before: "
              f"{d['padded_samples_per_s']:,.0f} ({d['samples_per_s'] / d['padded_samples_per_s']:.2f}x)")
    mem = res["memory_cpu_b256_n50"]
    how = (f"{mem['parts']} parts side by side, one thread each, as training runs it" if mem.get("parts", 1) > 1 else
           f"one forward on {mem.get('threads', m['threads'])} thread(s), as training runs it")
    peak = (f"peak {mem['peak_mib']:.1f} MiB above the memory before the step (the C allocator's count, polled; the "
            f"most of {mem['peak_steps']} steps); " if mem.get("peak_mib") is not None else "")
    print(f"training memory, one step at batch {mem.get('rows', 256)} x 50 boids (CPU, {how}): {peak}activations "
          f"saved for backward {mem['activations_mib']:.1f} MiB + weights/grads/AdamW {mem['state_mib']:.1f} MiB = "
          f"{mem['total_mib']:.1f} MiB" + (f"; the memory check counts {mem['counted_mib']:.1f} MiB for them" if
                                            mem.get("counted_mib") else "") +
          (f"; the bench process's peak RSS {mem['process_peak_rss_mib']:.0f} MiB"
           if mem.get("process_peak_rss_mib") is not None else ""))
    print(f"naive baselines (the seed's design, measured in this run: per-sample dicts, torch's ops alone; warmed "
          f"up; generation over 4 episodes, training the best of a few steps): generation "
          f"{g['naive']['samples_per_s']:,.0f}/s, "
          f"training {res['train_default']['naive']['samples_per_s']:,.0f}/s default, "
          f"{res['train_50']['naive']['samples_per_s']:,.0f}/s at 50 boids")
    print(f"seed figures (quoted, not from this run): {SEED_MEASURED['train_cpu']:.0f} training / "
          f"{SEED_MEASURED['generate_cpu']:.0f} generation samples/s measured on 2 cores; "
          f"advertised {SEED_ADVERTISED['train_cpu']:.0f} CPU / "
          f"{SEED_ADVERTISED['train_gpu']:,.0f} GPU")
    if g_res and not g_res.get("error"):
        print()
        print_gpu_table(g_res)


_STDERR_CLOSED = []     # set once a progress line met a stderr whose reader had gone: the run ends with PIPE_CLOSED


def _progress(line: str) -> None:
    """A progress line on stderr. A reader gone (`2>&1 | head`) silences stderr and the run goes on: the
    BrokenPipeError was taken for the GPU failing, and its own line raised again, losing every figure."""
    try:
        print(line, file=sys.stderr, flush=True)
    except BrokenPipeError:
        silence_stderr()
        _STDERR_CLOSED.append(True)


def main(argv=None) -> int:
    from .export import command_line
    with command_line():     # a SIGTERM stops it as a Ctrl-C does; a closed stdout is exit code 141
        return _main(argv)


def _main(argv) -> int:
    p = FlagParser(prog="python -m predlab.bench", description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT (- or /dev/stdout for "
                                                 "stdout, the table then going to stderr)")
    p.add_argument("--quick", action="store_true", help="smaller sizes (about 15 s on 2 cores, against ~40 s)")
    # bounded_number, as predlab.train's flags: 1e3 or 1e-3 got argparse's "invalid int value", which
    # said nothing of what is accepted
    p.add_argument("--threads", type=bounded_number(int, 1), default=None,
                   help="torch CPU threads (default 2, or 1 where this process may use one CPU)")
    p.add_argument("--cpu_split", "--cpu-split", type=bounded_number(int, 0), default=0, metavar="N",
                   help="split each CPU training batch into N parts in threads, as predlab.train's --cpu_split "
                        "(default 0: its auto, one part per thread up to 4; 1 = off): compare them on a machine "
                        "of more cores, with --threads")
    p.add_argument("--gpu-only", action="store_true", help="only the GPU figures (needs a CUDA GPU)")
    p.add_argument("--gpu-batches", default=",".join(map(str, GPU_BATCHES)), metavar="B1,B2,...",
                   help=f"batch sizes of the GPU sweep (default {','.join(map(str, GPU_BATCHES))})")
    p.add_argument("--gpu-modes", metavar="M1,M2,...",
                   help="only these modes of the GPU sweep, at every batch size, with 'graphs fp32' (the "
                        "baseline of the ratios) always measured; names as the GPU table prints them, e.g. "
                        "'graphs triton both,graphs bf16 triton' (default: all, variants from batch "
                        f"{VARIANT_MIN_BATCH} on)")
    a = p.parse_args(argv)
    _STDERR_CLOSED.clear()
    from .export import as_typed, names_stdout
    a.json = as_typed(a.json)
    if a.json not in (None, "-") and names_stdout(a.json):      # the JSON was renamed over the table written there
        a.json = "-"
    if a.gpu_only and (a.threads is not None or a.cpu_split):
        print("note: --gpu-only measures nothing on the CPU: --threads and --cpu_split have nothing to set",
              file=sys.stderr)
    modes = None
    if a.gpu_modes is not None:
        known = {**GPU_MODES, **VARIANT_MODES}
        names = [m.strip() for m in a.gpu_modes.split(",") if m.strip()]
        unknown = [m for m in names if m not in known]
        if unknown or not names:
            p.error(f"--gpu-modes: unknown mode(s) {', '.join(map(repr, unknown)) or 'none given'}; "
                    f"known here: {', '.join(known)}")
        modes = {m: known[m] for m in ["graphs fp32"] + [m for m in names if m != "graphs fp32"]}
    from .data import usable_cpus
    if a.threads is None:
        a.threads = min(2, usable_cpus())
    elif a.threads > usable_cpus():    # torch's pools of 100000 threads crashed the process
        print(f"note: --threads {a.threads}, but this process may use {usable_cpus()} CPU(s): measuring with "
              f"{usable_cpus()}", file=sys.stderr)
        a.threads = usable_cpus()
    batches = batch_sizes(a.gpu_batches)
    if not batches:
        p.error(f"--gpu-batches: comma-separated positive whole numbers, got {a.gpu_batches!r}")
    if a.gpu_only and not torch.cuda.is_available():
        p.error("--gpu-only: this torch build sees no CUDA GPU")
    if torch.cuda.is_available():    # a batch past the memory was an out-of-memory kill, or a traceback, minutes in
        problem = gpu_sweep_memory(batches, a.quick)
        if problem:
            p.error(f"--gpu-batches: {problem}; give smaller batches")
    # the values, not the words typed: argparse takes --gpu-b for --gpu-batches
    if not torch.cuda.is_available() and (a.gpu_batches != p.get_default("gpu_batches") or a.gpu_modes is not None):
        print("note: this torch build sees no CUDA GPU, so --gpu-batches and --gpu-modes have nothing to measure",
              file=sys.stderr)
    if a.json is not None and a.json != "-":         # "-": the JSON on stdout, after the table
        from .export import refuse_unwritable
        refuse_unwritable(p, "--json", a.json, replaces="bench")
    t0 = time.perf_counter()
    res, code = None, 0
    import contextlib
    # --json -: stdout holds the JSON alone, for a pipe to parse (json.load failed on the table before it); the
    # table goes to stderr
    table_out = contextlib.redirect_stdout(sys.stderr) if a.json == "-" else contextlib.nullcontext()
    try:
        with table_out:
            if a.gpu_only:
                res = {"machine": machine(torch.get_num_threads()), "gpu": run_gpu(quick=a.quick, batches=batches,
                                                                                    modes=modes)}
                best = trainer_best(res["gpu"]["train"])
                res["train_gpu"] = best and best["samples_per_s"]
                res["train_gpu_mode"] = best and best["mode"]
                res["targets"] = {"train_gpu": TARGETS["train_gpu"]}
                res["met"] = {"train_gpu": None if best is None else best["samples_per_s"] >= TARGETS["train_gpu"]}
                print_gpu_table(res["gpu"])
            else:
                res = run(quick=a.quick, threads=a.threads, gpu_batches=batches, gpu_modes=modes,
                          cpu_split=a.cpu_split)
                print_table(res)
            sys.stdout.flush()
    except KeyboardInterrupt as e:       # Ctrl-C, or a SIGTERM
        from .export import stop_words
        word, code = stop_words(e)
        print(f"\n{word}: the bench stopped" + (f", and {a.json} was not written" if a.json not in (None, "-")
                                                 else ""), file=sys.stderr)
        return code
    except BrokenPipeError:              # stdout's reader has gone (`| head`): a --json file is written all the same
        if res is None:
            raise
        from .export import PIPE_CLOSED, silence_stdout
        if a.json == "-":     # the table's stream, stderr (`2>&1 >figures.json | head`): the JSON goes on to stdout
            silence_stderr()
        else:
            silence_stdout()
        code = PIPE_CLOSED
    res["bench_seconds"] = time.perf_counter() - t0
    # which run a --json file is of: a --quick one read the same as a full one
    res["command"] = "python -m predlab.bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    res["quick"] = a.quick
    try:
        print(f"\nbench took {res['bench_seconds']:.0f} s", file=sys.stderr if a.json == "-" else sys.stdout)
    except BrokenPipeError:     # the table's reader gone after the table: the JSON is written all the same
        from .export import PIPE_CLOSED, silence_stdout
        if a.json == "-":
            silence_stderr()
        else:
            silence_stdout()
        code = PIPE_CLOSED
    if a.json == "-":
        try:
            print(json.dumps(strict_json(res), indent=2, allow_nan=False), flush=True)
        except BrokenPipeError:        # stdout's reader gone too
            from .export import PIPE_CLOSED, silence_stdout
            silence_stdout()
            return PIPE_CLOSED
    elif a.json is not None:
        from .export import atomic_write_text
        try:     # after the whole run: a full disk is a line, the table above stays, the old file whole
            atomic_write_text(a.json, json.dumps(strict_json(res), indent=2, allow_nan=False) + "\n")
        except OSError as e:
            print(f"{p.prog}: error: cannot write {a.json}: {e.strerror or e}", file=sys.stderr)
            return 1
    from .export import PIPE_CLOSED
    return PIPE_CLOSED if _STDERR_CLOSED and code == 0 else code


if __name__ == "__main__":
    raise SystemExit(main())
