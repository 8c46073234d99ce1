#!/usr/bin/env bash
# Two replicas sharing the clients: two gateways on one Redis, clients spread
# round-robin over both, messages published once into Redis.
#   bash scripts/bench/replicas.sh [CLIENTS] [RATE] [MESSAGES]   (default 2000 300 3000)
source "$(dirname "$0")/lib.sh"
CLIENTS=${1:-2000}
RATE=${2:-300}
MESSAGES=${3:-3000}

start_redis
start_gateway gw-a; A_URL=$GW_URL; A_PID=$GW_PID
start_gateway gw-b; B_URL=$GW_URL; B_PID=$GW_PID
bench "replicas-2x-${CLIENTS}x$RATE" --url "$A_URL" --url "$B_URL" --redis-url "$REDIS_URL" \
  --clients "$CLIENTS" --rate "$RATE" --messages "$MESSAGES" \
  --server-pid "$A_PID" --server-pid "$B_PID"
