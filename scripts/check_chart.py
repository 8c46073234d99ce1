#!/usr/bin/env python3
"""Offline checks of helm/switchboard and deploy/ (run by scripts/check-chart.sh).

* `helm lint` (Helm's Go SDK through helm-python-sdk) with each value set;
* values.schema.json accepts every documented value set and rejects typos;
* renders the chart with the default values (plus redis.url) and every
  helm/switchboard/ci/*.yaml, and validates every object against the Kubernetes
  OpenAPI schemas with kubernetes-validate (strict: unknown fields are errors);
  ServiceMonitor and PrometheusRule (CRDs, no schema there) get structural checks;
* the production rules of the chart: non-root, read-only root filesystem,
  resources, probes on the health endpoints, grace period covering preStop and the
  drain deadline, a config checksum on pods, no session affinity;
* metrics stay private: a gateway's /metrics is on its admin port, which the
  client Service (and so the Ingress) does not carry, the ServiceMonitor scrapes
  through a Service that does, the probes use, and the NetworkPolicy opens to
  networkPolicy.metricsFrom only;
* renderings that must fail do, with a message that says what to do;
* GitOps: two renders of every value set are identical (no random material: the
  chart's generated JWT secret is refused on a render without the cluster, with
  how to supply one, unless auth.jwt.generateWithoutCluster asks for it, and it is
  kept on uninstall); the chart works as a dependency of an umbrella chart (with
  `global` values and a dependency condition); the HTTPRoute routes to the
  client Service only;
* with --binary: every SWITCHBOARD_* variable the chart sets is one the binary
  reads, and every rendered gateway and collector container's configuration is
  accepted by the binary itself: its arguments and environment (ConfigMap, env,
  Secrets as placeholders, $(VAR) expanded as Kubernetes does) are run through
  `switchboard <command> --check-config`, which parses and validates every value
  and exits (no file opened, nothing contacted); the `switchboard token` commands
  NOTES.txt prints are run too, with a throwaway secret;
* the chart README lists every value; the PrometheusRule equals
  deploy/prometheus/alerts.yml; the dashboard ConfigMap equals deploy/grafana/;
* deploy/Dockerfile copies everything the binary is compiled from (src/ and every
  top-level directory src/ includes files from, such as assets/), builds the
  stripped `image` profile, labels the image (OCI, with the crate's version) and
  checks its health with the binary (no shell); whether its bases are pinned by
  digest is reported.

Usage: check_chart.py [--binary target/debug/switchboard] [--kube-version 1.30.0]
"""
import argparse
import json
import pathlib
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "switchboard"
REDIS = {"redis": {"url": "redis://redis.example:6379/0"}}

