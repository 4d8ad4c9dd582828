"""ddfs native module: CRC-32C block checksums and TreadMarks page twin/diff/apply.

A typed facade over the cffi module `native._native` (built from
native/ddfs_native.c).  Arguments are checked here, so the C code only ever
sees consistent sizes; errors surface as ValueError/TypeError with a message.

Invariants:
  - Buffers go to C through `ffi.from_buffer` (no copies), and cffi releases
    the GIL for the duration of every C call, so checksumming a 64 MiB chunk
    does not stall other threads.  Batch entry points cover many blocks
    or pages per C call (page_diff_many: one call per ~4 MiB of output room).
  - CRC-32C is the Castagnoli CRC (reflected polynomial 0x82F63B78, check
    value 0xE3069283 for b"123456789"); `seed` is a previous finalised CRC,
    so crc32c(b, crc32c(a)) == crc32c(a + b).  impl="hw" uses the SSE4.2
    crc32 instruction (three interleaved streams), impl="sw" a slicing-by-8
    table, impl="auto" the hardware when the CPU has it.  All give the same
    value.
  - The page diff format (version 1) is defined in `native.reference`, the
    pure-Python executable specification the C code is tested against:
    u8 version, u32 page length, u32 run count, then per run u32 offset,
    u32 length, the bytes; little-endian.  Diffs contain only changed
    bytes; applying validates the whole diff (or batch) first and writes
    nothing when anything is wrong.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Literal

from native._native import ffi, lib
from native.reference import (
    DEFAULT_BLOCK_SIZE,
    DIFF_VERSION,
    MAX_PAGE_SIZE,
    DiffError,
    DiffErrorCode,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DIFF_VERSION",
    "DiffError",
    "DiffErrorCode",
    "Impl",
    "checksum_blocks",
    "crc32c",
    "crc32c_combine",
    "crc32c_hw",
    "crc32c_sw",
    "hw_available",
    "page_apply",
    "page_apply_many",
    "page_diff",
    "page_diff_bound",
    "page_diff_many",
    "page_validate",
    "verify_blocks",
]

Impl = Literal["auto", "hw", "sw"]
_IMPLS: dict[str, int] = {"auto": lib.DDFS_CRC_AUTO, "sw": lib.DDFS_CRC_SW, "hw": lib.DDFS_CRC_HW}
_U32 = 0xFFFFFFFF
# Diffs are written into a per-thread scratch buffer that is reused, because
# fresh output memory costs a page fault per 4 KiB written (as much as the
# diffing itself); per-thread because C runs without the GIL.  A batch is cut
# into C calls of at most _SCRATCH_BYTES of worst-case output, which bounds
# the scratch memory and keeps it cache-warm.
_SCRATCH_BYTES = 4 << 20
_scratch = threading.local()
assert array("I").itemsize == 4, "array('I') must hold uint32 on this platform"


def _bytes_view(data: Buffer, what: str) -> memoryview:
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"{what} must be a bytes-like object, not {type(data).__name__}") from None
    if not view.c_contiguous:
        raise ValueError(f"{what} must be a C-contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _readable(data: Buffer, what: str) -> tuple[Any, int]:
    view = _bytes_view(data, what)
    return ffi.from_buffer("uint8_t[]", view), view.nbytes


def _writable(data: Buffer, what: str) -> tuple[Any, int]:
    view = _bytes_view(data, what)
    if view.readonly:
        raise TypeError(f"{what} must be a writable buffer (bytearray, memoryview, mmap)")
    return ffi.from_buffer("uint8_t[]", view, require_writable=True), view.nbytes


def _scratch_buffer(nbytes: int) -> Any:
    """A uint8_t[] of at least nbytes (contents undefined), reused per thread.

    Only huge single pages need more than _SCRATCH_BYTES; their buffer is
    not kept, so a thread never pins more than _SCRATCH_BYTES.
    """
    if nbytes > _SCRATCH_BYTES:
        return ffi.new("uint8_t[]", nbytes)
    buf = getattr(_scratch, "buf", None)
    if buf is None:
        buf = _scratch.buf = ffi.new("uint8_t[]", _SCRATCH_BYTES)
    return buf


def _impl(impl: str) -> int:
    try:
        code = _IMPLS[impl]
    except KeyError:
        raise ValueError(f"impl must be one of {sorted(_IMPLS)}, not {impl!r}") from None
    if code == lib.DDFS_CRC_HW and not hw_available():
        raise RuntimeError("impl='hw' needs a CPU with SSE4.2; use 'auto' or 'sw'")
    return code


def _block_size(block_size: int) -> int:
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, not {block_size}")
    return block_size


# ---- CRC-32C -------------------------------------------------------------


def hw_available() -> bool:
    """True when this CPU has SSE4.2, i.e. impl='hw' is usable."""
    return bool(lib.ddfs_crc32c_hw_available())


def crc32c(data: Buffer, seed: int = 0, impl: Impl = "auto") -> int:
    """CRC-32C of `data`, continuing from the finalised CRC `seed` (0 to start)."""
    if not 0 <= seed <= _U32:
        raise ValueError(f"seed must be a uint32, not {seed}")
    code = _impl(impl)
    buf, n = _readable(data, "data")
    return int(lib.ddfs_crc32c(code, seed, buf, n))


def crc32c_sw(data: Buffer, seed: int = 0) -> int:
    """crc32c with the portable slicing-by-8 table implementation."""
    return crc32c(data, seed, "sw")


def crc32c_hw(data: Buffer, seed: int = 0) -> int:
    """crc32c with the SSE4.2 instruction; RuntimeError if the CPU lacks it."""
    return crc32c(data, seed, "hw")


def crc32c_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """crc32c(a + b) given crc32c(a), crc32c(b) and len(b), in O(log len_b)."""
    if not (0 <= crc_a <= _U32 and 0 <= crc_b <= _U32):
        raise ValueError("CRCs must be uint32 values")
    if not 0 <= len_b < 1 << 64:
        raise ValueError(f"len_b must be a non-negative 64-bit length, not {len_b}")
    return int(lib.ddfs_crc32c_combine(crc_a, crc_b, len_b))


def checksum_blocks(
    data: Buffer, block_size: int = DEFAULT_BLOCK_SIZE, impl: Impl = "auto"
) -> array[int]:
    """One CRC-32C per block_size block of `data` (a short last block over its own bytes)."""
    code, size = _impl(impl), _block_size(block_size)
    buf, n = _readable(data, "data")
    out = array("I", [0]) * (-(-n // size))
    if out:
        lib.ddfs_checksum_blocks(code, buf, n, size, ffi.from_buffer("uint32_t[]", out))
    return out


def verify_blocks(
    data: Buffer,
    expected: Sequence[int] | array[int],
    block_size: int = DEFAULT_BLOCK_SIZE,
    impl: Impl = "auto",
) -> int:
    """Index of the first block whose CRC-32C differs from `expected`, or -1.

    ValueError if `expected` does not hold exactly one uint32 per block.
    """
    code, size = _impl(impl), _block_size(block_size)
    buf, n = _readable(data, "data")
    blocks = -(-n // size)
    if len(expected) != blocks:
        raise ValueError(f"expected {blocks} checksums for {n} bytes, got {len(expected)}")
    if not (isinstance(expected, array) and expected.typecode == "I"):
        try:
            expected = array("I", expected)
        except OverflowError:
            raise ValueError("checksums must be uint32 values") from None
    if not blocks:
        return -1
    return int(lib.ddfs_verify_blocks(code, buf, n, size, ffi.from_buffer("uint32_t[]", expected)))


# ---- page diffs ----------------------------------------------------------


def _page_size(page_size: int) -> int:
    if not 0 < page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be in 1..{MAX_PAGE_SIZE}, not {page_size}")
    return page_size


def page_diff_bound(page_size: int) -> int:
    """Output room C needs for one page's diff: the largest diff plus 8 bytes of slack."""
    return int(lib.ddfs_page_diff_bound(_page_size(page_size)))


