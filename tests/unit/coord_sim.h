/*
 * coord_sim.h — a tiny deterministic cluster for test_coord.c: three in-memory replicas,
 * three coordinators (src/repl/coord.c) whose wall clocks are minutes apart and run at
 * different rates, a network that delays, reorders, duplicates and drops messages, and
 * clients that run operations through rotating coordinators. Afterwards a history
 * checker looks for stale reads. Everything is driven by one seeded generator and a
 * virtual clock: the same seed gives the same run.
 *
 * Included by test_coord.c only (static functions; one translation unit).
 */
#ifndef KV_TEST_COORD_SIM_H
#define KV_TEST_COORD_SIM_H

#include "kvstore/error.h"
#include "repl/coord.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SIM_REPLICAS    3
#define SIM_COORDS      3
#define SIM_KEYS        3
#define SIM_VMAX        32
#define SIM_MAX_OPS     1024
#define SIM_MAX_CLIENTS 8
#define SIM_WALL0       1700000000000ull /* ms since the epoch */
#define SIM_STEP_LIMIT  2000000u         /* bound on loop iterations per run */

typedef struct sim_params {
    uint32_t clients;             /* concurrent clients (1: the sequential variant) */
    uint32_t ops;                 /* operations in total */
    uint32_t drop_pm;             /* per mille of messages lost */
    uint32_t dup_pm;              /* per mille delivered twice */
    uint32_t slow_pm;             /* per mille delayed past the request timeout, often */
    uint32_t dead_pm;             /* per mille of targets reported not alive at submit */
    uint32_t down_pm;             /* per mille of operations after which a coordinator hears a
                                     (false) member-down report */
    uint64_t timeout_ms;          /* request timeout */
    int64_t wall_off[SIM_COORDS]; /* each coordinator's wall-clock error, ms */
    uint32_t rate_pm[SIM_COORDS]; /* each wall clock's rate, per mille of true time */
} sim_params;

typedef struct sim_rec {
    bool has, tomb;
    kv_version ver;
    char val[SIM_VMAX];
    size_t vlen;
} sim_rec;

typedef struct sim_op {
    int client, coord, key;
    kv_coord_op kind;
    char val[SIM_VMAX]; /* PUT: unique "o<index>" */
    size_t vlen;
    uint64_t t_start, t_end;
    int replies, status;
    const char *reason;
    kv_version ver;
    char rval[SIM_VMAX];
    size_t rvlen;
} sim_op;

typedef struct sim_ev {
    uint64_t at, seq;
    bool to_coord; /* an ack for coordinator `coord`; else a message for `replica` */
    bool no_ack;   /* a delivered hint: the replica stores it, nobody waits */
    int coord, replica, key;
    kv_repl_type type;
    uint64_t req_id;
    kv_repl_status status;
    kv_version ver;
    uint32_t flags;
    uint64_t expiry_ms;
    char val[SIM_VMAX];
    size_t vlen;
} sim_ev;

typedef struct sim_client {
    bool busy;
    uint64_t next_start;
} sim_client;

typedef struct sim {
    sim_params p;
    uint64_t rng;
    uint64_t t; /* true time, ms */
    kv_coord *c[SIM_COORDS];
    sim_rec rep[SIM_REPLICAS][SIM_KEYS];
    sim_ev *ev; /* min-heap by (at, seq) */
    size_t nev, evcap;
    uint64_t seq;
    sim_op ops[SIM_MAX_OPS];
    uint32_t nops;
    sim_client cl[SIM_MAX_CLIENTS];
    uint32_t next_coord;
    /* results */
    uint32_t replies_bad;   /* ops with != 1 reply */
    uint32_t reads_checked; /* successful reads the checker could attribute */
    uint32_t stale_reads;
    uint32_t writes_ok, writes_failed, reads_ok, reads_failed;
    uint64_t rounds_extra; /* version bumps, over all coordinators */
    bool stuck;            /* the step limit was hit */
    char first_violation[160];
} sim;

