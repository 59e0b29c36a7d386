/*
 * coord.c — the sans-I/O quorum coordinator (see coord.h). Loop thread only.
 *
 * Design notes.
 *
 * Requests live in a slot array that only grows; freed slots go on a free list and are
 * reused. A request id names its slot, the slot's generation and (for writes) the round:
 *
 *   req_id = gen << 28 | slot << 4 | round        (gen 34 bits, slot 24 bits, round 4 bits)
 *
 * so an ack finds its request in O(1), and an ack for a closed request (the slot's
 * generation moved on) or for an earlier write round is recognised and ignored. The top
 * two bits are always zero (KV_REPL_REQ_MASK: the coordinator's id space). req_id 0 is
 * never used by an open request: repair WRITEs carry it, so their acks are dropped
 * (silently: they are expected, unlike the unknown or late acks counted in acks_ignored).
 *
 * Per request, each target has a state for the current round: not in the request
 * (OUT: a dead primary, an unused fallback), PENDING (sent, no answer yet), ACKED (counts
 * toward the quorum), FAILED (ERROR/NOSPACE/FULL, a nonsensical answer, or reported
 * down), NEWER (a write answered STALE with a newer version after the client was
 * answered: it holds something newer, so it needs no hint). Counters acks / fails /
 * pending over the current round make every quorum and fail-fast decision O(1); finding
 * the sender among the targets is a scan of at most KV_COORD_MAX_TARGETS ids (3 in
 * practice).
 *
 * A request answers the client once (replied) and closes later: when nothing it sent in
 * the current round is pending, or at its deadline. Closing a write hints every primary
 * whose copy of the final version is not known to be stored (by itself or by a fallback
 * standing in for it); closing a read sends read repairs. Deadlines sit in a binary
 * min-heap of slot indices (each slot knows its heap position), so the next deadline is
 * O(1) and removal O(log n).
 *
 * Effects queue up in an array drained by kv_coord_pop. Key and value bytes live in
 * reference-counted blobs: the request holds one reference and every queued effect that
 * points into a blob holds one, so a request may close while its SENDs and HINTs are
 * still queued. The effect last popped keeps its references until the next call into c,
 * which is what makes its pointers valid until then. Every entry point reserves room in
 * the queue for the most effects it can make before it changes any state, so a push
 * never fails half-way (out of memory: the input is dropped and counted; deadlines still
 * fire later).
 */
#include "repl/coord.h"

#include "common/grow.h"
#include "kvstore/error.h"

#include <assert.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define COORD_ROUND_BITS 4
#define COORD_SLOT_BITS  24
#define COORD_GEN_BITS   34
#define COORD_SLOT_MAX   (1u << COORD_SLOT_BITS)
#define COORD_GEN_MASK   ((1ull << COORD_GEN_BITS) - 1)
#define COORD_NONE       UINT32_MAX

_Static_assert(KV_COORD_MAX_ROUNDS < (1u << COORD_ROUND_BITS), "round must fit its bits");
_Static_assert(COORD_ROUND_BITS + COORD_SLOT_BITS + COORD_GEN_BITS == 62,
               "req_id must leave the top two bits (KV_REPL_REQ_MASK) zero");
_Static_assert(KV_COORD_MAX_TARGETS < 127, "stands_for is an int8_t");

/* Bytes shared by a request and the effects that point into them. */
typedef struct coord_blob {
    uint32_t refs;
    uint8_t data[];
} coord_blob;

enum coord_tstate {
    T_OUT = 0, /* not part of the request (this round) */
    T_PENDING,
    T_ACKED,
    T_FAILED,
    T_NEWER,
};

/* What a read answer said (reads only). */
enum coord_rkind {
    R_NONE = 0, /* NOTFOUND, or nothing yet */
    R_VALUE,
    R_TOMB,
    R_EXPIRED,
};

typedef struct coord_tgt {
    swim_member_id id;
    bool alive; /* at submit */
    bool self;
    bool in_set;       /* sent to (every round, unless down) */
    bool down;         /* reported down since submit */
    bool hinted;       /* a HINT of hint_ver went out for this primary */
    int8_t stands_for; /* fallback in a sloppy write: index of the primary, else -1 */
    uint8_t groups;    /* joint quorum: the preference lists it counts for */
    uint8_t state;     /* enum coord_tstate */
    uint8_t rkind;     /* reads: enum coord_rkind of the answer */
    kv_version ver;    /* reads: version answered; writes: hint_ver */
} coord_tgt;

