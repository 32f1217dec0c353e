"""Checkpoint files and the callbacks that write them: what is refused, what is kept, what is shown."""
import math
import os
import re
import types

import pytest
import torch

from predlab import checkpoint as ck
from predlab import train as T
from predlab.data import EpisodeGenerator
from predlab.export import write_weights
from predlab.model import TransformerPredator
from predlab.train import (VAL_STREAM, Checkpointer, EpisodeSource, PrintLogger, ProgressBar, TensorBoardLogger,
                           WarmupCosine, lock_checkpoint_dir, run_file_problem)

SIZES = {"d_model": 8, "n_heads": 2, "n_layers": 1, "ffn_hidden": 16}


def _tiny_model(**sizes) -> TransformerPredator:
    torch.manual_seed(0)
    return TransformerPredator(**{**SIZES, "dropout": 0.0, **sizes})


def _save(path, model=None, **fields):
    """A checkpoint of model (a tiny one by default) with its minimal fields, plus fields."""
    model = model or _tiny_model()
    return ck.atomic_save({"format": ck.FORMAT, "version": ck.VERSION, "model_config": vars(model.config),
                           "model": model.state_dict(), **fields}, path)


def test_a_folder_given_as_a_checkpoint_is_named_a_folder_with_the_file_to_give(tmp_path):
    """A run's folder given where its checkpoint belongs is said to be a folder, with the
    best_model.pt in it to give instead (not a pipe or device)."""
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} is a directory, not a checkpoint "
                                                          f"(say {tmp_path / 'best_model.pt'})")):
        ck.load_model(tmp_path)


@pytest.mark.filterwarnings("ignore:exporting sizes")      # a tiny model's, not the stock page's
@pytest.mark.parametrize("head", ["\ufeff", "\n\n", "  \r\n"])
def test_a_weight_file_with_a_byte_order_mark_or_blank_lines_first_is_named_a_weight_file(tmp_path, head):
    """model.json saved again by an editor (a byte order mark, a blank line first) given as a
    checkpoint is named a browser weight file, not an unreadable one."""
    text = write_weights(_tiny_model(), tmp_path / "model.json").read_text(encoding="utf-8")
    path = tmp_path / "edited.json"
    path.write_text(head + text, encoding="utf-8")
    with pytest.raises(ck.CheckpointError, match="a browser weight file .* not a checkpoint"):
        ck.load_checkpoint_dict(path)


@pytest.mark.filterwarnings("ignore:exporting sizes")
def test_a_utf16_model_js_given_as_a_checkpoint_is_named_a_weight_file(tmp_path):
    """A model.js saved as UTF-16 by Windows PowerShell's `>`: the page runs it, predlab reads it, and
    given to --resume it is a weight file too, not "not a readable torch checkpoint"."""
    text = write_weights(_tiny_model(), tmp_path / "model.js").read_text(encoding="utf-8")
    path = tmp_path / "saved.js"
    path.write_bytes(("\ufeff" + text).encode("utf-16-le"))
    with pytest.raises(ck.CheckpointError, match="a browser weight file .* not a checkpoint"):
        ck.load_checkpoint_dict(path)


@pytest.mark.parametrize("content", [[1, 2], torch.zeros(3), "predlab-checkpoint"])
def test_a_torch_file_that_holds_no_dict_is_not_a_predlab_checkpoint(tmp_path, content):
    torch.save(content, tmp_path / "other.pt")
    with pytest.raises(ck.CheckpointError, match="not a predlab checkpoint"):
        ck.load_checkpoint_dict(tmp_path / "other.pt")


@pytest.mark.parametrize("drop", ["model", "model_config"])
def test_a_checkpoint_without_its_weights_or_sizes_is_named(tmp_path, drop):
    path = _save(tmp_path / "c.pt")
    state = torch.load(path, weights_only=True)
    del state[drop]
    torch.save(state, path)
    with pytest.raises(ck.CheckpointError, match=f"checkpoint has no '{drop}' dict"):
        ck.load_checkpoint_dict(path)


