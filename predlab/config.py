"""Configuration dataclasses: the browser's constants, the world, the model and training.

Each field's docstring is its help text: the CLI flags, the notebook sliders and the
checkpoint are all built from these classes, so they cannot drift apart.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from typing import Optional, Tuple

# SPEC.md section 1: the browser's world constants.
BOID_MAX_SPEED = 3.5
BOID_MAX_FORCE = 0.1
BOID_DESIRED_SEPARATION = 40.0
BOID_NEIGHBOR_DISTANCE = 60.0
BOID_BORDER_OFFSET = 10.0
PREDATOR_MAX_SPEED = 2.0
PREDATOR_MAX_FORCE = 0.2
PREDATOR_SIZE = 18.0
CATCH_RADIUS = 0.7 * PREDATOR_SIZE  # 12.6
PREDATOR_RANGE = 80.0
PREDATOR_TURN_FACTOR = 0.3
PREDATOR_AVOID_LIMIT = 0.15
PREDATOR_BORDER_OFFSET = 20.0
MAX_DISTANCE = 1000.0
VELOCITY_SCALE = max(BOID_MAX_SPEED, PREDATOR_MAX_SPEED)
NUM_BOIDS = 50
EPSILON = 1e-7
SEPARATION_WEIGHT = 2.0
COHESION_WEIGHT = 1.0
ALIGNMENT_WEIGHT = 1.0

# The largest finite float32: the model and the browser's weights are float32, so inputs and
# weights past it are refused rather than turned into infinity.
FLOAT32_MAX = 3.4028234663852886e38

# What --select_best_by picks best_model.pt by (lower val loss, or higher catch ratio).
SELECT_BEST_BY = ("val_loss", "catch_ratio")

# Seeds go to torch's generators, which take signed 64-bit integers (as do its sizes: see batch_size).
SEED_MAX = 2 ** 63 - 1

# The world's bounds (sim.py's MAX_CANVAS and MAX_BOIDS). Browsers draw a canvas of at most 32,767 px
# a side. float32 positions near 2**16 px are 1/128 px apart: a boid that moved 100 px there was
# 0.15 px from the float64 world's, where at 2**20 it was 3 px off and at 2**24 25 px (whole pixels
# only: sub-pixel motion was lost); a predator at 2 px a frame stood still on a 10**8 px canvas.
MAX_CANVAS = 2 ** 16
MAX_BOIDS = 10_000
# Frames of an episode: a million is 4.6 hours of the page at 60 frames/s. `--frames 1e30` was taken,
# and evaluated (or ran the catch check) until killed.
MAX_FRAMES = 10 ** 6

# SPEC.md section 6/7: the sizes the stock browser page accepts.
BROWSER_SIZES = {"d_model": 48, "n_heads": 4, "n_layers": 3, "ffn_hidden": 96}


def _f(default, help: str, **kw):
    """A dataclass field whose help text travels to argparse and the notebook widgets."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class WorldConfig:
    """How episodes are drawn: canvas sizes, flock sizes, episode length, exploration."""

    width_min: int = _f(320, "smallest canvas width in px (phone)", min=16, max=MAX_CANVAS)
    width_max: int = _f(3840, "largest canvas width in px (4K)", min=16, max=MAX_CANVAS)
    height_min: int = _f(320, "smallest canvas height in px", min=16, max=MAX_CANVAS)
    height_max: int = _f(2160, "largest canvas height in px", min=16, max=MAX_CANVAS)
    boids_min: int = _f(1, "fewest boids in an episode", min=1, max=MAX_BOIDS)
    boids_max: int = _f(50, "most boids in an episode (the browser runs 50)", min=1, max=MAX_BOIDS)
    frames: int = _f(200, "frames per episode (it ends earlier when every boid is caught)", min=1, max=MAX_FRAMES)
    # at most float32's largest: the world is float32, and a weight past it (1e39) became infinity there,
    # so that every episode's boids were NaN and the run stopped with a traceback
    noise: float = _f(0.3, "std of Gaussian noise added to the driving action, so that states off the "
                      "teacher's path are seen (the label stays the clean teacher action)", min=0.0, max=FLOAT32_MAX)
    separation_weight: float = _f(SEPARATION_WEIGHT, "flocking: separation weight", min=0.0, max=FLOAT32_MAX)
    cohesion_weight: float = _f(COHESION_WEIGHT, "flocking: cohesion weight", min=0.0, max=FLOAT32_MAX)
    alignment_weight: float = _f(ALIGNMENT_WEIGHT, "flocking: alignment weight", min=0.0, max=FLOAT32_MAX)

    def validate(self) -> None:
        """Raise ValueError naming the field when the ranges are inconsistent."""
        _check_min(self)
        for lo, hi in (("width_min", "width_max"), ("height_min", "height_max"), ("boids_min", "boids_max")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo}={getattr(self, lo)} is larger than {hi}={getattr(self, hi)}")


