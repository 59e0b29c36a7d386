/*
 * index.c — the compact key index of the storage engine (see index.h). Loop thread.
 */
#include "store/index.h"

#include "kvstore/error.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define TAG_EMPTY     0
#define TAG_DELETED   1
#define TABLE_MIN_CAP 1024
#define ARENA_MIN     (64u * 1024)
#define UNITS_MAX     ((sizeof(store_ent) + STORE_ENT_KEY_MAX + 3) / 4)

static size_t ent_units(size_t klen)
{
    return (sizeof(store_ent) + klen + 3) / 4;
}

void store_index_init(store_index *ix, uint64_t seed)
{
    memset(ix, 0, sizeof(*ix));
    ix->seed = seed;
}

static void table_free(store_bucket *bk, size_t nbk)
{
    if (bk)
        munmap(bk, nbk * sizeof(*bk));
}

void store_index_fini(store_index *ix)
{
    table_free(ix->bk, ix->nbk);
    if (ix->arena)
        munmap(ix->arena, ix->arena_cap);
    free(ix->free_heads);
    free(ix->nodes);
    free(ix->node_map);
    memset(ix, 0, sizeof(*ix));
}

/* 64x64 -> 128-bit multiply folded back to 64 bits: every input bit reaches every output
 * bit in one step, which is what makes a short word-at-a-time hash mix well. */
static inline uint64_t fold_mul(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

uint64_t store_index_hash(const store_index *ix, const void *key, size_t klen)
{
    const uint64_t k0 = 0x9E3779B97F4A7C15ull, k1 = 0xD6E8FEB86659FD93ull,
                   k2 = 0xA0761D6478BD642Full;
    const uint8_t *p = key;
    size_t n = klen;
    uint64_t h = ix->seed ^ fold_mul((uint64_t)klen ^ k2, k0);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8); /* host order is fine: the hash never leaves memory */
        h = fold_mul(h ^ w, k1);
        p += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, p, n);
        h = fold_mul(h ^ w, k2);
    }
    return fold_mul(h ^ k0, k1);
}

/* Home slot: the high 32 bits scaled onto [0, cap) (no power-of-two size needed). */
static inline size_t home(uint64_t hash, size_t cap)
{
    return (size_t)(((hash >> 32) * (uint64_t)cap) >> 32);
}

static inline uint8_t tag_of(uint64_t hash)
{
    return (uint8_t)(0x80u | (hash & 0x7Fu));
}

static inline bool key_eq(const store_ent *e, const void *key, size_t klen)
{
    return store_ent_klen(e) == klen && memcmp(e->key, key, klen) == 0;
}

/* A slot position: bucket b, slot j. */
typedef struct slot_pos {
    size_t b, j;
} slot_pos;

static inline slot_pos pos_of(size_t i)
{
    return (slot_pos){i / STORE_BUCKET_SLOTS, i % STORE_BUCKET_SLOTS};
}

static inline void pos_next(slot_pos *p, size_t nbk)
{
    if (++p->j == STORE_BUCKET_SLOTS) {
        p->j = 0;
        if (++p->b == nbk)
            p->b = 0;
    }
}

void store_index_prefetch(const store_index *ix, uint64_t hash)
{
    if (ix->cap)
        __builtin_prefetch(&ix->bk[home(hash, ix->cap) / STORE_BUCKET_SLOTS]);
}

uint32_t store_index_find(const store_index *ix, uint64_t hash, const void *key, size_t klen)
{
    if (ix->cap == 0)
        return 0;
    uint8_t tag = tag_of(hash);
    slot_pos p = pos_of(home(hash, ix->cap));
    for (;;) {
        const store_bucket *b = &ix->bk[p.b];
        uint8_t t = b->tags[p.j];
        if (t == TAG_EMPTY)
            return 0;
        if (t == tag) {
            uint32_t ref = b->refs[p.j];
            if (key_eq(store_index_ent(ix, ref), key, klen))
                return ref;
        }
        pos_next(&p, ix->nbk);
    }
}

/* Put ref in the first free slot of its probe chain; returns the tag that slot had
 * (TAG_EMPTY or TAG_DELETED). */
static uint8_t place(store_bucket *bk, size_t nbk, uint64_t hash, uint32_t ref)
{
    slot_pos p = pos_of(home(hash, nbk * STORE_BUCKET_SLOTS));
    while (bk[p.b].tags[p.j] >= 0x80)
        pos_next(&p, nbk);
    uint8_t was = bk[p.b].tags[p.j];
    bk[p.b].tags[p.j] = tag_of(hash);
    bk[p.b].refs[p.j] = ref;
    return was;
}

/* Big, randomly accessed memory: ask for transparent huge pages, which spare most TLB
 * misses and page faults (a no-op where the kernel does not offer them). */
static void want_huge(void *p, size_t n)
{
    if (n >= (2u << 20))
        madvise(p, n, MADV_HUGEPAGE);
}

