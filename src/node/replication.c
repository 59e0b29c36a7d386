/*
 * replication.c — the replication adapter (see replication.h): the thin I/O shell around
 * the sans-I/O parts in src/repl and src/ring. Loop thread only.
 *
 * Design notes:
 *   Ring. Rebuilt from the SWIM member table whenever membership reports a change: every
 *   member that has not left and is not `removed` is on the ring — dead ones included, so
 *   a crash does not move data (their writes become hints until they return; DESIGN §6).
 *   A cluster with fewer ring members than replication.n keeps one copy per member; the
 *   default r and w are then capped at that number (a single node works on its own),
 *   while an explicit ?r=/?w= above it fails with 503 like any unreachable quorum.
 *
 *   Every replica operation goes through the same path, the local one included: the
 *   coordinator's SEND to this node is served from the local store through the same ack
 *   input as a remote answer. Local writes use store_apply (the coordinator chose the
 *   version), so the store's own clock only ever merges versions.
 *
 *   Batching. Messages for one peer are appended to that peer's open batch; batches are
 *   sent from a uv_prepare handle, right before the loop blocks for I/O, so everything
 *   that became ready in one loop turn — acks for a whole group commit, the sends of many
 *   client requests read from one socket burst, timers — leaves as one nng message. (A
 *   second flush right after polling, from a uv_check handle, was measured: it made
 *   batches 10 % smaller and throughput 9 % lower — every nng message costs several
 *   thread hand-offs.) replication.batching: false sends each message at once (for
 *   measuring the effect).
 */
#include "node/replication.h"
#include "node/join.h"
#include "node/leave.h"
#include "node/sync.h"

#include "common/buf.h"
#include "common/hash.h"
#include "common/hex.h"
#include "common/log.h"
#include "kvstore/error.h"
#include "repl/coord.h"
#include "repl/hints.h"
#include "repl/listing.h"
#include "repl/msg.h"
#include "ring/ring.h"
#include "swim/swim.h"

#include <http_parser.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define REPL_BATCH_BYTES   (1u << 20) /* start a new batch past this */
#define REPL_PEER_BUCKETS  64
#define REPL_MAX_FALLBACKS 8
#define REPL_JOIN_WAIT_MS  10000       /* see repl_joining */
#define REPL_MAX_SCANS     16          /* local listing scans at once (peers' LISTs included) */
#define REPL_KEEP_BUF      (64u << 10) /* a peer's batch buffer above this is freed after use */

/* One peer's outgoing batch. */
typedef struct repl_peer {
    struct repl_peer *next;      /* hash chain */
    struct repl_peer *next_open; /* list of peers with an open batch */
    char addr[SWIM_ADDR_MAX + 1];
    kv_buf buf;
    kv_repl_batch_w w;
    bool open;
} repl_peer;

/* A cluster-wide listing in progress. */
typedef struct repl_list_req {
    struct repl_list_req *next;
    kv_repl *r;
    kv_http_req *http;
    kv_list_merge *merge;
    uint64_t id; /* KV_REPL_REQ_LIST | n */
    uint32_t waiting, asked, answered;
    uint32_t limit;            /* the page size asked: longer answers are cut */
    swim_member_id *asked_ids; /* every alive ring member, ourselves included */
    bool *answered_ids;
    uv_timer_t timer;
    bool done;
} repl_list_req;

/* A node-local scan serving a LIST (from a peer, or for our own listing request). */
typedef struct repl_scan {
    struct repl_scan *next;
    kv_repl *r;
    kv_list_scan *scan;
    uint64_t req_id;
    char to[SWIM_ADDR_MAX + 1]; /* "" = our own listing request */
} repl_scan;

/* A store_apply on behalf of a peer's (or our own coordinator's) WRITE. */
typedef struct repl_apply {
    kv_repl *r;
    uint64_t req_id;
    bool local;     /* the ack goes to our own coordinator */
    kv_version ver; /* hint_for: the version kept */
    char to[SWIM_ADDR_MAX + 1];
} repl_apply;

struct kv_repl {
    uv_loop_t *loop;
    const kv_config *cfg;
    kv_store *store;
    kv_membership *memb;
    kv_metrics *metrics;
    uint32_t node_id;
    swim_member_id self;
    char self_addr[SWIM_ADDR_MAX + 1];

    kv_ring *ring;       /* read ring: members that hold their ranges' data */
    kv_ring *wring;      /* write ring when it differs (members joining/leaving), or NULL */
    kv_ring *prev;       /* the read ring before the last change, until prev_until */
    uint64_t prev_until; /* ms (loop clock) */
    kv_coord *coord;
    kv_hints *hints;
    kv_sync *sync;   /* anti-entropy and range pulls */
    kv_join *join;   /* while joining: streaming our ranges */
    kv_leave *leave; /* while leaving: handing our ranges over */
    void (*left_cb)(void *);
    void *left_arg;
    uv_timer_t coord_timer;
    uv_prepare_t prep;
    uv_idle_t scan_idle;
    bool batching;

    repl_peer *peers[REPL_PEER_BUCKETS];
    repl_peer *open_peers;
    kv_repl_batch rx;

    /* liveness as last told to the coordinator and the hints: id → alive */
    struct {
        swim_member_id id;
        bool alive;
    } * live;
    size_t n_live, cap_live;

    repl_list_req *lists;
    uint64_t next_list_id;
    repl_scan *scans;

    bool wait_for_join; /* cluster.seeds names another node and none is known yet */
    uint64_t start_ms;
    bool closing;
    int pending; /* store applies in flight, scans, list requests, handles */
    void (*close_cb)(void *);
    void *close_arg;

    /* counters */
    uint64_t batches_sent, msgs_sent, send_drops, rx_batches, rx_msgs, rx_dropped;
    uint64_t applies_remote, reads_remote, hint_writes_refused, ring_rebuilds;
    uint64_t joint_writes; /* writes sent to more than one preference list (ring changing) */
    uint64_t scans_refused, bad_hint_for;
    uint64_t refused_not_alive; /* 503 before any replica was asked */
    size_t n_scans;
};

/* ---------- small helpers ---------- */

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint32_t addr_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static void repl_drain(kv_repl *r);
static void repl_maybe_closed(kv_repl *r);

/* ---------- sending: per-peer batches ---------- */

static repl_peer *peer_get(kv_repl *r, const char *addr)
{
    uint32_t b = addr_hash(addr) % REPL_PEER_BUCKETS;
    for (repl_peer *p = r->peers[b]; p; p = p->next)
        if (strcmp(p->addr, addr) == 0)
            return p;
    repl_peer *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    snprintf(p->addr, sizeof(p->addr), "%s", addr);
    p->next = r->peers[b];
    r->peers[b] = p;
    return p;
}

static void peer_flush(kv_repl *r, repl_peer *p)
{
    if (!p->open)
        return;
    p->open = false;
    if (kv_repl_batch_end(&p->w) != KV_OK) {
        r->send_drops += p->w.count;
        return;
    }
    int rc = kv_membership_send_repl(r->memb, p->addr, p->buf.data, p->buf.len);
    if (rc == KV_OK) {
        r->batches_sent++;
        r->msgs_sent += p->w.count;
    } else {
        /* The request that needed it times out (and hints); nothing else to do. */
        r->send_drops += p->w.count;
        kv_log_debug("replica batch dropped", KV_STR("peer", p->addr), KV_UINT("msgs", p->w.count),
                     KV_ERR(rc));
    }
    if (p->buf.cap > REPL_KEEP_BUF) /* do not keep a big buffer per peer */
        kv_buf_free(&p->buf);
}

static void flush_all(kv_repl *r)
{
    while (r->open_peers) {
        repl_peer *p = r->open_peers;
        r->open_peers = p->next_open;
        p->next_open = NULL;
        peer_flush(r, p);
    }
}

static void on_prepare(uv_prepare_t *h)
{
    flush_all(h->data);
}

