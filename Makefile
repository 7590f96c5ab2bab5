# make install : .venv with the requirements (+ Debian graphviz and Fashion-MNIST when root)
# make test    : install, the development requirements (pytest, ruff), lint, then both test tiers
# make lint    : ruff (ruff.toml: line length 100, pyflakes, bugbear, pyupgrade)
# make test-fast : the fast tier only (unit tests, no processes; under 2 minutes on 2 cores)
# make demo    : install, then the quick pipeline offline on Fashion-MNIST (~11 min on 2 cores)
# make test-floor : the test suite on the oldest PyTorch requirements.txt allows, in .venv-floor
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The PyTorch build the project is tested with; override with `make install TORCH_SPEC=...`.
ifeq ($(shell uname -m),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
endif
# The oldest PyTorch the suite passes on (requirements.txt states it).
FLOOR_SPEC ?= torch==2.4.1 torchvision==0.19.1 numpy<2
APT_PACKAGES := graphviz dataset-fashion-mnist

.PHONY: install dev lint test test-fast test-floor demo system-packages clean

install: $(VENV)/.installed system-packages

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(foreach spec,$(TORCH_SPEC),'$(spec)')
	$(PIP) install -r requirements.txt
	touch $@

dev: install $(VENV)/.dev

$(VENV)/.dev: $(VENV)/.installed requirements-dev.txt
	$(PIP) install -r requirements-dev.txt
	touch $@

# Debian packages: `dot` for cell plots and the offline Fashion-MNIST copy. Only as root with
# apt; otherwise a note (the project works without them: plots are skipped with a warning).
system-packages:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES) || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES)); \
	else \
	  command -v dot >/dev/null 2>&1 || echo "note: graphviz 'dot' not found; cell plots will be skipped (apt-get install graphviz)"; \
	fi

lint: dev
	$(VENV)/bin/ruff check .

# Lint, then both tiers: the fast unit tests and the end-to-end tests (marker e2e, pytest.ini).
test: lint
	$(PY) -m pytest -q

# The fast tier: no subprocess, no multiprocessing, no DataLoader workers, no server
# (tests/conftest.py fails an unmarked test that starts one).
test-fast: dev
	$(PY) -m pytest -q -m "not e2e"

test-floor:
	$(MAKE) test VENV=.venv-floor TORCH_SPEC="$(FLOOR_SPEC)"

demo: install
	$(PY) run_all.py --preset quick --name demo --device auto
	@echo "demo finished: see runs/demo/summary.md"

clean:
	rm -rf $(VENV) .venv-floor .pytest_cache
