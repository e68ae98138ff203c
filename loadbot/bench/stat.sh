#!/usr/bin/env bash
# stat.sh R P SECONDS: a shard (pinned to CPU 0) under R x P moving bots (the
# loadbot, pinned to CPU 1); perf stat counts the shard's task clock, context
# switches and syscalls (software events: steady where the host is not) for
# SECONDS in the steady part, divided by the frames the shard counted.
# SERVER_BIN, LOADBOT_BIN: the binaries (default target/release/...). VIEW: the
# view radius. Traffic to 127.0.0.1 only; the shard is stopped at the end.
set -euo pipefail
R=${1:-20}; P=${2:-100}; D=${3:-10}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${SERVER_BIN:-$ROOT/target/release/tessera-server}
LB=${LOADBOT_BIN:-$ROOT/target/release/loadbot}
tmp=$(mktemp -d /tmp/stat-XXXX)
{
printf '[server]\nmax_connections = 20000\nshutdown_grace_ms = 1000\n[rooms]\nmax_players = 2000\nview_radius = %s\n[supervision]\nfallback_map = "m001"\n' "${VIEW:-400.0}"
for i in $(seq 1 $R); do printf '[[maps]]\nname = "m%03d"\n' $i; done
} > $tmp/server.toml
cd $tmp
RUST_LOG=warn taskset -c 0 $BIN --config server.toml --ws-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 > srv.out 2>/dev/null &
SPID=$!
trap 'kill $SPID 2>/dev/null || true; rm -rf "$tmp"' EXIT
for i in $(seq 50); do grep -q "http listening" srv.out 2>/dev/null && grep -q "ws listening" srv.out && break; sleep 0.2; done
WS=$(sed -n 's/.*ws listening on \(\S*\).*/\1/p' srv.out 2>/dev/null || true)
HTTP=$(sed -n 's/.*http listening on \(\S*\).*/\1/p' srv.out 2>/dev/null || true)
[ -n "$WS" ] && [ -n "$HTTP" ] || { echo "the server did not start within 10 s" >&2; exit 1; }
taskset -c 1 $LB --url ws://$WS --bots $((R*P)) --rooms $R --scenario move --move-hz 10 --ramp 10s --duration $((D+20))s --threads 1 --json lb.json --progress lines --progress-every 60s >/dev/null 2>&1 &
LPID=$!
sleep 14
f0=$(curl -s http://$HTTP/metrics | awk '/^tessera_frames_sent_total /{print $2}')
timeout $((D + 30)) perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p $SPID -- sleep $D 2> stat.txt >/dev/null
f1=$(curl -s http://$HTTP/metrics | awk '/^tessera_frames_sent_total /{print $2}')
timeout 120 tail --pid=$LPID -f /dev/null || kill $LPID 2>/dev/null || true
kill $SPID; wait $SPID 2>/dev/null || true
python3 - "$f0" "$f1" "$D" <<'PY'
import sys
f=float(sys.argv[2])-float(sys.argv[1])
vals={}
for l in open("stat.txt"):
    p=l.strip().split(",")
    if len(p)>3 and p[0] and p[0][0].isdigit(): vals[p[2]]=float(p[0])
tc=vals.get("task-clock",0)
print(f"frames {f:.0f}  task clock us/frame {tc/f*1000:.2f}  context switches/1k frames {vals.get('context-switches',0)/f*1000:.1f}  syscalls/1k frames {vals.get('raw_syscalls:sys_enter',0)/f*1000:.1f}  cores {tc/1000/float(sys.argv[3]):.3f}")
PY
