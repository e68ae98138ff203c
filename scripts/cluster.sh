#!/usr/bin/env bash
# A local cluster on loopback: Debian's redis-server (the directory) on a
# free port and N shards in cluster mode, each with its own embedded store
# (or one MongoDB for all with --mongo URL, or with --secantus a SecantusDB
# started here on a free port: a shared store, as failover needs). Everything it starts is
# recorded in target/cluster/ (pid files, logs, each shard's stdout), and
# `down` stops exactly that.
#
#   scripts/cluster.sh up N [--mongo URL | --secantus]   # 1 <= N <= 16
#   scripts/cluster.sh down
#   scripts/cluster.sh kill I | stop I | pause I SECONDS | start I
#
# Any shard accepts any player; a room runs on one shard and players on the
# others play in it through the peer tunnels. The per-shard commands are
# for drills (scripts/chaos.sh): `kill` is SIGKILL (a crash: its rooms fail
# over), `stop` is SIGTERM (a drain), `pause` is SIGSTOP for SECONDS then
# SIGCONT (a stall), `start` starts shard I again with its settings.
# CLUSTER_CONFIG=FILE (at `up`) gives every shard `--config FILE` (more
# maps, other lease timings); TESSERA_* variables are never passed on.
set -euo pipefail

cd "$(dirname "$0")/.."
state=target/cluster
max_shards=16
start_wait_s=30
stop_wait_s=15

usage() {
  sed -n '8,10p' "$0" | sed 's/^# *//' >&2
  exit 2
}

# free_port, hex
. scripts/lib/ports.sh

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Wait until $1 (a file) has a line starting with $2; print the rest.
wait_line() {
  local file=$1 prefix=$2 pid=$3 i
  for i in $(seq 1 $((start_wait_s * 10))); do
    if [ -f "$file" ]; then
      local line
      line=$(grep -m1 "^$prefix" "$file" || true)
      if [ -n "$line" ]; then
        echo "${line#"$prefix"}"
        return 0
      fi
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

up() {
  local n=${1:-}
  shift || true
  local mongo=""
  while [ $# -gt 0 ]; do
    case $1 in
      --mongo) mongo=${2:?--mongo needs a URL}; shift 2 ;;
      --secantus) mongo=secantus; shift ;;
      *) usage ;;
    esac
  done
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le $max_shards ] || {
    echo "cluster.sh: N must be 1-$max_shards" >&2
    exit 2
  }
  for pidfile in "$state"/*.pid; do
    if alive "$pidfile"; then
      echo "cluster.sh: a cluster is already up ($pidfile); run scripts/cluster.sh down" >&2
      exit 1
    fi
  done
  command -v redis-server >/dev/null || {
    echo "cluster.sh: redis-server is missing (apt-get install redis-server, or scripts/test.sh)" >&2
    exit 1
  }
  mkdir -p "$state"
  rm -f "$state"/*.pid "$state"/shard-*/addrs

  if [ ! -x target/debug/tessera-server ] || [ ! -x target/debug/tessera-ops ]; then
    cargo build -p server --bin tessera-server -p ops --bin tessera-ops
  fi

  # A port taken between the look and the bind (another test on the box)
  # is tried again with another.
  local port up=0
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
      --daemonize no --protected-mode yes --dir "$state" \
      >"$state/redis.log" 2>&1 &
    echo $! >"$state/redis.pid"
    for i in $(seq 1 $((start_wait_s * 10))); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && { up=1; break; }
      alive "$state/redis.pid" || break
      sleep 0.1
    done
    [ "$up" = 1 ] && break
    grep -q "Address already in use" "$state/redis.log" || break
    echo "cluster.sh: port $port was taken; trying another" >&2
  done
  [ "$up" = 1 ] || { echo "cluster.sh: redis-server did not start ($state/redis.log)" >&2; exit 1; }
  local redis_url="redis://127.0.0.1:$port/0"

  if [ "$mongo" = secantus ]; then
    mongo=$(start_secantus) || { down; exit 1; }
  fi

  local secret token prefix=tessera
  secret=$(hex 24)
  token=$(hex 16)
  echo "$token" >"$state/admin-token"
  chmod 600 "$state/admin-token"
  # What `start I` needs to start a shard again the same way.
  local config=${CLUSTER_CONFIG:-}
  [ -z "$config" ] || config=$(realpath "$config")
  printf 'redis_url=%q\nsecret=%q\ntoken=%q\nprefix=%q\nmongo=%q\nconfig=%q\n' \
    "$redis_url" "$secret" "$token" "$prefix" "$mongo" "$config" >"$state/settings"
  chmod 600 "$state/settings"

  echo "redis     $redis_url"
  local i
  for i in $(seq 1 "$n"); do
    spawn_shard "$i"
  done
  for i in $(seq 1 "$n"); do
    if ! announce_shard "$i"; then
      echo "cluster.sh: shard-$i did not start (see $state/shard-$i/log); stopping everything" >&2
      down
      exit 1
    fi
  done
  echo
  echo "admin token: $token (also in $state/admin-token)"
  echo "console:     target/debug/tessera-ops console --listen 127.0.0.1:7390 --redis $redis_url --key-prefix $prefix"
  echo "shards:      target/debug/tessera-ops shards ls --redis $redis_url --key-prefix $prefix"
  echo "stop:        scripts/cluster.sh down"
}

