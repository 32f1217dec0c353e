"""Notebook controls: ipywidgets built from the config dataclasses, and the callbacks they call.

Each slider takes its description, help text (tooltip), default and lower bound from the
field's metadata in config.py, so the widgets and the CLI cannot drift apart. Every callback
is a plain function of the widget values (rerun_sim, train_kwargs, show_attention), so tests
call it directly: CI never moves a slider.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import sys
import traceback
from typing import Dict, Mapping, Optional

import ipywidgets as W
import numpy as np

from . import config as C
from .config import ModelConfig, TrainConfig, WorldConfig, real_number, whole_number
from .viz import _in_notebook


def _field(cls, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _check_value(name: str, v, lo, hi, whole: bool):
    """v if it is a number (a whole one when whole) in [lo, hi] (None: no bound); else a
    TypeError/ValueError naming `name`."""
    if whole:
        return whole_number(name, v, -2 ** 63 if lo is None else lo, hi)
    return real_number(name, v, lo, hi)


def field_widget(cls, name: str, value=None, max=None, min=None, step=None, description: Optional[str] = None,
                 log: bool = False, tooltip: Optional[str] = None) -> W.Widget:
    """A slider for one config field: default, lower bound and tooltip from its metadata.

    `max` is required where the metadata has none (sliders need an upper end); log=True gives
    a slider over 1, 2, 3 and 5 times each power of ten from min to max, its ends and starting
    value included (for learning rates: 3e-4, where tenths of a decade gave 3.16e-4); tooltip
    replaces the field's help where the slider means something narrower (one episode's size, not
    a range's end). Sliders only fire on release (continuous_update=False); an IntSlider steps
    from its min, so min is on the grid, and so is the starting value: the step shrinks to the
    largest that divides value - min.
    A value outside [min, max] is refused (a slider would silently clamp it), as is log=True
    with a min that is not > 0.
    """
    f = _field(cls, name)
    lo = f.metadata.get("min", 0) if min is None else min
    hi = f.metadata.get("max") if max is None else max
    val = f.default if value is None else value
    common = dict(description=description or name.replace("_", " "), tooltip=tooltip or f.metadata.get("help", ""),
                  continuous_update=False, style={"description_width": "initial"},
                  layout=W.Layout(width="420px"))
    if hi is None:
        raise ValueError(f"{cls.__name__}.{name} has no max in its metadata: pass max=")
    whole = isinstance(f.default, int) and not isinstance(f.default, bool) and not log
    lo = _check_value("min", lo, None, None, whole)
    hi = _check_value("max", hi, lo, None, whole)
    if log and not lo > 0:
        raise ValueError(f"{cls.__name__}.{name}: a log slider needs min > 0, got min={lo}: pass min=")
    val = _check_value(name, val, lo, hi, whole)
    if log:
        marks = {float(lo), float(hi), float(val)}
        grid = sorted(marks | {g for g in _round_values(lo, hi)
                               if not any(math.isclose(g, m, rel_tol=1e-9) for m in marks)})
        return W.SelectionSlider(options=[(_short(v), v) for v in grid], value=float(val), **common)
    if isinstance(f.default, int) and not isinstance(f.default, bool):
        # a start off the grid min + k * step (a 604 px canvas on the 8 px grid from 320) could not be
        # chosen again once the slider moved: the step shrinks to the largest that holds it (4 there)
        step = math.gcd(int(step or 1), int(val) - int(lo))
        return W.IntSlider(value=int(val), min=int(lo), max=int(hi), step=step, **common)
    return W.FloatSlider(value=float(val), min=float(lo), max=float(hi), step=step or 0.1, **common)


def _round_values(lo: float, hi: float) -> list:
    """1, 2, 3 and 5 times each power of ten in [lo, hi], as their literals read (3e-4 is 0.0003)."""
    return [v for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for v in (float(f"{m}e{k}") for m in (1, 2, 3, 5)) if lo <= v <= hi]


def _short(v: float) -> str:
    """3e-4, 2.5e-3: a learning rate as people write it."""
    m, e = f"{v:.6e}".split("e")
    return f"{float(m):g}e{int(e)}"


def _slider_value(name: str, w: W.Widget, v):
    """v checked against slider w's range and steps (a log slider's marks, within rounding) or
    dropdown w's choices; other widgets check their own."""
    if isinstance(w, W.Dropdown):   # its own refusal named no control, and came after the controls before it were set
        choices = [o[1] if isinstance(o, tuple) else o for o in w.options]     # options may be (label, value)
        # of the choice's kind too: True == 1 and 1.0 == 1, but neither is head 1
        if not any(v == c and _kind(v) == _kind(c) for c in choices):
            raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {v!r}")
        return v
    if isinstance(w, W.SelectionSlider):      # field_widget's log=True: a value between its marks could not be
        grid = [o[1] for o in w.options]      # chosen again once the slider moved
        real_number(name, v, grid[0] * (1 - 1e-9), grid[-1] * (1 + 1e-9))
        near = [g for g in grid if math.isclose(v, g, rel_tol=1e-9)]
        if not near:
            i = sum(g < v for g in grid)
            raise ValueError(f"{name} must be one of the slider's values "
                             f"({' or '.join(_short(g) for g in grid[i - 1:i + 1])} nearby), got {v!r}")
        return near[0]
    if isinstance(w, (W.IntSlider, W.FloatSlider)):
        v = _check_value(name, v, w.min, w.max, isinstance(w, W.IntSlider))
        # on the slider's grid, min + k * step: a value off it could not be chosen again once the slider moved
        k = (v - w.min) / w.step
        if abs(k - round(k)) > 1e-6 and v != w.value:         # (a start off the grid, from a default, is held)
            below = w.min + math.floor(k) * w.step
            near = [x for x in (below, below + w.step) if x <= w.max]
            fmt = (lambda x: f"{x:g}") if isinstance(w, W.FloatSlider) else str
            raise ValueError(f"{name} must be on the slider's steps of {fmt(w.step)} from {fmt(w.min)} "
                             f"({' or '.join(fmt(x) for x in near)}), got {v!r}")
        return v
    return v