static store_bucket *table_alloc(size_t nbk)
{
    /* Anonymous memory: zeroed (all slots empty) and page-aligned (whole cache lines). */
    size_t n = nbk * sizeof(store_bucket);
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    want_huge(p, n);
    return p;
}

/* Rebuild the table with nbk buckets from the arena (drops deleted markers). */
static int rebuild(store_index *ix, size_t nbk)
{
    store_bucket *bk = table_alloc(nbk);
    if (!bk)
        return KV_ENOMEM;
    /* In batches: hash a few keys (the arena is read in order) and prefetch their
     * buckets, then place them, so the cache misses overlap. */
    enum { BATCH = 16 };
    uint64_t pos = 0, hash[BATCH];
    uint32_t refs[BATCH];
    size_t cap = nbk * STORE_BUCKET_SLOTS;
    for (;;) {
        int k = 0;
        while (k < BATCH && (refs[k] = store_index_next(ix, &pos)) != 0) {
            const store_ent *e = store_index_ent(ix, refs[k]);
            hash[k] = store_index_hash(ix, e->key, store_ent_klen(e));
            __builtin_prefetch(&bk[home(hash[k], cap) / STORE_BUCKET_SLOTS], 1);
            k++;
        }
        for (int i = 0; i < k; i++)
            place(bk, nbk, hash[i], refs[i]);
        if (k < BATCH)
            break;
    }
    table_free(ix->bk, ix->nbk);
    ix->bk = bk;
    ix->nbk = nbk;
    ix->cap = nbk * STORE_BUCKET_SLOTS;
    ix->deleted = 0;
    return KV_OK;
}

/* Room in the table for n more keys. */
static int table_room(store_index *ix, size_t n)
{
    if (n > SIZE_MAX / 16 - ix->count)
        return KV_ENOMEM;
    size_t need = ix->count + n;
    if (ix->cap && need + ix->deleted <= ix->cap / 8 * 7)
        return KV_OK;
    size_t nbk = ix->nbk ? ix->nbk : TABLE_MIN_CAP / STORE_BUCKET_SLOTS;
    /* Grow by half while the live load would pass 7/8; if only deleted markers crowd the
     * table, rebuild at the same size. */
    while (need > nbk * STORE_BUCKET_SLOTS / 8 * 7)
        nbk += nbk / 2;
    if (nbk * STORE_BUCKET_SLOTS > UINT32_MAX)
        return KV_ENOMEM;
    return rebuild(ix, nbk);
}

static int arena_room(store_index *ix, size_t bytes)
{
    if (ix->arena && ix->arena_used + bytes <= ix->arena_cap)
        return KV_OK;
    if (bytes > ((size_t)UINT32_MAX * 4) - ix->arena_used)
        return KV_ENOMEM; /* refs are 32-bit units: 16 GiB of entries at most */
    size_t cap = ix->arena_cap ? ix->arena_cap : ARENA_MIN;
    while (cap < ix->arena_used + bytes)
        cap *= 2;
    if (cap > (size_t)UINT32_MAX * 4)
        cap = (size_t)UINT32_MAX * 4;
    void *p;
    if (!ix->arena) {
        /* Anonymous memory: pages the arena has not reached yet cost nothing. */
        p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return KV_ENOMEM;
        ix->free_heads = calloc(UNITS_MAX + 1, sizeof(*ix->free_heads));
        if (!ix->free_heads) {
            munmap(p, cap);
            return KV_ENOMEM;
        }
        ix->arena_used = 4; /* ref 0 means "none": never an entry */
    } else {
        p = mremap(ix->arena, ix->arena_cap, cap, MREMAP_MAYMOVE);
        if (p == MAP_FAILED)
            return KV_ENOMEM;
    }
    ix->arena = p;
    ix->arena_cap = cap;
    want_huge(p, cap);
    return KV_OK;
}

int store_index_reserve(store_index *ix, size_t n, size_t key_bytes)
{
    int rc = table_room(ix, n);
    if (rc == KV_OK)
        rc = arena_room(ix, n * (sizeof(store_ent) + 3) + key_bytes);
    return rc;
}

uint32_t store_index_insert(store_index *ix, uint64_t hash, const void *key, size_t klen,
                            const store_ent *fields)
{
    assert(klen >= 1 && klen <= STORE_ENT_KEY_MAX);
    if (table_room(ix, 1) != KV_OK)
        return 0;
    size_t units = ent_units(klen);
    uint32_t ref = ix->free_heads ? ix->free_heads[units] : 0;
    if (ref) {
        store_ent *f = store_index_ent(ix, ref);
        ix->free_heads[units] = f->ts_lo;
        ix->free_bytes -= units * 4;
    } else {
        if (arena_room(ix, units * 4) != KV_OK)
            return 0;
        ref = (uint32_t)(ix->arena_used / 4);
        ix->arena_used += units * 4;
    }
    store_ent *e = store_index_ent(ix, ref);
    *e = *fields;
    e->kf = (uint16_t)(klen | ((unsigned)(fields->kf >> 11) << 11));
    store_ent_set_flags(e, store_ent_flags(fields) & ~(unsigned)STORE_ENT_FREE);
    memcpy(e->key, key, klen);
    if (place(ix->bk, ix->nbk, hash, ref) == TAG_DELETED)
        ix->deleted--;
    ix->count++;
    return ref;
}

