/*
 * test_replication_lane.c — the replica data lane (src/net/direct.h) with real kvstore
 * processes on 127.0.0.1: replica batches travel on it by default and every key reads back;
 * a node started with `--replication.lane nng` is reached over nng while the others still
 * talk to each other on the lane; bad input on the data port (no hello, a frame length out
 * of range, garbage payloads, a truncated frame) is counted and closed or dropped, never a
 * crash; a node restarted on a new ephemeral data port is reached again once gossip carries
 * the new port.
 *
 * Every read is a quorum read, or an r=1 read after a write acknowledged by all three
 * replicas, so none of them relies on time having passed. Counters are polled with a
 * deadline (the node publishes them when /metrics is read).
 */
#include "cluster.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static th_cluster g_c;

static const char *const g_args[] = {"--replication.timeout", "1s", NULL};

static void setup(void)
{
    memset(&g_c, 0, sizeof g_c);
}

static void teardown(void)
{
    th_cluster_fini(&g_c);
}

TestSuite(replication_lane, .init = setup, .fini = teardown, .timeout = 120);

static void start_cluster(int n)
{
    g_c.args = g_args;
    cr_assert_eq(th_cluster_start(&g_c, 20000), 0, "%d nodes did not start and converge", n);
}

/* Stop every running node with SIGTERM: each must exit 0 with a log free of sanitizer
 * reports. */
static void stop_all_clean(void)
{
    for (int i = 0; i < g_c.n; i++)
        cr_expect(th_node_stop_clean(&g_c.node[i], 10000), "n%d did not stop cleanly", i);
}

static double metric(int i, const char *name, const char *labels)
{
    double v = th_metric(g_c.node[i].port, name, labels);
    TH_CLUSTER_CHECK(&g_c, v >= 0, "n%d: /metrics could not be read", i);
    return v;
}

/* Poll node i's metric until it is at least want (5 s); returns the last value read. */
static double metric_reaches(int i, const char *name, const char *labels, double want)
{
    int64_t deadline = th_now_ms() + 5000;
    double v = metric(i, name, labels);
    for (int k = 0; k < 500 && v < want && th_now_ms() < deadline; k++) {
        usleep(10000);
        v = metric(i, name, labels);
    }
    return v;
}

/* The data port node i logged at start ("cluster listening ... data_port=N"), -1 if none. */
static int logged_data_port(int i)
{
    char *log = th_log_read(&g_c.node[i]);
    int port = -1;
    const char *line = strstr(log, "cluster listening");
    const char *p = line ? strstr(line, "data_port=") : NULL;
    const char *eol = line ? strchr(line, '\n') : NULL;
    if (p && (!eol || p < eol))
        port = atoi(p + strlen("data_port="));
    free(log);
    return port;
}

/* A write that must succeed (204 with a version); the version is returned. */
static void put_ok(int via, const char *key, const char *value, const char *query, uint64_t *ts,
                   uint32_t *node)
{
    th_kv_resp r;
    th_kv_put(&g_c.node[via], key, value, query, &r);
    TH_CLUSTER_CHECK(&g_c, r.status == 204 && r.has_version,
                     "PUT %s=%s%s%s through n%d: status %d, ETag '%s', body %s", key, value,
                     query ? "?" : "", query ? query : "", via, r.status, r.etag, r.body);
    *ts = r.ts;
    *node = r.node;
    th_kv_resp_free(&r);
}

/* A read that must return value with exactly this version. */
static void get_is(int via, const char *key, const char *query, const char *value, uint64_t ts,
                   uint32_t node)
{
    th_kv_resp r;
    th_kv_get(&g_c.node[via], key, query, &r);
    TH_CLUSTER_CHECK(&g_c, r.status == 200 && strcmp(r.body, value) == 0,
                     "GET %s%s%s through n%d: status %d, body '%s' (want 200 '%s')", key,
                     query ? "?" : "", query ? query : "", via, r.status, r.body, value);
    TH_CLUSTER_CHECK(&g_c, r.has_version && r.ts == ts && r.node == node,
                     "GET %s through n%d: ETag %s, want the write's \"%llu.%u\"", key, via, r.etag,
                     (unsigned long long)ts, node);
    th_kv_resp_free(&r);
}

