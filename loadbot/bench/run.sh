#!/usr/bin/env bash
# Standard loadbot benchmarks against one local Tessera shard.
#
#   loadbot/bench/run.sh                 # every scenario below, in order
#   loadbot/bench/run.sh idle move       # just these
#
# Scenarios (each on a fresh shard, so its CPU and RSS figures are its own):
#   idle      10,000 bots in 100 rooms: connect, join, ping every 5 s; prints
#             the server's RSS growth per connection
#   move      20 rooms x 100 bots, moving at 10 Hz for 60 s
#   hot       1 room x 500 bots, moving at 10 Hz (everyone sees everyone)
#   churn     2,000 bots in 20 rooms dropping/resuming and hopping maps
#   growth    capacity growth: 6,000 moving bots in 60 rooms, ramped over
#             120 s; prints RTT and server CPU as the swarm grows
#   overload  100 rooms x 100 bots = 10,000 moving at 10 Hz, more than this
#             machine can serve; bounded to 30 s + 30 s ramp
#
# Environment:
#   BENCH_OUT        results folder (default target/bench/<date-time>)
#   SKIP_BUILD=1     use the existing release binaries
#   LOADBOT_THREADS  loadbot worker threads (default 1)
#   SERVER_WORKERS   server worker threads (default 0 = one per core)
#   DURATION_SCALE   multiply every duration and ramp (e.g. 0.25 for a smoke run)
#   SERVER_BIN       the shard binary (default target/release/tessera-server),
#                    e.g. an older build to compare against, side by side
#   LOADBOT_BIN      the loadbot binary (default target/release/loadbot)
#   SERVER_CPUS      CPUs the shard is pinned to (taskset list; default 0
#                    when the machine has 2 or more, so the shard and the
#                    loadbot do not take each other's time); "" = unpinned
#   LOADBOT_CPUS     CPUs the loadbot is pinned to (default 1, likewise)
#   FLOOR_DIR        a folder with a reference server's run.sh (a bare
#                    tokio-tungstenite server doing the same job; see
#                    BENCHMARKS.md): move and hot then also run it, with the
#                    same shape and pinning, and print its row beside ours
#
# Traffic goes to 127.0.0.1 only. Every run is bounded in time (`timeout`),
# and the shard is stopped on exit, error or Ctrl-C.
#
# Needs: cargo, python3 (to read the JSON reports), Linux /proc.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${BENCH_OUT:-$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}
LOADBOT_THREADS=${LOADBOT_THREADS:-1}
SERVER_WORKERS=${SERVER_WORKERS:-0}
SCALE=${DURATION_SCALE:-1}
SERVER_BIN=${SERVER_BIN:-$ROOT/target/release/tessera-server}
LOADBOT_BIN=${LOADBOT_BIN:-$ROOT/target/release/loadbot}
ALL=(idle move hot churn growth overload)
# Two or more CPUs: the shard on one, the loadbot on another, as the side by
# side with the floor is measured.
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    SERVER_CPUS=${SERVER_CPUS-0}
    LOADBOT_CPUS=${LOADBOT_CPUS-1}
else
    SERVER_CPUS=${SERVER_CPUS-}
    LOADBOT_CPUS=${LOADBOT_CPUS-}
fi
pin() { if [ -n "$1" ]; then echo taskset -c "$1"; fi; }
read -r -a SERVER_PIN <<< "$(pin "$SERVER_CPUS")"
read -r -a LOADBOT_PIN <<< "$(pin "$LOADBOT_CPUS")"

usage() {
    sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

SCENARIOS=()
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage 0 ;;
        idle|move|hot|churn|growth|overload) SCENARIOS+=("$arg") ;;
        *) echo "unknown scenario: $arg (one of: ${ALL[*]})" >&2; usage 2 ;;
    esac
done
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=("${ALL[@]}")

command -v python3 >/dev/null || { echo "python3 is needed to read the JSON reports" >&2; exit 1; }
mkdir -p "$OUT"

