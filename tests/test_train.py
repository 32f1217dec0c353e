"""The training pipeline: seeded data, the trainer, checkpoints and resume, the CLI."""
import copy
import errno
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ctrl_c_in_epoch
from predlab import checkpoint as ck
from predlab.config import ModelConfig, TrainConfig, WorldConfig
from predlab.data import EpisodeGenerator, SampleSet, collate, generate_episodes
from predlab.model import TransformerPredator
from predlab.train import (LOCK_NAME, Callback, Checkpointer, EarlyStopping, SupervisedTrainer, create_trainer,
                           resolve_device)

ROOT = Path(__file__).resolve().parents[1]
TINY_WORLD = WorldConfig(frames=12, boids_max=12)


def _same(a: SampleSet, b: SampleSet):
    assert len(a) == len(b) and len(a) > 0
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_same_seed_same_data_for_any_number_of_workers():
    """--num_workers changes who generates, never what: chunks are seeded on their own."""
    from predlab.data import CHUNK_EPISODES
    n = 2 * CHUNK_EPISODES + 44  # more than two chunks, the last one partial
    serial = generate_episodes(n, TINY_WORLD, seed=3, stream=5, num_workers=0)
    parallel = generate_episodes(n, TINY_WORLD, seed=3, stream=5, num_workers=2)
    _same(serial, parallel)
    other = generate_episodes(n, TINY_WORLD, seed=4, stream=5, num_workers=0)
    assert not torch.equal(serial.context, other.context)


def test_samples_are_teacher_labelled_live_states():
    """Every stored sample has live boids first and the teacher's unit vector as its target."""
    from predlab.teacher import closest_pursuit
    s = generate_episodes(20, TINY_WORLD, seed=1)
    b = s.batch(torch.arange(len(s)))
    assert (s.n >= 1).all()
    assert torch.allclose(closest_pursuit(b["boids"], b["mask"]), b["target"])
    norms = b["target"].norm(dim=-1)
    assert ((norms - 1).abs() < 1e-5).float().mean() > 0.99


def _trainer(tmp_path, dropout=0.1, callbacks=(), train_config=None):
    torch.manual_seed(0)
    model = TransformerPredator(dropout=dropout)
    gen = EpisodeGenerator(TINY_WORLD, seed=0, progress=False)
    from predlab.train import EpisodeSource
    val = gen.generate(4, stream=0)
    return SupervisedTrainer(model, EpisodeSource(gen, 6), val, learning_rate=3e-3, batch_size=32,
                             device="cpu", callbacks=list(callbacks), world_config=TINY_WORLD,
                             train_config=train_config)


# _trainer's settings, as the command line's flags (SAME_VAL) make them: a resume of its checkpoint goes on with
# the same validation set (one built without a TrainConfig records no val_episodes, and a resume starts the best
# afresh)
CLI_LIKE = TrainConfig(learning_rate=3e-3, batch_size=32, train_episodes=6, val_episodes=4, dagger=False,
                       eval_every=0, save_every=1)


class StopAt(Callback):
    def __init__(self, epoch):
        self.at = epoch

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == self.at:
            trainer.stop_training = True


def test_resume_is_bit_identical(tmp_path):
    """4 epochs straight == 2 epochs, checkpoint, new process state, resume to 4 (dropout on)."""
    straight = _trainer(tmp_path)
    straight.train(4)
    first = _trainer(tmp_path, callbacks=[StopAt(2)])
    first.train(4)
    assert first.epoch == 2
    path = first.save_checkpoint(tmp_path / "c2.pt")
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must restore it
    resumed = _trainer(tmp_path)
    resumed.load_checkpoint(path)
    assert resumed.epoch == 2
    # what the run reports as its best ("val MSE ... at epoch N") and early stopping counts from
    assert (resumed.best_metric, resumed.best_epoch, resumed.bad_epochs) == \
        (first.best_metric, first.best_epoch, first.bad_epochs) and first.best_epoch > 0
    resumed.train(4)
    assert resumed.epoch == 4
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["val_loss"] for h in straight.history] == [h["val_loss"] for h in resumed.history]


def test_split_batch_gives_the_whole_batch_gradient(tmp_path):
    """cpu_split: a batch run as threaded parts gives the whole batch's loss and gradients."""
    t = _trainer(tmp_path, dropout=0.0)
    data = t.train_dataset.for_epoch(0, t)
    b = next(t._batches(data, shuffle=False))
    whole = torch.nn.functional.mse_loss(t.model(b), b["target"])
    t.model.zero_grad()
    whole.backward()
    expected = [p.grad.clone() for p in t.model.parameters()]
    for parts in (2, 3):
        t.model.zero_grad()
        loss = t._split_backward(b, parts)
        assert torch.allclose(loss, whole, rtol=1e-6)
        for (name, p), g in zip(t.model.named_parameters(), expected):
            assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7), name


def test_bf16_autocast_on_a_cpu_computes_the_model_and_validates_in_float32(make_model, make_samples):
    """SupervisedTrainer(autocast=True) on a CPU: its training forward (the folded [CLS]
    attention's float32 mask with bf16 products included) gives the float32 model's actions to
    bf16's rounding on a padded batch, its gradients point the same way, and validation runs
    the float32 model the browser runs."""
    model = make_model(5)
    batch = collate(make_samples([0, 3, 9, 30], seed=13))
    target = torch.rand(4, 2, generator=torch.Generator().manual_seed(2)) * 2 - 1
    data = SampleSet(batch["context"], batch["predator"], batch["boids"], batch["mask"].sum(1), target)
    t = SupervisedTrainer(model, data, data, batch_size=4, device="cpu", autocast=True, cpu_split=1,
                          world_config=TINY_WORLD)
    t.model.train()
    want = t.model(batch)
    bf16 = t._forward(batch)
    assert bf16.dtype == torch.float32 and (bf16 - want).abs().max() <= 2e-2 * want.abs().max()
    assert (bf16 - want).abs().max() > 0                               # it did run in bf16
    params = list(t.model.parameters())
    g32 = torch.cat([g.flatten() for g in torch.autograd.grad(F.mse_loss(want, target), params)])
    g16 = torch.cat([g.flatten() for g in torch.autograd.grad(F.mse_loss(t._forward(batch), target), params)])
    assert F.cosine_similarity(g32, g16, dim=0) > 0.99
    with torch.no_grad():                                              # outside autocast: the float32 model
        val = float(F.mse_loss(t.model(batch), target, reduction="sum")) / (2 * len(target))
    assert t.validate() == pytest.approx(val, rel=1e-6)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_split_training_is_reproducible_and_restores_threads(tmp_path, dropout, monkeypatch):
    """Two runs with cpu_split 2 give the same bits, with dropout too; torch's thread count is
    restored after each epoch; auto splits with 2+ threads."""
    monkeypatch.setattr("predlab.train.usable_cpus", lambda: 16)   # whatever this machine has
    monkeypatch.setattr("predlab.train.SPLIT_PART_TOKENS", 1)     # auto splits these small batches too
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for _ in range(2):
            t = _trainer(tmp_path, dropout=dropout)
            assert t.split_parts() == 2                      # auto
            split_calls = []
            split = t._split_backward
            t._split_backward = lambda b, parts: split_calls.append(parts) or split(b, parts)
            t.train(2)
            assert split_calls and set(split_calls) == {2}   # the epochs ran split batches
            assert torch.get_num_threads() == 2
            runs.append(t)
        for (k, a), b in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().values()):
            assert torch.equal(a, b), k
        t = _trainer(tmp_path, dropout=dropout)
        t.cpu_split = 3
        assert t.split_parts() == 3
        torch.set_num_threads(1)
        assert _trainer(tmp_path, dropout=dropout).split_parts() == 1
        # more cores: a part per thread (2 parts left 6 of 8 cores idle), up to AUTO_SPLIT_MAX
        for n, parts in ((3, 3), (4, 4), (8, 4)):
            torch.set_num_threads(n)
            assert _trainer(tmp_path, dropout=dropout).split_parts() == parts
        monkeypatch.setattr("predlab.train.usable_cpus", lambda: 2)   # more threads than CPUs: no more parts
        assert _trainer(tmp_path, dropout=dropout).split_parts() == 2
    finally:
        torch.set_num_threads(threads)


def test_auto_split_leaves_batches_of_few_tokens_whole(tmp_path, monkeypatch):
    """cpu_split auto splits a batch only into parts of SPLIT_PART_TOKENS tokens or more (tokens: rows x
    (boids + 3)): smaller batches trained faster whole on one thread. An explicit cpu_split splits
    every batch of enough rows. While a split epoch runs, the main thread (AdamW, the whole batches)
    runs on one intra-op thread, and torch's thread count is restored after it."""
    import predlab.train as tr
    monkeypatch.setattr(tr, "usable_cpus", lambda: 16)

    def batch(rows, boids):
        return {"target": torch.zeros(rows, 2), "boids": torch.zeros(rows, boids, 4)}

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        t = _trainer(tmp_path, dropout=0.0)
        assert t.split_parts() == 2
        assert t.batch_parts(batch(32, 25)) == 1            # 896 tokens
        assert t.batch_parts(batch(64, 25)) == 1            # 1,792: under two parts' worth
        assert t.batch_parts(batch(128, 12)) == 2           # 1,920
        assert t.batch_parts(batch(256, 50)) == 2           # no more parts than split_parts
        assert t.batch_parts(batch(256, 50), split=4) == 4
        assert t.batch_parts(batch(3, 50), split=4) == 1    # fewer rows than parts
        assert t.batch_parts(batch(40, 50), split=4) == 2   # 2,120 tokens: two parts' worth, not four
        t.cpu_split = 2
        assert t.batch_parts(batch(2, 0)) == 2 and t.batch_parts(batch(1, 50)) == 1
        # an epoch of this world's batches (32 rows of at most 12 boids): none split, on one thread
        torch.set_num_threads(8)
        t = _trainer(tmp_path, dropout=0.0)
        assert t.split_parts() == 4
        calls, seen = [], []
        split = t._split_backward
        t._split_backward = lambda b, parts: calls.append(parts) or split(b, parts)

        class Threads(Callback):
            def on_batch_end(self, trainer, step, loss):
                seen.append(torch.get_num_threads())

        t.callbacks.append(Threads())
        t.train(1)
        assert not calls and seen and set(seen) == {1} and torch.get_num_threads() == 8
        monkeypatch.setattr(tr, "SPLIT_PART_TOKENS", 100)   # the same batches split where a part is worth it
        seen.clear()
        t.train(2)
        assert calls and set(calls) <= {2, 3, 4} and set(seen) == {1} and torch.get_num_threads() == 8
    finally:
        torch.set_num_threads(threads)


class _OrderedPool:
    """Stands in for the split batch's thread pool: runs the parts of a batch in the given order
    (the order in which two threads reach their dropout masks is up to the machine)."""

    def __init__(self, reverse: bool):
        self.reverse, self.jobs = reverse, []

    def submit(self, fn, *args):
        import concurrent.futures
        pool = self

        class Job(concurrent.futures.Future):
            def result(self, timeout=None):      # a lone job (validation's last batch of an odd count) runs here
                pool.run()
                return super().result(timeout)
        future = Job()
        self.jobs.append((future, fn, args))
        if len(self.jobs) == 2:
            self.run()
        return future

    def run(self):
        jobs, self.jobs = self.jobs, []
        for future, fn, args in (reversed(jobs) if self.reverse else jobs):
            future.set_result(fn(*args))


def test_split_training_with_dropout_does_not_depend_on_which_part_runs_first(tmp_path, monkeypatch):
    """Each part of a split batch draws its dropout masks from a generator of its own, so the
    run's weights are the same whichever of the two threads gets to the CPU first."""
    import predlab.train as tr
    runs = []
    for reverse in (False, True):
        monkeypatch.setattr(tr, "_split_pool", lambda parts, reverse=reverse: _OrderedPool(reverse))
        t = _trainer(tmp_path, dropout=0.1)
        t.cpu_split = 2
        t.train(1)
        runs.append(t.model.state_dict())
    for k, a in runs[0].items():
        assert torch.equal(a, runs[1][k]), k


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts the process's threads in /proc")
def test_split_threads_start_no_thread_teams_of_their_own(tmp_path, monkeypatch):
    """The split batch's threads run one intra-op thread from their first op on, so they start no
    OpenMP teams: with those, libgomp manages more threads than cores, stops spinning between
    parallel regions, and the main thread's multi-threaded ops after a split epoch (validation,
    DAgger rollouts, evaluation) wait for sleeping threads (about 1.7x slower on 2 cores)."""
    from predlab import train as T
    monkeypatch.setattr(T, "_SPLIT_POOL", {})                     # threads created in this test
    monkeypatch.setattr(T, "usable_cpus", lambda: 2)              # a runner of 1 CPU splits no batch
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        from predlab.bench import make_trainer, samples_with_boids
        data = samples_with_boids(50, 512)                       # products big enough for MKL to thread
        t = make_trainer(data, batch_size=256)
        x = torch.randn(512, 512)
        torch.mm(x, x), (x + 1).exp_()                            # the main thread's own team, first
        before = set(os.listdir("/proc/self/task"))
        t.train_epoch(data)
        new = {int(tid) for tid in set(os.listdir("/proc/self/task")) - before}
        split = {th.native_id for th in threading.enumerate() if th.name.startswith("predlab-split")}
        assert len(new) == 2 and new <= split                     # the two split threads, nothing else
    finally:
        torch.set_num_threads(threads)
        for pool in T._SPLIT_POOL.values():
            pool.shutdown()


def test_training_reduces_val_loss(tmp_path):
    t = _trainer(tmp_path, dropout=0.0)
    before = t.validate()
    t.train(3)
    assert t.history[-1]["val_loss"] < before
    assert {"train_loss", "val_loss", "lr", "samples_per_s"} <= set(t.history[-1])


def test_early_stopping_stops(tmp_path):
    t = _trainer(tmp_path)
    t.min_delta = 10.0  # nothing after the first epoch counts as an improvement
    t.train(10, early_stopping_patience=2)
    assert t.epoch == 3 and t.bad_epochs == 2


def test_early_stopping_with_patience_0_is_off(tmp_path):
    """Patience 0 is --early_stopping's "off", for an EarlyStopping made from that setting too."""
    t = _trainer(tmp_path, callbacks=[EarlyStopping(0)])
    t.min_delta = 10.0
    t.train(3)
    assert t.epoch == 3 and t.bad_epochs == 2


def test_early_stopping_patience_holds_for_its_own_train_call_only(tmp_path):
    """The EarlyStopping that train(N, early_stopping_patience=2) added stayed among the trainer's
    callbacks: a later train() given no patience, or a larger one, stopped again after one epoch."""
    t = _trainer(tmp_path)
    t.min_delta = 10.0  # nothing after the first epoch counts as an improvement
    t.train(10, early_stopping_patience=2)
    assert t.epoch == 3
    t.train(5)
    assert t.epoch == 5
    t.train(20, early_stopping_patience=3)
    assert t.epoch == 6 and t.bad_epochs == 5     # the count goes on; the patience is this call's


def test_early_stopping_patience_of_a_call_replaces_an_early_stopping_callback_for_that_call(tmp_path):
    """With EarlyStopping(1) among the callbacks, train(10, early_stopping_patience=3) stopped after
    one epoch without improvement: the call's patience was ignored. A later call without one keeps
    the callback's."""
    t = _trainer(tmp_path, callbacks=[EarlyStopping(1)])
    t.min_delta = 10.0  # nothing after the first epoch counts as an improvement
    t.train(10, early_stopping_patience=3)
    assert t.epoch == 4 and t.bad_epochs == 3
    t.train(10)
    assert t.epoch == 5