#define MAXKEYS 300

/* nkeys writes through rotating coordinators (n0, n1, n2, ...), then every key read back at
 * the default quorum through every node. */
static void write_and_read_back(const char *prefix, int nkeys)
{
    static uint64_t ts[MAXKEYS];
    static uint32_t nd[MAXKEYS];
    char key[48], val[64];
    cr_assert(nkeys <= MAXKEYS);
    for (int i = 0; i < nkeys; i++) {
        snprintf(key, sizeof key, "%s-%03d", prefix, i);
        snprintf(val, sizeof val, "value %d via n%d", i, i % g_c.n);
        put_ok(i % g_c.n, key, val, NULL, &ts[i], &nd[i]);
    }
    for (int via = 0; via < g_c.n; via++) {
        for (int i = 0; i < nkeys; i++) {
            snprintf(key, sizeof key, "%s-%03d", prefix, i);
            snprintf(val, sizeof val, "value %d via n%d", i, i % g_c.n);
            get_is(via, key, NULL, val, ts[i], nd[i]);
        }
    }
}

Test(replication_lane, replica_traffic_uses_the_data_lane_by_default)
{
    th_cluster_init(&g_c, 3);
    start_cluster(3);
    for (int i = 0; i < 3; i++) {
        int dp = logged_data_port(i);
        TH_CLUSTER_CHECK(&g_c, dp > 0 && dp <= 65535,
                         "n%d did not log a data port in 'cluster listening' (got %d)", i, dp);
    }
    write_and_read_back("lane", 300);
    for (int i = 0; i < 3; i++) {
        double rx = metric(i, "kv_data_frames_received_total", NULL);
        double tx = metric(i, "kv_data_frames_sent_total", NULL);
        cr_log_info("n%d: %g data lane frames received, %g sent", i, rx, tx);
        TH_CLUSTER_CHECK(&g_c, rx >= 100 && tx >= 100,
                         "n%d: %g frames received and %g sent on the data lane after 300 writes "
                         "and 900 quorum reads (want >= 100 each)",
                         i, rx, tx);
        double dropped = metric(i, "kv_data_frames_dropped_total", NULL);
        double bad =
            metric(i, "kv_data_bad_hello_total", NULL) + metric(i, "kv_data_bad_frame_total", NULL);
        double undecoded = metric(i, "kv_repl_messages_dropped_total", NULL);
        TH_CLUSTER_CHECK(&g_c, dropped == 0 && bad == 0 && undecoded == 0,
                         "n%d: %g data lane frames dropped, %g bad connections, %g replica "
                         "batches undecodable in a healthy cluster (want 0)",
                         i, dropped, bad, undecoded);
        double in = metric(i, "kv_data_connections_in", NULL);
        double out = metric(i, "kv_data_connections_out", NULL);
        TH_CLUSTER_CHECK(&g_c, in >= 1 && out >= 1 && in <= 2 && out <= 2,
                         "n%d: %g inbound and %g outgoing data lane connections (want 1..2 "
                         "each with 2 peers)",
                         i, in, out);
    }
    stop_all_clean();
}

static const char *const g_nng_lane[] = {"--replication.lane", "nng", NULL};

