#!/usr/bin/env bash
# The figures of docs/scalability.md: closed-loop `ha-kv bench` throughput
# of writes and of reads (linearizable through ReadIndex, through the
# leader's lease, and stale reads spread over every node) on fresh clusters
# of 3 and of 5 nodes, and of writes on one 3-node group against two
# 3-node groups side by side. Prints one line per run and the medians.
#
#   scripts/scalability.sh BIN [RUNS] [CLIENTS] [OPS]
#
# Defaults: 3 runs, 64 clients, 20000 operations (128-byte values, 10,000
# keys). Each run starts its own cluster (scripts/kv-bench.sh).
set -euo pipefail
BIN=$1
RUNS=${2:-3}
CLIENTS=${3:-64}
OPS=${4:-20000}
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT

run() { # label nodes read_ratio serve_flags bench_flags
  local label=$1 nodes=$2 read=$3 serve=$4 bench=$5 r line
  for r in $(seq 1 "$RUNS"); do
    line=$(HA_NODES=$nodes HA_SERVE_FLAGS=$serve HA_BENCH_FLAGS=$bench \
      scripts/kv-bench.sh "$BIN" "$CLIENTS" "$OPS" 128 10000 "$read")
    echo "$label nodes=$nodes run=$r $line" | tee -a "$out"
  done
}

for n in 3 5; do
  run writes "$n" 0 "" ""
  run reads-readindex "$n" 1 "" ""
  run reads-lease "$n" 1 "--lease-reads" "--consistency lease"
  run reads-stale "$n" 1 "" "--consistency stale"
done
# Two independent groups at once, each with half the clients. (Their
# clusters start at about the same time; each bench starts once its own
# cluster takes writes.)
for r in $(seq 1 "$RUNS"); do
  a=$(mktemp) b=$(mktemp)
  scripts/kv-bench.sh "$BIN" $((CLIENTS / 2)) $((OPS / 2)) 128 10000 0 >"$a" &
  pa=$!
  scripts/kv-bench.sh "$BIN" $((CLIENTS / 2)) $((OPS / 2)) 128 10000 0 >"$b" &
  pb=$!
  wait "$pa" || { echo "group A failed" >&2; exit 1; }
  wait "$pb" || { echo "group B failed" >&2; exit 1; }
  echo "writes-2-groups nodes=6 run=$r $(python3 -c '
import json,sys
a,b=(json.loads(open(f).read().strip().splitlines()[-1]) for f in sys.argv[1:])
print(json.dumps({"ops_per_sec": a["ops_per_sec"]+b["ops_per_sec"], "groups": [a["ops_per_sec"], b["ops_per_sec"]], "errors": a["errors"]+b["errors"]}))
' "$a" "$b")" | tee -a "$out"
  rm -f "$a" "$b"
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, nodes, _, js = line.split(" ", 3)
    d = json.loads(js)
    if d.get("errors"):
        print(f"warning: {label} {nodes} had {d['errors']} failed operations")
    rows.setdefault((label, nodes), []).append(d["ops_per_sec"])
print("median ops/s:")
for (label, nodes), v in rows.items():
    print(f"  {label:18} {nodes:8} {statistics.median(v):>9.0f}   runs {sorted(v)}")
PY
