/*
 * leave.c — handing a leaving node's ranges to their new owners (see leave.h).
 */
#include "node/leave.h"

#include "common/hash.h"
#include "common/log.h"
#include "kvstore/error.h"

#include <stdlib.h>
#include <string.h>

#define LEAVE_RETRY_MS 2000 /* a gainer that failed, or is down, is asked again after this */

typedef struct leave_gainer {
    swim_member_id id;
    uint8_t *pairs; /* packed [lo, hi) pairs of the ranges it gains from us */
    size_t n_pairs;
    uint64_t req_id;
    bool asked, done;
    uint64_t retry_at;
} leave_gainer;

struct kv_leave {
    uv_loop_t *loop;
    const kv_config *cfg;
    kv_metrics *metrics;
    swim_member_id self;
    kv_leave_env env;
    uv_timer_t retry;
    leave_gainer *g;
    size_t n_g, n_done;
    uint64_t fp, next_id, started_ms, failures;
    bool planned, finished;
    void (*close_cb)(void *);
    void *close_arg;
};

static void gainers_free(kv_leave *l)
{
    for (size_t i = 0; i < l->n_g; i++)
        free(l->g[i].pairs);
    free(l->g);
    l->g = NULL;
    l->n_g = l->n_done = 0;
    l->planned = false;
}

static int add_pair(leave_gainer *g, uint64_t lo, uint64_t hi)
{
    uint8_t *p = realloc(g->pairs, (g->n_pairs + 1) * 16);
    if (!p)
        return KV_ENOMEM;
    g->pairs = p;
    kv_repl_u64_put(p, 2 * g->n_pairs, lo);
    kv_repl_u64_put(p, 2 * g->n_pairs + 1, hi);
    g->n_pairs++;
    return KV_OK;
}

/* The gainers of our ranges and what each gains: KV_OK (maybe none), or an error. */
static int plan(kv_leave *l, leave_gainer **out, size_t *n_out, uint64_t *fp)
{
    *out = NULL;
    *n_out = 0;
    *fp = 0x6c65617665; /* "leave" */
    const kv_ring *rd = l->env.read_ring(l->env.arg);
    const kv_ring *wr = l->env.write_ring(l->env.arg);
    if (!rd)
        return KV_EUNAVAIL;
    if (!wr)
        return KV_OK; /* the ring does not know we are leaving yet, or we own nothing */
    size_t n = (size_t)l->cfg->replication_n;
    if (n > KV_RING_DIFF_MAX_N)
        n = KV_RING_DIFF_MAX_N;
    kv_ring_move *mv = NULL;
    size_t n_mv = 0;
    int rc = kv_ring_diff(rd, wr, n, &mv, &n_mv);
    if (rc != KV_OK)
        return rc;
    leave_gainer *g = NULL;
    size_t n_g = 0;
    for (size_t i = 0; i < n_mv && rc == KV_OK; i++) {
        if (!swim_id_in(mv[i].from, mv[i].n_from, &l->self) ||
            swim_id_in(mv[i].to, mv[i].n_to, &l->self))
            continue;
        for (uint32_t k = 0; k < mv[i].n_to && rc == KV_OK; k++) {
            const swim_member_id *to = &mv[i].to[k];
            if (swim_id_in(mv[i].from, mv[i].n_from, to))
                continue; /* it has the range already */
            size_t j = 0;
            while (j < n_g && !swim_id_equal(&g[j].id, to))
                j++;
            if (j == n_g) {
                leave_gainer *ng = realloc(g, (n_g + 1) * sizeof(*g));
                if (!ng) {
                    rc = KV_ENOMEM;
                    break;
                }
                g = ng;
                memset(&g[n_g], 0, sizeof(*g));
                g[n_g++].id = *to;
            }
            rc = add_pair(&g[j], mv[i].lo, mv[i].hi);
            uint8_t h[16 + SWIM_ID_LEN];
            kv_repl_u64_put(h, 0, mv[i].lo);
            kv_repl_u64_put(h, 1, mv[i].hi);
            memcpy(h + 16, to->b, SWIM_ID_LEN);
            *fp = kv_ring_hash(h, sizeof(h)) ^ (*fp * 0x100000001b3ull);
        }
    }
    free(mv);
    if (rc != KV_OK) {
        for (size_t j = 0; j < n_g; j++)
            free(g[j].pairs);
        free(g);
        return rc;
    }
    *out = g;
    *n_out = n_g;
    return KV_OK;
}

static void finish(kv_leave *l)
{
    l->finished = true;
    kv_log_info("leave: every range handed over", KV_UINT("gainers", l->n_g),
                KV_UINT("ms", uv_now(l->loop) - l->started_ms));
    l->env.done(l->env.arg);
}

static void on_retry(uv_timer_t *t);

