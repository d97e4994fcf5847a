# Two entry points for a fresh machine with Python 3.11 and make:
#   make train   set up .venv (once) and run the main job
#   make test    set up .venv (once) and run the whole test suite
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: train test venv clean

venv: $(STAMP)

# Reinstall only when the package definition changes.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/alexnet-train

# Two workers (pytest-xdist): on a 2-core CPU the suite took 299 s instead of 428 s (BUILD_NOTES "Test suite").
test: $(STAMP)
	$(VENV)/bin/python -m pytest -ra -n 2 --dist loadgroup

clean:
	rm -rf $(VENV) .pytest_cache
