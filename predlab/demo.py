"""The browser demo: serve predlab/js/demo.html with a model.js on 127.0.0.1.

`python -m predlab.demo [MODEL_JS] [--port P] [--no-browser]` serves the page, prints its URL
and opens it; Ctrl-C stops it. Standard library only (http.server). serve() is the importable
part: the tests start it on a free port and point headless Chromium at it.
"""
from __future__ import annotations

import mimetypes
import re
import sys
import threading
import time
import warnings
import webbrowser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

from .config import FlagParser, bounded_number

JS_DIR = Path(__file__).resolve().parent / "js"
DEFAULT_MODEL = Path("checkpoints") / "model.js"
PAGE_FILES = ("demo.html", "transformer.js", "world.js")

Content = Union[str, bytes, Path]


def _routes(model_js: Path, extra: Optional[Mapping[str, Content]]) -> Dict[str, Content]:
    """URL path -> file or bytes. Only these paths are served; everything else is a 404."""
    routes: Dict[str, Content] = {"/": JS_DIR / "demo.html", "/model.js": model_js}
    for name in PAGE_FILES:
        routes["/" + name] = JS_DIR / name
    for path, content in (extra or {}).items():
        routes["/" + path.lstrip("/")] = content
    return routes


def _handler(routes: Dict[str, Content], quiet: bool):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            path = urlsplit(self.path).path
            content = routes.get(path)
            if content is None:
                self.send_error(404, f"not found: {path}")
                return
            try:
                body = content.encode() if isinstance(content, str) else \
                    content if isinstance(content, bytes) else Path(content).read_bytes()
            except OSError as e:
                self.send_error(404, f"cannot read {content}: {e.strerror}")
                return
            name = "index.html" if path == "/" else path
            ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype.endswith("javascript") or ctype.endswith("json"):
                ctype += "; charset=utf-8"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")  # a re-exported model.js shows on reload
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            if not quiet:
                super().log_message(fmt, *args)

    return Handler


def serve(model_js: Union[str, Path], port: int = 0, extra: Optional[Mapping[str, Content]] = None,
          quiet: bool = True) -> Tuple[ThreadingHTTPServer, str]:
    """Serve the demo page and model_js on 127.0.0.1 from a daemon thread -> (server, url).

    port 0 picks a free port. extra maps more URL paths to files, bytes or text (tests use it
    for input fixtures). Stop with server.shutdown(); server.server_close().
    """
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(_routes(Path(model_js), extra), quiet))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="predlab-demo", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


# An `export` or `import` statement (not `import(...)`, nor a key named export or import), which only a
# module may hold: the page loads model.js as a plain script
_MODULE_STATEMENT = re.compile(r"(?:^|[;}])[ \t]*((?:export\b\s*(?:(?:default|const|let|var|function|class)\b|[{*])"
                               r"|import\b\s*(?:[{*\"']|[\w$]+\s*(?:,|from\b)))[^\n;]*)", re.M)


UNCHECKED = "unchecked: "


