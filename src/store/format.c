/*
 * format.c — segment and record header encoding and validation (see format.h and the
 * format comment in store.c). Any thread.
 */
#include "store/format.h"

#include "store/crc32c.h"

#include <string.h>

void store_seg_hdr_encode(uint8_t out[STORE_SEG_HDR_LEN], const store_seg_hdr *h)
{
    memset(out, 0, STORE_SEG_HDR_LEN);
    store_le32(out + 0, STORE_SEG_MAGIC);
    store_le16(out + 4, STORE_FORMAT_VERSION);
    store_le16(out + 6, STORE_SEG_HDR_LEN);
    store_le64(out + 8, h->id);
    store_le64(out + 16, h->created_ms);
    store_le32(out + 24, h->flags);
    store_le32(out + 28, store_crc32c(0, out, 28));
}

store_seg_hdr_status store_seg_hdr_decode(const uint8_t *p, size_t n, store_seg_hdr *h)
{
    if (n < STORE_SEG_HDR_LEN)
        return STORE_SEG_HDR_SHORT;
    if (store_rd32(p) != STORE_SEG_MAGIC || store_rd32(p + 28) != store_crc32c(0, p, 28))
        return STORE_SEG_HDR_BAD;
    store_seg_hdr d = {
        .version = store_rd16(p + 4),
        .hdr_len = store_rd16(p + 6),
        .id = store_rd64(p + 8),
        .created_ms = store_rd64(p + 16),
        .flags = store_rd32(p + 24),
    };
    if (d.version > STORE_FORMAT_VERSION) {
        *h = d;
        return STORE_SEG_HDR_NEWER;
    }
    if (d.version == 0 || d.hdr_len != STORE_SEG_HDR_LEN)
        return STORE_SEG_HDR_BAD;
    *h = d;
    return STORE_SEG_HDR_OK;
}

static void rec_hdr_put(uint8_t out[STORE_REC_HDR_LEN], const store_rec_hdr *h)
{
    out[4] = h->type;
    out[5] = h->flags;
    store_le16(out + 6, h->klen);
    store_le32(out + 8, h->vlen);
    store_le32(out + 12, h->raw_vlen);
    store_le64(out + 16, h->ts);
    store_le32(out + 24, h->node);
    store_le32(out + 28, 0); /* reserved */
    store_le64(out + 32, h->expiry);
}

uint32_t store_rec_crc(const uint8_t hdr[STORE_REC_HDR_LEN], const void *key, size_t klen,
                       const void *val, size_t vlen)
{
    uint32_t c = store_crc32c(0, hdr + 4, STORE_REC_HDR_LEN - 4);
    c = store_crc32c(c, key, klen);
    if (vlen)
        c = store_crc32c(c, val, vlen);
    return c;
}

void store_rec_encode(uint8_t out[STORE_REC_HDR_LEN], const store_rec_hdr *h, const void *key,
                      const void *val)
{
    rec_hdr_put(out, h);
    store_le32(out, store_rec_crc(out, key, h->klen, val, h->vlen));
}

void store_rec_hdr_decode(const uint8_t in[STORE_REC_HDR_LEN], store_rec_hdr *h)
{
    h->crc = store_rd32(in);
    h->type = in[4];
    h->flags = in[5];
    h->klen = store_rd16(in + 6);
    h->vlen = store_rd32(in + 8);
    h->raw_vlen = store_rd32(in + 12);
    h->ts = store_rd64(in + 16);
    h->node = store_rd32(in + 24);
    h->expiry = store_rd64(in + 32);
}

bool store_rec_hdr_plausible(const store_rec_hdr *h, const uint8_t in[STORE_REC_HDR_LEN])
{
    if (store_rd32(in + 28) != 0)
        return false;
    if (h->klen == 0 || (h->flags & ~STORE_REC_F_KNOWN))
        return false;
    if (h->vlen > STORE_VALUE_MAX_HARD || h->raw_vlen > STORE_VALUE_MAX_HARD)
        return false;
    switch (h->type) {
    case STORE_REC_PUT:
        if (h->flags & STORE_REC_F_LZ4)
            return h->vlen > 0;
        return h->raw_vlen == h->vlen;
    case STORE_REC_TOMBSTONE:
        return h->flags == 0 && h->vlen == 0 && h->raw_vlen == 0;
    default:
        return false;
    }
}

store_rec_status store_rec_parse(const uint8_t *p, size_t avail, store_rec_hdr *h)
{
    if (avail < STORE_REC_HDR_LEN)
        return STORE_REC_SHORT;
    store_rec_hdr d;
    store_rec_hdr_decode(p, &d);
    if (!store_rec_hdr_plausible(&d, p))
        return STORE_REC_BADHDR;
    size_t len = store_rec_len(&d);
    if (len > avail)
        return STORE_REC_SHORT;
    const uint8_t *key = p + STORE_REC_HDR_LEN;
    uint32_t c = store_rec_crc(p, key, d.klen, key + d.klen, d.vlen);
    *h = d;
    return c == d.crc ? STORE_REC_OK : STORE_REC_BADCRC;
}

/* ---------- hint files ---------- */