@dataclass
class ModelConfig:
    """The transformer's sizes. The browser page accepts only 48 / 4 / 3 / 96."""

    d_model: int = _f(48, "model width (the stock browser page runs only 48 / 4 / 3 / 96 of these four sizes, and "
                          "random weights for others: predlab's demo runs any)", min=1)
    n_heads: int = _f(4, "attention heads (must divide d_model)", min=1)
    n_layers: int = _f(3, "transformer blocks", min=1)
    ffn_hidden: int = _f(96, "GEGLU hidden width", min=1)
    dropout: float = _f(0.0, "dropout on the residual branches while training (none at inference)",
                        min=0.0, max=0.99)

    def validate(self) -> None:
        """Raise ValueError naming the field when the sizes cannot build a model."""
        _check_min(self)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")


@dataclass
class TrainConfig:
    """Optimisation, data volume, logging and checkpointing."""

    epochs: int = _f(30, "training epochs", min=1, max=SEED_MAX - 1)   # checkpoints hold no more (MAX_EPOCHS)
    # at most torch's largest size (a signed 64-bit integer): any batch up to it trains, one larger than the
    # samples taking them all, where 2**63 stopped the run's first epoch with torch.split's OverflowError
    batch_size: int = _f(256, "samples per optimiser step", min=1, max=SEED_MAX)
    learning_rate: float = _f(2e-3, "peak learning rate (AdamW; linear warm-up, cosine decay)", min=0.0,
                              positive=True)
    weight_decay: float = _f(0.01, "AdamW weight decay", min=0.0)
    warmup_epochs: float = _f(1.0, "epochs of linear learning-rate warm-up", min=0.0)
    min_lr_ratio: float = _f(0.05, "final learning rate as a fraction of the peak", min=0.0, max=1.0)
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0 turns it off)", min=0.0)
    train_episodes: int = _f(100, "fresh training episodes generated every epoch", min=1)
    val_episodes: int = _f(50, "validation episodes, generated once from their own seed", min=1)
    num_workers: int = _f(0, "processes generating episodes (0 = in this process)", min=0)
    device: str = _f("auto", "auto (CUDA where there is a GPU, else cpu), cpu, cuda, cuda:N or mps", choices_hint="auto|cpu|cuda|mps")
    seed: int = _f(0, "seed for data, initial weights and shuffling", min=0, max=SEED_MAX)
    resume: Optional[str] = _f(None, "checkpoint to resume from (continues at its next epoch, with its run's "
                               "settings; flags given change them)")
    init_weights: Optional[str] = _f(None, "start a new run from the weights in this model.js/.json (the page's, "
                                     "say, to fine-tune it) or checkpoint .pt: the model's sizes are the file's, "
                                     "the optimizer, schedule and world (the world flags) are this run's")
    early_stopping: int = _f(0, "stop after this many epochs without val-loss improvement (0 = off); with "
                             "--select_best_by catch_ratio, this many catch evaluations without a higher ratio",
                             min=0)
    min_delta: float = _f(1e-5, "smallest val-loss drop (or catch-ratio rise, with --select_best_by catch_ratio) "
                          "that counts as an improvement for --early_stopping; best_model.pt is the lowest val "
                          "loss (highest ratio) by any margin", min=0.0)
    save_every: int = _f(5, "write checkpoint_epoch_N.pt every this many epochs", min=1)
    keep_checkpoints: int = _f(3, "how many checkpoint_epoch_N.pt files to keep", min=1)
    checkpoint_dir: str = _f("checkpoints", "where checkpoints and the exported model.js go")
    log_dir: str = _f("runs", "TensorBoard runs folder (one subfolder per training)")
    threads: int = _f(0, "CPU threads for torch (0 = torch's default)", min=0)
    cpu_split: int = _f(0, "on a CPU, split each batch into this many parts that run side by side in threads, "
                        "one core each (0 = auto: one part per torch thread, at most 4, and no more parts than "
                        "hold 900 tokens each, a token being a row's boids + 3; 1 = off); the small matrices "
                        "of this model keep the cores busier that way", min=0)
    cuda_graphs: bool = _f(True, "on a CUDA GPU, capture each training step once per batch shape as a CUDA graph "
                           "and replay it: one launch instead of hundreds of small ones (--no-cuda_graphs: "
                           "launch every kernel from Python)")
    tf32: bool = _f(False, "on a CUDA GPU, float32 matrix products on tensor cores while training (TF32: "
                    "products of 10-bit mantissas, float32 sums); validation and rollouts keep torch's setting "
                    "(full float32 unless changed)")
    progress: bool = _f(True, "show progress bars (on a terminal; --progress shows them in a log or pipe too)")
    eval_every: int = _f(5, "closed-loop catch evaluation every this many epochs, logged as catch_ratio and "
                         "catches_per_1k (0 = off)", min=0)
    eval_episodes: int = _f(64, "episodes of that evaluation (the same seeded ones every time)", min=1)
    eval_frames: int = _f(300, "frames per episode of that evaluation", min=1, max=MAX_FRAMES)
    select_best_by: str = _f("val_loss", "best_model.pt and early stopping follow val_loss (lower is better) "
                             "or catch_ratio (higher is better; needs eval_every > 0, and counts evaluations, "
                             "not epochs, for early stopping)", choices=SELECT_BEST_BY)
    dagger: bool = _f(True, "DAgger: from dagger_start on, the model drives a share 1 - beta of the episodes, "
                      "the teacher labels every state, and samples are aggregated across epochs "
                      "(--no-dagger: plain behaviour cloning on teacher-driven episodes)")
    dagger_start: int = _f(2, "first epoch (counting from 1) in which the model drives episodes", min=1)
    dagger_beta_decay: float = _f(0.5, "beta (share of teacher-driven episodes) = decay ** (epoch - dagger_start "
                                  "+ 1) from dagger_start on, 1 before", min=0.0, max=1.0)
    dagger_beta_min: float = _f(0.1, "floor of beta", min=0.0, max=1.0)
    dagger_buffer: int = _f(0, "most aggregated DAgger samples kept, the oldest dropped first; an epoch's own "
                            "fresh samples are always kept (0 = two epochs' worth of fresh samples)", min=0)

    def validate(self) -> None:
        """Raise ValueError naming the field when a value is out of range."""
        _check_min(self)
        if not isinstance(self.device, str):     # re.fullmatch's TypeError named no field
            raise ValueError(f"device must be a name such as 'cpu', 'cuda' or 'auto', got {self.device!r}")
        for name in ("checkpoint_dir", "log_dir", "resume", "init_weights"):
            v = getattr(self, name)
            if not isinstance(v, (str, os.PathLike)) and not (v is None and name in ("resume", "init_weights")):
                raise ValueError(f"{name} must be a path, got {v!r}")
        _check_device_string(self.device, "device")
        if self.learning_rate * self.weight_decay >= 1:     # AdamW scales the weights by 1 - lr * wd a step
            raise ValueError(f"weight_decay {self.weight_decay:g} x learning_rate {self.learning_rate:g} must be "
                             f"below 1: each step scales the weights by 1 minus that product, so they vanish or "
                             f"flip sign and the run diverges (AdamW's weight decay is usually 0.001 to 0.1)")
        if self.select_best_by not in SELECT_BEST_BY:
            raise ValueError(f"select_best_by must be val_loss or catch_ratio, got {self.select_best_by!r}")
        if self.select_best_by == "catch_ratio" and not self.eval_every:
            raise ValueError("select_best_by catch_ratio needs eval_every > 0")


