"""python -m predlab.train and create_trainer: what the command line reads, checks, says and
writes, run in this process with tiny settings."""
import errno
import io
import math
import os
import re
from pathlib import Path

import pytest
import torch

from conftest import ctrl_c_in_epoch
from predlab.config import WorldConfig
from predlab.train import create_trainer

TINY_WORLD = WorldConfig(frames=12, boids_max=12)
TINY_FLAGS = ["--train_episodes", "6", "--val_episodes", "3", "--frames", "12", "--boids_max", "12",
              "--batch-size", "32", "--save_every", "1", "--quiet"]


def test_create_trainer_with_verbose_off_prints_nothing(capsys):
    """verbose=False is for notebooks and scripts that print their own lines: no device line, no
    validation line, and no progress bar while the validation episodes are made."""
    create_trainer(train_episodes=2, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD,
                   eval_every=0)
    assert capsys.readouterr() == ("", "")
    create_trainer(train_episodes=2, val_episodes=2, device="cpu", verbose=True, world_config=TINY_WORLD,
                   eval_every=0, progress=False)
    assert "validation: 2 episodes" in capsys.readouterr().out


@pytest.fixture
def library_checkpoint(tmp_path):
    """A checkpoint at epoch 0 of a run made with create_trainer, with machine settings of its own."""
    with pytest.warns(UserWarning, match="only set what the command line does"):    # recorded, as wanted here
        t = create_trainer(train_episodes=4, val_episodes=2, batch_size=32, device="cpu", verbose=False,
                           world_config=TINY_WORLD, eval_every=0, progress=False, threads=1,
                           log_dir=str(tmp_path / "their_runs"), checkpoint_dir=str(tmp_path / "theirs"))
    return t.save_checkpoint(tmp_path / "theirs" / "c0.pt")


def test_resume_takes_the_machines_settings_from_this_command_line(tmp_path, monkeypatch, library_checkpoint):
    """Device, threads, workers, bars and log folder are the machine's and the command's, not the
    checkpoint's run's: a run resumed on another machine must not inherit a device it lacks."""
    from predlab.train import parse_args
    monkeypatch.chdir(tmp_path)
    tc, mc, wc, schedule = parse_args(["--resume", str(library_checkpoint)])
    assert (tc.device, tc.threads, tc.num_workers, tc.log_dir) == ("auto", 0, 0, "runs")
    assert tc.checkpoint_dir == str(tmp_path / "theirs")           # the checkpoint's folder
    assert (tc.batch_size, wc.frames, schedule) == (32, 12, {})    # the run's own settings


@pytest.mark.parametrize("tty, flags, bars", [
    (True, [], True), (True, ["--quiet"], False), (True, ["--no-progress"], False),
    (False, [], False),                     # bars redrawn into a log file bury the epoch lines
    (False, ["--progress"], True), (False, ["--progress", "--quiet"], False)])
def test_progress_bars_show_on_a_terminal_unless_quiet_and_in_a_log_only_when_asked(monkeypatch, tmp_path, tty,
                                                                                    flags, bars):
    import sys
    from predlab.train import parse_args
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    assert parse_args(flags)[0].progress is bars


def test_resuming_an_older_checkpoint_says_which_settings_it_lacks_and_uses_the_commands(
        tmp_path, monkeypatch, capsys, library_checkpoint):
    """A checkpoint of an older predlab records fewer settings: the run goes on with this command's
    values for those, and says which they are, since they may not be what that run used."""
    import torch
    from predlab.train import parse_args
    state = torch.load(library_checkpoint, weights_only=True)
    del state["train_config"]["dagger_buffer"], state["world_config"]["noise"]
    torch.save(state, library_checkpoint)
    monkeypatch.chdir(tmp_path)
    tc, _, wc, _ = parse_args(["--resume", str(library_checkpoint), "--noise", "0.2"])
    assert (tc.dagger_buffer, wc.noise) == (0, 0.2)
    err = capsys.readouterr().err
    assert (f"note: {library_checkpoint} does not record dagger_buffer (a checkpoint of an older predlab, or of a "
            f"trainer built in Python without a TrainConfig): these take this command's values") in err