typedef struct coord_req {
    uint64_t gen; /* 0: slot free */
    uint64_t deadline;
    void *client;
    coord_blob *data; /* key, then (writes) the value */
    coord_blob *best; /* reads: the newest value answered */
    size_t klen, vlen;
    kv_version ver;     /* writes: this round's version; reads: the newest answered */
    uint64_t expiry_ms; /* of the record written / the newest answered */
    uint32_t flags;     /* KV_REPL_F_* of the record written / the newest answered */
    uint32_t need, n, n_targets;
    uint32_t acks, fails, pending; /* over the current round */
    uint32_t n_groups;             /* joint quorum (kv_coord_req) */
    uint32_t group_need[KV_COORD_MAX_GROUPS];
    uint32_t heap_idx;
    uint32_t next_free;
    uint8_t op;
    uint8_t round;     /* writes: 1.. */
    uint8_t best_kind; /* reads: enum coord_rkind of ver */
    bool replied;
    bool read_repair;
    bool saw_error, saw_nospace;
    bool saw_newer; /* writes: a replica answered STALE with a newer version this round */
    coord_tgt t[KV_COORD_MAX_TARGETS];
} coord_req;

typedef struct coord_fx {
    kv_coord_effect e;
    coord_blob *ref[2];
} coord_fx;

struct kv_coord {
    kv_hlc hlc;
    uint64_t wall; /* the latest wall_ms any input carried (for rounds started by check) */
    uint64_t next_gen;
    coord_req *slots;
    size_t nslots, slots_cap;
    uint32_t free_head;
    size_t open;
    uint32_t *heap; /* slot indices, min-heap by deadline */
    size_t nheap, heap_cap;
    coord_fx *fx; /* queue: [fx_head, fx_len) */
    size_t fx_head, fx_len, fx_cap;
    coord_fx popped; /* handed out by the last pop; refs released at the next call */
    kv_coord_stats st;
};

/* ---- blobs ---- */

static coord_blob *blob_new(size_t len)
{
    coord_blob *b = malloc(sizeof(*b) + (len ? len : 1));
    if (b)
        b->refs = 1;
    return b;
}

static coord_blob *blob_ref(coord_blob *b)
{
    if (b)
        b->refs++;
    return b;
}

static void blob_unref(coord_blob *b)
{
    if (b && --b->refs == 0)
        free(b);
}

static void release_popped(kv_coord *c)
{
    blob_unref(c->popped.ref[0]);
    blob_unref(c->popped.ref[1]);
    c->popped.ref[0] = c->popped.ref[1] = NULL;
}

/* ---- effect queue ---- */

/* Room for k more effects: after this, k pushes cannot fail. */
static bool fx_reserve(kv_coord *c, size_t k)
{
    if (c->fx_cap - c->fx_len >= k)
        return true;
    if (c->fx_head > 0) {
        memmove(c->fx, c->fx + c->fx_head, (c->fx_len - c->fx_head) * sizeof(*c->fx));
        c->fx_len -= c->fx_head;
        c->fx_head = 0;
        if (c->fx_cap - c->fx_len >= k)
            return true;
    }
    coord_fx *p = kv_grow(c->fx, &c->fx_cap, c->fx_len + k, sizeof(*c->fx), 64);
    if (!p)
        return false;
    c->fx = p;
    return true;
}

static coord_fx *fx_push(kv_coord *c, kv_coord_effect_kind kind)
{
    assert(c->fx_len < c->fx_cap); /* reserved by the entry point */
    coord_fx *f = &c->fx[c->fx_len++];
    memset(f, 0, sizeof(*f));
    f->e.kind = kind;
    return f;
}

/* Most effects one request can make in one step: a new round's sends, a reply, the
 * hints or repairs of its close. */
#define FX_PER_REQ (3 * KV_COORD_MAX_TARGETS + 2)

/* ---- deadline heap ---- */

static bool heap_less(const kv_coord *c, uint32_t a, uint32_t b)
{
    return c->slots[c->heap[a]].deadline < c->slots[c->heap[b]].deadline;
}

static void heap_swap(kv_coord *c, uint32_t a, uint32_t b)
{
    uint32_t x = c->heap[a];
    c->heap[a] = c->heap[b];
    c->heap[b] = x;
    c->slots[c->heap[a]].heap_idx = a;
    c->slots[c->heap[b]].heap_idx = b;
}

static void heap_up(kv_coord *c, uint32_t i)
{
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!heap_less(c, i, p))
            break;
        heap_swap(c, i, p);
        i = p;
    }
}

static void heap_down(kv_coord *c, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < c->nheap && heap_less(c, l, m))
            m = l;
        if (r < c->nheap && heap_less(c, r, m))
            m = r;
        if (m == i)
            return;
        heap_swap(c, i, m);
        i = m;
    }
}

static void heap_push(kv_coord *c, uint32_t slot)
{
    assert(c->nheap < c->heap_cap);
    uint32_t i = (uint32_t)c->nheap++;
    c->heap[i] = slot;
    c->slots[slot].heap_idx = i;
    heap_up(c, i);
}

