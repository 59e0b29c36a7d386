/*
 * test_net_direct.c — the replica data lane (src/net/direct.h): length-prefixed frames over
 * plain TCP on one libuv loop. Frames arrive whole, once and in order per sender, both ways
 * at once, also when a burst overflows the socket buffer (partial writes queue the rest);
 * keys with a host name are resolved; the size limits and the key syntax are enforced; bad bytes on
 * the listener close that connection (counted) while the listener carries on, and partial reads
 * reassemble; a destination that is down costs counted drops and a bounded back-off, then traffic
 * resumes when it listens; a receiver that goes away is noticed and reconnected to; the per
 * destination queue is bounded; a route change moves traffic; close releases every handle
 * (run under ASan); idle outgoing connections are closed and reopened on demand.
 *
 * Each Test runs in its own process (criterion); everything runs on the test's thread,
 * which runs the loop until a condition holds or a deadline passes. Frames carry their
 * index (4 bytes, little-endian, when they are long enough) and a pattern derived from it,
 * so the receiver checks order and contents of every byte.
 */
#include "kvstore/error.h"
#include "net/direct.h"

#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Keys name members by their (nng) cluster address; the data port is a separate number. */
#define KEY_A "127.0.0.1:7001"
#define KEY_B "127.0.0.1:7002"

/* ------------------------------------------------------------------ loop helpers */

typedef struct env {
    uv_loop_t loop;
    uv_timer_t wake; /* keeps UV_RUN_ONCE from blocking for long when nothing else is due */
} env;

static void on_wake(uv_timer_t *t)
{
    (void)t;
}

static void env_init(env *e)
{
    cr_assert_eq(uv_loop_init(&e->loop), 0);
    uv_timer_init(&e->loop, &e->wake);
    uv_timer_start(&e->wake, on_wake, 5, 5);
}

/* One loop turn unless the deadline (loop time) has passed. */
static bool step(env *e, uint64_t deadline)
{
    uv_update_time(&e->loop);
    if (uv_now(&e->loop) >= deadline)
        return false;
    uv_run(&e->loop, UV_RUN_ONCE);
    return true;
}

/* Run the loop until cond holds or ms of loop time passed; the caller asserts cond after. */
#define RUN_UNTIL(e, cond, ms)                                                                     \
    do {                                                                                           \
        uv_update_time(&(e)->loop);                                                                \
        uint64_t deadline_ = uv_now(&(e)->loop) + (ms);                                            \
        while (!(cond) && step((e), deadline_)) {                                                  \
        }                                                                                          \
    } while (0)

/* Run the loop for ms (lets the other side read what was just written). */
static void run_for(env *e, uint64_t ms)
{
    RUN_UNTIL(e, false, ms);
}

/* Close the wake timer and require that nothing else is left on the loop. */
static void env_fini(env *e)
{
    uv_close((uv_handle_t *)&e->wake, NULL);
    int alive = 1;
    for (int i = 0; i < 100 && alive; i++)
        alive = uv_run(&e->loop, UV_RUN_NOWAIT);
    cr_assert_eq(alive, 0, "the loop still has live handles or requests");
    cr_assert_eq(uv_loop_close(&e->loop), 0, "handles left open on the loop");
}

/* ------------------------------------------------------------------ frames */

static uint8_t pat(uint32_t idx, size_t k)
{
    return (uint8_t)(idx * 131u + (uint32_t)k * 7u + (uint32_t)(k >> 8));
}

/* Frame idx of len bytes: the pattern, with idx in the first 4 bytes when it fits. */
static void make_frame(uint8_t *buf, uint32_t idx, size_t len)
{
    for (size_t k = 0; k < len; k++)
        buf[k] = pat(idx, k);
    if (len >= 4) {
        buf[0] = (uint8_t)idx;
        buf[1] = (uint8_t)(idx >> 8);
        buf[2] = (uint8_t)(idx >> 16);
        buf[3] = (uint8_t)(idx >> 24);
    }
}

/* Sizes from 1 B to 64 KiB: the extremes first, then mostly small with every 16th large. */
static size_t varied_len(uint32_t i)
{
    static const size_t first[] = {1, 65536, 2, 3, 4, 5, 65535, 4096, 1, 1};
    if (i < sizeof first / sizeof first[0])
        return first[i];
    uint32_t h = i * 2654435761u;
    h ^= h >> 15;
    return i % 16 == 0 ? 1 + h % 65536 : 1 + h % 1024;
}

typedef struct sink {
    uint64_t n, bytes;
    int64_t last;                 /* index of the last frame, -1 before the first */
    bool strict;                  /* each frame must be last + 1 (no losses expected) */
    size_t (*len_of)(uint32_t i); /* when set, frame i must be this long */
    bool bad;
    char why[200];
} sink;

static void sink_init(sink *s, bool strict, size_t (*len_of)(uint32_t))
{
    memset(s, 0, sizeof *s);
    s->last = -1;
    s->strict = strict;
    s->len_of = len_of;
}

static void sink_fail(sink *s, const char *why, uint32_t idx, size_t len)
{
    if (s->bad)
        return; /* keep the first reason */
    s->bad = true;
    snprintf(s->why, sizeof s->why, "%s (frame %u, %zu bytes, after frame %lld, %llu received)",
             why, idx, len, (long long)s->last, (unsigned long long)s->n);
}

static void on_recv(void *arg, const uint8_t *data, size_t len)
{
    sink *s = arg;
    uint32_t idx;
    if (len >= 4) {
        idx = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
              (uint32_t)data[3] << 24;
    } else if (s->strict) {
        idx = (uint32_t)(s->last + 1);
    } else {
        sink_fail(s, "short frame", 0, len);
        s->n++;
        return;
    }
    if (s->strict && (int64_t)idx != s->last + 1)
        sink_fail(s, "out of order or duplicated", idx, len);
    if (!s->strict && (int64_t)idx <= s->last)
        sink_fail(s, "out of order or duplicated", idx, len);
    if (s->len_of && s->len_of(idx) != len)
        sink_fail(s, "wrong length", idx, len);
    for (size_t k = len >= 4 ? 4 : 0; k < len; k++) {
        if (data[k] != pat(idx, k)) {
            sink_fail(s, "damaged contents", idx, len);
            break;
        }
    }
    s->last = idx;
    s->n++;
    s->bytes += len;
}

