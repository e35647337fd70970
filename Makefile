# `make run` and `make test` work on a fresh Debian 12 machine with the Swift toolchain: each installs the
# Debian packages it needs first.

SHELL      := /bin/bash
SWIFT      ?= swift
export PATH := $(PATH):/opt/swift/usr/bin
CONFIG     ?= etc/weir/weir.yaml

# Debian packages by purpose. Building needs libbpf (count.ebpf), libnftables/libnftnl/libmnl
# (enforce.nftables, route.gateway) and libcrypto (transform.aead). `make test` needs promtool (package
# prometheus) to check the exposition, and iproute2, bpftool, nftables and python3 for the kernel tests in
# network namespaces.
BUILD_PACKAGES := libbpf-dev libnftables-dev libnftnl-dev libmnl-dev libssl-dev libqrencode-dev pkg-config
RUN_PACKAGES   := ca-certificates $(BUILD_PACKAGES) wireguard-go
TEST_PACKAGES  := $(BUILD_PACKAGES) prometheus python3-yaml python3-pip iproute2 curl bpftool python3 nftables iperf3 openssl shadowsocks-libev python3-websockets nginx-light postgresql wireguard-go wireguard-tools qrencode zbar-tools dnsmasq-base bind9-dnsutils unbound chromium chromium-driver python3-selenium python3-pyotp
BENCH_PACKAGES := $(BUILD_PACKAGES) haproxy socat iperf3 nginx-light libnginx-mod-stream wrk curl python3 iproute2 nftables shadowsocks-libev stunnel4 openssl wireguard-go wireguard-tools dnsperf unbound dnsmasq-base

.PHONY: run test bench soak chaos fuzz fuzz-build build release clean monitor

# Installs the listed Debian packages that are missing (apt-get update only when something is missing).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
endef

build:
	$(SWIFT) build --product weir

release:
	$(SWIFT) build -c release --product weir

run:
	$(call apt_install,$(RUN_PACKAGES))
	$(SWIFT) build -c release --product weir
	./.build/release/weir validate --config $(CONFIG)
	exec ./.build/release/weir agent --config $(CONFIG)

test:
	$(call apt_install,$(TEST_PACKAGES))
	@# grafana-foundation-sdk (PyPI) builds the dashboards; a test rebuilds them and diffs (contrib/monitoring).
	@test -d .build/pydeps/grafana_foundation_sdk || python3 -m pip install --quiet --disable-pip-version-check \
		--target .build/pydeps -r contrib/monitoring/dashboards/requirements.txt
	$(SWIFT) build --build-tests
	@# The log is long; a failure's lines are repeated at its end, where CI's tail shows them.
	@set -o pipefail; WEIR_BIN=$(CURDIR)/.build/debug/weir $(SWIFT) test --skip-build --no-parallel 2>&1 \
		| tee .build/test.log || { echo "=== failed tests and their issues ==="; \
		grep -E '✘|recorded an issue|error:|Fatal' .build/test.log | grep -v "passed after" | cut -c1-400 | head -n 18; exit 1; }
	@# Every fuzz target for a few seconds from the committed corpus (make fuzz runs them for longer).
	$(MAKE) fuzz FUZZ_SECONDS=$(TEST_FUZZ_SECONDS)

# A Prometheus for a quick look at a fleet (contrib/monitoring/README.md), e.g.
# make monitor MONITOR_ARGS="--coordinator https://coordinator:8443 --token-file viewer.token --ca ca.pem"
# or MONITOR_ARGS="--target 10.0.0.5:9464 --target 10.0.0.6:9464".
monitor:
	$(call apt_install,prometheus)
	$(SWIFT) build --product weir
	./.build/debug/weir monitor $(MONITOR_ARGS)

# The chaos test (Tests/WeirIntegrationTests/ChaosTests.swift) for many rounds: randomised configurations of all
# four kernel stages, kill -9 during reloads and restarts, each round compared with a clean start. `make test`
# runs a few rounds; CHAOS_SEED=N replays a run. Needs root.
CHAOS_ROUNDS ?= 200
chaos:
	$(call apt_install,$(TEST_PACKAGES))
	$(SWIFT) build --build-tests
	WEIR_BIN=$(CURDIR)/.build/debug/weir WEIR_CHAOS_ROUNDS=$(CHAOS_ROUNDS) $(if $(CHAOS_SEED),WEIR_CHAOS_SEED=$(CHAOS_SEED)) \
		$(SWIFT) test --skip-build --filter ChaosTests

# libFuzzer on every parser of untrusted input (Sources/weir-fuzz), FUZZ_SECONDS each. New inputs are kept in
# .build-fuzz/corpus; a crash or hang stops the run and is written to fuzz/crashes/ — fix it, then add the input
# to fuzz/corpus/TARGET/ as a regression input (the test suite replays that corpus).
FUZZ_SECONDS      ?= 600
TEST_FUZZ_SECONDS ?= 5
FUZZ_TARGETS      := aead config coordinator-messages coordinator-requests dns dns-filter http-connect padding socks5 socks5-udp tls-sni websocket

fuzz-build:
	$(SWIFT) build --product weir-fuzz --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING

fuzz: fuzz-build
	@mkdir -p fuzz/crashes
	@for target in $(FUZZ_TARGETS); do \
		mkdir -p .build-fuzz/corpus/$$target; \
		echo "fuzzing $$target for $(FUZZ_SECONDS) s"; \
		WEIR_FUZZ_TARGET=$$target .build-fuzz/debug/weir-fuzz -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
			-seed=1 -print_final_stats=1 -artifact_prefix=fuzz/crashes/$$target- .build-fuzz/corpus/$$target fuzz/corpus/$$target \
			> .build-fuzz/$$target.log 2>&1 || { tail -n 40 .build-fuzz/$$target.log; echo "fuzz target $$target failed"; exit 1; }; \
		grep -E "^Done|stat::number_of_executed_units" .build-fuzz/$$target.log | tr '\n' ' '; echo; \
	done

bench:
	$(call apt_install,$(BENCH_PACKAGES))
	$(SWIFT) build -c release --product weir
	$(SWIFT) build -c release --product weir-fleet-sim
	WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/coordinator-bench.sh
	WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/forward-bench.sh
	WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/udp-bench.sh
	WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/idle-bench.sh
	WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/bandwidth-bench.sh
	WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/aead-bench.sh
	WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/tls-bench.sh
	WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/reload-bench.sh
	WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/dns-bench.sh
	@if [ "$$(id -u)" = 0 ]; then \
		WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/count-ebpf-bench.sh && \
		WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/nftables-bench.sh && \
		WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/shape-tc-bench.sh && \
		WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/wireguard-bench.sh && \
		WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/wireguard-tunnel-bench.sh; \
	else echo "skipping the count.ebpf, nftables, shape.tc and wireguard benchmarks: they need root (network namespaces)"; fi

# Not a test: 9,000 connections held through one forward while the agent reloads every second for a minute.
soak:
	$(call apt_install,$(BUILD_PACKAGES) python3)
	$(SWIFT) build -c release --product weir
	WEIR_BIN=$(CURDIR)/.build/release/weir bash bench/soak.sh

clean:
	rm -rf .build
