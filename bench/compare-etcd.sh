#!/usr/bin/env bash
# ha-kv against etcd on this machine, side by side, in one sitting.
#
#   bench/compare-etcd.sh [RUNS]        # RUNS per workload and side (default 3)
#
# Each run starts a fresh 3-node cluster on loopback (data directories in
# one temporary directory on the same filesystem, ports from the OS), waits
# for a leader, drives one closed-loop workload with 128-byte values over
# 10,000 keys, records the nodes' resident memory idle (after the warm-up)
# and at the end, and tears the cluster down. The two sides alternate run by
# run, so a machine that speeds up or slows down mid-sitting weighs on both.
# Prints one line per run, then a table of medians with the ratio ha/etcd.
#
# Both sides fsync every write (etcd always does; ha-kv by default). ha-kv
# runs mutual TLS over QUIC; etcd runs plain HTTP/2 (its best case), and
# etcd-load (bench/etcd-load) sends every request to etcd's leader so none
# pays a follower's forwarding hop. Installs what it lacks: etcd-server and
# protobuf-compiler (for the etcd-client crate) from Debian's packages.
set -euo pipefail
shopt -s inherit_errexit
RUNS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need etcd || ! need protoc; then
  echo "installing etcd-server and protobuf-compiler ..." >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server protobuf-compiler >/dev/null
  # The package starts a system etcd on the default ports; this script
  # needs none of it, and it would take CPU from both sides.
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
if pgrep -x etcd >/dev/null || pgrep -f "ha-kv serve" >/dev/null; then
  echo "an etcd or ha-kv server is running already: stop it first, it would skew both sides" >&2
  exit 1
fi
cargo build --release -q -p ha-kv
cargo build --release -q --manifest-path bench/etcd-load/Cargo.toml
HA="$ROOT/target/release/ha-kv"
# shellcheck source=scripts/cluster-lib.sh
source "$ROOT/scripts/cluster-lib.sh"
LOAD="$ROOT/bench/etcd-load/target/release/etcd-load"

