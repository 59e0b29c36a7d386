/*
 * test_cluster_membership.c — real `kvstore servenode` processes on 127.0.0.1 forming a
 * cluster through SWIM over nng, observed the way an operator would: GET
 * /v1/cluster/members on every node, the logs and /metrics.
 *
 * Shown here: five nodes that each name one seed converge to five alive members; a node
 * killed with -9 is seen dead by all others within the documented bound and, restarted on
 * the same data dir, comes back alive everywhere with a higher incarnation; a node
 * SIGSTOPped past its suspicion timeout refutes (or rejoins) after SIGCONT; SIGTERM makes
 * a node `left` everywhere; a seed that is down at start is retried until it comes up;
 * garbage and malformed CBOR on the peer port are dropped and counted while the node
 * keeps working.
 *
 * Timing knobs are shortened (probe every 200 ms) so that each test takes seconds; every
 * wait is a poll on a condition with a deadline. Measured times are logged (cr_log_info)
 * for the README, never asserted beyond the documented bounds. Single-threaded test code;
 * criterion runs each Test in its own process, and fini kills what a failed test left.
 */
#include "harness.h"
#include "kvstore/error.h"
#include "net/wire.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The fast protocol period the nodes here run with, and what follows from it. */
#define PROBE_MS     200
#define SUSP_MULT    4 /* cluster.suspicion_mult (default) */
#define SUSP_MAX_MUL 6 /* the core's suspicion_max_mult: suspicion starts at 6x its minimum */

#define MAXN 6

static char g_tmp[256];
static th_node g_nodes[MAXN];

static void setup(void)
{
    th_tmpdir(g_tmp, sizeof g_tmp);
    memset(g_nodes, 0, sizeof g_nodes);
}

static void teardown(void)
{
    th_kill_all();
    th_tmpdir_remove(g_tmp);
}

TestSuite(cluster_membership, .init = setup, .fini = teardown, .timeout = 120);

static void nap_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/*
 * The documented bound (README "Membership") for every live node to mark a crashed one
 * dead: until someone probes it, at most N-1 periods (round-robin); one period to fail the
 * direct and indirect probes; the longest suspicion timeout (6 x 4 x max(1, log10 N)
 * periods, shrinking to a sixth with confirmations); a few periods of gossip to reach
 * everyone. In periods: (N + 4) + 24 x max(1, log10 N).
 */
static int dead_bound_ms(int n)
{
    double lg = log10((double)n) > 1.0 ? log10((double)n) : 1.0;
    return (int)(((double)(n + 4) + SUSP_MAX_MUL * SUSP_MULT * lg) * PROBE_MS);
}

/* ---------- starting nodes ---------- */

/* Start node i (name "n<i>") with the fast knobs; seed is a peer address or NULL. http_port
 * and cluster_port 0 pick free ones (a restart passes the old ones). */
static void start_node(int i, const char *seed, int http_port, int cluster_port)
{
    char dir[300], name[16], cport[16];
    snprintf(dir, sizeof dir, "%s/n%d", g_tmp, i);
    snprintf(name, sizeof name, "n%d", i);
    snprintf(cport, sizeof cport, "%d", cluster_port);
    const char *args[24];
    int a = 0;
    args[a++] = "--name";
    args[a++] = name;
    args[a++] = "--cluster.probe_interval";
    args[a++] = "200ms";
    args[a++] = "--cluster.probe_timeout";
    args[a++] = "100ms";
    args[a++] = "--cluster.pushpull_interval";
    args[a++] = "2s";
    if (seed) {
        args[a++] = "--seeds";
        args[a++] = seed;
    }
    if (cluster_port) {
        args[a++] = "--cluster.port";
        args[a++] = cport;
    }
    args[a] = NULL;
    cr_assert_eq(th_node_start(&g_nodes[i], dir, http_port, args, NULL, 15000), 0,
                 "node n%d did not start", i);
}

/* ---------- reading views ---------- */

typedef struct view_member {
    char name[64];
    char state[16];
    double incarnation;
} view_member;

typedef struct view {
    int n;
    view_member m[16];
} view;

