"""Shared fixtures: models with random non-trivial weights and random browser-form inputs."""
from __future__ import annotations

import builtins
import errno
import io
import math
import os
import random
from pathlib import Path

import pytest
import torch

from predlab.model import TransformerPredator

# The CLIs and scripts the tests run in subprocesses (often from a temporary folder) import this
# tree's predlab: with a relative PYTHONPATH such as "." they found none there, and ran the predlab
# installed in the environment, which may be another tree's.
ROOT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

# The suite's tensors are tiny: handing them to a thread pool costs more than it saves, and on a
# loaded machine (CI, shared boxes) an intra-op thread hand-off can stall for milliseconds per op.
torch.set_num_threads(1)

WEIGHT_STD = 0.3  # vectors (embeddings, biases, LayerNorm scale noise)


def randomize(model: TransformerPredator, seed: int = 0, std: float = WEIGHT_STD) -> TransformerPredator:
    """Overwrite every parameter with Gaussian noise; returns the model in eval mode.

    Vectors get N(0, std) (LayerNorm scales 1 + that), matrices N(0, 1/fan_in) and the output
    layer half that: every path carries signal, attention is far from uniform, and tanh is
    not saturated (plain std 0.3 matrices blow up the residual stream and pin outputs at +-1).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and name != "type_embeddings":
                s = (0.5 if name.startswith("output") else 1.0) / math.sqrt(p.shape[1])
            else:
                s = std
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64) * s
            if name.endswith("ln1.weight") or name.endswith("ln2.weight"):
                noise += 1.0
            p.copy_(noise.to(p.dtype))
    return model.eval()


def random_sample(rng: random.Random, n_boids: int) -> dict:
    """One browser-form structured input with n_boids boids (values in the ranges SPEC.md section 4 gives)."""
    w, h = rng.uniform(0.32, 3.84), rng.uniform(0.32, 2.16)      # offsets within half the canvas, as wrapped
    return {"context": {"canvasWidth": w, "canvasHeight": h},
            "predator": {"velX": rng.uniform(-1, 1), "velY": rng.uniform(-1, 1)},
            "boids": [{"relX": rng.uniform(-w / 2, w / 2), "relY": rng.uniform(-h / 2, h / 2),
                       "velX": rng.uniform(-1, 1), "velY": rng.uniform(-1, 1)} for _ in range(n_boids)]}


@pytest.fixture(autouse=True, scope="session")
def triton_home(tmp_path_factory):
    """triton keeps what it compiles in ~/.triton: the suite wrote into the user's home, and its compile tests
    failed where the home cannot be written (docker run --user, whose HOME is /)."""
    before = {k: os.environ.get(k) for k in ("TRITON_HOME", "TRITON_CACHE_DIR")}
    home = tmp_path_factory.mktemp("triton-home")
    os.environ.update(TRITON_HOME=str(home), TRITON_CACHE_DIR=str(home / ".triton" / "cache"))
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def python_sigint():
    """Python's own SIGINT handler for every test, as a terminal's Ctrl-C meets it. A shell starts
    background jobs with SIGINT ignored (`make test &`, nohup), and Python then leaves it ignored:
    four Ctrl-C tests that did not ask for this fixture failed there ("DID NOT RAISE")."""
    import signal
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture
def make_model():
    """Factory: make_model(seed=0, **sizes) -> TransformerPredator with random non-trivial weights, eval mode."""
    def make(seed: int = 0, **sizes) -> TransformerPredator:
        return randomize(TransformerPredator(**{"dropout": 0.0, **sizes}), seed)
    return make


@pytest.fixture
def model(make_model) -> TransformerPredator:
    """Default-size (48/4/3/96) model with random non-trivial weights."""
    return make_model(0)


@pytest.fixture
def make_samples():
    """Factory: make_samples(counts, seed=0) -> list of browser-form dicts, one per boid count."""
    def make(counts, seed: int = 0):
        rng = random.Random(seed)
        return [random_sample(rng, n) for n in counts]
    return make


@pytest.fixture
def samples(make_samples):
    """Inputs with 0, 1, 7 and 50 boids (0 is valid: SPEC.md section 6)."""
    return make_samples([0, 1, 7, 50], seed=1)


PAGE_WEIGHTS = "window.TRANSFORMER_PARAMS = {};  // the page's weights\n"


def linked_to_page(folder: Path, site: Path) -> str:
    """folder/model.js made a link to site/model.js (both folders made), which holds PAGE_WEIGHTS: a run's folder
    whose model.js is a page's, as the README shows. Returns the page's text."""
    folder.mkdir(parents=True, exist_ok=True)
    site.mkdir(parents=True, exist_ok=True)
    (site / "model.js").write_text(PAGE_WEIGHTS)
    (folder / "model.js").symlink_to(Path("..") / site.name / "model.js")
    return PAGE_WEIGHTS


def save_model_file(model: TransformerPredator, path) -> Path:
    """model as a checkpoint (.pt, its minimal fields) or a weight file (.js/.json) at path."""
    from predlab.checkpoint import atomic_save
    from predlab.export import write_weights
    path = Path(path)
    if path.suffix == ".pt":
        return atomic_save({"format": "predlab-checkpoint", "version": 1, "model_config": vars(model.config),
                            "model": model.state_dict()}, path)
    return write_weights(model, path)


@pytest.fixture
def make_unreadable(monkeypatch):
    """Factory: make_unreadable(path) takes read permission away from the file. Where that does not
    stop reading (root), opening that path raises PermissionError instead, as it does for a user."""
    undo = []

    def make(path) -> Path:
        path = Path(path)
        undo.append((path, path.stat().st_mode))
        path.chmod(0)
        try:
            open(path, "rb").close()
        except PermissionError:
            return path
        real = io.open

        def guarded(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and Path(file) == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return real(file, *args, **kwargs)
        monkeypatch.setattr(io, "open", guarded)
        monkeypatch.setattr(builtins, "open", guarded)
        # Python 3.10's Path.open (so read_text/read_bytes) calls the io.open it bound at import
        real_path_open = Path.open

        def path_guarded(self, *args, **kwargs):
            if self == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real_path_open(self, *args, **kwargs)
        monkeypatch.setattr(Path, "open", path_guarded)
        return path

    yield make
    for path, mode in undo:
        path.chmod(mode)


def ctrl_c_in_epoch(monkeypatch, epoch: int) -> None:
    """A Ctrl-C at the start of training epoch `epoch` (1-based) of every SupervisedTrainer, before
    any of its steps; the epochs before it train as usual."""
    from predlab.train import SupervisedTrainer
    train_epoch = SupervisedTrainer.train_epoch

    def cut(self, data):
        if self.epoch == epoch - 1:
            raise KeyboardInterrupt
        return train_epoch(self, data)
    monkeypatch.setattr(SupervisedTrainer, "train_epoch", cut)


def ctrl_c_as_epoch_begins(monkeypatch, epoch: int) -> None:
    """A Ctrl-C as training epoch `epoch` (1-based) of every SupervisedTrainer begins, while the state it
    starts from is copied: between two epochs, before anything of `epoch` has run."""
    from predlab.train import SupervisedTrainer
    epoch_start = SupervisedTrainer._epoch_start

    def cut(self):
        if self.epoch == epoch - 1:
            raise KeyboardInterrupt
        return epoch_start(self)
    monkeypatch.setattr(SupervisedTrainer, "_epoch_start", cut)


def page_state(world) -> dict:
    """The state of a one-episode float64 sim.World under world.js's names, for the page's runners."""
    st = world.state_dict()
    width, height = (int(v) for v in st["size"][0])
    return {"width": width, "height": height, "pos": st["pos"][0].tolist(), "vel": st["vel"][0].tolist(),
            "alive": st["alive"][0].tolist(), "predPos": st["pred_pos"][0].tolist(),
            "predVel": st["pred_vel"][0].tolist()}


def follow_page(rows, world, weights) -> int:
    """Step world with the model of the weights file in float64 PyTorch beside the page's frames: each
    row holds the page's action, predator position and live boids of a frame (and its predator's
    velocity and boids' positions where the runner reports them), which must agree with predlab's to
    1e-6. Returns predlab's catches."""
    from predlab.evaluate import ModelPolicy
    from predlab.export import read_weights
    policy = ModelPolicy(read_weights(weights).double())
    caught = 0
    for f, row in enumerate(rows):
        action = policy(world.observe())
        caught += int(world.step(action)[0])
        err = (torch.tensor(row["action"], dtype=torch.float64) - action[0]).abs().max().item()
        assert err <= 1e-6, f"frame {f}: the page's action differs from PyTorch's by {err:.3g}"
        for key, ref in (("predPos", world.pred_pos[0]), ("predVel", world.pred_vel[0]), ("pos", world.pos[0])):
            if key in row:
                err = (torch.tensor(row[key], dtype=torch.float64) - ref).abs().max().item()
                assert err <= 1e-6, f"frame {f}: {key} differs from PyTorch's by {err:.3g}"
        assert row["alive"] == world.alive[0].tolist(), f"frame {f}: catches differ"
    return caught