#define SINK_OK(s) cr_assert_not((s)->bad, "%s", (s)->why)

/* ------------------------------------------------------------------ instances */

static kv_direct *open_direct(env *e, sink *s, int port, size_t max_msg, size_t queue_max,
                              uint64_t idle_ms)
{
    kv_direct_opts o = {.host = "127.0.0.1",
                        .port = port,
                        .max_msg = max_msg,
                        .queue_max_bytes = queue_max,
                        .idle_close_ms = idle_ms,
                        .on_recv = on_recv,
                        .arg = s};
    kv_direct *d = NULL;
    int rc = kv_direct_open(&d, &e->loop, &o);
    cr_assert_eq(rc, KV_OK, "kv_direct_open on port %d: %s", port, kv_errname(rc));
    cr_assert_not_null(d);
    cr_assert_gt(kv_direct_port(d), 0);
    if (port != 0)
        cr_assert_eq(kv_direct_port(d), port);
    return d;
}

static kv_direct_stats stats(const kv_direct *d)
{
    kv_direct_stats st;
    memset(&st, 0xa5, sizeof st); /* get_stats must write every field */
    kv_direct_get_stats(d, &st);
    return st;
}

static void on_done(void *arg)
{
    (*(int *)arg)++;
}

static void close_direct(env *e, kv_direct *d)
{
    int done = 0;
    kv_direct_close(d, on_done, &done);
    RUN_UNTIL(e, done >= 1, 3000);
    cr_assert_eq(done, 1, "kv_direct_close: done ran %d times", done);
}

/* Send frame idx of len bytes; the result code. */
static int send_frame(kv_direct *d, const char *key, uint32_t idx, size_t len)
{
    uint8_t *buf = malloc(len ? len : 1);
    cr_assert_not_null(buf);
    make_frame(buf, idx, len);
    int rc = kv_direct_send(d, key, buf, len);
    free(buf);
    return rc;
}

/* Send frames first..first+count-1 (len bytes each); each must be accepted. */
static void send_burst(kv_direct *d, const char *key, uint32_t first, int count, size_t len)
{
    for (int i = 0; i < count; i++) {
        int rc = send_frame(d, key, first + (uint32_t)i, len);
        TH_CHECK(rc == KV_OK, "send of frame %u: %s", first + (uint32_t)i, kv_errname(rc));
    }
}

/*
 * Send a fresh 64-byte frame (*idx, then incremented) every period_ms until done(ctx) or
 * timeout_ms; each send must answer KV_OK or KV_EUNAVAIL. True if done(ctx) held in time.
 */
static bool resend_until(env *e, kv_direct *d, const char *key, uint32_t *idx,
                         bool (*done)(const void *ctx), const void *ctx, uint64_t period_ms,
                         uint64_t timeout_ms)
{
    uv_update_time(&e->loop);
    uint64_t now = uv_now(&e->loop), deadline = now + timeout_ms, next = now;
    while (!done(ctx) && now < deadline) {
        if (now >= next) {
            int rc = send_frame(d, key, (*idx)++, 64);
            TH_CHECK(rc == KV_OK || rc == KV_EUNAVAIL, "send while the peer is away: %s",
                     kv_errname(rc));
            next = now + period_ms;
        }
        uv_run(&e->loop, UV_RUN_ONCE);
        uv_update_time(&e->loop);
        now = uv_now(&e->loop);
    }
    return done(ctx);
}

/* Send frames *idx.. (count of len bytes, KEY_B; *idx advances past them) and require that
 * they all reach s, whole and in order, within 3 s. */
static void send_and_expect_all(env *e, kv_direct *d, sink *s, uint32_t *idx, int count, size_t len)
{
    uint64_t before = s->n;
    send_burst(d, KEY_B, *idx, count, len);
    *idx += (uint32_t)count;
    RUN_UNTIL(e, s->n >= before + (uint64_t)count, 3000);
    SINK_OK(s);
    cr_assert_eq(s->n, before + (uint64_t)count);
    cr_assert_eq(s->last, *idx - 1);
}

static bool got_one(const void *ctx)
{
    return ((const sink *)ctx)->n >= 1;
}

/* A TCP port on 127.0.0.1 that nothing listens on (bound, read, released: never listened). */
static int dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t sl = sizeof a;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &sl), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* Whether the peer has closed fd (EOF or reset); discards bytes that arrive. Never blocks. */
static bool peer_closed(int fd)
{
    char scratch[256];
    for (;;) {
        ssize_t n = recv(fd, scratch, sizeof scratch, MSG_DONTWAIT);
        if (n == 0)
            return true;
        if (n < 0)
            return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
    }
}

static void be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* How pair_open sets up the two lanes most tests start from. */
typedef struct pair_opts {
    bool strict_a, strict_b;      /* each sink requires every frame, in order */
    size_t (*len_of)(uint32_t i); /* both sinks: frame i must be this long (NULL: any) */
    size_t max_msg;               /* both lanes (0: the default) */
    size_t queue_max_a;           /* lane A's queue bound (0: the default) */
    uint64_t idle_ms_a;           /* lane A's idle close (0: the default, 60 s) */
    const char *route_key;        /* A's key for B (NULL: KEY_B) */
    bool no_route;                /* A starts without a route to B */
} pair_opts;

/* A loop in *e, lane A delivering into *sa and lane B into *sb (each on a port of its own),
 * and A routed to B unless o.no_route. pair_close undoes it. */
