/*
 * test_coord.c — unit tests of the quorum coordinator (src/repl/coord.c), driven by hand
 * with virtual time, and a randomized cluster simulation (coord_sim.h). What they prove:
 * writes answer after W acknowledgements and reads with the newest of R answers; every
 * request answers exactly once (quorum, failure, or timeout with how many answered);
 * dead primaries get hints and a sloppy quorum lets a fallback count; a replica holding a
 * newer version makes the write bump past it (and give up after KV_COORD_MAX_ROUNDS);
 * failures answer at once (EIO, ENOSPC); read repair brings only stale replicas up to date
 * with the newest record; bad acks are ignored; and, under wall clocks minutes apart, no
 * quorum read ever returns a value older than a write acknowledged before it began.
 */
#include "kvstore/error.h"
#include "repl/coord.h"

#include "coord_sim.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

/* Hot-loop assertions: criterion --full-stats counts every assert that runs. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            cr_assert_fail(__VA_ARGS__);                                                           \
    } while (0)

#define NOW0  5000u
#define WALL0 1700000000000ull
#define TMO   1000u
#define NODE  7u

/* ---- helpers ---- */

static swim_member_id mk_id(int i)
{
    swim_member_id id;
    memset(&id, 0, sizeof(id));
    id.b[0] = 0xc0;
    id.b[15] = (uint8_t)i;
    return id;
}

/* An effect copied out of the coordinator (its pointers die at the next call). */
typedef struct fx {
    kv_coord_effect_kind kind;
    int to;
    bool to_self;
    kv_repl_type type;
    uint64_t req_id;
    kv_version ver;
    uint32_t flags;
    uint64_t expiry;
    char key[64];
    char val[64];
    size_t vlen;
    bool has_hint_for;
    int hint_for;
    void *client;
    int status;
    uint32_t answered, needed;
    const char *reason;
} fx;

typedef struct fxs {
    fx e[128];
    int n;
} fxs;

static void drain(kv_coord *c, fxs *out)
{
    out->n = 0;
    kv_coord_effect e;
    while (kv_coord_pop(c, &e)) {
        cr_assert(out->n < 128, "too many effects");
        fx *f = &out->e[out->n++];
        memset(f, 0, sizeof(*f));
        f->kind = e.kind;
        f->to = e.to.b[15];
        f->to_self = e.to_self;
        if (e.kind == KV_COORD_REPLY) {
            f->client = e.client;
            f->status = e.status;
            f->ver = e.ver;
            f->answered = e.answered;
            f->needed = e.needed;
            f->reason = e.reason;
            cr_assert(e.vlen < sizeof(f->val));
            if (e.vlen)
                memcpy(f->val, e.value, e.vlen);
            f->vlen = e.vlen;
            continue;
        }
        f->type = e.msg.type;
        f->req_id = e.msg.req_id;
        f->ver = e.msg.ver;
        f->flags = e.msg.flags;
        f->expiry = e.msg.expiry_ms;
        cr_assert(e.msg.klen < sizeof(f->key) && e.msg.vlen < sizeof(f->val));
        memcpy(f->key, e.msg.key, e.msg.klen);
        if (e.msg.vlen)
            memcpy(f->val, e.msg.value, e.msg.vlen);
        f->vlen = e.msg.vlen;
        f->has_hint_for = e.msg.has_hint_for;
        f->hint_for = e.msg.hint_for.b[15];
    }
}

static int count_kind(const fxs *f, kv_coord_effect_kind k)
{
    int n = 0;
    for (int i = 0; i < f->n; i++)
        n += f->e[i].kind == k;
    return n;
}

/* The effect of kind k to replica `to` (or the REPLY when to < 0); NULL if none. */
static const fx *find(const fxs *f, kv_coord_effect_kind k, int to)
{
    for (int i = 0; i < f->n; i++) {
        if (f->e[i].kind == k && (to < 0 || f->e[i].to == to))
            return &f->e[i];
    }
    return NULL;
}

static kv_coord_target tg[KV_COORD_MAX_TARGETS + 1];

/* n targets, replica i at index i; bit i of dead marks it not alive. */
static const kv_coord_target *targets(int n, uint32_t dead)
{
    for (int i = 0; i < n; i++) {
        tg[i].id = mk_id(i);
        tg[i].alive = i >= 32 || !(dead >> i & 1);
        tg[i].self = i == 0;
    }
    return tg;
}

static int client_tag;

static kv_coord_req req(kv_coord_op op, const char *key, const char *val, uint32_t need)
{
    kv_coord_req q;
    memset(&q, 0, sizeof(q));
    q.op = op;
    q.key = (const uint8_t *)key;
    q.klen = strlen(key);
    if (val) {
        q.value = (const uint8_t *)val;
        q.vlen = strlen(val);
    }
    q.n = 3;
    q.need = need;
    q.timeout_ms = TMO;
    q.targets = targets(3, 0);
    q.n_targets = 3;
    q.client = &client_tag;
    return q;
}

static void wack(kv_coord *c, int from, uint64_t req_id, kv_repl_status st, kv_version ver)
{
    kv_repl_msg m;
    memset(&m, 0, sizeof(m));
    m.type = KV_REPL_WRITE_ACK;
    m.req_id = req_id;
    m.status = st;
    m.ver = ver;
    swim_member_id id = mk_id(from);
    kv_coord_on_ack(c, NOW0 + 10, WALL0 + 10, &id, &m);
}

static void rack(kv_coord *c, int from, uint64_t req_id, kv_repl_status st, kv_version ver,
                 uint32_t flags, const char *val)
{
    kv_repl_msg m;
    memset(&m, 0, sizeof(m));
    m.type = KV_REPL_READ_ACK;
    m.req_id = req_id;
    m.status = st;
    m.ver = ver;
    m.flags = flags;
    if (val) {
        m.value = (const uint8_t *)val;
        m.vlen = strlen(val);
    }
    swim_member_id id = mk_id(from);
    kv_coord_on_ack(c, NOW0 + 10, WALL0 + 10, &id, &m);
}

static kv_version V(uint64_t ms, uint32_t node)
{
    return (kv_version){.ts = ms << KV_HLC_LOGICAL_BITS, .node = node};
}

static kv_coord_stats stats(const kv_coord *c)
{
    kv_coord_stats s;
    kv_coord_get_stats(c, &s);
    return s;
}

/* ---- writes ---- */

Test(coord, put_sends_to_all_and_answers_after_w)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "apple", "red", 2);
    q.expiry_ms = WALL0 + 60000;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    cr_assert_eq(f.n, 3);
    for (int i = 0; i < 3; i++) {
        const fx *s = find(&f, KV_COORD_SEND, i);
        cr_assert(s);
        cr_assert_eq(s->type, KV_REPL_WRITE);
        cr_assert_str_eq(s->key, "apple");
        cr_assert_str_eq(s->val, "red");
        cr_assert_eq(s->to_self, i == 0);
        cr_assert_eq(s->req_id, f.e[0].req_id);
        cr_assert_eq(s->req_id & KV_REPL_REQ_MASK, 0);
        cr_assert_neq(s->req_id, 0);
        cr_assert_eq(s->ver.node, NODE);
        cr_assert_eq(kv_hlc_ts_ms(s->ver.ts), WALL0);
        cr_assert_eq(s->expiry, WALL0 + 60000);
        cr_assert_eq(s->flags, 0);
        cr_assert_not(s->has_hint_for);
    }
    uint64_t id = f.e[0].req_id;
    kv_version v = f.e[0].ver;
    cr_assert_eq(kv_coord_next_deadline(c), NOW0 + TMO);

    wack(c, 1, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "one ack of two: no answer yet");
    wack(c, 1, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "a duplicate ack does not count");
    cr_assert_eq(stats(c).acks_ignored, 1);

    wack(c, 2, id, KV_REPL_STALE, v); /* STALE with our own version: a retry, counts */
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].kind, KV_COORD_REPLY);
    cr_assert_eq(f.e[0].status, KV_OK);
    cr_assert_eq(f.e[0].client, &client_tag);
    cr_assert_eq(kv_version_cmp(&f.e[0].ver, &v), 0);
    cr_assert_eq(f.e[0].answered, 2);
    cr_assert_eq(f.e[0].needed, 2);
    cr_assert_eq(kv_coord_inflight(c), 1, "open until the last replica answers");

    wack(c, 0, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "all acknowledged: no hints");
    cr_assert_eq(kv_coord_inflight(c), 0);
    cr_assert_eq(kv_coord_next_deadline(c), UINT64_MAX);
    wack(c, 0, id, KV_REPL_OK, v);
    cr_assert_eq(stats(c).acks_ignored, 2, "an ack after close is ignored");
    cr_assert_eq(stats(c).writes, 1);
    kv_coord_free(c);
}

