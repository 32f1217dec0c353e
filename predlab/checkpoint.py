"""Checkpoints: written atomically, read with weights_only=True, checked before use.

A checkpoint is a plain dict of tensors and Python values (no pickled objects):
format/version, the three configs, model weights, optimizer, scheduler, RNG states, epoch,
best metric, early-stopping counter and the metric history.
"""
from __future__ import annotations

import io
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, List, Mapping, Union

import torch

from .config import SEED_MAX, SELECT_BEST_BY, ModelConfig, as_device, from_dict
from .export import (SIZE_KEYS, WEIGHTS_ASSIGNMENT, _layer_map, _param_paths, atomic_write, expected_shapes,
                     not_a_file, script_text)
from .model import TOKEN_TYPES, TransformerPredator, weights_memory_problem

FORMAT = "predlab-checkpoint"
MAX_EPOCHS = SEED_MAX - 1     # the next epoch's episodes are the random stream epoch + 2, at most SEED_MAX
VERSION = 1
# what the command line's best follows: --select_best_by val_loss, or catch_ratio (the trainer minimises its monitor)
MONITORS = ("val_loss", "neg_catch_ratio")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: foreign, tampered, or of another architecture."""


def atomic_save(obj: Mapping, path: Union[str, Path]) -> Path:
    """torch.save to a temporary file beside path, then rename: a kill never corrupts path.

    Serialised in memory first: torch's writer turned a full disk into "RuntimeError: [enforce
    fail at inline_container.cc] unexpected pos"; a plain write raises OSError naming the file."""
    buf = io.BytesIO()
    torch.save(dict(obj), buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()), binary=True)