static void pair_open(env *e, sink *sa, sink *sb, kv_direct **a, kv_direct **b, pair_opts o)
{
    env_init(e);
    sink_init(sa, o.strict_a, o.len_of);
    sink_init(sb, o.strict_b, o.len_of);
    *a = open_direct(e, sa, 0, o.max_msg, o.queue_max_a, o.idle_ms_a);
    *b = open_direct(e, sb, 0, o.max_msg, 0, 0);
    if (!o.no_route) {
        int rc = kv_direct_set_route(*a, o.route_key ? o.route_key : KEY_B, kv_direct_port(*b));
        cr_assert_eq(rc, KV_OK);
    }
}

/* Close lanes a and b, then require that nothing is left on the loop. */
static void pair_close(env *e, kv_direct *a, kv_direct *b)
{
    close_direct(e, a);
    close_direct(e, b);
    env_fini(e);
}

/* Connect to port, send len bytes and require that the listener closes the connection
 * (the failure says "<what> did not close the connection"). */
static void send_raw_expect_close(env *e, int port, const void *bytes, size_t len, const char *what)
{
    int fd = th_connect(port, 2000);
    cr_assert_geq(fd, 0);
    cr_assert_eq(th_send_all(fd, bytes, len), 0);
    bool closed = false;
    RUN_UNTIL(e, (closed = peer_closed(fd)), 3000);
    cr_assert(closed, "%s did not close the connection", what);
    close(fd);
}

/* ------------------------------------------------------------------ tests */

Test(net_direct, open_refuses_bad_options, .timeout = 20)
{
    env e;
    env_init(&e);
    sink s;
    sink_init(&s, false, NULL);
    kv_direct *d = NULL;
    kv_direct_opts o = {.host = "localhost", .port = 0, .on_recv = on_recv, .arg = &s};
    cr_assert_eq(kv_direct_open(&d, &e.loop, &o), KV_EINVAL, "a host name is not numeric");
    o.host = "127.0.0.1";
    o.port = 65536;
    cr_assert_eq(kv_direct_open(&d, &e.loop, &o), KV_EINVAL, "port 65536");
    o.port = -1;
    cr_assert_eq(kv_direct_open(&d, &e.loop, &o), KV_EINVAL, "port -1");
    o.port = 0;
    o.on_recv = NULL;
    cr_assert_eq(kv_direct_open(&d, &e.loop, &o), KV_EINVAL, "no on_recv");
    cr_assert_null(d, "*out written on failure");

    kv_direct *a = open_direct(&e, &s, 0, 0, 0, 0);
    o.on_recv = on_recv;
    o.port = kv_direct_port(a);
    cr_assert_eq(kv_direct_open(&d, &e.loop, &o), KV_EIO, "a port in use");
    cr_assert_null(d);
    close_direct(&e, a);
    env_fini(&e);
}

/* Brief item 1. */
Test(net_direct, ten_thousand_frames_each_way_arrive_whole_and_in_order, .timeout = 30)
{
    enum { N = 10000, WINDOW = 256 };
    env e;
    sink sa, sb;
    kv_direct *a, *b;
    pair_open(&e, &sa, &sb, &a, &b,
              (pair_opts){.strict_a = true, .strict_b = true, .len_of = varied_len});
    cr_assert_neq(kv_direct_port(a), kv_direct_port(b));
    cr_assert_eq(kv_direct_set_route(b, KEY_A, kv_direct_port(a)), KV_OK);

    uint8_t *buf = malloc(65536);
    cr_assert_not_null(buf);
    uint64_t total = 0;
    for (uint32_t i = 0; i < N; i++)
        total += varied_len(i);

    /* Both directions at once; at most WINDOW frames per direction not yet delivered, so the
     * default queue bound (64 MiB) is never reached and every send must be accepted. One
     * buffer is reused: the frame must be written or copied before kv_direct_send returns. */
    uint32_t na = 0, nb = 0;
    uv_update_time(&e.loop);
    uint64_t deadline = uv_now(&e.loop) + 20000;
    while ((sa.n < N || sb.n < N) && uv_now(&e.loop) < deadline && !sa.bad && !sb.bad) {
        while (na < N && na - sb.n < WINDOW) {
            size_t len = varied_len(na);
            make_frame(buf, na, len);
            int rc = kv_direct_send(a, KEY_B, buf, len);
            TH_CHECK(rc == KV_OK, "A->B frame %u: %s", na, kv_errname(rc));
            na++;
        }
        while (nb < N && nb - sa.n < WINDOW) {
            size_t len = varied_len(nb);
            make_frame(buf, nb, len);
            int rc = kv_direct_send(b, KEY_A, buf, len);
            TH_CHECK(rc == KV_OK, "B->A frame %u: %s", nb, kv_errname(rc));
            nb++;
        }
        uv_run(&e.loop, UV_RUN_ONCE);
        uv_update_time(&e.loop);
    }
    free(buf);
    SINK_OK(&sa);
    SINK_OK(&sb);
    cr_assert_eq(sb.n, N, "A->B: %llu of %d frames arrived", (unsigned long long)sb.n, N);
    cr_assert_eq(sa.n, N, "B->A: %llu of %d frames arrived", (unsigned long long)sa.n, N);
    cr_assert_eq(sb.bytes, total);
    cr_assert_eq(sa.bytes, total);

    kv_direct_stats as = stats(a), bs = stats(b);
    cr_assert_eq(as.sent, N);
    cr_assert_eq(bs.sent, N);
    cr_assert_eq(as.received, N);
    cr_assert_eq(bs.received, N);
    cr_assert_eq(as.received_bytes, total);
    cr_assert_eq(bs.received_bytes, total);
    cr_assert_eq(as.sent_bytes, bs.received_bytes, "A sent %llu bytes, B received %llu",
                 (unsigned long long)as.sent_bytes, (unsigned long long)bs.received_bytes);
    cr_assert_eq(bs.sent_bytes, as.received_bytes);
    cr_assert_eq(as.conns_out, 1);
    cr_assert_eq(as.conns_in, 1);
    cr_assert_eq(bs.conns_out, 1);
    cr_assert_eq(bs.conns_in, 1);
    cr_assert_eq(as.dropped_queue_full + as.dropped_unreachable + as.dropped_conn_lost, 0);
    cr_assert_eq(as.connect_failures + as.bad_hello + as.bad_frame, 0);
    cr_assert_eq(bs.dropped_queue_full + bs.dropped_unreachable + bs.dropped_conn_lost, 0);
    cr_assert_eq(bs.connect_failures + bs.bad_hello + bs.bad_frame, 0);
    pair_close(&e, a, b);
}