/* Queue m for the peer at addr. KV_OK or an error (the message is dropped). */
static int send_to_addr(kv_repl *r, const char *addr, const kv_repl_msg *m)
{
    if (!addr || !*addr)
        return KV_EINVAL;
    repl_peer *p = peer_get(r, addr);
    if (!p)
        return KV_ENOMEM;
    if (p->open && p->buf.len + kv_repl_msg_wire_bound(m) > REPL_BATCH_BYTES) {
        /* Full: send it now and start another (it stays on the open list). */
        peer_flush(r, p);
        p->open = true;
        kv_repl_batch_begin(&p->w, &p->buf, &r->self, r->self_addr);
    }
    if (!p->open) {
        p->open = true;
        kv_repl_batch_begin(&p->w, &p->buf, &r->self, r->self_addr);
        p->next_open = r->open_peers;
        r->open_peers = p;
    }
    int rc = kv_repl_batch_add(&p->w, m);
    if (rc == KV_ETOOBIG) {
        peer_flush(r, p);
        p->open = true;
        kv_repl_batch_begin(&p->w, &p->buf, &r->self, r->self_addr);
        rc = kv_repl_batch_add(&p->w, m);
    }
    if (rc != KV_OK) {
        r->send_drops++;
        return rc;
    }
    if (!r->batching) {
        /* unbatched: out at once (still through the open list bookkeeping) */
        repl_peer **pp = &r->open_peers;
        while (*pp && *pp != p)
            pp = &(*pp)->next_open;
        if (*pp)
            *pp = p->next_open;
        p->next_open = NULL;
        peer_flush(r, p);
    }
    return KV_OK;
}

static const char *member_addr(kv_repl *r, const swim_member_id *id)
{
    const swim_member *m = swim_member_find(kv_membership_core(r->memb), id);
    return m ? m->node.addr : NULL;
}

static bool member_alive(kv_repl *r, const swim_member_id *id)
{
    if (swim_id_equal(id, &r->self))
        return true;
    const swim_member *m = swim_member_find(kv_membership_core(r->memb), id);
    return m && (m->node.state == SWIM_ALIVE || m->node.state == SWIM_SUSPECT);
}

/* ---------- the replica side: serving WRITE and READ from the local store ---------- */

static kv_repl_status status_of(int err)
{
    return err == KV_ENOSPC ? KV_REPL_NOSPACE : KV_REPL_ERROR;
}

/* Deliver an ack: to our own coordinator (local) or into the peer's batch. */
static void deliver_ack(kv_repl *r, bool local, const char *to, const kv_repl_msg *ack)
{
    if (local) {
        if (!r->coord)
            return;
        kv_coord_on_ack(r->coord, uv_now(r->loop), wall_ms(), &r->self, ack);
        repl_drain(r);
    } else {
        send_to_addr(r, to, ack);
    }
}

static void on_apply_done(void *arg, int status, const kv_version *ver)
{
    repl_apply *a = arg;
    kv_repl *r = a->r;
    kv_repl_msg ack = {.type = KV_REPL_WRITE_ACK, .req_id = a->req_id};
    if (status == KV_OK) {
        ack.status = KV_REPL_OK;
        ack.ver = *ver;
    } else if (status == KV_ESTALE) {
        ack.status = KV_REPL_STALE;
        ack.ver = *ver;
    } else {
        ack.status = status_of(status);
    }
    if (!r->closing || a->local)
        deliver_ack(r, a->local, a->to, &ack);
    free(a);
    r->pending--;
    repl_maybe_closed(r);
}

static void on_hint_for_done(void *arg, int status)
{
    repl_apply *a = arg;
    kv_repl *r = a->r;
    kv_repl_msg ack = {.type = KV_REPL_WRITE_ACK, .req_id = a->req_id, .ver = a->ver};
    ack.status = status == KV_OK ? KV_REPL_OK : status_of(status);
    if (!r->closing || a->local)
        deliver_ack(r, a->local, a->to, &ack);
    free(a);
    r->pending--;
    repl_maybe_closed(r);
}

/* The record of a replica write in flight: whom to answer (to, or our own coordinator when
 * local) once the store (or the hint store) has it. NULL when out of memory. */
static repl_apply *apply_new(kv_repl *r, bool local, const char *to, const kv_repl_msg *m)
{
    repl_apply *a = malloc(sizeof(*a));
    if (!a)
        return NULL;
    a->r = r;
    a->req_id = m->req_id;
    a->local = local;
    a->ver = m->ver;
    size_t tolen = to ? strnlen(to, SWIM_ADDR_MAX) : 0;
    memcpy(a->to, to ? to : "", tolen);
    a->to[tolen] = '\0';
    return a;
}

/*
 * Sloppy quorum: we are a fallback keeping the write for hint_for, a ring member that is
 * down. The acknowledgement counts toward W, so it waits until the hint is as durable as
 * storage.sync promises. A hint_for that is not on the ring (or is us) would never be
 * delivered: refused, counted, logged.
 */
static void serve_hint_for(kv_repl *r, bool local, const char *to, const kv_repl_msg *m)
{
    kv_repl_msg ack = {.type = KV_REPL_WRITE_ACK, .req_id = m->req_id, .ver = m->ver};
    if (swim_id_equal(&m->hint_for, &r->self) || !r->ring ||
        kv_ring_find(r->ring, &m->hint_for) < 0) {
        r->bad_hint_for++;
        kv_log_warn("replica write for an unknown member refused",
                    KV_STR("from", to ? to : "self"));
        ack.status = KV_REPL_ERROR;
        deliver_ack(r, local, to, &ack);
        return;
    }
    repl_apply *a = apply_new(r, local, to, m);
    if (!a) {
        ack.status = KV_REPL_ERROR;
        deliver_ack(r, local, to, &ack);
        return;
    }
    int rc = kv_hints_add_durable(r->hints, &m->hint_for, m, on_hint_for_done, a);
    if (rc != KV_OK) {
        free(a);
        ack.status = rc == KV_EUNAVAIL ? KV_REPL_FULL : KV_REPL_ERROR;
        deliver_ack(r, local, to, &ack);
        return;
    }
    r->pending++;
}

/* Apply a WRITE to the local store (or keep it as a hint when it is one); the ack goes
 * back through deliver_ack. */
static void serve_write(kv_repl *r, bool local, const char *to, const kv_repl_msg *m)
{
    kv_repl_msg ack = {.type = KV_REPL_WRITE_ACK, .req_id = m->req_id};
    if (m->has_hint_for) {
        serve_hint_for(r, local, to, m);
        return;
    }
    repl_apply *a = apply_new(r, local, to, m);
    if (!a) {
        ack.status = KV_REPL_ERROR;
        deliver_ack(r, local, to, &ack);
        return;
    }
    bool tomb = (m->flags & KV_REPL_F_TOMBSTONE) != 0;
    int rc = store_apply(r->store, m->key, m->klen, m->value, m->vlen, m->expiry_ms, &m->ver, tomb,
                         on_apply_done, a);
    if (rc != KV_OK) {
        free(a);
        ack.status = status_of(rc);
        kv_log_debug("replica write refused", KV_ERR(rc), KV_UINT("klen", m->klen));
        deliver_ack(r, local, to, &ack);
        return;
    }
    r->pending++;
}

/* Answer a READ from the local store. */
static void serve_read(kv_repl *r, bool local, const char *to, const kv_repl_msg *m)
{
    kv_repl_msg ack = {.type = KV_REPL_READ_ACK, .req_id = m->req_id};
    kv_store_meta meta;
    kv_buf val = KV_BUF_INIT;
    int rc = store_get_meta(r->store, m->key, m->klen, &meta);
    if (rc == KV_ENOTFOUND) {
        ack.status = KV_REPL_NOTFOUND;
    } else if (rc != KV_OK) {
        ack.status = KV_REPL_ERROR;
    } else if (meta.tombstone || meta.expired) {
        ack.status = KV_REPL_OK;
        ack.ver = meta.ver;
        ack.flags = meta.tombstone ? KV_REPL_F_TOMBSTONE : KV_REPL_F_EXPIRED;
        ack.expiry_ms = meta.expiry_ms;
    } else {
        kv_version ver;
        rc = store_get(r->store, m->key, m->klen, &val, &ver);
        if (rc == KV_OK) {
            ack.status = KV_REPL_OK;
            ack.ver = ver;
            ack.expiry_ms = meta.expiry_ms;
            ack.value = (const uint8_t *)val.data;
            ack.vlen = val.len;
        } else if (rc == KV_ENOTFOUND) {
            /* expired between the two look-ups */
            ack.status = KV_REPL_OK;
            ack.ver = meta.ver;
            ack.flags = KV_REPL_F_EXPIRED;
        } else {
            ack.status = KV_REPL_ERROR;
        }
    }
    deliver_ack(r, local, to, &ack);
    kv_buf_free(&val);
}

/* ---------- listing: the local scan ---------- */

static void list_on_answer(kv_repl *r, uint64_t req_id, const swim_member_id *from,
                           const kv_repl_item *items, uint32_t n, bool truncated, bool ok);

static void scan_free(kv_repl *r, repl_scan *s)
{
    repl_scan **pp = &r->scans;
    while (*pp && *pp != s)
        pp = &(*pp)->next;
    if (*pp)
        *pp = s->next;
    kv_list_scan_free(s->scan);
    free(s);
    r->n_scans--;
    r->pending--;
}

