/*
 * test_node_basic.c — one real `kvstore servenode` on 127.0.0.1, driven over raw sockets
 * as a client would: the key/value API round trip, versions in ETag, problem+json on
 * errors, binary values and percent-encoded keys, keep-alive and pipelining, the health
 * endpoints and the metrics they leave behind.
 *
 * Each test starts its own node in a fresh temp dir (init) and stops it by PID (fini),
 * also when an assertion failed. Single-threaded.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <ctype.h>
#include <poll.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_tmp[256];
static th_node g_node;

static void start_node(void)
{
    th_tmpdir(g_tmp, sizeof g_tmp);
    cr_assert_eq(th_node_start(&g_node, g_tmp, 0, NULL, NULL, 10000), 0, "node did not start");
}

static void stop_node(void)
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

TestSuite(node_basic, .init = start_node, .fini = stop_node, .timeout = 30);

/* ETag must look like "<ts>.<node>": quoted, two decimal fields. */
static void assert_etag_shape(const char *etag)
{
    size_t n = strlen(etag);
    cr_assert(n >= 5 && etag[0] == '"' && etag[n - 1] == '"', "ETag not quoted: %s", etag);
    const char *p = etag + 1;
    int digits = 0;
    while (isdigit((unsigned char)*p)) {
        p++;
        digits++;
    }
    cr_assert(digits > 0 && *p == '.', "ETag not \"<ts>.<node>\": %s", etag);
    p++;
    digits = 0;
    while (isdigit((unsigned char)*p)) {
        p++;
        digits++;
    }
    cr_assert(digits > 0 && *p == '"' && p == etag + n - 1, "ETag not \"<ts>.<node>\": %s", etag);
}

/* PUT path=val; asserts 204 and returns the ETag in etag. */
static void put_ok(const char *path, const void *val, size_t vlen, char *etag, size_t cap)
{
    th_resp r;
    cr_assert_eq(th_http(g_node.port, "PUT", path, val, vlen, &r), 0, "PUT %s: no response", path);
    cr_assert_eq(r.status, 204, "PUT %s: status %d body %s", path, r.status, r.body);
    char e[128] = "";
    cr_assert(th_resp_header(&r, "ETag", e, sizeof e), "PUT %s: no ETag", path);
    assert_etag_shape(e);
    if (etag != NULL)
        snprintf(etag, cap, "%s", e);
    th_resp_free(&r);
}

static void get_expect(const char *path, const void *val, size_t vlen)
{
    th_resp r;
    cr_assert_eq(th_http(g_node.port, "GET", path, NULL, 0, &r), 0, "GET %s: no response", path);
    cr_assert_eq(r.status, 200, "GET %s: status %d body %s", path, r.status, r.body);
    cr_assert_eq(r.body_len, vlen, "GET %s: %zu bytes, want %zu", path, r.body_len, vlen);
    cr_assert(memcmp(r.body, val, vlen) == 0, "GET %s: value differs", path);
    th_resp_free(&r);
}

static void get_missing(const char *path)
{
    th_resp r;
    char why[300];
    cr_assert_eq(th_http(g_node.port, "GET", path, NULL, 0, &r), 0, "GET %s: no response", path);
    cr_assert(th_is_problem(&r, 404, "key_not_found", why, sizeof why), "GET %s: %s", path, why);
    th_resp_free(&r);
}

