/*
 * test_join.c — nodes joining a populated cluster (node/join.h): real kvstore processes
 * on 127.0.0.1.
 *   - Under continuous quorum writes and reads from a client, a 4th and then a 5th node
 *     join a 3-node cluster holding data (each streams its ranges and turns normal), then
 *     one leaves (it hands its ranges over and exits 0), then one is killed with -9 and
 *     removed (the others copy its ranges): no read during the whole run returns a value
 *     older than the last write acknowledged before it began, and afterwards every
 *     acknowledged write (and every key loaded before) reads back at quorum through every
 *     node that remains.
 *   - A node leaves under load; a dead node is removed (anti-entropy off: the copies come
 *     from the removal alone) — each on its own, with its own checks.
 *   - A joining node killed half-way through its stream and restarted resumes from its
 *     checkpoint: the sources send well under 1.5 times the data (a restart from zero
 *     would send the finished half again).
 */
#include "cluster.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static th_cluster g_c;

static const char *const g_args[] = {"--replication.timeout", "2s", NULL};

static void setup(void)
{
    memset(&g_c, 0, sizeof g_c);
}

static void teardown(void)
{
    th_cluster_fini(&g_c);
}

TestSuite(join, .init = setup, .fini = teardown, .timeout = 240);

static double metric(int i, const char *name)
{
    return th_metric(g_c.node[i].port, name, NULL);
}

/* Load n keys "<prefix>/<i>" of vlen pseudo-random letters through one keep-alive
 * connection per node, rotating over nodes 0..via_n-1. */
static void preload(const char *prefix, int n, int vlen, int via_n)
{
    th_kv_conn conn[TH_CLUSTER_MAX];
    for (int i = 0; i < via_n; i++)
        th_kv_conn_init(&conn[i], g_c.node[i].port);
    char key[64], *val = malloc((size_t)vlen + 1);
    cr_assert(val);
    unsigned x = 12345;
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "%s/%05d", prefix, i);
        for (int b = 0; b < vlen; b++) {
            x = x * 1103515245u + 12345u;
            val[b] = (char)('a' + (x >> 16) % 26);
        }
        val[vlen] = 0;
        th_kv_resp r;
        int rc =
            th_kv_conn_request(&conn[i % via_n], "PUT", key, NULL, val, (size_t)vlen, 10000, &r);
        TH_CLUSTER_CHECK(&g_c, rc == 0 && r.status >= 200 && r.status < 300, "preload %s: %d %s",
                         key, r.status, r.body);
        th_kv_resp_free(&r);
    }
    for (int i = 0; i < via_n; i++)
        th_kv_conn_close(&conn[i]);
    free(val);
}

/* Node i's own ring status from GET /v1/cluster/members ("" when unknown). */
static void self_ring_status(int i, char *out, size_t cap)
{
    out[0] = 0;
    th_resp r;
    if (th_http(g_c.node[i].port, "GET", "/v1/cluster/members", NULL, 0, &r) != 0)
        return;
    /* each member object is ..."ring_status":"X","since":...,"self":B}: take the
     * ring_status nearest before "self":true */
    const char *self = r.status == 200 ? strstr(r.body, "\"self\":true") : NULL, *rs = NULL;
    for (const char *p = r.body; self && (p = strstr(p, "\"ring_status\":\"")) && p < self; p++)
        rs = p + strlen("\"ring_status\":\"");
    if (rs) {
        size_t n = strcspn(rs, "\"");
        snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), rs);
    }
    th_resp_free(&r);
}

/* Wait until node i has finished joining: its stream is done and it says normal. */
static bool wait_joined(int i, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    while (th_now_ms() < deadline) {
        char st[32];
        self_ring_status(i, st, sizeof st);
        if (strcmp(st, "normal") == 0 && metric(i, "kv_join_active") == 0)
            return true;
        usleep(50000);
    }
    return false;
}

/* ---------- the client under load ---------- */

#define LOAD_KEYS 300

