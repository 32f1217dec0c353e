"""The browser's weight format (SPEC.md section 7), both directions, checked before writing.

write_weights() writes model.js (`window.TRANSFORMER_PARAMS = {...};`) or .json at full
float32 precision, atomically; read_weights() reads either, including the hand-written
model.js files already deployed (comments, unquoted keys, 4-decimal numbers).
Run as `python -m predlab.export CHECKPOINT --out PATH`.
"""
from __future__ import annotations

import argparse
import codecs
import contextlib
import difflib
import errno
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .config import BROWSER_SIZES, FlagParser
from .model import TOKEN_TYPES, TransformerPredator, check_has_weights

JS_PREFIX = "window.TRANSFORMER_PARAMS = "
# The assignments that set window.TRANSFORMER_PARAMS, which the page reads (`let` and `const` do not). A
# script's top-level `this` is window too, strict or not
SETS_PAGE_GLOBAL = (r"(?:window\.|globalThis\.|self\.|this\.)?TRANSFORMER_PARAMS|var\s+TRANSFORMER_PARAMS"
                    r"""|(?:window|globalThis|self|this)\[\s*(?:"TRANSFORMER_PARAMS"|'TRANSFORMER_PARAMS')\s*\]""")
# A script's directive prologue, which may stand before the assignment: the strings opening it as statements of
# their own ("use strict";, or more: `"a"; "use strict";`)
_DIRECTIVE_STRING = r"""(?:"[^"\\\n\r]*(?:\\[\s\S][^"\\\n\r]*)*"|'[^'\\\n\r]*(?:\\[\s\S][^'\\\n\r]*)*')"""
DIRECTIVES = rf"(?:{_DIRECTIVE_STRING}\s*(?:;[\s;]*)?)*"
_TARGET = rf"(?:{SETS_PAGE_GLOBAL}|(?:let|const)\s+TRANSFORMER_PARAMS)\s*=\s*"
# How a model.js assigns its weights: let and const too, which predlab reads (the demo refuses them: the page
# would not see them). Loose about the prologue, to know a weight file that does not parse
WEIGHTS_ASSIGNMENT = re.compile(DIRECTIVES + _TARGET)
# The same as JavaScript parses it: a string of the prologue ends its statement at a `;` or a line break (where
# JavaScript inserts the `;`); `"use strict" window.TRANSFORMER_PARAMS = ...` on one line is a syntax error
_STRING_THEN_SPACE = re.compile(_DIRECTIVE_STRING + r"[^\S\n\r]*")
_PAGE_ASSIGNMENT = re.compile(rf"(?:{_DIRECTIVE_STRING}[^\S\n\r]*[;\n\r][\s;]*)*" + _TARGET)
SIZE_KEYS = ("d_model", "n_heads", "n_layers", "ffn_hidden")
# The least number float32 rounds to infinity; 3.4028235e38, float32's largest as numpy prints it, is
# above FLOAT32_MAX but reads as it
FLOAT32_OVERFLOW = 2.0 ** 128 - 2.0 ** 103
MAX_SIZE = 2 ** 31 - 1   # a size the arrays could not have in any file: refused before shapes are compared
LAYER_KEYS = ("ln_scale", "ln_bias", "qkv_weight", "qkv_bias", "attn_out_weight", "attn_out_bias",
              "ffn_ln_scale", "ffn_ln_bias", "ffn_gate_weight", "ffn_gate_bias", "ffn_up_weight", "ffn_up_bias",
              "ffn_down_weight", "ffn_down_bias")


class WeightFormatError(ValueError):
    """A weight file or dict the browser would refuse; the message names the key or shape."""


class PageOnlyError(WeightFormatError):
    """Weights the browser page runs but predlab cannot hold as the page does (a number beyond float32's
    range, which the page computes with in float64; a number with a leading zero, octal to the page), or
    code in them that predlab does not run (a template literal's ${...}, a computed key, code after the
    object that changes it)."""


# ---------------------------------------------------------------------- key <-> parameter map
def _layer_map(i: int) -> Dict[str, str]:
    p = f"layers.{i}."
    return {"ln_scale": p + "ln1.weight", "ln_bias": p + "ln1.bias", "qkv_weight": p + "qkv.weight",
            "qkv_bias": p + "qkv.bias", "attn_out_weight": p + "attn_out.weight", "attn_out_bias": p + "attn_out.bias",
            "ffn_ln_scale": p + "ln2.weight", "ffn_ln_bias": p + "ln2.bias", "ffn_gate_weight": p + "gate.weight",
            "ffn_gate_bias": p + "gate.bias", "ffn_up_weight": p + "up.weight", "ffn_up_bias": p + "up.bias",
            "ffn_down_weight": p + "down.weight", "ffn_down_bias": p + "down.bias"}


def expected_shapes(d: int, n_layers: int, f: int) -> Dict[str, tuple]:
    """Every array of the format with its shape, keyed by a readable path."""
    shapes = {"cls_embedding": (d,), "ctx_projection": (d, 2), "predator_projection": (d, 4),
              "boid_projection": (d, 4), "output_weight": (2, d), "output_bias": (2,)}
    for t in TOKEN_TYPES:
        shapes[f"type_embeddings.{t}"] = (d,)
    per = {"ln_scale": (d,), "ln_bias": (d,), "qkv_weight": (3 * d, d), "qkv_bias": (3 * d,),
           "attn_out_weight": (d, d), "attn_out_bias": (d,), "ffn_ln_scale": (d,), "ffn_ln_bias": (d,),
           "ffn_gate_weight": (f, d), "ffn_gate_bias": (f,), "ffn_up_weight": (f, d), "ffn_up_bias": (f,),
           "ffn_down_weight": (d, f), "ffn_down_bias": (d,)}
    for i in range(n_layers):
        for k, s in per.items():
            shapes[f"layers[{i}].{k}"] = s
    return shapes


def _get(params: Mapping, path: str):
    node = params
    for part in re.findall(r"[^.\[\]]+", path):
        node = node[int(part)] if part.isdigit() else node[part]
    return node


# ---------------------------------------------------------------------- validation
# What such a number is to the page and to predlab: the page runs 1e39 (a finite JavaScript number), and gives
# finite actions where LayerNorm or tanh absorb it
_BEYOND_FLOAT32 = (": the browser page runs it, as its engine computes in float64, but predlab's model and "
                   "export are float32, where it would be infinity")


def _array(value, shape: tuple, path: str) -> np.ndarray:
    """Check a nested list of numbers against shape -> float64 array, naming path on failure."""
    def shape_of(v, depth):
        if depth == len(shape):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise WeightFormatError(f"{path}: expected a number, found {type(v).__name__}")
            if isinstance(v, int) and abs(v) >= FLOAT32_OVERFLOW:   # before float(v) overflows
                raise PageOnlyError(f"{path}: an integer of {_digits(v)} digits is beyond float32's range"
                                    f"{_BEYOND_FLOAT32}")
            return
        if not isinstance(v, (list, tuple)):
            raise WeightFormatError(f"{path}: expected an array of shape {list(shape)}, found {type(v).__name__}")
        if len(v) != shape[depth]:
            raise WeightFormatError(f"{path}: expected shape {list(shape)}, dimension {depth} has length {len(v)} "
                                    f"instead of {shape[depth]}")
        for x in v:
            shape_of(x, depth + 1)
    if isinstance(value, np.ndarray) and value.dtype.kind not in "iuf":
        if value.dtype.kind != "O":
            raise WeightFormatError(f"{path}: expected numbers, found an array of {value.dtype}")
        value = value.tolist()                                # objects: checked one by one
    if isinstance(value, np.ndarray):
        arr = value.astype(np.float64)
        if arr.shape != shape:
            raise WeightFormatError(f"{path}: expected shape {list(shape)}, found {list(arr.shape)}")
    else:
        shape_of(value, 0)
        arr = np.asarray(value, dtype=np.float64).reshape(shape)
    if not np.isfinite(arr).all():
        raise WeightFormatError(f"{path}: contains NaN or infinity")
    if arr.size and np.abs(arr).max() >= FLOAT32_OVERFLOW:
        raise PageOnlyError(f"{path}: {np.abs(arr).max():.3g} is beyond float32's range{_BEYOND_FLOAT32}")
    return arr


def _short(v) -> str:
    """repr(v), an integer of hundreds of digits as its digit count."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10 ** 20:
        return f"an integer of {_digits(v)} digits"
    return repr(v)


def _digits(v: int) -> str:
    try:
        return str(len(str(abs(v))))
    except ValueError:                # beyond the digits Python converts (sys.set_int_max_str_digits)
        return f"more than {sys.get_int_max_str_digits()}"


def validate_params(params: Mapping, require_browser_sizes: bool = False) -> Dict[str, np.ndarray]:
    """Check a weight dict the way the browser does, and more. Returns {path: float64 array}.

    Raises WeightFormatError naming the missing key, the wrong shape, a non-number or NaN.
    With require_browser_sizes, sizes other than 48/4/3/96 are refused like the stock page does.
    """
    if not isinstance(params, Mapping):
        raise WeightFormatError(f"weights must be an object, found {type(params).__name__}")
    sizes = {}
    for k in SIZE_KEYS:
        if k not in params:
            raise WeightFormatError(f"missing key {k!r}")
        v = params[k]
        if (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating))
                or (isinstance(v, (float, np.floating)) and not math.isfinite(v)) or v != int(v) or v < 1):
            raise WeightFormatError(f"{k} must be a positive integer, found {_short(v)}")
        if v > MAX_SIZE:
            raise WeightFormatError(f"{k}={_short(v)} is beyond any weight file (at most {MAX_SIZE})")
        sizes[k] = int(v)
    if require_browser_sizes:
        bad = [f"{k}={sizes[k]} (browser: {BROWSER_SIZES[k]})" for k in SIZE_KEYS if sizes[k] != BROWSER_SIZES[k]]
        if bad:
            raise WeightFormatError("the browser page refuses these sizes: " + ", ".join(bad))
    if sizes["d_model"] % sizes["n_heads"]:
        raise WeightFormatError(f"d_model={sizes['d_model']} is not divisible by n_heads={sizes['n_heads']}")
    for k in ("cls_embedding", "type_embeddings", "ctx_projection", "predator_projection", "boid_projection",
              "layers", "output_weight", "output_bias"):
        if k not in params:
            raise WeightFormatError(f"missing key {k!r}")
    te = params["type_embeddings"]
    if not isinstance(te, Mapping):
        raise WeightFormatError("type_embeddings must be an object with keys cls, ctx, predator, boid")
    for t in TOKEN_TYPES:
        if t not in te:
            raise WeightFormatError(f"missing key 'type_embeddings.{t}'")
    layers = params["layers"]
    if not isinstance(layers, (list, tuple)):
        raise WeightFormatError("layers must be an array")
    if len(layers) != sizes["n_layers"]:
        raise WeightFormatError(f"layers has {len(layers)} entries but n_layers is {sizes['n_layers']}")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Mapping):
            raise WeightFormatError(f"layers[{i}] must be an object")
        for k in LAYER_KEYS:
            if k not in layer:
                raise WeightFormatError(f"missing key 'layers[{i}].{k}'")
    shapes = expected_shapes(sizes["d_model"], sizes["n_layers"], sizes["ffn_hidden"])
    arrays, page_only = {}, None
    for path, shape in shapes.items():   # past a number beyond float32, to what the page refuses (a NaN, a shape)
        try:
            arrays[path] = _array(_get(params, path), shape, path)
        except PageOnlyError as e:
            page_only = page_only or e
    if page_only:
        raise page_only
    return arrays


# ---------------------------------------------------------------------- model <-> dict
def _param_paths(n_layers: int) -> Dict[str, str]:
    """format path -> model parameter name (type embeddings are rows, handled apart)."""
    m = {"cls_embedding": "cls_embedding", "ctx_projection": "ctx_projection.weight",
         "predator_projection": "predator_projection.weight", "boid_projection": "boid_projection.weight",
         "output_weight": "output.weight", "output_bias": "output.bias"}
    for i in range(n_layers):
        for k, name in _layer_map(i).items():
            m[f"layers[{i}].{k}"] = name
    return m


def model_to_params(model: TransformerPredator) -> Dict:
    """Model -> the browser's weight dict, plain lists of (float32-exact) floats."""
    check_has_weights(model)
    c = model.config
    sd = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
    out = {"d_model": c.d_model, "n_heads": c.n_heads, "n_layers": c.n_layers, "ffn_hidden": c.ffn_hidden,
           "cls_embedding": sd["cls_embedding"].tolist(),
           "type_embeddings": {t: sd["type_embeddings"][i].tolist() for i, t in enumerate(TOKEN_TYPES)},
           "ctx_projection": sd["ctx_projection.weight"].tolist(),
           "predator_projection": sd["predator_projection.weight"].tolist(),
           "boid_projection": sd["boid_projection.weight"].tolist(),
           "layers": [{k: sd[name].tolist() for k, name in _layer_map(i).items()} for i in range(c.n_layers)],
           "output_weight": sd["output.weight"].tolist(), "output_bias": sd["output.bias"].tolist()}
    return out


