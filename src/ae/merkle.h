/*
 * merkle.h — anti-entropy hash trees over the ring's hash space, kept current on every
 * write (issue 7, DESIGN §11). Sans-I/O: no clock, no disk, no network.
 *
 * Shape: the 64-bit key-hash space (common/hash.h, the same hash that places keys on the
 * ring) is cut into 2^depth equal leaves by the top `depth` bits of the key hash. A leaf's
 * value is the SUM (mod 2^64) of item digests of the keys that fall in it; an inner node's
 * value is the sum of its two children. Sums, not a hash of the children, because they
 * make every change O(depth) — add the new item digest and subtract the old one along one
 * path — and any hash range's digest cheap: the sum over the nodes that cover it. No
 * periodic rebuild; a tree is built once from the store at start and then follows writes.
 *
 * Item digest: a 64-bit hash of (key, version ts, version node, tombstone flag), never 0
 * for a present item; two replicas holding the same version of a key (or the same
 * tombstone) contribute the same digest. A key absent contributes nothing.
 *
 * Ranges: the ring's ranges [start, end) (hash values, end exclusive, wrap-around when
 * end <= start, see ring.h) rarely fall on leaf boundaries. kv_merkle_range_digest sums the
 * whole leaves inside a range and reports the partial leaves at its edges; the caller
 * digests the keys of those (a leaf is 1/2^depth of the space: a few keys) by scanning its
 * store and adds them (kv_merkle_item_digest), so that replicas compare exactly the keys
 * of the range.
 *
 * Comparing two replicas: exchange kv_merkle_range_digest for a range; if they differ,
 * exchange the children's sums level by level (kv_merkle_node) down to the differing
 * leaves, and only for those exchange keys and versions. kv_merkle_diff does that walk
 * locally between two trees (tests, and a peer's subtree shipped whole when small).
 */
#ifndef KV_AE_MERKLE_H
#define KV_AE_MERKLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/hlc.h" /* kv_version */

#define KV_MERKLE_MIN_DEPTH 1
#define KV_MERKLE_MAX_DEPTH 20 /* 1M leaves, 16 MiB of sums */

typedef struct kv_merkle kv_merkle;

/* A tree of 2^depth leaves, all sums 0. NULL when depth is out of range or out of memory. */
kv_merkle *kv_merkle_new(unsigned depth);
void kv_merkle_free(kv_merkle *t);
unsigned kv_merkle_depth(const kv_merkle *t);

/* The digest of one stored item (never 0). */
uint64_t kv_merkle_item_digest(const void *key, size_t klen, const kv_version *ver, bool tombstone);

/*
 * A key changed on this replica: `had`/`old_digest` describe what was there before (had
 * false: nothing), `has`/`new_digest` what is there now. hash is the key's ring hash.
 * O(depth). Equal digests are a no-op.
 */
void kv_merkle_update(kv_merkle *t, uint64_t hash, bool had, uint64_t old_digest, bool has,
                      uint64_t new_digest);

/* Shorthands: an item added (no previous one) / removed. */
void kv_merkle_add(kv_merkle *t, uint64_t hash, uint64_t digest);
void kv_merkle_remove(kv_merkle *t, uint64_t hash, uint64_t digest);

/* The whole tree's sum (root). */
uint64_t kv_merkle_root(const kv_merkle *t);

/*
 * Node `index` at `level` (0 = root, depth = leaves; index < 2^level): its sum, and the
 * hash range it covers as [*lo, *hi] inclusive (NULL to skip). Out-of-range level or index
 * (e.g. from a peer): 0 and an empty range, *lo > *hi.
 */
uint64_t kv_merkle_node(const kv_merkle *t, unsigned level, uint64_t index, uint64_t *lo,
                        uint64_t *hi);

/*
 * The leaf that holds hash, and the hash range of leaf i as [*lo, *hi] inclusive (NULL to
 * skip; an out-of-range leaf gives an empty range, *lo > *hi).
 */
uint64_t kv_merkle_leaf_of(const kv_merkle *t, uint64_t hash);
void kv_merkle_leaf_range(const kv_merkle *t, uint64_t leaf, uint64_t *lo, uint64_t *hi);

/*
 * Sum of the whole leaves inside the ring range [start, end) (end exclusive; end <= start
 * wraps around; start == end means the whole space). The leaves only partly inside (at
 * most two, one per edge; none when the edges fall on leaf boundaries) are returned in
 * edge[0..*n_edge) — their keys inside the range must be added by the caller. Uses
 * O(depth) inner nodes, not a leaf walk.
 */
uint64_t kv_merkle_range_digest(const kv_merkle *t, uint64_t start, uint64_t end, uint64_t edge[2],
                                unsigned *n_edge);

/*
 * Leaves whose sums differ between a and b (same depth), in ascending order, found by
 * descending only into differing subtrees; at most max written to out; returns how many
 * differ in total (may exceed max). KV_EINVAL-like misuse (different depths) returns 0
 * with *ok false when ok is not NULL.
 */
size_t kv_merkle_diff(const kv_merkle *a, const kv_merkle *b, uint64_t *out, size_t max, bool *ok);

#endif
