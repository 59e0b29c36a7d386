/*
 * leave.h — a node leaves the cluster without losing a write (DESIGN §11, issue 7):
 * `kvtool leave` (POST /v1/cluster/leave) or SIGTERM with cluster.leave_drain. It announces
 * ring status `leaving`: it stays on the read ring (reads still find what it holds) but
 * leaves the write ring, so writes for its ranges go to their new owners too (joint
 * writes, replication.c). Then it hands each range over: the ring diff from the read ring
 * to the write ring names, per range, the member that gains it; each gainer is asked
 * (STREAM, repl/msg.h) to pull its ranges from this node and answers STREAM_DONE when
 * every record is applied. Once all have, done() runs and the node leaves for good
 * (`left`) and exits. Loop thread only.
 *
 * A gainer that is down is asked again when it is back (or when the ring changes); a
 * gainer that fails is asked again after a few seconds. A leave interrupted by a restart
 * of this node is not resumed: the node comes back `normal`; ask again.
 */
#ifndef KV_NODE_LEAVE_H
#define KV_NODE_LEAVE_H

#include "config/config.h"
#include "http/metrics.h"
#include "repl/msg.h"
#include "ring/ring.h"
#include "swim/swim.h"

#include <stdbool.h>
#include <uv.h>

typedef struct kv_leave kv_leave;

typedef struct kv_leave_env {
    const kv_ring *(*read_ring)(void *arg);
    const kv_ring *(*write_ring)(void *arg); /* NULL = the read ring */
    const char *(*addr_of)(void *arg, const swim_member_id *id);
    bool (*alive)(void *arg, const swim_member_id *id);
    int (*send)(void *arg, const char *addr, const kv_repl_msg *m);
    void (*done)(void *arg); /* every range is handed over */
    void *arg;
} kv_leave_env;

int kv_leave_start(kv_leave **out, uv_loop_t *loop, const kv_config *cfg, kv_metrics *metrics,
                   const swim_member_id *self, const kv_leave_env *env);

/* The rings or liveness changed: (re)plan, (re)ask. */
void kv_leave_update(kv_leave *l);

/* A STREAM_DONE from member from_id. */
void kv_leave_on_done(kv_leave *l, const swim_member_id *from_id, const kv_repl_msg *m);

/* Members asked, and how many have answered done. */
void kv_leave_progress(const kv_leave *l, uint32_t *gainers, uint32_t *done);

void kv_leave_publish_metrics(kv_leave *l);

/* Stop (no done() after) and free; cb(arg) on the loop once its timer is closed. */
void kv_leave_close(kv_leave *l, void (*cb)(void *arg), void *arg);

#endif
