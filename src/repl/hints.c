/*
 * hints.c — hinted handoff (hints.h): the hint store, its bounds, and delivery. The
 * delivery decisions are the sans-I/O core declared in hints_core.h (first half of this
 * file); the rest is the shell that owns the store, the loop handles and io->send.
 * Loop thread only.
 *
 * Design notes (shell).
 *
 * Records. Key = target id (16 bytes) + user key. Value = a 10-byte header (format
 * version, flags, expiry_ms little-endian) + the user value. The store's own expiry is not
 * used (an expired write must still reach the replica: its version supersedes older
 * ones), nor its tombstones for tombstone writes (those are a header flag): a store
 * tombstone means "hint removed". A stored value that does not parse is counted, logged
 * and removed, never sent.
 *
 * Removal. A delivered hint is removed by a store tombstone at the smallest version newer
 * than the hint's own ({ts, node + 1}), not by store_delete: store_delete would take a
 * fresh version from the hint store's clock, which may be ahead of the next real write of
 * that key, and that write's hint would then be refused as stale. The tombstone is purged
 * as soon as no write of the key is in flight.
 *
 * Exact per-target counts. Every store_apply of a hint key (add or removal) is counted in
 * a small table of keys with writes in flight, which remembers whether the key held a live
 * hint before the first of them. When the last one completes, store_get_meta says whether
 * it holds one now (exact: nothing of ours is in flight for that key any more, even under
 * KV_SYNC_ALWAYS), and the target's count moves by the difference. At open, one walk of
 * the store counts every target's hints.
 *
 * Scheduling. Delivery runs in steps of at most ~1 ms of loop time from a uv_idle handle
 * while some target has work it can do now; otherwise a one-shot timer waits for the
 * earliest retry or ack deadline. An ack, an add or a liveness change kicks the idle
 * handle.
 */
#include "repl/hints.h"

#include "common/buf.h"
#include "common/hash.h"
#include "common/log.h"
#include "kvstore/error.h"
#include "repl/hints_core.h"
#include "store/store.h"

#include <stdlib.h>
#include <string.h>

/* ======================================================================================
 * The sans-I/O delivery core
 * ==================================================================================== */

#define HC_DEFAULT_WINDOW 64
#define HC_DEFAULT_RETRY  2000

void hc_init(hc_core *c, uint32_t window, uint64_t retry_ms, uint64_t max_backoff_ms)
{
    memset(c, 0, sizeof(*c));
    c->window = window ? window : HC_DEFAULT_WINDOW;
    c->retry_ms = retry_ms ? retry_ms : HC_DEFAULT_RETRY;
    c->max_backoff_ms = max_backoff_ms > c->retry_ms ? max_backoff_ms : c->retry_ms;
}

static void slot_free(hc_target *t, hc_slot *s)
{
    free(s->key);
    memset(s, 0, sizeof(*s));
    t->inflight--;
}

static void free_slots(hc_core *c, hc_target *t)
{
    for (uint32_t i = 0; i < c->window; i++)
        if (t->slots[i].state != HC_SLOT_FREE)
            slot_free(t, &t->slots[i]);
}

void hc_fini(hc_core *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free_slots(c, c->targets[i]);
        free(c->targets[i]->slots);
        free(c->targets[i]);
    }
    free(c->targets);
    memset(c, 0, sizeof(*c));
}

hc_target *hc_find(hc_core *c, const swim_member_id *id)
{
    for (size_t i = 0; i < c->n; i++)
        if (memcmp(c->targets[i]->id.b, id->b, SWIM_ID_LEN) == 0)
            return c->targets[i];
    return NULL;
}

hc_target *hc_get(hc_core *c, const swim_member_id *id)
{
    hc_target *t = hc_find(c, id);
    if (t)
        return t;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        hc_target **v = realloc(c->targets, cap * sizeof(*v));
        if (!v)
            return NULL;
        c->targets = v;
        c->cap = cap;
    }
    t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->slots = calloc(c->window, sizeof(*t->slots));
    if (!t->slots) {
        free(t);
        return NULL;
    }
    t->id = *id;
    t->backoff_ms = c->retry_ms;
    c->targets[c->n++] = t;
    return t;
}

static uint64_t new_req_id(hc_core *c)
{
    c->next_req++;
    return KV_REPL_REQ_HINT | (c->next_req & ~KV_REPL_REQ_MASK);
}

static void bump_backoff(hc_core *c, hc_target *t)
{
    t->backoff_ms = t->backoff_ms > c->max_backoff_ms / 2 ? c->max_backoff_ms : t->backoff_ms * 2;
}

static void start_pass(hc_target *t, uint64_t at)
{
    t->in_pass = true;
    t->scan_done = false;
    t->dirty = false;
    t->found = 0;
    t->removed = 0;
    t->next_pass_ms = at;
    memset(&t->cur, 0, sizeof(t->cur));
    if (!t->session) {
        t->session = true;
        t->session_delivered = 0;
        t->session_start_ns = 0; /* the shell stamps it and logs the start */
    }
}

