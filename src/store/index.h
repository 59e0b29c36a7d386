/*
 * index.h — the storage engine's in-memory index (the "keydir"): key -> location, version,
 * expiry and flags of the key's newest record, built to cost as little memory per key as
 * possible (target: at most 40 bytes beyond the key bytes; bitcask spends about 44.5).
 *
 * Layout. Every key has one entry in an arena: a 28-byte fixed part (store_ent) followed
 * by the key bytes, padded to 4 bytes. The arena is one growable anonymous mapping, so
 * pages it has not used yet cost no memory, and entries are addressed by a 32-bit
 * reference (their offset in 4-byte units; 0 is never an entry), so the arena can move
 * when it grows. A freed entry goes on a free list for its size and is reused by the next
 * key of the same size. The hash table holds only references, in 64-byte buckets (one
 * cache line) of 12 slots: 12 one-byte tags (7 bits of the key's hash plus an "occupied"
 * bit) and 12 32-bit refs. A lookup probes linearly from its home slot, reading tags and
 * refs from the same cache line, and touches an entry only when a tag matches (1 in 128
 * for a wrong key), so the table can run at a load of up to 7/8. It grows by 1.5x, so it
 * averages about 6 to 9 bytes per key.
 *
 * Per key: 28 bytes fixed + key (+0..3 padding) + 5.3 bytes / load ≈ 34-37 bytes overhead.
 * The price of the compact form: the version's node id is stored as a 16-bit index into a
 * per-index node table (at most 65536 distinct writer ids per store), expiry is kept in
 * whole seconds (rounded up; callers needing the exact millisecond read the record),
 * record offsets are 32-bit (segments of at most 4 GiB), keys are at most 2047 bytes and
 * stored value lengths at most 4 GiB - 1.
 *
 * Growing the table rehashes every key on the calling thread (about 50 ms per million
 * keys); callers that know how many keys are coming (open, hint files) reserve up front.
 *
 * Not thread-safe: owned by the loop thread of the store that holds it. store_ent
 * pointers stay valid until the next insert or reserve (which may move the arena).
 */
#ifndef KV_STORE_INDEX_H
#define KV_STORE_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Entry flags (5 bits). */
#define STORE_ENT_TOMB    0x01 /* newest record is a tombstone */
#define STORE_ENT_EXPIRED 0x02 /* value found expired (no longer counted live) */
#define STORE_ENT_PURGED  0x04 /* tombstone forgotten by store_purge */
#define STORE_ENT_PENDING 0x08 /* has writes not yet committed (see store.c) */
#define STORE_ENT_FREE    0x10 /* arena slot on a free list (index-private) */

#define STORE_ENT_KEY_MAX 2047u

/* The fixed part of an entry: where the key's newest record is and what it says. All
 * fields 4-byte aligned so the arena needs no more than 4-byte alignment. */
typedef struct store_ent {
    uint32_t ts_lo, ts_hi; /* version timestamp */
    uint32_t seg;          /* segment id */
    uint32_t off;          /* record offset in the segment */
    uint32_t vlen;         /* value bytes as stored */
    uint32_t expiry_s;     /* expiry, seconds since the epoch rounded up; 0 = never */
    uint16_t node_ix;      /* version node id, as an index into the node table */
    uint16_t kf;           /* key length (11 bits) | flags << 11 */
    uint8_t key[];         /* klen key bytes */
} store_ent;

_Static_assert(sizeof(store_ent) == 28, "store_ent layout");

static inline uint64_t store_ent_ts(const store_ent *e)
{
    return (uint64_t)e->ts_hi << 32 | e->ts_lo;
}

static inline void store_ent_set_ts(store_ent *e, uint64_t ts)
{
    e->ts_lo = (uint32_t)ts;
    e->ts_hi = (uint32_t)(ts >> 32);
}

static inline uint32_t store_ent_klen(const store_ent *e)
{
    return e->kf & 0x7FFu;
}

static inline unsigned store_ent_flags(const store_ent *e)
{
    return e->kf >> 11;
}

static inline void store_ent_set_flags(store_ent *e, unsigned flags)
{
    e->kf = (uint16_t)((e->kf & 0x7FFu) | (flags << 11));
}

/* Record length on disk (format.h: 40-byte header + key + value). */
static inline uint64_t store_ent_rec_len(const store_ent *e)
{
    return 40u + store_ent_klen(e) + (uint64_t)e->vlen;
}

