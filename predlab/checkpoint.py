"""Checkpoints: written atomically, read with weights_only=True, checked before use.

A checkpoint is a plain dict of tensors and Python values (no pickled objects):
format/version, the three configs, model weights, optimizer, scheduler, RNG states, epoch,
best metric, early-stopping counter and the metric history.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Union

import torch

from .config import ModelConfig, from_dict
from .export import atomic_write
from .model import TransformerPredator

FORMAT = "predlab-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: foreign, tampered, or of another architecture."""


def atomic_save(obj: Mapping, path: Union[str, Path]) -> Path:
    """torch.save to a temporary file beside path, then rename: a kill never corrupts path."""
    return atomic_write(path, lambda f: torch.save(dict(obj), f), binary=True)


def _plain(text: str) -> str:
    """text without terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def load_checkpoint_dict(path: Union[str, Path]) -> Dict:
    """Read a checkpoint without executing pickled code; refuse anything that is not ours."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a directory, not a checkpoint (say {path / 'best_model.pt'})")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:   # zipfile.is_zipfile says False for a file it cannot open: "not a zip" would hide why
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable torch checkpoint (not a torch.save zip archive; "
                              "truncated or another kind of file)")
    try:   # torch.load does not check the archive's CRCs: bytes changed on disk would load silently
        with zipfile.ZipFile(path) as z:
            broken = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from None
    if broken is not None:
        raise CheckpointError(f"{path}: damaged: {broken} in the archive fails its CRC check "
                              "(the file changed on disk since it was written)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises loading with weights_only=False; name only what was refused
        found = re.search(r"GLOBAL ([\w.]+)", _plain(str(e)))
        raise CheckpointError(f"{path}: refused: loading it would need to execute pickled code, which predlab "
                              f"never does" + (f" (it names {found.group(1)})" if found else "")) from None
    except Exception as e:  # truncated, not a zip, not torch at all
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: "
                              f"{_plain(str(e).splitlines()[0]) if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a predlab checkpoint (no format={FORMAT!r} marker)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r}, this predlab reads {VERSION}")
    for key in ("model_config", "model"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint has no {key!r} dict")
    for key in ("train_config", "world_config"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            raise CheckpointError(f"{path}: {key!r} is {type(ckpt[key]).__name__}, not a dict")
    for key in ("epoch", "best_epoch", "early_stopping_counter"):
        v = ckpt.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CheckpointError(f"{path}: {key!r} must be a whole number >= 0, found {v!r}")
    try:
        cfg = from_dict(ModelConfig, ckpt["model_config"])
        cfg.validate()
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad model_config: {e}") from None
    for name, t in ckpt["model"].items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: model weight {name!r} is not a tensor")
        if not t.is_floating_point():
            raise CheckpointError(f"{path}: model weight {name!r} is {t.dtype}, not floating point")
        if not torch.isfinite(t.float()).all():   # as float32, as the model holds it: 1e39 is infinity
            raise CheckpointError(f"{path}: model weight {name!r} contains NaN or infinity (in float32)")
    return ckpt


def check_architecture(model: TransformerPredator, ckpt: Mapping, path="checkpoint") -> None:
    """Refuse a checkpoint whose sizes or weight shapes differ from model's, naming the mismatch."""
    mine = vars(model.config)
    theirs = ckpt["model_config"]
    diffs = [f"{k}: checkpoint {theirs.get(k)}, model {mine[k]}"
             for k in ("d_model", "n_heads", "n_layers", "ffn_hidden") if theirs.get(k) != mine[k]]
    if diffs:
        raise CheckpointError(f"{path} is of another architecture: " + "; ".join(diffs))
    sd = model.state_dict()
    missing = sorted(set(sd) - set(ckpt["model"]))
    extra = sorted(set(ckpt["model"]) - set(sd))
    if missing or extra:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in sd.items():
        if tuple(ckpt["model"][k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: weight {k!r} has shape {tuple(ckpt['model'][k].shape)}, "
                                  f"model expects {tuple(v.shape)}")


def load_model(path: Union[str, Path], device="cpu") -> TransformerPredator:
    """The model stored in a checkpoint (its own sizes), in eval mode."""
    ckpt = load_checkpoint_dict(path)
    model = TransformerPredator.from_config(ckpt["model_config"])
    check_architecture(model, ckpt, path)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def describe_best(monitor: str, best_metric: float, best_epoch) -> str:
    """The best so far in the user's terms: "val MSE 0.00151 at epoch 27", "catch ratio 0.98 at
    epoch 25" (the trainer minimises neg_catch_ratio), or "none yet"."""
    import math
    if best_metric is None or not math.isfinite(float(best_metric)):
        return "none yet"
    if monitor == "neg_catch_ratio":
        return f"catch ratio {-float(best_metric):.4f} at epoch {best_epoch}"
    name = {"val_loss": "val MSE"}.get(monitor, monitor)
    return f"{name} {float(best_metric):.5f} at epoch {best_epoch}"
