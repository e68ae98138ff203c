#!/usr/bin/env bash
# Capacity sweep: the largest R x 100 (10 Hz moves, 20 Hz ticks) a shard
# holds with an RTT p99 at or under a limit, and, with FLOOR_DIR, the same
# for the reference server (issue 12: ours should be >= 90 % of its).
#
#   loadbot/bench/capacity.sh                  # R = 20 30 40 50, 15 s each
#   ROOMS="30 35 40" SECONDS_EACH=20 loadbot/bench/capacity.sh
#
# Environment:
#   ROOMS          the R values to try, in increasing order (default "20 30 40 50")
#   PER_ROOM       players per room (default 100)
#   SECONDS_EACH   measured seconds per point, after a 10 s ramp (default 15)
#   LIMIT_MS       the RTT p99 limit (default 50)
#   VIEW           the shard's view radius (default 400.0, the default config)
#   SERVER_BIN, LOADBOT_BIN   the binaries (default target/release/...)
#   FLOOR_DIR      a folder with the reference server's run.sh; without it
#                  only the shard is swept
#
# Each point runs on a fresh shard pinned to CPU 0, with the loadbot on
# CPU 1 (as loadbot/bench/run.sh does on a machine with 2 or more CPUs). A
# system stops being swept at its first point over the limit. Every run is
# bounded by `timeout`; traffic goes to 127.0.0.1 only.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROOMS=${ROOMS:-20 30 40 50}
PER_ROOM=${PER_ROOM:-100}
D=${SECONDS_EACH:-15}
LIMIT_MS=${LIMIT_MS:-50}
VIEW=${VIEW:-400.0}
SERVER_BIN=${SERVER_BIN:-$ROOT/target/release/tessera-server}
LOADBOT_BIN=${LOADBOT_BIN:-$ROOT/target/release/loadbot}
TMP=$(mktemp -d /tmp/capacity-XXXX)
SPID=""
cleanup() {
    if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

cpu_s() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }

# shard_point R: prints "cores rtt_p99_ms visible_p99_ms joined"
shard_point() {
    local r=$1 dir="$TMP/shard-$1"
    mkdir -p "$dir"
    {
        printf '[server]\nmax_connections = 20000\nshutdown_grace_ms = 1000\n'
        printf '[rooms]\nmax_players = 2000\nview_radius = %s\n' "$VIEW"
        printf '[supervision]\nfallback_map = "m001"\n'
        for i in $(seq 1 "$r"); do printf '[[maps]]\nname = "m%03d"\n' "$i"; done
    } > "$dir/server.toml"
    (cd "$dir" && RUST_LOG=warn exec taskset -c 0 "$SERVER_BIN" --config server.toml \
        --ws-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 > srv.out 2>/dev/null) &
    SPID=$!
    for _ in $(seq 100); do grep -q "ws listening" "$dir/srv.out" 2>/dev/null && break; sleep 0.2; done
    local ws
    ws=$(sed -n 's/.*ws listening on \(\S*\).*/\1/p' "$dir/srv.out" 2>/dev/null || true)
    [ -n "$ws" ] || { echo "the shard did not start" >&2; return 1; }
    timeout $((D + 120)) taskset -c 1 "$LOADBOT_BIN" --url "ws://$ws" --bots $((r * PER_ROOM)) \
        --rooms "$r" --scenario move --move-hz 10 --ramp 10s --duration "${D}s" --threads 1 \
        --json "$dir/lb.json" --progress lines --progress-every 60s > /dev/null 2>&1 &
    local lb=$!
    sleep 13
    local c0 t0 c1 t1
    c0=$(cpu_s "$SPID"); t0=$(date +%s.%N)
    sleep $((D - 5))
    c1=$(cpu_s "$SPID"); t1=$(date +%s.%N)
    wait "$lb" || true
    kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=""
    python3 - "$dir/lb.json" "$c0" "$c1" "$t0" "$t1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
c0, c1, t0, t1 = map(float, sys.argv[2:6])
print(f"{(c1 - c0) / (t1 - t0):.3f} {s['rtt_ms']['p99']:.1f} {s['move_visible_ms']['p99']:.1f} {s['bots_joined']}")
PY
}

# floor_point R: prints "cores rtt_p99_ms visible_p99_ms clients"
floor_point() {
    local line
    line=$(timeout $((D + 200)) "$FLOOR_DIR/run.sh" "$1" "$PER_ROOM" "$D" tick 2>/dev/null | grep '^{' | tail -n1)
    python3 - "$line" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
cores, p99, vis = j["server_cpu_s_per_s"], j["rtt_p99_ms"], j["move_lat_p99_ms"]
print(f"{cores:.3f} {p99:.1f} {vis:.1f} {j.get('clients', 0)}")
PY
}

sweep() {
    local system=$1 best=0 r out
    for r in $ROOMS; do
        if [ "$system" = shard ]; then out=$(shard_point "$r"); else out=$(floor_point "$r"); fi
        read -r cores p99 vis n <<< "$out"
        echo "| $system | ${r}x$PER_ROOM | $n | $cores | $p99 | $vis |"
        if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$p99" "$LIMIT_MS"; then
            best=$r
        else
            break
        fi
    done
    echo "$system: the largest R x $PER_ROOM with RTT p99 <= $LIMIT_MS ms: ${best}x$PER_ROOM" >&2
    echo "$best" > "$TMP/best-$system"
}

echo "| system | load | players | server cores | RTT p99 ms | move->visible p99 ms |"
echo "|---|---|---|---|---|---|"
if [ -n "${FLOOR_DIR:-}" ]; then sweep floor; fi
sweep shard
if [ -n "${FLOOR_DIR:-}" ]; then
    python3 -c 'import sys; f, s = int(sys.argv[1]), int(sys.argv[2]); print(f"shard / floor capacity: {s}/{f} = {s / f:.2f}" if f else "the floor held no point")' \
        "$(cat "$TMP/best-floor")" "$(cat "$TMP/best-shard")" >&2
fi
