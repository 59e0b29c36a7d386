/*
 * test_hints.c — hinted handoff (src/repl/hints.h): hints kept durably per target (newest
 * version wins, counts exact across restarts), delivered as WRITEs with KV_REPL_REQ_HINT
 * when the target is alive, removed on an OK or STALE ack, resent when no ack comes,
 * never more than `window` in flight, paused while the target is down, bounded in count
 * and bytes, tombstones delivered as tombstones, malformed stored hints skipped and
 * removed. The sans-I/O delivery core (hints_core.h) is also driven alone, without a
 * store.
 *
 * A real hint store in a mkdtemp directory, a private libuv loop run until a condition
 * holds (every wait has a deadline), and a fake io->send that records the messages so the
 * test can answer them through kv_hints_on_ack.
 */
#include "common/hlc.h"
#include "kvstore/error.h"
#include "repl/hints.h"
#include "repl/hints_core.h"
#include "store/store.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

static char g_dir[256];
static char g_hdir[300];
static uv_loop_t g_loop;
static uv_timer_t g_tick;
static kv_hints *g_h;

static const swim_member_id T1 = {{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}};
static const swim_member_id T2 = {{2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2}};

/* ---------- the fake network ---------- */

typedef struct sent_msg {
    swim_member_id to;
    uint64_t req_id;
    char key[64];
    size_t klen;
    kv_version ver;
    uint32_t flags;
    uint64_t expiry_ms;
    char value[256];
    size_t vlen;
    bool answered;
    uint64_t at_ns;
} sent_msg;

static sent_msg *g_sent;
static size_t g_nsent, g_capsent;
static int g_outstanding, g_max_outstanding;

static int fake_send(void *arg, const swim_member_id *to, const kv_repl_msg *m)
{
    (void)arg;
    if (g_nsent == g_capsent) {
        g_capsent = g_capsent ? g_capsent * 2 : 64;
        g_sent = realloc(g_sent, g_capsent * sizeof(*g_sent));
        cr_assert_not_null(g_sent);
    }
    sent_msg *s = &g_sent[g_nsent++];
    memset(s, 0, sizeof(*s));
    cr_assert_eq(m->type, KV_REPL_WRITE);
    cr_assert_leq(m->klen, sizeof(s->key));
    cr_assert_leq(m->vlen, sizeof(s->value));
    s->to = *to;
    s->req_id = m->req_id;
    memcpy(s->key, m->key, m->klen);
    s->klen = m->klen;
    s->ver = m->ver;
    s->flags = m->flags;
    s->expiry_ms = m->expiry_ms;
    if (m->vlen)
        memcpy(s->value, m->value, m->vlen);
    s->vlen = m->vlen;
    s->at_ns = uv_hrtime();
    cr_assert_not(m->has_hint_for, "a delivery is a plain WRITE, not a hint for someone");
    g_outstanding++;
    if (g_outstanding > g_max_outstanding)
        g_max_outstanding = g_outstanding;
    return KV_OK;
}

static void answer(size_t i, kv_repl_status st, const kv_version *ver)
{
    sent_msg *s = &g_sent[i];
    kv_repl_msg ack = {
        .type = KV_REPL_WRITE_ACK,
        .req_id = s->req_id,
        .status = st,
        .ver = ver ? *ver : s->ver,
    };
    if (!s->answered) {
        s->answered = true;
        g_outstanding--;
    }
    kv_hints_on_ack(g_h, &s->to, &ack);
}

/* ---------- fixture ---------- */

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