static void heap_remove(kv_coord *c, uint32_t slot)
{
    uint32_t i = c->slots[slot].heap_idx;
    assert(i < c->nheap && c->heap[i] == slot);
    uint32_t last = (uint32_t)--c->nheap;
    if (i != last) {
        c->heap[i] = c->heap[last];
        c->slots[c->heap[i]].heap_idx = i;
        heap_down(c, i);
        heap_up(c, i);
    }
    c->slots[slot].heap_idx = COORD_NONE;
}

/* ---- lifecycle ---- */

kv_coord *kv_coord_new(uint32_t node_id)
{
    kv_coord *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    kv_hlc_init(&c->hlc, node_id);
    c->next_gen = 1;
    c->free_head = COORD_NONE;
    return c;
}

void kv_coord_free(kv_coord *c)
{
    if (!c)
        return;
    release_popped(c);
    for (size_t i = c->fx_head; i < c->fx_len; i++) {
        blob_unref(c->fx[i].ref[0]);
        blob_unref(c->fx[i].ref[1]);
    }
    for (size_t i = 0; i < c->nslots; i++) {
        if (c->slots[i].gen) {
            blob_unref(c->slots[i].data);
            blob_unref(c->slots[i].best);
        }
    }
    free(c->fx);
    free(c->heap);
    free(c->slots);
    free(c);
}

void kv_coord_seed_ids(kv_coord *c, uint64_t seed)
{
    c->next_gen = seed & COORD_GEN_MASK;
    if (c->next_gen == 0)
        c->next_gen = 1;
}

void kv_coord_observe(kv_coord *c, const kv_version *v, uint64_t wall_ms)
{
    kv_hlc_observe(&c->hlc, v, wall_ms);
}

/* A free slot (KV_ENOMEM when none can be had); the heap has room for it too. */
static int slot_alloc(kv_coord *c, uint32_t *out)
{
    if (c->free_head != COORD_NONE) {
        uint32_t s = c->free_head;
        c->free_head = c->slots[s].next_free;
        *out = s;
        return KV_OK;
    }
    if (c->nslots >= COORD_SLOT_MAX)
        return KV_ENOMEM;
    coord_req *ns = kv_grow(c->slots, &c->slots_cap, c->nslots + 1, sizeof(*c->slots), 16);
    if (!ns)
        return KV_ENOMEM;
    c->slots = ns;
    uint32_t *nh = kv_grow(c->heap, &c->heap_cap, c->nslots + 1, sizeof(*c->heap), 16);
    if (!nh)
        return KV_ENOMEM;
    c->heap = nh;
    c->slots[c->nslots].gen = 0;
    *out = (uint32_t)c->nslots++;
    return KV_OK;
}

static void slot_free(kv_coord *c, uint32_t s)
{
    coord_req *r = &c->slots[s];
    blob_unref(r->data);
    blob_unref(r->best);
    r->data = r->best = NULL;
    r->gen = 0;
    r->next_free = c->free_head;
    c->free_head = s;
    c->open--;
}

static uint64_t req_id_of(const coord_req *r, uint32_t slot)
{
    return r->gen << (COORD_SLOT_BITS + COORD_ROUND_BITS) | (uint64_t)slot << COORD_ROUND_BITS |
           r->round;
}

/* ---- effects of a request ---- */

static void emit_reply(kv_coord *c, coord_req *r, int status, const char *reason)
{
    coord_fx *f = fx_push(c, KV_COORD_REPLY);
    f->e.client = r->client;
    f->e.status = status;
    f->e.needed = r->need;
    f->e.answered = r->acks;
    f->e.reason = reason;
    if (status == KV_OK) {
        f->e.ver = r->ver;
        if (r->op == KV_COORD_GET && r->best) {
            f->ref[0] = blob_ref(r->best);
            f->e.value = r->best->data;
            f->e.vlen = r->vlen;
        }
    } else if (status == KV_ENOTFOUND && r->best_kind == R_TOMB) {
        f->e.ver = r->ver;
    }
    if (status == KV_EUNAVAIL)
        c->st.unavailable++;
    r->replied = true;
}

