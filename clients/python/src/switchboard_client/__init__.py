"""switchboard client: an async subscriber of switchboard's native WebSocket
protocol (resume on any replica, acknowledgements and sessions, filters, token
refresh) and publishers over the HTTP API or directly on Redis.

    async with Client("ws://gw:8080/ws", token=token) as client:
        sub = client.subscribe("council:req-1")
        async for event in sub:
            ...
"""

from .council import broadcast_progress, council_channel
from .errors import AuthError, ClosedError, ForbiddenError, PublishError, SwitchboardError
from .fossil import DeltaError, apply_delta
from .publisher import HistoryPolicy, HttpPublisher, Published, RedisPublisher
from .subscriber import (
    Client,
    Connected,
    Event,
    Message,
    Resync,
    Since,
    Snapshot,
    StateChange,
    Subscribed,
    Subscription,
    TokenRequest,
    token_expiry,
)

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "Client",
    "ClosedError",
    "Connected",
    "DeltaError",
    "Event",
    "ForbiddenError",
    "HistoryPolicy",
    "HttpPublisher",
    "Message",
    "PublishError",
    "Published",
    "RedisPublisher",
    "Resync",
    "Since",
    "Snapshot",
    "StateChange",
    "Subscribed",
    "Subscription",
    "SwitchboardError",
    "TokenRequest",
    "apply_delta",
    "broadcast_progress",
    "council_channel",
    "token_expiry",
]