def load_params_into(model: TransformerPredator, params: Mapping) -> None:
    """Validate params and copy them into model; sizes must equal the model's."""
    arrays = validate_params(params)
    c = model.config
    for k in SIZE_KEYS:
        if int(params[k]) != getattr(c, k):
            raise WeightFormatError(f"{k}={params[k]} in the weights but the model has {k}={getattr(c, k)}")
    state = {}
    for path, name in _param_paths(c.n_layers).items():
        state[name] = torch.from_numpy(arrays[path]).float()
    state["type_embeddings"] = torch.from_numpy(np.stack([arrays[f"type_embeddings.{t}"] for t in TOKEN_TYPES])).float()
    sd = model.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            sd[name].copy_(value.to(sd[name].dtype))


def params_to_model(params: Mapping, dropout: float = 0.0) -> TransformerPredator:
    """A new TransformerPredator with the sizes and weights of a weight dict."""
    validate_params(params)
    m = TransformerPredator.for_weights(dict(zip(SIZE_KEYS, (int(params[k]) for k in SIZE_KEYS)), dropout=dropout))
    load_params_into(m, params)
    return m.eval()


# ---------------------------------------------------------------------- text formats
def _fmt(x: float) -> str:
    """The float32 value's exact float64 text (up to 17 digits): JavaScript parses every weight to
    the very number PyTorch holds. (The shortest text that reads back as the same float32, about
    9 digits, is a different float64 to JavaScript: up to 3e-7 on the actions.)"""
    return repr(float(np.float32(x)))


