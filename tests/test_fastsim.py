"""The numba frame (predlab.fastsim) against the torch World, and rollout_chunk's two backends."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from predlab import data
from predlab.config import WorldConfig
from predlab.data import rollout_chunk
from predlab.evaluate import ModelPolicy
from predlab.sim import World
from predlab.teacher import closest_pursuit
from test_sim import at_distance, reference_frame, scenario, world_from_lists, world_to_lists

fastsim = pytest.importorskip("predlab.fastsim")

F64 = torch.float64
EPS = 1e-7
STATE = ("pos", "vel", "alive", "pred_pos", "pred_vel", "size")
FIELDS = ("context", "predator", "boids", "n", "target")


# ---------------------------------------------------------------------- helpers
def kernel_frame(world: World, action: torch.Tensor, weights=(1.0, 2.0, 1.0)):
    """One frame of `world` through fastsim.observe and fastsim.step, on copies of its state.

    Returns (obs: context, predator, boids [E, N, 4] compacted, n, target; state after the step;
    live [E]). The outputs start as NaN so that a value the kernel fails to write shows.
    """
    st = [getattr(world, k).numpy().copy() for k in STATE]
    E, N = world.alive.shape
    dt = st[0].dtype
    out = [np.full((E, 2), np.nan, dt), np.full((E, 2), np.nan, dt), np.full((E, N, 4), np.nan, dt),
           np.full(E, -1, np.int64), np.full((E, 2), np.nan, dt)]
    fastsim.observe(st, np.arange(E, dtype=np.int64), *out)
    live = np.full(E, -1, np.int64)
    fastsim.step(st, np.array(weights, dt), np.ascontiguousarray(action.numpy()), live, fastsim.scratch(E, N, dt))
    return dict(zip(FIELDS, out)), dict(zip(STATE, st)), live


def torch_frame(world: World, action: torch.Tensor):
    """The same frame through World (in place): obs compacted as rollout_chunk stores it, and catches."""
    obs = world.observe()
    boids, n = data._compact(obs["boids"], obs["mask"])
    want = {"context": obs["context"], "predator": obs["predator"], "boids": boids, "n": n,
            "target": closest_pursuit(obs["boids"], obs["mask"])}
    world.step(action)
    return {k: v.numpy() for k, v in want.items()}


def assert_frame_matches(world: World, action: torch.Tensor, tol: float = 1e-12):
    """Kernel frame == World frame: observation, teacher target, next state, live counts."""
    obs, state, live = kernel_frame(world, action)
    want = torch_frame(world, action)
    for k in FIELDS:
        np.testing.assert_allclose(obs[k], want[k], rtol=0, atol=tol, err_msg=k)
    for k in STATE:
        np.testing.assert_allclose(state[k], getattr(world, k).numpy(), rtol=tol, atol=tol, err_msg=k)
    assert live.tolist() == world.n_alive.tolist()


# ---------------------------------------------------------------------- (a) one frame, float64
def test_scenario_frame_matches_world_and_reference():
    """test_sim's hand-built frame (every branch of SPEC.md section 3): kernel == World == reference."""
    envs = scenario()
    actions = torch.tensor([(1.0, -0.5), (1.0, 0.0), (-0.3, -1.0), (0.0, 0.0)], dtype=F64)
    world = world_from_lists(envs)
    flags = set()
    expected = []
    for (boids, pred, W, H), a in zip(world_to_lists(world), actions.tolist()):
        b, p, _ = reference_frame(boids, pred, W, H, a, flags)
        expected.append((b, p))
    _, state, live = kernel_frame(world, actions)
    for e, (boids, pred) in enumerate(expected):
        assert state["alive"][e].tolist() == [b[4] for b in boids]
        np.testing.assert_allclose(state["pos"][e], [b[:2] for b in boids], rtol=0, atol=1e-9)
        np.testing.assert_allclose(state["vel"][e], [b[2:4] for b in boids], rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.r_[state["pred_pos"][e], state["pred_vel"][e]], pred, rtol=0, atol=1e-9)
    assert {"separation", "avoidance limit", "steering limit", "boid speed limit", "catch",
            "catch between 10 and 12.6 px", "separation from a boid at the same point",
            "boid wrap x high", "boid wrap y low", "predator wrap x high"} <= flags
    assert_frame_matches(world_from_lists(envs), actions)


