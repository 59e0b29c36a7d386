/*
 * test_replication_repair.c — how a replica that missed writes catches up, and what a
 * sloppy quorum buys (issue 6), seen by a client of real kvstore processes on 127.0.0.1.
 *
 * Read repair (3 nodes, N=3, R=2, W=2, storage.sync always, no hints kept): a replica
 * killed -9 misses 50 writes and a delete; restarted, its own store lacks them; quorum
 * reads through the other nodes find it stale and repair it (values and the tombstone),
 * so that with the other two killed it alone answers every latest value and the 404.
 *
 * Sloppy quorum (4 nodes, N=3, R=2, W=2): with two nodes killed, strict-quorum writes of
 * the keys whose three replicas include both dead nodes fail with 503; the same keys on
 * the same ring succeed with replication.sloppy_quorum because the fourth node stands in
 * and keeps the write as a hint; when the dead nodes return, every hint is delivered and
 * every key reads back at quorum through every node with its latest value.
 */
#include "cluster.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static th_cluster g_c;

/* Defaults spelled out: the tests reason about N, R and W. replication.timeout is short so
 * that a write missing a replica closes (and makes its hint) soon. */
#define COMMON_ARGS                                                                                \
    "--replication.n", "3", "--replication.r", "2", "--replication.w", "2",                        \
        "--replication.timeout", "1s", "--storage.sync", "always"

/* No hint is ever kept: a write a replica missed reaches it only by read repair. */
static const char *const g_repair_args[] = {COMMON_ARGS, "--replication.hints_max_count", "0",
                                            NULL};
static const char *const g_strict_args[] = {COMMON_ARGS, "--replication.sloppy_quorum", "false",
                                            NULL};
static const char *const g_sloppy_args[] = {COMMON_ARGS, "--replication.sloppy_quorum", "true",
                                            NULL};

static void setup(void)
{
    memset(&g_c, 0, sizeof g_c);
}

static void teardown(void)
{
    th_cluster_fini(&g_c);
}

TestSuite(replication_repair, .init = setup, .fini = teardown, .timeout = 150);

static void start_cluster(int n, const char *const *args)
{
    th_cluster_init(&g_c, n);
    g_c.args = args;
    cr_assert_eq(th_cluster_start(&g_c, 20000), 0, "%d nodes did not start and converge", n);
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* What the client last saw acknowledged for a key. */
typedef struct kstate {
    char key[32];
    char value[48];
    bool deleted;
    uint64_t ts;
    uint32_t node;
} kstate;

static void record_ack(kstate *k, const th_kv_resp *r, const char *value)
{
    snprintf(k->value, sizeof k->value, "%s", value ? value : "");
    k->deleted = value == NULL;
    k->ts = r->ts;
    k->node = r->node;
}

static void put_ok(int via, kstate *k, const char *value, const char *query)
{
    th_kv_resp r;
    th_kv_put(&g_c.node[via], k->key, value, query, &r);
    TH_CLUSTER_CHECK(&g_c, r.status == 204 && r.has_version,
                     "PUT %s%s%s through n%d: status %d (%lld ms), ETag '%s', body %s", k->key,
                     query ? "?" : "", query ? query : "", via, r.status, (long long)r.ms, r.etag,
                     r.body);
    record_ack(k, &r, value);
    th_kv_resp_free(&r);
}

static void delete_ok(int via, kstate *k)
{
    th_kv_resp r;
    th_kv_delete(&g_c.node[via], k->key, NULL, &r);
    TH_CLUSTER_CHECK(&g_c, r.status == 204 && r.has_version,
                     "DELETE %s through n%d: status %d (%lld ms), body %s", k->key, via, r.status,
                     (long long)r.ms, r.body);
    record_ack(k, &r, NULL);
    th_kv_resp_free(&r);
}

/* A read through `via` returns what the client last saw acknowledged: the value with its
 * version, or 404 key_not_found for a deleted key. */
static void read_is(int via, const kstate *k, const char *query)
{
    th_kv_resp r;
    th_kv_get(&g_c.node[via], k->key, query, &r);
    bool ok;
    if (k->deleted)
        ok = r.status == 404 && strstr(r.body, "\"code\":\"key_not_found\"") != NULL;
    else
        ok = r.status == 200 && strcmp(r.body, k->value) == 0 && r.has_version && r.ts == k->ts &&
             r.node == k->node;
    if (!ok)
        th_cluster_dump(&g_c, k->key, 20);
    cr_assert(ok,
              "GET %.64s?%.64s through n%d: status %d, body '%.200s', ETag %.64s (%lld ms); want "
              "%.64s (version %llu.%u)",
              k->key, query ? query : "", via, r.status, r.body, r.etag, (long long)r.ms,
              k->deleted ? "404 key_not_found" : k->value, (unsigned long long)k->ts, k->node);
    th_kv_resp_free(&r);
}

/* A metric of one node (its /metrics must answer). */
static double metric_of(int i, const char *name)
{
    double v = th_metric(g_c.node[i].port, name, NULL);
    TH_CLUSTER_CHECK(&g_c, v >= 0, "n%d: /metrics did not answer (reading %s)", i, name);
    return v;
}

/* Poll until metric `name` of node i is at least / exactly want; returns the last value
 * seen. */
static double wait_metric(int i, const char *name, double want, bool exact, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        double v = metric_of(i, name);
        if ((exact ? v == want : v >= want) || th_now_ms() >= deadline)
            return v;
        nap_ms(50);
    }
}

