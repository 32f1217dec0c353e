"""Closed-loop evaluation: seeded episodes shared by every policy, figures, file formats, the CLI."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import subprocess
import sys

import pytest
import torch

from predlab.config import WorldConfig, resolve_device
from predlab.data import SampleSet
from predlab.evaluate import (ModelPolicy, NonFiniteActions, RandomPolicy, Rollout, catch_ratio, catch_ratio_interval,
                              compare, episodes_world, format_table, load_policy, main, plan_chunks, rollout)
from predlab.export import write_weights
from predlab.model import TransformerPredator
from predlab.train import SupervisedTrainer
from conftest import save_model_file

# small canvases and flocks: catches within a short horizon, so the tests stay fast
WC = WorldConfig(width_max=640, height_max=480, boids_max=20)
KW = dict(episodes=16, frames=150, seed=0, world_config=WC)


@pytest.fixture(scope="module")
def teacher_run():
    return rollout("teacher", **KW)


def test_teacher_beats_random_on_the_same_episodes(teacher_run):
    rnd = rollout("random", **KW)
    assert torch.equal(rnd.n_start, teacher_run.n_start)  # same starting episodes
    t, r = teacher_run.summary(), rnd.summary()
    assert t["catches"] > 0
    assert t["catches"] > r["catches"]
    assert t["first_catch_frames"] < r["first_catch_frames"]
    assert catch_ratio(rnd, teacher_run) < 1


def test_teacher_against_itself_is_ratio_one(teacher_run):
    res = compare("teacher", teacher=teacher_run, baselines=False, **KW)
    assert res["catch_ratio"] == 1.0


def test_the_table_says_when_there_is_no_ratio(teacher_run):
    from predlab.evaluate import format_table
    table = format_table(compare("teacher", teacher=teacher_run, **KW))
    assert "no ratio" not in table and table.splitlines()[3].endswith("1.000")
    kw = {**KW, "frames": 2}                   # too short for any catch
    table = format_table(compare("random", **kw))
    teacher_row = next(line for line in table.splitlines() if line.startswith("teacher"))
    assert teacher_row.endswith("nan") and "the teacher caught no boid" in table
    # a --json file read back (NaN written as null) prints the same table; it was a TypeError
    from predlab.config import strict_json
    back = json.loads(json.dumps(strict_json(compare("random", **kw)), allow_nan=False))
    assert back["catch_ratio"] is None and format_table(back) == table


def test_a_share_too_small_for_its_digits_is_not_shown_as_none(teacher_run):
    """1 episode in 3,000 with a catch showed "0.0%" of episodes with a catch, beside their 36 catches."""
    res = compare("teacher", teacher=teacher_run, baselines=False, **KW)
    res["policy"].update(first_catch_rate=1 / 3000, flock_caught=1e-5)
    res["teacher"].update(first_catch_rate=0.0, flock_caught=0.5)
    policy, teacher = (next(line for line in format_table(res).splitlines() if line.startswith(who)).split()
                       for who in ("policy", "teacher"))
    assert policy[3:5] == ["<0.1%", "<0.01%"] and teacher[3:5] == ["0.0%", "50.00%"]


def test_a_command_with_its_stdout_closed_runs_to_its_end():
    """`python -m predlab.evaluate ... >&-`: Python makes a closed stream None, and the tool's flush after its work
    ended in an AttributeError traceback and exit code 1 (every predlab command flushed so)."""
    r = subprocess.run(["bash", "-c", f"'{sys.executable}' -m predlab.evaluate teacher --episodes 1 --frames 5 >&-"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_the_tables_advice_names_what_the_caller_raises(teacher_run):
    """Notebook 03 prints the table under a compare() call: its advice said "more --episodes", a flag of
    the command line, where the notebook's user raises episodes= in the call."""
    from predlab.evaluate import format_table
    student, teacher = _catches([2, 1, 0, 3] * 4), _catches([2, 1, 0, 3] * 3 + [2, 2, 1, 3])
    caught = {"catch_ratio": catch_ratio(student, teacher),
              "catch_ratio_interval": catch_ratio_interval(student, teacher), "episodes": 16, "frames": 300,
              "seed": 0, "policy": student.summary(), "teacher": teacher.summary()}
    none = compare("random", **{**KW, "frames": 2})
    # two episodes differ: too few for an interval, and the advice
    assert "use more --episodes" in format_table(caught) and "(--episodes, --frames)" in format_table(none)
    said = [format_table(r, episodes="episodes=", frames="frames=") for r in (caught, none)]
    assert "use more episodes=" in said[0] and "(episodes=, frames=)" in said[1]
    assert not any("--" in t for t in said), said


def test_figures_are_consistent(teacher_run):
    s = teacher_run.summary()
    assert s["catches_per_1k"] == pytest.approx(1000 * s["catches"] / (16 * 150))
    assert 0 < s["first_catch_rate"] <= 1 and 0 < s["flock_caught"] <= 1
    assert s["first_catch_frames"] <= 150  # episodes without a catch count as the horizon
    assert (teacher_run.catches <= teacher_run.n_start).all()


def test_same_seed_same_numbers_other_seed_other_episodes(model):
    a = rollout(model, episodes=8, frames=40, seed=3, world_config=WC)
    b = rollout(model, episodes=8, frames=40, seed=3, world_config=WC)
    assert torch.equal(a.catches, b.catches) and torch.equal(a.first_catch, b.first_catch)
    w3, w4 = episodes_world(8, 3, WC), episodes_world(8, 4, WC)
    assert not torch.equal(w3.size, w4.size)


def test_model_policy_matches_a_plain_forward(model):
    world = episodes_world(64, 1)
    for _ in range(3):
        world.step(torch.zeros(64, 2))
    world.alive[::3, ::2] = False        # ragged flocks, dead slots in the middle
    world.alive[5] = False               # one env with no boid left
    obs = world.observe()
    got = ModelPolicy(model, chunk=7)(obs)                          # sorted, compacted, chunked
    with torch.no_grad():
        want = model(obs)
    live = obs["mask"].any(1)
    torch.testing.assert_close(got[live], want[live], atol=1e-5, rtol=0)
    assert torch.equal(got[5], torch.zeros(2))


@pytest.fixture
def two_threads(monkeypatch):
    """Two torch threads, on two CPUs: on one (taskset -c 0), chunks ran on the main thread, one after the other."""
    import predlab.evaluate
    monkeypatch.setattr(predlab.evaluate, "usable_cpus", lambda: 2)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def ragged_observation(envs: int, seed: int = 1):
    world = episodes_world(envs, seed)
    world.step(torch.zeros(envs, 2))
    world.alive[::3, ::2] = False
    world.alive[5] = False
    return world.observe()


def test_model_policy_runs_each_chunk_on_one_thread_side_by_side(model, two_threads, monkeypatch):
    """A forward on 2 threads costs ~2 ms whatever its size (OMP_WAIT_POLICY=PASSIVE): more than a
    DAgger frame's smaller flocks. Each chunk is a forward on one thread, chunks side by side."""
    import threading
    forward, seen = model.forward, []

    def spy(batch):
        seen.append((torch.get_num_threads(), threading.current_thread().name, batch["mask"].shape))
        return forward(batch)
    monkeypatch.setattr(model, "forward", spy)
    obs = ragged_observation(96)
    got = ModelPolicy(model)(obs)
    assert len(seen) > 1 and {threads for threads, _, _ in seen} == {1}
    assert all(name.startswith("predlab-split") for _, name, _ in seen)
    widths = sorted(shape[1] for _, _, shape in seen)
    assert widths[0] < widths[-1]                          # the smaller flocks are not padded to the widest
    with torch.no_grad():
        want = forward(obs)
    live = obs["mask"].any(1)
    torch.testing.assert_close(got[live], want[live], atol=1e-5, rtol=0)


def test_model_policy_gives_the_same_bits_on_any_number_of_threads(model, two_threads):
    """A DAgger run or an evaluation on a laptop of 8 threads drives the same episodes as on 2 or 1."""
    obs = ragged_observation(300)
    at_two = ModelPolicy(model)(obs)
    torch.set_num_threads(1)
    assert torch.equal(ModelPolicy(model)(obs), at_two)


def test_an_error_in_a_chunk_reaches_the_caller_and_the_model_trains_again(model, two_threads, monkeypatch):
    def broken(batch):
        raise RuntimeError("out of memory in chunk")
    model.train()
    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(RuntimeError, match="out of memory in chunk"):
        ModelPolicy(model)(ragged_observation(64))
    assert model.training


@pytest.mark.parametrize("counts, max_envs, max_tokens", [
    ([5] * 40, 256, 16384),                                # one width: one chunk
    ([1, 1, 2, 50, 50], 256, 16384),
    (list(range(1, 51)) * 2, 256, 16384),
    ([50] * 600, 256, 16384),                              # past max_envs
    ([300] * 100, 256, 16384),                             # past max_tokens
    ([1] * 7, 3, 16384)])
def test_plan_chunks_covers_every_env_once_within_the_limits(counts, max_envs, max_tokens):
    counts = sorted(counts)
    chunks = plan_chunks(counts, max_envs, max_tokens)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(counts)
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    for lo, hi in chunks:
        assert 0 < hi - lo <= max_envs and (hi - lo) * (counts[hi - 1] + 3) <= max_tokens
    if len(set(counts)) == 1:                              # one width: as few chunks as the limits allow
        n, T = len(counts), counts[0] + 3
        assert len(chunks) == max(math.ceil(n / max_envs), math.ceil(n * T / max_tokens))


