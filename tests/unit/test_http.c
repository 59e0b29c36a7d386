/*
 * test_http.c — the HTTP server (src/http/server.c) over real sockets on 127.0.0.1.
 *
 * Each test starts a server on port 0 with a small handler and runs its loop in a
 * thread of the test; the test itself is a blocking client that writes raw bytes and
 * reads raw responses, so what is checked is exactly what a client sees on the wire.
 * Server calls that must happen on the loop thread go through run_on_loop. Every wait
 * has a deadline.
 */
#include "http/metrics.h"
#include "http/server.h"
#include "kvstore/error.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- server in a thread */

typedef struct tsrv {
    uv_loop_t loop;
    uv_async_t wake;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void (*fn)(struct tsrv *, void *);
    void *fnarg;
    bool fn_done;
    kv_http_server *srv;
    kv_metrics *m;
    int port;
    atomic_int handled; /* requests the handler has seen */
    atomic_int async_answered;
    atomic_bool closed;     /* kv_http_server_close's done() ran */
    atomic_size_t inflight; /* sampled on the loop thread by sample_inflight */
} tsrv;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

typedef struct async_answer {
    uv_timer_t timer;
    kv_http_req *req;
    tsrv *ts;
    char id[32];
} async_answer;

static void on_async_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_async_timer(uv_timer_t *t)
{
    async_answer *a = t->data;
    char body[64];
    int n = snprintf(body, sizeof(body), "async %s", a->id);
    kv_http_respond(a->req, 200, "text/plain", NULL, 0, body, (size_t)n);
    atomic_fetch_add(&a->ts->async_answered, 1);
    uv_close((uv_handle_t *)&a->timer, on_async_closed);
}

/* Value of name=... in a query string, copied into out. */
static bool query_get(const char *q, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *p = q; p && *p;) {
        const char *amp = strchr(p, '&');
        size_t seg = amp ? (size_t)(amp - p) : strlen(p);
        if (seg > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            snprintf(out, cap, "%.*s", (int)(seg - nl - 1), p + nl + 1);
            return true;
        }
        p = amp ? amp + 1 : NULL;
    }
    return false;
}

/*
 * /echo    200 text/plain "METHOD path?query|x-test header|body"
 * /async   ?ms=N&id=X: answered N ms later, "async X"
 * /status  ?code=N: that status, body "x"
 * /patchme PATCH → 405 problem with Allow
 * other    404 problem
 */
static void handler(kv_http_req *req, void *arg)
{
    tsrv *ts = arg;
    atomic_fetch_add(&ts->handled, 1);
    char v[64];
    if (strcmp(req->path, "/echo") == 0) {
        req->route = "echo";
        size_t hl = 0;
        const char *h = kv_http_req_header(req, "x-test", &hl);
        kv_buf b = KV_BUF_INIT;
        kv_buf_printf(&b, "%s %s?%s|%.*s|", http_method_str((enum http_method)req->method),
                      req->path, req->query, (int)hl, h ? h : "");
        kv_buf_append(&b, req->body, req->body_len);
        char blen[32];
        snprintf(blen, sizeof(blen), "%zu", req->body_len);
        kv_http_header hdrs[] = {{"X-Body-Len", blen}};
        kv_http_respond(req, 200, "text/plain", hdrs, 1, b.data, b.len);
        kv_buf_free(&b);
    } else if (strcmp(req->path, "/async") == 0) {
        req->route = "async";
        async_answer *a = calloc(1, sizeof(*a));
        cr_assert(a);
        a->req = req;
        a->ts = ts;
        if (!query_get(req->query, "id", a->id, sizeof(a->id)))
            snprintf(a->id, sizeof(a->id), "?");
        int ms = query_get(req->query, "ms", v, sizeof(v)) ? atoi(v) : 10;
        uv_timer_init(&ts->loop, &a->timer);
        a->timer.data = a;
        uv_timer_start(&a->timer, on_async_timer, (uint64_t)ms, 0);
    } else if (strcmp(req->path, "/status") == 0) {
        req->route = "status";
        int code = query_get(req->query, "code", v, sizeof(v)) ? atoi(v) : 200;
        kv_http_respond(req, code, "text/plain", NULL, 0, "x", 1);
    } else if (strcmp(req->path, "/patchme") == 0) {
        req->route = "patchme";
        kv_http_header allow[] = {{"Allow", "GET, PUT, DELETE"}};
        kv_http_respond_problem_headers(req, 405, "method_not_allowed", "use \"GET\"\n", allow, 1);
    } else {
        req->route = "not_found";
        kv_http_respond_problem(req, 404, "route_not_found", req->path);
    }
}