Test(coord, delete_writes_a_tombstone)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_DELETE, "apple", NULL, 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    cr_assert_eq(count_kind(&f, KV_COORD_SEND), 3);
    cr_assert_eq(f.e[0].flags, KV_REPL_F_TOMBSTONE);
    cr_assert_eq(f.e[0].vlen, 0);
    wack(c, 0, f.e[0].req_id, KV_REPL_OK, f.e[0].ver);
    wack(c, 1, f.e[0].req_id, KV_REPL_OK, f.e[0].ver);
    kv_version v = f.e[0].ver;
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_OK);
    cr_assert_eq(kv_version_cmp(&f.e[0].ver, &v), 0);
    kv_coord_free(c);
}

Test(coord, versions_increase_and_ids_are_unique)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_version prev = {0, 0};
    uint64_t ids[50];
    for (int i = 0; i < 50; i++) {
        kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
        /* the wall clock goes backwards: versions still increase */
        cr_assert_eq(kv_coord_submit(c, NOW0, WALL0 - (uint64_t)i, &q), KV_OK);
        fxs f;
        drain(c, &f);
        cr_assert_gt(kv_version_cmp(&f.e[0].ver, &prev), 0);
        prev = f.e[0].ver;
        ids[i] = f.e[0].req_id;
        for (int j = 0; j < i; j++)
            cr_assert_neq(ids[j], ids[i]);
        wack(c, 0, ids[i], KV_REPL_OK, prev);
        wack(c, 1, ids[i], KV_REPL_OK, prev);
        wack(c, 2, ids[i], KV_REPL_OK, prev);
        drain(c, &f);
    }
    cr_assert_eq(kv_coord_inflight(c), 0);
    /* An observed version moves the clock */
    kv_version far = V(WALL0 + 3600000, 99);
    kv_coord_observe(c, &far, WALL0);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    cr_assert_gt(kv_version_cmp(&f.e[0].ver, &far), 0);
    kv_coord_free(c);
}

/* ---- reads ---- */

static uint64_t submit_get(kv_coord *c, uint32_t r, bool repair)
{
    kv_coord_req q = req(KV_COORD_GET, "apple", NULL, r);
    q.read_repair = repair;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    cr_assert_eq(f.n, 3);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(f.e[i].kind, KV_COORD_SEND);
        cr_assert_eq(f.e[i].type, KV_REPL_READ);
        cr_assert_str_eq(f.e[i].key, "apple");
        cr_assert_eq(f.e[i].req_id, f.e[0].req_id);
    }
    return f.e[0].req_id;
}

Test(coord, get_answers_the_newest_of_r)
{
    kv_coord *c = kv_coord_new(NODE);
    uint64_t id = submit_get(c, 2, false);
    fxs f;
    rack(c, 2, id, KV_REPL_OK, V(WALL0 + 5, 3), 0, "new");
    drain(c, &f);
    cr_assert_eq(f.n, 0);
    rack(c, 0, id, KV_REPL_OK, V(WALL0 - 5, 1), 0, "old");
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].kind, KV_COORD_REPLY);
    cr_assert_eq(f.e[0].status, KV_OK);
    cr_assert_str_eq(f.e[0].val, "new");
    kv_version want = V(WALL0 + 5, 3);
    cr_assert_eq(kv_version_cmp(&f.e[0].ver, &want), 0);
    cr_assert_eq(f.e[0].answered, 2);
    cr_assert_eq(stats(c).reads, 1);
    rack(c, 1, id, KV_REPL_OK, V(WALL0 + 5, 3), 0, "new");
    drain(c, &f);
    cr_assert_eq(f.n, 0, "read repair is off");
    cr_assert_eq(kv_coord_inflight(c), 0);
    /* A read answer's version moves the clock */
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    drain(c, &f);
    cr_assert_gt(kv_version_cmp(&f.e[0].ver, &want), 0);
    kv_coord_free(c);
}

Test(coord, get_value_outlives_the_request)
{
    /* R = 3: the last answer both answers the client and closes the request; the value
     * handed out must stay readable until the next call (ASan checks). */
    kv_coord *c = kv_coord_new(NODE);
    uint64_t id = submit_get(c, 3, true);
    rack(c, 0, id, KV_REPL_OK, V(WALL0, 1), 0, "one");
    rack(c, 1, id, KV_REPL_OK, V(WALL0, 1), 0, "one");
    rack(c, 2, id, KV_REPL_OK, V(WALL0 + 1, 1), 0, "two");
    cr_assert_eq(kv_coord_inflight(c), 0);
    kv_coord_effect e;
    int replies = 0, repairs = 0;
    while (kv_coord_pop(c, &e)) {
        if (e.kind == KV_COORD_REPLY) {
            replies++;
            cr_assert_eq(e.vlen, 3);
            cr_assert_eq(memcmp(e.value, "two", 3), 0);
        } else {
            repairs++;
            cr_assert_eq(e.kind, KV_COORD_SEND);
            cr_assert_eq(memcmp(e.msg.value, "two", 3), 0);
            cr_assert_eq(memcmp(e.msg.key, "apple", 5), 0);
        }
    }
    cr_assert_eq(replies, 1);
    cr_assert_eq(repairs, 2);
    kv_coord_free(c);
}

Test(coord, get_notfound_everywhere)
{
    kv_coord *c = kv_coord_new(NODE);
    uint64_t id = submit_get(c, 2, true);
    fxs f;
    rack(c, 0, id, KV_REPL_NOTFOUND, (kv_version){0, 0}, 0, NULL);
    rack(c, 1, id, KV_REPL_NOTFOUND, (kv_version){0, 0}, 0, NULL);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_ENOTFOUND);
    cr_assert_eq(f.e[0].ver.ts, 0);
    rack(c, 2, id, KV_REPL_NOTFOUND, (kv_version){0, 0}, 0, NULL);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "nothing to repair");
    cr_assert_eq(kv_coord_inflight(c), 0);
    kv_coord_free(c);
}

Test(coord, get_tombstone_is_notfound_with_its_version)
{
    kv_coord *c = kv_coord_new(NODE);
    uint64_t id = submit_get(c, 2, true);
    fxs f;
    rack(c, 0, id, KV_REPL_OK, V(WALL0, 1), 0, "alive");
    rack(c, 1, id, KV_REPL_OK, V(WALL0 + 9, 2), KV_REPL_F_TOMBSTONE, NULL);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_ENOTFOUND);
    kv_version tomb = V(WALL0 + 9, 2);
    cr_assert_eq(kv_version_cmp(&f.e[0].ver, &tomb), 0);
    cr_assert_eq(f.e[0].vlen, 0);
    /* the third replica has nothing: at close it and replica 0 get the tombstone */
    rack(c, 2, id, KV_REPL_NOTFOUND, (kv_version){0, 0}, 0, NULL);
    drain(c, &f);
    cr_assert_eq(f.n, 2);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(f.e[i].kind, KV_COORD_SEND);
        cr_assert_eq(f.e[i].type, KV_REPL_WRITE);
        cr_assert_eq(f.e[i].flags, KV_REPL_F_TOMBSTONE);
        cr_assert_eq(f.e[i].req_id, 0);
        cr_assert_eq(kv_version_cmp(&f.e[i].ver, &tomb), 0);
    }
    cr_assert(find(&f, KV_COORD_SEND, 0) && find(&f, KV_COORD_SEND, 2));
    kv_coord_free(c);
}

