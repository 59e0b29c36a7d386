/*
 * sync.c — anti-entropy rounds and range pulls (see sync.h). Loop thread only.
 *
 * Design notes:
 *   Spans. Hash ranges travel as [lo, hi) pairs (store_range's form, wrapping when
 *   lo >= hi) and are worked on as sorted, merged, inclusive spans [a, b] that never wrap,
 *   so "is hash h in the ranges" is one binary search and a tree node's share of the
 *   ranges is a sweep over the spans that meet it.
 *
 *   A round is four steps, each waiting for one answer with a deadline:
 *     TOP     TREE at SYNC_TOP_LEVEL over the shared ranges; compare with our own sums.
 *     LEAVES  TREE for the leaves under the differing top nodes; compare.
 *     HAVE    walk our store (bounded slices) for the item digests in the differing leaves.
 *     PULL    pull those leaves, SYNC_PULL_LEAVES at a time, naming what we have.
 *   Anything unexpected (no answer, an error status, the peer gone) ends the round; the
 *   next one starts over — rounds keep no state between them, so nothing can get stuck.
 *
 *   Serving a pull walks the whole index once (store_range over the whole ring in ~1 ms
 *   slices, filtering by span): the index is a hash table, not ordered by ring hash, so a
 *   range costs a walk whatever its size. Keys found are queued and their values read
 *   when the chunk is assembled, after the slice (a range callback must not touch the
 *   store).
 */
#include "node/sync.h"

#include "ae/merkle.h"
#include "common/buf.h"
#include "common/hash.h"
#include "common/log.h"
#include "kvstore/error.h"
#include "repl/chunk.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SYNC_TOP_LEVEL    10           /* 1024 sums in the first comparison */
#define SYNC_CHUNK_RAW    (512u << 10) /* raw bytes of a chunk, about (plus one record) */
#define SYNC_MAX_SERVE    8            /* pulls served at once; more are refused */
#define SYNC_SERVE_IDLE   60000        /* ms: a served pull not continued by then is dropped */
#define SYNC_ANSWER_MS    5000         /* ms: an awaited answer not here by then ends the round */
#define SYNC_PULL_LEAVES  4096         /* leaves per pull, at most */
#define SYNC_PENDING_KEYS 2048         /* keys queued by one slice of a served pull, at most */

typedef struct sync_span {
    uint64_t a, b; /* inclusive */
} sync_span;

/* ---------- spans ---------- */

static int cmp_span(const void *x, const void *y)
{
    const sync_span *p = x, *q = y;
    return p->a < q->a ? -1 : p->a > q->a;
}

/* Add [lo, hi) (wrapping; lo == hi = all) to sp as one or two inclusive spans. */
static size_t span_add(sync_span *sp, size_t n, uint64_t lo, uint64_t hi)
{
    if (lo == hi) {
        sp[n++] = (sync_span){0, UINT64_MAX};
    } else if (lo < hi) {
        sp[n++] = (sync_span){lo, hi - 1};
    } else {
        sp[n++] = (sync_span){lo, UINT64_MAX};
        if (hi > 0)
            sp[n++] = (sync_span){0, hi - 1};
    }
    return n;
}

/* Sort and merge touching or overlapping spans in place; the new count. */
static size_t span_norm(sync_span *sp, size_t n)
{
    if (n == 0)
        return 0;
    qsort(sp, n, sizeof(*sp), cmp_span);
    size_t k = 0;
    for (size_t i = 1; i < n; i++) {
        if (sp[k].b == UINT64_MAX || sp[i].a <= sp[k].b + 1) {
            if (sp[i].b > sp[k].b)
                sp[k].b = sp[i].b;
        } else {
            sp[++k] = sp[i];
        }
    }
    return k + 1;
}

/* Spans of packed [lo, hi) pairs (from a message). NULL with *n 0 when pairs is empty;
 * NULL with *n SIZE_MAX when out of memory. */
static sync_span *spans_of_pairs(const uint8_t *pairs, size_t n_pairs, size_t *n)
{
    *n = 0;
    if (n_pairs == 0)
        return NULL;
    sync_span *sp = malloc(2 * n_pairs * sizeof(*sp));
    if (!sp) {
        *n = SIZE_MAX;
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n_pairs; i++)
        k = span_add(sp, k, kv_repl_u64_at(pairs, 2 * i), kv_repl_u64_at(pairs, 2 * i + 1));
    *n = span_norm(sp, k);
    return sp;
}

/* The spans as packed [lo, hi) pairs for a message (malloc'ed; NULL when out of memory). */
static uint8_t *pairs_of_spans(const sync_span *sp, size_t n)
{
    uint8_t *p = malloc(n ? 16 * n : 1);
    if (!p)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        kv_repl_u64_put(p, 2 * i, sp[i].a);
        kv_repl_u64_put(p, 2 * i + 1, sp[i].b + 1); /* b = max wraps to 0: [a, 2^64) */
    }
    return p;
}

static bool spans_contain(const sync_span *sp, size_t n, uint64_t h)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sp[mid].b < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && sp[lo].a <= h;
}

/* Sum of tree node [nlo, nhi]'s leaves inside the spans. The spans are whole leaves (ring
 * alignment), so kv_merkle_range_digest has no edges to report here. */
