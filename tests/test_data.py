"""Browser-form dicts <-> padded tensors: round trips, and an error naming the problem for every bad input."""
from __future__ import annotations

import copy
import math
import signal
import sys

import pytest
import torch

from predlab.data import InputError, NonFiniteActions, check_batch, collate, to_dicts
from predlab.sim import World

F64 = torch.float64


# ---------------------------------------------------------------------- round trips
def test_dicts_round_trip(make_samples):
    """to_dicts(collate(dicts)) gives the dicts back exactly (float64), any boid counts."""
    samples = make_samples([0, 1, 7, 50, 3], seed=2)
    assert to_dicts(collate(samples, dtype=F64)) == samples


def test_batch_round_trip(make_samples):
    """collate(to_dicts(batch)) gives a collated batch back exactly, in float32 and float64."""
    for dtype in (torch.float32, F64):
        batch = collate(make_samples([4, 0, 9], seed=3), dtype=dtype)
        back = collate(to_dicts(batch), dtype=dtype)
        assert back.keys() == batch.keys()
        for k in batch:
            assert back[k].dtype == batch[k].dtype and torch.equal(back[k], batch[k]), k


def test_observation_round_trip():
    """A world's observation (dead boids mid-flock) survives to_dicts -> collate: live boids, in order."""
    w = World.random(4, generator=torch.Generator().manual_seed(0), dtype=F64, n_boids=[1, 5, 12, 30])
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        w.step(torch.rand(4, 2, generator=g, dtype=F64) * 2 - 1)
    w.alive[1, 2] = w.alive[3, 0] = w.alive[3, 17] = False            # holes in the middle of flocks
    obs = w.observe()
    dicts = to_dicts(obs)
    assert [len(d["boids"]) for d in dicts] == obs["mask"].sum(1).tolist()
    back = collate(dicts, dtype=F64)
    for k in ("context", "predator"):
        assert torch.equal(back[k], obs[k])
    for e in range(4):
        assert torch.equal(back["boids"][e][back["mask"][e]], obs["boids"][e][obs["mask"][e]])
    check_batch(back)
    check_batch(obs)


def test_collate_shapes_and_padding(make_samples):
    """collate pads to the largest flock (or pad_to) with zero boids and a False mask; pad_to equal
    to the largest flock is no padding, not an error."""
    batch = collate(make_samples([2, 5, 0], seed=4), pad_to=8)
    assert batch["boids"].shape == (3, 8, 4) and batch["mask"].shape == (3, 8)
    assert batch["mask"].sum(1).tolist() == [2, 5, 0] and batch["mask"].dtype == torch.bool
    assert (batch["boids"][~batch["mask"]] == 0).all()
    assert collate(make_samples([2, 5], seed=4), pad_to=5)["mask"].sum(1).tolist() == [2, 5]
    assert collate([])["boids"].shape == (0, 0, 4)
    with pytest.raises(InputError, match="pad_to=3"):
        collate(make_samples([5], seed=4), pad_to=3)


# ---------------------------------------------------------------------- malformed structured inputs
@pytest.fixture
def good(make_samples):
    return make_samples([3], seed=5)[0]


def _bad(good, edit):
    s = copy.deepcopy(good)
    edit(s)
    return s


@pytest.mark.parametrize("edit, name", [
    (lambda s: s.pop("boids"), "boids"),
    (lambda s: s.pop("context"), "context"),
    (lambda s: s["context"].pop("canvasHeight"), "canvasHeight"),
    (lambda s: s["predator"].pop("velX"), "velX"),
    (lambda s: s["boids"][1].pop("relY"), "relY"),
])
def test_missing_key_is_named(good, edit, name):
    """A missing key raises InputError whose message contains the key's name."""
    with pytest.raises(InputError, match=f"missing key '{name}'"):
        collate([good, _bad(good, edit)])


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_is_named(good, value):
    """NaN or infinity raises InputError naming the sample and the field."""
    with pytest.raises(InputError, match=r"sample 1\.boids\[2\]\.velY is"):
        collate([good, _bad(good, lambda s: s["boids"][2].__setitem__("velY", value))])
    with pytest.raises(InputError, match=r"sample 0\.context\.canvasWidth"):
        collate([_bad(good, lambda s: s["context"].__setitem__("canvasWidth", value))])


@pytest.mark.parametrize("value", ["0.5", None, True, [0.5], {"x": 1}])
def test_non_number_is_named(good, value):
    """A string, None, a bool, a list or a dict where a number belongs raises InputError naming the field."""
    with pytest.raises(InputError, match=r"boids\[0\]\.relX must be a number"):
        collate([_bad(good, lambda s: s["boids"][0].__setitem__("relX", value))])
    with pytest.raises(InputError, match=r"predator\.velY must be a number"):
        collate([_bad(good, lambda s: s["predator"].__setitem__("velY", value))])


@pytest.mark.parametrize("value", [{"relX": 0.1, "relY": 0.1, "velX": 0, "velY": 0}, "boids", 3, None])
def test_boids_must_be_a_list(good, value):
    """boids given as a dict, a string, a number or None raises InputError saying it must be a list."""
    with pytest.raises(InputError, match=r"boids must be a list"):
        collate([_bad(good, lambda s: s.__setitem__("boids", value))])


def test_boid_entry_must_be_an_object(good):
    """A boid that is not an object is refused, naming its index."""
    with pytest.raises(InputError, match=r"boids\[1\] must be an object"):
        collate([_bad(good, lambda s: s["boids"].__setitem__(1, [0.1, 0.2, 0.3, 0.4]))])


def test_collate_wants_a_list(good):
    """collate of a single dict (instead of a list of them) is refused."""
    with pytest.raises(InputError, match="list"):
        collate(good)


# ---------------------------------------------------------------------- malformed tensor batches
def _batch(make_samples):
    return collate(make_samples([2, 4], seed=6))


@pytest.mark.parametrize("edit, pattern", [
    (lambda b: b.__setitem__("boids", b["boids"][..., :3]), r"batch\['boids'\] has shape \(2, 4, 3\)"),
    (lambda b: b.__setitem__("boids", b["boids"][0]), r"batch\['boids'\] has shape \(4, 4\)"),
    (lambda b: b.__setitem__("mask", b["mask"][:, :3]), r"batch\['mask'\] has shape \(2, 3\), expected \(2, 4\)"),
    (lambda b: b.__setitem__("context", torch.zeros(2, 3)), r"batch\['context'\] has shape \(2, 3\)"),
    (lambda b: b.__setitem__("predator", torch.zeros(3, 2)), r"batch\['predator'\] has shape \(3, 2\)"),
    (lambda b: b.pop("mask"), r"missing key 'mask'"),
    (lambda b: b["boids"].__setitem__((1, 0, 2), math.nan), r"batch\['boids'\] contains NaN"),
])
def test_check_batch_names_the_problem(make_samples, edit, pattern):
    """check_batch raises InputError naming the key and the shape (or NaN) that is wrong."""
    b = _batch(make_samples)
    check_batch(b)
    edit(b)
    with pytest.raises(InputError, match=pattern):
        check_batch(b)