@pytest.mark.parametrize("size", ["d_model", "n_heads", "n_layers", "ffn_hidden"])
def test_a_checkpoint_that_leaves_out_a_size_is_refused_naming_it(tmp_path, capsys, size):
    """Weights of the default sizes, a size left out of model_config: the loaders called it another
    architecture ("checkpoint None, model 48"), and --resume, which takes the run's sizes from the
    checkpoint, stopped with a KeyError traceback."""
    model = TransformerPredator()
    sizes = {k: v for k, v in vars(model.config).items() if k != size}
    path = ck.atomic_save({"format": ck.FORMAT, "version": ck.VERSION, "model_config": sizes,
                           "model": model.state_dict()}, tmp_path / "c.pt")
    with pytest.raises(ck.CheckpointError, match=f"model_config does not give the model's {size}$"):
        ck.load_model(path)
    with pytest.raises(SystemExit) as e:
        T.main(["--resume", str(path), "--epochs", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--resume: {path}: model_config does not give the model's {size}" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


@pytest.mark.parametrize("key", ["train_config", "world_config"])
def test_run_settings_that_are_not_a_dict_are_named(tmp_path, key):
    """--resume reads the run's settings from train_config and world_config."""
    path = _save(tmp_path / "c.pt", **{key: [("epochs", 3)]})
    with pytest.raises(ck.CheckpointError, match=f"'{key}' is list, not a dict"):
        ck.load_checkpoint_dict(path)


@pytest.mark.parametrize("key", ["epoch", "best_epoch", "early_stopping_counter"])
@pytest.mark.parametrize("value", [-1, True, 2.0])
def test_epoch_counts_must_be_whole_numbers_not_negative_or_true(tmp_path, key, value):
    """A negative early-stopping count would let a resumed run go on past its patience; True is
    no count at all, though Python calls it 1."""
    path = _save(tmp_path / "c.pt", **{key: value})
    with pytest.raises(ck.CheckpointError, match=f"'{key}' must be a whole number >= 0, found {value!r}"):
        ck.load_checkpoint_dict(path)


@pytest.mark.parametrize("counts, message", [
    (dict(epoch=10 ** 30), f"'epoch' is {10 ** 30}, more than a run can train"),
    (dict(epoch=3, best_epoch=4), "'best_epoch' is 4, past the 3 epochs the checkpoint has trained"),
    (dict(epoch=3, early_stopping_counter=10 ** 9), "'early_stopping_counter' is 1000000000, past the 3 epochs"),
])
def test_epoch_counts_past_what_the_run_trained_are_named(tmp_path, counts, message):
    """A resume of epoch 10**30 stopped in its next epoch with a traceback; a patience count beyond the
    epochs done stopped the run after one epoch with that count in the message."""
    with pytest.raises(ck.CheckpointError, match=message):
        ck.load_checkpoint_dict(_save(tmp_path / "c.pt", **counts))
    ck.load_checkpoint_dict(_save(tmp_path / "ok.pt", epoch=3, best_epoch=3, early_stopping_counter=2))


def test_a_weight_that_is_not_a_tensor_is_named(tmp_path):
    model = _tiny_model()
    weights = model.state_dict()
    weights["output.bias"] = [0.0, 0.0]
    path = ck.atomic_save({"format": ck.FORMAT, "version": ck.VERSION, "model_config": vars(model.config),
                           "model": weights}, tmp_path / "c.pt")
    with pytest.raises(ck.CheckpointError, match="model weight 'output.bias' is not a tensor"):
        ck.load_checkpoint_dict(path)


def test_a_checkpoint_with_a_weight_under_another_name_is_refused_naming_both(tmp_path):
    """As the weights of another version of the model would be: as many, but not the same ones."""
    model = _tiny_model()
    weights = model.state_dict()
    weights["output.b"] = weights.pop("output.bias")
    path = ck.atomic_save({"format": ck.FORMAT, "version": ck.VERSION, "model_config": vars(model.config),
                           "model": weights}, tmp_path / "c.pt")
    with pytest.raises(ck.CheckpointError, match=r"do not fit model_config .*missing 'output.bias'; "
                                                 r"unexpected 'output.b'$"):
        ck.load_checkpoint_dict(path)


@pytest.mark.parametrize("change", ["drop", "add"])
def test_a_checkpoint_with_a_weight_too_few_or_too_many_names_it(tmp_path, change):
    """Only the counts were named ("has 49 weights, the checkpoint holds 48"): not which weight it was."""
    model = _tiny_model()
    weights = model.state_dict()
    if change == "drop":
        del weights["layers.0.down.bias"]
    else:
        weights["layers.0.extra"] = torch.zeros(2)
    path = ck.atomic_save({"format": ck.FORMAT, "version": ck.VERSION, "model_config": vars(model.config),
                           "model": weights}, tmp_path / "c.pt")
    want = "missing 'layers.0.down.bias'" if change == "drop" else "unexpected 'layers.0.extra'"
    with pytest.raises(ck.CheckpointError, match=rf"weights; the checkpoint holds {len(weights)}\): {want}$"):
        ck.load_checkpoint_dict(path)


def test_a_checkpoint_of_another_head_count_is_refused_though_its_shapes_fit(tmp_path):
    """The head count changes no weight's shape: loaded into a model of another head count, the
    weights fit and the model computes something else, without a word."""
    path = _save(tmp_path / "c.pt", _tiny_model(n_heads=2))
    model = _tiny_model(n_heads=4)
    with pytest.raises(ck.CheckpointError, match="another architecture: n_heads: checkpoint 2, model 4"):
        ck.check_architecture(model, ck.load_checkpoint_dict(path), path)


def test_a_schedule_whose_floor_is_above_its_peak_is_refused(tmp_path):
    """min_ratio above 1 makes the decay a climb past the peak learning rate."""
    sched = {"total": 4.0, "warmup": 1.0, "min_ratio": 1.5, "progress": 2.0, "base": [1e-3, 1e-3]}
    path = _save(tmp_path / "c.pt", scheduler=sched)
    with pytest.raises(ck.CheckpointError, match=r"'scheduler' must be a schedule of finite values .*min_ratio 1.5"):
        ck.load_checkpoint_dict(path)


def test_load_model_gives_the_saved_model_in_eval_mode(tmp_path):
    """Dropout off: the same input gives the same output every time."""
    model = _tiny_model(dropout=0.5)
    loaded = ck.load_model(_save(tmp_path / "c.pt", model))
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_describe_best_says_none_yet_when_a_checkpoint_has_no_best():
    """A checkpoint saved before any epoch ended has no best (infinity, or no best_metric at all)."""
    assert ck.describe_best("val_loss", None, None) == "none yet"
    assert ck.describe_best("val_loss", math.inf, 0) == "none yet"


# ---------------------------------------------------------------------- the schedule
def _optimizer(lr=2e-3):
    """What a schedule reads of an optimizer: its parameter groups (a torch optimizer's first
    construction in a process imports for seconds)."""
    return types.SimpleNamespace(param_groups=[{"lr": lr, "params": []}])


def test_the_first_step_of_warm_up_trains_at_a_small_rate_not_zero():
    opt = _optimizer()
    WarmupCosine(opt, total_epochs=4, warmup_epochs=1.0).set_progress(0.0)
    assert 0 < opt.param_groups[0]["lr"] <= 2e-3 / 100


def test_a_learning_rate_held_in_a_tensor_is_changed_in_place():
    """CUDA-graphed steps read the learning rate from the tensor they were captured with."""
    opt = _optimizer(lr=torch.tensor(2e-3))
    held = opt.param_groups[0]["lr"]
    WarmupCosine(opt, total_epochs=4, warmup_epochs=1.0).set_progress(0.5)
    assert opt.param_groups[0]["lr"] is held and held.item() == pytest.approx(1e-3)


def test_a_schedule_made_again_on_a_decayed_optimizer_keeps_the_runs_peak():
    opt = _optimizer()
    WarmupCosine(opt, total_epochs=4, warmup_epochs=0.0, min_ratio=0.1).set_progress(4.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-4)
    again = WarmupCosine(opt, total_epochs=4, warmup_epochs=0.0)
    assert again.base == [2e-3]
    again.set_progress(0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3)


def test_a_warm_up_shorter_than_the_first_step_never_trains_above_the_peak_rate():
    """--warmup_epochs 0.0001 trained its first batch at ten times the peak learning rate."""
    opt = _optimizer()
    schedule = WarmupCosine(opt, total_epochs=4, warmup_epochs=1e-4)
    for progress in (0.0, 5e-5, 1e-4, 0.5):
        schedule.set_progress(progress)
        assert opt.param_groups[0]["lr"] <= 2e-3, progress


# ---------------------------------------------------------------------- the checkpoint folder
class _Run:
    """What a Checkpointer reads of a trainer; its checkpoints are tiny ones that record the epoch."""

    def __init__(self, epoch=0, target_epochs=3, resumed_from=None):
        self.epoch, self.target_epochs, self.resumed_from = epoch, target_epochs, resumed_from
        self.improved, self.stop_training = False, False
        self.history = [{"epoch": e} for e in range(1, epoch + 1)]      # a resumed run's, as its files hold it

    def save_checkpoint(self, path, include_data=True):
        return _save(path, epoch=self.epoch, history=list(self.history))

    def train(self, checkpointer, to_epoch, improved=()):
        """Epochs up to to_epoch, improving in those listed, as train() runs the callback."""
        self.target_epochs = to_epoch
        checkpointer.on_train_begin(self)
        try:
            while self.epoch < to_epoch:
                self.epoch += 1
                self.history.append({"epoch": self.epoch})
                self.improved = self.epoch in improved
                checkpointer.on_epoch_end(self, self.epoch, {})
        finally:
            checkpointer.on_train_end(self)


def _epochs_in(d):
    return sorted(ck.load_checkpoint_dict(p)["epoch"] for p in d.glob("checkpoint_epoch_*.pt"))


def test_pruning_keeps_the_newest_checkpoints_past_epoch_ten(tmp_path):
    """The newest by epoch number, not by name (checkpoint_epoch_10.pt sorts before _9)."""
    _Run(target_epochs=12).train(Checkpointer(tmp_path, save_every=1, keep=2), 12)
    assert sorted(p.name for p in tmp_path.glob("checkpoint_epoch_*.pt")) == \
        ["checkpoint_epoch_11.pt", "checkpoint_epoch_12.pt"]


def test_a_file_of_the_users_named_like_a_checkpoint_is_left_alone(tmp_path):
    """checkpoint_epoch_final.pt has no epoch number: no run of predlab wrote it."""
    _save(tmp_path / "checkpoint_epoch_final.pt", epoch=7)
    _Run().train(Checkpointer(tmp_path, save_every=1, keep=1), 3, improved={1})
    assert (tmp_path / "checkpoint_epoch_final.pt").is_file() and not (tmp_path / "previous").exists()
    assert _epochs_in(tmp_path) == [3, 7]


def _resumable_folder(d, best_epoch):
    """A run's folder with checkpoints of epochs 1 to 3 and a best_model.pt of best_epoch."""
    _Run().train(Checkpointer(d, save_every=1, keep=5), 3, improved={best_epoch})


@pytest.mark.parametrize("best_epoch, moved", [(2, ["checkpoint_epoch_3.pt"]),
                                               (3, ["best_model.pt", "checkpoint_epoch_3.pt"])])
def test_a_run_resumed_in_its_folder_keeps_its_best_up_to_the_epoch_it_resumed(tmp_path, monkeypatch,
                                                                            best_epoch, moved):
    """Resumed from epoch 2 (given as an absolute path, the folder as a relative one): the best
    model of epoch 2 is the resumed run's own and stays; one of epoch 3 is not, and moves aside
    with the checkpoint of epoch 3."""
    monkeypatch.chdir(tmp_path)
    _resumable_folder(tmp_path / "ck", best_epoch)
    run = _Run(epoch=2, resumed_from=tmp_path / "ck" / "checkpoint_epoch_2.pt")
    cp = Checkpointer("ck", save_every=1, keep=5)
    run.train(cp, 4)
    previous = sorted(p.name for p in (tmp_path / "ck").glob("previous/*/*"))
    assert previous == moved
    assert _epochs_in(tmp_path / "ck") == [1, 2, 3, 4]
    best = tmp_path / "ck" / "best_model.pt"
    if best_epoch == 2:
        assert ck.load_checkpoint_dict(best)["epoch"] == 2
    else:
        assert not best.exists()
    assert not cp.wrote_best()          # no epoch of this run improved on the best it resumed with


def test_a_resumed_run_cut_before_its_first_write_keeps_its_files_when_trained_again(tmp_path):
    """train() again on the same trainer after a first call that wrote nothing (a Ctrl-C in the
    resumed run's first epoch): the checkpoints up to the epoch it resumed from and its best are
    still its own; only the later epoch moves aside, not the whole folder as another run's."""
    d = tmp_path / "ck"
    _resumable_folder(d, 2)
    run = _Run(epoch=2, resumed_from=d / "checkpoint_epoch_2.pt")
    cp = Checkpointer(d, save_every=1, keep=5)
    run.train(cp, 2)                      # begun and ended with no epoch done: nothing written
    assert not (d / "previous").exists()
    run.train(cp, 4)
    assert sorted(p.name for p in d.glob("previous/*/*")) == ["checkpoint_epoch_3.pt"]
    assert _epochs_in(d) == [1, 2, 3, 4]
    assert ck.load_checkpoint_dict(d / "best_model.pt")["epoch"] == 2


def test_an_unreadable_best_model_in_the_folder_of_a_resumed_run_moves_aside(tmp_path):
    """Which epoch it is of cannot be told: it may be another run's, so it is not overwritten."""
    d = tmp_path / "ck"
    _resumable_folder(d, 1)
    (d / "best_model.pt").write_bytes(b"damaged")
    run = _Run(epoch=2, resumed_from=d / "checkpoint_epoch_2.pt")
    run.train(Checkpointer(d, save_every=1, keep=5), 3, improved={3})
    (moved,) = d.glob("previous/*/best_model.pt")
    assert moved.read_bytes() == b"damaged"
    assert ck.load_checkpoint_dict(d / "best_model.pt")["epoch"] == 3


def test_a_checkpoint_folder_is_created_with_its_parents(tmp_path):
    d = tmp_path / "runs" / "exp1" / "ck"
    _Run().train(Checkpointer(d, save_every=1), 1)
    assert _epochs_in(d) == [1]


def test_a_checkpoint_folder_that_is_a_link_to_a_file_is_not_called_missing(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "ck").symlink_to(tmp_path / "afile")
    with pytest.raises(OSError, match="cannot create the checkpoint folder") as e:
        lock_checkpoint_dir(tmp_path / "ck")
    assert "does not exist" not in str(e.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_where_a_run_writes_a_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "best_model.pt")
    assert "best_model.pt exists and is not a file (not a regular file)" in run_file_problem(tmp_path)


# ---------------------------------------------------------------------- what the user sees
def test_the_epoch_line_shows_the_validation_loss_as_val(capsys):
    PrintLogger().on_epoch_end(None, 3, {"epoch": 3, "train_loss": 0.25, "val_loss": 0.125, "lr": 1e-3,
                                         "samples_per_s": 12345.0, "epoch_time": 2.0, "catches": 7.0})
    assert capsys.readouterr().out == \
        "epoch    3  train 0.25000  val 0.12500  lr 1.00e-03  12,345 samples/s catches=7\n"


def test_epoch_lines_and_messages_under_a_progress_bar_start_lines_of_their_own(monkeypatch):
    """In a terminal (stdout and the bar's stderr one screen), each epoch line began at the end of the
    bar tqdm had just drawn, so the screen read "...val=0.4460e" and "poch    1  train ..."."""
    import io
    from tqdm import tqdm
    from predlab.export import say
    screen = io.StringIO()
    monkeypatch.setattr("sys.stdout", screen)
    bar = tqdm(total=3, desc="epochs", file=screen)
    try:
        bar.update(1)
        assert not screen.getvalue().endswith("\n")      # the cursor is at the bar's end
        PrintLogger().on_epoch_end(None, 1, {"epoch": 1, "train_loss": 0.5, "val_loss": 0.25, "lr": 1e-3,
                                             "samples_per_s": 10.0})
        say("saved checkpoints/checkpoint_epoch_1.pt")
    finally:
        bar.close()
    text = screen.getvalue()
    for line in ("epoch    1  train", "saved checkpoints"):
        before = text[:text.index(line)]
        assert before.endswith(("\r", "\n")), repr(before[-40:])       # at a line's start, not the bar's end


def test_epoch_lines_give_the_epochs_time_and_the_time_left_once_epochs_like_the_rest_have_run(monkeypatch, capsys):
    """Piped to a log, the lines said nothing of time; the bar's time left was the mean epoch so far, and
    under DAgger epoch 1 (85 s, the teacher driving one epoch's samples) is not like the rest (228 s)."""
    from types import SimpleNamespace
    from predlab import train
    from predlab.config import WorldConfig
    from predlab.dagger import DaggerSource
    from predlab.data import EpisodeGenerator
    now = [0.0]
    monkeypatch.setattr(train.time, "perf_counter", lambda: now[0])
    source = DaggerSource(EpisodeGenerator(WorldConfig(frames=4, boids_max=2), progress=False), 2, start=2)
    run = SimpleNamespace(epoch=0, target_epochs=200, train_dataset=source)
    log = PrintLogger()
    log.on_train_begin(run)
    logs = {"epoch": 1, "train_loss": 0.5, "val_loss": 0.25, "lr": 1e-3, "samples_per_s": 4450.0}
    lines = []
    for epoch, took in ((1, 85.0), (2, 228.0), (3, 230.0), (4, 232.0), (5, 300.0)):
        now[0] += took
        run.epoch = epoch
        log.on_epoch_end(run, epoch, logs)
        lines.append(capsys.readouterr().out.split("samples/s")[1])
    assert lines[0] == "  1 min 25 s (eta after epoch 2)\n"
    assert lines[1] == f"  3 min 48 s (eta {train.duration(198 * 228)})\n" == "  3 min 48 s (eta 12 h 32 min)\n"
    assert lines[3] == f"  3 min 52 s (eta {train.duration(196 * 230)})\n"           # the mean of the last three
    assert lines[4] == f"  5 min 00 s (eta {train.duration(195 * (230 + 232 + 300) / 3)})\n"
    run.epoch = 200
    assert log.clock.words(run) == ""
    plain = SimpleNamespace(epoch=0, target_epochs=3, train_dataset=None)   # no DAgger: every epoch alike
    log = PrintLogger()
    log.on_train_begin(plain)
    now[0] += 40.0
    plain.epoch = 1
    log.on_epoch_end(plain, 1, logs)
    assert capsys.readouterr().out.split("samples/s")[1] == "  40 s (eta 1 min 20 s)\n"


def test_the_epoch_line_gives_the_catch_ratio_with_its_interval(capsys):
    """catch_ratio with its 95% interval in brackets, not three numbers named apart; an interval
    with no value (the teacher caught nothing) is left out, an unbounded top is shown as such."""
    logs = {"epoch": 5, "train_loss": 0.25, "val_loss": 0.125, "lr": 1e-3, "samples_per_s": 12345.0,
            "catch_ratio": 0.875, "catch_ratio_low": 0.6214, "catch_ratio_high": 1.05, "neg_catch_ratio": -0.875}
    PrintLogger().on_epoch_end(None, 5, logs)
    PrintLogger().on_epoch_end(None, 5, {**logs, "catch_ratio_high": math.inf})
    PrintLogger().on_epoch_end(None, 5, {**logs, "catch_ratio": math.nan, "catch_ratio_low": math.nan,
                                         "catch_ratio_high": math.nan})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("samples/s")[1] for line in lines] == \
        [" catch_ratio=0.875 (0.62-1.05)", " catch_ratio=0.875 (0.62-inf)", " catch_ratio=nan"]


def test_the_progress_bar_of_a_resumed_run_starts_at_the_epoch_it_resumed(capsys):
    bar = ProgressBar()
    bar.on_train_begin(_Run(epoch=3, target_epochs=5))
    try:
        assert (bar.bar.n, bar.bar.total) == (3, 5)
    finally:
        bar.on_train_end(None)


def _scalars(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(path))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_shows_each_epoch_as_it_ends_under_its_tags(tmp_path):
    """Read while the run goes on (before the writer is closed), as tensorboard --logdir does."""
    logger, run = TensorBoardLogger(tmp_path), _Run()
    logger.on_train_begin(run)
    try:
        logger.on_epoch_end(run, 1, {"epoch": 1, "train_loss": 0.5, "val_loss": 0.25, "lr": 1e-3,
                                     "samples_per_s": 100.0})
        assert _scalars(logger.path) == {"loss/train": [(1, 0.5)], "loss/val": [(1, 0.25)],
                                         "lr": [(1, pytest.approx(1e-3))], "samples_per_s": [(1, 100.0)]}
    finally:
        logger.on_train_end(run)


def test_a_tensorboard_run_never_logs_into_a_folder_another_process_made_in_the_same_second(tmp_path, monkeypatch):
    """Two jobs of a sweep started together, sharing --log_dir: one looked for its time's folder, found
    none, and the other made it before this one's writer did; both wrote into it, and TensorBoard drew
    their points as one run's. The look missing the other's folder (made just after it) stands for that."""
    import pathlib
    from predlab import train as T
    monkeypatch.setattr(T.time, "strftime", lambda *a: "20260101-000000")
    theirs = tmp_path / "20260101-000000"
    theirs.mkdir()
    (theirs / "events.out.tfevents.1.other-host.1.0").write_bytes(b"")
    monkeypatch.setattr(pathlib.Path, "exists", lambda self: False)
    logger = TensorBoardLogger(tmp_path)
    logger.on_train_begin(_Run())
    logger.on_train_end(None)
    assert logger.path.name == "20260101-000000-2"
    assert [p.name for p in theirs.iterdir()] == ["events.out.tfevents.1.other-host.1.0"]


def test_a_named_tensorboard_run_logs_into_its_folder_again(tmp_path):
    """TensorBoardLogger(run_name=...) names the run's folder: another run of that name adds to it."""
    for _ in range(2):
        logger = TensorBoardLogger(tmp_path, run_name="baseline")
        logger.on_train_begin(_Run())
        logger.on_train_end(None)
    assert [p.name for p in tmp_path.iterdir()] == ["baseline"]


def test_errors_in_other_threads_are_still_reported_once_tensorboard_logs(monkeypatch):
    """Only the TensorBoard writer thread's failed writes are left out (the logger reports them)."""
    import threading
    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_type))
    T._quiet_tensorboard_thread()

    def fail():
        raise ValueError("in a worker thread")
    t = threading.Thread(target=fail)
    t.start()
    t.join()
    assert seen == [ValueError]