def _plain(text: str) -> str:
    """text without terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def load_checkpoint_dict(path: Union[str, Path]) -> Dict:
    """Read a checkpoint without executing pickled code; refuse anything that is not ours."""
    if isinstance(path, str) and not path.strip():      # Path("") is the current folder: ". is a directory"
        raise FileNotFoundError(f"no file name given ({path!r}): name a checkpoint, say checkpoints/best_model.pt")
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a directory, not a checkpoint (say {path / 'best_model.pt'})")
    if not path.is_file():
        raise FileNotFoundError(not_a_file(path, f"no checkpoint at {path}"))
    try:   # zipfile.is_zipfile says False for a file it cannot open: "not a zip" would hide why
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = script_text(f.read(4096), errors="replace").lstrip(" \t\r\n")
        # what model.js / model.json files begin with: a comment, a JSON object, or the assignment
        if head.startswith(("/*", "//", "{")) or WEIGHTS_ASSIGNMENT.match(head):
            raise CheckpointError(f"{path}: a browser weight file (model.js / model.json), not a checkpoint: it holds "
                                  "the weights only, no training state (named .js or .json, predlab.evaluate and "
                                  "predlab.export read it; resuming needs best_model.pt or a checkpoint_epoch_N.pt)")
        raise CheckpointError(f"{path}: not a readable torch checkpoint (not a torch.save zip archive; "
                              "truncated or another kind of file)")
    try:   # torch.load does not check the archive's CRCs: bytes changed on disk would load silently
        with zipfile.ZipFile(path) as z:
            broken = z.testzip()
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from None
    if broken is not None:
        raise CheckpointError(f"{path}: damaged: {broken} in the archive fails its CRC check "
                              "(the file changed on disk since it was written)")
    if any(n.endswith("/constants.pkl") for n in names):
        # torch.load warned, then advised loading it with weights_only=False: TorchScript runs code of its own
        raise CheckpointError(f"{path}: a TorchScript model (torch.jit.save), not a predlab checkpoint; predlab "
                              "never runs its code (it reads checkpoints that predlab.train writes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises loading with weights_only=False; name only what was refused
        operand = re.search(r"Unsupported operand (\d+)", _plain(str(e)))
        if operand:   # bytes that are no pickle instruction: a damaged file, not a malicious one
            raise CheckpointError(f"{path}: damaged: its pickled data is not readable (byte {operand.group(1)} is "
                                  "no pickle instruction); not a file as torch.save writes it") from None
        found = re.search(r"GLOBAL ([\w.]+)", _plain(str(e)))
        raise CheckpointError(f"{path}: refused: loading it would need to execute pickled code, which predlab "
                              f"never does" + (f" (it names {found.group(1)})" if found else "")) from None
    except Exception as e:  # truncated, not a zip, not torch at all
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: "
                              f"{_plain(str(e).splitlines()[0]) if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a predlab checkpoint (no format={FORMAT!r} marker)")
    version = ckpt.get("version")
    whole = isinstance(version, int) and not isinstance(version, bool)     # (True == 1, 1.0 == 1)
    if not whole or version != VERSION:
        # "checkpoint version 2, this predlab reads 1" did not say which side to change
        if whole and version > VERSION:
            raise CheckpointError(f"{path}: checkpoint version {version}, written by a newer predlab; this one "
                                  f"reads version {VERSION}: update predlab to use it")
        raise CheckpointError(f"{path}: checkpoint version {version!r}, which no predlab writes (this one writes and "
                              f"reads version {VERSION}): the file is damaged, or not predlab's")
    for key in ("model_config", "model"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint has no {key!r} dict")
    for key in ("train_config", "world_config"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            raise CheckpointError(f"{path}: {key!r} is {type(ckpt[key]).__name__}, not a dict")
        odd = next(((k, v) for k, v in ckpt.get(key, {}).items()
                    if v is not None and not isinstance(v, (bool, int, float, str))), None)
        if odd:     # a tensor there failed load_checkpoint's comparison after the state was restored
            raise CheckpointError(f"{path}: {key} {odd[0]!r} is a {type(odd[1]).__name__}, not a setting's value")
    for key in ("epoch", "best_epoch", "early_stopping_counter"):
        v = ckpt.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CheckpointError(f"{path}: {key!r} must be a whole number >= 0, found {v!r}")
    # each counts finished epochs: more than a run could ever train (10**30 stopped the next epoch with a
    # traceback), or a best or a patience count past the epochs done, is not a state a run left
    if ckpt.get("epoch", 0) > MAX_EPOCHS:
        raise CheckpointError(f"{path}: 'epoch' is {ckpt['epoch']}, more than a run can train")
    for key in ("best_epoch", "early_stopping_counter"):
        if ckpt.get(key, 0) > ckpt.get("epoch", 0):
            raise CheckpointError(f"{path}: {key!r} is {ckpt[key]}, past the {ckpt.get('epoch', 0)} epochs the "
                                  f"checkpoint has trained")
    # every checkpoint records its sizes: one left out is not "another architecture" (it was named so), and
    # --resume, which takes the sizes from the checkpoint, stopped with a KeyError traceback
    missing = [k for k in SIZE_KEYS if k not in ckpt["model_config"]]
    if missing:
        raise CheckpointError(f"{path}: model_config does not give the model's {', '.join(missing)}")
    try:
        cfg = from_dict(ModelConfig, ckpt["model_config"])
        cfg.validate()
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad model_config: {e}") from None
    _check_training_state(ckpt, path)
    for name, t in ckpt["model"].items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: model weight {name!r} is not a tensor")
        if t.layout != torch.strided or t.device.type == "meta":
            raise CheckpointError(f"{path}: model weight {name!r} is a {t.layout} tensor on {t.device.type}, "
                                  "not a dense tensor with values")
        if not t.is_floating_point():
            raise CheckpointError(f"{path}: model weight {name!r} is {t.dtype}, not floating point")
    _check_weight_shapes(ckpt["model"], cfg, path)   # before anything builds a model of cfg's sizes
    # weights that fit the sizes can still be more than memory holds: a tensor saved expanded (stride 0)
    # is a few bytes on disk, and the finite check below allocated it whole before the model's own check
    # (a 22 KB file asked for 480 GB and stopped with the allocator's traceback)
    problem = weights_memory_problem(cfg)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    for name, t in ckpt["model"].items():
        if not torch.isfinite(t.float()).all():   # as float32, as the model holds it: 1e39 is infinity
            raise CheckpointError(f"{path}: model weight {name!r} contains NaN or infinity (in float32)")
    return ckpt


def weight_shapes(cfg: ModelConfig) -> Dict[str, tuple]:
    """The name and shape of every weight a TransformerPredator of cfg's sizes holds, without
    building it (the browser format's arrays are the model's weights)."""
    shapes = expected_shapes(cfg.d_model, cfg.n_layers, cfg.ffn_hidden)
    out = {name: shapes[p] for p, name in _param_paths(cfg.n_layers).items()}
    out["type_embeddings"] = (len(TOKEN_TYPES), cfg.d_model)
    return out


def _check_weight_shapes(weights: Mapping, cfg: ModelConfig, path) -> None:
    """Refuse weights that do not fit cfg's sizes: a crafted model_config (a width of 10**9, a
    million layers) would otherwise have load_model allocate that model first."""
    count = len(_param_paths(0)) + 1 + len(_layer_map(0)) * cfg.n_layers   # cheap: no shapes built yet
    sizes = ", ".join(f"{k}={getattr(cfg, k)}" for k in ("d_model", "n_heads", "n_layers", "ffn_hidden"))
    if len(weights) != count and count > 10 * len(weights) + 100:       # naming them would cost that much
        raise CheckpointError(f"{path}: model_config ({sizes}) has {count} weights, the checkpoint holds "
                              f"{len(weights)}")
    shapes = weight_shapes(cfg)
    missing = sorted(set(shapes) - set(weights), key=str)
    extra = sorted(set(weights) - set(shapes), key=str)
    if missing or extra:
        def listed(what: str, names: List[str]) -> str:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            return f"{what} {', '.join(map(repr, names[:3]))}{more}"
        found = [listed(what, names) for what, names in (("missing", missing), ("unexpected", extra)) if names]
        raise CheckpointError(f"{path}: weights do not fit model_config ({sizes}, {count} weights; the checkpoint "
                              f"holds {len(weights)}): {'; '.join(found)}")
    for name, shape in shapes.items():
        if tuple(weights[name].shape) != shape:
            raise CheckpointError(f"{path}: model weight {name!r} has shape {tuple(weights[name].shape)}, "
                                  f"model_config ({sizes}) gives {shape}")


HISTORY_DEPTH = 32     # a callback's log may hold lists or dicts; an epoch's figures are one level


def _depth(v, limit: int = HISTORY_DEPTH) -> int:
    """How deep lists, tuples and dicts nest in v (a number: 0), counted up to limit + 1, without
    recursion: a tampered entry may nest deeper than Python's stack."""
    depth, level = 0, [v]
    while depth <= limit:
        containers = [c for c in level if isinstance(c, (list, tuple, dict))]
        if not containers:
            break
        depth += 1
        level = [x for c in containers for x in (c.values() if isinstance(c, dict) else c)]
    return depth


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_training_state(ckpt: Mapping, path) -> None:
    """The types of what resuming reads besides the model (the trainer's load_checkpoint), each
    named: a tampered field is refused here instead of failing somewhere inside the optimizer."""
    def need(key, ok: bool, what: str):
        if not ok:
            raise CheckpointError(f"{path}: {key!r} must be {what}")
    if "optimizer" in ckpt:
        opt = ckpt["optimizer"]
        need("optimizer", isinstance(opt, dict) and isinstance(opt.get("state"), dict)
             and isinstance(opt.get("param_groups"), list) and all(isinstance(g, dict) for g in opt["param_groups"]),
             "an optimizer state: a dict with a 'state' dict and a 'param_groups' list of dicts")
        # a step of "x" reached the caller as "could not convert string to float: '<generator object ...>'"
        entries = ((i, k, v) for i, s in opt["state"].items()
                   for k, v in (s.items() if isinstance(s, dict) else [(None, s)]))
        odd = next(((i, k, v) for i, k, v in entries
                    if v is not None and not isinstance(v, (torch.Tensor, int, float))), None)
        need("optimizer", odd is None, "an optimizer state of tensors and numbers" + ("" if odd is None else
             f", found {type(odd[2]).__name__} {str(repr(odd[2]))[:40]} as {odd[1]!r} of parameter {odd[0]!r}"))
    if "scheduler" in ckpt:
        sch = ckpt["scheduler"]
        need("scheduler", isinstance(sch, dict)
             and all(_is_number(sch.get(k)) for k in ("warmup", "min_ratio", "progress"))
             and isinstance(sch.get("base"), (list, tuple)) and all(_is_number(b) for b in sch["base"]),
             "a dict of numbers warmup, min_ratio, progress and a list of numbers base")
        # a NaN or negative learning rate trained on silently: NaN weights, or gradient ascent
        need("scheduler", all(math.isfinite(sch[k]) and sch[k] >= 0 for k in ("warmup", "progress"))
             and 0 <= sch["min_ratio"] <= 1 and all(math.isfinite(b) and b > 0 for b in sch["base"]),
             f"a schedule of finite values (warmup >= 0, progress >= 0, min_ratio in [0, 1], learning rates "
             f"base > 0), found warmup {sch['warmup']}, progress {sch['progress']}, min_ratio {sch['min_ratio']}, "
             f"base {list(sch['base'])}")
        need("scheduler", "total" not in sch or (_is_number(sch["total"]) and 0 < sch["total"] < math.inf),
             f"a schedule whose length total is a finite number of epochs > 0, found total {sch.get('total')!r}")
    if "rng" in ckpt:
        rng = ckpt["rng"]

        def byte_state(t) -> bool:
            return (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.layout == torch.strided
                    and t.device.type == "cpu")
        need("rng", isinstance(rng, dict) and ("torch" not in rng or byte_state(rng["torch"]))
             and ("cuda" not in rng or (isinstance(rng["cuda"], (list, tuple)) and all(map(byte_state, rng["cuda"])))),
             "a dict of random-generator states (uint8 tensors: 'torch', a list of them: 'cuda')")
    for key in ("best_metric", "early_stopping_ref"):
        if key in ckpt:
            need(key, _is_number(ckpt[key]), f"a number, found {type(ckpt[key]).__name__}")
            # NaN or -inf: no epoch could ever improve on it (best_model.pt would never be written again,
            # or early stopping would stop at its patience whatever the run did)
            need(key, not math.isnan(ckpt[key]) and ckpt[key] != -math.inf,
                 f"a finite number, or infinity before any best, found {ckpt[key]}")
            # below any value the measure takes (an MSE is >= 0, a catch ratio, negated, <= 0), no epoch could beat
            # it either: the run trained on and exported the checkpoint's best, "val MSE -1.00000"
            monitor = ckpt.get("monitor", "val_loss")
            need(key, monitor != "val_loss" or ckpt[key] >= 0, f"a validation MSE, >= 0, found {ckpt[key]}")
            need(key, monitor != "neg_catch_ratio" or ckpt[key] <= 0 or ckpt[key] == math.inf,
                 f"a catch ratio, negated (<= 0), found {ckpt[key]}")
    if "cpu_threads" in ckpt:      # a resume's advice names it as --threads
        need("cpu_threads", isinstance(ckpt["cpu_threads"], int) and not isinstance(ckpt["cpu_threads"], bool)
             and ckpt["cpu_threads"] >= 1, f"a number of threads >= 1, found {ckpt['cpu_threads']!r}")
    if "monitor" in ckpt:
        need("monitor", isinstance(ckpt["monitor"], str), f"a metric name, found {type(ckpt['monitor']).__name__}")
    if "history" in ckpt:
        need("history", isinstance(ckpt["history"], list) and all(isinstance(h, dict) for h in ckpt["history"]),
             "a list of dicts (one per epoch)")
        # an entry nested thousands deep resumed, trained its epoch, then lost it in a RecursionError at the save
        need("history", all(_depth(h) <= HISTORY_DEPTH for h in ckpt["history"]),
             f"a list of epochs' logs nested at most {HISTORY_DEPTH} deep")
    if "data_source" in ckpt:
        need("data_source", isinstance(ckpt["data_source"], dict), "a dict")


