/*
 * ddfs native module: CRC-32C and page twin/diff/apply.  See ddfs_native.h for
 * the diff format and the error codes.
 *
 * Invariants:
 *  - All lookup tables are filled once by a load-time constructor and are
 *    read-only afterwards, so every entry point is thread-safe and may run
 *    with the GIL released.
 *  - The SSE4.2 path is only entered when the CPU reported SSE4.2 at load
 *    time; asking for it on a CPU without it silently uses the table path
 *    (the Python facade refuses that request before it gets here).
 *  - Multi-byte values are assembled byte by byte (load_le64/put_le32), so
 *    the code has no alignment or endianness assumptions; compilers turn the
 *    pattern into single loads on little-endian machines.
 *  - ddfs_page_apply and ddfs_page_apply_many validate everything before the
 *    first write: a rejected diff leaves the target pages untouched.
 */
#include "ddfs_native.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define DDFS_HAVE_X86_CRC 1
#include <nmmintrin.h>
#else
#define DDFS_HAVE_X86_CRC 0
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define CRC32C_POLY 0x82F63B78u /* reflected Castagnoli polynomial */

/* Both CRC paths run three independent streams over three adjacent lanes
 * (the crc32 instruction has 3-cycle latency but 1-cycle throughput; the
 * table path waits on dependent loads) and merge them with a table-driven
 * "advance over n zero bytes" operator.  Short lanes serve buffer tails. */
#define LANE_LONG 8192
#define LANE_SHORT 256

/* Spare output bytes so a run of <= 8 bytes is copied with one 8-byte store. */
#define DIFF_SLACK 8

static uint32_t sw_table[8][256];
/* shift_tab[k][j][b]: register byte b at position j, shifted by LANE_x bytes
 * (k=0: LANE_LONG, 1: 2*LANE_LONG, 2: LANE_SHORT, 3: 2*LANE_SHORT). */
static uint32_t shift_tab[4][4][256]; /* read-only after init */
static int hw_ok;

int ddfs_native_abi(void) { return 2; }

static inline uint64_t load_le64(const uint8_t *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

static inline uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* ---- GF(2) arithmetic in the reflected domain (bit 31 is x^0) ---------- */

static uint32_t gf2_mulmod(uint32_t a, uint32_t b)
{
    uint32_t prod = 0;
    for (int k = 0; k < 32; k++) {
        if (a & (0x80000000u >> k))
            prod ^= b;
        b = (b & 1u) ? (b >> 1) ^ CRC32C_POLY : b >> 1; /* b *= x */
    }
    return prod;
}

/* x^(8*nbytes) mod P: the operator that advances a CRC register over
 * nbytes zero bytes. */
static uint32_t x_pow_8n(uint64_t nbytes)
{
    uint32_t result = 0x80000000u; /* x^0 */
    uint32_t base = 0x00800000u;   /* x^8 */
    while (nbytes) {
        if (nbytes & 1u)
            result = gf2_mulmod(result, base);
        base = gf2_mulmod(base, base);
        nbytes >>= 1;
    }
    return result;
}

static void build_shift_table(uint32_t tab[4][256], uint64_t nbytes)
{
    uint32_t op = x_pow_8n(nbytes);
    for (int j = 0; j < 4; j++)
        for (uint32_t b = 0; b < 256; b++)
            tab[j][b] = gf2_mulmod(op, b << (8 * j));
}

static inline uint32_t shift_by(uint32_t tab[4][256], uint32_t c)
{
    return tab[0][c & 0xff] ^ tab[1][(c >> 8) & 0xff] ^ tab[2][(c >> 16) & 0xff] ^
           tab[3][c >> 24];
}

__attribute__((constructor)) static void ddfs_native_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1u) ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        sw_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            sw_table[t][i] = (sw_table[t - 1][i] >> 8) ^ sw_table[0][sw_table[t - 1][i] & 0xff];
    build_shift_table(shift_tab[0], LANE_LONG);
    build_shift_table(shift_tab[1], 2 * LANE_LONG);
    build_shift_table(shift_tab[2], LANE_SHORT);
    build_shift_table(shift_tab[3], 2 * LANE_SHORT);
#if DDFS_HAVE_X86_CRC
    __builtin_cpu_init();
    hw_ok = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
    hw_ok = 0;
#endif
}

/* ---- CRC-32C: raw register updates (no pre/post inversion) ------------- */