def _check_min(cfg) -> None:
    import math

    import numbers

    for f in dataclasses.fields(cfg):
        v, d = getattr(cfg, f.name), f.default
        if isinstance(d, bool):
            if not isinstance(v, bool):
                raise ValueError(f"{f.name} must be true or false, got {v!r}")
            continue
        if isinstance(d, int) and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
            raise ValueError(f"{f.name} must be a whole number, got {v!r}")
        if isinstance(d, float) and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
            raise ValueError(f"{f.name} must be a number, got {v!r}")
        if isinstance(v, numbers.Rational) and not isinstance(v, numbers.Integral):
            # a Fraction: torch's AdamW refused it at the first step, format(..., "g") in an error's words
            raise ValueError(f"{f.name} must be a float or an int, got {v!r} (float(...) makes one)")
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            continue
        try:
            finite = math.isfinite(float(v))             # numpy's floats too
        except OverflowError:                            # an int past float's range (1.8e308)
            raise ValueError(f"{f.name} must be a finite number, got an integer of 309 digits or more "
                             "(beyond a float's range)") from None
        if not finite:
            raise ValueError(f"{f.name} must be a finite number, got {v}")
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if f.metadata.get("positive") and not v > 0:     # first: "-1: must be >= 0" let 0 seem allowed
            raise ValueError(f"{f.name} must be > 0, got {v}")
        if lo is not None and v < lo:
            raise ValueError(f"{f.name} must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise ValueError(f"{f.name} must be <= {hi}, got {v}")


def strict_json(x):
    """Figures for json.dumps(..., allow_nan=False): NaN and infinities (a ratio where the teacher caught
    nothing, an interval without a top, the val MSE of a diverged run) as null, in dicts and lists at any
    depth. json.dumps wrote NaN, which JSON has not: JSON.parse and jq refused the whole file."""
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def plural(n: int, noun: str) -> str:
    """A count and its noun as printed: "1 episode", "1,100 episodes" (not "1 episodes")."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


class NotAWholeNumber(TypeError, ValueError):
    """An argument that should be a whole number is of another type (a float, a bool, a string).
    Both a TypeError and a ValueError, so that either is caught as callers expect."""


def whole_number(name: str, v, lo: int, hi: Optional[int] = None) -> int:
    """v as an int when it is a whole number in lo..hi (no upper bound when hi is None); else
    NotAWholeNumber or ValueError naming it. The one such check of the library's entry points."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise NotAWholeNumber(f"{name} must be a whole number, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ValueError(f"{name} must be a whole number {bound}, got {v}")
    return int(v)


def resolve_device(name: Optional[str] = "auto", verbose: bool = False, flag: str = "--device") -> "torch.device":
    """'auto' (or None) picks CUDA where torch sees a GPU, else the CPU. Apple's MPS runs only when
    asked for ('mps'): no run of predlab on it has been measured or tested, while the CPU path (numba
    kernels, batches split over the cores) is, so a Mac's default stays on what is known to work.
    A malformed name, or a named device that is absent, raises ValueError; messages name it as
    `flag` (the CLI's --device, or a library argument such as device=)."""
    import torch

    name = "auto" if name is None else str(name)
    _check_device_string(name, flag.rstrip("="))
    name = name.lower()
    cli = flag.startswith("--")
    asked = f"{flag} {name}" if cli else f"{flag}{name!r}"
    instead = f"use {flag} cpu or auto" if cli else f"use {flag}'cpu' or 'auto'"
    if name == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{asked} asked for, but this torch sees no CUDA GPU "
                             f"(torch {torch.__version__}, cuda build: {torch.version.cuda or 'no'}); {instead}")
        if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
            raise ValueError(f"{asked}: only {torch.cuda.device_count()} CUDA device(s) present")
        dev = torch.device(name)
    elif name in ("mps", "mps:0"):          # (a model's device on a Mac reads mps:0)
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ValueError(f"{asked} asked for, but Apple MPS is not available here; {instead}")
        dev = torch.device("mps")
    else:
        dev = torch.device(name)                         # cpu, cpu:N
    if verbose:
        # the GPU's name where there is one ("device: cuda (NVIDIA H100 ...)"); "device: cpu (cpu)" said nothing
        print(f"device: {dev} ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else f"device: {dev}")
    return dev


def widest_float(device) -> "torch.dtype":
    """The widest float a device computes in, for sums that must not round: float64, but float32
    on Apple's MPS, which has no float64 (a float64 tensor there raises TypeError)."""
    import torch

    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def as_device(device, name: str = "device") -> "torch.device":
    """A torch.device as given, or one named ("auto", "cpu", "cuda:1"; None is "auto") and
    resolved by resolve_device, which names a malformed or absent one; TypeError for anything else."""
    import torch

    if isinstance(device, torch.device):     # checked as its name is: torch.device("cuda") where there is none
        # (a model's device on a Mac is mps:0, which resolve_device knows as mps)
        device = device.type if device.type == "mps" and device.index in (None, 0) else str(device)
    if device is not None and not isinstance(device, str):
        raise TypeError(f"{name} must be a name such as 'cpu', 'cuda' or 'auto', or a torch.device, "
                        f"not {type(device).__name__}")
    return resolve_device(device, flag=f"{name}=")


def real_number(name: str, v, lo: Optional[float] = None, hi: Optional[float] = None) -> float:
    """v when it is a finite real number in [lo, hi] (None: no bound); else a TypeError (not a
    number: a bool, a string) or ValueError (NaN, infinite, out of range) naming it."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {v!r}")
    if isinstance(v, numbers.Rational) and not isinstance(v, numbers.Integral):
        # a Fraction: torch's AdamW and format(..., "g") refuse it, at the first step or in an error's words
        raise TypeError(f"{name} must be a float or an int, got {v!r} (float(...) makes one)")
    try:
        finite = math.isfinite(v)
    except OverflowError:        # an int past float's range: "int too large to convert to float" named nothing
        raise ValueError(f"{name} must be a finite number, got an integer of 309 digits or more "
                         "(beyond a float's range)") from None
    if not finite or (lo is not None and v < lo) or (hi is not None and v > hi):
        bound = (f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
                 else f">= {lo:g}" if lo is not None else f"<= {hi:g}" if hi is not None else "finite")
        raise ValueError(f"{name} must be {bound}, got {v!r}")
    return v


DEVICE_INDEX_MAX = 127         # torch keeps a device's index in 8 bits


def _check_device_string(device: str, flag: str) -> None:
    """Names in any case, as resolve_device reads them ('CUDA' is 'cuda'). The message names flag
    (--device, device): "unknown device 'nan'" alone did not say which value was meant."""
    # ASCII digits without a leading zero: torch refuses others ("Invalid device string: 'cpu:01'", a
    # traceback), and above 127 it wraps the index without a word (cuda:256 was GPU 0)
    m = re.fullmatch(r"(auto|cpu|mps|cuda)(?::(0|[1-9][0-9]*))?", (device or "").lower())
    if not m or (m[1] == "auto" and m[2]) or (m[1] == "mps" and m[2] not in (None, "0")):
        raise ValueError(f"{flag}: unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    if m[2] and (len(m[2]) > 3 or int(m[2]) > DEVICE_INDEX_MAX):
        raise ValueError(f"{flag}: device index {m[2]} in {device!r}: torch numbers devices 0 to {DEVICE_INDEX_MAX}")


def bounded_number(kind, lo=None, hi=None, positive: bool = False):
    """An argparse type: parse an int or float, refuse non-numbers, NaN/inf, values outside [lo, hi]
    and, with positive, zero."""
    import argparse
    import math

    def parse(text):
        try:
            v = kind(text) if kind is not int else _whole(text)
        except OverflowError:     # 1e401 is whole: "not a whole number" was false
            raise argparse.ArgumentTypeError(f"{text!r} is past the largest count predlab reads (10**400)") from None
        except ValueError:
            what = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if positive and not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        if lo is not None and v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {text}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi}, got {text}")
        return v
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _whole(text: str) -> int:
    """int(text), or a whole number written with an exponent or a point: --train_episodes 1e4 was
    refused as "'1e4' is not a whole number". Read as a decimal, so 1e23 is 10**23 exactly, not the
    float nearest it; ValueError for anything else (1e-3, 2.5, nan)."""
    import decimal
    try:
        return int(text)
    except ValueError:
        pass
    try:
        d = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        raise ValueError(text) from None
    if not d.is_finite() or d != d.to_integral_value():
        raise ValueError(text)
    if d.adjusted() > 400:    # no count anyone means, and its digits would take a while to write out
        raise OverflowError(text)
    return int(d)


def config_fields(cls) -> Tuple[dataclasses.Field, ...]:
    """The fields of a config dataclass (for CLI and widget builders)."""
    return dataclasses.fields(cls)


def as_config(cls, value, name: str):
    """value as a cls: None gives the defaults, a dict of its fields is converted; TypeError otherwise."""
    from collections.abc import Mapping
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return from_dict(cls, dict(value))
    raise TypeError(f"{name} must be a {cls.__name__} or a dict of its fields, not {type(value).__name__}")


def from_dict(cls, d: dict):
    """Build a config from a dict, refusing unknown keys with a message naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in d if k not in names), key=str)   # keys of any type: 1 or None too
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(map(str, unknown))}")
    return cls(**d)


