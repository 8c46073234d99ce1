#!/usr/bin/env python3
"""The soak harness (issue 23): an hour of faults under load, or a 5-minute smoke.

    scripts/soak/soak.py --smoke                      # 5 minutes, Redis Cluster
    scripts/soak/soak.py --smoke --redis single       # 5 minutes, one Redis
    scripts/soak/soak.py --duration 1h                # the long run
    scripts/soak/soak.py --duration 1h --redis single

Starts on this machine, on loopback: a Redis Cluster of 3 masters and 3
replicas (or one Redis with an fsynced AOF), 3 gateway replicas behind nginx
(the deploy/nginx configuration), 2 collectors; then the load client and
checker (`cargo run --release --example soak`: ~3,000 clients over every
route, churn, a hot channel and many quiet ones, publishes over HTTP and
straight into Redis); injects faults on a jittered schedule; samples every
process's memory, descriptors and the gateways' metrics; and writes
`report.md`, `report.json` and plots into the results directory
(target/soak/<time>-<topology>/). Exit status 0 when the run passed
(nothing lost, duplicated or mismatched, no unexplained stuck client, ERROR
or panic, every bad input answered as documented), 1 when it did not, 2 when
it could not run. See docs/RELIABILITY.md ("Soak runs").

Needs: redis-server and redis-cli (≥ 7), nginx, cargo. Python 3.9+, standard
library only; the plots use matplotlib from a venv under
~/.cache/switchboard/soak-venv, created on first use (pip, PyPI) — without it
the report is written without plots.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import report as soak_report  # noqa: E402  (scripts/soak/report.py)


def log(msg: str) -> None:
    print(f"soak {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 90s, 5m, 1h)")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


# --- ports -------------------------------------------------------------------------

def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Ports:
    """Free loopback ports, ≤ 45535 so that a cluster node's bus port (+10000) fits."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def one(self, bus: bool = False) -> int:
        for _ in range(10000):
            p = random.randint(20000, 45535)
            if p in self.taken or (bus and p + 10000 in self.taken):
                continue
            if port_free(p) and (not bus or port_free(p + 10000)):
                self.taken.add(p)
                if bus:
                    self.taken.add(p + 10000)
                return p
        raise RuntimeError("no free port")


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except Exception:
        return 0, ""


def metrics(port: int) -> dict[str, float]:
    """A Prometheus text page summed per metric name (labels dropped)."""
    status, body = http_get(port, "/metrics")
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            series, value = line.rsplit(" ", 1)
            name = series.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def proc_stats(pid: int) -> dict | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024
        threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        return {"rss": rss, "fds": fds, "threads": threads, "cpu_s": cpu}
    except (OSError, AttributeError, ValueError, IndexError):
        return None


# --- processes ---------------------------------------------------------------------

