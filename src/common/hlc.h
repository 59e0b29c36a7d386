/*
 * hlc.h — versions and the hybrid logical clock (HLC) that assigns them (DESIGN §8).
 *
 * A version is (ts, node): ts packs wall-clock milliseconds since the epoch into the upper
 * 48 bits and a logical counter into the low 16 bits; node is the writing node's id and
 * breaks ties. Versions are totally ordered by (ts, node); the highest wins.
 *
 * The clock is sans-I/O: callers pass `now_ms` (wall clock, ms since the epoch) into every
 * call; the clock never reads time itself, so tests and simulations drive it. It merges
 * every version it observes (kv_hlc_observe), so a version it assigns afterwards is newer
 * than anything it has seen, whatever the local wall clock says — this is what keeps
 * clock skew between nodes from losing acknowledged writes.
 *
 * Not thread-safe: a kv_hlc belongs to one thread (the loop thread of its owner). The
 * version helpers are pure and safe from any thread.
 */
#ifndef KV_COMMON_HLC_H
#define KV_COMMON_HLC_H

#include <stdbool.h>
#include <stdint.h>

/* A record's version. Totally ordered by (ts, node); {0, 0} is older than every version
 * a clock assigns. */
typedef struct kv_version {
    uint64_t ts;   /* HLC timestamp: wall ms << KV_HLC_LOGICAL_BITS | logical counter */
    uint32_t node; /* writer's node id: the tie-break */
} kv_version;

#define KV_HLC_LOGICAL_BITS 16

/* <0, 0, >0 as a is older than, equal to, newer than b. */
static inline int kv_version_cmp(const kv_version *a, const kv_version *b)
{
    if (a->ts != b->ts)
        return a->ts < b->ts ? -1 : 1;
    if (a->node != b->node)
        return a->node < b->node ? -1 : 1;
    return 0;
}

/* The wall-clock milliseconds part of a timestamp. */
static inline uint64_t kv_hlc_ts_ms(uint64_t ts)
{
    return ts >> KV_HLC_LOGICAL_BITS;
}

typedef struct kv_hlc {
    uint64_t last; /* highest timestamp assigned or observed */
    uint32_t node; /* goes into every version this clock assigns */
} kv_hlc;

/* A clock for node id `node` that has seen nothing yet. */
void kv_hlc_init(kv_hlc *c, uint32_t node);

/*
 * A new version for a local write: newer than every version this clock has assigned or
 * observed, and at least now_ms in its wall part. Strictly increasing across calls even
 * when now_ms goes backwards. (When the logical counter would overflow the low 16 bits
 * — 65536 writes within one millisecond — the timestamp simply runs ahead of the wall
 * clock by a millisecond; ordering is never violated.)
 */
kv_version kv_hlc_now(kv_hlc *c, uint64_t now_ms);

/*
 * True when kv_hlc_now cannot return a version newer than everything seen: the clock has
 * observed the largest possible timestamp (only a corrupt or hostile input carries one).
 * A caller must then refuse the write instead of assigning a version that would lose to
 * what is stored — kv_hlc_now saturates rather than wrapping to 0.
 */
bool kv_hlc_exhausted(const kv_hlc *c, uint64_t now_ms);

/* Versions whose wall part runs more than this far ahead of the local clock are refused
 * by conditional writes: a node with a clock a day fast (or a forged version) must not
 * push every later write of this node into the past. */
#define KV_HLC_MAX_AHEAD_MS (24ull * 3600 * 1000)

/*
 * Merge a version seen elsewhere (a replica's answer, a record read from disk, a
 * conditional write): afterwards kv_hlc_now returns something newer than v. now_ms is
 * accepted for symmetry with the HLC receive rule and future drift checks; the merge
 * itself is max(last, v->ts).
 */
void kv_hlc_observe(kv_hlc *c, const kv_version *v, uint64_t now_ms);

/* How far v's wall part runs ahead of now_ms (0 if not ahead), in ms. For callers that
 * want to refuse or log versions from a node whose clock is far in the future. */
uint64_t kv_hlc_ahead_ms(const kv_version *v, uint64_t now_ms);

#endif