typedef struct load {
    atomic_int stop;
    atomic_int nports;
    atomic_int ports[TH_CLUSTER_MAX]; /* the nodes the client uses; may change under it */
    long acked[LOAD_KEYS];            /* last acknowledged value of each key, -1 = none */
    long seq;
    long ops, writes_ok, writes_failed, reads_ok, reads_failed;
    char violation[512];
    char last_failure[512];
} load;

static load g_load;

static void *load_main(void *arg)
{
    load *l = arg;
    th_kv_conn conn[TH_CLUSTER_MAX];
    for (int i = 0; i < TH_CLUSTER_MAX; i++)
        th_kv_conn_init(&conn[i], atomic_load(&l->ports[i]));
    unsigned x = 777;
    int64_t end = th_now_ms() + 200000; /* bounded whatever happens */
    while (!atomic_load(&l->stop) && th_now_ms() < end && !l->violation[0]) {
        x = x * 1103515245u + 12345u;
        int k = (int)((x >> 8) % LOAD_KEYS),
            via = (int)((x >> 20) % (unsigned)atomic_load(&l->nports));
        char key[32], val[32];
        snprintf(key, sizeof key, "ld/%03d", k);
        int port = atomic_load(&l->ports[via]);
        if (conn[via].port != port) { /* the node list changed since we started */
            th_kv_conn_close(&conn[via]);
            th_kv_conn_init(&conn[via], port);
        }
        th_kv_resp r;
        l->ops++;
        if ((x >> 4) & 1) {
            long v = ++l->seq;
            snprintf(val, sizeof val, "%ld", v);
            int rc = th_kv_conn_request(&conn[via], "PUT", key, NULL, val, strlen(val), 5000, &r);
            if (rc == 0 && r.status >= 200 && r.status < 300) {
                l->acked[k] = v;
                l->writes_ok++;
            } else {
                l->writes_failed++;
                snprintf(l->last_failure, sizeof l->last_failure, "PUT via %d: %d %s", port,
                         r.status, r.body);
            }
        } else {
            long want = l->acked[k];
            int rc = th_kv_conn_request(&conn[via], "GET", key, NULL, NULL, 0, 5000, &r);
            if (rc == 0 && r.status == 200) {
                l->reads_ok++;
                if (atol(r.body) < want)
                    snprintf(l->violation, sizeof l->violation,
                             "GET %s via port %d returned %s after %ld was acknowledged", key, port,
                             r.body, want);
            } else if (rc == 0 && r.status == 404 && want >= 0) {
                snprintf(l->violation, sizeof l->violation,
                         "GET %s via port %d: 404 after %ld was acknowledged", key, port, want);
            } else if (!(rc == 0 && r.status == 404)) {
                l->reads_failed++;
                snprintf(l->last_failure, sizeof l->last_failure, "GET via %d: %d %s", port,
                         r.status, r.body);
            } else {
                l->reads_ok++;
            }
        }
        th_kv_resp_free(&r);
    }
    for (int i = 0; i < TH_CLUSTER_MAX; i++)
        th_kv_conn_close(&conn[i]);
    return NULL;
}

/* Every write the load client saw acknowledged reads back through node `via` at the
 * default quorum, with that value or a newer one. */
static void check_acked(int via)
{
    th_kv_conn c;
    th_kv_conn_init(&c, g_c.node[via].port);
    char key[32];
    for (int k = 0; k < LOAD_KEYS; k++) {
        if (g_load.acked[k] < 0)
            continue;
        snprintf(key, sizeof key, "ld/%03d", k);
        th_kv_resp kr;
        th_kv_conn_request(&c, "GET", key, NULL, NULL, 0, 5000, &kr);
        TH_CLUSTER_CHECK(&g_c, kr.status == 200 && atol(kr.body) >= g_load.acked[k],
                         "%s via n%d: %d %s, acknowledged %ld", key, via, kr.status, kr.body,
                         g_load.acked[k]);
        th_kv_resp_free(&kr);
    }
    th_kv_conn_close(&c);
}

