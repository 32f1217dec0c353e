"""SupervisedTrainer on small made-up sample sets: batches, steps, losses shown, best epoch, checks."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from predlab.data import InputError, SampleSet
from predlab.model import TransformerPredator
from predlab.train import Callback, SupervisedTrainer


def _samples(count: int = 40, n_max: int = 5, seed: int = 0) -> SampleSet:
    """count samples with 1..n_max live boids each and unit-vector targets."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(1, n_max + 1, (count,), generator=g)
    live = torch.arange(n_max)[None, :] < n[:, None]                       # [S, N]
    boids = (torch.rand(count, n_max, 4, generator=g) * 2 - 1) * live[..., None]
    target = F.normalize(torch.randn(count, 2, generator=g), dim=-1)
    return SampleSet(torch.rand(count, 2, generator=g) + 0.5, torch.rand(count, 2, generator=g) * 2 - 1,
                     boids, n, target)


def _trainer(data=None, dropout: float = 0.0, **kw) -> SupervisedTrainer:
    torch.manual_seed(0)
    data = _samples() if data is None else data
    kw = {"batch_size": 16, "learning_rate": 3e-3, "device": "cpu", "cpu_split": 1, **kw}
    return SupervisedTrainer(TransformerPredator(d_model=16, n_heads=2, n_layers=1, ffn_hidden=32, dropout=dropout),
                             data, data, **kw)


def _tampered(path, edit, **kw) -> None:
    """A checkpoint of a trainer after one epoch, edited by edit(state), saved at path."""
    donor = _trainer(**kw)
    donor.train(1)
    state = donor.state_dict()
    edit(state)
    torch.save(state, path)


def _grad_norm(model) -> float:
    return float(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm())


def test_gradient_clipping_caps_the_step_gradient_at_grad_clip():
    """A training step's gradient norm is cut to grad_clip; grad_clip 0 leaves it as it is."""
    norms = {}
    for clip in (0.01, 0.0):
        t = _trainer(batch_size=64, grad_clip=clip)          # one batch: its gradient stays in .grad
        t.train_epoch(t.train_dataset)
        norms[clip] = _grad_norm(t.model)
    assert norms[0.01] == pytest.approx(0.01, rel=1e-4)
    assert norms[0.0] > 0.05                                   # unclipped, it is larger than the cap


class _Batches:
    """Records each training batch's targets (which samples, in which order) through a forward hook."""

    def __init__(self, model):
        self.seen = []
        model.register_forward_hook(lambda m, args, out: m.training and self.seen.append(args[0]["target"].clone()))

    def take(self):
        seen, self.seen = self.seen, []
        return seen


def test_each_epoch_draws_a_new_batch_order_from_the_seed():
    """Batches come in a new order every epoch; the same seed gives the same order, another seed another."""
    def orders(seed):
        t = _trainer(seed=seed)
        rec = _Batches(t.model)
        out = []
        for _ in range(2):
            t.train_epoch(t.train_dataset)
            t.epoch += 1
            out.append(torch.cat(rec.take()))
        return out
    first, second = orders(0)
    assert sorted(first.tolist()) == sorted(second.tolist())    # every sample once per epoch
    assert not torch.equal(first, second)
    assert all(torch.equal(a, b) for a, b in zip(orders(0), (first, second)))
    assert not torch.equal(orders(1)[0], first)


def test_train_loss_is_the_mean_over_samples_not_over_batches():
    """train_loss weighs each batch's loss by its size (40 samples: batches of 16, 16 and 8);
    samples_per_s counts samples."""
    losses = []

    class Losses(Callback):
        def on_batch_end(self, trainer, step, loss):
            losses.append(float(loss))

    t = _trainer(callbacks=[Losses()])
    rec = _Batches(t.model)
    logs = t.train_epoch(t.train_dataset)
    sizes = [len(b) for b in rec.take()]
    assert sorted(sizes) == [8, 16, 16]
    assert logs["train_loss"] == pytest.approx(sum(l * s for l, s in zip(losses, sizes)) / 40, rel=1e-6)
    assert logs["samples_per_s"] * logs["epoch_time"] == pytest.approx(40)


def _mse(model, data: SampleSet) -> float:
    """The eval-mode model's MSE over the whole set in one batch."""
    model.eval()
    with torch.no_grad():
        return float(F.mse_loss(model(data.batch(torch.arange(len(data)))), data.target))


def test_validation_is_the_mse_of_the_model_without_dropout_over_every_boid():
    """validate() is the eval-mode MSE of the validation set, or of the set it is given, the same
    at every call however high the dropout; batches of few boids and of many give each sample
    all of its boids."""
    t = _trainer(dropout=0.5)
    other = _samples(24, seed=3)
    want, want_other = _mse(t.model, t.val_dataset), _mse(t.model, other)
    t.model.train()
    assert t.validate() == pytest.approx(want, rel=1e-5)
    assert t.validate(other) == pytest.approx(want_other, rel=1e-5)
    t.model.train()
    assert t.validate() == t.validate()