void hc_set_alive(hc_core *c, hc_target *t, bool alive, uint64_t now)
{
    if (!alive) {
        free_slots(c, t);
        t->in_pass = false;
        t->alive = false;
        return;
    }
    t->alive = true;
    if (!t->in_pass && t->count > 0)
        start_pass(t, now);
}

void hc_touched(hc_core *c, hc_target *t, uint64_t now)
{
    (void)c;
    t->dirty = true;
    if (t->alive && !t->in_pass && t->count > 0)
        start_pass(t, now);
}

void hc_added(hc_core *c, hc_target *t, uint64_t now)
{
    t->count++;
    hc_touched(c, t, now);
}

void hc_removed(hc_core *c, hc_target *t)
{
    (void)c;
    if (t->count > 0)
        t->count--;
    t->removed++;
}

hc_action hc_next(hc_core *c, hc_target *t, uint64_t now, hc_slot **slot)
{
    if (!t->alive || !t->in_pass)
        return HC_IDLE;
    for (uint32_t i = 0; i < c->window; i++) {
        hc_slot *s = &t->slots[i];
        if (s->state == HC_SLOT_SENT && s->due_ms <= now) {
            /* No ack in time: resend now, and wait longer for the next one. */
            s->state = HC_SLOT_WAIT;
            s->due_ms = now;
            bump_backoff(c, t);
        }
        if (s->state == HC_SLOT_WAIT && s->due_ms <= now) {
            s->req_id = new_req_id(c); /* a late ack of the previous send is ignored */
            *slot = s;
            return HC_RESEND;
        }
    }
    if (!t->scan_done)
        return now >= t->next_pass_ms && t->inflight < c->window ? HC_SCAN : HC_IDLE;
    if (t->inflight > 0 || t->removing > 0)
        return HC_IDLE;
    /* The pass is over, and every removal it caused has been counted. */
    if (t->count == 0 || (t->found == 0 && !t->dirty)) {
        t->count = 0;
        t->in_pass = false;
        if (t->session) {
            t->session = false;
            return HC_FINISHED;
        }
        return HC_IDLE;
    }
    if (t->removed > 0 || t->dirty) {
        t->backoff_ms = c->retry_ms;
        start_pass(t, now);
        return HC_SCAN;
    }
    start_pass(t, now + t->backoff_ms);
    bump_backoff(c, t);
    return HC_IDLE;
}

bool hc_has_room(const hc_core *c, const hc_target *t)
{
    return t->inflight < c->window;
}

hc_slot *hc_offer(hc_core *c, hc_target *t, uint64_t now, const void *key, size_t klen,
                  const kv_version *ver)
{
    t->found++;
    if (!hc_has_room(c, t) || klen == 0)
        return NULL;
    hc_slot *s = NULL;
    for (uint32_t i = 0; i < c->window && !s; i++)
        if (t->slots[i].state == HC_SLOT_FREE)
            s = &t->slots[i];
    if (!s)
        return NULL;
    s->key = malloc(klen);
    if (!s->key)
        return NULL;
    memcpy(s->key, key, klen);
    s->klen = klen;
    s->ver = *ver;
    s->tries = 0;
    s->req_id = new_req_id(c);
    s->state = HC_SLOT_SENT;
    s->due_ms = now + t->backoff_ms;
    t->inflight++;
    return s;
}

void hc_sent(hc_core *c, hc_target *t, hc_slot *s, uint64_t now, bool ok)
{
    s->tries++;
    if (ok) {
        s->state = HC_SLOT_SENT;
        s->due_ms = now + t->backoff_ms;
    } else {
        s->state = HC_SLOT_WAIT;
        s->due_ms = now + t->backoff_ms;
        bump_backoff(c, t);
    }
}

void hc_drop(hc_core *c, hc_target *t, hc_slot *s)
{
    (void)c;
    if (s->state != HC_SLOT_FREE)
        slot_free(t, s);
}

hc_ack_result hc_on_ack(hc_core *c, uint64_t now, const swim_member_id *from,
                        const kv_repl_msg *ack, hc_target **tout, uint8_t **key, size_t *klen,
                        kv_version *upto)
{
    if (!ack || ack->type != KV_REPL_WRITE_ACK || !(ack->req_id & KV_REPL_REQ_HINT))
        return HC_ACK_IGNORE;
    hc_target *t = hc_find(c, from);
    if (!t || !t->alive)
        return HC_ACK_IGNORE;
    hc_slot *s = NULL;
    for (uint32_t i = 0; i < c->window && !s; i++)
        if (t->slots[i].state != HC_SLOT_FREE && t->slots[i].req_id == ack->req_id)
            s = &t->slots[i];
    if (!s)
        return HC_ACK_IGNORE;
    bool held = (ack->status == KV_REPL_OK || ack->status == KV_REPL_STALE) &&
                kv_version_cmp(&ack->ver, &s->ver) >= 0;
    if (!held) {
        /* An error, a full disk, or an answer that does not cover what was sent. */
        s->state = HC_SLOT_WAIT;
        s->due_ms = now + t->backoff_ms;
        bump_backoff(c, t);
        return HC_ACK_RETRY;
    }
    t->backoff_ms = c->retry_ms;
    *tout = t;
    *key = s->key;
    *klen = s->klen;
    *upto = ack->ver;
    s->key = NULL; /* handed to the caller */
    slot_free(t, s);
    return HC_ACK_REMOVE;
}

