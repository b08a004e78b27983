# Two commands for users: `make demo` and `make test`. `make check` for developers.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DEB_PKGS := mosquitto mosquitto-clients influxdb victoria-metrics socat mbpoll faketime debootstrap shellcheck chromium postgresql poppler-utils fonts-dejavu-core
DEB_BINS := mosquitto mosquitto_sub influxd victoria-metrics socat mbpoll faketime debootstrap shellcheck chromium initdb pdftotext
# Three workers on two cores: most tests wait on real servers (brokers, databases, devices), not the CPU.
# A test file stays on one worker (its module fixtures are started once), and tests marked `cpu` share one
# worker (tests/conftest.py). Numeric libraries get one thread each: three workers on two cores, each training
# with threads for every core, oversubscribed them. PYTEST_ARGS="-n 0" runs serially.
PYTEST_WORKERS ?= 3
PYTEST_ARGS ?=

.PHONY: demo demo-area test check bench venv deps-system clean lock

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,forecast,flex]'
	@touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/gia demo $(DEMO_ARGS)

# Three simulated sites of one area and their hub (portal on 127.0.0.1:8090); state in ./gia-demo-area/.
demo-area: venv
	$(VENV)/bin/gia demo --area --http 127.0.0.1:8090 $(DEMO_ARGS)

# Installs the real servers the tests talk to (Debian packages) when they are missing.
deps-system:
	@missing=""; for b in $(DEB_BINS); do command -v $$b >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin:/usr/lib/postgresql/15/bin" command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  echo "missing test servers:$$missing"; \
	  if [ "$$(id -u)" = "0" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PKGS); \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PKGS); \
	  else \
	    echo "run as root: apt-get install -y $(DEB_PKGS)"; \
	    if [ -n "$$CI" ]; then exit 1; fi; \
	  fi; \
	fi

test: deps-system venv
	PATH="$$PATH:/usr/sbin" OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
	  $(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

check: venv
	$(VENV)/bin/ruff format --check gateway drivers forecasting tests bench
	$(VENV)/bin/ruff check gateway drivers forecasting tests bench
	$(VENV)/bin/mypy

# deploy/requirements*.lock: what install.sh installs (pinned, every file's SHA-256), resolved for Python 3.11
# by pip-tools in a throwaway venv (a tool for this step only, not a dependency of the project).
LOCK_TOOLS ?= /tmp/gia-lock-tools
LOCK_ARGS := --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --quiet
lock:
	@test -x $(LOCK_TOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install -q pip-tools==7.6.2; }
	$(LOCK_TOOLS)/bin/pip-compile $(LOCK_ARGS) --output-file deploy/requirements.lock pyproject.toml
	$(LOCK_TOOLS)/bin/pip-compile $(LOCK_ARGS) --extra forecast --extra flex --output-file deploy/requirements-extras.lock pyproject.toml

bench: venv
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
