/*
 * test_node_malformed.c — abuse of a real `kvstore servenode` over raw sockets: bad
 * methods and encodings, oversized headers, bodies and keys, stalled and idle
 * connections, random bytes, and connection floods. After every abuse the node must still
 * serve a normal PUT/GET, and /metrics must count the rejection.
 *
 * Each test starts its own node (with the limits it needs) in a fresh temp dir and stops
 * it by PID in fini, also when an assertion failed. Single-threaded.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_tmp[256];
static th_node g_node;
static int g_probe;

static void setup(void)
{
    th_tmpdir(g_tmp, sizeof g_tmp);
}

static void teardown(void)
{
    th_kill_all();
    th_tmpdir_remove(g_tmp);
}

/* End of a test: a graceful stop, so a crash, a leak or a non-zero exit on SIGTERM fails
 * the test (fini cannot fail it; fini only cleans up). */
static void stop_clean(void)
{
    cr_assert(th_node_stop_clean(&g_node, 10000),
              "node did not shut down cleanly on SIGTERM (its log is above)");
}

TestSuite(node_malformed, .init = setup, .fini = teardown, .timeout = 60);

/* The limits most tests use: short timeouts so stalls are seen quickly, small sizes. */
static void start_default(void)
{
    const char *args[] = {"--limits.request_timeout",
                          "500ms",
                          "--limits.idle_timeout",
                          "1s",
                          "--limits.max_header",
                          "8KiB",
                          "--limits.max_value",
                          "64KiB",
                          NULL};
    cr_assert_eq(th_node_start(&g_node, g_tmp, 0, args, NULL, 10000), 0, "node did not start");
}

static void start_with(const char *const *args)
{
    cr_assert_eq(th_node_start(&g_node, g_tmp, 0, args, NULL, 10000), 0, "node did not start");
}

/* The node still does its job: a fresh PUT then GET round trip. */
static void assert_still_serves(void)
{
    cr_assert(th_node_alive(&g_node), "node process died (status %d)", g_node.exit_status);
    char path[64], val[64];
    snprintf(path, sizeof path, "/v1/kv/probe-%d", ++g_probe);
    int vl = snprintf(val, sizeof val, "still-serving-%d", g_probe);
    th_resp r;
    cr_assert_eq(th_http(g_node.port, "PUT", path, val, (size_t)vl, &r), 0,
                 "node does not answer a PUT after abuse");
    cr_assert_eq(r.status, 204, "PUT after abuse: %d %s", r.status, r.body);
    th_resp_free(&r);
    cr_assert_eq(th_http(g_node.port, "GET", path, NULL, 0, &r), 0,
                 "node does not answer a GET after abuse");
    cr_assert_eq(r.status, 200, "GET after abuse: %d", r.status);
    cr_assert_eq(r.body_len, (size_t)vl);
    cr_assert(memcmp(r.body, val, (size_t)vl) == 0);
    th_resp_free(&r);
}

static double rejected(const char *reason)
{
    char lbl[64];
    snprintf(lbl, sizeof lbl, "reason=\"%s\"", reason);
    double v = th_metric(g_node.port, "kv_http_rejected_total", lbl);
    cr_assert_geq(v, 0, "/metrics not reachable");
    return v;
}

/* Send raw bytes on a fresh connection; expect a problem answer; return the fd (open). */
static int expect_problem_raw(const void *req, size_t len, int status, const char *code)
{
    int fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0, "cannot connect");
    th_send_all(fd, req, len); /* the server may close early; the answer is what counts */
    th_resp r;
    char why[300];
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0, "no response (expected %d %s)", status, code);
    cr_assert(th_is_problem(&r, status, code, why, sizeof why), "%s", why);
    th_resp_free(&r);
    return fd;
}

Test(node_malformed, unknown_method_is_400_and_counted)
{
    start_default();
    double before = rejected("malformed");
    const char req[] = "FOO / HTTP/1.1\r\nHost: x\r\n\r\n";
    int fd = expect_problem_raw(req, sizeof req - 1, 400, "bad_request");
    cr_assert(th_wait_closed(fd, 3000), "connection neither closed nor usable after 400");
    close(fd);
    cr_assert_eq(rejected("malformed"), before + 1);
    assert_still_serves();
    stop_clean();
}

