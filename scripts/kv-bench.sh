#!/usr/bin/env bash
# One closed-loop `ha-kv bench` against a fresh 3-node cluster of BIN on
# loopback (certificates, data directories and ports of its own, removed
# afterwards). Prints the bench's JSON summary line.
#
#   scripts/kv-bench.sh BIN CLIENTS OPS [VALUE_BYTES] [KEYS] [READ_RATIO]
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
D=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"' EXIT
"$BIN" certs --dir "$D/tls" --nodes 1,2,3 >/dev/null 2>&1
# Free UDP ports from the OS, held until all three are drawn, then let go.
read -r P1 P2 P3 < <(python3 -c 'import socket
ss=[socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
[s.bind(("127.0.0.1", 0)) for s in ss]
ports=[s.getsockname()[1] for s in ss]
[s.close() for s in ss]  # released before bash reads the line, so serve can bind them
print(" ".join(map(str, ports)))')
PEERS="1=127.0.0.1:$P1,2=127.0.0.1:$P2,3=127.0.0.1:$P3"
i=1
for p in $P1 $P2 $P3; do
  "$BIN" serve --id $i --listen 127.0.0.1:$p --peers "$PEERS" \
    --data-dir "$D/data-$i" --tls-dir "$D/tls" 2>"$D/log-$i" &
  i=$((i + 1))
done
C=(--cluster "127.0.0.1:$P1,127.0.0.1:$P2,127.0.0.1:$P3" --tls-dir "$D/tls")
for _ in $(seq 1 100); do
  if "$BIN" put warm up "${C[@]}" --timeout-ms 1000 >/dev/null 2>&1; then break; fi
  sleep 0.1
done
"$BIN" bench --clients "$CLIENTS" --ops "$OPS" --value-size "$VALUE" --keys "$KEYS" \
  --read-ratio "$READ" \
  "${C[@]}" 2>/dev/null | tail -1
