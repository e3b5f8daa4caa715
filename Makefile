# structmt: every target installs what it needs first (make install is idempotent).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
FAIRSEQ := fairseq-fixed==0.12.3.1

.PHONY: install test test-reliability test-all demo reproduce lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt setup.py structmt/attention/csrc/candidates.cpp
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# torch first: the CPU build lies on this machine's disk
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt numpy cython
	# fairseq fork for Python 3.11, built against the installed torch, without its torchaudio pin
	$(PIP) install -q --no-deps --no-build-isolation $(FAIRSEQ)
	# the project itself: --no-build-isolation so its C++ kernel compiles against this torch
	$(PIP) install -q --no-build-isolation -c constraints.txt -e '.[dev]'
	$(PY) -c "import structmt, fairseq; print('structmt ready: fairseq', fairseq.__version__)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-reliability: $(STAMP)
	$(PY) -m pytest -q -m reliability

test-all: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m structmt.pipeline.recipes demo

reproduce: $(STAMP)
	$(PY) -m structmt.pipeline.recipes reproduce

lint: $(STAMP)
	$(VENV)/bin/ruff check structmt tests scripts

clean:
	rm -rf $(VENV) runs
