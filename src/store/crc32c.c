/*
 * crc32c.c — table-driven CRC-32C, slice-by-8 (see crc32c.h). Any thread.
 *
 * Slice-by-8 consumes eight input bytes per step with eight 256-entry tables: table[0]
 * is the classic byte-at-a-time table, table[k][b] is the CRC of byte b followed by k
 * zero bytes, so the eight lookups of one step can be XORed together independently.
 * That runs at well over 1 GB/s, enough that checksumming is never the bottleneck of a
 * put or of scanning segments at open.
 *
 * On x86-64 CPUs with SSE4.2 the CRC32 instruction computes exactly this polynomial, 8
 * bytes per instruction (several GB/s); it is chosen at run time, so one binary runs
 * everywhere and both paths give the same results (the unit test compares them).
 */
#include "store/crc32c.h"

#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#define CRC32C_POLY 0x82F63B78u /* Castagnoli, bit-reflected */

static uint32_t crc_tab[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int i = 0; i < 8; i++)
            c = (c & 1) ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        crc_tab[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = crc_tab[0][b];
        for (int k = 1; k < 8; k++) {
            c = (c >> 8) ^ crc_tab[0][c & 0xff];
            crc_tab[k][b] = c;
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CRC_HW 1
static bool crc_hw;

__attribute__((target("sse4.2"))) static uint32_t crc_hw_run(uint32_t crc, const uint8_t *p,
                                                             size_t n)
{
    uint64_t c = ~crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8); /* x86 is little-endian, as the CRC's byte order requires */
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

static void crc_setup(void)
{
    crc_init();
#ifdef CRC_HW
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

uint32_t store_crc32c(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&crc_once, crc_setup);
#ifdef CRC_HW
    if (crc_hw)
        return crc_hw_run(crc, data, n);
#endif
    return store_crc32c_sw(crc, data, n);
}

uint32_t store_crc32c_sw(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&crc_once, crc_setup);
    const uint8_t *p = data;
    uint32_t c = ~crc;

    /* Input words are assembled byte by byte: any alignment, any host byte order. */
    while (n >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        c = crc_tab[7][lo & 0xff] ^ crc_tab[6][(lo >> 8) & 0xff] ^ crc_tab[5][(lo >> 16) & 0xff] ^
            crc_tab[4][lo >> 24] ^ crc_tab[3][p[4]] ^ crc_tab[2][p[5]] ^ crc_tab[1][p[6]] ^
            crc_tab[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = (c >> 8) ^ crc_tab[0][(c ^ *p++) & 0xff];
    return ~c;
}
