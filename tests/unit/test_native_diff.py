"""Page twin/diff/apply in `native` (TreadMarks multiple-writer diffs).

The C module, the pure-Python reference and the benchmark's numpy version
must produce the same bytes; applying validates the whole diff (or batch)
first and leaves the target untouched when anything is wrong.
"""

from __future__ import annotations

import json
import struct
from argparse import ArgumentParser

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native._native import lib

import native
from native import reference
from native.reference import DiffError, DiffErrorCode
from tools import bench_native

FAST = settings(max_examples=200, deadline=None)


@st.composite
def page_and_twin(draw: st.DrawFn, max_size: int = 300) -> tuple[bytes, bytes]:
    """A twin, and a page that differs from it at drawn positions (often in clusters)."""
    twin = draw(st.binary(min_size=1, max_size=max_size))
    page = bytearray(twin)
    for pos, value in draw(st.lists(st.tuples(st.integers(0, len(twin) - 1), st.integers(0, 255)))):
        for k in range(pos, min(len(page), pos + draw(st.integers(1, 20)))):
            page[k] = value
    return bytes(page), twin


def runs_of(diff: bytes) -> list[tuple[int, bytes]]:
    return reference.page_validate(diff, struct.unpack_from("<I", diff, 1)[0])


# ---- format ----------------------------------------------------------------


def test_identical_pages_give_a_diff_with_zero_runs() -> None:
    page = bytes(range(256)) * 16
    assert native.page_diff(page, page) == b"\x01" + struct.pack("<II", 4096, 0)


def test_diff_layout_is_version_length_count_then_runs() -> None:
    twin = bytes(16)
    page = bytearray(twin)
    page[2:4] = b"ab"
    page[15] = 0x7F
    diff = native.page_diff(page, twin)
    assert diff == (
        b"\x01"
        + struct.pack("<II", 16, 2)
        + struct.pack("<II", 2, 2)
        + b"ab"
        + struct.pack("<II", 15, 1)
        + b"\x7f"
    )


@FAST
@given(pair=page_and_twin())
def test_diff_records_exactly_the_changed_bytes_as_maximal_runs(pair: tuple[bytes, bytes]) -> None:
    page, twin = pair
    runs = runs_of(native.page_diff(page, twin))
    covered: set[int] = set()
    for offset, data in runs:
        assert data == page[offset : offset + len(data)]
        covered.update(range(offset, offset + len(data)))
        # maximal: the bytes just outside a run are unchanged
        for edge in (offset - 1, offset + len(data)):
            assert not 0 <= edge < len(page) or page[edge] == twin[edge]
    assert covered == {i for i in range(len(page)) if page[i] != twin[i]}


@FAST
@given(pair=page_and_twin())
def test_c_diff_equals_the_reference_byte_for_byte(pair: tuple[bytes, bytes]) -> None:
    page, twin = pair
    assert native.page_diff(page, twin) == reference.page_diff(page, twin)


@pytest.mark.parametrize("size", [1, 7, 8, 9, 63, 64, 65, 128, 129, 4096, 4099])
@pytest.mark.parametrize("pattern", ["all", "alternate", "edges", "block_ends"])
def test_word_and_block_boundaries_match_the_reference(size: int, pattern: str) -> None:
    twin = bytes((i * 37) & 0xFF for i in range(size))
    page = bytearray(twin)
    picks = {
        "all": range(size),
        "alternate": range(0, size, 2),
        "edges": [0, size - 1],
        "block_ends": [i for i in range(size) if i % 64 in (62, 63, 0, 1)],
    }[pattern]
    for i in picks:
        page[i] ^= 0xA5
    diff = native.page_diff(page, twin)
    assert diff == reference.page_diff(bytes(page), twin)
    assert len(diff) <= native.page_diff_bound(size)


def test_worst_case_diff_fits_the_bound() -> None:
    twin = bytes(4096)
    page = bytes([1, 0]) * 2048  # 2048 one-byte runs
    diff = native.page_diff(page, twin)
    assert len(diff) == 9 + 2048 * 9
    assert len(diff) <= native.page_diff_bound(4096)


