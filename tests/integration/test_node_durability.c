/*
 * test_node_durability.c — what a real `kvstore servenode` promises about its data dir:
 * acknowledged writes survive kill -9 (storage.sync always), a torn or corrupt segment
 * tail is truncated with a log line and never served, SIGTERM drains in-flight requests
 * and exits 0, and a second node on the same data dir is refused while the first serves.
 *
 * Each test runs in a fresh temp dir; fini kills leftover nodes by PID and removes it.
 * The graceful-shutdown test uses client threads (each with its own socket and results
 * array; assertions happen on the test thread after they are joined).
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_tmp[256];
static char g_data[300];

static void setup(void)
{
    th_tmpdir(g_tmp, sizeof g_tmp);
    snprintf(g_data, sizeof g_data, "%s/data", g_tmp);
}

static void teardown(void)
{
    th_kill_all();
    th_tmpdir_remove(g_tmp);
}

TestSuite(node_durability, .init = setup, .fini = teardown, .timeout = 90);

/* Key and value of write i: values vary in length (1..300) and include NUL bytes. */
static int key_of(const char *prefix, int i, char *out, size_t cap)
{
    return snprintf(out, cap, "%s-%05d", prefix, i);
}

static size_t value_of(int i, unsigned char *out)
{
    size_t len = 1 + (size_t)((i * 37) % 300);
    for (size_t j = 0; j < len; j++)
        out[j] = (unsigned char)((i * 131 + (int)j * 7) & 0xff);
    return len;
}

/* Append one PUT of write i to the memstream m. */
static void fmt_put(FILE *m, const char *prefix, int i)
{
    char key[64];
    unsigned char val[400];
    key_of(prefix, i, key, sizeof key);
    size_t vlen = value_of(i, val);
    fprintf(m, "PUT /v1/kv/%s HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", key, vlen);
    fwrite(val, 1, vlen, m);
}

/*
 * Verify writes [0, n) with prefix are all readable with their values, in pipelined
 * batches of 100 over one keep-alive connection. skip may mark indexes not to check.
 */
static void verify_all(int port, const char *prefix, int n, const bool *skip)
{
    int fd = th_connect(port, 10000);
    cr_assert_geq(fd, 0);
    for (int base = 0; base < n; base += 100) {
        int end = base + 100 < n ? base + 100 : n;
        char *buf = NULL;
        size_t blen = 0;
        FILE *m = open_memstream(&buf, &blen);
        for (int i = base; i < end; i++) {
            if (skip && skip[i])
                continue;
            char key[64];
            key_of(prefix, i, key, sizeof key);
            fprintf(m, "GET /v1/kv/%s HTTP/1.1\r\nHost: x\r\n\r\n", key);
        }
        fclose(m);
        TH_CHECK(th_send_all(fd, buf, blen) == 0, "send of GET batch failed");
        free(buf);
        for (int i = base; i < end; i++) {
            if (skip && skip[i])
                continue;
            th_resp r;
            TH_CHECK(th_read_resp(fd, &r, 10000) == 0, "GET %s-%05d: no response", prefix, i);
            unsigned char want[400];
            size_t wlen = value_of(i, want);
            TH_CHECK(r.status == 200, "acknowledged key %s-%05d lost: status %d", prefix, i,
                     r.status);
            TH_CHECK(r.body_len == wlen && memcmp(r.body, want, wlen) == 0,
                     "key %s-%05d has a wrong value (%zu bytes, want %zu)", prefix, i, r.body_len,
                     wlen);
            th_resp_free(&r);
        }
    }
    close(fd);
}

/* Write [0, n) over nconns keep-alive connections, 50 pipelined PUTs per connection per
 * round; every one must be acknowledged with 204. */
