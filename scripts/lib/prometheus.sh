# Sourced by scripts/test.sh and scripts/check-chart.sh: unpacks Debian's
# `prometheus` package (prometheus and promtool) into the cache without installing
# it (no service is started, no root needed once the apt lists exist).
# Sets PROMETHEUS_BIN_DIR.
fetch_prometheus() {
  local cache=${SWITCHBOARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard}
  local dir=$cache/prometheus-deb
  PROMETHEUS_BIN_DIR=$dir/root/usr/bin
  [ -x "$PROMETHEUS_BIN_DIR/promtool" ] && [ -x "$PROMETHEUS_BIN_DIR/prometheus" ] && return 0
  echo "unpacking Debian's prometheus package into $dir" >&2
  rm -rf "$dir" && mkdir -p "$dir"
  if ! (cd "$dir" && apt-get download prometheus >/dev/null 2>&1); then
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    (cd "$dir" && apt-get download prometheus >/dev/null)
  fi
  dpkg-deb -x "$dir"/prometheus_*.deb "$dir/root"
}