# Value sets rendered besides the default values and helm/switchboard/ci/*.yaml:
# every choice of an enumerated value that changes what the binary is given.
EXTRA_SETS = [
    (f"collector.sources.simulate={mode}", {**REDIS, "collector": {"sources": {"simulate": mode}}})
    for mode in ("always", "never")
] + [
    ("collector.sources.onSourceFailure=simulate",
     {**REDIS, "collector": {"sources": {"onSourceFailure": "simulate"}}}),
] + [
    ("collector.enabled=false with the PrometheusRule",
     {**REDIS, "collector": {"enabled": False}, "prometheusRule": {"enabled": True}}),
    ("HPA on CPU only, a shorter scale-down window",
     {**REDIS, "autoscaling": {"connections": {"enabled": False},
                               "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}}}),
    ("HPA at 60 % of 8,000 connections, CPU off",
     {**REDIS, "gateway": {"config": {"maxConnections": 8000}},
      "autoscaling": {"connections": {"targetUtilizationPercentage": 60},
                      "targetCPUUtilizationPercentage": None}}),
    ("replicas left to an outside autoscaler (KEDA)",
     {**REDIS, "autoscaling": {"enabled": False}, "gateway": {"replicaCount": None}}),
    ("an HTTPRoute beside the Ingress",
     {**REDIS, "ingress": {"enabled": True, "className": "nginx"},
      "httpRoute": {"enabled": True, "hostnames": ["switchboard.example.com"],
                    "parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}]}}),
]

NOT_YET_IN_BINARY: dict = {}  # refusals that are a missing feature, not a wrong value (none now)

failures = []
notes = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}", file=sys.stderr)


def deep_merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# What makes the chart generate the JWT secret on an offline render (it refuses
# otherwise: `lookup` answers nothing here, as under helm template or Argo CD).
GENERATE_OFFLINE = {"auth": {"jwt": {"generateWithoutCluster": True}}}
REFUSED_OFFLINE = "cannot generate the JWT secret here"


def generates_secret(merged):
    """Whether these (merged) values make the chart create the JWT Secret."""
    auth = merged.get("auth", {})
    return bool(auth.get("enabled")) and not auth.get("jwt", {}).get("existingSecret")


def render(chart, values, name="sb", namespace="switchboard", generate=True):
    """Renders offline. A value set whose JWT secret the chart would generate is
    rendered with auth.jwt.generateWithoutCluster (generate=False: as given, which
    the chart refuses), so that its objects are checked like the others'."""
    if generate and generates_secret(chart.merge_values(values)):
        values = deep_merge(values, GENERATE_OFFLINE)
    chart.validate_schema(chart.merge_values(values))
    out = chart.render(values, name=name, namespace=namespace)
    docs, notes_txt = [], ""
    for path in sorted(out):
        if path.endswith("NOTES.txt"):
            notes_txt = out[path]
            continue
        for doc in yaml.safe_load_all(out[path]):
            if doc:
                docs.append((path, doc))
    return docs, notes_txt


def lint(values, label):
    report = helm.lint(str(CHART), values, strict=True, namespace="switchboard")
    for m in report.get("messages") or []:
        if m.get("severity", 0) >= 2:
            fail(f"{label}: helm lint: {m.get('path')}: {m.get('error')}")
    for e in report.get("errors") or []:
        fail(f"{label}: helm lint: {e}")


def validate_k8s(label, path, doc, kube_version):
    kind = doc.get("kind")
    where = f"{label}: {path}: {kind}/{doc.get('metadata', {}).get('name')}"
    if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
        check_monitoring_crd(where, doc)
        return
    if doc.get("apiVersion", "").startswith("gateway.networking.k8s.io/"):
        check_gateway_api(where, doc)
        return
    try:
        kubernetes_validate.validate(doc, kube_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        fail(f"{where}: {e.message} at {'.'.join(str(p) for p in e.path)}")
    except Exception as e:  # noqa: BLE001 - report any validator problem as a failure
        fail(f"{where}: {type(e).__name__}: {e}")


def check_monitoring_crd(where, doc):
    spec = doc.get("spec") or {}
    if doc["kind"] == "ServiceMonitor":
        if not spec.get("selector", {}).get("matchLabels"):
            fail(f"{where}: no selector")
        for ep in spec.get("endpoints") or [None]:
            if not ep or not ep.get("port") or ep.get("path") != "/metrics":
                fail(f"{where}: endpoint must name a port and path /metrics: {ep}")
        if spec.get("jobLabel") != "switchboard.io/job":
            fail(f"{where}: jobLabel must be switchboard.io/job (alerts use its job names)")
    elif doc["kind"] == "PrometheusRule":
        for g in spec.get("groups") or []:
            for r in g.get("rules") or []:
                if not r.get("expr") or not (r.get("alert") or r.get("record")):
                    fail(f"{where}: rule without expr or name: {r}")
    else:
        fail(f"{where}: unexpected monitoring kind")


def check_gateway_api(where, doc):
    """Structural checks of an HTTPRoute (a CRD: no schema in kubernetes-validate)."""
    if doc["apiVersion"] != "gateway.networking.k8s.io/v1" or doc["kind"] != "HTTPRoute":
        fail(f"{where}: unexpected Gateway API object")
        return
    spec = doc.get("spec") or {}
    if not spec.get("parentRefs") or not all(r.get("name") for r in spec["parentRefs"]):
        fail(f"{where}: parentRefs must name a Gateway")
    known = {"parentRefs", "hostnames", "rules"}
    if set(spec) - known:
        fail(f"{where}: unknown spec fields {set(spec) - known}")
    for rule in spec.get("rules") or [None]:
        if not rule or not rule.get("backendRefs"):
            fail(f"{where}: rule without backendRefs: {rule}")
            continue
        if set(rule) - {"matches", "backendRefs", "timeouts"}:
            fail(f"{where}: unknown rule fields {set(rule) - {'matches', 'backendRefs', 'timeouts'}}")
        for m in rule.get("matches", []):
            path = m.get("path", {})
            if path.get("type") not in ("PathPrefix", "Exact") or not str(path.get("value", "")).startswith("/"):
                fail(f"{where}: bad path match {m}")
        for ref in rule["backendRefs"]:
            if not ref.get("name") or not isinstance(ref.get("port"), int):
                fail(f"{where}: backendRef needs a name and a port: {ref}")


def check_stable(label, chart, overrides):
    """GitOps: two offline renders of the same values give the same objects, so
    Argo CD (which renders with helm template on every sync) sees no change. The
    only exception is the secret auth.jwt.generateWithoutCluster asks for, which
    must then differ (it is random), and which without it is refused."""
    first, _ = render(chart, overrides)
    second, _ = render(chart, overrides)
    generated = generates_secret(chart.merge_values(overrides))

    def jwt_data(docs):
        return [d.get("data") for _, d in docs
                if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-jwt")]
    if generated:
        a, b = jwt_data(first), jwt_data(second)
        if len(a) != 1 or a == b:
            fail(f"{label}: with generateWithoutCluster each offline render must make a new secret: {a} {b}")
        for docs in (first, second):
            for _, d in docs:
                if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-jwt"):
                    d["data"] = "(generated)"
    if first != second:
        diff = [f"{p}: {d['kind']}/{d['metadata']['name']}" for (p, d), (_, e) in zip(first, second) if d != e]
        fail(f"{label}: two renders differ: {diff or 'in the objects rendered'}")
    if generated:
        try:
            render(chart, overrides, generate=False)
            fail(f"{label}: rendered a generated JWT secret without the cluster; it must refuse")
        except helm.HelmError as e:
            if REFUSED_OFFLINE not in str(e) or "auth.jwt.existingSecret" not in str(e):
                fail(f"{label}: refused, but without saying how to supply the key: {e}")
    for _, d in first:
        if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-jwt"):
            if (d["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") != "keep":
                fail(f"{label}: the generated JWT Secret is not kept on uninstall (helm.sh/resource-policy: keep)")
    return generated


def check_umbrella(kube_version):
    """The chart as a dependency of a parent chart: `global` values and the
    parent's dependency condition pass the schema, every object renders, is valid
    and named after the parent's release; the condition switches it off."""
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    with tempfile.TemporaryDirectory() as tmp:
        parent = pathlib.Path(tmp) / "platform"
        # The dependency as `helm dependency build` leaves it: a copy in charts/,
        # symbolic links (files/) resolved as `helm package` does.
        shutil.copytree(CHART, parent / "charts" / "switchboard", symlinks=False)
        (parent / "Chart.yaml").write_text(yaml.safe_dump({
            "apiVersion": "v2", "name": "platform", "version": "1.0.0", "type": "application",
            "dependencies": [{"name": "switchboard", "version": version,
                              "repository": "file://charts/switchboard",
                              "condition": "switchboard.enabled"}],
        }))
        # The parent's own object, as an umbrella chart has.
        (parent / "templates").mkdir()
        (parent / "templates" / "configmap.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\n"
            "data:\n  region: {{ .Values.global.region | quote }}\n")
        (parent / "values.yaml").write_text(yaml.safe_dump({
            "global": {"region": "eu-west", "imageRegistry": "registry.example.com"},
            "switchboard": {
                "enabled": True,
                "redis": {"url": "redis://redis.platform:6379/0"},
                "auth": {"jwt": {"existingSecret": "platform-jwt"}},
                "serviceMonitor": {"enabled": True},
                "httpRoute": {"enabled": True, "parentRefs": [{"name": "public"}]},
            },
        }))
        label = "umbrella chart with switchboard as a dependency"
        report = helm.lint(str(parent), {}, strict=True, namespace="platform")
        for e in (report.get("errors") or []) + [m.get("error") for m in report.get("messages") or []
                                                 if m.get("severity", 0) >= 2]:
            fail(f"{label}: helm lint: {e}")
        umbrella = helm.Chart.load(str(parent))
        try:
            docs, _ = render(umbrella, {}, name="platform", namespace="platform")
            again, _ = render(umbrella, {}, name="platform", namespace="platform")
        except helm.HelmError as e:
            fail(f"{label}: does not render: {e}")
            return
        if docs != again:
            fail(f"{label}: two renders differ")
        ours = [(p, d) for p, d in docs if p.startswith("platform/charts/switchboard/")]
        for path, doc in docs:
            validate_k8s(label, path, doc, kube_version)
        for path, doc in ours:
            if not doc["metadata"]["name"].startswith("platform-switchboard"):
                fail(f"{label}: {doc['kind']}/{doc['metadata']['name']} not named after the parent's release")
        kinds = {d["kind"] for _, d in ours}
        for want in ("Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor", "HTTPRoute"):
            if want not in kinds:
                fail(f"{label}: no {want} rendered")
        off, _ = render(umbrella, {"switchboard": {"enabled": False}}, name="platform", namespace="platform")
        left = [p for p, _ in off if p.startswith("platform/charts/switchboard/")]
        if left or len(off) != 1:
            fail(f"{label}: switchboard.enabled=false still renders {left or off}")
        print(f"ok  {label}: {len(ours)} objects of switchboard valid and stable, `global` accepted, "
              f"the condition switches it off")


def pod_specs(docs):
    for path, doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield path, doc, doc["spec"]["template"]["spec"]


def check_policies(label, docs, values, env_names):
    services = [d for _, d in docs if d["kind"] == "Service"]
    for s in services:
        if s["spec"].get("sessionAffinity", "None") != "None":
            fail(f"{label}: Service {s['metadata']['name']} has session affinity: gateways are stateless")
    for path, doc, spec in pod_specs(docs):
        name = doc["metadata"]["name"]
        psc = spec.get("securityContext") or {}
        if not psc.get("runAsNonRoot"):
            fail(f"{label}: {name}: pod not runAsNonRoot")
        if spec.get("automountServiceAccountToken") is not False:
            fail(f"{label}: {name}: service account token mounted")
        for c in spec["containers"]:
            sc = c.get("securityContext") or {}
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{label}: {name}/{c['name']}: root filesystem writable or privilege escalation allowed")
            if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
                fail(f"{label}: {name}/{c['name']}: capabilities not dropped")
            res = c.get("resources") or {}
            if not res.get("requests") or not (res.get("limits") or {}).get("memory"):
                fail(f"{label}: {name}/{c['name']}: needs resource requests and a memory limit")
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    fail(f"{label}: {name}/{c['name']}: no {probe}")
            for e in c.get("env") or []:
                env_names.add(e["name"])
        component = doc["metadata"]["labels"].get("app.kubernetes.io/component")
        if component in ("gateway", "collector"):
            if "checksum/config" not in doc["spec"]["template"]["metadata"].get("annotations", {}):
                fail(f"{label}: {name}: no checksum/config annotation (config changes would not roll pods)")
            c = spec["containers"][0]
            paths = {c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]}
            if paths != {"/health/live", "/health/ready"}:
                fail(f"{label}: {name}: probes must use /health/live and /health/ready, got {paths}")
        if component == "gateway":
            c = spec["containers"][0]
            drain = values["gateway"]["drain"]
            pre = c["lifecycle"]["preStop"]["exec"]["command"]
            if pre != ["sleep", str(drain["preStopSleepSeconds"])]:
                fail(f"{label}: {name}: preStop {pre} does not match gateway.drain.preStopSleepSeconds")
            grace = spec["terminationGracePeriodSeconds"]
            if grace < drain["preStopSleepSeconds"] + drain["deadlineSeconds"]:
                fail(f"{label}: {name}: grace period {grace}s shorter than preStop + drain deadline")
            if not spec.get("topologySpreadConstraints") and values["gateway"]["topologySpread"]["enabled"]:
                fail(f"{label}: {name}: no topology spread")
            has_replicas = "replicas" in doc["spec"]
            fixed = not values["autoscaling"]["enabled"] and values["gateway"].get("replicaCount") is not None
            if has_replicas != fixed:
                fail(f"{label}: {name}: replicas must be set exactly when autoscaling is off "
                     "and gateway.replicaCount is not null")
    for _, doc in docs:
        if doc["kind"] == "ConfigMap":
            for k, v in (doc.get("data") or {}).items():
                if k.startswith("SWITCHBOARD_"):
                    env_names.add(k)
                    # Helm turns large YAML integers into floats (2.097152e+06): the
                    # binary would refuse them.
                    if re.fullmatch(r"[0-9.]+e[+-]?[0-9]+", v):
                        fail(f"{label}: {k}={v} is a float, not the integer the flag takes")


def check_admin_port(label, docs, values):
    """The gateway's admin port (/metrics, health) is not reachable through the
    client Service or the Ingress; the ServiceMonitor, the probes and the
    NetworkPolicy use it as documented."""
    by_kind = {}
    for _, d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    component = lambda d: d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    gateway = next(d for d in by_kind["Deployment"] if component(d) == "gateway")
    c = gateway["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    admin = values["gateway"]["adminPort"]
    if ports.get("admin") != admin or ports.get("http") != values["gateway"]["port"]:
        fail(f"{label}: gateway container ports {ports}: want http={values['gateway']['port']}, admin={admin}")
    if c.get("envFrom"):
        cm_name = c["envFrom"][0]["configMapRef"]["name"]
        cm = next((d for d in by_kind["ConfigMap"] if d["metadata"]["name"] == cm_name), {})
        if (cm.get("data") or {}).get("SWITCHBOARD_ADMIN_LISTEN") != f"0.0.0.0:{admin}":
            fail(f"{label}: {cm_name} does not set SWITCHBOARD_ADMIN_LISTEN=0.0.0.0:{admin}")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if c[probe]["httpGet"]["port"] != "admin":
            fail(f"{label}: gateway {probe} is not on the admin port")
    selector = gateway["spec"]["selector"]["matchLabels"]
    selects_gateway = [s for s in by_kind.get("Service", [])
                       if s["spec"].get("selector") == selector]
    metric_services = []
    for s in selects_gateway:
        targets = {p.get("targetPort") for p in s["spec"]["ports"]}
        if s["metadata"]["labels"].get("switchboard.io/metrics") == "true":
            metric_services.append(s)
            if targets != {"admin"} or s["spec"].get("clusterIP") != "None":
                fail(f"{label}: metrics Service {s['metadata']['name']} must be headless with the admin port only")
        elif targets & {"admin", admin}:
            fail(f"{label}: client Service {s['metadata']['name']} exposes the admin port (/metrics)")
    if len(metric_services) != 1:
        fail(f"{label}: want one gateway metrics Service, found {len(metric_services)}")
    client_services = {s["metadata"]["name"] for s in selects_gateway} - {
        s["metadata"]["name"] for s in metric_services}
    for ing in by_kind.get("Ingress", []):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                svc = path["backend"]["service"]
                if svc["name"] not in client_services or svc["port"] != {"name": "http"}:
                    fail(f"{label}: Ingress routes to {svc}, not the client Service's http port")
    for route in by_kind.get("HTTPRoute", []):
        for rule in route["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                if ref["name"] not in client_services or ref["port"] != values["service"]["port"]:
                    fail(f"{label}: HTTPRoute routes to {ref}, not the client Service's port")
    for sm in by_kind.get("ServiceMonitor", []):
        if component(sm) == "gateway":
            want = {**selector, "switchboard.io/metrics": "true"}
            if sm["spec"]["selector"]["matchLabels"] != want:
                fail(f"{label}: gateway ServiceMonitor selects {sm['spec']['selector']}, want {want}")
            if [e["port"] for e in sm["spec"]["endpoints"]] != ["admin"]:
                fail(f"{label}: gateway ServiceMonitor does not scrape the admin port")
    np_values = values["networkPolicy"]
    for np in by_kind.get("NetworkPolicy", []):
        if component(np) != "gateway":
            continue
        rules = {r["ports"][0]["port"]: r.get("from") for r in np["spec"]["ingress"]}
        want = {values["gateway"]["port"]: np_values["gatewayFrom"] or None,
                admin: np_values["metricsFrom"] or None}
        if rules != want:
            fail(f"{label}: gateway NetworkPolicy ingress {rules}, want {want} "
                 "(client port from gatewayFrom, admin port from metricsFrom)")
    return len(metric_services)


def check_hpa(label, docs, values):
    """The HPA scales on connections per gateway (70 % of maxConnections by
    default) and CPU, with the configured behavior; none without autoscaling."""
    hpas = [d for _, d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    a = values["autoscaling"]
    if not a["enabled"]:
        if hpas:
            fail(f"{label}: an HPA although autoscaling.enabled is false")
        return
    if len(hpas) != 1:
        fail(f"{label}: want one HPA, got {len(hpas)}")
        return
    spec = hpas[0]["spec"]
    pods = [m for m in spec["metrics"] if m["type"] == "Pods"]
    if a["connections"]["enabled"]:
        limit = values["gateway"]["config"].get("maxConnections", 10000)
        want = str(max(1, limit * a["connections"]["targetUtilizationPercentage"] // 100))
        if len(pods) != 1 or pods[0]["pods"]["metric"]["name"] != a["connections"]["metricName"] \
                or pods[0]["pods"]["target"] != {"type": "AverageValue", "averageValue": want}:
            fail(f"{label}: HPA must scale on {a['connections']['metricName']} at {want} per gateway: {pods}")
        if spec["metrics"][0]["type"] != "Pods":
            fail(f"{label}: HPA: connections must be the first metric")
    elif pods:
        fail(f"{label}: HPA scales on connections although autoscaling.connections.enabled is false")
    cpu = [m for m in spec["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    if a["targetCPUUtilizationPercentage"] and (
            len(cpu) != 1 or cpu[0]["resource"]["target"]["averageUtilization"] != a["targetCPUUtilizationPercentage"]):
        fail(f"{label}: HPA: CPU at {a['targetCPUUtilizationPercentage']} % missing: {cpu}")
    if spec.get("behavior") != a["behavior"]:
        fail(f"{label}: HPA behavior {spec.get('behavior')} is not autoscaling.behavior {a['behavior']}")


def binary_env_names(binary):
    names = set()
    for cmd in ("gateway", "collector"):
        out = subprocess.run([binary, cmd, "--help"], capture_output=True, text=True, check=True).stdout
        names |= set(re.findall(r"env:\s+(SWITCHBOARD_[A-Z0-9_]+)", out))
    return names


def secret_placeholder(ref):
    """What a Secret key stands for offline: URL-safe, so it can sit in a Redis URL."""
    return f"secret-{ref.get('name', 'x')}-{ref.get('key', 'x')}".replace("_", "-").replace(".", "-")


def expand(value, env):
    """Kubernetes' $(VAR) expansion in env values: defined variables only, $$ escapes."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


def container_env(c, config_maps):
    """The environment a container gets: envFrom ConfigMaps, then env in order."""
    env = {}
    for src in c.get("envFrom") or []:
        ref = src.get("configMapRef")
        if not ref or ref.get("name") not in config_maps:
            raise ValueError(f"envFrom {src} names no ConfigMap of the release")
        env.update({k: str(v) for k, v in (config_maps[ref["name"]].get("data") or {}).items()})
    for e in c.get("env") or []:
        if "value" in e:
            env[e["name"]] = expand(str(e["value"]), env)
        elif "secretKeyRef" in (e.get("valueFrom") or {}):
            env[e["name"]] = secret_placeholder(e["valueFrom"]["secretKeyRef"])
        else:
            env[e["name"]] = "placeholder"
    return env


def check_containers(binary, label, docs):
    """Runs each gateway/collector container's configuration through the binary's
    --check-config: a value the binary would refuse at startup fails here.
    Returns (containers run, problems, notes)."""
    config_maps = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "ConfigMap"}
    count, problems, pending_notes = 0, [], []
    for _, doc, spec in pod_specs(docs):
        if doc["metadata"]["labels"].get("app.kubernetes.io/component") not in ("gateway", "collector"):
            continue
        for c in spec["containers"]:
            where = f"{label}: {doc['metadata']['name']}/{c['name']}"
            if c.get("command"):
                problems.append(f"{where}: sets command; the image's entrypoint is the binary, give args only")
                continue
            try:
                env = container_env(c, config_maps)
            except ValueError as e:
                problems.append(f"{where}: {e}")
                continue
            argv = [binary, *c.get("args", []), "--check-config"]
            run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
            count += 1
            if run.returncode == 0:
                continue
            # clap's "error: …" or the binary's "switchboard: …" line (logs aside).
            lines = run.stderr.strip().splitlines() or ["(no message)"]
            message = next((line for line in lines if line.startswith(("error:", "switchboard:"))), lines[-1])
            pending = [why for needle, why in NOT_YET_IN_BINARY.items() if needle in run.stderr]
            if pending:
                pending_notes.append(f"{where}: refused by this binary: {pending[0]} ({message})")
            else:
                shown = " ".join(f"{k}={v}" for k, v in sorted(env.items()) if k.startswith("SWITCHBOARD_"))
                problems.append(f"{where}: the binary refuses this configuration: {message}\n     with {shown}")
    return count, problems, pending_notes


def expect_refusal(binary, chart, values, needle, label):
    """The value check itself works: a value the schema lets through but the
    binary refuses is reported, with the binary's reason."""
    docs, _ = render(chart, values)
    _, problems, _ = check_containers(binary, label, docs)
    if not any(needle in p for p in problems):
        fail(f"{label}: --check-config did not report it ({needle!r}): {problems}")


def check_notes_commands(binary, label, notes_txt):
    """Runs the `switchboard token` commands NOTES.txt prints, with a throwaway secret."""
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        secret = pathlib.Path(tmp) / "jwt-secret"
        secret.write_text(secrets.token_urlsafe(48) + "\n")
        for line in notes_txt.splitlines():
            line = line.strip()
            if not line.startswith("switchboard token "):
                continue
            argv = shlex.split(line)
            if "--secret-file" in argv:
                argv[argv.index("--secret-file") + 1] = str(secret)
            run = subprocess.run([binary, *argv[1:]], capture_output=True, text=True, timeout=30)
            count += 1
            if run.returncode != 0 or run.stdout.count(".") != 2:
                fail(f"{label}: NOTES.txt command fails: {line}\n     {run.stderr.strip()}")
    return count


def check_dockerfile_inputs():
    """deploy/Dockerfile must copy every top-level path the binary is compiled from."""
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    copied = set()
    for m in re.finditer(r"^COPY\s+(?!--from)(.+)$", dockerfile, re.M):
        copied |= {p.rstrip("/").removeprefix("./") for p in m.group(1).split()[:-1]}
    needed = {"Cargo.toml", "Cargo.lock", "src"}
    if (ROOT / "build.rs").exists():
        needed.add("build.rs")
    for rs in (ROOT / "src").rglob("*.rs"):
        text = rs.read_text()
        for m in re.finditer(r'CARGO_MANIFEST_DIR"\)\s*,\s*"/?([^/"]+)', text):
            needed.add(m.group(1))
        for m in re.finditer(r'include_(?:bytes|str)!\(\s*"([^"]+)"', text):
            target = (rs.parent / m.group(1)).resolve()
            try:
                needed.add(target.relative_to(ROOT).parts[0])
            except ValueError:
                fail(f"{rs.relative_to(ROOT)} includes {m.group(1)}, outside the repository")
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for path in sorted(needed):
        if path not in copied:
            fail(f"deploy/Dockerfile does not COPY {path}, which the build needs")
        if f"{path}/" in ignored or path in ignored:
            fail(f".dockerignore leaves out {path}, which the build needs")
    print(f"ok  deploy/Dockerfile copies what the binary is built from ({', '.join(sorted(needed))})")


def check_alert_rules():
    """Every alert has a runbook_url naming its section of docs/RUNBOOK.md, which
    exists, and a promtool test in which it fires."""
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    tests = yaml.safe_load((ROOT / "deploy/prometheus/alerts.test.yml").read_text())
    runbook = (ROOT / "docs/RUNBOOK.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    fired = {case["alertname"] for test in tests["tests"] for case in test.get("alert_rule_test", [])
             if case.get("exp_alerts")}
    names = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert")
            if not name:
                continue
            names.append(name)
            url = (rule.get("annotations") or {}).get("runbook_url", "")
            want = f"docs/RUNBOOK.md#{name.lower()}"
            if url != want:
                fail(f"alerts.yml: {name}: runbook_url {url!r}, want {want!r}")
            if name.lower() not in anchors:
                fail(f"docs/RUNBOOK.md has no section {name} (the runbook_url of that alert)")
            if name not in fired:
                fail(f"alerts.test.yml: no test in which {name} fires")
    print(f"ok  {len(names)} alerts: each has a runbook section and a promtool test in which it fires")


def check_dockerfile_image():
    """The image: the stripped `image` profile, OCI labels with the crate's
    version, a HEALTHCHECK that runs the binary (exec form: no shell in it)."""
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    cargo = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    if "[profile.image]" not in cargo or "--profile image" not in dockerfile:
        fail("deploy/Dockerfile must build Cargo.toml's stripped `image` profile")
    m = re.search(r"^ARG VERSION=(\S+)$", dockerfile, re.M)
    if not m or m.group(1) != version:
        fail(f"deploy/Dockerfile: ARG VERSION default must be the crate's version {version}")
    for label in ("title", "description", "licenses", "version", "revision", "created", "base.name"):
        if f"org.opencontainers.image.{label}=" not in dockerfile:
            fail(f"deploy/Dockerfile: no org.opencontainers.image.{label} label")
    hc = re.search(r"^HEALTHCHECK [^\[]*?CMD (\[[^\n]*\])$", dockerfile, re.M)
    if not hc or json.loads(hc.group(1))[:2] != ["/usr/local/bin/switchboard", "health"]:
        fail("deploy/Dockerfile: HEALTHCHECK must run the binary in exec form: CMD [\"/usr/local/bin/switchboard\", \"health\"]")
    bases = re.findall(r"^ARG (RUST_IMAGE|RUNTIME_IMAGE)=(\S+)$", dockerfile, re.M)
    unpinned = [f"{n}={r}" for n, r in bases if "@sha256:" not in r]
    if unpinned:
        notes.append(f"deploy/Dockerfile bases are not pinned by digest ({', '.join(unpinned)}): "
                     "run deploy/pin-base-images.sh where a registry is reachable")
    print(f"ok  deploy/Dockerfile builds the stripped image profile, OCI labels (version {version}), "
          "HEALTHCHECK by the binary")


def leaf_keys(values, prefix=""):
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not key.endswith(("resources", "requests", "limits", "labels", "behavior")):
            yield from leaf_keys(v, key + ".")
        else:
            yield key


def check_readme(values):
    readme = (CHART / "README.md").read_text()
    listed = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, re.M))
    keys = set(leaf_keys(values))
    for k in sorted(keys - listed):
        fail(f"helm/switchboard/README.md does not list value {k}")
    for k in sorted(listed - keys):
        fail(f"helm/switchboard/README.md lists {k}, which is not in values.yaml")


def expect_failure(chart, values, needle, label, generate=True):
    try:
        render(chart, values, generate=generate)
    except helm.HelmError as e:
        if needle not in str(e):
            fail(f"{label}: failed, but without saying {needle!r}: {e}")
        return
    fail(f"{label}: rendered, but must fail ({needle!r})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", help="switchboard binary whose --help lists the variables it reads")
    ap.add_argument("--kube-version", default="1.30.0", help="Kubernetes schemas to validate against")
    a = ap.parse_args()

    helm.disable_logging()
    print(f"helm SDK {helm.helm_sdk_version()}, kubernetes-validate {kubernetes_validate.__version__}, "
          f"Kubernetes schemas {a.kube_version}")
    chart = helm.Chart.load(str(CHART))
    defaults = chart.values

    sets = [("default values + redis.url", REDIS)]
    for f in sorted((CHART / "ci").glob("*.yaml")):
        sets.append((f"ci/{f.name}", yaml.safe_load(f.read_text()) or {}))
    if len(sets) < 4:
        fail("need at least three documented value sets in helm/switchboard/ci/")

    sets += EXTRA_SETS

    env_names = set()
    rendered = []
    generated_offline = []
    for label, overrides in sets:
        lint(deep_merge(overrides, GENERATE_OFFLINE) if generates_secret(chart.merge_values(overrides))
             else overrides, label)
        try:
            docs, notes_txt = render(chart, overrides)
            if check_stable(label, chart, overrides):
                generated_offline.append(label)
        except helm.HelmError as e:
            fail(f"{label}: does not render: {e}")
            continue
        values = deep_merge(defaults, overrides)
        for path, doc in docs:
            validate_k8s(label, path, doc, a.kube_version)
        check_policies(label, docs, values, env_names)
        check_admin_port(label, docs, values)
        check_hpa(label, docs, values)
        if "switchboard" not in notes_txt:
            fail(f"{label}: NOTES.txt is empty")
        kinds = sorted({d["kind"] for _, d in docs})
        print(f"ok  {label}: {len(docs)} objects valid ({', '.join(kinds)})")
        rendered.append((label, docs, notes_txt))

        for _, doc in docs:
            if doc["kind"] == "PrometheusRule":
                want = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
                if not values["collector"]["enabled"]:
                    want = [g for g in want if g["name"] != "switchboard-collector"]
                base = values["prometheusRule"].get("runbookBaseUrl") or ""
                for g in want:
                    for r in g["rules"]:
                        r["annotations"]["runbook_url"] = base + r["annotations"]["runbook_url"]
                if doc["spec"]["groups"] != want:
                    fail(f"{label}: PrometheusRule differs from deploy/prometheus/alerts.yml "
                         "(less the collector group when collector.enabled is false, runbook URLs "
                         "prefixed with prometheusRule.runbookBaseUrl)")
            if doc["kind"] == "ConfigMap" and "switchboard.json" in (doc.get("data") or {}):
                want = json.loads((ROOT / "deploy/grafana/switchboard.json").read_text())
                if json.loads(doc["data"]["switchboard.json"]) != want:
                    fail(f"{label}: dashboard ConfigMap differs from deploy/grafana/switchboard.json")

    print(f"ok  every value set renders the same objects twice; the {len(generated_offline)} whose JWT "
          "secret the chart generates are refused without the cluster (checked above with "
          "auth.jwt.generateWithoutCluster), and the Secret is kept on uninstall")
    check_umbrella(a.kube_version)

    # Renderings that must be refused, each with a message saying what to do.
    expect_failure(chart, {}, "redis.url is required", "no redis.url")
    expect_failure(chart, REDIS, REFUSED_OFFLINE, "a generated JWT secret on a render without the cluster",
                   generate=False)
    expect_failure(chart, deep_merge(REDIS, {"httpRoute": {"enabled": True}}),
                   "httpRoute.parentRefs must name", "an HTTPRoute without parentRefs")
    expect_failure(chart, deep_merge(REDIS, {"gateway": {"terminationGracePeriodSeconds": 10}}),
                   "must be at least", "grace period shorter than the drain")
    expect_failure(chart, deep_merge(REDIS, {"gateway": {"drain": {"windowSeconds": 30}}}),
                   "windowSeconds must not be longer", "drain window over the deadline")
    expect_failure(chart, {"redis": {"url": "redis://:hunter2@redis:6379"}},
                   "must not contain credentials", "password in redis.url")
    expect_failure(chart, {"redis": {"url": "http://redis:6379"}}, "does not match pattern", "wrong URL scheme")
    expect_failure(chart, deep_merge(REDIS, {"redis": {"tls": {"caSecret": "redis-ca"}}}),
                   "no Redis URL uses TLS", "TLS Secrets with a redis:// URL")
    expect_failure(chart, deep_merge(REDIS, {"gatway": {"replicaCount": 2}}), "gatway", "misspelt value")
    expect_failure(chart, deep_merge(REDIS, {"gateway": {"adminPort": 8080}}),
                   "gateway.adminPort must differ", "admin port equal to the client port")
    expect_failure(chart, deep_merge(REDIS, {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
                   "minReplicas must not exceed", "autoscaling bounds reversed")
    expect_failure(chart, deep_merge(REDIS, {"autoscaling": {"connections": {"enabled": False},
                                                             "targetCPUUtilizationPercentage": None}}),
                   "autoscaling needs a metric", "autoscaling without any metric")
    expect_failure(chart, deep_merge(REDIS, {"collector": {"sources": {"simulate": True}}}),
                   "simulate", "collector.sources.simulate as a boolean")
    expect_failure(chart, deep_merge(REDIS, {"collector": {"sources": {"onSourceFailure": "mock"}}}),
                   "onSourceFailure", "an unknown collector.sources.onSourceFailure")
    expect_failure(chart, deep_merge(REDIS, {"collector": {"sources": {"simulate": "never",
                                                                       "onSourceFailure": "simulate"}}}),
                   "contradicts", "onSourceFailure simulate with simulate never")
    print("ok  bad values are refused with a clear message")

    if a.binary:
        known = binary_env_names(a.binary)
        for name in sorted(env_names):
            if not name.startswith("SWITCHBOARD_") or name in known:
                continue
            fail(f"the chart sets {name}, which `switchboard gateway|collector --help` does not list")
        print(f"ok  {len([n for n in env_names if n.startswith('SWITCHBOARD_')])} SWITCHBOARD_* variables "
              f"checked against {a.binary}")
        checked = 0
        for label, docs, _ in rendered:
            count, problems, pending = check_containers(a.binary, label, docs)
            checked += count
            for problem in problems:
                fail(problem)
            notes.extend(pending)
        expect_refusal(a.binary, chart, deep_merge(REDIS, {"gateway": {"config": {"pingInterval": 25}}}),
                       "--ping-interval", "a duration without its unit")
        expect_refusal(a.binary, chart, deep_merge(REDIS, {"gateway": {"drain": {"windowSeconds": 0}},
                                                           "collector": {"config": {"leaseTtl": "1s"}}}),
                       "--lease-renew-interval", "a lease renewed less often than half its TTL")
        print(f"ok  {checked} rendered containers' configurations accepted by `{a.binary} … --check-config`")
        minted = sum(check_notes_commands(a.binary, label, notes_txt) for label, _, notes_txt in rendered)
        print(f"ok  {minted} `switchboard token` commands of NOTES.txt run")
    else:
        notes.append("no --binary: variable names and values not checked against the binary")

    check_dockerfile_inputs()
    check_dockerfile_image()
    check_alert_rules()

    check_readme(defaults)
    for n in notes:
        print(f"note {n}")
    if failures:
        print(f"\n{len(failures)} chart check(s) failed", file=sys.stderr)
        return 1
    print("chart checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