static void on_wake(uv_async_t *a)
{
    tsrv *ts = a->data;
    pthread_mutex_lock(&ts->mu);
    if (ts->fn && !ts->fn_done) {
        ts->fn(ts, ts->fnarg);
        ts->fn_done = true;
        pthread_cond_broadcast(&ts->cv);
    }
    pthread_mutex_unlock(&ts->mu);
}

static void *loop_main(void *arg)
{
    tsrv *ts = arg;
    uv_run(&ts->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* Run fn(ts, arg) on the loop thread and wait for it to have run. */
static void run_on_loop(tsrv *ts, void (*fn)(tsrv *, void *), void *arg)
{
    pthread_mutex_lock(&ts->mu);
    ts->fn = fn;
    ts->fnarg = arg;
    ts->fn_done = false;
    uv_async_send(&ts->wake);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 5;
    while (!ts->fn_done) {
        int rc = pthread_cond_timedwait(&ts->cv, &ts->mu, &dl);
        cr_assert(rc == 0, "loop thread did not run the call in time");
    }
    ts->fn = NULL;
    pthread_mutex_unlock(&ts->mu);
}

static kv_http_limits test_limits(void)
{
    return (kv_http_limits){
        .max_header = 1024,
        .max_body = 4096,
        .max_connections = 16,
        .idle_timeout_ms = 3000,
        .request_timeout_ms = 3000,
        .max_pipeline = 8,
    };
}

static tsrv *ts_start(const kv_http_limits *lim)
{
    tsrv *ts = calloc(1, sizeof(*ts));
    cr_assert(ts);
    cr_assert(uv_loop_init(&ts->loop) == 0);
    pthread_mutex_init(&ts->mu, NULL);
    pthread_cond_init(&ts->cv, NULL);
    uv_async_init(&ts->loop, &ts->wake, on_wake);
    ts->wake.data = ts;
    ts->m = kv_metrics_new();
    cr_assert(ts->m);
    /* The loop thread does not exist yet, so this thread may act as the loop thread. */
    int rc = kv_http_server_start(&ts->srv, &ts->loop, "127.0.0.1", 0, lim, handler, ts, ts->m);
    cr_assert(rc == KV_OK, "start: %d", rc);
    ts->port = kv_http_server_port(ts->srv);
    cr_assert(ts->port > 0);
    cr_assert(pthread_create(&ts->th, NULL, loop_main, ts) == 0);
    return ts;
}

static void on_server_closed(void *arg)
{
    tsrv *ts = arg;
    atomic_store(&ts->closed, true);
    uv_close((uv_handle_t *)&ts->wake, NULL);
}

static void do_close(tsrv *ts, void *arg)
{
    kv_http_server_close(ts->srv, on_server_closed, ts);
}

static void do_sample_inflight(tsrv *ts, void *arg)
{
    atomic_store(&ts->inflight, kv_http_server_inflight(ts->srv));
}

/* Wait for the loop thread to finish after a close was started. */
static void ts_join(tsrv *ts)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 5;
    cr_assert(pthread_timedjoin_np(ts->th, NULL, &dl) == 0, "loop did not finish");
    cr_assert(atomic_load(&ts->closed), "done callback not called");
    cr_assert(uv_loop_close(&ts->loop) == 0, "handles left open on the loop");
}

/* Close the server, wait for the loop to end; returns the rendered metrics (free it). */
static char *ts_stop(tsrv *ts)
{
    run_on_loop(ts, do_close, NULL);
    ts_join(ts);
    kv_buf out = KV_BUF_INIT;
    cr_assert(kv_metrics_render(ts->m, &out) == KV_OK);
    kv_metrics_free(ts->m);
    pthread_mutex_destroy(&ts->mu);
    pthread_cond_destroy(&ts->cv);
    free(ts);
    return out.data;
}

static void ts_stop_free(tsrv *ts)
{
    free(ts_stop(ts));
}

static bool wait_atomic_at_least(atomic_int *v, int want, int timeout_ms)
{
    uint64_t dl = now_ms() + (uint64_t)timeout_ms;
    while (atomic_load(v) < want) {
        if (now_ms() > dl)
            return false;
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL); /* polling a condition with a deadline */
    }
    return true;
}

/* ---------------------------------------------------------------- blocking client */