Test(node_malformed, bad_percent_encoding_is_invalid_key_and_connection_survives)
{
    start_default();
    const char *bad[] = {"/v1/kv/%zz", "/v1/kv/%4", "/v1/kv/abc%", "/v1/kv/%G1", "/v1/kv/a%2"};
    int fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t len;
        char *req = th_fmt_req("GET", bad[i], NULL, 0, &len);
        cr_assert_eq(th_send_all(fd, req, len), 0);
        free(req);
        th_resp r;
        char why[300];
        cr_assert_eq(th_read_resp(fd, &r, 5000), 0, "GET %s: no response", bad[i]);
        cr_assert(th_is_problem(&r, 400, "invalid_key", why, sizeof why), "GET %s: %s", bad[i],
                  why);
        cr_assert(!r.closed, "GET %s: a well-formed request with a bad key closed the connection",
                  bad[i]);
        th_resp_free(&r);
    }
    /* The same connection still works. */
    const char ok[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    cr_assert_eq(th_send_all(fd, ok, sizeof ok - 1), 0);
    th_resp r;
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0);
    cr_assert_eq(r.status, 200);
    th_resp_free(&r);
    close(fd);
    double n400 = th_metric(g_node.port, "kv_http_requests_total", "status=\"400\"");
    cr_assert_geq(n400, 5, "400 answers not counted in kv_http_requests_total (%g)", n400);
    assert_still_serves();
    stop_clean();
}

Test(node_malformed, oversized_headers_are_431)
{
    start_default();
    double before = rejected("headers_too_large");

    /* One huge header line (9 KiB > 8 KiB). */
    size_t pad = 9 * 1024;
    char *req = malloc(pad + 128);
    int n = snprintf(req, 128, "GET /v1/kv/x HTTP/1.1\r\nHost: x\r\nX-Pad: ");
    memset(req + n, 'a', pad);
    memcpy(req + n + pad, "\r\n\r\n", 4);
    int fd = expect_problem_raw(req, (size_t)n + pad + 4, 431, "headers_too_large");
    cr_assert(th_wait_closed(fd, 3000), "connection not closed after 431");
    close(fd);
    free(req);

    /* Many small headers adding up past the limit. */
    char *many = NULL;
    size_t mlen = 0;
    FILE *m = open_memstream(&many, &mlen);
    fprintf(m, "GET /v1/kv/x HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < 400; i++)
        fprintf(m, "X-H%d: 0123456789012345678901234\r\n", i);
    fprintf(m, "\r\n");
    fclose(m);
    fd = expect_problem_raw(many, mlen, 431, "headers_too_large");
    close(fd);
    free(many);

    cr_assert_eq(rejected("headers_too_large"), before + 2);
    assert_still_serves();
    stop_clean();
}

Test(node_malformed, oversized_body_is_413_before_the_body_arrives)
{
    start_default();
    double before = rejected("body_too_large");

    /* Content-Length over limits.max_value (64 KiB): answered from the headers alone. */
    const char req[] = "PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n";
    int64_t t0 = th_now_ms();
    int fd = expect_problem_raw(req, sizeof req - 1, 413, "value_too_large");
    int64_t took = th_now_ms() - t0;
    cr_assert_lt(took, 450, "413 took %lld ms: the server waited for the body", (long long)took);
    close(fd);

    /* A huge declared length is not allocated up front (the node survives). */
    const char huge[] = "PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n";
    fd = expect_problem_raw(huge, sizeof huge - 1, 413, "value_too_large");
    close(fd);

    /* Exactly max_value is fine. */
    size_t vlen = 64 * 1024;
    char *v = malloc(vlen);
    memset(v, 'v', vlen);
    th_resp r;
    cr_assert_eq(th_http(g_node.port, "PUT", "/v1/kv/edge", v, vlen, &r), 0);
    cr_assert_eq(r.status, 204, "PUT of exactly max_value bytes: %d %s", r.status, r.body);
    th_resp_free(&r);
    cr_assert_eq(th_http(g_node.port, "GET", "/v1/kv/edge", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.body_len, vlen);
    th_resp_free(&r);
    free(v);

    /* The rejected key was not written. */
    char why[300];
    cr_assert_eq(th_http(g_node.port, "GET", "/v1/kv/big", NULL, 0, &r), 0);
    cr_assert(th_is_problem(&r, 404, "key_not_found", why, sizeof why), "%s", why);
    th_resp_free(&r);

    cr_assert_eq(rejected("body_too_large"), before + 2);
    assert_still_serves();
    stop_clean();
}

Test(node_malformed, oversized_chunked_body_is_413)
{
    start_default();
    double before = rejected("body_too_large");
    int fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0);
    const char head[] =
        "PUT /v1/kv/chunky HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    cr_assert_eq(th_send_all(fd, head, sizeof head - 1), 0);
    /* 17 chunks of 4 KiB = 68 KiB > 64 KiB; stop sending as soon as the server answers. */
    char chunk[4096 + 16];
    int n = snprintf(chunk, sizeof chunk, "1000\r\n");
    memset(chunk + n, 'c', 4096);
    memcpy(chunk + n + 4096, "\r\n", 2);
    for (int i = 0; i < 17; i++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 0) > 0)
            break;
        if (th_send_all(fd, chunk, (size_t)n + 4096 + 2) != 0)
            break;
    }
    th_send_all(fd, "0\r\n\r\n", 5);
    th_resp r;
    char why[300];
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0, "no answer to an oversized chunked body");
    cr_assert(th_is_problem(&r, 413, "value_too_large", why, sizeof why), "%s", why);
    th_resp_free(&r);
    close(fd);
    cr_assert_eq(rejected("body_too_large"), before + 1);
    assert_still_serves();
    stop_clean();
}