static inline uint32_t sw_step8(uint32_t crc, uint64_t w)
{
    w ^= crc;
    return sw_table[7][w & 0xff] ^ sw_table[6][(w >> 8) & 0xff] ^
           sw_table[5][(w >> 16) & 0xff] ^ sw_table[4][(w >> 24) & 0xff] ^
           sw_table[3][(w >> 32) & 0xff] ^ sw_table[2][(w >> 40) & 0xff] ^
           sw_table[1][(w >> 48) & 0xff] ^ sw_table[0][w >> 56];
}

/* Merges three lane CRCs: state(c0, A|B|C) = shift(c0', |B|+|C|) ^
 * shift(c1', |C|) ^ c2' by linearity (c1, c2 started from 0). */
static inline uint32_t combine_lanes(uint32_t c0, uint32_t c1, uint32_t c2, size_t lane)
{
    int k = lane == LANE_LONG ? 0 : 2;
    return shift_by(shift_tab[k + 1], c0) ^ shift_by(shift_tab[k], c1) ^ c2;
}

/* Slicing-by-8 is bound by the latency of its table-lookup chain, so three
 * independent lanes keep the CPU busy while each waits for its loads. */
static uint32_t crc_sw_lanes(uint32_t c0, const uint8_t *p, size_t lane)
{
    uint32_t c1 = 0, c2 = 0;
    for (size_t i = 0; i < lane; i += 8) {
        c0 = sw_step8(c0, load_le64(p + i));
        c1 = sw_step8(c1, load_le64(p + lane + i));
        c2 = sw_step8(c2, load_le64(p + 2 * lane + i));
    }
    return combine_lanes(c0, c1, c2, lane);
}

static uint32_t crc_sw(uint32_t crc, const uint8_t *p, size_t len)
{
    for (; len >= 3 * LANE_LONG; p += 3 * LANE_LONG, len -= 3 * LANE_LONG)
        crc = crc_sw_lanes(crc, p, LANE_LONG);
    for (; len >= 3 * LANE_SHORT; p += 3 * LANE_SHORT, len -= 3 * LANE_SHORT)
        crc = crc_sw_lanes(crc, p, LANE_SHORT);
    for (; len >= 8; p += 8, len -= 8)
        crc = sw_step8(crc, load_le64(p));
    while (len--)
        crc = (crc >> 8) ^ sw_table[0][(crc ^ *p++) & 0xff];
    return crc;
}

#if DDFS_HAVE_X86_CRC
__attribute__((target("sse4.2"))) static uint64_t crc_hw_lanes(uint64_t c0, const uint8_t *p,
                                                                size_t lane)
{
    uint64_t c1 = 0, c2 = 0;
    for (size_t i = 0; i < lane; i += 8) {
        c0 = _mm_crc32_u64(c0, load_le64(p + i));
        c1 = _mm_crc32_u64(c1, load_le64(p + lane + i));
        c2 = _mm_crc32_u64(c2, load_le64(p + 2 * lane + i));
    }
    return combine_lanes((uint32_t)c0, (uint32_t)c1, (uint32_t)c2, lane);
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p,
                                                         size_t len)
{
    uint64_t c = crc;
    for (; len >= 3 * LANE_LONG; p += 3 * LANE_LONG, len -= 3 * LANE_LONG)
        c = crc_hw_lanes(c, p, LANE_LONG);
    for (; len >= 3 * LANE_SHORT; p += 3 * LANE_SHORT, len -= 3 * LANE_SHORT)
        c = crc_hw_lanes(c, p, LANE_SHORT);
    for (; len >= 8; p += 8, len -= 8)
        c = _mm_crc32_u64(c, load_le64(p));
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = _mm_crc32_u8(c32, *p++);
    return c32;
}
#endif

int ddfs_crc32c_hw_available(void) { return hw_ok; }

static uint32_t crc_raw(int impl, uint32_t crc, const uint8_t *p, size_t len)
{
#if DDFS_HAVE_X86_CRC
    if (impl != DDFS_CRC_SW && hw_ok)
        return crc_hw(crc, p, len);
#else
    (void)impl;
#endif
    return crc_sw(crc, p, len);
}

uint32_t ddfs_crc32c(int impl, uint32_t seed, const uint8_t *buf, size_t len)
{
    return ~crc_raw(impl, ~seed, buf, len);
}

uint32_t ddfs_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
    /* The pre/post inversions cancel: crc(A|B) = crc_a * x^(8|B|) ^ crc_b. */
    return gf2_mulmod(x_pow_8n(len_b), crc_a) ^ crc_b;
}

