# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= results/demo

.PHONY: install demo test lint data clean docs-figure

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev,ray,timm]'
	touch $(STAMP)

install: $(STAMP)

# Debian's Fashion-MNIST, where apt is available and we may use it (tests that need it skip otherwise).
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "fashion-mnist: present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "fashion-mnist: apt install failed" >&2; \
	else echo "fashion-mnist: skipped (needs root and apt-get)" >&2; fi

demo: $(STAMP)
	$(BIN)/ambig-bench run --dataset digits --strategy all --seeds 3 --epochs 20 --out $(DEMO_OUT)
	$(BIN)/ambig-bench compare $(DEMO_OUT)
	$(BIN)/ambig-bench report $(DEMO_OUT)
	@echo "comparison: $(DEMO_OUT)/comparison.md; report: $(DEMO_OUT)/report.md and $(DEMO_OUT)/report.html"

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(PY) -m pytest -q tests/test_architecture.py

# The README figure: a digits sweep of between-fraction on the CPU (about 10 minutes), then its report.
docs-figure: $(STAMP)
	$(BIN)/ambig-bench sweep --dataset digits --strategy soft,reassign,duplicate,extra-class,multilabel \
	  --vary between-fraction=0.01,0.05,0.2 --seeds 10 --epochs 15 --device cpu --out results/sweep
	$(BIN)/ambig-bench report results/sweep
	cp results/sweep/figures/sweep-between-fraction.png docs/sweep-between-fraction.png

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