# Start a SecantusDB (scripts/secantus.sh installs it) on a free loopback
# port with its data in $state/secantus; print its mongodb:// URL.
start_secantus() {
  local bin port i
  bin=$(bash scripts/secantus.sh) || return 1
  rm -rf "$state/secantus"
  port=$(free_port)
  "$bin" --host 127.0.0.1 --port "$port" --storage-path "$state/secantus" \
    --cache-size 64M --log-level INFO >/dev/null 2>"$state/secantus.log" &
  echo $! >"$state/secantus.pid"
  for i in $(seq 1 $((start_wait_s * 10))); do
    grep -q "listening on 127.0.0.1:$port" "$state/secantus.log" 2>/dev/null && break
    alive "$state/secantus.pid" || { echo "cluster.sh: SecantusDB did not start ($state/secantus.log)" >&2; return 1; }
    sleep 0.1
  done
  grep -q "listening on 127.0.0.1:$port" "$state/secantus.log" || {
    echo "cluster.sh: SecantusDB did not listen within ${start_wait_s}s ($state/secantus.log)" >&2
    return 1
  }
  echo "store     SecantusDB mongodb://127.0.0.1:$port" >&2
  echo "mongodb://127.0.0.1:$port"
}

# Start shard $1 in the background with the cluster's settings (read from
# $state/settings), its stdout and log in $state/shard-$1/.
spawn_shard() {
  local i=$1 redis_url secret token prefix mongo config=
  # shellcheck disable=SC1091
  . "$state/settings"
  local id="shard-$i" dir="$state/shard-$i"
  local bin=${TESSERA_SERVER_BIN:-target/debug/tessera-server}
  # A shard started again keeps its addresses, so clients and the
  # loadbot find it where it was.
  local ws_addr=127.0.0.1:0 http_addr=127.0.0.1:0 peer_addr=127.0.0.1:0
  if [ -f "$dir/addrs" ]; then
    read -r ws_addr http_addr peer_addr <"$dir/addrs"
  fi
  mkdir -p "$dir"
  rm -f "$dir/stdout"
  (
    # Only this cluster's settings: none inherited from the caller.
    for v in $(env | grep -o '^TESSERA_[A-Za-z0-9_]*' || true); do unset "$v"; done
    export TESSERA_CLUSTER__REDIS="$redis_url"
    export TESSERA_CLUSTER__SECRET="$secret"
    export TESSERA_CLUSTER__SHARD_ID="$id"
    export TESSERA_CLUSTER__KEY_PREFIX="$prefix"
    export TESSERA_CLUSTER__PEER_ADDR="$peer_addr"
    export TESSERA_ADMIN__TOKEN="$token"
    if [ -n "$mongo" ]; then
      export TESSERA_STORE__BACKEND=mongodb
      export TESSERA_STORE__MONGODB__URI="$mongo"
    else
      export TESSERA_STORE__EMBEDDED__DIR="$dir/data"
    fi
    extra=()
    [ -z "$config" ] || extra=(--config "$config")
    exec "$bin" "${extra[@]}" --ws-addr "$ws_addr" --http-addr "$http_addr" \
      >>"$dir/stdout" 2>>"$dir/log"
  ) &
  echo $! >"$state/$id.pid"
}