Test(node_basic, put_get_delete_round_trip_with_etags)
{
    char e1[128], e2[128];
    put_ok("/v1/kv/alpha", "one", 3, e1, sizeof e1);

    th_resp r;
    cr_assert_eq(th_http(g_node.port, "GET", "/v1/kv/alpha", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "one");
    char ct[128] = "", etag[128] = "";
    cr_assert(th_resp_header(&r, "Content-Type", ct, sizeof ct));
    cr_assert_str_eq(ct, "application/octet-stream");
    cr_assert(th_resp_header(&r, "ETag", etag, sizeof etag), "GET has no ETag");
    cr_assert_str_eq(etag, e1, "GET ETag %s differs from PUT ETag %s", etag, e1);
    th_resp_free(&r);

    put_ok("/v1/kv/alpha", "two", 3, e2, sizeof e2);
    cr_assert_str_neq(e1, e2, "overwrite kept the same ETag %s", e1);
    cr_assert_eq(th_http(g_node.port, "GET", "/v1/kv/alpha", NULL, 0, &r), 0);
    cr_assert_str_eq(r.body, "two");
    th_resp_header(&r, "ETag", etag, sizeof etag);
    cr_assert_str_eq(etag, e2);
    th_resp_free(&r);

    cr_assert_eq(th_http(g_node.port, "DELETE", "/v1/kv/alpha", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 204, "DELETE: status %d", r.status);
    th_resp_free(&r);
    get_missing("/v1/kv/alpha");

    /* DELETE is idempotent: a missing key is still 204. */
    cr_assert_eq(th_http(g_node.port, "DELETE", "/v1/kv/alpha", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 204, "second DELETE: status %d", r.status);
    th_resp_free(&r);
    cr_assert_eq(th_http(g_node.port, "DELETE", "/v1/kv/never-written", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 204, "DELETE of a never-written key: status %d", r.status);
    th_resp_free(&r);

    /* A key can be written again after a delete. */
    put_ok("/v1/kv/alpha", "three", 5, NULL, 0);
    get_expect("/v1/kv/alpha", "three", 5);
    stop_clean();
}

Test(node_basic, etags_increase_with_each_write)
{
    char prev[128] = "", cur[128];
    unsigned long long pts = 0;
    for (int i = 0; i < 5; i++) {
        char v[16];
        int n = snprintf(v, sizeof v, "v%d", i);
        put_ok("/v1/kv/counter", v, (size_t)n, cur, sizeof cur);
        unsigned long long ts = strtoull(cur + 1, NULL, 10);
        cr_assert(i == 0 || ts > pts, "version ts did not grow: %s after %s", cur, prev);
        pts = ts;
        snprintf(prev, sizeof prev, "%s", cur);
    }
    stop_clean();
}

Test(node_basic, missing_key_is_404_problem_json)
{
    get_missing("/v1/kv/does-not-exist");
    th_resp r;
    char why[300], detail[256];
    cr_assert_eq(th_http(g_node.port, "GET", "/v1/kv/does-not-exist", NULL, 0, &r), 0);
    cr_assert(th_is_problem(&r, 404, "key_not_found", why, sizeof why), "%s", why);
    cr_assert(th_json_str(r.body, "detail", detail, sizeof detail), "no detail: %s", r.body);
    th_resp_free(&r);
    stop_clean();
}

Test(node_basic, unknown_route_and_wrong_method)
{
    th_resp r;
    char why[300], allow[128] = "";
    cr_assert_eq(th_http(g_node.port, "GET", "/nope", NULL, 0, &r), 0);
    cr_assert(th_is_problem(&r, 404, "route_not_found", why, sizeof why), "GET /nope: %s", why);
    th_resp_free(&r);

    cr_assert_eq(th_http(g_node.port, "POST", "/v1/kv/x", "a", 1, &r), 0);
    cr_assert(th_is_problem(&r, 405, "method_not_allowed", why, sizeof why), "POST: %s", why);
    cr_assert(th_resp_header(&r, "Allow", allow, sizeof allow), "405 without Allow");
    cr_assert(strstr(allow, "GET") && strstr(allow, "PUT") && strstr(allow, "DELETE"), "Allow: %s",
              allow);
    th_resp_free(&r);
    stop_clean();
}

Test(node_basic, binary_values_with_nul_bytes)
{
    unsigned char v[1024];
    for (size_t i = 0; i < sizeof v; i++)
        v[i] = (unsigned char)(i * 7 + 3);
    v[0] = 0;
    v[500] = 0;
    v[sizeof v - 1] = 0;
    put_ok("/v1/kv/bin", v, sizeof v, NULL, 0);
    get_expect("/v1/kv/bin", v, sizeof v);

    /* The empty value is a value, not a missing key. */
    put_ok("/v1/kv/empty", "", 0, NULL, 0);
    get_expect("/v1/kv/empty", "", 0);

    /* A larger value (256 KiB, below the 1 MiB default limit) arrives intact. */
    size_t big = 256 * 1024;
    unsigned char *b = malloc(big);
    for (size_t i = 0; i < big; i++)
        b[i] = (unsigned char)((i * 2654435761u) >> 13);
    put_ok("/v1/kv/big", b, big, NULL, 0);
    get_expect("/v1/kv/big", b, big);
    free(b);
    stop_clean();
}

Test(node_basic, percent_encoded_keys)
{
    /* Keys are bytes after percent-decoding: '/', NUL and UTF-8 are all fine. */
    put_ok("/v1/kv/a%2Fb", "slash", 5, NULL, 0);
    put_ok("/v1/kv/x%00y", "nul", 3, NULL, 0);
    put_ok("/v1/kv/cl%C3%A9", "utf8", 4, NULL, 0);
    put_ok("/v1/kv/sp%20ace%3F%23", "space", 5, NULL, 0);
    get_expect("/v1/kv/a%2Fb", "slash", 5);
    get_expect("/v1/kv/x%00y", "nul", 3);
    get_expect("/v1/kv/cl%C3%A9", "utf8", 4);
    get_expect("/v1/kv/sp%20ace%3F%23", "space", 5);

    /* The same bytes, encoded differently, are the same key. */
    get_expect("/v1/kv/a%2fb", "slash", 5);
    get_expect("/v1/kv/%63l%c3%a9", "utf8", 4);

    /* Different bytes are different keys: "x\0y" is not "x", "xy" or "x%00z". */
    get_missing("/v1/kv/x");
    get_missing("/v1/kv/xy");
    get_missing("/v1/kv/x%00z");

    /* Every byte value 0..255 in one key. */
    unsigned char key[256];
    for (int i = 0; i < 256; i++)
        key[i] = (unsigned char)i;
    char enc[800], path[820];
    th_pct_encode(key, sizeof key, enc, sizeof enc);
    snprintf(path, sizeof path, "/v1/kv/%s", enc);
    put_ok(path, "all-bytes", 9, NULL, 0);
    get_expect(path, "all-bytes", 9);
    stop_clean();
}

Test(node_basic, keep_alive_serves_many_requests_on_one_connection)
{
    int fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0);
    for (int i = 0; i < 20; i++) {
        char path[64], val[32];
        snprintf(path, sizeof path, "/v1/kv/ka-%d", i);
        int vl = snprintf(val, sizeof val, "value-%d", i);
        size_t len;
        char *req = th_fmt_req("PUT", path, val, (size_t)vl, &len);
        cr_assert_eq(th_send_all(fd, req, len), 0, "send on kept-alive connection failed");
        free(req);
        th_resp r;
        cr_assert_eq(th_read_resp(fd, &r, 5000), 0, "no response to request %d", i);
        cr_assert_eq(r.status, 204);
        cr_assert(!r.closed, "server closed a keep-alive connection after request %d", i);
        th_resp_free(&r);

        req = th_fmt_req("GET", path, NULL, 0, &len);
        cr_assert_eq(th_send_all(fd, req, len), 0);
        free(req);
        cr_assert_eq(th_read_resp(fd, &r, 5000), 0);
        cr_assert_eq(r.status, 200);
        cr_assert_eq(r.body_len, (size_t)vl);
        cr_assert(memcmp(r.body, val, (size_t)vl) == 0);
        cr_assert(!r.closed);
        th_resp_free(&r);
    }
    close(fd);
    stop_clean();
}

Test(node_basic, pipelined_requests_answered_in_order)
{
    int fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0);
    /* Three requests in one write. */
    const char req[] = "PUT /v1/kv/pipe HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                       "GET /v1/kv/pipe HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /v1/kv/pipe-missing HTTP/1.1\r\nHost: x\r\n\r\n";
    cr_assert_eq(th_send_all(fd, req, sizeof req - 1), 0);
    th_resp r;
    char why[300];
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0);
    cr_assert_eq(r.status, 204, "1st pipelined response: %d", r.status);
    th_resp_free(&r);
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0);
    cr_assert_eq(r.status, 200, "2nd pipelined response: %d", r.status);
    cr_assert_str_eq(r.body, "hello");
    th_resp_free(&r);
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0);
    cr_assert(th_is_problem(&r, 404, "key_not_found", why, sizeof why), "3rd: %s", why);
    th_resp_free(&r);

    /* A deeper pipeline: 100 PUTs and GETs interleaved in one write, answered in order. */
    char *all = NULL;
    size_t alen = 0;
    FILE *m = open_memstream(&all, &alen);
    for (int i = 0; i < 100; i++) {
        fprintf(m, "PUT /v1/kv/p%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%d", i,
                snprintf(NULL, 0, "%d", i * 31), i * 31);
        fprintf(m, "GET /v1/kv/p%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
    }
    fclose(m);
    cr_assert_eq(th_send_all(fd, all, alen), 0);
    free(all);
    for (int i = 0; i < 100; i++) {
        cr_assert_eq(th_read_resp(fd, &r, 5000), 0, "PUT %d: no response", i);
        cr_assert_eq(r.status, 204, "PUT %d: %d", i, r.status);
        th_resp_free(&r);
        cr_assert_eq(th_read_resp(fd, &r, 5000), 0, "GET %d: no response", i);
        cr_assert_eq(r.status, 200, "GET %d: %d", i, r.status);
        cr_assert_eq(atoi(r.body), i * 31, "GET %d out of order: body %s", i, r.body);
        th_resp_free(&r);
    }
    close(fd);
    stop_clean();
}

