"""Plots, animations, attention overlays and the live-plot callback the notebooks call.

Everything a notebook draws is a function here with a unit test (tests/test_viz.py), so the
notebooks stay thin: import, call, plot. Figures are built with matplotlib's object API
(matplotlib.figure.Figure), not pyplot, so nothing is shown twice and nothing needs a display.
PREDLAB_QUICK=1 (set by `make test`) shrinks every notebook run: see quick_mode() and sizes().
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import Locator, MaxNLocator

from . import config as C
from .config import WorldConfig, whole_number
from .sim import World
from .teacher import closest_pursuit, nearest_boid

Tensor = torch.Tensor
Batch = Dict[str, Tensor]
BOID_TOKEN0 = 3  # tokens: CLS, CTX, PRED, boid 0, boid 1, ...


# ---------------------------------------------------------------------- run sizes and paths
def quick_mode() -> bool:
    """True when PREDLAB_QUICK is set to anything but '', '0', 'false', 'no' or 'off', in any case (CI-sized
    notebook runs)."""
    return os.environ.get("PREDLAB_QUICK", "").strip().lower() not in ("", "0", "false", "no", "off")


# Full runs are what a person wants to look at; quick runs only prove that every cell works.
_FULL = dict(frames=300, n_boids=50, width=960, height=600, data_episodes=200, data_frames=200,
             train_episodes=100, val_episodes=50, epochs=30, batch_size=256,
             agreement_samples=4000, parity_inputs=64, fallback_episodes=40, fallback_epochs=3,
             eval_every=5, eval_episodes=64, eval_frames=300)
_QUICK = dict(frames=12, n_boids=20, width=480, height=320, data_episodes=8, data_frames=40,
              train_episodes=6, val_episodes=3, epochs=2, batch_size=128,
              agreement_samples=200, parity_inputs=8, fallback_episodes=4, fallback_epochs=1,
              eval_every=1, eval_episodes=8, eval_frames=100)   # the teacher catches a few: the ratio is drawn


def sizes(quick: Optional[bool] = None) -> Dict[str, int]:
    """Run sizes for the notebooks: small ones under PREDLAB_QUICK=1, real ones otherwise."""
    return dict(_QUICK if (quick_mode() if quick is None else quick) else _FULL)


_PREDLAB_NAME = re.compile(r"""^\s*name\s*=\s*["']predlab["']""", re.MULTILINE)


def _is_checkout(folder: Path) -> bool:
    """Whether folder is a predlab checkout: its pyproject.toml names predlab and predlab/ is beside it.

    Another project's pyproject.toml (one predlab is installed into, say) is not one."""
    try:
        return ((folder / "predlab" / "__init__.py").is_file()
                and bool(_PREDLAB_NAME.search((folder / "pyproject.toml").read_text(errors="replace"))))
    except OSError:
        return False


def repo_root() -> Path:
    """Where notebooks keep checkpoints/ and runs/: the predlab checkout the cwd is in (notebooks run
    in notebooks/, so this is the root `make train` writes under), else the cwd itself.

    Only the cwd decides, not where predlab is installed: an editable install's notebooks copied
    elsewhere, and a regular install's in a checkout, both keep their files where they are opened."""
    cwd = Path.cwd().resolve()
    return next((p for p in (cwd, *cwd.parents) if _is_checkout(p)), cwd)


def checkpoint_dir(quick: Optional[bool] = None) -> Path:
    """Where notebooks put and find checkpoints: <repo>/checkpoints.

    Quick (CI) runs use <repo>/checkpoints/quick so that `make test` never overwrites a
    real best_model.pt with a two-epoch one.
    """
    root = repo_root() / "checkpoints"
    return root / "quick" if (quick_mode() if quick is None else quick) else root


def module_command(module: str, *args) -> str:
    """`python -m module args` as a terminal runs it: this kernel's Python by its path, which has predlab and its
    torch. A plain `python` is not on a terminal's PATH after `make lab`, or is a Python without predlab."""
    import sys
    from .train import shell_words
    return shell_words(sys.executable, "-m", module, *args)


def tensorboard_binary() -> Optional[str]:
    """Point the %tensorboard magic at the tensorboard beside this kernel's Python and return its path (None
    where there is none). The magic looks on PATH, which has the virtual environment's bin folder only when
    `make lab` started Jupyter: from any other start it failed with "Could not find `tensorboard`".
    A TENSORBOARD_BINARY already set is kept."""
    from .train import tensorboard_beside_python
    tb = tensorboard_beside_python()
    if "TENSORBOARD_BINARY" not in os.environ and tb.is_file():
        os.environ["TENSORBOARD_BINARY"] = str(tb)
    return os.environ.get("TENSORBOARD_BINARY")


def runs_dir(quick: Optional[bool] = None) -> Path:
    """TensorBoard's runs folder, <repo>/runs (`tensorboard --logdir runs` from the repo root).

    Quick (CI) runs log to <repo>/runs/quick, as their checkpoints go to checkpoints/quick: `make
    test`'s two-epoch runs were named by their time as real runs are, among them."""
    root = repo_root() / "runs"
    return root / "quick" if (quick_mode() if quick is None else quick) else root


# ---------------------------------------------------------------------- argument checks
FIGSIZE_MAX = 100.0  # inches a side: matplotlib draws 100 dots an inch, and a figure past this is a typo


def _figsize(figsize, name: str = "figsize") -> tuple:
    """figsize as (width, height) in inches, each a finite number in (0, FIGSIZE_MAX]."""
    try:
        w, h = figsize
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be (width, height) in inches, got {figsize!r}") from None
    for v in (w, h):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be (width, height) in inches, got {figsize!r}")
        if not 0 < v <= FIGSIZE_MAX:             # NaN fails this too
            raise ValueError(f"{name} must be (width, height) with each in (0, {FIGSIZE_MAX:g}] inches, "
                             f"got {figsize!r}")
    return float(w), float(h)


def _index(name: str, index, n: int, of: str = "frames") -> int:
    """index of one of n things, negative counting from the end as in Python -> 0 .. n-1."""
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise TypeError(f"{name} must be a whole number, got {index!r}")
    if n == 0:
        raise ValueError(f"there are no {of} to pick {name} {index} from")
    if not -n <= index < n:
        raise ValueError(f"{name} must be between {-n} and {n - 1} ({n} {of}), got {index}")
    return int(index) % n


def _layer_head(model, layer, head):
    """(layer, head) checked against the model's sizes; head None or 'mean' -> None (the mean of heads)."""
    cfg = getattr(model, "config", None)
    L, H = getattr(cfg, "n_layers", None), getattr(cfg, "n_heads", None)
    layer = _index("layer", layer, L, "layers") if L is not None else layer
    if head is None or (isinstance(head, str) and head == "mean"):
        return layer, None
    if isinstance(head, str):
        raise ValueError(f"head must be a head number or 'mean', got {head!r}")
    return layer, _index("head", head, H, "heads") if H is not None else head


# ---------------------------------------------------------------------- rollouts
@dataclass
class Rollout:
    """One recorded episode, per-frame numpy arrays (T frames, N boid slots).

    pos, vel [T, N, 2] world px; alive [T, N]; pred_pos, pred_vel [T, 2]; action [T, 2] (the
    driving policy's output, in [-1, 1]); teacher [T, 2] (closest pursuit's unit vector);
    caught [T] boids caught by the step after frame t; size (W, H). obs holds the model's
    inputs per frame: context [T, 2], predator [T, 2], boids [T, N, 4], mask [T, N].
    """

    pos: np.ndarray
    vel: np.ndarray
    alive: np.ndarray
    pred_pos: np.ndarray
    pred_vel: np.ndarray
    action: np.ndarray
    teacher: np.ndarray
    caught: np.ndarray
    size: tuple
    obs: Dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.pos.shape[0]

    def batch(self, frames: Union[int, Sequence[int], None] = None) -> Batch:
        """The model's input batch for the given frame(s) (all by default): boids [B, N, 4], mask [B, N]."""
        idx = np.arange(len(self)) if frames is None else np.atleast_1d(np.asarray(frames))
        if idx.size == 0 or idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"frames must be a frame number or a non-empty list of them, not {frames!r}")
        if ((idx < -len(self)) | (idx >= len(self))).any():
            raise IndexError(f"frames {frames!r}: this rollout has frames 0..{len(self) - 1}")
        return {"context": torch.from_numpy(self.obs["context"][idx]).float(),
                "predator": torch.from_numpy(self.obs["predator"][idx]).float(),
                "boids": torch.from_numpy(self.obs["boids"][idx]).float(),
                "mask": torch.from_numpy(self.obs["mask"][idx]).bool()}


