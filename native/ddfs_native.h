/*
 * ddfs native module: CRC-32C block checksums and TreadMarks-style page diffs.
 *
 * Every function here is pure C99 over caller-owned buffers: no allocation,
 * no global mutable state after load-time initialisation, so the Python side
 * may call it with the GIL released from any number of threads.
 *
 * Page diff format (version 1, all integers little-endian):
 *   u8  version (= 1)
 *   u32 page length in bytes
 *   u32 run count
 *   run count times: u32 offset, u32 length (>= 1), then `length` bytes
 * Runs are sorted by offset and do not overlap; a diff holds exactly the
 * changed bytes, never an unchanged byte between runs.
 */
#ifndef DDFS_NATIVE_H
#define DDFS_NATIVE_H

#include <stddef.h>
#include <stdint.h>

#define DDFS_CRC_AUTO 0
#define DDFS_CRC_SW 1
#define DDFS_CRC_HW 2

#define DDFS_DIFF_VERSION 1
#define DDFS_DIFF_HEADER 9
#define DDFS_DIFF_RUN_HEADER 8

/* apply/validate error codes (0 = valid) */
#define DDFS_DIFF_OK 0
#define DDFS_DIFF_ERR_SHORT 1        /* shorter than the 9-byte header */
#define DDFS_DIFF_ERR_VERSION 2      /* unknown version byte */
#define DDFS_DIFF_ERR_PAGE_SIZE 3    /* page length field != target page size */
#define DDFS_DIFF_ERR_TRUNCATED 4    /* a run header or its bytes run past the end */
#define DDFS_DIFF_ERR_EMPTY_RUN 5    /* a run of length 0 */
#define DDFS_DIFF_ERR_BOUNDS 6       /* a run extends past the page end */
#define DDFS_DIFF_ERR_ORDER 7        /* a run starts before the previous one ended */
#define DDFS_DIFF_ERR_TRAILING 8     /* bytes left after the last run */
#define DDFS_DIFF_ERR_ARGS 9         /* bad arguments (sizes, indices) */

int ddfs_native_abi(void);

/* CRC-32C (Castagnoli).  `seed` is a previous finalised CRC (0 to start). */
int ddfs_crc32c_hw_available(void);
uint32_t ddfs_crc32c(int impl, uint32_t seed, const uint8_t *buf, size_t len);
uint32_t ddfs_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
void ddfs_checksum_blocks(int impl, const uint8_t *buf, size_t len, size_t block_size,
                          uint32_t *out);
int64_t ddfs_verify_blocks(int impl, const uint8_t *buf, size_t len, size_t block_size,
                           const uint32_t *expected);

/* Page diffs.  ddfs_page_diff needs ddfs_page_diff_bound(page_size) bytes of
 * output room (the largest diff plus a few bytes of slack) and returns the
 * diff's length; ddfs_page_diff_many stops before a page that might not fit
 * and returns the number of pages done, ends[k] being the end of diff k. */
size_t ddfs_page_diff_bound(size_t page_size);
size_t ddfs_page_diff(const uint8_t *page, const uint8_t *twin, size_t page_size, uint8_t *out);
size_t ddfs_page_diff_many(const uint8_t *pages, const uint8_t *twins, size_t page_size,
                           size_t count, uint8_t *out, size_t cap, uint64_t *ends);
int ddfs_page_validate(const uint8_t *diff, size_t diff_len, size_t page_size);
int ddfs_page_apply(uint8_t *page, size_t page_size, const uint8_t *diff, size_t diff_len);
int64_t ddfs_page_apply_many(uint8_t *pages, size_t page_size, size_t page_count,
                             const uint8_t *diffs, const uint64_t *ends,
                             const uint64_t *index, size_t n, int *err);

#endif
