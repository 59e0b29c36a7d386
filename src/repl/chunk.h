/*
 * chunk.h — the record chunks that anti-entropy pulls and range streams carry (DESIGN
 * §11): a run of complete records (key, version, tombstone flag, expiry, value) packed
 * into one buffer and LZ4-compressed as one block. Pure functions; any thread.
 *
 * Raw layout (before compression), records back to back, integers big-endian:
 *
 *   u16 klen | key[klen] | u64 ts | u32 node | u8 flags | u64 expiry_ms | u32 vlen | value
 *
 * flags: KV_CHUNK_F_TOMBSTONE (then vlen is 0 and expiry_ms 0); other bits must be 0.
 * klen is 1..KV_REPL_KEY_MAX; vlen at most KV_REPL_VALUE_MAX.
 *
 * On the wire a chunk is (raw_len, payload): payload is the LZ4 block of the raw bytes, or
 * the raw bytes themselves when compression would not make them smaller (raw_len ==
 * payload length then means "stored"). Decoding is defensive: a payload that does not
 * decompress to exactly raw_len bytes, a record that runs past the end, a bad length or a
 * bad flag refuses the whole chunk (KV_ECORRUPT) — nothing of it is applied.
 */
#ifndef KV_REPL_CHUNK_H
#define KV_REPL_CHUNK_H

#include "common/buf.h"
#include "common/hlc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_CHUNK_F_TOMBSTONE 0x1u
#define KV_CHUNK_RAW_MAX     (64u << 20) /* raw bytes of one chunk, at most */

typedef struct kv_chunk_rec {
    const uint8_t *key;
    size_t klen;
    kv_version ver;
    bool tombstone;
    uint64_t expiry_ms; /* wall-clock ms, 0 = never */
    const uint8_t *value;
    size_t vlen;
} kv_chunk_rec;

/* Append one record to raw (the uncompressed chunk being built). KV_OK; KV_EINVAL (klen 0
 * or over KV_REPL_KEY_MAX, vlen over KV_REPL_VALUE_MAX, a tombstone with a value);
 * KV_ETOOBIG (raw would exceed KV_CHUNK_RAW_MAX); KV_ENOMEM. raw is unchanged on error.
 * A tombstone's expiry_ms is written as 0 (tombstones carry none; the store ignores it). */
int kv_chunk_add(kv_buf *raw, const kv_chunk_rec *rec);

/* Bytes kv_chunk_add would append for rec. */
size_t kv_chunk_rec_size(const kv_chunk_rec *rec);

/*
 * Compress raw[0..raw_len) into out (reset first): the LZ4 block, or a copy of the raw
 * bytes when that is not smaller. The pair (raw_len, out) is what travels. KV_OK, KV_EINVAL
 * (raw_len 0 or over KV_CHUNK_RAW_MAX), KV_ENOMEM.
 */
int kv_chunk_pack(const uint8_t *raw, size_t raw_len, kv_buf *out);

/*
 * Decompress (raw_len, payload) into scratch (reset first) and check every record.
 * KV_OK: scratch holds raw_len bytes of whole, valid records and *count how many;
 * KV_ECORRUPT (with *why a short static reason, e.g. "lz4", "truncated record", "bad
 * flags") when anything is wrong; KV_EINVAL when raw_len is 0 or over KV_CHUNK_RAW_MAX;
 * KV_ENOMEM.
 */
int kv_chunk_unpack(size_t raw_len, const uint8_t *payload, size_t plen, kv_buf *scratch,
                    size_t *count, const char **why);

/*
 * Iterate the records of raw bytes that kv_chunk_unpack accepted: *off starts at 0; each
 * call fills *rec (pointers into raw) and advances *off; false at the end. Only for bytes
 * kv_chunk_unpack validated (it does not re-check).
 */
bool kv_chunk_next(const uint8_t *raw, size_t raw_len, size_t *off, kv_chunk_rec *rec);

#endif