static void on_scan_idle(uv_idle_t *h)
{
    kv_repl *r = h->data;
    /* One bounded step (about a millisecond) of one scan per loop turn, taking turns, so
     * that listings never hold the loop up for longer whatever their number. */
    repl_scan *s = r->scans;
    if (s && s->next) {
        r->scans = s->next; /* s goes to the back of the line */
        repl_scan *t = r->scans;
        while (t->next)
            t = t->next;
        t->next = s;
        s->next = NULL;
    }
    if (s) {
        bool done = false;
        int rc = r->closing ? KV_ECLOSED : kv_list_scan_step(s->scan, r->store, &done);
        if (rc != KV_OK || done) {
            const kv_repl_item *items = NULL;
            uint32_t n = 0;
            bool truncated = false;
            if (rc == KV_OK)
                kv_list_scan_result(s->scan, &items, &n, &truncated);
            if (s->to[0]) {
                kv_repl_msg ack = {.type = KV_REPL_LIST_ACK,
                                   .req_id = s->req_id,
                                   .status = rc == KV_OK ? KV_REPL_OK : KV_REPL_ERROR,
                                   .truncated = truncated,
                                   .n_items = n,
                                   .items = items};
                if (!r->closing)
                    send_to_addr(r, s->to, &ack);
            } else {
                list_on_answer(r, s->req_id, &r->self, items, n, truncated, rc == KV_OK);
            }
            scan_free(r, s);
        }
    }
    if (!r->scans)
        uv_idle_stop(&r->scan_idle);
}

static void start_scan(kv_repl *r, const char *to, const kv_repl_msg *in)
{
    kv_repl_msg lm = *in;
    const kv_repl_msg *m = &lm;
    if (lm.limit > KV_LIST_MAX_LIMIT) /* no client page is longer */
        lm.limit = KV_LIST_MAX_LIMIT;
    repl_scan *s = NULL;
    if (r->n_scans >= REPL_MAX_SCANS) {
        r->scans_refused++; /* busy: the requester answers 503 and its client retries */
    } else {
        s = calloc(1, sizeof(*s));
        if (s)
            s->scan = kv_list_scan_new(m);
    }
    if (!s || !s->scan) {
        free(s);
        if (to) {
            kv_repl_msg ack = {
                .type = KV_REPL_LIST_ACK, .req_id = m->req_id, .status = KV_REPL_ERROR};
            send_to_addr(r, to, &ack);
        } else {
            list_on_answer(r, m->req_id, &r->self, NULL, 0, false, false);
        }
        return;
    }
    s->r = r;
    s->req_id = m->req_id;
    snprintf(s->to, sizeof(s->to), "%s", to ? to : "");
    s->next = r->scans;
    r->scans = s;
    r->n_scans++;
    r->pending++;
    uv_idle_start(&r->scan_idle, on_scan_idle);
}

/* ---------- receiving ---------- */

static void count_drop(kv_repl *r, const char *reason)
{
    r->rx_dropped++;
    kv_metrics_count(r->metrics, "kv_repl_messages_dropped_total",
                     "Replica batches refused on receipt, by reason.", "reason", reason, 1);
}

static void on_repl_recv(void *arg, const uint8_t *data, size_t len)
{
    kv_repl *r = arg;
    if (r->closing)
        return;
    const char *why = NULL;
    int rc = kv_repl_batch_decode(data, len, &r->rx, &why);
    if (rc != KV_OK) {
        count_drop(r, rc == KV_ENOMEM ? "out_of_memory" : why);
        kv_log_debug("replica batch dropped", KV_STR("reason", why ? why : "out_of_memory"),
                     KV_UINT("bytes", len));
        return;
    }
    r->rx_batches++;
    const char *from = r->rx.from_addr;
    uint64_t now = uv_now(r->loop), wall = wall_ms();
    for (uint32_t i = 0; i < r->rx.n_msgs; i++) {
        const kv_repl_msg *m = &r->rx.msgs[i];
        r->rx_msgs++;
        switch (m->type) {
        case KV_REPL_WRITE:
            r->applies_remote++;
            serve_write(r, false, from, m);
            break;
        case KV_REPL_READ:
            r->reads_remote++;
            serve_read(r, false, from, m);
            break;
        case KV_REPL_LIST:
            start_scan(r, from, m);
            break;
        case KV_REPL_WRITE_ACK:
        case KV_REPL_READ_ACK:
            if ((m->req_id & KV_REPL_REQ_MASK) == KV_REPL_REQ_HINT)
                kv_hints_on_ack(r->hints, &r->rx.from_id, m);
            else if ((m->req_id & KV_REPL_REQ_MASK) == 0)
                kv_coord_on_ack(r->coord, now, wall, &r->rx.from_id, m);
            break;
        case KV_REPL_LIST_ACK:
            list_on_answer(r, m->req_id, &r->rx.from_id, m->items, m->n_items, m->truncated,
                           m->status == KV_REPL_OK);
            break;
        case KV_REPL_STREAM_DONE:
            if (r->leave)
                kv_leave_on_done(r->leave, &r->rx.from_id, m);
            break;
        case KV_REPL_TREE:
        case KV_REPL_TREE_ACK:
        case KV_REPL_PULL:
        case KV_REPL_PULL_DATA:
        case KV_REPL_PURGE:
        case KV_REPL_STREAM:
            if (r->sync)
                kv_sync_on_msg(r->sync, &r->rx.from_id, from, m);
            break;
        }
    }
    kv_repl_batch_free(&r->rx);
    repl_drain(r);
}

/* ---------- the coordinator's effects ---------- */

/* 503 unavailable with the counts; alive >= 0 when the request was refused before any
 * replica was asked because fewer than `needed` of the key's replicas are alive. */
static void respond_unavailable_alive(kv_http_req *req, const char *reason, uint32_t answered,
                                      uint32_t needed, int alive, uint32_t replicas)
{
    char detail[200];
    if (alive >= 0)
        snprintf(detail, sizeof(detail),
                 "only %d of the key's %" PRIu32 " replicas %s alive and the quorum needs %" PRIu32
                 "; the request was not sent",
                 alive, replicas, alive == 1 ? "is" : "are", needed);
    else if (strcmp(reason, "contended") == 0)
        snprintf(detail, sizeof(detail),
                 "the write kept meeting newer concurrent writes of this key; %" PRIu32
                 " of %" PRIu32 " replicas acknowledged; retry",
                 answered, needed);
    else
        snprintf(detail, sizeof(detail),
                 "%" PRIu32 " of %" PRIu32 " replicas answered (%s); the quorum was not reached",
                 answered, needed, reason);
    kv_buf body = KV_BUF_INIT;
    if (kv_http_problem_body(&body, 503, "unavailable", detail) != KV_OK || body.len < 2) {
        kv_http_respond_problem(req, 503, "unavailable", detail);
        kv_buf_free(&body);
        return;
    }
    body.len--; /* drop the closing brace, add the counts */
    kv_buf_printf(&body, ",\"answered\":%" PRIu32 ",\"needed\":%" PRIu32 ",\"reason\":\"%s\"",
                  answered, needed, reason);
    if (alive >= 0)
        kv_buf_printf(&body, ",\"alive\":%d", alive);
    kv_buf_appends(&body, "}");
    kv_http_header h[] = {{"Retry-After", "1"}};
    kv_http_respond(req, 503, "application/problem+json", h, 1, body.data, body.len);
    kv_buf_free(&body);
}

static void respond_unavailable(kv_http_req *req, const char *reason, uint32_t answered,
                                uint32_t needed)
{
    respond_unavailable_alive(req, reason, answered, needed, -1, 0);
}

static void format_etag(char *out, size_t cap, const kv_version *v)
{
    snprintf(out, cap, "\"%" PRIu64 ".%" PRIu32 "\"", v->ts, v->node);
}

static void reply_client(kv_repl *r, const kv_coord_effect *e)
{
    kv_http_req *req = e->client;
    char etag[64];
    switch (e->status) {
    case KV_OK:
        format_etag(etag, sizeof(etag), &e->ver);
        if (req->method == HTTP_GET) {
            kv_http_header h[] = {{"ETag", etag}};
            kv_http_respond(req, 200, "application/octet-stream", h, 1, e->value, e->vlen);
        } else {
            kv_http_header h[] = {{"ETag", etag}};
            kv_http_respond(req, 204, NULL, h, 1, NULL, 0);
        }
        break;
    case KV_ENOTFOUND:
        kv_http_respond_problem(req, 404, "key_not_found", "no value is stored under this key");
        break;
    case KV_EUNAVAIL:
        respond_unavailable(req, e->reason ? e->reason : "timeout", e->answered, e->needed);
        break;
    case KV_ENOSPC:
        kv_http_respond_problem(req, 507, "insufficient_storage",
                                "a replica's data device is full; the write was not stored");
        break;
    case KV_ECLOSED:
        kv_http_respond_problem(req, 503, "shutting_down", "the node is shutting down");
        break;
    default:
        kv_http_respond_problem(req, 500, "io_error", kv_strerror(e->status));
        break;
    }
    (void)r;
}