void store_hint_hdr_encode(uint8_t out[STORE_HINT_HDR_LEN], const store_hint_hdr *h)
{
    memset(out, 0, STORE_HINT_HDR_LEN);
    store_le32(out, STORE_HINT_MAGIC);
    store_le16(out + 4, STORE_FORMAT_VERSION);
    store_le16(out + 6, STORE_HINT_HDR_LEN);
    store_le64(out + 8, h->seg_id);
    store_le64(out + 16, h->seg_size);
    store_le64(out + 24, h->count);
    store_le32(out + 36, store_crc32c(0, out, 36));
}

void store_hint_ent_encode(uint8_t out[STORE_HINT_ENT_LEN], const store_hint_ent *e)
{
    out[0] = e->type;
    out[1] = e->flags;
    store_le16(out + 2, e->klen);
    store_le32(out + 4, e->off);
    store_le32(out + 8, e->vlen);
    store_le32(out + 12, e->node);
    store_le64(out + 16, e->ts);
    store_le64(out + 24, e->expiry);
}

void store_hint_foot_encode(uint8_t out[STORE_HINT_FOOT_LEN], uint64_t count, uint32_t crc)
{
    store_le64(out, count);
    store_le32(out + 8, crc);
    store_le32(out + 12, STORE_HINT_END_MAGIC);
}

static void hint_ent_decode(const uint8_t *p, store_hint_ent *e)
{
    e->type = p[0];
    e->flags = p[1];
    e->klen = store_rd16(p + 2);
    e->off = store_rd32(p + 4);
    e->vlen = store_rd32(p + 8);
    e->node = store_rd32(p + 12);
    e->ts = store_rd64(p + 16);
    e->expiry = store_rd64(p + 24);
    e->key = p + STORE_HINT_ENT_LEN;
}

static bool hint_ent_plausible(const store_hint_ent *e, uint64_t seg_size)
{
    if (e->klen == 0 || (e->flags & ~STORE_REC_F_KNOWN) || e->vlen > STORE_VALUE_MAX_HARD)
        return false;
    if (e->type == STORE_REC_TOMBSTONE) {
        if (e->flags || e->vlen)
            return false;
    } else if (e->type != STORE_REC_PUT) {
        return false;
    }
    if (e->off < STORE_SEG_HDR_LEN)
        return false;
    uint64_t end = (uint64_t)e->off + STORE_REC_HDR_LEN + e->klen + e->vlen;
    return end <= seg_size;
}

store_hint_status store_hint_check(const uint8_t *p, size_t n, store_hint_hdr *h)
{
    if (n < STORE_HINT_HDR_LEN + STORE_HINT_FOOT_LEN)
        return STORE_HINT_BAD;
    if (store_rd32(p) != STORE_HINT_MAGIC || store_rd32(p + 36) != store_crc32c(0, p, 36))
        return STORE_HINT_BAD;
    if (store_rd16(p + 4) > STORE_FORMAT_VERSION)
        return STORE_HINT_NEWER;
    if (store_rd16(p + 4) == 0 || store_rd16(p + 6) != STORE_HINT_HDR_LEN ||
        store_rd32(p + 32) != 0)
        return STORE_HINT_BAD;
    store_hint_hdr d = {
        .seg_id = store_rd64(p + 8),
        .seg_size = store_rd64(p + 16),
        .count = store_rd64(p + 24),
    };
    const uint8_t *foot = p + n - STORE_HINT_FOOT_LEN;
    if (store_rd32(foot + 12) != STORE_HINT_END_MAGIC || store_rd64(foot) != d.count)
        return STORE_HINT_BAD;
    size_t body = n - STORE_HINT_HDR_LEN - STORE_HINT_FOOT_LEN;
    if (store_crc32c(0, p + STORE_HINT_HDR_LEN, body) != store_rd32(foot + 8))
        return STORE_HINT_BAD;
    /* The CRC guards against damage, not against a buggy or hostile writer: check that
     * every entry is possible and that they fill the body exactly. */
    size_t pos = STORE_HINT_HDR_LEN, end = n - STORE_HINT_FOOT_LEN;
    uint64_t count = 0;
    while (pos < end) {
        if (end - pos < STORE_HINT_ENT_LEN)
            return STORE_HINT_BAD;
        store_hint_ent e;
        hint_ent_decode(p + pos, &e);
        if (!hint_ent_plausible(&e, d.seg_size) || end - pos - STORE_HINT_ENT_LEN < e.klen)
            return STORE_HINT_BAD;
        pos += STORE_HINT_ENT_LEN + e.klen;
        count++;
    }
    if (count != d.count)
        return STORE_HINT_BAD;
    *h = d;
    return STORE_HINT_OK;
}

bool store_hint_next(const uint8_t *p, size_t n, size_t *pos, store_hint_ent *e)
{
    size_t at = *pos ? *pos : STORE_HINT_HDR_LEN;
    if (at + STORE_HINT_ENT_LEN > n - STORE_HINT_FOOT_LEN)
        return false;
    hint_ent_decode(p + at, e);
    *pos = at + STORE_HINT_ENT_LEN + e->klen;
    return true;
}
