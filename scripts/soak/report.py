#!/usr/bin/env python3
"""The soak run's report: reads a results directory written by soak.py and
the load client, writes report.json, report.md, summary.md (the short form for
docs/RELIABILITY.md) and, when matplotlib can be had, latency.png and memory.png.

    scripts/soak/report.py target/soak/<run>      # (re)write the report of a run
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

VENV = Path.home() / ".cache" / "switchboard" / "soak-venv"


def read_jsonl(path: Path) -> list[dict]:
    out = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def iso_to_epoch(ts: str) -> float | None:
    m = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?Z", ts or "")
    if not m:
        return None
    import calendar
    secs = calendar.timegm(tuple(int(m.group(i)) for i in range(1, 7)) + (0, 0, 0))
    return secs + (float(m.group(7)) if m.group(7) else 0.0)


# --- statistics --------------------------------------------------------------------

def linear_slope(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def regress(rows: list[tuple[float, ...]], ys: list[float]) -> list[float] | None:
    """Least squares y ≈ b0 + b1·x1 + b2·x2 … (normal equations, Gauss-Jordan)."""
    if len(rows) < len(rows[0]) + 3 if rows else True:
        return None
    X = [[1.0, *r] for r in rows]
    k = len(X[0])
    a = [[sum(X[i][p] * X[i][q] for i in range(len(X))) for q in range(k)] for p in range(k)]
    b = [sum(X[i][p] * ys[i] for i in range(len(X))) for p in range(k)]
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-12:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        b[col], b[pivot] = b[pivot], b[col]
        for r in range(k):
            if r != col:
                f = a[r][col] / a[col][col]
                a[r] = [x - f * y for x, y in zip(a[r], a[col])]
                b[r] -= f * b[col]
    return [b[i] / a[i][i] for i in range(k)]


# --- analysis ----------------------------------------------------------------------

def fault_windows(faults: list[dict]) -> list[dict]:
    return sorted(faults, key=lambda f: f["start"])


def explained_by(t: float, faults: list[dict], before: float = 2.0, after: float = 30.0) -> dict | None:
    for f in faults:
        if f["start"] - before <= t <= f["end"] + after:
            return f
    return None


# Faults that cut or refuse a connection: a bad-input case that ran into one
# ends the way the fault makes it end, not the way its input would.
CONNECTION_FAULTS = ("replica_kill", "rolling_restart", "replica_stall", "redis_master_kill")
# The documented error frames of the cases that send several bad messages on
# one connection (examples/soak/vandal.rs), in order.
EXPECTED_FRAMES = {
    "native_bad_requests": ["invalid_json", "unknown_type", "bad_channel", "invalid_message",
                            "binary_not_supported", "not_subscribed"],
    "escai_bad_requests": ["INVALID_JSON", "VALIDATION_ERROR", "AGENT_ACCESS_DENIED", "UNKNOWN_MESSAGE_TYPE"],
    "council_bad_requests": ["invalid_json", "unknown_message_id", "unknown_type"],
}
# The documented answer to a Redis outage: this error frame, then close 1013.
UNAVAILABLE = ("unavailable", "SERVICE_UNAVAILABLE")


def cut_by_fault(case: str, seen: str) -> bool:
    """Whether an answer is one a fault makes: the connection refused or never
    answered, or silent for the harness's whole window; or, on a case with
    several messages, every frame the documented
    one until the connection was cut (1006) or closed for a Redis outage
    (`unavailable` then 1013). A wrong frame is never a cut."""
    if seen.startswith("Failed("):
        return True
    if case == "redis_junk" and seen.startswith("Err("):
        # The harness's own junk written straight into Redis: during a
        # failover its client times out like any other.
        return True
    m = re.fullmatch(r"Frames\((\[.*\]), (Some\((\d+)\)|None)\)", seen)
    if not m or case not in EXPECTED_FRAMES:
        return False
    try:
        frames = json.loads(m.group(1))
    except ValueError:
        return False
    close = int(m.group(3)) if m.group(3) else None
    if not frames and close is None:
        # Silence for the whole window: a stalled replica, or a connection
        # whose start is waiting on a failing-over Redis (each command up to
        # --redis-timeout, 2 s — the harness listens 2 s) and answers later.
        return True
    if close == 1013 and frames and frames[-1] in UNAVAILABLE:
        frames = frames[:-1]
    elif close != 1006:
        return False
    return frames == EXPECTED_FRAMES[case][:len(frames)]


def classify_bad_input(unexpected: list[dict], faults: list[dict]) -> dict:
    """Splits unexpected bad-input answers into those a replica or Redis fault
    explains (`cut_by_fault` during a kill, a roll, a stall or a failover) and
    the rest, which fail the check."""
    near = [f for f in faults if f["kind"] in CONNECTION_FAULTS]
    explained, unexplained = [], []
    for e in unexpected:
        f = explained_by(e["t"], near, before=20, after=10) if cut_by_fault(e.get("case", ""), e.get("seen", "")) else None
        if f:
            explained.append({**e, "fault": f"{f['kind']} {f['target']}"})
        else:
            unexplained.append(e)
    return {"explained": explained, "unexplained": unexplained}


def scan_logs(run: Path, faults: list[dict]) -> dict:
    logs = run / "logs"
    levels: Counter = Counter()
    messages: Counter = Counter()
    errors: list[dict] = []
    panics: list[dict] = []
    for path in sorted(logs.glob("*.log")):
        name = path.stem
        if not (name.startswith("gw-") or name.startswith("collector-")):
            continue
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                v = json.loads(line)
            except ValueError:
                if "panicked" in line:
                    panics.append({"process": name, "line": line[:400]})
                continue
            level = v.get("level", "?")
            levels[(name.rsplit(".", 1)[0], level)] += 1
            msg = v.get("message") or v.get("fields", {}).get("message") or ""
            if level in ("WARN", "ERROR"):
                messages[(level, msg[:140])] += 1
            if "panicked" in msg:
                panics.append({"process": name, "line": msg[:400]})
            if level == "ERROR":
                t = iso_to_epoch(v.get("timestamp", ""))
                f = explained_by(t, faults) if t else None
                errors.append({"process": name, "t": t, "message": msg[:300],
                               "fields": {k: str(x)[:120] for k, x in v.items()
                                          if k not in ("timestamp", "level", "message", "target")},
                               "fault": f"{f['kind']} {f['target']}" if f else None})
    nginx_errors = 0
    p = logs / "nginx-error.log"
    if p.exists():
        nginx_errors = sum(1 for _ in p.open(errors="replace"))
    return {
        "levels": {f"{k[0]} {k[1]}": n for k, n in sorted(levels.items())},
        "warn_error_messages": [{"level": k[0], "message": k[1], "count": n}
                                for k, n in messages.most_common(40)],
        "errors": len(errors),
        "errors_unexplained": [e for e in errors if e["fault"] is None],
        "errors_explained": Counter(e["fault"].split()[0] for e in errors if e["fault"]),
        "error_samples": errors[:20],
        "panics": panics,
        "nginx_error_lines": nginx_errors,
    }


def classify_stuck(events: list[dict], faults: list[dict]) -> dict:
    stalls = [f for f in faults if f["kind"] == "replica_stall"]
    out = {"total": 0, "explained": 0, "unexplained": []}
    for e in events:
        if e.get("kind") != "stuck":
            continue
        out["total"] += 1
        replica = e.get("replica")
        ok = any(
            (replica in (s["target"], "?", None)) and e["from"] <= s["end"] + 5 and e["to"] >= s["start"] - 1
            for s in stalls
        )
        if ok:
            out["explained"] += 1
        else:
            out["unexplained"].append(e)
    out["unexplained"] = out["unexplained"][:50]
    return out


# What a gateway may hold an AI Council acknowledgement before it is in Redis:
# its flush interval (--council-ack-flush-interval, 0.5 s by default) plus 1 s
# for the ack to cross nginx and the loaded replica to read it; a Redis outage
# adds its length and the writer's longest retry pause (5 s).
ACK_SLACK_S = 1.0
ACK_MAX_RETRY_S = 5.0


def ack_at_risk_until(acked_at: float, replica: str, faults: list[dict], flush_s: float) -> float:
    """Until when an ack sent to `replica` at `acked_at` may exist only in that replica's memory."""
    until = acked_at + flush_s + ACK_SLACK_S
    for f in faults:  # sorted by start: a stall or outage that begins in the window extends it
        if f["start"] > until:
            break
        if f["kind"] == "replica_stall" and f["target"] == replica and f["end"] >= acked_at:
            until = max(until, f["end"] + flush_s + ACK_SLACK_S)
        elif f["kind"] in ("redis_master_kill", "redis_kill"):
            # Redis refuses writes until the failover (cluster) or the restart.
            back = f["start"] + f.get("failover_s", f["end"] - f["start"])
            if back >= acked_at:
                until = max(until, back + ACK_MAX_RETRY_S + flush_s + ACK_SLACK_S)
    return until


