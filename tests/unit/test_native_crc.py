"""CRC-32C in `native`: both C paths agree with the pure-Python reference.

The hardware (SSE4.2) path is tested only where the CPU has it; the table
path always runs.  Lengths around the hardware path's lane sizes (3 x 256
and 3 x 8192 bytes) exercise the three-stream combine step.
"""

from __future__ import annotations

import os
from array import array

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import native
from native import reference

IMPLS: list[native.Impl] = ["sw", "auto"]
if native.hw_available():
    IMPLS.append("hw")
FAST = settings(max_examples=150, deadline=None)

# RFC 3720 (iSCSI) appendix B.4 test vectors.
RFC3720 = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize("impl", IMPLS)
def test_check_value_of_123456789_is_e3069283(impl: native.Impl) -> None:
    assert native.crc32c(b"123456789", impl=impl) == 0xE3069283
    assert reference.crc32c(b"123456789") == 0xE3069283


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("data", "crc"), RFC3720)
def test_rfc3720_vectors(impl: native.Impl, data: bytes, crc: int) -> None:
    assert native.crc32c(data, impl=impl) == crc


def test_empty_input_returns_the_seed() -> None:
    for impl in IMPLS:
        assert native.crc32c(b"", impl=impl) == 0
        assert native.crc32c(b"", 0xDEADBEEF, impl=impl) == 0xDEADBEEF


@pytest.mark.parametrize("impl", IMPLS)
@FAST
@given(data=st.binary(max_size=3000), seed=st.integers(0, 0xFFFFFFFF))
def test_every_impl_matches_the_reference(impl: native.Impl, data: bytes, seed: int) -> None:
    assert native.crc32c(data, seed, impl=impl) == reference.crc32c(data, seed)


@pytest.mark.parametrize(
    "length",
    [767, 768, 769, 775, 24575, 24576, 24577, 24576 + 768 + 13, 65536, 3 * 24576 + 3 * 768 + 7],
)
def test_lane_boundary_lengths_match_the_reference(length: int) -> None:
    data = os.urandom(length + 7)
    expected = reference.crc32c(data[:length])
    for start in (0, 3):  # an unaligned start too
        chunk = memoryview(data)[start : start + length]
        want = expected if start == 0 else reference.crc32c(bytes(chunk))
        for impl in IMPLS:
            assert native.crc32c(chunk, impl=impl) == want, (impl, start)


@FAST
@given(a=st.binary(max_size=2000), b=st.binary(max_size=2000))
def test_seed_chains_like_concatenation(a: bytes, b: bytes) -> None:
    for impl in IMPLS:
        assert native.crc32c(b, native.crc32c(a, impl=impl), impl=impl) == native.crc32c(
            a + b, impl=impl
        )


@FAST
@given(a=st.binary(max_size=500), b=st.binary(max_size=500))
def test_combine_gives_the_crc_of_the_concatenation(a: bytes, b: bytes) -> None:
    whole = reference.crc32c(a + b)
    crc_a, crc_b = reference.crc32c(a), reference.crc32c(b)
    assert native.crc32c_combine(crc_a, crc_b, len(b)) == whole
    assert reference.crc32c_combine(crc_a, crc_b, len(b)) == whole


def test_combine_over_a_large_length() -> None:
    a, b = os.urandom(100), os.urandom(5 << 20)
    assert native.crc32c_combine(native.crc32c(a), native.crc32c(b), len(b)) == native.crc32c(a + b)


def test_named_sw_and_hw_functions_agree() -> None:
    data = os.urandom(100_000)
    assert native.crc32c_sw(data) == native.crc32c(data, impl="auto")
    if native.hw_available():
        assert native.crc32c_hw(data, 7) == native.crc32c_sw(data, 7)