/* GET /v1/cluster/members from node and parse its members (flat objects in an array). */
static bool fetch_view(const th_node *node, view *v)
{
    memset(v, 0, sizeof *v);
    th_resp r;
    if (th_http(node->port, "GET", "/v1/cluster/members", NULL, 0, &r) != 0)
        return false;
    bool ok = r.status == 200;
    const char *p = ok ? strstr(r.body, "\"members\":[") : NULL;
    while (p && v->n < 16) {
        const char *o = strchr(p, '{'), *e = o ? strchr(o, '}') : NULL;
        if (!o || !e)
            break;
        char obj[512];
        snprintf(obj, sizeof obj, "%.*s", (int)(e - o + 1), o);
        view_member *m = &v->m[v->n++];
        if (!th_json_str(obj, "name", m->name, sizeof m->name) ||
            !th_json_str(obj, "state", m->state, sizeof m->state) ||
            !th_json_num(obj, "incarnation", &m->incarnation))
            ok = false;
        p = e + 1;
    }
    th_resp_free(&r);
    return ok;
}

static const view_member *view_find(const view *v, const char *name)
{
    for (int i = 0; i < v->n; i++)
        if (strcmp(v->m[i].name, name) == 0)
            return &v->m[i];
    return NULL;
}

/* Does observer see member `name` in `state` with an incarnation above min_inc? */
static bool sees(const th_node *obs, const char *name, const char *state, double min_inc)
{
    view v;
    if (!fetch_view(obs, &v))
        return false;
    const view_member *m = view_find(&v, name);
    return m && strcmp(m->state, state) == 0 && m->incarnation > min_inc;
}

/*
 * Wait until every node in [0, count) but `skip` (-1: none) sees `name` in `state` with an
 * incarnation above min_inc. Returns the milliseconds it took, or -1 after timeout_ms.
 */
static int64_t wait_all_see(int count, int skip, const char *name, const char *state,
                            double min_inc, int timeout_ms)
{
    int64_t t0 = th_now_ms(), deadline = t0 + timeout_ms;
    for (;;) {
        bool all = true;
        for (int i = 0; i < count && all; i++)
            if (i != skip && !sees(&g_nodes[i], name, state, min_inc))
                all = false;
        if (all)
            return th_now_ms() - t0;
        if (th_now_ms() >= deadline)
            return -1;
        nap_ms(20);
    }
}

/* Print every node's view, for a failed wait. */
static void dump_views(int count)
{
    for (int i = 0; i < count; i++) {
        view v;
        if (!th_node_alive(&g_nodes[i]) || !fetch_view(&g_nodes[i], &v)) {
            cr_log_error("n%d: no view", i);
            continue;
        }
        char line[1024] = "";
        for (int j = 0; j < v.n; j++) {
            char one[128];
            snprintf(one, sizeof one, " %s=%s/%g", v.m[j].name, v.m[j].state, v.m[j].incarnation);
            strncat(line, one, sizeof line - strlen(line) - 1);
        }
        cr_log_error("n%d sees:%s", i, line);
    }
}

/* Wait until each of nodes [0, count) lists all of n0..n<count-1> alive. */
static int64_t wait_converged(int count, int timeout_ms)
{
    int64_t t0 = th_now_ms(), deadline = t0 + timeout_ms;
    for (;;) {
        bool all = true;
        for (int i = 0; i < count && all; i++) {
            view v;
            if (!fetch_view(&g_nodes[i], &v)) {
                all = false;
                break;
            }
            int alive = 0;
            for (int j = 0; j < v.n; j++)
                alive += strcmp(v.m[j].state, "alive") == 0;
            all = alive == count && v.n == count;
        }
        if (all)
            return th_now_ms() - t0;
        if (th_now_ms() >= deadline) {
            dump_views(count);
            return -1;
        }
        nap_ms(20);
    }
}

static double incarnation_of(int observer, const char *name)
{
    view v;
    cr_assert(fetch_view(&g_nodes[observer], &v));
    const view_member *m = view_find(&v, name);
    cr_assert_not_null(m, "n%d does not know %s", observer, name);
    return m->incarnation;
}

/* Wait until <data_dir>/INCARNATION of node i holds at least want (it is written off the
 * loop after every change). */
static bool wait_incarnation_file(int i, double want)
{
    char path[400];
    snprintf(path, sizeof path, "%s/INCARNATION", g_nodes[i].data_dir);
    int64_t deadline = th_now_ms() + 5000;
    while (th_now_ms() < deadline) {
        FILE *f = fopen(path, "r");
        double v = 0;
        if (f) {
            if (fscanf(f, "%lf", &v) != 1)
                v = 0;
            fclose(f);
        }
        if (v >= want)
            return true;
        nap_ms(20);
    }
    return false;
}

