"""Fossil deltas (https://fossil-scm.org/home/doc/tip/www/delta_format.wiki):
the format of the gateway's ``"delta": "fossil"`` subscriptions.

Applied here in pure Python, not with ``python-fossil-delta`` (a C extension
without wheels for current Pythons), so the library keeps to the standard
library: the format is small and this is tested against the gateway's deltas.
"""

from __future__ import annotations

from .errors import SwitchboardError

_DIGITS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
_VALUE = {d: i for i, d in enumerate(_DIGITS)}


class DeltaError(SwitchboardError):
    """A delta is malformed, or does not belong to the base it was applied to."""

    def __init__(self, why: str) -> None:
        super().__init__(f"cannot apply the delta: {why}", code="bad_delta")


def apply_delta(base: bytes, delta: bytes) -> bytes:
    """Applies a fossil ``delta`` to ``base``, checking the result's checksum."""
    pos = 0

    def number() -> int:
        nonlocal pos
        start, n = pos, 0
        while pos < len(delta) and delta[pos] in _VALUE:
            n = n * 64 + _VALUE[delta[pos]]
            pos += 1
        if pos == start:
            raise DeltaError("a number is missing")
        return n

    def expect(char: bytes) -> None:
        nonlocal pos
        if delta[pos : pos + 1] != char:
            raise DeltaError(f"expected {char!r} at byte {pos}")
        pos += 1

    size = number()
    expect(b"\n")
    out = bytearray()
    while pos < len(delta):
        count = number()
        op = delta[pos : pos + 1]
        pos += 1
        if op == b"@":
            start = number()
            expect(b",")
            if len(out) + count > size or start + count > len(base):
                raise DeltaError("a copy out of bounds")
            out += base[start : start + count]
        elif op == b":":
            if len(out) + count > size or pos + count > len(delta):
                raise DeltaError("an insert out of bounds")
            out += delta[pos : pos + count]
            pos += count
        elif op == b";":
            if len(out) != size:
                raise DeltaError("the result is shorter than announced")
            if count != checksum(out):
                raise DeltaError("checksum mismatch (not this delta's base)")
            return bytes(out)
        else:
            raise DeltaError(f"unknown command {op!r}")
    raise DeltaError("the delta is cut short")


def checksum(data: bytes | bytearray) -> int:
    """Fossil's checksum: the sum of the big-endian 32-bit words, zero-padded."""
    padded = bytes(data) + b"\0" * (-len(data) % 4)
    total = sum(int.from_bytes(padded[i : i + 4], "big") for i in range(0, len(padded), 4))
    return total & 0xFFFFFFFF