static void setup(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof(g_dir), "%s/kvstore-test-hints-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    cr_assert_not_null(mkdtemp(g_dir), "mkdtemp: %s", strerror(errno));
    snprintf(g_hdir, sizeof(g_hdir), "%s/hints", g_dir);
    cr_assert_eq(uv_loop_init(&g_loop), 0);
    uv_timer_init(&g_loop, &g_tick);
    g_nsent = 0;
    g_outstanding = g_max_outstanding = 0;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void close_done(void *arg)
{
    *(bool *)arg = true;
}

static bool run_until(bool (*cond)(void *), void *arg, int timeout_ms)
{
    uint64_t deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000u;
    uv_timer_start(&g_tick, tick_cb, 5, 5);
    while (!cond(arg) && uv_hrtime() < deadline)
        uv_run(&g_loop, UV_RUN_ONCE);
    uv_timer_stop(&g_tick);
    return cond(arg);
}

static bool flag_set(void *arg)
{
    return *(bool *)arg;
}

static void close_hints(void)
{
    if (!g_h)
        return;
    bool done = false;
    kv_hints_close(g_h, close_done, &done);
    cr_assert(run_until(flag_set, &done, 10000), "kv_hints_close never finished");
    g_h = NULL;
}

static void teardown(void)
{
    close_hints();
    uv_close((uv_handle_t *)&g_tick, NULL);
    uv_run(&g_loop, UV_RUN_DEFAULT);
    cr_expect_eq(uv_loop_close(&g_loop), 0, "loop still has handles");
    nftw(g_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(g_sent);
    g_sent = NULL;
    g_capsent = 0;
}

TestSuite(hints, .init = setup, .fini = teardown, .timeout = 120);
TestSuite(hints_core, .timeout = 30);

static kv_hints_opts base_opts(void)
{
    return (kv_hints_opts){
        .dir = g_hdir,
        .sync = KV_SYNC_INTERVAL,
        .sync_interval_ms = 100,
        .max_value = 1 << 20,
        .node_id = 9,
        .window = 8,
        .retry_ms = 60000, /* no resends unless a test asks for them */
    };
}

static void open_hints(const kv_hints_opts *o)
{
    kv_hints_io io = {.send = fake_send};
    cr_assert_eq(kv_hints_open(&g_h, &g_loop, o, &io), KV_OK);
}

static kv_version ver_at(uint64_t ms_ago, uint32_t node)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    return (kv_version){.ts = (now - ms_ago) << KV_HLC_LOGICAL_BITS, .node = node};
}

static int add(const swim_member_id *t, const char *key, const char *val, kv_version ver,
               uint32_t flags, uint64_t expiry)
{
    kv_repl_msg w = {
        .type = KV_REPL_WRITE,
        .req_id = 77,
        .key = (const uint8_t *)key,
        .klen = strlen(key),
        .ver = ver,
        .flags = flags,
        .expiry_ms = expiry,
        .value = (const uint8_t *)val,
        .vlen = val ? strlen(val) : 0,
    };
    return kv_hints_add(g_h, t, &w);
}

typedef struct count_cond {
    const swim_member_id *t;
    uint64_t want;
} count_cond;

static bool count_is(void *arg)
{
    count_cond *c = arg;
    return kv_hints_count_for(g_h, c->t) == c->want;
}

static void wait_count(const swim_member_id *t, uint64_t want)
{
    count_cond c = {t, want};
    cr_assert(run_until(count_is, &c, 10000), "count_for stayed %llu, want %llu",
              (unsigned long long)kv_hints_count_for(g_h, t), (unsigned long long)want);
}

static bool nsent_at_least(void *arg)
{
    return g_nsent >= *(size_t *)arg;
}

static void wait_sent(size_t n)
{
    cr_assert(run_until(nsent_at_least, &n, 10000), "sent %zu messages, want %zu", g_nsent, n);
}

static const sent_msg *find_sent(const char *key)
{
    for (size_t i = g_nsent; i-- > 0;)
        if (g_sent[i].klen == strlen(key) && memcmp(g_sent[i].key, key, g_sent[i].klen) == 0)
            return &g_sent[i];
    return NULL;
}

/* ---------- the store-backed module ---------- */

Test(hints, add_keeps_newest_version_per_key)
{
    kv_hints_opts o = base_opts();
    open_hints(&o);
    kv_version v1 = ver_at(3000, 1), v2 = ver_at(2000, 1), v_old = ver_at(2500, 3);
    cr_assert_eq(add(&T1, "k", "first", v1, 0, 0), KV_OK);
    wait_count(&T1, 1);
    kv_hints_stats st;
    kv_hints_get_stats(g_h, &st);
    cr_expect_eq(st.count, 1);
    cr_expect_eq(st.added, 1);
    cr_expect_eq(st.targets, 1);
    cr_expect_gt(st.bytes, 16 + 1 + 5);

    cr_assert_eq(add(&T1, "k", "second", v2, 0, 0), KV_OK);
    cr_assert_eq(add(&T1, "k", "older", v_old, 0, 0), KV_OK, "a stale hint is refused quietly");
    wait_count(&T1, 1);
    cr_expect_eq(kv_hints_count_for(g_h, &T2), 0);

    kv_hints_member_alive(g_h, &T1, true);
    wait_sent(1);
    const sent_msg *s = &g_sent[0];
    cr_expect_eq(s->vlen, 6);
    cr_expect_eq(memcmp(s->value, "second", 6), 0, "the newest hint is delivered");
    cr_expect_eq(kv_version_cmp(&s->ver, &v2), 0);
    kv_hints_get_stats(g_h, &st);
    cr_expect_eq(st.count, 1);
    cr_expect_eq(st.sent, 1);
}

Test(hints, durable_across_reopen_with_counts_rebuilt)
{
    kv_hints_opts o = base_opts();
    open_hints(&o);
    char key[16];
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof(key), "a%d", i);
        cr_assert_eq(add(&T1, key, "v", ver_at(1000, 1), 0, 0), KV_OK);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof(key), "b%d", i);
        cr_assert_eq(add(&T2, key, i == 0 ? NULL : "w", ver_at(1000, 1),
                         i == 0 ? KV_REPL_F_TOMBSTONE : 0, 0),
                     KV_OK);
    }
    wait_count(&T1, 5);
    wait_count(&T2, 3);
    close_hints();

    open_hints(&o);
    cr_expect_eq(kv_hints_count_for(g_h, &T1), 5);
    cr_expect_eq(kv_hints_count_for(g_h, &T2), 3);
    kv_hints_stats st;
    kv_hints_get_stats(g_h, &st);
    cr_expect_eq(st.count, 8);
    cr_expect_eq(st.targets, 2);
    cr_expect_eq(st.corrupt, 0);
}

