# cryolens: `make demo` runs the built-in example end to end, `make test` runs the test suite.
# Both create .venv on first use (install/setup-venv.sh picks the torch build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cryolens-installed
DEMO ?= demo_out

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml install/setup-venv.sh
	bash install/setup-venv.sh

venv: $(STAMP)

demo: $(STAMP)
	bash install/demo.sh $(DEMO)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	mkdir -p bench/results
	for b in bench/bench_*.py bench/conventions.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(DEMO) bench/results .pytest_cache
