/*
 * format.h — the on-disk byte layout of segment files: encoding and validation of the
 * segment header and of record headers. The layout itself is documented in the comment
 * block at the top of store.c. Pure functions over caller-owned bytes; any thread.
 *
 * Everything is little-endian and encoded field by field (never a struct dump), so the
 * files are the same on every host and every compiler.
 */
#ifndef KV_STORE_FORMAT_H
#define KV_STORE_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_SEG_MAGIC      0x4753564Bu /* bytes "KVSG" */
#define STORE_FORMAT_VERSION 1
#define STORE_SEG_HDR_LEN    32
#define STORE_REC_HDR_LEN    40

/* Segment header flags. */
#define STORE_SEG_F_COMPACTED 0x01 /* written by compaction (never the appendable segment) */

/* Record types. 0 is never valid so that zero-filled space reads as corrupt. */
#define STORE_REC_PUT       1
#define STORE_REC_TOMBSTONE 2

/* Record flags. Bits not listed here must be 0 in format version 1. */
#define STORE_REC_F_LZ4   0x01 /* value bytes are an LZ4 block of raw_vlen bytes */
#define STORE_REC_F_KNOWN (STORE_REC_F_LZ4)

/* Hard limits of the format; the configured limits are clamped to these. */
#define STORE_KEY_MAX_HARD   65535u
#define STORE_VALUE_MAX_HARD (1u << 30)

static inline void store_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void store_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void store_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t store_rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t store_rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t store_rd64(const uint8_t *p)
{
    return (uint64_t)store_rd32(p) | (uint64_t)store_rd32(p + 4) << 32;
}

typedef struct store_seg_hdr {
    uint16_t version;    /* format version the segment was written with */
    uint16_t hdr_len;    /* bytes before the first record */
    uint64_t id;         /* equals the number in the file name */
    uint64_t created_ms; /* wall clock at creation, informational */
    uint32_t flags;      /* reserved, 0 */
} store_seg_hdr;

typedef enum store_seg_hdr_status {
    STORE_SEG_HDR_OK = 0,
    STORE_SEG_HDR_SHORT, /* fewer than STORE_SEG_HDR_LEN bytes */
    STORE_SEG_HDR_BAD,   /* wrong magic, CRC or impossible fields */
    STORE_SEG_HDR_NEWER, /* intact, but a format version this build does not know */
} store_seg_hdr_status;

/* Encode h (version and hdr_len are forced to this build's) into out. */
void store_seg_hdr_encode(uint8_t out[STORE_SEG_HDR_LEN], const store_seg_hdr *h);

/* Decode and validate the first n bytes of a segment file. *h is written on OK and NEWER. */
store_seg_hdr_status store_seg_hdr_decode(const uint8_t *p, size_t n, store_seg_hdr *h);

typedef struct store_rec_hdr {
    uint32_t crc;      /* CRC-32C of header bytes 4..40, key and value */
    uint8_t type;      /* STORE_REC_PUT or STORE_REC_TOMBSTONE */
    uint8_t flags;     /* STORE_REC_F_* */
    uint16_t klen;     /* 1..STORE_KEY_MAX_HARD */
    uint32_t vlen;     /* value bytes stored after the key */
    uint32_t raw_vlen; /* value length once decoded (== vlen unless compressed) */
    uint64_t ts;       /* version: HLC timestamp */
    uint32_t node;     /* version: writer's node id */
    uint64_t expiry;   /* ms since the epoch, 0 = never */
} store_rec_hdr;

static inline size_t store_rec_len(const store_rec_hdr *h)
{
    return STORE_REC_HDR_LEN + (size_t)h->klen + (size_t)h->vlen;
}

/* Encode h into out, computing the CRC over the encoded header, key and value (h->crc is
 * ignored). val may be NULL when vlen is 0. */
void store_rec_encode(uint8_t out[STORE_REC_HDR_LEN], const store_rec_hdr *h, const void *key,
                      const void *val);

/* Decode the fixed header fields (no validation). */
void store_rec_hdr_decode(const uint8_t in[STORE_REC_HDR_LEN], store_rec_hdr *h);

/* True if the header's fields are possible in format version 1 (type, flags, lengths,
 * reserved bytes). Says nothing about the CRC. */
bool store_rec_hdr_plausible(const store_rec_hdr *h, const uint8_t in[STORE_REC_HDR_LEN]);