typedef struct cli {
    int fd;
    char *buf;
    size_t len, cap;
    bool eof;
} cli;

typedef struct resp {
    int status;
    char head[4096]; /* raw status line + headers, NUL-terminated */
    char *body;      /* NUL-terminated */
    size_t body_len;
} resp;

static cli *cli_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(0x7f000001);
    cr_assert(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "connect: %s", strerror(errno));
    cli *c = calloc(1, sizeof(*c));
    cr_assert(c);
    c->fd = fd;
    c->cap = 1 << 20;
    c->buf = malloc(c->cap);
    cr_assert(c->buf);
    return c;
}

static void cli_close(cli *c)
{
    close(c->fd);
    free(c->buf);
    free(c);
}

static void cli_send(cli *c, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        cr_assert(n > 0, "send: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

static void cli_sends(cli *c, const char *s)
{
    cli_send(c, s, strlen(s));
}

/* Read more bytes, waiting until deadline. 1 got bytes, 0 EOF/reset, -1 timeout. */
static int cli_fill(cli *c, uint64_t deadline)
{
    for (;;) {
        uint64_t now = now_ms();
        if (now >= deadline)
            return -1;
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            return -1;
        cr_assert(c->len < c->cap, "client buffer full");
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            c->eof = true;
            return 0;
        }
        c->len += (size_t)n;
        return 1;
    }
}

static const char *find_crlf2(const char *b, size_t len)
{
    for (size_t i = 0; i + 3 < len; i++)
        if (b[i] == '\r' && b[i + 1] == '\n' && b[i + 2] == '\r' && b[i + 3] == '\n')
            return b + i;
    return NULL;
}

/* Header value in a raw header block (case-insensitive name); false if absent. */
static bool resp_header(const resp *r, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = strstr(r->head, "\r\n");
    while (p && p[2] != '\0' && !(p[2] == '\r' && p[3] == '\n')) {
        const char *line = p + 2;
        const char *end = strstr(line, "\r\n");
        if (!end)
            break;
        if ((size_t)(end - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ')
                v++;
            snprintf(out, cap, "%.*s", (int)(end - v), v);
            return true;
        }
        p = end;
    }
    return false;
}

/*
 * Read one response (bodies framed by Content-Length; none for HEAD, 1xx, 204, 304).
 * 0 on success, -1 on timeout or EOF before a whole response.
 */
static int cli_read(cli *c, resp *r, bool head_req, int timeout_ms)
{
    uint64_t dl = now_ms() + (uint64_t)timeout_ms;
    memset(r, 0, sizeof(*r));
    const char *end;
    while (!(end = find_crlf2(c->buf, c->len))) {
        if (c->eof || cli_fill(c, dl) <= 0)
            return -1;
    }
    size_t hlen = (size_t)(end - c->buf) + 4;
    cr_assert(hlen < sizeof(r->head), "response head too long");
    memcpy(r->head, c->buf, hlen);
    r->head[hlen] = '\0';
    cr_assert(sscanf(r->head, "HTTP/1.1 %d", &r->status) == 1, "bad status line: %s", r->head);
    char cl[32];
    size_t blen = 0;
    bool no_body = head_req || r->status / 100 == 1 || r->status == 204 || r->status == 304;
    if (!no_body && resp_header(r, "Content-Length", cl, sizeof(cl)))
        blen = (size_t)strtoull(cl, NULL, 10);
    while (c->len < hlen + blen) {
        if (c->eof || cli_fill(c, dl) <= 0)
            return -1;
    }
    r->body = malloc(blen + 1);
    cr_assert(r->body);
    memcpy(r->body, c->buf + hlen, blen);
    r->body[blen] = '\0';
    r->body_len = blen;
    memmove(c->buf, c->buf + hlen + blen, c->len - hlen - blen);
    c->len -= hlen + blen;
    return 0;
}

static void resp_free(resp *r)
{
    free(r->body);
    r->body = NULL;
}

/* True if the server closes the connection (EOF or reset, with no further bytes) within
 * timeout_ms. */
static bool cli_wait_closed(cli *c, int timeout_ms)
{
    uint64_t dl = now_ms() + (uint64_t)timeout_ms;
    while (!c->eof) {
        size_t before = c->len;
        int rc = cli_fill(c, dl);
        if (rc < 0)
            return false;
        if (rc > 0 && c->len > before)
            return false; /* unexpected bytes */
    }
    return c->len == 0;
}

static void expect_problem(const resp *r, int status, const char *code)
{
    cr_assert_eq(r->status, status, "status %d, want %d", r->status, status);
    char ct[128];
    cr_assert(resp_header(r, "Content-Type", ct, sizeof(ct)));
    cr_assert_str_eq(ct, "application/problem+json");
    char want[128];
    snprintf(want, sizeof(want), "\"code\":\"%s\"", code);
    cr_assert(strstr(r->body, want), "body %s lacks %s", r->body, want);
    snprintf(want, sizeof(want), "\"type\":\"urn:kvstore:problem:%s\"", code);
    cr_assert(strstr(r->body, want), "body %s lacks %s", r->body, want);
    snprintf(want, sizeof(want), "\"status\":%d", status);
    cr_assert(strstr(r->body, want), "body %s lacks %s", r->body, want);
}

static void expect_conn_header(const resp *r, const char *want)
{
    char v[64];
    cr_assert(resp_header(r, "Connection", v, sizeof(v)), "no Connection header");
    cr_assert_str_eq(v, want);
}

/* ---------------------------------------------------------------- tests */

TestSuite(http, .timeout = 20);

Test(http, simple_get)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "GET /echo?a=1&b=2 HTTP/1.1\r\nHost: x\r\nX-Test: hello\r\n\r\n");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "GET /echo?a=1&b=2|hello|");
    char v[128];
    cr_assert(resp_header(&r, "Content-Type", v, sizeof(v)));
    cr_assert_str_eq(v, "text/plain");
    cr_assert(resp_header(&r, "Content-Length", v, sizeof(v)));
    cr_assert_eq((size_t)atoi(v), r.body_len);
    cr_assert(resp_header(&r, "Date", v, sizeof(v)));
    cr_assert(strstr(v, "GMT"));
    cr_assert(resp_header(&r, "X-Body-Len", v, sizeof(v)));
    cr_assert_str_eq(v, "0");
    expect_conn_header(&r, "keep-alive");
    resp_free(&r);
    cli_close(c);
    char *m = ts_stop(ts);
    cr_assert(strstr(m, "kv_http_requests_total{route=\"echo\",method=\"GET\",status=\"200\"} 1\n"),
              "%s", m);
    cr_assert(strstr(m, "kv_http_request_duration_seconds_count{route=\"echo\"} 1\n"), "%s", m);
    cr_assert(strstr(m, "# TYPE kv_http_connections gauge\nkv_http_connections 0\n"), "%s", m);
    free(m);
}