def test_checkpoint_refuses_pickle_code(tmp_path):
    """A checkpoint that needs pickle to load is refused and nothing from it runs."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "version": ck.VERSION, "payload": Evil()}, path)
    with pytest.raises(ck.CheckpointError, match="pickle") as err:
        ck.load_checkpoint_dict(path)
    assert not marker.exists()
    msg = str(err.value)
    assert "(it names posix.system)" in msg or "(it names nt.system)" in msg   # names what was refused
    assert "\x1b" not in msg and "False" not in msg   # no terminal codes, no advice to load it unsafely
    assert "add_safe_globals" not in msg          # nor torch's advice to allow it


def test_a_checkpoint_with_a_damaged_pickle_is_named_damaged(tmp_path):
    """Its data.pkl overwritten with other bytes (CRCs made to match): it was named as needing to
    execute pickled code, as if it were a malicious file, where it is a damaged one."""
    import zipfile
    src = _trainer(tmp_path).save_checkpoint(tmp_path / "c.pt")
    path = tmp_path / "damaged.pt"
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(path, "w") as out:
        for info in z.infolist():
            data = z.read(info.filename)
            out.writestr(info, b"_" * len(data) if info.filename.endswith("/data.pkl") else data)
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_checkpoint_dict(path)
    msg = str(err.value)
    assert "damaged" in msg and "execute" not in msg, msg
    assert "False" not in msg and "\n" not in msg


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")   # making one
def test_a_torchscript_model_is_named_as_such_and_never_run(tmp_path):
    """Another project's TorchScript .pt gave torch's warning and its advice to load it with
    weights_only=False."""
    path = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # torch's "looks like a TorchScript archive" warning
        with pytest.raises(ck.CheckpointError, match="a TorchScript model .*not a predlab checkpoint") as err:
            ck.load_checkpoint_dict(path)
    assert "False" not in str(err.value)


def test_checkpoint_refuses_other_architecture_and_foreign_files(tmp_path):
    small = _trainer(tmp_path)
    path = small.save_checkpoint(tmp_path / "ok.pt")
    big = SupervisedTrainer(TransformerPredator(d_model=64, n_heads=8), small.train_dataset, small.val_dataset,
                            device="cpu")
    with pytest.raises(ck.CheckpointError, match="d_model: checkpoint 48, model 64"):
        big.load_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ck.CheckpointError, match="not a readable"):
        ck.load_checkpoint_dict(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ck.CheckpointError, match="not a predlab checkpoint"):
        ck.load_checkpoint_dict(tmp_path / "foreign.pt")
    state = torch.load(path, weights_only=True)
    state["model"]["output.bias"][0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(ck.CheckpointError, match="output.bias.*NaN"):
        ck.load_model(tmp_path / "nan.pt")
    state = torch.load(path, weights_only=True)
    state["model"]["output.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(ck.CheckpointError, match="output.bias"):
        ck.load_model(tmp_path / "shape.pt")


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    t = _trainer(tmp_path)
    path = t.save_checkpoint(tmp_path / "best_model.pt")
    before = path.read_bytes()

    def stopped(fd):       # the new checkpoint is in the file, not yet on disk, when the kill comes
        assert os.fstat(fd).st_size > 0
        raise KeyboardInterrupt

    t.train_epoch(t.val_dataset)          # another checkpoint than the one on disk
    monkeypatch.setattr(os, "fsync", stopped)
    with pytest.raises(KeyboardInterrupt):
        t.save_checkpoint(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pt"]


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="limits the size of files written (POSIX)")
def test_a_checkpoint_cut_short_by_the_disk_is_an_os_error_naming_the_file(tmp_path):
    """A disk that fills while a checkpoint is being written: torch's zip writer turned it into
    "RuntimeError: [enforce fail at inline_container.cc:672] unexpected pos 86656 vs 86544", a
    riddle in the middle of a run. A file-size limit makes the write stop part way, as a full disk does."""
    import resource
    t = _trainer(tmp_path)
    path = t.save_checkpoint(tmp_path / "best_model.pt")
    before = path.read_bytes()
    t.train_epoch(t.val_dataset)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # the write fails instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limit[1]))
    try:
        with pytest.raises(OSError) as e:
            t.save_checkpoint(path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    assert e.value.errno == errno.EFBIG and e.value.filename == str(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["best_model.pt"]


def _full_disk_for(monkeypatch, *names: str) -> None:
    """Writes of files whose names start with one of names fail as on a full disk (at fsync, as the
    data reaches the disk); the rest are written."""
    real = os.fsync

    def fsync(fd):
        written = os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).lstrip(".")
        if written.startswith(names):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names the file being written from /proc")
def test_a_notebooks_run_whose_first_write_fails_puts_the_earlier_runs_files_back(tmp_path, monkeypatch, capsys):
    """Only the command line put them back; a notebook's trainer left them in previous/ and the folder
    with no model.js for the demo, though the run wrote nothing to replace it."""
    from predlab.train import Checkpointer, create_trainer
    d = tmp_path / "ck"
    d.mkdir()
    (d / "best_model.pt").write_bytes(b"an earlier run's")
    (d / "model.js").write_text("an earlier run's model")
    t = create_trainer(train_episodes=2, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD,
                       eval_every=0, progress=False, callbacks=[Checkpointer(d)])
    _full_disk_for(monkeypatch, "best_model.pt")
    with pytest.raises(OSError, match="No space left on device"):
        t.train(1)
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) == ["best_model.pt", "model.js"]
    assert (d / "model.js").read_text() == "an earlier run's model"      # never moved: nothing replaced it
    assert f"put the earlier run's best_model.pt back in {d}" in capsys.readouterr().out
    monkeypatch.undo()                      # the disk freed, the cell run again: an earlier run's files still
    t.train(1)
    (kept,) = (d / "previous").iterdir()
    assert (kept / "best_model.pt").read_bytes() == b"an earlier run's"
    assert (d / "model.js").read_text() == "an earlier run's model"     # until notebook 04 exports this run's


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names the file being written from /proc")
@pytest.mark.parametrize("meanwhile", ["edited", "removed"])
def test_files_put_back_after_a_failed_first_write_around_a_linked_model_js(tmp_path, monkeypatch, capsys, meanwhile):
    """ck/model.js links to a page's file; during the run someone edits that file, or removes the link; the
    run's first write fails. The earlier best_model.pt comes back, and the link is as the user left it: the
    first write does not touch model.js (it moved to previous/, and the page's file was copied, edited or not)."""
    from predlab.train import Checkpointer, create_trainer
    d, site = tmp_path / "ck", tmp_path / "site"
    d.mkdir()
    site.mkdir()
    (d / "best_model.pt").write_bytes(b"an earlier run's")
    (site / "model.js").write_text("page v1")
    (d / "model.js").symlink_to(site / "model.js")
    room = Checkpointer.make_room

    def make_room_then(self):
        room(self)
        if meanwhile == "removed":
            (d / "model.js").unlink(missing_ok=True)
        elif (site / "model.js").read_text() == "page v1":
            (site / "model.js").write_text("page v2, edited during the run")
    monkeypatch.setattr(Checkpointer, "make_room", make_room_then)
    _full_disk_for(monkeypatch, "best_model.pt")
    t = create_trainer(train_episodes=2, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD,
                       eval_every=0, progress=False, callbacks=[Checkpointer(d)])
    with pytest.raises(OSError):
        t.train(1)
    assert (d / "best_model.pt").read_bytes() == b"an earlier run's" and not (d / "previous").exists()
    assert f"put the earlier run's best_model.pt back in {d}" in capsys.readouterr().out
    if meanwhile == "edited":
        assert (d / "model.js").is_symlink() and (d / "model.js").read_text() == "page v2, edited during the run"
    else:
        assert not (d / "model.js").exists() and (site / "model.js").read_text() == "page v1"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names the file being written from /proc")
def test_cli_on_a_full_disk_says_which_file_and_keeps_what_it_saved(tmp_path, monkeypatch, capsys):
    """A full disk under a checkpoint ended the run with a traceback (torch's "unexpected pos");
    now one line names the file, the epoch is not counted, the best model saved before it is
    exported, and the exit code is 1. When model.js cannot be written either, that is said too."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    _full_disk_for(monkeypatch, "checkpoint_epoch_2.pt")
    assert main(["--epochs", "3", *TINY_FLAGS, "--eval_every", "0", "--no-dagger"]) == 1
    err = capsys.readouterr().err
    ckdir = tmp_path / "checkpoints"
    assert f"error in epoch 2: cannot write {Path('checkpoints') / 'checkpoint_epoch_2.pt'}: " \
           f"{os.strerror(errno.ENOSPC)}; that epoch was not counted" in err and "Traceback" not in err
    assert sorted(p.name for p in ckdir.glob("*.pt")) == ["best_model.pt", "checkpoint_epoch_1.pt"]
    from predlab.export import load_model_file     # model.js is the best model saved before the failure
    best = ck.load_model(ckdir / "best_model.pt").state_dict()
    for name in ("model.js", "model.json"):
        exported = load_model_file(ckdir / name).state_dict()
        assert all(torch.equal(best[k], exported[k]) for k in best), name

    # the first epoch's checkpoint fails after its best_model.pt was written: that model is whole,
    # and its export is tried (it was said that nothing had been written, and nothing exported)
    other = tmp_path / "other"
    _full_disk_for(monkeypatch, "checkpoint_epoch_1.pt", "model.js")
    assert main(["--epochs", "3", *TINY_FLAGS, "--eval_every", "0", "--no-dagger", "--checkpoint_dir", str(other)]) == 1
    err = capsys.readouterr().err
    assert f"error in epoch 1: cannot write {other / 'checkpoint_epoch_1.pt'}: {os.strerror(errno.ENOSPC)}" in err
    assert f"error: cannot write {other / 'model.js'}: {os.strerror(errno.ENOSPC)}; no model.js was written" in err
    assert "no checkpoint or model was written" not in err and "Traceback" not in err
    assert sorted(p.name for p in other.iterdir() if not p.name.startswith(".")) == ["best_model.pt"]


def test_evaluate_sample_and_create_trainer_api():
    """The seed README's Python usage works as shown."""
    trainer = create_trainer(train_episodes=4, val_episodes=2, learning_rate=1e-3, batch_size=64,
                             device="cpu", verbose=False, world_config=TINY_WORLD)
    sample = {"context": {"canvasWidth": 1.2, "canvasHeight": 0.8}, "predator": {"velX": 0.1, "velY": -0.2},
              "boids": [{"relX": 0.03, "relY": -0.04, "velX": 0.5, "velY": 0.5}]}
    r = trainer.evaluate_sample(sample)
    assert r["teacher_action"] == pytest.approx([0.6, -0.8])
    assert len(r["model_action"]) == 2 and r["mse"] >= 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^--device cuda asked for, but this torch sees no CUDA GPU .*use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match=r"^device='cuda' asked for, but this torch sees no CUDA GPU .*use device='cpu'"):
        EpisodeGenerator(TINY_WORLD, device="cuda")      # a library call names its argument, not the CLI flag


def test_the_device_line_names_the_device_once(capsys):
    resolve_device("cpu", verbose=True)
    assert capsys.readouterr().out == "device: cpu\n"        # was "device: cpu (cpu)"


def test_device_indexes_torch_would_misread_are_refused(monkeypatch):
    """torch keeps an index in 8 bits and wraps a larger one without a word: cuda:256 ran on GPU 0 (past the
    check against the GPU count), cuda:128 became index -128. A leading zero or a non-ASCII digit passed the
    name's check and ended in torch's traceback (exit 1, not the flag's error)."""
    from predlab.config import as_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for bad in ("cuda:128", "cuda:256", "cpu:255", "cpu:" + "9" * 5000):
        with pytest.raises(ValueError, match=r"^--device: device index [0-9]+ in .*torch numbers devices 0 to 127$"):
            resolve_device(bad)
    for bad in ("cpu:01", "cuda:01", "cpu:\uff11", "cuda:\u0661", "mps:1", "auto:0"):
        with pytest.raises(ValueError, match="unknown device .*: use auto, cpu, cuda, cuda:N or mps"):
            resolve_device(bad)
    with pytest.raises(ValueError, match=r"^--device cuda:1: only 1 CUDA device\(s\) present$"):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda", 0) and resolve_device("cpu:127") == torch.device("cpu", 127)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert as_device(torch.device("mps", 0)) == resolve_device("mps:0") == torch.device("mps")   # a Mac model's device


def test_create_trainer_names_its_device_argument_not_the_flag(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device='mps' asked for, but Apple MPS is not available here; "
                                         r"use device='cpu' or 'auto'$"):
        create_trainer(train_episodes=1, val_episodes=1, device="mps", verbose=False)


def test_device_names_are_checked_before_torch_sees_them(monkeypatch):
    """On a machine with CUDA, a malformed name ('cuda:abc') reached torch, whose RuntimeError
    named no argument; None means auto, as it did for the trainer; 'cpu:0' is a CPU."""
    from predlab.config import as_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bad in ("cudax", "cuda:abc", "cuda:-1", "cuda :0", "gpu", ""):
        with pytest.raises(ValueError, match=f"unknown device {bad!r}: use auto, cpu, cuda, cuda:N or mps"):
            as_device(bad)
    monkeypatch.undo()
    assert as_device(None) == resolve_device("auto") and as_device("CPU:0") == torch.device("cpu:0")
    with pytest.raises(TypeError, match="device must be a name such as 'cpu'"):
        as_device(0)


# ---------------------------------------------------------------------- the real CLI
def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "predlab.train", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


TINY_FLAGS = ["--train_episodes", "6", "--val_episodes", "3", "--frames", "12", "--boids_max", "12",
              "--batch-size", "32", "--save_every", "1", "--quiet"]
# resuming a checkpoint of _trainer(train_config=CLI_LIKE) on the same validation set: another would start the
# best afresh
SAME_VAL = [*TINY_FLAGS, "--val_episodes", "4"]


def test_cli_trains_checkpoints_resumes_and_exports(tmp_path):
    r = _cli("--epochs", "2", *TINY_FLAGS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ckdir = tmp_path / "checkpoints"
    assert {"best_model.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "model.js", "model.json"} <= \
        {p.name for p in ckdir.iterdir()}
    assert str((ckdir / "model.js").resolve()) in r.stdout
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and any(p.name.startswith("events.out.tfevents") for p in runs[0].iterdir())
    # it says how to watch it, with a command that works where it ran (.venv/bin need not be on PATH),
    # and which of the runs' folders (named by the time) is this run's
    line = next(x for x in r.stdout.splitlines() if x.startswith("TensorBoard: "))
    command, this_run = line.removeprefix("TensorBoard: ").split("   (this run: ")
    exe, flag, logdir = shlex.split(command)
    assert flag == "--logdir" and (tmp_path / logdir).resolve() == (tmp_path / "runs").resolve()
    assert (tmp_path / exe).is_file() or shutil.which(exe)
    assert (tmp_path / this_run.removesuffix(")")).resolve() == runs[0].resolve()
    from predlab.export import read_weights
    m = read_weights(ckdir / "model.js")
    best = ck.load_model(ckdir / "best_model.pt")
    for a, b in zip(m.state_dict().values(), best.state_dict().values()):
        assert torch.equal(a, b)
    r = _cli("--epochs", "3", "--resume", "checkpoints/checkpoint_epoch_2.pt", *TINY_FLAGS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "after epoch 2" in r.stdout and "epoch    3" in r.stdout and "epoch    1 " not in r.stdout
    assert (ckdir / "checkpoint_epoch_3.pt").is_file()
    state = ck.load_checkpoint_dict(ckdir / "checkpoint_epoch_3.pt")
    assert state["epoch"] == 3 and len(state["history"]) == 3


def test_cli_extending_a_finished_run_says_the_learning_rate_goes_back_up(tmp_path):
    """--resume of a finished run with a larger --epochs stretches its cosine schedule: the rate went from
    the run's last 1e-4 back to 1.3e-3 with no warm-up, and the CLI said only 'continuing with epoch 4'."""
    r = _cli("--epochs", "3", "--warmup_epochs", "0.5", *TINY_FLAGS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    shutil.copytree(tmp_path / "checkpoints", tmp_path / "run2")
    for epoch in (1, 2):      # the run's own schedule, going on: no jump (epoch 1's last step ran in the warm-up,
        r = _cli("--resume", f"run2/checkpoint_epoch_{epoch}.pt", "--epochs", "3", "--quiet",   # below epoch 2's rate)
                 "--checkpoint_dir", f"go{epoch}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "learning rate goes back up" not in r.stderr
    r = _cli("--resume", "checkpoints/checkpoint_epoch_3.pt", "--epochs", "6", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from predlab.train import WarmupCosine
    run, stretched = (WarmupCosine(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3), epochs, 0.5)
                      for epochs in (3, 6))
    before, after = run.factor(3.0) * 2e-3, stretched.factor(3.0) * 2e-3
    assert f"note: --epochs 6 stretches the run's schedule of 3 epochs: the learning rate goes back up from " \
           f"{before:.1e}, where epoch 3 ended, to {after:.1e} as epoch 4 begins" in r.stderr
    assert "--init_weights checkpoints/checkpoint_epoch_3.pt --learning_rate 3e-4" in r.stderr
    assert before == pytest.approx(1e-4) and after > 1e-3
    r = _cli("--resume", "checkpoints/checkpoint_epoch_5.pt", "--epochs", "6", "--learning_rate", "0.01",
             "--quiet", "--checkpoint_dir", "higher", cwd=tmp_path)       # a rate given, no stretch: not this note
    assert r.returncode == 0, r.stderr
    assert "--learning_rate 0.01 (the checkpoint's run: 0.002)" in r.stdout and "stretches" not in r.stderr


def test_cli_resume_keeps_the_runs_settings_and_applies_flags_given(tmp_path):
    """--resume alone continues the run as it was set up; a flag given changes that setting, also
    in the restored optimizer (a given --learning_rate was once ignored without a word)."""
    r = _cli("--epochs", "2", "--learning_rate", "3e-3", "--checkpoint_dir", "run", *TINY_FLAGS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    shutil.copytree(tmp_path / "run", tmp_path / "run2")
    r = _cli("--resume", "run/checkpoint_epoch_2.pt", "--epochs", "3", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "6 fresh episodes per epoch" in r.stdout and "changed by flags" not in r.stdout
    state = ck.load_checkpoint_dict(tmp_path / "run" / "checkpoint_epoch_3.pt")   # the checkpoint's own folder
    tc = state["train_config"]
    assert (tc["train_episodes"], tc["batch_size"], tc["learning_rate"]) == (6, 32, 3e-3)
    assert state["world_config"]["frames"] == 12 and state["world_config"]["boids_max"] == 12
    assert state["scheduler"]["base"] == [3e-3, 3e-3]
    lr_kept = state["history"][-1]["lr"]

    r = _cli("--resume", "run2/checkpoint_epoch_2.pt", "--epochs", "3", "--learning_rate", "0.01",
             "--weight-decay", "0.5", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--learning_rate 0.01 (the checkpoint's run: 0.003)" in r.stdout
    state = ck.load_checkpoint_dict(tmp_path / "run2" / "checkpoint_epoch_3.pt")
    assert state["scheduler"]["base"] == [0.01, 0.01]
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [0.5, 0.0]
    assert state["train_config"]["learning_rate"] == 0.01 and state["train_config"]["weight_decay"] == 0.5
    assert state["history"][-1]["lr"] == pytest.approx(lr_kept * 0.01 / 3e-3)   # epoch 3 ran on the new peak


def test_set_schedule_keeps_the_schedules_place(tmp_path):
    t = _trainer(tmp_path)
    t.train(2)
    t.scheduler.total = 4
    t.scheduler.set_progress(2.0)
    before = t.optimizer.param_groups[0]["lr"]
    t.set_schedule(learning_rate=6e-3, weight_decay=0.2)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(2 * before)
    assert [g["weight_decay"] for g in t.optimizer.param_groups] == [0.2, 0.0]
    t.set_schedule(min_lr_ratio=1.0)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(6e-3)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        t.set_schedule(learning_rate=0.0)


def test_load_checkpoint_restores_the_runs_schedule_not_the_trainers_own(tmp_path):
    """A trainer made with other settings and resumed from a checkpoint goes on with the run's peak
    learning rate, warm-up and floor (it kept its own, and the resumed run silently trained at
    another rate)."""
    run = _trainer(tmp_path)
    run.set_schedule(warmup_epochs=2.0, min_lr_ratio=0.2)
    run.train(3)
    path = run.save_checkpoint(tmp_path / "c3.pt")
    gen = EpisodeGenerator(TINY_WORLD, seed=0, progress=False)
    from predlab.train import EpisodeSource
    other = SupervisedTrainer(TransformerPredator(), EpisodeSource(gen, 6), gen.generate(4, stream=0),
                              learning_rate=1e-4, warmup_epochs=0.5, min_lr_ratio=0.0, batch_size=32, device="cpu")
    other.load_checkpoint(path)
    # the run's length too, until train(N) sets it: the rate shown after a load is the run's (with
    # the trainer's own length of 1 it showed the floor)
    assert other.scheduler.state_dict() == run.scheduler.state_dict()
    assert [g["lr"] for g in other.optimizer.param_groups] == [g["lr"] for g in run.optimizer.param_groups]
    assert (other.scheduler.base, other.scheduler.warmup, other.scheduler.min_ratio) == ([3e-3] * 2, 2.0, 0.2)
    run.train(4)
    other.train(4)
    assert other.history[-1]["lr"] == run.history[-1]["lr"]


def test_the_learning_rate_warms_up_then_decays_over_the_whole_run(tmp_path):
    """Linear warm-up over warmup_epochs, then cosine decay to min_lr_ratio x peak spread over the
    epochs train() was asked for (a schedule left at its first length decayed within the first
    epoch after warm-up, and the run trained at the floor)."""
    class Rates(Callback):
        def __init__(self):
            self.seen = []

        def on_batch_end(self, trainer, step, loss):
            self.seen.append((trainer.epoch + 1, step, float(trainer.optimizer.param_groups[0]["lr"])))

    rates = Rates()
    t = _trainer(tmp_path, dropout=0.0, callbacks=[rates])     # peak 3e-3, warm-up 1 epoch, floor 0.05
    t.train(4)
    first = {e: lr for e, step, lr in rates.seen if step == 0}
    assert first[1] < 3e-3 / 10                               # warm-up starts near 0
    assert first[2] == pytest.approx(3e-3)                    # the peak, once warm-up is over
    assert first[3] == pytest.approx(3e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 3))))   # a third of the decay
    decay = [lr for e, step, lr in rates.seen if e >= 2]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert 3e-3 * 0.05 < decay[-1] < 3e-3 * 0.15


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "epochs"),
    (["--batch_size", "-4"], "batch_size"),
    (["--learning_rate", "nan"], "learning_rate"),
    (["--d_model", "50"], "divisible"),
    (["--device", "tpu"], "error: --device: unknown device 'tpu'"),       # once "device: ...", not the flag
    (["--resume", "missing.pt"], "no such checkpoint"),
    (["--log_dir", ""], "error: --log_dir: no folder name given"),                # once "no file name given"
    (["--checkpoint_dir", ""], "error: --checkpoint_dir: no folder name given"),
    (["--boids_max", "0"], "boids_max"),
    (["--epochs", "two"], "epochs"),
    (["--cpu_split", "-1"], "cpu_split"),
    (["--learning_rate", "0"], "must be > 0"),                 # once a traceback after the validation episodes
    (["--learning_rate", "-1"], "must be > 0, got -1"),        # once "must be >= 0.0", as if 0 were allowed
    (["--seed", "99999999999999999999"], "must be <= 9223372036854775807"),   # once an overflow in torch
    (["--boids_min", "10001", "--boids_max", "10001"], "must be <= 10000"),   # once a traceback from World.random
    (["--keep_checkpoints", "1" + "0" * 400], "keep_checkpoints must be a finite number"),   # once an OverflowError
    # a run that would never evaluate catches, so never write best_model.pt or model.js
    (["--select_best_by", "catch_ratio", "--eval_every", "0"], "--select_best_by catch_ratio needs --eval_every > 0"),
    # the catch check ran until killed; more epochs than a checkpoint may record
    (["--eval_frames", "1e30"], "--eval_frames/--eval-frames: must be <= 1000000, got 1e30"),
    (["--frames", "1000001", "--val_episodes", "1"], "--frames: must be <= 1000000"),
    (["--epochs", "1e30"], "--epochs: must be <= 9223372036854775806, got 1e30"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA GPU")]))
def test_cli_bad_values_exit_2_and_touch_nothing(tmp_path, monkeypatch, capsys, flags, message):
    """A bad flag is an argparse error (exit 2) raised before anything touches the disk."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    ckdir = tmp_path / "checkpoints"
    ckdir.mkdir()
    (ckdir / "best_model.pt").write_bytes(b"precious")
    argv = flags + ([] if "--epochs" in flags else ["--epochs", "1"]) + TINY_FLAGS
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
    assert _names(ckdir) == ["best_model.pt"]
    assert (ckdir / "best_model.pt").read_bytes() == b"precious"


def test_cli_flag_prefixes_name_one_flag_once(capsys):
    """--learn is --learning_rate (its dashed spelling is the same flag, not a second match); a
    prefix of two different flags is an error that names each of them once."""
    from predlab.train import build_parser
    a = build_parser().parse_args(["--learn", "0.001", "--batch-si", "64", "--train-ep", "7"])
    assert (a.learning_rate, a.batch_size, a.train_episodes) == (0.001, 64, 7)
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--l", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "ambiguous option: --l could match --learning_rate, --log_dir" in err


def _files(d: Path):
    """The files under d, less the lock a training run holds on its checkpoint folder."""
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name != LOCK_NAME)


def _names(d: Path):
    return [p.name for p in d.iterdir() if p.name != LOCK_NAME]


def test_a_new_run_moves_an_earlier_runs_files_aside(tmp_path, capsys):
    """A run in a folder with another run's files deletes and overwrites none of them, and keeps
    its own newest checkpoints (pruning once counted the earlier run's higher epochs)."""
    from predlab.train import Checkpointer
    d = tmp_path / "ck"
    first = _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=1, keep=3)])
    first.train(3)
    assert _files(d) == ["best_model.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "checkpoint_epoch_3.pt"]
    old = {p.name: p.read_bytes() for p in d.iterdir() if p.name != LOCK_NAME}
    second = _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=1, keep=1)])
    second.train(2)
    out = capsys.readouterr().out
    assert "moved 4 file(s) of an earlier run (" in out
    kept = sum(p.stat().st_size for p in (d / 'previous').rglob('*') if p.is_file())
    assert f"holds {kept / 2**20:,.1f} MiB" in out
    (prev,) = (d / "previous").iterdir()
    assert {p.name: p.read_bytes() for p in prev.iterdir()} == old
    assert sorted(n for n in _names(d) if (d / n).is_file()) == ["best_model.pt", "checkpoint_epoch_2.pt"]
    assert ck.load_checkpoint_dict(d / "checkpoint_epoch_2.pt")["epoch"] == 2
    second.train(3)          # the same run going on: nothing moves, its own epoch 2 is pruned
    assert sorted(n for n in _names(d) if (d / n).is_file()) == ["best_model.pt", "checkpoint_epoch_3.pt"]
    assert len(list((d / "previous").iterdir())) == 1


def test_a_new_runs_first_best_model_moves_the_earlier_one_aside_between_saves(tmp_path):
    """A new best in an epoch that writes no checkpoint_epoch_N.pt is this run's first write too:
    the earlier run's best_model.pt moves to previous/ first (overwritten, it was lost, and this
    run's own best went to previous/ in its place)."""
    d = tmp_path / "ck"
    _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=1)]).train(1)
    old = (d / "best_model.pt").read_bytes()
    _trainer(tmp_path, dropout=0.0, callbacks=[Checkpointer(d, save_every=5)]).train(2)
    (prev,) = (d / "previous").iterdir()
    assert (prev / "best_model.pt").read_bytes() == old
    assert (d / "best_model.pt").read_bytes() != old


