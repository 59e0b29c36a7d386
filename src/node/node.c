/*
 * node.c — one kvstore node: data-directory lock, storage engine, HTTP API routes, signal
 * handling and the graceful shutdown sequence. Everything here runs on the main thread,
 * which is the node's single libuv loop thread (DESIGN §4).
 *
 * Design notes — shutdown sequence:
 *   SIGINT/SIGTERM → state SHUTTING_DOWN (/readyz answers 503) → the HTTP server closes
 *   gracefully (stops accepting and reading, waits for every in-flight request — including
 *   writes waiting for fsync — to be answered and written) → the store closes (fsync,
 *   close files) → signal handles close → the loop runs out of handles and uv_run returns.
 *   A second signal during shutdown exits at once with status 1; with storage.sync=always
 *   nothing acknowledged is lost by that, with interval/never the OS page cache still
 *   holds the data unless the machine itself goes down.
 */
#include "node/node.h"

#include "ae/merkle.h"
#include "common/buf.h"
#include "common/pct.h"
#include "common/log.h"
#include "http/metrics.h"
#include "http/server.h"
#include "kvstore/error.h"
#include "node/identity.h"
#include "node/join.h"
#include "node/membership.h"
#include "node/replication.h"
#include "ring/ring.h"
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef enum node_state {
    NODE_STARTING = 0,
    NODE_SERVING,
    NODE_SHUTTING_DOWN,
} node_state;

typedef struct kv_node {
    const kv_config *cfg;
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    kv_store *store;
    kv_http_server *http;
    kv_metrics *metrics;
    node_state state;
    kv_node_identity ident; /* NODE_ID and this start's incarnation (DESIGN §6) */
    kv_membership *memb;    /* SWIM over nng (DESIGN §6) */
    kv_repl *repl;          /* ring, quorum coordinator, hints (DESIGN §7-§9) */
    int shutdown_waits;     /* leave and HTTP drain, both run at once on SIGTERM */
    int lock_fd;
    int exit_status;
} kv_node;

#define KV_PREFIX "/v1/kv/"

/* Depth of the storage engine's anti-entropy tree (GET /v1/cluster/digest). Ring ranges
 * are whole leaves only at a depth of at least the ring's alignment (ring.h). */
#define KV_NODE_TREE_DEPTH 16
_Static_assert(KV_NODE_TREE_DEPTH >= KV_RING_ALIGN_BITS, "tree leaves finer than ring ranges");

/* ---------- data directory ---------- */

/* mkdir -p for path; 0 or -1 with errno set. */
static int mkdir_p(const char *path)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

/*
 * Take the exclusive lock on <data_dir>/LOCK. flock is released by the kernel when the
 * process dies, so a kill -9 never leaves a stale lock behind.
 */
static int node_lock_data_dir(kv_node *n)
{
    const char *dir = n->cfg->node_data_dir;
    if (mkdir_p(dir) != 0) {
        kv_log_error("cannot create data directory", KV_STR("data_dir", dir),
                     KV_STR("reason", strerror(errno)));
        return KV_EIO;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/LOCK", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        kv_log_error("cannot open lock file", KV_STR("path", path),
                     KV_STR("reason", strerror(errno)));
        return KV_EIO;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pidbuf[32] = "";
        ssize_t r = pread(fd, pidbuf, sizeof(pidbuf) - 1, 0);
        if (r > 0)
            pidbuf[r] = '\0';
        pidbuf[strcspn(pidbuf, "\n")] = '\0';
        if (e == EWOULDBLOCK)
            kv_log_error("data directory is in use by another kvstore process",
                         KV_STR("data_dir", dir), KV_STR("lock", path),
                         KV_STR("holder_pid", pidbuf));
        else
            kv_log_error("cannot lock data directory", KV_STR("lock", path),
                         KV_STR("reason", strerror(e)));
        close(fd);
        return KV_ELOCKED;
    }
    char pid[32];
    int len = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len)
        kv_log_warn("cannot write pid to lock file", KV_STR("path", path),
                    KV_STR("reason", strerror(errno)));
    n->lock_fd = fd;
    return KV_OK;
}

