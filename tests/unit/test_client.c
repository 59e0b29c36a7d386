/*
 * test_client.c — unit tests of the C client library: URL parsing, key percent-encoding,
 * the problem+json field reader, and response handling against a scripted fake server
 * that runs in a thread of the test on a 127.0.0.1 socket and answers with canned bytes.
 *
 * The fake server follows a script of steps, one per request it reads: send these bytes
 * (or nothing), then keep the connection, close it, or hang until the test ends. Every
 * wait in it is a poll() that also watches a stop pipe, so a test never hangs on it.
 */
#include "client/json.h"
#include "client/url.h"
#include "kvstore/client.h"

#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- fake server ------------------------------------------------------------------- */

enum { FS_KEEP, FS_CLOSE, FS_HANG };

typedef struct fake_step {
    const char *resp; /* bytes to send after reading a request; NULL = send nothing */
    size_t len;       /* 0 = strlen(resp) */
    int after;        /* FS_KEEP, FS_CLOSE or FS_HANG */
} fake_step;

#define FAKE_MAX_REQ 8

typedef struct fake_srv {
    int lfd;
    int port;
    int stop[2];
    pthread_t th;
    const fake_step *steps;
    int nsteps;
    pthread_mutex_t mu;
    int accepts;
    int nreq;
    char req[FAKE_MAX_REQ][4096]; /* request line and headers */
    char body[FAKE_MAX_REQ][256]; /* start of the request body */
    size_t body_len[FAKE_MAX_REQ];
} fake_srv;

/* Wait for fd to be readable; false if the stop pipe fired. */
static bool fake_wait(fake_srv *f, int fd)
{
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = f->stop[0], .events = POLLIN}};
    for (;;) {
        int n = poll(p, 2, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || (p[1].revents & POLLIN))
            return false;
        if (p[0].revents)
            return true;
    }
}

