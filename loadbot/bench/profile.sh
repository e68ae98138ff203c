#!/usr/bin/env bash
# profile.sh R P SECONDS [OUT]: a shard (pinned to CPU 0) under R x P moving
# bots (the loadbot, pinned to CPU 1); `perf record` samples the shard with
# DWARF call graphs for SECONDS in the steady part, then
# `profile_shares.py` prints the share of user-space and kernel samples and
# the user-space samples by component (the tables of BENCHMARKS.md).
# Sample shares hold on a shared box where absolute CPU does not.
# SERVER_BIN, LOADBOT_BIN: the binaries (default target/release/...). VIEW:
# the view radius. FREQ: samples per second (999). OUT: the perf data file
# (default: a temporary one). Traffic to 127.0.0.1 only; the shard and the
# loadbot are stopped at the end.
set -euo pipefail
R=${1:-20}; P=${2:-100}; D=${3:-10}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${SERVER_BIN:-$ROOT/target/release/tessera-server}
LB=${LOADBOT_BIN:-$ROOT/target/release/loadbot}
tmp=$(mktemp -d /tmp/profile-XXXX)
OUT=${4:-$tmp/perf.data}
{
printf '[server]\nmax_connections = 20000\nshutdown_grace_ms = 1000\n[rooms]\nmax_players = 2000\nview_radius = %s\n[supervision]\nfallback_map = "m001"\n' "${VIEW:-400.0}"
for i in $(seq 1 "$R"); do printf '[[maps]]\nname = "m%03d"\n' "$i"; done
} > "$tmp/server.toml"
cd "$tmp"
RUST_LOG=warn taskset -c 0 "$BIN" --config server.toml --ws-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 > srv.out 2>/dev/null &
SPID=$!
LPID=
trap 'kill $SPID $LPID 2>/dev/null || true; [ -n "${4:-}" ] || rm -rf "$tmp"' EXIT
for _ in $(seq 50); do grep -q "ws listening" srv.out 2>/dev/null && break; sleep 0.2; done
WS=$(sed -n 's/.*ws listening on \(\S*\).*/\1/p' srv.out 2>/dev/null || true)
[ -n "$WS" ] || { echo "the server did not start within 10 s" >&2; exit 1; }
taskset -c 1 "$LB" --url "ws://$WS" --bots $((R * P)) --rooms "$R" --scenario move --move-hz 10 \
    --ramp 10s --duration $((D + 20))s --threads 1 --json lb.json --progress lines \
    --progress-every 60s >/dev/null 2>&1 &
LPID=$!
sleep 14
timeout $((D + 30)) perf record -F "${FREQ:-999}" --call-graph dwarf,32768 -o "$OUT" -p "$SPID" \
    -- sleep "$D" >/dev/null 2>&1
wait "$LPID" || true
LPID=
python3 "$ROOT/loadbot/bench/profile_shares.py" "$OUT"
