"""Settings whose data cannot fit in this machine's memory are refused up front, naming the
setting, instead of failing in an allocation (a traceback, or the system killing the process)."""
import dataclasses
import os
import subprocess
import sys

import pytest

from predlab import config
from predlab.config import TrainConfig, WorldConfig

# the head of the scripts below, each run in a process of its own: /proc/self/status's figures in bytes, VmRSS
# and VmHWM (the peak RSS; ru_maxrss would carry the parent's across fork and exec)
PROC_STATUS = r"""
import re


def status(key):
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+) kB", f.read()).group(1)) * 1024
"""
TINY = ["--train_episodes", "6", "--val_episodes", "3", "--frames", "12", "--boids_max", "12", "--quiet"]


@pytest.fixture
def one_gib(monkeypatch):
    """A machine of 1 GiB, on which nothing may be generated (a failing check fails at once)."""
    from predlab import data

    def never(*a, **k):
        raise AssertionError("generated episodes")
    monkeypatch.setattr(config, "physical_memory", lambda: 2 ** 30)
    monkeypatch.setattr(data.EpisodeGenerator, "generate", never)


@pytest.mark.parametrize("flags, culprit", [
    (["--val_episodes", "100000000"], "validation samples (--val_episodes x --frames x --boids_max)"),
    (["--train_episodes", "10000000"], "--train_episodes x --frames x --boids_max"),
    (["--eval_episodes", "100000000"], "the catch evaluation's episodes (--eval_episodes x --boids_max)"),
    # a batch is at most the samples trained on: 60,000 episodes make enough for ten million
    (["--batch_size", "10000000", "--train_episodes", "60000"],
     "a training step's activations (--batch_size x --boids_max)"),   # the fused attention: no squares
    (["--d_model", "40000"], "the model, its gradients and optimizer state"),
])
def test_cli_refuses_what_cannot_fit_with_exit_2(tmp_path, monkeypatch, capsys, one_gib, flags, culprit):
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--epochs", "1", *TINY, *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "of memory, more than this machine's 1.0 GiB" in err and culprit in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_the_defaults_fit_in_a_small_laptop(one_gib):
    from predlab.config import ModelConfig, training_memory
    assert training_memory(TrainConfig(), WorldConfig(), ModelConfig()) is None


def test_create_trainer_refuses_before_generating(one_gib):
    from predlab.train import create_trainer
    with pytest.raises(ValueError, match=r"validation samples \(--val_episodes x --frames x --boids_max\)"):
        create_trainer(val_episodes=10 ** 8, verbose=False, device="cpu")


def flock(boids: int) -> dict:
    """A structured input (the browser's form) of `boids` boids."""
    from predlab.data import BOID_KEYS
    return {"context": {"canvasWidth": 0.8, "canvasHeight": 0.6}, "predator": {"velX": 0.0, "velY": 0.0},
            "boids": [dict(zip(BOID_KEYS, [0.1, 0.1, 0.0, 0.0]))] * boids}


def test_evaluation_and_predict_refuse_what_cannot_fit(one_gib):
    from predlab.data import InputError
    from predlab.evaluate import rollout
    from predlab.model import TransformerPredator
    with pytest.raises(ValueError, match="10000000 episodes would need about .* evaluate fewer episodes"):
        rollout("teacher", episodes=10 ** 7, frames=1)
    sample = flock(20000)
    with pytest.raises(InputError, match="a forward over 20003 tokens .* predict fewer boids at a time"):
        TransformerPredator().predict(sample)
    assert TransformerPredator().predict({**sample, "boids": sample["boids"][:50]}).shape == (2,)


def test_no_check_where_the_system_does_not_say(monkeypatch):
    from predlab.config import memory_problem
    monkeypatch.setattr(config, "physical_memory", lambda: None)
    assert memory_problem([("anything", 10 ** 18)]) is None


def test_on_a_gpu_the_step_is_counted_against_the_gpus_memory(one_gib, monkeypatch):
    """A GPU run's batches live on the GPU: a laptop's small RAM must not refuse a large batch there."""
    import torch
    from predlab.config import ModelConfig, training_memory

    class Props:
        total_memory = 80 * 2 ** 30
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "a test GPU")
    cuda, mc, wc = torch.device("cuda"), ModelConfig(), WorldConfig()
    big_batch = TrainConfig(batch_size=16384)
    assert "a training step's activations" in training_memory(big_batch, wc, mc)          # on this CPU
    assert training_memory(big_batch, wc, mc, cuda) is None
    assert training_memory(big_batch, wc, mc, "cuda") is None             # a device's name, as create_trainer takes
    assert "validation samples" in training_memory(TrainConfig(val_episodes=10 ** 6), wc, mc, cuda)   # the host
    monkeypatch.setattr(config, "physical_memory", lambda: 2 ** 50)     # a large host: the samples reach the GPU
    # (a batch is at most the samples trained on: 6,000 episodes make 1.2 million)
    message = training_memory(TrainConfig(batch_size=2 ** 20, train_episodes=6000), wc, mc, cuda)
    assert "more than the 80.0 GiB of a test GPU" in message and "a training step's activations" in message
    message = training_memory(TrainConfig(val_episodes=10 ** 6), wc, mc, cuda)
    assert "more than the 80.0 GiB of a test GPU" in message and "validation samples" in message