/* Read one request (head + Content-Length body). 0, or -1 on EOF/stop. */
static int fake_read_request(fake_srv *f, int fd)
{
    char buf[8192];
    size_t len = 0;
    char *end = NULL;
    while (!end) {
        if (len == sizeof(buf) - 1 || !fake_wait(f, fd))
            return -1;
        ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (n <= 0)
            return -1;
        len += (size_t)n;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    size_t head = (size_t)(end - buf) + 4;
    size_t clen = 0;
    for (char *h = buf; h < end; h = strstr(h, "\r\n") + 2)
        if (strncasecmp(h, "Content-Length:", 15) == 0)
            clen = strtoul(h + 15, NULL, 10);
    size_t got = len - head;
    pthread_mutex_lock(&f->mu);
    int i = f->nreq < FAKE_MAX_REQ ? f->nreq : FAKE_MAX_REQ - 1;
    snprintf(f->req[i], sizeof(f->req[i]), "%.*s", (int)head, buf);
    size_t keep = got < sizeof(f->body[i]) ? got : sizeof(f->body[i]);
    memcpy(f->body[i], buf + head, keep);
    f->body_len[i] = clen;
    pthread_mutex_unlock(&f->mu);
    while (got < clen) {
        if (!fake_wait(f, fd))
            return -1;
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    pthread_mutex_lock(&f->mu);
    f->nreq++;
    pthread_mutex_unlock(&f->mu);
    return 0;
}

static void *fake_main(void *arg)
{
    fake_srv *f = arg;
    int conn = -1;
    for (int s = 0; s < f->nsteps;) {
        if (conn < 0) {
            if (!fake_wait(f, f->lfd))
                break;
            conn = accept(f->lfd, NULL, NULL);
            if (conn < 0)
                continue;
            pthread_mutex_lock(&f->mu);
            f->accepts++;
            pthread_mutex_unlock(&f->mu);
        }
        if (fake_read_request(f, conn) != 0) {
            /* The client dropped this connection: the same step applies to the next. */
            close(conn);
            conn = -1;
            continue;
        }
        const fake_step *st = &f->steps[s++];
        if (st->resp) {
            size_t len = st->len ? st->len : strlen(st->resp);
            for (size_t off = 0; off < len;) {
                ssize_t n = send(conn, st->resp + off, len - off, MSG_NOSIGNAL);
                if (n <= 0)
                    break;
                off += (size_t)n;
            }
        }
        if (st->after == FS_HANG) {
            struct pollfd p = {.fd = f->stop[0], .events = POLLIN};
            while (poll(&p, 1, -1) < 0 && errno == EINTR)
                ;
            break;
        }
        if (st->after == FS_CLOSE) {
            close(conn);
            conn = -1;
        }
    }
    /* Script done: hold the last connection until stopped, like an idle keep-alive. */
    if (conn >= 0) {
        struct pollfd p = {.fd = f->stop[0], .events = POLLIN};
        while (poll(&p, 1, -1) < 0 && errno == EINTR)
            ;
        close(conn);
    }
    return NULL;
}

static fake_srv *fake_start(const fake_step *steps, int nsteps)
{
    fake_srv *f = calloc(1, sizeof(*f));
    cr_assert_not_null(f);
    f->steps = steps;
    f->nsteps = nsteps;
    pthread_mutex_init(&f->mu, NULL);
    cr_assert_eq(pipe(f->stop), 0);
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(f->lfd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(f->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(f->lfd, 8), 0);
    socklen_t alen = sizeof(a);
    cr_assert_eq(getsockname(f->lfd, (struct sockaddr *)&a, &alen), 0);
    f->port = ntohs(a.sin_port);
    cr_assert_eq(pthread_create(&f->th, NULL, fake_main, f), 0);
    return f;
}

static void fake_stop(fake_srv *f)
{
    cr_assert_eq(write(f->stop[1], "x", 1), 1);
    pthread_join(f->th, NULL);
    close(f->lfd);
    close(f->stop[0]);
    close(f->stop[1]);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static int fake_accepts(fake_srv *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->accepts;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static int fake_nreq(fake_srv *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->nreq;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static kv_client *client_for(fake_srv *f, uint64_t timeout_ms, uint64_t max_body)
{
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", f->port);
    kv_client_opts o = {.timeout_ms = timeout_ms, .max_body = max_body};
    kv_client *c = NULL;
    cr_assert_eq(kv_client_new(&c, url, &o), KV_OK);
    return c;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

#define R200(body)                                                                                 \
    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nETag: \"17.3\"\r\n"              \
    "Content-Length: " #body "\r\n\r\n"

static const char resp_hello[] = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 "ETag: \"1732700000123.42\"\r\nContent-Length: 5\r\n\r\nhello";
static const char resp_world[] = "HTTP/1.1 200 OK\r\nETag: \"2.1\"\r\nContent-Length: 5\r\n\r\n"
                                 "world";
#define PROBLEM_404                                                                                \
    "{\"type\":\"urn:kvstore:problem:key_not_found\",\"title\":\"Key not found\",\"status\":404,"  \
    "\"code\":\"key_not_found\",\"detail\":\"no value is stored here\"}"

/*
 * A canned response: status line and headers (each ending in CRLF), then Content-Length
 * computed from body, then body. From a static pool: each criterion test is its own
 * process.
 */
static const char *mkresp(const char *head, const char *body)
{
    static char pool[16][4096];
    static int next;
    char *b = pool[next++ % 16];
    snprintf(b, sizeof(pool[0]), "%sContent-Length: %zu\r\n\r\n%s", head, strlen(body), body);
    return b;
}

#define PROBLEM_HEAD(status) "HTTP/1.1 " status "\r\nContent-Type: application/problem+json\r\n"

/* ---- URL parsing ------------------------------------------------------------------- */

Test(client_url, parses_host_port_and_defaults)
{
    kvc_url u;
    cr_assert_eq(kvc_url_parse(&u, "http://127.0.0.1:8080"), KV_OK);
    cr_expect_str_eq(u.host, "127.0.0.1");
    cr_expect_str_eq(u.port, "8080");
    cr_expect_str_eq(u.authority, "127.0.0.1:8080");

    cr_assert_eq(kvc_url_parse(&u, "http://localhost"), KV_OK);
    cr_expect_str_eq(u.host, "localhost");
    cr_expect_str_eq(u.port, "80");
    cr_expect_str_eq(u.authority, "localhost");

    cr_assert_eq(kvc_url_parse(&u, "HTTP://kv-1.example_net:9000/some/path?x=1"), KV_OK);
    cr_expect_str_eq(u.host, "kv-1.example_net");
    cr_expect_str_eq(u.port, "9000");
    cr_expect_str_eq(u.authority, "kv-1.example_net:9000");

    cr_assert_eq(kvc_url_parse(&u, "http://tasks.kv/"), KV_OK);
    cr_expect_str_eq(u.host, "tasks.kv");
    cr_expect_str_eq(u.port, "80");

    cr_assert_eq(kvc_url_parse(&u, "http://[::1]:8081"), KV_OK);
    cr_expect_str_eq(u.host, "::1");
    cr_expect_str_eq(u.port, "8081");
    cr_expect_str_eq(u.authority, "[::1]:8081");

    cr_assert_eq(kvc_url_parse(&u, "http://h:00080"), KV_OK);
    cr_expect_str_eq(u.port, "80");
}

Test(client_url, rejects_what_is_not_http_host_port)
{
    const char *bad[] = {
        "",
        "127.0.0.1:8080",
        "https://127.0.0.1",
        "ftp://h",
        "http://",
        "http:///x",
        "http://:80",
        "http://h:",
        "http://h:0",
        "http://h:65536",
        "http://h:8a",
        "http://h:123456",
        "http://u@h:80",
        "http://h h",
        "http://[::1",
        "http://[]:80",
        "http://[::1]x",
        "http://h%20:80",
        "http://[zz]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        kvc_url u;
        cr_expect_eq(kvc_url_parse(&u, bad[i]), KV_EINVAL, "accepted '%s'", bad[i]);
    }
    kvc_url u;
    cr_expect_eq(kvc_url_parse(&u, NULL), KV_EINVAL);

    kv_client *c = NULL;
    cr_expect_eq(kv_client_new(&c, "https://127.0.0.1:8080", NULL), KV_EINVAL);
    cr_expect_null(c);
    cr_assert_eq(kv_client_new(&c, "http://127.0.0.1:8080", NULL), KV_OK);
    kv_client_free(c);
}

/* ---- percent-encoding -------------------------------------------------------------- */

static void expect_escape(const void *key, size_t n, const char *want)
{
    kv_buf b = KV_BUF_INIT;
    cr_assert_eq(kvc_path_escape(&b, key, n), KV_OK);
    cr_expect_str_eq(b.data, want);
    cr_expect_eq(b.len, strlen(want));
    kv_buf_free(&b);
}

Test(client_escape, unreserved_bytes_pass_everything_else_is_encoded)
{
    expect_escape("AZaz09-._~", 10, "AZaz09-._~");
    expect_escape("a/b c", 5, "a%2Fb%20c");
    expect_escape("%?#+&=:@", 8, "%25%3F%23%2B%26%3D%3A%40");
    expect_escape("\x00\xff\x7f\n", 4, "%00%FF%7F%0A");
    expect_escape("\xc3\xa9t\xc3\xa9", 5, "%C3%A9t%C3%A9");
    expect_escape("..", 2, "..");
}

/* ---- problem+json reader ----------------------------------------------------------- */

Test(client_json, reads_top_level_string_members_only)
{
    const char *j = "{\"type\":\"urn:kvstore:problem:key_too_long\",\"title\":\"x\",\"status\":414,"
                    "\"nested\":{\"code\":\"no\",\"a\":[1,\"code\",{\"detail\":\"no\"}]},"
                    "\"note\":\"\\\"code\\\": \\\"fake\\\"\","
                    "\"code\":\"key_too_long\",\"detail\":\"a \\\"b\\\"\\n\\u00e9\\ud83d\\ude00\"}";
    char out[64];
    cr_assert(kvc_json_str_field(j, strlen(j), "code", out, sizeof(out)));
    cr_expect_str_eq(out, "key_too_long");
    cr_assert(kvc_json_str_field(j, strlen(j), "detail", out, sizeof(out)));
    cr_expect_str_eq(out, "a \"b\"\n\xc3\xa9\xf0\x9f\x98\x80");
    cr_expect_not(kvc_json_str_field(j, strlen(j), "status", out, sizeof(out)));
    cr_expect_not(kvc_json_str_field(j, strlen(j), "missing", out, sizeof(out)));
    cr_assert(kvc_json_str_field(" \n{ \"status\" : \"ok\" } ", 22, "status", out, sizeof(out)));
    cr_expect_str_eq(out, "ok");
}

Test(client_json, tolerates_garbage_and_truncates_on_character_boundary)
{
    char out[8] = "keep";
    const char *bad[] = {"",
                         "[]",
                         "not json",
                         "{\"code\":",
                         "{\"code\":\"unterminated",
                         "{\"code\":\"bad \\x escape\"}",
                         "{\"a\":{\"code\":\"x\"",
                         "{\"a\" 1}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_expect_not(kvc_json_str_field(bad[i], strlen(bad[i]), "code", out, sizeof(out)),
                      "found code in '%s'", bad[i]);
        cr_expect_str_eq(out, "keep");
    }
    /* 5 + a 3-byte character would need 9 bytes with the NUL: the character is dropped */
    const char *j = "{\"detail\":\"abcde\xe2\x82\xac-more\"}";
    cr_assert(kvc_json_str_field(j, strlen(j), "detail", out, sizeof(out)));
    cr_expect_str_eq(out, "abcde");
    /* length-bounded: not NUL-terminated input */
    const char k[] = {'{', '"', 'c', 'o', 'd', 'e', '"', ':', '"', 'x', '"', '}', 'J', 'U', 'N'};
    cr_assert(kvc_json_str_field(k, 12, "code", out, sizeof(out)));
    cr_expect_str_eq(out, "x");
    cr_expect_not(kvc_json_str_field(k, 10, "code", out, sizeof(out)));
}

/* ---- responses --------------------------------------------------------------------- */

Test(client_http, get_returns_value_and_etag_and_encodes_the_key, .timeout = 10)
{
    fake_step steps[] = {{resp_hello, 0, FS_KEEP}};
    fake_srv *f = fake_start(steps, 1);
    kv_client *c = client_for(f, 2000, 0);
    char *val = NULL;
    size_t vlen = 0;
    char etag[64];
    cr_assert_eq(kv_client_get(c, "a/b c\xc3\xa9", 7, &val, &vlen, etag, sizeof(etag)), KV_OK);
    cr_expect_eq(vlen, 5);
    cr_expect_str_eq(val, "hello");
    cr_expect_str_eq(etag, "1732700000123.42");
    free(val);
    cr_expect_eq(kv_client_last_error(c)->http_status, 0);
    cr_expect(strncmp(f->req[0], "GET /v1/kv/a%2Fb%20c%C3%A9 HTTP/1.1\r\n", 37) == 0, "%s",
              f->req[0]);
    cr_expect(strstr(f->req[0], "\r\nHost: 127.0.0.1:") != NULL);
    kv_client_free(c);
    fake_stop(f);
}

Test(client_http, keep_alive_connection_is_reused, .timeout = 10)
{
    fake_step steps[] = {{resp_hello, 0, FS_KEEP}, {resp_world, 0, FS_KEEP}};
    fake_srv *f = fake_start(steps, 2);
    kv_client *c = client_for(f, 2000, 0);
    char *val;
    size_t vlen;
    cr_assert_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_OK);
    free(val);
    cr_assert_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_OK);
    cr_expect_str_eq(val, "world");
    free(val);
    cr_expect_eq(fake_accepts(f), 1);
    kv_client_free(c);
    fake_stop(f);
}

Test(client_http, put_sends_body_ttl_and_reads_etag, .timeout = 10)
{
    fake_step steps[] = {
        {"HTTP/1.1 204 No Content\r\nETag: \"99.7\"\r\n\r\n", 0, FS_KEEP},
        {"HTTP/1.1 204 No Content\r\n\r\n", 0, FS_KEEP},
        {"HTTP/1.1 204 No Content\r\n\r\n", 0, FS_KEEP},
    };
    fake_srv *f = fake_start(steps, 3);
    kv_client *c = client_for(f, 2000, 0);
    char etag[64];
    cr_assert_eq(kv_client_put(c, "k~1", 3, "v\0x", 3, 0, etag, sizeof(etag)), KV_OK);
    cr_expect_str_eq(etag, "99.7");
    cr_assert_eq(kv_client_put(c, "k", 1, "ttl", 3, 60, NULL, 0), KV_OK);
    cr_assert_eq(kv_client_delete(c, "gone", 4), KV_OK);
    cr_expect(strncmp(f->req[0], "PUT /v1/kv/k~1 HTTP/1.1\r\n", 25) == 0, "%s", f->req[0]);
    cr_expect(strcasestr(f->req[0], "\r\nContent-Length: 3\r\n") != NULL);
    cr_expect_eq(f->body_len[0], 3);
    cr_expect(memcmp(f->body[0], "v\0x", 3) == 0);
    cr_expect(strncmp(f->req[1], "PUT /v1/kv/k?ttl=60 HTTP/1.1\r\n", 30) == 0, "%s", f->req[1]);
    cr_expect(strncmp(f->req[2], "DELETE /v1/kv/gone HTTP/1.1\r\n", 29) == 0, "%s", f->req[2]);
    cr_expect_eq(fake_accepts(f), 1);
    kv_client_free(c);
    fake_stop(f);
}

Test(client_http, not_found_and_problem_details, .timeout = 10)
{
    fake_step steps[] = {
        {mkresp(PROBLEM_HEAD("404 Not Found"), PROBLEM_404), 0, FS_KEEP},
        {mkresp(PROBLEM_HEAD("404 Not Found"), PROBLEM_404), 0, FS_KEEP},
        {mkresp(PROBLEM_HEAD("404 Not Found"),
                "{\"code\":\"route_not_found\",\"detail\":\"no such route\"}"),
         0, FS_KEEP},
    };
    fake_srv *f = fake_start(steps, 3);
    kv_client *c = client_for(f, 2000, 0);
    char *val = NULL;
    size_t vlen = 0;
    cr_assert_eq(kv_client_get(c, "missing", 7, &val, &vlen, NULL, 0), KV_ENOTFOUND);
    cr_expect_null(val);
    const kv_client_error *e = kv_client_last_error(c);
    cr_expect_eq(e->http_status, 404);
    cr_expect_str_eq(e->code, "key_not_found");
    cr_expect_str_eq(e->detail, "no value is stored here");
    /* only a key GET can be "not found": a 404 elsewhere is a rejected request */
    cr_expect_eq(kv_client_delete(c, "missing", 7), KV_EBADREQ);
    cr_expect_eq(kv_client_get(c, "x", 1, &val, &vlen, NULL, 0), KV_EBADREQ);
    cr_expect_str_eq(kv_client_last_error(c)->code, "route_not_found");
    kv_client_free(c);
    fake_stop(f);
}

Test(client_http, statuses_map_to_errors, .timeout = 10)
{
    fake_step steps[] = {
        {mkresp(PROBLEM_HEAD("503 Service Unavailable"),
                "{\"code\":\"not_ready\",\"detail\":\"the node is starting\"}"),
         0, FS_KEEP},
        {"HTTP/1.1 507 Insufficient Storage\r\nContent-Length: 0\r\n\r\n", 0, FS_KEEP},
        {"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", 0, FS_KEEP},
        {mkresp("HTTP/1.1 413 Payload Too Large\r\n", "{\"code\":\"value_too_large\"}"), 0,
         FS_KEEP},
        {"HTTP/1.1 301 Moved\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n", 0, FS_KEEP},
    };
    fake_srv *f = fake_start(steps, 5);
    kv_client *c = client_for(f, 2000, 0);
    char *val;
    size_t vlen;
    cr_expect_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_EUNAVAIL);
    cr_expect_str_eq(kv_client_last_error(c)->code, "not_ready");
    cr_expect_str_eq(kv_client_last_error(c)->detail, "the node is starting");
    cr_expect_eq(kv_client_put(c, "k", 1, "v", 1, 0, NULL, 0), KV_ENOSPC);
    cr_expect_eq(kv_client_last_error(c)->http_status, 507);
    cr_expect_eq(kv_client_delete(c, "k", 1), KV_ESERVER);
    cr_expect_str_eq(kv_client_last_error(c)->detail, "server answered HTTP 500");
    cr_expect_eq(kv_client_put(c, "k", 1, "v", 1, 0, NULL, 0), KV_EBADREQ);
    cr_expect_str_eq(kv_client_last_error(c)->code, "value_too_large");
    cr_expect_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_EPROTO);
    cr_expect_eq(kv_client_get(c, "", 0, &val, &vlen, NULL, 0), KV_EINVAL);
    kv_client_free(c);
    fake_stop(f);
}

Test(client_http, chunked_and_read_until_close_bodies, .timeout = 10)
{
    fake_step steps[] = {
        {"HTTP/1.1 100 Continue\r\n\r\n"
         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"5.5\"\r\n\r\n"
         "3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
         0, FS_KEEP},
        {"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", 0, FS_CLOSE},
        {resp_world, 0, FS_KEEP},
    };
    fake_srv *f = fake_start(steps, 3);
    kv_client *c = client_for(f, 2000, 0);
    char *val;
    size_t vlen;
    char etag[16];
    cr_assert_eq(kv_client_get(c, "k", 1, &val, &vlen, etag, sizeof(etag)), KV_OK);
    cr_expect_eq(vlen, 19);
    cr_expect_str_eq(val, "abc0123456789abcdef");
    cr_expect_str_eq(etag, "5.5");
    free(val);
    cr_assert_eq(kv_client_get(c, "k", 1, &val, &vlen, etag, sizeof(etag)), KV_OK);
    cr_expect_str_eq(val, "until the end");
    cr_expect_str_eq(etag, "");
    free(val);
    cr_assert_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_OK);
    cr_expect_str_eq(val, "world");
    free(val);
    cr_expect_eq(fake_accepts(f), 2);
    kv_client_free(c);
    fake_stop(f);
}

Test(client_http, reconnects_when_server_closed_idle_connection, .timeout = 10)
{
    fake_step steps[] = {{resp_hello, 0, FS_CLOSE}, {resp_world, 0, FS_KEEP}};
    fake_srv *f = fake_start(steps, 2);
    kv_client *c = client_for(f, 2000, 0);
    char *val;
    size_t vlen;
    cr_assert_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_OK);
    free(val);
    cr_assert_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_OK);
    cr_expect_str_eq(val, "world");
    free(val);
    cr_expect_eq(fake_accepts(f), 2);
    cr_expect_eq(fake_nreq(f), 2);
    kv_client_free(c);
    fake_stop(f);
}

