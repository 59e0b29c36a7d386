/*
 * crashtest.c — the storage engine's crash test (issue 3, item 9): rounds of writing to a
 * real `kvstore servenode` with storage.sync=always, kill -9 at a random moment, restart
 * on the same data directory, and a check that nothing acknowledged was lost.
 *
 *   crashtest [--rounds N] [--seed S] [--keys K] [--conns C] [--depth D]
 *             [--kill-min-ms A] [--kill-max-ms B] [--recovery-kills P] [--dir DIR]
 *             [--keep] [--node-arg ARG]... [--quiet] [--self-test-lose]
 *
 * Exit status: 0 all rounds passed, 1 a check failed (or the node misbehaved), 2 usage.
 * Single process, a few threads: the main thread runs the rounds; one writer thread per
 * client connection during the write phase. Writer threads own disjoint key sets, so the
 * model below needs no locks; the main thread reads it only after joining them.
 *
 * ==== Design notes: what "nothing lost" means ====
 *
 * Keys are ck-00000 .. ck-(K-1); key k belongs to connection k % C, so all writes to one
 * key go over one connection, in order, and HTTP/1.1 answers them in that order. Every
 * write carries a value that exists nowhere else (it names the key and a per-key sequence
 * number, and its bytes derive from both), so a value read back identifies the write.
 *
 * Per key the model keeps:
 *   base  — what the key read as at the last verification (absent, or write s);
 *   sent  — the writes sent to it since then, in send order (a write is recorded BEFORE
 *           its bytes go out, so a write the node may have seen is always in the model);
 *   acked — 1 + the index in `sent` of the last write acknowledged (204), 0 if none.
 *           Answers arrive in send order; anything but 204 fails the run.
 *
 * After kill -9 and restart, the key must read as one of the ACCEPTABLE states:
 *   - if acked > 0: the state of sent[acked-1] (the last acknowledged write: its value,
 *     or 404 for a delete) or of any sent[j], j >= acked (sent after it, unacknowledged
 *     when the node died: it may or may not have become durable);
 *   - if acked == 0: base, or the state of any sent[j].
 * A value older than the last acknowledged write is LOST, a value that matches no
 * acceptable write is WRONG, a 500 is CORRUPT; all three fail the run. What the key reads
 * as becomes its new base. A 404 where a put is required counts as lost; a 200 where a
 * delete was the last acknowledged write (and no later put was sent) counts as lost too
 * (the delete was lost).
 *
 * Round r: (in P% of rounds: start the node and kill -9 it 1-60 ms later, while it may
 * still be recovering) → start the node (wait for /readyz) → verify every key → write
 * from C connections (depth D pipelined requests each; overwrites and ~15% deletes, no
 * TTLs) → after a random delay in [A, B] ms (seeded), read the node's compaction
 * counters and kill -9 it. After the last round: start, verify, SIGTERM, and the node
 * must exit 0. The same data directory is used by every round, with small segments and
 * low compaction thresholds (ct_default_node_args) so that segment rotation, compaction
 * and hint files are part of what gets killed; a failed compaction fails the run.
 *
 * The seed fixes the kill delays, key choices, operations and values; thread timing is
 * not reproducible, so a failing seed shows the pattern, not the exact interleaving.
 * kill -9 kills the process, not the machine: the page cache survives, so this proves the
 * recovery logic (torn tails, rotation, compaction, hints), not fsync ordering against
 * power loss.
 */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CT_MAX_CONNS     16
#define CT_MAX_DEPTH     64
#define CT_MAX_NODE_ARGS 32
#define CT_MAX_VALUE     (64 * 1024)
#define CT_VERIFY_BATCH  100
#define CT_REPORT_LIMIT  20
#define CT_START_TIMEOUT 30000
#define CT_RESP_TIMEOUT  30000
#define CT_ABSENT        UINT64_MAX /* state: the key reads 404 */

/* ---------- seeded randomness (splitmix64) ---------- */

static uint64_t ct_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t ct_rand(uint64_t *state)
{
    *state += 0x9e3779b97f4a7c15ull;
    return ct_mix(*state);
}

/* Uniform in [lo, hi]. */
static uint64_t ct_range(uint64_t *state, uint64_t lo, uint64_t hi)
{
    return lo + ct_rand(state) % (hi - lo + 1);
}

/* ---------- writes and their values ---------- */

/* A write is (seq << 1) | is_delete; seq numbers are per key and start at 1. The state a
 * write leaves is CT_ABSENT for a delete, the write itself for a put. */
static uint64_t ct_state_of(uint64_t w)
{
    return (w & 1) ? CT_ABSENT : w;
}

static int ct_key(uint32_t k, char *out, size_t cap)
{
    return snprintf(out, cap, "ck-%05" PRIu32, k);
}

