"""`ddfs bench native`: CRC-32C and page-diff throughput of the native module.

Measures, on one machine in one run so the figures are comparable:
  - CRC-32C GB/s over one buffer (default 64 MiB): the SSE4.2 path, the
    table path, and `checksum_blocks` with 64 KiB blocks, next to
    zlib.crc32 and xxhash's xxh3_64 on the same buffer;
  - page diffs per second for 4 KiB pages with 1%, 10% and 100% of bytes
    changed at random positions: the C batch call, a vectorised numpy
    version producing the same bytes, and the pure-Python reference.

Every figure is the best of `--repeat` runs (the least disturbed by other
work on the machine).  The outputs of the three diff implementations are
compared before timing, so a fast wrong answer cannot be reported.  numpy is
needed for the numpy column and to generate the pages.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zlib
from collections.abc import Callable
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import xxhash

import native
from native import reference
from tools.cli import UserError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    U8Array = npt.NDArray[np.uint8]

FRACTIONS = {"1pct": 0.01, "10pct": 0.10, "100pct": 1.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--crc-mib", type=int, default=64, help="CRC buffer size in MiB")
    parser.add_argument("--pages", type=int, default=4000, help="pages per diff batch")
    parser.add_argument(
        "--python-pages", type=int, default=300, help="pages timed for the pure-Python column"
    )
    parser.add_argument("--page-size", type=int, default=4096, help="page size in bytes")
    parser.add_argument("--repeat", type=int, default=3, help="take the best of N runs")
    parser.add_argument("--seed", type=int, default=1, help="seed for the generated pages")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _best(fn: Callable[[], object], repeat: int) -> float:
    """Shortest wall time of `repeat` calls (seconds)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


# ---- numpy page diff -----------------------------------------------------


def numpy_page_diff_many(pages: U8Array, twins: U8Array) -> list[bytes]:
    """Diffs (format version 1) of each row of `pages` against `twins`, vectorised.

    Runs are found from the edges of the changed-byte mask (padded so runs
    never cross page boundaries); every header, run header and data byte
    then gets its output position from cumulative sums; headers are
    scattered into one output array and the changed bytes fill the rest
    through a boolean mask.
    """
    import numpy as np  # lazy: the CLI imports this module just to build --help

    count, size = pages.shape
    changed = pages != twins
    edges = np.diff(np.pad(changed.view(np.int8), ((0, 0), (1, 1))), axis=1)
    run_page, run_start = np.nonzero(edges == 1)
    run_len = np.nonzero(edges == -1)[1] - run_start
    runs = np.bincount(run_page, minlength=count)
    data = changed.sum(axis=1)
    sizes = reference.DIFF_HEADER.size + 8 * runs + data
    page_at = np.concatenate(([0], np.cumsum(sizes)))
    out = np.empty(int(page_at[-1]), dtype=np.uint8)
    header = np.empty((count, 3), dtype="<u4")  # byte 0 overwritten by the version below
    header[:, 1], header[:, 2] = size, runs
    out[page_at[:-1, None] + np.arange(9)] = header.view(np.uint8)[:, 3:]
    out[page_at[:-1]] = reference.DIFF_VERSION
    # Run r is the k-th run of its page with `before` changed bytes ahead of it.
    first_run = np.cumsum(runs) - runs
    rank = np.arange(run_start.size) - first_run[run_page]
    before = np.cumsum(run_len) - run_len - (np.cumsum(data) - data)[run_page]
    run_at = page_at[run_page] + 9 + 8 * rank + before
    run_header = np.empty((run_start.size, 2), dtype="<u4")
    run_header[:, 0], run_header[:, 1] = run_start, run_len
    out[run_at[:, None] + np.arange(8)] = run_header.view(np.uint8)
    # Every other output byte is data, in the row-major order of the mask.
    is_header = np.zeros(out.size, dtype=bool)
    is_header[page_at[:-1, None] + np.arange(9)] = True
    is_header[run_at[:, None] + np.arange(8)] = True
    out[~is_header] = pages[changed]
    blob = out.tobytes()
    return [blob[a:b] for a, b in pairwise(page_at.tolist())]


# ---- workloads -----------------------------------------------------------


def _make_pages(count: int, size: int, fraction: float, seed: int) -> tuple[U8Array, U8Array]:
    """Random twins, and pages with round(fraction * size) bytes changed per page."""
    import numpy as np  # lazy, as above

    rng = np.random.default_rng(seed)
    twins = rng.integers(0, 256, size=(count, size), dtype=np.uint8)
    pages = twins.copy()
    k = max(1, min(size, round(fraction * size)))
    if k == size:
        cols = np.broadcast_to(np.arange(size), (count, size))
    else:
        cols = np.argpartition(rng.random((count, size)), k - 1, axis=1)[:, :k]
    rows = np.arange(count)[:, None]
    # XOR with a non-zero byte so every chosen position really changes.
    pages[rows, cols] ^= rng.integers(1, 256, size=cols.shape, dtype=np.uint8)
    return pages, twins


def _crc_figures(mib: int, repeat: int) -> dict[str, Any]:
    data = os.urandom(mib << 20)
    gb = len(data) / 1e9

    def rate(fn: Callable[[], object]) -> float:
        return round(gb / _best(fn, repeat), 3)

    hw = rate(lambda: native.crc32c_hw(data)) if native.hw_available() else None
    sw = rate(lambda: native.crc32c_sw(data))
    return {
        "crc32c_gbps": hw if hw is not None else sw,
        "crc32c_hw_gbps": hw,
        "crc32c_sw_gbps": sw,
        "checksum_blocks_gbps": rate(lambda: native.checksum_blocks(data)),
        "zlib_crc32_gbps": rate(lambda: zlib.crc32(data)),
        "xxh3_gbps": rate(lambda: xxhash.xxh3_64_intdigest(data)),
    }