# Wait for shard $1's addresses and print them; fails if it did not start.
announce_shard() {
  local id="shard-$1" dir="$state/shard-$1" pid ws http peer
  pid=$(cat "$state/$id.pid")
  peer=$(wait_line "$dir/stdout" "peer listening on " "$pid") || return 1
  ws=$(wait_line "$dir/stdout" "ws listening on " "$pid") || return 1
  http=$(wait_line "$dir/stdout" "http listening on " "$pid") || return 1
  echo "$ws $http $peer" >"$dir/addrs"
  echo "$id   ws $ws   http $http   peer $peer"
}

# The pid file of shard $1, which must be a shard of this cluster.
shard_pidfile() {
  [[ "${1:-}" =~ ^[0-9]+$ ]] && [ -f "$state/settings" ] || usage
  echo "$state/shard-$1.pid"
}

drill() {
  local cmd=$1 i=${2:-} pidfile
  pidfile=$(shard_pidfile "$i")
  case $cmd in
    kill)
      alive "$pidfile" || { echo "cluster.sh: shard-$i is not running" >&2; exit 1; }
      kill -KILL "$(cat "$pidfile")"
      rm -f "$pidfile"
      echo "shard-$i killed" ;;
    stop)
      alive "$pidfile" || { echo "cluster.sh: shard-$i is not running" >&2; exit 1; }
      stop_pid "$pidfile"
      echo "shard-$i stopped" ;;
    pause)
      local secs=${3:-}
      [[ "$secs" =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage
      alive "$pidfile" || { echo "cluster.sh: shard-$i is not running" >&2; exit 1; }
      kill -STOP "$(cat "$pidfile")"
      sleep "$secs"
      kill -CONT "$(cat "$pidfile")"
      echo "shard-$i paused ${secs}s" ;;
    start)
      if alive "$pidfile"; then
        echo "cluster.sh: shard-$i is running" >&2
        exit 1
      fi
      spawn_shard "$i"
      announce_shard "$i" || { echo "cluster.sh: shard-$i did not start (see $state/shard-$i/log)" >&2; exit 1; } ;;
  esac
}

# TERM, then KILL after the wait; the pid file goes either way.
stop_pid() {
  local pidfile=$1 pid i
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 $((stop_wait_s * 10))); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

down() {
  local pidfile stopped=0 waits=()
  # Shards first, in parallel (each leaves the directory on the way out),
  # Redis last.
  for pidfile in "$state"/shard-*.pid; do
    [ -f "$pidfile" ] || continue
    stop_pid "$pidfile" &
    waits+=($!)
    stopped=$((stopped + 1))
  done
  for pid in "${waits[@]}"; do wait "$pid" || true; done
  if [ -f "$state/secantus.pid" ]; then
    stop_pid "$state/secantus.pid"
    stopped=$((stopped + 1))
  fi
  if [ -f "$state/redis.pid" ]; then
    stop_pid "$state/redis.pid"
    stopped=$((stopped + 1))
  fi
  echo "cluster.sh: stopped $stopped process(es)"
}

case ${1:-} in
  up) shift; up "$@" ;;
  down) down ;;
  kill | stop | pause | start) drill "$@" ;;
  *) usage ;;
esac
