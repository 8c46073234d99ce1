#!/usr/bin/env bash
# Connect storm: CLIENTS native clients opened as fast as the gateway accepts
# them (256 handshakes in flight), each subscribing to one of 100 channels.
# The gateway verifies a JWT on every upgrade (lib.sh: auth is on); NO_AUTH=1
# measures the same storm without token verification.
#   bash scripts/bench/connect_storm.sh [CLIENTS]   (default 10000)
source "$(dirname "$0")/lib.sh"
CLIENTS=${1:-10000}

start_redis
start_gateway gw-storm
NAME=connect-storm-$AUTH-$CLIENTS
bench "$NAME" --url "$GW_URL" --redis-url "$REDIS_URL" --clients "$CLIENTS" --channels 100 \
  --rate 100 --duration 3s --connect-concurrency 256 --src-ips 127.0.0.1-127.0.0.4 \
  --server-pid "$GW_PID"
