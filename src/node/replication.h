/*
 * replication.h — the node's replication layer (DESIGN §7–§9): the adapter that wires
 * the ring (src/ring), the quorum coordinator (repl/coord.h), hinted handoff (repl/hints.h),
 * key listing (repl/listing.h) and the replica side of every message to the network (membership's
 * replica lane, batched per peer per loop turn), the local store and the loop's timers.
 * Loop thread only.
 *
 * The node hands it every client GET/PUT/DELETE of /v1/kv/{key} and GET /v1/kv (listing)
 * and GET /v1/cluster/ring; it answers them through the kv_http_req.
 */
#ifndef KV_NODE_REPLICATION_H
#define KV_NODE_REPLICATION_H

#include "config/config.h"
#include "http/metrics.h"
#include "http/server.h"
#include "node/membership.h"
#include "store/store.h"

#include <uv.h>

typedef struct kv_repl kv_repl;

/* Start on a running membership and an open store (both must outlive it). Opens the hint
 * store in <node.data_dir>/hints. joining: this node announced ring status `joining`
 * (kv_join_needed): stream its ranges, then turn normal (node/join.h). KV_OK or an error
 * (logged). */
int kv_repl_start(kv_repl **out, uv_loop_t *loop, const kv_config *cfg, kv_store *store,
                  kv_membership *memb, uint32_t node_id, kv_metrics *metrics, bool joining);

/*
 * Leave the cluster with our data (node/leave.h): announce ring status `leaving`, hand
 * every range over to the members that gain it, then done(arg) — the caller then leaves
 * for good (kv_membership_leave) and stops. KV_OK; KV_EEXIST when already leaving;
 * KV_EUNAVAIL while still joining; KV_ECLOSED while closing.
 */
int kv_repl_leave(kv_repl *r, void (*done)(void *arg), void *arg);
bool kv_repl_leaving(kv_repl *r);
/* While leaving: the members taking our ranges, and how many have them (0, 0 otherwise). */
void kv_repl_leave_progress(kv_repl *r, uint32_t *gainers, uint32_t *done);

/* The join's progress (all zero when the node is not joining). */
struct kv_join_progress;
void kv_repl_join_progress(kv_repl *r, struct kv_join_progress *out);

/* A client request on /v1/kv/{key}: key already percent-decoded and checked against
 * limits.max_key; method GET, PUT or DELETE. Answers req (now or later). */
void kv_repl_handle_kv(kv_repl *r, kv_http_req *req, const uint8_t *key, size_t klen);

/* GET /v1/kv (listing; the node has checked the method) — answers req. */
void kv_repl_handle_list(kv_repl *r, kv_http_req *req);

/* GET /v1/cluster/ring (the node has checked the method) — answers req. */
void kv_repl_handle_ring(kv_repl *r, kv_http_req *req);

/* True while the node was started with seeds and has not met another member yet (for at
 * most 10 s): key requests then answer 503 not_ready, and so does /readyz. */
bool kv_repl_joining(kv_repl *r);

/* Write counters and gauges into the metrics registry (before rendering /metrics). */
void kv_repl_publish_metrics(kv_repl *r);

/* Stop: answer pending client requests with 503, close the hint store; done(arg) on the
 * loop afterwards. */
void kv_repl_close(kv_repl *r, void (*done)(void *arg), void *arg);

#endif