@torch.no_grad()
def record_rollout(frames: int = 100, n_boids: int = 50, width: int = 960, height: int = 600, seed: int = 0,
                   cfg: Optional[WorldConfig] = None, policy: Optional[Callable[[Batch], Tensor]] = None) -> Rollout:
    """Run one world for `frames` frames with the teacher (or `policy(obs) -> [1, 2]`) driving.

    A TransformerPredator policy drives as in predlab.evaluate (ModelPolicy): in eval mode, on its
    own device and dtype, and (0, 0) once no boid is left (the browser never runs it then).

    Records the state before each step, so frame 0 is the start of the episode. The flock
    weights come from cfg (WorldConfig); its canvas/boid ranges are ignored for the given sizes
    (1 to 10,000 boids, a canvas of at least 16 px a side, as WorldConfig allows).
    """
    frames = whole_number("frames", frames, 1, C.MAX_FRAMES)
    n_boids = whole_number("n_boids", n_boids, 1, 10_000)
    lo = WorldConfig.__dataclass_fields__["width_min"].metadata["min"]          # the canvas floor, 16 px
    width, height = whole_number("width", width, lo), whole_number("height", height, lo)
    seed = whole_number("seed", seed, 0, C.SEED_MAX)
    cfg = C.as_config(WorldConfig, cfg, "cfg")
    cfg.validate()
    if policy is not None and not callable(policy):
        raise TypeError(f"policy must be a callable obs -> [1, 2] action tensor (or None for the teacher), "
                        f"got {type(policy).__name__}")
    from .model import TransformerPredator
    if isinstance(policy, TransformerPredator):
        # driven as in evaluation: called bare, a fresh model (train mode) drove with dropout on, and a
        # float64 model or one on a GPU failed inside its first layer on the float32 CPU observations
        from .evaluate import ModelPolicy
        policy = ModelPolicy(policy)
    world = World.random(1, cfg, generator=torch.Generator().manual_seed(seed), n_boids=n_boids,
                         width=width, height=height)
    rec: Dict[str, List[np.ndarray]] = {k: [] for k in ("pos", "vel", "alive", "pred_pos", "pred_vel", "action",
                                                          "teacher", "caught", "context", "predator", "boids", "mask")}
    for _ in range(frames):
        obs = world.observe()
        teacher = closest_pursuit(obs["boids"], obs["mask"])                     # [1, 2]
        action = teacher if policy is None else _policy_action(policy(obs), teacher).clamp(-1, 1)
        for k in ("pos", "vel", "alive", "pred_pos", "pred_vel"):
            rec[k].append(getattr(world, k)[0].cpu().numpy().copy())
        for k in ("context", "predator", "boids", "mask"):
            rec[k].append(obs[k][0].cpu().numpy().copy())
        rec["action"].append(action[0].cpu().numpy())
        rec["teacher"].append(teacher[0].cpu().numpy())
        rec["caught"].append(int(world.step(action)[0]))
    a = {k: np.stack(v) if k != "caught" else np.asarray(v) for k, v in rec.items()}
    return Rollout(a["pos"], a["vel"], a["alive"], a["pred_pos"], a["pred_vel"], a["action"], a["teacher"],
                   a["caught"], (float(width), float(height)),
                   {k: a[k] for k in ("context", "predator", "boids", "mask")})


def _policy_action(out, like: Tensor) -> Tensor:
    """A policy's output checked to be an [E, 2] tensor of finite numbers, in like's dtype."""
    E = like.shape[0]
    if not isinstance(out, Tensor):
        raise TypeError(f"policy must return an [E, 2] tensor (here [{E}, 2]), got {type(out).__name__}")
    if tuple(out.shape) != (E, 2):
        raise ValueError(f"policy must return an [E, 2] tensor (here [{E}, 2]), got shape {list(out.shape)}")
    if out.is_complex() or not torch.isfinite(out).all():
        raise ValueError(f"policy returned {out.tolist()}: actions must be finite real numbers")
    return out.to(like.device, like.dtype)


# ---------------------------------------------------------------------- animation
def animate_rollout(rollout: Rollout, interval: int = 50, arrow_px: float = 60.0, figsize=(6, 4)):
    """FuncAnimation of the flock (dots), the predator (red) and its steering arrow, one frame per step.

    The arrow is the teacher's unit vector times arrow_px (the action actually applied, when
    another policy drove, is drawn in grey beside it).
    """
    from matplotlib.animation import FuncAnimation

    if not isinstance(rollout, Rollout):    # rerun_sim's (Rollout, html) pair gave AttributeError 'size'
        raise TypeError(f"rollout must be a viz.Rollout (what record_rollout returns), not {type(rollout).__name__}")
    figsize = _figsize(figsize)
    interval = whole_number("interval", interval, 1)
    if isinstance(arrow_px, bool) or not isinstance(arrow_px, numbers.Real) or not math.isfinite(arrow_px):
        raise ValueError(f"arrow_px must be a finite number of px, got {arrow_px!r}")
    W, H = rollout.size
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot()
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)  # the browser's canvas: y grows downwards
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    flock = ax.scatter([], [], s=10, c="tab:blue")
    pred = ax.scatter([], [], s=60, c="tab:red", zorder=3)
    arrow = ax.quiver([0], [0], [0], [0], color="tab:red", angles="xy", scale_units="xy", scale=1, width=0.006)
    applied = ax.quiver([0], [0], [0], [0], color="0.5", angles="xy", scale_units="xy", scale=1, width=0.004)
    applied.set_visible(not np.allclose(rollout.action, rollout.teacher))    # another policy drove
    title = ax.set_title("frame 0  boids 0  caught 0")    # text as the frames': tight_layout leaves room for it
    caught = np.cumsum(rollout.caught) - rollout.caught      # caught before frame t: its boids are gone from it

    def draw(t: int):
        live = rollout.alive[t]
        flock.set_offsets(rollout.pos[t][live] if live.any() else np.zeros((0, 2)))
        p = rollout.pred_pos[t]
        pred.set_offsets(p[None])
        arrow.set_offsets(p[None])
        arrow.set_UVC(*(rollout.teacher[t] * arrow_px))
        applied.set_offsets(p[None])
        applied.set_UVC(*(rollout.action[t] * arrow_px * 0.8))
        title.set_text(f"frame {t}  boids {int(live.sum())}  caught {int(caught[t])}")
        return flock, pred, arrow, applied, title

    fig.tight_layout()
    anim = FuncAnimation(fig, draw, frames=len(rollout), interval=interval, blit=False)
    anim.predlab_frames = len(rollout)      # what animation_html checks its HTML against
    return anim


