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
# GW_BINS="TAG=PATH TAG=PATH" compares gateway builds in the same runs (an A/B:
# is a change near the hot path free?): each rep runs the floor, then native and
# relay on every build, the builds' order reversed on every other rep; the
# bench client stays $SB, and the servers are summarized as native.TAG, relay.TAG.
source "$(dirname "$0")/lib.sh"
LOADS=${*:-5000:2:40 1000:300:3000 1000:400:4000}
REPS=${REPS:-3}
FLOOR=$PEERS_DIR/floor/target/release/fanfloor
[ -x "$FLOOR" ] || { echo "the floor is not installed: bash $KIT/setup.sh (see BENCHMARKS.md)" >&2; exit 1; }

for build in ${GW_BINS:-}; do
  case $build in
    *-*=*|=*|*=) echo "GW_BINS: each entry is TAG=PATH, TAG without '-' ($build)" >&2; exit 1 ;;
    *=*) [ -x "${build#*=}" ] || { echo "GW_BINS: ${build#*=} is not an executable" >&2; exit 1; } ;;
    *) echo "GW_BINS: each entry is TAG=PATH ($build)" >&2; exit 1 ;;
  esac
done

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
    builds=(${GW_BINS:-"=$SB"})
    if (( rep % 2 == 0 )); then
      reversed=(); for ((i = ${#builds[@]} - 1; i >= 0; i--)); do reversed+=("${builds[i]}"); done
      builds=("${reversed[@]}")
    fi
    for build in "${builds[@]}"; do
      tag=${build%%=*}
      for route in native relay; do
        server=$route${tag:+.$tag}
        start_redis
        # shellcheck disable=SC2086 # GW_FLAGS is a list of flags
        GW_BIN=${build#*=} start_gateway "gw-vs-$server" ${GW_FLAGS:-}
        bench "vs-$server-${clients}x$rate-$rep" --url "$GW_URL" --redis-url "$REDIS_URL" \
          --route "$route" --clients "$clients" --rate "$rate" --messages "$msgs" --server-pid "$GW_PID"
        cleanup
      done
    done
  done
done