Test(client_http, resends_once_when_reused_connection_closes_before_responding, .timeout = 10)
{
    /* The second request arrives on the kept connection, which the server then closes
     * without a byte of answer (its idle timer fired): the client must reconnect and
     * send it again. */
    fake_step steps[] = {{resp_hello, 0, FS_KEEP}, {NULL, 0, FS_CLOSE}, {resp_world, 0, FS_KEEP}};
    fake_srv *f = fake_start(steps, 3);
    kv_client *c = client_for(f, 2000, 0);
    char *val;
    size_t vlen;
    cr_assert_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_OK);
    free(val);
    cr_assert_eq(kv_client_put(c, "k", 1, "v", 1, 0, NULL, 0), KV_OK);
    cr_expect_eq(fake_accepts(f), 2);
    cr_expect_eq(fake_nreq(f), 3);
    cr_expect(strncmp(f->req[1], "PUT /v1/kv/k ", 13) == 0);
    cr_expect(strncmp(f->req[2], "PUT /v1/kv/k ", 13) == 0);
    kv_client_free(c);
    fake_stop(f);
}

Test(client_http, no_resend_on_a_fresh_connection_or_after_response_bytes, .timeout = 10)
{
    fake_step steps[] = {
        {NULL, 0, FS_CLOSE},                                                      /* fresh */
        {resp_hello, 0, FS_KEEP},                                                 /* ok */
        {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ntruncated", 0, FS_CLOSE}, /* partial */
        {resp_world, 0, FS_KEEP},
    };
    fake_srv *f = fake_start(steps, 4);
    kv_client *c = client_for(f, 2000, 0);
    char *val;
    size_t vlen;
    cr_expect_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_EPROTO);
    cr_expect_eq(kv_client_last_error(c)->http_status, 0);
    cr_expect(strstr(kv_client_last_error(c)->detail, "without responding") != NULL, "%s",
              kv_client_last_error(c)->detail);
    cr_assert_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_OK);
    free(val);
    cr_expect_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_EPROTO);
    cr_expect(strstr(kv_client_last_error(c)->detail, "mid-response") != NULL, "%s",
              kv_client_last_error(c)->detail);
    cr_expect_eq(fake_nreq(f), 3); /* the truncated GET was not sent again */
    cr_assert_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_OK);
    free(val);
    cr_expect_eq(fake_nreq(f), 4);
    kv_client_free(c);
    fake_stop(f);
}