/* The WRITE of this request's record (writes: our version; reads: the newest answered). */
static void fill_write(coord_fx *f, const coord_req *r, uint64_t req_id)
{
    f->e.msg.type = KV_REPL_WRITE;
    f->e.msg.req_id = req_id;
    f->e.msg.key = r->data->data;
    f->e.msg.klen = r->klen;
    f->e.msg.ver = r->ver;
    f->e.msg.flags = r->flags & KV_REPL_F_TOMBSTONE;
    f->e.msg.expiry_ms = r->expiry_ms;
    f->ref[0] = blob_ref(r->data);
    if (r->flags & KV_REPL_F_TOMBSTONE)
        return;
    if (r->op == KV_COORD_GET) {
        if (r->best) {
            f->ref[1] = blob_ref(r->best);
            f->e.msg.value = r->best->data;
            f->e.msg.vlen = r->vlen;
        }
    } else {
        f->e.msg.value = r->data->data + r->klen;
        f->e.msg.vlen = r->vlen;
    }
}

static void emit_hint(kv_coord *c, coord_req *r, uint32_t primary)
{
    coord_tgt *p = &r->t[primary];
    coord_fx *f = fx_push(c, KV_COORD_HINT);
    f->e.to = p->id;
    fill_write(f, r, 0);
    p->hinted = true;
    p->ver = r->ver;
    c->st.hints++;
}

static void emit_write_send(kv_coord *c, coord_req *r, uint32_t slot, uint32_t i)
{
    coord_tgt *t = &r->t[i];
    coord_fx *f = fx_push(c, KV_COORD_SEND);
    f->e.to = t->id;
    f->e.to_self = t->self;
    fill_write(f, r, req_id_of(r, slot));
    if (t->stands_for >= 0) {
        f->e.msg.has_hint_for = true;
        f->e.msg.hint_for = r->t[t->stands_for].id;
    }
}

/* Send this round's version to every target of the write that is not known down. */
static void write_round(kv_coord *c, coord_req *r, uint32_t slot)
{
    r->acks = r->fails = r->pending = 0;
    r->saw_newer = false;
    for (uint32_t i = 0; i < r->n_targets; i++) {
        coord_tgt *t = &r->t[i];
        if (!t->in_set)
            continue;
        if (t->down) {
            t->state = T_FAILED;
            r->fails++;
            continue;
        }
        t->state = T_PENDING;
        r->pending++;
        emit_write_send(c, r, slot, i);
    }
}

/* Close a write: hint every primary whose copy of the final version is not known to be
 * stored, then free the request. */
static void write_close(kv_coord *c, uint32_t slot)
{
    coord_req *r = &c->slots[slot];
    bool covered[KV_COORD_MAX_TARGETS] = {false};
    for (uint32_t i = 0; i < r->n_targets; i++) {
        const coord_tgt *t = &r->t[i];
        if (t->state != T_ACKED && t->state != T_NEWER)
            continue;
        covered[t->stands_for >= 0 ? (uint32_t)t->stands_for : i] = true;
    }
    for (uint32_t i = 0; i < r->n; i++) {
        const coord_tgt *p = &r->t[i];
        if (covered[i] || (p->hinted && kv_version_cmp(&p->ver, &r->ver) == 0))
            continue;
        emit_hint(c, r, i);
    }
    heap_remove(c, slot);
    slot_free(c, slot);
}

/* Close a read: repair every replica that answered something older than the newest. */
static void read_close(kv_coord *c, uint32_t slot)
{
    coord_req *r = &c->slots[slot];
    if (r->read_repair && (r->best_kind == R_VALUE || r->best_kind == R_TOMB)) {
        for (uint32_t i = 0; i < r->n; i++) {
            const coord_tgt *t = &r->t[i];
            if (t->state != T_ACKED || kv_version_cmp(&t->ver, &r->ver) >= 0)
                continue;
            coord_fx *f = fx_push(c, KV_COORD_SEND);
            f->e.to = t->id;
            f->e.to_self = t->self;
            fill_write(f, r, 0);
            c->st.read_repairs++;
        }
    }
    heap_remove(c, slot);
    slot_free(c, slot);
}

/* Status of a quorum that failed because too many replicas failed or went away. */
static void reply_failed(kv_coord *c, coord_req *r)
{
    if (r->saw_nospace)
        emit_reply(c, r, KV_ENOSPC, NULL);
    else if (r->saw_error)
        emit_reply(c, r, KV_EIO, NULL);
    else
        emit_reply(c, r, KV_EUNAVAIL, "not_enough_replicas");
}

/*
 * A write round can no longer reach W and some replica holds a newer version: start a new
 * round with a version above everything seen (the clock merged it), or give up after
 * KV_COORD_MAX_ROUNDS. True when a new round went out.
 */
