/*
 * join.h — a new node joins a populated cluster (DESIGN §11, issue 7): it announces ring
 * status `joining`, takes writes for the ranges it will own at once (the write ring,
 * replication.c), streams those ranges' existing data from their current replicas, and
 * only then turns `normal` and counts for reads. Loop thread only.
 *
 * Plan. The ring diff from the read ring (members holding data) to the write ring (with
 * this node) names, for every range this node gains, the members that held it; the
 * source is the one that the change pushes out of the preference list (its copy is the
 * one this node replaces, so the copies of every acknowledged write stay where quorum
 * reads look), or another old holder when that one is down. Each source's ranges are cut
 * into KV_JOIN_SLICES slices of the hash space — the units of work and of the checkpoint.
 *
 * Streaming: two units at a time, each a range pull (sync.h: chunked, LZ4, throttled by
 * the source's streaming.rate, applied with store_apply so a newer write that arrived
 * meanwhile is never overwritten). A unit that fails is retried after a second.
 *
 * Checkpoint: <node.data_dir>/JOIN holds the state ("joining" or "normal"), the plan's
 * fingerprint and one line per finished unit with its bytes. A joining node that restarts
 * with the same plan (same ring) skips the finished units: it resumes, it does not start
 * over. The file is written without fsync (a lost line costs one unit streamed again).
 */
#ifndef KV_NODE_JOIN_H
#define KV_NODE_JOIN_H

#include "config/config.h"
#include "http/metrics.h"
#include "node/sync.h"
#include "ring/ring.h"
#include "store/store.h"
#include "swim/swim.h"

#include <stdbool.h>
#include <uv.h>

#define KV_JOIN_SLICES 16

typedef struct kv_join kv_join;

typedef struct kv_join_env {
    const kv_ring *(*read_ring)(void *arg);  /* members holding data; NULL before built */
    const kv_ring *(*write_ring)(void *arg); /* with joining members; NULL = the read ring */
    const char *(*addr_of)(void *arg, const swim_member_id *id);
    bool (*alive)(void *arg, const swim_member_id *id);
    /* false while this node has not yet met the cluster (no seed answered) */
    bool (*met_cluster)(void *arg);
    /* streaming is done: announce ring status normal */
    void (*set_normal)(void *arg);
    void *arg;
} kv_join_env;

/*
 * Whether this node starts as `joining`: its JOIN file says so (a join to resume), or
 * there is no JOIN file, the store is empty and cluster.seeds is not empty (a new node).
 * A node with data but no JOIN file (a member from before joins were streamed) and a node
 * without seeds start `normal`. Writes the file when it was missing. Blocking (start-up).
 */
bool kv_join_needed(const kv_config *cfg, kv_store *store);

/* Start driving the join (call only when kv_join_needed said so). KV_OK, KV_ENOMEM. */
int kv_join_start(kv_join **out, uv_loop_t *loop, const kv_config *cfg, kv_sync *sync,
                  kv_metrics *metrics, const swim_member_id *self, const kv_join_env *env);

/* The rings or liveness changed: (re)plan, start or continue streaming. */
void kv_join_update(kv_join *j);

/* True while joining (streaming not finished). */
bool kv_join_active(const kv_join *j);

/* Progress for status and metrics. */
typedef struct kv_join_progress {
    bool joining;
    uint32_t units, units_done;
    uint64_t bytes;         /* raw bytes streamed, including before a restart */
    uint64_t resumed_units; /* units found finished in the checkpoint at start */
} kv_join_progress;
void kv_join_get_progress(const kv_join *j, kv_join_progress *out);

void kv_join_publish_metrics(kv_join *j);

/* Cancel streaming and free j; done(arg) on the loop once its timer is closed. */
void kv_join_close(kv_join *j, void (*done)(void *arg), void *arg);

#endif