/* Ask every gainer not done and not asked (or due for a retry). */
static void pump(kv_leave *l)
{
    if (l->finished || !l->planned)
        return;
    uint64_t now = uv_now(l->loop), next = UINT64_MAX;
    /* Not before every coordinator knows we are leaving (a few protocol periods): a write
     * acknowledged on the old preference list alone after a gainer's pull passed its key
     * could otherwise be missing from the new list. From then on writes reach W in it. */
    uint64_t start_at = l->started_ms + kv_config_gossip_spread_ms(l->cfg);
    if (now < start_at && l->n_g > l->n_done) {
        uv_timer_start(&l->retry, on_retry, start_at - now, 0);
        return;
    }
    if (l->n_done == l->n_g) {
        finish(l);
        return;
    }
    for (size_t i = 0; i < l->n_g; i++) {
        leave_gainer *g = &l->g[i];
        if (g->done || (g->asked && g->retry_at == 0))
            continue;
        const char *addr = l->env.addr_of(l->env.arg, &g->id);
        if (g->retry_at > now || !addr || !l->env.alive(l->env.arg, &g->id)) {
            uint64_t at = g->retry_at > now ? g->retry_at : now + LEAVE_RETRY_MS;
            next = at < next ? at : next;
            continue;
        }
        g->req_id = KV_REPL_REQ_SYNC | (++l->next_id & ~KV_REPL_REQ_MASK);
        kv_repl_msg m = {.type = KV_REPL_STREAM,
                         .req_id = g->req_id,
                         .ranges = g->pairs,
                         .n_ranges = g->n_pairs};
        if (l->env.send(l->env.arg, addr, &m) == KV_OK) {
            g->asked = true;
            g->retry_at = 0;
            kv_log_info("leave: asked a member to take our ranges", KV_STR("member", addr),
                        KV_UINT("ranges", g->n_pairs));
        } else {
            g->retry_at = now + LEAVE_RETRY_MS;
            next = g->retry_at < next ? g->retry_at : next;
        }
    }
    if (next != UINT64_MAX)
        uv_timer_start(&l->retry, on_retry, next - now, 0);
}

static void on_retry(uv_timer_t *t)
{
    kv_leave *l = t->data;
    if (!l->planned)
        kv_leave_update(l);
    else
        pump(l);
}

void kv_leave_update(kv_leave *l)
{
    if (l->finished)
        return;
    leave_gainer *g;
    size_t n;
    uint64_t fp;
    if (plan(l, &g, &n, &fp) != KV_OK) {
        uv_timer_start(&l->retry, on_retry, LEAVE_RETRY_MS, 0);
        return;
    }
    if (l->planned && fp == l->fp) {
        for (size_t i = 0; i < n; i++)
            free(g[i].pairs);
        free(g);
        /* a gainer that came back: ask it again if it never answered */
        for (size_t i = 0; i < l->n_g; i++)
            if (!l->g[i].done && l->g[i].asked && !l->env.alive(l->env.arg, &l->g[i].id))
                l->g[i].retry_at = uv_now(l->loop) + LEAVE_RETRY_MS;
        pump(l);
        return;
    }
    gainers_free(l);
    l->g = g;
    l->n_g = n;
    l->fp = fp;
    l->planned = true;
    kv_log_info("leaving: handing our ranges over", KV_UINT("gainers", n));
    pump(l);
}

void kv_leave_on_done(kv_leave *l, const swim_member_id *from_id, const kv_repl_msg *m)
{
    for (size_t i = 0; i < l->n_g; i++) {
        leave_gainer *g = &l->g[i];
        if (g->done || !g->asked || g->req_id != m->req_id || !swim_id_equal(&g->id, from_id))
            continue;
        const char *addr = l->env.addr_of(l->env.arg, &g->id);
        if (m->status == KV_REPL_OK) {
            g->done = true;
            l->n_done++;
            kv_log_info("leave: a member took our ranges", KV_STR("member", addr ? addr : "?"),
                        KV_UINT("done", l->n_done), KV_UINT("gainers", l->n_g));
        } else {
            l->failures++;
            g->retry_at = uv_now(l->loop) + LEAVE_RETRY_MS;
            kv_log_warn("leave: a member could not take our ranges; asking again",
                        KV_STR("member", addr ? addr : "?"));
        }
        pump(l);
        return;
    }
}

int kv_leave_start(kv_leave **out, uv_loop_t *loop, const kv_config *cfg, kv_metrics *metrics,
                   const swim_member_id *self, const kv_leave_env *env)
{
    kv_leave *l = calloc(1, sizeof(*l));
    if (!l)
        return KV_ENOMEM;
    l->loop = loop;
    l->cfg = cfg;
    l->metrics = metrics;
    l->self = *self;
    l->env = *env;
    l->started_ms = uv_now(loop);
    uv_timer_init(loop, &l->retry);
    l->retry.data = l;
    *out = l;
    return KV_OK;
}

void kv_leave_progress(const kv_leave *l, uint32_t *gainers, uint32_t *done)
{
    *gainers = l ? (uint32_t)l->n_g : 0;
    *done = l ? (uint32_t)l->n_done : 0;
}

void kv_leave_publish_metrics(kv_leave *l)
{
    kv_metrics_gauge(l->metrics, "kv_leave_active", "1 while this node hands its ranges over.",
                     l->finished ? 0.0 : 1.0);
    kv_metrics_gauge(l->metrics, "kv_leave_gainers", "Members taking ranges from this node.",
                     (double)l->n_g);
    kv_metrics_gauge(l->metrics, "kv_leave_gainers_done",
                     "Members that took every range they gain from this node.", (double)l->n_done);
    kv_metrics_counter_set(l->metrics, "kv_leave_failures_total",
                           "Hand-overs a gainer reported failed (asked again).", l->failures);
}

static void on_closed(uv_handle_t *h)
{
    kv_leave *l = h->data;
    void (*cb)(void *) = l->close_cb;
    void *arg = l->close_arg;
    gainers_free(l);
    free(l);
    if (cb)
        cb(arg);
}

void kv_leave_close(kv_leave *l, void (*cb)(void *arg), void *arg)
{
    l->finished = true;
    l->close_cb = cb;
    l->close_arg = arg;
    uv_close((uv_handle_t *)&l->retry, on_closed);
}
