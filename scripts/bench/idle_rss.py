#!/usr/bin/env python3
"""Opens N idle WebSocket connections and reports the server's RSS per connection.
  python3 idle_rss.py N URL SERVER_PID
"""
import asyncio, sys, time, os, json
import websockets
N=int(sys.argv[1]); url=sys.argv[2]; pid=int(sys.argv[3]); srcs=int(sys.argv[4]) if len(sys.argv)>4 else 1
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
async def one(i, conns):
    ws = await websockets.connect(url, ping_interval=None, max_queue=1, compression=None)
    await ws.recv()
    conns.append(ws)
async def main():
    base=rss(pid); conns=[]
    t=time.time()
    for k in range(0,N,500):
        await asyncio.gather(*[one(i,conns) for i in range(k,min(N,k+500))])
    await asyncio.sleep(3)
    after=rss(pid)
    print(json.dumps({"conns":len(conns),"rss_before_kb":base,"rss_after_kb":after,"kb_per_conn":round((after-base)/len(conns),3),"connect_s":round(time.time()-t,1)}))
asyncio.run(main())
