#!/bin/sh
# Starts one ha-kv node of a StatefulSet (see deploy/README.md).
#
# The pod's ordinal N (from its hostname, NAME-N) makes node id N+1. The
# first HA_INITIAL_VOTERS pods are the cluster's first voters, each named
# by its stable DNS name; any later pod starts with --join and waits until
# an operator runs `ha-kv member add`. Restarting a pod reuses its data
# directory: the node then recovers its configuration from it, and gets
# neither --peers nor --join.
#
# HA_CLUSTER_STATE=new (the default) lets the first voters bootstrap a
# cluster from empty data directories. Once the cluster runs, set it to
# `existing`: then a first voter's pod whose volume was lost starts with
# --join instead of bootstrapping a second, empty cluster under its old
# id (see deploy/README.md for what the operator does next).
#
# Settings (environment): HA_SERVICE (the headless Service, default
# ha-kv), HA_DOMAIN (the pods' DNS suffix, default $HA_SERVICE), HA_PORT
# (default 7000), HA_METRICS_PORT (default 9000), HA_INITIAL_VOTERS
# (default 3), HA_CLUSTER_STATE (new or existing, default new), HA_DATA
# (default /data), HA_TLS (default /tls); extra arguments are passed on to
# `ha-kv serve`.
set -eu

host="${HOSTNAME:?HOSTNAME names the pod}"
ordinal="${host##*-}"
case "$ordinal" in
  ''|*[!0-9]*) echo "ha-kv-start: hostname $host does not end in -ORDINAL" >&2; exit 2 ;;
esac
set_name="${host%-*}"
service="${HA_SERVICE:-ha-kv}"
domain="${HA_DOMAIN:-$service}"
port="${HA_PORT:-7000}"
metrics="${HA_METRICS_PORT:-9000}"
initial="${HA_INITIAL_VOTERS:-3}"
case "$initial" in
  ''|*[!0-9]*|0) echo "ha-kv-start: HA_INITIAL_VOTERS=$initial is not a number of voters" >&2; exit 2 ;;
esac
state="${HA_CLUSTER_STATE:-new}"
case "$state" in
  new|existing) ;;
  *) echo "ha-kv-start: HA_CLUSTER_STATE=$state is not new or existing" >&2; exit 2 ;;
esac
data="${HA_DATA:-/data}"
id=$((ordinal + 1))

# A data directory that holds a configuration needs neither flag (the node
# recovers it, whether it bootstrapped or joined); otherwise the first
# voters bootstrap a new cluster, and everyone else joins.
membership=""
if [ -e "$data/cluster" ]; then
  :
elif [ "$ordinal" -lt "$initial" ] && [ "$state" = new ]; then
  peers=""
  i=0
  while [ "$i" -lt "$initial" ]; do
    peers="${peers:+$peers,}$((i + 1))=$set_name-$i.$domain:$port"
    i=$((i + 1))
  done
  membership="--peers $peers"
else
  if [ "$ordinal" -lt "$initial" ]; then
    echo "ha-kv-start: node $id has no data in $data and the cluster exists: joining (remove node $id and add it again)" >&2
  fi
  membership="--join"
fi

# $membership is split on purpose (one flag, or a flag and its list).
# shellcheck disable=SC2086
exec ha-kv serve --id "$id" --listen "0.0.0.0:$port" $membership \
  --data-dir "$data" --tls-dir "${HA_TLS:-/tls}" \
  --metrics "0.0.0.0:$metrics" "$@"