# 10,000 connections need 10,000+ descriptors in each process: raise the soft
# limit to the hard one. Loopback's ephemeral ports bound the bots too.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
read -r PORT_LO PORT_HI < /proc/sys/net/ipv4/ip_local_port_range
echo "open files limit $NOFILE, ephemeral ports $PORT_LO-$PORT_HI ($((PORT_HI - PORT_LO + 1)))"
echo "load average now: $(cut -d' ' -f1-3 /proc/loadavg) (other work skews every figure; see the last column)"
echo "shard pinned to CPUs: ${SERVER_CPUS:-none}, loadbot to: ${LOADBOT_CPUS:-none}"
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt 10100 ]; then
    echo "warning: ulimit -n is $NOFILE; the 10,000-bot scenarios will run out of descriptors" >&2
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "building release binaries..."
    (cd "$ROOT" && cargo build --release -p server -p loadbot)
fi
[ -x "$SERVER_BIN" ] || { echo "no $SERVER_BIN" >&2; exit 1; }
[ -x "$LOADBOT_BIN" ] || { echo "no $LOADBOT_BIN" >&2; exit 1; }

# A shard with 100 plain 1000x1000 maps (m001..m100), room caps above any
# scenario's, m001 as the fallback of a failed room, and a short shutdown
# grace.
CONFIG=$OUT/server.toml
{
    echo "[server]"
    echo "max_connections = 20000"
    echo "shutdown_grace_ms = 1000"
    echo "[rooms]"
    echo "max_players = 2000"
    echo "[supervision]"
    echo "fallback_map = \"m001\""
    for i in $(seq 1 100); do
        printf '[[maps]]\nname = "m%03d"\n' "$i"
    done
} > "$CONFIG"

SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# Starts a shard; sets SERVER_PID and WS_ADDR.
start_server() {
    local name=$1
    RUST_LOG=warn ${SERVER_PIN[@]+"${SERVER_PIN[@]}"} "$SERVER_BIN" --config "$CONFIG" --workers "$SERVER_WORKERS" \
        --ws-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
        > "$OUT/$name.server.out" 2> "$OUT/$name.server.log" &
    SERVER_PID=$!
    WS_ADDR=
    for _ in $(seq 1 150); do
        # Its stdout may not be open yet: sed's exit status 2 would end
        # the script (set -e, pipefail) without a word.
        WS_ADDR=$(sed -n 's/^ws listening on //p' "$OUT/$name.server.out" 2>/dev/null | head -n1 || true)
        HTTP_ADDR=$(sed -n 's/^http listening on //p' "$OUT/$name.server.out" 2>/dev/null | head -n1 || true)
        [ -n "$WS_ADDR" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.2
    done
    if [ -z "$WS_ADDR" ]; then
        echo "the server did not start; see $OUT/$name.server.log" >&2
        cat "$OUT/$name.server.log" >&2
        exit 1
    fi
}

# CPU seconds (utime + stime) of a process; USER_HZ is 100 on Linux.
cpu_s() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# Busy CPU seconds of the whole machine (user, nice, system, irq, softirq,
# steal): what is left after the server and the loadbot is other work, which
# skews every figure on a 2-core box.
machine_busy_s() { awk '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / 100 }' /proc/stat; }

secs() { python3 -c "import sys; print(f'{float(sys.argv[1]) * float(sys.argv[2]):g}s')" "$1" "$SCALE"; }

RESULTS=$OUT/results.md
NOTES=$OUT/notes.md
: > "$NOTES"
echo "| scenario | bots | rooms | joined | connect/join failures | msgs out/s | msgs in/s | rtt p50 ms | rtt p99 ms | rtt max ms | move->visible p99 ms | error frames | disconnects | server CPU (cores) | server RSS before -> peak MiB | loadbot CPU (cores) | loadbot RSS MiB | other processes' CPU (cores) |" > "$RESULTS"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" >> "$RESULTS"

# Right after the overload swarm stops: 50 fresh bots in one room for 10 s.
# Reports, per second since the load stopped, their RTT p99, the first second
# from which it stays under 10 ms, and what the shard counted as dropped.
recovery_probe() {
    echo "--- recovery probe: 50 bots, 1 room, 10 s, right after the load stopped"
    timeout --signal=INT --kill-after=30 60 \
        "$LOADBOT_BIN" --url "ws://$WS_ADDR" --threads 1 --progress lines --progress-every 10s \
        --scenario move --bots 50 --rooms 1 --move-hz 10 --ramp 0s --duration 10s \
        --json "$OUT/recovery.json" \
        > "$OUT/recovery.loadbot.txt" 2> "$OUT/recovery.loadbot.log" || true
    python3 - "$OUT/recovery.json" >> "$NOTES" <<'EOF' || true
import json, sys
s = json.load(open(sys.argv[1]))
per_s = [(t["t_s"], t["rtt_p99_ms"]) for t in s["timeline"]]
back = next((t for t, _ in per_s if all(p <= 10.0 for tt, p in per_s if tt >= t)), None)
print("- overload: recovery probe RTT p99 per second after the stop: "
      + ", ".join(f"{t:g}s {p:.1f} ms" for t, p in per_s))
print(f"- overload: **RTT p99 back under 10 ms from second {back} after the load stopped**; "
      f"probe joins {s['bots_joined']}/50, errors {s['error_frames']}")
EOF
    if [ -n "${HTTP_ADDR:-}" ]; then
        python3 - "http://$HTTP_ADDR/metrics" >> "$NOTES" <<'EOF' || true
import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
keep = ("dropped", "skipped", "overflow", "resync")
totals = {}
for line in text.splitlines():
    name = line.split("{")[0].split(" ")[0]
    if line.startswith("#") or not any(k in name for k in keep):
        continue
    totals[name] = totals.get(name, 0) + float(line.rsplit(" ", 1)[1])
print("- overload: counted by the shard: "
      + ", ".join(f"{k} {v:.0f}" for k, v in sorted(totals.items())))
EOF
    fi
    tail -n 3 "$NOTES"
}

# run_case NAME LOADBOT-ARGS...: fresh shard, sample it, run the loadbot.
run_case() {
    local name=$1; shift
    echo
    echo "=== $name: loadbot $*"
    start_server "$name"
    sleep 1
    local rss0 cpu0 t0 samples=$OUT/$name.server.samples
    rss0=$(rss_kib "$SERVER_PID")
    cpu0=$(cpu_s "$SERVER_PID")
    local busy0 busy1
    busy0=$(machine_busy_s)
    t0=$(date +%s.%N)
    # Sample the server every second while the loadbot runs: t, RSS, CPU.
    (
        while kill -0 "$SERVER_PID" 2>/dev/null; do
            echo "$(date +%s.%N) $(rss_kib "$SERVER_PID") $(cpu_s "$SERVER_PID")"
            sleep 1
        done
    ) > "$samples" 2>/dev/null &
    local sampler=$!
    local status=0
    # Bounded: the run's own length plus a minute; SIGINT makes the loadbot
    # stop early and still write its report.
    local limit
    limit=$(python3 - "$@" <<'EOF'
import sys, re
args = sys.argv[1:]
def dur(flag, default):
    if flag in args:
        v = args[args.index(flag) + 1]
        m = re.fullmatch(r"([\d.]+)(ms|s|m|h)?", v)
        n, u = float(m.group(1)), m.group(2) or "s"
        return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u]
    return default
print(int(dur("--duration", 60) + dur("--ramp", 10) + 60))
EOF
)
    timeout --signal=INT --kill-after=30 "$limit" \
        ${LOADBOT_PIN[@]+"${LOADBOT_PIN[@]}"} "$LOADBOT_BIN" --url "ws://$WS_ADDR" --threads "$LOADBOT_THREADS" \
        --progress lines --progress-every 10s \
        --json "$OUT/$name.json" --html "$OUT/$name.html" "$@" \
        > "$OUT/$name.loadbot.txt" 2> "$OUT/$name.loadbot.log" || status=$?
    local t1 cpu1 rss1
    t1=$(date +%s.%N)
    cpu1=$(cpu_s "$SERVER_PID")
    rss1=$(rss_kib "$SERVER_PID")
    busy1=$(machine_busy_s)
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    if [ "$name" = overload ]; then recovery_probe; fi
    stop_server
    sed -n '/^Tessera loadbot/,$p' "$OUT/$name.loadbot.txt"
    if [ "$status" -ne 0 ] && [ "$status" -ne 3 ]; then
        echo "loadbot exited with $status; see $OUT/$name.loadbot.log" >&2
        tail -n 20 "$OUT/$name.loadbot.log" >&2
        return 0
    fi
    python3 - "$name" "$OUT/$name.json" "$samples" "$rss0" "$rss1" "$cpu0" "$cpu1" "$t0" "$t1" "$busy0" "$busy1" \
        >> "$RESULTS" 2>> "$NOTES" <<'EOF'
import json, sys
name, path, samples = sys.argv[1:4]
rss0, rss1 = int(sys.argv[4]), int(sys.argv[5])
cpu0, cpu1, t0, t1, busy0, busy1 = map(float, sys.argv[6:12])
s = json.load(open(path))
rows = []
for line in open(samples):
    parts = line.split()
    if len(parts) == 3:
        rows.append((float(parts[0]), int(parts[1]), float(parts[2])))
peak = max([r[1] for r in rows] + [rss0, rss1])
wall = max(t1 - t0, 1e-9)
cores = (cpu1 - cpu0) / wall
c = s["config"]
fail = s["connect_failures"] + s["join_failures"]
print(f"| {name} | {s['bots']} | {c['rooms']} | {s['bots_joined']} | {fail} "
      f"| {s['msgs_sent_per_s']:.0f} | {s['msgs_received_per_s']:.0f} "
      f"| {s['rtt_ms']['p50']:.2f} | {s['rtt_ms']['p99']:.2f} | {s['rtt_ms']['max']:.1f} "
      f"| {s['move_visible_ms']['p99']:.1f} | {s['error_frames']} | {s['disconnects']} "
      f"| {cores:.2f} | {rss0/1024:.0f} -> {peak/1024:.0f} "
      f"| {s['loadbot_cpu_pct']/100:.2f} | {s['loadbot_peak_rss_kib']/1024:.0f} "
      f"| {max(busy1 - busy0 - (cpu1 - cpu0) - s['loadbot_cpu_s'], 0) / wall:.2f} |")
notes = []
if s["errors_by_code"]:
    notes.append(f"error frames by code {s['errors_by_code']}")
if s["disconnects_by_close_code"]:
    notes.append(f"disconnects by close code {s['disconnects_by_close_code']}")
if s["connect_failures_by_reason"]:
    notes.append(f"connect failures {s['connect_failures_by_reason']}")
if s["join_failures_by_reason"]:
    notes.append(f"join failures {s['join_failures_by_reason']}")
# Steady state: the samples after the ramp, before the stop.
ramp_end = t0 + c["ramp_s"] + 2
steady = [r for r in rows if ramp_end <= r[0] <= t0 + c["ramp_s"] + c["duration_s"]]
if len(steady) >= 2:
    dc = (steady[-1][2] - steady[0][2]) / max(steady[-1][0] - steady[0][0], 1e-9)
    notes.append(f"server CPU after the ramp {dc:.2f} cores")
if name == "idle":
    joined = max(s["bots_joined"], 1)
    notes.append(
        f"**server RSS growth per connection: {(peak - rss0) / joined:.1f} KiB** "
        f"({rss0} KiB idle -> {peak} KiB with {s['bots_joined']} bots joined); "
        f"loadbot RSS per bot {s['loadbot_peak_rss_kib'] / joined:.1f} KiB")
if name == "churn":
    notes.append(f"reconnects {s['reconnects']}, resumed same player {s['resumed_same_player']}, "
                 f"new player {s['resumed_new_player']}, map hops {s['map_hops']}, "
                 f"join p99 {s['join_ms']['p99']:.1f} ms, connect p99 {s['connect_ms']['p99']:.1f} ms")
if name == "growth":
    # RTT and server CPU per 1,000 bots as the swarm grew.
    notes.append("growth, per step of bots in a room: bots | rtt p50 | rtt p99 | move->visible p99 | server cores")
    step = 1000
    for lo in range(0, s["bots"], step):
        secs_ = [t for t in s["timeline"] if lo < t["bots_in_room"] <= lo + step]
        if not secs_:
            continue
        a, b = t0 + secs_[0]["t_s"] - 1, t0 + secs_[-1]["t_s"]
        win = [r for r in rows if a <= r[0] <= b]
        cores_ = ((win[-1][2] - win[0][2]) / max(win[-1][0] - win[0][0], 1e-9)) if len(win) >= 2 else float("nan")
        p50 = max(t["rtt_p50_ms"] for t in secs_)
        p99 = max(t["rtt_p99_ms"] for t in secs_)
        mv = max(t["move_visible_p99_ms"] for t in secs_)
        notes.append(f"  {lo + step:>6} | {p50:8.2f} | {p99:8.2f} | {mv:8.2f} | {cores_:.2f}")
for n in notes:
    print(f"- {name}: {n}", file=sys.stderr)
EOF
    tail -n "+1" "$NOTES" | grep "^- $name:" || true
}

