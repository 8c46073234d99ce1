#!/usr/bin/env python3
"""Opens N idle WebSocket connections (answering the server's pings) and reports
the server's RSS and CPU per connection over a measurement window.
  python3 idle_cpu.py N URL SERVER_PID [WINDOW_SECONDS] [SOURCE_IPS]
SOURCE_IPS: how many 127.0.0.x source addresses to spread the clients over.
"""
import asyncio, json, sys, time

import websockets

N = int(sys.argv[1]); URL = sys.argv[2]; PID = int(sys.argv[3])
WINDOW = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
SOURCES = int(sys.argv[5]) if len(sys.argv) > 5 else 1
TICK = 100 / __import__("os").sysconf("SC_CLK_TCK") / 100

def rss_kb():
    for line in open(f"/proc/{PID}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

def cpu_s():
    f = open(f"/proc/{PID}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) * TICK

async def one(i, conns):
    src = f"127.0.0.{1 + i % SOURCES}"
    ws = await websockets.connect(URL, ping_interval=None, max_queue=1, compression=None,
                                  local_addr=(src, 0))
    await ws.recv()
    conns.append(ws)

async def keep_reading(ws):
    try:
        async for _ in ws:
            pass
    except Exception:
        pass

async def main():
    base = rss_kb(); conns = []
    for k in range(0, N, 500):
        await asyncio.gather(*[one(i, conns) for i in range(k, min(N, k + 500))])
    readers = [asyncio.create_task(keep_reading(ws)) for ws in conns]
    await asyncio.sleep(5)
    rss = rss_kb(); c0 = cpu_s(); t0 = time.time()
    await asyncio.sleep(WINDOW)
    c1 = cpu_s(); t1 = time.time()
    open_now = sum(1 for ws in conns if ws.state.name == "OPEN")
    print(json.dumps({
        "conns": len(conns), "still_open": open_now,
        "rss_before_kb": base, "rss_idle_kb": rss,
        "kb_per_conn": round((rss - base) / len(conns), 3),
        "window_s": round(t1 - t0, 1), "server_cpu_s": round(c1 - c0, 3),
        "cpu_us_per_conn_per_s": round((c1 - c0) * 1e6 / (len(conns) * (t1 - t0)), 3),
    }))
    for r in readers:
        r.cancel()

asyncio.run(main())