Test(coord, get_expired_is_notfound_and_never_repaired_with)
{
    kv_coord *c = kv_coord_new(NODE);
    uint64_t id = submit_get(c, 2, true);
    fxs f;
    rack(c, 0, id, KV_REPL_OK, V(WALL0, 1), KV_REPL_F_EXPIRED, "gone");
    rack(c, 1, id, KV_REPL_NOTFOUND, (kv_version){0, 0}, 0, NULL);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_ENOTFOUND);
    rack(c, 2, id, KV_REPL_NOTFOUND, (kv_version){0, 0}, 0, NULL);
    drain(c, &f);
    cr_assert_eq(f.n, 0);
    cr_assert_eq(stats(c).read_repairs, 0);
    kv_coord_free(c);
}

Test(coord, read_repair_writes_the_newest_to_stale_replicas_only)
{
    kv_coord *c = kv_coord_new(NODE);
    uint64_t id = submit_get(c, 2, true);
    fxs f;
    kv_repl_msg m;
    memset(&m, 0, sizeof(m));
    m.type = KV_REPL_READ_ACK;
    m.req_id = id;
    m.status = KV_REPL_OK;
    m.ver = V(WALL0 + 50, 4);
    m.expiry_ms = WALL0 + 99999;
    m.value = (const uint8_t *)"newest";
    m.vlen = 6;
    swim_member_id r1 = mk_id(1);
    kv_coord_on_ack(c, NOW0 + 1, WALL0 + 1, &r1, &m);
    rack(c, 0, id, KV_REPL_NOTFOUND, (kv_version){0, 0}, 0, NULL);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_str_eq(f.e[0].val, "newest");
    cr_assert_eq(kv_coord_inflight(c), 1);
    rack(c, 2, id, KV_REPL_OK, V(WALL0 + 10, 2), 0, "older");
    drain(c, &f);
    cr_assert_eq(f.n, 2, "repairs to replicas 0 (nothing) and 2 (older), not 1");
    kv_version want = V(WALL0 + 50, 4);
    for (int i = 0; i < 2; i++) {
        const fx *s = &f.e[i];
        cr_assert_eq(s->kind, KV_COORD_SEND);
        cr_assert_neq(s->to, 1);
        cr_assert_eq(s->type, KV_REPL_WRITE);
        cr_assert_eq(s->req_id, 0);
        cr_assert_str_eq(s->key, "apple");
        cr_assert_str_eq(s->val, "newest");
        cr_assert_eq(kv_version_cmp(&s->ver, &want), 0);
        cr_assert_eq(s->expiry, WALL0 + 99999);
        cr_assert_eq(s->flags, 0);
    }
    cr_assert_eq(find(&f, KV_COORD_SEND, 0)->to_self, true);
    cr_assert_eq(stats(c).read_repairs, 2);
    /* the repairs' acks are dropped (expected: not counted as unknown) */
    wack(c, 0, 0, KV_REPL_OK, want);
    drain(c, &f);
    cr_assert_eq(f.n, 0);
    cr_assert_eq(stats(c).acks_ignored, 0);
    kv_coord_free(c);
}

Test(coord, read_repair_at_deadline_covers_those_that_answered)
{
    kv_coord *c = kv_coord_new(NODE);
    uint64_t id = submit_get(c, 2, true);
    fxs f;
    rack(c, 0, id, KV_REPL_OK, V(WALL0 + 50, 4), 0, "newest");
    rack(c, 1, id, KV_REPL_OK, V(WALL0 + 10, 4), 0, "older");
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    kv_coord_tick(c, NOW0 + TMO, WALL0 + TMO);
    drain(c, &f);
    cr_assert_eq(f.n, 1, "replica 2 never answered: no repair for it");
    cr_assert_eq(f.e[0].to, 1);
    cr_assert_str_eq(f.e[0].val, "newest");
    cr_assert_eq(stats(c).timeouts, 0, "the client was answered in time");
    kv_coord_free(c);
}

/* ---- timeouts ---- */

Test(coord, write_timeout_says_how_many_answered)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    cr_assert_eq(kv_coord_next_deadline(c), NOW0 + TMO);
    kv_coord_tick(c, NOW0 + TMO - 1, WALL0);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "not yet");
    kv_coord_tick(c, NOW0 + TMO, WALL0 + TMO);
    drain(c, &f);
    const fx *r = find(&f, KV_COORD_REPLY, -1);
    cr_assert(r);
    cr_assert_eq(r->status, KV_EUNAVAIL);
    cr_assert_str_eq(r->reason, "timeout");
    cr_assert_eq(r->answered, 0);
    cr_assert_eq(r->needed, 2);
    cr_assert_eq(count_kind(&f, KV_COORD_HINT), 3, "every primary missed the write");
    cr_assert_eq(kv_coord_inflight(c), 0);
    kv_coord_stats s = stats(c);
    cr_assert_eq(s.timeouts, 1);
    cr_assert_eq(s.unavailable, 1);
    cr_assert_eq(s.hints, 3);
    kv_coord_free(c);
}

Test(coord, write_timeout_one_of_two)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    kv_version v = f.e[0].ver;
    wack(c, 1, f.e[0].req_id, KV_REPL_OK, v);
    kv_coord_tick(c, NOW0 + TMO + 5, WALL0 + TMO);
    drain(c, &f);
    const fx *r = find(&f, KV_COORD_REPLY, -1);
    cr_assert(r);
    cr_assert_eq(r->status, KV_EUNAVAIL);
    cr_assert_eq(r->answered, 1);
    cr_assert_eq(r->needed, 2);
    cr_assert_eq(count_kind(&f, KV_COORD_HINT), 2);
    cr_assert_null(find(&f, KV_COORD_HINT, 1), "replica 1 has it");
    const fx *h = find(&f, KV_COORD_HINT, 2);
    cr_assert(h);
    cr_assert_eq(h->type, KV_REPL_WRITE);
    cr_assert_eq(h->req_id, 0);
    cr_assert_str_eq(h->val, "v");
    cr_assert_eq(kv_version_cmp(&h->ver, &v), 0);
    kv_coord_free(c);
}

Test(coord, slow_replica_after_reply_gets_a_hint)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    wack(c, 0, f.e[0].req_id, KV_REPL_OK, f.e[0].ver);
    wack(c, 1, f.e[0].req_id, KV_REPL_OK, f.e[0].ver);
    drain(c, &f);
    cr_assert_eq(f.e[0].status, KV_OK);
    kv_coord_tick(c, NOW0 + TMO, WALL0 + TMO);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].kind, KV_COORD_HINT);
    cr_assert_eq(f.e[0].to, 2);
    cr_assert_eq(stats(c).timeouts, 0);
    kv_coord_free(c);
}

Test(coord, read_timeout)
{
    kv_coord *c = kv_coord_new(NODE);
    uint64_t id = submit_get(c, 2, true);
    rack(c, 2, id, KV_REPL_OK, V(WALL0, 1), 0, "x");
    kv_coord_tick(c, NOW0 + TMO, WALL0 + TMO);
    fxs f;
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_EUNAVAIL);
    cr_assert_str_eq(f.e[0].reason, "timeout");
    cr_assert_eq(f.e[0].answered, 1);
    cr_assert_eq(f.e[0].needed, 2);
    cr_assert_eq(kv_coord_inflight(c), 0);
    kv_coord_free(c);
}