Test(node_malformed, stalled_headers_get_408_then_close)
{
    start_default();
    double before = rejected("timeout");
    int fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0);
    const char part[] = "PUT /v1/kv/stall HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le";
    int64_t t0 = th_now_ms();
    cr_assert_eq(th_send_all(fd, part, sizeof part - 1), 0);
    th_resp r;
    char why[300];
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0, "no 408 within 5 s for a stalled request");
    int64_t took = th_now_ms() - t0;
    cr_assert(th_is_problem(&r, 408, "request_timeout", why, sizeof why), "%s", why);
    cr_assert(took >= 400 && took < 2500, "408 after %lld ms with request_timeout 500ms",
              (long long)took);
    th_resp_free(&r);
    cr_assert(th_wait_closed(fd, 2000), "connection still open after 408");
    close(fd);
    cr_assert_eq(rejected("timeout"), before + 1);
    assert_still_serves();
    stop_clean();
}

Test(node_malformed, stalled_body_gets_408_then_close)
{
    start_default();
    double before = rejected("timeout");
    int fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0);
    const char part[] = "PUT /v1/kv/stall HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc";
    cr_assert_eq(th_send_all(fd, part, sizeof part - 1), 0);
    th_resp r;
    char why[300];
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0, "no 408 within 5 s for a stalled body");
    cr_assert(th_is_problem(&r, 408, "request_timeout", why, sizeof why), "%s", why);
    th_resp_free(&r);
    cr_assert(th_wait_closed(fd, 2000), "connection still open after 408");
    close(fd);
    cr_assert_eq(rejected("timeout"), before + 1);
    /* The half-sent value was not stored. */
    cr_assert_eq(th_http(g_node.port, "GET", "/v1/kv/stall", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 404);
    th_resp_free(&r);
    assert_still_serves();
    stop_clean();
}

Test(node_malformed, trickled_request_still_times_out)
{
    /* Slowloris: one byte every 100 ms keeps the socket busy but the request never
     * completes; request_timeout bounds the whole request, not the gap between reads. */
    start_default();
    int fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0);
    const char req[] = "GET /v1/kv/slow HTTP/1.1\r\nHost: x\r\nX-A: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    int64_t t0 = th_now_ms();
    for (size_t i = 0; i < sizeof req - 1; i++) {
        if (th_send_all(fd, req + i, 1) != 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) /* paces the trickle; stops when the server speaks */
            break;
    }
    th_resp r;
    char why[300];
    cr_assert_eq(th_read_resp(fd, &r, 3000), 0, "no answer to a trickled request");
    int64_t took = th_now_ms() - t0;
    cr_assert(th_is_problem(&r, 408, "request_timeout", why, sizeof why), "%s", why);
    cr_assert_lt(took, 2000, "trickling bytes kept the request alive for %lld ms", (long long)took);
    th_resp_free(&r);
    close(fd);
    assert_still_serves();
    stop_clean();
}