Test(client_http, silent_server_times_out_within_the_deadline, .timeout = 10)
{
    fake_step steps[] = {{NULL, 0, FS_HANG}};
    fake_srv *f = fake_start(steps, 1);
    kv_client *c = client_for(f, 300, 0);
    char *val;
    size_t vlen;
    uint64_t t0 = mono_ms();
    cr_expect_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_ETIMEDOUT);
    uint64_t took = mono_ms() - t0;
    cr_expect_geq(took, 290);
    cr_expect_lt(took, 1500, "took %llu ms", (unsigned long long)took);
    kv_client_free(c);
    fake_stop(f);
}

Test(client_http, responses_over_the_size_bound_are_protocol_errors, .timeout = 10)
{
    static char big_head[80 * 1024];
    size_t n = (size_t)snprintf(big_head, sizeof(big_head), "HTTP/1.1 200 OK\r\n");
    while (n < 70 * 1024)
        n += (size_t)snprintf(big_head + n, sizeof(big_head) - n, "X-Filler: %0100d\r\n", 0);
    n += (size_t)snprintf(big_head + n, sizeof(big_head) - n, "Content-Length: 0\r\n\r\n");

    static char big_body[3000];
    size_t m = (size_t)snprintf(big_body, sizeof(big_body),
                                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
    memset(big_body + m, 'v', 2000);

    fake_step steps[] = {
        {R200(1025), 0, FS_KEEP},       /* declared length over the bound: refused at once */
        {big_body, m + 2000, FS_CLOSE}, /* no length: bounded while reading */
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
         "400\r\n" /* 1024 bytes, then one more */,
         0, FS_KEEP},
        {big_head, n, FS_KEEP},
        {R200(1024), 0, FS_KEEP},
    };
    /* make the chunked step carry 1024 + 1 bytes */
    static char chunked[2200];
    size_t k = (size_t)snprintf(chunked, sizeof(chunked), "%s", steps[2].resp);
    memset(chunked + k, 'c', 1024);
    k += 1024;
    k += (size_t)snprintf(chunked + k, sizeof(chunked) - k, "\r\n1\r\nX\r\n0\r\n\r\n");
    steps[2].resp = chunked;
    steps[2].len = k;
    static char exact[1200];
    size_t e = (size_t)snprintf(exact, sizeof(exact), "%s", steps[4].resp);
    memset(exact + e, 'e', 1024);
    steps[4].resp = exact;
    steps[4].len = e + 1024;

    fake_srv *f = fake_start(steps, 5);
    kv_client *c = client_for(f, 2000, 1024);
    char *val;
    size_t vlen;
    cr_expect_eq(kv_client_get(c, "a", 1, &val, &vlen, NULL, 0), KV_EPROTO);
    cr_expect(strstr(kv_client_last_error(c)->detail, "over 1024 bytes") != NULL, "%s",
              kv_client_last_error(c)->detail);
    cr_expect_eq(kv_client_get(c, "b", 1, &val, &vlen, NULL, 0), KV_EPROTO);
    cr_expect_eq(kv_client_get(c, "c", 1, &val, &vlen, NULL, 0), KV_EPROTO);
    cr_expect_eq(kv_client_get(c, "d", 1, &val, &vlen, NULL, 0), KV_EPROTO);
    cr_expect(strstr(kv_client_last_error(c)->detail, "head") != NULL, "%s",
              kv_client_last_error(c)->detail);
    /* exactly at the bound is fine, and the client recovered from all of the above */
    cr_assert_eq(kv_client_get(c, "e", 1, &val, &vlen, NULL, 0), KV_OK);
    cr_expect_eq(vlen, 1024);
    free(val);
    cr_expect_eq(fake_accepts(f), 5);
    kv_client_free(c);
    fake_stop(f);
}

