#!/usr/bin/env bash
# The hop's cost: 3 local shards in cluster mode, the loadbot twice at
# 20 rooms x 100 bots (all bots on their room's owner, then all bots on
# another shard), and for each run:
#   - server CPU per delivered update (the 3 shards' utime + stime from
#     /proc, over the updates the bots received),
#   - RTT p99 and move-to-visible p99 (the loadbot's), and move-to-visible
#     p50 (the hop's added latency shifts the median as it does the
#     tail, and the median moves far less from run to run),
#   - tunnel bytes/s (bytes_out summed over every shard's peers, from
#     `GET /admin/peers`) against the players' socket bytes/s (what the
#     bots sent and received, from the loadbot's report),
#   - the CPU other processes took during the run, in cores (the last
#     column: the machine's busy time from /proc/stat less the shards'
#     and the loadbot's; Redis counts as other). A run where it is above
#     ~0.1 core measured the neighbours as much as the hop.
#
#   loadbot/bench/cluster.sh
#
# The cluster is started the way scripts/cluster.sh starts one (Debian's
# redis-server on a free loopback port, shard-1..3 with TESSERA_CLUSTER__*
# variables, each with its own embedded store), with two differences it
# needs: release binaries and a config with 20 maps (m01..m20), since
# scripts/cluster.sh runs target/debug binaries with the built-in maps and
# drops every TESSERA_* variable, TESSERA_CONFIG included.
#
# A bot on a shard that does not own its room plays it through that
# shard's tunnel to the owner. Should the tunnels carry (almost) nothing in
# the remote run (a build without remote rooms), the script says so: that
# run then measured local rooms, not the hop.
#
# Environment:
#   BENCH_OUT      results folder (default target/bench/cluster-<date-time>)
#   SKIP_BUILD=1   use the existing binaries
#   BIN_DIR        where the binaries are (default target/release)
#   ROOMS          rooms (default 20)
#   BOTS_PER_ROOM  bots per room (default 100)
#   DURATION       steady state per run (default 60s)
#   RAMP           ramp per run (default 10s)
#   MOVE_HZ        move intents per second per bot (default 10)
#   WORKERS        each shard's session threads, `server.workers` (default 0:
#                  one per core)
#   ROOM_ARBITERS  each shard's room threads, `rooms.arbiters` (default 0:
#                  one per core)
#   CONFIG_EXTRA   TOML appended to the shards' config, to compare settings
#                  (e.g. $'[cluster.tunnel]\nack_eliciting_threshold = 1')
#
# Traffic goes to 127.0.0.1 only. Every run is bounded (`timeout`), and
# everything started here is stopped on exit, error or Ctrl-C.
#
# Needs: cargo, redis-server, python3 (to read the JSON), Linux /proc.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${BENCH_OUT:-$ROOT/target/bench/cluster-$(date +%Y%m%d-%H%M%S)}
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
ROOMS=${ROOMS:-20}
BOTS_PER_ROOM=${BOTS_PER_ROOM:-100}
DURATION=${DURATION:-60s}
RAMP=${RAMP:-10s}
MOVE_HZ=${MOVE_HZ:-10}
WORKERS=${WORKERS:-0}
ROOM_ARBITERS=${ROOM_ARBITERS:-0}
SHARDS=3
PREFIX=bench
START_WAIT_S=30

case "${1:-}" in
    -h|--help) sed -n '2,48p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "cluster.sh takes no arguments (see --help)" >&2; exit 2 ;;
esac
[[ "$ROOMS" =~ ^[0-9]+$ ]] && [ "$ROOMS" -ge 1 ] && [ "$ROOMS" -le 100 ] \
    || { echo "ROOMS must be 1-100" >&2; exit 2; }
[[ "$WORKERS" =~ ^[0-9]+$ ]] && [[ "$ROOM_ARBITERS" =~ ^[0-9]+$ ]] \
    || { echo "WORKERS and ROOM_ARBITERS must be numbers (0: one per core)" >&2; exit 2; }