@pytest.mark.parametrize("key, field", [("world_config", "predator_speed"), ("train_config", "label_smoothing")])
def test_resuming_a_checkpoint_with_settings_this_predlab_does_not_know_exits_2_naming_them(
        tmp_path, monkeypatch, capsys, library_checkpoint, key, field):
    """A newer predlab's setting (or an edited one): the run went on without it, in another world
    than the checkpoint's, and said nothing; predlab.evaluate refused the same checkpoint."""
    import torch
    from predlab.train import parse_args
    state = torch.load(library_checkpoint, weights_only=True)
    state[key][field] = 2.0
    torch.save(state, library_checkpoint)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        parse_args(["--resume", str(library_checkpoint)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--resume: {library_checkpoint}: bad {key}: unknown " in err and f" fields: {field} (" in err


def test_resuming_a_checkpoint_without_daggers_samples_warns_that_the_run_will_differ(
        tmp_path, monkeypatch, capsys, library_checkpoint):
    """best_model.pt leaves DAgger's samples out: resuming from it starts the buffer empty, and the
    run would not continue as it would have, so it says so; an epoch checkpoint carries them."""
    import torch
    from predlab.train import parse_args
    monkeypatch.chdir(tmp_path)
    parse_args(["--resume", str(library_checkpoint)])
    assert "DAgger" not in capsys.readouterr().err
    parse_args(["--resume", str(library_checkpoint), "--no-dagger"])
    assert "DAgger" not in capsys.readouterr().err
    state = torch.load(library_checkpoint, weights_only=True)
    del state["data_source"]
    torch.save(state, library_checkpoint)
    parse_args(["--resume", str(library_checkpoint)])
    assert (f"warning: {library_checkpoint} holds no DAgger samples (best_model.pt is saved without them): the run "
            f"goes on with an empty DAgger buffer") in capsys.readouterr().err
    parse_args(["--resume", str(library_checkpoint), "--no-dagger"])     # nothing to continue
    assert "DAgger" not in capsys.readouterr().err


@pytest.mark.parametrize("change, monitor, moved", [
    (dict(seed=1), "val_loss", ["--seed"]),                        # other validation episodes
    (dict(val_episodes=9), "val_loss", ["--val_episodes"]),
    (dict(val_episodes=9), "neg_catch_ratio", []),                # the catch evaluation has its own
    (dict(eval_episodes=9, eval_frames=9), "neg_catch_ratio", ["--eval_episodes", "--eval_frames"]),
    (dict(eval_episodes=9), "val_loss", []),
    (dict(noise=0.1, boids_max=20), "val_loss", ["--boids_max", "--noise"]),
    # the catch check's episodes last --eval_frames and drive without noise: a resume training on longer or
    # less noisy episodes forgot a best catch ratio, and the next evaluation's lower one replaced best_model.pt
    (dict(noise=0.1, frames=400), "neg_catch_ratio", []),
    (dict(noise=0.1, frames=400, boids_max=20), "neg_catch_ratio", ["--boids_max"]),
    (dict(learning_rate=1e-4, epochs=99, batch_size=8), "val_loss", []),   # the same episodes
])
def test_a_resume_knows_which_changed_flags_change_the_episodes_the_best_is_measured_on(change, monitor, moved):
    """Those flags start the best so far afresh on resume: a best measured on other episodes cannot
    be compared with the new run's."""
    import dataclasses
    from predlab.config import TrainConfig
    from predlab.train import _measure_changed
    tc, wc = TrainConfig(), WorldConfig()
    ck = {"train_config": dataclasses.asdict(tc), "world_config": dataclasses.asdict(wc)}
    tc = dataclasses.replace(tc, **{k: v for k, v in change.items() if hasattr(tc, k)})
    wc = dataclasses.replace(wc, **{k: v for k, v in change.items() if hasattr(wc, k)})
    assert sorted(_measure_changed(ck, tc, wc, monitor)) == moved
    del ck["train_config"]["seed"]                                # an older checkpoint: not recorded, not compared
    assert "--seed" not in _measure_changed(ck, tc, wc, monitor)


SMALL = ["--epochs", "1", *TINY_FLAGS, "--eval_every", "0", "--no-dagger", "--d_model", "16", "--n_heads", "2",
         "--n_layers", "1", "--ffn_hidden", "8"]
# the browser page's sizes: a model.js of others is not written through a link to a page's folder
BROWSER_SMALL = SMALL[:SMALL.index("--d_model")]


def test_counts_of_one_are_singular_and_thousands_have_their_separator(tmp_path, monkeypatch, capsys):
    """"validation: 1 episodes, 12 samples" and "1 fresh episodes per epoch"; and 1100 episodes were
    printed without the thousands separator that every other count there has."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)

    def run(**flags):
        flags = {f"--{k}": str(v) for k, v in flags.items()}
        argv = [flags.get(SMALL[i - 1], f) if i else f for i, f in enumerate(SMALL)]
        assert main([*argv, *(f for k, v in flags.items() if k not in SMALL for f in (k, v))]) == 0
        return capsys.readouterr().out

    out = run(train_episodes=1, val_episodes=1, checkpoint_dir="a")
    assert "validation: 1 episode, 12 samples" in out and "; 1 fresh episode per epoch" in out
    out = run(train_episodes=1100, val_episodes=1, frames=1, checkpoint_dir="b")
    assert "validation: 1 episode, 1 sample\n" in out and "; 1,100 fresh episodes per epoch" in out


def test_a_run_exports_both_files_and_a_second_run_in_its_folder_moves_them_aside(tmp_path, monkeypatch, capsys):
    """The run's end: model.js and model.json of the best model, one warning line for both files
    (sizes the stock page does not take), and the folder free for the next run, which moves the
    earlier run's files to previous/ and, fine-tuning them to no gain, says so."""
    from predlab import checkpoint as ck
    from predlab.export import read_params
    from predlab.train import SupervisedTrainer, main
    monkeypatch.chdir(tmp_path)
    assert main(SMALL) == 0
    out, err = capsys.readouterr()
    d = tmp_path / "checkpoints"
    assert read_params(d / "model.js") == read_params(d / "model.json")
    assert [line for line in err.splitlines() if line.startswith("warning")] == [
        line for line in err.splitlines() if "browser" in line] and err.count("warning") == 1
    first = (d / "model.js").read_bytes()
    monkeypatch.setattr(SupervisedTrainer, "validate", lambda self, data=None: 0.25)   # never better than the file
    assert main([*SMALL, "--init_weights", "checkpoints/model.js"]) == 0                # the folder is free again
    err = capsys.readouterr().err
    assert "no epoch beat the weights of checkpoints/model.js (val MSE 0.25000 before training, 0.25000 at best)" \
        in err
    moved = list((d / "previous").glob("*/model.js"))
    assert len(moved) == 1 and moved[0].read_bytes() == first
    # the path it names holds this run's model now: where the file went is said (it was "kept ... or in previous")
    assert "; the export keeps that file in checkpoints/previous, and checkpoints/model.js becomes this run's" in err
    assert ck.load_checkpoint_dict(d / "best_model.pt")["train_config"]["init_weights"] == "checkpoints/model.js"


def test_a_run_that_ends_in_an_error_frees_its_checkpoint_folder(tmp_path, monkeypatch):
    """main() in a notebook or script: once it has ended, even in an error whose traceback the caller
    keeps (as a notebook does), another process may train into the folder."""
    import subprocess
    import sys
    from predlab import train
    monkeypatch.chdir(tmp_path)

    def fails(*args):
        raise RuntimeError("an error in the run")
    monkeypatch.setattr(train, "_run", fails)
    with pytest.raises(RuntimeError) as kept:
        train.main(SMALL)
    take = "import filelock, sys; filelock.FileLock(sys.argv[1], timeout=0).acquire()"
    subprocess.run([sys.executable, "-c", take, str(tmp_path / "checkpoints" / train.LOCK_NAME)], check=True,
                   timeout=60)
    assert kept.value.args == ("an error in the run",)


def test_ctrl_c_before_a_resumed_run_saved_anything_moves_an_earlier_model_aside_before_exporting(
        tmp_path, monkeypatch, capsys, library_checkpoint):
    """Resumed into a folder holding an earlier run's model.js, with no new best and no checkpoint
    saved yet when Ctrl-C came: the export of the last finished epoch must not overwrite that file."""
    import torch
    from predlab.train import main
    state = torch.load(library_checkpoint, weights_only=True)
    state["best_metric"] = 0.0                                   # nothing beats it: no best_model.pt
    torch.save(state, library_checkpoint)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.js").write_text("an earlier run's model")
    ctrl_c_in_epoch(monkeypatch, 2)
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "3", "--resume", str(library_checkpoint), "--checkpoint_dir", "elsewhere",
                 "--save_every", "5", "--quiet"]) == 130
    assert "exporting the model of epoch 1" in capsys.readouterr().out
    kept = list((tmp_path / "elsewhere" / "previous").glob("*/model.js"))
    assert [p.read_text() for p in kept] == ["an earlier run's model"]
    assert (tmp_path / "elsewhere" / "model.js").read_text() != "an earlier run's model"


def test_a_resume_refused_after_taking_the_folder_leaves_no_new_folder_behind(tmp_path, monkeypatch, capsys,
                                                                              library_checkpoint):
    """A training state that does not fit the trainer is found once the folder's lock is taken: the new folder
    was left, empty but for the lock file. A folder that was there stays."""
    import torch
    from predlab.train import main
    state = torch.load(library_checkpoint, weights_only=True)
    state["optimizer"]["param_groups"][0]["weight_decay"] = 1e30
    torch.save(state, library_checkpoint)
    monkeypatch.chdir(tmp_path)
    for folder, there in (("fresh", False), ("kept", True)):
        if there:
            (tmp_path / folder).mkdir()
        with pytest.raises(SystemExit) as e:
            main(["--resume", str(library_checkpoint), "--checkpoint_dir", folder, "--epochs", "2", "--quiet"])
        assert e.value.code == 2 and "does not fit" in capsys.readouterr().err
        assert (tmp_path / folder).exists() is there


def test_a_resume_in_its_folder_moves_a_model_js_edited_since_aside_and_replaces_its_own_export(
        tmp_path, monkeypatch, capsys):
    """A resume in its own folder replaced model.js, hand-edited since the run it continues exported it,
    without a word: only a best_model.pt of a later epoch sent model.js to previous/."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "checkpoints"
    assert main([*SMALL, "--epochs", "2", "--save_every", "1"]) == 0
    own = (d / "model.js").read_text()
    capsys.readouterr()
    assert main(["--resume", "checkpoints/checkpoint_epoch_2.pt", "--epochs", "3"]) == 0     # its own export
    assert "not this run's to replace" not in capsys.readouterr().out and not (d / "previous").exists()
    assert (d / "model.js").read_text() != own
    edited = "// HAND-TUNED, deployed\n" + (d / "model.js").read_text()
    (d / "model.js").write_text(edited)
    assert main(["--resume", "checkpoints/checkpoint_epoch_3.pt", "--epochs", "4"]) == 0
    out = capsys.readouterr().out
    moved = list((d / "previous").glob("*/model.js"))
    assert [p.read_text() for p in moved] == [edited] and "HAND-TUNED" not in (d / "model.js").read_text()
    where = Path("checkpoints") / "previous" / moved[0].parent.name
    assert (f"moved model.js to {where}, not this run's to replace: it holds other weights or text than it wrote "
            "(there when it began, and not the export of the run it continues)") in out
    assert not (moved[0].parent / "model.json").exists()         # its own model.json is replaced


def _export_into_the_folder_meanwhile(monkeypatch, d: Path, text: str) -> None:
    """A model.js with `text` written into folder d after the run's first epoch (at its validation), as
    `python -m predlab.export ... --out d/model.js` from another shell would."""
    from predlab.train import SupervisedTrainer
    validate = SupervisedTrainer.validate

    def export_meanwhile(self, data=None):
        if self.epoch == 1:
            (d / "model.js").write_text(text)
        return validate(self, data)
    monkeypatch.setattr(SupervisedTrainer, "validate", export_meanwhile)


def test_a_model_js_exported_into_the_folder_during_a_run_is_moved_aside_at_its_end(tmp_path, monkeypatch, capsys):
    """`python -m predlab.export other.pt --out checkpoints/model.js` while a run trained there: the
    run's export overwrote it at its end."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "checkpoints"
    _export_into_the_folder_meanwhile(monkeypatch, d, "window.TRANSFORMER_PARAMS = {};  // exported meanwhile\n")
    assert main([*SMALL, "--epochs", "2"]) == 0
    moved = list((d / "previous").glob("*/model.js"))
    assert [p.read_text() for p in moved] == ["window.TRANSFORMER_PARAMS = {};  // exported meanwhile\n"]
    assert "exported or edited there since it began?)" in capsys.readouterr().out
    assert "meanwhile" not in (d / "model.js").read_text()


def test_a_model_js_moved_aside_goes_back_when_the_runs_own_cannot_be_written(tmp_path, monkeypatch, capsys):
    """The run moved a model.js exported meanwhile to previous/, then met a full disk writing its own:
    the folder was left with no model.js, and the message said any earlier one was where it was."""
    from test_train import _full_disk_for
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "checkpoints"
    _export_into_the_folder_meanwhile(monkeypatch, d, "exported meanwhile")
    _full_disk_for(monkeypatch, "model.js")
    assert main([*SMALL, "--epochs", "2"]) == 1
    out, err = capsys.readouterr()
    assert "moved model.js to" not in out and "no model.js was written (the one there is as it was)" in err
    assert (d / "model.js").read_text() == "exported meanwhile" and not (d / "previous").exists()


@pytest.mark.parametrize("full", [False, True], ids=["written", "full disk"])
def test_a_linked_model_js_is_written_through_and_its_file_kept(tmp_path, monkeypatch, capsys, full):
    """checkpoints/model.js linked to the page's folder: the run's export writes through the link, a copy of
    the file it replaces kept (the link went, and a copy in previous/ pointed at nothing). On a full disk
    the link stays a link."""
    from test_train import _full_disk_for
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    d, site = tmp_path / "checkpoints", tmp_path / "site"
    site.mkdir()
    page = "window.TRANSFORMER_PARAMS = {};  // the page's weights\n"
    (site / "model.js").write_text(page)
    d.mkdir()
    (d / "model.js").symlink_to(Path("..") / "site" / "model.js")
    if full:
        _full_disk_for(monkeypatch, "model.js")
    assert main([*BROWSER_SMALL, "--epochs", "2"]) == (1 if full else 0)
    out = capsys.readouterr().out
    assert (d / "model.js").is_symlink()
    assert ("kept a copy of the file model.js links to in" in out and "an earlier run's, or edited there" in out
            ) != full
    # an earlier run's: kept; on a full disk the page's file is as it was, and no copy is needed
    assert [p.read_text() for p in d.glob("previous/*/model.js")] == ([] if full else [page])
    assert ((site / "model.js").read_text() == page) == full


def test_a_model_of_other_sizes_is_not_written_through_a_link_to_the_page(tmp_path, monkeypatch, capsys):
    """A size experiment (--d_model 16) in a folder whose model.js links to a page's replaced the page's working
    model with one the stock page runs as random weights, said only in a warning after the run. The link and
    its file are left; model.json, the folder's own, is written, and the line says how to export anyway."""
    from conftest import linked_to_page
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    d, site = tmp_path / "checkpoints", tmp_path / "site"
    page = linked_to_page(d, site)
    assert main(SMALL) == 0
    out, err = capsys.readouterr()
    assert (site / "model.js").read_text() == page and (d / "model.js").is_symlink()
    assert not list(d.glob("previous/*/model.js"))
    assert (f"warning: {Path('checkpoints') / 'model.js'} links to {site / 'model.js'}, left as it was: this model's "
            f"sizes {{'d_model': 16, 'n_heads': 2, 'n_layers': 1, 'ffn_hidden': 8}} are not the stock browser page's"
            ) in err
    assert "python -m predlab.export checkpoints/best_model.pt --any-size --out FILE" in err
    assert f"browser weights: {d / 'model.json'}" in out and (d / "model.json").is_file()


def test_a_model_js_of_the_very_bytes_the_run_writes_is_not_moved_aside(tmp_path, monkeypatch, capsys):
    """One exported into the folder meanwhile from the checkpoint the run exports in the end went to
    previous/ as "other weights"."""
    from predlab.train import SupervisedTrainer, main
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "checkpoints"
    assert main([*SMALL, "--epochs", "1", "--save_every", "1"]) == 0
    same = (d / "model.js").read_text()
    (d / "model.js").unlink()
    monkeypatch.setattr(SupervisedTrainer, "validate", lambda self, data=None: (d / "model.js").write_text(same)
                        and 9.0)        # no better than epoch 1: the run exports best_model.pt's, as before
    capsys.readouterr()
    assert main(["--resume", "checkpoints/checkpoint_epoch_1.pt", "--epochs", "2"]) == 0
    assert "moved model.js" not in capsys.readouterr().out and not (d / "previous").exists()
    assert (d / "model.js").read_text() == same


def test_partial_files_of_a_killed_save_are_removed_by_the_next_run_in_the_folder(tmp_path, monkeypatch, capsys):
    """kill -9 during a save leaves .best_model.pt.XXXXXXXX.tmp (a checkpoint's size; 350 MB at
    --train_episodes 2000), hidden by its dot; no later run removed or named it."""
    import os
    import time
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "checkpoints"
    d.mkdir()
    old = time.time() - 3600
    for name in (".best_model.pt.a1b2c3d4.tmp", ".checkpoint_epoch_7.pt.zz_9yy8x.tmp", ".model.js.q1w2e3r4.tmp",
                 ".notes.txt.a1b2c3d4.tmp", ".model.json.now00000.tmp"):
        (d / name).write_bytes(b"x" * 1024)
        if "now" not in name:
            os.utime(d / name, (old, old))        # .model.json's is new: a write under way now, left
    assert main(SMALL) == 0
    out = capsys.readouterr().out
    assert ("removed 3 partial files (0.0 MiB) that a save cut short (a kill, a power cut) left in checkpoints: "
            ".best_model.pt.a1b2c3d4.tmp, .checkpoint_epoch_7.pt.zz_9yy8x.tmp, .model.js.q1w2e3r4.tmp") in out
    assert sorted(p.name for p in d.glob(".*.tmp")) == [".model.json.now00000.tmp", ".notes.txt.a1b2c3d4.tmp"]


def test_a_catch_evaluator_given_as_a_callback_is_the_runs_only_one():
    """A user's own CatchEvaluator (other episodes, say) replaces the one eval_every adds: two would
    log catch_ratio twice per epoch, from different episodes."""
    from predlab.evaluate import CatchEvaluator
    mine = CatchEvaluator(1, 2, 20, seed=5)
    t = create_trainer(train_episodes=2, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD,
                       eval_every=3, callbacks=[mine])
    assert [c for c in t.callbacks if isinstance(c, CatchEvaluator)] == [mine]
    t = create_trainer(train_episodes=2, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD,
                       eval_every=3)
    assert len([c for c in t.callbacks if isinstance(c, CatchEvaluator)]) == 1


def test_init_weights_gives_the_run_the_files_sizes(tmp_path, monkeypatch, make_model):
    """The sizes parse_args returns (and checks memory with) are the weight file's, not the defaults."""
    from predlab.export import write_weights
    from predlab.train import parse_args
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="browser"):
        write_weights(make_model(0, d_model=16, n_heads=2, n_layers=1, ffn_hidden=8), "page.js")
    _, mc, _, _ = parse_args(["--init_weights", "page.js", "--dropout", "0.1"])
    assert (mc.d_model, mc.n_heads, mc.n_layers, mc.ffn_hidden, mc.dropout) == (16, 2, 1, 8, 0.1)


