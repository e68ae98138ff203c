#!/usr/bin/env bash
# Install what the tests need and run them all: the Rust workspace (unit,
# integration tests over real sockets, the store conformance suite against
# the embedded store and SecantusDB, the cluster directory against a real
# redis-server, the loadbot's swarm tests, the fuzz
# corpus and a short fuzzing run) and the
# browser tests (the JS protocol client in node, the demo page and the ops
# console in headless Debian chromium), promtool on the alert rules, and a
# short chaos drill (scripts/chaos.sh) and a short rolling restart
# (scripts/rolling.sh). Safe to run again; it installs only
# what is missing.
#
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "test.sh: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi

# The store tests start SecantusDB (a MongoDB-wire server) from a venv.
scripts/secantus.sh >/dev/null
# promtool checks ops/prometheus/alerts.yml (server/tests/dashboards.rs);
# the test says why it skips when promtool cannot be installed.
if promtool=$(scripts/promtool.sh); then
  export PROMTOOL="$promtool"
else
  echo "test.sh: no promtool; the alerts' promtool check will be skipped" >&2
fi
# The cluster tests start their own redis-server (Debian's package) on a
# free loopback port; the packaged service must not be left running.
if ! command -v redis-server >/dev/null; then
  echo "test.sh: installing redis-server"
  as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
  }
  # policy-rc.d 101: the package's service is not started on install.
  policy=/usr/sbin/policy-rc.d
  had_policy=
  [ -e "$policy" ] && had_policy=1
  [ -n "$had_policy" ] || printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
  [ -n "$had_policy" ] || as_root chmod +x "$policy"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server
  [ -n "$had_policy" ] || as_root rm -f "$policy"
  # Belt and braces, where a service manager started it anyway.
  as_root service redis-server stop >/dev/null 2>&1 || true
fi
# The loadbot, ops and browser tests start the real server binary.
cargo build --workspace --bins
cargo test --workspace
# A short fuzzing smoke run (about a minute: 20 s per target, a fresh seed
# each time; a finding fails the run and is saved under fuzz/artifacts/).
cargo run -q -p tessera-fuzz -- all --seconds 20
bash scripts/e2e.sh
# A short chaos drill: 3 shards under the churn scenario while shards are
# killed, paused and drained (fails on a failed resume, a room that did
# not fail over, or a lost ack).
bash scripts/chaos.sh 30
# A short rolling restart (about a minute): each of 3 shards drained and
# started again under churn with durable actions (fails on a failed
# resume or a lost ack).
GAP_S=4 bash scripts/rolling.sh