def _kind(v) -> str:
    """bool, whole (numpy's too), real, or the type's name: what a dropdown's choice must match besides =="""
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, numbers.Integral):
        return "whole"
    return "real" if isinstance(v, numbers.Real) else type(v).__name__


class Controls:
    """A named set of widgets shown as one box; values() reads them all as a dict."""

    def __init__(self, widgets: Mapping[str, W.Widget], output: Optional[W.Output] = None):
        self.widgets = dict(widgets)
        self.output = output
        items = list(self.widgets.values()) + ([output] if output is not None else [])
        self.box = W.VBox(items)
        self.redraw = None        # what a panel that redraws on a move calls (_wire sets it)
        self._holding = False     # set() is setting values: no redraw per value

    def values(self) -> Dict:
        return {k: w.value for k, w in self.widgets.items()}

    def set(self, **values) -> None:
        """Set widget values (as a user would); observers fire as for a slider move, and a panel
        that redraws on a move redraws once, with all of them set. TypeError
        naming the controls there are for a name that is none of them, and TypeError/ValueError
        for a value a slider cannot hold (it would clamp 1000 to its max, or cut 2.5 to 2) or a
        dropdown does not offer; then nothing is set."""
        unknown = [k for k in values if k not in self.widgets]
        if unknown:
            raise TypeError(f"no control named {', '.join(map(repr, unknown))}: these are {', '.join(self.widgets)}")
        values = {k: _slider_value(k, self.widgets[k], v) for k, v in values.items()}
        before = self.values()
        self._holding = True        # a panel that redraws records (or draws) once, not once per value
        try:
            for k, v in values.items():
                self.widgets[k].value = v
        finally:
            self._holding = False
        if self.values() != before and self.redraw is not None:
            self.redraw()

    def _ipython_display_(self):
        from IPython.display import display
        display(self.box)