/* Each client connection is a file descriptor: lift the soft limit to the hard one so
 * limits.max_connections, not the shell's default of 1024, is what bounds them. */
static void node_raise_fd_limit(const kv_config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Headroom for segments, the listener and the loop's own descriptors. */
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)cfg->limits_max_connections + 64)
        kv_log_warn("open-file limit is below limits.max_connections; connections beyond it "
                    "will be refused by the OS",
                    KV_UINT("nofile", rl.rlim_cur),
                    KV_UINT("max_connections", cfg->limits_max_connections));
}

/* ---------- request helpers ---------- */

/* The key of a /v1/kv/{key} path, percent-decoded into out (NUL-terminated). */
static int percent_decode(const char *src, size_t n, kv_buf *out)
{
    kv_buf_reset(out);
    if (kv_buf_reserve(out, n + 1))
        return KV_ENOMEM;
    int rc = kv_pct_decode(src, n, (uint8_t *)out->data, n, &out->len, NULL);
    if (rc != KV_OK)
        return rc;
    out->data[out->len] = '\0';
    return KV_OK;
}

static const char *method_allow_get = "GET";

static void respond_method_not_allowed(kv_http_req *req, const char *allow)
{
    char detail[96];
    snprintf(detail, sizeof(detail), "allowed methods: %s", allow);
    kv_http_header h[] = {{"Allow", allow}};
    kv_http_respond_problem_headers(req, 405, "method_not_allowed", detail, h, 1);
}

static void respond_json(kv_http_req *req, int status, const char *json)
{
    kv_http_respond(req, status, "application/json", NULL, 0, json, strlen(json));
}

/* ---------- routes ---------- */

static void handle_kv(kv_node *n, kv_http_req *req)
{
    req->route = "kv";
    const char *raw = req->path + strlen(KV_PREFIX);
    size_t rawlen = req->path_len - strlen(KV_PREFIX);
    if (req->method != HTTP_GET && req->method != HTTP_PUT && req->method != HTTP_DELETE) {
        respond_method_not_allowed(req, "GET, PUT, DELETE");
        return;
    }
    kv_buf key = KV_BUF_INIT;
    int rc = percent_decode(raw, rawlen, &key);
    if (rc == KV_ENOMEM) {
        kv_http_respond_problem(req, 500, "internal", "out of memory");
        goto out;
    }
    if (rc != KV_OK) {
        kv_http_respond_problem(req, 400, "invalid_key",
                                "the key has a '%' that is not followed by two hex digits");
        goto out;
    }
    if (key.len == 0) {
        kv_http_respond_problem(req, 400, "invalid_key", "the key is empty");
        goto out;
    }
    if (key.len > n->cfg->limits_max_key) {
        char d[128];
        snprintf(d, sizeof(d), "the key is %zu bytes; limits.max_key is %" PRIu32, key.len,
                 n->cfg->limits_max_key);
        kv_http_respond_problem(req, 414, "key_too_long", d);
        goto out;
    }
    if (n->state == NODE_SHUTTING_DOWN && req->method != HTTP_GET) {
        kv_http_respond_problem(req, 503, "shutting_down", "the node is shutting down");
        goto out;
    }

    /* Every key request is coordinated across its replicas (a one-node cluster too). */
    kv_repl_handle_kv(n->repl, req, (const uint8_t *)key.data, key.len);
out:
    kv_buf_free(&key);
}

