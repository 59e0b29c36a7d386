/*
 * fuzz_hint.c — libFuzzer target for hint-file recovery. The data directory holds a
 * valid, sealed segment 0000000001.seg (puts, an overwrite, a tombstone, an LZ4 value,
 * an expired and a future expiry, a long key), a valid newer segment 0000000002.seg, and
 * a hint file 0000000001.hint made from the input. Whatever the hint says, the store must
 * open, never serve bytes that are not an intact record of the key and version it
 * reports, agree with itself across store_range / store_get_meta / store_get, take a
 * write, and come back the same after a restart (fz_check_store in store_fuzz.h).
 *
 * Input byte 0 picks how the hint is made from the rest (R):
 *   bit 0 clear: R is the hint file, byte for byte;
 *   bit 0 set:   R is XOR-ed, cyclically, onto the valid hint for segment 1 (an empty R
 *                gives the valid hint), so mutations stay close to a real hint;
 *   bit 1 set:   the header CRC and the entry CRC in the footer are then recomputed, so
 *                the file passes the integrity checks and the semantic ones (entry
 *                fields, offsets, counts, the record each entry names) are what is tested;
 *   bit 2 set:   the header's segment id and size are set to segment 1's, for the same
 *                reason.
 * Logging is off unless FUZZ_LOG=1; FUZZ_DUMP_SEED=FILE writes the valid hint as a raw
 * input. Single-threaded apart from the store's threadpool.
 */
#include "store/crc32c.h"
#include "store_fuzz.h"

#define FH_MAX_SEG 4096

/* Segment 1: built once. Timestamps are small, so segment 2 (valid_segment) wins "alpha". */
static uint8_t g_seg[FH_MAX_SEG];
static size_t g_seglen;
static uint8_t g_hint[FH_MAX_SEG];
static size_t g_hintlen;

/* An LZ4 block of 25 decoded bytes: 4 literals, a 16-byte match at offset 4, 5 literals. */
static const uint8_t g_lz4[] = {0x4C, 'a', 'b', 'c', 'd', 4, 0, 0x50, 'e', 'f', 'g', 'h', 'i'};

static void build_segment_and_hint(void)
{
    static char longkey[200];
    memset(longkey, 'L', sizeof longkey);
    const struct {
        const char *key;
        size_t klen;
        const void *val;
        size_t vlen;
        uint32_t raw;
        uint8_t type, flags;
        uint64_t expiry;
    } recs[] = {
        {"alpha", 5, "one", 3, 3, STORE_REC_PUT, 0, 0},
        {"alpha", 5, "two", 3, 3, STORE_REC_PUT, 0, 0},
        {"beta", 4, NULL, 0, 0, STORE_REC_TOMBSTONE, 0, 0},
        {"delta", 5, g_lz4, sizeof g_lz4, 25, STORE_REC_PUT, STORE_REC_F_LZ4, 0},
        {"gamma", 5, "expired", 7, 7, STORE_REC_PUT, 0, 1000},
        {"omega", 5, "expires in 2100", 15, 15, STORE_REC_PUT, 0, 4102444800000ull},
        {longkey, sizeof longkey, "long key", 8, 8, STORE_REC_PUT, 0, 0},
    };
    store_seg_hdr sh = {.id = 1, .created_ms = 1};
    store_seg_hdr_encode(g_seg, &sh);
    size_t pos = STORE_SEG_HDR_LEN;
    size_t hpos = STORE_HINT_HDR_LEN;
    uint64_t count = 0;
    for (size_t i = 0; i < sizeof recs / sizeof *recs; i++) {
        store_rec_hdr h = {.type = recs[i].type,
                           .flags = recs[i].flags,
                           .klen = (uint16_t)recs[i].klen,
                           .vlen = (uint32_t)recs[i].vlen,
                           .raw_vlen = recs[i].raw,
                           .ts = 10 + i,
                           .node = 3,
                           .expiry = recs[i].expiry};
        FZ_CHECK(pos + store_rec_len(&h) <= sizeof g_seg, "segment fits");
        store_rec_encode(g_seg + pos, &h, recs[i].key, recs[i].val);
        memcpy(g_seg + pos + STORE_REC_HDR_LEN, recs[i].key, recs[i].klen);
        if (recs[i].vlen)
            memcpy(g_seg + pos + STORE_REC_HDR_LEN + recs[i].klen, recs[i].val, recs[i].vlen);
        store_hint_ent e = {.type = h.type,
                            .flags = h.flags,
                            .klen = h.klen,
                            .off = (uint32_t)pos,
                            .vlen = h.vlen,
                            .node = h.node,
                            .ts = h.ts,
                            .expiry = h.expiry};
        FZ_CHECK(hpos + STORE_HINT_ENT_LEN + h.klen + STORE_HINT_FOOT_LEN <= sizeof g_hint,
                 "hint fits");
        store_hint_ent_encode(g_hint + hpos, &e);
        memcpy(g_hint + hpos + STORE_HINT_ENT_LEN, recs[i].key, recs[i].klen);
        hpos += STORE_HINT_ENT_LEN + h.klen;
        pos += store_rec_len(&h);
        count++;
    }
    g_seglen = pos;
    store_hint_hdr hh = {.seg_id = 1, .seg_size = g_seglen, .count = count};
    store_hint_hdr_encode(g_hint, &hh);
    uint32_t crc = store_crc32c(0, g_hint + STORE_HINT_HDR_LEN, hpos - STORE_HINT_HDR_LEN);
    store_hint_foot_encode(g_hint + hpos, count, crc);
    g_hintlen = hpos + STORE_HINT_FOOT_LEN;
    store_hint_hdr check;
    FZ_CHECK(store_hint_check(g_hint, g_hintlen, &check) == STORE_HINT_OK,
             "the harness's own hint is valid");
}

