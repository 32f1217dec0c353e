"""DAgger: the student drives some episodes, the teacher labels every state, the buffer is capped."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from predlab.config import WorldConfig
from predlab.dagger import DaggerSource
from predlab.data import EpisodeGenerator, SampleSet
from predlab.teacher import closest_pursuit
from predlab.train import EpisodeSource

WC = WorldConfig(width_max=640, height_max=480, boids_max=12, frames=30, noise=0.0)
NOISY = dataclasses.replace(WC, noise=0.3)       # the default exploration noise


def _same(a: SampleSet, b: SampleSet):
    """The same samples (live boids compared, whatever the padding)."""
    assert len(a) == len(b) > 0
    for (k, x), y in zip(a.to_ragged().items(), b.to_ragged().values()):
        assert x.shape == y.shape and torch.equal(x, y), k


def test_beta_schedule():
    src = DaggerSource(EpisodeGenerator(WC, progress=False), 4, start=3, decay=0.5, beta_min=0.2)
    assert [src.beta(e) for e in (1, 2, 3, 4, 5, 6)] == [1.0, 1.0, 0.5, 0.25, 0.2, 0.2]


def _stored_mask(data):
    return torch.arange(data.boids.shape[1])[None, :] < data.n[:, None]


def test_student_drives_and_teacher_labels(model):
    gen = EpisodeGenerator(WC, seed=0, progress=False)
    trainer = SimpleNamespace(model=model)
    teacher_only = gen.generate(8, stream=1)                       # what behaviour cloning sees in epoch 1
    src = DaggerSource(gen, 8, start=1, decay=0.0, beta_min=0.0)   # beta 0: the student drives everything
    data = src.for_epoch(0, trainer)
    assert src.last["dagger_beta"] == 0.0
    assert len(data) == len(teacher_only)  # no catches within 30 frames here, so the same row count...
    # ...but other states: the predator's velocity follows the student, not the teacher
    assert (data.predator - teacher_only.predator).abs().max() > 0.1
    assert not torch.allclose(data.target, teacher_only.target)
    # labels are always the clean teacher action on the stored inputs
    torch.testing.assert_close(data.target, closest_pursuit(data.boids, _stored_mask(data)))
    assert all(p.grad is None for p in model.parameters())  # the student is a frozen copy


def test_mixed_epochs_keep_teacher_states(model):
    gen = EpisodeGenerator(WC, seed=0, progress=False)
    src = DaggerSource(gen, 16, start=1, decay=0.5, beta_min=0.5)
    data = src.for_epoch(0, SimpleNamespace(model=model))
    teacher_only = gen.generate(16, stream=1)
    same = (data.predator[:, None] == teacher_only.predator[None]).all(-1).any(1)
    assert 0 < same.float().mean() < 1  # some episodes teacher-driven, some student-driven


def test_before_start_it_is_behaviour_cloning(model):
    """Epochs before dagger_start (beta 1) are behaviour cloning's epochs, sample for sample, with
    exploration noise. Handing the generator a student there made it draw which episodes the student
    drives (none at beta 1), and that draw shifted every later noise draw: other episodes."""
    gen = EpisodeGenerator(NOISY, seed=0, progress=False)
    src = DaggerSource(gen, 4, start=2)
    data = src.for_epoch(0, SimpleNamespace(model=model))
    assert src.last["dagger_beta"] == 1.0
    _same(data, EpisodeSource(gen, 4).for_epoch(0))


def test_buffer_cap_drops_the_oldest(model):
    gen = EpisodeGenerator(WC, seed=0, progress=False)
    src = DaggerSource(gen, 4, start=5, buffer=200)   # teacher-driven epochs, so they can be regenerated
    trainer = SimpleNamespace(model=model)
    e1, e2 = gen.generate(4, stream=1), gen.generate(4, stream=2)
    assert len(e1) + len(e2) > 200 > len(e1)
    assert torch.equal(src.for_epoch(0, trainer).target, e1.target)        # aggregated, under the cap
    buf = src.for_epoch(1, trainer)
    assert len(buf) == 200 and src.last["dagger_samples"] == 200
    keep = 200 - len(e2)                                                    # the oldest rows went first
    assert torch.equal(buf.target, torch.cat([e1.target[-keep:], e2.target]))
    assert torch.equal(buf.predator, torch.cat([e1.predator[-keep:], e2.predator]))


def test_a_buffer_smaller_than_an_epoch_keeps_that_epochs_samples(model):
    """--dagger_buffer 1 trained every epoch, the first too, on 1 of its thousands of fresh samples."""
    gen = EpisodeGenerator(WC, seed=0, progress=False)
    src = DaggerSource(gen, 4, start=5, buffer=1)
    trainer = SimpleNamespace(model=model)
    e1, e2 = gen.generate(4, stream=1), gen.generate(4, stream=2)
    assert torch.equal(src.for_epoch(0, trainer).target, e1.target)
    assert torch.equal(src.for_epoch(1, trainer).target, e2.target) and src.last["dagger_samples"] == len(e2)


def test_default_buffer_keeps_two_epochs_of_samples(model):
    """buffer=0 (the default of --dagger_buffer) keeps two epochs' worth of samples, the newest, as the
    README says; the tests set a buffer of their own, so a default of one epoch's worth (training on
    the fresh episodes alone, no aggregation) went unseen."""
    gen = EpisodeGenerator(WC, seed=0, progress=False)
    src = DaggerSource(gen, 4, start=5)               # teacher-driven epochs, so they can be regenerated
    trainer = SimpleNamespace(model=model)
    epochs = [gen.generate(4, stream=1 + e) for e in range(3)]
    for e in range(3):
        buf = src.for_epoch(e, trainer)
    every, keep = SampleSet.cat(epochs), 2 * len(epochs[2])
    assert len(every) > keep and len(buf) == keep
    assert torch.equal(buf.target, every.target[-keep:]) and torch.equal(buf.predator, every.predator[-keep:])


def test_undo_epoch_gives_back_the_samples_before_that_epoch(model):
    """The trainer undoes an epoch that did not finish (Ctrl-C, divergence) and runs it again; the
    buffer must then hold what it held before that epoch, or the run goes on with other samples than
    an uninterrupted one. Undoing takes the epoch's samples out and puts back the older ones they
    pushed out, once; an epoch whose episodes were never drawn (Ctrl-C during their generation, also
    again after an undo, or after a checkpoint was loaded) changes nothing."""
    gen = EpisodeGenerator(WC, seed=0, progress=False)
    src = DaggerSource(gen, 4, start=5, buffer=200)   # epoch 2 pushes some of epoch 1 out
    trainer = SimpleNamespace(model=model)
    first = SampleSet.from_ragged(src.state_dict()["dagger_buffer"])
    assert len(first) == 0
    src.for_epoch(0, trainer)
    after1 = SampleSet.from_ragged(src.state_dict()["dagger_buffer"])
    src.undo_epoch(1)                                 # cut while epoch 2's episodes were drawn
    _same(src.data, after1)
    assert len(src.for_epoch(1, trainer)) == 200 < len(after1) + len(gen.generate(4, stream=2))
    src.undo_epoch(1)
    _same(src.data, after1)                           # epoch 1's dropped samples are back
    src.undo_epoch(1)                                 # epoch 2 cut again, before its episodes
    _same(src.data, after1)
    src.for_epoch(1, trainer)
    src.load_state_dict({"dagger_buffer": after1.to_ragged()})   # a checkpoint of epoch 1, loaded
    src.undo_epoch(1)
    _same(src.data, after1)


def test_dagger_episodes_are_the_same_for_any_number_of_workers(model):
    """--num_workers changes who rolls out the episodes, never what they are, with DAgger too (the
    README's promise for any --seed). Worker processes drove with the bare model, this process with
    the batched policy, whose float32 sums differ in the last bits: the student's episodes came apart.
    The same holds for a model handed to EpisodeGenerator.generate as the student."""
    out, bare = [], []
    for workers in (0, 1):
        with EpisodeGenerator(NOISY, seed=0, num_workers=workers, progress=False) as gen:
            src = DaggerSource(gen, 16, start=1, decay=0.5, beta_min=0.5)
            out.append(src.for_epoch(0, SimpleNamespace(model=model)))
            bare.append(gen.generate(16, stream=1, student=model, beta=0.5))
    _same(*out)
    _same(*bare)
    _same(out[0], bare[0])
    teacher_only = EpisodeGenerator(NOISY, seed=0, progress=False).generate(16, stream=1)
    assert not torch.equal(out[1].predator, teacher_only.predator)   # the workers' student did drive


def test_cli_dagger_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "predlab.train", "--dagger", "--epochs", "2", "--train_episodes", "8",
                        "--val_episodes", "4", "--frames", "30", "--dagger_start", "2",
                        "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "runs"), "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dagger_beta=0.5" in r.stdout
    assert (tmp_path / "ck" / "best_model.pt").is_file() and (tmp_path / "ck" / "model.js").is_file()


@pytest.mark.parametrize("kw, error, message", [
    ({"buffer": 2.5}, ValueError, "buffer must be a whole number"),
    ({"decay": "0.5"}, TypeError, "decay must be a number"),
    ({"episodes_per_epoch": "4"}, ValueError, "episodes_per_epoch must be a whole number")])
def test_bad_settings_are_named_when_made(kw, error, message):
    """buffer=2.5 was accepted, then failed after the first epoch's episodes ("tensors used as
    indices must be long ..."); episodes_per_epoch was not checked at all, and decay="0.5" gave
    "'<=' not supported between instances of 'int' and 'str'"."""
    args = {"generator": EpisodeGenerator(WC, progress=False), "episodes_per_epoch": 4, **kw}
    with pytest.raises(error, match=message):
        DaggerSource(**args)


@pytest.mark.parametrize("make", [DaggerSource, EpisodeSource])
def test_a_source_without_an_episode_generator_is_refused_when_made(make):
    """DaggerSource(None, 4) or EpisodeSource(a WorldConfig, 4) failed only as the first epoch began, after the
    validation episodes, with an AttributeError naming neither."""
    with pytest.raises(TypeError, match="needs an EpisodeGenerator .*not WorldConfig"):
        make(WorldConfig(), 4)
    with pytest.raises(TypeError, match="not NoneType"):
        make(None, 4)


def test_a_dagger_epoch_without_the_trainer_is_refused():
    """for_epoch past the start without the trainer ran plain cloning while reporting a beta below 1."""
    gen = EpisodeGenerator(WorldConfig(boids_min=2, boids_max=4, frames=10), seed=0, progress=False)
    src = DaggerSource(gen, 2, start=2)
    assert len(src.for_epoch(0)) > 0           # epoch 1: the teacher drives, no student needed
    with pytest.raises(ValueError, match=r"epoch 2 rolls out the student \(beta 0.5\).*pass trainer="):
        src.for_epoch(1)


def test_a_ctrl_c_at_any_line_of_an_epoch_leaves_undo_epoch_the_samples_before_it():
    """The trainer undoes an epoch that a Ctrl-C cut with undo_epoch. for_epoch stored its undo
    record and its new samples in two statements: cut between them, undo_epoch took the epoch's
    fresh count off the old samples, losing samples of earlier epochs. Here a KeyboardInterrupt is
    raised at each line of for_epoch in turn (a tracer), as a Ctrl-C could."""
    lines = []

    def record(frame, event, arg):
        if frame.f_code is DaggerSource.for_epoch.__code__ and event == "line":
            lines.append(frame.f_lineno)
        return record

    def source():
        src = DaggerSource(EpisodeGenerator(WC, seed=0, progress=False), 2, start=5)
        src.for_epoch(0)
        return src, SampleSet.cat([src.data])

    src, _ = source()
    sys.settrace(record)
    try:
        src.for_epoch(1)
    finally:
        sys.settrace(None)
    assert len(lines) > 5
    for at in range(len(lines)):
        src, before = source()
        seen = [0]

        def cut(frame, event, arg):
            if frame.f_code is DaggerSource.for_epoch.__code__ and event == "line":
                seen[0] += 1
                if seen[0] == at + 1:
                    raise KeyboardInterrupt
            return cut

        sys.settrace(cut)
        try:
            with pytest.raises(KeyboardInterrupt):
                src.for_epoch(1)
        finally:
            sys.settrace(None)
        src.undo_epoch(1)
        _same(src.data, before)


def test_a_student_with_nan_actions_ends_the_epoch_as_divergence(monkeypatch):
    """The student's rollouts check its actions; NaN ones raised NonFiniteActions out of train(),
    which the CLI showed as a traceback. It is divergence: the epoch is undone and named, with
    the learning rate, as a diverged epoch is (the CLI then exports the best so far)."""
    from predlab import evaluate
    from predlab.model import TransformerPredator
    from predlab.train import SupervisedTrainer, TrainingDiverged
    gen = EpisodeGenerator(WC, seed=0, progress=False)
    src = DaggerSource(gen, 2, start=2, decay=0.0, beta_min=0.0)   # the student drives every episode
    torch.manual_seed(0)
    t = SupervisedTrainer(TransformerPredator(d_model=16, n_heads=2, n_layers=1, ffn_hidden=32), src,
                          gen.generate(2, stream=0), learning_rate=3e-3, batch_size=16, device="cpu",
                          world_config=WC)
    t.train(1)
    before = len(src.data)
    monkeypatch.setattr(evaluate.ModelPolicy, "__call__", lambda self, batch: torch.full(
        (batch["context"].shape[0], 2), float("nan")))
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 2: the student's actions at frame \d+ are NaN "
                                               r"or infinite \(learning rate 0.003 is too high"):
        t.train(2)
    assert t.epoch == 1 and len(src.data) == before


def test_a_trainer_loading_a_checkpoint_without_samples_goes_on_as_a_resume_from_it(tmp_path):
    """trainer.load_checkpoint(best_model.pt), saved without DAgger's samples, on a trainer that had
    trained on: it kept the samples of the epochs after the one it went back to, and trained on them
    again beside those epochs' episodes drawn anew; a resume from that file starts the buffer empty."""
    from predlab.config import ModelConfig
    from predlab.train import create_trainer

    def make(**kw):
        return create_trainer(train_episodes=2, val_episodes=1, world_config=dataclasses.replace(WC, frames=10),
                              model_config=ModelConfig(d_model=8, n_heads=2, n_layers=1, ffn_hidden=8),
                              batch_size=64, eval_every=0, dagger_start=1, device="cpu", progress=False,
                              verbose=False, **kw)
    t = make()
    t.train(1)
    t.save_checkpoint(tmp_path / "best_model.pt", include_data=False)
    t.train(2)
    t.load_checkpoint(tmp_path / "best_model.pt")
    resumed = make(resume=str(tmp_path / "best_model.pt"))
    assert len(t.train_dataset.data) == len(resumed.train_dataset.data) == 0
    t.train(2)
    resumed.train(2)
    assert t.history[-1]["train_loss"] == resumed.history[-1]["train_loss"]


@pytest.mark.parametrize("epoch", [-1, 1.5, True])
def test_an_epoch_source_refuses_an_epoch_that_is_not_an_index(epoch):
    """Epoch -1 drew stream 0, the validation episodes, to train on, without a word."""
    from predlab.data import EpisodeGenerator
    from predlab.train import EpisodeSource
    gen = EpisodeGenerator(WorldConfig(frames=5), seed=0, progress=False)
    for source in (EpisodeSource(gen, 2), DaggerSource(gen, 2)):
        with pytest.raises((ValueError, TypeError), match="epoch must be"):
            source.for_epoch(epoch)
    assert len(EpisodeSource(gen, 2).for_epoch(0)) > 0


def test_a_data_source_state_without_its_buffer_is_refused():
    """{"foo": 1} in a checkpoint's data_source started an empty buffer without a word; no state at all
    (best_model.pt's) still starts it empty."""
    src = DaggerSource(EpisodeGenerator(WorldConfig(frames=4, boids_max=4)), episodes_per_epoch=2)
    with pytest.raises(ValueError, match="holds no dagger_buffer \\(it holds foo\\)"):
        src.load_state_dict({"foo": 1})
    src.load_state_dict({})
    assert len(src.data) == 0


def test_a_gpu_generators_buffer_is_saved_on_the_cpu_and_resumed_on_its_device():
    """DaggerSource on a GPU generator: its state held CUDA tensors (a checkpoint a machine without a GPU could
    not torch.load), and a resume, whose checkpoint loads on the CPU, joined the CPU buffer with the GPU's fresh
    samples in torch.cat's device error at its first epoch. A meta device stands in for the GPU here."""
    gen = EpisodeGenerator(WC, seed=1, progress=False)
    on_gpu = SimpleNamespace(device=torch.device("meta"), num_workers=0,
                             generate=lambda *a, **kw: gen.generate(*a, **kw).to_device("meta"))
    src = DaggerSource(gen, 2, start=5)
    src.for_epoch(0)
    state = src.state_dict()           # (saved on the CPU from a GPU too: tests/test_gpu.py)
    resumed = DaggerSource(gen, 2, start=5)
    resumed.generator = on_gpu
    resumed.load_state_dict(state)
    assert resumed.data.context.device.type == "meta" and len(resumed.data) == len(src.data)
    assert resumed.for_epoch(1).context.device.type == "meta"