Test(client_http, raw_get_returns_any_status, .timeout = 10)
{
    fake_step steps[] = {
        {"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
         "{\"status\":\"ok\"}",
         0, FS_KEEP},
        {mkresp(PROBLEM_HEAD("503 Service Unavailable"),
                "{\"code\":\"not_ready\",\"detail\":\"the node is starting\"}"),
         0, FS_KEEP},
    };
    fake_srv *f = fake_start(steps, 2);
    kv_client *c = client_for(f, 2000, 0);
    int status = 0;
    char *body = NULL;
    size_t blen = 0;
    cr_assert_eq(kv_client_raw_get(c, "/healthz", &status, &body, &blen), KV_OK);
    cr_expect_eq(status, 200);
    cr_expect_str_eq(body, "{\"status\":\"ok\"}");
    cr_expect_eq(blen, 15);
    free(body);
    cr_assert_eq(kv_client_raw_get(c, "/readyz", &status, &body, NULL), KV_OK);
    cr_expect_eq(status, 503);
    cr_expect_str_eq(kv_client_last_error(c)->code, "not_ready");
    free(body);
    cr_expect_eq(kv_client_raw_get(c, "healthz", &status, &body, NULL), KV_EINVAL);
    cr_expect_eq(kv_client_raw_get(c, "/a b", &status, &body, NULL), KV_EINVAL);
    cr_expect(strncmp(f->req[0], "GET /healthz HTTP/1.1\r\n", 23) == 0);
    cr_expect(strncmp(f->req[1], "GET /readyz HTTP/1.1\r\n", 22) == 0);
    kv_client_free(c);
    fake_stop(f);
}