/* Recompute the header CRC and the footer's entry CRC of a hint of n bytes. */
static void fix_crcs(uint8_t *p, size_t n)
{
    if (n < STORE_HINT_HDR_LEN + STORE_HINT_FOOT_LEN)
        return;
    store_le32(p + 36, store_crc32c(0, p, 36));
    size_t body = n - STORE_HINT_HDR_LEN - STORE_HINT_FOOT_LEN;
    store_le32(p + n - STORE_HINT_FOOT_LEN + 8, store_crc32c(0, p + STORE_HINT_HDR_LEN, body));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_seglen) {
        build_segment_and_hint();
        /* FUZZ_DUMP_SEED=FILE writes a raw-mode input holding the valid hint (how the seed
         * corpus entry "raw_valid_hint" was made). */
        const char *dump = getenv("FUZZ_DUMP_SEED");
        FILE *f = dump ? fopen(dump, "wb") : NULL;
        if (f) {
            fputc(0, f);
            fwrite(g_hint, 1, g_hintlen, f);
            fclose(f);
        }
    }
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    const uint8_t *r = data + 1;
    size_t rn = size - 1;

    uint8_t *hint;
    size_t hn;
    if (mode & 1) {
        hn = g_hintlen;
        hint = malloc(hn);
        FZ_CHECK(hint != NULL, "malloc");
        memcpy(hint, g_hint, hn);
        for (size_t i = 0; i < rn; i++)
            hint[i % hn] ^= r[i];
    } else {
        hn = rn;
        hint = malloc(hn ? hn : 1);
        FZ_CHECK(hint != NULL, "malloc");
        memcpy(hint, r, hn);
    }
    if ((mode & 4) && hn >= STORE_HINT_HDR_LEN) {
        store_le64(hint + 8, 1);
        store_le64(hint + 16, g_seglen);
    }
    if (mode & 2)
        fix_crcs(hint, hn);

    fz_reset_dir();
    uint8_t seg2[512];
    size_t seg2len = valid_segment(2, seg2, sizeof seg2);
    write_file("0000000001.seg", g_seg, g_seglen);
    write_file("0000000001.hint", hint, hn);
    write_file("0000000002.seg", seg2, seg2len);
    fz_file files[2] = {{g_seg, g_seglen}, {seg2, seg2len}};
    fz_check_store(files, 2);
    free(hint);
    return 0;
}
