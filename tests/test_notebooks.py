"""The notebooks are committed clean: the four of them, in order, with no outputs or execution counts.

Running them is nbval's job (`make test` runs `pytest notebooks --nbval-lax` with PREDLAB_QUICK=1).
"""
from __future__ import annotations

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
    assert not [s for s in code if "\ndef " in "\n" + s or "\nclass " in "\n" + s]


@pytest.mark.parametrize("name", EXPECTED)
def test_no_cell_claims_a_checked_output(name):
    """nbval compares a cell's output with the one stored in the notebook, and these store none: a
    NBVAL_CHECK_OUTPUT cell passes whatever it prints, so the marker would promise a check that never runs."""
    nb = json.loads((NOTEBOOKS / name).read_text())
    marked = [i for i, c in enumerate(nb["cells"])
              if c["cell_type"] == "code" and "NBVAL_CHECK_OUTPUT" in "".join(c["source"])]
    assert not marked, f"{name}: cells {marked} are marked NBVAL_CHECK_OUTPUT but have no stored output to check"