def test_resuming_in_the_same_folder_keeps_the_run_up_to_that_epoch(tmp_path):
    from predlab.train import Checkpointer
    d = tmp_path / "ck"
    first = _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=1, keep=5)])
    first.train(3)
    kept = {n: (d / n).read_bytes() for n in ("checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt")}
    best_epoch = ck.load_checkpoint_dict(d / "best_model.pt")["epoch"]
    again = _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=1, keep=5)])
    again.load_checkpoint(d / "checkpoint_epoch_2.pt")
    again.train(4)
    for n, b in kept.items():                  # the resumed run's own history stays in place
        assert (d / n).read_bytes() == b
    moved = _files(d / "previous")
    assert [m.split("/")[1] for m in moved] == (["best_model.pt"] if best_epoch > 2 else []) + \
        ["checkpoint_epoch_3.pt"]             # the first run's epoch 3: not this run's to overwrite
    assert {p.name for p in d.iterdir() if p.is_file()} >= {"checkpoint_epoch_3.pt", "checkpoint_epoch_4.pt"}


@pytest.mark.parametrize("flag, make, message", [
    ("--checkpoint_dir", lambda t: (t / "afile").write_text("x") and t / "afile", "is not a directory"),
    ("--log_dir", lambda t: (t / "afile").write_text("x") and t / "afile" / "runs", "is a file"),
    ("--resume", lambda t: (t / "somedir").mkdir() or t / "somedir", "is a directory"),
    ("--resume", lambda t: (t / "model.js").write_text("// predlab export\nwindow.TRANSFORMER_PARAMS = {};\n")
     and t / "model.js", "a browser weight file (model.js / model.json), not a checkpoint"),   # once "another kind"
    ("--resume", lambda t: (t / "page.pt").write_text("const TRANSFORMER_PARAMS = {d_model: 48};\n")
     and t / "page.pt", "a browser weight file (model.js / model.json), not a checkpoint"),   # no comment first
    ("--resume", lambda t: (t / "strict.pt").write_text("'use strict';\nwindow['TRANSFORMER_PARAMS'] = {};\n")
     and t / "strict.pt", "a browser weight file (model.js / model.json), not a checkpoint"),
    ("--checkpoint_dir", lambda t: (t / "ck").mkdir() or (t / "ck" / "previous").write_text("x") and t / "ck",
     "previous exists and is not a directory"),                   # where earlier runs' files would go
    ("--checkpoint_dir", lambda t: (t / "dang").symlink_to(t / "nowhere") or t / "dang",     # tracebacks, once
     "a link to a folder that does not exist"),
    ("--checkpoint_dir", lambda t: (t / "ck" / LOCK_NAME).mkdir(parents=True) or t / "ck",
     f"{LOCK_NAME} of the checkpoint folder: Is a directory"),
])
def test_cli_unusable_paths_exit_2_before_training(tmp_path, monkeypatch, capsys, flag, make, message):
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    path = make(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--epochs", "1", flag, str(path), *TINY_FLAGS])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and flag in err and "Traceback" not in err
    assert len(err.splitlines()) == 2          # a one-line usage, then the error
    assert _files(tmp_path) == before


def test_cli_resumed_into_a_new_folder_still_exports(tmp_path):
    """Resumed elsewhere, a run whose epochs do not beat the old best still writes model.js."""
    first = _trainer(tmp_path, train_config=CLI_LIKE)
    first.train(2)
    first.best_metric = 0.0                    # nothing can beat it
    path = first.save_checkpoint(tmp_path / "c2.pt")
    r = _cli("--epochs", "3", "--resume", str(path), "--checkpoint_dir", "elsewhere", "--no-dagger",
             "--eval_every", "0", *SAME_VAL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "no epoch of this run beat" in r.stdout and "model of epoch 3" in r.stdout
    assert not (tmp_path / "elsewhere" / "best_model.pt").exists()
    from predlab.export import read_weights
    read_weights(tmp_path / "elsewhere" / "model.js")


def test_cli_export_command(tmp_path):
    t = _trainer(tmp_path)
    path = t.save_checkpoint(tmp_path / "c.pt")
    r = subprocess.run([sys.executable, "-m", "predlab.export", str(path), "--out", str(tmp_path / "m.js")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.js").read_text().startswith("// predlab export")
    r = subprocess.run([sys.executable, "-m", "predlab.export", str(tmp_path / "nope.pt"), "--out",
                        str(tmp_path / "x.js")], capture_output=True, text=True)
    assert r.returncode == 2 and "no such file" in r.stderr
    (tmp_path / "adir.js").mkdir()
    (tmp_path / "afile").write_text("x")
    for source, out, message in [(tmp_path, tmp_path / "x.js", "is a directory"),
                                 (path, tmp_path / "adir.js", "is a directory"),
                                 (path, tmp_path / "afile" / "m.js", "is a file"),
                                 (tmp_path / "afile", tmp_path / "y.js", "not a readable torch checkpoint")]:
        r = subprocess.run([sys.executable, "-m", "predlab.export", str(source), "--out", str(out)],
                           capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (source, out, r.stderr)
    assert not (tmp_path / "y.js").exists() and (tmp_path / "afile").read_text() == "x"


def test_dagger_resume_is_bit_identical(tmp_path):
    """With DAgger (the default) the aggregated samples travel in the checkpoint, so resume is exact."""
    def make(callbacks=()):
        return create_trainer(train_episodes=6, val_episodes=3, batch_size=32, device="cpu", verbose=False,
                              world_config=TINY_WORLD, eval_every=0, dagger=True, dagger_start=2,
                              callbacks=list(callbacks))
    straight = make()
    straight.train(4)
    first = make([StopAt(2)])
    first.train(4)
    path = first.save_checkpoint(tmp_path / "c2.pt")
    assert "data_source" in torch.load(path, weights_only=True)
    resumed = make()
    resumed.load_checkpoint(path)
    assert len(resumed.train_dataset.data) == len(first.train_dataset.data) > 0
    resumed.train(4)
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    light = first.save_checkpoint(tmp_path / "best.pt", include_data=False)
    assert "data_source" not in torch.load(light, weights_only=True)


def test_best_model_pt_leaves_out_the_dagger_samples_that_epoch_checkpoints_carry(tmp_path):
    """best_model.pt is written at almost every epoch and only read for its model: it goes without
    DAgger's aggregated samples (two epochs' worth, the bulk of a checkpoint), which
    checkpoint_epoch_N.pt carries so that a run resumes exactly."""
    d = tmp_path / "ck"
    t = create_trainer(train_episodes=6, val_episodes=3, batch_size=32, device="cpu", verbose=False,
                       world_config=TINY_WORLD, eval_every=0, dagger=True, dagger_start=1,
                       callbacks=[Checkpointer(d, save_every=1)])
    t.train(1)
    assert "data_source" not in torch.load(d / "best_model.pt", weights_only=True)
    assert len(torch.load(d / "checkpoint_epoch_1.pt", weights_only=True)["data_source"]["dagger_buffer"]["n"]) > 0


class InterruptAt(Callback):
    """Ctrl-C once, at a point of one epoch: after a step of it (before any of its files), or at its end."""

    def __init__(self, epoch, step=None):
        self.epoch, self.step, self.done = epoch, step, False

    def on_batch_end(self, trainer, step, loss):
        if not self.done and self.step is not None and trainer.epoch + 1 == self.epoch and step == self.step:
            self.done = True
            raise KeyboardInterrupt

    def on_epoch_end(self, trainer, epoch, logs):
        if not self.done and self.step is None and epoch == self.epoch:
            self.done = True
            raise KeyboardInterrupt


@pytest.mark.parametrize("epoch, step", [(3, 2), (3, None), (1, 1)])   # (1, 1): AdamW's state made in the cut epoch
def test_an_epoch_cut_by_ctrl_c_is_undone_so_training_again_goes_on_exactly(tmp_path, epoch, step):
    """A notebook's cell run again after an interrupt went on from the middle of the cut epoch: its
    steps stayed in the weights, optimizer and schedule, and DAgger added that epoch's episodes to
    its buffer a second time (dropping older ones), so the run ended elsewhere than an
    uninterrupted one. A cut epoch is now undone, also one cut in its callbacks after the weights
    were final (step None: in on_epoch_end, say while checkpoints are written)."""
    def make(callbacks=()):
        return create_trainer(train_episodes=6, val_episodes=3, batch_size=16, device="cpu", verbose=False,
                              world_config=TINY_WORLD, eval_every=0, dagger=True, dagger_start=2, dagger_buffer=150,
                              model_config={"dropout": 0.1}, callbacks=list(callbacks))
    straight = make()
    straight.train(4)
    cut = make([InterruptAt(epoch, step)])
    with pytest.raises(KeyboardInterrupt):
        cut.train(4)
    assert cut.epoch == epoch - 1 and len(cut.history) == epoch - 1
    assert len(cut.train_dataset.data) <= 150
    cut.train(4)                                        # the cell run again
    for (k, a), b in zip(straight.model.state_dict().items(), cut.model.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(straight.optimizer.state.values(), cut.optimizer.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_loss"] for h in straight.history] == [h["val_loss"] for h in cut.history]
    assert torch.equal(straight.train_dataset.data.target, cut.train_dataset.data.target)
    # the best and the early-stopping count too: a cut epoch's improvement counted again as none
    assert (cut.best_metric, cut.best_epoch, cut.bad_epochs) == \
        (straight.best_metric, straight.best_epoch, straight.bad_epochs)


def test_an_epoch_that_diverged_is_undone(tmp_path):
    """The trainer goes back to the weights the last finished epoch left, not the NaN ones: a notebook
    can lower the learning rate and go on."""
    from predlab.train import TrainingDiverged
    t = _trainer(tmp_path, dropout=0.0)
    t.train(1)
    good = copy.deepcopy(t.model.state_dict())

    class Poison(Callback):
        def on_batch_end(self, trainer, step, loss):
            with torch.no_grad():
                trainer.model.output.weight.fill_(math.nan)
    t.callbacks.append(Poison())
    with pytest.raises(TrainingDiverged, match="the trainer is back where the last finished epoch left it") as e:
        t.train(2)
    # the notebook's controls reach only a new trainer: set_schedule is not there to call
    assert "set_schedule(learning_rate=...)" in str(e.value) and "move the learning-rate slider down and build the " \
        "trainer again" in str(e.value)
    assert t.epoch == 1 and len(t.history) == 1
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, good[k]), k
    t.callbacks.pop()                      # what a notebook does next: a lower rate, and on
    t.set_schedule(learning_rate=1e-3)
    t.train(2)
    assert t.epoch == 2 and math.isfinite(t.history[-1]["val_loss"])


@pytest.mark.parametrize("edit, message", [
    (lambda b: b["n"].__setitem__(0, b["n"][0] + 3), "do not fit"),
    # these loaded, then failed inside the next epoch: a dtype error, or "contains NaN", as tracebacks
    (lambda b: b.__setitem__("context", b["context"].double()), "context is torch.float64, not float32"),
    (lambda b: b.__setitem__("target", torch.full_like(b["target"], math.nan)), "target contains NaN"),
    # these trained silently, or asked for 20 GB from a 76 KB file
    (lambda b: b.__setitem__("target", b["target"] * 100), r"targets reach beyond \[-1, 1\]"),
    (lambda b: b.__setitem__("boids", torch.zeros(1, 4).expand(len(b["boids"]), 4)), "boids shows more values than"),
    (lambda b: (b.__setitem__("n", torch.full_like(b["n"], 10 ** 9)),
                b.__setitem__("boids", torch.zeros(1, 4).expand(10 ** 9 * len(b["n"]), 4))), "boids shows more"),
    (lambda b: b.pop("n"), "stored samples lack n "),
    # one flock of 10^6 boids (16 MB in the file) padded every sample to it, on a machine of 256 MiB
    (lambda b: (b.__setitem__("boids", torch.cat([torch.zeros(10 ** 6 - int(b["n"][0]), 4), b["boids"]])),
                b["n"].__setitem__(0, 10 ** 6)), r"the stored samples would need about .* padded to 1,000,000 boids")])
def test_tampered_dagger_samples_are_refused(tmp_path, edit, message, monkeypatch):
    """A refused checkpoint leaves the trainer's DAgger samples as they were. The test edited
    state_dict()'s tensors in place, which are the buffer's own: the edit reached the trainer, and
    whether the rollback could restore it depended on the episodes drawn."""
    t = create_trainer(train_episodes=4, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD,
                       eval_every=0, dagger=True)
    t.train(1)
    before = copy.deepcopy(t.train_dataset.data.state_dict())
    state = copy.deepcopy(t.state_dict())
    edit(state["data_source"]["dagger_buffer"])
    torch.save(state, tmp_path / "bad.pt")
    from predlab import config
    monkeypatch.setattr(config, "physical_memory", lambda: 2 ** 28)
    with pytest.raises(ck.CheckpointError, match=message):
        t.load_checkpoint(tmp_path / "bad.pt")
    for k, v in t.train_dataset.data.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_graph_ready_optimizer_starts_as_a_fresh_one(tmp_path):
    """What CUDA graphs need of AdamW (state made before any capture, learning rates as tensors
    that the scheduler fills) leaves the weights untouched, and the first step after it equals
    a fresh optimizer's first step; checkpoints still hold plain float learning rates."""
    steps = []
    for prepare in (False, True):
        t = _trainer(tmp_path, dropout=0.0)
        before = [p.detach().clone() for p in t.model.parameters()]
        if prepare:
            t._prepare_graph_optimizer()
            assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters()))
            assert all(isinstance(g["lr"], torch.Tensor) and g["capturable"] for g in t.optimizer.param_groups)
            sd = t._optimizer_state()
            assert all(isinstance(g["lr"], float) and not g["capturable"] for g in sd["param_groups"])
        t.scheduler.set_progress(0.5)
        assert float(t.optimizer.param_groups[0]["lr"]) == pytest.approx(t.scheduler.base[0] * t.scheduler.factor(0.5))
        b = next(t._batches(t.train_dataset.for_epoch(0, t), shuffle=False))
        loss = torch.nn.functional.mse_loss(t.model(b), b["target"])
        t.optimizer.zero_grad()
        loss.backward()
        t._clip_and_step()
        steps.append([p.detach().clone() for p in t.model.parameters()])
    for a, b in zip(*steps):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


def test_a_rate_written_over_the_graphs_tensors_reaches_the_next_replay(tmp_path):
    """CUDA-graphed steps read the learning-rate tensors made for them. A float written into param_groups (a
    callback, a torch.optim.lr_scheduler) replaced the tensor: the schedule then wrote floats, and every replayed
    step ran at the tensor's last rate for the rest of the run. Before a replay the tensors come back, filled."""
    t = _trainer(tmp_path, dropout=0.0)
    t._prepare_graph_optimizer()
    read = [g["lr"] for g in t.optimizer.param_groups]         # what a capture reads
    t.optimizer.param_groups[0]["lr"] = 1e-5
    for progress in (0.9, 1.5):
        t.scheduler.set_progress(progress)
        t._restore_graph_lrs()
        rate = t.scheduler.base[0] * t.scheduler.factor(progress)
        assert [g["lr"] for g in t.optimizer.param_groups] == read and float(read[0]) == pytest.approx(rate)


def test_graph_ready_optimizer_keeps_the_state_it_has(tmp_path):
    """Making AdamW replayable (CUDA graphs) creates the state of the weights that have none (a
    frozen weight, after the others trained eagerly or came from a checkpoint) and leaves the
    others' moments and step counts as they were: its zero-gradient step had decayed every moment
    and reset every step count, so the next steps restarted AdamW's bias correction."""
    t = _trainer(tmp_path, dropout=0.0)
    frozen = t.model.type_embeddings.requires_grad_(False)
    b = next(t._batches(t.train_dataset.for_epoch(0, t), shuffle=False))
    for _ in range(2):                                        # eager steps, as a CPU run or a last batch makes
        loss = torch.nn.functional.mse_loss(t.model(b), b["target"])
        t.optimizer.zero_grad()
        loss.backward()
        t._clip_and_step()
    assert frozen not in t.optimizer.state
    state = {p: {k: v.clone() for k, v in st.items()} for p, st in t.optimizer.state.items()}
    weights = [p.detach().clone() for p in t.model.parameters()]
    t._prepare_graph_optimizer()
    assert all(torch.equal(a, b) for a, b in zip(weights, t.model.parameters()))
    for p, st in state.items():
        for k, v in st.items():
            assert torch.equal(t.optimizer.state[p][k].to(v.device, v.dtype), v), k
    assert float(t.optimizer.state[frozen]["step"]) == 0
    assert not t.optimizer.state[frozen]["exp_avg"].any() and not t.optimizer.state[frozen]["exp_avg_sq"].any()


def test_tf32_is_on_only_inside_training_steps(tmp_path):
    """--tf32: TF32 products in the epoch's training steps only (a GPU setting, so a CPU trainer
    ignores the flag); torch's own setting comes back after the epoch, for validation, rollouts
    and the user's code, and after a step that fails."""
    from predlab.train import create_trainer
    t = create_trainer(train_episodes=2, val_episodes=1, batch_size=32, device="cpu", verbose=False,
                       world_config=TINY_WORLD, tf32=True)
    assert t.train_config.tf32 and not t.tf32                 # on a CPU: nothing to switch

    class Seen(Callback):
        def __init__(self):
            self.flags = []

        def on_batch_end(self, trainer, step, loss):
            self.flags.append(torch.backends.cuda.matmul.allow_tf32)
            if len(self.flags) == 2 and trainer.fail:
                raise RuntimeError("a failing step")

    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for outside in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = outside
            seen = Seen()
            t = _trainer(tmp_path, dropout=0.0, callbacks=[seen])
            t.tf32, t.fail = True, outside                    # as on a GPU
            data = t.train_dataset.for_epoch(0, t)
            if outside:
                with pytest.raises(RuntimeError, match="a failing step"):
                    t.train_epoch(data)
            else:
                t.train_epoch(data)
            assert seen.flags and all(seen.flags), seen.flags
            assert torch.backends.cuda.matmul.allow_tf32 is outside
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def test_two_runs_in_one_second_log_to_two_folders(tmp_path, monkeypatch):
    from predlab import train as T
    monkeypatch.setattr(T.time, "strftime", lambda *a: "20260101-000000")
    loggers = [T.TensorBoardLogger(tmp_path) for _ in range(2)]
    for lg in loggers:
        lg.on_train_begin(None)
    try:
        assert [lg.path.name for lg in loggers] == ["20260101-000000", "20260101-000000-2"]
    finally:
        for lg in loggers:
            lg.on_train_end(None)


def test_a_trainer_trained_again_logs_into_its_runs_folder(tmp_path):
    """train() again on the same trainer (a notebook's cell run again, or more epochs) made a second
    TensorBoard folder, though the README promises one folder per run."""
    from predlab import train as T
    logger = T.TensorBoardLogger(tmp_path / "runs")
    t = _trainer(tmp_path, callbacks=[logger])
    t.train(1)
    t.train(2)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [logger.path.name]
    other = _trainer(tmp_path, callbacks=[logger])      # another trainer: another run, another folder
    other.train(1)
    assert len(list((tmp_path / "runs").iterdir())) == 2


@pytest.mark.parametrize("records", [0, 3])      # a full disk from the start; one that fills as the run goes
def test_a_tensorboard_log_that_cannot_be_written_stops_the_logging_not_the_run(tmp_path, monkeypatch, capfd, records):
    """A full disk under the TensorBoard folder ended the run with the writer thread's traceback
    and "[Errno 28] No space left on device" naming nothing; the checkpoints, on another disk,
    could have been written. Now one warning names the run's folder and training goes on."""
    from tensorboard.summary.writer import record_writer
    from predlab import train as T
    real, written = record_writer.RecordWriter.write, []

    def write(self, data):
        if len(written) >= records:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(data)
        return real(self, data)
    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    logger = T.TensorBoardLogger(tmp_path / "runs")
    t = _trainer(tmp_path, callbacks=[logger, Checkpointer(tmp_path / "ck", save_every=1)])
    t.train(3)
    assert t.epoch == 3 and (tmp_path / "ck" / "checkpoint_epoch_3.pt").is_file()
    err = capfd.readouterr().err
    assert err.count(f"warning: TensorBoard logging stopped, training goes on: cannot write {logger.path}: "
                     f"{os.strerror(errno.ENOSPC)}") == 1
    assert "Traceback" not in err and "Exception in thread" not in err, err


def test_a_checkpoint_changed_on_disk_is_refused(tmp_path):
    """torch.load does not check the archive's CRCs; predlab does, so flipped bytes are caught."""
    path = _trainer(tmp_path).save_checkpoint(tmp_path / "c.pt")
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64)
    raw = bytearray(path.read_bytes())
    h = info.header_offset                    # the local header: its name and extra lengths, then the data
    at = h + 30 + int.from_bytes(raw[h + 26:h + 28], "little") + int.from_bytes(raw[h + 28:h + 30], "little") + 8
    raw[at:at + 4] = bytes(b ^ 0xFF for b in raw[at:at + 4])
    path.write_bytes(bytes(raw))
    with pytest.raises(ck.CheckpointError, match="fails its CRC check"):
        ck.load_checkpoint_dict(path)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["model_config"].__setitem__("d_model", "48"), "d_model must be a whole number"),
    (lambda s: s["model_config"].__setitem__("d_model", 48.0), "d_model must be a whole number"),
    (lambda s: s["model_config"].__setitem__("dropout", None), "dropout must be a number"),
    (lambda s: s["model"].__setitem__("output.weight", s["model"]["output.weight"].long()), "not floating point"),
    (lambda s: s["model"].__setitem__("output.bias", torch.tensor([1e39, 0.0], dtype=torch.float64)),
     "NaN or infinity"),
    (lambda s: s.__setitem__("train_config", None), "'train_config' is NoneType, not a dict"),
    (lambda s: s.__setitem__("epoch", -3), "'epoch' must be a whole number >= 0"),
    (lambda s: s.__setitem__("epoch", "2"), "'epoch' must be a whole number >= 0"),
    # a checkpoint of another format version, whose fields this predlab would misread: which side to change
    (lambda s: s.__setitem__("version", 2), "checkpoint version 2, written by a newer predlab; this one reads "
                                            "version 1: update predlab"),
    (lambda s: s.__setitem__("version", 0), r"checkpoint version 0, which no predlab writes \(this one writes and "
                                            r"reads version 1\): the file is damaged, or not predlab's"),
    (lambda s: s.__setitem__("version", "2"), "checkpoint version '2', which no predlab writes"),
    (lambda s: s.__setitem__("version", 1.5), "checkpoint version 1.5, which no predlab writes"),
    (lambda s: s.__setitem__("version", True), "checkpoint version True, which no predlab writes"),
    (lambda s: s.__setitem__("version", 1.0), "checkpoint version 1.0, which no predlab writes"),
    (lambda s: s.pop("version"), "checkpoint version None, which no predlab writes"),
])
def test_tampered_checkpoint_contents_are_named(tmp_path, edit, message):
    path = _trainer(tmp_path).save_checkpoint(tmp_path / "c.pt")
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    with pytest.raises(ck.CheckpointError, match=message):
        ck.load_model(path)