void ddfs_checksum_blocks(int impl, const uint8_t *buf, size_t len, size_t block_size,
                          uint32_t *out)
{
    for (size_t off = 0; off < len; off += block_size) {
        size_t n = len - off < block_size ? len - off : block_size;
        *out++ = ~crc_raw(impl, 0xFFFFFFFFu, buf + off, n);
    }
}

int64_t ddfs_verify_blocks(int impl, const uint8_t *buf, size_t len, size_t block_size,
                           const uint32_t *expected)
{
    int64_t i = 0;
    for (size_t off = 0; off < len; off += block_size, i++) {
        size_t n = len - off < block_size ? len - off : block_size;
        if (~crc_raw(impl, 0xFFFFFFFFu, buf + off, n) != expected[i])
            return i;
    }
    return -1;
}

/* ---- page diffs ---------------------------------------------------------- */

size_t ddfs_page_diff_bound(size_t page_size)
{
    /* r runs need r-1 unchanged gap bytes, so changed <= n-r+1 and
     * r <= ceil(n/2): header + 8r + changed <= 10 + n + 7*ceil(n/2).
     * DIFF_SLACK more bytes let short runs be copied with one 8-byte store. */
    return 10 + page_size + 7 * ((page_size + 1) / 2) + DIFF_SLACK;
}

/* Bit i set iff a[i] != b[i], for i < n <= 64 (higher bits clear). */
static inline uint64_t changed_mask(const uint8_t *a, const uint8_t *b, size_t n)
{
    uint64_t m = 0;
    size_t i = 0;
#if defined(__SSE2__)
    for (; i + 16 <= n; i += 16) {
        __m128i eq = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(a + i)),
                                    _mm_loadu_si128((const __m128i *)(const void *)(b + i)));
        m |= (uint64_t)(~(unsigned)_mm_movemask_epi8(eq) & 0xFFFFu) << i;
    }
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t x = load_le64(a + i) ^ load_le64(b + i);
        /* high bit of each non-zero byte, then gather the 8 high bits into
         * one byte (the products land on distinct bits, so nothing carries) */
        uint64_t nz = (((x & 0x7F7F7F7F7F7F7F7Full) + 0x7F7F7F7F7F7F7F7Full) | x) &
                      0x8080808080808080ull;
        m |= (((nz >> 7) * 0x0102040810204080ull) >> 56) << i;
    }
    for (; i < n; i++)
        m |= (uint64_t)(a[i] != b[i]) << i;
    return m;
}

/* Appends one run [start, end) of `page` at *w. */
static inline uint8_t *emit_run(uint8_t *w, const uint8_t *page, size_t n, size_t start,
                                size_t end)
{
    size_t len = end - start;
    put_le32(w, (uint32_t)start);
    put_le32(w + 4, (uint32_t)len);
    w += DDFS_DIFF_RUN_HEADER;
    if (len <= 8 && start + 8 <= n)
        memcpy(w, page + start, 8); /* scattered writes make most runs tiny */
    else
        memcpy(w, page + start, len);
    return w + len;
}

size_t ddfs_page_diff(const uint8_t *page, const uint8_t *twin, size_t page_size, uint8_t *out)
{
    if (page_size > UINT32_MAX)
        return 0;
    uint8_t *w = out + DDFS_DIFF_HEADER;
    uint32_t runs = 0;
    size_t run_start = 0;
    uint64_t in_run = 0; /* 1 while the byte before `base` was changed */
    for (size_t base = 0; base < page_size; base += 64) {
        size_t nb = page_size - base < 64 ? page_size - base : 64;
        uint64_t m = changed_mask(page + base, twin + base, nb);
        /* A run starts where a changed byte follows an unchanged one and
         * ends (exclusive) at the first unchanged byte after it; bit nb of
         * `ends` can mark a run that reaches the end of the page. */
        uint64_t shifted = (m << 1) | in_run;
        uint64_t starts = m & ~shifted, ends = ~m & shifted;
        if (in_run && ends) { /* the run carried in from the previous block */
            w = emit_run(w, page, page_size, run_start, base + (size_t)__builtin_ctzll(ends));
            runs++;
            ends &= ends - 1;
        }
        /* Starts and ends now alternate, so the k-th start pairs with the
         * k-th end; a start left over is a run that continues. */
        for (; starts && ends; starts &= starts - 1, ends &= ends - 1, runs++)
            w = emit_run(w, page, page_size, base + (size_t)__builtin_ctzll(starts),
                         base + (size_t)__builtin_ctzll(ends));
        if (starts)
            run_start = base + (size_t)__builtin_ctzll(starts);
        in_run = starts || (in_run && !(~m & shifted));
    }
    if (in_run) {
        w = emit_run(w, page, page_size, run_start, page_size);
        runs++;
    }
    out[0] = DDFS_DIFF_VERSION;
    put_le32(out + 1, (uint32_t)page_size);
    put_le32(out + 5, runs);
    return (size_t)(w - out);
}

