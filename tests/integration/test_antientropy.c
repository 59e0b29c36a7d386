/*
 * test_antientropy.c — replicas compare their anti-entropy trees and pull only what they
 * lack (src/node/sync.c), with real kvstore processes on 127.0.0.1. Hints and read repair
 * are off here, so nothing but anti-entropy can bring a replica up to date:
 *   - a node kept down while the others take writes, overwrites and deletes comes back
 *     with its old content; with anti-entropy off on it, it stays behind, and the others'
 *     rounds against it (which pull its older versions) change nothing on them — an old
 *     value never wins over a newer one or over a tombstone;
 *   - restarted with anti-entropy on, it reaches the others' root (same keys, same
 *     tombstones) by pulling exactly the records that changed, and every key deleted
 *     while it was down reads as deleted through every node;
 *   - with a short gc_grace, tombstones are never purged while a replica that has not
 *     seen them is down (however many purge walks run), and are purged on every node
 *     once it is back and holds them — the deleted keys stay deleted.
 */
#include "cluster.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static th_cluster g_c;

#define BASE    300 /* keys written while all three are up */
#define CHANGED 100 /* of those, overwritten while n2 is down */
#define NEWKEYS 80  /* written while n2 is down */
#define DELETED 40  /* of the base keys, deleted while n2 is down */

static const char *const g_args[] = {"--replication.timeout",
                                     "1s",
                                     "--replication.hints_max_count",
                                     "0",
                                     "--replication.read_repair",
                                     "false",
                                     "--antientropy.interval",
                                     "200ms",
                                     NULL};
static const char *const g_ae_off[] = {"--antientropy.interval", "0", NULL};

static void setup(void)
{
    memset(&g_c, 0, sizeof g_c);
}

static void teardown(void)
{
    th_cluster_fini(&g_c);
}

TestSuite(antientropy, .init = setup, .fini = teardown, .timeout = 180);

static void put(int via, const char *key, const char *val)
{
    th_kv_resp r;
    int rc = th_kv_put(&g_c.node[via], key, val, NULL, &r);
    TH_CLUSTER_CHECK(&g_c, rc == 0 && (r.status == 200 || r.status == 201 || r.status == 204),
                     "PUT %s via n%d: status %d %s", key, via, r.status, r.body);
    th_kv_resp_free(&r);
}

static void del(int via, const char *key)
{
    th_kv_resp r;
    int rc = th_kv_delete(&g_c.node[via], key, NULL, &r);
    TH_CLUSTER_CHECK(&g_c, rc == 0 && (r.status == 200 || r.status == 204),
                     "DELETE %s via n%d: status %d %s", key, via, r.status, r.body);
    th_kv_resp_free(&r);
}

static double metric(int i, const char *name, const char *labels)
{
    return th_metric(g_c.node[i].port, name, labels);
}

