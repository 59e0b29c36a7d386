/*
 * crc32c.c — table-driven CRC-32C, slice-by-8 (see crc32c.h). Any thread.
 *
 * Slice-by-8 consumes eight input bytes per step with eight 256-entry tables: table[0]
 * is the classic byte-at-a-time table, table[k][b] is the CRC of byte b followed by k
 * zero bytes, so the eight lookups of one step can be XORed together independently.
 * That runs at well over 1 GB/s, enough that checksumming is never the bottleneck of a
 * put or of scanning segments at open.
 */
#include "store/crc32c.h"

#include <pthread.h>

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

uint32_t store_crc32c(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&crc_once, crc_init);
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
