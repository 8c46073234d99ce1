#!/usr/bin/env python3
"""Writes deploy/grafana/switchboard.json, the Grafana dashboard of switchboard.

The dashboard is generated so that its queries stay consistent: every panel is one
line below. Run `python3 deploy/grafana/generate.py` after changing it;
scripts/check-chart.sh fails when the JSON is out of date, and tests/cluster.rs
checks that every metric it queries is exported by a running cluster.
"""
import json
import pathlib
import sys

GW = 'job="switchboard-gateway",namespace=~"$namespace"'
CO = 'job="switchboard-collector",namespace=~"$namespace"'
ANY = 'job=~"switchboard-(gateway|collector)",namespace=~"$namespace"'

panels = []
_next_id = [1]
_y = [0]


def _pid():
    _next_id[0] += 1
    return _next_id[0]


def row(title):
    panels.append({"type": "row", "title": title, "id": _pid(), "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": _y[0]}, "panels": []})
    _y[0] += 1


def _targets(queries):
    return [{"refId": chr(ord("A") + i), "expr": q, "legendFormat": legend,
             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            for i, (q, legend) in enumerate(queries)]


def stats(items):
    """A line of stat panels: (title, query, unit, description)."""
    w = 24 // len(items)
    for i, (title, q, unit, desc) in enumerate(items):
        panels.append({
            "type": "stat", "title": title, "id": _pid(), "description": desc,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 4, "w": w, "x": i * w, "y": _y[0]},
            "targets": _targets([(q, "")]),
            "fieldConfig": {"defaults": {"unit": unit, **({"decimals": 0} if unit == "short" else {})},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"},
        })
    _y[0] += 4


def graphs(items):
    """A line of time series panels: (title, [(query, legend)], unit, description)."""
    w = 24 // len(items)
    for i, (title, queries, unit, desc) in enumerate(items):
        panels.append({
            "type": "timeseries", "title": title, "id": _pid(), "description": desc,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": w, "x": i * w, "y": _y[0]},
            "targets": _targets(queries),
            "fieldConfig": {"defaults": {"unit": unit, "custom": {"fillOpacity": 10}},
                            "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
        })
    _y[0] += 8


def quantiles(metric, sel, by=""):
    grp = f"le{', ' + by if by else ''}"
    return [(f"histogram_quantile({q}, sum by ({grp}) (rate({metric}_bucket{{{sel}}}[$__rate_interval])))",
             f"p{int(q * 100)}" + (f" {{{{{by}}}}}" if by else ""))
            for q in (0.5, 0.9, 0.99)]


row("Overview")
stats([
    ("Ready gateways", f"sum(switchboard_ready{{{GW}}})", "short",
     "Gateways whose /health/ready is 200 (Redis reachable, subscriptions live, not draining)."),
    ("Connections", f"sum(switchboard_connections{{{GW}}})", "short", "Open WebSockets over all gateways."),
    ("Subscriptions", f"sum(switchboard_subscriptions{{{GW}}})", "short", "Client subscriptions over all gateways."),
    ("Channels", f"max(switchboard_channels{{{GW}}})", "short",
     "Channels with local subscribers on the busiest gateway (one Redis subscription each)."),
    ("Delivered / s", f"sum(rate(switchboard_messages_delivered_total{{{GW}}}[$__rate_interval]))", "short",
     "Messages written to client sockets per second."),
    ("Lag p99", f"histogram_quantile(0.99, sum by (le) (rate(switchboard_delivery_lag_seconds_bucket{{{GW}}}[$__rate_interval])))",
     "s", "Publish (Redis clock) to the fan-out writing the message, 99th percentile."),
    ("Collector leaders", f"sum(switchboard_collector_leader{{{CO}}})", "short",
     "Collectors holding the lease: exactly 1 is healthy."),
    ("Snapshot age", f"time() - max(switchboard_collector_last_publish_timestamp_seconds{{{CO}}})", "s",
     "Seconds since a collector last published a snapshot (cycle: 2–3 s)."),
])

row("Connections")
graphs([
    ("Connections by replica", [(f"sum by (instance) (switchboard_connections{{{GW}}})", "{{instance}}"),
                                (f"max(switchboard_max_connections{{{GW}}})", "limit (--max-connections)")], "short",
     "Open WebSockets per gateway against each replica's limit: a balanced load balancer keeps them close; "
     "the HPA scales at 70 % of the limit and SwitchboardConnectionsNearLimit fires at 80 %."),
    ("Connections by route", [(f"sum by (route) (switchboard_connections{{{GW}}})", "{{route}}")], "short",
     "native (/ws), snapshot (/ws/{channel}), relay (/api/ws/{channel})."),
    ("Opened and refused / s", [
        (f"sum by (route) (rate(switchboard_connections_opened_total{{{GW}}}[$__rate_interval]))", "opened {{route}}"),
        (f"sum by (reason) (rate(switchboard_upgrades_rejected_total{{{GW}}}[$__rate_interval]))", "refused {{reason}}"),
    ], "reqps", "Accepted upgrades by route; refused ones by reason (max_connections, draining, forbidden, …)."),
])
graphs([
    ("Disconnects by close code / s", [
        (f"sum by (code) (rate(switchboard_disconnects_total{{{GW}}}[$__rate_interval]))", "{{code}}")], "reqps",
     "1001 draining, 4000 slow consumer, 4002 heartbeat timeout, 4003 idle, client, lost (no close frame)."),
    ("Subscriptions and channels", [
        (f"sum by (instance) (switchboard_subscriptions{{{GW}}})", "subscriptions {{instance}}"),
        (f"sum by (instance) (switchboard_channels{{{GW}}})", "channels {{instance}}"),
    ], "short", "Client subscriptions, and channels subscribed in Redis, per gateway."),
    ("Resumes and gap fills / s", [
        (f"sum by (result) (rate(switchboard_resumes_total{{{GW}}}[$__rate_interval]))", "resume {{result}}"),
        (f"sum by (result) (rate(switchboard_gap_fills_total{{{GW}}}[$__rate_interval]))", "gap fill {{result}}"),
    ], "reqps", "Subscriptions with `since` recovered from history or not; live-feed gaps filled or lost."),
])

row("Messages")
graphs([
    ("Messages / s", [
        (f"sum(rate(switchboard_messages_received_total{{{GW}}}[$__rate_interval]))", "from Redis"),
        (f"sum(rate(switchboard_messages_delivered_total{{{GW}}}[$__rate_interval]))", "to clients"),
        (f"sum(rate(switchboard_client_messages_total{{{GW}}}[$__rate_interval]))", "from clients"),
    ], "short", "Received from the Redis feed (per replica, summed), delivered to sockets, and frames from clients."),
    ("Bytes / s", [
        (f"sum(rate(switchboard_bytes_received_total{{{GW}}}[$__rate_interval]))", "from Redis"),
        (f"sum(rate(switchboard_bytes_sent_total{{{GW}}}[$__rate_interval]))", "to clients"),
        (f"sum(rate(switchboard_client_bytes_received_total{{{GW}}}[$__rate_interval]))", "from clients"),
    ], "Bps", "Message data received from the Redis feed (per replica, summed), and bytes written to and read from client sockets."),
    ("Publishes / s", [
        (f"sum by (result) (rate(switchboard_publishes_total{{{GW}}}[$__rate_interval]))", "{{result}}"),
        (f"sum(rate(switchboard_invalid_messages_total{{{GW}}}[$__rate_interval]))", "invalid from feed"),
    ], "reqps", "POST /api/v1/publish by result; feed messages dropped as invalid JSON."),
])
graphs([
    ("Publish → deliver lag", quantiles("switchboard_delivery_lag_seconds", GW), "s",
     "From publish (Redis clock) to the fan-out writing to sockets."),
    ("Broadcast duration", quantiles("switchboard_broadcast_duration_seconds", GW), "s",
     "Time a fan-out shard spends writing one batch to its subscribers."),
    ("Slow consumers and errors / s", [
        (f"sum by (instance) (rate(switchboard_slow_consumer_closes_total{{{GW}}}[$__rate_interval]))", "slow consumer closes {{instance}}"),
        (f"sum by (code) (rate(switchboard_client_errors_total{{{GW}}}[$__rate_interval]))", "error frames {{code}}"),
    ], "reqps", "Clients closed with 4000 (queue over --max-outbound-bytes); error frames sent, by code."),
])

row("Redis")
graphs([
    ("Redis errors / s", [(f"sum by (instance, op) (rate(switchboard_redis_errors_total{{{ANY}}}[$__rate_interval]))", "{{instance}} {{op}}")],
     "reqps", "Failed Redis operations by op: commands and pipelines (publish, history, snapshot, presence, session, lease, control, ping) and pub/sub connections (pubsub)."),
    ("Redis pub/sub reconnects", [(f"sum by (instance) (increase(switchboard_redis_reconnects_total{{{ANY}}}[$__range]))", "{{instance}}")],
     "short", "Times the pub/sub connection was rebuilt in the dashboard's range."),
    ("Ready", [(f"switchboard_ready{{{ANY}}}", "{{job}} {{instance}}")], "short",
     "1 when the process is ready."),
])

row("Collector")
graphs([
    ("Cycle duration", quantiles("switchboard_collector_cycle_seconds", CO), "s",
     "One cycle: read sources, compute, publish."),
    ("Sources up", [(f"max by (source) (switchboard_collector_source_up{{{CO}}})", "{{source}}")], "short",
     "1 when the source answered in the last cycle; 0: its sections are simulated or stale."),
    ("Leader and publishes", [
        (f"sum by (instance) (switchboard_collector_leader{{{CO}}})", "leader {{instance}}"),
        (f"sum by (channel, result) (rate(switchboard_collector_publishes_total{{{CO}}}[$__rate_interval]))", "{{channel}} {{result}} /s"),
    ], "short", "Which collector holds the lease; snapshots published by channel and result."),
])

row("Process")
graphs([
    ("CPU", [(f"rate(process_cpu_seconds_total{{{ANY}}}[$__rate_interval])", "{{instance}}")], "percentunit",
     "CPU seconds per second."),
    ("Resident memory", [(f"process_resident_memory_bytes{{{ANY}}}", "{{instance}}")], "bytes", "RSS."),
    ("Open file descriptors", [
        (f"process_open_fds{{{ANY}}}", "open {{instance}}"),
        (f"process_max_fds{{{ANY}}}", "max {{instance}}"),
    ], "short", "Each WebSocket holds one."),
])

dashboard = {
    "title": "switchboard",
    "uid": "switchboard",
    "description": "switchboard gateways, collectors and Redis health (generated by deploy/grafana/generate.py).",
    "tags": ["switchboard"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "graphTooltip": 1,
    "refresh": "30s",
    "time": {"from": "now-1h", "to": "now"},
    "annotations": {"list": []},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
         "current": {}, "hide": 0, "refresh": 1},
        {"name": "namespace", "type": "query", "label": "Namespace",
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": "label_values(switchboard_build_info, namespace)", "refId": "namespace"},
         "definition": "label_values(switchboard_build_info, namespace)",
         "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2, "hide": 0,
         "current": {"selected": True, "text": ["All"], "value": ["$__all"]}},
    ]},
    "panels": panels,
}

out = pathlib.Path(__file__).with_name("switchboard.json")
text = json.dumps(dashboard, indent=2, sort_keys=False) + "\n"
if "--check" in sys.argv:
    if not out.exists() or out.read_text() != text:
        sys.exit(f"{out} is out of date: run python3 {__file__}")
    print(f"{out.name}: up to date ({len(panels)} panels)")
else:
    out.write_text(text)
    print(f"wrote {out} ({len(panels)} panels)")
