"""Batched boids world in torch (SPEC.md sections 1-4): E environments, batch first.

State: boid positions/velocities [E, N, 2] with an alive mask [E, N], the predator [E, 2],
each environment with its own canvas size [E, 2]. Every pairwise term is one [E, N, N]
broadcast; nothing on the step path loops over boids or environments in Python.
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, Optional

import torch

from . import config as C
from .config import WorldConfig, whole_number, widest_float

Tensor = torch.Tensor
MAX_BOIDS = 10_000          # boids in one episode
MIN_CANVAS = 16             # px, as WorldConfig's width_min / height_min
MAX_CANVAS = 2 ** 16        # px: float32 positions keep sub-pixel motion up to here (config.MAX_CANVAS)


def _given_ints(name: str, given, E: int, lo: int, hi: int) -> Tensor:
    """A per-episode whole number given as one int or E of them (list, array, integer tensor) -> [E] long."""
    if isinstance(given, numbers.Integral) and not isinstance(given, bool):
        return torch.full((E,), whole_number(name, given, lo, hi), dtype=torch.long)
    what = f"{name} must be a whole number in {lo}..{hi}, or {E} of them (one per episode)"
    if isinstance(given, (bool, str, bytes)) or not hasattr(given, "__len__"):
        raise ValueError(f"{what}, got {given!r}")
    try:
        t = torch.as_tensor(given)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise ValueError(f"{what}, got {type(given).__name__} {str(given)[:80]}") from None
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{what}, got {t.dtype} values")
    if tuple(t.shape) not in ((), (E,)):
        raise ValueError(f"{what}, got shape {tuple(t.shape)}")
    t = t.to("cpu", torch.long).expand(E).clone()
    lo_got, hi_got = int(t.min()), int(t.max())
    if lo_got < lo or hi_got > hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got values from {lo_got} to {hi_got}")
    return t


def host_to_device(t: Tensor, device) -> Tensor:
    """A CPU tensor (random draws from a seeded CPU generator, say) on `device`, without making the
    host wait for the device. To a GPU, t.to(device) is a blocking copy: torch synchronises the
    stream after it, so the host waits for every kernel queued before it; from pinned memory with
    non_blocking the copy joins the stream's queue instead (torch keeps the pinned block until it is done)."""
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def world_bytes(num_envs: int, boids_max: int) -> int:
    """Bytes, about, of starting num_envs episodes of up to boids_max boids (float64 draws, the world)."""
    return num_envs * (96 * boids_max + 256)


