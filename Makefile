# The README's two commands: `make train` (a real training run) and `make test` (everything).
# Both create .venv from pyproject.toml on first use and reuse it afterwards.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: train test lab bench demo browser-deps clean FORCE

VERSION_OF = $(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
# PYTHON= on make's command line names the Python of .venv: a .venv of another version is made again with it
# (it was kept while pyproject.toml had not changed, and the Python named was not used, without a word)
NAMED := $(filter command line,$(origin PYTHON))
ifneq ($(NAMED),)
ifneq ($(shell $(call VERSION_OF,$(PYTHON))),$(shell $(call VERSION_OF,$(BIN)/python)))
$(STAMP): FORCE
endif
endif
FORCE:
# a .venv is removed only once PYTHON has made one elsewhere: a Python without its venv module (Debian's
# python3.12 without python3.12-venv) left no .venv where a working one of another version had been. Beside
# .venv (a TMPDIR that cannot be written failed the check), and only where there is a .venv to keep
MADE_ELSEWHERE = { [ ! -e $(VENV) ] || { rm -rf $(VENV).check && $(PYTHON) -m venv $(VENV).check 2>$(VENV).check-said; \
  made=$$?; [ $$made = 0 ] || { cat $(VENV).check-said >&2; echo "$(PYTHON) cannot make a virtual environment (see \
  above; on Debian and Ubuntu: apt-get install python3-venv, or python3.X-venv for a python3.X): .venv is left as it \
  was" >&2; }; rm -rf $(VENV).check $(VENV).check-said; [ $$made = 0 ]; }; }

$(STAMP): pyproject.toml
	@# (% formatting: a Python 2 named by mistake reads it, and says which Python it is, where an f-string was
	@# its SyntaxError)
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(None if (3, 10) <= v < (3, 15) else \
	  "predlab needs Python 3.10 to 3.14 (torch 2.13.0 has wheels for those); %s is %d.%d: " % (sys.executable, \
	  v[0], v[1]) + "name another with PYTHON=, e.g. make $(or $(MAKECMDGOALS),train) PYTHON=python3.12")'
	@# a .venv without pip (python3-venv missing, or a Ctrl-C while it was made), of a Python torch's wheels do
	@# not cover (made before PYTHON= named another), or of another version than PYTHON= names, is made again
	$(BIN)/python -c 'import sys; assert (3, 10) <= sys.version_info[:2] < (3, 15)' >/dev/null 2>&1 && \
	  $(BIN)/python -m pip --version >/dev/null 2>&1 && \
	  { [ -z "$(NAMED)" ] || [ "$$($(call VERSION_OF,$(BIN)/python))" = "$$($(call VERSION_OF,$(PYTHON)))" ]; } || \
	  { $(MADE_ELSEWHERE) && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python -m predlab.train $(ARGS)

# Debian's chromium for the browser test; where it cannot be installed that test skips and says why.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium could not be installed: the browser test will skip"

# The tests run on one process per CPU, 4 at most (pytest-xdist), then the notebooks in order on one: 03 and 04
# read the checkpoint 02 writes. Both parts always run, and make fails if either failed.
test: $(STAMP) browser-deps
	export PREDLAB_QUICK=1 MPLBACKEND=Agg; rc=0; \
	$(BIN)/python -m pytest tests -q -n auto --maxprocesses 4 || rc=$$?; \
	$(BIN)/python -m pytest notebooks --nbval-lax -q || rc=$$?; \
	exit $$rc

# .venv/bin on PATH: the notebooks' %tensorboard magic runs the tensorboard executable it finds there.
# As root (a container's user) JupyterLab refuses to start without --allow-root.
lab: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/jupyter lab notebooks $$([ "$$(id -u)" = 0 ] && echo --allow-root)

demo: $(STAMP)
	$(BIN)/python -m predlab.demo $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m predlab.bench $(ARGS)

clean:
	rm -rf $(VENV) $(VENV).check* *.egg-info .pytest_cache