# ---------------------------------------------------------------------- training data
class _Streams(EpisodeGenerator):
    """An EpisodeGenerator without a world: generate gives the stream it was asked for."""

    def __init__(self):
        pass

    def generate(self, n, stream=0, desc=None):
        return stream


def test_each_epoch_trains_on_episodes_other_than_the_validation_ones():
    """A generator's episodes depend on its seed and the stream asked for only: the stream of
    every training epoch is another than the validation episodes' and than each other epoch's."""
    source = EpisodeSource(_Streams(), 2)
    streams = [source.for_epoch(e) for e in range(5)]
    assert VAL_STREAM not in streams and len(set(streams)) == 5


@pytest.mark.parametrize("kw", [{"save_every": 0}, {"keep": 0}])
def test_checkpointer_counts_below_one_are_refused_before_training(tmp_path, kw):
    """Taken, save_every=0 would end a run with a ZeroDivisionError after its first epoch's training."""
    with pytest.raises(ValueError, match=f"{next(iter(kw))} must be a whole number >= 1"):
        Checkpointer(tmp_path, **kw)


def test_an_earlier_runs_file_deleted_during_a_run_is_not_missed(tmp_path):
    """The user deleted the earlier run's best_model.pt before this run first wrote: the rest
    still moves aside, and the run goes on."""
    _Run().train(Checkpointer(tmp_path, save_every=1), 2, improved={1})
    run, cp = _Run(), Checkpointer(tmp_path, save_every=1)
    cp.on_train_begin(run)
    try:
        (tmp_path / "best_model.pt").unlink()
        run.epoch = 1
        cp.on_epoch_end(run, 1, {})
    finally:
        cp.on_train_end(run)
    assert sorted(p.name for p in tmp_path.glob("previous/*/*")) == ["checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt"]
    assert _epochs_in(tmp_path) == [1]