@pytest.mark.parametrize("edit", [lambda s: s.__setitem__("history", [1, 2]),
                                  lambda s: s.__setitem__("epoch", "x"),
                                  lambda s: s.__setitem__("best_epoch", float("inf")),   # OverflowError
                                  lambda s: s["scheduler"].__setitem__("base", ["x", "y"]),
                                  lambda s: s["scheduler"].__setitem__("base", [1e-3]),    # zip dropped a group
                                  # the values of the training state: a moment of another shape crashed the
                                  # fused AdamW step (a segmentation fault); NaN ones, a NaN beta or learning
                                  # rate gave NaN weights, a negative learning rate gradient ascent, a NaN best
                                  # never let best_model.pt be written again; all without a word
                                  lambda s: s["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(3)),
                                  lambda s: s["optimizer"]["state"][0].__setitem__("exp_avg", "x"),
                                  lambda s: s["optimizer"]["state"][0]["exp_avg_sq"].fill_(math.nan),
                                  # a negative mean of squares: NaN weights from its square root, blamed on
                                  # the learning rate
                                  lambda s: s["optimizer"]["state"][0]["exp_avg_sq"].fill_(-1e-3),
                                  lambda s: s["optimizer"]["state"][0].__setitem__("step", torch.tensor(-5.0)),
                                  lambda s: s["optimizer"]["param_groups"][0].__setitem__("betas", (math.nan, 0.9)),
                                  lambda s: s["optimizer"]["param_groups"][1].__setitem__("maximize", True),
                                  # weight decay x learning rate of 1 or more: each step scaled the weights by a
                                  # factor below 0 (resuming it with the CLI ended in a traceback)
                                  lambda s: s["optimizer"]["param_groups"][0].__setitem__("weight_decay", 1e30),
                                  lambda s: s["scheduler"].__setitem__("base", [math.nan] * 2),
                                  lambda s: s["scheduler"].__setitem__("base", [-1e-3] * 2),
                                  lambda s: s["scheduler"].__setitem__("warmup", math.nan),
                                  # a final ratio below 0 ends the schedule at a negative learning rate
                                  lambda s: s["scheduler"].__setitem__("min_ratio", -0.5),
                                  lambda s: s["scheduler"].__setitem__("total", math.inf),
                                  lambda s: s["scheduler"].__setitem__("total", 0),
                                  lambda s: s.__setitem__("best_metric", math.nan),
                                  lambda s: s.__setitem__("best_metric", -math.inf),
                                  # below any MSE: the run trained on and exported the checkpoint's best
                                  lambda s: s.__setitem__("best_metric", -1.0),
                                  lambda s: s.update(monitor="neg_catch_ratio", best_metric=0.5)])
def test_a_checkpoint_that_does_not_fit_leaves_the_trainer_unchanged(tmp_path, edit):
    donor = _trainer(tmp_path)
    donor.train(1)
    state = donor.state_dict()
    edit(state)
    torch.save(state, tmp_path / "bad.pt")
    t = _trainer(tmp_path)
    before = copy.deepcopy(t.state_dict())
    with pytest.raises(ck.CheckpointError, match="the trainer is unchanged|must be"):
        t.load_checkpoint(tmp_path / "bad.pt")
    after = t.state_dict()
    for k, v in before["model"].items():
        assert torch.equal(v, after["model"][k]), k
    assert after["optimizer"]["state"] == {} and after["epoch"] == 0 and t.resumed_from is None
    assert after["scheduler"] == before["scheduler"]


def test_a_trainer_given_another_optimizer_loads_its_own_checkpoint(tmp_path):
    """The checks of the AdamW state are AdamW's: a trainer whose optimizer was replaced by SGD
    (with a schedule for it) saved and loaded checkpoints before them, and then refused its own
    ("betas None"), undoing the load with the same error out of the undo itself."""
    from predlab.train import WarmupCosine
    t = _trainer(tmp_path, dropout=0.0)
    t.optimizer = torch.optim.SGD(t.model.parameters(), lr=1e-3, momentum=0.9)
    t.scheduler = WarmupCosine(t.optimizer, 1)
    t.train(1)
    path = t.save_checkpoint(tmp_path / "sgd.pt")
    saved = {k: v.clone() for k, v in t.model.state_dict().items()}
    with torch.no_grad():
        for p in t.model.parameters():
            p.zero_()
    t.load_checkpoint(path)
    for k, v in saved.items():
        assert torch.equal(t.model.state_dict()[k], v), k
    assert t.epoch == 1 and all("momentum_buffer" in s for s in t.optimizer.state.values())


@pytest.mark.parametrize("kw, message", [({"warmup_epochs": math.nan}, "warmup_epochs"),
                                         ({"weight_decay": -1.0}, "weight_decay"),
                                         ({"min_lr_ratio": -1.0}, "min_lr_ratio"),
                                         ({"min_delta": math.nan}, "min_delta"),
                                         ({"batch_size": 2.5}, "batch_size must be a whole number"),
                                         ({"learning_rate": True}, "learning_rate must be a number"),
                                         ({"learning_rate": np.float32("inf")}, "learning_rate must be a finite"),
                                         ({"cpu_split": 2.5}, "cpu_split must be a whole number"),
                                         ({"cpu_split": "2"}, "cpu_split must be a whole number"),
                                         ({"cpu_split": -1}, "cpu_split must be >= 0")])
def test_trainer_arguments_are_checked_like_the_cli_flags(tmp_path, kw, message):
    t = _trainer(tmp_path)
    with pytest.raises(ValueError, match=message):
        SupervisedTrainer(t.model, t.train_dataset, t.val_dataset, device="cpu", **kw)


@pytest.mark.parametrize("which, value, message", [
    ("model", "model.js", "model must be a TransformerPredator, not str"),
    ("train_dataset", [1, 2], "train_dataset must be a SampleSet or have for_epoch.*not list"),
    ("val_dataset", None, "val_dataset must be a SampleSet, not NoneType")])
def test_trainer_arguments_of_the_wrong_kind_are_named(tmp_path, which, value, message):
    """Each was taken, and failed later with an AttributeError ('NoneType' object has no attribute
    'check'), the datasets only once train() was called."""
    t = _trainer(tmp_path)
    args = {"model": t.model, "train_dataset": t.train_dataset, "val_dataset": t.val_dataset, which: value}
    with pytest.raises(TypeError, match=message):
        SupervisedTrainer(**args, device="cpu")


def test_bad_training_data_and_epoch_counts_are_named(tmp_path):
    t = _trainer(tmp_path)
    with pytest.raises(ValueError, match="num_epochs must be a whole number"):
        t.train(2.5)
    with pytest.raises(ValueError, match="num_epochs must be a whole number >= 1, got 0"):
        t.train(0)
    t.train(np.int64(1))      # a count from numpy ("got np.int64(1)" said it was no whole number)
    assert t.epoch == 1 and type(torch.load(t.save_checkpoint(tmp_path / "c.pt"), weights_only=True)
                                 ["train_config"]["epochs"]) is int
    s = t.val_dataset
    nan = SampleSet(s.context, s.predator, s.boids.clone(), s.n, s.target)
    nan.boids[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="train_dataset.boids contains NaN"):
        SupervisedTrainer(t.model, nan, s, device="cpu")
    with pytest.raises(ValueError, match="val_dataset holds no samples"):
        SupervisedTrainer(t.model, s, SampleSet.empty(), device="cpu").train(1)


def test_training_to_an_epoch_already_reached_says_so_and_changes_nothing(tmp_path):
    """train(N) counts epochs from the start of the run: called again once the run is there (a
    notebook's training cell run twice), it says so instead of returning as if it had trained."""
    t = _trainer(tmp_path)
    history = t.train(2)
    lr, total = t.optimizer.param_groups[0]["lr"], t.scheduler.total
    for n in (1, 2):
        with pytest.warns(UserWarning, match=r"already trained 2 epoch\(s\).*train\(12\) trains 10 more"):
            assert t.train(n) == history
    assert (t.epoch, len(t.history), t.optimizer.param_groups[0]["lr"], t.scheduler.total) == (2, 2, lr, total)
    t.train(3)
    assert t.epoch == 3


def test_training_works_when_the_user_set_tf32_through_torchs_newer_api(tmp_path):
    """torch refuses to read allow_tf32 once fp32_precision was set: training read it every epoch
    and crashed, on any device. Now it is left alone without --tf32, and set through the API the
    user chose with it."""
    m = torch.backends.cuda.matmul
    old = m.fp32_precision
    try:
        m.fp32_precision = "tf32"
        t = _trainer(tmp_path, dropout=0.0)
        t.train_epoch(t.train_dataset.for_epoch(0, t))
        seen = []

        class Seen(Callback):
            def on_batch_end(self, trainer, step, loss):
                seen.append(m.fp32_precision)

        m.fp32_precision = "ieee"
        t = _trainer(tmp_path, dropout=0.0, callbacks=[Seen()])
        t.tf32 = True                                         # as on a GPU
        t.train_epoch(t.train_dataset.for_epoch(0, t))
        assert seen and set(seen) == {"tf32"} and m.fp32_precision == "ieee"
    finally:
        m.fp32_precision = old


def test_a_throwaway_run_replaces_the_earlier_runs_files(tmp_path):
    from predlab.train import Checkpointer
    d = tmp_path / "quick"
    _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=1, archive=False)]).train(2)
    _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=1, archive=False)]).train(1)
    assert _files(d) == ["best_model.pt", "checkpoint_epoch_1.pt"]
    assert ck.load_checkpoint_dict(d / "checkpoint_epoch_1.pt")["history"][-1]["epoch"] == 1


def test_every_allowed_seed_trains(tmp_path):
    """The largest seed the CLI takes trains (its shuffling seed once overflowed torch's int64)."""
    from predlab.config import SEED_MAX
    t = _trainer(tmp_path)
    t.seed = SEED_MAX
    logs = t.train_epoch(t.train_dataset.for_epoch(0, t))
    assert math.isfinite(logs["train_loss"])
    with pytest.raises(ValueError, match="seed must be <="):
        SupervisedTrainer(t.model, t.train_dataset, t.val_dataset, seed=SEED_MAX + 1, device="cpu")