# ---- apply -----------------------------------------------------------------


@FAST
@given(pair=page_and_twin())
def test_applying_a_diff_to_its_twin_gives_the_page(pair: tuple[bytes, bytes]) -> None:
    page, twin = pair
    target = bytearray(twin)
    native.page_apply(target, native.page_diff(page, twin))
    assert target == page
    ref_target = bytearray(twin)
    reference.page_apply(ref_target, reference.page_diff(page, twin))
    assert ref_target == page


@FAST
@given(
    twin=st.binary(min_size=2, max_size=300),
    owners=st.binary(min_size=300, max_size=300),
    salt=st.integers(1, 255),
)
def test_two_writers_with_disjoint_changes_merge_in_either_order(
    twin: bytes, owners: bytes, salt: int
) -> None:
    # owner[i]: 0 nobody, 1 writer A, 2 writer B changes byte i.
    owner = [o % 3 for o in owners]
    a, b, merged = bytearray(twin), bytearray(twin), bytearray(twin)
    for i in range(len(twin)):
        new = twin[i] ^ salt  # salt >= 1: the writer really changes the byte
        if owner[i] == 1:
            a[i] = merged[i] = new
        elif owner[i] == 2:
            b[i] = merged[i] = new
    diff_a, diff_b = native.page_diff(a, twin), native.page_diff(b, twin)
    for first, second in ((diff_a, diff_b), (diff_b, diff_a)):
        target = bytearray(twin)
        native.page_apply(target, first)
        native.page_apply(target, second)
        assert target == merged


def _expect_rejection(diff: bytes, target: bytearray) -> None:
    """C and the reference agree on `diff`; when they reject it, nothing was written."""
    before = bytes(target)
    try:
        reference.page_validate(diff, len(target))
        ref_code = None
    except DiffError as exc:
        ref_code = exc.code
    ref_target = bytearray(before)
    if ref_code is None:
        reference.page_apply(ref_target, diff)
        native.page_apply(target, diff)
        assert target == ref_target
        return
    with pytest.raises(DiffError) as err:
        native.page_apply(target, diff)
    assert err.value.code == ref_code
    assert target == before


@FAST
@given(garbage=st.binary(max_size=80), size=st.integers(1, 64))
def test_random_bytes_are_rejected_without_writing(garbage: bytes, size: int) -> None:
    _expect_rejection(garbage, bytearray(b"\xee" * size))


@FAST
@given(
    pair=page_and_twin(max_size=120),
    data=st.data(),
)
def test_mutated_or_truncated_diffs_are_rejected_without_writing(
    pair: tuple[bytes, bytes], data: st.DataObject
) -> None:
    page, twin = pair
    diff = bytearray(native.page_diff(page, twin))
    action = data.draw(st.sampled_from(["flip", "truncate", "append", "set_u32"]))
    if action == "flip":
        at = data.draw(st.integers(0, len(diff) - 1))
        diff[at] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        del diff[data.draw(st.integers(0, len(diff) - 1)) :]
    elif action == "append":
        diff += data.draw(st.binary(min_size=1, max_size=9))
    else:
        at = data.draw(st.integers(0, len(diff) - 4))
        diff[at : at + 4] = struct.pack("<I", data.draw(st.integers(0, 0xFFFFFFFF)))
    _expect_rejection(bytes(diff), bytearray(twin))


def _diff(page_len: int, *runs: tuple[int, bytes], version: int = 1, count: int = -1) -> bytes:
    body = b"".join(struct.pack("<II", off, len(data)) + data for off, data in runs)
    return struct.pack("<BII", version, page_len, len(runs) if count < 0 else count) + body


