# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Upper bounds that keep pip from ever resolving TF >= 2.16 (Keras 3 breaks TF Privacy 0.9.0).
CONSTRAINTS := constraints.txt
WORKDIR ?= runs/digits_demo

.PHONY: install dev test bench demo audit lint clean

install: $(VENV)/.installed
$(VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if (3, 11) <= v[:2] < (3, 12) else "dp_sinkhorn_tf needs Python 3.11 (TF Privacy 0.9.0 / TF 2.15); found %d.%d: set PYTHON=python3.11" % v[:2])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=23.2"
	$(PIP) install --quiet -c $(CONSTRAINTS) -e .
	touch $@

dev: $(VENV)/.dev-installed
$(VENV)/.dev-installed: $(VENV)/.installed
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $@

# Two pytest workers: much of the suite waits on TensorFlow start-ups and subprocesses, so two
# workers on 2 cores beat one (TEST_WORKERS=0: one process). Suite times: docs/benchmarks.md.
TEST_WORKERS ?= 2

test: dev
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

bench: install
	$(PY) -m dp_sinkhorn_tf.bench all

demo: install
	$(PY) -m dp_sinkhorn_tf.main --flagfile=launch/digits.flags --workdir=$(WORKDIR) --if_finished=skip

# The white-box audit of one private step of the demo's config, with its negative controls.
audit: install
	$(PY) -m dp_sinkhorn_tf.audit --audit=step --flagfile=launch/digits.flags --audit_out=runs/audit

lint: dev
	$(VENV)/bin/ruff check dp_sinkhorn_tf tests

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
