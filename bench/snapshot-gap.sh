#!/usr/bin/env bash
# Does a snapshot of a large state pause consensus? Fills a fresh 3-node
# ha-kv cluster with about STATE_MB of state (4 KiB values written by 32
# closed-loop clients) while every node snapshots every 25,000 entries, so
# the last snapshots encode nearly the whole state; then reads from each
# node's /metrics the longest gap a follower saw between two messages of
# its leader (heartbeats go every 50 ms), and the snapshot encode times.
#
#   bench/snapshot-gap.sh [STATE_MB]      (default 200)
#
# HA_BIN runs that binary instead of building this tree's.
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-200}
if [ -n "${HA_BIN:-}" ]; then
  BIN=$HA_BIN
else
  cargo build --release -q -p ha-kv
  BIN=target/release/ha-kv
fi
# shellcheck source=scripts/cluster-lib.sh
source scripts/cluster-lib.sh
D=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"' EXIT
read -r m1 m2 m3 < <(free_ports 3 both)
HA_METRICS_PORTS=("$m1" "$m2" "$m3")
start_ha_cluster "$BIN" "$D" --snapshot-every 25000
# Random keys over KEYS, KEYS writes: about 63% distinct.
VALUE=4096
KEYS=$((MB * 1000 * 1000 * 100 / 63 / (VALUE + 16)))
echo "filling about $MB MB: $KEYS writes of $VALUE bytes over $KEYS keys ..." >&2
"$BIN" bench --clients 32 --ops "$KEYS" --value-size "$VALUE" --keys "$KEYS" \
  "${HA_CLUSTER[@]}" 2>/dev/null | tail -1 >"$D/fill"
all_up
metric() { # PORT NAME: the value of an unlabelled metric
  curl -fsS "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n {print $2}'
}
# Wait for every node's snapshot at or past the last multiple of 25,000.
want=$(( (KEYS / 25000) * 25000 ))
for _ in $(seq 1 120); do
  done_all=1
  for m in "${HA_METRICS_PORTS[@]}"; do
    s=$(metric "$m" ha_snapshot_index || echo 0)
    [ "${s%.*}" -ge "$want" ] 2>/dev/null || done_all=0
  done
  [ $done_all -eq 1 ] && break
  sleep 1
done
all_up
for i in 1 2 3; do
  m=${HA_METRICS_PORTS[$((i - 1))]}
  body=$(curl -fsS "http://127.0.0.1:$m/metrics")
  role=$(echo "$body" | awk '$1 == "ha_role{role=\"leader\"}" {print ($2 == 1) ? "leader" : "follower"}')
  gap=$(echo "$body" | awk '$1 == "ha_leader_gap_max_seconds" {printf "%.1f", $2 * 1000}')
  n=$(echo "$body" | awk '$1 == "ha_snapshot_encode_seconds_count" {print $2}')
  sum=$(echo "$body" | awk '$1 == "ha_snapshot_encode_seconds_sum" {printf "%.0f", $2 * 1000}')
  slow=$(echo "$body" | awk -F'[{}" ]+' '$1 == "ha_snapshot_encode_seconds_bucket" && $3 == "0.5" {le=$4} $1 == "ha_snapshot_encode_seconds_count" {print $2 - le}')
  over=$(echo "$body" | awk -F'[{}" ]+' '$1 == "ha_leader_gap_seconds_bucket" && $3 == "0.1" {le=$4} $1 == "ha_leader_gap_seconds_count" {print $2 - le}')
  term=$(metric "$m" ha_term)
  rss=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/${PIDS[$((i - 1))]}/status")
  snap=$(metric "$m" ha_snapshot_index)
  echo "node $i ($role, term ${term%.*}): longest gap between its leader's messages ${gap} ms, $over gaps over 100 ms; $n snapshots encoded in $sum ms in all ($slow over 0.5 s), newest at ${snap%.*}; peak RSS $rss MiB"
done
du -sh "$D"/data-1/snapshots 2>/dev/null | awk '{print "snapshot directory of node 1: " $1}'
echo "fill: $(cat "$D/fill")"
