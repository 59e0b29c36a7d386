/*
 * cluster.h — helpers for tests that run a cluster of real kvstore processes on 127.0.0.1
 * (on top of harness.h): start N nodes that find each other through a seed, wait until
 * every node sees every other one alive, kill -9 / stop / restart a node on its data dir
 * and ports, wait until the others see it dead or alive again; and a small blocking client
 * for /v1/kv/{key} and the key listing that returns status, body and ETag.
 *
 * Every wait has a deadline. Nodes are named n0..n<N-1>; node 0 starts without seeds, the
 * others name node 0's peer address (a restarted node names any other running node).
 * The nodes run with fast SWIM timing (probe every 200 ms) so that failure detection takes
 * seconds.
 *
 * Single-threaded, except the th_kv_* client functions and th_kv_conn, which are safe to use
 * from several threads at once (each thread with its own th_kv_conn).
 */
#ifndef KV_TESTS_CLUSTER_H
#define KV_TESTS_CLUSTER_H

#include "harness.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TH_CLUSTER_MAX 8

/* The probe period the cluster's nodes run with (cluster.probe_interval). */
#define TH_CLUSTER_PROBE_MS 200

typedef struct th_cluster {
    int n;         /* nodes in the cluster */
    char dir[256]; /* temporary directory holding n0..n<N-1>/ (removed by fini) */
    th_node node[TH_CLUSTER_MAX];
    bool started[TH_CLUSTER_MAX]; /* has been started at least once (ports are fixed then) */
    /* Lowest incarnation a restarted node must show before it counts as back. */
    double inc_floor[TH_CLUSTER_MAX];
    /* Extra arguments for every node and for one node, and extra environment entries for one
     * node ("K=V"): NULL-terminated arrays owned by the caller, read at every start (set them
     * before th_cluster_start). Later arguments win, so node_args beat args. */
    const char *const *args;
    const char *const *node_args[TH_CLUSTER_MAX];
    const char *const *node_env[TH_CLUSTER_MAX];
    /* th_cluster_wait_settled: also when a running node is still joining (by default every
     * running node must be alive AND ring status normal everywhere). */
    bool allow_joining;
} th_cluster;

/* Set up c for n nodes (no process started yet) in a fresh temporary directory. */
void th_cluster_init(th_cluster *c, int n);

/* For criterion .fini hooks: SIGKILL every node the harness started in this process and
 * remove c's directory. Safe to call on a cluster that never started. */
void th_cluster_fini(th_cluster *c);

/*
 * Start node i: the first time with fresh ports and, for i > 0, node 0's peer address as
 * seed; later (a restart) on the same data dir, HTTP port and peer port, seeded with any
 * other running node. Waits for /healthz (15 s). 0 or -1 (the log was printed).
 */
int th_cluster_start_node(th_cluster *c, int i);

/* Start every node (0 first), then wait until each sees all n alive and normal, and no node
 * still sends writes to the ring before the last join (kv_ring_grace_active; timeout_ms).
 * 0 or -1 (views and logs printed). */
int th_cluster_start(th_cluster *c, int timeout_ms);

/* kill -9 node i and reap it. */
void th_cluster_kill9(th_cluster *c, int i);

/* SIGTERM node i and wait for it to exit (10 s, then SIGKILL). Returns its exit status
 * (-1: it had to be killed or died by a signal). */
int th_cluster_stop(th_cluster *c, int i);

/* Is node i's process running? */
bool th_cluster_running(th_cluster *c, int i);

/*
 * Wait until the views agree with the processes: every running node sees every running node
 * `alive` (a restarted one with an incarnation above the one it had before the restart) and
 * ring status `normal` (unless allow_joining), and every node that is not running as `dead`
 * or `left`. Returns the milliseconds it took, or
 * -1 after timeout_ms (every view is printed then).
 */
int64_t th_cluster_wait_settled(th_cluster *c, int timeout_ms);

/*
 * Print each node's view of the members and the tail of its log to stderr: the last
 * `lines` lines above debug level, plus (when needle is not NULL) the last `lines` lines
 * at any level that contain needle. For a failing assertion.
 */
void th_cluster_dump(th_cluster *c, const char *needle, int lines);

/* Sum of a metric over the running nodes except `skip` (-1: none); -1 if any /metrics
 * could not be read. */
double th_cluster_metric_sum(th_cluster *c, int skip, const char *name, const char *labels);