def test_hw_impl_is_refused_when_the_cpu_lacks_sse42(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "hw_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"SSE4\.2"):
        native.crc32c(b"x", impl="hw")


def test_non_byte_buffers_are_read_as_their_raw_bytes() -> None:
    words = np.arange(1000, dtype=np.uint32)
    assert native.crc32c(words.data) == reference.crc32c(words.tobytes())
    assert native.crc32c(bytearray(b"abc")) == native.crc32c(b"abc")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: native.crc32c(b"x", impl="fast"), ValueError),  # type: ignore[arg-type]
        (lambda: native.crc32c(b"x", -1), ValueError),
        (lambda: native.crc32c(b"x", 1 << 32), ValueError),
        (lambda: native.crc32c("text"), TypeError),  # type: ignore[arg-type]
        (lambda: native.crc32c(memoryview(b"abcdef")[::2]), ValueError),
        (lambda: native.checksum_blocks(b"x", 0), ValueError),
        (lambda: native.crc32c_combine(1 << 32, 0, 1), ValueError),
        (lambda: native.crc32c_combine(0, 0, -1), ValueError),
    ],
)
def test_bad_arguments_raise_clear_errors(call: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()  # type: ignore[operator]


# ---- block checksums -----------------------------------------------------


def test_checksum_blocks_gives_one_crc_per_block_and_a_short_last_block() -> None:
    data = os.urandom(3 * 65536 + 100)
    sums = native.checksum_blocks(data)
    assert isinstance(sums, array) and sums.typecode == "I"
    assert list(sums) == [
        native.crc32c(data[0:65536]),
        native.crc32c(data[65536:131072]),
        native.crc32c(data[131072:196608]),
        native.crc32c(data[196608:]),
    ]


def test_checksum_blocks_of_an_empty_buffer_is_empty() -> None:
    assert list(native.checksum_blocks(b"")) == []
    assert native.verify_blocks(b"", []) == -1


@pytest.mark.parametrize("impl", IMPLS)
@FAST
@given(data=st.binary(max_size=2000), block_size=st.integers(1, 700))
def test_checksum_blocks_matches_the_reference(
    impl: native.Impl, data: bytes, block_size: int
) -> None:
    expected = reference.checksum_blocks(data, block_size)
    assert list(native.checksum_blocks(data, block_size, impl)) == expected


@FAST
@given(
    data=st.binary(min_size=1, max_size=2000),
    block_size=st.integers(1, 300),
    where=st.integers(0, 1999),
)
def test_verify_blocks_finds_the_first_corrupted_block(
    data: bytes, block_size: int, where: int
) -> None:
    sums = native.checksum_blocks(data, block_size)
    assert native.verify_blocks(data, sums, block_size) == -1
    assert native.verify_blocks(data, list(sums), block_size) == -1
    where %= len(data)
    bad = bytearray(data)
    bad[where] ^= 0x5A
    for impl in IMPLS:
        assert native.verify_blocks(bad, sums, block_size, impl) == where // block_size
    assert reference.verify_blocks(bytes(bad), list(sums), block_size) == where // block_size


def test_verify_blocks_reports_the_first_of_several_bad_blocks() -> None:
    data = bytearray(os.urandom(10 * 1024))
    sums = native.checksum_blocks(data, 1024)
    data[7 * 1024] ^= 1
    data[3 * 1024 + 5] ^= 1
    assert native.verify_blocks(data, sums, 1024) == 3


def test_verify_blocks_rejects_a_wrong_number_of_checksums() -> None:
    data = os.urandom(5000)
    sums = list(native.checksum_blocks(data, 1000))
    with pytest.raises(ValueError, match="expected 5 checksums"):
        native.verify_blocks(data, sums[:-1], 1000)
    with pytest.raises(ValueError):
        native.verify_blocks(data, [*sums, 0], 1000)
    with pytest.raises(ValueError):
        reference.verify_blocks(data, sums[:-1], 1000)


def test_verify_blocks_rejects_checksums_that_are_not_uint32() -> None:
    with pytest.raises(ValueError, match="uint32"):
        native.verify_blocks(b"abc", [-1])
