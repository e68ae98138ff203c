#!/usr/bin/env bash
# Install SecantusDB (a MongoDB-wire-compatible server on WiredTiger) into a
# venv at <repo>/.venv-secantus if it is not there yet, then print the path
# of `secantusd-py`. The store conformance tests and the store benchmark
# start it on an ephemeral loopback port; they find it through
# TESSERA_SECANTUSD or at that path. Safe to run again.
#
#   scripts/secantus.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="0.7.0b3"
VENV="$PWD/.venv-secantus"
BIN="$VENV/bin/secantusd-py"

installed_version() {
  "$VENV/bin/python" -m pip show SecantusDB 2>/dev/null | sed -n 's/^Version: //p'
}

if [[ -x "$BIN" && "$(installed_version)" == "$VERSION" ]]; then
  echo "$BIN"
  exit 0
fi

if ! command -v python3 >/dev/null; then
  echo "secantus.sh: python3 not found; install Python 3.9+ first" >&2
  exit 1
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV" >&2
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "SecantusDB==$VERSION" >&2
if [[ ! -x "$BIN" ]]; then
  echo "secantus.sh: SecantusDB installed but $BIN is missing" >&2
  exit 1
fi
echo "$BIN"