# floor_case NAME ROOMS PER_ROOM SECONDS: the reference server in tick mode
# (20 Hz ticks, 10 Hz moves), same pinning, its row beside ours.
floor_case() {
    [ -n "${FLOOR_DIR:-}" ] || return 0
    if [ ! -x "$FLOOR_DIR/run.sh" ]; then
        echo "FLOOR_DIR=$FLOOR_DIR has no run.sh; no floor row" >&2
        return 0
    fi
    echo "--- $1: the floor, ${2}x${3}, ${4}s"
    local line
    line=$(SERVER_CPUS=${SERVER_CPUS:-0} CLIENT_CPUS=${LOADBOT_CPUS:-1} \
        timeout 600 "$FLOOR_DIR/run.sh" "$2" "$3" "$4" tick 2> "$OUT/$1.floor.log" | grep '^{' | tail -n1) || true
    if [ -z "$line" ]; then
        echo "the floor run failed; see $OUT/$1.floor.log" >&2
        return 0
    fi
    python3 - "$1" "$line" >> "$RESULTS" <<'EOF'
import json, sys
name, j = sys.argv[1], json.loads(sys.argv[2])
print(f"| {name} (floor, same run) | {j['clients']} | {j['R']} | {j['joined']} | {j['join_failed']} "
      f"| {j['moves_sent_per_s']:.0f} | {j['frames_received_per_s']:.0f} "
      f"| {j['rtt_p50_ms']:.2f} | {j['rtt_p99_ms']:.2f} | {j['rtt_max_ms']:.1f} "
      f"| {j.get('move_lat_p99_ms', float('nan')):.1f} | - | - "
      f"| {j['server_cpu_s_per_s']:.2f} | - | {j['client_cpu_s_per_s']:.2f} | {j.get('client_rss_peak_mb', 0):.0f} | - |")
EOF
    tail -n 1 "$RESULTS"
}

