"""Closest pursuit (SPEC.md section 5): steer toward the nearest live boid, batched."""
from __future__ import annotations

from typing import Mapping

import torch

from .config import PREDATOR_MAX_FORCE, widest_float

Tensor = torch.Tensor


def _distances(boids: Tensor, mask: Tensor):
    """(rel [B, N, 2], dist [B, N]) in float64 (inf where no live boid), as the browser computes them.

    float32 offsets are exact in float64, and so are their squares: the distances, the nearest boid and the
    0.001 cut-off are then the browser's for those offsets on every CPU and GPU. In float32, a distance
    within an ulp of 0.001 went either way with the kernel's rounding of the sum of squares, and the
    cut-off itself was float32's 0.001, 4.7e-11 above the browser's. (Apple's MPS has no float64: float32.)
    """
    # shapes only (no values read: no wait for a GPU). A mask [N] or [1, N] broadcast one sample's live
    # boids over the whole batch without a word; boids [N, 4] failed with "tuple index out of range"
    if not isinstance(boids, torch.Tensor) or not isinstance(mask, torch.Tensor) or boids.dim() != 3 \
            or boids.shape[2] != 4 or tuple(mask.shape) != tuple(boids.shape[:2]):
        raise ValueError(f"the teacher takes boids [B, N, 4] and mask [B, N] tensors, got boids "
                         f"{list(getattr(boids, 'shape', [type(boids).__name__]))} and mask "
                         f"{list(getattr(mask, 'shape', [type(mask).__name__]))} (one sample is a batch of one: "
                         f"boids[None], mask[None])")
    rel = boids[..., :2].to(widest_float(boids.device))                    # [B, N, 2]
    dist = torch.sqrt(rel[..., 0] * rel[..., 0] + rel[..., 1] * rel[..., 1])  # [B, N]: x * x + y * y, as the page
    return rel, dist.masked_fill(~mask.bool(), float("inf"))


def closest_pursuit(boids: Tensor, mask: Tensor) -> Tensor:
    """Unit vector toward the nearest live boid -> [B, 2]; (0, 0) with no boid or one within 0.001.

    boids [B, N, 4] (relX, relY, velX, velY), mask [B, N] bool. Ties go to the first boid. Computed in
    float64 and rounded once to boids' dtype: a float32 batch gets the browser's action for its offsets,
    correctly rounded.
    """
    rel, dist = _distances(boids, mask)
    if dist.shape[1] == 0:
        return boids.new_zeros(boids.shape[0], 2)
    best, idx = dist.min(-1)                                               # first minimum on ties
    target = rel.gather(1, idx[:, None, None].expand(-1, 1, 2)).squeeze(1)  # [B, 2]
    ok = torch.isfinite(best) & (best >= 0.001)
    out = torch.where(ok[:, None], target / torch.where(ok, best, torch.ones_like(best))[:, None],
                      torch.zeros_like(target))
    return out.to(boids.dtype)


def nearest_boid(boids: Tensor, mask: Tensor) -> Tensor:
    """Index of the teacher's target boid [B] (-1 where there is none)."""
    _, dist = _distances(boids, mask)
    if dist.shape[1] == 0:
        return torch.full((boids.shape[0],), -1, dtype=torch.long, device=boids.device)
    best, idx = dist.min(-1)
    return torch.where(torch.isfinite(best), idx, torch.full_like(idx, -1))


class TeacherPolicy:
    """The teacher, with the seed's per-sample API and a batched call.

    policy(batch) -> [B, 2] unit vectors (the training target); get_action(dict) -> force in
    world units (x 0.2); get_normalized_action(dict) -> the unit vector.
    """

    def __call__(self, batch: Mapping[str, Tensor]) -> Tensor:
        boids, mask = batch["boids"], batch["mask"]
        if not isinstance(boids, Tensor) or not isinstance(mask, Tensor):   # numpy failed deep in torch.sqrt
            raise TypeError(f"the teacher takes a batch of tensors (predlab.data.collate makes one from browser "
                            f"dicts), got boids as {type(boids).__name__} and mask as {type(mask).__name__}")
        # boids [N, 4] of one sample failed with "tuple index out of range"; a mask [1, N] broadcast
        # one sample's live boids over the whole batch
        if boids.dim() != 3 or boids.shape[2] != 4 or tuple(mask.shape) != tuple(boids.shape[:2]):
            raise ValueError(f"the teacher takes boids [B, N, 4] and mask [B, N], got boids {list(boids.shape)} "
                             f"and mask {list(mask.shape)} (one sample is a batch of one: boids[None], mask[None])")
        # a NaN position made the whole sample's action (0, 0), an infinite one hid that boid: a silent
        # label either way, where SPEC.md's teacher has an answer only for finite inputs
        rel = boids[..., :2][mask.bool()]
        if not bool(torch.isfinite(rel).all()):
            raise ValueError("the teacher's batch has a live boid whose relX or relY is NaN or infinite")
        return closest_pursuit(boids, mask)

    def get_normalized_action(self, structured_inputs: Mapping) -> Tensor:
        """Unit vector toward the nearest boid for one browser-form dict -> [2]."""
        from .data import collate
        b = collate([structured_inputs], dtype=torch.float64)
        return self(b)[0]

    def get_action(self, structured_inputs: Mapping) -> Tensor:
        """The force the browser applies: normalized action x PREDATOR_MAX_FORCE -> [2]."""
        return self.get_normalized_action(structured_inputs) * PREDATOR_MAX_FORCE