def _dump(v) -> str:
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{json.dumps(k)}:{_dump(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        if v and not isinstance(v[0], (list, tuple, Mapping)):
            return "[" + ",".join(_fmt(x) for x in v) + "]"
        return "[" + ",\n".join(_dump(x) for x in v) + "]"
    if isinstance(v, int):
        return str(v)
    return _fmt(v)


def params_to_text(params: Mapping, fmt: str = "js") -> str:
    """The file contents: 'js' gives `window.TRANSFORMER_PARAMS = {...};`, 'json' plain JSON."""
    body = _dump(params)
    if fmt == "json":
        return body + "\n"
    return ("// predlab export: the predator transformer's weights for the browser page.\n"
            + JS_PREFIX + body + ";\n")


# A string's opening quote, a line comment, or a block comment's opener: every alternative matches or
# fails at its first character, so a scan is linear (a `/\*.*?\*/` regex was quadratic on many `/*`). A
# page's classic script also takes HTML's `<!--` as a line comment, and `-->` at the start of a line.
_TOKEN = re.compile(r"""["'`]|//[^\n\r\u2028\u2029]*|<!--[^\n\r\u2028\u2029]*|/\*""")
# The same with `-->` at a line's start, for a text that holds one (the alternative slows every scan by a third)
_TOKEN_HTML_CLOSE = re.compile(_TOKEN.pattern + r"|(?<=[\n\r\u2028\u2029])[ \t]*-->[^\n\r\u2028\u2029]*")
# What can end a string's plain run. The strings are scanned by _string_end, not by one regex: a
# `"(?:[^"\\]|\\.)*"` pattern kept ~150 bytes of backtracking state a character (1.5 GB for a
# 10 MB string), and an unrolled one still kept that much per escape. A template literal (`...`) may
# span lines; its `${` opens a substitution, code.
_STRING_STOPS = {**{q: re.compile(rf"[{q}\\\n\r]") for q in "\"'"}, "`": re.compile(r"[`\\]|\$\{")}


def _string_end(text: str, start: int) -> Tuple[int, bool]:
    """The end of the string literal whose quote is at text[start], and whether it is closed there.
    An unclosed one ends before the line break that cuts it off, a template literal before its first `${`.
    A backslash before a line break continues the string on the next line, as in JavaScript."""
    quote, stops, pos = text[start], _STRING_STOPS[text[start]], start + 1
    while True:
        m = stops.search(text, pos)
        if m is None:
            return len(text), False
        c = m.group()
        if c == quote:
            return m.end(), True
        if c != "\\" or m.end() == len(text):
            return m.start(), False
        # an escape: the backslash and one character, or a line continuation's CR LF
        pos = m.end() + (2 if text.startswith("\r\n", m.end()) else 1)


# A `#!` line opening the file (`#!/usr/bin/env node`): a comment to JavaScript there, and only there
_HASHBANG = re.compile(r"(?:#![^\n\r\u2028\u2029]*)?")


def _split_code(text: str, source: Optional[str] = None) -> List[Tuple[bool, str]]:
    """text as (is_code, piece) pieces, comments dropped, strings whole: "http://x" holds no comment.

    Whichever opens first wins ("// a /* b" is a line comment); `<!--`, `-->` at a line's start and
    a `#!` line opening the text are line comments too, as in a page's script. A block comment leaves its line
    breaks (or a space), so that line numbers stay. An unclosed string or block comment raises
    WeightFormatError naming source; with no source, the rest is kept as code.
    """
    pieces: List[Tuple[bool, str]] = []
    code: List[str] = []
    pos = len(_HASHBANG.match(text).group())
    tokens = _TOKEN_HTML_CLOSE if "-->" in text else _TOKEN
    while True:
        m = tokens.search(text, pos)
        if m is None:
            code.append(text[pos:])
            break
        code.append(text[pos:m.start()])
        token, pos = m.group(), m.end()
        if token in ("\"", "'", "`"):
            pos, closed = _string_end(text, m.start())
            token = text[m.start():pos]
        if token[0] not in "\"'`" and token != "/*":       # a line comment: //, <!-- or -->
            continue
        if token == "/*":
            end = text.find("*/", pos)
            if end < 0:
                if source is not None:
                    line = text.count("\n", 0, m.start()) + 1
                    raise WeightFormatError(f"{source}: the /* comment at line {line} is never closed: is the file cut "
                                            "short?")
                code.append(text[m.start():])
                break
            code.append("\n" * text.count("\n", pos, end) or " ")
            pos = end + 2
        elif not closed:
            if source is not None:
                line = text.count("\n", 0, m.start()) + 1
                if token[0] == "`" and text.startswith("${", pos):   # the page may well run it
                    raise PageOnlyError(f"{source}: the template literal at line {line} holds a ${{...}} "
                                        "substitution, code that predlab does not run; write its value out")
                if token[0] == "`":
                    raise WeightFormatError(f"{source}: the template literal at line {line} is never closed: is the "
                                            "file cut short?")
                if not text[pos:].strip():      # the file ends in it
                    raise WeightFormatError(f"{source}: the string at line {line} is not closed: the file ends in "
                                            "it; is it cut short?")
                raise WeightFormatError(f"{source}: the string at line {line} is not closed on its line")
            code.append(token)
        else:
            pieces += [(True, "".join(code)), (False, token)]
            code = []
    pieces.append((True, "".join(code)))
    return pieces


def strip_comments(text: str, source: Optional[str] = None) -> str:
    """text without its // and /* */ comments; strings untouched. With source, an unclosed
    comment or string raises WeightFormatError naming it (else the rest is kept)."""
    return "".join(piece for _, piece in _split_code(text, source))


# A key as JavaScript may write it bare: a name, or a whole number (`1: [1]`, the key "1"); not one JavaScript
# writes otherwise as a string (1.50, 0x10, 1e3, and digits past float64's exact whole numbers)
_UNQUOTED_KEY = re.compile(r"([{,]\s*)([A-Za-z_$][\w$]*|(?:0|[1-9]\d{0,14})(?![\w$.]))\s*:")
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
# A number in a value's place, as JavaScript writes it: signs (`- 0.5`, `+-0.5`: unary operators, spaces
# allowed), hex, binary and octal (0x10), separators (1_000), .5 and 5., a BigInt's n, Infinity and NaN (which
# the page refuses, as predlab does: `- Infinity` is that, not a syntax error); and a leading zero (010).
# One JSON already reads is not matched (a Python call for each of them made reading 2.5 times slower)
_NUMBER = re.compile(r"""([\[,:]\s*)(?!-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?[\s,\]}])((?:[-+]\s*)*)
    (0[xX][\da-fA-F](?:_?[\da-fA-F])*|0[bB][01](?:_?[01])*|0[oO][0-7](?:_?[0-7])*
     |(?P<zero>0\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
     |(?:(?:0|[1-9](?:_?\d)*)(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][-+]?\d(?:_?\d)*)?
     |Infinity|NaN)
    (?P<bigint>n?)(?![\w$.])""", re.X)


# JavaScript's line ends and spaces that JSON's are not: as a line end and a space
_JS_SPACE = {**{ord(c): "\n" for c in "\u2028\u2029"},
             **{ord(c): " " for c in "\v\f\ufeff\u00a0\u1680\u202f\u205f\u3000"},
             **{c: " " for c in range(0x2000, 0x200B)}}


def _js_to_json(code: str, source: str = "weights", line: int = 1, strict: bool = False) -> str:
    """JavaScript's bare keys, trailing commas, numbers (see _NUMBER), line ends and spaces as JSON, in code
    outside strings that starts at `line` of source (for the messages), of a "use strict" file or not."""
    code = _TRAILING_COMMA.sub(r"\1", _UNQUOTED_KEY.sub(r'\1"\2":', code.translate(_JS_SPACE)))
    # the line is counted only for a message: counted for every number, reading was quadratic
    return _NUMBER.sub(lambda m: m.group(1) + _json_number(
        m, lambda: f"{source}: `{m.group(0)[len(m.group(1)):].strip()}` at line {line + code.count(chr(10), 0, m.start(2))}",
        strict), code)


def _json_number(m: "re.Match", where: Callable[[], str], strict: bool = False) -> str:
    """A _NUMBER match's signs and literal as the JSON number JavaScript reads them as; WeightFormatError for
    one the page refuses (a leading zero under "use strict"), PageOnlyError for a leading zero elsewhere (octal
    to the page where its digits allow). where() names the number and its place in the file."""
    signs, literal, bigint = m.group(2), m.group(3), m.group("bigint")
    if "--" in signs or "++" in signs:      # `- -0.5` is 0.5, `--0.5` no number
        raise WeightFormatError(f"{where()} is a syntax error in JavaScript "
                                "(-- and ++ are the decrement and increment operators): the page would not run "
                                "the file; write one sign")
    if bigint:
        raise WeightFormatError(f"{where()} is a BigInt, not a number: the page "
                                f"refuses it; write {literal}")
    if m.group("zero") and strict:
        raise WeightFormatError(f"{where()} has a leading zero, a syntax error in JavaScript under the file's "
                                "\"use strict\": the page would not run the file; write the number without it")
    if m.group("zero"):
        raise PageOnlyError(f"{where()} has a leading zero, which makes JavaScript read "
                            "it as an octal number where its digits allow (010 is 8) and refuse it under \"use "
                            "strict\"; predlab does not guess: write the number without the leading zero")
    literal = literal.replace("_", "")
    if literal == "NaN":        # -NaN is NaN; JSON (as Python reads it) has no -NaN
        return literal
    if literal == "Infinity":
        number = literal
    elif literal[1:2] in tuple("xXbBoO"):
        value = int(literal, 0)
        try:            # beyond float64, JavaScript's Infinity: refused as it is by the page
            number = str(value) if value <= 2 ** 53 else repr(float(value))
        except OverflowError:
            number = "1e999"
    else:
        mantissa, e, exponent = literal.lower().partition("e")      # .5 as 0.5, 5. and 5.e3 as 5 and 5e3
        number = ("0" + mantissa if mantissa.startswith(".") else mantissa).rstrip(".") + e + exponent
    return ("-" if signs.count("-") % 2 else "") + number


def _json_string(token: str, source: str = "weights", line: int = 1, strict: bool = False) -> str:
    """A JavaScript string literal ('...', "..." or a template literal without substitutions) at `line` of
    source, in a "use strict" file or not, as the JSON string of the same value: its escapes as JavaScript
    reads them (see _escape), a template's line breaks as \\n; then as many line breaks as the literal
    spans, so that lines keep their numbers. An escape that is a syntax error in JavaScript (\\x4) is
    kept, for JSON's parser to name with its line and column; a legacy octal one raises (_legacy_escape)."""
    def swap(m: "re.Match") -> str:
        if m.group("legacy"):
            _legacy_escape(m, f"{source}: the {'template literal' if token[0] == '`' else 'string'} at line {line}",
                           token[0] == "`", strict)
        return _escape(m)
    return '"' + _STRING_SWAPS.sub(swap, token[1:-1]) + '"' + "\n" * token.count("\n")


# In a string: an escape, a " (which JSON needs escaped) or a line break (a template literal's). The escape: a
# code point (\u{1F600}, \x41), a legacy octal one (\0 before a digit, \1 to \9), a line continuation
# (a backslash before a line break) or one character
_STRING_SWAPS = re.compile(r'\\(u\{[\da-fA-F]+\}|x[\da-fA-F]{2}|(?P<legacy>0(?=\d)|[1-9])|\r\n?|[\s\S])|"|\r\n?|\n')
# What an escape that JSON lacks or reads otherwise is: \v and \0 their characters, a line continuation
# nothing. JSON's own (\n, \u00e9 ...) are kept, and \x and \u that are no such escape, for JSON's parser
# to name; any other is the character itself (\' is ', \a is a)
_ESCAPED = {"v": "\\u000b", "0": "\\u0000", **dict.fromkeys(("\n", "\r", "\r\n", "\u2028", "\u2029"), "")}
_KEPT_ESCAPES = frozenset('"\\/bfnrtux')


def _escape(m: "re.Match") -> str:
    """A _STRING_SWAPS match, not a legacy escape, as JSON."""
    escaped = m.group(1)
    if escaped is None:
        return '\\"' if m.group() == '"' else "\\n"        # CR LF and CR are LF in a template's value
    if escaped in _ESCAPED:
        return _ESCAPED[escaped]
    if len(escaped) > 1 and escaped[0] in "ux":           # \u{...} or \xHH
        code = int(escaped.strip("ux{}"), 16)
        return json.dumps(chr(code))[1:-1] if code <= 0x10FFFF else m.group()   # beyond Unicode: a syntax error
    return m.group() if escaped in _KEPT_ESCAPES else json.dumps(escaped)[1:-1]


def _legacy_escape(m: "re.Match", where: str, template: bool, strict: bool) -> None:
    """Raise for a legacy octal escape (m, a _STRING_SWAPS match) in the string `where` names: a syntax error
    in a template literal and under "use strict" (WeightFormatError), read by rules of JavaScript's own
    elsewhere (PageOnlyError: \\101 is "A", \\08 a NUL and "8", \\8 "8")."""
    escape = re.compile(r"\\\d{1,3}").match(m.string, m.start()).group()
    fix = "write the character as a \\x or \\u escape (\\x41 for A, \\x00 for a NUL)"
    if template or strict:
        context = "a template literal" if template else "JavaScript under the file's \"use strict\""
        raise WeightFormatError(f"{where} holds `{escape}`, a legacy octal escape, a syntax error in {context}: "
                                f"the page would not run the file; {fix}")
    raise PageOnlyError(f"{where} holds `{escape}`, a legacy octal escape, which JavaScript reads by rules of its "
                        f"own (\\101 is A, \\08 a NUL and 8) and refuses under \"use strict\"; predlab does not "
                        f"guess: {fix}")


# Code after the weights object that changes TRANSFORMER_PARAMS in plain sight: an assignment into it
# (`.d_model = 64`, `["layers"][0] =`, `+=`, a second `TRANSFORMER_PARAMS = {...}`), `delete`, or
# Object.assign / defineProperty onto it. The page would run other weights than the object's, or none.
# Code that changes it through another name (`var P = TRANSFORMER_PARAMS; P.d_model = 64`) is past a
# reader that runs no JavaScript: it is named in a warning, as all code after the object is.
_CHANGES_PARAMS = re.compile(r"TRANSFORMER_PARAMS\b(?:\s*(?:\.\s*[\w$]+|\[[^\]]*\]))*\s*"
                             r"(?:\*\*|<<|>>>?|[-+*/%&|^])?=(?!=)"
                             r"|\bdelete\s[^;\n]*?TRANSFORMER_PARAMS\b"
                             r"|\bObject\s*\.\s*(?:assign|defineProperty|defineProperties|setPrototypeOf)\s*\(\s*"
                             r"[^,)]*?TRANSFORMER_PARAMS\b")


# What goes on with the weights object's expression when no `;` ends it: JavaScript inserts one at a line break only
# where the next line cannot go on with the statement, so `{...}` then `(function () {...})();` on the next line is
# a call of the object (a TypeError), and `{...}` then `[a, b].forEach(...)` an index into it. `,`, `||` and `??`
# leave the object assigned, and `++` / `--` after a line break start a statement of their own.
# "call": the page stops at a TypeError or a syntax error, or assigns a number, string or boolean (`+ 1`, `in x`);
# "other": it assigns something predlab cannot tell (`.layers`, `[0]`, `? a : b`, `&& b`)
_CONTINUES_OBJECT = re.compile(r"(?P<space>\s*)(?!\|\|(?!=)|\?\?(?!=))(?:(?P<other>(?!&&=|\?\?=)(?:[.\[?]|&&))"
                               r"|(?P<call>\+\+|--|\*\*|\?\?=|[-+*/%(<>&|^=]|!=|in(?:stanceof)?(?![\w$])))")

# A template literal there, which text_to_params has made a JSON string by then: `{...}` then `\`...\`` is a tagged
# template, a call of the object
_TEMPLATE_AFTER = re.compile(r"(?P<space>\s*)(?P<call>\")")

# After `const TRANSFORMER_PARAMS = {...};` (or let), the statement that hands the page that same object:
# `window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS;` and nothing after it
PUBLISHES_BINDING = re.compile(r"""(?<![\w$.])(?:window|globalThis|self|this)\s*"""
                               r"""(?:\.\s*TRANSFORMER_PARAMS|\[\s*(?:"TRANSFORMER_PARAMS"|'TRANSFORMER_PARAMS')\s*\])"""
                               r"""\s*=\s*TRANSFORMER_PARAMS(?![\w$])\s*;?[\s;]*""")


# Where JSON expects a key: a computed one (`["a" + 1]:`) or a number JavaScript takes as a key (1.5, 0x10)
_JS_ONLY_KEY = re.compile(r"\[[^\n]*?\]\s*(?=:)|\.?\d[\w$.]*\s*(?=:)")
# JavaScript that the page evaluates and predlab does not run: where JSON expects a value, a name, a sign or a
# parenthesis (Math.PI, a constant of its own, -x, (0.5)); where it expects the comma after one, an arithmetic
# operator (1/3, 0.5 * 2). A name there instead (`[1 x]`) is a syntax error, which the page meets too.
_JS_VALUE = re.compile(r"[-+(!~A-Za-z_$]")
_JS_OPERATOR = re.compile(r"[-+*/%]")
# where JSON expects a key, JavaScript that the page runs: a spread, a method (a getter, an async or generator
# one; named, quoted, computed or numbered), a key spelt with \u escapes (d\u005fmodel is d_model)
_JS_ESCAPE = r"\\u(?:[0-9a-fA-F]{4}|\{[0-9a-fA-F]+\})"
# a key then `(`: a method if its balanced parentheses are followed by its body's brace (_method_at)
_JS_OBJECT_CODE = re.compile(r"(?P<spread>\.\.\.\s*[A-Za-z_$\[{(\"'])"
                             r"|(?P<method>(?:(?:get|set|async)[ \t]+)?\*?\s*(?:[A-Za-z_$][\w$]*|\"(?:[^\"\\]|\\.)*\""
                             r"|\[[^\]\n]*\]|\d[\w.]*)\s*(?=\())"
                             # (one way to split a key into names and escapes, none of which is in [\w$]: linear)
                             rf"|(?P<escape>[\w$]*(?:{_JS_ESCAPE}[\w$]*)+\s*:)")


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _method_at(s: str, pos: int) -> bool:
    """Whether s at pos (a `(` after a key) holds a method's parameters, balanced, then its body's `{`:
    `f(a = 1, {b}) {` is one, `f(1, 2) {` too by this count (the page then meets its own syntax error)."""
    depth, i = 0, pos
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return re.match(r"\s*\{", s[i + 1:i + 64]) is not None
        elif c == '"':          # strings are JSON strings by now
            m = _JSON_STRING.match(s, i)
            if not m:
                return False
            i = m.end() - 1
        i += 1
    return False


_JS_TOKEN = re.compile(r"\s*(?:(?P<num>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?![\w$.]))"
                       r"|(?P<name>[A-Za-z_$][\w$]*(?:\s*\.\s*[A-Za-z_$][\w$]*)*)|(?P<op>\*\*|[-+*/%!~(),]))")


def _js_value_end(s: str, start: int) -> int:
    """Where a value that starts at start ends: at the first `,`, `]` or `}` outside its parentheses, or
    at the end of its line."""
    depth, i = 0, start
    while i < len(s) and s[i] != "\n" and (depth or s[i] not in ",]}"):
        depth += {"(": 1, ")": -1}.get(s[i], 0)
        i += 1
    return i


def _js_expression(text: str) -> bool:
    """Whether text is one JavaScript expression of numbers, names (Math.PI), signs, arithmetic, calls and
    parentheses: what the page would evaluate, where predlab reads numbers written out. `1 -`, `(`, `a b` and
    `1e` are syntax errors, which the page meets too."""
    tokens, pos, end = [], 0, len(text.rstrip())
    while pos < end:
        m = _JS_TOKEN.match(text, pos)
        if not m:
            return False
        tokens.append(m.group(m.lastgroup) if m.lastgroup == "op" else m.lastgroup)
        pos = m.end()
    at = 0

    def operand() -> bool:
        nonlocal at
        while at < len(tokens) and tokens[at] in ("-", "+", "!", "~"):
            at += 1
        if at < len(tokens) and tokens[at] == "(":
            at += 1
            if not expression() or at >= len(tokens) or tokens[at] != ")":
                return False
            at += 1
            return True
        if at >= len(tokens) or tokens[at] not in ("num", "name"):
            return False
        at += 1
        if tokens[at - 1] == "name" and at < len(tokens) and tokens[at] == "(":      # a call: Math.sqrt(2)
            at += 1
            if at < len(tokens) and tokens[at] == ")":
                at += 1
                return True
            while expression():
                if at < len(tokens) and tokens[at] == ")":
                    at += 1
                    return True
                if at >= len(tokens) or tokens[at] != ",":
                    return False
                at += 1
            return False
        return True

    def expression() -> bool:
        nonlocal at
        if not operand():
            return False
        while at < len(tokens) and tokens[at] in ("**", "*", "/", "%", "+", "-"):
            at += 1
            if not operand():
                return False
        return True

    return bool(tokens) and expression() and at == len(tokens)


def _line_col(text: str, pos: int) -> Tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)


def _place(original: str, converted: str, pos: int) -> str:
    """Where pos of the JSON text converted from `original` is in the file, as "line L, column C". Lines keep
    their numbers, but quoted keys and converted numbers, strings and comments move a line's columns: the column
    is found by aligning the line as converted with the line as written (difflib), or where the line is too
    long for that, by the text before pos or after it reading as written; else the text there is quoted."""
    line, col = _line_col(converted, pos)
    lines = original.split("\n")
    start = converted.rfind("\n", 0, pos) + 1
    end = converted.find("\n", pos)
    made = converted[start:len(converted) if end < 0 else end]
    tail = made[col - 1:].rstrip("\r")
    if line <= len(lines):
        written = lines[line - 1].rstrip("\r")
        if written[:col - 1] == made[:col - 1]:
            return f"line {line}, column {col}"
        if len(written) + len(made) <= 20_000:    # (a model.js of predlab's holds its weights in one line)
            for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, made, written, autojunk=False).get_opcodes():
                if i1 <= col - 1 < i2 or (i1 == i2 == col - 1 and op == "insert"):
                    return f"line {line}, column {j1 + (col - 1 - i1 if op == 'equal' else 0) + 1}"
        if written.endswith(tail):
            return f"line {line}, column {len(written) - len(tail) + 1}"
    return f"line {line}, near `{tail.strip()[:20]}`"


