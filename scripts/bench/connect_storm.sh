#!/usr/bin/env bash
# Connect storm: CLIENTS native clients opened as fast as the gateway accepts
# them (256 handshakes in flight), each subscribing to one of 100 channels.
# With JWT_SECRET_FILE set, the gateway verifies a token on every upgrade
# (`--jwt-secret-file`) and the clients send one minted by `switchboard token`;
# without it, the gateway runs --no-auth.
#   bash scripts/bench/connect_storm.sh [CLIENTS]   (default 10000)
source "$(dirname "$0")/lib.sh"
CLIENTS=${1:-10000}

start_redis
if [ -n "${JWT_SECRET_FILE:-}" ]; then
  TOKEN=$("$SB" token --secret-file "$JWT_SECRET_FILE" --sub bench \
    --perm websocket:connect,websocket:subscribe --channels 'bench*' --ttl 1h)
  start_gateway gw-storm --jwt-secret-file "$JWT_SECRET_FILE" --max-connections-per-user 20000
  AUTH=(--token "$TOKEN")
  NAME=connect-storm-jwt-$CLIENTS
else
  start_gateway gw-storm
  AUTH=()
  NAME=connect-storm-$CLIENTS
fi
bench "$NAME" --url "$GW_URL" --redis-url "$REDIS_URL" --clients "$CLIENTS" --channels 100 \
  --rate 100 --duration 3s --connect-concurrency 256 --src-ips 127.0.0.1-127.0.0.4 \
  --server-pid "$GW_PID" "${AUTH[@]}"
