"""The AI Council's progress events (seed 004) through switchboard.

``broadcast_progress`` replaces the seed's ``websocket_manager.broadcast_progress``:
it publishes ``{"type": event_type, "data": data}`` on the channel
``council:{request_id}``, which the gateway's AI Council route
``/api/v1/ws/{request_id}`` and any native subscriber of that channel receive,
with offsets, history and resume instead of the seed's in-process queues.
"""

from __future__ import annotations

from typing import Any, Protocol

from .publisher import Published


class Publisher(Protocol):
    async def publish(self, channel: str, data: Any, *, snapshot: bool = False) -> Published: ...


def council_channel(request_id: str) -> str:
    """The channel of one council request."""
    return f"council:{request_id}"


async def broadcast_progress(publisher: Publisher, request_id: str, event_type: str, data: Any) -> Published:
    """Publishes one orchestration event of ``request_id`` (``analysis_started``,
    ``subtask_complete``, ``final_response`` …) with an ``HttpPublisher`` or a
    ``RedisPublisher``; returns its offset and epoch."""
    return await publisher.publish(council_channel(request_id), {"type": event_type, "data": data})