def test_a_small_training_batch_validates_in_batches_of_val_batch_min_to_the_same_figure(monkeypatch):
    """Validation runs in batches of VAL_BATCH_MIN rows where the training batch is smaller (a forward's
    fixed cost per op doubled validation's time at batch 32), and of the training batch where it is
    larger; the figure is the same either way, and a progress bar counts the batches that run."""
    import predlab.train as tr
    data = _samples(600, n_max=12)
    for batch_size, cpu_split, rows in ((8, 1, tr.VAL_BATCH_MIN), (8, 2, tr.VAL_BATCH_MIN), (300, 1, 300)):
        t = _trainer(data, batch_size=batch_size, cpu_split=cpu_split)
        forward, sizes = t.model.forward, []

        def spy(batch, forward=forward, sizes=sizes):
            sizes.append(len(batch["target"]))
            return forward(batch)
        monkeypatch.setattr(t.model, "forward", spy)
        got = t.validate()
        assert sorted(sizes, reverse=True) == [rows] * (600 // rows) + ([600 % rows] if 600 % rows else [])
        assert t.validate_batches == len(sizes)
        assert got == pytest.approx(_mse(t.model, data), rel=1e-5)


def test_validation_of_large_flocks_takes_fewer_rows_and_never_fewer_than_the_batch(monkeypatch):
    """256 rows at 10,000 boids would be 400 GB of attention scores, where the training batch of 1 was
    chosen to fit: a validation batch's scores (rows x tokens squared) stay within 256 rows at 53 tokens."""
    for n_max, batch_size, want in ((200, 8, 256 * 53 ** 2 // 203 ** 2), (200, 40, 40), (2000, 1, 1)):
        data = _samples(90, n_max=n_max)
        data.n[0] = n_max                                  # the widest sample sets the tokens
        t = _trainer(data, batch_size=batch_size)
        forward, sizes = t.model.forward, []

        def spy(batch, forward=forward, sizes=sizes):
            sizes.append(len(batch["target"]))
            return forward(batch)
        monkeypatch.setattr(t.model, "forward", spy)
        t.validate()
        assert max(sizes) == want and t.validate_batches == len(sizes) == math.ceil(90 / want)


def test_split_validation_runs_its_batches_on_one_thread_each_and_gives_the_same_figure(monkeypatch):
    """With split batches (cpu_split 2), validation's batches run on the split's threads, one torch
    thread each (a forward on 2 threads has a fixed cost of ~2 ms), in order, to the same figure."""
    import threading
    monkeypatch.setattr("predlab.train.VAL_BATCH_MIN", 1)     # validate in the training batches of 8
    data = _samples(300, n_max=12)
    unsplit, split = _trainer(data, batch_size=8), _trainer(data, batch_size=8, cpu_split=2)
    want = unsplit.validate()
    forward, seen, steps = split.model.forward, [], []

    def spy(batch):
        seen.append((torch.get_num_threads(), threading.current_thread().name))
        return forward(batch)
    monkeypatch.setattr(split.model, "forward", spy)

    class Steps(Callback):
        def on_validate_batch(self, trainer, step):
            steps.append(step)
    split.callbacks.append(Steps())
    assert split.validate() == want
    assert {threads for threads, _ in seen} == {1} and all(name.startswith("predlab-split") for _, name in seen)
    assert steps == list(range(math.ceil(300 / 8)))


def test_an_error_in_a_split_validation_batch_reaches_the_caller(monkeypatch):
    monkeypatch.setattr("predlab.train.VAL_BATCH_MIN", 1)
    t = _trainer(_samples(100), batch_size=8, cpu_split=2)
    calls = []

    def broken(batch):
        calls.append(1)
        raise RuntimeError("bad batch")
    monkeypatch.setattr(t.model, "forward", broken)
    with pytest.raises(RuntimeError, match="bad batch"):
        t.validate()
    assert len(calls) < math.ceil(100 / 8)              # the batches not started were dropped


def test_a_split_step_gives_the_batchs_own_gradient_and_new_dropout_masks():
    """The threaded parts' gradients replace the last step's (not added to them), and each step
    draws new dropout masks from torch's generator."""
    t = _trainer(dropout=0.0)
    b = next(t._batches(t.train_dataset, shuffle=False))
    t.model.train()
    t._split_backward(b, 2)
    first = [p.grad.clone() for p in t.model.parameters()]
    t._split_backward(b, 2)                                    # no zero_grad between: as a training step runs
    for a, p in zip(first, t.model.parameters()):
        assert torch.equal(a, p.grad)
    t = _trainer(dropout=0.5)
    t.model.train()
    t._split_backward(b, 2)
    first = [p.grad.clone() for p in t.model.parameters()]
    t._split_backward(b, 2)
    assert not all(torch.equal(a, p.grad) for a, p in zip(first, t.model.parameters()))
    torch.manual_seed(7)
    t._split_backward(b, 2)
    again = [p.grad.clone() for p in t.model.parameters()]
    torch.manual_seed(7)
    t._split_backward(b, 2)
    assert all(torch.equal(a, p.grad) for a, p in zip(again, t.model.parameters()))


def test_a_trainer_made_without_a_train_config_saves_its_own_settings():
    """A trainer made without a TrainConfig saves its seed, batch size and rates, which a resume reads."""
    t = _trainer(seed=7, batch_size=8, learning_rate=1e-3, weight_decay=0.2)
    saved = t.state_dict()["train_config"]
    assert (saved["seed"], saved["batch_size"], saved["learning_rate"], saved["weight_decay"]) == (7, 8, 1e-3, 0.2)


def test_evaluate_sample_with_no_boids_has_no_cosine_similarity():
    """With no boid the teacher stays put (0, 0): the cosine is NaN, the MSE the model's action squared."""
    t = _trainer()
    r = t.evaluate_sample({"context": {"canvasWidth": 1.0, "canvasHeight": 1.0},
                           "predator": {"velX": 0.1, "velY": 0.0}, "boids": []})
    assert r["teacher_action"] == [0.0, 0.0] and math.isnan(r["cosine_similarity"])
    assert r["mse"] == pytest.approx(sum(a * a for a in r["model_action"]) / 2)


def test_evaluate_sample_scores_against_the_boid_the_page_chases():
    """Two boids 1e-10 apart in distance tie in float32: the first was taken, where the page chases the second."""
    boid = {"velX": 0.0, "velY": 0.0}
    sample = {"context": {"canvasWidth": 1.0, "canvasHeight": 1.0}, "predator": {"velX": 0.0, "velY": 0.0},
              "boids": [{**boid, "relX": 0.1000000001, "relY": 0.0}, {**boid, "relX": 0.0, "relY": -0.1}]}
    assert _trainer().evaluate_sample(sample)["teacher_action"] == [0.0, -1.0]


def test_evaluate_sample_given_a_list_says_it_takes_one_sample():
    """A list was named "sample 0 must be an object/dict, got list": the list itself was taken as sample 0."""
    sample = {"context": {"canvasWidth": 1.0, "canvasHeight": 1.0}, "predator": {"velX": 0.1, "velY": 0.0},
              "boids": [{"relX": 0.1, "relY": 0.0, "velX": 0.0, "velY": 0.0}]}
    with pytest.raises(InputError, match=r"evaluate_sample takes one sample, a dict, not list \(for several: "
                                         r"model.predict takes a list"):
        _trainer().evaluate_sample([sample, sample])


class _Scripted(Callback):
    """Puts a made-up metric "score" in each epoch's logs (None: not measured that epoch)."""

    def __init__(self, scores):
        self.scores, self.bad = scores, []

    def on_evaluate(self, trainer, epoch, logs):
        if self.scores[epoch - 1] is not None:
            logs["score"] = self.scores[epoch - 1]

    def on_epoch_end(self, trainer, epoch, logs):
        self.bad.append(trainer.bad_epochs)


def test_patience_counts_epochs_since_the_last_improvement():
    """An improvement sets the count of epochs without one back to 0; an epoch without the
    measurement changes nothing; an equal value is no improvement."""
    script = _Scripted([1.0, 2.0, None, 2.0, 0.5, 0.5, 0.6, 0.7, 9.0])
    t = _trainer(callbacks=[script], batch_size=64)
    t.monitor, t.min_delta = "score", 0.0
    t.train(9, early_stopping_patience=3)
    assert script.bad == [0, 1, 1, 2, 0, 1, 2, 3]
    assert (t.epoch, t.best_epoch, t.best_metric) == (8, 5, 0.5)


def test_min_delta_is_early_stoppings_and_the_best_epoch_is_the_lowest_by_any_margin(tmp_path, capsys):
    """At min_delta 0.1 the best epoch stayed the first that dropped by 0.1: best_model.pt (and model.js)
    was epoch 2's 0.5 where epoch 5 reached 0.3. Gains under min_delta add up: 0.65 -> 0.58 -> 0.52 is
    0.13 below the 0.65 that last reset the count."""
    from predlab.checkpoint import load_checkpoint_dict
    from predlab.train import Checkpointer
    script = _Scripted([1.0, 0.65, 0.58, 0.52, 0.5, 0.6, 0.7])
    t = _trainer(callbacks=[script, Checkpointer(tmp_path, save_every=100)], batch_size=64)
    t.monitor, t.min_delta = "score", 0.1
    t.train(7, early_stopping_patience=3)
    assert script.bad == [0, 0, 1, 0, 1, 2, 3]
    assert (t.epoch, t.best_epoch, t.best_metric) == (7, 5, 0.5)
    assert load_checkpoint_dict(tmp_path / "best_model.pt")["epoch"] == 5
    # the stop names what the count ran from, which is not the best (epoch 5 read as "no improvement")
    assert "early stopping: no improvement of more than 0.1 on score 0.52 for 3 epochs (best: score 0.50000 at " \
           "epoch 5)" in capsys.readouterr().out


def test_a_resumed_run_counts_gains_under_min_delta_from_where_it_stopped(tmp_path):
    """The reference early stopping counts from (0.65) is not the best (0.58): a checkpoint keeps both, so a
    run resumed after epoch 3 resets the count at 0.52 as the uninterrupted run did. A checkpoint without
    it (written before the two were apart) counts from its best."""
    t = _trainer(callbacks=[_Scripted([1.0, 0.65, 0.58])], batch_size=64)
    t.monitor, t.min_delta = "score", 0.1
    t.train(3)
    path = t.save_checkpoint(tmp_path / "c.pt")
    script = _Scripted([1.0, 0.65, 0.58, 0.52, 0.5])
    resumed = _trainer(callbacks=[script], batch_size=64)
    resumed.load_checkpoint(path)
    resumed.min_delta = 0.1
    assert (resumed.best_metric, resumed.early_stopping_ref, resumed.bad_epochs) == (0.58, 0.65, 1)
    resumed.train(5)
    assert script.bad == [0, 1] and resumed.best_epoch == 5
    state = torch.load(path, weights_only=True)
    del state["early_stopping_ref"]
    torch.save(state, tmp_path / "old.pt")
    old = _trainer(batch_size=64)
    old.load_checkpoint(tmp_path / "old.pt")
    assert old.early_stopping_ref == 0.58


@pytest.mark.parametrize("value, found", [(math.nan, "found nan"), (-math.inf, "found -inf"), ("0.5", "found str"),
                                          (-0.5, "a validation MSE, >= 0, found -0.5")])
def test_a_checkpoint_whose_early_stopping_reference_no_epoch_can_pass_is_refused(tmp_path, value, found):
    from predlab.checkpoint import CheckpointError
    _tampered(tmp_path / "c.pt", lambda s: s.update(early_stopping_ref=value))
    with pytest.raises(CheckpointError, match=r"'early_stopping_ref' must be .*" + found):
        _trainer().load_checkpoint(tmp_path / "c.pt")


def test_a_checkpoint_keeps_the_best_epoch_and_what_it_was_chosen_by(tmp_path):
    """The best epoch, its value, the metric it was chosen by and the early-stopping count come
    back from a checkpoint: the best here is epoch 1 of 3, chosen by a metric other than val_loss."""
    t = _trainer(callbacks=[_Scripted([0.5, 0.9, 0.8])], batch_size=64)
    t.monitor = "score"
    t.train(3)
    path = t.save_checkpoint(tmp_path / "c.pt")
    resumed = _trainer(batch_size=64)
    resumed.load_checkpoint(path)
    assert (resumed.monitor, resumed.best_metric, resumed.best_epoch, resumed.bad_epochs, resumed.epoch) == \
        ("score", 0.5, 1, 2, 3)


def test_an_interrupted_epoch_leaves_the_schedule_where_the_last_finished_epoch_did():
    """After Ctrl-C in the middle of epoch 2 the learning rate and the schedule's place are those
    of the end of epoch 1 (what a notebook shows, and where set_schedule puts the new rate)."""
    class CtrlC(Callback):
        def on_batch_end(self, trainer, step, loss):
            if trainer.epoch == 1 and step == 1:
                raise KeyboardInterrupt
    t = _trainer(callbacks=[CtrlC()])
    t.train(1)
    t.scheduler.total = 3
    before = (t.scheduler.state_dict(), t.optimizer.param_groups[0]["lr"])
    with pytest.raises(KeyboardInterrupt):
        t.train(3)
    assert (t.scheduler.state_dict(), t.optimizer.param_groups[0]["lr"]) == before


def test_a_validation_loss_that_is_not_finite_stops_training_though_the_weights_are():
    """Weights can be finite and huge enough that the model's sums overflow on the validation
    samples: that epoch is divergence too, named by its loss, not counted."""
    from predlab.train import TrainingDiverged
    t = _trainer(batch_size=64)
    t.train(1)
    t.validate = lambda data=None: math.inf
    with pytest.raises(TrainingDiverged, match="diverged in epoch 2: val_loss inf"):
        t.train(2)
    assert t.epoch == 1 and len(t.history) == 1


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["optimizer"]["param_groups"][0].__setitem__("betas", (0.9, 1.0)), "betas"),
    (lambda s: s["optimizer"]["param_groups"][0].__setitem__("betas", (0.9,)), "betas"),
    (lambda s: s["optimizer"]["param_groups"][1].__setitem__("eps", 0.0), "eps"),
    (lambda s: s["optimizer"]["param_groups"][0].__setitem__("weight_decay", math.inf), "weight_decay"),
    (lambda s: s["optimizer"]["state"][0].__setitem__(
        "momentum_buffer", torch.zeros_like(s["optimizer"]["state"][0]["exp_avg"])), "not a state AdamW keeps"),
    (lambda s: s["optimizer"]["state"][0].__setitem__("step", torch.tensor([1.0, 2.0])), "'step' .* has shape"),
    # a KeyError at the first step, an epoch in
    (lambda s: s["optimizer"]["state"][0].pop("exp_avg"), r"lacks exp_avg\)"),
    (lambda s: s["optimizer"]["state"][0].__setitem__("step", torch.tensor(2.5)), "2.5, not a whole number")])