/* Every step-th of the n keys preload() wrote under prefix reads back through `via`
 * (query: e.g. "r=3", or NULL for the default quorum) with its vlen bytes. */
static void check_loaded(int via, const char *prefix, int n, int step, int vlen, const char *query)
{
    th_kv_conn c;
    th_kv_conn_init(&c, g_c.node[via].port);
    char key[64];
    for (int k = 0; k < n; k += step) {
        snprintf(key, sizeof key, "%s/%05d", prefix, k);
        th_kv_resp kr;
        th_kv_conn_request(&c, "GET", key, query, NULL, 0, 5000, &kr);
        TH_CLUSTER_CHECK(&g_c, kr.status == 200 && strlen(kr.body) == (size_t)vlen,
                         "%s via n%d%s%s: %d", key, via, query ? " at " : "", query ? query : "",
                         kr.status);
        th_kv_resp_free(&kr);
    }
    th_kv_conn_close(&c);
}

/* Wait until the load has done `more` further operations (30 s at most). */
static void load_progress(long more)
{
    long target = __atomic_load_n(&g_load.ops, __ATOMIC_RELAXED) + more;
    int64_t deadline = th_now_ms() + 30000;
    while (__atomic_load_n(&g_load.ops, __ATOMIC_RELAXED) < target && th_now_ms() < deadline)
        usleep(10000);
}

Test(join, nodes_join_leave_and_are_removed_under_load_without_losing_a_write, .timeout = 300)
{
    th_cluster_init(&g_c, 5);
    g_c.args = g_args;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(th_cluster_start_node(&g_c, i), 0, "n%d did not start", i);
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 20000) >= 0, "3 nodes did not converge");
    for (int i = 0; i < 3; i++)
        cr_assert(wait_joined(i, 15000), "n%d is not normal", i);
    preload("pre", 2000, 500, 3);

    memset(&g_load, 0, sizeof g_load);
    for (int i = 0; i < LOAD_KEYS; i++)
        g_load.acked[i] = -1;
    for (int i = 0; i < 3; i++)
        atomic_store(&g_load.ports[i], g_c.node[i].port);
    atomic_store(&g_load.nports, 3);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, load_main, &g_load), 0);
    load_progress(300);

    /* a 4th and a 5th node join */
    for (int i = 3; i < 5; i++) {
        cr_assert_eq(th_cluster_start_node(&g_c, i), 0, "n%d did not start", i);
        TH_CLUSTER_CHECK(&g_c, wait_joined(i, 60000), "n%d did not finish joining", i);
        TH_CLUSTER_CHECK(&g_c, metric(i, "kv_join_units") > 0, "n%d streamed nothing", i);
        TH_CLUSTER_CHECK(&g_c, metric(i, "kv_join_bytes_total") > 0, "n%d streamed no bytes", i);
        load_progress(200);
        atomic_store(&g_load.ports[i], g_c.node[i].port); /* the client uses it too now */
        atomic_store(&g_load.nports, i + 1);
        load_progress(200);
    }

    /* the client moves to n0, n3, n4; n1 leaves with its data */
    atomic_store(&g_load.nports, 1);
    atomic_store(&g_load.ports[1], g_c.node[3].port);
    atomic_store(&g_load.ports[2], g_c.node[4].port);
    atomic_store(&g_load.nports, 3);
    load_progress(100);
    th_resp r;
    cr_assert_eq(th_http(g_c.node[1].port, "POST", "/v1/cluster/leave", NULL, 0, &r), 0);
    TH_CLUSTER_CHECK(&g_c, r.status == 202, "leave n1: %d %s", r.status, r.body);
    th_resp_free(&r);
    TH_CLUSTER_CHECK(&g_c, th_node_wait_exit(&g_c.node[1], 60000), "n1 did not leave and exit");
    cr_assert_eq(g_c.node[1].exit_status, 0, "n1 exited with %d", g_c.node[1].exit_status);
    load_progress(200);

    /* n2 is killed, seen dead, and removed; the others copy its ranges */
    th_cluster_kill9(&g_c, 2);
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0, "n2 not seen dead");
    cr_assert_eq(th_http(g_c.node[0].port, "POST", "/v1/cluster/remove?node=n2", NULL, 0, &r), 0);
    TH_CLUSTER_CHECK(&g_c, r.status == 200, "remove n2: %d %s", r.status, r.body);
    th_resp_free(&r);
    load_progress(300);
    atomic_store(&g_load.stop, 1);
    pthread_join(th, NULL);
    TH_CLUSTER_CHECK(&g_c, !g_load.violation[0], "%s", g_load.violation);
    cr_assert_gt(g_load.writes_ok, 500,
                 "only %ld writes acknowledged (%ld ops, %ld failed; last: %s)", g_load.writes_ok,
                 g_load.ops, g_load.writes_failed, g_load.last_failure);
    cr_assert_lt(g_load.writes_failed + g_load.reads_failed, g_load.ops / 20,
                 "%ld writes and %ld reads failed of %ld (last: %s)", g_load.writes_failed,
                 g_load.reads_failed, g_load.ops, g_load.last_failure);
    /* N = 3 on the 3 that remain: once the copies are done they hold the same data */
    th_digest d;
    char why[400] = "";
    TH_CLUSTER_CHECK(&g_c, th_cluster_roots_agree(&g_c, 30000, &d, why, sizeof why),
                     "n0, n3 and n4 did not converge: %s", why);

    /* Every acknowledged write, and every key loaded first, reads back at quorum through
     * every node that remains. */
    const int remain[] = {0, 3, 4};
    for (int v = 0; v < 3; v++) {
        check_acked(remain[v]);
        check_loaded(remain[v], "pre", 2000, 3, 500, NULL);
    }
}