def animation_html(anim) -> str:
    """The animation as self-contained HTML/JS (to_jshtml: plays in a notebook without ffmpeg).

    matplotlib stops embedding frames at rcParams["animation.embed_limit"] (20 MB: some 1,600 frames of
    rollout_figure's) and says so in its log alone (from a slider, JupyterLab's log console): for an
    animation of animate_rollout's, which knows its frames, a warning says how many the HTML holds."""
    import matplotlib

    html = anim.to_jshtml(default_mode="loop")
    # the count animate_rollout keeps: asking any animation for its frames again would run a frames generator
    # again (a simulation's steps), and matplotlib's _save_count is a cap, its log line unheard when filtered
    total, kept = getattr(anim, "predlab_frames", None), jshtml_frame_count(html)
    if isinstance(total, int) and kept < total:
        warnings.warn(f"the animation holds {kept} of its {total} frames: matplotlib's animation.embed_limit "
                      f"({matplotlib.rcParams['animation.embed_limit']:g} MB) cut the rest. Record fewer frames, or "
                      f"raise it: matplotlib.rcParams['animation.embed_limit'] = 100", stacklevel=2)
    return html


def jshtml_frame_count(html: str) -> int:
    """Number of frames embedded in to_jshtml output (for tests and sanity checks)."""
    import re
    return len(set(re.findall(r'frames\[(\d+)\] = "data:', html)))


# ---------------------------------------------------------------------- training data
def _sample_set(samples):
    """samples if it is a SampleSet (InputError naming a field that does not fit, SampleSet.check); else a
    TypeError saying what to pass (a batch dict has no labels)."""
    from .data import SampleSet

    if not isinstance(samples, SampleSet):
        raise TypeError(f"samples must be a SampleSet (what predlab.data.generate_episodes returns), "
                        f"got {type(samples).__name__}")
    # one of numpy arrays failed with "no attribute 'to'", and fields of other lengths were drawn as they came
    samples.check("samples")
    return samples


def training_data_stats(samples) -> Dict[str, np.ndarray]:
    """Per-sample facts of a SampleSet: n boids, distance (px) to the nearest boid, target angle (rad).

    Samples with no boid (teacher target (0, 0)) are left out of distance and angle.
    """
    samples = _sample_set(samples).to_device("cpu")    # a set on a GPU: the figures are numpy's
    n = samples.n.numpy()
    N = samples.boids.shape[1]
    mask = torch.arange(N)[None, :] < samples.n[:, None]                          # [S, N]
    rel = samples.boids[..., :2]
    dist = torch.sqrt((rel * rel).sum(-1)).masked_fill(~mask, float("inf")).amin(-1) if N else torch.full(
        (len(n),), float("inf"))
    t = samples.target
    has = (t.abs().sum(-1) > 0).numpy()
    return {"n": n, "nearest_px": (dist.numpy() * C.MAX_DISTANCE)[np.isfinite(dist.numpy())],
            "angle": np.arctan2(t[:, 1].numpy(), t[:, 0].numpy())[has]}


def plot_training_data(samples, figsize=(12, 3.4)) -> Figure:
    """Three panels: boid-count histogram, distance-to-nearest-boid histogram, target-direction rose."""
    figsize = _figsize(figsize)
    s = training_data_stats(samples)
    fig = Figure(figsize=figsize)
    ax1 = fig.add_subplot(1, 3, 1)
    top = max(int(s["n"].max()) if len(s["n"]) else 1, 1)
    ax1.hist(s["n"], bins=np.arange(0.5, top + 1.5, 1), color="tab:blue")
    ax1.set(xlabel="live boids", ylabel="samples", title=f"boid count ({len(s['n']):,} samples)")
    ax2 = fig.add_subplot(1, 3, 2)
    ax2.hist(s["nearest_px"], bins=40, color="tab:orange")
    ax2.set(xlabel="px to nearest boid", ylabel="samples", title="distance to the teacher's target")
    ax3 = fig.add_subplot(1, 3, 3, projection="polar")
    counts, edges = np.histogram(s["angle"], bins=24, range=(-math.pi, math.pi))
    ax3.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:green")
    ax3.set_theta_direction(-1)  # canvas y points down: angles turn clockwise on screen
    # the sample counts small and grey, along the direction of the shortest bar: the axis draws them behind
    # the bars, and a fixed direction's bars hid some (default data: 500 and 1000 of 2500)
    ax3.set_rlabel_position(math.degrees(edges[np.argmin(counts)] + math.pi / len(counts)))
    ax3.tick_params(axis="y", labelsize=7, labelcolor="0.35")
    ax3.set_axisbelow(True)              # the grid circles behind the bars
    ax3.set_title("target direction (screen)")
    fig.tight_layout()
    return fig


def plot_catches(catches: Union[np.ndarray, Sequence[np.ndarray], Rollout, Sequence[Rollout]],
                 labels: Optional[Sequence[str]] = None, ax=None) -> Figure:
    """Cumulative catches against frame, one line per episode (per-frame catch counts or Rollouts).

    One episode may come alone: a Rollout, or its counts [T] as an array, a tensor or a list of numbers.
    """
    counts = isinstance(catches, (np.ndarray, Tensor)) and catches.ndim == 1
    numbers_list = (isinstance(catches, Sequence) and not isinstance(catches, str) and len(catches) > 0
                    and all(isinstance(c, numbers.Real) for c in catches))   # was "catches[0] ... shape []"
    if isinstance(catches, Rollout) or counts or numbers_list:
        catches = [catches]
    if not hasattr(catches, "__iter__"):     # evaluate.rollout's Rollout (per-episode totals) gave "not iterable"
        raise TypeError(f"catches must be a viz.Rollout (record_rollout), per-frame catch counts [T] or a list of "
                        f"them, not {type(catches).__module__}.{type(catches).__name__}")
    series = [c.caught if isinstance(c, Rollout) else np.asarray(c) for c in catches]
    if isinstance(labels, str):
        raise TypeError(f"labels must be a list of names, one per episode, not the string {labels!r}")
    if labels is not None:
        labels = list(labels)   # a numpy array of names: its truth value below raised "ambiguous"
        if len(labels) != len(series):
            raise ValueError(f"labels has {len(labels)} name(s) for {len(series)} episode(s): give one per episode")
    for i, c in enumerate(series):
        if c.ndim != 1:
            raise ValueError(f"catches[{i}] must be per-frame catch counts [T], got shape {list(c.shape)}")
        # counts are >= 0: a NaN or -1 drew a curve of catches that never happened
        if c.dtype != bool and not np.issubdtype(c.dtype, np.number):
            raise TypeError(f"catches[{i}] must be numbers of boids caught per frame, not an array of {c.dtype}")
        bad = c[~(np.isfinite(c) & (c >= 0))]
        if bad.size:
            raise ValueError(f"catches[{i}] must be numbers of boids caught per frame (>= 0), found {bad[0]}")
    if ax is None:
        fig = Figure(figsize=(5, 3.2))
        ax = fig.add_subplot()
    elif not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes (say plt.subplots()[1]), not {type(ax).__name__}")
    else:
        fig = ax.figure
    for i, c in enumerate(series):
        ax.step(np.arange(1, len(c) + 1), np.cumsum(c), where="post",
                label=labels[i] if labels else None)
    ax.set(xlabel="frame", ylabel="boids caught", title="catches over time")
    from matplotlib.ticker import MaxNLocator
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))        # boids come whole
    if labels:
        ax.legend()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- live plot
