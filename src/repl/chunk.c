/*
 * chunk.c — record chunks for anti-entropy pulls and range streams (see chunk.h for the
 * layout). Pure; any thread.
 *
 * Design notes. One parser, chunk_parse, reads a record and checks it against the bytes
 * left; kv_chunk_unpack runs it over the whole chunk before saying KV_OK, so a chunk is
 * accepted or refused as a unit and the applier never sees half of a bad chunk.
 * kv_chunk_next reuses the same parser: the checks cost a few compares per record and
 * keep it in bounds even if a caller hands it bytes unpack never saw.
 *
 * LZ4 takes int sizes; KV_CHUNK_RAW_MAX (64 MiB) and its compress bound fit in an int,
 * and every size is checked against those before it is cast.
 */
#include "repl/chunk.h"

#include "kvstore/error.h"
#include "repl/msg.h"

#include <lz4.h>
#include <string.h>

/* Fixed bytes of a record: u16 klen, u64 ts, u32 node, u8 flags, u64 expiry, u32 vlen. */
#define CHUNK_REC_FIXED (2 + 8 + 4 + 1 + 8 + 4)

_Static_assert(KV_CHUNK_RAW_MAX <= LZ4_MAX_INPUT_SIZE, "a raw chunk must fit one LZ4 block");

/* ---------- big-endian helpers ---------- */

static uint8_t *chunk_put(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
    return p + bytes;
}

static uint64_t chunk_get(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = v << 8 | p[i];
    return v;
}

/* ---------- building ---------- */

size_t kv_chunk_rec_size(const kv_chunk_rec *rec)
{
    return CHUNK_REC_FIXED + rec->klen + rec->vlen;
}

/* The record's own limits, before any size arithmetic on it. */
static bool chunk_rec_ok(const kv_chunk_rec *rec)
{
    if (rec->klen == 0 || rec->klen > KV_REPL_KEY_MAX || !rec->key)
        return false;
    if (rec->vlen > KV_REPL_VALUE_MAX || (rec->vlen && !rec->value))
        return false;
    return !(rec->tombstone && rec->vlen);
}

int kv_chunk_add(kv_buf *raw, const kv_chunk_rec *rec)
{
    if (!chunk_rec_ok(rec))
        return KV_EINVAL;
    size_t n = kv_chunk_rec_size(rec);
    if (raw->len > KV_CHUNK_RAW_MAX || n > KV_CHUNK_RAW_MAX - raw->len)
        return KV_ETOOBIG;
    /* Reserve the whole record first: nothing below can fail, so raw is either unchanged
     * or holds the complete record. */
    int rc = kv_buf_reserve(raw, n);
    if (rc)
        return rc;
    uint8_t *p = (uint8_t *)raw->data + raw->len;
    p = chunk_put(p, rec->klen, 2);
    memcpy(p, rec->key, rec->klen);
    p += rec->klen;
    p = chunk_put(p, rec->ver.ts, 8);
    p = chunk_put(p, rec->ver.node, 4);
    p = chunk_put(p, rec->tombstone ? KV_CHUNK_F_TOMBSTONE : 0, 1);
    /* A tombstone has no expiry (the store ignores one); writing 0 keeps every chunk we
     * build acceptable to kv_chunk_unpack. */
    p = chunk_put(p, rec->tombstone ? 0 : rec->expiry_ms, 8);
    p = chunk_put(p, rec->vlen, 4);
    if (rec->vlen)
        memcpy(p, rec->value, rec->vlen);
    raw->len += n;
    raw->data[raw->len] = '\0';
    return KV_OK;
}

int kv_chunk_pack(const uint8_t *raw, size_t raw_len, kv_buf *out)
{
    if (raw_len == 0 || raw_len > KV_CHUNK_RAW_MAX || !raw)
        return KV_EINVAL;
    kv_buf_reset(out);
    /* raw_len bytes are all we ever write: LZ4 is given raw_len - 1 of them as its limit,
     * so when it cannot beat the raw size it fails (0) rather than needing its full
     * compress bound, and the raw bytes travel as they are. Stored and compressed payloads
     * are then told apart by length alone. */
    int rc = kv_buf_reserve(out, raw_len);
    if (rc)
        return rc;
    int n = LZ4_compress_default((const char *)raw, out->data, (int)raw_len, (int)raw_len - 1);
    if (n > 0 && (size_t)n < raw_len) {
        out->len = (size_t)n;
    } else {
        memcpy(out->data, raw, raw_len);
        out->len = raw_len;
    }
    out->data[out->len] = '\0';
    return KV_OK;
}