static const char *const g_slow[] = {"--replication.timeout",
                                     "2s",
                                     "--streaming.rate",
                                     "96KiB",
                                     "--antientropy.interval",
                                     "0",
                                     NULL};

Test(join, a_joining_node_restarted_half_way_resumes)
{
    th_cluster_init(&g_c, 4);
    g_c.args = g_slow;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(th_cluster_start_node(&g_c, i), 0, "n%d did not start", i);
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 20000) >= 0, "3 nodes did not converge");
    for (int i = 0; i < 3; i++)
        cr_assert(wait_joined(i, 15000), "n%d is not normal", i);
    int64_t t0 = th_now_ms();
    preload("rs", 3000, 1000, 3);
    int64_t t1 = th_now_ms();
    cr_assert_eq(th_cluster_start_node(&g_c, 3), 0, "n3 did not start");
    /* Kill it once a good part of its units are done, but not all. */
    double units = 0, done = 0;
    int64_t deadline = th_now_ms() + 60000;
    while (th_now_ms() < deadline) {
        units = metric(3, "kv_join_units");
        done = metric(3, "kv_join_units_done");
        if (units > 0 && done >= units * 0.4)
            break;
        usleep(20000);
    }
    TH_CLUSTER_CHECK(&g_c, units > 0 && done >= units * 0.4 && done < units,
                     "n3 never was part-way (units %g, done %g)", units, done);
    th_resp d;
    cr_assert_eq(th_http(g_c.node[3].port, "GET", "/v1/cluster/digest", NULL, 0, &d), 0);
    cr_assert(strstr(d.body, "\"stream\":{\"joining\":true,"), "digest while joining: %s", d.body);
    th_resp_free(&d);
    int64_t t2 = th_now_ms();
    th_cluster_kill9(&g_c, 3);
    cr_assert_eq(th_cluster_start_node(&g_c, 3), 0, "n3 did not restart");
    TH_CLUSTER_CHECK(&g_c, wait_joined(3, 90000), "n3 did not finish joining after the restart");
    fprintf(stderr, "join resume: preload %lld ms, to the kill %lld ms, after it %lld ms\n",
            (long long)(t1 - t0), (long long)(t2 - t1), (long long)(th_now_ms() - t2));
    cr_assert_eq(th_http(g_c.node[3].port, "GET", "/v1/cluster/digest", NULL, 0, &d), 0);
    cr_assert(strstr(d.body, "\"stream\":{\"joining\":false,"), "digest once normal: %s", d.body);
    th_resp_free(&d);
    double resumed = metric(3, "kv_join_units_resumed");
    double total = metric(3, "kv_join_bytes_total");
    double sent = 0;
    for (int i = 0; i < 3; i++)
        sent += metric(i, "kv_sync_raw_bytes_sent_total");
    TH_CLUSTER_CHECK(&g_c, resumed >= done * 0.9, "resumed %g units, %g were done before the kill",
                     resumed, done);
    TH_CLUSTER_CHECK(&g_c, sent <= total * 1.25,
                     "the sources sent %g bytes for a join of %g: the stream restarted", sent,
                     total);
    /* its data is all there: every key reads back through it with all three replicas */
    check_loaded(3, "rs", 3000, 3, 1000, "r=3");
    fprintf(stderr, "join resume: reads done at %lld ms\n", (long long)(th_now_ms() - t0));
}