static void add_store_gauges(kv_node *n)
{
    kv_store_stats st;
    store_stats(n->store, &st);
    kv_metrics_gauge(n->metrics, "kv_store_keys", "Live keys in the storage engine.",
                     (double)st.keys);
    kv_metrics_gauge(n->metrics, "kv_store_live_bytes", "Key and value bytes of live keys.",
                     (double)st.live_bytes);
    kv_metrics_gauge(n->metrics, "kv_store_disk_bytes", "Bytes of all segment files.",
                     (double)st.disk_bytes);
    kv_metrics_gauge(n->metrics, "kv_store_segments", "Segment files.", (double)st.segments);
    kv_metrics_counter_set(n->metrics, "kv_store_corrupt_records_total",
                           "Records skipped or truncated as corrupt since start.",
                           st.corrupt_records);
    kv_metrics_counter_set(n->metrics, "kv_store_corrupt_reads_total",
                           "Reads that found damaged bytes on disk (answered 500, never served).",
                           st.corrupt_reads);
    kv_metrics_counter_set(n->metrics, "kv_store_truncated_bytes_total",
                           "Torn-tail bytes removed at start.", st.truncated_bytes);
    kv_metrics_counter_set(n->metrics, "kv_store_fsyncs_total", "fsync rounds made.", st.fsyncs);
    kv_metrics_counter_set(n->metrics, "kv_store_write_errors_total",
                           "Writes refused because the disk failed or was full.", st.write_errors);
    kv_metrics_counter_set(n->metrics, "kv_store_sync_errors_total",
                           "fsync rounds that failed (their writes were refused).", st.sync_errors);
    kv_metrics_gauge(n->metrics, "kv_store_dead_bytes",
                     "Garbage bytes in segments (what compaction reclaims).",
                     (double)st.dead_bytes);
    kv_metrics_gauge(n->metrics, "kv_store_tombstones", "Tombstones held (not purged).",
                     (double)st.tombstones);
    kv_metrics_gauge(n->metrics, "kv_store_index_bytes", "Memory held by the key index.",
                     (double)st.index_bytes);
    kv_metrics_counter_set(n->metrics, "kv_store_compactions_total", "Compactions finished.",
                           st.compactions);
    kv_metrics_counter_set(n->metrics, "kv_store_compaction_errors_total",
                           "Compactions that failed (old segments kept).", st.compaction_errors);
    kv_metrics_counter_set(n->metrics, "kv_store_compaction_bytes_written_total",
                           "Segment bytes written by compactions.", st.compact_bytes_out);
    kv_metrics_counter_set(n->metrics, "kv_store_expired_dropped_total",
                           "Expired values and purged tombstones dropped by compaction.",
                           st.expired_dropped);
}

/*
 * GET /v1/cluster/digest: this node's anti-entropy tree root — the sum of the digests of
 * every key version and tombstone it holds (src/ae/merkle.h). Two replicas of the same
 * ranges that hold the same data show the same root; with N equal to the cluster size,
 * every node holds every key and all roots agree once replication has settled.
 */
static void respond_digest(kv_node *n, kv_http_req *req)
{
    const kv_merkle *t = n->store ? store_merkle(n->store) : NULL;
    if (!t) {
        kv_http_respond_problem(req, 503, "not_ready", "the storage engine is not open");
        return;
    }
    kv_store_stats st;
    store_stats(n->store, &st);
    kv_join_progress jp;
    memset(&jp, 0, sizeof(jp));
    if (n->repl)
        kv_repl_join_progress(n->repl, &jp);
    bool leaving = n->repl && kv_repl_leaving(n->repl);
    uint32_t gainers = 0, gainers_done = 0;
    if (leaving)
        kv_repl_leave_progress(n->repl, &gainers, &gainers_done);
    char body[640];
    snprintf(body, sizeof(body),
             "{\"depth\":%u,\"root\":\"%016" PRIx64 "\",\"keys\":%" PRIu64
             ",\"tombstones\":%" PRIu64 ",\"live_bytes\":%" PRIu64 ",\"disk_bytes\":%" PRIu64
             ",\"stream\":{\"joining\":%s,\"units\":%u,\"units_done\":%u,\"percent\":%.1f,"
             "\"bytes\":%" PRIu64 ",\"leaving\":%s,\"gainers\":%u,\"gainers_done\":%u}}",
             kv_merkle_depth(t), kv_merkle_root(t), st.keys, st.tombstones, st.live_bytes,
             st.disk_bytes, jp.joining ? "true" : "false", jp.units, jp.units_done,
             jp.units ? 100.0 * jp.units_done / jp.units : 0.0, jp.bytes,
             leaving ? "true" : "false", gainers, gainers_done);
    respond_json(req, 200, body);
}

static void node_shutdown(kv_node *n, const char *why);
static int node_start_leave(kv_node *n);