[[ "$BOTS_PER_ROOM" =~ ^[0-9]+$ ]] && [ "$BOTS_PER_ROOM" -ge 1 ] \
    || { echo "BOTS_PER_ROOM must be a positive number" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed to read the JSON reports" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server is missing (apt-get install redis-server)" >&2; exit 1; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "building release binaries..."
    (cd "$ROOT" && cargo build --release -p server -p loadbot -p ops)
fi
SERVER_BIN=$BIN_DIR/tessera-server
LOADBOT_BIN=$BIN_DIR/loadbot
OPS_BIN=$BIN_DIR/tessera-ops
for bin in "$SERVER_BIN" "$LOADBOT_BIN" "$OPS_BIN"; do
    [ -x "$bin" ] || { echo "no $bin (build it, or set BIN_DIR)" >&2; exit 1; }
done
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PIDS=()
stop_all() {
    local pid
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap stop_all EXIT
trap 'stop_all; exit 130' INT TERM

# free_port, hex
. "$ROOT/scripts/lib/ports.sh"

# 20 plain maps and room caps above the run's.
CONFIG=$OUT/server.toml
{
    echo "[server]"
    echo "shutdown_grace_ms = 1000"
    echo "workers = $WORKERS"
    echo "[rooms]"
    echo "max_players = $((BOTS_PER_ROOM * 2 + 100))"
    echo "arbiters = $ROOM_ARBITERS"
    echo "[supervision]"
    echo "fallback_map = \"m01\""
    for i in $(seq 1 "$ROOMS"); do printf '[[maps]]\nname = "m%02d"\n' "$i"; done
    [ -z "${CONFIG_EXTRA:-}" ] || printf '%s\n' "$CONFIG_EXTRA"
} > "$CONFIG"
MAPS=$(seq -f 'm%02g' 1 "$ROOMS" | paste -sd, -)

port=$(free_port)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --protected-mode yes --dir "$OUT" > "$OUT/redis.log" 2>&1 &
PIDS+=($!)
REDIS=redis://127.0.0.1:$port/0
for _ in $(seq 1 $((START_WAIT_S * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

SECRET=$(hex 24)
TOKEN=$(hex 16)
SHARD_PIDS=()
for i in $(seq 1 $SHARDS); do
    dir=$OUT/shard-$i
    mkdir -p "$dir"
    (
        for v in $(env | grep -o '^TESSERA_[A-Za-z0-9_]*' || true); do unset "$v"; done
        export TESSERA_CLUSTER__REDIS=$REDIS TESSERA_CLUSTER__SECRET=$SECRET
        export TESSERA_CLUSTER__SHARD_ID=shard-$i TESSERA_CLUSTER__KEY_PREFIX=$PREFIX
        export TESSERA_CLUSTER__PEER_ADDR=127.0.0.1:0 TESSERA_ADMIN__TOKEN=$TOKEN
        export TESSERA_STORE__EMBEDDED__DIR=$dir/data RUST_LOG=warn
        exec "$SERVER_BIN" --config "$CONFIG" --ws-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
            > "$dir/stdout" 2> "$dir/log"
    ) &
    PIDS+=($!)
    SHARD_PIDS+=($!)
done
WS=()
HTTP=()
for i in $(seq 1 $SHARDS); do
    out=$OUT/shard-$i/stdout ws= http=
    for _ in $(seq 1 $((START_WAIT_S * 10))); do
        # The shard may not have opened its stdout yet: sed's exit status
        # 2 would end the script (set -e, pipefail) without a word.
        ws=$(sed -n 's/^ws listening on //p' "$out" 2>/dev/null | head -n1 || true)
        http=$(sed -n 's/^http listening on //p' "$out" 2>/dev/null | head -n1 || true)
        [ -n "$ws" ] && [ -n "$http" ] && break
        sleep 0.1
    done
    [ -n "$ws" ] || { echo "shard-$i did not start; see $OUT/shard-$i/log" >&2; exit 1; }
    WS+=("$ws")
    HTTP+=("$http")
    echo "shard-$i ws $ws http $http"
done
# Ready in the directory, tunnels up: every shard sees the 2 others.
for _ in $(seq 1 $((START_WAIT_S * 5))); do
    ready=$("$OPS_BIN" shards ls --redis "$REDIS" --key-prefix "$PREFIX" 2>/dev/null | grep -c ' ready ' || true)
    [ "$ready" -eq $SHARDS ] && break
    sleep 0.2
done
[ "$ready" -eq $SHARDS ] || { echo "only $ready of $SHARDS shards ready in the directory" >&2; exit 1; }

cpu_ticks() { # utime + stime of the shards, in clock ticks
    local pid total=0
    for pid in "${SHARD_PIDS[@]}"; do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
    done
    echo "$total"
}
# Busy CPU seconds of the whole machine (user, nice, system, irq, softirq,
# steal), as in run.sh: what the shards and the loadbot did not take is
# other work (Redis's share included), which skews every figure.
machine_busy_s() { awk '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / 100 }' /proc/stat; }
tunnel_bytes() { # "bytes datagrams": bytes_out and QUIC datagrams out summed over every shard's peers
    local total=0 datagrams=0 http n d
    for http in "${HTTP[@]}"; do
        read -r n d < <("$OPS_BIN" --http "$http" --token "$TOKEN" peers --json \
            | python3 -c 'import json,sys; ps = json.load(sys.stdin)["peers"]; print(sum(p["bytes_out"] for p in ps), sum((p.get("quic") or {}).get("datagrams_out", 0) for p in ps))')
        total=$((total + n))
        datagrams=$((datagrams + d))
    done
    echo "$total $datagrams"
}

URL_ARGS=()
for ws in "${WS[@]}"; do URL_ARGS+=(--url "ws://$ws"); done
BOTS=$((ROOMS * BOTS_PER_ROOM))
TICK=$(getconf CLK_TCK)
RESULTS=$OUT/results.md
echo "| run | bots | remote bots | updates delivered | server CPU s (3 shards) | server CPU µs per update | RTT p99 ms | move->visible p99 ms | tunnel B/s | players' sockets B/s | tunnel / sockets | tunnel datagrams/s | move->visible p50 ms | other processes' CPU (cores) |" > "$RESULTS"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" >> "$RESULTS"

run() {
    local name=$1 share=$2
    local cpu0 bytes0 cpu1 bytes1 dgrams0 dgrams1 busy0 busy1 wall0 wall1
    read -r bytes0 dgrams0 < <(tunnel_bytes)
    cpu0=$(cpu_ticks)
    busy0=$(machine_busy_s)
    wall0=$(date +%s.%N)
    echo "run $name: $BOTS bots in $ROOMS rooms, --remote-share $share"
    timeout --kill-after=10s 30m "$LOADBOT_BIN" "${URL_ARGS[@]}" --redis "$REDIS" \
        --cluster-prefix "$PREFIX" --maps "$MAPS" --rooms "$ROOMS" --bots "$BOTS" \
        --remote-share "$share" --move-hz "$MOVE_HZ" --duration "$DURATION" --ramp "$RAMP" \
        --progress lines --progress-every 10s --json "$OUT/$name.json" > "$OUT/$name.out" 2> "$OUT/$name.err" \
        || { echo "the loadbot failed ($name): see $OUT/$name.err" >&2; tail -5 "$OUT/$name.err" >&2; exit 1; }
    cpu1=$(cpu_ticks)
    busy1=$(machine_busy_s)
    wall1=$(date +%s.%N)
    read -r bytes1 dgrams1 < <(tunnel_bytes)
    # Each shard's peer table (QUIC counters included) after the run.
    local i
    for i in "${!HTTP[@]}"; do
        "$OPS_BIN" --http "${HTTP[$i]}" --token "$TOKEN" peers --json \
            > "$OUT/$name.peers-shard-$((i + 1)).json" 2>/dev/null || true
        # And its metrics (counters since start: diff runs to compare).
        curl -s "http://${HTTP[$i]}/metrics" > "$OUT/$name.metrics-shard-$((i + 1)).txt" 2>/dev/null || true
    done
    python3 - "$OUT/$name.json" "$name" "$(( (cpu1 - cpu0) ))" "$TICK" "$((bytes1 - bytes0))" "$((dgrams1 - dgrams0))" \
        "$busy0" "$busy1" "$wall0" "$wall1" >> "$RESULTS" <<'EOF'
import json, sys
path, name, ticks, hz, tunnel = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
datagrams = int(sys.argv[6])
busy0, busy1, wall0, wall1 = map(float, sys.argv[7:11])
s = json.load(open(path))
elapsed = s["elapsed_s"] or 1.0
updates = sum(sh["updates_received"] for sh in s["shards"])
remote = sum(sh["remote_bots"] for sh in s["shards"])
cpu_s = ticks / hz
per_update_us = cpu_s / updates * 1e6 if updates else float("nan")
# The whole machine's busy time over the run, less the shards' and the
# loadbot's: the neighbours' share, in cores.
other = max(0.0, (busy1 - busy0) - cpu_s - s["loadbot_cpu_s"]) / max(wall1 - wall0, 1e-3)
sockets = (s["bytes_sent"] + s["bytes_received"]) / elapsed
tunnel_per_s = tunnel / elapsed
ratio = tunnel_per_s / sockets if sockets else float("nan")
print(f"| {name} | {s['bots']} | {remote} | {updates} | {cpu_s:.1f} | {per_update_us:.2f} | "
      f"{s['rtt_ms']['p99']:.2f} | {s['move_visible_ms']['p99']:.2f} | {tunnel_per_s:.0f} | {sockets:.0f} | {ratio:.4f} | "
      f"{datagrams / elapsed:.0f} | {s['move_visible_ms']['p50']:.2f} | {other:.2f} |")
EOF
}

run local 0
run remote 1

echo
cat "$RESULTS"
local_tunnel=$(awk -F'|' '$2 ~ /local/ { print $10 + 0 }' "$RESULTS")
remote_tunnel=$(awk -F'|' '$2 ~ /remote/ { print $10 + 0 }' "$RESULTS")
# Heartbeats alone are a few hundred bytes per second; remote players'
# traffic is far more.
if python3 -c "import sys; sys.exit(0 if float(sys.argv[2]) < 2 * float(sys.argv[1]) + 1000 else 1)" \
    "$local_tunnel" "$remote_tunnel"; then
    echo
    echo "note: the remote run's tunnels carried no more than the local run's (heartbeats):"
    echo "the bots played in rooms of their own shard (are the shards one cluster? see"
    echo "the shards' logs), so the 'remote' run did not measure the hop."
fi
# The second input batches of the remote run against the tick each aimed
# at (counted only when the lead adapts: cluster.input_late_lead_min_ms
# below cluster.input_late_lead_ms). The counters run from each shard's
# start, and the local run has no remote members, so the remote run's
# files hold the remote run's counts.
python3 - "$OUT" <<'EOF2' || true
import glob, re, sys
made = missed = 0
for path in glob.glob(f"{sys.argv[1]}/remote.metrics-shard-*.txt"):
    for line in open(path):
        m = re.match(r'tessera_remote_late_batches_total\{outcome="(made|missed)"\} (\S+)', line)
        if m:
            n = int(float(m.group(2)))
            made, missed = (made + n, missed) if m.group(1) == "made" else (made, missed + n)
if made + missed:
    print(f"second input batches (remote run): {made + missed}, "
          f"{missed} missed their tick ({100 * missed / (made + missed):.1f} %)")
EOF2
echo "(reports and logs in $OUT)"