Test(node_malformed, idle_keep_alive_connection_is_closed)
{
    start_default(); /* idle_timeout 1s */
    double before = rejected("idle_closed");
    int fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0);
    const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    cr_assert_eq(th_send_all(fd, req, sizeof req - 1), 0);
    th_resp r;
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0);
    cr_assert_eq(r.status, 200);
    cr_assert(!r.closed);
    th_resp_free(&r);
    int64_t t0 = th_now_ms();
    cr_assert(th_wait_closed(fd, 5000), "idle keep-alive connection still open after 5 s");
    int64_t took = th_now_ms() - t0;
    cr_assert(took >= 700 && took < 3000, "idle connection closed after %lld ms (idle_timeout 1s)",
              (long long)took);
    close(fd);

    /* A connection that never sends a byte is closed too. */
    fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0);
    cr_assert(th_wait_closed(fd, 5000), "silent connection still open after 5 s");
    close(fd);

    cr_assert_geq(rejected("idle_closed"), before + 1);
    assert_still_serves();
    stop_clean();
}

Test(node_malformed, random_garbage_is_400_and_node_survives)
{
    start_default();
    double before = rejected("malformed");
    uint64_t x = 0x9E3779B97F4A7C15ull; /* fixed seed: the same bytes every run */
    int rounds = 20;
    for (int round = 0; round < rounds; round++) {
        unsigned char junk[512];
        for (size_t i = 0; i < sizeof junk; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            junk[i] = (unsigned char)x;
        }
        if (junk[0] == '\r' || junk[0] == '\n' || (junk[0] >= 'A' && junk[0] <= 'Z'))
            junk[0] = 0x01; /* a request line cannot start like that */
        int fd = expect_problem_raw(junk, sizeof junk, 400, "bad_request");
        cr_assert(th_wait_closed(fd, 3000), "round %d: connection not closed after garbage", round);
        close(fd);
    }
    /* Garbage after a valid request on the same connection: the valid one is answered. */
    const char mixed[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\x01\x02\xff garbage\r\n\r\n";
    int fd = th_connect(g_node.port, 5000);
    cr_assert_eq(th_send_all(fd, mixed, sizeof mixed - 1), 0);
    th_resp r;
    char why[300];
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0);
    cr_assert_eq(r.status, 200);
    th_resp_free(&r);
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0, "no 400 for the garbage after a good request");
    cr_assert(th_is_problem(&r, 400, "bad_request", why, sizeof why), "%s", why);
    th_resp_free(&r);
    close(fd);

    cr_assert_eq(rejected("malformed"), before + rounds + 1);
    assert_still_serves();
    stop_clean();
}

static void put_key_of(size_t klen, bool encode_all, int want_status, const char *want_code)
{
    char *path = malloc(klen * 3 + 16);
    int n = sprintf(path, "/v1/kv/");
    for (size_t i = 0; i < klen; i++)
        n += encode_all ? sprintf(path + n, "%%61") : sprintf(path + n, "a");
    th_resp r;
    char why[300];
    cr_assert_eq(th_http(g_node.port, "PUT", path, "v", 1, &r), 0, "key of %zu: no response", klen);
    if (want_code == NULL)
        cr_assert_eq(r.status, want_status, "key of %zu bytes: %d %s", klen, r.status, r.body);
    else
        cr_assert(th_is_problem(&r, want_status, want_code, why, sizeof why),
                  "key of %zu bytes (%s): %s", klen, encode_all ? "encoded" : "plain", why);
    th_resp_free(&r);
    free(path);
}

Test(node_malformed, key_length_limits)
{
    start_default();
    put_key_of(1024, false, 204, NULL);
    put_key_of(1025, false, 414, "key_too_long");
    put_key_of(5000, false, 414, "key_too_long");
    /* The limit counts decoded bytes: 1024 bytes written as %61 (3072 chars) is fine. */
    put_key_of(1024, true, 204, NULL);
    put_key_of(1025, true, 414, "key_too_long");

    th_resp r;
    char why[300];
    const char *methods[] = {"PUT", "GET", "DELETE"};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(
            th_http(g_node.port, methods[i], "/v1/kv/", i == 0 ? "v" : NULL, i == 0 ? 1 : 0, &r),
            0);
        cr_assert(th_is_problem(&r, 400, "invalid_key", why, sizeof why), "%s /v1/kv/: %s",
                  methods[i], why);
        th_resp_free(&r);
    }
    double n414 = th_metric(g_node.port, "kv_http_requests_total", "status=\"414\"");
    cr_assert_eq(n414, 3, "414 answers counted %g, want 3", n414);
    assert_still_serves();
    stop_clean();
}