def test_an_epoch_of_no_episodes_is_refused_when_the_source_is_made():
    with pytest.raises(ValueError, match="episodes_per_epoch must be a whole number >= 1"):
        EpisodeSource(_Streams(), 0)


def test_a_resumed_run_stopped_early_saves_its_own_checkpoint_of_the_last_epoch(tmp_path):
    """Resumed from epoch 2 with fewer saves, stopped early after epoch 3: checkpoint_epoch_3.pt
    of the run it resumed (which went on past epoch 2) moves aside, and this run's state of epoch
    3 is saved in its place, so that a resume from it goes on from where this run stopped."""
    d = tmp_path / "ck"
    _resumable_folder(d, 1)

    class Resumed(_Run):
        def save_checkpoint(self, path, include_data=True):
            return _save(path, epoch=self.epoch, run="resumed")

    run = Resumed(epoch=2, resumed_from=d / "checkpoint_epoch_2.pt", target_epochs=10)
    cp = Checkpointer(d, save_every=5, keep=5)
    cp.on_train_begin(run)
    run.epoch = 3
    cp.on_epoch_end(run, 3, {})
    run.stop_training = True
    cp.on_train_end(run)
    assert ck.load_checkpoint_dict(d / "checkpoint_epoch_3.pt").get("run") == "resumed"
    assert [p.name for p in d.glob("previous/*/*")] == ["checkpoint_epoch_3.pt"]


