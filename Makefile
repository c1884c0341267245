# Two set-up commands: `make run` (install, make demo data, start the app) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := data/demo
DATA ?= $(DEMO)
PORT ?= 8501

.PHONY: run test install lint demo clean viewer

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

$(DEMO)/train_labels.csv: | $(VENV)/.installed
	$(BIN)/python -m pcam_core demo --out $(DEMO)

demo: $(DEMO)/train_labels.csv

run: install $(if $(filter $(DEMO),$(DATA)),demo)
	$(if $(filter $(DEMO),$(DATA)),$(BIN)/python scripts/first_model.py $(DEMO))
	PCAM_DATA=$(abspath $(DATA)) $(BIN)/streamlit run app/server.py --server.port $(PORT)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO)

# The viewer's OpenSeadragon bundle is committed (app/components/static); this rebuilds it from the lock file.
viewer:
	cd app/components && npm ci --no-audit --no-fund
	cp app/components/node_modules/openseadragon/build/openseadragon/openseadragon.min.js app/components/static/
	cp app/components/node_modules/openseadragon/LICENSE.txt app/components/static/openseadragon-LICENSE.txt
