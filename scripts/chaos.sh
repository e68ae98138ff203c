#!/usr/bin/env bash
# A chaos drill on loopback: a local cluster of 3 shards (scripts/cluster.sh)
# under the loadbot's churn scenario, while shards are killed (SIGKILL, then
# started again), paused (SIGSTOP shorter than a lease, then SIGCONT) and
# drained (SIGTERM, then started again) at random. At the end it prints each
# event, how long the rooms a killed shard owned took to be leased again
# elsewhere (their failover time), and the loadbot's figures: failed
# resumes, connect failures, disconnects by close code, the largest gap
# between two updates any bot saw, and the durable actions' ledger (bots
# give coins all along, `--durable-rate`; at the end every player's
# inventory is read from the store and compared: lost acks); then every
# room's lease. The shards share one store (SecantusDB, `cluster.sh up 3
# --secantus`). It fails (exit 1) if any resume came back as a new player,
# any room of a killed shard was not leased again within 30 s, or an
# acknowledged action is not in the store (a lost ack, a duplicate, or a
# player the check could not read).
#
#   scripts/chaos.sh [SECONDS]          # default 60; CI runs a short one
#
# Environment: CHAOS_SEED (the random sequence), BOTS (default 60), ROOMS
# (default 3), EVERY (seconds between events, default 8), DURABLE_RATE
# (gives per second per bot, default 0.5), OUT (results folder, default
# target/chaos). Everything it starts is stopped on exit;
# every wait is bounded. Needs redis-server and redis-cli (Debian's
# redis-server package), python3, and the debug binaries (built if missing).
set -euo pipefail

cd "$(dirname "$0")/.."
seconds=${1:-60}
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -ge 10 ] && [ "$seconds" -le 3600 ] || {
  echo "chaos.sh: SECONDS must be 10-3600" >&2
  exit 2
}
bots=${BOTS:-60}
rooms=${ROOMS:-3}
every=${EVERY:-8}
durable_rate=${DURABLE_RATE:-0.5}
out=${OUT:-target/chaos}
RANDOM=${CHAOS_SEED:-$$}
state=target/cluster
# A failover is given this long before it counts as not done.
failover_wait_s=30