static void on_coord_timer(uv_timer_t *t);

/* Hand out everything the coordinator decided, then re-arm its timer. */
static void repl_drain(kv_repl *r)
{
    if (!r->coord)
        return;
    kv_coord_effect e;
    while (kv_coord_pop(r->coord, &e)) {
        switch (e.kind) {
        case KV_COORD_SEND:
            if (e.to_self) {
                if (e.msg.type == KV_REPL_WRITE)
                    serve_write(r, true, NULL, &e.msg);
                else if (e.msg.type == KV_REPL_READ)
                    serve_read(r, true, NULL, &e.msg);
            } else {
                const char *addr = member_addr(r, &e.to);
                if (!addr || send_to_addr(r, addr, &e.msg) != KV_OK)
                    r->send_drops++; /* the request times out (and hints) */
            }
            break;
        case KV_COORD_REPLY:
            reply_client(r, &e);
            break;
        case KV_COORD_HINT:
            if (kv_hints_add(r->hints, &e.to, &e.msg) != KV_OK)
                r->hint_writes_refused++;
            break;
        }
    }
    if (r->closing)
        return;
    uint64_t at = kv_coord_next_deadline(r->coord), now = uv_now(r->loop);
    if (at == UINT64_MAX)
        uv_timer_stop(&r->coord_timer);
    else
        uv_timer_start(&r->coord_timer, on_coord_timer, at > now ? at - now : 0, 0);
}

static void on_coord_timer(uv_timer_t *t)
{
    kv_repl *r = t->data;
    kv_coord_tick(r->coord, uv_now(r->loop), wall_ms());
    repl_drain(r);
}

/* ---------- membership changes: ring and liveness ---------- */

static bool member_on_ring(const swim_member *m)
{
    return m->node.state != SWIM_LEFT && m->node.ring != SWIM_RING_REMOVED;
}

/*
 * Build the ring of the members on the ring whose ring status is not `skip` (the read
 * ring skips joining members, the write ring leaving ones). *out is NULL when it would be
 * empty. KV_OK or an error (logged by the caller).
 */
static int build_view(kv_repl *r, swim_ring_status skip, kv_ring **out)
{
    const swim_t *core = kv_membership_core(r->memb);
    size_t n = swim_member_count(core);
    *out = NULL;
    kv_ring_member *mem = calloc(n ? n : 1, sizeof(*mem));
    if (!mem)
        return KV_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const swim_member *m = swim_member_at(core, i);
        bool self = swim_id_equal(&m->node.id, &r->self);
        if ((!member_on_ring(m) && !self) || m->node.ring == skip)
            continue;
        mem[k].id = m->node.id;
        snprintf(mem[k].name, sizeof(mem[k].name), "%s", m->node.name);
        snprintf(mem[k].addr, sizeof(mem[k].addr), "%s", m->node.addr);
        k++;
    }
    int rc = k ? kv_ring_build(out, mem, k, (uint32_t)r->cfg->ring_tokens) : KV_OK;
    free(mem);
    return rc;
}

/* Did a member leave the read ring because an operator removed it (it is `left`, and was
 * not `leaving`: it handed nothing over)? Then the replicas that gain its ranges copy them
 * from the ones that remain (kv_sync_rereplicate). */
static bool removal(kv_repl *r, const kv_ring *old_ring, const kv_ring *new_ring)
{
    const swim_t *core = kv_membership_core(r->memb);
    for (size_t i = 0; i < kv_ring_member_count(old_ring); i++) {
        const swim_member_id *id = &kv_ring_member_at(old_ring, i)->id;
        if (kv_ring_find(new_ring, id) >= 0)
            continue;
        const swim_member *m = swim_member_find(core, id);
        if (!m || (m->node.state == SWIM_LEFT && m->node.ring != SWIM_RING_LEAVING))
            return true;
    }
    return false;
}

/*
 * Two views of the ring (DESIGN §11): reads use the members that hold their data (normal
 * and leaving ones: r->ring); writes go also to the members that are getting data
 * (joining ones, r->wring when it differs), so that a joining node misses no write while
 * it streams, and for a while after a change also to the read ring before it (r->prev),
 * so that a node that has not yet heard of the change still reads what was written. A
 * write must then reach W in each of these lists (kv_repl_handle_kv). A cluster whose
 * members are all joining (a fresh one starting) reads from them all.
 */
static void rebuild_ring(kv_repl *r)
{
    kv_ring *rd = NULL, *wr = NULL;
    int rc = build_view(r, SWIM_RING_JOINING, &rd);
    if (rc == KV_OK)
        rc = build_view(r, SWIM_RING_LEAVING, &wr);
    if (rc == KV_OK && !rd && !wr)
        rc = KV_EINVAL; /* cannot happen: we are always on one of them */
    if (rc != KV_OK) {
        kv_log_warn("cannot rebuild the ring", KV_ERR(rc));
        kv_ring_free(rd);
        kv_ring_free(wr);
        return;
    }
    if (!rd) { /* nobody holds data yet: the members getting it are the ring */
        rd = wr;
        wr = NULL;
    }
    if (wr && kv_ring_equal(rd, wr)) {
        kv_ring_free(wr);
        wr = NULL;
    }
    bool same_read = r->ring && kv_ring_equal(r->ring, rd);
    bool same_write = (!r->wring && !wr) || (r->wring && wr && kv_ring_equal(r->wring, wr));
    if (same_read && same_write) {
        kv_ring_free(rd);
        kv_ring_free(wr);
        return;
    }
    kv_log_info("ring changed", KV_UINT("members", kv_ring_member_count(rd)),
                KV_UINT("members_getting_data", wr ? kv_ring_member_count(wr) : 0),
                KV_UINT("tokens", r->cfg->ring_tokens));
    if (same_read) {
        kv_ring_free(rd);
    } else {
        /* A member that was only on the write ring is now on the read ring (a join
         * finished): keep the old read ring for writes a while, for nodes that have not
         * heard yet. Members merely learnt of (this node starting) are not a change. */
        if (r->ring && r->sync && removal(r, r->ring, rd))
            kv_sync_rereplicate(r->sync, r->ring, rd);
        bool moved = false;
        for (size_t i = 0; r->ring && r->wring && i < kv_ring_member_count(rd) && !moved; i++) {
            const swim_member_id *id = &kv_ring_member_at(rd, i)->id;
            moved = kv_ring_find(r->ring, id) < 0 && kv_ring_find(r->wring, id) >= 0;
        }
        if (moved) {
            kv_ring_free(r->prev);
            r->prev = r->ring;
            r->prev_until = uv_now(r->loop) + kv_config_gossip_spread_ms(r->cfg);
        } else {
            kv_ring_free(r->ring);
        }
        r->ring = rd;
    }
    kv_ring_free(r->wring);
    r->wring = wr;
    r->ring_rebuilds++;
}

static void update_liveness(kv_repl *r)
{
    const swim_t *core = kv_membership_core(r->memb);
    size_t n = swim_member_count(core);
    for (size_t i = 0; i < n; i++) {
        const swim_member *m = swim_member_at(core, i);
        if (swim_id_equal(&m->node.id, &r->self))
            continue;
        bool alive = m->node.state == SWIM_ALIVE || m->node.state == SWIM_SUSPECT;
        size_t j = 0;
        while (j < r->n_live && !swim_id_equal(&r->live[j].id, &m->node.id))
            j++;
        if (j == r->n_live) {
            if (r->n_live == r->cap_live) {
                size_t cap = r->cap_live ? r->cap_live * 2 : 16;
                void *p = realloc(r->live, cap * sizeof(*r->live));
                if (!p)
                    return;
                r->live = p;
                r->cap_live = cap;
            }
            r->live[j].id = m->node.id;
            r->live[j].alive = !alive; /* force the notification below */
            r->n_live++;
        }
        if (r->live[j].alive == alive)
            continue;
        r->live[j].alive = alive;
        if (!alive && r->coord)
            kv_coord_on_member_down(r->coord, uv_now(r->loop), &m->node.id);
        if (r->hints)
            kv_hints_member_alive(r->hints, &m->node.id, alive);
    }
}