def test_an_init_weights_file_removed_after_the_checks_exits_2_naming_it(tmp_path, monkeypatch, capsys, model):
    """The file is read again when the run starts: gone by then, it is the flag's error (exit 2),
    not a traceback."""
    from predlab import train
    from predlab.export import write_weights
    monkeypatch.chdir(tmp_path)
    write_weights(model, "page.js")
    real = train._parse

    def parse_then_remove(argv):
        parsed = real(argv)
        (tmp_path / "page.js").unlink()
        return parsed
    monkeypatch.setattr(train, "_parse", parse_then_remove)
    with pytest.raises(SystemExit) as exit_:
        train.main([*SMALL[:-8], "--init_weights", "page.js"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--init_weights: " in err and "page.js" in err and "Traceback" not in err
    assert not (tmp_path / "checkpoints" / "model.js").exists()


def test_init_weights_whose_actions_overflow_exits_2_before_training(tmp_path, monkeypatch, capsys, model):
    """Finite weights (3e38, each float32) whose actions are NaN: the run trained, diverged at once and
    advised a lower learning rate, which could never help. Now the flag's error, with nothing written."""
    import torch
    from predlab.export import write_weights
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    with torch.no_grad():
        model.cls_embedding.fill_(3e38)
    write_weights(model, "page.js")
    with pytest.raises(SystemExit) as exit_:
        main([*SMALL[:-8], "--init_weights", "page.js"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--init_weights: page.js: the model's actions on the validation episodes are NaN or infinite" in err
    assert "learning_rate" not in err and "Traceback" not in err
    assert not [p.name for p in tmp_path.glob("checkpoints/*") if not p.name.startswith(".")]


def test_a_run_as_short_as_its_warm_up_says_so(tmp_path, monkeypatch, capsys):
    """--epochs 1 with the default 1-epoch warm-up: the only steps ran from a thousandth of the rate
    up, and the losses hardly moved, without a word."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main(SMALL) == 0
    assert "note: the warm-up (--warmup_epochs 1) lasts the whole run of 1 epoch: the learning rate climbs from " \
        "2.0e-06" in capsys.readouterr().out
    assert main([*SMALL[2:], "--epochs", "2", "--warmup_epochs", "0.5", "--checkpoint_dir", "b"]) == 0
    assert "warm-up" not in capsys.readouterr().out
    # a resume goes on where its schedule was: it said the rate "climbs from 2.0e-06" of a run at 1e-3
    assert main(["--resume", str(Path("b") / "checkpoint_epoch_2.pt"), "--epochs", "3", "--warmup_epochs", "5"]) == 0
    said = "".join(capsys.readouterr())
    assert "climbs from" not in said and "note: --warmup_epochs 5 is longer than the run (3 epochs)" in said
    # nor one whose warm-up ends with the run: the checkpoint is loaded after the note was said (its epoch 0)
    assert main(["--resume", str(Path("b") / "checkpoint_epoch_3.pt"), "--epochs", "4", "--warmup_epochs", "4"]) == 0
    assert "climbs from" not in "".join(capsys.readouterr())


def test_a_run_with_progress_bars_still_prints_a_line_per_epoch(tmp_path, monkeypatch, capsys):
    """The bars vanish as they finish: the epoch lines are what stays on the terminal and in a log."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main([f for f in SMALL if f != "--quiet"] + ["--progress"]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^epoch    1  train [0-9.]+  val [0-9.]+", out, re.M)
    assert "\r" in err                                               # the bars were drawn


def test_validation_shows_a_bar_while_it_runs(tmp_path, monkeypatch, capsys):
    """Validation ran with no bar once the epoch's training bar had gone: 1,000 validation episodes,
    or 100 of 300 boids, stood still on screen for 10-20 s an epoch. A validate() outside the run
    (a fine-tune's starting MSE) draws none."""
    from predlab.train import ProgressBar, main
    monkeypatch.chdir(tmp_path)
    assert main([f for f in SMALL if f != "--quiet"] + ["--progress"]) == 0
    assert "validation (epoch 1)" in capsys.readouterr().err
    t = create_trainer(train_episodes=2, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD,
                       eval_every=0, dagger=False, callbacks=[ProgressBar()])
    t.validate()
    assert "validation" not in capsys.readouterr().err


def test_the_catch_check_shows_a_bar_while_it_runs(tmp_path, monkeypatch, capsys):
    """The catch check's rollouts took a minute at --eval_episodes 500 or --boids_max 200, with no bar
    moving meanwhile: each rollout now has its own bar, where the run shows bars."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    flags = [f for f in SMALL if f != "--quiet"] + ["--eval_every", "1", "--eval_episodes", "2", "--eval_frames", "5"]
    assert main(flags + ["--progress"]) == 0
    err = capsys.readouterr().err
    assert "catch check (teacher)" in err and "catch check (epoch 1)" in err
    assert main(flags + ["--no-progress", "--checkpoint_dir", "quiet"]) == 0
    assert "catch check" not in capsys.readouterr().err


def test_a_resume_that_starts_the_best_afresh_starts_the_early_stopping_count_afresh(tmp_path, monkeypatch, capsys):
    """Selecting by the catch ratio, epochs without an evaluation decide nothing: a count carried
    over from the other episodes stopped the resumed run before its first evaluation."""
    from predlab import train
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="checkpoint_dir, log_dir only set what the command line does"):
        t = create_trainer(train_episodes=2, val_episodes=2, batch_size=32, device="cpu", verbose=False,
                           world_config=TINY_WORLD, select_best_by="catch_ratio", eval_every=2, eval_episodes=2,
                           eval_frames=20, early_stopping=2, progress=False, checkpoint_dir="first", log_dir="runs")
    t.epoch, t.bad_epochs = 2, 2                                # two evaluations without a gain
    path = t.save_checkpoint(tmp_path / "first" / "c0.pt")
    train.main(["--resume", str(path), "--eval_episodes", "3", "--epochs", "3", "--checkpoint_dir", "more",
                "--quiet"])
    out = capsys.readouterr().out
    assert "--eval_episodes changed the episodes catch_ratio is measured on" in out
    assert "early stopping" not in out


def test_ctrl_c_just_after_the_first_epochs_best_model_was_saved_still_exports_it(tmp_path, monkeypatch, capsys):
    """The interrupted epoch is undone, but its best_model.pt is on disk: the run exports it rather
    than saying that nothing was written."""
    from predlab import train
    from predlab.export import read_weights
    monkeypatch.chdir(tmp_path)

    def interrupt(self, trainer, epoch, logs):                 # after the Checkpointer's save
        raise KeyboardInterrupt
    monkeypatch.setattr(train.EarlyStopping, "on_epoch_end", interrupt)
    assert train.main([*SMALL, "--early_stopping", "3"]) == 130
    err = capsys.readouterr().err
    assert "no checkpoint or model was written" not in err
    from predlab import checkpoint as ck
    best = ck.load_model(tmp_path / "checkpoints" / "best_model.pt")
    exported = read_weights(tmp_path / "checkpoints" / "model.js")
    assert all((a == b).all() for a, b in zip(best.state_dict().values(), exported.state_dict().values()))


def test_an_interrupted_run_without_a_best_of_its_own_never_exports_an_earlier_runs_best(
        tmp_path, monkeypatch, capsys, model):
    """The folder's best_model.pt is an earlier run's until this run first writes: exporting it
    would pass another run's model off as this one's. Here this run's first write is the
    checkpoint of epoch 1, saved at the Ctrl-C in epoch 2: the earlier best moves to previous/."""
    from conftest import save_model_file
    from predlab import train
    monkeypatch.chdir(tmp_path)
    earlier = save_model_file(model, tmp_path / "checkpoints" / "best_model.pt").read_bytes()
    ctrl_c_in_epoch(monkeypatch, 2)
    flags = ["--epochs", "3", *TINY_FLAGS, "--save_every", "5", "--no-dagger", "--select_best_by", "catch_ratio",
             "--eval_every", "5"]
    assert train.main(flags) == 130
    err = capsys.readouterr().err
    assert "no best_model.pt was written before the interrupt, so no model.js" in err
    assert not (tmp_path / "checkpoints" / "best_model.pt").exists()
    assert [p.read_bytes() for p in (tmp_path / "checkpoints" / "previous").glob("*/best_model.pt")] == [earlier]
    assert (tmp_path / "checkpoints" / "checkpoint_epoch_1.pt").is_file()
    assert not (tmp_path / "checkpoints" / "model.js").exists()


@pytest.mark.parametrize("save_every, dagger", [(5, "--no-dagger"), (2, "--dagger")])
def test_a_run_stopped_by_ctrl_c_or_sigterm_keeps_its_last_whole_epoch(tmp_path, monkeypatch, capsys, save_every,
                                                                        dagger):
    """A Ctrl-C or a scheduler's SIGTERM in epoch 4 left checkpoint_epoch_N.pt files of the
    --save_every epochs only: at the default 5, the resume started again from nothing (or lost up
    to 4 epochs). The last whole epoch is saved, and its resume goes on as the uninterrupted run."""
    from predlab import checkpoint as ck
    from predlab import train
    monkeypatch.chdir(tmp_path)
    flags = ["--epochs", "5", *TINY_FLAGS, dagger, "--dagger_start", "2", "--eval_every", "0",
             "--save_every", str(save_every)]
    assert train.main([*flags, "--checkpoint_dir", "whole"]) == 0
    with monkeypatch.context() as m:
        ctrl_c_in_epoch(m, 4)
        assert train.main([*flags, "--checkpoint_dir", "cut"]) == 130
    out = capsys.readouterr().out
    assert f"saved {Path('cut') / 'checkpoint_epoch_3.pt'} (the last whole epoch): --resume it to go on" in out
    assert ck.load_checkpoint_dict("cut/checkpoint_epoch_3.pt")["epoch"] == 3
    assert train.main(["--resume", "cut/checkpoint_epoch_3.pt"]) == 0
    a, b = (ck.load_checkpoint_dict(f"{d}/checkpoint_epoch_5.pt")["model"] for d in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_that_found_no_best_model_exits_1_and_says_why(tmp_path, monkeypatch, capsys):
    """Selecting by the catch ratio, evaluations in which the teacher catches nothing give no best:
    no model.js is written, and a script must be able to tell that from success."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    flags = [*SMALL, "--select_best_by", "catch_ratio", "--eval_every", "1", "--eval_episodes", "1",
             "--eval_frames", "1"]
    assert main(flags) == 1
    assert "no catch evaluation gave one (the teacher caught no boid in the evaluation episodes: raise " \
           "--eval_episodes or --eval_frames)" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints" / "model.js").exists()


def test_a_run_that_diverged_before_any_best_says_so_and_exits_1(tmp_path, monkeypatch, capsys):
    """Not "before the interrupt": the user did not stop it, the learning rate did."""
    import torch
    from predlab import train
    monkeypatch.chdir(tmp_path)
    train_epoch = train.SupervisedTrainer.train_epoch

    def diverge_in_epoch_2(self, data):
        logs = train_epoch(self, data)
        if self.epoch == 1:
            with torch.no_grad():
                self.model.output.weight[0, 0] = float("nan")
        return logs
    monkeypatch.setattr(train.SupervisedTrainer, "train_epoch", diverge_in_epoch_2)
    assert train.main([*SMALL, "--epochs", "3", "--select_best_by", "catch_ratio", "--eval_every", "5",
                       "--save_every", "5"]) == 1
    err = capsys.readouterr().err
    assert "training diverged in epoch 2" in err
    assert "no best_model.pt was written before training diverged, so no model.js" in err
    # the last whole epoch is saved for a resume at a lower learning rate, without the NaN of epoch 2
    from predlab import checkpoint as ck
    state = ck.load_checkpoint_dict(tmp_path / "checkpoints" / "checkpoint_epoch_1.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_full_disk_at_the_first_best_model_puts_the_earlier_runs_files_back(tmp_path, monkeypatch, capsys):
    """The earlier run's files move to previous/ just before this run's first best_model.pt. When that
    write failed, they stayed there: the demo and the page found no model.js, though this run wrote
    nothing to replace it."""
    from test_train import _full_disk_for
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "best_model.pt").write_bytes(b"an earlier run's")
    (folder / "model.js").write_text("window.TRANSFORMER_PARAMS = {};  // an earlier run's\n")
    _full_disk_for(monkeypatch, "best_model.pt")
    assert main(SMALL) == 1
    out, err = capsys.readouterr()
    assert "moved 1 file(s) of an earlier run" in out       # model.js stays until the run exports
    assert "no checkpoint or model was written, and the earlier run's files are back in checkpoints" in err
    assert (folder / "best_model.pt").read_bytes() == b"an earlier run's"
    assert (folder / "model.js").read_text() == "window.TRANSFORMER_PARAMS = {};  // an earlier run's\n"
    assert not (folder / "previous").exists()
    (folder / "previous" / "20260101-000000").mkdir(parents=True)     # a name taken: all left in previous/
    (folder / "previous" / "20260101-000000" / "x.pt").write_bytes(b"older")
    _full_disk_for(monkeypatch, "best_model.pt")
    monkeypatch.setattr(Path, "rename", _rename_but_not_back(Path.rename, folder / "best_model.pt"))
    assert main(SMALL) == 1
    err = capsys.readouterr().err
    moved = sorted(p for p in (folder / "previous").iterdir() if p.name != "20260101-000000")
    assert len(moved) == 1 and sorted(p.name for p in moved[0].iterdir()) == ["best_model.pt"]
    assert (folder / "model.js").read_text() == "window.TRANSFORMER_PARAMS = {};  // an earlier run's\n"
    assert (f"the earlier run's files are in {Path('checkpoints') / 'previous' / moved[0].name}") in err


def test_a_first_write_that_fails_after_epoch_1_leaves_the_earlier_run_as_it_was(tmp_path, monkeypatch, capsys):
    """The best by catch ratio is first written at the run's last epoch; when that write failed, the
    earlier run's files came back, and the run then exported the earlier run's best_model.pt as its own."""
    from test_train import _full_disk_for
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main(SMALL) == 0                                                         # the earlier run
    d = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and not p.name.startswith(".")}
    capsys.readouterr()
    _full_disk_for(monkeypatch, "best_model.pt", "checkpoint_epoch")
    assert main([*SMALL, "--epochs", "3", "--save_every", "5", "--select_best_by", "catch_ratio",
                 "--eval_every", "5"]) == 1
    out, err = capsys.readouterr()
    assert ("its first write failed: no checkpoint or model was written, and the earlier run's files are back in "
            "checkpoints") in err
    assert "browser weights" not in out
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and not p.name.startswith(".")} == before


def test_a_resumed_runs_failed_first_write_leaves_the_earlier_files_back_in_place(tmp_path, monkeypatch, capsys):
    """Resumed from another folder, no epoch better, a full disk at its first write: the earlier run's files
    were put back, then the export of where the run ended moved them aside again, and failed."""
    from test_train import _full_disk_for
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main([*SMALL, "--epochs", "2", "--checkpoint_dir", "runs/good"]) == 0
    assert main([*SMALL, "--seed", "3"]) == 0                                   # an earlier run in checkpoints/
    d = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and not p.name.startswith(".")}
    capsys.readouterr()
    _full_disk_for(monkeypatch, "best_model.pt", "checkpoint_epoch", "model")
    assert main([*SMALL, "--epochs", "4", "--save_every", "5", "--min_delta", "1", "--resume",
                 "runs/good/checkpoint_epoch_2.pt", "--checkpoint_dir", "checkpoints"]) == 1
    assert "its first write failed: no checkpoint or model was written" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and not p.name.startswith(".")} == before


