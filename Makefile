# The two commands (see README):  make book   |   make test
# Both set everything up on a fresh machine: a virtual environment with the pinned
# packages (torch==2.13.0 is the CPU wheel), and for the tests Debian's Chromium.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: book test setup setup-test chromium notebooks clean

book: setup
	$(BIN)/jupyter-book build -W -n --keep-going book
	@echo "open book/_build/html/index.html"

test: setup-test chromium book
	$(BIN)/python -m pytest -q

setup: $(VENV)/.book-deps
setup-test: $(VENV)/.test-deps

$(VENV)/.book-deps: requirements.txt pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.test-deps: requirements-test.txt $(VENV)/.book-deps
	$(BIN)/python -m pip install -q -r requirements-test.txt
	touch $@

chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }

# After editing a chapter's .md (the source) or the package: copy the cells into the paired
# .ipynb (outputs kept), then re-execute every chapter in place.
notebooks: setup-test
	$(BIN)/jupytext --update --to ipynb book/[0-9]*.md
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	  --ExecutePreprocessor.record_timing=False --ExecutePreprocessor.timeout=600 \
	  --Exporter.preprocessors=nbconvert.preprocessors.CoalesceStreamsPreprocessor book/[0-9]*.ipynb

clean:
	rm -rf book/_build
