# plasmaboot: set-up, tests and the main job. Run as root on Debian 12 (or with sudo).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PB := $(VENV)/bin/plasmaboot
APT_PACKAGES := mmdebstrap squashfs-tools qemu-system-x86 ipxe-qemu qemu-utils \
	busybox-static openssh-client nix-bin nginx-light zstd xz-utils cpio dpkg-dev \
	arch-test uidmap python3-venv ca-certificates curl dnsmasq-base ipxe ovmf iproute2 \
	chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_KEY := .cache/demo/id_ed25519

.PHONY: setup setup-system setup-python test test-all test-fast lint demo clean bench-deps

setup: setup-system setup-python

setup-system:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

setup-python: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# The peers of bench/peers.py (issue #16), for benchmarking only: never part of setup or test.
# mkosi 14 and live-build from Debian's archive (bookworm), nothing from elsewhere; without
# their recommends (which pull in systemd-sysv), with what their builds run on the host.
BENCH_APT_PACKAGES := mkosi live-build debootstrap systemd-container debian-archive-keyring \
	squashfs-tools cpio rsync wget xz-utils zstd file bzip2
bench-deps: setup-system
	@missing=$$(for p in $(BENCH_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

lint: setup-python
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy --strict src/

# CI's suite: lint, types, unit tests and every `slow` build/boot test, but not the `extended`
# ones (proxyDHCP boots, the UEFI install, the largest hostile inputs). Ends with pytest's summary.
test: setup lint
	$(VENV)/bin/pytest -v -m "not extended" --durations=25

# Everything, the `extended` tests too.
test-all: setup lint
	$(VENV)/bin/pytest -v

test-fast: setup-python
	$(VENV)/bin/pytest -m "not slow and not extended"

# The main job: set up, build the all-in-one image, verify it and PXE-boot it in QEMU.
demo: setup
	mkdir -p $(dir $(DEMO_KEY))
	[ -f $(DEMO_KEY) ] || ssh-keygen -q -t ed25519 -N '' -C plasmaboot-demo -f $(DEMO_KEY)
	$(PB) build --profile all-in-one --ssh-key $(DEMO_KEY).pub --output-dir artifacts
	$(PB) verify artifacts/all-in-one
	$(PB) boot-test all-in-one --artifacts artifacts --identity $(DEMO_KEY)

clean:
	rm -rf artifacts .cache