# ---------------------------------------------------------------------- memory
def physical_memory() -> Optional[int]:
    """The memory this process may use in bytes: the machine's, or its container's limit (Linux
    cgroups) where that is lower; None where the system does not say."""
    import os
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        # Windows has no sysconf: every memory check was off there, and a run far past the memory started
        return _windows_memory()
    limit = _cgroup_memory_limit()
    return min(total, limit) if limit else total


def _windows_memory() -> Optional[int]:
    """The machine's physical memory from Windows' GlobalMemoryStatusEx, or None elsewhere or where it fails."""
    import ctypes
    windll = getattr(ctypes, "windll", None)
    if windll is None:
        return None

    class MemoryStatusEx(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_uint32), ("dwMemoryLoad", ctypes.c_uint32),
                    ("ullTotalPhys", ctypes.c_uint64), ("ullAvailPhys", ctypes.c_uint64),
                    ("ullTotalPageFile", ctypes.c_uint64), ("ullAvailPageFile", ctypes.c_uint64),
                    ("ullTotalVirtual", ctypes.c_uint64), ("ullAvailVirtual", ctypes.c_uint64),
                    ("ullAvailExtendedVirtual", ctypes.c_uint64)]
    status = MemoryStatusEx(dwLength=ctypes.sizeof(MemoryStatusEx))
    try:
        ok = windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status))
    except (AttributeError, OSError):
        return None
    return int(status.ullTotalPhys) if ok and status.ullTotalPhys else None