# ---------------------------------------------------------------------- 01: simulation
def sim_widgets(n_boids: int = C.NUM_BOIDS, width: int = 960, height: int = 600, frames: int = 100) -> Dict[str, W.Widget]:
    """Sliders for boid count, canvas size, flocking weights and frames (WorldConfig metadata)."""
    n_boids = whole_number("n_boids", n_boids, 1, C.NUM_BOIDS)
    width = whole_number("width", width, WorldConfig.width_min, WorldConfig.width_max)
    height = whole_number("height", height, WorldConfig.height_min, WorldConfig.height_max)
    frames = whole_number("frames", frames, 1)
    # canvas sizes in 8 px steps from 320: on a 16 px grid the notebook's 600 px height was off it
    return {"n_boids": field_widget(WorldConfig, "boids_max", n_boids, max=C.NUM_BOIDS, description="boids",
                                    tooltip="boids at the start of the episode"),
            "width": field_widget(WorldConfig, "width_max", width, min=WorldConfig.width_min,
                                  max=WorldConfig.width_max, step=8,
                                  description="canvas width", tooltip="canvas width in px"),
            "height": field_widget(WorldConfig, "height_max", height, min=WorldConfig.height_min,
                                   max=WorldConfig.height_max, step=8,
                                   description="canvas height", tooltip="canvas height in px"),
            "separation_weight": field_widget(WorldConfig, "separation_weight", max=5.0),
            "cohesion_weight": field_widget(WorldConfig, "cohesion_weight", max=5.0),
            "alignment_weight": field_widget(WorldConfig, "alignment_weight", max=5.0),
            "frames": field_widget(WorldConfig, "frames", frames, max=max(500, frames), description="frames",
                                   tooltip="frames to record (the animation shows them all, catches or not)")}


def rerun_sim(n_boids: int, width: int, height: int, separation_weight: float, cohesion_weight: float,
              alignment_weight: float, frames: int, seed: int = 0):
    """What the simulation sliders call: record a teacher rollout with these values -> (Rollout, html)."""
    from .viz import animate_rollout, animation_html, record_rollout

    cfg = WorldConfig(separation_weight=separation_weight, cohesion_weight=cohesion_weight,
                      alignment_weight=alignment_weight)
    ro = record_rollout(frames=frames, n_boids=n_boids, width=width, height=height, seed=seed, cfg=cfg)
    return ro, animation_html(animate_rollout(ro))


def make_sim_controls(seed: int = 0, run_now: bool = True, **defaults) -> Controls:
    """Simulation sliders plus an Output that shows rerun_sim's animation; redraws on every change.

    run_now=False draws nothing until a slider moves (a notebook that already shows the episode
    need not hold a second copy of a multi-MB animation, which also stalls headless runners).

    controls.last holds the latest (Rollout, html).
    """
    from IPython.display import HTML, display

    # checked now: with run_now=False a bad seed failed at the first slider move, inside a widget
    # callback, whose error JupyterLab shows only in its log console
    seed = whole_number("seed", seed, 0, C.SEED_MAX)
    ctl = Controls(sim_widgets(**defaults), W.Output())
    ctl.last = None

    def redraw(_change=None):
        if _in_notebook():   # recording and rendering take seconds: say so in place of the old episode
            with ctl.output:
                ctl.output.clear_output()
                print(f"recording {ctl.values()['frames']} frames with these settings...")
        ctl.last = rerun_sim(**ctl.values(), seed=seed)
        if not _in_notebook():
            return
        with ctl.output:
            ctl.output.clear_output(wait=True)
            display(HTML(ctl.last[1]))

    if not run_now and _in_notebook():
        with ctl.output:
            print("Move a slider to record an episode with those settings.")
    return _wire(ctl, redraw, run_now)


def _wire(ctl: "Controls", redraw, run_now: bool) -> "Controls":
    """Redraw the panel whenever one of its widgets changes (and once now, if asked).

    A redraw that fails (or is interrupted) leaves controls.last None and says so in the panel, whether a
    slider moved or Controls.set called it; set() raises it too, in its cell."""
    def guarded(change=None):
        try:
            redraw(change)
        except BaseException as e:      # noqa: BLE001 (an interrupted kernel too)
            # the panel kept "recording 500 frames..." with controls.last of other settings than the sliders':
            # so did Controls.set, which called redraw past this handler
            ctl.last = None
            if _in_notebook():
                what = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {type(e).__name__}: {e}"
                with ctl.output:
                    ctl.output.clear_output()
                    if not isinstance(e, KeyboardInterrupt):     # where it came from, in the panel
                        traceback.print_exc(file=sys.stdout)
                    print(f"{what}; move a slider to draw again")
            raise

    def on_change(change):
        if ctl._holding:         # Controls.set redraws once, after its last value
            return
        try:
            guarded(change)
        except BaseException:      # noqa: BLE001
            if not _in_notebook():
                raise
            # a slider's callback: JupyterLab shows its error only in the log console; the panel says it

    for w in ctl.widgets.values():
        w.observe(on_change, names="value")
    ctl.redraw = guarded
    if run_now:
        redraw()
    return ctl