static uint64_t sim_rand(sim *s)
{
    /* splitmix64 */
    uint64_t z = (s->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t sim_below(sim *s, uint32_t n)
{
    return (uint32_t)(sim_rand(s) % n);
}

static bool sim_pm(sim *s, uint32_t per_mille)
{
    return sim_below(s, 1000) < per_mille;
}

static swim_member_id sim_id(int replica)
{
    swim_member_id id;
    memset(&id, 0, sizeof(id));
    id.b[0] = 0x5e;
    id.b[15] = (uint8_t)replica;
    return id;
}

static uint64_t sim_wall(const sim *s, int c)
{
    return (uint64_t)((int64_t)SIM_WALL0 + s->p.wall_off[c]) + s->t * s->p.rate_pm[c] / 1000;
}

/* Each coordinator's monotonic clock starts somewhere else. */
static uint64_t sim_mono_off(int c)
{
    return 1000u + (uint64_t)c * 77777u;
}

static uint64_t sim_mono(const sim *s, int c)
{
    return sim_mono_off(c) + s->t;
}

static bool ev_less(const sim_ev *a, const sim_ev *b)
{
    return a->at != b->at ? a->at < b->at : a->seq < b->seq;
}

static void ev_push(sim *s, sim_ev e)
{
    if (s->nev == s->evcap) {
        s->evcap = s->evcap ? s->evcap * 2 : 256;
        s->ev = realloc(s->ev, s->evcap * sizeof(*s->ev));
        if (!s->ev)
            abort();
    }
    e.seq = s->seq++;
    size_t i = s->nev++;
    s->ev[i] = e;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ev_less(&s->ev[i], &s->ev[p]))
            break;
        sim_ev x = s->ev[i];
        s->ev[i] = s->ev[p];
        s->ev[p] = x;
        i = p;
    }
}

static sim_ev ev_pop(sim *s)
{
    sim_ev top = s->ev[0];
    s->ev[0] = s->ev[--s->nev];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->nev && ev_less(&s->ev[l], &s->ev[m]))
            m = l;
        if (r < s->nev && ev_less(&s->ev[r], &s->ev[m]))
            m = r;
        if (m == i)
            break;
        sim_ev x = s->ev[i];
        s->ev[i] = s->ev[m];
        s->ev[m] = x;
        i = m;
    }
    return top;
}

/* Put a message on the wire: lost, late, on time, or twice. */
static void sim_send(sim *s, sim_ev e)
{
    if (sim_pm(s, s->p.drop_pm))
        return;
    bool slow = sim_pm(s, s->p.slow_pm);
    e.at = s->t + 1 + (slow ? 100 + sim_below(s, 1400) : sim_below(s, 30));
    if (sim_pm(s, s->p.dup_pm)) {
        sim_ev d = e;
        d.at += 1 + sim_below(s, 200);
        ev_push(s, d);
    }
    ev_push(s, e);
}

static int sim_key_index(const uint8_t *key, size_t klen)
{
    if (klen != 2 || key[0] != 'k' || key[1] < '0' || key[1] >= '0' + SIM_KEYS)
        return -1;
    return key[1] - '0';
}

static bool sim_failed; /* a harness invariant broke; reported by the test */