for scenario in "${SCENARIOS[@]}"; do
    case "$scenario" in
        idle) run_case idle --scenario idle --bots 10000 --rooms 100 \
                --ramp "$(secs 40)" --duration "$(secs 30)" --ping-interval 5s ;;
        move) run_case move --scenario move --bots 2000 --rooms 20 --move-hz 10 \
                --ramp "$(secs 10)" --duration "$(secs 60)"
              floor_case move 20 100 "$(secs 60 | tr -d s)" ;;
        hot) run_case hot --scenario move --bots 500 --rooms 1 --move-hz 10 \
                --ramp "$(secs 10)" --duration "$(secs 30)"
              floor_case hot 1 500 "$(secs 30 | tr -d s)" ;;
        churn) run_case churn --scenario churn --bots 2000 --rooms 20 --move-hz 10 \
                --churn-interval 5s --ramp "$(secs 10)" --duration "$(secs 60)" ;;
        growth) run_case growth --scenario move --bots 6000 --rooms 60 --move-hz 10 \
                --ramp "$(secs 120)" --duration "$(secs 10)" ;;
        overload) run_case overload --scenario move --bots 10000 --rooms 100 --move-hz 10 \
                --ramp "$(secs 30)" --duration "$(secs 30)" ;;
    esac
done

echo
echo "## Results ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, loadbot threads $LOADBOT_THREADS)"
echo
cat "$RESULTS"
echo
cat "$NOTES"
echo
echo "Reports (JSON, HTML, logs) in $OUT"