def test_a_run_trained_again_after_another_run_wrote_before_its_first_write_moves_that_runs_files(tmp_path):
    """A notebook's run cut in its first epoch (nothing written), another trainer's run in the same
    folder, then the first run trained again: the other run's checkpoint moves aside with its best
    model, not deleted by this run's rotation."""
    d = tmp_path / "ck"
    _resumable_folder(d, 1)

    class Tagged(_Run):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

        def save_checkpoint(self, path, include_data=True):
            return _save(path, epoch=self.epoch, run=self.tag)

    first, cp = Tagged("first"), Checkpointer(d, save_every=1, keep=2)
    first.train(cp, 0)
    Tagged("other").train(Checkpointer(d, save_every=5, keep=2), 5, improved={1})
    first.train(cp, 8, improved={1})
    moved = {(p.name, ck.load_checkpoint_dict(p).get("run")) for p in d.glob("previous/*/*.pt")}
    assert {("checkpoint_epoch_5.pt", "other"), ("best_model.pt", "other")} <= moved
    assert {ck.load_checkpoint_dict(p).get("run") for p in d.glob("*.pt")} == {"first"}


def test_an_earlier_runs_files_that_could_not_be_moved_are_not_overwritten_when_trained_again(tmp_path):
    """The first write's move to previous/ failed (previous is a file; a full disk): train() again,
    once that is fixed, moves the earlier run's files first instead of overwriting its best model
    and checkpoints."""
    d = tmp_path / "ck"
    _resumable_folder(d, 3)
    (d / "previous").write_text("not a folder")

    class New(_Run):
        def save_checkpoint(self, path, include_data=True):
            return _save(path, epoch=self.epoch, run="new")

    run, cp = New(), Checkpointer(d, save_every=1, keep=5)
    with pytest.raises(FileExistsError, match="is a file"):
        run.train(cp, 1, improved={1})
    run.epoch = 0                         # train() undoes the epoch that did not finish
    (d / "previous").unlink()
    run.train(cp, 2, improved={1})
    moved = {p.name: ck.load_checkpoint_dict(p) for p in d.glob("previous/*/*.pt")}
    assert moved["best_model.pt"]["epoch"] == 3 and "run" not in moved["best_model.pt"]
    assert sorted(moved) == ["best_model.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt",
                             "checkpoint_epoch_3.pt"]


