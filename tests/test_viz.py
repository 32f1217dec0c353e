"""viz.py and widgets.py: every function the notebooks call, on small inputs, headless (Agg)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from predlab import viz, widgets
from predlab.config import ModelConfig, TrainConfig, WorldConfig
from predlab.data import generate_episodes, to_dicts
from predlab.teacher import closest_pursuit, nearest_boid


@pytest.fixture(scope="module")
def samples():
    return generate_episodes(3, WorldConfig(frames=15, boids_min=1, boids_max=9), seed=3)


@pytest.fixture(scope="module")
def rollout():
    return viz.record_rollout(frames=6, n_boids=7, width=320, height=240, seed=1)


def test_quick_mode_and_sizes(monkeypatch):
    monkeypatch.setenv("PREDLAB_QUICK", "1")
    assert viz.quick_mode()
    quick = viz.sizes()
    monkeypatch.setenv("PREDLAB_QUICK", "0")
    assert not viz.quick_mode()
    full = viz.sizes()
    assert set(quick) == set(full)
    assert all(quick[k] <= full[k] for k in quick)
    assert quick["epochs"] < full["epochs"] and quick["frames"] < full["frames"]


def test_quick_runs_catch_check_has_teacher_catches_to_compare_with():
    """At 4 episodes x 40 frames the teacher caught nothing, so quick runs of 02 and 03 (CI's) printed a
    warning to raise those sizes, never drew the live plot's catch panel and showed no ratio under 03's
    text about its interval."""
    from predlab import evaluate

    S = viz.sizes(quick=True)
    for world in (WorldConfig(frames=S["data_frames"]), None):      # 02's training world, 03's browser world
        teacher = evaluate.rollout(evaluate.teacher_policy, episodes=S["eval_episodes"], frames=S["eval_frames"],
                                   seed=0, world_config=world)
        assert teacher.catches.sum() > 0


def test_paths_point_into_the_repo(monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root / "notebooks")  # as the notebooks run: `make train` wrote under the root
    assert viz.repo_root() == root
    assert viz.checkpoint_dir(quick=False) == root / "checkpoints"
    assert viz.checkpoint_dir(quick=True) == root / "checkpoints" / "quick"
    assert viz.runs_dir(quick=False) == root / "runs"
    assert viz.runs_dir(quick=True) == root / "runs" / "quick"


def test_paths_outside_a_checkout_are_the_notebooks_own_folder(monkeypatch, tmp_path):
    """Notebooks opened outside a predlab checkout keep their files beside them, not in the checkout predlab
    happens to be installed from, nor in another project whose pyproject.toml is above them."""
    other = tmp_path / "myapp"
    (other / "predlab").mkdir(parents=True)                 # even with a folder of that name
    (other / "predlab" / "__init__.py").write_text("")
    (other / "pyproject.toml").write_text('[project]\nname = "myapp"\nversion = "0"\n')
    (other / "work").mkdir()
    monkeypatch.chdir(other / "work")
    assert viz.repo_root() == other / "work"
    assert viz.checkpoint_dir(quick=False) == other / "work" / "checkpoints"
    assert viz.runs_dir(quick=False) == other / "work" / "runs"
    (other / "pyproject.toml").write_text("[project]\nname = 'predlab'\n")  # a checkout of predlab: its root
    assert viz.repo_root() == other


def test_record_rollout_shapes_and_teacher(rollout):
    T, N = 6, 7
    assert len(rollout) == T
    assert rollout.pos.shape == (T, N, 2) and rollout.alive.shape == (T, N) and rollout.pred_pos.shape == (T, 2)
    assert rollout.size == (320.0, 240.0)
    assert np.allclose(rollout.pred_pos[0], [160, 120])           # the predator starts at the centre
    assert np.allclose(np.linalg.norm(rollout.teacher, axis=1), 1, atol=1e-5)
    assert np.allclose(rollout.action, rollout.teacher)          # the teacher drove
    b = rollout.batch([0, 5])
    assert b["boids"].shape == (2, N, 4) and b["mask"].dtype == torch.bool
    assert rollout.batch(-1)["boids"].shape == (1, N, 4) and rollout.batch()["boids"].shape == (T, N, 4)
    for bad, error, message in ((1.5, TypeError, "frames must be a frame number"),   # numpy's IndexError once
                                ([], TypeError, "non-empty list"), (True, TypeError, "frame number"),
                                (6, IndexError, "this rollout has frames 0..5")):
        with pytest.raises(error, match=message):
            rollout.batch(bad)
    again = viz.record_rollout(frames=6, n_boids=7, width=320, height=240, seed=1)
    assert np.array_equal(again.pos, rollout.pos)                # seeded


def test_record_rollout_with_policy_and_catches():
    still = viz.record_rollout(frames=4, n_boids=3, width=200, height=200, seed=0,
                               policy=lambda obs: torch.zeros(1, 2))
    assert np.allclose(still.action, 0) and not np.allclose(still.teacher, 0)
    # a long chase on a tiny canvas catches something, and caught adds up to the boids lost
    ro = viz.record_rollout(frames=300, n_boids=5, width=120, height=120, seed=0)
    assert ro.caught.sum() > 0
    assert ro.alive[0].sum() - ro.alive[-1].sum() == ro.caught[:-1].sum()


def test_animation_has_one_frame_per_step(rollout):
    html = viz.animation_html(viz.animate_rollout(rollout))
    assert viz.jshtml_frame_count(html) == len(rollout)
    assert "<script" in html


def test_an_animation_cut_by_matplotlibs_embed_limit_says_how_many_frames_it_holds(rollout):
    """Past animation.embed_limit matplotlib embeds no more frames and says so in its log alone: 1,700 frames
    from the frames slider played as 1,599, the log line in JupyterLab's log console."""
    import matplotlib
    with matplotlib.rc_context({"animation.embed_limit": 0.02}):          # MB: a few frames
        with pytest.warns(UserWarning, match=rf"holds \d+ of its {len(rollout)} frames: .*embed_limit"):
            html = viz.animation_html(viz.animate_rollout(rollout))
    assert 0 < viz.jshtml_frame_count(html) < len(rollout)


def test_animation_draws_the_teacher_arrow(rollout):
    anim = viz.animate_rollout(rollout, arrow_px=50)
    artists = anim._func(3)
    anim._draw_was_started = True  # drawn by hand: no "deleted without rendering" warning
    flock, pred, arrow, applied = artists[:4]
    assert np.allclose(pred.get_offsets()[0], rollout.pred_pos[3])
    assert np.allclose([arrow.U[0], arrow.V[0]], rollout.teacher[3] * 50)
    assert len(flock.get_offsets()) == rollout.alive[3].sum()
    assert not applied.get_visible()             # the teacher drove: no grey shaft under the red arrow
    other = viz.record_rollout(frames=4, n_boids=5, width=320, height=240, seed=1,
                               policy=lambda b: -closest_pursuit(b["boids"], b["mask"]))
    anim = viz.animate_rollout(other)
    anim._draw_was_started = True
    assert anim._func(2)[3].get_visible()        # another policy drove: its action in grey


def test_animation_title_counts_the_catches_made_before_each_frame():
    """Every frame's title adds up: boids on screen + caught = the flock it started with."""
    ro = viz.record_rollout(frames=300, n_boids=5, width=120, height=120, seed=0)
    assert ro.caught[:-1].sum() > 0
    anim = viz.animate_rollout(ro)
    anim._draw_was_started = True
    for t in range(len(ro)):
        title = anim._func(t)[4].get_text()
        assert title == f"frame {t}  boids {int(ro.alive[t].sum())}  caught {5 - int(ro.alive[t].sum())}"


def test_training_data_stats_and_plot(samples):
    s = viz.training_data_stats(samples)
    assert len(s["n"]) == len(samples)
    # nearest distance against a direct loop
    for i in range(0, len(samples), 7):
        n = int(samples.n[i])
        d = min(float(np.hypot(*samples.boids[i, k, :2].numpy())) for k in range(n))
        assert np.isclose(s["nearest_px"][i], d * 1000, rtol=1e-5)
    assert np.allclose(s["angle"], np.arctan2(samples.target[:, 1].numpy(), samples.target[:, 0].numpy()))
    fig = viz.plot_training_data(samples)
    heights = sum(p.get_height() for p in fig.axes[0].patches)
    assert heights == len(samples)                               # every sample counted once
    assert sum(p.get_height() for p in fig.axes[2].patches) == len(s["angle"])
    # the counts along the shortest bar, where none hides them (the axis draws them behind the bars)
    bars = fig.axes[2].patches
    shortest = min(bars, key=lambda p: p.get_height())
    label_at = math.radians(fig.axes[2].get_rlabel_position())
    assert shortest.get_x() < label_at < shortest.get_x() + shortest.get_width()


def test_tensorboard_binary_points_the_magic_at_this_environment_s(monkeypatch, tmp_path):
    """%tensorboard looks on PATH, which holds the environment's bin folder only under `make lab`."""
    import sys
    monkeypatch.delenv("TENSORBOARD_BINARY", raising=False)
    tb = Path(sys.executable).parent / ("tensorboard.exe" if os.name == "nt" else "tensorboard")
    if not tb.is_file():
        pytest.skip("no tensorboard beside this Python")
    assert viz.tensorboard_binary() == str(tb) == os.environ["TENSORBOARD_BINARY"]
    monkeypatch.setenv("TENSORBOARD_BINARY", str(tmp_path / "mine"))
    assert viz.tensorboard_binary() == str(tmp_path / "mine")          # the user's own is kept


def test_plot_catches_is_cumulative(rollout):
    fig = viz.plot_catches([np.array([0, 1, 0, 2]), rollout], labels=["a", "b"])
    line = fig.axes[0].lines[0]
    assert list(line.get_ydata()) == [0, 1, 1, 3]
    assert len(fig.axes[0].lines) == 2


def test_plot_catches_takes_one_episode_as_a_list_or_tensor():
    """A plain list of per-frame counts was refused as 'catches[0] must be [T], got shape []'."""
    for one in ([0, 1, 0, 2], torch.tensor([0, 1, 0, 2]), np.array([0, 1, 0, 2])):
        lines = viz.plot_catches(one, labels=["a"]).axes[0].lines
        assert len(lines) == 1 and list(lines[0].get_ydata()) == [0, 1, 1, 3]


def test_plot_catches_names_counts_that_are_no_counts():
    """A NaN or a -1 drew a curve of catches that never happened."""
    for bad, found in (([0, 1, -1], "found -1"), ([0.0, math.nan], "found nan")):
        with pytest.raises(ValueError, match=f"catches\\[0\\] must be numbers of boids caught per frame .*{found}"):
            viz.plot_catches(bad)
    with pytest.raises(TypeError, match="not an array of <U1"):
        viz.plot_catches([np.array(["0", "1"])])
    assert viz.plot_catches(np.array([False, True])).axes[0].lines[0].get_ydata()[-1] == 1   # flags count


def test_liveplot_keeps_history_and_updates_lines():
    lp = viz.LivePlot(display=False)
    for e in range(1, 4):
        lp.on_epoch_end(None, e, {"train_loss": 1.0 / e, "val_loss": 2.0 / e, "lr": 1e-3,
                                  "samples_per_s": 100.0 * e})
    assert lp.history["epoch"] == [1, 2, 3]
    assert lp.history["val_loss"] == [2.0, 1.0, 2.0 / 3]
    assert list(lp.lines["val_loss"].get_xdata()) == [1, 2, 3]
    assert list(lp.lines["train_loss"].get_ydata()) == [1.0, 0.5, 1.0 / 3]
    assert list(lp.lines["samples_per_s"].get_ydata()) == [100, 200, 300]
    assert len(lp.fig.axes) == 2 and "catch_ratio" not in lp.lines
    ymin, ymax = lp.lines["val_loss"].axes.get_ylim()
    assert ymin <= 1.0 / 3 and ymax >= 2.0                       # rescaled to the data


def test_liveplot_shows_catch_ratio_when_logged():
    lp = viz.LivePlot(display=False)
    lp.on_epoch_end(None, 1, {"train_loss": 1.0, "val_loss": 1.0, "samples_per_s": 5.0, "catch_ratio": 0.25})
    assert len(lp.fig.axes) == 3
    assert list(lp.lines["catch_ratio"].get_ydata()) == [0.25]


def test_liveplot_handles_a_metric_logged_every_few_epochs():
    lp = viz.LivePlot(display=False)
    for e in range(1, 5):
        logs = {"train_loss": 1.0 / e, "val_loss": 1.0 / e, "samples_per_s": 5.0}
        if e % 2 == 0:
            logs["catch_ratio"] = 0.1 * e
        lp.on_epoch_end(None, e, logs)
    assert len(lp.fig.axes) == 3                                 # the panel appeared at epoch 2
    assert list(lp.lines["catch_ratio"].get_xdata()) == [2, 4]
    assert np.allclose(lp.lines["catch_ratio"].get_ydata(), [0.2, 0.4])
    assert list(lp.lines["catch_ratio"].axes.get_xticks()) == [2, 4]     # ticks where it was measured
    assert list(lp.lines["val_loss"].get_xdata()) == [1, 2, 3, 4]


def test_liveplot_has_no_empty_catch_panel_while_the_ratio_is_nan():
    """catch_ratio is NaN while the teacher catches nothing: no empty panel with a garbled axis."""
    lp = viz.LivePlot(display=False)
    lp.on_epoch_end(None, 1, {"train_loss": 1.0, "val_loss": 1.0, "samples_per_s": 5.0, "catch_ratio": float("nan")})
    assert len(lp.fig.axes) == 2 and "catch_ratio" not in lp.lines
    lp.on_epoch_end(None, 2, {"train_loss": 0.5, "val_loss": 0.5, "samples_per_s": 5.0, "catch_ratio": 0.5})
    assert len(lp.fig.axes) == 3
    assert list(lp.lines["catch_ratio"].get_xdata()) == [1, 2]


def test_catch_callbacks_are_sized(monkeypatch):
    monkeypatch.setenv("PREDLAB_QUICK", "1")
    cbs = viz.catch_callbacks()
    assert len(cbs) == 1 and cbs[0].every == viz.sizes()["eval_every"]
    assert cbs[0].frames == viz.sizes()["eval_frames"]


def test_liveplot_runs_as_a_trainer_callback(samples):
    from predlab.model import TransformerPredator
    from predlab.train import SupervisedTrainer

    lp = viz.LivePlot()                     # no notebook here: it must just keep data
    tr = SupervisedTrainer(TransformerPredator(d_model=8, n_heads=2, n_layers=1, ffn_hidden=8), samples, samples,
                           batch_size=64, device="cpu", callbacks=[lp])
    tr.train(2)
    assert lp.handle is None
    assert lp.history["epoch"] == [1, 2]
    assert lp.history["val_loss"] == [h["val_loss"] for h in tr.history]


def test_liveplot_draws_an_undone_epoch_once_when_it_is_repeated(samples):
    """An epoch cut after the plot drew it (in a later callback's on_epoch_end) is undone by the
    trainer and repeated: it was drawn a second time. The stopped run's plot showed it, too."""
    from predlab.model import TransformerPredator
    from predlab.train import Callback, SupervisedTrainer

    class CutOnce(Callback):
        done = False

        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 2 and not self.done:
                self.done = True
                raise KeyboardInterrupt

    lp = viz.LivePlot()
    tr = SupervisedTrainer(TransformerPredator(d_model=8, n_heads=2, n_layers=1, ffn_hidden=8), samples, samples,
                           batch_size=64, device="cpu", callbacks=[lp, CutOnce()])
    with pytest.raises(KeyboardInterrupt):
        tr.train(3)
    # drawn, then undone: the stopped run's plot ends at the epoch the trainer stands at
    assert tr.epoch == 1 and lp.history["epoch"] == [1]
    assert list(lp.lines["val_loss"].get_xdata()) == [1]
    tr.train(3)
    assert lp.history["epoch"] == [1, 2, 3] and lp.epochs["val_loss"] == [1, 2, 3]
    assert lp.history["val_loss"] == [h["val_loss"] for h in tr.history]


class PeakedModel(torch.nn.Module):
    """Fake model whose [CLS] attention puts 0.9 on one boid: the nearest (or, if wrong=True, another)."""

    def __init__(self, n_layers=2, n_heads=3, wrong=False):
        super().__init__()
        self.config = ModelConfig(d_model=6, n_heads=n_heads, n_layers=n_layers, ffn_hidden=4)
        self.wrong = wrong

    def forward_with_attention(self, batch):
        B, N = batch["mask"].shape
        idx = nearest_boid(batch["boids"], batch["mask"])
        if self.wrong:
            idx = torch.where(batch["mask"].sum(-1) > 1, (idx + 1) % batch["mask"].sum(-1), idx)
        w = torch.full((B, self.config.n_heads, 3 + N, 3 + N), 0.01)
        w[torch.arange(B), :, 0, 3 + idx] = 0.9
        return torch.zeros(B, 2), [w.clone() for _ in range(self.config.n_layers)]


def test_agreement_is_one_for_attention_on_the_target(samples):
    batch = viz.sample_frames(samples, 60)
    ag = viz.attention_agreement(PeakedModel(), batch, chunk=16)
    assert ag.per_head.shape == (2, 3) and ag.mean_heads.shape == (2,)
    assert np.all(ag.per_head == 1.0) and np.all(ag.mean_heads == 1.0)
    assert ag.samples == len(batch["mask"]) > 20
    assert np.isclose(ag.chance, float((1 / batch["mask"].sum(-1).double()).mean()))
    wrong = viz.attention_agreement(PeakedModel(wrong=True), batch)
    single = float((batch["mask"].sum(-1) == 1).double().mean())   # one boid: any pick is right
    assert np.allclose(wrong.per_head, single)


def test_agreement_matches_a_direct_count(make_model, samples):
    model = make_model(0, d_model=16, n_heads=2, n_layers=2, ffn_hidden=16)
    batch = viz.sample_frames(samples, 40, seed=1)
    ag = viz.attention_agreement(model, batch, chunk=7)
    _, weights = model.forward_with_attention(batch)
    for layer, w in enumerate(weights):
        for h in range(2):
            hits = 0
            for i in range(40):
                n = int(batch["mask"][i].sum())
                d = batch["boids"][i, :n, :2].norm(dim=-1)
                hits += int(w[i, h, 0, 3:3 + n].argmax()) == int(d.argmin())
            assert np.isclose(ag.per_head[layer, h], hits / 40)
    fig = viz.plot_agreement(ag)
    assert [round(p.get_height(), 9) for p in fig.axes[0].patches] == [round(v, 9) for v in ag.mean_heads]


def test_attention_overlay_colours_follow_the_weights(make_model, samples):
    model = make_model(1, d_model=16, n_heads=2, n_layers=2, ffn_hidden=16)
    batch = viz.sample_frames(samples, 10)
    i = int(batch["mask"].sum(-1).argmax())
    fig = viz.plot_attention_overlay(model, batch, layer=1, head=0, index=i)
    _, weights = model.forward_with_attention({k: v[i:i + 1] for k, v in batch.items()})
    n = int(batch["mask"][i].sum())
    expect = weights[1][0, 0, 0, 3:3 + n].detach().numpy()
    assert np.allclose(fig.attention_weights, expect, atol=1e-6)
    sc = fig.axes[0].collections[0]
    assert np.allclose(sc.get_array(), expect, atol=1e-6)
    sc.update_scalarmappable()                                   # what a draw does
    rgba = sc.get_facecolors()
    assert np.allclose(rgba, matplotlib.colormaps["viridis"](expect / expect.max()), atol=1e-6)
    lum = rgba[:, :3].sum(1)                                     # viridis gets brighter with the value
    assert np.all(np.diff(lum[np.argsort(expect)]) >= -1e-9)
    mean = viz.plot_attention_overlay(model, batch, layer=0, head=None, index=i).attention_weights
    assert np.allclose(mean, weights[0][0, :, 0, 3:3 + n].mean(0).detach().numpy(), atol=1e-6)


def test_draw_attention_marks_the_target():
    fig = Figure()
    ax = fig.add_subplot()
    sc = viz.draw_attention(ax, np.array([[10.0, 0.0], [0.0, 20.0], [5.0, 5.0]]), np.array([0.1, 0.6, 0.3]), target=2)
    assert np.allclose(sc.get_array(), [0.1, 0.6, 0.3])
    ring = ax.collections[-1]
    assert np.allclose(ring.get_offsets()[0], [5.0, 5.0])


def test_draw_attention_draws_a_boid_beside_the_predator_over_it():
    """The nearest boid is often within the triangle's width of the predator (a quarter of the frames
    of notebook 03's episode are within 40 px): drawn under the predator, its attention colour was hidden."""
    fig = Figure()
    ax = fig.add_subplot()
    sc = viz.draw_attention(ax, np.array([[3.0, 2.0], [400.0, 300.0]]), np.array([0.9, 0.1]), target=0)
    pred = next(c for c in ax.collections if c.get_label() == "predator")
    ring = next(c for c in ax.collections if c.get_label() == "teacher's target")
    assert pred.get_zorder() < sc.get_zorder() < ring.get_zorder()
    assert not ring.get_facecolor().any()          # the ring is hollow: the boid's colour shows through it


@pytest.mark.skipif(not viz.node_available(), reason="node is not installed")
def test_js_parity_and_plot(make_model, make_samples):
    model = make_model(2)
    res = viz.js_parity(model, make_samples([0, 1, 5, 12], seed=2))
    assert res["torch"].shape == res["js"].shape == (4, 2)
    assert res["max_abs_diff"] < 1e-5
    fig = viz.plot_parity(res["torch"], res["js"])
    assert f"{res['max_abs_diff']:.2e}" in fig.axes[1].get_title()


def test_plot_parity_reports_the_largest_difference():
    t = np.array([[0.1, 0.2], [0.3, -0.4]])
    j = t + np.array([[0.0, 1e-3], [0.0, 0.0]])
    fig = viz.plot_parity(t, j)
    assert "1.00e-03" in fig.axes[1].get_title()
    assert len(fig.axes[1].patches) == 2


# ---------------------------------------------------------------------- widgets
def test_field_widget_comes_from_config_metadata():
    w = widgets.field_widget(WorldConfig, "frames", max=400)
    assert w.value == WorldConfig.frames and w.min == 1 and w.max == 400
    assert "frames per episode" in w.tooltip
    lr = widgets.field_widget(TrainConfig, "learning_rate", min=1e-5, max=1e-1, log=True)
    assert np.isclose(lr.value, TrainConfig.learning_rate)
    with pytest.raises(ValueError, match="TrainConfig.train_episodes has no max in its metadata: pass max="):
        widgets.field_widget(TrainConfig, "train_episodes")


def test_rerun_sim_uses_the_slider_values():
    ro, html = widgets.rerun_sim(n_boids=4, width=256, height=200, separation_weight=0.0, cohesion_weight=3.0,
                                 alignment_weight=0.5, frames=3)
    assert ro.pos.shape == (3, 4, 2) and ro.size == (256.0, 200.0)
    assert viz.jshtml_frame_count(html) == 3


def test_sim_controls_rerun_when_a_slider_moves():
    ctl = widgets.make_sim_controls(n_boids=5, frames=3, width=320, height=320)
    assert set(ctl.values()) == {"n_boids", "width", "height", "separation_weight", "cohesion_weight",
                                 "alignment_weight", "frames"}
    assert ctl.last[0].pos.shape == (3, 5, 2)
    tips = {k: w.tooltip for k, w in ctl.widgets.items()}       # one episode's values, not a range's ends
    assert "largest" not in tips["width"] and "most" not in tips["n_boids"] and "earlier" not in tips["frames"]
    ctl.set(frames=2, n_boids=3)
    assert ctl.last[0].pos.shape == (2, 3, 2)
    ctl.set(cohesion_weight=0.0)
    assert ctl.last[0].pos.shape == (2, 3, 2)
    later = widgets.make_sim_controls(n_boids=5, frames=3, width=320, height=320, run_now=False)
    assert later.last is None                 # nothing recorded until a slider moves
    later.set(frames=2)
    assert later.last[0].pos.shape == (2, 5, 2)


def test_train_controls_build_trainer_arguments():
    ctl = widgets.make_train_controls(epochs=3, train_episodes=7, batch_size=64)
    ctl.set(d_model=32, n_heads=2)
    kw = widgets.train_kwargs(**ctl.values())
    assert kw["epochs"] == 3
    assert kw["trainer"]["train_episodes"] == 7 and kw["trainer"]["batch_size"] == 64
    assert kw["trainer"]["model_config"] == ModelConfig(d_model=32, n_heads=2)
    with pytest.raises(ValueError, match="divisible"):
        widgets.train_kwargs(**{**ctl.values(), "n_heads": 5})
    with pytest.raises(TypeError, match="no control named 'learning_rat': these are learning_rate, batch_size"):
        ctl.set(epochs=5, learning_rat=1e-3)                 # a misspelt name, once a bare KeyError
    assert ctl.values()["epochs"] == 3                       # and nothing was set
    for name, value, error, message in [("epochs", 500, ValueError, r"epochs must be a whole number between 1 and 200"),
                                        ("batch_size", 64.5, TypeError, "batch_size must be a whole number"),
                                        ("learning_rate", 1.0, ValueError, "learning_rate must be between")]:
        with pytest.raises(error, match=message):        # the slider clamped 500 to 200, cut 64.5 to 64
            ctl.set(d_model=64, **{name: value})
        assert ctl.values()["epochs"] == 3 and ctl.values()["d_model"] == 32
    ctl.set(learning_rate=1e-5, epochs=200)                  # the ends themselves are fine
    assert ctl.values()["learning_rate"] == pytest.approx(1e-5) and ctl.values()["epochs"] == 200
    b = widgets.make_train_controls().widgets["batch_size"]      # an IntSlider steps from its min:
    assert b.value == 256 and (256 - b.min) % b.step == 0          # the default stays reachable
    assert all(v % 16 == 0 for v in range(b.min, b.max + 1, b.step))
    with pytest.raises(ValueError, match=r"batch_size must be on the slider's steps of 16 from 16 \(96 or 112\), got 100"):
        ctl.set(epochs=5, batch_size=100)                    # no move of the slider could choose it again
    assert ctl.values()["epochs"] == 200
    ctl.set(batch_size=np.int64(112))
    sim = widgets.make_sim_controls(run_now=False)
    with pytest.raises(ValueError, match=r"width must be on the slider's steps of 8 from 320 \(480 or 488\)"):
        sim.set(width=481)
    floats = [(k, w) for k, w in sim.widgets.items() if type(w).__name__ == "FloatSlider"]
    assert floats
    k, w = floats[0]
    sim.set(**{k: w.min + 3 * w.step})                       # on the grid, as float arithmetic makes it
    with pytest.raises(ValueError, match=f"{k} must be on the slider's steps"):
        sim.set(**{k: w.min + 0.5 * w.step})


def test_attention_controls_redraw_for_frame_layer_head(make_model, samples):
    model = make_model(0, d_model=16, n_heads=2, n_layers=2, ffn_hidden=16)
    batch = viz.sample_frames(samples, 5)
    ctl = widgets.make_attention_controls(model, batch)
    assert ctl.widgets["layer"].max == 1 and ctl.widgets["frame"].max == 4
    assert ctl.values() == {"frame": 2, "layer": 0, "head": "mean"}   # past the spawn-point bunch, first layer
    assert list(ctl.widgets["head"].options) == ["mean", 0, 1]
    ctl.set(frame=2, layer=0, head=1)
    direct = widgets.show_attention(model, batch, frame=2, layer=0, head=1)
    assert np.allclose(ctl.last.attention_weights, direct.attention_weights)


def test_attention_controls_refuse_a_head_they_do_not_have_before_setting_anything(make_model, samples):
    """set(frame=4, head=7) moved the frame and redrew, then failed with traitlets' 'value not found'."""
    model = make_model(0, d_model=16, n_heads=2, n_layers=2, ffn_hidden=16)
    ctl = widgets.make_attention_controls(model, viz.sample_frames(samples, 5))
    drawn = ctl.last
    with pytest.raises(ValueError, match=r"head must be one of 'mean', 0, 1, got 7"):
        ctl.set(frame=4, head=7)
    assert ctl.values() == {"frame": 2, "layer": 0, "head": "mean"} and ctl.last is drawn
    for odd in (True, 1.0, "1"):            # True == 1 == 1.0: head 1 was shown for each
        with pytest.raises(ValueError, match=r"head must be one of 'mean', 0, 1, got "):
            ctl.set(head=odd)
    assert ctl.last is drawn
    ctl.set(head=1)
    assert ctl.values()["head"] == 1 and ctl.last is not drawn
    ctl.set(head=np.int64(0))
    assert ctl.values()["head"] == 0


def test_attention_views_name_a_wrong_model_or_batch_and_take_browser_dicts(make_model, samples):
    """A model's path gave AttributeError 'training', a browser-form dict KeyError 'mask'."""
    from predlab.data import InputError
    model = make_model(0, d_model=16, n_heads=2, n_layers=2, ffn_hidden=16)
    batch = viz.sample_frames(samples, 3)
    for call in (lambda m, b: viz.plot_attention_overlay(m, b), lambda m, b: viz.plot_attention_grid(m, b),
                 lambda m, b: viz.attention_agreement(m, b), lambda m, b: viz.cls_attention(m, b),
                 lambda m, b: widgets.make_attention_controls(m, b, run_now=False)):
        with pytest.raises(TypeError, match="model must be a TransformerPredator .*, not str"):
            call("checkpoints/best_model.pt", batch)
        with pytest.raises(InputError, match="batch is missing key 'mask'"):
            call(model, {k: v for k, v in batch.items() if k != "mask"})
        with pytest.raises(TypeError, match="batch must be a padded batch dict .*, not int"):
            call(model, 3)
    one = to_dicts(batch)[1]
    fig = viz.plot_attention_overlay(model, one)              # the browser's form, as predict takes it
    assert np.allclose(fig.attention_weights, viz.plot_attention_overlay(model, batch, index=1).attention_weights)
    assert viz.cls_attention(model, to_dicts(batch)).shape[0] == 3


def test_export_helpers_name_a_model_of_the_wrong_kind(tmp_path, model):
    """A path or a state_dict failed with AttributeError 'str' object has no attribute 'config'."""
    for wrong in ("checkpoints/best_model.pt", model.state_dict()):
        for call in (lambda: viz.export_for_browser(wrong, tmp_path), lambda: viz.js_parity(wrong, [])):
            with pytest.raises(TypeError, match="model must be a TransformerPredator .*, not (str|OrderedDict)"):
                call()
    assert not list(tmp_path.iterdir())


def test_animate_and_plot_agreement_name_an_argument_of_the_wrong_kind(rollout):
    """rerun_sim's (Rollout, html) pair given to animate_rollout failed with AttributeError 'size'."""
    with pytest.raises(TypeError, match="rollout must be a viz.Rollout .*, not tuple"):
        viz.animate_rollout((rollout, "<html>"))
    with pytest.raises(TypeError, match="ag must be an Agreement .*, not dict"):
        viz.plot_agreement({"per_head": np.zeros((1, 1))})


def test_attention_grid_has_every_layer_and_head(make_model, samples):
    model = make_model(0, d_model=16, n_heads=2, n_layers=2, ffn_hidden=16)
    batch = viz.sample_frames(samples, 4)
    fig = viz.plot_attention_grid(model, batch, index=1)
    assert len(fig.axes) == 2 * 3 + 2                      # and a colour bar per layer, scaled to that layer
    for layer in range(2):
        vmax = max(float(ax.collections[0].get_array().max()) for ax in fig.axes[3 * layer:3 * layer + 3])
        assert fig.axes[6 + layer].get_ylim()[1] == pytest.approx(vmax)
        for ax in fig.axes[3 * layer:3 * layer + 3]:
            assert ax.collections[0].norm.vmax == pytest.approx(vmax)
    w = viz.cls_attention(model, {k: v[1:2] for k, v in batch.items()})[0]
    n = int(batch["mask"][1].sum())
    assert np.allclose(fig.axes[4].collections[0].get_array(), w[1, 1, :n].numpy(), atol=1e-6)  # layer 1, head 1


def test_load_best_model_loads_or_trains(tmp_path, monkeypatch, samples):
    from predlab.model import TransformerPredator
    from predlab.train import SupervisedTrainer

    monkeypatch.setenv("PREDLAB_QUICK", "1")
    with pytest.raises(FileNotFoundError, match="02_train"):
        viz.load_best_model(tmp_path, train_if_missing=False)
    model, msg = viz.load_best_model(tmp_path, verbose=False)
    assert "trained a small model" in msg and not model.training
    assert list(tmp_path.iterdir()) == []                       # the fallback writes nothing
    tr = SupervisedTrainer(TransformerPredator(d_model=8, n_heads=2, n_layers=1, ffn_hidden=8), samples, samples,
                           batch_size=64, device="cpu")
    tr.train(1)
    tr.save_checkpoint(tmp_path / "best_model.pt")
    loaded, msg = viz.load_best_model(tmp_path, verbose=False)
    assert msg.startswith("loaded") and loaded.config.d_model == 8
    for a, b in zip(loaded.state_dict().values(), tr.model.state_dict().values()):
        assert torch.equal(a, b.cpu())
    # a folder under the checkpoint's name is named, not taken for "no checkpoint" and a stand-in trained
    (tmp_path / "other" / "best_model.pt").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"best_model.pt is a directory, not a checkpoint"):
        viz.load_best_model(tmp_path / "other", verbose=False)


