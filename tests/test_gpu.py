"""The CUDA paths: the model, CUDA-graphed training, bf16 autocast, TF32, GPU episodes and the CLI on a GPU.

Every test here needs a CUDA GPU and skips without one.
"""
from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from predlab import checkpoint as ck
from predlab.config import WorldConfig
from predlab.data import SampleSet, collate, rollout_chunk
from predlab.model import TransformerPredator
from predlab.train import SupervisedTrainer

from conftest import random_sample, randomize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
WORLD = WorldConfig(frames=40, boids_max=30)


@pytest.fixture(autouse=True)
def strict_float32():
    """float32 products in full float32 (no TF32) while a test runs."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def data() -> SampleSet:
    return rollout_chunk(64, WORLD, seed=5)


def _trainer(data, dropout=0.0, seed=0, **kw) -> SupervisedTrainer:
    torch.manual_seed(seed)
    model = TransformerPredator(dropout=dropout)
    return SupervisedTrainer(model, data, data, batch_size=kw.pop("batch_size", 128), device="cuda", seed=seed, **kw)


def _needs_triton():
    """Triton kernels build their launchers with a C compiler on first use: skip without either."""
    from predlab.model import _can_compile
    if not _can_compile():
        pytest.skip("needs Triton and a C compiler (gcc, clang or $CC) for this GPU")


def test_model_on_the_gpu_matches_the_cpu():
    """SDPA on the GPU and the sliced CPU kernel: the same actions and gradients for a padded batch
    (0 to 40 boids), the [CLS]-only last block included."""
    rng = random.Random(0)
    batch = collate([random_sample(rng, n) for n in (0, 1, 7, 40, 13, 40, 2)])
    target = torch.rand(len(batch["context"]), 2) * 2 - 1
    out = {}
    for device in ("cpu", "cuda"):
        m = randomize(TransformerPredator(dropout=0.0), seed=1).to(device).train()
        b = {k: v.to(device) for k, v in batch.items()}
        y = m(b)
        torch.nn.functional.mse_loss(y, target.to(device)).backward()
        out[device] = [y.detach().cpu()] + [p.grad.cpu() for p in m.parameters()]
    for a, b in zip(out["cpu"], out["cuda"]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("T", [29, 1])
def test_compiled_layer_norm_matches_torch(T):
    """The GPU's compiled LayerNorm (training passes) computes torch's, forward and backward,
    for full rows and for the [CLS]-only block's single token."""
    from predlab import model as M
    ln = torch.nn.LayerNorm(48, eps=1e-6).cuda()
    with torch.no_grad():
        ln.weight.normal_(1, 0.3)
        ln.bias.normal_(0, 0.3)
    x = torch.randn(300, T, 48, device="cuda") * 3 + 1
    dy = torch.randn_like(x)
    grads = {}
    for name, fn in (("torch", ln), ("compiled", lambda t: M.layer_norm(ln, t))):
        xs = x.clone().requires_grad_(True)
        ln.zero_grad()
        y = fn(xs)
        y.backward(dy)
        grads[name] = [y.detach(), xs.grad, ln.weight.grad.clone(), ln.bias.grad.clone()]
    if M.GPU_LAYER_NORM == "torch":
        pytest.skip("no Triton or C compiler here: LayerNorm stays torch's")
    assert M._compiled_layer_norm is not None
    for a, b in zip(grads["torch"], grads["compiled"]):
        assert torch.allclose(a, b, rtol=1e-4, atol=2e-5), (a - b).abs().max()


def test_graphed_training_equals_eager_training(data):
    """CUDA graphs change how a step is launched, not what it computes: two epochs give the same
    losses and weights as launching every kernel, and every full batch shape got its graph."""
    runs = {}
    for graphs in (False, True):
        t = _trainer(data, cuda_graphs=graphs)
        losses = [t.train_epoch(data)["train_loss"] for _ in range(2)]
        runs[graphs] = (losses, [p.detach().cpu() for p in t.model.parameters()], t)
    (l0, p0, _), (l1, p1, t1) = runs[False], runs[True]
    assert len(t1._graphs) >= 2 and all(key[0][0] == 128 for key in t1._graphs), list(t1._graphs)
    assert l0 == pytest.approx(l1, rel=1e-5)
    for a, b in zip(p0, p1):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()