def test_evaluate_cli_refuses_episodes_that_cannot_fit_with_exit_2(one_gib, capsys):
    from predlab.evaluate import main
    with pytest.raises(SystemExit) as exit_:
        main(["teacher", "--episodes", "100000000"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--episodes: 100000000 episodes would need about" in err and "Traceback" not in err


def test_the_message_names_boids_max_when_it_is_the_cause(one_gib, monkeypatch):
    """The cost of a step grows with the flock (with its square where the attention keeps its weights),
    and the evaluation's with its square: 1000 boids was blamed on --batch_size alone."""
    from predlab.config import ModelConfig, training_memory
    message = training_memory(TrainConfig(), WorldConfig(boids_max=1000), ModelConfig())
    assert "a training step's activations (--batch_size x --boids_max)" in message
    message = training_memory(TrainConfig(), WorldConfig(boids_max=1000), ModelConfig(d_model=64))   # 16-wide heads
    assert "a training step's activations (--batch_size x --boids_max squared)" in message
    # the torch World's step (a GPU's) holds [E, N, N] planes; the CPU's kernels hold none
    message = config.training_memory(TrainConfig(eval_episodes=100_000), WorldConfig(boids_max=1000), ModelConfig())
    assert "the catch evaluation's episodes (--eval_episodes x --boids_max) and the model's forwards" in message
    monkeypatch.setattr("predlab.evaluate.fastsim", None)
    message = config.training_memory(TrainConfig(eval_episodes=100_000), WorldConfig(boids_max=1000), ModelConfig())
    assert "the catch evaluation's episodes (--eval_episodes x --boids_max squared)" in message


@pytest.fixture
def eight_gib(monkeypatch):
    monkeypatch.setattr(config, "physical_memory", lambda: 8 * 2 ** 30)


def test_a_large_flock_on_a_cpu_is_counted_by_the_attention_kernel_it_runs(eight_gib, monkeypatch):
    """The browser's model on a CPU takes the fused attention, which keeps no [T, T] weights: 1,000
    boids at batch 256 was refused on every laptop for 25 GiB of weights it never holds. Where the
    attention does keep them (another kernel chosen, other head widths, a GPU's), they still count."""
    import torch
    from predlab import model
    from predlab.config import ModelConfig, training_memory
    tc, wc = TrainConfig(train_episodes=100, eval_every=0), WorldConfig(boids_max=1000)
    assert training_memory(tc, wc, ModelConfig()) is None
    assert training_memory(tc, wc, ModelConfig(), torch.device("cpu")) is None
    squared = "a training step's activations (--batch_size x --boids_max squared)"
    assert squared in training_memory(tc, wc, ModelConfig(d_model=40, n_heads=4))     # 10-wide heads
    # its buffers are a sample's weights and their gradients (and the arena's slack) per thread: 1.2 GB each
    # at 10,000 boids, on the threads of an unsplit batch (--cpu_split 1)
    monkeypatch.setattr("predlab.train.usable_cpus", lambda: 16)
    monkeypatch.setattr("predlab.data.usable_cpus", lambda: 16)
    step = lambda threads: next(b for d, b in config._training_work(
        TrainConfig(threads=threads, cpu_split=1), WorldConfig(boids_max=10_000), ModelConfig())
        if d.startswith("a training step"))
    assert step(16) - step(1) == 15 * 3 * 4 * 10_003 * 10_019
    monkeypatch.setattr(model, "CPU_ATTENTION", "sliced")
    assert squared in training_memory(tc, wc, ModelConfig())
    monkeypatch.setattr(model, "CPU_ATTENTION", "fused")
    assert training_memory(tc, wc, ModelConfig()) is None


def test_predict_counts_what_the_kernel_holds_not_every_samples_weights(one_gib):
    """A batch of large flocks on the CPU: the fused kernel holds one sample's weights per thread, the
    sliced kernel (float64, other head widths) one slice's: 40 samples of 1,000 boids were counted
    1.2 GiB (2.4 in float64) and refused."""
    from predlab.data import InputError
    from predlab.model import TransformerPredator
    sample = flock(1000)
    assert TransformerPredator().predict([sample] * 40).shape == (40, 2)
    assert TransformerPredator().double().predict([sample] * 20).shape == (20, 2)       # counted 1.2 GiB before
    with pytest.raises(InputError, match="a forward over 20003 tokens .* predict fewer boids at a time"):
        TransformerPredator().double().predict({**sample, "boids": sample["boids"] * 20})   # one slice: 26 GB


NO_BACKWARD_PEAK = PROC_STATUS + r"""
import sys, torch
from predlab.model import TransformerPredator


torch.set_num_threads(1)
N, B = 500, 32
g = torch.Generator().manual_seed(0)
batch = {"context": torch.full((B, 2), 0.8, dtype=torch.float64), "predator": torch.zeros(B, 2, dtype=torch.float64),
         "boids": (torch.rand(B, N, 4, generator=g, dtype=torch.float64) - 0.5) * 0.5,
         "mask": torch.ones(B, N, dtype=torch.bool)}
model = TransformerPredator().double().eval()
with torch.no_grad():
    model({k: v[:1] for k, v in batch.items()})
    before = status("VmHWM")
    model(batch)
print(status("VmHWM") - before, B * 4 * (N + 3) ** 2 * 8)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
def test_a_forward_without_backward_drops_each_slices_weights():
    """The sliced kernel (float64 here) kept every slice's weights to the end of the layer even where no
    backward follows (predict, evaluation, DAgger's student): 485 MB for 32 samples of 500 boids, whose
    weights alone are 259 MB. It holds one slice's now: 112-178 MB in ten runs, the activations and the
    allocator's slack included."""
    out = subprocess.run([sys.executable, "-c", NO_BACKWARD_PEAK], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "PREDLAB_CPU_ATTENTION"})
    taken, weights = map(int, out.stdout.split())
    assert taken < weights, (taken, weights)


def test_a_containers_memory_limit_counts(tmp_path, monkeypatch):
    """A run in a container limited below the machine's memory was let through, then killed."""
    from predlab.config import _cgroup_memory_limit
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "memory.max").write_text("max\n")
    assert _cgroup_memory_limit(str(tmp_path / "none")) is None
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "memory.max").write_text(f"{2 ** 31}\n")
    assert _cgroup_memory_limit(str(tmp_path / "two")) == 2 ** 31
    monkeypatch.setattr(config, "_cgroup_memory_limit", lambda: 2 ** 20)
    assert config.physical_memory() == 2 ** 20


