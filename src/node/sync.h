/*
 * sync.h — anti-entropy between replicas and range pulls (DESIGN §11, issue 7). Loop
 * thread only. Owned by the replication adapter (replication.c), which routes TREE / PULL
 * requests and their answers here and gives it a way to send.
 *
 * Anti-entropy: every antientropy.interval the node picks the next live ring member it
 * shares ranges with (round robin) and compares the two stores' trees (src/ae/merkle.h)
 * restricted to exactly the ranges both replicate — possible from the trees alone because
 * ring ranges are whole tree leaves (ring.h, "Alignment"). One TREE at level
 * SYNC_TOP_LEVEL, one more for the leaves under the differing nodes, then one PULL of the
 * differing leaves that names the item digests this node already has there: the peer
 * sends only the records this node lacks or holds in another version, and this node
 * applies them conditionally (store_apply: the newer version wins, so a pull is
 * idempotent). Each node pulls; the peer's own rounds pull the other way. Values whose TTL
 * has passed are never sent.
 *
 * Pulls: a pull is a sequence of chunks (src/repl/chunk.h: LZ4-compressed record runs),
 * one per PULL request, so the puller's applying sets the pace; the serving side walks its
 * store in ~1 ms slices from the loop's idle phase and spends at most streaming.rate bytes
 * per second on chunks for all pulls together (a token bucket), so client traffic keeps
 * the loop.
 */
#ifndef KV_NODE_SYNC_H
#define KV_NODE_SYNC_H

#include "config/config.h"
#include "http/metrics.h"
#include "repl/msg.h"
#include "ring/ring.h"
#include "store/store.h"
#include "swim/swim.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct kv_sync kv_sync;

/* What the sync module needs from its owner. */
typedef struct kv_sync_env {
    /* Queue m for the peer at addr (the replica batch path). KV_OK or an error. */
    int (*send)(void *arg, const char *addr, const kv_repl_msg *m);
    /* The current ring (NULL before it is built); valid until the next kv_sync call. */
    const kv_ring *(*ring)(void *arg);
    /* A member's peer address, or NULL when unknown; and whether it is alive. */
    const char *(*addr_of)(void *arg, const swim_member_id *id);
    bool (*alive)(void *arg, const swim_member_id *id);
    void *arg;
} kv_sync_env;

/* Create and start the anti-entropy timer (unless antientropy.interval is 0). KV_OK,
 * KV_ENOMEM. cfg, store, metrics and env->arg must outlive it. */
int kv_sync_start(kv_sync **out, uv_loop_t *loop, const kv_config *cfg, kv_store *store,
                  kv_metrics *metrics, const swim_member_id *self, const kv_sync_env *env);

/* A received TREE, TREE_ACK, PULL or PULL_DATA from the member `from_id` at `from`.
 * m's pointers are valid only during the call. */
void kv_sync_on_msg(kv_sync *s, const swim_member_id *from_id, const char *from,
                    const kv_repl_msg *m);

/*
 * Range pulls for other modules (node/join.c streams a joining node's ranges with them):
 * pull every record whose key hash lies in `pairs` (n_pairs packed [lo, hi) pairs, see
 * msg.h) from the member at addr, chunk by chunk, each chunk applied to the local store
 * (store_apply: only newer versions) before the next is asked for. cb(arg, status) once
 * at the end: KV_OK when the last chunk is applied; KV_ETIMEDOUT (no answer within a few
 * seconds plus what streaming.rate implies), KV_EUNAVAIL (the peer refused or restarted),
 * KV_ECORRUPT (a malformed chunk); with the raw (uncompressed) chunk bytes and records
 * received. NULL when it cannot start (closing, out of memory). The handle is valid until
 * cb runs or kv_sync_pull_cancel (no callback after that).
 */
typedef struct kv_sync_pull kv_sync_pull;
typedef void (*kv_sync_pull_cb)(void *arg, int status, uint64_t raw_bytes, uint64_t records);
kv_sync_pull *kv_sync_pull_start(kv_sync *s, const char *addr, const uint8_t *pairs, size_t n_pairs,
                                 kv_sync_pull_cb cb, void *arg);
void kv_sync_pull_cancel(kv_sync_pull *p);

/*
 * A member was removed (dead, `kvtool remove`): the ring went from old_ring to new_ring.
 * For every range this node gained, pull it from every remaining replica that held it
 * (an acknowledged write is on at least one of them), retried a few times; anti-entropy
 * covers what is still missing after that.
 */
void kv_sync_rereplicate(kv_sync *s, const kv_ring *old_ring, const kv_ring *new_ring);

/* Write the anti-entropy and streaming counters into the metrics registry. */
void kv_sync_publish_metrics(kv_sync *s);

/* Stop: abandon pulls in both directions, close the handles, free s once store applies in
 * flight have called back, then call done(arg) on the loop (never from inside this call).
 * The store must stay open until then. */
void kv_sync_close(kv_sync *s, void (*done)(void *arg), void *arg);

#endif
