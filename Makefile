# gpupower — the two commands people run are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# The envtest kit: $KUBEBUILDER_ASSETS (controller-runtime's convention), else ../shared/envtest.
ENVTEST_KIT ?= $(abspath ../shared/envtest)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install crds docs monitoring prometheus lint format envtest nvmlstub test test-unit test-cluster demo demo-prometheus bench clean requirements images

help:
	@echo "make demo   - install, then run the operator and agents on a local control plane with simulated GPUs"
	@echo "make test   - install, lint, and run every test (unit, property, end-to-end on a real API server)"
	@echo "make crds   - regenerate the CRDs in crds/ from the API models"
	@echo "make monitoring - regenerate the Grafana dashboard and the PrometheusRule under manifests/monitoring"
	@echo "make bench  - run the benchmarks under bench/"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

crds: $(STAMP)
	$(PY) -m gpupower_api.crd crds/gpupowerbudgets.yaml
	$(PY) -m gpupower_api.crd --kind gpupowerprofileruns crds/gpupowerprofileruns.yaml

docs: $(STAMP)
	$(PY) -m gpupower_api.reference README.md

# The Grafana dashboard (JSON and ConfigMap) and the PrometheusRule, from monitoring/ and the rules file.
monitoring: $(STAMP)
	$(PY) -m monitoring

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy api/gpupower_api operator/gpupower_operator agent/gpupower_agent monitoring

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Find the control-plane binaries the envtest way; the tests start and stop the servers themselves.
envtest:
	@if [ -n "$$KUBEBUILDER_ASSETS" ]; then \
		echo "envtest: using binaries in KUBEBUILDER_ASSETS=$$KUBEBUILDER_ASSETS"; \
	elif [ -x "$(ENVTEST_KIT)/start-envtest" ]; then \
		"$(ENVTEST_KIT)/start-envtest" extract >/dev/null && echo "envtest: kit at $(ENVTEST_KIT)"; \
	else \
		echo "envtest: no control-plane binaries found. Set KUBEBUILDER_ASSETS to a directory holding"; \
		echo "  kube-apiserver and etcd, e.g. from controller-runtime's setup-envtest:"; \
		echo "  go install sigs.k8s.io/controller-runtime/tools/setup-envtest@latest"; \
		echo "  export KUBEBUILDER_ASSETS=\$$(setup-envtest use -p path)"; \
		if [ -n "$$CI" ]; then exit 1; fi; \
	fi

# The real Prometheus server the Prometheus tests run on loopback (Debian's package).
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		echo "installing Debian's prometheus for the tests"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	}
	@prometheus --version 2>&1 | head -1
	@promtool --version 2>&1 | head -1

# The stand-in libnvidia-ml.so.1 the tests load through pynvml to run the agent's real NVML path.
NVMLSTUB := tests/nvmlstub/build/libnvidia-ml.so.1
$(NVMLSTUB): tests/nvmlstub/nvmlstub.c
	@mkdir -p $(dir $@)
	$(CC) -shared -fPIC -O2 -Wall -Wextra -Werror -fvisibility=hidden -Wl,-soname,libnvidia-ml.so.1 -o $@ $< -lpthread

nvmlstub: $(NVMLSTUB)

test: install lint envtest prometheus nvmlstub
	GPUPOWER_ENVTEST_KIT=$(ENVTEST_KIT)/start-envtest $(VENV)/bin/pytest -q -p no:cacheprovider

test-unit: install
	$(VENV)/bin/pytest -q tests/unit

test-cluster: install
	$(VENV)/bin/pytest -q -m cluster

# The real operator and agents on a real local control plane with simulated GPU nodes.
demo: install envtest
	GPUPOWER_ENVTEST_KIT=$(ENVTEST_KIT)/start-envtest $(PY) -m demo

# A variant: the plan following a demand ramp read from a real Prometheus (Debian's package).
demo-prometheus: install prometheus
	$(PY) examples/prometheus_ramp.py

# Pin the images' runtime dependencies (needs PyPI).
requirements: $(STAMP)
	$(VENV)/bin/pip install --quiet pip-tools
	for image in operator agent; do \
		$(VENV)/bin/pip-compile --quiet --strip-extras --no-header --annotation-style=line \
			-o requirements/$$image.txt requirements/$$image.in; \
		sed -i '/^--extra-index-url/d; /^--index-url/d; /^--find-links/d' requirements/$$image.txt; \
	done

IMAGE_TAG ?= 0.1.0
images:
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "images: no Docker engine here"; exit 1; }
	docker build -f Dockerfile.operator -t ghcr.io/gpupower/gpupower-operator:$(IMAGE_TAG) .
	docker build -f Dockerfile.agent -t ghcr.io/gpupower/gpupower-agent:$(IMAGE_TAG) .

# Benchmarks print figures beside a baseline measured in the same run (not part of make test).
bench: install envtest nvmlstub
	$(PY) bench/plan_quality.py
	$(PY) bench/plan_speed.py
	$(PY) bench/agent_reconcile.py
	GPUPOWER_ENVTEST_KIT=$(ENVTEST_KIT)/start-envtest $(PY) bench/agent_rss.py
	GPUPOWER_ENVTEST_KIT=$(ENVTEST_KIT)/start-envtest $(PY) bench/agent_latency.py
	GPUPOWER_ENVTEST_KIT=$(ENVTEST_KIT)/start-envtest $(PY) bench/operator_scale.py
	GPUPOWER_ENVTEST_KIT=$(ENVTEST_KIT)/start-envtest $(PY) bench/operator_failover.py
	GPUPOWER_ENVTEST_KIT=$(ENVTEST_KIT)/start-envtest $(PY) bench/new_replica_cap.py
	GPUPOWER_ENVTEST_KIT=$(ENVTEST_KIT)/start-envtest $(PY) bench/guard_reaction.py
	$(PY) bench/oversubscription_value.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