def test_a_value_beyond_float32_is_named(good):
    """1e39 is finite in Python but infinity in the float32 model: refused, not a NaN action."""
    with pytest.raises(InputError, match=r"sample 0\.context\.canvasWidth is 1e\+39, beyond float32"):
        collate([_bad(good, lambda s: s["context"].__setitem__("canvasWidth", 1e39))])


def test_sampleset_check_names_the_problem(make_samples):
    from predlab.data import SampleSet
    s = SampleSet.cat([generate_small()])
    s.check()
    bad = SampleSet(s.context[:2], s.predator, s.boids, s.n, s.target)
    with pytest.raises(InputError, match=r"train\.predator has shape .* \(context has 2 rows\)"):
        bad.check("train")
    nan = SampleSet(s.context, s.predator, s.boids.clone(), s.n, s.target)
    nan.boids[0, 0, 0] = math.nan
    with pytest.raises(InputError, match="boids contains NaN"):
        nan.check()
    # a count beyond the boid axis: its batches' masks would be wider than their boids
    over = SampleSet(s.context, s.predator, s.boids, s.n.clone(), s.target)
    over.n[1] = s.boids.shape[1] + 1
    with pytest.raises(InputError, match=rf"train\.n has boid counts outside 0\.\.{s.boids.shape[1]}\b"):
        over.check("train")
    with pytest.raises(InputError, match="holds no samples"):
        SampleSet.empty().check("val", allow_empty=False)


def generate_small():
    from predlab.config import WorldConfig
    from predlab.data import generate_episodes
    return generate_episodes(2, WorldConfig(frames=5, boids_max=6), seed=0)


def test_to_dicts_and_collate_name_a_bad_argument():
    """to_dicts turned a mis-shaped batch into wrong dicts silently (or an AttributeError for lists)."""
    from predlab.data import InputError, collate, to_dicts
    good = {"context": torch.ones(2, 2), "predator": torch.zeros(2, 2), "boids": torch.zeros(2, 3, 4),
            "mask": torch.ones(2, 3, dtype=torch.bool)}
    assert len(to_dicts(good)) == 2
    for bad, message in [({**good, "mask": torch.ones(3, 3, dtype=torch.bool)}, r"batch\['mask'\] has shape"),
                         ({**good, "boids": [[0.0] * 4] * 3}, r"batch\['boids'\] must be a tensor, got list"),
                         ({k: v for k, v in good.items() if k != "mask"}, "missing key 'mask'"),
                         ({**good, "context": torch.full((2, 2), float("nan"))}, "NaN"),
                         ([good], "takes a batch dict of tensors, not list")]:
        with pytest.raises(InputError, match=message):
            to_dicts(bad)
    sample = to_dicts(good)[0]
    for pad_to in ("5", 5.0, True):
        with pytest.raises(InputError, match="pad_to must be a whole number"):
            collate([sample], pad_to=pad_to)
    assert collate([sample], pad_to=torch.tensor(5).item())["mask"].shape == (1, 5)


@pytest.mark.parametrize("args, kw, error, message", [
    ((0,), {}, ValueError, "num_episodes must be a whole number >= 1, got 0"),
    ((-1,), {}, ValueError, "num_episodes must be a whole number >= 1, got -1"),
    ((True,), {}, ValueError, "num_episodes must be a whole number"),
    ((2.5,), {}, ValueError, "num_episodes must be a whole number"),
    ((None,), {}, ValueError, "num_episodes must be a whole number"),
    (("2",), {}, ValueError, "num_episodes must be a whole number"),
    ((math.nan,), {}, ValueError, "num_episodes must be a whole number"),
    ((10 ** 7,), {}, ValueError, r"10000000 episodes would need about .* GiB of memory.*10000000 episodes x 200 "
                                 r"frames of up to 50 boids"),
    ((1,), {"seed": "0"}, ValueError, "seed must be a whole number"),
    ((1,), {"seed": None}, ValueError, "seed must be a whole number"),
    ((1,), {"seed": -1}, ValueError, "seed must be a whole number between 0 and 9223372036854775807, got -1"),
    ((1,), {"seed": 2 ** 70}, ValueError, f"seed must be a whole number between 0 and {2 ** 63 - 1}, got {2 ** 70}"),
    ((1,), {"stream": -1}, ValueError, "stream must be a whole number between 0 and 9223372036854775807, got -1"),
    ((1,), {"stream": 2 ** 64}, ValueError, f"stream must be a whole number between 0 and {2 ** 63 - 1}, got {2 ** 64}"),
    ((1,), {"num_workers": None}, ValueError, "num_workers must be a whole number"),
    ((1,), {"num_workers": -2}, ValueError, "num_workers must be a whole number >= 0"),
    ((1,), {"cfg": 3}, TypeError, "cfg must be a WorldConfig or a dict"),
    ((1,), {"cfg": {"frames": 0}}, ValueError, "frames must be >= 1"),
])
def test_generate_episodes_refuses_bad_arguments_by_name(args, kw, error, message):
    """Nonsense counts came back as an empty SampleSet, or as numpy/torch errors naming nothing."""
    from predlab.data import generate_episodes
    with pytest.raises(error, match=message):
        generate_episodes(*args, **kw)


@pytest.mark.parametrize("call, error, message", [
    (lambda g: g.generate(-3, 0), ValueError, "num_episodes must be a whole number >= 1, got -3"),
    (lambda g: g.generate(1, "x"), ValueError, "stream must be a whole number"),
    (lambda g: g.generate(1, 0, beta=math.nan), ValueError, r"beta must be between 0 and 1, got nan"),
    (lambda g: g.generate(1, 0, beta=5), ValueError, "beta must be between 0 and 1, got 5"),
    (lambda g: g.generate(1, 0, beta=-1), ValueError, "beta must be between 0 and 1"),
    (lambda g: g.generate(1, 0, beta="0.5"), TypeError, "beta must be a number, got '0.5'"),
    (lambda g: g.generate(1, 0, student="model", beta=0.5), TypeError, "student must be a policy"),
    # the teacher drove every episode, and the samples read as DAgger's
    (lambda g: g.generate(1, 0, beta=0.0), ValueError, r"beta 0 gives a share 1 of the episodes to the student, but "
                                                        r"no student was given: pass student="),
])
def test_episode_generator_generate_refuses_bad_arguments_by_name(call, error, message):
    from predlab.config import WorldConfig
    from predlab.data import EpisodeGenerator
    with EpisodeGenerator(WorldConfig(frames=3, boids_max=4), progress=False) as gen:
        with pytest.raises(error, match=message):
            call(gen)


