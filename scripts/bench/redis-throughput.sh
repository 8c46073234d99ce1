#!/usr/bin/env bash
# One Redis vs a 3-master Redis Cluster: messages/s accepted through the engine's
# publish script, received by an engine feed, delivered by a gateway to WebSocket
# clients, and the Redis CPU each message costs. See BENCHMARKS.md.
#
#   scripts/bench/redis-throughput.sh [SECONDS] [RUNS]
#
# Needs redis-server and redis-cli; builds the release binary and the
# redis_bench example. Ports: 26379 (one Redis), 27001-27003 (cluster),
# 28080 (gateway).
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN=${1:-10}
RUNS=${2:-3}
DIR=$(mktemp -d /tmp/sb-redis-bench.XXXXXX)
cargo build --release --bin switchboard --example redis_bench >&2
BENCH=target/release/examples/redis_bench
SB=target/release/switchboard
SINGLE=redis://127.0.0.1:26379
cleanup() {
  [ -n "${GW:-}" ] && kill "$GW" 2>/dev/null || true
  [ -e "$DIR/single.pid" ] && kill "$(cat "$DIR/single.pid")" 2>/dev/null || true
  scripts/bench/redis-cluster.sh stop "$DIR/cluster" || true
  rm -rf "$DIR"
}
trap cleanup EXIT
redis-server --port 26379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$DIR/single.pid" --logfile "$DIR/single.log"
CLUSTER=$(scripts/bench/redis-cluster.sh start "$DIR/cluster" 27001 0)
until redis-cli -p 26379 ping >/dev/null 2>&1; do sleep 0.05; done

# Redis CPU seconds (user + sys) summed over the given ports.
cpu() {
  local total=0 p v
  for p in "$@"; do
    v=$(redis-cli -p "$p" info cpu | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {print s}')
    total=$(echo "$total + $v" | bc)
  done
  echo "$total"
}

# run NAME URL PORTS... -- BENCH-ARGS...
run() {
  local name=$1 url=$2; shift 2
  local ports=()
  while [ "$1" != "--" ]; do ports+=("$1"); shift; done
  shift
  local before after out
  before=$(cpu "${ports[@]}")
  out=$("$BENCH" --redis "$url" --seconds "$SECONDS_PER_RUN" "$@")
  after=$(cpu "${ports[@]}")
  echo "$out" | python3 -c '
import json, sys
d = json.load(sys.stdin)
name, cpu, secs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
# The CPU counters cover warm-up and measurement (secs + 1 s + setup): per message,
# divide by the messages published over that span, estimated at the measured rate.
msgs = d["published_per_s"] * (secs + 1)
pub, feed, dlv, err = d["published_per_s"], d["feed_received_per_s"], d["gateway_delivered_per_s"], d["errors"]
print(f"{name:28} published/s {pub:>8.0f}  feed/s {feed:>8.0f}  delivered/s {dlv:>8.0f}"
      f"  redis cpu us/msg {1e6 * cpu / max(msgs, 1):6.1f}  errors {err}")
' "$name" "$(echo "$after - $before" | bc)" "$SECONDS_PER_RUN"
}

gateway() {
  "$SB" gateway --listen 127.0.0.1:28080 --admin-listen 127.0.0.1:28081 --no-auth --replica-id bench "$@" \
    --max-connections 1000 >"$DIR/gateway.log" 2>&1 &
  GW=$!
  until curl -sf http://127.0.0.1:28080/health/ready >/dev/null; do sleep 0.1; done
}

# Redis alone: three redis-benchmark processes (16 connections, pipelines of 16)
# run the publish script as fast as Redis takes it, each on one channel; on the
# cluster each channel lives on a different master. No subscribers.
SCRIPT_SHA=$(redis-cli -p 26379 script load "$(cat src/engine/publish.lua)")
for p in 27001 27002 27003; do redis-cli -p "$p" script load "$(cat src/engine/publish.lua)" >/dev/null; done
# A channel tag served by each master (its own slot ranges from CLUSTER NODES).
declare -A TAG
for p in 27001 27002 27003; do
  ranges=$(redis-cli -p "$p" cluster nodes | awk '/myself/ { for (i = 9; i <= NF; i++) print $i }')
  for i in $(seq 0 500); do
    slot=$(redis-cli -p "$p" cluster keyslot "{raw$i}")
    if echo "$ranges" | awk -F- -v s="$slot" '{ b = ($2 == "" ? $1 : $2); if (s >= $1 && s <= b) f = 1 } END { exit !f }'; then
      TAG[$p]="raw$i"
      break
    fi
  done
done
raw() { # NAME PORT1 PORT2 PORT3 (one redis-benchmark per port, with that port's channel)
  local name=$1; shift
  local pids=() n=0 p tag
  for p in "$@"; do
    n=$((n + 1))
    if [ "$p" = 26379 ]; then tag="raw$n"; else tag=${TAG[$p]}; fi
    redis-benchmark -p "$p" -n $((SECONDS_PER_RUN * 40000)) -c 16 -P 16 -q \
      evalsha "$SCRIPT_SHA" 3 "switchboard:{$tag}:meta" "switchboard:{$tag}:history" \
      "switchboard:{$tag}:snapshot" "switchboard:{$tag}" '{"x":1,"pad":"0123456789012345678901234567890123456789012345678901234567890123456789"}' \
      1000 600000 EPOCHRAW 0 '' "$( [ "$p" = 26379 ] && echo publish || echo spublish )" \
      >"$DIR/raw-$p-$n.txt" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  cat "$DIR"/raw-*.txt | tr '\r' '\n' | awk -v name="$name" '
    /requests per second/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9.]+$/ && $(i+1) == "requests") s += $i }
    END { printf "%-28s redis-benchmark: %8.0f publish scripts/s\n", name, s }'
  rm -f "$DIR"/raw-*.txt
}

for r in $(seq "$RUNS"); do
  echo "== run $r"
  raw "one Redis (3 channels)" 26379 26379 26379
  raw "cluster (1 channel/master)" 27001 27002 27003
  run "one Redis, pool 8" "$SINGLE" 26379 -- --pool-size 8
  run "cluster, pool 8/master" "$CLUSTER" 27001 27002 27003 -- --pool-size 8
  run "one Redis, pool 64" "$SINGLE" 26379 -- --pool-size 64
  run "cluster, pool 2/master" "$CLUSTER" 27001 27002 27003 -- --pool-size 2
  run "one Redis + feed" "$SINGLE" 26379 -- --feed
  run "cluster + feed" "$CLUSTER" 27001 27002 27003 -- --feed
  gateway --redis-url "$SINGLE"
  run "one Redis + gateway" "$SINGLE" 26379 -- --gateway ws://127.0.0.1:28080/ws
  kill "$GW"; wait "$GW" 2>/dev/null || true; GW=
  gateway --redis-cluster-urls "redis://127.0.0.1:27001,redis://127.0.0.1:27002"
  run "cluster + gateway" "$CLUSTER" 27001 27002 27003 -- --gateway ws://127.0.0.1:28080/ws
  kill "$GW"; wait "$GW" 2>/dev/null || true; GW=
done
