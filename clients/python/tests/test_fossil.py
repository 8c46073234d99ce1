"""The fossil delta decoder against hand-written deltas of the format (the
gateway's own are decoded in test_subscriber.py)."""

from __future__ import annotations

import pytest

from switchboard_client import DeltaError, apply_delta
from switchboard_client.fossil import checksum

DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"


def b64(n: int) -> str:
    out = ""
    while True:
        out = DIGITS[n % 64] + out
        n //= 64
        if n == 0:
            return out


BASE = b"the quick brown fox jumps over the lazy dog; the quick brown fox"
TARGET = b"the quick brown red fox jumps over the lazy dog; the quick brown fox"
SIZE, SUM = b64(len(TARGET)), b64(checksum(TARGET))
# The whole target as one literal.
LITERAL = f"{SIZE}\n{SIZE}:".encode() + TARGET + f"{SUM};".encode()
# Copy 16 bytes from 0, insert "red ", copy the rest from 16.
COPYING = f"{SIZE}\n{b64(16)}@0,4:red {b64(len(TARGET) - 20)}@{b64(16)},{SUM};".encode()


def test_a_literal_and_a_copying_delta_rebuild_the_target() -> None:
    literal = (
        f"{b64(len(TARGET))}\n{b64(len(TARGET))}:".encode() + TARGET + f"{b64(checksum(TARGET))};".encode()
    )
    assert apply_delta(BASE, literal) == TARGET
    copying = (
        f"{b64(len(TARGET))}\n{b64(16)}@0,4:red {b64(len(TARGET) - 20)}@{b64(16)},{b64(checksum(TARGET))};"
    )
    assert apply_delta(BASE, copying.encode()) == TARGET


def test_a_corrupt_delta_or_the_wrong_base_is_refused() -> None:
    copying = (
        f"{b64(len(TARGET))}\n{b64(16)}@0,4:red {b64(len(TARGET) - 20)}@{b64(16)},{b64(checksum(TARGET))};"
    )
    corrupt = bytearray(copying.encode())
    corrupt[-2] ^= 1
    with pytest.raises(DeltaError) as e:
        apply_delta(BASE, bytes(corrupt))
    assert e.value.code == "bad_delta"
    with pytest.raises(DeltaError):
        apply_delta(b"another base entirely, of some length", COPYING)
    with pytest.raises(DeltaError):
        apply_delta(BASE, COPYING[:10])
    with pytest.raises(DeltaError):
        apply_delta(BASE, b"")


def test_checksum_pads_the_last_word_with_zeros() -> None:
    assert checksum(b"") == 0
    assert checksum(b"\x00\x00\x00\x01") == 1
    assert checksum(b"\x01") == 0x01000000
    assert checksum(b"\xff\xff\xff\xff\x00\x00\x00\x02") == 1