Test(hints, delivery_ok_and_stale_remove_hints)
{
    kv_hints_opts o = base_opts();
    open_hints(&o);
    kv_version v[3] = {ver_at(5000, 1), ver_at(4000, 2), ver_at(3000, 3)};
    cr_assert_eq(add(&T1, "x", "vx", v[0], 0, 0), KV_OK);
    cr_assert_eq(add(&T1, "y", "vy", v[1], 0, 1234567), KV_OK);
    cr_assert_eq(add(&T1, "z", "vz", v[2], 0, 0), KV_OK);
    cr_assert_eq(add(&T2, "other", "vo", v[0], 0, 0), KV_OK);
    wait_count(&T1, 3);
    wait_count(&T2, 1);
    cr_expect_eq(g_nsent, 0, "nothing is sent to a member not known to be alive");

    kv_hints_member_alive(g_h, &T1, true);
    wait_sent(3);
    for (size_t i = 0; i < g_nsent; i++) {
        cr_expect(g_sent[i].req_id & KV_REPL_REQ_HINT, "req_id carries KV_REPL_REQ_HINT");
        cr_expect_eq(memcmp(g_sent[i].to.b, T1.b, SWIM_ID_LEN), 0, "only T1 is alive");
    }
    const sent_msg *y = find_sent("y");
    cr_assert_not_null(y);
    cr_expect_eq(y->vlen, 2);
    cr_expect_eq(memcmp(y->value, "vy", 2), 0);
    cr_expect_eq(kv_version_cmp(&y->ver, &v[1]), 0);
    cr_expect_eq(y->expiry_ms, 1234567);
    cr_expect_eq(y->flags, 0);

    /* OK for x and y; STALE (the target holds a newer version) for z. */
    kv_version newer = ver_at(100, 8);
    for (size_t i = 0; i < 3; i++) {
        if (g_sent[i].key[0] == 'z')
            answer(i, KV_REPL_STALE, &newer);
        else
            answer(i, KV_REPL_OK, NULL);
    }
    wait_count(&T1, 0);
    kv_hints_stats st;
    kv_hints_get_stats(g_h, &st);
    cr_expect_eq(st.delivered, 3);
    cr_expect_eq(st.count, 1, "T2's hint stays");
    cr_expect_eq(st.targets, 1);
    cr_expect_eq(st.sent, 3);

    /* Removed for good: not there after a restart either. */
    close_hints();
    open_hints(&o);
    cr_expect_eq(kv_hints_count_for(g_h, &T1), 0);
    cr_expect_eq(kv_hints_count_for(g_h, &T2), 1);
}

Test(hints, unacknowledged_and_refused_deliveries_are_resent)
{
    kv_hints_opts o = base_opts();
    o.retry_ms = 100;
    open_hints(&o);
    cr_assert_eq(add(&T1, "k", "v", ver_at(1000, 1), 0, 0), KV_OK);
    wait_count(&T1, 1);
    kv_hints_member_alive(g_h, &T1, true);
    wait_sent(1);
    wait_sent(2);
    uint64_t gap_ms = (g_sent[1].at_ns - g_sent[0].at_ns) / 1000000u;
    cr_expect_geq(gap_ms, 90, "resent after retry_ms, not before (%llu ms)",
                  (unsigned long long)gap_ms);
    cr_expect_neq(g_sent[1].req_id, g_sent[0].req_id);
    cr_expect_eq(memcmp(g_sent[1].key, "k", 1), 0);

    /* A late ack of the first send is ignored; an ERROR answer brings another resend. */
    answer(0, KV_REPL_OK, NULL);
    answer(1, KV_REPL_ERROR, NULL);
    wait_sent(3);
    cr_expect_eq(kv_hints_count_for(g_h, &T1), 1);
    answer(2, KV_REPL_NOSPACE, NULL);
    wait_sent(4);
    answer(3, KV_REPL_OK, NULL);
    wait_count(&T1, 0);
    kv_hints_stats st;
    kv_hints_get_stats(g_h, &st);
    cr_expect_eq(st.delivered, 1);
    cr_expect_eq(st.count, 0);
}

