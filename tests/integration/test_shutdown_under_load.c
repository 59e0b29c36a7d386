/*
 * test_shutdown_under_load.c — a clean stop after peers died under replicated traffic
 * (issue 6): nodes that kept sending replica batches and SWIM messages to a peer killed -9
 * in the middle of it (again and again), and that are then sent SIGTERM while clients are
 * still writing and reading through them, exit 0 with a clean sanitizer log — nothing in
 * flight is leaked, no callback runs after close.
 *
 * Three real nodes (N=3, R=2, W=2, storage.sync always, replication.timeout 1 s). Client
 * threads put and get a small key set through every node with short timeouts (any answer
 * is fine: a node may be down). n2 is killed -9 and restarted several times mid-load; then
 * n0 gets SIGTERM mid-load, then n1 and n2 are stopped. This is the situation in which CI
 * once saw a node exit 1 after a clean shutdown (LeakSanitizer: a message nng before 1.6.0
 * had accepted and lost when the connection to a killed peer broke). That race is rare
 * here (it did not show in a few runs of this test before the fix); tests/unit/
 * test_net_peer_loss.c reproduces it every time. This test guards the whole stop path.
 */
#include "cluster.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NCLIENTS 4
#define NKEYS    64
#define KILLS    6
#define LOAD_MS  300 /* traffic before each kill -9 and before the SIGTERM */

static th_cluster g_c;

static const char *const g_args[] = {"--replication.timeout", "1s", "--storage.sync", "always",
                                     NULL};

static void setup(void)
{
    memset(&g_c, 0, sizeof g_c);
}

static void teardown(void)
{
    th_cluster_fini(&g_c);
}

TestSuite(shutdown_under_load, .init = setup, .fini = teardown, .timeout = 120);

typedef struct client {
    int id;
    int ports[3];
    atomic_bool *stop;
    long ops, answered;
} client;

/* Put (values of a few hundred bytes, so batches are large) and get keys through every
 * node in turn until told to stop; bounded in count too. */
static void *client_main(void *arg)
{
    client *cl = arg;
    unsigned seed = (unsigned)cl->id * 7919u + 1u;
    char val[512];
    for (long i = 0; i < 200000 && !atomic_load(cl->stop); i++) {
        char key[32];
        snprintf(key, sizeof key, "sul-%u", rand_r(&seed) % NKEYS);
        int port = cl->ports[(size_t)(i + cl->id) % 3];
        th_kv_resp r;
        int rc;
        if (rand_r(&seed) % 3) {
            int n = snprintf(val, sizeof val, "v-%d-%ld-", cl->id, i);
            memset(val + n, 'x', sizeof val - (size_t)n - 1);
            val[sizeof val - 1] = '\0';
            rc = th_kv_request(port, "PUT", key, NULL, val, strlen(val), 1500, &r);
        } else {
            rc = th_kv_request(port, "GET", key, NULL, NULL, 0, 1500, &r);
        }
        cl->ops++;
        cl->answered += rc == 0;
        th_kv_resp_free(&r);
    }
    return NULL;
}

/* Let the clients run for ms: how much traffic there is, not a wait for a condition. */
static void run_load_for(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void stop_clients(atomic_bool *stop, client *cl, pthread_t *th, long *ops, long *answered)
{
    atomic_store(stop, true);
    *ops = *answered = 0;
    for (int i = 0; i < NCLIENTS; i++) {
        pthread_join(th[i], NULL);
        *ops += cl[i].ops;
        *answered += cl[i].answered;
    }
}

Test(shutdown_under_load, peers_killed_mid_traffic_then_sigterm_mid_traffic_exits_0_and_clean)
{
    th_cluster_init(&g_c, 3);
    g_c.args = g_args;
    cr_assert_eq(th_cluster_start(&g_c, 20000), 0, "3 nodes did not start and converge");

    atomic_bool stop;
    atomic_init(&stop, false);
    client cl[NCLIENTS];
    pthread_t th[NCLIENTS];
    for (int i = 0; i < NCLIENTS; i++) {
        cl[i] = (client){.id = i, .stop = &stop};
        for (int j = 0; j < 3; j++)
            cl[i].ports[j] = g_c.node[j].port;
        cr_assert_eq(pthread_create(&th[i], NULL, client_main, &cl[i]), 0);
    }
    for (int k = 0; k < KILLS; k++) {
        run_load_for(LOAD_MS);
        th_cluster_kill9(&g_c, 2);
        run_load_for(LOAD_MS / 3);
        if (th_cluster_start_node(&g_c, 2) != 0) {
            long ops, answered;
            stop_clients(&stop, cl, th, &ops, &answered);
            cr_assert_fail("n2 did not restart after kill %d", k + 1);
        }
    }
    run_load_for(LOAD_MS);
    int st0 = th_cluster_stop(&g_c, 0);
    bool clean0 = th_log_sanitizer_clean(&g_c.node[0]);
    long ops, answered;
    stop_clients(&stop, cl, th, &ops, &answered);
    cr_log_info("%ld requests, %ld answered, n2 killed -9 %d times", ops, answered, KILLS);
    cr_assert_gt(answered, ops / 4, "only %ld of %ld requests were answered", answered, ops);
    TH_CLUSTER_CHECK(&g_c, st0 == 0, "n0 did not exit 0 on SIGTERM mid-traffic (status %d)", st0);
    cr_assert(clean0, "n0's log has a sanitizer report");
    cr_assert(th_node_stop_clean(&g_c.node[1], 10000), "n1 did not stop cleanly");
    cr_assert(th_node_stop_clean(&g_c.node[2], 10000), "n2 did not stop cleanly");
}