def test_export_for_browser_keeps_unusable_and_earlier_files_out_of_the_way(make_model, tmp_path, recwarn):
    """Notebook 04's export: a browser-size model lands in the folder; writing it again changes
    nothing; another model's export moves the earlier files to previous/ instead of overwriting
    them; a model of sizes the page refuses goes to not-browser-size/, never to the page's path."""
    from predlab.export import read_params, read_weights
    first = viz.export_for_browser(make_model(0), tmp_path)
    assert first["browser_sizes"] and first["message"] == ""
    assert first["paths"] == [tmp_path / "model.js", tmp_path / "model.json"]
    before = {p.name: p.read_bytes() for p in first["paths"]}
    assert viz.export_for_browser(make_model(0), tmp_path)["message"] == ""       # the same weights again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.js", "model.json"]
    second = viz.export_for_browser(make_model(1), tmp_path)
    (moved,) = (tmp_path / "previous").iterdir()
    assert f"moved model.js, model.json of other weights to {moved}" in second["message"]
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == before
    assert torch.equal(read_weights(tmp_path / "model.js").output.weight, make_model(1).output.weight)
    odd = viz.export_for_browser(make_model(2, n_heads=2), tmp_path)
    assert not odd["browser_sizes"] and "n_heads 2 (page: 4)" in odd["message"]
    assert odd["paths"][0] == tmp_path / "not-browser-size" / "model.js"
    assert read_params(odd["paths"][0])["n_heads"] == 2
    assert torch.equal(read_weights(tmp_path / "model.js").output.weight, make_model(1).output.weight)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]      # said once, in the message