def test_graphed_training_follows_a_rate_written_into_the_optimizer(data):
    """A float written into param_groups replaced the tensor the captured steps read, and they ran at its last
    rate for the rest of the run; the eager steps ran at the schedule's."""
    from predlab.train import Callback

    class Halve(Callback):
        def on_batch_end(self, trainer, step, loss):
            for g in trainer.optimizer.param_groups:
                g["lr"] = float(g["lr"]) / 2       # overwritten by the schedule before the next step
    runs = []
    for graphs in (False, True):
        t = _trainer(data, cuda_graphs=graphs, callbacks=[Halve()])
        t.scheduler.total, t.scheduler.warmup = 2, 0.0
        losses = [t.train_epoch(data)["train_loss"] for _ in range(2)]
        runs.append((losses, [p.detach().cpu() for p in t.model.parameters()]))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()


def test_a_trainer_takes_sample_sets_held_on_the_gpu(data):
    """batch_indices sorted a CPU order by the GPU's counts: a trainer given sets moved to the GPU failed with
    'indices should be either on cpu or on the same device'."""
    gpu = data.to_device("cuda")
    assert all(not b.is_cuda for b in gpu.batch_indices(32))
    t, ref = _trainer(gpu), _trainer(data)
    assert t.train_epoch(gpu)["train_loss"] == pytest.approx(ref.train_epoch(data)["train_loss"], rel=1e-5)
    assert t.validate(gpu) == pytest.approx(ref.validate(data), rel=1e-5)


def test_a_cpu_student_drives_gpu_episodes():
    """rollout_chunk converted a student's actions to the episodes' dtype but not their device: a plain callable
    answering on the CPU failed on GPU episodes, where evaluate.rollout takes it."""
    def student(obs):
        return torch.zeros(len(obs["context"]), 2)
    gpu = rollout_chunk(6, WORLD, seed=3, student=student, beta=0.0, device="cuda")
    cpu = rollout_chunk(6, WORLD, seed=3, student=student, beta=0.0, device="cpu", backend="torch")
    assert len(gpu) == len(cpu) > 0


def test_fused_attention_matches_math_on_the_gpu():
    """predlab.gpu_attention's Triton kernel, compiled for this GPU: the plain-op attention's
    outputs and gradients (full blocks of 3 to 53 tokens, bf16 inputs)."""
    _needs_triton()
    from test_gpu_attention import CASES, run_check, tolerance
    for r in run_check("cuda", CASES, interpret=False):
        assert r["rel_err"] < tolerance(r["case"], compiled=True), r


def test_fused_geglu_matches_the_maths_on_the_gpu():
    """predlab.gpu_geglu's Triton kernel, compiled for this GPU: gelu_tanh(g) * u and its
    gradients within float32 rounding of float64 maths (bf16's for bf16 inputs)."""
    _needs_triton()
    from test_gpu_geglu import check, far_gates_check, run_check
    check(run_check("cuda", interpret=False))
    far_gates_check("cuda", interpret=False)


@pytest.mark.parametrize("switch,default", [("GPU_ATTENTION", "math"), ("GPU_GEGLU", "torch")])
def test_training_with_a_fused_kernel_equals_the_default(data, monkeypatch, switch, default):
    """PREDLAB_GPU_ATTENTION=triton, and PREDLAB_GPU_GEGLU=triton, compute what the default plain
    ops compute: the same actions and parameter gradients for a padded batch (0 to 40 boids),
    and the same losses over two graphed epochs. (Weights after AdamW steps are not compared:
    its first steps move every weight by about the learning rate whatever the gradient's size,
    so rounding-level differences in a near-zero gradient show up there at full size.)"""
    _needs_triton()
    from predlab import model as M
    rng = random.Random(0)
    batch = {k: v.cuda() for k, v in collate([random_sample(rng, n) for n in (0, 1, 7, 40, 13, 2)]).items()}
    target = torch.rand(len(batch["context"]), 2, device="cuda") * 2 - 1
    grads, losses = {}, {}
    for kernel in (default, "triton"):
        monkeypatch.setattr(M, switch, kernel)
        m = randomize(TransformerPredator(dropout=0.0), seed=1).cuda().train()
        y = m(batch)
        torch.nn.functional.mse_loss(y, target).backward()
        grads[kernel] = [y.detach()] + [p.grad for p in m.parameters()]
        t = _trainer(data, cuda_graphs=True)
        losses[kernel] = [t.train_epoch(data)["train_loss"] for _ in range(2)]
    for a, b in zip(grads["triton"], grads[default]):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max().clamp_min(1e-12), (a - b).abs().max()
    assert losses["triton"] == pytest.approx(losses[default], rel=1e-3)


