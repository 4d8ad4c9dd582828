"""The byte check the fault tests' concurrent readers rely on (tests/support/readers.py):
it must accept written bytes and holes, and reject anything else."""

from __future__ import annotations

import pytest

from tests.support.readers import check_bytes


def test_written_bytes_and_holes_pass() -> None:
    written = bytes(range(1, 200))
    got = written[:50] + bytes(100) + written[150:180]
    assert check_bytes(got, written, 0, "f") == 80


def test_a_byte_never_written_fails_with_its_offset() -> None:
    written = bytes(range(1, 200))
    got = bytearray(written[10:60])
    got[7] ^= 0xFF
    with pytest.raises(AssertionError, match="byte 17 read as"):
        check_bytes(bytes(got), written[10:], 10, "f")


def test_bytes_past_the_written_end_fail() -> None:
    with pytest.raises(AssertionError, match="past the written end"):
        check_bytes(b"abcd", b"abc", 0, "f")