size_t ddfs_page_diff_many(const uint8_t *pages, const uint8_t *twins, size_t page_size,
                           size_t count, uint8_t *out, size_t cap, uint64_t *ends)
{
    size_t bound = ddfs_page_diff_bound(page_size), used = 0, done = 0;
    for (; done < count && cap - used >= bound; done++) {
        size_t off = done * page_size;
        used += ddfs_page_diff(pages + off, twins + off, page_size, out + used);
        ends[done] = used;
    }
    return done;
}

int ddfs_page_validate(const uint8_t *diff, size_t diff_len, size_t page_size)
{
    if (diff_len < DDFS_DIFF_HEADER)
        return DDFS_DIFF_ERR_SHORT;
    if (diff[0] != DDFS_DIFF_VERSION)
        return DDFS_DIFF_ERR_VERSION;
    if ((uint64_t)load_le32(diff + 1) != (uint64_t)page_size)
        return DDFS_DIFF_ERR_PAGE_SIZE;
    uint32_t runs = load_le32(diff + 5);
    size_t pos = DDFS_DIFF_HEADER;
    uint64_t prev_end = 0;
    for (uint32_t r = 0; r < runs; r++) {
        if (diff_len - pos < DDFS_DIFF_RUN_HEADER)
            return DDFS_DIFF_ERR_TRUNCATED;
        uint64_t off = load_le32(diff + pos), len = load_le32(diff + pos + 4);
        pos += DDFS_DIFF_RUN_HEADER;
        if (len == 0)
            return DDFS_DIFF_ERR_EMPTY_RUN;
        if (off + len > page_size)
            return DDFS_DIFF_ERR_BOUNDS;
        if (off < prev_end)
            return DDFS_DIFF_ERR_ORDER;
        if (diff_len - pos < len)
            return DDFS_DIFF_ERR_TRUNCATED;
        pos += (size_t)len;
        prev_end = off + len;
    }
    return pos == diff_len ? DDFS_DIFF_OK : DDFS_DIFF_ERR_TRAILING;
}

/* Caller has validated the diff against page_size. */
static void apply_valid(uint8_t *page, const uint8_t *diff)
{
    uint32_t runs = load_le32(diff + 5);
    const uint8_t *p = diff + DDFS_DIFF_HEADER;
    for (uint32_t r = 0; r < runs; r++) {
        uint32_t off = load_le32(p), len = load_le32(p + 4);
        p += DDFS_DIFF_RUN_HEADER;
        if (len <= 16) { /* most runs are tiny; a byte loop beats a memcpy call */
            for (uint32_t k = 0; k < len; k++)
                page[off + k] = p[k];
        } else {
            memcpy(page + off, p, len);
        }
        p += len;
    }
}

int ddfs_page_apply(uint8_t *page, size_t page_size, const uint8_t *diff, size_t diff_len)
{
    int err = ddfs_page_validate(diff, diff_len, page_size);
    if (err == DDFS_DIFF_OK)
        apply_valid(page, diff);
    return err;
}

int64_t ddfs_page_apply_many(uint8_t *pages, size_t page_size, size_t page_count,
                             const uint8_t *diffs, const uint64_t *ends,
                             const uint64_t *index, size_t n, int *err)
{
    /* Pass 1 validates every diff and index; pass 2 writes.  Nothing is
     * written unless all of them are valid. */
    for (size_t k = 0; k < n; k++) {
        uint64_t start = k ? ends[k - 1] : 0;
        if (index[k] >= page_count || ends[k] < start) {
            *err = DDFS_DIFF_ERR_ARGS;
            return (int64_t)k;
        }
        *err = ddfs_page_validate(diffs + start, (size_t)(ends[k] - start), page_size);
        if (*err != DDFS_DIFF_OK)
            return (int64_t)k;
    }
    for (size_t k = 0; k < n; k++)
        apply_valid(pages + index[k] * page_size, diffs + (k ? ends[k - 1] : 0));
    *err = DDFS_DIFF_OK;
    return -1;
}
