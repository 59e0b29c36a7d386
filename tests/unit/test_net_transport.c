/*
 * test_net_transport.c — the nng peer transport (src/net/transport.h) on one libuv loop:
 * messages on both lanes arrive whole and in order per lane; a probe sent after a burst of
 * large bulk messages to the same peer is not queued behind them; sends never block, and
 * a peer that is down costs a bounded queue, then counted drops; bad addresses and
 * oversized messages are refused; close releases everything (run under ASan).
 *
 * Each Test runs in its own process (criterion); everything runs on the test's thread,
 * which runs the loop until a condition holds or a deadline passes.
 */
#include "kvstore/error.h"
#include "net/transport.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SEEN 256

typedef struct sink {
    int n;
    size_t len[MAX_SEEN];
    uint8_t first[MAX_SEEN]; /* first byte of each message: our tag */
    bool bad;                /* a message's body did not match its tag */
} sink;

static void on_recv(void *arg, const uint8_t *data, size_t len)
{
    sink *s = arg;
    if (s->n >= MAX_SEEN)
        return;
    s->len[s->n] = len;
    s->first[s->n] = len ? data[0] : 0;
    for (size_t i = 1; i < len; i++)
        if (data[i] != (uint8_t)(data[0] + i))
            s->bad = true;
    s->n++;
}

static void on_wake(uv_timer_t *t)
{
    (void)t;
}

/* Run the loop until *count >= want or timeout_ms of loop time passed. */
static bool run_until(uv_loop_t *loop, const int *count, int want, uint64_t timeout_ms)
{
    uint64_t deadline = uv_now(loop) + timeout_ms;
    uv_timer_t wake; /* keeps uv_run from blocking forever when nothing else is due */
    uv_timer_init(loop, &wake);
    uv_timer_start(&wake, on_wake, 10, 10);
    while (*count < want && uv_now(loop) < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&wake, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return *count >= want;
}

static uint8_t *payload(uint8_t tag, size_t len)
{
    uint8_t *p = malloc(len);
    cr_assert_not_null(p);
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(tag + i);
    return p;
}

static int closed;
static void on_closed(void *arg)
{
    (void)arg;
    closed++;
}

static kv_net *open_net(uv_loop_t *loop, sink *s)
{
    kv_net_opts o = {.host = "127.0.0.1", .port = 0, .on_recv = on_recv, .arg = s};
    kv_net *n = NULL;
    cr_assert_eq(kv_net_open(&n, loop, &o), KV_OK);
    cr_assert_gt(kv_net_port(n), 0);
    return n;
}

static void close_all(uv_loop_t *loop, kv_net *a, kv_net *b)
{
    closed = 0;
    kv_net_close(a, on_closed, NULL);
    if (b)
        kv_net_close(b, on_closed, NULL);
    while (closed < (b ? 2 : 1))
        uv_run(loop, UV_RUN_ONCE);
    uv_run(loop, UV_RUN_NOWAIT);
    cr_assert_eq(uv_loop_close(loop), 0, "handles left open after kv_net_close");
}

Test(net_transport, both_lanes_deliver_whole_messages_in_order)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    sink sa = {0}, sb = {0};
    kv_net *a = open_net(&loop, &sa), *b = open_net(&loop, &sb);
    char to_b[32];
    snprintf(to_b, sizeof to_b, "127.0.0.1:%d", kv_net_port(b));

    /* 20 probe-lane messages tagged 1..20, then 10 bulk messages tagged 101..110. */
    for (int i = 1; i <= 20; i++) {
        uint8_t *p = payload((uint8_t)i, 100 + (size_t)i);
        cr_assert_eq(kv_net_send(a, to_b, KV_NET_LANE_PROBE, p, 100 + (size_t)i), KV_OK);
        free(p);
    }
    for (int i = 101; i <= 110; i++) {
        uint8_t *p = payload((uint8_t)i, 100000);
        cr_assert_eq(kv_net_send(a, to_b, KV_NET_LANE_BULK, p, 100000), KV_OK);
        free(p);
    }
    cr_assert(run_until(&loop, &sb.n, 30, 5000), "received %d of 30", sb.n);
    cr_assert_not(sb.bad, "a message arrived damaged");
    int last_probe = 0, last_bulk = 100;
    for (int i = 0; i < sb.n; i++) {
        int tag = sb.first[i];
        if (tag <= 20) {
            cr_assert_eq(tag, last_probe + 1, "probe lane out of order");
            last_probe = tag;
        } else {
            cr_assert_eq(tag, last_bulk + 1, "bulk lane out of order");
            last_bulk = tag;
        }
    }
    kv_net_stats st;
    kv_net_get_stats(a, &st);
    cr_assert_eq(st.sent, 30);
    cr_assert_eq(st.peers_open, 1);
    kv_net_get_stats(b, &st);
    cr_assert_eq(st.received, 30);
    close_all(&loop, a, b);
}

