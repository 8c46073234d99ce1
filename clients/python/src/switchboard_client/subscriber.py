"""The async subscriber: switchboard's native protocol (docs/PROTOCOL.md) on
asyncio and ``websockets``.

One WebSocket to any gateway replica; subscriptions that survive lost
connections: the client reconnects with the protocol's algorithm (full jitter,
base 0.5 s, cap 30 s), on any replica, with ``?session=`` (the gateway restores
the subscriptions from their acknowledged offsets) and ``since`` (the last
offset processed), and delivers every message once: duplicates of a replay are
dropped by offset, and a gap the history cannot cover is never silent — a
``Resync`` event says so and the channel starts over from its snapshot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .errors import AuthError, ClosedError, ForbiddenError, SwitchboardError, error_for
from .fossil import DeltaError, apply_delta

#: Close codes after which reconnecting cannot help.
FINAL_CLOSE = {
    4004: "an administrator disconnected this user",
    1002: "the gateway refused the client's frames (protocol error)",
    1007: "the gateway refused the client's frames (not UTF-8)",
    1009: "the gateway refused a frame as too large",
}

State = Literal["idle", "connecting", "connected", "reconnecting", "closed"]


@dataclass(frozen=True)
class Since:
    """Where a subscription resumes: after ``offset`` of ``epoch``."""

    offset: int
    epoch: str


@dataclass(frozen=True)
class Message:
    """A published message. ``offset`` is None for a plain Redis PUBLISH;
    ``replayed`` when it was read from history (a resume), not live."""

    channel: str
    offset: int | None
    epoch: str | None
    data: Any
    replayed: bool


@dataclass(frozen=True)
class Snapshot:
    """The channel's state. ``start``: the snapshot a (re)started subscription
    begins with; False for the answer to ``refresh()``."""

    channel: str
    offset: int
    epoch: str | None
    data: Any
    start: bool


@dataclass(frozen=True)
class Resync:
    """The channel's continuity was lost: replace your state with the snapshot
    and messages that follow. ``reason``: ``not_recovered`` (the history could
    not cover the gap) or ``new_epoch`` (the channel's history was lost)."""

    channel: str
    reason: str
    epoch: str


Event = Message | Snapshot | Resync


@dataclass(frozen=True)
class Subscribed:
    """A subscription (re)started on a connection."""

    channel: str
    epoch: str
    offset: int
    recovered: bool | None
    restored: bool


@dataclass(frozen=True)
class Connected:
    """A connection's greeting."""

    connection_id: str | None
    replica: str | None
    session: str | None
    resumed: bool
    user: str | None


@dataclass(frozen=True)
class StateChange:
    """The client's connection state, for status displays and logs."""

    state: State
    replica: str | None = None
    attempt: int = 0
    delay: float = 0.0
    reason: str = ""
    code: int | None = None
    error: SwitchboardError | None = None


@dataclass(frozen=True)
class TokenRequest:
    """Why ``get_token`` is called: ``expiring`` (before the expiry) or ``refused``."""

    reason: Literal["expiring", "refused"]
    token: str | None


def token_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT (Unix seconds), or None; the token is not verified here."""
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, (int, float)) else None
    except (IndexError, ValueError, AttributeError):
        return None


def socket_url(url: str) -> str:
    """``http://gw:8080`` and ``ws://gw:8080`` → ``ws://gw:8080/ws``; a ``ws(s)://``
    URL with a path stays as it is."""
    parts = urlsplit(url)
    scheme = parts.scheme
    path = parts.path
    if scheme in ("http", "https"):
        scheme = "wss" if scheme == "https" else "ws"
        path = path.rstrip("/") + "/ws"
    elif path in ("", "/"):
        path = "/ws"
    if scheme not in ("ws", "wss"):
        raise SwitchboardError(f"not a gateway URL: {url}", code="bad_url")
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class _End:
    def __init__(self, error: SwitchboardError | None) -> None:
        self.error = error


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Marks a future's exception as seen (it is still raised to whoever awaits it)."""
    if not future.cancelled():
        future.exception()


class Subscription:
    """One channel of a Client, until unsubscribed. Iterate it (``async for``)
    for ``Message``, ``Snapshot`` and ``Resync`` events, in order.

    With ``auto_ack`` (the default) a message counts as processed, and is
    acknowledged, when the iteration asks for the next event; else call ``ack()``.
    """

    def __init__(
        self,
        client: Client,
        channel: str,
        since: Since | None,
        filters: Mapping[str, Any] | None,
        auto_ack: bool,
        max_queue: int,
        delta: Literal["fossil"] | None = None,
    ) -> None:
        self.client = client
        self.channel = channel
        self.filters = dict(filters) if filters else None
        #: ``"fossil"``: messages come as deltas against the previous one (decoded here).
        self.delta = delta
        self._delta_active = False
        #: The previous message's JSON text (bytes) and offset: what a delta applies to.
        self._base: bytes | None = None
        self._base_offset: int | None = None
        self.auto_ack = auto_ack
        self.state: Literal["pending", "subscribed", "unsubscribed", "failed"] = "pending"
        #: The epoch of ``offset``.
        self.epoch: str | None = since.epoch if since else None
        #: The newest offset delivered (or where the subscription started).
        self.offset: int = since.offset if since else 0
        #: The channel's newest offset when this connection's subscription started.
        self.start_offset = 0
        self.error: SwitchboardError | None = None
        self._live = False
        self._request_id: int | None = None
        self._sent_since = False
        self._start_snapshot = False
        self._acked = 0
        self._processed: int | None = None
        self._max_queue = max_queue
        self._queue: asyncio.Queue[Event | _End] = asyncio.Queue()
        self._space = asyncio.Event()
        self._ready: asyncio.Future[Subscribed] = asyncio.get_running_loop().create_future()
        self._ready.add_done_callback(_retrieve)

    async def ready(self) -> Subscribed:
        """Waits for the first ``subscribed``; raises ForbiddenError, … when refused."""
        return await asyncio.shield(self._ready)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self._processed is not None:
            self.client._queue_ack(self, self._processed)
            self._processed = None
        item = await self._queue.get()
        self._space.set()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later call ends too
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        if isinstance(item, Message) and item.offset is not None and self.auto_ack:
            self._processed = item.offset
        return item

    async def ack(self, offset: int | None = None) -> None:
        """Acknowledges processing up to ``offset`` (default: the newest delivered)."""
        await self.client._ack(self, self.offset if offset is None else offset)

    async def unsubscribe(self) -> None:
        await self.client._unsubscribe(self)

    async def refresh(self) -> None:
        """Asks for the snapshot again; it comes as a ``Snapshot`` with ``start`` False."""
        await self.client._request({"type": "refresh", "channel": self.channel})

    def _decode(self, offset: int, data: str, is_delta: bool) -> Any:
        """The data of a message of a delta subscription: its JSON text whole, or
        a fossil delta against the previous message (raises DeltaError)."""
        if is_delta:
            if self._base is None or self._base_offset != offset - 1:
                raise DeltaError(f"a delta for offset {offset} without its base")
            # The delta's bytes travel one per character (U+0000 to U+00FF).
            try:
                patch = data.encode("latin-1")
            except UnicodeEncodeError as e:
                raise DeltaError("a delta with a character above U+00FF") from e
            whole = apply_delta(self._base, patch)
        else:
            whole = data.encode("utf-8")
        try:
            value = json.loads(whole)
        except ValueError as e:
            raise DeltaError(f"the message at offset {offset} is not JSON once decoded") from e
        self._base = whole
        self._base_offset = offset
        return value

    def _end(self, state: Literal["unsubscribed", "failed"], error: SwitchboardError | None) -> None:
        self.state = state
        self.error = error
        self._live = False
        if not self._ready.done():
            self._ready.set_exception(
                error or SwitchboardError("unsubscribed", code="unsubscribed", channel=self.channel)
            )
        self._queue.put_nowait(_End(error))
        self._space.set()

    async def _put(self, event: Event) -> None:
        """Queues an event; waits while the consumer is ``max_queue`` events
        behind (the gateway then holds the rest, and closes a client that stays
        behind with 4000: the client reconnects and resumes)."""
        while self._queue.qsize() >= self._max_queue and self.state in ("pending", "subscribed"):
            self._space.clear()
            await self._space.wait()
        self._queue.put_nowait(event)


class Client:
    """A connection to switchboard that keeps itself up until closed.

    ``url``: one gateway URL or several (``ws://gw/ws`` or ``http://gw:8080``),
    tried in turn. ``token``: a JWT (sent as ``Authorization: Bearer``);
    ``get_token``: an async callable giving a fresh one before it expires and
    when the gateway refuses it. ``session``: a previous client's session id
    to resume, or False to never use sessions.

    Use it as ``async with Client(...) as client:`` or call ``connect()`` and
    ``close()``.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        get_token: Callable[[TokenRequest], Awaitable[str]] | None = None,
        session: str | bool = True,
        on_state: Callable[[StateChange], None] | None = None,
        on_error: Callable[[SwitchboardError], None] | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        stable_after: float = 60.0,
        flood_delay: float = 60.0,
        refresh_before: float = 30.0,
        ack_interval: float = 1.0,
        max_acks_per_interval: int = 8,
        open_timeout: float = 10.0,
        ping_interval: float | None = 15.0,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise SwitchboardError("no gateway URL", code="bad_url")
        self._urls = [socket_url(u) for u in urls]
        self._url_index = 0
        self._token = token
        self._get_token = get_token
        self._use_sessions = session is not False
        #: The session id (kept across connections; give it to a new Client to resume).
        self.session: str | None = session if isinstance(session, str) else None
        self._on_state = on_state
        self._on_error = on_error
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stable_after = stable_after
        self.flood_delay = flood_delay
        self.refresh_before = refresh_before
        self.ack_interval = ack_interval
        self.max_acks_per_interval = max_acks_per_interval
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.max_message_bytes = max_message_bytes
        self.state: State = "idle"
        self.replica: str | None = None
        self.connection_id: str | None = None
        self.user: str | None = None
        #: Why the client stopped for good.
        self.error: SwitchboardError | None = None
        self._subs: dict[str, Subscription] = {}
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._greeted = False
        self._attempt = 0
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._token_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._connected: asyncio.Future[Connected] | None = None
        self._ack_queue: dict[str, int] = {}
        self._refreshing: asyncio.Task[str] | None = None
        self._auth_failures = 0
        self._force_refresh = False
        self._token_stale = False
        #: The token's expiry (Unix seconds) as the gateway last confirmed it (``token_refreshed``).
        self.expires_at: float | None = None

    # ---------------------------------------------------------------- public

    @property
    def token(self) -> str | None:
        return self._token

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> Connected:
        """Starts the client; returns the first connection's greeting. Raises
        AuthError, ForbiddenError or ClosedError if it stops for good first."""
        if self._connected is None:
            self._connected = asyncio.get_running_loop().create_future()
            self._connected.add_done_callback(_retrieve)
        if self._closed and not self._connected.done():
            raise self.error or ClosedError("the client is closed", code="closed")
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run())
            self._schedule_token_refresh()
        return await asyncio.shield(self._connected)

    def subscribe(
        self,
        channel: str,
        *,
        since: Since | None = None,
        filters: Mapping[str, Any] | None = None,
        auto_ack: bool = True,
        max_queue: int = 10000,
        delta: Literal["fossil"] | None = None,
    ) -> Subscription:
        """Subscribes to ``channel`` (now if connected, else on connection).

        ``delta="fossil"``: the gateway sends each message after the first as a
        fossil delta against the previous one (a fraction of the bytes for a
        snapshot resent every few seconds); events carry the data as published.
        """
        if self._closed:
            raise ClosedError("the client is closed", code="closed")
        if channel in self._subs:
            raise SwitchboardError(
                f"already subscribed to {channel}", code="already_subscribed", channel=channel
            )
        if delta not in (None, "fossil"):
            raise SwitchboardError(
                f'unknown delta format {delta!r}: "fossil" or None', code="invalid_message"
            )
        sub = Subscription(self, channel, since, filters, auto_ack, max_queue, delta)
        self._subs[channel] = sub
        if self._greeted:
            self._spawn(self._send_subscribe(sub))
        return sub

    def subscription(self, channel: str) -> Subscription | None:
        return self._subs.get(channel)

    async def ping(self) -> str:
        """Application ping; returns the gateway's time."""
        frame = await self._request({"type": "ping"})
        return str(frame.get("timestamp", ""))

    async def set_token(self, token: str) -> None:
        """Replaces the token: for the next connections, and now with ``refresh_token`` (same user only)."""
        self._token = token
        self._schedule_token_refresh()
        if self._greeted:
            await self._request({"type": "refresh_token", "token": token})

    async def close(self) -> None:
        """Closes the connection for good; iterations end, pending calls raise ClosedError."""
        if self._closed and self._task is None:
            return
        self._stop(None)
        self._set_state("closed")
        await self._join()

    # ---------------------------------------------------------------- state

    def _set_state(self, state: State, **details: Any) -> None:
        self.state = state
        if self._on_state is not None:
            try:
                self._on_state(StateChange(state=state, replica=self.replica, **details))
            except Exception as e:  # a callback must not stop the client
                self._report(SwitchboardError(f"on_state raised {e!r}", code="listener_failed"))

    def _report(self, error: SwitchboardError) -> None:
        if self._on_error is not None:
            with contextlib.suppress(Exception):
                self._on_error(error)

    def _stop(self, error: SwitchboardError | None) -> None:
        """Stops everything; ``error`` says why (None: close() was called)."""
        if self._closed:
            return
        self._closed = True
        self.error = error
        closed = error or ClosedError("the client was closed", code="closed")
        self._wake.set()
        self._fail_pending(closed)
        for sub in list(self._subs.values()):
            if sub.state in ("pending", "subscribed"):
                sub._end(
                    "failed" if error else "unsubscribed",
                    closed if (error or sub.state == "pending") else None,
                )
        if self._connected is None:
            self._connected = asyncio.get_running_loop().create_future()
            self._connected.add_done_callback(_retrieve)
        if not self._connected.done():
            self._connected.set_exception(closed)
        if self._token_task is not None:
            self._token_task.cancel()
        ws = self._ws
        if ws is not None:
            self._spawn(ws.close(1000))

    def _fail(self, error: SwitchboardError) -> None:
        if self._closed:
            return
        self._stop(error)
        self._set_state("closed", error=error, reason=str(error))
        self._report(error)

    async def _join(self) -> None:
        task = self._task
        self._task = None
        if task is not None and task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, coro: Awaitable[Any]) -> None:
        """Runs ``coro`` in the background; its failure is reported, never lost."""

        async def run() -> None:
            try:
                await coro
            except (SwitchboardError, ConnectionClosed, OSError) as e:
                if (
                    not self._closed
                    and isinstance(e, SwitchboardError)
                    and e.code not in ("disconnected", "closed")
                ):
                    self._report(e)

        task = asyncio.ensure_future(run())
        task.add_done_callback(lambda t: None if t.cancelled() else t.exception())

    def _fail_pending(self, error: SwitchboardError) -> None:
        pending = list(self._pending.values())
        self._pending.clear()
        for future in pending:
            if not future.done():
                future.set_exception(error)

    # ---------------------------------------------------------------- connection loop

    async def _run(self) -> None:
        try:
            while not self._closed:
                code, reason, greeted, up_for = await self._connect_once()
                if self._closed:
                    return
                delay = self._after_close(code, reason, greeted, up_for)
                if delay is None:
                    return
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        except Exception as e:  # a bug here must not leave connect() waiting forever
            self._fail(SwitchboardError(f"the client failed: {e!r}", code="internal"))

    def _url(self) -> str:
        parts = urlsplit(self._urls[self._url_index % len(self._urls)])
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "session"]
        if self._use_sessions and self.session:
            query.append(("session", self.session))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))

    async def _connect_once(self) -> tuple[int, str, bool, float]:
        """One connection, from opening to its end: (close code, reason, greeted, seconds up)."""
        if self._get_token is not None and self._token_needs_refresh():
            try:
                await self._refresh_token()
            except SwitchboardError as e:
                self._fail(e)
                return 1000, str(e), False, 0.0
        self._set_state("connecting", attempt=self._attempt)
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        opened = time.monotonic()
        try:
            async with connect(
                self._url(),
                additional_headers=headers,
                open_timeout=self.open_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=None if self.ping_interval is None else 2 * self.ping_interval,
                close_timeout=2,
                max_size=self.max_message_bytes,
            ) as ws:
                self._ws = ws
                opened = time.monotonic()
                acks = asyncio.create_task(self._ack_loop())
                try:
                    async for raw in ws:
                        await self._on_frame(raw if isinstance(raw, str) else raw.decode("utf-8", "replace"))
                except ConnectionClosed:
                    pass
                finally:
                    acks.cancel()
                code = ws.close_code if ws.close_code is not None else 1006
                return code, ws.close_reason or "", self._greeted, time.monotonic() - opened
        except InvalidStatus as e:
            status = e.response.status_code
            try:
                body = json.loads(e.response.body or b"{}")
            except ValueError:
                body = {}
            error_code = str(body.get("error") or f"http_{status}")
            message = f"the gateway refused the connection ({status} {error_code}): {body.get('message', '')}"
            if status in (401, 403):
                self._on_refused(error_for(error_code, message, status=status))
            return 1006, message, False, 0.0
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as e:
            return 1006, f"cannot connect: {e}", False, 0.0
        finally:
            self._ws = None
            self._greeted = False
            self._fail_pending(SwitchboardError("connection lost", code="disconnected"))
            for sub in self._subs.values():
                sub._live = False

    def _on_refused(self, error: SwitchboardError) -> None:
        if isinstance(error, AuthError) and self._get_token is not None and self._auth_failures < 2:
            self._auth_failures += 1
            self._force_refresh = True
            return
        self._fail(error)

    def _after_close(self, code: int, reason: str, greeted: bool, up_for: float) -> float | None:
        """Applies the reconnect algorithm after a close; the delay, or None to stop."""
        if code in FINAL_CLOSE:
            self._fail(
                ClosedError(f"{FINAL_CLOSE[code]} (close {code}: {reason})", code="closed", close_code=code)
            )
            return None
        if code == 4001 and self._get_token is None:
            self._fail(
                AuthError(
                    "the token expired and the gateway closed the connection (4001)",
                    code="token_expired",
                    close_code=4001,
                )
            )
            return None
        if code == 4001 or self._force_refresh:
            self._force_refresh = False
            self._token_stale = True
        if up_for >= self.stable_after or code == 1001:
            self._attempt = 0
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** min(self._attempt, 30))
        delay = random.uniform(0, ceiling)
        if code == 1008:
            delay += self.flood_delay
        self._attempt += 1
        self._url_index += 1
        self._set_state(
            "reconnecting", attempt=self._attempt, delay=delay, reason=reason or f"closed ({code})", code=code
        )
        return delay

    async def _send(self, message: Mapping[str, Any]) -> bool:
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send(json.dumps(message, separators=(",", ":")))
            return True
        except ConnectionClosed:
            return False

    async def _request(self, message: Mapping[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        if self._closed:
            raise ClosedError("the client is closed", code="closed")
        if not self._greeted:
            raise SwitchboardError("not connected", code="not_connected")
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._pending[request_id] = future
        if not await self._send({**message, "id": request_id}):
            self._pending.pop(request_id, None)
            raise SwitchboardError("connection lost", code="disconnected")
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError as e:
            what = message.get("type")
            raise SwitchboardError(f"no answer to {what} in {timeout} s", code="timeout") from e
        finally:
            self._pending.pop(request_id, None)

    # ---------------------------------------------------------------- frames

    async def _on_frame(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        request_id = frame.get("id")
        future = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        channel = frame.get("channel")
        sub = self._subs.get(channel) if isinstance(channel, str) else None
        if kind == "connection_established":
            await self._on_established(frame)
        elif kind == "subscribed":
            if sub is not None:
                self._on_subscribed(sub, frame, request_id)
            elif request_id is None:
                await self._send({"type": "unsubscribe", "channel": channel})  # restored, no longer wanted
        elif kind == "snapshot":
            if sub is not None and sub._live:
                start = sub._start_snapshot
                sub._start_snapshot = False
                offset = int(frame.get("offset", 0))
                if start:
                    sub.offset = offset
                await sub._put(Snapshot(sub.channel, offset, sub.epoch, frame.get("data"), start))
        elif kind == "message":
            if sub is not None and sub._live:
                await self._on_message(sub, frame)
        elif kind == "unsubscribed":
            if sub is not None and frame.get("reason") == "forbidden":
                error = ForbiddenError(
                    "the token no longer allows this channel", code="forbidden", channel=sub.channel
                )
                self._subs.pop(sub.channel, None)
                sub._end("failed", error)
                self._report(error)
        elif kind == "error":
            self._on_error_frame(sub, frame, request_id, future)
            return
        if future is not None and not future.done():
            future.set_result(frame)

    async def _on_established(self, frame: dict[str, Any]) -> None:
        self._greeted = True
        self._auth_failures = 0
        self.replica = frame.get("replica")
        self.connection_id = frame.get("connection_id")
        self.user = frame.get("user")
        if self._use_sessions and isinstance(frame.get("session"), str):
            self.session = frame["session"]
        resumed = frame.get("resumed") is True
        greeting = Connected(self.connection_id, self.replica, self.session, resumed, self.user)
        self._set_state("connected")
        # Restored subscriptions were queued before this frame was read: a
        # subscribe for one of them is answered already_subscribed.
        for sub in list(self._subs.values()):
            if not sub._live and sub.state in ("pending", "subscribed"):
                await self._send_subscribe(sub)
        if self._connected is not None and not self._connected.done():
            self._connected.set_result(greeting)

    async def _send_subscribe(self, sub: Subscription) -> None:
        request: dict[str, Any] = {"type": "subscribe", "channel": sub.channel}
        if sub.filters:
            request["filters"] = sub.filters
        if sub.delta:
            request["delta"] = sub.delta
        if sub.epoch is not None:
            request["since"] = {"offset": sub.offset, "epoch": sub.epoch}
        sub._sent_since = "since" in request
        sub._request_id = next(self._ids)
        await self._send({**request, "id": sub._request_id})

    def _on_subscribed(self, sub: Subscription, frame: dict[str, Any], request_id: Any) -> None:
        restored = request_id is None
        if not restored and request_id != sub._request_id:
            return
        resumed = restored or sub._sent_since
        epoch = str(frame.get("epoch", ""))
        offset = int(frame.get("offset", 0))
        recovered = frame.get("recovered")
        sub._live = True
        sub._request_id = None
        sub.start_offset = offset
        sub._delta_active = frame.get("delta") == "fossil"
        sub._base = None
        sub._base_offset = None
        resync: str | None = None
        if resumed and recovered is False:
            resync = "not_recovered"
        elif not resumed and sub.epoch is not None and sub.epoch != epoch:
            resync = "new_epoch"
        if not resumed or resync:
            sub.epoch = epoch
            sub.offset = offset
            sub._start_snapshot = True
        else:
            sub.epoch = epoch
        if resync:
            sub._queue.put_nowait(Resync(sub.channel, resync, epoch))
        sub.state = "subscribed"
        if not sub._ready.done():
            sub._ready.set_result(Subscribed(sub.channel, epoch, offset, recovered, restored))

    async def _on_message(self, sub: Subscription, frame: dict[str, Any]) -> None:
        sub._start_snapshot = False
        offset = frame.get("offset")
        data = frame.get("data")
        if sub._delta_active and isinstance(offset, int) and isinstance(data, str):
            try:
                data = sub._decode(offset, data, frame.get("delta") is True)
            except DeltaError as e:
                # Never expected (the gateway sends a delta only after its
                # base): subscribe again after the last message delivered,
                # which then comes whole.
                e.channel = sub.channel
                self._report(e)
                await self._resubscribe(sub)
                return
        if isinstance(offset, int):
            if offset <= sub.offset:
                return  # already delivered: a resume replays from the acknowledged offset
            sub.offset = offset
        replayed = isinstance(offset, int) and offset <= sub.start_offset
        await sub._put(
            Message(
                sub.channel,
                offset if isinstance(offset, int) else None,
                sub.epoch,
                data,
                replayed,
            )
        )

    def _on_error_frame(
        self,
        sub: Subscription | None,
        frame: dict[str, Any],
        request_id: Any,
        future: asyncio.Future[dict[str, Any]] | None,
    ) -> None:
        code = str(frame.get("code", "error"))
        error = error_for(code, str(frame.get("message", code)), channel=frame.get("channel"))
        if sub is not None and request_id is not None and request_id == sub._request_id:
            sub._request_id = None
            if code == "already_subscribed":
                sub._live = True  # restored by the session
                return
            if code in ("unavailable", "rate_limited"):
                self._spawn(self._resubscribe_later(sub))
                return
            self._subs.pop(sub.channel, None)
            sub._end("failed", error)
            self._report(error)
            return
        if future is not None:
            if not future.done():
                future.set_exception(error)
            return
        if code == "token_expired" and self._get_token is not None:
            self._spawn(self._refresh_token(force=True))
            return
        self._report(error)

    async def _resubscribe(self, sub: Subscription) -> None:
        """Subscribes ``sub`` again after its last delivered offset (in order:
        the gateway ends the old subscription first)."""
        sub._live = False
        await self._send({"type": "unsubscribe", "channel": sub.channel})
        await self._send_subscribe(sub)

    async def _resubscribe_later(self, sub: Subscription) -> None:
        await asyncio.sleep(random.uniform(0.5, 2.5))
        if self._greeted and not sub._live and self._subs.get(sub.channel) is sub:
            await self._send_subscribe(sub)

    # ---------------------------------------------------------------- acks

    def _queue_ack(self, sub: Subscription, offset: int) -> None:
        if self._use_sessions and offset > sub._acked:
            self._ack_queue[sub.channel] = offset

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ack_interval)
            if not self._greeted:
                continue
            budget = self.max_acks_per_interval
            for channel, offset in list(self._ack_queue.items())[:budget]:
                del self._ack_queue[channel]
                sub = self._subs.get(channel)
                if sub is None or not sub._live or offset <= sub._acked:
                    continue
                if await self._send({"type": "ack", "channel": channel, "offset": offset}):
                    sub._acked = offset

    async def _ack(self, sub: Subscription, offset: int) -> None:
        if offset <= 0:
            raise SwitchboardError("nothing to acknowledge yet", code="invalid_message", channel=sub.channel)
        if not sub._live:
            raise SwitchboardError(
                "not subscribed on the current connection", code="not_connected", channel=sub.channel
            )
        await self._request({"type": "ack", "channel": sub.channel, "offset": offset})
        sub._acked = max(sub._acked, offset)

    async def _unsubscribe(self, sub: Subscription) -> None:
        if sub.state in ("unsubscribed", "failed"):
            return
        live = sub._live and self._greeted
        self._subs.pop(sub.channel, None)
        self._ack_queue.pop(sub.channel, None)
        sub._end("unsubscribed", None)
        if live:
            with contextlib.suppress(SwitchboardError):
                await self._request({"type": "unsubscribe", "channel": sub.channel})

    # ---------------------------------------------------------------- tokens

    def _token_needs_refresh(self) -> bool:
        if self._token_stale or not self._token:
            return True
        exp = token_expiry(self._token)
        return exp is not None and exp - time.time() < 1.0

    def _schedule_token_refresh(self) -> None:
        if self._token_task is not None:
            self._token_task.cancel()
            self._token_task = None
        if self._get_token is None or not self._token or self._closed:
            return
        exp = token_expiry(self._token)
        if exp is None:
            return
        self._token_task = asyncio.ensure_future(self._token_timer(exp))

    async def _token_timer(self, exp: float) -> None:
        left = exp - time.time()
        await asyncio.sleep(max(0.0, left - min(self.refresh_before, left / 2)))
        self._token_task = None
        while not self._closed:
            try:
                await self._refresh_token()
                return
            except SwitchboardError as e:
                self._report(e)
                await asyncio.sleep(2.0)

    async def _refresh_token(self, force: bool = False) -> str:
        """Gets a token from get_token and, when connected, sends it with ``refresh_token``."""
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)

        async def run() -> str:
            assert self._get_token is not None
            try:
                token = await self._get_token(TokenRequest("refused" if force else "expiring", self._token))
            except Exception as e:
                raise AuthError(f"get_token failed: {e!r}", code="token_unavailable") from e
            if not isinstance(token, str) or not token:
                raise AuthError("get_token gave no token", code="token_unavailable")
            self._token = token
            self._token_stale = False
            if self._greeted:
                frame = await self._request({"type": "refresh_token", "token": token})
                self.expires_at = float(frame.get("expires_at", 0))
            self._schedule_token_refresh()
            return token

        self._refreshing = asyncio.ensure_future(run())
        self._refreshing.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(self._refreshing)
        finally:
            self._refreshing = None
