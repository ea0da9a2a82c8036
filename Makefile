# Two entry points: `make demo` and `make test`. Both create .venv/ if missing and
# install the pinned stack once; the stamp file makes later runs install nothing.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-stamp
BIN := $(VENV)/bin

.PHONY: demo test venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

# Until the shipped model and the liquid protocols land, the demo runs the longest real
# path: fairchem checkpoint -> our model file -> TorchScript -> OpenMM NVT -> LAMMPS NVT.
# The checkpoint is a random-weight test fixture, so the dynamics are not physical.
DEMO := demo-output
demo: $(STAMP)
	$(BIN)/allscaip info
	mkdir -p $(DEMO)
	$(BIN)/allscaip convert-fairchem tests/fixtures/golden/ckpt_conserving.pt -o $(DEMO)/model.pt
	$(BIN)/allscaip export $(DEMO)/model.pt -o $(DEMO)/model.ts --dtype float32
	$(BIN)/allscaip openmm run --pdb plugins/openmm/examples/water64.pdb --model $(DEMO)/model.pt \
		--ensemble nvt --temperature 300 --timestep 0.5 --steps 200 --report-interval 50 --out $(DEMO)/openmm
	cd plugins/lammps/examples && $(CURDIR)/$(BIN)/allscaip lammps -in nvt.in \
		-var model $(CURDIR)/$(DEMO)/model.pt -var steps 100 -log $(CURDIR)/$(DEMO)/lammps.log

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