# ---------------------------------------------------------------------- 02: training
TRAIN_CONTROLS = ("learning_rate", "batch_size", "epochs", "train_episodes", "val_episodes", "d_model", "n_heads",
                  "n_layers", "ffn_hidden")


def make_train_controls(**defaults) -> Controls:
    """Inputs for learning rate, batch size, epochs, episodes per epoch and model size (config metadata).

    defaults: starting values for these inputs, by name (TRAIN_CONTROLS); other names are refused.
    """
    unknown = sorted(set(defaults) - set(TRAIN_CONTROLS))
    if unknown:
        raise TypeError(f"make_train_controls got unknown argument(s) {', '.join(unknown)}; "
                        f"it takes {', '.join(TRAIN_CONTROLS)}")
    d = {f.name: f.default for cls in (TrainConfig, ModelConfig) for f in dataclasses.fields(cls)}
    d.update(defaults)
    for k in ("epochs", "train_episodes", "val_episodes"):      # their slider's end grows to fit them
        whole_number(k, d[k], 1)
    lr = d["learning_rate"]     # so do the learning rate's (1e-6 to fine-tune, say); not to 0 or below
    if isinstance(lr, numbers.Real) and not isinstance(lr, bool) and not 0 < lr < math.inf:
        raise ValueError(f"learning_rate must be a positive finite number, got {float(lr):g}")
    lo, hi = (min(1e-5, lr), max(1e-1, lr)) if isinstance(lr, numbers.Real) and 0 < lr < math.inf else (1e-5, 1e-1)
    return Controls({
        "learning_rate": field_widget(TrainConfig, "learning_rate", lr, min=lo, max=hi, log=True,
                                      description="learning rate"),
        # its end grows to fit a GPU's batch too (the README suggests 4096 and more there)
        "batch_size": field_widget(TrainConfig, "batch_size", d["batch_size"], min=16,
                                   max=max(2048, whole_number("batch_size", d["batch_size"], 1)), step=16,
                                   description="batch size"),
        "epochs": field_widget(TrainConfig, "epochs", d["epochs"], max=max(200, d["epochs"])),
        "train_episodes": field_widget(TrainConfig, "train_episodes", d["train_episodes"],
                                       max=max(2000, d["train_episodes"]), description="episodes / epoch"),
        "val_episodes": field_widget(TrainConfig, "val_episodes", d["val_episodes"], max=max(500, d["val_episodes"]),
                                     description="validation episodes"),
        "d_model": field_widget(ModelConfig, "d_model", d["d_model"], min=8, max=256, step=8),
        "n_heads": field_widget(ModelConfig, "n_heads", d["n_heads"], max=16),
        "n_layers": field_widget(ModelConfig, "n_layers", d["n_layers"], max=12),
        "ffn_hidden": field_widget(ModelConfig, "ffn_hidden", d["ffn_hidden"], min=8, max=1024, step=8),
    })


def train_kwargs(learning_rate: float, batch_size: int, epochs: int, train_episodes: int, val_episodes: int,
                 d_model: int, n_heads: int, n_layers: int, ffn_hidden: int, **extra) -> Dict:
    """Training-control values -> {"trainer": create_trainer keyword arguments (with `extra`), "epochs":
    epochs for trainer.train}: a dict, not a pair to unpack. Validates them as TrainConfig and ModelConfig
    do (whole numbers where those are, within their ranges)."""
    TrainConfig(learning_rate=learning_rate, batch_size=batch_size, epochs=epochs, train_episodes=train_episodes,
                val_episodes=val_episodes).validate()
    mc = ModelConfig(d_model=d_model, n_heads=n_heads, n_layers=n_layers, ffn_hidden=ffn_hidden)
    mc.validate()
    kw = dict(learning_rate=float(learning_rate), batch_size=int(batch_size), train_episodes=int(train_episodes),
              val_episodes=int(val_episodes), model_config=mc, **extra)
    return {"trainer": kw, "epochs": int(epochs)}