Test(net_transport, a_probe_does_not_wait_behind_bulk_data)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    sink sa = {0}, sb = {0};
    kv_net *a = open_net(&loop, &sa), *b = open_net(&loop, &sb);
    char to_b[32];
    snprintf(to_b, sizeof to_b, "127.0.0.1:%d", kv_net_port(b));

    /* Connect both lanes first (connections are made in the background). */
    uint8_t hello = 1;
    cr_assert_eq(kv_net_send(a, to_b, KV_NET_LANE_PROBE, &hello, 1), KV_OK);
    cr_assert_eq(kv_net_send(a, to_b, KV_NET_LANE_BULK, &hello, 1), KV_OK);
    cr_assert(run_until(&loop, &sb.n, 2, 5000));

    /* 48 MiB of bulk state, then one probe: the probe has a connection of its own. The
     * burst is many times what the kernel's socket buffers hold, so the bulk connection
     * needs many rounds of reading on the receiver while the probe's is free: with 12 MiB
     * (which fits in the buffers) CI once saw the probe last on a machine busy enough that
     * the whole burst was through before nng's thread sent the probe. Which of two TCP
     * connections delivers first is up to the schedulers, so a very busy machine can still
     * put the probe last now and then; on one shared connection it would be last every
     * time (FIFO). So: up to three bursts, and the probe must overtake the bulk data in at
     * least one — a shared connection fails all three. */
    const size_t big = 4u << 20;
    const int nbig = 12;
    uint8_t *p = payload(100, big);
    bool overtook = false;
    for (int attempt = 0; attempt < 3 && !overtook; attempt++) {
        int base = sb.n;
        cr_assert_leq(base + nbig + 1, MAX_SEEN);
        for (int i = 0; i < nbig; i++) {
            p[0] = (uint8_t)(100 + i);
            cr_assert_eq(kv_net_send(a, to_b, KV_NET_LANE_BULK, p, big), KV_OK);
        }
        uint8_t ping[2] = {7, 8};
        cr_assert_eq(kv_net_send(a, to_b, KV_NET_LANE_PROBE, ping, 2), KV_OK);
        cr_assert(run_until(&loop, &sb.n, base + nbig + 1, 20000), "received %d of %d", sb.n - base,
                  nbig + 1);
        int probe_at = -1, last_bulk_at = -1;
        for (int i = base; i < sb.n; i++) {
            if (sb.first[i] == 7)
                probe_at = i;
            else
                last_bulk_at = i;
        }
        cr_assert_geq(probe_at, 0);
        cr_log_info("attempt %d: probe arrived as message %d of %d after the burst", attempt + 1,
                    probe_at - base + 1, nbig + 1);
        overtook = probe_at < last_bulk_at;
    }
    free(p);
    cr_assert(overtook, "the probe arrived after all the bulk data in three bursts");
    close_all(&loop, a, b);
}

Test(net_transport, a_peer_that_is_down_costs_a_bounded_queue_then_counted_drops)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    sink sa = {0};
    kv_net *a = open_net(&loop, &sa);
    /* A port nobody listens on: grab one and let it go. */
    uv_tcp_t t;
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    uv_tcp_init(&loop, &t);
    cr_assert_eq(uv_tcp_bind(&t, (const struct sockaddr *)&addr, 0), 0);
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &sl);
    int port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    char to[32];
    snprintf(to, sizeof to, "127.0.0.1:%d", port);

    uint64_t t0 = uv_hrtime();
    int ok = 0, full = 0;
    for (int i = 0; i < 200; i++) {
        uint8_t m[16] = {0};
        int rc = kv_net_send(a, to, KV_NET_LANE_PROBE, m, sizeof m);
        if (rc == KV_OK)
            ok++;
        else if (rc == KV_EUNAVAIL)
            full++;
        else
            cr_assert_fail("unexpected send result %d", rc);
    }
    double ms = (double)(uv_hrtime() - t0) / 1e6;
    cr_log_info("200 sends to a dead peer: %d queued, %d dropped, %.2f ms in all", ok, full, ms);
    cr_assert_leq(ok, 64, "more than the probe lane's queue was accepted");
    cr_assert_eq(ok + full, 200);
    kv_net_stats st;
    kv_net_get_stats(a, &st);
    cr_assert_eq(st.dropped_send_queue_full, (uint64_t)full);
    close_all(&loop, a, NULL);
}

Test(net_transport, bad_addresses_and_oversized_messages_are_refused)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    sink sa = {0};
    kv_net_opts o = {
        .host = "127.0.0.1", .port = 0, .max_msg = 1024, .on_recv = on_recv, .arg = &sa};
    kv_net *a = NULL;
    cr_assert_eq(kv_net_open(&a, &loop, &o), KV_OK);
    uint8_t m[2048] = {0};
    static const char *const bad[] = {
        "", "nohostport", ":7946", "host:", "host:12x", "a b:1", "tcp://x:1", "h\n:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(kv_net_send(a, bad[i], KV_NET_LANE_PROBE, m, 8), KV_EINVAL, "'%s'", bad[i]);
    cr_assert_eq(kv_net_send(a, "127.0.0.1:9", KV_NET_LANE_BULK, m, sizeof m), KV_EINVAL);
    cr_assert_eq(kv_net_send(a, "127.0.0.1:9", (kv_net_lane)5, m, 8), KV_EINVAL);

    /* A second transport on a port that is taken fails to open, with EIO. */
    kv_net_opts o2 = o;
    o2.port = kv_net_port(a);
    kv_net *b = NULL;
    cr_assert_eq(kv_net_open(&b, &loop, &o2), KV_EIO);
    close_all(&loop, a, NULL);
}