/* Brief item 2. */
Test(net_direct, a_large_frame_arrives_and_the_size_limits_hold, .timeout = 20)
{
    const size_t max = 2u << 20;
    env e;
    sink sa, sb;
    kv_direct *a, *b;
    pair_open(&e, &sa, &sb, &a, &b, (pair_opts){.strict_b = true, .max_msg = max});

    uint8_t *buf = malloc(max + 1);
    cr_assert_not_null(buf);
    make_frame(buf, 0, 1u << 20);
    cr_assert_eq(kv_direct_send(a, KEY_B, buf, 1u << 20), KV_OK);
    make_frame(buf, 1, max);
    cr_assert_eq(kv_direct_send(a, KEY_B, buf, max), KV_OK, "a frame of exactly max_msg");
    make_frame(buf, 2, max + 1);
    cr_assert_eq(kv_direct_send(a, KEY_B, buf, max + 1), KV_EINVAL, "a frame over max_msg");
    cr_assert_eq(kv_direct_send(a, KEY_B, buf, 0), KV_EINVAL, "an empty frame");
    cr_assert_eq(kv_direct_send(a, KEY_B, buf, SIZE_MAX), KV_EINVAL, "len SIZE_MAX");
    free(buf);

    RUN_UNTIL(&e, sb.n >= 2 || sb.bad, 5000);
    SINK_OK(&sb);
    cr_assert_eq(sb.n, 2, "%llu of 2 large frames arrived", (unsigned long long)sb.n);
    cr_assert_eq(sb.bytes, (1u << 20) + max);
    run_for(&e, 50); /* nothing else may follow */
    cr_assert_eq(sb.n, 2);
    kv_direct_stats as = stats(a), bs = stats(b);
    cr_assert_eq(as.sent, 2, "refused frames are not counted as sent");
    cr_assert_eq(bs.received, 2);
    cr_assert_eq(bs.bad_frame, 0);
    pair_close(&e, a, b);
}

/* Beyond the brief: more than the socket takes at once, sent without running the loop, so
 * uv_try_write writes part of a frame and the rest waits in the queue. */
Test(net_direct, a_burst_larger_than_the_socket_buffer_arrives_in_order_and_is_counted,
     .timeout = 20)
{
    enum { N = 128 };
    const size_t len = 65536 + 3; /* odd, so frame ends do not line up with buffer sizes */
    env e;
    sink sa, sb;
    kv_direct *a, *b;
    pair_open(&e, &sa, &sb, &a, &b, (pair_opts){.strict_b = true});
    send_burst(a, KEY_B, 0, 1, 64); /* connect first: the burst meets an open connection */
    RUN_UNTIL(&e, sb.n >= 1, 3000);
    cr_assert_eq(sb.n, 1);

    send_burst(a, KEY_B, 1, N, len);
    RUN_UNTIL(&e, sb.n >= N + 1 || sb.bad, 10000);
    SINK_OK(&sb);
    cr_assert_eq(sb.n, N + 1, "%llu of %d frames arrived", (unsigned long long)sb.n, N + 1);
    /* Counters are read first and checked after the close, so a wrong one leaves no leak. */
    kv_direct_stats as = stats(a), bs = stats(b);
    pair_close(&e, a, b);
    cr_assert_eq(bs.received_bytes, 64 + N * len);
    cr_assert_eq(as.sent, N + 1);
    cr_assert_eq(as.sent_bytes, bs.received_bytes,
                 "A counted %llu bytes sent, B received %llu (%lld apart)",
                 (unsigned long long)as.sent_bytes, (unsigned long long)bs.received_bytes,
                 (long long)(bs.received_bytes - as.sent_bytes));
    cr_assert_eq(as.dropped_queue_full + as.dropped_conn_lost, 0);
}

/* Beyond the brief: a key whose host is a name is resolved (localhost: no network). */
Test(net_direct, a_key_with_a_host_name_is_resolved, .timeout = 20)
{
    env e;
    sink sa, sb;
    kv_direct *a, *b;
    pair_open(&e, &sa, &sb, &a, &b, (pair_opts){.strict_b = true, .route_key = "localhost:7002"});
    send_burst(a, "localhost:7002", 0, 5, 100);
    RUN_UNTIL(&e, sb.n >= 5, 5000);
    SINK_OK(&sb);
    cr_assert_eq(sb.n, 5, "%llu of 5 frames arrived (connect_failures %llu)",
                 (unsigned long long)sb.n, (unsigned long long)stats(a).connect_failures);
    pair_close(&e, a, b);
}