static bool write_bump(kv_coord *c, coord_req *r, uint32_t slot)
{
    if (r->round >= KV_COORD_MAX_ROUNDS) {
        emit_reply(c, r, KV_EUNAVAIL, "contended");
        return false;
    }
    if (kv_hlc_exhausted(&c->hlc, c->wall)) {
        emit_reply(c, r, KV_EIO, NULL);
        return false;
    }
    r->round++;
    c->st.rounds_extra++;
    /* Lead the wall clock a little: fresh writes of the same key that start in the next
     * few milliseconds elsewhere then lose to this retry instead of overtaking it again,
     * so a hot key does not starve a writer round after round. The lead is relative to
     * now (not to the version overtaken), so the clocks never drift further ahead than
     * KV_COORD_BUMP_LEAD_MS. */
    r->ver = kv_hlc_now(&c->hlc, c->wall + KV_COORD_BUMP_LEAD_MS);
    write_round(c, r, slot);
    return true;
}

/* Joint quorum: are acknowledgements enough in every list (met), or can some list no
 * longer get enough with what is pending (lost)? */
static void groups_state(const coord_req *r, bool *met, bool *lost)
{
    uint32_t acked[KV_COORD_MAX_GROUPS] = {0}, open[KV_COORD_MAX_GROUPS] = {0};
    for (uint32_t i = 0; i < r->n_targets; i++) {
        const coord_tgt *t = &r->t[i];
        uint8_t g = t->stands_for >= 0 ? r->t[t->stands_for].groups : t->groups;
        for (uint32_t k = 0; k < r->n_groups; k++) {
            if (!(g & (1u << k)))
                continue;
            acked[k] += t->state == T_ACKED;
            open[k] += t->state == T_PENDING;
        }
    }
    *met = true;
    *lost = false;
    for (uint32_t k = 0; k < r->n_groups; k++) {
        *met = *met && acked[k] >= r->group_need[k];
        *lost = *lost || acked[k] + open[k] < r->group_need[k];
    }
}

static bool quorum_met(const coord_req *r)
{
    if (!r->n_groups)
        return r->acks >= r->need;
    bool met, lost;
    groups_state(r, &met, &lost);
    return met;
}

static bool quorum_lost(const coord_req *r)
{
    if (!r->n_groups)
        return r->acks + r->pending < r->need;
    bool met, lost;
    groups_state(r, &met, &lost);
    return lost && !met;
}

/*
 * After any change to a request: answer the client when the quorum is reached or can no
 * longer be, and close when nothing is pending.
 *
 * Writes: W acknowledgements of one version are enough, even when another replica
 * answered STALE with a newer version meanwhile. The W that acknowledged include one of
 * the W that acknowledged any write finished before ours began (two quorums intersect),
 * and that one accepted our version only because it is newer than that write's — which
 * is all the real-time-order promise needs; the newer version seen elsewhere belongs to a
 * concurrent write, which may be ordered after ours. Only when the round can no longer
 * reach W and a newer version was among the refusals does the write go round again.
 */
static void check(kv_coord *c, uint32_t slot)
{
    coord_req *r = &c->slots[slot];
    if (!r->replied) {
        if (quorum_met(r)) {
            if (r->op != KV_COORD_GET)
                emit_reply(c, r, KV_OK, NULL);
            else if (r->best_kind == R_VALUE)
                emit_reply(c, r, KV_OK, NULL);
            else
                emit_reply(c, r, KV_ENOTFOUND, NULL);
        } else if (quorum_lost(r)) {
            if (r->op == KV_COORD_GET || !r->saw_newer || !write_bump(c, r, slot)) {
                if (!r->replied)
                    reply_failed(c, r);
            } else if (quorum_lost(r)) {
                /* the new round reaches too few replicas (all known down) */
                reply_failed(c, r);
            }
        }
    }
    if (r->pending == 0) {
        assert(r->replied);
        if (r->op == KV_COORD_GET)
            read_close(c, slot);
        else
            write_close(c, slot);
    }
}

/* ---- submit ---- */

static int validate(const kv_coord_req *q)
{
    if (!q || (q->op != KV_COORD_GET && q->op != KV_COORD_PUT && q->op != KV_COORD_DELETE))
        return KV_EINVAL;
    if (!q->key || q->klen < 1 || q->klen > KV_REPL_KEY_MAX)
        return KV_EINVAL;
    if (q->op == KV_COORD_PUT && ((q->vlen && !q->value) || q->vlen > KV_REPL_VALUE_MAX))
        return KV_EINVAL;
    if (q->n < 1 || q->need < 1 || q->need > q->n || q->n_targets < q->n ||
        q->n_targets > KV_COORD_MAX_TARGETS || !q->targets || q->n_groups > KV_COORD_MAX_GROUPS)
        return KV_EINVAL;
    for (uint32_t k = 0; k < q->n_groups; k++)
        if (q->group_need[k] < 1 || q->group_need[k] > q->n)
            return KV_EINVAL;
    return KV_OK;
}

