"""Checkpoint files: what is refused, and with which words."""
import math

import pytest
import torch

from predlab import checkpoint as ck
from predlab.export import write_weights
from predlab.model import TransformerPredator

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
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is a directory, not a checkpoint "
                                                f"\\(say {tmp_path / 'best_model.pt'}\\)"):
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
    with pytest.raises(ck.CheckpointError, match=r"do not fit model_config .*missing \['output.bias'\], "
                                                 r"unexpected \['output.b'\]"):
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