def _diff_case(args: argparse.Namespace, fraction: float) -> dict[str, float]:
    pages, twins = _make_pages(args.pages, args.page_size, fraction, args.seed)
    flat_pages, flat_twins = pages.tobytes(), twins.tobytes()
    few = min(args.pages, args.python_pages)
    few_pages, few_twins = flat_pages[: few * args.page_size], flat_twins[: few * args.page_size]
    c_diffs = native.page_diff_many(flat_pages, flat_twins, args.page_size)
    if numpy_page_diff_many(pages, twins) != c_diffs or (
        reference.page_diff_many(few_pages, few_twins, args.page_size) != c_diffs[:few]
    ):
        raise AssertionError("C, numpy and Python page diffs disagree")
    target = bytearray(flat_twins)
    native.page_apply_many(target, c_diffs, args.page_size)
    if target != flat_pages:
        raise AssertionError("applying the C diffs did not reproduce the pages")
    # Re-applying the same diffs rewrites the same bytes, so `target` can be
    # reused by the timed runs without a copy inside the timing.
    n, r = args.pages, args.repeat
    return {
        "c": n / _best(lambda: native.page_diff_many(flat_pages, flat_twins, args.page_size), r),
        "numpy": n / _best(lambda: numpy_page_diff_many(pages, twins), r),
        "python": few
        / _best(lambda: reference.page_diff_many(few_pages, few_twins, args.page_size), r),
        "apply": n / _best(lambda: native.page_apply_many(target, c_diffs, args.page_size), r),
    }


def _diff_figures(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fraction in FRACTIONS.items():
        case = _diff_case(args, fraction)
        out[f"pagediff_{name}_pages_per_s"] = round(case["c"])
        out[f"pagediff_numpy_{name}_pages_per_s"] = round(case["numpy"])
        out[f"pagediff_python_{name}_pages_per_s"] = round(case["python"])
        out[f"pageapply_{name}_pages_per_s"] = round(case["apply"])
        out[f"pagediff_{name}_speedup_vs_python"] = round(case["c"] / case["python"], 1)
        out[f"pagediff_{name}_speedup_vs_numpy"] = round(case["c"] / case["numpy"], 1)
    for key in ("pagediff", "pagediff_numpy", "pagediff_python"):
        out[f"{key}_pages_per_s"] = out[f"{key}_10pct_pages_per_s"]
    return out


# ---- entry point ---------------------------------------------------------


def _validate(args: argparse.Namespace) -> None:
    if args.crc_mib < 1 or args.pages < 1 or args.python_pages < 1 or args.repeat < 1:
        raise UserError("--crc-mib, --pages, --python-pages and --repeat must be at least 1")
    if not 1 <= args.page_size <= 1 << 20:
        raise UserError("--page-size must be between 1 and 1 MiB")
    try:
        import numpy  # noqa: F401  (a test extra, not a runtime dependency)
    except ImportError:
        raise UserError("ddfs bench native needs numpy (pip install 'ddfs[test]')") from None


def _print_table(result: dict[str, Any]) -> None:
    def fmt(value: object) -> str:
        return "n/a" if value is None else f"{value:,}"

    print(f"CRC over {result['crc_mib']} MiB (GB/s, best of {result['repeat']}):")
    for label, key in [
        ("crc32c hardware (SSE4.2)", "crc32c_hw_gbps"),
        ("crc32c software (slicing-by-8)", "crc32c_sw_gbps"),
        ("checksum_blocks 64 KiB", "checksum_blocks_gbps"),
        ("zlib.crc32", "zlib_crc32_gbps"),
        ("xxhash xxh3_64", "xxh3_gbps"),
    ]:
        print(f"  {label:<32} {fmt(result[key]):>10}")
    print(f"\nPage diff, {result['page_size']}-byte pages (pages/s):")
    print(
        f"  {'changed':<8} {'C batch':>12} {'numpy':>12} {'python':>10} {'xC/py':>7}"
        f" {'xC/np':>6} {'C apply':>12}"
    )
    for name in FRACTIONS:
        row = [
            result[f"{k}_{name}_pages_per_s"]
            for k in ("pagediff", "pagediff_numpy", "pagediff_python")
        ]
        print(
            f"  {name:<8} {row[0]:>12,} {row[1]:>12,} {row[2]:>10,}"
            f" {result[f'pagediff_{name}_speedup_vs_python']:>7}"
            f" {result[f'pagediff_{name}_speedup_vs_numpy']:>6}"
            f" {result[f'pageapply_{name}_pages_per_s']:>12,}"
        )


def run(args: argparse.Namespace) -> int:
    _validate(args)
    result: dict[str, Any] = {
        "crc_mib": args.crc_mib,
        "pages": args.pages,
        "python_pages": min(args.pages, args.python_pages),
        "page_size": args.page_size,
        "repeat": args.repeat,
        "hw_available": native.hw_available(),
    }
    result.update(_crc_figures(args.crc_mib, args.repeat))
    result.update(_diff_figures(args))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        _print_table(result)
    return 0
