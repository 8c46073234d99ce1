#!/usr/bin/env bash
# The production topology on one machine, without Docker or Kubernetes, on loopback:
# a private redis-server, three gateway replicas, the collector, and nginx balancing
# WebSocket clients over the gateways (the nginx configuration is the one
# deploy/docker-compose.yml uses: deploy/nginx/*.conf). Optionally Prometheus
# scraping every replica with deploy/prometheus/alerts.yml loaded.
#
#   deploy/local-cluster.sh                 # then http://127.0.0.1:8080/ (the dashboard)
#                                           # or ws://127.0.0.1:8080/ws/federation
#   deploy/local-cluster.sh --prometheus-port 9091
#
# Ctrl-C stops everything (gateways drain first). Needs redis-server and nginx
# (Debian/Ubuntu: apt-get install redis-server nginx); runs as the current user,
# with every file in one run directory. Builds target/release/switchboard when it is
# missing or older than the sources, src/ and assets/ (the dashboard page compiled
# into it), build.rs, or Cargo.toml/Cargo.lock (or use --bin). tests/cluster.rs drives it.
set -euo pipefail
DEPLOY=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$DEPLOY")

usage() {
  cat <<EOF
usage: deploy/local-cluster.sh [options]

  --gateways N            gateway replicas (default 3)
  --lb-port PORT          nginx, where clients connect (default 8080)
  --gateway-ports LIST    comma-separated gateway ports (default 8081,8082,… one per gateway)
  --gateway-admin-ports LIST
                          the gateways' admin ports: /metrics and health (default: each
                          gateway port + 1000, 9081,9082,…)
  --collector-port PORT   collector health/metrics (default 9090)
  --redis-port PORT       the private redis-server (default 6390)
  --prometheus-port PORT  also run Prometheus there (needs \`prometheus\`, or the copy
                          scripts/check-chart.sh unpacks into its cache)
  --bin PATH              the switchboard binary (default: build/locate target/release)
  --dir DIR               run directory for configs, logs, pid files (default: a new
                          temporary directory, removed on exit)
  --gateway-arg ARG       extra argument for every gateway (repeatable)
  --collector-arg ARG     extra argument for the collector (repeatable)
  -h, --help              this help

Environment: SWITCHBOARD_BIN (as --bin), NGINX (path of nginx), REDIS_SERVER.
EOF
}

GATEWAYS=3
LB_PORT=8080
GATEWAY_PORTS=""
GATEWAY_ADMIN_PORTS=""
COLLECTOR_PORT=9090
REDIS_PORT=6390
PROM_PORT=""
BIN=${SWITCHBOARD_BIN:-}
DIR=""
GATEWAY_ARGS=()
COLLECTOR_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --*=*) opt=${1%%=*}; val=${1#*=}; shift; set -- "$opt" "$val" "$@"; continue ;;
    --gateways) GATEWAYS=$2; shift 2 ;;
    --lb-port) LB_PORT=$2; shift 2 ;;
    --gateway-ports) GATEWAY_PORTS=$2; shift 2 ;;
    --gateway-admin-ports) GATEWAY_ADMIN_PORTS=$2; shift 2 ;;
    --collector-port) COLLECTOR_PORT=$2; shift 2 ;;
    --redis-port) REDIS_PORT=$2; shift 2 ;;
    --prometheus-port) PROM_PORT=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --gateway-arg) GATEWAY_ARGS+=("$2"); shift 2 ;;
    --collector-arg) COLLECTOR_ARGS+=("$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "local-cluster: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "local-cluster: $*" >&2; exit 1; }

# --- tools ----------------------------------------------------------------------
find_tool() { # name [fallback paths…]
  local name=$1; shift
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  for p in "$@"; do [ -x "$p" ] && { echo "$p"; return; }; done
  return 1
}
NGINX=${NGINX:-$(find_tool nginx /usr/sbin/nginx /usr/local/sbin/nginx || true)}
REDIS_SERVER=${REDIS_SERVER:-$(find_tool redis-server /usr/bin/redis-server || true)}
[ -n "$NGINX" ] || die "nginx not found: apt-get install nginx (or set NGINX=/path/to/nginx)"
[ -n "$REDIS_SERVER" ] || die "redis-server not found: apt-get install redis-server"

if [ -z "$BIN" ]; then
  BIN=$ROOT/target/release/switchboard
  # Everything the binary is compiled from (deploy/Dockerfile copies the same).
  newest_source=$(find "$ROOT/src" "$ROOT/assets" "$ROOT/build.rs" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$BIN" -print -quit 2>/dev/null || true)
  if [ ! -x "$BIN" ] || [ -n "$newest_source" ]; then
    echo "local-cluster: building the release binary (cargo build --release)…" >&2
    (cd "$ROOT" && cargo build --release --bin switchboard) || die "the build failed"
  fi
fi
[ -x "$BIN" ] || die "no switchboard binary at $BIN"

if [ -n "$PROM_PORT" ]; then
  CACHE=${SWITCHBOARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard}
  PROMETHEUS=$(find_tool prometheus "$CACHE/prometheus-deb/root/usr/bin/prometheus" || true)
  [ -n "$PROMETHEUS" ] || die "prometheus not found: apt-get install prometheus, or run scripts/check-chart.sh once (it unpacks one into $CACHE)"
fi

# --- ports and run directory ------------------------------------------------------
if [ -z "$GATEWAY_PORTS" ]; then
  GATEWAY_PORTS=$(seq -s, $((LB_PORT + 1)) $((LB_PORT + GATEWAYS)))
fi
IFS=, read -r -a GW_PORTS <<<"$GATEWAY_PORTS"
[ "${#GW_PORTS[@]}" -eq "$GATEWAYS" ] || die "--gateway-ports lists ${#GW_PORTS[@]} ports for $GATEWAYS gateways"
if [ -z "$GATEWAY_ADMIN_PORTS" ]; then
  GATEWAY_ADMIN_PORTS=$(for p in "${GW_PORTS[@]}"; do printf '%s,' $((p + 1000)); done | sed 's/,$//')
fi
IFS=, read -r -a GW_ADMIN_PORTS <<<"$GATEWAY_ADMIN_PORTS"
[ "${#GW_ADMIN_PORTS[@]}" -eq "$GATEWAYS" ] || die "--gateway-admin-ports lists ${#GW_ADMIN_PORTS[@]} ports for $GATEWAYS gateways"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$LB_PORT" "${GW_PORTS[@]}" "${GW_ADMIN_PORTS[@]}" "$COLLECTOR_PORT" "$REDIS_PORT" ${PROM_PORT:+"$PROM_PORT"}; do
  port_busy "$p" && die "port $p on 127.0.0.1 is in use: choose others (see --help)"
done

OWN_DIR=0
if [ -z "$DIR" ]; then DIR=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-cluster.XXXXXX"); OWN_DIR=1; fi
mkdir -p "$DIR/nginx-temp"
DIR=$(cd "$DIR" && pwd)

# --- process management -----------------------------------------------------------
declare -A PIDS=()   # name → pid
ORDER=()             # start order; stopped in reverse
STOPPING=0

# Each process runs in its own session: a Ctrl-C in the terminal reaches only this
# script, which then stops them in order (a gateway that got a second signal would
# skip its drain).
start() { # name command…
  local name=$1; shift
  setsid "$@" >"$DIR/$name.log" 2>&1 </dev/null &
  PIDS[$name]=$!
  ORDER+=("$name")
}

stop_all() {
  [ "$STOPPING" = 1 ] && return
  STOPPING=1
  trap - INT TERM
  echo "local-cluster: stopping (gateways drain first)…" >&2
  local i name pid
  for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do
    name=${ORDER[$i]}; pid=${PIDS[$name]}
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Gateways exit by their drain deadline; anything still running after that is killed.
  for _ in $(seq 1 150); do
    local alive=0
    for name in "${ORDER[@]}"; do kill -0 "${PIDS[$name]}" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for name in "${ORDER[@]}"; do kill -KILL "${PIDS[$name]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$OWN_DIR" = 1 ]; then rm -rf "$DIR"; else echo "local-cluster: logs kept in $DIR" >&2; fi
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

http_status() { # port path → HTTP status code, or 000
  local line
  line=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3 && head -1 <&3) 2>/dev/null || true)
  set -- $line
  echo "${2:-000}"
}

wait_for() { # name port path seconds
  local name=$1 port=$2 path=$3 tries=$(( $4 * 10 ))
  for _ in $(seq 1 "$tries"); do
    [ "$(http_status "$port" "$path")" = 200 ] && return 0
    kill -0 "${PIDS[$name]}" 2>/dev/null || { tail -20 "$DIR/$name.log" >&2; die "$name exited (log: $DIR/$name.log)"; }
    sleep 0.1
  done
  tail -20 "$DIR/$name.log" >&2
  die "$name not ready on 127.0.0.1:$port$path within $4 s"
}

# --- redis ------------------------------------------------------------------------
start redis "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$DIR" --maxmemory 256mb --maxmemory-policy volatile-lru
for _ in $(seq 1 100); do port_busy "$REDIS_PORT" && break; sleep 0.1; done
port_busy "$REDIS_PORT" || die "redis-server did not start (log: $DIR/redis.log)"
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0

# --- gateways and collector ---------------------------------------------------------
# Authentication is off: this cluster listens on loopback only.
export SWITCHBOARD_LOG_FORMAT=${SWITCHBOARD_LOG_FORMAT:-text}
for i in "${!GW_PORTS[@]}"; do
  n=$((i + 1)); port=${GW_PORTS[$i]}
  start "gateway-$n" "$BIN" gateway --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:${GW_ADMIN_PORTS[$i]}" \
    --redis-url "$REDIS_URL" --no-auth --replica-id "gateway-$n" --drain-window 2s --drain-deadline 5s ${GATEWAY_ARGS[@]+"${GATEWAY_ARGS[@]}"}
done
start collector "$BIN" collector --listen "127.0.0.1:$COLLECTOR_PORT" --redis-url "$REDIS_URL" \
  ${COLLECTOR_ARGS[@]+"${COLLECTOR_ARGS[@]}"}
for i in "${!GW_PORTS[@]}"; do wait_for "gateway-$((i + 1))" "${GW_ADMIN_PORTS[$i]}" /health/ready 30; done
wait_for collector "$COLLECTOR_PORT" /health/ready 30

# --- nginx ----------------------------------------------------------------------------
{
  echo "# Written by deploy/local-cluster.sh; the proxy settings are deploy/nginx/*.conf."
  echo "daemon off;"
  echo "worker_processes 1;"
  [ "$(id -u)" = 0 ] && echo "user root root;"
  echo "pid $DIR/nginx.pid;"
  echo "error_log $DIR/nginx-error.log warn;"
  echo "events { worker_connections 4096; }"
  echo "http {"
  echo "  access_log $DIR/nginx-access.log;"
  for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $DIR/nginx-temp/$t;"; done
  echo "  include $DEPLOY/nginx/websocket-map.conf;"
  echo "  upstream switchboard_gateways {"
  echo "    least_conn;"
  # max_fails=0: see deploy/nginx/gateway-proxy.conf.
  for port in "${GW_PORTS[@]}"; do echo "    server 127.0.0.1:$port max_fails=0;"; done
  echo "  }"
  echo "  server {"
  echo "    listen 127.0.0.1:$LB_PORT;"
  echo "    include $DEPLOY/nginx/gateway-proxy.conf;"
  echo "  }"
  echo "}"
} >"$DIR/nginx.conf"
"$NGINX" -t -q -p "$DIR" -e "$DIR/nginx-error.log" -c "$DIR/nginx.conf" 2>"$DIR/nginx-check.log" \
  || { cat "$DIR/nginx-check.log" >&2; die "nginx rejected $DIR/nginx.conf"; }
start nginx "$NGINX" -p "$DIR" -e "$DIR/nginx-error.log" -c "$DIR/nginx.conf"
wait_for nginx "$LB_PORT" /nginx-health 10

# --- prometheus (optional) -----------------------------------------------------------------
if [ -n "$PROM_PORT" ]; then
  {
    echo "global: {scrape_interval: 5s, evaluation_interval: 5s}"
    echo "rule_files: [$DEPLOY/prometheus/alerts.yml]"
    echo "scrape_configs:"
    echo "  - job_name: switchboard-gateway"
    printf '    static_configs: [{targets: [%s]}]\n' "$(printf '"127.0.0.1:%s",' "${GW_ADMIN_PORTS[@]}" | sed 's/,$//')"
    echo "  - job_name: switchboard-collector"
    echo "    static_configs: [{targets: [\"127.0.0.1:$COLLECTOR_PORT\"]}]"
  } >"$DIR/prometheus.yml"
  start prometheus "$PROMETHEUS" --config.file="$DIR/prometheus.yml" --storage.tsdb.path="$DIR/prometheus-data" \
    --web.listen-address="127.0.0.1:$PROM_PORT"
  wait_for prometheus "$PROM_PORT" /-/ready 30
fi

# --- ready ------------------------------------------------------------------------------
{
  echo "LB_PORT=$LB_PORT"
  echo "GATEWAY_PORTS=$GATEWAY_PORTS"
  echo "GATEWAY_ADMIN_PORTS=$GATEWAY_ADMIN_PORTS"
  echo "COLLECTOR_PORT=$COLLECTOR_PORT"
  echo "REDIS_PORT=$REDIS_PORT"
  echo "PROMETHEUS_PORT=$PROM_PORT"
  for name in "${ORDER[@]}"; do echo "PID_${name//-/_}=${PIDS[$name]}" | tr a-z A-Z; done
} >"$DIR/cluster.env"

cat <<EOF
switchboard local cluster is up (authentication off, loopback only)
  dashboard:        http://127.0.0.1:$LB_PORT/   (open it in a browser; any gateway serves it, no token needed here)
  clients (nginx):  ws://127.0.0.1:$LB_PORT/ws/federation   ws://127.0.0.1:$LB_PORT/ws/memory   ws://127.0.0.1:$LB_PORT/ws
  publish:          curl -X POST http://127.0.0.1:$LB_PORT/api/v1/publish -d '{"channel":"demo","data":{"hello":1}}'
  gateways:         $(for p in "${GW_PORTS[@]}"; do printf 'http://127.0.0.1:%s/  ' "$p"; done)
  gateway metrics:  $(for p in "${GW_ADMIN_PORTS[@]}"; do printf 'http://127.0.0.1:%s/metrics  ' "$p"; done)
  collector:        http://127.0.0.1:$COLLECTOR_PORT/metrics
  redis:            redis-cli -p $REDIS_PORT
EOF
[ -n "$PROM_PORT" ] && echo "  prometheus:       http://127.0.0.1:$PROM_PORT/alerts   (targets: /targets)"
echo "  logs:             $DIR/*.log"
echo "local cluster ready; Ctrl-C stops it"

# Run until interrupted. A gateway or the collector that exits is reported and the
# rest keep serving (stop one to watch its clients move to the others); without
# Redis or nginx nothing works, so then everything stops.
declare -A GONE=()
while true; do
  for name in "${ORDER[@]}"; do
    [ -n "${GONE[$name]:-}" ] && continue
    if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
      GONE[$name]=1
      echo "local-cluster: $name exited; last lines of $DIR/$name.log:" >&2
      tail -5 "$DIR/$name.log" >&2 || true
      case "$name" in
        redis|nginx|prometheus) OWN_DIR=0; exit 1 ;;
      esac
    fi
  done
  sleep 1 &
  wait $! || true
done