/* POST /v1/cluster/leave: hand our ranges over, leave, exit (node/leave.h). */
static void handle_leave(kv_node *n, kv_http_req *req)
{
    if (n->state != NODE_SERVING || !n->repl) {
        kv_http_respond_problem(req, 503, "not_ready",
                                n->state == NODE_SHUTTING_DOWN ? "the node is shutting down"
                                                               : "the node is starting");
        return;
    }
    int rc = kv_repl_leaving(n->repl) ? KV_EEXIST : node_start_leave(n);
    if (rc == KV_EUNAVAIL) {
        kv_http_respond_problem(req, 409, "joining",
                                "the node is still joining: it can leave once it is normal");
        return;
    }
    if (rc != KV_OK && rc != KV_EEXIST) {
        kv_http_respond_problem(req, 500, "internal", kv_strerror(rc));
        return;
    }
    respond_json(req, 202,
                 "{\"status\":\"leaving\",\"detail\":\"handing its ranges to their new "
                 "owners; the node leaves the cluster and exits when they have them\"}");
}

/* POST /v1/cluster/remove?node=NAME: remove a dead member for good. */
static void handle_remove(kv_node *n, kv_http_req *req)
{
    char name[SWIM_NAME_MAX + 1];
    const char *q = req->query ? req->query : "";
    size_t ql = req->query ? req->query_len : 0;
    if (ql < 6 || strncmp(q, "node=", 5) != 0 || ql - 5 > SWIM_NAME_MAX ||
        memchr(q + 5, '&', ql - 5) || memchr(q + 5, '%', ql - 5)) {
        kv_http_respond_problem(req, 400, "invalid_query",
                                "name the member to remove: ?node=NAME (as kvtool members shows)");
        return;
    }
    snprintf(name, sizeof(name), "%.*s", (int)(ql - 5), q + 5);
    if (n->state != NODE_SERVING || !n->memb) {
        kv_http_respond_problem(req, 503, "not_ready", "the node is not serving");
        return;
    }
    int rc = kv_membership_remove(n->memb, name);
    if (rc == KV_ENOTFOUND) {
        kv_http_respond_problem(req, 404, "member_not_found",
                                "no such member (or it is the node answering)");
    } else if (rc == KV_EUNAVAIL) {
        kv_http_respond_problem(req, 409, "member_not_dead",
                                "the member is not dead: stop it first, or make it leave "
                                "(kvtool leave) to hand its data over");
    } else if (rc == KV_EEXIST) {
        respond_json(req, 200, "{\"status\":\"left\",\"detail\":\"the member had left already\"}");
    } else if (rc != KV_OK) {
        kv_http_respond_problem(req, 503, "not_ready", kv_strerror(rc));
    } else {
        respond_json(req, 200,
                     "{\"status\":\"removed\",\"detail\":\"the member is gone for good; the "
                     "replicas that gain its ranges copy them from the ones that remain\"}");
    }
}

