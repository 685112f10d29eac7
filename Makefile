# The README's two commands: `make serve` and `make test`. Each bootstraps what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PA := .tools/pa/bin/perf_analyzer
CHECKOV := .tools/checkov/bin/checkov
CLIPPER_ADMIN := .tools/clipper-admin/.installed
MODEL_REPOSITORY ?= model_repository
SERVE_ARGS ?=
# the response cache `make serve` gives models that enable it (docs/cache.md); empty: none
CACHE_CONFIG ?= local,size=67108864

.PHONY: serve test test-fast lint venv tools redis netns-tools checkov clipper-admin peers chromium promtool clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

$(PA): scripts/install-perf-analyzer.sh
	scripts/install-perf-analyzer.sh .tools/pa

redis:
	scripts/install-redis.sh

# checkov in a virtual environment of its own (tests/deploy runs it on the Dockerfiles and deploy/)
$(CHECKOV): scripts/install-checkov.sh
	scripts/install-checkov.sh .tools/checkov

checkov: $(CHECKOV)

# Clipper's clipper_admin 0.4.1 in a virtual environment of its own (tests/admin/test_clipper_admin.py)
$(CLIPPER_ADMIN): scripts/install-clipper-admin.sh
	scripts/install-clipper-admin.sh .tools/clipper-admin

clipper-admin: $(CLIPPER_ADMIN)

# the peer servers (Triton's tritonserver inside PyTriton 0.7, MLServer 1.7.1), each in a virtual
# environment under $${CLIPPERD_BENCH_HOME:-~/.cache/clipperd-bench}: the remote backend's tests in
# front of them (tests/backends/test_remote_peers.py) and perf/side_by_side.py. Idempotent: 0.4 s
# when they are there, about a minute cold (docs/backends/remote.md)
peers:
	perf/install_peers.sh >/dev/null

netns-tools:
	scripts/install-netns-tools.sh

# Debian's chromium (the dashboard's browser test drives it through playwright) and promtool
# (Debian's prometheus package: the alert rules' checks)
chromium:
	scripts/install-chromium.sh

promtool:
	scripts/install-promtool.sh

tools: $(PA) redis netns-tools chromium promtool $(CHECKOV) $(CLIPPER_ADMIN) peers

serve: venv
	$(BIN)/clipperd serve --model-repository $(MODEL_REPOSITORY) $(if $(CACHE_CONFIG),--cache-config $(CACHE_CONFIG)) $(SERVE_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: venv tools
	CLIPPERD_PERF_ANALYZER=$(abspath $(PA)) $(BIN)/python -m pytest

# in-process tests only (tests/conftest.py FAST): seconds, no tools, no root
test-fast: venv
	CLIPPERD_FAST_TESTS=1 $(BIN)/python -m pytest -m "not e2e"

# the CPU image, built with podman here and tried from its own file system (minutes, root; not
# in `make test`): scripts/test-image.sh, docs/deploy.md "Images"
.PHONY: test-image
test-image: venv
	PYTHON=$(abspath $(BIN)/python) scripts/test-image.sh

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
