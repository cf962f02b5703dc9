# Shared by the benchmark scripts (sourced, not run): a 3-node ha-kv
# cluster on loopback with ports from the OS (HA_NODES=N for N nodes).
#
#   start_ha_cluster BIN DIR [SERVE_ARGS...]
#
# Creates certificates in DIR/tls, starts nodes 1..N (data in DIR/data-N,
# stderr in DIR/log-N), appends their process ids to the caller's `PIDS`
# array, sets `HA_CLUSTER` to the client arguments (--cluster ... --tls-dir
# ...), and waits for the cluster to take a write. Returns 1 (saying why)
# if it never does. The caller kills `PIDS` when done. With an array
# `HA_METRICS_PORTS` of N TCP ports set, node K serves /metrics on the
# Kth.
#
#   all_up      # returns 1 (saying which) if a process of `PIDS` died

# N free 127.0.0.1 ports for UDP (and TCP, with `both`), released before
# the line is printed so the servers can bind them.
free_ports() {
  python3 - "$1" "${2:-udp}" <<'PY'
import socket, sys
n, both = int(sys.argv[1]), sys.argv[2] == "both"
held, ports = [], []
while len(ports) < n:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    p = u.getsockname()[1]
    held.append(u)
    if both:
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", p))
        except OSError:
            continue
        held.append(t)
    ports.append(p)
for s in held:
    s.close()
print(" ".join(map(str, ports)))
PY
}

start_ha_cluster() {
  local bin=$1 dir=$2 n=${HA_NODES:-3} i p ids peers addrs
  shift 2
  local ports=()
  read -r -a ports < <(free_ports "$n")
  ids=$(seq -s, 1 "$n")
  "$bin" certs --dir "$dir/tls" --nodes "$ids" >/dev/null 2>&1
  peers=""
  addrs=""
  for i in $(seq 1 "$n"); do
    peers+="${peers:+,}$i=127.0.0.1:${ports[$((i - 1))]}"
    addrs+="${addrs:+,}127.0.0.1:${ports[$((i - 1))]}"
  done
  for i in $(seq 1 "$n"); do
    p=${ports[$((i - 1))]}
    local metrics=()
    if [ -n "${HA_METRICS_PORTS+x}" ]; then
      metrics=(--metrics "127.0.0.1:${HA_METRICS_PORTS[$((i - 1))]}")
    fi
    "$bin" serve --id "$i" --listen "127.0.0.1:$p" --peers "$peers" \
      --data-dir "$dir/data-$i" --tls-dir "$dir/tls" ${metrics[@]+"${metrics[@]}"} "$@" 2>"$dir/log-$i" &
    PIDS+=($!)
  done
  HA_CLUSTER=(--cluster "$addrs" --tls-dir "$dir/tls")
  for _ in $(seq 1 100); do
    "$bin" put warm up "${HA_CLUSTER[@]}" --timeout-ms 1000 >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the ha-kv cluster in $dir never took a write" >&2
  return 1
}

# Every server in `PIDS` is still running (a run on two nodes is no run).
all_up() {
  local p
  for p in "${PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "a server of this run died (pid $p)" >&2; return 1; }
  done
}
