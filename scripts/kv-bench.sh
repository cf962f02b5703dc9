#!/usr/bin/env bash
# One closed-loop `ha-kv bench` against a fresh cluster of BIN (3 nodes;
# HA_NODES=N for N) on
# loopback (certificates, data directories and ports of its own, removed
# afterwards). Prints the bench's JSON summary line.
#
#   scripts/kv-bench.sh BIN CLIENTS OPS [VALUE_BYTES] [KEYS] [READ_RATIO]
#
# HA_SERVE_FLAGS adds flags to every `serve` (e.g. "--lease-reads");
# HA_BENCH_FLAGS to the bench (e.g. "--consistency stale").
#
# To compare two builds, alternate them over several runs and take medians,
# e.g. for r in 1 2 3 4 5; do for b in old/ha-kv new/ha-kv; do
#   echo "$b $(scripts/kv-bench.sh $b 64 40000)"; done; done
set -euo pipefail
BIN=$1
CLIENTS=$2
OPS=$3
VALUE=${4:-128}
KEYS=${5:-10000}
READ=${6:-0}
# shellcheck source=scripts/cluster-lib.sh
source "$(dirname "$0")/cluster-lib.sh"
D=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"' EXIT
# shellcheck disable=SC2086 # the flags split into words
start_ha_cluster "$BIN" "$D" ${HA_SERVE_FLAGS:-}
# shellcheck disable=SC2086 # the flags split into words
"$BIN" bench --clients "$CLIENTS" --ops "$OPS" --value-size "$VALUE" --keys "$KEYS" \
  --read-ratio "$READ" ${HA_BENCH_FLAGS:-} \
  "${HA_CLUSTER[@]}" 2>/dev/null | tail -1
