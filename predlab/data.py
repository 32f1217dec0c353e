"""Episodes -> padded tensors: the browser's dict form at the edges, tensors inside.

collate() turns browser-form dicts into a padded batch and to_dicts() turns it back.
generate_episodes() rolls out seeded episodes with the teacher (or, for DAgger, a student)
driving, in chunks of fixed size so that the same seed gives the same data for any number
of worker processes. SampleSet keeps the samples as padded tensors and serves batches
bucketed by boid count, so that padding costs almost nothing.
"""
from __future__ import annotations

import contextlib
import io
import math
import multiprocessing.context
import multiprocessing.pool
import numbers
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from .config import (FLOAT32_MAX, SEED_MAX, WorldConfig, as_config, as_device, memory_problem, real_number, sample_bytes,
                     whole_number)
from .export import deferred_interrupt
from .sim import World, host_to_device, step_bytes
from .teacher import closest_pursuit

try:  # the CPU frame as numba kernels; without numba, CPU rollouts take the torch World path
    from . import fastsim
except ImportError:
    fastsim = None

Tensor = torch.Tensor
Batch = Dict[str, Tensor]
BOID_KEYS = ("relX", "relY", "velX", "velY")
CHUNK_EPISODES = 512  # episodes simulated together; part of what a seed means, so fixed
GROUP_EPISODES = 128  # episodes per sub-world inside a chunk, grouped by flock size (speed only)


class InputError(ValueError):
    """A structured input that does not have the browser's form; the message says where."""