# Data on the disk the repository is on (a tmpfs /tmp would make fsync free).
D=$(mktemp -d -p "$ROOT/target")
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    for f in "$D"/*/log-*; do [ -f "$f" ] && { echo "--- $f" >&2; tail -5 "$f" >&2; }; done
  fi
  rm -rf "$D"
}
trap cleanup EXIT

# Resident memory of the running nodes in MiB: the largest of them.
rss_mib() {
  local max=0 kb
  for p in "${PIDS[@]}"; do
    kb=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    [ "${kb:-0}" -gt "$max" ] && max=$kb
  done
  echo $((max / 1024))
}

stop_all() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}

# Checks a run's JSON line: no errors, and adds the RSS figures.
finish_line() {
  local out=$1 idle=$2
  python3 - "$out" "$idle" "$(rss_mib)" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
if r.get("errors"):
    sys.exit(f"the run had {r['errors']} failed operations: not a valid measurement")
r["rss_idle_mib"], r["rss_end_mib"] = int(sys.argv[2]), int(sys.argv[3])
print(json.dumps(r))
PY
}

# run_ha CLIENTS OPS READ_RATIO [SERVE_FLAGS]: one JSON line (with RSS) to
# $D/line.
run_ha() {
  local dir="$D/ha"
  rm -rf "$dir"; mkdir -p "$dir"
  # shellcheck disable=SC2086 # the flags split into words
  start_ha_cluster "$HA" "$dir" ${4:-}
  local c=("${HA_CLUSTER[@]}")
  sleep 1
  all_up
  local idle out
  idle=$(rss_mib)
  out=$("$HA" bench --clients "$1" --ops "$2" --value-size 128 --keys 10000 \
    --read-ratio "$3" "${c[@]}" 2>/dev/null | tail -1)
  all_up
  finish_line "$out" "$idle" >"$D/line"
  stop_all
}

# run_etcd CLIENTS OPS READ_RATIO: one JSON line (with RSS) to $D/line.
run_etcd() {
  local dir="$D/etcd" c1 c2 c3 q1 q2 q3
  rm -rf "$dir"; mkdir -p "$dir"
  read -r c1 c2 c3 q1 q2 q3 < <(free_ports 6 both)
  local cluster="n1=http://127.0.0.1:$q1,n2=http://127.0.0.1:$q2,n3=http://127.0.0.1:$q3"
  local cs=($c1 $c2 $c3) qs=($q1 $q2 $q3) i
  for i in 0 1 2; do
    etcd --name "n$((i + 1))" --data-dir "$dir/data-$i" \
      --listen-client-urls "http://127.0.0.1:${cs[$i]}" \
      --advertise-client-urls "http://127.0.0.1:${cs[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${qs[$i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${qs[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "bench-$$" --logger zap --log-level error \
      >"$dir/log-$i" 2>&1 &
    PIDS+=($!)
  done
  local eps="http://127.0.0.1:$c1,http://127.0.0.1:$c2,http://127.0.0.1:$c3"
  # etcd-load waits for a leader; a small run warms the cluster up.
  "$LOAD" --endpoints "$eps" --clients 1 --ops 10 >/dev/null
  sleep 1
  all_up
  local idle out
  idle=$(rss_mib)
  out=$("$LOAD" --endpoints "$eps" --clients "$1" --ops "$2" --value-size 128 \
    --keys 10000 --read-ratio "$3" | tail -1)
  all_up
  finish_line "$out" "$idle" >"$D/line"
  stop_all
}

# name clients ops read_ratio [ha-kv serve flags]. Every get is
# linearizable on both sides; in lease-gets-64 ha-kv's leader serves them on
# its lease (etcd 3.4 has no lease reads for clients: the same ReadIndex gets).
WORKLOADS=(
  "puts-1 1 3000 0"
  "puts-64 64 60000 0"
  "puts-256 256 100000 0"
  "gets-64 64 150000 1"
  "lease-gets-64 64 150000 1 --lease-reads"
)
RESULTS="$D/results"
: >"$RESULTS"
echo "# $(date -u +%FT%TZ)  $(nproc) cores  $(uname -r)  etcd $(etcd --version | awk '/etcd Version/ {print $3}')" >&2
for w in "${WORKLOADS[@]}"; do
  read -r name clients ops read flags <<<"$w"
  for r in $(seq 1 "$RUNS"); do
    order=(ha etcd)
    [ $((r % 2)) -eq 0 ] && order=(etcd ha)
    for side in "${order[@]}"; do
      "run_$side" "$clients" "$ops" "$read" "${flags:-}"
      echo "$name $side $(cat "$D/line")" | tee -a "$RESULTS" >&2
    done
  done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, side, js = line.split(" ", 2)
    rows.setdefault(name, {}).setdefault(side, []).append(json.loads(js))
def med(runs, k):
    return statistics.median(r[k] for r in runs)
print("| workload | ha-kv ops/s | etcd ops/s | ratio | ha p50 / p99 / p999 ms | etcd p50 / p99 / p999 ms | RSS idle / end MiB (ha, etcd) |")
print("|---|---|---|---|---|---|---|")
for name, sides in rows.items():
    h, e = sides["ha"], sides["etcd"]
    lat = lambda s: " / ".join(f"{med(s, k):.2f}" for k in ("p50_ms", "p99_ms", "p999_ms"))
    print(f"| {name} | {med(h, 'ops_per_sec'):,.0f} | {med(e, 'ops_per_sec'):,.0f} | "
          f"{med(h, 'ops_per_sec') / med(e, 'ops_per_sec'):.2f}x | {lat(h)} | {lat(e)} | "
          f"{med(h, 'rss_idle_mib'):.0f} / {med(h, 'rss_end_mib'):.0f}, "
          f"{med(e, 'rss_idle_mib'):.0f} / {med(e, 'rss_end_mib'):.0f} |")
print(f"\nmedians of {len(next(iter(rows.values()))['ha'])} runs per side; errors: "
      + ", ".join(f"{n} ha {sum(r['errors'] for r in s['ha'])} etcd {sum(r['errors'] for r in s['etcd'])}"
                  for n, s in rows.items()))
PY