static void write_all(int port, const char *prefix, int n, int nconns)
{
    int fds[8];
    cr_assert_leq(nconns, 8);
    for (int c = 0; c < nconns; c++) {
        fds[c] = th_connect(port, 10000);
        cr_assert_geq(fds[c], 0);
    }
    const int per = 50;
    for (int base = 0; base < n; base += per * nconns) {
        int cnt[8] = {0};
        for (int c = 0; c < nconns; c++) {
            char *buf = NULL;
            size_t blen = 0;
            FILE *m = open_memstream(&buf, &blen);
            for (int j = 0; j < per; j++) {
                int i = base + c * per + j;
                if (i >= n)
                    break;
                fmt_put(m, prefix, i);
                cnt[c]++;
            }
            fclose(m);
            if (blen > 0)
                TH_CHECK(th_send_all(fds[c], buf, blen) == 0, "send of PUT batch failed");
            free(buf);
        }
        for (int c = 0; c < nconns; c++) {
            for (int j = 0; j < cnt[c]; j++) {
                th_resp r;
                int i = base + c * per + j;
                TH_CHECK(th_read_resp(fds[c], &r, 20000) == 0, "PUT %s-%05d: no response", prefix,
                         i);
                TH_CHECK(r.status == 204, "PUT %s-%05d: %d %s", prefix, i, r.status, r.body);
                th_resp_free(&r);
            }
        }
    }
    for (int c = 0; c < nconns; c++)
        close(fds[c]);
}

static void start(th_node *n, const char *const *args)
{
    cr_assert_eq(th_node_start(n, g_data, 0, args, NULL, 20000), 0, "node did not start");
}

Test(node_durability, acknowledged_writes_survive_kill_9, .timeout = 150)
{
    const char *args[] = {"--storage.sync", "always", "--storage.segment_bytes", "256KiB", NULL};
    th_node n;
    start(&n, args);
    enum { N = 10000 };
    write_all(n.port, "dur", N, 4);
    /* Each round of 200 pipelined PUTs waits for its acks, so sync=always needs at least one
     * fsync per round. */
    double fsyncs = th_metric(n.port, "kv_store_fsyncs_total", NULL);
    cr_assert_geq(fsyncs, N / 200, "only %g fsyncs for %d acknowledged writes with sync=always",
                  fsyncs, N);
    th_node_kill9(&n);

    /* The stale LOCK of a killed node must not stop the restart. */
    th_node n2;
    start(&n2, args);
    verify_all(n2.port, "dur", N, NULL);
    cr_assert_eq(th_metric(n2.port, "kv_store_keys", NULL), N);
    cr_assert_gt(th_metric(n2.port, "kv_store_segments", NULL), 1,
                 "256 KiB segments should have rotated");
    cr_assert_eq(th_metric(n2.port, "kv_store_corrupt_records_total", NULL), 0);
    cr_assert_eq(th_node_stop(&n2, 10000), 0);
}

/* The path of the newest segment file under <data>/store (highest name). */
static void last_segment(char *out, size_t cap)
{
    char dir[400];
    snprintf(dir, sizeof dir, "%s/store", g_data);
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "no %s directory", dir);
    char best[256] = "";
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l > 4 && strcmp(e->d_name + l - 4, ".seg") == 0 && strcmp(e->d_name, best) > 0)
            snprintf(best, sizeof best, "%s", e->d_name);
    }
    closedir(d);
    cr_assert(best[0] != '\0', "no segment file in %s", dir);
    snprintf(out, cap, "%s/%s", dir, best);
}

static off_t file_size(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "stat %s", path);
    return st.st_size;
}

static void append_bytes(const char *path, const void *b, size_t len)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    cr_assert_geq(fd, 0, "open %s", path);
    cr_assert_eq(write(fd, b, len), (ssize_t)len);
    close(fd);
}

static bool log_has(const th_node *n, const char *needle)
{
    char *log = th_log_read(n);
    bool hit = strstr(log, needle) != NULL;
    free(log);
    return hit;
}

