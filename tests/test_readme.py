"""The README tells the truth: every train flag is documented with its default, its commands parse,
and its Python API code runs."""
import re
from pathlib import Path

from predlab.train import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_documents_every_train_flag():
    text = README.read_text()
    parser = build_parser()
    flags = {s for a in parser._actions for s in a.option_strings
             if s.startswith("--") and s != "--help" and not s.startswith("--no-")
             and "-" not in s[2:]}
    table = set(re.findall(r"^\| `(--[a-z0-9_]+)`", text, flags=re.M))
    assert flags - table == set(), f"flags missing from the README table: {sorted(flags - table)}"
    assert table - flags == set(), f"README table names flags that do not exist: {sorted(table - flags)}"


def test_readme_gives_the_two_commands():
    text = README.read_text()
    assert "make train" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_gives_each_train_flags_default():
    """The table's default column is what a run gets without the flag (a default changed in the
    config, and the README went on promising the old one)."""
    parser = build_parser()
    defaults = {s: ("off" if a.default is False and a.nargs == 0 and a.const is True else str(a.default))
                for a in parser._actions for s in a.option_strings if s != "--help"}
    rows = re.findall(r"^\| `(--[a-z0-9_]+)`(?: / `--no-[a-z0-9_]+`)? \| ([^|]+?) \|", README.read_text(), flags=re.M)
    assert len(rows) == len({f for f, _ in rows}) > 40
    wrong = {flag: (shown, defaults[flag]) for flag, shown in rows if flag in defaults and shown != defaults[flag]}
    assert wrong == {}, f"README default (shown, real): {wrong}"


class _Parsed(BaseException):
    """Raised once a command line has parsed, so that no command runs."""


def test_readme_commands_parse_with_their_tools_flags(monkeypatch):
    """Every `python -m predlab.X ...` command the README gives (and `make train ARGS=...`) is accepted by
    that tool's parser: a flag renamed in a tool, and a user pasting the README's command got exit code 2."""
    import argparse
    import importlib

    text = README.read_text()
    # not the Layout's "(python -m predlab.export)", which names the tool, not a command to run
    commands = re.findall(r"(?<!\()python -m predlab\.(\w+)([^`#)\n]*)", text)
    commands += [("train", args) for args in re.findall(r'make train ARGS="([^"]*)"', text)]
    assert {m for m, _ in commands} == {"train", "evaluate", "export", "demo", "bench"}
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    for module, args in commands:
        argv = args.replace("[", " ").replace("]", " ").split()    # [--port 8000]: optional in a usage line
        main = importlib.import_module(f"predlab.{module}").main
        try:
            main(argv)
        except _Parsed:
            continue
        except SystemExit as e:
            raise AssertionError(f"README: `python -m predlab.{module}{args}` does not parse (exit {e.code})")
        raise AssertionError(f"predlab.{module}.main did not parse its arguments")


def _section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


# the README's sizes -> a few episodes and one epoch; each must be found once, so that a snippet
# that changed is looked at again rather than run at full size
API_SIZES = {"train_episodes=200": "train_episodes=4", "val_episodes=50": "val_episodes=2",
             "num_epochs=30": "num_epochs=1", "gen.generate(50,": "gen.generate(2,",
             "EpisodeSource(gen, 200)": "EpisodeSource(gen, 4)", "trainer.train(20)": "trainer.train(1)"}


def test_readme_python_api_snippets_run(tmp_path):
    """The "Python API" section's code runs as written (at a few episodes): a function or argument
    renamed in predlab, and a user pasting the README's code got a traceback."""
    import subprocess
    import sys

    code = "\n".join(re.findall(r"```python\n(.*?)```", _section(README.read_text(), "Python API"), flags=re.S))
    assert code.count("```") == 0 and "create_trainer(" in code and "SupervisedTrainer(" in code
    for was, tiny in API_SIZES.items():
        assert code.count(was) == 1, f"the README's Python API code no longer has {was!r}: update API_SIZES"
        code = code.replace(was, tiny)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^epoch +1  train ", r.stdout, flags=re.M)                  # PrintLogger's line
    assert "'model_action'" in r.stdout and "'teacher_action'" in r.stdout        # evaluate_sample's dict
    assert "the stock browser page accepts only" in r.stderr                      # "exports, but warns"
    for f in ("checkpoints/best_model.pt", "checkpoints/model.js", "checkpoints64/best_model.pt", "model64.js"):
        assert (tmp_path / f).is_file(), f


def test_readme_names_the_fields_create_trainer_warns_of():
    """The Python API's comment lists the TrainConfig fields that create_trainer takes but leaves to the
    command line (it warns of them): keep_checkpoints was missing from it."""
    from predlab.train import CLI_ONLY_FIELDS

    said = re.search(r"create_trainer's ([a-z_, ]+?) are the CLI's", README.read_text())
    assert said, "the README no longer says which create_trainer arguments are the CLI's"
    assert set(re.split(r", | and ", said.group(1))) == set(CLI_ONLY_FIELDS)
