"""An ESCAI monitoring client written from seed 003's own examples.

The seed documents its client like this ("Client Connection", and the
framework README's `monitor_agent`):

    websocket = await websockets.connect("ws://localhost:8000/ws/monitor/session_1?token=jwt_token")
    await websocket.send(json.dumps({"type": "subscribe", "data": {...}}))
    async for message in websocket:
        data = json.loads(message)

This script does exactly that against a switchboard gateway, with the
`websockets` library the seed uses, and reports to the test that drives it:

    escai_monitor.py URL [SUBSCRIBE_DATA_JSON ...]

Each argument after the URL is the `data` of one `subscribe` message. Every
message received is printed as one line on stdout; each line read on stdin is
sent as it is (the test sends pings and bad input that way). When the
connection ends it prints {"closed": code, "reason": ...} and exits.
"""

import asyncio
import json
import sys

import websockets


async def forward_stdin(websocket):
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        await websocket.send(line.rstrip("\n"))


async def monitor_agent(uri, subscriptions):
    try:
        async with websockets.connect(uri) as websocket:
            for data in subscriptions:
                await websocket.send(json.dumps({"type": "subscribe", "data": data}))
            sender = asyncio.create_task(forward_stdin(websocket))
            try:
                async for message in websocket:
                    data = json.loads(message)
                    print(json.dumps(data), flush=True)
            finally:
                sender.cancel()
            print(json.dumps({"closed": websocket.close_code, "reason": websocket.close_reason}), flush=True)
    except websockets.exceptions.InvalidStatus as e:
        print(json.dumps({"refused": e.response.status_code}), flush=True)
    except websockets.exceptions.ConnectionClosed as e:
        print(json.dumps({"closed": e.rcvd.code if e.rcvd else None, "reason": ""}), flush=True)


if __name__ == "__main__":
    url = sys.argv[1]
    subscriptions = [json.loads(a) for a in sys.argv[2:]]
    asyncio.run(monitor_agent(url, subscriptions))