Test(node_basic, connection_close_is_honoured)
{
    const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    int fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0);
    cr_assert_eq(th_send_all(fd, req, sizeof req - 1), 0);
    th_resp r;
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0);
    cr_assert_eq(r.status, 200);
    th_resp_free(&r);
    cr_assert(th_wait_closed(fd, 3000), "server kept the connection after Connection: close");
    close(fd);

    /* HTTP/1.0 without keep-alive: one response, then close. */
    const char req10[] = "GET /healthz HTTP/1.0\r\n\r\n";
    fd = th_connect(g_node.port, 5000);
    cr_assert_eq(th_send_all(fd, req10, sizeof req10 - 1), 0);
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0);
    cr_assert_eq(r.status, 200);
    th_resp_free(&r);
    cr_assert(th_wait_closed(fd, 3000), "server kept an HTTP/1.0 connection open");
    close(fd);
    stop_clean();
}

Test(node_basic, health_and_readiness)
{
    th_resp r;
    char ct[128] = "", st[64] = "";
    cr_assert_eq(th_http(g_node.port, "GET", "/healthz", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 200);
    cr_assert(th_resp_header(&r, "Content-Type", ct, sizeof ct));
    cr_assert(strncmp(ct, "application/json", 16) == 0, "healthz Content-Type %s", ct);
    cr_assert(th_json_str(r.body, "status", st, sizeof st), "healthz body %s", r.body);
    cr_assert_str_eq(st, "ok");
    th_resp_free(&r);

    cr_assert_eq(th_http(g_node.port, "GET", "/readyz", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 200, "readyz status %d body %s", r.status, r.body);
    cr_assert(th_resp_header(&r, "Content-Type", ct, sizeof ct));
    cr_assert(strncmp(ct, "application/json", 16) == 0, "readyz Content-Type %s", ct);
    cr_assert(th_json_str(r.body, "status", st, sizeof st), "readyz body %s", r.body);
    cr_assert_str_eq(st, "ready");
    th_resp_free(&r);
    stop_clean();
}

Test(node_basic, metrics_reflect_requests)
{
    th_resp r;
    char ct[128] = "";
    cr_assert_eq(th_http(g_node.port, "GET", "/metrics", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 200);
    cr_assert(th_resp_header(&r, "Content-Type", ct, sizeof ct));
    cr_assert(strncmp(ct, "text/plain", 10) == 0 && strstr(ct, "version=0.0.4"),
              "metrics Content-Type %s", ct);
    /* Every family the brief names is there (some may still be zero). */
    const char *families[] = {"kv_http_requests_total", "kv_http_request_duration_seconds",
                              "kv_http_connections",    "kv_store_keys",
                              "kv_store_live_bytes",    "kv_store_disk_bytes",
                              "kv_store_segments",      "kv_store_fsyncs_total"};
    for (size_t i = 0; i < sizeof families / sizeof *families; i++)
        cr_assert(strstr(r.body, families[i]) != NULL, "metric %s missing from /metrics",
                  families[i]);
    th_resp_free(&r);

    double total0 = th_metric(g_node.port, "kv_http_requests_total", NULL);
    cr_assert_geq(total0, 1, "kv_http_requests_total is %g after requests", total0);
    cr_assert_eq(th_metric(g_node.port, "kv_store_keys", NULL), 0);

    for (int i = 0; i < 7; i++) {
        char path[32];
        snprintf(path, sizeof path, "/v1/kv/m%d", i);
        put_ok(path, "x", 1, NULL, 0);
    }
    put_ok("/v1/kv/m0", "overwrite", 9, NULL, 0); /* same key: still 7 keys */
    get_expect("/v1/kv/m1", "x", 1);
    get_expect("/v1/kv/m2", "x", 1);
    get_missing("/v1/kv/nope");

    cr_assert_eq(th_metric(g_node.port, "kv_store_keys", NULL), 7);
    double puts = th_metric(g_node.port, "kv_http_requests_total",
                            "route=\"kv\",method=\"PUT\",status=\"204\"");
    double gets = th_metric(g_node.port, "kv_http_requests_total",
                            "route=\"kv\",method=\"GET\",status=\"200\"");
    double miss = th_metric(g_node.port, "kv_http_requests_total",
                            "route=\"kv\",method=\"GET\",status=\"404\"");
    cr_assert_eq(puts, 8, "PUT 204 count %g, want 8", puts);
    cr_assert_eq(gets, 2, "GET 200 count %g, want 2", gets);
    cr_assert_eq(miss, 1, "GET 404 count %g, want 1", miss);
    double total1 = th_metric(g_node.port, "kv_http_requests_total", NULL);
    cr_assert_geq(total1, total0 + 11, "requests_total %g did not grow by 11 from %g", total1,
                  total0);
    double hist = th_metric(g_node.port, "kv_http_request_duration_seconds_count", "route=\"kv\"");
    cr_assert_eq(hist, 11, "kv duration histogram count %g, want 11", hist);

    th_resp d;
    cr_assert_eq(th_http(g_node.port, "DELETE", "/v1/kv/m3", NULL, 0, &d), 0);
    th_resp_free(&d);
    cr_assert_eq(th_metric(g_node.port, "kv_store_keys", NULL), 6, "a deleted key still counts");
    cr_assert_gt(th_metric(g_node.port, "kv_store_live_bytes", NULL), 0);
    cr_assert_gt(th_metric(g_node.port, "kv_store_disk_bytes", NULL), 0);
    cr_assert_geq(th_metric(g_node.port, "kv_store_segments", NULL), 1);
    double hz = th_metric(g_node.port, "kv_http_requests_total", "route=\"healthz\"");
    cr_assert_geq(hz, 1, "healthz requests not counted");
    stop_clean();
}

Test(node_basic, ttl_expires_key)
{
    th_resp r;
    char why[300];
    cr_assert_eq(th_http(g_node.port, "PUT", "/v1/kv/ephemeral?ttl=1", "tmp", 3, &r), 0);
    cr_assert_eq(r.status, 204, "PUT ?ttl=1: %d %s", r.status, r.body);
    th_resp_free(&r);
    put_ok("/v1/kv/durable", "stay", 4, NULL, 0);

    /* It expires: wait for the 404 with a deadline well past the 1 s TTL. */
    int64_t deadline = th_now_ms() + 4000;
    int status = 0;
    while (th_now_ms() < deadline) {
        cr_assert_eq(th_http(g_node.port, "GET", "/v1/kv/ephemeral", NULL, 0, &r), 0);
        status = r.status;
        th_resp_free(&r);
        if (status == 404)
            break;
        cr_assert_eq(status, 200, "before expiry GET gave %d", status);
        usleep(50 * 1000); /* poll interval inside the deadline loop */
    }
    cr_assert_eq(status, 404, "key with ttl=1 still there after 4 s");
    get_expect("/v1/kv/durable", "stay", 4);

    const char *bad[] = {"/v1/kv/k?ttl=abc", "/v1/kv/k?ttl=0", "/v1/kv/k?ttl=-5",
                         "/v1/kv/k?ttl=1.5"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_eq(th_http(g_node.port, "PUT", bad[i], "v", 1, &r), 0);
        cr_assert(th_is_problem(&r, 400, "invalid_query", why, sizeof why), "PUT %s: %s", bad[i],
                  why);
        th_resp_free(&r);
    }
    get_missing("/v1/kv/k");
    stop_clean();
}

Test(node_basic, chunked_request_body_is_assembled)
{
    int fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0);
    const char req[] =
        "PUT /v1/kv/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n";
    cr_assert_eq(th_send_all(fd, req, sizeof req - 1), 0);
    th_resp r;
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0);
    cr_assert_eq(r.status, 204, "chunked PUT: %d %s", r.status, r.body);
    th_resp_free(&r);
    close(fd);
    get_expect("/v1/kv/chunked", "hello world", 11);
    stop_clean();
}

Test(node_basic, expect_100_continue_is_answered)
{
    /* curl sends "Expect: 100-continue" for bodies over 1 KiB and waits for the interim
     * answer before sending the body. */
    int fd = th_connect(g_node.port, 5000);
    cr_assert_geq(fd, 0);
    const char head[] = "PUT /v1/kv/cont HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                        "Expect: 100-continue\r\n\r\n";
    cr_assert_eq(th_send_all(fd, head, sizeof head - 1), 0);
    char buf[64] = "";
    struct pollfd p = {.fd = fd, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 2000), 1, "no 100 Continue within 2 s");
    ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_PEEK);
    cr_assert_gt(n, 0);
    cr_assert(strncmp(buf, "HTTP/1.1 100", 12) == 0, "got '%.*s' instead of 100 Continue", (int)n,
              buf);
    cr_assert_eq(th_send_all(fd, "data", 4), 0);
    th_resp r;
    cr_assert_eq(th_read_resp(fd, &r, 5000), 0); /* skips the interim response */
    cr_assert_eq(r.status, 204, "PUT after 100 Continue: %d", r.status);
    th_resp_free(&r);
    close(fd);
    get_expect("/v1/kv/cont", "data", 4);
    stop_clean();
}

