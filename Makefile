# Two entry points: `make demo` and `make test`. Both create .venv/ if missing and
# install the pinned stack once; the stamp file makes later runs install nothing.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-stamp
BIN := $(VENV)/bin

.PHONY: demo test venv clean-venv fairchem-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

# The demo: environment report, then the water density + heat-of-vaporization protocol with
# the default model (--quick: 64 waters, 5 ps liquid + 9 ps gas, ~20 minutes on 2 cores). It
# prints the summary table and its verdict (a --quick run is a smoke test, not converged); an
# interrupted demo resumes where it stopped.
DEMO := demo-output
demo: $(STAMP)
	$(BIN)/allscaip info
	$(BIN)/allscaip protocol liquid --molecule water --quick --out $(DEMO)/water \
		$$(test -f $(DEMO)/water/settings.json && echo --resume)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

# Side venv with the real fairchem-core, only for tools/make_golden.py and benchmarks that
# compare against fairchem (never a dependency of allscaip; see tools/README.md).
fairchem-venv:
	test -x .fairchem-venv/bin/python || $(PYTHON) -m venv .fairchem-venv
	.fairchem-venv/bin/pip install torch==2.13.0 fairchem-core==2.24.0