def test_a_trainer_rewound_to_an_earlier_checkpoint_of_its_folder_moves_the_later_files_aside(tmp_path):
    """train() again after load_checkpoint of an earlier epoch of the same run, on the same trainer: the
    later epochs' checkpoints were overwritten or left among the new ones, and best_model.pt of a better,
    later epoch was replaced by a worse one. They move aside, as for a run resumed from that checkpoint."""
    d = tmp_path / "ck"
    run, cp = _Run(), Checkpointer(d, save_every=1, keep=5)
    run.train(cp, 4, improved={1, 2, 4})
    run.epoch, run.resumed_from = 2, d / "checkpoint_epoch_2.pt"        # what load_checkpoint sets
    run.train(cp, 3, improved={3})
    assert sorted(p.name for p in d.glob("previous/*/*")) == \
        ["best_model.pt", "checkpoint_epoch_3.pt", "checkpoint_epoch_4.pt"]
    [moved] = (d / "previous").iterdir()
    assert ck.load_checkpoint_dict(moved / "best_model.pt")["epoch"] == 4
    assert _epochs_in(d) == [1, 2, 3] and ck.load_checkpoint_dict(d / "best_model.pt")["epoch"] == 3
    run.train(cp, 4)                      # train() again without a load: the same run goes on
    assert len(list((d / "previous").iterdir())) == 1 and _epochs_in(d) == [1, 2, 3, 4]