def test_episode_generator_progress_must_be_a_flag():
    """progress="no" is a true string: the bars showed."""
    from predlab.data import EpisodeGenerator
    with pytest.raises(TypeError, match="progress must be True or False, not str"):
        EpisodeGenerator(progress="no")


@pytest.mark.parametrize("device, student", [("cpu", False), ("cpu", True), ("torch", True)])
def test_the_episodes_bar_moves_while_a_chunk_is_rolled_out(monkeypatch, device, student):
    """A chunk of 512 episodes that the student drives took 12 s on an idle 2-core CPU (a minute at
    --frames 1000), and the bar over them moved only at its end: it now moves with the frames,
    and ends at the episodes' count."""
    import tqdm.auto

    from predlab import TransformerPredator, data
    from predlab.config import WorldConfig
    counts = []

    class Bar(tqdm.auto.tqdm):
        def update(self, n=1):
            counts.append(self.n + n)
            return super().update(n)
    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    if device == "torch":      # the torch world's loop, as on a GPU
        real = data._rollout_chunk
        monkeypatch.setattr(data, "_rollout_chunk", lambda *a, **k: real(*a, backend="torch", **k))
    torch.manual_seed(0)
    with data.EpisodeGenerator(WorldConfig(frames=20, boids_max=6), progress=True) as gen:
        gen.generate(10, stream=1, student=TransformerPredator() if student else None, beta=0.5 if student else 1.0)
    assert len(set(counts)) >= 5 and counts == sorted(counts) and counts[-1] == 10, counts


def test_a_noise_that_overflows_float32_drives_like_the_largest_action_in_both_backends():
    """WorldConfig takes a noise up to float32's largest: noise x randn is then infinite, which the
    numba world clamps to 1 and the torch world refused as an action of NaN or infinity."""
    from predlab.config import FLOAT32_MAX, WorldConfig
    from predlab.data import rollout_chunk
    cfg = WorldConfig(noise=FLOAT32_MAX, frames=6, boids_max=5)
    a, b = (rollout_chunk(3, cfg, 0, backend=k) for k in ("numba", "torch"))
    assert len(a) == len(b) > 0
    assert torch.allclose(a.predator, b.predator, atol=1e-6) and bool((a.predator.abs() <= 1).all())


def test_workers_that_cannot_start_stop_the_generation_with_what_to_do(tmp_path):
    """A script without a main guard, generating with a worker: each worker ran the script again, failed
    at its start, and the pool started another, for ever (the script hung, not a word but the workers')."""
    import subprocess
    import sys
    script = tmp_path / "unguarded.py"
    script.write_text("from predlab import WorldConfig\nfrom predlab.data import generate_episodes\n"
                      "generate_episodes(4, WorldConfig(frames=3), num_workers=1)\nprint('done')\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "done" not in r.stdout
    # (a worker started in its place may print its own failure after it)
    last = next(line for line in r.stderr.splitlines() if line.startswith("predlab.data.WorkerError"))
    assert last.startswith("predlab.data.WorkerError: 1 worker process(es) of the episode generator ended while "
                           "generating (exit code 1): it failed") and 'sit under `if __name__ == "__main__":`' in last


def test_generation_takes_a_dict_config_and_rollout_chunk_checks_its_arguments():
    from predlab.config import WorldConfig
    from predlab.data import EpisodeGenerator, generate_episodes, rollout_chunk
    cfg = {"frames": 3, "boids_max": 4}
    a = generate_episodes(2, cfg, seed=1)
    assert len(a) > 0 and torch.equal(a.boids, generate_episodes(2, WorldConfig(**cfg), seed=1).boids)
    assert EpisodeGenerator(cfg, progress=False).cfg == WorldConfig(**cfg)
    for args, message in (((0, cfg, 0), "num_episodes must be a whole number >= 1"),
                          ((2, cfg, -1), "seed must be a whole number between 0 and"),
                          ((2, cfg, 2 ** 63), f"seed must be a whole number between 0 and {2 ** 63 - 1}, got {2 ** 63}"),
                          ((2, cfg, 0, None, 2.0), "beta must be")):
        with pytest.raises(ValueError, match=message):
            rollout_chunk(*args)
    with pytest.raises(ValueError, match="unknown device 'gpu0': use auto, cpu, cuda"):
        EpisodeGenerator(cfg, device="gpu0")
    with pytest.raises(TypeError, match="device must be a name such as 'cpu'"):
        EpisodeGenerator(cfg, device=0)
    if not torch.cuda.is_available():     # named when asked for, not at the first tensor made there
        with pytest.raises(ValueError, match="no CUDA GPU"):
            EpisodeGenerator(cfg, device="cuda")
    with EpisodeGenerator(cfg, num_workers=1, progress=False) as gen:
        with pytest.raises(TypeError, match="with num_workers > 0 the student must be a TransformerPredator"):
            gen.generate(1, 0, student=lambda batch: batch["predator"], beta=0.5)
        assert gen._pool is None


@pytest.mark.parametrize("kw, message", [({"width_max": 10 ** 8}, "width_max must be <= 65536"),
                                         ({"height_min": 2 ** 16 + 1, "height_max": 2 ** 17},
                                          "height_min must be <= 65536"),
                                         ({"boids_max": 10_001}, "boids_max must be <= 10000")])
def test_world_ranges_stop_where_the_simulation_does(kw, message):
    """A canvas of 10**8 px was drawn (where float32 positions step by 8 px, so a predator at 2 px a
    frame stood still) although World.random refuses width=10**8; boids_max 10001 passed the CLI's
    checks and failed in World.random with a traceback."""
    from predlab import config, sim
    from predlab.config import WorldConfig
    from predlab.data import generate_episodes
    assert (config.MAX_CANVAS, config.MAX_BOIDS) == (sim.MAX_CANVAS, sim.MAX_BOIDS)
    with pytest.raises(ValueError, match=message):
        generate_episodes(1, WorldConfig(frames=2, **kw))


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("action, error, message", [
    (lambda R: torch.full((R, 2), float("nan")), NonFiniteActions, "student's actions at frame 0 are NaN"),
    (lambda R: torch.zeros(3), ValueError, r"have shape \[3\]; a policy returns one action per episode"),
    (lambda R: [[0.0, 0.0]] * R, TypeError, "student's actions at frame 0 are a list")])
def test_a_student_with_unusable_actions_is_named(backend, action, error, message):
    """A student's NaN actions gave samples of NaN boids without a word (the labels stayed finite);
    a list or a wrong shape failed inside the frame with an error about tensor sizes."""
    from predlab import data
    if backend == "numba" and data.fastsim is None:
        pytest.skip("numba is not installed")
    with pytest.raises(error, match=message):
        data.rollout_chunk(4, {"frames": 5, "boids_max": 5}, 0, beta=0.0, backend=backend,
                           student=lambda batch: action(batch["context"].shape[0]))


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError), ("4", TypeError)])
def test_batch_indices_names_a_bad_batch_size(batch_size, error):
    from predlab.data import SampleSet
    samples = SampleSet(torch.zeros(5, 2), torch.zeros(5, 2), torch.zeros(5, 1, 4), torch.ones(5, dtype=torch.long),
                        torch.zeros(5, 2))
    with pytest.raises(error, match="batch_size must be a whole number"):
        samples.batch_indices(batch_size)
    assert [len(b) for b in samples.batch_indices(2, shuffle=False)] == [2, 2, 1]


