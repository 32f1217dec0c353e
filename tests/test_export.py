"""Weight format (SPEC.md section 7): browser parity under Node, exact round trips, deployed files, bad files."""
from __future__ import annotations

import copy
import errno
import json
import math
import os
import re
import shutil
import subprocess
import sys
import shlex
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from predlab.export import (WeightFormatError, model_to_params, params_to_text, read_params, read_weights,
                            text_to_params, validate_params, write_weights)
from conftest import save_model_file

JS_DIR = Path(__file__).resolve().parents[1] / "predlab" / "js"
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH")


def run_node(weights: Path, inputs: list, tmp_path: Path) -> np.ndarray:
    """Actions from predlab/js/transformer.js under Node -> [B, 2] float64."""
    inp = tmp_path / "inputs.json"
    inp.write_text(json.dumps(inputs))
    res = subprocess.run(["node", str(JS_DIR / "run_node.js"), str(weights), str(inp)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return np.asarray(json.loads(res.stdout), dtype=np.float64)


# ---------------------------------------------------------------------- parity and round trips
@needs_node
@pytest.mark.parametrize("ext", [".js", ".json"])
def test_node_engine_matches_pytorch(model, samples, tmp_path, ext):
    """The exported file, run by the shipped JS engine, gives PyTorch's outputs to 1e-6 (SPEC.md)."""
    path = write_weights(model, tmp_path / f"model{ext}")
    got = run_node(path, samples, tmp_path)
    want = model.predict(samples).double().numpy()
    assert got.shape == want.shape == (len(samples), 2)
    assert (np.abs(want) < 0.99).any()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@needs_node
def test_node_engine_is_float64_pytorch_on_the_same_weights(model, samples, tmp_path):
    """Each weight's text parses in JavaScript to the float32 value PyTorch holds, so the engine
    (float64 throughout) matches the float64 PyTorch model of those weights to rounding: what is
    left between browser and PyTorch is float32 arithmetic alone."""
    path = write_weights(model, tmp_path / "model.js")
    got = run_node(path, samples, tmp_path)
    want = read_weights(path).double().predict(samples).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("ext", [".js", ".json"])
def test_write_read_is_bit_exact(model, tmp_path, ext):
    """read_weights(write_weights(m)) reproduces every tensor bit for bit."""
    back = read_weights(write_weights(model, tmp_path / f"model{ext}"))
    sd, sd2 = model.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert sd2[k].dtype == sd[k].dtype and torch.equal(sd[k], sd2[k]), k
    assert not back.training


def test_js_file_is_what_the_browser_loads(model, tmp_path):
    """model.js assigns window.TRANSFORMER_PARAMS; .json is plain JSON with the same content."""
    js = write_weights(model, tmp_path / "model.js").read_text()
    assert "window.TRANSFORMER_PARAMS = {" in js and js.rstrip().endswith(";")
    plain = json.loads(write_weights(model, tmp_path / "model.json").read_text())
    assert plain == text_to_params(js)
    assert validate_params(plain, require_browser_sizes=True)


def test_load_from_javascript_round_trip(make_model, model):
    """export_to_javascript / load_from_javascript carry every weight across."""
    other = make_model(9)
    other.load_from_javascript(model.export_to_javascript())
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k


# ---------------------------------------------------------------------- the deployed hand-written style
def _js_value(v, indent: int) -> str:
    pad = "  " * indent
    if isinstance(v, list) and v and isinstance(v[0], list):
        return "[\n" + "".join(f"{pad}  {_js_value(r, indent + 1)},\n" for r in v) + f"{pad}]"
    if isinstance(v, list):
        return "[" + ", ".join(repr(round(x, 4)) for x in v) + ",]"
    return str(v)


def deployed_style_js(p: dict) -> str:
    """model.js as the original hand-made tooling wrote it: comments, bare keys, 4 decimals, trailing commas."""
    out = ["/*", " * Predator transformer weights", " * exported by hand: d_model: 48, layers: 3 // not code", " */",
           "window.TRANSFORMER_PARAMS = {"]
    for k in ("d_model", "n_heads", "n_layers", "ffn_hidden"):
        out.append(f"  {k}: {p[k]},")
    out.append("  // Embeddings")
    out.append(f"  cls_embedding: {_js_value(p['cls_embedding'], 1)},")
    out.append("  type_embeddings: {")
    for t, v in p["type_embeddings"].items():
        out.append(f"    {t}: {_js_value(v, 2)},")
    out.append("  },")
    for k in ("ctx_projection", "predator_projection", "boid_projection"):
        out.append(f"  {k}: {_js_value(p[k], 1)},")
    out.append("  layers: [")
    for i, layer in enumerate(p["layers"]):
        out.append(f"    // Layer {i + 1}")
        out.append("    {")
        for k, v in layer.items():
            out.append(f"      {k}: {_js_value(v, 3)},")
        out.append("    },")
    out.append("  ],")
    out.append("  // Output head")
    out.append(f"  output_weight: {_js_value(p['output_weight'], 1)},")
    out.append(f"  output_bias: {_js_value(p['output_bias'], 1)},")
    out.append("};")
    return "\n".join(out) + "\n"


def _round4(v):
    """Every weight rounded to 4 decimals; sizes kept."""
    if isinstance(v, dict):
        return {k: _round4(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_round4(x) for x in v]
    return v if isinstance(v, int) else round(v, 4)


def test_reads_deployed_hand_written_model_js(model, make_model, samples, tmp_path):
    """A hand-written model.js (block comment, // Layer lines, bare keys, 4 decimals, trailing commas) reads
    back as the model's 4-decimal-rounded weights."""
    p = model.export_to_javascript()
    text = deployed_style_js(p)
    assert "// Layer 1" in text and "  d_model: 48," in text and ",]" in text and text.startswith("/*")
    path = tmp_path / "model.js"
    path.write_text(text)

    got = read_params(path)
    rounded = _round4(p)
    want_arrays = validate_params(rounded)
    got_arrays = validate_params(got)
    assert want_arrays.keys() == got_arrays.keys()
    for k in want_arrays:
        np.testing.assert_allclose(got_arrays[k], want_arrays[k], rtol=0, atol=1e-9, err_msg=k)
    # the weights really were rounded (so this is not the full-precision file in disguise)
    assert max(np.abs(want_arrays[k] - validate_params(p)[k]).max() for k in want_arrays) > 1e-6

    m = read_weights(path)
    ref = make_model(5).load_from_javascript(rounded)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, m.state_dict()[k]), k
    assert torch.allclose(m.predict(samples), model.predict(samples), atol=0.05)


def strict_single_quoted_js(p: dict) -> str:
    """The deployed style as other hand-made tooling may write it: a "use strict" line, keys in single quotes,
    window['TRANSFORMER_PARAMS'], and a note holding both quote marks."""
    text = deployed_style_js(p).replace("window.TRANSFORMER_PARAMS = {",
                                        "'use strict';\nwindow['TRANSFORMER_PARAMS'] = {\n  'note': 'it\\'s \"v2\"',", 1)
    for k in ("d_model", "cls_embedding", "type_embeddings", "ffn_gate_weight", "output_bias"):
        text = text.replace(f"  {k}: ", f"  '{k}': ")
    return text


def unicode_spaced_js(p: dict) -> str:
    """As an editor may leave it: JavaScript's other line ends (U+2028, U+2029, one ending a // comment) and
    spaces (no-break, vertical tab), which JSON has not."""
    return (deployed_style_js(p).replace("  d_model: ", "  // size\u2028d_model:\u00a0", 1)
            .replace("  n_heads: ", "\u2029\v n_heads: ", 1))


def test_reads_javascript_line_ends_and_spaces(model, tmp_path):
    """Refused as unreadable, though the page reads such a file."""
    path = tmp_path / "model.js"
    text = unicode_spaced_js(model.export_to_javascript())
    assert "\u2028d_model:\u00a048" in text and "\u2029" in text
    path.write_text(text, encoding="utf-8")
    ref = _round4(model.export_to_javascript())
    for k, v in validate_params(ref).items():
        np.testing.assert_array_equal(validate_params(read_params(path))[k], v, err_msg=k)


def test_reads_a_strict_single_quoted_model_js(model, tmp_path):
    """JavaScript the page runs is read: "use strict", single-quoted keys and strings, window['...'] ="""
    path = tmp_path / "model.js"
    text = strict_single_quoted_js(model.export_to_javascript())
    assert text.count("  'ffn_gate_weight': ") == 3 and "'note': 'it\\'s \"v2\"'," in text
    path.write_text(text)
    p = read_params(path)
    assert p["note"] == 'it\'s "v2"'
    ref = _round4(model.export_to_javascript())
    for k, v in validate_params(ref).items():
        np.testing.assert_array_equal(validate_params(p)[k], v, err_msg=k)
    # an escape that is a syntax error in JavaScript (\x without two hex digits) is named with its place
    with pytest.raises(WeightFormatError, match=r"model.js: not a readable weight file \(Invalid \\escape at line 2"):
        text_to_params("{'d_model': 48,\n 'note': '\\x4'}", "model.js")


@needs_node
@pytest.mark.parametrize("style", [deployed_style_js, strict_single_quoted_js, unicode_spaced_js])
def test_hand_written_styles_also_run_in_node(model, samples, tmp_path, style):
    """The hand-written styles are valid JavaScript for the engine, and predlab reads them to the engine's numbers."""
    path = tmp_path / "model.js"
    path.write_text(style(model.export_to_javascript()))
    got = run_node(path, samples, tmp_path)
    np.testing.assert_allclose(got, read_weights(path).predict(samples).double().numpy(), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- malformed weights
def _params(model):
    return copy.deepcopy(model.export_to_javascript())


def test_missing_layer(model):
    """Fewer layers than n_layers is refused, saying so."""
    p = _params(model)
    del p["layers"][2]
    with pytest.raises(WeightFormatError, match=r"layers has 2 entries but n_layers is 3"):
        validate_params(p)


@pytest.mark.parametrize("where", ["top", "type", "layer"])
def test_missing_key(model, where):
    """A missing key is refused with its path."""
    p = _params(model)
    if where == "top":
        del p["boid_projection"]
        name = "boid_projection"
    elif where == "type":
        del p["type_embeddings"]["predator"]
        name = "type_embeddings.predator"
    else:
        del p["layers"][1]["ffn_up_bias"]
        name = "layers[1].ffn_up_bias"
    with pytest.raises(WeightFormatError, match=r"missing key '" + name.replace("[", r"\[").replace("]", r"\]")):
        validate_params(p)


def test_browser_sizes_required(make_model):
    """With require_browser_sizes, a d_model the page does not run is refused by name; without it, accepted."""
    p = make_model(0, d_model=64, n_heads=8).export_to_javascript()
    validate_params(p)
    with pytest.raises(WeightFormatError, match=r"d_model=64 \(browser: 48\)"):
        validate_params(p, require_browser_sizes=True)


def test_wrong_matrix_shape(model):
    """A matrix of the wrong shape is refused with its key path and shapes."""
    p = _params(model)
    p["layers"][1]["qkv_weight"] = p["layers"][1]["qkv_weight"][:-1]
    with pytest.raises(WeightFormatError, match=r"layers\[1\]\.qkv_weight: expected shape \[144, 48\]"):
        validate_params(p)
    p = _params(model)
    p["layers"][0]["ffn_down_weight"][3] = p["layers"][0]["ffn_down_weight"][3][:-1]
    with pytest.raises(WeightFormatError, match=r"layers\[0\]\.ffn_down_weight"):
        validate_params(p)


def test_a_row_or_vector_too_long_is_refused_by_its_path(model):
    """One number too many (a 49th in cls_embedding, a longer row) is refused naming the key, as the
    page refuses it; it surfaced as numpy's ragged-array ValueError, naming nothing."""
    p = _params(model)
    p["cls_embedding"].append(0.0)
    with pytest.raises(WeightFormatError, match=r"cls_embedding: expected shape \[48\], dimension 0 has length 49"):
        validate_params(p)
    p = _params(model)
    p["layers"][2]["ffn_gate_weight"][7].append(0.0)
    with pytest.raises(WeightFormatError, match=r"layers\[2\]\.ffn_gate_weight: expected shape \[96, 48\], dimension 1"):
        validate_params(p)


@pytest.mark.parametrize("shape", [(1,), (47,), (48, 1)])
def test_a_numpy_array_of_another_shape_is_refused_by_its_path(model, shape):
    """A numpy array in a weight dict is checked for shape like a list: one of shape (1,) was
    broadcast to all 48 values of the embedding, and exported as if it were the model's."""
    p = _params(model)
    p["type_embeddings"]["boid"] = np.full(shape, 0.5)
    with pytest.raises(WeightFormatError, match=re.escape(f"type_embeddings.boid: expected shape [48], found {list(shape)}")):
        validate_params(p)


@pytest.mark.parametrize("key", ["n_heads", "n_layers", "ffn_hidden"])
def test_zero_sizes_are_refused(model, key):
    """The page refuses a size below 1: n_heads 0 raised ZeroDivisionError, and n_layers 0 with no
    layers read as a model without blocks."""
    p = _params(model)
    p[key] = 0
    if key == "n_layers":
        p["layers"] = []
    with pytest.raises(WeightFormatError, match=f"{key} must be a positive integer, found 0"):
        validate_params(p)


@pytest.mark.parametrize("key, value", [("n_heads", 8), ("n_layers", 2), ("ffn_hidden", 64)])
def test_browser_sizes_required_for_every_size(make_model, key, value):
    """require_browser_sizes checks all four sizes, as the page does, not d_model alone."""
    p = make_model(0, **{key: value}).export_to_javascript()
    validate_params(p)
    with pytest.raises(WeightFormatError, match=rf"{key}={value} \(browser: "):
        validate_params(p, require_browser_sizes=True)


def test_a_d_model_the_heads_do_not_divide_is_a_weight_format_error(model, tmp_path):
    """The page refuses d_model % n_heads != 0; predlab says so as a WeightFormatError naming both,
    before a model is built."""
    p = _params(model)
    p["n_heads"] = 5
    with pytest.raises(WeightFormatError, match="d_model=48 is not divisible by n_heads=5"):
        validate_params(p)
    (tmp_path / "model.json").write_text(json.dumps(p))
    with pytest.raises(WeightFormatError, match="d_model=48 is not divisible by n_heads=5"):
        read_weights(tmp_path / "model.json")


def test_more_layers_than_n_layers_is_refused(model):
    """The page refuses a file whose layers array is not n_layers long, longer too: predlab read
    the first n_layers and ran a model the file's author did not write."""
    p = _params(model)
    p["layers"].append(copy.deepcopy(p["layers"][0]))
    with pytest.raises(WeightFormatError, match=r"layers has 4 entries but n_layers is 3"):
        validate_params(p)


def test_weights_of_other_sizes_do_not_load_into_a_model(make_model, model):
    """load_from_javascript into a model of other sizes is refused by name. With 8 heads instead of
    4 every array has the same shape, so the weights went in and the model computed another function."""
    other = make_model(1, n_heads=8).export_to_javascript()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightFormatError, match="n_heads=8 in the weights but the model has n_heads=4"):
        model.load_from_javascript(other)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_non_number_weight(model):
    """A string where a number belongs is refused with its path."""
    p = _params(model)
    p["output_weight"][1][4] = "0.5"
    with pytest.raises(WeightFormatError, match=r"output_weight: expected a number, found str"):
        validate_params(p)


def test_nan_weight(model, tmp_path):
    """NaN is refused with its path, in a dict and in a file (Python's json reads NaN literals)."""
    p = _params(model)
    p["layers"][2]["ffn_gate_bias"][5] = math.nan
    with pytest.raises(WeightFormatError, match=r"layers\[2\]\.ffn_gate_bias: contains NaN"):
        validate_params(p)
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(p))
    assert "NaN" in path.read_text()
    with pytest.raises(WeightFormatError, match=r"layers\[2\]\.ffn_gate_bias"):
        read_weights(path)


@pytest.mark.parametrize("text", ["hello world", "window.TRANSFORMER_PARAMS = {d_model: 48,,,};", "", "[1, 2, 3]"])
def test_garbage_file(tmp_path, text):
    """A file that is not a weight object is refused as such, naming the file."""
    path = tmp_path / "model.js"
    path.write_text(text)
    with pytest.raises(WeightFormatError, match="model.js"):
        read_weights(path)


def test_missing_file(tmp_path):
    """A path with no file says so."""
    with pytest.raises(FileNotFoundError, match="no weight file"):
        read_weights(tmp_path / "nope.js")


def test_an_unreadable_weight_file_says_it_cannot_be_read(model, tmp_path, make_unreadable):
    path = make_unreadable(write_weights(model, tmp_path / "model.js"))
    with pytest.raises(WeightFormatError, match=re.escape(f"cannot read {path}: Permission denied")):
        read_params(path)


@pytest.mark.parametrize("name", ["model.js", "best_model.pt"])
def test_cli_names_an_unreadable_source_and_writes_nothing(model, tmp_path, make_unreadable, capsys, name):
    from predlab.export import main
    src = save_model_file(model, tmp_path / name)
    make_unreadable(src)
    with pytest.raises(SystemExit) as e:
        main([str(src), "--out", str(tmp_path / "out" / "model.js")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"cannot read {src}: Permission denied" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_bad_extension_refused(model, tmp_path):
    """write_weights will not guess a format: anything but .js / .json is refused and nothing is written."""
    with pytest.raises(WeightFormatError, match=r"unknown extension '\.txt'"):
        write_weights(model, tmp_path / "model.txt")
    assert list(tmp_path.iterdir()) == []


def test_invalid_params_leave_existing_file(model, tmp_path):
    """Writing invalid weights raises before touching the file already at that path."""
    path = write_weights(model, tmp_path / "model.js")
    before = path.read_bytes()
    p = _params(model)
    p["layers"][1]["qkv_weight"][0][0] = math.nan
    with pytest.raises(WeightFormatError, match=r"layers\[1\]\.qkv_weight"):
        write_weights(p, path)
    del p["layers"][1]
    with pytest.raises(WeightFormatError):
        write_weights(p, path)
    assert path.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model.js"]  # no temp file left behind


def test_written_files_get_the_umask_mode(model, tmp_path):
    """model.js is readable by a web server running as another user (umask 022 -> 0644), and a
    replaced file keeps its own mode."""
    old = os.umask(0o022)
    try:
        path = write_weights(model, tmp_path / "model.js")
        assert path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o640)
        write_weights(model, path)
        assert path.stat().st_mode & 0o777 == 0o640
        path.chmod(0o600)                    # what earlier versions left (mkstemp's mode): not kept
        write_weights(model, path)
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_non_default_size_warns(make_model, model, tmp_path):
    """Exporting sizes the stock page refuses warns; the browser sizes do not."""
    with pytest.warns(UserWarning, match="stock browser page"):
        write_weights(make_model(0, d_model=64, n_heads=8, n_layers=4), tmp_path / "big.js")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_weights(model, tmp_path / "model.js")


def test_a_weight_beyond_float32_is_refused_and_the_file_kept(model, tmp_path):
    """1e39 is a finite float64 but infinity in float32: written, it would be `inf`, which neither
    JavaScript nor JSON reads, and the page would fall back to random weights."""
    path = write_weights(model, tmp_path / "model.js")
    before = path.read_bytes()
    p = _params(model)
    p["cls_embedding"][0] = 1e39
    with pytest.raises(WeightFormatError, match=r"cls_embedding: 1e\+39 is beyond float32"):
        write_weights(p, path)
    assert path.read_bytes() == before
    (tmp_path / "big.json").write_text(json.dumps(p))
    with pytest.raises(WeightFormatError, match="cls_embedding"):
        read_weights(tmp_path / "big.json")


def test_float32s_largest_as_numpy_prints_it_is_read(model, tmp_path):
    """3.4028235e+38, numpy's text for float32's largest, is above it but reads as it: it was refused as
    "would become infinity". Past the rounding boundary, infinity it is."""
    p = _params(model)
    p["cls_embedding"][0] = float(str(np.finfo(np.float32).max))
    assert p["cls_embedding"][0] == 3.4028235e38 > float(np.finfo(np.float32).max)
    (tmp_path / "max.json").write_text(json.dumps(p))
    assert read_weights(tmp_path / "max.json").cls_embedding[0].item() == float(np.finfo(np.float32).max)
    p["cls_embedding"][0] = 2.0 ** 128 - 2.0 ** 103
    with np.errstate(over="ignore"):
        assert np.isinf(np.float32(p["cls_embedding"][0]))
    with pytest.raises(WeightFormatError, match="cls_embedding: 3.4e\\+38 is beyond float32's range"):
        validate_params(p)


def test_a_weight_dict_with_numpy_values_and_extra_keys_writes_what_the_browser_reads(model, tmp_path):
    p = _params(model)
    p["layers"][0]["qkv_weight"] = np.asarray(p["layers"][0]["qkv_weight"], dtype=np.float32)
    p["output_bias"] = [np.float32(x) for x in p["output_bias"]]
    p["note"] = "trained on tuesday"
    back = read_params(write_weights(p, tmp_path / "model.json"))
    assert "note" not in back
    f32 = lambda v: np.asarray(v, dtype=np.float32)   # the file holds each value as float32
    assert np.array_equal(f32(back["layers"][0]["qkv_weight"]), f32(_params(model)["layers"][0]["qkv_weight"]))
    assert np.array_equal(f32(back["output_bias"]), f32(_params(model)["output_bias"]))
    with pytest.raises(WeightFormatError, match="not NoneType"):
        write_weights(None, tmp_path / "none.js")


@pytest.mark.parametrize("size", [math.nan, math.inf])
def test_a_non_finite_size_is_named(model, size):
    p = _params(model)
    p["n_layers"] = size
    with pytest.raises(WeightFormatError, match="n_layers must be a positive integer"):
        validate_params(p)


@pytest.mark.parametrize("text, message", [
    ('{"d_model": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
    ('{"cls_embedding": [1' + "0" * 5000 + "]}", "Exceeds the limit"),
    ('{"d_model": 1' + "0" * 400 + "}", "d_model=an integer of 401 digits is beyond any weight file")])
def test_hostile_weight_text_is_named(text, message):
    with pytest.raises(WeightFormatError, match=message):
        validate_params(text_to_params(text))


def test_a_weight_of_an_integer_beyond_float32_is_named(model):
    p = _params(model)
    p["layers"][1]["ffn_up_bias"][3] = 10 ** 400
    with pytest.raises(WeightFormatError, match=r"layers\[1\]\.ffn_up_bias: an integer of 401 digits is beyond"):
        validate_params(p)
    p["layers"][1]["ffn_up_bias"][3] = 10 ** 5000    # more digits than Python writes out
    with pytest.raises(WeightFormatError, match=r"an integer of more than \d+ digits is beyond"):
        validate_params(p)
    p["layers"][1]["ffn_up_bias"][3] = 2 ** 120     # 1.3e36: in range
    validate_params(p)


def test_numpy_sizes_are_numbers_and_numpy_bools_and_complex_are_refused(model, tmp_path):
    p = _params(model)
    p.update(d_model=np.int64(48), n_heads=np.int32(4), n_layers=np.uint8(3), ffn_hidden=np.float64(96))
    assert read_params(write_weights(p, tmp_path / "model.json"))["d_model"] == 48
    for where, value, message in [("d_model", np.bool_(True), "d_model must be a positive integer, found np.True_"),
                                  ("d_model", np.complex128(48), "d_model must be a positive integer"),
                                  ("cls_embedding", np.ones(48, dtype=bool), "cls_embedding: expected numbers, "
                                                                             "found an array of bool"),
                                  ("cls_embedding", np.ones(48, dtype=complex), "found an array of complex128"),
                                  ("cls_embedding", np.full(48, "0.5"), "found an array of <U3"),
                                  ("output_bias", [np.complex64(1), 0.0], "expected a number, found complex64")]:
        q = _params(model)
        q[where] = value
        with pytest.raises(WeightFormatError, match=message):
            write_weights(q, tmp_path / "model.json")
    q = _params(model)
    q["cls_embedding"] = np.asarray(q["cls_embedding"], dtype=object)   # numbers held as objects: checked each
    validate_params(q)


def test_hand_written_files_with_a_bom_or_javascript_numbers_are_read(model, tmp_path):
    text = params_to_text(_params(model), "js")
    path = tmp_path / "model.js"
    assert '"d_model":48,' in text and "[0." in text and ",-0." in text
    path.write_text("\ufeff" + text.replace('"d_model":48,', '"d_model":48.,', 1).replace("[0.", "[.", 1)
                    .replace(",-0.", ",-.", 1), encoding="utf-8")      # -.5 is JavaScript's -0.5 too
    back = read_weights(path)
    for a, b in zip(back.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name, data", [("model.js", "// poids réglés\n".encode("latin-1")),
                                        ("best_model.pt", b"PK\x03\x04\x80\x81\xff")])
def test_a_file_that_is_not_utf8_text_is_named(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(WeightFormatError, match=f"{name}: not a UTF-8 text weight file") as e:
        read_weights(path)
    assert ("predlab.export" in str(e.value)) == name.endswith(".pt")


@pytest.mark.parametrize("keyword", ["let", "const"])
def test_a_model_js_declaring_its_weights_with_let_or_const_is_read(model, tmp_path, keyword):
    """Hand-written pages declare the weights with `let`/`const` too: the demo page cannot see them,
    but evaluate, export and --init_weights read them (they were "expected a JSON object")."""
    path = tmp_path / "model.js"
    path.write_text(params_to_text(_params(model), "js").replace("window.TRANSFORMER_PARAMS", f"{keyword} TRANSFORMER_PARAMS"))
    assert f"{keyword} TRANSFORMER_PARAMS = {{" in path.read_text()
    with pytest.warns(UserWarning, match="does not set window.TRANSFORMER_PARAMS"):   # (the next test)
        read = read_weights(path)
    for a, b in zip(read.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_model_js_of_plain_json_is_read_with_a_warning_that_the_page_would_not_run_it(model, tmp_path):
    """A model.json renamed model.js is a syntax error as the page's script (it runs the teacher):
    evaluate, export and --init_weights read it without a word. model.json itself is no script."""
    (tmp_path / "model.js").write_text(params_to_text(_params(model), "json"))
    with pytest.warns(UserWarning, match=r"model\.js is plain JSON.*the page loads model\.js as a script") as said:
        read = read_weights(tmp_path / "model.js")
    advice = str(said[0].message).split("`")[-2]        # the command offered converts that very file, in place
    path = str(tmp_path / "model.js")
    assert len(said) == 1 and shlex.split(advice) == ["python", "-m", "predlab.export", path, "--out", path]
    from predlab.export import main
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # (the conversion offered does not repeat the warning)
        assert main(shlex.split(advice)[3:]) == 0
    assert read_weights(tmp_path / "model.js") is not None and "window.TRANSFORMER_PARAMS" in (
        tmp_path / "model.js").read_text()
    for a, b in zip(read.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    (tmp_path / "model.js").rename(tmp_path / "model.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_weights(tmp_path / "model.json")


def test_read_params_refuses_what_the_page_refuses(model, tmp_path):
    """read_params validates, naming the missing key: the demo reads a model.js with it to warn
    before serving a page that would run the teacher instead."""
    p = _params(model)
    del p["layers"][2]["ffn_gate_weight"]
    path = tmp_path / "model.js"
    path.write_text(params_to_text(p, "js"))
    with pytest.raises(WeightFormatError, match=r"missing key 'layers\[2\]\.ffn_gate_weight'"):
        read_params(path)


def test_keys_the_page_does_not_read_are_named(model, tmp_path):
    """A model trained elsewhere with a final LayerNorm, or a misspelt copy of a key: the page runs the file
    without those weights, and so did predlab, silently. A note or a version number is no weight."""
    p = _params(model)
    p.update(final_ln_scale=[1.0] * 48, note="v2", version=3)
    p["type_embeddings"]["padding"] = [0.0] * 48
    p["layers"][1]["ffn_ln_scal"] = [1.0] * 48
    path = tmp_path / "model.js"
    path.write_text("window.TRANSFORMER_PARAMS = " + json.dumps(p) + ";\n")
    with pytest.warns(UserWarning, match=r"model.js: the page does not read final_ln_scale, type_embeddings.padding, "
                                         r"layers\[1\].ffn_ln_scal, so the weights there are not used") as said:
        back = read_weights(path)
    assert len(said) == 1 and "note" not in str(said[0].message) and "version" not in str(said[0].message)
    for a, b in zip(back.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_weights(write_weights(model, tmp_path / "own.js"))


@pytest.mark.parametrize("tool", ["export", "evaluate"])
def test_the_command_line_tools_print_predlabs_warnings_as_one_line(model, tmp_path, tool):
    """`python -m predlab.export` / `evaluate` on a file with weights the page does not read printed Python's
    form of the warning: the file and line of predlab's source that raised it, then that line of code."""
    p = _params(model)
    p["final_ln_scale"] = [1.0] * 48
    src = tmp_path / "theirs.js"
    src.write_text("window.TRANSFORMER_PARAMS = " + json.dumps(p) + ";\n")
    args = {"export": [str(src), "--out", str(tmp_path / "out.js")],
            "evaluate": [str(src), "--episodes", "1", "--frames", "2", "--no-progress"]}[tool]
    run = subprocess.run([sys.executable, "-m", f"predlab.{tool}", *args], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if "final_ln_scale" in ln]
    assert lines == [f"warning: {src}: the page does not read final_ln_scale, so the weights there are not used, "
                     "by the page or by predlab (a misspelt key, or a part of a model the page does not have?)"]
    assert "UserWarning" not in run.stderr and "export.py" not in run.stderr, run.stderr


def test_a_line_comment_holding_a_block_opener_is_a_line_comment(model):
    text = params_to_text(_params(model), "js")
    text = "// Layer 1 /* old\n" + text.replace("window.", "/* the page reads this */ window.", 1)
    p = text_to_params(text)
    assert p["d_model"] == 48 and "cls_embedding" in p


def html_commented_js(p: dict) -> str:
    """model.js as old pages hid scripts: a `#!` line for Node, `<!--` and `-->` lines around the object."""
    return ("#!/usr/bin/env node\n<!-- weights for the predator page\n" + params_to_text(p, "js")
            + "  --> end of the weights\n")


def test_hashbang_and_html_comment_lines_are_comments(model, tmp_path):
    """A page's script (and Node) take `#!` on the first line, `<!--`, and `-->` opening a line as line comments,
    and run such a file; predlab said "expected a JSON object", and the demo that it would refuse it. A string
    holding those marks keeps them."""
    path = tmp_path / "model.js"
    path.write_text(html_commented_js(_params(model)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no "code after the weights object" for the `-->` line
        back = read_weights(path)
    for a, b in zip(back.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert text_to_params("{a: 1, <!-- b: 2,\n s: '<!-- x -->',\n -->c: 3\n}") == {"a": 1, "s": "<!-- x -->"}
    with pytest.raises(WeightFormatError, match="expected a JSON object"):
        text_to_params(" #!/usr/bin/env node\n{}")       # `#!` only where the file starts


@needs_node
def test_hashbang_and_html_comment_lines_run_in_node_as_predlab_reads_them(model, samples, tmp_path):
    path = tmp_path / "model.js"
    path.write_text(html_commented_js(_params(model)))
    np.testing.assert_allclose(run_node(path, samples, tmp_path), read_weights(path).double().predict(samples).numpy(),
                               rtol=0, atol=1e-12)


def test_strings_holding_comment_or_javascript_marks_are_kept(model, tmp_path):
    """A string is not code: "http://x" holds no comment, and "{a: .5,}" stays as written."""
    text = params_to_text(_params(model), "js").replace(
        '"d_model":', '"note": "see http://example.com /* or */ {a: .5,}", /* a "comment" */ "a//b": 1, "d_model":', 1)
    path = tmp_path / "model.js"
    path.write_text(text)
    p = read_params(path)
    assert p["note"] == "see http://example.com /* or */ {a: .5,}" and p["a//b"] == 1 and p["d_model"] == 48


def test_a_template_literal_string_is_read_as_javascript_reads_it(model):
    """A note written as a template literal (`v2`) runs in the page; predlab refused the file as "not a readable
    weight file", or, with a quote in it, as a string "not closed on its line". Its line breaks still count."""
    text = params_to_text(_params(model), "js").replace(
        '"d_model":', "note: `it's \"v2\" // not /* a comment\r\nline 2 \\` \\${x} \\\nend`, d_model:", 1)
    p = text_to_params(text, "model.js")
    assert p["note"] == 'it\'s "v2" // not /* a comment\nline 2 ` ${x} end' and p["d_model"] == 48
    with pytest.raises(WeightFormatError, match=r"model.js: not a readable weight file \(Expecting value at line 4,"):
        text_to_params("{note: `a\nb\nc`,\n x: [1, ?]}", "model.js")
    with pytest.raises(WeightFormatError, match=r"model.js: the template literal at line 2 is never closed"):
        text_to_params("{\nnote: `a}", "model.js")


def test_a_template_literal_with_a_substitution_is_named_as_code_predlab_does_not_run(model):
    """`v${1 + 1}` is code: the page may run it, and predlab cannot tell what it makes (PageOnlyError)."""
    from predlab.export import PageOnlyError
    with pytest.raises(PageOnlyError, match=r"model.js: the template literal at line 2 holds a \$\{...\} substitution"):
        text_to_params("{d_model: 48,\n note: `v${1 + `1`}`}", "model.js")


def test_a_template_literal_as_a_key_is_named_as_the_syntax_error_the_page_meets(model):
    """{`d_model`: 48} is a syntax error in JavaScript, so the page falls back to random weights; predlab read the
    file, and the demo found nothing wrong with it. A template literal as a value is still read."""
    text = params_to_text(_params(model), "js").replace('"d_model":', "\n`d_model` :", 1)
    line = text.count("\n", 0, text.index("`d_model`")) + 1
    with pytest.raises(WeightFormatError, match=rf"model.js: the template literal at line {line} is a key, a syntax error"):
        text_to_params(text, "model.js")
    assert text_to_params("{note: `a`, d_model: 48}")["note"] == "a"


# String escapes that JSON has not or reads otherwise, with the values JavaScript gives them
JS_ESCAPES = [("'\\x41'", "A"), ("'\\v'", "\v"), ("'\\0'", "\0"), ("'\\a'", "a"), ("'\\u{1F600}'", "\U0001F600"),
              ("'a\\\nb'", "ab"), ('"a\\\r\nb"', "ab"), ("`\\x41\\0\\$`", "A\0$"), ("'\\u{41}\\\"\\/'", 'A"/')]


def test_javascript_string_escapes_are_read_as_javascript_reads_them():
    """A note such as 'v2 \\x41' runs in the page; predlab refused the file as "not a readable weight file (Invalid
    \\escape ...)", and a backslash before a line break (a line continuation) as a string "not closed on its
    line". The lines after a continuation keep their numbers."""
    for literal, value in JS_ESCAPES:
        assert text_to_params(f"{{note: {literal}, d_model: 48}}")["note"] == value, literal
    with pytest.raises(WeightFormatError, match=r"model.js: not a readable weight file \(Expecting value at line 3,"):
        text_to_params("{note: 'a\\\nb',\n x: [1, ?]}", "model.js")


@needs_node
def test_javascript_string_escapes_are_read_as_node_reads_them(tmp_path):
    """The values above are the ones the engine's JavaScript gives the same literals."""
    script = tmp_path / "escapes.js"
    script.write_text("console.log(JSON.stringify([" + ", ".join(literal for literal, _ in JS_ESCAPES) + "]));\n")
    res = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [text_to_params(f"{{note: {literal}}}")["note"] for literal, _ in JS_ESCAPES]


@pytest.mark.parametrize("escape", ["\\08", "\\101", "\\8"])
def test_legacy_octal_escapes_are_named_not_guessed(escape):
    """'\\101' is "A" to the page and '\\08' a NUL then "8", by legacy rules predlab does not follow: named as
    what predlab does not read (PageOnlyError), not as an invalid escape. Under "use strict", and in a template
    literal, it is the syntax error the page meets (WeightFormatError)."""
    from predlab.export import PageOnlyError
    shown = re.escape(escape)
    with pytest.raises(PageOnlyError, match=rf"model.js: the string at line 2 holds `{shown}`, a legacy octal escape, "
                                            "which JavaScript reads by rules of its own"):
        text_to_params(f"{{d_model: 48,\n note: 'v{escape}'}}", "model.js")
    for head, note, where in (("'use strict';\nwindow.TRANSFORMER_PARAMS = ", f"'{escape}'", "string at line 3"),
                              ("", f"`{escape}`", "template literal at line 2")):
        with pytest.raises(WeightFormatError, match=rf"model.js: the {where} holds `{shown}`, a legacy octal escape, "
                                                    "a syntax error in (JavaScript under the file's \"use strict\"|a "
                                                    "template literal): the page would not run the file") as e:
            text_to_params(f"{head}{{d_model: 48,\n note: {note}}}", "model.js")
        assert not isinstance(e.value, PageOnlyError)


def test_raw_control_characters_in_strings_are_read_as_javascript_reads_them():
    """A tab typed into a note (or a pasted control character) runs in the page; predlab refused the file as "not
    a readable weight file (Invalid control character ...)", JSON's rule, not JavaScript's. A line break still
    ends a string that is not a template literal."""
    assert text_to_params("{note: 'v2\t(2024)\x01', \"n\t\": `\t`, d_model: 48}") == \
        {"note": "v2\t(2024)\x01", "n\t": "\t", "d_model": 48}
    with pytest.raises(WeightFormatError, match="model.js: the string at line 2 is not closed on its line"):
        text_to_params("{d_model: 48,\n note: 'a\tb\nc'}", "model.js")


def test_whole_number_keys_are_read_as_javascript_names_them(model):
    """`1: [1]` (say, a table of versions) runs in the page, which reads key "1"; predlab refused the file as
    "not a readable weight file (Expecting property name ...)". Numbers in arrays stay numbers."""
    text = params_to_text(_params(model), "js").replace('"d_model":', "0: 'a', 12 : [1, 2], d_model:", 1)
    p = text_to_params(text)
    assert p["0"] == "a" and p["12"] == [1, 2] and p["d_model"] == 48
    assert text_to_params("{x: [0, 12, {3: 4}]}") == {"x": [0, 12, {"3": 4}]}


def test_a_syntax_error_is_placed_where_the_file_has_it():
    """The column of a JSON error counted the text as converted: `{d_model: 48, x: [1, ?]}` said column 26 (two
    keys quoted) where the `?` stands at 22."""
    long = "{d_model: 48, x: [" + "1, " * 7000
    for text, place in [("{d_model: 48,\n n_heads: 4, x: [1, ?]}", "line 2, column 21"),
                        ('{"d_model": 48,\n "n_heads": 4, "x": [1, ?]}', "line 2, column 25"),
                        ("{d_model: 48, note: 'a\\x41' /* v2 */,\n x: [1, ?]}", "line 2, column 9"),
                        ("{d_model: 48, x: [1 ? 0x10]}", "line 1, column 21"),
                        ("{d_model: 48, x: [1, ?, 0x10]}", "line 1, column 22"),
                        ("{d_model: 48, x: [1 2]}", "line 1, column 21"),
                        (long + "?]}", f"line 1, column {len(long) + 1}"),
                        (long + "?, 0x10]}", "line 1, near `?, 16]}`")]:       # too long to align: the text there
        with pytest.raises(WeightFormatError, match=rf"model.js: not a readable weight file \(Expecting [^)]* at "
                                                    rf"{re.escape(place)}\)$"):
            text_to_params(text, "model.js")


def test_a_file_cut_short_is_named_so(model, tmp_path):
    """A model.js cut short (a copy or an upload stopped) was refused with the parser's words for the place it
    stopped: "Expecting ',' delimiter", or, in a hand-written file, "Expecting property name enclosed in double
    quotes", which points at quoting the keys; in a key, "the string at line 2 is not closed on its line". The file's
    end is named, wherever it was cut."""
    text = params_to_text(_params(model), "js")
    hand = ("window.TRANSFORMER_PARAMS = {\n  d_model: 48, n_heads: 4, // sizes\n  n_layers: 3,\n"
            "  x: [1.5, -2e-3],\n};\n")
    start = text.index("{") + 1
    for full, cuts in [(text, [start, start + 5, len(text) // 2, len(text) - 5]), (hand, range(30, len(hand) - 4))]:
        for k in cuts:
            cut = full[:k]
            lines = cut.rstrip().split("\n")
            if cut.count('"') % 2:
                with pytest.raises(WeightFormatError, match=rf"^model.js: the string at line {len(lines)} is not "
                                                            "closed: the file ends in it; is it cut short"):
                    text_to_params(cut, "model.js")
                continue
            with pytest.raises(WeightFormatError, match=rf"^model.js: the file ends at line {len(lines)} before the "
                                                        r"weights object is closed: is it cut short\?$"):
                text_to_params(cut, "model.js")
    path = tmp_path / "model.js"
    path.write_text(text[:len(text) // 3])
    with pytest.raises(WeightFormatError, match="model.js: the file ends at line .* is it cut short"):
        read_params(path)
    # cut before the object, or inside a character: a UTF-16 file (PowerShell's `>`) at an odd byte was "not a
    # UTF-16LE text weight file (truncated data)"
    with pytest.raises(WeightFormatError, match=r"^model.js: the file ends at line 2 before the weights object "
                                                r"begins: is it cut short\?$"):
        text_to_params("// weights\nwindow.TRANSFORMER_PARAMS = ", "model.js")
    data = b"\xff\xfe" + text.encode("utf-16-le")
    for cut, codec in [(data[:len(data) // 2 * 2 - 1], "UTF-16LE"), ("// é\n".encode()[:4], "UTF-8")]:
        path.write_bytes(cut)
        with pytest.raises(WeightFormatError, match=f"model.js: a {codec} text cut in the middle of a character at "
                                                    r"its end: is it cut short\?$"):
            read_params(path)


@pytest.mark.parametrize("key, what", [("1.5", "a number not written as a plain whole number"),
                                       ("0x10", "a number not written as a plain whole number"),
                                       ("1_000", "a number not written as a plain whole number"),
                                       ('["a" + 1]', r"computed \(`\[...\]:`\), code that predlab does not run")])
def test_keys_javascript_computes_are_named_as_what_predlab_does_not_read(key, what):
    """The page runs such a file (the key is one it does not read); predlab cannot tell the key's name without
    JavaScript's number formatting or code (PageOnlyError), so it names the key rather than a JSON error."""
    from predlab.export import PageOnlyError
    with pytest.raises(PageOnlyError, match=rf"model.js: the key at line 2, column 3 is {what}.*; write it as a name"):
        text_to_params(f"{{d_model: 48,\n  {key}: [1]}}", "model.js")


@pytest.mark.parametrize("member, what", [("...{}", r"an object spread \(`...`\)"), ("note() {}", "a method"),
                                          ("get note() { return 1 }", "a method"), ("*gen() {}", "a method"),
                                          ("d\\u005fmodel: 48", r"a key written with \\u escapes"),
                                          ("get [x]() {}", "a method"), ("0() {}", "a method"),
                                          ("f(a = 1, {b}, [c],) { return 1 }", "a method")])
def test_object_members_javascript_runs_are_named_as_what_predlab_does_not_read(member, what):
    """The page runs these (Node's loader gives the same actions with them); `python -m predlab.demo`
    said "the page will refuse" them, in JSON's words ("Expecting property name enclosed in double
    quotes"), where it says it cannot check a PageOnlyError."""
    from predlab.export import PageOnlyError
    with pytest.raises(PageOnlyError, match=rf"model.js: at line 2, column 3 the object holds {what}, JavaScript"):
        text_to_params(f"{{n_heads: 4,\n  {member}, d_model: 48}}", "model.js")
    with pytest.raises(PageOnlyError, match=r"model.js: at line 2, column 9 the object holds a method"):
        text_to_params('{n_heads: 4,\n  "note"() { return 1 }, d_model: 48}', "model.js")     # JSON: a key, then `(`


@pytest.mark.parametrize("text, said", [("{n: 4, ...}", "a key, a name or a string in quotes, was expected"),
                                        ("{n: 4, async\n f() {}}", "a `:` is missing after the key `async`"),
                                        ("{n: 4, d\\u005gmodel: 4}", "a key, a name or a string in quotes, was"),
                                        ("{n: 4, ...", "the file ends at line 1 before the weights object is closed"),
                                        ("{d_model 48}", "a `:` is missing after the key `d_model` at line 1, column"),
                                        ("{a: , b: 1}", r"Expecting value at line 1, column 5\)")])
def test_javascript_syntax_errors_near_those_members_are_what_the_page_refuses(text, said):
    """A `...` placeholder, a call, a bad escape: syntax errors, which the page refuses, were taken for code it
    runs ("cannot check"); a file cut short after `...` was "an object spread"; a missing colon was "a key was
    expected, not `d_model`", a key with no value "a hole in the array"."""
    from predlab.export import PageOnlyError
    with pytest.raises(WeightFormatError, match=said) as e:
        text_to_params(text, "model.js")
    assert not isinstance(e.value, PageOnlyError) and "hole" not in str(e.value)


@pytest.mark.skipif(not hasattr(signal, "alarm"), reason="the guard below needs SIGALRM")
def test_a_long_run_of_escapes_where_a_key_goes_is_refused_at_once():
    """The escaped-key pattern took quadratic time: a 1 MB line of \u0041 (a corrupt file) held the reader about
    20 minutes. (The alarm only guards against that hang; the read takes a fraction of a second.)"""
    def hung(*_):
        raise TimeoutError("the reader took more than 60 s")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        with pytest.raises(WeightFormatError):
            text_to_params("window.TRANSFORMER_PARAMS = {" + "\\u0041" * 170_000, "model.js")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("text, said", [("{d_model: 48, , n_heads: 4}", r"a key, a name or a string in quotes, was "
                                         r"expected at line 1, column 15, not `,`\)"),
                                        ("{d_model, n_heads: 4}",
                                         r"the key `d_model` at line 1, column 2 has no value"),
                                        ("{a: [1, , 2]}", r"a number is missing at line 1, column 9: two commas"),
                                        ("{a: [ , 2]}", r"a number is missing at line 1, column 7")])
def test_what_json_words_as_expecting_a_property_or_a_value_is_said_in_a_weight_files_words(text, said):
    """The page refuses these (a syntax error, a name with no value defined, a hole where a number
    goes): predlab said so in JSON's words, "Expecting property name enclosed in double quotes"."""
    from predlab.export import PageOnlyError
    with pytest.raises(WeightFormatError, match=f"model.js: not a readable weight file \\({said}") as e:
        text_to_params(text, "model.js")
    assert not isinstance(e.value, PageOnlyError)


def test_long_strings_in_a_model_js_are_read_in_memory_of_their_size(model):
    """An extra key holding 4 MB (a data URL, say) with escapes in it. The reader keeps no state a
    character: a backtracking string pattern held ~150 bytes a character, 1.5 GB for 10 MB."""
    import tracemalloc
    body = "A" * 4_000_000
    text = params_to_text(_params(model), "js").replace(
        '"d_model":', f"""blob: 'it\\'s "{body}" \\\\ \\n', "b": "a\\"b\\'c", "d_model":""", 1)
    tracemalloc.start()
    try:
        p = text_to_params(text, "model.js")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert p["blob"] == f'it\'s "{body}" \\ \n' and p["b"] == "a\"b'c" and p["d_model"] == 48
    assert peak < 20 * len(text), f"{peak / 1e6:.0f} MB to read {len(text) / 1e6:.0f} MB"


NODE_TRAILER = 'if (typeof module !== "undefined") module.exports = window.TRANSFORMER_PARAMS;\n'


@needs_node
def test_code_after_the_weights_object_is_named_and_the_same_weights_are_read(model, samples, tmp_path):
    """A model.js made for Node too (the object, then `module.exports = ...`) runs in the page and
    under Node: predlab reads the same weights and says which code it did not run."""
    path = write_weights(model, tmp_path / "model.js")
    path.write_text(path.read_text() + NODE_TRAILER)
    lines = path.read_text().count("\n")
    with pytest.warns(UserWarning, match=rf"model.js: the code after the weights object \(line {lines}: "
                                         r"`if \(typeof module"):
        loaded = read_weights(path)
    np.testing.assert_allclose(run_node(path, samples, tmp_path), loaded.double().predict(samples).numpy(),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("trailer", ["window.TRANSFORMER_PARAMS.d_model = 64;",
                                     "TRANSFORMER_PARAMS['layers'][0].ln_scale[0] += 1",
                                     "window.TRANSFORMER_PARAMS = {d_model: 48};",
                                     # once only warned of: the page runs other weights, or none
                                     "Object.assign(TRANSFORMER_PARAMS, {n_layers: 1});",
                                     "Object.defineProperty(window.TRANSFORMER_PARAMS, 'd_model', {value: 64})",
                                     "delete window.TRANSFORMER_PARAMS;",
                                     "delete TRANSFORMER_PARAMS.layers[2]"])
def test_code_after_the_weights_object_that_changes_them_is_refused(model, tmp_path, trailer):
    """The page would run weights other than the object's: refused, naming the line, rather than read wrong."""
    path = write_weights(model, tmp_path / "model.js")
    path.write_text(path.read_text() + "// edited\n" + trailer)
    lines = path.read_text().count("\n") + 1
    with pytest.raises(WeightFormatError, match=rf"model.js: the code after the weights object \(line {lines}: "
                                                r".*\) changes TRANSFORMER_PARAMS"):
        read_params(path)


@pytest.mark.parametrize("trailer", ["Object.freeze(window.TRANSFORMER_PARAMS);",
                                     "console.log(Object.keys(TRANSFORMER_PARAMS).length, 'delete me');",
                                     "}}}} syntax error here ((("])
def test_code_after_the_weights_object_that_only_reads_them_is_warned_of(model, tmp_path, trailer):
    path = write_weights(model, tmp_path / "model.js")
    path.write_text(path.read_text() + trailer)
    with pytest.warns(UserWarning, match=r"is not run by predlab: the weights read are the object's as written \(if "
                                         r"that code changes them, the page runs others; if it is not valid "
                                         r"JavaScript, the page runs none of the file\)"):
        read_params(path)


def test_a_syntax_error_is_named_at_its_line_in_the_file(model, tmp_path):
    """Lines count from the top of the file, comment lines before the assignment included."""
    path = write_weights(model, tmp_path / "model.js")
    lines = path.read_text().split("\n")
    assert lines[0].startswith("//") and len(lines) > 6
    lines[5] += " #"     # (" x" is no syntax error: with the next line's array it reads x[c, d])
    path.write_text("\n".join(lines))
    with pytest.raises(WeightFormatError, match=r"model.js: not a readable weight file \(Expecting value at line 6,"):
        read_params(path)


@pytest.mark.parametrize("text, message", [("{\n" + "/* a " * 10000, "the /\\* comment at line 2 is never closed"),
                                           ('{"a": "x\n"}', "the string at line 1 is not closed on its line")])
def test_unclosed_comments_and_strings_are_named_fast(text, message):
    """Scanning is linear: many `/*` without their `*/` took seconds (a lazy regex retried each one)."""
    import time
    t0 = time.perf_counter()
    with pytest.raises(WeightFormatError, match=f"model.js: {message}"):
        text_to_params(text, "model.js")
    assert time.perf_counter() - t0 < 0.5


def test_cli_refuses_sizes_the_page_refuses_unless_asked(make_model, tmp_path):
    import subprocess
    import sys
    with pytest.warns(UserWarning, match="accepts only"):
        src = write_weights(make_model(0, d_model=32, n_heads=4), tmp_path / "small.json")
    run = lambda *a: subprocess.run([sys.executable, "-m", "predlab.export", str(src), "--out",
                                     str(tmp_path / "model.js"), *a], capture_output=True, text=True)
    r = run()
    assert r.returncode == 2 and "accepts only" in r.stderr and "--any-size" in r.stderr
    assert not (tmp_path / "model.js").exists()
    r = run("--any-size")
    assert r.returncode == 0, r.stderr
    assert "accepts only" not in r.stderr      # asked for: no warning repeating what the flag said
    assert read_params(tmp_path / "model.js")["d_model"] == 32


@pytest.mark.parametrize("late", [False, True])
def test_cli_ctrl_c_says_whether_the_file_was_written(model, tmp_path, monkeypatch, capsys, late):
    """Ctrl-C while exporting: one line saying what is on disk, exit 130, no traceback."""
    import predlab.export as export
    src = write_weights(model, tmp_path / "src.json")
    out = write_weights(model, tmp_path / "model.js")
    before = out.read_bytes()
    real = export.atomic_write_text

    def interrupted(path, text):
        if late:                     # the atomic write completes, then the deferred Ctrl-C acts
            real(path, text + "// new\n")
        raise KeyboardInterrupt
    monkeypatch.setattr(export, "atomic_write_text", interrupted)
    assert export.main([str(src), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.strip() == (f"interrupted: {out} was written" if late else f"interrupted: nothing written to {out}")
    assert out.read_bytes().endswith(b"// new\n") if late else out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.js", "src.json"]


def test_ctrl_c_during_a_write_takes_effect_once_the_file_is_whole(tmp_path, python_sigint):
    """Ctrl-C mid-save once cut torch.save in half (a RuntimeError, no export) or a TensorBoard
    flush (a hang at exit): inside atomic_write it waits for the write to finish."""
    import signal
    from predlab.export import atomic_write

    def write(f):
        f.write("first half ")
        os.kill(os.getpid(), signal.SIGINT)    # delivered here, acted on after the write
        f.write("second half")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.txt", write)
    assert (tmp_path / "x.txt").read_text() == "first half second half"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_or_a_dangling_link_is_not_called_missing(tmp_path, capsys):
    """A named pipe was reported as 'no such file', though it is there."""
    from predlab.checkpoint import load_checkpoint_dict
    from predlab.evaluate import load_policy
    from predlab.export import main
    fifo, link = tmp_path / "model.js", tmp_path / "best_model.pt"
    os.mkfifo(fifo)
    link.symlink_to(tmp_path / "gone.pt")
    with pytest.raises(SystemExit):
        main([str(fifo), "--out", str(tmp_path / "out.js")])
    assert f"{fifo} is not a regular file (a pipe" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="is not a regular file"):
        read_params(fifo)
    with pytest.raises(FileNotFoundError, match="is a link to a file that does not exist"):
        load_checkpoint_dict(link)
    with pytest.raises(FileNotFoundError, match="is a link to a file that does not exist"):
        load_policy(link)
    with pytest.raises(FileNotFoundError, match="no weight file at"):
        read_params(tmp_path / "absent.js")


def test_atomic_writes_go_through_links_and_never_replace_devices_or_pipes(tmp_path):
    """Renaming over a link replaced the link (its target kept the old text), and over /dev/null
    or a named pipe replaced the device or pipe with a plain file."""
    from predlab.export import atomic_write_text, output_problem
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_text(link, '{"a": 1}')
    assert link.is_symlink() and target.read_text() == '{"a": 1}'
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.json"
        os.mkfifo(fifo)
        with pytest.raises(FileExistsError, match="is not a regular file"):
            atomic_write_text(fifo, "{}")
        assert not fifo.is_file() and fifo.exists()
        assert "is not a regular file" in output_problem(fifo)
    app = tmp_path / "app.js"
    app.write_text("function main() { return 1; }\n")
    assert "is not a weight file" in output_problem(app, replaces="weights")
    for where in (app, tmp_path / "new.json"):       # a slip is said whether the file is there or not
        with pytest.raises(ValueError, match="replaces must be None or one of weights, evaluate, bench, not 'json'"):
            output_problem(where, replaces="json")
    target.write_text('{"catch_ratio": 1.0}')
    assert output_problem(target, replaces="evaluate") is None and output_problem(tmp_path / "new.json") is None


def test_export_cli_will_not_replace_a_file_that_is_no_weight_file(model, tmp_path, capsys):
    from predlab.export import main
    src = save_model_file(model, tmp_path / "best_model.pt")
    app = tmp_path / "app.js"
    app.write_text("function main() { return 1; }\n")
    with pytest.raises(SystemExit) as e:
        main([str(src), "--out", str(app)])
    assert e.value.code == 2 and "app.js exists and is not a weight file" in capsys.readouterr().err
    assert app.read_text() == "function main() { return 1; }\n"
    out = tmp_path / "model.js"
    assert main([str(src), "--out", str(out)]) == 0 and main([str(src), "--out", str(out)]) == 0   # its own: replaced


def test_cli_exports_a_checkpoint_whatever_its_name(model, tmp_path, capsys):
    """A checkpoint saved under a .js name is read as the checkpoint it is (it was read as text:
    "not a UTF-8 text weight file")."""
    from predlab.config import WorldConfig
    from predlab.data import generate_episodes
    from predlab.export import main
    from predlab.train import SupervisedTrainer
    data = generate_episodes(2, WorldConfig(frames=4, boids_max=6), seed=0)
    saved = SupervisedTrainer(model, data, data, batch_size=8).save_checkpoint(tmp_path / "saved.pt")
    saved.rename(tmp_path / "saved.js")
    assert main([str(tmp_path / "saved.js"), "--out", str(tmp_path / "model.js")]) == 0
    for name, w in read_weights(tmp_path / "model.js").state_dict().items():
        assert torch.equal(w, model.state_dict()[name])


@pytest.mark.parametrize("name, text", [("package.json", '{"name": "my-page", "version": "1.0.0"}\n'),
                                        ("results.json", '{"catch_ratio": 0.99, "episodes": 500}\n'),
                                        ("settings.js", "{ theme: 'dark', }\n")])
def test_export_cli_will_not_replace_a_json_object_that_holds_no_weights(model, tmp_path, capsys, name, text):
    """Any JSON object passed for a weight file: `--out package.json` (or evaluate's figures)
    was overwritten with the weights."""
    from predlab.export import main
    src = save_model_file(model, tmp_path / "best_model.pt")
    out = tmp_path / name
    out.write_text(text)
    with pytest.raises(SystemExit) as e:
        main([str(src), "--out", str(out)])
    assert e.value.code == 2 and f"{name} exists and is not a weight file" in capsys.readouterr().err
    assert out.read_text() == text
    broken = tmp_path / "model.json"       # a weight file, even one the browser would refuse, is replaced
    broken.write_text('{"d_model": 48, "cls_embedding": [NaN]}')
    assert main([str(src), "--out", str(broken)]) == 0
    assert read_params(broken)["d_model"] == 48
    placeholder = tmp_path / "model.js"    # and so is a page's empty one
    placeholder.write_text("/* to be trained */\nwindow.TRANSFORMER_PARAMS = {};\n")
    assert main([str(src), "--out", str(placeholder)]) == 0
    assert read_params(placeholder)["d_model"] == 48
    (tmp_path / "empty.json").write_text("{}\n")
    assert main([str(src), "--out", str(tmp_path / "empty.json")]) == 0


def test_write_weights_below_a_file_names_the_file_in_the_way(model, tmp_path):
    """A path below a file (a model.js where a folder was meant): mkdir's "[Errno 17] File exists:
    'rand.js'" named the file, not why it mattered. The file is left as it was."""
    (tmp_path / "rand.js").write_text("kept")
    for name in ("rand.js/model.js", "rand.js/sub/model.js"):
        with pytest.raises(NotADirectoryError, match=f"cannot write .*{name}: .*rand.js is a file, not a folder"):
            write_weights(model, tmp_path / name)
    assert (tmp_path / "rand.js").read_text() == "kept"


def test_write_weights_will_not_replace_a_file_that_is_no_weight_file(model, tmp_path):
    """Only the CLI checked: write_weights(model, "package.json") in a notebook replaced the
    package file with weights."""
    for name, text in (("package.json", '{"name": "my-page"}\n'), ("app.js", "function main() { return 1; }\n")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(FileExistsError, match=f"{name} exists and is not a weight file"):
            write_weights(model, path)
        assert path.read_text() == text
    out = tmp_path / "model.js"
    write_weights(model, out)
    write_weights(model, out)                      # a weight file, its own or another model's: replaced
    (tmp_path / "empty.js").write_text("")
    write_weights(model, tmp_path / "empty.js")    # an empty file made ready for it: replaced
    assert read_weights(tmp_path / "empty.js").config == model.config


def test_cli_names_the_source_whatever_the_error_says(model, tmp_path, capsys):
    """A weight file missing a key is refused naming that file: the checker's message names only
    the key, and the command was run with a source and an output."""
    from predlab.export import main
    p = _params(model)
    del p["output_bias"]
    src = tmp_path / "weights.json"
    src.write_text(json.dumps(p))
    with pytest.raises(SystemExit) as e:
        main([str(src), "--out", str(tmp_path / "model.js")])
    assert e.value.code == 2 and f"{src}: missing key 'output_bias'" in capsys.readouterr().err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["weights.json"]


def test_cli_takes_an_output_name_in_capitals(model, tmp_path):
    """--out MODEL.JS is a model.js (write_weights reads the extension in any case; the CLI refused it)."""
    from predlab.export import main
    src = save_model_file(model, tmp_path / "best_model.pt")
    assert main([str(src), "--out", str(tmp_path / "MODEL.JS")]) == 0
    assert (tmp_path / "MODEL.JS").read_text().startswith("// predlab export")
    assert read_weights(tmp_path / "MODEL.JS").config == model.config


def test_cli_says_when_the_disk_refuses_the_write_and_keeps_the_old_file(model, tmp_path, monkeypatch, capsys):
    """A full disk while exporting: one line naming the file and why, exit 1, the earlier model.js
    whole and no temporary file left (it was a traceback)."""
    import errno
    from predlab.export import main
    src = save_model_file(model, tmp_path / "best_model.pt")
    out = write_weights(model, tmp_path / "model.js")
    out.write_text(out.read_text() + "// the earlier export\n")
    before = out.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    assert main([str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: cannot write {out}: {os.strerror(errno.ENOSPC)}" in err and "Traceback" not in err
    assert out.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["best_model.pt", "model.js"]


def test_a_write_is_on_disk_before_it_replaces_the_file(model, tmp_path, monkeypatch):
    """atomic_write flushes the new file to disk (fsync) before renaming it over the old one:
    renamed unflushed, a power cut can leave an empty model.js or checkpoint, the old one gone."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.fstat(fd).st_ino)) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", os.stat(a).st_ino)) or real_replace(a, b))
    path = write_weights(model, tmp_path / "model.js")
    ino = path.stat().st_ino
    assert ("replace", ino) in events
    assert ("fsync", ino) in events[:events.index(("replace", ino))]


def test_earlier_files_moved_aside_in_the_same_second_each_get_a_folder(tmp_path):
    """move_to_previous names its folder after the newest file's time: files of the same second,
    moved aside three times, go to three folders (the third raised FileExistsError, and a run or
    export that moves earlier files aside stopped)."""
    from predlab.export import move_to_previous
    dests = []
    for i in range(3):
        f = tmp_path / "model.js"
        f.write_text(f"export {i}\n")
        os.utime(f, (1_700_000_000, 1_700_000_000))
        dests.append(move_to_previous([f], tmp_path))
    assert len(set(dests)) == 3 and not (tmp_path / "model.js").exists()
    assert [(d / "model.js").read_text() for d in dests] == [f"export {i}\n" for i in range(3)]


def test_exports_create_the_folders_they_need(model, tmp_path):
    """--out site/js/model.js in a fresh tree is written, folders made (the checks before the export
    accept a path whose folders are missing, so the export must make them)."""
    from predlab.export import main
    write_weights(model, tmp_path / "a" / "b" / "model.json")
    assert read_weights(tmp_path / "a" / "b" / "model.json").config == model.config
    src = save_model_file(model, tmp_path / "best_model.pt")
    assert main([str(src), "--out", str(tmp_path / "site" / "js" / "model.js")]) == 0
    assert read_weights(tmp_path / "site" / "js" / "model.js").config == model.config


def test_a_model_js_cut_short_or_mistyped_is_replaced_as_the_weight_file_it_is(model, tmp_path):
    """A page's model.js that no longer parses (a copy cut short, a slip in a hand edit) is the file to
    repair with an export: it was refused as "not a weight file", by the CLI and by write_weights."""
    from predlab.export import main
    src = save_model_file(model, tmp_path / "best_model.pt")
    for i, text in enumerate(["/* weights */\nwindow.TRANSFORMER_PARAMS = {\n  d_model: 48,\n  cls_embedding: [0.12",
                              "'use strict';\nwindow['TRANSFORMER_PARAMS'] = {d_model: 48,, n_heads: 4};\n"]):
        out = tmp_path / f"cli{i}" / "model.js"
        out.parent.mkdir()
        out.write_text(text)
        assert main([str(src), "--out", str(out)]) == 0
        assert read_weights(out).config == model.config
        (tmp_path / f"nb{i}.js").write_text(text)
        write_weights(model, tmp_path / f"nb{i}.js")
        assert read_weights(tmp_path / f"nb{i}.js").config == model.config
    # a model.json so: refused, where training replaced it (keeping it in previous/)
    written = write_weights(model, tmp_path / "whole.json").read_text()
    for i, text in enumerate([written[:5000], written.replace('"n_heads":4,', '"n_heads":4 ', 1)]):
        out = tmp_path / f"json{i}" / "model.json"
        out.parent.mkdir()
        out.write_text(text)
        assert main([str(src), "--out", str(out)]) == 0
        assert read_weights(out).config == model.config


def test_write_weights_will_not_replace_a_read_only_weight_file(model, make_model, tmp_path):
    """The export CLI refuses a model.js made read-only; write_weights in a notebook replaced it all
    the same (a rename needs no write permission on the file) and left the new file read-only."""
    path = write_weights(make_model(7), tmp_path / "model.js")
    before = path.read_text()
    path.chmod(0o444)
    try:
        with pytest.raises(PermissionError, match="model.js is read-only; predlab will not replace it"):
            write_weights(model, path)
        assert path.read_text() == before
    finally:
        path.chmod(0o644)
    write_weights(model, path)                     # writable again: replaced
    assert read_weights(path).state_dict()["output.bias"].equal(model.state_dict()["output.bias"])


def test_a_ctrl_c_while_earlier_files_move_aside_takes_effect_once_all_have_moved(tmp_path, monkeypatch):
    """A Ctrl-C between two renames left an earlier run's files split between the checkpoint folder
    and previous/: its best_model.pt moved, its model.js not, say."""
    import os
    import pathlib
    import signal
    from predlab.export import move_to_previous
    files = [tmp_path / n for n in ("best_model.pt", "model.js", "model.json")]
    for f in files:
        f.write_text(f.name)
    rename = pathlib.Path.rename

    def rename_then_ctrl_c(self, target):
        out = rename(self, target)
        if self.name == "best_model.pt":
            os.kill(os.getpid(), signal.SIGINT)      # the user's Ctrl-C, after the first rename
        return out
    monkeypatch.setattr(pathlib.Path, "rename", rename_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        move_to_previous(files, tmp_path)
    assert not any(f.exists() for f in files)
    [dest] = (tmp_path / "previous").iterdir()
    assert sorted(p.name for p in dest.iterdir()) == sorted(f.name for f in files)


def test_cli_names_an_empty_source_or_output_as_no_file_name(model, tmp_path, monkeypatch, capsys):
    """An empty argument (a script's unset variable) is Path("."): the source was called "a
    directory", to pass a file "in it", and --out "" was refused as "got .", which the user never typed."""
    from predlab.export import main
    monkeypatch.chdir(tmp_path)
    src = save_model_file(model, tmp_path / "best_model.pt")
    for argv, name in ((["", "--out", "model.js"], "the checkpoint or weight file to export"),
                       ([str(src), "--out", ""], "--out")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"error: {name}: no file name given\n" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pt"]


def test_an_output_below_a_link_to_nothing_is_refused_before_the_work(model, tmp_path, monkeypatch, capsys):
    """No folder can be made at or below a link whose folder does not exist. Such an output passed the
    checks made before the work: evaluate --json ran every episode, then failed with "File exists";
    train --log_dir trained without logs, which the README says exits with code 2 before anything."""
    from predlab import evaluate
    from predlab.export import output_problem
    from predlab.train import parse_args
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gone").symlink_to(tmp_path / "no-such-folder")
    assert output_problem("gone/sub/figures.json") == output_problem("gone", directory=True) == \
        "gone is a link to a folder that does not exist"
    monkeypatch.setattr(evaluate, "compare", lambda *a, **k: pytest.fail("evaluated before the output was checked"))
    for run, argv in ((evaluate.main, ["teacher", "--json", "gone/figures.json"]),
                      (parse_args, ["--log_dir", "gone"])):
        with pytest.raises(SystemExit) as e:
            run(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "gone is a link to a folder that does not exist" in err, err
    assert not (tmp_path / "no-such-folder").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["gone"]


def test_an_output_that_is_a_link_into_a_missing_folder_is_refused(model, tmp_path, monkeypatch, capsys):
    """export --out through such a link made the folders the link names, wherever they were, and said
    it wrote the file (a shell's redirect fails there)."""
    from predlab.export import atomic_write_text, main, output_problem
    monkeypatch.chdir(tmp_path)
    src = write_weights(model, tmp_path / "model.json")
    far = tmp_path / "nowhere" / "deeper"
    (tmp_path / "out.js").symlink_to(far / "z.js")
    message = f"out.js is a link to {far / 'z.js'}, in a folder that does not exist"
    assert output_problem("out.js") == message
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        atomic_write_text(tmp_path / "out.js", "x")
    with pytest.raises(SystemExit) as e:
        main([str(src), "--out", "out.js"])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "near.js").symlink_to(tmp_path / "made.js")       # its folder exists: written, as a redirect would
    assert main([str(src), "--out", "near.js"]) == 0 and read_weights(tmp_path / "made.js").config == model.config


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, a folder no file can be made in")
def test_an_output_below_a_folder_that_takes_no_files_names_both():
    """--checkpoint_dir /proc/x said "cannot write in /proc", not the folder asked for."""
    from predlab.export import output_problem
    assert output_problem("/proc/x", directory=True).startswith("cannot write in /proc (where /proc/x would go): ")
    assert output_problem("/proc/x/y.json").startswith("cannot write in /proc (where /proc/x/y.json would go): ")
    assert output_problem("/proc/y.json").startswith("cannot write in /proc: ")


def test_reading_weights_from_a_folder_says_it_is_a_folder(tmp_path):
    """read_weights(folder) called the folder 'not a regular file (a pipe, a device or a socket)'."""
    with pytest.raises(FileNotFoundError, match=r"is a directory, not a weight file \(say .*model\.js\)"):
        read_weights(tmp_path)


def test_a_hand_written_file_with_unary_plus_numbers_is_read(model, tmp_path):
    """JavaScript reads +0.5 as 0.5, so the page runs such a file; predlab refused it as "not a
    readable weight file (Expecting value ...)". A "+" inside a string stays as written."""
    text = params_to_text(_params(model), "js")
    assert '"d_model":48,' in text and ",0." in text
    path = tmp_path / "model.js"
    path.write_text(text.replace('"d_model":48,', '"d_model": +48,', 1).replace(",0.", ", + 0.")
                    .replace("[0.", "[+.", 1), encoding="utf-8")
    back = read_weights(path)
    for a, b in zip(back.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert text_to_params('{"note": "+4", "x": [+1e+3]}') == {"note": "+4", "x": [1000.0]}


def javascript_numbers_js(p: dict) -> str:
    """model.js with numbers as JavaScript, not JSON, writes them: a unary minus set apart (`- 0.5`, also by a
    line break or a comment), signs in a row (`+-0.5`), hex, binary and octal sizes, numeric separators."""
    text = params_to_text(p, "js")
    for key, literal in (("d_model", "0x30"), ("n_heads", "0b100"), ("n_layers", "0O3"), ("ffn_hidden", "9_6")):
        text = text.replace(f'"{key}":{p[key]},', f'"{key}": {literal},', 1)
    text = text.replace(",-0.", ", - 0.").replace("[-0.", "[+-0.", 5).replace("[-0.", "[-\n0.", 5)
    return text.replace("[-0.", "[- /* negative */ 0.", 5)


def test_a_hand_written_file_with_javascript_number_forms_is_read(model, tmp_path):
    """`- 0.5`, 0x30 and 9_6 are numbers to JavaScript, and the page runs such a file; predlab refused it
    as "not a readable weight file (Expecting value ...)"."""
    text = javascript_numbers_js(_params(model))
    assert all(s in text for s in ("d_model\": 0x30,", "9_6", ", - 0.", "[+-0.", "[-\n0.", "[- /* negative */ 0."))
    path = tmp_path / "model.js"
    path.write_text(text)
    back = read_weights(path)
    for a, b in zip(back.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert text_to_params("{x: [1_000.5e1_0, .5E-1, 5., 0xFF, -0b1_0, - - 2], note: '- 0x10'}") == \
        {"x": [1000.5e10, 0.05, 5, 255, -2, 2], "note": "- 0x10"}


@needs_node
def test_javascript_number_forms_run_in_node_as_predlab_reads_them(model, samples, tmp_path):
    path = tmp_path / "model.js"
    path.write_text(javascript_numbers_js(_params(model)))
    got = run_node(path, samples, tmp_path)
    np.testing.assert_allclose(got, read_weights(path).double().predict(samples).numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("number, message", [
    ("--0.5", r"`--0.5` at line 3 is a syntax error in JavaScript"),
    ("5n", r"`5n` at line 3 is a BigInt, not a number: the page refuses it; write 5"),
    ("010", r"`010` at line 3 has a leading zero, which makes JavaScript read it as an octal number"),
    ("- 08.5", r"`- 08.5` at line 3 has a leading zero")])
def test_numbers_javascript_refuses_or_reads_otherwise_are_named(number, message):
    """Refused with the number and its line, not "Expecting ',' delimiter": the page would not run -- or 5n
    (a syntax error; a BigInt, "not a finite number"), and it reads 010 as 8."""
    with pytest.raises(WeightFormatError, match=message):
        text_to_params(f"{{\n  d_model: 48,\n  x: [0.5, {number}],\n}}", "model.js")


@pytest.mark.parametrize("number", ["010", "08.5"])
def test_a_leading_zero_in_a_use_strict_file_is_the_syntax_error_the_page_meets(number):
    """Under the file's "use strict" the page refuses 010 and 08.5 (a syntax error); predlab said it could not
    tell what the page reads (PageOnlyError), so the demo said "cannot check" for a file the page never runs.
    Without the directive, or with "use strict" only as a value, it stays PageOnlyError."""
    from predlab.export import PageOnlyError
    for head in ('"use strict";\n', "/* v2 */ 'use strict'\n"):
        with pytest.raises(WeightFormatError, match=rf"model.js: `{number}` at line 3 has a leading zero, a syntax "
                                                    r"error in JavaScript under the file's \"use strict\"") as e:
            text_to_params(head + f"window.TRANSFORMER_PARAMS = {{d_model: 48,\n x: [{number}]}};", "model.js")
        assert not isinstance(e.value, PageOnlyError)
    for head in ("", "var a = 'use strict';\n", "{note: 'use strict',\n"):
        with pytest.raises(PageOnlyError, match=f"`{number}` at line"):
            text_to_params(head + f"{{d_model: 48,\n x: [{number}]}}", "model.js")


@pytest.mark.parametrize("head", ['"a";\n"use strict";\n', "'v2' /* by hand */\n'use strict'\n"])
def test_a_directive_prologue_holding_use_strict_makes_the_file_strict(head):
    """Strings that open a file as statements of their own (`"a"; "use strict";`) are its directive prologue, and
    "use strict" anywhere in it makes the file strict in JavaScript: 010 is a syntax error, which the page meets.
    predlab saw only a first "use strict", and did not read such a file at all ("expected a JSON object ...").
    A string that is no statement of its own, or an empty statement, ends the prologue."""
    from predlab.export import PageOnlyError
    with pytest.raises(WeightFormatError, match=r"model.js: `010` at line 4 has a leading zero, a syntax error in "
                                                r"JavaScript under the file's \"use strict\"") as e:
        text_to_params(head + "window.TRANSFORMER_PARAMS = {d_model: 48,\n x: [010]};", "model.js")
    assert not isinstance(e.value, PageOnlyError)
    assert text_to_params(head + "window.TRANSFORMER_PARAMS = {d_model: 48};") == {"d_model": 48}
    for head in ('"a" + "b";\n"use strict";\n', '"a";;\n"use strict";\n', "`a`;\n'use strict';\n"):
        with pytest.raises(PageOnlyError, match="`010` at line 4 has a leading zero, which makes JavaScript read it"):
            text_to_params(head + "window.TRANSFORMER_PARAMS = {d_model: 48,\n x: [010]};", "model.js")


# heads of a model.js: whether JavaScript parses them (a string of the prologue ends at a `;` or a line break)
PROLOGUES = [('"use strict"; ', True), ('"use strict"\n', True), ("'use strict' // by hand\n", True),
             ('"a"\n"use strict"\n', True), ("'use strict' /* v2\n */ ", True), ('"a";; "use strict";', True),
             ('"use strict" ', False), ('"a" "use strict";\n', False), ("'use strict' /* v2 */ ", False),
             ('"a";\n"b" "use strict";\n', False)]


@pytest.mark.parametrize("head, parses", PROLOGUES)
def test_a_prologue_string_with_code_after_it_on_its_line_is_the_syntax_error_the_page_meets(head, parses):
    """`"use strict" window.TRANSFORMER_PARAMS = {...}` on one line does not parse in JavaScript: the page runs no
    weights. predlab read it as a good file (and named nothing)."""
    text = head + "window.TRANSFORMER_PARAMS = {d_model: 48};\n"
    if parses:
        assert text_to_params(text, "model.js") == {"d_model": 48}
    else:
        with pytest.raises(WeightFormatError, match=r"model.js: the string \"(a|b|use strict)\" at line \d has code "
                                                    r"after it on its line with no `;` between, a syntax error"):
            text_to_params(text, "model.js")


@needs_node
def test_the_prologues_parse_in_node_as_predlab_says(tmp_path):
    for k, (head, parses) in enumerate(PROLOGUES):
        script = tmp_path / f"p{k}.js"
        script.write_text(head + "var TRANSFORMER_PARAMS = {d_model: 48};\n")
        res = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True, timeout=60)
        assert (res.returncode == 0) == parses, (head, res.stderr)


def test_infinity_with_a_sign_set_apart_is_refused_as_infinity(model, tmp_path):
    """`- Infinity` is JavaScript's -Infinity, which the page refuses as it refuses `-Infinity`: predlab named it
    a JSON syntax error ("Expecting value") instead of the infinity in output_bias."""
    p = _params(model)
    path = tmp_path / "model.js"
    path.write_text(params_to_text(p, "js").replace('"output_bias":[', '"output_bias":[- Infinity, ', 1)
                    .replace(f"{p['output_bias'][0]!r},", "", 1))
    with pytest.raises(WeightFormatError, match=r"^output_bias: contains NaN or infinity$"):
        read_params(path)
    assert repr(text_to_params("{x: [- Infinity, + Infinity, - -Infinity, -NaN, + NaN], Infinity: 1}")) == \
        "{'x': [-inf, inf, inf, nan, nan], 'Infinity': 1}"


def test_a_model_js_whose_comment_is_latin1_is_read_as_the_browser_reads_it(model, tmp_path):
    """A hand-written model.js saved by a Windows editor holds "Modèle" as Latin-1. A browser reads
    the stray byte as U+FFFD inside the comment and runs the file; predlab refused it as not UTF-8."""
    path = tmp_path / "model.js"
    write_weights(model, path)
    path.write_bytes("/* Modèle du prédateur, réglé à la main */\n".encode("latin-1") + path.read_bytes())
    for a, b in zip(read_weights(path).state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert b'"d_model":48,' in path.read_bytes()
    path.write_bytes(path.read_bytes().replace(b'"d_model":48,', b'"d_model":48\xb7,', 1))
    with pytest.raises(WeightFormatError, match="not a UTF-8 text weight file"):    # outside a comment: refused
        read_weights(path)


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_a_model_js_saved_as_utf16_is_read_as_the_browser_reads_it(model, tmp_path, codec):
    """Windows PowerShell's `>` (and Notepad's "Unicode") save a model.js as UTF-16 with a byte order
    mark, which a browser follows whatever charset the server names: the page runs it. predlab refused
    it ("not a UTF-8 text weight file"), and would not write an export over it ("not a weight file")."""
    path = tmp_path / "model.js"
    text = "// réglé à la main\n" + params_to_text(model_to_params(model))
    path.write_bytes(("\ufeff" + text).encode(codec))       # the byte order mark first
    for a, b in zip(read_weights(path).state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    write_weights(model, path)                                 # replaced, as predlab's own UTF-8
    assert path.read_text(encoding="utf-8") == params_to_text(model_to_params(model))
    path.write_bytes(("\ufeff" + text.replace("48", "4\ud800", 1)).encode(codec, "surrogatepass"))
    with pytest.raises(WeightFormatError, match="not a UTF-16(LE|BE) text weight file"):    # a broken character
        read_weights(path)


def test_export_replaces_a_model_js_whose_comment_is_latin1(model, tmp_path):
    """The page's own hand-written model.js, with a Latin-1 comment, is a weight file: export's --out
    replaces it (it was refused as "exists and is not a weight file")."""
    from predlab.export import main
    src = tmp_path / "best.json"
    write_weights(model, src)
    out = tmp_path / "model.js"
    out.write_bytes("/* réglé à la main */\n".encode("latin-1") + b"window.TRANSFORMER_PARAMS = {d_model: 48};\n")
    assert main([str(src), "--out", str(out)]) == 0
    for a, b in zip(read_weights(out).state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_sigterm_in_a_command_line_tool_waits_for_the_write_under_way(tmp_path, python_sigint):
    """A SIGTERM (a scheduler's end of time, `timeout`, `kill`) killed a tool at once: one in the middle
    of an atomic write left the .tmp file beside the old one. Under a tool's handler it takes effect once
    the file is whole, as a Ctrl-C does, and after a Ctrl-C as well; the handling is put back after."""
    import signal
    from predlab.export import Terminated, atomic_write, command_line

    def write(f, *signals):
        f.write("first half ")
        for s in signals:
            os.kill(os.getpid(), s)      # delivered here, acted on after the write
        f.write("second half")

    for signals in [(signal.SIGTERM,), (signal.SIGINT, signal.SIGTERM)]:
        with command_line():
            with pytest.raises(Terminated):
                atomic_write(tmp_path / "x.txt", lambda f: write(f, *signals))
        assert (tmp_path / "x.txt").read_text() == "first half second half"
        assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_only_a_command_line_tool_takes_sigterm_over(tmp_path):
    """The library (a notebook's training) leaves SIGTERM to Python, so that a kernel shut down still
    dies of it; a tool's main() takes it over only from Python's default handling, in the main thread."""
    import signal
    import threading
    from predlab.export import atomic_write, command_line

    seen = []
    atomic_write(tmp_path / "x.txt", lambda f: seen.append(signal.getsignal(signal.SIGTERM)))
    with command_line(sigterm=False):
        seen.append(signal.getsignal(signal.SIGTERM))
    thread = threading.Thread(target=lambda: command_line().__enter__() and None)
    thread.start()
    thread.join()
    assert seen == [signal.SIG_DFL, signal.SIG_DFL] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def theirs(signum, frame):
        pass
    signal.signal(signal.SIGTERM, theirs)
    try:
        with command_line():
            assert signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_cli_sigterm_says_so_and_exits_143_with_the_file_written(model, tmp_path, monkeypatch, capsys):
    import signal
    import predlab.export as export
    src = write_weights(model, tmp_path / "src.json")
    out = tmp_path / "model.js"
    real = export._atomic_write

    def terminated(*args):
        os.kill(os.getpid(), signal.SIGTERM)         # inside the write: acted on once it is done
        return real(*args)
    monkeypatch.setattr(export, "_atomic_write", terminated)
    assert export.main([str(src), "--out", str(out)]) == 143
    assert capsys.readouterr().err.strip() == f"terminated (SIGTERM): {out} was written"
    assert read_params(out) == read_params(src)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_cli_with_its_stdout_closed_exits_141_without_a_traceback(model, tmp_path, monkeypatch, capsys):
    """`python -m predlab.export ... | head -0`: the "wrote" line met a pipe whose reader had gone,
    a BrokenPipeError traceback (or, from Python's flush at exit, "Exception ignored ..."). The file
    is written, the exit code is 141 as for any Unix tool, and stdout takes later lines silently."""
    import io
    import predlab.export as export
    src = write_weights(model, tmp_path / "src.json")
    out = tmp_path / "model.js"
    read, write = os.pipe()
    os.close(read)                                   # the reader has gone
    stdout = io.TextIOWrapper(io.FileIO(write, "w"))
    monkeypatch.setattr("sys.stdout", stdout)
    try:
        with pytest.raises(SystemExit) as e:
            export.main([str(src), "--out", str(out)])
        assert e.value.code == 141
        assert capsys.readouterr().err == ""
        print("a later line", flush=True)            # to os.devnull now
    finally:
        stdout.close()
    assert read_params(out) == read_params(src)


@pytest.mark.parametrize("out", [".js", "sub/.json"])
def test_cli_names_an_output_that_is_all_extension(model, tmp_path, monkeypatch, capsys, out):
    """--out .js (a script's `$NAME.js` with NAME unset) was refused as "must end in .js or .json, got .js":
    it does end so, but Path reads ".js" as a name without an extension."""
    from predlab.export import main
    monkeypatch.chdir(tmp_path)
    src = save_model_file(model, tmp_path / "best_model.pt")
    with pytest.raises(SystemExit) as e:
        main([str(src), "--out", out])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"error: --out: {out} has an extension but no name before it" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pt"]


@pytest.mark.parametrize("name", ["model.js", "model.json", "best.pt"])
def test_a_checkpoint_under_any_name_is_named_as_one_when_read_as_weights(model, tmp_path, name):
    """A checkpoint saved or copied as model.js (save_checkpoint("model.js") once wrote one) was refused as
    "not a UTF-8 text weight file" with no hint; the hint came only for a .pt name. It now follows
    the file's bytes: torch.save's zip."""
    save_model_file(model, tmp_path / "ck.pt")
    shutil.copy(tmp_path / "ck.pt", tmp_path / name)
    with pytest.raises(WeightFormatError, match=r"not a UTF-8 text weight file .*\(a checkpoint\? `python -m "
                                                r"predlab.export` turns one into model.js\)"):
        read_weights(tmp_path / name)


def test_a_missing_weight_file_named_by_a_relative_path_says_which_folder_it_was_looked_for_in(tmp_path, monkeypatch):
    """Notebook 02's INIT_WEIGHTS = "checkpoints/model.js", as the README names files from the repository's
    root, was looked for in notebooks/ (the kernel's folder): "no such file: checkpoints/model.js" did not
    say so."""
    from predlab.export import load_model_file
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    with pytest.raises(FileNotFoundError, match=re.escape(f"no such file: {Path('checkpoints/model.js')} "
                                                          f"(looked for in {tmp_path / 'notebooks'})")):
        load_model_file("checkpoints/model.js")
    with pytest.raises(FileNotFoundError) as e:
        load_model_file(tmp_path / "none.js")
    assert str(e.value) == f"no such file: {tmp_path / 'none.js'}"


@pytest.mark.parametrize("keyword", ["const", "let"])
def test_a_weight_file_the_page_would_not_see_is_read_with_a_warning(model, tmp_path, keyword):
    """`const TRANSFORMER_PARAMS = {...}` was read without a word, though the page (and predlab's demo and
    Node parity check) finds no window.TRANSFORMER_PARAMS in it and runs the teacher."""
    js = write_weights(model, tmp_path / "model.js")
    other = tmp_path / f"{keyword}.js"
    other.write_text(js.read_text().replace("window.TRANSFORMER_PARAMS", f"{keyword} TRANSFORMER_PARAMS"))
    with pytest.warns(UserWarning, match=rf"{keyword}.js: `{keyword} TRANSFORMER_PARAMS` does not set "
                                         r"window.TRANSFORMER_PARAMS, which the page reads"):
        assert read_weights(other).config == model.config
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_weights(js)
        for form in ("var TRANSFORMER_PARAMS", "globalThis.TRANSFORMER_PARAMS"):     # these set it
            other.write_text(js.read_text().replace("window.TRANSFORMER_PARAMS", form))
            read_weights(other)


def test_export_cli_keeps_the_file_it_replaces_in_previous(model, make_model, tmp_path, monkeypatch, capsys):
    """`python -m predlab.export best_model.pt --out model.js` replaced a hand-edited model.js (or one of
    other weights) without a copy or a word; training and notebook 04 keep what they replace."""
    import errno
    from predlab import export
    monkeypatch.chdir(tmp_path)
    src = save_model_file(model, tmp_path / "best_model.pt")
    edited = "// hand-tuned, deployed\n" + write_weights(make_model(1), tmp_path / "model.js").read_text()
    (tmp_path / "model.js").write_text(edited)
    assert export.main([str(src), "--out", "model.js"]) == 0
    kept = list((tmp_path / "previous").glob("*/model.js"))
    assert [p.read_text() for p in kept] == [edited]
    assert f"the model.js it replaces, of other weights or text, is in {Path('previous') / kept[0].parent.name}" in \
        capsys.readouterr().out
    assert read_weights("model.js").config == model.config and "hand-tuned" not in (tmp_path / "model.js").read_text()
    assert export.main([str(src), "--out", "model.js"]) == 0          # the same bytes again: nothing to keep
    assert "replaces" not in capsys.readouterr().out and len(list((tmp_path / "previous").iterdir())) == 1
    (tmp_path / "ready.js").write_text("")                             # made ready for it ($(mktemp)): nothing
    assert export.main([str(src), "--out", "ready.js"]) == 0
    assert "replaces" not in capsys.readouterr().out and len(list((tmp_path / "previous").iterdir())) == 1

    site = tmp_path / "site"                                         # a link into the page's folder: written
    site.mkdir()                                                     # through, and the old text kept
    (site / "model.js").write_text(edited)
    (tmp_path / "deploy.js").symlink_to(Path("site") / "model.js")
    assert export.main([str(src), "--out", "deploy.js"]) == 0
    assert (tmp_path / "deploy.js").is_symlink() and "hand-tuned" not in (site / "model.js").read_text()
    assert [p.read_text() for p in (tmp_path / "previous").glob("*/deploy.js")] == [edited]

    (site / "model.js").write_text(edited)               # stdout closed after the write: written, the copy kept

    def closed(*a, **k):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr("builtins.print", closed)
    try:
        assert export.main([str(src), "--out", "deploy.js"]) == 141
    except SystemExit as e:
        assert e.code == 141
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert sorted(p.read_text() for p in (tmp_path / "previous").glob("*/deploy.js")) == [edited, edited]
    assert "hand-tuned" not in (site / "model.js").read_text()

    (tmp_path / "model.js").write_text(edited)                       # a full disk: the file stays where it was
    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(export, "atomic_write_text", full)
    before = sorted(str(p) for p in (tmp_path / "previous").rglob("*"))
    assert export.main([str(src), "--out", "model.js"]) == 1
    assert (tmp_path / "model.js").read_text() == edited
    assert sorted(str(p) for p in (tmp_path / "previous").rglob("*")) == before


def test_a_link_moved_to_previous_is_kept_as_what_it_points_to(tmp_path):
    """Training moved a relative link (checkpoints/model.js -> ../site/model.js) into previous/, where it
    pointed at nothing: the copy kept there was no copy."""
    from predlab.export import move_to_previous
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "model.js").write_text("the page's weights")
    (tmp_path / "checkpoints").mkdir()
    link = tmp_path / "checkpoints" / "model.js"
    link.symlink_to(Path("..") / "site" / "model.js")
    (tmp_path / "checkpoints" / "best_model.pt").write_text("an earlier run's")
    files = [tmp_path / "checkpoints" / "best_model.pt", link]
    real_copy = shutil.copy2

    def full(src, dst, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
    shutil.copy2 = full
    try:        # the copy fails on a full disk: nothing moved (best_model.pt was, and said it was not)
        with pytest.raises(OSError):
            move_to_previous(files, tmp_path / "checkpoints")
    finally:
        shutil.copy2 = real_copy
    assert files[0].read_text() == "an earlier run's" and link.is_symlink()
    assert not (tmp_path / "checkpoints" / "previous").exists()
    dest = move_to_previous(files, tmp_path / "checkpoints")
    assert not (dest / "model.js").is_symlink() and (dest / "model.js").read_text() == "the page's weights"
    assert not link.exists() and not link.is_symlink()
    assert (tmp_path / "site" / "model.js").read_text() == "the page's weights"


@pytest.mark.parametrize("after", [
    "function publish() { window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS; }",          # never called
    "if (false) { window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS; }",
    'console.log("window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS");',                 # a string
    "window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS_OLD;",                            # another binding
    "window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS.backup;",
])
def test_declared_weights_not_surely_handed_to_the_page_are_not_read_as_its_weights(model, tmp_path, after):
    """Only `window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS;` as the file's last top-level statement hands the
    declared object to the page; these were read as the page's weights."""
    from predlab.export import PageOnlyError
    js = write_weights(model, tmp_path / "model.js").read_text()
    path = tmp_path / "declared.js"
    path.write_text(js.replace("window.TRANSFORMER_PARAMS", "const TRANSFORMER_PARAMS", 1) + after + "\n")
    with pytest.raises(PageOnlyError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_params(path)


@pytest.mark.parametrize("between", ["console.log(1)\n", "Object.freeze(TRANSFORMER_PARAMS)\n", "\n", "loaded++\n",
                                     'if (typeof console !== "undefined") console.log("weights loaded")\n',
                                     "if (!window.TRANSFORMER_PARAMS)\n"])
def test_declared_weights_handed_over_in_a_file_without_semicolons_are_read(model, tmp_path, between):
    """The page runs a model.js written without semicolons whose hand-over follows other code on its own line;
    predlab named the harmless line as code that changes the weights. Code there is warned of as not run by
    predlab (an `if` on the line above may keep the page from running the hand-over)."""
    js = write_weights(model, tmp_path / "model.js").read_text().rstrip().rstrip(";")
    path = tmp_path / "declared.js"
    path.write_text(js.replace("window.TRANSFORMER_PARAMS", "const TRANSFORMER_PARAMS", 1) + "\n" + between
                    + "window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_params(path)["d_model"] == model.config.d_model
    assert not [w for w in caught if "does not set window.TRANSFORMER_PARAMS" in str(w.message)]
    assert any("is not run by predlab" in str(w.message) for w in caught) == (between != "\n")


def test_declared_weights_handed_over_right_after_the_object_are_read_before_other_code(model, tmp_path):
    """`const TRANSFORMER_PARAMS = {...}; window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS; console.log(...)` was
    refused as code that changes TRANSFORMER_PARAMS, though the page gets the object. The code after the
    hand-over is warned of, as code after the object is."""
    js = write_weights(model, tmp_path / "model.js").read_text()
    path = tmp_path / "declared.js"
    for handed in ("window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS;\n",
                   "window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS\n"):
        path.write_text(js.replace("window.TRANSFORMER_PARAMS", "const TRANSFORMER_PARAMS", 1) + handed
                        + 'console.log("weights loaded")\n')
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert read_params(path)["d_model"] == model.config.d_model
        said = [str(w.message) for w in caught]
        assert len(said) == 1 and '`console.log("weights loaded")`) is not run by predlab' in said[0], said


@pytest.mark.parametrize("after", [
    "window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS\n.backup\n",       # no semicolon: the page gets .backup
    "window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS\n[0]\n",
    "window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS\n(function () {})()\n",
    "console.log(1);\nwindow.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS;\nconsole.log(2);\n",
])
def test_declared_weights_handed_over_among_other_code_are_refused_saying_so(model, tmp_path, after):
    """A hand-over neither right after the object nor at the end of the file was refused as code that changes
    TRANSFORMER_PARAMS; the message now says what is wrong and where."""
    from predlab.export import PageOnlyError
    js = write_weights(model, tmp_path / "model.js").read_text()
    path = tmp_path / "declared.js"
    path.write_text(js.replace("window.TRANSFORMER_PARAMS", "const TRANSFORMER_PARAMS", 1) + after)
    line = js.count("\n") + 1 + after.startswith("console")
    with pytest.raises(PageOnlyError, match=f"is handed to the page at line {line}, among other code"):
        read_params(path)


def test_export_says_which_epochs_model_it_wrote(model, tmp_path, monkeypatch, capsys):
    """`python -m predlab.export checkpoints/best_model.pt --out model.js` said only "wrote model.js": not
    which epoch's model, nor its val MSE, which a page's model.js is then known by."""
    from predlab import export
    from predlab.config import WorldConfig
    from predlab.data import generate_episodes
    from predlab.train import SupervisedTrainer
    data = generate_episodes(2, WorldConfig(frames=4, boids_max=6), seed=0)
    trainer = SupervisedTrainer(model, data, data, batch_size=8)
    trainer.epoch, trainer.history = 7, [{"epoch": e, "val_loss": 0.5} for e in range(1, 7)]
    trainer.history.append({"epoch": 7, "val_loss": 0.00123456})
    src = trainer.save_checkpoint(tmp_path / "best_model.pt")
    monkeypatch.chdir(tmp_path)
    assert export.main([str(src), "--out", "model.js"]) == 0
    assert capsys.readouterr().out == f"wrote model.js: the model of epoch 7 (val MSE 0.00123) in {src}\n"
    assert export.main(["model.js", "--out", "copy.json"]) == 0
    assert capsys.readouterr().out == "wrote copy.json: the weights of model.js\n"
    assert export.checkpoint_words({"epoch": True}) == export.checkpoint_words({"history": []}) == ""
    assert export.checkpoint_words({"epoch": 3, "history": [{"val_loss": float("nan")}]}) == "the model of epoch 3"
    assert export.checkpoint_words({"epoch": 3, "history": "x"}) == "the model of epoch 3"


def test_every_command_says_where_a_missing_relative_path_was_looked_for(tmp_path, monkeypatch, capsys):
    """Run from a subfolder (notebooks/, tests/), demo's "no model at checkpoints/model.js. Train one first"
    and export's "no such file" sent a user to train again with the file one folder up."""
    from predlab import demo, export, train
    monkeypatch.chdir(tmp_path)
    where = f"(looked for in {tmp_path})"
    assert demo.main(["checkpoints/model.js", "--no-browser"]) == 2
    assert f"no model at {Path('checkpoints/model.js')} {where}. Train one first" in capsys.readouterr().err
    for main, argv, said in ((export.main, ["checkpoints/best_model.pt", "--out", "m.js"],
                              "no such file: checkpoints/best_model.pt"),
                             (train.main, ["--resume", "checkpoints/checkpoint_epoch_5.pt"],
                              "no such checkpoint file: checkpoints/checkpoint_epoch_5.pt")):
        with pytest.raises(SystemExit):
            main(argv)
        assert f"{said} {where}" in capsys.readouterr().err
    assert not (tmp_path / "m.js").exists() and not (tmp_path / "checkpoints").exists()


def test_the_copy_kept_in_previous_is_no_hard_link_of_the_file(tmp_path):
    """Kept as a hard link, the copy changed with the file when a kill came before the file was replaced and an
    editor then wrote the file in place."""
    from predlab.export import move_to_previous
    p = tmp_path / "model.js"
    p.write_text("the page's weights")
    dest = move_to_previous([p], tmp_path, copy=True)
    assert p.read_text() == "the page's weights" and os.stat(p).st_nlink == 1
    with open(p, "w") as f:                         # written in place, as some editors do
        f.write("edited")
    assert (dest / "model.js").read_text() == "the page's weights"


def test_export_cli_says_when_the_copy_in_previous_cannot_be_made(tmp_path, monkeypatch, capsys, model):
    """previous/ on a full disk: the error named --out, whose disk had room, and did not say it was untouched."""
    import shutil
    from predlab import export
    out = write_weights(model, tmp_path / "model.js")
    out.write_text(out.read_text() + "// edited\n")
    before = out.read_bytes()

    def full(src, dst, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
    monkeypatch.setattr(shutil, "copy2", full)
    src = write_weights(model, tmp_path / "other.json")
    assert export.main([str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"cannot keep a copy of {out} in {tmp_path / 'previous'}" in err and f"{out} is as it was" in err
    assert out.read_bytes() == before


def test_a_file_of_a_long_name_is_kept_in_previous(tmp_path):
    """The copy's temporary name added 14 characters: a name of 242 to 249 failed with "File name too long",
    naming the temporary."""
    from predlab.export import move_to_previous
    p = tmp_path / ("m" * 245 + ".js")
    p.write_text("kept")
    dest = move_to_previous([p], tmp_path, copy=True)
    assert (dest / p.name).read_text() == "kept" and p.read_text() == "kept"


@pytest.mark.parametrize("tool, args", [
    ("export", ["{model}", "--out", "{bad}"]),
    ("export", ["{bad}", "--out", "{tmp}/m.js"]),
    ("evaluate", ["teacher", "--episodes", "2", "--frames", "2", "--json", "{bad}"]),
    ("train", ["--resume", "{bad}"]),
    ("train", ["--epochs", "1", "--checkpoint_dir", "{bad}"]),
    ("train", ["--epochs", "1", "--log_dir", "{bad}"]),
    ("bench", ["--quick", "--json", "{bad}"]),
    ("demo", ["{bad}", "--no-browser"]),
])
def test_a_path_that_cannot_even_be_looked_at_is_named_not_a_traceback(tmp_path, monkeypatch, capsys, tool, args):
    """A name longer than the file system allows (or a folder on the way this user may not enter, which Path's
    exists and is_dir raise as they do this) stopped export, evaluate, train, bench and demo with a traceback
    from the first look at it. Each says which path, and why, and exits 2 having written nothing."""
    import importlib
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model.js"
    from predlab.model import TransformerPredator
    save_model_file(TransformerPredator(), model)
    bad = tmp_path / ("x" * 300 + ".js")         # past NAME_MAX (255) on every common file system
    argv = [a.format(model=model, bad=bad, tmp=tmp_path) for a in args]
    before = sorted(tmp_path.iterdir())
    main = importlib.import_module(f"predlab.{tool}").main
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot use {bad}: File name too long" in err and "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("value", ["1/3", "Math.PI", "(0.5)", "0.5 * 2", "-x", "Math.pow(2, -1)", "0.1 -0.2"])
def test_a_javascript_expression_as_a_weight_is_what_predlab_cannot_check_not_a_refusal(value):
    """The page evaluates model.js, so a weight written `1/3`, `Math.PI` or `(0.5)` runs there; predlab said the
    file was "not a readable weight file (Expecting ',' delimiter ...)", and the demo that the page would refuse
    it. It is named now, as code predlab does not run (PageOnlyError: the demo says it cannot check). A comma
    left out is a syntax error the page meets too, and stays a refusal."""
    from predlab.export import PageOnlyError
    with pytest.raises(PageOnlyError, match=rf"model.js: the value at line 3, column 13 is `{re.escape(value)}`, "
                                            "JavaScript that predlab does not run"):
        text_to_params(f"{{\n  d_model: 48,\n  x: [0.25, {value}, 0.5],\n}}", "model.js")
    # syntax errors, which Node refuses too, stay refusals: a comma left out, an operator with nothing after
    # it, a parenthesis not closed, two names side by side, a number running into a letter
    for broken in ("0.25 0.5", "0.25 x", "1 -", "1/", "-", "(", "(0.5", "a b", "1e", "1e-", "0x", "0x1G", "1)"):
        with pytest.raises(WeightFormatError, match="not a readable weight file") as e:
            text_to_params(f"{{\n  d_model: 48,\n  x: [0.25, {broken}],\n}}", "model.js")
        assert not isinstance(e.value, PageOnlyError), broken


@needs_node
def test_a_weight_written_as_an_expression_runs_in_node_and_the_demo_cannot_check_it(model, samples, tmp_path):
    from predlab.demo import UNCHECKED, _page_problem
    path = write_weights(model, tmp_path / "model.js")
    text = path.read_text()
    start = text.index('"output_bias":[') + len('"output_bias":[')
    path.write_text(text[:start] + "1/3" + text[text.index(",", start):])
    assert np.isfinite(run_node(path, samples, tmp_path)).all()
    said = _page_problem(path)
    assert said.startswith(f"{UNCHECKED}{path}: the value at line ") and " is `1/3`, JavaScript that predlab" in said


# The line after a weights object that no `;` ends: "call" where the page stops or gets no object, "other" where it
# gets a value predlab cannot tell, None where the object is assigned all the same (JavaScript inserts the `;`, or
# `,` / `||` / `??` leave the object the value)
_AFTER_AN_UNENDED_OBJECT = [("(function () { console.log('weights loaded'); })();", "call"),
                            ("+ 1", "call"), ("in window", "call"), ("instanceof Object", "call"),
                            ("[1, 2].forEach(function (x) {});", "other"), (".layers", "other"),
                            ("? {} : null", "other"), ("&& {}", "other"),
                            ("++loaded", None), ("!function () {}();", None), ("|| {}", None), (", 1", None),
                            ("console.log('weights loaded');", None),
                            # a tagged template calls the object; an assignment operator makes it a syntax error
                            ("`weights loaded`", "call"), ("||= {}", "call"), ("&&= {}", "call"), ("??= {}", "call"),
                            ("?? {}", None)]


@pytest.mark.parametrize("after, kind", _AFTER_AN_UNENDED_OBJECT)
def test_code_that_goes_on_with_an_unended_weights_object_is_named(model, tmp_path, after, kind):
    """`window.TRANSFORMER_PARAMS = {...}` with no `;`, then `(function () {...})();` on the next line: JavaScript
    calls the object (a TypeError), and the page ran the teacher, while predlab read the object with a warning that
    the code after it is not run, and the demo said nothing of a refusal."""
    from predlab.export import PageOnlyError
    js = write_weights(model, tmp_path / "model.js").read_text().rstrip().rstrip(";")
    path = tmp_path / "unended.js"
    path.write_text(js + "\n" + after + "\n")
    lines = js.count("\n") + 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind is None:
            assert read_params(path)["d_model"] == model.config.d_model
            return
        error = WeightFormatError if kind == "call" else PageOnlyError
        with pytest.raises(error, match=rf"no `;` ends the weights object .* \(line {lines}: `.*`\) goes on with the "
                                        r"same expression") as raised:
            read_params(path)
    assert (type(raised.value) is WeightFormatError) == (kind == "call")


@needs_node
def test_the_page_gets_no_object_where_predlab_names_code_that_goes_on_with_it(model, tmp_path):
    """What the test above says of each line is what a page's script (Node's vm, window = the global) does."""
    js = write_weights(model, tmp_path / "model.js").read_text().rstrip().rstrip(";")
    texts = [js + "\n" + after + "\n" for after, _ in _AFTER_AN_UNENDED_OBJECT]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = """
        const fs = require("fs"), vm = require("vm");
        const out = JSON.parse(fs.readFileSync(process.argv[1], "utf8")).map((src) => {
          const sb = { console: { log() {} }, loaded: 0 }; sb.window = sb.self = sb;
          try { vm.runInNewContext(src, sb); } catch (e) { return "error"; }
          const p = sb.TRANSFORMER_PARAMS;
          return p && typeof p === "object" && p.d_model === 48 && Array.isArray(p.layers) ? "object" : "other";
        });
        process.stdout.write(JSON.stringify(out));"""
    got = json.loads(subprocess.run(["node", "-e", script, str(tmp_path / "texts.json")], capture_output=True,
                                    text=True, check=True).stdout)
    for (after, kind), page in zip(_AFTER_AN_UNENDED_OBJECT, got):
        assert (page == "object") == (kind is None), (after, page)


def _folder_takes_no_files(monkeypatch, folder: Path) -> None:
    """Making a file in folder raises PermissionError, as it does for a user other than its owner (root is not
    stopped by a folder's mode)."""
    import tempfile
    real = tempfile.TemporaryFile

    def guarded(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "TemporaryFile", guarded)


def test_an_output_that_is_a_link_into_a_folder_this_user_cannot_write_is_refused_first(model, tmp_path, monkeypatch,
                                                                                          capsys):
    """export --out through a link to a page's model.js, in a folder of another user: the check looked at the
    link's folder, so the checkpoint was read and the write failed after it ("cannot write out.js: Permission
    denied", naming neither the folder nor the link); a training run trained to its end first."""
    from predlab.export import main, output_problem
    monkeypatch.chdir(tmp_path)
    src = write_weights(model, tmp_path / "model.json")
    page = tmp_path / "page"
    page.mkdir()
    write_weights(model, page / "model.js")
    (tmp_path / "out.js").symlink_to(page / "model.js")
    _folder_takes_no_files(monkeypatch, page)
    message = f"out.js is a link to {page / 'model.js'}, in a folder where this user cannot write"
    assert output_problem("out.js").startswith(message)
    with pytest.raises(SystemExit) as e:
        main([str(src), "--out", "out.js"])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["export"], ["bench"], ["evaluate"]])
def test_an_output_path_that_ends_with_a_slash_is_refused_not_written_as_a_file(model, tmp_path, monkeypatch, capsys,
                                                                                  flags):
    """--out site.js/ (a folder, as a shell reads it) was written as a file named site.js: Path drops the slash."""
    import importlib
    monkeypatch.chdir(tmp_path)
    src = write_weights(model, tmp_path / "model.json")
    tool = importlib.import_module(f"predlab.{flags[0]}")
    name = {"export": "site.js", "bench": "site.json", "evaluate": "site.json"}[flags[0]]
    argv = {"export": [str(src), "--out", name + "/"], "bench": ["--json", name + "/"],
            "evaluate": [str(src), "--json", name + "/"]}[flags[0]]
    with pytest.raises(SystemExit) as e:
        tool.main(argv)
    assert e.value.code == 2 and f"{name}/ ends with /, a folder's name" in capsys.readouterr().err
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("out", ["site.js/", "site.js/.", "site.json/"])
def test_write_weights_refuses_a_path_written_as_a_folders_as_the_command_line_does(model, tmp_path, monkeypatch, out):
    """export --out site.js/ was refused, but write_weights(model, "site.js/") (a notebook's call) and
    --out site.js/. still wrote a file named site.js: Path drops a last "/" and a last "/."."""
    from predlab.export import main
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IsADirectoryError, match="a folder's name"):
        write_weights(model, out)
    src = write_weights(model, tmp_path / "model.json")
    with pytest.raises(SystemExit) as e:
        main([str(src), "--out", out])
    assert e.value.code == 2
    assert not (tmp_path / out.split("/")[0]).exists()


def test_text_is_written_as_its_bytes_whatever_the_systems_line_ends(tmp_path, monkeypatch):
    """Windows' text mode writes CRLF: every comparison of a written file with the text predlab meant (is this
    model.js the run's own?) failed there, and each resume kept the run's own export as "of other weights"."""
    import io
    import os as os_
    from predlab.export import atomic_write_text
    real = os_.fdopen

    def windows(fd, mode="r", *a, **kw):       # what text mode does on Windows
        if "b" not in mode:
            return io.TextIOWrapper(real(fd, mode.replace("w", "wb")), newline="\r\n", encoding="cp1252")
        return real(fd, mode, *a, **kw)
    monkeypatch.setattr(os_, "fdopen", windows)
    text = 'window.TRANSFORMER_PARAMS = {\n  "note": "d\u00e9j\u00e0 \u2192"\n};\n'
    assert atomic_write_text(tmp_path / "m.js", text).read_bytes() == text.encode("utf-8")


def test_a_path_the_consoles_encoding_cannot_write_is_escaped_not_a_traceback(model, tmp_path):
    """stdout redirected on Windows is in the ANSI code page (cp1252): an export into a Cyrillic folder wrote its
    file, then ended in UnicodeEncodeError at the line naming it (exit 1)."""
    src = save_model_file(model, tmp_path / "best_model.pt")
    out = tmp_path / "\u041c\u043e\u0434\u0435\u043b\u044c" / "model.js"
    r = subprocess.run([sys.executable, "-m", "predlab.export", str(src), "--out", str(out)], capture_output=True,
                       env={**os.environ, "PYTHONIOENCODING": "cp1252"}, timeout=120)
    assert r.returncode == 0, r.stderr.decode("cp1252", "replace")
    assert b"\\u041c\\u043e" in r.stdout and b"Traceback" not in r.stderr and read_weights(out).config == model.config
