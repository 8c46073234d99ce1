#!/usr/bin/env bash
# switchboard against the floor, alternating runs: on a shared, noisy machine a
# single run of each is not a ratio, so each load runs REPS times as
# floor → native → relay, each with a fresh server and Redis, all measured by
# `switchboard bench`; summarize.py prints the medians and their ratios.
# Needs the floor from the OPTIONAL external kit (bash ../shared/bench/setup.sh).
#   bash scripts/bench/versus_floor.sh [LOAD…]   LOAD = CLIENTS:RATE:MESSAGES
# Default: 5000:2:40 1000:300:3000 1000:400:4000 (the issue's loads); REPS=3.
# GW_FLAGS adds gateway flags (e.g. GW_FLAGS="--ping-interval 0" to see what
# heartbeats cost; use another OUT= so the runs are summarized apart).
source "$(dirname "$0")/lib.sh"
LOADS=${*:-5000:2:40 1000:300:3000 1000:400:4000}
REPS=${REPS:-3}
FLOOR=$PEERS_DIR/floor/target/release/fanfloor
[ -x "$FLOOR" ] || { echo "the floor is not installed: bash $KIT/setup.sh (see BENCHMARKS.md)" >&2; exit 1; }

for load in $LOADS; do
  IFS=: read -r clients rate msgs <<< "$load"
  for rep in $(seq 1 "$REPS"); do
    start_redis
    FLOOR_PORT=$(free_port)
    "$FLOOR" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$REDIS_PORT" bench 2 > "$OUT/floor.log" 2>&1 &
    FLOOR_PID=$!; STARTED_PIDS+=("$FLOOR_PID")
    wait_port "$FLOOR_PORT"
    bench "vs-floor-${clients}x$rate-$rep" --url "ws://127.0.0.1:$FLOOR_PORT/ws" --route raw \
      --publisher plain --pubsub-name bench --redis-url "$REDIS_URL" --clients "$clients" \
      --rate "$rate" --messages "$msgs" --server-pid "$FLOOR_PID"
    cleanup
    for route in native relay; do
      start_redis
      # shellcheck disable=SC2086 # GW_FLAGS is a list of flags
      start_gateway "gw-vs-$route" ${GW_FLAGS:-}
      bench "vs-$route-${clients}x$rate-$rep" --url "$GW_URL" --redis-url "$REDIS_URL" \
        --route "$route" --clients "$clients" --rate "$rate" --messages "$msgs" --server-pid "$GW_PID"
      cleanup
    done
  done
done