Test(coord, deadlines_fire_in_order)
{
    kv_coord *c = kv_coord_new(NODE);
    static int tags[40];
    uint64_t tmo[40];
    for (int i = 0; i < 40; i++) {
        kv_coord_req q = req(i % 2 ? KV_COORD_GET : KV_COORD_PUT, "k", "v", 2);
        tmo[i] = 100 + (uint64_t)((i * 37) % 40) * 10;
        q.timeout_ms = tmo[i];
        q.client = &tags[i];
        cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    }
    fxs f;
    drain(c, &f);
    cr_assert_eq(kv_coord_next_deadline(c), NOW0 + 100);
    int seen = 0;
    uint64_t last = 0;
    for (uint64_t t = NOW0; t <= NOW0 + 600 && seen < 40; t += 7) {
        kv_coord_tick(c, t, WALL0);
        drain(c, &f);
        for (int i = 0; i < f.n; i++) {
            if (f.e[i].kind != KV_COORD_REPLY)
                continue;
            int k = (int)((int *)f.e[i].client - tags);
            cr_assert_geq(NOW0 + tmo[k], last);
            cr_assert_leq(NOW0 + tmo[k], t);
            last = NOW0 + tmo[k];
            seen++;
        }
        uint64_t d = kv_coord_next_deadline(c);
        cr_assert(d == UINT64_MAX || d > t);
    }
    cr_assert_eq(seen, 40);
    cr_assert_eq(kv_coord_inflight(c), 0);
    kv_coord_free(c);
}

/* ---- dead primaries, sloppy quorum, member down ---- */

Test(coord, dead_primary_gets_a_hint)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
    q.targets = targets(3, 1u << 1);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    cr_assert_eq(f.n, 3);
    const fx *h = find(&f, KV_COORD_HINT, 1);
    cr_assert(h);
    cr_assert_str_eq(h->val, "v");
    cr_assert_eq(h->req_id, 0);
    cr_assert(find(&f, KV_COORD_SEND, 0) && find(&f, KV_COORD_SEND, 2));
    cr_assert_null(find(&f, KV_COORD_SEND, 1));
    uint64_t id = find(&f, KV_COORD_SEND, 0)->req_id;
    kv_version v = h->ver;
    wack(c, 1, id, KV_REPL_OK, v); /* not sent to 1: ignored */
    cr_assert_eq(stats(c).acks_ignored, 1);
    wack(c, 0, id, KV_REPL_OK, v);
    wack(c, 2, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 1, "the reply, and no second hint for 1");
    cr_assert_eq(f.e[0].status, KV_OK);
    cr_assert_eq(stats(c).hints, 1);
    kv_coord_free(c);
}

Test(coord, too_few_alive_is_refused_at_once)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 3);
    q.targets = targets(3, 1u << 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    cr_assert_eq(f.n, 1, "no sends, no hints: the write is refused");
    cr_assert_eq(f.e[0].kind, KV_COORD_REPLY);
    cr_assert_eq(f.e[0].status, KV_EUNAVAIL);
    cr_assert_str_eq(f.e[0].reason, "not_enough_replicas");
    cr_assert_eq(f.e[0].answered, 0);
    cr_assert_eq(f.e[0].needed, 3);
    cr_assert_eq(kv_coord_inflight(c), 0);

    q = req(KV_COORD_GET, "k", NULL, 2);
    q.targets = targets(3, 3);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_EUNAVAIL);
    cr_assert_eq(stats(c).unavailable, 2);
    kv_coord_free(c);
}

Test(coord, sloppy_quorum_lets_a_fallback_count)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 3);
    q.targets = targets(6, (1u << 1) | (1u << 3)); /* primary 1 and fallback 3 dead */
    q.n_targets = 6;
    q.sloppy = true;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    cr_assert_eq(f.n, 3);
    cr_assert_eq(count_kind(&f, KV_COORD_HINT), 0);
    const fx *s = find(&f, KV_COORD_SEND, 4);
    cr_assert(s, "the next alive fallback stands in");
    cr_assert(s->has_hint_for);
    cr_assert_eq(s->hint_for, 1);
    cr_assert_not(find(&f, KV_COORD_SEND, 0)->has_hint_for);
    uint64_t id = s->req_id;
    kv_version v = s->ver;
    wack(c, 0, id, KV_REPL_OK, v);
    wack(c, 2, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0);
    wack(c, 4, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 1, "reply; the fallback holds the hint, so no HINT effect");
    cr_assert_eq(f.e[0].status, KV_OK);
    cr_assert_eq(f.e[0].answered, 3);
    cr_assert_eq(kv_coord_inflight(c), 0);

    /* The same without sloppy: refused */
    q.sloppy = false;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_EUNAVAIL);

    /* A fallback that fails (hint store FULL): the primary gets a HINT at close */
    q = req(KV_COORD_PUT, "k", "v", 2);
    q.targets = targets(4, 1u << 0);
    q.n_targets = 4;
    q.sloppy = true;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    drain(c, &f);
    cr_assert_eq(count_kind(&f, KV_COORD_SEND), 3);
    s = find(&f, KV_COORD_SEND, 3);
    cr_assert(s && s->has_hint_for && s->hint_for == 0);
    id = s->req_id;
    v = s->ver;
    wack(c, 3, id, KV_REPL_FULL, v);
    wack(c, 1, id, KV_REPL_OK, v);
    wack(c, 2, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(find(&f, KV_COORD_REPLY, -1)->status, KV_OK);
    cr_assert(find(&f, KV_COORD_HINT, 0));
    kv_coord_free(c);
}

Test(coord, sloppy_without_fallbacks_hints)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
    q.targets = targets(4, (1u << 1) | (1u << 3));
    q.n_targets = 4;
    q.sloppy = true;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    cr_assert_eq(count_kind(&f, KV_COORD_SEND), 2);
    cr_assert(find(&f, KV_COORD_HINT, 1));
    kv_coord_free(c);
}

Test(coord, member_down_during_a_write_hints_and_fails_fast)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    uint64_t id = f.e[0].req_id;
    kv_version v = f.e[0].ver;
    wack(c, 0, id, KV_REPL_OK, v);
    swim_member_id d = mk_id(2);
    kv_coord_on_member_down(c, NOW0 + 20, &d);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].kind, KV_COORD_HINT);
    cr_assert_eq(f.e[0].to, 2);
    d = mk_id(1);
    kv_coord_on_member_down(c, NOW0 + 20, &d);
    drain(c, &f);
    const fx *r = find(&f, KV_COORD_REPLY, -1);
    cr_assert(r);
    cr_assert_eq(r->status, KV_EUNAVAIL);
    cr_assert_str_eq(r->reason, "not_enough_replicas");
    cr_assert_eq(r->answered, 1);
    cr_assert(find(&f, KV_COORD_HINT, 1));
    cr_assert_eq(kv_coord_inflight(c), 0);
    cr_assert_eq(stats(c).hints, 2);
    kv_coord_free(c);
}

Test(coord, member_down_during_a_read)
{
    kv_coord *c = kv_coord_new(NODE);
    uint64_t id = submit_get(c, 2, true);
    swim_member_id d = mk_id(0);
    kv_coord_on_member_down(c, NOW0 + 1, &d);
    fxs f;
    drain(c, &f);
    cr_assert_eq(f.n, 0, "two replicas can still answer");
    rack(c, 0, id, KV_REPL_OK, V(WALL0, 1), 0, "late");
    cr_assert_eq(stats(c).acks_ignored, 1, "it was given up on");
    d = mk_id(2);
    kv_coord_on_member_down(c, NOW0 + 1, &d);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_EUNAVAIL);
    cr_assert_str_eq(f.e[0].reason, "not_enough_replicas");
    rack(c, 1, id, KV_REPL_OK, V(WALL0, 1), 0, "x");
    cr_assert_eq(kv_coord_inflight(c), 0);
    kv_coord_free(c);
}