/* Seconds, rounded up, from an expiry in ms (0 stays 0; clamps past 2106). */
static inline uint32_t store_expiry_s(uint64_t expiry_ms)
{
    if (expiry_ms == 0)
        return 0;
    uint64_t s = (expiry_ms + 999) / 1000;
    return s > UINT32_MAX ? UINT32_MAX : (uint32_t)s;
}

#define STORE_BUCKET_SLOTS 12

/* One cache line of the table. */
typedef struct store_bucket {
    uint8_t tags[STORE_BUCKET_SLOTS]; /* 0 empty, 1 deleted, 0x80|7 hash bits occupied */
    uint32_t spare;
    uint32_t refs[STORE_BUCKET_SLOTS]; /* entry reference per occupied slot */
} store_bucket;

_Static_assert(sizeof(store_bucket) == 64, "a bucket is one cache line");

typedef struct store_index {
    store_bucket *bk; /* nbk buckets, page-aligned anonymous memory */
    size_t nbk;
    size_t cap;     /* slots: nbk * STORE_BUCKET_SLOTS */
    size_t count;   /* occupied slots = entries */
    size_t deleted; /* deleted-marker slots */
    uint64_t seed;

    uint8_t *arena;               /* entries; ref r lives at arena + 4 * r */
    size_t arena_used, arena_cap; /* bytes */
    uint32_t *free_heads;         /* per size in 4-byte units: first free ref, 0 = none */
    size_t free_bytes;            /* bytes of entries on free lists */

    uint32_t *nodes; /* node table: node_ix -> node id */
    size_t nnodes, capnodes;
    uint32_t *node_map; /* open addressing: node id -> 1 + node_ix (0 = empty) */
    size_t node_map_cap;
} store_index;

/* An empty index; seed randomizes the hash. Allocates nothing. */
void store_index_init(store_index *ix, uint64_t seed);

/* Free everything. */
void store_index_fini(store_index *ix);

/* The hash the index uses for key (pass it to find and insert). */
uint64_t store_index_hash(const store_index *ix, const void *key, size_t klen);

/* The entry for key: its reference, or 0 if absent. */
uint32_t store_index_find(const store_index *ix, uint64_t hash, const void *key, size_t klen);

/* Hint that key `hash` is about to be looked up (bulk loads overlap their cache misses). */
void store_index_prefetch(const store_index *ix, uint64_t hash);

/* The entry behind a reference (valid until the next insert or reserve). */
static inline store_ent *store_index_ent(const store_index *ix, uint32_t ref)
{
    return (store_ent *)(void *)(ix->arena + (size_t)ref * 4);
}

/* Make room for n more keys of up to key_bytes key bytes in total, so that the next n
 * inserts of such keys cannot fail. KV_OK or KV_ENOMEM. */
int store_index_reserve(store_index *ix, size_t n, size_t key_bytes);

/*
 * Add a key that is not in the index (klen 1..STORE_ENT_KEY_MAX) with the fixed fields of
 * *fields (its kf key-length bits are ignored; the flags are kept). Returns the new
 * entry's reference, or 0 if memory ran out (only possible without a prior reserve).
 */
uint32_t store_index_insert(store_index *ix, uint64_t hash, const void *key, size_t klen,
                            const store_ent *fields);

/* Remove an entry (its reference becomes invalid and may be reused). */
void store_index_remove(store_index *ix, uint32_t ref);

/* The node table: node id -> 16-bit index (interning it). KV_OK, or KV_ENOMEM when out of
 * memory or all 65536 indexes are taken. */
int store_index_node_ix(store_index *ix, uint32_t node, uint16_t *out);

static inline uint32_t store_index_node(const store_index *ix, uint16_t node_ix)
{
    return ix->nodes[node_ix];
}

/*
 * Iterate entries in arena order: start with *pos = 0; returns the next entry's reference
 * at or after *pos and advances *pos past it, or 0 at the end. Entries keep their place
 * in the arena, so an iteration may span inserts and removals: an entry present
 * throughout is returned exactly once.
 */
uint32_t store_index_next(const store_index *ix, uint64_t *pos);

/* The arena position just past the last entry (a *pos value for store_index_next). */
static inline uint64_t store_index_end(const store_index *ix)
{
    return ix->arena_used / 4;
}

/* Bytes of memory the index holds: table, used arena, node table. */
size_t store_index_bytes(const store_index *ix);

#endif