/* Brief item 3. */
Test(net_direct, routes_are_required_and_keys_are_checked, .timeout = 20)
{
    env e;
    sink sa, sb;
    kv_direct *a, *b;
    pair_open(&e, &sa, &sb, &a, &b, (pair_opts){.no_route = true});
    int pb = kv_direct_port(b);

    cr_assert_not(kv_direct_has_route(a, KEY_B));
    cr_assert_eq(send_frame(a, KEY_B, 0, 16), KV_ENOTFOUND);
    cr_assert_eq(kv_direct_set_route(a, KEY_B, pb), KV_OK);
    cr_assert(kv_direct_has_route(a, KEY_B));
    cr_assert_not(kv_direct_has_route(a, KEY_A), "a route for one key only");
    cr_assert_not(kv_direct_has_route(a, "127.0.0.1:7003"));
    cr_assert_eq(send_frame(a, "127.0.0.1:7003", 0, 16), KV_ENOTFOUND);
    cr_assert_eq(send_frame(a, KEY_B, 0, 16), KV_OK);
    RUN_UNTIL(&e, sb.n >= 1, 3000);
    cr_assert_eq(sb.n, 1);

    /* Port 0 forgets the route; sending is then "not found" again. */
    cr_assert_eq(kv_direct_set_route(a, KEY_B, 0), KV_OK);
    cr_assert_not(kv_direct_has_route(a, KEY_B));
    cr_assert_eq(send_frame(a, KEY_B, 1, 16), KV_ENOTFOUND);
    cr_assert_eq(kv_direct_set_route(a, KEY_B, 0), KV_OK, "forgetting an unknown key is fine");

    static const char *const bad_keys[] = {"nohost", "h:99999",  "",     ":7946",
                                           "host:",  "host:12x", "h:-1", "h:65536"};
    for (size_t i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
        cr_assert_eq(kv_direct_set_route(a, bad_keys[i], pb), KV_EINVAL, "key '%s'", bad_keys[i]);
        cr_assert_not(kv_direct_has_route(a, bad_keys[i]), "key '%s'", bad_keys[i]);
    }
    cr_assert_eq(kv_direct_set_route(a, KEY_B, 65536), KV_EINVAL, "data port 65536");
    cr_assert_eq(kv_direct_set_route(a, KEY_B, -1), KV_EINVAL, "data port -1");
    cr_assert_not(kv_direct_has_route(a, KEY_B), "a refused route is not kept");

    /* The documented key forms are accepted (not connected to here). */
    cr_assert_eq(kv_direct_set_route(a, "[::1]:7946", 9), KV_OK, "IPv6 key");
    cr_assert(kv_direct_has_route(a, "[::1]:7946"));
    cr_assert_eq(kv_direct_set_route(a, "node-1.example:7946", 9), KV_OK, "a host name key");
    cr_assert(kv_direct_has_route(a, "node-1.example:7946"));

    kv_direct_stats as = stats(a);
    cr_assert_eq(as.sent, 1);
    pair_close(&e, a, b);
}

/* Brief item 4. */
Test(net_direct, bad_bytes_close_one_connection_and_partial_reads_reassemble, .timeout = 20)
{
    const size_t max = 1024;
    env e;
    env_init(&e);
    sink sa, sb;
    sink_init(&sa, false, NULL);
    sink_init(&sb, false, NULL);
    kv_direct *b = open_direct(&e, &sb, 0, max, 0, 0);
    int pb = kv_direct_port(b);

    /* A wrong hello, and an HTTP request: each connection is closed by the listener. */
    send_raw_expect_close(&e, pb, "KVDATA2\n", 8, "a wrong hello");
    RUN_UNTIL(&e, stats(b).bad_hello >= 1, 1000);
    cr_assert_eq(stats(b).bad_hello, 1);

    static const char http[] = "GET /v1/kv/x HTTP/1.1\r\nHost: a\r\n\r\n";
    send_raw_expect_close(&e, pb, http, sizeof http - 1, "an HTTP request");
    RUN_UNTIL(&e, stats(b).bad_hello >= 2, 1000);
    cr_assert_eq(stats(b).bad_hello, 2);

    /* The right hello, then a length over max_msg (and one of 4 GiB - 1). */
    static const uint32_t too_long[] = {1025, 0xffffffffu};
    for (size_t i = 0; i < 2; i++) {
        uint8_t m[12];
        memcpy(m, "KVDATA1\n", 8);
        be32(m + 8, too_long[i]);
        char what[48];
        snprintf(what, sizeof what, "a frame of %u bytes", too_long[i]);
        send_raw_expect_close(&e, pb, m, sizeof m, what);
        RUN_UNTIL(&e, stats(b).bad_frame >= i + 1, 1000);
        cr_assert_eq(stats(b).bad_frame, i + 1);
    }
    cr_assert_eq(sb.n, 0, "nothing was delivered from the bad connections");

    /* A client that leaves mid-hello: nothing counted as a frame, nothing breaks. */
    int fd = th_connect(pb, 2000);
    cr_assert_geq(fd, 0);
    cr_assert_eq(th_send_all(fd, "KVD", 3), 0);
    run_for(&e, 20);
    close(fd);

    /* The hello one byte at a time, then frames split across writes, then two frames and
     * half a third in one write: each piece is read by the listener before the next. */
    fd = th_connect(pb, 2000);
    cr_assert_geq(fd, 0);
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(th_send_all(fd, "KVDATA1\n" + i, 1), 0);
        run_for(&e, 3);
    }
    uint8_t f[4 + 300];
    be32(f, 300);
    make_frame(f + 4, 7, 300);
    static const size_t cuts[] = {0, 1, 2, 4, 5, 100, 303, 304};
    for (size_t i = 0; i + 1 < sizeof cuts / sizeof cuts[0]; i++) {
        cr_assert_eq(th_send_all(fd, f + cuts[i], cuts[i + 1] - cuts[i]), 0);
        run_for(&e, 3);
    }
    RUN_UNTIL(&e, sb.n >= 1, 2000);
    SINK_OK(&sb);
    cr_assert_eq(sb.n, 1, "the split frame did not arrive");
    cr_assert_eq(sb.last, 7);

    /* Frame 8 (10 bytes), frame 9 (exactly max_msg) and the first half of frame 10. */
    uint8_t *m = malloc(3 * (4 + max));
    cr_assert_not_null(m);
    size_t off = 0;
    be32(m + off, 10);
    make_frame(m + off + 4, 8, 10);
    off += 14;
    be32(m + off, (uint32_t)max);
    make_frame(m + off + 4, 9, max);
    off += 4 + max;
    be32(m + off, 500);
    make_frame(m + off + 4, 10, 500);
    cr_assert_eq(th_send_all(fd, m, off + 250), 0);
    RUN_UNTIL(&e, sb.n >= 3, 2000);
    cr_assert_eq(sb.n, 3);
    run_for(&e, 5);
    cr_assert_eq(sb.n, 3, "half a frame was delivered");
    cr_assert_eq(th_send_all(fd, m + off + 250, 4 + 500 - 250), 0);
    RUN_UNTIL(&e, sb.n >= 4, 2000);
    free(m);
    SINK_OK(&sb);
    cr_assert_eq(sb.n, 4);
    cr_assert_eq(sb.last, 10);
    kv_direct_stats bs = stats(b);
    cr_assert_eq(bs.received, 4);
    cr_assert_eq(bs.received_bytes, 300 + 10 + max + 500);
    cr_assert_eq(bs.conns_in, 1, "the raw connection is the only one open");
    cr_assert_eq(bs.bad_hello, 2);
    cr_assert_eq(bs.bad_frame, 2);
    close(fd);
    RUN_UNTIL(&e, stats(b).conns_in == 0, 2000);
    cr_assert_eq(stats(b).conns_in, 0, "a connection closed by its client stays counted");

    /* After all that, an ordinary sender still gets through. */
    kv_direct *a = open_direct(&e, &sa, 0, max, 0, 0);
    cr_assert_eq(kv_direct_set_route(a, KEY_B, pb), KV_OK);
    send_burst(a, KEY_B, 11, 10, 200);
    RUN_UNTIL(&e, sb.n >= 14, 3000);
    SINK_OK(&sb);
    cr_assert_eq(sb.n, 14);
    cr_assert_eq(sb.last, 20);
    pair_close(&e, a, b);
}