typedef struct window_state {
    size_t acked;
} window_state;

static bool window_full_or_done(void *arg)
{
    (void)arg;
    return g_outstanding >= 8 || kv_hints_count_for(g_h, &T1) == 0 ||
           (g_outstanding > 0 && g_sent[g_nsent - 1].at_ns + 50000000u < uv_hrtime());
}

Test(hints, window_bounds_deliveries_in_flight)
{
    kv_hints_opts o = base_opts();
    o.window = 8;
    open_hints(&o);
    char key[16];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "key-%04d", i);
        cr_assert_eq(add(&T1, key, "value", ver_at(1000, 1), 0, 0), KV_OK);
    }
    wait_count(&T1, 1000);
    kv_hints_member_alive(g_h, &T1, true);
    size_t next = 0;
    for (int round = 0; round < 2000 && kv_hints_count_for(g_h, &T1) > 0; round++) {
        cr_assert(run_until(window_full_or_done, NULL, 10000), "delivery stalled");
        cr_assert_leq(g_outstanding, 8, "more than window deliveries in flight");
        for (; next < g_nsent; next++)
            answer(next, KV_REPL_OK, NULL);
        if (g_nsent == 1000)
            wait_count(&T1, 0);
    }
    cr_expect_eq(kv_hints_count_for(g_h, &T1), 0);
    cr_expect_eq(g_max_outstanding, 8, "the window is used, and never exceeded");
    cr_expect_eq(g_nsent, 1000, "each hint sent once (no resends without a timeout)");
    kv_hints_stats st;
    kv_hints_get_stats(g_h, &st);
    cr_expect_eq(st.delivered, 1000);
    cr_expect_eq(st.count, 0);
    cr_expect_eq(st.targets, 0);
}

static bool nsent_changed(void *arg)
{
    return g_nsent != *(size_t *)arg;
}

Test(hints, target_down_pauses_and_alive_resumes)
{
    kv_hints_opts o = base_opts();
    o.window = 4;
    open_hints(&o);
    char key[16];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "k%02d", i);
        cr_assert_eq(add(&T1, key, "v", ver_at(1000, 1), 0, 0), KV_OK);
    }
    wait_count(&T1, 20);
    kv_hints_member_alive(g_h, &T1, true);
    wait_sent(4);
    answer(0, KV_REPL_OK, NULL);
    answer(1, KV_REPL_OK, NULL);
    wait_count(&T1, 18);
    /* Whatever went out meanwhile, the target now goes down: nothing more is sent. */
    kv_hints_member_alive(g_h, &T1, false);
    size_t before = g_nsent;
    for (size_t i = 2; i < before; i++)
        answer(i, KV_REPL_OK, NULL); /* acks for a member that is down are ignored */
    cr_expect_not(run_until(nsent_changed, &before, 300), "sent to a member that is down");
    uint64_t left = kv_hints_count_for(g_h, &T1);
    cr_expect_eq(left, 18);

    kv_hints_member_alive(g_h, &T1, true);
    size_t next = before;
    for (int round = 0; round < 200 && kv_hints_count_for(g_h, &T1) > 0; round++) {
        cr_assert(run_until(nsent_changed, &next, 10000) || kv_hints_count_for(g_h, &T1) == 0,
                  "delivery did not resume");
        for (; next < g_nsent; next++)
            answer(next, KV_REPL_OK, NULL);
        /* let removals settle before looking at the count again */
        count_cond c = {&T1, 0};
        run_until(count_is, &c, 50);
    }
    cr_expect_eq(kv_hints_count_for(g_h, &T1), 0);
    kv_hints_stats st;
    kv_hints_get_stats(g_h, &st);
    cr_expect_eq(st.delivered, 20);
}