def test_a_mean_velocity_far_below_1e30_is_scaled_as_spec_scales_it():
    """SPEC scales any vector of fast magnitude > 0: alignment's mean velocity of (1e-32, 0) was left at
    magnitude 0.035 (a floor of 1e-30), where world.js scales it to 3.5 (boid 0's vx 0.13917, not 0.20833)."""
    pred = [900.0, 900.0, 0.5, -0.5]                                    # far away: no avoidance
    envs = [([[100.0, 100.0, 0.0, 0.0, True], [150.0, 100.0, 1e-32, 0.0, True]], pred, 1000.0, 1000.0)]
    world = world_from_lists(envs)
    actions = torch.zeros(1, 2, dtype=F64)
    boids, _, _ = reference_frame(envs[0][0], pred, 1000.0, 1000.0, (0.0, 0.0), set())
    _, state, _ = kernel_frame(world, actions)
    assert state["vel"][0, 0, 0] == pytest.approx(boids[0][2], rel=1e-12) and boids[0][2] > 0.2
    assert_frame_matches(world, actions)


def test_neighbours_exactly_on_the_boundaries():
    """d == 60 is a cohesion neighbour but not an alignment one; d == 40 is not a separation one."""
    # near 1 px the float64 grid of p_j - p_i is as fine as that of d, so d can hit 60 or 40 exactly
    x60, y40 = at_distance(1.0, 60.0), at_distance(1.0, 40.0)
    below60, below40 = math.nextafter(x60, 0.0), math.nextafter(y40, 0.0)
    assert abs(1.0 - below60) + EPS < 60.0 and abs(1.0 - below40) + EPS < 40.0
    pred = [900.0, 900.0, 0.5, -0.5]                                    # far away: no avoidance
    pair = lambda p, q: [[*p, 1.0, 0.5, True], [*q, -2.0, 1.5, True]]   # noqa: E731
    envs = [(pair((1.0, 100.0), (x60, 100.0)), pred, 1000.0, 1000.0),      # exactly 60 apart
            (pair((1.0, 100.0), (below60, 100.0)), pred, 1000.0, 1000.0),  # just inside 60
            (pair((100.0, 1.0), (100.0, y40)), pred, 1000.0, 1000.0),      # exactly 40 apart
            (pair((100.0, 1.0), (100.0, below40)), pred, 1000.0, 1000.0),  # just inside 40
            # exactly 60 and exactly 40 away beside a nearer neighbour: each rule averages its own
            # neighbours (alignment summing cohesion's velocities went unseen with lone pairs)
            ([[1.0, 1.0, 1.0, 0.5, True], [x60, 1.0, -3.0, 1.0, True], [1.0, y40, 0.5, 3.0, True],
              [21.0, 21.0, 2.0, -2.0, True]], pred, 1000.0, 1000.0)]
    world = world_from_lists(envs)
    actions = torch.zeros(5, 2, dtype=F64)
    _, state, _ = kernel_frame(world, actions)
    # the boundary cases really differ from the cases one ulp inside (so the comparisons matter)
    assert np.abs(state["vel"][0] - state["vel"][1]).max() > 1e-3
    assert np.abs(state["vel"][2] - state["vel"][3]).max() > 1e-3
    assert_frame_matches(world, actions)


