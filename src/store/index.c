/*
 * index.c — open-addressing hash table of the storage engine (see index.h). Loop thread.
 */
#include "store/index.h"

#include "kvstore/error.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define INDEX_MIN_CAP 1024

void store_index_init(store_index *ix, uint64_t seed)
{
    memset(ix, 0, sizeof(*ix));
    ix->seed = seed;
}

void store_index_fini(store_index *ix)
{
    for (size_t i = 0; i < ix->cap; i++)
        free(ix->slots[i].key);
    free(ix->slots);
    memset(ix, 0, sizeof(*ix));
}

/* 64x64 -> 128-bit multiply folded back to 64 bits: every input bit reaches every output
 * bit in one step, which is what makes a short word-at-a-time hash mix well. */
static inline uint64_t fold_mul(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

uint32_t store_index_hash(const store_index *ix, const void *key, size_t klen)
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
    h = fold_mul(h ^ k0, k1);
    return (uint32_t)(h ^ (h >> 32));
}

store_entry *store_index_find(const store_index *ix, uint32_t hash, const void *key, size_t klen)
{
    if (ix->cap == 0)
        return NULL;
    size_t mask = ix->cap - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        store_entry *e = &ix->slots[i];
        if (!e->key)
            return NULL;
        if (e->hash == hash && e->klen == klen && memcmp(e->key, key, klen) == 0)
            return e;
    }
}

/* Place an entry known to be absent; the table has a free slot (load < 1). */
static store_entry *place(store_entry *slots, size_t cap, const store_entry *src)
{
    size_t mask = cap - 1;
    size_t i = src->hash & mask;
    while (slots[i].key)
        i = (i + 1) & mask;
    slots[i] = *src;
    return &slots[i];
}

static int grow_to(store_index *ix, size_t cap)
{
    store_entry *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return KV_ENOMEM;
    for (size_t i = 0; i < ix->cap; i++)
        if (ix->slots[i].key)
            place(slots, cap, &ix->slots[i]);
    free(ix->slots);
    ix->slots = slots;
    ix->cap = cap;
    return KV_OK;
}

int store_index_reserve(store_index *ix, size_t n)
{
    if (n > SIZE_MAX / 8 - ix->count)
        return KV_ENOMEM;
    size_t need = ix->count + n;
    size_t cap = ix->cap ? ix->cap : INDEX_MIN_CAP;
    while (need > cap / 4 * 3) /* keep the load at or under 3/4 */
        cap *= 2;
    if (cap == ix->cap)
        return KV_OK;
    return grow_to(ix, cap);
}

store_entry *store_index_insert(store_index *ix, uint32_t hash, uint8_t *key, size_t klen,
                                const store_loc *loc)
{
    if (store_index_reserve(ix, 1) != KV_OK)
        return NULL;
    assert(!store_index_find(ix, hash, key, klen));
    store_entry e = {.key = key, .klen = (uint32_t)klen, .hash = hash, .loc = *loc};
    ix->count++;
    return place(ix->slots, ix->cap, &e);
}

store_entry *store_index_next(const store_index *ix, size_t *cursor)
{
    while (*cursor < ix->cap) {
        store_entry *e = &ix->slots[(*cursor)++];
        if (e->key)
            return e;
    }
    return NULL;
}