class Proc:
    """A process this run started (and only those are ever signalled)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.popen: subprocess.Popen | None = None
        self.incarnation = -1
        self.started_at = 0.0

    def start(self) -> None:
        self.incarnation += 1
        path = self.log_path.with_name(f"{self.log_path.stem}.{self.incarnation}{self.log_path.suffix}")
        out = open(path, "ab")
        env = dict(os.environ)
        env.pop("REDIS_URL", None)
        env.pop("ARK_BASE_PATH", None)
        if self.env:
            env.update(self.env)
        self.popen = subprocess.Popen(
            self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
        out.close()
        self.started_at = time.time()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen and self.popen.poll() is None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def wait(self, timeout: float) -> bool:
        if not self.popen:
            return True
        try:
            self.popen.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        if not self.wait(timeout):
            self.signal(signal.SIGKILL)
            self.wait(5)


class Topology:
    """Redis (cluster or single), gateways, collectors, nginx."""

    def __init__(self, args, run_dir: Path, binary: Path):
        self.args = args
        self.dir = run_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.bin = binary
        self.ports = Ports()
        self.redis: dict[int, Proc] = {}
        self.gateways: list[dict] = []
        self.collectors: list[dict] = []
        self.nginx: Proc | None = None
        self.lb_port = 0
        self.secret = run_dir / "jwt.secret"
        self.secret.write_text(secrets.token_hex(32) + "\n")
        self.cluster = args.redis == "cluster"
        self.lock = threading.RLock()

    # Redis ---------------------------------------------------------------------------
    def redis_argv(self, port: int) -> list[str]:
        d = self.dir / "redis" / str(port)
        d.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
                "--save", "", "--logfile", ""]
        if self.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "2000", "--appendonly", "no"]
        else:
            # A crash (SIGKILL) loses nothing acknowledged: every write is fsynced first.
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        return argv

    def cli(self, port: int, *cmd: str, timeout: float = 5.0) -> str:
        try:
            r = subprocess.run(["redis-cli", "-p", str(port), *cmd], capture_output=True,
                               text=True, timeout=timeout)
            return r.stdout.strip()
        except subprocess.TimeoutExpired:
            return ""

    def start_redis(self) -> None:
        n = 6 if self.cluster else 1
        for _ in range(n):
            port = self.ports.one(bus=self.cluster)
            p = Proc(f"redis-{port}", self.redis_argv(port), self.logs / f"redis-{port}.log")
            p.start()
            self.redis[port] = p
        for port in self.redis:
            wait_until(lambda: self.cli(port, "ping") == "PONG", 15, f"redis on {port}")
        if self.cluster:
            addrs = [f"127.0.0.1:{p}" for p in self.redis]
            r = subprocess.run(["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "1",
                                "--cluster-yes"], capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {r.stdout}{r.stderr}")
            wait_until(self.cluster_healthy, 60, "a healthy Redis Cluster")

    def nodes(self) -> list[dict]:
        for port, p in self.redis.items():
            if not p.alive():
                continue
            text = self.cli(port, "cluster", "nodes")
            if not text:
                continue
            out = []
            for line in text.splitlines():
                f = line.split()
                if len(f) < 8:
                    continue
                out.append({
                    "id": f[0], "port": int(f[1].split("@")[0].rsplit(":", 1)[1]),
                    "master": "master" in f[2], "fail": "fail" in f[2] and "fail?" not in f[2],
                    "master_id": None if f[3] == "-" else f[3],
                    "slots": [s for s in f[8:] if not s.startswith("[")],
                })
            return out
        return []

    def cluster_healthy(self) -> bool:
        if not self.cluster:
            p = next(iter(self.redis))
            return self.cli(p, "ping") == "PONG"
        live = [p for p, proc in self.redis.items() if proc.alive()]
        if len(live) != len(self.redis):
            return False
        if not all("cluster_state:ok" in self.cli(p, "cluster", "info") for p in live):
            return False
        nodes = self.nodes()
        masters = [n for n in nodes if n["master"] and not n["fail"] and n["slots"]]
        if len(masters) != 3:
            return False
        for m in masters:
            replicas = [n for n in nodes if not n["master"] and n["master_id"] == m["id"] and not n["fail"]]
            if not any("master_link_status:up" in self.cli(r["port"], "info", "replication") for r in replicas):
                return False
        return True

    def redis_urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{p}" for p in self.redis]

    def redis_flags(self) -> list[str]:
        if self.cluster:
            return ["--redis-cluster-urls", ",".join(self.redis_urls())]
        return ["--redis-url", self.redis_urls()[0]]

    # Gateways ------------------------------------------------------------------------
    def start_gateways(self) -> None:
        for i in range(3):
            name = f"gw-{i + 1}"
            port, admin = self.ports.one(), self.ports.one()
            argv = [str(self.bin), "--log-format", "json", "gateway",
                    "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
                    *self.redis_flags(), "--jwt-secret-file", str(self.secret),
                    "--replica-id", name, "--max-connections", "10000",
                    "--drain-window", "5s", "--drain-deadline", "12s",
                    "--api-key", "soak-admin"]
            if self.cluster:
                argv += ["--redis-wait-replicas", "1"]
            proc = Proc(name, argv, self.logs / f"{name}.log", env={"SWITCHBOARD_LOG_LEVEL": "info"})
            self.gateways.append({"name": name, "port": port, "admin": admin, "proc": proc})
            proc.start()
        for g in self.gateways:
            self.wait_ready(g)

    def wait_ready(self, g: dict, timeout: float = 40) -> float:
        t0 = time.time()
        wait_until(lambda: http_get(g["admin"], "/health/ready")[0] == 200, timeout,
                   f"{g['name']} ready", lambda: g["proc"].alive())
        return time.time() - t0

    # Collectors -----------------------------------------------------------------------
    def start_collectors(self) -> None:
        for i in range(2):
            name = f"collector-{i + 1}"
            port = self.ports.one()
            argv = [str(self.bin), "--log-format", "json", "collector",
                    "--listen", f"127.0.0.1:{port}", *self.redis_flags(), "--replica-id", name]
            proc = Proc(name, argv, self.logs / f"{name}.log", env={"SWITCHBOARD_LOG_LEVEL": "info"})
            self.collectors.append({"name": name, "port": port, "proc": proc})
            proc.start()
        for c in self.collectors:
            wait_until(lambda c=c: http_get(c["port"], "/health/live")[0] == 200, 30, f"{c['name']} live",
                       lambda c=c: c["proc"].alive())

    def collector_leader(self) -> dict | None:
        for c in self.collectors:
            if c["proc"].alive() and metrics(c["port"]).get("switchboard_collector_leader") == 1:
                return c
        return None

    # nginx ---------------------------------------------------------------------------
    def start_nginx(self) -> None:
        nginx = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)
        if not nginx:
            raise RuntimeError("nginx not found (apt-get install nginx)")
        self.lb_port = self.ports.one()
        d = self.dir / "nginx"
        (d / "temp").mkdir(parents=True, exist_ok=True)
        deploy = ROOT / "deploy" / "nginx"
        lines = [
            "# Written by scripts/soak/soak.py; the proxy settings are deploy/nginx/*.conf.",
            "daemon off;", "worker_processes 1;", "worker_rlimit_nofile 19000;",
            f"pid {d}/nginx.pid;", f"error_log {self.logs}/nginx-error.log warn;",
        ]
        if os.getuid() == 0:
            lines.append("user root root;")
        lines += ["events { worker_connections 16000; }", "http {", "  access_log off;"]
        lines += [f"  {t}_temp_path {d}/temp/{t};" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]
        lines += [f"  include {deploy}/websocket-map.conf;", "  upstream switchboard_gateways {", "    least_conn;"]
        lines += [f"    server 127.0.0.1:{g['port']} max_fails=0;" for g in self.gateways]
        lines += ["  }", "  server {", f"    listen 127.0.0.1:{self.lb_port} backlog=4096;",
                  # Which replica served a connection (the harness's clients read it).
                  "    add_header X-Soak-Upstream $upstream_addr always;",
                  f"    include {deploy}/gateway-proxy.conf;", "  }", "}"]
        conf = d / "nginx.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.nginx = Proc("nginx", [nginx, "-p", str(d), "-e", str(self.logs / "nginx-error.log"), "-c", str(conf)],
                          self.logs / "nginx.log")
        self.nginx.start()
        wait_until(lambda: http_get(self.lb_port, "/nginx-health")[0] == 200, 15, "nginx", self.nginx.alive)

    def processes(self) -> list[tuple[str, str, Proc]]:
        out = [("gateway", g["name"], g["proc"]) for g in self.gateways]
        out += [("collector", c["name"], c["proc"]) for c in self.collectors]
        out += [("redis", str(p), proc) for p, proc in self.redis.items()]
        if self.nginx:
            out.append(("nginx", "nginx", self.nginx))
        return out

    def stop(self) -> None:
        for g in self.gateways:
            g["proc"].signal(signal.SIGCONT)
        for _, _, p in self.processes():
            if p is not self.nginx and p not in self.redis.values():
                p.stop()
        if self.nginx:
            self.nginx.stop()
        for p in self.redis.values():
            p.stop()


def wait_until(pred, timeout: float, what: str, alive=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited")
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what} ({timeout:.0f} s)")


# --- faults ------------------------------------------------------------------------

SCHEDULES = {
    # kind: (interval s, jitter fraction, first after warm-up s)
    "full": {
        "replica_kill": (120, 0.3, 30),
        "replica_stall": (180, 0.3, 75),
        "rolling_restart": (600, 0.2, 270),
        "redis_master_kill": (300, 0.3, 120),
        "collector_leader_kill": (240, 0.3, 90),
        "stopped_reader": (150, 0.3, 45),
        "bad_input": (90, 0.3, 15),
    },
    "smoke": {
        "replica_kill": (70, 0.2, 15),
        "replica_stall": (90, 0.2, 40),
        "rolling_restart": (1000, 0.0, 120),
        "redis_master_kill": (110, 0.2, 30),
        "collector_leader_kill": (1000, 0.0, 70),
        "stopped_reader": (1000, 0.0, 20),
        "bad_input": (60, 0.2, 10),
    },
}


class Faults:
    def __init__(self, topo: Topology, run_dir: Path, client_stdin, schedule: dict, witness: str,
                 keep_witness: bool = False):
        self.topo = topo
        self.path = run_dir / "faults.jsonl"
        self.client_stdin = client_stdin
        self.schedule = schedule
        self.witness = witness
        self.keep_witness = keep_witness
        self.gateway_lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.threads: list[threading.Thread] = []
        self.write_lock = threading.Lock()
        self.failures: list[str] = []

    def record(self, kind: str, target: str, start: float, end: float, **detail) -> None:
        line = {"kind": kind, "target": target, "start": start, "end": end, **detail}
        with self.write_lock, open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
        log(f"fault {kind} {target} ({end - start:.1f} s) {json.dumps(detail) if detail else ''}")

    def command(self, cmd: dict) -> None:
        try:
            self.client_stdin.write((json.dumps(cmd) + "\n").encode())
            self.client_stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def run(self, start_at: float, stop_at: float) -> None:
        for kind, (interval, jitter, first) in self.schedule.items():
            t = threading.Thread(target=self.loop, args=(kind, interval, jitter, start_at + first, stop_at),
                                 daemon=True)
            t.start()
            self.threads.append(t)

    def sleep_until(self, t: float) -> bool:
        while time.time() < t:
            if self.stop_flag.wait(min(1.0, max(0.0, t - time.time()))):
                return False
        return True

    def loop(self, kind, interval, jitter, first_at, stop_at) -> None:
        next_at = first_at
        while self.sleep_until(next_at) and time.time() < stop_at:
            try:
                getattr(self, kind)()
            except Exception as e:  # a fault that could not be carried out is a harness failure
                self.failures.append(f"{kind}: {e}")
                log(f"fault {kind} failed: {e}")
            next_at = time.time() + interval * random.uniform(1 - jitter, 1 + jitter)

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=180)

    # The faults --------------------------------------------------------------------
    def pick_gateway(self) -> dict:
        choices = [g for g in self.topo.gateways if g["name"] != self.witness] or self.topo.gateways
        return random.choice(choices)

    def replica_kill(self) -> None:
        with self.gateway_lock:
            g = self.pick_gateway()
            t0 = time.time()
            g["proc"].signal(signal.SIGKILL)
            g["proc"].wait(10)
            time.sleep(random.uniform(2, 5))
            g["proc"].start()
            ready = self.topo.wait_ready(g)
            self.record("replica_kill", g["name"], t0, time.time(), ready_after_s=round(ready, 2))

    def replica_stall(self) -> None:
        with self.gateway_lock:
            g = self.pick_gateway()
            stall = random.uniform(5, 10)
            t0 = time.time()
            g["proc"].signal(signal.SIGSTOP)
            time.sleep(stall)
            g["proc"].signal(signal.SIGCONT)
            self.record("replica_stall", g["name"], t0, time.time(), stalled_s=round(stall, 2))

    def rolling_restart(self) -> None:
        with self.gateway_lock:
            t0 = time.time()
            steps = []
            rolled = [g for g in self.topo.gateways if not (self.keep_witness and g["name"] == self.witness)]
            for g in rolled:
                s0 = time.time()
                g["proc"].signal(signal.SIGTERM)
                clean = g["proc"].wait(20)
                if not clean:
                    g["proc"].signal(signal.SIGKILL)
                    g["proc"].wait(5)
                drained = time.time() - s0
                code = g["proc"].popen.returncode
                g["proc"].start()
                ready = self.topo.wait_ready(g)
                steps.append({"gateway": g["name"], "drained_s": round(drained, 2), "exit_code": code,
                              "ready_s": round(ready, 2)})
                time.sleep(2)
            self.record("rolling_restart", "all" if len(rolled) == len(self.topo.gateways) else
                        ",".join(g["name"] for g in rolled), t0, time.time(), steps=steps)

    def redis_master_kill(self) -> None:
        topo = self.topo
        if not topo.cluster:
            port = next(iter(topo.redis))
            proc = topo.redis[port]
            t0 = time.time()
            proc.signal(signal.SIGKILL)
            proc.wait(10)
            time.sleep(random.uniform(1, 3))
            proc.start()
            wait_until(lambda: topo.cli(port, "ping") == "PONG", 30, "redis back")
            self.record("redis_kill", str(port), t0, time.time())
            return
        # Only a master whose replica has finished its sync can fail over.
        wait_until(topo.cluster_healthy, 120, "a healthy cluster before killing a master")
        masters = [n for n in topo.nodes() if n["master"] and n["slots"] and not n["fail"]]
        victim = random.choice(masters)
        port = victim["port"]
        t0 = time.time()
        topo.redis[port].signal(signal.SIGKILL)
        topo.redis[port].wait(10)

        def failed_over() -> bool:
            nodes = topo.nodes()
            return any(n["master"] and not n["fail"] and n["slots"] == victim["slots"] and n["port"] != port
                       for n in nodes) and all(
                "cluster_state:ok" in topo.cli(p, "cluster", "info") for p, pr in topo.redis.items() if pr.alive())
        wait_until(failed_over, 60, f"failover of master {port}")
        t_failover = time.time()
        time.sleep(random.uniform(2, 5))
        topo.redis[port].start()
        wait_until(topo.cluster_healthy, 120, f"node {port} back as a replica")
        self.record("redis_master_kill", str(port), t0, time.time(),
                    failover_s=round(t_failover - t0, 2), rejoined_s=round(time.time() - t0, 2))

    def collector_leader_kill(self) -> None:
        leader = None
        deadline = time.time() + 30
        while leader is None and time.time() < deadline:
            leader = self.topo.collector_leader()
            if leader is None:
                time.sleep(1)
        if leader is None:
            raise RuntimeError("no collector is leader")
        t0 = time.time()
        leader["proc"].signal(signal.SIGKILL)
        leader["proc"].wait(10)
        # The other collector takes over once the lease runs out (--lease-ttl, 10 s).
        new = None
        deadline = time.time() + 30
        while new is None and time.time() < deadline:
            new = self.topo.collector_leader()
            time.sleep(0.5)
        takeover = time.time() - t0
        time.sleep(random.uniform(1, 3))
        leader["proc"].start()
        c = leader
        wait_until(lambda: http_get(c["port"], "/health/live")[0] == 200, 30, "collector back")
        if new is None:
            raise RuntimeError(f"no collector took over from {leader['name']} within 30 s")
        self.record("collector_leader_kill", leader["name"], t0, time.time(),
                    new_leader=new["name"], takeover_s=round(takeover, 2))

    def stopped_reader(self) -> None:
        hold = 60
        t0 = time.time()
        self.command({"cmd": "stop_reading", "secs": hold})
        self.record("stopped_reader", "client", t0, t0 + hold + 30, hold_s=hold)

    def bad_input(self) -> None:
        t0 = time.time()
        self.command({"cmd": "bad_input"})
        self.record("bad_input", "client", t0, t0 + 15)


# --- sampling ------------------------------------------------------------------------

class Sampler(threading.Thread):
    def __init__(self, topo: Topology, run_dir: Path, interval: float = 5.0):
        super().__init__(daemon=True)
        self.topo = topo
        self.path = run_dir / "samples.jsonl"
        self.interval = interval
        self.stop_flag = threading.Event()

    def run(self) -> None:
        with open(self.path, "a") as f:
            while not self.stop_flag.wait(self.interval):
                f.write(json.dumps(self.sample()) + "\n")
                f.flush()

    def sample(self) -> dict:
        t = time.time()
        out = {"t": t, "procs": []}
        for role, name, p in self.topo.processes():
            pid = p.pid
            if pid is None:
                continue
            s = proc_stats(pid)
            if s is None:
                continue
            s.update({"role": role, "name": name, "pid": pid, "incarnation": p.incarnation,
                      "age_s": round(t - p.started_at, 1)})
            if role == "gateway":
                g = next(g for g in self.topo.gateways if g["name"] == name)
                m = metrics(g["admin"])
                s["metrics"] = {k: m.get(k) for k in (
                    "switchboard_connections", "switchboard_subscriptions", "switchboard_channels",
                    "switchboard_runtime_alive_tasks", "process_open_fds", "process_resident_memory_bytes",
                    "switchboard_slow_consumer_closes_total", "switchboard_resyncs_total",
                    "switchboard_gap_fills_total", "switchboard_redis_reconnects_total",
                    "switchboard_redis_errors_total", "switchboard_ready",
                    "switchboard_messages_delivered_total", "switchboard_invalid_messages_total",
                    "switchboard_disconnects_total")}
            elif role == "collector":
                c = next(c for c in self.topo.collectors if c["name"] == name)
                m = metrics(c["port"])
                s["metrics"] = {"switchboard_collector_leader": m.get("switchboard_collector_leader")}
            elif role == "redis":
                info = self.topo.cli(int(name), "info", "memory", timeout=2)
                mm = re.search(r"used_memory:(\d+)", info)
                s["used_memory"] = int(mm.group(1)) if mm else None
                s["keys"] = None
            out["procs"].append(s)
        return out


# --- the run -------------------------------------------------------------------------

def build(args) -> Path:
    binary = ROOT / "target" / "release" / "switchboard"
    client = ROOT / "target" / "release" / "examples" / "soak"
    if not args.no_build:
        log("building the release binary and the soak client (cargo build --release)")
        r = subprocess.run(["cargo", "build", "--release", "--bin", "switchboard", "--example", "soak"],
                           cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError("the build failed")
    for p in (binary, client):
        if not p.exists():
            raise RuntimeError(f"{p} is missing (build with cargo build --release --bin switchboard --example soak)")
    return binary


def interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # SIGTERM and SIGINT stop the run the same way: every process it started is
    # stopped. (A shell that starts the harness in the background ignores SIGINT
    # for it, so `kill <pid>` is the way to stop a run started with `&`.)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--duration", type=parse_duration, default=None,
                    help="how long to publish under faults (e.g. 1h; default 1h, or 5m with --smoke)")
    ap.add_argument("--smoke", action="store_true",
                    help="the 5-minute smoke: every fault at least once on a compressed schedule")
    ap.add_argument("--redis", choices=["cluster", "single"], default="cluster",
                    help="a Redis Cluster of 3 masters + 3 replicas, or one Redis (default cluster)")
    ap.add_argument("--clients", type=int, default=3000, help="clients over every route (default 3000)")
    ap.add_argument("--churn", type=float, default=20.0, help="connections per second from churn (default 20)")
    ap.add_argument("--hot-rate", type=float, default=200.0, help="messages/s on the hot channel (default 200)")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default target/soak/<time>-<redis>)")
    ap.add_argument("--no-faults", action="store_true", help="load only (a baseline)")
    ap.add_argument("--witness", default="gw-1",
                    help="a replica never killed or stalled (only rolled), for a long memory series; '' for none")
    ap.add_argument("--keep-witness", action="store_true",
                    help="do not roll the witness either: one incarnation for the whole run, so its memory "
                         "series spans it (rolling restarts roll the other replicas)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already in target/release")
    ap.add_argument("--no-plot", action="store_true", help="no PNG plots (no venv, no matplotlib)")
    ap.add_argument("--seed", type=int, default=None, help="random seed of the fault schedule")
    args = ap.parse_args()
    duration = args.duration or (300.0 if args.smoke else 3600.0)
    if args.seed is not None:
        random.seed(args.seed)
    for tool in ("redis-server", "redis-cli"):
        if not shutil.which(tool):
            print(f"soak: {tool} not found (apt-get install redis-server)", file=sys.stderr)
            return 2
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run_dir = (args.out or ROOT / "target" / "soak" / f"{stamp}-{args.redis}{'-smoke' if args.smoke else ''}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"results in {run_dir}")
    try:
        binary = build(args)
    except RuntimeError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 2
    topo = Topology(args, run_dir, binary)
    client = None
    faults = None
    sampler = None
    meta = {"duration_s": duration, "smoke": args.smoke, "redis": args.redis, "clients": args.clients,
            "churn": args.churn, "hot_rate": args.hot_rate, "witness": args.witness,
            "keep_witness": args.keep_witness, "started": time.time(),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip(),
            "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()}}
    status = 2
    try:
        log(f"starting {'a Redis Cluster (3 masters + 3 replicas)' if topo.cluster else 'one Redis (AOF, fsync always)'}")
        topo.start_redis()
        log("starting 3 gateways, 2 collectors and nginx")
        topo.start_gateways()
        topo.start_collectors()
        topo.start_nginx()
        meta["ports"] = {"lb": topo.lb_port, "gateways": {g["name"]: [g["port"], g["admin"]] for g in topo.gateways},
                         "redis": list(topo.redis), "collectors": {c["name"]: c["port"] for c in topo.collectors}}
        (run_dir / "run.json").write_text(json.dumps(meta, indent=2))
        sampler = Sampler(topo, run_dir)
        sampler.start()
        argv = [str(ROOT / "target" / "release" / "examples" / "soak"),
                "--lb", f"127.0.0.1:{topo.lb_port}",
                *[a for g in topo.gateways for a in ("--replica", f"{g['name']}=127.0.0.1:{g['port']}")],
                "--jwt-secret-file", str(topo.secret), "--duration", f"{int(duration)}s",
                "--clients", str(args.clients), "--churn", str(args.churn), "--hot-rate", str(args.hot_rate),
                "--out", str(run_dir)]
        if topo.cluster:
            argv += ["--redis-cluster", ",".join(topo.redis_urls()), "--wait-replicas", "1"]
        else:
            argv += ["--redis-url", topo.redis_urls()[0]]
        log(f"starting the load: {args.clients} clients, {duration:.0f} s of publishing")
        client_log = open(run_dir / "logs" / "client.log", "ab")
        client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=client_log, stderr=subprocess.PIPE,
                                  start_new_session=True, env={**os.environ, "RUST_LOG": "warn"})
        t_start = time.time()

        def echo():
            for line in client.stderr:
                client_log.write(line)
                client_log.flush()
                sys.stderr.write(line.decode(errors="replace"))
        threading.Thread(target=echo, daemon=True).start()
        if not args.no_faults:
            schedule = SCHEDULES["smoke" if args.smoke else "full"]
            warmup = 20 if args.smoke else 60
            cooldown = 40 if args.smoke else 120
            faults = Faults(topo, run_dir, client.stdin, schedule, args.witness, args.keep_witness)
            faults.run(t_start + warmup, t_start + duration - cooldown)
        # Wait for the client: publishing, the drain and the final checks.
        while client.poll() is None:
            time.sleep(1)
            if time.time() > t_start + duration + 600:
                log("the client did not finish in time; stopping it")
                client.send_signal(signal.SIGKILL)
        if faults:
            faults.stop()
        meta["ended"] = time.time()
        meta["client_exit"] = client.returncode
        meta["fault_failures"] = faults.failures if faults else []
        meta["machine"]["load_after"] = os.getloadavg()
        (run_dir / "run.json").write_text(json.dumps(meta, indent=2))
        status = 0
    except KeyboardInterrupt:
        log("interrupted")
    except Exception as e:
        log(f"the run failed: {e}")
        meta["error"] = str(e)
        (run_dir / "run.json").write_text(json.dumps(meta, indent=2))
    finally:
        if faults:
            faults.stop_flag.set()
        if sampler:
            sampler.stop_flag.set()
        if client and client.poll() is None:
            client.send_signal(signal.SIGKILL)
        log("stopping the topology")
        topo.stop()
    if status != 0:
        return 2
    log("writing the report")
    passed = soak_report.write(run_dir, plots_wanted=not args.no_plot)
    log(f"report: {run_dir / 'report.md'} ({'PASSED' if passed else 'FAILED'})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