/* Answer at once without opening a request (nothing was sent). */
static void reply_now(kv_coord *c, const kv_coord_req *q, int status, const char *reason)
{
    coord_fx *f = fx_push(c, KV_COORD_REPLY);
    f->e.client = q->client;
    f->e.status = status;
    f->e.needed = q->need;
    f->e.reason = reason;
    if (status == KV_EUNAVAIL)
        c->st.unavailable++;
}

int kv_coord_submit(kv_coord *c, uint64_t now, uint64_t wall_ms, const kv_coord_req *q)
{
    if (wall_ms > c->wall)
        c->wall = wall_ms;
    release_popped(c);
    int rc = validate(q);
    if (rc != KV_OK)
        return rc;
    if (!fx_reserve(c, FX_PER_REQ))
        return KV_ENOMEM;
    bool write = q->op != KV_COORD_GET;

    /* Who can take part: alive primaries, and for a sloppy write one alive fallback per
     * dead primary, taken in ring order. */
    int8_t stand_in[KV_COORD_MAX_TARGETS]; /* primary i → fallback index, or -1 */
    uint32_t usable = 0, fb = q->n;
    for (uint32_t i = 0; i < q->n; i++) {
        stand_in[i] = -1;
        if (q->targets[i].alive) {
            usable++;
            continue;
        }
        if (!write || !q->sloppy)
            continue;
        while (fb < q->n_targets && !q->targets[fb].alive)
            fb++;
        if (fb < q->n_targets) {
            stand_in[i] = (int8_t)fb++;
            usable++;
        }
    }
    if (write)
        c->st.writes++;
    else
        c->st.reads++;
    bool groups_short = false;
    for (uint32_t k = 0; write && k < q->n_groups; k++) {
        uint32_t u = 0;
        for (uint32_t i = 0; i < q->n; i++)
            u += (q->targets[i].groups & (1u << k)) && (q->targets[i].alive || stand_in[i] >= 0);
        groups_short = groups_short || u < q->group_need[k];
    }
    if (usable < q->need || groups_short) {
        reply_now(c, q, KV_EUNAVAIL, "not_enough_replicas");
        return KV_OK;
    }
    if (write && kv_hlc_exhausted(&c->hlc, wall_ms)) {
        reply_now(c, q, KV_EIO, NULL);
        return KV_OK;
    }

    size_t vlen = q->op == KV_COORD_PUT ? q->vlen : 0;
    coord_blob *data = blob_new(q->klen + vlen);
    if (!data)
        return KV_ENOMEM;
    uint32_t slot;
    if (slot_alloc(c, &slot) != KV_OK) {
        blob_unref(data);
        return KV_ENOMEM;
    }
    memcpy(data->data, q->key, q->klen);
    if (vlen)
        memcpy(data->data + q->klen, q->value, vlen);

    coord_req *r = &c->slots[slot];
    memset(r, 0, offsetof(coord_req, t));
    r->gen = c->next_gen;
    c->next_gen = (c->next_gen + 1) & COORD_GEN_MASK;
    if (c->next_gen == 0)
        c->next_gen = 1;
    r->deadline = now + q->timeout_ms < now ? UINT64_MAX : now + q->timeout_ms;
    r->client = q->client;
    r->data = data;
    r->klen = q->klen;
    r->vlen = vlen;
    r->need = q->need;
    r->n = q->n;
    r->n_targets = q->n_targets;
    r->n_groups = write ? q->n_groups : 0;
    for (uint32_t k = 0; k < r->n_groups; k++)
        r->group_need[k] = q->group_need[k];
    r->op = (uint8_t)q->op;
    r->read_repair = q->read_repair;
    r->heap_idx = COORD_NONE;
    c->open++;
    for (uint32_t i = 0; i < q->n_targets; i++) {
        coord_tgt *t = &r->t[i];
        memset(t, 0, sizeof(*t));
        t->id = q->targets[i].id;
        t->alive = q->targets[i].alive;
        t->self = q->targets[i].self;
        t->groups = i < q->n ? q->targets[i].groups : 0;
        t->stands_for = -1;
    }
    heap_push(c, slot);

    if (!write) {
        for (uint32_t i = 0; i < q->n; i++) {
            coord_tgt *t = &r->t[i];
            if (!t->alive)
                continue;
            t->in_set = true;
            t->state = T_PENDING;
            r->pending++;
            coord_fx *f = fx_push(c, KV_COORD_SEND);
            f->e.to = t->id;
            f->e.to_self = t->self;
            f->e.msg.type = KV_REPL_READ;
            f->e.msg.req_id = req_id_of(r, slot);
            f->e.msg.key = data->data;
            f->e.msg.klen = q->klen;
            f->ref[0] = blob_ref(data);
        }
        return KV_OK;
    }

    r->round = 1;
    r->ver = kv_hlc_now(&c->hlc, wall_ms);
    if (q->op == KV_COORD_DELETE) {
        r->flags = KV_REPL_F_TOMBSTONE;
    } else {
        r->expiry_ms = q->expiry_ms;
    }
    for (uint32_t i = 0; i < q->n; i++) {
        if (r->t[i].alive) {
            r->t[i].in_set = true;
        } else if (stand_in[i] >= 0) {
            r->t[stand_in[i]].in_set = true;
            r->t[stand_in[i]].stands_for = (int8_t)i;
        } else {
            emit_hint(c, r, i);
        }
    }
    write_round(c, r, slot);
    return KV_OK;
}

