"""SupervisedTrainer (behaviour cloning of the teacher), its callbacks, and the CLI.

The trainer is headless: progress bars, TensorBoard, checkpoints, early stopping and the
notebook's live plot are callbacks. `python -m predlab.train --help` lists the flags, which
come from the config dataclasses.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import difflib
import io
import math
import numbers
import os
import re
import shlex
import sys
import threading
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt_io
from .config import (BROWSER_SIZES, SEED_MAX, FlagParser, ModelConfig, TrainConfig, WorldConfig, add_config_flags,
                     as_config, as_device, plural, resolve_device, training_memory, whole_number, widest_float)
from .data import EpisodeGenerator, InputError, NonFiniteActions, SampleSet, WorkerError, usable_cpus
from .export import (PIPE_CLOSED, as_typed, command_line, copy_failed, deferred_interrupt, differs, kept_words,
                     link_target_problem, move, move_to_previous, refuse_unwritable, say, silence_stdout,
                     SIZE_KEYS, stale_partials, stop_words, unexpanded_home, write_keeping)
from .model import TransformerPredator, check_has_weights, dropout_generator

VAL_STREAM = 0          # validation episodes; training epoch e uses stream 1 + e
EVAL_STREAM = 10 ** 6   # closed-loop evaluation episodes


# ---------------------------------------------------------------------- schedule
class WarmupCosine:
    """Learning rate: linear warm-up, then cosine decay to min_ratio x peak, by fractional epoch."""

    def __init__(self, optimizer, total_epochs: float, warmup_epochs: float = 1.0, min_ratio: float = 0.05):
        self.optimizer, self.total, self.warmup, self.min_ratio = optimizer, total_epochs, warmup_epochs, min_ratio
        self.base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for g, b in zip(optimizer.param_groups, self.base):
            g["initial_lr"] = b
        self.progress = 0.0

    def factor(self, progress: float) -> float:
        if self.warmup > 0 and progress < self.warmup:
            return min(max(progress, 1e-3) / self.warmup, 1.0)   # a warm-up under 1e-3 epochs: not above the peak
        span = max(self.total - self.warmup, 1e-9)
        t = min(max((progress - self.warmup) / span, 0.0), 1.0)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    def set_progress(self, progress: float) -> None:
        self.progress = progress
        f = self.factor(progress)
        for g, b in zip(self.optimizer.param_groups, self.base):
            if isinstance(g["lr"], torch.Tensor):   # a device tensor that CUDA-graphed steps read
                g["lr"].fill_(b * f)
            else:
                g["lr"] = b * f

    def state_dict(self) -> Dict:
        return {"total": self.total, "warmup": self.warmup, "min_ratio": self.min_ratio, "progress": self.progress,
                "base": list(self.base)}

    def load_state_dict(self, s: Mapping) -> None:
        if len(s["base"]) != len(self.optimizer.param_groups):
            raise ValueError(f"the schedule has {len(s['base'])} learning rates, the optimizer "
                             f"{len(self.optimizer.param_groups)} parameter groups")
        self.warmup, self.min_ratio, self.progress = s["warmup"], s["min_ratio"], s["progress"]
        self.total = s.get("total", self.total)   # the run's length until train(N) sets it: the rate shown is the run's
        self.base = list(s["base"])
        self.set_progress(self.progress)


# ---------------------------------------------------------------------- callbacks
CALLBACK_HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_validate_batch", "on_evaluate",
                  "on_epoch_end", "on_train_end")


def callback_list(callbacks, owner: str = "callbacks") -> list:
    """callbacks as a list: one Callback alone is a list of it. A TypeError naming the item that is no callback
    (one alone failed in "Value after * must be an iterable", a str or a function at train() in an AttributeError).
    An object whose class has every hook's method counts, as the trainer only calls them (it looks for them on the
    class: hooks set on the object alone are not called)."""
    if isinstance(callbacks, Callback):
        return [callbacks]
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"{owner} must be a list of callbacks (predlab.train.Callback), not "
                        f"{type(callbacks).__name__}")
    items = list(callbacks)
    for i, cb in enumerate(items):
        if isinstance(cb, type):     # ([PrintLogger]) failed with "missing 1 required positional argument"
            raise TypeError(f"{owner}[{i}] is the class {cb.__name__}, not a callback made from it: give "
                            f"{cb.__name__}(...)")
        if not isinstance(cb, Callback) and not all(callable(getattr(type(cb), h, None)) for h in CALLBACK_HOOKS):
            raise TypeError(f"{owner}[{i}] is {type(cb).__name__} {str(repr(cb))[:40]}, not a callback: give "
                            f"instances of predlab.train.Callback subclasses (PrintLogger(), Checkpointer(...))")
    return items


class Callback:
    """Hooks the trainer calls; override what you need.

    `trainer.stop_training = True` stops the run after the epoch under way (set in on_batch_end, the
    epoch's other batches, its validation and its on_epoch_end still run). To change the learning rate
    mid-run, call trainer.set_schedule(learning_rate=...): the schedule sets every step's rate, so one
    written into optimizer.param_groups is overwritten before the next step."""

    def on_train_begin(self, trainer): ...
    def on_epoch_begin(self, trainer, epoch: int): ...
    def on_batch_end(self, trainer, step: int, loss: torch.Tensor):
        """loss: the batch's mean, a 0-d tensor on the trainer's device. float(loss) waits for a GPU to get
        there: a callback that reads every batch's slows a GPU run."""
    def on_validate_batch(self, trainer, step: int):
        """After each batch of trainer.validate() (trainer.validate_batches in all)."""
    def on_evaluate(self, trainer, epoch: int, logs: Dict[str, float]):
        """Add metrics to logs before the best-epoch decision (e.g. evaluate.CatchEvaluator)."""
    def on_epoch_end(self, trainer, epoch: int, logs: Dict[str, float]): ...
    def on_train_end(self, trainer): ...


def duration(seconds: float) -> str:
    """"4.2 s", "85 s", "3 min 48 s", "12 h 33 min": a time as a reader takes it in at a glance."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes = round(seconds) // 60
    if minutes < 60:
        return f"{minutes} min {round(seconds) % 60:02d} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


class EpochClock:
    """Each epoch's wall time (episodes, training, validation, catch check) and an estimate of the time
    left: the mean of the last three epochs like those still to come, times the epochs left.

    Under DAgger the epochs before its start are not like them: they train on one epoch's samples with
    the teacher driving, and from the start on the model drives and two epochs' samples are trained on
    (at --train_episodes 2000: 85 s, then 228 s), so there is no estimate until one has run."""

    def __init__(self):
        self.times: List[Tuple[int, float]] = []
        self.last: Optional[float] = None

    def begin(self) -> None:
        self.times, self.last = [], time.perf_counter()

    def end(self, epoch: int) -> Optional[float]:
        """The wall time of `epoch`, ended now (None without begin())."""
        if self.last is None:
            return None
        now = time.perf_counter()
        self.times.append((epoch, now - self.last))
        self.last = now
        return self.times[-1][1]

    @staticmethod
    def alike_from(trainer) -> int:
        """The first epoch like the rest of the run: DAgger's start (epoch 2 at the soonest: epoch 1 has no
        earlier samples to train on beside its own); epoch 2 where the run ends before DAgger starts."""
        from .dagger import DaggerSource
        source = getattr(trainer, "train_dataset", None)
        if not isinstance(source, DaggerSource):
            return 1
        start = max(source.start, 2)
        return start if start <= getattr(trainer, "target_epochs", start) else 2

    def left(self, trainer) -> Optional[float]:
        """Seconds to trainer.target_epochs, or None before an epoch like those left has run."""
        left = getattr(trainer, "target_epochs", 0) - getattr(trainer, "epoch", 0)
        alike = [t for e, t in self.times if e >= self.alike_from(trainer)][-3:]
        return left * sum(alike) / len(alike) if alike and left > 0 else None

    def words(self, trainer) -> str:
        """"eta 3 min 48 s" (duration), "eta after epoch N" while none is known, or "" with no epoch left."""
        left = self.left(trainer)
        if left is not None:
            return f"eta {duration(left)}"
        after = max(self.alike_from(trainer), getattr(trainer, "epoch", 0) + 1)
        return f"eta after epoch {after}" if after < getattr(trainer, "target_epochs", 0) else ""


class ProgressBar(Callback):
    """A tqdm bar over epochs showing the latest losses, and under it one over the batches of the
    epoch under way (an epoch of 2,000 episodes trains for minutes on a laptop's CPU, and the epochs'
    bar alone stood still meanwhile), then one over its validation batches (1,000 validation episodes,
    or 100 of 300 boids, take 10-20 s). The batches' bar goes when its epoch ends."""

    def __init__(self):
        self.bar = self.batches = None
        self.running = False
        self.clock, self.stats = EpochClock(), ""

    def on_train_begin(self, trainer):
        from tqdm.auto import tqdm
        self.running = True
        self.clock.begin()
        # tqdm's own time left is the mean epoch so far: under DAgger, epoch 1's 85 s for epochs of 228 s
        self.bar = tqdm(total=trainer.target_epochs, initial=trainer.epoch, desc="epochs", unit="ep",
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        self.bar.set_postfix_str(self.clock.words(trainer))

    def on_batch_end(self, trainer, step, loss):
        self._batch(trainer, step, "training", "epoch_batches")

    def on_validate_batch(self, trainer, step):
        if self.running:       # not for a validate() outside train(): before it (a fine-tune's start) or after
            self._batch(trainer, step, "validation", "validate_batches")

    def _batch(self, trainer, step: int, what: str, total: str):
        """One batch more on the bar under the epochs' one; its first starts a bar of `what`."""
        if step == 0:
            from tqdm.auto import tqdm
            self._close_batches()
            self.batches = tqdm(total=getattr(trainer, total, None) or None,
                                desc=f"{what} (epoch {trainer.epoch + 1})", unit="batch", leave=False)
        if self.batches is not None:
            self.batches.update(1)

    def _close_batches(self):
        if self.batches is not None:
            self.batches.close()
            self.batches = None

    def on_epoch_end(self, trainer, epoch, logs):
        self._close_batches()
        self.clock.end(epoch)
        eta = self.clock.words(trainer)
        self.stats = (f"sps={logs['samples_per_s']:.0f}, train={logs['train_loss']:.4f}, "
                      f"val={logs['val_loss']:.4f}")
        self.bar.set_postfix_str(f"{eta}, {self.stats}" if eta else self.stats, refresh=False)
        self.bar.update(1)

    def on_train_end(self, trainer):
        self._close_batches()
        self.bar.set_postfix_str(self.stats, refresh=False)    # no time left to a run stopped early
        self.bar.close()
        self.running = False


# why a catch ratio has no interval beside it (catch_ratio_interval: fewer than MIN_DIFFERING such episodes)
INTERVAL_GAP = "too few episodes where its catches and the teacher's differ"


class PrintLogger(Callback):
    """One line per epoch on stdout (for logs where bars do not render), with the epoch's wall time and
    the time left once it can be told (EpochClock)."""

    @property
    def clock(self) -> EpochClock:
        # made here, not in __init__: a subclass whose __init__ does not call PrintLogger's has one too
        if "_clock" not in self.__dict__:
            self._clock = EpochClock()
        return self._clock

    def on_train_begin(self, trainer):
        self.clock.begin()

    def on_epoch_end(self, trainer, epoch, logs):
        def value(k, v):
            text = f"{v:,.0f}" if math.isfinite(v) and float(v).is_integer() else f"{v:.4g}"
            low, high = logs.get(f"{k}_low"), logs.get(f"{k}_high")       # catch_ratio's 95% interval
            if isinstance(low, float) and isinstance(high, float) and not (math.isnan(low) or math.isnan(high)):
                text += f" ({low:.2f}-{high:.2f})"
            elif isinstance(low, float) and math.isfinite(v):
                # a ratio without its interval: fewer than MIN_DIFFERING episodes (or one) where the model's
                # catches differ from the teacher's (the teacher catching none leaves the ratio NaN too)
                text += f" (no interval: {INTERVAL_GAP})"
            return f" {k}={text}"

        extra = "".join(value(k, v) for k, v in logs.items()
                        if k not in ("epoch", "train_loss", "val_loss", "lr", "samples_per_s", "epoch_time",
                                     "neg_catch_ratio", "catch_ratio_low", "catch_ratio_high"))
        took = self.clock.end(epoch)
        if took is not None:
            eta = self.clock.words(trainer)
            extra = f"  {duration(took)}{f' ({eta})' if eta else ''}{extra}"
        line = (f"epoch {epoch:4d}  train {logs['train_loss']:.5f}  val {logs['val_loss']:.5f}  "
                f"lr {logs['lr']:.2e}  {logs['samples_per_s']:,.0f} samples/s{extra}")
        say(line)      # above a progress bar in a terminal, a print began at the bar's end


def _folder(name: str, path: Union[str, Path]) -> Path:
    """A callback's folder argument as a Path; ValueError for a blank name (Path("") is the current folder, where
    Checkpointer("") wrote its files beside a notebook) or an unexpanded ~ (see unexpanded_home)."""
    if isinstance(path, str) and not path.strip():
        raise ValueError(f"{name}: no folder name given ({path!r})")
    problem = unexpanded_home(path)
    if problem:
        raise ValueError(f"{name}: {problem}")
    return Path(as_typed(path))        # a folder named ~, asked for as ./~, kept absolute


class TensorBoardLogger(Callback):
    """Scalars per epoch into one run folder under log_dir (tensorboard --logdir runs), and the run's
    settings in its Text tab (runs are folders named by their start time: which was which, else?).
    announce=True says as a run begins the command that shows it, and its folder."""

    def __init__(self, log_dir: Union[str, Path] = "runs", run_name: Optional[str] = None, announce: bool = False):
        self.log_dir, self.run_name, self.writer, self.announce = _folder("log_dir", log_dir), run_name, None, announce
        self.path, self._trainer, self._resumed_from = None, None, None
        self._made = self._logged = False     # whether this run's folder is one made here; any epoch logged in it
        self._removed = False                 # that folder went, empty: train() again begins a run of its own

    def on_train_begin(self, trainer):
        from torch.utils.tensorboard import SummaryWriter
        # train() again on the same trainer goes on with its run, in its folder (a notebook's cell run
        # again after an interrupt, or train(40) after train(30)), not in a second one; unless it has
        # loaded a checkpoint since: then it goes on with that checkpoint's run, logged as a resume is
        resumed = getattr(trainer, "resumed_from", None)
        new_run = (self.path is None or trainer is None or trainer is not self._trainer
                   or resumed is not self._resumed_from or self._removed)
        # epochs after the trainer's were undone (a cut epoch): TensorBoard hides what was logged of them
        purge = None if new_run else trainer.epoch + 1
        self._trainer, self._resumed_from = trainer, resumed
        _quiet_tensorboard_thread()
        try:               # it writes the file's first record at once
            if new_run:
                self._new_folder()
                self._made, self._logged, self._removed = self.run_name is None, False, False
            self.writer = SummaryWriter(str(self.path), purge_step=purge)
            # TensorBoard's Custom Scalars tab: the catch ratio with its 95% interval as one band (CatchEvaluator)
            self.writer.add_custom_scalars({"catch ratio": {"model / teacher, shaded: 95% interval": [
                "Margin", ["catch_ratio", "catch_ratio_low", "catch_ratio_high"]]}})
            if new_run and trainer is not None:
                self.writer.add_text("settings", settings_markdown(trainer), trainer.epoch)
        except OSError as e:
            self._stop(e)
            return
        if new_run and self.announce:
            say(f"TensorBoard: {tensorboard_command(self.log_dir)}   (this run: {self.path})")

    def _new_folder(self) -> None:
        """self.path: run_name, or the time, made here so that it is this run's alone. Two runs in one
        second get one folder each, processes too (a sweep's jobs started together): a folder seen
        free, then made by the writer, could be another's as well, and TensorBoard drew both runs'
        points as one run's."""
        self.path = self.log_dir / (self.run_name or time.strftime("%Y%m%d-%H%M%S"))
        if self.run_name is not None:
            return
        name, k = self.path.name, 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                self.path.mkdir()
                return
            except FileExistsError:
                k += 1
                self.path = self.log_dir / f"{name}-{k}"

    def on_epoch_end(self, trainer, epoch, logs):
        if self.writer is None:        # stopped by a write that failed
            return
        tags = {"train_loss": "loss/train", "val_loss": "loss/val", "lr": "lr", "samples_per_s": "samples_per_s"}
        try:
            with deferred_interrupt():     # a flush cut by Ctrl-C left the writer's thread waiting: a hang at exit
                for k, v in logs.items():
                    # neg_catch_ratio: the trainer's monitor for the catch ratio (it minimises), a chart
                    # of catch_ratio upside down beside catch_ratio's own
                    if k not in ("epoch", "neg_catch_ratio"):
                        self.writer.add_scalar(tags.get(k, k), v, epoch)
                self.writer.flush()
                self._logged = True
        except OSError as e:
            self._stop(e)

    def on_train_end(self, trainer):
        if self.writer is not None:
            try:
                with deferred_interrupt():
                    self.writer.close()
            except OSError as e:
                self._stop(e)
        self.writer = None
        if self._made and not self._logged and self.path is not None:
            # a run stopped before its first epoch ended: its folder made here holds no curve, only the
            # settings, and showed in TensorBoard as a run of nothing. Only the writer's files go.
            try:
                files = list(self.path.iterdir())
                if all(f.is_file() and f.name.startswith("events.out.tfevents.") for f in files):
                    for f in files:
                        f.unlink()
                    self.path.rmdir()
                    self._removed = True    # (self.path stays: what the last run was, for those who ask)
            except OSError:
                pass

    def _stop(self, e: OSError) -> None:
        """A log that cannot be written (a full disk) ends the logging, not the training: one
        warning line, and the run goes on (it ended the run with the writer thread's traceback)."""
        say(f"warning: TensorBoard logging stopped, training goes on: cannot write {self.path}: "
            f"{e.strerror or e}", file=sys.stderr)
        writer, self.writer = self.writer, None
        try:
            if writer is not None:
                writer.close()
        except OSError:
            pass


def _quiet_tensorboard_thread() -> None:
    """TensorBoard's writer thread prints its traceback when a write fails, then the writer raises
    the error in this thread, where TensorBoardLogger reports it in one line: leave out the first."""
    hook = threading.excepthook
    if getattr(hook, "predlab", False):
        return

    def excepthook(args):
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            hook(args)
    excepthook.predlab = True
    threading.excepthook = excepthook


LOCK_NAME = ".predlab-training.lock"


class FolderBusy(RuntimeError):
    """Another process is training into the same checkpoint folder."""


def lock_checkpoint_dir(directory: Union[str, Path]):
    """Take the lock of a checkpoint folder: a filelock.FileLock, to release() once per call.

    Reentrant within a process (the CLI holds it from start to export, its Checkpointer in each
    train() call). The operating system drops it when the process ends, however it ends.
    Raises FolderBusy while another process holds it: two runs in one folder would move and
    overwrite each other's files, and one run's model would be lost.
    """
    import filelock
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:      # a file there, a link to nowhere, a read-only disk
        why = "a link to a folder that does not exist" if d.is_symlink() and not d.exists() else e.strerror or e
        raise OSError(e.errno, f"cannot create the checkpoint folder {d}: {why}") from None
    # one lock object per folder in a process, however the folder is named ("ck", "./ck", a link)
    lock = filelock.FileLock(str((d / LOCK_NAME).resolve()), timeout=0, is_singleton=True, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise FolderBusy(f"another training run is writing to {d} (it holds {d / LOCK_NAME}); let it finish, or "
                         f"train into another folder (--checkpoint_dir, or the Checkpointer's directory)") from None
    except OSError as e:      # the lock file is a folder, the folder is read-only
        raise OSError(e.errno, f"cannot take the lock {d / LOCK_NAME} of the checkpoint folder: "
                               f"{e.strerror or e}") from None
    return lock


def run_file_problem(directory: Union[str, Path], exports: bool = False) -> Optional[str]:
    """Why a run could not write its files into directory (a folder named best_model.pt, say), or None.
    exports: model.js and model.json too (the command line's run writes them; a notebook's does not)."""
    d = Path(directory)
    if not d.is_dir():
        return None
    for p in [d / n for n in Checkpointer.RUN_FILES] + sorted(d.glob("checkpoint_epoch_*.pt")):
        if p.exists() and not p.is_file():
            return (f"{p} exists and is not a file ({'a directory' if p.is_dir() else 'not a regular file'}): "
                    f"a run writes its {p.name} there; rename it or use another --checkpoint_dir")
    for p in (d / n for n in Checkpointer.EXPORTS if exports):
        # the export writes through a link: one into a folder that does not exist failed after the whole run
        # (and one into a folder this user cannot write, a page's folder of another user)
        problem = link_target_problem(p, ": the run's export writes through it; make that folder, one this user "
                                         "can write in, or remove the link")
        if problem:
            return problem
    return None


class Checkpointer(Callback):
    """best_model.pt on every improvement; checkpoint_epoch_N.pt every save_every epochs, at the run's
    last, and at the last whole epoch of a run stopped early or interrupted (keeps the newest `keep`).

    A run never deletes or overwrites another run's files: an earlier run's best_model.pt and
    checkpoint_epoch_N.pt in the folder move to previous/<time of the newest>/ inside it when this
    run first writes (a run that fails before then leaves them); its model.js/.json stay until this
    run's export (the command line's), which moves them (see foreign_exports).
    A run resumed from a checkpoint in this folder continues that run: only the files of epochs
    after the one it resumed from move, and those of another run (whose history does not lead to
    the checkpoint resumed). train() called again on the same trainer goes on with
    its run, unless another run has written in the folder in between: then that run's files move,
    and this run's own that the other run had moved to previous/ (its best_model.pt) come back.
    """

    RUN_FILES = ("best_model.pt", "model.js", "model.json")
    EXPORTS = ("model.js", "model.json")
    # what a run stopped mid-epoch is told of the last whole epoch saved: the trainer has already put
    # itself back to that epoch, so in a notebook the cell run again goes on (the command line: --resume)
    go_on = ("train() again on this trainer (a notebook's training cell run again) goes on from there (another "
             "process: load_checkpoint or --resume it)")

    def __init__(self, directory: Union[str, Path] = "checkpoints", save_every: int = 5, keep: int = 3,
                 archive: bool = True):
        """archive=False: a new run replaces an earlier run's files instead (for throwaway runs,
        such as the notebooks' quick mode under `make test`, whose previous/ would only grow)."""
        save_every, keep = whole_number("save_every", save_every, 1), whole_number("keep", keep, 1)
        self.dir, self.save_every, self.keep, self.archive = _folder("directory", directory), save_every, keep, archive
        self._trainer, self._pending, self._written, self._saved = None, [], {}, set()
        self._resumed_from = None     # the trainer's resumed_from when this run began: another is a rewind
        self._restore: List[Tuple[Path, Path]] = []   # this run's files another run moved to previous/
        self._best_state: Optional[Dict] = None   # best_model.pt of a rewound run, written at its first write
        self._exports: Dict[Path, tuple] = {}     # model.js / model.json kept as the resumed run's own export
        self._at_start: Dict[Path, tuple] = {}    # model.js / model.json as they were when the run began
        self.resumed_epoch = 0      # the epoch a run resumed in its own folder goes on from (0: none)
        self.moved_to: Optional[Path] = None   # where make_room last moved an earlier run's files
        self.put_back_from: Optional[Path] = None   # where put_back took them from, when it did
        self.failed_write: Optional[Path] = None    # the checkpoint whose write failed (a full disk)

    @staticmethod
    def _epoch_of(p: Path) -> int:
        try:
            return int(p.stem.rsplit("_", 1)[1])
        except (IndexError, ValueError):
            return -1

    def _epoch_files(self) -> List[Path]:
        return sorted((p for p in self.dir.glob("checkpoint_epoch_*.pt") if self._epoch_of(p) >= 0),
                      key=self._epoch_of)

    def on_train_begin(self, trainer):
        self.put_back_from = self.failed_write = None       # of this call's run only
        problem = run_file_problem(self.dir)
        if problem:
            raise ValueError(problem)
        self._lock = lock_checkpoint_dir(self.dir)     # each train() call; released in on_train_end
        try:
            self._remove_partials()
            self._find_earlier_files(trainer)
            self._at_start = {p: self._signature(p) for p in (self.dir / n for n in self.EXPORTS) if p.is_file()}
        except BaseException:     # this callback has not begun: its on_train_end will not run
            self._lock, lock = None, self._lock
            lock.release()
            raise

    def _remove_partials(self) -> None:
        """Partial files of saves that a kill cut short (kill -9, a power cut) in this folder, which no
        run of predlab writes now (the lock): removed, and said."""
        def ours(name: str) -> bool:
            return name in self.RUN_FILES or re.fullmatch(r"checkpoint_epoch_\d+\.pt", name) is not None
        gone, size = [], 0
        # also in previous/: a copy there (moved across disks, or kept by an export) cut by a kill
        found = stale_partials(self.dir, ours)
        for d in sorted((self.dir / "previous").glob("*")):
            if d.is_dir() and not d.is_symlink():
                found += stale_partials(d, lambda name: True)
        for p in found:
            try:
                n = p.stat().st_size
                p.unlink()
            except OSError:
                continue
            gone.append(str(p.relative_to(self.dir)))
            size += n
        if gone:
            say(f"removed {plural(len(gone), 'partial file')} ({size / 2**20:,.1f} MiB) that a save cut short "
                f"(a kill, a power cut) left in {self.dir}: {', '.join(gone)}")

    def _find_earlier_files(self, trainer) -> None:
        """The files of other runs in the folder, which make_room moves aside at this run's first write."""
        # a trainer that loaded a checkpoint since (rewound to an earlier epoch, say) is sorted out as a resumed
        # run: the same run's branch overwrote the later epochs' files, best_model.pt of a better epoch too
        if self._trainer is trainer and getattr(trainer, "resumed_from", None) is self._resumed_from:
            # train() again on the same trainer: the same run, unless another run (another trainer,
            # the CLI) wrote here in between; then its files move as an earlier run's (its model.js at an
            # export), with any still to move because this run has not written yet (its rotation would delete them)
            theirs = [p for p in [*self._epoch_files(), self.dir / "best_model.pt"]
                      if p.is_file() and p not in self._pending and not self._mine(p)]
            if theirs:
                self._what = "of other runs" if self._pending else "of another run"
                self._pending = self._pending + theirs
                self._restore = self._moved_away()
            return
        self._restore, self._best_state = [], None
        self._trainer = trainer
        src = self._resumed_from = getattr(trainer, "resumed_from", None)
        continuing = trainer.epoch > 0 and src is not None and Path(src).resolve().parent == self.dir.resolve()
        if continuing:    # keep this run's files up to the epoch it resumed from
            # and only this run's, known by their history: the files of another run that used the folder since (this
            # run's checkpoint then copied back into it) were taken for this run's, then deleted by its rotation,
            # and that run's best_model.pt was reported and exported as this run's best
            later, foreign = [], []
            for p in self._epoch_files():
                if self._epoch_of(p) > trainer.epoch:
                    later.append(p)
                elif not self._same_run(trainer, self._history_of(p)):
                    foreign.append(p)
            best = self.dir / "best_model.pt"
            best_foreign = False
            try:
                ck = ckpt_io.load_checkpoint_dict(best) if best.is_file() else {}
                best_later = best.is_file() and int(ck.get("epoch", 0)) > trainer.epoch
                best_foreign = best.is_file() and not best_later and not self._same_run(trainer, ck.get("history"))
            except (ValueError, FileNotFoundError):
                best_later = best.is_file()     # unreadable: not this run's to overwrite
            moving = later + foreign + ([self.dir / n for n in self.RUN_FILES if (self.dir / n).is_file()]
                                        if best_later or best_foreign else [])
            if best_foreign:
                self._best_state = self._resumed_best(trainer, f"{best} is another run's")
            elif best_later:
                self._best_state = self._resumed_best(trainer, f"the epochs after {trainer.epoch} overwrote it")
            elif not best.exists():
                # deleted since (a clean-up): the run ended with no best_model.pt, saying it was in the folder of
                # the run it resumed, this one, and a model.js of its last epoch
                self._best_state = self._resumed_best(trainer, f"there is no {best}")
            # the files kept are this run's own: another run's written before this one's first write are not
            self._written.update((p, self._signature(p)) for p in [*self._epoch_files(), best]
                                 if p.is_file() and p not in moving)
            self._exports = self._own_exports(trainer, best, moving)
        else:
            moving = self._epoch_files() + [self.dir / n for n in self.RUN_FILES if (self.dir / n).is_file()]
        # moved when this run first writes: a run that fails before then leaves them where they are
        self._pending = moving
        self._what = (" and ".join(what for what, files in ((f"of epochs after {trainer.epoch}", later or best_later),
                                                            ("of another run", foreign or best_foreign)) if files)
                      if continuing else "of an earlier run")
        self.resumed_epoch = trainer.epoch if continuing else 0

    @staticmethod
    def _history_of(p: Path) -> Optional[list]:
        """The epoch records a checkpoint holds, or None when it cannot be read. Weights-only, as every load;
        memory-mapped, so that a checkpoint of hundreds of MB is not read whole for its history."""
        for mmap in (True, False):     # mmap reads only files in torch.save's zip format
            try:
                ck = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
            except Exception:  # noqa: BLE001 (a damaged or foreign file raises whatever its bytes lead to)
                continue
            history = ck.get("history") if isinstance(ck, dict) else None
            return history if isinstance(history, list) else None
        return None

    @staticmethod
    def _same_run(trainer, history) -> bool:
        """Whether a file's history is a prefix of the trainer's (its epoch records as they are, which torch.save
        keeps exactly): a file of the run the trainer resumed, not of another run in the folder."""
        def same(a, b) -> bool:
            if isinstance(a, float) and isinstance(b, float):
                return a == b or (math.isnan(a) and math.isnan(b))    # a catch check's NaN (no teacher catches)
            if isinstance(a, dict) and isinstance(b, dict):
                return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
            if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
                return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
            return type(a) is type(b) and bool(a == b)
        mine = trainer.history
        try:
            return isinstance(history, list) and len(history) <= len(mine) and all(map(same, history, mine))
        except Exception:  # noqa: BLE001 (a record that does not compare, a tensor of many values: not the same)
            return False

    def _own_exports(self, trainer, best: Path, moving: Sequence[Path]) -> Dict[Path, tuple]:
        """model.js and model.json of a run resumed in its own folder that hold what it exported: the
        weights of its best_model.pt or of the epoch resumed, as predlab writes them -> their signatures.
        Others (edited by hand since, or exported there from another checkpoint) are not the run's to
        replace: its export moves them to previous/ (see foreign_exports)."""
        from .export import model_to_params, params_to_text
        files = [self.dir / n for n in ("model.js", "model.json") if (self.dir / n).is_file()]
        files = [p for p in files if p not in moving]
        if not files:
            return {}
        params = [model_to_params(trainer.model)]
        try:
            if best.is_file():
                params.append(model_to_params(ckpt_io.model_from_checkpoint(ckpt_io.load_checkpoint_dict(best), best)))
        except (ValueError, FileNotFoundError):     # unreadable: model.js is then judged by the epoch resumed
            pass
        own = {}
        for p in files:
            texts = {params_to_text(w, p.suffix[1:]).encode("utf-8") for w in params}
            try:
                if p.read_bytes() in texts:
                    own[p] = self._signature(p)
            except OSError:
                pass
        return own

    def exported_by_moved(self, files: Sequence[Path]) -> bool:
        """Whether files hold the export of the best_model.pt that make_room moved to previous/ in this run (or,
        with none there, of its newest checkpoint: a resumed run that never beat its best exports where it
        ended): the earlier run's own, to keep beside its checkpoints (not a notebook run's, which never
        exports, and whose earlier model.js stayed)."""
        if not files or self.moved_to is None:
            return False
        best = self.moved_to / "best_model.pt"
        epochs = sorted(self.moved_to.glob("checkpoint_epoch_*.pt"), key=self._epoch_of)
        src = best if best.is_file() else epochs[-1] if epochs else None
        if src is None:
            return False
        from .export import model_to_params, params_to_text
        try:
            params = model_to_params(ckpt_io.model_from_checkpoint(ckpt_io.load_checkpoint_dict(src), src))
            return all(p.read_bytes() == params_to_text(params, p.suffix[1:]).encode("utf-8") for p in files)
        except (ValueError, OSError):
            return False

    def there_at_start(self, p: Path) -> bool:
        """Whether p is the file that was there, unchanged, when this run began."""
        return p.is_file() and self._at_start.get(p) == self._signature(p)

    def foreign_exports(self) -> List[Path]:
        """model.js / model.json in the folder that this run did not keep as its own: written there since
        it began (an export while it trained), or, in a run resumed in its own folder, other than what the
        run it continues exported. Its export moves them to previous/ rather than overwrite them."""
        if not self.archive:
            return []
        return [p for p in (self.dir / "model.js", self.dir / "model.json")
                if p.is_file() and p not in self._pending
                and not (p in self._exports and self._signature(p) == self._exports[p])]

    def _resumed_best(self, trainer, gone: str) -> Optional[Dict]:
        """The state to write as best_model.pt of a run resumed in its own folder whose best_model.pt is
        not the run's any more (a later epoch's, which a rewind moves aside, or one deleted; `gone` says
        which), or None: the folder held no best_model.pt of the run going on, and model.js of its last
        epoch when no epoch since beat the best it resumed with."""
        if not getattr(trainer, "best_epoch", 0):      # no best yet
            return None
        if trainer.best_epoch != trainer.epoch:
            # the best epoch's weights were in the best_model.pt that later epochs overwrote: the best
            # starts again from the model resumed, by its epoch's own value
            last = trainer.history[-1] if trainer.history else {}
            value = last.get(trainer.monitor) if last.get("epoch") == trainer.epoch else None
            lost = ckpt_io.describe_best(trainer.monitor, trainer.best_metric, trainer.best_epoch)
            # early stopping's count and reference are the run's, not the file's: kept, the run stops where
            # the uninterrupted one does (they were started afresh too, and it trained `patience` epochs more)
            count = trainer.bad_epochs, trainer.early_stopping_ref
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                trainer.start_best()
                trainer.bad_epochs, trainer.early_stopping_ref = count
                say(f"the best model so far ({lost}) is in no file of this run any more ({gone}): the best "
                    f"starts afresh")
                return None
            trainer.start_best(float(value), trainer.epoch)
            trainer.bad_epochs, trainer.early_stopping_ref = count
            say(f"the best model so far ({lost}) is in no file of this run any more ({gone}): the best "
                f"starts again from the model resumed "
                f"({ckpt_io.describe_best(trainer.monitor, trainer.best_metric, trainer.best_epoch)})")
        return copy.deepcopy(trainer.state_dict(include_data=False))   # its tensors are the weights trained on

    def _moved_away(self) -> List[Tuple[Path, Path]]:
        """This run's own files that another run moved to previous/ (a rename keeps a file's
        signature) and that are not back in their place: (where each is, where it was)."""
        found = []
        for p, sig in self._written.items():
            if self._mine(p):
                continue
            for q in sorted((self.dir / "previous").glob(f"*/{p.name}")):
                if q.is_file() and self._signature(q) == sig:
                    found.append((q, p))
                    break
        return found

    def _bring_back(self) -> None:
        """After make_room moved the other run's files: this run's own files that run had moved to
        previous/ come back, so that the folder holds this run's best_model.pt though no epoch since beat it."""
        back = []
        for q, p in self._restore:
            if q.is_file() and not p.exists():
                move(q, p)
                back.append(p.name)
                try:
                    q.parent.rmdir()                    # the folder, if nothing of the other run is left there
                except OSError:
                    pass
        self._restore = []
        if back:
            say(f"brought this run's own {', '.join(sorted(back))} back to {self.dir}: another run had moved "
                f"{'it' if len(back) == 1 else 'them'} to {self.dir / 'previous'}")

    @staticmethod
    def _signature(p: Path) -> tuple:
        # no inode: a file moved to previous/ on another disk (a copy) and back is the same file
        st = p.stat()
        return st.st_size, st.st_mtime_ns

    def _mine(self, p: Path) -> bool:
        """Whether p is this run's file (written by it, or kept from the run it resumed), unchanged since."""
        return p in self._written and p.is_file() and self._signature(p) == self._written[p]

    def _save(self, trainer, path: Path, include_data: bool = True) -> None:
        try:
            if path.is_symlink():
                # a save wrote through it, into another run's file (or, pointing at nothing, into another folder):
                # the link goes, and the file it points to is left as it is
                say(f"{path} was a link to {os.path.realpath(path)}: removed the link, which this run's save "
                    "would have written through; that file is as it was")
                path.unlink()
            trainer.save_checkpoint(path, include_data=include_data)
        except OSError:
            self.failed_write = path        # a full disk, say: what the run's last words name
            raise
        self._written[path] = self._signature(path)
        self._saved.add(path)

    def wrote_best(self) -> bool:
        """Whether this Checkpointer wrote the best_model.pt in its folder (the epoch that wrote it
        may have been undone after, when a later write failed or a Ctrl-C came: its model is whole
        all the same)."""
        best = self.dir / "best_model.pt"
        return best in self._saved and self._mine(best)

    def is_earlier_runs(self, path: Union[str, Path]) -> bool:
        """Whether path is an earlier run's file that this run has not yet moved aside."""
        return Path(path) in self._pending

    def make_room(self) -> None:
        """Move the earlier run's checkpoints to previous/ (once, before this run's first write).

        Its model.js and model.json stay until this run exports (see foreign_exports): moved now, a page or
        the demo reading them found none for the whole run, and none at all after a kill."""
        # cleared once they are moved: a move that fails (a full disk) leaves them the earlier run's,
        # not this run's to overwrite at its next write
        moving = [p for p in self._pending if p.is_file() and p.name not in self.EXPORTS]
        if moving and not self.archive:
            for p in moving:
                p.unlink()
        elif moving:
            size = sum(p.stat().st_size for p in moving)
            # a checkpoint's link goes, its file copied: the run's saves would have written into another run's files
            dest = self.moved_to = move_to_previous(moving, self.dir)
            what = self._what
            kept = sum(p.stat().st_size for p in (self.dir / "previous").rglob("*") if p.is_file())
            say(f"moved {len(moving)} file(s) {what} ({size / 2**20:,.1f} MiB) from {self.dir} to {dest}; this "
                f"run writes its own in {self.dir} ({self.dir / 'previous'} holds {kept / 2**20:,.1f} MiB: "
                f"delete what you no longer need)")
        self._pending = []
        best = self.dir / "best_model.pt"
        if self._best_state is not None and not best.exists():    # the best the resumed run goes on with
            ckpt_io.atomic_save(self._best_state, best)
            self._written[best] = self._signature(best)
            self._saved.add(best)
        self._best_state = None
        with deferred_interrupt():
            self._bring_back()

    def put_back(self) -> bool:
        """After a run that wrote nothing of its own (its first write failed: a full disk): the files
        make_room moved to previous/ go back where they were, all or none (a name taken since: none) ->
        whether they did."""
        if self.moved_to is None or any(self._mine(p) for p in self._saved):
            return False
        src = self.moved_to
        files = sorted(src.iterdir())
        if any((self.dir / q.name).exists() or (self.dir / q.name).is_symlink() or q.is_dir() for q in files):
            return False
        with deferred_interrupt():
            for q in files:
                move(q, self.dir / q.name)
            src.rmdir()
            self.moved_to, self.put_back_from = None, src
            # an earlier run's again: moved aside at this run's next first write (train() again), never
            # taken for this run's own
            self._pending = self._pending + [self.dir / q.name for q in files]
        with contextlib.suppress(OSError):
            src.parent.rmdir()          # previous/, if this was all it held
        say(f"put the earlier run's {', '.join(q.name for q in files)} back in {self.dir}: this run wrote nothing "
            "to replace them")
        return True

    def on_epoch_end(self, trainer, epoch, logs):
        if trainer.improved or epoch % self.save_every == 0 or epoch == trainer.target_epochs:
            self.make_room()
        if trainer.improved:
            self._save(trainer, self.dir / "best_model.pt", include_data=False)
        if epoch % self.save_every == 0 or epoch == trainer.target_epochs:
            self._save_epoch(trainer, epoch)

    def on_train_end(self, trainer):
        # stopped early (between epochs, so the state is that of a whole epoch): a checkpoint of
        # the last epoch, so that the run can be resumed where it stopped. So too after a Ctrl-C, a
        # SIGTERM or a diverged epoch (train() has undone the epoch under way) once this call has
        # finished an epoch: a run stopped by a scheduler lost up to save_every - 1 epochs. Not
        # after a failed write (a full disk would fail this one too).
        try:
            path = self.dir / f"checkpoint_epoch_{trainer.epoch}.pt"
            # one there of an earlier run (the epochs after the one a resumed run began at) is replaced
            fresh = not path.exists() or self.is_earlier_runs(path)
            ended_by = getattr(trainer, "ended_by", None)
            # a closed stdout (`| head`) stops the run as a Ctrl-C does: its last whole epoch was not saved, so that
            # --resume could only go back to best_model.pt (without DAgger's samples) or to an older checkpoint
            cut = (isinstance(ended_by, type)
                   and issubclass(ended_by, (KeyboardInterrupt, TrainingDiverged, BrokenPipeError, WorkerError))
                   and trainer.epoch > getattr(trainer, "train_begin_epoch", trainer.epoch))
            # with stdout closed, the lines the save says on its way (make_room's "moved N file(s)") raised
            # BrokenPipeError before the file was written: they go nowhere
            piped = cut and issubclass(ended_by, BrokenPipeError)
            if (trainer.stop_training and trainer.epoch > 0 or cut) and fresh:
                with deferred_interrupt(), (contextlib.redirect_stdout(io.StringIO()) if piped else
                                            contextlib.nullcontext()):   # a second Ctrl-C waits till the file is whole
                    self.make_room()
                    self._save_epoch(trainer, trainer.epoch)
                if cut:
                    with contextlib.suppress(BrokenPipeError):    # stdout closed: the file is saved all the same
                        say(f"saved {path} (the last whole epoch): {self.go_on}")
            elif cut and self._mine(path):     # saved at the epoch's end (save_every): where to go on, all the same
                with contextlib.suppress(BrokenPipeError):
                    say(f"{path} holds the last whole epoch: {self.go_on}")
        finally:
            if self.moved_to is not None and not any(self._mine(p) for p in self._saved):
                # its first write failed (a full disk): the earlier run's files go back, so that the demo and
                # the page still find the model.js this run wrote nothing to replace
                with contextlib.suppress(OSError):
                    self.put_back()
            if not self._pending:
                # its own, and those kept from the run it resumed, as they are: what the next train() on this
                # trainer compares the folder with (not every file there: one copied in meanwhile is not its own)
                self._written = {p: self._signature(p) for p in self._written if self._mine(p)}
            lock, self._lock = getattr(self, "_lock", None), None
            if lock is not None:
                lock.release()

    def _save_epoch(self, trainer, epoch: int) -> None:
        self._save(trainer, self.dir / f"checkpoint_epoch_{epoch}.pt")
        # only this run's own: a file copied in meanwhile (an old checkpoint put back) is not the run's to delete
        earlier = [p for p in self._epoch_files() if self._epoch_of(p) < epoch and self._mine(p)]
        for p in earlier[:max(len(earlier) - (self.keep - 1), 0)]:
            p.unlink(missing_ok=True)


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved by more than min_delta for `patience` epochs."""

    def __init__(self, patience: int):
        # checked now: a bad value failed at the end of the first epoch, whose training was lost
        self.patience = whole_number("patience", patience, 0)

    def on_epoch_end(self, trainer, epoch, logs):
        # only at an epoch that measured the monitor: a resumed run's first epoch without a catch check could not
        # improve, and was stopped as if it had not
        if self.patience > 0 and trainer.bad_epochs >= self.patience and logs.get(trainer.monitor) is not None:
            what = "catch evaluation" if trainer.monitor == "neg_catch_ratio" else "epoch"
            what += "" if trainer.bad_epochs == 1 else "s"
            by = ""
            # from what: the best may be an epoch since, which gained less than min_delta, or the model a resume
            # restarted the best from, while the count goes on from the run's best, which no file holds any more
            # (not while no epoch has given a value: "on catch ratio -inf")
            if math.isfinite(trainer.early_stopping_ref) and (trainer.min_delta > 0
                                                              or trainer.early_stopping_ref != trainer.best_metric):
                ref, monitor = trainer.early_stopping_ref, trainer.monitor
                on = (f"catch ratio {-ref:.4f}" if monitor == "neg_catch_ratio" else
                      f"val MSE {ref:.5f}" if monitor == "val_loss" else f"{monitor} {ref:g}")
                by = f" of more than {trainer.min_delta:g} on {on}" if trainer.min_delta > 0 else f" on {on}"
            say(f"early stopping: no improvement{by} for {trainer.bad_epochs} {what} (best: "
                f"{ckpt_io.describe_best(trainer.monitor, trainer.best_metric, trainer.best_epoch)})")
            trainer.stop_training = True


# ---------------------------------------------------------------------- data sources
def episode_generator(owner: str, generator) -> EpisodeGenerator:
    """generator, if it is an EpisodeGenerator; else a TypeError naming what owner was given."""
    if not isinstance(generator, EpisodeGenerator):
        raise TypeError(f"{owner} needs an EpisodeGenerator (predlab.data.EpisodeGenerator(world_config, seed)), "
                        f"not {type(generator).__name__}")
    return generator


class EpisodeSource:
    """Fresh episodes every epoch from a seeded EpisodeGenerator (stream 1 + epoch)."""

    def __init__(self, generator: EpisodeGenerator, episodes_per_epoch: int):
        # checked here: a wrong one failed only when the first epoch began, after the validation episodes
        self.generator = episode_generator("EpisodeSource", generator)
        self.episodes = whole_number("episodes_per_epoch", episodes_per_epoch, 1)

    def for_epoch(self, epoch: int, trainer=None) -> SampleSet:
        """Fresh episodes for 0-based epoch index `epoch`."""
        epoch = epoch_index(epoch)
        return self.generator.generate(self.episodes, stream=1 + epoch, desc=f"episodes (epoch {epoch + 1})")


def epoch_index(epoch) -> int:
    """A 0-based epoch index, checked: epoch -1 drew stream 0, the validation episodes, to train on."""
    return whole_number("epoch", epoch, 0, SEED_MAX - 1)


# ---------------------------------------------------------------------- trainer
class TrainingDiverged(ArithmeticError):
    """An epoch left weights or losses that are NaN or infinite (a learning rate far too high).

    epoch: the epoch that diverged (not counted or saved); what: what is not finite."""

    def __init__(self, epoch: int, what: str, learning_rate: float):
        self.epoch, self.what, self.learning_rate = epoch, what, learning_rate
        super().__init__(f"training diverged in epoch {epoch}: {what} (learning rate {learning_rate:g} is too high: "
                         f"lower learning_rate, or raise warmup_epochs); the epoch was not counted or saved, and "
                         f"the trainer is back where the last finished epoch left it: trainer.set_schedule("
                         f"learning_rate=...) with a lower rate, then train again; in notebook 02, whose controls "
                         f"reach only a new trainer, move the learning-rate slider down and build the trainer again "
                         f"(a new run)")


def _switch_tf32(on: bool) -> Callable[[], None]:
    """Set TF32 for CUDA float32 matrix products; returns what puts torch's setting back.

    Through the API the user's code already uses: torch refuses to read allow_tf32 once its
    newer fp32_precision setting has been used, and the reverse."""
    m = torch.backends.cuda.matmul
    try:
        prev = m.allow_tf32
        m.allow_tf32 = on
        return lambda: setattr(m, "allow_tf32", prev)
    except RuntimeError:
        prev = m.fp32_precision
        m.fp32_precision = "tf32" if on else "ieee"
        return lambda: setattr(m, "fp32_precision", prev)


def _source_settings(source) -> Dict:
    """The TrainConfig fields that an EpisodeSource or a DaggerSource was made with (what a trainer
    made without a TrainConfig records for a resume: not TrainConfig's defaults, DAgger on)."""
    from .dagger import DaggerSource
    if isinstance(source, DaggerSource):
        return dict(train_episodes=source.episodes, dagger=True, dagger_start=source.start,
                    dagger_beta_decay=source.decay, dagger_beta_min=source.beta_min, dagger_buffer=source.buffer)
    if isinstance(source, EpisodeSource):
        return dict(train_episodes=source.episodes, dagger=False)
    return {}


def _torch_archive(path) -> bool:
    """Whether path is a checkpoint predlab wrote: a torch.save archive whose data.pkl (the small part: tensors
    are stored apart) names predlab's format. A .npz, a .docx, a TorchScript file or one's own torch.save of a
    state_dict is not."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            return len(pkl) == 1 and ckpt_io.FORMAT.encode() in z.read(pkl[0])
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError):
        return False


def _plain_numbers(obj):
    """obj with every numpy scalar in it (a learning rate from np.logspace, a callback's np.mean) as
    the Python number it holds, and every numpy array (np.asarray(0.5), np.percentile(x, [5, 95])) as
    the list of them: the weights-only loader refuses numpy's types, so a checkpoint holding one could
    not be read back (no resume, no export)."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()     # a 0-d array, as a scalar, gives its number
    if isinstance(obj, numbers.Real) and not isinstance(obj, (bool, int, float)):
        # a Fraction in a callback's logs (settings refuse one): the weights-only loader refuses its class
        return int(obj) if isinstance(obj, numbers.Integral) else float(obj)
    if isinstance(obj, dict):
        return {k: _plain_numbers(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain_numbers(v) for v in obj)
    return obj


_SPLIT_POOL: Dict[int, ThreadPoolExecutor] = {}
AUTO_SPLIT_MAX = 4   # parts of a batch with cpu_split auto (one per torch thread up to this)
# tokens (rows x (boids + 3)) a part of a batch holds at least with cpu_split auto: below ~1,800 tokens
# in all, a batch's two parts took longer side by side than the whole batch on one thread, as each
# part's fixed cost per op (and its wait for Python's lock) outweighs the work it takes off the
# other (2 cores, fixed flock sizes of 1-50 boids at batch 16-256; NOTES.md)
SPLIT_PART_TOKENS = 900
# AdamW's settings of how this machine and trainer run it, kept over a checkpoint's on a resume (capturable is
# off after a load, as checkpoints save it: the next CUDA graph capture turns it on again)
_ADAMW_MACHINE_FLAGS = ("fused", "foreach", "differentiable", "amsgrad")
# rows a validation batch holds at least, at the browser's 50 boids: a no_grad forward's fixed cost per
# op made validation of the default 10,000 samples take 0.83 s at batch 32 and 0.39 s at 256 (2 cores;
# NOTES.md). Larger flocks get fewer rows, so that its attention scores (rows x tokens squared) are
# never more than 256 rows at 53 tokens make (a few MiB): a batch of 1 at 10,000 boids stays one row.
# A larger training batch validates in batches of its own size.
VAL_BATCH_MIN = 256


def split_parts_for(cpu_split: int, batch_size: int, threads: int) -> int:
    """How many parts a CPU training batch of batch_size rows splits into at most, on `threads` torch
    threads (SupervisedTrainer.split_parts; the memory check counts by it too): cpu_split if given, else
    one part per thread up to the CPUs and AUTO_SPLIT_MAX; never more parts than rows."""
    if cpu_split:
        return min(cpu_split, batch_size)
    # threads beyond the CPUs make no more parts either
    return max(1, min(threads, usable_cpus(), AUTO_SPLIT_MAX, batch_size))


def validation_rows(batch_size: int, tokens: int) -> int:
    """Rows a validation batch holds at most, for samples of up to `tokens` tokens (VAL_BATCH_MIN)."""
    return max(batch_size, VAL_BATCH_MIN * 53 ** 2 // max(tokens, 53) ** 2)


def _split_pool(parts: int) -> ThreadPoolExecutor:
    """The threads that run the parts of a split batch (one pool per size, shared in the process).

    Each thread first sets one intra-op thread for itself. Otherwise its first matrix product
    starts an OpenMP team of its own; libgomp then manages more threads than there are cores
    and stops spinning between parallel regions, and every small multi-threaded op of the
    main thread afterwards (validation, DAgger rollouts, evaluation) waits for sleeping
    threads to wake: one layer's attention went from 14 to 24 ms at 2 threads.
    """
    if parts not in _SPLIT_POOL:
        _SPLIT_POOL[parts] = ThreadPoolExecutor(parts, thread_name_prefix="predlab-split", initializer=_one_thread)
    return _SPLIT_POOL[parts]


def _one_thread() -> None:
    """One intra-op thread for this thread, kept. torch sets a thread's count from the process's last
    set_num_threads at the thread's first parallel op: set alone, the 1 gave way to the main thread's 2 when
    that came later, so a part ran on 2 threads or 1 by the history of its thread, and split training's bits
    depended on which part ran where (two runs of one seed differed after other work in the process)."""
    torch.get_num_threads()         # that first setting, made now
    torch.set_num_threads(1)


def on_split_thread() -> bool:
    """Whether this is a thread of _split_pool: work it hands to the pool could wait behind itself."""
    return threading.current_thread().name.startswith("predlab-split")


class SupervisedTrainer:
    """Behaviour cloning: MSE between the model's action and the teacher's unit vector.

    train_dataset: a SampleSet (the same samples every epoch) or an object with
    for_epoch(epoch, trainer) -> SampleSet (fresh episodes). val_dataset: a SampleSet.
    Epochs are counted from 1; `trainer.epoch` is the last finished epoch.
    """

    @property
    def model(self) -> TransformerPredator:
        return self._model

    @model.setter
    def model(self, model) -> None:
        # the optimizer holds the first model's parameters: a model put in its place was never trained,
        # and its val loss stood still epoch after epoch without a word
        if getattr(self, "_model", None) is not None and model is not self._model:
            raise AttributeError("trainer.model cannot be replaced: the optimizer holds the first model's "
                                 "parameters. Build a trainer for the new model (create_trainer(model=...)), or "
                                 "load weights into this one: trainer.model.load_state_dict(...)")
        self._model = model

    def __init__(self, model: TransformerPredator, train_dataset, val_dataset: SampleSet,
                 learning_rate: float = 2e-3, batch_size: int = 256, weight_decay: float = 0.01,
                 warmup_epochs: float = 1.0, min_lr_ratio: float = 0.05, grad_clip: float = 1.0,
                 min_delta: float = 1e-5, device: Union[str, torch.device] = "auto", seed: int = 0,
                 callbacks: Sequence[Callback] = (), world_config: Optional[WorldConfig] = None,
                 train_config: Optional[TrainConfig] = None, autocast: bool = False, cpu_split: int = 0,
                 cuda_graphs: bool = True, tf32: bool = False):
        # of the wrong kind, each failed later with an AttributeError ('NoneType' object has no attribute 'check')
        if not isinstance(model, TransformerPredator):
            raise TypeError(f"model must be a TransformerPredator, not {type(model).__name__}")
        check_has_weights(model)          # a meta model failed in torch: "Cannot copy out of meta tensor"
        if not (isinstance(train_dataset, SampleSet) or callable(getattr(train_dataset, "for_epoch", None))):
            raise TypeError(f"train_dataset must be a SampleSet or have for_epoch(epoch, trainer) (an EpisodeSource, "
                            f"say), not {type(train_dataset).__name__}")
        if not isinstance(val_dataset, SampleSet):
            raise TypeError(f"val_dataset must be a SampleSet, not {type(val_dataset).__name__}")
        # the same types and bounds as the CLI's flags, named as they are there
        TrainConfig(learning_rate=learning_rate, batch_size=batch_size, weight_decay=weight_decay,
                    warmup_epochs=warmup_epochs, min_lr_ratio=min_lr_ratio, grad_clip=grad_clip,
                    min_delta=min_delta, seed=seed, cpu_split=cpu_split).validate()
        dtype = next(model.parameters()).dtype
        for name, data in (("train_dataset", train_dataset), ("val_dataset", val_dataset)):
            if isinstance(data, SampleSet):
                data.check(name, dtype=dtype)
        self.device = as_device(device)
        self.model = model.to(self.device)
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.batch_size, self.grad_clip, self.min_delta, self.seed = batch_size, grad_clip, min_delta, seed
        generator = getattr(train_dataset, "generator", None)
        if world_config is None and isinstance(generator, EpisodeGenerator):
            world_config = generator.cfg    # the world of its episodes, which a resume makes again
        elif world_config is None:
            # samples say nothing of their world: the checkpoints recorded the browser's without a word, and
            # evaluate and the catch check on them ran there (a 20-frame, 8-boid set's model in 50-boid worlds)
            warnings.warn("SupervisedTrainer: no world_config for training samples that do not say their world: "
                          "checkpoints record the browser's (WorldConfig()), and the catch check and evaluate of "
                          "a checkpoint run there; pass world_config=, the world the samples came from",
                          stacklevel=2)
        self.world_config = as_config(WorldConfig, world_config, "world_config")
        # a copy: set_schedule records its settings here, not in a TrainConfig the caller may share
        self._by_hand = train_config is None      # its settings then are its parts' (_recorded_settings)
        if train_config is not None:
            # the record of the run: checkpoints carried one the command line then refused to resume (a batch
            # size of 0), or settings this trainer never ran with (its arguments are what it runs with)
            train_config = as_config(TrainConfig, train_config, "train_config")
            train_config.validate()
            used = dict(learning_rate=learning_rate, batch_size=batch_size, weight_decay=weight_decay,
                        warmup_epochs=warmup_epochs, min_lr_ratio=min_lr_ratio, grad_clip=grad_clip,
                        min_delta=min_delta, seed=seed, cpu_split=cpu_split, cuda_graphs=cuda_graphs, tf32=tf32)
            differ = [f"{k} {getattr(train_config, k)!r} (the trainer's {k}= is {v!r})" for k, v in used.items()
                      if getattr(train_config, k) != v]
            if differ:
                raise ValueError(f"train_config says {'; '.join(differ)}: the trainer runs with its own arguments, "
                                 f"and train_config is what its checkpoints record of the run. Give them alike "
                                 f"(create_trainer(train_config=...) does)")
        self.train_config = (dataclasses.replace(train_config)
                             if train_config is not None else
                             TrainConfig(learning_rate=learning_rate, batch_size=batch_size,
                                         weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                                         min_lr_ratio=min_lr_ratio, grad_clip=grad_clip, min_delta=min_delta,
                                         seed=seed, cpu_split=cpu_split, **_source_settings(train_dataset)))
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        # fused: one kernel for all parameters instead of a dozen per tensor (matters most on a GPU)
        fused = True if self.device.type in ("cpu", "cuda") else None
        # the process's first fused AdamW imports torch._dynamo and sympy (~0.7 s): a notebook's Stop in that
        # import left sympy half-loaded, and every trainer built after failed until the kernel restarted
        with deferred_interrupt():
            self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                                {"params": no_decay, "weight_decay": 0.0}], lr=learning_rate,
                                               fused=fused)
        self.autocast = autocast  # bf16 autocast of the forward pass (GPU speed; the loss stays float32)
        self.tf32 = bool(tf32) and self.device.type == "cuda"   # TF32 products in training steps (GPU only)
        self.cpu_split = cpu_split
        # CUDA graphs: one captured training step per batch shape, replayed (GPU only)
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self._graphs: Dict[tuple, tuple] = {}
        self._graph_pool = None
        self._graph_stream = None
        self._graph_optimizer_ready = False
        self._device_data: List[tuple] = []
        self.scheduler = WarmupCosine(self.optimizer, 1, warmup_epochs, min_lr_ratio)
        self.callbacks = callback_list(callbacks)
        self.epoch = 0
        self.improved, self.ended_by, self.ended_in_epoch = False, None, False
        self.start_metric: Optional[float] = None   # the monitor's value on init_weights' own weights (fine_tune_start)
        self.start_best()
        self.monitor = "val_loss"
        self.history: List[Dict[str, float]] = []
        self.stop_training = False
        self.epoch_batches = 0         # batches in the epoch under way (train_epoch sets it; progress bars read it)
        self.validate_batches = 0      # batches of the validation under way (validate sets it)
        self.target_epochs = 0
        self.resumed_from: Optional[Path] = None   # the checkpoint load_checkpoint read, if any
        self.loaded_epoch = 0                       # and the epoch it was of
        self._sum_dtype = widest_float(self.device)
        if self.device.type == "cuda" and self.device.index is not None:
            # graphs capture on the current device's stream and Triton launches there: make it ours
            torch.cuda.set_device(self.device)
        # a model of viz.load_best_model carries its checkpoint's world, which evaluate.compare(model) draws from:
        # trained on here in another, it kept that one. It goes, and the model is evaluated as any other trained
        # model is, in the browser's world unless told (stamping this trainer's world instead changed what
        # compare(model) had always given, and a teacher Rollout of the browser's world no longer fitted). Last:
        # a trainer that fails to be built leaves the model as it was
        if getattr(model, "world_config", self.world_config) != self.world_config:
            del model.world_config

    # ------------------------------------------------------------------ loops
    def _on_device(self, data: SampleSet) -> SampleSet:
        """data on the training device; a dataset reused every epoch is moved only once."""
        if self.device.type == "cpu":
            return data
        for held, moved in self._device_data:
            if held is data:
                return moved
        moved = data.to_device(self.device)
        # the training set and the validation set, so that neither pushes the other out
        self._device_data = [(data, moved)] + [e for e in self._device_data if e[0] is self.val_dataset][:1]
        return moved

    def _batches(self, data: SampleSet, shuffle: bool, generator=None, rows: Optional[int] = None):
        """Device batches of `rows` samples (the batch size by default) grouped by boid count.

        Shuffled (training), the epoch's order is applied once (one gather per field on the device), so
        batches are contiguous slices: a copy of the set, which the memory check counts. In order
        (validation), each batch is gathered on its own: a copy of a 10,000-episode validation set beside
        it took 1.1x the set again. Widths are read on the host, so the loop never waits for the device.
        """
        if not len(data):          # batch_indices splits an empty set into one empty batch
            return
        idx_batches = data.batch_indices(rows or self.batch_size, shuffle=shuffle, generator=generator)
        order = torch.cat(idx_batches)
        sizes = [len(i) for i in idx_batches]
        widths = [int(n.max()) for n in data.n.cpu()[order].split(sizes)]     # on the host: no wait per batch
        src = self._on_device(data)
        o = order.to(self.device, non_blocking=True)
        N_all = max(widths)
        slots = torch.arange(N_all, device=self.device)
        if not shuffle:
            start = 0
            for size, N in zip(sizes, widths):
                idx = o[start:start + size]
                yield {"context": src.context[idx], "predator": src.predator[idx], "boids": src.boids[idx, :N],
                       "mask": slots[None, :N] < src.n[idx][:, None], "target": src.target[idx]}
                start += size
            return
        ctx, pred, boids, n, target = (src.context[o], src.predator[o], src.boids[o, :N_all], src.n[o],
                                       src.target[o])
        start = 0
        for size, N in zip(sizes, widths):
            end = start + size
            yield {"context": ctx[start:end], "predator": pred[start:end], "boids": boids[start:end, :N],
                   "mask": slots[None, :N] < n[start:end, None], "target": target[start:end]}
            start = end

    def _forward(self, batch) -> torch.Tensor:
        """Model actions in float32, under bf16 autocast when self.autocast is set."""
        # no cast cache under CUDA graphs: casts cached during a capture would be freed after it
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast,
                            cache_enabled=not self.cuda_graphs if self.autocast else None):
            return self.model(batch).float()

    @torch.no_grad()
    def validate(self, data: Optional[SampleSet] = None) -> float:
        """Mean squared error over a SampleSet (the validation set by default). InputError for a set
        without samples: it has no mean, and 0 would read as a perfect model."""
        if data is not None:      # a set of the user's: numpy or float64 fields failed inside the model
            if not isinstance(data, SampleSet):
                raise TypeError(f"validate takes a SampleSet, not {type(data).__name__}")
            data.check("data", dtype=next(self.model.parameters()).dtype)
        data = self.val_dataset if data is None else data
        if not len(data):
            raise InputError("validate: the set holds no samples, so it has no mean squared error")
        self.model.eval()
        total = torch.zeros((), dtype=self._sum_dtype, device=self.device)
        rows = validation_rows(self.batch_size, int(data.n.max()) + 3)
        self.validate_batches = math.ceil(len(data) / rows)     # what a progress bar counts to
        plain = Callback.on_validate_batch
        hooks = [cb for cb in self.callbacks if getattr(type(cb), "on_validate_batch", plain) is not plain]
        for step, loss in enumerate(self._validation_losses(self._batches(data, shuffle=False, rows=rows))):
            total += loss.to(total.dtype)
            for cb in hooks:
                cb.on_validate_batch(self, step)
        return float(total) / (2 * len(data))

    def _validation_losses(self, batches):
        """Each batch's summed squared error, in order. On a CPU with split batches, the batches run
        on the split's threads side by side, each on one thread: a no_grad forward on 2 threads has
        a fixed cost of ~2 ms (OMP_WAIT_POLICY=PASSIVE), and the figures are the same either way."""
        def loss(b):
            # the float32 model the browser runs, even after bf16 training or inside a caller's own autocast
            # (autocast is per thread: a split validation's threads did not inherit it, the main thread did)
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                return F.mse_loss(self.model(b).float(), b["target"], reduction="sum")
        parts = self.split_parts()
        if parts <= 1 or on_split_thread():
            yield from map(loss, batches)
            return
        pool, ahead = _split_pool(parts), []
        try:
            for b in batches:
                ahead.append(pool.submit(loss, b))
                if len(ahead) > 2 * parts:
                    yield ahead.pop(0).result()
            while ahead:
                yield ahead.pop(0).result()
        finally:
            for f in ahead:
                f.cancel()                        # an error or a Ctrl-C: the batches not started yet

    @property
    def callbacks(self) -> List[Callback]:
        return self._callbacks

    @callbacks.setter
    def callbacks(self, value) -> None:
        # a list stays the very list (a notebook that keeps it and appends between train() calls); a generator
        # (which a check alone used up: no callbacks ran), a tuple or one callback becomes one when assigned
        self._callbacks = value if isinstance(value, list) else callback_list(value, "trainer.callbacks")

    def split_parts(self) -> int:
        """How many parts a training batch is split into at most (1 = not split; see cpu_split, and
        batch_parts for the batches that auto leaves whole).

        On a CPU, a batch of this small model is many small matrix products and elementwise
        passes that intra-op threads share poorly; parts of the batch, each in its own thread
        with one intra-op thread, keep the cores busy (about 15-20% more samples/s on 2 cores,
        predlab.bench). Auto (0) makes one part per torch thread, at most AUTO_SPLIT_MAX: each
        part holds Python's lock for 8-15% of its time (py-spy, batch 32-128 at 50 boids), so
        more parts would queue on it. With dropout, each part draws its masks from a generator
        of its own, seeded from torch's default one (see _split_backward), so the run stays
        reproducible. A batch splits into a sample a part at most: asked for more parts than that
        (cpu_split 300 at batch_size 256), each batch ran unsplit on one thread, as "300 parts".
        """
        if self.device.type != "cpu":
            return 1
        return split_parts_for(self.cpu_split, self.batch_size, torch.get_num_threads())

    def batch_parts(self, batch, split: Optional[int] = None) -> int:
        """How many parts this batch trains in: split_parts(), but with cpu_split auto, no more parts
        than hold SPLIT_PART_TOKENS tokens each. A batch of few tokens (batch_size 64 of small flocks,
        say) trains faster whole on one thread: at batch 32 and 25 boids, 4,110-4,323 samples/s
        against 3,055-3,129 in two parts (2 cores). A batch of fewer rows than parts is not split."""
        split = self.split_parts() if split is None else split
        rows = len(batch["target"])
        if split <= 1 or rows < split:
            return 1
        if self.cpu_split:
            return split
        return max(1, min(split, rows * (batch["boids"].shape[1] + 3) // SPLIT_PART_TOKENS))

    def _split_backward(self, batch, parts: int) -> torch.Tensor:
        """Gradients of the batch's mean loss from `parts` row slices run in threads side by side.

        Each part returns its own gradients (torch.autograd.grad), summed here in a fixed order,
        so a run is deterministic; the sum equals the whole batch's gradient up to rounding.
        Returns the batch's mean loss.
        """
        B = len(batch["target"])
        bounds = [B * i // parts for i in range(parts + 1)]
        params = [p for p in self.model.parameters() if p.requires_grad]
        # dropout: a generator per part, seeded here from torch's default generator in a fixed
        # order (which thread draws first would otherwise decide which part gets which mask)
        dropout = self.model.training and any(isinstance(m, torch.nn.Dropout) and m.p > 0
                                              for m in self.model.modules())
        gens = [torch.Generator().manual_seed(int(s)) for s in torch.randint(0, 2 ** 62, (parts,))] if dropout \
            else [None] * parts

        def part(lo: int, hi: int, gen):
            sub = {k: v[lo:hi] for k, v in batch.items()}
            with dropout_generator(gen):
                loss = F.mse_loss(self._forward(sub), sub["target"], reduction="sum") / batch["target"].numel()
                return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

        pool = _split_pool(parts)
        futures = [pool.submit(part, bounds[i], bounds[i + 1], gens[i]) for i in range(parts)]
        results = [f.result() for f in futures]
        for i, p in enumerate(params):
            grads = [r[1][i] for r in results if r[1][i] is not None]
            p.grad = None
            for gr in grads:
                p.grad = gr if p.grad is None else p.grad.add_(gr)
        loss = results[0][0]
        for r in results[1:]:
            loss = loss + r[0]
        return loss

    def _clip_and_step(self) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self._graph_optimizer_ready and self.device.type == "cuda" and not torch.cuda.is_current_stream_capturing():
            # an epoch's last, smaller batch runs eagerly with the graphs' capturable AdamW: correct,
            # but torch warns about it once per optimizer
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*capturable=True.*")
                self.optimizer.step()
        else:
            self.optimizer.step()

    # ------------------------------------------------------------------ CUDA graphs
    def _prepare_graph_optimizer(self) -> None:
        """Make AdamW replayable: its state exists before any capture, it is capturable, and
        its learning rates are device tensors that the scheduler fills in place.

        Missing state is made by a step with zero gradients at learning rate 0 (weights and
        moments stay exactly as they are), after which the step counts are set back to 0: the
        same state a first eager step starts from. Only the weights without state take part in
        that step: the others (a frozen weight has none while the rest trained eagerly, or since
        a checkpoint was loaded) keep their moments and step counts.
        """
        if self._graph_optimizer_ready:
            return
        opt = self.optimizer
        params = [p for g in opt.param_groups for p in g["params"]]
        missing = [p for p in params if not opt.state.get(p)]
        if missing:
            lrs = [g["lr"] for g in opt.param_groups]
            for g in opt.param_groups:
                g["lr"] = 0.0
            for p in params:     # AdamW skips a weight without a gradient
                p.grad = torch.zeros_like(p) if not opt.state.get(p) else None
            opt.step()
            for g, lr in zip(opt.param_groups, lrs):
                g["lr"] = lr
            for p in missing:
                opt.state[p]["step"].zero_()
            opt.zero_grad(set_to_none=True)
        # capturable AdamW wants its step counts on the device (a CPU or MPS run's are not)
        self._steps_to_device(params)
        for g in opt.param_groups:
            g["capturable"] = True
            if not isinstance(g["lr"], torch.Tensor):
                g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float32, device=self.device)
        self._graph_lrs = [g["lr"] for g in opt.param_groups]     # what the captures read
        self._graph_params = params       # (each step's key reads their requires_grad: a module walk took ~60 us)
        self._graph_optimizer_ready = True

    def _steps_to_device(self, params) -> None:
        """AdamW's step counts of params on each weight's device, as fused and capturable steps want them."""
        for p in params:
            st = self.optimizer.state.get(p, {})
            if isinstance(st.get("step"), torch.Tensor) and st["step"].device != p.device:
                st["step"] = st["step"].to(p.device, torch.float32)

    def _restore_graph_lrs(self) -> None:
        """Put the captures' learning-rate tensors back into the optimizer, filled with any rate written
        over them: a float written into param_groups (by a callback, or a torch.optim.lr_scheduler) made
        the schedule write floats from then on, while the replayed steps kept the tensor's last rate."""
        for g, t in zip(self.optimizer.param_groups, self._graph_lrs):
            if g["lr"] is not t:
                t.fill_(float(g["lr"]))
                g["lr"] = t

    def _drop_graphs(self) -> None:
        """Forget captured steps (they point at optimizer tensors that a load replaced)."""
        self._graphs.clear()
        self._graph_optimizer_ready = False
        # a new pool for the next captures: re-capturing into a pool whose graphs are all gone
        # trips the allocator's use-count assertion if any block of it is still held
        self._graph_pool = None

    def _capture(self, b) -> tuple:
        """Capture forward, backward, clipping and the AdamW step for batches shaped like b.

        Two warm-up passes (forward and backward only, on a side stream, as CUDA graphs need)
        run first; the capture itself computes nothing, so the caller replays it for b. All
        graphs share one memory pool: no value lives from one replay to the next except the
        weights, AdamW's state and the inputs, which are outside it, and the loss, which the
        caller reads before the next replay.
        """
        self._prepare_graph_optimizer()
        static = {k: v.clone() for k, v in b.items()}
        # one side stream for every warm-up and capture of this trainer: cuBLAS keeps a workspace
        # per stream for the life of the process (~32 MiB on Hopper), and a new stream per capture
        # would make one for each of torch's 32 pooled streams; made in a warm-up, the workspace
        # is also outside the graphs' pool
        if self._graph_stream is None:
            self._graph_stream = torch.cuda.Stream(self.device)
        stream = self._graph_stream
        # the warm-ups draw dropout masks from the CUDA generator; its state is put back after them, so
        # that the replays draw what eager steps would (a replay advances it by what the step draws),
        # and an epoch repeated after an undo or a resume, which captures other shapes, draws as the
        # uninterrupted run did
        rng = torch.cuda.get_rng_state(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.optimizer.zero_grad(set_to_none=True)
                F.mse_loss(self._forward(static), static["target"]).backward()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.set_rng_state(rng, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool, stream=stream):
            loss = F.mse_loss(self._forward(static), static["target"])
            loss.backward()
            self._clip_and_step()
        # the replayed loss without its autograd nodes: kept alive, the parameters' AccumulateGrad
        # nodes (made on the capture's stream) would serve later eager steps on another stream,
        # which torch warns may synchronise or break a later capture
        return static, graph, loss.detach()

    def _graphed_step(self, b) -> torch.Tensor:
        """One training step by replaying the captured graph for b's shape (captured on first use).

        A step of this small model is hundreds of kernels of a few microseconds each: launched one by
        one from Python, the GPU waits for the host; a replay launches them all at once.
        """
        # the rate tensors back in before a capture too: one made while a float written over them was in
        # param_groups (a callback's, a torch scheduler's) baked that rate into its graph for the rest of the run
        self._prepare_graph_optimizer()
        self._restore_graph_lrs()
        # clip baked in a capture, and which weights train: a weight frozen since would go on being stepped
        key = (tuple(b["boids"].shape), self.autocast, self.tf32, float(self.grad_clip),
               tuple(p.requires_grad for p in self._graph_params))
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(b)
        static, graph, loss = entry
        for k, v in b.items():
            static[k].copy_(v)
        graph.replay()
        return loss

    def train_epoch(self, data: SampleSet) -> Dict[str, float]:
        """One pass over data; returns train_loss, lr and samples_per_s."""
        epoch = self.epoch + 1
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2 ** 64)   # any seed up to SEED_MAX
        self.model.train()
        n_batches = math.ceil(len(data) / self.batch_size)
        self.epoch_batches = n_batches      # what a progress bar over this epoch's batches counts to
        total = torch.zeros((), dtype=self._sum_dtype, device=self.device)
        split = self.split_parts()
        threads = torch.get_num_threads()
        t0 = time.perf_counter()
        if split > 1:
            # the parts run on their threads, one intra-op thread each; the main thread steps AdamW and
            # runs the batches too small to split, on one thread too: a training step at batch 64 on
            # 2 threads ran at half the rate of one thread (2,521-2,834 against 5,115-5,934 samples/s;
            # 3,077-3,107 on 2 threads with the SDPA attention that 2 threads now take)
            torch.set_num_threads(1)
        # read at each product, and baked into captures; torch's setting is left alone without --tf32
        restore_tf32 = _switch_tf32(True) if self.tf32 else None
        try:
            for step, b in enumerate(self._batches(data, shuffle=True, generator=g)):
                self.scheduler.set_progress(self.epoch + step / max(n_batches, 1))
                if self.cuda_graphs and len(b["target"]) == self.batch_size:
                    loss = self._graphed_step(b)
                else:
                    parts = self.batch_parts(b, split)
                    if parts > 1:
                        loss = self._split_backward(b, parts)
                    else:
                        loss = F.mse_loss(self._forward(b), b["target"])
                        self.optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        # drop the graph now: a graph kept alive into a CUDA-graph capture holds
                        # the weights' AccumulateGrad nodes on the wrong stream (torch warns)
                        loss = loss.detach()
                    self._clip_and_step()
                total += loss.detach().to(total.dtype) * len(b["target"])
                for cb in self.callbacks:
                    if type(cb).on_batch_end is not Callback.on_batch_end:
                        cb.on_batch_end(self, step, loss.detach().clone())   # a replay overwrites loss
        finally:
            if split > 1:
                torch.set_num_threads(threads)
            if restore_tf32 is not None:
                restore_tf32()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        return {"train_loss": float(total) / max(len(data), 1), "lr": float(self.optimizer.param_groups[0]["lr"]),
                "samples_per_s": len(data) / max(dt, 1e-9), "epoch_time": dt}

    def train(self, num_epochs: int, early_stopping_patience: int = 0) -> List[Dict[str, float]]:
        """Train until epoch num_epochs (counting epochs already done); returns the metric history.

        early_stopping_patience: stop after that many epochs without improvement, in this call only,
        in place of any EarlyStopping among the trainer's callbacks (0: those callbacks decide).
        An epoch that does not finish (Ctrl-C, divergence, an error) is undone before the error
        propagates, so train() again repeats it as an uninterrupted run would."""
        num_epochs = whole_number("num_epochs", num_epochs, 1)    # numpy's integers too, as plain ints
        early_stopping_patience = whole_number("early_stopping_patience", early_stopping_patience, 0)
        if num_epochs <= self.epoch:      # a notebook cell run again after its run finished, say
            warnings.warn(f"train({num_epochs}): this trainer has already trained {self.epoch} epoch(s), so there "
                          f"is nothing to do; epochs count from the start of the run: train({self.epoch + 10}) "
                          f"trains 10 more, and a new trainer starts a new run", stacklevel=2)
            return self.history
        callback_list(self.callbacks, "trainer.callbacks")    # (items may have been added since it was made)
        from .evaluate import CatchEvaluator     # (evaluate imports this module)
        if self.monitor == "neg_catch_ratio" and not any(isinstance(c, CatchEvaluator) for c in self.callbacks):
            # restored by load_checkpoint from a run that chose its best by the catch ratio: no epoch was ever the
            # best, so no best_model.pt was written and early stopping never fired (the CLI refuses this)
            warnings.warn("this trainer picks its best epoch by catch_ratio (the checkpoint it loaded did so), but "
                          "no CatchEvaluator among its callbacks measures it: no epoch will count as the best, so "
                          "neither best_model.pt nor early stopping follows; add predlab.evaluate.CatchEvaluator() "
                          "or set trainer.monitor = 'val_loss'", stacklevel=2)
        self.target_epochs = num_epochs
        self.scheduler.total = num_epochs
        callbacks = self.callbacks
        if early_stopping_patience:
            # this call's only: kept in self.callbacks, it stopped later calls given another patience or none.
            # It replaces an EarlyStopping already there, which otherwise stopped the run at its own patience.
            callbacks = [*(c for c in callbacks if not isinstance(c, EarlyStopping)),
                         EarlyStopping(early_stopping_patience)]
        self.stop_training = False
        self.val_dataset.check("val_dataset", allow_empty=False, dtype=next(self.model.parameters()).dtype)
        self.train_begin_epoch, self.ended_by = self.epoch, None   # what callbacks' on_train_end may ask
        self.ended_in_epoch = False     # whether what ended the run cut an epoch short (it was undone)
        self._monitor_told = False
        begun = []     # a callback that refuses to begin (a busy checkpoint folder) ends the ones begun
        try:
            for cb in callbacks:
                cb.on_train_begin(self)
                begun.append(cb)
            try:
                while self.epoch < num_epochs and not self.stop_training:
                    start = self._epoch_start()
                    self._epoch_whole = False
                    try:
                        self._one_epoch(callbacks)
                    except BaseException:    # Ctrl-C, divergence, a full disk: back to where the last epoch ended
                        if not self._epoch_whole:      # (a Ctrl-C held until its end had come: it stays)
                            self.ended_in_epoch = True
                            with deferred_interrupt():     # a second Ctrl-C would leave it half put back
                                self._undo_epoch(start)
                        raise
            except BaseException as e:
                # here too between epochs: a SIGTERM as the next epoch's start was copied ended the run without
                # the checkpoint of the last whole epoch, which a Checkpointer writes for a run cut short
                self.ended_by = type(e)      # the class: the exception would hold its frames' tensors
                raise
        finally:
            # every callback begun ends, even after one failed: a Checkpointer's failing last save left a
            # TensorBoard writer open, and one failing before a Checkpointer left its folder's lock held
            failed = []
            for cb in begun:
                try:
                    cb.on_train_end(self)
                except BaseException as e:     # noqa: B036 (raised again below, once all have ended)
                    failed.append(e)
            if failed:
                raise failed[0]
        return self.history

    def _one_epoch(self, callbacks: Sequence[Callback]) -> None:
        for cb in callbacks:
            cb.on_epoch_begin(self, self.epoch + 1)
        try:
            data = (self.train_dataset if isinstance(self.train_dataset, SampleSet)
                    else self.train_dataset.for_epoch(self.epoch, self))
        except NonFiniteActions as e:    # a source whose episodes the model drives (DAgger): NaN actions
            raise TrainingDiverged(self.epoch + 1, str(e), self.scheduler.base[0]) from e
        data.check(f"training data of epoch {self.epoch + 1}", allow_empty=False,
                   dtype=next(self.model.parameters()).dtype)
        logs = self.train_epoch(data)
        logs["val_loss"] = self.validate()
        self._check_diverged(logs)
        self.epoch += 1
        logs = {"epoch": self.epoch, **logs}
        for cb in callbacks:
            cb.on_evaluate(self, self.epoch, logs)
        metric = logs.get(self.monitor)  # absent in epochs without that measurement: no decision
        # the best epoch is the lowest metric, whatever the margin: min_delta is early stopping's. It picked the
        # best too, so that a run at --min_delta 1e-3 exported an epoch worse than its lowest val loss
        self.improved = metric is not None and metric < self.best_metric
        if self.improved:
            self.best_metric, self.best_epoch = metric, self.epoch
        if metric is not None and metric < self.early_stopping_ref - self.min_delta:
            self.early_stopping_ref, self.bad_epochs = metric, 0     # gains under min_delta add up until then
        elif metric is not None:
            self.bad_epochs += 1
        self.history.append(logs)
        # a Ctrl-C during the epoch's end takes effect once it has ended: one after its line was printed and its
        # best_model.pt written undid it, so the run said it stopped in the epoch it had just reported, and
        # saved the epoch before as its last whole one, older than its best_model.pt. A second one stops a
        # callback that hangs (the user's), and the epoch is undone
        with deferred_interrupt(again_stops=True):
            for cb in callbacks:
                cb.on_epoch_end(self, self.epoch, logs)
            self._epoch_whole = True
        if metric is None:
            self._tell_monitor_missing(logs)

    def start_best(self, metric: float = math.inf, epoch: int = 0) -> None:
        """Start the best epoch and early stopping's count afresh: from none (the defaults), or from
        `epoch`, whose monitored value was `metric`."""
        self.best_metric, self.best_epoch, self.bad_epochs, self.early_stopping_ref = metric, epoch, 0, metric

    def _tell_monitor_missing(self, logs: Mapping[str, float]) -> None:
        """Warn, once a train() call, when an epoch's logs lack the monitor and no epoch of the call has
        logged it: restored by load_checkpoint from a trainer whose callback logged it, no epoch counted
        as the best, so no best_model.pt was written and early stopping never fired, without a word."""
        # neg_catch_ratio: a CatchEvaluator logs it every few epochs, and train() warns when there is none
        this_call = self.history[-(self.epoch - self.train_begin_epoch):]     # (at least this epoch)
        if self._monitor_told or self.monitor == "neg_catch_ratio" or any(self.monitor in h for h in this_call):
            return
        self._monitor_told = True
        logged = ", ".join(repr(k) for k in logs if k != "epoch")
        warnings.warn(f"epoch {self.epoch} logged no {self.monitor!r}, the metric this trainer picks its best epoch "
                      f"by (trainer.monitor; logged: {logged}): unless a callback logs it in later epochs, no epoch "
                      f"will count as the best, so neither best_model.pt nor early stopping follows; add the callback "
                      f"that logs it, or set trainer.monitor = 'val_loss'", stacklevel=4)

    def _epoch_start(self) -> Dict:
        """What an epoch changes, copied as it starts (a few copies of the weights' size)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"weights": [t.detach().clone() for t in self.model.state_dict().values()],
                "optimizer": {p: {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
                              for p, st in self.optimizer.state.items()},
                "scheduler": self.scheduler.state_dict(), "rng": rng,
                "counters": (self.epoch, self.best_metric, self.best_epoch, self.bad_epochs, self.early_stopping_ref,
                             self.improved, len(self.history))}

    @torch.no_grad()
    def _undo_epoch(self, start: Mapping) -> None:
        """Put back what an epoch that did not finish changed, so that the trainer stands where the last
        finished epoch left it and train() again repeats that epoch as an uninterrupted run would
        (a notebook's cell run again after an interrupt). Done in place, so captured CUDA graphs stay valid;
        AdamW state made during the epoch is zeroed, which is how a first step finds it."""
        for t, v in zip(self.model.state_dict().values(), start["weights"]):
            t.copy_(v)
        self.model.eval()              # as a finished epoch leaves it (validation's mode): no dropout
        for p, st in self.optimizer.state.items():
            before = start["optimizer"].get(p, {})
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    v.copy_(before[k]) if k in before else v.zero_()
                elif k in before:
                    st[k] = before[k]
        self.scheduler.load_state_dict(start["scheduler"])      # and the learning rate with it
        torch.set_rng_state(start["rng"]["torch"])
        if "cuda" in start["rng"]:
            torch.cuda.set_rng_state(start["rng"]["cuda"], self.device)
        (self.epoch, self.best_metric, self.best_epoch, self.bad_epochs, self.early_stopping_ref, self.improved,
         n) = start["counters"]
        self.stop_training = False     # an early stop decided in the undone epoch is undone with it
        del self.history[n:]
        undo = getattr(self.train_dataset, "undo_epoch", None)   # DAgger's samples of the epoch
        if callable(undo):
            undo(self.epoch)

    def _check_diverged(self, logs: Mapping[str, float]) -> None:
        """Raise TrainingDiverged when the epoch just trained left NaN or infinity: NaN weights stay
        NaN, so the run could only save unusable checkpoints (rotating out the good ones), and a
        DAgger student with NaN actions stopped the next epoch with a traceback."""
        named = list(self.model.named_parameters())   # one device sync for all of them, not one each
        finite = torch.stack([torch.isfinite(p).all() for _, p in named]).tolist()
        bad = [name for (name, _), ok in zip(named, finite) if not ok]
        losses = [f"{k} {logs[k]}" for k in ("train_loss", "val_loss") if not math.isfinite(logs[k])]
        if bad or losses:
            what = f"weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold NaN or infinity" if bad \
                else ", ".join(losses)
            raise TrainingDiverged(self.epoch + 1, what, self.scheduler.base[0])

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, include_data: bool = True) -> Dict:
        """Everything needed to resume bit for bit, as plain tensors and values.

        include_data adds the data source's own state (DAgger's aggregated samples).
        """
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            # the trainer's GPU's only (a CPU trainer started CUDA here on a GPU machine), first in
            # the list, as checkpoints of a run on GPU 0 have always had it
            rng["cuda"] = [torch.cuda.get_rng_state(self.device)]
        state = {"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION,
                "model_config": dataclasses.asdict(self.model.config),
                "world_config": dataclasses.asdict(self.world_config),
                # epochs: what train() was asked for (the run's length, which --resume continues to),
                # not TrainConfig's default when the trainer was made by create_trainer in a notebook
                # paths as text: a Path (init_weights=Path("model.js")) is pickled code to the weights-only loader
                "train_config": {**{k: os.fspath(v) if isinstance(v, os.PathLike) else v
                                    for k, v in self._recorded_settings().items()},
                                 **({"epochs": self.target_epochs} if self.target_epochs else {})},
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self._optimizer_state(), "scheduler": self.scheduler.state_dict(),
                "rng": rng, "epoch": self.epoch, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "early_stopping_counter": self.bad_epochs, "early_stopping_ref": self.early_stopping_ref,
                "monitor": self.monitor,
                "history": [dict(h) for h in self.history],
                # the threads a CPU run made its sums with (--threads records 0 for torch's default, which is the
                # machine's): a resume on a machine of other cores is told which --threads goes on bit for bit
                **({"cpu_threads": torch.get_num_threads()} if self.device.type == "cpu" else {}),
                **({"data_source": self.train_dataset.state_dict()}
                   if include_data and hasattr(self.train_dataset, "load_state_dict") else {})}
        return _plain_numbers(state)    # numpy numbers as Python's

    def _recorded_settings(self) -> Dict:
        """The TrainConfig a checkpoint records: the run's own. A trainer built without one records what its
        parts say: the catch check, early stopping and the measure of the best that its callbacks and monitor
        give. It leaves out what it cannot know (a resume from the command line takes that command's values for
        those, and says so): its validation set's episodes, a seed where its parts have several, and the
        episodes and DAgger of a SampleSet source. It recorded TrainConfig's defaults for them all, and a resume
        went on with a catch check the run never had, and chose the best on other validation episodes than the
        run's best was measured on, without a word."""
        settings = dataclasses.asdict(self.train_config)
        settings["tf32"] = self.tf32     # what the steps ran with: --tf32 on a CPU made no TF32 products
        if not self._by_hand:
            return settings
        from .evaluate import CatchEvaluator     # (evaluate imports this module)
        evaluator = next((c for c in self.callbacks if isinstance(c, CatchEvaluator)), None)
        stopper = next((c for c in self.callbacks if isinstance(c, EarlyStopping)), None)
        generator = getattr(self.train_dataset, "generator", None)
        seeds = ({self.seed} | ({generator.seed} if isinstance(generator, EpisodeGenerator) else set())
                 | ({evaluator.seed} if evaluator else set()))
        settings.update(eval_every=evaluator.every if evaluator else 0,
                        early_stopping=stopper.patience if stopper else 0,
                        select_best_by="catch_ratio" if self.monitor == "neg_catch_ratio" else "val_loss")
        if evaluator:
            settings.update(eval_episodes=evaluator.episodes, eval_frames=evaluator.frames)
        unknown = ["val_episodes"] + (["seed"] if len(seeds) > 1 else [])
        if not _source_settings(self.train_dataset):      # a SampleSet: no episodes of a seed, no DAgger
            unknown += ["train_episodes", "dagger", "dagger_start", "dagger_beta_decay", "dagger_beta_min",
                        "dagger_buffer"]
        return {k: v for k, v in settings.items() if k not in unknown}

    def _optimizer_state(self) -> Dict:
        """optimizer.state_dict() as an eager trainer has it: float learning rates, not capturable
        (CUDA-graph settings are this trainer's, not the checkpoint's)."""
        sd = self.optimizer.state_dict()
        sd["param_groups"] = [{**g, "lr": float(g["lr"]), "capturable": False} for g in sd["param_groups"]]
        # on the CPU, as the weights are: a GPU run's moments stayed on its GPU, and torch.load
        # without map_location failed on a machine without one; load_state_dict moves them back
        sd["state"] = {i: {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
                       for i, st in sd["state"].items()}
        return sd

    def save_checkpoint(self, path: Union[str, Path], include_data: bool = True) -> Path:
        """Write a checkpoint atomically (include_data=False leaves out DAgger's samples)."""
        if Path(path).suffix.lower() in (".js", ".json"):   # a zip under the name the page loads as its weights
            raise ValueError(f"save_checkpoint({str(path)!r}) writes a torch checkpoint, which the page cannot load: "
                             f"name it .pt, and write the browser's weights with "
                             f"predlab.export.write_weights(trainer.model, {str(path)!r})")
        problem = unexpanded_home(path)
        if problem:
            raise ValueError(f"save_checkpoint: {problem}")
        # only a checkpoint (a torch zip) or an empty file is replaced: a typo must not wipe a source file or notes
        if Path(path).is_file() and Path(path).stat().st_size and not _torch_archive(path):
            raise FileExistsError(f"{path} exists and is not a checkpoint; predlab will not replace it (remove it, "
                                  f"or save elsewhere)")
        return ckpt_io.atomic_save(self.state_dict(include_data), path)

    def load_checkpoint(self, path: Union[str, Path], warn_settings: bool = True) -> Dict:
        """Restore model, optimizer, scheduler, RNG and counters; refuses another architecture.

        Warns (with warn_settings) when the checkpoint's run had other settings than this trainer's for what
        it trains on and measures (batch size, episodes, validation set, world, catch check): the run goes on
        with this trainer's. A notebook's trainer rebuilt after a kernel restart, its sliders back at their
        defaults, went on with a batch of 256 and 50 validation episodes where the run had 128 and 3, and
        compared its epochs with a best measured on the other set, without a word."""
        ck = ckpt_io.load_checkpoint_dict(path)
        ckpt_io.check_resumable(ck, path)
        ckpt_io.check_architecture(self.model, ck, path)
        backup = copy.deepcopy(self.state_dict(include_data=True))   # a state that does not fit is undone
        monitor = self.monitor
        try:
            self._restore(ck)
        except Exception as e:  # noqa: BLE001 (whatever a tampered state raises, e.g. int(inf): OverflowError)
            self._restore(backup)
            raise ckpt_io.CheckpointError(f"{path}: training state does not fit this trainer "
                                          f"({type(e).__name__}: {e}); the trainer is unchanged") from None
        self.resumed_from, self.loaded_epoch = Path(path), self.epoch
        if warn_settings:
            self._warn_other_settings(ck, path, monitor)
            # the command line's warning, for a notebook's trainer too (one rebuilt after a kernel restart)
            if (hasattr(self.train_dataset, "load_state_dict") and "data_source" not in ck
                    and ck.get("train_config", {}).get("dagger") is True):
                warnings.warn(f"{path} holds no DAgger samples (best_model.pt is saved without them): the trainer "
                              "goes on with an empty DAgger buffer, so it will not continue exactly; "
                              "checkpoint_epoch_N.pt files carry them", stacklevel=2)
        return ck

    def _warn_other_settings(self, ck: Mapping, path, monitor: str) -> None:
        """The warning of load_checkpoint: the run's settings that differ from this trainer's, each named, and
        the run's measure of the best (restored) where this trainer had another (monitor, before the load)."""
        skip = set(MACHINE_FIELDS) | set(CLI_ONLY_FIELDS) | set(SCHEDULE_FIELDS) | {"min_delta", "select_best_by"}
        run, mine = ck.get("train_config", {}), self._recorded_settings()
        differ = [(k, run[k], mine[k]) for k in mine if k not in skip and k in run and run[k] != mine[k]]
        world = ck.get("world_config", {})
        differ += [(k, world[k], v) for k, v in dataclasses.asdict(self.world_config).items()
                   if k in world and world[k] != v]
        measure = (f"; it chooses the best by the run's measure, {self.monitor} (this trainer's was {monitor}: set "
                   f"trainer.monitor and call trainer.start_best() to choose by that)"
                   if monitor != self.monitor else "")
        if differ:
            said = ", ".join(f"{k} {a!r} (this trainer: {b!r})" for k, a, b in differ)
            what = "catch check's" if self.monitor == "neg_catch_ratio" else "validation"
            measured = any(k in _measure_fields(self.monitor) for k, _, _ in differ) and not (
                self.monitor == "neg_catch_ratio" and not mine.get("eval_every", 1))   # no catch check here at all
            warnings.warn(f"{path}: its run had {said}; it goes on with this trainer's settings"
                          + (f", and its best so far was measured on other {what} episodes than this trainer's "
                             "(trainer.start_best() starts the best afresh)" if measured else "") + measure
                          + ". To go on as the run would have, build the trainer with the run's settings (in a "
                          "notebook: set the sliders to them, and build it again)", stacklevel=3)
        elif measure:
            warnings.warn(f"{path}: its run chose the best by another measure{measure}", stacklevel=3)

    def _restore(self, ck: Mapping) -> None:
        """Set model, optimizer, scheduler, counters, data source and RNG from a checkpoint dict."""
        self.model.load_state_dict(ck["model"])
        if "optimizer" in ck:
            # how this machine runs AdamW, not the run's: load_state_dict took the checkpoint's, and its
            # differentiable=True (or amsgrad without the state for it) failed at the first step, an epoch in
            own = [{k: g[k] for k in _ADAMW_MACHINE_FLAGS if k in g} for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict(ck["optimizer"])
            for g, flags in zip(self.optimizer.param_groups, own):
                g.update(flags, capturable=False)
                if g.get("fused"):
                    # torch left the step counts of a checkpoint of unfused AdamW (an MPS run's) on the CPU,
                    # where a fused CUDA step refuses them
                    self._steps_to_device(g["params"])
            self._drop_graphs()   # new optimizer tensors: capture again
            self._check_optimizer_state()
        if "scheduler" in ck:
            self.scheduler.load_state_dict(ck["scheduler"])
        # the settings the restored optimizer and schedule run with, as the next checkpoint records them:
        # they kept this trainer's own, so a resume of that checkpoint took them for its run's
        tc = self.train_config
        tc.learning_rate = float(self.scheduler.base[0])
        tc.weight_decay = float(self.optimizer.param_groups[0]["weight_decay"])     # the matrices' group
        tc.warmup_epochs, tc.min_lr_ratio = float(self.scheduler.warmup), float(self.scheduler.min_ratio)
        # as set_schedule checks them: a weight decay of 1e30 loaded, then failed there with a traceback (the CLI)
        # or made every step scale the weights by 1 - lr * wd, below zero (train() in a notebook)
        TrainConfig(learning_rate=tc.learning_rate, weight_decay=tc.weight_decay, warmup_epochs=tc.warmup_epochs,
                    min_lr_ratio=tc.min_lr_ratio).validate()
        self.epoch = int(ck.get("epoch", 0))
        self.best_metric = float(ck.get("best_metric", math.inf))
        self.best_epoch = int(ck.get("best_epoch", 0))
        self.bad_epochs = int(ck.get("early_stopping_counter", 0))
        # a checkpoint from before the two were apart: its best was early stopping's reference
        self.early_stopping_ref = float(ck.get("early_stopping_ref", self.best_metric))
        self.monitor = ck.get("monitor", self.monitor)
        if self.monitor in ("val_loss", "neg_catch_ratio"):    # as the next checkpoint records it, beside the monitor
            tc.select_best_by = "catch_ratio" if self.monitor == "neg_catch_ratio" else "val_loss"
        self.history = [dict(h) for h in ck.get("history", [])]
        if hasattr(self.train_dataset, "load_state_dict"):
            # a checkpoint without the source's state (best_model.pt) starts it empty, as a resume from it does:
            # a trainer that had trained on kept the samples of epochs after the one it went back to
            self.train_dataset.load_state_dict(ck.get("data_source", {}))
        rng = ck.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and self.device.type == "cuda":   # the run's GPU's, whichever GPU resumes it
            torch.cuda.set_rng_state(rng["cuda"][0], self.device)

    def _check_optimizer_state(self) -> None:
        """Raise ValueError naming what does not fit in the AdamW state just loaded: torch's
        load_state_dict takes any tensors, and a moment of the wrong shape crashed the fused step
        (a segmentation fault), a NaN one or a NaN beta turned every weight into NaN. Another
        optimizer put in its place (SGD, say) keeps other settings and states: not checked."""
        if not isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            return
        names = {p: n for n, p in self.model.named_parameters()}
        for i, g in enumerate(self.optimizer.param_groups):
            betas, eps, wd = g.get("betas"), g.get("eps"), g.get("weight_decay")
            if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                    and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)
                    and isinstance(eps, (int, float)) and 0 < eps < math.inf
                    and isinstance(wd, (int, float)) and 0 <= wd < math.inf):
                raise ValueError(f"optimizer parameter group {i}: betas {betas!r}, eps {eps!r}, weight_decay "
                                 f"{wd!r} (AdamW wants two betas in [0, 1), eps > 0, weight_decay >= 0)")
            if g.get("maximize"):     # gradient ascent on the loss
                raise ValueError(f"optimizer parameter group {i} maximizes the loss (maximize=True)")
            need = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if g.get("amsgrad") else set())
            for p in g["params"]:
                state = self.optimizer.state.get(p, {})
                missing = sorted(need - set(state)) if state else []    # (none at all: the weight not stepped yet)
                if missing:      # a KeyError at the first step, an epoch in
                    raise ValueError(f"optimizer state of {names.get(p, 'a weight')} lacks {', '.join(missing)}")
                for key, v in state.items():
                    where = f"optimizer state {key!r} of {names.get(p, 'a weight')}"
                    if key not in ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                        raise ValueError(f"{where}: not a state AdamW keeps")
                    if not isinstance(v, torch.Tensor) or not v.is_floating_point():
                        what = v.dtype if isinstance(v, torch.Tensor) else type(v).__name__
                        raise ValueError(f"{where} is {what}, not a floating-point tensor")
                    want = () if key == "step" else tuple(p.shape)
                    if tuple(v.shape) != want:
                        raise ValueError(f"{where} has shape {tuple(v.shape)}, the weight {tuple(p.shape)}")
                    if not bool(torch.isfinite(v).all()) or (key == "step" and float(v) < 0):
                        raise ValueError(f"{where} holds NaN, infinity or a negative step count")
                    if key == "step" and not float(v).is_integer():
                        raise ValueError(f"{where} is {float(v)!r}, not a whole number of steps")
                    if key in ("exp_avg_sq", "max_exp_avg_sq") and bool((v < 0).any()):
                        # a mean of squares: below zero, its square root in the step is NaN
                        raise ValueError(f"{where} holds a negative value (a mean of squared gradients)")

    def set_schedule(self, learning_rate: Optional[float] = None, weight_decay: Optional[float] = None,
                     warmup_epochs: Optional[float] = None, min_lr_ratio: Optional[float] = None) -> None:
        """Change the peak learning rate, weight decay, warm-up or final ratio, e.g. after
        load_checkpoint (which restores the checkpoint's); None keeps a setting. The schedule keeps
        its place: the learning rate jumps to the new schedule's value at the same progress."""
        TrainConfig(**{k: v for k, v in dict(warmup_epochs=warmup_epochs, min_lr_ratio=min_lr_ratio).items()
                       if v is not None},    # the rate and the decay are checked together, as they will be
                    learning_rate=self.scheduler.base[0] if learning_rate is None else learning_rate,
                    weight_decay=self.optimizer.param_groups[0]["weight_decay"] if weight_decay is None
                    else weight_decay).validate()
        if learning_rate is not None:
            self.scheduler.base = [float(learning_rate)] * len(self.optimizer.param_groups)
            for g in self.optimizer.param_groups:
                g["initial_lr"] = float(learning_rate)
            self.train_config.learning_rate = float(learning_rate)
        if weight_decay is not None:     # the first group: the matrices (biases and norms never decay)
            self.optimizer.param_groups[0]["weight_decay"] = float(weight_decay)
            self.train_config.weight_decay = float(weight_decay)
        if warmup_epochs is not None:
            self.scheduler.warmup = self.train_config.warmup_epochs = float(warmup_epochs)
        if min_lr_ratio is not None:
            self.scheduler.min_ratio = self.train_config.min_lr_ratio = float(min_lr_ratio)
        self.scheduler.set_progress(self.scheduler.progress)
        self._drop_graphs()              # captured steps hold the old settings

    # ------------------------------------------------------------------ one sample
    @torch.no_grad()
    def evaluate_sample(self, structured_inputs: Mapping) -> Dict:
        """Model vs teacher on one browser-form dict: actions, MSE and cosine similarity (NaN where no
        boid is left: the teacher's action is then (0, 0), which has no direction)."""
        from .teacher import TeacherPolicy
        if not isinstance(structured_inputs, Mapping):   # a list was named "sample 0 must be an object/dict, got list"
            raise InputError(f"evaluate_sample takes one sample, a dict, not {type(structured_inputs).__name__} (for "
                             f"several: model.predict takes a list, and predlab.evaluate scores whole episodes)")
        # the teacher in float64, as the page computes: in float32 two boids whose distances differ past its
        # precision tie, and the first was taken where the page takes the nearer one
        teacher = TeacherPolicy().get_normalized_action(structured_inputs).float()
        model = self.model.predict(structured_inputs).cpu()
        cos = F.cosine_similarity(model[None], teacher[None]).item() if teacher.norm() > 0 else float("nan")
        return {"model_action": model.tolist(), "teacher_action": teacher.tolist(),
                "mse": F.mse_loss(model, teacher).item(), "cosine_similarity": cos}


# ---------------------------------------------------------------------- building everything
def create_trainer(train_episodes: int = None, val_episodes: int = None, learning_rate: float = None,
                   batch_size: int = None, model: Optional[TransformerPredator] = None,
                   model_config: Optional[ModelConfig] = None, world_config: Optional[WorldConfig] = None,
                   train_config: Optional[TrainConfig] = None, callbacks: Sequence[Callback] = (),
                   verbose: bool = True, **overrides) -> SupervisedTrainer:
    """Model, seeded episode data (fresh every epoch) and a trainer, from the config defaults.

    Keyword arguments override TrainConfig fields (train_episodes, learning_rate, device, ...), ModelConfig
    fields (d_model, dropout, ...) and WorldConfig fields (boids_max, frames, ...), as the command line's
    flags do; they take precedence over train_config, model_config and world_config.
    init_weights: the model starts from that file's weights, at its sizes (not with model= too).
    resume: the trainer goes on from that checkpoint, as after trainer.load_checkpoint(resume) (its weights,
    optimizer, schedule and best so far; episodes and world are this call's).
    """
    if isinstance(overrides.get("device"), torch.device):     # SupervisedTrainer takes one: so does this
        overrides["device"] = str(overrides["device"])
    over = {k: v for k, v in dict(train_episodes=train_episodes, val_episodes=val_episodes,
                                  learning_rate=learning_rate, batch_size=batch_size, **overrides).items()
            if v is not None}
    fields = {cls: {f.name for f in dataclasses.fields(cls)} for cls in (TrainConfig, ModelConfig, WorldConfig)}
    unknown = [k for k in over if not any(k in names for names in fields.values())]
    if unknown:     # dataclasses' own TypeError named TrainConfig alone, and not a field near it
        known = sorted(set().union(*fields.values()))
        hints = [f"{k} (did you mean {', '.join(close)}?)" if (close := difflib.get_close_matches(k, known, 2)) else k
                 for k in unknown]
        raise TypeError(f"create_trainer: unknown settings: {', '.join(hints)}; it takes the fields of TrainConfig, "
                        f"ModelConfig and WorldConfig")
    model_over = {k: v for k, v in over.items() if k in fields[ModelConfig]}
    if model is not None and model_over:    # the model's own sizes and dropout would have been trained instead
        raise ValueError(f"model and {', '.join(f'{k}={v!r}' for k, v in model_over.items())}: give one (a model's "
                         f"sizes and dropout are set when it is built)")
    callbacks = callback_list(callbacks)     # before the episodes are made
    tc = dataclasses.replace(as_config(TrainConfig, train_config, "train_config"),
                             **{k: v for k, v in over.items() if k in fields[TrainConfig]})
    tc.validate()
    cli_only = [k for k in CLI_ONLY_FIELDS if overrides.get(k) is not None]
    if cli_only:    # taken and recorded in the checkpoints, yet nothing was written there or trained that long
        warnings.warn(f"create_trainer: {', '.join(cli_only)} only set what the command line does with them: here, "
                      f"give callbacks=[Checkpointer(checkpoint_dir, save_every, keep), TensorBoardLogger(log_dir)] "
                      f"(default_callbacks(train_config) makes the command line's set), and pass the epochs to "
                      f"trainer.train(num_epochs)", stacklevel=2)
    wc = dataclasses.replace(as_config(WorldConfig, world_config, "world_config"),
                             **{k: v for k, v in over.items() if k in fields[WorldConfig]})
    wc.validate()
    if model is not None and not isinstance(model, TransformerPredator):
        raise TypeError(f"model must be a TransformerPredator, not {type(model).__name__}")
    dtype = next(model.parameters()).dtype if model is not None else torch.float32
    if dtype != torch.float32:     # "val_dataset.context is float32": a set the caller never made
        raise ValueError(f"create_trainer makes float32 episodes, and the model's weights are {dtype}: pass "
                         f"model.float() (bfloat16 on a GPU: SupervisedTrainer(..., autocast=True)), or give a "
                         f"SupervisedTrainer samples of the model's dtype")
    if model is not None and tc.init_weights is not None:   # the file was ignored, yet recorded as the start
        raise ValueError(f"model and init_weights={str(tc.init_weights)!r}: give one (init_weights builds the model "
                         f"from that file's weights; or load them into your model yourself)")
    mc = model.config if model is not None else dataclasses.replace(
        as_config(ModelConfig, model_config, "model_config"), **model_over)
    start = None
    if model is None and tc.init_weights is not None:    # the file's weights and sizes; dropout model_config's
        from .export import load_model_file
        start = load_model_file(tc.init_weights)
        # a size set away from ModelConfig's default, as a size flag given, has to be the file's
        diffs = [f"{k} {getattr(mc, k)} but {tc.init_weights} has {getattr(start.config, k)}" for k in SIZE_FIELDS
                 if getattr(mc, k) not in (getattr(start.config, k), getattr(ModelConfig, k))]
        if diffs:
            raise ValueError("init_weights: model_config has another architecture: " + "; ".join(diffs))
        mc = dataclasses.replace(start.config, dropout=mc.dropout)
    mc.validate()
    device = resolve_device(tc.device, verbose=verbose, flag="device=")     # (the CLI's --device is checked before)
    problem = training_memory(tc, wc, mc, device)
    if problem:
        raise ValueError(problem)
    if tc.threads:
        if tc.threads > usable_cpus():    # torch's pools of 100000 threads hung or crashed the process
            warnings.warn(f"threads={tc.threads}, but this process may use {usable_cpus()} CPU(s): using "
                          f"{usable_cpus()}", stacklevel=2)
        torch.set_num_threads(min(tc.threads, usable_cpus()))
    torch.manual_seed(tc.seed)
    if model is None:
        model = TransformerPredator.from_config(mc)
        if start is not None:
            model.load_state_dict(start.state_dict())
    gen = EpisodeGenerator(wc, seed=tc.seed, num_workers=tc.num_workers, progress=tc.progress and verbose,
                           device="cpu")
    val = gen.generate(tc.val_episodes, stream=VAL_STREAM, desc="validation episodes")
    if verbose:
        print(f"validation: {plural(tc.val_episodes, 'episode')}, {plural(len(val), 'sample')}")
    if tc.dagger:
        from .dagger import DaggerSource
        source = DaggerSource(gen, tc.train_episodes, tc.dagger_start, tc.dagger_beta_decay, tc.dagger_beta_min,
                              tc.dagger_buffer)
        callbacks = [*callbacks, source]  # logs dagger_beta and dagger_samples
    else:
        source = EpisodeSource(gen, tc.train_episodes)
    callbacks = list(callbacks)
    if tc.early_stopping and not any(isinstance(c, EarlyStopping) for c in callbacks):
        # recorded in the run's checkpoints (and applied by a --resume of them), yet this run never stopped early
        callbacks.append(EarlyStopping(tc.early_stopping))
    if tc.eval_every:
        from .evaluate import CatchEvaluator
        if not any(isinstance(c, CatchEvaluator) for c in callbacks):
            callbacks.append(CatchEvaluator(tc.eval_every, tc.eval_episodes, tc.eval_frames, tc.seed,
                                            progress=tc.progress and verbose))
    carried = getattr(model, "world_config", None)
    trainer = SupervisedTrainer(model, source, val, learning_rate=tc.learning_rate,
                                batch_size=tc.batch_size, weight_decay=tc.weight_decay, warmup_epochs=tc.warmup_epochs,
                                min_lr_ratio=tc.min_lr_ratio, grad_clip=tc.grad_clip, min_delta=tc.min_delta,
                                device=device, seed=tc.seed, callbacks=callbacks, world_config=wc, train_config=tc,
                                cpu_split=tc.cpu_split, cuda_graphs=tc.cuda_graphs, tf32=tc.tf32)
    if tc.select_best_by == "catch_ratio":
        trainer.monitor = "neg_catch_ratio"  # the trainer minimises its monitor
    if tc.resume is not None:      # ignored, it trained a fresh model whose checkpoints named the file as the run's
        try:
            trainer.load_checkpoint(tc.resume)
        except BaseException:
            gen.close()
            if carried is not None:        # the caller's model as it was (the trainer dropped its world)
                model.world_config = carried
            raise
    return trainer


# TrainConfig fields that the CLI turns into callbacks and the length of its run; create_trainer takes
# them (they are recorded in checkpoints) but makes nothing of them.
CLI_ONLY_FIELDS = ("checkpoint_dir", "log_dir", "save_every", "keep_checkpoints", "epochs")


# ---------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The CLI, built from TrainConfig, ModelConfig and WorldConfig."""
    p = FlagParser(prog="python -m predlab.train",
                   description="Train the predator transformer by imitating the closest-pursuit teacher, then "
                               "export checkpoints/model.js for the browser.")
    add_config_flags(p, TrainConfig, "training")
    add_config_flags(p, ModelConfig, "model")
    add_config_flags(p, WorldConfig, "episodes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


# Settings of the machine, of where a run starts from and of where output goes: a resumed run takes
# these from its own command line. Every other setting of the run comes from the checkpoint unless a
# flag is given.
MACHINE_FIELDS = ("resume", "init_weights", "device", "threads", "num_workers", "progress", "checkpoint_dir",
                  "log_dir", "cpu_split", "cuda_graphs", "tf32")     # (a 16-core run's --cpu_split 8 on a laptop)
SIZE_FIELDS = ("d_model", "n_heads", "n_layers", "ffn_hidden")
# What a flag given on resume changes in the restored optimizer and schedule (SupervisedTrainer.set_schedule).
SCHEDULE_FIELDS = ("learning_rate", "weight_decay", "warmup_epochs", "min_lr_ratio")


def _given(argv) -> set:
    """The dests of the flags given on the command line (not left at their defaults)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def parse_args(argv=None):
    """Parse and check every value before anything touches the disk (bad values exit with code 2).

    Returns (train, model, world configs, schedule): schedule holds the learning-rate and
    weight-decay settings given as flags on resume, which set_schedule applies to the
    restored optimizer. On resume, every setting not given as a flag is the checkpoint's run's,
    except those of MACHINE_FIELDS; --checkpoint_dir defaults to the checkpoint's folder.
    """
    tc, mc, wc, schedule, notes = _parse(argv)
    _say(notes)
    return tc, mc, wc, schedule


def _say(notes: Sequence[tuple]) -> None:
    for text, to_stderr in notes:
        print(text, file=sys.stderr if to_stderr else sys.stdout)


def _machine_notes(run: Mapping, ns: Mapping, given: set, threads_used: Optional[int] = None,
                   gpu_run: bool = False) -> List[tuple]:
    """On resume: the threads and split parts a CPU run trained with, where this resume makes its sums
    otherwise. They are the machine's settings, not taken from the checkpoint, but they set how a batch's
    sums are made: the run parts from the uninterrupted one in the last bits at once (the flock then
    amplifies it). threads_used: the count a CPU run's checkpoint records (cpu_threads), which a run on torch's
    default threads records as its machine's: a checkpoint of an older predlab has none, and is said nothing."""
    try:
        device_type = resolve_device(ns["device"]).type
    except (TypeError, ValueError):       # said below, as the flag's error
        return []
    if device_type == "cuda" and run.get("tf32") is True and "tf32" not in given:
        # a machine's setting too, so not taken from the checkpoint: the run's products go on in full float32
        return [("note: the run trained with --tf32 (TF32 matrix products), this resume without: give --tf32 to "
                 "go on as it trained", True)]
    if device_type != "cpu":
        return []
    if gpu_run:         # its sums were a GPU's: no thread count or split gives them back
        return [("note: the run trained on a CUDA GPU; on the CPU it goes on in other sums, not bit for bit", True)]
    threads_now = min(ns["threads"], usable_cpus()) if ns["threads"] else torch.get_num_threads()
    # what the sums were made on: a trainer's --threads past the CPUs ran on fewer (create_trainer caps it)
    threads_then = threads_used or run.get("threads") or None
    notes = []
    if "threads" not in given and threads_then is not None and threads_then != threads_now:
        if threads_then > usable_cpus():     # --threads is capped at the CPUs: the advice could not be followed
            parts = min(threads_then, AUTO_SPLIT_MAX)
            split = "" if run.get("cpu_split") else (f"; its auto split made up to {parts} parts a batch "
                                                     f"(--cpu_split {parts} makes {parts})")
            notes.append((f"note: the run trained on {threads_then} threads, more than this machine's "
                          f"{usable_cpus()} CPU(s): it goes on in other sums, not bit for bit{split}", True))
        else:
            notes.append((f"note: the run trained on {threads_then} thread(s) (--threads {threads_then}), this resume "
                          f"on {threads_now}: give --threads {threads_then} to go on bit for bit as it would have",
                          True))
    # an explicit split against auto's, which also caps the parts by the batch's tokens (batch_parts): compared
    # as flags, unless both make one part
    if ("cpu_split" not in given and run.get("cpu_split") and ns["cpu_split"] != run["cpu_split"]
            and not min(run["cpu_split"], ns["batch_size"]) == split_parts_for(ns["cpu_split"], ns["batch_size"],
                                                                                threads_now) == 1):
        notes.append((f"note: the run split its batches by --cpu_split {run['cpu_split']}, this resume by "
                      f"{ns['cpu_split'] or 'auto'}: give --cpu_split {run['cpu_split']} to go on bit for bit as it "
                      "would have", True))
    return notes


def _parse(argv):
    """parse_args, with what it has to say returned as (text, to stderr) notes: main says them
    once it holds the checkpoint folder (a busy folder's error alone, not after "resuming...")."""
    notes: List[tuple] = []
    p = build_parser()
    a = p.parse_args(argv)
    ns = vars(a)
    for k in ("resume", "init_weights", "checkpoint_dir", "log_dir"):
        ns[k] = as_typed(ns[k])
    given = _given(argv)
    schedule: Dict[str, float] = {}
    if ns["init_weights"] is not None and ns["resume"] is not None:
        p.error("--init_weights and --resume: give one (--resume continues a run, its weights, optimizer and "
                "schedule included; --init_weights starts a new run from weights)")
    if ns["resume"] is not None:
        resume = ns["resume"]
        if not resume.strip():          # Path("") is ".", which read as "  is a directory"
            p.error("--resume: no file name given (pass a checkpoint_epoch_N.pt)")
        from .export import path_problem
        problem = path_problem(resume)
        if problem:
            p.error(f"--resume: {problem}")
        if Path(resume).is_dir():
            p.error(f"--resume: {resume} is a directory; pass a checkpoint_epoch_N.pt in it")
        if not Path(resume).is_file():
            from .export import looked_in, not_a_file
            p.error(f"--resume: {not_a_file(resume, f'no such checkpoint file: {resume}{looked_in(resume)}')}")
        try:
            ck = ckpt_io.load_checkpoint_dict(resume)
            ckpt_io.check_resumable(ck, resume)
        except (ckpt_io.CheckpointError, FileNotFoundError) as e:
            p.error(f"--resume: {e}")
        if ck.get("monitor", "val_loss") not in ckpt_io.MONITORS and "select_best_by" not in given:
            # it went on "by val_loss from now on", as if --select_best_by had been given, its best started afresh
            p.error(f"--resume: {resume}: 'monitor' is {ck['monitor']!r}, not a metric this command picks the best "
                    f"by ({' or '.join(map(repr, ckpt_io.MONITORS))}): give --select_best_by val_loss or catch_ratio "
                    f"to go on with the best chosen by that, from now on")
        _take_sizes(p, "--resume", "the checkpoint", ck["model_config"], ns, given)
        for key, cls in (("train_config", TrainConfig), ("world_config", WorldConfig)):
            # a newer predlab's setting, or an edited one: the run went on without it, in another world say,
            # and said nothing (predlab.evaluate refuses such a world)
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted((k for k in ck.get(key, {}) if k not in names), key=str)
            if unknown:
                p.error(f"--resume: {resume}: bad {key}: unknown {cls.__name__} fields: {', '.join(map(str, unknown))} "
                        f"(a checkpoint of another predlab version, or edited): the run cannot go on with its settings")
        run = {**ck["model_config"], **ck.get("train_config", {}), **ck.get("world_config", {})}
        changed, unrecorded = [], []

        def flag(name, value):
            return f"--{'' if value else 'no-'}{name}" if isinstance(value, bool) else f"--{name} {value}"

        for cls in (TrainConfig, ModelConfig, WorldConfig):
            for f in dataclasses.fields(cls):
                if f.name in MACHINE_FIELDS:
                    continue
                if f.name not in run:                  # a checkpoint of an older predlab
                    if f.name not in given:
                        unrecorded.append(f.name)
                elif f.name not in given:
                    ns[f.name] = run[f.name]
                elif ns[f.name] != run[f.name] and f.name != "epochs":   # a longer run is what resuming is for
                    changed.append(f"{flag(f.name, ns[f.name])} (the checkpoint's run: "
                                   f"{flag(f.name, run[f.name]) if isinstance(run[f.name], bool) else run[f.name]})")
        schedule = {k: ns[k] for k in SCHEDULE_FIELDS if k in given}
        notes += _machine_notes(run, ns, given, ck.get("cpu_threads"), gpu_run="cuda" in (ck.get("rng") or {}))
        if "checkpoint_dir" not in given:
            ns["checkpoint_dir"] = os.path.dirname(resume) or "."     # as typed: Path drops a ./ before a ~
    if ns["init_weights"] is not None:
        model = _read_init_weights(p, ns["init_weights"])
        _take_sizes(p, "--init_weights", ns["init_weights"], dataclasses.asdict(model.config), ns, given)
    try:
        tc = TrainConfig(**{f.name: ns[f.name] for f in dataclasses.fields(TrainConfig)})
        mc = ModelConfig(**{f.name: ns[f.name] for f in dataclasses.fields(ModelConfig)})
        wc = WorldConfig(**{f.name: ns[f.name] for f in dataclasses.fields(WorldConfig)})
        tc.validate(), mc.validate(), wc.validate()
        if a.quiet:
            tc.progress = False
        elif not sys.stderr.isatty() and "progress" not in given:
            tc.progress = False    # bars redrawn into a log file or pipe bury the epoch lines
        problem = training_memory(tc, wc, mc, resolve_device(tc.device))
        if problem:
            raise ValueError(problem + "; lower the largest")
        if tc.threads > usable_cpus():
            notes.append((f"note: --threads {tc.threads}, but this machine has {usable_cpus()} CPU(s) for this "
                          f"process: torch uses {usable_cpus()}", True))
            tc.threads = usable_cpus()
        if tc.num_workers > usable_cpus():   # each worker is a process with its own torch: 1000 filled the memory
            notes.append((f"note: --num_workers {tc.num_workers}, but this machine has {usable_cpus()} CPU(s) for "
                          f"this process: {usable_cpus()} worker processes generate the episodes", True))
            tc.num_workers = usable_cpus()
        if min(tc.cpu_split, tc.batch_size) > usable_cpus():
            # a thread a part: 1000 ran 256 threads on 2 cores, 7x slower, unsaid. Not capped: the parts set the
            # sums, so a run resumed from a larger machine goes on bit for bit with its own --cpu_split
            notes.append((f"note: --cpu_split {tc.cpu_split}, but this machine has {usable_cpus()} CPU(s) for this "
                          f"process: the parts take turns, slower than {usable_cpus()} (the same sums as on a machine "
                          f"of {min(tc.cpu_split, tc.batch_size)} CPUs)", True))
    except (TypeError, ValueError) as e:
        said = str(e)
        if said.startswith("device: "):        # TrainConfig's field, given here as the flag
            p.error("--" + said)
        p.error(_flag_words(said, given, ns["resume"] is not None))
    unused = [f"--{f.name}" for f in dataclasses.fields(TrainConfig)
              if f.name.startswith("dagger_") and f.name in given]
    if unused and not tc.dagger:
        notes.append((f"note: {', '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect: this run "
                      f"trains without DAgger (--no-dagger)", True))
    elif tc.dagger and "dagger_start" in given and tc.dagger_start > tc.epochs:
        notes.append((f"note: --dagger_start {tc.dagger_start} comes after the last epoch ({tc.epochs}): the teacher "
                      f"drives every episode, so this run is behaviour cloning alone", True))
    # flags of a part this run does not use were taken without a word, as if they had done something
    device_type = resolve_device(tc.device).type
    idle = [(("eval_episodes", "eval_frames"), tc.eval_every == 0, "this run measures no catch ratio (--eval_every 0)"),
            (("min_delta",), tc.early_stopping == 0,
             "it is early stopping's margin, and this run has none (--early_stopping 0; the best epoch is the "
             "lowest, by any margin)"),
            (("cuda_graphs", "tf32"), device_type != "cuda",
             f"CUDA GPU settings, and this run trains on the {device_type}")]
    for flags, off, why in idle:
        named = [f"--{f}" for f in flags if f in given]
        if named and off:
            notes.append((f"note: {', '.join(named)} {'has' if len(named) == 1 else 'have'} no effect: {why}", True))
    if "warmup_epochs" in given and tc.warmup_epochs > tc.epochs:     # 1e308 trained at 1e-311, without a word
        notes.append((f"note: --warmup_epochs {tc.warmup_epochs:g} is longer than the run ({tc.epochs} epochs): the "
                      f"learning rate rises the whole run and ends at {tc.epochs / tc.warmup_epochs:.3g} x "
                      f"--learning_rate, with no decay", True))
    # a resumed run goes on in its checkpoint's folder unless --checkpoint_dir is given: say so, not the flag alone
    folder = ("--checkpoint_dir" if tc.resume is None or "checkpoint_dir" in given else
              "--resume (the run goes on in its checkpoint's folder; --checkpoint_dir DIR writes elsewhere)")
    for flag, where in ((folder, tc.checkpoint_dir), ("--log_dir", tc.log_dir),
                        (folder, Path(tc.checkpoint_dir) / "previous")):   # where earlier runs go
        refuse_unwritable(p, flag, where, directory=True)
    # a model of sizes the stock page refuses is not written through a link (_export): its target is not checked
    problem = run_file_problem(tc.checkpoint_dir, exports={k: getattr(mc, k) for k in SIZE_KEYS} == BROWSER_SIZES)
    if problem:
        p.error(f"{folder}: {problem}")
    if tc.resume is not None:
        if ck.get("epoch", 0) >= tc.epochs:
            whose = "--epochs" if "epochs" in given else "the run's epochs,"
            p.error(f"--resume: the checkpoint is already at epoch {ck['epoch']}, and {whose} {tc.epochs}; "
                    f"pass --epochs larger than that")
        notes.append((f"resuming the run of {resume} with its settings" +
                      (", changed by flags: " + ", ".join(changed) if changed else "") +
                      f"; checkpoints go to {tc.checkpoint_dir}", False))
        if unrecorded:
            notes.append((f"note: {resume} does not record {', '.join(unrecorded)} (a checkpoint of an older "
                          f"predlab, or of a trainer built in Python without a TrainConfig): these take this "
                          f"command's values", True))
        # a run without DAgger has no samples to carry: turning it on here starts the buffer empty anyway
        # (a run whose DAgger is not recorded, a trainer built on a fixed SampleSet, is named in the note above)
        if tc.dagger and "data_source" not in ck and ck.get("train_config", {}).get("dagger") is True:
            notes.append((f"warning: {tc.resume} holds no DAgger samples (best_model.pt is saved without them): "
                          f"the run goes on with an empty DAgger buffer, so it will not continue exactly; "
                          f"checkpoint_epoch_N.pt files carry them", True))
    # the catch check runs at multiples of --eval_every (and at the last epoch when it picks the best)
    first = (ck.get("epoch", 0) if tc.resume is not None else 0) + 1
    if tc.eval_every and tc.select_best_by != "catch_ratio" and -(-first // tc.eval_every) * tc.eval_every > tc.epochs:
        notes.append((f"note: no epoch from {first} to {tc.epochs} is a multiple of --eval_every {tc.eval_every}, "
                      f"so this run measures no catch ratio; give --eval_every {tc.epochs} for one at its end", True))
    return tc, mc, wc, schedule, notes


def _measure_fields(monitor: str) -> List[str]:
    """The settings (TrainConfig's and WorldConfig's) that make the episodes the best is measured on: the
    validation set's for val_loss, the catch evaluation's for neg_catch_ratio."""
    world = [f.name for f in dataclasses.fields(WorldConfig)]
    if monitor == "neg_catch_ratio":     # its rollouts last eval_frames, with no noise on the actions
        return [k for k in world if k not in ("frames", "noise")] + ["seed", "eval_episodes", "eval_frames"]
    return world + ["seed", "val_episodes"]


def _measure_changed(ck: Mapping, tc: TrainConfig, wc: WorldConfig, monitor: str) -> List[str]:
    """The flags (as --name) whose values differ from the checkpoint's run and change the episodes the
    best model is chosen on: the validation set's for val_loss, the catch evaluation's for catch_ratio."""
    run = {**ck.get("train_config", {}), **ck.get("world_config", {})}
    names = _measure_fields(monitor)
    now = {**dataclasses.asdict(tc), **dataclasses.asdict(wc)}
    # one the checkpoint does not record (a trainer built in Python, which knows no seed of its validation set):
    # the run's may have been another
    train = {f.name for f in dataclasses.fields(TrainConfig)}
    return [f"--{k}" + ("" if k in run else " (not recorded)") for k in names
            if (k in run and run[k] != now[k]) or (k not in run and k in train)]


def _take_sizes(p: argparse.ArgumentParser, flag: str, source: str, sizes: Mapping, ns: Dict, given: set) -> None:
    """The model's sizes from a checkpoint or weight file into ns; a size flag given that differs
    is an error (the weights would not fit)."""
    diffs = [f"--{k} {ns[k]} but {source} has {sizes[k]}" for k in SIZE_FIELDS if k in given and sizes[k] != ns[k]]
    if diffs:
        p.error(f"{flag}: another architecture: " + "; ".join(diffs))
    ns.update({k: sizes[k] for k in SIZE_FIELDS})


def _read_init_weights(p: argparse.ArgumentParser, path: str) -> TransformerPredator:
    """The model of --init_weights, or the parser's exit 2 naming what is wrong with the file."""
    from .export import WeightFormatError, load_model_file, path_problem
    problem = path_problem(path)       # an unexpanded ~, a folder this user may not enter
    if problem:
        p.error(f"--init_weights: {problem}")
    try:
        return load_model_file(path, " (give a model.js/.json or a checkpoint .pt)")
    except (FileNotFoundError, WeightFormatError, ValueError) as e:   # CheckpointError is a ValueError
        # the file named, as evaluate and export name it: "--init_weights: cls_embedding: ..." did not say which
        p.error(f"--init_weights: {e}" if str(path) in str(e) else f"--init_weights: {path}: {e}")
    except OSError as e:
        p.error(f"--init_weights: cannot read {path}: {e.strerror or e}")


def fine_tune_start(trainer: SupervisedTrainer) -> float:
    """The validation MSE of the weights a run started from a file (init_weights) has before training:
    what its epochs must beat. ValueError when it is not finite: trained on, such weights diverged at
    once, and the divergence blamed the learning rate."""
    mse = trainer.validate()
    if not math.isfinite(mse):
        raise ValueError(f"{trainer.train_config.init_weights}: the model's actions on the validation episodes are NaN "
                         f"or infinite (val MSE {mse}): its weights hold values too large for float32's arithmetic; "
                         "no training can start from them")
    # what the run's best epoch is chosen by, measured on the file's weights: with --select_best_by catch_ratio a
    # fine-tune that made the model worse went unsaid, as the file's catch ratio was never measured
    trainer.start_metric = mse if trainer.monitor == "val_loss" else None
    from .evaluate import CatchEvaluator     # (evaluate imports this module)
    evaluator = next((c for c in trainer.callbacks if isinstance(c, CatchEvaluator)), None)
    if trainer.monitor == "neg_catch_ratio" and evaluator is not None:
        logs: Dict[str, float] = {}
        evaluator.measure(trainer, logs, "the weights before training")
        if math.isfinite(logs["neg_catch_ratio"]):
            trainer.start_metric = logs["neg_catch_ratio"]
    return mse


def init_world_note(path, wc: WorldConfig) -> Optional[str]:
    """A note when init_weights is a checkpoint trained in another world than wc (the run's): its weights
    carry over, its world does not, and nothing said so (evaluate takes a checkpoint's world, and says so)."""
    from .evaluate import _WORLD_FLAGS, _world_of     # (evaluate imports this module)
    try:
        world, source = _world_of(path)
    except (OSError, ValueError):      # read before: a file changed since is the training's to report
        return None
    if source is None:                 # a weight file, or a checkpoint that records no world
        return None
    differs = [f"{k} {getattr(world, k)} (this run: {getattr(wc, k)})" for k in _WORLD_FLAGS
               if getattr(world, k) != getattr(wc, k)]
    if not differs:
        return None
    return (f"note: {path} was trained in another world, {', '.join(differs)}: this run trains and validates in "
            f"its own (give the file's values as flags to train in the file's world)")


def start_words(trainer: SupervisedTrainer, mse: float) -> str:
    """What fine_tune_start measured: "val MSE 0.00165", and the catch ratio where the best follows it."""
    start = trainer.start_metric
    ratio = f", catch ratio {-start:.4f}" if trainer.monitor == "neg_catch_ratio" and start is not None else ""
    return f"val MSE {mse:.5f}{ratio}"


def fine_tune_shortfall(trainer: SupervisedTrainer, start: Optional[float], exports: bool = False) -> Optional[str]:
    """After a run started from a file whose val MSE was `start`: "no epoch beat the weights of ..." when
    none did, by what the best epoch follows (val loss; the catch ratio fine_tune_start measured on the
    file, where the best follows that), else None (also for start None: no file). exports: model.js is written
    next (the command line's run)."""
    if start is None or not trainer.best_epoch:
        return None
    base = start if trainer.monitor == "val_loss" else trainer.start_metric
    if base is None or trainer.best_metric < base:
        return None
    init = trainer.train_config.init_weights
    if trainer.monitor == "val_loss":
        said = (f"no epoch beat the weights of {init} (val MSE {start:.5f} before training, "
                f"{trainer.best_metric:.5f} at best)")
    else:
        said = (f"no epoch beat the weights of {init} (catch ratio {-base:.4f} before training, "
                f"{-trainer.best_metric:.4f} at best, on the catch check's episodes)")
    # a file of the folder this run writes in (fine-tuning its best_model.pt) was moved aside for the run's own:
    # the path named above holds the worse model now
    moved = init_weights_moved(trainer)
    if moved is not None:
        return f"{said}; that file is now {moved}, and {init} is this run's"
    for cb in trainer.callbacks:
        # a model.js there when the run began: the export that follows keeps it in previous/ (the CLI's)
        if (isinstance(cb, Checkpointer) and Path(init).resolve().parent == cb.dir.resolve()
                and cb.dir / Path(init).name in cb.foreign_exports() and exports):
            return (f"{said}; the export keeps that file in {cb.dir / 'previous'}, and {init} becomes this "
                    "run's")
    return said


def init_weights_moved(trainer: SupervisedTrainer) -> Optional[Path]:
    """Where the file a run started from (init_weights) is now, when it was a file of the folder the run writes in
    (fine-tuning its best_model.pt) that the run's own first write moved aside; else None."""
    init = trainer.train_config.init_weights
    for cb in trainer.callbacks:
        moved = getattr(cb, "moved_to", None)
        if (init is not None and isinstance(cb, Checkpointer) and moved is not None
                and Path(init).resolve().parent == cb.dir.resolve() and (moved / Path(init).name).is_file()):
            return moved / Path(init).name
    return None


def settings_markdown(trainer) -> str:
    """The run's settings as a Markdown table: what it resumed from, the model's sizes, the training's and
    the world's settings (TensorBoard's Text tab shows it)."""
    rows = [("resumed from", getattr(trainer, "resumed_from", None)), ("first epoch", trainer.epoch + 1),
            ("device", getattr(trainer, "device", None))]
    for prefix, config in (("model", getattr(getattr(trainer, "model", None), "config", None)),
                           ("train", getattr(trainer, "train_config", None)),
                           ("world", getattr(trainer, "world_config", None))):
        if dataclasses.is_dataclass(config):
            rows += [(f"{prefix}.{f.name}", getattr(config, f.name)) for f in dataclasses.fields(config)]
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")      # noqa: E731
    return "| setting | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {cell(v)} |" for k, v in rows
                                                          if v is not None)


def shell_words(*words) -> str:
    """Words as this system's shell reads them: POSIX quoting ('C:\\runs' in cmd.exe keeps the quotes), or
    Windows' (double quotes where a word needs them)."""
    import subprocess
    return subprocess.list2cmdline(map(str, words)) if os.name == "nt" else shlex.join(map(str, words))


def tensorboard_beside_python() -> Path:
    """Where this Python's environment has its tensorboard (.venv/bin/tensorboard, .venv\\Scripts\\tensorboard.exe
    on Windows), which need not be on PATH; it may not be there."""
    return Path(sys.executable).parent / ("tensorboard.exe" if os.name == "nt" else "tensorboard")


def tensorboard_command(log_dir: Union[str, Path]) -> str:
    """The command that shows log_dir's runs, to run where this one runs: the tensorboard beside this
    Python (tensorboard_beside_python), and the folder as given."""
    tb = tensorboard_beside_python()
    if not tb.is_file():
        exe = "tensorboard"
    elif Path(os.path.abspath(tb)).is_relative_to(Path.cwd()):
        exe = os.path.relpath(os.path.abspath(tb))
    else:
        exe = str(tb)
    return shell_words(exe, "--logdir", log_dir)


def stretch_note(trainer: SupervisedTrainer, ck: Mapping, epochs: int, resume) -> Optional[str]:
    """A note when the resumed run's learning rate goes back up: --epochs past the checkpoint's run
    stretches its cosine schedule, and a finished run's 1e-4 became 1.3e-3 again, with no warm-up (the
    README's fine-tuning figures: a high rate on a trained model first undid it)."""
    was = ck.get("scheduler", {}).get("total") if isinstance(ck.get("scheduler"), Mapping) else None
    rates = stretched_rates(trainer, was, epochs)
    if rates is None:
        return None
    before, rate = rates
    return (f"note: --epochs {epochs} stretches the run's schedule of {was:g} epochs: the learning rate goes back up "
            f"from {before:.1e}, where epoch {trainer.epoch} ended, to {rate:.1e} as epoch {trainer.epoch + 1} "
            f"begins. To polish a finished model at a low rate instead, start a new run from it: "
            f"{shell_words('--init_weights', resume)} --learning_rate 3e-4")


def stretched_rates(trainer: SupervisedTrainer, was, epochs: int) -> Optional[Tuple[float, float]]:
    """(the rate where the trainer's epoch ended, the rate as the next begins) when training to `epochs`
    stretches its cosine schedule of `was` epochs so that the rate goes back up (by more than half), else None."""
    if isinstance(was, bool) or not isinstance(was, (int, float)) or not epochs > was:
        return None        # the run's own schedule goes on (a warm-up epoch's last step ran below the next's rate)
    sched, saved = trainer.scheduler, trainer.scheduler.total
    try:     # the rate as epoch N+1 begins, on the run's schedule and on the stretched one (the same peak)
        sched.total = was
        before = sched.factor(float(trainer.epoch)) * sched.base[0]
        sched.total = epochs
        rate = sched.factor(float(trainer.epoch)) * sched.base[0]
    finally:
        sched.total = saved
    return None if rate <= 1.5 * before else (before, rate)


def default_callbacks(tc: TrainConfig) -> List[Callback]:
    """The CLI's callbacks: progress or epoch lines, TensorBoard, checkpoints, early stopping."""
    # checkpoints before TensorBoard: an epoch whose checkpoint cannot be written is undone ("not counted"),
    # and TensorBoard had logged it, a curve a step past the run's files
    cbs: List[Callback] = [ProgressBar() if tc.progress else PrintLogger(),
                           Checkpointer(tc.checkpoint_dir, tc.save_every, tc.keep_checkpoints),
                           TensorBoardLogger(tc.log_dir, announce=True)]
    if tc.early_stopping:
        cbs.append(EarlyStopping(tc.early_stopping))
    return cbs


def main(argv=None) -> int:
    try:    # (a Ctrl-C as the SIGTERM handler is put in place; first, so that none lands outside it)
        began: List[bool] = []     # _run's handling has begun: a Ctrl-C that gets here came as it ended
        with command_line():     # a SIGTERM (a scheduler, `timeout`, `kill`) stops the run as a Ctrl-C does
            return _main(argv, began)
    except KeyboardInterrupt as e:
        word, code = stop_words(e)
        print(f"\n{word} as the run ended: the files written are whole" if locals().get("began") else
              f"\n{word} before training began: nothing was written", file=sys.stderr)
        return code


def _flag_words(said: str, given, resumed: bool) -> str:
    """A config check's message on the command line: its fields as flags ("select_best_by catch_ratio needs
    eval_every > 0" named no flag), and on a resume which of them are the checkpoint's run settings (it blamed
    the checkpoint for an --eval_every 0 given)."""
    fields = {f.name for cls in (TrainConfig, ModelConfig, WorldConfig) for f in dataclasses.fields(cls)
              if "_" in f.name}      # "epochs", "device", "noise" are words of the messages too
    named = [f for f in sorted(fields, key=len, reverse=True) if re.search(rf"(?<![\w-]){f}(?!\w)", said)]
    for f in named:
        said = re.sub(rf"(?<![\w-]){f}(?!\w)", "--" + f, said)
    if not resumed:
        return said
    theirs = [f"--{f}" for f in named if f not in given]
    if not named:
        return "--resume: with the checkpoint's run settings: " + said
    if not theirs:
        return said
    one = len(theirs) == 1
    it, are = ("it", "is") if one else ("them", "are")
    return (f"{said} ({' and '.join(theirs)} {are} the checkpoint's run setting{'' if one else 's'}: "
            f"give {it} to change {it})")


def _main(argv, began: List[bool]) -> int:
    try:    # reading a --resume or --init_weights file takes a while; a Ctrl-C in it came as a traceback
        tc, mc, wc, schedule, notes = _parse(argv)
        made = not os.path.lexists(tc.checkpoint_dir)    # a folder of this run's: removed if it stays empty
        try:
            lock = lock_checkpoint_dir(tc.checkpoint_dir)
        except (FolderBusy, OSError) as e:
            # a resume goes on in its checkpoint's folder: the user may have given no --checkpoint_dir
            flag = ("--resume (the run goes on in its checkpoint's folder)"
                    if tc.resume is not None and "checkpoint_dir" not in _given(argv)   # (the folder given: its flag)
                    else "--checkpoint_dir")
            build_parser().error(f"{flag}: {e.strerror if isinstance(e, OSError) and e.strerror else e}")
    except KeyboardInterrupt as e:
        word, code = stop_words(e)
        print(f"\n{word} before training began: nothing was written", file=sys.stderr)
        return code
    try:
        _say(notes)
        code = _run(tc, mc, wc, schedule, began)
    except BrokenPipeError:    # stdout's reader has gone (`| head`) at a line before training began
        silence_stdout()
        # (a line of _run's before its training, "model: ... parameters", is after `began` and before any write)
        print("stdout was closed (broken pipe) " + ("as the run ended: the files written are whole"
                                                    if "training" in began else
                                                    "before training began: nothing was written"), file=sys.stderr)
        return PIPE_CLOSED
    except KeyboardInterrupt as e:    # a second one, while the run stopped after a first: at once
        word, code = stop_words(e)
        if not began:    # a first one, in the notes or on the way into _run: before it handles its own
            print(f"\n{word} before training began: nothing was written", file=sys.stderr)
        else:
            print(f"\n{word} again: stopped at once; the files written so far are whole", file=sys.stderr)
        return code
    finally:
        # a run refused before it wrote anything (a --resume whose state does not fit this trainer) left a new
        # folder holding only the lock file: it goes, the lock file first, while held, so that no other run can
        # have taken it meanwhile
        gone = made and _remove_if_only_lock(Path(tc.checkpoint_dir))
        try:
            lock.release()
        except FileNotFoundError:   # a lock whose file is the lock itself (filelock's soft mode), removed above
            if not gone:
                raise
    return code


def _remove_if_only_lock(d: Path) -> bool:
    """Remove folder d when it holds nothing but the lock file; whether it did."""
    try:
        if [p.name for p in d.iterdir()] != [LOCK_NAME]:
            return False
        (d / LOCK_NAME).unlink()
        d.rmdir()
        return True
    except OSError:
        return False        # kept as it is: a folder left empty is harmless


def _run(tc: TrainConfig, mc: ModelConfig, wc: WorldConfig, schedule: Mapping, began: List[bool]) -> int:
    """main's training and export, in a checkpoint folder it holds the lock of; appends to `began` once
    it handles a Ctrl-C itself."""
    def stopped(e: KeyboardInterrupt) -> int:
        word, code = stop_words(e)
        print(f"\n{word} before training began: nothing was written, and the files in {tc.checkpoint_dir} "
              f"are where they were", file=sys.stderr)
        return code
    try:     # the validation episodes take a while (50 of them, seconds; more, minutes)
        began.append(True)
        # reads init_weights again: the file as it is now; the checkpoint is loaded below, where its errors are told
        trainer = create_trainer(model_config=mc, world_config=wc, train_config=dataclasses.replace(tc, resume=None),
                                 callbacks=default_callbacks(tc), verbose=True)
        trainer.train_config.resume = tc.resume
    except KeyboardInterrupt as e:
        return stopped(e)
    except WorkerError as e:         # a worker killed while the validation episodes were made
        print(f"error before training began: {e} Nothing was written, and the files in {tc.checkpoint_dir} are "
              f"where they were", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:
        if tc.init_weights is None:
            raise
        build_parser().error(f"--init_weights: {e}")   # changed on disk since parse_args read it
    if tc.progress:
        trainer.callbacks.insert(1, PrintLogger())
    for cb in trainer.callbacks:
        if isinstance(cb, Checkpointer):     # a stopped run goes on in another command, not in this process
            cb.go_on = "--resume it to go on"
    # a one-epoch run's few steps ran at a thousandth of the rate and up. Not on a resume, which starts where its
    # checkpoint's schedule was (it said "climbs from 2.0e-06" of a run going on at 1.3e-3), nor past the run's
    # end, which _parse's note says
    # (trainer.epoch is 0 here on a resume too: the checkpoint is loaded below)
    if tc.resume is None and tc.warmup_epochs == tc.epochs:
        print(f"note: the warm-up (--warmup_epochs {tc.warmup_epochs:g}) lasts the whole run of {tc.epochs} "
              f"epoch{'s' if tc.epochs != 1 else ''}: the learning rate climbs from {tc.learning_rate * 1e-3:.1e} "
              f"and never decays; a shorter --warmup_epochs trains more in so few epochs")
    start_mse = None
    if tc.init_weights is not None:    # what fine-tuning has to beat
        try:
            start_mse = fine_tune_start(trainer)
        except KeyboardInterrupt as e:
            trainer.train_dataset.generator.close()
            return stopped(e)
        except ValueError as e:
            trainer.train_dataset.generator.close()
            build_parser().error(f"--init_weights: {e}")
        print(f"starting from the weights of {tc.init_weights} (a new run: fresh optimizer and schedule): "
              f"{start_words(trainer, start_mse)} before training")
        note = init_world_note(tc.init_weights, wc)
        if note:
            print(note, file=sys.stderr)
    if tc.resume:
        try:
            ck = trainer.load_checkpoint(tc.resume, warn_settings=False)    # parse_args said which flags changed
        except ckpt_io.CheckpointError as e:   # a training state that parse_args' checks could not see
            trainer.train_dataset.generator.close()
            build_parser().error(f"--resume: {e}")
        except OSError as e:     # the file gone or changed since parse_args read it (a run's rotation removed it)
            trainer.train_dataset.generator.close()
            why = (f"{e} (it was there when the flags were checked: another run's --keep_checkpoints may have "
                   f"removed it)" if isinstance(e, FileNotFoundError) else
                   f"{tc.resume}: {e.strerror or e} (it was there when the flags were checked)")
            build_parser().error(f"--resume: {why}")
        trainer.set_schedule(**schedule)   # flags given on resume win over the restored optimizer's
        monitor = "neg_catch_ratio" if tc.select_best_by == "catch_ratio" else "val_loss"
        moved = _measure_changed(ck, tc, wc, monitor)
        if trainer.monitor != monitor:     # --select_best_by given: the best so far was of the other measure
            print(f"best_model.pt follows {tc.select_best_by} from now on; the best so far and the early-stopping "
                  f"count start afresh")
            trainer.monitor = monitor
            trainer.start_best()
        elif moved:                        # the best so far was measured on other episodes: no longer comparable
            print(f"{', '.join(moved)} {'may have ' if all('not recorded' in m for m in moved) else ''}changed the "
                  f"episodes {tc.select_best_by} is measured on: best_model.pt follows the new measure from now on; "
                  f"the best so far and the early-stopping count start afresh")
            trainer.start_best()
        print(f"resumed from {tc.resume} after epoch {trainer.epoch}; continuing with epoch {trainer.epoch + 1} "
              f"of {tc.epochs}")
        note = stretch_note(trainer, ck, tc.epochs, tc.resume)
        if note:
            print(note, file=sys.stderr)
    print(f"model: {trainer.model.num_parameters():,} parameters; {plural(tc.train_episodes, 'fresh episode')} "
          f"per epoch")
    checkpointer = next(c for c in trainer.callbacks if isinstance(c, Checkpointer))
    first_epoch = trainer.epoch
    t0 = time.time()
    interrupted, code, diverged = False, 130, False      # 128 + SIGINT, as a shell reports a Ctrl-C
    began.append("training")

    def go_on() -> str:
        """Where a stopped run goes on, for stderr: the Checkpointer's line saying so went to a closed stdout."""
        last = checkpointer.dir / f"checkpoint_epoch_{trainer.epoch}.pt"
        return (f"; {last} holds the last whole epoch: --resume it to go on"
                if trainer.epoch > first_epoch and checkpointer._mine(last) else "")
    try:
        trainer.train(tc.epochs)
    except KeyboardInterrupt as e:      # Ctrl-C, or a SIGTERM (143)
        interrupted = True
        word, code = stop_words(e)
        if said_on_stdout(f"\n{word} {_where(trainer)}: the checkpoints saved so far are intact"):
            # it came as a closed stdout's run ended (its last save): said on stderr
            print(f"\n{word} {_where(trainer)}, stdout closed (broken pipe): the checkpoints saved so far are "
                  f"intact{go_on()}", file=sys.stderr)
    except BrokenPipeError:             # stdout's reader has gone (`| head`): stopped as at a Ctrl-C
        silence_stdout()
        interrupted, code = True, PIPE_CLOSED
        print(f"stdout was closed (broken pipe) {_where(trainer)}: the checkpoints saved so far are intact"
              f"{go_on()}", file=sys.stderr)
    except TrainingDiverged as e:       # exported as after a Ctrl-C (train() undid the diverged epoch)
        interrupted, code, diverged = True, 1, True
        print(f"error: training diverged in epoch {e.epoch}: {e.what} (--learning_rate {e.learning_rate:g} is "
              f"too high: lower it, or raise --warmup_epochs); that epoch was not saved, and the checkpoints "
              f"saved so far are intact", file=sys.stderr)
    except WorkerError as e:            # a worker killed (out of memory): saved and exported as after a Ctrl-C
        interrupted, code = True, 1
        print(f"error {_where(trainer)}: {e} The checkpoints saved so far are intact{go_on()}", file=sys.stderr)
    except OSError as e:                # a full disk under a checkpoint: train() undid the epoch too
        interrupted, code = True, 1
        counted = "" if trainer.stop_training else "that epoch was not counted, and "
        print(f"error {_where(trainer)}: {_os_error(e)}; {counted}the checkpoints saved before it are intact",
              file=sys.stderr)
    finally:
        trainer.train_dataset.generator.close()
    shortfall = fine_tune_shortfall(trainer, start_mse, exports=True)
    if shortfall:
        print(f"warning: {shortfall}: try a lower --learning_rate", file=sys.stderr)
    ended = f"{'stopped' if interrupted else 'done'} after {time.time() - t0:.0f} s"
    # nothing of this run to export: stopped in its first epoch, or its first write failed (a full disk),
    # after which the Checkpointer put the earlier run's files back (an export now would move them again)
    if interrupted and not checkpointer.wrote_best() and (trainer.epoch == first_epoch
                                                          or checkpointer.put_back_from is not None):
        where = (f"the earlier run's files are in {checkpointer.moved_to}" if checkpointer.moved_to else
                 f"the earlier run's files are back in {tc.checkpoint_dir}" if checkpointer.put_back_from else
                 f"the files in {tc.checkpoint_dir} are where they were")
        when = ("its first write failed" if checkpointer.failed_write is not None else
                "before the first epoch of this run ended")
        print(f"{ended}, {when}: no checkpoint or model was written, and {where}", file=sys.stderr)
        return code
    try:
        with deferred_interrupt():   # a Ctrl-C now takes effect once model.js and model.json are written
            return _export(tc, trainer, checkpointer, ended, interrupted, code, diverged)
    except KeyboardInterrupt as e:
        word, code = stop_words(e)
        print(f"{word}: the export above was completed first", file=sys.stderr)
        return code
    except BrokenPipeError:             # at a line printed once both files were written
        silence_stdout()
        return PIPE_CLOSED
    except OSError as e:
        kept = getattr(e, "kept", None)      # where write_keeping kept what the writes replaced
        if copy_failed(e, tc.checkpoint_dir):     # the copy of a file there, made before any write
            what = "no model.js was written (the files there are as they were)"
        elif Path(getattr(e, "failed", None) or e.filename or "").name == "model.json":    # written after model.js
            js = Path(tc.checkpoint_dir) / "model.js"
            what = (f"{js} was written" if js in getattr(e, "written", [js]) else f"{js} holds this run's model")
            what = (what
                    + (f" (the one it replaced is in {kept})" if kept and (kept / "model.js").is_file() else "")
                    + ", model.json was not (the one there, if any, is as it was)")
        else:    # an earlier run's model.js stays until this run's export replaces it
            there = Path(tc.checkpoint_dir) / "model.js"
            what = "no model.js was written " + ("(the one there is as it was)" if there.is_file() else
                                                 "(there was none)")
        print(f"error: {_os_error(e)}; {what}, and the checkpoints in {tc.checkpoint_dir} are intact", file=sys.stderr)
        return 1


def _where(trainer: SupervisedTrainer) -> str:
    """Where a run that train() left by an error stood: in the epoch it undid, after the last whole
    epoch (a Ctrl-C held until an epoch had ended, or one between epochs), or, for a run stopped early,
    after its last epoch (in the checkpoint written once training had ended)."""
    if trainer.stop_training:
        return f"after epoch {trainer.epoch}, where the run stopped early"
    # (no epoch 0 to be after: a closed stdout at the first epoch's line undoes that epoch)
    within = trainer.ended_in_epoch or not trainer.epoch
    return f"in epoch {trainer.epoch + 1}" if within else f"after epoch {trainer.epoch}"


def _os_error(e: OSError) -> str:
    """"cannot write FILE: No space left on device", or the error as it is where it names no file."""
    return f"cannot write {e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)


def _export(tc: TrainConfig, trainer: SupervisedTrainer, checkpointer: Checkpointer, ended: str,
            interrupted: bool, code: int = 130, diverged: bool = False) -> int:
    """Write model.js/model.json of the run's best model (or of where a resumed run ended); an
    interrupted run (Ctrl-C, SIGTERM, a closed stdout, or a diverged epoch) exits with `code`. Its
    lines are printed once both files are written: a stdout closed by then stops none of them."""
    from .export import model_to_params, params_to_text, write_weights
    best = Path(tc.checkpoint_dir) / "best_model.pt"
    if best.is_file() and not checkpointer.is_earlier_runs(best):
        b = ckpt_io.load_checkpoint_dict(best)
        model = ckpt_io.model_from_checkpoint(b, best)
        best_of = ckpt_io.describe_best(b.get("monitor", "val_loss"), b.get("best_metric"), b.get("best_epoch"))
        said = f"{ended}; best {best_of}"
        if b.get("monitor", "val_loss") != trainer.monitor:
            # --select_best_by changed on resume, and no epoch since set a best by the new measure: the file is
            # still the best by the old one, which the line above names
            checked = any("catch_ratio" in h for h in trainer.history if h.get("epoch", 0) > trainer.loaded_epoch)
            said += (" (chosen before the resume; " + (
                "no epoch since gave a finite validation loss to choose by)" if trainer.monitor != "neg_catch_ratio"
                else "no catch check since gave a catch ratio to choose by: raise --eval_episodes or --eval_frames)"
                if checked else "no catch check has run since (one every --eval_every epochs))"))
    elif trainer.resumed_from is not None and math.isfinite(trainer.best_metric):   # it had a best
        # resumed, and no epoch of this run beat the best of the run it came from (whose
        # best_model.pt is in that run's folder): export where this run ended instead (after a
        # Ctrl-C or a diverged epoch too: train() undid the epoch that did not finish)
        model, epoch = trainer.model, trainer.epoch
        said = (f"{ended}; no epoch of this run beat the best "
                f"({ckpt_io.describe_best(trainer.monitor, trainer.best_metric, trainer.best_epoch)}) of the run "
                f"it resumed from, so no best_model.pt was written here; exporting the model of epoch {epoch}")
    else:
        if interrupted and (code != 1 or diverged):
            why = {130: " before the interrupt", 143: " before the SIGTERM",
                   PIPE_CLOSED: " before stdout was closed"}.get(code, " before training diverged")
        elif interrupted and Path(checkpointer.failed_write or "").name == "best_model.pt":
            why = ": its write failed (above)"      # 1 without diverged: a full disk, say
        elif trainer.monitor == "neg_catch_ratio":
            why = (": best_model.pt follows the catch ratio (--select_best_by catch_ratio), and no catch "
                   "evaluation gave one (the teacher caught no boid in the evaluation episodes: raise "
                   "--eval_episodes or --eval_frames)")
        else:
            why = ": no epoch gave a finite validation loss"
        kept = " (the earlier run's files in it are left as they were)" if checkpointer.is_earlier_runs(best) else ""
        print(f"{ended}; no best_model.pt was written{why}, so no model.js{kept}", file=sys.stderr)
        return code if interrupted else 1
    checkpointer.make_room()      # (done at the run's first write, unless none came)
    params = model_to_params(model)
    # an earlier run's export, or an export or a hand edit since the run began: kept, not overwritten (the caller
    # defers Ctrl-C)
    out = Path(tc.checkpoint_dir)
    texts = {p: params_to_text(params, p.suffix[1:]) for p in (out / n for n in checkpointer.EXPORTS)}
    sizes = {k: int(params[k]) for k in SIZE_KEYS}
    # sizes the stock page refuses, running random weights without a word: not written through a link (to a
    # page's folder, as the README shows), which replaced the page's working model; the folder's own file is
    # written (what it replaces kept in previous/), for predlab's demo, whose engine reads the sizes
    linked = [p for p in texts if p.is_symlink()] if sizes != BROWSER_SIZES else []
    src = (best if best.is_file() and not checkpointer.is_earlier_runs(best) else
           out / f"checkpoint_epoch_{trainer.epoch}.pt")
    left = []
    for p in linked:
        del texts[p]
        left.append(f"{p} links to {os.path.realpath(p)}, left as it was: this model's sizes {sizes} are not the "
                    f"stock browser page's {BROWSER_SIZES}, and a link leads to a page's folder, where the stock "
                    f"page would run such a model.js as random weights (to write it anyway: python -m predlab.export "
                    f"{shell_words(str(src))} --any-size --out FILE)")
    # one of the very bytes this run writes is not written again (read-only, it failed the run after its training)
    same = [p for p in texts if p.is_file() and p.read_bytes() == texts[p].encode("utf-8")]
    empty = [p for p in texts if p.is_file() and p.stat().st_size == 0]      # made ready: nothing to keep
    others = [p for p in texts if differs(p, texts[p])]
    foreign = [p for p in others if p in checkpointer.foreign_exports()]
    # the run's own export, made read-only since: a copy kept, then replaced (it failed the run after its training)
    locked = [p for p in others if p not in foreign and not p.stat().st_mode & 0o222]
    earlier = all(checkpointer.there_at_start(p) for p in foreign)
    # the earlier run's files go beside its checkpoints that the first write moved, when they are its exports
    into = checkpointer.moved_to if earlier and checkpointer.exported_by_moved(foreign) else None
    with warnings.catch_warnings(record=True) as caught:   # one line for both files, not two tracebacks
        warnings.simplefilter("always")
        # a link stays (the export writes through it, as `predlab.export` does): its file is copied
        dest = write_keeping([(p, lambda p: write_weights(model, p, kept=p in foreign + locked + empty))
                              for p in texts if p not in same], foreign + locked, out, into=into)
    if dest is not None and locked:
        say(f"kept a copy of {' and '.join(p.name for p in locked)} in {dest}: this run's own export, made "
            "read-only since, which this run replaces")
    if dest is not None and foreign:
        held = "they hold" if len(foreign) > 1 else "it holds"
        if earlier and checkpointer.resumed_epoch:
            why = "there when it began, and not the export of the run it continues"
        elif earlier:
            why = "an earlier run's, or edited there"
        else:
            later = f", or of an epoch after {checkpointer.resumed_epoch}" if checkpointer.resumed_epoch else ""
            why = f"exported or edited there since it began{later}?"
        say(f"{kept_words(foreign, dest)}, not this run's to replace: {held} other weights or text than it wrote "
            f"({why})")
    js = out / "model.js"
    where = os.path.abspath(js) + (f", a link to {os.path.realpath(js)}" if js.is_symlink() else "")
    closed = said_on_stdout(said)
    for message in dict.fromkeys([str(w.message) for w in caught] + left):
        print(f"warning: {message}", file=sys.stderr)
    if texts:
        closed = said_on_stdout(f"browser weights: {where} (and model.json beside it)" if not linked else
                                f"browser weights: {', '.join(os.path.abspath(p) for p in texts)}") or closed
    # a stdout closed at these lines: the warnings above still said, and an interrupted run's code kept
    return code if interrupted else PIPE_CLOSED if closed else 0


def said_on_stdout(line: str) -> bool:
    """print(line); whether stdout was closed (broken pipe), which then goes to os.devnull."""
    try:
        print(line)
        return False
    except BrokenPipeError:
        silence_stdout()
        return True


if __name__ == "__main__":
    sys.exit(main())