/* Brief item 5. */
Test(net_direct, a_destination_that_is_down_costs_counted_drops_then_recovers, .timeout = 30)
{
    env e;
    env_init(&e);
    sink sa, sb;
    sink_init(&sa, false, NULL);
    sink_init(&sb, false, NULL);
    kv_direct *a = open_direct(&e, &sa, 0, 0, 0, 0);
    int port = dead_port();
    cr_assert_eq(kv_direct_set_route(a, KEY_B, port), KV_OK);

    /* Sends never block and never fail with anything but "dropped". */
    uint32_t idx = 0;
    int ok = 0, dropped = 0;
    for (int i = 0; i < 50; i++) {
        int rc = send_frame(a, KEY_B, idx++, 100);
        cr_assert(rc == KV_OK || rc == KV_EUNAVAIL, "send: %s", kv_errname(rc));
        if (rc == KV_OK)
            ok++;
        else
            dropped++;
    }
    cr_assert_gt(ok, 0, "the first frames wait for the connection");
    RUN_UNTIL(&e, stats(a).connect_failures >= 1, 3000);
    kv_direct_stats as = stats(a);
    cr_assert_geq(as.connect_failures, 1, "the refused connect was not counted");
    cr_assert_geq(as.dropped_unreachable, (uint64_t)ok, "queued frames not counted as lost");
    cr_assert_eq(as.conns_out, 0);

    /* During the back-off (100 ms, doubling): a frame every 10 ms for 300 ms makes at most
     * a few connect attempts (0, 100, 300 ms), not one per frame; the rest are refused. */
    uint64_t failures_before = as.connect_failures;
    for (int i = 0; i < 30; i++) {
        int rc = send_frame(a, KEY_B, idx++, 100);
        cr_assert(rc == KV_OK || rc == KV_EUNAVAIL, "send in back-off: %s", kv_errname(rc));
        if (rc == KV_OK)
            ok++;
        else
            dropped++;
        run_for(&e, 10);
    }
    as = stats(a);
    cr_log_info("30 sends in back-off: %llu connect attempts failed, %d sends refused",
                (unsigned long long)(as.connect_failures - failures_before), dropped);
    cr_assert_leq(as.connect_failures - failures_before, 5, "no back-off between connects");
    cr_assert_geq(dropped, 20, "sends during the back-off were not refused");
    /* Every one of the 80 frames ends up counted as lost, each once. */
    RUN_UNTIL(&e, stats(a).dropped_unreachable >= 80, 5000);
    as = stats(a);
    cr_assert_eq(as.dropped_unreachable + as.dropped_queue_full, 80,
                 "unreachable %llu + queue full %llu != 80 sends (%d queued, %d refused)",
                 (unsigned long long)as.dropped_unreachable,
                 (unsigned long long)as.dropped_queue_full, ok, dropped);
    cr_assert_eq(as.dropped_queue_full, 0);
    cr_assert_eq(as.sent, 0);
    run_for(&e, 20);
    cr_assert_eq(stats(a).dropped_unreachable, 80, "a frame was counted twice");

    /* The destination starts listening: within the 2 s back-off cap plus a connect, a frame
     * sent every 100 ms gets through. */
    kv_direct *b = open_direct(&e, &sb, port, 0, 0, 0);
    uint64_t t0 = uv_hrtime();
    cr_assert(resend_until(&e, a, KEY_B, &idx, got_one, &sb, 100, 6000),
              "nothing arrived within 6 s of the destination listening");
    cr_log_info("first frame after %.0f ms of the destination listening",
                (double)(uv_hrtime() - t0) / 1e6);
    SINK_OK(&sb);
    cr_assert_geq(sb.last, 80, "a frame lost during the outage arrived");

    /* From now on nothing is lost. */
    send_and_expect_all(&e, a, &sb, &idx, 10, 100);
    cr_assert_eq(stats(a).conns_out, 1);
    pair_close(&e, a, b);
}

static bool sender_noticed(const void *ctx)
{
    kv_direct_stats st = stats(ctx);
    return st.dropped_conn_lost + st.connect_failures >= 1;
}