def test_the_kernels_teacher_in_a_float32_world_is_the_browsers_for_its_offsets():
    """Boids about 1 px from the predator (0.001 in the model's units, the teacher's cut-off) in a float32
    world: the kernel's action is closest_pursuit's on the offsets it wrote, bit for bit, and both are the
    browser's float64 action rounded once. In float32 arithmetic the kernel (and World's teacher) decided
    the cut-off otherwise for 169 of these 4000 here, and could round otherwise on other CPUs."""
    rng = np.random.default_rng(0)
    E = 4000
    r, th = 1.0 + rng.uniform(-3e-7, 3e-7, E), rng.uniform(0, 2 * math.pi, E)
    envs = [([[1.0 + r[e] * math.cos(th[e]), 1.0 + r[e] * math.sin(th[e]), 0.0, 0.0, True]],   # near (0, 0):
             [1.0, 1.0, 0.0, 0.0], 1000.0, 800.0) for e in range(E)]                       # a fine float32 grid
    world = world_from_lists(envs, dtype=torch.float32)
    obs, _, _ = kernel_frame(world, torch.zeros(E, 2))
    assert obs["target"].dtype == np.float32
    torch_teacher = closest_pursuit(torch.from_numpy(obs["boids"]), torch.ones(E, 1, dtype=torch.bool)).numpy()
    assert np.array_equal(obs["target"], torch_teacher)
    x, y = obs["boids"][:, 0, 0].astype(np.float64), obs["boids"][:, 0, 1].astype(np.float64)
    d = np.sqrt(x * x + y * y)
    steered = d >= 0.001
    want = np.where(steered[:, None], np.stack([x / d, y / d], 1), 0.0).astype(np.float32)
    assert np.array_equal(obs["target"], want)
    x32, y32 = obs["boids"][:, 0, 0], obs["boids"][:, 0, 1]
    assert ((np.sqrt(x32 * x32 + y32 * y32) >= np.float32(0.001)) != steered).sum() > 50
    assert 1000 < steered.sum() < 3000


def test_teacher_ties_dead_boids_and_a_boid_on_the_predator():
    """Equal distances go to the first slot, dead boids are skipped, a boid within 1 px gives (0, 0),
    and one exactly 1 px away (relX 0.001, not < 0.001) is steered to: a kernel cut-off taken as
    <= 0.001 labelled it (0, 0), unlike World's teacher and the browser's."""
    pred = [500.0, 400.0, 1.0, 0.0]
    envs = [([[480.0, 400.0, 0.0, 0.0, False], [530.0, 400.0, 0.0, 1.0, True], [470.0, 400.0, 1.0, 0.0, True]],
             pred, 1000.0, 800.0),
            ([[500.4, 400.3, 0.0, 0.0, True], [600.0, 400.0, 0.0, 0.0, True]], pred, 1000.0, 800.0),
            ([[1.0, 2.0, 0.0, 0.0, False]], pred, 1000.0, 800.0),          # every boid dead
            ([[500.0, 401.0, 0.0, 0.0, True]], pred, 1000.0, 800.0)]        # exactly 0.001 away
    world = world_from_lists(envs)
    obs, _, _ = kernel_frame(world, torch.zeros(4, 2, dtype=F64))
    assert obs["target"].tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    assert obs["n"].tolist() == [2, 2, 0, 1]
    assert (obs["boids"][2] == 0).all() and (obs["boids"][0, 2] == 0).all()   # padding written as zeros
    assert_frame_matches(world, torch.zeros(4, 2, dtype=F64))


def test_boids_exactly_half_a_canvas_away_are_not_wrapped():
    """SPEC.md section 4 wraps an offset only when |dx| > W/2: a kernel taking >= put a boid exactly
    half a canvas away on the other side of the predator, and its teacher steered away from it."""
    envs = [([[300.0, 150.0, 0.5, 0.5, True], [40.0, -50.0, 0.5, 0.5, True]], [100.0, 100.0, 0.0, 0.0], 400.0, 300.0)]
    obs, _, _ = kernel_frame(world_from_lists(envs), torch.zeros(1, 2, dtype=F64))
    assert obs["boids"][0, :, :2].tolist() == [[0.2, 0.05], [-0.06, -0.15]]   # dx = +W/2, dy = -H/2
    assert_frame_matches(world_from_lists(envs), torch.zeros(1, 2, dtype=F64))