Test(node_malformed, thousand_connections_all_served, .timeout = 90)
{
    enum { CONNS = 1000 };
    cr_assert_geq(th_raise_nofile(CONNS + 200), CONNS + 100, "cannot raise RLIMIT_NOFILE");
    const char *args[] = {"--limits.max_connections", "2000", NULL};
    start_with(args);
    th_resp r;
    cr_assert_eq(th_http(g_node.port, "PUT", "/v1/kv/shared", "shared-value", 12, &r), 0);
    cr_assert_eq(r.status, 204);
    th_resp_free(&r);

    static int fds[CONNS];
    for (int i = 0; i < CONNS; i++) {
        fds[i] = th_connect(g_node.port, 10000);
        TH_CHECK(fds[i] >= 0, "connect %d failed", i);
    }
    const char req[] = "GET /v1/kv/shared HTTP/1.1\r\nHost: x\r\n\r\n";
    for (int i = 0; i < CONNS; i++)
        TH_CHECK(th_send_all(fds[i], req, sizeof req - 1) == 0, "send on conn %d", i);
    for (int i = 0; i < CONNS; i++) {
        TH_CHECK(th_read_resp(fds[i], &r, 10000) == 0, "conn %d: no response", i);
        TH_CHECK(r.status == 200, "conn %d: status %d %s", i, r.status, r.body);
        TH_CHECK(strcmp(r.body, "shared-value") == 0, "conn %d: body %s", i, r.body);
        th_resp_free(&r);
    }
    double open = th_metric(g_node.port, "kv_http_connections", NULL);
    cr_assert_geq(open, CONNS, "kv_http_connections %g with %d open", open, CONNS);
    for (int i = 0; i < CONNS; i++)
        close(fds[i]);
    /* The gauge falls back once the server has seen the closes. */
    int64_t deadline = th_now_ms() + 5000;
    while ((open = th_metric(g_node.port, "kv_http_connections", NULL)) > 1 &&
           th_now_ms() < deadline)
        usleep(20 * 1000);
    cr_assert_leq(open, 1, "kv_http_connections still %g after closing all", open);
    cr_assert_eq(rejected("too_many_connections"), 0);
    assert_still_serves();
    stop_clean();
}

/* Read the answer of a connection over the limit: the server may answer at once or only
 * after a request; either way it must be 503 too_many_connections, then close. */
static void expect_over_limit(void)
{
    int fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0, "connect over the limit refused at TCP level");
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 200) == 0) {
        const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        th_send_all(fd, req, sizeof req - 1);
    }
    th_resp r;
    char why[300];
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0, "no answer on a connection over the limit");
    cr_assert(th_is_problem(&r, 503, "too_many_connections", why, sizeof why), "%s", why);
    th_resp_free(&r);
    cr_assert(th_wait_closed(fd, 3000), "connection over the limit not closed");
    close(fd);
}

Test(node_malformed, connections_over_the_limit_get_503)
{
    const char *args[] = {"--limits.max_connections", "4", NULL};
    start_with(args);
    int held[4];
    const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    for (int i = 0; i < 4; i++) {
        held[i] = th_connect(g_node.port, 5000);
        cr_assert_geq(held[i], 0);
        cr_assert_eq(th_send_all(held[i], req, sizeof req - 1), 0);
        th_resp r;
        cr_assert_eq(th_read_resp(held[i], &r, 5000), 0);
        cr_assert_eq(r.status, 200, "held connection %d: %d", i, r.status);
        cr_assert(!r.closed);
        th_resp_free(&r);
    }
    for (int i = 0; i < 3; i++)
        expect_over_limit();

    /* The held connections were not disturbed. */
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(th_send_all(held[i], req, sizeof req - 1), 0);
        th_resp r;
        cr_assert_eq(th_read_resp(held[i], &r, 5000), 0, "held connection %d broken", i);
        cr_assert_eq(r.status, 200);
        th_resp_free(&r);
        close(held[i]);
    }
    /* Slots free up once the server has seen the closes. */
    int64_t deadline = th_now_ms() + 5000;
    int status = 0;
    while (th_now_ms() < deadline) {
        th_resp r;
        if (th_http(g_node.port, "GET", "/healthz", NULL, 0, &r) == 0) {
            status = r.status;
            th_resp_free(&r);
            if (status == 200)
                break;
        }
        usleep(20 * 1000);
    }
    cr_assert_eq(status, 200, "slots never freed after closing the held connections");
    cr_assert_eq(rejected("too_many_connections"), 3);
    assert_still_serves();
    stop_clean();
}