def test_a_limit_on_the_process_group_or_one_above_it_counts(tmp_path):
    """Only the hierarchy's root was read: a limit on this process's own cgroup v1 group, or on a
    v2 group above its own, was missed. The lowest limit on the way up counts."""
    from predlab.config import _cgroup_memory_limit
    proc = tmp_path / "cgroup"

    def limit(lines, files):
        root = tmp_path / f"fs{len(list(tmp_path.iterdir()))}"
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        proc.write_text("".join(line + "\n" for line in lines))
        return _cgroup_memory_limit(str(root), str(proc))

    v2 = {"memory.max": "max", "kube/pod/memory.max": f"{2 ** 32}", "kube/pod/app/memory.max": "max"}
    assert limit(["0::/kube/pod/app"], v2) == 2 ** 32
    assert limit(["0::/kube/pod/app"], {**v2, "kube/pod/app/memory.max": f"{2 ** 30}"}) == 2 ** 30
    v1 = {"memory/memory.limit_in_bytes": str(2 ** 63 - 4096), "memory/docker/abc/memory.limit_in_bytes": f"{2 ** 31}"}
    assert limit(["12:cpu,cpuacct:/docker/abc", "4:memory:/docker/abc"], v1) == 2 ** 31
    assert limit(["3:cpu,memory:/docker/abc"], v1) == 2 ** 31               # controllers mounted together
    assert limit(["0::/a b /c:d"], {"a b /c:d/memory.max": f"{2 ** 29}"}) == 2 ** 29   # any name a group may have
    assert limit(["4:memory:/docker/abc"], {"memory/memory.limit_in_bytes": str(2 ** 63 - 4096)}) is None
    assert limit(["garbage", "0::/"], {}) is None


STEP_PEAK = PROC_STATUS + r"""
import sys, torch
from predlab import evaluate
from predlab.config import WorldConfig
from predlab.sim import World


E, N = int(sys.argv[1]), int(sys.argv[2])
world = World.random(E, WorldConfig(), generator=torch.Generator().manual_seed(0), n_boids=N)
before = status("VmHWM")
for _ in range(2):
    world.step(torch.zeros(E, 2))
evaluate.fastsim = None          # the torch World steps them, as on a GPU
counted = []
evaluate.memory_problem = lambda needs, *a, **k: counted.append(sum(b for _, b in needs))
evaluate.episodes_memory_problem(E, N)
print((status("VmHWM") - before) / E, counted[0] / E)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
@pytest.mark.parametrize("n", [50, 300])
def test_the_evaluation_check_counts_what_a_world_step_takes(n):
    """The check before a catch evaluation in the torch World counts what its step takes. When the world's
    neighbour product became float64, a step took 155 KB per 50-boid episode where 118 KB were
    counted, so evaluations the check let through could exhaust the memory; and once the separation
    mask left that product, 64 N^2 counted a 300-boid episode a third over what it takes, refusing
    evaluations that fit."""
    episodes = 300_000_000 // (48 * n * n)            # ~300 MB of pairwise terms: the process's own RSS is small beside it
    out = subprocess.run([sys.executable, "-c", STEP_PEAK, str(episodes), str(n)], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()
    taken, counted = float(out[0]), float(out[1])
    assert 0.85 * counted < taken <= counted, (taken, counted)


TRAINING_PEAK = PROC_STATUS + r"""
import sys, torch
from predlab import bench
from predlab.config import ModelConfig, TrainConfig, WorldConfig, _training_work
from predlab.data import rollout_chunk


N, B = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(2)
counted = [b for d, b in _training_work(TrainConfig(batch_size=B), WorldConfig(boids_max=N), ModelConfig())
           if d.startswith("a training step's activations")]