def step_bytes(num_envs: int, boids_max: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes, about, of stepping num_envs episodes of up to boids_max boids together: six float32
    [E, N, N] planes, the neighbour masks in float32 and in float64 (48 bytes a pair, counted 50 for
    the allocator's slack), and the frame's [E, N] terms (110-140 bytes a boid, counted 200).
    Measured (peak RSS): 127-129 KB per 50-boid episode (counted 139), 1.97 MB at 200 (2.04),
    4.39-4.41 MB at 300 (4.56). At 400 bytes a boid, a 50-boid episode was counted 15-18% over.
    A float64 world's planes are float64: 583 MB for 4 episodes of 1,500 boids (65 bytes a pair,
    counted 70), where float32's took 436 MB."""
    wide = dtype == torch.float64
    return num_envs * ((70 if wide else 50) * boids_max ** 2 + (300 if wide else 200) * boids_max + 4096)


def fast_magnitude(v: Tensor) -> Tensor:
    """Alpha-max-beta-min magnitude of [..., 2] vectors -> [...] (the browser's fast norm)."""
    a = v.abs()
    ax, ay = a[..., 0], a[..., 1]
    return 0.96 * torch.maximum(ax, ay) + 0.398 * torch.minimum(ax, ay)


def limit(v: Tensor, m) -> Tensor:
    """Scale [..., 2] vectors whose fast magnitude exceeds m down to m."""
    mag = fast_magnitude(v)
    scale = m / mag.clamp_min(m)          # m / mag above m; m / m == 1 exactly otherwise
    return v * scale.unsqueeze(-1)


def set_magnitude(v: Tensor, m) -> Tensor:
    """Rescale [..., 2] vectors to fast magnitude m; zero vectors stay zero."""
    mag = fast_magnitude(v)
    # SPEC: any vector of fast magnitude > 0 is scaled (a floor of 1e-30 scaled a 1e-32 mean velocity to 0.035,
    # not 3.5). The floor keeps m / mag finite, so that a zero vector stays zero: the dtype's smallest normal
    # number, or more for an m >= 4, whose m / tiny is past the dtype's largest
    info = torch.finfo(mag.dtype)
    floor = max(abs(float(m)) / info.max, info.tiny) if isinstance(m, numbers.Real) else info.tiny
    scale = m / mag.clamp_min(floor)
    return v * scale.unsqueeze(-1)


def fast_normalize(v: Tensor) -> Tensor:
    """Divide [..., 2] vectors by their fast magnitude; zero vectors stay zero."""
    return set_magnitude(v, 1.0)


def _wrap(p: Tensor, size: Tensor, margin: float) -> Tensor:
    """The browser's wrap: past size+margin jumps to -margin and back. p [..., 2], size broadcastable."""
    hi = size + margin
    p = torch.where(p > hi, torch.full_like(p, -margin), p)
    return torch.where(p < -margin, hi.expand_as(p), p)


def wrap_delta(d: Tensor, size: Tensor) -> Tensor:
    """Wrap-aware offset (SPEC.md section 4): |d| > size/2 moves d by one canvas size."""
    return torch.where(d.abs() > size / 2, torch.where(d > 0, d - size, d + size), d)


def _check_state(pos, vel, alive, pred_pos, pred_vel, size) -> None:
    """ValueError/TypeError naming the argument of a World built by hand that is not one: it failed deep in
    torch (an [N, 2] pos: "not enough values to unpack"; numpy arrays; integer positions), or broadcast
    silently (alive of [N] over E worlds, a [1, 2] size beside E predators), or stepped NaN."""
    given = {"pos": pos, "vel": vel, "alive": alive, "pred_pos": pred_pos, "pred_vel": pred_vel, "size": size}
    for k, v in given.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"World: {k} must be a tensor, got {type(v).__name__} (torch.as_tensor turns an array "
                            "into one)")
    if pos.dim() != 3 or pos.shape[-1] != 2:
        raise ValueError(f"World: pos has shape {tuple(pos.shape)}, expected (E, N, 2): E worlds of N boids "
                         "(one world: pos[None])")
    E, N = pos.shape[:2]
    want = {"vel": (E, N, 2), "alive": (E, N), "pred_pos": (E, 2), "pred_vel": (E, 2), "size": (E, 2)}
    for k, shape in want.items():
        if tuple(given[k].shape) != shape:
            raise ValueError(f"World: {k} has shape {tuple(given[k].shape)}, expected {shape} (pos is {(E, N, 2)})")
    floats = {k: v for k, v in given.items() if k != "alive"}
    for k, v in floats.items():
        if not v.dtype.is_floating_point:
            raise TypeError(f"World: {k} is {v.dtype}: give a float tensor (.float())")
        if v.dtype != pos.dtype or v.device != pos.device:
            raise TypeError(f"World: {k} is {v.dtype} on {v.device}, pos {pos.dtype} on {pos.device}: give every "
                            "field in one dtype, on one device")
    if pos.dtype not in (torch.float32, torch.float64):
        # as World.random refuses them: in float16 EPSILON (1e-7) is 0, so boids at one point (every
        # episode's start) divided by zero and every velocity became NaN; in bfloat16 flocks stood still
        raise TypeError(f"World: pos is {pos.dtype}: the world steps in torch.float32 or torch.float64 (.float())")
    if alive.device != pos.device:
        raise TypeError(f"World: alive is on {alive.device}, pos on {pos.device}")
    if pos.device.type != "cpu":       # reading values back would make the host wait for a device
        return
    for k, v in floats.items():
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"World: {k} contains NaN or infinity")
    if E and not bool((size > 0).all()):
        raise ValueError(f"World: size holds a canvas of {float(size.min()):g} px or less: canvases are wider and "
                         "taller than 0")