def test_boids_and_predator_exactly_on_the_wrap_lines_stay():
    """SPEC.md section 3 wraps x only past W + margin or below -margin: resting boids and a resting
    predator exactly on those lines stay there. A kernel taking >= sent a boid on x = W + 10 to -10,
    a jump across the canvas that World and the browser do not make."""
    W, H = 640.0, 480.0
    boids = [[W + 10, 100.0, 0.0, 0.0, True], [-10.0, 100.0, 0.0, 0.0, True],
             [200.0, H + 10, 0.0, 0.0, True], [300.0, -10.0, 0.0, 0.0, True]]   # far apart: no forces
    envs = [(boids, [W + 20, -20.0, 0.0, 0.0], W, H)]
    _, state, _ = kernel_frame(world_from_lists(envs), torch.zeros(1, 2, dtype=F64))
    assert state["pos"][0].tolist() == [b[:2] for b in boids]
    assert state["pred_pos"][0].tolist() == [W + 20, -20.0]
    assert_frame_matches(world_from_lists(envs), torch.zeros(1, 2, dtype=F64))


@pytest.mark.parametrize("flock", [1, 50, "mixed"])
def test_random_states_match_world(flock):
    """Spread-out, partly caught flocks of 1, 50 or mixed sizes on canvases of every size, one frame."""
    E = 24
    g = torch.Generator().manual_seed(11)
    n = {1: [1] * E, 50: [50] * E, "mixed": torch.randint(1, 51, (E,), generator=g).tolist()}[flock]
    width = [320, 333, 500, 1280, 1920, 3840] * 4
    height = [320, 2160, 700, 320, 1080, 2160] * 4
    world = World.random(E, generator=g, dtype=F64, n_boids=n, width=width, height=height)
    for _ in range(25):                                   # spread the flocks out, wrap them around
        world.step(torch.rand(E, 2, generator=g, dtype=F64) * 2 - 1)
    world.alive &= torch.rand(world.alive.shape, generator=g) > 0.2              # holes: dead boids
    world.vel *= 1 + 2 * torch.rand(world.vel.shape[:2], generator=g, dtype=F64)[..., None]  # over the speed limit
    first = world.alive.float().argmax(1)                 # put half the predators among their boids
    near = world.pos[torch.arange(E), first] + torch.randn(E, 2, generator=g, dtype=F64) * 8
    world.pred_pos = torch.where((torch.arange(E) % 2 == 0)[:, None], near, world.pred_pos)
    before = world.state_dict()
    assert_frame_matches(world, torch.rand(E, 2, generator=g, dtype=F64) * 4 - 2)   # actions clamp to [-1, 1]
    jumped = (world.pos - before["pos"]).abs() > 100       # wrapped across the canvas
    assert (world.n_alive < before["alive"].sum(1)).any(), "no catch in this state"
    if flock != 1:
        assert jumped.any(), "no wrap in this state"


def test_frames_in_a_row_match_world():
    """30 frames from the real start (every flock at one point): float64 kernel == World to 1e-7, catches included."""
    g = torch.Generator().manual_seed(2)
    world = World.random(64, WorldConfig(width_max=800, height_max=600), generator=g, dtype=F64)
    world.pred_pos[::4] = world.pos[::4, 0] + torch.tensor([13.0, 0.0], dtype=F64)   # catches in the first frames
    st = [getattr(world, k).numpy().copy() for k in STATE]
    E, N = world.alive.shape
    live, snap, weights = np.zeros(E, np.int64), fastsim.scratch(E, N, np.float64), np.array([1.0, 2.0, 1.0])
    start = int(world.n_alive.sum())
    for _ in range(30):
        action = torch.rand(E, 2, generator=g, dtype=F64) * 2 - 1
        fastsim.step(st, weights, action.numpy(), live, snap)
        world.step(action)
        assert (st[2] == world.alive.numpy()).all()
        for k, a in zip(STATE, st):
            np.testing.assert_allclose(a, getattr(world, k).numpy(), rtol=0, atol=1e-7, err_msg=k)
    assert (live == world.n_alive.numpy()).all() and live.sum() < start    # with catches on the way


@pytest.mark.parametrize("weights", [(1.0, 2.0, 1.0), (0.0, 1.0, 3.0), (2.5, 0.0, 0.5)])
def test_rule_weights(weights):
    """The flocking weights come from the config: kernel == World with the same weights."""
    cfg = WorldConfig(cohesion_weight=weights[0], separation_weight=weights[1], alignment_weight=weights[2])
    g = torch.Generator().manual_seed(5)
    world = World.random(16, cfg, generator=g, dtype=F64, width=400, height=400)
    for _ in range(6):
        world.step(torch.rand(16, 2, generator=g, dtype=F64) * 2 - 1)
    action = torch.rand(16, 2, generator=g, dtype=F64) * 2 - 1
    _, state, _ = kernel_frame(world, action, weights)
    world.step(action)
    np.testing.assert_allclose(state["vel"], world.vel.numpy(), rtol=0, atol=1e-12)


