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