@functools.lru_cache(maxsize=None)
def _cgroup_memory_limit(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> Optional[int]:
    """The lowest memory limit on this process's cgroup or a group above it (a limit binds
    everything below it): cgroup v2's memory.max, or v1's memory.limit_in_bytes in the memory
    hierarchy; None where none is set."""
    from pathlib import Path, PurePosixPath
    groups = []                                   # (hierarchy's folder, this process's group, file)
    try:
        lines = Path(proc).read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:                            # "0::/a/b" (v2), "4:memory:/a/b" (v1)
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        if fields[0] == "0" and not fields[1]:
            groups.append((Path(root), fields[2], "memory.max"))
        elif "memory" in fields[1].split(","):
            groups.append((Path(root) / "memory", fields[2], "memory.limit_in_bytes"))
    groups += [(Path(root), "/", "memory.max"), (Path(root) / "memory", "/", "memory.limit_in_bytes")]
    limits = []
    for base, group, name in groups:
        own = PurePosixPath("/") / group
        for d in (own, *own.parents):             # the group, then each one above it
            try:
                text = (base / str(d).lstrip("/") / name).read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < 2 ** 60:    # "max", or v1's huge number: no limit
                limits.append(int(text))
    return min(limits) if limits else None


def sample_bytes(boids_max: int) -> int:
    """Bytes of one stored training sample: float32 context, predator, boids [N, 4], target; int64 count."""
    return (6 + 4 * boids_max) * 4 + 8


def attention_bytes(samples: int, n_heads: int, tokens: int, fused: bool = False, threads: int = 1,
                    backward: bool = True) -> int:
    """Bytes of one layer's attention for `samples` samples of `tokens` tokens: their float32 scores and
    weights, or, where predlab.fastops' fused kernel runs (`fused`), which keeps neither, its buffers: one
    sample's [T, T] weights per thread, and with a backward their gradients and as much again: a buffer
    under glibc's largest mmap threshold (32 MiB) is freed into the thread's own arena, which holds it
    (16 parts of one 2,000-boid row side by side took 810 MiB where their two buffers each and the
    activations came to 793)."""
    if fused:
        return threads * (3 if backward else 1) * 4 * tokens * (tokens + 16)
    return 2 * 4 * samples * n_heads * tokens ** 2


def step_bytes_training(batch: int, mc: "ModelConfig", boids_max: int, fused: bool = False, threads: int = 1) -> int:
    """Bytes, at worst, of one training step's activations: batch samples of boids_max boids, every
    layer's attention scores and weights (with `fused`, the fused kernel's per-thread buffers alone:
    see attention_bytes), the [B, T, D] / [B, T, F] terms that a layer keeps for backward (8 D + 3 F
    a token: its inputs, q | k | v, y, gate | up and their product), and the widest gradients that
    backward holds beside them (3 D + 3 F a token).

    Measured in the process's peak RSS over an epoch of batches split in two parts on 2 threads, as
    training runs it, with the fused kernel (tests/test_memory.py): 110 MB at batch 256 x 50 boids
    (counted 133), 291 at 128 x 300 (382), 481 at 64 x 1,000 (653); with the sliced kernel, which
    keeps the weights, 762-773 at 128 x 300 (1,508)."""
    d, f, T = mc.d_model, mc.ffn_hidden, boids_max + 3
    terms = (mc.n_layers * (8 * d + 3 * f) + 3 * d + 3 * f) * batch * T * 4
    if fused:
        return terms + attention_bytes(batch, mc.n_heads, T, fused=True, threads=threads)
    return terms + mc.n_layers * attention_bytes(batch, mc.n_heads, T)


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:,.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:,.0f} MiB"