def train_epochs(controls: Controls, trainer) -> int:
    """What the training cell passes to trainer.train: the epochs control as it is now, with a warning
    (on stderr, each time) naming every other training control that differs from what the trainer has.

    A learning rate, batch size, episode count or model size moved after the trainer was built
    does not reach it, and running only the training cell trained with the old values without a
    word (so did a trainer left from an earlier run when building the new one failed). Epochs do
    reach it (trainer.train(N) goes on to epoch N), so that slider counts. A model started from a
    file (init_weights) has the file's sizes: a size control left at its default is not compared.
    A run already at the slider's epochs is told how to train on (on stdout): the cell then trains
    nothing, and train()'s own warning spoke of train(N + 10), which the cell never calls.
    """
    if not isinstance(controls, Controls):
        raise TypeError(f"controls must be the Controls of make_train_controls, not {type(controls).__name__}")
    tc, mc = getattr(trainer, "train_config", None), getattr(getattr(trainer, "model", None), "config", None)
    if not (isinstance(tc, TrainConfig) and isinstance(mc, ModelConfig)):
        raise TypeError(f"trainer must be a trainer of predlab.train.create_trainer, not {type(trainer).__name__}")
    now = controls.values()
    moved = []
    for name in TRAIN_CONTROLS:
        if name == "epochs" or name not in now:
            continue
        size = name in ModelConfig.__dataclass_fields__
        has = getattr(mc if size else tc, name)
        if size and tc.init_weights is not None and now[name] == getattr(ModelConfig, name):
            continue
        if not math.isclose(now[name], has, rel_tol=1e-9):
            moved.append(f"{name} {now[name]:g} (trainer: {has:g})")
    if moved:     # printed, not warnings.warn: that says it once, and the cell may run again with them unchanged
        print("warning: the controls differ from the trainer's settings: " + ", ".join(moved) + "; the trainer "
              "keeps its own: build it again (a new run) to train with the controls' values", file=sys.stderr)
    epochs = whole_number("epochs", now["epochs"], 1)
    from .train import stretched_rates
    rates = stretched_rates(trainer, trainer.scheduler.total, epochs) if trainer.epoch else None
    if rates is not None:   # train(N) stretches the cosine to N: a finished run's 1e-4 rose to 1.3e-3 unsaid
        print(f"note: the epochs slider at {epochs} stretches the run's schedule of {trainer.scheduler.total:g} "
              f"epochs: the learning rate goes back up from {rates[0]:.1e}, where epoch {trainer.epoch} ended, to "
              f"{rates[1]:.1e} as epoch {trainer.epoch + 1} begins. To polish a finished model at a low rate "
              f"instead, set INIT_WEIGHTS to its best_model.pt, lower the learning rate, and build the trainer again",
              file=sys.stderr)
    if trainer.epoch >= epochs:
        print(f"nothing to train: this run has done {trainer.epoch} epoch(s) and the epochs slider asks for "
              f"{epochs}: move it past {trainer.epoch} and run this cell again to train on (or build the trainer "
              f"again: a new run)")
    return epochs


def fine_tune_start(trainer) -> Optional[float]:
    """The validation MSE of the weights a run started from a file (create_trainer's init_weights) has
    before training, printed: what its epochs must beat, as the command line prints it. None (and
    nothing printed) for a run not started from a file. Without it, the live plot's first point was the
    first epoch's, and a learning rate too high for fine-tuning (it undoes the model) went unseen.
    ValueError for weights whose actions are not finite (predlab.train.fine_tune_start)."""
    from .train import fine_tune_start as start, init_world_note, start_words
    path = getattr(getattr(trainer, "train_config", None), "init_weights", None)
    if path is None:
        return None
    mse = start(trainer)
    print(f"starting from the weights of {path}: {start_words(trainer, mse)} before training")
    note = init_world_note(path, trainer.world_config)
    if note:
        print(note, file=sys.stderr)
    return mse


def fine_tune_verdict(trainer, start: Optional[float]) -> bool:
    """After training a run started from a file: a warning (on stderr) when no epoch beat the file's own
    val MSE `start` (from fine_tune_start), with what to try; nothing otherwise. -> whether it warned
    (export_verdict's `worse`)."""
    from .train import fine_tune_shortfall, init_weights_moved
    shortfall = fine_tune_shortfall(trainer, start)
    if shortfall:
        moved = init_weights_moved(trainer)     # built again as it is, the trainer would start from this run's
        redo = f"set INIT_WEIGHTS to {str(moved)!r}, " if moved is not None else ""
        print(f"warning: {shortfall}: try a lower learning rate ({redo}move the slider, then build the trainer "
              f"again)", file=sys.stderr)
    return bool(shortfall)


