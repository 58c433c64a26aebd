# Quick start: `make demo` and `make test`. Both bootstrap what a fresh Debian 12 machine lacks.
VENV ?= .venv
PY := $(VENV)/bin/python
# nginx-light, curl and mptcpd: stock servers and clients (made MPTCP by mptcpize) for the tests and `make bench`;
# systemd: systemd-analyze checks the shipped units; bird2: the router's and the MUXes' BGP speakers (`demo --bgp`).
APT_PACKAGES := openvswitch-switch mininet iproute2 ethtool tcpdump procps clang llvm libbpf-dev \
	python3-venv nginx-light curl mptcpd systemd bird2
OUT ?= out

.PHONY: all bootstrap deps venv ovs bpf demo test unit bench clean

all: test

bootstrap: deps venv ovs bpf

bpf: deps
	$(MAKE) -C bpf

# Install the packages in $(1) that are missing (a fresh machine needs `apt-get update` once first).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -q && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi
endef

deps:
	$(call apt_install,$(APT_PACKAGES))

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml | deps
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

ovs: deps
	@ovs-vsctl --timeout=5 show >/dev/null 2>&1 || /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random

demo: bootstrap
	mkdir -p $(OUT)
	$(VENV)/bin/mptcp-lb demo --json $(OUT)/demo-report.json --plot $(OUT)/demo.png

test: bootstrap
	$(PY) -m pytest -ra tests

unit: venv
	$(PY) -m pytest -ra tests/unit

bench: bootstrap
	mkdir -p $(OUT)
	$(PY) -m bench.run_bench --json $(OUT)/bench.json

clean:
	rm -rf $(VENV) $(OUT) *.egg-info
	$(MAKE) -C bpf clean