static void handle_request(kv_http_req *req, void *arg)
{
    kv_node *n = arg;
    const char *p = req->path;
    if (strncmp(p, KV_PREFIX, strlen(KV_PREFIX)) == 0) {
        handle_kv(n, req);
        return;
    }
    if (strcmp(p, "/v1/kv") == 0) {
        req->route = "kv_list";
        if (req->method != HTTP_GET)
            respond_method_not_allowed(req, method_allow_get);
        else
            kv_repl_handle_list(n->repl, req);
        return;
    }
    if (strcmp(p, "/v1/cluster/ring") == 0) {
        req->route = "cluster_ring";
        if (req->method != HTTP_GET)
            respond_method_not_allowed(req, method_allow_get);
        else
            kv_repl_handle_ring(n->repl, req);
        return;
    }
    if (strcmp(p, "/healthz") == 0) {
        req->route = "healthz";
        if (req->method != HTTP_GET)
            respond_method_not_allowed(req, method_allow_get);
        else
            respond_json(req, 200, "{\"status\":\"ok\"}");
        return;
    }
    if (strcmp(p, "/readyz") == 0) {
        req->route = "readyz";
        if (req->method != HTTP_GET)
            respond_method_not_allowed(req, method_allow_get);
        else if (n->state == NODE_SERVING && n->repl && kv_repl_joining(n->repl))
            kv_http_respond_problem(req, 503, "not_ready",
                                    "joining the cluster: no seed has answered yet");
        else if (n->state == NODE_SERVING)
            respond_json(req, 200, "{\"status\":\"ready\"}");
        else if (n->state == NODE_SHUTTING_DOWN)
            kv_http_respond_problem(req, 503, "not_ready", "the node is shutting down");
        else
            kv_http_respond_problem(req, 503, "not_ready", "the node is starting");
        return;
    }
    if (strcmp(p, "/metrics") == 0) {
        req->route = "metrics";
        if (req->method != HTTP_GET) {
            respond_method_not_allowed(req, method_allow_get);
            return;
        }
        add_store_gauges(n);
        if (n->memb)
            kv_membership_publish_metrics(n->memb);
        if (n->repl)
            kv_repl_publish_metrics(n->repl);
        kv_buf out = KV_BUF_INIT;
        if (kv_metrics_render(n->metrics, &out) != KV_OK) {
            kv_http_respond_problem(req, 500, "internal", "out of memory");
        } else {
            kv_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, 0, out.data,
                            out.len);
        }
        kv_buf_free(&out);
        return;
    }
    if (strcmp(p, "/v1/cluster/remove") == 0) {
        req->route = "cluster_remove";
        if (req->method != HTTP_POST)
            respond_method_not_allowed(req, "POST");
        else
            handle_remove(n, req);
        return;
    }
    if (strcmp(p, "/v1/cluster/leave") == 0) {
        req->route = "cluster_leave";
        if (req->method != HTTP_POST)
            respond_method_not_allowed(req, "POST");
        else
            handle_leave(n, req);
        return;
    }
    if (strcmp(p, "/v1/cluster/digest") == 0) {
        req->route = "cluster_digest";
        if (req->method != HTTP_GET)
            respond_method_not_allowed(req, method_allow_get);
        else
            respond_digest(n, req);
        return;
    }
    if (strcmp(p, "/v1/cluster/members") == 0) {
        req->route = "cluster_members";
        if (req->method != HTTP_GET) {
            respond_method_not_allowed(req, method_allow_get);
            return;
        }
        if (!n->memb) { /* only while starting or after the cluster was left */
            kv_http_respond_problem(req, 503, "not_ready", "membership is not running");
            return;
        }
        kv_buf out = KV_BUF_INIT;
        if (kv_membership_members_json(n->memb, &out) != KV_OK)
            kv_http_respond_problem(req, 500, "internal", "out of memory");
        else
            kv_http_respond(req, 200, "application/json", NULL, 0, out.data, out.len);
        kv_buf_free(&out);
        return;
    }
    req->route = "not_found";
    kv_http_respond_problem(req, 404, "route_not_found", "no such route");
}

/* ---------- lifecycle ---------- */

static void on_closed_handle(uv_handle_t *h)
{
    (void)h;
}

static void on_nothing(void *arg)
{
    (void)arg;
}

static void on_store_closed(void *arg)
{
    kv_node *n = arg;
    n->store = NULL;
    kv_log_info("storage synced and closed");
    uv_close((uv_handle_t *)&n->sigint, on_closed_handle);
    uv_close((uv_handle_t *)&n->sigterm, on_closed_handle);
}

static void on_membership_closed(void *arg)
{
    kv_node *n = arg;
    n->memb = NULL;
    store_close(n->store, on_store_closed, n);
}

static void on_repl_closed(void *arg)
{
    kv_node *n = arg;
    n->repl = NULL;
    kv_membership_close(n->memb, on_membership_closed, n);
}

/* The leave and the HTTP drain run at once; the last to finish closes the rest:
 * replication (hint store) → membership → store. */
static void shutdown_step(kv_node *n)
{
    if (--n->shutdown_waits > 0)
        return;
    kv_repl_close(n->repl, on_repl_closed, n);
}

static void on_left(void *arg)
{
    shutdown_step(arg);
}

static void on_http_closed(void *arg)
{
    kv_node *n = arg;
    n->http = NULL;
    kv_log_info("http server closed; in-flight requests finished");
    shutdown_step(n);
}