/* ---- version bump ---- */

Test(coord, stale_newer_bumps_the_version_and_rewrites)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "mine", 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    uint64_t id1 = f.e[0].req_id;
    kv_version v1 = f.e[0].ver;
    /* replica 0 holds a write acknowledged by a coordinator whose clock is 7 min ahead */
    kv_version theirs = V(WALL0 + 7 * 60000, 42);
    wack(c, 1, id1, KV_REPL_OK, v1);
    wack(c, 0, id1, KV_REPL_STALE, theirs);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "replica 2 can still make W with replica 1: no new round yet");
    wack(c, 2, id1, KV_REPL_STALE, theirs);
    drain(c, &f);
    cr_assert_eq(f.n, 3, "W is out of reach and a newer version was seen: a new round");
    uint64_t id2 = f.e[0].req_id;
    kv_version v2 = f.e[0].ver;
    cr_assert_neq(id2, id1);
    cr_assert_eq(id2 & KV_REPL_REQ_MASK, 0);
    cr_assert_gt(kv_version_cmp(&v2, &theirs), 0, "the new version overtakes theirs");
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(f.e[i].kind, KV_COORD_SEND);
        cr_assert_eq(f.e[i].req_id, id2);
        cr_assert_eq(kv_version_cmp(&f.e[i].ver, &v2), 0);
        cr_assert_str_eq(f.e[i].val, "mine");
    }
    cr_assert_eq(stats(c).rounds_extra, 1);
    /* the old round's acks no longer count */
    wack(c, 2, id1, KV_REPL_OK, v1);
    drain(c, &f);
    cr_assert_eq(f.n, 0);
    wack(c, 0, id2, KV_REPL_OK, v2);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "one ack of the new round is not enough (replica 1's was old)");
    wack(c, 1, id2, KV_REPL_OK, v2);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_OK);
    cr_assert_eq(kv_version_cmp(&f.e[0].ver, &v2), 0);
    cr_assert_eq(f.e[0].answered, 2);
    wack(c, 2, id2, KV_REPL_OK, v2);
    drain(c, &f);
    cr_assert_eq(f.n, 0);
    cr_assert_eq(kv_coord_inflight(c), 0);
    cr_assert_geq(stats(c).acks_ignored, 1);
    kv_coord_free(c);
}

/* W acceptances of one version acknowledge the write even when another replica holds a
 * newer (concurrent) version: the acknowledging quorum is what orders it after every
 * write finished before it began. */
Test(coord, a_newer_version_elsewhere_does_not_block_a_quorum)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "mine", 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    uint64_t id1 = f.e[0].req_id;
    kv_version v1 = f.e[0].ver;
    kv_version theirs = v1;
    theirs.ts += 3;
    wack(c, 0, id1, KV_REPL_STALE, theirs);
    wack(c, 1, id1, KV_REPL_OK, v1);
    drain(c, &f);
    cr_assert_eq(f.n, 0);
    wack(c, 2, id1, KV_REPL_OK, v1);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].kind, KV_COORD_REPLY);
    cr_assert_eq(f.e[0].status, KV_OK);
    cr_assert_eq(kv_version_cmp(&f.e[0].ver, &v1), 0);
    cr_assert_eq(stats(c).rounds_extra, 0);
    cr_assert_eq(kv_coord_inflight(c), 0);
    kv_coord_free(c);
}

Test(coord, contended_after_max_rounds)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    int rounds = 1;
    for (int i = 0; i < 20; i++) {
        const fx *r = find(&f, KV_COORD_REPLY, -1);
        if (r) {
            cr_assert_eq(r->status, KV_EUNAVAIL);
            cr_assert_str_eq(r->reason, "contended");
            break;
        }
        cr_assert_eq(count_kind(&f, KV_COORD_SEND), 3);
        /* someone keeps writing ahead of us */
        kv_version ahead = f.e[0].ver;
        ahead.ts += 5;
        uint64_t rid = f.e[0].req_id;
        wack(c, 2, rid, KV_REPL_STALE, ahead);
        wack(c, 1, rid, KV_REPL_STALE, ahead);
        drain(c, &f);
        if (count_kind(&f, KV_COORD_SEND))
            rounds++;
    }
    cr_assert_eq(rounds, KV_COORD_MAX_ROUNDS);
    cr_assert_eq(stats(c).rounds_extra, KV_COORD_MAX_ROUNDS - 1);
    cr_assert_eq(kv_coord_inflight(c), 1, "still waiting for replica 0");
    kv_coord_tick(c, NOW0 + TMO, WALL0 + TMO);
    drain(c, &f);
    cr_assert_eq(count_kind(&f, KV_COORD_REPLY), 0, "one reply only");
    cr_assert_eq(count_kind(&f, KV_COORD_HINT), 1, "not for replicas 1 and 2: they hold newer");
    kv_coord_free(c);
}

/* ---- fail fast ---- */

Test(coord, errors_fail_fast_with_eio)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    uint64_t id = f.e[0].req_id;
    kv_version v = f.e[0].ver;
    wack(c, 0, id, KV_REPL_ERROR, (kv_version){0, 0});
    drain(c, &f);
    cr_assert_eq(f.n, 0, "two can still acknowledge");
    wack(c, 1, id, KV_REPL_ERROR, (kv_version){0, 0});
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_EIO);
    cr_assert_eq(f.e[0].answered, 0);
    cr_assert_eq(f.e[0].needed, 2);
    cr_assert_eq(kv_coord_inflight(c), 1);
    wack(c, 2, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(count_kind(&f, KV_COORD_REPLY), 0);
    cr_assert_eq(count_kind(&f, KV_COORD_HINT), 2, "the failed replicas get hints");
    cr_assert(find(&f, KV_COORD_HINT, 0) && find(&f, KV_COORD_HINT, 1));
    cr_assert_eq(kv_coord_inflight(c), 0);
    kv_coord_free(c);
}

Test(coord, nospace_fails_fast_with_enospc)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    uint64_t id = f.e[0].req_id;
    wack(c, 0, id, KV_REPL_ERROR, (kv_version){0, 0});
    wack(c, 2, id, KV_REPL_NOSPACE, (kv_version){0, 0});
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_ENOSPC);
    kv_coord_free(c);
}

Test(coord, read_errors_fail_fast)
{
    kv_coord *c = kv_coord_new(NODE);
    uint64_t id = submit_get(c, 2, true);
    rack(c, 0, id, KV_REPL_ERROR, (kv_version){0, 0}, 0, NULL);
    rack(c, 1, id, KV_REPL_ERROR, (kv_version){0, 0}, 0, NULL);
    fxs f;
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_EIO);
    cr_assert_eq(f.e[0].needed, 2);
    kv_coord_free(c);
}

/* ---- bad input ---- */

Test(coord, bad_requests_are_refused)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 0);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_EINVAL, "need 0");
    q = req(KV_COORD_PUT, "k", "v", 4);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_EINVAL, "need > n");
    q = req(KV_COORD_PUT, "k", "v", 1);
    q.n = 0;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_EINVAL, "n 0");
    q = req(KV_COORD_PUT, "k", "v", 2);
    q.n_targets = KV_COORD_MAX_TARGETS + 1;
    q.targets = targets(KV_COORD_MAX_TARGETS + 1, 0);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_EINVAL, "too many targets");
    q = req(KV_COORD_PUT, "k", "v", 2);
    q.n_targets = 2;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_EINVAL, "fewer targets than n");
    q = req(KV_COORD_PUT, "k", "v", 2);
    q.klen = 0;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_EINVAL, "empty key");
    static uint8_t big[KV_REPL_KEY_MAX + 1];
    q.key = big;
    q.klen = sizeof(big);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_EINVAL, "key too long");
    q.klen = KV_REPL_KEY_MAX;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK, "longest key");
    q = req(KV_COORD_PUT, "k", "v", 2);
    q.op = (kv_coord_op)9;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_EINVAL, "unknown op");
    kv_coord_effect e;
    int n = 0;
    while (kv_coord_pop(c, &e))
        n++;
    cr_assert_eq(n, 3, "only the valid request made effects");
    kv_coord_free(c);
}

