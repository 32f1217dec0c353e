"""Closest pursuit (SPEC.md section 5): batched teacher against a per-sample Python statement."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from predlab.data import collate
from predlab.teacher import TeacherPolicy, closest_pursuit, nearest_boid


def reference_pursuit(sample: dict):
    """SPEC.md section 5 for one browser-form dict -> ((ax, ay), index or None)."""
    best, best_i = None, None
    for i, b in enumerate(sample["boids"]):
        d = math.sqrt(b["relX"] ** 2 + b["relY"] ** 2)
        if best is None or d < best:          # strict: the first one wins ties
            best, best_i = d, i
    if best is None or best < 0.001:
        return (0.0, 0.0), best_i
    b = sample["boids"][best_i]
    return (b["relX"] / best, b["relY"] / best), best_i


def _boid(x, y):
    return {"relX": x, "relY": y, "velX": 0.5, "velY": -0.5}


def _sample(boids):
    return {"context": {"canvasWidth": 1.0, "canvasHeight": 1.0}, "predator": {"velX": 0.0, "velY": 0.0},
            "boids": boids}


def edge_cases():
    """Ties, no boids, a boid on top of the predator, just above and below the 0.001 cut-off."""
    return [
        _sample([]),                                                    # no boid -> (0, 0)
        _sample([_boid(0.3, 0.4), _boid(0.1, 0.0), _boid(0.0, -0.1), _boid(-0.1, 0.0)]),  # tie: first (index 1)
        _sample([_boid(0.0, -0.1), _boid(0.1, 0.0)]),                   # tie the other way round
        _sample([_boid(0.5, 0.5), _boid(0.0006, 0.0007)]),              # nearest within 0.001 -> (0, 0)
        _sample([_boid(0.0, 0.0)]),                                     # exactly on the predator
        _sample([_boid(0.0008, 0.0008)]),                               # 0.00113: just outside the cut-off
        _sample([_boid(-0.9, 0.2)]),
        _sample([_boid(0.001, 0.0)]),                                   # exactly 0.001: not within, a unit vector
        _sample([_boid(0.0006, -0.0008)]),                              # exactly 0.001 too (float64)
    ]


def test_matches_reference_on_edge_cases():
    """Ties go to the first boid, no boids and distance < 0.001 give (0, 0), the rest a unit vector.

    A boid exactly 0.001 away is steered to, as in the browser (its test is `< 0.001`): a cut-off
    taken as <= 0.001 gave (0, 0) there, and no case sat on it."""
    samples = edge_cases()
    batch = collate(samples, dtype=torch.float64)
    got = closest_pursuit(batch["boids"], batch["mask"])
    idx = nearest_boid(batch["boids"], batch["mask"])
    for i, s in enumerate(samples):
        (ax, ay), j = reference_pursuit(s)
        assert abs(got[i, 0].item() - ax) <= 1e-12 and abs(got[i, 1].item() - ay) <= 1e-12, (i, got[i], (ax, ay))
        assert idx[i].item() == (-1 if j is None else j)
    assert got[1].tolist() == [1.0, 0.0] and got[2].tolist() == [0.0, -1.0]
    assert got[3].tolist() == [0.0, 0.0] and got[0].tolist() == [0.0, 0.0]
    assert abs(got[5].norm().item() - 1) < 1e-12
    assert got[7].tolist() == [1.0, 0.0] and abs(got[8].norm().item() - 1) < 1e-12
    # the same in float32, the dtype the model trains in. Row 8's float32 offsets are 0.0010000000009 away,
    # just outside the browser's cut-off, and inside float32's 0.001 (0.00100000004749): the teacher once
    # decided it in float32, where the sum of squares rounded up to the cut-off on some kernels and not on
    # others (one run of the whole suite, on another set of kernels, gave (0, 0))
    b32 = collate([samples[7], samples[8]])
    got32 = closest_pursuit(b32["boids"], b32["mask"])
    assert got32.dtype == torch.float32 and got32[0].tolist() == [1.0, 0.0]
    want8, _ = reference_pursuit(_sample([_boid(float(np.float32(0.0006)), float(np.float32(-0.0008)))]))
    assert want8 != (0.0, 0.0) and got32[1].tolist() == torch.tensor(want8).float().tolist()


def test_matches_reference_on_random_padded_batches(make_samples):
    """Random samples with varied boid counts, padded together: padding never wins, every row matches."""
    rng = random.Random(2)
    counts = [rng.randint(0, 50) for _ in range(64)]
    samples = make_samples(counts, seed=3)
    batch = collate(samples, dtype=torch.float64, pad_to=60)
    # padding slots hold zeros, which would be the nearest "boid" if the mask were ignored
    assert (batch["boids"][~batch["mask"]] == 0).all()
    got = closest_pursuit(batch["boids"], batch["mask"])
    for i, s in enumerate(samples):
        (ax, ay), _ = reference_pursuit(s)
        assert abs(got[i, 0].item() - ax) <= 1e-12 and abs(got[i, 1].item() - ay) <= 1e-12
    norms = got.norm(dim=-1)
    has = torch.tensor([c > 0 for c in counts])
    assert torch.allclose(norms[has], torch.ones_like(norms[has])) and (norms[~has] == 0).all()


def test_a_float32_batch_gets_the_browsers_action_for_its_offsets_rounded_once():
    """The browser's teacher computes in float64 (JavaScript's numbers). On the float32 offsets the model
    trains on, predlab's was float32 arithmetic: a distance within an ulp of 0.001 fell on either side of
    the cut-off as its sum of squares rounded (and float32's 0.001 is 4.7e-11 above the browser's), and a
    unit vector was off by an ulp or two. Now every action is the browser's for those offsets, rounded once
    to float32, and the nearest boid the browser's, near-ties included."""
    rng = np.random.default_rng(5)
    samples = []
    for _ in range(3000):
        n = int(rng.integers(1, 4))
        r = np.concatenate([[1e-3 * (1 + rng.uniform(-3e-7, 3e-7))],        # on the cut-off, give or take an ulp
                            1e-3 * (1 + rng.uniform(-1e-7, 1e-7, n - 1))])    # near-ties with the first
        th = rng.uniform(0, 2 * np.pi, n)
        rx, ry = (r * np.cos(th)).astype(np.float32), (r * np.sin(th)).astype(np.float32)
        samples.append(_sample([_boid(float(x), float(y)) for x, y in zip(rx, ry)]))
    batch = collate(samples)
    assert batch["boids"].dtype == torch.float32
    got, idx = closest_pursuit(batch["boids"], batch["mask"]), nearest_boid(batch["boids"], batch["mask"])
    want = torch.tensor([reference_pursuit(s)[0] for s in samples], dtype=torch.float64).float()
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert idx.tolist() == [reference_pursuit(s)[1] for s in samples]
    # the batch holds offsets float32 arithmetic decides the other way, and both sides of the cut-off
    b = batch["boids"][:, :, :2].numpy()
    d32 = np.sqrt(b[..., 0] * b[..., 0] + b[..., 1] * b[..., 1])
    near32 = np.where(batch["mask"].numpy(), d32, np.inf).min(1)
    steered = (want != 0).any(1).numpy()
    assert ((near32 >= np.float32(0.001)) != steered).sum() > 10
    assert 500 < steered.sum() < 2500