/* Stop every running node with SIGTERM; each must exit 0 with a clean log. */
static void stop_all_clean(int count)
{
    for (int i = 0; i < count; i++)
        cr_expect(th_node_stop_clean(&g_nodes[i], 10000), "n%d did not stop cleanly", i);
}

/* ---------- tests ---------- */

Test(cluster_membership, five_nodes_converge_a_killed_one_is_dead_and_comes_back)
{
    start_node(0, NULL, 0, 0);
    for (int i = 1; i < 5; i++)
        start_node(i, g_nodes[0].peer_addr, 0, 0);
    int64_t conv = wait_converged(5, 15000);
    cr_assert_geq(conv, 0, "5 nodes did not converge within 15 s");
    cr_log_info("5 nodes converged %lld ms after the last one answered /healthz", (long long)conv);

    /* What an operator sees: kvtool members, as a table and as JSON. */
    const char *targv[] = {th_bin("kvtool"), "--server", g_nodes[2].url, "members", NULL};
    char *out = NULL, *err = NULL;
    cr_assert_eq(th_run(targv, NULL, NULL, 0, &out, &err, 10000), 0, "kvtool members: %s", err);
    cr_assert(strstr(out, "NAME") && strstr(out, "INCARNATION") && strstr(out, "SINCE"),
              "no table header: %s", out);
    cr_assert(strstr(out, "n2 *") != NULL, "the answering node is not marked: %s", out);
    cr_assert(strstr(out, "5 members: 5 alive, 0 suspect, 0 dead, 0 left") != NULL, "%s", out);
    for (int i = 0; i < 5; i++) {
        char row[64];
        snprintf(row, sizeof row, "%s  alive", g_nodes[i].peer_addr);
        cr_assert(strstr(out, row) != NULL, "no alive row for %s: %s", g_nodes[i].peer_addr, out);
    }
    free(out);
    free(err);
    const char *jargv[] = {th_bin("kvtool"), "--server", g_nodes[2].url, "members", "--json", NULL};
    cr_assert_eq(th_run(jargv, NULL, NULL, 0, &out, &err, 10000), 0, "kvtool members --json");
    char name[16];
    cr_assert(th_json_str(out, "name", name, sizeof name) && strcmp(name, "n2") == 0, "%s", out);
    cr_assert(strstr(out, "\"state\":\"alive\"") && strstr(out, "\"ring_status\":\"normal\""), "%s",
              out);
    free(out);
    free(err);

    /* kill -9 n4: everyone else must see it dead within the bound. */
    double inc_before = incarnation_of(0, "n4");
    int http_port = g_nodes[4].port, cluster_port = g_nodes[4].cluster_port;
    th_node_kill9(&g_nodes[4]);
    int bound = dead_bound_ms(5);
    int64_t dead = wait_all_see(5, 4, "n4", "dead", 0, bound + 2000);
    if (dead < 0)
        dump_views(4);
    cr_assert_geq(dead, 0, "not every node saw n4 dead within %d ms", bound + 2000);
    cr_log_info("kill -9: all 4 others saw n4 dead after %lld ms (documented bound %d ms)",
                (long long)dead, bound);
    cr_expect_leq(dead, bound, "dead after %lld ms, over the documented bound of %d ms",
                  (long long)dead, bound);
    char *log = th_log_read(&g_nodes[0]);
    cr_expect(strstr(log, "msg=\"member state changed\" member=n4") != NULL,
              "n0 did not log n4's state change at info");
    free(log);

    /* Restart on the same data dir and ports: alive everywhere, higher incarnation. */
    start_node(4, g_nodes[0].peer_addr, http_port, cluster_port);
    int64_t back = wait_all_see(5, -1, "n4", "alive", inc_before, 15000);
    if (back < 0)
        dump_views(5);
    cr_assert_geq(back, 0, "restarted n4 not alive everywhere with incarnation > %g", inc_before);
    cr_log_info("restart: n4 alive everywhere with incarnation %g (was %g) after %lld ms",
                incarnation_of(0, "n4"), inc_before, (long long)back);
    stop_all_clean(5);
}

