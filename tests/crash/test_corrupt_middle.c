/*
 * test_corrupt_middle.c — a record damaged in the MIDDLE of a segment (bit rot, a bad
 * sector: not a torn tail) while the node is stopped. The node must start, say so in its
 * log, count it in kv_store_corrupt_records_total, skip that one record (its key reads
 * 404, never 500, never the damaged bytes) and serve every other key with its value.
 *
 * The damaged record is found by walking the segment with the engine's own record codec
 * (store/format.h), so the test follows the format if it changes. Both ways an older
 * segment is loaded are covered: scanned record by record, and from its hint file (which
 * names the record; the damage is only visible in the segment). Each test runs its own
 * node in a fresh temp dir; fini kills leftovers by PID and removes the dir.
 */
#include "harness.h"
#include "store/format.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

TestSuite(corrupt_middle, .init = setup, .fini = teardown, .timeout = 120);

enum { NKEYS = 400, VLEN = 100 };

static const char *const g_args[] = {"--storage.sync", "always", "--storage.segment_bytes", "4KiB",
                                     NULL};

static void key_of(int i, char *out, size_t cap)
{
    snprintf(out, cap, "mid-%05d", i);
}

static void value_of(int i, unsigned char *out)
{
    for (int j = 0; j < VLEN; j++)
        out[j] = (unsigned char)((i * 131 + j * 17 + (j >> 3)) & 0xff);
}

/* PUT every key once, 50 pipelined per batch; each must be acknowledged. */
static void write_keys(int port)
{
    int fd = th_connect(port, 10000);
    cr_assert_geq(fd, 0);
    for (int base = 0; base < NKEYS; base += 50) {
        int end = base + 50 < NKEYS ? base + 50 : NKEYS;
        char *buf = NULL;
        size_t blen = 0;
        FILE *m = open_memstream(&buf, &blen);
        for (int i = base; i < end; i++) {
            char key[32];
            unsigned char val[VLEN];
            key_of(i, key, sizeof key);
            value_of(i, val);
            fprintf(m, "PUT /v1/kv/%s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n", key,
                    VLEN);
            fwrite(val, 1, VLEN, m);
        }
        fclose(m);
        TH_CHECK(th_send_all(fd, buf, blen) == 0, "send failed");
        free(buf);
        for (int i = base; i < end; i++) {
            th_resp r;
            TH_CHECK(th_read_resp(fd, &r, 10000) == 0, "PUT %d: no answer", i);
            TH_CHECK(r.status == 204, "PUT %d: status %d", i, r.status);
            th_resp_free(&r);
        }
    }
    close(fd);
}

/* Every key but `damaged` reads back its value; `damaged` reads 404. */
static void verify_keys(int port, const char *damaged)
{
    int fd = th_connect(port, 10000);
    cr_assert_geq(fd, 0);
    int served = 0;
    for (int i = 0; i < NKEYS; i++) {
        char key[32], req[128];
        key_of(i, key, sizeof key);
        int n = snprintf(req, sizeof req, "GET /v1/kv/%s HTTP/1.1\r\nHost: t\r\n\r\n", key);
        TH_CHECK(th_send_all(fd, req, (size_t)n) == 0, "send failed");
        th_resp r;
        TH_CHECK(th_read_resp(fd, &r, 10000) == 0, "GET %s: no answer", key);
        if (strcmp(key, damaged) == 0) {
            TH_CHECK(r.status == 404, "damaged record's key %s: status %d (want 404, skipped)", key,
                     r.status);
        } else {
            unsigned char want[VLEN];
            value_of(i, want);
            TH_CHECK(r.status == 200, "key %s lost next to a damaged record: status %d", key,
                     r.status);
            TH_CHECK(r.body_len == VLEN && memcmp(r.body, want, VLEN) == 0,
                     "key %s has wrong bytes", key);
            served++;
        }
        th_resp_free(&r);
    }
    close(fd);
    cr_assert_eq(served, NKEYS - 1);
}

/* Segment files under <data>/store, sorted by name (= by id). Returns how many. */
static int list_segments(char names[][700], int cap)
{
    char dir[400];
    snprintf(dir, sizeof dir, "%s/store", g_data);
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "no %s", dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < cap) {
        size_t l = strlen(e->d_name);
        if (l > 4 && strcmp(e->d_name + l - 4, ".seg") == 0)
            snprintf(names[n++], 700, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    /* Insertion sort: names are zero-padded ids, so string order is id order. */
    for (int i = 1; i < n; i++) {
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char t[700];
            memcpy(t, names[j], sizeof t);
            memcpy(names[j], names[j - 1], sizeof t);
            memcpy(names[j - 1], t, sizeof t);
        }
    }
    return n;
}

static unsigned char *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0, "open %s", path);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    unsigned char *b = malloc((size_t)st.st_size + 1);
    cr_assert_not_null(b);
    cr_assert_eq(pread(fd, b, (size_t)st.st_size, 0), st.st_size);
    close(fd);
    *len = (size_t)st.st_size;
    return b;
}

