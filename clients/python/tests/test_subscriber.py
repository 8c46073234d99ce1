"""The subscriber against real gateway replicas on a real Redis: every message
exactly once across a replica kill, resume from an offset, starting over when
the history cannot cover a gap, filters, acknowledgements and session resume,
delta subscriptions decoded to the published data, token refresh before expiry,
typed errors."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from conftest import Env, run, wait_until

from switchboard_client import (
    AuthError,
    Client,
    ClosedError,
    DeltaError,
    ForbiddenError,
    HttpPublisher,
    Message,
    Resync,
    Since,
    Snapshot,
    StateChange,
    Subscription,
    SwitchboardError,
    TokenRequest,
    token_expiry,
)


class Collector:
    """Reads a subscription in the background."""

    def __init__(self, sub: Subscription) -> None:
        self.events: list[Message | Snapshot | Resync] = []
        self.error: BaseException | None = None
        self.task = asyncio.ensure_future(self._read(sub))

    async def _read(self, sub: Subscription) -> None:
        try:
            async for event in sub:
                self.events.append(event)
        except Exception as e:
            self.error = e

    @property
    def messages(self) -> list[Message]:
        return [e for e in self.events if isinstance(e, Message)]

    @property
    def snapshots(self) -> list[Snapshot]:
        return [e for e in self.events if isinstance(e, Snapshot)]

    @property
    def resyncs(self) -> list[Resync]:
        return [e for e in self.events if isinstance(e, Resync)]

    def offsets(self) -> list[int | None]:
        return [m.offset for m in self.messages]


def test_every_message_exactly_once_across_a_replica_kill(env: Env) -> None:
    a = env.start_gateway("gw-a")
    b = env.start_gateway("gw-b")
    token = env.mint()
    publisher = HttpPublisher(b.url, token=env.publisher_token())
    states: list[StateChange] = []

    async def body() -> None:
        async with Client(
            [a.ws_url, b.ws_url], token=token, backoff_base=0.2, on_state=states.append
        ) as client:
            assert client.replica == "gw-a"
            first_session = client.session
            sub = client.subscribe("orders:kill")
            seen = Collector(sub)
            await sub.ready()
            published = 0
            stop = False

            async def produce() -> None:
                nonlocal published
                while not stop:
                    answer = await publisher.publish("orders:kill", {"i": published + 1})
                    published += 1
                    assert answer.offset == published

            producer = asyncio.ensure_future(produce())
            await wait_until("the first messages", lambda: len(seen.messages) >= 50)
            key = f"switchboard:session:{client.session}"
            await wait_until(
                "the stored session", lambda: int(env.redis_cli("HGET", key, "o:orders:kill") or 0) > 0
            )
            a.kill()
            await wait_until(
                "the other replica", lambda: client.replica == "gw-b" and client.state == "connected", 20
            )
            at_reconnect = published
            await wait_until("more messages", lambda: published >= at_reconnect + 50)
            stop = True
            await producer
            await wait_until("every message", lambda: len(seen.messages) >= published, 30)
            offsets = seen.offsets()
            assert offsets == list(range(1, published + 1)), "each offset once, in order"
            assert [m.data["i"] for m in seen.messages] == offsets
            assert seen.resyncs == []
            assert client.session == first_session
            assert any(s.state == "reconnecting" and s.code == 1006 for s in states)
            connected = [s for s in states if s.state == "connected"]
            assert [s.replica for s in connected] == ["gw-a", "gw-b"]

    run(body)


def test_resume_from_an_offset_and_start_over_when_not_recovered(env: Env) -> None:
    gw = env.start_gateway("gw-a")
    token = env.mint()
    publisher = HttpPublisher(gw.url, token=env.publisher_token())

    async def body() -> None:
        last = None
        for i in range(1, 6):
            last = await publisher.publish("orders:resume", {"i": i}, snapshot=i == 5)
        assert last is not None and last.offset == 5
        async with Client(gw.url, token=token) as client:
            sub = client.subscribe("orders:resume", since=Since(2, last.epoch))
            seen = Collector(sub)
            started = await sub.ready()
            assert started.recovered is True
            await wait_until("the replay", lambda: len(seen.messages) == 3)
            assert seen.offsets() == [3, 4, 5]
            assert all(m.replayed for m in seen.messages)
            assert seen.snapshots == []
            await publisher.publish("orders:resume", {"i": 6})
            await wait_until("the live message", lambda: len(seen.messages) == 4)
            assert seen.messages[3].offset == 6 and not seen.messages[3].replayed

            await publisher.publish("orders:resume-2", {"v": 1}, snapshot=True)
            other = client.subscribe("orders:resume-2", since=Since(3, "not-this-one"))
            seen2 = Collector(other)
            assert (await other.ready()).recovered is False
            await wait_until("the snapshot", lambda: len(seen2.snapshots) == 1)
            assert [r.reason for r in seen2.resyncs] == ["not_recovered"]
            assert isinstance(seen2.events[0], Resync), "the resync comes before the new state"
            assert seen2.snapshots[0].data == {"v": 1} and seen2.snapshots[0].start

    run(body)


def test_history_lost_while_disconnected_starts_over_from_the_new_snapshot(env: Env) -> None:
    gw = env.start_gateway("gw-a")
    token = env.mint()
    publisher_token = env.publisher_token()

    async def body() -> None:
        nonlocal gw
        await HttpPublisher(gw.url, token=publisher_token).publish("orders:lost", {"v": 1}, snapshot=True)
        async with Client(gw.url, token=token, backoff_base=0.1, backoff_cap=0.5) as client:
            sub = client.subscribe("orders:lost")
            seen = Collector(sub)
            await wait_until("the first snapshot", lambda: len(seen.snapshots) == 1)
            epoch = sub.epoch
            port = gw.port
            gw.kill()
            env.redis_cli("FLUSHALL")
            gw = env.start_gateway("gw-a2", port=port)
            fresh = await HttpPublisher(gw.url, token=publisher_token).publish(
                "orders:lost", {"v": 2}, snapshot=True
            )
            assert fresh.epoch != epoch
            # The client may come back before {"v": 2} is published (then it is
            # the first message of the new epoch) or after (then the snapshot).
            await wait_until(
                "the new state",
                lambda: len(seen.snapshots) == 2 or any(m.data == {"v": 2} for m in seen.messages),
                20,
            )
            assert [r.reason for r in seen.resyncs] == ["not_recovered"]
            if len(seen.snapshots) == 2:
                assert seen.snapshots[1].data == {"v": 2}
            else:
                assert [(m.offset, m.data) for m in seen.messages] == [(1, {"v": 2})]
            assert sub.epoch == fresh.epoch
            await HttpPublisher(gw.url, token=publisher_token).publish("orders:lost", {"v": 3})
            await wait_until("live after the restart", lambda: any(m.data == {"v": 3} for m in seen.messages))
            assert seen.messages[-1].offset == 2

    run(body)


def test_filters_select_messages_on_the_gateway(env: Env) -> None:
    gw = env.start_gateway("gw-a")
    token = env.mint()
    publisher = HttpPublisher(gw.url, token=env.publisher_token())

    async def body() -> None:
        async with Client(gw.ws_url, token=token) as client:
            sub = client.subscribe("orders:filtered", filters={"agent_id": "a1", "confidence": {"min": 0.8}})
            seen = Collector(sub)
            await sub.ready()
            items = [
                {"agent_id": "a1", "confidence": 0.9, "n": 1},
                {"agent_id": "a2", "confidence": 0.95, "n": 2},
                {"agent_id": "a1", "confidence": 0.5, "n": 3},
                {"agent_id": "a1", "confidence": 0.8, "n": 4},
                {"agent_id": "a1", "n": 5},
                {"agent_id": "a1", "confidence": 1, "n": 6},
            ]
            for data in items:
                await publisher.publish("orders:filtered", data)
            await wait_until("the matching messages", lambda: any(m.data["n"] == 6 for m in seen.messages))
            assert [m.data["n"] for m in seen.messages] == [1, 4, 6]
            assert seen.offsets() == [1, 4, 6]

    run(body)


def test_acknowledgements_and_session_resume(env: Env) -> None:
    gw = env.start_gateway("gw-a")
    token = env.mint()
    publisher = HttpPublisher(gw.url, token=env.publisher_token())

    async def body() -> None:
        first = Client(gw.ws_url, token=token)
        await first.connect()
        sub = first.subscribe("orders:acks", auto_ack=False)
        seen = Collector(sub)
        await sub.ready()
        for i in range(1, 6):
            await publisher.publish("orders:acks", {"i": i})
        await wait_until("five messages", lambda: len(seen.messages) == 5)
        await sub.ack(3)
        session = first.session
        assert session is not None and len(session) == 32
        key = f"switchboard:session:{session}"
        await wait_until(
            "the stored acknowledgement", lambda: env.redis_cli("HGET", key, "o:orders:acks") == "3"
        )
        await first.close()
        assert seen.error is None and seen.task.done(), "close() ends the iteration"

        second = Client(gw.ws_url, token=token, session=session)
        again = second.subscribe("orders:acks")  # auto_ack
        seen2 = Collector(again)
        greeting = await second.connect()
        assert greeting.resumed is True and greeting.session == session
        restored = await again.ready()
        assert restored.restored is True
        await wait_until("the unacknowledged messages", lambda: len(seen2.messages) == 2)
        assert seen2.offsets() == [4, 5]
        await publisher.publish("orders:acks", {"i": 6})
        await wait_until("the live message", lambda: len(seen2.messages) == 3)
        assert seen2.offsets() == [4, 5, 6]
        # Auto acknowledgement: what the iteration moved past is acknowledged.
        await publisher.publish("orders:acks", {"i": 7})
        await wait_until(
            "the automatic acknowledgement",
            lambda: int(env.redis_cli("HGET", key, "o:orders:acks") or 0) >= 6,
        )
        await second.close()

    run(body)


def test_the_token_is_refreshed_before_it_expires(env: Env) -> None:
    gw = env.start_gateway("gw-a", ("--token-expiry-grace", "1s"))
    token = env.mint(ttl="3s")
    expires = token_expiry(token)
    assert expires is not None
    publisher = HttpPublisher(gw.url, token=env.publisher_token())
    asked: list[tuple[float, TokenRequest]] = []
    states: list[StateChange] = []

    async def get_token(request: TokenRequest) -> str:
        asked.append((time.time(), request))
        return await asyncio.to_thread(env.mint, ttl="1h")

    async def body() -> None:
        async with Client(gw.ws_url, token=token, get_token=get_token, on_state=states.append) as client:
            sub = client.subscribe("orders:refresh")
            seen = Collector(sub)
            await sub.ready()
            await wait_until("the refresh", lambda: client.expires_at is not None, 10)
            assert asked[0][0] < expires and asked[0][1].reason == "expiring"
            assert client.expires_at is not None and client.expires_at > expires + 3000
            await wait_until("the old token's expiry and grace", lambda: time.time() > expires + 2.5, 10)
            await publisher.publish("orders:refresh", {"after": "expiry"})
            await wait_until("a message after the old expiry", lambda: len(seen.messages) == 1)
            assert [s.state for s in states].count("connected") == 1, "never reconnected"

    run(body)


def test_typed_errors(env: Env) -> None:
    gw = env.start_gateway("gw-a", ("--token-expiry-grace", "1s"))
    token = env.mint()

    async def body() -> None:
        bad = Client(gw.ws_url, token="not.a.token", backoff_base=0.05)
        pending = bad.subscribe("orders:x")
        with pytest.raises(AuthError) as refused:
            await bad.connect()
        assert refused.value.code == "invalid_token" and refused.value.status == 401
        assert isinstance(refused.value, SwitchboardError)
        assert bad.state == "closed"
        with pytest.raises(AuthError):
            await pending.ready()
        await bad.close()

        with pytest.raises(AuthError) as missing:
            await Client(gw.ws_url).connect()
        assert missing.value.code == "missing_token"

        async with Client(gw.ws_url, token=token) as client:
            forbidden = client.subscribe("secrets")
            allowed = client.subscribe("orders:ok")
            with pytest.raises(ForbiddenError) as no:
                await forbidden.ready()
            assert no.value.code == "forbidden" and no.value.channel == "secrets"
            assert forbidden.state == "failed"
            with pytest.raises(ForbiddenError):
                async for _ in forbidden:
                    pass
            await allowed.ready()
            assert client.subscription("secrets") is None
            assert client.state == "connected"

        with pytest.raises(ForbiddenError) as publish_forbidden:
            await HttpPublisher(gw.url, token=token).publish("orders:ok", {"x": 1})
        assert publish_forbidden.value.status == 403

        errors: list[SwitchboardError] = []
        short = Client(gw.ws_url, token=env.mint(ttl="2s"), on_error=errors.append)
        await short.connect()
        await wait_until("the closed client", lambda: short.state == "closed", 15)
        assert isinstance(errors[0], AuthError) and errors[0].code == "token_expired", errors
        assert isinstance(short.error, AuthError) and short.error.close_code == 4001
        with pytest.raises(ClosedError):
            short.subscribe("orders:y")
        await short.close()

    run(body)


def federation(n: int, peers: int = 60) -> dict[str, object]:
    """A federation snapshot, as a dashboard backend publishes it every few seconds."""
    return {
        "sequence": n,
        "peers": [
            {
                "id": f"peer-{i}",
                "status": "degraded" if (i + n) % 13 == 0 else "online",
                "latency_ms": 10 + (i * 7 + n) % 90,
                "note": "ŝtation ✓",
            }
            for i in range(peers)
        ],
    }


def test_delta_subscriptions_decode_to_the_published_data_across_a_gap(env: Env) -> None:
    gw = env.start_gateway("gw-a")
    token = env.mint()
    publisher = HttpPublisher(gw.url, token=env.publisher_token())
    script = (Path(__file__).resolve().parents[3] / "src/engine/publish.lua").read_text()

    async def body() -> None:
        async with (
            Client(gw.ws_url, token=token) as plain_client,
            Client(gw.ws_url, token=token) as delta_client,
        ):
            plain = Collector(plain_client.subscribe("orders:fed"))
            delta_sub = delta_client.subscribe("orders:fed", delta="fossil")
            delta = Collector(delta_sub)
            await delta_sub.ready()
            assert delta_sub._delta_active, "the gateway confirmed the delta format"
            await wait_until("plain subscribed", lambda: plain_client.subscription("orders:fed") is not None)
            await plain_client.subscription("orders:fed").ready()  # type: ignore[union-attr]
            for n in range(1, 6):
                await publisher.publish("orders:fed", federation(n), snapshot=True)
            # A gap: 6 is written to history but announced where nobody listens.
            key = "switchboard:{orders:fed}"
            env.redis_cli(
                "EVAL", script, "3", f"{key}:meta", f"{key}:history", f"{key}:snapshot",
                "switchboard:nobody-listens", json.dumps(federation(6), ensure_ascii=False),
                "1000", "600000", "unused", "1", "", "publish",
            )  # fmt: skip
            await publisher.publish("orders:fed", federation(7), snapshot=True)
            await wait_until("both got 7", lambda: 7 in plain.offsets() and 7 in delta.offsets())
            assert delta.offsets() == [1, 2, 3, 4, 5, 6, 7]
            assert [m.data for m in delta.messages] == [m.data for m in plain.messages]
            assert [m.data for m in delta.messages] == [federation(n) for n in range(1, 8)]
            assert delta_sub._base is not None
            assert delta_sub._base.decode() == json.dumps(
                federation(7), separators=(",", ":"), ensure_ascii=False
            )
            # A delta that cannot be applied (simulated once): reported, and the
            # subscription resumes after the last message delivered.
            errors: list[str] = []
            delta_client._report = lambda error: errors.append(error.code)  # type: ignore[method-assign]
            decode = delta_sub._decode

            def broken(offset: int, data: str, is_delta: bool) -> object:
                delta_sub._decode = decode  # type: ignore[method-assign]
                raise DeltaError("simulated")

            delta_sub._decode = broken  # type: ignore[method-assign]
            for n in range(8, 11):
                await publisher.publish("orders:fed", federation(n), snapshot=True)
            await wait_until("delta got 10", lambda: 10 in delta.offsets())
            assert errors == ["bad_delta"]
            assert delta.offsets() == list(range(1, 11))
            assert [m.data for m in delta.messages[7:]] == [federation(n) for n in (8, 9, 10)]

    run(body)
