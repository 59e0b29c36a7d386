/*
 * ring.h — the consistent-hash ring (DESIGN §7). Pure data structure: no I/O, no clock,
 * no globals; any thread, one ring per thread at a time (a built ring is immutable, so it
 * may be read from several threads).
 *
 * Tokens: member m owns `tokens` points on the 64-bit ring, token i being
 * kv_ring_hash(m.id[16 bytes] || i as 4 little-endian bytes) (common/hash.h). Every node
 * computes the same ring from the same member set, whatever order it learnt them in.
 * Two tokens that collide (equal value) are ordered by member id, so the ring is still a
 * total order.
 *
 * Alignment: a token is that hash with its low 64 - KV_RING_ALIGN_BITS bits cleared, so
 * every range boundary falls on a multiple of 2^(64 - KV_RING_ALIGN_BITS): every range is
 * a union of whole leaves of an anti-entropy tree (src/ae/merkle.h) at depth >=
 * KV_RING_ALIGN_BITS. Two replicas can then compare exactly the keys of the ranges they
 * share from their trees alone (kv_merkle_range_digest reports no partial edge leaves),
 * never scanning keys to digest the edges. The price: 2^16 possible token positions, so a
 * few tokens of a large ring collide (ranges of length 0; shares stay within a fraction of
 * a percent of the unaligned ring's).
 *
 * Ownership: a key with ring hash h (kv_ring_hash(key)) belongs to the first token t
 * with t > h, wrapping past the top to the smallest token. So the range a token t_k owns
 * is [t_{k-1}, t_k) — the same half-open form store_range takes (lo, hi), wrapping when
 * lo >= hi. The preference list of a key is the first n DISTINCT members met walking
 * clockwise from that token; walking further gives the fallbacks (sloppy quorum).
 */
#ifndef KV_RING_RING_H
#define KV_RING_RING_H

#include "common/buf.h"
#include "swim/swim.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_RING_TOKENS_MAX 4096 /* per member */
#define KV_RING_ALIGN_BITS 16   /* tokens are multiples of 2^(64 - this); see above */

/* A member as the ring sees it. The ring copies these. */
typedef struct kv_ring_member {
    swim_member_id id;
    char name[SWIM_NAME_MAX + 1];
    char addr[SWIM_ADDR_MAX + 1];
} kv_ring_member;

typedef struct kv_ring kv_ring;

/*
 * Build a ring of n members (any order; copied) with `tokens` tokens each (1..
 * KV_RING_TOKENS_MAX). n may be 0 (an empty ring: every preference list is empty).
 * Members are kept sorted by id: kv_ring_member_at(r, i) is the i-th smallest id.
 * KV_OK, KV_EINVAL (tokens out of range, two members with the same id), KV_ENOMEM.
 */
int kv_ring_build(kv_ring **out, const kv_ring_member *members, size_t n, uint32_t tokens);
void kv_ring_free(kv_ring *r);

size_t kv_ring_member_count(const kv_ring *r);
uint32_t kv_ring_tokens(const kv_ring *r); /* per member */
const kv_ring_member *kv_ring_member_at(const kv_ring *r, size_t i);
/* Index of the member with this id, or -1. */
long kv_ring_find(const kv_ring *r, const swim_member_id *id);

/* True when both rings have the same members (ids) and token count: same placement. */
bool kv_ring_equal(const kv_ring *a, const kv_ring *b);

/*
 * The first `want` distinct members clockwise from the owner token of hash (see above):
 * writes their member indices to out[0..k) and returns k = min(want, member count).
 * out[0..n) with n = replication.n is the preference list; out[n..) the fallbacks in
 * order. O(want * log tokens) or better.
 */
size_t kv_ring_walk(const kv_ring *r, uint64_t hash, size_t want, uint32_t *out);

/*
 * Share of the key space (0..1) for which member i is in the preference list of size n
 * (n = 1: the share it owns as primary). Sums to min(n, members) over all members.
 */
double kv_ring_share(const kv_ring *r, size_t i, size_t n);

/*
 * kv_ring_share for every member at once, in one pass over the ranges (kv_ring_share
 * costs a pass per member): out[i] for i < member count (the caller's array). n >= 1.
 * KV_OK, KV_EINVAL (n == 0), KV_ENOMEM.
 */
int kv_ring_shares(const kv_ring *r, size_t n, double *out);

/*
 * The ring's ranges in token order: range k is [lo, hi) with hi = the k-th smallest
 * token and lo = the previous one (wrapping for k = 0). Ranges of length 0 (colliding
 * tokens) are included. Count is members * tokens (0 for an empty ring).
 */
size_t kv_ring_range_count(const kv_ring *r);
void kv_ring_range_at(const kv_ring *r, size_t k, uint64_t *lo, uint64_t *hi);

/*
 * One difference between two rings: keys with hash in [lo, hi) had preference list
 * from[0..n_from) (member ids) on the old ring and have to[0..n_to) on the new.
 */
#define KV_RING_DIFF_MAX_N 16
typedef struct kv_ring_move {
    uint64_t lo, hi;
    uint32_t n_from, n_to;
    swim_member_id from[KV_RING_DIFF_MAX_N];
    swim_member_id to[KV_RING_DIFF_MAX_N];
} kv_ring_move;

/*
 * The ring diff (old → new) for preference lists of size n (1..KV_RING_DIFF_MAX_N):
 * every maximal hash interval whose preference list (as an ordered list of ids) differs,
 * in hash order, adjacent intervals with the same (from, to) merged. Either ring may be
 * empty. *out is malloc'ed (free it); *count may be 0. KV_OK, KV_EINVAL, KV_ENOMEM.
 */
int kv_ring_diff(const kv_ring *old_ring, const kv_ring *new_ring, size_t n, kv_ring_move **out,
                 size_t *count);

/*
 * Append the ring as the JSON object GET /v1/cluster/ring returns (api/openapi.yaml):
 * {"node_id":"<self, 32 hex>","replicas":n,"tokens_per_member":T,"members":[{"id":..,
 * "name":..,"address":..,"tokens":T,"primary_share":..,"replica_share":..,"self":..},..]}
 * with members sorted by name (then id), primary_share = kv_ring_share(.., 1) and
 * replica_share = kv_ring_share(.., n), as fractions with six decimals. Names and
 * addresses are escaped (bytes that are not UTF-8 become U+FFFD). self is the answering
 * node's id (it need not be a member). KV_OK, KV_EINVAL (n == 0, self NULL), KV_ENOMEM
 * (out may then hold part of the object).
 */
int kv_ring_json(const kv_ring *r, size_t n, const swim_member_id *self, kv_buf *out);

#endif