def test_export_for_browser_keeps_a_hand_edited_model_js_with_a_latin1_comment(make_model, tmp_path):
    """A model.js whose comment an editor saved in Latin-1 (which predlab and the page read) stopped
    notebook 04's export with a UnicodeDecodeError that named no file."""
    from predlab.export import write_weights
    path = write_weights(make_model(0), tmp_path / "model.js")
    edited = "// Modèle réglé à la main\n".encode("latin-1") + path.read_bytes()
    path.write_bytes(edited)
    out = viz.export_for_browser(make_model(1), tmp_path)
    (moved,) = (tmp_path / "previous").iterdir()
    assert f"moved model.js of other weights to {moved}" in out["message"]
    assert (moved / "model.js").read_bytes() == edited


# ---------------------------------------------------------------------- bad arguments: clear errors, before any work
def test_attention_views_take_negative_indices_and_head_mean(samples):
    model = PeakedModel()
    batch = viz.sample_frames(samples, 4)
    last = viz.plot_attention_overlay(model, batch, layer=-1, head=-1, index=-1).attention_weights
    same = viz.plot_attention_overlay(model, batch, layer=1, head=2, index=3).attention_weights
    assert np.array_equal(last, same)
    mean = viz.plot_attention_overlay(model, batch, head="mean", index=1).attention_weights
    assert np.array_equal(mean, viz.plot_attention_overlay(model, batch, head=None, index=1).attention_weights)
    assert np.array_equal(widgets.show_attention(model, batch, -1, -1, -1).attention_weights, last)
    assert len(viz.plot_attention_grid(model, batch, index=-1).axes) == 2 * 4 + 2