/* Stop: leave the cluster (bounded by cluster.leave_timeout) while in-flight requests
 * drain, then close replication, membership and the store. */
static void node_shutdown(kv_node *n, const char *why)
{
    n->state = NODE_SHUTTING_DOWN;
    kv_log_info("shutting down", KV_STR("reason", why),
                KV_UINT("in_flight", kv_http_server_inflight(n->http)));
    /* Tell the cluster first (bounded by cluster.leave_timeout) so that others mark us
     * `left` rather than finding us dead, while in-flight requests drain. */
    n->shutdown_waits = 2;
    kv_membership_leave(n->memb, on_left, n);
    kv_http_server_close(n->http, on_http_closed, n);
}

static void on_handed_over(void *arg)
{
    kv_node *n = arg;
    if (n->state == NODE_SERVING)
        node_shutdown(n, "left the cluster: every range handed over");
}

static int node_start_leave(kv_node *n)
{
    int rc = kv_repl_leave(n->repl, on_handed_over, n);
    if (rc == KV_OK)
        kv_log_info("leaving the cluster: handing our ranges over first");
    return rc;
}

static void on_signal(uv_signal_t *h, int signum)
{
    kv_node *n = h->data;
    if (n->state == NODE_SHUTTING_DOWN) {
        kv_log_warn("second signal during shutdown; exiting now",
                    KV_STR("signal", strsignal(signum)));
        _exit(1);
    }
    /* cluster.leave_drain: the first SIGTERM hands our ranges over before stopping; a
     * second one (or SIGINT) stops at once. */
    if (signum == SIGTERM && n->cfg->cluster_leave_drain && n->state == NODE_SERVING &&
        !kv_repl_leaving(n->repl)) {
        int rc = node_start_leave(n);
        if (rc == KV_OK)
            return;
        kv_log_warn("cannot hand our ranges over before stopping", KV_ERR(rc));
    }
    node_shutdown(n, strsignal(signum));
}