uint64_t hc_next_due(const hc_core *c, uint64_t now)
{
    uint64_t due = UINT64_MAX;
    for (size_t i = 0; i < c->n; i++) {
        const hc_target *t = c->targets[i];
        if (!t->alive || !t->in_pass)
            continue;
        for (uint32_t j = 0; j < c->window; j++)
            if (t->slots[j].state != HC_SLOT_FREE && t->slots[j].due_ms < due)
                due = t->slots[j].due_ms;
        uint64_t d = UINT64_MAX;
        if (!t->scan_done && t->inflight < c->window)
            d = t->next_pass_ms > now ? t->next_pass_ms : now;
        else if (t->scan_done && t->inflight == 0 && t->removing == 0)
            d = now;
        if (d < due)
            due = d;
    }
    return due;
}

/* ======================================================================================
 * The shell: store, bounds, scheduling
 * ==================================================================================== */

#define HINT_FMT_V1      1u
#define HINT_HDR_LEN     10u
#define HINT_KEY_MAX     (SWIM_ID_LEN + KV_REPL_KEY_MAX)
#define HINT_MAX_BACKOFF 30000u
#define HINT_STEP_NS     1000000u /* loop time one delivery step may take */
#define HINT_SCAN_VISIT  1024u    /* index entries one store_range chunk examines */
#define HINT_WARN_MS     10000u   /* rate limit of each kind of warning */

/* A warning that repeats: logged at most once per HINT_WARN_MS, with how many since. */
typedef struct warn_limit {
    uint64_t last_ms;
    uint64_t n;
    bool logged;
} warn_limit;

/* A hint key with store_apply calls in flight (see "Exact per-target counts"). */
typedef struct pend_ent {
    struct pend_ent *next;
    uint64_t hash;
    uint32_t ops;
    bool was_live;
    bool added;           /* an add of this key was written */
    hc_target *rm_target; /* removals of this key in flight count in its `removing` */
    uint32_t rm_ops;
    size_t klen;
    uint8_t key[]; /* the hint key */
} pend_ent;

typedef enum op_kind {
    OP_ADD,
    OP_REMOVE, /* delivered */
    OP_BAD,    /* malformed */
} op_kind;

typedef struct hint_op {
    kv_hints *h;
    pend_ent *pe;
    op_kind kind;
    void (*done)(void *arg, int status); /* OP_ADD: kv_hints_add_durable's completion */
    void *done_arg;
} hint_op;

struct kv_hints {
    uv_loop_t *loop;
    kv_store *store;
    kv_hints_io io;
    uint64_t max_count, max_bytes, max_value;
    bool keep_none;
    uint32_t max_pending;
    hc_core core;
    uv_idle_t idle;
    uv_timer_t timer;
    bool idle_on;
    size_t rr; /* round-robin start of the next step */
    /* keys with writes in flight */
    pend_ent **buckets;
    size_t nbuckets, npend;
    uint32_t pending_adds; /* hint writes not yet completed (max_pending) */
    kv_hints_stats st;
    uint64_t corrupt;
    warn_limit w_full, w_disk, w_bad;
    kv_buf vbuf;
    uint8_t kbuf[HINT_KEY_MAX];
    hc_slot **offered; /* one scan chunk's new deliveries: window entries */
    /* close */
    bool closing;
    int close_left;
    void (*done)(void *);
    void *done_arg;
};

static void kick(kv_hints *h);

/* The core's clock: monotonic ms, read fresh (uv_now is the loop's cached time, which
 * can lag by a whole loop turn and would make an ack deadline early). */
static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void warn_limited(kv_hints *h, warn_limit *w, const char *msg)
{
    uint64_t now = mono_ms();
    w->n++;
    if (w->logged && now - w->last_ms < HINT_WARN_MS)
        return;
    kv_log_warn(msg, KV_UINT("count", w->n), KV_UINT("hints", h->st.count),
                KV_UINT("bytes", h->st.bytes), KV_UINT("dropped_full", h->st.dropped_full),
                KV_UINT("write_errors", h->st.write_errors), KV_UINT("corrupt", h->corrupt));
    w->logged = true;
    w->last_ms = now;
    w->n = 0;
}

static void refresh_stats(kv_hints *h)
{
    kv_store_stats ss;
    store_stats(h->store, &ss);
    h->st.count = ss.keys;
    h->st.bytes = ss.live_bytes;
}

