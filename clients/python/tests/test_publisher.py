"""Publishing directly on Redis produces exactly what a gateway's own publish
produces — offsets, epoch, history entries, snapshot, the ``sb1:`` envelope —
and subscribers cannot tell the two apart; broadcast_progress publishes the AI
Council's event shape on ``council:{request_id}``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from conftest import ROOT, Env, run

from switchboard_client import (
    Client,
    HttpPublisher,
    Message,
    PublishError,
    RedisPublisher,
    Since,
    Snapshot,
    broadcast_progress,
)
from switchboard_client.publisher import PUBLISH_SCRIPT

ENVELOPE = re.compile(rb"^sb1:(\d+):([A-Za-z0-9]{10}):(\d+):(.*)$", re.S)
DATA: Any = {
    "text": "d\u00e9j\u00e0 vu \u2713",
    "n": 1.5,
    "list": [1, None, True],
    "nested": {"a": {"b": "c"}},
}


def test_the_packaged_script_is_the_gateways() -> None:
    gateway_script = (ROOT / "src/engine/publish.lua").read_text(encoding="utf-8")
    assert PUBLISH_SCRIPT == gateway_script, (
        "copy src/engine/publish.lua to src/switchboard_client/publish.lua"
    )
    packaged = Path(__file__).parents[1] / "src/switchboard_client/publish.lua"
    assert packaged.read_text(encoding="utf-8") == gateway_script


def test_redis_publishing_is_the_gateways_publishing(env: Env) -> None:
    gw = env.start_gateway("gw-a")
    http = HttpPublisher(gw.url, token=env.publisher_token())
    token = env.mint()

    async def body() -> None:
        r = aioredis.Redis.from_url(env.redis_url)
        direct = RedisPublisher(r)
        pubsub = r.pubsub()
        await pubsub.subscribe("switchboard:{orders:via-http}", "switchboard:{orders:via-redis}")
        try:
            # The same message, once through the gateway, once on Redis.
            a = await http.publish("orders:via-http", DATA, snapshot=True)
            b = await direct.publish("orders:via-redis", DATA, snapshot=True)
            assert (a.offset, b.offset) == (1, 1)
            assert re.fullmatch(r"[A-Za-z0-9]{10}", b.epoch)

            envelopes: dict[bytes, re.Match[bytes]] = {}
            while len(envelopes) < 2:
                m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                if m is not None:
                    match = ENVELOPE.match(m["data"])
                    assert match, m
                    envelopes[m["channel"]] = match
            via_http = envelopes[b"switchboard:{orders:via-http}"]
            via_redis = envelopes[b"switchboard:{orders:via-redis}"]
            assert via_http.group(1) == via_redis.group(1) == b"1"
            assert via_http.group(2).decode() == a.epoch and via_redis.group(2).decode() == b.epoch
            assert via_http.group(4) == via_redis.group(4), "the same JSON text"

            for channel, epoch in (("orders:via-http", a.epoch), ("orders:via-redis", b.epoch)):
                meta = await r.hgetall(f"switchboard:{{{channel}}}:meta")
                assert meta == {b"e": epoch.encode(), b"o": b"1"}
                assert 0 < await r.pttl(f"switchboard:{{{channel}}}:meta") <= 600_000
                assert 0 < await r.pttl(f"switchboard:{{{channel}}}:history") <= 600_000
                snapshot = await r.hgetall(f"switchboard:{{{channel}}}:snapshot")
                assert snapshot == {b"o": b"1", b"e": epoch.encode(), b"d": via_http.group(4), b"v": b""}
            history_http = await r.xrange("switchboard:{orders:via-http}:history")
            history_redis = await r.xrange("switchboard:{orders:via-redis}:history")
            assert [e[0] for e in history_http] == [e[0] for e in history_redis] == [b"1-0"]
            assert history_http[0][1][b"d"] == history_redis[0][1][b"d"] == via_http.group(4)
            assert set(history_http[0][1]) == set(history_redis[0][1]) == {b"d", b"t"}

            # Mixed on one channel: one sequence of offsets in one epoch; a
            # subscriber sees each message once, as published.
            async with Client(gw.ws_url, token=token) as client:
                sub = client.subscribe("orders:mixed")
                await sub.ready()
                published = []
                for i in range(1, 11):
                    publisher = http if i % 2 else direct
                    published.append(await publisher.publish("orders:mixed", {"i": i}, snapshot=i == 10))
                assert [p.offset for p in published] == list(range(1, 11))
                assert len({p.epoch for p in published}) == 1
                got: list[Message] = []
                async for event in sub:
                    assert isinstance(event, Message)
                    got.append(event)
                    if len(got) == 10:
                        break
                assert [m.offset for m in got] == list(range(1, 11))
                assert [m.data for m in got] == [{"i": i} for i in range(1, 11)]

            # A late subscriber starts from the snapshot Redis stored; one
            # resuming from an offset gets the history both wrote.
            async with Client(gw.ws_url, token=token) as client:
                fresh = client.subscribe("orders:mixed")
                first = await fresh.__anext__()
                assert isinstance(first, Snapshot) and first.data == {"i": 10} and first.offset == 10
            async with Client(gw.ws_url, token=token) as client:
                back = client.subscribe("orders:mixed", since=Since(4, published[0].epoch))
                assert (await back.ready()).recovered is True
                replayed = [await back.__anext__() for _ in range(6)]
                assert all(isinstance(e, Message) for e in replayed)
                assert [e.offset for e in replayed if isinstance(e, Message)] == list(range(5, 11))
        finally:
            await pubsub.aclose()
            await r.aclose()

    run(body)


def test_a_publish_repeated_with_its_idempotency_key_is_published_once(env: Env) -> None:
    gw = env.start_gateway("gw-a")
    http = HttpPublisher(gw.url, token=env.publisher_token())

    async def body() -> None:
        r = aioredis.Redis.from_url(env.redis_url)
        direct = RedisPublisher(r)
        try:
            # Through the gateway: the retry is answered with the first offset.
            first = await http.publish("orders:idem", {"n": 1}, idempotency_key="order-1")
            again = await http.publish("orders:idem", {"n": 1}, idempotency_key="order-1")
            assert again == first
            # On Redis, with the same records: a key the gateway saw is known here.
            assert await direct.publish("orders:idem", {"n": 1}, idempotency_key="order-1") == first
            second = await direct.publish("orders:idem", {"n": 2}, idempotency_key="order-2")
            assert await direct.publish("orders:idem", {"n": 2}, idempotency_key="order-2") == second
            assert second.offset == first.offset + 1
            assert await http.publish("orders:idem", {"n": 2}, idempotency_key="order-2") == second
            entries = await r.xrange("switchboard:{orders:idem}:history")
            assert [e[0] for e in entries] == [b"1-0", b"2-0"], "each message once in history"
            for bad in ("", "a b", "k" * 129):
                for publisher in (http, direct):
                    with pytest.raises(PublishError) as refused:
                        await publisher.publish("orders:idem", {}, idempotency_key=bad)
                    assert refused.value.code == "bad_idempotency_key"
        finally:
            await r.aclose()

    run(body)


def test_snapshot_versions_channel_names_and_a_synchronous_client(env: Env) -> None:
    gw = env.start_gateway("gw-a")
    token = env.mint()

    async def body() -> None:
        r = aioredis.Redis.from_url(env.redis_url, decode_responses=True)
        direct = RedisPublisher(r)
        try:
            await direct.publish("orders:versioned", {"v": 5}, snapshot=True, version=5)
            with pytest.raises(PublishError) as stale:
                await direct.publish("orders:versioned", {"v": 4}, snapshot=True, version=5)
            assert stale.value.code == "stale_version"
            await direct.publish("orders:versioned", {"v": 6}, snapshot=True, version=6)
            async with Client(gw.ws_url, token=token) as client:
                sub = client.subscribe("orders:versioned")
                first = await sub.__anext__()
                assert isinstance(first, Snapshot) and first.data == {"v": 6} and first.offset == 2

            for bad in ("", "bad channel", "x" * 129, "sys:stats", "caf\u00e9"):
                with pytest.raises(PublishError) as refused:
                    await direct.publish(bad, {})
                assert refused.value.code in ("bad_channel", "forbidden"), bad
            with pytest.raises(PublishError):
                await direct.publish("orders:nan", {"x": float("nan")})
        finally:
            await r.aclose()

        # A producer with a synchronous redis.Redis client.
        sync = sync_redis.Redis.from_url(env.redis_url)
        try:
            sync.script_flush()  # the first publish falls back from EVALSHA to EVAL
            published = await RedisPublisher(sync).publish("orders:sync", {"ok": True})
            assert published.offset == 1
        finally:
            sync.close()

    run(body)


def test_broadcast_progress_publishes_the_council_shape(env: Env) -> None:
    gw = env.start_gateway("gw-a")
    token = env.mint()
    http = HttpPublisher(gw.url, token=env.publisher_token())

    async def body() -> None:
        r = aioredis.Redis.from_url(env.redis_url)
        try:
            async with Client(gw.ws_url, token=token) as client:
                sub = client.subscribe("council:req-123")
                await sub.ready()
                await broadcast_progress(http, "req-123", "analysis_started", {"intent": "research"})
                await broadcast_progress(
                    RedisPublisher(r), "req-123", "analysis_complete", {"complexity": "complex"}
                )
                events = [await sub.__anext__(), await sub.__anext__()]
                assert all(isinstance(e, Message) for e in events)
                assert [e.data for e in events if isinstance(e, Message)] == [
                    {"type": "analysis_started", "data": {"intent": "research"}},
                    {"type": "analysis_complete", "data": {"complexity": "complex"}},
                ]
                assert [e.offset for e in events if isinstance(e, Message)] == [1, 2]
        finally:
            await r.aclose()

    run(body)
