/*
 * index.h — the storage engine's in-memory index: an open-addressing hash table from key
 * to the location and metadata of the key's newest record.
 *
 * Linear probing over one flat array of 64-byte entries; each entry keeps the key's
 * 32-bit hash so that a probe compares keys only on a hash match, and the key bytes in
 * one exact-size heap block. The table doubles when it passes 3/4 full, so lookups and
 * inserts are O(1) on average. The hash is seeded per index so that clients cannot
 * choose keys that collide.
 *
 * Not thread-safe: owned by the loop thread of the store that holds it. Entry pointers
 * stay valid until the next insert or reserve (which may move the table).
 */
#ifndef KV_STORE_INDEX_H
#define KV_STORE_INDEX_H

#include <stddef.h>
#include <stdint.h>

#define STORE_LOC_TOMBSTONE 0x01 /* newest record is a delete */
#define STORE_LOC_EXPIRED   0x02 /* found expired; no longer counted as live */
#define STORE_LOC_PURGED    0x04 /* tombstone forgotten by store_purge */

/* Where a key's newest record lives and what it says. */
typedef struct store_loc {
    uint64_t ts;      /* version */
    uint64_t expiry;  /* ms since the epoch, 0 = never */
    uint64_t off;     /* record offset in its segment */
    uint32_t node;    /* version */
    uint32_t seg;     /* segment id */
    uint32_t rec_len; /* whole record, header included */
    uint32_t vlen;    /* value bytes as stored */
    uint8_t flags;    /* STORE_LOC_* */
} store_loc;

typedef struct store_entry {
    uint8_t *key; /* owned by the index; NULL marks an empty slot */
    uint32_t klen;
    uint32_t hash;
    store_loc loc;
} store_entry;

typedef struct store_index {
    store_entry *slots;
    size_t cap; /* power of two, or 0 before the first insert */
    size_t count;
    uint64_t seed;
} store_index;

/* An empty index; seed randomizes the hash. Allocates nothing. */
void store_index_init(store_index *ix, uint64_t seed);

/* Free every key and the table. */
void store_index_fini(store_index *ix);

/* The hash the index uses for key (pass it to find and insert). */
uint32_t store_index_hash(const store_index *ix, const void *key, size_t klen);

/* The entry for key, or NULL. */
store_entry *store_index_find(const store_index *ix, uint32_t hash, const void *key, size_t klen);

/* Make room for n more keys so that the next n inserts cannot fail. KV_OK or KV_ENOMEM. */
int store_index_reserve(store_index *ix, size_t n);

/*
 * Add a key that is not in the index. key is a heap block of klen bytes which the index
 * adopts on success (the caller keeps it on failure). Returns the new entry, or NULL if
 * the table could not grow (only possible without a prior reserve).
 */
store_entry *store_index_insert(store_index *ix, uint32_t hash, uint8_t *key, size_t klen,
                                const store_loc *loc);

/* Iterate: start with *cursor = 0; returns the next occupied entry or NULL at the end.
 * The table must not change during an iteration. */
store_entry *store_index_next(const store_index *ix, size_t *cursor);

#endif