# How long a Redis command may take to fail (the gateways' --redis-timeout, 2 s in
# the soak) before the AI Council writer logs that it could not store.
ACK_WRITE_TIMEOUT_S = 3.0


def ack_store_outages(run: Path) -> dict[str, list[tuple[float, float]]]:
    """Per replica, from its own logs: the windows in which its AI Council
    writer held acknowledgements Redis would not take (a master failing over) —
    from "could not store AI Council acknowledgements" to "stored again", or to
    the end of that process's log."""
    windows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for path in sorted((run / "logs").glob("gw-*.log")):
        name = path.stem.split(".")[0]
        start = last = None
        for line in path.read_text(errors="replace").splitlines():
            try:
                v = json.loads(line)
                t = datetime.fromisoformat(v["timestamp"].replace("Z", "+00:00")).timestamp()
            except (ValueError, KeyError):
                continue
            last = t
            message = v.get("message", "")
            if message.startswith("could not store AI Council acknowledgements") and start is None:
                start = t
            elif message.startswith("AI Council acknowledgements stored again") and start is not None:
                windows[name].append((start, t))
                start = None
        if start is not None and last is not None:
            windows[name].append((start, last))
    return windows


def classify_council_duplicates(events: list[dict], faults: list[dict], flush_s: float,
                                outages: dict[str, list[tuple[float, float]]] | None = None) -> dict:
    """Splits the AI Council duplicates (an event replayed after its ack) into
    "ack lost with its replica" — the fault timeline shows the replica the ack
    went to killed, or stalled until after the replay, while it could still
    hold the ack —, "ack waiting for Redis" — that replica's own log shows its
    writer unable to store acknowledgements (a master failing over) from before
    the ack could have been written until after the replay read them — and the
    rest, which stay violations. Both are the route's documented at least once:
    an ack is stored after it is answered, never before."""
    out = {"ack_lost_with_replica": [], "ack_waiting_for_redis": [], "unexplained": []}
    outages = outages or {}
    for e in events:
        if e.get("kind") != "duplicate" or e.get("route") != "council":
            continue
        replica, acked_at = e.get("ack_replica"), e.get("acked_at")
        proof = None
        if replica and acked_at and not e.get("same_connection"):
            until = ack_at_risk_until(acked_at, replica, faults, flush_s)
            for f in faults:
                if f.get("target") != replica:
                    continue
                if f["kind"] == "replica_kill" and acked_at <= f["start"] <= until:
                    proof = f
                elif (f["kind"] == "replica_stall" and f["start"] <= until and acked_at <= f["end"]
                      and e["t"] <= f["end"] + flush_s + ACK_SLACK_S):
                    proof = f
                if proof:
                    break
        if proof:
            e["proof"] = f"{proof['kind']} {proof['target']} at {proof['start']:.1f}"
            out["ack_lost_with_replica"].append(e)
            continue
        waiting = None
        if replica and acked_at and not e.get("same_connection"):
            for start, end in outages.get(replica, []):
                # Not yet stored when the writer first failed (it tries within
                # the flush interval, each try up to the Redis timeout), and
                # still not stored when the new connection read the acks.
                if start - flush_s - ACK_WRITE_TIMEOUT_S <= acked_at <= end and e["t"] <= end + ACK_SLACK_S:
                    waiting = (start, end)
                    break
        if waiting:
            e["proof"] = f"{replica} could not store acks from {waiting[0]:.1f} to {waiting[1]:.1f}"
            out["ack_waiting_for_redis"].append(e)
        else:
            out["unexplained"].append(e)
    return out