/* ---- acks ---- */

static int find_target(const coord_req *r, const swim_member_id *from)
{
    for (uint32_t i = 0; i < r->n_targets; i++) {
        if (r->t[i].in_set && memcmp(&r->t[i].id, from, sizeof(*from)) == 0)
            return (int)i;
    }
    return -1;
}

static void target_failed(coord_req *r, coord_tgt *t)
{
    t->state = T_FAILED;
    r->pending--;
    r->fails++;
}

/* A write's target answered in the current round. */
static void on_write_ack(kv_coord *c, uint32_t slot, uint32_t i, const kv_repl_msg *ack,
                         uint64_t wall_ms)
{
    coord_req *r = &c->slots[slot];
    coord_tgt *t = &r->t[i];
    int cmp = kv_version_cmp(&ack->ver, &r->ver);
    switch (ack->status) {
    case KV_REPL_OK:
    case KV_REPL_STALE:
        if (cmp == 0) {
            t->state = T_ACKED;
            r->pending--;
            r->acks++;
            break;
        }
        if (cmp < 0 || ack->status == KV_REPL_OK) {
            /* A replica claiming to hold an older version than we sent, or to have
             * stored another version than ours: broken; not an acknowledgement. */
            r->saw_error = true;
            target_failed(r, t);
            break;
        }
        /* STALE with a newer version: this replica holds a write newer than ours. It
         * does not count toward W; check() starts a new round above it if the others
         * cannot make W without it. */
        t->state = T_NEWER;
        r->pending--;
        if (!r->replied)
            r->saw_newer = true;
        break;
    case KV_REPL_NOSPACE:
        r->saw_nospace = true;
        target_failed(r, t);
        break;
    case KV_REPL_ERROR:
        r->saw_error = true;
        target_failed(r, t);
        break;
    case KV_REPL_FULL:
    default:
        target_failed(r, t);
        break;
    }
    check(c, slot);
}

/* Is answer (ver, kind) newer than the read's newest so far? At an equal version (the
 * same write) an expired answer wins over a live one: some replica's clock says the TTL
 * passed, so the value is not served. */
static bool read_newer(const coord_req *r, const kv_version *ver, uint8_t kind)
{
    if (r->best_kind == R_NONE && kind == R_NONE)
        return false;
    int cmp = kv_version_cmp(ver, &r->ver);
    return cmp > 0 || (cmp == 0 && kind == R_EXPIRED && r->best_kind == R_VALUE);
}

static void on_read_ack(kv_coord *c, uint32_t slot, uint32_t i, const kv_repl_msg *ack)
{
    coord_req *r = &c->slots[slot];
    coord_tgt *t = &r->t[i];
    uint8_t kind;
    if (ack->status == KV_REPL_NOTFOUND) {
        kind = R_NONE;
    } else if (ack->status == KV_REPL_OK) {
        kind = ack->flags & KV_REPL_F_TOMBSTONE ? R_TOMB
               : ack->flags & KV_REPL_F_EXPIRED ? R_EXPIRED
                                                : R_VALUE;
    } else {
        /* ERROR, or a status a READ cannot have: the replica failed. */
        r->saw_error = true;
        target_failed(r, t);
        check(c, slot);
        return;
    }
    kv_version ver = kind == R_NONE ? (kv_version){0, 0} : ack->ver;
    if (read_newer(r, &ver, kind)) {
        coord_blob *b = NULL;
        size_t vlen = kind == R_VALUE ? ack->vlen : 0;
        if (kind == R_VALUE) {
            if (vlen > KV_REPL_VALUE_MAX || (vlen && !ack->value) || !(b = blob_new(vlen))) {
                /* Cannot keep the value: as if the answer never came (the deadline still
                 * answers the client). */
                c->st.acks_ignored++;
                return;
            }
            if (vlen)
                memcpy(b->data, ack->value, vlen);
        }
        blob_unref(r->best);
        r->best = b;
        r->vlen = vlen;
        r->ver = ver;
        r->best_kind = kind;
        r->flags = kind == R_TOMB ? KV_REPL_F_TOMBSTONE : 0;
        r->expiry_ms = kind == R_TOMB ? 0 : ack->expiry_ms;
    }
    t->state = T_ACKED;
    t->rkind = kind;
    t->ver = ver;
    r->pending--;
    r->acks++;
    check(c, slot);
}

