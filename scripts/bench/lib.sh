# Shared helpers of the benchmark scripts (sourced, not run).
#
# Each script starts its own redis-server and gateway(s) on free loopback
# ports, runs `switchboard bench`, writes one JSON report per run into
# $OUT (default target/bench-results/<date>), and stops what it started by PID.
# Build first: cargo build --release.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SB=${SB:-$ROOT/target/release/switchboard}
OUT=${OUT:-$ROOT/target/bench-results/$(date -u +%Y%m%d)}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: redis-server runs in its own dir
# The optional external kit (floor, peers, wsfan): not part of this repository.
KIT=${KIT:-$ROOT/../shared/bench}
PEERS_DIR=${WORKDIR:-/tmp/switchboard-peers}
mkdir -p "$OUT"
[ -x "$SB" ] || { echo "build first: cargo build --release ($SB missing)" >&2; exit 1; }

# Authentication is on, as in production: every gateway verifies an HS256 JWT
# on each upgrade (--jwt-secret-file) and every `bench` client sends one
# (Authorization: Bearer). NO_AUTH=1 runs the gateways --no-auth instead.
if [ "${NO_AUTH:-0}" = 1 ]; then
  AUTH=off
  TOKEN=
else
  AUTH=jwt
  JWT_SECRET_FILE=${JWT_SECRET_FILE:-$OUT/jwt.secret}
  [ -s "$JWT_SECRET_FILE" ] || python3 -c 'import secrets;print(secrets.token_hex(32))' > "$JWT_SECRET_FILE"
  TOKEN=$("$SB" token --secret-file "$JWT_SECRET_FILE" --sub bench \
    --perm websocket:connect,websocket:subscribe --channels '*' --ttl 12h)
fi

STARTED_PIDS=()
cleanup() {
  local p
  for p in "${STARTED_PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for p in "${STARTED_PIDS[@]:-}"; do
    [ -n "$p" ] || continue
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  STARTED_PIDS=()
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

wait_port() { # port [tries]
  for _ in $(seq 1 "${2:-150}"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# start_redis: sets REDIS_PORT, REDIS_URL, REDIS_PID
start_redis() {
  REDIS_PORT=$(free_port)
  local dir="$OUT/redis-$REDIS_PORT"
  mkdir -p "$dir"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" &
  REDIS_PID=$!
  STARTED_PIDS+=("$REDIS_PID")
  REDIS_URL=redis://127.0.0.1:$REDIS_PORT
  wait_port "$REDIS_PORT"
}

# start_gateway NAME [extra flags…]: sets GW_PORT, GW_ADMIN_PORT (/metrics), GW_PID, GW_URL
# (needs start_redis).
# Verifies tokens signed with $JWT_SECRET_FILE (one user, "bench", may hold
# 20,000 connections) unless NO_AUTH=1 or the flags name their own key.
start_gateway() {
  local name=$1; shift
  local auth=(--no-auth)
  [ "$AUTH" = jwt ] && auth=(--jwt-secret-file "$JWT_SECRET_FILE" --max-connections-per-user 20000)
  case " $* " in *" --jwt-"*|*" --jwks-file "*) auth=() ;; esac
  GW_PORT=$(free_port)
  GW_ADMIN_PORT=$(free_port)
  # GW_WRAP: a command to run the gateway under (e.g. valgrind).
  SWITCHBOARD_LOG_LEVEL=${GW_LOG_LEVEL:-warn} ${GW_WRAP:-} "${GW_BIN:-$SB}" gateway "${auth[@]}" \
    --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$GW_ADMIN_PORT" \
    --redis-url "$REDIS_URL" --replica-id "$name" \
    --max-connections 20000 "$@" > "$OUT/$name.log" 2>&1 &
  GW_PID=$!
  STARTED_PIDS+=("$GW_PID")
  GW_URL=ws://127.0.0.1:$GW_PORT
  wait_port "$GW_PORT" "${READY_TRIES:-150}"
  for _ in $(seq 1 "${READY_TRIES:-100}"); do
    curl -fs "http://127.0.0.1:$GW_PORT/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "gateway $name did not become ready (see $OUT/$name.log)" >&2
  return 1
}

stop_pid() { # pid
  kill "$1" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

# bench NAME [flags…]: runs switchboard bench, prints the table, keeps the JSON
bench() {
  local name=$1; shift
  echo "== $name" >&2
  local token=()
  case " $* " in
    *" --route raw "*|*" --token "*) ;;
    *) [ "$AUTH" = jwt ] && token=(--token "$TOKEN") ;;
  esac
  SWITCHBOARD_LOG_LEVEL=${BENCH_LOG_LEVEL:-warn} "$SB" bench --label "$name" \
    --output "$OUT/$name.json" "${token[@]}" "$@"
}
