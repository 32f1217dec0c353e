"""The config dataclasses' checks and the functions the entry points share: argument checks,
device names, dicts as configs and the memory estimates."""
import dataclasses
import re

import pytest

from predlab import config
from predlab.config import ModelConfig, TrainConfig, WorldConfig


@pytest.mark.parametrize("lo, hi", [("width_min", "width_max"), ("height_min", "height_max"),
                                    ("boids_min", "boids_max")])
def test_a_range_whose_low_end_is_above_its_high_end_is_refused_naming_both(lo, hi):
    WorldConfig(**{lo: 40, hi: 40}).validate()             # one value: a fixed canvas or flock size
    with pytest.raises(ValueError, match=f"^{lo}=41 is larger than {hi}=40$"):
        WorldConfig(**{lo: 41, hi: 40}).validate()


def test_a_cuda_index_past_the_last_gpu_is_refused_naming_how_many_there_are(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert config.resolve_device("cuda:1") == torch.device("cuda:1")      # the last one
    with pytest.raises(ValueError, match=r"^--device cuda:2: only 2 CUDA device\(s\) present$"):
        config.resolve_device("cuda:2")
    with pytest.raises(ValueError, match=r"^device='cuda:2': only 2 CUDA device\(s\) present$"):
        config.as_device("cuda:2")


def test_an_unknown_device_name_is_refused_naming_the_flag_or_argument_it_came_from():
    """`python -m predlab.evaluate teacher --device nan` said "unknown device 'nan'" and nothing of
    --device: the message names where the value came from, and keeps the name as given."""
    with pytest.raises(ValueError, match="^--device: unknown device 'NaN': use auto, cpu, cuda, cuda:N or mps$"):
        config.resolve_device("NaN")
    with pytest.raises(ValueError, match="^device: unknown device '': use auto"):
        config.as_device("")
    with pytest.raises(ValueError, match="^device: unknown device 'tpu': use auto"):
        TrainConfig(device="tpu").validate()


def test_mps_where_apple_mps_is_absent_is_refused_with_what_to_use_instead(monkeypatch):
    import torch
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="^--device mps asked for, but Apple MPS is not available here; "
                                         "use --device cpu or auto$"):
        config.resolve_device("mps")
    with pytest.raises(ValueError, match="^device='mps' asked for, .* use device='cpu' or 'auto'$"):
        config.as_device("mps")


def test_auto_takes_a_cuda_gpu_and_otherwise_the_cpu_even_where_apple_mps_is_there(monkeypatch):
    """On a Mac, auto trained on MPS, a device no run of predlab has been measured or tested on, where
    the CPU path is both: the default now stays on the CPU, and MPS runs when it is asked for."""
    import torch
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.resolve_device("auto") == config.resolve_device(None) == torch.device("cpu")
    assert config.as_device("auto") == torch.device("cpu")
    assert config.resolve_device("mps") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.resolve_device("auto") == torch.device("cuda")


def test_settings_that_need_exactly_the_memory_there_is_fit():
    assert config.memory_problem([("a", 60), ("b", 40)], have=100) is None
    assert config.memory_problem([("a", 60), ("b", 41)], have=100) is not None