Test(http, keep_alive_two_requests_one_connection)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    resp r;
    cli_sends(c, "GET /echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "GET /echo?n=1||");
    resp_free(&r);
    cli_sends(c, "PUT /echo?n=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nvalue");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "PUT /echo?n=2||value");
    expect_conn_header(&r, "keep-alive");
    resp_free(&r);
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, pipelined_out_of_order_answers_come_back_in_order)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "GET /async?ms=250&id=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /async?ms=20&id=2 HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /echo?id=3 HTTP/1.1\r\nHost: x\r\n\r\n");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "async 1");
    resp_free(&r);
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "async 2");
    resp_free(&r);
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "GET /echo?id=3||");
    expect_conn_header(&r, "keep-alive");
    resp_free(&r);
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, pipeline_beyond_max_pipeline_pauses_and_resumes)
{
    kv_http_limits lim = test_limits();
    lim.max_pipeline = 2;
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    kv_buf b = KV_BUF_INIT;
    for (int i = 0; i < 20; i++) {
        if (i % 3 == 0)
            kv_buf_printf(&b, "GET /async?ms=5&id=%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
        else
            kv_buf_printf(&b, "POST /echo?id=%d HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", i);
    }
    cli_send(c, b.data, b.len);
    kv_buf_free(&b);
    for (int i = 0; i < 20; i++) {
        resp r;
        cr_assert(cli_read(c, &r, false, 3000) == 0, "response %d missing", i);
        char want[64];
        if (i % 3 == 0)
            snprintf(want, sizeof(want), "async %d", i);
        else
            snprintf(want, sizeof(want), "POST /echo?id=%d||abc", i);
        cr_assert_str_eq(r.body, want);
        resp_free(&r);
    }
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, chunked_body)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "POST /echo?||hello world");
    resp_free(&r);
    /* The connection is still usable after a chunked body with a trailer. */
    cli_sends(c, "GET /echo HTTP/1.1\r\n\r\n");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "GET /echo?||");
    resp_free(&r);
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, chunked_body_over_limit_is_413)
{
    kv_http_limits lim = test_limits();
    lim.max_body = 10;
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "8\r\n12345678\r\n8\r\n12345678\r\n");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    expect_problem(&r, 413, "value_too_large");
    expect_conn_header(&r, "close");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, connection_close_is_honoured)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_eq(r.status, 200);
    expect_conn_header(&r, "close");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000), "server kept the connection open");
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, http10_closes_unless_keep_alive)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    resp r;
    cli_sends(c, "GET /echo?v=10ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    expect_conn_header(&r, "keep-alive");
    resp_free(&r);
    cli_sends(c, "GET /echo?v=10 HTTP/1.0\r\n\r\n");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "GET /echo?v=10||");
    expect_conn_header(&r, "close");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, oversized_headers_are_431)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    char big[2048];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    kv_buf b = KV_BUF_INIT;
    kv_buf_printf(&b, "GET /echo HTTP/1.1\r\nX-Big: %s\r\n\r\n", big);
    cli_send(c, b.data, b.len);
    kv_buf_free(&b);
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    expect_problem(&r, 431, "headers_too_large");
    expect_conn_header(&r, "close");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);
    char *m = ts_stop(ts);
    cr_assert(strstr(m, "kv_http_rejected_total{reason=\"headers_too_large\"} 1\n"), "%s", m);
    cr_assert(
        strstr(m, "kv_http_requests_total{route=\"invalid\",method=\"GET\",status=\"431\"} 1"),
        "%s", m);
    free(m);
}