/* Start the load client on nodes [0, n) (every node given). */
static pthread_t load_start(const int *nodes, int n)
{
    memset(&g_load, 0, sizeof g_load);
    for (int i = 0; i < LOAD_KEYS; i++)
        g_load.acked[i] = -1;
    for (int i = 0; i < n; i++)
        atomic_store(&g_load.ports[i], g_c.node[nodes[i]].port);
    atomic_store(&g_load.nports, n);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, load_main, &g_load), 0);
    return th;
}

Test(join, a_node_leaves_under_load_after_handing_its_ranges_over)
{
    th_cluster_init(&g_c, 4);
    g_c.args = g_args;
    cr_assert_eq(th_cluster_start(&g_c, 30000), 0, "4 nodes did not start");
    preload("lv", 2000, 500, 4);

    /* the client uses n0, n2 and n3; n1 leaves */
    pthread_t th = load_start((const int[]){0, 2, 3}, 3);
    load_progress(300);
    th_resp r;
    cr_assert_eq(th_http(g_c.node[1].port, "POST", "/v1/cluster/leave", NULL, 0, &r), 0);
    TH_CLUSTER_CHECK(&g_c, r.status == 202 && strstr(r.body, "\"status\":\"leaving\""),
                     "POST /v1/cluster/leave: %d %s", r.status, r.body);
    th_resp_free(&r);
    /* it waits ten protocol periods before handing over: it shows as leaving meanwhile */
    cr_assert_eq(th_http(g_c.node[1].port, "GET", "/v1/cluster/digest", NULL, 0, &r), 0);
    cr_assert(strstr(r.body, "\"leaving\":true"), "digest while leaving: %s", r.body);
    th_resp_free(&r);
    /* it hands its ranges over, leaves and exits 0 by itself */
    TH_CLUSTER_CHECK(&g_c, th_node_wait_exit(&g_c.node[1], 60000), "n1 did not exit");
    cr_assert_eq(g_c.node[1].exit_status, 0, "n1 exited with %d", g_c.node[1].exit_status);
    load_progress(300);
    atomic_store(&g_load.stop, 1);
    pthread_join(th, NULL);
    TH_CLUSTER_CHECK(&g_c, !g_load.violation[0], "%s", g_load.violation);
    cr_assert_gt(g_load.writes_ok, 300, "only %ld writes acknowledged", g_load.writes_ok);
    cr_assert_lt(g_load.writes_failed + g_load.reads_failed, g_load.ops / 20,
                 "%ld writes and %ld reads failed of %ld (last: %s)", g_load.writes_failed,
                 g_load.reads_failed, g_load.ops, g_load.last_failure);
    /* the others see it left, took over ranges from it, and still have everything */
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0, "n1 not seen left");
    double handovers = 0;
    for (int i = 0; i < 4; i++)
        if (i != 1)
            handovers += metric(i, "kv_sync_handovers_total");
    cr_assert_gt(handovers, 0, "nobody took ranges over from n1");
    for (int via = 0; via < 4; via++) {
        if (via == 1)
            continue;
        check_acked(via);
        check_loaded(via, "lv", 2000, 5, 500, "r=3");
    }
}

