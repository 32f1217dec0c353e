"""Batched boids world in torch (SPEC.md sections 1-4): E environments, batch first.

State: boid positions/velocities [E, N, 2] with an alive mask [E, N], the predator [E, 2],
each environment with its own canvas size [E, 2]. Every pairwise term is one [E, N, N]
broadcast; nothing on the step path loops over boids or environments in Python.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from . import config as C
from .config import WorldConfig

Tensor = torch.Tensor


def fast_magnitude(v: Tensor) -> Tensor:
    """Alpha-max-beta-min magnitude of [..., 2] vectors -> [...] (the browser's fast norm)."""
    a = v.abs()
    return 0.96 * a.amax(-1) + 0.398 * a.amin(-1)


def limit(v: Tensor, m) -> Tensor:
    """Scale [..., 2] vectors whose fast magnitude exceeds m down to m."""
    mag = fast_magnitude(v)
    scale = torch.where(mag > m, m / mag.clamp_min(1e-30), torch.ones_like(mag))
    return v * scale.unsqueeze(-1)


def set_magnitude(v: Tensor, m) -> Tensor:
    """Rescale [..., 2] vectors to fast magnitude m; zero vectors stay zero."""
    mag = fast_magnitude(v)
    scale = torch.where(mag > 0, m / mag.clamp_min(1e-30), torch.ones_like(mag))
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


class World:
    """E boids worlds stepped together, on any device.

    Attributes: pos, vel [E, N, 2]; alive [E, N] bool; pred_pos, pred_vel [E, 2];
    size [E, 2] (canvas W, H in px). N is the largest flock; smaller flocks are padded
    with dead boids.
    """

    def __init__(self, pos: Tensor, vel: Tensor, alive: Tensor, pred_pos: Tensor, pred_vel: Tensor,
                 size: Tensor, cfg: Optional[WorldConfig] = None):
        self.pos, self.vel, self.alive = pos, vel, alive.bool()
        self.pred_pos, self.pred_vel, self.size = pred_pos, pred_vel, size
        self.cfg = cfg or WorldConfig()
        self.frame = 0

    # ------------------------------------------------------------------ creation
    @classmethod
    def random(cls, num_envs: int, cfg: Optional[WorldConfig] = None, generator: Optional[torch.Generator] = None,
               device="cpu", dtype=torch.float32, n_boids=None, width=None, height=None) -> "World":
        """Start E episodes as the browser does (SPEC.md section 3).

        Canvas sizes and flock sizes are drawn from cfg's ranges unless given (int or [E]).
        All draws come from `generator` (a CPU torch.Generator), so a seed fixes the episode.
        """
        cfg = cfg or WorldConfig()
        cfg.validate()
        g = generator
        E = num_envs

        def draw_int(lo, hi, given):
            if given is not None:
                return torch.as_tensor(given, dtype=torch.long).expand(E).clone()
            return torch.randint(lo, hi + 1, (E,), generator=g)

        W = draw_int(cfg.width_min, cfg.width_max, width).double()
        H = draw_int(cfg.height_min, cfg.height_max, height).double()
        n = draw_int(cfg.boids_min, cfg.boids_max, n_boids)
        if (n < 1).any() or (n > 10_000).any():
            raise ValueError("n_boids must be between 1 and 10000")
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
        diff = pos[:, :, None, :] - pos[:, None, :, :]                   # [E, N, N, 2] p_i - p_j
        raw = torch.sqrt((diff * diff).sum(-1))                          # [E, N, N]
        dist = raw + C.EPSILON
        eye = torch.eye(N, dtype=torch.bool, device=pos.device)
        other = alive[:, :, None] & alive[:, None, :] & ~eye             # [E, N, N]
        coh_m = other & (dist <= C.BOID_NEIGHBOR_DISTANCE)
        sep_m = other & (dist > 0) & (dist < C.BOID_DESIRED_SEPARATION)
        ali_m = other & (dist > 0) & (dist < C.BOID_NEIGHBOR_DISTANCE)

        def count(mask: Tensor) -> Tensor:
            return mask.sum(-1, keepdim=True).to(pos.dtype)              # [E, N, 1]

        def steer(desired: Tensor, cnt: Tensor) -> Tensor:
            s = limit(set_magnitude(desired, C.BOID_MAX_SPEED) - vel, C.BOID_MAX_FORCE)
            return torch.where(cnt > 0, s, torch.zeros_like(s))

        n_coh, n_sep, n_ali = count(coh_m), count(sep_m), count(ali_m)
        cohesion = steer((coh_m.to(pos.dtype) @ pos) / n_coh.clamp_min(1) - pos, n_coh)
        unit = diff / torch.where(raw > 0, raw, torch.ones_like(raw)).unsqueeze(-1)  # normalize; zero stays zero
        separation = steer(((sep_m.to(pos.dtype) / dist).unsqueeze(-1) * unit).sum(2) / n_sep.clamp_min(1), n_sep)
        alignment = steer((ali_m.to(pos.dtype) @ vel) / n_ali.clamp_min(1), n_ali)

        dp = pos - self.pred_pos[:, None, :]                             # [E, N, 2]
        d = torch.sqrt((dp * dp).sum(-1)) + C.EPSILON                    # [E, N]
        push = fast_normalize(dp) * ((C.PREDATOR_RANGE - d) / C.PREDATOR_RANGE * C.PREDATOR_TURN_FACTOR)[..., None]
        avoid = torch.where((d < C.PREDATOR_RANGE)[..., None], limit(push, C.PREDATOR_AVOID_LIMIT),
                            torch.zeros_like(push))
        return (cfg.cohesion_weight * cohesion + cfg.separation_weight * separation
                + cfg.alignment_weight * alignment + avoid)

    @torch.no_grad()
    def step(self, action: Tensor) -> Tensor:
        """Advance one frame: boids, then the predator driven by action [E, 2] in [-1, 1], then catches.

        Returns the number of boids caught this frame per environment [E].
        """
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