Test(http, oversized_url_is_431)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    kv_buf b = KV_BUF_INIT;
    kv_buf_appends(&b, "GET /");
    for (int i = 0; i < 3000; i++)
        kv_buf_append(&b, "k", 1);
    kv_buf_appends(&b, " HTTP/1.1\r\n\r\n");
    cli_send(c, b.data, b.len);
    kv_buf_free(&b);
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    expect_problem(&r, 431, "headers_too_large");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, oversized_content_length_is_413_without_reading_body)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "PUT /echo HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    expect_problem(&r, 413, "value_too_large");
    expect_conn_header(&r, "close");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);
    cr_assert_eq(atomic_load(&ts->handled), 0);
    char *m = ts_stop(ts);
    cr_assert(strstr(m, "kv_http_rejected_total{reason=\"body_too_large\"} 1\n"), "%s", m);
    free(m);
}

Test(http, garbage_is_400_and_closes)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "\x01\x02\xff garbage \r\n\r\n");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    expect_problem(&r, 400, "bad_request");
    expect_conn_header(&r, "close");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);

    c = cli_open(ts->port);
    cli_sends(c, "GET /echo HTTP/1.1\r\nBad\x01Name: x\r\n\r\n");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    expect_problem(&r, 400, "bad_request");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);

    char *m = ts_stop(ts);
    cr_assert(strstr(m, "kv_http_rejected_total{reason=\"malformed\"} 2\n"), "%s", m);
    cr_assert(strstr(m, "route=\"invalid\",method=\"UNKNOWN\",status=\"400\"} 1"), "%s", m);
    free(m);
}

Test(http, error_after_pipelined_request_keeps_order)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "GET /async?ms=150&id=first HTTP/1.1\r\n\r\n"
                 "GET /echo?id=second HTTP/1.1\r\n\r\n"
                 "\x01garbage\r\n\r\n");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "async first");
    resp_free(&r);
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "GET /echo?id=second||");
    resp_free(&r);
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    expect_problem(&r, 400, "bad_request");
    expect_conn_header(&r, "close");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, stalled_request_is_408)
{
    kv_http_limits lim = test_limits();
    lim.request_timeout_ms = 300;
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    uint64_t t0 = now_ms();
    cli_sends(c, "GET /echo HTTP/1.1\r\nHost: x\r\n");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    uint64_t took = now_ms() - t0;
    expect_problem(&r, 408, "request_timeout");
    expect_conn_header(&r, "close");
    cr_assert(took >= 250, "408 after %llu ms", (unsigned long long)took);
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);

    /* A stalled body too. */
    c = cli_open(ts->port);
    cli_sends(c, "PUT /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    expect_problem(&r, 408, "request_timeout");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);
    char *m = ts_stop(ts);
    cr_assert(strstr(m, "kv_http_rejected_total{reason=\"timeout\"} 2\n"), "%s", m);
    free(m);
}