mkdir -p "$out"
rm -f "$out"/*
if [ ! -x target/debug/loadbot ]; then
  cargo build -p loadbot --bin loadbot
fi

loadbot_pid=
cleanup() {
  [ -n "$loadbot_pid" ] && kill "$loadbot_pid" 2>/dev/null || true
  # A paused shard must be able to hear its TERM.
  for p in "$state"/shard-*.pid; do [ -f "$p" ] && kill -CONT "$(cat "$p")" 2>/dev/null || true; done
  bash scripts/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

bash scripts/cluster.sh up 3 --secantus | tee "$out/cluster.txt"
. "$state/settings"
urls=()
for i in 1 2 3; do
  urls+=(--url "ws://$(cut -d' ' -f1 "$state/shard-$i/addrs")")
done

# Room leases as "room shard epoch" lines, sorted.
leases() {
  redis-cli -u "$redis_url" --scan --pattern "$prefix:room:*" | sort | while read -r key; do
    local v
    v=$(redis-cli -u "$redis_url" GET "$key")
    [ -n "$v" ] && echo "${key#"$prefix:room:"} ${v%%:*} ${v##*:}"
  done
}

now_ms() { date +%s%3N; }

# The ledger is checked against shard-1's admin API (the shards share the
# store); every shard is running again when the run ends.
LOADBOT_ADMIN_TOKEN=$token timeout $((seconds + 150)) target/debug/loadbot "${urls[@]}" --bots "$bots" --rooms "$rooms" \
  --scenario churn --ramp 3s --duration "${seconds}s" --json "$out/loadbot.json" \
  --durable-rate "$durable_rate" --verify-admin "$(cut -d' ' -f2 "$state/shard-1/addrs")" \
  --ledger "$out/ledger.json" --events "$out/events.txt" \
  --progress lines --progress-every 10s >"$out/loadbot.txt" 2>&1 &
loadbot_pid=$!

start=$(now_ms)
sleep 5
events=0
not_failed_over=0
: >"$out/events.txt"
while [ $(( $(now_ms) - start )) -lt $(( (seconds - every) * 1000 )) ]; do
  i=$((RANDOM % 3 + 1))
  action=$(( RANDOM % 3 ))
  events=$((events + 1))
  case $action in
    0)
      before=$(leases | awk -v s="shard-$i" '$2 == s {print $1, $3}')
      t0=$(now_ms)
      bash scripts/cluster.sh kill "$i" >/dev/null
      # Each room it owned is leased again (a higher epoch) once a shard
      # with players in it takes it over; the killed shard stays down until
      # then (started again within its lease, it would take its own rooms
      # back: a restart, not a failover).
      worst=0 undone=0
      while read -r room epoch; do
        [ -n "$room" ] || continue
        took=-1
        while [ $(( $(now_ms) - t0 )) -lt $((failover_wait_s * 1000)) ]; do
          v=$(redis-cli -u "$redis_url" GET "$prefix:room:$room")
          if [ -n "$v" ] && [ "${v##*:}" -gt "$epoch" ]; then
            took=$(( $(now_ms) - t0 ))
            break
          fi
          sleep 0.1
        done
        if [ "$took" -lt 0 ]; then undone=$((undone + 1)); elif [ "$took" -gt "$worst" ]; then worst=$took; fi
      done <<<"$before"
      bash scripts/cluster.sh start "$i" >/dev/null
      not_failed_over=$((not_failed_over + undone))
      echo "kill   shard-$i  rooms owned: $(grep -c . <<<"$before" || true)  failover ms (worst): $worst  not failed over in ${failover_wait_s}s: $undone" | tee -a "$out/events.txt"
      ;;
    1)
      bash scripts/cluster.sh pause "$i" 1 >/dev/null
      echo "pause  shard-$i  1 s (shorter than a lease: nothing fails over)" | tee -a "$out/events.txt"
      ;;
    2)
      bash scripts/cluster.sh stop "$i" >/dev/null
      bash scripts/cluster.sh start "$i" >/dev/null
      echo "drain  shard-$i  and started again" | tee -a "$out/events.txt"
      ;;
  esac
  sleep "$every"
done

wait "$loadbot_pid" || true
loadbot_pid=
echo
echo "== $events events in ${seconds}s (seed ${CHAOS_SEED:-$$}); the loadbot:"
ok=0
python3 - "$out/loadbot.json" "$out/ledger.json" <<'PY' || ok=1
import json, sys
s = json.load(open(sys.argv[1]))
# A resume token refused (2002-2004: bad, expired, used) makes the bot a
# new player too; printed, not failed on here: a shard killed between
# taking a resume and delivering its welcome burns the token (a one-time
# token the client never saw replaced), which the drill's kills do now
# and then.
refused_tokens = sum(n for k, n in s["connect_failures_by_reason"].items()
                     if k in ("error_2002", "error_2003", "error_2004"))
gap = s.get("update_interval_ms", {})
print(f"bots joined {s['bots_joined']} | reconnects {s['reconnects']} | moved by a drain {s.get('moved', 0)}")
print(f"resumed same player {s['resumed_same_player']} | failed resumes (new player) {s['resumed_new_player']} | resume tokens refused {refused_tokens} | "
      f"resumes cut short by the end {s['resumes_unfinished']}")
print(f"connect failures {s['connect_failures']} | join failures {s['join_failures']} | "
      f"disconnects {s['disconnects']} {s['disconnects_by_close_code']}")
print(f"largest gap between two updates a bot saw: {gap.get('max', 'n/a')} ms")
l = s.get("ledger") or {}
print(f"durable gives acked {l.get('acked')} | in doubt {l.get('in_doubt')} | unanswered {l.get('unanswered')} | "
      f"refused {l.get('refused_by_code')} | players checked {l.get('players_checked')} "
      f"(unreadable {l.get('players_unreadable')}) | lost acks {l.get('lost_acks')} | duplicated {l.get('duplicated')}")
try:
    ops = json.load(open(sys.argv[2]))["ops"]
except (OSError, ValueError, KeyError):
    ops = []
def outcome(op):
    o = op["outcome"]
    return o if isinstance(o, str) else "refused_" + str(next(iter(o.values())))
for m in l.get("mismatches", []):
    print(f"  {m['player']} holds {m['stored']} in the store; its gives allow {m['lowest']}..={m['highest']}")
    # What the ledger holds on that player, to start the search from.
    for side in ("giver", "receiver"):
        counts = {}
        for op in ops:
            if op[side] == m["player"]:
                counts[outcome(op)] = counts.get(outcome(op), 0) + 1
        print(f"    as {side}: {counts}")
if l.get("first_unreadable"):
    print(f"  first unreadable: {l['first_unreadable']}")
lost = not l.get("verified") or l.get("lost_acks") or l.get("duplicated") or l.get("players_unreadable")
sys.exit(1 if s['resumed_new_player'] > 0 or lost else 0)
PY
echo
echo "== room leases (room, owner, epoch):"
leases
if [ "$ok" -ne 0 ] || [ "$not_failed_over" -gt 0 ]; then
  echo "chaos.sh: FAILED: resumes that came back as a new player, a lost ack (or duplicate, or unreadable player), or $not_failed_over room(s) not failed over" >&2
  exit 1
fi
