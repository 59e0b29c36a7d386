/*
 * test_replication.c — replication seen by a client (issue 6): clusters of 3 and 5 real
 * kvstore processes on 127.0.0.1; a key written through one node reads back through every
 * other node at the default quorum (N=3, R=2, W=2); overwrites and deletes through different
 * nodes; consistency=all with every node alive; the key listing through any node.
 *
 * No read here relies on "enough time has passed": every read is a quorum read (R + W > N)
 * or follows a write acknowledged by all replicas, so each one must see the latest write
 * the moment the write was acknowledged. Faults are in test_replication_faults.c, clock
 * skew and the concurrent history check in test_replication_skew.c.
 */
#include "cluster.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

TestSuite(replication, .init = setup, .fini = teardown, .timeout = 120);

static void start_cluster(int n)
{
    th_cluster_init(&g_c, n);
    g_c.args = g_args;
    cr_assert_eq(th_cluster_start(&g_c, 20000), 0, "%d nodes did not start and converge", n);
}

/* Stop every node with SIGTERM: each must exit 0 with a log free of sanitizer reports. */
static void stop_all_clean(void)
{
    for (int i = 0; i < g_c.n; i++)
        cr_expect(th_node_stop_clean(&g_c.node[i], 10000), "n%d did not stop cleanly", i);
}