def check_resumable(ckpt: Mapping, path="checkpoint") -> None:
    """Refuse, naming the field, a checkpoint that a run cannot go on from as the run it continues
    would have. load_checkpoint_dict accepts it (export and evaluate need only the model), and every
    checkpoint predlab writes holds these: without them a resume went on silently with a fresh
    AdamW or a random state it never saved. (A trainer's monitor may be any metric its callbacks
    log; the command line checks it is one it measures.)"""
    for key, what in (("optimizer", "a fresh AdamW (its moments at zero)"),
                      ("scheduler", "the learning-rate schedule of this command, not the run's")):
        if key not in ckpt:
            raise CheckpointError(f"{path}: no {key!r} state, which every checkpoint predlab writes holds: a resume "
                                  f"would go on with {what}; resume a checkpoint_epoch_N.pt or best_model.pt of the "
                                  f"run, or start a new run from its weights with --init_weights")
    rng = ckpt.get("rng")
    if not isinstance(rng, dict) or "torch" not in rng:
        raise CheckpointError(f"{path}: 'rng' holds no 'torch' random-generator state (found "
                              f"{sorted(rng) if isinstance(rng, dict) else rng!r}): the resumed run could not "
                              f"draw the dropout masks the run it continues would have")
    chosen = ckpt.get("train_config", {}).get("select_best_by", "val_loss")
    if chosen not in SELECT_BEST_BY:
        raise CheckpointError(f"{path}: train_config's 'select_best_by' is {chosen!r}, not 'val_loss' or 'catch_ratio'")


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
    return model_from_checkpoint(load_checkpoint_dict(path), path, device)


def model_from_checkpoint(ckpt: Mapping, path="checkpoint", device="cpu") -> TransformerPredator:
    """The model of a checkpoint dict that load_checkpoint_dict(path) returned, in eval mode: one
    read of the file gives both the model and what the checkpoint says of it."""
    device = as_device(device)      # "cuda" without a GPU: torch's "Torch not compiled with CUDA enabled"
    model = TransformerPredator.for_weights(ckpt["model_config"])
    check_architecture(model, ckpt, path)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def describe_best(monitor: str, best_metric: float, best_epoch) -> str:
    """The best so far in the user's terms: "val MSE 0.00151 at epoch 27", "catch ratio 0.98 at
    epoch 25" (the trainer minimises neg_catch_ratio), or "none yet"."""
    if best_metric is None or not math.isfinite(float(best_metric)):
        return "none yet"
    if monitor == "neg_catch_ratio":
        return f"catch ratio {-float(best_metric):.4f} at epoch {best_epoch}"
    name = {"val_loss": "val MSE"}.get(monitor, monitor)
    return f"{name} {float(best_metric):.5f} at epoch {best_epoch}"