@pytest.mark.parametrize("call, match", [
    (lambda m, b: viz.plot_attention_overlay(m, b, index=4), r"index must be between -4 and 3"),
    (lambda m, b: viz.plot_attention_overlay(m, b, index=-5), r"index must be between -4 and 3"),
    (lambda m, b: viz.plot_attention_overlay(m, b, index=1.0), r"index must be a whole number"),
    (lambda m, b: viz.plot_attention_grid(m, b, index=4), r"index must be between -4 and 3"),
    (lambda m, b: viz.plot_attention_grid(m, b, index=True), r"index must be a whole number"),
    (lambda m, b: viz.plot_attention_overlay(m, b, layer=99), r"layer must be between -2 and 1 \(2 layers\)"),
    (lambda m, b: viz.plot_attention_overlay(m, b, layer=1.0), r"layer must be a whole number"),
    (lambda m, b: viz.plot_attention_overlay(m, b, head=99), r"head must be between -3 and 2 \(3 heads\)"),
    (lambda m, b: viz.plot_attention_overlay(m, b, head="all"), r"head must be a head number or 'mean'"),
    (lambda m, b: viz.plot_attention_overlay(m, b, figsize=(0, 0)), r"figsize"),
    (lambda m, b: widgets.show_attention(m, b, 9, 0, "mean"), r"index must be between -4 and 3"),
    (lambda m, b: widgets.show_attention(m, b, 0, 0, 1.5), r"head must be a whole number"),
    (lambda m, b: viz.attention_agreement(m, b, chunk=0), r"chunk must be a whole number >= 1, got 0"),
    (lambda m, b: viz.attention_agreement(m, b, chunk=-1), r"chunk must be a whole number >= 1, got -1"),
    (lambda m, b: widgets.make_attention_controls(m, {k: v[:0] for k, v in b.items()}), r"batch has no frames"),
    (lambda m, b: widgets.make_attention_controls(m, b, frame=4), r"frame must be between -4 and 3"),
    (lambda m, b: widgets.make_attention_controls(m, b, layer=2), r"layer must be between -2 and 1"),
    (lambda m, b: viz.plot_attention_overlay(m, {k: v[:0] for k, v in b.items()}), r"no frames"),
])
def test_attention_views_refuse_bad_choices(samples, call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call(PeakedModel(), viz.sample_frames(samples, 4))


@pytest.mark.parametrize("kw, match", [
    (dict(frames=2.5), r"frames must be a whole number, got 2.5"),
    (dict(frames=float("nan")), r"frames must be a whole number, got nan"),
    (dict(frames=None), r"frames must be a whole number, got None"),
    (dict(frames="5"), r"frames must be a whole number, got '5'"),
    (dict(frames=True), r"frames must be a whole number, got True"),
    (dict(frames=0), r"frames must be a whole number between 1 and 1000000, got 0"),
    (dict(frames=10 ** 30), r"frames must be a whole number between 1 and 1000000, got 10+$"),
    (dict(seed=2 ** 70), r"seed must be a whole number between 0 and 9223372036854775807"),
    (dict(seed=None), r"seed must be a whole number, got None"),
    (dict(seed=-1), r"seed must be a whole number between 0 and"),
    (dict(width=0), r"width must be a whole number >= 16, got 0"),
    (dict(width=-5), r"width must be a whole number >= 16, got -5"),
    (dict(height=100.0), r"height must be a whole number"),
    (dict(n_boids=2.5), r"n_boids must be a whole number"),
    (dict(n_boids=0), r"n_boids must be a whole number between 1 and 10000"),
    (dict(cfg="fast"), r"cfg must be a WorldConfig"),
    (dict(policy="teacher"), r"policy must be a callable"),
    (dict(policy=lambda obs: [[0.0, 1.0]]), r"policy must return an \[E, 2\] tensor \(here \[1, 2\]\), got list"),
    (dict(policy=lambda obs: torch.zeros(2)), r"policy must return an \[E, 2\] tensor \(here \[1, 2\]\), got shape \[2\]"),
    (dict(policy=lambda obs: torch.zeros(3, 2)), r"got shape \[3, 2\]"),
    (dict(policy=lambda obs: torch.full((1, 2), float("nan"))), r"policy returned \[\[nan, nan\]\]: actions must be finite"),
])
def test_record_rollout_refuses_bad_arguments(kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        viz.record_rollout(**{"frames": 2, "n_boids": 3, "width": 64, "height": 64, **kw})
    assert len(viz.record_rollout(frames=2, n_boids=3, width=16, height=16, seed=np.int64(2 ** 62),
                                  policy=lambda obs: torch.ones(1, 2, dtype=torch.float64))) == 2


@pytest.mark.parametrize("kw, match", [
    (dict(every=0), r"every must be a whole number >= 1, got 0"),
    (dict(episodes=-1), r"episodes must be a whole number >= 1, got -1"),
    (dict(episodes=0), r"episodes must be a whole number >= 1, got 0"),
    (dict(frames=2.5), r"frames must be a whole number, got 2.5"),
    (dict(every=True), r"every must be a whole number, got True"),
])
def test_catch_callbacks_refuse_bad_sizes(kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        viz.catch_callbacks(**kw)
    (cb,) = viz.catch_callbacks(every=3, episodes=2, frames=5)
    assert (cb.every, cb.episodes, cb.frames) == (3, 2, 5)


@pytest.mark.parametrize("call, match", [
    (lambda: widgets.make_train_controls(bogus=1, epoch=5), r"unknown argument\(s\) bogus, epoch; it takes "
                                                           r"learning_rate, batch_size, epochs"),
    (lambda: widgets.make_train_controls(seed=3), r"unknown argument\(s\) seed"),
    (lambda: widgets.make_train_controls(epochs=-5), r"epochs must be a whole number >= 1, got -5"),
    (lambda: widgets.make_train_controls(epochs=None), r"epochs must be a whole number, got None"),
    # 0 was "between 1e-05 and 0.1", where 1e-6 is taken (the slider's end grows to it)
    (lambda: widgets.make_train_controls(learning_rate=-1), r"learning_rate must be a positive finite number, got -1"),
    (lambda: widgets.make_train_controls(learning_rate=0), r"learning_rate must be a positive finite number, got 0"),
    (lambda: widgets.make_train_controls(learning_rate=float("nan")), r"positive finite number, got nan"),
    (lambda: widgets.make_train_controls(batch_size=2.7), r"batch_size must be a whole number, got 2.7"),
    (lambda: widgets.make_train_controls(n_heads=99), r"n_heads must be a whole number between 1 and 16, got 99"),
    (lambda: widgets.sim_widgets(n_boids=10 ** 6), r"n_boids must be a whole number between 1 and 50, got 1000000"),
    (lambda: widgets.sim_widgets(n_boids=-5), r"n_boids must be a whole number between 1 and 50, got -5"),
    (lambda: widgets.sim_widgets(frames=None), r"frames must be a whole number, got None"),
    (lambda: widgets.sim_widgets(width=100), r"width must be a whole number between 320 and 3840, got 100"),
    (lambda: widgets.field_widget(WorldConfig, "separation_weight", 9.0, max=5.0),
     r"separation_weight must be between 0 and 5, got 9.0"),
    (lambda: widgets.field_widget(WorldConfig, "separation_weight", max=5.0, log=True),
     r"WorldConfig.separation_weight: a log slider needs min > 0, got min=0.0"),
    (lambda: widgets.field_widget(WorldConfig, "frames", 10, min=20, max=5), r"max must be a whole number >= 20, got 5"),
])
def test_widgets_refuse_unknown_names_and_values_a_slider_would_clamp(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


def _train_values(**kw):
    return {**widgets.make_train_controls().values(), **kw}


@pytest.mark.parametrize("kw, match", [
    (dict(epochs=2.7), r"epochs must be a whole number, got 2.7"),
    (dict(batch_size=2.7), r"batch_size must be a whole number, got 2.7"),
    (dict(epochs=0), r"epochs must be >= 1, got 0"),
    (dict(epochs=True), r"epochs must be a whole number, got True"),
    (dict(train_episodes=-1), r"train_episodes must be >= 1, got -1"),
    (dict(learning_rate=0.0), r"learning_rate must be > 0"),
    (dict(learning_rate=float("nan")), r"learning_rate must be a finite number"),
])
def test_train_kwargs_refuse_what_they_would_truncate_or_pass_on(kw, match):
    with pytest.raises(ValueError, match=match):
        widgets.train_kwargs(**_train_values(**kw))


@pytest.mark.parametrize("call, match", [
    (lambda ro, ss, tmp, m: viz.plot_catches([ro, ro], labels=["a"]), r"labels has 1 name\(s\) for 2 episode\(s\)"),
    (lambda ro, ss, tmp, m: viz.plot_catches([ro], labels="a"), r"labels must be a list of names"),
    (lambda ro, ss, tmp, m: viz.plot_catches([ro], ax=viz.plot_catches([ro])),       # a Figure, not its Axes
     r"ax must be a matplotlib Axes .*, not Figure"),
    (lambda ro, ss, tmp, m: viz.plot_parity(np.zeros((3, 2)), np.zeros((4, 2))),
     r"torch_out and js_out must both be \[B, 2\].*shapes \[3, 2\] and \[4, 2\]"),
    (lambda ro, ss, tmp, m: viz.plot_parity(np.zeros(6), np.zeros(6)), r"got shapes \[6\] and \[6\]"),
    (lambda ro, ss, tmp, m: viz.animate_rollout(ro, figsize=(0, 0)), r"figsize must be \(width, height\)"),
    (lambda ro, ss, tmp, m: viz.animate_rollout(ro, figsize=(1e4, 3)), r"figsize must be .*\(0, 100\] inches"),
    (lambda ro, ss, tmp, m: viz.animate_rollout(ro, figsize=6), r"figsize must be \(width, height\) in inches, got 6"),
    (lambda ro, ss, tmp, m: viz.animate_rollout(ro, interval=0), r"interval must be a whole number >= 1"),
    (lambda ro, ss, tmp, m: viz.plot_training_data(ss, figsize=(float("nan"), 3)), r"figsize"),
    (lambda ro, ss, tmp, m: viz.LivePlot(figsize=(-1, 3)), r"figsize"),
    (lambda ro, ss, tmp, m: viz.sample_frames(ss, -1), r"count must be a whole number >= 1, got -1"),
    (lambda ro, ss, tmp, m: viz.sample_frames(ss, 0), r"count must be a whole number >= 1, got 0"),
    (lambda ro, ss, tmp, m: viz.sample_frames(ss, 2.5), r"count must be a whole number"),
    (lambda ro, ss, tmp, m: viz.sample_frames(ro, 3), r"samples must be a SampleSet .*, got Rollout"),
    (lambda ro, ss, tmp, m: viz.plot_training_data(viz.sample_frames(ss, 3)),
     r"samples must be a SampleSet \(what predlab.data.generate_episodes returns\), got dict"),
    (lambda ro, ss, tmp, m: viz.load_best_model(tmp / "best_model.pt", train_if_missing=False),
     r"no checkpoint at (?![^:]*best_model\.pt/)[^:]*best_model\.pt: run"),
    (lambda ro, ss, tmp, m: viz.load_best_model(tmp, epochs=0), r"epochs must be a whole number >= 1, got 0"),
    (lambda ro, ss, tmp, m: viz.export_for_browser(m, tmp / "file.txt"),
     r"directory [^:]*file.txt must be a folder .* but [^:]*file.txt is a file"),
    (lambda ro, ss, tmp, m: viz.export_for_browser(m, tmp / "file.txt" / "sub"), r"file.txt is a file"),
])
def test_smaller_views_refuse_bad_arguments(rollout, samples, tmp_path, make_model, monkeypatch, call, match):
    monkeypatch.setenv("PREDLAB_QUICK", "1")
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises((TypeError, ValueError, FileNotFoundError), match=match):
        call(rollout, samples, tmp_path, make_model(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]          # nothing written


def test_load_best_model_takes_the_checkpoint_file_itself(tmp_path, samples, monkeypatch):
    monkeypatch.setenv("PREDLAB_QUICK", "1")
    from predlab.model import TransformerPredator
    from predlab.train import SupervisedTrainer

    tr = SupervisedTrainer(TransformerPredator(d_model=8, n_heads=2, n_layers=1, ffn_hidden=8), samples, samples,
                           batch_size=64, device="cpu")
    tr.save_checkpoint(tmp_path / "run.pt")
    model, msg = viz.load_best_model(tmp_path / "run.pt", verbose=False)
    assert msg.startswith(f"loaded {tmp_path / 'run.pt'} ") and model.config.d_model == 8


def test_load_best_model_describes_the_weights_it_returns(tmp_path, samples, monkeypatch):
    """A training run in another process replaces best_model.pt (atomically) while a notebook
    loads it: the message must describe the weights returned, not a file read a moment later."""
    monkeypatch.setenv("PREDLAB_QUICK", "1")
    from predlab import checkpoint
    from predlab.model import TransformerPredator
    from predlab.train import SupervisedTrainer

    def trainer(width):
        return SupervisedTrainer(TransformerPredator(d_model=width, n_heads=2, n_layers=1, ffn_hidden=8),
                                 samples, samples, batch_size=64, device="cpu")

    path = tmp_path / "best_model.pt"
    first, second = trainer(8), trainer(16)
    first.epoch, first.best_epoch, first.best_metric = 3, 3, 0.25     # as training leaves them
    first.save_checkpoint(path)
    second.epoch, second.best_epoch, second.best_metric = 9, 9, 0.125
    read = checkpoint.load_checkpoint_dict

    def read_then_replaced(p):
        ck = read(p)
        second.save_checkpoint(path)                              # the next best lands meanwhile
        return ck

    monkeypatch.setattr(checkpoint, "load_checkpoint_dict", read_then_replaced)
    model, msg = viz.load_best_model(tmp_path, verbose=False)
    assert "0.25000 at epoch 3" in msg and model.config.d_model == 8
    for a, b in zip(model.state_dict().values(), first.model.state_dict().values()):
        assert torch.equal(a, b)


def test_liveplot_shows_a_resumed_history_without_epoch_entries():
    class Resumed:
        history = [{"train_loss": 1.0, "val_loss": 2.0}, {"train_loss": 0.5, "val_loss": 1.0}]

    lp = viz.LivePlot(display=False)
    lp.on_train_begin(Resumed())
    lp.on_epoch_end(None, 3, {"train_loss": 0.25, "val_loss": 0.5})
    assert lp.history["epoch"] == [1, 2, 3] and lp.history["val_loss"] == [2.0, 1.0, 0.5]


def test_liveplot_shows_a_new_plot_for_each_training_call(monkeypatch):
    """A cell run again (to resume after an interrupt) clears its output, live plot included: the next
    train() must display a new plot there, not update the cleared one, which no longer shows."""
    import IPython.display

    shown, updated = [], []

    class Handle:
        def update(self, fig):
            updated.append(fig)

    monkeypatch.setattr(IPython.display, "display", lambda fig, display_id=False: shown.append(fig) or Handle())

    class Trainer:
        history = []

    lp = viz.LivePlot(display=True)
    tr = Trainer()
    for run in range(2):                       # train(N), interrupted; then the cell again
        lp.on_train_begin(tr)
        for e in (2 * run + 1, 2 * run + 2):
            logs = {"train_loss": 1.0 / e, "val_loss": 1.0 / e, "samples_per_s": 5.0}
            lp.on_epoch_end(tr, e, logs)
            tr.history.append({"epoch": e, **logs})
    assert len(shown) == 2 and len(updated) == 2
    assert list(lp.lines["val_loss"].get_xdata()) == [1, 2, 3, 4]


def test_liveplot_shows_a_finished_run_again(monkeypatch):
    """The training cell of a finished run, run again, cleared its plot, and train() (no epoch left)
    drew none: show() draws the run so far in the cell's output."""
    import IPython.display
    shown = []

    class Handle:
        def update(self, fig):
            pass
    monkeypatch.setattr(IPython.display, "display", lambda fig, display_id=False: shown.append(fig) or Handle())

    class Trainer:
        history, epoch = [], 0

    lp = viz.LivePlot(display=True)
    tr = Trainer()
    lp.on_train_begin(tr)
    for e in (1, 2):
        logs = {"train_loss": 1.0 / e, "val_loss": 2.0 / e, "samples_per_s": 5.0}
        lp.on_epoch_end(tr, e, logs)
        tr.history.append({"epoch": e, **logs})
        tr.epoch = e
    lp.show(tr)
    assert len(shown) == 2 and shown[1] is lp.fig
    assert list(lp.lines["val_loss"].get_xdata()) == [1, 2] and list(lp.lines["val_loss"].get_ydata()) == [2.0, 1.0]


def _notebook_sliders(quick: bool):
    """The sliders of the simulation and training notebooks, opened at that mode's sizes."""
    S = viz.sizes(quick=quick)
    sim = widgets.sim_widgets(n_boids=S["n_boids"], width=S["width"], height=S["height"], frames=S["frames"])
    train = widgets.make_train_controls(epochs=S["epochs"], train_episodes=S["train_episodes"],
                                        val_episodes=S["val_episodes"], batch_size=S["batch_size"]).widgets
    return {**sim, **train}


@pytest.mark.parametrize("quick", [False, True])
def test_every_notebook_slider_opens_on_a_value_it_can_return_to(quick):
    """A slider steps from its min: a starting value off that grid cannot be chosen again once the
    slider moves (the simulation notebook's 600 px canvas height, on a 16 px grid from 320, was lost)."""
    import ipywidgets as W
    for name, w in _notebook_sliders(quick).items():
        if isinstance(w, W.SelectionSlider):     # the learning rate's marks
            assert w.value in [o[1] for o in w.options], name
        else:
            k = (w.value - w.min) / w.step
            assert k == pytest.approx(round(k), abs=1e-6), f"{name}: {w.value} is off the grid {w.min} + k * {w.step}"


def test_notebook_sliders_are_labelled_in_words_and_act_on_release():
    """Labels read as words ("learning rate", not learning_rate), and a slider acts when it is
    let go, not at every position it is dragged through (each one records an episode or more)."""
    for name, w in _notebook_sliders(quick=True).items():
        assert "_" not in w.description and w.description, name
        assert w.continuous_update is False, name


def test_a_log_slider_takes_the_ends_it_was_given():
    """A log slider keeps its ends as powers of ten, which round: set() still takes the very
    values it was made with (3e-2 came back as 0.029999999999999995, and 0.03 was refused)."""
    ctl = widgets.Controls({"learning_rate": widgets.field_widget(TrainConfig, "learning_rate", 1e-3, min=3e-5,
                                                                  max=3e-2, log=True)})
    for v in (3e-5, 3e-2):
        ctl.set(learning_rate=v)
        assert ctl.values()["learning_rate"] == pytest.approx(v, rel=1e-12)
    with pytest.raises(ValueError, match="learning_rate must be between"):
        ctl.set(learning_rate=3.1e-2)


def test_the_learning_rate_slider_offers_the_values_people_use():
    """On a log slider in tenths of a decade, 3e-4 (the README's fine-tuning rate), 2e-4 or 5e-4 could not be
    picked: a drag gave 3.16e-4 and the like, which went into the run's config as such."""
    ctl = widgets.make_train_controls()
    marks = [v for _, v in ctl.widgets["learning_rate"].options]
    for v in (1e-5, 2e-5, 3e-5, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 3e-2, 1e-1):
        assert v in marks
        ctl.set(learning_rate=v)
        assert widgets.train_kwargs(**ctl.values())["trainer"]["learning_rate"] == v     # exactly, not 3.16e-4
    assert marks == sorted(marks) and (marks[0], marks[-1]) == (1e-5, 1e-1)
    assert ctl.widgets["learning_rate"].value == 1e-1 and ctl.widgets["learning_rate"].label == "1e-1"
    with pytest.raises(ValueError, match=r"learning_rate must be one of the slider's values \(3e-4 or 5e-4 nearby\), "
                                         r"got 0.000316"):
        ctl.set(learning_rate=3.16e-4, epochs=5)            # no move of the slider could choose it again
    assert ctl.values()["learning_rate"] == 1e-1 and ctl.values()["epochs"] == 30
    odd = widgets.make_train_controls(learning_rate=2.5e-4)   # a value passed in is one of the marks
    assert odd.values()["learning_rate"] == 2.5e-4 and odd.widgets["learning_rate"].label == "2.5e-4"
    odd.set(learning_rate=3e-4)
    odd.set(learning_rate=2.5e-4)
    assert odd.values()["learning_rate"] == 2.5e-4


def test_a_learning_rate_past_the_sliders_usual_ends_widens_it():
    """make_train_controls(learning_rate=1e-6), a fine-tuning rate the CLI takes, was refused as outside
    1e-5 .. 0.1, where epochs and episode counts past their slider's end widen it."""
    for lr, ends in [(1e-6, (1e-6, 1e-1)), (4e-7, (4e-7, 1e-1)), (0.5, (1e-5, 0.5))]:   # past the usual ends
        marks = [v for _, v in widgets.make_train_controls(learning_rate=lr).widgets["learning_rate"].options]
        assert (marks[0], marks[-1]) == ends and lr in marks and 3e-4 in marks


def test_a_starting_value_past_a_sliders_usual_end_widens_it():
    """frames, epochs and episode counts have no upper bound in their config: a panel opened with
    more than the slider's usual end shows that value, as its end, rather than refusing it."""
    assert (lambda w: (w.value, w.max))(widgets.sim_widgets(frames=800)["frames"]) == (800, 800)
    ctl = widgets.make_train_controls(epochs=300, train_episodes=5000, val_episodes=900)
    assert {k: (ctl.widgets[k].value, ctl.widgets[k].max) for k in ("epochs", "train_episodes", "val_episodes")} == \
        {"epochs": (300, 300), "train_episodes": (5000, 5000), "val_episodes": (900, 900)}


def test_rerun_sim_records_with_each_weight_and_the_seed_it_is_given(monkeypatch):
    """Each flocking slider sets its own weight of the recorded episode, and the panel's seed
    picks the episode."""
    seen = {}

    def record(**kw):
        seen.update(kw)
        return "episode"
    monkeypatch.setattr(viz, "record_rollout", record)
    monkeypatch.setattr(viz, "animate_rollout", lambda ro: ro)
    monkeypatch.setattr(viz, "animation_html", lambda anim: f"<{anim}>")
    assert widgets.rerun_sim(n_boids=4, width=320, height=328, separation_weight=0.5, cohesion_weight=3.0,
                             alignment_weight=1.5, frames=3, seed=7) == ("episode", "<episode>")
    cfg = seen.pop("cfg")
    assert (cfg.separation_weight, cfg.cohesion_weight, cfg.alignment_weight) == (0.5, 3.0, 1.5)
    assert seen == dict(frames=3, n_boids=4, width=320, height=328, seed=7)
    seen.clear()
    ctl = widgets.make_sim_controls(seed=5, n_boids=4, width=320, height=320, frames=3)
    assert seen["seed"] == 5 and ctl.last == ("episode", "<episode>")


def test_train_kwargs_put_each_control_in_its_own_argument():
    """Every training control reaches its own create_trainer argument (validation episodes are
    not the training ones), and extra keyword arguments are passed on as they are."""
    values = {**widgets.make_train_controls().values(), "train_episodes": 7, "val_episodes": 3, "epochs": 4,
              "batch_size": 64, "learning_rate": 1e-3}
    kw = widgets.train_kwargs(**values, device="cpu", dagger=False)
    assert kw == {"epochs": 4, "trainer": dict(learning_rate=1e-3, batch_size=64, train_episodes=7, val_episodes=3,
                                               model_config=ModelConfig(), device="cpu", dagger=False)}


@pytest.mark.parametrize("kwargs,name,grid", [({"height": 604}, "height", 4), ({"width": 963}, "width", 1),
                                              ({"height": 600}, "height", 8)])
def test_a_canvas_size_given_by_hand_stays_on_its_sliders_grid(kwargs, name, grid):
    """sim_widgets(height=604): the slider's grid of 8 px from 320 does not hold 604, so once the
    slider moved, the size the user asked for could not be chosen again. The step shrinks to the
    largest that holds it; sizes on the 8 px grid keep it."""
    w = widgets.sim_widgets(**kwargs)[name]
    assert w.value == kwargs[name] and w.step == grid and (w.value - w.min) % w.step == 0


def test_a_batch_size_given_by_hand_stays_on_its_sliders_grid():
    b = widgets.make_train_controls(batch_size=100).widgets["batch_size"]
    assert b.value == 100 and b.min == 16 and b.step == 4       # 16 + 21 * 4


def test_a_best_model_is_evaluated_in_the_world_it_was_trained_in(tmp_path, monkeypatch, capsys):
    """Notebook 03 compares the model of load_best_model with the teacher, "the same figures as `python -m
    predlab.evaluate`"; for a checkpoint of a run in another world (--width_max 800) they were not: the
    model was driven in the browser's world, which the command line draws from only for a model.js."""
    monkeypatch.setenv("PREDLAB_QUICK", "1")
    from predlab import evaluate
    from predlab.config import WorldConfig
    from predlab.train import create_trainer
    world = WorldConfig(frames=12, boids_max=8, width_max=800, height_max=600)
    t = create_trainer(train_episodes=2, val_episodes=1, batch_size=64, world_config=world, eval_every=0,
                       dagger=False, d_model=8, n_heads=2, n_layers=1, ffn_hidden=8, device="cpu", progress=False,
                       verbose=False)
    t.train_dataset.generator.close()
    path = t.save_checkpoint(tmp_path / "best_model.pt")
    model, msg = viz.load_best_model(tmp_path, verbose=False)
    assert model.world_config == world
    assert ("trained in a world other than the browser's: width_max 800 (browser: 3840), height_max 600 (browser: "
            "2160), boids_max 8 (browser: 50)") in msg
    kw = dict(episodes=8, frames=300, seed=0, baselines=False)
    figures = [evaluate.compare(policy, **kw) for policy in (model, path)]
    for who in ("policy", "teacher"):
        assert [{k: v for k, v in f[who].items() if k != "seconds"} for f in figures] == \
            [{k: v for k, v in figures[1][who].items() if k != "seconds"}] * 2
    # trained on in another world, it is evaluated as any trained model is (the browser's world unless told), not
    # in its checkpoint's; a teacher Rollout of other episodes is refused, naming where the model's world came from
    teacher = evaluate.rollout("teacher", episodes=2, frames=20)
    with pytest.raises(ValueError, match=r"teacher is a Rollout of other episodes .* \(drawn from policy.world_config"):
        evaluate.compare(model, episodes=2, frames=20, teacher=teacher)
    # a trainer that fails to be built (a resume of a file not there) leaves the model as it was
    with pytest.raises(FileNotFoundError):
        create_trainer(model=model, train_episodes=2, val_episodes=1, batch_size=64, eval_every=0, dagger=False,
                       device="cpu", progress=False, verbose=False, world_config=WorldConfig(boids_max=20),
                       resume=str(tmp_path / "none.pt"))
    assert model.world_config == world
    again = create_trainer(model=model, train_episodes=2, val_episodes=1, batch_size=64, eval_every=0, dagger=False,
                           device="cpu", progress=False, verbose=False, world_config=WorldConfig(boids_max=20))
    again.train_dataset.generator.close()
    assert not hasattr(again.model, "world_config") and evaluate._world_of(again.model)[0] == WorldConfig()
    evaluate.compare(model, episodes=2, frames=20, teacher=teacher)
    # a world this predlab does not know (a newer one's field): the model loads, in the browser's world, saying so
    state = torch.load(path, weights_only=True)
    state["world_config"]["wind"] = 0.5
    torch.save(state, path)
    model, msg = viz.load_best_model(tmp_path, verbose=False)
    assert model.world_config == WorldConfig() and "best_model.pt: bad world_config: " in msg
    assert "wind" in msg
    # a stand-in trained here says so before its seconds of training, and is of the world it was trained in
    model, msg = viz.load_best_model(tmp_path / "none", epochs=1)
    assert capsys.readouterr().out.startswith(f"no checkpoint at {tmp_path / 'none' / 'best_model.pt'}: training a "
                                              "small model instead")
    assert model.world_config == WorldConfig(frames=viz.sizes()["data_frames"])


def test_load_best_model_reports_the_val_mse_of_the_model_it_trained(tmp_path, monkeypatch):
    """Without a checkpoint it trains a stand-in and returns the model of its last epoch: the message
    gave the best epoch's val MSE (0.30 here), not that model's (0.40)."""
    import predlab.train
    from predlab.model import TransformerPredator

    class Trainer:
        def __init__(self, **kw):
            self.model = TransformerPredator(d_model=8, n_heads=2, n_layers=1, ffn_hidden=8)
            self.world_config = kw["world_config"]
            self.train_dataset = type("Data", (), {"generator": type("Gen", (), {"close": lambda self: None})()})()

        def train(self, epochs):
            self.history = [{"epoch": e + 1, "val_loss": v} for e, v in enumerate((0.5, 0.3, 0.4))]
            self.best_metric, self.best_epoch = 0.3, 2

    monkeypatch.setattr(predlab.train, "create_trainer", Trainer)
    model, msg = viz.load_best_model(tmp_path, epochs=3, verbose=False)
    assert "val MSE 0.4000" in msg and "0.3000" not in msg


@pytest.mark.skipif(not viz.node_available(), reason="node is not installed")
def test_js_parity_takes_the_inputs_as_an_iterator(make_model, make_samples):
    """Inputs given as a generator: PyTorch and Node both see all of them (Node got none, and
    the comparison failed with a broadcasting error)."""
    inputs = make_samples([0, 3, 6], seed=4)
    res = viz.js_parity(make_model(1), (s for s in inputs))
    assert res["torch"].shape == res["js"].shape == (3, 2) and res["max_abs_diff"] < 1e-5


def test_plot_catches_takes_labels_as_a_numpy_array(rollout):
    fig = viz.plot_catches([rollout, rollout], labels=np.array(["teacher", "model"]))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["teacher", "model"]


@pytest.mark.parametrize("seed,error", [(-1, ValueError), (1.5, TypeError), ("a", TypeError)])
def test_sim_controls_refuse_a_bad_seed_when_built(seed, error):
    """Not at the first slider move, inside a widget callback, where the notebook shows no error."""
    with pytest.raises(error, match="seed must be a whole number"):
        widgets.make_sim_controls(seed=seed, run_now=False, n_boids=3, frames=2)


def test_plot_catches_names_a_rollout_of_evaluate_as_the_wrong_kind():
    """predlab.evaluate's Rollout holds per-episode totals, not catches per frame: a TypeError saying
    what to pass, not "'Rollout' object is not iterable"."""
    from predlab import evaluate

    with pytest.raises(TypeError, match=r"catches must be a viz.Rollout .* not predlab.evaluate.Rollout"):
        viz.plot_catches(evaluate.rollout("teacher", episodes=1, frames=2))


@pytest.mark.parametrize("full", [False, True], ids=["written", "full disk"])
def test_export_for_browser_writes_through_a_linked_model_js_and_puts_files_back_on_a_full_disk(
        make_model, tmp_path, monkeypatch, full):
    """Notebook 04 replaced a model.js linked into a page's folder with a file (the page's was never
    updated), and on a full disk left the earlier model.js in previous/ and the folder with none."""
    import errno
    import os
    import predlab.export as E
    from conftest import linked_to_page
    d, site = tmp_path / "ck", tmp_path / "site"
    page = linked_to_page(d, site)
    (d / "model.json").write_text('{"d_model": 48}')             # an earlier export's, other weights
    if full:
        write = E.atomic_write_text

        def full_at_json(path, text):
            if Path(path).name == "model.js":      # written first: it fails, and model.json is not begun
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return write(path, text)
        monkeypatch.setattr(E, "atomic_write_text", full_at_json)
        with pytest.raises(OSError):
            viz.export_for_browser(make_model(0), d)
        assert (d / "model.js").is_symlink() and (site / "model.js").read_text() == page
        assert (d / "model.json").read_text() == '{"d_model": 48}' and not (d / "previous").exists()
        return
    res = viz.export_for_browser(make_model(0), d)
    assert (d / "model.js").is_symlink() and E.read_weights(site / "model.js").config == make_model(0).config
    assert [p.read_text() for p in d.glob("previous/*/model.js")] == [page]
    assert [p.read_text() for p in d.glob("previous/*/model.json")] == ['{"d_model": 48}']
    assert "moved model.json of other weights to" in res["message"]
    assert "kept a copy of the file model.js links to in" in res["message"]


def test_export_for_browser_cut_by_ctrl_c_writes_both_files_first(make_model, tmp_path, monkeypatch):
    """A Ctrl-C once the earlier model.js and model.json had moved to previous/ left the folder with
    neither: the export now finishes, then the interrupt takes effect."""
    import os
    import signal
    import predlab.export as E
    viz.export_for_browser(make_model(0), tmp_path)
    move = E.move_to_previous

    def move_then_ctrl_c(files, directory, **kw):
        dest = move(files, directory, **kw)
        os.kill(os.getpid(), signal.SIGINT)            # the user's Ctrl-C, with the old files moved
        return dest
    monkeypatch.setattr(E, "move_to_previous", move_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        viz.export_for_browser(make_model(1), tmp_path)
    assert (tmp_path / "model.js").is_file() and (tmp_path / "model.json").is_file()
    got, want = E.read_weights(tmp_path / "model.js").state_dict(), make_model(1).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_record_rollout_drives_a_model_as_evaluation_does():
    """A model passed as the policy drives in eval mode and in its own dtype: a fresh model (train mode)
    drove with dropout on, so the same seed recorded other actions each time, and a float64 model
    failed inside its first layer on the float32 observations."""
    from predlab import TransformerPredator
    from predlab.evaluate import ModelPolicy

    torch.manual_seed(0)
    model = TransformerPredator(dropout=0.5)
    assert model.training
    first = viz.record_rollout(frames=5, n_boids=3, seed=0, policy=model)
    again = viz.record_rollout(frames=5, n_boids=3, seed=0, policy=model)
    assert np.array_equal(first.action, again.action) and model.training     # its mode is put back
    want = viz.record_rollout(frames=5, n_boids=3, seed=0, policy=ModelPolicy(model))
    assert np.array_equal(first.action, want.action)
    wide = viz.record_rollout(frames=5, n_boids=3, seed=0, policy=model.double())
    assert np.allclose(wide.action, first.action, atol=1e-5)


def test_js_parity_refuses_a_weight_file_of_another_model(make_model, make_samples, tmp_path):
    """weights= of another model (an earlier export, another size) ran in Node against this model in
    PyTorch, and the difference between the two models was reported as the engines' difference."""
    from predlab import TransformerPredator
    from predlab.export import write_weights

    other = write_weights(make_model(1), tmp_path / "model.js")
    with pytest.raises(ValueError, match=r"hold other weights than model \(same sizes, other values\)"):
        viz.js_parity(make_model(2), make_samples([3], seed=0), weights=other)
    with pytest.warns(UserWarning):
        small = write_weights(TransformerPredator(d_model=32, n_layers=2), tmp_path / "small.js")
    with pytest.raises(ValueError, match=r"d_model 32 \(model: 48\), n_layers 2 \(model: 3\)"):
        viz.js_parity(make_model(2), make_samples([3], seed=0), weights=small)


@pytest.mark.skipif(not viz.node_available(), reason="node is not installed")
def test_js_parity_takes_one_browser_dict_as_one_input(make_model, make_samples, tmp_path):
    """One dict, as predict takes it, was read as its keys: "sample 0 must be an object/dict, got str"."""
    from predlab.export import write_weights

    model = make_model(2)
    [one] = make_samples([4], seed=1)
    res = viz.js_parity(model, one, weights=write_weights(model, tmp_path / "model.js"))
    assert res["torch"].shape == res["js"].shape == (1, 2) and res["max_abs_diff"] < 1e-5


def _small_trainer(samples, lr, callbacks=()):
    """A 1-layer, 8-wide trainer on samples (train and validation), for the live plot's tests."""
    from predlab.model import TransformerPredator
    from predlab.train import SupervisedTrainer
    return SupervisedTrainer(TransformerPredator(d_model=8, n_heads=2, n_layers=1, ffn_hidden=8), samples, samples,
                             batch_size=64, device="cpu", learning_rate=lr, callbacks=callbacks)


def _one_epoch_checkpoint(samples, tmp_path):
    """A small trainer after one epoch at learning rate 1e-2, and its checkpoint's path."""
    done = _small_trainer(samples, 1e-2)
    done.train(1)
    return done, done.save_checkpoint(tmp_path / "c.pt")


def test_liveplot_given_to_a_resumed_trainer_shows_that_runs_history(samples, tmp_path):
    """A live plot that drew one trainer's run, given to another trainer resumed from a checkpoint, kept
    the first run's values for the epochs the checkpoint had done in place of the resumed run's."""
    _, path = _one_epoch_checkpoint(samples, tmp_path)
    lp = viz.LivePlot(display=False)
    _small_trainer(samples, 1e-4, [lp]).train(2)
    resumed = _small_trainer(samples, 1e-4, [lp])
    resumed.load_checkpoint(path)
    resumed.train(2)
    assert lp.history["epoch"] == [1, 2]
    assert lp.history["val_loss"] == [h["val_loss"] for h in resumed.history]


def test_the_sample_set_plots_name_a_set_whose_fields_do_not_fit(samples):
    """A set of numpy arrays failed with "no attribute 'to'" or "'tuple' object has no attribute 'squeeze'",
    and one whose fields have other lengths was drawn from the rows there happened to be."""
    from predlab.data import InputError, SampleSet
    as_numpy = SampleSet(samples.context.numpy(), samples.predator, samples.boids, samples.n, samples.target)
    cut = SampleSet(samples.context[:3], samples.predator, samples.boids, samples.n, samples.target)
    for bad, message in ((as_numpy, r"samples\.context must be a tensor, got ndarray"),
                         (cut, r"samples\.predator has shape .* \(context has 3 rows\)")):
        for call in (viz.plot_training_data, viz.training_data_stats, lambda s: viz.sample_frames(s, 3)):
            with pytest.raises(InputError, match=message):
                call(bad)


def test_the_batch_size_slider_reaches_a_gpu_batch_given_as_its_start():
    """make_train_controls(batch_size=4096), the README's GPU batch, was refused: the slider ended
    at 2048. Its end grows to fit, as the epoch and episode sliders' do."""
    from predlab import widgets
    c = widgets.make_train_controls(batch_size=4096)
    assert c.values()["batch_size"] == 4096
    c.set(batch_size=2048)
    c.set(batch_size=4096)
    assert widgets.train_kwargs(**c.values())["trainer"]["batch_size"] == 4096
    assert widgets.make_train_controls().values()["batch_size"] == 256


@pytest.mark.parametrize("name", ["model.js", "model.json", "MODEL.JS"])
def test_export_for_browser_refuses_a_weight_file_name_for_its_folder(make_model, tmp_path, name):
    """export_for_browser(model, "checkpoints/model.js") made a folder named model.js holding the two
    files, where the page, the demo and the command line look for the file model.js."""
    here = re.escape(str(tmp_path))
    with pytest.raises(ValueError, match=rf"{name} names a weight file: give the folder .* \(here {here}\)"):
        viz.export_for_browser(make_model(0), tmp_path / name)
    assert not list(tmp_path.iterdir())
    (tmp_path / "site.js").mkdir()                 # a folder of that name already there is a folder
    assert viz.export_for_browser(make_model(0), tmp_path / "site.js")["paths"][0] == tmp_path / "site.js" / "model.js"


def test_liveplot_shows_the_history_of_a_checkpoint_its_trainer_loads(samples, tmp_path):
    """A trainer that drew two epochs, then loaded another run's checkpoint of epoch 1 and trained on:
    the plot kept its own epoch 1 in place of the loaded run's, beside that run's epoch 2."""
    other, path = _one_epoch_checkpoint(samples, tmp_path)
    lp = viz.LivePlot(display=False)
    t = _small_trainer(samples, 1e-4, [lp])
    t.train(2)
    t.load_checkpoint(path)
    t.train(2)
    assert lp.history["epoch"] == [1, 2]
    assert lp.history["val_loss"] == [h["val_loss"] for h in t.history]
    assert lp.history["val_loss"][0] == other.history[0]["val_loss"]


@pytest.mark.parametrize("value, quick", [("off", False), ("OFF", False), (" No ", False), ("False", False),
                                          ("yes", True), ("on", True), ("2", True)])
def test_quick_mode_reads_the_usual_words_for_off(monkeypatch, value, quick):
    """PREDLAB_QUICK=off turned quick mode on: only '', 0, false and no turned it off."""
    monkeypatch.setenv("PREDLAB_QUICK", value)
    assert viz.quick_mode() is quick


def test_setting_several_sim_controls_records_one_episode_with_all_of_them(monkeypatch):
    """set(frames=2, n_boids=3, ...) recorded an episode for each value, each with the values before
    it: seconds of simulation per value, in a script that sets a panel."""
    ctl = widgets.make_sim_controls(n_boids=5, frames=3, width=320, height=320)
    calls = []
    real = widgets.rerun_sim
    monkeypatch.setattr(widgets, "rerun_sim", lambda **kw: calls.append(kw) or real(**kw))
    ctl.set(frames=2, n_boids=3, cohesion_weight=0.5)
    assert [(c["frames"], c["n_boids"], c["cohesion_weight"]) for c in calls] == [(2, 3, 0.5)]
    ctl.set(frames=2)                                    # nothing changed: nothing recorded
    assert len(calls) == 1
    ctl.widgets["n_boids"].value = 4                     # a slider moved by hand still records
    assert len(calls) == 2 and ctl.last[0].pos.shape == (2, 4, 2)


def test_liveplot_shades_the_catch_ratios_interval():
    """The catch panel shades catch_ratio_low .. catch_ratio_high (CatchEvaluator's 95% interval)
    at the epochs it was measured, so a ratio of 64 episodes is not read as sharper than it is;
    bounds that are NaN or infinite are left out rather than breaking the axis."""
    lp = viz.LivePlot(display=False)
    bounds = {2: (0.5, 1.25), 4: (0.75, 1.5), 6: (0.5, math.inf)}
    for e in range(1, 7):
        logs = {"train_loss": 1.0 / e, "val_loss": 1.0 / e, "samples_per_s": 5.0}
        if e in bounds:
            logs.update(catch_ratio=0.9, catch_ratio_low=bounds[e][0], catch_ratio_high=bounds[e][1])
        lp.on_epoch_end(None, e, logs)
    band = lp.bands["catch_ratio"]
    assert band.axes is lp.lines["catch_ratio"].axes and len(lp.fig.axes) == 3
    xy = np.concatenate([p.vertices for p in band.get_paths()])
    assert set(xy[:, 0]) == {2, 4, 6}                            # epoch 6's infinite top: up to the panel's top
    assert xy[:, 1].min() == 0.5 and xy[:, 1].max() == lp.lines["catch_ratio"].axes.get_ylim()[1]
    assert lp.lines["catch_ratio"].axes.collections[:] == [band]         # redrawn each epoch, not stacked
    ymin, ymax = lp.lines["catch_ratio"].axes.get_ylim()
    assert ymin <= 0.5 and 1.5 <= ymax < 10


def test_liveplot_shades_the_interval_of_the_first_catch_check():
    """At the first check (epoch 5 of a run) the band has an area: a band over one epoch had none."""
    lp = viz.LivePlot(display=False)
    for e in range(1, 6):
        logs = {"train_loss": 1.0 / e, "val_loss": 1.0 / e, "samples_per_s": 5.0}
        if e == 5:
            logs.update(catch_ratio=0.9, catch_ratio_low=0.6, catch_ratio_high=1.2)
        lp.on_epoch_end(None, e, logs)
    xy = np.concatenate([p.vertices for p in lp.bands["catch_ratio"].get_paths()])
    assert xy[:, 0].min() < 5 < xy[:, 0].max() and xy[:, 1].min() == 0.6 and xy[:, 1].max() == 1.2


def test_liveplot_saved_from_a_script_keeps_its_labels_in_the_figure():
    """The figure is laid out when drawn, with its data: laid out before any, savefig cut off the log
    axis's tick labels on the left and the catch panel's title on the right."""
    lp = viz.LivePlot(display=False)
    for e in range(1, 6):
        logs = {"train_loss": 10.0 ** -e, "val_loss": 2 * 10.0 ** -e, "samples_per_s": 5000.0 * e}
        if e == 5:
            logs.update(catch_ratio=0.9, catch_ratio_low=0.6, catch_ratio_high=1.2)
        lp.on_epoch_end(None, e, logs)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(lp.fig)                  # what savefig draws with
    canvas.draw()
    renderer, box = canvas.get_renderer(), lp.fig.bbox
    for ax in lp.fig.axes:       # everything drawn of each panel: title, tick labels, axis labels
        b = ax.get_tightbbox(renderer)
        assert box.x0 - 1 <= b.x0 and b.x1 <= box.x1 + 1 and b.y1 <= box.y1 + 1, ax.get_title()


def test_liveplot_draws_no_band_without_bounds():
    lp = viz.LivePlot(display=False)
    lp.on_epoch_end(None, 1, {"train_loss": 1.0, "val_loss": 1.0, "samples_per_s": 5.0, "catch_ratio": 0.5,
                              "catch_ratio_low": float("nan"), "catch_ratio_high": float("nan")})
    assert "catch_ratio" not in lp.bands and not lp.lines["catch_ratio"].axes.collections


def test_the_training_cell_takes_the_epochs_slider_and_names_the_controls_its_trainer_lacks(samples, tmp_path,
                                                                                           capsys):
    """02's training cell passed the epochs read when the trainer was built, so a learning rate or model
    size moved afterwards was trained without, and without a word; a moved epochs slider was ignored too."""
    from predlab.export import write_weights
    from predlab.model import TransformerPredator
    from predlab.train import SupervisedTrainer

    ctl = widgets.make_train_controls(epochs=3, batch_size=64)
    trainer = SupervisedTrainer(TransformerPredator(), samples, samples, learning_rate=2e-3, batch_size=64,
                                device="cpu")
    assert widgets.train_epochs(ctl, trainer) == 3                     # nothing moved: no warning
    ctl.set(epochs=7)
    assert widgets.train_epochs(ctl, trainer) == 7                     # train(7) goes on to epoch 7
    assert capsys.readouterr().err == ""
    ctl.set(learning_rate=1e-2, d_model=64)
    for _ in range(2):                                  # each time the cell runs, not only the first
        assert widgets.train_epochs(ctl, trainer) == 7
        assert ("learning_rate 0.01 (trainer: 0.002), d_model 64 (trainer: 48); the trainer keeps its own"
                in capsys.readouterr().err)
    with pytest.raises(TypeError, match="trainer must be a trainer of predlab.train.create_trainer"):
        widgets.train_epochs(ctl, widgets.train_kwargs(**ctl.values()))
    # a model started from a file has that file's sizes, which the size sliders left at their defaults mean
    ctl = widgets.make_train_controls(epochs=1, train_episodes=1, val_episodes=1)
    with pytest.warns(UserWarning, match="stock browser page"):
        path = write_weights(TransformerPredator(d_model=32, n_heads=2, n_layers=1, ffn_hidden=32), tmp_path / "m.js")
    from predlab.train import create_trainer
    tuned = create_trainer(**widgets.train_kwargs(**ctl.values())["trainer"], init_weights=path, device="cpu",
                           world_config=WorldConfig(frames=5), progress=False, verbose=False)
    capsys.readouterr()
    assert tuned.model.config.d_model == 32 and widgets.train_epochs(ctl, tuned) == 1
    assert capsys.readouterr().err == ""


def test_the_training_cell_says_when_the_epochs_slider_raises_a_finished_runs_learning_rate(samples, capsys):
    """train(N) past a run's end stretches its cosine to N: a run of 6 epochs trained on to 8 went from 2.8e-4 back
    up to 4.6e-4 (30 to 40: from 5% of the peak to 19%), which the cell did not say."""
    from predlab.model import TransformerPredator
    from predlab.train import SupervisedTrainer
    ctl = widgets.make_train_controls(epochs=40, batch_size=64)
    trainer = SupervisedTrainer(TransformerPredator(), samples, samples, learning_rate=2e-3, batch_size=64,
                                device="cpu")
    trainer.epoch, trainer.scheduler.total = 30, 30        # as a finished run of 30 epochs leaves them
    assert widgets.train_epochs(ctl, trainer) == 40
    err = capsys.readouterr().err
    assert ("note: the epochs slider at 40 stretches the run's schedule of 30 epochs: the learning rate goes back up "
            "from 1.0e-04, where epoch 30 ended, to 3.") in err and "set INIT_WEIGHTS to its best_model.pt" in err
    trainer.scheduler.total = 40                            # a run on its own schedule: nothing to say
    assert widgets.train_epochs(ctl, trainer) == 40 and capsys.readouterr().err == ""


def test_the_training_cell_says_when_model_js_is_not_the_runs_best(tmp_path, capsys):
    """02 writes best_model.pt and leaves the export to 04: an earlier model.js stayed beside it, and the demo, which
    loads checkpoints/model.js, ran the earlier model without a word."""
    from predlab.export import write_weights
    from predlab.model import TransformerPredator
    from predlab.train import create_trainer
    widgets.export_verdict(tmp_path)                                        # no run yet: nothing
    assert capsys.readouterr().out == ""
    t = create_trainer(train_episodes=1, val_episodes=1, frames=5, device="cpu", progress=False, verbose=False)
    t.save_checkpoint(tmp_path / "best_model.pt")
    widgets.export_verdict(tmp_path)
    said = capsys.readouterr().out
    assert said == f"no model.js of this best_model.pt in {tmp_path} yet: 04_export.ipynb writes it\n"
    write_weights(TransformerPredator(), tmp_path / "model.js")             # an earlier run's export
    widgets.export_verdict(tmp_path)
    assert (f"{tmp_path / 'model.js'} is an earlier export, not of this best_model.pt: the demo and the page run "
            "that one") in capsys.readouterr().out
    # a fine-tune that did worse than its start: the line invited 04's export, which replaced the better model.js
    widgets.export_verdict(tmp_path, worse=True)
    said = capsys.readouterr().out
    assert "did worse than the weights it started from (above): keep it" in said and "run that one until" not in said
    write_weights(t.model, tmp_path / "model.js")                           # 04's export of it
    widgets.export_verdict(tmp_path)
    assert capsys.readouterr().out == ""
    (tmp_path / "model.js").write_text("not weights")
    widgets.export_verdict(tmp_path)
    assert "is an earlier export" in capsys.readouterr().out
    # sizes the page refuses: 04 writes them to not-browser-size/, and the folder's model.js is no export of it
    big = create_trainer(train_episodes=1, val_episodes=1, frames=5, device="cpu", progress=False, verbose=False,
                         d_model=32, n_heads=2)
    big.save_checkpoint(tmp_path / "best_model.pt")
    widgets.export_verdict(tmp_path)
    assert (f"no model.js of this best_model.pt in {tmp_path / 'not-browser-size'} yet: 04_export.ipynb writes it "
            "there (the stock page refuses its sizes)") in capsys.readouterr().out
    assert viz.export_for_browser(big.model, tmp_path)["paths"][0] == tmp_path / "not-browser-size" / "model.js"
    widgets.export_verdict(tmp_path)
    assert capsys.readouterr().out == ""


def test_a_slider_redraw_that_fails_or_is_interrupted_says_so_in_the_panel(monkeypatch, capsys):
    """Interrupted while it recorded, the panel kept "recording 500 frames..." and controls.last the episode of
    other settings; the error went only to JupyterLab's log console."""
    ctl = widgets.make_sim_controls(run_now=False, frames=6, n_boids=5, width=320, height=320)
    monkeypatch.setattr("predlab.widgets._in_notebook", lambda: True)
    ctl.widgets["frames"].value = 7
    assert ctl.last is not None
    capsys.readouterr()

    def cut(**kw):
        raise KeyboardInterrupt
    monkeypatch.setattr("predlab.widgets.rerun_sim", cut)
    ctl.widgets["frames"].value = 8                     # a slider's callback: nothing raised into the kernel
    assert ctl.last is None and "interrupted; move a slider to draw again" in capsys.readouterr().out
    monkeypatch.setattr("predlab.widgets.rerun_sim", lambda **kw: 1 / 0)
    ctl.widgets["frames"].value = 9
    out = capsys.readouterr().out
    assert "failed: ZeroDivisionError: division by zero; move a slider" in out and "Traceback" in out
    monkeypatch.setattr("predlab.widgets._in_notebook", lambda: False)      # called from code: it raises there
    with pytest.raises(ZeroDivisionError):
        ctl.widgets["frames"].value = 10


def test_the_fine_tuning_advice_names_where_the_file_it_started_from_went(tmp_path, capsys):
    """Fine-tuning the folder's own best_model.pt moves that file to previous/ at the run's first write: built again
    as the advice said, the trainer started from the run's worse model, still named best_model.pt."""
    from predlab.train import Checkpointer, create_trainer
    kw = dict(train_episodes=1, val_episodes=1, frames=5, device="cpu", progress=False, verbose=False,
              dagger=False, eval_every=0)
    create_trainer(**kw, callbacks=[Checkpointer(tmp_path)]).train(1)
    tuned = create_trainer(**kw, init_weights=tmp_path / "best_model.pt", callbacks=[Checkpointer(tmp_path)])
    start = widgets.fine_tune_start(tuned)
    tuned.train(1)
    tuned.best_metric, tuned.best_epoch = start * 1.5, 1                     # no epoch beat the file
    capsys.readouterr()
    assert widgets.fine_tune_verdict(tuned, start) is True
    moved = next((tmp_path / "previous").glob("*/best_model.pt"))
    assert f"try a lower learning rate (set INIT_WEIGHTS to {str(moved)!r}, move the slider" in capsys.readouterr().err


def test_the_notebooks_training_cell_reads_the_controls_when_it_runs(samples, capsys):
    """Run as it stands in 02, the training cell trains to the epochs slider's value and warns about a
    slider the trainer does not have (one it was built before, or the trainer of an earlier run). Run
    again on a finished run, it called train() anyway, whose warning told the notebook's user to call
    train(15): the cell calls none, and says to move the slider."""
    import json
    from pathlib import Path

    from predlab.model import TransformerPredator
    from predlab.train import SupervisedTrainer

    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "02_train.ipynb").read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    cell = next(s for s in code if "trainer.train(" in s)
    seen = []

    class Trainer(SupervisedTrainer):
        def train(self, n):
            seen.append(n)

    class Data:      # what the cell closes after training
        generator = type("G", (), {"close": lambda self: None})()

    trainer = Trainer(TransformerPredator(), samples, samples, batch_size=256, device="cpu")
    trainer.train_dataset = Data()
    ctl = widgets.make_train_controls(epochs=2)
    ns = dict(widgets=widgets, controls=ctl, kw=widgets.train_kwargs(**ctl.values()), trainer=trainer,
              ckpt_dir=Path("checkpoints"), start=None)      # (the build cell's: None without INIT_WEIGHTS)
    ctl.set(epochs=5, batch_size=128)
    ns["kw"] = widgets.train_kwargs(**ctl.values())     # as when building the new trainer then failed
    exec(cell, ns)
    assert seen == [5] and "batch_size 128 (trainer: 256)" in capsys.readouterr().err
    shows = []
    ns["live"] = type("Live", (), {"show": lambda self, t: shows.append(t)})()
    exec(cell, ns)                                     # the run not yet done: train() draws the plot
    assert not shows
    trainer.epoch = 5                                  # done: the cell again draws the run's plot
    capsys.readouterr()
    exec(cell, ns)                                     # and calls no train(5), whose warning says "train(15)"
    assert shows == [trainer] and seen == [5, 5]
    assert "move it past 5 and run this cell again to train on" in capsys.readouterr().out


def test_attention_overlay_titles_a_frame_of_one_boid_or_none(make_model, samples):
    """Dragging the frame slider past the last catch titled the panel "0% of [CLS] on the 0 boids, at most
    0.0% on one", as if the model had looked nowhere; one boid left read "on the 1 boids"."""
    model = make_model(0, d_model=16, n_heads=2, n_layers=2, ffn_hidden=16)
    batch = viz.sample_frames(samples, 3)
    batch["mask"][0] = False
    batch["mask"][1] = False
    batch["mask"][1, 0] = True
    ctl = widgets.make_attention_controls(model, batch, frame=0)
    assert ctl.last.axes[0].get_title().endswith("no boid left in this frame")
    ctl.set(frame=1)
    assert "of [CLS] on the boid," in ctl.last.axes[0].get_title()
    n = int(batch["mask"][2].sum())
    assert f"on the {n} boids," in viz.plot_attention_overlay(model, batch, index=2).axes[0].get_title()
    # the grid of every layer and head said nothing: empty panels under a 0 .. 1e-9 colour scale
    assert "no boid left in this frame" in viz.plot_attention_grid(model, batch, index=0)._suptitle.get_text()
    assert "no boid left" not in viz.plot_attention_grid(model, batch, index=1)._suptitle.get_text()


def test_agreement_plot_keeps_each_layers_heads_apart_at_the_sliders_largest_sizes():
    """At 16 heads (the notebook's slider allows them) the dots, 0.12 apart, reached into the next layer's
    bar, heads 0 and 10 shared a colour, and at 12 layers the "layer N" labels ran into each other."""
    L, H = 12, 16
    rng = np.random.default_rng(0)
    ag = viz.Agreement(rng.random((L, H)), rng.random(L), 0.1, 100)
    fig = viz.plot_agreement(ag)
    ax = fig.axes[0]
    dots = ax.collections[:H]
    for layer in range(L):
        xs = [d.get_offsets()[layer, 0] for d in dots]
        assert all(layer - 0.4 <= x <= layer + 0.4 for x in xs)
    assert len({tuple(d.get_facecolor()[0]) for d in dots}) == H
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.get_xticklabels()]
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))


def test_a_fine_tuning_run_in_the_notebook_shows_what_it_must_beat_and_says_when_nothing_did(tmp_path, capsys):
    """The command line prints the val MSE of --init_weights before training and warns when no epoch beat
    it; notebook 02 with INIT_WEIGHTS did neither, so a learning rate that undid the model went unseen."""
    from predlab.export import write_weights
    from predlab.model import TransformerPredator
    from predlab.train import create_trainer

    ctl = widgets.make_train_controls(epochs=1, train_episodes=1, val_episodes=2)
    kw = dict(**widgets.train_kwargs(**ctl.values())["trainer"], device="cpu", world_config=WorldConfig(frames=5),
              progress=False, verbose=False)
    assert widgets.fine_tune_start(create_trainer(**kw)) is None          # not from a file: nothing to beat
    path = write_weights(TransformerPredator(), tmp_path / "m.js")
    tuned = create_trainer(**kw, init_weights=path)
    capsys.readouterr()
    start = widgets.fine_tune_start(tuned)
    assert start == tuned.validate() and f"starting from the weights of {path}: val MSE {start:.5f}" \
        in capsys.readouterr().out
    tuned.best_metric, tuned.best_epoch = start * 1.5, 1                   # no epoch beat the file
    widgets.fine_tune_verdict(tuned, start)
    assert f"warning: no epoch beat the weights of {path} (val MSE {start:.5f} before training" in capsys.readouterr().err
    tuned.best_metric = start * 0.5
    widgets.fine_tune_verdict(tuned, start)
    assert capsys.readouterr().err == ""
    # a checkpoint of another world: its weights carry over, its world does not, and the cell says so
    trained = create_trainer(**{**kw, "world_config": WorldConfig(frames=5, boids_max=12)})
    ck = trained.save_checkpoint(tmp_path / "small_world.pt")
    widgets.fine_tune_start(create_trainer(**kw, init_weights=ck))
    assert "was trained in another world, boids_max 12 (this run: 50)" in capsys.readouterr().err
    tuned.validate = lambda data=None: float("nan")                        # weights too large to train from
    with pytest.raises(ValueError, match="actions on the validation episodes are NaN or infinite"):
        widgets.fine_tune_start(tuned)


def test_cls_attention_makes_only_the_cls_row_and_matches_the_full_weights(make_model, samples, monkeypatch):
    """Every layer's [B, H, T, T] weights were made and kept to read row 0: one frame of 10,000 boids took
    6.7 GB, and attention_agreement's default 512 frames of 1,000 boids more than 30 GB (killed kernel)."""
    model = make_model(2, d_model=16, n_heads=2, n_layers=3, ffn_hidden=16)
    batch = viz.sample_frames(samples, 12)
    _, full = model.forward_with_attention(batch)
    expect = torch.stack([w[:, :, 0, 3:] for w in full], 1) * batch["mask"][:, None, None, :]
    monkeypatch.setattr(type(model), "forward_with_attention", lambda *a: pytest.fail("made every row"))
    got = viz.cls_attention(model, batch)
    assert got.shape == expect.shape and torch.allclose(got, expect, atol=1e-6)
    with torch.no_grad():
        _, rows = model.forward_with_cls_attention(batch)
    assert [tuple(r.shape) for r in rows] == [tuple(w[:, :, 0].shape) for w in full]
    pad = ~batch["mask"][:, None, :].expand(-1, 2, -1)
    assert all(float(r[:, :, 3:][pad].abs().sum()) == 0 for r in rows)      # padded boids get no attention
    assert all(torch.allclose(r.sum(-1), torch.ones(())) for r in rows)


def test_agreement_forwards_a_bounded_number_of_frames_at_a_time(make_model, samples, monkeypatch):
    model = make_model(0, d_model=16, n_heads=2, n_layers=2, ffn_hidden=16)
    batch = viz.sample_frames(samples, 30)
    whole = viz.attention_agreement(model, batch)
    sizes = []
    real = viz.cls_attention
    monkeypatch.setattr(viz, "cls_attention", lambda m, b: sizes.append(len(b["mask"])) or real(m, b))
    from predlab.model import forward_bytes
    per = forward_bytes(1, batch["mask"].shape[1] + 3, model.config, "cpu", torch.float32)
    monkeypatch.setattr(viz, "AGREEMENT_BYTES", 7 * per)
    part = viz.attention_agreement(model, batch)        # chunk 512 asked; 7 frames fit
    assert max(sizes) == 7 and sum(sizes) == whole.samples
    assert np.allclose(part.per_head, whole.per_head) and np.allclose(part.mean_heads, whole.mean_heads)


def test_attention_views_refuse_a_model_whose_attention_is_nan(make_model, samples):
    """A diverged model's NaN attention was drawn as blank boids under "nan% of [CLS]", and argmax took NaN for
    the largest value: a NaN model agreed with the teacher in 0.95 of frames, chance 0.12."""
    model = make_model(0, d_model=16, n_heads=2, n_layers=2, ffn_hidden=16)
    with torch.no_grad():
        model.layers[0].qkv.weight[0, 0] = float("nan")
    batch = viz.sample_frames(samples, 10)
    for view in (lambda: viz.plot_attention_overlay(model, batch), lambda: viz.plot_attention_grid(model, batch),
                 lambda: viz.attention_agreement(model, batch)):
        with pytest.raises(ValueError, match="weights are not all finite"):
            view()


def test_a_failed_redraw_from_controls_set_leaves_no_stale_episode(monkeypatch, capsys):
    """Controls.set called redraw past the slider callback's handler: interrupted there, the panel kept
    "recording 9 frames..." and controls.last the episode of the settings before."""
    ctl = widgets.make_sim_controls(run_now=True, frames=6, n_boids=5, width=320, height=320)
    monkeypatch.setattr("predlab.widgets._in_notebook", lambda: True)
    assert len(ctl.last[0]) == 6

    def cut(**kw):
        raise KeyboardInterrupt
    monkeypatch.setattr("predlab.widgets.rerun_sim", cut)
    with pytest.raises(KeyboardInterrupt):             # called in a cell: it raises there
        ctl.set(frames=9)
    assert ctl.values()["frames"] == 9 and ctl.last is None
    assert capsys.readouterr().out.rstrip().endswith("interrupted; move a slider to draw again")


def test_an_animation_of_fewer_frames_than_its_save_count_is_not_said_to_be_cut(recwarn):
    """_save_count is a cap for frames from a generator: 5 frames under save_count=50 were said to be cut by
    the embed limit, which cut nothing."""
    import warnings
    from matplotlib.animation import FuncAnimation
    fig = Figure(figsize=(2, 2))
    fig.add_subplot()

    def frames():
        yield from range(5)
    anim = FuncAnimation(fig, lambda i: [], frames=frames, save_count=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        html = viz.animation_html(anim)
    assert viz.jshtml_frame_count(html) == 5


def test_agreement_counts_a_float64_models_forwards_in_float64(make_model, samples, monkeypatch):
    """The chunk was sized by float32 forwards whatever the model: a float64 model's held twice the bound."""
    model = make_model(0, d_model=16, n_heads=2, n_layers=2, ffn_hidden=16).double()
    batch = viz.sample_frames(samples, 30)
    sizes = []
    real = viz.cls_attention
    monkeypatch.setattr(viz, "cls_attention", lambda m, b: sizes.append(len(b["mask"])) or real(m, b))
    from predlab.model import forward_bytes
    monkeypatch.setattr(viz, "AGREEMENT_BYTES",
                        7 * forward_bytes(1, batch["mask"].shape[1] + 3, model.config, "cpu", torch.float64))
    viz.attention_agreement(model, batch)
    assert max(sizes) == 7


def test_the_embed_limit_cut_is_told_whatever_matplotlibs_logger_and_cache(rollout, monkeypatch):
    """The cut was heard from matplotlib's log line alone: to_jshtml's kept HTML (a second call) logs nothing,
    a filtered logger drops it, and one turned up to ERROR brought back the count's false cut."""
    import logging
    import warnings
    from matplotlib.animation import FuncAnimation
    log = logging.getLogger("matplotlib.animation")
    monkeypatch.setattr(log, "filters", [lambda r: "embed_limit" not in r.getMessage()])
    with matplotlib.rc_context({"animation.embed_limit": 0.02}):
        anim = viz.animate_rollout(rollout)
        for _ in range(2):
            with pytest.warns(UserWarning, match=rf"holds \d+ of its {len(rollout)} frames: .*embed_limit"):
                viz.animation_html(anim)
    monkeypatch.setattr(log, "level", logging.ERROR)
    log.manager._clear_cache()
    fig = Figure(figsize=(2, 2))
    fig.add_subplot()

    def frames():
        yield from range(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        html = viz.animation_html(FuncAnimation(fig, lambda i: [], frames=frames, save_count=50))
    log.manager._clear_cache()
    assert viz.jshtml_frame_count(html) == 5


def test_agreement_of_a_model_without_parameters_method(samples):
    """cls_attention takes a model with no parameters() (not an nn.Module); the chunk's sizing asked for them."""
    class Duck:
        training, config = False, PeakedModel().config

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def forward_with_attention(self, batch):
            return PeakedModel().forward_with_attention(batch)
    ag = viz.attention_agreement(Duck(), viz.sample_frames(samples, 20))
    assert np.all(ag.mean_heads == 1.0)


def test_the_embed_limit_check_asks_an_animation_for_no_frame_again(rollout):
    """The cut was once checked by asking the animation for a frame past those embedded: a frames generator
    (a simulation's steps) ran again. animate_rollout's animations carry their frame count instead."""
    import warnings
    from matplotlib.animation import FuncAnimation
    steps = [0]

    def frames():
        for i in range(30):
            steps[0] += 1
            yield i
    fig = Figure(figsize=(2, 2))
    line, = fig.add_subplot().plot([0, 1], [0, 1])
    anim = FuncAnimation(fig, lambda i: line.set_ydata([0, i]), frames=frames, save_count=30,
                         cache_frame_data=False)
    steps[0] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        viz.animation_html(anim)
    assert steps[0] == 31           # the save's own: its first draw and the 30 frames
    assert viz.animate_rollout(rollout).predlab_frames == len(rollout)


def test_liveplot_says_why_the_last_check_has_no_band():
    """The band of the last check missing (too few episodes where the catches differ) is said in the
    panel's title, and the title goes back once a check has its interval."""
    lp = viz.LivePlot(display=False)
    base = {"train_loss": 1.0, "val_loss": 1.0, "samples_per_s": 5.0}
    lp.on_epoch_end(None, 1, {**base, "catch_ratio": 0.5, "catch_ratio_low": 0.3, "catch_ratio_high": 0.8})
    lp.on_epoch_end(None, 2, {**base, "catch_ratio": 0.5, "catch_ratio_low": float("nan"),
                              "catch_ratio_high": float("nan")})
    ax = lp.lines["catch_ratio"].axes
    assert ax.get_title() == "catch ratio, model / teacher\n(epoch 2: no interval, too few\nepisodes where the " \
        "catches differ)"
    lp.on_epoch_end(None, 3, {**base, "catch_ratio": 0.5, "catch_ratio_low": 0.3, "catch_ratio_high": 0.8})
    assert ax.get_title() == viz.LivePlot.PANELS[-1][0]
    # an unbounded top (few catches) is an interval, drawn up to what the panel shows, with no such title
    lp.on_epoch_end(None, 4, {**base, "catch_ratio": 1.4, "catch_ratio_low": 0.6, "catch_ratio_high": math.inf})
    assert ax.get_title() == viz.LivePlot.PANELS[-1][0]
    band = lp.bands["catch_ratio"].get_paths()[0].vertices
    assert band[:, 0].max() >= 4 and band[:, 1].max() >= ax.get_ylim()[1] > 1.4   # shaded at epoch 4, to the top


def test_the_views_draw_the_canvas_as_the_browser_does_y_down(rollout, make_model, samples):
    """01's animation and 03's overlays are titled as the screen: y grows downwards, angles turn clockwise."""
    anim = viz.animate_rollout(rollout)
    anim._draw_was_started = True
    ax = anim._fig.axes[0]
    assert ax.get_ylim() == (rollout.size[1], 0)
    assert viz.plot_training_data(samples).axes[2].get_theta_direction() == -1
    model = make_model(0, d_model=16, n_heads=2, n_layers=2, ffn_hidden=16)
    assert viz.plot_attention_overlay(model, viz.sample_frames(samples, 3)).axes[0].yaxis_inverted()


def test_attention_views_draw_the_boids_where_they_are_and_ring_the_nearest_live_one(make_model):
    """A frame after catches has holes in its mask: the boids are drawn at their wrap-aware offsets from the
    predator and the ring sits on the nearest live boid, in the overlay and in every panel of the grid."""
    ro = viz.record_rollout(frames=300, n_boids=8, width=160, height=160, seed=0)
    t = next(t for t in range(len(ro) - 1, -1, -1) if not ro.obs["mask"][t].all() and ro.obs["mask"][t].any())
    live = ro.obs["mask"][t]
    assert not live[: live.sum()].all()                          # a hole before a live boid
    W, H = ro.size
    offsets = (ro.pos[t][ro.alive[t]] - ro.pred_pos[t] + [W / 2, H / 2]) % [W, H] - [W / 2, H / 2]
    nearest = offsets[np.hypot(*offsets.T).argmin()]
    model = make_model(0, d_model=16, n_heads=2, n_layers=2, ffn_hidden=16)
    grid = viz.plot_attention_grid(model, ro.batch(), index=t)
    for ax in [viz.plot_attention_overlay(model, ro.batch(), index=t).axes[0], *grid.axes[:6]]:
        drawn = ax.collections[0].get_offsets()
        assert np.allclose(np.sort(drawn, 0), np.sort(offsets, 0), atol=1e-3)
        ring = next(c for c in ax.collections if c.get_label() == "teacher's target").get_offsets()[0]
        assert np.allclose(ring, nearest, atol=1e-3)


def test_the_attention_sliders_layer_and_the_grids_mean_column_reach_the_figure(make_model, samples):
    model = make_model(0, d_model=16, n_heads=2, n_layers=2, ffn_hidden=16)
    batch = viz.sample_frames(samples, 5)
    w = viz.cls_attention(model, batch)                       # [B, L, H, N]
    ctl = widgets.make_attention_controls(model, batch)
    ctl.set(frame=3, layer=1, head=0)
    n = int(batch["mask"][3].sum())
    assert np.allclose(ctl.last.attention_weights, w[3, 1, 0, :n].numpy(), atol=1e-6)
    ctl.set(head="mean")
    assert np.allclose(ctl.last.attention_weights, w[3, 1, :, :n].mean(0).numpy(), atol=1e-6)
    grid = viz.plot_attention_grid(model, batch, index=3)
    assert np.allclose(grid.axes[5].collections[0].get_array(), w[3, 1, :, :n].mean(0).numpy(), atol=1e-6)


@pytest.mark.skipif(os.name == "nt", reason="a POSIX PATH")
def test_module_command_runs_in_a_terminal_without_the_environment_on_path(tmp_path):
    """Notebook 04 ended with `python -m predlab.demo checkpoints/model.js` to copy: after `make lab` a terminal's
    `python` is not the environment's (none at all, or one without predlab). The command names this Python."""
    import shlex
    import subprocess
    cmd = viz.module_command("predlab.demo", "--help")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"
    r = subprocess.run(shlex.split(cmd), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage: python -m predlab.demo" in r.stdout, r.stderr
    assert shlex.split(viz.module_command("predlab.demo", "my runs/model.js"))[-1] == "my runs/model.js"


@pytest.mark.skipif(not viz.node_available(), reason="node is not installed")
def test_js_parity_takes_the_numpy_numbers_predict_takes(make_model, make_samples):
    """predict reads np.float32 and np.int64 values; js_parity wrote the inputs as given to JSON for Node, and
    failed in "Object of type float32 is not JSON serializable"."""
    inputs = make_samples([0, 3], seed=5)
    s = inputs[1]
    inputs[1] = {"context": {"canvasWidth": np.float32(s["context"]["canvasWidth"]),
                             "canvasHeight": np.float64(s["context"]["canvasHeight"])},
                 "predator": s["predator"], "boids": [{k: np.float32(v) for k, v in b.items()} for b in s["boids"]]}
    res = viz.js_parity(make_model(1), inputs)
    assert res["torch"].shape == (2, 2) and res["max_abs_diff"] < 1e-5