def test_a_memory_message_names_the_largest_need_and_those_that_matter_beside_it():
    """The message names what it takes to fit: the largest need, and any of at least a twentieth
    of the memory there is; smaller ones would only bury them."""
    gib = 2 ** 30
    message = config.memory_problem([("the small one", gib // 40), ("the big one", 3 * gib),
                                     ("the middle one", gib // 10)], have=gib)
    assert message == ("these settings would need about 3.1 GiB of memory, more than this machine's 1.0 GiB "
                       "(the big one: 3.0 GiB; the middle one: 102 MiB)")


def test_a_stored_sample_is_counted_at_the_bytes_its_tensors_take():
    from predlab.data import generate_episodes
    samples = generate_episodes(2, WorldConfig(frames=3, boids_min=5, boids_max=5), seed=0)
    one = sum(t[0].element_size() * t[0].numel()
              for t in (samples.context, samples.predator, samples.boids, samples.n, samples.target))
    assert config.sample_bytes(5) == one


@pytest.mark.parametrize("buffer, kept_samples", [(0, 2 * 20_000),             # two epochs' worth
                                                   (1000, 20_000),              # never below the epoch's own
                                                   (30_000, 30_000),
                                                   (10 ** 8, 30 * 20_000)])     # all the run makes, at most
def test_daggers_samples_are_counted_as_the_buffer_kept_plus_an_epoch_it_drops(buffer, kept_samples):
    """While an epoch runs, DAgger holds its buffer (by default two epochs' worth of samples) and
    the oldest samples it drops at the end of the epoch. A buffer larger than the run's samples
    (a "keep everything" 10**8) is counted as what the run can make: it asked for 77 GiB."""
    tc, wc = TrainConfig(dagger_buffer=buffer), WorldConfig()
    assert tc.train_episodes * wc.frames == 20_000 and tc.epochs == 30
    sb = config.sample_bytes(wc.boids_max)
    needs = dict(config._training_needs(tc, wc, ModelConfig()))
    dagger = next(b for d, b in needs.items() if d.startswith("DAgger's aggregated samples"))
    assert dagger == kept_samples * sb + 20_000 * sb
    assert config.training_memory(tc, wc, ModelConfig()) is None
    assert not any(d.startswith("DAgger") for d, _ in config._training_needs(TrainConfig(dagger=False), wc,
                                                                            ModelConfig()))


def test_a_batch_larger_than_the_samples_is_counted_as_the_samples():
    """--batch_size 100000 on 1,600 samples trains in batches of 1,600: it was refused as 65 GiB."""
    wc = WorldConfig(frames=200)
    small = TrainConfig(train_episodes=8, batch_size=100_000, dagger=False)
    step = lambda tc: next(b for d, b in config._training_work(tc, wc, ModelConfig())
                           if d.startswith("a training step's activations (--batch_size x --boids_max"))
    assert step(small) == step(dataclasses.replace(small, batch_size=1600))
    assert config.training_memory(small, wc, ModelConfig()) is None
    assert step(dataclasses.replace(small, dagger=True)) == step(dataclasses.replace(small, dagger=True, batch_size=3200))


@pytest.mark.parametrize("cls, field, value, message", [
    (TrainConfig, "cuda_graphs", "no", "cuda_graphs must be true or false, got 'no'"),     # a true string
    (TrainConfig, "dagger", 0, "dagger must be true or false, got 0"),
    (TrainConfig, "epochs", True, "epochs must be a whole number, got True"),
    (TrainConfig, "batch_size", 64.0, "batch_size must be a whole number, got 64.0"),
    (WorldConfig, "noise", False, "noise must be a number, got False"),
    (TrainConfig, "learning_rate", 0, "learning_rate must be > 0, got 0"),      # trains nothing, for a whole run
    (TrainConfig, "learning_rate", -1.0, "learning_rate must be > 0, got -1.0"),
    (TrainConfig, "min_lr_ratio", 1.5, "min_lr_ratio must be <= 1.0, got 1.5"),
    (ModelConfig, "dropout", -0.1, "dropout must be >= 0.0, got -0.1"),
])
def test_a_config_value_of_the_wrong_kind_or_out_of_range_is_refused_naming_the_field(cls, field, value, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cls(**{field: value}).validate()


def test_the_ends_of_each_allowed_range_are_allowed():
    TrainConfig(min_lr_ratio=1.0, dagger_beta_decay=1.0, dagger_beta_min=0.0, epochs=1, seed=config.SEED_MAX,
                learning_rate=1e-30).validate()
    ModelConfig(dropout=0.99).validate()
    WorldConfig(width_min=16, width_max=config.MAX_CANVAS, boids_max=config.MAX_BOIDS).validate()


@pytest.mark.parametrize("kind, bounds, text, message", [
    (float, dict(lo=0.0, positive=True), "0", "must be > 0, got 0"),
    (float, dict(lo=0.0), "nan", "'nan' is not a finite number"),
    (float, dict(lo=0.0), "-inf", "'-inf' is not a finite number"),
    (int, dict(lo=1), "0", "must be >= 1, got 0"),
    (int, dict(lo=0, hi=65535), "65536", "must be <= 65535, got 65536"),
    (int, dict(lo=1), "2.5", "'2.5' is not a whole number"),
])
def test_a_flag_value_outside_its_range_is_an_argparse_error_naming_the_limit(kind, bounds, text, message):
    """The flag's own error, before any config is built: the message names the flag (argparse adds
    "argument --NAME:") and the exit code is 2."""
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(message)}$"):
        config.bounded_number(kind, **bounds)(text)


def test_a_flag_value_at_the_ends_of_its_range_is_taken():
    assert config.bounded_number(int, 0, 65535)("65535") == 65535
    assert config.bounded_number(int, 1)("1") == 1
    assert config.bounded_number(float, 0.0, 1.0)("0") == 0.0
    assert config.bounded_number(float, 0.0, positive=True)("1e-30") == 1e-30


@pytest.mark.parametrize("text, value", [("1e3", 1000), ("2.5E1", 25), ("64.0", 64), ("1e23", 10 ** 23)])
def test_a_whole_number_written_with_an_exponent_or_a_point_is_taken(text, value):
    """--train_episodes 1e4 was refused as "'1e4' is not a whole number"; 1e23 is 10**23, not the float
    nearest it."""
    assert config.bounded_number(int, 1)(text) == value
    for bad in ("1e-3", "2.5e0", "nan", "inf"):
        with pytest.raises(Exception, match=f"^'{bad}' is not a whole number$"):
            config.bounded_number(int, 1)(bad)
    for bad in ("1e401", "1e99999"):        # whole, but past what a count can mean: once "not a whole number"
        with pytest.raises(Exception, match=rf"^'{bad}' is past the largest count predlab reads \(10\*\*400\)$"):
            config.bounded_number(int, 1)(bad)


def test_the_training_cli_takes_a_count_written_as_1e3():
    from predlab.train import parse_args
    tc, _, wc, _ = parse_args(["--epochs", "1e3", "--frames", "2e2", "--eval_every", "0"])
    assert (tc.epochs, wc.frames) == (1000, 200) and type(tc.epochs) is int


def test_a_number_argument_past_floats_range_is_refused_naming_it():
    """DaggerSource(decay=10**400) raised OverflowError "int too large to convert to float"."""
    with pytest.raises(ValueError, match="decay must be a finite number"):
        config.real_number("decay", 10 ** 400, 0, 1)


@pytest.mark.parametrize("field", ["separation_weight", "cohesion_weight", "alignment_weight", "noise"])
def test_a_world_value_past_float32s_range_is_refused_naming_it(field, capsys):
    """The world is float32: --separation_weight 1e39 became infinity there, every episode's boids
    were NaN, and the run stopped with a traceback once its checks had passed. Up to float32's
    largest the episodes stay finite."""
    from predlab.data import rollout_chunk
    from predlab.train import parse_args
    with pytest.raises(ValueError, match=f"^{field} must be <= {re.escape(str(config.FLOAT32_MAX))}, got 1e[+]39$"):
        WorldConfig(**{field: 1e39}).validate()
    with pytest.raises(SystemExit) as e:
        parse_args([f"--{field}", "1e39"])
    assert e.value.code == 2 and f"argument --{field}" in capsys.readouterr().err
    largest = WorldConfig(frames=20, boids_max=5, **{field: config.FLOAT32_MAX})
    largest.validate()
    rollout_chunk(4, largest, 0).check("episodes")          # no NaN or infinity


def test_a_count_is_printed_with_its_noun_in_the_singular_for_one():
    assert [config.plural(n, "episode") for n in (0, 1, 2, 1100)] == ["0 episodes", "1 episode", "2 episodes",
                                                                      "1,100 episodes"]


@pytest.mark.parametrize("flag, value, message", [
    ("--learning_rate", "-1e-3", "argument --learning_rate/--learning-rate: must be > 0, got -1e-3"),
    ("--noise", "-inf", "argument --noise: '-inf' is not a finite number"),
    ("--weight_decay", "-NaN", "argument --weight_decay/--weight-decay: '-NaN' is not a finite number"),
    ("--epochs", "-1e3", "argument --epochs: must be >= 1, got -1e3"),
    ("--seed", "-5", "argument --seed: must be >= 0, got -5"),
])
def test_a_negative_value_in_exponent_form_or_infinite_gets_its_flags_own_error(flag, value, message, capsys):
    """argparse reads a value starting with "-" as a flag unless it looks like -5 or -.5: --learning_rate
    -1e-3 was refused with "expected one argument", as though no value had been given."""
    from predlab.train import parse_args
    with pytest.raises(SystemExit) as e:
        parse_args([flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.splitlines()[-1] == f"python -m predlab.train: error: {message}"


def test_a_word_after_a_flag_that_takes_a_value_is_still_no_value(capsys):
    from predlab.train import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--learning_rate", "--epochs", "3"])
    assert "argument --learning_rate/--learning-rate: expected one argument" in capsys.readouterr().err


def test_a_batch_size_past_torchs_largest_size_is_refused_before_the_run(capsys):
    """--batch_size 2**63 passed every check (a batch larger than the samples is all of them) and the
    run's first epoch stopped with a traceback from torch.split: "Overflow when unpacking long long"."""
    from predlab.train import parse_args
    tc = parse_args(["--batch_size", str(2 ** 63 - 1), "--frames", "1", "--eval_every", "0"])[0]
    assert tc.batch_size == 2 ** 63 - 1                     # all the samples in each step
    with pytest.raises(SystemExit) as e:
        parse_args(["--batch_size", str(2 ** 63), "--frames", "1"])
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == (
        f"python -m predlab.train: error: argument --batch_size/--batch-size: must be <= {2 ** 63 - 1}, got {2 ** 63}")
    with pytest.raises(ValueError, match=f"^batch_size must be <= {2 ** 63 - 1}, got {2 ** 63}$"):
        TrainConfig(batch_size=2 ** 63).validate()


def test_physical_memory_on_windows_comes_from_global_memory_status(monkeypatch):
    """Windows has no os.sysconf: physical_memory was None there, so every memory check was off and a run far
    past the memory started. It asks GlobalMemoryStatusEx (faked here: this is not Windows)."""
    import ctypes
    import os
    from types import SimpleNamespace
    from predlab import config

    def status(ref):
        assert ref._obj.dwLength == 64          # the size Windows checks: 2 DWORDs and 7 DWORDLONGs
        ref._obj.ullTotalPhys = 16 * 2 ** 30
        return 1
    monkeypatch.delattr(os, "sysconf")
    monkeypatch.setattr(ctypes, "windll", SimpleNamespace(kernel32=SimpleNamespace(GlobalMemoryStatusEx=status)),
                        raising=False)
    assert config.physical_memory() == 16 * 2 ** 30
    assert "more than this machine's 16.0 GiB" in config.memory_problem([("samples", 20 * 2 ** 30)])
    monkeypatch.delattr(ctypes, "windll")
    assert config.physical_memory() is None          # neither: no check, as before