Test(hints, newer_hint_during_delivery_survives_the_old_ack_sync_always)
{
    kv_hints_opts o = base_opts();
    o.sync = KV_SYNC_ALWAYS;
    o.window = 4;
    open_hints(&o);
    char key[16];
    for (int i = 0; i < 30; i++) {
        snprintf(key, sizeof(key), "s%02d", i);
        cr_assert_eq(add(&T1, key, "old", ver_at(2000, 1), 0, 0), KV_OK);
    }
    wait_count(&T1, 30);
    kv_hints_member_alive(g_h, &T1, true);
    wait_sent(4);
    /* A newer write of the first key sent arrives while its delivery is in flight. */
    char k0[16];
    snprintf(k0, sizeof(k0), "%.*s", (int)g_sent[0].klen, g_sent[0].key);
    kv_version v2 = ver_at(1000, 1);
    cr_assert_eq(add(&T1, k0, "new", v2, 0, 0), KV_OK);
    size_t next = 0;
    for (int round = 0; round < 300 && kv_hints_count_for(g_h, &T1) > 0; round++) {
        for (; next < g_nsent; next++)
            answer(next, KV_REPL_OK, NULL);
        size_t seen = g_nsent;
        run_until(nsent_changed, &seen, 200);
    }
    cr_expect_eq(kv_hints_count_for(g_h, &T1), 0);
    const sent_msg *last = find_sent(k0);
    cr_assert_not_null(last);
    cr_expect_eq(memcmp(last->value, "new", 3), 0, "the newer hint was delivered too");
    cr_expect_eq(kv_version_cmp(&last->ver, &v2), 0);
    kv_hints_stats st;
    kv_hints_get_stats(g_h, &st);
    cr_expect_eq(st.delivered, 30, "the first ack of the old version removed nothing");
    cr_expect_eq(g_nsent, 31);
}

Test(hints, bounds_refuse_and_count_drops)
{
    kv_hints_opts o = base_opts();
    o.max_count = 10;
    open_hints(&o);
    char key[16];
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "c%03d", i);
        cr_assert_eq(add(&T1, key, "v", ver_at(1000, 1), 0, 0), KV_OK);
    }
    cr_expect_eq(add(&T1, "c010", "v", ver_at(1000, 1), 0, 0), KV_EUNAVAIL);
    cr_expect_eq(add(&T2, "c011", "v", ver_at(1000, 1), 0, 0), KV_EUNAVAIL);
    wait_count(&T1, 10);
    cr_expect_eq(add(&T1, "c012", "v", ver_at(1000, 1), 0, 0), KV_EUNAVAIL);
    cr_expect_eq(add(&T1, "c000", "newer", ver_at(500, 1), 0, 0), KV_OK,
                 "replacing a held hint does not add one");
    kv_hints_stats st;
    kv_hints_get_stats(g_h, &st);
    cr_expect_eq(st.dropped_full, 3);
    cr_expect_eq(st.added, 11);
    cr_expect_eq(kv_hints_count_for(g_h, &T2), 0);
    close_hints();

    /* Bytes: a hint here is 16 + 4 key bytes + 10 + 100 value bytes = 130. */
    snprintf(g_hdir, sizeof(g_hdir), "%s/hints-bytes", g_dir); /* an empty store */
    o.max_count = 0;
    o.max_bytes = 1000;
    open_hints(&o);
    char val[101];
    memset(val, 'x', 100);
    val[100] = 0;
    for (int i = 10; i < 17; i++) {
        snprintf(key, sizeof(key), "c%03d", i);
        cr_assert_eq(add(&T1, key, val, ver_at(1000, 1), 0, 0), KV_OK, "hint %d", i);
    }
    cr_expect_eq(add(&T1, "c017", val, ver_at(1000, 1), 0, 0), KV_EUNAVAIL);
    kv_hints_get_stats(g_h, &st);
    cr_expect_eq(st.dropped_full, 1);
    wait_count(&T1, 7);
    kv_hints_get_stats(g_h, &st);
    cr_expect_leq(st.bytes, 1000);
}