Test(http, idle_keep_alive_connection_is_closed)
{
    kv_http_limits lim = test_limits();
    lim.idle_timeout_ms = 300;
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    resp r;
    cli_sends(c, "GET /echo HTTP/1.1\r\n\r\n");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    resp_free(&r);
    uint64_t t0 = now_ms();
    cr_assert(cli_wait_closed(c, 3000), "idle connection not closed");
    cr_assert(now_ms() - t0 >= 200);
    cli_close(c);
    /* A connection that never sends anything, too. */
    c = cli_open(ts->port);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);
    char *m = ts_stop(ts);
    cr_assert(strstr(m, "kv_http_rejected_total{reason=\"idle_closed\"} 2\n"), "%s", m);
    free(m);
}

Test(http, connection_over_max_connections_gets_503)
{
    kv_http_limits lim = test_limits();
    lim.max_connections = 2;
    tsrv *ts = ts_start(&lim);
    cli *a = cli_open(ts->port);
    cli *b = cli_open(ts->port);
    resp r;
    /* A request on each makes sure both are accepted before the third arrives. */
    cli_sends(a, "GET /echo HTTP/1.1\r\n\r\n");
    cr_assert(cli_read(a, &r, false, 3000) == 0);
    resp_free(&r);
    cli_sends(b, "GET /echo HTTP/1.1\r\n\r\n");
    cr_assert(cli_read(b, &r, false, 3000) == 0);
    resp_free(&r);
    cli *c = cli_open(ts->port);
    cli_sends(c, "GET /echo HTTP/1.1\r\n\r\n");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    expect_problem(&r, 503, "too_many_connections");
    expect_conn_header(&r, "close");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);
    /* The first two still work; once one leaves, a new connection is accepted. */
    cli_sends(a, "GET /echo?still=1 HTTP/1.1\r\n\r\n");
    cr_assert(cli_read(a, &r, false, 3000) == 0);
    cr_assert_eq(r.status, 200);
    resp_free(&r);
    cli_sends(b, "GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n");
    cr_assert(cli_read(b, &r, false, 3000) == 0);
    resp_free(&r);
    cr_assert(cli_wait_closed(b, 3000));
    cli_close(b);
    /* The server notices b's close within a loop iteration or two; retry with a
     * deadline rather than sleeping. */
    uint64_t dl = now_ms() + 3000;
    int status = 0;
    while (now_ms() < dl) {
        c = cli_open(ts->port);
        cli_sends(c, "GET /echo HTTP/1.1\r\n\r\n");
        cr_assert(cli_read(c, &r, false, 3000) == 0);
        status = r.status;
        resp_free(&r);
        cli_close(c);
        if (status == 200)
            break;
    }
    cr_assert_eq(status, 200);
    cli_close(a);
    char *m = ts_stop(ts);
    cr_assert(strstr(m, "kv_http_rejected_total{reason=\"too_many_connections\"} "), "%s", m);
    free(m);
}

Test(http, graceful_close_waits_for_inflight_request)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *idle = cli_open(ts->port);
    cli *c = cli_open(ts->port);
    cli_sends(c, "GET /async?ms=300&id=last HTTP/1.1\r\n\r\n");
    cr_assert(wait_atomic_at_least(&ts->handled, 1, 3000));
    run_on_loop(ts, do_sample_inflight, NULL);
    cr_assert_eq(atomic_load(&ts->inflight), 1);
    run_on_loop(ts, do_close, NULL);
    /* The idle connection is closed at once; the busy one gets its answer first. */
    cr_assert(cli_wait_closed(idle, 3000));
    cr_assert(!atomic_load(&ts->closed));
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "async last");
    expect_conn_header(&r, "close");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);
    cli_close(idle);
    ts_join(ts);
    kv_metrics_free(ts->m);
    free(ts);
}