def test_batch_indices_bucket_by_boid_count_and_follow_the_generator():
    """Training batches cover every row once, hold rows of neighbouring boid counts (so padding
    costs almost nothing), and come in an order drawn from the generator given (the trainer's seeded
    one) whatever torch's global RNG holds. Only the batch sizes were tested: batches of any counts,
    or an order from the global RNG (which dropout and user code draw from too), went unseen."""
    from predlab.data import SampleSet
    n = torch.tensor([5, 1, 3, 1, 5, 2, 3, 1, 2, 5, 4, 4])
    S = len(n)
    samples = SampleSet(torch.zeros(S, 2), torch.zeros(S, 2), torch.zeros(S, 5, 4), n, torch.zeros(S, 2))

    def batches(global_seed, seed=0):
        with torch.random.fork_rng():
            torch.manual_seed(global_seed)
            return [b.tolist() for b in samples.batch_indices(3, generator=torch.Generator().manual_seed(seed))]

    a = batches(1)
    assert a == batches(2) and a != batches(1, seed=1)
    assert sorted(i for b in a for i in b) == list(range(S))
    counts = sorted(n.tolist())
    assert sorted(sorted(n[b].tolist()) for b in a) == [counts[i:i + 3] for i in range(0, S, 3)]


def test_chunks_and_streams_draw_episodes_of_their_own():
    """Each chunk of a stream is seeded from (seed, stream, chunk index): a seed made from the chunk's
    size (equal for full chunks) repeated a chunk's episodes within an epoch, and one made from
    stream + chunk gave validation's second chunk (stream 0) to the first epoch (stream 1) to train on."""
    from predlab.config import WorldConfig
    from predlab.data import CHUNK_EPISODES, generate_episodes
    cfg = WorldConfig(frames=1, boids_max=4)                         # one sample per episode, in order
    chunks = []
    for seed, stream in ((0, 0), (0, 1), (1, 0)):
        s = generate_episodes(2 * CHUNK_EPISODES, cfg, seed=seed, stream=stream)
        assert len(s) == 2 * CHUNK_EPISODES
        start = torch.cat([s.context, s.boids[:, 0]], 1)             # canvas and the flock's first boid
        chunks += list(start.split(CHUNK_EPISODES))
    for i in range(len(chunks)):
        for j in range(i):
            assert not torch.equal(chunks[i], chunks[j]), (i, j)


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_an_episode_gives_samples_until_its_flock_is_caught(backend, beta):
    """Samples are states the browser would give the model, which it never calls without a live boid
    (it patrols): a finished episode gives no more rows. On tiny canvases many flocks are caught
    within 60 frames; the tests' larger worlds caught none, so rows of finished episodes (no boid,
    a (0, 0) label) kept by either path, with a student or without, went unseen."""
    from predlab import data
    from predlab.config import WorldConfig
    from predlab.teacher import closest_pursuit
    if backend == "numba" and data.fastsim is None:
        pytest.skip("numba is not installed")
    cfg = WorldConfig(width_min=40, width_max=60, height_min=40, height_max=60, boids_max=3, frames=60)
    s = data.rollout_chunk(32, cfg, 0, student=lambda b: closest_pursuit(b["boids"], b["mask"]).flip(-1),
                           beta=beta, backend=backend)
    assert (s.n >= 1).all()
    assert 32 <= len(s) < 32 * 60 - 300                        # episodes did end


def test_grouping_by_flock_size_keeps_each_episodes_draws():
    """The torch path steps a chunk in groups of similar flock size (GROUP_EPISODES each), for speed
    only: each episode keeps its own noise draw and its own draw of who drives. Index by the group's
    position instead of the episode's, and episodes past the first group got another's; every
    test chunk fitted in one group. The numba path steps the chunk whole, so its first two frames
    (one step) must match."""
    from predlab import data
    from predlab.config import WorldConfig
    from predlab.teacher import closest_pursuit
    if data.fastsim is None:
        pytest.skip("numba is not installed")
    E = 3 * data.GROUP_EPISODES

    def student(b):
        return closest_pursuit(b["boids"], b["mask"]).flip(-1)

    a, b = (data.rollout_chunk(E, WorldConfig(frames=2), 4, student=student, beta=0.5, backend=backend)
            for backend in ("numba", "torch"))
    assert len(a) == len(b) == 2 * E
    for k in ("context", "predator", "n", "target"):
        assert torch.allclose(getattr(a, k), getattr(b, k), rtol=0, atol=1e-5), k
    assert torch.allclose(a.boids, b.boids, rtol=0, atol=1e-5)


def test_episode_worker_processes_leave_ctrl_c_to_the_run(monkeypatch):
    """A terminal's Ctrl-C reaches every process of a --num_workers run. A worker it stopped printed
    its traceback, and one stopped while it held the task queue's lock left the run's close()
    (Pool.terminate) waiting for that lock forever: the run hung instead of exporting. Workers are
    started ignoring Ctrl-C (through their imports too) and keep ignoring it; the run's own Ctrl-C
    handler is back once they have started."""
    import signal
    import types

    from predlab import data
    handler = signal.getsignal(signal.SIGINT)
    seen = []

    def pool(processes, initializer, initargs, context):
        seen.append(signal.getsignal(signal.SIGINT))     # what a process started now inherits
        return types.SimpleNamespace(terminate=lambda: None, join=lambda: None)

    monkeypatch.setattr(data, "_Pool", pool)
    gen = data.EpisodeGenerator(num_workers=1, progress=False)
    gen._get_pool()
    gen.close()
    assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGINT) is handler

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)        # this process's threads stay
    monkeypatch.setattr(data, "fastsim", None)
    try:
        data._worker_init()                                              # as a worker runs it
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, handler)


