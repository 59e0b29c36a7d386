/*
 * membership.h — cluster membership of one node: the SWIM core (src/swim) wired to the
 * nng transport (src/net), the loop's timers, seed resolution, the node's identity
 * files, logs and metrics. Loop thread only.
 *
 * The node starts it after its HTTP listener, asks it for GET /v1/cluster/members and
 * for metrics, tells it to leave on SIGTERM, and closes it before the store.
 */
#ifndef KV_NODE_MEMBERSHIP_H
#define KV_NODE_MEMBERSHIP_H

#include "common/buf.h"
#include "config/config.h"
#include "http/metrics.h"
#include "node/identity.h"
#include "swim/swim.h"

#include <uv.h>

typedef struct kv_membership kv_membership;

/*
 * Listen on cluster.host:cluster.port, work out the advertise address (cluster.advertise,
 * else cluster.host unless it is a wildcard, else the first non-loopback IPv4 address of
 * an interface that is up, else 127.0.0.1; with the bound port), create the core as
 * member ident (name node.name) and, when cluster.seeds is not empty, start joining
 * through them. cfg, ident and metrics must outlive the membership. KV_OK; KV_EIO when
 * the peer port cannot be bound; KV_ECONFIG for an unusable advertise address or name;
 * KV_ENOMEM. Every failure is logged. http_port (the bound client port, 0 = unknown) is
 * told to the other members, so that tools can reach every node's API. joining: announce
 * ring status `joining` (a new node that streams its ranges before it serves reads; see
 * node/join.h) instead of `normal`.
 */
int kv_membership_start(kv_membership **out, uv_loop_t *loop, const kv_config *cfg,
                        const kv_node_identity *ident, kv_metrics *metrics, int http_port,
                        bool joining);

/*
 * Remove the dead member named `name` for good (swim_remove_member; `kvtool remove`): it
 * is gossiped as `left`, leaves the ring, and the members that gain its ranges copy them
 * from the replicas that remain (replication.c). KV_OK; KV_ENOTFOUND (no such member, or
 * ourselves); KV_EUNAVAIL (it is not dead: alive or suspect); KV_EEXIST (already left).
 */
int kv_membership_remove(kv_membership *m, const char *name);

/* Change this node's ring status (gossiped with a new incarnation; logged). The on_change
 * hook is not called from inside (the caller rebuilds what it needs itself). KV_OK;
 * KV_ECLOSED after a leave or close. */
int kv_membership_set_ring(kv_membership *m, swim_ring_status ring);

/* "host:port" other members use to reach this node. */
const char *kv_membership_advertise(const kv_membership *m);

/* This node's member id. */
const swim_member_id *kv_membership_self_id(const kv_membership *m);

/* The SWIM core, read-only: the member table (swim_member_count/at/find) for the ring. */
const swim_t *kv_membership_core(const kv_membership *m);

/*
 * Hooks for the replication layer (src/repl), loop thread:
 *   on_repl(arg, data, len) — a received peer message that is a replica batch
 *     (kv_repl_is_batch); data valid during the call.
 *   on_change(arg) — the member table changed (a member added, forgotten, or its state,
 *     ring status or address changed): rebuild the ring, re-check liveness. Called after
 *     the membership's own handling of the change, never from inside a kv_membership_*
 *     call made by the hook's owner.
 * Either may be NULL. Call once, before traffic matters (right after start).
 */
typedef struct kv_membership_hooks {
    void (*on_repl)(void *arg, const uint8_t *data, size_t len);
    void (*on_change)(void *arg);
    void *arg;
} kv_membership_hooks;
void kv_membership_set_hooks(kv_membership *m, const kv_membership_hooks *h);

/* Send a replica batch to addr on the replication lane (kv_net_send's contract). */
int kv_membership_send_repl(kv_membership *m, const char *addr, const void *data, size_t len);

/*
 * Append {"node_id":..,"name":..,"address":..,"joined":..,"members":[...]} to out: every
 * member this node knows (itself included, dead and left ones until they are forgotten),
 * sorted by name, each with id, name, address, state, incarnation, ring_status, since
 * (RFC 3339 UTC: when this node saw its state last change) and self. KV_OK or KV_ENOMEM.
 */
int kv_membership_members_json(kv_membership *m, kv_buf *out);

/* Write the membership counters and gauges into the metrics registry (call before
 * rendering /metrics). */
void kv_membership_publish_metrics(kv_membership *m);

/*
 * Leave the cluster gracefully: announce `left` to other members and call done(arg) on
 * the loop once the announcement went out (plus a short grace for the sockets to flush),
 * or after cluster.leave_timeout at the latest. Never calls done from inside this call.
 * After it the node answers no more peer messages. Call at most once.
 */
void kv_membership_leave(kv_membership *m, void (*done)(void *arg), void *arg);

/* Stop everything and free m; done(arg) is called on the loop once every handle and
 * request is finished. Without a leave first, other members will find this node dead. */
void kv_membership_close(kv_membership *m, void (*done)(void *arg), void *arg);

#endif