def memory_problem(needs, what: str = "these settings", have: Optional[int] = None,
                   where: str = "this machine's {}") -> Optional[str]:
    """A message when the (description, bytes) needs add up to more than `have` bytes (default:
    this machine's memory), or None."""
    have = physical_memory() if have is None else have
    total = sum(b for _, b in needs)
    if have is None or total <= have:
        return None
    big = sorted(needs, key=lambda x: -x[1])
    big = big[:1] + [(d, b) for d, b in big[1:] if b >= have / 20]     # what it takes to fit
    parts = "; ".join(f"{d}: {_gib(b)}" for d, b in big)
    return f"{what} would need about {_gib(total)} of memory, more than {where.format(_gib(have))} ({parts})"


def training_memory(tc: "TrainConfig", wc: WorldConfig, mc: "ModelConfig", device=None) -> Optional[str]:
    """Why a training run with these settings cannot fit in memory, or None.

    Counts what it holds at once, at worst (episodes that run all their frames): samples, the
    model and its optimizer, one step's activations, the catch evaluation's episodes. On a CUDA
    device all of it is counted against the GPU's memory, and the samples (generated on the
    host, then moved) against the host's too. device: a torch.device or its name (None: the CPU).
    """
    import torch
    device = torch.device("cpu" if device is None else device)
    needs = _training_needs(tc, wc, mc, device)
    if device.type == "cuda":
        # samples are generated in host memory and moved to the GPU, where everything else is
        host = [n for n in needs if not n[0].startswith(("the model", "a training step", GRAPH_POOL,
                                                         "the catch evaluation", "validation's forwards"))]
        name = torch.cuda.get_device_name(device)
        return (memory_problem(host)
                or memory_problem([n for n in needs if not n[0].startswith((HOST_WORK, WORKERS))],
                                  have=torch.cuda.get_device_properties(device).total_memory,
                                  where=f"the {{}} of {name}"))
    return memory_problem(needs)


def _kept_samples(tc: "TrainConfig", wc: WorldConfig) -> Tuple[int, int]:
    """(an epoch's fresh samples, the samples trained on in an epoch), at most. --batch_size and
    --dagger_buffer are limits: no batch is larger than the samples trained on, and no buffer holds more
    than the run makes (a "keep everything" 10**8 asked for 77 GiB)."""
    fresh = tc.train_episodes * wc.frames
    if not tc.dagger:
        return fresh, fresh
    return fresh, (max(fresh, min(tc.dagger_buffer, tc.epochs * fresh)) if tc.dagger_buffer else 2 * fresh)


