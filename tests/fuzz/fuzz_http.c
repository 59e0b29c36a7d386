/*
 * fuzz_http.c — libFuzzer target for the HTTP/1.1 server's request path (src/http): the
 * input is what a client sends on one connection. Every input gets a fresh TCP connection
 * over 127.0.0.1 to a server running on this process's own libuv loop; the bytes are
 * written, the write side is shut down, and the loop runs until the server has answered
 * and closed the connection (it must: a client that sent EOF gets answers to its complete
 * requests, then the close). Crashes, sanitizer reports, leaks and hangs (libFuzzer's
 * -timeout) are findings.
 *
 * The handler answers half of the requests at once and the other half on the next loop
 * iteration, so out-of-order completion and the response FIFO are exercised too. Small
 * limits (1 KiB headers, 4 KiB bodies, pipeline depth 4) make the refusal paths (431,
 * 413, pipelining back-pressure) reachable. Single thread: the loop runs only inside
 * LLVMFuzzerTestOneInput. Logging is off unless FUZZ_LOG=1.
 */
#include "common/log.h"
#include "http/server.h"
#include "kvstore/error.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define FZ_MAX_DEFERRED 64

static uv_loop_t g_loop;
static kv_http_server *g_srv;
static int g_port;
static uv_idle_t g_idle;
static kv_http_req *g_deferred[FZ_MAX_DEFERRED];
static int g_ndeferred;

static void fz_die(const char *what)
{
    fprintf(stderr, "fuzz_http: %s: %s\n", what, strerror(errno));
    abort();
}

static void answer(kv_http_req *req)
{
    size_t hlen = 0;
    const char *host = kv_http_req_header(req, "Host", &hlen);
    kv_http_header h[1] = {{"X-Echo-Host", host ? host : "-"}};
    /* Echo the path and query: the response writer must cope with whatever they hold. */
    char body[256];
    int n = snprintf(body, sizeof body, "%.*s?%.*s %zu",
                     (int)(req->path_len > 100 ? 100 : req->path_len), req->path,
                     (int)(req->query_len > 100 ? 100 : req->query_len), req->query, req->body_len);
    kv_http_respond(req, req->body_len % 7 == 3 ? 404 : 200, "text/plain", h, 1, body,
                    (size_t)(n > 0 ? n : 0));
}

static void idle_cb(uv_idle_t *h)
{
    for (int i = 0; i < g_ndeferred; i++)
        answer(g_deferred[i]);
    g_ndeferred = 0;
    uv_idle_stop(h);
}

static void handler(kv_http_req *req, void *arg)
{
    (void)arg;
    if ((req->path_len & 1) && g_ndeferred < FZ_MAX_DEFERRED) {
        g_deferred[g_ndeferred++] = req;
        uv_idle_start(&g_idle, idle_cb);
        return;
    }
    answer(req);
}

static void fz_init(void)
{
    const char *lg = getenv("FUZZ_LOG");
    kv_log_setup(lg && *lg == '1' ? KV_LOG_DEBUG : (kv_log_level)(KV_LOG_ERROR + 1), KV_LOG_TEXT,
                 "fuzz");
    if (uv_loop_init(&g_loop) != 0)
        fz_die("uv_loop_init");
    uv_idle_init(&g_loop, &g_idle);
    kv_http_limits lim = {.max_header = 1024,
                          .max_body = 4096,
                          .max_connections = 16,
                          .idle_timeout_ms = 5000,
                          .request_timeout_ms = 5000,
                          .max_pipeline = 4};
    if (kv_http_server_start(&g_srv, &g_loop, "127.0.0.1", 0, &lim, handler, NULL, NULL) != KV_OK)
        fz_die("kv_http_server_start");
    g_port = kv_http_server_port(g_srv);
}

/* ---------- the client side of one input ---------- */

typedef struct fz_client {
    uv_poll_t poll;
    int fd;
    const uint8_t *data;
    size_t len, off;
    bool wr_done, closed, handle_closed;
} fz_client;

static void poll_cb(uv_poll_t *p, int status, int events)
{
    fz_client *c = p->data;
    if (status < 0) {
        c->closed = true;
        return;
    }
    if ((events & UV_WRITABLE) && !c->wr_done) {
        ssize_t w = send(c->fd, c->data + c->off, c->len - c->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0)
            c->off += (size_t)w;
        if ((w < 0 && errno != EAGAIN && errno != EINTR) || c->off == c->len) {
            shutdown(c->fd, SHUT_WR);
            c->wr_done = true;
        }
    }
    if (events & UV_READABLE) {
        char buf[16384];
        for (;;) {
            ssize_t r = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r > 0)
                continue;
            if (r == 0 || (errno != EAGAIN && errno != EINTR))
                c->closed = true;
            break;
        }
    }
    if (c->closed)
        uv_poll_stop(p);
    else
        uv_poll_start(p, UV_READABLE | (c->wr_done ? 0 : UV_WRITABLE), poll_cb);
}

static void poll_closed(uv_handle_t *h)
{
    ((fz_client *)h->data)->handle_closed = true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_srv)
        fz_init();
    fz_client c = {.data = data, .len = size};
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c.fd < 0)
        fz_die("socket");
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* Loopback connect completes in the kernel's backlog, before the loop accepts. */
    if (connect(c.fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        /* libFuzzer's timers can interrupt a connect waiting for backlog room: it carries on
         * in the kernel; wait for its outcome (CI once died here on EINTR). */
        if (errno != EINTR)
            fz_die("connect");
        struct pollfd pfd = {.fd = c.fd, .events = POLLOUT};
        int err = 0;
        socklen_t elen = sizeof err;
        int pr;
        while ((pr = poll(&pfd, 1, 5000)) < 0 && errno == EINTR) {
        }
        if (pr != 1 || getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0)
            fz_die("connect (after EINTR)");
    }
    if (size == 0) {
        shutdown(c.fd, SHUT_WR);
        c.wr_done = true;
    }
    uv_poll_init(&g_loop, &c.poll, c.fd);
    c.poll.data = &c;
    uv_poll_start(&c.poll, UV_READABLE | (c.wr_done ? 0 : UV_WRITABLE), poll_cb);
    while (!c.closed)
        uv_run(&g_loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&c.poll, poll_closed);
    while (!c.handle_closed)
        uv_run(&g_loop, UV_RUN_ONCE);
    close(c.fd);
    /* Let the server finish closing its side so connections never pile up. */
    uv_run(&g_loop, UV_RUN_NOWAIT);
    return 0;
}
