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
"$HA" certs --dir "$D/tls" --nodes 1,2,3 >/dev/null 2>&1
read -r P1 P2 P3 < <(python3 -c 'import socket
ss=[socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
[s.bind(("127.0.0.1", 0)) for s in ss]
ports = [s.getsockname()[1] for s in ss]
[s.close() for s in ss]  # released before bash reads the line, so serve can bind them
print(" ".join(map(str, ports)))')
PEERS="1=127.0.0.1:$P1,2=127.0.0.1:$P2,3=127.0.0.1:$P3"
i=1
for p in $P1 $P2 $P3; do
  "$HA" serve --id $i --listen 127.0.0.1:$p --peers "$PEERS" \
    --data-dir "$D/data-$i" --tls-dir "$D/tls" 2>"$D/log-$i" &
  PIDS+=($!)
  i=$((i + 1))
done
C=(--cluster "127.0.0.1:$P1,127.0.0.1:$P2,127.0.0.1:$P3" --tls-dir "$D/tls")
for _ in $(seq 1 100); do
  "$HA" put warm up "${C[@]}" --timeout-ms 1000 >/dev/null 2>&1 && break
  sleep 0.1
done
# "term leader" of every node, sorted: one line.
view() {
  "$HA" status "${C[@]}" --timeout-ms 1000 | python3 -c 'import json, sys
s = sorted((json.loads(l) for l in sys.stdin if l.strip()), key=lambda x: x["id"])
if len(s) != 3:
    sys.exit("only %d of 3 nodes answered" % len(s))
print(" ".join("%s:term=%s,leader=%s" % (x["id"], x["term"], x["leader"]) for x in s))'
}
all_up() {
  local p
  for p in "${PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "node pid $p died" >&2; exit 1; }
  done
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