static size_t make_key(uint8_t *out, const swim_member_id *t, const void *key, size_t klen)
{
    memcpy(out, t->b, SWIM_ID_LEN);
    memcpy(out + SWIM_ID_LEN, key, klen);
    return SWIM_ID_LEN + klen;
}

static void put_u64le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64le(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

typedef struct hint_val {
    uint32_t flags;
    uint64_t expiry_ms;
    const uint8_t *value;
    size_t vlen;
} hint_val;

/* Parse a stored hint value; false when it is not one this code wrote. */
static bool parse_val(const kv_hints *h, const uint8_t *p, size_t len, hint_val *out)
{
    if (len < HINT_HDR_LEN || p[0] != HINT_FMT_V1 || (p[1] & ~KV_REPL_F_TOMBSTONE) != 0)
        return false;
    out->flags = p[1];
    out->expiry_ms = get_u64le(p + 2);
    out->value = p + HINT_HDR_LEN;
    out->vlen = len - HINT_HDR_LEN;
    if ((out->flags & KV_REPL_F_TOMBSTONE) && out->vlen != 0)
        return false;
    return out->vlen <= h->max_value;
}

/* ---------- keys with writes in flight ---------- */

static uint64_t pend_hash(const void *key, size_t klen)
{
    return kv_ring_hash(key, klen);
}

static pend_ent *pend_find(kv_hints *h, const void *key, size_t klen, uint64_t hash)
{
    if (!h->nbuckets)
        return NULL;
    for (pend_ent *e = h->buckets[hash & (h->nbuckets - 1)]; e; e = e->next)
        if (e->hash == hash && e->klen == klen && memcmp(e->key, key, klen) == 0)
            return e;
    return NULL;
}

static bool live_hint(kv_hints *h, const void *key, size_t klen, kv_store_meta *m)
{
    kv_store_meta tmp;
    if (!m)
        m = &tmp;
    return store_get_meta(h->store, key, klen, m) == KV_OK && !m->tombstone;
}

/* The entry of key with one more op counted; NULL on ENOMEM. */
static pend_ent *pend_ref(kv_hints *h, const void *key, size_t klen)
{
    uint64_t hash = pend_hash(key, klen);
    pend_ent *e = pend_find(h, key, klen, hash);
    if (e) {
        e->ops++;
        return e;
    }
    if (h->npend + 1 > h->nbuckets / 2) {
        size_t nb = h->nbuckets ? h->nbuckets * 2 : 64;
        pend_ent **b = calloc(nb, sizeof(*b));
        if (!b)
            return NULL;
        for (size_t i = 0; i < h->nbuckets; i++) {
            pend_ent *x = h->buckets[i];
            while (x) {
                pend_ent *nx = x->next;
                x->next = b[x->hash & (nb - 1)];
                b[x->hash & (nb - 1)] = x;
                x = nx;
            }
        }
        free(h->buckets);
        h->buckets = b;
        h->nbuckets = nb;
    }
    e = calloc(1, sizeof(*e) + klen);
    if (!e)
        return NULL;
    e->hash = hash;
    e->klen = klen;
    memcpy(e->key, key, klen);
    e->ops = 1;
    /* Nothing of ours is in flight for this key: the meta is exact even under ALWAYS. */
    e->was_live = live_hint(h, key, klen, NULL);
    size_t b = hash & (h->nbuckets - 1);
    e->next = h->buckets[b];
    h->buckets[b] = e;
    h->npend++;
    return e;
}

static void pend_unlink(kv_hints *h, pend_ent *e)
{
    pend_ent **pp = &h->buckets[e->hash & (h->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    h->npend--;
}

/* One op of e finished; after the last, settle the key's count and forget it. */
static void pend_unref(kv_hints *h, pend_ent *e)
{
    if (--e->ops > 0)
        return;
    pend_unlink(h, e);
    if (!h->closing) {
        kv_store_meta m;
        int rc = store_get_meta(h->store, e->key, e->klen, &m);
        bool live = rc == KV_OK && !m.tombstone;
        if (rc == KV_OK && m.tombstone)
            (void)store_purge(h->store, e->key, e->klen, &m.ver); /* a removal: forget it */
        hc_target *t = NULL;
        if (e->klen > SWIM_ID_LEN && (live != e->was_live || e->added))
            t = hc_get(&h->core, (const swim_member_id *)e->key);
        if (t && live && !e->was_live)
            hc_added(&h->core, t, mono_ms());
        else if (t && !live && e->was_live)
            hc_removed(&h->core, t);
        else if (t && e->added)
            hc_touched(&h->core, t, mono_ms()); /* replaced: send the new version */
        if (e->rm_target)
            e->rm_target->removing -= e->rm_ops;
        kick(h);
    }
    free(e);
}

/* ---------- writes ---------- */

static void op_cb(void *arg, int status, const kv_version *ver)
{
    (void)ver;
    hint_op *op = arg;
    kv_hints *h = op->h;
    if (op->kind == OP_ADD) {
        h->pending_adds--;
    }
    if (status == KV_OK && op->kind == OP_ADD) {
        op->pe->added = true;
    } else if (status == KV_OK && op->kind == OP_REMOVE) {
        h->st.delivered++;
        if (op->pe->rm_target)
            op->pe->rm_target->session_delivered++;
    } else if (status != KV_OK && status != KV_ESTALE) {
        h->st.write_errors++;
        if (!h->closing)
            warn_limited(h, &h->w_disk, "hint store write failed");
    }
    pend_unref(h, op->pe);
    if (op->done) /* KV_ESTALE: a same-or-newer hint is held, which is as good */
        op->done(op->done_arg, status == KV_ESTALE ? KV_OK : status);
    free(op);
}

/* Start a store_apply of key under an op of this kind. KV_OK or the immediate error. */
static int apply_op(kv_hints *h, op_kind kind, hc_target *t, const uint8_t *key, size_t klen,
                    const void *val, size_t vlen, const kv_version *ver, bool tomb,
                    void (*done)(void *, int), void *done_arg)
{
    hint_op *op = calloc(1, sizeof(*op));
    if (!op)
        return KV_ENOMEM;
    op->done = done;
    op->done_arg = done_arg;
    pend_ent *pe = pend_ref(h, key, klen);
    if (!pe) {
        free(op);
        return KV_ENOMEM;
    }
    op->h = h;
    op->pe = pe;
    op->kind = kind;
    int rc = store_apply(h->store, key, klen, val, vlen, 0, ver, tomb, op_cb, op);
    if (rc != KV_OK) {
        free(op);
        pend_unref(h, pe);
        return rc;
    }
    if (kind == OP_ADD) {
        h->pending_adds++;
    } else if (t) {
        pe->rm_target = t;
        pe->rm_ops++;
        t->removing++;
    }
    return KV_OK;
}

/* The smallest version newer than v: what a removal tombstone is written at. */
static kv_version successor(const kv_version *v)
{
    if (v->node == UINT32_MAX)
        return (kv_version){.ts = v->ts + 1, .node = 0};
    return (kv_version){.ts = v->ts, .node = v->node + 1};
}

/* Remove the hint under key (a whole hint key) if its version is not newer than upto. */
static void remove_hint(kv_hints *h, hc_target *t, const uint8_t *key, size_t klen,
                        const kv_version *upto, op_kind kind)
{
    kv_store_meta m;
    if (!live_hint(h, key, klen, &m) || kv_version_cmp(&m.ver, upto) > 0)
        return; /* already gone, or a newer hint arrived: it stays */
    kv_version tv = successor(&m.ver);
    int rc = apply_op(h, kind, t, key, klen, NULL, 0, &tv, true, NULL, NULL);
    if (rc != KV_OK && rc != KV_ECLOSED) {
        h->st.write_errors++;
        warn_limited(h, &h->w_disk, "hint removal failed");
    }
}

static void bad_hint(kv_hints *h, hc_target *t, const uint8_t *key, size_t klen,
                     const kv_version *ver)
{
    h->corrupt++;
    warn_limited(h, &h->w_bad, "malformed hint skipped and removed");
    remove_hint(h, t, key, klen, ver, OP_BAD);
}

int kv_hints_add(kv_hints *h, const swim_member_id *target, const kv_repl_msg *w)
{
    return kv_hints_add_durable(h, target, w, NULL, NULL);
}

int kv_hints_add_durable(kv_hints *h, const swim_member_id *target, const kv_repl_msg *w,
                         void (*done)(void *arg, int status), void *arg)
{
    if (!h || !target || !w)
        return KV_EINVAL;
    if (h->closing)
        return KV_ECLOSED;
    if (w->type != KV_REPL_WRITE || !w->key || w->klen == 0 ||
        (w->flags & ~KV_REPL_F_TOMBSTONE) != 0 ||
        ((w->flags & KV_REPL_F_TOMBSTONE) && w->vlen != 0) || (w->vlen && !w->value))
        return KV_EINVAL;
    if (w->klen > KV_REPL_KEY_MAX || w->vlen > h->max_value)
        return KV_ETOOBIG;
    size_t klen = make_key(h->kbuf, target, w->key, w->klen);
    uint64_t rec = klen + HINT_HDR_LEN + w->vlen;

    /* Bounds. The store accounts a write in its stats as soon as it is applied (durable
     * or not), so they cover hints on their way to the disk too. Replacing a held hint
     * does not add one. */
    refresh_stats(h);
    kv_store_meta m;
    bool held = live_hint(h, h->kbuf, klen, &m);
    uint64_t old = held ? klen + m.vlen : 0;
    if (old > h->st.bytes)
        old = h->st.bytes;
    if (h->keep_none || h->pending_adds >= h->max_pending ||
        (!held && h->st.count >= h->max_count) || h->st.bytes - old + rec > h->max_bytes) {
        h->st.dropped_full++;
        warn_limited(h, &h->w_full, "hint store full: hints dropped");
        return KV_EUNAVAIL;
    }

    if (kv_buf_reserve(&h->vbuf, HINT_HDR_LEN + w->vlen) != KV_OK)
        return KV_EUNAVAIL;
    uint8_t *p = (uint8_t *)h->vbuf.data;
    p[0] = HINT_FMT_V1;
    p[1] = (uint8_t)(w->flags & KV_REPL_F_TOMBSTONE);
    put_u64le(p + 2, w->expiry_ms);
    if (w->vlen)
        memcpy(p + HINT_HDR_LEN, w->value, w->vlen);
    int rc = apply_op(h, OP_ADD, NULL, h->kbuf, klen, p, HINT_HDR_LEN + w->vlen, &w->ver, false,
                      done, arg);
    switch (rc) {
    case KV_OK:
        h->st.added++;
        return KV_OK;
    case KV_EINVAL: /* a version too far in the future (logged by the store) */
    case KV_ETOOBIG:
    case KV_ECLOSED:
        return rc;
    default: /* the disk refused (or memory ran out): not kept */
        h->st.write_errors++;
        warn_limited(h, &h->w_disk, "hint store write failed");
        return KV_EUNAVAIL;
    }
}

/* ---------- delivery ---------- */

/* Read slot's hint and send it. */
static void deliver(kv_hints *h, hc_target *t, hc_slot *s)
{
    size_t klen = make_key(h->kbuf, &t->id, s->key, s->klen);
    kv_version ver;
    int rc = store_get(h->store, h->kbuf, klen, &h->vbuf, &ver);
    if (rc == KV_ENOTFOUND) {
        hc_drop(&h->core, t, s); /* removed or replaced by a tombstone meanwhile */
        return;
    }
    if (rc != KV_OK && rc != KV_ECORRUPT) {
        hc_sent(&h->core, t, s, mono_ms(), false); /* I/O trouble: try again later */
        return;
    }
    hint_val hv;
    if (rc != KV_OK || !parse_val(h, (const uint8_t *)h->vbuf.data, h->vbuf.len, &hv)) {
        kv_store_meta m;
        kv_version v = live_hint(h, h->kbuf, klen, &m) ? m.ver : s->ver;
        hc_drop(&h->core, t, s);
        bad_hint(h, t, h->kbuf, klen, &v);
        return;
    }
    s->ver = ver;
    kv_repl_msg msg = {
        .type = KV_REPL_WRITE,
        .req_id = s->req_id,
        .key = s->key,
        .klen = s->klen,
        .ver = ver,
        .flags = hv.flags,
        .expiry_ms = hv.expiry_ms,
        .value = hv.value,
        .vlen = hv.vlen,
    };
    bool ok = h->io.send(h->io.arg, &t->id, &msg) == KV_OK;
    if (ok)
        h->st.sent++;
    hc_sent(&h->core, t, s, mono_ms(), ok);
}

typedef struct scan_ctx {
    kv_hints *h;
    hc_target *t;
    uint64_t now;
    hc_slot **offered;
    uint32_t n;
} scan_ctx;

static bool scan_fn(void *arg, const kv_store_item *it)
{
    scan_ctx *x = arg;
    if (it->tombstone || it->klen <= SWIM_ID_LEN || memcmp(it->key, x->t->id.b, SWIM_ID_LEN) != 0)
        return true;
    hc_slot *s = hc_offer(&x->h->core, x->t, x->now, (const uint8_t *)it->key + SWIM_ID_LEN,
                          it->klen - SWIM_ID_LEN, &it->ver);
    if (s)
        x->offered[x->n++] = s;
    /* Stop at a full window: the cursor resumes after this key, which is taken. */
    return s && hc_has_room(&x->h->core, x->t);
}

static void scan_chunk(kv_hints *h, hc_target *t, uint64_t now)
{
    scan_ctx x = {.h = h, .t = t, .now = now, .offered = h->offered};
    if (store_range(h->store, 0, 0, &t->cur, HINT_SCAN_VISIT, scan_fn, &x) != KV_OK)
        t->cur.done = true;
    if (t->cur.done)
        t->scan_done = true;
    /* Sent after the walk: store_range's callback must not write to the store, and a
     * malformed hint found while loading one is removed. */
    for (uint32_t i = 0; i < x.n; i++)
        deliver(h, t, h->offered[i]);
}

static void hex_id(const swim_member_id *id, char out[2 * SWIM_ID_LEN + 1])
{
    swim_id_to_hex(id, out);
}

static void timer_cb(uv_timer_t *t)
{
    kick(t->data);
}

static void arm_timer(kv_hints *h)
{
    uint64_t now = mono_ms();
    uint64_t due = hc_next_due(&h->core, now);
    if (due == UINT64_MAX) {
        uv_timer_stop(&h->timer);
        return;
    }
    uv_timer_start(&h->timer, timer_cb, due > now ? due - now : 0, 0);
}

static void step(kv_hints *h)
{
    uint64_t t0 = uv_hrtime();
    uint64_t now = mono_ms();
    bool more = false;
    size_t n = h->core.n;
    for (size_t k = 0; k < n && !more; k++) {
        hc_target *t = h->core.targets[(h->rr + k) % n];
        /* Bounded: each action either sends, frees a slot or walks a chunk. */
        for (uint32_t guard = 0; guard < 4u * h->core.window + 64; guard++) {
            if (uv_hrtime() - t0 > HINT_STEP_NS) {
                more = true;
                break;
            }
            hc_slot *s = NULL;
            hc_action a = hc_next(&h->core, t, now, &s);
            if (a == HC_IDLE)
                break;
            char hex[2 * SWIM_ID_LEN + 1];
            if (a == HC_FINISHED) {
                hex_id(&t->id, hex);
                double secs =
                    t->session_start_ns ? (double)(uv_hrtime() - t->session_start_ns) / 1e9 : 0.0;
                kv_log_info("hint delivery finished", KV_STR("target", hex),
                            KV_UINT("delivered", t->session_delivered), KV_FLOAT("seconds", secs));
                break;
            }
            if (t->session && t->session_start_ns == 0) {
                t->session_start_ns = uv_hrtime();
                hex_id(&t->id, hex);
                kv_log_info("hint delivery started", KV_STR("target", hex),
                            KV_UINT("hints", t->count));
            }
            if (a == HC_RESEND)
                deliver(h, t, s);
            else
                scan_chunk(h, t, now);
        }
    }
    h->rr++;
    if (more)
        return; /* the idle handle stays on: the next step runs after this loop turn */
    uv_idle_stop(&h->idle);
    h->idle_on = false;
    arm_timer(h);
}

static void idle_cb(uv_idle_t *i)
{
    kv_hints *h = i->data;
    if (!h->closing)
        step(h);
}

static void kick(kv_hints *h)
{
    if (h->closing || h->idle_on)
        return;
    h->idle_on = true;
    uv_idle_start(&h->idle, idle_cb);
}

void kv_hints_member_alive(kv_hints *h, const swim_member_id *id, bool alive)
{
    if (!h || !id || h->closing)
        return;
    hc_target *t = alive ? hc_get(&h->core, id) : hc_find(&h->core, id);
    if (!t || t->alive == alive)
        return;
    hc_set_alive(&h->core, t, alive, mono_ms());
    if (!alive && t->session) {
        char hex[2 * SWIM_ID_LEN + 1];
        hex_id(&t->id, hex);
        kv_log_info("hint delivery paused: target down", KV_STR("target", hex),
                    KV_UINT("hints", t->count), KV_UINT("delivered", t->session_delivered));
    }
    kick(h);
}

void kv_hints_on_ack(kv_hints *h, const swim_member_id *from, const kv_repl_msg *ack)
{
    if (!h || !from || !ack || h->closing)
        return;
    hc_target *t = NULL;
    uint8_t *key = NULL;
    size_t klen = 0;
    kv_version upto;
    hc_ack_result r = hc_on_ack(&h->core, mono_ms(), from, ack, &t, &key, &klen, &upto);
    if (r == HC_ACK_REMOVE) {
        size_t hk = make_key(h->kbuf, &t->id, key, klen);
        free(key);
        remove_hint(h, t, h->kbuf, hk, &upto, OP_REMOVE);
    }
    if (r != HC_ACK_IGNORE)
        kick(h);
}

uint64_t kv_hints_count_for(kv_hints *h, const swim_member_id *target)
{
    if (!h || !target)
        return 0;
    hc_target *t = hc_find(&h->core, target);
    return t ? t->count : 0;
}

void kv_hints_get_stats(kv_hints *h, kv_hints_stats *out)
{
    if (!h || !out)
        return;
    if (!h->closing)
        refresh_stats(h);
    h->st.targets = 0;
    for (size_t i = 0; i < h->core.n; i++)
        if (h->core.targets[i]->count > 0)
            h->st.targets++;
    h->st.corrupt = h->corrupt;
    *out = h->st;
}

/* ---------- open / close ---------- */

typedef struct open_scan {
    kv_hints *h;
    hc_target *last;
    bool nomem;
    /* keys that cannot be hints (shorter than a target id + 1 byte), removed after */
    uint8_t (*bad)[SWIM_ID_LEN];
    size_t *bad_len;
    kv_version *bad_ver;
    size_t nbad, capbad;
} open_scan;

static bool open_scan_fn(void *arg, const kv_store_item *it)
{
    open_scan *x = arg;
    if (it->tombstone)
        return true;
    if (it->klen <= SWIM_ID_LEN) {
        if (x->nbad == x->capbad) {
            size_t cap = x->capbad ? x->capbad * 2 : 16;
            void *a = realloc(x->bad, cap * sizeof(*x->bad));
            if (a)
                x->bad = a;
            void *b = realloc(x->bad_len, cap * sizeof(*x->bad_len));
            if (b)
                x->bad_len = b;
            void *c = realloc(x->bad_ver, cap * sizeof(*x->bad_ver));
            if (c)
                x->bad_ver = c;
            if (!a || !b || !c)
                return true; /* left for a later open */
            x->capbad = cap;
        }
        memcpy(x->bad[x->nbad], it->key, it->klen);
        x->bad_len[x->nbad] = it->klen;
        x->bad_ver[x->nbad] = it->ver;
        x->nbad++;
        return true;
    }
    const swim_member_id *id = it->key;
    hc_target *t = x->last;
    if (!t || memcmp(t->id.b, id->b, SWIM_ID_LEN) != 0)
        t = hc_get(&x->h->core, id);
    if (!t) {
        x->nomem = true;
        return false;
    }
    t->count++;
    x->last = t;
    return true;
}

int kv_hints_open(kv_hints **out, uv_loop_t *loop, const kv_hints_opts *opts, const kv_hints_io *io)
{
    if (!out || !loop || !opts || !opts->dir || !io || !io->send)
        return KV_EINVAL;
    kv_hints *h = calloc(1, sizeof(*h));
    if (!h)
        return KV_ENOMEM;
    h->loop = loop;
    h->io = *io;
    h->max_value = opts->max_value ? opts->max_value : KV_REPL_VALUE_MAX;
    h->max_count = opts->max_count ? opts->max_count : 1000000u;
    h->keep_none = opts->keep_none;
    h->max_bytes = opts->max_bytes ? opts->max_bytes : (1ull << 30);
    h->max_pending = opts->max_pending ? opts->max_pending : 10000u;
    hc_init(&h->core, opts->window, opts->retry_ms, HINT_MAX_BACKOFF);
    h->offered = calloc(h->core.window, sizeof(*h->offered));
    if (!h->offered) {
        free(h);
        return KV_ENOMEM;
    }

    kv_store_opts so = {
        .dir = opts->dir,
        .sync = opts->sync,
        .sync_interval_ms = opts->sync_interval_ms,
        .max_key = HINT_KEY_MAX,
        .max_value = h->max_value + HINT_HDR_LEN,
        .node_id = opts->node_id,
        /* hints are short-lived: not worth the CPU, and bytes then bound what is held */
        .compression_threshold = UINT32_MAX,
    };
    int rc = store_open(&h->store, loop, &so);
    if (rc != KV_OK) {
        hc_fini(&h->core);
        free(h->offered);
        free(h);
        return rc;
    }

    /* Count every target's hints: one walk of the index (memory only). */
    open_scan x = {.h = h};
    store_cursor cur = {0};
    while (!cur.done && !x.nomem)
        if (store_range(h->store, 0, 0, &cur, 0, open_scan_fn, &x) != KV_OK)
            break;
    uv_idle_init(loop, &h->idle);
    h->idle.data = h;
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    for (size_t i = 0; i < x.nbad; i++)
        bad_hint(h, NULL, x.bad[i], x.bad_len[i], &x.bad_ver[i]);
    free(x.bad);
    free(x.bad_len);
    free(x.bad_ver);
    if (x.nomem) {
        kv_hints_close(h, NULL, NULL);
        return KV_ENOMEM;
    }
    refresh_stats(h);
    uint64_t targets = 0;
    for (size_t i = 0; i < h->core.n; i++)
        targets += h->core.targets[i]->count > 0;
    kv_log_info("hint store open", KV_STR("dir", opts->dir), KV_UINT("hints", h->st.count),
                KV_UINT("bytes", h->st.bytes), KV_UINT("targets", targets));
    *out = h;
    return KV_OK;
}

static void close_step(kv_hints *h)
{
    if (--h->close_left > 0)
        return;
    void (*done)(void *) = h->done;
    void *arg = h->done_arg;
    hc_fini(&h->core);
    for (size_t i = 0; i < h->nbuckets; i++) {
        pend_ent *e = h->buckets[i];
        while (e) {
            pend_ent *nx = e->next;
            free(e);
            e = nx;
        }
    }
    free(h->buckets);
    kv_buf_free(&h->vbuf);
    free(h->offered);
    free(h);
    if (done)
        done(arg);
}

static void handle_closed(uv_handle_t *hd)
{
    close_step(hd->data);
}

static void store_closed(void *arg)
{
    close_step(arg);
}

void kv_hints_close(kv_hints *h, void (*done)(void *arg), void *arg)
{
    if (!h || h->closing)
        return;
    h->closing = true;
    h->done = done;
    h->done_arg = arg;
    h->close_left = 3;
    uv_idle_stop(&h->idle);
    uv_timer_stop(&h->timer);
    uv_close((uv_handle_t *)&h->idle, handle_closed);
    uv_close((uv_handle_t *)&h->timer, handle_closed);
    store_close(h->store, store_closed, h);
}
