/*
 * coord.h — the quorum coordinator (DESIGN §8, §9), sans-I/O.
 *
 * Any node coordinates any client GET/PUT/DELETE: it sends the request to the replicas of
 * the key, answers the client after R replies (read) or W acknowledgements (write), repairs
 * stale replicas it finds on the way (read repair), and turns writes for replicas that are
 * down or do not answer into hints. It never touches the network, the clock or the disk:
 * the adapter (src/repl/replication.c) feeds it inputs, each with `now` (ms, one monotonic
 * clock) and `wall_ms` where versions are made (ms since the epoch), and drains effects
 * with kv_coord_pop. Deterministic: no randomness, no hidden time.
 *
 * Replicas. The adapter resolves the key's preference list (src/ring) and each member's
 * liveness into kv_coord_target[] and passes it with the request: the first `n` targets
 * are the preference list (primaries), any after them are fallbacks in ring order. Only
 * primaries count toward R and W (strict quorum), unless the request allows a sloppy
 * quorum: then for each primary that is not alive, the next alive fallback receives the
 * write as a hint for that primary (WRITE with hint_for) and its acknowledgement counts.
 * A target marked `self` is this node: the adapter serves those sends from the local
 * store (through the same ack inputs).
 *
 * Writes and the real-time-order promise (DESIGN §8). The coordinator gives the write a
 * version from its hybrid logical clock and sends it to every alive primary. A replica
 * answers with the version it now holds: OK (ours), or STALE with a version >= ours. A
 * STALE answer with the same version counts as OK (a retry). W acknowledgements of one
 * version acknowledge the client. A STALE answer with a newer version does not count; if
 * the round can no longer reach W without it, the clock merges that version and the
 * write goes out again with a fresh version above it to every alive primary (a new
 * round; acknowledgements of earlier rounds no longer count). Why this is enough: at
 * quorum (W + W > N) the W primaries that acknowledge a later write include one of the W
 * that acknowledged an earlier write, and that one accepted the later version only
 * because it is newer — so a write that starts after another was acknowledged always
 * ends newer than it, whatever the wall clocks say. A newer version met elsewhere while W
 * others accept belongs to a concurrent write, which may be ordered after ours.
 * After KV_COORD_MAX_ROUNDS rounds the write fails (KV_EUNAVAIL, "contended").
 *
 * Hints: a primary that is not alive when a write starts, or that has not acknowledged
 * the final version when the write completes or times out, gets a HINT effect (the
 * adapter stores it durably and delivers it later). Hints never count toward W.
 *
 * Reads go to every alive primary; the client gets the newest of the first R answers
 * (a tombstone, an expired value or "not found" from all → KV_ENOTFOUND). The request
 * stays open until every sent replica has answered or the timeout passes; then each
 * replica that answered with an older version, or with nothing while a value or
 * tombstone exists, gets a WRITE of the newest record (read repair; fire and forget).
 *
 * Never hangs: every request has a deadline; at the deadline a request that has not
 * answered the client answers KV_EUNAVAIL with how many replicas answered and how many
 * were needed.
 *
 * Threads: one kv_coord belongs to one thread (the loop thread).
 */
#ifndef KV_REPL_COORD_H
#define KV_REPL_COORD_H

#include "common/hlc.h"
#include "repl/msg.h"
#include "swim/swim.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_COORD_MAX_ROUNDS   15 /* fits the 4 round bits of a request id */
#define KV_COORD_BUMP_LEAD_MS 2  /* a rewritten version leads the wall clock by this much */
#define KV_COORD_MAX_TARGETS  32

typedef struct kv_coord kv_coord;

typedef struct kv_coord_target {
    swim_member_id id;
    bool alive;     /* SWIM alive or suspect: worth sending to */
    bool self;      /* this node */
    uint8_t groups; /* writes with n_groups: bit g set = in preference list g (primaries) */
} kv_coord_target;

#define KV_COORD_MAX_GROUPS 4

typedef enum kv_coord_op {
    KV_COORD_GET = 1,
    KV_COORD_PUT = 2,
    KV_COORD_DELETE = 3,
} kv_coord_op;

/* A client request. Pointers are read during kv_coord_submit only (copied). */
typedef struct kv_coord_req {
    kv_coord_op op;
    const uint8_t *key;
    size_t klen;
    const uint8_t *value; /* PUT */
    size_t vlen;
    uint64_t expiry_ms; /* PUT: wall-clock deadline, 0 = never */
    uint32_t n;         /* preference-list size: targets[0..n) are primaries */
    uint32_t need;      /* R (GET) or W (PUT, DELETE): 1..n */
    bool sloppy;        /* fallbacks may stand in for dead primaries (writes only) */
    bool read_repair;   /* GET: repair stale replicas when the read closes (caller's choice) */
    uint64_t timeout_ms;
    const kv_coord_target *targets; /* n primaries, then fallbacks */
    uint32_t n_targets;             /* <= KV_COORD_MAX_TARGETS */
    /*
     * Joint quorums (writes while the ring changes: a node joining or leaving). With
     * n_groups > 0 the primaries are the union of n_groups preference lists (each
     * primary's `groups` says which) and the write is acknowledged only once, for every
     * list g, group_need[g] of its members acknowledged (a fallback standing in for a
     * primary counts for that primary's lists); `need` is then only what 503 answers
     * report. 0 = one list, `need` acknowledgements among the primaries.
     */
    uint32_t n_groups;
    uint32_t group_need[KV_COORD_MAX_GROUPS];
    void *client; /* returned untouched in the REPLY effect */
} kv_coord_req;

