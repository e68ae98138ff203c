#!/usr/bin/env bash
# Print the path of a promtool, installing it when missing: from Debian's
# `prometheus` package, unpacked into target/tools/ (only promtool is
# taken: installing the package itself would start a Prometheus daemon).
# Exits 1 with the reason when it cannot be had.
#
#   PROMTOOL=$(scripts/promtool.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v promtool >/dev/null; then
  command -v promtool
  exit 0
fi
tool=target/tools/promtool
if [ -x "$tool" ]; then
  echo "$PWD/$tool"
  exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "promtool.sh: no apt-get/dpkg-deb here to fetch Debian's prometheus package" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(
  cd "$work"
  apt-get download prometheus >/dev/null 2>&1 || {
    # The package lists may be missing or old on a fresh machine.
    apt-get update >/dev/null 2>&1 || true
    apt-get download prometheus >/dev/null 2>&1
  }
) || { echo "promtool.sh: apt-get download prometheus failed" >&2; exit 1; }
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
mkdir -p target/tools
cp "$work/root/usr/bin/promtool" "$tool"
echo "$PWD/$tool"