Test(http, head_and_204_have_no_body)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    resp r;
    char v[64];
    cli_sends(c, "HEAD /status?code=200 HTTP/1.1\r\n\r\n");
    cr_assert(cli_read(c, &r, true, 3000) == 0);
    cr_assert_eq(r.status, 200);
    cr_assert(resp_header(&r, "Content-Length", v, sizeof(v)));
    cr_assert_str_eq(v, "1");
    resp_free(&r);
    cli_sends(c, "GET /status?code=204 HTTP/1.1\r\n\r\n");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_eq(r.status, 204);
    cr_assert(!resp_header(&r, "Content-Length", v, sizeof(v)));
    resp_free(&r);
    /* No stray body bytes: the next response starts right here. */
    cli_sends(c, "GET /echo?after=1 HTTP/1.1\r\n\r\n");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "GET /echo?after=1||");
    resp_free(&r);
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, unsupported_method_reaches_handler)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "PATCH /patchme HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    expect_problem(&r, 405, "method_not_allowed");
    char v[64];
    cr_assert(resp_header(&r, "Allow", v, sizeof(v)));
    cr_assert_str_eq(v, "GET, PUT, DELETE");
    /* detail is JSON-escaped */
    cr_assert(strstr(r.body, "\"detail\":\"use \\\"GET\\\"\\u000a\""), "%s", r.body);
    cr_assert(strstr(r.body, "\"title\":\"Method not allowed\""), "%s", r.body);
    expect_conn_header(&r, "keep-alive");
    resp_free(&r);
    cli_close(c);
    char *m = ts_stop(ts);
    cr_assert(strstr(m, "route=\"patchme\",method=\"PATCH\",status=\"405\"} 1"), "%s", m);
    free(m);
}

Test(http, absolute_url_and_fragment)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    resp r;
    cli_sends(c, "GET http://example.com:80/echo?q=1 HTTP/1.1\r\n\r\n");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "GET /echo?q=1||");
    resp_free(&r);
    cli_sends(c, "GET /echo#frag HTTP/1.1\r\n\r\n");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "GET /echo?||");
    resp_free(&r);
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, expect_100_continue)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    resp r;
    cli_sends(c, "PUT /echo HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_eq(r.status, 100);
    resp_free(&r);
    cli_sends(c, "data");
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "PUT /echo?||data");
    resp_free(&r);
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, client_gone_while_request_at_handler)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "GET /async?ms=200&id=a HTTP/1.1\r\n\r\nGET /async?ms=100&id=b HTTP/1.1\r\n\r\n");
    cr_assert(wait_atomic_at_least(&ts->handled, 2, 3000));
    cli_close(c);
    cr_assert(wait_atomic_at_least(&ts->async_answered, 2, 3000));
    run_on_loop(ts, do_sample_inflight, NULL);
    cr_assert_eq(atomic_load(&ts->inflight), 0);
    /* The server is still fine. */
    c = cli_open(ts->port);
    cli_sends(c, "GET /echo HTTP/1.1\r\n\r\n");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_eq(r.status, 200);
    resp_free(&r);
    cli_close(c);
    char *m = ts_stop(ts);
    cr_assert(strstr(m, "route=\"async\",method=\"GET\",status=\"200\"} 2"), "%s", m);
    free(m);
}