def _page_problem(model: Path) -> Optional[str]:
    """Why the page would not run this file's weights, or None. "error: ..." for a file that is not
    a model.js at all (plain JSON, which the page cannot load as a script); UNCHECKED + why, for a
    script that sets the weights in a way predlab cannot read (the page may well run it)."""
    from .export import (DIRECTIVES, PUBLISHES_BINDING, SETS_PAGE_GLOBAL, PageOnlyError, WeightFormatError,
                         _split_code, read_params, script_text, use_strict)
    try:   # as the browser reads it (UTF-16 by its byte order mark): bytes that are not UTF-8 become U+FFFD,
        # harmless in a comment (a Latin-1 "Modèle"); read_params below names them anywhere else
        pieces = _split_code(script_text(model.read_bytes(), errors="replace"), str(model))
        code = "".join(piece for _, piece in pieces)       # without comments
    except OSError as e:
        return f"it is not a readable file ({e.strerror or e})"
    except PageOnlyError as e:          # a template literal's ${...}: code, which the page may well run
        return UNCHECKED + str(e)
    except WeightFormatError as e:      # a comment or string left open: the page's script would not run
        return str(e)

    text = code.strip()
    if text.startswith("{"):
        said = (f"error: {model} is plain JSON; the page loads a model.js, a script that sets "
                "window.TRANSFORMER_PARAMS. Training writes model.js beside model.json")
        try:        # the command offered must work: the weights as the page would take them
            with warnings.catch_warnings():     # (its own "plain JSON" warning says the same as this error)
                warnings.simplefilter("ignore")
                read_params(model, require_browser_sizes=True)
        except WeightFormatError as e:
            return f"{said}. Converted, it would be refused as well: {e}"
        from .train import shell_words
        # beside it (or in its place, a .js): `--out model.js` wrote into the current folder, not the one named
        out = model if model.suffix.lower() == ".js" else model.with_suffix(".js")
        return f"{said}; or convert it:\n  {shell_words('python', '-m', 'predlab.export', model, '--out', out)}"
    # searched outside strings ("note": "run 7; export default weights" was taken for a statement), at the
    # same places: what is between each string's quotes is blanked, not removed (`import './x.js'` stays one)
    module = _MODULE_STATEMENT.search("".join(
        piece if is_code else piece[0] + re.sub(r"[^\n]", " ", piece[1:-1]) + piece[-1] for is_code, piece in pieces))
    if module:      # predlab reads the object and skips the line; the page's script does not run at all
        line, statement = code.count("\n", 0, module.start(1)) + 1, code[module.start(1):module.end(1)].strip()
        statement = statement if len(statement) <= 60 else statement[:57] + "..."
        return (f"its `{statement}` at line {line} is ES module syntax, a syntax error in the plain "
                "<script> that loads model.js, so none of the file runs (remove that line)")
    assignment = re.match(rf"{DIRECTIVES}(?:{SETS_PAGE_GLOBAL})\s*=\s*", text)
    # `const TRANSFORMER_PARAMS = {...}; window.TRANSFORMER_PARAMS = TRANSFORMER_PARAMS;`: the page gets the
    # object, which read_params below checks (it reads that form)
    published = (re.match(rf"{DIRECTIVES}(?:let|const)\s+TRANSFORMER_PARAMS\s*=\s*{{", text)
                 and re.search(rf"}}[\s;]*{PUBLISHES_BINDING.pattern}\Z", text))
    if not assignment and not published:
        # Named anywhere but in a let or const: in a function, after other code, through `(window).` or an alias
        # of window: the page may well set it, and predlab cannot tell without running the code
        named = next((m for m in re.finditer(r"(?<![\w$])TRANSFORMER_PARAMS(?![\w$])", code)
                      if not re.search(r"\b(?:let|const)\s+$", code[max(0, m.start() - 12):m.start()])), None)
        if named:
            first, line = text.split("\n", 1)[0].strip(), code.count("\n", 0, len(code) - len(code.lstrip())) + 1
            first = first if len(first) <= 40 else first[:37] + "..."
            return (UNCHECKED + f"it opens with `{first}` (line {line}), "
                    "code that predlab does not run (it reads a file that opens with `window.TRANSFORMER_PARAMS = "
                    f"{{...}}`), and the page may set its weights there (TRANSFORMER_PARAMS is at line "
                    f"{code.count(chr(10), 0, named.start()) + 1})")
        return "it does not set window.TRANSFORMER_PARAMS (`let` and `const` do not set it on window)"
    if assignment and re.match(rf"{DIRECTIVES}TRANSFORMER_PARAMS", text) and use_strict(text[:assignment.end()]):
        return ('its "use strict" makes the bare `TRANSFORMER_PARAMS = ...` an error in the browser '
                "(write `window.TRANSFORMER_PARAMS = ...`)")
    # Object.freeze({...}) or a variable: code predlab does not run (an object, or nothing, is read below)
    if assignment and re.compile(r"[A-Za-z_$(]").match(text, assignment.end()):
        value = text[assignment.end():].split("\n", 1)[0].strip()
        value = value if len(value) <= 40 else value[:37] + "..."
        return (UNCHECKED + f"it sets window.TRANSFORMER_PARAMS to `{value}`, code that predlab does not run "
                "(it reads an object written out: `window.TRANSFORMER_PARAMS = {...}`)")
    try:   # sizes first: the page refuses other sizes even where predlab cannot hold a number (1e39)
        read_params(model, require_browser_sizes=True)
    except PageOnlyError as e:      # 1e39: the page runs it, predlab's float32 model cannot hold it
        return UNCHECKED + str(e)
    except Exception as e:  # noqa: BLE001 (any reason the page would refuse it)
        return str(e)
    return None


def _torch_file(path: Path) -> bool:
    """A file torch.save wrote (whole or cut short): no text the page can run."""
    from .export import torch_file_start
    try:
        with open(path, "rb") as f:
            return torch_file_start(f.read(4))
    except OSError:          # unreadable: the reader says why
        return False


