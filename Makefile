# One command sets up and runs the demo; one sets up and runs the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,dp,federated]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/medaug demo --out runs/demo

test: $(STAMP)
	@$(BIN)/python -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no test: failing"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --out runs/bench.jsonl

clean:
	rm -rf $(VENV) runs lightning_logs