static uint64_t node_sum(const kv_merkle *t, const sync_span *sp, size_t n, uint64_t nlo,
                         uint64_t nhi)
{
    size_t i = 0, hi = n;
    while (i < hi) { /* first span ending at or after nlo */
        size_t mid = i + (hi - i) / 2;
        if (sp[mid].b < nlo)
            i = mid + 1;
        else
            hi = mid;
    }
    uint64_t sum = 0;
    for (; i < n && sp[i].a <= nhi; i++) {
        uint64_t a = sp[i].a > nlo ? sp[i].a : nlo;
        uint64_t b = sp[i].b < nhi ? sp[i].b : nhi;
        uint64_t edge[2];
        unsigned n_edge = 0;
        sum += kv_merkle_range_digest(t, a, b + 1, edge, &n_edge); /* b + 1 may wrap to 0 */
    }
    return sum;
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

static bool u64_find(const uint64_t *v, size_t n, uint64_t x)
{
    return n && bsearch(&x, v, n, sizeof(*v), cmp_u64) != NULL;
}

/* ---------- state ---------- */

/* A pull this node serves. */
typedef struct sync_serve {
    struct sync_serve *next;
    char to[SWIM_ADDR_MAX + 1];
    uint64_t req_id;
    sync_span *spans;
    size_t n_spans;
    uint64_t *have; /* sorted */
    size_t n_have;
    store_cursor cur;
    kv_buf pending; /* queued keys: u16 klen | key | u64 expiry */
    size_t pending_off, pending_n;
    kv_buf raw; /* the chunk being assembled */
    uint32_t seq;
    bool want; /* chunk seq was asked for */
    uint64_t active_ms;
} sync_serve;

/* A pull this node makes (kv_sync_pull in sync.h). */
struct kv_sync_pull {
    struct kv_sync_pull *next;
    kv_sync *s;
    uint64_t req_id;
    char from[SWIM_ADDR_MAX + 1];
    uint32_t seq;
    int applying;      /* store_apply callbacks outstanding for the current chunk */
    bool last;         /* the current chunk is the final one */
    bool dead;         /* finished or cancelled: free once applying reaches 0 */
    uint64_t deadline; /* ms: the answer to the last PULL is due by then */
    uint64_t raw, records;
    kv_sync_pull_cb cb;
    void *arg;
};
typedef struct kv_sync_pull sync_pull;

/* A hand-over a leaving member asked of us (STREAM): pull its ranges from it, then say
 * so (STREAM_DONE). Kept a while after it ended, so that a repeated request is answered
 * rather than pulled again. */
typedef struct sync_job {
    struct sync_job *next;
    kv_sync *s;
    char from[SWIM_ADDR_MAX + 1];
    uint64_t req_id;
    kv_sync_pull *pull; /* NULL once ended */
    int status;
    uint64_t ended_ms;
} sync_job;

#define SYNC_JOB_KEEP_MS 60000

/* Re-replication after a member was removed: copy the ranges we gained from one of the
 * replicas that remain (one per source), retried a few times. */
typedef struct sync_rerep {
    struct sync_rerep *next;
    kv_sync *s;
    swim_member_id src;
    uint8_t *pairs;
    size_t n_pairs;
    int attempts;
    uint64_t retry_at;
    kv_sync_pull *pull;
} sync_rerep;

#define SYNC_REREP_TRIES    10
#define SYNC_REREP_RETRY_MS 2000

typedef enum ae_step { AE_IDLE, AE_TOP, AE_LEAVES, AE_HAVE, AE_PULL } ae_step;

typedef struct ae_have {
    uint64_t leaf, digest;
} ae_have;

/* What a peer was last seen to hold, per tree leaf: our own leaf sum at the moment the
 * peer's sum for that leaf (over ranges we share) equalled it; 0 = never seen equal. While
 * our leaf still has that sum, the peer holds every item we hold there — tombstones
 * included. That is the confirmation tombstone purging needs (see gc_*). */
typedef struct sync_conf {
    struct sync_conf *next;
    swim_member_id peer;
    uint64_t *sums; /* 2^depth */
} sync_conf;

struct kv_sync {
    uv_loop_t *loop;
    const kv_config *cfg;
    kv_store *store;
    kv_metrics *metrics;
    swim_member_id self;
    kv_sync_env env;

    uv_timer_t round_timer; /* the schedule, then each step's answer deadline */
    uv_idle_t pump;         /* served pulls and our HAVE walk, a slice per loop turn */
    uv_timer_t rate_timer;  /* waiting for the token bucket */
    bool pump_on, rate_wait;

    /* the round in progress */
    ae_step step;
    swim_member_id peer;
    char peer_addr[SWIM_ADDR_MAX + 1];
    size_t next_member; /* round robin over ring members */
    uint64_t req_id, next_id;
    sync_span *spans;
    size_t n_spans;
    uint8_t *pairs; /* spans as packed pairs */
    uint64_t *leaves;
    size_t n_leaves, next_leaf;
    ae_have *have;
    size_t n_have, cap_have;
    store_cursor have_cur;
    sync_pull *ae_pull; /* the round's pull, in pulls too */
    uint64_t round_started, round_applied;
    sync_pull *pulls;      /* every pull in progress */
    sync_job *jobs;        /* hand-overs asked of us */
    sync_rerep *reps;      /* re-replication after a removal */
    uv_timer_t pull_timer; /* their answer deadlines */

    sync_conf *confs;
    /* the tombstone purge walk */
    bool gc_on, gc_oom;
    store_cursor gc_cur;
    kv_buf gc_keys; /* candidates of one slice: u16 klen | key | u64 ts | u32 node */
    uint64_t gc_last;

    sync_serve *serves;
    size_t n_serves;
    double tokens; /* bytes the rate limit allows now */
    uint64_t tokens_ms;

    kv_buf scratch, packed;
    bool closing, have_oom;
    int dead_pulls; /* abandoned pulls waiting for their store callbacks */
    int pending;    /* at close: handles and dead pulls still to finish */
    void (*close_cb)(void *);
    void *close_arg;

    struct {
        uint64_t rounds_in_sync, rounds_repaired, rounds_failed, leaves_differing;
        uint64_t applied, stale, apply_errors, bad_chunks, bytes_in, raw_in;
        uint64_t bytes_out, raw_out, chunks_out, serves_started, serves_refused, serves_dropped;
        uint64_t purged, purge_sent, purge_recv, gc_walks, handovers, rereps_done, rereps_failed;
    } st;
};

static uint64_t now_ms(kv_sync *s)
{
    return uv_now(s->loop);
}

static uint64_t new_id(kv_sync *s)
{
    return KV_REPL_REQ_SYNC | (++s->next_id & ~KV_REPL_REQ_MASK);
}

static void pump_start(kv_sync *s);

/* ---------- serving TREE ---------- */

static void serve_tree(kv_sync *s, const char *from, const kv_repl_msg *m)
{
    kv_repl_msg ack = {.type = KV_REPL_TREE_ACK, .req_id = m->req_id, .status = KV_REPL_ERROR};
    const kv_merkle *t = store_merkle(s->store);
    size_t n_sp = 0;
    sync_span *sp = spans_of_pairs(m->ranges, m->n_ranges, &n_sp);
    size_t n = m->n_u64s ? m->n_u64s : (size_t)1 << m->level;
    uint8_t *sums = NULL;
    if (t && m->level <= kv_merkle_depth(t) && n_sp != SIZE_MAX && n <= KV_REPL_U64S_MAX &&
        (sums = malloc(n * 8 + 1)) != NULL) {
        for (size_t i = 0; i < n; i++) {
            uint64_t idx = m->n_u64s ? kv_repl_u64_at(m->u64s, i) : i, lo, hi;
            kv_merkle_node(t, m->level, idx, &lo, &hi);
            kv_repl_u64_put(sums, i, lo > hi ? 0 : node_sum(t, sp, n_sp, lo, hi));
        }
        ack.status = KV_REPL_OK;
        ack.u64s = sums;
        ack.n_u64s = n;
    }
    s->env.send(s->env.arg, from, &ack);
    free(sums);
    free(sp);
}

/* ---------- serving PULL ---------- */

static void serve_free(kv_sync *s, sync_serve *v)
{
    for (sync_serve **pp = &s->serves; *pp; pp = &(*pp)->next)
        if (*pp == v) {
            *pp = v->next;
            break;
        }
    s->n_serves--;
    free(v->spans);
    free(v->have);
    kv_buf_free(&v->pending);
    kv_buf_free(&v->raw);
    free(v);
}

static sync_serve *serve_find(kv_sync *s, const char *to, uint64_t req_id)
{
    for (sync_serve *v = s->serves; v; v = v->next)
        if (v->req_id == req_id && strcmp(v->to, to) == 0)
            return v;
    return NULL;
}

static void send_pull_error(kv_sync *s, const char *to, uint64_t req_id, uint32_t seq)
{
    kv_repl_msg d = {
        .type = KV_REPL_PULL_DATA, .req_id = req_id, .status = KV_REPL_ERROR, .seq = seq};
    s->env.send(s->env.arg, to, &d);
}

/* Drop served pulls their puller stopped continuing (it restarted, or gave up). */
static void serve_sweep(kv_sync *s)
{
    uint64_t now = now_ms(s);
    for (sync_serve *v = s->serves, *next; v; v = next) {
        next = v->next;
        if (!v->want && now - v->active_ms > SYNC_SERVE_IDLE) {
            s->st.serves_dropped++;
            serve_free(s, v);
        }
    }
}

static void serve_pull(kv_sync *s, const char *from, const kv_repl_msg *m)
{
    serve_sweep(s);
    sync_serve *v = serve_find(s, from, m->req_id);
    if (m->seq == 0) {
        if (v) /* the puller started over under the same id */
            serve_free(s, v);
        if (s->n_serves >= SYNC_MAX_SERVE) {
            s->st.serves_refused++;
            send_pull_error(s, from, m->req_id, 0);
            return;
        }
        v = calloc(1, sizeof(*v));
        if (!v) {
            send_pull_error(s, from, m->req_id, 0);
            return;
        }
        snprintf(v->to, sizeof(v->to), "%s", from);
        v->req_id = m->req_id;
        v->spans = spans_of_pairs(m->ranges, m->n_ranges, &v->n_spans);
        if (m->n_u64s && (v->have = malloc(m->n_u64s * sizeof(uint64_t))) != NULL) {
            for (size_t i = 0; i < m->n_u64s; i++)
                v->have[i] = kv_repl_u64_at(m->u64s, i);
            qsort(v->have, m->n_u64s, sizeof(uint64_t), cmp_u64);
            v->n_have = m->n_u64s;
        }
        if (v->n_spans == SIZE_MAX || (m->n_u64s && !v->have)) {
            free(v->spans);
            free(v);
            send_pull_error(s, from, m->req_id, 0);
            return;
        }
        v->next = s->serves;
        s->serves = v;
        s->n_serves++;
        s->st.serves_started++;
    } else if (!v || v->seq != m->seq || v->want) {
        send_pull_error(s, from, m->req_id, m->seq);
        return;
    }
    v->want = true;
    v->active_ms = now_ms(s);
    pump_start(s);
}

typedef struct visit_ctx {
    kv_sync *s;
    sync_serve *v;
} visit_ctx;

static bool serve_visit(void *arg, const kv_store_item *it)
{
    visit_ctx *c = arg;
    sync_serve *v = c->v;
    if (it->expired && !it->tombstone)
        return true; /* never push a value whose TTL has passed */
    if (!spans_contain(v->spans, v->n_spans, it->hash))
        return true;
    if (v->n_have && u64_find(v->have, v->n_have,
                              kv_merkle_item_digest(it->key, it->klen, &it->ver, it->tombstone)))
        return true;
    uint8_t hdr[2 + 8];
    hdr[0] = (uint8_t)(it->klen >> 8);
    hdr[1] = (uint8_t)it->klen;
    kv_repl_u64_put(hdr + 2, 0, it->expiry_ms);
    if (kv_buf_append(&v->pending, hdr, 2) != KV_OK ||
        kv_buf_append(&v->pending, it->key, it->klen) != KV_OK ||
        kv_buf_append(&v->pending, hdr + 2, 8) != KV_OK)
        return false;
    return ++v->pending_n < SYNC_PENDING_KEYS;
}

/* Move queued keys into the chunk until it is full: the current value or tombstone of
 * each (a key deleted or overwritten since it was queued goes in its current state). */
static void serve_fill(kv_sync *s, sync_serve *v)
{
    while (v->pending_off < v->pending.len && v->raw.len < SYNC_CHUNK_RAW) {
        const uint8_t *p = (const uint8_t *)v->pending.data + v->pending_off;
        size_t klen = (size_t)p[0] << 8 | p[1];
        const uint8_t *key = p + 2;
        uint64_t expiry = kv_repl_u64_at(key + klen, 0);
        v->pending_off += 2 + klen + 8;
        v->pending_n--;
        kv_store_meta meta;
        if (store_get_meta(s->store, key, klen, &meta) != KV_OK)
            continue; /* purged or dropped since */
        kv_chunk_rec rec = {.key = key, .klen = klen, .ver = meta.ver};
        if (meta.tombstone) {
            rec.tombstone = true;
        } else {
            kv_version ver;
            if (store_get(s->store, key, klen, &s->scratch, &ver) != KV_OK ||
                kv_version_cmp(&ver, &meta.ver) != 0)
                continue; /* expired, unreadable, or changed in between: skip it */
            rec.value = (const uint8_t *)s->scratch.data;
            rec.vlen = s->scratch.len;
            rec.expiry_ms = expiry;
        }
        if (kv_chunk_add(&v->raw, &rec) != KV_OK)
            s->st.apply_errors++; /* cannot happen for stored records; counted */
    }
    if (v->pending_off >= v->pending.len) {
        kv_buf_reset(&v->pending);
        v->pending_off = 0;
    }
}

/* Refill the token bucket; true when a chunk may go out now. */
static bool rate_ok(kv_sync *s)
{
    uint64_t rate = s->cfg->streaming_rate;
    if (rate == 0)
        return true;
    uint64_t now = now_ms(s);
    s->tokens += (double)(now - s->tokens_ms) * (double)rate / 1000.0;
    s->tokens_ms = now;
    double cap = (double)rate > (double)SYNC_CHUNK_RAW ? (double)rate : (double)SYNC_CHUNK_RAW;
    if (s->tokens > cap)
        s->tokens = cap;
    return s->tokens >= 0;
}

static void serve_send(kv_sync *s, sync_serve *v, bool last)
{
    kv_repl_msg d = {.type = KV_REPL_PULL_DATA,
                     .req_id = v->req_id,
                     .status = KV_REPL_OK,
                     .seq = v->seq,
                     .last = last,
                     .raw_len = (uint32_t)v->raw.len};
    if (v->raw.len) {
        if (kv_chunk_pack((const uint8_t *)v->raw.data, v->raw.len, &s->packed) != KV_OK) {
            send_pull_error(s, v->to, v->req_id, v->seq);
            serve_free(s, v);
            return;
        }
        d.value = (const uint8_t *)s->packed.data;
        d.vlen = s->packed.len;
    }
    if (s->env.send(s->env.arg, v->to, &d) == KV_OK) {
        s->st.chunks_out++;
        s->st.bytes_out += d.vlen;
        s->st.raw_out += d.raw_len;
    }
    /* Charged by the records' raw bytes, not the compressed ones: reading, packing and the
     * puller's writes cost by what the records hold, and values that compress well would
     * otherwise stream unthrottled. */
    s->tokens -= (double)(d.raw_len ? d.raw_len : d.vlen);
    kv_buf_reset(&v->raw);
    v->want = false;
    v->seq++;
    v->active_ms = now_ms(s);
    if (last)
        serve_free(s, v);
}

/* One slice of work for a served pull that waits for its next chunk. */
static void serve_step(kv_sync *s, sync_serve *v)
{
    if (!v->cur.done && v->pending_n < SYNC_PENDING_KEYS) {
        visit_ctx c = {s, v};
        if (store_range(s->store, 0, 0, &v->cur, 0, serve_visit, &c) != KV_OK) {
            send_pull_error(s, v->to, v->req_id, v->seq);
            serve_free(s, v);
            return;
        }
    }
    serve_fill(s, v);
    bool last = v->cur.done && v->pending_n == 0;
    if (v->raw.len >= SYNC_CHUNK_RAW || last)
        serve_send(s, v, last);
}

/* ---------- our own pulls ---------- */

static void round_end(kv_sync *s, bool ok);
static void round_next_pull(kv_sync *s);
static void on_ae_pull_done(void *arg, int status, uint64_t raw, uint64_t records);
static void await(kv_sync *s);

/* Send a request of the round and wait for its answer; a send refused ends the round. */
static void send_await(kv_sync *s, const char *to, const kv_repl_msg *m)
{
    if (s->env.send(s->env.arg, to, m) != KV_OK)
        round_end(s, false);
    else
        await(s);
}

static uint64_t answer_ms(kv_sync *s);

static void pull_free(sync_pull *p)
{
    free(p);
}

/* The pull is over: off the list, its callback told (last, so it may start another).
 * Store callbacks still outstanding keep the memory until they are back. */
static void pull_finish(sync_pull *p, int status, bool notify)
{
    kv_sync *s = p->s;
    for (sync_pull **pp = &s->pulls; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    kv_sync_pull_cb cb = notify ? p->cb : NULL;
    void *arg = p->arg;
    uint64_t raw = p->raw, records = p->records;
    if (p->applying) {
        p->dead = true;
        s->dead_pulls++;
    } else {
        pull_free(p);
    }
    if (cb)
        cb(arg, status, raw, records);
}

/* Ask for chunk p->seq. KV_OK, or the send's error (the caller ends the pull). */
static int pull_ask(kv_sync *s, sync_pull *p, const uint8_t *pairs, size_t n_pairs,
                    const uint8_t *have, size_t n_have)
{
    kv_repl_msg m = {.type = KV_REPL_PULL,
                     .req_id = p->req_id,
                     .seq = p->seq,
                     .ranges = pairs,
                     .n_ranges = n_pairs,
                     .u64s = have,
                     .n_u64s = n_have};
    p->deadline = now_ms(s) + answer_ms(s);
    return s->env.send(s->env.arg, p->from, &m);
}

static sync_pull *pull_start(kv_sync *s, const char *addr, const uint8_t *pairs, size_t n_pairs,
                             const uint8_t *have, size_t n_have, kv_sync_pull_cb cb, void *arg)
{
    sync_pull *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->s = s;
    p->req_id = new_id(s);
    snprintf(p->from, sizeof(p->from), "%s", addr);
    p->cb = cb;
    p->arg = arg;
    if (pull_ask(s, p, pairs, n_pairs, have, n_have) != KV_OK) {
        free(p);
        return NULL;
    }
    p->next = s->pulls;
    s->pulls = p;
    return p;
}

kv_sync_pull *kv_sync_pull_start(kv_sync *s, const char *addr, const uint8_t *pairs, size_t n_pairs,
                                 kv_sync_pull_cb cb, void *arg)
{
    if (s->closing || !addr)
        return NULL;
    return pull_start(s, addr, pairs, n_pairs, NULL, 0, cb, arg);
}

void kv_sync_pull_cancel(kv_sync_pull *p)
{
    if (p)
        pull_finish(p, KV_ECLOSED, false);
}

static void rerep_try(kv_sync *s, struct sync_rerep *r);

static void on_pull_timer(uv_timer_t *t)
{
    kv_sync *s = t->data;
    uint64_t now = now_ms(s);
    for (sync_rerep *r = s->reps, *next; r; r = next) {
        next = r->next;
        if (!r->pull && r->attempts && now >= r->retry_at)
            rerep_try(s, r);
    }
    for (sync_pull *p = s->pulls, *next; p; p = next) {
        next = p->next;
        if (!p->applying && now > p->deadline)
            pull_finish(p, KV_ETIMEDOUT, true);
    }
}

/* One more thing finished after kv_sync_close; the last one frees s and reports. */
static void close_step(kv_sync *s)
{
    if (--s->pending > 0)
        return;
    void (*cb)(void *) = s->close_cb;
    void *arg = s->close_arg;
    kv_buf_free(&s->scratch);
    kv_buf_free(&s->packed);
    kv_buf_free(&s->gc_keys);
    while (s->confs) {
        sync_conf *c = s->confs;
        s->confs = c->next;
        free(c->sums);
        free(c);
    }
    free(s);
    if (cb)
        cb(arg);
}

/* One store_apply of the current chunk is over (or the hold taken while handing them out
 * is dropped): when none is left, the chunk is applied — ask for the next, or finish. */
static void pull_release(sync_pull *p)
{
    kv_sync *s = p->s;
    if (--p->applying > 0)
        return;
    if (p->dead) {
        pull_free(p);
        s->dead_pulls--;
        if (s->closing)
            close_step(s);
        return;
    }
    if (p->last) {
        pull_finish(p, KV_OK, true);
        return;
    }
    p->seq++;
    if (pull_ask(s, p, NULL, 0, NULL, 0) != KV_OK)
        pull_finish(p, KV_EUNAVAIL, true);
}

static void on_pull_apply(void *arg, int status, const kv_version *ver)
{
    (void)ver;
    sync_pull *p = arg;
    kv_sync *s = p->s;
    if (status == KV_OK) {
        s->st.applied++;
        if (p == s->ae_pull)
            s->round_applied++;
    } else if (status == KV_ESTALE) {
        s->st.stale++;
    } else {
        s->st.apply_errors++;
    }
    pull_release(p);
}

static void on_pull_data(kv_sync *s, const char *from, const kv_repl_msg *m)
{
    sync_pull *p = s->pulls;
    while (p && (p->req_id != m->req_id || strcmp(p->from, from) != 0))
        p = p->next;
    if (!p || m->seq != p->seq || p->applying)
        return; /* late or foreign: ignore */
    if (m->status != KV_REPL_OK) {
        pull_finish(p, KV_EUNAVAIL, true);
        return;
    }
    s->st.bytes_in += m->vlen;
    s->st.raw_in += m->raw_len;
    size_t count = 0;
    const char *why = NULL;
    if (m->raw_len) {
        int rc = kv_chunk_unpack(m->raw_len, m->value, m->vlen, &s->scratch, &count, &why);
        if (rc != KV_OK) {
            s->st.bad_chunks++;
            kv_log_warn("pulled chunk refused", KV_STR("peer", from),
                        KV_STR("reason", why ? why : kv_strerror(rc)));
            pull_finish(p, KV_ECORRUPT, true);
            return;
        }
    }
    p->raw += m->raw_len;
    p->records += count;
    p->last = m->last;
    p->applying = 1; /* held while the records are handed to the store */
    size_t off = 0;
    kv_chunk_rec rec;
    while (kv_chunk_next((const uint8_t *)s->scratch.data, m->raw_len, &off, &rec)) {
        int rc = store_apply(s->store, rec.key, rec.klen, rec.value, rec.vlen, rec.expiry_ms,
                             &rec.ver, rec.tombstone, on_pull_apply, p);
        if (rc == KV_OK)
            p->applying++;
        else
            s->st.apply_errors++;
    }
    pull_release(p); /* drop the hold */
}

/* ---------- confirmations and the tombstone purge ---------- */

static sync_conf *conf_get(kv_sync *s, const swim_member_id *peer, bool create)
{
    for (sync_conf *c = s->confs; c; c = c->next)
        if (swim_id_equal(&c->peer, peer))
            return c;
    if (!create)
        return NULL;
    sync_conf *c = calloc(1, sizeof(*c));
    size_t leaves = (size_t)1 << kv_merkle_depth(store_merkle(s->store));
    if (!c || !(c->sums = calloc(leaves, sizeof(uint64_t)))) {
        free(c);
        return NULL;
    }
    c->peer = *peer;
    c->next = s->confs;
    s->confs = c;
    return c;
}

static uint64_t leaf_sum(kv_sync *s, uint64_t leaf)
{
    const kv_merkle *t = store_merkle(s->store);
    return kv_merkle_node(t, kv_merkle_depth(t), leaf, NULL, NULL);
}

/* The round's peer held what we hold in leaf (a leaf of the shared ranges, found equal). */
static void confirm_leaf(kv_sync *s, sync_conf *c, uint64_t leaf)
{
    uint64_t lo, hi;
    kv_merkle_leaf_range(store_merkle(s->store), leaf, &lo, &hi);
    if (c && lo <= hi && spans_contain(s->spans, s->n_spans, lo))
        c->sums[leaf] = leaf_sum(s, leaf);
}

static uint64_t wall_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* True when every other member of the key's preference list was seen holding exactly what
 * we hold in its leaf, and our leaf has not changed since (DESIGN §8: a tombstone goes
 * only once every replica has it). Members dead or never compared: false. */
static bool gc_confirmed(kv_sync *s, const kv_ring *r, uint64_t hash, uint32_t *idx, size_t n)
{
    const kv_merkle *t = store_merkle(s->store);
    uint64_t leaf = kv_merkle_leaf_of(t, hash), mine = leaf_sum(s, leaf);
    size_t got = kv_ring_walk(r, hash, n, idx);
    for (size_t i = 0; i < got; i++) {
        const kv_ring_member *m = kv_ring_member_at(r, idx[i]);
        if (swim_id_equal(&m->id, &s->self))
            continue;
        const sync_conf *c = conf_get(s, &m->id, false);
        if (!c || c->sums[leaf] != mine)
            return false;
    }
    return true;
}

static bool gc_visit(void *arg, const kv_store_item *it)
{
    kv_sync *s = arg;
    if (!it->tombstone)
        return true;
    uint64_t wall = it->ver.ts >> KV_HLC_LOGICAL_BITS, now = wall_now_ms();
    if (wall > now || now - wall < s->cfg->antientropy_gc_grace_ms)
        return true;
    uint8_t rec[2 + 12];
    rec[0] = (uint8_t)(it->klen >> 8);
    rec[1] = (uint8_t)it->klen;
    kv_repl_u64_put(rec + 2, 0, it->ver.ts);
    rec[10] = (uint8_t)(it->ver.node >> 24);
    rec[11] = (uint8_t)(it->ver.node >> 16);
    rec[12] = (uint8_t)(it->ver.node >> 8);
    rec[13] = (uint8_t)it->ver.node;
    if (kv_buf_append(&s->gc_keys, rec, 2) != KV_OK ||
        kv_buf_append(&s->gc_keys, it->key, it->klen) != KV_OK ||
        kv_buf_append(&s->gc_keys, rec + 2, 12) != KV_OK) {
        s->gc_oom = true;
        return false;
    }
    return s->gc_keys.len < (64u << 10);
}

/* Purge the confirmed candidates of one slice and tell the key's other replicas, which
 * may then purge theirs: we saw each of them hold this very tombstone. */
static void gc_purge(kv_sync *s)
{
    const kv_ring *r = s->env.ring(s->env.arg);
    size_t members = r ? kv_ring_member_count(r) : 0;
    size_t n = (size_t)s->cfg->replication_n < members ? (size_t)s->cfg->replication_n : members;
    uint32_t idx[32]; /* replication.n is at most 32 */
    if (n > 32)
        n = 32;
    for (size_t off = 0; r && n && off < s->gc_keys.len;) {
        const uint8_t *p = (const uint8_t *)s->gc_keys.data + off;
        size_t klen = (size_t)p[0] << 8 | p[1];
        const uint8_t *key = p + 2, *v = key + klen;
        kv_version ver = {.ts = kv_repl_u64_at(v, 0),
                          .node = (uint32_t)v[8] << 24 | (uint32_t)v[9] << 16 |
                                  (uint32_t)v[10] << 8 | v[11]};
        off += 2 + klen + 12;
        uint64_t hash = kv_ring_hash(key, klen);
        if (!gc_confirmed(s, r, hash, idx, n) || store_purge(s->store, key, klen, &ver) != KV_OK)
            continue;
        s->st.purged++;
        size_t got = kv_ring_walk(r, hash, n, idx);
        for (size_t i = 0; i < got; i++) {
            const kv_ring_member *m = kv_ring_member_at(r, idx[i]);
            const char *addr =
                swim_id_equal(&m->id, &s->self) ? NULL : s->env.addr_of(s->env.arg, &m->id);
            kv_repl_msg pm = {.type = KV_REPL_PURGE, .key = key, .klen = klen, .ver = ver};
            if (addr && s->env.send(s->env.arg, addr, &pm) == KV_OK)
                s->st.purge_sent++;
        }
    }
    kv_buf_reset(&s->gc_keys);
}

/* One slice of the purge walk. */
static void gc_step(kv_sync *s)
{
    s->gc_oom = false;
    if (store_range(s->store, 0, 0, &s->gc_cur, 0, gc_visit, s) != KV_OK)
        s->gc_cur.done = true;
    gc_purge(s);
    if (s->gc_cur.done) {
        s->gc_on = false;
        s->gc_last = now_ms(s);
        s->st.gc_walks++;
    }
}

/* Start a purge walk when the last one is at least an interval (and a second) old. */
static void gc_maybe_start(kv_sync *s)
{
    uint64_t every =
        s->cfg->antientropy_interval_ms > 1000 ? s->cfg->antientropy_interval_ms : 1000;
    if (s->gc_on || s->closing || (s->gc_last && now_ms(s) - s->gc_last < every))
        return;
    memset(&s->gc_cur, 0, sizeof(s->gc_cur));
    s->gc_on = true;
    pump_start(s);
}

static void on_purge(kv_sync *s, const kv_repl_msg *m)
{
    if (store_purge(s->store, m->key, m->klen, &m->ver) == KV_OK)
        s->st.purge_recv++;
}

/* ---------- the round ---------- */

static void on_round_timer(uv_timer_t *t);

#define AE_ROUNDS_HELP                                                                             \
    "Anti-entropy rounds, by result: in_sync, differed (leaves differed: records pulled), failed."

static void round_reset(kv_sync *s)
{
    free(s->spans);
    free(s->pairs);
    free(s->leaves);
    free(s->have);
    s->spans = NULL;
    s->pairs = NULL;
    s->leaves = NULL;
    s->have = NULL;
    s->n_spans = s->n_leaves = s->next_leaf = s->n_have = s->cap_have = 0;
    if (s->ae_pull) {
        kv_sync_pull_cancel(s->ae_pull);
        s->ae_pull = NULL;
    }
    s->step = AE_IDLE;
}

static void schedule(kv_sync *s)
{
    if (s->closing || s->cfg->antientropy_interval_ms == 0)
        return;
    uv_timer_start(&s->round_timer, on_round_timer, s->cfg->antientropy_interval_ms, 0);
}

static void round_end(kv_sync *s, bool ok)
{
    if (s->step == AE_IDLE)
        return;
    kv_metrics_count(s->metrics, "kv_ae_rounds_total", AE_ROUNDS_HELP, "result",
                     !ok           ? "failed"
                     : s->n_leaves ? "differed"
                                   : "in_sync",
                     1);
    if (!ok) {
        s->st.rounds_failed++;
        kv_log_debug("anti-entropy round failed", KV_STR("peer", s->peer_addr),
                     KV_INT("step", s->step));
    } else if (s->n_leaves == 0) {
        s->st.rounds_in_sync++;
    } else {
        s->st.rounds_repaired++;
        kv_log_info("anti-entropy round", KV_STR("peer", s->peer_addr),
                    KV_UINT("leaves_differing", s->n_leaves),
                    KV_UINT("records_applied", s->round_applied),
                    KV_UINT("ms", now_ms(s) - s->round_started));
    }
    round_reset(s);
    schedule(s);
    if (ok)
        gc_maybe_start(s);
}

/* Wait for the step's answer: SYNC_ANSWER_MS, plus what the peer's rate limit may make a
 * chunk wait behind the other pulls it serves. A peer that restarted never answers; the
 * round then ends and the next one starts afresh. */
static uint64_t answer_ms(kv_sync *s)
{
    uint64_t ms = SYNC_ANSWER_MS, rate = s->cfg->streaming_rate;
    if (rate)
        ms += (uint64_t)SYNC_MAX_SERVE * SYNC_CHUNK_RAW * 1000 / rate;
    return ms;
}

static void await(kv_sync *s)
{
    uv_timer_start(&s->round_timer, on_round_timer, answer_ms(s), 0);
}

/* The ranges both we and member `peer` replicate, as spans. KV_OK (maybe none). */
static int shared_spans(kv_sync *s, const kv_ring *r, long peer, long self)
{
    size_t nr = kv_ring_range_count(r), members = kv_ring_member_count(r);
    size_t n = (size_t)s->cfg->replication_n < members ? (size_t)s->cfg->replication_n : members;
    sync_span *sp = malloc((2 * nr + 1) * sizeof(*sp));
    uint32_t *idx = malloc(n * sizeof(*idx) + 1);
    if (!sp || !idx) {
        free(sp);
        free(idx);
        return KV_ENOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < nr; i++) {
        uint64_t lo, hi;
        kv_ring_range_at(r, i, &lo, &hi);
        if (lo == hi && nr > 1)
            continue; /* colliding tokens: an empty range */
        size_t got = kv_ring_walk(r, lo, n, idx);
        bool has_self = false, has_peer = false;
        for (size_t j = 0; j < got; j++) {
            has_self |= idx[j] == (uint32_t)self;
            has_peer |= idx[j] == (uint32_t)peer;
        }
        if (has_self && has_peer)
            k = span_add(sp, k, lo, hi);
    }
    free(idx);
    s->spans = sp;
    s->n_spans = span_norm(sp, k);
    return KV_OK;
}

static void send_tree(kv_sync *s, unsigned level, const uint8_t *nodes, size_t n_nodes)
{
    s->req_id = new_id(s);
    kv_repl_msg m = {.type = KV_REPL_TREE,
                     .req_id = s->req_id,
                     .level = level,
                     .ranges = s->pairs,
                     .n_ranges = s->n_spans,
                     .u64s = nodes,
                     .n_u64s = n_nodes};
    send_await(s, s->peer_addr, &m);
}

/* Pick the next live member we share ranges with and ask for its top sums. */
static void round_start(kv_sync *s)
{
    const kv_ring *r = s->env.ring(s->env.arg);
    if (!r || !store_merkle(s->store) || kv_ring_member_count(r) < 2) {
        schedule(s);
        return;
    }
    long self = kv_ring_find(r, &s->self);
    size_t members = kv_ring_member_count(r);
    if (self < 0) {
        schedule(s);
        return;
    }
    for (size_t tries = 0; tries < members; tries++) {
        size_t i = s->next_member++ % members;
        const kv_ring_member *m = kv_ring_member_at(r, i);
        if ((long)i == self || !s->env.alive(s->env.arg, &m->id))
            continue;
        const char *addr = s->env.addr_of(s->env.arg, &m->id);
        if (!addr)
            continue;
        if (shared_spans(s, r, (long)i, self) != KV_OK)
            break;
        if (s->n_spans == 0) {
            free(s->spans);
            s->spans = NULL;
            continue;
        }
        s->pairs = pairs_of_spans(s->spans, s->n_spans);
        if (!s->pairs)
            break;
        s->peer = m->id;
        snprintf(s->peer_addr, sizeof(s->peer_addr), "%s", addr);
        s->step = AE_TOP;
        s->round_started = now_ms(s);
        s->round_applied = 0;
        send_tree(s, SYNC_TOP_LEVEL, NULL, 0);
        return;
    }
    round_reset(s);
    schedule(s);
}

/* Our sum for node idx at level, over the round's spans. */
static uint64_t my_sum(kv_sync *s, unsigned level, uint64_t idx)
{
    uint64_t lo, hi;
    const kv_merkle *t = store_merkle(s->store);
    kv_merkle_node(t, level, idx, &lo, &hi);
    return lo > hi ? 0 : node_sum(t, s->spans, s->n_spans, lo, hi);
}

static void on_top(kv_sync *s, const kv_repl_msg *m)
{
    size_t n = (size_t)1 << SYNC_TOP_LEVEL;
    unsigned depth = kv_merkle_depth(store_merkle(s->store));
    if (m->n_u64s != n || depth < SYNC_TOP_LEVEL) {
        round_end(s, false);
        return;
    }
    uint64_t per = (uint64_t)1 << (depth - SYNC_TOP_LEVEL); /* leaves under a top node */
    sync_conf *c = conf_get(s, &s->peer, true);
    size_t n_diff = 0;
    for (size_t i = 0; i < n; i++) {
        if (kv_repl_u64_at(m->u64s, i) != my_sum(s, SYNC_TOP_LEVEL, i)) {
            n_diff++;
        } else if (my_sum(s, SYNC_TOP_LEVEL, i) != 0) { /* equal and not empty */
            for (uint64_t j = 0; j < per; j++)
                confirm_leaf(s, c, (uint64_t)i * per + j);
        }
    }
    if (n_diff == 0) {
        round_end(s, true);
        return;
    }
    size_t n_ask = n_diff * per;
    uint8_t *nodes = n_ask <= KV_REPL_U64S_MAX ? malloc(n_ask * 8) : NULL;
    s->leaves = malloc(n_ask * sizeof(uint64_t) + 1);
    if (!nodes || !s->leaves) {
        free(nodes);
        round_end(s, false);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (kv_repl_u64_at(m->u64s, i) != my_sum(s, SYNC_TOP_LEVEL, i))
            for (uint64_t j = 0; j < per; j++, k++) {
                s->leaves[k] = (uint64_t)i * per + j;
                kv_repl_u64_put(nodes, k, s->leaves[k]);
            }
    s->n_leaves = k; /* the leaves asked; on_leaves keeps those that differ */
    s->step = AE_LEAVES;
    send_tree(s, depth, nodes, k);
    free(nodes);
}

static void on_leaves(kv_sync *s, const kv_repl_msg *m)
{
    unsigned depth = kv_merkle_depth(store_merkle(s->store));
    if (m->n_u64s != s->n_leaves) {
        round_end(s, false);
        return;
    }
    sync_conf *c = conf_get(s, &s->peer, true);
    size_t k = 0;
    for (size_t i = 0; i < s->n_leaves; i++) {
        if (kv_repl_u64_at(m->u64s, i) != my_sum(s, depth, s->leaves[i]))
            s->leaves[k++] = s->leaves[i]; /* ascending, as asked */
        else
            confirm_leaf(s, c, s->leaves[i]);
    }
    s->n_leaves = k;
    s->st.leaves_differing += k;
    if (k == 0) { /* the difference was in flight and is gone */
        round_end(s, true);
        return;
    }
    /* Walk our store for what we hold in those leaves. */
    s->step = AE_HAVE;
    memset(&s->have_cur, 0, sizeof(s->have_cur));
    uv_timer_stop(&s->round_timer);
    pump_start(s);
}

static bool have_visit(void *arg, const kv_store_item *it)
{
    kv_sync *s = arg;
    const kv_merkle *t = store_merkle(s->store);
    uint64_t leaf = kv_merkle_leaf_of(t, it->hash);
    if (!u64_find(s->leaves, s->n_leaves, leaf))
        return true;
    if (s->n_have == s->cap_have) {
        size_t cap = s->cap_have ? 2 * s->cap_have : 1024;
        ae_have *h = realloc(s->have, cap * sizeof(*h));
        if (!h) {
            s->have_oom = true;
            return false;
        }
        s->have = h;
        s->cap_have = cap;
    }
    s->have[s->n_have++] =
        (ae_have){leaf, kv_merkle_item_digest(it->key, it->klen, &it->ver, it->tombstone)};
    return true;
}

static int cmp_have(const void *x, const void *y)
{
    const ae_have *a = x, *b = y;
    return a->leaf < b->leaf ? -1 : a->leaf > b->leaf;
}

/* One slice of the HAVE walk; on its end, the first pull. */
static void have_step(kv_sync *s)
{
    s->have_oom = false;
    if (store_range(s->store, 0, 0, &s->have_cur, 0, have_visit, s) != KV_OK || s->have_oom) {
        round_end(s, false);
        return;
    }
    if (!s->have_cur.done)
        return;
    qsort(s->have, s->n_have, sizeof(*s->have), cmp_have);
    s->step = AE_PULL;
    s->next_leaf = 0;
    round_next_pull(s);
}

/* Pull the next group of differing leaves (or end the round when none is left). */
static void round_next_pull(kv_sync *s)
{
    if (s->next_leaf >= s->n_leaves) {
        round_end(s, true);
        return;
    }
    const kv_merkle *t = store_merkle(s->store);
    size_t first = s->next_leaf;
    size_t end = first + SYNC_PULL_LEAVES < s->n_leaves ? first + SYNC_PULL_LEAVES : s->n_leaves;
    s->next_leaf = end;
    /* the leaves as ranges, adjacent ones merged */
    sync_span *sp = malloc((end - first) * sizeof(*sp));
    size_t n_sp = 0;
    if (!sp) {
        round_end(s, false);
        return;
    }
    for (size_t i = first; i < end; i++) {
        uint64_t lo, hi;
        kv_merkle_leaf_range(t, s->leaves[i], &lo, &hi);
        sp[n_sp++] = (sync_span){lo, hi};
    }
    n_sp = span_norm(sp, n_sp);
    uint8_t *pairs = pairs_of_spans(sp, n_sp);
    free(sp);
    /* what we hold in those leaves: a run of the sorted have list */
    size_t h0 = 0, h1;
    while (h0 < s->n_have && s->have[h0].leaf < s->leaves[first])
        h0++;
    for (h1 = h0; h1 < s->n_have && s->have[h1].leaf <= s->leaves[end - 1]; h1++)
        ;
    size_t n_have = h1 - h0 <= KV_REPL_U64S_MAX ? h1 - h0 : 0; /* too many: send them all */
    uint8_t *have = malloc(n_have * 8 + 1);
    if (pairs && have) {
        for (size_t i = 0; i < n_have; i++)
            kv_repl_u64_put(have, i, s->have[h0 + i].digest);
        s->ae_pull = pull_start(s, s->peer_addr, pairs, n_sp, have, n_have, on_ae_pull_done, s);
    }
    free(pairs);
    free(have);
    if (!s->ae_pull)
        round_end(s, false);
}

/* The round's pull of one group of leaves is over. */
static void on_ae_pull_done(void *arg, int status, uint64_t raw, uint64_t records)
{
    (void)raw;
    (void)records;
    kv_sync *s = arg;
    s->ae_pull = NULL;
    if (status == KV_OK)
        round_next_pull(s);
    else
        round_end(s, false);
}

/* ---------- timers and the pump ---------- */

static void on_round_timer(uv_timer_t *t)
{
    kv_sync *s = t->data;
    if (s->step == AE_IDLE)
        round_start(s);
    else
        round_end(s, false); /* an answer did not come in time */
}

static void on_rate_timer(uv_timer_t *t)
{
    kv_sync *s = t->data;
    s->rate_wait = false;
    pump_start(s);
}

static void on_pump(uv_idle_t *h)
{
    kv_sync *s = h->data;
    if (s->step == AE_HAVE)
        have_step(s);
    if (s->gc_on)
        gc_step(s);
    bool serving = false;
    for (sync_serve *v = s->serves, *next; v; v = next) {
        next = v->next;
        if (!v->want || s->rate_wait)
            continue;
        if (!rate_ok(s)) {
            /* out of budget: the rate timer restarts the pump once the bucket refills */
            uint64_t wait = (uint64_t)(-s->tokens * 1000.0 / (double)s->cfg->streaming_rate) + 1;
            s->rate_wait = true;
            uv_timer_start(&s->rate_timer, on_rate_timer, wait, 0);
            continue;
        }
        serve_step(s, v);
        serving = true;
    }
    if (!serving && s->step != AE_HAVE && !s->gc_on) {
        uv_idle_stop(&s->pump);
        s->pump_on = false;
    }
}

static void pump_start(kv_sync *s)
{
    if (s->pump_on || s->closing)
        return;
    s->pump_on = true;
    uv_idle_start(&s->pump, on_pump);
}

/* ---------- hand-overs asked by leaving members ---------- */

static void job_answer(kv_sync *s, sync_job *j)
{
    kv_repl_msg d = {.type = KV_REPL_STREAM_DONE,
                     .req_id = j->req_id,
                     .status = j->status == KV_OK ? KV_REPL_OK : KV_REPL_ERROR};
    s->env.send(s->env.arg, j->from, &d);
}

static void on_job_pulled(void *arg, int status, uint64_t raw, uint64_t records)
{
    (void)raw;
    sync_job *j = arg;
    j->pull = NULL;
    j->status = status;
    j->ended_ms = now_ms(j->s);
    j->s->st.handovers++;
    kv_log_info("took over ranges from a leaving member", KV_STR("member", j->from), KV_ERR(status),
                KV_UINT("records", records));
    job_answer(j->s, j);
}

static void on_stream(kv_sync *s, const char *from, const kv_repl_msg *m)
{
    uint64_t now = now_ms(s);
    for (sync_job **pp = &s->jobs; *pp;) { /* forget old ended ones */
        sync_job *j = *pp;
        if (!j->pull && now - j->ended_ms > SYNC_JOB_KEEP_MS) {
            *pp = j->next;
            free(j);
        } else {
            pp = &j->next;
        }
    }
    for (sync_job *j = s->jobs; j; j = j->next)
        if (j->req_id == m->req_id && strcmp(j->from, from) == 0) {
            if (!j->pull) /* ended: say so again */
                job_answer(s, j);
            return;
        }
    sync_job *j = calloc(1, sizeof(*j));
    if (!j)
        return; /* the leaving member asks again */
    j->s = s;
    snprintf(j->from, sizeof(j->from), "%s", from);
    j->req_id = m->req_id;
    j->pull = kv_sync_pull_start(s, from, m->ranges, m->n_ranges, on_job_pulled, j);
    j->next = s->jobs;
    s->jobs = j;
    if (!j->pull) {
        j->status = KV_ENOMEM;
        j->ended_ms = now;
        job_answer(s, j);
    } else {
        kv_log_info("taking over ranges from a leaving member", KV_STR("member", from),
                    KV_UINT("ranges", m->n_ranges));
    }
}

/* ---------- re-replication after a removal ---------- */

static void rerep_free(kv_sync *s, sync_rerep *r)
{
    for (sync_rerep **pp = &s->reps; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    free(r->pairs);
    free(r);
}

static void rerep_try(kv_sync *s, sync_rerep *r);

static void on_rerep_pulled(void *arg, int status, uint64_t raw, uint64_t records)
{
    sync_rerep *r = arg;
    kv_sync *s = r->s;
    r->pull = NULL;
    const char *addr = s->env.addr_of(s->env.arg, &r->src);
    if (status == KV_OK) {
        s->st.rereps_done++;
        kv_log_info("re-replicated ranges of a removed member", KV_STR("from", addr ? addr : "?"),
                    KV_UINT("ranges", r->n_pairs), KV_UINT("records", records),
                    KV_UINT("bytes", raw));
        rerep_free(s, r);
        return;
    }
    if (++r->attempts >= SYNC_REREP_TRIES) {
        s->st.rereps_failed++;
        kv_log_warn("gave up re-replicating ranges of a removed member; anti-entropy will",
                    KV_STR("from", addr ? addr : "?"), KV_ERR(status));
        rerep_free(s, r);
        return;
    }
    r->retry_at = now_ms(s) + SYNC_REREP_RETRY_MS; /* the pull timer tries again */
}

static void rerep_try(kv_sync *s, sync_rerep *r)
{
    const char *addr = s->env.addr_of(s->env.arg, &r->src);
    r->pull = addr && s->env.alive(s->env.arg, &r->src)
                  ? kv_sync_pull_start(s, addr, r->pairs, r->n_pairs, on_rerep_pulled, r)
                  : NULL;
    if (!r->pull) {
        r->retry_at = now_ms(s) + SYNC_REREP_RETRY_MS;
        if (++r->attempts >= SYNC_REREP_TRIES) {
            s->st.rereps_failed++;
            rerep_free(s, r);
        }
    }
}

void kv_sync_rereplicate(kv_sync *s, const kv_ring *old_ring, const kv_ring *new_ring)
{
    size_t n = (size_t)s->cfg->replication_n;
    if (n > KV_RING_DIFF_MAX_N)
        n = KV_RING_DIFF_MAX_N;
    kv_ring_move *mv = NULL;
    size_t n_mv = 0;
    if (s->closing || kv_ring_diff(old_ring, new_ring, n, &mv, &n_mv) != KV_OK)
        return;
    size_t started = 0;
    for (size_t i = 0; i < n_mv; i++) {
        bool gain = false, had = false;
        for (uint32_t k = 0; k < mv[i].n_to; k++)
            gain |= swim_id_equal(&mv[i].to[k], &s->self);
        for (uint32_t k = 0; k < mv[i].n_from; k++)
            had |= swim_id_equal(&mv[i].from[k], &s->self);
        if (!gain || had)
            continue;
        /* every replica that remains: an acknowledged write is on at least one of them */
        for (uint32_t k = 0; k < mv[i].n_from; k++) {
            const swim_member_id *src = &mv[i].from[k];
            if (!s->env.alive(s->env.arg, src))
                continue;
            sync_rerep *r = s->reps;
            while (r && (r->pull || r->attempts || !swim_id_equal(&r->src, src)))
                r = r->next; /* one not started yet for this source, to add to */
            if (!r) {
                if (!(r = calloc(1, sizeof(*r))))
                    continue;
                r->s = s;
                r->src = *src;
                r->next = s->reps;
                s->reps = r;
                started++;
            }
            uint8_t *p = realloc(r->pairs, (r->n_pairs + 1) * 16);
            if (!p)
                continue;
            r->pairs = p;
            kv_repl_u64_put(p, 2 * r->n_pairs, mv[i].lo);
            kv_repl_u64_put(p, 2 * r->n_pairs + 1, mv[i].hi);
            r->n_pairs++;
        }
    }
    free(mv);
    for (sync_rerep *r = s->reps, *next; r; r = next) {
        next = r->next;
        if (!r->pull && !r->attempts)
            rerep_try(s, r);
    }
    if (started)
        kv_log_info("a member was removed: copying the ranges we gained from the remaining "
                    "replicas",
                    KV_UINT("sources", started));
}

/* ---------- entry points ---------- */

void kv_sync_on_msg(kv_sync *s, const swim_member_id *from_id, const char *from,
                    const kv_repl_msg *m)
{
    if (s->closing)
        return;
    switch (m->type) {
    case KV_REPL_TREE:
        serve_tree(s, from, m);
        return;
    case KV_REPL_PULL:
        serve_pull(s, from, m);
        return;
    case KV_REPL_PULL_DATA:
        on_pull_data(s, from, m);
        return;
    case KV_REPL_PURGE:
        on_purge(s, m);
        return;
    case KV_REPL_STREAM:
        on_stream(s, from, m);
        return;
    case KV_REPL_TREE_ACK:
        break;
    default:
        return;
    }
    /* TREE_ACK: the answer of our current step, else late or foreign */
    if (m->req_id != s->req_id || !swim_id_equal(from_id, &s->peer) ||
        (s->step != AE_TOP && s->step != AE_LEAVES))
        return;
    uv_timer_stop(&s->round_timer);
    if (m->status != KV_REPL_OK)
        round_end(s, false);
    else if (s->step == AE_TOP)
        on_top(s, m);
    else
        on_leaves(s, m);
}

int kv_sync_start(kv_sync **out, uv_loop_t *loop, const kv_config *cfg, kv_store *store,
                  kv_metrics *metrics, const swim_member_id *self, const kv_sync_env *env)
{
    kv_sync *s = calloc(1, sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    s->loop = loop;
    s->cfg = cfg;
    s->store = store;
    s->metrics = metrics;
    s->self = *self;
    s->env = *env;
    uv_timer_init(loop, &s->round_timer);
    uv_timer_init(loop, &s->rate_timer);
    uv_idle_init(loop, &s->pump);
    uv_timer_init(loop, &s->pull_timer);
    s->round_timer.data = s->rate_timer.data = s->pump.data = s->pull_timer.data = s;
    uv_timer_start(&s->pull_timer, on_pull_timer, 1000, 1000);
    s->tokens_ms = now_ms(s);
    schedule(s);
    *out = s;
    return KV_OK;
}

void kv_sync_publish_metrics(kv_sync *s)
{
    kv_metrics *mx = s->metrics;
    static const char *const results[] = {"in_sync", "differed", "failed"};
    for (size_t i = 0; i < 3; i++) /* every series exists from the start */
        kv_metrics_count(mx, "kv_ae_rounds_total", AE_ROUNDS_HELP, "result", results[i], 0);
    kv_metrics_counter_set(mx, "kv_ae_leaves_differing_total",
                           "Tree leaves found differing from a replica's.", s->st.leaves_differing);
    kv_metrics_counter_set(mx, "kv_sync_records_applied_total",
                           "Records received by pulls that were newer and stored.", s->st.applied);
    kv_metrics_counter_set(mx, "kv_sync_records_stale_total",
                           "Records received by pulls that were not newer than ours.", s->st.stale);
    kv_metrics_counter_set(mx, "kv_sync_apply_errors_total",
                           "Records received by pulls that the store refused or failed.",
                           s->st.apply_errors);
    kv_metrics_counter_set(mx, "kv_sync_bad_chunks_total", "Pulled chunks refused as malformed.",
                           s->st.bad_chunks);
    kv_metrics_counter_set(mx, "kv_sync_bytes_received_total",
                           "Pulled chunk bytes received (compressed).", s->st.bytes_in);
    kv_metrics_counter_set(mx, "kv_sync_raw_bytes_received_total",
                           "Pulled chunk bytes received (uncompressed).", s->st.raw_in);
    kv_metrics_counter_set(mx, "kv_sync_bytes_sent_total",
                           "Chunk bytes sent to pulling replicas (compressed).", s->st.bytes_out);
    kv_metrics_counter_set(mx, "kv_sync_raw_bytes_sent_total",
                           "Chunk bytes sent to pulling replicas (uncompressed).", s->st.raw_out);
    kv_metrics_counter_set(mx, "kv_sync_chunks_sent_total", "Chunks sent to pulling replicas.",
                           s->st.chunks_out);
    kv_metrics_counter_set(mx, "kv_sync_pulls_served_total", "Pulls served.", s->st.serves_started);
    kv_metrics_counter_set(mx, "kv_sync_pulls_refused_total",
                           "Pulls refused (too many at once, no memory).", s->st.serves_refused);
    kv_metrics_counter_set(mx, "kv_sync_tombstones_purged_total",
                           "Tombstones purged after every replica was seen holding them.",
                           s->st.purged);
    kv_metrics_counter_set(mx, "kv_sync_handovers_total",
                           "Range hand-overs from leaving members pulled (ended, any result).",
                           s->st.handovers);
    kv_metrics_counter_set(mx, "kv_sync_rereplications_total",
                           "Ranges of a removed member copied from a remaining replica.",
                           s->st.rereps_done);
    kv_metrics_counter_set(mx, "kv_sync_rereplications_failed_total",
                           "Copies of a removed member's ranges given up after retries.",
                           s->st.rereps_failed);
    kv_metrics_counter_set(mx, "kv_sync_purge_walks_total",
                           "Walks of the store looking for tombstones old enough to purge.",
                           s->st.gc_walks);
    kv_metrics_counter_set(mx, "kv_sync_purges_received_total",
                           "Tombstones purged because another replica said it purged them.",
                           s->st.purge_recv);
    kv_metrics_gauge(mx, "kv_sync_pulls_serving", "Pulls being served now.", (double)s->n_serves);
}

static void on_closed(uv_handle_t *h)
{
    close_step(h->data);
}

void kv_sync_close(kv_sync *s, void (*done)(void *arg), void *arg)
{
    s->closing = true;
    s->close_cb = done;
    s->close_arg = arg;
    round_reset(s);
    while (s->pulls) /* their owners are closed already: no callbacks */
        kv_sync_pull_cancel(s->pulls);
    while (s->jobs) {
        sync_job *j = s->jobs;
        s->jobs = j->next;
        free(j);
    }
    while (s->reps)
        rerep_free(s, s->reps);
    while (s->serves)
        serve_free(s, s->serves);
    s->pending = 4 + s->dead_pulls;
    uv_close((uv_handle_t *)&s->pull_timer, on_closed);
    uv_close((uv_handle_t *)&s->round_timer, on_closed);
    uv_close((uv_handle_t *)&s->rate_timer, on_closed);
    uv_close((uv_handle_t *)&s->pump, on_closed);
}