Test(hints, writes_that_cannot_be_hints_are_refused)
{
    kv_hints_opts o = base_opts();
    o.max_value = 10;
    open_hints(&o);
    cr_expect_eq(add(&T1, "k", "01234567890", ver_at(1000, 1), 0, 0), KV_ETOOBIG);
    cr_expect_eq(add(&T1, "", "v", ver_at(1000, 1), 0, 0), KV_EINVAL);
    cr_expect_eq(add(&T1, "k", "v", ver_at(1000, 1), KV_REPL_F_TOMBSTONE, 0), KV_EINVAL);
    cr_expect_eq(add(&T1, "k", "v", ver_at(1000, 1), 0x80, 0), KV_EINVAL);
    char big[KV_REPL_KEY_MAX + 2];
    memset(big, 'k', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    cr_expect_eq(add(&T1, big, "v", ver_at(1000, 1), 0, 0), KV_ETOOBIG);
    big[KV_REPL_KEY_MAX] = 0;
    cr_expect_eq(add(&T1, big, "v", ver_at(1000, 1), 0, 0), KV_OK, "the longest key fits");
    wait_count(&T1, 1);
}

Test(hints, tombstone_hint_is_delivered_as_tombstone)
{
    kv_hints_opts o = base_opts();
    open_hints(&o);
    kv_version v = ver_at(1000, 4);
    cr_assert_eq(add(&T1, "gone", NULL, v, KV_REPL_F_TOMBSTONE, 0), KV_OK);
    wait_count(&T1, 1);
    kv_hints_member_alive(g_h, &T1, true);
    wait_sent(1);
    cr_expect_eq(g_sent[0].flags, KV_REPL_F_TOMBSTONE);
    cr_expect_eq(g_sent[0].vlen, 0);
    cr_expect_eq(kv_version_cmp(&g_sent[0].ver, &v), 0);
    answer(0, KV_REPL_OK, NULL);
    wait_count(&T1, 0);
}

static void write_cb(void *arg, int status, const kv_version *ver)
{
    (void)ver;
    int *st = arg;
    *st = status;
}

static bool status_set(void *arg)
{
    return *(int *)arg != 1;
}

typedef struct corrupt_cond {
    uint64_t want;
} corrupt_cond;

static bool corrupt_is(void *arg)
{
    kv_hints_stats st;
    kv_hints_get_stats(g_h, &st);
    return st.corrupt == ((corrupt_cond *)arg)->want;
}

Test(hints, malformed_stored_hints_are_skipped_counted_removed)
{
    /* Write records the module did not write into its directory, with the engine. */
    kv_store *s = NULL;
    kv_store_opts so = {.dir = g_hdir,
                        .sync = KV_SYNC_INTERVAL,
                        .sync_interval_ms = 100,
                        .max_key = 16 + KV_REPL_KEY_MAX,
                        .max_value = 1 << 20,
                        .node_id = 9};
    cr_assert_eq(store_open(&s, &g_loop, &so), KV_OK);
    struct {
        const char *key;
        size_t klen;
        const char *val;
        size_t vlen;
    } recs[] = {
        {"\1\1\1\1\1\1\1\1\1\1\1\1\1\1\1\1bad", 19, "\x07garbage-format", 15},
        {"\1\1\1\1\1\1\1\1\1\1\1\1\1\1\1\1tomb-with-value", 30, "\x01\x01\0\0\0\0\0\0\0\0value",
         15},
        {"\1\1\1\1\1\1\1\1\1\1\1\1\1\1\1\1good", 20, "\x01\0\0\0\0\0\0\0\0\0fine", 14},
        {"short", 5, "\x01\0\0\0\0\0\0\0\0\0x", 11}, /* no room for a target id */
    };
    for (size_t i = 0; i < sizeof(recs) / sizeof(recs[0]); i++) {
        int st = 1;
        kv_version v = ver_at(1000, 2);
        cr_assert_eq(store_apply(s, recs[i].key, recs[i].klen, recs[i].val, recs[i].vlen, 0, &v,
                                 false, write_cb, &st),
                     KV_OK);
        cr_assert(run_until(status_set, &st, 5000));
        cr_assert_eq(st, KV_OK);
    }
    bool done = false;
    store_close(s, close_done, &done);
    cr_assert(run_until(flag_set, &done, 5000));

    kv_hints_opts o = base_opts();
    open_hints(&o);
    cr_expect_eq(kv_hints_count_for(g_h, &T1), 3, "counted at open by key; read at delivery");
    kv_hints_member_alive(g_h, &T1, true);
    wait_sent(1);
    cr_expect_eq(g_sent[0].klen, 4);
    cr_expect_eq(memcmp(g_sent[0].key, "good", 4), 0);
    cr_expect_eq(memcmp(g_sent[0].value, "fine", 4), 0);
    answer(0, KV_REPL_OK, NULL);
    wait_count(&T1, 0);
    corrupt_cond c = {3};
    cr_assert(run_until(corrupt_is, &c, 5000));
    kv_hints_stats st;
    kv_hints_get_stats(g_h, &st);
    cr_expect_eq(st.count, 0, "malformed hints removed from the store");
    cr_expect_eq(st.delivered, 1);
    cr_expect_eq(g_nsent, 1, "nothing malformed was sent");

    close_hints();
    open_hints(&o);
    kv_hints_get_stats(g_h, &st);
    cr_expect_eq(st.count, 0, "and gone after a restart");
}

/* ---------- the sans-I/O core alone ---------- */

static kv_repl_msg ack_of(const hc_slot *s, kv_repl_status st)
{
    return (kv_repl_msg){
        .type = KV_REPL_WRITE_ACK, .req_id = s->req_id, .status = st, .ver = s->ver};
}

Test(hints_core, window_ack_retry_and_backoff)
{
    hc_core c;
    hc_init(&c, 2, 100, 400);
    hc_target *t = hc_get(&c, &T1);
    cr_assert_not_null(t);
    hc_slot *s = NULL;
    for (int i = 0; i < 3; i++)
        hc_added(&c, t, 0);
    cr_expect_eq(hc_next(&c, t, 0, &s), HC_IDLE, "not alive: nothing to do");
    hc_set_alive(&c, t, true, 0);
    cr_assert_eq(hc_next(&c, t, 0, &s), HC_SCAN);
    kv_version v = {.ts = 10, .node = 1};
    hc_slot *a = hc_offer(&c, t, 0, "a", 1, &v);
    hc_slot *b = hc_offer(&c, t, 0, "b", 1, &v);
    cr_assert(a && b);
    cr_expect_not(hc_has_room(&c, t));
    cr_expect_null(hc_offer(&c, t, 0, "c", 1, &v), "window of 2");
    cr_expect(a->req_id & KV_REPL_REQ_HINT);
    cr_expect_neq(a->req_id, b->req_id);
    hc_sent(&c, t, a, 0, true);
    hc_sent(&c, t, b, 0, true);
    cr_expect_eq(hc_next(&c, t, 50, &s), HC_IDLE, "window full, nothing due");

    /* OK: remove a, slot freed. */
    hc_target *rt;
    uint8_t *key;
    size_t klen;
    kv_version upto;
    kv_repl_msg ack = ack_of(a, KV_REPL_OK);
    cr_assert_eq(hc_on_ack(&c, 50, &T1, &ack, &rt, &key, &klen, &upto), HC_ACK_REMOVE);
    cr_expect_eq(rt, t);
    cr_expect_eq(klen, 1);
    cr_expect_eq(key[0], 'a');
    cr_expect_eq(kv_version_cmp(&upto, &v), 0);
    free(key);
    cr_expect(hc_has_room(&c, t));
    cr_expect_eq(hc_on_ack(&c, 50, &T1, &ack, &rt, &key, &klen, &upto), HC_ACK_IGNORE,
                 "a duplicate ack finds no slot");

    /* From the wrong member, or an OK that does not cover the version sent: ignored / retry. */
    kv_repl_msg bk = ack_of(b, KV_REPL_OK);
    cr_expect_eq(hc_on_ack(&c, 50, &T2, &bk, &rt, &key, &klen, &upto), HC_ACK_IGNORE);
    bk.ver.ts = 9;
    cr_expect_eq(hc_on_ack(&c, 50, &T1, &bk, &rt, &key, &klen, &upto), HC_ACK_RETRY);
    /* resent after the back-off (100), which then doubles */
    cr_expect_eq(t->backoff_ms, 200);
    cr_expect_eq(hc_next(&c, t, 60, &s), HC_SCAN, "a free slot: walk on");
    cr_expect_eq(hc_next(&c, t, 149, &s), HC_SCAN);
    uint64_t old_req = b->req_id;
    cr_assert_eq(hc_next(&c, t, 150, &s), HC_RESEND);
    cr_expect_eq(s, b);
    cr_expect_neq(b->req_id, old_req, "a resend has a fresh req_id");
    hc_sent(&c, t, b, 150, true);
    cr_expect_eq(b->due_ms, 350, "ack awaited for the back-off");

    /* No ack: resent at the deadline, back-off capped at 400. */
    cr_expect_eq(hc_next(&c, t, 349, &s), HC_SCAN);
    cr_assert_eq(hc_next(&c, t, 350, &s), HC_RESEND);
    cr_expect_eq(t->backoff_ms, 400);
    hc_sent(&c, t, b, 350, false); /* io->send refused it */
    cr_expect_eq(t->backoff_ms, 400, "capped");
    cr_expect_eq(b->due_ms, 750);
    cr_assert_eq(hc_next(&c, t, 750, &s), HC_RESEND);
    hc_sent(&c, t, b, 750, true);
    /* STALE with a newer version: delivered; back-off back to retry_ms. */
    kv_repl_msg st = ack_of(b, KV_REPL_STALE);
    st.ver.ts = 99;
    cr_assert_eq(hc_on_ack(&c, 900, &T1, &st, &rt, &key, &klen, &upto), HC_ACK_REMOVE);
    cr_expect_eq(upto.ts, 99, "remove up to what the target holds");
    free(key);
    cr_expect_eq(t->backoff_ms, 100);
    hc_fini(&c);
}

Test(hints_core, pass_end_finishes_or_repeats)
{
    hc_core c;
    hc_init(&c, 4, 100, 1000);
    hc_target *t = hc_get(&c, &T1);
    hc_slot *s = NULL;
    hc_set_alive(&c, t, true, 0);
    cr_expect_eq(hc_next(&c, t, 0, &s), HC_IDLE, "no hints: no pass");
    hc_added(&c, t, 0);
    hc_added(&c, t, 0);
    cr_assert_eq(hc_next(&c, t, 0, &s), HC_SCAN);
    kv_version v = {.ts = 10, .node = 1};
    hc_slot *a = hc_offer(&c, t, 0, "a", 1, &v);
    hc_sent(&c, t, a, 0, true);
    t->scan_done = true; /* the walk found only one of the two */
    cr_expect_eq(hc_next(&c, t, 1, &s), HC_IDLE, "a delivery in flight");
    hc_target *rt;
    uint8_t *key;
    size_t klen;
    kv_version upto;
    kv_repl_msg ack = ack_of(a, KV_REPL_OK);
    cr_assert_eq(hc_on_ack(&c, 2, &T1, &ack, &rt, &key, &klen, &upto), HC_ACK_REMOVE);
    free(key);
    t->removing++; /* the shell starts the removal */
    cr_expect_eq(hc_next(&c, t, 3, &s), HC_IDLE, "waits for the removal");
    t->removing--;
    hc_removed(&c, t);
    cr_expect_eq(t->count, 1);
    /* progress and one hint left: another pass at once */
    cr_assert_eq(hc_next(&c, t, 4, &s), HC_SCAN);
    cr_expect_eq(t->found, 0);
    cr_expect_eq(t->cur.pos, 0, "the walk starts over");
    t->scan_done = true; /* it found nothing, and nothing was added: the count was wrong */
    cr_assert_eq(hc_next(&c, t, 5, &s), HC_FINISHED);
    cr_expect_eq(t->count, 0);
    cr_expect_eq(hc_next(&c, t, 6, &s), HC_IDLE, "finished once");
    cr_expect_eq(hc_next_due(&c, 6), UINT64_MAX);

    /* A pass that found hints but could remove none waits for the back-off. */
    hc_added(&c, t, 10);
    cr_assert_eq(hc_next(&c, t, 10, &s), HC_SCAN);
    a = hc_offer(&c, t, 10, "a", 1, &v);
    hc_drop(&c, t, a); /* e.g. unreadable */
    t->scan_done = true;
    t->dirty = false;
    cr_expect_eq(hc_next(&c, t, 11, &s), HC_IDLE);
    cr_expect_eq(hc_next_due(&c, 11), 111);
    cr_expect_eq(hc_next(&c, t, 110, &s), HC_IDLE);
    cr_expect_eq(hc_next(&c, t, 111, &s), HC_SCAN);
    hc_fini(&c);
}

Test(hints_core, down_frees_slots_and_ignores_late_acks)
{
    hc_core c;
    hc_init(&c, 4, 100, 1000);
    hc_target *t = hc_get(&c, &T1);
    hc_slot *s = NULL;
    hc_added(&c, t, 0);
    hc_set_alive(&c, t, true, 0);
    cr_assert_eq(hc_next(&c, t, 0, &s), HC_SCAN);
    kv_version v = {.ts = 10, .node = 1};
    hc_slot *a = hc_offer(&c, t, 0, "a", 1, &v);
    hc_sent(&c, t, a, 0, true);
    kv_repl_msg ack = ack_of(a, KV_REPL_OK);
    hc_set_alive(&c, t, false, 1);
    cr_expect_eq(t->inflight, 0);
    cr_expect_eq(hc_next(&c, t, 1000, &s), HC_IDLE, "nothing for a member that is down");
    cr_expect_eq(hc_next_due(&c, 1000), UINT64_MAX);
    hc_target *rt;
    uint8_t *key;
    size_t klen;
    kv_version upto;
    cr_expect_eq(hc_on_ack(&c, 2, &T1, &ack, &rt, &key, &klen, &upto), HC_ACK_IGNORE);
    hc_set_alive(&c, t, true, 3);
    cr_expect_eq(hc_on_ack(&c, 3, &T1, &ack, &rt, &key, &klen, &upto), HC_ACK_IGNORE,
                 "the slot of the old send is gone");
    cr_expect_eq(hc_next(&c, t, 3, &s), HC_SCAN, "a new pass from the start");
    cr_expect_eq(t->count, 1);
    hc_fini(&c);
}