/* ---------- reading ---------- */

/*
 * Read the record at *off of p[0..n), checking its lengths and flags against the limits
 * and the bytes left. true: *rec filled and *off past the record; false: *why says what is
 * wrong (nothing else written).
 */
static bool chunk_parse(const uint8_t *p, size_t n, size_t *off, kv_chunk_rec *rec,
                        const char **why)
{
    size_t at = *off;
    if (n - at < CHUNK_REC_FIXED) {
        *why = "truncated record";
        return false;
    }
    size_t klen = (size_t)chunk_get(p + at, 2);
    if (klen == 0 || klen > KV_REPL_KEY_MAX) {
        *why = "bad key length";
        return false;
    }
    /* The fixed part minus the klen field still has to fit after the key. */
    if (n - at - CHUNK_REC_FIXED < klen) {
        *why = "truncated record";
        return false;
    }
    const uint8_t *key = p + at + 2;
    const uint8_t *q = key + klen;
    kv_version ver = {chunk_get(q, 8), (uint32_t)chunk_get(q + 8, 4)};
    uint8_t flags = q[12];
    uint64_t expiry = chunk_get(q + 13, 8);
    size_t vlen = (size_t)chunk_get(q + 21, 4);
    if (flags & ~KV_CHUNK_F_TOMBSTONE) {
        *why = "bad flags";
        return false;
    }
    bool tomb = flags & KV_CHUNK_F_TOMBSTONE;
    if (tomb && (vlen || expiry)) {
        *why = "bad tombstone";
        return false;
    }
    if (vlen > KV_REPL_VALUE_MAX) {
        *why = "bad value length";
        return false;
    }
    size_t left = n - at - CHUNK_REC_FIXED - klen;
    if (vlen > left) {
        *why = "truncated record";
        return false;
    }
    *rec = (kv_chunk_rec){.key = key,
                          .klen = klen,
                          .ver = ver,
                          .tombstone = tomb,
                          .expiry_ms = expiry,
                          .value = q + 25,
                          .vlen = vlen};
    *off = at + CHUNK_REC_FIXED + klen + vlen;
    return true;
}

/* Put the raw bytes of (raw_len, payload) into scratch: a copy when stored, else the LZ4
 * block decompressed, which must come out at exactly raw_len bytes. */
static int chunk_inflate(size_t raw_len, const uint8_t *payload, size_t plen, kv_buf *scratch,
                         const char **why)
{
    int rc = kv_buf_reserve(scratch, raw_len);
    if (rc)
        return rc;
    if (plen == raw_len) {
        memcpy(scratch->data, payload, raw_len);
    } else {
        /* A compressed payload is always shorter than raw_len (kv_chunk_pack stores
         * otherwise); anything else is not ours. */
        if (plen == 0 || plen > raw_len || !payload) {
            *why = "lz4";
            return KV_ECORRUPT;
        }
        int n = LZ4_decompress_safe((const char *)payload, scratch->data, (int)plen, (int)raw_len);
        if (n < 0 || (size_t)n != raw_len) {
            *why = n < 0 ? "lz4" : "raw length mismatch";
            return KV_ECORRUPT;
        }
    }
    scratch->len = raw_len;
    scratch->data[raw_len] = '\0';
    return KV_OK;
}

int kv_chunk_unpack(size_t raw_len, const uint8_t *payload, size_t plen, kv_buf *scratch,
                    size_t *count, const char **why)
{
    const char *reason = NULL;
    if (raw_len == 0 || raw_len > KV_CHUNK_RAW_MAX)
        return KV_EINVAL;
    kv_buf_reset(scratch);
    int rc = chunk_inflate(raw_len, payload, plen, scratch, &reason);
    size_t off = 0, n = 0;
    kv_chunk_rec rec;
    while (rc == KV_OK && off < raw_len) {
        if (!chunk_parse((const uint8_t *)scratch->data, raw_len, &off, &rec, &reason))
            rc = KV_ECORRUPT;
        n++;
    }
    if (rc != KV_OK) {
        /* Leave nothing of a refused chunk behind for a careless caller to apply. */
        kv_buf_reset(scratch);
        if (rc == KV_ECORRUPT && why)
            *why = reason;
        return rc;
    }
    *count = n;
    return KV_OK;
}

bool kv_chunk_next(const uint8_t *raw, size_t raw_len, size_t *off, kv_chunk_rec *rec)
{
    const char *why;
    if (*off >= raw_len)
        return false;
    return chunk_parse(raw, raw_len, off, rec, &why);
}