from .train import Callback  # noqa: E402  (viz imports train, never the reverse)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
        ip = get_ipython()
        return ip is not None and hasattr(ip, "kernel")
    except ImportError:
        return False


class _LoggedEpochs(Locator):
    """Ticks at the epochs at which a metric was logged, while there are at most 12 of them
    (then integer ticks, as on the other panels)."""

    def __init__(self, epochs: Mapping[str, List[int]], key: str):
        self.epochs, self.key = epochs, key

    def __call__(self):
        seen = sorted(set(self.epochs.get(self.key, [])))
        if 0 < len(seen) <= 12:
            return seen
        return MaxNLocator(integer=True).tick_values(*self.axis.get_view_interval())


class LivePlot(Callback):
    """Trainer callback: a figure of train/val loss (+ samples/s, + catch_ratio when logged) redrawn every epoch.

    In a notebook the figure is shown once (IPython display handle) and updated in place;
    elsewhere (headless, tests, scripts) it just keeps `history` and the figure up to date.
    history: {key: [values]}; epochs: {key: [epoch of each value]} (a metric such as
    catch_ratio may be logged only every few epochs); lines: {key: Line2D}. catch_ratio's 95%
    interval (catch_ratio_low .. catch_ratio_high) is shaded behind it; the dashed line is the teacher.
    """

    PANELS = (("loss (MSE)", ("train_loss", "val_loss")), ("samples/s", ("samples_per_s",)),
              ("catch ratio, model / teacher\n(shaded: its 95% interval)", ("catch_ratio",)))

    def __init__(self, display: Optional[bool] = None, figsize=(11, 3.2), log_scale: bool = True):
        self.display = _in_notebook() if display is None else display
        self.figsize, self.log_scale = _figsize(figsize), log_scale
        self.history: Dict[str, List[float]] = {}
        self.epochs: Dict[str, List[int]] = {}
        self.lines: Dict[str, object] = {}
        self.bands: Dict[str, object] = {}      # {key: the shaded interval drawn behind its line}
        self.fig: Optional[Figure] = None
        self.handle = None
        self._trainer = None      # whose run history holds
        self._resumed_from = None   # that trainer's resumed_from when it was drawn: another is another run
        self._open_top = None       # the catch panel's top while a band there has an unbounded top

    def on_train_begin(self, trainer):
        # Each train() call shows its own plot: a notebook cell run again (to resume after an
        # interrupt) has cleared the old one, and an update to a cleared display shows nothing.
        self.handle = None
        resumed = getattr(trainer, "resumed_from", None)
        if trainer is not self._trainer or resumed is not self._resumed_from:
            # another trainer is another run: one resumed from a checkpoint kept the epochs of the run drawn
            # before in place of its own (those seen were not taken from its history). So is one that loaded
            # a checkpoint since (another run's, or its own earlier epoch): its history is the checkpoint's
            self.history, self.epochs, self._trainer, self._resumed_from = {}, {}, trainer, resumed
        # An epoch drawn, then undone by the trainer (cut after this callback's on_epoch_end) is
        # drawn again when it is repeated: drop it here, not twice on the plot.
        self._drop_undone(trainer)
        # A resumed trainer brings its history: show it from the start. An entry without an
        # epoch is the epoch of its place in the list (history[0] is epoch 1).
        seen = set(self.history.get("epoch", []))
        for i, logs in enumerate(getattr(trainer, "history", None) or []):
            if not isinstance(logs, Mapping):
                raise TypeError(f"trainer.history[{i}] must be a dict of epoch logs, got {type(logs).__name__}")
            epoch = logs.get("epoch", i + 1)
            if epoch not in seen:
                self._append(epoch, logs)

    def _drop_undone(self, trainer) -> bool:
        """Drop what was drawn of epochs after trainer.epoch (undone by the trainer); True if there was any."""
        done = getattr(trainer, "epoch", None)
        if not isinstance(done, int) or isinstance(done, bool):
            return False
        dropped = False
        for k in list(self.epochs):
            kept = [i for i, e in enumerate(self.epochs[k]) if e <= done]
            dropped |= len(kept) < len(self.epochs[k])
            self.epochs[k] = [self.epochs[k][i] for i in kept]
            self.history[k] = [self.history[k][i] for i in kept]
        return dropped

    def _append(self, epoch: int, logs: Mapping[str, float]) -> None:
        for k, v in {"epoch": epoch, **logs}.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.history.setdefault(k, []).append(float(v))
                self.epochs.setdefault(k, []).append(int(epoch))

    def _panels(self):
        # a metric with no value yet (catch_ratio is NaN while the teacher catches nothing) gets no panel
        panels = [(t, [k for k in keys if any(math.isfinite(v) for v in self.history.get(k, []))])
                  for t, keys in self.PANELS]
        return [(t, keys) for t, keys in panels if keys]

    def _build(self) -> None:
        # laid out at each draw: a layout made before any data (tight_layout here) cut off the tick
        # labels and titles that came later from a savefig (Jupyter's inline backend trims by itself)
        self.fig = Figure(figsize=self.figsize, layout="constrained")
        self.lines, self.bands = {}, {}
        panels = self._panels()
        for i, (title, keys) in enumerate(panels):
            ax = self.fig.add_subplot(1, len(panels), i + 1)
            for k in keys:
                self.lines[k], = ax.plot([], [], marker="o", ms=3, label=k.replace("_", " "))
            ax.set(xlabel="epoch", title=title)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if keys == ["catch_ratio"]:      # ticks at the epochs it is measured (5, 10, ...), while few
                ax.xaxis.set_major_locator(_LoggedEpochs(self.epochs, "catch_ratio"))
                ax.axhline(1.0, color="0.6", lw=0.8, ls="--")       # the teacher's catches
            if keys[0] == "train_loss" and self.log_scale:
                ax.set_yscale("log")
            if len(keys) > 1:
                ax.legend()

    def update(self) -> None:
        """Push history into the lines, rescale, and refresh the notebook output if there is one.

        A metric seen for the first time (e.g. catch_ratio after a few epochs) adds its panel.
        """
        wanted = {k for _, keys in self._panels() for k in keys}
        if self.fig is None or not wanted <= set(self.lines):
            self._build()
        for k, line in self.lines.items():
            line.set_data(self.epochs.get(k, []), self.history.get(k, []))
        self._draw_interval("catch_ratio")
        for ax in self.fig.axes:
            ax.relim()
            ax.autoscale_view()
        if self._open_top is not None:
            self.lines["catch_ratio"].axes.set_ylim(top=self._open_top)     # the open band runs off the top
        line = self.lines.get("catch_ratio")
        if line is not None and self.epochs.get("catch_ratio"):
            # the epochs trained so far, as in the other panels: the few checked ones alone spread one
            # check's band over the whole panel
            last = max(max(v) for v in self.epochs.values() if v)
            line.axes.set_xlim(min(1, *self.epochs["catch_ratio"]) - 0.5, last + 0.5)
        if not self.display:
            return
        if self.handle is None:
            from IPython.display import display
            self.handle = display(self.fig, display_id=True)
        else:
            self.handle.update(self.fig)

    def _draw_interval(self, key: str) -> None:
        """The shaded 95% interval of key (key_low .. key_high, as CatchEvaluator logs them) behind its line."""
        line = self.lines.get(key)
        self._open_top = None
        if line is None:
            return
        band = self.bands.pop(key, None)
        if band is not None:
            band.remove()
        lows, highs = (dict(zip(self.epochs.get(k, []), self.history.get(k, []))) for k in (f"{key}_low", f"{key}_high"))
        # a finite bottom with an unbounded top (resamples where the teacher caught none) is an interval too:
        # shaded up to the panel's top, which update() keeps at `top`
        epochs = [e for e in self.epochs.get(key, []) if math.isfinite(lows.get(e, math.nan))
                  and (math.isfinite(highs.get(e, math.nan)) or highs.get(e) == math.inf)]
        seen = [v for v in (*self.history.get(key, []), *lows.values(), *highs.values()) if math.isfinite(v)]
        top = 1.2 * max([1.0, *seen])
        lo, hi = [lows[e] for e in epochs], [min(highs[e], top) for e in epochs]
        self._open_top = top if any(highs[e] == math.inf for e in epochs) else None
        # the last check's ratio without its interval (too few episodes where the catches differ: NaN bounds,
        # not an unbounded top) is said
        checked = self.epochs.get(key, [])
        gap = (bool(checked) and math.isfinite(self.history[key][-1])
               and any(math.isnan(b.get(checked[-1], 0.0)) for b in (lows, highs)))
        title = self.PANELS[-1][0]
        line.axes.set_title(title.split("\n")[0] + f"\n(epoch {checked[-1]}: no interval, too few\n"
                            "episodes where the catches differ)" if gap else title)
        if len(epochs) == 1:        # a band over one epoch has no width: a quarter epoch each side
            epochs, lo, hi = [epochs[0] - 0.25, epochs[0] + 0.25], lo * 2, hi * 2
        if epochs:
            self.bands[key] = line.axes.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2, lw=0,
                                                      label="95% interval")

    def on_epoch_end(self, trainer, epoch, logs):
        self._append(epoch, logs)
        self.update()

    def on_train_end(self, trainer):
        # a Ctrl-C after this callback drew an epoch (in the checkpoint's save, say) left the undone epoch on
        # the stopped run's plot, under "saved checkpoint_epoch_N.pt (the last whole epoch)" of the one before
        if trainer is self._trainer and self._drop_undone(trainer) and self.fig is not None:
            self.update()

    def show(self, trainer) -> None:
        """Draw trainer's run so far anew in this cell's output. Running a training cell again clears
        the plot its last train() drew, and a train() with no epoch left to train draws none: the
        cell of a finished run was left empty but for train()'s warning."""
        self.on_train_begin(trainer)
        self.update()