static void sim_drain(sim *s, int ci)
{
    kv_coord_effect e;
    while (kv_coord_pop(s->c[ci], &e)) {
        if (e.kind == KV_COORD_REPLY) {
            sim_op *op = e.client;
            op->replies++;
            if (op->replies > 1)
                continue;
            op->t_end = s->t;
            op->status = e.status;
            op->reason = e.reason;
            op->ver = e.ver;
            if (e.status == KV_OK && op->kind == KV_COORD_GET) {
                if (e.vlen > SIM_VMAX) {
                    sim_failed = true;
                    continue;
                }
                if (e.vlen)
                    memcpy(op->rval, e.value, e.vlen);
                op->rvlen = e.vlen;
            }
            sim_client *cl = &s->cl[op->client];
            cl->busy = false;
            cl->next_start = s->t + 1 + sim_below(s, 20);
            continue;
        }
        sim_ev m;
        memset(&m, 0, sizeof(m));
        m.coord = ci;
        m.replica = e.to.b[15];
        m.key = sim_key_index(e.msg.key, e.msg.klen);
        m.type = e.msg.type;
        m.req_id = e.msg.req_id;
        m.ver = e.msg.ver;
        m.flags = e.msg.flags;
        m.expiry_ms = e.msg.expiry_ms;
        if (m.key < 0 || m.replica >= SIM_REPLICAS || e.msg.vlen > SIM_VMAX) {
            sim_failed = true;
            continue;
        }
        if (e.msg.vlen)
            memcpy(m.val, e.msg.value, e.msg.vlen);
        m.vlen = e.msg.vlen;
        if (e.kind == KV_COORD_HINT) {
            /* Hinted handoff: delivered once the replica is "back", much later. */
            m.no_ack = true;
            if (sim_pm(s, 100))
                continue;
            m.at = s->t + 200 + sim_below(s, 2000);
            ev_push(s, m);
            continue;
        }
        sim_send(s, m);
    }
}

/* A replica applies a WRITE only if it is newer, and answers with what it holds. */
static void sim_replica(sim *s, const sim_ev *m)
{
    sim_rec *r = &s->rep[m->replica][m->key];
    sim_ev a;
    memset(&a, 0, sizeof(a));
    a.to_coord = true;
    a.coord = m->coord;
    a.replica = m->replica;
    a.req_id = m->req_id;
    a.key = m->key;
    if (m->type == KV_REPL_WRITE) {
        a.type = KV_REPL_WRITE_ACK;
        if (!r->has || kv_version_cmp(&m->ver, &r->ver) > 0) {
            r->has = true;
            r->tomb = (m->flags & KV_REPL_F_TOMBSTONE) != 0;
            r->ver = m->ver;
            memcpy(r->val, m->val, m->vlen);
            r->vlen = m->vlen;
            a.status = KV_REPL_OK;
            a.ver = m->ver;
        } else {
            a.status = KV_REPL_STALE;
            a.ver = r->ver;
        }
    } else {
        a.type = KV_REPL_READ_ACK;
        if (!r->has) {
            a.status = KV_REPL_NOTFOUND;
        } else {
            a.status = KV_REPL_OK;
            a.ver = r->ver;
            a.flags = r->tomb ? KV_REPL_F_TOMBSTONE : 0;
            memcpy(a.val, r->val, r->vlen);
            a.vlen = r->vlen;
        }
    }
    if (!m->no_ack)
        sim_send(s, a);
}

static void sim_deliver(sim *s, const sim_ev *m)
{
    if (!m->to_coord) {
        sim_replica(s, m);
        return;
    }
    static const uint8_t keys[SIM_KEYS][2] = {{'k', '0'}, {'k', '1'}, {'k', '2'}};
    kv_repl_msg a;
    memset(&a, 0, sizeof(a));
    a.type = m->type;
    a.req_id = m->req_id;
    a.status = m->status;
    a.key = keys[m->key];
    a.klen = 2;
    a.ver = m->ver;
    a.flags = m->flags;
    a.value = (const uint8_t *)m->val;
    a.vlen = m->vlen;
    swim_member_id from = sim_id(m->replica);
    kv_coord_on_ack(s->c[m->coord], sim_mono(s, m->coord), sim_wall(s, m->coord), &from, &a);
    sim_drain(s, m->coord);
}