rows = rollout_chunk(8, WorldConfig(boids_min=N, boids_max=N, frames=B // 4), seed=0)
rows = rows.select((rows.n == N).nonzero().squeeze(1)[:B])
trainer = bench.make_trainer(rows, B)
small = rollout_chunk(8, WorldConfig(boids_min=2, boids_max=2, frames=B), seed=1)
trainer.train_epoch(small.select(torch.arange(B)))     # threads, kernels and optimizer state made
before = status("VmRSS")
trainer.train_epoch(rows)
print(len(rows), status("VmHWM") - before, counted[0])
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
@pytest.mark.parametrize("boids, batch", [(50, 256), (300, 128)])
def test_a_cpu_training_step_takes_what_its_check_counts(boids, batch):
    """The check counts a CPU training step by the attention kernel it runs: the fused kernel keeps no
    [T, T] weights, so the count grows with the flock, not its square, and must still hold what a
    step of two parts on 2 threads takes (the gradients beside the activations included)."""
    env = {k: v for k, v in os.environ.items() if k != "PREDLAB_CPU_ATTENTION"}     # the fused kernel, as by default
    out = subprocess.run([sys.executable, "-c", TRAINING_PEAK, str(boids), str(batch)], capture_output=True,
                         text=True, check=True, env=env)
    rows, taken, counted = map(int, out.stdout.split())      # 110-300 MB: the process's own noise is small beside it
    assert rows == batch
    assert 0.6 * counted < taken <= counted, (taken, counted)


DAGGER_PEAK = PROC_STATUS + r"""
import sys
from predlab.config import ModelConfig, TrainConfig, WorldConfig, _training_needs
from predlab.dagger import DaggerSource
from predlab.data import EpisodeGenerator


episodes, world = int(sys.argv[1]), WorldConfig()
source = DaggerSource(EpisodeGenerator(world, seed=0, progress=False), episodes, start=1000)
counted = sum(b for d, b in _training_needs(TrainConfig(train_episodes=episodes), world, ModelConfig())
              if d.startswith(("an epoch's training samples", "the copy of DAgger's", "DAgger's")))
source.generator.generate(1, stream=99)     # the compiled kernels loaded before the baseline
before = status("VmRSS")
for epoch in range(4):                      # from the third on, the buffer is full and drops the oldest
    source.for_epoch(epoch)
print(status("VmHWM") - before, counted)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
def test_dagger_epochs_take_what_the_check_counts_for_their_samples():
    """Once its buffer was full, a DAgger epoch copied the kept and the fresh samples together and then
    the kept rows out of that: about 10 epochs' samples at its peak, twice what the check counts, so a
    --train_episodes it let through could exhaust the memory at the third epoch."""
    out = subprocess.run([sys.executable, "-c", DAGGER_PEAK, "300"], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()
    taken, counted = int(out[0]), int(out[1])      # ~250 MB counted: the process's own noise is small beside it
    assert 0.5 * counted < taken <= 1.25 * counted, (taken, counted)


GENERATION_PEAK = PROC_STATUS + r"""
import sys
from predlab import data
from predlab.config import WorldConfig


counted = []
data.memory_problem = lambda needs, *a, **k: counted.append(sum(b for _, b in needs))
E, N, F = map(int, sys.argv[1:])
data.rollout_chunk(2, WorldConfig(boids_max=2, frames=2), 0, backend="torch")     # torch's own start-up
before = status("VmRSS")
data.rollout_chunk(E, WorldConfig(boids_min=N, boids_max=N, frames=F), 0, backend="torch")
print(status("VmHWM") - before, counted[-1])
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
@pytest.mark.parametrize("episodes, boids, frames", [(512, 200, 4), (512, 20, 200)])
def test_generation_in_the_torch_world_takes_what_its_check_counts(episodes, boids, frames):
    """The torch world (generation on a GPU) counted only the samples: a chunk of 512 200-boid
    episodes took 760 MB for 6 MB counted (each sub-world kept its own [E, N, N] planes), and the
    frames were copied four times over, so large flocks ran out of memory past the check."""
    out = subprocess.run([sys.executable, "-c", GENERATION_PEAK, str(episodes), str(boids), str(frames)],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    taken, counted = map(int, out.stdout.split())       # ~150-300 MB: the process's own noise is small beside it
    assert 0.5 * counted < taken <= counted, (taken, counted)


@pytest.mark.parametrize("boids", [1, 50, 300])
def test_the_training_check_counts_the_catch_evaluation_as_evaluate_does(boids, monkeypatch):
    """The trainer's check counted its catch evaluation at 64 N^2 an episode after the world's step took less
    (48 bytes a pair since separation's mask left the float64 product): a 300-boid run's check counted the
    evaluation a third over what evaluate, running the same episodes, counts and takes. On a CPU both count
    the episodes as the kernels step them, and the model's forwards that drive them."""
    from predlab import evaluate
    from predlab.config import ModelConfig, TrainConfig, WorldConfig, _training_work
    from predlab.model import TransformerPredator
    tc, wc = TrainConfig(eval_episodes=64), WorldConfig(boids_min=1, boids_max=boids)
    counted = dict(_training_work(tc, wc, ModelConfig()))["the catch evaluation's episodes (--eval_episodes x "
                                                          "--boids_max) and the model's forwards that drive them"]
    seen = []
    monkeypatch.setattr(evaluate, "memory_problem", lambda needs, *a, **k: seen.append(sum(b for _, b in needs)))
    evaluate.episodes_memory_problem(64, boids, "cpu", TransformerPredator())
    assert counted == seen[0]
    assert counted > evaluate.kernel_step_bytes(64, boids)       # the model's forwards too


def test_a_checkpoint_of_weights_saved_expanded_is_refused_by_its_memory_before_any_allocation(tmp_path, monkeypatch,
                                                                                                 capsys):
    """A tensor saved expanded (stride 0) is a few bytes on disk: a 22 KB checkpoint whose weights fit a
    model_config of d_model 200,000 stopped evaluate, export and train with the allocator's traceback,
    in the finite check of its weights. Each command now exits 2 naming the memory, and writes nothing."""
    import torch
    from predlab import evaluate, export, train
    from predlab.checkpoint import atomic_save, weight_shapes
    from predlab.config import ModelConfig
    cfg = ModelConfig(d_model=200000, ffn_hidden=8)      # a weight of 160 GB
    atomic_save({"format": "predlab-checkpoint", "version": 1, "model_config": vars(cfg),
                 "model": {k: torch.zeros(1).expand(*s) for k, s in weight_shapes(cfg).items()}}, tmp_path / "big.pt")
    assert (tmp_path / "big.pt").stat().st_size < 10 ** 6
    monkeypatch.setattr(config, "physical_memory", lambda: 2 ** 30)
    monkeypatch.chdir(tmp_path)
    for main, argv in ((evaluate.main, ["big.pt", "--episodes", "2", "--frames", "5"]),
                       (export.main, ["big.pt", "--out", "b.js", "--any-size"]),
                       (train.main, ["--epochs", "1", "--init_weights", "big.pt", *TINY]),
                       (train.main, ["--epochs", "1", "--resume", "big.pt", *TINY])):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2, argv
        assert "big.pt: the model's weights would need about" in err and "(d_model=200000, n_layers=3" in err
        assert "more than this machine's 1.0 GiB" in err and "Traceback" not in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt"]


def _work(tc, wc, mc=None, prefix="a training step"):
    from predlab.config import ModelConfig
    return next(b for d, b in config._training_work(tc, wc, mc or ModelConfig()) if d.startswith(prefix))


def test_threads_past_the_cpus_are_counted_as_the_threads_that_run(eight_gib, monkeypatch):
    """The trainer runs --threads 128 on the CPUs there are, but its check counted the fused kernel's buffers
    for 128 threads: 25.4 GiB at 5,000 boids, refused and blamed on --batch_size x --boids_max, where the same
    run with --threads 2 passed at 1.8."""
    from predlab.config import ModelConfig, training_memory
    monkeypatch.setattr("predlab.data.usable_cpus", lambda: 2)
    monkeypatch.setattr("predlab.train.usable_cpus", lambda: 2)
    tc = TrainConfig(threads=128, batch_size=32, train_episodes=2, val_episodes=1, eval_every=0)
    wc = WorldConfig(boids_min=5000, boids_max=5000, frames=16)
    assert training_memory(tc, wc, ModelConfig()) is None
    assert config._training_work(tc, wc, ModelConfig()) == config._training_work(
        dataclasses.replace(tc, threads=2), wc, ModelConfig())


def test_parts_past_the_threads_are_counted_part_by_part(eight_gib, monkeypatch):
    """Each part of a split batch runs the fused kernel with buffers of its own, side by side: --cpu_split 16
    at 4,000 boids took 2.4 GB where 0.84 was counted for 2 threads' buffers. So does validation, a batch a
    part: 3.5 GB at 300 boids, none of it counted."""
    from predlab.config import ModelConfig, training_memory
    for module in ("predlab.data", "predlab.train"):      # the 2 threads on a runner of 1 CPU too
        monkeypatch.setattr(f"{module}.usable_cpus", lambda: 2)
    wc = WorldConfig(boids_min=4000, boids_max=4000, frames=16)
    tc = TrainConfig(batch_size=16, threads=2, train_episodes=1, val_episodes=1, eval_every=0, dagger=False)
    assert _work(dataclasses.replace(tc, cpu_split=16), wc) - _work(tc, wc) == 14 * 3 * 4 * 4003 * 4019
    assert training_memory(dataclasses.replace(tc, cpu_split=2), wc, ModelConfig()) is None
    message = training_memory(dataclasses.replace(tc, cpu_split=16), dataclasses.replace(wc, boids_max=8000),
                              ModelConfig())
    assert ("a training step's activations (--batch_size x --boids_max) in 16 parts side by side (--cpu_split)"
            in message)
    val = lambda split: _work(TrainConfig(cpu_split=split, threads=2), WorldConfig(boids_max=300), prefix="validation")
    assert val(16) == 8 * val(2)


SPLIT_PEAK = PROC_STATUS + r"""
import sys, torch
from predlab import bench
from predlab.config import ModelConfig, TrainConfig, WorldConfig, _training_work
from predlab.data import SampleSet


N, B, split, S, what = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)


def rows(S, n):
    return SampleSet(context=torch.full((S, 2), 0.8), predator=torch.zeros(S, 2),
                     boids=(torch.rand(S, n, 4, generator=g) - 0.5) * 0.5, n=torch.full((S,), n, dtype=torch.long),
                     target=torch.rand(S, 2, generator=g) * 2 - 1)


tc = TrainConfig(batch_size=B, cpu_split=split, threads=2, val_episodes=1)
counted = [b for d, b in _training_work(tc, WorldConfig(boids_max=N, frames=S), ModelConfig()) if d.startswith(what)]
data = rows(S, N)
trainer = bench.make_trainer(data, B, cpu_split=split)
trainer.train_epoch(rows(B, 2))                  # threads, kernels and optimizer state made
trainer.validate(rows(4 * B, 2))
before = status("VmRSS")
trainer.train_epoch(data) if what == "a training step" else trainer.validate(data)
print(status("VmHWM") - before, counted[0])
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
@pytest.mark.parametrize("what, boids, batch, split, samples", [("a training step", 1000, 8, 8, 8),
                                                                ("validation's forwards", 300, 32, 4, 512)])
def test_parts_side_by_side_take_what_the_check_counts(what, boids, batch, split, samples):
    """A training step of 8 parts, each a 1,000-boid row with the fused kernel's buffers of its own, took 121
    MB where 91 were counted for 2 threads' buffers; validation in 4 parts side by side took 146 MB where
    none of it was counted, the training step's 92 being the largest phase."""
    env = {k: v for k, v in os.environ.items() if k != "PREDLAB_CPU_ATTENTION"}     # the fused kernel, as by default
    out = subprocess.run([sys.executable, "-c", SPLIT_PEAK, str(boids), str(batch), str(split), str(samples), what],
                         capture_output=True, text=True, check=True, env=env)
    taken, counted = map(int, out.stdout.split())      # 120-150 MB: the process's own noise is small beside it
    assert 0.5 * counted < taken <= counted, (taken, counted)


VALIDATION_SET_PEAK = PROC_STATUS + r"""
import sys, torch
from predlab import bench
from predlab.data import SampleSet
from predlab.train import SupervisedTrainer


S, N = int(sys.argv[1]), int(sys.argv[2])
g = torch.Generator().manual_seed(0)


def rows(S, n):      # made in place: no temporaries, whose peak would count in what follows
    return SampleSet(context=torch.full((S, 2), 0.8), predator=torch.zeros(S, 2),
                     boids=torch.rand(S, n, 4, generator=g).sub_(0.5).mul_(0.5),
                     n=torch.randint(1, n + 1, (S,), generator=g), target=torch.rand(S, 2, generator=g).mul_(2).sub_(1))


small = rows(512, N)
trainer = bench.make_trainer(small, 256)
trainer.validate(small)                       # threads and kernels made
val = rows(S, N)
size = sum(t.numel() * t.element_size() for t in (val.context, val.predator, val.boids, val.n, val.target))
try:        # the peak so far set to the memory now: an earlier one (the imports') read as this step's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
before = status("VmRSS")
trainer = SupervisedTrainer(trainer.model, small, val, batch_size=256, seed=0)      # checks the set
trainer.validate()
print(status("VmHWM") - before, size)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
def test_a_large_validation_set_is_checked_and_validated_without_copies_of_it():
    """The check counts a validation set once. Its finite test made a copy and a mask beside it (1.7x the
    set), and validation gathered the whole set in its batches' order (1.1x more): 2.6 GB taken where a
    5,000-episode set was counted 0.8. Both now go a slice or a batch at a time."""
    out = subprocess.run([sys.executable, "-c", VALIDATION_SET_PEAK, "100000", "50"], capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    taken, size = map(int, out.stdout.split())       # an 83 MB set: its forwards take 8-45 MB beside it
    assert taken < 0.9 * size, (taken, size)         # the copies took 1.2-1.23x


def test_a_cpu_evaluation_is_counted_as_its_kernels_step_it_and_its_model_drives_it(one_gib, monkeypatch):
    """On a CPU, rollout steps its episodes in the numba kernels, which make no [E, N, N] planes: 640
    episodes of 1,000 boids took 80 MB and were refused for 29.9 GiB. The model's forwards were not counted
    at all: a model of 16 heads (the sliced kernel, a slice of 16 rows of [T, T] weights) took 1.1 GB for
    one episode of 3,000 boids, counted 0.4."""
    from predlab.evaluate import episodes_memory_problem, rollout
    from predlab.model import TransformerPredator
    assert episodes_memory_problem(640, 1000) is None
    many_heads = TransformerPredator(d_model=64, n_heads=16)
    assert episodes_memory_problem(1, 3000) is None
    assert "the model's forwards over 3003 tokens" in episodes_memory_problem(1, 3000, "cpu", many_heads)
    with pytest.raises(ValueError, match="the model's forwards over 3003 tokens .* evaluate fewer episodes or boids"):
        rollout(many_heads, episodes=1, frames=1, world_config=WorldConfig(boids_min=3000, boids_max=3000))
    monkeypatch.setattr("predlab.evaluate.fastsim", None)      # the torch World steps them, as on a GPU
    assert "(their number x boids squared)" in episodes_memory_problem(640, 1000)


KERNEL_ROLLOUT_PEAK = PROC_STATUS + r"""
import sys
from predlab import evaluate
from predlab.config import WorldConfig


E, N = int(sys.argv[1]), int(sys.argv[2])
evaluate.rollout("teacher", episodes=2, frames=2, world_config=WorldConfig(boids_min=2, boids_max=2))
before = status("VmRSS")
evaluate.rollout("teacher", episodes=E, frames=4, world_config=WorldConfig(boids_min=N, boids_max=N))
print(status("VmHWM") - before, evaluate.rollout_step_bytes(E, N))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
@pytest.mark.parametrize("episodes, boids", [(5000, 50), (640, 1000)])
def test_a_rollout_in_the_kernels_takes_what_its_check_counts(episodes, boids):
    out = subprocess.run([sys.executable, "-c", KERNEL_ROLLOUT_PEAK, str(episodes), str(boids)], capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    taken, counted = map(int, out.stdout.split())       # 40-60 MB
    assert 0.4 * counted < taken <= counted, (taken, counted)


def test_predict_counts_the_forwards_activations_not_only_its_attention(monkeypatch):
    """predict counted one layer's attention alone: 2,000 flocks of 300 boids were counted 1 MiB and took
    1.6 GB (a forward holds [B, T, .] terms of its blocks), so a list of 25,000 could exhaust the memory
    past the check."""
    from predlab.data import InputError
    from predlab.model import TransformerPredator
    monkeypatch.setattr(config, "physical_memory", lambda: 256 * 2 ** 20)
    with pytest.raises(InputError, match=r"300 sample\(s\) of 300 boids would need about .*a forward over 303 tokens"):
        TransformerPredator().predict([flock(300)] * 300)
    assert TransformerPredator().predict([flock(300)] * 20).shape == (20, 2)


PREDICT_PEAK = PROC_STATUS + r"""
import sys, torch
from predlab import model as M
from predlab.data import BOID_KEYS


B, N = int(sys.argv[1]), int(sys.argv[2])
g = torch.Generator().manual_seed(0)
flock = {"context": {"canvasWidth": 0.8, "canvasHeight": 0.6}, "predator": {"velX": 0.0, "velY": 0.0},
         "boids": [dict(zip(BOID_KEYS, ((torch.rand(4, generator=g) - 0.5) * 0.5).tolist())) for _ in range(N)]}
counted = []
check = M.memory_problem
M.memory_problem = lambda needs, *a, **k: counted.append(sum(b for _, b in needs)) or check(needs, *a, **k)
m = M.TransformerPredator()
m.predict([flock] * 2)
before = status("VmRSS")
m.predict([flock] * B)
print(status("VmHWM") - before, counted[-1])
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
def test_predict_takes_what_its_check_counts():
    out = subprocess.run([sys.executable, "-c", PREDICT_PEAK, "200", "300"], capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items() if k != "PREDLAB_CPU_ATTENTION"})
    taken, counted = map(int, out.stdout.split())       # 180-200 MB
    assert 0.4 * counted < taken <= counted, (taken, counted)


def test_torchs_sdpa_on_a_cpu_keeps_no_square_but_the_sliced_kernel_of_split_parts_does(eight_gib, monkeypatch):
    """torch's CPU SDPA works in blocks of keys (flash attention): a step of 16-wide heads unsplit on 2
    threads at 2,000 boids and batch 64 took 1.1 GB and was refused for 24.3 GiB of weights. Split in parts,
    each on one thread, the same heads take the sliced kernel, which keeps them: still counted."""
    from predlab import model
    from predlab.config import ModelConfig, training_memory
    monkeypatch.setattr("predlab.data.usable_cpus", lambda: 2)
    monkeypatch.setattr("predlab.train.usable_cpus", lambda: 2)
    tc = TrainConfig(batch_size=64, threads=2, train_episodes=2, val_episodes=1, eval_every=0)
    wc, wide = WorldConfig(boids_min=2000, boids_max=2000, frames=32), ModelConfig(d_model=64)
    assert training_memory(dataclasses.replace(tc, cpu_split=1), wc, wide) is None
    assert "--boids_max squared" in training_memory(tc, wc, wide)                    # 2 parts: the sliced kernel
    monkeypatch.setattr(model, "CPU_ATTENTION", "sdpa")
    assert training_memory(tc, wc, ModelConfig()) is None


def test_on_a_gpu_daggers_student_is_counted_on_the_host_where_it_drives(monkeypatch):
    """DAgger's episodes are generated on the host, its student's forwards too, on a GPU run as on a CPU one:
    counted as GPU forwards (one chunk of 256 flocks, every [T, T] weight), a run of 2,000 boids that fit a
    24 GiB card was refused for 33.2 GiB of them."""
    import torch
    from predlab.config import ModelConfig, training_memory

    class Props:
        total_memory = 24 * 2 ** 30
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "a test GPU")
    monkeypatch.setattr(config, "physical_memory", lambda: 16 * 2 ** 30)
    tc = TrainConfig(batch_size=16, train_episodes=300, val_episodes=4, eval_episodes=16)
    wc = WorldConfig(boids_min=2000, boids_max=2000, frames=20)
    assert training_memory(tc, wc, ModelConfig(), torch.device("cuda")) is None
    needs = dict(config._training_needs(tc, wc, ModelConfig(), torch.device("cuda")))
    student = needs["DAgger's student forwards (--train_episodes x --boids_max)"]
    assert student == dict(config._training_work(tc, wc, ModelConfig()))[
        "DAgger's student forwards (--train_episodes x --boids_max)"] < 2 ** 30      # as on a CPU run
    monkeypatch.setattr(config, "physical_memory", lambda: 2 ** 26)
    assert "DAgger's student forwards" in training_memory(tc, wc, ModelConfig(), torch.device("cuda"))   # the host's


def test_the_run_threads_and_the_batch_size_as_given_decide_the_parts_counted(monkeypatch):
    """The driving forwards were counted at the threads set when the check ran, before the run set --threads;
    validation's parts with the batch cut to the samples trained on, where validation splits by the batch
    size as given (16 parts counted, 64 run)."""
    import torch
    from predlab.config import ModelConfig
    monkeypatch.setattr("predlab.data.usable_cpus", lambda: 2)
    monkeypatch.setattr("predlab.train.usable_cpus", lambda: 2)
    tc = TrainConfig(threads=2, batch_size=16, train_episodes=200, val_episodes=2, eval_episodes=64)
    wc = WorldConfig(boids_min=3000, boids_max=3000)
    counts = []
    for threads in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        counts.append(config._training_work(tc, wc, ModelConfig()))
    assert counts[0] == counts[1]
    tc = TrainConfig(batch_size=256, cpu_split=64, threads=2, train_episodes=1, val_episodes=300, dagger=False,
                     eval_every=0)
    wc = WorldConfig(boids_min=500, boids_max=500, frames=16)
    val = next(d for d, b in config._training_work(tc, wc, ModelConfig()) if d.startswith("validation's"))
    assert val.endswith("in 64 parts side by side (--cpu_split)")


WORKERS_PEAK = r"""
import re
import sys
from predlab import data
from predlab.config import WorldConfig

workers = min(2, data.usable_cpus())
with data.EpisodeGenerator(WorldConfig(), seed=0, num_workers=workers) as gen:
    gen.generate(1024, 1)      # a chunk of 512 episodes for each worker, where there are 2
    taken = []
    for p in gen._pool._pool:
        with open(f"/proc/{p.pid}/status") as f:
            taken.append(int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024)
print(sum(taken), data.workers_memory(workers, 1024, WorldConfig())[1])
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
def test_the_worker_processes_take_what_their_count_says():
    """Each worker is a process with its own Python, torch and numba, and builds a chunk's samples before it
    sends them: not counted, 2 workers took 1.0 GB, and 8 on a laptop would take some 4 GB past the check."""
    out = subprocess.run([sys.executable, "-c", WORKERS_PEAK], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    taken, counted = map(int, out.stdout.split())       # 503 MB a worker, for 564 MiB counted
    assert 0.6 * counted < taken <= counted, (taken, counted)


def test_the_worker_processes_are_counted_on_the_host_by_training_and_generation(monkeypatch):
    import torch
    from predlab.config import ModelConfig, training_memory
    from predlab.data import EpisodeGenerator
    monkeypatch.setattr(config, "physical_memory", lambda: 2 ** 30)
    monkeypatch.setattr("predlab.data.usable_cpus", lambda: 4)
    tc = TrainConfig(num_workers=4)
    assert training_memory(dataclasses.replace(tc, num_workers=0), WorldConfig(), ModelConfig()) is None
    assert "the --num_workers processes (4)" in training_memory(tc, WorldConfig(), ModelConfig())
    # 8 workers on 200 episodes: one chunk of them, so one worker builds samples (refused on 16 GiB at 1,000 boids
    # when each was counted with a chunk: 16.8 GiB of workers)
    from predlab.data import CHUNK_EPISODES, WORKER_BYTES
    monkeypatch.setattr("predlab.data.usable_cpus", lambda: 8)
    wc = WorldConfig(boids_max=1000)
    needs = dict(config._training_needs(TrainConfig(num_workers=8, train_episodes=200), wc, ModelConfig()))
    chunk = 200 * wc.frames * config.sample_bytes(1000)
    assert needs["the --num_workers processes (8), each with its own Python and torch and a chunk of episodes' samples "
                 "it builds and sends"] == 8 * WORKER_BYTES + 3 * chunk
    dagger = dict(config._training_work(TrainConfig(num_workers=8, train_episodes=200), wc, ModelConfig()))
    one = dict(config._training_work(TrainConfig(num_workers=1, train_episodes=200), wc, ModelConfig()))
    assert dagger["DAgger's student forwards (--train_episodes x --boids_max)"] == \
        one["DAgger's student forwards (--train_episodes x --boids_max)"]         # one worker drives, the others idle
    assert CHUNK_EPISODES == 512
    monkeypatch.setattr("predlab.data.usable_cpus", lambda: 1)          # capped, as the run caps them
    assert training_memory(tc, WorldConfig(), ModelConfig()) is None

    class Props:      # a GPU run generates on the host too: the workers count there, not against the card
        total_memory = 2 ** 30
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "a test GPU")
    monkeypatch.setattr("predlab.data.usable_cpus", lambda: 4)
    assert "1.0 GiB" in training_memory(tc, WorldConfig(), ModelConfig(), torch.device("cuda"))
    assert "of a test GPU" not in training_memory(tc, WorldConfig(), ModelConfig(), torch.device("cuda"))
    monkeypatch.setattr(config, "physical_memory", lambda: 16 * 2 ** 30)
    assert training_memory(tc, WorldConfig(), ModelConfig(), torch.device("cuda")) is None
    monkeypatch.setattr(config, "physical_memory", lambda: 2 ** 30)
    with EpisodeGenerator(WorldConfig(), num_workers=4) as gen:     # refused before any worker starts
        monkeypatch.setattr(gen, "_get_pool", lambda: pytest.fail("started the workers"))
        with pytest.raises(ValueError, match=r"4 worker process\(es\) \(num_workers\)"):
            gen.generate(100, 1)


DAGGER_TRAINING_PEAK = PROC_STATUS + r"""
import sys
import warnings

import torch

from predlab.config import ModelConfig, TrainConfig, WorldConfig, _training_needs
from predlab.dagger import DaggerSource
from predlab.data import EpisodeGenerator
from predlab.model import TransformerPredator
from predlab.train import SupervisedTrainer

warnings.simplefilter("ignore")
episodes, epochs, world = int(sys.argv[1]), int(sys.argv[2]), WorldConfig()
tc = TrainConfig(train_episodes=episodes, dagger_buffer=10 ** 8, epochs=epochs)
counted = sum(b for d, b in _training_needs(tc, world, ModelConfig())
              if d.startswith(("an epoch's training samples", "the copy of DAgger's", "DAgger's")))
source = DaggerSource(EpisodeGenerator(world, seed=0, progress=False), episodes, start=1000, buffer=10 ** 8)
trainer = SupervisedTrainer(TransformerPredator(), source, source.generator.generate(1, stream=98), device="cpu",
                            world_config=world)
before = status("VmRSS")
for epoch in range(epochs):                 # a buffer that keeps every epoch's samples
    data = source.for_epoch(epoch)
next(trainer._batches(data, shuffle=True, generator=torch.Generator().manual_seed(0)))   # the epoch's copy
print(status("VmHWM") - before, counted)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
def test_a_large_dagger_buffer_is_counted_with_the_copy_the_trainer_makes_of_it():
    """The trainer copies the samples it trains on in the epoch's order: under DAgger, the whole buffer. The
    check counted that copy as two epochs' fresh samples, so a --dagger_buffer that keeps every epoch's took
    615 MB at the sixth epoch where 449 MB were counted, and nearly twice what was counted by the thirtieth."""
    out = subprocess.run([sys.executable, "-c", DAGGER_TRAINING_PEAK, "300", "6"], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()
    taken, counted = int(out[0]), int(out[1])
    assert 0.5 * counted < taken <= 1.1 * counted, (taken, counted)


def test_on_a_gpu_with_cuda_graphs_the_graphs_pool_is_counted_beside_the_eager_work(monkeypatch):
    """The captured steps' activations stay in the CUDA graphs' private pool while the epoch's last batch (the
    widest flocks) runs eagerly and validation and the catch evaluation run: those allocate beside the pool, and
    the check counted one phase at a time, as on a CPU. Batch 16384 took 12 GiB counted on a 16 GiB card."""
    import torch
    from predlab.config import GRAPH_POOL, ModelConfig, training_memory

    class Props:
        total_memory = 16 * 2 ** 30
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "a test GPU")
    monkeypatch.setattr(config, "physical_memory", lambda: 2 ** 40)
    cuda, wc, mc = torch.device("cuda"), WorldConfig(), ModelConfig()

    def needs(**kw):
        return dict(config._training_needs(TrainConfig(**kw), wc, mc, cuda))

    def step(rows, **kw):
        return config._training_work(TrainConfig(batch_size=rows, **kw), wc, mc, cuda)[0][1]

    # DAgger trains on 2 epochs of 100 episodes x 200 frames, 40,000 samples: the last batch has 16,383 rows at most
    graphed, eager = needs(batch_size=16384), needs(batch_size=16384, cuda_graphs=False)
    pool = next(b for d, b in graphed.items() if d.startswith(GRAPH_POOL))
    assert pool == step(16384)
    assert sum(graphed.values()) - sum(eager.values()) == pool + step(16383) - step(16384)
    assert "CUDA graphs' memory pool" in training_memory(TrainConfig(batch_size=16384), wc, mc, cuda)
    assert training_memory(TrainConfig(batch_size=16384, cuda_graphs=False), wc, mc, cuda) is None
    # a last batch of 10,000 rows at most is counted at its size
    graphed, eager = needs(batch_size=30000), needs(batch_size=30000, cuda_graphs=False)
    assert sum(graphed.values()) - sum(eager.values()) == step(10000)
    # no full batch, no graph: 1 episode is 200 samples, and without DAgger the run trains on them alone
    assert needs(batch_size=256, train_episodes=1, dagger=False) == \
        needs(batch_size=256, train_episodes=1, dagger=False, cuda_graphs=False)
    # the host's check and a CPU run: unchanged
    cpu = TrainConfig(batch_size=16384)
    assert config._training_needs(cpu, wc, mc) == config._training_needs(dataclasses.replace(cpu, cuda_graphs=False),
                                                                         wc, mc)


def test_predict_on_a_gpu_checks_the_gpus_memory_not_the_hosts(monkeypatch):
    """predict counted a GPU model's forward against the host's memory: a host with less than the GPU
    refused batches that fit there, and a large host let through ones that did not."""
    import torch
    from predlab.data import InputError
    from predlab.model import TransformerPredator

    class Props:
        total_memory = 2 ** 30
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "a test GPU")
    on_gpu = TransformerPredator()
    weight = torch.empty(1)
    fake = type("OnGpu", (), {"device": torch.device("cuda"), "dtype": weight.dtype})()
    on_gpu.parameters = lambda recurse=True: iter([fake])         # what predict reads of the model's weights
    sample = flock(20000)
    monkeypatch.setattr(config, "physical_memory", lambda: 2 ** 40)
    with pytest.raises(InputError, match=r"more than the 1.0 GiB of a test GPU .* predict fewer boids at a time"):
        on_gpu.predict(sample)
    Props.total_memory = 2 ** 40
    monkeypatch.setattr(config, "physical_memory", lambda: 2 ** 30)
    with pytest.raises(Exception) as moved:     # past the check, to the copy onto a GPU this machine lacks
        on_gpu.predict(sample)
    assert "of memory" not in str(moved.value)