@pytest.mark.parametrize(
    ("diff", "code"),
    [
        pytest.param(b"\x01\x10\x00", DiffErrorCode.SHORT, id="short-header"),
        pytest.param(_diff(16, version=2), DiffErrorCode.VERSION, id="version-2"),
        pytest.param(_diff(32), DiffErrorCode.PAGE_SIZE, id="other-page-size"),
        pytest.param(_diff(16, (0, b"ab"), count=2), DiffErrorCode.TRUNCATED, id="missing-run"),
        pytest.param(_diff(16, (0, b"ab"))[:-1], DiffErrorCode.TRUNCATED, id="short-run"),
        pytest.param(_diff(16, (3, b"")), DiffErrorCode.EMPTY_RUN, id="empty-run"),
        pytest.param(_diff(16, (15, b"ab")), DiffErrorCode.BOUNDS, id="past-page-end"),
        pytest.param(_diff(16, (0xFFFFFFFF, b"a")), DiffErrorCode.BOUNDS, id="offset-overflow"),
        pytest.param(_diff(16, (4, b"ab"), (1, b"c")), DiffErrorCode.ORDER, id="unsorted"),
        pytest.param(_diff(16, (4, b"ab"), (5, b"c")), DiffErrorCode.ORDER, id="overlapping"),
        pytest.param(_diff(16, (4, b"ab")) + b"\x00", DiffErrorCode.TRAILING, id="trailing-byte"),
        pytest.param(_diff(16, (4, b"ab"), count=0), DiffErrorCode.TRAILING, id="count-too-low"),
    ],
)
def test_each_kind_of_malformed_diff_is_named_and_writes_nothing(
    diff: bytes, code: DiffErrorCode
) -> None:
    target = bytearray(b"\x55" * 16)
    with pytest.raises(DiffError) as err:
        native.page_apply(target, diff)
    assert err.value.code == code
    assert target == b"\x55" * 16
    with pytest.raises(DiffError) as ref_err:
        reference.page_apply(target, diff)
    assert ref_err.value.code == code
    with pytest.raises(ValueError):  # DiffError is a ValueError
        native.page_validate(diff, 16)


def test_adjacent_runs_are_accepted() -> None:
    target = bytearray(8)
    native.page_apply(target, _diff(8, (1, b"a"), (2, b"b")))
    assert target == b"\x00ab\x00\x00\x00\x00\x00"


def test_page_apply_refuses_a_read_only_page() -> None:
    with pytest.raises(TypeError, match="writable"):
        native.page_apply(bytes(16), _diff(16))


def test_empty_pages_have_a_header_only_diff() -> None:
    diff = native.page_diff(b"", b"")
    assert diff == reference.page_diff(b"", b"") == b"\x01" + bytes(8)
    native.page_validate(diff, 0)
    native.page_apply(bytearray(), diff)


def test_page_diff_refuses_pages_of_different_sizes() -> None:
    with pytest.raises(ValueError, match="twin"):
        native.page_diff(bytes(16), bytes(15))


# ---- batches ---------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 200),
    data=st.data(),
)
def test_batch_diff_equals_one_diff_per_page(size: int, data: st.DataObject) -> None:
    count = data.draw(st.integers(0, 8))
    twins = data.draw(st.binary(min_size=size * count, max_size=size * count))
    pages = bytearray(twins)
    for pos in data.draw(st.lists(st.integers(0, max(0, size * count - 1)), max_size=40)):
        if pages:
            pages[pos] ^= 0x3C
    diffs = native.page_diff_many(pages, twins, size)
    assert diffs == [
        native.page_diff(pages[k * size : (k + 1) * size], twins[k * size : (k + 1) * size])
        for k in range(count)
    ]
    assert diffs == reference.page_diff_many(bytes(pages), twins, size)
    target = bytearray(twins)
    native.page_apply_many(target, diffs, size)
    assert target == pages


def test_batch_diff_spanning_several_c_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_SCRATCH_BYTES", 3 * native.page_diff_bound(64))
    rng = np.random.default_rng(3)
    twins = rng.integers(0, 256, size=64 * 10, dtype=np.uint8)
    pages = twins ^ (rng.random(twins.size) < 0.3).astype(np.uint8)
    diffs = native.page_diff_many(pages.data, twins.data, 64)
    assert diffs == reference.page_diff_many(pages.tobytes(), twins.tobytes(), 64)


