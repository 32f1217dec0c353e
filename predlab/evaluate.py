"""Closed-loop evaluation: a policy drives the predator over fixed seeded episodes; count catches.

Every policy (teacher, a TransformerPredator, a checkpoint, a model.js/.json file, or the
"random" baseline) sees exactly the same starting episodes for a given seed, all stepped
together (a Python loop over frames only): on a CPU in predlab.fastsim's kernels, as training
episodes are generated, on a GPU as one batched World. No exploration noise.

Figures (fixed horizon of `frames` frames per episode, whether or not the flock is gone):
  catches_per_1k     boids caught per 1,000 episode-frames
  first_catch_frames mean frame of the first catch; an episode without a catch counts as
                     `frames` (censored at the horizon), so the mean is an optimistic lower
                     bound of the true time for weak policies; see first_catch_rate
  first_catch_rate   fraction of episodes with at least one catch
  flock_caught       mean over episodes of caught / starting boids
  catch_ratio        policy catches / teacher catches on the same episodes (NaN if the
                     teacher catches nothing: make the horizon longer)
  catch_ratio_interval  its 95% interval by resampling the episodes (catch_ratio_interval())

Run as `python -m predlab.evaluate PATH|teacher|random [--episodes N --frames T --seed S]`; the
episodes come from a checkpoint's own world (else the browser's), and the world flags of
`predlab.train` (--boids_max ...) replace single values.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .config import (BROWSER_SIZES, MAX_FRAMES, SEED_MAX, FlagParser, WorldConfig, add_config_flags, as_config,
                     as_device, bounded_number, from_dict, memory_problem, plural, real_number,
                     resolve_device, strict_json, whole_number)
from .data import InputError, NonFiniteActions, check_actions, chunk_seed, kernel_arrays, usable_cpus
from .export import say
from .model import TransformerPredator, check_has_weights, forward_bytes
from .sim import World, host_to_device, step_bytes
from .teacher import closest_pursuit
from .train import AUTO_SPLIT_MAX, EVAL_STREAM, Callback, _split_pool, on_split_thread

try:  # the CPU frame as numba kernels, as generation steps it; without numba, the torch World
    from . import fastsim
except ImportError:  # pragma: no cover - numba is a dependency
    fastsim = None

Tensor = torch.Tensor
Batch = Dict[str, Tensor]
MODEL_CHUNK = 256        # envs per model forward: bounds the [B, H, T, T] attention memory
# A CPU forward's cost, in tokens' worth of work, for planning its chunks (plan_chunks). One thread
# of an Intel Xeon, batches of 4 to 180 flocks of 1 to 100 boids: ~0.6 ms a forward whatever its
# size, the work of ~350 tokens, then a sample of T tokens costs about T (1 + T / 115), and more past
# 50 boids, where the attention's weights leave the cache.
CHUNK_FIXED_TOKENS = 384
CHUNK_QUADRATIC_TOKENS = 64
# Tokens per CPU chunk at most: a DAgger frame of 100 flocks of 50 boids runs as two chunks side by
# side, not one on one thread (2.4-3.5 s an epoch against 3.7-4.8 at 16,384 and 3.6-4.2 before the
# chunks ran on one thread each, NOTES.md), and the chunks in flight at once stay small.
MODEL_CHUNK_TOKENS = 4096


# ---------------------------------------------------------------------- policies
class RandomPolicy:
    """Uniform random action in [-1, 1]^2 each frame; reseeded by rollout() for reproducibility."""

    def __init__(self, seed: int = 0):
        self.reset(seed)

    def reset(self, seed: int) -> None:
        # torch's "manual_seed expected a long, but got float" named no argument, and it took -1
        self.generator = torch.Generator().manual_seed(whole_number("seed", seed, 0, SEED_MAX))

    def __call__(self, batch: Mapping[str, Tensor]) -> Tensor:
        E = batch["context"].shape[0]
        # drawn on the host (the same actions on every device), sent without waiting for the device
        return host_to_device(torch.rand(E, 2, generator=self.generator, dtype=torch.float32) * 2 - 1,
                              batch["context"].device)


def teacher_policy(batch: Mapping[str, Tensor]) -> Tensor:
    """Closest pursuit as a policy: [E, 2] unit vectors."""
    return closest_pursuit(batch["boids"], batch["mask"])


def _device(device) -> torch.device:
    """A torch.device as it is (a training check's, for a GPU that may not be here), or one named."""
    return device if isinstance(device, torch.device) else as_device(device)


def kernel_step_bytes(episodes: int, boids_max: int) -> int:
    """Bytes, about, of stepping `episodes` episodes in predlab.fastsim's kernels (a CPU's rollout): the
    World drawn and the kernels' copy of it, their scratch and each frame's observation, [E, N] terms
    only; the kernels make no [E, N, N] planes. Measured (peak RSS, a teacher's rollout): 90-140 bytes a
    boid and 1.5-3 KB an episode, from 10 boids x 20,000 episodes to 2,000 x 64."""
    return episodes * (160 * boids_max + 2048)


def rollout_in_kernels(device="cpu") -> bool:
    """Whether rollout steps its episodes on `device` in predlab.fastsim's kernels (a CPU, numba there)
    rather than in the torch World."""
    return _device(device).type == "cpu" and fastsim is not None


def rollout_step_bytes(episodes: int, boids_max: int, device="cpu") -> int:
    """Bytes of stepping `episodes` episodes together as rollout does on `device`: in predlab.fastsim's
    kernels on a CPU, the torch World's step elsewhere (sim.step_bytes: its [E, N, N] planes)."""
    return (kernel_step_bytes if rollout_in_kernels(device) else step_bytes)(episodes, boids_max)


def policy_forward_bytes(config, episodes: int, boids_max: int, device="cpu", dtype=torch.float32,
                         threads: Optional[int] = None) -> int:
    """Bytes, at most, that ModelPolicy's forwards of a model of this ModelConfig hold at once over a frame
    of `episodes` flocks of up to boids_max boids: on a CPU of `threads` torch threads (None: the threads
    set now), up to AUTO_SPLIT_MAX chunks side by side on one thread each, of at most MODEL_CHUNK flocks
    and about MODEL_CHUNK_TOKENS tokens (plan_chunks); elsewhere one chunk of MODEL_CHUNK flocks at a time."""
    T, device = boids_max + 3, _device(device)
    if device.type != "cpu":
        return forward_bytes(min(episodes, MODEL_CHUNK), T, config, device.type, dtype)
    envs = min(episodes, MODEL_CHUNK, max(1, -(-MODEL_CHUNK_TOKENS // T)))
    threads = torch.get_num_threads() if threads is None else threads
    side = max(1, min(threads, usable_cpus(), AUTO_SPLIT_MAX, -(-episodes // envs)))
    return side * forward_bytes(envs, T, config, "cpu", dtype, threads=1)


def episodes_memory_problem(episodes: int, boids_max: int, device="cpu", model=None) -> Optional[str]:
    """Why `episodes` episodes of up to boids_max boids, stepped together on `device` (and driven by
    `model`'s forwards, a TransformerPredator, where given), cannot fit in memory, or None. On a CUDA
    device they are counted against its memory."""
    device = _device(device)
    needs = [(f"{episodes} episodes of up to {boids_max} boids stepped together"
              + ("" if rollout_in_kernels(device) else " (their number x boids squared)"),
              rollout_step_bytes(episodes, boids_max, device))]
    if model is not None:
        p = next(model.parameters())
        needs.append((f"the model's forwards over {boids_max + 3} tokens ({boids_max} boids)",
                      policy_forward_bytes(model.config, episodes, boids_max, device, p.dtype)))
    if device.type == "cuda":
        return memory_problem(needs, f"{episodes} episodes", torch.cuda.get_device_properties(device).total_memory,
                              f"the {{}} of {torch.cuda.get_device_name(device)}")
    return memory_problem(needs, f"{episodes} episodes")


def plan_chunks(counts: Sequence[int], max_envs: int = MODEL_CHUNK,
                max_tokens: int = MODEL_CHUNK_TOKENS) -> List[Tuple[int, int]]:
    """Chunks (start, end) over envs sorted by live boid count (counts ascending, each >= 1), each to
    be padded to its last env's count: the split of least cost by the CPU cost model above (a fixed
    cost per forward against the padding it saves), then any chunk of more than max_envs envs or
    max_tokens tokens cut into equal parts. Depends on the counts only, never on the threads."""
    ends, widths = [], []                       # runs of equal counts: a cut never falls inside one
    for i, c in enumerate(counts):
        if widths and widths[-1] == c:
            ends[-1] = i + 1
        else:
            widths.append(c)
            ends.append(i + 1)
    G = len(widths)
    best, cut = [0.0] + [math.inf] * G, [0] * (G + 1)
    for j in range(1, G + 1):                   # best[j]: the cheapest split of the first j runs
        T = widths[j - 1] + 3
        per_env = T * (1 + T / CHUNK_QUADRATIC_TOKENS)
        for i in range(j):
            cost = best[i] + CHUNK_FIXED_TOKENS + (ends[j - 1] - (ends[i - 1] if i else 0)) * per_env
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks, j = [], G
    while j:
        i = cut[j]
        lo, hi = ends[i - 1] if i else 0, ends[j - 1]
        parts = max(math.ceil((hi - lo) / max_envs), math.ceil((hi - lo) * (widths[j - 1] + 3) / max_tokens))
        chunks += [(lo + (hi - lo) * (k - 1) // parts, lo + (hi - lo) * k // parts) for k in range(parts, 0, -1)]
        j = i
    return chunks[::-1]


@contextlib.contextmanager
def _torch_threads(n: int):
    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if old != n:
            torch.set_num_threads(old)


def _forward(model: TransformerPredator, batch: Batch) -> Tensor:
    with torch.no_grad():                       # grad mode is the calling thread's own
        return model(batch)


def _check_shapes(batch) -> None:
    """InputError naming the key when batch is not a padded batch [E, ...] of tensors (values unread)."""
    if not isinstance(batch, Mapping):
        raise InputError(f"a policy takes a batch dict of tensors (World.observe(), data.collate), not "
                         f"{type(batch).__name__}")
    for k in ("context", "predator", "boids", "mask"):
        if not isinstance(batch.get(k), Tensor):
            raise InputError(f"batch[{k!r}] must be a tensor, got {type(batch.get(k)).__name__}")
    for k in ("context", "predator", "boids"):     # integer states gave integer actions: every one 0
        if not batch[k].dtype.is_floating_point:
            raise InputError(f"batch[{k!r}] is {batch[k].dtype}: states are float tensors (.float())")
    b = batch["boids"]
    if b.dim() != 3 or b.shape[2] != 4:
        raise InputError(f"batch['boids'] has shape {tuple(b.shape)}, expected (E, N, 4) (one state: v[None])")
    E, N = b.shape[:2]
    want = {"context": (E, 2), "predator": (E, 2), "mask": (E, N)}
    for k, shp in want.items():
        if tuple(batch[k].shape) != shp:
            raise InputError(f"batch[{k!r}] has shape {tuple(batch[k].shape)}, expected {shp}")


class ModelPolicy:
    """A TransformerPredator as a batched policy: eval mode, no_grad, on the model's device.

    Live boids are moved to the front and envs sorted by live count before the forward, so a
    chunk of envs is padded only to its own widest flock. Envs with no live boid get action
    (0, 0) without a forward. On a CPU the chunks are plan_chunks' (at most `chunk` envs each),
    each a forward on one thread, run side by side on up to as many threads as torch has (at
    most 4): a forward on 2 threads has a fixed cost of ~2 ms, more than the work of a DAgger
    frame's smaller flocks. The actions do not depend on the thread count. Elsewhere, chunks of
    `chunk` envs.
    """

    def __init__(self, model: TransformerPredator, chunk: int = MODEL_CHUNK):
        if not isinstance(model, TransformerPredator):
            raise TypeError(f"model must be a TransformerPredator, not {type(model).__name__}")
        check_has_weights(model)
        # chunk <= 0 ran no forward: every action (0, 0), scored as a predator that never steers
        self.model, self.chunk = model, whole_number("chunk", chunk, 1)

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, Tensor]) -> Tensor:
        p = next(self.model.parameters())
        _check_shapes(batch)      # shapes only: no value read, no wait for a GPU
        mask = batch["mask"].bool()
        n = mask.sum(1)                                                               # [E]
        out = torch.zeros(mask.shape[0], 2, dtype=batch["context"].dtype, device=mask.device)
        rows = (n > 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            return out
        rows = rows[torch.sort(n[rows], stable=True).indices]                         # by live count
        order = torch.sort((~mask[rows]).to(torch.int8), dim=1, stable=True).indices  # live first
        boids = batch["boids"][rows].gather(1, order[..., None].expand(-1, -1, 4))    # [R, N, 4]
        counts = n[rows].tolist()
        subs = []
        for lo, hi in self._plan(counts, p.device):
            idx, width = rows[lo:hi], counts[hi - 1]
            sub = {"context": batch["context"][idx], "predator": batch["predator"][idx],
                   "boids": boids[lo:hi, :width],
                   "mask": torch.arange(width, device=mask.device)[None, :] < n[idx][:, None]}
            subs.append((idx, {k: v.to(p.device) if k == "mask" else v.to(p.device, p.dtype) for k, v in sub.items()}))
        was_training = self.model.training
        self.model.eval()
        try:
            # the float32 model the page runs, inside a caller's own autocast too (a split's threads do not
            # inherit it; the main thread did)
            with torch.autocast(p.device.type, enabled=False):
                for idx, y in zip((idx for idx, _ in subs), self._forwards([sub for _, sub in subs], p.device)):
                    out[idx] = y.to(out)
        finally:
            self.model.train(was_training)
        if not bool(torch.isfinite(out).all()):     # scored as no catches, it read as a weak model
            bad = [k for k in ("context", "predator", "boids") if not bool(torch.isfinite(batch[k]).all())]
            if bad:
                raise InputError(f"batch[{bad[0]!r}] contains NaN or infinity")
            # finite, but beyond the model's float type, or so large that its sums overflow: not the weights
            big = [k for k in ("context", "predator", "boids") if batch[k].numel() and (
                   not bool(torch.isfinite(batch[k].to(p.dtype)).all()) or float(batch[k].abs().max()) > 1e6)]
            if big:
                raise InputError(f"batch[{big[0]!r}] holds values of {float(batch[big[0]].abs().max()):.3g}, beyond "
                                 f"what the model's inputs are (offsets and velocities of a few units, canvas sizes "
                                 f"in thousands of px / 1000): its actions overflowed")
            raise NonFiniteActions("the model's actions are NaN or infinite (its weights hold NaN or huge values: "
                             "training diverged, or the file is damaged), so its catches cannot be measured")
        return out

    def _plan(self, counts: List[int], device: torch.device) -> List[Tuple[int, int]]:
        """The chunks (start, end) of the envs sorted by live count."""
        return plan_chunks(counts, self.chunk) if device.type == "cpu" else self._even_chunks(len(counts))

    def _even_chunks(self, envs: int) -> List[Tuple[int, int]]:
        """Chunks of `chunk` envs in their sorted order."""
        return [(r, min(r + self.chunk, envs)) for r in range(0, envs, self.chunk)]

    def _forwards(self, subs: List[Batch], device: torch.device) -> List[Tensor]:
        """The model's actions for each chunk: on a CPU each on one thread, the largest first, on
        the threads of the trainer's split batches (none from one of those threads itself)."""
        if device.type != "cpu":
            return [self.model(sub) for sub in subs]
        workers = min(torch.get_num_threads(), usable_cpus(), AUTO_SPLIT_MAX)
        if workers <= 1 or len(subs) == 1 or on_split_thread():
            with _torch_threads(1):
                return [self.model(sub) for sub in subs]
        pool = _split_pool(workers)
        order = sorted(range(len(subs)), key=lambda i: -subs[i]["boids"].shape[:2].numel())
        futures = {i: pool.submit(_forward, self.model, subs[i]) for i in order}
        try:
            return [futures[i].result() for i in range(len(subs))]
        finally:
            for f in futures.values():
                f.cancel()                          # an error or a Ctrl-C: the chunks not started yet


def load_policy(spec, device: Union[str, torch.device] = "cpu") -> Callable[[Batch], Tensor]:
    """A batched policy from "teacher", "random", a model, a checkpoint (.pt) or a model.js/.json path.

    Raises FileNotFoundError for a missing file and CheckpointError / WeightFormatError
    (both ValueError) for a file that is not a usable model.
    """
    if isinstance(spec, TransformerPredator):
        return ModelPolicy(spec)
    if callable(spec) and not isinstance(spec, (str, Path)):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"a policy is a model, a callable, a checkpoint or model.js path, or 'teacher' / 'random', "
                        f"not {type(spec).__name__}")
    device = as_device(device)
    if str(spec) == "teacher":
        return teacher_policy
    if str(spec) == "random":
        return RandomPolicy()
    from .export import load_model_file
    model = load_model_file(spec, " (give a checkpoint .pt, a model.js/.json, or the words teacher / random)")
    return ModelPolicy(model.to(device).eval())


# ---------------------------------------------------------------------- rollouts
@dataclass
class Rollout:
    """Per-episode results of one policy: catches [E], first_catch [E] (frame, -1 = none), n_start [E]."""

    catches: Tensor
    first_catch: Tensor
    n_start: Tensor
    frames: int
    seconds: float
    # which episodes (rollout's episodes_key): a teacher's rollout of another world passed compare's check of its
    # flock sizes alone, and gave a ratio of two worlds (2.444 where the model scored 0.936)
    episodes_of: Optional[tuple] = None

    def summary(self) -> Dict[str, float]:
        """The figures of the module docstring (catch_ratio needs a teacher: see compare)."""
        E = self.catches.numel()
        caught = self.first_catch >= 0
        first = torch.where(caught, self.first_catch + 1, torch.full_like(self.first_catch, self.frames))
        return {"episodes": E, "frames": self.frames, "catches": int(self.catches.sum()),
                "catches_per_1k": 1000.0 * float(self.catches.sum()) / (E * self.frames),
                "first_catch_frames": float(first.double().mean()),
                "first_catch_rate": float(caught.double().mean()),
                "flock_caught": float((self.catches.double() / self.n_start.double()).mean()),
                "seconds": self.seconds}


def episodes_world(episodes: int, seed: int = 0, world_config: Optional[WorldConfig] = None,
                   device="cpu") -> World:
    """The seeded evaluation episodes: canvas sizes and flock sizes from world_config's ranges."""
    episodes, seed = whole_number("episodes", episodes, 1), whole_number("seed", seed, 0, SEED_MAX)
    world_config = as_config(WorldConfig, world_config, "world_config")
    g = torch.Generator().manual_seed(chunk_seed(seed, EVAL_STREAM, 0))
    return World.random(episodes, world_config, generator=g, device=as_device(device))


class _KernelFrames:
    """A CPU World's episodes stepped by predlab.fastsim's kernels, as generation steps its episodes:
    about 10x faster than World.step at 500 episodes of up to 50 boids. The two part by rounding, so
    catches differ from the torch World's (a GPU's) as a flock's chaos grows the differences.
    observe() gives each episode's live boids first; step(action) returns the boids caught [E]."""

    def __init__(self, world: World, cfg: WorldConfig):
        self.state, self.weights, self.live, self.snap = kernel_arrays(world, cfg)
        E, N = world.alive.shape
        self.dtype = self.state[0].dtype
        self.rows, self.slots = np.arange(E, dtype=np.int64), torch.arange(N)

    def observe(self) -> Batch:
        (E, N), d = self.state[2].shape, self.dtype
        ctx, pred, boids, n, target = (np.zeros((E, 2), d), np.zeros((E, 2), d), np.zeros((E, N, 4), d),
                                       np.zeros(E, np.int64), np.zeros((E, 2), d))
        fastsim.observe(self.state, self.rows, ctx, pred, boids, n, target)
        n = torch.from_numpy(n)
        return {"context": torch.from_numpy(ctx), "predator": torch.from_numpy(pred),
                "boids": torch.from_numpy(boids), "mask": self.slots[None, :] < n[:, None]}

    def any_alive(self) -> bool:
        return bool(self.live.any())

    def step(self, action: Tensor) -> Tensor:
        before = self.live.copy()
        fastsim.step(self.state, self.weights, np.ascontiguousarray(action.detach().numpy(), self.dtype), self.live,
                     self.snap)
        return torch.from_numpy(before - self.live)


_WORLD_FLAGS = tuple(f.name for f in dataclasses.fields(WorldConfig) if f.name not in ("frames", "noise"))


def episodes_key(seed: int, world_config: WorldConfig, device) -> tuple:
    """What makes rollout's episodes the same ones: the seed, the world that draws and steps them, and the
    device kind (a CPU's kernels and a GPU's torch world part by rounding)."""
    return (seed, tuple(getattr(world_config, k) for k in _WORLD_FLAGS), as_device(device).type)


def _world_of(policy) -> tuple:
    """(world, source): a checkpoint's own world and its path; else the browser's world and None.
    CheckpointError for a checkpoint whose world_config is no world."""
    from .checkpoint import load_checkpoint_dict
    if isinstance(policy, TransformerPredator) and isinstance(getattr(policy, "world_config", None), WorldConfig):
        return policy.world_config, None      # viz.load_best_model's: the world of the checkpoint it read
    if not isinstance(policy, (str, os.PathLike)) or str(policy) in ("teacher", "random"):
        return WorldConfig(), None
    path = Path(policy)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return WorldConfig(), None
    saved = load_checkpoint_dict(path).get("world_config")
    if not saved:
        return WorldConfig(), None
    return checkpoint_world(saved, path), str(path)


def checkpoint_world(saved: Optional[Mapping], path) -> WorldConfig:
    """The WorldConfig of a checkpoint's world_config dict (the browser's for none); CheckpointError naming path
    for one that is no world (a field this predlab does not know, a value out of range)."""
    from .checkpoint import CheckpointError
    try:
        world = from_dict(WorldConfig, saved or {})
        world.validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad world_config: {e}") from None
    return world


def world_differences(world: WorldConfig) -> List[str]:
    """How world differs from the browser's in what draws an evaluation's episodes (frames and noise aside):
    "width_max 800 (browser: 3840)", one per field."""
    return [f"{k} {getattr(world, k)} (browser: {getattr(WorldConfig, k)})" for k in _WORLD_FLAGS
            if getattr(world, k) != getattr(WorldConfig, k)]


@torch.no_grad()
def rollout(policy, episodes: int = 200, frames: int = 300, seed: int = 0,
            world_config: Optional[WorldConfig] = None, device="cpu", progress: Union[bool, str] = False) -> Rollout:
    """Let policy drive the predator in `episodes` seeded episodes for `frames` frames.

    world_config: by default a checkpoint's own world where policy is a checkpoint's path (the
    world its catch ratio was logged on), or a model's world_config (viz.load_best_model's: see compare),
    else the browser's.
    progress: a bar over the frames (a string is its label).
    Once every episode's flock is caught the rollout stops (checked every 8 frames): no later frame
    could change the figures."""
    if not isinstance(progress, (bool, str)):
        raise TypeError(f"progress must be True, False or a label, not {type(progress).__name__}")
    episodes, frames = whole_number("episodes", episodes, 1), whole_number("frames", frames, 1, MAX_FRAMES)
    seed = whole_number("seed", seed, 0, SEED_MAX)
    device = as_device(device)      # "auto" reached torch, which knows no such device, after the policy had taken it
    if policy is None:
        raise ValueError("policy is None: give a model, a checkpoint or model.js path, a callable, "
                         "or 'teacher' / 'random'")
    if world_config is None:
        world_config = _world_of(policy)[0]
    world_config = as_config(WorldConfig, world_config, "world_config")
    problem = episodes_memory_problem(episodes, world_config.boids_max, device)
    if problem:
        raise ValueError(problem + "; evaluate fewer episodes")
    policy = load_policy(policy, device)
    if isinstance(policy, ModelPolicy):     # its forwards too, at large flocks (a model of many heads, say)
        problem = episodes_memory_problem(episodes, world_config.boids_max, device, policy.model)
        if problem:
            raise ValueError(problem + "; evaluate fewer episodes or boids")
    if hasattr(policy, "reset"):
        policy.reset(seed)
    world = episodes_world(episodes, seed, world_config, device)
    n_start = world.n_alive.cpu()
    if world.pos.device.type == "cpu" and fastsim is not None:
        world = _KernelFrames(world, world_config)
    on = torch.device("cpu") if isinstance(world, _KernelFrames) else world.pos.device
    catches = torch.zeros(episodes, dtype=torch.long, device=on)
    first = torch.full_like(catches, -1)
    t0 = time.perf_counter()
    # a callable of the user's is checked each frame; a ModelPolicy checks its own actions, and the
    # teacher's and random ones are finite [E, 2] (no per-frame device sync for them on a GPU)
    check = not (isinstance(policy, (ModelPolicy, RandomPolicy)) or policy is teacher_policy)
    from tqdm.auto import tqdm
    with tqdm(total=frames, desc=progress if isinstance(progress, str) else "rollout", unit="frame",
              disable=not progress, leave=False) as bar:
        for f in range(frames):
            # every flock caught: no frame left can change the figures (frames=10**6 ran on for minutes); a
            # check every 8 frames, as generation's, so a GPU waits for the device only that often
            if f % 8 == 0 and f and not world.any_alive():
                bar.update(frames - f)
                break
            action = policy(world.observe())                                             # [E, 2]
            if check:
                action = check_actions(action, episodes, f"the policy's actions at frame {f}")
            caught = world.step(action)                                                  # [E]
            catches += caught
            first = torch.where((first < 0) & (caught > 0), torch.full_like(first, f), first)
            bar.update()
    return Rollout(catches.cpu(), first.cpu(), n_start, frames, time.perf_counter() - t0,
                   episodes_key(seed, world_config, device))


def compare(policy, episodes: int = 200, frames: int = 300, seed: int = 0,
            world_config: Optional[WorldConfig] = None, device="cpu", teacher: Optional[Rollout] = None,
            baselines: bool = True, progress: bool = False) -> Dict:
    """Policy vs teacher (vs random) on the same episodes -> a dict of plain numbers, lists and strings with
    catch_ratio on top. A ratio where the teacher caught nothing, and its interval, are NaN:
    json.dumps(predlab.config.strict_json(result)) writes them as null, as `--json` does (JSON has no NaN).

    Pass a teacher Rollout computed earlier on the same episodes to skip re-running it.
    world_config: by default a checkpoint's own world where policy is a checkpoint's path, or the world a
    model of viz.load_best_model was trained in (its world_config, which a trainer in another world drops),
    else the browser's (as `python -m predlab.evaluate` does).
    progress: a bar over the frames of each rollout.
    """
    for name, flag in (("baselines", baselines), ("progress", progress)):     # baselines="no" ran them
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, not {type(flag).__name__}")
    # checked here too: the teacher check below builds the episodes before rollout would name a bad value
    episodes, frames = whole_number("episodes", episodes, 1), whole_number("frames", frames, 1, MAX_FRAMES)
    seed = whole_number("seed", seed, 0, SEED_MAX)
    carried = world_config is None and isinstance(getattr(policy, "world_config", None), WorldConfig)
    if world_config is None:
        world_config = _world_of(policy)[0]
    world_config = as_config(WorldConfig, world_config, "world_config")
    kw = dict(episodes=episodes, frames=frames, seed=seed, world_config=world_config, device=as_device(device))
    if teacher is not None:     # the teacher's rollout of other episodes gave a wrong ratio, silently
        if not isinstance(teacher, Rollout):
            raise TypeError(f"teacher must be a Rollout of the teacher on the same episodes, not "
                            f"{type(teacher).__name__}")
        same = episodes_world(episodes, seed, world_config).n_alive     # before the rollouts' work
        if (teacher.frames != frames or teacher.n_start.shape != same.shape or not torch.equal(teacher.n_start, same)
                or teacher.episodes_of not in (None, episodes_key(seed, world_config, kw["device"]))):
            raise ValueError(f"teacher is a Rollout of other episodes ({teacher.catches.numel()} x {teacher.frames} "
                             f"frames, or another seed or world) than these {episodes} x {frames}"
                             + (" (drawn from policy.world_config, the world its checkpoint was trained in: pass "
                                "world_config= for another)" if carried else ""))
    mine = rollout(policy, **kw, progress=progress and "policy")
    itself = policy is teacher_policy or (isinstance(policy, str) and policy == "teacher")
    if teacher is None and itself:
        teacher = mine           # the teacher against itself: the same rollout, not run twice
    teacher = teacher or rollout("teacher", **kw, progress=progress and "teacher")
    out = {"catch_ratio": catch_ratio(mine, teacher), "catch_ratio_interval": catch_ratio_interval(mine, teacher),
           "episodes": episodes, "frames": frames, "seed": seed, "policy": mine.summary(), "teacher": teacher.summary()}
    if itself:
        out["policy_is_teacher"] = True    # format_table: no interval ever, whatever the episodes
    if baselines:
        rnd = rollout("random", **kw, progress=progress and "random")
        out["random"] = rnd.summary()
        out["random_catch_ratio"] = catch_ratio(rnd, teacher)
    return out


def catch_ratio(student: Rollout, teacher: Rollout) -> float:
    """Student catches / teacher catches on the same episodes (NaN when the teacher caught none)."""
    _same_episodes(student, teacher)
    t = int(teacher.catches.sum())
    return float(student.catches.sum()) / t if t else math.nan


def _same_episodes(student: Rollout, teacher: Rollout) -> None:
    s, t = student.catches.reshape(-1), teacher.catches.reshape(-1)
    if s.shape != t.shape:     # a ratio over other episodes reads as a real one
        raise ValueError(f"the student's {s.numel()} episodes and the teacher's {t.numel()} are not the same "
                         f"episodes")


INTERVAL_LEVEL = 0.95
INTERVAL_RESAMPLES = 2000
# episodes in which the policy's catches and the teacher's differ, below which no interval is given: only those
# move a resample's ratio. A trained model against the teacher on 16 episodes (8 catches each) gave "95% interval
# 1.000-1.000", and such intervals held the ratio of 10,240 episodes 57.5% of the time (82% at 32 episodes)
MIN_DIFFERING = 10


def catch_ratio_interval(student: Rollout, teacher: Rollout, level: float = INTERVAL_LEVEL,
                         resamples: int = INTERVAL_RESAMPLES, seed: int = 0,
                         min_differing: int = MIN_DIFFERING) -> Dict[str, float]:
    """How far catch_ratio could move on other episodes: a `level` interval by the paired bootstrap.

    The episodes are drawn again with replacement `resamples` times, each keeping the student's and
    the teacher's catches of the same flock; the interval holds the middle `level` of the resamples'
    ratios (percentiles, no interpolation). Seeded, so the same rollouts give the same interval.
    For a trained model near the teacher, 64 episodes gave 0.837 (0.621-1.050) and 500 episodes
    1.079 (0.993-1.167): a ratio under 1 from few episodes does not show a model worse than the teacher.
    -> {"level", "low", "high", "resamples", "differing", "min_differing"}; low and high are NaN where the
    teacher caught nothing, and where fewer than min_differing episodes have the student's catches differ
    from the teacher's ("differing"): the resamples of a few such episodes among many alike agree by
    construction, not because the ratio is certain (a single episode likewise: every resample of it is
    that episode).
    A resample in which the teacher caught nothing has an infinite ratio if the student caught any,
    and none (it is left out) if neither did.
    """
    level = real_number("level", level, 0, 1)
    if level in (0, 1):
        raise ValueError(f"level must be between 0 and 1 (the share of resamples the interval holds), got {level}")
    resamples = whole_number("resamples", resamples, 1)
    seed = whole_number("seed", seed, 0, SEED_MAX)     # 1.5 failed in torch's words, naming no argument; -1 was taken
    _same_episodes(student, teacher)
    min_differing = whole_number("min_differing", min_differing, 0)
    s, t = student.catches.reshape(-1).double(), teacher.catches.reshape(-1).double()
    out = {"level": level, "low": math.nan, "high": math.nan, "resamples": resamples,
           "differing": int((s != t).sum()), "min_differing": min_differing}
    if not float(t.sum()) or s.numel() < 2 or out["differing"] < min_differing:
        return out
    g = torch.Generator().manual_seed(seed)
    E, ratios = s.numel(), []
    per_chunk = max(1, (1 << 22) // E)          # bounds the [resamples, episodes] index memory
    for start in range(0, resamples, per_chunk):
        idx = torch.randint(0, E, (min(per_chunk, resamples - start), E), generator=g)
        ratios.append(s[idx].sum(1) / t[idx].sum(1))
    r = torch.cat(ratios)
    r = r[~r.isnan()].sort().values               # 0 / 0: no ratio in that resample
    n, tail = r.numel(), (1 - level) / 2
    if n:
        out["low"] = float(r[min(n - 1, int(math.floor(tail * n)))])
        out["high"] = float(r[max(0, int(math.ceil((1 - tail) * n)) - 1)])
    return out


# ---------------------------------------------------------------------- trainer callback
class CatchEvaluator(Callback):
    """Closed-loop catches every `every` epochs, into the epoch logs.

    Adds catch_ratio, its 95% interval (catch_ratio_low, catch_ratio_high: catch_ratio_interval),
    catches_per_1k and neg_catch_ratio (the trainer minimises its monitor, so
    select-best-by-catch-ratio monitors neg_catch_ratio). Runs in the trainer's
    on_evaluate hook, before the best-epoch decision. The teacher's rollout on the same
    episodes is computed once and reused (again for another trainer's world or device).
    progress: a bar over the frames of each rollout (500 episodes, or flocks of 200 boids, take
    a minute on a laptop's CPU, and nothing else on screen moves meanwhile).
    """

    def __init__(self, every: int = 5, episodes: int = 64, frames: int = 300, seed: int = 0,
                 progress: bool = False):
        # checked now: a bad value found at the first evaluation loses that epoch's training
        every, episodes, frames = (whole_number(n, v, 1, hi) for n, v, hi in
                                   (("every", every, None), ("episodes", episodes, None),
                                    ("frames", frames, MAX_FRAMES)))
        seed = whole_number("seed", seed, 0, SEED_MAX)
        if not isinstance(progress, bool):     # progress="no" is a true string: bars shown
            raise TypeError(f"progress must be True or False, not {type(progress).__name__}")
        self.every, self.episodes, self.frames, self.seed = every, episodes, frames, seed
        self.progress = bool(progress)
        self.teacher: Optional[Rollout] = None
        self._teacher_episodes = None

    def due(self, trainer, epoch: int) -> bool:
        """Every `every` epochs; also the last one when it decides the best model (short runs)."""
        last = epoch == trainer.target_epochs and trainer.monitor == "neg_catch_ratio"
        return epoch % self.every == 0 or last

    def on_evaluate(self, trainer, epoch: int, logs: Dict[str, float]) -> None:
        if self.due(trainer, epoch):
            self.measure(trainer, logs, f"epoch {epoch}")

    def measure(self, trainer, logs: Dict[str, float], label: str) -> None:
        """The catch figures of trainer.model as it is now, into logs (label: what the progress bar and a
        warning call the model, "epoch 5" say)."""
        kw = dict(episodes=self.episodes, frames=self.frames, seed=self.seed, world_config=trainer.world_config,
                  device=trainer.device)
        # the episodes the teacher's rollout was run on: an evaluator given to a second trainer (another world,
        # a notebook cell run again) scored its model against the first world's teacher, a ratio of two worlds
        episodes = (self.episodes, self.frames, self.seed, copy.deepcopy(trainer.world_config), str(trainer.device))
        if self.teacher is None or episodes != self._teacher_episodes:
            self.teacher = rollout("teacher", **kw, progress=self.progress and "catch check (teacher)")
            self._teacher_episodes = episodes
            if not int(self.teacher.catches.sum()):
                say(f"warning: the teacher catches nothing in {plural(self.episodes, 'episode')} x "
                    f"{plural(self.frames, 'frame')}, so "
                    "catch_ratio is NaN: raise eval_episodes or eval_frames", file=sys.stderr)
        try:
            mine = rollout(ModelPolicy(trainer.model), **kw,
                           progress=self.progress and f"catch check ({label})")
        except NonFiniteActions as e:   # a diverged epoch: the run's val loss says so too; it goes on
            say(f"warning: {label}: {e}", file=sys.stderr)
            for k in ("catch_ratio", "catch_ratio_low", "catch_ratio_high", "neg_catch_ratio", "catches_per_1k"):
                logs[k] = math.nan
            return
        ratio = catch_ratio(mine, self.teacher)
        ci = catch_ratio_interval(mine, self.teacher)
        logs["catch_ratio"] = ratio
        logs["catch_ratio_low"], logs["catch_ratio_high"] = ci["low"], ci["high"]     # its 95% interval
        logs["neg_catch_ratio"] = -ratio
        logs["catches_per_1k"] = mine.summary()["catches_per_1k"]


# ---------------------------------------------------------------------- CLI
# the work past which an evaluation without a progress bar says, before it starts, that it may take long:
# frames x (episodes x (boids + 3 tokens)^2 + FRAME_WORK, a frame's own cost), about 1.5e7 a second on 2 cores:
# 200 episodes x 5 frames of 1,000 boids (1e9) took 68 s a rollout, 1 x 20,000 frames of 50 (2.6e8) 10 s, and
# the README's 500 x 300 frames (4.2e8) 14 s for the three
LONG_WORK, FRAME_WORK = 1e9, 10_000


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(prog="python -m predlab.evaluate", short_usage="PATH [flags]",
                   description="Closed-loop catches of a policy vs the teacher and a random baseline, on the "
                               "same seeded episodes.")
    p.add_argument("policy", metavar="PATH", help="checkpoint (.pt), model.js/.json, or the words teacher / random")
    p.add_argument("--episodes", type=bounded_number(int, 1), default=200,
                   help="episodes, all stepped together (default: 200)")
    p.add_argument("--frames", type=bounded_number(int, 1, MAX_FRAMES), default=300,
                   help="frames per episode (default: 300)")
    p.add_argument("--seed", type=bounded_number(int, 0, SEED_MAX), default=0, help="seed of the episodes (default: 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA where there is a GPU, else cpu), cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file (- or /dev/stdout: the "
                                                 "JSON alone on stdout, the table on stderr)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar over each rollout's frames (default: where stderr is a terminal)")
    # the world a checkpoint was trained on unless these say otherwise: its training log's catch
    # ratio and this one are then of the same kind of episode (a model.js records no world)
    add_config_flags(p, WorldConfig, "the episodes' world (default: a checkpoint's own, else the browser's; each "
                     "flag given replaces that one value)", skip=("frames", "noise"), given_only=True)
    return p


def format_table(res: Mapping, episodes: str = "--episodes", frames: str = "--frames") -> str:
    """Fixed-width table of the figures, one row per policy (of compare's dict, or of a --json file
    read back, where a NaN is null). episodes and frames: what the advice under the table calls the
    counts to raise, the command line's flags by default (a notebook's compare() call says "episodes=")."""
    def num(v):
        return math.nan if v is None else v

    def cell(fmt: str, v) -> str:
        """v as fmt writes it; a share above 0 too small for its digits as "<0.1%": catches in the next column
        beside "0.0%" of episodes with a catch read as a contradiction."""
        text = fmt.format(num(v))
        if fmt.endswith("%}") and isinstance(v, float) and v > 0 and float(text.rstrip("%")) == 0:
            return "<" + fmt.format(10.0 ** -int(fmt[3:-2]) / 100)
        return text

    cols = [("catches_per_1k", "catches/1k fr", "{:.3f}"), ("first_catch_frames", "1st catch fr", "{:.1f}"),
            # shares, as percentages: 0.266 of episodes read as a count
            ("first_catch_rate", "eps w/ catch", "{:.1%}"), ("flock_caught", "flock caught", "{:.2%}"),
            ("catches", "catches", "{:d}")]
    teacher_ratio = 1.0 if res["teacher"]["catches"] else math.nan     # 0 / 0: no ratio
    rows = [("policy", res["policy"], res["catch_ratio"]), ("teacher", res["teacher"], teacher_ratio)]
    if "random" in res:
        rows.append(("random", res["random"], res["random_catch_ratio"]))
    head = f"{'':8s}" + "".join(f"{h:>15s}" for _, h, _ in cols) + f"{'vs teacher':>12s}"
    lines = [f"{plural(res['episodes'], 'episode')} x {plural(res['frames'], 'frame')}, seed {res['seed']} "
             f"(first catch: no catch counts as {res['frames']:,})", head]
    for name, s, r in rows:
        lines.append(f"{name:8s}" + "".join(f"{cell(fmt, s[k]):>15s}" for k, _, fmt in cols) + f"{num(r):>12.3f}")
    ci = res.get("catch_ratio_interval")       # absent from the --json files of earlier versions
    if res["teacher"]["catches"] and ci and res["episodes"] < 2:     # (catch_ratio_interval gives none)
        lines.append(f"policy vs teacher {num(res['catch_ratio']):.3f}: no interval from a single episode (its "
                     f"resamples are all that episode); use more {episodes}")
    elif res["teacher"]["catches"] and ci and res.get("policy_is_teacher"):
        # more episodes never give the teacher against itself an interval: the advice below was wrong there
        lines.append(f"policy vs teacher {num(res['catch_ratio']):.3f}: no interval: its catches equal the teacher's "
                     f"in every one of the {res['episodes']:,} episodes: the policy is the teacher, so the ratio is 1 "
                     f"whatever the episodes")
    elif res["teacher"]["catches"] and ci and ci.get("differing", 1) < ci.get("min_differing", 0):
        lines.append(f"policy vs teacher {num(res['catch_ratio']):.3f}: no interval: its catches and the teacher's "
                     f"differ in only {ci['differing']} of the {res['episodes']:,} episodes, too few to tell how far "
                     f"the ratio could move (an interval takes {ci['min_differing']}); use more {episodes}")
    elif res["teacher"]["catches"] and ci:
        # where the teacher caught some and enough episodes differ, a bound is never NaN: a --json file's null is an
        # unbounded one
        low, high = (math.inf if ci.get(k) is None else ci[k] for k in ("low", "high"))
        lines.append(f"policy vs teacher {num(res['catch_ratio']):.3f}: {ci['level']:.0%} interval "
                     f"{low:.3f}-{high:.3f} (the {res['episodes']:,} episodes resampled "
                     f"{ci['resamples']:,} times; more {episodes} narrow it)")
    if not res["teacher"]["catches"]:
        lines.append(f"the teacher caught no boid in these episodes, so there is no ratio: use more or longer episodes "
                     f"({episodes}, {frames})")
    return "\n".join(lines)


def main(argv=None) -> int:
    from .export import command_line
    with command_line():     # a SIGTERM stops it as a Ctrl-C does; a closed stdout is exit code 141
        return _main(argv)


def _main(argv) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    from .export import as_typed
    a.policy, a.json = as_typed(a.policy), as_typed(a.json)
    try:
        device = resolve_device(a.device)
    except ValueError as e:
        p.error(str(e))
    from .export import names_stdout
    if a.json not in (None, "-") and names_stdout(a.json):      # as -: written as a file, it replaced the table
        a.json = "-"
    if a.json is not None and a.json != "-":       # "" too: refused, not skipped
        from .export import refuse_unwritable
        refuse_unwritable(p, "--json", a.json, replaces="evaluate")     # never a model.json either
    try:
        policy = load_policy(a.policy, device)
        world, source = _world_of(a.policy)
    except (FileNotFoundError, ValueError) as e:  # CheckpointError / WeightFormatError are ValueErrors
        msg = str(e)
        p.error(msg if str(a.policy) in msg else f"{a.policy}: {msg}")
    except OSError as e:
        p.error(f"cannot read {a.policy}: {e.strerror or e}")
    given = {k: getattr(a, k) for k in _WORLD_FLAGS if getattr(a, k) is not None}
    try:
        world = dataclasses.replace(world, **given)
        world.validate()
    except ValueError as e:      # --boids_min 60 with a world of at most 50, say
        p.error(f"{e}" + (f" (in {source}'s world with {', '.join(f'--{k} {v}' for k, v in given.items())})"
                          if source else ""))
    problem = episodes_memory_problem(a.episodes, world.boids_max, device,
                                      policy.model if isinstance(policy, ModelPolicy) else None)
    if problem:
        p.error(f"--episodes: {problem}")
    differs = world_differences(world)
    if differs:
        what = (f"{source}'s world" if source else "the browser's world") + (" with the flags given" if given else "")
        print(f"note: the episodes are drawn from {what}, which differs from the browser's in {', '.join(differs)}",
              file=sys.stderr)
    model = getattr(policy, "model", None)
    if isinstance(model, TransformerPredator):
        sizes = {k: getattr(model.config, k) for k in BROWSER_SIZES}
        if sizes != BROWSER_SIZES:
            print(f"note: {a.policy} has sizes {sizes}; the browser page runs only {BROWSER_SIZES}, and would "
                  f"refuse these weights", file=sys.stderr)
    progress = sys.stderr.isatty() if a.progress is None else a.progress
    # 10**6 frames, or 5 frames of 1,000 boids, ran for minutes in a log without a word
    if not progress and a.frames * (a.episodes * (world.boids_max + 3) ** 2 + FRAME_WORK) >= LONG_WORK:
        policies = "two policies" if a.policy == "teacher" else "three policies"      # the teacher's is run once
        print(f"note: {plural(a.frames, 'frame')} of {plural(a.episodes, 'episode')} of up to "
              f"{plural(world.boids_max, 'boid')}, {policies} in turn, with no "
              f"progress bar (--progress shows one): this can take long (an episode ends early only where its whole "
              f"flock is caught)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        res = compare(policy, episodes=a.episodes, frames=a.frames, seed=a.seed, world_config=world, device=device,
                      progress=progress)
    except NonFiniteActions as e:        # weights that are finite but huge: the file reads, the actions do not
        p.error(f"{a.policy}: {e}")
    except KeyboardInterrupt as e:       # Ctrl-C, or a SIGTERM
        from .export import stop_words
        word, code = stop_words(e)
        print(f"\n{word}: no figures" + (f", and {a.json} was not written" if a.json not in (None, "", "-") else ""),
              file=sys.stderr)
        return code
    res["policy_path"] = str(a.policy)
    res["world_config"] = {k: getattr(world, k) for k in _WORLD_FLAGS}
    res["seconds"] = time.perf_counter() - t0
    code = 0
    figures = json.dumps(strict_json(res), indent=2, allow_nan=False) + "\n"
    # --json -, as predlab.bench's: the JSON alone on stdout, for a pipe or a file to parse (after the table, json.load
    # failed on it), the table on stderr
    table = sys.stderr if a.json == "-" else sys.stdout
    try:
        print(format_table(res), file=table)
        print(f"policy rollout {res['policy']['seconds']:.1f} s, everything {res['seconds']:.1f} s", file=table)
        table.flush()
    except BrokenPipeError:          # the table's reader has gone (`| head`): the --json file is written all the same
        from .export import PIPE_CLOSED, silence_stdout
        if table is sys.stdout:
            silence_stdout()
        else:
            from .export import silence_stderr
            silence_stderr()
        code = PIPE_CLOSED
    if a.json == "-":
        try:
            sys.stdout.write(figures)
            sys.stdout.flush()
        except BrokenPipeError:
            from .export import PIPE_CLOSED, silence_stdout
            silence_stdout()
            code = PIPE_CLOSED
    if a.json not in (None, "-"):
        out = Path(a.json)
        from .export import atomic_write_text
        try:     # after the whole evaluation: a full disk is a line, the table above stays, the old file whole
            atomic_write_text(out, figures)
        except OSError as e:
            print(f"{p.prog}: error: cannot write {out}: {e.strerror or e}", file=sys.stderr)
            return 1
        print(f"wrote {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
