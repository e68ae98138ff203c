# Sourced by scripts/cluster.sh and loadbot/bench/cluster.sh: helpers for
# starting servers on loopback.

# A TCP port on 127.0.0.1 nothing listens on now, below the kernel's
# ephemeral range (an outgoing connection's local port there would make the
# bind fail although nothing listens on it).
free_port() {
  local port low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$low" -gt 11000 ] 2>/dev/null || low=32768
  for _ in $(seq 1 50); do
    port=$((10000 + RANDOM % (low - 10000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "${0##*/}: no free port found" >&2
  return 1
}

# $1 random bytes as hex (secrets and tokens for a throwaway cluster).
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
