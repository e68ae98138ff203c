#!/usr/bin/env bash
# The failover benchmark, on loopback: a local cluster of 3 shards sharing
# one store (scripts/cluster.sh up 3 --secantus), the loadbot with ROOMS
# rooms spread over the shards, REMOTE_SHARE of each room's bots on another
# shard than the room's owner, and durable actions (gives) all along; then
# KILLS times: SIGKILL a shard that owns rooms, wait until each of its
# rooms is leased again elsewhere, start it again DOWN_S later, let it
# settle.
#
# For each kill and each bot standing in one of the killed shard's rooms,
# the failover time is from the kill to the bot's first update of the
# restored room (the loadbot's --events: the first update after the
# `joined` of the room moved (6003) or of the resumed seat). Prints
# p50/p99/max over all (kill, bot) pairs, pairs never restored, failed
# resumes (a resume that came back as a new player) and lost acks (the
# loadbot's ledger read against the store). Exit 1 when a pair was never
# restored, a resume failed or an ack was lost.
#
#   loadbot/bench/failover.sh [KILLS]     # default 20, 1..200
#
# Environment: BOTS (default 60), ROOMS (6; maps m01..), REMOTE_SHARE
# (0.5), DURABLE_RATE (gives per second per bot, 1), DOWN_S (seconds a
# killed shard stays down after its rooms failed over, 1), SETTLE_S (seconds between kills after the
# failover, 4), OUT (results, default target/bench/failover-<date-time>).
# Lease and SWIM timings are the server's defaults (README, "failover");
# CLUSTER_CONFIG may name a config file of your own, whose maps must be
# m01..m<ROOMS>.
#
# Everything it starts is stopped on exit; every wait is bounded. Needs
# redis-server, python3, the debug binaries (built if missing) and
# SecantusDB (scripts/secantus.sh installs it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
kills=${1:-20}
[[ "$kills" =~ ^[0-9]+$ ]] && [ "$kills" -ge 1 ] && [ "$kills" -le 200 ] || {
  echo "failover.sh: KILLS must be 1-200" >&2
  exit 2
}
bots=${BOTS:-60}
rooms=${ROOMS:-6}
remote_share=${REMOTE_SHARE:-0.5}
durable_rate=${DURABLE_RATE:-1}
down_s=${DOWN_S:-1}
settle_s=${SETTLE_S:-4}
out=${OUT:-target/bench/failover-$(date +%Y%m%d-%H%M%S)}
state=target/cluster
# A room not leased again within this counts as not failed over.
failover_wait_s=30
[[ "$rooms" =~ ^[0-9]+$ ]] && [ "$rooms" -ge 1 ] && [ "$rooms" -le 99 ] || {
  echo "failover.sh: ROOMS must be 1-99" >&2
  exit 2
}

mkdir -p "$out"
if [ ! -x target/debug/loadbot ] || [ ! -x target/debug/tessera-server ]; then
  cargo build -p loadbot --bin loadbot -p server --bin tessera-server -p ops --bin tessera-ops
fi

config=${CLUSTER_CONFIG:-$out/server.toml}
if [ -z "${CLUSTER_CONFIG:-}" ]; then
  {
    echo "[supervision]"
    echo "fallback_map = \"m01\""
    for i in $(seq 1 "$rooms"); do printf '[[maps]]\nname = "m%02d"\n' "$i"; done
  } >"$config"
fi
maps=$(seq -f 'm%02g' 1 "$rooms" | paste -sd, -)