# Where a directive (a statement that is a lone string) ends: at a `;`, or at a line break, where JavaScript
# inserts the `;`
_DIRECTIVE_END = re.compile(r"[^\S\n\r\u2028\u2029]*[;\n\r\u2028\u2029]")


def _use_strict(pieces: List[Tuple[bool, str]]) -> bool:
    """Whether the script of these _split_code pieces is strict: whether its directive prologue, the statements
    opening it that are each a lone string (`"a"; "use strict";`), holds "use strict" as written."""
    if pieces[0][1].strip():
        return False
    for i in range(1, len(pieces) - 1, 2):
        string, after = pieces[i][1], pieces[i + 1][1]
        if string[0] == "`" or not _DIRECTIVE_END.match(after):
            return False
        if string[1:-1] == "use strict":
            return True
        if after.strip() not in ("", ";"):       # code after the string: the prologue ends there
            return False
    return False


def _unended_directive(s: str, pos: int, source: str) -> None:
    """WeightFormatError naming the string of the prologue that code follows on its line with no `;`."""
    while True:
        m = _STRING_THEN_SPACE.match(s, pos)
        if m is None:
            return
        if m.end() == len(s) or s[m.end()] not in ";\n\r":
            line = _line_col(s, m.start())[0]
            raise WeightFormatError(f"{source}: the string {m.group().strip()[:40]} at line {line} has code after it on "
                                    "its line with no `;` between, a syntax error: the page would not run the file; "
                                    "end it with `;`")
        pos = m.end() + len(s[m.end():]) - len(s[m.end():].lstrip("; \t\n\r"))


def use_strict(code: str) -> bool:
    """Whether a script (its comments stripped or not) is strict: its directive prologue holds "use strict"."""
    return _use_strict(_split_code(code))


def _ends_at(text: str) -> str:
    """"the file ends at line N": the line of text's last character that is not a space."""
    return f"the file ends at line {text.rstrip().count(chr(10)) + 1}"


def _ends_early(s: str, pos: int) -> bool:
    """Whether a parse error at pos is the text running out: nothing after it but, at most, the start of a key, a
    number or a comment. (A string begun and not ended is refused before, with its own words.)"""
    return re.fullmatch(r"\s*[\w$.+/-]*\s*", s[pos:]) is not None