static void sim_start_op(sim *s, int client)
{
    static const uint8_t keys[SIM_KEYS][2] = {{'k', '0'}, {'k', '1'}, {'k', '2'}};
    uint32_t idx = s->nops++;
    sim_op *op = &s->ops[idx];
    memset(op, 0, sizeof(*op));
    op->client = client;
    op->coord = (int)(s->next_coord++ % SIM_COORDS);
    op->key = (int)sim_below(s, SIM_KEYS);
    uint32_t dice = sim_below(s, 100);
    op->kind = dice < 45 ? KV_COORD_PUT : dice < 90 ? KV_COORD_GET : KV_COORD_DELETE;
    op->t_start = s->t;
    if (op->kind == KV_COORD_PUT)
        op->vlen = (size_t)snprintf(op->val, sizeof(op->val), "o%u", idx);

    kv_coord_target tg[SIM_REPLICAS];
    for (int i = 0; i < SIM_REPLICAS; i++) {
        tg[i].id = sim_id(i);
        tg[i].alive = !sim_pm(s, s->p.dead_pm);
        tg[i].self = false;
    }
    kv_coord_req q;
    memset(&q, 0, sizeof(q));
    q.op = op->kind;
    q.key = keys[op->key];
    q.klen = 2;
    q.value = (const uint8_t *)op->val;
    q.vlen = op->vlen;
    q.n = SIM_REPLICAS;
    q.need = sim_pm(s, 800) ? 2 : 3; /* quorum either way: 2 + 2 > 3 */
    q.read_repair = true;
    q.timeout_ms = s->p.timeout_ms;
    q.targets = tg;
    q.n_targets = SIM_REPLICAS;
    q.client = op;
    s->cl[client].busy = true;
    int ci = op->coord;
    if (kv_coord_submit(s->c[ci], sim_mono(s, ci), sim_wall(s, ci), &q) != KV_OK)
        sim_failed = true;
    sim_drain(s, ci);
    if (sim_pm(s, s->p.down_pm)) {
        int who = (int)sim_below(s, SIM_COORDS);
        swim_member_id id = sim_id((int)sim_below(s, SIM_REPLICAS));
        kv_coord_on_member_down(s->c[who], sim_mono(s, who), &id);
        sim_drain(s, who);
    }
}

/* The write a successful read returned: an op index, -1 for "nothing ever written", -2
 * when it cannot be told (a delete whose version no client learnt). */
static int sim_read_source(const sim *s, const sim_op *r)
{
    if (r->status == KV_OK) {
        unsigned idx;
        if (r->rvlen < 2 || r->rval[0] != 'o' || sscanf(r->rval + 1, "%u", &idx) != 1 ||
            idx >= s->nops)
            return -3; /* garbage */
        return (int)idx;
    }
    if (r->ver.ts == 0 && r->ver.node == 0)
        return -1;
    for (uint32_t i = 0; i < s->nops; i++) {
        const sim_op *w = &s->ops[i];
        if (w->kind == KV_COORD_DELETE && w->status == KV_OK && w->key == r->key &&
            kv_version_cmp(&w->ver, &r->ver) == 0)
            return (int)i;
    }
    return -2;
}

static void sim_violation(sim *s, const char *what, uint32_t ri, int wi, uint32_t ai)
{
    s->stale_reads++;
    if (!s->first_violation[0])
        snprintf(s->first_violation, sizeof(s->first_violation),
                 "%s: read op %u returned op %d though op %u was acknowledged before it began",
                 what, ri, wi, ai);
}

/* No read returns a value older than a write acknowledged before the read began. "Older":
 * the returned write (or the initial nothing) was acknowledged before that write started.
 * A write that failed may take effect at any time after it started, so returning it is
 * never stale. */