/*
 * The value of put w to key k: a text prefix naming both, then filler whose kind and
 * length derive from (k, w). Mostly small values; some larger ones, half of those very
 * compressible (so LZ4 paths get exercised once the engine compresses), and some bytes
 * of every value random (so a stale copy can never match by accident). Returns the
 * length written into out (CT_MAX_VALUE bytes).
 */
static size_t ct_value(uint32_t k, uint64_t w, uint8_t *out)
{
    uint64_t h = ct_mix(((uint64_t)k << 40) ^ w);
    uint64_t pick = h % 100;
    size_t len;
    if (pick < 70)
        len = 8 + (size_t)(ct_mix(h) % 200);
    else if (pick < 90)
        len = 200 + (size_t)(ct_mix(h) % 1800);
    else if (pick < 98)
        len = 2000 + (size_t)(ct_mix(h) % 14000);
    else
        len = 16000 + (size_t)(ct_mix(h) % (CT_MAX_VALUE - 16000));
    bool compressible = (h >> 32) & 1;
    int p = snprintf((char *)out, CT_MAX_VALUE, "key=%" PRIu32 " write=%" PRIu64 ";", k, w >> 1);
    size_t n = (size_t)p < len ? (size_t)p : len;
    uint64_t r = h;
    for (size_t i = n; i < len; i++) {
        if (compressible && (i % 64) != 0) {
            out[i] = (uint8_t)('a' + (i / 64) % 26);
        } else {
            if ((i & 7) == 0 || i == n)
                r = ct_mix(r + i);
            out[i] = (uint8_t)(r >> (8 * (i & 7)));
        }
    }
    return len;
}

/* ---------- the model ---------- */

typedef struct ct_key_model {
    uint64_t base;     /* state at the last verification */
    uint64_t next_seq; /* next write's sequence number (never reused) */
    uint64_t *sent;    /* writes since the last verification, in send order */
    size_t nsent, capsent;
    size_t answered; /* sent[0..answered) got an answer (in send order) */
    size_t acked;    /* 1 + index in sent of the last write answered 204; 0 if none */
} ct_key_model;

typedef struct ct_opts {
    int rounds;
    uint64_t seed;
    uint32_t keys;
    int conns;
    int depth;
    int kill_min_ms, kill_max_ms;
    const char *dir;
    bool keep, quiet;
    bool self_test;        /* --self-test-lose: damage the store after each kill; must FAIL */
    int recovery_kill_pct; /* rounds that also kill a restart while it recovers */
    const char *node_args[CT_MAX_NODE_ARGS];
    int nnode_args;
} ct_opts;

typedef struct ct_totals {
    uint64_t sent, acked, deletes_acked;
    uint64_t unacked_at_kill;  /* sent, not acknowledged when the node died */
    uint64_t inflight_applied; /* of those, found durable at the next verification */
    uint64_t checked;          /* key verifications */
    uint64_t lost, wrong, corrupt, other;
    uint64_t errors; /* unexpected answers during the write phase */
    uint64_t torn_repaired;
    uint64_t recovery_kills;    /* restarts killed while opening the store */
    uint64_t compactions;       /* finished, as counted by the killed nodes */
    uint64_t compaction_errors; /* must stay 0 */
} ct_totals;

typedef struct ct_run {
    ct_opts o;
    ct_key_model *km;
    ct_totals t;
    th_node node;
    char data_dir[512];
    int reported;
} ct_run;