def test_cli_ctrl_c_exports_the_best_model_and_exits_130(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "predlab.train", "--epochs", "200", *TINY_FLAGS], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in p.stdout:                  # wait for a finished epoch, so that a best model exists
            if line.startswith("epoch    2"):
                break
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    # in epoch 3, or after epoch 2 where the Ctrl-C came as epoch 2's files were written
    assert re.search(r"interrupted (in epoch 3|after epoch 2):", out) and "browser weights" in out
    from predlab.export import read_weights
    read_weights(tmp_path / "checkpoints" / "model.js")


def test_cli_ctrl_c_between_epochs_says_after_which_and_saves_it(tmp_path, monkeypatch, capsys):
    """A Ctrl-C as epoch 2 began, before anything of it had run: the run said "in epoch 2", an epoch it
    had not begun, and (before that) left no checkpoint of epoch 1."""
    from conftest import ctrl_c_as_epoch_begins
    from predlab import train as tr
    ctrl_c_as_epoch_begins(monkeypatch, 2)
    monkeypatch.chdir(tmp_path)
    assert tr.main(["--epochs", "3", "--save_every", "5", *TINY_FLAGS[:-3], "--quiet"]) == 130
    out = capsys.readouterr().out
    assert "interrupted after epoch 1: the checkpoints saved so far are intact" in out
    assert (tmp_path / "checkpoints" / "checkpoint_epoch_1.pt").is_file()


def test_a_run_saves_every_save_every_epochs_and_its_last_epoch(tmp_path):
    """checkpoint_epoch_N.pt at every save_every-th epoch, and at the run's last epoch whatever its
    number, so that a finished run can be resumed for more epochs from where it ended."""
    d = tmp_path / "ck"
    t = _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=2, keep=5)])
    t.train(5)
    assert sorted(n for n in _names(d) if n.startswith("checkpoint_")) == \
        ["checkpoint_epoch_2.pt", "checkpoint_epoch_4.pt", "checkpoint_epoch_5.pt"]
    again = _trainer(tmp_path)
    again.load_checkpoint(d / "checkpoint_epoch_5.pt")
    assert again.epoch == 5


def test_an_early_stopped_run_leaves_a_checkpoint_to_resume_from(tmp_path, capsys):
    from predlab.train import Checkpointer, EarlyStopping
    d = tmp_path / "ck"
    t = _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=5), EarlyStopping(1)])
    t.min_delta = 10.0                         # nothing counts as an improvement after the first epoch
    t.train(6)
    assert t.epoch == 2
    assert re.search(r"no improvement of more than 10 on val MSE 0\.\d{5} for 1 epoch \(best: val MSE",
                     capsys.readouterr().out)
    assert sorted(_names(d)) == ["best_model.pt", "checkpoint_epoch_2.pt"]
    again = _trainer(tmp_path)
    again.load_checkpoint(d / "checkpoint_epoch_2.pt")
    assert again.epoch == 2 and again.bad_epochs == 1


def test_describe_best_speaks_the_users_terms():
    assert ck.describe_best("val_loss", 0.0015, 27) == "val MSE 0.00150 at epoch 27"
    assert ck.describe_best("neg_catch_ratio", -0.5, 5) == "catch ratio 0.5000 at epoch 5"
    assert ck.describe_best("neg_catch_ratio", math.inf, 0) == "none yet"


def test_cli_shows_no_bars_in_a_log_unless_asked(tmp_path):
    """Output captured to a file or pipe (not a terminal): epoch lines, not redrawn bars."""
    r = _cli("--epochs", "1", *[f for f in TINY_FLAGS if f != "--quiet"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "epoch    1" in r.stdout and "%|" not in r.stderr          # no tqdm bar
    r = _cli("--epochs", "1", "--progress", "--checkpoint_dir", "b", *[f for f in TINY_FLAGS if f != "--quiet"],
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "%|" in r.stderr


def test_ctrl_c_in_a_resumed_run_exports_a_finished_epoch(tmp_path, monkeypatch, capsys):
    """Resumed elsewhere with no new best, a Ctrl-C once exported the weights in memory: half an epoch."""
    from predlab.export import read_weights
    from predlab.train import main
    first = _trainer(tmp_path, train_config=CLI_LIKE)
    first.train(2)
    first.best_metric = 0.0                    # nothing can beat it
    path = first.save_checkpoint(tmp_path / "c2.pt")
    train_epoch = SupervisedTrainer.train_epoch

    def cut_in_epoch_4(self, data):
        if self.epoch == 3:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.add_(1.0)                # steps taken, epoch unfinished
            raise KeyboardInterrupt
        return train_epoch(self, data)

    monkeypatch.setattr(SupervisedTrainer, "train_epoch", cut_in_epoch_4)
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "6", "--resume", str(path), "--checkpoint_dir", "elsewhere", "--no-dagger",
                 "--eval_every", "0", *SAME_VAL]) == 130
    assert "exporting the model of epoch 3" in capsys.readouterr().out
    exported, saved = read_weights("elsewhere/model.js"), ck.load_model("elsewhere/checkpoint_epoch_3.pt")
    for a, b in zip(exported.state_dict().values(), saved.state_dict().values()):
        assert torch.equal(a, b)


def test_ctrl_c_in_a_run_resumed_in_its_folder_exports_after_pruning_the_checkpoint_it_resumed(tmp_path,
                                                                                               monkeypatch, capsys):
    """--keep_checkpoints had removed the checkpoint the run resumed from: a Ctrl-C then ended in a
    FileNotFoundError traceback from the export, which read that file, and wrote no model.js. The
    folder holds no best_model.pt, and no epoch beats the best resumed (epoch 2's): the best model,
    whose only file was the one removed, is written as best_model.pt at the run's first write, and
    model.js is of it."""
    from predlab.export import read_weights
    from predlab.train import main
    first = _trainer(tmp_path, train_config=CLI_LIKE)
    first.train(2)
    first.best_metric, first.best_epoch = 0.0, 2       # nothing can beat it
    first.save_checkpoint(tmp_path / "ck" / "checkpoint_epoch_2.pt")
    resumed = {k: v.clone() for k, v in first.model.state_dict().items()}
    ctrl_c_in_epoch(monkeypatch, 4)
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "6", "--resume", "ck/checkpoint_epoch_2.pt", "--keep_checkpoints", "1", "--no-dagger",
                 "--eval_every", "0", *SAME_VAL]) == 130
    assert "best val MSE 0.00000 at epoch 2" in capsys.readouterr().out
    assert not (tmp_path / "ck" / "checkpoint_epoch_2.pt").exists()
    assert ck.load_checkpoint_dict("ck/best_model.pt")["epoch"] == 2
    exported = read_weights("ck/model.js").state_dict()
    assert all(torch.equal(exported[k], v) for k, v in resumed.items())


def test_ctrl_c_then_resume_in_its_folder_goes_on_as_the_uninterrupted_run_with_dropout(tmp_path, monkeypatch):
    """The resume read the folder's best_model.pt (to tell its own model.js), and building that model drew torch's
    random numbers after the checkpoint had restored them: every later dropout mask differed from the run's."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    flags = ["--epochs", "3", "--dropout", "0.1", "--no-dagger", "--eval_every", "0", *TINY_FLAGS]
    assert main([*flags, "--checkpoint_dir", "straight"]) == 0
    with monkeypatch.context() as m:
        ctrl_c_in_epoch(m, 3)
        assert main([*flags, "--checkpoint_dir", "cut"]) == 130
    assert (tmp_path / "cut" / "model.js").exists() and (tmp_path / "cut" / "best_model.pt").exists()
    assert main(["--resume", "cut/checkpoint_epoch_2.pt", "--quiet"]) == 0
    straight, resumed = (ck.load_checkpoint_dict(f"{d}/checkpoint_epoch_3.pt") for d in ("straight", "cut"))
    assert resumed["history"][-1]["val_loss"] == straight["history"][-1]["val_loss"]
    assert all(torch.equal(a, resumed["model"][k]) for k, a in straight["model"].items())


def test_loading_a_model_leaves_torchs_random_numbers_where_they_were(tmp_path):
    from predlab.export import read_weights, write_weights
    model = TransformerPredator()
    ck.atomic_save({"format": ck.FORMAT, "version": ck.VERSION, "model_config": vars(model.config),
                    "model": model.state_dict()}, tmp_path / "m.pt")
    write_weights(model, tmp_path / "m.js")
    state = torch.get_rng_state()
    loaded = [ck.load_model(tmp_path / "m.pt"), read_weights(tmp_path / "m.js")]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(m.output.weight, model.output.weight) for m in loaded)


def test_cli_resume_of_a_run_already_at_its_epochs_exits_2(tmp_path, monkeypatch, capsys):
    """Resuming at epoch N with --epochs N would train nothing: it says to pass a larger --epochs."""
    from predlab.train import main
    t = _trainer(tmp_path)
    t.train(2)
    path = t.save_checkpoint(tmp_path / "c2.pt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--resume", str(path), "--epochs", "2", "--checkpoint_dir", "out"])
    assert exit_.value.code == 2
    assert "already at epoch 2, and --epochs 2; pass --epochs larger" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_select_best_by_given_on_resume_is_applied(tmp_path, monkeypatch, capsys):
    from predlab.train import main
    first = _trainer(tmp_path)
    first.train(2)
    path = first.save_checkpoint(tmp_path / "c2.pt")
    monkeypatch.chdir(tmp_path)
    main(["--epochs", "3", "--resume", str(path), "--checkpoint_dir", "out", "--select_best_by", "catch_ratio",
          "--eval_every", "1", "--eval_episodes", "2", "--eval_frames", "20", *TINY_FLAGS])
    assert "best_model.pt follows catch_ratio from now on" in capsys.readouterr().out
    assert ck.load_checkpoint_dict(tmp_path / "out" / "checkpoint_epoch_3.pt")["monitor"] == "neg_catch_ratio"


def test_a_resume_selecting_by_catch_ratio_with_none_given_says_its_best_is_the_old_measures(tmp_path, monkeypatch,
                                                                                              capsys):
    """Told "best_model.pt follows catch_ratio from now on", the run ended with "best val MSE ... at epoch 2" and
    exported that file without a word on why it was not chosen by the catch ratio."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    flags = ["--no-dagger", *TINY_FLAGS]
    assert main(["--epochs", "2", "--eval_every", "0", "--checkpoint_dir", "m", *flags]) == 0
    capsys.readouterr()
    assert main(["--resume", "m/checkpoint_epoch_2.pt", "--epochs", "3", "--select_best_by", "catch_ratio",
                 "--eval_every", "1", "--eval_episodes", "1", "--eval_frames", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert ("at epoch 2 (chosen before the resume; no catch check since gave a catch ratio to choose by: raise "
            "--eval_episodes or --eval_frames)") in out
    assert ck.load_checkpoint_dict("m/best_model.pt")["monitor"] == "val_loss"
    # stopped before any catch check ran: raising the episodes would change nothing
    shutil.rmtree("m")
    assert main(["--epochs", "2", "--eval_every", "0", "--checkpoint_dir", "m", *flags]) == 0
    capsys.readouterr()
    ctrl_c_in_epoch(monkeypatch, 4)
    assert main(["--resume", "m/checkpoint_epoch_2.pt", "--epochs", "5", "--select_best_by", "catch_ratio",
                 "--eval_every", "2", "--eval_episodes", "1", "--eval_frames", "2", "--quiet"]) == 130
    out = capsys.readouterr().out
    assert "at epoch 2 (chosen before the resume; no catch check has run since (one every --eval_every epochs))" in out


def _hold_lock(d: Path):
    """Another process holding the lock of checkpoint folder d until its stdin closes."""
    code = ("import sys; from predlab.train import lock_checkpoint_dir; held = lock_checkpoint_dir(sys.argv[1]); "
            "print('held', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, str(d)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_run_into_a_busy_checkpoint_folder_exits_2_and_touches_nothing(tmp_path, monkeypatch, capsys):
    """Two runs in one folder moved and overwrote each other's files: one run's model was lost."""
    from predlab.train import Checkpointer, FolderBusy, main
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "checkpoints"
    d.mkdir()
    (d / "best_model.pt").write_bytes(b"the running run's")
    holder = _hold_lock(d)
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["--epochs", "1", *TINY_FLAGS])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "--checkpoint_dir: another training run is writing to checkpoints" in err and "Traceback" not in err
        t = _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=1)])
        with pytest.raises(FolderBusy, match="another training run"):   # the same from a notebook
            t.train(1)
        assert t.epoch == 0
        assert _files(d) == ["best_model.pt"] and (d / "best_model.pt").read_bytes() == b"the running run's"
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert main(["--epochs", "1", *TINY_FLAGS]) == 0       # free again once the other run has ended
    capsys.readouterr()
    t = _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=1)])
    t.train(1)
    t.train(2)                                             # the same trainer again: its lock was released
    assert t.epoch == 2


@pytest.mark.parametrize("name", ["best_model.pt", "model.js", "checkpoint_epoch_1.pt"])
def test_a_folder_where_a_run_writes_a_file_is_refused_before_training(tmp_path, monkeypatch, capsys, name):
    """It once crashed at the end of training (IsADirectoryError), with the run's model unexported."""
    from predlab.train import Checkpointer, main
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints" / name).mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_:
        main(["--epochs", "1", *TINY_FLAGS])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{name} exists and is not a file (a directory)" in err and "Traceback" not in err
    t = _trainer(tmp_path, callbacks=[Checkpointer(tmp_path / "checkpoints", save_every=1)])
    with pytest.raises(ValueError, match="is not a file"):
        t.train(1)
    assert t.epoch == 0


def test_a_run_that_fails_before_its_first_write_leaves_the_earlier_runs_files_in_place(tmp_path, monkeypatch,
                                                                                        capsys):
    """The earlier run's model.js moved to previous/ at the start of a run that then failed in
    epoch 1; a resumed run stopped in its first epoch moved the folder's files and exported the
    checkpoint it resumed from over the folder's model.js."""
    from predlab import train as tr
    monkeypatch.chdir(tmp_path)
    d, other = tmp_path / "checkpoints", tmp_path / "other"
    assert tr.main(["--epochs", "1", *TINY_FLAGS]) == 0
    assert tr.main(["--epochs", "1", *TINY_FLAGS, "--checkpoint_dir", "other"]) == 0

    def contents():
        return [{n: (f / n).read_bytes() for n in _files(f)} for f in (d, other)]
    before = contents()
    assert {"best_model.pt", "model.js"} <= set(before[0])

    def fail(self, data):
        raise KeyboardInterrupt
    monkeypatch.setattr(tr.SupervisedTrainer, "train_epoch", fail)
    capsys.readouterr()
    ckpt = str(d / "checkpoint_epoch_1.pt")
    for argv in (["--epochs", "1", *TINY_FLAGS], ["--epochs", "3", "--resume", ckpt],
                 ["--epochs", "3", "--resume", ckpt, "--checkpoint_dir", "other"]):
        assert tr.main(argv) == 130
        err = capsys.readouterr().err
        assert "before the first epoch of this run ended: no checkpoint or model was written" in err, argv
        assert contents() == before, argv


def test_ctrl_c_during_the_final_export_still_writes_both_files(tmp_path, monkeypatch, capsys, python_sigint):
    """A Ctrl-C while model.js was being built gave a traceback and no model.js."""
    from predlab import export, train as tr
    monkeypatch.chdir(tmp_path)
    real = export.params_to_text

    def interrupted(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(export, "params_to_text", interrupted)
    assert tr.main(["--epochs", "1", *TINY_FLAGS]) == 130
    assert "the export above was completed first" in capsys.readouterr().err
    d = tmp_path / "checkpoints"
    monkeypatch.setattr(export, "params_to_text", real)
    assert export.read_params(d / "model.js") == export.read_params(d / "model.json")


def test_num_workers_beyond_the_cpus_starts_one_process_per_cpu(tmp_path, monkeypatch, capsys):
    """--num_workers 1000 started 1000 processes, each with its own torch: the memory ran out."""
    from predlab import data, train as tr
    monkeypatch.setattr(data, "usable_cpus", lambda: 2)
    monkeypatch.setattr(tr, "usable_cpus", lambda: 2)
    with EpisodeGenerator(TINY_WORLD, seed=0, num_workers=1000, progress=False) as gen:
        with pytest.warns(UserWarning, match="num_workers=1000, but this machine has 2 CPU"):
            n = len(gen.generate(3, stream=0))
        assert gen._pool._processes == 2
    assert n == len(generate_episodes(3, TINY_WORLD, seed=0, stream=0))
    monkeypatch.chdir(tmp_path)
    tc, *_ = tr.parse_args(["--num_workers", "1000", *TINY_FLAGS])
    assert tc.num_workers == 2 and "--num_workers 1000, but this machine has 2 CPU(s)" in capsys.readouterr().err
    tc, *_ = tr.parse_args(["--cpu_split", "1000", *TINY_FLAGS])     # 256 threads, a part each: 7x slower, unsaid
    said = capsys.readouterr().err       # (not capped: the parts set the sums, which a resume must keep)
    assert tc.cpu_split == 1000 and "--cpu_split 1000, but this machine has 2 CPU(s) for this process: the parts take" \
        " turns, slower than 2 (the same sums as on a machine of" in said
    tc, *_ = tr.parse_args(["--cpu_split", "2", *TINY_FLAGS])
    assert tc.cpu_split == 2 and "cpu_split" not in capsys.readouterr().err
    tc, *_ = tr.parse_args([*TINY_FLAGS, "--cpu_split", "3", "--batch_size", "2"])    # 2 parts at most: no turns
    assert "cpu_split" not in capsys.readouterr().err
    tc, *_ = tr.parse_args(["--threads", "100000", *TINY_FLAGS])     # torch hung starting 100000 threads
    assert tc.threads == 2 and "--threads 100000, but this machine has 2 CPU(s)" in capsys.readouterr().err
    threads = torch.get_num_threads()
    try:
        with pytest.warns(UserWarning, match="threads=100000, but this process may use 2 CPU"):
            create_trainer(threads=100000, train_episodes=2, val_episodes=1, verbose=False, device="cpu",
                           world_config=TINY_WORLD)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_cli_resume_from_a_training_state_that_does_not_fit_exits_2(tmp_path, monkeypatch, capsys):
    """The message was right, but it came as a traceback with exit code 1."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "1", *TINY_FLAGS]) == 0
    state = ck.load_checkpoint_dict(tmp_path / "checkpoints" / "checkpoint_epoch_1.pt")
    state["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)          # not a generator state
    (tmp_path / "other").mkdir()
    torch.save(state, tmp_path / "other" / "bad.pt")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--epochs", "2", "--resume", str(tmp_path / "other" / "bad.pt")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--resume:" in err and "training state does not fit" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != LOCK_NAME} == \
        {p: b for p, b in before.items() if p.name != LOCK_NAME}


def test_create_trainer_takes_configs_as_dicts_and_names_a_wrong_type():
    """A dict gave AttributeError: 'dict' object has no attribute 'validate'."""
    t = create_trainer(world_config={"frames": 10, "boids_max": 8}, model_config={"dropout": 0.1},
                       train_config={"seed": 3}, train_episodes=2, val_episodes=2, verbose=False, device="cpu")
    assert (t.world_config.frames, t.model.config.dropout, t.train_config.seed) == (10, 0.1, 3)
    with pytest.raises(TypeError, match="world_config must be a WorldConfig or a dict of its fields, not list"):
        create_trainer(world_config=[10], verbose=False)
    with pytest.raises(ValueError, match="unknown WorldConfig fields: framez"):
        create_trainer(world_config={"framez": 10}, verbose=False)
    with pytest.raises(ValueError, match="unknown WorldConfig fields: 1, framez"):   # once a TypeError from sorted
        create_trainer(world_config={"framez": 10, 1: 2}, verbose=False)
    with pytest.raises(ValueError, match="frames must be a whole number"):
        create_trainer(world_config={"frames": "ten"}, verbose=False)
    with pytest.raises(TypeError, match="model must be a TransformerPredator, not str"):
        create_trainer(model="best_model.pt", verbose=False)
    # the file was ignored for the model given, and recorded in its checkpoints as where the run started
    with pytest.raises(ValueError, match="model and init_weights='page.js': give one"):
        create_trainer(model=TransformerPredator(), init_weights="page.js", verbose=False)


def test_create_trainer_takes_model_and_world_settings_as_keywords_as_the_flags_do():
    """create_trainer(dropout=0.1), as `--dropout 0.1` and the README's flag table have it, was a TypeError
    from inside dataclasses; the keywords now set ModelConfig and WorldConfig fields over the configs
    given, and an unknown one is named with the fields near it."""
    t = create_trainer(train_episodes=2, val_episodes=1, dropout=0.1, d_model=32, boids_max=6, frames=10,
                       world_config={"frames": 30, "boids_min": 2}, model_config={"n_layers": 2},
                       verbose=False, device="cpu", eval_every=0)
    assert (t.model.config.dropout, t.model.config.d_model, t.model.config.n_layers) == (0.1, 32, 2)
    assert (t.world_config.boids_min, t.world_config.boids_max, t.world_config.frames) == (2, 6, 10)
    assert len(t.val_dataset) == 10 and int(t.val_dataset.n.max()) <= 6
    with pytest.raises(TypeError, match=r"unknown settings: dropot \(did you mean dropout\?\)"):
        create_trainer(dropot=0.1, verbose=False)
    with pytest.raises(ValueError, match="model and dropout=0.1: give one"):    # the model's own 0.0 trained
        create_trainer(model=TransformerPredator(), dropout=0.1, verbose=False)
    with pytest.raises(ValueError, match="boids_max must be >= 1, got 0"):     # checked as world_config's are
        create_trainer(boids_max=0, verbose=False)


@pytest.mark.parametrize("field, value, message", [
    ("device", 0, "device must be a name such as 'cpu', 'cuda' or 'auto', got 0"),
    ("init_weights", 5, "init_weights must be a path, got 5"),
    ("resume", b"ck.pt", "resume must be a path, got b'ck.pt'"),
    ("checkpoint_dir", None, "checkpoint_dir must be a path, got None")])
def test_train_config_names_a_device_or_path_of_the_wrong_type(field, value, message):
    """device=0 gave 'expected string or bytes-like object, got 'int'' and init_weights=5 'expected
    str, bytes or os.PathLike object, not int': neither named the argument."""
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**{field: value}).validate()
    with pytest.raises(ValueError, match=re.escape(message)):
        create_trainer(train_config={field: value}, verbose=False)
    TrainConfig(init_weights=Path("page.js"), log_dir=Path("runs"), resume=None).validate()   # paths and None: fine


