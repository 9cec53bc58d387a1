# The README's commands. Everything runs as root on Debian 12 with Debian's own packages.
PY := /usr/bin/python3
RUNTIME_DEPS := lxc python3-lxc python3-aiohttp python3-msgpack rsync busybox-static
# lxc-templates ... distro-info: the debian template the tests enable (helperd/templates.py
# says what lxc-debian needs each for); the shipped config leaves it off.
TEST_DEPS := $(RUNTIME_DEPS) adduser curl iproute2 python3-pytest python3-pytest-aiohttp \
             python3-pytest-timeout python3-mypy python3-venv python3-hypothesis openssl \
             lxc-templates debootstrap wget distro-info
VENV := .venv
APT := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: deps test-deps run test ci lint unit security bench bench-small

deps:
	$(APT) update -qq
	$(APT) install -y -qq --no-install-recommends $(RUNTIME_DEPS)

test-deps:
	$(APT) update -qq
	$(APT) install -y -qq --no-install-recommends $(TEST_DEPS)
	# The service user the frontend runs as: tests drop to it to prove what it cannot do.
	id -u lwp >/dev/null 2>&1 || adduser --system --group --no-create-home --home /nonexistent lwp
	test -x $(VENV)/bin/ruff || { $(PY) -m venv --system-site-packages $(VENV) && \
	    $(VENV)/bin/pip install -q ruff; }

# Run the service from this checkout: root helper + frontend (as user lwp) on 127.0.0.1:5000.
run: deps
	$(PY) tools/run_service.py

lint:
	$(VENV)/bin/ruff check protocol helperd frontend tests
	$(PY) -m mypy

unit:
	$(PY) -m pytest -m "not security"

# Attack, fuzz and fault tests (issue: safe to put on a network; see SECURITY.md): slow
# clients, rate limits, token timing, schemathesis against a live instance, the helper fuzzer,
# fault injection. schemathesis is a dev tool from PyPI, pinned, in the venv only.
SCHEMATHESIS := schemathesis==4.32.5
security: test-deps
	$(VENV)/bin/pip install -q "$(SCHEMATHESIS)"
	$(PY) -m pytest -m security

# The benchmark: direct python3-lxc against the whole HTTP chain, in one run.
bench: test-deps
	$(APT) install -y -qq --no-install-recommends wrk
	$(PY) bench/run.py

# The small benchmark CI runs so it cannot rot.
bench-small: test-deps
	$(APT) install -y -qq --no-install-recommends wrk
	$(PY) bench/run.py --small

# The whole test suite: lint, type checks, every test against real liblxc, and the attack,
# fuzz and fault tests.
test: test-deps lint unit security

# What CI runs: the whole suite, the small benchmark (so it cannot rot) and the package test.
ci: test bench-small deb-test readme-test

# --- Debian package (packaging/deb/, packaging/systemd/, packaging/deb-test/) ---------------
.PHONY: deb deb-test deb-clean readme-test

# build/deb/lxc-web-panel_<version>_all.deb (+ .dsc/.changes), lintian-clean or it fails.
deb:
	packaging/deb/build-deb

# Install the package in a debootstrapped Debian 12 booted as an LXC container with systemd,
# and check it runs, survives restarts and an upgrade, and purges cleanly (~5-10 minutes).
deb-test:
	$(PY) packaging/deb-test/run.py

# The README as a new user meets it: on a fresh booted Debian 12 with lxcbr0 (an LXC guest on a
# bridge of the test's own; apt reaches only the Debian archive, through the test's proxy),
# `make run`, the curl walk-through as written, a stop that leaves nothing, a second run, and
# `make test` (nested LXC; pip through the proxy's PyPI-only tunnels).
readme-test:
	$(PY) packaging/deb-test/readme.py

deb-clean:
	rm -rf build/deb
	$(PY) packaging/deb-test/run.py --clean
