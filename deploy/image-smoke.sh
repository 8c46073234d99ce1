#!/usr/bin/env bash
# Proves that deploy/Dockerfile builds and that the image runs, on a machine with no
# Docker engine and no container registry (only Debian's apt):
#
#   1. base images made locally with debootstrap (Debian bookworm): a runtime base
#      standing in for debian:bookworm-slim, and a builder standing in for
#      rust:1-bookworm (bookworm + gcc + this machine's Rust toolchain);
#   2. `buildah bud` builds the real deploy/Dockerfile with those two as
#      RUST_IMAGE/RUNTIME_IMAGE (cargo fetches crates from crates.io inside the build);
#   3. the image's HEALTHCHECK and OCI labels are there, and its size (base, binary)
#      is printed;
#   4. `podman run` starts the image read-only, as Kubernetes would, and checks:
#      `gateway --check-config` accepts a chart-like environment, the user is 10001,
#      standalone serves /health/live, /health/ready, /metrics on its admin port (not
#      on the client port) and
#      the dashboard page at / with its assets (compiled in from assets/),
#      a gateway becomes ready against a redis-server on loopback (and the image's
#      HEALTHCHECK, `switchboard health`, passes), and SIGTERM drains and exits 0; a gateway becomes ready on a TLS-only redis-server (rediss://,
#      a CA made with openssl mounted as --redis-ca-file), and the image carries the
#      system CA bundle.
#
#   deploy/image-smoke.sh            (as root, or with sudo; installs buildah, podman,
#                                     runc, debootstrap with apt when missing)
#
# Takes 10–30 minutes the first time (debootstrap twice, a release build on 2 cores).
# Not part of CI for that reason; docs/TESTING.md says what it proved and when.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${SWITCHBOARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard}/image
IMAGE=localhost/switchboard:smoke
RUNTIME_BASE=localhost/smoke/debian:bookworm-local
BUILD_BASE=localhost/smoke/rust:bookworm-local
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$CACHE"

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need=()
for tool in buildah podman runc debootstrap redis-server curl openssl; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# podman's defaults ask for rlimits above this machine's hard limits, and its default
# runtime (crun) refuses hybrid cgroups; runc and explicit limits work.
RUN=(podman --runtime runc run --ulimit "nofile=4096:$(ulimit -Hn)" --ulimit nproc=4096:4096)

step() { echo; echo "== $*"; }

base_image() { # name rootfs-dir [debootstrap --include list] [extra import --change …]
  local name=$1 dir=$2 include=$3; shift 3
  if podman image exists "$name"; then echo "have $name"; return; fi
  if [ ! -x "$dir/bin/sh" ]; then
    echo "debootstrap $SUITE → $dir ${include:+(+ $include)}"
    $SUDO debootstrap --variant=minbase ${include:+--include="$include"} "$SUITE" "$dir" "$MIRROR" >"$dir.log" 2>&1 \
      || { tail -20 "$dir.log"; exit 1; }
    $SUDO rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  fi
  tar -C "$dir" -c . | podman import "$@" - "$name" >/dev/null
  echo "imported $name"
}

step "base images (debootstrap $SUITE minbase)"
base_image "$RUNTIME_BASE" "$CACHE/runtime-rootfs" "" --change 'CMD ["/bin/bash"]'
if ! podman image exists "$BUILD_BASE"; then
  SYSROOT=$(rustc --print sysroot)
  echo "builder: $SUITE + gcc + Rust from $SYSROOT ($(rustc --version))"
  dir="$CACHE/build-rootfs"
  [ -x "$dir/bin/sh" ] || base_image "$BUILD_BASE-tmp" "$dir" "gcc,libc6-dev,ca-certificates"
  podman rmi -f "$BUILD_BASE-tmp" >/dev/null 2>&1 || true
  $SUDO rm -rf "$dir/usr/local/rust" && $SUDO mkdir -p "$dir/usr/local/rust" "$dir/usr/local/cargo"
  $SUDO cp -a "$SYSROOT/bin" "$SYSROOT/lib" "$dir/usr/local/rust/"
  # cargo fetches crates inside the build: the builder trusts what this machine
  # trusts (a network that inspects TLS adds its own CA to the host's bundle).
  $SUDO cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  tar -C "$dir" -c . | podman import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' - "$BUILD_BASE" >/dev/null
  echo "imported $BUILD_BASE"