def test_graphed_training_keeps_no_autograd_nodes_across_streams():
    """Captures of several batch shapes and an eager last batch in one epoch, in a fresh process
    (torch warns once a process): no warning that a parameter's AccumulateGrad node, kept alive
    from a capture on another stream, served a later step."""
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from predlab.config import WorldConfig\nfrom predlab.data import rollout_chunk\n"
            "from predlab.model import TransformerPredator\nfrom predlab.train import SupervisedTrainer\n"
            "d = rollout_chunk(48, WorldConfig(frames=40, boids_max=30), seed=5)\n"
            "t = SupervisedTrainer(TransformerPredator(dropout=0.0), d, d, batch_size=100, device='cuda')\n"
            "for _ in range(2): t.train_epoch(d)\nprint(len(t._graphs), len(d) % 100)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
)
    assert r.returncode == 0, r.stderr
    graphs, last = map(int, r.stdout.split())
    assert graphs >= 2 and last > 0
    assert "AccumulateGrad" not in r.stderr, r.stderr[-2000:]


def test_graphed_training_with_dropout_learns(data):
    t = _trainer(data, dropout=0.1, cuda_graphs=True, batch_size=64)
    before = t.validate()
    for _ in range(4):
        t.train_epoch(data)
    assert t.validate() < 0.7 * before
    for p in t.model.parameters():
        assert torch.isfinite(p).all()