WINDOW_S = 600.0


def memory(samples: list[dict], warmup: float, min_life: float) -> dict:
    """Per gateway incarnation: slopes after warm-up; pooled: RSS ≈ a + b·connections + c·age."""
    series: dict[tuple, list[dict]] = defaultdict(list)
    for s in samples:
        for p in s["procs"]:
            series[(p["role"], p["name"], p["incarnation"])].append({"t": s["t"], **p})
    incarnations = []
    pooled_rows, pooled_rss, pooled_fds, pooled_tasks, pooled_tasks_rows = [], [], [], [], []
    for (role, name, inc), points in sorted(series.items()):
        pts = [p for p in points if p["age_s"] >= warmup]
        life = points[-1]["age_s"] if points else 0
        entry = {"role": role, "name": name, "incarnation": inc, "samples": len(points),
                 "life_s": round(life, 1)}
        if len(pts) >= 4 and (pts[-1]["age_s"] - pts[0]["age_s"]) >= min_life:
            ages = [p["age_s"] for p in pts]
            entry["rss_start_mb"] = round(pts[0]["rss"] / 2**20, 1)
            entry["rss_end_mb"] = round(pts[-1]["rss"] / 2**20, 1)
            slope = linear_slope(ages, [p["rss"] for p in pts])
            entry["rss_slope_mb_per_10min"] = round(slope * 600 / 2**20, 2) if slope is not None else None
            slope = linear_slope(ages, [p["fds"] for p in pts])
            entry["fds_slope_per_10min"] = round(slope * 600, 1) if slope is not None else None
            tasks = [p.get("metrics", {}).get("switchboard_runtime_alive_tasks") for p in pts]
            if all(t is not None for t in tasks):
                slope = linear_slope(ages, tasks)
                entry["tasks_slope_per_10min"] = round(slope * 600, 1) if slope is not None else None
            conns = [p.get("metrics", {}).get("switchboard_connections") for p in pts]
            if all(c is not None for c in conns):
                entry["connections_start_end"] = [conns[0], conns[-1]]
            if role == "gateway" and life >= 2 * WINDOW_S:
                # A long life read window by window: a leak climbs in every window; an
                # allocator's high-water mark (set by the most connections held) plateaus.
                windows = defaultdict(list)
                for p in points:
                    windows[int(p["age_s"] // WINDOW_S)].append(p)
                entry["by_10min"] = [{"rss_max_mb": round(max(p["rss"] for p in w) / 2**20, 1),
                                      "connections_max": max((p.get("metrics", {}).get("switchboard_connections")
                                                              or 0) for p in w)}
                                     for _, w in sorted(windows.items()) if len(w) >= 4]
                later = [p for p in pts if p["age_s"] >= WINDOW_S]
                slope = linear_slope([p["age_s"] for p in later], [p["rss"] for p in later])
                entry["rss_slope_mb_per_10min_after_first_window"] = (
                    round(slope * 600 / 2**20, 2) if slope is not None else None)
            if role == "redis":
                um = [p.get("used_memory") for p in pts]
                if all(u is not None for u in um):
                    slope = linear_slope(ages, um)
                    entry["used_memory_slope_mb_per_10min"] = round(slope * 600 / 2**20, 2) if slope else 0.0
            incarnations.append(entry)
        if role == "gateway":
            for p in pts:
                m = p.get("metrics", {})
                c = m.get("switchboard_connections")
                if c is None:
                    continue
                pooled_rows.append((c, p["age_s"]))
                pooled_rss.append(p["rss"])
                pooled_fds.append(p["fds"] - c)
                if m.get("switchboard_runtime_alive_tasks") is not None:
                    pooled_tasks_rows.append((c, p["age_s"]))
                    pooled_tasks.append(m["switchboard_runtime_alive_tasks"])
    pooled = {}
    fit = regress(pooled_rows, pooled_rss)
    if fit:
        pooled["rss"] = {"base_mb": round(fit[0] / 2**20, 1), "kb_per_connection": round(fit[1] / 1024, 2),
                         "mb_per_10min_of_age": round(fit[2] * 600 / 2**20, 2), "samples": len(pooled_rss)}
    fit = regress([(a,) for _, a in pooled_rows], pooled_fds)
    if fit:
        pooled["fds_beyond_connections"] = {"base": round(fit[0], 1), "per_10min_of_age": round(fit[1] * 600, 2)}
    fit = regress(pooled_tasks_rows, pooled_tasks) if pooled_tasks_rows else None
    if fit:
        pooled["tasks"] = {"base": round(fit[0], 1), "per_connection": round(fit[1], 3),
                           "per_10min_of_age": round(fit[2] * 600, 2)}
    return {"incarnations": incarnations, "gateway_pooled": pooled}


def plots(run: Path, timeseries: list[dict], samples: list[dict], faults: list[dict]) -> list[str]:
    """latency.png and memory.png, with matplotlib from the venv (created on first use)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        try:
            VENV.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "matplotlib"], check=True,
                           capture_output=True, timeout=600)
        except Exception as e:
            print(f"report: no plots (matplotlib could not be installed: {e})", file=sys.stderr)
            return []
    data = {"timeseries": timeseries, "samples": samples, "faults": faults, "out": str(run)}
    script = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
d = json.load(sys.stdin)
ts, samples, faults = d["timeseries"], d["samples"], d["faults"]
t0 = min([x["t"] for x in ts] + [s["t"] for s in samples] or [0])
colors = {"replica_kill": "red", "replica_stall": "orange", "rolling_restart": "purple",
          "redis_master_kill": "brown", "redis_kill": "brown", "collector_leader_kill": "green",
          "stopped_reader": "gray", "bad_input": "pink"}
def marks(ax):
    seen = set()
    for f in faults:
        c = colors.get(f["kind"], "black")
        label = f["kind"] if f["kind"] not in seen else None
        seen.add(f["kind"])
        ax.axvspan((f["start"] - t0) / 60, (f["end"] - t0) / 60, color=c, alpha=0.15, label=label)
fig, ax = plt.subplots(figsize=(11, 4.5))
x = [(p["t"] - t0) / 60 for p in ts]
ax.plot(x, [p["p99_ms"] for p in ts], label="p99 (all routes)", color="black")
ax.plot(x, [p["p50_ms"] for p in ts], label="p50", color="steelblue")
ax.set_yscale("log"); ax.set_xlabel("minutes"); ax.set_ylabel("publish → receive, ms (5 s windows)")
marks(ax); ax.legend(fontsize=7, ncol=3); ax.grid(alpha=0.3)
fig.tight_layout(); fig.savefig(d["out"] + "/latency.png", dpi=110)
fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
by = {}
for s in samples:
    for p in s["procs"]:
        if p["role"] == "gateway":
            by.setdefault(p["name"], []).append(((s["t"] - t0) / 60, p["rss"] / 2**20,
                                                 (p.get("metrics") or {}).get("switchboard_connections")))
for name, pts in sorted(by.items()):
    a1.plot([p[0] for p in pts], [p[1] for p in pts], ".", ms=3, label=name + " RSS")
    a2.plot([p[0] for p in pts], [p[2] or 0 for p in pts], ".", ms=3, label=name + " connections")
a1.set_ylabel("gateway RSS, MB"); a2.set_ylabel("connections"); a2.set_xlabel("minutes")
for a in (a1, a2):
    marks(a); a.grid(alpha=0.3); a.legend(fontsize=7, ncol=4)
fig.tight_layout(); fig.savefig(d["out"] + "/memory.png", dpi=110)
'''
    r = subprocess.run([str(python), "-c", script], input=json.dumps(data), text=True, capture_output=True)
    if r.returncode != 0:
        print(f"report: plotting failed: {r.stderr[-500:]}", file=sys.stderr)
        return []
    return ["latency.png", "memory.png"]


def per_minute(timeseries: list[dict]) -> list[dict]:
    if not timeseries:
        return []
    t0 = timeseries[0]["t"]
    buckets: dict[int, list[dict]] = defaultdict(list)
    for p in timeseries:
        buckets[int((p["t"] - t0) // 60)].append(p)
    out = []
    for m, pts in sorted(buckets.items()):
        out.append({"minute": m, "deliveries": sum(p["deliveries"] for p in pts),
                    "p99_ms_max_window": round(max(p["p99_ms"] for p in pts), 1),
                    "p99_ms_median_window": round(sorted(p["p99_ms"] for p in pts)[len(pts) // 2], 1),
                    "max_ms": round(max(p["max_ms"] for p in pts), 1)})
    return out


def write(run: Path, plots_wanted: bool = True) -> bool:
    meta = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    final = json.loads((run / "client-final.json").read_text()) if (run / "client-final.json").exists() else {}
    faults = fault_windows(read_jsonl(run / "faults.jsonl"))
    samples = read_jsonl(run / "samples.jsonl")
    timeseries = read_jsonl(run / "client-timeseries.jsonl")
    events = read_jsonl(run / "client-events.jsonl")
    smoke = meta.get("smoke", False)
    logs = scan_logs(run, faults)
    stuck = classify_stuck(events, faults)
    mem = memory(samples, warmup=30 if smoke else 60, min_life=60 if smoke else 180)
    totals = final.get("totals", {})
    bad_input = [e for e in events if e.get("kind") == "bad_input"]
    bad_classified = classify_bad_input([e for e in events if e.get("kind") == "bad_input_unexpected"], faults)
    bad_unexpected = bad_classified["unexplained"]
    stopped = [e for e in events if e.get("kind") == "stopped_reader"]
    lost_events = [e for e in events if e.get("kind") == "lost"]
    for e in lost_events:
        f = explained_by(e.get("first_sent") or e["t"], faults, before=5, after=60)
        e["near_fault"] = f"{f['kind']} {f['target']}" if f else None
    kinds = Counter(f["kind"] for f in faults)
    connect_failures = Counter(
        f"{e.get('route')} {e.get('status') or (e.get('error') or '')[:60]}"
        for e in events if e.get("kind") == "connect_failed")
    publish_failures = Counter(
        f"{e.get('method')}: {re.sub(r'[0-9]+', 'N', (e.get('error') or ''))[:90]}"
        for e in events if e.get("kind") == "publish_failed")
    for f in faults:
        f["connect_failures"] = sum(1 for e in events if e.get("kind") == "connect_failed"
                                    and f["start"] <= e["t"] <= f["end"] + 10)
    slow_closes = 0.0
    last_by_inc: dict = {}
    for s in samples:
        for p in s["procs"]:
            if p["role"] == "gateway":
                v = (p.get("metrics") or {}).get("switchboard_slow_consumer_closes_total")
                if v is not None:
                    last_by_inc[(p["name"], p["incarnation"])] = v
    slow_closes = sum(last_by_inc.values())
    council_dups = classify_council_duplicates(events, faults, meta.get("council_ack_flush_s", 0.5),
                                               ack_store_outages(run))
    acks_lost_with_replica = len(council_dups["ack_lost_with_replica"]) + len(council_dups["ack_waiting_for_redis"])
    checks = {
        "nothing lost": totals.get("lost", -1) == 0,
        # An AI Council event replayed because the replica holding its ack was
        # killed or stalled first is reported apart ("ack lost with its
        # replica"): the route is at least once, and no design where the client
        # does not wait for a confirmation can keep that ack.
        "nothing duplicated": totals.get("duplicated", -1) - acks_lost_with_replica == 0,
        "nothing delivered under another offset": totals.get("mismatched", -1) == 0,
        "no client stuck without a stalled replica": not stuck["unexplained"],
        "no ERROR log line without a fault": not logs["errors_unexplained"],
        "no panic": not logs["panics"],
        # A case cut by a replica fault is reported apart (see classify_bad_input).
        "every bad input answered as documented": bool(bad_input) and not bad_unexpected if kinds.get("bad_input") else True,
        # A stopped reader that could not connect (its replica restarting)
        # never stopped reading: nothing for the gateway to close.
        "every stopped reader closed by the gateway": all(
            e.get("outcome", {}).get("closed_by_gateway") for e in stopped
            if "error" not in e.get("outcome", {})),
        "the client finished": meta.get("client_exit") == 0,
        "every fault carried out": not meta.get("fault_failures"),
    }
    passed = all(checks.values())
    files = plots(run, timeseries, samples, faults) if plots_wanted else []
    report = {
        "passed": passed, "checks": checks, "meta": meta, "faults": dict(kinds),
        "fault_list": faults, "totals": totals, "publishes_by_kind": final.get("publishes_by_kind"),
        "collector": final.get("collector"), "stuck": stuck, "logs": logs, "memory": mem,
        "latency_per_minute": per_minute(timeseries), "bad_input": {"bursts": len(bad_input),
                                                                    "unexpected": bad_unexpected,
                                                                    "cut_by_a_fault": bad_classified["explained"]},
        "stopped_readers": stopped, "slow_consumer_closes": slow_closes,
        "lost_events": lost_events[:100], "plots": files,
        "connect_failures": dict(connect_failures.most_common(20)),
        "publish_failures": dict(publish_failures.most_common(20)),
        "unacked_repeats": sum(1 for e in events if e.get("kind") == "unacked_repeat"),
        "council_acks_lost_with_replica": acks_lost_with_replica,
        "council_duplicates": council_dups,
    }
    (run / "report.json").write_text(json.dumps(report, indent=2, default=str))
    md = markdown(report)
    (run / "report.md").write_text(md)
    (run / "summary.md").write_text(summary(report))
    return passed


def fmt(n) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def summary(r: dict) -> str:
    m, t = r["meta"], r["totals"]
    pub = t.get("publish", {})
    acked = pub.get("http", {}).get("acked", 0) + pub.get("redis", {}).get("acked", 0)
    failed = pub.get("http", {}).get("failed", 0) + pub.get("redis", {}).get("failed", 0)
    dur = (m.get("ended", 0) - m.get("started", 0)) / 60 if m.get("ended") else m.get("duration_s", 0) / 60
    gp = r["memory"]["gateway_pooled"].get("rss", {})
    faults = ", ".join(f"{k} ×{v}" for k, v in sorted(r["faults"].items()))
    lines = [
        f"**{'Smoke' if m.get('smoke') else 'Soak'} run, {m.get('redis')} Redis, commit `{m.get('commit')}`** "
        f"({time.strftime('%Y-%m-%d', time.gmtime(m.get('started', 0)))}, {dur:.1f} min in all, "
        f"{m.get('duration_s', 0) / 60:.0f} min of publishing, {fmt(m.get('clients'))} clients, "
        f"churn {m.get('churn')}/s): **{'passed' if r['passed'] else 'FAILED'}**.",
        "",
        "| | |",
        "|---|---|",
        f"| faults | {faults or 'none'} |",
        f"| publishes acknowledged / not | {fmt(acked)} / {fmt(failed)} (HTTP {fmt(pub.get('http', {}).get('acked', 0))}, "
        f"Redis script {fmt(pub.get('redis', {}).get('acked', 0))}) |",
        f"| deliveries checked | {fmt(t.get('deliveries', 0))} |",
        f"| lost / duplicated / wrong offset | {t.get('lost')} / "
        f"{t.get('duplicated', 0) - r.get('council_acks_lost_with_replica', 0)} / {t.get('mismatched')} |",
        f"| AI Council events replayed: ack lost with its replica (killed or stalled before storing it) / "
        f"ack still waiting for Redis (a failover) | {len(r['council_duplicates']['ack_lost_with_replica'])} / "
        f"{len(r['council_duplicates'].get('ack_waiting_for_redis', []))} |",
        f"| honest restarts (`recovered:false`, snapshot restarts) / events reported expired | "
        f"{t.get('honest_restarts')} / {t.get('expired_reported')} |",
        f"| redelivered after a resume (expected, deduplicated by offset) | {fmt(t.get('redelivered', 0))} |",
        f"| connections / reconnects after a fault / resumes | {fmt(t.get('connects', 0))} / "
        f"{fmt(t.get('reconnects', 0))} / {fmt(t.get('resumes', 0))} |",
        f"| stuck clients (explained by a stalled replica / not) | {r['stuck']['explained']} / {len(r['stuck']['unexplained'])} |",
        f"| latency p50 / p99 / p99.9 / max (whole run, ms) | {t.get('p50_ms')} / {t.get('p99_ms')} / "
        f"{t.get('p999_ms')} / {t.get('max_ms')} |",
        f"| ERROR lines (behind a fault / not) / panics | {r['logs']['errors'] - len(r['logs']['errors_unexplained'])} / "
        f"{len(r['logs']['errors_unexplained'])} / {len(r['logs']['panics'])} |",
        f"| gateway RSS: per connection, drift with age (pooled fit) | {gp.get('kb_per_connection', '?')} KB, "
        f"{gp.get('mb_per_10min_of_age', '?')} MB per 10 min |",
    ]
    gateways = [e for e in r["memory"]["incarnations"] if e["role"] == "gateway" and "rss_start_mb" in e]
    if gateways:
        e = max(gateways, key=lambda e: e["life_s"])
        peaks = ", ".join(str(w["rss_max_mb"]) for w in e.get("by_10min", []))
        lines.append(
            f"| longest gateway life: {e['name']} #{e['incarnation']}, {e['life_s'] / 60:.0f} min | RSS "
            f"{e['rss_start_mb']} → {e['rss_end_mb']} MB, {e['rss_slope_mb_per_10min']} MB / 10 min; fds "
            f"{e['fds_slope_per_10min']}, tasks {e.get('tasks_slope_per_10min', '?')} / 10 min"
            + (f"; highest RSS per 10 min: {peaks} MB; after the first 10 min "
               f"{e.get('rss_slope_mb_per_10min_after_first_window')} MB / 10 min" if peaks else "") + " |")
    return "\n".join(lines) + "\n"


def markdown(r: dict) -> str:
    out = ["# Soak report", "", summary(r), "", "## Checks", ""]
    for k, v in r["checks"].items():
        out.append(f"- {'✔' if v else '✘'} {k}")
    t = r["totals"]
    out += ["", "## Per route", "", "| route | connects | reconnects | deliveries | of which replayed | lost | dup | "
            "honest restarts | redelivered | stuck | p99 ms | max ms |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in (t.get("routes") or {}).items():
        out.append(f"| {name} | {c.get('connects')} | {c.get('reconnects')} | {c.get('deliveries')} | {c.get('replayed')} | {c.get('lost')} | "
                   f"{c.get('duplicated')} | {c.get('honest_restarts')} | {c.get('redelivered')} | {c.get('stuck')} | "
                   f"{c.get('p99_ms')} | {c.get('max_ms')} |")
    out += ["", "## Publishes", "", "```", json.dumps(r.get("publishes_by_kind"), indent=1), "```",
            "", f"Close codes seen by clients: `{json.dumps(t.get('close_codes'))}`",
            "", f"Error frames seen by clients: `{json.dumps(t.get('error_codes'))}`",
            "", f"Client events by kind: `{json.dumps(t.get('event_counts'))}`"]
    out += ["", "Connections refused (route and status; during which faults: see the table below):", "", "```",
            json.dumps(r.get("connect_failures"), indent=1), "```",
            "", "Publishes not acknowledged, by reason (a producer is told; none of these is owed to anyone):", "", "```",
            json.dumps(r.get("publish_failures"), indent=1), "```",
            "", f"Repeats of unacknowledged messages: {r.get('unacked_repeats')} (a publish the producer gave up on "
            "— e.g. its HTTP request timed out against a stalled replica — that the replica carried out once it "
            "resumed, after later messages: it arrives out of the producer's order, under a later offset; not a "
            "violation, since it was never acknowledged).",
            "", f"AI Council events replayed after their ack, the ack lost with its replica: "
            f"{r.get('council_acks_lost_with_replica', 0)} (the replica the ack went to was killed, or stalled "
            "past the replay, within its flush interval + 1 s of the ack — extended by a stall or a Redis outage "
            "it was waiting out —, as faults.jsonl shows; the route is at least once: docs/PROTOCOL.md), or still "
            "waiting in a live replica for Redis to take it (a master failing over: the replica's log shows its "
            f"writer failing from before the ack until after the replay): "
            f"{len(r['council_duplicates'].get('ack_waiting_for_redis', []))} of them. Other "
            f"AI Council duplicates (violations): {len(r['council_duplicates']['unexplained'])}."]
    t0 = r["meta"].get("started", 0)
    for e in r["council_duplicates"]["ack_lost_with_replica"][:20]:
        out.append(f"- ack lost with its replica: client {e.get('client')} {e.get('request')} message_id "
                   f"{e.get('message_id')}, acked to {e.get('ack_replica')} at {e.get('acked_at', 0) - t0:.1f} s; "
                   f"{e.get('proof')}")
    for e in r["council_duplicates"].get("ack_waiting_for_redis", [])[:20]:
        out.append(f"- ack waiting for Redis: client {e.get('client')} {e.get('request')} message_id "
                   f"{e.get('message_id')}, acked to {e.get('ack_replica')} at {e.get('acked_at', 0) - t0:.1f} s, "
                   f"replayed at {e.get('t', 0) - t0:.1f} s; {e.get('proof')}")
    for e in r["council_duplicates"]["unexplained"][:20]:
        out.append(f"- duplicate: `{json.dumps(e)}`")
    out += ["", "## Faults", "", "| start (s) | kind | target | took (s) | connections refused meanwhile | detail |",
            "|---|---|---|---|---|---|"]
    t0 = r["meta"].get("started", 0)
    for f in r["fault_list"]:
        detail = {k: v for k, v in f.items() if k not in ("kind", "target", "start", "end", "connect_failures")}
        out.append(f"| {f['start'] - t0:.0f} | {f['kind']} | {f['target']} | {f['end'] - f['start']:.1f} | "
                   f"{f.get('connect_failures', '')} | {json.dumps(detail) if detail else ''} |")
    out += ["", "## Latency per minute", "", "| minute | deliveries | p99 (median 5 s window) | p99 (worst window) | max |",
            "|---|---|---|---|---|"]
    for m in r["latency_per_minute"]:
        out.append(f"| {m['minute']} | {m['deliveries']} | {m['p99_ms_median_window']} | {m['p99_ms_max_window']} | {m['max_ms']} |")
    out += ["", "## Memory, descriptors, tasks", "",
            "Per process incarnation after warm-up (slopes by least squares):", "",
            "| process | incarnation | life s | RSS MB start → end | RSS MB / 10 min | fds / 10 min | tasks / 10 min | connections start, end |",
            "|---|---|---|---|---|---|---|---|"]
    for e in r["memory"]["incarnations"]:
        out.append(f"| {e['name']} | {e['incarnation']} | {e['life_s']} | {e.get('rss_start_mb')} → {e.get('rss_end_mb')} | "
                   f"{e.get('rss_slope_mb_per_10min')} | {e.get('fds_slope_per_10min')} | {e.get('tasks_slope_per_10min', '')} | "
                   f"{e.get('connections_start_end', '')} |")
    out += ["", "Gateways pooled (RSS ≈ base + per connection × connections + drift × age):", "", "```",
            json.dumps(r["memory"]["gateway_pooled"], indent=1), "```"]
    out += ["", "## Logs", "", f"ERROR lines: {r['logs']['errors']} (behind a fault: "
            f"{json.dumps(dict(r['logs']['errors_explained']))}); unexplained: {len(r['logs']['errors_unexplained'])}; "
            f"panics: {len(r['logs']['panics'])}; nginx error-log lines: {r['logs']['nginx_error_lines']}", "",
            "| level | count | message |", "|---|---|---|"]
    for m in r["logs"]["warn_error_messages"]:
        out.append(f"| {m['level']} | {m['count']} | {m['message'].replace('|', '/')} |")
    if r["logs"]["errors_unexplained"]:
        out += ["", "Unexplained ERROR lines:", "```"] + [json.dumps(e) for e in r["logs"]["errors_unexplained"][:20]] + ["```"]
    if r["logs"]["panics"]:
        out += ["", "Panics:", "```"] + [json.dumps(e) for e in r["logs"]["panics"][:20]] + ["```"]
    out += ["", "## Stuck clients", "", f"{r['stuck']['total']} silences longer than a heartbeat interval + 5 s; "
            f"{r['stuck']['explained']} during a stall of the client's replica."]
    if r["stuck"]["unexplained"]:
        out += ["```"] + [json.dumps(e) for e in r["stuck"]["unexplained"][:20]] + ["```"]
    out += ["", "## Bad input and stopped readers", "",
            f"{r['bad_input']['bursts']} bursts; unexpected answers: {len(r['bad_input']['unexpected'])}; "
            f"cases cut by a replica or Redis fault (connection closed 1006 or refused, or `unavailable` / 1013 "
            f"during a failover): {len(r['bad_input'].get('cut_by_a_fault', []))}"]
    if r["bad_input"]["unexpected"]:
        out += ["```"] + [json.dumps(e) for e in r["bad_input"]["unexpected"][:20]] + ["```"]
    if r["bad_input"].get("cut_by_a_fault"):
        out += ["", "Cut by a fault:", "```"] + [json.dumps(e) for e in r["bad_input"]["cut_by_a_fault"][:20]] + ["```"]
    out += ["", f"Stopped readers: {len(r['stopped_readers'])}; gateway slow-consumer closes: {r['slow_consumer_closes']:.0f}", "```"]
    out += [json.dumps(e) for e in r["stopped_readers"]] + ["```"]
    out += ["", "## Collector", "", "```", json.dumps(r.get("collector"), indent=1), "```"]
    if r["lost_events"]:
        out += ["", "## Lost messages", "", "```"] + [json.dumps(e) for e in r["lost_events"][:50]] + ["```"]
    if r["plots"]:
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in r["plots"]]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    ok = write(Path(sys.argv[1]))
    print(f"{'PASSED' if ok else 'FAILED'}: {Path(sys.argv[1]) / 'report.md'}")
    sys.exit(0 if ok else 1)