/* Forget the batch state of addresses no member has any more (restarts on new ports, new
 * IPs): the table must not grow with every address ever seen. */
static void prune_peers(kv_repl *r)
{
    const swim_t *core = kv_membership_core(r->memb);
    size_t n = swim_member_count(core);
    for (int b = 0; b < REPL_PEER_BUCKETS; b++) {
        repl_peer **pp = &r->peers[b];
        while (*pp) {
            repl_peer *p = *pp;
            bool known = p->open;
            for (size_t i = 0; i < n && !known; i++)
                known = strcmp(swim_member_at(core, i)->node.addr, p->addr) == 0;
            if (known) {
                pp = &p->next;
                continue;
            }
            *pp = p->next;
            kv_buf_free(&p->buf);
            free(p);
        }
    }
}

static void on_members_changed(void *arg)
{
    kv_repl *r = arg;
    if (r->closing)
        return;
    rebuild_ring(r);
    update_liveness(r);
    prune_peers(r);
    if (r->join)
        kv_join_update(r->join);
    if (r->leave)
        kv_leave_update(r->leave);
    repl_drain(r);
}

/* ---------- client requests ---------- */

/* Parse a small positive integer query value. */
static bool parse_count(const char *v, size_t len, int *out)
{
    if (len == 0 || len > 3)
        return false;
    int x = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        x = x * 10 + (v[i] - '0');
    }
    *out = x;
    return true;
}

static bool query_param(const char *q, size_t qlen, const char *name, const char **val,
                        size_t *vlen)
{
    size_t nlen = strlen(name);
    size_t i = 0;
    while (i < qlen) {
        size_t end = i;
        while (end < qlen && q[end] != '&')
            end++;
        if (end - i >= nlen && memcmp(q + i, name, nlen) == 0 &&
            (end - i == nlen || q[i + nlen] == '=')) {
            *val = end - i == nlen ? q + end : q + i + nlen + 1;
            *vlen = end - i == nlen ? 0 : end - i - nlen - 1;
            return true;
        }
        i = end + 1;
    }
    return false;
}

/*
 * The quorum a request asks for: ?r= (GET) or ?w= (PUT, DELETE), else ?consistency=, else
 * the configured default (capped at the replicas that exist). -1 with a 400 sent.
 */
static int request_need(kv_repl *r, kv_http_req *req, bool read, uint32_t n_eff, bool *explicit)
{
    int n = r->cfg->replication_n;
    const char *v;
    size_t vlen;
    const char *pname = read ? "r" : "w";
    *explicit = true;
    if (query_param(req->query, req->query_len, pname, &v, &vlen)) {
        int x;
        if (!parse_count(v, vlen, &x) || x < 1 || x > n) {
            char d[160];
            snprintf(d, sizeof(d), "%s must be a whole number from 1 to replication.n (%d)", pname,
                     n);
            kv_http_respond_problem(req, 400, "invalid_query", d);
            return -1;
        }
        return x;
    }
    if (query_param(req->query, req->query_len, "consistency", &v, &vlen)) {
        if (vlen == 3 && memcmp(v, "one", 3) == 0)
            return 1;
        if (vlen == 6 && memcmp(v, "quorum", 6) == 0)
            return (int)(n_eff / 2 + 1);
        if (vlen == 3 && memcmp(v, "all", 3) == 0)
            return (int)n_eff;
        kv_http_respond_problem(req, 400, "invalid_query",
                                "consistency must be one, quorum or all");
        return -1;
    }
    *explicit = false;
    int d = read ? r->cfg->replication_r : r->cfg->replication_w;
    return d > (int)n_eff ? (int)n_eff : d;
}

/*
 * A node started with seeds knows only itself until a seed answers. Coordinating then
 * would place keys on a one-member ring (every write on this node alone, at a quorum
 * capped to 1) and the cluster would not find them later. So until another member is
 * known it answers 503 not_ready — for at most REPL_JOIN_WAIT_MS: a node whose seeds
 * stay unreachable then serves on its own (logged), as a first node of a cluster would.
 */
bool kv_repl_joining(kv_repl *r)
{
    if (!r->wait_for_join)
        return false;
    if (swim_member_count(kv_membership_core(r->memb)) > 1) {
        r->wait_for_join = false;
        return false;
    }
    if (uv_now(r->loop) - r->start_ms >= REPL_JOIN_WAIT_MS) {
        r->wait_for_join = false;
        kv_log_warn("no seed answered: serving on our own; keys written now are placed as if "
                    "this node were the whole cluster",
                    KV_STR("seeds", r->cfg->cluster_seeds),
                    KV_UINT("waited_ms", REPL_JOIN_WAIT_MS));
        return false;
    }
    return true;
}

static bool refuse_unready(kv_repl *r, kv_http_req *req)
{
    if (r->closing || !r->ring) {
        kv_http_respond_problem(req, 503, "shutting_down", "the node is shutting down");
        return true;
    }
    if (kv_repl_joining(r)) {
        kv_http_header h[] = {{"Retry-After", "1"}};
        kv_http_respond_problem_headers(req, 503, "not_ready",
                                        "joining the cluster: no seed has answered yet", h, 1);
        return true;
    }
    return false;
}

/*
 * A write while the ring changes (rebuild_ring): the read ring's preference list is in
 * targets[0..req->n); add the members of the write ring's list and, during the grace
 * period, of the previous read ring's, after them (fallbacks move back), and make the
 * write a joint one: acknowledged only once each of these lists has enough of its own
 * members — W, or fewer when fewer meet every read quorum of that list (size - R + 1, R
 * capped at its size) — among the acknowledgements (kv_coord_req.n_groups). New length of
 * targets.
 */
static size_t add_joint_targets(kv_repl *r, uint64_t hash, kv_coord_target *targets, size_t k,
                                kv_coord_req *req)
{
    const kv_ring *views[2] = {r->wring, uv_now(r->loop) < r->prev_until ? r->prev : NULL};
    uint32_t n = (uint32_t)r->cfg->replication_n, w = req->need, prim = req->n;
    kv_coord_target extra[KV_COORD_MAX_TARGETS];
    size_t n_extra = 0;
    uint32_t groups = 1, need[KV_COORD_MAX_GROUPS] = {w};
    for (uint32_t i = 0; i < prim; i++)
        targets[i].groups = 1; /* group 0: the read ring's list */
    for (int v = 0; v < 2; v++) {
        if (!views[v])
            continue;
        uint32_t members = (uint32_t)kv_ring_member_count(views[v]);
        uint32_t idx[KV_COORD_MAX_TARGETS], size = n < members ? n : members;
        size_t got = kv_ring_walk(views[v], hash, size, idx);
        uint8_t bit = (uint8_t)(1u << groups);
        /* enough to meet every read quorum (replication.r) of that list, never more than
         * the W asked for: a reader that still uses the list finds the write */
        uint32_t rq =
            (uint32_t)r->cfg->replication_r < size ? (uint32_t)r->cfg->replication_r : size;
        uint32_t meet = size - rq + 1;
        need[groups++] = w < meet ? w : meet;
        for (size_t i = 0; i < got; i++) {
            const kv_ring_member *m = kv_ring_member_at(views[v], idx[i]);
            kv_coord_target *t = NULL;
            for (size_t j = 0; j < prim && !t; j++)
                if (swim_id_equal(&targets[j].id, &m->id))
                    t = &targets[j];
            for (size_t j = 0; j < n_extra && !t; j++)
                if (swim_id_equal(&extra[j].id, &m->id))
                    t = &extra[j];
            if (!t && prim + n_extra < KV_COORD_MAX_TARGETS) {
                t = &extra[n_extra++];
                t->id = m->id;
                t->self = swim_id_equal(&m->id, &r->self);
                t->alive = member_alive(r, &m->id);
                t->groups = 0;
            }
            if (t)
                t->groups |= bit;
        }
    }
    if (groups == 1)
        return k; /* the ring is not changing */
    /* the fallbacks that are not primaries now, after the extras, as many as still fit */
    uint32_t u = prim + (uint32_t)n_extra;
    size_t n_fb = 0;
    kv_coord_target fb[KV_COORD_MAX_TARGETS];
    for (size_t i = prim; i < k && u + n_fb < KV_COORD_MAX_TARGETS; i++) {
        bool dup = false;
        for (size_t j = 0; j < n_extra && !dup; j++)
            dup = swim_id_equal(&extra[j].id, &targets[i].id);
        if (!dup)
            fb[n_fb++] = targets[i];
    }
    memcpy(&targets[prim], extra, n_extra * sizeof(*extra));
    memcpy(&targets[u], fb, n_fb * sizeof(*fb));
    req->n = u;
    if (!req->sloppy) { /* sloppy writes promise less: W acknowledgements among them all */
        req->n_groups = groups;
        memcpy(req->group_need, need, sizeof(need));
    }
    r->joint_writes++;
    return u + n_fb;
}