Test(antientropy, a_node_kept_down_catches_up_and_deleted_keys_stay_deleted)
{
    th_cluster_init(&g_c, 3);
    g_c.args = g_args;
    cr_assert_eq(th_cluster_start(&g_c, 20000), 0, "3 nodes did not start and converge");
    char key[32], val[32], why[400] = "";
    for (int i = 0; i < BASE; i++) {
        snprintf(key, sizeof key, "ae/%03d", i);
        snprintf(val, sizeof val, "v1-%d", i);
        put(i % 3, key, val);
    }
    th_digest base;
    TH_CLUSTER_CHECK(&g_c, th_cluster_roots_agree(&g_c, 20000, &base, why, sizeof why),
                     "roots differ after the base writes: %s", why);
    cr_assert_eq(base.keys, BASE);

    /* n2 goes down; the others take overwrites, new keys and deletes (W = 2 of 2 up). */
    th_cluster_kill9(&g_c, 2);
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0, "n2 not seen dead");
    for (int i = 0; i < CHANGED; i++) {
        snprintf(key, sizeof key, "ae/%03d", i * 3);
        snprintf(val, sizeof val, "v2-%d", i * 3);
        put(i % 2, key, val);
    }
    for (int i = 0; i < NEWKEYS; i++) {
        snprintf(key, sizeof key, "ae/new/%02d", i);
        put(i % 2, key, "fresh");
    }
    for (int i = 0; i < DELETED; i++) {
        snprintf(key, sizeof key, "ae/%03d", i * 7 + 1);
        del(i % 2, key);
    }
    th_digest live;
    TH_CLUSTER_CHECK(&g_c, th_cluster_roots_agree(&g_c, 15000, &live, why, sizeof why),
                     "n0/n1 differ: %s", why);
    cr_assert_eq(live.keys, BASE + NEWKEYS - DELETED, "live keys %g", live.keys);
    cr_assert_eq(live.tombstones, DELETED);

    /* Back without anti-entropy of its own: it keeps its old content, and the others'
     * rounds against it (they pull its older versions) change nothing on them. */
    g_c.node_args[2] = g_ae_off;
    cr_assert_eq(th_cluster_start_node(&g_c, 2), 0, "n2 did not restart");
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0, "n2 not back");
    double rounds0 = metric(0, "kv_ae_rounds_total", "result=\"differed\"") +
                     metric(1, "kv_ae_rounds_total", "result=\"differed\"");
    int64_t deadline = th_now_ms() + 15000;
    while (th_now_ms() < deadline &&
           metric(0, "kv_ae_rounds_total", "result=\"differed\"") +
                   metric(1, "kv_ae_rounds_total", "result=\"differed\"") <
               rounds0 + 4)
        usleep(20000);
    TH_CLUSTER_CHECK(&g_c,
                     metric(0, "kv_ae_rounds_total", "result=\"differed\"") +
                             metric(1, "kv_ae_rounds_total", "result=\"differed\"") >=
                         rounds0 + 4,
                     "n0/n1 ran no rounds that found n2 different (in sync %g, failed %g)",
                     metric(0, "kv_ae_rounds_total", "result=\"in_sync\"") +
                         metric(1, "kv_ae_rounds_total", "result=\"in_sync\""),
                     metric(0, "kv_ae_rounds_total", "result=\"failed\"") +
                         metric(1, "kv_ae_rounds_total", "result=\"failed\""));
    th_digest d0, d1, d2;
    cr_assert(th_cluster_digest(&g_c, 0, &d0) && th_cluster_digest(&g_c, 1, &d1) &&
              th_cluster_digest(&g_c, 2, &d2));
    cr_assert_str_eq(d0.root, live.root, "n0 changed by pulling n2's older versions");
    cr_assert_str_eq(d1.root, live.root, "n1 changed by pulling n2's older versions");
    cr_assert_str_eq(d2.root, base.root, "n2 changed without anti-entropy or hints");
    cr_assert_eq(metric(0, "kv_sync_records_applied_total", NULL) +
                     metric(1, "kv_sync_records_applied_total", NULL),
                 0, "n0/n1 applied records pulled from the stale n2");
    cr_assert_gt(metric(0, "kv_sync_records_stale_total", NULL) +
                     metric(1, "kv_sync_records_stale_total", NULL),
                 0, "n0/n1 received none of n2's older versions");

    /* Restarted with anti-entropy: it converges by pulling exactly what changed. */
    g_c.node_args[2] = NULL;
    th_cluster_kill9(&g_c, 2);
    cr_assert_eq(th_cluster_start_node(&g_c, 2), 0, "n2 did not restart");
    th_digest all;
    TH_CLUSTER_CHECK(&g_c, th_cluster_roots_agree(&g_c, 30000, &all, why, sizeof why),
                     "n2 did not converge by anti-entropy: %s", why);
    cr_assert_str_eq(all.root, live.root);
    cr_assert_eq(all.tombstones, DELETED);
    double applied = metric(2, "kv_sync_records_applied_total", NULL);
    double stale = metric(2, "kv_sync_records_stale_total", NULL);
    int changed = CHANGED + NEWKEYS + DELETED; /* distinct keys: some were overwritten, */
    for (int i = 0; i < DELETED; i++)          /* then deleted */
        changed -= (i * 7 + 1) % 3 == 0 && (i * 7 + 1) / 3 < CHANGED;
    cr_assert_eq(applied, changed, "n2 applied %g records, want exactly the %d that changed",
                 applied, changed);
    cr_assert_leq(stale, 10, "n2 was sent %g records it already had", stale);
    cr_assert_geq(metric(2, "kv_ae_rounds_total", "result=\"differed\""), 1);
    cr_assert_gt(metric(2, "kv_sync_bytes_received_total", NULL), 0);

    /* Every key deleted while n2 was down reads as deleted through every node, at R = 1
     * too, and an overwritten key reads its new value. */
    for (int via = 0; via < 3; via++) {
        for (int i = 0; i < DELETED; i++) {
            snprintf(key, sizeof key, "ae/%03d", i * 7 + 1);
            th_kv_resp r;
            th_kv_get(&g_c.node[via], key, "r=1", &r);
            TH_CLUSTER_CHECK(&g_c, r.status == 404, "deleted %s via n%d: %d %s", key, via, r.status,
                             r.body);
            th_kv_resp_free(&r);
        }
        th_kv_resp r;
        th_kv_get(&g_c.node[via], "ae/003", "r=1", &r);
        TH_CLUSTER_CHECK(&g_c, r.status == 200 && strcmp(r.body, "v2-3") == 0,
                         "ae/003 via n%d: %d %s", via, r.status, r.body);
        th_kv_resp_free(&r);
    }
}

