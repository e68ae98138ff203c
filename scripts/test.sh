#!/usr/bin/env bash
# Install what the tests need and run them all: the Rust workspace (unit,
# integration tests over real sockets, the store conformance suite against
# the embedded store and SecantusDB, the loadbot's swarm tests, the fuzz
# corpus and a short fuzzing run) and the
# browser tests (the JS protocol client in node, the demo page in headless
# Debian chromium). Safe to run again; it installs only what is missing.
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
# The loadbot, ops and browser tests start the real server binary.
cargo build --workspace --bins
cargo test --workspace
# A short fuzzing smoke run (about a minute: 20 s per target, a fresh seed
# each time; a finding fails the run and is saved under fuzz/artifacts/).
cargo run -q -p tessera-fuzz -- all --seconds 20
bash scripts/e2e.sh