Test(cluster_membership, a_node_stopped_past_its_suspicion_timeout_refutes_after_sigcont)
{
    start_node(0, NULL, 0, 0);
    for (int i = 1; i < 4; i++)
        start_node(i, g_nodes[0].peer_addr, 0, 0);
    cr_assert_geq(wait_converged(4, 15000), 0, "4 nodes did not converge");
    double inc_before = incarnation_of(0, "n3");

    cr_assert_eq(kill(g_nodes[3].pid, SIGSTOP), 0);
    int64_t dead = wait_all_see(4, 3, "n3", "dead", 0, dead_bound_ms(4) + 2000);
    cr_assert_geq(dead, 0, "the stopped node was not declared dead by everyone");
    cr_log_info("SIGSTOP: all others saw n3 dead after %lld ms", (long long)dead);

    cr_assert_eq(kill(g_nodes[3].pid, SIGCONT), 0);
    int64_t back = wait_all_see(4, -1, "n3", "alive", inc_before, 15000);
    if (back < 0)
        dump_views(4);
    cr_assert_geq(back, 0, "n3 did not come back alive everywhere after SIGCONT");
    double inc_after = incarnation_of(0, "n3");
    cr_log_info("SIGCONT: n3 alive everywhere after %lld ms with incarnation %g (was %g)",
                (long long)back, inc_after, inc_before);
    cr_assert(wait_incarnation_file(3, inc_after),
              "n3's INCARNATION file does not hold the refuting incarnation %g", inc_after);
    /* And it did not take anyone else down with it. */
    cr_assert_geq(wait_converged(4, 5000), 0, "the cluster did not settle after SIGCONT");
    stop_all_clean(4);
}

Test(cluster_membership, sigterm_leaves_every_node_sees_left_and_a_restart_rejoins)
{
    start_node(0, NULL, 0, 0);
    for (int i = 1; i < 3; i++)
        start_node(i, g_nodes[0].peer_addr, 0, 0);
    cr_assert_geq(wait_converged(3, 15000), 0, "3 nodes did not converge");

    int64_t t0 = th_now_ms();
    cr_assert_eq(th_node_stop(&g_nodes[2], 10000), 0, "n2 did not exit 0 on SIGTERM");
    int64_t stop_ms = th_now_ms() - t0;
    cr_assert(th_log_sanitizer_clean(&g_nodes[2]));
    /* The leave went out before the process exited: no probing, no suspicion needed. */
    int64_t left = wait_all_see(3, 2, "n2", "left", 0, 5000);
    if (left < 0)
        dump_views(2);
    cr_assert_geq(left, 0, "not every node saw n2 left");
    cr_log_info("SIGTERM: n2 exited after %lld ms; the others saw it left %lld ms later",
                (long long)stop_ms, (long long)left);
    char *log = th_log_read(&g_nodes[2]);
    cr_expect(strstr(log, "msg=\"left the cluster\"") != NULL, "n2 did not log its leave");
    free(log);

    /* A rolling restart: it comes back above the incarnation it left with. */
    double inc_left = incarnation_of(0, "n2");
    cr_assert(wait_incarnation_file(2, inc_left), "n2 did not persist its leave's incarnation");
    start_node(2, g_nodes[0].peer_addr, g_nodes[2].port, g_nodes[2].cluster_port);
    int64_t back = wait_all_see(3, -1, "n2", "alive", inc_left, 10000);
    if (back < 0)
        dump_views(3);
    cr_assert_geq(back, 0, "n2 did not come back alive above incarnation %g", inc_left);
    cr_log_info("restart after leave: n2 alive everywhere after %lld ms (incarnation %g, left "
                "with %g)",
                (long long)back, incarnation_of(0, "n2"), inc_left);
    stop_all_clean(3);
}

