"""The notebooks are committed clean: the four of them, in order, with no outputs or execution counts.

Running them is nbval's job (`make test` runs `pytest notebooks --nbval-lax` with PREDLAB_QUICK=1).
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ["01_simulation.ipynb", "02_train.ipynb", "03_attention.ipynb", "04_export.ipynb"]


def test_the_four_notebooks_exist_in_order():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_committed_without_outputs(name):
    nb = json.loads((NOTEBOOKS / name).read_text())
    assert nb["nbformat"] == 4
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{name}: cells {dirty} have outputs or execution counts; clear them "
                       f"(jupyter nbconvert --clear-output --inplace notebooks/{name})")


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_thin(name):
    """No function or class definitions in notebooks: that logic belongs in predlab/ with a test."""
    nb = json.loads((NOTEBOOKS / name).read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, f"{name} has no code"
    defined = []
    for source in code:        # parsed, IPython's magics and shell lines aside: an indented def counted too
        tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
        defined += [node.name for node in ast.walk(tree)
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    assert not defined, f"{name} defines {defined}: that belongs in predlab/, with a test"


@pytest.mark.parametrize("name", EXPECTED)
def test_no_cell_claims_a_checked_output(name):
    """nbval compares a cell's output with the one stored in the notebook, and these store none: a
    NBVAL_CHECK_OUTPUT cell passes whatever it prints, so the marker would promise a check that never runs."""
    nb = json.loads((NOTEBOOKS / name).read_text())
    marked = [i for i, c in enumerate(nb["cells"])
              if c["cell_type"] == "code" and "NBVAL_CHECK_OUTPUT" in "".join(c["source"])]
    assert not marked, f"{name}: cells {marked} are marked NBVAL_CHECK_OUTPUT but have no stored output to check"


def test_export_notebook_writes_a_stand_in_aside_when_a_checkpoint_appears_after_it(tmp_path, monkeypatch):
    """04 opened before any training makes a stand-in; 02 then writes best_model.pt. Its export cell run
    again on its own looked for that file anew and wrote the stand-in to checkpoints/model.js, unmarked,
    where the demo and the page look for a trained model."""
    from predlab import viz
    from predlab.model import TransformerPredator

    nb = json.loads((NOTEBOOKS / "04_export.ipynb").read_text())
    load, export = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"][:2]
    monkeypatch.setattr(viz, "checkpoint_dir", lambda quick=None: tmp_path)
    monkeypatch.setattr(viz, "load_best_model", lambda *a, **k: (TransformerPredator(), "trained a small model"))
    ns = {}
    exec("\n".join(line for line in load.splitlines() if not line.startswith("%")), ns)   # no IPython magics
    (tmp_path / "best_model.pt").write_bytes(b"")           # 02_train.ipynb finishes meanwhile
    exec(export, ns)
    assert ns["js_path"] == tmp_path / "stand-in" / "model.js"
    assert not (tmp_path / "model.js").exists()
