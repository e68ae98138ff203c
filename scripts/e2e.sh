#!/usr/bin/env bash
# Browser tests: the JS protocol client (node), the demo page and the ops
# console end to end (Debian chromium driven by playwright-core against the
# real server, console and loadbot binaries).
#
# Installs what is missing (chromium, node, the e2e npm packages) and runs
# the tests in protocol/js/test/ and server/tests/e2e/ with node --test.
# It does not build the binaries: build them first (cargo build --workspace
# --bins), or point TESSERA_SERVER_BIN, OPS_BIN and LOADBOT_BIN at them. CHROMIUM overrides /usr/bin/chromium.
# Safe to run again: each step is skipped when its result is already there.
set -euo pipefail

cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -q
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "e2e: installing node and npm"
  apt_install nodejs npm
fi

chromium_bin="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium_bin" ]; then
  echo "e2e: installing chromium"
  apt_install chromium
fi

e2e_dir=server/tests/e2e
# npm ci wipes node_modules first, so only run it when the locked version
# is not what is installed.
want=$(node -p "require('./$e2e_dir/package-lock.json').packages['node_modules/playwright-core'].version")
have=$(node -p "try { require('./$e2e_dir/node_modules/playwright-core/package.json').version } catch { '' }")
if [ "$want" != "$have" ]; then
  echo "e2e: installing playwright-core $want"
  npm ci --prefix "$e2e_dir" --no-audit --no-fund
fi

for bin in "${TESSERA_SERVER_BIN:-target/debug/tessera-server}" \
  "${OPS_BIN:-target/debug/tessera-ops}" "${LOADBOT_BIN:-target/debug/loadbot}"; do
  if [ ! -x "$bin" ]; then
    echo "e2e: no binary at $bin: build them first (cargo build --workspace --bins)" >&2
    exit 1
  fi
done

# Files, not directories: node 21+ reads a directory argument as a literal
# glob and fails with MODULE_NOT_FOUND, where node 20 searched it.
exec node --test protocol/js/test/*.test.mjs "$e2e_dir"/*.test.mjs