Test(cluster_membership, a_seed_that_is_down_at_start_is_retried_until_it_comes_up)
{
    /* n1 names n0's peer address before n0 exists. */
    int http0 = th_free_port(), peer0 = th_free_port();
    char seed[32];
    snprintf(seed, sizeof seed, "127.0.0.1:%d", peer0);
    start_node(1, seed, 0, 0);
    cr_assert(th_log_wait(&g_nodes[1], "join request sent to seed", 5000),
              "n1 never tried its seed");
    nap_ms(1500); /* at least one more attempt (backoff starts at 1 s) */
    char *log = th_log_read(&g_nodes[1]);
    int attempts = 0;
    for (const char *p = log; (p = strstr(p, "join request sent to seed")) != NULL; p++)
        attempts++;
    free(log);
    cr_assert_geq(attempts, 2, "n1 tried its seed %d times in 1.5 s", attempts);
    view v;
    cr_assert(fetch_view(&g_nodes[1], &v));
    cr_assert_eq(v.n, 1, "n1 knows %d members before its seed exists", v.n);

    start_node(0, NULL, http0, peer0);
    int64_t conv = wait_converged(2, 20000);
    cr_assert_geq(conv, 0, "n1 did not join n0 after n0 came up");
    cr_log_info("seed down at start: %d attempts before it came up; joined %lld ms after", attempts,
                (long long)conv);
    stop_all_clean(2);
}

/* Send one message (raw bytes) to a peer port over nng, as a peer would. */
static void nng_push(int port, const void *data, size_t len)
{
    nng_socket s;
    cr_assert_eq(nng_push0_open(&s), 0);
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
    cr_assert_eq(nng_dial(s, url, NULL, 0), 0, "cannot dial the peer port");
    cr_assert_eq(nng_send(s, (void *)data, len, 0), 0);
    /* nng_close may drop what is not written yet: wait for the node to count it instead. */
    nap_ms(50);
    nng_close(s);
}

static double dropped(const th_node *n, const char *reason)
{
    char label[64];
    snprintf(label, sizeof label, "reason=\"%s\"", reason);
    return th_metric(n->port, "kv_peer_messages_dropped_total", label);
}

static bool wait_dropped(const th_node *n, const char *reason, double want)
{
    int64_t deadline = th_now_ms() + 5000;
    while (th_now_ms() < deadline) {
        if (dropped(n, reason) >= want)
            return true;
        nap_ms(20);
    }
    return false;
}

Test(cluster_membership, garbage_on_the_peer_port_is_dropped_and_counted)
{
    start_node(0, NULL, 0, 0);
    start_node(1, g_nodes[0].peer_addr, 0, 0);
    cr_assert_geq(wait_converged(2, 15000), 0);
    th_node *n = &g_nodes[0];
    cr_assert_eq(dropped(n, "malformed"), 0);

    /* Bytes that are not even the nng handshake: the connection is closed. */
    int fd = th_connect(n->cluster_port, 5000);
    cr_assert_geq(fd, 0);
    static const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage";
    th_send_all(fd, junk, sizeof junk - 1);
    cr_assert(th_wait_closed(fd, 5000), "the peer port kept a connection that sent garbage");
    close(fd);

    /* Well-framed nng messages whose bodies are not our CBOR. */
    nng_push(n->cluster_port, "hello", 5);
    static const uint8_t huge_array[] = {0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    nng_push(n->cluster_port, huge_array, sizeof huge_array);
    cr_assert(wait_dropped(n, "malformed", 2), "malformed messages not counted (%g)",
              dropped(n, "malformed"));

    /* Valid CBOR of a future protocol version, and an unknown message type. */
    swim_msg m;
    memset(&m, 0, sizeof m);
    m.type = SWIM_MSG_PING;
    kv_buf b = KV_BUF_INIT;
    cr_assert_eq(kv_wire_encode(&b, "127.0.0.1:1", &m), KV_OK);
    cr_assert_eq((uint8_t)b.data[1], SWIM_PROTOCOL_VERSION);
    b.data[1] = 0x07; /* version 7 */
    nng_push(n->cluster_port, b.data, b.len);
    cr_assert(wait_dropped(n, "bad_version", 1), "a future version was not counted");
    b.data[1] = SWIM_PROTOCOL_VERSION;
    b.data[2] = 0x17; /* type 23 */
    nng_push(n->cluster_port, b.data, b.len);
    cr_assert(wait_dropped(n, "unknown_type", 1), "an unknown type was not counted");
    kv_buf_free(&b);

    /* The node kept working: alive, still in the cluster, still serving. */
    cr_assert(th_node_alive(n));
    cr_assert(sees(&g_nodes[1], "n0", "alive", 0));
    cr_assert(sees(n, "n1", "alive", 0));
    char *log = th_log_read(n);
    cr_expect(strstr(log, "msg=\"peer message dropped\" reason=malformed") != NULL,
              "the drop was not logged at debug");
    free(log);
    stop_all_clean(2);
}
