# Two commands matter: `make workbook` and `make test`. Both build the venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-all workbook workbook-quick data pretrain benchmarks clean-results

install: $(STAMP)

# The venv is rebuilt when the package list changes.  torch and torchvision are pinned as a
# pair (torch 2.13.0 with any torchvision fails on `torchvision::nms`).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow or gpu"

data: $(STAMP)
	$(PY) -m xtfclip_lib synth --root data/synthetic-ag

pretrain: data
	$(PY) -m xtfclip_lib pretrain-clip --data data/synthetic-ag --out data/tiny-clip/tiny_clip.pt

workbook: $(STAMP)
	$(PY) -m xtfclip_lib workbook --preset tiny --out results/workbook

workbook-quick: $(STAMP)
	$(PY) -m xtfclip_lib workbook --preset quick --out results/workbook-quick

benchmarks: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done
