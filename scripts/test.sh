#!/usr/bin/env bash
# Install what the tests need and run them all: the Rust workspace (unit,
# integration tests over real sockets, the store conformance suite against
# the embedded store and SecantusDB, the loadbot's swarm tests, the fuzz
# corpus and a short fuzzing run) and the
# browser tests (the JS protocol client in node, the demo page and the ops
# console in headless Debian chromium), and promtool on the alert rules. Safe to run again; it installs only what is missing.
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
# The loadbot, ops and browser tests start the real server binary.
cargo build --workspace --bins
cargo test --workspace
# A short fuzzing smoke run (about a minute: 20 s per target, a fresh seed
# each time; a finding fails the run and is saved under fuzz/artifacts/).
cargo run -q -p tessera-fuzz -- all --seconds 20
bash scripts/e2e.sh