def test_the_time_left_never_waits_for_an_epoch_past_the_run(monkeypatch, capsys):
    """--dagger_start 10 in a 3-epoch run said "eta after epoch 10" on every line, and never gave one; a
    PrintLogger subclass with an __init__ of its own lost its clock."""
    from types import SimpleNamespace
    from predlab import train
    from predlab.config import WorldConfig
    from predlab.dagger import DaggerSource
    from predlab.data import EpisodeGenerator
    now = [0.0]
    monkeypatch.setattr(train.time, "perf_counter", lambda: now[0])

    class Mine(PrintLogger):
        def __init__(self):
            self.lines = 0
    gen = EpisodeGenerator(WorldConfig(frames=4, boids_max=2), progress=False)
    # DAgger starting past the run's end: epochs from 2 on are alike (two epochs' samples, the teacher driving)
    for start, target, said in ((10, 3, [" (eta after epoch 2)", " (eta 20 s)", ""]), (3, 3, ["", "", ""]),
                                (2, 3, [" (eta after epoch 2)", " (eta 20 s)", ""])):
        run = SimpleNamespace(epoch=0, target_epochs=target, train_dataset=DaggerSource(gen, 2, start=start))
        log = Mine()
        log.on_train_begin(run)
        got = []
        for epoch in range(1, target + 1):
            now[0] += 20.0
            run.epoch = epoch
            log.on_epoch_end(run, epoch, {"epoch": epoch, "train_loss": 0.5, "val_loss": 0.25, "lr": 1e-3,
                                          "samples_per_s": 10.0})
            got.append(capsys.readouterr().out.split("samples/s  20 s")[1].rstrip("\n"))
        assert got == said, (start, target)


def test_the_epoch_line_says_why_a_ratio_has_no_interval(capsys):
    """A catch check with too few episodes where the model's catches differ from the teacher's logs its
    ratio without an interval (catch_ratio_interval); the line said nothing of it, where evaluate says why."""
    logs = {"epoch": 2, "train_loss": 0.25, "val_loss": 0.125, "lr": 1e-3, "samples_per_s": 100.0,
            "catch_ratio": 0.0, "catch_ratio_low": math.nan, "catch_ratio_high": math.nan, "neg_catch_ratio": 0.0}
    PrintLogger().on_epoch_end(None, 2, logs)
    assert capsys.readouterr().out.split("samples/s")[1] == \
        " catch_ratio=0 (no interval: too few episodes where its catches and the teacher's differ)\n"


def test_a_blank_checkpoint_name_is_named_as_such_not_as_the_current_folder():
    """create_trainer(resume="") said ". is a directory, not a checkpoint"."""
    with pytest.raises(FileNotFoundError, match=r"^no file name given \(''\): name a checkpoint"):
        ck.load_checkpoint_dict("")