def test_sampleset_check_names_numpy_fields_and_mixed_float_types():
    """A set built from numpy arrays, or with a float64 field, is named by check(): such sets failed in the
    model's first layer ('expected m1 and m2 to have the same dtype') or with "no attribute 'dim'"."""
    from predlab.data import SampleSet
    s = generate_small()
    as_numpy = SampleSet(s.context.numpy(), s.predator, s.boids, s.n, s.target)
    with pytest.raises(InputError, match=r"train\.context must be a tensor, got ndarray"):
        as_numpy.check("train")
    mixed = SampleSet(s.context, s.predator, s.boids.double(), s.n, s.target)
    with pytest.raises(InputError, match=r"train\.boids is torch\.float64, context is torch\.float32"):
        mixed.check("train")
    whole = SampleSet(s.context, s.predator, s.boids, s.n, s.target.long())
    with pytest.raises(InputError, match=r"train\.target is torch\.int64: it must be a float tensor"):
        whole.check("train")
    wide = SampleSet(*(t.double() if t.is_floating_point() else t for t in
                       (s.context, s.predator, s.boids, s.n, s.target)))
    wide.check("train")                                             # float64 throughout is a set
    with pytest.raises(InputError, match=r"train\.context is torch\.float64, the model's weights are "
                                         r"torch\.float32"):
        wide.check("train", dtype=torch.float32)


def test_sampleset_select_and_batch_name_a_single_row_index():
    """select(3) or batch(3), one row as an int, failed with "len() of a 0-d tensor"."""
    s = generate_small()
    for call in (s.select, s.batch):
        with pytest.raises(InputError, match=r"idx must pick rows .* got 3: for row i alone give \[i\]"):
            call(3)
    assert len(s.select([3])) == 1 and s.batch([3])["mask"].shape == (1, int(s.n[3]))


@pytest.mark.parametrize("n", [torch.tensor([1.0, 2.0, 3.5]), torch.tensor([True, True, False])])
def test_a_sample_set_whose_boid_counts_are_not_whole_numbers_is_named(n):
    """Float counts passed every check: 3.5 boids made a mask of four live ones; bool counts read
    True as one boid."""
    from predlab.data import SampleSet
    s = SampleSet(torch.rand(3, 2), torch.rand(3, 2), torch.rand(3, 4, 4), n, torch.rand(3, 2))
    with pytest.raises(InputError, match=rf"train.n is {n.dtype}: boid counts are whole numbers \(.long\(\)\)"):
        s.check("train")


def test_episode_workers_leave_a_sigterm_to_a_run_that_outlives_one(monkeypatch):
    """SLURM, systemd and `kill -- -PGID` send SIGTERM to every process of a --num_workers run. The
    command line stops at one as at a Ctrl-C; a worker it killed while it held the task queue's lock
    left close() waiting for that lock forever. Such a run's workers ignore it (and are born with it
    blocked, so that none comes in before), and the pool ends them by SIGKILL; where SIGTERM kills
    the process that started them (a notebook's kernel), it kills them too."""
    import signal
    import types

    from predlab import data
    from predlab.export import command_line
    seen = []

    def pool(processes, initializer, initargs, context):
        seen.append((initargs, signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set())))
        return types.SimpleNamespace(terminate=lambda: None, join=lambda: None)

    real = data._Pool
    monkeypatch.setattr(data, "_Pool", pool)
    for cli in (False, True):
        with command_line(sigterm=cli):
            gen = data.EpisodeGenerator(num_workers=1, progress=False)
            gen._get_pool()
            gen.close()
    assert seen == [((False,), True), ((True,), True)]
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    pool = types.SimpleNamespace(workers=[])
    w = real.Process(pool, None, target=print)
    assert isinstance(w, data._Worker) and pool.workers == [w]     # whose terminate() is a SIGKILL; kept to check

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)        # this process's threads stay
    monkeypatch.setattr(data, "fastsim", None)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        data._worker_init(True)                                          # as a worker runs it
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])


def test_episode_workers_are_killed_by_the_exit_clean_up_too():
    """multiprocessing's clean-up at exit ends daemon children with _popen.terminate(), not the
    process's terminate(): a SIGTERM, which the workers of a command line run ignore. A pool whose
    close() a second SIGTERM cut left the run hanging at exit, joining them, and the workers alive
    once it was killed."""
    import signal
    import time

    from predlab import data
    w = data._Worker(target=time.sleep, args=(30,), daemon=True)
    w.start()
    try:
        w._popen.terminate()            # as multiprocessing.util._exit_function calls it
        w.join(10)
        assert w.exitcode == -signal.SIGKILL
    finally:
        if w.exitcode is None:
            w.kill()
            w.join()


def test_sampleset_cat_keeps_the_dtype_and_refuses_a_mix():
    """SampleSet.cat of a float32 set and a float64 one came back float64 (torch.cat promotes) without a
    word, and a cat of empty float64 sets came back float32: the dtype changed silently either way."""
    from predlab.data import SampleSet, generate_episodes
    from predlab.config import WorldConfig
    f32 = generate_episodes(2, WorldConfig(frames=3), seed=1)
    f64 = SampleSet(f32.context.double(), f32.predator.double(), f32.boids.double(), f32.n, f32.target.double())
    with pytest.raises(InputError, match=r"SampleSet.cat: the parts' context have different dtypes "
                                         r"\(torch.float32, torch.float64\)"):
        SampleSet.cat([f32, f64])
    none = f64.select(torch.arange(0))
    for parts in ([f64, f64], [none, f64], [none, none]):
        out = SampleSet.cat(parts)
        assert [t.dtype for t in (out.context, out.predator, out.boids, out.target)] == [F64] * 4
        assert len(out) == sum(len(p) for p in parts)
        out.check()
    assert torch.equal(SampleSet.cat([f32, f32.select(torch.arange(0))]).boids, f32.boids)


def test_batch_indices_of_an_empty_set_are_no_batches():
    """An empty set split into one batch of no rows, so a user's loop over batch_indices ran the model on
    nothing and its mean loss was NaN. One sample is one batch of one row."""
    from predlab.data import SampleSet
    one = SampleSet(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 3, 4), torch.tensor([3]), torch.zeros(1, 2))
    for shuffle in (True, False):
        assert SampleSet.empty().batch_indices(8, shuffle=shuffle) == []
        assert one.select(torch.arange(0)).batch_indices(8, shuffle=shuffle) == []
        assert [b.tolist() for b in one.batch_indices(8, shuffle=shuffle)] == [[0]]


_PEAK = """
import resource, sys
from predlab.config import WorldConfig
from predlab.data import generate_episodes
if __name__ == "__main__":
    E, F = int(sys.argv[1]), int(sys.argv[2])
    cfg = WorldConfig(frames=F, boids_min=50, boids_max=50, width_min=3840, height_min=2160)
    generate_episodes(2, WorldConfig(frames=2))                   # imports, kernels, allocator pools
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = generate_episodes(E, cfg, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    held = sum(t.numel() * t.element_size() for t in s.state_dict().values())
    print((peak - base) * 1024, held)
"""