/* Brief item 6. */
Test(net_direct, a_receiver_that_goes_away_is_noticed_and_reconnected_to, .timeout = 30)
{
    env e;
    sink sa, sb, sb2;
    kv_direct *a, *b;
    pair_open(&e, &sa, &sb, &a, &b, (pair_opts){0});
    sink_init(&sb2, false, NULL);
    int pb = kv_direct_port(b);
    uint32_t idx = 0;
    send_burst(a, KEY_B, idx, 5, 64);
    idx += 5;
    RUN_UNTIL(&e, sb.n >= 5, 3000);
    cr_assert_eq(sb.n, 5);
    cr_assert_eq(stats(a).conns_out, 1);

    close_direct(&e, b);
    /* The sender reads EOF on its idle connection: no longer counted as open. */
    RUN_UNTIL(&e, stats(a).conns_out == 0, 2000);
    cr_assert_eq(stats(a).conns_out, 0, "the sender still counts the broken connection");
    cr_assert(resend_until(&e, a, KEY_B, &idx, sender_noticed, a, 20, 3000),
              "the sender did not notice that the receiver went away");
    kv_direct_stats as = stats(a);
    cr_log_info("after the receiver left: conn_lost %llu, connect_failures %llu, "
                "unreachable %llu",
                (unsigned long long)as.dropped_conn_lost, (unsigned long long)as.connect_failures,
                (unsigned long long)as.dropped_unreachable);

    /* A new receiver on the same port gets the frames sent from then on. */
    kv_direct *b2 = open_direct(&e, &sb2, pb, 0, 0, 0);
    cr_assert(resend_until(&e, a, KEY_B, &idx, got_one, &sb2, 100, 6000),
              "nothing reached the new receiver within 6 s");
    SINK_OK(&sb2);
    cr_assert_geq(sb2.last, 5);
    send_and_expect_all(&e, a, &sb2, &idx, 20, 64);
    cr_assert_eq(stats(a).conns_out, 1);
    pair_close(&e, a, b2);
}

/* Brief item 7. */
Test(net_direct, the_queue_per_destination_is_bounded, .timeout = 20)
{
    env e;
    sink sa, sb;
    kv_direct *a, *b;
    pair_open(&e, &sa, &sb, &a, &b, (pair_opts){.strict_b = true, .queue_max_a = 4096});

    /* The connection is not up until the loop runs: everything queues, 4096 bytes at most
     * (four 1000-byte frames fit even with their length prefixes, five do not). */
    int ok = 0, full = 0;
    for (uint32_t i = 0; i < 10; i++) {
        int rc = send_frame(a, KEY_B, (uint32_t)ok, 1000);
        cr_assert(rc == KV_OK || rc == KV_EUNAVAIL, "send: %s", kv_errname(rc));
        if (rc == KV_OK)
            ok++;
        else
            full++;
    }
    cr_assert_leq(ok, 4, "%d frames of 1000 bytes queued under a 4096-byte bound", ok);
    cr_assert_geq(ok, 3, "only %d frames of 1000 bytes queued under a 4096-byte bound", ok);
    kv_direct_stats as = stats(a);
    cr_assert_eq(as.dropped_queue_full, (uint64_t)full);
    cr_assert_eq(as.dropped_unreachable, 0);
    uint8_t big[5000];
    make_frame(big, (uint32_t)ok, sizeof big);
    cr_assert_eq(kv_direct_send(a, KEY_B, big, sizeof big), KV_EUNAVAIL,
                 "a frame larger than the whole queue");
    cr_assert_eq(stats(a).dropped_queue_full, (uint64_t)full + 1);

    /* The queued ones arrive, in order; then the queue has room again. */
    RUN_UNTIL(&e, sb.n >= (uint64_t)ok, 3000);
    SINK_OK(&sb);
    cr_assert_eq(sb.n, (uint64_t)ok);
    send_burst(a, KEY_B, (uint32_t)ok, 3, 1000);
    RUN_UNTIL(&e, sb.n >= (uint64_t)ok + 3, 3000);
    SINK_OK(&sb);
    cr_assert_eq(sb.n, (uint64_t)ok + 3);
    cr_assert_eq(stats(a).sent, (uint64_t)ok + 3);
    pair_close(&e, a, b);
}

/* Brief item 8. */
Test(net_direct, a_route_change_moves_traffic_to_the_new_port, .timeout = 20)
{
    env e;
    sink sa, sb1, sb2;
    kv_direct *a, *b1;
    pair_open(&e, &sa, &sb1, &a, &b1, (pair_opts){.strict_b = true});
    sink_init(&sb2, true, NULL);
    kv_direct *b2 = open_direct(&e, &sb2, 0, 0, 0, 0);
    send_burst(a, KEY_B, 0, 10, 128);
    RUN_UNTIL(&e, sb1.n >= 10, 3000);
    cr_assert_eq(sb1.n, 10);

    /* Setting the same port again changes nothing: the connection stays. */
    cr_assert_eq(kv_direct_set_route(a, KEY_B, kv_direct_port(b1)), KV_OK);
    send_burst(a, KEY_B, 10, 5, 128);
    RUN_UNTIL(&e, sb1.n >= 15, 3000);
    cr_assert_eq(sb1.n, 15);
    cr_assert_eq(stats(a).dropped_conn_lost, 0);

    /* The member now advertises b2's port. */
    cr_assert_eq(kv_direct_set_route(a, KEY_B, kv_direct_port(b2)), KV_OK);
    cr_assert(kv_direct_has_route(a, KEY_B));
    send_burst(a, KEY_B, 0, 10, 128);
    RUN_UNTIL(&e, sb2.n >= 10, 3000);
    SINK_OK(&sb1);
    SINK_OK(&sb2);
    cr_assert_eq(sb2.n, 10, "%llu of 10 frames reached the new port", (unsigned long long)sb2.n);
    run_for(&e, 20);
    cr_assert_eq(sb1.n, 15, "frames still went to the old port");
    RUN_UNTIL(&e, stats(b1).conns_in == 0, 2000);
    cr_assert_eq(stats(b1).conns_in, 0, "the old connection was not closed");
    kv_direct_stats as = stats(a);
    cr_assert_eq(as.conns_out, 1);
    cr_assert_eq(as.sent, 25);
    close_direct(&e, b2);
    pair_close(&e, a, b1);
}