typedef enum kv_coord_effect_kind {
    KV_COORD_SEND = 1,  /* send msg to peer `to` (maybe self) */
    KV_COORD_REPLY = 2, /* answer the client */
    KV_COORD_HINT = 3,  /* store msg (a WRITE) durably as a hint for `to` */
} kv_coord_effect_kind;

typedef struct kv_coord_effect {
    kv_coord_effect_kind kind;
    swim_member_id to; /* SEND, HINT */
    bool to_self;      /* SEND: the target is this node */
    kv_repl_msg msg;   /* SEND: WRITE or READ with req_id set; HINT: the WRITE (req_id 0) */
    /* REPLY */
    void *client;
    int status;     /* KV_OK, KV_ENOTFOUND, KV_EUNAVAIL, or when the quorum failed
                       because replicas failed: KV_ENOSPC (one reported NOSPACE) or
                       KV_EIO (ERROR) */
    kv_version ver; /* KV_OK: the version read or written; KV_ENOTFOUND: of a tombstone, or 0 */
    const uint8_t *value; /* GET KV_OK */
    size_t vlen;
    uint32_t answered;  /* replicas that answered (EUNAVAIL: toward the quorum) */
    uint32_t needed;    /* R or W */
    const char *reason; /* KV_EUNAVAIL: "timeout", "not_enough_replicas", "contended" */
} kv_coord_effect;

/* node_id goes into every version this coordinator makes (the tie-break). */
kv_coord *kv_coord_new(uint32_t node_id);
void kv_coord_free(kv_coord *c);

/*
 * Start request ids from seed (a random number from the adapter; default 1). Answers to a
 * previous run of this node can still be queued at peers when it restarts quickly; with
 * ids that start where the last run's did, such an answer could match a new request in
 * the same slot. Call before the first submit.
 */
void kv_coord_seed_ids(kv_coord *c, uint64_t seed);

/* Merge a version seen elsewhere (e.g. the local store's newest at start). */
void kv_coord_observe(kv_coord *c, const kv_version *v, uint64_t wall_ms);

/*
 * Start a request. KV_OK (effects follow; exactly one REPLY eventually, maybe at once
 * when fewer than `need` primaries are alive: KV_EUNAVAIL "not_enough_replicas"),
 * KV_EINVAL (bad request), KV_ENOMEM. A WRITE that cannot get a fresh version (clock
 * exhausted) answers KV_EIO.
 */
int kv_coord_submit(kv_coord *c, uint64_t now, uint64_t wall_ms, const kv_coord_req *req);

/* A WRITE_ACK or READ_ACK from replica `from` (adapter: from the network or the local
 * store). Unknown req_id, wrong sender or duplicate: ignored (counted). */
void kv_coord_on_ack(kv_coord *c, uint64_t now, uint64_t wall_ms, const swim_member_id *from,
                     const kv_repl_msg *ack);

/* Replica `id` is known dead now: requests waiting on it stop waiting (reads count it as
 * failed; writes hint it). */
void kv_coord_on_member_down(kv_coord *c, uint64_t now, const swim_member_id *id);

/* Timers: call at or after kv_coord_next_deadline. */
void kv_coord_tick(kv_coord *c, uint64_t now, uint64_t wall_ms);
/* Earliest time tick has work, UINT64_MAX if none. */
uint64_t kv_coord_next_deadline(const kv_coord *c);

/* Next effect, or false. Pointers in *out are valid until the next call into c. */
bool kv_coord_pop(kv_coord *c, kv_coord_effect *out);

/* Requests open (answered or not, until their last replica answered or timed out). */
size_t kv_coord_inflight(const kv_coord *c);

typedef struct kv_coord_stats {
    uint64_t reads, writes; /* requests submitted */
    uint64_t unavailable;   /* answered KV_EUNAVAIL */
    uint64_t timeouts;      /* of those: deadline passed */
    uint64_t rounds_extra;  /* write rounds beyond the first (version bumps) */
    uint64_t read_repairs;  /* repair WRITEs sent */
    uint64_t hints;         /* HINT effects */
    uint64_t acks_ignored;  /* unknown, duplicate or late acks */
} kv_coord_stats;
void kv_coord_get_stats(const kv_coord *c, kv_coord_stats *out);

#endif