def catch_callbacks(every: Optional[int] = None, episodes: Optional[int] = None,
                    frames: Optional[int] = None) -> list:
    """[predlab.evaluate.CatchEvaluator(...)]: the closed-loop catch ratio every few epochs, sized
    by sizes() for each argument left at None."""
    from .evaluate import CatchEvaluator

    S = sizes()
    every, episodes, frames = (S[k] if v is None else whole_number(name, v, 1, hi) for name, k, v, hi in
                               (("every", "eval_every", every, None), ("episodes", "eval_episodes", episodes, None),
                                ("frames", "eval_frames", frames, C.MAX_FRAMES)))
    return [CatchEvaluator(every=every, episodes=episodes, frames=frames)]


# ---------------------------------------------------------------------- attention
def _not_a_model(model) -> TypeError:
    """The error for a model argument that is a path, a state_dict or the like."""
    return TypeError(f"model must be a TransformerPredator (load a file with predlab.export.load_model_file "
                     f"or viz.load_best_model), not {type(model).__name__}")


def _attention_inputs(model, batch) -> tuple:
    """(model, batch) checked for the attention views: a model with forward_with_attention (a
    TransformerPredator), and a padded batch (check_batch's InputError naming a bad key) or
    browser-form dicts (one or a list), collated. A path, or a browser dict, failed with
    AttributeError 'training' or KeyError 'mask'."""
    from .data import check_batch, collate

    if not callable(getattr(model, "forward_with_attention", None)):
        raise _not_a_model(model)
    if isinstance(model, torch.nn.Module):
        from .model import check_has_weights
        check_has_weights(model)
    browser = isinstance(batch, Mapping) and isinstance(batch.get("context"), Mapping)
    if browser or (isinstance(batch, Sequence) and not isinstance(batch, (str, bytes))):
        batch = collate([batch] if browser else batch)
    elif not isinstance(batch, Mapping):
        raise TypeError(f"batch must be a padded batch dict (context, predator, boids, mask) or browser-form "
                        f"dicts, not {type(batch).__name__}")
    else:
        check_batch(batch)
        batch = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in batch.items()}   # on a GPU: numpy draws
    return model, batch


@torch.no_grad()
def cls_attention(model, batch: Batch) -> Tensor:
    """[CLS]'s attention over the boid tokens, every layer and head -> [B, L, H, N] (0 on padding)."""
    model, batch = _attention_inputs(model, batch)
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if p is not None:  # a model on a GPU: send the batch there, bring the weights back
        batch = {k: v.to(p.device) if k == "mask" else v.to(p.device, p.dtype) for k, v in batch.items()}
    was = model.training
    model.eval()
    try:
        if callable(getattr(model, "forward_with_cls_attention", None)):
            # [CLS]'s row alone: every layer's [B, H, T, T] took 6.7 GB for one frame of 10,000 boids
            _, weights = model.forward_with_cls_attention(batch)                # each [B, H, T]
        else:
            _, weights = model.forward_with_attention(batch)
            weights = [w[:, :, 0] for w in weights]
    finally:
        model.train(was)
    a = torch.stack([w[:, :, BOID_TOKEN0:] for w in weights], 1).float().cpu()      # [B, L, H, N]
    bad = ~torch.isfinite(a).all(-1).all(-1).all(-1)                                # [B]
    if bool(bad.any()):
        # NaN weights (a diverged run) were drawn as blank boids under "nan% of [CLS]", and argmax took
        # NaN for the largest: a NaN model "agreed" with the teacher in 0.95 of frames
        p_bad = p is not None and not all(bool(torch.isfinite(q).all()) for q in model.parameters())
        raise ValueError(f"[CLS] attention is NaN or infinite in {int(bad.sum())} of {len(bad)} frame(s): "
                         + ("the model's weights are not all finite (a diverged run?)" if p_bad else
                            "its inputs are far outside the range the browser feeds it (scaled values of order 1)"))
    return a * batch["mask"][:, None, None, :].cpu().to(a.dtype)