static void sim_check(sim *s)
{
    for (uint32_t ri = 0; ri < s->nops; ri++) {
        const sim_op *r = &s->ops[ri];
        if (r->kind != KV_COORD_GET || (r->status != KV_OK && r->status != KV_ENOTFOUND))
            continue;
        int wi = sim_read_source(s, r);
        if (wi == -2)
            continue;
        if (wi == -3 || (wi >= 0 && (s->ops[wi].key != r->key || s->ops[wi].t_start > r->t_end))) {
            sim_violation(s, "impossible", ri, wi, 0);
            continue;
        }
        s->reads_checked++;
        const sim_op *w = wi >= 0 ? &s->ops[wi] : NULL;
        for (uint32_t ai = 0; ai < s->nops; ai++) {
            const sim_op *a = &s->ops[ai];
            if ((int)ai == wi || a->kind == KV_COORD_GET || a->key != r->key ||
                a->status != KV_OK || a->t_end >= r->t_start)
                continue;
            if (!w || (w->status == KV_OK && w->t_end < a->t_start)) {
                sim_violation(s, "stale", ri, wi, ai);
                break;
            }
        }
    }
}

/* Run one simulation. The caller frees nothing: sim_run cleans up after itself. */
static void sim_run(sim *s, const sim_params *p, uint64_t seed)
{
    memset(s, 0, sizeof(*s));
    s->p = *p;
    s->rng = seed * 0x2545f4914f6cdd1dull + 1;
    for (int i = 0; i < SIM_COORDS; i++)
        s->c[i] = kv_coord_new((uint32_t)(100 + i));
    s->next_coord = sim_below(s, SIM_COORDS);
    uint32_t started = 0;
    uint32_t steps = 0;
    for (; steps < SIM_STEP_LIMIT; steps++) {
        for (uint32_t k = 0; k < s->p.clients && started < s->p.ops; k++) {
            if (!s->cl[k].busy && s->cl[k].next_start <= s->t) {
                sim_start_op(s, (int)k);
                started++;
            }
        }
        uint64_t next = UINT64_MAX;
        if (s->nev)
            next = s->ev[0].at;
        for (int i = 0; i < SIM_COORDS; i++) {
            uint64_t d = kv_coord_next_deadline(s->c[i]);
            if (d != UINT64_MAX) {
                uint64_t tt = d > sim_mono_off(i) ? d - sim_mono_off(i) : 0;
                next = tt < next ? tt : next;
            }
        }
        for (uint32_t k = 0; k < s->p.clients && started < s->p.ops; k++) {
            if (!s->cl[k].busy && s->cl[k].next_start < next)
                next = s->cl[k].next_start;
        }
        if (next == UINT64_MAX)
            break;
        if (next > s->t)
            s->t = next;
        for (int i = 0; i < SIM_COORDS; i++) {
            if (kv_coord_next_deadline(s->c[i]) <= sim_mono(s, i)) {
                kv_coord_tick(s->c[i], sim_mono(s, i), sim_wall(s, i));
                sim_drain(s, i);
            }
        }
        while (s->nev && s->ev[0].at <= s->t) {
            sim_ev e = ev_pop(s);
            sim_deliver(s, &e);
        }
    }
    s->stuck = steps == SIM_STEP_LIMIT;
    for (int i = 0; i < SIM_COORDS; i++) {
        if (kv_coord_inflight(s->c[i]) != 0)
            s->stuck = true;
        kv_coord_stats st;
        kv_coord_get_stats(s->c[i], &st);
        s->rounds_extra += st.rounds_extra;
        kv_coord_free(s->c[i]);
        s->c[i] = NULL;
    }
    free(s->ev);
    s->ev = NULL;
    if (started != s->p.ops || s->nops != s->p.ops)
        s->stuck = true;
    for (uint32_t i = 0; i < s->nops; i++) {
        const sim_op *op = &s->ops[i];
        if (op->replies != 1)
            s->replies_bad++;
        bool ok = op->status == KV_OK || (op->kind == KV_COORD_GET && op->status == KV_ENOTFOUND);
        if (op->kind == KV_COORD_GET)
            ok ? s->reads_ok++ : s->reads_failed++;
        else
            ok ? s->writes_ok++ : s->writes_failed++;
    }
    sim_check(s);
}

#endif
