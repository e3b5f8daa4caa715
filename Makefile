# structmt: every target installs what it needs first (make install is idempotent).
# Installing elsewhere (a GPU machine with its own torch, an air-gapped node): docs/install.md.
PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
STAMP := $(VENV)/.installed
FAIRSEQ := fairseq-fixed==0.12.3.1
TORCH := 2.13.0+cpu
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# pinned: a new setuptools can break the --no-build-isolation builds with no change here
BUILD_TOOLS := pip==26.3 setuptools==84.2.1 wheel==0.48.0
# make wheelhouse: the target node's Python version, and where the wheels go
PY ?= 3.12
WHEELHOUSE ?= wheelhouse
# make reproduce: the seeds of the headline table
SEEDS ?= 1 2 3
# make reproduce / finetune ALLOW_DIRTY=1: run although the checkout differs from its commit (tracked files outside
# results/, or untracked files among the code; rows say +dirty)
ALLOW_DIRTY ?=

.PHONY: install test test-reliability test-all demo reproduce finetune lint wheelhouse clean

install: $(STAMP)

# The pinned CPU environment: Python 3.11, torch 2.13.0 (CPU build), every version from constraints.txt, and pip,
# setuptools and wheel at BUILD_TOOLS (pinned here, not in constraints.txt, which also serves make wheelhouse,
# whose nodes' torch may need an older setuptools).
$(STAMP): pyproject.toml constraints.txt setup.py structmt/attention/csrc/candidates.cpp Makefile
	@$(PYTHON) -c 'import sys' 2>/dev/null || { echo "error: $(PYTHON) does not run; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@# a .venv of another Python (make PYTHON=... once), one whose interpreter is gone, or one without pip, is made again
	@want=$$($(PYTHON) -c 'import sys; print(sys.version_info[:2])'); \
	  have=$$($(VPY) -c 'import sys, pip; print(sys.version_info[:2])' 2>/dev/null); \
	  if [ -e $(VENV) ] && [ "$$have" != "$$want" ]; then \
	    echo "$(VENV) is not a working venv of $(PYTHON) $$want with pip (it runs: $${have:-nothing, or has no pip}): making it again"; \
	    rm -rf $(VENV); fi
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade $(BUILD_TOOLS)
	# torch first, the CPU build (PyPI's torch is the CUDA build, whose Triton pin conflicts with constraints.txt):
	# the wheel pip's find-links has (the project's machine), else PyTorch's CPU index
	$(PIP) install -q -c constraints.txt torch==$(TORCH) 2>$(VENV)/torch-try.err \
	  || { echo "torch==$(TORCH): not installed from where pip looks first:"; grep '^ERROR' $(VENV)/torch-try.err; \
	       echo "trying $(TORCH_CPU_INDEX)"; \
	       $(PIP) install -q -c constraints.txt --extra-index-url $(TORCH_CPU_INDEX) torch==$(TORCH); }
	rm -f $(VENV)/torch-try.err
	$(PIP) install -q -c constraints.txt numpy cython
	# the project and all its dependencies: --no-build-isolation so its C++ kernel compiles against this torch
	$(PIP) install -q --no-build-isolation -c constraints.txt -e '.[dev]'
	# fairseq fork for Python >= 3.11, built against the installed torch. --no-deps: its metadata asks for
	# torchaudio (whose releases pin other torch versions); its real dependencies came with the project above.
	# Last, because pip's after-install check of every package an install touches would report that
	# torchaudio requirement as an error once fairseq is installed; --no-deps installs skip that check.
	$(PIP) install -q --no-deps --no-build-isolation -c constraints.txt $(FAIRSEQ)
	# every requirement is met except fairseq-fixed's torchaudio, which pip check lists
	@$(PIP) check > $(VENV)/pip-check.txt 2>&1; test -s $(VENV)/pip-check.txt \
	  && ! grep -v -e '^fairseq-fixed [^ ]* requires torchaudio' -e '^No broken requirements' $(VENV)/pip-check.txt \
	  || { echo "error: pip check found broken requirements, or failed (above)"; exit 1; }
	$(VPY) scripts/check_install.py --require-kernel
	touch $(STAMP)

# the tests run on every core (pytest-xdist), at most 8 workers: each holds torch and fairseq in memory and starts
# fairseq processes of its own
WORKERS := -n auto --maxprocesses 8

test: $(STAMP)
	$(VPY) -m pytest -q -m "not slow" $(WORKERS)

test-reliability: $(STAMP)
	$(VPY) -m pytest -q -m reliability $(WORKERS)

test-all: $(STAMP)
	$(VPY) -m pytest -q $(WORKERS)

demo: $(STAMP)
	$(VPY) -m structmt.pipeline.recipes demo

# make reproduce SEEDS="1 2 3": one dense + structured pair per seed, each from a clean committed tree
reproduce: $(STAMP)
	$(VPY) -m structmt.pipeline.recipes reproduce --seeds $(SEEDS)$(if $(filter 1 yes true,$(ALLOW_DIRTY)), --allow-dirty)

# make finetune: the structured model fine-tuned from the dense reproduce run of seed 1 (SEEDS="1 2 3": of each)
finetune: $(STAMP)
	$(VPY) -m structmt.pipeline.recipes finetune --seeds $(if $(filter file,$(origin SEEDS)),1,$(SEEDS))$(if $(filter 1 yes true,$(ALLOW_DIRTY)), --allow-dirty)

lint: $(STAMP)
	$(VENV)/bin/ruff check structmt tests scripts

# Everything an air-gapped Linux x86_64 node with Python $(PY) and its own torch needs (docs/install.md):
#   make wheelhouse PY=3.12 [WITH_TRITON=1] [CONSTRAINTS=]   then, on the node: scripts/install_offline.sh wheelhouse
wheelhouse: $(STAMP)
	VPY=$(VPY) FAIRSEQ=$(FAIRSEQ) scripts/make_wheelhouse.sh "$(PY)" "$(WHEELHOUSE)"

# removes the environment and runs/: every checkpoint, hypothesis and prepared data set not committed under results/
clean:
	rm -rf $(VENV) runs