Test(node_basic, value_of_exactly_the_default_max_is_accepted)
{
    size_t len = 1024 * 1024; /* limits.max_value default: 1 MiB */
    unsigned char *v = malloc(len);
    for (size_t i = 0; i < len; i++)
        v[i] = (unsigned char)(i ^ (i >> 8));
    put_ok("/v1/kv/mib", v, len, NULL, 0);
    get_expect("/v1/kv/mib", v, len);
    free(v);
    th_resp r;
    char why[300];
    const char over[] = "PUT /v1/kv/mib2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n";
    cr_assert_eq(th_http_raw(g_node.port, over, sizeof over - 1, &r, 5000), 0);
    cr_assert(th_is_problem(&r, 413, "value_too_large", why, sizeof why), "%s", why);
    th_resp_free(&r);
    stop_clean();
}

Test(node_basic, concurrent_overwrites_newest_version_wins)
{
    /* Four connections overwrite one key with pipelined PUTs; whatever order the node
     * applies them in, a GET afterwards returns the write with the highest version. */
    enum { CONNS = 4, PER = 25 };
    int fds[CONNS];
    for (int c = 0; c < CONNS; c++) {
        fds[c] = th_connect(g_node.port, 5000);
        cr_assert_geq(fds[c], 0);
    }
    for (int c = 0; c < CONNS; c++) {
        char *buf = NULL;
        size_t blen = 0;
        FILE *m = open_memstream(&buf, &blen);
        for (int j = 0; j < PER; j++) {
            char v[32];
            int vl = snprintf(v, sizeof v, "c%d-%d", c, j);
            fprintf(m, "PUT /v1/kv/hot HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", vl, v);
        }
        fclose(m);
        cr_assert_eq(th_send_all(fds[c], buf, blen), 0);
        free(buf);
    }
    unsigned long long best_ts = 0, best_node = 0;
    char best_val[32] = "", best_etag[128] = "";
    static char seen[CONNS * PER][128];
    int nseen = 0;
    for (int c = 0; c < CONNS; c++) {
        for (int j = 0; j < PER; j++) {
            th_resp r;
            char etag[128] = "";
            TH_CHECK(th_read_resp(fds[c], &r, 5000) == 0, "conn %d PUT %d: no response", c, j);
            TH_CHECK(r.status == 204, "conn %d PUT %d: %d", c, j, r.status);
            TH_CHECK(th_resp_header(&r, "ETag", etag, sizeof etag), "no ETag");
            th_resp_free(&r);
            for (int k = 0; k < nseen; k++)
                TH_CHECK(strcmp(seen[k], etag) != 0, "two writes got the same version %s", etag);
            snprintf(seen[nseen++], sizeof seen[0], "%s", etag);
            char *dot = strchr(etag, '.');
            TH_CHECK(dot != NULL, "ETag %s", etag);
            unsigned long long ts = strtoull(etag + 1, NULL, 10);
            unsigned long long node = strtoull(dot + 1, NULL, 10);
            if (ts > best_ts || (ts == best_ts && node > best_node)) {
                best_ts = ts;
                best_node = node;
                snprintf(best_val, sizeof best_val, "c%d-%d", c, j);
                snprintf(best_etag, sizeof best_etag, "%s", etag);
            }
        }
        close(fds[c]);
    }
    th_resp r;
    char etag[128] = "";
    cr_assert_eq(th_http(g_node.port, "GET", "/v1/kv/hot", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 200);
    th_resp_header(&r, "ETag", etag, sizeof etag);
    cr_assert_str_eq(r.body, best_val, "GET returned %s (ETag %s), newest write was %s (ETag %s)",
                     r.body, etag, best_val, best_etag);
    cr_assert_str_eq(etag, best_etag);
    th_resp_free(&r);
    stop_clean();
}