fi

step "buildah bud -f deploy/Dockerfile (the production Dockerfile, bases overridden)"
started=$(date +%s)
# --format docker: the OCI format has no HEALTHCHECK (buildah would drop it).
buildah bud --isolation chroot --layers --format docker \
  --build-arg RUST_IMAGE="$BUILD_BASE" --build-arg RUNTIME_IMAGE="$RUNTIME_BASE" \
  --build-arg REVISION="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -f deploy/Dockerfile -t "$IMAGE" "$ROOT"
echo "built $IMAGE in $(( $(date +%s) - started )) s"
podman image inspect "$IMAGE" --format 'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}} healthcheck={{.Config.Healthcheck.Test}}'
podman image inspect "$IMAGE" --format '{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}{{"\n"}}{{end}}' | grep '^org.opencontainers'
podman image inspect "$IMAGE" --format '{{json .Config.Healthcheck.Test}}' | grep -q '"/usr/local/bin/switchboard","health"' \
  || { echo "the image has no HEALTHCHECK running the binary"; exit 1; }
image_mb=$(( $(podman image inspect "$IMAGE" --format '{{.Size}}') / 1000000 ))
base_mb=$(( $(podman image inspect "$RUNTIME_BASE" --format '{{.Size}}') / 1000000 ))
binary_mb=$(( $("${RUN[@]}" --rm --entrypoint /bin/sh "$IMAGE" -c 'wc -c < /usr/local/bin/switchboard') / 1000000 ))
echo "ok  image $image_mb MB: the runtime base $base_mb MB (debootstrap minbase stand-in), the binary $binary_mb MB, + CA bundle and user"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url expected-status seconds
  for _ in $(seq 1 $(( $3 * 10 ))); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = "$2" ] && return 0
    sleep 0.1
  done
  echo "no $2 from $1 within $3 s" >&2; return 1
}
containers=()
REDIS_PID=""
cleanup() {
  for c in "${containers[@]}"; do podman rm -f "$c" >/dev/null 2>&1 || true; done
  # shellcheck disable=SC2086
  [ -n "$REDIS_PID" ] && kill $REDIS_PID 2>/dev/null || true
}
trap cleanup EXIT

step "podman run: --check-config on the chart's kind of environment"
out=$("${RUN[@]}" --rm --read-only -e SWITCHBOARD_REDIS_URL=redis://redis.example:6379/0 \
  -e SWITCHBOARD_JWT_SECRET_FILE=/etc/switchboard/jwt/jwt-secret "$IMAGE" gateway --check-config)
echo "$out" | grep -q "configuration valid" || { echo "gateway --check-config: $out"; exit 1; }
echo "ok  $out"

step "podman run: standalone, read-only root filesystem"
port=$(free_port); aport=$(free_port)
c=sb-smoke-standalone-$$; containers+=("$c")
"${RUN[@]}" -d --name "$c" --network host --read-only --tmpfs /tmp "$IMAGE" \
  standalone --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$aport" \
  --collect-interval-min 200ms --collect-interval-max 300ms >/dev/null
wait_http "http://127.0.0.1:$port/health/live" 200 20
wait_http "http://127.0.0.1:$port/health/ready" 200 20
uid=$(podman exec "$c" id -u)
[ "$uid" = 10001 ] || { echo "runs as uid $uid, want 10001"; exit 1; }
# Bodies are read whole before grep: `curl | grep -q` fails under pipefail when grep
# stops reading early (curl gets SIGPIPE).
metrics=$(curl -s "http://127.0.0.1:$aport/metrics")
grep -q '^switchboard_build_info' <<<"$metrics" || { echo "no metrics on the admin port"; exit 1; }
wait_http "http://127.0.0.1:$port/metrics" 404 5
# The dashboard page is compiled in from assets/: the image serves it with no file around.
page=$(curl -s "http://127.0.0.1:$port/")
grep -qi '<!doctype html' <<<"$page" || { echo "no dashboard page at /"; exit 1; }
# Precompressed: brotli when the client takes it.
encoding=$(curl -s -o /dev/null -H 'Accept-Encoding: br' -w '%header{content-encoding}' \
  "http://127.0.0.1:$port/assets/vendor/echarts/echarts.min.js")