def test_a_checkpoint_linked_into_another_runs_folder_is_not_written_through(tmp_path, monkeypatch):
    """A best_model.pt or checkpoint link in the folder (to a good run's files): the new run's saves went into
    the good run's files, and rotation left them there under their own names."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main([*SMALL, "--epochs", "2", "--save_every", "1", "--checkpoint_dir", "runs/good"]) == 0
    good = {p.name: p.read_bytes() for p in (tmp_path / "runs" / "good").glob("*.pt")}
    d = tmp_path / "checkpoints"
    d.mkdir()
    for name in ("best_model.pt", "checkpoint_epoch_1.pt"):
        (d / name).symlink_to(Path("..") / "runs" / "good" / name)
    assert main([*SMALL, "--epochs", "3", "--save_every", "1", "--keep_checkpoints", "1"]) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "runs" / "good").glob("*.pt")} == good
    assert not any(p.is_symlink() for p in d.iterdir())
    assert sorted(p.name for p in d.glob("previous/*/*")) == ["best_model.pt", "checkpoint_epoch_1.pt"]


def test_a_linked_model_js_written_through_keeps_its_copy_when_model_json_then_fails(tmp_path, monkeypatch, capsys):
    """model.js is written (through the link, into the page's folder) before model.json; when model.json
    failed, the copy of the page's file was deleted as if nothing had been written."""
    from test_train import _full_disk_for
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main([*BROWSER_SMALL, "--epochs", "2", "--save_every", "1"]) == 0
    d, site = tmp_path / "checkpoints", tmp_path / "site"
    site.mkdir()
    hand = "window.TRANSFORMER_PARAMS = {};  // hand-tuned weights for the page\n"
    (site / "model.js").write_text(hand)
    (d / "model.js").unlink()
    (d / "model.js").symlink_to(Path("..") / "site" / "model.js")
    _full_disk_for(monkeypatch, "model.json")
    assert main([*BROWSER_SMALL, "--epochs", "3", "--resume", "checkpoints/checkpoint_epoch_2.pt"]) == 1
    assert "hand-tuned" not in (site / "model.js").read_text() and (d / "model.js").is_symlink()
    assert [p.read_text() for p in d.glob("previous/*/model.js")] == [hand]


def _rename_but_not_back(rename, blocked: Path):
    """Path.rename that makes a file at `blocked` whenever a file is moved out of its folder, so that
    putting one back there finds the name taken."""
    def fake(self, target):
        out = rename(self, target)
        if Path(self).absolute() == blocked:
            blocked.write_text("written meanwhile")
        return out
    return fake


def test_a_full_disk_under_an_early_stopped_runs_last_checkpoint_names_the_epoch_it_follows(tmp_path, monkeypatch,
                                                                                           capsys):
    """Early stopping after epoch 2 writes checkpoint_epoch_2.pt once training has ended; when that write
    failed, the run said an epoch 3, which never began, was not counted."""
    from test_train import _full_disk_for
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    _full_disk_for(monkeypatch, "checkpoint_epoch_2.pt")
    # no epoch improves by min_delta 1 on the first: patience 1 stops the run after epoch 2
    assert main([*SMALL, "--epochs", "6", "--save_every", "5", "--early_stopping", "1", "--min_delta", "1"]) == 1
    err = capsys.readouterr().err
    assert "error after epoch 2, where the run stopped early: cannot write " \
           f"{Path('checkpoints') / 'checkpoint_epoch_2.pt'}: {os.strerror(errno.ENOSPC)}" in err
    assert "epoch 3" not in err


def test_a_full_disk_under_model_json_says_that_model_js_was_written(tmp_path, monkeypatch, capsys):
    """model.js is written before model.json; when only model.json could not be written, the run said
    that no model.js was written, while the folder held the new one."""
    from test_train import _full_disk_for
    from predlab.export import load_model_file
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    _full_disk_for(monkeypatch, "model.json")
    assert main(SMALL) == 1
    err = capsys.readouterr().err
    assert f"cannot write {Path('checkpoints') / 'model.json'}: {os.strerror(errno.ENOSPC)}; " \
           f"{Path('checkpoints') / 'model.js'} was written, model.json was not" in err
    assert "no model.js was written" not in err
    load_model_file(tmp_path / "checkpoints" / "model.js")


def test_a_full_disk_under_model_js_leaves_the_earlier_runs_model_js_in_place(tmp_path, monkeypatch, capsys):
    """The earlier run's model.js moved to previous/ at this run's first write, leaving a page or the demo none
    for the whole run (and for good after a kill); when this run's model.js then could not be written, the run
    said any earlier one was where it was. It now stays in place until the export replaces it."""
    from test_train import _full_disk_for
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "model.js").write_text("window.TRANSFORMER_PARAMS = {};  // an earlier run's\n")
    _full_disk_for(monkeypatch, "model.js")
    assert main(SMALL) == 1
    err = capsys.readouterr().err
    assert "an earlier run's" in (tmp_path / "checkpoints" / "model.js").read_text()
    assert not list((tmp_path / "checkpoints").glob("previous/*/model.js"))
    assert "no model.js was written (the one there is as it was)" in err


def test_a_ctrl_c_in_an_early_stopped_runs_last_checkpoint_names_the_epoch_it_follows(tmp_path, monkeypatch, capsys):
    """Early stopping after epoch 2 writes checkpoint_epoch_2.pt once training has ended; a Ctrl-C
    there said the run was interrupted in an epoch 3 that never began."""
    from predlab.train import Checkpointer, main
    monkeypatch.chdir(tmp_path)
    save_epoch = Checkpointer._save_epoch

    def save_then_ctrl_c(self, trainer, epoch):
        save_epoch(self, trainer, epoch)
        if trainer.stop_training:
            raise KeyboardInterrupt
    monkeypatch.setattr(Checkpointer, "_save_epoch", save_then_ctrl_c)
    assert main([*SMALL, "--epochs", "6", "--save_every", "5", "--early_stopping", "1", "--min_delta", "1"]) == 130
    out = capsys.readouterr().out
    assert "interrupted after epoch 2, where the run stopped early" in out and "epoch 3" not in out
    assert (tmp_path / "checkpoints" / "checkpoint_epoch_2.pt").is_file()


