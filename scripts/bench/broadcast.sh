#!/usr/bin/env bash
# Broadcast: every client on one channel, a fresh gateway per run. The issue's
# loads over the native protocol (publish script: offsets and history) and over
# the relay route /api/ws/{channel}.
#   bash scripts/bench/broadcast.sh [native|relay …]
source "$(dirname "$0")/lib.sh"
ROUTES=${*:-native relay}

# name clients rate messages route
run_load() {
  start_redis
  start_gateway "gw-$1"
  bench "$1" --url "$GW_URL" --redis-url "$REDIS_URL" --route "$5" \
    --clients "$2" --rate "$3" --messages "$4" --server-pid "$GW_PID"
  cleanup
}

for route in $ROUTES; do
  run_load "broadcast-$route-5000x2" 5000 2 40 "$route"
  run_load "broadcast-$route-1000x300" 1000 300 3000 "$route"
  run_load "broadcast-$route-1000x400" 1000 400 4000 "$route"
done