@pytest.mark.parametrize("episodes, frames", [(512, 65), (2048, 40)])
def test_generation_holds_the_samples_and_one_chunk_at_most(tmp_path, episodes, frames):
    """Generating held twice its samples at its peak, where the memory check before the work counted them
    once: a chunk's rows grew by doubling (a 65-frame chunk's storage was zero-filled to 128 frames), and
    the chunks were joined by SampleSet.cat while every chunk was still held. The peak is now the samples
    and one chunk (of 512 episodes), and the check counts that."""
    import subprocess
    import sys
    from predlab.config import sample_bytes
    from predlab.data import CHUNK_EPISODES
    script = tmp_path / "peak.py"
    script.write_text(_PEAK)
    r = subprocess.run([sys.executable, str(script), str(episodes), str(frames)], capture_output=True, text=True,
                       timeout=150)
    assert r.returncode == 0, r.stderr[-2000:]
    grown, held = map(int, r.stdout.split())
    chunk = CHUNK_EPISODES * frames * sample_bytes(50) if episodes > CHUNK_EPISODES else 0
    assert 0 < held <= episodes * frames * sample_bytes(50)
    assert grown <= held + chunk + 16 * 2 ** 20, (grown / 2 ** 20, held / 2 ** 20)


def test_the_memory_check_counts_the_join_of_the_chunks(monkeypatch):
    """Two chunks' samples that fit alone, but not with the copy of one chunk that joining them takes,
    are refused before any work."""
    from predlab import config
    from predlab.config import WorldConfig, sample_bytes
    from predlab.data import CHUNK_EPISODES, generate_episodes
    cfg = WorldConfig(frames=5, boids_min=50, boids_max=50)
    samples = 2 * CHUNK_EPISODES * 5 * sample_bytes(50)
    monkeypatch.setattr(config, "physical_memory", lambda: samples + 1000)
    with pytest.raises(ValueError, match=rf"the samples of {2 * CHUNK_EPISODES} episodes would need about .*joining "
                                         rf"the chunks of {CHUNK_EPISODES} episodes, one chunk's samples"):
        generate_episodes(2 * CHUNK_EPISODES, cfg)
    assert len(generate_episodes(CHUNK_EPISODES, cfg)) == CHUNK_EPISODES * 5


def test_samples_from_an_observation_train_on_its_live_boids():
    """A SampleSet built from World.observe() with n = mask.sum(1) kept the observation's order, where dead
    boids sit among the live ones: the trainer's val MSE on it was 0.527 where the model's own MSE on the
    same states was 0.200. from_observation moves each row's live boids to its front."""
    from predlab.config import WorldConfig
    from predlab.data import SampleSet
    from predlab.model import TransformerPredator
    from predlab.teacher import TeacherPolicy
    from predlab.train import SupervisedTrainer
    world = World.random(8, WorldConfig(boids_min=10, boids_max=10), generator=torch.Generator().manual_seed(0))
    world.alive[:, :5] = False
    obs = world.observe()
    target = TeacherPolicy()(obs)
    samples = SampleSet.from_observation(obs, target)
    assert samples.n.tolist() == [5] * 8
    assert torch.equal(samples.boids[:, :5], obs["boids"][:, 5:])       # the live ones, in their order
    torch.manual_seed(0)
    model = TransformerPredator().eval()
    trainer = SupervisedTrainer(model, samples, samples, device="cpu", world_config=WorldConfig())
    with torch.no_grad():
        direct = float(((model(obs) - target) ** 2).mean())
    assert trainer.validate() == pytest.approx(direct, rel=1e-5)
    world.alive[2] = False           # a row with no live boid: left out, as generation leaves it (the page
    obs = world.observe()             # does not ask the model then); it trained on the teacher's (0, 0)
    kept = SampleSet.from_observation(obs, TeacherPolicy()(obs))
    assert kept.n.tolist() == [5] * 7 and torch.equal(kept.context, obs["context"][[0, 1, 3, 4, 5, 6, 7]])
    for bad, message in (({**obs, "mask": obs["mask"].long()}, "obs\\['mask'\\] must be a bool tensor"),
                         ({k: v for k, v in obs.items() if k != "mask"}, "an observation dict with"),
                         ({**obs, "boids": obs["boids"].double()}, "boids is torch.float64"),
                         ({**obs, "boids": torch.zeros(8, 10, 5)}, r"obs\['boids'\] has shape \(8, 10, 5\), expected"),
                         ({k: v[0] for k, v in obs.items()}, r"has shape \(10, 4\), expected \(B, N, 4\)")):
        with pytest.raises(InputError, match=message):
            SampleSet.from_observation(bad, target)


def test_a_float64_student_drives_the_same_episodes_in_worker_processes():
    """Workers rebuilt the student in float32 (load_state_dict casts) where this process drives it in
    float64 (ModelPolicy): other data for another num_workers."""
    from predlab.config import ModelConfig, WorldConfig
    from predlab.data import EpisodeGenerator
    from predlab.model import TransformerPredator
    torch.manual_seed(0)
    student = TransformerPredator.from_config(vars(ModelConfig())).double()
    out = []
    for workers in (0, 1):
        with EpisodeGenerator(WorldConfig(frames=100), seed=3, num_workers=workers, progress=False) as g:
            out.append(g.generate(40, stream=1, student=student, beta=0.0))
    for k in ("context", "predator", "boids", "n", "target"):
        assert torch.equal(getattr(out[0], k), getattr(out[1], k)), k


def test_generation_runs_under_a_float64_default_dtype():
    """torch.set_default_dtype(torch.float64) made the frame noise float64, which fastsim's checks refuse in
    the float32 world (teacher-driven and student-driven frames alike): generation failed. The draws are
    float32's whatever the default, so the episodes are the same."""
    from predlab.config import ModelConfig, WorldConfig
    from predlab.data import EpisodeGenerator
    from predlab.model import TransformerPredator
    want = EpisodeGenerator(WorldConfig(frames=10), seed=0, progress=False).generate(3, stream=1)
    student = TransformerPredator.from_config(vars(ModelConfig()))
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = EpisodeGenerator(WorldConfig(frames=10), seed=0, progress=False).generate(3, stream=1)
        driven = EpisodeGenerator(WorldConfig(frames=10), seed=0, progress=False).generate(3, stream=1,
                                                                                          student=student, beta=0.0)
    finally:
        torch.set_default_dtype(before)
    for k in ("context", "predator", "boids", "n", "target"):     # the same episodes: the draws are float32's
        assert torch.equal(getattr(got, k), getattr(want, k)), k
    assert len(driven) > 0