def test_batch_apply_with_one_bad_diff_writes_nothing() -> None:
    twins = bytes(4 * 16)
    pages = bytearray(twins)
    pages[3] = pages[20] = pages[40] = 9
    diffs = native.page_diff_many(pages, twins, 16)
    diffs[2] = diffs[2][:-1]
    target = bytearray(twins)
    with pytest.raises(DiffError) as err:
        native.page_apply_many(target, diffs, 16)
    assert (err.value.code, err.value.index) == (DiffErrorCode.TRUNCATED, 2)
    assert target == twins
    with pytest.raises(DiffError) as ref_err:
        reference.page_apply_many(target, diffs, 16)
    assert (ref_err.value.code, ref_err.value.index) == (DiffErrorCode.TRUNCATED, 2)


def test_batch_apply_targets_pages_by_index_in_sequence_order() -> None:
    target = bytearray(3 * 4)
    first = _diff(4, (0, b"ab"))
    second = _diff(4, (1, b"XY"))
    for impl in (native.page_apply_many, reference.page_apply_many):
        buf = bytearray(target)
        impl(buf, [first, second, first], 4, [2, 2, 0])
        assert buf == b"ab\x00\x00" + bytes(4) + b"aXY\x00"


@pytest.mark.parametrize("indices", [[3], [-1]])
def test_batch_apply_rejects_a_page_index_out_of_range(indices: list[int]) -> None:
    target = bytearray(3 * 4)
    for impl in (native.page_apply_many, reference.page_apply_many):
        with pytest.raises(DiffError) as err:
            impl(target, [_diff(4, (0, b"a"))], 4, indices)
        assert (err.value.code, err.value.index) == (DiffErrorCode.ARGS, 0)
    assert target == bytes(12)


def test_batch_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="whole number"):
        native.page_diff_many(bytes(10), bytes(10), 4)
    with pytest.raises(ValueError, match="twins"):
        native.page_diff_many(bytes(8), bytes(12), 4)
    with pytest.raises(ValueError, match="page_size"):
        native.page_diff_many(bytes(8), bytes(8), 0)
    with pytest.raises(ValueError, match="indices"):
        native.page_apply_many(bytearray(8), [_diff(4)], 4, [0, 1])


def test_error_codes_match_the_c_constants() -> None:
    for code in DiffErrorCode:
        assert getattr(lib, f"DDFS_DIFF_ERR_{code.name}") == code.value
    assert lib.DDFS_DIFF_VERSION == reference.DIFF_VERSION


# ---- benchmark ---------------------------------------------------------------


@FAST
@given(pair=page_and_twin(max_size=200), copies=st.integers(1, 3))
def test_numpy_diff_equals_the_reference(pair: tuple[bytes, bytes], copies: int) -> None:
    page, twin = pair
    pages = np.frombuffer(page * copies, dtype=np.uint8).reshape(copies, len(page))
    twins = np.frombuffer(twin * copies, dtype=np.uint8).reshape(copies, len(twin))
    assert (
        bench_native.numpy_page_diff_many(pages, twins)
        == [reference.page_diff(page, twin)] * copies
    )


def test_benchmark_runs_small_and_emits_the_keys(capsys: pytest.CaptureFixture[str]) -> None:
    parser = ArgumentParser()
    bench_native.add_arguments(parser)
    args = parser.parse_args(
        ["--crc-mib", "1", "--pages", "40", "--python-pages", "5", "--repeat", "1", "--json"]
    )
    assert bench_native.run(args) == 0
    result = json.loads(capsys.readouterr().out)
    for key in [
        "crc32c_gbps",
        "crc32c_sw_gbps",
        "zlib_crc32_gbps",
        "xxh3_gbps",
        "pagediff_pages_per_s",
        "pagediff_numpy_pages_per_s",
        "pagediff_python_pages_per_s",
        *(f"pagediff_{case}_pages_per_s" for case in ("1pct", "10pct", "100pct")),
    ]:
        assert result[key] > 0, key
    args.json = False
    assert bench_native.run(args) == 0
    assert "page diff" in capsys.readouterr().out.lower()