[ "$encoding" = br ] || { echo "ECharts not served with brotli (content-encoding: '$encoding')"; exit 1; }
wait_http "http://127.0.0.1:$port/assets/vendor/echarts/echarts.min.js" 200 5
# The image's HEALTHCHECK (`switchboard health`), run once by podman: standalone's
# admin port is given on the command line, not in the environment, so it asks the
# URL; the gateway below is asked from its SWITCHBOARD_ADMIN_LISTEN.
podman exec "$c" /usr/local/bin/switchboard health "http://127.0.0.1:$aport/health/ready" \
  || { echo "switchboard health failed in the container"; exit 1; }
echo "ok  /health/live 200, /health/ready 200, /metrics on the admin port only, dashboard at / and its assets (brotli), uid $uid"

step "podman run: gateway against redis-server on loopback, then SIGTERM"
rport=$(free_port); gport=$(free_port); aport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
REDIS_PID=$!
c=sb-smoke-gateway-$$; containers+=("$c")
"${RUN[@]}" -d --name "$c" --network host --read-only --tmpfs /tmp \
  -e SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$rport" -e SWITCHBOARD_NO_AUTH=true \
  -e SWITCHBOARD_LISTEN="127.0.0.1:$gport" -e SWITCHBOARD_ADMIN_LISTEN="127.0.0.1:$aport" \
  -e SWITCHBOARD_DRAIN_WINDOW=1s -e SWITCHBOARD_DRAIN_DEADLINE=5s \
  "$IMAGE" >/dev/null
wait_http "http://127.0.0.1:$gport/health/ready" 200 30
podman healthcheck run "$c" || { echo "the image's HEALTHCHECK fails on a ready gateway"; exit 1; }
echo "ok  gateway (the image's default command) ready on Redis; the image's HEALTHCHECK passes"
started=$(date +%s)
podman stop -t 30 "$c" >/dev/null
code=$(podman inspect "$c" --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || { echo "exit code $code after SIGTERM"; podman logs "$c" | tail -5; exit 1; }
echo "ok  SIGTERM: drained and exited 0 in $(( $(date +%s) - started )) s"
podman logs "$c" 2>&1 | tail -3

step "podman run: gateway on a TLS-only redis-server (rediss://, --redis-ca-file mounted)"
tls=$(mktemp -d)
(cd "$tls"
 ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
 openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 1 -subj "/CN=smoke CA" 2>/dev/null
 openssl req "${ec[@]}" -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
 printf 'subjectAltName=IP:127.0.0.1\n' > server.ext
 openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 1 -extfile server.ext 2>/dev/null
 chmod 0644 ./*)
tport=$(free_port); gport=$(free_port); aport=$(free_port)
redis-server --port 0 --tls-port "$tport" --tls-cert-file "$tls/server.crt" --tls-key-file "$tls/server.key" \
  --tls-ca-cert-file "$tls/ca.crt" --tls-auth-clients no --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
REDIS_PID="$REDIS_PID $!"
c=sb-smoke-tls-$$; containers+=("$c")
"${RUN[@]}" -d --name "$c" --network host --read-only --tmpfs /tmp -v "$tls/ca.crt:/etc/redis-ca.crt:ro" \
  -e SWITCHBOARD_REDIS_URL="rediss://127.0.0.1:$tport" -e SWITCHBOARD_REDIS_CA_FILE=/etc/redis-ca.crt \
  -e SWITCHBOARD_NO_AUTH=true -e SWITCHBOARD_LISTEN="127.0.0.1:$gport" \
  -e SWITCHBOARD_ADMIN_LISTEN="127.0.0.1:$aport" "$IMAGE" >/dev/null
wait_http "http://127.0.0.1:$gport/health/ready" 200 30
podman exec "$c" test -s /etc/ssl/certs/ca-certificates.crt \
  || { echo "no system CA bundle in the image: rediss:// to managed Redis would fail"; exit 1; }
echo "ok  gateway ready over TLS; the image carries the system CA bundle for managed Redis"
rm -rf "$tls"

step "image smoke test passed: $IMAGE"