def test_a_trainer_trained_again_after_another_run_in_its_folder_moves_that_runs_files(tmp_path):
    """train() again on a notebook's trainer counted as the same run, and overwrote the
    best_model.pt and checkpoints that another run had written in the folder meanwhile."""
    from predlab.export import write_weights
    from predlab.train import Checkpointer
    d = tmp_path / "ck"
    mine = _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=1)])
    mine.train(1)
    other = _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=1)])
    other.train(2)
    write_weights(other.model, d / "model.js")
    theirs = {n: (d / n).read_bytes() for n in _files(d) if "/" not in n}
    assert set(theirs) == {"best_model.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "model.js"}
    mine.train(3)
    kept = {p.read_bytes() for p in (d / "previous").rglob("*") if p.is_file()}
    # all of the other run's checkpoints, moved aside; its model.js stays until an export of this run replaces it
    assert {v for n, v in theirs.items() if n != "model.js"} <= kept
    assert ck.load_checkpoint_dict(d / "checkpoint_epoch_3.pt")["epoch"] == 3
    assert (d / "model.js").read_bytes() == theirs["model.js"]
    mine.train(4)                                            # nobody else wrote: its own files stay
    assert (d / "checkpoint_epoch_3.pt").is_file() and len(list((d / "previous").iterdir())) == 1


def test_a_trainer_trained_again_after_another_run_gets_its_own_best_model_back(tmp_path, capsys):
    """A notebook's trainer, trained again after another run used its folder, had no best_model.pt
    when no new epoch beat its best: the other run had moved it to previous/ with the rest."""
    from predlab.train import Checkpointer
    d = tmp_path / "ck"
    mine = _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=1)])
    mine.train(1)
    best = (d / "best_model.pt").read_bytes()
    other = _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=1)])
    other.train(2)
    theirs = {n: (d / n).read_bytes() for n in ("best_model.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt")}
    mine.best_metric = -math.inf                  # no later epoch beats it
    capsys.readouterr()
    mine.train(2)
    assert (d / "best_model.pt").read_bytes() == best
    kept = [p.read_bytes() for p in (d / "previous").rglob("*") if p.is_file()]
    assert set(theirs.values()) <= set(kept) and best not in kept                     # the other run's, moved aside
    assert len(list((d / "previous").iterdir())) == 1                                 # its own emptied folder is gone
    assert (f"brought this run's own best_model.pt, checkpoint_epoch_1.pt back to {d}: another run had moved them"
            in capsys.readouterr().out)


def test_resuming_into_a_busy_folder_says_only_that_it_is_busy(tmp_path, monkeypatch, capsys):
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "1", *TINY_FLAGS]) == 0
    capsys.readouterr()
    holder = _hold_lock(tmp_path / "checkpoints")
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["--epochs", "2", "--resume", "checkpoints/checkpoint_epoch_1.pt"])
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    # no --checkpoint_dir was given: the flag named is the one that chose the folder
    assert "--resume (the run goes on in its checkpoint's folder): another training run is writing to checkpoints" \
        in err
    assert "resuming the run" not in out            # it was said before the refusal
    assert main(["--epochs", "2", "--resume", "checkpoints/checkpoint_epoch_1.pt"]) == 0
    assert "resuming the run of checkpoints/checkpoint_epoch_1.pt" in capsys.readouterr().out


def test_a_checkpointer_that_fails_to_begin_releases_the_folder(tmp_path, monkeypatch):
    from predlab.train import Checkpointer

    def unreadable(self, trainer):
        raise PermissionError("best_model.pt: Permission denied")
    monkeypatch.setattr(Checkpointer, "_find_earlier_files", unreadable)
    d = tmp_path / "ck"
    trainer = _trainer(tmp_path, callbacks=[Checkpointer(d)])     # kept, as a notebook keeps it
    with pytest.raises(PermissionError):
        trainer.train(1)
    holder = _hold_lock(d)          # another process can take the folder
    holder.stdin.close()
    holder.wait(timeout=30)


def test_a_resumed_trainer_trained_again_keeps_the_files_of_the_run_it_resumed(tmp_path):
    """train() again on a resumed trainer moved the resumed run's own checkpoints and
    best_model.pt to previous/ as another run's."""
    from predlab.train import Checkpointer
    d = tmp_path / "ck"
    _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=2)]).train(4)
    t = _trainer(tmp_path, callbacks=[Checkpointer(d, save_every=2)])
    t.load_checkpoint(d / "checkpoint_epoch_4.pt")
    t.train(6)
    t.train(8)
    assert not (d / "previous").exists()
    assert {"checkpoint_epoch_4.pt", "checkpoint_epoch_6.pt", "checkpoint_epoch_8.pt", "best_model.pt"} <= set(_files(d))


_TRAIN_EPOCH = SupervisedTrainer.train_epoch


def _diverge_in_epoch(monkeypatch, epoch):
    """Make training epoch `epoch` end with a NaN weight, as a far too high learning rate does."""
    train_epoch = _TRAIN_EPOCH

    def diverging(self, data):
        logs = train_epoch(self, data)
        if self.epoch + 1 == epoch:
            with torch.no_grad():
                self.model.output.weight[0, 0] = float("nan")
        return logs

    monkeypatch.setattr(SupervisedTrainer, "train_epoch", diverging)


def test_a_diverged_epoch_stops_training_and_is_neither_counted_nor_saved(tmp_path, monkeypatch):
    """It went on: NaN epochs were saved as checkpoint_epoch_N.pt files that cannot be loaded, and
    pushed the good ones out (keep_checkpoints)."""
    from predlab.train import Checkpointer, TrainingDiverged
    _diverge_in_epoch(monkeypatch, 2)
    t = _trainer(tmp_path, callbacks=[Checkpointer(tmp_path / "ck", save_every=1, keep=1)])
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 2: weights output.weight hold NaN"):
        t.train(4)
    assert t.epoch == 1 and len(t.history) == 1
    assert sorted(p.name for p in (tmp_path / "ck").glob("*.pt")) == ["best_model.pt", "checkpoint_epoch_1.pt"]
    ck.load_model(tmp_path / "ck" / "checkpoint_epoch_1.pt")


def test_cli_a_diverged_run_says_so_exports_its_best_and_exits_1(tmp_path, monkeypatch, capsys):
    """With DAgger, the NaN student of the next epoch stopped the run with a NonFiniteActions traceback
    and no model.js; resumed, the NaN weights in memory failed the export with another traceback."""
    from predlab.export import read_weights
    from predlab.train import main
    _diverge_in_epoch(monkeypatch, 2)
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "4", "--eval_every", "0", *TINY_FLAGS]) == 1
    out, err = capsys.readouterr()
    assert "training diverged in epoch 2" in err and "--learning_rate" in err and "best val MSE" in out
    assert not Path("checkpoints/checkpoint_epoch_2.pt").exists()
    first = read_weights("checkpoints/model.js")
    for a, b in zip(first.state_dict().values(), ck.load_model("checkpoints/best_model.pt").state_dict().values()):
        assert torch.equal(a, b)
    # resumed into another folder, with no new best: the export takes the last saved epoch, not NaN weights
    _diverge_in_epoch(monkeypatch, 3)
    monkeypatch.setattr(SupervisedTrainer, "validate", lambda self: 1e9)    # epoch 2 does not beat epoch 1
    assert main(["--epochs", "4", "--resume", "checkpoints/checkpoint_epoch_1.pt", "--checkpoint_dir", "other",
                 *TINY_FLAGS]) == 1
    out, err = capsys.readouterr()
    assert "training diverged in epoch 3" in err and "exporting the model of epoch 2" in out
    exported, saved = read_weights("other/model.js"), ck.load_model("other/checkpoint_epoch_2.pt")
    for a, b in zip(exported.state_dict().values(), saved.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make, message", [
    (lambda t, d: t.train(2, early_stopping_patience="3"), "early_stopping_patience must be a whole number"),
    (lambda t, d: t.train(2, early_stopping_patience=-1), "early_stopping_patience must be a whole number >= 0"),
    (lambda t, d: EarlyStopping(2.5), "patience must be a whole number"),
    (lambda t, d: Checkpointer(d, save_every=2.5), "save_every must be a whole number"),
    (lambda t, d: Checkpointer(d, keep=1.5), "keep must be a whole number")])
def test_callback_arguments_are_checked_before_any_training(tmp_path, make, message):
    """A patience of "3" failed with "'>' not supported between str and int" once the first epoch was
    trained; -1 turned early stopping off without a word, and save_every=2.5 saved at epochs 5, 10, ...,
    and keep=1.5 failed at the first save with a TypeError from a list slice."""
    t = _trainer(tmp_path)
    with pytest.raises(ValueError, match=message):
        make(t, tmp_path / "ck")
    assert t.epoch == 0 and not (tmp_path / "ck").exists()


def test_cli_ctrl_c_while_the_validation_episodes_are_generated_exits_130(tmp_path, monkeypatch, capsys):
    """It came as a KeyboardInterrupt traceback from inside the episode generation."""
    from predlab.train import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(EpisodeGenerator, "generate", interrupted)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best_model.pt").write_bytes(b"an earlier run's")
    assert main(["--epochs", "1", *TINY_FLAGS]) == 130
    assert "interrupted before training began: nothing was written" in capsys.readouterr().err
    assert _names(tmp_path / "checkpoints") == ["best_model.pt"]
    assert (tmp_path / "checkpoints" / "best_model.pt").read_bytes() == b"an earlier run's"


def test_cli_resume_of_a_library_run_continues_to_that_runs_epochs(tmp_path, monkeypatch, capsys):
    """A run made with create_trainer (TrainConfig's default of 30 epochs) and train(3) recorded
    epochs=30: resumed without --epochs, it went on to epoch 30 instead of ending at 3."""
    from predlab.train import parse_args
    t = create_trainer(train_episodes=4, val_episodes=2, batch_size=32, device="cpu", verbose=False,
                       world_config=TINY_WORLD, eval_every=0, callbacks=[StopAt(2)])
    t.train(3)
    path = t.save_checkpoint(tmp_path / "c2.pt")
    tc, _, _, _ = parse_args(["--resume", str(path)])
    assert tc.epochs == 3


def test_cli_init_weights_starts_a_new_run_from_a_weight_file(tmp_path, monkeypatch, capsys, make_model):
    """--init_weights model.js fine-tunes the page's model: the run starts from the file's weights,
    at the file's sizes, with epoch 1; resuming that run later needs no --init_weights again."""
    from predlab.export import write_weights
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    page = make_model(3, d_model=16, n_heads=2, n_layers=1, ffn_hidden=8)
    with pytest.warns(UserWarning, match="browser"):          # not the page's sizes: written anyway
        write_weights(page, "page.js")
    flags = ["--epochs", "1", *TINY_FLAGS, "--eval_every", "0", "--no-dagger"]
    assert main([*flags, "--init_weights", "page.js", "--learning_rate", "1e-12"]) == 0
    assert "starting from the weights of page.js" in capsys.readouterr().out
    state = ck.load_checkpoint_dict("checkpoints/checkpoint_epoch_1.pt")
    assert state["epoch"] == 1 and state["model_config"]["d_model"] == 16
    for name, w in page.state_dict().items():            # a learning rate of 1e-12 moves nothing visibly
        torch.testing.assert_close(state["model"][name], w, rtol=0, atol=1e-6)
    assert main(["--epochs", "2", "--resume", "checkpoints/checkpoint_epoch_1.pt"]) == 0
    # without it, the same run starts from predlab's own initialisation, far from the file's weights
    assert main([*flags, "--checkpoint_dir", "fresh", "--d_model", "16", "--n_heads", "2", "--n_layers", "1",
                 "--ffn_hidden", "8", "--learning_rate", "1e-12"]) == 0
    fresh = ck.load_checkpoint_dict("fresh/checkpoint_epoch_1.pt")["model"]
    assert max(float((fresh[k] - w).abs().max()) for k, w in page.state_dict().items()) > 0.1


def test_create_trainer_with_init_weights_starts_from_the_files_weights(tmp_path, make_model):
    """create_trainer takes TrainConfig's fields, init_weights among them: it made a fresh model
    anyway, and the run's checkpoints named the file as where it started."""
    from predlab.export import write_weights
    page = make_model(3, d_model=16, n_heads=2, n_layers=1, ffn_hidden=8)
    with pytest.warns(UserWarning, match="browser"):
        write_weights(page, tmp_path / "page.js")
    kw = dict(train_episodes=4, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD, eval_every=0)
    t = create_trainer(init_weights=str(tmp_path / "page.js"), model_config=ModelConfig(dropout=0.1), **kw)
    assert t.model.config == ModelConfig(d_model=16, n_heads=2, n_layers=1, ffn_hidden=8, dropout=0.1)
    for name, w in page.state_dict().items():
        torch.testing.assert_close(t.model.state_dict()[name], w, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="d_model 32 but .*page.js has 16"):
        create_trainer(init_weights=str(tmp_path / "page.js"), model_config=ModelConfig(d_model=32, n_heads=2),
                       **kw)


def test_a_run_given_paths_as_paths_writes_checkpoints_it_can_read(tmp_path, model):
    """init_weights=Path("model.js") (or log_dir=Path(...)) went into the checkpoint's train_config as
    a PosixPath, which the weights-only loader refuses as pickled code: the run saved every
    checkpoint unreadable, and found out only when resuming."""
    from predlab.export import write_weights
    write_weights(model, tmp_path / "page.js")
    with pytest.warns(UserWarning, match="log_dir only set what the command line does"):
        t = create_trainer(train_episodes=4, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD,
                           eval_every=0, init_weights=tmp_path / "page.js", log_dir=tmp_path / "runs")
    state = ck.load_checkpoint_dict(t.save_checkpoint(tmp_path / "c.pt"))
    assert state["train_config"]["init_weights"] == str(tmp_path / "page.js")
    assert state["train_config"]["log_dir"] == str(tmp_path / "runs")


def test_cli_init_weights_warns_when_no_epoch_beats_the_file(tmp_path, monkeypatch, capsys, model):
    """A fine-tune that only made the model worse says so at the end (the default learning rate
    undid a trained model in the README's measurement), and says so only then."""
    from predlab.export import write_weights
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    write_weights(model, "page.js")
    flags = ["--epochs", "1", *TINY_FLAGS, "--eval_every", "0", "--no-dagger", "--init_weights", "page.js"]
    for start, then, warned in ((0.001, 0.5, True), (0.5, 0.001, False)):
        values = iter([start, then])
        monkeypatch.setattr(SupervisedTrainer, "validate", lambda self, data=None: next(values))
        assert main([*flags, "--checkpoint_dir", f"c{start}"]) == 0
        err = capsys.readouterr().err
        assert ("no epoch beat the weights of page.js (val MSE 0.00100 before training, 0.50000 at best)" in err) \
            == warned


def test_cli_init_weights_selected_by_catch_ratio_measures_the_files_ratio_and_warns_when_no_epoch_beats_it(
        tmp_path, monkeypatch, capsys, model):
    """With --select_best_by catch_ratio a fine-tune that only made the model worse exported it without a word:
    the file's own catch ratio was never measured, so nothing was compared."""
    from predlab import evaluate
    from predlab.export import write_weights
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    write_weights(model, "page.js")
    flags = ["--epochs", "1", *TINY_FLAGS, "--no-dagger", "--init_weights", "page.js", "--select_best_by",
             "catch_ratio", "--eval_every", "1", "--eval_episodes", "4", "--eval_frames", "20"]
    for start, then, warned in ((1.5, 0.75, True), (0.75, 1.5, False)):
        values = iter([start, then])
        monkeypatch.setattr(evaluate, "catch_ratio", lambda mine, teacher: next(values))
        assert main([*flags, "--checkpoint_dir", f"c{start}"]) == 0
        out, err = capsys.readouterr()
        assert f"catch ratio {start:.4f} before training" in out
        assert ("no epoch beat the weights of page.js (catch ratio 1.5000 before training, 0.7500 at best" in err) \
            == warned