def text_to_params(text: str, source: str = "weights") -> Dict:
    """Parse a model.js (ours or hand-written: comments, unquoted keys, trailing commas, single quotes,
    a "use strict" line) or JSON.

    Code after the object (`module.exports = window.TRANSFORMER_PARAMS;`, say) is not run: a warning
    names it, and code there that changes TRANSFORMER_PARAMS in plain sight (see _CHANGES_PARAMS) is
    refused, as the page would run weights other than the object's."""
    pieces = _split_code(text.lstrip("\ufeff"), source)   # (a BOM from some editors)
    strict = _use_strict(pieces)      # which makes 010 and \08 syntax errors
    out, line, at, templates = [], 1, 0, set()
    for i, (is_code, piece) in enumerate(pieces):
        if not is_code and piece[0] == "`":
            templates.add(at)       # where it begins in s, as a JSON string: after the object, a tagged template
        if not is_code and piece[0] == "`" and pieces[i + 1][1].lstrip().startswith(":"):
            # JSON would read it as a key, but JavaScript has no template-literal key: the page would not run the file
            raise WeightFormatError(f"{source}: the template literal at line {line} is a key, a syntax error in "
                                    "JavaScript: the page would not run the file; write the key in quotes")
        out.append(_js_to_json(piece, source, line, strict) if is_code else
                   _json_string(piece, source, line, strict))
        line += out[-1].count("\n")
        at += len(out[-1])
    s = "".join(out)
    start = len(s) - len(s.lstrip())
    m = WEIGHTS_ASSIGNMENT.match(s, start)
    if m and not _PAGE_ASSIGNMENT.match(s, start):
        _unended_directive(s, start, source)
    declared = m and re.search(r"\b(let|const)\s+TRANSFORMER_PARAMS\b", m.group())
    if m:
        start = m.end()
    if not s.startswith("{", start):
        if m and not s[start:].strip():     # `window.TRANSFORMER_PARAMS = ` and nothing after it
            raise WeightFormatError(f"{source}: {_ends_at(text)} before the weights object begins: is it cut short?")
        raise WeightFormatError(f"{source}: expected a JSON object or `window.TRANSFORMER_PARAMS = {{...}};`")
    try:
        # strict=False: a raw tab (or other control character but a line break) in a string, as JavaScript takes it
        params, end = json.JSONDecoder(strict=False).raw_decode(s, start)
    except json.JSONDecodeError as e:   # line and column in the file (block comments keep their lines)
        place = _place(text.lstrip("\ufeff"), s, e.pos)
        key = _JS_ONLY_KEY.match(s, e.pos) if e.msg.startswith("Expecting property name") else None
        if key:         # the page runs it (a key it does not read); JSON has no such key
            what = ("computed (`[...]:`), code that predlab does not run" if key.group()[0] == "[" else
                    "a number not written as a plain whole number (1.5, 0x10, 1e3), which predlab does not read")
            raise PageOnlyError(f"{source}: the key at {place} is {what}; write it as a name") from None
        # (a file cut short after `...` or a name is said so below)
        code = (_JS_OBJECT_CODE.match(s, e.pos) if e.msg.startswith("Expecting property name")
                and not _ends_early(s, e.pos) else None)
        if code and code.lastgroup == "method" and not _method_at(s, code.end()):
            code = None
        paren = re.compile(r"\s*").match(s, e.pos).end()      # after a quoted key: `"name"(...) {`
        quoted_method = (e.msg.startswith("Expecting ':' delimiter") and s.startswith("(", paren)
                         and _method_at(s, paren))
        if code or quoted_method:
            what = "a method" if quoted_method else {"spread": "an object spread (`...`)", "method": "a method",
                                                     "escape": "a key written with \\u escapes"}[code.lastgroup]
            raise PageOnlyError(f"{source}: at {place} the object holds {what}, JavaScript that predlab does not "
                                "read; write the weights as `name: [numbers]`") from None
        if _ends_early(s, e.pos):    # a copy or an upload cut short: the parser's words point at a key or a comma
            raise WeightFormatError(f"{source}: {_ends_at(text)} before the weights object is closed: is it cut "
                                    "short?") from None
        code = (_JS_VALUE.match(s, e.pos) if e.msg.startswith("Expecting value") else
                _JS_OPERATOR.match(s, e.pos) if e.msg.startswith("Expecting ',' delimiter") else None)
        if code:
            begin = max(s.rfind(",", 0, e.pos), s.rfind("[", 0, e.pos), s.rfind(":", 0, e.pos)) + 1
            begin += len(s[begin:e.pos]) - len(s[begin:e.pos].lstrip())
            value = s[begin:_js_value_end(s, e.pos)].strip()
            if _js_expression(value):     # the page may well run it: "will refuse" would be wrong
                value = value if len(value) <= 40 else value[:37] + "..."
                raise PageOnlyError(f"{source}: the value at {_place(text.lstrip(chr(0xFEFF)), s, begin)} is "
                                    f"`{value}`, JavaScript that predlab does not run (it reads numbers written "
                                    "out)") from None
        found = re.match(r"[,:\]}]|[^\s,:\]}]{0,12}", s[e.pos:]).group()     # (s has quoted the keys)
        bare = re.match(r"([A-Za-z_$][\w$]*)\s*[,}]", s[e.pos:]) if e.msg.startswith("Expecting property") else None
        if bare:
            raise WeightFormatError(f"{source}: not a readable weight file (the key `{bare.group(1)}` at {place} has "
                                    "no value: write `name: [numbers]`)") from None
        colon = re.match(r"([A-Za-z_$][\w$]*)\s+(?=[^\s,:}(\[])", s[e.pos:]) if e.msg.startswith("Expecting property") \
            else None
        if colon:
            raise WeightFormatError(f"{source}: not a readable weight file (a `:` is missing after the key "
                                    f"`{colon.group(1)}` at {place})") from None
        if e.msg.startswith("Expecting property name"):      # JSON's words, where a key is a name in JavaScript
            raise WeightFormatError(f"{source}: not a readable weight file (a key, a name or a string in quotes, was "
                                    f"expected at {place}, not `{found}`)") from None
        if e.msg.startswith("Expecting value") and s.startswith((",", "]"), e.pos) and s[:e.pos].rstrip()[-1:] in "[,":
            raise WeightFormatError(f"{source}: not a readable weight file (a number is missing at {place}: two "
                                    "commas, or one after `[`, leave a hole in the array)") from None
        raise WeightFormatError(f"{source}: not a readable weight file ({e.msg} at {place})") from None
    except RecursionError:
        raise WeightFormatError(f"{source}: arrays or objects nested too deeply (a weight file nests 4 "
                                "levels)") from None
    except ValueError as e:   # an integer of more digits than Python converts
        raise WeightFormatError(f"{source}: not a readable weight file ({str(e).split(';')[0]})") from None
    if not m and source.lower().endswith(".js"):     # read all the same: a model.json renamed, say
        from .train import shell_words
        # in place (the export keeps the JSON in previous/): `--out model.js` wrote into the current folder,
        # and the page's file stayed as it was
        warnings.warn(f"{source} is plain JSON, with no `window.TRANSFORMER_PARAMS = `: the page loads model.js as "
                      "a script, where that is a syntax error, and would run the teacher; `"
                      f"{shell_words('python', '-m', 'predlab.export', source, '--out', source)}` rewrites it as the "
                      "page reads it", stacklevel=3)
    goes_on = _CONTINUES_OBJECT.match(s, end) if m else None
    if m and not goes_on and end + len(s[end:]) - len(s[end:].lstrip()) in templates:
        # a template literal (a JSON string by now) after the object: a tagged template, a call of the object
        goes_on = _TEMPLATE_AFTER.match(s, end)
    if goes_on and not (goes_on.group("call") in ("++", "--") and re.search(r"[\n\r]", goes_on.group("space"))):
        line, after = _line_col(s, goes_on.end("space"))[0], s[goes_on.end("space"):].split("\n", 1)[0].strip()
        after = after if len(after) <= 40 else after[:37] + "..."
        said = (f"{source}: no `;` ends the weights object (line {_line_col(s, end - 1)[0]}), and the code after it "
                f"(line {line}: `{after}`) goes on with the same expression, as JavaScript reads it: the page ")
        fix = "; put a `;` after the object's closing `}`"
        if goes_on.group("call"):
            raise WeightFormatError(said + "would not get the object (it would stop at an error, or get another "
                                    "value) and run the teacher" + fix)
        raise PageOnlyError(said + "would get something else than the object, which predlab cannot tell" + fix)
    end += len(s) - end - len(s[end:].lstrip("; \t\r\n"))
    # the hand-over as the statement right after the object, or as the file's last: one inside a function, an
    # `if` block, a string or a comment (gone by now) hands over nothing, or not surely. Code after the first, or
    # before the last (on the line above, an `if (...)` the page may run it under), is read with the warning
    # below that predlab does not run that code
    publishes = list(PUBLISHES_BINDING.finditer(s, end)) if declared else []
    first = publishes[0] if publishes and publishes[0].start() == end else None
    goes_on = re.match(r"[-+*/%(\[.`,?:=<>&|^]|in(?:stanceof)?(?![\w$])", s[first.end():]) if first else None
    if goes_on and ";" not in first.group():
        first = None    # no semicolon, and the next line goes on with the expression: `.d_model`, `(...)`, `[0]`
    last = publishes[-1] if publishes and publishes[-1].end() == len(s) else None
    if first and first.end() == len(s):
        return params       # the page gets the object itself
    if first:       # the page gets the object; the code after the hand-over is judged below
        end = first.end()
    elif last:      # handed over after other code: that code is judged below, as code after the object
        s = s[:last.start()] + " " * (last.end() - last.start()) + s[last.end():]
    elif declared and not publishes:      # read all the same (a file of weights), but the page would not see them
        warnings.warn(f"{source}: `{declared.group(1)} TRANSFORMER_PARAMS` does not set window.TRANSFORMER_PARAMS, "
                      "which the page reads: it would run the teacher; write `window.TRANSFORMER_PARAMS = "
                      "{...}`", stacklevel=3)
    if end < len(s):
        line = _line_col(s, end)[0]
        code = s[end:].split("\n", 1)[0].strip()
        code = code if len(code) <= 60 else code[:57] + "..."
        change = _CHANGES_PARAMS.search(s, end)
        if change and any(p.start() <= change.start() < p.end() for p in publishes):
            line = _line_col(s, change.start())[0]
            raise PageOnlyError(f"{source}: `{declared.group(1)} TRANSFORMER_PARAMS` is handed to the page at line "
                                f"{line}, among other code, which predlab does not run: it cannot tell what the page "
                                "gets. Put `window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS;` right after the object")
        if change:
            # PageOnlyError: the page runs that code (its weights then are not the object's, or none are);
            # `python -m predlab.demo` said the page would refuse the file and run the teacher
            raise PageOnlyError(f"{source}: the code after the weights object (line {line}: `{code}`) changes "
                                "TRANSFORMER_PARAMS, so the page would run other weights than the object's; predlab "
                                "does not run JavaScript: write the weights into the object itself")
        warnings.warn(f"{source}: the code after the weights object (line {line}: `{code}`) is not run by predlab: "
                      "the weights read are the object's as written (if that code changes them, the page runs "
                      "others; if it is not valid JavaScript, the page runs none of the file)", stacklevel=2)
    return params


# ---------------------------------------------------------------------- files
class Terminated(KeyboardInterrupt):
    """A SIGTERM under a command line tool's handler (command_line): it stops the tool as a Ctrl-C does."""


def stop_words(e: KeyboardInterrupt) -> Tuple[str, int]:
    """What stopped a command line tool, as its message says it, and the exit code a shell reports
    for it: ("interrupted", 130) for Ctrl-C, ("terminated (SIGTERM)", 143) for a SIGTERM."""
    return ("terminated (SIGTERM)", 128 + signal.SIGTERM) if isinstance(e, Terminated) else ("interrupted", 130)


# 128 + SIGPIPE: what a shell reports for a Unix tool that wrote to a pipe whose reader had gone (`| head`)
PIPE_CLOSED = 141


