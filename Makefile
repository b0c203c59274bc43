# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= results/demo

.PHONY: install demo test test-fast lint data clean docs-figure

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@echo "Installing ambig-bench and its dependencies into $(VENV): torch and torchvision (CUDA builds, about" \
	      "5.5 GB), Ray, the integrations the tests cover (Hugging Face datasets, MLflow, TensorBoard, crowd-kit," \
	      "timm, ONNX Runtime) and the test tools: about 6.8 GB and a few minutes the first time."
	$(PY) -m pip install --progress-bar on -e '.[dev,ray,hf,mlflow,tensorboard,crowd,timm,onnx]'
	touch $(STAMP)

install: $(STAMP)

# Debian's Fashion-MNIST, where apt is available and we may use it (tests that need it skip otherwise).
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "fashion-mnist: present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "fashion-mnist: apt install failed" >&2; \
	else echo "fashion-mnist: skipped (needs root and apt-get)" >&2; fi

# The five options of the question plus discard, hard and partial; 9 seeds (enough for the paired tests to reach
# significance), a narrow network, 2 processes.
DEMO_STRATEGIES := soft,extra-class,multilabel,reassign,duplicate,discard,hard,partial
demo: $(STAMP)
	$(BIN)/ambig-bench run --dataset digits --strategy $(DEMO_STRATEGIES) --seeds 9 --epochs 50 --width 16 \
	  --lr 0.01 --jobs 2 --out $(DEMO_OUT)
	$(BIN)/ambig-bench compare $(DEMO_OUT)
	$(BIN)/ambig-bench report $(DEMO_OUT)
	@echo "comparison: $(DEMO_OUT)/comparison.md; report: $(DEMO_OUT)/report.md and $(DEMO_OUT)/report.html"

test: $(STAMP)
	$(PY) -m pytest -q

# The unit tests that train nothing or a few steps (about a minute on 2 cores); `make test` runs the slow ones too.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

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