def test_plan_chunks_pads_small_flocks_less_but_keeps_few_forwards():
    spread = sorted(list(range(1, 51)) * 2)               # a DAgger frame: 100 flocks of 1 to 50 boids
    chunks = plan_chunks(spread)
    padded = sum((hi - lo) * (spread[hi - 1] + 3) for lo, hi in chunks)
    assert 2 <= len(chunks) <= 8
    assert padded < 0.75 * len(spread) * 53                # one chunk padded to 50 boids
    assert plan_chunks([7] * 100) == [(0, 100)]
    assert plan_chunks([1] * 10 + [2] * 10) == [(0, 20)]  # a forward costs more than a boid's padding
    assert len(plan_chunks([50] * 100)) >= 2              # a frame of large flocks still runs side by side


def test_cpu_evaluation_steps_in_the_kernels_and_catches_as_the_torch_world_does(model, monkeypatch):
    """On a CPU the episodes step in predlab.fastsim's kernels, as training episodes are generated (World.step
    took 6.8 s of a 500-episode teacher rollout, the kernels 0.7). Over a short horizon on small flocks the
    two worlds have not parted yet: the same catches, frame for frame."""
    from predlab import evaluate
    from predlab.sim import World
    kw = dict(episodes=16, frames=150, seed=0, world_config=WC)
    step = World.step

    def no_world_steps(self, action):
        raise AssertionError("World.step ran on the CPU")
    monkeypatch.setattr(World, "step", no_world_steps)
    kernels = [rollout(policy, **kw) for policy in ("teacher", model, "random")]
    monkeypatch.setattr(World, "step", step)
    monkeypatch.setattr(evaluate, "fastsim", None)                 # without numba: the torch World
    torch_world = [rollout(policy, **kw) for policy in ("teacher", model, "random")]
    for a, b in zip(kernels, torch_world):
        assert torch.equal(a.catches, b.catches) and torch.equal(a.first_catch, b.first_catch)
    assert kernels[0].catches.sum() > 0


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "torch-world"])
def test_a_rollout_stops_calling_the_policy_once_every_flock_is_caught(kernels, monkeypatch):
    """rollout(frames=10**6) stepped on for minutes after the last boid was caught. Now it stops, with
    the same figures as a horizon that ends soon after the last catch."""
    from predlab import evaluate
    from predlab.teacher import closest_pursuit
    if not kernels:
        monkeypatch.setattr(evaluate, "fastsim", None)
    small = WorldConfig(width_min=64, width_max=64, height_min=64, height_max=64, boids_min=1, boids_max=3)
    calls = []

    def counted_teacher(obs):
        calls.append(1)
        return closest_pursuit(obs["boids"], obs["mask"])
    long = rollout(counted_teacher, episodes=6, frames=100_000, world_config=small)
    assert bool((long.catches == long.n_start).all())               # every flock caught...
    assert len(calls) < 1000                                        # ...and the policy no longer called
    short = rollout("teacher", episodes=6, frames=len(calls) + 8, world_config=small)
    assert torch.equal(long.catches, short.catches) and torch.equal(long.first_catch, short.first_catch)
    assert long.summary()["frames"] == 100_000


def test_checkpoint_and_model_js_give_identical_figures(model, tmp_path):
    trainer = SupervisedTrainer(model, SampleSet.empty(), SampleSet.empty(), device="cpu")
    pt = trainer.save_checkpoint(tmp_path / "m.pt")
    js = write_weights(model, tmp_path / "model.js")
    p_pt, p_js = load_policy(pt), load_policy(js)
    obs = episodes_world(32, 0, WC).observe()
    assert torch.equal(p_pt(obs), p_js(obs))  # the same float32 weights, bit for bit
    a = compare(pt, baselines=False, episodes=8, frames=60, world_config=WC)
    b = compare(js, baselines=False, episodes=8, frames=60, world_config=WC)
    for k in ("catches", "first_catch_frames", "flock_caught"):
        assert a["policy"][k] == b["policy"][k]


def test_cli_writes_json_with_catch_ratio(tmp_path):
    out = tmp_path / "res.json"
    r = subprocess.run([sys.executable, "-m", "predlab.evaluate", "teacher", "--episodes", "8", "--frames", "30",
                        "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert "catch_ratio" in res and {"policy", "teacher", "random"} <= set(res)
    assert "catches/1k" in r.stdout and "teacher" in r.stdout


def test_cli_json_replaces_only_figures_of_its_own(tmp_path, capsys, monkeypatch):
    """--json replaced any file that parsed as JSON: a notebook, a package.json, the bench's figures."""
    from predlab import evaluate
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(evaluate, "compare", lambda *a, **k: pytest.fail("evaluated before the output was checked"))
    kept = {"nb.ipynb": '{"cells": [], "nbformat": 4}', "package.json": '{"name": "boids"}',
            "bench.json": '{"machine": {"cpu_count": 2}, "train": []}'}
    for name, text in kept.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit) as e:
            evaluate.main(["teacher", "--json", name])
        assert e.value.code == 2
        assert f"{name} exists and is not a file of predlab.evaluate's figures" in capsys.readouterr().err
        assert (tmp_path / name).read_text() == text
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "old.json").write_text('{"catch_ratio": 0.5, "episodes": 7}')     # an earlier evaluation's
    assert evaluate.main(["teacher", "--episodes", "2", "--frames", "20", "--json", "old.json"]) == 0
    assert json.loads((tmp_path / "old.json").read_text())["episodes"] == 2
    assert "wrote old.json" in capsys.readouterr().out