void kv_repl_handle_kv(kv_repl *r, kv_http_req *req, const uint8_t *key, size_t klen)
{
    if (refuse_unready(r, req))
        return;
    bool read = req->method == HTTP_GET;
    uint32_t members = (uint32_t)kv_ring_member_count(r->ring);
    uint32_t n = (uint32_t)r->cfg->replication_n;
    uint32_t n_eff = n < members ? n : members;
    bool expl = false;
    int need = request_need(r, req, read, n_eff, &expl);
    if (need < 0)
        return;
    if (n_eff == 0 || (uint32_t)need > n_eff) {
        respond_unavailable(req, "not_enough_replicas", 0, (uint32_t)need);
        return;
    }
    kv_coord_req cr = {
        .op = read                      ? KV_COORD_GET
              : req->method == HTTP_PUT ? KV_COORD_PUT
                                        : KV_COORD_DELETE,
        .key = key,
        .klen = klen,
        .n = n_eff,
        .need = (uint32_t)need,
        .sloppy = r->cfg->replication_sloppy_quorum && !read,
        .timeout_ms = r->cfg->replication_timeout_ms,
        .client = req,
        .read_repair = r->cfg->replication_read_repair,
    };
    if (req->method == HTTP_PUT) {
        cr.value = (const uint8_t *)req->body;
        cr.vlen = req->body_len;
        const char *tv;
        size_t tlen;
        if (query_param(req->query, req->query_len, "ttl", &tv, &tlen)) {
            uint64_t ttl = 0;
            bool ok = tlen > 0 && tlen <= 10;
            for (size_t i = 0; ok && i < tlen; i++) {
                if (tv[i] < '0' || tv[i] > '9')
                    ok = false;
                else
                    ttl = ttl * 10 + (uint64_t)(tv[i] - '0');
            }
            if (!ok || ttl == 0) {
                kv_http_respond_problem(req, 400, "invalid_query",
                                        "ttl must be a positive whole number of seconds");
                return;
            }
            cr.expiry_ms = wall_ms() + ttl * 1000;
        }
    }
    /* Preference list, then fallbacks (sloppy quorum only). */
    uint32_t idx[KV_COORD_MAX_TARGETS];
    kv_coord_target targets[KV_COORD_MAX_TARGETS];
    size_t want = n_eff + (cr.sloppy ? REPL_MAX_FALLBACKS : 0);
    if (want > KV_COORD_MAX_TARGETS)
        want = KV_COORD_MAX_TARGETS;
    size_t k = kv_ring_walk(r->ring, kv_ring_hash(key, klen), want, idx);
    for (size_t i = 0; i < k; i++) {
        const kv_ring_member *m = kv_ring_member_at(r->ring, idx[i]);
        targets[i].id = m->id;
        targets[i].self = swim_id_equal(&m->id, &r->self);
        targets[i].alive = member_alive(r, &m->id);
        targets[i].groups = 0;
    }
    if (!read)
        k = add_joint_targets(r, kv_ring_hash(key, klen), targets, k, &cr);
    cr.targets = targets;
    cr.n_targets = (uint32_t)k;
    /* Fewer replicas alive than the quorum (and no fallback allowed to stand in): say so
     * plainly rather than "0 answered". */
    uint32_t alive = 0;
    for (size_t i = 0; i < k && i < cr.n; i++)
        alive += targets[i].alive;
    bool list_short = false; /* joint: a list with fewer alive members than its W */
    for (uint32_t g = 0; g < cr.n_groups; g++) {
        uint32_t a = 0;
        for (size_t i = 0; i < cr.n; i++)
            a += targets[i].alive && (targets[i].groups & (1u << g));
        list_short = list_short || a < cr.group_need[g];
    }
    if (!cr.sloppy && (alive < (uint32_t)need || list_short)) {
        r->refused_not_alive++;
        respond_unavailable_alive(req, "not_enough_replicas", 0, cr.need, (int)alive, cr.n);
        return;
    }
    int rc = kv_coord_submit(r->coord, uv_now(r->loop), wall_ms(), &cr);
    if (rc != KV_OK) {
        /* The key was checked already: anything refused here is our bug. */
        kv_log_error("coordinator refused a request", KV_ERR(rc), KV_UINT("n", cr.n),
                     KV_UINT("need", cr.need), KV_UINT("targets", cr.n_targets));
        kv_http_respond_problem(req, 500, "internal", kv_strerror(rc));
        return;
    }
    repl_drain(r);
}

/* ---------- listing: the coordinator side ---------- */

static void list_finish(kv_repl *r, repl_list_req *l, bool timed_out);

static void on_list_closed(uv_handle_t *h)
{
    repl_list_req *l = h->data;
    kv_repl *r = l->r;
    kv_list_merge_free(l->merge);
    free(l->asked_ids);
    free(l->answered_ids);
    free(l);
    r->pending--;
    repl_maybe_closed(r);
}

static void list_finish(kv_repl *r, repl_list_req *l, bool timed_out)
{
    if (l->done)
        return;
    l->done = true;
    uv_timer_stop(&l->timer);
    repl_list_req **pp = &r->lists;
    while (*pp && *pp != l)
        pp = &(*pp)->next;
    if (*pp)
        *pp = l->next;
    if (timed_out || l->answered < l->asked) {
        respond_unavailable(l->http, timed_out ? "timeout" : "replica_error", l->answered,
                            l->asked);
    } else {
        kv_buf out = KV_BUF_INIT;
        if (kv_list_merge_render(l->merge, &out) != KV_OK)
            kv_http_respond_problem(l->http, 500, "internal", "out of memory");
        else
            kv_http_respond(l->http, 200, "application/json", NULL, 0, out.data, out.len);
        kv_buf_free(&out);
    }
    uv_close((uv_handle_t *)&l->timer, on_list_closed);
}

static void on_list_timer(uv_timer_t *t)
{
    repl_list_req *l = t->data;
    list_finish(l->r, l, true);
}

static void list_on_answer(kv_repl *r, uint64_t req_id, const swim_member_id *from,
                           const kv_repl_item *items, uint32_t n, bool truncated, bool ok)
{
    repl_list_req *l = r->lists;
    while (l && l->id != req_id)
        l = l->next;
    if (!l || l->done)
        return;
    uint32_t i = 0;
    while (i < l->asked && !swim_id_equal(&l->asked_ids[i], from))
        i++;
    if (i == l->asked || l->answered_ids[i])
        return;
    l->answered_ids[i] = true;
    l->waiting--;
    if (n > l->limit) { /* more than asked: keep what was asked for, the rest may follow */
        n = l->limit;
        truncated = true;
    }
    if (ok && kv_list_merge_add(l->merge, items, n, truncated) == KV_OK)
        l->answered++;
    if (l->waiting == 0)
        list_finish(r, l, false);
}