Test(coord, bad_acks_are_ignored)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    uint64_t id = f.e[0].req_id;
    kv_version v = f.e[0].ver;
    wack(c, 0, id ^ (1ull << 40), KV_REPL_OK, v); /* another generation */
    wack(c, 0, id | KV_REPL_REQ_HINT, KV_REPL_OK, v);
    wack(c, 0, 0, KV_REPL_OK, v);
    wack(c, 0, UINT64_MAX >> 2, KV_REPL_OK, v);
    wack(c, 9, id, KV_REPL_OK, v);                 /* not a target */
    rack(c, 0, id, KV_REPL_OK, v, 0, "v");         /* wrong type */
    wack(c, 0, (id & ~0xfull) | 5, KV_REPL_OK, v); /* a round never sent */
    drain(c, &f);
    cr_assert_eq(f.n, 0);
    cr_assert_eq(stats(c).acks_ignored, 6, "all but req_id 0 (a repair's ack) counted");
    /* An OK carrying a version we did not send is no acknowledgement (a failure) */
    kv_version other = V(WALL0 - 1000, 3);
    wack(c, 0, id, KV_REPL_OK, other);
    wack(c, 1, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0);
    wack(c, 2, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(find(&f, KV_COORD_REPLY, -1)->status, KV_OK);
    cr_assert(find(&f, KV_COORD_HINT, 0));
    kv_coord_free(c);
}

Test(coord, exhausted_clock_refuses_writes)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_version top = {.ts = UINT64_MAX, .node = 1};
    kv_coord_observe(c, &top, WALL0);
    kv_coord_req q = req(KV_COORD_PUT, "k", "v", 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_EIO);
    q = req(KV_COORD_GET, "k", NULL, 2);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK, "reads still work");
    drain(c, &f);
    cr_assert_eq(count_kind(&f, KV_COORD_SEND), 3);
    kv_coord_free(c);
}

/* ---- randomized: never hangs, and the real-time-order promise under clock skew ---- */

/* Wall clocks 10 min slow, right, 7 min fast, running at slightly different rates. */
static sim_params skew_params(uint32_t clients, uint32_t ops)
{
    sim_params p;
    memset(&p, 0, sizeof(p));
    p.clients = clients;
    p.ops = ops;
    p.drop_pm = 30;
    p.dup_pm = 10;
    p.slow_pm = 20;
    p.dead_pm = 20;
    p.down_pm = 20;
    p.timeout_ms = 400;
    p.wall_off[0] = -10 * 60000;
    p.wall_off[1] = 0;
    p.wall_off[2] = 7 * 60000;
    p.rate_pm[0] = 1000;
    p.rate_pm[1] = 997;
    p.rate_pm[2] = 1004;
    return p;
}

static void run_seeds(const sim_params *p, uint64_t seeds, const char *name)
{
    static sim s;
    uint64_t rounds_extra = 0, reads_checked = 0, writes_ok = 0, writes_failed = 0, reads_ok = 0,
             reads_failed = 0;
    sim_failed = false;
    for (uint64_t seed = 1; seed <= seeds; seed++) {
        sim_run(&s, p, seed);
        CHECK(!sim_failed, "%s seed %llu: the harness saw a malformed effect", name,
              (unsigned long long)seed);
        CHECK(!s.stuck, "%s seed %llu: requests left open or ops not run", name,
              (unsigned long long)seed);
        CHECK(s.replies_bad == 0, "%s seed %llu: %u ops without exactly one reply", name,
              (unsigned long long)seed, s.replies_bad);
        CHECK(s.stale_reads == 0, "%s seed %llu: %u stale reads; first: %s", name,
              (unsigned long long)seed, s.stale_reads, s.first_violation);
        reads_checked += s.reads_checked;
        rounds_extra += s.rounds_extra;
        writes_ok += s.writes_ok;
        writes_failed += s.writes_failed;
        reads_ok += s.reads_ok;
        reads_failed += s.reads_failed;
    }
    fprintf(stderr,
            "%s: %llu seeds x %u ops: writes ok %llu failed %llu, reads ok %llu failed %llu, "
            "reads checked %llu, version bumps %llu, stale 0\n",
            name, (unsigned long long)seeds, p->ops, (unsigned long long)writes_ok,
            (unsigned long long)writes_failed, (unsigned long long)reads_ok,
            (unsigned long long)reads_failed, (unsigned long long)reads_checked,
            (unsigned long long)rounds_extra);
    /* the run must have exercised something */
    cr_assert_gt(writes_ok, seeds * p->ops / 5);
    cr_assert_gt(reads_checked, seeds * p->ops / 5);
}

Test(coord_sim, sequential_client_under_clock_skew_reads_no_stale_value)
{
    sim_params p = skew_params(1, 200);
    run_seeds(&p, 200, "sequential");
}

Test(coord_sim, concurrent_clients_history_has_no_stale_read)
{
    sim_params p = skew_params(4, 200);
    run_seeds(&p, 200, "concurrent");
}

Test(coord_sim, lossy_network_every_request_answers_once)
{
    sim_params p = skew_params(6, 300);
    p.drop_pm = 200;
    p.dup_pm = 100;
    p.slow_pm = 100;
    p.dead_pm = 100;
    p.down_pm = 200;
    static sim s;
    sim_failed = false;
    uint64_t timeouts = 0;
    for (uint64_t seed = 1; seed <= 50; seed++) {
        sim_run(&s, &p, seed);
        CHECK(!sim_failed && !s.stuck && s.replies_bad == 0, "seed %llu: a request hung",
              (unsigned long long)seed);
        CHECK(s.stale_reads == 0, "seed %llu: %s", (unsigned long long)seed, s.first_violation);
        for (uint32_t i = 0; i < s.nops; i++)
            timeouts += s.ops[i].status == KV_EUNAVAIL;
    }
    cr_assert_gt(timeouts, 0, "the lossy run must hit the failure paths");
}

/* ---- joint quorums: a node joins, old list {A,B,C}, new list {D,A,B} ---- */

/* Primaries 0..3 are A, B, C, D; A and B are in both lists (bits 0 and 1), C only in the
 * old one (bit 0), D only in the new one (bit 1). */
enum { JA = 0, JB = 1, JC = 2, JD = 3, JE = 4, JF = 5 };

/* A PUT over the union of both lists with W = 2 in each (and need 2, what 503s report);
 * n_fallbacks more targets (in no list) follow the primaries; bit i of dead marks target i
 * not alive. */
static kv_coord_req joint_req(uint32_t dead, int n_fallbacks)
{
    static const uint8_t groups[4] = {3, 3, 1, 2};
    kv_coord_req q = req(KV_COORD_PUT, "jk", "jv", 2);
    int nt = 4 + n_fallbacks;
    targets(nt, dead);
    for (int i = 0; i < nt; i++)
        tg[i].groups = i < 4 ? groups[i] : 0;
    q.n = 4;
    q.n_targets = (uint32_t)nt;
    q.targets = tg;
    q.n_groups = 2;
    q.group_need[0] = 2;
    q.group_need[1] = 2;
    return q;
}

/* Submit q; every effect is a SEND of the WRITE (and the HINTs for dead primaries), all
 * with one request id and version, returned. */