Test(client_http, refused_connection_is_econnect, .timeout = 10)
{
    /* A port that was just ours and now has no listener. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t alen = sizeof(a);
    cr_assert_eq(getsockname(s, (struct sockaddr *)&a, &alen), 0);
    close(s);
    char url[64];
    snprintf(url, sizeof(url), "http://localhost:%d", ntohs(a.sin_port));
    kv_client *c = NULL;
    cr_assert_eq(kv_client_new(&c, url, NULL), KV_OK);
    char *val;
    size_t vlen;
    cr_expect_eq(kv_client_get(c, "k", 1, &val, &vlen, NULL, 0), KV_ECONNECT);
    cr_expect_eq(kv_client_last_error(c)->http_status, 0);
    cr_expect(strstr(kv_client_last_error(c)->detail, "connect to localhost:") != NULL, "%s",
              kv_client_last_error(c)->detail);
    kv_client_free(c);
}

Test(client_http, list_sends_the_query_and_reads_the_page, .timeout = 10)
{
    fake_step steps[] = {
        {mkresp("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n",
                "{\"keys\":[{\"key\":\"a%2Fb\",\"version\":\"3.1\"}],"
                "\"next_cursor\":\"0123456789abcdef-612f62\"}"),
         0, FS_KEEP},
        {mkresp("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n",
                "{\"keys\":[],\"next_cursor\":null}"),
         0, FS_KEEP},
        {mkresp(PROBLEM_HEAD("400 Bad Request"),
                "{\"code\":\"invalid_query\",\"detail\":\"cursor: not a cursor\"}"),
         0, FS_KEEP},
        {mkresp("HTTP/1.1 200 OK\r\n", "{\"keys\":[{\"key\":\"\"}]}"), 0, FS_KEEP},
    };
    fake_srv *f = fake_start(steps, 4);
    kv_client *c = client_for(f, 2000, 16); /* a page may exceed the value bound */
    kv_client_list_page *p = NULL;
    cr_assert_eq(kv_client_list(c, "a/ b", 4, 7, NULL, &p), KV_OK);
    cr_expect(strncmp(f->req[0], "GET /v1/kv?prefix=a%2F%20b&limit=7 HTTP/1.1\r\n", 45) == 0, "%s",
              f->req[0]);
    cr_assert_eq(p->nkeys, 1);
    cr_expect_str_eq(p->keys[0].key, "a/b");
    cr_expect_str_eq(p->next_cursor, "0123456789abcdef-612f62");
    kv_client_list_page *p2 = NULL;
    cr_assert_eq(kv_client_list(c, NULL, 0, 0, p->next_cursor, &p2), KV_OK);
    cr_expect(strncmp(f->req[1], "GET /v1/kv?prefix=&cursor=0123456789abcdef-612f62 HTTP/1.1\r\n",
                      60) == 0,
              "%s", f->req[1]);
    cr_expect_null(p2->next_cursor);
    kv_client_list_page_free(p2);
    kv_client_list_page_free(p);
    cr_expect_eq(kv_client_list(c, NULL, 0, 0, "x", &p), KV_EBADREQ);
    cr_expect_str_eq(kv_client_last_error(c)->code, "invalid_query");
    cr_expect_eq(kv_client_list(c, NULL, 0, 0, NULL, &p), KV_EPROTO);
    cr_expect_eq(kv_client_list(c, NULL, 0, 1001, NULL, &p), KV_EINVAL);
    cr_expect_eq(fake_nreq(f), 4);
    kv_client_free(c);
    fake_stop(f);
}