def _raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def command_line(sigterm: bool = True):
    """Around a command line tool's main(): a SIGTERM, and a stdout whose reader has gone, end it as
    a user of Unix tools expects.

    A SIGTERM (a scheduler's end of time, `timeout`, `docker stop`, `kill PID`) raises Terminated, a
    KeyboardInterrupt, so that the tool stops at a safe point as at a Ctrl-C, with no write half done,
    rather than at once; one the tool does not catch ends it with a line and exit code 143, as
    Python's default handling would. Only with `sigterm`, in the main thread, and where SIGTERM has
    that default handling (an ignored one, or someone else's handler, is left alone); it is put back
    at the end. The library never calls this: a notebook's kernel must still die of a SIGTERM.

    A BrokenPipeError from stdout (`... | head -1`, once head has exited) ends the tool with exit
    code PIPE_CLOSED, not a traceback; stdout is flushed at the end, so that one is found here and
    not in Python's own flush at exit ("Exception ignored ... BrokenPipeError").
    """
    own = (sigterm and threading.current_thread() is threading.main_thread()
           and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    # a stream closed at the start (`>&-`): Python makes it None, and the tool's flush failed with an
    # AttributeError traceback after its work; what would go there goes nowhere, as a print to None does
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))
    # a path the console's encoding cannot write (a Cyrillic folder, stdout redirected on Windows in cp1252)
    # raised UnicodeEncodeError after the work, at the line naming the files: written with escapes instead
    errors = {}
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if callable(getattr(stream, "reconfigure", None)) and getattr(stream, "errors", "strict") == "strict":
            with contextlib.suppress(Exception):       # (a stream that refuses: left as it is)
                stream.reconfigure(errors="backslashreplace")
                errors[name] = stream
    if own:
        signal.signal(signal.SIGTERM, _raise_terminated)
    formatted = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        raise SystemExit(PIPE_CLOSED) from None
    except Terminated:
        print("\nterminated (SIGTERM)", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        warnings.formatwarning = formatted
        for stream in errors.values():
            with contextlib.suppress(Exception):
                stream.reconfigure(errors="strict")
        if own:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


_PACKAGE = Path(__file__).resolve().parent


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """predlab's own warnings as one line, `warning: ...`, under a command line tool (command_line): the
    default form led with the file and line of predlab's source that raised it, and then that line of
    code. Other libraries' warnings keep Python's form, whose place may matter to whoever reads them.
    (formatwarning, not showwarning: a warnings.catch_warnings(record=True) still records them.)"""
    if not Path(filename).resolve().is_relative_to(_PACKAGE):
        return _PYTHON_FORMAT_WARNING(message, category, filename, lineno, line)
    return f"warning: {message}\n"


_PYTHON_FORMAT_WARNING = warnings.formatwarning


@contextlib.contextmanager
def deferred_interrupt(again_stops: bool = False):
    """Ctrl-C inside the block takes effect when it ends, as a KeyboardInterrupt; so does a SIGTERM
    under a command line tool's handler (command_line), as a Terminated.

    For work that must not stop halfway: a checkpoint half-serialised made torch.save raise a
    RuntimeError instead, and an interrupted TensorBoard flush left its writer thread waiting,
    so the run hung at exit. Only in the main thread, and only under Python's own SIGINT handler
    and the tools' SIGTERM one (a notebook's or the user's handler is left alone).

    again_stops: a second Ctrl-C (or SIGTERM) inside the block takes effect at once, for a block that
    runs the user's code (an epoch's callbacks), which may hang. A block inside it holds what comes
    until it ends all the same, then hands it on to this one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = [s for s, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _raise_terminated))
            if signal.getsignal(s) is handler or getattr(signal.getsignal(s), "holds", False)]
    if not held:
        yield
        return
    caught = []

    def hold(signum, frame):
        if again_stops and caught:
            raise Terminated if signal.SIGTERM in (signum, *caught) else KeyboardInterrupt
        caught.append(signum)
    hold.holds = True        # what a block inside this one recognises as its to hold
    before = {s: signal.signal(s, hold) for s in held}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    # to the handler the block found: Python's raises KeyboardInterrupt, the tools' SIGTERM one Terminated,
    # and an enclosing block's holds it in turn
    if caught:
        s = signal.SIGTERM if signal.SIGTERM in caught else caught[0]
        before[s](s, None)


def say(text: str, file=None) -> None:
    """A line for the user, on stdout (or file), flushed. Under a progress bar in a terminal it goes
    above the bar, on a line of its own: a print began at the bar's end, and split the line after its
    first letter."""
    from tqdm import tqdm
    file = sys.stdout if file is None else file
    tqdm.write(text, file=file)
    file.flush()


def silence_stderr() -> None:
    """After a BrokenPipeError on stderr: it goes to os.devnull from now on (stdout, the JSON's, is left alone)."""
    fd = _fd(sys.stderr)
    if fd is None:
        sys.stderr = open(os.devnull, "w")
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def silence_stdout() -> None:
    """After a BrokenPipeError on stdout (`python -m predlab.train | head -3`, once head has exited):
    stdout, and stderr where it is the same pipe (`2>&1 | head`), go to os.devnull from now on, so
    that later lines, a progress bar and Python's flush at exit do not raise again."""
    out, err = _fd(sys.stdout), _fd(sys.stderr)
    if out is None:          # not a file: a stream put in its place (a test's capture, a notebook's)
        sys.stdout = open(os.devnull, "w")
        return
    same = err is not None and os.path.samestat(os.fstat(out), os.fstat(err))
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (out, err) if same else (out,):
            os.dup2(null, fd)
    finally:
        os.close(null)


def _fd(stream) -> Optional[int]:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):    # io.UnsupportedOperation is both of the latter
        return None


def atomic_write(path: Union[str, Path], write: Callable, binary: bool = False) -> Path:
    """Call write(file) on a temporary file beside path, fsync, then rename over path.

    A crash or kill mid-write leaves the previous file untouched. An exception removes the
    temporary; what stops the process at once (SIGKILL, SIGTERM under Python's default handling,
    a power cut) leaves the partial .NAME.*.tmp beside path. A Ctrl-C, and a SIGTERM under a
    command line tool's handler, take effect once the file is written (deferred_interrupt).
    """
    with deferred_interrupt():
        return _atomic_write(path, write, binary)


def _atomic_write(path: Union[str, Path], write: Callable, binary: bool) -> Path:
    given = path = Path(path)
    if path.is_symlink():     # write the file the link points to; renaming over the link would replace it
        path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():   # /dev/null, a pipe: renaming over it would replace it
        raise FileExistsError(errno.EEXIST, f"{given} exists and is not a regular file (a device, pipe or socket, "
                                            f"or a directory); give the path of a file", str(given))
    if path != given and not path.parent.is_dir():   # made through a dangling link, folders would land anywhere
        raise FileNotFoundError(errno.ENOENT, f"{given} is a link to {path}, in a folder that does not exist",
                                str(given))
    file_on_the_way = next((p for p in path.parents if p.is_file()), None)
    if file_on_the_way is not None:     # mkdir said "[Errno 17] File exists: 'rand.js'", not why it mattered
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write {given}: {file_on_the_way} is a file, not a folder",
                                 str(given))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; a model.js served by a web server as another user must be
        # readable, so give it the mode a plain open() would (or the replaced file's own)
        # (0600 is what mkstemp gave files written before: not kept)
        mode = path.stat().st_mode & 0o7777 if path.is_file() else 0
        os.chmod(tmp, mode if mode not in (0, 0o600) else 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno and e.filename is None:   # a full disk, say: name the file
            raise type(e)(e.errno, e.strerror, str(given)) from None
        raise
    return given


# atomic_write's temporary of a file: .NAME.<mkstemp's 8 characters>.tmp
_PARTIAL = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp")


def stale_partials(directory: Union[str, Path], names: Callable[[str], bool], age_s: float = 600.0) -> List[Path]:
    """The partial files that atomic_write left in directory when a kill or a power cut stopped a
    write, for files whose names `names` accepts, last written more than age_s seconds ago (a write
    under way now is newer). Hidden by their dot, they stayed for good, a checkpoint's size each."""
    now, found = time.time(), []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return []
    for p in entries:
        m = _PARTIAL.fullmatch(p.name)
        try:
            if m and names(m.group("name")) and p.is_file() and not p.is_symlink() and \
                    now - p.stat().st_mtime > age_s:
                found.append(p)
        except OSError:
            pass
    return sorted(found)


def _umask() -> int:
    try:   # read, not set: setting it, even for a moment, would touch files other threads create
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_problem(path: Union[str, Path], directory: bool = False, replaces: Optional[str] = None) -> Optional[str]:
    """Why a file (or, with directory=True, a folder to write files in) cannot be written at
    path, or None. Checked before long work, so that a run does not fail at its end.

    A file already at path is replaced only when it is a regular file, not read-only, and, with
    replaces="weights" or a key of FIGURES, one of that kind (or empty): a typo must not wipe a source
    file, nor a notebook, a package.json or a model.json, which are JSON too.
    """
    if replaces is not None and replaces not in REPLACES:     # a caller's slip: said on every call
        raise ValueError(f"replaces must be None or one of {', '.join(REPLACES)}, not {replaces!r}")
    if isinstance(path, str) and not path.strip():
        return "no folder name given" if directory else "no file name given"
    problem = path_problem(path)
    if problem:
        return problem
    if not directory:
        problem = folder_spelling_problem(path)
        if problem:
            return problem
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        return f"{path} exists and is not a directory"
    if not directory and path.is_dir():
        return f"{path} is a directory"
    if not directory:
        problem = link_target_problem(path)
        if problem:
            return problem
    if not directory and path.exists():
        if not path.is_file():
            return f"{path} exists and is not a regular file (a device, pipe or socket); give the path of a file"
        if not path.stat().st_mode & 0o222:
            return f"{path} is read-only; predlab will not replace it"
        if replaces in FIGURES and _holds_weights(path):     # JSON too, but not figures to replace
            return (f"{path} holds model weights (a model.json); predlab will not replace it with "
                    "figures: write them to another file")
        kind = _kind_problem(path, replaces)
        if kind:
            return f"{path} exists and is not {kind}; predlab will not replace it (remove it, or write elsewhere)"
    d = path if directory else path.parent
    while not d.exists() and d != d.parent:       # the nearest folder that exists
        if d.is_symlink():   # no folder can be made there or below it: the write failed at the end of the work
            return f"{d} is a link to a folder that does not exist"
        d = d.parent
    if not d.is_dir():
        return f"{d} is a file, so {path} cannot be created"
    try:
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError as e:
        # the folder it would be made in, when it is not there yet: "cannot write in /proc" hid /proc/x
        made = "" if d == (path if directory else path.parent) else f" (where {path} would go)"
        return f"cannot write in {d}{made}: {e.strerror or e}"
    return None


def folder_spelling_problem(path: Union[str, Path]) -> Optional[str]:
    """Why a file's path as given names a folder (a last "/", or "/." after a name), or None. Path drops
    both: "out.js/" and "out.js/." were written as a file named out.js, where a shell reads a folder."""
    if not isinstance(path, str):
        return None
    seps = tuple(filter(None, (os.sep, os.altsep)))
    if path.endswith(seps):
        return f"{path} ends with {path[-1]}, a folder's name; give a file's path in it or without the {path[-1]}"
    if path.endswith(tuple(sep + "." for sep in seps)):
        return f"{path} ends with {path[-2:]}, a folder's name; give a file's path in it or without the {path[-2:]}"
    return None


def link_target_problem(path: Union[str, Path], what: str = "") -> Optional[str]:
    """Why a file cannot be written through the link at path, or None (None too for a path that is no link).
    atomic_write makes its file in the folder of the file linked to, then renames it over that file: a folder
    that is not there, or that this user cannot write in (a page's folder of another user, say), failed the
    write at the end of the work, the folder of the link having been checked. `what` ends the message."""
    path = Path(path)
    if not path.is_symlink():
        return None
    target = Path(os.path.realpath(path))
    if not target.parent.is_dir():
        return f"{path} is a link to {target}, in a folder that does not exist{what}"
    try:
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as e:
        return (f"{path} is a link to {target}, in a folder where this user cannot write ({e.strerror or e})"
                f"{what or ': the file is written through it (made there, then renamed over ' + target.name + ')'}")
    return None


def _holds_weights(path: Path) -> bool:
    """Whether path is a JSON weight file (model.json), even an incomplete one."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return _looks_like_weights(d)


def _looks_like_weights(d) -> bool:
    """Whether a parsed object is a weight dict, even an incomplete one (not any JSON object)."""
    return isinstance(d, dict) and any(k in d for k in ("d_model", "cls_embedding", "layers"))


# The --json files of predlab's tools, known by a key each has written on top since its first version
# (a --gpu-only file of the bench had no "machine" before 2026-12-03): another tool's figures, a
# notebook or a package.json are JSON too, and were replaced by a typo
FIGURES = {"evaluate": "catch_ratio", "bench": "bench_seconds"}
REPLACES = ("weights", *FIGURES)


_WEIGHTS_JSON_START = re.compile(r'\s*\{\s*"(?:%s)"\s*:' % "|".join(SIZE_KEYS))


def _kind_problem(path: Path, replaces: Optional[str]) -> Optional[str]:
    """What the existing file at path should be and is not ("a weight file"), or None."""
    if replaces is None:
        return None
    figures = f"a file of predlab.{replaces}'s figures"     # replaces: checked by output_problem
    try:
        # a hand-written model.js may hold a Latin-1 comment, which read_params reads too
        data = path.read_bytes()
        text = data.decode("utf-8") if replaces in FIGURES else script_text(data, errors="replace")
        if not text.strip():     # an empty file made ready for the output ($(mktemp), say)
            return None
        if replaces in FIGURES:
            d = json.loads(text)
            return None if isinstance(d, dict) and FIGURES[replaces] in d else figures
        # package.json or a file of figures parses too: only a weight file, even a broken one or a
        # placeholder (`window.TRANSFORMER_PARAMS = {};`, `{}`), is replaced. A model.js that sets the
        # page's weights is one even where its text no longer parses (cut short, a slip in a hand edit)
        if WEIGHTS_ASSIGNMENT.match(strip_comments(text.lstrip("\ufeff")).lstrip()):
            return None
        # and a model.json (as predlab writes it: a size key first) cut short or mistyped, as a model.js is
        if _WEIGHTS_JSON_START.match(text.lstrip("\ufeff")):
            return None
        with warnings.catch_warnings():     # what it holds is only looked at: about to be replaced, or kept
            warnings.simplefilter("ignore")
            params = text_to_params(text, str(path))
        return None if not params or _looks_like_weights(params) else "a weight file"
    except (OSError, UnicodeDecodeError, ValueError):    # WeightFormatError and JSONDecodeError too
        return figures if replaces in FIGURES else "a weight file"


def names_stdout(path) -> bool:
    """Whether an output path is this process's stdout: /dev/stdout and its spellings, or the file stdout is
    redirected to (`--json out.json > out.json`). Written to as a file, the JSON was renamed over the table
    that went there before it (a regular file), or the path was refused as a link into /proc (a pipe)."""
    if str(path) in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
        return True
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):    # no such file, or a stdout with no file (io.UnsupportedOperation)
        return False


def refuse_unwritable(parser: argparse.ArgumentParser, flag: str, path: Union[str, Path],
                      directory: bool = False, replaces: Optional[str] = None) -> None:
    """parser.error (exit 2) naming flag when output_problem finds one."""
    problem = output_problem(path, directory, replaces)
    if problem:
        parser.error(f"{flag}: {problem}")


def move_to_previous(files: Sequence[Union[str, Path]], directory: Union[str, Path],
                     keep_links: Union[bool, Sequence[str]] = False, copy: bool = False,
                     into: Optional[Path] = None) -> Path:
    """Move files into directory/previous/<time of the newest>/ (a new folder each time), so that
    nothing of an earlier run or export is overwritten -> that folder. All or none: a move or copy that
    fails (a full disk) puts back what was done, and the error names the file in previous/. A Ctrl-C
    takes effect once all of them are moved.

    A link goes as a copy of what it points to (moved, a relative link pointed at nothing there); the
    link itself is removed, or, with keep_links (True, or the names of the links to keep), left for the
    new file to be written through. copy=True: every file stays where it is and a copy goes, for a file
    about to be replaced atomically: a kill in between leaves it in place. into: a folder of previous/ to
    put them in (another part of the same run's files), when none of their names is taken there."""
    directory = Path(directory)
    if (directory / "previous").exists() and not (directory / "previous").is_dir():
        raise FileExistsError(f"{directory / 'previous'} is a file; earlier files are moved into a folder of "
                              "that name: move it away")
    files = [Path(p) for p in files]
    if into is not None and into.is_dir() and not any(os.path.lexists(into / p.name) for p in files):
        dest, made = into, False
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(max(p.stat().st_mtime for p in files)))
        dest, k = directory / "previous" / stamp, 1
        while dest.exists():
            k += 1
            dest = directory / "previous" / f"{stamp}-{k}"
        dest.mkdir(parents=True)
        made = True
    with deferred_interrupt():        # a Ctrl-C between renames left a run's files split over two folders
        done = []       # (file, whether it was moved rather than copied)
        try:    # the copies first: one that fails leaves every file where it was
            for p in files:
                if p.is_symlink() or copy:
                    _copy(p, dest / p.name)
                    done.append((p, False))
            for p in files:
                if not p.is_symlink() and not copy:
                    move(p, dest / p.name)
                    done.append((p, True))
        except BaseException:
            for p, moved in reversed(done):
                with contextlib.suppress(OSError):      # (what cannot go back stays in previous/)
                    if moved:
                        move(dest / p.name, p)
                    else:
                        (dest / p.name).unlink()
            with contextlib.suppress(OSError):
                if made:
                    dest.rmdir()
                    dest.parent.rmdir()
            raise
        for p in files:
            if p.is_symlink() and not (keep_links if isinstance(keep_links, bool) else p.name in keep_links):
                p.unlink()
    return dest


def _copy(src: Path, dst: Path) -> None:
    """A copy of the file src is or links to (not a hard link: a file written in place later, by an editor say,
    would change the copy too)."""
    # a kill mid-copy leaves a partial file as atomic_write's (which the next run removes), not a cut one by the
    # name; the name cut short, so that a long one still fits the file system's limit with the 14 characters added
    part = None
    try:
        fd, part = tempfile.mkstemp(prefix=f".{dst.name[:200]}.", suffix=".tmp", dir=dst.parent)
        os.close(fd)
        shutil.copy2(src, part)
        os.replace(part, dst)
    except OSError as e:      # the copy's error named the file copied (or the temporary), not the one to be written
        if part is not None:
            Path(part).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(dst)) from None
    except BaseException:
        if part is not None:
            Path(part).unlink(missing_ok=True)
        raise