static uint64_t joint_submit(kv_coord *c, const kv_coord_req *q, fxs *f, kv_version *v)
{
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, q), KV_OK);
    drain(c, f);
    const fx *s = find(f, KV_COORD_SEND, -1);
    cr_assert(s, "the write went out");
    for (int i = 0; i < f->n; i++) {
        cr_assert(f->e[i].kind == KV_COORD_SEND || f->e[i].kind == KV_COORD_HINT);
        cr_assert_eq(f->e[i].type, KV_REPL_WRITE);
        cr_assert_str_eq(f->e[i].val, "jv");
        cr_assert_eq(kv_version_cmp(&f->e[i].ver, &s->ver), 0);
        cr_assert_eq(f->e[i].req_id, f->e[i].kind == KV_COORD_SEND ? s->req_id : 0);
    }
    *v = s->ver;
    return s->req_id;
}

static void assert_joint_ok(const fxs *f, const kv_version *v, uint32_t answered)
{
    cr_assert_eq(f->n, 1, "exactly the reply");
    cr_assert_eq(f->e[0].kind, KV_COORD_REPLY);
    cr_assert_eq(f->e[0].status, KV_OK);
    cr_assert_eq(f->e[0].client, &client_tag);
    cr_assert_eq(kv_version_cmp(&f->e[0].ver, v), 0);
    cr_assert_eq(f->e[0].answered, answered);
    cr_assert_eq(f->e[0].needed, 2);
}

Test(coord, joint_write_needs_w_in_each_list)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = joint_req(0, 0);
    fxs f;
    kv_version v;
    uint64_t id = joint_submit(c, &q, &f, &v);
    cr_assert_eq(f.n, 4, "every member of either list gets the write");

    /* C (old list only) and D (new list only): two acks, as a plain W = 2 would need, but
     * each list has only one */
    wack(c, JC, id, KV_REPL_OK, v);
    wack(c, JD, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "one ack in each list is not W in each list");
    /* A is in both lists: now 2 in each */
    wack(c, JA, id, KV_REPL_OK, v);
    drain(c, &f);
    assert_joint_ok(&f, &v, 3);
    wack(c, JB, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "all acknowledged: no hints, no second reply");
    cr_assert_eq(kv_coord_inflight(c), 0);

    /* The other order: A and C make W in the old list, the new list has only A */
    id = joint_submit(c, &q, &f, &v);
    wack(c, JA, id, KV_REPL_OK, v);
    wack(c, JC, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "the new list {D,A,B} has one ack");
    wack(c, JD, id, KV_REPL_STALE, v); /* STALE with our version: a retry, counts */
    drain(c, &f);
    assert_joint_ok(&f, &v, 3);
    /* B never answers: it gets the hint at the deadline */
    kv_coord_tick(c, NOW0 + TMO, WALL0 + TMO);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].kind, KV_COORD_HINT);
    cr_assert_eq(f.e[0].to, JB);
    cr_assert_eq(kv_coord_inflight(c), 0);
    kv_coord_free(c);
}

Test(coord, joint_write_members_of_both_lists_are_enough)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = joint_req(0, 0);
    fxs f;
    kv_version v;
    uint64_t id = joint_submit(c, &q, &f, &v);
    cr_assert_eq(f.n, 4);
    for (int i = JA; i <= JD; i++)
        cr_assert(find(&f, KV_COORD_SEND, i), "target %d got no WRITE", i);
    cr_assert_eq(count_kind(&f, KV_COORD_HINT), 0);

    wack(c, JA, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0);
    wack(c, JB, id, KV_REPL_OK, v);
    drain(c, &f);
    assert_joint_ok(&f, &v, 2);
    cr_assert_eq(kv_coord_inflight(c), 1, "open until C and D answer or time out");

    kv_coord_tick(c, NOW0 + TMO, WALL0 + TMO);
    drain(c, &f);
    cr_assert_eq(f.n, 2, "two hints, no second reply");
    cr_assert(find(&f, KV_COORD_HINT, JC) && find(&f, KV_COORD_HINT, JD));
    cr_assert_eq(kv_coord_inflight(c), 0);
    cr_assert_eq(stats(c).timeouts, 0);
    kv_coord_free(c);
}

Test(coord, joint_write_fails_fast_when_a_list_is_lost)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = joint_req(0, 0);
    fxs f;
    kv_version v;
    uint64_t id = joint_submit(c, &q, &f, &v);

    /* D and C go away: each list still has A and B pending */
    swim_member_id d = mk_id(JD), cc = mk_id(JC), b = mk_id(JB);
    kv_coord_on_member_down(c, NOW0 + 20, &d);
    kv_coord_on_member_down(c, NOW0 + 20, &cc);
    drain(c, &f);
    cr_assert_eq(f.n, 2, "only the hints of D and C");
    cr_assert(find(&f, KV_COORD_HINT, JD) && find(&f, KV_COORD_HINT, JC));
    /* B goes away too: the new list {D,A,B} has only A left, W = 2 is out of reach */
    kv_coord_on_member_down(c, NOW0 + 30, &b);
    drain(c, &f);
    const fx *r = find(&f, KV_COORD_REPLY, -1);
    cr_assert(r, "answered at once, not at the deadline");
    cr_assert_eq(r->status, KV_EUNAVAIL);
    cr_assert_str_eq(r->reason, "not_enough_replicas");
    cr_assert_eq(r->answered, 0);
    cr_assert(find(&f, KV_COORD_HINT, JB));
    cr_assert_eq(stats(c).timeouts, 0);
    wack(c, JA, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "A closes the request; no second reply");
    cr_assert_eq(kv_coord_inflight(c), 0);

    /* D and B fail: A and C are still pending, which a plain W = 2 over the union could
     * still reach, but the new list cannot */
    id = joint_submit(c, &q, &f, &v);
    wack(c, JD, id, KV_REPL_FULL, (kv_version){0, 0});
    drain(c, &f);
    cr_assert_eq(f.n, 0);
    wack(c, JB, id, KV_REPL_FULL, (kv_version){0, 0});
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].kind, KV_COORD_REPLY);
    cr_assert_eq(f.e[0].status, KV_EUNAVAIL);
    cr_assert_str_eq(f.e[0].reason, "not_enough_replicas");
    cr_assert_eq(kv_coord_inflight(c), 1, "A and C still pending");
    kv_coord_free(c);
}

Test(coord, joint_write_errors_in_one_list_fail_with_eio)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = joint_req(0, 0);
    fxs f;
    kv_version v;
    uint64_t id = joint_submit(c, &q, &f, &v);
    wack(c, JD, id, KV_REPL_ERROR, (kv_version){0, 0});
    wack(c, JC, id, KV_REPL_ERROR, (kv_version){0, 0});
    drain(c, &f);
    cr_assert_eq(f.n, 0, "both lists can still reach W through A and B");
    wack(c, JB, id, KV_REPL_ERROR, (kv_version){0, 0});
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].kind, KV_COORD_REPLY);
    cr_assert_eq(f.e[0].status, KV_EIO, "replicas failed: EIO, as for one list");
    cr_assert_eq(stats(c).timeouts, 0);
    wack(c, JA, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(count_kind(&f, KV_COORD_REPLY), 0);
    cr_assert_eq(count_kind(&f, KV_COORD_HINT), 3, "the failed replicas get hints");
    cr_assert_null(find(&f, KV_COORD_HINT, JA));
    cr_assert_eq(kv_coord_inflight(c), 0);
    kv_coord_free(c);
}