Test(replication_lane, a_node_on_the_nng_lane_works_with_nodes_on_the_data_lane)
{
    th_cluster_init(&g_c, 3);
    g_c.node_args[1] = g_nng_lane;
    start_cluster(3);
    TH_CLUSTER_CHECK(&g_c, logged_data_port(1) == 0,
                     "n1 runs with replication.lane nng but logged data_port=%d (want 0)",
                     logged_data_port(1));
    write_and_read_back("mixed", 150);

    /* n1 has no data lane: no kv_data_* series at all. */
    th_resp r;
    cr_assert_eq(th_http(g_c.node[1].port, "GET", "/metrics", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 200);
    TH_CLUSTER_CHECK(&g_c, strstr(r.body, "kv_data_") == NULL,
                     "n1 (replication.lane nng) shows data lane metrics:\n%s",
                     strstr(r.body, "kv_data_"));
    th_resp_free(&r);
    TH_CLUSTER_CHECK(&g_c, metric(1, "kv_peer_messages_received_total", NULL) >= 100,
                     "n1 received %g nng messages (its replica traffic must use nng)",
                     metric(1, "kv_peer_messages_received_total", NULL));

    /* n0 and n2 still talk to each other on the lane: 50 writes through each of them sent at
     * least one frame to the other. */
    for (int i = 0; i < 3; i += 2) {
        double rx = metric(i, "kv_data_frames_received_total", NULL);
        double in = metric(i, "kv_data_connections_in", NULL);
        double dropped = metric(i, "kv_data_frames_dropped_total", NULL);
        cr_log_info("n%d: %g data lane frames received, %g inbound connections", i, rx, in);
        TH_CLUSTER_CHECK(&g_c, rx >= 50 && dropped == 0,
                         "n%d: %g data lane frames received (want >= 50 from n%d), %g dropped", i,
                         rx, 2 - i, dropped);
        TH_CLUSTER_CHECK(&g_c, in == 1,
                         "n%d: %g inbound data lane connections (want 1: only n%d has a lane)", i,
                         in, 2 - i);
        TH_CLUSTER_CHECK(&g_c, metric(i, "kv_repl_messages_dropped_total", NULL) == 0,
                         "n%d dropped replica batches", i);
    }
    stop_all_clean();
}

/* A frame on the wire: 4-byte big-endian length, then the payload. */
static size_t frame(uint8_t *out, const uint8_t *payload, uint32_t len)
{
    out[0] = (uint8_t)(len >> 24);
    out[1] = (uint8_t)(len >> 16);
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    memcpy(out + 4, payload, len);
    return 4 + (size_t)len;
}

#define HELLO "KVDATA1\n"

Test(replication_lane, bad_input_on_the_data_port_is_counted_and_closed_never_a_crash)
{
    th_cluster_init(&g_c, 3);
    int dport = th_free_port();
    cr_assert_gt(dport, 0);
    char dport_s[16];
    snprintf(dport_s, sizeof dport_s, "%d", dport);
    const char *const n0_args[] = {"--cluster.data_port", dport_s, NULL};
    g_c.node_args[0] = n0_args;
    start_cluster(3);
    TH_CLUSTER_CHECK(&g_c, logged_data_port(0) == dport,
                     "n0 logged data_port=%d, started with --cluster.data_port %d",
                     logged_data_port(0), dport);

    /* Some traffic first, so the peers' connections to n0 are up before the baseline. */
    uint64_t ts;
    uint32_t nd;
    for (int i = 0; i < 6; i++) {
        char key[32];
        snprintf(key, sizeof key, "warm-%d", i);
        put_ok(i % 3, key, "w", "w=3", &ts, &nd);
    }
    double conns0 = metric(0, "kv_data_connections_in", NULL);
    double peer_bad0 = metric(0, "kv_peer_messages_dropped_total", "reason=\"malformed\"");
    double repl_bad0 = metric(0, "kv_repl_messages_dropped_total", NULL);
    TH_CLUSTER_CHECK(&g_c, conns0 == 2, "n0: %g inbound data connections (want 2 peers)", conns0);

    /* (a) Not the hello (an HTTP client on the wrong port): closed, counted. */
    int fd = th_connect(dport, 5000);
    cr_assert_geq(fd, 0, "cannot connect to n0's data port %d", dport);
    const char *http = "GET / HTTP/1.1\r\n\r\n";
    cr_assert_eq(th_send_all(fd, http, strlen(http)), 0);
    TH_CLUSTER_CHECK(&g_c, th_wait_closed(fd, 5000),
                     "n0 kept a data connection open that began with an HTTP request");
    close(fd);
    double v = metric_reaches(0, "kv_data_bad_hello_total", NULL, 1);
    TH_CLUSTER_CHECK(&g_c, v == 1, "kv_data_bad_hello_total %g after one bad hello (want 1)", v);

    /* (b) The hello, then a length of 0xFFFFFFFF (over max_msg): closed, counted. */
    fd = th_connect(dport, 5000);
    cr_assert_geq(fd, 0);
    static const uint8_t huge[] = {'K', 'V', 'D', 'A', 'T', 'A', '1', '\n', 0xff, 0xff, 0xff, 0xff};
    cr_assert_eq(th_send_all(fd, huge, sizeof huge), 0);
    TH_CLUSTER_CHECK(&g_c, th_wait_closed(fd, 5000),
                     "n0 kept a data connection open after a frame length of 0xFFFFFFFF");
    close(fd);
    v = metric_reaches(0, "kv_data_bad_frame_total", NULL, 1);
    TH_CLUSTER_CHECK(&g_c, v == 1, "kv_data_bad_frame_total %g after one huge frame (want 1)", v);

    /* (c) Well-formed frames with garbage payloads, on one connection, which stays open:
     * 32 bytes that are not a replica batch (memb_on_direct counts them as a malformed peer
     * message), then a payload that starts like a batch (array, protocol 0x6b76) but does
     * not decode (replication's on_repl_recv counts it in kv_repl_messages_dropped_total). */
    uint8_t garbage[32], lookalike[32], buf[8 + 2 * (4 + 32)];
    uint32_t x = 0x2545f491u;
    for (size_t i = 0; i < sizeof garbage; i++) {
        x = x * 1664525u + 1013904223u;
        garbage[i] = (uint8_t)(x >> 24);
        lookalike[i] = (uint8_t)(x >> 16);
    }
    garbage[0] = 0x5f; /* a CBOR byte string header: never a batch, whatever follows */
    lookalike[0] = 0x85;
    lookalike[1] = 0x19;
    lookalike[2] = 0x6b;
    lookalike[3] = 0x76;
    lookalike[4] = 0xff; /* a "break" where the next item must be: undecodable */
    size_t n = 0;
    memcpy(buf, HELLO, 8);
    n += 8;
    n += frame(buf + n, garbage, sizeof garbage);
    fd = th_connect(dport, 5000);
    cr_assert_geq(fd, 0);
    cr_assert_eq(th_send_all(fd, buf, n), 0);
    v = metric_reaches(0, "kv_peer_messages_dropped_total", "reason=\"malformed\"", peer_bad0 + 1);
    TH_CLUSTER_CHECK(&g_c, v == peer_bad0 + 1,
                     "kv_peer_messages_dropped_total{reason=\"malformed\"} went from %g to %g "
                     "after one garbage frame on the data lane (want +1)",
                     peer_bad0, v);
    n = frame(buf, lookalike, sizeof lookalike);
    cr_assert_eq(th_send_all(fd, buf, n), 0, "n0 closed the connection after a garbage frame");
    v = metric_reaches(0, "kv_repl_messages_dropped_total", NULL, repl_bad0 + 1);
    TH_CLUSTER_CHECK(&g_c, v == repl_bad0 + 1,
                     "kv_repl_messages_dropped_total went from %g to %g after one undecodable "
                     "batch on the data lane (want +1)",
                     repl_bad0, v);
    TH_CLUSTER_CHECK(&g_c,
                     metric(0, "kv_data_bad_frame_total", NULL) == 1 &&
                         metric(0, "kv_data_bad_hello_total", NULL) == 1,
                     "a garbage payload in a well-formed frame counted as a bad frame or hello");
    close(fd);

    /* (d) A frame cut short by the sender closing: nothing delivered, nothing counted. */
    fd = th_connect(dport, 5000);
    cr_assert_geq(fd, 0);
    n = 0;
    memcpy(buf, HELLO, 8);
    n += 8;
    n += frame(buf + n, garbage, sizeof garbage);
    buf[8 + 3] = 200; /* announce 200 bytes, send 32 */
    cr_assert_eq(th_send_all(fd, buf, n), 0);
    close(fd);

    /* Every raw connection is gone from n0's gauge; the peers' two remain. */
    v = conns0 + 1;
    for (int64_t deadline = th_now_ms() + 5000; th_now_ms() < deadline && v != conns0;) {
        v = metric(0, "kv_data_connections_in", NULL);
        if (v != conns0)
            usleep(10000);
    }
    TH_CLUSTER_CHECK(&g_c, v == conns0,
                     "n0: %g inbound data connections after the raw ones closed (want %g)", v,
                     conns0);

    /* The cut frame was neither delivered nor counted as bad (its connection is closed now). */
    double pb = metric(0, "kv_peer_messages_dropped_total", "reason=\"malformed\"");
    double rb = metric(0, "kv_repl_messages_dropped_total", NULL);
    double bh = metric(0, "kv_data_bad_hello_total", NULL);
    double bf = metric(0, "kv_data_bad_frame_total", NULL);
    TH_CLUSTER_CHECK(&g_c, pb == peer_bad0 + 1 && rb == repl_bad0 + 1 && bh == 1 && bf == 1,
                     "after a frame cut short: malformed %g, undecodable %g, bad hello %g, bad "
                     "frame %g (want %g, %g, 1, 1)",
                     pb, rb, bh, bf, peer_bad0 + 1, repl_bad0 + 1);

    /* The cluster still takes quorum writes through n0 and reads them back elsewhere. */
    double rx0 = metric(0, "kv_data_frames_received_total", NULL);
    for (int i = 0; i < 30; i++) {
        char key[32], val[32];
        snprintf(key, sizeof key, "after-%02d", i);
        snprintf(val, sizeof val, "after bad input %d", i);
        put_ok(0, key, val, NULL, &ts, &nd);
        get_is(1 + i % 2, key, NULL, val, ts, nd);
    }
    double rx1 = metric(0, "kv_data_frames_received_total", NULL);
    TH_CLUSTER_CHECK(&g_c, rx1 >= rx0 + 30,
                     "n0 received %g data lane frames for 30 quorum writes (want >= 30)",
                     rx1 - rx0);
    TH_CLUSTER_CHECK(&g_c, th_node_alive(&g_c.node[0]), "n0 died");
    TH_CLUSTER_CHECK(&g_c, th_log_sanitizer_clean(&g_c.node[0]), "n0's log has a sanitizer report");
    stop_all_clean();
}

Test(replication_lane, a_node_restarted_on_a_new_data_port_is_reached_again)
{
    th_cluster_init(&g_c, 3);
    start_cluster(3);
    uint64_t ts;
    uint32_t nd;
    for (int i = 0; i < 9; i++) { /* connections to n2's first data port are up */
        char key[32];
        snprintf(key, sizeof key, "before-%d", i);
        put_ok(i % 3, key, "b", "w=3", &ts, &nd);
    }
    int old_port = logged_data_port(2);
    cr_assert_gt(old_port, 0);

    th_cluster_kill9(&g_c, 2);
    cr_assert_eq(th_cluster_start_node(&g_c, 2), 0, "n2 did not restart");
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 20000) >= 0,
                     "the cluster did not settle after n2's restart");
    int new_port = logged_data_port(2);
    cr_assert_gt(new_port, 0);
    if (new_port == old_port)
        cr_log_warn("n2 got its old data port %d again (the kernel's choice)", old_port);
    cr_log_info("n2's data port: %d before the restart, %d after", old_port, new_port);

    /* w=3 through n0 needs n2's ack: it comes once n0 routes to the new port. */
    int64_t t0 = th_now_ms(), deadline = t0 + 15000;
    th_kv_resp r = {0};
    int attempts = 0;
    for (; attempts < 300 && th_now_ms() < deadline; attempts++) {
        th_kv_resp_free(&r);
        th_kv_put(&g_c.node[0], "probe", "p", "w=3", &r);
        if (r.status == 204)
            break;
        usleep(50000);
    }
    TH_CLUSTER_CHECK(&g_c, r.status == 204,
                     "w=3 writes through n0 still fail %lld ms after n2 came back on data port "
                     "%d (was %d): last %d %s",
                     (long long)(th_now_ms() - t0), new_port, old_port, r.status, r.body);
    th_kv_resp_free(&r);
    cr_log_info("w=3 through n0 succeeded after %d attempts, %lld ms", attempts + 1,
                (long long)(th_now_ms() - t0));

    for (int i = 0; i < 60; i++) {
        char key[32], val[32];
        snprintf(key, sizeof key, "after-%02d", i);
        snprintf(val, sizeof val, "restarted %d", i);
        put_ok(0, key, val, "w=3", &ts, &nd);
        get_is(2, key, "r=1", val, ts, nd);
    }
    /* The restarted process got them on its new lane (not through nng). */
    double rx = metric(2, "kv_data_frames_received_total", NULL);
    TH_CLUSTER_CHECK(&g_c, rx >= 60,
                     "restarted n2 received %g data lane frames for 60 w=3 writes (want >= 60)",
                     rx);
    stop_all_clean();
}