static void ct_fail(ct_run *run, const char *fmt, ...)
{
    if (run->reported++ >= CT_REPORT_LIMIT)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "crashtest: FAIL: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int ct_push_sent(ct_key_model *m, uint64_t w)
{
    if (m->nsent == m->capsent) {
        size_t cap = m->capsent ? m->capsent * 2 : 8;
        uint64_t *p = realloc(m->sent, cap * sizeof(*p));
        if (!p)
            return -1;
        m->sent = p;
        m->capsent = cap;
    }
    m->sent[m->nsent++] = w;
    return 0;
}

/* ---------- write phase ---------- */

typedef struct ct_writer {
    ct_run *run;
    int conn;
    int round;
    int fd; /* connected by the main thread before the kill timer starts */
    uint64_t rng;
    /* FIFO of requests in flight on this connection: key index of each. */
    uint32_t q[CT_MAX_DEPTH];
    int qhead, qlen;
    uint64_t sent, acked, deletes_acked, errors;
    char first_error[256];
} ct_writer;

/* Pick one of this connection's keys (k % conns == conn). */
static uint32_t ct_pick_key(ct_writer *w)
{
    uint32_t keys = w->run->o.keys, conns = (uint32_t)w->run->o.conns;
    uint32_t mine = (keys - (uint32_t)w->conn + conns - 1) / conns;
    return (uint32_t)w->conn + conns * (uint32_t)ct_range(&w->rng, 0, mine - 1);
}

static int ct_send_write(ct_writer *w, int fd, uint8_t *vbuf)
{
    ct_key_model *km = w->run->km;
    uint32_t k = ct_pick_key(w);
    ct_key_model *m = &km[k];
    bool del = ct_range(&w->rng, 0, 99) < 15;
    uint64_t wr = (m->next_seq++ << 1) | (del ? 1u : 0u);
    /* Into the model before the first byte leaves: the node may apply it from here on. */
    if (ct_push_sent(m, wr) != 0)
        return -1;
    char key[32], path[64];
    ct_key(k, key, sizeof key);
    snprintf(path, sizeof path, "/v1/kv/%s", key);
    size_t rlen;
    char *req;
    if (del) {
        req = th_fmt_req("DELETE", path, NULL, 0, &rlen);
    } else {
        size_t vlen = ct_value(k, wr, vbuf);
        req = th_fmt_req("PUT", path, vbuf, vlen, &rlen);
    }
    if (!req)
        return -1;
    int rc = th_send_all(fd, req, rlen);
    free(req);
    w->sent++;
    w->q[(w->qhead + w->qlen) % CT_MAX_DEPTH] = k;
    w->qlen++;
    return rc;
}

static void *ct_writer_main(void *arg)
{
    ct_writer *w = arg;
    uint8_t *vbuf = malloc(CT_MAX_VALUE);
    int fd = w->fd;
    if (!vbuf) {
        snprintf(w->first_error, sizeof w->first_error, "connection %d: out of memory", w->conn);
        w->errors++;
        close(fd);
        return NULL;
    }
    for (;;) {
        bool dead = false;
        while (w->qlen < w->run->o.depth) {
            if (ct_send_write(w, fd, vbuf) != 0) {
                dead = true; /* the node is gone (or we are out of memory: see errors) */
                break;
            }
        }
        if (dead && w->qlen == 0)
            break;
        th_resp r;
        if (th_read_resp(fd, &r, CT_RESP_TIMEOUT) != 0)
            break; /* killed: whatever is still queued stays unacknowledged */
        uint32_t k = w->q[w->qhead];
        w->qhead = (w->qhead + 1) % CT_MAX_DEPTH;
        w->qlen--;
        ct_key_model *m = &w->run->km[k];
        /* Answers come in send order, so this one is for the key's oldest unanswered
         * write. A non-204 fails the run; the write stays "maybe" in the model. */
        size_t idx = m->answered++;
        if (r.status == 204) {
            m->acked = idx + 1;
            w->acked++;
            if (m->sent[idx] & 1)
                w->deletes_acked++;
        } else if (w->errors++ == 0) {
            snprintf(w->first_error, sizeof w->first_error, "connection %d: status %d: %.150s",
                     w->conn, r.status, r.body ? r.body : "");
        }
        th_resp_free(&r);
        if (dead)
            break;
    }
    close(fd);
    free(vbuf);
    return NULL;
}

/* ---------- verification ---------- */

/* Does the body read for key k equal the value of put w? */
static bool ct_value_is(uint32_t k, uint64_t w, const th_resp *r, uint8_t *vbuf)
{
    if (w == CT_ABSENT || (w & 1))
        return false;
    size_t len = ct_value(k, w, vbuf);
    return r->body_len == len && memcmp(r->body, vbuf, len) == 0;
}

/* Judge key k's answer against its model and make what it read the new base. */
static void ct_judge(ct_run *run, uint32_t k, const th_resp *r, uint8_t *vbuf)
{
    ct_key_model *m = &run->km[k];
    char key[32];
    ct_key(k, key, sizeof key);
    run->t.checked++;
    size_t first = m->acked > 0 ? m->acked - 1 : 0; /* oldest acceptable index in sent */
    bool base_ok = m->acked == 0;
    uint64_t observed = 0;
    bool ok = false;
    size_t matched = SIZE_MAX;

    if (r->status == 404) {
        observed = CT_ABSENT;
        if (base_ok && m->base == CT_ABSENT)
            ok = true;
        for (size_t j = first; j < m->nsent && !ok; j++) {
            if (ct_state_of(m->sent[j]) == CT_ABSENT) {
                ok = true;
                matched = j;
            }
        }
    } else if (r->status == 200) {
        if (base_ok && ct_value_is(k, m->base, r, vbuf)) {
            ok = true;
            observed = m->base;
        }
        for (size_t j = first; j < m->nsent && !ok; j++) {
            if (ct_value_is(k, m->sent[j], r, vbuf)) {
                ok = true;
                observed = m->sent[j];
                matched = j;
            }
        }
    }

    if (ok) {
        if (matched != SIZE_MAX && matched >= m->acked)
            run->t.inflight_applied++;
    } else {
        uint64_t want = m->acked > 0 ? m->sent[m->acked - 1] : m->base;
        const char *want_s = ct_state_of(want) == CT_ABSENT ? "absent" : "a value";
        if (r->status == 500) {
            run->t.corrupt++;
            ct_fail(run, "%s: 500 (corrupt) — want %s (write %" PRIu64 ")", key, want_s, want >> 1);
        } else if (r->status == 404 || r->status == 200) {
            /* Did it read as some OLDER write of this key? Then an ack was lost. */
            bool older = false;
            for (size_t j = 0; j < first && !older; j++)
                older = r->status == 200 ? ct_value_is(k, m->sent[j], r, vbuf)
                                         : ct_state_of(m->sent[j]) == CT_ABSENT;
            if (!older)
                older = r->status == 200 ? ct_value_is(k, m->base, r, vbuf) : m->base == CT_ABSENT;
            if (older) {
                run->t.lost++;
                ct_fail(run,
                        "%s: acknowledged write %" PRIu64 " LOST: reads as an older state "
                        "(%s, %zu bytes); want %s or one of %zu later writes",
                        key, want >> 1, r->status == 404 ? "absent" : "a value", r->body_len,
                        want_s, m->nsent - m->acked);
            } else {
                run->t.wrong++;
                ct_fail(run,
                        "%s: reads %d with %zu bytes that match no write sent to it; want %s "
                        "(write %" PRIu64 ")",
                        key, r->status, r->body_len, want_s, want >> 1);
            }
        } else {
            run->t.other++;
            ct_fail(run, "%s: unexpected status %d", key, r->status);
        }
        observed = r->status == 404 ? CT_ABSENT : want; /* carry on from the promise */
    }
    m->base = observed;
    m->nsent = 0;
    m->answered = 0;
    m->acked = 0;
}

/* Read every key back (pipelined batches on one connection) and judge it. */
static int ct_verify(ct_run *run)
{
    int port = run->node.port;
    int fd = th_connect(port, CT_RESP_TIMEOUT);
    if (fd < 0) {
        ct_fail(run, "cannot connect for verification");
        return -1;
    }
    uint8_t *vbuf = malloc(CT_MAX_VALUE);
    int rc = vbuf ? 0 : -1;
    for (uint32_t base = 0; rc == 0 && base < run->o.keys; base += CT_VERIFY_BATCH) {
        uint32_t end = base + CT_VERIFY_BATCH < run->o.keys ? base + CT_VERIFY_BATCH : run->o.keys;
        char *buf = NULL;
        size_t blen = 0;
        FILE *mf = open_memstream(&buf, &blen);
        if (!mf) {
            rc = -1;
            break;
        }
        for (uint32_t k = base; k < end; k++) {
            char key[32];
            ct_key(k, key, sizeof key);
            fprintf(mf, "GET /v1/kv/%s HTTP/1.1\r\nHost: crashtest\r\n\r\n", key);
        }
        fclose(mf);
        rc = th_send_all(fd, buf, blen);
        free(buf);
        for (uint32_t k = base; rc == 0 && k < end; k++) {
            th_resp r;
            if (th_read_resp(fd, &r, CT_RESP_TIMEOUT) != 0) {
                ct_fail(run, "verification: no answer for key %" PRIu32, k);
                rc = -1;
                break;
            }
            ct_judge(run, k, &r, vbuf);
            th_resp_free(&r);
        }
    }
    free(vbuf);
    close(fd);
    if (rc != 0)
        return rc;
    double cr = th_metric(port, "kv_store_corrupt_reads_total", NULL);
    if (cr != 0) {
        ct_fail(run, "kv_store_corrupt_reads_total = %g after verification", cr);
        run->t.corrupt++;
    }
    double repaired = th_metric(port, "kv_store_corrupt_records_total", NULL);
    if (repaired > 0)
        run->t.torn_repaired += (uint64_t)repaired;
    return 0;
}

/* ---------- node control ---------- */

static int ct_start(ct_run *run)
{
    const char *args[CT_MAX_NODE_ARGS + 8];
    int n = 0;
    args[n++] = "--log-level";
    args[n++] = "info";
    for (int i = 0; i < run->o.nnode_args; i++)
        args[n++] = run->o.node_args[i];
    args[n] = NULL;
    if (th_node_start(&run->node, run->data_dir, 0, args, NULL, CT_START_TIMEOUT) != 0) {
        ct_fail(run, "node did not start (log above)");
        return -1;
    }
    int64_t deadline = th_now_ms() + CT_START_TIMEOUT;
    for (;;) {
        th_resp r;
        if (th_http(run->node.port, "GET", "/readyz", NULL, 0, &r) == 0) {
            int st = r.status;
            th_resp_free(&r);
            if (st == 200)
                return 0;
        }
        if (th_now_ms() >= deadline || !th_node_alive(&run->node)) {
            ct_fail(run, "node never became ready");
            return -1;
        }
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/*
 * A restart killed while it recovers: start kvstore on the data directory (same
 * arguments as ct_start) and kill -9 it after delay_ms, whether or not it is ready yet,
 * so that whatever recovery does on open (truncating a torn tail, finishing or undoing
 * an interrupted compaction, loading hints) is itself interrupted. Its log is appended
 * to <data>/recovery-kills.log.
 */
static int ct_recovery_kill(ct_run *run, int delay_ms)
{
    char port[16], cport[16];
    snprintf(port, sizeof port, "%d", th_free_port());
    snprintf(cport, sizeof cport, "%d", th_free_port());
    const char *argv[CT_MAX_NODE_ARGS + 20];
    int a = 0;
    argv[a++] = th_bin("kvstore");
    argv[a++] = "servenode";
    argv[a++] = "--server.host";
    argv[a++] = "127.0.0.1";
    argv[a++] = "--port";
    argv[a++] = port;
    argv[a++] = "--cluster.host";
    argv[a++] = "127.0.0.1";
    argv[a++] = "--cluster.port";
    argv[a++] = cport;
    argv[a++] = "--data-dir";
    argv[a++] = run->data_dir;
    argv[a++] = "--log-level";
    argv[a++] = "info";
    for (int i = 0; i < run->o.nnode_args; i++)
        argv[a++] = run->o.node_args[i];
    argv[a] = NULL;
    char log[600];
    snprintf(log, sizeof log, "%s/recovery-kills.log", run->data_dir);
    mkdir(run->data_dir, 0755); /* the first round may find none yet */
    int logfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (logfd < 0) {
        ct_fail(run, "cannot open %s: %s", log, strerror(errno));
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(logfd);
    if (pid < 0)
        return -1;
    struct timespec ts = {delay_ms / 1000, (long)(delay_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    run->t.recovery_kills++;
    /* Exiting by itself (not by our signal) means it could not start. */
    if (WIFEXITED(st)) {
        ct_fail(run, "a restart exited with status %d before it was killed (log: %s)",
                WEXITSTATUS(st), log);
        return -1;
    }
    return 0;
}

static int ct_count_files(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    size_t sl = strlen(suffix);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l > sl && strcmp(de->d_name + l - sl, suffix) == 0)
            n++;
    }
    closedir(d);
    return n;
}

/*
 * --self-test-lose: proof that the checker can fail. After a kill, delete the newest
 * segment files (at least 512 KiB of them, and any file sharing their base name, such as
 * a hint) as a store that lost acknowledged writes would look. The run must then report
 * lost > 0.
 */
static void ct_tamper(ct_run *run)
{
    char dir[600];
    snprintf(dir, sizeof dir, "%s/store", run->data_dir);
    uint64_t removed = 0;
    while (removed < 512 * 1024) {
        DIR *d = opendir(dir);
        if (!d)
            return;
        char best[256] = "";
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            size_t l = strlen(de->d_name);
            if (l > 4 && strcmp(de->d_name + l - 4, ".seg") == 0 && strcmp(de->d_name, best) > 0)
                snprintf(best, sizeof best, "%s", de->d_name);
        }
        closedir(d);
        if (!best[0])
            return;
        char path[900];
        snprintf(path, sizeof path, "%s/%s", dir, best);
        struct stat st;
        if (stat(path, &st) == 0)
            removed += (uint64_t)st.st_size;
        unlink(path);
        best[strlen(best) - 4] = '\0';
        d = opendir(dir);
        if (!d)
            return;
        while ((de = readdir(d)) != NULL) {
            if (strncmp(de->d_name, best, strlen(best)) == 0 && de->d_name[strlen(best)] == '.') {
                snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
                unlink(path);
            }
        }
        closedir(d);
    }
    printf("self-test: deleted the newest %" PRIu64 " bytes of segments\n", removed);
}

/* ---------- one round ---------- */

static int ct_round(ct_run *run, int round, uint64_t *rng)
{
    if ((int)ct_range(rng, 0, 99) < run->o.recovery_kill_pct &&
        ct_recovery_kill(run, (int)ct_range(rng, 1, 60)) != 0)
        return -1;
    if (ct_start(run) != 0)
        return -1;
    if (ct_verify(run) != 0)
        return -1;

    int kill_ms = (int)ct_range(rng, (uint64_t)run->o.kill_min_ms, (uint64_t)run->o.kill_max_ms);
    ct_writer w[CT_MAX_CONNS];
    pthread_t th[CT_MAX_CONNS];
    /* Connect everyone first: a thread that started late must not find the node killed. */
    for (int c = 0; c < run->o.conns; c++) {
        w[c] = (ct_writer){.run = run, .conn = c, .round = round};
        w[c].rng = ct_mix(run->o.seed ^ ((uint64_t)round << 20) ^ (uint64_t)c);
        w[c].fd = th_connect(run->node.port, CT_RESP_TIMEOUT);
        if (w[c].fd < 0) {
            ct_fail(run, "round %d: connection %d could not connect", round, c);
            for (int j = 0; j < c; j++)
                close(w[j].fd);
            th_node_kill9(&run->node);
            return -1;
        }
    }
    for (int c = 0; c < run->o.conns; c++) {
        if (pthread_create(&th[c], NULL, ct_writer_main, &w[c]) != 0) {
            ct_fail(run, "pthread_create failed");
            th_node_kill9(&run->node);
            for (int j = 0; j < c; j++)
                pthread_join(th[j], NULL);
            for (int j = c; j < run->o.conns; j++)
                close(w[j].fd);
            return -1;
        }
    }
    struct timespec ts = {kill_ms / 1000, (long)(kill_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    /* What the node did this round (its counters die with it): one /metrics fetch, then
     * the kill. */
    double compactions = th_metric(run->node.port, "kv_store_compactions_total", NULL);
    double compaction_errors = th_metric(run->node.port, "kv_store_compaction_errors_total", NULL);
    bool alive = th_node_alive(&run->node);
    th_node_kill9(&run->node);
    if (compactions > 0)
        run->t.compactions += (uint64_t)compactions;
    if (compaction_errors > 0) {
        run->t.compaction_errors += (uint64_t)compaction_errors;
        ct_fail(run, "round %d: %g compactions failed (log: %s)", round, compaction_errors,
                run->node.log_path);
    }
    for (int c = 0; c < run->o.conns; c++)
        pthread_join(th[c], NULL);

    uint64_t sent = 0, acked = 0, errors = 0;
    for (int c = 0; c < run->o.conns; c++) {
        sent += w[c].sent;
        acked += w[c].acked;
        errors += w[c].errors;
        run->t.deletes_acked += w[c].deletes_acked;
        if (w[c].errors)
            ct_fail(run, "round %d: %s", round, w[c].first_error);
    }
    run->t.sent += sent;
    run->t.acked += acked;
    run->t.errors += errors;
    run->t.unacked_at_kill += sent - acked;
    if (run->o.self_test)
        ct_tamper(run);
    if (!alive)
        ct_fail(run, "round %d: the node died before it was killed (log: %s)", round,
                run->node.log_path);
    char store_dir[600];
    snprintf(store_dir, sizeof store_dir, "%s/store", run->data_dir);
    if (!run->o.quiet)
        printf("round %3d: kill after %4d ms, %6" PRIu64 " writes sent, %6" PRIu64
               " acknowledged, %2" PRIu64 " in flight, %3.0f compactions, %3d segment and %3d "
               "hint files\n",
               round, kill_ms, sent, acked, sent - acked, compactions > 0 ? compactions : 0,
               ct_count_files(store_dir, ".seg"), ct_count_files(store_dir, ".hint"));
    fflush(stdout);
    return alive && errors == 0 && compaction_errors <= 0 ? 0 : -1;
}

/* ---------- main ---------- */

static void ct_usage(FILE *f)
{
    fprintf(
        f,
        "usage: crashtest [options]\n"
        "  Rounds of: start kvstore servenode (storage.sync=always, small segments, low\n"
        "  compaction thresholds), write from several connections, kill -9 at a random\n"
        "  moment, restart, and verify that every acknowledged write reads back (see the\n"
        "  design notes in crashtest.c).\n"
        "\n"
        "  --rounds N        kill -9 rounds (default 15)\n"
        "  --seed S          RNG seed (default: from the clock; always printed)\n"
        "  --keys K          key space (default 1000)\n"
        "  --conns C         client connections writing at once (default 4, max %d)\n"
        "  --depth D         pipelined requests in flight per connection (default 4, max %d)\n"
        "  --kill-min-ms A   earliest kill, ms into the write phase (default 20)\n"
        "  --kill-max-ms B   latest kill (default 700)\n"
        "  --dir DIR         data directory (default: a fresh temporary one)\n"
        "  --keep            keep the data directory afterwards (it is always kept on failure)\n"
        "  --node-arg ARG    extra argument for kvstore servenode (repeatable), e.g.\n"
        "                    --node-arg=--storage.segment_bytes --node-arg=1MiB\n"
        "  --recovery-kills P  in P%% of rounds (default 20) first kill -9 a restart\n"
        "                    1-60 ms after it starts, while it may still be recovering\n"
        "  --quiet           only the summary line\n"
        "  --self-test-lose  test the checker: delete the newest segments after each kill;\n"
        "                    exits 0 only if lost writes were then reported\n"
        "Exit status: 0 passed, 1 a check failed, 2 usage.\n",
        CT_MAX_CONNS, CT_MAX_DEPTH);
}

static bool ct_parse_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

/* The node settings every round uses unless overridden by --node-arg (later args win). */
/* Small segments and low compaction thresholds: rotation and compaction (with its hint
 * files) happen every round or two, so kills land in the middle of them. Values from
 * 1 KiB up are LZ4-compressed when that saves space (half of the larger values do).
 * Segments of 64 KiB rather than smaller: a compaction must be able to finish between
 * two kills, or it never does (the engine compacts all garbage-holding segments in one
 * job, and each new node starts over) and the segments pile up. */
static const char *const ct_default_node_args[] = {
    "--storage.sync",
    "always",
    "--storage.segment_bytes",
    "64KiB",
    "--storage.compaction_dead_ratio",
    "0.3",
    "--storage.compaction_min_bytes",
    "256KiB",
    "--storage.compression_threshold",
    "1KiB",
};

static int ct_parse(int argc, char **argv, ct_opts *o)
{
    *o = (ct_opts){.rounds = 15,
                   .keys = 1000,
                   .conns = 4,
                   .depth = 4,
                   .kill_min_ms = 20,
                   .kill_max_ms = 700,
                   .recovery_kill_pct = 20};
    o->seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
    for (size_t i = 0; i < sizeof ct_default_node_args / sizeof *ct_default_node_args; i++)
        o->node_args[o->nnode_args++] = ct_default_node_args[i];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        char name[64];
        const char *eq = strchr(a, '=');
        if (strncmp(a, "--", 2) == 0 && eq && (size_t)(eq - a) < sizeof name) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = '\0';
            val = eq + 1;
            a = name;
        }
        bool has_val = strcmp(a, "--keep") != 0 && strcmp(a, "--quiet") != 0 &&
                       strcmp(a, "--self-test-lose") != 0 && strcmp(a, "--help") != 0 &&
                       strcmp(a, "-h") != 0;
        if (has_val && !val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "crashtest: %s needs a value\n", a);
                return 2;
            }
            val = argv[++i];
        }
        long v = 0;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            ct_usage(stdout);
            exit(0);
        } else if (strcmp(a, "--keep") == 0) {
            o->keep = true;
        } else if (strcmp(a, "--quiet") == 0) {
            o->quiet = true;
        } else if (strcmp(a, "--self-test-lose") == 0) {
            o->self_test = true;
        } else if (strcmp(a, "--rounds") == 0 && ct_parse_int(val, 1, 1000000, &v)) {
            o->rounds = (int)v;
        } else if (strcmp(a, "--seed") == 0) {
            char *end;
            errno = 0;
            o->seed = strtoull(val, &end, 0);
            if (errno || end == val || *end) {
                fprintf(stderr, "crashtest: bad --seed '%s'\n", val);
                return 2;
            }
        } else if (strcmp(a, "--keys") == 0 && ct_parse_int(val, 1, 10000000, &v)) {
            o->keys = (uint32_t)v;
        } else if (strcmp(a, "--conns") == 0 && ct_parse_int(val, 1, CT_MAX_CONNS, &v)) {
            o->conns = (int)v;
        } else if (strcmp(a, "--depth") == 0 && ct_parse_int(val, 1, CT_MAX_DEPTH, &v)) {
            o->depth = (int)v;
        } else if (strcmp(a, "--kill-min-ms") == 0 && ct_parse_int(val, 0, 600000, &v)) {
            o->kill_min_ms = (int)v;
        } else if (strcmp(a, "--kill-max-ms") == 0 && ct_parse_int(val, 0, 600000, &v)) {
            o->kill_max_ms = (int)v;
        } else if (strcmp(a, "--recovery-kills") == 0 && ct_parse_int(val, 0, 100, &v)) {
            o->recovery_kill_pct = (int)v;
        } else if (strcmp(a, "--dir") == 0) {
            o->dir = val;
        } else if (strcmp(a, "--node-arg") == 0 && o->nnode_args < CT_MAX_NODE_ARGS) {
            o->node_args[o->nnode_args++] = val;
        } else {
            fprintf(stderr, "crashtest: bad option or value: %s %s (try --help)\n", a,
                    val ? val : "");
            return 2;
        }
    }
    if (o->kill_max_ms < o->kill_min_ms) {
        fprintf(stderr, "crashtest: --kill-max-ms is below --kill-min-ms\n");
        return 2;
    }
    if ((uint32_t)o->conns > o->keys) {
        fprintf(stderr, "crashtest: --conns exceeds --keys\n");
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    ct_run run = {0};
    int prc = ct_parse(argc, argv, &run.o);
    if (prc != 0)
        return prc;
    char tmp[256] = "";
    if (run.o.dir) {
        snprintf(run.data_dir, sizeof run.data_dir, "%s", run.o.dir);
    } else {
        th_tmpdir(tmp, sizeof tmp);
        snprintf(run.data_dir, sizeof run.data_dir, "%s/data", tmp);
    }
    run.km = calloc(run.o.keys, sizeof(*run.km));
    if (!run.km) {
        fprintf(stderr, "crashtest: out of memory\n");
        return 1;
    }
    for (uint32_t k = 0; k < run.o.keys; k++) {
        run.km[k].base = CT_ABSENT;
        run.km[k].next_seq = 1;
    }
    printf("crashtest: seed=%" PRIu64 " rounds=%d keys=%" PRIu32 " conns=%d depth=%d "
           "kill=%d..%dms dir=%s\n",
           run.o.seed, run.o.rounds, run.o.keys, run.o.conns, run.o.depth, run.o.kill_min_ms,
           run.o.kill_max_ms, run.data_dir);
    printf("crashtest: node args:");
    for (int i = 0; i < run.o.nnode_args; i++)
        printf(" %s", run.o.node_args[i]);
    printf("\n");

    int64_t t0 = th_now_ms();
    uint64_t rng = run.o.seed;
    int rounds_done = 0;
    int rc = 0;
    for (int r = 1; r <= run.o.rounds && rc == 0; r++) {
        rc = ct_round(&run, r, &rng);
        if (rc == 0)
            rounds_done++;
    }
    /* The last kill's writes are judged by one more start; then a clean stop. */
    if (rc == 0 && ct_start(&run) == 0) {
        if (ct_verify(&run) != 0)
            rc = -1;
        int st = th_node_stop(&run.node, 30000);
        if (st != 0) {
            ct_fail(&run, "final SIGTERM: node exited with status %d (log: %s)", st,
                    run.node.log_path);
            rc = -1;
        } else if (!th_log_sanitizer_clean(&run.node)) {
            ct_fail(&run, "sanitizer report in %s", run.node.log_path);
            rc = -1;
        }
    } else {
        rc = -1;
    }
    th_kill_all();

    bool pass = rc == 0 && run.t.lost == 0 && run.t.wrong == 0 && run.t.corrupt == 0 &&
                run.t.other == 0 && run.t.errors == 0 && run.t.compaction_errors == 0;
    double secs = (double)(th_now_ms() - t0) / 1000.0;
    printf("crashtest: %s seed=%" PRIu64 " rounds=%d/%d writes_sent=%" PRIu64
           " writes_acknowledged=%" PRIu64 " (deletes %" PRIu64 ") unacknowledged_at_kill=%" PRIu64
           " of_which_durable=%" PRIu64 " keys_verified=%" PRIu64 " lost=%" PRIu64 " wrong=%" PRIu64
           " corrupt=%" PRIu64 " errors=%" PRIu64 " repaired_records=%" PRIu64
           " recovery_kills=%" PRIu64 " compactions=%" PRIu64 " seconds=%.1f\n",
           pass ? "PASS" : "FAIL", run.o.seed, rounds_done, run.o.rounds, run.t.sent, run.t.acked,
           run.t.deletes_acked, run.t.unacked_at_kill, run.t.inflight_applied, run.t.checked,
           run.t.lost, run.t.wrong, run.t.corrupt, run.t.errors + run.t.other, run.t.torn_repaired,
           run.t.recovery_kills, run.t.compactions, secs);
    if (run.o.self_test) {
        bool caught = run.t.lost > 0;
        printf("self-test: %s (lost=%" PRIu64 ")\n",
               caught ? "PASS, the checker reported the deleted writes as lost"
                      : "FAIL, the checker did not notice the deleted writes",
               run.t.lost);
        if (tmp[0])
            th_tmpdir_remove(tmp);
        for (uint32_t k = 0; k < run.o.keys; k++)
            free(run.km[k].sent);
        free(run.km);
        return caught ? 0 : 1;
    }
    if (!pass || run.o.keep) {
        printf("crashtest: data directory kept: %s\n", run.data_dir);
    } else if (tmp[0]) {
        th_tmpdir_remove(tmp);
    }
    for (uint32_t k = 0; k < run.o.keys; k++)
        free(run.km[k].sent);
    free(run.km);
    return pass ? 0 : 1;
}