int kv_node_main(const kv_config *cfg)
{
    kv_node node;
    memset(&node, 0, sizeof(node));
    kv_node *n = &node;
    n->cfg = cfg;
    n->lock_fd = -1;
    n->state = NODE_STARTING;

    /* A client that goes away mid-response must cost an EPIPE, not the process. */
    signal(SIGPIPE, SIG_IGN);
    node_raise_fd_limit(cfg);

    kv_log_info("starting kvstore", KV_STR("version", KV_VERSION),
                KV_STR("data_dir", cfg->node_data_dir),
                KV_STR("sync", kv_sync_mode_name(cfg->storage_sync)), KV_INT("pid", getpid()));

    if (node_lock_data_dir(n) != KV_OK)
        return 1;

    int rc = kv_node_identity_load(cfg->node_data_dir, &n->ident);
    if (rc != KV_OK) {
        close(n->lock_fd);
        return 1;
    }
    kv_log_info("node identity", KV_STR("node_id", n->ident.hex),
                KV_UINT("incarnation", n->ident.incarnation), KV_BOOL("new", n->ident.created));

    rc = uv_loop_init(&n->loop);
    if (rc != 0) {
        kv_log_error("cannot create event loop", KV_STR("reason", uv_strerror(rc)));
        close(n->lock_fd);
        return 1;
    }

    uint64_t t0 = uv_hrtime();
    kv_store_opts so = {
        .dir = cfg->node_data_dir,
        .sync = cfg->storage_sync,
        .sync_interval_ms = cfg->storage_sync_interval_ms,
        .segment_bytes = cfg->storage_segment_bytes,
        .max_key = cfg->limits_max_key,
        .max_value = cfg->limits_max_value,
        .node_id = kv_node_identity_short(&n->ident),
        .compression_threshold = cfg->storage_compression_threshold == 0 ? UINT32_MAX
                                 : cfg->storage_compression_threshold > UINT32_MAX - 1
                                     ? UINT32_MAX - 1
                                     : (uint32_t)cfg->storage_compression_threshold,
        .compaction_dead_ratio = cfg->storage_compaction_dead_ratio_milli / 1000.0,
        /* 0 means "no minimum" in the config, "the default" in the store. */
        .compaction_min_bytes =
            cfg->storage_compaction_min_bytes ? cfg->storage_compaction_min_bytes : 1,
        /* 2^16 leaves (1 MiB of sums): a few keys per leaf up to millions of keys. */
        .merkle_depth = KV_NODE_TREE_DEPTH,
    };
    rc = store_open(&n->store, &n->loop, &so);
    if (rc != KV_OK) {
        kv_log_error("cannot open storage", KV_STR("data_dir", cfg->node_data_dir), KV_ERR(rc));
        goto fail;
    }
    kv_store_stats st;
    store_stats(n->store, &st);
    kv_log_info("storage opened", KV_UINT("keys", st.keys), KV_UINT("segments", st.segments),
                KV_UINT("disk_bytes", st.disk_bytes),
                KV_FLOAT("seconds", (double)(uv_hrtime() - t0) / 1e9));

    n->metrics = kv_metrics_new();
    if (!n->metrics) {
        kv_log_error("out of memory");
        goto fail;
    }
    kv_http_limits lim = {
        .max_header = cfg->limits_max_header,
        .max_body = cfg->limits_max_value,
        .max_connections = cfg->limits_max_connections,
        .idle_timeout_ms = cfg->limits_idle_timeout_ms,
        .request_timeout_ms = cfg->limits_request_timeout_ms,
        .max_pipeline = 64,
    };
    rc = kv_http_server_start(&n->http, &n->loop, cfg->server_host, cfg->server_port, &lim,
                              handle_request, n, n->metrics);
    if (rc != KV_OK) {
        kv_log_error("cannot start the HTTP listener", KV_STR("host", cfg->server_host),
                     KV_INT("port", cfg->server_port), KV_ERR(rc));
        goto fail;
    }
    bool joining = kv_join_needed(cfg, n->store);
    rc = kv_membership_start(&n->memb, &n->loop, cfg, &n->ident, n->metrics,
                             kv_http_server_port(n->http), joining);
    if (rc != KV_OK) {
        kv_log_error("cannot start cluster membership", KV_STR("host", cfg->cluster_host),
                     KV_INT("port", cfg->cluster_port), KV_ERR(rc));
        goto fail;
    }

    rc = kv_repl_start(&n->repl, &n->loop, cfg, n->store, n->memb,
                       kv_node_identity_short(&n->ident), n->metrics, joining);
    if (rc != KV_OK) {
        kv_log_error("cannot start replication", KV_ERR(rc));
        goto fail;
    }

    uv_signal_init(&n->loop, &n->sigint);
    uv_signal_init(&n->loop, &n->sigterm);
    n->sigint.data = n->sigterm.data = n;
    uv_signal_start(&n->sigint, on_signal, SIGINT);
    uv_signal_start(&n->sigterm, on_signal, SIGTERM);

    n->state = NODE_SERVING;
    char url[320];
    int port = kv_http_server_port(n->http);
    snprintf(url, sizeof(url), "http://%s:%d",
             strcmp(cfg->server_host, "0.0.0.0") == 0 ? "127.0.0.1" : cfg->server_host, port);
    kv_log_info("node ready", KV_STR("name", cfg->node_name), KV_STR("url", url));

    uv_run(&n->loop, UV_RUN_DEFAULT);

    rc = uv_loop_close(&n->loop);
    if (rc != 0)
        kv_log_warn("event loop closed with handles still open", KV_STR("reason", uv_strerror(rc)));
    kv_metrics_free(n->metrics);
    close(n->lock_fd);
    kv_log_info("stopped");
    return 0;

fail:
    /* Start-up failed before serving: close what was opened and drain the loop. */
    if (n->repl)
        kv_repl_close(n->repl, on_nothing, NULL);
    if (n->memb)
        kv_membership_close(n->memb, on_nothing, NULL);
    if (n->http)
        kv_http_server_close(n->http, on_nothing, NULL);
    if (n->store)
        store_close(n->store, on_nothing, NULL);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    uv_loop_close(&n->loop);
    if (n->metrics)
        kv_metrics_free(n->metrics);
    close(n->lock_fd);
    return 1;
}