static const char *const g_no_ae[] = {"--replication.timeout", "2s", "--antientropy.interval", "0",
                                      NULL};

static double sum_metric(const char *name)
{
    double s = 0;
    for (int i = 0; i < g_c.n; i++)
        if (th_cluster_running(&g_c, i))
            s += metric(i, name);
    return s;
}

Test(join, a_dead_node_is_removed_and_the_others_copy_its_ranges)
{
    th_cluster_init(&g_c, 4);
    g_c.args = g_no_ae; /* nothing but the removal may copy data */
    cr_assert_eq(th_cluster_start(&g_c, 30000), 0, "4 nodes did not start");
    preload("rm", 1500, 300, 4);
    int64_t deadline = th_now_ms() + 20000;
    while (sum_metric("kv_store_keys") < 3 * 1500 && th_now_ms() < deadline)
        usleep(20000);
    TH_CLUSTER_CHECK(&g_c, sum_metric("kv_store_keys") == 3 * 1500,
                     "%g copies before, want 3 per key", sum_metric("kv_store_keys"));

    /* Only a dead member can be removed. */
    th_resp r;
    cr_assert_eq(th_http(g_c.node[0].port, "POST", "/v1/cluster/remove?node=n3", NULL, 0, &r), 0);
    cr_assert(r.status == 409 && strstr(r.body, "\"code\":\"member_not_dead\""), "%d %s", r.status,
              r.body);
    th_resp_free(&r);
    cr_assert_eq(th_http(g_c.node[0].port, "POST", "/v1/cluster/remove?node=n9", NULL, 0, &r), 0);
    cr_assert(r.status == 404 && strstr(r.body, "\"code\":\"member_not_found\""), "%d %s", r.status,
              r.body);
    th_resp_free(&r);

    th_cluster_kill9(&g_c, 3);
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0, "n3 not seen dead");
    cr_assert_eq(th_http(g_c.node[1].port, "POST", "/v1/cluster/remove?node=n3", NULL, 0, &r), 0);
    TH_CLUSTER_CHECK(&g_c, r.status == 200 && strstr(r.body, "\"status\":\"removed\""), "%d %s",
                     r.status, r.body);
    th_resp_free(&r);

    /* Every member sees it left; N = 3 on the 3 that remain: each must end with every key,
     * copied from the remaining replicas (anti-entropy is off). */
    th_digest d;
    char why[400] = "";
    TH_CLUSTER_CHECK(&g_c, th_cluster_roots_agree(&g_c, 30000, &d, why, sizeof why),
                     "the remaining replicas did not converge: %s", why);
    cr_assert_eq(d.keys, 1500, "each remaining node holds %g keys, want 1500", d.keys);
    cr_assert_gt(sum_metric("kv_sync_rereplications_total"), 0);
    for (int via = 0; via < 3; via++) {
        char members[32];
        cr_assert_eq(th_http(g_c.node[via].port, "GET", "/v1/cluster/members", NULL, 0, &r), 0);
        const char *p = strstr(r.body, "\"name\":\"n3\"");
        snprintf(members, sizeof members, "%s",
                 p && strstr(p, "\"state\":\"left\"") ? "left" : "?");
        th_resp_free(&r);
        cr_assert_str_eq(members, "left", "n%d does not see n3 left", via);
        check_loaded(via, "rm", 1500, 7, 300, "r=3");
    }
}
