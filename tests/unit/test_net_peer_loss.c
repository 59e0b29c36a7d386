/*
 * test_net_peer_loss.c — the nng transport (src/net/transport.h) when a peer's connection
 * breaks in the middle of a stream of messages to it, again and again: sends never block
 * or fail with anything but a counted drop, and nothing is leaked. Under ASan the test asks
 * LeakSanitizer for a leak check at the end; a leak fails it.
 *
 * Why: nng before 1.6.0 loses a message it already accepted when the connection breaks as
 * a send completes (nng issue #1713). A killed or restarted peer is enough, and a node of a
 * sanitizer build then exited 1 ("detected memory leaks") after a clean SIGTERM. The
 * transport suppresses exactly those leaks (see transport.c); any other leak still fails.
 *
 * The peer is a plain TCP server on a thread of this process (no nng on that side): it
 * answers the SP handshake as a PULL socket, reads some of the stream, then resets the
 * connection (SO_LINGER 0), as the kernel does for a process killed with unread data.
 */
#include "kvstore/error.h"
#include "net/transport.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PL_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define PL_ASAN 1
#endif
#ifdef PL_ASAN
#include <sanitizer/lsan_interface.h>
#endif

#define ROUNDS     60
#define PER_ROUND  300
#define MSG_LEN    2048
#define READ_FIRST (64 * 1024) /* bytes the peer reads before it resets the connection */

typedef struct peer {
    int lfd;
    long got;
    bool accepted;
} peer;

static bool wait_readable(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, ms) == 1;
}

/* Accept one connection, answer the SP header as PULL (protocol 0x51), read READ_FIRST
 * bytes, reset. Every wait is bounded. */
static void *peer_main(void *arg)
{
    peer *p = arg;
    if (!wait_readable(p->lfd, 3000))
        return NULL;
    int fd = accept(p->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    p->accepted = true;
    static const unsigned char hdr[8] = {0, 'S', 'P', 0, 0x00, 0x51, 0, 0};
    if (write(fd, hdr, sizeof hdr) == (ssize_t)sizeof hdr) {
        char buf[16384];
        while (p->got < READ_FIRST && wait_readable(fd, 3000)) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n <= 0)
                break;
            p->got += n;
        }
    }
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    return NULL;
}

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(fd, 4), 0);
    socklen_t sl = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &sl);
    *port = ntohs(a.sin_port);
    return fd;
}

static void on_recv(void *arg, const uint8_t *data, size_t len)
{
    (void)arg;
    (void)data;
    (void)len;
}

static int closed;
static void on_closed(void *arg)
{
    (void)arg;
    closed++;
}

Test(net_peer_loss, a_connection_reset_mid_stream_costs_drops_never_a_leak)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    kv_net_opts oa = {.host = "127.0.0.1", .port = 0, .on_recv = on_recv};
    kv_net *a = NULL;
    cr_assert_eq(kv_net_open(&a, &loop, &oa), KV_OK);
    uint8_t *msg = malloc(MSG_LEN);
    cr_assert_not_null(msg);
    memset(msg, 0x5a, MSG_LEN);

    long sent = 0, dropped = 0, streamed = 0;
    int accepted = 0;
    for (int round = 0; round < ROUNDS; round++) {
        peer p = {0};
        int port;
        p.lfd = listen_any(&port);
        pthread_t th;
        cr_assert_eq(pthread_create(&th, NULL, peer_main, &p), 0);
        char to[32];
        snprintf(to, sizeof to, "127.0.0.1:%d", port);
        for (int i = 0; i < PER_ROUND; i++) {
            int rc = kv_net_send(a, to, KV_NET_LANE_REPL, msg, MSG_LEN);
            cr_assert(rc == KV_OK || rc == KV_EUNAVAIL, "send: unexpected result %d", rc);
            sent += rc == KV_OK;
            dropped += rc == KV_EUNAVAIL;
            if (i % 50 == 49)
                usleep(500); /* let the stream flow while we keep queueing */
        }
        pthread_join(th, NULL);
        close(p.lfd);
        accepted += p.accepted;
        streamed += p.got;
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    cr_log_info("%d rounds: %ld messages queued, %ld dropped, %d connections reset after "
                "%ld bytes in all",
                ROUNDS, sent, dropped, accepted, streamed);
    cr_assert_eq(accepted, ROUNDS, "the transport did not connect to every peer");
    closed = 0;
    kv_net_close(a, on_closed, NULL);
    for (int i = 0; i < 10000 && closed == 0; i++)
        uv_run(&loop, UV_RUN_ONCE);
    cr_assert_eq(closed, 1, "kv_net_close did not finish");
    uv_run(&loop, UV_RUN_NOWAIT);
    cr_assert_eq(uv_loop_close(&loop), 0, "handles left open after kv_net_close");
    free(msg);
#ifdef PL_ASAN
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "LeakSanitizer found leaks (above)");
#endif
}
