# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= results/demo

.PHONY: install demo test lint data clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev,ray]'
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
	@echo "report: $(DEMO_OUT)/comparison.md"

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