def move(src: Path, dst: Path) -> None:
    """Rename src to dst; across file systems (previous/ a link to another disk, to free space) a copy, then
    src removed: a rename failed there with "Invalid cross-device link"."""
    try:
        src.rename(dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        _copy(src, dst)
        src.unlink()


def write_keeping(writes: Sequence[Tuple[Path, Callable[[Path], object]]], others: Sequence[Path],
                  directory: Path, into: Optional[Path] = None) -> Optional[Path]:
    """Call each (path, write) as write(path), an atomic write, after keeping a copy of each of `others`
    (files at those paths that must not be lost: other weights, a hand edit) in directory/previous/<time>/
    (or `into`, see move_to_previous) -> the folder they went to, or None. Each stays in place until its
    write replaces it, so a kill in between leaves the folder a model.js; a link stays, and is written
    through (a model.js linked into a page's folder).

    An error carries the paths written as .written and the one whose write failed as .failed; raised after
    a file with a copy was written, the folder of that copy as .kept.

    When a write fails (a full disk), the copies of the files not yet written are dropped (those files are
    as they were), and the error propagates. What was written stays, the copy of what it replaced kept:
    model.js, written before model.json, is what the page loads."""
    others = list(others)
    dest = move_to_previous(others, directory, keep_links=True, copy=True, into=into) if others else None
    written = []
    try:
        for p, write in writes:
            write(p)
            written.append(p)
    except BaseException as e:
        e.written, e.failed = written, p
        if others and any(p in written for p in others):
            e.kept = dest
        with deferred_interrupt():
            for p in others:
                if p not in written:
                    with contextlib.suppress(OSError):
                        (dest / p.name).unlink()
            with contextlib.suppress(OSError):
                if dest is not None and dest != into:
                    dest.rmdir()
                    dest.parent.rmdir()     # previous/, if made for them
        raise
    return dest


def kept_words(others: Sequence[Path], dest: Path, what: str = "") -> str:
    """What write_keeping did with `others`, for a line: "moved model.js to DEST" for a file (replaced, its copy
    in DEST), "kept a copy of the file model.js links to in DEST (written through the link)" for a link."""
    links = [p.name for p in others if p.is_symlink()]
    moved = [p.name for p in others if not p.is_symlink()]
    return "; ".join(([f"moved {', '.join(moved)}{what} to {dest}"] if moved else []) +
                     ([f"kept a copy of the file {' and '.join(links)} {'links' if len(links) == 1 else 'link'} to "
                       f"in {dest} (written through the link)"] if links else []))


def copy_failed(e: OSError, directory: Union[str, Path]) -> bool:
    """Whether e is the failure of a copy into directory/previous/ (write_keeping makes those before any write):
    the files in directory are then as they were."""
    return bool(e.filename) and (Path(directory).absolute() / "previous") in Path(e.filename).absolute().parents


def differs(path: Path, text: str) -> bool:
    """Whether a file is at path that holds other bytes than text: one to keep before writing text there. An
    empty file (made ready for the output, $(mktemp)) is not; an unreadable one is."""
    try:
        return path.is_file() and path.stat().st_size > 0 and path.read_bytes() != text.encode("utf-8")
    except OSError:
        return True


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    """Write text atomically (see atomic_write), as UTF-8 with the text's own line ends. (Text mode wrote
    CRLF on Windows, so every check of a file against the text predlab wrote found other bytes: each resume
    and export kept the run's own model.js in previous/ as "of other weights".)"""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data), binary=True)


def _format_for(path: Path) -> str:
    ext = path.suffix.lower()
    if ext == ".js":
        return "js"
    if ext == ".json":
        return "json"
    raise WeightFormatError(f"{path}: unknown extension {ext!r}; use .js (browser) or .json")


def write_weights(model: Union[TransformerPredator, Mapping], path: Union[str, Path], kept: bool = False) -> Path:
    """Export to model.js or .json (by extension), validated first, written atomically.

    FileExistsError when a file at path is no weight file (a package.json, say), PermissionError when it
    is read-only: it is not replaced, unless kept (the caller has kept a copy: write_keeping). IsADirectoryError
    for a path written as a folder's ("site.js/"), which Path would turn into a file named site.js."""
    problem = folder_spelling_problem(path)
    if problem:
        raise IsADirectoryError(problem)
    problem = unexpanded_home(path)
    if problem:
        raise ValueError(f"write_weights: {problem}")
    path = Path(path)
    fmt = _format_for(path)
    if not isinstance(model, (TransformerPredator, Mapping)):
        raise WeightFormatError(f"write_weights takes a TransformerPredator or a weight dict, not "
                                f"{type(model).__name__}")
    # a dict goes through the model: its checked values as float32 (numpy arrays and scalars
    # welcome), only the keys the browser reads
    params = model_to_params(model if isinstance(model, TransformerPredator) else params_to_model(model))
    validate_params(params)
    sizes = {k: int(params[k]) for k in SIZE_KEYS}
    if sizes != BROWSER_SIZES:
        warnings.warn(f"exporting sizes {sizes}: the stock browser page accepts only {BROWSER_SIZES} and "
                      "falls back to random weights for any other", stacklevel=2)
    # write_weights(model, "package.json") in a notebook: only a weight file is replaced, as by the CLI;
    # and, as by the CLI, not one made read-only (the rename below would replace it all the same)
    if path.is_file() and not path.stat().st_mode & 0o222 and not kept:
        raise PermissionError(f"{path} is read-only; predlab will not replace it (make it writable, or write "
                              "elsewhere)")
    kind = _kind_problem(path, "weights") if path.is_file() and not kept else None
    if kind:
        raise FileExistsError(f"{path} exists and is not {kind}; predlab will not replace it (remove it, or "
                              "write elsewhere)")
    atomic_write_text(path, params_to_text(params, fmt))
    return path


def unexpanded_home(path: Union[str, Path]) -> Optional[str]:
    """Why a path typed as text that begins with ~ or ~user is refused, or None. A shell turns ~ into the home
    folder only at a word's start: --checkpoint_dir=~/ck (or "~/ck", or a notebook's Checkpointer("~/ck"))
    wrote into a folder named ~ under the current one, which rm -rf ~ then removes with the home folder. A
    folder named ~ already there changes nothing (an earlier slip made it); ./~ names one. A Path is code's
    own, not text a user typed: Path("./~/ck") is Path("~/ck"), the ./ dropped."""
    if not isinstance(path, str) or not path.startswith("~"):
        return None
    first = re.split(r"[/\\]" if os.sep == "\\" else "/", path, maxsplit=1)[0]
    home = os.path.expanduser(first)
    # ~model.js, ~nosuchuser: a shell leaves those words as they are too (Windows' expanduser takes any ~name
    # for a user's folder, unchecked; its shells expand ~ alone, where they do at all)
    if home == first or (os.name == "nt" and first != "~"):
        return None
    instead = f": give {home}{path[len(first):]} (./{path} for a file or folder named {first})"
    return (f"{path} begins with {first}, which no shell turned into a home folder (a shell does after a "
            f"space, not after = or in quotes){instead}")


def as_typed(path):
    """A typed path whose Path would say another thing, made absolute; any other as it is. Path("./~/ck") is
    Path("~/ck"): printed, or joined and printed ("saved ~/ck/checkpoint_epoch_3.pt: --resume it"), it sends
    a shell to the home folder, and compared with the folder's absolute path it named another file."""
    if isinstance(path, str) and not path.startswith("~") and str(Path(path)).startswith("~"):
        return os.path.abspath(path)
    return path


def path_problem(path: Union[str, Path]) -> Optional[str]:
    """Why path cannot even be looked at, or None: a folder on the way that this user may not enter (another
    user's home), a name too long, a loop of links. Path.exists and is_dir raise those where they answer
    False for a path that is not there, which is no problem here. And a path of an unexpanded ~."""
    home = unexpanded_home(path)
    if home:
        return home
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        return f"cannot use {path}: {e.strerror or e}"
    except ValueError as e:          # a NUL in the name
        return f"cannot use {path!r}: {e}"
    return None


def not_a_file(path: Union[str, Path], missing: str) -> str:
    """Why path, which is no regular file, cannot be read: `missing` when nothing is there."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return f"{path} is a link to a file that does not exist"
    if path.exists():
        return f"{path} is not a regular file (a pipe, a device or a socket)"
    return missing


# A browser reads a script by its byte order mark, whatever charset the server names: Windows PowerShell's
# `>` and Notepad's "Unicode" write UTF-16 with one. Without one, model.js is UTF-8.
_BOMS = ((codecs.BOM_UTF8, "UTF-8"), (codecs.BOM_UTF16_LE, "UTF-16LE"), (codecs.BOM_UTF16_BE, "UTF-16BE"))


def script_encoding(data: bytes) -> Tuple[str, int]:
    """The encoding a browser reads a script's bytes in -> (codec name, length of the byte order mark)."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return codec, len(bom)
    return "UTF-8", 0


