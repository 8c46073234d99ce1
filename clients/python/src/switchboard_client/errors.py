"""Exceptions of the switchboard client: one base class, and a subclass per
kind of failure a caller handles differently (a token to renew, a right that
is missing, a client that is closed, a message that was not published)."""

from __future__ import annotations

AUTH_CODES = frozenset(
    {
        "missing_token",
        "invalid_token",
        "token_expired",
        "token_not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "missing_claim",
        "unauthorized",
        "token_unavailable",
    }
)


class SwitchboardError(Exception):
    """Every error of this package.

    ``code`` is the gateway's code (``forbidden``, ``invalid_token``,
    ``bad_filter`` …) or the client's own (``closed``, ``not_connected`` …);
    ``status`` the HTTP status of a refused request; ``channel`` the channel
    concerned; ``close_code`` the WebSocket close code that ended a connection.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int | None = None,
        channel: str | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.channel = channel
        self.close_code = close_code


class AuthError(SwitchboardError):
    """The token is missing, refused or expired (401, ``unauthorized``, close 4001)."""


class ForbiddenError(SwitchboardError):
    """The token does not allow this: a channel, publishing, or connecting (403, ``forbidden``)."""


class ClosedError(SwitchboardError):
    """The client was closed, or the gateway ended it for good (4004, 1002, 1007, 1009)."""


class PublishError(SwitchboardError):
    """A message was not published: bad channel or data, stale snapshot version,
    gateway or Redis unavailable."""


def error_for(
    code: str,
    message: str,
    *,
    status: int | None = None,
    channel: str | None = None,
    close_code: int | None = None,
    default: type[SwitchboardError] = SwitchboardError,
) -> SwitchboardError:
    """The exception class a gateway error code maps to."""
    cls: type[SwitchboardError] = default
    if code in AUTH_CODES or status == 401:
        cls = AuthError
    elif code in ("forbidden", "origin_not_allowed") or status == 403:
        cls = ForbiddenError
    return cls(message, code=code, status=status, channel=channel, close_code=close_code)