def test_empty_boid_axis():
    """A batch whose boid axis has length 0 gives (0, 0) for every row."""
    out = closest_pursuit(torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.bool))
    assert out.shape == (3, 2) and (out == 0).all()


def test_policy_force_is_point_two_of_the_unit_action():
    """TeacherPolicy().get_action is 0.2 x get_normalized_action, which is the reference unit vector."""
    t = TeacherPolicy()
    for s in edge_cases():
        n = t.get_normalized_action(s)
        (ax, ay), _ = reference_pursuit(s)
        assert n.shape == (2,) and abs(n[0].item() - ax) <= 1e-12 and abs(n[1].item() - ay) <= 1e-12
        assert torch.allclose(t.get_action(s), 0.2 * n, rtol=0, atol=1e-15)


def test_policy_batched_call(make_samples):
    """Calling the policy on a batch equals closest_pursuit on its boids and mask."""
    batch = collate(make_samples([0, 3, 10], seed=4))
    assert torch.equal(TeacherPolicy()(batch), closest_pursuit(batch["boids"], batch["mask"]))


def test_the_teacher_names_a_batch_of_numpy_arrays():
    """TeacherPolicy()(batch) with numpy arrays failed inside torch.sqrt with a TypeError that named
    neither the teacher nor the batch."""
    import numpy as np
    from predlab.teacher import TeacherPolicy
    batch = {"boids": np.zeros((1, 2, 4), np.float32), "mask": np.ones((1, 2), bool)}
    with pytest.raises(TypeError, match="the teacher takes a batch of tensors .* got boids as ndarray and mask as "
                                        "ndarray"):
        TeacherPolicy()(batch)


@pytest.mark.parametrize("edit, message", [
    (lambda b, m: (b[0], m[0]), r"boids \[B, N, 4\] and mask \[B, N\], got boids \[3, 4\] and mask \[3\]"),
    (lambda b, m: (b, m[:1]), r"got boids \[2, 3, 4\] and mask \[1, 3\]"),
    (lambda b, m: (b[..., :2], m), r"got boids \[2, 3, 2\]"),
])
def test_the_teacher_names_a_batch_of_the_wrong_shape(edit, message):
    """One sample's boids [N, 4] failed with "tuple index out of range", and a mask [1, N] was broadcast
    over the batch: every sample got the first one's live boids, without an error."""
    boids, mask = torch.rand(2, 3, 4), torch.tensor([[True, True, True], [True, False, False]])
    boids, mask = edit(boids, mask)
    with pytest.raises(ValueError, match=message):
        TeacherPolicy()({"boids": boids, "mask": mask})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_the_teacher_refuses_a_live_boid_that_is_not_finite(value):
    """A NaN relX made the whole sample's action (0, 0) and an infinite one hid that boid: silent labels.
    A dead boid's slot may hold anything: the teacher never reads it."""
    boids = torch.tensor([[[0.1, 0.2, 0.0, 0.0], [0.3, 0.1, 0.0, 0.0]]])
    mask = torch.tensor([[True, True]])
    bad = boids.clone()
    bad[0, 0, 0] = value
    with pytest.raises(ValueError, match="a live boid whose relX or relY is NaN or infinite"):
        TeacherPolicy()({"boids": bad, "mask": mask})
    dead = torch.tensor([[False, True]])
    assert torch.equal(TeacherPolicy()({"boids": bad, "mask": dead}), closest_pursuit(boids, dead))


def test_closest_pursuit_refuses_a_mask_that_would_broadcast():
    # a mask [N] (one sample's) was broadcast over every sample of the batch, silently
    from predlab.teacher import closest_pursuit, nearest_boid
    boids = torch.zeros(2, 3, 4)
    for mask in (torch.ones(3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool)):
        with pytest.raises(ValueError, match=r"mask \[B, N\]"):
            closest_pursuit(boids, mask)
        with pytest.raises(ValueError, match=r"mask \[B, N\]"):
            nearest_boid(boids, mask)
    with pytest.raises(ValueError, match=r"boids\[None\]"):
        closest_pursuit(boids[0], torch.ones(3, dtype=torch.bool))