loadbot_pid=
cleanup() {
  [ -n "$loadbot_pid" ] && kill "$loadbot_pid" 2>/dev/null || true
  bash scripts/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

CLUSTER_CONFIG=$config bash scripts/cluster.sh up 3 --secantus | tee "$out/cluster.txt"
. "$state/settings"
urls=()
for i in 1 2 3; do
  urls+=(--url "ws://$(cut -d' ' -f1 "$state/shard-$i/addrs")")
done
now_ms() { date +%s%3N; }

# Room leases as "room shard epoch" lines.
leases() {
  redis-cli -u "$redis_url" --scan --pattern "$prefix:room:*" | sort | while read -r key; do
    local v
    v=$(redis-cli -u "$redis_url" GET "$key")
    [ -n "$v" ] && echo "${key#"$prefix:room:"} ${v%%:*} ${v##*:}"
  done
}

# The loadbot runs until it is interrupted after the last kill (its ledger
# check runs then, against shard-1's admin API: every shard is up by then).
admin=$(cut -d' ' -f2 "$state/shard-1/addrs")
LOADBOT_ADMIN_TOKEN=$token timeout $((kills * 60 + 120)) target/debug/loadbot "${urls[@]}" \
  --redis "$redis_url" --cluster-prefix "$prefix" --maps "$maps" --rooms "$rooms" \
  --bots "$bots" --remote-share "$remote_share" --scenario move --move-hz 5 \
  --durable-rate "$durable_rate" --verify-admin "$admin" \
  --ramp 3s --duration "$((kills * 60 + 60))s" \
  --events "$out/events.txt" --ledger "$out/ledger.json" --json "$out/loadbot.json" \
  --progress lines --progress-every 10s >"$out/loadbot.txt" 2>&1 &
loadbot_pid=$!

# Every room is placed once its first bot joins.
for _ in $(seq 1 300); do
  [ "$(leases | grep -c .)" -ge "$rooms" ] && break
  sleep 0.1
done
sleep 3
: >"$out/kills.txt"
not_failed_over=0
for k in $(seq 1 "$kills"); do
  # The shard to kill: the next (round robin) that owns a room.
  victim=
  for j in 0 1 2; do
    i=$(( (k + j - 1) % 3 + 1 ))
    if leases | awk -v s="shard-$i" '$2 == s {f=1} END {exit !f}'; then victim=$i; break; fi
  done
  [ -n "$victim" ] || { echo "kill $k: no shard owns a room" >&2; sleep 1; continue; }
  before=$(leases | awk -v s="shard-$victim" '$2 == s {print $1, $3}')
  t0=$(now_ms)
  bash scripts/cluster.sh kill "$victim" >/dev/null
  echo "$t0 shard-$victim $(awk '{print $1}' <<<"$before" | paste -sd, -)" >>"$out/kills.txt"
  # It stays down until its rooms are leased again by the others (a shard
  # started again within the lease takes its own rooms back: not a
  # failover), bounded.
  worst=0
  while read -r room epoch; do
    [ -n "$room" ] || continue
    took=-1
    while [ $(( $(now_ms) - t0 )) -lt $((failover_wait_s * 1000)) ]; do
      v=$(redis-cli -u "$redis_url" GET "$prefix:room:$room")
      if [ -n "$v" ] && [ "${v##*:}" -gt "$epoch" ]; then took=$(( $(now_ms) - t0 )); break; fi
      sleep 0.1
    done
    if [ "$took" -lt 0 ]; then not_failed_over=$((not_failed_over + 1)); elif [ "$took" -gt "$worst" ]; then worst=$took; fi
  done <<<"$before"
  sleep "$down_s"
  bash scripts/cluster.sh start "$victim" >/dev/null
  echo "kill $k/$kills: shard-$victim, rooms $(grep -c . <<<"$before"), leased again within ${worst} ms"
  sleep "$settle_s"
done

# End the run: the loadbot stops its bots, then checks its ledger.
sleep 3
kill -INT "$loadbot_pid"
wait "$loadbot_pid" || true
loadbot_pid=

echo
python3 - "$out" "$bots" "$rooms" "$not_failed_over" <<'PY'
import json, sys
out, bots, rooms, not_failed_over = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
maps = [f"m{i:02d}" for i in range(1, rooms + 1)]
# The move scenario keeps bot b in room slot b % rooms, map maps[slot].
room_of = {b: maps[(b % rooms) % len(maps)] for b in range(bots)}
full = {}  # bot -> sorted times of "first update of a room"
for line in open(f"{out}/events.txt"):
    parts = line.split()
    if len(parts) >= 3 and parts[2] == "full":
        full.setdefault(int(parts[1]), []).append(int(parts[0]))
kills = []
for line in open(f"{out}/kills.txt"):
    t, shard, owned = (line.split() + [""])[:3]
    kills.append((int(t), shard, [r for r in owned.split(",") if r]))
times, never = [], 0
for i, (t, shard, owned) in enumerate(kills):
    nxt = kills[i + 1][0] if i + 1 < len(kills) else None
    for b, room in room_of.items():
        if room not in owned:
            continue
        after = [x for x in full.get(b, []) if x > t and (nxt is None or x < nxt)]
        if after:
            times.append(after[0] - t)
        else:
            never += 1
def pct(p):
    if not times:
        return float("nan")
    s = sorted(times)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]
s = json.load(open(f"{out}/loadbot.json"))
# A resume token refused (2002-2004: bad, expired, used) makes the bot a
# new player as surely as a resume answered with another player id.
refused_tokens = sum(n for k, n in s["connect_failures_by_reason"].items()
                     if k in ("error_2002", "error_2003", "error_2004"))
s["resumed_new_player"] += refused_tokens
ledger = s.get("ledger") or {}
res = {
    "kills": len(kills),
    "pairs": len(times),
    "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": max(times) if times else None,
    "pairs_never_restored": never,
    "rooms_not_failed_over": not_failed_over,
    "failed_resumes": s["resumed_new_player"],
    "resumed_same_player": s["resumed_same_player"],
    "gives_acked": ledger.get("acked"), "in_doubt": ledger.get("in_doubt"),
    "unanswered": ledger.get("unanswered"), "refused": ledger.get("refused_by_code"),
    "lost_acks": ledger.get("lost_acks"), "duplicated": ledger.get("duplicated"),
    "players_checked": ledger.get("players_checked"),
    "players_unreadable": ledger.get("players_unreadable"),
    "largest_update_gap_ms": s.get("update_interval_ms", {}).get("max"),
}
json.dump(res, open(f"{out}/results.json", "w"), indent=1)
print(f"== failover: {res['kills']} kills, {res['pairs']} (kill, bot) pairs")
print(f"kill -> first update of the restored room: p50 {res['p50_ms']} ms | p99 {res['p99_ms']} ms | max {res['max_ms']} ms (target p99 <= 5000)")
print(f"pairs never restored {never} | rooms not leased again in 30 s {not_failed_over}")
print(f"failed resumes (new player, or token refused: {refused_tokens}) {res['failed_resumes']} | resumed same player {res['resumed_same_player']}")
print(f"gives acked {res['gives_acked']} | in doubt {res['in_doubt']} | unanswered {res['unanswered']} | refused {res['refused']}")
print(f"players checked {res['players_checked']} (unreadable {res['players_unreadable']}) | LOST ACKS {res['lost_acks']} | duplicated {res['duplicated']}")
print(f"largest gap between two updates a bot saw: {res['largest_update_gap_ms']} ms")
bad = never or not_failed_over or res["failed_resumes"] or (res["lost_acks"] or 0) or (res["duplicated"] or 0) \
    or (res["players_unreadable"] or 0) or res["lost_acks"] is None
sys.exit(1 if bad else 0)
PY
echo "(events, ledger, loadbot report and logs in $out)"