@pytest.mark.parametrize("args, message", [
    (["--init_weights", "page.js", "--resume", "page.js"], "--init_weights and --resume: give one"),
    (["--init_weights", "page.js", "--d_model", "64"], "another architecture: --d_model 64 but page.js has 48"),
    (["--init_weights", "missing.js"], "no such file: missing.js"),
    (["--init_weights", "."], ". is a directory"),
    (["--init_weights", "junk.js"], "junk.js: expected a JSON object"),
    (["--init_weights", "junk.pt"], "not a readable torch checkpoint"),
    (["--init_weights", "nan.json"], "--init_weights: nan.json: cls_embedding: contains NaN"),   # which file
])
def test_cli_init_weights_that_cannot_be_used_exit_2_before_training(tmp_path, monkeypatch, capsys, model,
                                                                       args, message):
    from predlab.export import write_weights
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    write_weights(model, "page.js")
    write_weights(model, "nan.json")
    weights = json.loads(Path("nan.json").read_text())
    weights["cls_embedding"][0] = math.nan
    Path("nan.json").write_text(json.dumps(weights))       # NaN, as JavaScript writes it
    Path("junk.js").write_text("not weights")
    Path("junk.pt").write_bytes(b"\x00" * 64)
    before = _files(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--epochs", "1", *TINY_FLAGS, *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "--init_weights" in err and "Traceback" not in err
    assert _files(tmp_path) == before


def test_cli_says_when_dagger_flags_have_no_effect(tmp_path, monkeypatch, capsys):
    """--dagger_buffer with --no-dagger was silently unused."""
    from predlab.train import parse_args
    monkeypatch.chdir(tmp_path)
    parse_args(["--no-dagger", "--dagger_buffer", "1000", "--dagger_start", "3"])
    assert "note: --dagger_start, --dagger_buffer have no effect: this run trains without DAgger" \
        in capsys.readouterr().err
    parse_args(["--dagger_buffer", "1000"])
    assert "no effect" not in capsys.readouterr().err


@pytest.mark.parametrize("where", ["cli", "library"])
def test_an_unexpanded_home_folder_is_refused_not_made_under_this_one(tmp_path, monkeypatch, capsys, where):
    """--checkpoint_dir=~/ck (no shell expands ~ after =) trained into a folder named ~ under the current one,
    which rm -rf ~ then removes with the home folder; so did Checkpointer("~/ck") in a notebook, and
    write_weights, export_for_browser and save_checkpoint. A folder named ~ already there (an earlier slip's)
    let every one of them through."""
    from predlab.export import write_weights
    from predlab.train import Checkpointer, TensorBoardLogger, main
    from predlab.viz import export_for_browser
    monkeypatch.chdir(tmp_path)
    (tmp_path / "~").mkdir()
    home = str(Path("~").expanduser())
    want = rf"~/ck\S* begins with ~, which no shell turned into a home folder .*: give {re.escape(home)}/ck"
    if where == "cli":
        for flag in ("--checkpoint_dir=~/ck", "--init_weights=~/ck", "--resume=~/ck"):
            with pytest.raises(SystemExit) as e:
                main(["--epochs", "1", *TINY_FLAGS, flag])
            assert e.value.code == 2 and re.search(flag.split("=")[0] + ": " + want, capsys.readouterr().err)
    else:
        for make, name in ((Checkpointer, "directory"), (TensorBoardLogger, "log_dir")):
            with pytest.raises(ValueError, match=f"^{name}: {want}"):
                make("~/ck")
            with pytest.raises(ValueError, match=f"^{name}: no folder name given"):
                make(" ")
        assert Checkpointer("./~/ck").dir == tmp_path / "~" / "ck"          # a folder named ~, asked for
        model = TransformerPredator(dropout=0.0)
        for call, name in ((lambda: write_weights(model, "~/ck/model.js"), "write_weights"),
                           (lambda: export_for_browser(model, "~/ck"), "export_for_browser"),
                           (lambda: _trainer(tmp_path).save_checkpoint("~/ck/c.pt"), "save_checkpoint")):
            with pytest.raises(ValueError, match=f"^{name}: {want}"):
                call()
    assert [p.name for p in tmp_path.iterdir()] == ["~"] and not any((tmp_path / "~").iterdir())


def test_a_folder_named_home_asked_for_as_such_is_trained_in_and_resumed(tmp_path, monkeypatch, capsys):
    """./~/ck names a folder named ~: the run goes there, to its end, and --resume ./~/ck/... goes on in it
    (Path drops the ./: the resume's folder read "~/ck", refused as an unexpanded home). A file named
    ~model.js is no home folder either: a shell leaves that word as it is."""
    from predlab import export
    from predlab.export import write_weights
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    # a model.js the run did not write: kept in previous/ (with the folder made absolute, the export's own
    # paths, still relative, matched none of the folder's, and it was overwritten without a word)
    (tmp_path / "~" / "ck").mkdir(parents=True)
    mine = write_weights(TransformerPredator(dropout=0.0), "./~/ck/model.js").read_bytes()
    flags = [*TINY_FLAGS, "--eval_every", "0", "--no-dagger", "--save_every", "1", "--log_dir", "./~/runs"]
    assert main(["--epochs", "1", *flags, "--checkpoint_dir", "./~/ck"]) in (0, None)
    assert (tmp_path / "~" / "ck" / "model.js").is_file() and (tmp_path / "~" / "runs").is_dir()
    assert [p.read_bytes() for p in (tmp_path / "~" / "ck" / "previous").rglob("model.js")] == [mine]
    assert main(["--epochs", "2", *flags, "--resume", "./~/ck/checkpoint_epoch_1.pt"]) in (0, None)
    assert (tmp_path / "~" / "ck" / "checkpoint_epoch_2.pt").is_file()
    assert export.main(["./~/ck/best_model.pt", "--out", "./~/ck/m2.js"]) in (0, None)
    out = capsys.readouterr()
    assert " ~/" not in out.out + out.err          # no path a shell would send home
    write_weights(TransformerPredator(dropout=0.0), "~model.js")
    assert (tmp_path / "~model.js").is_file()


def test_cli_says_when_evaluation_early_stopping_or_gpu_flags_have_no_effect(tmp_path, monkeypatch, capsys):
    """--eval_episodes with --eval_every 0, --min_delta without --early_stopping, and --tf32 on a CPU were taken
    without a word, as if they had done something."""
    from predlab.train import parse_args
    monkeypatch.chdir(tmp_path)
    parse_args(["--eval_every", "0", "--eval_episodes", "3", "--eval_frames", "5", "--min_delta", "0.1",
                "--tf32", "--device", "cpu"])
    err = capsys.readouterr().err
    assert "note: --eval_episodes, --eval_frames have no effect: this run measures no catch ratio" in err
    assert "note: --min_delta has no effect: it is early stopping's margin, and this run has none" in err
    assert "note: --tf32 has no effect: CUDA GPU settings, and this run trains on the cpu" in err
    parse_args(["--eval_every", "2", "--eval_episodes", "3", "--min_delta", "0.1", "--early_stopping", "2"])
    parse_args(["--eval_every", "0"])
    assert "no effect" not in capsys.readouterr().err


def test_cli_says_when_the_warm_up_is_longer_than_the_run(tmp_path, monkeypatch, capsys):
    """--warmup_epochs 1e308 trained at a learning rate of 1e-311 without a word."""
    from predlab.train import parse_args
    monkeypatch.chdir(tmp_path)
    parse_args(["--epochs", "4", "--warmup_epochs", "8"])
    assert ("note: --warmup_epochs 8 is longer than the run (4 epochs): the learning rate rises the whole run and "
            "ends at 0.5 x --learning_rate, with no decay") in capsys.readouterr().err
    parse_args(["--epochs", "4", "--warmup_epochs", "4"])     # it peaks at the last step
    parse_args(["--epochs", "1"])                             # the default warm-up of 1 epoch, not asked for
    assert "warmup" not in capsys.readouterr().err


def test_cli_says_when_dagger_starts_after_the_last_epoch(tmp_path, monkeypatch, capsys):
    """--dagger_start past --epochs trained by behaviour cloning alone, without a word."""
    from predlab.train import parse_args
    monkeypatch.chdir(tmp_path)
    parse_args(["--epochs", "4", "--dagger_start", "5"])
    assert "note: --dagger_start 5 comes after the last epoch (4): the teacher drives every episode" \
        in capsys.readouterr().err
    parse_args(["--epochs", "4", "--dagger_start", "4"])     # the last epoch is driven by the model
    parse_args(["--epochs", "1"])                            # the default start, not asked for: no note
    assert "dagger_start" not in capsys.readouterr().err


def test_cli_says_when_no_epoch_runs_a_catch_check(tmp_path, monkeypatch, capsys):
    """--epochs 4 (the README's fine-tune example) at the default --eval_every 5 measured no catch
    ratio, without a word: no epoch of the run is a multiple of 5."""
    from predlab.train import main, parse_args
    monkeypatch.chdir(tmp_path)
    parse_args(["--epochs", "4"])
    assert ("note: no epoch from 1 to 4 is a multiple of --eval_every 5, so this run measures no catch ratio; "
            "give --eval_every 4" in capsys.readouterr().err)
    for quiet in (["--epochs", "5"], ["--epochs", "4", "--eval_every", "0"], ["--epochs", "4", "--eval_every", "2"],
                  ["--epochs", "4", "--select_best_by", "catch_ratio"]):   # that checks its last epoch
        parse_args(quiet)
        assert "eval_every" not in capsys.readouterr().err, quiet
    assert main(["--epochs", "2", "--checkpoint_dir", "ck", "--no-dagger", "--eval_every", "0", *TINY_FLAGS]) == 0
    capsys.readouterr()
    parse_args(["--epochs", "4", "--resume", "ck/checkpoint_epoch_2.pt", "--eval_every", "5"])
    assert "no epoch from 3 to 4 is a multiple of --eval_every 5" in capsys.readouterr().err
    parse_args(["--epochs", "4", "--resume", "ck/checkpoint_epoch_2.pt", "--eval_every", "3"])
    assert "eval_every" not in capsys.readouterr().err


def test_resume_with_other_episodes_for_the_best_starts_the_best_afresh(tmp_path, monkeypatch, capsys):
    """A resume that changes the world (or the validation set's size or seed) kept the best val
    MSE of the old validation set, which the new one's losses could not be compared with: a
    harder new set could leave best_model.pt at the old run's model for the whole run."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "2", "--checkpoint_dir", "ck", "--no-dagger", "--eval_every", "0", *TINY_FLAGS]) == 0
    capsys.readouterr()
    assert main(["--epochs", "3", "--resume", "ck/checkpoint_epoch_2.pt", "--boids_min", "5",
                 "--checkpoint_dir", "more"]) == 0
    out = capsys.readouterr().out
    assert "--boids_min changed the episodes val_loss is measured on" in out
    state = ck.load_checkpoint_dict("more/checkpoint_epoch_3.pt")
    assert state["best_epoch"] == 3          # the first epoch measured on the new set is the best so far
    assert state["best_metric"] == pytest.approx(state["history"][-1]["val_loss"])
    # the schedule or the run's length change no episode: the best carries over
    assert main(["--epochs", "4", "--resume", "more/checkpoint_epoch_3.pt", "--learning_rate", "1e-3",
                 "--checkpoint_dir", "more"]) == 0
    assert "changed the episodes" not in capsys.readouterr().out


def test_a_trainer_built_in_python_records_its_own_settings_for_a_resume(tmp_path, monkeypatch, capsys):
    """A SupervisedTrainer built without a TrainConfig recorded TrainConfig's defaults: a resume from the command
    line went on with seed 0, 50 validation episodes and a catch check every 5 epochs, where the run had seed 7,
    3 episodes and none, and kept the best measured on those 3 episodes, saying nothing. It records what its parts
    say; the validation set's episodes it cannot know, and the resume says so and starts the best afresh."""
    from predlab.train import Checkpointer, EarlyStopping, EpisodeSource, main, parse_args
    monkeypatch.chdir(tmp_path)
    gen = EpisodeGenerator(TINY_WORLD, seed=7, progress=False)
    t = SupervisedTrainer(TransformerPredator(), EpisodeSource(gen, 4), gen.generate(3, stream=0), batch_size=32,
                          seed=7, device="cpu", callbacks=[Checkpointer("ck"), EarlyStopping(4)])
    t.train(2)
    run = ck.load_checkpoint_dict("ck/checkpoint_epoch_2.pt")["train_config"]
    assert (run["seed"], run["eval_every"], run["early_stopping"], run["dagger"], run["train_episodes"]) == \
        (7, 0, 4, False, 4)
    assert "val_episodes" not in run
    capsys.readouterr()
    tc, _, wc, _ = parse_args(["--resume", "ck/checkpoint_epoch_2.pt", "--epochs", "3"])
    assert (tc.seed, tc.eval_every, tc.early_stopping, tc.dagger, tc.train_episodes, wc) == (7, 0, 4, False, 4,
                                                                                              TINY_WORLD)
    assert "does not record val_episodes" in capsys.readouterr().err
    assert main(["--resume", "ck/checkpoint_epoch_2.pt", "--epochs", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "--val_episodes (not recorded) may have changed the episodes val_loss is measured on" in out
    state = ck.load_checkpoint_dict("ck/checkpoint_epoch_3.pt")
    assert state["best_epoch"] == 3 and not any("catch_ratio" in h for h in state["history"])
    # a seed of its generator other than the trainer's: no one seed, as the command line has; samples of no
    # generator: no episodes per epoch, no DAgger
    other = SupervisedTrainer(TransformerPredator(), EpisodeSource(gen, 4), gen.generate(3, stream=0), seed=1,
                              device="cpu")
    assert "seed" not in other.state_dict()["train_config"]
    fixed = SupervisedTrainer(TransformerPredator(), gen.generate(2, stream=1), gen.generate(3, stream=0),
                              device="cpu", world_config=TINY_WORLD, callbacks=[Checkpointer("fixed")])
    assert not {"train_episodes", "dagger"} & set(fixed.state_dict()["train_config"])
    # resumed from the command line, DAgger is this command's default: not a DAgger run whose samples are missing
    fixed.train(1)
    capsys.readouterr()
    parse_args(["--resume", "fixed/checkpoint_epoch_1.pt", "--epochs", "2"])
    err = capsys.readouterr().err
    assert "does not record" in err and "dagger" in err and "holds no DAgger samples" not in err


def test_loading_a_checkpoint_of_other_settings_names_them(tmp_path):
    """A notebook's trainer rebuilt after a kernel restart (its sliders back at their defaults) loaded the run's
    checkpoint and went on with a batch of 256 and 50 validation episodes where the run had 128 and 3, comparing
    its epochs with a best measured on the other set, without a word."""
    kw = dict(train_episodes=4, world_config=TINY_WORLD, eval_every=0, dagger=False, device="cpu", progress=False,
              verbose=False)
    run = create_trainer(val_episodes=3, batch_size=32, **kw)
    run.train(1)
    path = run.save_checkpoint(tmp_path / "c1.pt")
    run.train_dataset.generator.close()
    again = create_trainer(val_episodes=3, batch_size=32, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.load_checkpoint(path)                       # the run's own settings: nothing to say
    rebuilt = create_trainer(val_episodes=2, batch_size=16, **kw)
    with pytest.warns(UserWarning, match=r"c1.pt: its run had batch_size 32 \(this trainer: 16\), val_episodes 3 "
                                         r"\(this trainer: 2\); it goes on with this trainer's settings, and its best "
                                         r"so far was measured on other validation episodes"):
        rebuilt.load_checkpoint(path)
    assert rebuilt.epoch == 1 and rebuilt.batch_size == 16
    for t in (again, rebuilt):
        t.train_dataset.generator.close()
    # a run that chose its best by the catch ratio goes on choosing by it, and says so; the episodes its best was
    # measured on are the catch check's, not the validation set's
    kw.update(eval_every=1, eval_frames=4)
    run = create_trainer(val_episodes=3, select_best_by="catch_ratio", eval_episodes=2, **kw)
    run.train(1)
    path = run.save_checkpoint(tmp_path / "catch.pt")
    run.train_dataset.generator.close()
    rebuilt = create_trainer(val_episodes=3, eval_episodes=4, **kw)
    with pytest.warns(UserWarning, match=r"catch.pt: its run had eval_episodes 2 \(this trainer: 4\); it goes on with "
                                         r"this trainer's settings, and its best so far was measured on other catch "
                                         r"check's episodes .*; it chooses the best by the run's measure, "
                                         r"neg_catch_ratio \(this trainer's was val_loss"):
        rebuilt.load_checkpoint(path)
    assert rebuilt.monitor == "neg_catch_ratio"
    assert rebuilt.state_dict()["train_config"]["select_best_by"] == "catch_ratio"     # as its monitor, not as built
    rebuilt.train_dataset.generator.close()
    other_val = create_trainer(val_episodes=2, select_best_by="catch_ratio", eval_episodes=2, **kw)
    with pytest.warns(UserWarning) as said:
        other_val.load_checkpoint(path)
    assert "val_episodes 3 (this trainer: 2)" in str(said[0].message) and "measured on" not in str(said[0].message)
    other_val.train_dataset.generator.close()
    unchecked = create_trainer(val_episodes=3, **{**kw, "eval_every": 0})    # no catch check here to differ from
    with pytest.warns(UserWarning) as said:
        unchecked.load_checkpoint(path)
    assert "eval_every 1 (this trainer: 0)" in str(said[0].message) and "measured on" not in str(said[0].message)
    unchecked.train_dataset.generator.close()


def test_an_undone_epoch_shows_once_in_tensorboard(tmp_path):
    """An epoch cut after TensorBoard had logged it (a later callback's on_epoch_end) is undone and
    trained again: TensorBoard showed two points at its step, the undone one and the new one."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from predlab import train as T
    logger = T.TensorBoardLogger(tmp_path / "runs")
    t = _trainer(tmp_path, callbacks=[logger, InterruptAt(2)])
    with pytest.raises(KeyboardInterrupt):
        t.train(3)
    t.train(3)
    acc = EventAccumulator(str(logger.path))
    acc.Reload()
    events = acc.Scalars("loss/val")
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([h["val_loss"] for h in t.history])


def test_cli_early_stopping_ends_the_run(tmp_path, monkeypatch, capsys):
    """--early_stopping N stops the run after N epochs without improvement, leaving the last
    epoch's checkpoint to resume from; dropped from the CLI's callbacks, every run went to --epochs."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "5", "--early_stopping", "1", "--min_delta", "10", "--no-dagger", "--eval_every", "0",
                 *TINY_FLAGS]) == 0    # with that min_delta, no epoch after the first improves
    assert re.search(r"early stopping: no improvement of more than 10 on val MSE 0\.\d{5} for 1 epoch \(best",
                     capsys.readouterr().out)
    assert sorted(n for n in _names(tmp_path / "checkpoints") if n.startswith("checkpoint_")) == \
        ["checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt"]


def test_the_runs_catch_evaluation_uses_its_seed(tmp_path):
    """The catch evaluation during training runs on the episodes of the run's --seed, the ones
    `python -m predlab.evaluate --seed` scores, so the logged catch_ratio can be checked there."""
    from predlab.evaluate import compare
    wc = WorldConfig(width_max=640, height_max=480, boids_max=20, frames=20)
    t = create_trainer(train_episodes=4, val_episodes=2, world_config=wc, verbose=False, progress=False,
                       dagger=False, seed=3, eval_every=1, eval_episodes=16, eval_frames=150)
    logs = t.train(1)[0]
    res = compare(t.model, episodes=16, frames=150, seed=3, world_config=wc, baselines=False)
    assert (logs["catch_ratio"], logs["catches_per_1k"]) == (res["catch_ratio"], res["policy"]["catches_per_1k"])
    other = compare(t.model, episodes=16, frames=150, seed=0, world_config=wc, baselines=False)
    assert other["policy"]["catches_per_1k"] != logs["catches_per_1k"]     # the seed matters


# a catch-ratio run on small canvases, where the teacher catches within the evaluation's frames
BY_CATCHES = [*TINY_FLAGS, "--width_max", "640", "--height_max", "480", "--no-dagger", "--select_best_by",
              "catch_ratio", "--eval_every", "1", "--eval_episodes", "16", "--eval_frames", "150"]


def test_resume_with_other_catch_evaluation_episodes_starts_the_best_afresh(tmp_path, monkeypatch, capsys):
    """A run selecting by catch ratio, resumed with another --eval_episodes or --eval_frames, is
    measured on other episodes: its best so far cannot be compared with the new ratios (the new
    episodes may be harder), so the best starts afresh, saying why."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "2", "--checkpoint_dir", "ck", *BY_CATCHES]) == 0
    capsys.readouterr()
    assert main(["--epochs", "3", "--resume", "ck/checkpoint_epoch_2.pt", "--eval_frames", "120",
                 "--checkpoint_dir", "more"]) == 0
    assert "--eval_frames changed the episodes catch_ratio is measured on" in capsys.readouterr().out
    state = ck.load_checkpoint_dict("more/checkpoint_epoch_3.pt")
    assert state["best_epoch"] == 3
    assert state["best_metric"] == state["history"][-1]["neg_catch_ratio"]
    # the validation set is not what a catch-ratio run's best is chosen on: the best carries over
    assert main(["--epochs", "4", "--resume", "more/checkpoint_epoch_3.pt", "--val_episodes", "4",
                 "--checkpoint_dir", "more"]) == 0
    assert "changed the episodes" not in capsys.readouterr().out


def test_resume_selecting_by_val_loss_after_catch_ratio_writes_a_best_model(tmp_path, monkeypatch, capsys):
    """A catch-ratio run's best is a negative number (the trainer minimises -ratio), which no val
    loss beats: resumed with --select_best_by val_loss, the best has to start afresh, or
    best_model.pt is never written again and the export falls back to the last epoch."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "2", "--checkpoint_dir", "ck", *BY_CATCHES]) == 0
    assert ck.load_checkpoint_dict("ck/checkpoint_epoch_2.pt")["best_metric"] <= 0
    capsys.readouterr()
    assert main(["--epochs", "3", "--resume", "ck/checkpoint_epoch_2.pt", "--select_best_by", "val_loss",
                 "--checkpoint_dir", "more"]) == 0
    out = capsys.readouterr().out
    assert "best_model.pt follows val_loss from now on" in out and "no epoch of this run beat" not in out
    best = ck.load_checkpoint_dict("more/best_model.pt")
    assert (best["monitor"], best["best_epoch"]) == ("val_loss", 3)
    assert best["best_metric"] == best["history"][-1]["val_loss"]


@pytest.mark.parametrize("given, sleeps", [(None, True), ("ACTIVE", False)])
def test_openmp_threads_sleep_while_they_wait_unless_the_user_says_otherwise(given, sleeps):
    """Set before torch loads OpenMP: spinning threads made DAgger's student and the catch check up to 40x
    slower while another program used the cores. A user's own setting is kept."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_DISPLAY_ENV"] = "verbose"        # the runtime prints the settings it took as it loads
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", "import sys, predlab; assert 'torch' in sys.modules"], env=env,
                         capture_output=True, text=True, check=True)
    spin = re.search(r"GOMP_SPINCOUNT = '(\d+)'", out.stderr)
    if spin is None:
        pytest.skip("torch's OpenMP runtime here is not GNU's, which prints how long its threads spin")
    assert (int(spin.group(1)) == 0) == sleeps, out.stderr


def test_a_device_name_in_capitals_is_taken_by_the_config_as_by_the_library():
    """resolve_device('CPU') and as_device('CPU:0') took any case, but TrainConfig (and so
    `python -m predlab.train --device CPU`) refused it as an unknown device."""
    TrainConfig(device="CPU").validate()
    TrainConfig(device="Auto").validate()
    assert resolve_device(TrainConfig(device="CPU").device) == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'GPU'"):
        TrainConfig(device="GPU").validate()


def test_a_batch_splits_into_no_more_parts_than_it_has_samples(tmp_path, monkeypatch):
    """--cpu_split 300 at --batch_size 256 (or auto's 4 parts at batch size 2) could split no batch:
    each ran unsplit on the one torch thread left to a part, and the bench's table called that
    "300 parts". A batch now splits into at most one sample a part."""
    t = _trainer(tmp_path, dropout=0.0)
    t.batch_size, t.cpu_split = 4, 16
    assert t.split_parts() == 4
    calls = []
    split = t._split_backward

    def recording(b, parts):
        calls.append((len(b["target"]), parts))
        return split(b, parts)
    t._split_backward = recording
    t.train_epoch(t.val_dataset)                     # 4 episodes of TINY_WORLD: whole batches of 4
    assert calls and all(parts == 4 for n, parts in calls if n == 4)
    monkeypatch.setattr("predlab.train.usable_cpus", lambda: 16)
    before = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        t.cpu_split, t.batch_size = 0, 2
        assert t.split_parts() == 2                   # auto: not 4 parts of a 2-sample batch
    finally:
        torch.set_num_threads(before)


def test_create_trainer_stops_early_as_its_early_stopping_says(tmp_path):
    """create_trainer took early_stopping as a TrainConfig field and recorded it in the run's checkpoints (a
    --resume of them stops early), yet the run itself never stopped early."""
    kw = dict(train_episodes=2, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD, eval_every=0,
              dagger=False, min_delta=1.0)              # no epoch improves by 1: patience 1 stops after epoch 2
    t = create_trainer(early_stopping=1, **kw)
    t.train(4)
    assert t.epoch == 2 and t.stop_training
    mine = EarlyStopping(3)
    assert [c for c in create_trainer(early_stopping=1, callbacks=[mine], **kw).callbacks
            if isinstance(c, EarlyStopping)] == [mine]          # the caller's own is the one


def test_create_trainer_goes_on_from_its_resume_checkpoint(tmp_path):
    """create_trainer took resume as a TrainConfig field and trained a fresh model, whose checkpoints
    then named the file as the checkpoint their run went on from."""
    kw = dict(train_episodes=2, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD, eval_every=0,
              dagger=False)
    first = create_trainer(**kw)
    first.train(2)
    path = first.save_checkpoint(tmp_path / "c.pt")
    t = create_trainer(resume=str(path), **kw)
    assert t.epoch == 2 and t.history == first.history
    assert all(torch.equal(a, b) for a, b in zip(t.model.state_dict().values(), first.model.state_dict().values()))
    with pytest.raises(ck.CheckpointError, match="another architecture"):
        create_trainer(resume=str(path), model_config=ModelConfig(d_model=16, n_heads=2), **kw)


def test_create_trainer_warns_of_settings_only_the_command_line_acts_on(tmp_path):
    """create_trainer(checkpoint_dir=..., save_every=...) was taken silently and recorded in the run's
    checkpoints, yet the trainer wrote nothing there: checkpoints are a callback's work."""
    kw = dict(train_episodes=2, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD,
              eval_every=0, dagger=False)
    with pytest.warns(UserWarning, match=r"create_trainer: checkpoint_dir, save_every only set what the command "
                                         r"line does with them: here, give callbacks=\[Checkpointer"):
        create_trainer(checkpoint_dir=str(tmp_path / "mine"), save_every=1, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_trainer(train_config=TrainConfig(checkpoint_dir=str(tmp_path / "cli")), **kw)   # as the CLI does


def test_a_trainer_that_loaded_a_checkpoint_logs_that_run_in_a_folder_of_its_own(tmp_path):
    """train() after trainer.load_checkpoint(another run's checkpoint) logged into the folder of the
    run the trainer had made before: TensorBoard showed that run's epoch 1 joined to the loaded run's
    later epochs, as one run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from predlab import train as T
    other = _trainer(tmp_path, dropout=0.0)
    other.train(1)
    path = other.save_checkpoint(tmp_path / "other.pt")
    logger = T.TensorBoardLogger(tmp_path / "runs")
    t = _trainer(tmp_path, callbacks=[logger])
    t.train(2)
    first = logger.path
    t.load_checkpoint(path)
    t.train(2)
    assert logger.path != first and len(list((tmp_path / "runs").iterdir())) == 2
    acc = EventAccumulator(str(logger.path))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/val")] == [2]
    assert acc.Scalars("loss/val")[0].value == pytest.approx(t.history[1]["val_loss"])


def test_tensorboard_draws_the_catch_ratio_with_its_interval(tmp_path):
    """The Custom Scalars tab gets one chart of catch_ratio between catch_ratio_low and
    catch_ratio_high (the tags CatchEvaluator logs), so the ratio's spread is seen where it is logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from predlab import train as T
    logger = T.TensorBoardLogger(tmp_path / "runs")
    logger.on_train_begin(None)
    logger.on_epoch_end(None, 1, {"train_loss": 0.5, "val_loss": 0.5, "catch_ratio": 0.9, "catch_ratio_low": 0.7,
                                  "catch_ratio_high": 1.1})
    logger.on_train_end(None)
    events = EventAccumulator(str(logger.path))
    events.Reload()
    assert {"catch_ratio", "catch_ratio_low", "catch_ratio_high"} <= set(events.Tags()["scalars"])
    layout = layout_pb2.Layout.FromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    (chart,) = [c for cat in layout.category for c in cat.chart]
    assert (chart.margin.series[0].value, chart.margin.series[0].lower, chart.margin.series[0].upper) == \
        ("catch_ratio", "catch_ratio_low", "catch_ratio_high")


def test_tensorboard_runs_carry_their_settings_and_what_they_resumed_from(tmp_path):
    """Runs are folders named by their start time: four runs in one runs/ (a run, its resume with another
    rate, a new run) were told apart by nothing TensorBoard showed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from predlab.train import TensorBoardLogger

    def settings(logger):
        events = EventAccumulator(str(logger.path), size_guidance={"tensors": 0})
        events.Reload()
        (text,) = events.Tensors("settings/text_summary")
        rows = [line.split(" | ") for line in text.tensor_proto.string_val[0].decode().splitlines()[2:]]
        return text.step, {k.removeprefix("| "): v.removesuffix(" |") for k, v in rows}

    first = TensorBoardLogger(tmp_path / "runs")
    t = _trainer(tmp_path, callbacks=[first])
    t.train(1)
    path = t.save_checkpoint(tmp_path / "c.pt")
    step, got = settings(first)
    assert step == 0 and "resumed from" not in got
    assert (got["first epoch"], got["model.d_model"], got["train.learning_rate"], got["world.frames"]) == \
        ("1", "48", "0.003", str(TINY_WORLD.frames))
    second = TensorBoardLogger(tmp_path / "runs")
    t2 = _trainer(tmp_path, callbacks=[second])
    t2.load_checkpoint(path)
    t2.set_schedule(learning_rate=1e-3)
    t2.train(2)
    assert second.path != first.path
    step, got = settings(second)
    assert step == 1 and (got["resumed from"], got["first epoch"], got["train.learning_rate"]) == \
        (str(path), "2", "0.001")


def test_a_run_stopped_before_its_first_epoch_ended_leaves_no_empty_tensorboard_run(tmp_path, monkeypatch):
    """A resume stopped by Ctrl-C in its first epoch said 'no checkpoint or model was written', and left a
    TensorBoard run of nothing; a run that logged an epoch keeps its folder, as does a folder named by the
    user, and train() again makes a run of its own."""
    from conftest import ctrl_c_in_epoch
    from predlab.train import TensorBoardLogger
    runs = tmp_path / "runs"
    logger = TensorBoardLogger(runs)
    t = _trainer(tmp_path, callbacks=[logger])
    ctrl_c_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        t.train(2)
    assert list(runs.iterdir()) == []
    # train() again (notebook 02's advice after a Stop): a run of its own, with its settings
    monkeypatch.undo()
    ctrl_c_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        t.train(2)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (again,) = runs.iterdir()
    events = EventAccumulator(str(again), size_guidance={"tensors": 0})
    events.Reload()
    assert "settings/text_summary" in events.Tags()["tensors"] and "loss/val" in events.Tags()["scalars"]
    shutil.rmtree(again)
    monkeypatch.undo()
    t = _trainer(tmp_path, callbacks=[logger])
    ctrl_c_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        t.train(2)
    named = TensorBoardLogger(runs, run_name="mine")
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path, callbacks=[named]).train(2)
    assert [p.name for p in runs.iterdir()] == ["mine"]
    monkeypatch.undo()
    ctrl_c_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        t.train(2)
    (kept,) = [p for p in runs.iterdir() if p.name != "mine"]
    assert logger.path == kept and any(f.name.startswith("events.out.tfevents") for f in kept.iterdir())
    t2 = _trainer(tmp_path, callbacks=[TensorBoardLogger(runs)])
    t2.train(1)                                                  # a run that logged its epoch keeps it
    assert len([p for p in runs.iterdir() if p.name != "mine"]) == 2


def test_a_model_put_in_the_trainers_place_is_refused_not_left_untrained(tmp_path):
    """trainer.model = new_model trained nothing: the optimizer held the first model's parameters, and the
    val loss stood still epoch after epoch."""
    t = _trainer(tmp_path)
    first = t.model
    with pytest.raises(AttributeError, match="trainer.model cannot be replaced: the optimizer holds the first"):
        t.model = TransformerPredator(d_model=32)
    t.model = first                                      # the same model: nothing changes
    before = {k: v.clone() for k, v in first.state_dict().items()}
    t.train(1)
    assert t.model is first and any(not torch.equal(v, first.state_dict()[k]) for k, v in before.items())


def test_tensorboard_leaves_out_the_negated_catch_ratio(tmp_path):
    """neg_catch_ratio is only how the trainer minimises the catch ratio: TensorBoard showed it as a
    chart of its own, catch_ratio upside down, that the epoch lines leave out."""
    import types
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from predlab import train as T
    logger, trainer = T.TensorBoardLogger(tmp_path / "runs"), types.SimpleNamespace(resumed_from=None, epoch=0)
    logger.on_train_begin(trainer)
    logger.on_epoch_end(trainer, 1, {"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "lr": 1e-3, "samples_per_s": 9.0,
                                     "catch_ratio": 0.75, "catch_ratio_low": 0.5, "catch_ratio_high": 1.0,
                                     "neg_catch_ratio": -0.75, "catches_per_1k": 1.5})
    logger.on_train_end(trainer)
    acc = EventAccumulator(str(logger.path))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["catch_ratio", "catch_ratio_high", "catch_ratio_low", "catches_per_1k",
                                             "loss/train", "loss/val", "lr", "samples_per_s"]


def test_cli_init_weights_from_a_checkpoint_of_another_world_says_the_world_is_not_carried_over(tmp_path, monkeypatch,
                                                                                                  capsys):
    """A checkpoint trained at --boids_max 12 fine-tuned in the default world (1-50 boids) without a word:
    the weights carry over, the world does not (evaluate takes a checkpoint's world, and says so)."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "1", *TINY_FLAGS, "--no-dagger", "--eval_every", "0", "--checkpoint_dir", "a"]) == 0
    capsys.readouterr()
    flags = ["--epochs", "1", "--train_episodes", "2", "--val_episodes", "2", "--frames", "12", "--no-dagger",
             "--eval_every", "0", "--quiet", "--init_weights", "a/best_model.pt"]
    assert main([*flags, "--checkpoint_dir", "b"]) == 0
    assert ("note: a/best_model.pt was trained in another world, boids_max 12 (this run: 50): this run trains and "
            "validates in its own") in capsys.readouterr().err
    assert main([*flags, "--boids_max", "12", "--checkpoint_dir", "c"]) == 0
    assert "another world" not in capsys.readouterr().err


def test_loading_best_model_into_a_dagger_trainer_warns_that_the_buffer_starts_empty(tmp_path):
    """The command line said so; trainer.load_checkpoint in a notebook (after a kernel restart) went on
    with an empty buffer without a word. A checkpoint_epoch_N.pt, which carries the samples, warns of nothing."""
    import warnings as w
    from predlab.train import Checkpointer
    kw = dict(train_episodes=4, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD, eval_every=0,
              dagger=True)
    t = create_trainer(**kw, callbacks=[Checkpointer(tmp_path, save_every=1)])
    t.train(1)
    fresh = create_trainer(**kw)
    with pytest.warns(UserWarning, match="best_model.pt holds no DAgger samples .* goes on with an empty DAgger"):
        fresh.load_checkpoint(tmp_path / "best_model.pt")
    assert len(fresh.train_dataset.data) == 0
    with w.catch_warnings():
        w.simplefilter("error")
        create_trainer(**kw).load_checkpoint(tmp_path / "checkpoint_epoch_1.pt")


def test_printed_commands_are_quoted_for_windows_shells_there(tmp_path, monkeypatch):
    """cmd.exe keeps POSIX single quotes ('C:\\runs' is a folder named with them), and a Windows venv's
    tensorboard is tensorboard.exe in Scripts: the printed command named a bare tensorboard, quoted for sh."""
    import os
    from types import SimpleNamespace
    from predlab import train as train_mod
    monkeypatch.setattr(train_mod, "os", SimpleNamespace(name="nt", path=os.path))
    assert train_mod.shell_words("--init_weights", r"C:\Users\me\my runs\best.pt") == \
        r'--init_weights "C:\Users\me\my runs\best.pt"'
    scripts = tmp_path / "Scripts"
    scripts.mkdir()
    (scripts / "tensorboard.exe").write_bytes(b"")
    monkeypatch.setattr(train_mod.sys, "executable", str(scripts / "python.exe"))
    assert train_mod.tensorboard_command(r"C:\runs") == f"{scripts / 'tensorboard.exe'} --logdir C:\\runs"
    monkeypatch.undo()
    assert train_mod.shell_words("--init_weights", "my runs/best.pt") == "--init_weights 'my runs/best.pt'"


def test_the_split_threads_keep_one_intra_op_thread_whatever_the_main_thread_sets_after(monkeypatch):
    """torch gives a thread the process's last set_num_threads at its first parallel op: a split thread made
    while the main thread ran 1, which then set 2 back, ran its parts on 2 (4 threads on 2 cores, and a part's
    sums by the history of the thread it landed on)."""
    from predlab import train as tr
    monkeypatch.setattr(tr, "_SPLIT_POOL", {})      # a pool of this test's own
    threads = torch.get_num_threads()
    try:
        pool = tr._split_pool(1)
        torch.set_num_threads(1)
        pool.submit(lambda: None).result()         # the thread made, its initializer run
        torch.set_num_threads(2)                   # the main thread's, after
        assert pool.submit(torch.get_num_threads).result() == 1
        pool.shutdown()
    finally:
        torch.set_num_threads(threads)