def export_verdict(folder, worse: bool = False) -> None:
    """After a notebook's run: a line when the folder's model.js (what `python -m predlab.demo` and the page
    load) is not of its best_model.pt, which the run wrote; nothing when it is, or when there is no best.
    The notebooks leave the export to 04_export.ipynb, and a run left an earlier export beside its new best
    without a word. worse (fine_tune_verdict's): the run did worse than the weights it started from, and
    the line invited an export that replaced a better model.js."""
    from pathlib import Path

    from .checkpoint import load_model
    from .export import SIZE_KEYS, read_weights
    folder = Path(folder)
    best = folder / "best_model.pt"
    if not best.is_file():
        return
    try:
        model = load_model(best)
    except Exception:       # noqa: BLE001 (the training cell's own line names the file; no verdict on it here)
        return
    # sizes the page refuses: 04 writes them to not-browser-size/, never over the folder's model.js
    page = all(getattr(model.config, k) == C.BROWSER_SIZES[k] for k in SIZE_KEYS)
    js = folder / "model.js" if page else folder / "not-browser-size" / "model.js"
    if not js.is_file():
        print(f"no model.js of this best_model.pt in {js.parent} yet: 04_export.ipynb writes it"
              + ("" if page else " there (the stock page refuses its sizes)"))
        return
    try:
        a, b = model.state_dict(), read_weights(js).state_dict()
        same = a.keys() == b.keys() and all(a[k].shape == b[k].shape and bool((a[k] == b[k]).all()) for k in a)
    except Exception:       # noqa: BLE001 (an unreadable file of either kind is no export of this model)
        same = False
    if not same and worse:
        print(f"{js} is an earlier export, not of this best_model.pt, which did worse than the weights it started "
              f"from (above): keep it, or export this one with 04_export.ipynb only to replace it")
    elif not same:
        print(f"{js} is an earlier export, not of this best_model.pt: the demo and the page run that one until "
              f"04_export.ipynb exports this one")


# ---------------------------------------------------------------------- 03: attention
def show_attention(model, batch, frame: int, layer: int, head):
    """What the attention sliders call: the overlay figure for one frame/layer/head ('mean' = average)."""
    from .viz import plot_attention_overlay

    return plot_attention_overlay(model, batch, layer=layer, head=head, index=frame)


def make_attention_controls(model, batch, run_now: bool = True, frame: Optional[int] = None,
                            layer: int = 0) -> Controls:
    """Frame, layer and head sliders over a batch of frames; the overlay redraws on each change.

    It opens at `frame` (by default the middle one: an episode's first frames have the flock
    still bunched at its spawn point) and `layer` (the first, where one head of a trained model
    follows the teacher's target: `make train`'s model agreed in 0.96 of frames, chance 0.09;
    the later layers' [CLS] puts more of its attention on boids, 0.83 and 0.86 against 0.25, but
    spread over them).
    """
    from IPython.display import display

    from .viz import _attention_inputs, _index

    model, batch = _attention_inputs(model, batch)
    B = batch["mask"].shape[0]
    cfg = model.config
    if B == 0:
        raise ValueError("batch has no frames: the attention sliders need at least one")
    frame = B // 2 if frame is None else _index("frame", frame, B)
    layer = _index("layer", layer, cfg.n_layers, "layers")
    ctl = Controls({"frame": W.IntSlider(frame, min=0, max=B - 1, description="frame", continuous_update=False),
                    "layer": W.IntSlider(layer, min=0, max=cfg.n_layers - 1, description="layer",
                                         continuous_update=False),
                    "head": W.Dropdown(options=["mean"] + list(range(cfg.n_heads)), value="mean",
                                       description="head")}, W.Output())
    ctl.last = None

    def redraw(_change=None):
        ctl.last = show_attention(model, batch, **ctl.values())
        if not _in_notebook():
            return
        with ctl.output:
            ctl.output.clear_output(wait=True)
            display(ctl.last)

    return _wire(ctl, redraw, run_now)
