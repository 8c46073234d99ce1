#!/usr/bin/env bash
# Two replicas sharing the clients: two gateways on one Redis, clients spread
# round-robin over both, messages published once into Redis. The default is the
# 1,000 × 300 msg/s broadcast load split over two replicas, then the same load
# on one replica in the same run for comparison.
#   bash scripts/bench/replicas.sh [CLIENTS] [RATE] [MESSAGES]   (default 1000 300 3000)
source "$(dirname "$0")/lib.sh"
CLIENTS=${1:-1000}
RATE=${2:-300}
MESSAGES=${3:-3000}

start_redis
start_gateway gw-a; A_URL=$GW_URL; A_PID=$GW_PID
start_gateway gw-b; B_URL=$GW_URL; B_PID=$GW_PID
bench "replicas-2x-${CLIENTS}x$RATE" --url "$A_URL" --url "$B_URL" --redis-url "$REDIS_URL" \
  --clients "$CLIENTS" --rate "$RATE" --messages "$MESSAGES" \
  --server-pid "$A_PID" --server-pid "$B_PID"
cleanup
start_redis
start_gateway gw-single
bench "replicas-1x-${CLIENTS}x$RATE" --url "$GW_URL" --redis-url "$REDIS_URL" \
  --clients "$CLIENTS" --rate "$RATE" --messages "$MESSAGES" --server-pid "$GW_PID"
