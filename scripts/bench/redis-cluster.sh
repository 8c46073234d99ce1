#!/usr/bin/env bash
# A throwaway local Redis Cluster for benchmarks (not for production).
#
#   scripts/bench/redis-cluster.sh start DIR PORT [REPLICAS]   # 3 masters on PORT..PORT+2
#   scripts/bench/redis-cluster.sh stop DIR
#
# REPLICAS (0 or 1, default 0) replicas per master on the following ports. Each
# node also listens on its port + 10000 (the cluster bus): keep PORT ≤ 55530.
# No persistence. Prints the redis+cluster:// URL for --redis-url.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?directory}
case $cmd in
start)
  port=${3:?first port}
  replicas=${4:-0}
  nodes=$((3 * (1 + replicas)))
  mkdir -p "$dir"
  addrs=()
  for i in $(seq 0 $((nodes - 1))); do
    p=$((port + i))
    mkdir -p "$dir/$p"
    redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
      --save '' --appendonly no --dir "$dir/$p" --daemonize yes \
      --pidfile "$dir/$p/redis.pid" --logfile "$dir/$p/redis.log"
    addrs+=("127.0.0.1:$p")
  done
  for p in $(seq "$port" $((port + nodes - 1))); do
    until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.05; done
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$replicas" --cluster-yes >/dev/null
  until redis-cli -p "$port" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
  echo "redis+cluster://127.0.0.1:$port,127.0.0.1:$((port + 1))"
  ;;
stop)
  for pidfile in "$dir"/*/redis.pid; do
    [ -e "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  sleep 0.5
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start DIR PORT [REPLICAS] | stop DIR" >&2
  exit 2
  ;;
esac