/* CRC of a record from its encoded header bytes (the CRC field itself is not covered),
 * key and value. val may be NULL when vlen is 0. */
uint32_t store_rec_crc(const uint8_t hdr[STORE_REC_HDR_LEN], const void *key, size_t klen,
                       const void *val, size_t vlen);

typedef enum store_rec_status {
    STORE_REC_OK = 0,
    STORE_REC_SHORT,  /* header cut short, or the record runs past the available bytes */
    STORE_REC_BADHDR, /* header fields impossible in this format */
    STORE_REC_BADCRC, /* whole record present, CRC mismatch */
} store_rec_status;

/* Validate the record starting at p with avail bytes after it in memory. On OK and BADCRC
 * *h holds the decoded header (so store_rec_len(h) is where the next record starts). */
store_rec_status store_rec_parse(const uint8_t *p, size_t avail, store_rec_hdr *h);

/*
 * Hint files: NNNNNNNNNN.hint beside segment NNNNNNNNNN.seg, one entry per record of the
 * segment in record order — everything the index needs, no values — so that open can
 * fill the index without reading the segment. Written once, complete, then renamed into
 * place; a hint that fails any check below is ignored and its segment scanned instead.
 *
 * Header, 40 bytes:
 *   0  u32 magic 0x5448564B ("KVHT")
 *   4  u16 format version (1)
 *   6  u16 header length (40)
 *   8  u64 segment id
 *  16  u64 segment size covered: the segment file's size when the hint was written (a
 *          segment of any other size makes the hint stale)
 *  24  u64 entry count
 *  32  u32 reserved, 0
 *  36  u32 CRC-32C of bytes 0..36
 * Entries, back to back, 32 bytes + key:
 *   0  u8  record type (1 put, 2 tombstone)
 *   1  u8  record flags (bit 0: LZ4)
 *   2  u16 key length
 *   4  u32 record offset in the segment
 *   8  u32 value length as stored
 *  12  u32 version node id
 *  16  u64 version timestamp
 *  24  u64 expiry, ms since the epoch (0 = never)
 *  32  key bytes
 * Footer, 16 bytes:
 *   0  u64 entry count (again)
 *   8  u32 CRC-32C of all entry bytes
 *  12  u32 magic 0x45564B48 ("HKVE")
 */
#define STORE_HINT_MAGIC     0x5448564Bu
#define STORE_HINT_END_MAGIC 0x45564B48u
#define STORE_HINT_HDR_LEN   40
#define STORE_HINT_ENT_LEN   32
#define STORE_HINT_FOOT_LEN  16

typedef struct store_hint_hdr {
    uint64_t seg_id;
    uint64_t seg_size;
    uint64_t count;
} store_hint_hdr;

typedef struct store_hint_ent {
    uint8_t type, flags;
    uint16_t klen;
    uint32_t off;
    uint32_t vlen;
    uint32_t node;
    uint64_t ts;
    uint64_t expiry;
    const uint8_t *key; /* points into the decoded bytes */
} store_hint_ent;

void store_hint_hdr_encode(uint8_t out[STORE_HINT_HDR_LEN], const store_hint_hdr *h);

/* Encode one entry's fixed part (the key follows it). */
void store_hint_ent_encode(uint8_t out[STORE_HINT_ENT_LEN], const store_hint_ent *e);

void store_hint_foot_encode(uint8_t out[STORE_HINT_FOOT_LEN], uint64_t count, uint32_t crc);

typedef enum store_hint_status {
    STORE_HINT_OK = 0,
    STORE_HINT_BAD,   /* damaged: wrong magic, CRC, lengths or an impossible entry */
    STORE_HINT_NEWER, /* intact, but a format version this build does not know */
} store_hint_status;

/*
 * Validate a whole hint file (n bytes at p): header, footer, entry CRC, and every entry
 * (plausible type/flags/lengths, key inside the file, record inside seg_size, count
 * matching). On OK *h is written; then store_hint_next walks the entries. Pure; bytes
 * from disk are never trusted before this passes.
 */
store_hint_status store_hint_check(const uint8_t *p, size_t n, store_hint_hdr *h);

/* Walk the entries of a file that passed store_hint_check: start with *pos = 0; writes
 * *e and returns true, or returns false after the last entry. */
bool store_hint_next(const uint8_t *p, size_t n, size_t *pos, store_hint_ent *e);

#endif