Test(node_durability, garbage_after_last_segment_is_truncated)
{
    const char *args[] = {"--storage.sync", "always", NULL};
    th_node n;
    start(&n, args);
    write_all(n.port, "torn", 300, 2);
    cr_assert_eq(th_node_stop(&n, 10000), 0, "node did not stop cleanly");

    char seg[600];
    last_segment(seg, sizeof seg);
    off_t before = file_size(seg);
    unsigned char junk[37];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (unsigned char)(i * 73 + 11);
    append_bytes(seg, junk, sizeof junk);

    start(&n, args);
    cr_assert(th_log_wait(&n, "truncated torn segment tail", 3000),
              "no 'truncated torn segment tail' line in the log after appending garbage");
    verify_all(n.port, "torn", 300, NULL);
    double cut = th_metric(n.port, "kv_store_truncated_bytes_total", NULL);
    cr_assert_geq(cut, sizeof junk, "kv_store_truncated_bytes_total %g < %zu", cut, sizeof junk);
    cr_assert_eq(th_metric(n.port, "kv_store_keys", NULL), 300);

    /* Writes after the truncation land on a clean tail and survive another restart. */
    write_all(n.port, "after", 50, 1);
    cr_assert_eq(th_node_stop(&n, 10000), 0);
    cr_assert_geq(file_size(seg), before, "segment shrank below its last good record");

    start(&n, args);
    verify_all(n.port, "torn", 300, NULL);
    verify_all(n.port, "after", 50, NULL);
    cr_assert(!log_has(&n, "truncated torn segment tail"),
              "second restart truncated again: the first truncation left a bad tail");
    cr_assert_eq(th_node_stop(&n, 10000), 0);
}

Test(node_durability, zero_filled_tail_is_truncated)
{
    /* A file system may leave zeros after a crash (preallocated blocks). */
    const char *args[] = {"--storage.sync", "always", NULL};
    th_node n;
    start(&n, args);
    write_all(n.port, "zero", 100, 1);
    th_node_kill9(&n);
    char seg[600];
    last_segment(seg, sizeof seg);
    static const unsigned char zeros[4096];
    append_bytes(seg, zeros, sizeof zeros);

    start(&n, args);
    cr_assert(th_log_wait(&n, "truncated torn segment tail", 3000),
              "no truncation log line for a zero-filled tail");
    verify_all(n.port, "zero", 100, NULL);
    cr_assert_eq(th_node_stop(&n, 10000), 0);
}

