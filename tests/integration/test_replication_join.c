/*
 * test_replication_join.c — a node started with seeds does not coordinate key requests
 * until it has met another member: until then its ring holds only itself, and a write
 * would be placed (and acknowledged) on it alone, where the cluster would not look for it
 * later. Real processes on 127.0.0.1.
 */
#include "cluster.h"
#include "harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

static char g_dir[256];
static th_node g_a, g_b;

static void setup(void)
{
    th_tmpdir(g_dir, sizeof(g_dir));
}

static void teardown(void)
{
    th_kill_all();
    th_tmpdir_remove(g_dir);
}

TestSuite(replication_join, .init = setup, .fini = teardown, .timeout = 120);

/* Start a node with fast SWIM timing; seed NULL for none, cport 0 for a free port. */
static void start(th_node *n, const char *name, const char *seed, int cport)
{
    char dir[320], cp[16];
    snprintf(dir, sizeof(dir), "%s/%s", g_dir, name);
    snprintf(cp, sizeof(cp), "%d", cport ? cport : th_free_port());
    const char *args[] = {"--name",
                          name,
                          "--cluster.port",
                          cp,
                          "--cluster.probe_interval",
                          "200ms",
                          "--cluster.probe_timeout",
                          "100ms",
                          "--cluster.seeds",
                          seed ? seed : "",
                          NULL};
    cr_assert_eq(th_node_start(n, dir, 0, args, NULL, 15000), 0, "node %s did not start", name);
}

static int readyz(const th_node *n)
{
    th_resp r;
    if (th_http(n->port, "GET", "/readyz", NULL, 0, &r) != 0)
        return 0;
    int st = r.status;
    th_resp_free(&r);
    return st;
}

Test(replication_join, no_writes_until_a_seed_answers_then_they_reach_the_cluster)
{
    /* B's seed is a port where nothing listens yet; A will start there. */
    int a_cport = th_free_port();
    char seed[64];
    snprintf(seed, sizeof(seed), "127.0.0.1:%d", a_cport);
    start(&g_b, "b", seed, 0);

    th_kv_resp r;
    th_kv_put(&g_b, "early", "v1", NULL, &r);
    cr_assert_eq(r.status, 503, "a write before any seed answered: got %d %s", r.status, r.body);
    cr_assert(strstr(r.body, "\"code\":\"not_ready\"") != NULL, "body: %s", r.body);
    th_kv_resp_free(&r);
    cr_assert_eq(readyz(&g_b), 503, "/readyz while joining");

    start(&g_a, "a", NULL, a_cport);
    /* B joins through A within a few probe periods; its first accepted write must then be
     * on both (N = 3 capped at 2 members, W = 2). */
    int64_t deadline = th_now_ms() + 8000; /* well before B's 10 s serve-alone fallback */
    int status = 0;
    while (th_now_ms() < deadline) {
        th_kv_put(&g_b, "early", "v2", NULL, &r);
        status = r.status;
        th_kv_resp_free(&r);
        if (status == 204)
            break;
        cr_assert_eq(status, 503, "while joining only 503 not_ready is expected, got %d", status);
        th_kv_get(&g_a, "nothing", "consistency=one", &r); /* pace the loop on a round trip */
        th_kv_resp_free(&r);
    }
    cr_assert_eq(status, 204, "B never accepted the write after A came up");
    cr_assert_eq(readyz(&g_b), 200);
    /* A stored it too: the write went to a two-member ring. */
    cr_assert_eq(th_metric(g_a.port, "kv_store_keys", NULL), 1, "A holds the key");
    cr_assert_eq(th_metric(g_b.port, "kv_store_keys", NULL), 1, "B holds the key");
    cr_assert(th_node_stop_clean(&g_b, 10000));
    cr_assert(th_node_stop_clean(&g_a, 10000));
}

Test(replication_join, a_node_whose_seeds_never_answer_serves_alone_after_the_wait)
{
    char seed[64];
    snprintf(seed, sizeof(seed), "127.0.0.1:%d", th_free_port());
    start(&g_b, "b", seed, 0);
    th_kv_resp r;
    int64_t t0 = th_now_ms(), deadline = t0 + 20000;
    int status = 0;
    while (th_now_ms() < deadline) {
        th_kv_put(&g_b, "k", "v", NULL, &r);
        status = r.status;
        th_kv_resp_free(&r);
        if (status == 204)
            break;
        cr_assert_eq(status, 503);
        th_log_wait(&g_b, "no seed answered", 200); /* paces the loop */
    }
    cr_assert_eq(status, 204, "a node with dead seeds must serve on its own eventually");
    cr_assert_geq(th_now_ms() - t0, 9000, "not before the join wait (10 s) ran out");
    cr_assert(th_log_wait(&g_b, "no seed answered", 2000), "the fallback is logged");
    cr_assert(th_node_stop_clean(&g_b, 10000));
}