# ---------------------------------------------------------------------- dict form <-> tensors
def _number(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise InputError(f"{where} must be a number, got {type(v).__name__}")
    try:
        v = float(v)
    except OverflowError:      # an int of hundreds of digits
        raise InputError(f"{where} is an integer beyond float32's range (the model runs in float32)") from None
    if not math.isfinite(v):
        raise InputError(f"{where} is {v} (must be finite)")
    if abs(v) > FLOAT32_MAX:
        raise InputError(f"{where} is {v:.3g}, beyond float32's range (the model runs in float32)")
    return v


def _field(d, key: str, where: str):
    if not isinstance(d, Mapping):
        raise InputError(f"{where} must be an object/dict, got {type(d).__name__}")
    if key not in d:
        raise InputError(f"{where} is missing key {key!r}")
    return d[key]


def parse_structured(sample: Mapping, where: str = "input") -> tuple:
    """Check one browser-form dict; return (context[2], predator[2], boids[n][4]) as floats."""
    ctx = _field(sample, "context", where)
    pred = _field(sample, "predator", where)
    boids = _field(sample, "boids", where)
    c = [_number(_field(ctx, k, f"{where}.context"), f"{where}.context.{k}") for k in ("canvasWidth", "canvasHeight")]
    p = [_number(_field(pred, k, f"{where}.predator"), f"{where}.predator.{k}") for k in ("velX", "velY")]
    if isinstance(boids, (str, bytes, Mapping)) or not isinstance(boids, Sequence):
        raise InputError(f"{where}.boids must be a list, got {type(boids).__name__}")
    b = [[_number(_field(bd, k, f"{where}.boids[{i}]"), f"{where}.boids[{i}].{k}") for k in BOID_KEYS]
         for i, bd in enumerate(boids)]
    return c, p, b


def collate(samples: Sequence[Mapping], dtype=torch.float32, pad_to: Optional[int] = None) -> Batch:
    """Browser-form dicts -> padded batch: context [B, 2], predator [B, 2], boids [B, N, 4], mask [B, N].

    N is the largest boid count (or pad_to). Raises InputError naming the sample and key
    for a missing key, a non-number, NaN or infinity.
    """
    if isinstance(samples, Mapping) or not isinstance(samples, Sequence):
        raise InputError("collate takes a list of structured-input dicts")
    parsed = [parse_structured(s, f"sample {i}") for i, s in enumerate(samples)]
    B = len(parsed)
    N = max([len(b) for _, _, b in parsed], default=0)
    if pad_to is not None:
        if isinstance(pad_to, bool) or not isinstance(pad_to, numbers.Integral):
            raise InputError(f"pad_to must be a whole number of boids, got {pad_to!r}")
        if pad_to < N:
            raise InputError(f"pad_to={pad_to} is smaller than the largest boid count {N}")
        N = pad_to
    boids = np.zeros((B, N, 4), dtype=np.float64)
    mask = np.zeros((B, N), dtype=bool)
    for i, (_, _, b) in enumerate(parsed):
        if b:
            boids[i, :len(b)] = b
            mask[i, :len(b)] = True
    return {"context": torch.tensor([c for c, _, _ in parsed], dtype=dtype).reshape(B, 2),
            "predator": torch.tensor([p for _, p, _ in parsed], dtype=dtype).reshape(B, 2),
            "boids": torch.from_numpy(boids).to(dtype), "mask": torch.from_numpy(mask)}


class NonFiniteActions(ValueError):
    """A policy's actions are NaN or infinite: what it drives can be neither measured nor learnt from."""


def check_actions(action, rows: int, who: str = "the policy's actions") -> Tensor:
    """action if it is a finite tensor [rows, 2] (one action per episode driven), else TypeError,
    ValueError or NonFiniteActions naming `who`. NaN actions stall the predator where it stands."""
    if not isinstance(action, Tensor):
        raise TypeError(f"{who} are a {type(action).__name__}; a policy returns a tensor [{rows}, 2]")
    if tuple(action.shape) != (rows, 2):
        raise ValueError(f"{who} have shape {list(action.shape)}; a policy returns one action per episode "
                         f"it is given: [{rows}, 2]")
    if not bool(torch.isfinite(action).all()):
        raise NonFiniteActions(f"{who} are NaN or infinite")
    return action


def to_dicts(batch: Mapping[str, Tensor]) -> List[dict]:
    """Padded batch -> browser-form dicts (live boids only, in slot order)."""
    if not isinstance(batch, Mapping):
        raise InputError(f"to_dicts takes a batch dict of tensors, not {type(batch).__name__}")
    check_batch(batch)
    ctx = batch["context"].double().tolist()
    pred = batch["predator"].double().tolist()
    boids = batch["boids"].double().tolist()
    mask = batch["mask"].bool().tolist()
    out = []
    for c, p, bs, m in zip(ctx, pred, boids, mask):
        out.append({"context": {"canvasWidth": c[0], "canvasHeight": c[1]},
                    "predator": {"velX": p[0], "velY": p[1]},
                    "boids": [dict(zip(BOID_KEYS, b)) for b, keep in zip(bs, m) if keep]})
    return out


def check_batch(batch: Mapping[str, Tensor]) -> None:
    """Raise InputError naming the key when a tensor batch has a wrong key, shape or a NaN."""
    for k in ("context", "predator", "boids", "mask"):
        if k not in batch:
            raise InputError(f"batch is missing key {k!r}")
        if not isinstance(batch[k], Tensor):
            raise InputError(f"batch[{k!r}] must be a tensor, got {type(batch[k]).__name__}")
    B = batch["context"].shape[0]
    want = {"context": (B, 2), "predator": (B, 2)}
    for k, shp in want.items():
        if tuple(batch[k].shape) != shp:
            raise InputError(f"batch[{k!r}] has shape {tuple(batch[k].shape)}, expected {shp}")
    b, m = batch["boids"], batch["mask"]
    if b.dim() != 3 or b.shape[0] != B or b.shape[2] != 4:
        raise InputError(f"batch['boids'] has shape {tuple(b.shape)}, expected ({B}, N, 4)")
    if tuple(m.shape) != tuple(b.shape[:2]):
        raise InputError(f"batch['mask'] has shape {tuple(m.shape)}, expected {tuple(b.shape[:2])}")
    for k in ("context", "predator", "boids"):
        if not torch.isfinite(batch[k]).all():
            raise InputError(f"batch[{k!r}] contains NaN or infinity")


def all_finite(t: Tensor, elements: int = 1 << 20) -> bool:
    """torch.isfinite(t).all(), in slices of about `elements` elements along the first dimension: over
    the whole tensor at once it makes a copy and a mask beside it (a 10,000-episode validation set's
    check took 1.7x the set again)."""
    rows = max(1, elements // max(1, t[0].numel())) if t.dim() and len(t) else 1
    return all(bool(torch.isfinite(part).all()) for part in (t.split(rows) if t.dim() else (t,)))


# ---------------------------------------------------------------------- sample storage
@dataclass
class SampleSet:
    """Labelled samples as padded tensors; live boids first in every row.

    context [S, 2], predator [S, 2], boids [S, N, 4], n [S] (live boids), target [S, 2].
    From World.observe(), whose dead boids sit among the live ones: SampleSet.from_observation(obs,
    target) (n = mask.sum(1) with the observation's own order trained on dead boids' slots, silently).
    """

    context: Tensor
    predator: Tensor
    boids: Tensor
    n: Tensor
    target: Tensor

    def __len__(self) -> int:
        return self.context.shape[0]

    def check(self, name: str = "samples", allow_empty: bool = True, dtype: Optional[torch.dtype] = None) -> None:
        """Raise InputError naming the field when the tensors disagree, or hold NaN or infinity.

        The fields must be tensors, and the four float ones share one floating dtype (dtype, the
        model's, when given): numpy arrays, or float64 fields beside a float32 model, failed in the
        model's first layer with an error that named neither the set nor the field."""
        for k in ("context", "predator", "boids", "n", "target"):
            if not isinstance(getattr(self, k), Tensor):
                raise InputError(f"{name}.{k} must be a tensor, got {type(getattr(self, k)).__name__} "
                                 "(torch.from_numpy turns an array into one)")
        floats = {k: getattr(self, k).dtype for k in ("context", "predator", "boids", "target")}
        want = dtype if dtype is not None else floats["context"]
        for k, dt in floats.items():
            if not dt.is_floating_point:
                raise InputError(f"{name}.{k} is {dt}: it must be a float tensor (.float())")
            if dt != want:
                whose = "the model's weights are" if dtype is not None else "context is"
                raise InputError(f"{name}.{k} is {dt}, {whose} {want}: give every float field as {want} "
                                 f"(.to({want}))")
        if self.n.dtype == torch.bool or self.n.dtype.is_floating_point or self.n.dtype.is_complex:
            # 3.5 boids made a mask of 4 live ones, and the padded batch counted what n's cast gave
            raise InputError(f"{name}.n is {self.n.dtype}: boid counts are whole numbers (.long())")
        S = len(self)
        want = {"context": (S, 2), "predator": (S, 2), "target": (S, 2), "n": (S,)}
        for k, shp in want.items():
            if tuple(getattr(self, k).shape) != shp:
                raise InputError(f"{name}.{k} has shape {tuple(getattr(self, k).shape)}, expected {shp} "
                                 f"(context has {S} rows)")
        if self.boids.dim() != 3 or self.boids.shape[0] != S or self.boids.shape[2] != 4:
            raise InputError(f"{name}.boids has shape {tuple(self.boids.shape)}, expected ({S}, N, 4)")
        if not allow_empty and S == 0:
            raise InputError(f"{name} holds no samples")
        if S and (int(self.n.min()) < 0 or int(self.n.max()) > self.boids.shape[1]):
            raise InputError(f"{name}.n has boid counts outside 0..{self.boids.shape[1]}")
        for k in ("context", "predator", "boids", "target"):
            if not all_finite(getattr(self, k)):
                raise InputError(f"{name}.{k} contains NaN or infinity")
        # the model's actions lie in [-1, 1] (tanh), the teacher's labels are unit vectors: targets in pixels or
        # forces trained the outputs into saturation without a word (from_ragged refuses them as made by no teacher)
        if S and bool((self.target.abs() > 1 + 1e-6).any()):
            raise InputError(f"{name}.target reaches {float(self.target.abs().max()):g}, beyond [-1, 1] where the "
                             f"model's actions lie (the teacher's are unit vectors): scale the targets")

    @classmethod
    def empty(cls, n_max: int = 0) -> "SampleSet":
        z = torch.zeros
        return cls(z(0, 2), z(0, 2), z(0, n_max, 4), torch.zeros(0, dtype=torch.long), z(0, 2))

    @classmethod
    def cat(cls, parts: Sequence["SampleSet"]) -> "SampleSet":
        """Concatenate, padding boids to the widest part; InputError when the parts' dtypes differ.

        torch.cat promoted float32 parts beside a float64 one to float64 without a word, and a cat of
        empty parts came back float32 whatever theirs were: the set's dtype changed silently."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        wrong = [type(p).__name__ for p in parts if not isinstance(p, SampleSet)]
        if wrong:       # (an int's len() failed in torch's words)
            raise InputError(f"SampleSet.cat takes SampleSets, got {', '.join(sorted(set(wrong)))} among the parts")
        if not any(len(p) for p in parts):                    # empty, of the first part's dtypes
            p = parts[0]
            return cls(p.context[:0], p.predator[:0], p.boids[:0, :0], p.n[:0], p.target[:0])
        parts = [p for p in parts if len(p)]
        for k in ("context", "predator", "boids", "target"):
            kinds = sorted({str(getattr(p, k).dtype) for p in parts})
            if len(kinds) > 1:
                raise InputError(f"SampleSet.cat: the parts' {k} have different dtypes ({', '.join(kinds)}); "
                                 f"convert them to one (the model's, float32 by default)")
        N = max(p.boids.shape[1] for p in parts)
        # a part of that width goes to torch.cat as it is: padded by zero slots, it was one more copy
        boids = [p.boids if p.boids.shape[1] == N else torch.nn.functional.pad(p.boids, (0, 0, 0, N - p.boids.shape[1]))
                 for p in parts]
        return cls(torch.cat([p.context for p in parts]), torch.cat([p.predator for p in parts]),
                   torch.cat(boids), torch.cat([p.n for p in parts]), torch.cat([p.target for p in parts]))

    def _rows(self, idx) -> Tensor:
        """n[idx], or InputError when idx picks no rows (one row as an int: "len() of a 0-d tensor")."""
        n = self.n[idx]
        if n.dim() != 1:
            raise InputError(f"idx must pick rows (a 1-D index or bool tensor, a list or a slice), got {idx!r}: "
                             f"for row i alone give [i]")
        return n

    def select(self, idx: Tensor) -> "SampleSet":
        """Rows idx, with the boid axis trimmed to the widest selected row."""
        n = self._rows(idx)
        N = int(n.max()) if len(n) else 0
        return SampleSet(self.context[idx], self.predator[idx], self.boids[idx, :N], n, self.target[idx])

    def batch(self, idx: Tensor, device=None) -> Batch:
        """Model batch (with 'target') for rows idx, trimmed to the widest row."""
        n = self._rows(idx)
        N = int(n.max()) if len(n) else 0
        out = {"context": self.context[idx], "predator": self.predator[idx], "boids": self.boids[idx, :N],
               "mask": torch.arange(N, device=n.device)[None, :] < n[:, None], "target": self.target[idx]}
        if device is not None:
            # to a GPU without waiting; to the host, a copy that has landed: from a GPU, non_blocking returns
            # pinned tensors whose copy may still be under way when the caller reads them
            device = torch.device(device)
            out = {k: v.to(device, non_blocking=device.type != "cpu") for k, v in out.items()}
        return out

    def batch_indices(self, batch_size: int, shuffle: bool = True,
                      generator: Optional[torch.Generator] = None) -> List[Tensor]:
        """Index batches grouped by boid count (little padding), in random order when shuffling.

        An empty set has no batches (split made it one batch of no rows: a loop over it called
        the model on nothing and averaged a loss over nothing, NaN)."""
        # torch's split named neither it nor the value; past 2**63 torch failed in its words too
        batch_size = whole_number("batch_size", batch_size, 1, SEED_MAX)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise InputError(f"generator must be a torch.Generator (or None), not {type(generator).__name__}")
        S = len(self)
        if S == 0:
            return []
        order = torch.randperm(S, generator=generator) if shuffle else torch.arange(S)
        # by boid count, random within (int32 keys: the same stable order, sorted 4x faster than int64). On the
        # host for a set on a GPU too: a CPU order indexed by the GPU's sort failed with a device mismatch
        order = order[torch.sort(self.n.cpu()[order].to(torch.int32), stable=True).indices]
        batches = list(order.split(batch_size))
        if shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def to_device(self, device) -> "SampleSet":
        """The same samples on `device` (a copy, unless they are there already), dtypes kept."""
        return SampleSet(*(t.to(device) for t in (self.context, self.predator, self.boids, self.n, self.target)))

    def state_dict(self) -> Dict[str, Tensor]:
        return {"context": self.context, "predator": self.predator, "boids": self.boids, "n": self.n,
                "target": self.target}

    @classmethod
    def from_observation(cls, obs: Mapping[str, Tensor], target: Tensor) -> "SampleSet":
        """Samples of a batched observation (World.observe(), or collate's batch) labelled with target
        [B, 2]: each row's live boids (mask) moved to its front, in their order. Checked as check() does.
        Rows with no live boid are left out, as generation leaves them out: the page does not ask the
        model then (they trained it on a label the page never uses, the teacher's (0, 0)). The rows kept
        are those of obs["mask"].any(1), in their order."""
        if not isinstance(obs, Mapping) or any(k not in obs for k in ("context", "predator", "boids", "mask")):
            raise InputError("from_observation takes an observation dict with context, predator, boids and mask "
                             "(World.observe() gives one)")
        boids, mask = obs["boids"], obs["mask"]
        if not isinstance(boids, Tensor) or boids.dim() != 3 or boids.shape[2] != 4:
            raise InputError(f"obs['boids'] has shape {tuple(getattr(boids, 'shape', ()))}, expected (B, N, 4): "
                             "a batch of observations (one state's: add the batch dimension, {k: v[None]})")
        shape = tuple(boids.shape[:2])
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != shape:
            raise InputError(f"obs['mask'] must be a bool tensor of shape {shape} (boids' "
                             f"first two dimensions), got {getattr(mask, 'dtype', type(mask).__name__)} "
                             f"{tuple(getattr(mask, 'shape', ()))}")
        boids, n = _compact(obs["boids"], mask)
        out = cls(obs["context"], obs["predator"], boids, n, target)
        out.check("from_observation")
        return out if bool((n > 0).all()) else out.select((n > 0).nonzero().squeeze(1))

    def to_ragged(self) -> Dict[str, Tensor]:
        """Compact form for checkpoints: live boids only, boids [sum(n), 4] with counts n [S]."""
        keep = torch.arange(self.boids.shape[1], device=self.n.device)[None, :] < self.n[:, None]   # [S, N]
        return {"context": self.context, "predator": self.predator, "boids": self.boids[keep], "n": self.n,
                "target": self.target}

    @classmethod
    def from_ragged(cls, d: Mapping[str, Tensor]) -> "SampleSet":
        """Inverse of to_ragged; raises ValueError when the parts do not fit together."""
        if not isinstance(d, Mapping):     # a tampered buffer: a list's .get failed with an AttributeError
            raise ValueError(f"stored samples are {type(d).__name__}, not a dict of tensors (tampered or truncated)")
        missing = [k for k in ("n", "context", "predator", "boids", "target") if not isinstance(d.get(k), Tensor)]
        if missing:
            raise ValueError(f"stored samples lack {', '.join(missing)} (tampered or truncated)")
        n = d["n"]
        S = len(n)
        if any(d[k].shape != (S, 2) for k in ("context", "predator", "target")) or n.dtype != torch.long \
                or (n < 0).any() or d["boids"].shape != (int(n.sum()), 4):
            raise ValueError("stored samples do not fit together (tampered or truncated)")
        for k in ("context", "predator", "boids", "target"):   # float64 ones failed in the model's first step
            if d[k].dtype != torch.float32:
                raise ValueError(f"stored samples' {k} is {d[k].dtype}, not float32")
        for k in ("n", "context", "predator", "boids", "target"):
            t = d[k]
            # saved expanded (stride 0): a 76 KB file asked for 20 GB once padded below
            if t.numel() and t.untyped_storage().nbytes() < t.numel() * t.element_size():
                raise ValueError(f"stored samples' {k} shows more values than its storage holds (a tensor saved "
                                 "expanded: not a file predlab writes)")
        N = int(n.max()) if S else 0
        problem = memory_problem([(f"{S:,} stored samples padded to {N:,} boids", S * N * 16 + S * 56)],
                                 "the stored samples")
        if problem:
            raise ValueError(problem)
        # the teacher's labels, unit vectors (or zero): beyond [-1, 1] (and float32's rounding), a sample was made
        # by no teacher
        if S and bool((d["target"].abs() > 1 + 1e-6).any()):     # (NaN: named by check below)
            raise ValueError("stored samples' targets reach beyond [-1, 1], where the teacher's actions lie")
        keep = torch.arange(N)[None, :] < n[:, None]
        boids = torch.zeros(S, N, 4, dtype=d["boids"].dtype)
        boids[keep] = d["boids"]
        out = cls(d["context"], d["predator"], boids, n, d["target"])
        out.check("stored samples")     # NaN, or a count beyond the boids
        return out


def _compact(boids: Tensor, mask: Tensor) -> tuple:
    """Move live boids to the front of each row (stable) -> (boids [R, N, 4], n [R])."""
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices       # live first
    return boids.gather(1, order[..., None].expand(-1, -1, 4)), mask.sum(1)


# ---------------------------------------------------------------------- episode generation
def chunk_seed(seed: int, stream: int, chunk: int) -> int:
    """A well-mixed 63-bit seed for one chunk of one stream (train epoch, validation, ...)."""
    words = [seed, stream, chunk]
    if max(words) >= 2 ** 32:
        # SeedSequence reads an int as 32-bit words and drops trailing zero words: (2**32 + 5, 0, 0) was (5, 1, 0),
        # so seed 2**32 + 5's validation episodes were seed 5's first epoch. Two words each, and a tag; smaller
        # values keep their episodes
        words = [w >> shift & 0xFFFFFFFF for w in words for shift in (0, 32)] + [1]
    return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _flock_groups(world: World) -> List[tuple]:
    """Split a world into sub-worlds of GROUP_EPISODES episodes with similar flock sizes.

    Each sub-world is trimmed to its largest flock, so the [E, N, N] pairwise work follows the
    sizes actually drawn instead of the chunk's largest flock (about 2.5x less for 1..50).
    Returns (episode indices [G], sub-world) pairs; episodes are independent, so this changes
    no physics.
    """
    n = world.n_alive.cpu()
    out = []
    for idx in torch.sort(n, stable=True).indices.split(GROUP_EPISODES):
        idx = idx.sort().values
        N = int(n[idx].max())
        i = idx.to(world.pos.device)
        sub = World(world.pos[i, :N], world.vel[i, :N], world.alive[i, :N], world.pred_pos[i], world.pred_vel[i],
                    world.size[i], world.cfg)
        if out:      # stepped one after another: one set of pairwise buffers, not one per sub-world
            sub.share_scratch(out[0][2])
        out.append((idx, i, sub))
    return out


# what a worker process holds beside its work: its own Python, torch, numba and their compiled code
# (285-342 MiB measured on Linux, after its first chunk; ~370 where numba compiles its kernels afresh)
WORKER_BYTES = 384 * 2 ** 20


def workers_memory(workers: int, num_episodes: int, cfg: WorldConfig) -> tuple:
    """(description, bytes) of what `workers` worker processes hold while they generate num_episodes
    episodes: each its own Python and torch, and those with a chunk to build (one chunk of CHUNK_EPISODES
    episodes each at a time, so no more than the chunks there are) its samples, built and then sent to
    this process (a worker's peak rose by 2.2-2.7 x its chunk's samples at 50 and 200 boids)."""
    chunk = min(num_episodes, CHUNK_EPISODES) * cfg.frames * sample_bytes(cfg.boids_max)
    return (f"{workers} worker process(es) (num_workers), each with its own Python and torch "
            f"(~{WORKER_BYTES >> 20} MiB) and a chunk of up to {CHUNK_EPISODES} episodes' samples, built "
            f"and sent", workers * WORKER_BYTES + busy_workers(workers, num_episodes) * 3 * chunk)


def busy_workers(workers: int, num_episodes: int) -> int:
    """The worker processes that work at once on num_episodes episodes: one chunk each, at most."""
    return min(workers, math.ceil(num_episodes / CHUNK_EPISODES))


def _torch_world(device, backend: str = "auto") -> bool:
    """Whether _rollout_chunk steps its episodes in the torch World (else in fastsim's kernels)."""
    return backend == "torch" or (backend == "auto" and (torch.device(device).type != "cpu" or fastsim is None))


def _check_generation(num_episodes, cfg, student, beta, device="cpu", backend: str = "auto",
                      workers: int = 0) -> tuple:
    """(num_episodes, cfg) checked for a generation call: ValueError / TypeError naming the argument,
    also when the samples of num_episodes episodes running all their frames would not fit in memory,
    with the `workers` worker processes that generate them, or, in the torch world, a chunk's work: on
    a GPU, that is counted against the GPU's memory."""
    num_episodes = whole_number("num_episodes", num_episodes, 1)
    cfg = as_config(WorldConfig, cfg, "cfg")
    cfg.validate()
    if student is not None and not callable(student):
        raise TypeError(f"student must be a policy (a model or a callable on a batch) or None, "
                        f"not {type(student).__name__}")
    real_number("beta", beta, 0, 1)
    if student is None and beta < 1:    # the teacher drove them all, and the samples read as DAgger's
        raise ValueError(f"beta {beta:g} gives a share {1 - beta:g} of the episodes to the student, but no student was "
                         "given: pass student= (a model), or beta=1 for the teacher alone")
    per_episode = cfg.frames * sample_bytes(cfg.boids_max)
    needs = [(f"{num_episodes} episodes x {cfg.frames} frames of up to {cfg.boids_max} boids, "
              f"{sample_bytes(cfg.boids_max)} bytes a sample", num_episodes * per_episode)]
    if num_episodes > CHUNK_EPISODES:       # _join's peak: the joined samples and the chunk being copied
        needs.append((f"joining the chunks of {CHUNK_EPISODES} episodes, one chunk's samples",
                      CHUNK_EPISODES * per_episode))
    if workers:
        needs.append(workers_memory(workers, num_episodes, cfg))
    problem = memory_problem(needs, f"the samples of {num_episodes} episodes")
    if not problem and _torch_world(device, backend):
        # the torch world copies a chunk's samples up to four times (its frames and their padded copy,
        # then the live rows and their order while compacting: measured 3.3) and steps a sub-world of
        # GROUP_EPISODES episodes at a time
        E, G = min(num_episodes, CHUNK_EPISODES), min(num_episodes, GROUP_EPISODES)
        work = [(f"a chunk of {E} episodes' samples, copied by the torch world", 4 * E * per_episode),
                (f"stepping {G} episodes of up to {cfg.boids_max} boids together (--boids_max squared)",
                 step_bytes(G, cfg.boids_max))]
        device = torch.device(device)
        if device.type == "cuda":
            have = torch.cuda.get_device_properties(device).total_memory
            problem = memory_problem(work, f"generating {num_episodes} episodes", have,
                                     f"the {{}} of {torch.cuda.get_device_name(device)}")
        else:
            problem = memory_problem(needs + work, f"generating {num_episodes} episodes")
    if problem:
        raise ValueError(problem + "; generate fewer episodes (num_episodes) or frames")
    return num_episodes, cfg


def rollout_chunk(num_episodes: int, cfg: Optional[WorldConfig], seed: int, student=None, beta: float = 1.0,
                  device="cpu", backend: str = "auto") -> SampleSet:
    """Roll out one seeded chunk of episodes; every frame of every live episode is one sample.

    The label is always the clean teacher action. The driving action is the teacher's plus
    Gaussian noise (cfg.noise), or, in episodes picked with probability 1 - beta, the student's
    (a batched policy called on the observations of all the chunk's episodes; a TransformerPredator
    is called as predlab.evaluate.ModelPolicy, here and in worker processes alike).
    Samples come frame by frame, episodes in order within a frame. backend "numba" runs each
    CPU frame in predlab.fastsim's kernels, "torch" in World; "auto" takes numba on the CPU
    when it is installed. Both draw the same random numbers and compute the same formulas, but
    not the same trajectories: a flock starts at one point, where rounding decides directions,
    so episodes of the two backends part within ~50 frames (a pixel by frame 50, in float32).
    Their samples are statistically alike (teacher catches within noise). On a GPU the loop
    waits for the device only to check, every few frames, whether any episode is still live,
    and, in frames a student drives, to check its actions for NaN. Bad arguments raise
    ValueError / TypeError naming them before any work.
    """
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    device = as_device(device)
    num_episodes, cfg = _check_generation(num_episodes, cfg, student, beta, device, backend)
    seed = whole_number("seed", seed, 0, SEED_MAX)
    return _rollout_chunk(num_episodes, cfg, seed, student, beta, device, backend)


@torch.no_grad()
def _rollout_chunk(num_episodes: int, cfg: WorldConfig, seed: int, student, beta: float, device,
                   backend: str = "auto", on_frame: Optional[Callable[[int], None]] = None) -> SampleSet:
    """rollout_chunk on checked arguments; on_frame(f) after each frame f (a progress bar's tick)."""
    student = _as_policy(student)
    on_cpu = torch.device(device).type == "cpu"
    if backend == "numba" and fastsim is None:
        raise ImportError("backend='numba' needs numba (pip install numba)")
    if backend == "numba" and not on_cpu:
        raise ValueError(f"backend='numba' runs on the CPU, not on {device}")
    if backend == "numba" or (backend == "auto" and on_cpu and fastsim is not None):
        return _rollout_chunk_numba(num_episodes, cfg, seed, student, beta, on_frame)
    g = torch.Generator().manual_seed(seed)
    world = World.random(num_episodes, cfg, generator=g, device=device)
    f32 = torch.float32         # the draws whatever torch's default dtype: the same episodes
    by_student = (torch.rand(num_episodes, generator=g, dtype=f32) >= beta).to(device) if student is not None else None
    use_student = by_student is not None and bool(by_student.any())
    E, N = world.alive.shape
    groups = _flock_groups(world)
    frames = {k: [[] for _ in groups] for k in ("context", "predator", "boids", "mask", "target")}
    for f in range(cfg.frames):
        if f % 8 == 0 and not any(bool(sub.alive.any()) for _, _, sub in groups):
            break
        noise = (cfg.noise * host_to_device(torch.randn(num_episodes, 2, generator=g, dtype=f32), device)
                 if cfg.noise > 0 else None)
        for k, (idx, i, sub) in enumerate(groups):
            obs = sub.observe()
            target = closest_pursuit(obs["boids"], obs["mask"])                        # [G, 2]
            drive = target
            if use_student:
                act = check_actions(student(obs), len(i), f"the student's actions at frame {f}")
                drive = torch.where(by_student[i, None], act.to(target), target)   # a CPU policy's, on the GPU too
            if noise is not None:   # the step clamps to [-1, 1]; clamped here, a noise that overflows float32 is 1 too
                drive = (drive + noise[i]).clamp_(-1, 1)
            for key, v in (("context", obs["context"]), ("predator", obs["predator"]), ("boids", obs["boids"]),
                           ("mask", obs["mask"]), ("target", target)):
                frames[key][k].append(v)
            sub.step(drive)
        if on_frame is not None:
            on_frame(f)
    F = len(frames["target"][0])
    if F == 0:
        return SampleSet.empty(N)
    full = {"context": world.pos.new_zeros(F, E, 2), "predator": world.pos.new_zeros(F, E, 2),
            "boids": world.pos.new_zeros(F, E, N, 4), "mask": torch.zeros(F, E, N, dtype=torch.bool, device=device),
            "target": world.pos.new_zeros(F, E, 2)}
    for k, (idx, i, sub) in enumerate(groups):                   # back to episode order, padded to N
        Ng = sub.pos.shape[1]
        for key, buf in full.items():
            part = torch.stack(frames[key][k])                   # [F, G, ...]
            frames[key][k] = None                                # let the frames go as they are copied
            if key in ("boids", "mask"):
                buf[:, i, :Ng] = part
            else:
                buf[:, i] = part
    flat = {key: v.reshape(F * E, *v.shape[2:]) for key, v in full.items()}
    rows = flat["mask"].any(-1).nonzero().squeeze(1)             # frame-major, episodes in order
    live = {key: v[rows] for key, v in flat.items()}
    del full, flat                                               # the padded frames, before compacting
    boids, n = _compact(live.pop("boids"), live["mask"])
    return SampleSet(live["context"], live["predator"], boids, n, live["target"]).to_device("cpu")


def _as_policy(student):
    """A TransformerPredator student as the batched ModelPolicy (DAgger's in-process student), other
    policies as they are. Worker processes rebuild the bare model: driving with it there and with
    ModelPolicy here (sorted by flock size, padded per chunk of episodes, so float32 sums that differ
    in their last bits) gave other episodes for another --num_workers once the flock's chaos grew them."""
    from .evaluate import ModelPolicy
    from .model import TransformerPredator
    return ModelPolicy(student) if isinstance(student, TransformerPredator) else student


class _Rows:
    """Growing numpy storage for a chunk's samples, written in place by the fastsim kernels.

    Grows and finally shrinks with ndarray.resize (realloc: the rows written stay put and are
    not copied). Nothing else may hold a view of the arrays meanwhile. resize zero-fills the rows
    it adds, so growing by doubling held up to twice a chunk's samples: a chunk's rows are made
    at full size once instead (np.empty; rows the kernels never write take no memory).
    """

    def __init__(self, capacity: int, N: int, dtype):
        self.arrays = [np.empty((capacity, 2), dtype), np.empty((capacity, 2), dtype),
                       np.empty((capacity, N, 4), dtype), np.empty(capacity, np.int64), np.empty((capacity, 2), dtype)]
        self.used = 0

    def reserve(self, rows: int) -> None:
        """Make room for `rows` more rows."""
        cap = len(self.arrays[0])
        if self.used + rows > cap:
            cap = max(2 * cap, self.used + rows)
            for a in self.arrays:
                a.resize((cap,) + a.shape[1:], refcheck=False)

    def samples(self) -> SampleSet:
        for a in self.arrays:
            a.resize((self.used,) + a.shape[1:], refcheck=False)
        return SampleSet(*(torch.from_numpy(a) for a in self.arrays))


def kernel_arrays(world: World, cfg: WorldConfig) -> tuple:
    """(state, weights, live, snap): a CPU World's episodes as predlab.fastsim's kernels take and step them
    (its arrays copied), the flock weights of cfg, the live boids per episode, and the kernels' scratch."""
    # copied (ascontiguousarray copies nothing of a contiguous World: the kernels stepped the World's own
    # tensors, and its frame count stayed behind)
    state = [np.array(t.numpy(), order="C") for t in
             (world.pos, world.vel, world.alive, world.pred_pos, world.pred_vel, world.size)]
    dtype = state[0].dtype
    weights = np.array([cfg.cohesion_weight, cfg.separation_weight, cfg.alignment_weight], dtype)
    return state, weights, world.n_alive.numpy().astype(np.int64), fastsim.scratch(*world.alive.shape, dtype)


def _rollout_chunk_numba(num_episodes: int, cfg: WorldConfig, seed: int, student, beta: float,
                         on_frame: Optional[Callable[[int], None]] = None) -> SampleSet:
    """rollout_chunk with every frame in predlab.fastsim's kernels: the same draws, in the same order.

    Without a student one kernel call observes, labels and steps every episode, writing the
    samples straight into their rows. A student needs the observations first: observe, call
    the student on the live episodes it drives, keep the live rows, step.
    """
    g = torch.Generator().manual_seed(seed)
    world = World.random(num_episodes, cfg, generator=g)
    by_student = torch.rand(num_episodes, generator=g, dtype=torch.float32) >= beta if student is not None else None
    use_student = by_student is not None and bool(by_student.any())
    state, weights, live, snap = kernel_arrays(world, cfg)
    E, N = world.alive.shape
    dtype = state[0].dtype
    zeros = np.zeros((E, 2), dtype)
    out = _Rows(E * cfg.frames, N, dtype)        # never grown: see _Rows
    if use_student:
        student_rows = by_student.numpy()
        obs_rows = _Rows(E, N, dtype)                            # one frame, every episode
        everyone = np.arange(E, dtype=np.int64)
        slots = torch.arange(N)
    for f in range(cfg.frames):
        if f % 8 == 0 and not live.any():
            break
        noise = cfg.noise * torch.randn(num_episodes, 2, generator=g, dtype=torch.float32) if cfg.noise > 0 else None
        out.reserve(E)
        if not use_student:
            # the noise in the world's dtype (drawn in float32 whatever torch's default: the same episodes)
            out.used += fastsim.frame(state, weights,
                                      zeros if noise is None else noise.numpy().astype(dtype, copy=False),
                                      live, out.used, *out.arrays, snap)
            if on_frame is not None:
                on_frame(f)
            continue
        fastsim.observe(state, everyone, *obs_rows.arrays)
        ctx, pred, boids, n, target = (torch.from_numpy(a) for a in obs_rows.arrays)
        obs = {"context": ctx, "predator": pred, "boids": boids, "mask": slots[None, :] < n[:, None]}
        drive = target.clone()
        rows = torch.from_numpy(np.flatnonzero(student_rows & (live > 0)))    # the student drives these
        if len(rows):
            act = student({k: v[rows] for k, v in obs.items()})
            drive[rows] = check_actions(act, len(rows), f"the student's actions at frame {f}").to(target)
        if noise is not None:
            drive = drive + noise
        keep = np.flatnonzero(live > 0)                          # episodes in order
        for dst, src in zip(out.arrays, obs_rows.arrays):
            dst[out.used:out.used + len(keep)] = src[keep]
        out.used += len(keep)
        # in the world's dtype, which fastsim checks
        fastsim.step(state, weights, np.ascontiguousarray(drive.numpy(), dtype), live, snap)
        if on_frame is not None:
            on_frame(f)
    return out.samples()


def _chunks(n_episodes: int) -> List[tuple]:
    return [(c, min(CHUNK_EPISODES, n_episodes - c * CHUNK_EPISODES))
            for c in range(math.ceil(n_episodes / CHUNK_EPISODES))]


def _worker_init(ignore_sigterm: bool = False):
    # Ctrl-C is the parent's to handle (close() ends the workers): a terminal's Ctrl-C reaches every
    # process of the run, and a worker it stopped printed its traceback, or, cut while it held the
    # task queue's lock, left close() (Pool.terminate) waiting for that lock forever. So is a SIGTERM
    # where the parent outlives one (the command line's handler, or the user's): SLURM, systemd and
    # `kill -- -PGID` send it to every process of the run. Ignored, not handled: a Python handler runs
    # late or never in a worker blocked on that lock, and the pool ends its workers by SIGKILL anyway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):     # born with it blocked (see _get_pool): one sent meanwhile is dropped now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    torch.set_num_threads(1)
    if fastsim is not None:
        fastsim.set_threads(1)


class _Worker(multiprocessing.context.SpawnProcess):
    def terminate(self):
        self.kill()     # it may ignore SIGTERM (_worker_init); Pool.terminate calls this

    @staticmethod
    def _Popen(process_obj):
        # multiprocessing's clean-up at exit ends daemon children by _popen.terminate(), then joins them:
        # a SIGTERM that they ignore hung the exit of a run whose close() a second SIGTERM cut
        popen = multiprocessing.context.SpawnProcess._Popen(process_obj)
        popen.terminate = popen.kill
        return popen


class WorkerError(RuntimeError):
    """A worker process of the episode generator ended while it was generating (or starting)."""


class _Pool(multiprocessing.pool.Pool):
    """A spawn pool whose workers are ended by SIGKILL, and that knows when one has died: Pool starts
    another in its place, and a result the dead one held is waited for forever."""

    def __init__(self, *args, **kwargs):
        self.workers: List[_Worker] = []       # every one started, the replaced ones too
        super().__init__(*args, **kwargs)

    def Process(self, ctx, *args, **kwds):
        w = _Worker(*args, **kwds)
        self.workers.append(w)
        return w

    @classmethod
    def _terminate_pool(cls, taskqueue, inqueue, outqueue, pool, change_notifier, worker_handler, task_handler,
                        result_handler, cache):
        # Pool's own hung on a worker killed while holding a lock of the pool's queues, which stays held for ever:
        # one killed while idle holds the task queue's (it waits on the queue holding it), one killed just after
        # sending a result the result queue's, and the pool's ending takes both. One killed while sending a
        # result leaves half of it in the result queue, and the thread reading it waits for the rest for ever.
        # This ending stops the starting of workers and kills them all first: then no other process uses the
        # queues, a lock a dead worker held is released, and closing the result queue cuts off half a result.
        # A Ctrl-C within it (a second one in a notebook, 20-30 ms after the first) left the handler threads
        # waiting for ever, one of them holding half a result: the ending takes a second at most, and a Ctrl-C
        # counts once it is done.
        with deferred_interrupt():
            me = threading.current_thread()
            worker_handler._state = task_handler._state = multiprocessing.pool.TERMINATE
            change_notifier.put(None)
            if me is not worker_handler:
                worker_handler.join()      # it starts no worker after this
            taskqueue.put(None)            # the task handler's end, which the worker handler sends unless it died
            for w in pool:
                if w.exitcode is None:
                    w.kill()
            for w in pool:
                w.join()
            # a lock held now is a dead worker's, but for the task handler's moments on the result queue's
            for lock, wait in ((inqueue._rlock, 0.0), (outqueue._wlock, 1.0)):     # (Windows' pipes: no _wlock)
                if lock is not None:
                    lock.acquire(timeout=wait)
                    lock.release()
            if me is not task_handler:
                while task_handler.is_alive():      # it may wait to put a task, or its end marker, no one reads
                    if inqueue._reader.poll(0.05):
                        # bytes, not messages: a worker killed as it read a task (a DAgger student's weights
                        # are 300 KB) left the rest of it, whose bytes read as a message's length waited for ever
                        if os.name == "nt":
                            inqueue._reader.recv_bytes()         # (a message pipe: the rest is a message)
                        else:
                            os.read(inqueue._reader.fileno(), 1 << 16)
                task_handler.join()
            result_handler._state = multiprocessing.pool.TERMINATE
            outqueue.put(None)
            outqueue._writer.close()
            if me is not result_handler:
                result_handler.join()

    def check_workers(self) -> None:
        """Raise WorkerError naming how a worker ended, if one has (a live pool's workers never end). One
        killed while idle too: it may have held the lock on the pool's task queue, which the workers started
        in its place then wait for, for ever."""
        codes = [w.exitcode for w in self.workers if w.exitcode is not None]
        if not codes:
            return
        why = ("killed, or out of memory (exit code -9: the system's out-of-memory killer)" if min(codes) < 0
               else "it failed (its error is above)")
        raise WorkerError(
            f"{len(codes)} worker process(es) of the episode generator ended while generating (exit code "
            f"{', '.join(map(str, sorted(set(codes))))}): {why}; --num_workers 0 (num_workers=0) generates in this "
            f"process. In a script of your own, a worker fails as it starts when the code that generates episodes "
            f"or trains with num_workers > 0 does not sit under `if __name__ == \"__main__\":` (each worker runs "
            f"the main script again: Python's spawn start method).")


# What crosses the pool's pipes is bytes and numpy arrays, never torch tensors: multiprocessing pickles those
# through shared memory (/dev/shm), whose 64 MB in a container (Docker's and Kubernetes' default) a chunk of
# 512 episodes (about 85 MB) overflowed: epoch 1 died in a traceback of tensor printouts
_SAMPLE_FIELDS = ("context", "predator", "boids", "n", "target")


def _worker_rollout(args):
    num, cfg, seed, student_state, beta = args
    student = None
    if student_state is not None:
        from .model import TransformerPredator
        # in the student's own dtype: a float64 model rebuilt in float32 (load_state_dict casts) drove
        # other episodes than in this process, where ModelPolicy runs it in float64
        student = TransformerPredator.from_config(student_state["config"]).to(student_state.get("dtype", torch.float32))
        student.load_state_dict(torch.load(io.BytesIO(student_state["weights"]), weights_only=True))
        student.eval()
    part = _rollout_chunk(num, cfg, seed, student, beta, torch.device("cpu"))
    return tuple(getattr(part, k).numpy() for k in _SAMPLE_FIELDS)


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


class EpisodeGenerator:
    """Generates episodes in chunks, in this process or in a pool of worker processes.

    The data depends on (seed, stream) only, never on num_workers, for one backend: on a CPU with
    numba, its kernels (the CLI's and the notebooks' case); on a GPU, or without numba, the torch
    world, whose episodes part from numba's by rounding (see rollout_chunk). Across CPUs the numba
    kernels' episodes part by rounding too: their neighbour sums are added in the order of the CPU's
    vector width (AVX-512, AVX2 and plain x86-64 gave three different sets of one seed's episodes).
    Use as a context manager or call close() to stop the workers.
    """

    def __init__(self, cfg: Optional[WorldConfig] = None, seed: int = 0, num_workers: int = 0, device="cpu",
                 progress: bool = True):
        self.cfg = as_config(WorldConfig, cfg, "cfg")
        self.cfg.validate()
        self.seed = whole_number("seed", seed, 0, SEED_MAX)
        self.num_workers = whole_number("num_workers", num_workers, 0)
        if not isinstance(progress, (bool, np.bool_)):     # progress="no" is a true string: bars shown
            raise TypeError(f"progress must be True or False, not {type(progress).__name__}")
        self.device, self.progress = as_device(device), bool(progress)
        self._pool = None

    def _get_pool(self):
        if self._pool is None and self.num_workers > 0:
            import multiprocessing as mp
            # the workers are born ignoring Ctrl-C (an ignored signal stays ignored in a new process), so
            # that one during their imports, before _worker_init runs, stops none of them; this process
            # ignores it meanwhile too (while they are started: some 30 ms)
            own = (threading.current_thread() is threading.main_thread()
                   and signal.getsignal(signal.SIGINT) is not None)     # None: a handler set outside Python
            before = signal.signal(signal.SIGINT, signal.SIG_IGN) if own else None
            # the workers are born with SIGTERM blocked (a mask survives exec) until _worker_init ignores it.
            # This thread's block does not hold one back from the run: another thread takes it, and the
            # handler stops the run here; a worker already started is killed at exit (_Worker._Popen).
            term = {signal.SIGTERM} if hasattr(signal, "pthread_sigmask") else None
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, term) if term else None
            try:
                self._pool = _Pool(self.processes(), initializer=_worker_init,
                                   initargs=(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL,),
                                   context=mp.get_context("spawn"))
            finally:
                if own:
                    signal.signal(signal.SIGINT, before)
                if term:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return self._pool

    def processes(self) -> int:
        """Worker processes to start: num_workers, but no more than the CPUs this process may use.

        Each worker is a Python process with its own torch (~200 MiB): a thousand of them
        exhausted the memory, and more than one per CPU generates no faster."""
        cpus = usable_cpus()
        if self.num_workers > cpus:
            warnings.warn(f"num_workers={self.num_workers}, but this machine has {cpus} CPU(s) for this process: "
                          f"starting {cpus} worker processes", stacklevel=3)
        return min(self.num_workers, cpus)

    def generate(self, num_episodes: int, stream: int, student=None, beta: float = 1.0,
                 desc: str = "episodes") -> SampleSet:
        """num_episodes episodes of one stream (e.g. 1 + epoch for training, 0 for validation).

        Raises ValueError / TypeError naming a bad argument before any work: num_episodes must be
        >= 1, stream in 0..SEED_MAX, beta in [0, 1], and the samples must fit in memory.
        """
        from tqdm.auto import tqdm

        num_episodes, _ = _check_generation(num_episodes, self.cfg, student, beta, self.device,
                                            workers=min(self.num_workers, usable_cpus())
                                            if self.device.type == "cpu" else 0)
        stream = whole_number("stream", stream, 0, SEED_MAX)
        if student is not None and self.num_workers > 0 and self.device.type == "cpu":
            from .model import TransformerPredator
            if not isinstance(student, TransformerPredator):
                raise TypeError(f"with num_workers > 0 the student must be a TransformerPredator (the worker "
                                f"processes rebuild it from its config and weights), not {type(student).__name__}")
        chunks = _chunks(num_episodes)
        seeds = [chunk_seed(self.seed, stream, c) for c, _ in chunks]
        bar = tqdm(total=num_episodes, desc=desc, unit="ep", disable=not self.progress, leave=False)
        parts = []
        pool = self._get_pool() if self.device.type == "cpu" else None
        try:
            if pool is not None:
                state = None
                if student is not None:
                    weights = io.BytesIO()        # bytes: see _SAMPLE_FIELDS
                    torch.save({k: v.detach().cpu() for k, v in student.state_dict().items()}, weights)
                    state = {"config": vars(student.config).copy(), "weights": weights.getvalue(),
                             "dtype": next(student.parameters()).dtype}
                try:
                    pool.check_workers()     # one dead since the last generation may have left the queue locked
                    args = [(num, self.cfg, s, state, beta) for (_, num), s in zip(chunks, seeds)]
                    results = pool.imap(_worker_rollout, args)
                    for _, num in chunks:
                        while True:      # a chunk a dead worker held never comes: look at the workers meanwhile
                            try:
                                part = results.next(timeout=0.5)
                                break
                            except multiprocessing.TimeoutError:
                                pool.check_workers()
                        parts.append(SampleSet(*map(torch.from_numpy, part)))
                        bar.update(num)
                    del part
                except BaseException:
                    # a dead worker, or a Ctrl-C in a notebook: the pool went on with the chunks no one waits for,
                    # their samples piling up, and the next generation waited behind them
                    self.close()
                    raise
            else:
                for (_, num), s in zip(chunks, seeds):
                    # the bar moves with the chunk's frames: a chunk of 512 episodes that the student drives
                    # takes 10-20 s on a laptop's CPU (a minute at --frames 1000), and stood at 0 meanwhile
                    done, frames = bar.n, self.cfg.frames

                    def tick(f, done=done, num=num):
                        bar.update(done + num * (f + 1) // frames - bar.n)
                    parts.append(_rollout_chunk(num, self.cfg, s, student, beta, self.device,
                                                on_frame=tick if self.progress else None))
                    bar.update(done + num - bar.n)      # the rest, where every episode ended early
        finally:
            bar.close()
        # one chunk (up to CHUNK_EPISODES episodes) is the set itself: a copy of it doubled the peak
        return _join(parts)

    def close(self) -> None:
        """Stop the workers. The pool is forgotten first, and its workers killed whatever stops its ending: a
        Ctrl-C that cut terminate() short (it may wait a second for a dead worker's lock) left the pool set and
        half ended, and the next close() waited in join() for ever."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            pool.terminate()
            pool.join()
        finally:
            for w in getattr(pool, "workers", ()):
                if w.exitcode is None:
                    with contextlib.suppress(Exception):
                        w.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _join(parts: List[SampleSet]) -> SampleSet:
    """SampleSet.cat of a generation's chunks that lets each chunk go once copied (parts is emptied).

    SampleSet.cat held every chunk and the joined set at once, twice the samples: the memory
    check before the work counts the samples and one chunk, which is this join's peak."""
    if len(parts) == 1:
        return parts.pop()
    S, N = sum(len(p) for p in parts), max(p.boids.shape[1] for p in parts)
    p = parts[0]
    out = SampleSet(p.context.new_empty(S, 2), p.predator.new_empty(S, 2), p.boids.new_empty(S, N, 4),
                    p.n.new_empty(S), p.target.new_empty(S, 2))
    r = 0
    while parts:
        p = parts.pop(0)
        k, w = len(p), p.boids.shape[1]
        for name in ("context", "predator", "n", "target"):
            getattr(out, name)[r:r + k] = getattr(p, name)
        out.boids[r:r + k, :w] = p.boids
        out.boids[r:r + k, w:] = 0
        r += k
    return out


def generate_episodes(num_episodes: int, cfg: Optional[WorldConfig] = None, seed: int = 0, stream: int = 0,
                      num_workers: int = 0, progress: bool = False) -> SampleSet:
    """One-shot episode generation (see EpisodeGenerator): num_episodes >= 1 episodes of stream
    `stream` from `seed` (both 0..SEED_MAX); cfg a WorldConfig, its dict, or None for the defaults."""
    with EpisodeGenerator(cfg, seed, num_workers, progress=progress) as gen:
        return gen.generate(num_episodes, stream)