def draw_attention(ax, rel_px: np.ndarray, weights: np.ndarray, target: int = -1, cmap: str = "viridis",
                   vmax: Optional[float] = None):
    """Boids at rel_px [n, 2] (px from the predator) coloured by weights [n]; the target ringed.

    Returns the boids' PathCollection (its facecolors are cmap(weights / vmax)).
    """
    from matplotlib.colors import Normalize

    norm = Normalize(0.0, vmax if vmax is not None else max(float(np.max(weights, initial=0.0)), 1e-9))
    sc = ax.scatter(rel_px[:, 0], rel_px[:, 1], c=weights, cmap=cmap, norm=norm, s=40, edgecolors="none", zorder=2)
    # beneath the boids: the target is often within a marker's width of the predator, and on top the
    # triangle hid the very boid whose colour says whether the model looks at it
    ax.scatter([0], [0], marker="^", s=120, c="tab:red", zorder=1, label="predator")
    if 0 <= target < len(rel_px):
        ax.scatter(rel_px[target, :1], rel_px[target, 1:2], s=220, facecolors="none", edgecolors="tab:red",
                   linewidths=2, zorder=4, label="teacher's target")
    ax.set_aspect("equal")
    ax.invert_yaxis() if not ax.yaxis_inverted() else None
    ax.set_xlabel("px from predator")
    return sc


def plot_attention_overlay(model, batch: Batch, layer: int = 0, head: Union[int, str, None] = None,
                           index: int = 0, figsize=(5.5, 4.5)) -> Figure:
    """The scene as the model sees it (sample `index` of batch), boids coloured by [CLS]'s attention.

    head=None or 'mean' averages the heads. index, layer and head count from the end when
    negative, as in Python. The teacher's target (nearest boid) is ringed in red.
    The figure's `attention_weights` attribute holds the drawn weights [n live boids].
    """
    model, batch = _attention_inputs(model, batch)
    index = _index("index", index, batch["mask"].shape[0])
    layer, head = _layer_head(model, layer, head)
    figsize = _figsize(figsize)
    one = {k: v[index:index + 1] for k, v in batch.items() if k in ("context", "predator", "boids", "mask")}
    a = cls_attention(model, one)[0, layer]                                         # [H, N]
    w = (a.mean(0) if head is None else a[head])
    live = one["mask"][0]
    rel = one["boids"][0, live, :2].numpy() * C.MAX_DISTANCE
    w = w[live].numpy()
    tgt = int(nearest_boid(one["boids"], one["mask"])[0])
    tgt = int(live[:tgt].sum()) if tgt >= 0 else -1                                 # index among live boids
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot()
    sc = draw_attention(ax, rel, w, tgt)
    fig.colorbar(sc, ax=ax, label="[CLS] attention on one boid", shrink=0.8)
    ax.set_ylabel("px from predator")
    ax.legend(loc="best", fontsize=8)       # where it covers fewest boids
    hd = "mean of heads" if head is None else f"head {head}"
    if len(w):
        on = "the boid" if len(w) == 1 else f"the {len(w)} boids"
        ax.set_title(f"layer {layer}, {hd}: {w.sum():.0%} of [CLS] on {on},\n"
                     f"at most {w.max(initial=0.0):.1%} on one", fontsize=10)
    else:     # every boid caught: "0% of [CLS] on the 0 boids" read as a model that looked nowhere
        ax.set_title(f"layer {layer}, {hd}:\nno boid left in this frame", fontsize=10)
    fig.tight_layout()
    fig.attention_weights = w
    return fig