def test_an_adamw_state_that_would_break_the_step_is_refused(tmp_path, edit, message):
    """A beta of 1 divides by zero in the bias correction, eps 0 divides by zero where a moment is
    0, an infinite weight decay makes the weights infinite, a step count must be one number, and a
    key of another optimizer means the state is not AdamW's: each is named, and the trainer is
    left as it was."""
    _tampered(tmp_path / "bad.pt", edit, batch_size=64)
    t = _trainer(batch_size=64)
    from predlab.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match=message):
        t.load_checkpoint(tmp_path / "bad.pt")
    assert t.epoch == 0 and t.optimizer.state_dict()["state"] == {}


def test_an_epoch_without_training_samples_is_named_and_not_counted():
    """A data source whose epoch holds no samples stops train() with an error naming the epoch
    (it trained nothing and reported a train_loss of 0)."""
    class Empty:
        def for_epoch(self, epoch, trainer):
            return SampleSet.empty(5)
    data = _samples()
    t = SupervisedTrainer(TransformerPredator(d_model=16, n_heads=2, n_layers=1, ffn_hidden=32), Empty(), data,
                          device="cpu")
    with pytest.raises(ValueError, match="training data of epoch 1 holds no samples"):
        t.train(1)
    assert t.epoch == 0 and t.history == []


def test_validating_a_set_without_samples_is_refused_by_name():
    """validate() of an empty set says the set holds no samples: 0 would read as a perfect model. It
    failed inside torch ("max(): Expected reduction dim"), since an empty set still splits into one
    empty batch."""
    t = _trainer()
    with pytest.raises(InputError, match="holds no samples"):
        t.validate(SampleSet.empty(5))


def test_set_schedule_is_what_a_checkpoint_records_and_a_later_schedule_starts_from():
    """The settings set_schedule changes are the run's: the checkpoint's train_config records them,
    and the new peak is the optimizer's initial_lr, from which a schedule made over it starts."""
    from predlab.train import WarmupCosine
    t = _trainer()
    t.set_schedule(learning_rate=1e-3, weight_decay=0.2, warmup_epochs=2.0, min_lr_ratio=0.3)
    saved = t.state_dict()["train_config"]
    assert (saved["learning_rate"], saved["weight_decay"], saved["warmup_epochs"], saved["min_lr_ratio"]) == \
        (1e-3, 0.2, 2.0, 0.3)
    assert WarmupCosine(t.optimizer, 3).base == [1e-3, 1e-3]


def test_a_resume_of_a_trainer_made_without_a_train_config_clips_and_schedules_as_it_did(tmp_path):
    """Its checkpoint recorded TrainConfig's defaults for grad_clip, min_delta, warmup and the final
    ratio: `--resume` of a run that never clipped (grad_clip 0) clipped at 1.0 from then on."""
    from predlab.train import parse_args
    t = _trainer(grad_clip=0.0, min_delta=0.01, warmup_epochs=0.5, min_lr_ratio=0.2)
    path = t.save_checkpoint(tmp_path / "c.pt")
    tc, _, _, _ = parse_args(["--resume", str(path), "--epochs", "2"])
    assert (tc.grad_clip, tc.min_delta, tc.warmup_epochs, tc.min_lr_ratio) == (0.0, 0.01, 0.5, 0.2)



def test_a_checkpoint_of_a_run_with_numpy_numbers_in_it_can_be_read_back(tmp_path):
    """A learning rate from np.logspace, or a metric added in on_evaluate as a numpy number (also the
    one the best epoch follows), went into the checkpoint as a numpy scalar, which the weights-only
    loader refuses: the run could neither be resumed nor exported from its files."""
    import numpy as np

    class Spread(Callback):
        def on_evaluate(self, trainer, epoch, logs):
            logs["spread"], logs["count"] = np.float32(0.25), np.int64(3)
    t = _trainer(learning_rate=np.logspace(-4, -2, 3)[1], batch_size=np.int64(16), callbacks=[Spread()])
    t.monitor = "spread"
    t.train(1)
    t.load_checkpoint(t.save_checkpoint(tmp_path / "c.pt"))
    assert (t.history[0]["spread"], t.history[0]["count"], t.best_metric) == (0.25, 3, 0.25)
    assert t.scheduler.base == [1e-3, 1e-3] and t.state_dict()["train_config"]["batch_size"] == 16