/*
 * Assert inside cluster tests: on failure print the nodes' views and log tails, then fail
 * like cr_assert_fail. Needs <criterion/criterion.h> in the test file.
 */
/* A node's GET /v1/cluster/digest (its anti-entropy tree root and store counts). */
typedef struct th_digest {
    char root[17];
    double keys, tombstones, depth;
} th_digest;

/* Node i's digest; false when it could not be read. */
bool th_cluster_digest(th_cluster *c, int i, th_digest *d);

/* Poll (every 10 ms, up to timeout_ms) until every running node shows the same root and
 * key count; that digest in *out. false with the last difference in why. */
bool th_cluster_roots_agree(th_cluster *c, int timeout_ms, th_digest *out, char *why, size_t cap);

#define TH_CLUSTER_CHECK(c, cond, ...)                                                             \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            th_cluster_dump((c), NULL, 40);                                                        \
            cr_assert_fail(__VA_ARGS__);                                                           \
        }                                                                                          \
    } while (0)

/* ---------- a client for /v1/kv ---------- */

/* One answer of the key-value API. Free with th_kv_resp_free. */
typedef struct th_kv_resp {
    int status; /* HTTP status; 0 when no complete answer arrived in time */
    char *body; /* NUL-terminated (empty string when there was no answer) */
    size_t body_len;
    char etag[80];    /* the ETag header as sent (with its quotes), "" if absent */
    bool has_version; /* the ETag parsed as "<ts>.<node>" */
    uint64_t ts;      /* HLC timestamp of the ETag: wall ms << 16 | logical */
    uint32_t node;    /* writer's node id of the ETag */
    char content_type[80];
    int64_t ms; /* from sending the request to the end of the answer (monotonic) */
} th_kv_resp;

void th_kv_resp_free(th_kv_resp *r);

/*
 * method ("GET", "PUT", "DELETE") /v1/kv/<key percent-encoded>[?query] on port, on a fresh
 * connection, waiting at most timeout_ms for the answer. query is without '?' ("r=1",
 * "consistency=all"; NULL or "" for none); body is sent for PUT. Returns 0 when an answer
 * arrived (any status), -1 otherwise (out->status = 0). out is always set.
 */
int th_kv_request(int port, const char *method, const char *key, const char *query,
                  const void *body, size_t blen, int timeout_ms, th_kv_resp *out);

/* Shorthands on a node with a 10 s timeout; value is a NUL-terminated string. */
int th_kv_get(const th_node *n, const char *key, const char *query, th_kv_resp *out);
int th_kv_put(const th_node *n, const char *key, const char *value, const char *query,
              th_kv_resp *out);
int th_kv_delete(const th_node *n, const char *key, const char *query, th_kv_resp *out);

/* A keep-alive connection to one node, reconnected when the server closed it. One thread. */
typedef struct th_kv_conn {
    int port;
    int fd; /* -1 when not connected */
} th_kv_conn;

void th_kv_conn_init(th_kv_conn *c, int port);
/* As th_kv_request, on the connection. A request whose answer did not arrive leaves the
 * connection closed (the next request reconnects); it is never retried. */
int th_kv_conn_request(th_kv_conn *c, const char *method, const char *key, const char *query,
                       const void *body, size_t blen, int timeout_ms, th_kv_resp *out);
void th_kv_conn_close(th_kv_conn *c);

/* Parse an ETag / listing version "<ts>.<node>" (quotes optional). */
bool th_kv_parse_version(const char *s, uint64_t *ts, uint32_t *node);

/* <0, 0, >0 as version (ts_a, node_a) is older than, equal to, newer than (ts_b, node_b). */
int th_kv_version_cmp(uint64_t ts_a, uint32_t node_a, uint64_t ts_b, uint32_t node_b);

/* A whole key listing gathered page by page. Free with th_kv_list_free. */
typedef struct th_kv_list {
    size_t n;
    char **keys;     /* as listed (percent-encoded the way a path takes them) */
    char **versions; /* "<ts>.<node>" */
    int pages;
} th_kv_list;

/*
 * GET /v1/kv?prefix=<prefix>&limit=<limit>[&cursor=...] on port, following next_cursor
 * until it is null (at most max_pages pages). 0, or -1 with the reason in why (a non-200
 * answer, a page without "keys", too many pages).
 */
int th_kv_list_all(int port, const char *prefix, int limit, int max_pages, th_kv_list *out,
                   char *why, size_t cap);
void th_kv_list_free(th_kv_list *l);

#endif