Test(coord, joint_write_refused_at_once_when_one_list_is_short)
{
    kv_coord *c = kv_coord_new(NODE);
    /* D and B dead: the new list {D,A,B} has only A alive; A and C would be 2 of the union */
    kv_coord_req q = joint_req((1u << JD) | (1u << JB), 0);
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    fxs f;
    drain(c, &f);
    cr_assert_eq(f.n, 1, "no sends, no hints: the write is refused");
    cr_assert_eq(f.e[0].kind, KV_COORD_REPLY);
    cr_assert_eq(f.e[0].status, KV_EUNAVAIL);
    cr_assert_str_eq(f.e[0].reason, "not_enough_replicas");
    cr_assert_eq(f.e[0].answered, 0);
    cr_assert_eq(f.e[0].needed, 2);
    cr_assert_eq(kv_coord_inflight(c), 0);
    cr_assert_eq(stats(c).unavailable, 1);

    /* The same targets as one list: enough (A and C), so it goes out */
    q.n_groups = 0;
    kv_version v;
    joint_submit(c, &q, &f, &v);
    cr_assert_eq(count_kind(&f, KV_COORD_SEND), 2);
    cr_assert(find(&f, KV_COORD_SEND, JA) && find(&f, KV_COORD_SEND, JC));
    cr_assert_eq(count_kind(&f, KV_COORD_REPLY), 0);

    /* C dead instead: the old list {A,B,C} still has A and B */
    q = joint_req(1u << JC, 0);
    joint_submit(c, &q, &f, &v);
    cr_assert_eq(count_kind(&f, KV_COORD_SEND), 3);
    cr_assert(find(&f, KV_COORD_HINT, JC));
    cr_assert_eq(count_kind(&f, KV_COORD_REPLY), 0);
    kv_coord_free(c);
}

Test(coord, joint_sloppy_fallback_counts_for_its_primarys_lists)
{
    kv_coord *c = kv_coord_new(NODE);
    /* B and D dead; fallbacks E and F stand in for them, in ring order */
    kv_coord_req q = joint_req((1u << JD) | (1u << JB), 2);
    q.sloppy = true;
    fxs f;
    kv_version v;
    uint64_t id = joint_submit(c, &q, &f, &v);
    cr_assert_eq(f.n, 4);
    cr_assert_eq(count_kind(&f, KV_COORD_HINT), 0);
    const fx *e = find(&f, KV_COORD_SEND, JE), *ff = find(&f, KV_COORD_SEND, JF);
    cr_assert(e && ff);
    cr_assert(e->has_hint_for && ff->has_hint_for);
    cr_assert_eq(e->hint_for, JB);
    cr_assert_eq(ff->hint_for, JD);

    /* F (for D: new list) and C (old list): one in each */
    wack(c, JF, id, KV_REPL_OK, v);
    wack(c, JC, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0);
    /* E stands in for B, which is in both lists */
    wack(c, JE, id, KV_REPL_OK, v);
    drain(c, &f);
    assert_joint_ok(&f, &v, 3);
    wack(c, JA, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "the fallbacks hold the hints: no HINT effect");
    cr_assert_eq(kv_coord_inflight(c), 0);

    /* Without sloppy the same write is refused */
    q.sloppy = false;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_EUNAVAIL);
    kv_coord_free(c);
}

Test(coord, joint_dead_primary_of_the_new_list_gets_a_hint)
{
    kv_coord *c = kv_coord_new(NODE);
    kv_coord_req q = joint_req(1u << JD, 0);
    fxs f;
    kv_version v;
    uint64_t id = joint_submit(c, &q, &f, &v);
    cr_assert_eq(f.n, 4);
    cr_assert_eq(count_kind(&f, KV_COORD_SEND), 3);
    cr_assert_null(find(&f, KV_COORD_SEND, JD));
    const fx *h = find(&f, KV_COORD_HINT, JD);
    cr_assert(h, "D, down at submit, gets a hint like any primary");
    cr_assert_eq(h->req_id, 0);
    cr_assert_str_eq(h->key, "jk");
    cr_assert_eq(stats(c).hints, 1);

    wack(c, JA, id, KV_REPL_OK, v);
    wack(c, JB, id, KV_REPL_OK, v);
    drain(c, &f);
    assert_joint_ok(&f, &v, 2);
    wack(c, JC, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "no second hint for D");
    cr_assert_eq(stats(c).hints, 1);
    cr_assert_eq(kv_coord_inflight(c), 0);

    /* D down and then B goes away: the new list is left with A, the write fails at once */
    id = joint_submit(c, &q, &f, &v);
    swim_member_id b = mk_id(JB);
    kv_coord_on_member_down(c, NOW0 + 20, &b);
    drain(c, &f);
    const fx *r = find(&f, KV_COORD_REPLY, -1);
    cr_assert(r);
    cr_assert_eq(r->status, KV_EUNAVAIL);
    cr_assert(find(&f, KV_COORD_HINT, JB));
    kv_coord_free(c);
}

Test(coord, joint_groups_off_reads_and_bad_groups)
{
    kv_coord *c = kv_coord_new(NODE);
    fxs f;
    kv_version v;

    /* n_groups 0: one list over the primaries, the groups bits mean nothing; C and D are
     * W = 2 */
    kv_coord_req q = joint_req(0, 0);
    q.n_groups = 0;
    uint64_t id = joint_submit(c, &q, &f, &v);
    cr_assert_eq(f.n, 4);
    wack(c, JC, id, KV_REPL_OK, v);
    wack(c, JD, id, KV_REPL_OK, v);
    drain(c, &f);
    assert_joint_ok(&f, &v, 2);

    /* Reads ignore the lists: with B and D dead a read goes to A and C, and R = 2 of them
     * answer it */
    q = joint_req((1u << JD) | (1u << JB), 0);
    q.op = KV_COORD_GET;
    q.value = NULL;
    q.vlen = 0;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    drain(c, &f);
    cr_assert_eq(f.n, 2);
    const fx *s = find(&f, KV_COORD_SEND, JA);
    cr_assert(s && find(&f, KV_COORD_SEND, JC));
    cr_assert_eq(s->type, KV_REPL_READ);
    id = s->req_id;
    rack(c, JA, id, KV_REPL_OK, V(100, 1), 0, "x");
    rack(c, JC, id, KV_REPL_OK, V(100, 1), 0, "x");
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_OK);
    cr_assert_str_eq(f.e[0].val, "x");

    /* Bad lists: refused, nothing happens */
    kv_coord_stats before = stats(c);
    q = joint_req(0, 0);
    q.group_need[1] = 0;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_EINVAL, "a list needing nothing");
    q = joint_req(0, 0);
    q.group_need[0] = 5;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_EINVAL, "need above n");
    q = joint_req(0, 0);
    q.n_groups = KV_COORD_MAX_GROUPS + 1;
    for (int k = 0; k < KV_COORD_MAX_GROUPS; k++)
        q.group_need[k] = 1;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_EINVAL, "too many lists");
    drain(c, &f);
    cr_assert_eq(f.n, 0);
    cr_assert_eq(stats(c).writes, before.writes);
    cr_assert_eq(kv_coord_inflight(c), 1, "only the first write (A, B open)");

    /* At the bounds: accepted. The old list has 3 members, so needing 4 there (<= n) is
     * a list that can never be met: refused at once, not invalid */
    q = joint_req(0, 0);
    q.group_need[0] = 4;
    cr_assert_eq(kv_coord_submit(c, NOW0, WALL0, &q), KV_OK);
    drain(c, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.e[0].status, KV_EUNAVAIL);
    cr_assert_str_eq(f.e[0].reason, "not_enough_replicas");
    q = joint_req(0, 0);
    q.n_groups = KV_COORD_MAX_GROUPS;
    for (int i = JA; i <= JD; i++)
        tg[i].groups |= 0xc; /* everyone in lists 2 and 3 too */
    q.group_need[2] = q.group_need[3] = 4;
    id = joint_submit(c, &q, &f, &v);
    cr_assert_eq(f.n, 4);
    wack(c, JA, id, KV_REPL_OK, v);
    wack(c, JB, id, KV_REPL_OK, v);
    wack(c, JC, id, KV_REPL_OK, v);
    drain(c, &f);
    cr_assert_eq(f.n, 0, "lists 2 and 3 need all four");
    wack(c, JD, id, KV_REPL_OK, v);
    drain(c, &f);
    assert_joint_ok(&f, &v, 4);
    kv_coord_free(c);
}