def wait_for_ctrl_c() -> None:
    """Until a Ctrl-C (KeyboardInterrupt), in short sleeps: Windows' Python before 3.14 does not break an
    endless wait on a lock (threading.Event().wait()) for one."""
    while True:
        time.sleep(0.5)


def main(argv=None) -> int:
    """CLI: serve the demo with a model.js until Ctrl-C."""
    try:
        from .export import command_line
        # a closed stdout (`| head -1`) is exit code 141, not a traceback. A SIGTERM keeps its default handling:
        # the demo writes no file, and a service manager stopping it expects it to die of the signal
        with command_line(sigterm=False):
            return _main(argv)
    except KeyboardInterrupt:      # while it reads model.js, before it serves (not in predlab's own import,
        # torch's with it, which runs before main: that one is Python's traceback, as for any script)
        print("\ninterrupted before the demo started", file=sys.stderr)
        return 130


def _main(argv) -> int:
    # the other tools' parser: an error under a one-line usage, and --port -1e3 read as a value (its own error)
    ap = FlagParser(prog="python -m predlab.demo", description=__doc__.splitlines()[0], short_usage="[MODEL_JS] [flags]")
    ap.add_argument("model_js", nargs="?", default=str(DEFAULT_MODEL),
                    help=f"the exported weights (default {DEFAULT_MODEL})")
    ap.add_argument("--port", type=bounded_number(int, 0, 65535), default=8000,
                    help="port on 127.0.0.1 (0 picks a free one; default 8000)")
    ap.add_argument("--no-browser", action="store_true", help="only print the URL")
    args = ap.parse_args(argv)
    from .export import as_typed
    args.model_js = as_typed(args.model_js)
    if not args.model_js.strip():       # Path("") is ".", which read as "the current folder is a directory"
        print(f"error: no model.js given (the default is {DEFAULT_MODEL})", file=sys.stderr)
        return 2
    model = Path(args.model_js)
    from .export import path_problem
    problem = path_problem(args.model_js)     # the text as typed (an unexpanded ~ is checked on text)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if model.is_dir():
        print(f"error: {model} is a directory; pass the model.js in it (say {model / 'model.js'})", file=sys.stderr)
        return 2
    if model.is_file() and _torch_file(model):
        print(f"error: {model} is a checkpoint; the page needs its browser weights. Export them first:\n"
              f"  python -m predlab.export {model} --out model.js\n"
              f"then pass model.js.", file=sys.stderr)
        return 2
    if not model.is_file() and (model.exists() or model.is_symlink()):
        from .export import not_a_file
        print(f"error: {not_a_file(model, '')}", file=sys.stderr)
        return 2
    if not model.is_file():
        from .export import looked_in
        print(f"error: no model at {model}{looked_in(model)}. Train one first (it writes {DEFAULT_MODEL}, "
              f"the default here):\n"
              f"  python -m predlab.train\n"
              f"or export a checkpoint there:\n"
              f"  python -m predlab.export CHECKPOINT --out {model}\n"
              f"or pass the path of a model.js.", file=sys.stderr)
        return 2
    with warnings.catch_warnings(record=True) as said:   # the reader's warnings (keys the page does not read)
        warnings.simplefilter("always")
        problem = _page_problem(model)
    for w in said:
        print(f"warning: {w.message}", file=sys.stderr)
    if problem and problem.startswith("error: "):
        print(problem, file=sys.stderr)
        return 2
    if problem and problem.startswith(UNCHECKED):
        print(f"warning: predlab cannot check that the page runs {model}: {problem[len(UNCHECKED):]}. "
              "If the page refuses it, it says so in a red banner and runs the teacher", file=sys.stderr)
    elif problem:   # the page shows its own banner, but say it here too
        print(f"warning: the page will refuse {model} and run the teacher instead: {problem}", file=sys.stderr)
    try:
        server, url = serve(model, args.port, quiet=False)
    except OSError as e:
        print(f"error: cannot listen on 127.0.0.1:{args.port}: {e.strerror} (try --port 0)", file=sys.stderr)
        return 2
    try:     # (a closed stdout at the first line shuts the server down too)
        print(f"predlab demo with {model} at {url}  (Ctrl-C stops it)", flush=True)
        if not args.no_browser:
            webbrowser.open(url)
        wait_for_ctrl_c()
    except KeyboardInterrupt:
        print("\nstopped")
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