def plot_attention_grid(model, batch: Batch, index: int = 0, cell: float = 2.4) -> Figure:
    """Every layer (rows) and head (columns, plus the mean of heads) for one frame, one colour scale
    per layer (a layer that puts ~1.0 on one boid would leave the others' panels one flat colour).
    A negative index counts from the end, as in Python."""
    model, batch = _attention_inputs(model, batch)
    index = _index("index", index, batch["mask"].shape[0])
    if isinstance(cell, bool) or not isinstance(cell, numbers.Real) or not 0 < cell <= FIGSIZE_MAX / 4:
        raise ValueError(f"cell must be a panel size in (0, {FIGSIZE_MAX / 4:g}] inches, got {cell!r}")
    one = {k: v[index:index + 1] for k, v in batch.items() if k in ("context", "predator", "boids", "mask")}
    a = cls_attention(model, one)[0]                                                # [L, H, N]
    live = one["mask"][0]
    a = a[:, :, live].numpy()
    rel = one["boids"][0, live, :2].numpy() * C.MAX_DISTANCE
    tgt = int(nearest_boid(one["boids"], one["mask"])[0])
    tgt = int(live[:tgt].sum()) if tgt >= 0 else -1
    L, H, _ = a.shape
    fig = Figure(figsize=(cell * (H + 1) + 1.0, cell * L))
    rows = []
    for layer in range(L):
        vmax = max(float(a[layer].max(initial=0.0)), 1e-9)
        axes = []
        for h in range(H + 1):
            ax = fig.add_subplot(L, H + 1, layer * (H + 1) + h + 1)
            axes.append(ax)
            w = a[layer, h] if h < H else a[layer].mean(0)
            sc = draw_attention(ax, rel, w, tgt, vmax=vmax)
            ax.set_xlabel("")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"L{layer} " + (f"head {h}" if h < H else "mean"), fontsize=9)
        rows.append((axes, sc))
    fig.suptitle("[CLS] attention on boids (red ring: teacher's target, triangle: predator; one colour scale "
                 "per layer)" if rel.shape[0] else      # empty panels and a 0 .. 1e-9 scale said nothing of why
                 "[CLS] attention on boids: no boid left in this frame (every one caught)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.0 / fig.get_figwidth(), 1))
    for layer, (axes, sc) in enumerate(rows):
        fig.colorbar(sc, ax=axes, label=f"layer {layer}", fraction=0.02, pad=0.01, shrink=0.7)   # apart: ticks met
    return fig


@dataclass
class Agreement:
    """How often [CLS]'s most-attended boid is the teacher's target, over S samples with a boid.

    per_head [L, H]; mean_heads [L] (argmax of the head-averaged attention); chance: the mean
    of 1/n, what a uniformly random pick would score.
    """

    per_head: np.ndarray
    mean_heads: np.ndarray
    chance: float
    samples: int


AGREEMENT_BYTES = 1 << 28   # what attention_agreement's forwards hold at once, at most (but one frame's)


@torch.no_grad()
def attention_agreement(model, batch: Batch, chunk: int = 512) -> Agreement:
    """Agreement statistic (see Agreement) over a batch of frames; samples without boids are skipped."""
    chunk = whole_number("chunk", chunk, 1)
    model, batch = _attention_inputs(model, batch)
    keep = batch["mask"].any(-1)
    batch = {k: batch[k][keep] for k in ("context", "predator", "boids", "mask")}
    S = int(keep.sum())
    if S == 0:
        raise ValueError("attention_agreement needs at least one sample with a live boid")
    cfg = getattr(model, "config", None)
    if isinstance(cfg, C.ModelConfig):
        # frames of a forward at a time within AGREEMENT_BYTES: 512 frames of 1,000 boids are 2.7 GB
        from .model import forward_bytes
        # by the model's own dtype and device: a float64 model's forwards are twice a float32 one's, and a GPU's
        # attention kernel keeps every frame's [H, T, T] weights (counted float32 on the CPU, they held 2-7x the bound)
        p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None   # (as cls_attention)
        dev, dt = (p.device.type, p.dtype) if p is not None else ("cpu", torch.float32)
        per = forward_bytes(1, batch["mask"].shape[1] + 3, cfg, dev, dt)
        chunk = max(1, min(chunk, AGREEMENT_BYTES // per))
    hits_head, hits_mean = None, None
    for s in range(0, S, chunk):
        b = {k: v[s:s + chunk] for k, v in batch.items()}
        a = cls_attention(model, b).masked_fill(~b["mask"][:, None, None, :], -1.0)  # [B, L, H, N]
        tgt = nearest_boid(b["boids"], b["mask"])                                     # [B]
        h = (a.argmax(-1) == tgt[:, None, None]).sum(0)                               # [L, H]
        m = (a.mean(2).argmax(-1) == tgt[:, None]).sum(0)                             # [L]
        hits_head = h if hits_head is None else hits_head + h
        hits_mean = m if hits_mean is None else hits_mean + m
    chance = float((1.0 / batch["mask"].sum(-1).double()).mean())
    return Agreement(hits_head.double().numpy() / S, hits_mean.double().numpy() / S, chance, S)


def plot_agreement(ag: Agreement, figsize=(7.5, 3.4)) -> Figure:
    """Bars: head-averaged agreement per layer; dots: each head; dashed: chance."""
    if not isinstance(ag, Agreement):
        raise TypeError(f"ag must be an Agreement (what attention_agreement returns), not {type(ag).__name__}")
    figsize = _figsize(figsize)
    L, H = ag.per_head.shape
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot()
    x = np.arange(L)
    ax.bar(x, ag.mean_heads, color="tab:blue", alpha=0.6, label="mean of heads")
    # each layer's dots within its bar (at 16 heads, 0.12 apart, they reached into the next layer's), and a
    # colour for each head (tab10 repeats from head 10 on)
    gap = min(0.12, 0.8 / H)
    colours = matplotlib.colormaps["tab10" if H <= 10 else "tab20" if H <= 20 else "viridis"]
    for h in range(H):
        ax.scatter(x + (h - (H - 1) / 2) * gap, ag.per_head[:, h], s=18, zorder=3, label=f"head {h}",
                   color=colours(h if H <= 20 else h / (H - 1)))
    ax.axhline(ag.chance, ls="--", c="k", lw=1, label=f"chance ({ag.chance:.2f})")
    # "layer 0".."layer 11" ran into each other: past 6 layers the ticks are numbers under one axis label
    ax.set(xticks=x, xticklabels=[f"layer {i}" for i in x] if L <= 6 else [str(i) for i in x],
           xlabel="" if L <= 6 else "layer", ylim=(0, 1.02), ylabel="argmax = teacher's target",
           title=f"[CLS] attention agreement over {ag.samples:,} frames")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))    # beside the axes: never over a dot
    fig.tight_layout()
    return fig


def sample_frames(samples, count: int, seed: int = 0) -> Batch:
    """A random batch of `count` frames (with boids) from a SampleSet, for statistics over many frames
    (all of them, in random order, when it has fewer)."""
    count = whole_number("count", count, 1)
    seed = whole_number("seed", seed, 0, C.SEED_MAX)
    rows = (_sample_set(samples).n > 0).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(seed)
    rows = rows[torch.randperm(len(rows), generator=g)[:count]]
    b = samples.batch(rows)
    b.pop("target", None)
    return b


# ---------------------------------------------------------------------- models for the notebooks
def load_best_model(directory: Union[str, Path, None] = None, train_if_missing: bool = True,
                    epochs: Optional[int] = None, verbose: bool = True):
    """best_model.pt from directory (checkpoint_dir() by default), in eval mode on the CPU.

    directory may also name the checkpoint file itself (a path ending in .pt, or an existing file).

    With no checkpoint there, trains a small model (sizes()['fallback_*'], nothing written to
    disk) when train_if_missing, and says so first; otherwise raises FileNotFoundError.
    Returns (model, message). model.world_config is the world it was trained in, which
    predlab.evaluate's compare and rollout then draw their episodes from, as `python -m predlab.evaluate`
    does for the checkpoint (the message names how it differs from the browser's); a trainer that trains
    the model on in another world drops it.
    """
    from .checkpoint import CheckpointError, describe_best, load_checkpoint_dict, model_from_checkpoint
    from .evaluate import checkpoint_world, world_differences

    if epochs is not None:
        epochs = whole_number("epochs", epochs, 1)
    if not isinstance(train_if_missing, bool):
        raise TypeError(f"train_if_missing must be True or False, got {train_if_missing!r}")
    path = Path(directory if directory is not None else checkpoint_dir())
    if not (path.suffix == ".pt" or path.is_file()):
        path = path / "best_model.pt"
    if path.is_file():
        # one read: a training run that replaces best_model.pt meanwhile must not pair this
        # file's description with the next file's weights
        ck = load_checkpoint_dict(path)
        model = model_from_checkpoint(ck, path)
        unknown = ""
        try:        # the world of this read of the file (not of a later one)
            model.world_config = checkpoint_world(ck.get("world_config"), path)
        except CheckpointError as e:     # a world this predlab does not know: the model loads all the same
            model.world_config = WorldConfig()
            unknown = f"; {e}: evaluated in the browser's world"
        best = describe_best(ck.get("monitor", "val_loss"), ck.get("best_metric"), ck.get("best_epoch", "?"))
        msg = f"loaded {path} (best {best}, {model.num_parameters():,} parameters)"
        differs = world_differences(model.world_config)
        if differs:     # evaluate.compare(model) draws from it, as `python -m predlab.evaluate` does, which says so
            msg += f"; trained in a world other than the browser's: {', '.join(differs)}"
        msg += unknown
    elif path.exists() or path.is_symlink():     # a folder under the checkpoint's name: "no checkpoint" hid it
        from .export import not_a_file
        raise FileNotFoundError(f"{path} is a directory, not a checkpoint: move it away, or name the checkpoint"
                                if path.is_dir() else not_a_file(path, f"{path} cannot be read"))
    elif not train_if_missing:
        raise FileNotFoundError(f"no checkpoint at {path}: run notebooks/02_train.ipynb or `make train` first")
    else:
        from .train import create_trainer

        S = sizes()
        epochs = S["fallback_epochs"] if epochs is None else epochs
        if verbose:     # (seconds on a laptop, with nothing else shown)
            print(f"no checkpoint at {path}: training a small model instead ({epochs} epoch(s) of "
                  f"{S['fallback_episodes']} episodes)...", flush=True)
        trainer = create_trainer(train_episodes=S["fallback_episodes"], val_episodes=S["val_episodes"],
                                 world_config=WorldConfig(frames=S["data_frames"]), progress=False, verbose=False)
        try:
            trainer.train(epochs)
        finally:
            trainer.train_dataset.generator.close()
        model = trainer.model.cpu().eval()
        model.world_config = trainer.world_config
        # the model of the last epoch, not of the best one: its own val MSE (best_metric may be an earlier epoch's)
        msg = (f"no checkpoint at {path}: trained a small model instead ({epochs} epoch(s) of "
               f"{S['fallback_episodes']} episodes, val MSE {trainer.history[-1]['val_loss']:.4f}); "
               f"run 02_train.ipynb for a real one")
    if verbose:
        print(msg)
    return model, msg


def _browser_model(model) -> None:
    """TypeError unless model is a TransformerPredator (a path or a state_dict gave AttributeError 'config')."""
    from .model import TransformerPredator
    if not isinstance(model, TransformerPredator):
        raise _not_a_model(model)


def export_for_browser(model, directory: Union[str, Path]) -> Dict:
    """model.js and model.json for the browser page in directory (what notebook 04 writes).

    A model of sizes the stock page refuses goes to directory/not-browser-size/ instead, so that
    nothing the page cannot load lands where its model.js is expected. Files already there that
    hold other weights are moved to previous/<time>/ beside them, never overwritten.
    Returns {"paths": [model.js, model.json], "browser_sizes": bool, "message": str}.
    """
    from .export import (SIZE_KEYS, atomic_write_text, deferred_interrupt, differs, kept_words, model_to_params,
                         params_to_text, unexpanded_home, validate_params, write_keeping)

    problem = unexpanded_home(directory)
    if problem:
        raise ValueError(f"export_for_browser: {problem}")

    def check_folder(folder: Path) -> None:      # the nearest existing path on the way must be a folder
        for p in (folder, *folder.parents):
            if p.exists():
                if not p.is_dir():
                    raise ValueError(f"directory {directory} must be a folder to write model.js and model.json "
                                     f"in, but {p} is a file")
                return

    _browser_model(model)
    check_folder(Path(directory))
    if Path(directory).suffix.lower() in (".js", ".json") and not Path(directory).is_dir():
        # "checkpoints/model.js" made a folder of that name, holding the files: then nothing could write
        # the model.js the page and the demo load there
        raise ValueError(f"directory {directory} names a weight file: give the folder to write model.js and "
                         f"model.json in (here {Path(directory).parent})")
    params = model_to_params(model)
    validate_params(params)               # before anything moves or is written
    sizes = {k: int(params[k]) for k in SIZE_KEYS}
    ok = sizes == C.BROWSER_SIZES
    out = Path(directory) if ok else Path(directory) / "not-browser-size"
    check_folder(out)
    paths = [out / "model.js", out / "model.json"]
    texts = [params_to_text(params, p.suffix[1:]) for p in paths]
    notes = [] if ok else [
        "the browser page refuses these sizes: " + ", ".join(f"{k} {sizes[k]} (page: {C.BROWSER_SIZES[k]})"
                                                             for k in SIZE_KEYS if sizes[k] != C.BROWSER_SIZES[k])
        + f"; written to {out} instead, for predlab and a page built for them"]
    # bytes: a hand-edited file with a Latin-1 comment (which predlab reads) made read_text raise
    other = [p for p, text in zip(paths, texts) if differs(p, text)]
    with deferred_interrupt():    # a Ctrl-C once the old files had moved left the folder with no model.js
        # a model.js linked into a page's folder stays a link, written through; a failed write leaves the files
        # not yet written as they were
        kept = write_keeping([(p, lambda p, text=text: atomic_write_text(p, text)) for p, text in zip(paths, texts)],
                             other, out)
    if kept is not None:
        notes.append(kept_words(other, kept, " of other weights"))
    return {"paths": paths, "browser_sizes": ok, "message": "; ".join(notes)}


# ---------------------------------------------------------------------- PyTorch vs JavaScript
def node_available() -> bool:
    """Whether a `node` executable is on PATH (the JS parity check needs it)."""
    return shutil.which("node") is not None


def js_parity(model, samples: Sequence[Mapping], weights: Union[str, Path, None] = None,
              node: str = "node") -> Dict[str, np.ndarray]:
    """Run the same browser-form inputs through PyTorch and through predlab/js under Node.

    samples: browser-form dicts (or one). weights: a model.js/.json already written for `model`
    (ValueError when it holds other weights; written to a temporary folder if None).
    Returns {'torch': [B, 2], 'js': [B, 2], 'max_abs_diff': float}. Temporary files go to the
    system temp folder, never the repo.
    """
    from .export import model_to_params, read_weights, write_weights

    _browser_model(model)
    script = Path(__file__).resolve().parent / "js" / "run_node.js"
    # one browser dict is one input (as predict takes it): list() of it gave its keys, "sample 0 must be a dict"
    samples = [samples] if isinstance(samples, Mapping) else list(samples)   # an iterator: read once
    if weights is not None:
        # another model's file (another size, or an earlier export) ran in Node against this model in PyTorch:
        # the difference reported was between two models, not between the engines
        mine, theirs = model_to_params(model), model_to_params(read_weights(weights))
        if mine != theirs:
            sizes = ", ".join(f"{k} {theirs[k]} (model: {mine[k]})" for k in ("d_model", "n_heads", "n_layers",
                                                                                 "ffn_hidden") if theirs[k] != mine[k])
            raise ValueError(f"weights {weights} hold other weights than model "
                             f"({sizes or 'same sizes, other values'}): give the file written for this model "
                             "(write_weights, export_for_browser), or weights=None to write one")
    torch_out = model.predict(samples).double().cpu().numpy()                      # [B, 2]
    with tempfile.TemporaryDirectory(prefix="predlab-parity-") as tmp:
        if weights is None:
            weights = write_weights(model, Path(tmp) / "model.js")
        inputs = Path(tmp) / "inputs.json"
        # the numbers predict read, as plain floats: numpy scalars (np.float32) are numbers to predict, not to json
        from .data import collate, to_dicts
        inputs.write_text(json.dumps(to_dicts(collate(samples, dtype=torch.float64))))
        res = subprocess.run([node, str(script), str(weights), str(inputs)], capture_output=True, text=True,
                             timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"node failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    js_out = np.asarray(json.loads(res.stdout), dtype=np.float64).reshape(-1, 2)
    return {"torch": torch_out, "js": js_out, "max_abs_diff": float(np.abs(torch_out - js_out).max(initial=0.0))}


def plot_parity(torch_out: np.ndarray, js_out: np.ndarray, figsize=(8, 3.6)) -> Figure:
    """Left: JS action against PyTorch action (x and y components; y = x is perfect). Right: |difference|."""
    figsize = _figsize(figsize)
    t, j = np.asarray(torch_out, dtype=np.float64), np.asarray(js_out, dtype=np.float64)
    if t.shape != j.shape or t.ndim != 2 or t.shape[1] != 2:
        raise ValueError(f"torch_out and js_out must both be [B, 2] actions for the same inputs, got shapes "
                         f"{list(t.shape)} and {list(j.shape)}")
    diff = np.abs(t - j)
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot([-1, 1], [-1, 1], c="0.7", lw=1)
    ax.scatter(t[:, 0], j[:, 0], s=14, label="action x")
    ax.scatter(t[:, 1], j[:, 1], s=14, marker="x", label="action y")
    ax.set(xlabel="PyTorch", ylabel="JavaScript (Node)", title="same inputs, both engines", aspect="equal")
    ax.legend(fontsize=8)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.bar(np.arange(len(diff)), diff.max(1) + 1e-12, color="tab:purple")
    ax2.set_yscale("log")
    ax2.set(xlabel="input", ylabel="max |PyTorch - JS|", title=f"largest difference {diff.max(initial=0):.2e}")
    fig.tight_layout()
    return fig
