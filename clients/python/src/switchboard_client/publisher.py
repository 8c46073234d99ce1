"""Publishing: over a gateway's HTTP API (``POST /api/v1/publish``), or directly
on Redis with switchboard's publish script (README, "Redis contract"), for
producers that already hold a Redis connection.

Both give the message the next offset of its channel, append it to the
channel's history, optionally store it as the snapshot, and publish the
``sb1:<offset>:<epoch>:<µs>:<json>`` envelope the gateways relay — exactly what
a gateway's own publish does (``publish.lua`` here is a copy of the gateway's
``src/engine/publish.lua``; a test keeps them identical).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import secrets
import string
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .errors import PublishError, SwitchboardError, error_for

#: The channel grammar of docs/PROTOCOL.md: ASCII letters, digits, ``_ - . : @``.
CHANNEL_CHARS = frozenset(string.ascii_letters + string.digits + "_-.:@")
#: Channels of this namespace are written by the gateways only.
SYSTEM_NAMESPACE = "sys"

PUBLISH_SCRIPT: str = resources.files(__package__).joinpath("publish.lua").read_text(encoding="utf-8")
PUBLISH_SCRIPT_SHA: str = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest()


@dataclass(frozen=True)
class Published:
    """Where a published message landed."""

    channel: str
    offset: int
    epoch: str


def encode(data: Any) -> str:
    """The JSON text of ``data`` as both publishers send it (compact, UTF-8)."""
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise PublishError(f"data is not JSON: {e}", code="invalid_data") from e


def check_channel(channel: str, max_length: int = 128) -> None:
    """Raises PublishError unless ``channel`` is a channel name one may publish on."""
    if not channel or len(channel.encode()) > max_length:
        raise PublishError(
            f"bad channel name {channel!r}: 1 to {max_length} bytes", code="bad_channel", channel=channel
        )
    bad = next((c for c in channel if c not in CHANNEL_CHARS), None)
    if bad is not None:
        raise PublishError(
            f"bad channel name {channel!r}: {bad!r} is not one of ASCII letters, digits, _ - . : @",
            code="bad_channel",
            channel=channel,
        )
    if channel.split(":", 1)[0] == SYSTEM_NAMESPACE and ":" in channel:
        raise PublishError(
            f"channels in the {SYSTEM_NAMESPACE!r} namespace are written by the gateways themselves",
            code="forbidden",
            channel=channel,
        )


#: Longest idempotency key the gateways accept.
MAX_IDEMPOTENCY_KEY = 128


def check_idempotency_key(key: str) -> None:
    """Raises PublishError unless ``key`` is 1 to 128 visible ASCII characters."""
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not all("!" <= c <= "~" for c in key):
        raise PublishError(
            f"bad idempotency key {key!r}: 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters",
            code="bad_idempotency_key",
        )


class HttpPublisher:
    """Publishes through a gateway's ``POST /api/v1/publish``.

    ``url`` is the gateway's base URL (``http://gw:8080``); ``token`` a JWT with
    ``websocket:publish`` and the channel in ``channels`` (or ``websocket:admin``).
    Nothing is retried here. To retry safely, give each message an
    ``idempotency_key``: a publish repeated with the same key on the same
    channel within the gateways' ``--idempotency-window`` (default 5 minutes)
    is answered with the first one's offset and not published again.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/") + "/api/v1/publish"
        self.token = token
        self.timeout = timeout

    async def publish(
        self, channel: str, data: Any, *, snapshot: bool = False, idempotency_key: str | None = None
    ) -> Published:
        flag = "true" if snapshot else "false"
        key = ""
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
            key = f',"idempotency_key":{json.dumps(idempotency_key)}'
        body = f'{{"channel":{json.dumps(channel)},"data":{encode(data)},"snapshot":{flag}{key}}}'
        return await asyncio.to_thread(self._post, channel, body.encode())

    def _post(self, channel: str, body: bytes) -> Published:
        request = urllib.request.Request(self.url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
                return Published(
                    channel=answer["channel"], offset=int(answer["offset"]), epoch=answer["epoch"]
                )
        except urllib.error.HTTPError as e:
            try:
                refusal = json.loads(e.read())
            except ValueError:
                refusal = {}
            code = str(refusal.get("error") or f"http_{e.code}")
            message = f"publish on {channel} refused ({e.code} {code}): {refusal.get('message') or e.reason}"
            raise error_for(code, message, status=e.code, channel=channel, default=PublishError) from e
        except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
            raise PublishError(
                f"cannot publish through {self.url}: {e}", code="unavailable", channel=channel
            ) from e


@dataclass(frozen=True)
class HistoryPolicy:
    """A channel's history: ``size`` messages (``--history-size``), ``ttl`` seconds after the last publish."""

    size: int = 1000
    ttl: float = 600.0


def random_epoch() -> str:
    """A new epoch: 10 random letters and digits, as the gateway makes them."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(10))


class RedisPublisher:
    """Publishes directly on the Redis (or Redis Cluster) the gateways use.

    ``redis`` is a ``redis.asyncio.Redis`` (or ``RedisCluster``) client the
    producer already has; a synchronous ``redis.Redis`` works too. The settings
    must match the gateways': ``prefix`` (``--redis-prefix``), ``history``
    (``--history-size`` / ``--history-ttl``), ``namespace_history``
    (``--namespace-history``) and ``sharded`` (True on a Redis Cluster, where
    the gateways listen with SSUBSCRIBE).
    """

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "switchboard:",
        history: HistoryPolicy | None = None,
        namespace_history: Mapping[str, HistoryPolicy] | None = None,
        sharded: bool = False,
        max_channel_length: int = 128,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise SwitchboardError("the key prefix must not contain '{' or '}'", code="bad_prefix")
        self.redis = redis
        self.prefix = prefix
        self.history = history or HistoryPolicy()
        self.namespace_history = dict(namespace_history or {})
        self.sharded = sharded
        self.max_channel_length = max_channel_length

    def keys(self, channel: str) -> tuple[str, str, str, str]:
        """The channel's keys: meta, history, snapshot, and its pub/sub name (README, "Redis contract")."""
        tag = f"{self.prefix}{{{channel}}}"
        return f"{tag}:meta", f"{tag}:history", f"{tag}:snapshot", tag

    def policy(self, channel: str) -> HistoryPolicy:
        namespace = channel.split(":", 1)[0] if ":" in channel else None
        return self.namespace_history.get(namespace, self.history) if namespace else self.history

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        snapshot: bool = False,
        version: int | None = None,
        idempotency_key: str | None = None,
        idempotency_window: float = 300.0,
    ) -> Published:
        """Publishes ``data`` on ``channel``. With ``snapshot``, also stores it as the
        channel's snapshot; with ``version``, only if newer than the stored one
        (else PublishError with code ``stale_version``). With ``idempotency_key``,
        a publish repeated with the same key on the channel within
        ``idempotency_window`` seconds (a retry after a lost reply, or the Redis
        client resending the script) returns the first one's offset and
        publishes nothing — the gateways' own publishes keep the same records."""
        check_channel(channel, self.max_channel_length)
        policy = self.policy(channel)
        meta, history, snapshot_key, pubsub = self.keys(channel)
        keys = [meta, history, snapshot_key]
        args = [
            pubsub,
            encode(data),
            str(policy.size),
            str(int(policy.ttl * 1000)),
            random_epoch(),
            "1" if snapshot else "0",
            "" if version is None else str(version),
            "spublish" if self.sharded else "publish",
        ]
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
            if idempotency_window <= 0:
                raise PublishError(
                    "idempotency_window must be more than 0 seconds", code="bad_idempotency_key"
                )
            keys.append(f"{self.prefix}{{{channel}}}:idem:{idempotency_key}")
            args += ["", str(max(1, int(idempotency_window * 1000)))]
        try:
            reply = await self._call("evalsha", PUBLISH_SCRIPT_SHA, len(keys), *keys, *args)
        except Exception as e:
            # redis-py raises NoScriptError; other clients pass the NOSCRIPT reply on.
            if type(e).__name__ != "NoScriptError" and "NOSCRIPT" not in str(e):
                raise PublishError(f"publish on {channel}: {e}", code="unavailable", channel=channel) from e
            try:
                reply = await self._call("eval", PUBLISH_SCRIPT, len(keys), *keys, *args)
            except Exception as e2:
                raise PublishError(f"publish on {channel}: {e2}", code="unavailable", channel=channel) from e2
        offset, epoch = int(reply[0]), _text(reply[1])
        if offset < 0:
            raise PublishError(
                f"snapshot version {version} is not newer than the stored {epoch}",
                code="stale_version",
                channel=channel,
            )
        return Published(channel=channel, offset=offset, epoch=epoch)

    async def _call(self, method: str, *args: Any) -> Any:
        result = getattr(self.redis, method)(*args)
        if inspect.isawaitable(result):
            result = await result
        return result


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