static const char *const g_gc_grace[] = {"--antientropy.gc_grace", "1s", NULL};

static double sum_metric(const char *name)
{
    double s = 0;
    for (int i = 0; i < g_c.n; i++)
        if (th_cluster_running(&g_c, i))
            s += metric(i, name, NULL);
    return s;
}

Test(antientropy, tombstones_are_purged_only_once_every_replica_holds_them)
{
    th_cluster_init(&g_c, 3);
    g_c.args = g_args;
    for (int i = 0; i < 3; i++)
        g_c.node_args[i] = g_gc_grace;
    cr_assert_eq(th_cluster_start(&g_c, 20000), 0, "3 nodes did not start and converge");
    char key[32], why[400] = "";
    for (int i = 0; i < 40; i++) {
        snprintf(key, sizeof key, "gc/%02d", i);
        put(i % 3, key, "v");
    }
    th_digest d;
    TH_CLUSTER_CHECK(&g_c, th_cluster_roots_agree(&g_c, 15000, &d, why, sizeof why),
                     "roots differ after the writes: %s", why);

    /* n2 down; 20 keys deleted on n0 and n1 only. */
    th_cluster_kill9(&g_c, 2);
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0, "n2 not seen dead");
    for (int i = 0; i < 40; i += 2) {
        snprintf(key, sizeof key, "gc/%02d", i);
        del(i % 4 == 0 ? 0 : 1, key);
    }
    /* Well past gc_grace, with purge walks running on both: nothing may be purged, since
     * n2 has not seen the deletes. */
    double walks0 = metric(0, "kv_sync_purge_walks_total", NULL);
    int64_t deadline = th_now_ms() + 20000, until = th_now_ms() + 3000;
    while (th_now_ms() < deadline &&
           (th_now_ms() < until || metric(0, "kv_sync_purge_walks_total", NULL) < walks0 + 3)) {
        for (int i = 0; i < 2; i++) {
            th_digest di;
            cr_assert(th_cluster_digest(&g_c, i, &di));
            TH_CLUSTER_CHECK(&g_c, di.tombstones == 20,
                             "n%d holds %g tombstones while n2 is down, want 20", i, di.tombstones);
        }
        usleep(50000);
    }
    cr_assert_geq(metric(0, "kv_sync_purge_walks_total", NULL), walks0 + 3,
                  "n0 ran no purge walks");
    cr_assert_eq(sum_metric("kv_sync_tombstones_purged_total"), 0);

    /* n2 back: it pulls the tombstones, then every node purges them. */
    cr_assert_eq(th_cluster_start_node(&g_c, 2), 0, "n2 did not restart");
    deadline = th_now_ms() + 30000;
    bool purged = false;
    while (!purged && th_now_ms() < deadline) {
        purged = true;
        for (int i = 0; i < 3 && purged; i++) {
            th_digest di;
            purged = th_cluster_digest(&g_c, i, &di) && di.tombstones == 0 && di.keys == 20;
        }
        if (!purged)
            usleep(50000);
    }
    TH_CLUSTER_CHECK(&g_c, purged, "tombstones not purged everywhere within 30 s");
    TH_CLUSTER_CHECK(&g_c, th_cluster_roots_agree(&g_c, 15000, &d, why, sizeof why),
                     "roots differ after the purge: %s", why);
    cr_assert_gt(sum_metric("kv_sync_tombstones_purged_total"), 0);
    /* n2 held old values of the deleted keys: none came back, through any node. */
    for (int via = 0; via < 3; via++)
        for (int i = 0; i < 40; i++) {
            snprintf(key, sizeof key, "gc/%02d", i);
            th_kv_resp r;
            th_kv_get(&g_c.node[via], key, "r=3", &r);
            TH_CLUSTER_CHECK(&g_c, r.status == (i % 2 ? 200 : 404), "%s via n%d: %d %s", key, via,
                             r.status, r.body);
            th_kv_resp_free(&r);
        }
}