/* A successful write: 204 with a version in ETag. Returns that version through ts/node. */
static void put_ok(int via, const char *key, const char *value, const char *query, uint64_t *ts,
                   uint32_t *node)
{
    th_kv_resp r;
    th_kv_put(&g_c.node[via], key, value, query, &r);
    TH_CLUSTER_CHECK(&g_c, r.status == 204 && r.has_version,
                     "PUT %s=%s%s%s through n%d: status %d, ETag '%s', body %s", key, value,
                     query ? "?" : "", query ? query : "", via, r.status, r.etag, r.body);
    if (ts) {
        *ts = r.ts;
        *node = r.node;
    }
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

/* A read that must answer 404 key_not_found. */
static void get_404(int via, const char *key, const char *query)
{
    th_kv_resp r;
    th_kv_get(&g_c.node[via], key, query, &r);
    bool ok = r.status == 404 && strstr(r.body, "\"code\":\"key_not_found\"") != NULL &&
              strstr(r.content_type, "application/problem+json") != NULL;
    TH_CLUSTER_CHECK(&g_c, ok, "GET %s%s%s through n%d: status %d '%s' (want 404 key_not_found)",
                     key, query ? "?" : "", query ? query : "", via, r.status, r.body);
    th_kv_resp_free(&r);
}

/* GET /v1/cluster/ring through node `via`: n members whose primary shares sum to 1 and whose
 * replica shares sum to min(N, n) = 3 (every range has 3 replicas). */
static void check_ring(int via, int n)
{
    th_resp r;
    cr_assert_eq(th_http(g_c.node[via].port, "GET", "/v1/cluster/ring", NULL, 0, &r), 0);
    TH_CLUSTER_CHECK(&g_c, r.status == 200, "GET /v1/cluster/ring through n%d: %d %s", via,
                     r.status, r.body);
    int members = 0;
    double primary = 0, replica = 0;
    for (const char *p = r.body; (p = strstr(p, "\"primary_share\":")) != NULL; p++) {
        primary += strtod(p + strlen("\"primary_share\":"), NULL);
        members++;
    }
    for (const char *p = r.body; (p = strstr(p, "\"replica_share\":")) != NULL; p++)
        replica += strtod(p + strlen("\"replica_share\":"), NULL);
    double nrep = 0;
    cr_assert(th_json_num(r.body, "replicas", &nrep), "no replicas in %s", r.body);
    cr_assert(members == n && nrep == 3 && primary > 0.999 && primary < 1.001 && replica > 2.99 &&
                  replica < 3.01,
              "ring through n%d: %d members (want %d), replicas %g, primary shares sum %g, "
              "replica shares sum %g: %s",
              via, members, n, nrep, primary, replica, r.body);
    th_resp_free(&r);
}

#define NKEYS 200

Test(replication, three_nodes_keys_written_through_one_read_back_through_the_others)
{
    start_cluster(3);
    static uint64_t ts[NKEYS];
    static uint32_t nd[NKEYS];
    char key[32], val[64];
    for (int i = 0; i < NKEYS; i++) {
        snprintf(key, sizeof key, "k3-%03d", i);
        snprintf(val, sizeof val, "value %d written through n0", i);
        put_ok(0, key, val, NULL, &ts[i], &nd[i]);
    }
    /* Default quorum and an explicit r=2, through each other node. */
    for (int via = 1; via < 3; via++) {
        for (int i = 0; i < NKEYS; i++) {
            snprintf(key, sizeof key, "k3-%03d", i);
            snprintf(val, sizeof val, "value %d written through n0", i);
            get_is(via, key, i % 2 ? "r=2" : NULL, val, ts[i], nd[i]);
        }
    }
    /* Three coordinators gave versions: all from n0's clock (one writer node id). */
    for (int i = 1; i < NKEYS; i++)
        cr_assert_eq(nd[i], nd[0], "write %d through n0 has writer id %u, the first had %u", i,
                     nd[i], nd[0]);
    stop_all_clean();
}

Test(replication, five_nodes_writes_spread_over_all_nodes_read_back_through_every_other)
{
    start_cluster(5);
    for (int i = 0; i < 5; i++)
        check_ring(i, 5);
    static uint64_t ts[NKEYS];
    static uint32_t nd[NKEYS];
    char key[32], val[64];
    for (int i = 0; i < NKEYS; i++) {
        snprintf(key, sizeof key, "k5-%03d", i);
        snprintf(val, sizeof val, "v%d via n%d", i, i % 5);
        put_ok(i % 5, key, val, NULL, &ts[i], &nd[i]);
    }
    for (int i = 0; i < NKEYS; i++) {
        snprintf(key, sizeof key, "k5-%03d", i);
        snprintf(val, sizeof val, "v%d via n%d", i, i % 5);
        for (int via = 0; via < 5; via++)
            if (via != i % 5)
                get_is(via, key, NULL, val, ts[i], nd[i]);
    }
    /* Writes through different coordinators carry different writer ids. */
    int distinct = 0;
    for (int i = 0; i < 5; i++) {
        bool seen = false;
        for (int j = 0; j < i; j++)
            seen = seen || nd[j] == nd[i];
        distinct += !seen;
    }
    cr_assert_eq(distinct, 5, "5 coordinators gave %d distinct writer ids in ETags", distinct);
    stop_all_clean();
}

Test(replication, overwrite_and_delete_through_different_nodes)
{
    start_cluster(3);
    char key[32], v1[32], v2[32], v3[32];
    for (int i = 0; i < 20; i++) {
        int a = i % 3, b = (i + 1) % 3, c = (i + 2) % 3;
        snprintf(key, sizeof key, "od-%02d", i);
        snprintf(v1, sizeof v1, "first-%d", i);
        snprintf(v2, sizeof v2, "second-%d", i);
        snprintf(v3, sizeof v3, "third-%d", i);
        uint64_t t1, t2, t3;
        uint32_t n1, n2, n3;
        put_ok(a, key, v1, NULL, &t1, &n1);
        put_ok(b, key, v2, NULL, &t2, &n2);
        TH_CLUSTER_CHECK(&g_c, th_kv_version_cmp(t2, n2, t1, n1) > 0,
                         "%s: the overwrite through n%d got version %llu.%u, not newer than "
                         "%llu.%u",
                         key, b, (unsigned long long)t2, n2, (unsigned long long)t1, n1);
        for (int via = 0; via < 3; via++)
            get_is(via, key, NULL, v2, t2, n2);

        th_kv_resp r;
        th_kv_delete(&g_c.node[c], key, NULL, &r);
        TH_CLUSTER_CHECK(&g_c, r.status == 204 && r.has_version,
                         "DELETE %s through n%d: status %d, ETag '%s' %s", key, c, r.status, r.etag,
                         r.body);
        TH_CLUSTER_CHECK(&g_c, th_kv_version_cmp(r.ts, r.node, t2, n2) > 0,
                         "%s: the delete's version %s is not newer than the value's", key, r.etag);
        th_kv_resp_free(&r);
        for (int via = 0; via < 3; via++)
            get_404(via, key, NULL);

        /* Written again after the delete: visible again everywhere. */
        put_ok(a, key, v3, NULL, &t3, &n3);
        for (int via = 0; via < 3; via++)
            get_is(via, key, NULL, v3, t3, n3);
    }
    /* Deleting a key that never existed is not an error, and it stays absent. */
    th_kv_resp r;
    th_kv_delete(&g_c.node[1], "never-written", NULL, &r);
    cr_assert_eq(r.status, 204, "DELETE of a missing key: %d %s", r.status, r.body);
    th_kv_resp_free(&r);
    for (int via = 0; via < 3; via++)
        get_404(via, "never-written", NULL);
    stop_all_clean();
}

Test(replication, consistency_all_with_every_node_alive_succeeds)
{
    start_cluster(3);
    char key[32], val[32];
    static const char *const wq[] = {"consistency=all", "w=3"};
    static const char *const rq[] = {"consistency=all", "r=3", "consistency=quorum"};
    for (int i = 0; i < 30; i++) {
        int via = i % 3;
        snprintf(key, sizeof key, "all-%02d", i);
        snprintf(val, sizeof val, "all-value-%d", i);
        uint64_t ts;
        uint32_t nd;
        put_ok(via, key, val, wq[i % 2], &ts, &nd);
        /* Acknowledged by all three replicas: even r=1 through any node must see it. */
        for (int j = 0; j < 3; j++) {
            get_is(j, key, "r=1", val, ts, nd);
            get_is(j, key, "consistency=one", val, ts, nd);
            get_is(j, key, rq[(i + j) % 3], val, ts, nd);
        }
    }
    /* A delete at consistency=all: gone at r=1 everywhere. */
    th_kv_resp r;
    th_kv_delete(&g_c.node[2], "all-00", "consistency=all", &r);
    cr_assert_eq(r.status, 204, "DELETE ?consistency=all: %d %s", r.status, r.body);
    th_kv_resp_free(&r);
    for (int j = 0; j < 3; j++)
        get_404(j, "all-00", "r=1");
    stop_all_clean();
}

/* The listing of prefix through node `via`, page size `limit`, must be exactly the keys in
 * want[0..nwant) (each once) with the versions in wver. */
static void check_listing(int via, const char *prefix, int limit, char want[][32],
                          const char (*wver)[48], int nwant)
{
    th_kv_list l;
    char why[512];
    int rc = th_kv_list_all(g_c.node[via].port, prefix, limit, 200, &l, why, sizeof why);
    TH_CLUSTER_CHECK(&g_c, rc == 0, "listing prefix=%s limit=%d through n%d: %s", prefix, limit,
                     via, why);
    cr_log_info("listing %s through n%d: %zu keys in %d pages of at most %d", prefix, via, l.n,
                l.pages, limit);
    for (size_t i = 0; i < l.n; i++) {
        for (size_t j = 0; j < i; j++)
            TH_CLUSTER_CHECK(&g_c, strcmp(l.keys[i], l.keys[j]) != 0,
                             "listing through n%d returned %s twice", via, l.keys[i]);
        int found = -1;
        for (int k = 0; k < nwant && found < 0; k++)
            if (strcmp(want[k], l.keys[i]) == 0)
                found = k;
        TH_CLUSTER_CHECK(&g_c, found >= 0,
                         "listing through n%d returned %s, which is deleted or was never written",
                         via, l.keys[i]);
        TH_CLUSTER_CHECK(&g_c, strcmp(l.versions[i], wver[found]) == 0,
                         "listing through n%d: %s has version %s, the last write was %s", via,
                         l.keys[i], l.versions[i], wver[found]);
    }
    TH_CLUSTER_CHECK(&g_c, l.n == (size_t)nwant, "listing through n%d returned %zu keys, want %d",
                     via, l.n, nwant);
    TH_CLUSTER_CHECK(&g_c, l.pages >= (nwant + limit - 1) / limit,
                     "%zu keys in %d pages of at most %d", l.n, l.pages, limit);
    th_kv_list_free(&l);
}

Test(replication, listing_through_any_node_has_every_key_once_and_no_deleted_key)
{
    start_cluster(3);
    enum { NL = 60, NDEL = 15, NOTHER = 10 };
    static char live[NL][32], all[NL + NOTHER][32];
    static char lver[NL][48], aver[NL + NOTHER][48];
    int nlive = 0, nall = 0;
    for (int i = 0; i < NL; i++) {
        char key[32], val[32];
        snprintf(key, sizeof key, "ls-%02d", i);
        snprintf(val, sizeof val, "list-%d", i);
        uint64_t ts;
        uint32_t nd;
        put_ok(i % 3, key, val, NULL, &ts, &nd);
        if (i % 4 == 1 && i / 4 < NDEL) { /* deleted through another node */
            th_kv_resp r;
            th_kv_delete(&g_c.node[(i + 1) % 3], key, NULL, &r);
            TH_CLUSTER_CHECK(&g_c, r.status == 204, "DELETE %s: %d %s", key, r.status, r.body);
            th_kv_resp_free(&r);
            continue;
        }
        if (i % 5 == 0) /* overwritten: the listing shows the newer version */
            put_ok((i + 2) % 3, key, "overwritten", NULL, &ts, &nd);
        snprintf(live[nlive], sizeof live[nlive], "%s", key);
        snprintf(lver[nlive], sizeof lver[nlive], "%llu.%u", (unsigned long long)ts, nd);
        nlive++;
    }
    cr_assert_eq(nlive, NL - NDEL);
    memcpy(all, live, sizeof live);
    memcpy(aver, lver, sizeof lver);
    nall = nlive;
    for (int i = 0; i < NOTHER; i++) {
        uint64_t ts;
        uint32_t nd;
        snprintf(all[nall], sizeof all[nall], "other-%d", i);
        put_ok(i % 3, all[nall], "x", NULL, &ts, &nd);
        snprintf(aver[nall], sizeof aver[nall], "%llu.%u", (unsigned long long)ts, nd);
        nall++;
    }
    for (int via = 0; via < 3; via++) {
        check_listing(via, "ls-", 7, live, (const char(*)[48])lver, nlive);
        check_listing(via, "", 7 + via, all, (const char(*)[48])aver, nall);
    }
    check_listing(1, "ls-", 1000, live, (const char(*)[48])lver, nlive);
    check_listing(2, "nothing-has-this-prefix", 5, all, (const char(*)[48])aver, 0);
    stop_all_clean();
}
