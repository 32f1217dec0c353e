"""The Makefile's set-up, which `make train` and `make test` both run first: a Python that torch's
pinned wheels do not cover is refused before anything is made, and a `.venv` without pip is made again."""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = shlex.quote(sys.executable)        # paths quoted for the scripts' shell and the recipes' (a TMPDIR with a space)
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _project(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return shlex.quote(str(path))


# the Makefile's check that a Python makes venvs before it removes .venv: passed, and not recorded
MAKES_VENVS_ELSEWHERE = '[ "$1" = -m ] && [ "$2" = venv ] && [ "$3" != .venv ] && exit 0\n'


def _make(project, *args):
    return subprocess.run(["make", "-C", str(project), ".venv/.installed-stamp", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("version", [(3, 9), (3, 15)])
def test_a_python_without_torchs_wheels_is_refused_by_name(tmp_path, version):
    project = _project(tmp_path)
    # this interpreter, told it is another version, for the Makefile's check alone
    fake = _script(tmp_path / "python-other", f'[ "$1" = -c ] || exit 9\nexec {PY} -c '
                   f'"$(printf %s "$2" | sed "s/sys.version_info\\[:2\\]/{version}/")"\n')
    r = _make(project, f"PYTHON={fake}")
    assert r.returncode != 0
    assert f"is {version[0]}.{version[1]}: name another with PYTHON=" in r.stderr
    assert "Python 3.10 to 3.14" in r.stderr
    assert not (project / ".venv").exists()


def test_a_venv_without_pip_is_made_again(tmp_path):
    project = _project(tmp_path)
    (project / ".venv" / "bin").mkdir(parents=True)
    # what `python -m venv` leaves when ensurepip fails: a python, and no pip
    _script(project / ".venv" / "bin" / "python", "exit 1\n")
    (project / ".venv" / "left").write_text("")
    log = tmp_path / "calls"
    # the Python the Makefile makes venvs with: it passes the version check and records `-m venv`
    fake = _script(tmp_path / "python-host", f'[ "$1" = -c ] && exec {PY} "$@"\n{MAKES_VENVS_ELSEWHERE}'
                   f'echo "$@" >> {shlex.quote(str(log))}\nexit 7\n')
    r = _make(project, f"PYTHON={fake}")
    assert r.returncode != 0          # the fake made no venv
    assert log.read_text().split("\n")[0] == "-m venv .venv"
    assert not (project / ".venv" / "left").exists()


def test_a_venv_of_a_python_torch_does_not_cover_is_made_again(tmp_path):
    """make on Python 3.15 left a .venv with pip whose torch install failed; `make train PYTHON=python3.12`, as
    the refusal advises, reused that .venv and failed at the same pin."""
    project = _project(tmp_path)
    (project / ".venv" / "bin").mkdir(parents=True)
    # a 3.15 python: the version check fails, pip answers
    _script(project / ".venv" / "bin" / "python", '[ "$1" = -c ] && exit 1\nexit 0\n')
    log = tmp_path / "calls"
    fake = _script(tmp_path / "python-host", f'[ "$1" = -c ] && exec {PY} "$@"\n{MAKES_VENVS_ELSEWHERE}'
                   f'echo "$@" >> {shlex.quote(str(log))}\nexit 7\n')
    r = _make(project, f"PYTHON={fake}")
    assert r.returncode != 0 and log.read_text().split("\n")[0] == "-m venv .venv"


def test_a_venv_with_pip_is_reused(tmp_path):
    project = _project(tmp_path)
    (project / ".venv" / "bin").mkdir(parents=True)
    log = tmp_path / "calls"
    # (its -c checks run: it is this interpreter's version, as the Python named is)
    _script(project / ".venv" / "bin" / "python",
            f'echo "$@" >> {shlex.quote(str(log))}\n[ "$1" = -c ] && exec {PY} "$@"\nexit 0\n')
    (project / ".venv" / "kept").write_text("")
    fake = _script(tmp_path / "python-host", f'[ "$1" = -c ] && exec {PY} "$@"\nexit 7\n')
    r = _make(project, f"PYTHON={fake}")
    assert r.returncode == 0, r.stderr
    assert (project / ".venv" / "kept").exists()
    calls = log.read_text().splitlines()      # pip's check after its version's
    version_check = "-c import sys; assert (3, 10) <= sys.version_info[:2] < (3, 15)"
    assert calls.index("-m pip --version") > calls.index(version_check)
    assert "-m pip install" in log.read_text()


def _python_of(path: Path, version, log: Path) -> str:
    """A python that says it is `version` to the Makefile's checks (run by this interpreter) and records
    any other call (`-m pip ...`, `-m venv ...`), which it fails."""
    return _script(path, f'[ "$1" = -c ] && exec {PY} -c '
                         f'"$(printf %s "$2" | sed "s/sys.version_info\\[:2\\]/{version}/")"\n{MAKES_VENVS_ELSEWHERE}'
                         f'echo "$@" >> {shlex.quote(str(log))}\n[ "$2" = pip ] && [ "$3" = --version ]\n')


@pytest.mark.parametrize("named", ["command line", "environment"])
def test_python_named_on_the_command_line_remakes_a_venv_of_another_version(tmp_path, named):
    """`make train PYTHON=python3.12` with a .venv of 3.11 made and up to date: make said nothing, did
    nothing, and trained on 3.11. A PYTHON in the environment (set for other tools) changes nothing."""
    project = _project(tmp_path)
    (project / ".venv" / "bin").mkdir(parents=True)
    venv_log, host_log = tmp_path / "venv-calls", tmp_path / "host-calls"
    _python_of(project / ".venv" / "bin" / "python", (3, 11), venv_log)
    (project / ".venv" / ".installed-stamp").write_text("")       # newer than pyproject.toml: up to date
    host = _python_of(tmp_path / "python3.12", (3, 12), host_log)
    if named == "command line":
        r = _make(project, f"PYTHON={host}")
        assert host_log.read_text().split("\n")[0] == "-m venv .venv", r.stdout + r.stderr
        assert not (project / ".venv").exists()          # (the fake made none)
    else:
        r = subprocess.run(["make", "-C", str(project), ".venv/.installed-stamp"], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "PYTHON": host})
        assert r.returncode == 0 and "up to date" in r.stdout and not host_log.exists()


def test_python_named_of_the_venvs_version_keeps_an_up_to_date_venv(tmp_path):
    project = _project(tmp_path)
    (project / ".venv" / "bin").mkdir(parents=True)
    log = tmp_path / "calls"
    _python_of(project / ".venv" / "bin" / "python", (3, 12), log)
    (project / ".venv" / ".installed-stamp").write_text("")
    r = _make(project, f"PYTHON={_python_of(tmp_path / 'python3.12', (3, 12), log)}")
    assert r.returncode == 0 and "up to date" in r.stdout and not log.exists()


def _runs(python) -> bool:
    try:
        return subprocess.run([python, "-c", "pass"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


OLD_PYTHONS = [p for p in (*map(str, Path.home().glob(".pyenv/versions/2.*/bin/python")), shutil.which("python2"),
                           shutil.which("python2.7"), shutil.which("python3.5")) if p and _runs(p)][:1]


@pytest.mark.skipif(not OLD_PYTHONS, reason="no Python 2 or 3.5 here")
def test_a_python_2_is_refused_by_name_not_with_a_syntax_error(tmp_path):
    """The version check was an f-string: a Python 2 named by mistake said `SyntaxError: invalid syntax`."""
    project = _project(tmp_path)
    r = _make(project, f"PYTHON={shlex.quote(OLD_PYTHONS[0])}")
    assert r.returncode != 0 and "SyntaxError" not in r.stderr
    assert "predlab needs Python 3.10 to 3.14" in r.stderr and "name another with PYTHON=" in r.stderr
    assert not (project / ".venv").exists()


def test_a_python_that_cannot_make_venvs_leaves_the_venv_there(tmp_path):
    """`make train PYTHON=python3.12` on Debian without python3.12-venv removed the working .venv of 3.11, then
    failed to make one: the next make downloaded torch again."""
    project = _project(tmp_path)
    (project / ".venv" / "bin").mkdir(parents=True)
    log = tmp_path / "calls"
    _python_of(project / ".venv" / "bin" / "python", (3, 11), log)
    (project / ".venv" / "kept").write_text("")
    host = _script(tmp_path / "python3.12", f'[ "$1" = -c ] && exec {PY} -c '
                   f'"$(printf %s "$2" | sed "s/sys.version_info\\[:2\\]/(3, 12)/")"\n'
                   'echo "No module named ensurepip" >&2\nexit 1\n')
    r = _make(project, f"PYTHON={host}")
    assert r.returncode != 0 and "cannot make a virtual environment" in r.stderr and "python3-venv" in r.stderr
    assert (project / ".venv" / "kept").exists()


def test_a_first_venv_is_made_without_a_check_elsewhere_and_whatever_tmpdir_is(tmp_path):
    """The check that the Python makes venvs ran in $TMPDIR: one that cannot be written failed a first set-up,
    which has no .venv to keep, blaming a missing python3-venv."""
    project = _project(tmp_path)
    log = tmp_path / "calls"
    fake = _script(tmp_path / "python-host", f'[ "$1" = -c ] && exec {PY} "$@"\n'
                   f'echo "$@" >> {shlex.quote(str(log))}\nexit 7\n')
    r = subprocess.run(["make", "-C", str(project), ".venv/.installed-stamp", f"PYTHON={fake}"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "TMPDIR": str(tmp_path / "no-such-folder")})
    assert log.read_text().split("\n")[0] == "-m venv .venv" and "cannot make" not in r.stderr
