#!/usr/bin/env python3
"""Markdown tables from a results directory of the benchmark scripts.

    python3 scripts/bench/summarize.py target/bench-results/20261123

`switchboard bench` reports (*.json) give one table; wsfan results (*.wsfan.json
and the kit's peers-*.jsonl) give another, so figures measured by the same
client sit side by side.
"""
import glob
import json
import os
import sys


def bench_rows(d):
    rows = []
    for path in sorted(glob.glob(os.path.join(d, "*.json"))):
        if path.endswith(".wsfan.json"):
            continue
        try:
            r = json.load(open(path))
        except (OSError, ValueError):
            continue
        if r.get("tool") != "switchboard bench":
            continue
        s, c, dl, st = r["setup"], r["connect"], r["delivery"], r["server_total"]
        lat = dl["latency_ms"]
        pub = r.get("publish") or {}
        rows.append("| {} | {} | {:,} / {:,} | {} | {} | {} | {:,}/{:,} | {} / {} | {:,.0f} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.2f} | {:.2f} | {:.1f} | {:.2f} |".format(
            r.get("label") or os.path.basename(path), s["route"], s["clients"], s["channels"],
            s["rate"], pub.get("messages", 0), c["per_second"] and f"{c['per_second']:,.0f}",
            dl["delivered"], dl["expected"], dl["lost"], dl["duplicated"],
            dl["deliveries_per_s"], lat["p50"], lat["p99"], lat["p999"], lat["max"],
            st["cpu_s_run"], st["rss_per_conn_kb"], st["hwm_kb"] / 1024, r["client"]["cpu_s"]))
    if rows:
        print("| run | route | clients / channels | msg/s | messages | connects/s | delivered | lost / dup | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | server CPU s | RSS KB/conn | server peak MB | client CPU s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print()


def wire_rows(d):
    """Bytes on the wire, for runs that measured them (compression.sh)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(d, "*.json"))):
        try:
            r = json.load(open(path))
        except (OSError, ValueError):
            continue
        w = r.get("wire") if r.get("tool") == "switchboard bench" else None
        if not w or not w.get("messages"):
            continue
        st = r["server_total"]
        rows.append("| {} | {:,} | {}/{:,} | {:,.0f} | {:,.0f} | {:.3f} | {:,} | {:,} | {} | {:.2f} | {:.2f} |".format(
            r.get("label") or os.path.basename(path), r["connect"]["connected"],
            w["deflate_clients"], r["setup"]["clients"], w["bytes_per_client_per_min"],
            w["message_bytes_per_client_per_min"], w["ratio"], w["compressed"], w["deltas"],
            w["bad_deltas"], st["cpu_s_run"], st["rss_per_conn_kb"]))
    if rows:
        print("| run | connected | deflate clients | wire B / client / min | message B / client / min | wire ÷ messages | compressed msgs | deltas | bad deltas | server CPU s | RSS KB/conn |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print()


def wsfan_rows(d):
    results = []
    for path in sorted(glob.glob(os.path.join(d, "*.wsfan.json"))):
        results += [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    for path in sorted(glob.glob(os.path.join(d, "peers-*.jsonl"))):
        results += [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    if not results:
        return
    results.sort(key=lambda r: (r["conns"], r["rate"], r.get("peer", "")))
    print("| server (wsfan) | conns | msg/s | delivered | deliveries/s | p50 ms | p90 ms | p99 ms | max ms | server CPU s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print("| {} | {:,} | {} | {:.1%} | {:,.0f} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {} | {:.0f} |".format(
            r.get("peer", "?"), r["conns"], r["rate"], r["delivery_ratio"], r["deliveries_per_s"],
            r["lat_ms_p50"], r["lat_ms_p90"], r["lat_ms_p99"], r["lat_ms_max"],
            r.get("server_cpu_s", "?"), r.get("server_peak_rss_kb", 0) / 1024))
    print()


def versus_floor(d):
    """Medians of versus_floor.sh's alternating runs, and their ratios to the floor."""
    runs = {}
    for path in glob.glob(os.path.join(d, "vs-*.json")):
        r = json.load(open(path))
        _, server, load, _rep = r["label"].split("-")
        dl = r["delivery"]
        runs.setdefault((load, server), []).append(
            (dl["latency_ms"]["p99"], r["server_total"]["cpu_s_run"], dl["lost"], dl["latency_ms"]["p50"]))
    if not runs:
        return
    med = lambda xs: sorted(xs)[len(xs) // 2]
    print("| load | server | runs | p50 ms (median) | p99 ms (median) | p99 ms (all runs) | CPU s (median) | lost | p99 / floor | CPU / floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (load, server) in sorted(runs, key=lambda k: (k[0], k[1] != "floor", k[1])):
        xs = runs[(load, server)]
        p99, cpu = med([x[0] for x in xs]), med([x[1] for x in xs])
        floor = runs.get((load, "floor"))
        fp99 = med([x[0] for x in floor]) if floor else None
        fcpu = med([x[1] for x in floor]) if floor else None
        print("| {} | {} | {} | {:.1f} | {:.1f} | {} | {:.2f} | {} | {} | {} |".format(
            load, server, len(xs), med([x[3] for x in xs]), p99,
            ", ".join(f"{x[0]:.0f}" for x in xs), cpu, sum(x[2] for x in xs),
            f"{p99 / fp99:.2f}" if fp99 else "-", f"{cpu / fcpu:.2f}" if fcpu else "-"))
    print()


def idle_rows(d):
    """Idle runs (idle.sh): memory and CPU per connection, against issue 4's and 11's targets."""
    rows = []
    for path in sorted(glob.glob(os.path.join(d, "idle-*.json"))):
        r = json.load(open(path))
        if r.get("tool") != "switchboard bench":
            continue
        s, st, c = r["setup"], r["server_total"], r["connect"]
        n, secs = s["clients"], s["run_s"]
        us_per_s = st["cpu_s_run"] / secs / n * 1e6 if n and secs else 0.0
        grown = sum(x["connected"]["rss_kb"] - x["before"]["rss_kb"] for x in r["servers"])
        rows.append("| {:,} | {} | {:.0f} s | {:.1f} MB | **{:.2f} KB** | {:.2f} s | **{:.2f} µs** | {} |".format(
            n, len(r["servers"]), secs, grown / 1024, grown / n if n else 0, st["cpu_s_run"],
            us_per_s, c["per_second"] and f"{c['per_second']:,.0f}"))
    if rows:
        print("| connections | gateways | held | RSS growth (sum) | per connection (≤ 6 KB) | gateway CPU while idle | per connection per second (≤ 1.5 µs) | connects/s |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    versus_floor(sys.argv[1])
    idle_rows(sys.argv[1])
    bench_rows(sys.argv[1])
    wire_rows(sys.argv[1])
    wsfan_rows(sys.argv[1])