def _training_needs(tc: "TrainConfig", wc: WorldConfig, mc: "ModelConfig", device=None) -> list:
    """(description, bytes) of what training_memory counts, training on `device` (None: the CPU): what is
    held through the run (with the --num_workers processes), and the largest of what its phases take in
    turn (_training_work); on a GPU, the largest of those on the GPU, and DAgger's student forwards, which
    run on the host."""
    import torch
    sb = sample_bytes(wc.boids_max)
    fresh, kept = _kept_samples(tc, wc)
    epoch = fresh * sb
    d, f, L = mc.d_model, mc.ffn_hidden, mc.n_layers
    params = L * (4 * d * d + 3 * d * f) + 10 * d
    # the trainer copies what it trains on in the epoch's shuffled order: under DAgger that is the aggregated
    # buffer (counted below, with the samples it drops), not one epoch's fresh samples. A --dagger_buffer above
    # two epochs' samples held twice the buffer, and the check counted its copy as two epochs' samples
    needs = [("validation samples (--val_episodes x --frames x --boids_max)", tc.val_episodes * wc.frames * sb),
             ("the copy of DAgger's aggregated samples that an epoch trains on, in its order (--dagger_buffer, or 2 "
              "epochs' --train_episodes x --frames x --boids_max)",
              kept * sb) if tc.dagger else
             ("an epoch's training samples and their copy (--train_episodes x --frames x --boids_max)", 2 * epoch),
             ("the model, its gradients and optimizer state (--d_model, --n_layers, --ffn_hidden)", 16 * params)]
    work = _training_work(tc, wc, mc, device)
    from .data import usable_cpus, workers_memory      # (data imports this module)
    if tc.num_workers:      # the generator's processes, held through the run, on the host whatever the device
        workers = min(tc.num_workers, usable_cpus())
        needs.append((f"{WORKERS} ({workers}), each with its own Python and torch and a chunk of episodes' samples "
                      f"it builds and sends", workers_memory(workers, max(tc.train_episodes, tc.val_episodes), wc)[1]))
    if torch.device(device or "cpu").type == "cpu":
        needs.append(max(work, key=lambda w: w[1]))
    else:
        on_host = [w for w in work if w[0].startswith(HOST_WORK)]
        on_gpu = [w for w in work if w not in on_host]
        if torch.device(device).type == "cuda" and tc.cuda_graphs and kept >= tc.batch_size:
            # the full batches' steps are captured: their activations live in the graphs' private memory pool,
            # reserved for as long as the trainer holds its graphs. The epoch's last, smaller batch runs eagerly
            # (with the widest flocks: batches are cut from the samples sorted by flock size), and validation
            # and the catch evaluation run, beside that pool, not in its place; the check counted one at a time
            needs.append((f"{GRAPH_POOL}, held while the epoch's last, smaller batch, validation and the catch "
                          f"evaluation run (--no-cuda_graphs: not held)", on_gpu[0][1]))
            last = min(tc.batch_size - 1, kept - tc.batch_size)     # rows of the last batch, at most
            if last:
                on_gpu[0] = (f"{on_gpu[0][0]}, the epoch's last batch ({last} rows at most)",
                             _training_work(dataclasses.replace(tc, batch_size=last), wc, mc, device)[0][1])
            else:
                on_gpu = on_gpu[1:]
        needs += [max(on_gpu, key=lambda w: w[1])] + on_host if on_gpu else on_host
    if tc.dagger:
        needs.append(("DAgger's aggregated samples (--dagger_buffer, or 2 epochs' samples) and the oldest ones an "
                      "epoch drops, kept until it finishes", kept * sb + epoch))
    return needs


# what a GPU run does on the host: episodes are generated there, in --num_workers processes where
# those are given, DAgger's student driving them
HOST_WORK, WORKERS = "DAgger's student forwards", "the --num_workers processes"
GRAPH_POOL = "the captured training steps' activations in the CUDA graphs' memory pool (--batch_size x --boids_max)"