/* Brief item 9. */
Test(net_direct, close_with_connections_and_queued_frames_releases_everything, .timeout = 20)
{
    env e;
    sink sa, sb;
    kv_direct *a, *b;
    pair_open(&e, &sa, &sb, &a, &b, (pair_opts){0});
    cr_assert_eq(kv_direct_set_route(b, KEY_A, kv_direct_port(a)), KV_OK);
    send_burst(a, KEY_B, 0, 1, 64);
    send_burst(b, KEY_A, 0, 1, 64);
    RUN_UNTIL(&e, sa.n >= 1 && sb.n >= 1, 3000);
    cr_assert_eq(sa.n + sb.n, 2);

    /* 4 MiB queued to B (more than the socket takes at once), a connect under way to a
     * port nobody listens on, a second connect under way to A from a fresh key, a name
     * lookup under way, and a raw inbound connection to A that stopped mid-frame. */
    send_burst(a, KEY_B, 1, 64, 65536);
    cr_assert_eq(kv_direct_set_route(a, "127.0.0.1:7009", dead_port()), KV_OK);
    send_burst(a, "127.0.0.1:7009", 0, 3, 100);
    cr_assert_eq(kv_direct_set_route(b, "127.0.0.1:7010", kv_direct_port(a)), KV_OK);
    send_burst(b, "127.0.0.1:7010", 0, 3, 100);
    cr_assert_eq(kv_direct_set_route(b, "localhost:7011", kv_direct_port(a)), KV_OK);
    send_burst(b, "localhost:7011", 0, 1, 100); /* a name lookup under way at close */
    int fd = th_connect(kv_direct_port(a), 2000);
    cr_assert_geq(fd, 0);
    uint8_t half[8 + 4 + 10];
    memcpy(half, "KVDATA1\n", 8);
    be32(half + 8, 100);
    memset(half + 12, 1, 10);
    cr_assert_eq(th_send_all(fd, half, sizeof half), 0);
    run_for(&e, 5);

    int done_a = 0, done_b = 0;
    kv_direct_close(a, on_done, &done_a);
    /* Closing, not yet freed: calls answer "closed". */
    cr_assert_eq(send_frame(a, KEY_B, 99, 64), KV_ECLOSED);
    cr_assert_eq(kv_direct_set_route(a, KEY_A, 1234), KV_ECLOSED);
    cr_assert_eq(done_a, 0, "done ran inside kv_direct_close");
    kv_direct_close(b, on_done, &done_b);
    RUN_UNTIL(&e, done_a >= 1 && done_b >= 1, 3000);
    cr_assert_eq(done_a, 1);
    cr_assert_eq(done_b, 1);
    cr_assert(th_wait_closed(fd, 2000), "the raw inbound connection was left open");
    close(fd);
    run_for(&e, 20);
    cr_assert_eq(done_a, 1, "done ran twice");
    cr_assert_eq(done_b, 1, "done ran twice");
    env_fini(&e); /* no live handle may remain; ASan checks the memory */
}

/* Brief item 10. */
Test(net_direct, idle_outgoing_connections_close_and_reopen_on_demand, .timeout = 20)
{
    env e;
    sink sa, sb;
    kv_direct *a, *b;
    pair_open(&e, &sa, &sb, &a, &b, (pair_opts){.strict_b = true, .idle_ms_a = 200});
    uint32_t idx = 0;
    send_burst(a, KEY_B, idx++, 1, 64);
    RUN_UNTIL(&e, sb.n >= 1, 3000);
    cr_assert_eq(sb.n, 1);
    cr_assert_eq(stats(a).conns_out, 1);

    /* In use (a frame every 50 ms for 600 ms, three idle periods): it stays open. */
    uv_update_time(&e.loop);
    uint64_t end = uv_now(&e.loop) + 600, next = 0;
    bool dropped_while_used = false;
    while (uv_now(&e.loop) < end) {
        if (uv_now(&e.loop) >= next) {
            send_burst(a, KEY_B, idx++, 1, 64);
            next = uv_now(&e.loop) + 50;
        }
        uv_run(&e.loop, UV_RUN_ONCE);
        uv_update_time(&e.loop);
        if (stats(a).conns_out != 1)
            dropped_while_used = true;
    }
    cr_assert_not(dropped_while_used, "a connection in use was closed as idle");
    RUN_UNTIL(&e, sb.n >= idx, 2000);
    SINK_OK(&sb);
    cr_assert_eq(sb.n, idx);

    /* Unused: closed after about 200 ms, on both ends. */
    uv_update_time(&e.loop);
    uint64_t t0 = uv_now(&e.loop);
    RUN_UNTIL(&e, stats(a).conns_out == 0, 3000);
    uint64_t waited = uv_now(&e.loop) - t0;
    cr_assert_eq(stats(a).conns_out, 0, "the idle connection is still open after 3 s");
    cr_assert_geq(waited, 100, "closed after %llu ms, idle_close_ms is 200",
                  (unsigned long long)waited);
    cr_log_info("idle connection closed after %llu ms", (unsigned long long)waited);
    RUN_UNTIL(&e, stats(b).conns_in == 0, 2000);
    cr_assert_eq(stats(b).conns_in, 0, "the receiver did not see the idle close");

    /* The next send reconnects; nothing was lost and nothing is counted as dropped. */
    send_burst(a, KEY_B, idx++, 1, 64);
    RUN_UNTIL(&e, sb.n >= idx, 3000);
    SINK_OK(&sb);
    cr_assert_eq(sb.n, idx);
    kv_direct_stats as = stats(a);
    cr_assert_eq(as.conns_out, 1);
    cr_assert_eq(as.sent, idx);
    cr_assert_eq(as.dropped_conn_lost + as.dropped_unreachable + as.connect_failures, 0);
    pair_close(&e, a, b);
}