Test(node_durability, torn_last_record_is_dropped_not_served)
{
    const char *args[] = {"--storage.sync", "always", NULL};
    th_node n;
    start(&n, args);
    write_all(n.port, "cut", 100, 1);
    th_node_kill9(&n);

    /* Chop the last record in half: the last key is gone, nothing else. */
    char seg[600];
    last_segment(seg, sizeof seg);
    off_t size = file_size(seg);
    cr_assert_eq(truncate(seg, size - 3), 0);

    start(&n, args);
    cr_assert(th_log_wait(&n, "truncated torn segment tail", 3000),
              "no truncation log line for a torn last record");
    bool skip[100] = {false};
    skip[99] = true;
    verify_all(n.port, "cut", 100, skip);
    th_resp r;
    cr_assert_eq(th_http(n.port, "GET", "/v1/kv/cut-00099", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 404, "torn record served: status %d, %zu bytes", r.status, r.body_len);
    th_resp_free(&r);
    cr_assert_eq(th_node_stop(&n, 10000), 0);
}

Test(node_durability, corrupt_last_record_is_dropped_not_served)
{
    const char *args[] = {"--storage.sync", "always", NULL};
    th_node n;
    start(&n, args);
    write_all(n.port, "crc", 100, 1);
    th_node_kill9(&n);

    /* Flip a byte inside the last record (value 99 is 1 + 99*37%300 = 64 bytes long, so
     * two bytes from the end is inside it): its CRC no longer matches. */
    char seg[600];
    last_segment(seg, sizeof seg);
    off_t size = file_size(seg);
    int fd = open(seg, O_RDWR);
    cr_assert_geq(fd, 0);
    unsigned char b;
    cr_assert_eq(pread(fd, &b, 1, size - 2), 1);
    b ^= 0x5a;
    cr_assert_eq(pwrite(fd, &b, 1, size - 2), 1);
    close(fd);

    start(&n, args);
    bool skip[100] = {false};
    skip[99] = true;
    verify_all(n.port, "crc", 100, skip);
    th_resp r;
    cr_assert_eq(th_http(n.port, "GET", "/v1/kv/crc-00099", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 404, "corrupt record served: status %d, %zu bytes", r.status,
                 r.body_len);
    th_resp_free(&r);
    cr_assert_gt(th_metric(n.port, "kv_store_truncated_bytes_total", NULL) +
                     th_metric(n.port, "kv_store_corrupt_records_total", NULL),
                 0, "corruption not counted in the store metrics");
    cr_assert_eq(th_node_stop(&n, 10000), 0);
}

/* PUT path=val; returns the ETag (asserts 204). */
static void put_etag(int port, const char *path, const char *val, char *etag, size_t cap)
{
    th_resp r;
    cr_assert_eq(th_http(port, "PUT", path, val, strlen(val), &r), 0, "PUT %s", path);
    cr_assert_eq(r.status, 204, "PUT %s: %d %s", path, r.status, r.body);
    cr_assert(th_resp_header(&r, "ETag", etag, cap), "PUT %s: no ETag", path);
    th_resp_free(&r);
}

/* GET path: status, and the body / ETag when 200. */
static int get_val(int port, const char *path, char *val, size_t vcap, char *etag, size_t ecap)
{
    th_resp r;
    cr_assert_eq(th_http(port, "GET", path, NULL, 0, &r), 0, "GET %s", path);
    int st = r.status;
    if (st == 200) {
        snprintf(val, vcap, "%s", r.body);
        if (etag != NULL)
            th_resp_header(&r, "ETag", etag, ecap);
    }
    th_resp_free(&r);
    return st;
}

Test(node_durability, overwrites_deletes_ttls_and_versions_survive_restart)
{
    const char *args[] = {"--storage.sync", "always", NULL};
    th_node n;
    start(&n, args);
    char e1[128], e2[128], tmp[128], val[256], etag[128];
    put_etag(n.port, "/v1/kv/over", "first", e1, sizeof e1);
    put_etag(n.port, "/v1/kv/over", "second", e2, sizeof e2);
    put_etag(n.port, "/v1/kv/gone", "doomed", tmp, sizeof tmp);
    th_resp r;
    cr_assert_eq(th_http(n.port, "DELETE", "/v1/kv/gone", NULL, 0, &r), 0);
    cr_assert_eq(r.status, 204);
    th_resp_free(&r);
    cr_assert_eq(th_http(n.port, "PUT", "/v1/kv/short?ttl=1", "brief", 5, &r), 0);
    cr_assert_eq(r.status, 204);
    th_resp_free(&r);
    cr_assert_eq(th_http(n.port, "PUT", "/v1/kv/long?ttl=3600", "lasting", 7, &r), 0);
    cr_assert_eq(r.status, 204);
    th_resp_free(&r);
    /* Let the short TTL run out before the crash (poll with a deadline). */
    int64_t deadline = th_now_ms() + 4000;
    while (get_val(n.port, "/v1/kv/short", val, sizeof val, NULL, 0) == 200) {
        cr_assert_lt(th_now_ms(), deadline, "ttl=1 key still there after 4 s");
        usleep(50 * 1000);
    }
    th_node_kill9(&n);

    start(&n, args);
    cr_assert_eq(get_val(n.port, "/v1/kv/over", val, sizeof val, etag, sizeof etag), 200);
    cr_assert_str_eq(val, "second", "an older version won after restart: %s", val);
    cr_assert_str_eq(etag, e2, "the version changed across restart: %s, was %s", etag, e2);
    cr_assert_eq(get_val(n.port, "/v1/kv/gone", val, sizeof val, NULL, 0), 404,
                 "a deleted key came back after restart: %s", val);
    cr_assert_eq(get_val(n.port, "/v1/kv/short", val, sizeof val, NULL, 0), 404,
                 "an expired key came back after restart");
    cr_assert_eq(get_val(n.port, "/v1/kv/long", val, sizeof val, NULL, 0), 200,
                 "a key with a long ttl was lost");
    cr_assert_str_eq(val, "lasting");
    cr_assert_eq(th_metric(n.port, "kv_store_keys", NULL), 2, "live keys after restart");

    /* The version clock never goes backwards across a restart. */
    char e3[128];
    put_etag(n.port, "/v1/kv/over", "third", e3, sizeof e3);
    unsigned long long ts2 = strtoull(e2 + 1, NULL, 10), ts3 = strtoull(e3 + 1, NULL, 10);
    cr_assert_gt(ts3, ts2, "new version %s is not after the pre-restart one %s", e3, e2);
    cr_assert_eq(th_node_stop(&n, 10000), 0);
}

/* ---- graceful shutdown with requests in flight ---- */

enum { GT_THREADS = 4, GT_MAX = 20000 };

typedef struct gt_client {
    int port;
    int id;
    int sent;
    volatile int acked_count;
    bool acked[GT_MAX];
    int bad_status; /* a status other than 204 / 503, 0 if none */
    char bad_body[200];
} gt_client;

static void *gt_run(void *arg)
{
    gt_client *c = arg;
    int fd = th_connect(c->port, 5000);
    if (fd < 0)
        return NULL;
    char prefix[16];
    snprintf(prefix, sizeof prefix, "g%d", c->id);
    for (;;) {
        int base = c->sent;
        if (base + 20 > GT_MAX)
            break;
        char *buf = NULL;
        size_t blen = 0;
        FILE *m = open_memstream(&buf, &blen);
        for (int j = 0; j < 20; j++)
            fmt_put(m, prefix, base + j);
        fclose(m);
        int rc = th_send_all(fd, buf, blen);
        free(buf);
        if (rc != 0)
            break;
        c->sent += 20;
        bool stop = false;
        for (int j = 0; j < 20; j++) {
            th_resp r;
            if (th_read_resp(fd, &r, 10000) != 0) {
                stop = true;
                break;
            }
            if (r.status == 204) {
                c->acked[base + j] = true;
                __atomic_add_fetch(&c->acked_count, 1, __ATOMIC_RELAXED);
            } else if (r.status != 503 && c->bad_status == 0) {
                c->bad_status = r.status;
                snprintf(c->bad_body, sizeof c->bad_body, "%s", r.body);
            }
            if (r.closed)
                stop = true;
            th_resp_free(&r);
            if (stop)
                break;
        }
        if (stop)
            break;
    }
    close(fd);
    return NULL;
}

Test(node_durability, sigterm_drains_in_flight_requests_and_keeps_data, .timeout = 120)
{
    th_node n;
    start(&n, NULL);
    static gt_client clients[GT_THREADS];
    pthread_t th[GT_THREADS];
    for (int i = 0; i < GT_THREADS; i++) {
        memset(&clients[i], 0, sizeof clients[i]);
        clients[i].port = n.port;
        clients[i].id = i;
        cr_assert_eq(pthread_create(&th[i], NULL, gt_run, &clients[i]), 0);
    }
    /* Signal once writes are flowing on every connection. */
    int64_t deadline = th_now_ms() + 20000;
    for (;;) {
        int min = GT_MAX;
        for (int i = 0; i < GT_THREADS; i++) {
            int a = __atomic_load_n(&clients[i].acked_count, __ATOMIC_RELAXED);
            min = a < min ? a : min;
        }
        if (min >= 100)
            break;
        cr_assert_lt(th_now_ms(), deadline, "writes did not start flowing");
        usleep(5 * 1000);
    }
    cr_assert_eq(kill(n.pid, SIGTERM), 0);
    cr_assert(th_node_wait_exit(&n, 15000), "node still running 15 s after SIGTERM");
    for (int i = 0; i < GT_THREADS; i++)
        pthread_join(th[i], NULL);
    cr_assert_eq(n.exit_status, 0, "exit status %d after SIGTERM", n.exit_status);
    cr_assert(log_has(&n, "stopped"), "the log does not say the node stopped");
    for (int i = 0; i < GT_THREADS; i++)
        cr_assert_eq(clients[i].bad_status, 0, "client %d got status %d during shutdown: %s", i,
                     clients[i].bad_status, clients[i].bad_body);

    th_node n2;
    start(&n2, NULL);
    int total = 0;
    for (int i = 0; i < GT_THREADS; i++) {
        char prefix[16];
        snprintf(prefix, sizeof prefix, "g%d", i);
        static bool skip[GT_MAX];
        for (int k = 0; k < GT_MAX; k++)
            skip[k] = !clients[i].acked[k];
        verify_all(n2.port, prefix, clients[i].sent, skip);
        total += clients[i].acked_count;
    }
    cr_assert_geq(th_metric(n2.port, "kv_store_keys", NULL), total);
    cr_assert_eq(th_node_stop(&n2, 10000), 0);
}

Test(node_durability, idle_node_sigterm_exits_zero_and_sigint_too)
{
    th_node n;
    start(&n, NULL);
    write_all(n.port, "quiet", 10, 1);
    cr_assert_eq(th_node_stop(&n, 10000), 0, "SIGTERM exit status");
    cr_assert(log_has(&n, "stopped"), "the log does not say the node stopped");

    start(&n, NULL);
    verify_all(n.port, "quiet", 10, NULL);
    cr_assert_eq(kill(n.pid, SIGINT), 0);
    cr_assert(th_node_wait_exit(&n, 10000), "node ignored SIGINT");
    cr_assert_eq(n.exit_status, 0, "SIGINT exit status %d", n.exit_status);
}

Test(node_durability, second_node_on_same_data_dir_is_refused)
{
    th_node a;
    start(&a, NULL);
    write_all(a.port, "lock", 10, 1);

    int port2 = th_free_port();
    char p2[16];
    snprintf(p2, sizeof p2, "%d", port2);
    const char *argv[] = {
        th_bin("kvstore"), "servenode", "--server.host", "127.0.0.1", "--port", p2,
        "--data-dir",      g_data,      "--log-level",   "debug",     NULL};
    char *out = NULL, *err = NULL;
    int rc = th_run(argv, NULL, NULL, 0, &out, &err, 10000);
    cr_assert_neq(rc, -1, "second node did not exit (still running after 10 s)");
    cr_assert_neq(rc, 0, "second node on a locked data dir exited 0");
    char both[8192];
    snprintf(both, sizeof both, "%s\n%s", out, err);
    cr_assert(strcasestr(both, "lock") != NULL || strcasestr(both, "in use") != NULL,
              "message does not mention the lock: %s", both);
    free(out);
    free(err);
    int fd = th_connect(port2, 1000);
    cr_assert_lt(fd, 0, "something listens on the refused node's port");

    /* The first node is untouched and keeps serving. */
    cr_assert(th_node_alive(&a));
    verify_all(a.port, "lock", 10, NULL);
    write_all(a.port, "lock2", 10, 1);
    char lockpath[400], pidtxt[64] = "", want[32];
    snprintf(lockpath, sizeof lockpath, "%s/LOCK", g_data);
    FILE *f = fopen(lockpath, "r");
    cr_assert_not_null(f, "no LOCK file in the data dir");
    size_t got = fread(pidtxt, 1, sizeof pidtxt - 1, f);
    pidtxt[got] = '\0';
    fclose(f);
    snprintf(want, sizeof want, "%d", (int)a.pid);
    cr_assert(strstr(pidtxt, want) != NULL, "LOCK holds '%s', want the pid %s", pidtxt, want);

    /* Once the first stops, the directory is free again. */
    cr_assert_eq(th_node_stop(&a, 10000), 0);
    th_node b;
    start(&b, NULL);
    verify_all(b.port, "lock", 10, NULL);
    verify_all(b.port, "lock2", 10, NULL);
    cr_assert_eq(th_node_stop(&b, 10000), 0);
}