def test_fused_frame_equals_observe_then_step():
    """fastsim.frame (teacher + noise drives) == observe, then step with that action; rows only for live envs."""
    g = torch.Generator().manual_seed(4)
    world = World.random(40, generator=g, dtype=F64, width=360, height=360)
    for _ in range(30):
        world.step(torch.rand(40, 2, generator=g, dtype=F64) * 2 - 1)
    world.alive[::3] = False                              # finished episodes write no row
    noise = torch.randn(40, 2, generator=g, dtype=F64) * 0.3
    obs, _, _ = kernel_frame(world, torch.zeros(40, 2, dtype=F64))          # just for the teacher's action
    action = torch.from_numpy(obs["target"]) + noise
    _, state, live = kernel_frame(world, action)
    st = [getattr(world, k).numpy().copy() for k in STATE]
    E, N = world.alive.shape
    fused = [np.zeros((E + 5, 2)), np.zeros((E + 5, 2)), np.zeros((E + 5, N, 4)), np.zeros(E + 5, np.int64),
             np.zeros((E + 5, 2))]
    live2 = world.n_alive.numpy().copy()
    rows = fastsim.frame(st, np.array([1.0, 2.0, 1.0]), noise.numpy(), live2, 5, *fused, fastsim.scratch(E, N, np.float64))
    keep = np.flatnonzero(world.n_alive.numpy() > 0)
    assert rows == len(keep) <= E - len(range(0, E, 3))
    for k, a in zip(FIELDS, fused):
        np.testing.assert_allclose(a[5:5 + rows], obs[k][keep], rtol=0, atol=1e-12, err_msg=k)
    for k, a in zip(STATE, st):
        np.testing.assert_allclose(a, state[k], rtol=0, atol=1e-12, err_msg=k)
    assert (live2 == live).all()


# ---------------------------------------------------------------------- (b)-(d) rollout_chunk
def assert_same_samples(a, b, atol=0.0):
    assert len(a) == len(b) and a.boids.shape == b.boids.shape
    for k in FIELDS:
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype, k
        if atol == 0:
            assert torch.equal(x, y), k
        else:
            assert torch.allclose(x, y, rtol=0, atol=atol), f"{k}: {(x - y).abs().max()}"


@pytest.mark.parametrize("seed", [0, 6])
def test_rollout_numba_matches_torch(seed):
    """Same draws, same layout: the same rows, boid counts and canvases; the first frames equal to float32 rounding."""
    cfg = WorldConfig(frames=8)
    a = rollout_chunk(48, cfg, seed, backend="numba")
    b = rollout_chunk(48, cfg, seed, backend="torch")
    assert len(a) == len(b) > 48 and a.boids.shape == b.boids.shape
    assert torch.equal(a.n, b.n) and torch.equal(a.context, b.context)
    assert (a.boids[torch.arange(a.boids.shape[1]) >= a.n[:, None]] == 0).all()   # padding after the live boids
    first = len(rollout_chunk(48, WorldConfig(frames=2), seed, backend="torch"))       # rows of frames 0 and 1
    assert_same_samples(a.select(torch.arange(first)), b.select(torch.arange(first)), atol=1e-6)
    # later frames drift apart (separation in a tight flock amplifies float32 rounding), but stay close. Live
    # boids only: half the entries are padding, zero in both, and their median passed positions of garbage
    live = torch.arange(a.boids.shape[1])[None, :] < a.n[:, None]
    apart = (a.boids - b.boids)[live].abs()
    assert apart.median() < 1e-5 and apart.quantile(0.99) < 1e-3 and (a.target - b.target).abs().quantile(0.99) < 1e-4