def test_a_checkpoint_of_a_run_with_numpy_arrays_in_its_logs_can_be_read_back(tmp_path):
    """A metric added in on_evaluate as a numpy array (np.asarray of a number, a percentile interval)
    went into every checkpoint, best_model.pt too, as one: written without a word, then refused by
    the weights-only loader, so the run could neither be resumed nor exported, nor loaded by the
    notebooks."""
    import numpy as np

    class Interval(Callback):
        def on_evaluate(self, trainer, epoch, logs):
            logs["spread"], logs["interval"] = np.asarray(0.25), np.percentile([1.0, 2.0, 3.0], [0, 100])
    t = _trainer(callbacks=[Interval()])
    t.monitor = "spread"      # the best follows it too
    t.train(1)
    t.load_checkpoint(t.save_checkpoint(tmp_path / "c.pt"))
    assert (t.history[0]["spread"], t.history[0]["interval"], t.best_metric) == (0.25, [1.0, 3.0], 0.25)


def test_a_trainer_on_an_episode_source_records_its_world_and_episodes_for_a_resume(tmp_path):
    """Made as the README's custom-model example is (a source, no configs), its checkpoints recorded
    TrainConfig's and WorldConfig's defaults: `--resume` went on with DAgger, 100 episodes per epoch
    and the default world instead of the run's own."""
    from predlab.config import WorldConfig
    from predlab.dagger import DaggerSource
    from predlab.data import EpisodeGenerator
    from predlab.train import EpisodeSource, parse_args
    gen = EpisodeGenerator(WorldConfig(boids_max=12, frames=12), seed=0, progress=False)
    torch.manual_seed(0)
    t = SupervisedTrainer(TransformerPredator(d_model=16, n_heads=2, n_layers=1, ffn_hidden=32),
                          EpisodeSource(gen, 7), _samples(), device="cpu")
    path = t.save_checkpoint(tmp_path / "c.pt")
    tc, _, wc, _ = parse_args(["--resume", str(path), "--epochs", "3"])
    assert (tc.dagger, tc.train_episodes, wc.boids_max, wc.frames) == (False, 7, 12, 12)
    t = SupervisedTrainer(TransformerPredator(d_model=16, n_heads=2, n_layers=1, ffn_hidden=32),
                          DaggerSource(gen, 5, start=3, decay=0.7, beta_min=0.2, buffer=40), _samples(), device="cpu")
    saved = t.state_dict()["train_config"]
    assert [saved[k] for k in ("dagger", "train_episodes", "dagger_start", "dagger_beta_decay", "dagger_beta_min",
                               "dagger_buffer")] == [True, 5, 3, 0.7, 0.2, 40]


def test_a_callback_class_given_for_a_callback_is_named_before_training():
    """callbacks=[PrintLogger] (no parentheses) failed with "Callback.on_train_begin() missing 1 required
    positional argument: 'trainer'", which names neither the callback nor the slip."""
    from predlab.train import PrintLogger
    with pytest.raises(TypeError, match=r"callbacks\[0\] is the class PrintLogger, not a callback made from it: "
                                        r"give PrintLogger\(...\)"):
        _trainer(callbacks=[PrintLogger])
    t = _trainer()
    t.callbacks.append(PrintLogger)          # added after the trainer was made: named at train()
    with pytest.raises(TypeError, match=r"trainer.callbacks\[0\] is the class PrintLogger"):
        t.train(1)
    assert t.epoch == 0 and t.history == []


def test_callbacks_that_are_no_callbacks_are_named_and_one_alone_is_taken(tmp_path):
    """create_trainer(callbacks=PrintLogger()) failed in "Value after * must be an iterable"; a str or a function
    among them was taken, and failed at train() in an AttributeError. An object with every hook counts."""
    from predlab.train import CALLBACK_HOOKS, PrintLogger, create_trainer
    assert [type(c) for c in _trainer(callbacks=PrintLogger()).callbacks] == [PrintLogger]
    for bad, said in ((["print"], r"callbacks\[0\] is str 'print', not a callback"),
                      ([PrintLogger(), lambda *a: None], r"callbacks\[1\] is function"),
                      (3, "callbacks must be a list of callbacks .predlab.train.Callback., not int")):
        with pytest.raises(TypeError, match=said):
            _trainer(callbacks=bad)
        with pytest.raises(TypeError, match=said):
            create_trainer(train_episodes=2, val_episodes=1, frames=4, callbacks=bad, verbose=False)

    class Ducked:          # every hook, no Callback base
        pass
    for hook in CALLBACK_HOOKS:
        setattr(Ducked, hook, lambda self, *a: None)
    t = _trainer(callbacks=[Ducked()])
    t.train(1)
    assert t.epoch == 1
    # hooks set on the object alone: the trainer looks for them on the class, and failed at the first batch
    from types import SimpleNamespace
    with pytest.raises(TypeError, match=r"callbacks\[0\] is SimpleNamespace"):
        _trainer(callbacks=[SimpleNamespace(**{h: (lambda *a: None) for h in CALLBACK_HOOKS})])
    # trainer.callbacks replaced by a generator (a check alone used it up: no callbacks ran) or by one callback,
    # then a validation or a checkpoint before the training, which read them too
    for given in ((c for c in [PrintLogger()]), PrintLogger()):
        t = _trainer()
        t.callbacks = given
        t.validate()
        t.save_checkpoint(tmp_path / "cb.pt")
        t.train(1)
        assert [type(c) for c in t.callbacks] == [PrintLogger]
    t = _trainer()
    kept = t.callbacks          # a list stays the trainer's own: appended to between train() calls, it is used
    t.train(1)
    kept.append(PrintLogger())
    assert t.callbacks is kept


def test_an_epoch_cut_by_ctrl_c_leaves_the_model_in_eval_mode_as_a_finished_epoch_does(monkeypatch):
    """After a Ctrl-C the model stood in training mode, where a finished epoch leaves it in eval
    mode: with dropout, the model a notebook then called directly gave other actions each call."""
    t = _trainer(dropout=0.3)
    t.train(1)
    assert not t.model.training
    validate = SupervisedTrainer.validate

    def cut(self, data=None):       # epoch 2's steps done, the model in training mode
        if self.epoch == 1:
            raise KeyboardInterrupt
        return validate(self, data)
    monkeypatch.setattr(SupervisedTrainer, "validate", cut)
    with pytest.raises(KeyboardInterrupt):
        t.train(2)
    assert t.epoch == 1 and not t.model.training
    batch = next(iter(t._batches(t.val_dataset, shuffle=False)))
    with torch.no_grad():
        assert torch.equal(t.model(batch), t.model(batch))


def test_a_train_config_the_trainer_would_not_run_or_resume_by_is_refused():
    """train_config was stored as given: TrainConfig(batch_size=0) was written into every checkpoint, which the
    command line then refused to resume, and one saying batch 8 beside batch_size=16 recorded a run at 8."""
    from predlab.config import TrainConfig
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        _trainer(train_config=TrainConfig(batch_size=0))
    with pytest.raises(ValueError, match=r"train_config says batch_size 8 \(the trainer's batch_size= is 16\)"):
        _trainer(train_config=TrainConfig(learning_rate=3e-3, batch_size=8, cpu_split=1))


def test_set_schedule_leaves_the_train_config_the_trainer_was_given_alone():
    """set_schedule records its settings in the trainer's TrainConfig, which was the caller's own
    object: a config shared by two trainers (a notebook's comparison) changed under the other one."""
    from predlab.config import TrainConfig
    tc = TrainConfig(learning_rate=3e-3, batch_size=16, cpu_split=1)
    a, b = _trainer(train_config=tc), _trainer(train_config=tc)
    a.set_schedule(learning_rate=1e-4, weight_decay=0.2)
    assert (tc.learning_rate, tc.weight_decay) == (3e-3, 0.01)
    assert (b.train_config.learning_rate, b.train_config.weight_decay) == (3e-3, 0.01)
    assert (a.train_config.learning_rate, a.train_config.weight_decay) == (1e-4, 0.2)


def test_every_callback_ends_its_training_when_an_earlier_ones_end_fails():
    """train() ended its callbacks in a loop that stopped at the first failure: a Checkpointer whose
    last save failed (a full disk) left the TensorBoard writer after it open, or a callback failing
    before a Checkpointer left the checkpoint folder's lock held. The first failure is still raised."""
    ended = []

    class Fails(Callback):
        def on_train_end(self, trainer):
            ended.append("fails")
            raise OSError(28, "No space left on device")

    class Records(Callback):
        def on_train_end(self, trainer):
            ended.append("records")
    t = _trainer(callbacks=[Fails(), Records()])
    with pytest.raises(OSError, match="No space left"):
        t.train(1)
    assert ended == ["fails", "records"]


