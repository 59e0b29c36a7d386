/*
 * hash.h — THE ring hash: the one 64-bit hash of key bytes that places keys on the
 * consistent-hash ring (DESIGN §7). The ring, replication, anti-entropy, streaming and the
 * storage engine's range enumeration (store_range) all use this function, so every node,
 * build and host must compute the same value for the same key: it is XXH64 with seed 0
 * (the published xxHash64 algorithm, written here from its specification), reading input
 * as little-endian words whatever the host's byte order. Changing it moves every key.
 *
 * Not for hash tables that clients can attack (it is unseeded); the storage index uses
 * its own seeded hash. Pure function; any thread.
 */
#ifndef KV_COMMON_HASH_H
#define KV_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

/* XXH64(key, len, seed 0). key may be NULL when len is 0. */
uint64_t kv_ring_hash(const void *key, size_t len);

#endif
