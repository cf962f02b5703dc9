#!/usr/bin/env bash
# A long put load on one 3-node ha-kv cluster: does leadership hold, and
# does memory stay flat?
#
#   bench/steady-load.sh [SECS] [CLIENTS]      # default 300 s, 256 clients
#
# Starts a fresh cluster on loopback (temporary certificates, data and
# ports), then runs `ha-kv bench` with CLIENTS closed-loop clients (128-byte
# values over 10,000 keys) in rounds of about 30 s until SECS have passed.
# After each round it prints the round's JSON summary with every node's
# resident memory (MiB). At the end it compares every node's term and the
# leader with those at the start: the load must not have caused an
# election. Exits 1 if it did, or if a round failed.
set -euo pipefail
SECS=${1:-300}
CLIENTS=${2:-256}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release -q -p ha-kv
HA="$ROOT/target/release/ha-kv"
# shellcheck source=scripts/cluster-lib.sh
source "$ROOT/scripts/cluster-lib.sh"
D=$(mktemp -d)
PIDS=()
finish() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    for f in "$D"/log-*; do echo "--- $f" >&2; tail -20 "$f" >&2; done
  fi
  rm -rf "$D"
}
trap finish EXIT
start_ha_cluster "$HA" "$D"
C=("${HA_CLUSTER[@]}")
# "term leader" of every node, sorted: one line.
view() {
  "$HA" status "${C[@]}" --timeout-ms 1000 | python3 -c 'import json, sys
s = sorted((json.loads(l) for l in sys.stdin if l.strip()), key=lambda x: x["id"])
if len(s) != 3:
    sys.exit("only %d of 3 nodes answered" % len(s))
print(" ".join("%s:term=%s,leader=%s" % (x["id"], x["term"], x["leader"]) for x in s))'
}
rss() {
  local out=() p
  for p in "${PIDS[@]}"; do
    out+=("$(( $(awk '/^VmRSS/ {print $2}' "/proc/$p/status") / 1024 ))")
  done
  echo "${out[*]}"
}
BEFORE=$(view)
echo "start: $BEFORE  rss_mib: $(rss)"
OPS=100000
START=$(date +%s)
while [ $(( $(date +%s) - START )) -lt "$SECS" ]; do
  out=$("$HA" bench --clients "$CLIENTS" --ops "$OPS" --value-size 128 --keys 10000 \
    "${C[@]}" 2>/dev/null | tail -1)
  all_up
  echo "$out rss_mib: $(rss)"
  python3 -c 'import json, sys
r = json.loads(sys.argv[1])
if r["errors"]:
    sys.exit("%d writes failed in this round" % r["errors"])' "$out"
  # Size the next round to about 30 s at this round's rate.
  OPS=$(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(max(10000, int(r['ops_per_sec']*30)))" "$out")
done
AFTER=$(view)
echo "end:   $AFTER  rss_mib: $(rss)"
if [ "$BEFORE" != "$AFTER" ]; then
  echo "leadership changed under load" >&2
  exit 1
fi
echo "no election in $(( $(date +%s) - START )) s of load"