void kv_repl_handle_list(kv_repl *r, kv_http_req *req)
{
    if (refuse_unready(r, req))
        return;
    kv_list_params *p = malloc(sizeof(*p));
    kv_buf err = KV_BUF_INIT;
    if (!p) {
        kv_http_respond_problem(req, 500, "internal", "out of memory");
        return;
    }
    if (kv_list_parse_query(req->query, req->query_len, p, &err) != KV_OK) {
        kv_http_respond_problem(req, 400, "invalid_query", err.data ? err.data : "bad query");
        kv_buf_free(&err);
        free(p);
        return;
    }
    kv_buf_free(&err);
    size_t members = kv_ring_member_count(r->ring);
    repl_list_req *l = calloc(1, sizeof(*l));
    if (l) {
        l->merge = kv_list_merge_new(p);
        l->asked_ids = calloc(members ? members : 1, sizeof(*l->asked_ids));
        l->answered_ids = calloc(members ? members : 1, sizeof(*l->answered_ids));
    }
    if (!l || !l->merge || !l->asked_ids || !l->answered_ids) {
        if (l) {
            kv_list_merge_free(l->merge);
            free(l->asked_ids);
            free(l->answered_ids);
        }
        free(l);
        free(p);
        kv_http_respond_problem(req, 500, "internal", "out of memory");
        return;
    }
    l->r = r;
    l->http = req;
    l->id = KV_REPL_REQ_LIST | (++r->next_list_id & ~KV_REPL_REQ_MASK);
    l->limit = p->limit;
    uv_timer_init(r->loop, &l->timer);
    l->timer.data = l;
    r->pending++;
    l->next = r->lists;
    r->lists = l;

    kv_repl_msg m = {.type = KV_REPL_LIST,
                     .req_id = l->id,
                     .key = p->prefix,
                     .klen = p->plen,
                     .limit = p->limit,
                     .has_cursor = p->has_cursor,
                     .cursor_hash = p->cursor_hash,
                     .cursor_key = p->cursor_key,
                     .cursor_klen = p->cursor_klen};
    /* Every alive ring member holds some keys: ask them all (ourselves by a local scan). */
    for (size_t i = 0; i < members; i++) {
        const kv_ring_member *rm = kv_ring_member_at(r->ring, i);
        if (!member_alive(r, &rm->id))
            continue;
        l->asked_ids[l->asked++] = rm->id;
    }
    l->waiting = l->asked;
    uv_timer_start(&l->timer, on_list_timer, r->cfg->replication_timeout_ms * 2, 0);
    for (uint32_t i = 0; i < l->asked && !l->done; i++) {
        if (swim_id_equal(&l->asked_ids[i], &r->self))
            start_scan(r, NULL, &m);
        else if (send_to_addr(r, member_addr(r, &l->asked_ids[i]), &m) != KV_OK)
            list_on_answer(r, l->id, &l->asked_ids[i], NULL, 0, false, false); /* failed */
    }
    free(p);
    if (l->asked == 0)
        list_finish(r, l, false);
}

/* ---------- ring ---------- */

void kv_repl_handle_ring(kv_repl *r, kv_http_req *req)
{
    if (!r->ring) {
        kv_http_respond_problem(req, 503, "not_ready", "the ring is not built yet");
        return;
    }
    kv_buf out = KV_BUF_INIT;
    if (kv_ring_json(r->ring, (size_t)r->cfg->replication_n, &r->self, &out) != KV_OK)
        kv_http_respond_problem(req, 500, "internal", "out of memory");
    else
        kv_http_respond(req, 200, "application/json", NULL, 0, out.data, out.len);
    kv_buf_free(&out);
}

/* ---------- hints I/O ---------- */

static int hints_send(void *arg, const swim_member_id *to, const kv_repl_msg *msg)
{
    kv_repl *r = arg;
    if (r->closing)
        return KV_ECLOSED;
    const char *addr = member_addr(r, to);
    if (!addr)
        return KV_EUNAVAIL;
    return send_to_addr(r, addr, msg);
}

/* ---------- metrics ---------- */

void kv_repl_publish_metrics(kv_repl *r)
{
    kv_metrics *mx = r->metrics;
    if (r->sync)
        kv_sync_publish_metrics(r->sync);
    if (r->join)
        kv_join_publish_metrics(r->join);
    if (r->leave)
        kv_leave_publish_metrics(r->leave);
    if (r->coord) {
        kv_coord_stats cs;
        kv_coord_get_stats(r->coord, &cs);
        kv_metrics_counter_set(mx, "kv_repl_reads_total", "Replicated reads coordinated.",
                               cs.reads);
        kv_metrics_counter_set(mx, "kv_repl_writes_total",
                               "Replicated writes (puts and deletes) coordinated.", cs.writes);
        kv_metrics_counter_set(mx, "kv_repl_unavailable_total",
                               "Requests answered 503: quorum not reached.",
                               cs.unavailable + r->refused_not_alive);
        kv_metrics_counter_set(mx, "kv_repl_timeouts_total",
                               "Requests whose quorum deadline passed.", cs.timeouts);
        kv_metrics_counter_set(mx, "kv_repl_version_bumps_total",
                               "Write rounds re-sent with a newer version because a replica held "
                               "a newer one (clock skew or concurrent writes).",
                               cs.rounds_extra);
        kv_metrics_counter_set(mx, "kv_repl_read_repairs_total",
                               "Repair writes sent to stale replicas by reads.", cs.read_repairs);
        kv_metrics_counter_set(mx, "kv_repl_hints_created_total",
                               "Writes turned into hints for replicas that were down or slow.",
                               cs.hints);
        kv_metrics_gauge(mx, "kv_repl_inflight", "Coordinated requests open.",
                         (double)kv_coord_inflight(r->coord));
    }
    if (r->hints) {
        kv_hints_stats hs;
        kv_hints_get_stats(r->hints, &hs);
        kv_metrics_gauge(mx, "kv_hints", "Hints held for replicas that were down.",
                         (double)hs.count);
        kv_metrics_gauge(mx, "kv_hints_bytes", "Key and value bytes of hints held.",
                         (double)hs.bytes);
        kv_metrics_gauge(mx, "kv_hints_targets", "Members this node holds hints for.",
                         (double)hs.targets);
        kv_metrics_counter_set(mx, "kv_hints_added_total", "Hints stored.", hs.added);
        kv_metrics_counter_set(mx, "kv_hints_delivered_total",
                               "Hints acknowledged by their replica and removed.", hs.delivered);
        kv_metrics_counter_set(mx, "kv_hints_dropped_total",
                               "Hints not kept because the hint store was over its bounds.",
                               hs.dropped_full);
        kv_metrics_counter_set(mx, "kv_hints_write_errors_total",
                               "Hints the disk refused to store.", hs.write_errors);
    }
    kv_metrics_counter_set(mx, "kv_repl_batches_sent_total",
                           "Replica batches (nng messages) sent to peers.", r->batches_sent);
    kv_metrics_counter_set(mx, "kv_repl_messages_sent_total",
                           "Replica messages sent to peers (several per batch).", r->msgs_sent);
    kv_metrics_counter_set(mx, "kv_repl_send_drops_total",
                           "Replica messages that could not be queued (peer down or slow).",
                           r->send_drops);
    kv_metrics_counter_set(mx, "kv_repl_batches_received_total", "Replica batches received.",
                           r->rx_batches);
    kv_metrics_counter_set(mx, "kv_repl_messages_received_total", "Replica messages received.",
                           r->rx_msgs);
    kv_metrics_counter_set(mx, "kv_repl_list_scans_refused_total",
                           "Listing scans refused because REPL_MAX_SCANS were running.",
                           r->scans_refused);
    kv_metrics_counter_set(mx, "kv_repl_bad_hint_for_total",
                           "Sloppy-quorum writes refused: their hint_for is not a ring member.",
                           r->bad_hint_for);
    kv_metrics_counter_set(mx, "kv_ring_changes_total", "Times the ring changed.",
                           r->ring_rebuilds);
    kv_metrics_gauge(mx, "kv_ring_grace_active",
                     "1 while writes still also go to the read ring before the last finished join.",
                     r->prev && uv_now(r->loop) < r->prev_until ? 1.0 : 0.0);
    kv_metrics_counter_set(mx, "kv_repl_joint_writes_total",
                           "Writes that had to reach W in more than one preference list (a "
                           "node joining or leaving, or just after).",
                           r->joint_writes);
    if (r->ring)
        kv_metrics_gauge(mx, "kv_ring_members", "Members on the ring.",
                         (double)kv_ring_member_count(r->ring));
}

/* ---------- start and close ---------- */

/* What the anti-entropy module (sync.c) uses of ours. */
static int sync_send(void *arg, const char *addr, const kv_repl_msg *m)
{
    return send_to_addr(arg, addr, m);
}

static const kv_ring *sync_ring(void *arg)
{
    return ((kv_repl *)arg)->ring;
}

static const char *sync_addr_of(void *arg, const swim_member_id *id)
{
    return member_addr(arg, id);
}

static bool sync_alive(void *arg, const swim_member_id *id)
{
    return member_alive(arg, id);
}

static const kv_ring *join_write_ring(void *arg)
{
    return ((kv_repl *)arg)->wring;
}

static bool join_met_cluster(void *arg)
{
    kv_repl *r = arg;
    return !kv_repl_joining(r);
}

/* The join streamed everything: count for reads. */
static void join_set_normal(void *arg)
{
    kv_repl *r = arg;
    kv_membership_set_ring(r->memb, SWIM_RING_NORMAL);
    on_members_changed(r);
}

void kv_repl_join_progress(kv_repl *r, struct kv_join_progress *out)
{
    kv_join_get_progress(r->join, out);
}

/* Every range is handed over: tell the node (which then leaves for good and exits). */
static void leave_done(void *arg)
{
    kv_repl *r = arg;
    if (r->left_cb)
        r->left_cb(r->left_arg);
}