def test_workers_send_numpy_arrays_and_bytes_never_shared_memory_tensors():
    """torch pickles tensors between processes through /dev/shm, whose 64 MB in a container (Docker's default)
    a chunk of 512 episodes overflowed: a worker's samples and the student's weights cross as arrays and bytes."""
    import io
    import numpy as np
    from predlab.data import _worker_rollout
    from predlab.model import TransformerPredator
    from predlab.config import WorldConfig
    cfg = WorldConfig(frames=3, boids_max=4)
    student = TransformerPredator(d_model=8, n_heads=2, n_layers=1, ffn_hidden=4)
    weights = io.BytesIO()
    torch.save(student.state_dict(), weights)
    state = {"config": vars(student.config).copy(), "weights": weights.getvalue(), "dtype": torch.float32}
    part = _worker_rollout((3, cfg, 5, state, 0.0))
    assert all(isinstance(a, np.ndarray) for a in part) and len(part) == 5


@pytest.fixture
def hang_guard():
    """A hang of the test (what these tests were written for) ends its process after 120 s, not CI's whole run;
    the guard is lifted whatever the test's end, so a failed one does not end the process in a later test."""
    import faulthandler
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def test_a_worker_that_died_between_generations_is_named_at_the_next_not_waited_for(hang_guard):
    """A worker killed while idle may hold the lock on the pool's task queue: the one started in its place waits
    for it for ever. The next generation names the dead worker instead of hanging, and starts a fresh pool after."""
    import os
    import signal
    import time
    from predlab.config import WorldConfig
    from predlab.data import EpisodeGenerator, WorkerError
    cfg = WorldConfig(frames=3, boids_max=4)
    with EpisodeGenerator(cfg, num_workers=1, progress=False) as gen:
        first = gen.generate(4, stream=1)
        os.kill(gen._pool.workers[0].pid, signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(WorkerError, match=r"ended while generating \(exit code -9\): killed, or out of memory"):
            gen.generate(4, stream=1)
        assert gen._pool is None
        assert torch.equal(gen.generate(4, stream=1).boids, first.boids)


def _die_in_the_result_queue(half_sent):
    """Run in a pool worker: take the lock on the pool's result queue, as a worker sending a result does, maybe
    send the start of a result, and die there (SIGKILL: what the out-of-memory killer sends)."""
    import os
    import signal
    import sys
    frame = sys._getframe()
    while "outqueue" not in frame.f_locals:       # the worker loop's own queue
        frame = frame.f_back
    outqueue = frame.f_locals["outqueue"]
    outqueue._wlock.acquire()
    if half_sent:
        outqueue._writer._send((1 << 20).to_bytes(4, "big") + b"part of a result")
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("half_sent", [False, True], ids=["holding-the-lock", "half-sent"])
def test_a_worker_killed_sending_a_result_is_named_not_waited_for(half_sent, hang_guard):
    """A worker killed as it sent a result held the lock on the pool's result queue for ever, and ending the pool
    takes that lock: the generation that found the dead worker hung in close(). One killed halfway through a
    result left the thread reading results waiting for the rest. Both are named, and the next generation runs."""
    import time
    from predlab.config import WorldConfig
    from predlab.data import EpisodeGenerator, WorkerError
    with EpisodeGenerator(WorldConfig(frames=3, boids_max=4), num_workers=1, progress=False) as gen:
        first = gen.generate(4, stream=1)
        worker = gen._pool.workers[0]
        gen._pool.apply_async(_die_in_the_result_queue, (half_sent,))
        deadline = time.monotonic() + 60
        while worker.exitcode is None and time.monotonic() < deadline:      # (the pool's thread may reap it)
            time.sleep(0.05)
        assert worker.exitcode == -9
        start = time.monotonic()
        with pytest.raises(WorkerError, match=r"ended while generating \(exit code -9\)"):
            gen.generate(4, stream=1)
        assert gen._pool is None and time.monotonic() - start < 30
        assert torch.equal(gen.generate(4, stream=1).boids, first.boids)


def _die_reading_a_task(part):
    """Run in a pool worker: take the task queue's lock, as a worker waiting for a task does, read the first
    `part` bytes of the next task and die there (SIGKILL)."""
    import os
    import signal
    import sys
    frame = sys._getframe()
    while "inqueue" not in frame.f_locals:
        frame = frame.f_back
    inqueue = frame.f_locals["inqueue"]
    inqueue._rlock.acquire()
    got = b""
    while len(got) < part:
        got += os.read(inqueue._reader.fileno(), part - len(got))
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.skipif(sys.platform == "win32", reason="reads the task pipe as a POSIX file")
@pytest.mark.parametrize("part", [4, 1004], ids=["its-length", "part-of-it"])
def test_a_worker_killed_reading_a_task_is_named_not_waited_for(part, hang_guard):
    """A DAgger task holds the student's weights (300 KB, over a pipe's 64 KB). A worker killed as it read one
    left the rest in the task queue, and ending the pool read its bytes as messages: one read as a length of
    hundreds of MB, and close() waited for them for ever (1 in 24 random kills of a DAgger generation)."""
    import time
    from predlab.config import ModelConfig, WorldConfig
    from predlab.data import EpisodeGenerator, WorkerError
    from predlab.model import TransformerPredator
    student = TransformerPredator.from_config(ModelConfig())
    with EpisodeGenerator(WorldConfig(frames=3, boids_max=4), num_workers=1, progress=False) as gen:
        first = gen.generate(4, stream=1)
        gen._pool.apply_async(_die_reading_a_task, (part,))
        time.sleep(0.5)           # it waits on the task queue now
        start = time.monotonic()
        with pytest.raises(WorkerError, match=r"ended while generating \(exit code -9\)"):
            gen.generate(4, stream=1, student=student, beta=0.5)
        assert gen._pool is None and time.monotonic() - start < 30
        assert torch.equal(gen.generate(4, stream=1).boids, first.boids)


def test_a_pool_whose_worker_starter_died_still_ends(monkeypatch, hang_guard):
    """Pool's thread that starts workers in dead ones' places dies of a failed start (a container's process
    limit: fork's EAGAIN), and it alone told the task handler to end: close() then waited for it for ever."""
    import os
    import signal
    import time
    from predlab.config import WorldConfig
    from predlab.data import EpisodeGenerator, WorkerError, _Worker
    with EpisodeGenerator(WorldConfig(frames=3, boids_max=4), num_workers=1, progress=False) as gen:
        gen.generate(4, stream=1)

        def no_more(self):
            raise BlockingIOError(11, "Resource temporarily unavailable")
        monkeypatch.setattr(_Worker, "start", no_more)
        monkeypatch.setattr("threading.excepthook", lambda args: None)      # the starter's own traceback
        os.kill(gen._pool.workers[0].pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while gen._pool._worker_handler.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not gen._pool._worker_handler.is_alive()
        with pytest.raises(WorkerError, match=r"exit code -9"):
            gen.generate(4, stream=1)
        assert gen._pool is None


def _nap(payload):
    """Run in a pool worker: a task that takes long."""
    import time
    time.sleep(60)
    return len(payload)


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="sends the Ctrl-C with pthread_kill")
def test_a_ctrl_c_within_the_pool_s_ending_leaves_no_thread_behind(monkeypatch, hang_guard):
    """A second Ctrl-C as the ending reaped its killed workers (20-30 ms after the first) cut it before the
    queues were seen to: the pool's task and result threads waited for ever, one holding the results that had
    come (up to 85 MB a chunk). The Ctrl-C counts when the ending is done."""
    import threading
    import time
    from predlab.config import WorldConfig
    from predlab.data import EpisodeGenerator, _Worker
    gen = EpisodeGenerator(WorldConfig(frames=3, boids_max=4), num_workers=1, progress=False)
    gen.generate(4, stream=1)
    pool = gen._pool
    # tasks in flight, as a DAgger generation's (the student's weights, 300 KB a task): the task thread waits
    # to put the next into the full task pipe
    pool.map_async(_nap, [b"w" * 300_000] * 4)
    time.sleep(0.5)
    real, sent = _Worker.join, []

    def join(self, timeout=None):       # the Ctrl-C, as the ending reaps the workers it killed
        if not sent and threading.current_thread() is threading.main_thread():
            sent.append(True)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        return real(self, timeout)
    monkeypatch.setattr(_Worker, "join", join)
    with pytest.raises(KeyboardInterrupt):
        gen.close()
    assert sent and gen._pool is None
    deadline = time.monotonic() + 10
    while (pool._task_handler.is_alive() or pool._result_handler.is_alive()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pool._task_handler.is_alive() and not pool._result_handler.is_alive()


def test_an_interrupted_generation_stops_its_workers(monkeypatch):
    """A Ctrl-C in a notebook left the pool generating every chunk no one waited for, their samples piling up,
    and the next generation waited behind them."""
    import _thread
    import multiprocessing.pool
    from predlab.data import EpisodeGenerator
    from predlab.config import WorldConfig
    real = multiprocessing.pool.IMapIterator.next

    def first_chunk_then_ctrl_c(self, timeout=None):     # as the first of 16 chunks comes (a timer raced the run)
        part = real(self, timeout)
        _thread.interrupt_main()
        return part
    monkeypatch.setattr(multiprocessing.pool.IMapIterator, "next", first_chunk_then_ctrl_c)
    gen = EpisodeGenerator(WorldConfig(frames=200), num_workers=1, progress=False)
    try:
        with pytest.raises(KeyboardInterrupt):
            gen.generate(8192, stream=1)
        assert gen._pool is None
    finally:
        gen.close()


def test_a_close_cut_short_leaves_no_pool_and_no_live_worker():
    """A Ctrl-C that cut terminate() short (it may wait a second for a dead worker's lock) left the pool set and
    half ended: the next close() waited in join() for ever, and so did every later generation in a notebook."""
    import time
    from predlab.config import WorldConfig
    from predlab.data import EpisodeGenerator
    gen = EpisodeGenerator(WorldConfig(frames=3, boids_max=4), num_workers=1, progress=False)
    gen.generate(4, stream=1)
    pool = gen._pool
    real = pool.terminate

    def cut():      # as terminate() begins (no more workers started), then the Ctrl-C
        import multiprocessing.pool
        pool._worker_handler._state = multiprocessing.pool.TERMINATE
        raise KeyboardInterrupt
    pool.terminate = cut
    with pytest.raises(KeyboardInterrupt):
        gen.close()
    assert gen._pool is None
    deadline = time.time() + 10
    while any(w.exitcode is None for w in pool.workers) and time.time() < deadline:
        time.sleep(0.05)
    assert all(w.exitcode is not None for w in pool.workers)      # killed all the same
    gen.close()                                                    # nothing left to wait for
    real()
    pool.join()


def test_seeds_past_32_bits_draw_episodes_of_their_own():
    """numpy's SeedSequence reads an int as 32-bit words and drops trailing zero words: seed 2**32 + 5's
    validation episodes (stream 0) were seed 5's first training epoch (stream 1), a run's "held-out" set
    another run's training data. Seeds below 2**32 keep their episodes."""
    import numpy as np
    from predlab.config import WorldConfig
    from predlab.data import chunk_seed, generate_episodes
    cfg = WorldConfig(frames=2, boids_max=4)
    big = generate_episodes(4, cfg, seed=2 ** 32 + 5, stream=0)
    assert not torch.equal(big.context, generate_episodes(4, cfg, seed=5, stream=1).context)
    seeds = {chunk_seed(s, stream, chunk) for s in (5, 2 ** 32 + 5, 2 ** 63 - 1, 2 ** 32)
             for stream in (0, 1, 2 ** 32) for chunk in (0, 1)}
    assert len(seeds) == 24
    kept = np.random.SeedSequence([5, 1, 0]).generate_state(2, np.uint64)[0] >> np.uint64(1)
    assert chunk_seed(5, 1, 0) == int(kept)


def test_sample_set_calls_with_the_wrong_kind_of_argument_name_it():
    """Each failed in Python's or torch's words: a list's .get (a tampered DAgger buffer), an int's len(),
    randperm's "invalid combination of arguments", "Overflow when unpacking long long"."""
    from predlab.data import SampleSet
    rows = SampleSet.from_ragged({"context": torch.zeros(2, 2), "predator": torch.zeros(2, 2),
                                  "n": torch.tensor([1, 2]), "boids": torch.zeros(3, 4), "target": torch.zeros(2, 2)})
    for stored in ([1, 2], None):
        with pytest.raises(ValueError, match=r"stored samples are (list|NoneType), not a dict of tensors \(tampered"):
            SampleSet.from_ragged(stored)
    with pytest.raises(InputError, match="SampleSet.cat takes SampleSets, got int among the parts"):
        SampleSet.cat([rows, 3])
    with pytest.raises(InputError, match="generator must be a torch.Generator .*, not int"):
        rows.batch_indices(2, generator=3)
    with pytest.raises(ValueError, match="batch_size must be a whole number between 1 and"):
        rows.batch_indices(10 ** 30)
    assert [b.tolist() for b in rows.batch_indices(10 ** 18, shuffle=False)] == [[0, 1]]


def test_targets_beyond_the_models_actions_are_named():
    """SampleSet.from_observation(obs, target) with targets in pixels or forces trained the tanh outputs into
    saturation without a word (from_ragged refused such samples as made by no teacher)."""
    from predlab.data import InputError, SampleSet
    from predlab.sim import World
    obs = World.random(3, generator=torch.Generator().manual_seed(0), n_boids=4).observe()
    target = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])
    assert len(SampleSet.from_observation(obs, target)) == 3
    with pytest.raises(InputError, match=r"target reaches 5, beyond \[-1, 1\] where the model's actions lie"):
        SampleSet.from_observation(obs, target * 5).check()