class World:
    """E boids worlds stepped together, on any device.

    Attributes: pos, vel [E, N, 2]; alive [E, N] bool; pred_pos, pred_vel [E, 2];
    size [E, 2] (canvas W, H in px). N is the largest flock; smaller flocks are padded
    with dead boids.
    """

    def __init__(self, pos: Tensor, vel: Tensor, alive: Tensor, pred_pos: Tensor, pred_vel: Tensor,
                 size: Tensor, cfg: Optional[WorldConfig] = None):
        _check_state(pos, vel, alive, pred_pos, pred_vel, size)
        # as World.random's: a dict failed at the first step in an AttributeError, and a NaN weight stepped a
        # NaN flock without a word
        cfg = C.as_config(WorldConfig, cfg, "cfg")
        cfg.validate()
        self.pos, self.vel, self.alive = pos, vel, alive.bool()
        self.pred_pos, self.pred_vel, self.size = pred_pos, pred_vel, size
        self.cfg = cfg
        self.frame = 0
        self._buffers: Dict[str, Tensor] = {}
        self._weights: Optional[tuple] = None

    def _scratch(self, name: str, shape, dtype: Optional[torch.dtype] = None) -> Tensor:
        """A reusable work buffer: fresh multi-MB tensors every frame cost page faults on CPU.

        A flat block that only grows, viewed at the shape asked for, so worlds of other sizes can
        share one dict of them (share_scratch) and hold one set of [E, N, N] planes among them."""
        dtype, numel = dtype or self.pos.dtype, math.prod(shape)
        t = self._buffers.get(name)
        if t is None or t.numel() < numel or t.dtype != dtype or t.device != self.pos.device:
            t = self._buffers[name] = torch.empty(numel, dtype=dtype, device=self.pos.device)
        return t[:numel].view(shape)

    def share_scratch(self, other: "World") -> None:
        """Step with other's work buffers: worlds stepped one after another (a chunk's sub-worlds)
        then hold the largest one's [E, N, N] planes once, instead of each its own."""
        self._buffers = other._buffers

    def _flock_weights(self) -> Tensor:
        """cfg's cohesion, separation and alignment weights as a [3] tensor on the world's device.

        Made once (again if cfg's weights change), and by fills, not from a Python list: a list
        becomes a device tensor through a blocking copy, which on a GPU made every frame wait
        for the device."""
        key = (self.cfg.cohesion_weight, self.cfg.separation_weight, self.cfg.alignment_weight)
        pos = self.pos
        if self._weights is None or self._weights[0] != key or self._weights[1].device != pos.device \
                or self._weights[1].dtype != pos.dtype:
            self._weights = (key, torch.stack([pos.new_full((), w) for w in key]))
        return self._weights[1]

    # ------------------------------------------------------------------ creation
    @classmethod
    def random(cls, num_envs: int, cfg: Optional[WorldConfig] = None, generator: Optional[torch.Generator] = None,
               device="cpu", dtype=torch.float32, n_boids=None, width=None, height=None) -> "World":
        """Start E episodes as the browser does (SPEC.md section 3).

        Canvas sizes and flock sizes are drawn from cfg's ranges unless given (int or [E]):
        widths and heights in 16..2**16 px, flocks of 1..10000 boids. All draws come from
        `generator` (a CPU torch.Generator), so a seed fixes the episode. Raises ValueError
        (TypeError for a wrong generator or dtype) naming the argument before drawing anything,
        also when the episodes would not fit in memory.
        """
        cfg = C.as_config(WorldConfig, cfg, "cfg")
        cfg.validate()
        E = whole_number("num_envs", num_envs, 1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, not {type(generator).__name__}")
        # float16 turned the 1e12 px that keeps dead boids away into infinity, and so every velocity
        # into NaN; bfloat16 rounded a boid's 3.5 px a frame away, so flocks stood still
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be a floating-point torch dtype: torch.float32 or torch.float64, "
                            f"got {dtype!r}")
        if n_boids is None and cfg.boids_max > MAX_BOIDS:
            raise ValueError(f"cfg.boids_max must be <= {MAX_BOIDS}, got {cfg.boids_max}")
        # 'cuda' where torch sees none failed in torch, after the draws; None is the CPU, as it was
        device = C.as_device("cpu" if device is None else device)
        if n_boids is None or isinstance(n_boids, numbers.Integral) and not isinstance(n_boids, bool):
            N = cfg.boids_max if n_boids is None else whole_number("n_boids", n_boids, 1, MAX_BOIDS)
            given_n = None
        else:                                           # one per episode: E of them are already here
            given_n = _given_ints("n_boids", n_boids, E, 1, MAX_BOIDS)
            N = int(given_n.max())
        problem = C.memory_problem([(f"{E} episodes of up to {N} boids", world_bytes(E, N))], f"{E} episodes")
        if problem:
            raise ValueError(problem + "; start fewer episodes (num_envs)")
        canvas = [None if v is None else _given_ints(name, v, E, MIN_CANVAS, MAX_CANVAS)
                  for name, v in (("width", width), ("height", height))]
        if given_n is None and n_boids is not None:
            given_n = torch.full((E,), N, dtype=torch.long)
        g = generator

        def draw_int(lo, hi, given):
            return given if given is not None else torch.randint(lo, hi + 1, (E,), generator=g)

        W = draw_int(cfg.width_min, cfg.width_max, canvas[0]).double()
        H = draw_int(cfg.height_min, cfg.height_max, canvas[1]).double()
        n = draw_int(cfg.boids_min, cfg.boids_max, given_n)
        N = int(n.max())
        start = torch.stack([torch.floor(torch.rand(E, generator=g, dtype=torch.float64) * W),
                             torch.floor(torch.rand(E, generator=g, dtype=torch.float64) * H)], -1)  # [E, 2]
        angle = torch.rand(E, N, generator=g, dtype=torch.float64) * (2 * math.pi)          # [E, N]
        vel = torch.stack([torch.cos(angle), torch.sin(angle)], -1)                          # [E, N, 2]
        pos = start[:, None, :].expand(E, N, 2).clone()
        alive = torch.arange(N)[None, :] < n[:, None]                                         # [E, N]
        size = torch.stack([W, H], -1)
        pred_pos = size / 2
        pred_vel = torch.rand(E, 2, generator=g, dtype=torch.float64) * 2 - 1
        to = dict(device=device, dtype=dtype)
        return cls(pos.to(**to), vel.to(**to), alive.to(device), pred_pos.to(**to), pred_vel.to(**to),
                   size.to(**to), cfg)

    @property
    def num_envs(self) -> int:
        return self.pos.shape[0]

    @property
    def n_alive(self) -> Tensor:
        """Live boids per environment [E]."""
        return self.alive.sum(-1)

    def any_alive(self) -> bool:
        """Whether any environment has a live boid (on a GPU, a wait for the device)."""
        return bool(self.alive.any())

    def _check_step_memory(self) -> None:
        """ValueError before a CPU step's [E, N, N] planes are made, where they would not fit in memory.

        World.random counts the start state only (the numba kernels step it in far less): 8 episodes of
        10,000 boids started in 8 MB, and their first World.step asked for 37 GiB, which the OOM killer
        answered by ending the process (a notebook's kernel) without a message."""
        E, N = self.alive.shape
        if self.pos.device.type != "cpu" or (E, N) == getattr(self, "_memory_ok", None):
            return
        problem = C.memory_problem([(f"stepping {E} episodes of up to {N} boids together (their [E, N, N] "
                                     f"pairwise planes)", step_bytes(E, N, self.pos.dtype))], "World.step")
        if problem:
            raise ValueError(problem + "; step fewer episodes at a time (num_envs) or smaller flocks")
        self._memory_ok = (E, N)

    # ------------------------------------------------------------------ physics
    def _boid_acceleration(self) -> Tensor:
        """Flocking plus predator avoidance for every boid at once -> [E, N, 2].

        The browser updates boids one at a time in place, so a boid sees the new state of
        the boids before it in the same frame. predlab updates all boids from one snapshot
        (synchronous): the one deliberate difference from the browser, which lets a whole
        frame be a handful of batched tensor operations.
        """
        pos, vel, alive, cfg = self.pos, self.vel, self.alive, self.cfg
        E, N, _ = pos.shape
        # Written for CPU speed (see predlab/bench.py): x and y as separate [E, N, N] planes
        # (reductions over a trailing axis of 2 are slow), masks as float arithmetic (bool
        # compares, where and masked_fill cost several times a multiply), in-place where possible.
        # Dead boids are moved 1e12 px apart from everything for the pairwise terms: they can
        # then never be anyone's neighbour, and no [E, N, N] "both alive" mask is needed.
        x, y = pos[..., 0], pos[..., 1]                                  # [E, N]
        slot = torch.arange(1, N + 1, device=pos.device, dtype=pos.dtype)
        x = torch.where(alive, x, slot * 1e12)
        buf = self._scratch
        dx = torch.sub(x[:, :, None], x[:, None, :], out=buf("dx", (E, N, N)))   # [E, N, N] x_i - x_j
        dy = torch.sub(y[:, :, None], y[:, None, :], out=buf("dy", (E, N, N)))
        raw = torch.mul(dx, dx, out=buf("raw", (E, N, N)))
        raw += torch.mul(dy, dy, out=buf("tmp", (E, N, N)))
        raw.sqrt_()                                                      # [E, N, N] Euclidean |p_i - p_j|
        dist = torch.add(raw, C.EPSILON, out=buf("dist", (E, N, N)))    # > 0 always, so "0 < d" holds
        # The neighbour masks, laid out [E, N(j), 2, N(i)] (distances are symmetric, so this is
        # also [E, i, k, j]): k = 0 cohesion, 1 alignment. Separation's mask is a plane of its own:
        # it needs no sums, only a count, and in the bmm it took a third of the product and of
        # the float64 copy, the slowest steps of a frame.
        masks = buf("masks", (E, N, 2, N))
        torch.le(dist, C.BOID_NEIGHBOR_DISTANCE, out=masks[:, :, 0])     # cohesion:   d <= 60
        torch.lt(dist, C.BOID_NEIGHBOR_DISTANCE, out=masks[:, :, 1])     # alignment:  d < 60
        masks.diagonal(dim1=1, dim2=3).zero_()                           # never the boid itself
        near = torch.lt(dist, C.BOID_DESIRED_SEPARATION, out=buf("near", (E, N, N)))   # separation: d < 40
        near.diagonal(dim1=1, dim2=2).zero_()
        # One bmm gives cohesion's position sums, alignment's velocity sums and their counts.
        # In float64: float32 products follow torch's matmul precision, and its TF32 or bfloat16
        # (set_float32_matmul_precision "high" / "medium") put cohesion's centre pixels off.
        # Apple's MPS has no float64 (and no such setting): float32 there.
        wide = widest_float(pos.device)
        lhs = torch.cat([pos, vel, pos.new_ones(E, N, 1)], -1).transpose(1, 2).to(wide)   # [E, 5, N]
        sums = torch.bmm(lhs, masks.view(E, N, 2 * N).to(wide)).to(pos.dtype).view(E, 5, 2, N)
        # [E, 3, N, 1] counts; whole numbers below 2**24, so exact in float32 sums too
        cnt = torch.stack([sums[:, 4, 0], near.sum(-1), sums[:, 4, 1]], 1)[..., None]
        # separation: sum_j normalize(p_i - p_j) / d_ij; normalize keeps a zero vector zero
        w = torch.eq(raw, 0, out=buf("tmp", (E, N, N))).add_(raw)       # |p_i - p_j|, 1 where it is 0
        w = torch.div(near, w.mul_(dist), out=w)                         # [E, N, N]
        sep = torch.stack([dx.mul_(w).sum(-1), dy.mul_(w).sum(-1)], -1)  # [E, N, 2]
        total = torch.stack([sums[:, 0:2, 0].transpose(1, 2), sep, sums[:, 2:4, 1].transpose(1, 2)], 1)
        mean = total / cnt.clamp_min(1)                                  # [E, 3, N, 2] coh, sep, ali
        mean[:, 0] -= pos                                                # cohesion steers toward the centre
        steer = limit(set_magnitude(mean, C.BOID_MAX_SPEED) - vel[:, None], C.BOID_MAX_FORCE)
        steer = steer * (cnt > 0)                                        # zero when there are no neighbours
        weights = self._flock_weights()
        flock = (steer * weights[:, None, None]).sum(1)                  # [E, N, 2]

        dp = pos - self.pred_pos[:, None, :]                             # [E, N, 2]
        d = torch.sqrt((dp * dp).sum(-1)) + C.EPSILON                    # [E, N]
        push = fast_normalize(dp) * ((C.PREDATOR_RANGE - d) / C.PREDATOR_RANGE * C.PREDATOR_TURN_FACTOR)[..., None]
        avoid = limit(push, C.PREDATOR_AVOID_LIMIT) * (d < C.PREDATOR_RANGE)[..., None]
        return flock + avoid

    @torch.no_grad()
    def step(self, action: Tensor) -> Tensor:
        """Advance one frame: boids, then the predator driven by action [E, 2] in [-1, 1], then catches.

        Returns the number of boids caught this frame per environment [E]. Raises ValueError for an
        action of another shape, or (on the CPU) one that is not finite.
        """
        if not isinstance(action, Tensor) or action.shape != self.pred_vel.shape:
            # [E] or [2, E] broadcast into the wrong predators without an error
            got = tuple(action.shape) if isinstance(action, Tensor) else type(action).__name__
            raise ValueError(f"World.step: action must be a tensor of shape {tuple(self.pred_vel.shape)} "
                             f"(one (x, y) per environment), not {got}")
        if action.device.type == "cpu" and not bool(torch.isfinite(action).all()):   # on a GPU: no sync per frame
            raise ValueError("World.step: action holds NaN or infinite values; the predator would become NaN")
        self._check_step_memory()
        acc = self._boid_acceleration()
        vel = limit(self.vel + acc, C.BOID_MAX_SPEED)
        pos = _wrap(self.pos + vel, self.size[:, None, :], C.BOID_BORDER_OFFSET)
        live = self.alive[..., None]
        self.vel = torch.where(live, vel, self.vel)
        self.pos = torch.where(live, pos, self.pos)

        action = action.to(self.pred_vel).clamp(-1, 1)
        self.pred_vel = limit(self.pred_vel + action * C.PREDATOR_MAX_FORCE, C.PREDATOR_MAX_SPEED)
        self.pred_pos = _wrap(self.pred_pos + self.pred_vel, self.size, C.PREDATOR_BORDER_OFFSET)

        dp = self.pos - self.pred_pos[:, None, :]
        caught = self.alive & (torch.sqrt((dp * dp).sum(-1)) < C.CATCH_RADIUS)   # [E, N]
        self.alive = self.alive & ~caught
        self.frame += 1
        return caught.sum(-1)

    # ------------------------------------------------------------------ model inputs
    def observe(self) -> Dict[str, Tensor]:
        """The model's inputs (SPEC.md section 4) as a padded batch.

        Returns context [E, 2], predator [E, 2], boids [E, N, 4] (relX, relY, velX, velY),
        mask [E, N] (True = live boid). Dead boids keep their slot, masked out.
        """
        D, V = C.MAX_DISTANCE, C.VELOCITY_SCALE
        rel = wrap_delta(self.pos - self.pred_pos[:, None, :], self.size[:, None, :])   # [E, N, 2]
        boids = torch.cat([rel / D, (self.vel / V).clamp(-1, 1)], -1)                   # [E, N, 4]
        boids = boids * self.alive[..., None]
        return {"context": self.size / D, "predator": (self.pred_vel / V).clamp(-1, 1),
                "boids": boids, "mask": self.alive.clone()}

    def state_dict(self) -> Dict[str, Tensor]:
        """A copy of the full state (for tests and replays)."""
        return {k: getattr(self, k).clone() for k in ("pos", "vel", "alive", "pred_pos", "pred_vel", "size")}