def test_graphed_training_with_dropout_draws_what_eager_steps_draw(data):
    """With dropout, graphed steps draw the masks eager steps draw: the capture's warm-up passes,
    which draw masks too, leave the CUDA generator as they found it. Otherwise the replays' masks
    depended on how many shapes had been captured before, so an epoch repeated after an undo (whose
    shapes were captured already) or after a resume (which captures them all again) drew other
    masks than the uninterrupted run."""
    from predlab.train import Callback

    class CutOnce(Callback):
        done = False

        def on_batch_end(self, trainer, step, loss):
            if trainer.epoch == 0 and step == 2 and not self.done:     # shapes captured, then undone
                CutOnce.done = True
                raise KeyboardInterrupt

    runs = {}
    for name, graphs, cbs in (("eager", False, []), ("graphed", True, []), ("cut", True, [CutOnce()])):
        t = _trainer(data, dropout=0.1, cuda_graphs=graphs, callbacks=cbs)
        if cbs:
            with pytest.raises(KeyboardInterrupt):
                t.train(2)
            assert t.epoch == 0 and t._graphs
        t.train(2)
        runs[name] = ([h["train_loss"] for h in t.history], [p.detach().cpu() for p in t.model.parameters()])
    for name in ("graphed", "cut"):
        assert runs[name][0] == pytest.approx(runs["eager"][0], rel=1e-5), name
        for a, b in zip(runs["eager"][1], runs[name][1]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (name, (a - b).abs().max())


def test_graphed_training_goes_on_after_set_schedule_and_load(data, tmp_path):
    """set_schedule and load_checkpoint drop a trainer's captured steps; its next epochs capture
    them again (in a fresh memory pool, on the trainer's one side stream) and train as launching
    every kernel does, at the new learning rate and weight decay."""
    runs = {}
    for graphs in (False, True):
        t = _trainer(data, cuda_graphs=graphs)
        t.train_epoch(data)
        t.epoch += 1
        path = t.save_checkpoint(tmp_path / f"g{int(graphs)}.pt")
        t.set_schedule(learning_rate=5e-4, weight_decay=0.05)
        logs = [t.train_epoch(data)]
        t.load_checkpoint(path)
        logs.append(t.train_epoch(data))
        runs[graphs] = ([(r["train_loss"], r["lr"]) for r in logs], [p.detach().cpu() for p in t.model.parameters()])
        if graphs:
            assert t._graphs and t._graph_stream is not None
    (r0, p0), (r1, p1) = runs[False], runs[True]
    for (l0, lr0), (l1, lr1) in zip(r0, r1):
        assert l1 == pytest.approx(l0, rel=1e-5) and lr1 == pytest.approx(lr0, rel=1e-6)
    for a, b in zip(p0, p1):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()


def test_graphed_training_follows_a_grad_clip_changed_between_epochs(data):
    """A capture bakes the clipping norm into the graph: trainer.grad_clip set between epochs (a
    notebook lowering it after a spike) went on replaying the old norm, where eager steps took the
    new one."""
    runs = {}
    for graphs in (False, True):
        t = _trainer(data, cuda_graphs=graphs)
        t.train_epoch(data)
        t.grad_clip = 1e-3                       # small enough that every step is clipped
        t.train_epoch(data)
        runs[graphs] = [p.detach().cpu() for p in t.model.parameters()]
    for a, b in zip(runs[False], runs[True]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()


def test_graphed_epoch_cut_short_is_undone_in_place(data):
    """An epoch cut by Ctrl-C is undone in place (weights, AdamW state made for the graphs, the
    learning-rate tensors): the captured steps stay valid, and training again equals a run that
    was never cut."""
    from predlab.train import Callback

    class CutOnce(Callback):
        done = False

        def on_batch_end(self, trainer, step, loss):
            if trainer.epoch == 1 and step == 1 and not self.done:
                CutOnce.done = True
                raise KeyboardInterrupt

    straight = _trainer(data, cuda_graphs=True)
    straight.train(3)
    cut = _trainer(data, cuda_graphs=True, callbacks=[CutOnce()])
    with pytest.raises(KeyboardInterrupt):
        cut.train(3)
    assert cut.epoch == 1 and cut._graphs
    cut.train(3)
    assert [h["train_loss"] for h in cut.history] == pytest.approx([h["train_loss"] for h in straight.history],
                                                                   rel=1e-6)
    for a, b in zip(straight.model.parameters(), cut.model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (a - b).abs().max()


def test_graphed_checkpoint_resumes_and_loads_anywhere(data, tmp_path):
    """A graphed trainer's checkpoint: resuming it (graphs captured again) continues as an
    unbroken run does, and it holds plain float learning rates, so a CPU trainer loads it."""
    straight = _trainer(data, cuda_graphs=True)
    for _ in range(2):
        straight.train_epoch(data)
        straight.epoch += 1
    first = _trainer(data, cuda_graphs=True)
    first.train_epoch(data)
    first.epoch += 1
    path = first.save_checkpoint(tmp_path / "c1.pt")
    state = ck.load_checkpoint_dict(path)
    assert all(isinstance(g["lr"], float) and not g["capturable"] for g in state["optimizer"]["param_groups"])
    # every tensor on the CPU: a plain torch.load of it works on a machine without a GPU
    # (AdamW's moments stayed on the GPU), and the one CUDA generator state is the trainer's GPU's
    raw = torch.load(path, weights_only=True)

    def tensors(v):
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, dict):
            for x in v.values():
                yield from tensors(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                yield from tensors(x)
    assert {t.device.type for t in tensors(raw)} == {"cpu"}
    assert len(raw["rng"]["cuda"]) == 1
    resumed = _trainer(data, cuda_graphs=True)
    resumed.load_checkpoint(path)
    resumed.train_epoch(data)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()
    cpu = SupervisedTrainer(TransformerPredator(dropout=0.0), data, data, batch_size=128, device="cpu")
    cpu.load_checkpoint(path)
    assert cpu.train_epoch(data)["train_loss"] > 0


def test_bf16_autocast_and_tf32_train_as_well_as_float32(data, monkeypatch):
    """bf16 autocast and TF32 products (the GPU's faster modes) against float32 on the same data
    and steps: each reaches a val loss within 25% of float32's, by numbers of its own. Where
    Triton is there, also bf16 with both fused kernels (the bench's "graphs bf16 triton")."""
    from predlab import model as M
    val = rollout_chunk(16, WORLD, seed=9)
    modes = [("fp32", {}, "math"), ("bf16", {"autocast": True}, "math"), ("tf32", {"tf32": True}, "math")]
    try:
        import triton  # noqa: F401
        modes.append(("bf16 triton", {"autocast": True}, "triton"))
    except ImportError:
        pass
    res = {}
    for mode, kw, kernels in modes:
        monkeypatch.setattr(M, "GPU_ATTENTION", kernels)
        monkeypatch.setattr(M, "GPU_GEGLU", "torch" if kernels == "math" else "triton")
        t = _trainer(data, cuda_graphs=True, batch_size=64, **kw)
        t.val_dataset = val
        for _ in range(4):
            t.train_epoch(data)
            t.epoch += 1
        assert not torch.backends.cuda.matmul.allow_tf32       # validation in full float32
        res[mode] = t.validate()
    for mode, _, _ in modes[1:]:
        assert res[mode] != res["fp32"]
        assert res[mode] < 1.25 * res["fp32"], res


def test_episodes_on_the_gpu_match_the_cpu():
    """The torch world on the GPU draws the same episodes as the CPU: same rows and boid counts,
    the first frames equal to float32 rounding."""
    cfg = WorldConfig(frames=2)
    a = rollout_chunk(48, cfg, 3, device="cpu", backend="torch")
    b = rollout_chunk(48, cfg, 3, device="cuda")
    assert len(a) == len(b) > 48
    assert torch.equal(a.n, b.n.cpu())
    for k, v in a.state_dict().items():
        assert torch.allclose(v.float(), b.state_dict()[k].cpu().float(), atol=1e-5), k


def test_frames_on_the_gpu_do_not_wait_for_it():
    """A frame of a GPU rollout (observe, the teacher or the random policy, exploration noise drawn on
    the host, step) never makes the host wait for the GPU: torch's sync check, set to raise, meets no
    blocking copy or read-back. The flocking weights were a tensor made from a Python list every frame,
    and the noise and the random policy's draws went over in blocking copies."""
    from predlab.evaluate import RandomPolicy
    from predlab.sim import World, host_to_device
    from predlab.teacher import closest_pursuit
    world = World.random(64, WORLD, generator=torch.Generator().manual_seed(0), device="cuda")
    policy, g = RandomPolicy(0), torch.Generator().manual_seed(1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            obs = world.observe()
            noise = 0.3 * host_to_device(torch.randn(64, 2, generator=g), "cuda")
            world.step(closest_pursuit(obs["boids"], obs["mask"]) + noise)
            world.step(policy(world.observe()))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert world.frame == 6 and world.pos.is_cuda


def test_gpu_episodes_wait_only_for_the_liveness_check():
    """rollout_chunk on a GPU waits for the device, frame after frame, only where its docstring says:
    the check every 8 frames of whether any episode is still live. So 8 frames more add one wait
    (torch's sync check, set to warn, counts them); with a wait per frame they added 17."""
    import warnings

    def waits(frames: int) -> int:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                rollout_chunk(64, WorldConfig(frames=frames, boids_max=30), seed=5, device="cuda")
        finally:
            torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in seen)

    rollout_chunk(64, WorldConfig(frames=2, boids_max=30), seed=5, device="cuda")     # warm-up
    assert waits(17) - waits(9) == 1


def test_dagger_drives_gpu_episodes(data):
    """DAgger with its episodes simulated on the GPU (an EpisodeGenerator made with device "cuda"):
    the student drives there, and num_workers (which starts no process for a GPU generator) changes
    nothing, as the README promises. With num_workers set, the student was the bare CPU model meant
    for worker processes, and its first frame failed on CUDA observations."""
    from predlab.dagger import DaggerSource
    from predlab.data import EpisodeGenerator
    t = _trainer(data)
    got = []
    for workers in (0, 2):
        source = DaggerSource(EpisodeGenerator(WORLD, seed=1, num_workers=workers, device="cuda", progress=False),
                              8, start=1)
        got.append(source.for_epoch(0, t))            # epoch 1 = start: the student drives about half
        assert source.last["dagger_beta"] == 0.5
        source.generator.close()
    assert len(got[0]) > 0
    for k, v in got[0].state_dict().items():
        assert torch.equal(v, got[1].state_dict()[k]), k
    # saved on the CPU (a checkpoint a machine without a GPU reads), resumed on the GPU: its first epoch joins the
    # loaded buffer with fresh GPU samples
    state = source.state_dict()
    assert all(v.device.type == "cpu" for v in state["dagger_buffer"].values())
    resumed = DaggerSource(EpisodeGenerator(WORLD, seed=1, device="cuda", progress=False), 8, start=1)
    resumed.load_state_dict(state)
    assert resumed.for_epoch(1, t).context.device.type == "cuda"


def test_cli_trains_on_the_gpu_and_exports(tmp_path):
    """python -m predlab.train --device cuda: DAgger rollouts and the catch evaluation on the GPU,
    CUDA-graphed steps, checkpoints that load on a CPU, and model.js."""
    flags = ["--device", "cuda", "--epochs", "3", "--train_episodes", "8", "--val_episodes", "3", "--frames", "20",
             "--boids_max", "16", "--batch_size", "64", "--eval_every", "1", "--eval_episodes", "4",
             "--eval_frames", "30", "--quiet"]
    r = subprocess.run([sys.executable, "-m", "predlab.train", *flags], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "cuda" in r.stdout.lower()
    ckdir = tmp_path / "checkpoints"
    assert (ckdir / "model.js").is_file()
    model = ck.load_model(ckdir / "best_model.pt")
    assert next(model.parameters()).device.type == "cpu"


def test_a_cpu_trainer_on_a_gpu_machine_leaves_cuda_alone(tmp_path):
    """A CPU run's checkpoints on a machine with a GPU: saving one started CUDA (a context of some
    hundred MB on the GPU, seconds at the first save) to store generator states the run never
    used, and loading one set them."""
    code = ("import torch\nfrom predlab.config import WorldConfig\nfrom predlab.data import rollout_chunk\n"
            "from predlab.model import TransformerPredator\nfrom predlab.train import SupervisedTrainer\n"
            "d = rollout_chunk(8, WorldConfig(frames=20, boids_max=8), seed=5)\n"
            "t = SupervisedTrainer(TransformerPredator(), d, d, batch_size=64, device='cpu')\n"
            "t.train_epoch(d)\nt.load_checkpoint(t.save_checkpoint('c.pt'))\n"
            "print(torch.cuda.is_initialized(), 'cuda' in torch.load('c.pt', weights_only=True)['rng'])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


def test_a_sample_set_on_the_gpu_gives_batches_and_its_compact_form_there(data):
    """SampleSet.batch and to_ragged compared a CPU arange with the set's counts: a set moved to the
    GPU (a user's own training loop) failed with a device mismatch."""
    gpu = data.to_device("cuda")
    idx = torch.arange(10)
    for k, v in gpu.batch(idx.cuda()).items():
        assert v.is_cuda and torch.equal(v.cpu(), data.batch(idx)[k]), k
    for k, v in gpu.to_ragged().items():
        assert torch.equal(v.cpu(), data.to_ragged()[k]), k


def test_the_notebook_views_take_a_model_and_samples_on_the_gpu(data):
    """The attention views and the training-data figures called .numpy() on what they were given: a
    batch or a SampleSet on a GPU failed with 'can't convert cuda tensor to numpy'."""
    from predlab import viz
    model = TransformerPredator().cuda().eval()
    batch = {k: v.cuda() for k, v in data.batch(torch.arange(8)).items() if k != "target"}
    cpu = viz.plot_attention_overlay(model.cpu(), {k: v.cpu() for k, v in batch.items()}).attention_weights
    model.cuda()
    assert np.allclose(viz.plot_attention_overlay(model, batch).attention_weights, cpu, atol=1e-5)
    viz.plot_attention_grid(model, batch)
    viz.attention_agreement(model, batch)
    stats = viz.training_data_stats(data.to_device("cuda"))
    assert np.array_equal(stats["n"], viz.training_data_stats(data)["n"])


def test_a_checkpoint_of_unfused_adamw_resumes_in_a_fused_eager_trainer(data, tmp_path):
    """An MPS run's AdamW is not fused: torch's load left its step counts on the CPU, and this machine's fused
    AdamW (kept over the checkpoint's flags) steps on the GPU, without graphs to move them first."""
    mps_like = SupervisedTrainer(TransformerPredator(dropout=0.0), data, data, batch_size=128, device="cpu")
    for g in mps_like.optimizer.param_groups:
        g["fused"] = None
    mps_like.train_epoch(data)
    mps_like.epoch += 1
    path = mps_like.save_checkpoint(tmp_path / "c.pt")
    resumed = _trainer(data, cuda_graphs=False)
    resumed.load_checkpoint(path)
    assert all(g["fused"] for g in resumed.optimizer.param_groups)
    assert resumed.train_epoch(data)["train_loss"] > 0