int kv_repl_leave(kv_repl *r, void (*done)(void *arg), void *arg)
{
    if (r->closing)
        return KV_ECLOSED;
    if (r->leave)
        return KV_EEXIST;
    if (r->join && kv_join_active(r->join))
        return KV_EUNAVAIL;
    kv_leave_env le = {.read_ring = sync_ring,
                       .write_ring = join_write_ring,
                       .addr_of = sync_addr_of,
                       .alive = sync_alive,
                       .send = sync_send,
                       .done = leave_done,
                       .arg = r};
    int rc = kv_leave_start(&r->leave, r->loop, r->cfg, r->metrics, &r->self, &le);
    if (rc != KV_OK)
        return rc;
    r->left_cb = done;
    r->left_arg = arg;
    rc = kv_membership_set_ring(r->memb, SWIM_RING_LEAVING);
    if (rc != KV_OK)
        return rc;
    on_members_changed(r); /* rebuilds the rings, then plans the hand-over */
    return KV_OK;
}

bool kv_repl_leaving(kv_repl *r)
{
    return r->leave != NULL;
}

void kv_repl_leave_progress(kv_repl *r, uint32_t *gainers, uint32_t *done)
{
    kv_leave_progress(r->leave, gainers, done);
}

static void on_leave_closed(void *arg)
{
    kv_repl *r = arg;
    r->leave = NULL;
    r->pending--;
    repl_maybe_closed(r);
}

static void on_join_closed(void *arg)
{
    kv_repl *r = arg;
    r->join = NULL;
    r->pending--;
    repl_maybe_closed(r);
}

static void on_sync_closed(void *arg)
{
    kv_repl *r = arg;
    r->sync = NULL;
    r->pending--;
    repl_maybe_closed(r);
}

int kv_repl_start(kv_repl **out, uv_loop_t *loop, const kv_config *cfg, kv_store *store,
                  kv_membership *memb, uint32_t node_id, kv_metrics *metrics, bool joining)
{
    kv_repl *r = calloc(1, sizeof(*r));
    if (!r)
        return KV_ENOMEM;
    r->loop = loop;
    r->cfg = cfg;
    r->store = store;
    r->memb = memb;
    r->metrics = metrics;
    r->node_id = node_id;
    r->self = *kv_membership_self_id(memb);
    snprintf(r->self_addr, sizeof(r->self_addr), "%s", kv_membership_advertise(memb));
    r->batching = cfg->replication_batching;
    r->coord = kv_coord_new(node_id);
    if (!r->coord) {
        free(r);
        return KV_ENOMEM;
    }
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof(dir), "%s/hints", cfg->node_data_dir) >= (int)sizeof(dir)) {
        kv_coord_free(r->coord);
        free(r);
        return KV_ECONFIG;
    }
    kv_hints_opts ho = {
        .dir = dir,
        .sync = cfg->storage_sync,
        .sync_interval_ms = cfg->storage_sync_interval_ms,
        .max_value = cfg->limits_max_value,
        .node_id = node_id,
        .max_count = (uint64_t)cfg->replication_hints_max_count,
        .max_bytes = cfg->replication_hints_max_bytes,
        /* 0 in the config means no hints at all (the hint store's 0 means its default) */
        .keep_none = cfg->replication_hints_max_count == 0 || cfg->replication_hints_max_bytes == 0,
    };
    kv_hints_io io = {.send = hints_send, .arg = r};
    int rc = kv_hints_open(&r->hints, loop, &ho, &io);
    if (rc != KV_OK) {
        kv_log_error("cannot open the hint store", KV_STR("dir", dir), KV_ERR(rc));
        kv_coord_free(r->coord);
        free(r);
        return rc;
    }
    uv_timer_init(loop, &r->coord_timer);
    r->coord_timer.data = r;
    uv_prepare_init(loop, &r->prep);
    r->prep.data = r;
    uv_prepare_start(&r->prep, on_prepare);
    uv_idle_init(loop, &r->scan_idle);
    r->scan_idle.data = r;
    /* Request ids start at random: answers to a previous run of this node may still be
     * queued at peers and must not match new requests. */
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed))
        seed = uv_hrtime() ^ ((uint64_t)getpid() << 32);
    kv_coord_seed_ids(r->coord, seed);
    r->start_ms = uv_now(loop);
    /* Seeds other than ourselves: wait for one to answer before coordinating. */
    const char *adv = kv_membership_advertise(memb);
    for (const char *sp = cfg->cluster_seeds; *sp;) {
        while (*sp == ',' || *sp == ' ')
            sp++;
        size_t len = strcspn(sp, ", ");
        if (len && !(strlen(adv) == len && memcmp(sp, adv, len) == 0))
            r->wait_for_join = true;
        sp += len;
    }
    r->next_list_id = seed >> 20;
    rebuild_ring(r);
    update_liveness(r);
    kv_sync_env se = {.send = sync_send,
                      .ring = sync_ring,
                      .addr_of = sync_addr_of,
                      .alive = sync_alive,
                      .arg = r};
    if (kv_sync_start(&r->sync, loop, cfg, store, metrics, &r->self, &se) != KV_OK)
        kv_log_warn("anti-entropy not started: out of memory");
    if (joining && r->sync) {
        kv_join_env je = {.read_ring = sync_ring,
                          .write_ring = join_write_ring,
                          .addr_of = sync_addr_of,
                          .alive = sync_alive,
                          .met_cluster = join_met_cluster,
                          .set_normal = join_set_normal,
                          .arg = r};
        if (kv_join_start(&r->join, loop, cfg, r->sync, metrics, &r->self, &je) != KV_OK)
            kv_log_warn("cannot start the join's streaming");
    }
    kv_membership_hooks hk = {.on_repl = on_repl_recv, .on_change = on_members_changed, .arg = r};
    kv_membership_set_hooks(memb, &hk);
    kv_log_info("replication started", KV_UINT("n", cfg->replication_n),
                KV_UINT("r", cfg->replication_r), KV_UINT("w", cfg->replication_w),
                KV_BOOL("sloppy_quorum", cfg->replication_sloppy_quorum),
                KV_UINT("ring_tokens", cfg->ring_tokens));
    *out = r;
    return KV_OK;
}

static void on_hints_closed(void *arg)
{
    kv_repl *r = arg;
    r->hints = NULL;
    r->pending--;
    repl_maybe_closed(r);
}

static void on_handle_closed(uv_handle_t *h)
{
    kv_repl *r = h->data;
    r->pending--;
    repl_maybe_closed(r);
}

static void repl_maybe_closed(kv_repl *r)
{
    if (!r->closing || r->pending > 0)
        return;
    for (int b = 0; b < REPL_PEER_BUCKETS; b++) {
        repl_peer *p = r->peers[b];
        while (p) {
            repl_peer *next = p->next;
            kv_buf_free(&p->buf);
            free(p);
            p = next;
        }
    }
    kv_ring_free(r->ring);
    kv_ring_free(r->wring);
    kv_ring_free(r->prev);
    free(r->live);
    void (*cb)(void *) = r->close_cb;
    void *arg = r->close_arg;
    free(r);
    if (cb)
        cb(arg);
}

void kv_repl_close(kv_repl *r, void (*done)(void *arg), void *arg)
{
    r->closing = true;
    r->close_cb = done;
    r->close_arg = arg;
    flush_all(r);
    /* Requests still open (the HTTP drain answered every client, so these are writes
     * waiting on slow replicas, and reads waiting to repair): end them now, so that the
     * writes' hints for replicas that did not acknowledge reach the hint store before it
     * closes. */
    kv_coord_tick(r->coord, UINT64_MAX, wall_ms());
    repl_drain(r);
    flush_all(r);
    kv_coord *c = r->coord;
    r->coord = NULL;
    kv_coord_free(c);
    while (r->lists)
        list_finish(r, r->lists, true);
    if (r->join) { /* first: it cancels its pulls */
        r->pending++;
        kv_join_close(r->join, on_join_closed, r);
    }
    if (r->leave) {
        r->pending++;
        kv_leave_close(r->leave, on_leave_closed, r);
    }
    if (r->sync) {
        r->pending++;
        kv_sync_close(r->sync, on_sync_closed, r);
    }
    r->pending += 4;
    uv_close((uv_handle_t *)&r->coord_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->prep, on_handle_closed);
    uv_idle_stop(&r->scan_idle);
    uv_close((uv_handle_t *)&r->scan_idle, on_handle_closed);
    /* Scans still running are dropped (their requesters time out). */
    while (r->scans)
        scan_free(r, r->scans);
    kv_hints_close(r->hints, on_hints_closed, r);
}