def test_rollout_is_deterministic():
    """One seed, one chunk: identical twice, on 1 or 2 threads, and a longer run starts with the shorter one."""
    cfg = WorldConfig(frames=10, width_max=800, height_max=600)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = rollout_chunk(32, cfg, 3)
        torch.set_num_threads(2)
        b = rollout_chunk(32, cfg, 3)
    finally:
        torch.set_num_threads(old)
    assert_same_samples(a, rollout_chunk(32, cfg, 3))
    assert_same_samples(a, b)
    assert not torch.equal(a.boids[:32], rollout_chunk(32, cfg, 4).boids[:32])
    longer = rollout_chunk(32, WorldConfig(**{**vars(cfg), "frames": 150}), 3)   # grows its storage past 64 frames
    assert len(longer) > 64 * 32 // 2
    assert_same_samples(longer.select(torch.arange(len(a))), a)


def test_student_chunk_on_the_numba_path(make_model):
    """DAgger's student drives on the numba path: it is called on the live episodes it drives only
    (about half at beta 0.5, never the teacher's), and its actions give the torch path's samples."""
    cfg = WorldConfig(frames=6)
    policy = ModelPolicy(make_model(1))
    seen = []

    def student(obs):
        seen.append({k: v.clone() for k, v in obs.items()})
        return policy(obs)

    a = rollout_chunk(32, cfg, 9, student=student, beta=0.5, backend="numba")
    b = rollout_chunk(32, cfg, 9, student=policy, beta=0.5, backend="torch")
    assert len(seen) == 6
    for obs in seen:
        assert 4 <= obs["context"].shape[0] <= 28 and obs["boids"].shape[:2] == obs["mask"].shape
        n = obs["mask"].sum(1)
        assert torch.equal(obs["mask"], torch.arange(obs["mask"].shape[1]) < n[:, None])   # live boids first
    assert len(a) == len(b) and torch.equal(a.n, b.n)
    first = len(rollout_chunk(32, WorldConfig(frames=2), 9, student=policy, beta=0.5, backend="torch"))
    assert_same_samples(a.select(torch.arange(first)), b.select(torch.arange(first)), atol=1e-5)

    rows = []
    rollout_chunk(32, WorldConfig(frames=2), 9, student=lambda o: rows.append(len(o["context"])) or policy(o),
                  beta=0.0, backend="numba")
    assert rows == [32, 32]                                  # beta 0: the student drives every episode
    rollout_chunk(32, WorldConfig(frames=2), 9, student=lambda o: rows.append(len(o["context"])) or policy(o),
                  beta=1.0, backend="numba")
    assert rows == [32, 32]                                  # beta 1: the teacher's; the student is never called

    # a student that always steers to (-1, -1): from frame 10 on, every predator moves left and up
    def left_up(obs):
        return -torch.ones(obs["context"].shape[0], 2)

    noiseless = WorldConfig(frames=12, noise=0.0)
    ten = len(rollout_chunk(16, WorldConfig(frames=10, noise=0.0), 1, student=left_up, beta=0.0))
    s = rollout_chunk(16, noiseless, 1, student=left_up, beta=0.0)
    assert len(s) > ten and (s.predator[ten:] < -0.2).all()
    teacher = rollout_chunk(16, noiseless, 1, student=left_up, beta=1.0)
    assert (teacher.predator[ten:] > 0).any()


def test_backend_choice(monkeypatch):
    """backend picks the path; a bad name, numba on a GPU or numba missing are clear errors."""
    cfg = WorldConfig(frames=3)
    with pytest.raises(ValueError, match="backend"):
        rollout_chunk(4, cfg, 0, backend="jax")
    # numba on a GPU; without one, the absent GPU is named first (a torch.device is checked as a name is)
    with pytest.raises(ValueError, match="CPU" if torch.cuda.is_available() else "sees no CUDA GPU"):
        rollout_chunk(4, cfg, 0, device=torch.device("cuda"), backend="numba")
    torch_path = rollout_chunk(8, cfg, 0, backend="torch")
    calls = []
    numba_path = data._rollout_chunk_numba
    monkeypatch.setattr(data, "_rollout_chunk_numba", lambda *a: calls.append(a) or numba_path(*a))
    assert_same_samples(rollout_chunk(8, cfg, 0), rollout_chunk(8, cfg, 0, backend="numba"))
    assert len(calls) == 2                                # "auto" on the CPU takes the numba path
    saved = data.fastsim
    try:
        data.fastsim = None                               # as if numba were not installed
        assert_same_samples(rollout_chunk(8, cfg, 0), torch_path)
        with pytest.raises(ImportError, match="numba"):
            rollout_chunk(8, cfg, 0, backend="numba")
    finally:
        data.fastsim = saved