def page_diff(page: Buffer, twin: Buffer) -> bytes:
    """The diff turning `twin` into `page`: exactly the changed bytes, as runs."""
    pbuf, n = _readable(page, "page")
    tbuf, tn = _readable(twin, "twin")
    if n != tn:
        raise ValueError(f"page is {n} bytes but twin is {tn}")
    if n > MAX_PAGE_SIZE:
        raise ValueError("page too large for the diff format")
    out = _scratch_buffer(lib.ddfs_page_diff_bound(n))
    used = lib.ddfs_page_diff(pbuf, tbuf, n, out)
    diff: bytes = ffi.buffer(out, used)[:]
    return diff


def page_validate(diff: Buffer, page_size: int) -> None:
    """Raise DiffError unless `diff` is a well-formed diff for a page of page_size bytes."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be in 0..{MAX_PAGE_SIZE}, not {page_size}")
    dbuf, dn = _readable(diff, "diff")
    err = lib.ddfs_page_validate(dbuf, dn, page_size)
    if err:
        raise DiffError(DiffErrorCode(err))


def page_apply(page: Buffer, diff: Buffer) -> None:
    """Write `diff` into the writable `page`; on DiffError nothing was written."""
    pbuf, n = _writable(page, "page")
    dbuf, dn = _readable(diff, "diff")
    err = lib.ddfs_page_apply(pbuf, n, dbuf, dn)
    if err:
        raise DiffError(DiffErrorCode(err))


def _page_count(n: int, page_size: int, what: str) -> int:
    if n % page_size:
        raise ValueError(f"{what} is {n} bytes, not a whole number of {page_size}-byte pages")
    return n // page_size


def page_diff_many(pages: Buffer, twins: Buffer, page_size: int) -> list[bytes]:
    """page_diff of every page_size slice of `pages` against the same slice of `twins`."""
    size = _page_size(page_size)
    pbuf, n = _readable(pages, "pages")
    tbuf, tn = _readable(twins, "twins")
    if n != tn:
        raise ValueError(f"pages is {n} bytes but twins is {tn}")
    count = _page_count(n, size, "pages")
    bound = lib.ddfs_page_diff_bound(size)
    per_call = max(1, _SCRATCH_BYTES // bound)
    out = _scratch_buffer(min(count, per_call) * bound)
    ends = ffi.new("uint64_t[]", min(count, per_call))
    diffs: list[bytes] = []
    for first in range(0, count, per_call):
        todo = min(per_call, count - first)
        off = first * size
        done = lib.ddfs_page_diff_many(pbuf + off, tbuf + off, size, todo, out, todo * bound, ends)
        assert done == todo, "C ran out of room in a worst-case-sized buffer"
        raw = ffi.buffer(out, ends[todo - 1])
        starts = [0, *ffi.unpack(ends, todo - 1)]
        diffs.extend(raw[s:e] for s, e in zip(starts, ffi.unpack(ends, todo), strict=True))
    return diffs


def _nbytes(data: Buffer) -> int:
    return len(data) if isinstance(data, bytes | bytearray) else memoryview(data).nbytes


def page_apply_many(
    pages: Buffer,
    diffs: Sequence[Buffer],
    page_size: int,
    indices: Sequence[int] | None = None,
) -> None:
    """Apply diffs[k] to page indices[k] (default: page k) of the writable `pages`.

    Every diff and index is validated before the first write; on DiffError
    (whose `index` names the offending diff) no page was changed.  Several
    diffs may target the same page; they are applied in sequence order.
    """
    size = _page_size(page_size)
    pbuf, n = _writable(pages, "pages")
    count = _page_count(n, size, "pages")
    if indices is None:
        targets = array("Q", range(len(diffs)))
    else:
        if len(indices) != len(diffs):
            raise ValueError(f"{len(indices)} indices for {len(diffs)} diffs")
        bad = next((k for k, i in enumerate(indices) if i < 0), None)
        if bad is not None:
            raise DiffError(DiffErrorCode.ARGS, bad)
        targets = array("Q", indices)
    if not diffs:
        return
    blob = b"".join(diffs)
    ends = array("Q", accumulate(map(_nbytes, diffs)))
    err = ffi.new("int *")
    bad_k = lib.ddfs_page_apply_many(
        pbuf,
        size,
        count,
        ffi.from_buffer("uint8_t[]", blob),
        ffi.from_buffer("uint64_t[]", ends),
        ffi.from_buffer("uint64_t[]", targets),
        len(diffs),
        err,
    )
    if bad_k >= 0:
        raise DiffError(DiffErrorCode(err[0]), int(bad_k))
