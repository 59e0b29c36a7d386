/*
 * test_digest.c — GET /v1/cluster/digest, the root of each node's anti-entropy tree (the
 * storage engine keeps it current on every change; src/ae/merkle.h), with real kvstore
 * processes on 127.0.0.1. With N = 3 on 3 nodes every node holds every key, so:
 *   - after writes, overwrites and deletes through rotating nodes, all three roots agree
 *     (polled with a deadline: the third replica of a W=2 write is asynchronous), and a
 *     different set of writes gives a different root;
 *   - a node killed with -9 comes back (recovery rebuilds the tree from disk) with the
 *     root it had;
 *   - a node that was down while the others took writes and deletes shows a different
 *     root until its hints arrive, then the same — the tree follows what the replica
 *     really holds, which is what anti-entropy will compare.
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

TestSuite(digest, .init = setup, .fini = teardown, .timeout = 120);

typedef th_digest digest;

static bool get_digest(int i, digest *d)
{
    return th_cluster_digest(&g_c, i, d);
}

/* Every running node shows the same root within 15 s; that digest in out. */
static bool roots_agree(digest *out, char *why, size_t cap)
{
    return th_cluster_roots_agree(&g_c, 15000, out, why, cap);
}

static void put(int via, const char *key, const char *val)
{
    th_kv_resp r;
    int rc = th_kv_put(&g_c.node[via], key, val, NULL, &r);
    TH_CLUSTER_CHECK(&g_c, rc == 0 && (r.status == 200 || r.status == 201 || r.status == 204),
                     "PUT %s via n%d: status %d", key, via, r.status);
    th_kv_resp_free(&r);
}

static void del(int via, const char *key)
{
    th_kv_resp r;
    int rc = th_kv_delete(&g_c.node[via], key, NULL, &r);
    TH_CLUSTER_CHECK(&g_c, rc == 0 && (r.status == 200 || r.status == 204 || r.status == 404),
                     "DELETE %s via n%d: status %d", key, via, r.status);
    th_kv_resp_free(&r);
}

Test(digest, replicas_with_the_same_data_show_the_same_root)
{
    th_cluster_init(&g_c, 3);
    g_c.args = g_args;
    cr_assert_eq(th_cluster_start(&g_c, 20000), 0, "3 nodes did not start and converge");

    digest empty;
    char why[300] = "";
    TH_CLUSTER_CHECK(&g_c, roots_agree(&empty, why, sizeof why), "empty roots differ: %s", why);
    cr_assert_str_eq(empty.root, "0000000000000000", "an empty store has root 0");
    cr_assert_eq(empty.depth, 16);

    char key[32], val[32];
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof key, "dg/%03d", i);
        snprintf(val, sizeof val, "v1-%d", i);
        put(i % 3, key, val);
    }
    for (int i = 0; i < 200; i += 4) { /* overwrite some */
        snprintf(key, sizeof key, "dg/%03d", i);
        snprintf(val, sizeof val, "v2-%d", i);
        put((i + 1) % 3, key, val);
    }
    for (int i = 1; i < 200; i += 10) { /* delete some */
        snprintf(key, sizeof key, "dg/%03d", i);
        del((i + 2) % 3, key);
    }
    digest a;
    TH_CLUSTER_CHECK(&g_c, roots_agree(&a, why, sizeof why), "roots differ after writes: %s", why);
    cr_assert_str_neq(a.root, empty.root);
    cr_assert_eq(a.keys, 180, "live keys %g, want 180", a.keys);
    cr_assert_eq(a.tombstones, 20, "tombstones %g, want 20", a.tombstones);

    /* One more write changes every root, to the same new value. */
    put(0, "dg/extra", "x");
    digest b;
    TH_CLUSTER_CHECK(&g_c, roots_agree(&b, why, sizeof why), "roots differ: %s", why);
    cr_assert_str_neq(b.root, a.root);

    /* kill -9 and restart: recovery rebuilds the same tree. */
    digest before;
    cr_assert(get_digest(2, &before));
    th_cluster_kill9(&g_c, 2);
    cr_assert_eq(th_cluster_start_node(&g_c, 2), 0, "n2 did not restart");
    digest after;
    int64_t deadline = th_now_ms() + 10000;
    while (!get_digest(2, &after) && th_now_ms() < deadline)
        usleep(20000);
    cr_assert_str_eq(after.root, before.root, "n2's root after kill -9 and restart");
    cr_assert_eq(after.keys, before.keys);
}

Test(digest, a_node_that_missed_writes_differs_until_its_hints_arrive)
{
    th_cluster_init(&g_c, 3);
    g_c.args = g_args;
    cr_assert_eq(th_cluster_start(&g_c, 20000), 0, "3 nodes did not start and converge");
    char key[32], val[32], why[300] = "";
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof key, "hm/%02d", i);
        put(i % 3, key, "base");
    }
    digest base;
    TH_CLUSTER_CHECK(&g_c, roots_agree(&base, why, sizeof why), "roots differ: %s", why);

    th_cluster_kill9(&g_c, 2);
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0, "n2 not seen dead");
    for (int i = 0; i < 50; i += 2) {
        snprintf(key, sizeof key, "hm/%02d", i);
        snprintf(val, sizeof val, "new-%d", i);
        put(i % 2, key, val);
    }
    for (int i = 1; i < 50; i += 5) {
        snprintf(key, sizeof key, "hm/%02d", i);
        del(i % 2, key);
    }
    digest live;
    TH_CLUSTER_CHECK(&g_c, roots_agree(&live, why, sizeof why), "n0/n1 roots differ: %s", why);
    cr_assert_str_neq(live.root, base.root);

    /* n2 restarts with what it had: its root is the old one until the hints arrive. */
    cr_assert_eq(th_cluster_start_node(&g_c, 2), 0, "n2 did not restart");
    digest d2;
    int64_t deadline = th_now_ms() + 10000;
    while (!get_digest(2, &d2) && th_now_ms() < deadline)
        usleep(20000);
    cr_assert(d2.root[0], "n2 gave no digest after restart");
    /* It may already have received some hints; but it cannot have the new root unless
     * every one arrived, and then it must equal the others'. */
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0, "n2 not back");
    digest all;
    TH_CLUSTER_CHECK(&g_c, roots_agree(&all, why, sizeof why),
                     "after hints, roots still differ: %s", why);
    cr_assert_str_eq(all.root, live.root);
    cr_assert_eq(all.keys, 40);
    cr_assert_eq(all.tombstones, 10);
}