def test_rollouts_from_two_threads():
    """Kernel launches are serialised: numba's workqueue layer would abort the process on concurrent entry."""
    import threading

    cfg = WorldConfig(frames=20)
    want = rollout_chunk(64, cfg, 2)
    got = [None, None]

    def run(k):
        got[k] = rollout_chunk(64, cfg, 2)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g in got:
        assert_same_samples(g, want)


def test_a_boid_exactly_on_the_catch_radius_is_not_caught():
    """A resting boid pushed to exactly 12.6 px from the predator survives the kernel's frame, one ulp less is caught."""
    x = 12.44375     # a resting predator at (0, 500) pushes a resting boid here to x == 12.6 exactly
    envs = [([[x, 500.0, 0.0, 0.0, True]], [0.0, 500.0, 0.0, 0.0], 1000.0, 1000.0),
            ([[math.nextafter(x, 0.0), 500.0, 0.0, 0.0, True]], [0.0, 500.0, 0.0, 0.0], 1000.0, 1000.0)]
    _, state, live = kernel_frame(world_from_lists(envs), torch.zeros(2, 2, dtype=F64))
    assert state["pos"][0, 0, 0] == 12.6 and state["pos"][1, 0, 0] < 12.6
    assert live.tolist() == [1, 0]
    assert_frame_matches(world_from_lists(envs), torch.zeros(2, 2, dtype=F64))


def test_the_entry_points_refuse_arrays_of_another_size_or_dtype():
    # numba checks no bounds: one action for four episodes read past its end, and a scratch array
    # too small corrupted the heap (a segfault at exit)
    from predlab import fastsim
    w = World.random(4, n_boids=20, generator=torch.Generator().manual_seed(0))
    state, weights, live, snap = data.kernel_arrays(w, WorldConfig())
    before = [a.copy() for a in state]
    with pytest.raises(ValueError, match="action .*shape \\(4, 2\\)"):
        fastsim.step(state, weights, np.zeros((1, 2), np.float32), live, snap)
    with pytest.raises(ValueError, match="action is float64"):
        fastsim.step(state, weights, np.zeros((4, 2)), live, snap)
    with pytest.raises(ValueError, match="snap"):
        fastsim.step(state, weights, np.zeros((4, 2), np.float32), live, fastsim.scratch(1, 8, np.float32))
    with pytest.raises(ValueError, match="live"):
        fastsim.step(state, weights, np.zeros((4, 2), np.float32), live[:2].copy(), snap)
    rows = np.arange(4, dtype=np.int64)
    small = (np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32), np.zeros((2, 20, 4), np.float32),
             np.zeros(2, np.int64), np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="ctx"):
        fastsim.observe(state, rows, *small)
    with pytest.raises(ValueError, match="ctx"):
        fastsim.frame(state, weights, np.zeros((4, 2), np.float32), live, 0, *small, snap)
    assert all(np.array_equal(a, b) for a, b in zip(state, before))      # nothing ran
    fastsim.step(state, weights, np.zeros((4, 2), np.float32), live, snap)   # the right arrays still step


def test_kernel_arrays_are_copies_of_the_world():
    """Its docstring said copied, and the kernels stepped the World's own tensors: a user comparing a
    kernel frame with World.step on the same World compared two steps (1,321 px apart)."""
    from predlab.data import kernel_arrays
    w = World.random(3, generator=torch.Generator().manual_seed(0))
    state, *_ = kernel_arrays(w, WorldConfig())
    tensors = (w.pos, w.vel, w.alive, w.pred_pos, w.pred_vel, w.size)
    assert not any(np.shares_memory(a, t.numpy()) for a, t in zip(state, tensors))
    assert all(np.array_equal(a, t.numpy()) for a, t in zip(state, tensors))