void kv_coord_on_ack(kv_coord *c, uint64_t now, uint64_t wall_ms, const swim_member_id *from,
                     const kv_repl_msg *ack)
{
    if (wall_ms > c->wall)
        c->wall = wall_ms;
    (void)now;
    release_popped(c);
    uint64_t id = ack->req_id;
    if (id == 0)
        return; /* a read repair's ack: expected, nobody waits for it (not counted) */
    uint64_t gen = id >> (COORD_SLOT_BITS + COORD_ROUND_BITS);
    uint32_t slot = (uint32_t)(id >> COORD_ROUND_BITS) & (COORD_SLOT_MAX - 1);
    uint32_t round = (uint32_t)id & ((1u << COORD_ROUND_BITS) - 1);
    coord_req *r = slot < c->nslots ? &c->slots[slot] : NULL;
    bool is_read = ack->type == KV_REPL_READ_ACK;
    if ((id & KV_REPL_REQ_MASK) || gen == 0 || !r || r->gen != gen ||
        (ack->type != KV_REPL_WRITE_ACK && !is_read) || is_read != (r->op == KV_COORD_GET)) {
        c->st.acks_ignored++;
        return;
    }
    int i = find_target(r, from);
    if (i < 0) {
        c->st.acks_ignored++;
        return;
    }
    /* Every version a replica reports moves the clock, even from an answer that no
     * longer counts: later writes of this node start above it. */
    if (ack->status == KV_REPL_OK || ack->status == KV_REPL_STALE)
        kv_hlc_observe(&c->hlc, &ack->ver, wall_ms);
    if (round != r->round || r->t[i].state != T_PENDING) {
        c->st.acks_ignored++;
        return;
    }
    if (!fx_reserve(c, FX_PER_REQ)) {
        c->st.acks_ignored++;
        return;
    }
    if (is_read)
        on_read_ack(c, slot, (uint32_t)i, ack);
    else
        on_write_ack(c, slot, (uint32_t)i, ack, wall_ms);
}

/* ---- member down, timers ---- */

void kv_coord_on_member_down(kv_coord *c, uint64_t now, const swim_member_id *id)
{
    (void)now;
    release_popped(c);
    for (uint32_t s = 0; s < c->nslots; s++) {
        coord_req *r = &c->slots[s];
        if (!r->gen)
            continue;
        for (uint32_t i = 0; i < r->n_targets; i++) {
            coord_tgt *t = &r->t[i];
            if (!t->in_set || t->down || memcmp(&t->id, id, sizeof(*id)) != 0)
                continue;
            if (!fx_reserve(c, FX_PER_REQ))
                return; /* its deadline still ends it */
            t->down = true;
            if (t->state != T_PENDING)
                continue;
            target_failed(r, t);
            if (r->op != KV_COORD_GET) {
                uint32_t p = t->stands_for >= 0 ? (uint32_t)t->stands_for : i;
                if (!r->t[p].hinted || kv_version_cmp(&r->t[p].ver, &r->ver) != 0)
                    emit_hint(c, r, p);
            }
            check(c, s);
            if (!r->gen)
                break; /* closed */
        }
    }
}

void kv_coord_tick(kv_coord *c, uint64_t now, uint64_t wall_ms)
{
    if (wall_ms > c->wall)
        c->wall = wall_ms;
    release_popped(c);
    while (c->nheap > 0) {
        uint32_t s = c->heap[0];
        coord_req *r = &c->slots[s];
        if (r->deadline > now)
            break;
        if (!fx_reserve(c, FX_PER_REQ))
            return; /* out of memory: the next tick tries again */
        if (!r->replied) {
            c->st.timeouts++;
            emit_reply(c, r, KV_EUNAVAIL, "timeout");
        }
        if (r->op == KV_COORD_GET)
            read_close(c, s);
        else
            write_close(c, s);
    }
}

uint64_t kv_coord_next_deadline(const kv_coord *c)
{
    return c->nheap ? c->slots[c->heap[0]].deadline : UINT64_MAX;
}

bool kv_coord_pop(kv_coord *c, kv_coord_effect *out)
{
    release_popped(c);
    if (c->fx_head == c->fx_len) {
        c->fx_head = c->fx_len = 0;
        return false;
    }
    c->popped = c->fx[c->fx_head++];
    *out = c->popped.e;
    return true;
}

size_t kv_coord_inflight(const kv_coord *c)
{
    return c->open;
}

void kv_coord_get_stats(const kv_coord *c, kv_coord_stats *out)
{
    *out = c->st;
}
