# podnet: the README's two commands are `make demo` and `make test`; both install what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
CNI_BIN_DIR ?= /opt/cni/bin
CNI_CONF_DIR ?= /etc/cni/net.d
BIN_DIR ?= /usr/local/bin
APT_PACKAGES := gcc libc6-dev iproute2 iputils-ping nftables python3-venv containernetworking-plugins \
	runc crun podman conmon catatonit busybox-static etcd-server etcd-client iperf3 tcpdump openssl \
	libjansson-dev golang-github-containers-common skopeo
# Only the host's test suite needs these (it validates the Vagrantfile, whose provider is
# libvirt, scrapes a lab with a real Prometheus and pulls from a real registry); a node, and so
# the lab's VM box, does not.
TEST_APT_PACKAGES := vagrant vagrant-libvirt prometheus docker-registry
# The lab's image registry (`make demo`, `podnetctl lab up --store etcd`); not a node's either.
LAB_APT_PACKAGES := docker-registry
PYTEST_ARGS ?=
# e.g. --system-site-packages where the system Python already has the dependencies (the Vagrant box)
VENV_FLAGS ?=

.PHONY: deps apt venv test test-unit demo install proto bench clean-stamps

deps: apt venv

apt: .stamp-apt
.stamp-apt: Makefile .ci/apt-deps
	bash .ci/apt-deps $(APT_PACKAGES)
	@touch $@

.stamp-apt-test: Makefile .ci/apt-deps
	bash .ci/apt-deps $(TEST_APT_PACKAGES)
	@touch $@

.stamp-apt-lab: Makefile .ci/apt-deps
	bash .ci/apt-deps $(LAB_APT_PACKAGES)
	@touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(PY) -m podnetd.install --dev-launcher $(VENV)/bin/podnet
	@touch $@

## test: the whole suite (real namespaces, real peers); needs root
test: deps .stamp-apt-test
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

## test-unit: the tests that need no root (pure logic, parsers, plans, plugin builds against fake
## relays): any user, no kernel state, well under a minute; the `root` marker is set in tests/conftest.py
test-unit: venv
	$(PY) -m pytest -q -m "not root" $(PYTEST_ARGS) tests

## demo: a local lab with pods pinging across nodes, then teardown
demo: deps .stamp-apt-lab
	$(PY) -m podnetd.demo

## install: the plugin to $(CNI_BIN_DIR)/podnet, the commands to $(BIN_DIR) and, unless podnet is
## configured there already, a default $(CNI_CONF_DIR)/10-podnet.conflist
install: deps
	$(PY) -m podnetd.install --cni-bin-dir $(CNI_BIN_DIR) --cni-conf-dir $(CNI_CONF_DIR)
	install -d $(BIN_DIR)
	for cmd in podnetd podnetctl; do ln -sf $(abspath $(VENV))/bin/$$cmd $(BIN_DIR)/$$cmd; done

## proto: regenerate the committed stubs in podnetd/api from proto/
proto: venv
	$(PY) proto/generate.py

## proto-lint: buf's STANDARD rules over proto/ (buf is not in Debian; proto/lint.py checks them)
.PHONY: proto-lint
proto-lint: venv
	$(PY) proto/lint.py

## bench: the CNI latency benchmark (numbers go in the issue notes, not in tests)
bench: deps
	$(PY) bench/cni_latency.py

clean-stamps:
	rm -f .stamp-apt .stamp-apt-test $(VENV)/.stamp

## lab-vagrant: the multi-VM Vagrant lab (opt-in, not in `make test`; KEEP=1 leaves the VMs up)
lab-vagrant: deps
	KEEP=$(KEEP) vagrant/lab

## bench-convergence / bench-dataplane / bench-memory: the lab benchmarks of issue 3 (opt-in)
.PHONY: bench-convergence bench-dataplane bench-memory bench-metrics bench-lab
bench-convergence: deps
	$(PY) bench/convergence.py
bench-dataplane: deps
	$(PY) bench/dataplane.py
bench-memory: deps
	$(PY) bench/daemon_memory.py
bench-metrics: deps
	$(PY) bench/metrics_scrape.py
bench-lab: bench-convergence bench-dataplane bench-memory bench-metrics

## bench-pods: pod start/stop latency and the memory a running pod costs its node, the pod
## runtime vs podman (opt-in, root)
.PHONY: bench-pods
bench-pods: deps
	$(PY) bench/pod_start.py
	$(PY) bench/pod_memory.py