Test(http, half_closed_client_still_gets_answers)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "GET /async?ms=50&id=x HTTP/1.1\r\n\r\nGET /echo HTTP/1.1\r\n\r\n");
    shutdown(c->fd, SHUT_WR);
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "async x");
    resp_free(&r);
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "GET /echo?||");
    expect_conn_header(&r, "close");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, random_bytes_never_crash)
{
    kv_http_limits lim = test_limits();
    lim.max_connections = 200;
    lim.request_timeout_ms = 300;
    lim.idle_timeout_ms = 300;
    tsrv *ts = ts_start(&lim);
    static const char *valid = "POST /echo?x=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked"
                               "\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /echo HTTP/1.1\r\n\r\n";
    unsigned seed = 12345;
    enum { N = 60 };
    cli *cs[N];
    for (int i = 0; i < N; i++) {
        cs[i] = cli_open(ts->port);
        char msg[512];
        size_t len;
        if (i % 2 == 0) {
            /* a valid request with a few bytes flipped */
            len = strlen(valid);
            memcpy(msg, valid, len);
            for (int k = 0; k < 3; k++)
                msg[rand_r(&seed) % len] = (char)(rand_r(&seed) & 0xff);
        } else {
            len = 1 + (size_t)(rand_r(&seed) % 300);
            for (size_t k = 0; k < len; k++)
                msg[k] = (char)(rand_r(&seed) & 0xff);
        }
        cli_send(cs[i], msg, len);
    }
    /* Every connection ends: an answer then a close, or a timeout close. */
    for (int i = 0; i < N; i++) {
        uint64_t dl = now_ms() + 5000;
        while (!cs[i]->eof) {
            cr_assert(cli_fill(cs[i], dl) >= 0, "connection %d still open", i);
            cs[i]->len = 0;
        }
        cli_close(cs[i]);
    }
    cli *c = cli_open(ts->port);
    cli_sends(c, "GET /echo HTTP/1.1\r\n\r\n");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_eq(r.status, 200);
    resp_free(&r);
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, unknown_route_gets_problem)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "GET /nope%22x HTTP/1.1\r\n\r\n");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    expect_problem(&r, 404, "route_not_found");
    cr_assert(strstr(r.body, "\"detail\":\"/nope%22x\""), "%s", r.body);
    resp_free(&r);
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, request_split_into_single_bytes)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    const char *req = "POST /echo?split=1 HTTP/1.1\r\nHost: x\r\nX-Test: piece by piece\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n";
    for (size_t i = 0; req[i]; i++) {
        cli_send(c, &req[i], 1);
        /* let the server see each byte in its own read most of the time */
        struct timespec d = {0, 200 * 1000};
        nanosleep(&d, NULL);
    }
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "POST /echo?split=1|piece by piece|abcdef");
    resp_free(&r);
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, large_pipelined_bodies_keep_order)
{
    kv_http_limits lim = test_limits();
    lim.max_body = 1 << 20;
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    enum { N = 4, SZ = 400 * 1000 };
    char *val = malloc(SZ);
    cr_assert(val);
    kv_buf b = KV_BUF_INIT;
    for (int i = 0; i < N; i++) {
        memset(val, 'a' + i, SZ);
        kv_buf_printf(&b, "PUT /echo?i=%d HTTP/1.1\r\nContent-Length: %d\r\n\r\n", i, SZ);
        kv_buf_append(&b, val, SZ);
    }
    /* Send and read at the same time would need two threads; the kernel buffers on
     * loopback hold a few MB, so send everything first. */
    cli_send(c, b.data, b.len);
    kv_buf_free(&b);
    for (int i = 0; i < N; i++) {
        resp r;
        cr_assert(cli_read(c, &r, false, 5000) == 0, "response %d", i);
        char prefix[64];
        int pl = snprintf(prefix, sizeof(prefix), "PUT /echo?i=%d||", i);
        cr_assert_eq(r.body_len, (size_t)pl + SZ);
        cr_assert(memcmp(r.body, prefix, (size_t)pl) == 0);
        memset(val, 'a' + i, SZ);
        cr_assert(memcmp(r.body + pl, val, SZ) == 0);
        resp_free(&r);
    }
    free(val);
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, upgrade_request_is_answered_then_closed)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "GET /echo?up=1 HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                 "\x81\x85not http at all");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "GET /echo?up=1||");
    expect_conn_header(&r, "close");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);
    ts_stop_free(ts);
}

Test(http, requests_after_connection_close_are_ignored)
{
    kv_http_limits lim = test_limits();
    tsrv *ts = ts_start(&lim);
    cli *c = cli_open(ts->port);
    cli_sends(c, "GET /echo?n=1 HTTP/1.1\r\nConnection: close\r\n\r\n"
                 "GET /echo?n=2 HTTP/1.1\r\n\r\n");
    resp r;
    cr_assert(cli_read(c, &r, false, 3000) == 0);
    cr_assert_str_eq(r.body, "GET /echo?n=1||");
    expect_conn_header(&r, "close");
    resp_free(&r);
    cr_assert(cli_wait_closed(c, 3000));
    cli_close(c);
    cr_assert_eq(atomic_load(&ts->handled), 1);
    ts_stop_free(ts);
}

static void noop_handler(kv_http_req *req, void *arg)
{
    kv_http_respond(req, 200, NULL, NULL, 0, NULL, 0);
}

static int closed_count;

static void count_closed(void *arg)
{
    closed_count++;
}

Test(http, port_in_use_is_eio_and_close_without_connections)
{
    uv_loop_t loop;
    cr_assert(uv_loop_init(&loop) == 0);
    kv_http_server *a = NULL, *b = NULL;
    cr_assert(kv_http_server_start(&a, &loop, "127.0.0.1", 0, NULL, noop_handler, NULL, NULL) ==
              KV_OK);
    int port = kv_http_server_port(a);
    cr_assert(port > 0);
    cr_assert_eq(kv_http_server_start(&b, &loop, "127.0.0.1", port, NULL, noop_handler, NULL, NULL),
                 KV_EIO);
    cr_assert_null(b);
    cr_assert_eq(
        kv_http_server_start(&b, &loop, "127.0.0.1", 70000, NULL, noop_handler, NULL, NULL),
        KV_EINVAL);
    kv_http_server_close(a, count_closed, NULL);
    cr_assert_eq(closed_count, 0, "done() must not run inside close");
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(closed_count, 1);
    cr_assert(uv_loop_close(&loop) == 0);
}