def test_a_ctrl_c_before_training_begins_is_a_message_and_exit_130_not_a_traceback(tmp_path, monkeypatch, capsys):
    """Reading the flags (and a --resume or --init_weights file) takes a while; a Ctrl-C there came
    out of main() as a KeyboardInterrupt traceback. Here SIGINT is raised at lines spread over all
    of it, as a Ctrl-C could land, up to where the run's own handling begins."""
    import signal
    import sys
    import predlab
    from predlab import train
    monkeypatch.chdir(tmp_path)
    ours = str(Path(predlab.__file__).parent)
    lines = [0]

    def count(frame, event, arg):
        if frame.f_code is train._run.__code__:
            raise RuntimeError("reached _run")
        if event == "line" and frame.f_code.co_filename.startswith(ours):
            lines[0] += 1
        return count

    sys.settrace(count)
    try:
        with pytest.raises(RuntimeError, match="reached _run"):
            train.main(SMALL)
    finally:
        sys.settrace(None)
    assert lines[0] > 100
    for at in range(1, lines[0], max(1, lines[0] // 12)):    # 0 is main's `try:`, which no Ctrl-C can stop at
        seen = [0]

        def cut(frame, event, arg, at=at):
            if event == "line" and frame.f_code.co_filename.startswith(ours):
                seen[0] += 1
                if seen[0] == at + 1:
                    signal.raise_signal(signal.SIGINT)
            return cut

        sys.settrace(cut)
        try:
            code = train.main(SMALL)
        except KeyboardInterrupt:    # not raised on: pytest would end the whole session
            code = "KeyboardInterrupt out of main()"
        finally:
            sys.settrace(None)
        assert code == 130, at
        assert "interrupted before training began: nothing was written" in capsys.readouterr().err
        assert not (tmp_path / "checkpoints" / "best_model.pt").exists()


def test_a_ctrl_c_on_the_way_into_the_run_is_a_first_one_not_again(tmp_path, monkeypatch, capsys):
    """Between taking the folder's lock and the run's own handling (its notes, the call into it) a first
    Ctrl-C was reported as a second one, "interrupted again: stopped at once"."""
    from predlab import train
    monkeypatch.chdir(tmp_path)

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "_say", interrupted)
    assert train.main(SMALL) == 130
    err = capsys.readouterr().err
    assert "interrupted before training began: nothing was written" in err and "again" not in err
    assert not (tmp_path / "checkpoints").exists()       # the folder it made for the lock is gone


def test_turning_dagger_on_when_resuming_a_run_without_it_gives_no_warning_about_missing_samples(
        tmp_path, monkeypatch, capsys, library_checkpoint):
    """An epoch checkpoint of a --no-dagger run holds no DAgger samples because that run made none:
    resuming it with --dagger warned that best_model.pt is saved without them and advised an epoch
    checkpoint, which is what was given. The change of setting is listed, and the buffer starts
    empty, as that run's would have."""
    import torch
    from predlab.train import parse_args
    state = torch.load(library_checkpoint, weights_only=True)
    state["train_config"]["dagger"] = False
    del state["data_source"]                            # as a --no-dagger run saves it
    torch.save(state, library_checkpoint)
    monkeypatch.chdir(tmp_path)
    tc, *_ = parse_args(["--resume", str(library_checkpoint), "--dagger"])
    out, err = capsys.readouterr()
    assert tc.dagger and "changed by flags: --dagger (the checkpoint's run: --no-dagger)" in out
    assert "DAgger samples" not in err


def test_an_empty_resume_path_is_named_as_no_file_name(tmp_path, monkeypatch, capsys):
    """--resume "" (a script's unset variable) is Path("."): it was refused as "--resume:  is a
    directory", naming no path at all."""
    from predlab.train import parse_args
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        parse_args(["--resume", ""])
    assert e.value.code == 2 and "error: --resume: no file name given" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_run_that_never_found_a_best_model_exits_1_as_the_run_it_resumes_did(tmp_path, monkeypatch, capsys):
    """Selecting by the catch ratio with a teacher that catches nothing, the first run exits 1 with no
    model.js; its --resume exported the last epoch, exited 0 and said no epoch "beat the best (none
    yet)" of the run it came from."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    flags = [*SMALL, "--select_best_by", "catch_ratio", "--eval_every", "1", "--eval_episodes", "1",
             "--eval_frames", "1"]
    assert main(flags) == 1
    capsys.readouterr()
    assert main([*flags, "--epochs", "2", "--resume", "checkpoints/checkpoint_epoch_1.pt"]) == 1
    err = capsys.readouterr().err
    assert "no catch evaluation gave one" in err and "none yet" not in err
    assert not (tmp_path / "checkpoints" / "model.js").exists()


def test_a_resumed_runs_folder_that_cannot_take_its_files_is_named_as_the_checkpoints_folder(
        tmp_path, monkeypatch, capsys, library_checkpoint):
    """A --resume without --checkpoint_dir goes on in the checkpoint's folder; a problem there was
    named "--checkpoint_dir: ...", a flag the user had not given."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    (library_checkpoint.parent / "best_model.pt").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["--resume", str(library_checkpoint), "--epochs", "1", "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: --resume (the run goes on in its checkpoint's folder; --checkpoint_dir DIR writes elsewhere): " \
           in err and "best_model.pt exists and is not a file" in err


def test_a_sigterm_stops_a_run_as_ctrl_c_does_and_exits_143(tmp_path, monkeypatch, capsys):
    """A SIGTERM (a scheduler at the end of --time, `timeout`, `docker stop`, `kill`) killed the run at
    once: no model.js of the best so far, and a .tmp file where it landed in a checkpoint's write."""
    import signal
    from predlab import train
    from predlab.train import SupervisedTrainer
    monkeypatch.chdir(tmp_path)
    train_epoch = SupervisedTrainer.train_epoch

    def cut(self, data):
        if self.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return train_epoch(self, data)
    monkeypatch.setattr(SupervisedTrainer, "train_epoch", cut)
    assert train.main([*SMALL, "--epochs", "3"]) == 143
    out = capsys.readouterr().out
    assert "terminated (SIGTERM) in epoch 2: the checkpoints saved so far are intact" in out
    assert "best val MSE" in out and "browser weights" in out
    d = tmp_path / "checkpoints"
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".predlab")) == \
        ["best_model.pt", "checkpoint_epoch_1.pt", "model.js", "model.json"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL     # main() put Python's handling back


def test_a_sigterm_after_a_ctrl_c_while_the_run_exports_lets_both_files_be_written(
        tmp_path, monkeypatch, capsys, python_sigint):
    import signal
    from predlab import export, train
    monkeypatch.chdir(tmp_path)
    ctrl_c_in_epoch(monkeypatch, 2)
    real = export.params_to_text

    def terminated(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)
    monkeypatch.setattr(export, "params_to_text", terminated)
    assert train.main([*SMALL, "--epochs", "3"]) == 143
    assert "terminated (SIGTERM): the export above was completed first" in capsys.readouterr().err
    monkeypatch.setattr(export, "params_to_text", real)
    d = tmp_path / "checkpoints"
    assert export.read_params(d / "model.js") == export.read_params(d / "model.json")


@pytest.mark.parametrize("at, lines", [(1, 3), (2, 5)])
def test_a_closed_stdout_stops_a_run_as_ctrl_c_does_and_exits_141(tmp_path, monkeypatch, capsys, at, lines):
    """`python -m predlab.train | head -5`: once head had gone, the next epoch's line failed with a
    BrokenPipeError, told as "error in epoch 2: [Errno 32] Broken pipe", and the best model was not
    exported ("no model.js was written"): the export's own lines met the closed pipe too. Closed before the
    first epoch's line (`| head -3`), it said "after epoch 0"."""
    import errno
    import io
    from predlab import train

    class Head(io.StringIO):
        def write(self, s):
            if "epoch    2" in s or self.getvalue().count("\n") >= lines:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")
            return super().write(s)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdout", Head())
    assert train.main([*SMALL, "--epochs", "3"]) == 141
    err = capsys.readouterr().err
    assert err.startswith(f"stdout was closed (broken pipe) in epoch {at}: the checkpoints saved so far are intact")
    d = tmp_path / "checkpoints"
    assert not (d / f"checkpoint_epoch_{at}.pt").exists()
    if at == 2:
        assert (d / "model.js").is_file() and (d / "model.json").is_file()
        # the last whole epoch is saved, as after a Ctrl-C, and stderr says so (stdout is gone): with --save_every 5
        # the run left only best_model.pt, which resumes without DAgger's samples
        assert (d / "checkpoint_epoch_1.pt").is_file()
        last = Path("checkpoints") / "checkpoint_epoch_1.pt"
        assert f"{last} holds the last whole epoch: --resume it to go on" in err
    else:
        assert "--resume it to go on" not in err


def test_a_closed_stdout_saves_the_last_whole_epoch_so_that_resume_goes_on_from_it(tmp_path, monkeypatch, capsys):
    """`python -m predlab.train | head` stopped after epoch 4 of a --save_every 5 run wrote no checkpoint_epoch_4.pt
    (a Ctrl-C or a SIGTERM there does): --resume could only go back to best_model.pt or an older checkpoint."""
    import errno
    import io
    from predlab import train

    class Head(io.StringIO):
        def write(self, s):
            if "epoch    3" in s:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")
            return super().write(s)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdout", Head())
    assert train.main([*SMALL, "--epochs", "4", "--save_every", "5"]) == 141
    d = tmp_path / "checkpoints"
    assert sorted(p.name for p in d.glob("checkpoint_epoch_*.pt")) == ["checkpoint_epoch_2.pt"]
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert train.main(["--resume", str(d / "checkpoint_epoch_2.pt"), "--epochs", "4", "--quiet"]) == 0
    assert "continuing with epoch 3 of 4" in out.getvalue()


def test_a_sigterm_while_a_run_stops_after_a_ctrl_c_ends_it_with_a_line_not_a_traceback(tmp_path, monkeypatch, capsys,
                                                                                         python_sigint):
    """A scheduler's SIGTERM after the user's Ctrl-C, while the run closed its episode generator, came
    out of main() as a traceback; the files already written are whole."""
    import signal
    from predlab import train
    from predlab.data import EpisodeGenerator
    from predlab.train import SupervisedTrainer
    monkeypatch.chdir(tmp_path)
    train_epoch, close, cut, sent = SupervisedTrainer.train_epoch, EpisodeGenerator.close, [], []

    def ctrl_c_in_epoch_2(self, data):
        if self.epoch == 1:
            cut.append(True)
            raise KeyboardInterrupt
        return train_epoch(self, data)

    def terminated(self):
        close(self)
        # once, and only as the run stops: a generator of an earlier test, closed when the garbage collector
        # came by during epoch 1, had taken the SIGTERM (and under SIGTERM's default, a later one ends pytest)
        if cut and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(SupervisedTrainer, "train_epoch", ctrl_c_in_epoch_2)
    monkeypatch.setattr(EpisodeGenerator, "close", terminated)
    assert train.main([*SMALL, "--epochs", "3"]) == 143
    assert "terminated (SIGTERM) again: stopped at once" in capsys.readouterr().err
    assert (tmp_path / "checkpoints" / "checkpoint_epoch_1.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_sigterm_to_the_whole_process_group_of_a_run_with_workers_stops_it_cleanly(tmp_path):
    """SLURM and `kill -- -PGID` signal every process of the run: the episode workers died of it, one
    holding the task queue's lock, and the run hung in closing its pool instead of exporting."""
    import signal
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "predlab.train", *SMALL, "--epochs", "200", "--num_workers", "2"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        for line in p.stdout:                  # wait for a finished epoch, so that a best model exists
            if line.startswith("epoch    2"):
                break
        os.killpg(p.pid, signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 143, err
    assert "terminated (SIGTERM)" in out and "browser weights" in out
    from predlab.export import read_weights
    read_weights(tmp_path / "checkpoints" / "model.js")


def test_a_full_disk_in_a_run_that_found_no_best_is_not_called_a_divergence(tmp_path, monkeypatch, capsys):
    """A catch-ratio run whose teacher catches nothing writes no best_model.pt; a full disk then
    stopped it, and the run said no best was written "before training diverged"."""
    from test_train import _full_disk_for
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    _full_disk_for(monkeypatch, "checkpoint_epoch_2.pt")
    assert main([*SMALL, "--epochs", "2", "--select_best_by", "catch_ratio", "--eval_every", "1",
                 "--eval_frames", "1", "--save_every", "1"]) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "diverged" not in err
    assert "no best_model.pt was written: best_model.pt follows the catch ratio" in err


def test_a_ctrl_c_as_the_finished_run_lets_go_of_its_folder_is_not_called_one_before_training(tmp_path, monkeypatch,
                                                                                              capsys):
    """A Ctrl-C landing as main() released the folder's lock, after model.js was written, was told as
    "interrupted before training began: nothing was written"."""
    import predlab.train as T
    real = T.lock_checkpoint_dir

    class Lock:
        def __init__(self, lock):
            self.lock = lock

        def release(self):
            self.lock.release()
            raise KeyboardInterrupt

    calls = []      # the CLI's own lock is the first taken; the Checkpointer's, inside it, are left alone
    monkeypatch.setattr(T, "lock_checkpoint_dir", lambda d: real(d) if calls.append(d) or len(calls) > 1
                        else Lock(real(d)))
    monkeypatch.chdir(tmp_path)
    assert T.main(SMALL) == 130
    err = capsys.readouterr().err
    assert "interrupted as the run ended: the files written are whole" in err and "before training" not in err
    assert "interrupted after" not in err and "interrupted in" not in err
    assert (tmp_path / "checkpoints" / "model.js").is_file()


def test_a_resumed_run_takes_the_cpu_split_from_its_own_command_line(tmp_path, monkeypatch, capsys):
    """The split is a setting of the machine, as --threads is: a 16-core run's --cpu_split 8, resumed
    on a 2-core laptop, kept 8 parts (8 threads) unless the flag was given again."""
    from predlab import checkpoint as ck
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main([*SMALL, "--cpu_split", "2", "--save_every", "1"]) == 0
    assert ck.load_checkpoint_dict(tmp_path / "checkpoints" / "checkpoint_epoch_1.pt")["train_config"]["cpu_split"] == 2
    capsys.readouterr()
    assert main(["--resume", "checkpoints/checkpoint_epoch_1.pt", "--epochs", "2"]) == 0
    assert ck.load_checkpoint_dict(tmp_path / "checkpoints" / "checkpoint_epoch_2.pt")["train_config"]["cpu_split"] == 0
    assert "cpu_split" not in capsys.readouterr().out


@pytest.mark.parametrize("edit, field", [
    (lambda s: s.pop("optimizer"), "no 'optimizer' state"),
    (lambda s: s.__setitem__("rng", {}), "'rng' holds no 'torch'"),
    (lambda s: s.__setitem__("monitor", "train_loss"), "'monitor' is 'train_loss'"),
    (lambda s: s["train_config"].__setitem__("select_best_by", "loss"), "train_config's 'select_best_by' is 'loss'")])
def test_resuming_a_checkpoint_without_the_state_a_run_goes_on_with_exits_2_naming_the_field_and_file(
        tmp_path, monkeypatch, capsys, edit, field):
    """They were resumed: with a fresh optimizer, another random state, or a best started afresh
    "by val_loss from now on" as if --select_best_by had been given; now refused before anything is written."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "1", *TINY_FLAGS, "--eval_every", "0", "--no-dagger"]) == 0
    state = torch.load(tmp_path / "checkpoints" / "checkpoint_epoch_1.pt", weights_only=True)
    edit(state)
    torch.save(state, tmp_path / "checkpoints" / "edited.pt")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--epochs", "2", "--resume", "checkpoints/edited.pt"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"--resume: checkpoints/edited.pt: {field}" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_checkpoint_whose_best_follows_a_metric_the_command_does_not_measure_resumes_once_one_is_chosen(
        tmp_path, monkeypatch, library_checkpoint):
    """A notebook's trainer may pick its best by a metric of its own callbacks; the command line cannot
    measure it, and goes on by the one --select_best_by names."""
    from predlab.train import parse_args
    monkeypatch.chdir(tmp_path)
    state = torch.load(library_checkpoint, weights_only=True)
    state["monitor"] = "score"
    torch.save(state, library_checkpoint)
    with pytest.raises(SystemExit):
        parse_args(["--resume", str(library_checkpoint)])
    tc, *_ = parse_args(["--resume", str(library_checkpoint), "--select_best_by", "val_loss"])
    assert tc.select_best_by == "val_loss"


def test_a_rewind_to_an_earlier_checkpoint_of_the_run_keeps_a_best_model_and_model_js_of_that_run(
        tmp_path, monkeypatch, capsys):
    """Resumed from checkpoint_epoch_2.pt in its own folder, after the run had found a better model at
    epoch 4: that best_model.pt moved aside, and as no epoch since beat epoch 2 the folder was left
    without one, and model.js of the last epoch, a model worse than the best the run goes on with."""
    from predlab import checkpoint as ck
    from predlab.export import read_params, write_weights
    from predlab.train import SupervisedTrainer, main
    monkeypatch.chdir(tmp_path)
    losses = iter([0.5, 0.4, 0.45, 0.3])
    monkeypatch.setattr(SupervisedTrainer, "validate", lambda self, data=None: next(losses))
    assert main(["--epochs", "4", *TINY_FLAGS, "--save_every", "2", "--eval_every", "0", "--no-dagger"]) == 0
    d = tmp_path / "checkpoints"
    assert ck.load_checkpoint_dict(d / "best_model.pt")["epoch"] == 4
    monkeypatch.setattr(SupervisedTrainer, "validate", lambda self, data=None: 0.6)     # no better than epoch 2
    assert main(["--resume", "checkpoints/checkpoint_epoch_2.pt"]) == 0
    best = ck.load_checkpoint_dict(d / "best_model.pt")
    assert (best["epoch"], best["best_epoch"], best["best_metric"]) == (2, 2, 0.4)
    resumed = ck.load_model(d / "checkpoint_epoch_2.pt")
    assert all(torch.equal(best["model"][k], v) for k, v in resumed.state_dict().items())
    assert read_params(d / "model.js") == read_params(write_weights(resumed, tmp_path / "epoch2.js"))
    [moved] = d.glob("previous/*/best_model.pt")
    assert ck.load_checkpoint_dict(moved)["epoch"] == 4


@pytest.mark.parametrize("first_losses, epoch1_gone", [([0.5, 0.4, 0.45, 0.3], False),    # epoch 2 is the best
                                                       ([0.3, 0.4, 0.45, 0.2], True)])    # epoch 1 was: no file
def test_a_resume_in_its_folder_whose_best_model_was_deleted_writes_the_best_it_goes_on_with(
        tmp_path, monkeypatch, capsys, first_losses, epoch1_gone):
    """best_model.pt deleted, then `--resume checkpoints/checkpoint_epoch_2.pt` into the same folder, no
    epoch since better: the run ended with no best_model.pt, model.js of its last epoch and "no epoch of
    this run beat the best ... of the run it resumed from, whose best_model.pt is in that run's folder",
    this one, where there was none."""
    from predlab import checkpoint as ck
    from predlab.export import read_params, write_weights
    from predlab.train import SupervisedTrainer, main
    monkeypatch.chdir(tmp_path)
    losses = iter(first_losses)
    monkeypatch.setattr(SupervisedTrainer, "validate", lambda self, data=None: next(losses))
    assert main(["--epochs", "4", *TINY_FLAGS, "--save_every", "2", "--eval_every", "0", "--no-dagger"]) == 0
    d = tmp_path / "checkpoints"
    (d / "best_model.pt").unlink()
    monkeypatch.setattr(SupervisedTrainer, "validate", lambda self, data=None: 0.6)     # no better than epoch 2
    capsys.readouterr()
    assert main(["--resume", "checkpoints/checkpoint_epoch_2.pt", "--epochs", "6"]) == 0
    out = capsys.readouterr().out
    assert "best val MSE 0.40000 at epoch 2" in out and "resumed from, so no best_model.pt" not in out
    assert ("(val MSE 0.30000 at epoch 1) is in no file of this run any more (there is no "
            f"{Path('checkpoints') / 'best_model.pt'}): the best starts again" in out) == epoch1_gone
    saved = ck.load_checkpoint_dict(d / "best_model.pt")
    assert (saved["epoch"], saved["best_epoch"], saved["best_metric"]) == (2, 2, 0.4)
    resumed = ck.load_model(d / "checkpoint_epoch_2.pt")
    assert read_params(d / "model.js") == read_params(write_weights(resumed, tmp_path / "epoch2.js"))


def test_a_resume_of_another_runs_checkpoint_copied_into_the_folder_moves_that_folders_run_aside(
        tmp_path, monkeypatch, capsys):
    """Run A, then run B in the same folder (A's files to previous/), then A's checkpoint_epoch_3.pt copied
    back and resumed there: B's checkpoint_epoch_1.pt and _2.pt were taken for the resumed run's own and
    deleted by its rotation, and B's best_model.pt (another seed's model) was reported and exported as the
    resumed run's best. B's files move to previous/ untouched; the best is A's, from the epoch resumed."""
    import shutil
    from predlab import checkpoint as ck
    from predlab.export import read_params, write_weights
    from predlab.train import SupervisedTrainer, main
    monkeypatch.chdir(tmp_path)
    flags = [*TINY_FLAGS, "--eval_every", "0", "--no-dagger"]
    d = tmp_path / "checkpoints"
    losses = iter([0.5, 0.4, 0.3, 0.2, 0.1])      # A's three epochs, then B's two: B's best beats A's
    monkeypatch.setattr(SupervisedTrainer, "validate", lambda self, data=None: next(losses))
    assert main(["--epochs", "3", *flags]) == 0
    assert main(["--epochs", "2", "--seed", "9", *flags]) == 0
    b_files = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert {"checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "best_model.pt", "model.js"} <= set(b_files)
    [a3] = d.glob("previous/*/checkpoint_epoch_3.pt")
    shutil.copy(a3, d / "checkpoint_epoch_3.pt")
    a = ck.load_checkpoint_dict(a3)
    monkeypatch.setattr(SupervisedTrainer, "validate", lambda self, data=None: 0.35)   # no better than A's epoch 3
    capsys.readouterr()
    assert main(["--resume", "checkpoints/checkpoint_epoch_3.pt", "--epochs", "6"]) == 0
    out = capsys.readouterr().out
    assert "of another run" in out and "best val MSE 0.30000 at epoch 3" in out
    everywhere = [p.read_bytes() for p in d.rglob("*") if p.is_file()]
    lost = [name for name, data in b_files.items() if data not in everywhere]
    assert not lost, f"run B's {lost} are nowhere in {d}"
    best = ck.load_checkpoint_dict(d / "best_model.pt")
    assert (best["epoch"], best["best_epoch"], best["best_metric"]) == (3, 3, 0.3) and best["history"] == a["history"]
    assert read_params(d / "model.js") == read_params(write_weights(ck.load_model(a3), tmp_path / "a3.js"))


def test_the_earlier_runs_model_js_stays_for_the_page_until_the_run_exports(tmp_path, monkeypatch, capsys):
    """A run moved the earlier run's model.js to previous/ at its first write: a page or the demo reading the
    folder found none for the whole run, and none at all after a kill. It stays until the export replaces it
    (kept in previous/ then), and the link to a page's model.js says where it points."""
    from predlab.train import Checkpointer, main
    monkeypatch.chdir(tmp_path)
    d, site = tmp_path / "checkpoints", tmp_path / "site"
    d.mkdir()
    site.mkdir()
    (d / "best_model.pt").write_bytes(b"an earlier run's")
    page = "window.TRANSFORMER_PARAMS = {};  // the page's weights\n"
    (site / "model.js").write_text(page)
    (d / "model.js").symlink_to(Path("..") / "site" / "model.js")
    seen, end = [], Checkpointer.on_epoch_end

    def on_epoch_end(self, trainer, epoch, logs):
        end(self, trainer, epoch, logs)
        seen.append(((d / "model.js").read_text(), (d / "best_model.pt").read_bytes() != b"an earlier run's"))
    monkeypatch.setattr(Checkpointer, "on_epoch_end", on_epoch_end)
    assert main([*BROWSER_SMALL, "--epochs", "2"]) == 0
    assert seen == [(page, True), (page, True)]      # this run's best_model.pt written, the page's model.js there
    out = capsys.readouterr().out
    assert "moved 1 file(s) of an earlier run" in out and "an earlier run's, or edited there" in out
    assert f"browser weights: {d / 'model.js'}, a link to {site / 'model.js'} (and model.json beside it)" in out
    assert [p.read_text() for p in d.glob("previous/*/model.js")] == [page] and (d / "model.js").is_symlink()


@pytest.mark.parametrize("folder, why", [("gone", "in a folder that does not exist"),
                                         ("page", "in a folder where this user cannot write")])
def test_a_model_js_link_the_export_cannot_write_through_is_refused_before_training(tmp_path, monkeypatch, capsys,
                                                                                    folder, why):
    """A link into a missing folder: the run trained to its end, then said "no model.js was written (there was
    none)" about a link it could not write through, and wrote no model.json either. A link to the page's
    model.js in a folder of another user (a web server's): the run trained to its end, then failed its export
    ("cannot write .../.model.js.XXXX.tmp: Permission denied")."""
    from predlab.train import main
    from test_export import _folder_takes_no_files
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    if folder == "page":
        (tmp_path / "page").mkdir()
        (tmp_path / "page" / "model.js").write_text("window.TRANSFORMER_PARAMS = {};\n")
        _folder_takes_no_files(monkeypatch, tmp_path / "page")
    (tmp_path / "checkpoints" / "model.js").symlink_to(tmp_path / folder / "model.js")
    with pytest.raises(SystemExit) as e:
        main(BROWSER_SMALL)      # (sizes the page refuses are not written through a link: not refused)
    assert e.value.code == 2
    assert f"model.js is a link to {tmp_path / folder / 'model.js'}, {why}" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["model.js"]


def test_a_linked_checkpoint_is_not_written_through(tmp_path, monkeypatch):
    """A run resumed in its folder, whose best_model.pt linked to another run's, saved through the link into
    that run's file; a dangling link made the run write into another folder."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main([*SMALL, "--epochs", "1", "--checkpoint_dir", "a"]) == 0
    theirs = (tmp_path / "a" / "best_model.pt").read_bytes()
    assert main([*SMALL, "--epochs", "2", "--save_every", "1", "--checkpoint_dir", "b"]) == 0
    (tmp_path / "b" / "best_model.pt").unlink()
    (tmp_path / "b" / "best_model.pt").symlink_to(Path("..") / "a" / "best_model.pt")
    (tmp_path / "b" / "checkpoint_epoch_3.pt").symlink_to(tmp_path / "elsewhere.pt")      # points at nothing
    monkeypatch.setattr("predlab.train.SupervisedTrainer.validate", lambda self, data=None: 1e-9)   # a new best
    assert main([*SMALL, "--epochs", "3", "--resume", "b/checkpoint_epoch_2.pt"]) == 0
    assert (tmp_path / "a" / "best_model.pt").read_bytes() == theirs
    assert not (tmp_path / "b" / "best_model.pt").is_symlink() and not (tmp_path / "elsewhere.pt").exists()
    assert not (tmp_path / "b" / "checkpoint_epoch_3.pt").is_symlink()
    assert [p.read_bytes() for p in (tmp_path / "b").glob("previous/*/best_model.pt")] == [theirs]


def test_pruning_deletes_only_the_runs_own_checkpoints(tmp_path, monkeypatch):
    """--keep_checkpoints 1 deleted a checkpoint_epoch_1.pt copied into the folder while the run trained."""
    from predlab.train import Checkpointer, main
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "checkpoints"
    save, old = Checkpointer._save_epoch, b"an old checkpoint, put back"

    def save_epoch(self, trainer, epoch):
        if epoch == 2:
            (d / "checkpoint_epoch_1.pt").write_bytes(old)
        save(self, trainer, epoch)
    monkeypatch.setattr(Checkpointer, "_save_epoch", save_epoch)
    assert main([*SMALL, "--epochs", "3", "--save_every", "1", "--keep_checkpoints", "1"]) == 0
    assert (d / "checkpoint_epoch_1.pt").read_bytes() == old
    assert not (d / "checkpoint_epoch_2.pt").exists() and (d / "checkpoint_epoch_3.pt").is_file()


def test_previous_on_another_file_system_takes_the_earlier_runs_files(tmp_path, monkeypatch, capsys):
    """previous/ linked to another disk (to free space): every run failed at its first write with "Invalid
    cross-device link", the rename of the earlier run's files; a copy and a removal do it."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main(SMALL) == 0
    d = tmp_path / "checkpoints"
    before = (d / "best_model.pt").read_bytes()
    _previous_on_another_disk(monkeypatch)
    assert main(SMALL) == 0
    (kept,) = (d / "previous").iterdir()
    assert (kept / "best_model.pt").read_bytes() == before
    assert "Invalid cross-device link" not in capsys.readouterr().err


def test_a_second_run_keeps_the_earlier_runs_files_together_and_model_js_in_place_until_written(
        tmp_path, monkeypatch):
    """The earlier run's checkpoints went to previous/<time>/ and its model.js and model.json to another
    folder, <time>-2, which read as a second earlier run; and the export moved model.js aside before writing
    its own, so a kill between the two left the folder with none."""
    from predlab import export
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "checkpoints"
    assert main([*SMALL, "--epochs", "2"]) == 0
    earlier = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and not p.name.startswith(".")}
    write, seen = export.write_weights, []

    def write_weights(model, path, **kw):
        seen.append(Path(path).read_bytes() == earlier[Path(path).name])      # still the earlier run's file
        return write(model, path, **kw)
    monkeypatch.setattr(export, "write_weights", write_weights)
    assert main([*SMALL, "--epochs", "2", "--seed", "5"]) == 0
    assert seen == [True, True]
    (kept,) = (d / "previous").iterdir()
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == earlier


def test_a_notebooks_rotation_keeps_a_checkpoint_copied_in_during_an_earlier_call(tmp_path):
    """train() again: the end of the first call took every file in the folder for the run's own, so the
    next call's rotation deleted a checkpoint copied in while the first trained."""
    from predlab.train import Callback, Checkpointer
    d = tmp_path / "ck"
    old = b"another run's checkpoint, put back"

    class CopyIn(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 3:
                (d / "checkpoint_epoch_1.pt").write_bytes(old)
    t = _trainer_for(tmp_path, [Checkpointer(d, save_every=2, keep=2), CopyIn()])
    t.train(4)
    assert (d / "checkpoint_epoch_1.pt").read_bytes() == old
    t.train(6)                  # not the run's own: moved aside as another run's, as the next call's first write does
    assert [p.read_bytes() for p in d.glob("previous/*/checkpoint_epoch_1.pt")] == [old]


def test_a_notebook_run_is_not_refused_for_a_model_js_link_it_never_writes(tmp_path):
    """Only the command line's run exports: a notebook's was refused for a model.js link into a folder that
    does not exist yet."""
    from predlab.train import Checkpointer
    d = tmp_path / "ck"
    d.mkdir()
    (d / "model.js").symlink_to(tmp_path / "site-to-be" / "model.js")
    _trainer_for(tmp_path, [Checkpointer(d)]).train(1)
    assert (d / "best_model.pt").is_file() and (d / "model.js").is_symlink()


def test_a_trainer_trained_again_gets_its_best_back_from_previous_on_another_disk(tmp_path, monkeypatch):
    """previous/ on another file system: the copy back from there had a new inode, which made the run's own
    best_model.pt another run's, so train() again left the folder without it."""
    from predlab.train import Checkpointer, main
    _previous_on_another_disk(monkeypatch)
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "checkpoints"
    t = _trainer_for(tmp_path, [Checkpointer(d)])
    t.train(1)
    mine = (d / "best_model.pt").read_bytes()
    assert main(SMALL) == 0                                   # another run in the folder
    t.best_metric = -math.inf                                 # no later epoch beats it
    t.train(2)
    assert (d / "best_model.pt").read_bytes() == mine


def test_moving_to_previous_across_disks_is_all_or_none(tmp_path, monkeypatch):
    """A full disk under the copy of the second file left the first in previous/ and named the file copied,
    not the one that could not be written."""
    import shutil
    from predlab.export import move_to_previous
    files = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for p in files:
        p.write_bytes(p.name.encode())
    copy = shutil.copy2

    def full(src, dst, **kw):
        if Path(src).name == "b.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return copy(src, dst, **kw)
    _previous_on_another_disk(monkeypatch)
    monkeypatch.setattr(shutil, "copy2", full)
    with pytest.raises(OSError) as e:
        move_to_previous(files, tmp_path)
    assert "previous" in Path(e.value.filename).parts and Path(e.value.filename).name == "b.pt"
    assert [p.read_bytes() for p in files] == [b"a.pt", b"b.pt"] and not (tmp_path / "previous").exists()


def _trainer_for(tmp_path, callbacks):
    from test_train import _trainer
    return _trainer(tmp_path, callbacks=callbacks)


def test_an_earlier_model_js_joins_only_the_checkpoints_it_was_exported_from(tmp_path, monkeypatch):
    """A notebook's run (which never exports) left a CLI run's model.js in the folder; the next CLI run filed
    it beside the notebook run's checkpoints, where it read as their export."""
    from predlab import checkpoint as ck
    from predlab.export import read_weights
    from predlab.train import Checkpointer, main
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "checkpoints"
    assert main(SMALL) == 0                                            # a CLI run, with its model.js
    _trainer_for(tmp_path, [Checkpointer(d)]).train(1)                # a notebook's run in the same folder
    assert main([*SMALL, "--seed", "5"]) == 0
    for js in d.glob("previous/*/model.js"):
        best = js.parent / "best_model.pt"
        if best.is_file():
            got, want = read_weights(js).state_dict(), ck.load_model(best).state_dict()
            assert want.keys() == got.keys() and all(torch.equal(got[k], want[k]) for k in want), js


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names the file being written from /proc")
@pytest.mark.parametrize("folder", ["checkpoints", "previous/checkpoints"])
def test_a_full_disk_under_model_json_says_where_the_replaced_model_js_is(tmp_path, monkeypatch, capsys, folder):
    """model.js replaced, then model.json failed: the message did not say where the earlier model.js was kept,
    and in a folder under one named previous/ it said that no model.js was written."""
    from test_train import _full_disk_for
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main([*SMALL, "--checkpoint_dir", folder]) == 0
    _full_disk_for(monkeypatch, "model.json")
    assert main([*SMALL, "--seed", "5", "--checkpoint_dir", folder]) == 1
    err = capsys.readouterr().err
    (kept,) = {p.parent for p in (tmp_path / folder).glob("previous/*/model.js")}
    assert (f"{Path(folder) / 'model.js'} was written (the one it replaced is in {kept.relative_to(tmp_path)}), "
            "model.json was not") in err


def test_a_read_only_model_js_of_the_bytes_a_run_writes_does_not_fail_the_run(tmp_path, monkeypatch, capsys):
    """A read-only model.js holding exactly what the run exports failed the run after all its training (one of
    other bytes was kept and replaced)."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main(SMALL) == 0
    js = tmp_path / "checkpoints" / "model.js"
    before = js.read_bytes()
    js.chmod(0o444)
    assert main(SMALL) == 0                                     # the same run again: the same bytes
    assert js.read_bytes() == before
    # the run's own export, made read-only, and a resume in place with a better epoch: kept, then replaced
    assert main([*SMALL, "--epochs", "2", "--save_every", "1"]) == 0
    js.chmod(0o444)
    own = js.read_bytes()
    monkeypatch.setattr("predlab.train.SupervisedTrainer.validate", lambda self, data=None: 1e-9)
    capsys.readouterr()
    assert main(["--resume", "checkpoints/checkpoint_epoch_2.pt", "--epochs", "3"]) == 0
    assert js.read_bytes() != own
    assert own in [p.read_bytes() for p in js.parent.glob("previous/*/model.js")]
    out = capsys.readouterr().out
    assert "this run's own export, made read-only since" in out and "not this run's to replace" not in out


def test_an_empty_model_js_made_ready_for_the_export_is_written(tmp_path, monkeypatch):
    """An empty model.js (a placeholder, a page's file made ready) was taken for one already holding the run's
    bytes and left empty, while model.json got the model and the run said both were written."""
    from predlab.export import read_weights
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "checkpoints"
    d.mkdir()
    (d / "model.js").write_text("")
    assert main(SMALL) == 0
    assert read_weights(d / "model.js").state_dict().keys() == read_weights(d / "model.json").state_dict().keys()
    assert (d / "model.js").stat().st_size > 0


def test_a_resumed_runs_export_of_its_last_epoch_joins_its_checkpoints(tmp_path, monkeypatch):
    """A run resumed into another folder that never beat its best exports its last epoch and writes no
    best_model.pt; the next run there filed its model.js apart from its checkpoints, as another run's."""
    from predlab.train import SupervisedTrainer, main
    monkeypatch.chdir(tmp_path)
    assert main([*SMALL, "--epochs", "2", "--save_every", "1", "--checkpoint_dir", "a"]) == 0
    with monkeypatch.context() as m:
        m.setattr(SupervisedTrainer, "validate", lambda self, data=None: 1.0)       # never beats the best
        assert main(["--resume", "a/checkpoint_epoch_2.pt", "--checkpoint_dir", "b", "--epochs", "3"]) == 0
    assert not (tmp_path / "b" / "best_model.pt").exists()
    assert main([*SMALL, "--seed", "5", "--checkpoint_dir", "b"]) == 0
    (kept,) = (tmp_path / "b" / "previous").iterdir()
    assert {"checkpoint_epoch_3.pt", "model.js", "model.json"} <= {p.name for p in kept.iterdir()}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names the file being written from /proc")
def test_a_full_disk_under_model_json_does_not_say_a_model_js_left_as_it_was_was_written(tmp_path, monkeypatch,
                                                                                          capsys):
    """model.js already held the run's bytes (not written again) and model.json, edited, failed: the message
    said model.js was written."""
    from test_train import _full_disk_for
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    assert main(SMALL) == 0
    d = tmp_path / "checkpoints"
    (d / "model.json").write_text((d / "model.json").read_text() + " ")
    _full_disk_for(monkeypatch, "model.json")
    assert main(SMALL) == 1
    err = capsys.readouterr().err
    assert f"{Path('checkpoints') / 'model.js'} holds this run's model, model.json was not" in err


def _previous_on_another_disk(monkeypatch):
    """A rename into or out of a previous/ folder fails as across file systems ("Invalid cross-device link")."""
    from pathlib import PosixPath
    rename = PosixPath.rename

    def across(self, target):
        if "previous" in Path(target).parts or "previous" in Path(self).parts:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(self), None, str(target))
        return rename(self, target)
    monkeypatch.setattr(PosixPath, "rename", across)


def test_a_copy_into_previous_cut_by_a_kill_is_removed_by_the_next_run(tmp_path, monkeypatch, capsys):
    """A kill during a copy into previous/ (an export keeping the earlier model.js, a checkpoint moved across
    disks) left a hidden cut file there for good: the next run looked only in the folder itself, and only for
    atomic_write's names."""
    import re
    import shutil
    import time
    from predlab.export import move_to_previous
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "checkpoints"
    d.mkdir()
    (d / "model.js").write_text("an earlier export")
    seen = []

    def full(src, dst, **kw):
        seen.append(Path(dst).name)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
    with monkeypatch.context() as m:
        m.setattr(shutil, "copy2", full)
        with pytest.raises(OSError):
            move_to_previous([d / "model.js"], d, copy=True)
    assert re.fullmatch(r"\.model\.js\.[A-Za-z0-9_]{8}\.tmp", seen[0])       # what a kill there would leave
    kept = d / "previous" / "20260101-000000"
    kept.mkdir(parents=True)
    (kept / "best_model.pt").write_bytes(b"an earlier run's")
    (kept / seen[0]).write_bytes(b"x" * 1000)
    old = time.time() - 3600
    os.utime(kept / seen[0], (old, old))
    assert main(SMALL) == 0
    assert f"left in checkpoints: {Path('previous') / kept.name / seen[0]}" in capsys.readouterr().out
    assert sorted(p.name for p in kept.iterdir()) == ["best_model.pt"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names the file being written from /proc")
def test_an_empty_read_only_model_js_and_a_read_only_model_json_are_said_right(tmp_path, monkeypatch, capsys):
    """An empty read-only model.js failed the run after its training (a placeholder holds nothing to keep); a
    read-only model.json's failure said that no model.js was written, when it had been."""
    from predlab.export import read_weights
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "checkpoints"
    d.mkdir()
    (d / "model.js").write_text("")
    (d / "model.js").chmod(0o444)
    assert main(SMALL) == 0
    assert read_weights(d / "model.js").state_dict().keys() == read_weights(d / "model.json").state_dict().keys()
    from predlab import export
    write = export.write_weights

    def refused(model, path, **kw):         # an error that names no file, as write_weights' refusals were
        if Path(path).name == "model.json":
            raise PermissionError(f"{path} is read-only; predlab will not replace it")
        return write(model, path, **kw)
    monkeypatch.setattr(export, "write_weights", refused)
    capsys.readouterr()
    assert main([*SMALL, "--seed", "5"]) == 1
    err = capsys.readouterr().err
    assert f"{Path('checkpoints') / 'model.js'} was written" in err and "no model.js was written" not in err


def test_a_check_across_flags_names_them_as_flags_and_on_a_resume_which_are_the_checkpoints(tmp_path, monkeypatch,
                                                                                            capsys):
    """"select_best_by catch_ratio needs eval_every > 0" named no flag, and on a resume of a catch-ratio run
    with --eval_every 0 given it blamed the checkpoint's run settings for the flag the user typed."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)

    def refused(argv):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]
    assert refused(["--select_best_by", "catch_ratio", "--eval_every", "0"]).endswith(
        "error: --select_best_by catch_ratio needs --eval_every > 0")
    assert "error: --weight_decay 10 x --learning_rate 0.1 must be below 1" in \
        refused(["--weight_decay", "10", "--learning_rate", "0.1"])
    assert main([*SMALL, "--epochs", "1", "--eval_every", "1", "--select_best_by", "catch_ratio"]) == 0
    capsys.readouterr()
    last = str(Path("checkpoints") / "checkpoint_epoch_1.pt")
    assert refused(["--resume", last, "--epochs", "2", "--eval_every", "0"]).endswith(
        "--select_best_by catch_ratio needs --eval_every > 0 (--select_best_by is the checkpoint's run setting: give "
        "it to change it)")
    assert main(["--resume", last, "--epochs", "2", "--eval_every", "0", "--select_best_by", "val_loss",
                 "--quiet"]) == 0


class _ClosedAt(io.StringIO):
    """A stdout whose reader goes (`| head`) at the first line holding `text`: every write from then on
    raises BrokenPipeError, as a closed pipe's do."""

    def __init__(self, text: str):
        super().__init__()
        self.text, self.gone = text, False

    def write(self, s):
        if self.gone or self.text in s:
            self.gone = True
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        return super().write(s)


def test_a_closed_stdout_saves_the_last_whole_epoch_when_that_is_the_runs_first_write(tmp_path, monkeypatch, capsys):
    """The save's first write moves an earlier run's files to previous/ and says so: on the closed stdout that
    line raised BrokenPipeError before the file was written, and the last whole epoch was lost."""
    from predlab import train

    monkeypatch.chdir(tmp_path)
    assert train.main([*SMALL, "--eval_every", "0"]) == 0                 # an earlier run's files in checkpoints/
    monkeypatch.setattr("sys.stdout", _ClosedAt("epoch    3"))
    # no best before epoch 5 (the catch ratio is measured then), no save_every: the cut's save is the first write
    assert train.main([*SMALL[2:], "--epochs", "4", "--save_every", "5", "--select_best_by", "catch_ratio",
                       "--eval_every", "5", "--eval_episodes", "2", "--eval_frames", "10"]) == 141
    assert (tmp_path / "checkpoints" / "checkpoint_epoch_2.pt").is_file()
    assert "checkpoint_epoch_2.pt holds the last whole epoch: --resume it to go on" in capsys.readouterr().err


def test_a_ctrl_c_during_a_closed_stdouts_last_save_says_where_to_go_on(tmp_path, monkeypatch, capsys):
    """A Ctrl-C held through the last whole epoch's save (stdout closed) said on the closed stdout that the run
    was interrupted: the BrokenPipeError that raised left as "before training began: nothing was written"."""
    import signal
    from predlab import train

    monkeypatch.chdir(tmp_path)
    real = train.Checkpointer._save_epoch

    def save(self, trainer, epoch):
        os.kill(os.getpid(), signal.SIGINT)      # held till the file is whole
        real(self, trainer, epoch)
    monkeypatch.setattr(train.Checkpointer, "_save_epoch", save)
    monkeypatch.setattr("sys.stdout", _ClosedAt("epoch    3"))
    assert train.main([*SMALL[2:], "--epochs", "4", "--save_every", "5"]) == 130
    assert (tmp_path / "checkpoints" / "checkpoint_epoch_2.pt").is_file()
    err = capsys.readouterr().err
    assert "nothing was written" not in err and "checkpoint_epoch_2.pt holds the last whole epoch" in err


@pytest.mark.parametrize("at", ["stopped after", "browser weights"])
def test_a_ctrl_c_run_whose_stdout_closes_at_the_exports_lines_keeps_its_code_and_warnings(tmp_path, monkeypatch,
                                                                                           capsys, at):
    """A closed stdout at the export's summary line of a run stopped by a Ctrl-C: the exit code was 141, not
    130, and the export's warnings on stderr (printed after that line) were lost."""
    import signal
    from predlab import train

    monkeypatch.chdir(tmp_path)
    real = train.Checkpointer._save_epoch

    def save(self, trainer, epoch):
        os.kill(os.getpid(), signal.SIGINT)
        real(self, trainer, epoch)
    monkeypatch.setattr(train.Checkpointer, "_save_epoch", save)
    monkeypatch.setattr("sys.stdout", _ClosedAt(at))
    assert train.main([*SMALL[2:], "--epochs", "4", "--save_every", "5"]) == 130
    assert (tmp_path / "checkpoints" / "model.js").is_file() and (tmp_path / "checkpoints" / "model.json").is_file()
    assert "the stock browser page accepts only" in capsys.readouterr().err


def test_a_closed_stdout_before_training_says_nothing_was_written(tmp_path, monkeypatch, capsys):
    """A closed stdout at _run's "model: ... parameters" line said "as the run ended: the files written are
    whole", of a run that never trained."""
    from predlab import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdout", _ClosedAt("parameters;"))
    assert train.main([*SMALL[2:], "--epochs", "2"]) == 141
    assert "before training began: nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


def test_a_resume_file_removed_after_the_checks_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    """Branching from a run still training (`--resume ck/checkpoint_epoch_10.pt --checkpoint_dir ft`): its
    rotation removed the file while the validation episodes were made, and the load's FileNotFoundError
    ended in a traceback."""
    from predlab import train
    monkeypatch.chdir(tmp_path)
    assert train.main([*SMALL, "--checkpoint_dir", "run"]) == 0
    capsys.readouterr()
    real = train.create_trainer

    def made_then_removed(*a, **kw):
        trainer = real(*a, **kw)
        (tmp_path / "run" / "checkpoint_epoch_1.pt").unlink()
        return trainer
    monkeypatch.setattr(train, "create_trainer", made_then_removed)
    with pytest.raises(SystemExit) as exit_:
        train.main([*SMALL[:-8], "--epochs", "2", "--resume", "run/checkpoint_epoch_1.pt", "--checkpoint_dir", "ft"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--resume: " in err and "checkpoint_epoch_1.pt" in err and "Traceback" not in err
    assert "another run's --keep_checkpoints may have removed it" in err
    assert not (tmp_path / "ft" / "model.js").exists()


def test_a_worker_killed_mid_run_saves_the_last_whole_epoch_and_exports(tmp_path, monkeypatch, capsys):
    """A worker killed (out of memory) ended the run in two tracebacks, without the last whole epoch's
    checkpoint or the export, as a Ctrl-C, a SIGTERM or a divergence have."""
    from predlab import checkpoint as ck
    from predlab import train
    from predlab.data import EpisodeGenerator, WorkerError
    monkeypatch.chdir(tmp_path)
    real, calls = EpisodeGenerator.generate, []

    def dies_in_epoch_3(self, *a, **kw):
        calls.append(1)
        if len(calls) == 4:           # validation, epochs 1 and 2, then epoch 3's episodes
            raise WorkerError("1 worker process(es) of the episode generator ended while generating (exit code -9).")
        return real(self, *a, **kw)
    monkeypatch.setattr(EpisodeGenerator, "generate", dies_in_epoch_3)
    assert train.main([*SMALL[:2], "--epochs", "4", *SMALL[2:], "--save_every", "5"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "error in epoch 3: 1 worker process(es) of the episode generator ended while generating (exit code -9). " \
           "The checkpoints saved so far are intact" in err
    d = tmp_path / "checkpoints"
    assert (d / "checkpoint_epoch_2.pt").exists() and (d / "model.js").exists()
    assert ck.load_checkpoint_dict(d / "checkpoint_epoch_2.pt")["epoch"] == 2


def test_a_worker_killed_while_the_validation_episodes_are_made_is_one_line(tmp_path, monkeypatch, capsys):
    from predlab import train
    from predlab.data import EpisodeGenerator, WorkerError

    def dies(self, *a, **kw):
        raise WorkerError("1 worker process(es) of the episode generator ended while generating (exit code -9).")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(EpisodeGenerator, "generate", dies)
    assert train.main(SMALL) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error before training began: 1 worker process(es)")
    assert not (tmp_path / "checkpoints" / "model.js").exists()


def test_a_resume_on_other_threads_or_split_says_how_to_go_on_bit_for_bit(tmp_path, monkeypatch, capsys):
    """A run trained with --threads 1 resumed plainly ran on torch's default threads: its weights
    parted from the uninterrupted run's at once, though the README promised bit for bit, and
    nothing said why (threads and the split are the machine's settings, not the checkpoint's).
    Where the resume's sums are the run's, nothing is said."""
    from predlab import train as tr
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tr, "usable_cpus", lambda: 2)
    threads = torch.get_num_threads()
    try:
        assert tr.main([*TINY_FLAGS, "--epochs", "1", "--threads", "1", "--cpu_split", "1", "--eval_every", "0"]) == 0
        capsys.readouterr()
        torch.set_num_threads(2)             # (the run set 1): torch's default on this resume's machine
        resume = ["--resume", "checkpoints/checkpoint_epoch_1.pt", "--epochs", "2"]
        tr.parse_args(resume)
        said = capsys.readouterr().err
        assert ("note: the run trained on 1 thread(s) (--threads 1), this resume on 2: give --threads 1 to go on bit "
                "for bit" in said)
        assert "note: the run split its batches by --cpu_split 1, this resume by auto: give --cpu_split 1" in said
        tr.parse_args([*resume, "--threads", "1", "--cpu_split", "1"])
        assert "bit for bit" not in capsys.readouterr().err
        tr.parse_args([*resume, "--device", "cpu", "--threads", "2", "--cpu_split", "2"])     # asked for: no note
        assert "bit for bit" not in capsys.readouterr().err
        torch.set_num_threads(1)           # the resume's sums are the run's: nothing to say
        tr.parse_args([*resume, "--cpu_split", "1"])
        assert "bit for bit" not in capsys.readouterr().err
        # a run of more threads than this machine has: --threads would be capped, so it says what can be had
        ck = torch.load("checkpoints/checkpoint_epoch_1.pt", weights_only=True)
        ck["train_config"].update(threads=4, cpu_split=0)
        ck["cpu_threads"] = 4                # as the 4-core machine recorded it
        torch.save(ck, "four.pt")
        tr.parse_args(["--resume", "four.pt", "--epochs", "2"])
        said = capsys.readouterr().err
        assert ("the run trained on 4 threads, more than this machine's 2 CPU(s): it goes on in other sums, not bit "
                "for bit; its auto split made up to 4 parts a batch (--cpu_split 4 makes 4)") in said
        assert "give --threads 4" not in said
    finally:
        torch.set_num_threads(threads)


def test_a_run_on_torchs_default_threads_resumed_on_other_cores_says_how_to_go_on_bit_for_bit(tmp_path, monkeypatch,
                                                                                               capsys):
    """A run on torch's default threads recorded --threads 0, so a resume on a machine of other cores parted
    from the uninterrupted run in the last bits without a word. A CPU run's checkpoint records the threads its
    sums were made with; on the same machine nothing is said."""
    from predlab import train as tr
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tr, "usable_cpus", lambda: 2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)             # torch's default on the run's one-core machine
        assert tr.main([*TINY_FLAGS, "--epochs", "1", "--eval_every", "0"]) == 0
        capsys.readouterr()
        ck = torch.load("checkpoints/checkpoint_epoch_1.pt", weights_only=True)
        assert ck["train_config"]["threads"] == 0 and ck["cpu_threads"] == 1
        resume = ["--resume", "checkpoints/checkpoint_epoch_1.pt", "--epochs", "2"]
        tr.parse_args(resume)               # the same machine
        assert "bit for bit" not in capsys.readouterr().err
        torch.set_num_threads(2)             # a two-core machine's default
        tr.parse_args(resume)
        assert ("note: the run trained on 1 thread(s) (--threads 1), this resume on 2: give --threads 1 to go on bit "
                "for bit") in capsys.readouterr().err
        tr.parse_args([*resume, "--threads", "1"])
        assert "bit for bit" not in capsys.readouterr().err
        for bad in (0, -3, 1.5, "2", True):
            ck["cpu_threads"] = bad
            torch.save(ck, "bad.pt")
            with pytest.raises(SystemExit) as e:
                tr.parse_args(["--resume", "bad.pt", "--epochs", "2"])
            err = capsys.readouterr().err
            assert e.value.code == 2 and "'cpu_threads' must be a number of threads >= 1" in err, (bad, err)
    finally:
        torch.set_num_threads(threads)


def test_a_tf32_run_resumed_on_a_gpu_without_the_flag_is_told(monkeypatch):
    """--tf32 is the machine's setting, not taken from the checkpoint: a resume without it went on in full
    float32 products, other numerics than the run's, with no word."""
    from predlab import train as tr
    monkeypatch.setattr(tr, "resolve_device", lambda device: torch.device("cuda"))
    ns = {"device": "cuda", "threads": 0, "cpu_split": 0, "batch_size": 256}
    told = tr._machine_notes({"tf32": True}, ns, given=set())
    assert told == [("note: the run trained with --tf32 (TF32 matrix products), this resume without: give --tf32 "
                     "to go on as it trained", True)]
    assert tr._machine_notes({"tf32": True}, ns, given={"tf32"}) == []
    assert tr._machine_notes({"tf32": False}, ns, given=set()) == []



def test_a_cpu_run_given_tf32_records_none_and_a_gpu_run_resumed_on_the_cpu_is_told(tmp_path, monkeypatch, capsys):
    """--tf32 on a CPU makes no TF32 products, but the checkpoint recorded it as given: a resume on a GPU was told
    to give --tf32 "to go on as it trained". A GPU run resumed on the CPU was advised the --threads of a run
    whose sums were a GPU's."""
    from predlab import train as tr
    monkeypatch.chdir(tmp_path)
    assert tr.main([*SMALL, "--tf32"]) == 0
    ck = torch.load("checkpoints/checkpoint_epoch_1.pt", weights_only=True)
    assert ck["train_config"]["tf32"] is False
    ns = {"device": "cpu", "threads": 0, "cpu_split": 0, "batch_size": 256}
    told = tr._machine_notes({"threads": 1}, ns, given=set(), gpu_run=True)
    assert told == [("note: the run trained on a CUDA GPU; on the CPU it goes on in other sums, not bit for bit",
                     True)]
    ck["rng"]["cuda"] = [ck["rng"]["torch"]]          # as a GPU run saves it
    ck.pop("cpu_threads")
    torch.save(ck, "gpu.pt")
    capsys.readouterr()
    tr.parse_args(["--resume", "gpu.pt", "--epochs", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert "the run trained on a CUDA GPU" in err and "give --threads" not in err


def test_a_size_experiment_over_a_link_to_a_missing_folder_trains(tmp_path, monkeypatch, capsys):
    """The start-up check refused a run of other sizes for a model.js link whose folder was gone ("the run's
    export writes through it"), though such a run's export no longer writes through a link."""
    from predlab.train import main
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "model.js").symlink_to(tmp_path / "gone" / "model.js")
    assert main(SMALL) == 0
    assert "model.js links to" in capsys.readouterr().err and (tmp_path / "checkpoints" / "model.json").is_file()
    assert not (tmp_path / "gone").exists()


def test_a_notebook_trainer_asked_for_more_threads_than_the_machine_resumes_plainly_without_a_note(
        tmp_path, monkeypatch, capsys):
    """create_trainer(threads=4) on 2 CPUs trains on 2 and records threads 4: a plain resume on the same machine,
    which goes on bit for bit, was told it could not, and to give --cpu_split 4, which would change the sums."""
    from predlab import train as tr
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tr, "usable_cpus", lambda: 2)
    threads = torch.get_num_threads()
    try:
        with pytest.warns(UserWarning):
            t = tr.create_trainer(threads=4, train_episodes=6, val_episodes=3, frames=12, boids_max=12,
                                  batch_size=32, eval_every=0, dagger=False, verbose=False, checkpoint_dir="ck")
        t.train(1)
        path = t.save_checkpoint(tmp_path / "ck" / "checkpoint_epoch_1.pt")
        ck = torch.load(path, weights_only=True)
        assert (ck["train_config"]["threads"], ck["cpu_threads"]) == (4, 2)
        tr.parse_args(["--resume", str(path), "--epochs", "2"])
        assert "note: the run trained on" not in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