def test_an_early_stop_decided_in_an_epoch_cut_by_ctrl_c_is_undone_with_it():
    """EarlyStopping set stop_training in an epoch that a later callback's Ctrl-C then undid: the flag
    stayed, so the run saved the epoch before as where it 'stopped early', and train() again did nothing."""
    from predlab.train import EarlyStopping

    class CtrlC(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if trainer.stop_training:
                raise KeyboardInterrupt
    # min_delta 1: no epoch after the first improves, so patience 1 stops the run in epoch 2
    t = _trainer(min_delta=1.0, callbacks=[EarlyStopping(1), CtrlC()])
    with pytest.raises(KeyboardInterrupt):
        t.train(4)
    assert t.epoch == 1 and not t.stop_training


def test_a_ctrl_c_at_any_line_of_an_epoch_then_train_again_is_the_uninterrupted_run(tmp_path):
    """train() undoes an epoch a Ctrl-C cuts, so that train() again repeats it as an uninterrupted run
    would: the same weights, optimizer state, history, DAgger samples and checkpoint files. SIGINT is
    raised at lines spread over two epochs of the trainer's, DAgger's and the Checkpointer's code (as
    a Ctrl-C could land; inside a deferred_interrupt block it takes effect at the block's end)."""
    import signal
    import sys
    from predlab import checkpoint, dagger, train
    from predlab.config import WorldConfig
    from predlab.data import EpisodeGenerator
    ours = {train.__file__, dagger.__file__, checkpoint.__file__}
    world = WorldConfig(frames=12, boids_max=8)

    def make(folder):
        torch.manual_seed(0)
        gen = EpisodeGenerator(world, seed=0, progress=False)
        src = dagger.DaggerSource(gen, 2, start=2)
        model = TransformerPredator(d_model=16, n_heads=2, n_layers=1, ffn_hidden=32, dropout=0.1)
        return SupervisedTrainer(model, src, gen.generate(2, stream=0), learning_rate=3e-3, batch_size=16, device="cpu",
                                 cpu_split=1, world_config=world,
                                 callbacks=[src, train.Checkpointer(folder, save_every=1, keep=2)])

    def outcome(t, folder):
        files = {p.name: [v for k, v in sorted(torch.load(p, weights_only=True)["model"].items())]
                 for p in sorted(folder.glob("*.pt"))}
        history = [{k: v for k, v in h.items() if k not in ("samples_per_s", "epoch_time")} for h in t.history]
        return (list(t.model.state_dict().values()), t.optimizer.state_dict()["state"], history,
                t.train_dataset.data.to_ragged(), files)

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return torch.equal(a, b)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    ref = make(tmp_path / "ref")
    ref.train(1)
    lines = [0]

    def count(frame, event, arg):
        if event == "line" and frame.f_code.co_filename in ours:
            lines[0] += 1
        return count

    sys.settrace(count)
    try:
        ref.train(3)
    finally:
        sys.settrace(None)
    want = outcome(ref, tmp_path / "ref")
    assert lines[0] > 1000
    for at in range(7, lines[0], lines[0] // 12):
        folder = tmp_path / f"cut{at}"
        t = make(folder)
        t.train(1)
        seen = [0]

        def cut(frame, event, arg, at=at):
            if event == "line" and frame.f_code.co_filename in ours:
                seen[0] += 1
                if seen[0] == at:
                    signal.raise_signal(signal.SIGINT)
            return cut

        sys.settrace(cut)
        try:
            t.train(3)
            cut_short = False
        except KeyboardInterrupt:
            cut_short = True
        finally:
            sys.settrace(None)
        assert cut_short, at
        if t.epoch < 3:     # a Ctrl-C deferred to the end of the last save lands once the run has finished
            t.train(3)
        assert same(outcome(t, folder), want), at


def test_a_ctrl_c_as_an_epoch_ends_keeps_that_epoch_and_saves_it_as_the_last_whole_one(tmp_path, python_sigint):
    """A Ctrl-C (or SIGTERM) after epoch 2's line was printed undid epoch 2: the run said it stopped in
    epoch 2 and saved epoch 1 as its last whole one, while best_model.pt already held epoch 2. Now the
    epoch's end runs whole (every callback's on_epoch_end), then the Ctrl-C takes effect."""
    import signal
    from predlab.checkpoint import load_checkpoint_dict
    from predlab.train import Checkpointer

    class Printed(Callback):      # where PrintLogger stands: before the Checkpointer
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 2:
                signal.raise_signal(signal.SIGINT)

    d = tmp_path / "ck"
    t = _trainer(callbacks=[_Scripted([0.5, 0.4, 0.3, 0.2]), Printed(), Checkpointer(d, save_every=5)])
    t.monitor = "score"
    with pytest.raises(KeyboardInterrupt):
        t.train(4)
    assert t.epoch == 2 and len(t.history) == 2
    assert sorted(p.name for p in d.glob("*.pt")) == ["best_model.pt", "checkpoint_epoch_2.pt"]
    assert load_checkpoint_dict(d / "best_model.pt")["epoch"] == 2


def test_a_ctrl_c_inside_a_save_at_an_epochs_end_keeps_the_epoch_and_a_second_stops_a_hung_callback(tmp_path,
                                                                                                 python_sigint):
    """A Ctrl-C held by a block that must not stop halfway (a save) inside the epoch's end is handed on
    when that block ends, and the epoch still ends whole. A callback that hangs would hold a Ctrl-C
    for ever: a second one stops it at once, and the epoch is undone."""
    import signal
    from predlab.export import deferred_interrupt

    class InASave(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 2:
                with deferred_interrupt():
                    signal.raise_signal(signal.SIGINT)
                logs["after"] = 1.0      # the epoch's end went on

    t = _trainer(callbacks=[InASave()])
    with pytest.raises(KeyboardInterrupt):
        t.train(4)
    assert t.epoch == 2 and t.history[-1]["after"] == 1.0

    class Hung(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 2:
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)
                raise AssertionError("a second Ctrl-C did not stop the callback")

    t = _trainer(callbacks=[Hung()])
    with pytest.raises(KeyboardInterrupt):
        t.train(4)
    assert t.epoch == 1 and len(t.history) == 1


def test_a_ctrl_c_between_epochs_still_saves_the_last_whole_epoch(tmp_path, monkeypatch):
    """A SIGTERM as the next epoch began (while its starting state was copied) left the run without a
    checkpoint of the epoch before: the Checkpointer did not learn that the run was cut short."""
    from conftest import ctrl_c_as_epoch_begins
    from predlab.train import Checkpointer
    ctrl_c_as_epoch_begins(monkeypatch, 3)
    d = tmp_path / "ck"
    t = _trainer(callbacks=[Checkpointer(d, save_every=5)])
    with pytest.raises(KeyboardInterrupt):
        t.train(4)
    assert t.epoch == 2 and (d / "checkpoint_epoch_2.pt").is_file()


def test_a_weight_decay_that_would_scale_the_weights_to_zero_or_below_is_refused():
    """AdamW multiplies the weights by 1 - lr x weight_decay each step: --weight_decay 1e30 was taken
    and the run ended as "diverged ... --learning_rate 0.002 is too high", blaming the wrong flag.
    set_schedule checks a new rate against the decay in use, and a new decay against the rate."""
    from predlab.config import TrainConfig
    with pytest.raises(ValueError, match=r"weight_decay 1e\+30 x learning_rate 0.002 must be below 1"):
        TrainConfig(weight_decay=1e30, learning_rate=2e-3).validate()
    TrainConfig(weight_decay=400.0, learning_rate=2e-3).validate()         # 0.8: odd, but a step keeps weights
    t = _trainer(learning_rate=1e-2, weight_decay=50.0)
    with pytest.raises(ValueError, match=r"weight_decay 50 x learning_rate 0.03 must be below 1"):
        t.set_schedule(learning_rate=3e-2)
    with pytest.raises(ValueError, match=r"weight_decay 200 x learning_rate 0.01 must be below 1"):
        t.set_schedule(weight_decay=200.0)
    t.set_schedule(learning_rate=1e-3, weight_decay=200.0)
    assert t.optimizer.param_groups[0]["weight_decay"] == 200.0


def test_a_set_of_another_float_type_than_the_model_is_named_before_training():
    """float64 samples (numpy's default) beside a float32 model failed in its first layer with 'expected m1 and
    m2 to have the same dtype', naming neither the set nor the fix; validate() on such a set did the same."""
    data = _samples()
    wide = SampleSet(*(t.double() if t.is_floating_point() else t for t in
                       (data.context, data.predator, data.boids, data.n, data.target)))
    model = TransformerPredator(d_model=16, n_heads=2, n_layers=1, ffn_hidden=32)
    with pytest.raises(InputError, match=r"train_dataset\.context is torch\.float64, the model's weights are "
                                         r"torch\.float32"):
        SupervisedTrainer(model, wide, data, device="cpu")
    with pytest.raises(InputError, match=r"val_dataset\.context is torch\.float64"):
        SupervisedTrainer(model, data, wide, device="cpu")
    t = _trainer(data)
    with pytest.raises(InputError, match=r"data\.context is torch\.float64"):
        t.validate(wide)
    assert SupervisedTrainer(model.double(), wide, wide, device="cpu", cpu_split=1).train(1)[0]["val_loss"] > 0


def test_a_checkpoint_loaded_into_a_trainer_of_other_settings_records_the_settings_it_restored(tmp_path):
    """load_checkpoint restores the checkpoint's optimizer and schedule, but the trainer's train_config kept
    the settings it was made with: its next checkpoint recorded a learning rate, weight decay and schedule
    the run did not use, and a --resume of it reported them as the run's."""
    from predlab.train import parse_args
    first = _trainer(learning_rate=1e-3, weight_decay=0.05, warmup_epochs=0.5, min_lr_ratio=0.3)
    first.train(1)
    path = first.save_checkpoint(tmp_path / "first.pt")
    other = _trainer(learning_rate=4e-3, weight_decay=0.2)
    other.load_checkpoint(path)
    assert other.scheduler.base[0] == 1e-3 and other.optimizer.param_groups[0]["weight_decay"] == 0.05
    tc = other.train_config
    assert (tc.learning_rate, tc.weight_decay, tc.warmup_epochs, tc.min_lr_ratio) == (1e-3, 0.05, 0.5, 0.3)
    again = parse_args(["--resume", str(other.save_checkpoint(tmp_path / "again.pt")), "--epochs", "3"])[0]
    assert (again.learning_rate, again.weight_decay, again.warmup_epochs, again.min_lr_ratio) == (1e-3, 0.05, 0.5, 0.3)


def test_a_trainer_that_picks_its_best_by_catch_ratio_without_measuring_it_says_so(tmp_path):
    """load_checkpoint of a run that chose its best by the catch ratio set that monitor; without a
    CatchEvaluator no epoch ever counted as the best: no best_model.pt, no early stop, and no word why."""
    import warnings
    from predlab.evaluate import CatchEvaluator
    first = _trainer()
    first.monitor = "neg_catch_ratio"                  # what select_best_by="catch_ratio" sets
    path = first.save_checkpoint(tmp_path / "c.pt")
    t = _trainer()
    t.load_checkpoint(path)
    with pytest.warns(UserWarning, match="no CatchEvaluator among its callbacks measures it"):
        t.train(1)
    assert t.best_epoch == 0
    measured = _trainer(callbacks=[CatchEvaluator(every=5, episodes=1, frames=2)])
    measured.load_checkpoint(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measured.train(1)


def test_the_progress_bar_counts_each_epochs_batches_and_clears_them(capsys, monkeypatch):
    """Under the epochs' bar, a bar over the epoch's batches (an epoch of 2,000 episodes trains for
    minutes, and the epochs' bar alone stood still), then one over its validation batches: each counts
    to its number of batches, and the last goes when the epoch ends, so two epochs leave the epochs'
    bar alone behind."""
    from predlab.train import ProgressBar
    seen = []

    class Seen(ProgressBar):
        def on_validate_batch(self, trainer, step):
            if step == 0:          # the training bar, before validation's replaces it
                seen.append((trainer.epoch + 1, self.batches.desc, self.batches.n, self.batches.total))
            super().on_validate_batch(trainer, step)

        def on_epoch_end(self, trainer, epoch, logs):
            seen.append((epoch, self.batches.desc, self.batches.n, self.batches.total))
            super().on_epoch_end(trainer, epoch, logs)

    monkeypatch.setattr("predlab.train.VAL_BATCH_MIN", 1)     # validation in several batches too
    bar = Seen()
    t = _trainer(callbacks=[bar])
    n = math.ceil(len(t.train_dataset) / t.batch_size)
    v = math.ceil(len(t.val_dataset) / t.batch_size)
    t.train(2)
    assert seen == [(1, "training (epoch 1)", n, n), (1, "validation (epoch 1)", v, v),
                    (2, "training (epoch 2)", n, n), (2, "validation (epoch 2)", v, v)] and n > 1
    assert bar.batches is None and bar.bar.n == 2 and "training (epoch 2)" in capsys.readouterr().err


@pytest.mark.parametrize("edit, field", [
    (lambda s: s.pop("optimizer"), "no 'optimizer' state"),
    (lambda s: s.pop("scheduler"), "no 'scheduler' state"),
    (lambda s: s.__setitem__("rng", {}), "'rng' holds no 'torch'"),
    (lambda s: s["train_config"].__setitem__("select_best_by", "loss"), "train_config's 'select_best_by' is 'loss'")])
def test_a_checkpoint_without_the_state_a_resume_needs_is_refused_naming_the_field_and_file(tmp_path, edit, field):
    """Loaded, these went on silently: with a fresh AdamW, or with the dropout masks of another random
    state than the run it continues would have drawn."""
    from predlab.checkpoint import CheckpointError
    _tampered(tmp_path / "bad.pt", edit, dropout=0.1)
    t = _trainer(dropout=0.1)
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'bad.pt'}: {field}")):
        t.load_checkpoint(tmp_path / "bad.pt")
    assert t.epoch == 0 and t.optimizer.state_dict()["state"] == {}


def test_a_rewind_past_the_files_of_its_best_epoch_starts_the_best_again_from_the_model_resumed(tmp_path, capsys):
    """Rewound to epoch 3, whose best (epoch 1) only the best_model.pt that epoch 4 overwrote held: that
    file moves aside with the later epochs, and the folder had no best_model.pt of the run going on.
    The best starts again from epoch 3's model, by its own score, and is written as best_model.pt.
    Early stopping counts on as the uninterrupted run does: from epoch 1's 0.5, three epochs without a
    gain (it counted from 0 again, and a run with --early_stopping trained that many epochs more)."""
    from predlab.checkpoint import load_checkpoint_dict
    from predlab.train import Checkpointer
    d = tmp_path / "ck"
    first = _trainer(callbacks=[_Scripted([0.5, 0.9, 0.8, 0.3]), Checkpointer(d, save_every=1, keep=5)])
    first.monitor = "score"
    first.train(4)
    t = _trainer(callbacks=[_Scripted([0.5, 0.9, 0.8, 0.85]), Checkpointer(d, save_every=1, keep=5)])
    t.load_checkpoint(d / "checkpoint_epoch_3.pt")
    assert (t.monitor, t.best_epoch) == ("score", 1)
    t.train(4)
    best = load_checkpoint_dict(d / "best_model.pt")
    assert (best["epoch"], best["best_epoch"], best["best_metric"]) == (3, 3, 0.8)
    assert (t.best_epoch, t.best_metric, t.bad_epochs, t.early_stopping_ref) == (3, 0.8, 3, 0.5)
    from predlab.train import EarlyStopping
    t.min_delta, t.stop_training = 0.0, False
    EarlyStopping(3).on_epoch_end(t, 4, {"score": 0.85})   # it stopped "with no improvement", naming the best alone
    assert "early stopping: no improvement on score 0.5 for 3 epochs (best: score 0.80000 at epoch 3)" in \
        capsys.readouterr().out and t.stop_training
    resumed = load_checkpoint_dict(d / "checkpoint_epoch_3.pt")["model"]
    assert all(torch.equal(best["model"][k], v) for k, v in resumed.items())
    [moved] = d.glob("previous/*/best_model.pt")
    assert load_checkpoint_dict(moved)["epoch"] == 4


def test_a_trainer_whose_monitor_no_callback_logs_warns_once_naming_it_and_the_metrics_logged(tmp_path):
    """load_checkpoint restores the monitor of a trainer whose callback logged it ("score"); without
    that callback no epoch counted as the best, so no best_model.pt and no early stop, and no word why."""
    import warnings
    first = _trainer(callbacks=[_Scripted([0.5])])
    first.monitor = "score"
    first.train(1)
    path = first.save_checkpoint(tmp_path / "c.pt")
    t = _trainer()
    t.load_checkpoint(path)
    with pytest.warns(UserWarning) as caught:
        t.train(3)
    [told] = [str(w.message) for w in caught]
    assert told.startswith("epoch 2 logged no 'score', the metric this trainer picks its best epoch by "
                           "(trainer.monitor; logged: 'train_loss', ")
    assert "'val_loss'): unless a callback logs it in later epochs" in told
    assert (t.best_epoch, t.bad_epochs) == (1, 0)
    # logged in some epochs only: it is measured, and no warning
    measured = _trainer(callbacks=[_Scripted([0.5, None, 0.4])])
    measured.monitor = "score"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measured.train(3)
    assert measured.best_epoch == 3


def test_a_library_run_stopped_mid_epoch_says_train_again_goes_on(tmp_path, capsys):
    """A Ctrl-C in a notebook's training cell saved the last whole epoch and said "--resume it to go on", a
    command line's flag, where the cell run again goes on: the trainer has already put itself back."""
    from predlab.train import Checkpointer

    class CtrlC(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 3:
                raise KeyboardInterrupt
    t = _trainer(callbacks=[Checkpointer(tmp_path, save_every=5), CtrlC()])
    with pytest.raises(KeyboardInterrupt):
        t.train(4)
    out = capsys.readouterr().out
    assert f"saved {tmp_path / 'checkpoint_epoch_2.pt'} (the last whole epoch): train() again on this trainer " \
           "(a notebook's training cell run again) goes on from there" in out and "--resume it to go on" not in out, out
    t.callbacks.pop()
    t.train(4)
    assert t.epoch == 4


def test_a_run_stopped_just_after_a_scheduled_save_still_says_where_to_go_on(tmp_path, capsys, monkeypatch):
    """Stopped in epoch 3, whose epoch 2 save_every had saved: nothing was written, and nothing said where the
    last whole epoch was; the notebook showed the KeyboardInterrupt's traceback alone."""
    from conftest import ctrl_c_in_epoch
    from predlab.train import Checkpointer
    ctrl_c_in_epoch(monkeypatch, 3)
    t = _trainer(callbacks=[Checkpointer(tmp_path, save_every=2)])
    with pytest.raises(KeyboardInterrupt):
        t.train(4)
    out = capsys.readouterr().out
    assert f"{tmp_path / 'checkpoint_epoch_2.pt'} holds the last whole epoch: train() again on this trainer" in out


@pytest.mark.parametrize("name", ["model.js", "weights.JSON"])
def test_save_checkpoint_under_a_weight_files_name_is_refused_naming_write_weights(tmp_path, name):
    """save_checkpoint("model.js") wrote a torch zip that the page cannot load, under the page's name."""
    t = _trainer()
    with pytest.raises(ValueError, match=r"writes a torch checkpoint, which the page cannot load: name it .pt, "
                                         r"and write the browser's weights with predlab.export.write_weights"):
        t.save_checkpoint(tmp_path / name)
    assert list(tmp_path.iterdir()) == []
    assert t.save_checkpoint(tmp_path / "model.pt").is_file()


def test_a_ctrl_c_while_the_optimizer_is_made_waits_for_it(monkeypatch, python_sigint):
    """The process's first fused AdamW imports torch._dynamo and sympy: a notebook's Stop there left sympy
    half-imported, and every trainer built after failed with "module 'sympy' has no attribute 'core'"
    until the kernel was restarted. The Ctrl-C now takes effect once the optimizer is made."""
    import signal
    real, made = torch.optim.AdamW, []

    def interrupted(*a, **k):
        signal.raise_signal(signal.SIGINT)
        made.append(real(*a, **k))
        return made[-1]
    monkeypatch.setattr(torch.optim, "AdamW", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _trainer()
    assert len(made) == 1


def test_samples_that_do_not_say_their_world_need_it_given_or_a_warning_says_so(recwarn):
    """A trainer on a SampleSet of 20-frame, 8-boid worlds recorded the browser's world (200 frames, up to 50
    boids) in its checkpoints without a word, and evaluate and the catch check of them ran there."""
    from predlab.config import WorldConfig
    world = WorldConfig(frames=20, boids_max=8)
    with pytest.warns(UserWarning, match="no world_config for training samples that do not say their world"):
        t = _trainer()
    assert t.world_config == WorldConfig()
    recwarn.clear()
    assert _trainer(world_config=world).world_config == world
    from predlab.data import EpisodeGenerator
    from predlab.train import EpisodeSource
    gen = EpisodeGenerator(world, progress=False)
    t = SupervisedTrainer(TransformerPredator(d_model=16, n_heads=2, n_layers=1, ffn_hidden=32), EpisodeSource(gen, 2),
                          _samples(), device="cpu")
    assert t.world_config == world                       # an episode source's own world
    assert not [w for w in recwarn if "world_config" in str(w.message)]


def test_devices_given_as_torch_devices_and_models_without_weights_are_named(tmp_path):
    """create_trainer refused torch.device("cpu"), which SupervisedTrainer takes; load_model(path, "cuda")
    without a GPU failed in torch ("Torch not compiled with CUDA enabled"); a trainer of a meta model failed
    in torch ("Cannot copy out of meta tensor")."""
    from predlab.checkpoint import load_model
    from predlab.config import WorldConfig
    from predlab.train import create_trainer
    t = create_trainer(train_episodes=2, val_episodes=1, frames=20, boids_max=8, device=torch.device("cpu"),
                       verbose=False, progress=False)
    assert t.device == torch.device("cpu")
    path = t.save_checkpoint(tmp_path / "c.pt")
    assert load_model(path, device=torch.device("cpu")).output.weight.device.type == "cpu"
    if not torch.cuda.is_available():
        for device in ("cuda", torch.device("cuda")):
            with pytest.raises(ValueError, match="device='cuda' asked for, but this torch sees no CUDA GPU"):
                load_model(path, device=device)
    with pytest.raises(ValueError, match="the model's weights are on the meta device"):
        SupervisedTrainer(TransformerPredator().to("meta"), _samples(), _samples(), world_config=WorldConfig())
    from predlab.config import as_device
    assert as_device(torch.device("cpu", 0)) == torch.device("cpu", 0)
    mps = getattr(torch.backends, "mps", None)
    if not (mps is not None and mps.is_available()):   # a model's device on a Mac, mps:0: named as mps is
        with pytest.raises(ValueError, match="Apple MPS is not available here"):
            as_device(torch.device("mps", 0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_create_trainer_names_a_model_of_another_dtype_than_its_episodes(dtype):
    """It said 'val_dataset.context is torch.float32, the model's weights are torch.float64: give every float
    field as torch.float64', of a validation set the caller never made."""
    from predlab.train import create_trainer
    with pytest.raises(ValueError, match=rf"create_trainer makes float32 episodes, and the model's weights are "
                                         rf"{dtype}: pass model.float\(\)"):
        create_trainer(model=TransformerPredator().to(dtype), train_episodes=1, val_episodes=1, frames=10,
                       verbose=False, progress=False)


def test_validation_is_float32_inside_a_callers_own_autocast():
    """A user's torch.autocast around train() or validate() made the validation loss a bf16 one where
    the trainer's own steps stayed float32; and it depended on the CPU split, whose threads do not
    inherit autocast."""
    t = _trainer()
    want = t.validate()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert t.validate() == want


def test_a_checkpoints_adamw_machine_flags_give_way_to_this_trainers(tmp_path):
    """load_state_dict took the run's differentiable=True (fused AdamW refuses it) and amsgrad=True without
    its state: the first step failed, an epoch in. How AdamW runs is this trainer's, as a device is."""
    def flags(s):
        for g in s["optimizer"]["param_groups"]:
            g.update(differentiable=True, amsgrad=True, foreach=True, capturable=True)
    _tampered(tmp_path / "flags.pt", flags, batch_size=64)
    t = _trainer(batch_size=64)
    own = [{k: g.get(k) for k in ("fused", "foreach", "differentiable", "amsgrad")} for g in t.optimizer.param_groups]
    t.load_checkpoint(tmp_path / "flags.pt")
    assert [{k: g.get(k) for k in own[0]} for g in t.optimizer.param_groups] == own
    assert not any(g["capturable"] for g in t.optimizer.param_groups)      # as checkpoints save it
    t.train(t.epoch + 1)
    assert math.isfinite(t.history[-1]["train_loss"])


def test_early_stopping_decides_only_at_epochs_that_measured_its_metric(capsys):
    """A run choosing its best by catch ratio (a check every --eval_every epochs), early-stopped and resumed with the
    same patience: its first epoch had no catch check, so could not improve, and was stopped for it, citing an
    evaluation that never happened. Before any ratio was measured the line said "on catch ratio -inf"."""
    from types import SimpleNamespace
    from predlab.train import EarlyStopping
    t = SimpleNamespace(bad_epochs=1, monitor="neg_catch_ratio", min_delta=1e-5, early_stopping_ref=-0.5,
                        best_metric=-0.5, best_epoch=4, stop_training=False)
    EarlyStopping(1).on_epoch_end(t, 5, {"val_loss": 0.4})
    assert not t.stop_training and capsys.readouterr().out == ""
    t.bad_epochs = 2
    EarlyStopping(1).on_epoch_end(t, 6, {"val_loss": 0.4, "neg_catch_ratio": -0.4})
    assert t.stop_training
    assert ("early stopping: no improvement of more than 1e-05 on catch ratio 0.5000 for 2 catch evaluations "
            "(best: catch ratio 0.5000 at epoch 4)") in capsys.readouterr().out
    t.early_stopping_ref = t.best_metric = float("inf")       # the teacher caught nothing: NaN ratios so far
    EarlyStopping(1).on_epoch_end(t, 6, {"val_loss": 0.4, "neg_catch_ratio": float("nan")})
    out = capsys.readouterr().out
    assert "early stopping: no improvement for 2 catch evaluations (best: none yet)" in out and "inf" not in out


def test_a_graph_captured_after_a_rate_written_into_the_optimizer_reads_the_rate_tensor(monkeypatch):
    """A float written into param_groups (a callback's, a torch scheduler's) was put back as the captures' rate
    tensor only before a replay: a batch of a new shape captured meanwhile baked that float into its graph, which
    replayed it for the rest of the run (17 of 18 graphs, the loss of epoch 2 2.4x the eager one's, emulated).
    The capture itself needs a GPU; what it is handed is checked here."""
    from types import SimpleNamespace
    t = _trainer()
    seen = []

    def capture(b):
        seen.append([(g["lr"] is t._graph_lrs[i], float(g["lr"])) for i, g in enumerate(t.optimizer.param_groups)])
        return {k: v.clone() for k, v in b.items()}, SimpleNamespace(replay=lambda: None), torch.zeros(())
    monkeypatch.setattr(t, "_capture", capture)
    batch = t.train_dataset.batch(torch.arange(16))
    t._graphed_step(batch)
    for g in t.optimizer.param_groups:
        g["lr"] = 0.5                   # a float where the tensor was
    t._graphed_step({k: v[:8] for k, v in batch.items()})      # another shape: a new capture
    assert seen[1] == [(True, 0.5)] * len(t.optimizer.param_groups)


def test_a_weight_frozen_between_epochs_gets_a_graph_of_its_own(monkeypatch):
    """The captures' key had the shape, autocast, TF32 and the clip, not which weights train: a graph captured
    before a weight was frozen went on computing its gradient and stepping it, where eager steps skip it."""
    from types import SimpleNamespace
    t = _trainer()
    captured = []

    def capture(b):
        captured.append([p.requires_grad for p in t.model.parameters()])
        return {k: v.clone() for k, v in b.items()}, SimpleNamespace(replay=lambda: None), torch.zeros(())
    monkeypatch.setattr(t, "_capture", capture)
    batch = t.train_dataset.batch(torch.arange(16))
    t._graphed_step(batch)
    t._graphed_step(batch)
    next(t.model.parameters()).requires_grad_(False)
    t._graphed_step(batch)
    assert len(captured) == 2 and captured[1][0] is False


def test_save_checkpoint_does_not_replace_a_file_that_is_no_checkpoint(tmp_path):
    """trainer.save_checkpoint("train.py"), a typo in a notebook, replaced the file with a torch archive: only a
    checkpoint or an empty file is replaced, as write_weights replaces only weight files."""
    t = _trainer()
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(FileExistsError, match="notes.txt exists and is not a checkpoint; predlab will not replace it"):
        t.save_checkpoint(notes)
    assert notes.read_text() == "my notes\n"
    import zipfile
    import numpy as np
    np.savez(tmp_path / "samples.npz", x=np.zeros(3))
    with zipfile.ZipFile(tmp_path / "report.zip", "w") as z:
        z.writestr("word/document.xml", "<w/>")
    torch.save(t.model.state_dict(), tmp_path / "weights.pt")     # one's own torch.save: no checkpoint of predlab's
    for other in ("samples.npz", "report.zip", "weights.pt"):
        kept = (tmp_path / other).read_bytes()
        with pytest.raises(FileExistsError, match="is not a checkpoint"):
            t.save_checkpoint(tmp_path / other)
        assert (tmp_path / other).read_bytes() == kept
    first = t.save_checkpoint(tmp_path / "c.pt")
    t.save_checkpoint(first)                       # a checkpoint: replaced
    (tmp_path / "empty.pt").write_bytes(b"")
    t.save_checkpoint(tmp_path / "empty.pt")       # made ready: replaced
    assert torch.load(tmp_path / "empty.pt", weights_only=True)["epoch"] == 0


@pytest.mark.parametrize("key,field", [("train_config", "batch_size"), ("world_config", "frames")])
def test_a_checkpoint_with_a_tensor_for_a_setting_is_refused_and_the_trainer_is_unchanged(tmp_path, key, field):
    """The weights-only loader reads a tensor anywhere: one as a setting's value failed load_checkpoint in
    "Boolean value of Tensor with more than one value is ambiguous", after the trainer had taken the file's
    weights, epoch and optimizer."""
    from predlab.checkpoint import CheckpointError
    path = tmp_path / "t.pt"
    _tampered(path, lambda s: s[key].update({field: torch.tensor([1, 2])}))
    t = _trainer()
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    with pytest.raises(CheckpointError, match=f"{key} '{field}' is a Tensor, not a setting's value"):
        t.load_checkpoint(path)
    assert t.epoch == 0 and all(torch.equal(v, t.model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("setting", ["learning_rate", "weight_decay"])
def test_a_fraction_setting_is_named_when_given(setting):
    """A fractions.Fraction learning rate passed the checks, and the trainer wrote checkpoints it then refused
    to read; a Fraction weight decay failed in torch's AdamW at the first step."""
    from fractions import Fraction
    from predlab.train import create_trainer
    with pytest.raises((TypeError, ValueError), match=rf"{setting} must be a float or an int, got Fraction\(3, 1000\)"):
        _trainer(**{setting: Fraction(3, 1000)})
    with pytest.raises((TypeError, ValueError), match=rf"{setting} must be a float or an int"):
        create_trainer(train_episodes=2, val_episodes=1, frames=4, verbose=False, **{setting: Fraction(3, 1000)})


def test_a_fraction_in_a_callbacks_logs_gives_checkpoints_that_load(tmp_path):
    """A callback that logs a Fraction: the weights-only loader refuses its class, so the run's checkpoints could
    not be read back (no resume, no export). It is saved as the float it holds."""
    from fractions import Fraction
    from predlab.checkpoint import load_checkpoint_dict
    from predlab.train import Callback

    class Ratio(Callback):
        def on_evaluate(self, trainer, epoch, logs):
            logs["share"] = Fraction(1, 3)
    t = _trainer(callbacks=[Ratio()])
    t.train(1)
    ck = load_checkpoint_dict(t.save_checkpoint(tmp_path / "f.pt"))
    assert ck["history"][0]["share"] == pytest.approx(1 / 3) and type(ck["history"][0]["share"]) is float
