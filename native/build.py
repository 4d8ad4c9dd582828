"""cffi API-mode build script for ddfs's native module (`native._native`).

Invoked by setuptools through `cffi_modules` in setup.py at install time
(`./tools/setup.sh` re-runs it whenever native/*.c, *.h or this file change).
Source paths are relative to the repository root because setuptools rejects
absolute ones.  The cdef below must match native/ddfs_native.h; cffi checks
the signatures against the header when it compiles the wrapper.
"""

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef(
    """
    #define DDFS_CRC_AUTO ...
    #define DDFS_CRC_SW ...
    #define DDFS_CRC_HW ...
    #define DDFS_DIFF_VERSION ...
    #define DDFS_DIFF_HEADER ...
    #define DDFS_DIFF_OK ...
    #define DDFS_DIFF_ERR_SHORT ...
    #define DDFS_DIFF_ERR_VERSION ...
    #define DDFS_DIFF_ERR_PAGE_SIZE ...
    #define DDFS_DIFF_ERR_TRUNCATED ...
    #define DDFS_DIFF_ERR_EMPTY_RUN ...
    #define DDFS_DIFF_ERR_BOUNDS ...
    #define DDFS_DIFF_ERR_ORDER ...
    #define DDFS_DIFF_ERR_TRAILING ...
    #define DDFS_DIFF_ERR_ARGS ...

    int ddfs_native_abi(void);

    int ddfs_crc32c_hw_available(void);
    uint32_t ddfs_crc32c(int impl, uint32_t seed, const uint8_t *buf, size_t len);
    uint32_t ddfs_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
    void ddfs_checksum_blocks(int impl, const uint8_t *buf, size_t len, size_t block_size,
                              uint32_t *out);
    int64_t ddfs_verify_blocks(int impl, const uint8_t *buf, size_t len, size_t block_size,
                               const uint32_t *expected);

    size_t ddfs_page_diff_bound(size_t page_size);
    size_t ddfs_page_diff(const uint8_t *page, const uint8_t *twin, size_t page_size,
                          uint8_t *out);
    size_t ddfs_page_diff_many(const uint8_t *pages, const uint8_t *twins, size_t page_size,
                               size_t count, uint8_t *out, size_t cap, uint64_t *ends);
    int ddfs_page_validate(const uint8_t *diff, size_t diff_len, size_t page_size);
    int ddfs_page_apply(uint8_t *page, size_t page_size, const uint8_t *diff, size_t diff_len);
    int64_t ddfs_page_apply_many(uint8_t *pages, size_t page_size, size_t page_count,
                                 const uint8_t *diffs, const uint64_t *ends,
                                 const uint64_t *index, size_t n, int *err);
    """
)
ffibuilder.set_source(
    "native._native",
    '#include "ddfs_native.h"',
    sources=["native/ddfs_native.c"],
    include_dirs=["native"],
    extra_compile_args=["-O3", "-std=c99", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