void store_index_remove(store_index *ix, uint32_t ref)
{
    store_ent *e = store_index_ent(ix, ref);
    size_t klen = store_ent_klen(e);
    uint64_t hash = store_index_hash(ix, e->key, klen);
    slot_pos p = pos_of(home(hash, ix->cap));
    while (!(ix->bk[p.b].tags[p.j] >= 0x80 && ix->bk[p.b].refs[p.j] == ref)) {
        assert(ix->bk[p.b].tags[p.j] != TAG_EMPTY);
        pos_next(&p, ix->nbk);
    }
    /* A slot followed by an empty one ends every probe chain through it: it can become
     * empty itself instead of a deleted marker. */
    slot_pos q = p;
    pos_next(&q, ix->nbk);
    if (ix->bk[q.b].tags[q.j] == TAG_EMPTY) {
        ix->bk[p.b].tags[p.j] = TAG_EMPTY;
    } else {
        ix->bk[p.b].tags[p.j] = TAG_DELETED;
        ix->deleted++;
    }
    ix->count--;
    size_t units = ent_units(klen);
    store_ent_set_flags(e, STORE_ENT_FREE);
    e->ts_lo = ix->free_heads[units];
    ix->free_heads[units] = ref;
    ix->free_bytes += units * 4;
}

uint32_t store_index_next(const store_index *ix, uint64_t *pos)
{
    uint64_t p = *pos ? *pos : 1;
    uint64_t end = ix->arena_used / 4;
    while (p < end) {
        const store_ent *e = store_index_ent(ix, (uint32_t)p);
        uint64_t here = p;
        p += ent_units(store_ent_klen(e));
        if (!(store_ent_flags(e) & STORE_ENT_FREE)) {
            *pos = p;
            return (uint32_t)here;
        }
    }
    *pos = p;
    return 0;
}

int store_index_node_ix(store_index *ix, uint32_t node, uint16_t *out)
{
    uint64_t h = (uint64_t)node * 0x9E3779B97F4A7C15ull;
    if (ix->node_map_cap) {
        size_t mask = ix->node_map_cap - 1;
        for (size_t i = (size_t)(h >> 40) & mask;; i = (i + 1) & mask) {
            uint32_t v = ix->node_map[i];
            if (v == 0)
                break;
            if (ix->nodes[v - 1] == node) {
                *out = (uint16_t)(v - 1);
                return KV_OK;
            }
        }
    }
    if (ix->nnodes >= 65536)
        return KV_ENOMEM;
    if (ix->nnodes == ix->capnodes) {
        size_t cap = ix->capnodes ? ix->capnodes * 2 : 8;
        uint32_t *p = realloc(ix->nodes, cap * sizeof(*p));
        if (!p)
            return KV_ENOMEM;
        ix->nodes = p;
        ix->capnodes = cap;
    }
    if ((ix->nnodes + 1) * 2 > ix->node_map_cap) {
        size_t cap = ix->node_map_cap ? ix->node_map_cap * 2 : 16;
        uint32_t *m = calloc(cap, sizeof(*m));
        if (!m)
            return KV_ENOMEM;
        for (size_t k = 0; k < ix->nnodes; k++) {
            uint64_t hk = (uint64_t)ix->nodes[k] * 0x9E3779B97F4A7C15ull;
            size_t i = (size_t)(hk >> 40) & (cap - 1);
            while (m[i])
                i = (i + 1) & (cap - 1);
            m[i] = (uint32_t)k + 1;
        }
        free(ix->node_map);
        ix->node_map = m;
        ix->node_map_cap = cap;
    }
    size_t mask = ix->node_map_cap - 1;
    size_t i = (size_t)(h >> 40) & mask;
    while (ix->node_map[i])
        i = (i + 1) & mask;
    ix->nodes[ix->nnodes] = node;
    ix->node_map[i] = (uint32_t)ix->nnodes + 1;
    *out = (uint16_t)ix->nnodes;
    ix->nnodes++;
    return KV_OK;
}

size_t store_index_bytes(const store_index *ix)
{
    return ix->nbk * sizeof(store_bucket) + ix->arena_used + ix->capnodes * sizeof(uint32_t) +
           ix->node_map_cap * sizeof(uint32_t) +
           (ix->free_heads ? (UNITS_MAX + 1) * sizeof(uint32_t) : 0);
}