/* Poll until the sum of `name` over the running nodes is at least / exactly want. */
static double wait_sum(const char *name, double want, bool exact, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        double v = th_cluster_metric_sum(&g_c, -1, name, NULL);
        if ((exact ? v == want : v >= want) || th_now_ms() >= deadline)
            return v;
        nap_ms(50);
    }
}

#define NKEYS 50 /* written through n0 while n2 is down */
#define NOLD  20 /* of those, written before the crash too (n2 holds an older version) */

Test(replication_repair, quorum_reads_repair_a_replica_that_missed_writes_without_hints)
{
    start_cluster(3, g_repair_args);
    const int victim = 2;
    static kstate k[NKEYS];
    kstate gone = {.key = "rr-gone"};
    char val[48];

    /* Held by all three before the crash: older versions of the first NOLD keys, and a key
     * that will be deleted while n2 is down. */
    for (int i = 0; i < NKEYS; i++)
        snprintf(k[i].key, sizeof k[i].key, "rr-%02d", i);
    for (int i = 0; i < NOLD; i++)
        put_ok(i % 3, &k[i], "before the crash", "consistency=all");
    put_ok(1, &gone, "deleted while n2 is down", "consistency=all");
    TH_CLUSTER_CHECK(&g_c, metric_of(victim, "kv_store_keys") == NOLD + 1,
                     "n2 holds %g live keys before the crash, want %d",
                     metric_of(victim, "kv_store_keys"), NOLD + 1);
    double dropped0 = metric_of(0, "kv_hints_dropped_total");

    th_cluster_kill9(&g_c, victim);
    /* Write only once n0 and n1 know n2 is dead, so that nothing is sent to it: a replica
     * message sent while it is down waits in the sender's queue for its address and would
     * reach it when it restarts on the same port (a path that is neither a hint nor read
     * repair). */
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0,
                     "n0 and n1 did not see n2 dead");
    for (int i = 0; i < NKEYS; i++) {
        snprintf(val, sizeof val, "written while n2 was down %d", i);
        put_ok(0, &k[i], val, NULL); /* W=2: n0 and n1 */
    }
    delete_ok(0, &gone);

    /* Each of those 51 writes closes without n2's acknowledgement and would make a hint
     * for n2: with hints_max_count 0 every one is dropped, none is held. */
    double dropped = wait_metric(0, "kv_hints_dropped_total", dropped0 + NKEYS + 1, false, 10000);
    TH_CLUSTER_CHECK(&g_c, dropped - dropped0 >= NKEYS + 1,
                     "n0 dropped %g hints for n2 (kv_hints_dropped_total %g -> %g), want %d: "
                     "hints were kept although replication.hints_max_count is 0",
                     dropped - dropped0, dropped0, dropped, NKEYS + 1);
    for (int i = 0; i < 2; i++)
        TH_CLUSTER_CHECK(&g_c, metric_of(i, "kv_hints") == 0,
                         "n%d holds %g hints with replication.hints_max_count 0", i,
                         metric_of(i, "kv_hints"));

    cr_assert_eq(th_cluster_start_node(&g_c, victim), 0, "n2 did not restart");
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0, "n2 not seen alive again");

    /* n2 has not caught up. Not asked through GET: any GET, even r=1 sent to n2, is
     * coordinated and may be answered by another replica. kv_store_keys is the number of
     * live keys in n2's own storage engine (read from n2's /metrics, no replica asked):
     * still the NOLD keys and the not-yet-deleted one, not the NKEYS - NOLD new ones. */
    double keys2 = metric_of(victim, "kv_store_keys");
    TH_CLUSTER_CHECK(&g_c, keys2 == NOLD + 1,
                     "restarted n2 holds %g live keys before any read, want %d (what it had "
                     "before the crash: no hints, no reads yet)",
                     keys2, NOLD + 1);

    /* Quorum reads through n0 and n1, a pass at a time (each pass through the other node):
     * each read goes to all three replicas, answers with the newest of the first two, and
     * when n2's answer (older, or nothing) arrives, writes the newest record to it. Every
     * answer is the latest. Repairs are sent after the answer, and a read whose message to
     * n2 waits for the sender to reconnect to the restarted node (backoff up to 2 s) may
     * close without n2's answer: so passes go on, until n2's own store holds every key or
     * a deadline. NOLD + 1 -> NKEYS: the new keys arrived and the deleted one became a
     * tombstone (not a live key). */
    double repairs0 = th_cluster_metric_sum(&g_c, victim, "kv_repl_read_repairs_total", NULL);
    int64_t deadline = th_now_ms() + 20000;
    int passes = 0;
    /* NKEYS live keys alone could also be rr-gone still live and one new key missing:
     * the tombstone must have arrived too. */
    double tombs2 = 0;
    for (; passes < 10 && th_now_ms() < deadline && (keys2 != NKEYS || tombs2 != 1); passes++) {
        for (int i = 0; i < NKEYS; i++)
            read_is((i + passes) % 2, &k[i], NULL);
        read_is(passes % 2, &gone, NULL);
        keys2 = wait_metric(victim, "kv_store_keys", NKEYS, true, 1500);
        tombs2 = wait_metric(victim, "kv_store_tombstones", 1, true, 1500);
    }
    cr_log_info("n2 repaired after %d passes of quorum reads", passes);
    TH_CLUSTER_CHECK(&g_c, keys2 == NKEYS && tombs2 == 1,
                     "after %d passes of quorum reads of every key n2 holds %g live keys and %g "
                     "tombstones, want %d and 1 (read repair did not bring it up to date)",
                     passes, keys2, tombs2, NKEYS);
    double repairs = th_cluster_metric_sum(&g_c, victim, "kv_repl_read_repairs_total", NULL);
    cr_log_info("read repairs sent by n0 and n1: %g", repairs - repairs0);
    TH_CLUSTER_CHECK(&g_c, repairs - repairs0 >= NKEYS + 1,
                     "kv_repl_read_repairs_total on n0 and n1 grew by %g, want at least %d (one "
                     "per key n2 held stale or not at all)",
                     repairs - repairs0, NKEYS + 1);
    double delivered = th_cluster_metric_sum(&g_c, -1, "kv_hints_delivered_total", NULL);
    TH_CLUSTER_CHECK(&g_c, delivered == 0,
                     "%g hints were delivered, want 0: the repair must have come from reads",
                     delivered);

    /* Without n0: reads at r=2 are answered by n1 and n2 together. */
    th_cluster_kill9(&g_c, 0);
    for (int i = 0; i < NKEYS; i++)
        read_is(1 + i % 2, &k[i], "r=2");
    read_is(1, &gone, "r=2");
    read_is(2, &gone, "r=2");

    /* Without n1 too: n2 alone answers r=1 from its own store (the only live replica), so
     * this shows what n2 itself holds: every latest value, and the tombstone. */
    th_cluster_kill9(&g_c, 1);
    for (int i = 0; i < NKEYS; i++)
        read_is(victim, &k[i], "r=1");
    read_is(victim, &gone, "r=1");
    for (int i = 0; i < 2; i++)
        cr_expect(th_log_sanitizer_clean(&g_c.node[i]), "n%d's log has a sanitizer report", i);
    cr_expect(th_node_stop_clean(&g_c.node[victim], 10000), "n2 did not stop cleanly");
}

