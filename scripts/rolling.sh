#!/usr/bin/env bash
# A rolling restart on loopback: a local cluster of 3 shards sharing one
# store (scripts/cluster.sh up 3 --secantus) under the loadbot's churn
# scenario with durable actions (gives), while each shard in turn is
# drained (SIGTERM: notice 6004, close 4008, the bots resume on another
# shard at once) and started again. Prints each drain (how long the shard
# took to exit), failed resumes (target 0), lost acks (target 0: every
# player's inventory read from the store against the loadbot's ledger),
# the largest gap between two updates any bot saw, and where the largest
# gap's time went (that bot's events: last update, notice, drop, joined,
# first update of the room). Exit 1 on a failed resume or a lost ack.
#
#   scripts/rolling.sh
#
# Environment: BOTS (default 60), ROOMS (default 3), GAP_S (seconds of
# play before each drain and at the end, default 6), DURABLE_RATE (gives
# per second per bot, default 0.5), OUT (results, default target/rolling).
# Everything it starts is stopped on exit; every wait is bounded. Needs
# redis-server, python3, the debug binaries (built if missing) and
# SecantusDB (scripts/secantus.sh installs it).
set -euo pipefail

cd "$(dirname "$0")/.."
bots=${BOTS:-60}
rooms=${ROOMS:-3}
gap_s=${GAP_S:-6}
durable_rate=${DURABLE_RATE:-0.5}
out=${OUT:-target/rolling}
state=target/cluster
[[ "$gap_s" =~ ^[0-9]+$ ]] && [ "$gap_s" -ge 2 ] && [ "$gap_s" -le 600 ] || {
  echo "rolling.sh: GAP_S must be 2-600" >&2
  exit 2
}

mkdir -p "$out"
rm -f "$out"/*
if [ ! -x target/debug/loadbot ] || [ ! -x target/debug/tessera-server ]; then
  cargo build -p loadbot --bin loadbot -p server --bin tessera-server -p ops --bin tessera-ops
fi

loadbot_pid=
cleanup() {
  [ -n "$loadbot_pid" ] && kill "$loadbot_pid" 2>/dev/null || true
  bash scripts/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

bash scripts/cluster.sh up 3 --secantus | tee "$out/cluster.txt"
. "$state/settings"
urls=()
for i in 1 2 3; do
  urls+=(--url "ws://$(cut -d' ' -f1 "$state/shard-$i/addrs")")
done
now_ms() { date +%s%3N; }

# Run until interrupted after the last drain; the ledger is checked then
# against shard-1's admin API (every shard is up again by then).
LOADBOT_ADMIN_TOKEN=$token timeout $((gap_s * 4 + 200)) target/debug/loadbot "${urls[@]}" \
  --bots "$bots" --rooms "$rooms" --scenario churn --ramp 3s --duration "$((gap_s * 4 + 120))s" \
  --durable-rate "$durable_rate" --verify-admin "$(cut -d' ' -f2 "$state/shard-1/addrs")" \
  --ledger "$out/ledger.json" --events "$out/events.txt" --json "$out/loadbot.json" \
  --progress lines --progress-every 10s >"$out/loadbot.txt" 2>&1 &
loadbot_pid=$!

sleep $((gap_s + 3))
: >"$out/drains.txt"
for i in 1 2 3; do
  t0=$(now_ms)
  bash scripts/cluster.sh stop "$i" >/dev/null
  t1=$(now_ms)
  bash scripts/cluster.sh start "$i" >/dev/null
  t2=$(now_ms)
  echo "$t0 shard-$i $((t1 - t0)) $((t2 - t1))" >>"$out/drains.txt"
  echo "drain shard-$i: exited after $((t1 - t0)) ms, started again in $((t2 - t1)) ms"
  sleep "$gap_s"
done

kill -INT "$loadbot_pid"
wait "$loadbot_pid" || true
loadbot_pid=

echo
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
s = json.load(open(f"{out}/loadbot.json"))
# A resume token refused (2002-2004: bad, expired, used) makes the bot a
# new player as surely as a resume answered with another player id.
refused_tokens = sum(n for k, n in s["connect_failures_by_reason"].items()
                     if k in ("error_2002", "error_2003", "error_2004"))
s["resumed_new_player"] += refused_tokens
l = s.get("ledger") or {}
events = {}
for line in open(f"{out}/events.txt"):
    p = line.split()
    if len(p) >= 4:
        events.setdefault(int(p[1]), []).append((int(p[0]), p[2], " ".join(p[3:])))
# The largest gap across rooms: a "full" event's time minus the last
# update the bot saw before it (in any room).
worst = (0, None, 0, 0)
for bot, evs in events.items():
    for t, kind, detail in evs:
        if kind == "full" and int(detail) > 0 and t - int(detail) > worst[0]:
            worst = (t - int(detail), bot, int(detail), t)
print(f"== rolling restart of 3 shards under churn ({s['bots']} bots)")
print(f"moved by a drain (4008) {s['moved']} | resumed same player {s['resumed_same_player']} | "
      f"FAILED RESUMES (new player, or token refused: {refused_tokens}) {s['resumed_new_player']} | resumes cut short by the end {s['resumes_unfinished']}")
print(f"disconnects {s['disconnects_by_close_code']} | join failures {s['join_failures_by_reason']}")
print(f"durable gives acked {l.get('acked')} | in doubt {l.get('in_doubt')} | unanswered {l.get('unanswered')} | "
      f"refused {l.get('refused_by_code')} | players checked {l.get('players_checked')} "
      f"(unreadable {l.get('players_unreadable')}) | LOST ACKS {l.get('lost_acks')} | duplicated {l.get('duplicated')}")
print(f"largest gap between two updates in one room: {s['update_interval_ms']['max']} ms")
gap, bot, since, until = worst
print(f"largest gap between two updates any bot saw (across a rejoin): {gap} ms (bot {bot})")
if bot is not None:
    print("  where it went (ms after the bot's last update before the gap):")
    for t, kind, detail in events[bot]:
        if since <= t <= until:
            print(f"    +{t - since:>6} {kind} {detail}")
bad = s["resumed_new_player"] or not l.get("verified") or l.get("lost_acks") or l.get("duplicated") \
    or l.get("players_unreadable")
json.dump({"largest_gap_ms": gap, "gap_bot": bot, "failed_resumes": s["resumed_new_player"],
           "lost_acks": l.get("lost_acks"), "duplicated": l.get("duplicated"), "acked": l.get("acked")},
          open(f"{out}/results.json", "w"), indent=1)
sys.exit(1 if bad else 0)
PY
echo "(events, ledger, loadbot report and logs in $out)"