def _training_work(tc: "TrainConfig", wc: WorldConfig, mc: "ModelConfig", device=None) -> list:
    """(description, bytes) of what a training run's phases take beside its samples and model, one phase
    at a time: a training step, validation's forwards, the model's forwards driving DAgger's episodes,
    the catch evaluation."""
    import torch
    # (these modules import this one)
    from .data import usable_cpus
    from .evaluate import policy_forward_bytes, rollout_in_kernels, rollout_step_bytes
    from .model import auto_attention_kernel, forward_bytes, keeps_square
    from .train import split_parts_for, validation_rows
    dev = torch.device(device or "cpu")
    d = mc.d_model
    batch = min(tc.batch_size, _kept_samples(tc, wc)[1])
    # the step as the trainer runs it: on a CPU a batch split in parts side by side, each on one thread,
    # and the attention kernel chosen there; the browser's model takes the fused attention, which keeps no
    # [T, T] weights, so a step grows with the flock, not its square (1,000 boids at batch 256 was refused
    # for 25 GiB of them). Threads past the CPUs are not used (--threads 128 counted 128 kernels' buffers).
    threads = min(tc.threads or torch.get_num_threads(), usable_cpus())
    parts = split_parts_for(tc.cpu_split, batch, threads) if dev.type == "cpu" else 1
    on_thread = 1 if parts > 1 else threads
    kernel = auto_attention_kernel(dev.type, torch.float32, d // mc.n_heads, backward=True, threads=on_thread)
    square = keeps_square(kernel, dev.type)
    side = f" in {parts} parts side by side (--cpu_split)" if tc.cpu_split and parts > threads else ""
    work = [(f"a training step's activations (--batch_size x --boids_max{' squared' if square else ''}){side}",
             step_bytes_training(batch, mc, wc.boids_max, not square, max(parts, on_thread)))]
    # then, not at the same time: validation's forwards (parts side by side too, split by the batch size as
    # given: its batches are not cut to the samples trained on), the student's (DAgger) and the catch
    # evaluation's, with the evaluation's episodes
    T, val = wc.boids_max + 3, tc.val_episodes * wc.frames
    val_parts = split_parts_for(tc.cpu_split, tc.batch_size, threads) if dev.type == "cpu" else 1
    val_rows = min(validation_rows(tc.batch_size, T), val)
    val_side = (f" in {val_parts} parts side by side (--cpu_split)" if tc.cpu_split and val_parts > threads
                else "")
    work.append((f"validation's forwards (--batch_size x --boids_max){val_side}",
                 min(val_parts, -(-val // max(val_rows, 1)))
                 * forward_bytes(val_rows, T, mc, dev.type, torch.float32, 1 if val_parts > 1 else threads)))
    if tc.dagger:      # on the host whatever the device, in --num_workers processes of one thread each if given
        from .data import CHUNK_EPISODES, busy_workers
        workers = busy_workers(min(tc.num_workers, usable_cpus()), tc.train_episodes)   # a chunk each drives
        work.append((f"{HOST_WORK} (--train_episodes x --boids_max)",
                     workers * policy_forward_bytes(mc, min(tc.train_episodes, CHUNK_EPISODES), wc.boids_max, "cpu",
                                                    threads=1) if workers
                     else policy_forward_bytes(mc, tc.train_episodes, wc.boids_max, "cpu", threads=threads)))
    if tc.eval_every:
        work.append((f"the catch evaluation's episodes (--eval_episodes x --boids_max"
                     f"{'' if rollout_in_kernels(dev) else ' squared'}) and the model's forwards that drive them",
                     rollout_step_bytes(tc.eval_episodes, wc.boids_max, dev)
                     + policy_forward_bytes(mc, tc.eval_episodes, wc.boids_max, dev, threads=threads)))
    return work


class FlagParser(argparse.ArgumentParser):
    """Errors under a one-line usage (`short_usage` after the program's name): the full one is up to
    ~30 lines of flags that bury the message."""

    def __init__(self, *args, short_usage: str = "[flags]", **kwargs):
        super().__init__(*args, **kwargs)
        self.short_usage = short_usage
        # a value after a flag may start with "-" only where argparse reads it as a negative number, by
        # default -5 or -.5 alone: --learning_rate -1e-3 and --noise -inf were refused as "expected one
        # argument", as if none was given; read as values, they get the flag's own error (what it accepts)
        self._negative_number_matcher = re.compile(r"^-(\.?\d|inf|nan)", re.IGNORECASE)

    def error(self, message):
        self.exit(2, f"usage: {self.prog} {self.short_usage}   (--help lists them)\n{self.prog}: error: {message}\n")

    def _get_option_tuples(self, *args, **kwargs):
        # a prefix of a flag and of its dashed spelling (--learn: --learning_rate, --learning-rate)
        # is one flag, not an ambiguity; a prefix of two different flags still is
        seen, unique = set(), []
        for t in super()._get_option_tuples(*args, **kwargs):
            if id(t[0]) not in seen:
                seen.add(id(t[0]))
                unique.append(t)
        return unique


def add_config_flags(parser: argparse.ArgumentParser, cls, title: str, skip=(), given_only: bool = False) -> None:
    """A --flag (and its dashed spelling) per field of config class cls, typed and bounded by the
    field's metadata, in a group named title. given_only: every default is None, so that the caller
    can tell the flags given from those left out."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        default = f.default
        value = None if given_only else default
        help_ = f.metadata.get("help", "") + f" (default: {default})"
        if isinstance(default, bool):
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=value, help=help_)
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            kind = type(default)
            group.add_argument(*flags, dest=f.name, default=value, metavar=kind.__name__.upper(), help=help_,
                               type=bounded_number(kind, f.metadata.get("min"), f.metadata.get("max"),
                                                    f.metadata.get("positive", False)))
        else:
            group.add_argument(*flags, dest=f.name, default=value, help=help_, choices=f.metadata.get("choices"))