#define NSQ 40

/* Sum of a metric over the running nodes, checked to have been readable. */
static double sum_of(const char *name)
{
    double v = th_cluster_metric_sum(&g_c, -1, name, NULL);
    TH_CLUSTER_CHECK(&g_c, v >= 0, "a node's /metrics did not answer (reading %s)", name);
    return v;
}

Test(replication_repair, sloppy_quorum_writes_succeed_with_two_of_four_down_and_hints_arrive)
{
    start_cluster(4, g_strict_args);
    static kstate k[NSQ];
    bool failed_strict[NSQ] = {false};
    int failed = 0;
    char val[48];

    /* Strict quorum, n2 and n3 killed and known dead: a key whose three replicas include
     * both has one live replica and cannot reach W=2; a key with one of them can. */
    th_cluster_kill9(&g_c, 2);
    th_cluster_kill9(&g_c, 3);
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0,
                     "n0 and n1 did not see n2 and n3 dead");
    for (int i = 0; i < NSQ; i++) {
        snprintf(k[i].key, sizeof k[i].key, "sq-%02d", i);
        snprintf(val, sizeof val, "strict %d", i);
        th_kv_resp r;
        th_kv_put(&g_c.node[i % 2], k[i].key, val, NULL, &r);
        if (r.status == 204 && r.has_version) {
            record_ack(&k[i], &r, val);
        } else {
            TH_CLUSTER_CHECK(&g_c,
                             r.status == 503 && strstr(r.body, "\"code\":\"unavailable\"") != NULL,
                             "strict PUT %s through n%d: status %d, body %s (want 204, or 503 "
                             "unavailable)",
                             k[i].key, i % 2, r.status, r.body);
            failed_strict[i] = true;
            failed++;
        }
        th_kv_resp_free(&r);
    }
    cr_log_info("strict quorum, two of four down: %d of %d writes failed with 503", failed, NSQ);
    TH_CLUSTER_CHECK(&g_c, failed >= 1,
                     "every one of %d strict-quorum writes succeeded with two of four nodes "
                     "down; some keys' replicas must include both",
                     NSQ);

    /* The same nodes (same data dirs, so the same ids and the same ring) with
     * sloppy_quorum on. The hints of the strict writes that succeeded are delivered
     * first, so that every hint counted below comes from the sloppy writes. */
    th_cluster_kill9(&g_c, 0);
    th_cluster_kill9(&g_c, 1);
    g_c.args = g_sloppy_args;
    cr_assert_eq(th_cluster_start(&g_c, 20000), 0, "the cluster did not restart with sloppy");
    double left = wait_sum("kv_hints", 0, true, 20000);
    TH_CLUSTER_CHECK(&g_c, left == 0, "the strict writes' hints did not drain (still %g)", left);
    double delivered0 = sum_of("kv_hints_delivered_total");

    th_cluster_kill9(&g_c, 2);
    th_cluster_kill9(&g_c, 3);
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0,
                     "n0 and n1 did not see n2 and n3 dead (second time)");
    for (int i = 0; i < NSQ; i++) {
        snprintf(val, sizeof val, "sloppy %d", i);
        th_kv_resp r;
        th_kv_put(&g_c.node[i % 2], k[i].key, val, NULL, &r);
        TH_CLUSTER_CHECK(&g_c, r.status == 204 && r.has_version,
                         "sloppy PUT %s through n%d with n2 and n3 down: status %d (%lld ms), "
                         "body %s (it %s under strict quorum)",
                         k[i].key, i % 2, r.status, (long long)r.ms, r.body,
                         failed_strict[i] ? "failed" : "succeeded");
        record_ack(&k[i], &r, val);
        th_kv_resp_free(&r);
    }
    /* Hints held for n2 and n3: one per dead replica of each key. A key with one dead
     * replica: the coordinator's. A key with both (those that failed above): the stand-in's
     * for one, the coordinator's for the other. */
    double held = wait_sum("kv_hints", NSQ + failed, true, 10000);
    cr_log_info("hints held on n0 and n1 after the sloppy writes: %g", held);
    TH_CLUSTER_CHECK(&g_c, held == NSQ + failed,
                     "n0 and n1 hold %g hints, want %d (one per key and dead replica)", held,
                     NSQ + failed);
    /* Reads are never sloppy: a key with both replicas down has one, short of R=2. */
    for (int i = 0; i < NSQ; i++) {
        if (!failed_strict[i])
            continue;
        th_kv_resp r;
        th_kv_get(&g_c.node[0], k[i].key, NULL, &r);
        TH_CLUSTER_CHECK(&g_c, r.status == 503,
                         "quorum GET %s (two of its replicas down) through n0: status %d, body "
                         "%s; want 503",
                         k[i].key, r.status, r.body);
        th_kv_resp_free(&r);
        break;
    }

    /* The dead nodes return: every hint (the stand-ins' too) is delivered. */
    cr_assert_eq(th_cluster_start_node(&g_c, 2), 0, "n2 did not restart");
    cr_assert_eq(th_cluster_start_node(&g_c, 3), 0, "n3 did not restart");
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0,
                     "n2 and n3 not seen alive again");
    left = wait_sum("kv_hints", 0, true, 20000);
    TH_CLUSTER_CHECK(&g_c, left == 0, "hints did not drain after n2 and n3 returned (still %g)",
                     left);
    double delivered = sum_of("kv_hints_delivered_total") - delivered0;
    cr_log_info("hints delivered to n2 and n3: %g", delivered);
    TH_CLUSTER_CHECK(&g_c, delivered >= NSQ + failed,
                     "kv_hints_delivered_total grew by %g, want at least %d", delivered,
                     NSQ + failed);
    /* Before any read: each key is a live key on exactly its three replicas (a stand-in
     * keeps the write as a hint, outside its store). */
    double keys = sum_of("kv_store_keys");
    TH_CLUSTER_CHECK(&g_c, keys == 3 * NSQ,
                     "live keys summed over the four stores: %g, want %d (each key on its 3 "
                     "replicas)",
                     keys, 3 * NSQ);

    for (int via = 0; via < 4; via++)
        for (int i = 0; i < NSQ; i++)
            read_is(via, &k[i], NULL);
    for (int i = 0; i < 4; i++)
        cr_expect(th_node_stop_clean(&g_c.node[i], 10000), "n%d did not stop cleanly", i);
}