/*
 * In segment `path`, pick the put record in the middle of its record list (at least one
 * intact record before and after it), flip one byte in the middle of its value, and
 * return its key in key_out. Fails the test if the segment has fewer than 3 records.
 */
static void damage_middle_record(const char *path, char *key_out, size_t cap)
{
    size_t len;
    unsigned char *b = read_file(path, &len);
    store_seg_hdr sh;
    cr_assert_eq(store_seg_hdr_decode(b, len, &sh), STORE_SEG_HDR_OK, "bad header in %s", path);
    size_t offs[4096];
    int n = 0;
    size_t pos = sh.hdr_len;
    while (pos < len && n < 4096) {
        store_rec_hdr h;
        cr_assert_eq(store_rec_parse(b + pos, len - pos, &h), STORE_REC_OK,
                     "%s is not intact at offset %zu before the test damaged it", path, pos);
        if (h.type == STORE_REC_PUT && h.vlen > 0)
            offs[n++] = pos;
        pos += store_rec_len(&h);
    }
    cr_assert_geq(n, 3, "%s holds only %d put records", path, n);
    size_t at = offs[n / 2];
    store_rec_hdr h;
    store_rec_hdr_decode(b + at, &h);
    cr_assert_lt(h.klen, cap);
    memcpy(key_out, b + at + STORE_REC_HDR_LEN, h.klen);
    key_out[h.klen] = '\0';
    size_t flip = at + STORE_REC_HDR_LEN + h.klen + h.vlen / 2;
    free(b);

    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    unsigned char c;
    cr_assert_eq(pread(fd, &c, 1, (off_t)flip), 1);
    c ^= 0x20;
    cr_assert_eq(pwrite(fd, &c, 1, (off_t)flip), 1);
    cr_assert_eq(fsync(fd), 0);
    close(fd);
}

static bool log_mentions_corruption(const th_node *n)
{
    char *log = th_log_read(n);
    bool hit = false;
    for (char *line = log; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (strstr(line, "corrupt") && (strstr(line, "level=warn") || strstr(line, "level=error")))
            hit = true;
        line = nl ? nl + 1 : NULL;
    }
    free(log);
    return hit;
}

/* Delete every hint file of segment `seg_path` (….seg → ….hint); true if there was one. */
static bool remove_hint_of(const char *seg_path)
{
    char hint[700];
    size_t l = strlen(seg_path);
    cr_assert_gt(l, 4);
    snprintf(hint, sizeof hint, "%.*s.hint", (int)(l - 4), seg_path);
    return unlink(hint) == 0;
}

static bool hint_exists(const char *seg_path)
{
    char hint[700];
    size_t l = strlen(seg_path);
    snprintf(hint, sizeof hint, "%.*s.hint", (int)(l - 4), seg_path);
    return access(hint, F_OK) == 0;
}

/*
 * Write, stop cleanly, damage a middle record of segment `which` (index into the sorted
 * list; negative counts from the end), restart and check everything the test promises.
 * A clean stop leaves a hint file beside every segment; with_hint false deletes the
 * damaged segment's hint first, so the segment is scanned instead of loaded from it.
 */
static void run_case(int which, bool with_hint)
{
    th_node n;
    cr_assert_eq(th_node_start(&n, g_data, 0, g_args, NULL, 20000), 0, "node did not start");
    write_keys(n.port);
    cr_assert_eq(th_node_stop(&n, 10000), 0, "node did not stop cleanly");

    static char names[256][700];
    int nseg = list_segments(names, 256);
    cr_assert_geq(nseg, 3, "4 KiB segments should have rotated (only %d)", nseg);
    int idx = which >= 0 ? which : nseg + which;
    char key[256];
    damage_middle_record(names[idx], key, sizeof key);
    if (with_hint)
        cr_assert(hint_exists(names[idx]), "no hint file beside %s after a clean stop", names[idx]);
    else
        remove_hint_of(names[idx]);

    cr_assert_eq(th_node_start(&n, g_data, 0, g_args, NULL, 20000), 0,
                 "node did not start with a damaged record in %s", names[idx]);
    cr_assert(log_mentions_corruption(&n), "no warn/error log line about the damaged record");
    double counted = th_metric(n.port, "kv_store_corrupt_records_total", NULL);
    cr_assert_geq(counted, 1, "kv_store_corrupt_records_total = %g", counted);
    verify_keys(n.port, key);
    cr_assert_eq(th_metric(n.port, "kv_store_corrupt_reads_total", NULL), 0,
                 "the damaged value was read from disk: it should have been skipped on open");
    cr_assert_eq(th_metric(n.port, "kv_store_keys", NULL), NKEYS - 1);
    cr_assert(th_node_stop_clean(&n, 10000));
}

Test(corrupt_middle, record_in_middle_of_an_older_segment_is_skipped_when_scanned)
{
    run_case(1, false);
}

Test(corrupt_middle, record_in_middle_of_an_older_segment_is_skipped_when_loaded_from_its_hint)
{
    run_case(1, true);
}

Test(corrupt_middle, record_in_middle_of_the_newest_segment_is_skipped)
{
    run_case(-1, false);
}