def test_cli_json_dash_writes_the_figures_to_stdout(tmp_path, capsys, monkeypatch):
    """--json - wrote a file named "-", where predlab.bench's --json - writes to stdout."""
    from predlab.evaluate import main
    monkeypatch.chdir(tmp_path)
    assert main(["teacher", "--episodes", "4", "--frames", "30", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert not (tmp_path / "-").exists()
    res = json.loads(out)            # the JSON alone, for a pipe to parse: the table went before it
    assert "catch_ratio" in res and res["episodes"] == 4 and "4 episodes x 30 frames" in err
    # the file stdout goes to, named: it was renamed over the table written there; /dev/stdout is - too
    with open(tmp_path / "res.json", "w") as f:
        monkeypatch.setattr("sys.stdout", f)
        assert main(["teacher", "--episodes", "4", "--frames", "30", "--json", "res.json"]) == 0
    assert json.loads((tmp_path / "res.json").read_text())["episodes"] == 4


@pytest.mark.parametrize("argv, message", [
    (["missing.pt"], "no such file"),
    (["teacher", "--episodes", "0"], "must be >= 1"),
    (["teacher", "--frames", "ten"], "not a whole number"),
    (["teacher", "--frames", "1e30"], "must be <= 1000000, got 1e30"),     # evaluated until killed
    (["teacher", "--seed", "-1"], "must be >= 0"),
    (["teacher", "--device", "tpu"], "unknown device"),
    (["."], "is a directory"),
    ([""], "no file name given (give a checkpoint"),     # was ". is a directory"
    (["teacher", "--json", "afile/out.json"], "is a file"),     # refused before the rollouts, not after
    (["teacher", "--json", "."], "is a directory"),
    (["teacher", "--json", ""], "no file name given"),     # was skipped: no figures written, not a word
])
def test_cli_bad_input_exits_2(argv, message, capsys, tmp_path, monkeypatch):
    from predlab import evaluate
    # refused before any rollout: a --json refused only after them cost the whole evaluation
    monkeypatch.setattr(evaluate, "compare", lambda *a, **k: pytest.fail("the rollouts ran before the refusal"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    # one line of usage, then the error: the full usage was 10 lines of flags above it
    assert err.startswith("usage: python -m predlab.evaluate PATH [flags]   (--help lists them)\n") and \
        len(err.splitlines()) == 2, err


@pytest.mark.parametrize("name, text", [("model.js", "window.TRANSFORMER_PARAMS = {d_model: 48,"),
                                        ("model.json", '{"d_model": 48}'),
                                        ("best.pt", "not a checkpoint")])
def test_cli_tampered_file_exits_2(name, text, tmp_path, capsys):
    bad = tmp_path / name
    bad.write_text(text)
    with pytest.raises(SystemExit) as e:
        main([str(bad)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert str(bad) in err or name in err


@pytest.mark.parametrize("name", ["best_model.pt", "model.json"])
def test_cli_names_an_unreadable_file(model, name, tmp_path, capsys, make_unreadable):
    path = save_model_file(model, tmp_path / name)
    make_unreadable(path)
    with pytest.raises(SystemExit) as e:
        main([str(path), "--episodes", "1", "--frames", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith(f"error: cannot read {path}: Permission denied")


def test_an_unreadable_checkpoint_is_not_called_a_foreign_file(model, tmp_path, make_unreadable):
    from predlab.checkpoint import CheckpointError, atomic_save, load_checkpoint_dict
    path = tmp_path / "best_model.pt"
    atomic_save({"format": "predlab-checkpoint", "version": 1, "model_config": vars(model.config),
                 "model": model.state_dict()}, path)
    make_unreadable(path)
    with pytest.raises(CheckpointError, match=re.escape(f"cannot read {path}: Permission denied")):
        load_checkpoint_dict(path)


def _save_checkpoint(net, path, **fields):
    from predlab.checkpoint import atomic_save
    ck = {"format": "predlab-checkpoint", "version": 1, "model_config": dict(vars(net.config)),
          "model": dict(net.state_dict())}
    for k, v in fields.items():
        if isinstance(v, dict) and isinstance(ck.get(k), dict):
            ck[k].update(v)
        else:
            ck[k] = v
    return atomic_save(ck, path)


@pytest.mark.parametrize("sizes, message", [({"d_model": 10 ** 9, "n_heads": 1}, r"'cls_embedding' has shape \(48,\)"),
                                            ({"n_layers": 10 ** 6}, "14000007 weights, the checkpoint holds 49"),
                                            ({"ffn_hidden": 97}, r"'layers.0.gate.weight' has shape \(96, 48\)")])
def test_a_checkpoint_whose_sizes_its_weights_do_not_fit_is_refused_before_any_model_is_built(
        model, tmp_path, monkeypatch, sizes, message):
    from predlab.checkpoint import CheckpointError, load_checkpoint_dict, load_model
    path = _save_checkpoint(model, tmp_path / "crafted.pt", model_config=sizes)

    def build(*args, **kwargs):
        raise AssertionError("a model was built")
    monkeypatch.setattr(TransformerPredator, "__init__", build)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint_dict(path)
    with pytest.raises(CheckpointError, match="model_config"):
        load_model(path)


@pytest.mark.parametrize("weight", [torch.empty(48, device="meta"), torch.eye(48)[0].to_sparse()])
def test_a_checkpoint_weight_without_dense_values_is_named(model, tmp_path, weight):
    from predlab.checkpoint import CheckpointError, load_checkpoint_dict
    path = _save_checkpoint(model, tmp_path / "crafted.pt", model={"cls_embedding": weight})
    with pytest.raises(CheckpointError, match="'cls_embedding' is a torch.(strided|sparse_coo) tensor on (meta|cpu)"):
        load_checkpoint_dict(path)


@pytest.mark.parametrize("key, value", [
    ("optimizer", [1, 2]), ("optimizer", {"state": {}, "param_groups": "all"}),
    # a step of "x" was "could not convert string to float: '<generator object ...>'" from torch
    ("optimizer", {"state": {0: {"step": "x"}}, "param_groups": []}),
    ("scheduler", {"warmup": "1", "min_ratio": 0.05, "progress": 0.0, "base": [0.002]}),
    ("scheduler", {"warmup": 1.0, "min_ratio": 0.05, "progress": 0.0}),
    ("rng", {"torch": torch.zeros(5)}), ("rng", {"cuda": torch.zeros(5, dtype=torch.uint8)}), ("rng", "seed"),
    ("best_metric", "0.1"), ("monitor", 3), ("history", [1.0]), ("data_source", []),
    # nested thousands deep, a resume trained its epoch and lost it in a RecursionError at the save
    ("history", [{"epoch": 1, "note": functools.reduce(lambda x, _: [x], range(40), [])}])])
def test_a_tampered_training_state_is_refused_naming_the_key(model, tmp_path, key, value):
    from predlab.checkpoint import CheckpointError, load_checkpoint_dict
    path = _save_checkpoint(model, tmp_path / "crafted.pt")
    load_checkpoint_dict(path)
    ck = torch.load(path, weights_only=True)
    ck[key] = value
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match=f"'{key}' must be"):
        load_checkpoint_dict(path)


def test_trainer_logs_catch_ratio_and_can_select_by_it(tmp_path):
    from predlab.train import Checkpointer, create_trainer
    from predlab.checkpoint import load_checkpoint_dict
    wc = WorldConfig(width_max=640, height_max=480, boids_max=20, frames=20)
    trainer = create_trainer(train_episodes=4, val_episodes=2, world_config=wc, verbose=False, progress=False,
                             eval_every=1, eval_episodes=16, eval_frames=150, select_best_by="catch_ratio",
                             callbacks=[Checkpointer(tmp_path)])
    assert trainer.monitor == "neg_catch_ratio"
    hist = trainer.train(1)
    assert hist[0]["catch_ratio"] == -hist[0]["neg_catch_ratio"] >= 0
    assert "catches_per_1k" in hist[0]
    ck = load_checkpoint_dict(tmp_path / "best_model.pt")
    assert ck["monitor"] == "neg_catch_ratio" and ck["best_metric"] == hist[0]["neg_catch_ratio"]


def test_selected_by_catch_ratio_early_stopping_counts_evaluations_not_epochs():
    """--select_best_by catch_ratio: the epochs between evaluations have no catch ratio and decide
    nothing (counted as epochs without improvement, a patience of 2 stopped the run after a single
    evaluation)."""
    from predlab.train import create_trainer
    wc = WorldConfig(width_max=640, height_max=480, boids_max=20, frames=20)
    trainer = create_trainer(train_episodes=4, val_episodes=2, world_config=wc, verbose=False, progress=False,
                             eval_every=2, eval_episodes=16, eval_frames=150, select_best_by="catch_ratio")
    trainer.min_delta = 10.0           # only the first evaluation resets early stopping's count
    trainer.train(4)
    assert ["catch_ratio" in h for h in trainer.history] == [False, True, False, True]
    ratios = {h["epoch"]: h["catch_ratio"] for h in trainer.history if "catch_ratio" in h}
    assert trainer.bad_epochs == 1 and trainer.best_epoch == (4 if ratios[4] > ratios[2] else 2)


@pytest.mark.parametrize("kw, message", [({"episodes": 2.5}, "episodes must be a whole number"),
                                         ({"frames": 0}, "frames must be a whole number between 1 and 1000000"),
                                         ({"frames": 10 ** 7}, "frames must be a whole number between 1 and 1000000"),
                                         ({"seed": -1}, "seed must be a whole number between 0 and"),
                                         ({"policy": None}, "policy is None")])
def test_rollout_arguments_are_named(kw, message):
    from predlab.evaluate import rollout
    args = {"policy": "teacher", "episodes": 2, "frames": 3, **kw}
    with pytest.raises(ValueError, match=message):
        rollout(**args)


@pytest.mark.parametrize("spec, message", [(None, "not NoneType"), (3, "not int"), (["teacher"], "not list")])
def test_load_policy_names_a_spec_of_the_wrong_type(spec, message):
    with pytest.raises(TypeError, match=f"a policy is a model, .*{message}"):
        load_policy(spec)


@pytest.mark.parametrize("device, error, message", [("tpu", ValueError, "unknown device 'tpu'"),
                                                    (0, TypeError, "device must be a name .* not int")])
def test_compare_names_a_bad_device(device, error, message):
    with pytest.raises(error, match=message):
        compare("teacher", episodes=1, frames=1, device=device, baselines=False)
    with pytest.raises(error, match=message):
        load_policy("teacher", device)


def test_a_model_with_nan_actions_is_named_not_scored(model):
    """A diverged model scored catch_ratio 0.0, as if it were merely weak."""
    from predlab.evaluate import CatchEvaluator, NonFiniteActions
    with torch.no_grad():
        model.output.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteActions, match="actions are NaN or infinite"):
        rollout(model, episodes=3, frames=2, world_config=WC)

    class Trainer:                      # what CatchEvaluator reads of a trainer
        target_epochs, monitor, world_config, device = 5, "val_loss", WC, torch.device("cpu")
    Trainer.model = model
    logs = {}
    CatchEvaluator(every=1, episodes=3, frames=2).on_evaluate(Trainer(), 1, logs)   # training goes on
    assert math.isnan(logs["catch_ratio"]) and math.isnan(logs["neg_catch_ratio"])


@pytest.mark.parametrize("action, error, message", [
    (lambda E: torch.full((E, 2), float("nan")), NonFiniteActions, "at frame 0 are NaN or infinite"),
    (lambda E: torch.zeros(3), ValueError, r"shape \[3\]; a policy returns one action per episode it is given: \[4, 2\]"),
    (lambda E: [[0.0, 0.0]] * E, TypeError, "are a list; a policy returns a tensor"),
    (lambda E: None, TypeError, "are a NoneType")])
def test_a_callable_policy_with_unusable_actions_is_named_not_scored(action, error, message):
    """A callable's NaN actions left the predator standing and scored 0 catches, as a weak policy;
    a list or a wrong shape failed inside the world's step."""
    with pytest.raises(error, match=message):
        rollout(lambda batch: action(batch["context"].shape[0]), episodes=4, frames=3, world_config=WC)
    assert rollout(lambda b: torch.zeros(4, 2, dtype=torch.long), episodes=4, frames=3, world_config=WC).frames == 3


@pytest.mark.parametrize("kw", [{"episodes": -1}, {"frames": "x"}, {"every": 2.5}, {"seed": -1}, {"every": True}])
def test_catch_evaluator_refuses_bad_arguments_when_made(kw):
    """Found only at the first evaluation, after that epoch's training."""
    from predlab.evaluate import CatchEvaluator
    with pytest.raises(ValueError, match=f"{next(iter(kw))} must be a whole number"):
        CatchEvaluator(**kw)


def test_compare_refuses_a_teacher_rollout_of_other_episodes(model):
    """It gave a wrong catch_ratio silently."""
    t = rollout("teacher", episodes=4, frames=5, world_config=WC)
    assert compare(model, episodes=4, frames=5, world_config=WC, teacher=t, baselines=False)["teacher"] == t.summary()
    for kw in ({"episodes": 5, "frames": 5}, {"episodes": 4, "frames": 6}):
        with pytest.raises(ValueError, match="teacher is a Rollout of other episodes"):
            compare(model, world_config=WC, teacher=t, baselines=False, **kw)
    with pytest.raises(TypeError, match="teacher must be a Rollout"):
        compare(model, episodes=4, frames=5, world_config=WC, teacher="teacher", baselines=False)


@pytest.mark.parametrize("kw, error, message", [
    ({"episodes": 0}, ValueError, "episodes must be a whole number >= 1"),
    ({"episodes": 2.5}, ValueError, "episodes must be a whole number"),
    ({"frames": float("nan")}, ValueError, "frames must be a whole number"),
    ({"world_config": 5}, TypeError, "world_config must be a WorldConfig")])
def test_compare_with_a_teacher_rollout_names_its_bad_arguments(teacher_run, kw, error, message):
    """With teacher= given, a bad value was named as the world's num_envs or cfg, and a NaN
    frames read as a teacher rollout of other episodes."""
    with pytest.raises(error, match=message):
        compare("random", teacher=teacher_run, baselines=False, **{**KW, **kw})


@pytest.mark.parametrize("args, error, message", [
    ((0, 0, None), ValueError, "episodes must be a whole number >= 1, got 0"),
    ((4, -1, None), ValueError, "seed must be a whole number between 0 and"),    # was numpy's "expected non-negative integer"
    ((4, 0, 5), TypeError, "world_config must be a WorldConfig")])
def test_episodes_world_names_its_bad_arguments(args, error, message):
    with pytest.raises(error, match=message):
        episodes_world(*args)
    assert episodes_world(4, 0, {"boids_max": 20}).alive.shape == (4, 20)


def test_evaluate_cli_names_a_model_whose_actions_overflow(model, tmp_path, capsys):
    """Weights that are finite but huge pass the reader, and the CLI showed a traceback."""
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3e38)
    path = save_model_file(model, tmp_path / "huge.pt")
    with pytest.raises(SystemExit) as e:
        main([str(path), "--episodes", "2", "--frames", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "actions are NaN or infinite" in err and "Traceback" not in err


def test_rollout_takes_its_world_config_as_a_dict():
    assert rollout("teacher", episodes=2, frames=2, world_config={"boids_max": 5}).n_start.max() <= 5


def test_a_checkpoint_and_a_weight_file_under_each_others_names(model, tmp_path, capsys):
    """A checkpoint named x.js was read as text ("not a UTF-8 text weight file (byte 64 ...)"); a
    model.js named .pt was "not a torch.save zip archive; truncated or another kind of file"."""
    trainer = SupervisedTrainer(model, SampleSet.empty(), SampleSet.empty(), device="cpu")
    pt = trainer.save_checkpoint(tmp_path / "x.pt").rename(tmp_path / "x.js")
    obs = episodes_world(8, 0, WC).observe()
    assert torch.equal(load_policy(pt)(obs), ModelPolicy(model)(obs))
    for name in ("model.js", "model.json"):
        weights = write_weights(model, tmp_path / name)
        with pytest.raises(SystemExit) as e:
            main([str(weights.rename(tmp_path / "m.pt")), "--episodes", "1", "--frames", "1"])
        assert e.value.code == 2
        assert "a browser weight file (model.js / model.json), not a checkpoint" in capsys.readouterr().err


def test_cli_json_output_never_replaces_a_model_json(model, tmp_path, capsys, monkeypatch):
    """--json model.json (a natural name for a model's figures) overwrote the exported weights
    beside the checkpoint with the evaluation's figures: both are JSON files."""
    monkeypatch.chdir(tmp_path)
    weights = write_weights(model, tmp_path / "model.json")
    before = weights.read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["teacher", "--episodes", "1", "--frames", "1", "--json", "model.json"])
    assert e.value.code == 2 and "model.json holds model weights" in capsys.readouterr().err
    assert weights.read_bytes() == before
    (tmp_path / "res.json").write_text('{"catch_ratio": 1.0}')     # an earlier evaluation's figures: replaced
    assert main(["teacher", "--episodes", "1", "--frames", "1", "--json", "res.json"]) == 0
    assert json.loads((tmp_path / "res.json").read_text())["episodes"] == 1


def test_cli_ctrl_c_exits_130_with_a_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the rollouts printed a traceback."""
    from predlab import evaluate

    def stopped(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "compare", stopped)
    out = tmp_path / "res.json"
    assert evaluate.main(["teacher", "--episodes", "4", "--json", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted: no figures" in err and f"{out} was not written" in err and not out.exists()


def test_cli_progress_bars_and_the_page_size_note(make_model, tmp_path, capsys):
    """A bar per rollout with --progress (long evaluations said nothing until the end), none with
    --no-progress; weights of sizes the page refuses are evaluated with a note saying so."""
    from predlab.evaluate import main
    assert main(["random", "--episodes", "4", "--frames", "20", "--progress"]) == 0
    err = capsys.readouterr().err
    assert all(f"{name}: " in err for name in ("policy", "teacher", "random")) and "frame" in err
    assert main(["teacher", "--episodes", "4", "--frames", "20", "--no-progress"]) == 0
    assert "frame" not in capsys.readouterr().err
    with pytest.warns(UserWarning):
        small = write_weights(make_model(0, d_model=32), tmp_path / "small.js")
    assert main([str(small), "--episodes", "4", "--frames", "20", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "'d_model': 32" in err and "would refuse these weights" in err
    assert main([str(write_weights(make_model(0), tmp_path / "model.js")), "--episodes", "4", "--frames", "20"]) == 0
    assert "refuse" not in capsys.readouterr().err


def test_rollout_progress_must_be_a_flag_or_label():
    from predlab.evaluate import rollout
    with pytest.raises(TypeError, match="progress must be True, False or a label, not int"):
        rollout("teacher", episodes=2, frames=2, progress=1)


@pytest.mark.parametrize("device", ["auto", None])
def test_rollout_and_episodes_world_take_device_auto(device):
    """compare resolved "auto", but rollout and episodes_world handed it to torch, which has no such device;
    None stepped the world on the CPU while a model file went to the GPU."""
    want = rollout("teacher", episodes=2, frames=3, device="cpu").catches
    assert torch.equal(rollout("teacher", episodes=2, frames=3, device=device).catches, want)
    assert episodes_world(2, device=device).pos.device == resolve_device("auto")


@pytest.mark.parametrize("model, chunk, error, message", [
    (None, 4, TypeError, "model must be a TransformerPredator, not NoneType"),
    ("teacher", 4, TypeError, "model must be a TransformerPredator, not str"),
    (TransformerPredator(), 0, ValueError, "chunk must be a whole number >= 1, got 0"),
    (TransformerPredator(), -1, ValueError, "chunk must be a whole number >= 1, got -1"),
    (TransformerPredator(), 2.5, TypeError, "chunk must be a whole number")])
def test_model_policy_names_its_bad_arguments(model, chunk, error, message):
    """chunk=-1 ran no forward at all: every action (0, 0), scored as a model that never steers."""
    with pytest.raises(error, match=message):
        ModelPolicy(model, chunk)


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (2 ** 63, ValueError), (2.5, TypeError), ("1", TypeError)])
def test_random_policy_names_a_bad_seed(seed, error):
    with pytest.raises(error, match="seed must be a whole number"):
        RandomPolicy(seed)
    with pytest.raises(error, match="seed must be a whole number"):
        RandomPolicy().reset(seed)


@pytest.mark.parametrize("kw, message", [({"baselines": "no"}, "baselines must be True or False, not str"),
                                         ({"baselines": None}, "baselines must be True or False, not NoneType"),
                                         ({"progress": "yes"}, "progress must be True or False, not str")])
def test_compare_names_a_flag_that_is_not_a_bool(kw, message):
    """baselines="no", a true string, ran the random baseline all the same."""
    with pytest.raises(TypeError, match=message):
        compare("teacher", episodes=1, frames=1, **kw)


def test_first_catch_frames_counts_the_frames_a_catch_took(teacher_run):
    """first_catch_frames is the number of frames to an episode's first catch (first_catch holds the
    frame's index from 0): a catch in the first frame took 1, one in the last frame the whole
    horizon, as many as an episode without a catch counts."""
    from predlab.evaluate import Rollout
    r = Rollout(torch.tensor([1, 2, 0]), torch.tensor([0, 9, -1]), torch.tensor([5, 5, 5]), frames=10, seconds=0.0)
    assert r.summary()["first_catch_frames"] == pytest.approx((1 + 10 + 10) / 3)
    # in a rollout: a horizon just long enough for the quickest first catch, which took all its frames
    k = int(teacher_run.first_catch[teacher_run.first_catch >= 0].min()) + 1
    s = rollout("teacher", **{**KW, "frames": k}).summary()
    assert s["first_catch_rate"] > 0 and s["first_catch_frames"] == k


def test_the_first_catch_is_not_moved_by_later_catches():
    """first_catch is the frame of an episode's first catch, whatever it catches after: a shorter
    horizon finds the same first catches, and none in an episode first caught at or after its end."""
    kw = dict(episodes=16, seed=0, world_config=WorldConfig(width_max=400, height_max=400, boids_max=20))
    long, short = rollout("teacher", frames=300, **kw), rollout("teacher", frames=100, **kw)   # several catches
    first = long.first_catch
    assert torch.equal(short.catches > 0, (first >= 0) & (first < 100))
    assert torch.equal(short.first_catch, torch.where(first < 100, first, -1))
    assert ((short.catches > 0) & (long.catches > short.catches)).any()     # caught again after frame 100


def test_flock_caught_is_the_mean_of_each_episodes_share():
    """flock_caught is the mean over episodes of caught / starting boids (the module's figures), so
    a lone boid caught weighs as much as a flock of 49 missed: pooled, the two read 0.02."""
    from predlab.evaluate import Rollout
    r = Rollout(torch.tensor([1, 0]), torch.tensor([3, -1]), torch.tensor([1, 49]), frames=10, seconds=0.0)
    assert r.summary()["flock_caught"] == 0.5


def test_a_run_selecting_by_catch_ratio_evaluates_its_last_epoch(tmp_path):
    """A run that selects by catch ratio and ends between evaluations is evaluated at its end too:
    a run shorter than eval_every had no catch ratio at all, so no best_model.pt and no model.js."""
    from predlab.train import Checkpointer, create_trainer
    from predlab.checkpoint import load_checkpoint_dict
    wc = WorldConfig(width_max=640, height_max=480, boids_max=20, frames=20)
    trainer = create_trainer(train_episodes=4, val_episodes=2, world_config=wc, verbose=False, progress=False,
                             dagger=False, eval_every=5, eval_episodes=16, eval_frames=150,
                             select_best_by="catch_ratio", callbacks=[Checkpointer(tmp_path)])
    trainer.train(2)
    assert ["catch_ratio" in h for h in trainer.history] == [False, True]
    best = load_checkpoint_dict(tmp_path / "best_model.pt")
    assert best["best_epoch"] == 2 and best["best_metric"] == trainer.history[-1]["neg_catch_ratio"]


def test_cli_seed_chooses_the_episodes(tmp_path, capsys):
    """python -m predlab.evaluate --seed S scores the episodes of seed S: its figures are compare's
    with that seed, and another seed's differ."""
    out = tmp_path / "res.json"
    assert main(["teacher", "--episodes", "8", "--frames", "300", "--seed", "7", "--no-progress",
                 "--json", str(out)]) == 0
    assert "seed 7" in capsys.readouterr().out
    res = json.loads(out.read_text())
    want = compare("teacher", episodes=8, frames=300, seed=7)
    for who in ("policy", "teacher", "random"):
        assert {k: v for k, v in res[who].items() if k != "seconds"} == \
            {k: v for k, v in want[who].items() if k != "seconds"}, who
    assert compare("teacher", episodes=8, frames=300, seed=0, baselines=False)["teacher"]["catches"] != \
        res["teacher"]["catches"]


def test_cli_scores_the_given_file_on_the_given_episodes_and_frames(model, tmp_path, capsys):
    """--episodes and --frames are the ones scored (the figures are compare's on them, for the model in
    the file), and the JSON names the file it scored."""
    path = write_weights(model, tmp_path / "model.js")
    out = tmp_path / "res.json"
    assert main([str(path), "--episodes", "4", "--frames", "40", "--no-progress", "--json", str(out)]) == 0
    assert "4 episodes x 40 frames, seed 0" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["policy_path"] == str(path) and (res["episodes"], res["frames"]) == (4, 40)
    want = compare(model, episodes=4, frames=40, baselines=False)
    for who in ("policy", "teacher"):
        assert {k: v for k, v in res[who].items() if k != "seconds"} == \
            {k: v for k, v in want[who].items() if k != "seconds"}, who


def test_cli_defaults_are_the_readmes(monkeypatch):
    """Without flags: 200 episodes of 300 frames from seed 0 (the README's figures), with progress
    bars where stderr is a terminal and none in a log."""
    from predlab import evaluate
    seen = []

    def record(policy, **kw):
        seen.append(kw)
        raise KeyboardInterrupt          # main stops there, saying so
    monkeypatch.setattr(evaluate, "compare", record)
    for tty in (True, False):
        monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
        assert evaluate.main(["teacher"]) == 130
    assert [(k["episodes"], k["frames"], k["seed"], k["progress"]) for k in seen] == \
        [(200, 300, 0, True), (200, 300, 0, False)]


def test_cli_names_a_file_it_cannot_read_for_any_reason(model, tmp_path, capsys, monkeypatch):
    """An I/O error reading the model (a failing disk or network mount), not only a permission,
    is one line naming the file and the error, exit 2, not a traceback."""
    import errno
    import os
    import predlab.export
    path = save_model_file(model, tmp_path / "best_model.pt")

    def failing(spec, what=""):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(spec))
    monkeypatch.setattr(predlab.export, "load_model_file", failing)
    with pytest.raises(SystemExit) as e:
        main([str(path), "--episodes", "1", "--frames", "1"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: cannot read {path}: {os.strerror(errno.EIO)}")


def test_cli_says_when_the_json_cannot_be_written_and_keeps_the_old_one(tmp_path, capsys, monkeypatch):
    """A full disk when the figures are written, after the whole evaluation: one line naming the
    file and why, exit 1, the table printed and the earlier file whole (it was a traceback)."""
    import errno
    import os
    out = tmp_path / "res.json"
    out.write_text('{"catch_ratio": 1.0}\n')

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    assert main(["teacher", "--episodes", "2", "--frames", "5", "--no-progress", "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert "2 episodes x 5 frames" in captured.out and "Traceback" not in captured.err
    assert captured.err.strip().endswith(f"error: cannot write {out}: {os.strerror(errno.ENOSPC)}")
    assert out.read_text() == '{"catch_ratio": 1.0}\n' and [p.name for p in tmp_path.iterdir()] == ["res.json"]


def test_random_policy_draws_uniformly_over_both_directions_of_each_axis():
    """The random baseline steers anywhere in [-1, 1]^2: its actions cover both signs of each axis
    about evenly (a baseline that only steered one way would drift into a corner)."""
    actions = RandomPolicy(0)({"context": torch.zeros(4000, 2)})
    assert actions.shape == (4000, 2) and actions.abs().max() <= 1
    assert (actions.min(0).values < -0.99).all() and (actions.max(0).values > 0.99).all()
    assert actions.mean(0).abs().max() < 0.05


def test_random_policy_follows_its_seed():
    """The same seed draws the same actions (a rollout reseeds it with the episodes' seed, so the
    random baseline's figures repeat); another seed draws others."""
    batch = {"context": torch.zeros(8, 2)}
    a, b = RandomPolicy(1), RandomPolicy(2)
    first = a(batch)
    assert not torch.equal(first, b(batch))
    a.reset(1)
    assert torch.equal(a(batch), first)
    b.reset(1)
    assert torch.equal(b(batch), first)


def test_model_policy_acts_as_in_eval_mode_and_leaves_a_training_model_training(make_model):
    """During training the catch evaluation drives the model being trained: its actions are the
    dropout-free ones, and the model is handed back still in training mode (left in eval mode,
    the epochs after an evaluation trained without dropout)."""
    model = make_model(0, dropout=0.5)
    obs = episodes_world(8, 0, WC).observe()
    with torch.no_grad():
        want = model.eval()(obs)
    model.train()
    got = ModelPolicy(model)(obs)
    assert model.training
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not got.requires_grad                 # no autograd graph kept per frame


def test_model_policy_names_nan_actions_in_a_single_episode(model, monkeypatch):
    """One episode's NaN action is enough to refuse the model: scored, that episode read as a miss."""
    forward = model.forward

    def one_nan(batch):
        out = forward(batch).clone()
        out[0, 0] = float("nan")
        return out
    monkeypatch.setattr(model, "forward", one_nan)
    with pytest.raises(NonFiniteActions, match="NaN or infinite"):
        ModelPolicy(model)(episodes_world(8, 0, WC).observe())


def test_first_catch_rate_is_the_share_of_episodes_with_a_catch():
    from predlab.evaluate import Rollout
    r = Rollout(torch.tensor([2, 0, 1, 0]), torch.tensor([4, -1, 0, -1]), torch.tensor([5, 5, 5, 5]), frames=10,
                seconds=0.0)
    s = r.summary()
    assert s["first_catch_rate"] == 0.5 and s["catches"] == 3
    assert s["catches_per_1k"] == pytest.approx(1000 * 3 / 40)


def test_rollout_reseeds_a_policy_with_the_episodes_seed():
    """A policy with reset(seed), such as RandomPolicy, is reseeded with the episodes' seed before
    the first frame, so the same policy object scores the same figures on every run."""
    seen = []

    class Recording:
        def reset(self, seed):
            seen.append(seed)

        def __call__(self, batch):
            return torch.zeros(batch["context"].shape[0], 2)
    rollout(Recording(), episodes=2, frames=1, seed=5, world_config=WC)
    assert seen == [5]
    policy = RandomPolicy(9)
    a, b = (rollout(policy, episodes=4, frames=60, seed=2, world_config=WC) for _ in range(2))
    assert torch.equal(a.catches, b.catches) and torch.equal(a.first_catch, b.first_catch)


def test_catches_count_every_boid_caught_in_the_same_frame(monkeypatch):
    """A predator that reaches a bunched flock catches several boids in one frame: each counts."""
    from predlab import evaluate
    world = episodes_world(2, 0, WC)
    world.pos[0] = world.pred_pos[0]                 # episode 0's whole flock on the predator
    monkeypatch.setattr(evaluate, "episodes_world", lambda *a, **k: world)
    n = int(world.n_alive[0])
    r = rollout("teacher", episodes=2, frames=1, world_config=WC)
    assert n > 1 and int(r.catches[0]) == n and int(r.first_catch[0]) == 0
    assert r.summary()["flock_caught"] == pytest.approx((1 + int(r.catches[1]) / int(r.n_start[1])) / 2)


def test_compare_refuses_a_teacher_rollout_of_another_seed_or_world(model):
    """A teacher Rollout of the same size but of other episodes (another seed, or the default world)
    gave a catch_ratio against catches on other flocks, silently."""
    t = rollout("teacher", episodes=4, frames=5, seed=1, world_config=WC)
    with pytest.raises(ValueError, match="teacher is a Rollout of other episodes"):
        compare(model, episodes=4, frames=5, seed=0, world_config=WC, teacher=t, baselines=False)
    with pytest.raises(ValueError, match="teacher is a Rollout of other episodes"):
        compare(model, episodes=4, frames=5, seed=1, teacher=t, baselines=False)
    # another canvas range draws the same flock sizes: it passed, and the model's 88 catches on larger canvases were
    # scored against the teacher's 36 on the browser's: a ratio of 2.444 where the model's own was 0.936
    same = compare("teacher", episodes=4, frames=5, seed=1, world_config=WC, teacher=t, baselines=False)
    assert same["teacher"]["catches"] == int(t.catches.sum())          # its own episodes: taken
    other = dataclasses.replace(WC, width_max=WC.width_max - 100)
    from predlab.evaluate import episodes_world
    assert torch.equal(episodes_world(4, 1, other).n_alive, t.n_start)          # the flocks alone are alike
    with pytest.raises(ValueError, match="teacher is a Rollout of other episodes"):
        compare(model, episodes=4, frames=5, seed=1, world_config=other, teacher=t, baselines=False)


def _canned(catches, frames=3):
    """A Rollout of two 5-boid episodes with `catches` catches in the first."""
    from predlab.evaluate import Rollout
    return Rollout(torch.tensor([catches, 0]), torch.tensor([0 if catches else -1, -1]), torch.tensor([5, 5]),
                   frames=frames, seconds=0.0)


def test_compare_divides_each_policys_catches_by_the_teachers(monkeypatch):
    """catch_ratio is the policy's catches over the teacher's, random_catch_ratio the random
    baseline's over the teacher's; baselines=False runs no random baseline at all."""
    from predlab import evaluate
    from predlab.evaluate import teacher_policy
    ran = []

    def canned(policy, **kw):
        ran.append(policy if isinstance(policy, str) else "policy")
        return _canned({"teacher": 4, "random": 1}.get(policy if isinstance(policy, str) else "", 2), kw["frames"])
    monkeypatch.setattr(evaluate, "rollout", canned)
    policy = functools.partial(teacher_policy)        # a policy of its own (the teacher itself is rolled out once)
    res = compare(policy, episodes=2, frames=3)
    assert (res["catch_ratio"], res["random_catch_ratio"]) == (0.5, 0.25)
    assert (res["policy"]["catches"], res["teacher"]["catches"], res["random"]["catches"]) == (2, 4, 1)
    ran.clear()
    res = compare(policy, episodes=2, frames=3, baselines=False)
    assert ran == ["policy", "teacher"] and "random" not in res and "random_catch_ratio" not in res


class _Trainer:
    """What CatchEvaluator reads of a trainer."""

    def __init__(self, model, target_epochs=5, monitor="val_loss"):
        self.model, self.target_epochs, self.monitor = model, target_epochs, monitor
        self.world_config, self.device = WC, torch.device("cpu")


def test_catch_evaluator_logs_the_models_figures_against_one_teacher_rollout(model, monkeypatch, capsys):
    """Each evaluation logs the model's catch ratio (and its negation, the monitor) and catches per
    1,000 frames, on the episodes of the evaluator's seed in the trainer's world; the teacher's
    rollout of those episodes is run once, at the first evaluation, and reused."""
    from predlab import evaluate
    from predlab.evaluate import CatchEvaluator
    calls = []

    def canned(policy, **kw):
        calls.append(("teacher" if policy == "teacher" else type(policy).__name__, kw))
        return _canned(4 if policy == "teacher" else 2, kw["frames"])
    monkeypatch.setattr(evaluate, "rollout", canned)
    ce, trainer = CatchEvaluator(every=1, episodes=2, frames=3, seed=7), _Trainer(model)
    for epoch in (1, 2):
        logs = {}
        ce.on_evaluate(trainer, epoch, logs)
        # no interval: two episodes that differ are too few (every resample of them gave 2/4 or 4/8: "0.50-0.50")
        assert math.isnan(logs.pop("catch_ratio_low")) and math.isnan(logs.pop("catch_ratio_high"))
        assert logs == {"catch_ratio": 0.5, "neg_catch_ratio": -0.5, "catches_per_1k": 1000 * 2 / (2 * 3)}
    assert [who for who, _ in calls] == ["teacher", "ModelPolicy", "ModelPolicy"]
    assert all(kw == dict(episodes=2, frames=3, seed=7, world_config=WC, device=trainer.device, progress=False)
               for _, kw in calls)                       # no bars unless asked for
    assert "teacher catches nothing" not in capsys.readouterr().err


def test_catch_evaluator_warns_once_when_the_teacher_catches_nothing(model, monkeypatch, capsys):
    """With no teacher catch the ratio is NaN at every evaluation: one warning says how to fix it."""
    from predlab import evaluate
    from predlab.evaluate import CatchEvaluator
    monkeypatch.setattr(evaluate, "rollout", lambda policy, **kw: _canned(0, kw["frames"]))
    ce, logs = CatchEvaluator(every=1, episodes=2, frames=3), {}
    for epoch in (1, 2):
        ce.on_evaluate(_Trainer(model), epoch, logs)
    assert math.isnan(logs["catch_ratio"]) and logs["catches_per_1k"] == 0.0
    err = capsys.readouterr().err
    assert err.count("the teacher catches nothing in 2 episodes x 3 frames") == 1 and "eval_frames" in err


def test_catch_evaluator_logs_nan_figures_for_a_diverged_model(model, monkeypatch):
    """A model whose actions are NaN gets NaN for every catch figure (catches_per_1k too, not the
    previous evaluation's or none), and training goes on."""
    from predlab import evaluate
    from predlab.evaluate import CatchEvaluator

    def canned(policy, **kw):
        if policy != "teacher":
            raise NonFiniteActions("the model's actions are NaN or infinite")
        return _canned(4, kw["frames"])
    monkeypatch.setattr(evaluate, "rollout", canned)
    logs = {}
    CatchEvaluator(every=1, episodes=2, frames=3).on_evaluate(_Trainer(model), 1, logs)
    assert set(logs) == {"catch_ratio", "catch_ratio_low", "catch_ratio_high", "neg_catch_ratio", "catches_per_1k"}
    assert all(math.isnan(v) for v in logs.values())


def test_catch_evaluator_runs_every_nth_epoch_and_the_last_when_it_picks_the_best(model):
    """Every `every` epochs; a run that selects its best model by catch ratio is evaluated at its
    last epoch too, and a run that selects by val loss is not (the rollouts cost time)."""
    from predlab.evaluate import CatchEvaluator
    ce = CatchEvaluator(every=3)
    assert [e for e in range(1, 8) if ce.due(_Trainer(model, 7, "val_loss"), e)] == [3, 6]
    assert [e for e in range(1, 8) if ce.due(_Trainer(model, 7, "neg_catch_ratio"), e)] == [3, 6, 7]
    with pytest.raises(ValueError, match="every must be a whole number >= 1, got 0"):
        CatchEvaluator(every=0)


def test_evaluation_episodes_repeat_for_a_seed_and_are_none_the_model_trained_or_validated_on():
    """The catch figures compare models on the same held-out episodes: a seed gives the same
    starts every time, and they are not the starts of the validation stream or of any epoch's
    training episodes drawn from that seed."""
    from predlab.data import chunk_seed
    from predlab.sim import World
    cfg = WorldConfig(boids_min=3, boids_max=6)
    a, b = episodes_world(8, seed=3, world_config=cfg), episodes_world(8, seed=3, world_config=cfg)
    assert torch.equal(a.pred_pos, b.pred_pos) and torch.equal(a.pos, b.pos)
    assert not torch.equal(episodes_world(8, seed=4, world_config=cfg).pred_pos, a.pred_pos)
    for stream in range(6):       # validation (0), then epochs 1..5
        w = World.random(8, cfg, generator=torch.Generator().manual_seed(chunk_seed(3, stream, 0)))
        assert not torch.equal(w.pred_pos, a.pred_pos), f"stream {stream}"


def test_catch_evaluator_runs_the_teacher_again_for_another_trainers_world(model, monkeypatch):
    """An evaluator given to a second trainer (a notebook cell run again with another world) reused the
    first world's teacher rollout: the model's catches in one world over the teacher's in another."""
    import dataclasses

    from predlab import evaluate
    from predlab.evaluate import CatchEvaluator
    teachers = []

    def canned(policy, **kw):
        if policy == "teacher":
            teachers.append(kw["world_config"])
            return _canned(4 if kw["world_config"] == WC else 1, kw["frames"])
        return _canned(1, kw["frames"])
    monkeypatch.setattr(evaluate, "rollout", canned)
    ce, first, second = CatchEvaluator(every=1, episodes=2, frames=3), _Trainer(model), _Trainer(model)
    second.world_config = dataclasses.replace(WC, boids_max=WC.boids_max + 1)
    logs = [{}, {}, {}]
    ce.on_evaluate(first, 1, logs[0])
    ce.on_evaluate(second, 1, logs[1])
    ce.on_evaluate(second, 2, logs[2])
    assert [log["catch_ratio"] for log in logs] == [0.25, 1.0, 1.0]
    assert teachers == [WC, second.world_config]          # once per world


def test_cli_draws_a_checkpoints_episodes_from_the_world_it_was_trained_on(model, tmp_path, capsys):
    """A run trained on its own world (a page of 12 boids on 800 px) logged its catch ratio on that
    world; `python -m predlab.evaluate` drew the browser's default world whatever the checkpoint
    said, so the two figures measured different episodes. A flag still replaces one value."""
    from predlab.evaluate import main
    trained = WorldConfig(width_max=800, boids_max=12)
    trainer = SupervisedTrainer(model, SampleSet.empty(), SampleSet.empty(), device="cpu", world_config=trained)
    pt = trainer.save_checkpoint(tmp_path / "best_model.pt")
    out = tmp_path / "res.json"
    assert main([str(pt), "--episodes", "4", "--frames", "10", "--json", str(out)]) == 0
    world = json.loads(out.read_text())["world_config"]
    assert (world["width_max"], world["boids_max"], world["boids_min"]) == (800, 12, 1)
    assert "drawn from" in capsys.readouterr().err
    ours = compare(pt, baselines=False, episodes=4, frames=10, world_config=trained)
    assert json.loads(out.read_text())["policy"]["catches"] == ours["policy"]["catches"]
    # the library, as the CLI: over 60 frames its teacher catches 3 boids here, none in the browser's world
    ours = compare(pt, baselines=False, episodes=4, frames=60, world_config=trained)
    default = compare(pt, baselines=False, episodes=4, frames=60)
    assert default["teacher"]["catches"] == ours["teacher"]["catches"] > 0
    assert default["policy"] == {**ours["policy"], "seconds": default["policy"]["seconds"]}
    assert rollout(pt, episodes=4, frames=1).n_start.max() <= 12
    assert main([str(pt), "--episodes", "4", "--frames", "10", "--json", str(out), "--boids-max", "30"]) == 0
    assert json.loads(out.read_text())["world_config"]["boids_max"] == 30
    assert json.loads(out.read_text())["world_config"]["width_max"] == 800
    assert "world with the flags given" in capsys.readouterr().err
    js = write_weights(model, tmp_path / "model.js")         # a weight file records no world: the browser's
    assert main([str(js), "--episodes", "4", "--frames", "10", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["world_config"]["boids_max"] == 50
    assert "drawn from" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(pt), "--boids_min", "20"])
    assert e.value.code == 2
    assert "boids_min=20 is larger than boids_max=12 (in" in capsys.readouterr().err


@pytest.mark.parametrize("world, message", [({"boids_max": "many"}, "bad world_config"),
                                            ({"boids_maximum": 12}, "unknown WorldConfig fields: boids_maximum"),
                                            ({"boids_min": 9, "boids_max": 3}, "bad world_config")])
def test_cli_names_a_checkpoints_world_that_is_no_world(model, tmp_path, capsys, world, message):
    from predlab.evaluate import main
    path = _save_checkpoint(model, tmp_path / "best_model.pt", world_config=world)
    with pytest.raises(SystemExit) as e:
        main([str(path), "--episodes", "2", "--frames", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err and "Traceback" not in err


def test_cli_sigterm_exits_143_with_a_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """A SIGTERM (`timeout`, a scheduler) killed the evaluation at once; now it stops as a Ctrl-C does."""
    import os
    import signal
    from predlab import evaluate

    def terminated(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(evaluate, "compare", terminated)
    out = tmp_path / "res.json"
    assert evaluate.main(["teacher", "--episodes", "4", "--json", str(out)]) == 143
    err = capsys.readouterr().err
    assert "terminated (SIGTERM): no figures" in err and f"{out} was not written" in err and not out.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_cli_with_its_stdout_closed_still_writes_the_json_and_exits_141(tmp_path, capsys, monkeypatch):
    """`python -m predlab.evaluate ... --json out.json | head -1`: the table met a pipe whose reader had
    gone, a BrokenPipeError traceback, and the figures computed were not written to --json."""
    import errno
    import io
    from predlab import evaluate

    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
    monkeypatch.setattr("sys.stdout", Closed())
    out = tmp_path / "res.json"
    assert evaluate.main(["teacher", "--episodes", "4", "--frames", "20", "--json", str(out)]) == 141
    assert json.loads(out.read_text())["episodes"] == 4
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------- the catch ratio's interval
def _catches(catches, frames=300):
    c = torch.as_tensor(catches)
    return Rollout(c, torch.where(c > 0, 0, -1), torch.full_like(c, 50), frames=frames, seconds=0.0)


def test_the_interval_takes_percentiles_of_paired_resamples():
    """Two episodes, the student catching in the first only, the teacher once in each. Resampled in
    pairs: both first (ratio 1) a quarter of the time, one of each (1/2) half, both second (0) a
    quarter. So the 95% interval is 0..1 and the middle 40% is 1/2 alone; drawn unpaired (the
    student's and the teacher's episodes apart) or without resampling, it is neither."""
    student, teacher = _catches([1, 0]), _catches([1, 1])
    assert catch_ratio(student, teacher) == 0.5
    ci = catch_ratio_interval(student, teacher, min_differing=1)        # (one episode differs: by default too few)
    assert (ci["low"], ci["high"], ci["level"], ci["resamples"]) == (0.0, 1.0, 0.95, 2000)
    mid = catch_ratio_interval(student, teacher, level=0.4, min_differing=1)
    assert (mid["low"], mid["high"]) == (0.5, 0.5)
    assert catch_ratio_interval(student, teacher, min_differing=1) == ci      # seeded: the same every time


def test_the_interval_bounds_are_the_tail_percentiles_of_the_seeded_resamples():
    """Forty episodes give some hundreds of distinct resampled ratios, so a bound taken a few places
    in from the tail's percentile (a narrower interval printed as 95%) differs from the right one.
    The resamples are drawn again here the same way: the episode indices of each resample at once,
    from a generator seeded with the interval's seed."""
    g = torch.Generator().manual_seed(3)
    s, t = (torch.poisson(torch.full((40,), rate), generator=g).long() for rate in (1.1, 1.0))
    for level, seed in ((0.95, 0), (0.8, 7)):
        ci = catch_ratio_interval(_catches(s), _catches(t), level=level, seed=seed)
        idx = torch.randint(0, 40, (2000, 40), generator=torch.Generator().manual_seed(seed))
        r = (s.double()[idx].sum(1) / t.double()[idx].sum(1)).sort().values
        assert r.unique().numel() > 300
        tail = (1 - level) / 2
        low, high = r[math.floor(tail * 2000)], r[math.ceil((1 - tail) * 2000) - 1]
        assert (ci["low"], ci["high"]) == (float(low), float(high))


def test_the_interval_holds_the_ratio_and_narrows_with_more_episodes():
    g = torch.Generator().manual_seed(1)
    width = {}
    for n in (64, 4000):       # the student catches 0.55 a episode on average, the teacher 0.5
        s, t = (_catches(torch.poisson(torch.full((n,), rate), g).long()) for rate in (0.55, 0.5))
        ci = catch_ratio_interval(s, t)
        assert ci["low"] < catch_ratio(s, t) < ci["high"]
        width[n] = ci["high"] - ci["low"]
    assert ci["low"] < 1.1 < ci["high"]                         # 4,000 episodes: around the true 0.55 / 0.5
    assert width[4000] < width[64] / 4


def test_a_policy_against_itself_has_no_spread_and_no_teacher_catch_has_no_interval():
    same = _catches([3, 0, 1, 2])
    ci = catch_ratio_interval(same, same, min_differing=0)
    assert (ci["low"], ci["high"]) == (1.0, 1.0)
    none = catch_ratio_interval(_catches([1, 0]), _catches([0, 0]))
    assert math.isnan(none["low"]) and math.isnan(none["high"])


def test_a_single_episode_has_no_interval_rather_than_a_certain_one():
    """Every resample of one episode is that episode: the interval was the ratio itself, 0.500-0.500,
    printed as a 95% interval (of a policy that caught 1 boid to the teacher's 2, once)."""
    student, teacher = _catches([1]), _catches([2])
    ci = catch_ratio_interval(student, teacher)
    assert math.isnan(ci["low"]) and math.isnan(ci["high"])
    res = {"catch_ratio": catch_ratio(student, teacher), "catch_ratio_interval": ci, "episodes": 1, "frames": 300,
           "seed": 0, "policy": student.summary(), "teacher": teacher.summary()}
    table = format_table(res)
    assert "policy vs teacher 0.500: no interval from a single episode" in table and "95% interval" not in table
    assert table.startswith("1 episode x 300 frames, seed 0 ")              # not "1 episodes"
    # the shares of episodes with a catch and of the flock caught read as shares (0.266 was taken for a count)
    header, policy = table.splitlines()[1:3]
    share, flock = (policy[header.index(h) + len(h) - 15:header.index(h) + len(h)].strip()
                    for h in ("eps w/ catch", "flock caught"))
    assert (share, flock) == (f"{student.summary()['first_catch_rate']:.1%}",
                              f"{student.summary()['flock_caught']:.2%}") and share.endswith("%")
    from predlab.config import strict_json
    assert format_table(json.loads(json.dumps(strict_json(res)))) == table       # read back from --json


def test_few_episodes_that_differ_give_no_interval_rather_than_a_certain_one():
    """A trained model caught as the teacher did in most of 16 episodes: "95% interval 1.000-1.000", printed with
    "more --episodes narrow it"; such intervals held the ratio of 10,240 episodes 57.5% of the time."""
    student, teacher = _catches([2, 1, 0, 3] * 4), _catches([2, 1, 0, 3] * 3 + [2, 2, 1, 3])
    ci = catch_ratio_interval(student, teacher)
    assert (ci["differing"], ci["min_differing"]) == (2, 10) and math.isnan(ci["low"]) and math.isnan(ci["high"])
    res = {"catch_ratio": catch_ratio(student, teacher), "catch_ratio_interval": ci, "episodes": 16, "frames": 300,
           "seed": 0, "policy": student.summary(), "teacher": teacher.summary()}
    line = format_table(res).splitlines()[-1]
    assert line == (f"policy vs teacher {res['catch_ratio']:.3f}: no interval: its catches and the teacher's differ "
                    "in only 2 of the 16 episodes, too few to tell how far the ratio could move (an interval takes "
                    "10); use more --episodes")
    from predlab.config import strict_json
    assert format_table(json.loads(json.dumps(strict_json(res)))).splitlines()[-1] == line     # from --json
    g = torch.Generator().manual_seed(2)                        # ten that differ: an interval
    s = _catches(torch.poisson(torch.full((40,), 1.0), g).long())
    t = _catches(torch.poisson(torch.full((40,), 1.0), g).long())
    assert catch_ratio_interval(s, t)["differing"] >= 10 and catch_ratio_interval(s, t)["low"] < catch_ratio(s, t)
    with pytest.raises(ValueError, match="min_differing must be a whole number"):
        catch_ratio_interval(s, t, min_differing=-1)


@pytest.mark.parametrize("kw, message", [
    (dict(level=1), "level must be between 0 and 1"), (dict(level=0.0), "level must be between 0 and 1"),
    (dict(level=float("nan")), "level must be between 0 and 1"), (dict(resamples=0), "resamples must be a whole number >= 1"),
    # torch's "manual_seed expected a long, but got float" named no argument, and -1 was taken
    (dict(seed=1.5), "seed must be a whole number"), (dict(seed=-1), "seed must be a whole number between 0 and"),
])
def test_the_interval_refuses_bad_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        catch_ratio_interval(_catches([1]), _catches([1]), **kw)


def test_the_interval_and_the_ratio_refuse_rollouts_of_other_episodes():
    with pytest.raises(ValueError, match="not the same episodes"):
        catch_ratio_interval(_catches([1, 0, 2]), _catches([1, 1]))
    with pytest.raises(ValueError, match="the student's 3 episodes and the teacher's 2 are not the same"):
        catch_ratio(_catches([1, 0, 2]), _catches([1, 1]))         # it gave 2.0


def test_the_table_gives_the_ratios_interval_and_reads_it_back_from_json(teacher_run, monkeypatch):
    from predlab import evaluate
    monkeypatch.setattr(evaluate, "catch_ratio_interval",      # 16 episodes: an interval from the few that differ
                        functools.partial(evaluate.catch_ratio_interval, min_differing=1))
    res = compare("random", teacher=teacher_run, **KW)
    ci = res["catch_ratio_interval"]
    assert ci["low"] <= res["catch_ratio"] <= ci["high"] and ci["level"] == 0.95
    table = format_table(res)
    assert (f"policy vs teacher {res['catch_ratio']:.3f}: 95% interval {ci['low']:.3f}-{ci['high']:.3f} "
            f"(the 16 episodes resampled 2,000 times; more --episodes narrow it)") in table.splitlines()
    from predlab.config import strict_json
    back = json.loads(json.dumps(strict_json(res), allow_nan=False))
    assert format_table(back) == table
    del back["catch_ratio_interval"]            # a --json file of an earlier version: the table without the line
    assert format_table(back) == "\n".join(line for line in table.splitlines() if "interval" not in line)


def test_cli_json_holds_an_interval_without_a_top(tmp_path, capsys, monkeypatch):
    """With few catches the interval's top is inf (resamples in which only the policy caught): --json
    failed at json.dumps after the whole evaluation, with a traceback, and wrote nothing."""
    from predlab import evaluate
    student, teacher = _catches([1, 0, 0, 0]), _catches([0, 1, 0, 0])
    res = {"catch_ratio": catch_ratio(student, teacher),
           "catch_ratio_interval": catch_ratio_interval(student, teacher, min_differing=1),
           "episodes": 4, "frames": 300, "seed": 0, "policy": student.summary(), "teacher": teacher.summary()}
    assert res["catch_ratio_interval"]["high"] == math.inf
    monkeypatch.setattr(evaluate, "compare", lambda *a, **k: json.loads(json.dumps(res)))     # a copy, inf kept
    out = tmp_path / "res.json"
    assert evaluate.main(["teacher", "--episodes", "4", "--no-progress", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "95% interval 0.000-inf" in printed
    back = json.loads(out.read_text())        # strict JSON: JSON.parse has no Infinity
    assert back["catch_ratio"] == 1.0 and back["catch_ratio_interval"]["high"] is None
    assert format_table(back) in printed      # read back, the same table


def test_a_long_evaluation_without_a_progress_bar_says_so_before_it_starts(monkeypatch, capsys):
    """--frames 1000000 in a log ran for minutes without a word (no bar where stderr is not a terminal)."""
    from predlab import evaluate
    seen = []
    monkeypatch.setattr(evaluate, "compare", lambda *a, **k: seen.append(capsys.readouterr().err) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        evaluate.main(["teacher", "--episodes", "2", "--frames", "1000000", "--no-progress"])
    assert ("note: 1,000,000 frames of 2 episodes of up to 50 boids, two policies in turn, with no progress bar"
            in seen[0])          # the teacher's rollout is run once
    with pytest.raises(ZeroDivisionError):
        evaluate.main(["teacher", "--episodes", "2", "--frames", "300", "--no-progress"])
    assert "note:" not in seen[1]


def test_model_policy_runs_the_float32_model_inside_a_callers_own_autocast(model):
    """The catch check and DAgger's student drive episodes with the model the page runs: a user's
    torch.autocast around them made the forwards on the main thread bf16 ones, the split's not."""
    obs = ragged_observation(40)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                    # every chunk on the main thread, where autocast reaches
    try:
        want = ModelPolicy(model)(obs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(ModelPolicy(model)(obs), want)
    finally:
        torch.set_num_threads(threads)


def test_the_teacher_against_itself_is_one_rollout_and_no_advice_to_add_episodes(capsys, monkeypatch):
    """`evaluate teacher` ran the teacher twice and, with no episode differing, advised more --episodes,
    which never gives the teacher against itself an interval."""
    from predlab import evaluate
    runs = []
    real = evaluate.rollout
    monkeypatch.setattr(evaluate, "rollout", lambda policy, **kw: runs.append(policy) or real(policy, **kw))
    assert evaluate.main(["teacher", "--episodes", "12", "--frames", "300", "--no-progress"]) == 0
    line = capsys.readouterr().out.splitlines()[-2]         # above the timings
    assert runs == [evaluate.teacher_policy, "random"]
    assert line == ("policy vs teacher 1.000: no interval: its catches equal the teacher's in every one of the 12 "
                    "episodes: the policy is the teacher, so the ratio is 1 whatever the episodes")
    # another policy whose catches equal the teacher's in a few episodes: more episodes give it one
    student, teacher = _catches([2, 1, 0, 3]), _catches([2, 1, 0, 3])
    res = {"catch_ratio": 1.0, "catch_ratio_interval": catch_ratio_interval(student, teacher), "episodes": 4,
           "frames": 300, "seed": 0, "policy": student.summary(), "teacher": teacher.summary()}
    assert format_table(res).splitlines()[-1].endswith(
        "differ in only 0 of the 4 episodes, too few to tell how far the ratio could move (an interval takes 10); "
        "use more --episodes")


def test_a_long_evaluation_without_a_bar_says_so_before_it_starts(capsys, monkeypatch):
    """Five frames of 1,000 boids ran a minute a rollout in a log without a word: the note looked at the
    frames alone. It weighs the flock too now."""
    from predlab import evaluate
    monkeypatch.setattr(evaluate, "compare", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt))
    for argv, said in ((["--frames", "5", "--boids_min", "1000", "--boids_max", "1000", "--episodes", "200"], True),
                       (["--frames", "300", "--episodes", "500"], False),        # the README's: 14 s
                       (["--frames", "20000", "--episodes", "1"], False),        # 17 s
                       (["--frames", "100000", "--episodes", "1"], True)):
        assert evaluate.main(["teacher", "--no-progress", *argv]) == 130
        assert ("this can take long" in capsys.readouterr().err) == said, argv


def test_a_model_policy_names_a_malformed_batch(make_model):
    """ModelPolicy(model)(obs), the README's way to a model's actions for states of one's own: a mask of the
    wrong shape gave actions for other boids or another number of episodes without a word, NaN in the states was
    blamed on the model's weights, and numpy arrays or a missing key failed in torch's or Python's words."""
    from predlab.data import InputError
    from predlab.evaluate import ModelPolicy
    from predlab.sim import World
    obs = World.random(3, generator=torch.Generator().manual_seed(0), n_boids=4).observe()
    policy = ModelPolicy(make_model(1))
    assert policy(obs).shape == (3, 2)
    bad = [({**obs, "mask": obs["mask"][:1]}, r"batch\['mask'\] has shape \(1, 4\), expected \(3, 4\)"),
           ({**obs, "mask": obs["mask"][:, :3]}, r"batch\['mask'\] has shape \(3, 3\), expected \(3, 4\)"),
           ({k: v for k, v in obs.items() if k != "mask"}, r"batch\['mask'\] must be a tensor, got NoneType"),
           ({**obs, "boids": obs["boids"].numpy()}, r"batch\['boids'\] must be a tensor, got ndarray"),
           ({**obs, "boids": obs["boids"][0]}, r"batch\['boids'\] has shape \(4, 4\), expected \(E, N, 4\)"),
           ({**obs, "boids": obs["boids"].clone().fill_(float("nan"))}, r"batch\['boids'\] contains NaN"),
           # integer states gave integer actions, every one 0; finite states that overflow blamed the weights
           ({**obs, "context": obs["context"].round().long()}, r"batch\['context'\] is torch.int64: states are float"),
           ({**obs, "boids": obs["boids"] * 1e30}, r"batch\['boids'\] holds values of 1.\d+e\+30")]
    for batch, said in bad:
        with pytest.raises(InputError, match=said):
            policy(batch)