def script_text(data: bytes, errors: str = "strict") -> str:
    """A model.js's bytes as the browser reads them (see script_encoding), without the byte order mark."""
    codec, start = script_encoding(data)
    return data[start:].decode(codec, errors)


def read_params(path: Union[str, Path], require_browser_sizes: bool = False) -> Dict:
    """Read and validate a weight file -> the weight dict. With require_browser_sizes, sizes other than
    48/4/3/96 are refused first, as the page refuses them whatever else the file holds."""
    path = Path(path)
    if path.is_dir():     # not_a_file called it "a pipe, a device or a socket"
        raise FileNotFoundError(f"{path} is a directory, not a weight file (say {path / 'model.js'})")
    if not path.is_file():
        raise FileNotFoundError(not_a_file(path, f"no weight file at {path}"))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightFormatError(f"cannot read {path}: {e.strerror or e}") from None
    codec, bom = script_encoding(data)
    try:
        params = text_to_params(script_text(data), str(path))
    except UnicodeDecodeError as e:
        # A browser reads bytes that are not UTF-8 as U+FFFD: harmless in a comment (a hand-written
        # "Modèle" saved as Latin-1), a syntax error anywhere else. So does this reader.
        text = script_text(data, errors="replace")
        try:
            if any("\ufffd" in piece for is_code, piece in _split_code(text) if is_code):
                raise WeightFormatError(f"not {codec} outside a comment")
            params = text_to_params(text, str(path))
        except WeightFormatError:
            # a UTF-16 file cut at an odd byte, a UTF-8 one inside a character of several bytes
            if e.reason in ("truncated data", "unexpected end of data") and e.end >= len(data) - bom:
                raise WeightFormatError(f"{path}: a {codec} text cut in the middle of a character at its end: is "
                                        "it cut short?") from None
            checkpoint = path.suffix == ".pt" or torch_file_start(data)
            hint = " (a checkpoint? `python -m predlab.export` turns one into model.js)" if checkpoint else ""
            raise WeightFormatError(f"{path}: not a {codec} text weight file (byte {bom + e.start}: {e.reason})"
                                    f"{hint}") from None
    validate_params(params, require_browser_sizes)
    unused = unused_keys(params)
    if unused:
        more = f" and {len(unused) - 6} more" if len(unused) > 6 else ""
        warnings.warn(f"{path}: the page does not read {', '.join(unused[:6])}{more}, so the weights there are not "
                      "used, by the page or by predlab (a misspelt key, or a part of a model the page does not have?)",
                      stacklevel=2)
    return params


def torch_file_start(head: bytes) -> bool:
    """Whether bytes begin as torch.save writes a file, whatever its name: a zip, or a pickle (torch
    before 1.6); a truncated file too, which zipfile does not know as a zip."""
    return head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"


def unused_keys(params: Mapping) -> List[str]:
    """The keys of a valid weight dict that the page does not read and that hold arrays: weights of a model
    trained elsewhere (a final_ln_scale), or a misspelt copy of a key. A note or a version number is no weight."""
    def holds_arrays(v) -> bool:
        return isinstance(v, (list, tuple)) or isinstance(v, Mapping) and any(map(holds_arrays, v.values()))

    def extra(d: Mapping, known, at: str) -> List[str]:
        return [at + str(k) for k, v in d.items() if k not in known and holds_arrays(v)]
    top = (*SIZE_KEYS, *(k.split(".")[0] for k in expected_shapes(1, 1, 1) if not k.startswith("layers")), "layers")
    out = extra(params, top, "") + extra(params["type_embeddings"], TOKEN_TYPES, "type_embeddings.")
    for i, layer in enumerate(params["layers"]):
        out += extra(layer, LAYER_KEYS, f"layers[{i}].")
    return out


def read_weights(path: Union[str, Path]) -> TransformerPredator:
    """A TransformerPredator (eval mode) from a model.js or .json file."""
    return params_to_model(read_params(path))


def looked_in(path: Union[str, Path]) -> str:
    """The words " (looked for in CWD)" for a relative path, else "": run from notebooks/ or another
    subfolder, the README's paths (from the repository root) miss a file that is there all the same."""
    return "" if Path(path).is_absolute() else f" (looked for in {Path.cwd()})"


def load_model_file(path: Union[str, Path], what: str = "") -> TransformerPredator:
    """The model (CPU, eval mode) in a weight file (.js / .json) or a checkpoint (.pt, or any
    torch.save archive, whatever its name). FileNotFoundError for a missing file or a folder
    (`what`, say " (give a checkpoint .pt ...)", ends the message of a missing one);
    WeightFormatError / CheckpointError (ValueErrors) for a file that holds no usable model."""
    return read_model_file(path, what)[0]


def read_model_file(path: Union[str, Path], what: str = "") -> Tuple[TransformerPredator, Optional[Mapping]]:
    """load_model_file's model, and the checkpoint dict it came from (None for a weight file): one
    read gives both, so what is said of the model is of the weights read."""
    if isinstance(path, str) and not path.strip():     # Path("") is ".", "a directory"
        raise FileNotFoundError(f"no file name given{what}")
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a directory; give a checkpoint or weight file in it "
                                f"(say {path / 'best_model.pt'})")
    if not path.is_file():
        raise FileNotFoundError(not_a_file(path, f"no such file: {path}{looked_in(path)}{what}"))
    # a torch.save archive is a checkpoint whatever its name (read as text, one named x.js was "not UTF-8")
    if path.suffix.lower() in (".js", ".json") and not zipfile.is_zipfile(path):
        return read_weights(path), None
    from .checkpoint import load_checkpoint_dict, model_from_checkpoint
    ck = load_checkpoint_dict(path)
    return model_from_checkpoint(ck, path), ck


def checkpoint_words(ck: Optional[Mapping]) -> str:
    """"the model of epoch 28 (val MSE 0.00165)" for a checkpoint dict, "" where it does not say."""
    epoch = ck.get("epoch") if isinstance(ck, Mapping) else None
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        return ""
    history = ck.get("history")
    last = history[-1] if isinstance(history, (list, tuple)) and history else None
    val = last.get("val_loss") if isinstance(last, Mapping) else None
    mse = f" (val MSE {val:.5f})" if isinstance(val, float) and math.isfinite(val) else ""
    return f"the model of epoch {epoch}{mse}"


def main(argv: List[str] = None) -> int:
    """Export a checkpoint (or convert a weight file) to model.js / .json."""
    with command_line():     # a SIGTERM stops it as a Ctrl-C does: the file is whole or not begun
        return _main(argv)


def _main(argv: List[str]) -> int:
    ap = FlagParser(prog="python -m predlab.export", description=main.__doc__, short_usage="SOURCE --out OUT [flags]")
    ap.add_argument("source", help="checkpoint (.pt) or weight file (.js/.json)")
    ap.add_argument("--out", required=True, help="output path ending in .js or .json")
    ap.add_argument("--any-size", action="store_true",
                    help=f"write sizes other than the browser page's {BROWSER_SIZES} too (the stock page "
                         "refuses them and runs random weights)")
    args = ap.parse_args(argv)
    args.source, args.out = as_typed(args.source), as_typed(args.out)
    src, out = Path(args.source), Path(args.out)
    for name, given in (("the checkpoint or weight file to export", args.source), ("--out", args.out)):
        if not given.strip():           # Path("") is ".": "'.' is a directory", "got ."
            ap.error(f"{name}: no file name given")
    problem = path_problem(args.source)     # the text as typed (an unexpanded ~ is checked on text)
    if problem:
        ap.error(problem)
    if src.is_dir():
        ap.error(f"{src} is a directory; pass a checkpoint or weight file in it (say {src / 'best_model.pt'})")
    if not src.is_file():
        ap.error(not_a_file(src, f"no such file: {src}{looked_in(src)}"))
    if out.name.lower() in (".js", ".json"):      # a name that is all extension: Path has it as a stem, no suffix
        ap.error(f"--out: {out} has an extension but no name before it: give one, say {out.with_name('model' + out.name)}")
    if out.suffix.lower() not in (".js", ".json"):
        ap.error(f"--out must end in .js or .json, got {out}")
    refuse_unwritable(ap, "--out", args.out, replaces="weights")     # as given: Path drops a last "/"
    before = _file_id(out)
    try:
        return _export(ap, args, src, out)
    except KeyboardInterrupt as e:   # atomic_write finishes a file it began: out is the old file or the whole new one
        done = _file_id(out) not in (None, before)
        word, code = stop_words(e)
        print(f"\n{word}: {out} was written" if done else f"\n{word}: nothing written to {out}", file=sys.stderr)
        return code


def _file_id(path: Path):
    """What tells a file replaced by os.replace from the one before (a new inode), or None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _export(ap: argparse.ArgumentParser, args, src: Path, out: Path) -> int:
    """main's work once the arguments are checked: read src, write out."""
    try:
        with warnings.catch_warnings():
            if out.exists() and out.resolve() == src.resolve():
                # this is the conversion the warning offers: it said so again while doing it
                warnings.filterwarnings("ignore", message=".* is plain JSON, with no `window.TRANSFORMER_PARAMS")
            model, ck = read_model_file(src)
    except (WeightFormatError, ValueError, FileNotFoundError) as e:   # CheckpointError is a ValueError
        ap.error(str(e) if str(src) in str(e) else f"{src}: {e}")
    except OSError as e:   # reading, not writing: nothing of --out was touched
        ap.error(f"cannot read {src}: {e.strerror or e}")
    try:
        sizes = {k: getattr(model.config, k) for k in SIZE_KEYS}
        if sizes != BROWSER_SIZES and not args.any_size:
            ap.error(f"{src} has sizes {sizes}; the stock browser page accepts only {BROWSER_SIZES} and would "
                     "silently run random weights instead. Pass --any-size to write it anyway")
        kept = None
        with warnings.catch_warnings(), deferred_interrupt():    # not a folder left with neither file
            if args.any_size:                     # asked for: no warning about the sizes
                warnings.simplefilter("ignore")
            text = params_to_text(model_to_params(model), _format_for(out))
            kept = write_keeping([(out, lambda p: write_weights(model, p, kept=True))],
                                 [out] if differs(out, text) else [], out.parent)
            if kept is not None:    # said now: a Ctrl-C held until the block ends stops what follows it
                print(f"the {out.name} it replaces, of other weights or text, is in {kept}")
    except (WeightFormatError, ValueError, FileNotFoundError) as e:   # CheckpointError is a ValueError
        ap.error(str(e) if str(src) in str(e) else f"{src}: {e}")
    except OSError as e:
        if copy_failed(e, out.parent):      # the copy of the file it replaces, made first: out is untouched
            print(f"{ap.prog}: error: cannot keep a copy of {out} in {Path(e.filename).parent}: "
                  f"{e.strerror or e}; {out} is as it was", file=sys.stderr)
        else:
            print(f"{ap.prog}: error: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 1
    words = checkpoint_words(ck)
    print(f"wrote {out}: {words} in {src}" if words else f"wrote {out}: the weights of {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
