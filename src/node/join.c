/*
 * join.c — streaming a joining node's ranges before it turns normal (see join.h).
 */
#include "node/join.h"

#include "common/hash.h"
#include "common/log.h"
#include "kvstore/error.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JOIN_PARALLEL 8    /* units streaming at once, at most one per source */
#define JOIN_RETRY_MS 1000 /* a failed unit is tried again after this */

typedef struct join_plan {
    struct join_unit *units;
    size_t n_units, n_done;
    uint64_t fp; /* fingerprint: the sources and ranges */
} join_plan;

typedef struct join_unit {
    swim_member_id source;
    uint8_t *pairs; /* packed [lo, hi) pairs */
    size_t n_pairs;
    bool done, running;
    uint64_t retry_at; /* ms: not before this after a failure */
    uint64_t bytes;
    kv_sync_pull *pull;
    struct kv_join *j;
} join_unit;

struct kv_join {
    uv_loop_t *loop;
    const kv_config *cfg;
    kv_sync *sync;
    kv_metrics *metrics;
    swim_member_id self;
    kv_join_env env;
    uv_timer_t retry;

    bool active;  /* still joining */
    bool planned; /* units hold a plan */
    uint64_t fp;  /* the plan's fingerprint */
    join_unit *units;
    size_t n_units, n_done, running;
    uint64_t bytes, resumed, started_ms, failures;
    char path[PATH_MAX];
    void (*close_cb)(void *);
    void *close_arg;
};

/* ---------- the JOIN file ---------- */

static int join_path(const kv_config *cfg, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/JOIN", cfg->node_data_dir);
    return n > 0 && (size_t)n < cap ? KV_OK : KV_ECONFIG;
}

static void file_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        if (f)
            fclose(f);
        kv_log_warn("cannot write the join state", KV_STR("path", path),
                    KV_STR("error", strerror(errno)));
    }
}

bool kv_join_needed(const kv_config *cfg, kv_store *store)
{
    char path[PATH_MAX], line[64] = "";
    if (join_path(cfg, path, sizeof(path)) != KV_OK)
        return false;
    FILE *f = fopen(path, "r");
    if (f) {
        bool joining = fgets(line, sizeof(line), f) && strncmp(line, "joining", 7) == 0;
        fclose(f);
        return joining;
    }
    kv_store_stats st;
    store_stats(store, &st);
    bool joining = st.entries == 0 && cfg->cluster_seeds[0] != '\0';
    file_write(path, joining ? "joining\n" : "normal\n");
    return joining;
}

/* Append "done <unit> <bytes>" (the file must already hold this plan). */
static void ckpt_done(kv_join *j, size_t u)
{
    FILE *f = fopen(j->path, "a");
    if (!f || fprintf(f, "done %zu %" PRIu64 "\n", u, j->units[u].bytes) < 0 || fclose(f) != 0) {
        if (f)
            fclose(f);
        kv_log_warn("cannot write the join checkpoint", KV_STR("path", j->path),
                    KV_STR("error", strerror(errno)));
    }
}

/* Start the file for a new plan, or, when it holds this very plan, take its finished
 * units (a restart half-way resumes). */
static void ckpt_load_or_start(kv_join *j)
{
    char line[128];
    bool same = false;
    FILE *f = fopen(j->path, "r");
    if (f) {
        uint64_t fp = 0;
        while (fgets(line, sizeof(line), f)) {
            size_t u;
            uint64_t bytes;
            if (sscanf(line, "plan %" SCNx64, &fp) == 1)
                same = fp == j->fp;
            else if (same && sscanf(line, "done %zu %" SCNu64, &u, &bytes) == 2 && u < j->n_units &&
                     !j->units[u].done) {
                j->units[u].done = true;
                j->units[u].bytes = bytes;
                j->n_done++;
                j->resumed++;
                j->bytes += bytes;
            }
        }
        fclose(f);
    }
    if (same)
        return;
    char text[64];
    snprintf(text, sizeof(text), "joining\nplan %016" PRIx64 "\n", j->fp);
    file_write(j->path, text);
}

/* ---------- the plan ---------- */

static void units_free(kv_join *j)
{
    for (size_t i = 0; i < j->n_units; i++) {
        kv_sync_pull_cancel(j->units[i].pull);
        free(j->units[i].pairs);
    }
    free(j->units);
    j->units = NULL;
    j->n_units = j->n_done = j->running = 0;
    j->planned = false;
}

/* The member this node takes the range over from: one the change pushes out of the list
 * (alive), else any alive old holder. false when none is alive. */
static bool pick_source(kv_join *j, const kv_ring_move *mv, swim_member_id *out)
{
    for (int pass = 0; pass < 2; pass++)
        for (uint32_t i = 0; i < mv->n_from; i++) {
            const swim_member_id *id = &mv->from[i];
            if (swim_id_equal(id, &j->self) || (pass == 0 && swim_id_in(mv->to, mv->n_to, id)) ||
                !j->env.alive(j->env.arg, id))
                continue;
            *out = *id;
            return true;
        }
    return false;
}

/* Add [lo, hi) ∩ slice s (hash values with top bits s) to the packed pairs of u. */
static int unit_add(join_unit *u, uint64_t lo, uint64_t hi, unsigned s)
{
    const unsigned shift = 64 - 4; /* KV_JOIN_SLICES = 16 */
    uint64_t a = (uint64_t)s << shift, b = a + ((UINT64_C(1) << shift) - 1); /* inclusive */
    /* the range as up to two non-wrapping inclusive spans */
    uint64_t sp[2][2];
    int n = 0;
    if (lo < hi) {
        sp[n][0] = lo, sp[n][1] = hi - 1, n++;
    } else {
        sp[n][0] = lo, sp[n][1] = UINT64_MAX, n++;
        if (hi > 0)
            sp[n][0] = 0, sp[n][1] = hi - 1, n++;
    }
    for (int i = 0; i < n; i++) {
        uint64_t x = sp[i][0] > a ? sp[i][0] : a, y = sp[i][1] < b ? sp[i][1] : b;
        if (x > y)
            continue;
        uint8_t *p = realloc(u->pairs, (u->n_pairs + 1) * 16);
        if (!p)
            return KV_ENOMEM;
        u->pairs = p;
        kv_repl_u64_put(p, 2 * u->n_pairs, x);
        kv_repl_u64_put(p, 2 * u->n_pairs + 1, y + 1); /* y = max wraps to 0: to the top */
        u->n_pairs++;
    }
    return KV_OK;
}

static void plan_free(join_plan *p)
{
    for (size_t i = 0; i < p->n_units; i++)
        free(p->units[i].pairs);
    free(p->units);
    memset(p, 0, sizeof(*p));
}

/* The unit of p for (src, slice s), created with the source's other slices if new. */
static join_unit *plan_unit(kv_join *j, join_plan *p, size_t *cap, const swim_member_id *src,
                            unsigned s)
{
    for (size_t u = s; u < p->n_units; u += KV_JOIN_SLICES) /* blocks of KV_JOIN_SLICES */
        if (swim_id_equal(&p->units[u].source, src))
            return &p->units[u];
    if (p->n_units + KV_JOIN_SLICES > *cap) {
        size_t nc = *cap ? 2 * *cap : 4 * KV_JOIN_SLICES;
        join_unit *nu = realloc(p->units, nc * sizeof(*nu));
        if (!nu)
            return NULL;
        p->units = nu;
        *cap = nc;
    }
    memset(&p->units[p->n_units], 0, KV_JOIN_SLICES * sizeof(join_unit));
    for (unsigned k = 0; k < KV_JOIN_SLICES; k++) {
        p->units[p->n_units + k].source = *src;
        p->units[p->n_units + k].j = j;
    }
    p->n_units += KV_JOIN_SLICES;
    return &p->units[p->n_units - KV_JOIN_SLICES + s];
}

/*
 * Work out the units from the rings into *p: KV_OK (maybe no units: nothing to stream);
 * KV_EUNAVAIL when the rings are not there yet or a range has no live source.
 */
static int plan(kv_join *j, join_plan *p)
{
    memset(p, 0, sizeof(*p));
    const kv_ring *rd = j->env.read_ring(j->env.arg);
    const kv_ring *wr = j->env.write_ring(j->env.arg);
    if (!rd)
        return KV_EUNAVAIL;
    if (!wr || kv_ring_find(rd, &j->self) >= 0)
        return KV_OK; /* we are on the read ring already (a fresh cluster): nothing to take */
    size_t n = (size_t)j->cfg->replication_n;
    if (n > KV_RING_DIFF_MAX_N)
        n = KV_RING_DIFF_MAX_N;
    kv_ring_move *mv = NULL;
    size_t n_mv = 0, cap = 0;
    int rc = kv_ring_diff(rd, wr, n, &mv, &n_mv);
    if (rc != KV_OK)
        return rc;
    p->fp = 0x6a6f696e; /* "join" */
    for (size_t i = 0; i < n_mv && rc == KV_OK; i++) {
        if (!swim_id_in(mv[i].to, mv[i].n_to, &j->self) ||
            swim_id_in(mv[i].from, mv[i].n_from, &j->self))
            continue;
        swim_member_id src;
        if (!pick_source(j, &mv[i], &src)) {
            kv_log_warn("join: no live member holds a range to stream; waiting",
                        KV_UINT("lo", mv[i].lo), KV_UINT("hi", mv[i].hi));
            rc = KV_EUNAVAIL;
            break;
        }
        uint8_t h[16 + SWIM_ID_LEN];
        kv_repl_u64_put(h, 0, mv[i].lo);
        kv_repl_u64_put(h, 1, mv[i].hi);
        memcpy(h + 16, src.b, SWIM_ID_LEN);
        p->fp = kv_ring_hash(h, sizeof(h)) ^ (p->fp * 0x100000001b3ull);
        for (unsigned s = 0; s < KV_JOIN_SLICES && rc == KV_OK; s++) {
            join_unit *u = plan_unit(j, p, &cap, &src, s);
            rc = u ? unit_add(u, mv[i].lo, mv[i].hi, s) : KV_ENOMEM;
        }
    }
    free(mv);
    if (rc != KV_OK) {
        plan_free(p);
        return rc;
    }
    size_t k = 0; /* drop the slices without ranges (the order stays: the unit numbers */
    for (size_t u = 0; u < p->n_units; u++) /* in the checkpoint are positions in it) */
        if (p->units[u].n_pairs)
            p->units[k++] = p->units[u];
    p->n_units = k;
    return KV_OK;
}

/* ---------- streaming ---------- */

static void join_pump(kv_join *j);

static void finish(kv_join *j)
{
    j->active = false;
    uint64_t ms = uv_now(j->loop) - j->started_ms;
    kv_log_info("join complete: serving reads", KV_UINT("units", j->n_units),
                KV_UINT("bytes", j->bytes), KV_UINT("resumed_units", j->resumed), KV_UINT("ms", ms),
                KV_FLOAT("mb_per_s", ms ? (double)j->bytes / 1e6 / ((double)ms / 1000.0) : 0.0));
    file_write(j->path, "normal\n");
    j->env.set_normal(j->env.arg);
}

static void on_unit_done(void *arg, int status, uint64_t raw, uint64_t recs)
{
    join_unit *u = arg;
    kv_join *j = u->j;
    u->pull = NULL;
    u->running = false;
    j->running--;
    if (status != KV_OK) {
        j->failures++;
        u->retry_at = uv_now(j->loop) + JOIN_RETRY_MS;
        kv_log_warn("join: streaming a slice failed; retrying", KV_ERR(status),
                    KV_STR("source", j->env.addr_of(j->env.arg, &u->source)
                                         ? j->env.addr_of(j->env.arg, &u->source)
                                         : "?"));
        join_pump(j);
        return;
    }
    size_t idx = (size_t)(u - j->units);
    u->done = true;
    u->bytes = raw;
    j->bytes += raw;
    j->n_done++;
    ckpt_done(j, idx);
    kv_log_info("join progress", KV_UINT("units_done", j->n_done), KV_UINT("units", j->n_units),
                KV_FLOAT("percent", 100.0 * (double)j->n_done / (double)j->n_units),
                KV_UINT("bytes", j->bytes), KV_UINT("records", recs));
    join_pump(j);
}

static void on_retry(uv_timer_t *t)
{
    kv_join *j = t->data;
    if (j->planned)
        join_pump(j);
    else
        kv_join_update(j);
}

/* Is a unit from this source streaming now? */
static bool source_busy(const kv_join *j, const swim_member_id *src)
{
    for (size_t i = 0; i < j->n_units; i++)
        if (j->units[i].running && swim_id_equal(&j->units[i].source, src))
            return true;
    return false;
}

/* Start units, one per source at a time (each source's streaming.rate is then what the
 * join gets from it; units of one source side by side only split its budget) and at most
 * JOIN_PARALLEL; finish when all are done. */
static void join_pump(kv_join *j)
{
    if (!j->active || !j->planned)
        return;
    uint64_t now = uv_now(j->loop), next_retry = UINT64_MAX;
    /* Not before every coordinator knows we are joining (gossip takes a few protocol
     * periods): a write one of them acknowledged on the old preference list alone after
     * our stream passed its key would be missing here, and once we count for reads a
     * quorum read could miss it. From then on every write also reaches W in our list. */
    uint64_t start_at = j->started_ms + kv_config_gossip_spread_ms(j->cfg);
    if (now < start_at && j->n_units > j->n_done) {
        uv_timer_start(&j->retry, on_retry, start_at - now, 0);
        return;
    }
    if (j->n_done == j->n_units) {
        finish(j);
        return;
    }
    for (size_t i = 0; i < j->n_units && j->running < JOIN_PARALLEL; i++) {
        join_unit *u = &j->units[i];
        if (u->done || u->running || source_busy(j, &u->source))
            continue;
        if (u->retry_at > now) {
            if (u->retry_at < next_retry)
                next_retry = u->retry_at;
            continue;
        }
        const char *addr = j->env.addr_of(j->env.arg, &u->source);
        u->pull =
            addr ? kv_sync_pull_start(j->sync, addr, u->pairs, u->n_pairs, on_unit_done, u) : NULL;
        if (!u->pull) {
            u->retry_at = now + JOIN_RETRY_MS;
            if (u->retry_at < next_retry)
                next_retry = u->retry_at;
            continue;
        }
        u->running = true;
        j->running++;
    }
    if (next_retry != UINT64_MAX)
        uv_timer_start(&j->retry, on_retry, next_retry - now, 0);
}

void kv_join_update(kv_join *j)
{
    if (!j->active || !j->env.met_cluster(j->env.arg))
        return;
    join_plan p;
    if (plan(j, &p) != KV_OK) { /* not yet: try again in a while (or at the next change) */
        uv_timer_start(&j->retry, on_retry, JOIN_RETRY_MS, 0);
        return;
    }
    if (j->planned && p.fp == j->fp) { /* the same plan: carry on */
        plan_free(&p);
        join_pump(j);
        return;
    }
    bool replan = j->planned;
    /* Units of the new plan whose ranges the old one finished stay finished, whatever
     * source they came from: the data is here. (A source seen dead for a moment, or a
     * member flapping, changes the plan's sources; re-streaming every unit of it was the
     * cost.) */
    uint64_t carried_bytes = 0;
    size_t carried = 0;
    for (size_t u = 0; u < p.n_units; u++)
        for (size_t o = 0; o < j->n_units; o++) {
            const join_unit *x = &j->units[o];
            if (!x->done || x->n_pairs != p.units[u].n_pairs ||
                memcmp(x->pairs, p.units[u].pairs, 16 * x->n_pairs) != 0)
                continue;
            p.units[u].done = true;
            p.units[u].bytes = x->bytes;
            p.n_done++;
            carried++;
            carried_bytes += x->bytes;
            break;
        }
    units_free(j);
    j->units = p.units;
    j->n_units = p.n_units;
    j->n_done = p.n_done;
    j->fp = p.fp;
    j->bytes = carried_bytes;
    j->resumed = 0;
    j->planned = true;
    ckpt_load_or_start(j);
    for (size_t u = 0; carried && u < j->n_units; u++) /* the new checkpoint keeps them */
        if (j->units[u].done)
            ckpt_done(j, u);
    if (replan)
        kv_log_info("join: the ring changed, streaming plan redone", KV_UINT("units", j->n_units),
                    KV_UINT("units_kept", carried));
    else
        kv_log_info("joining: streaming our ranges", KV_UINT("units", j->n_units),
                    KV_UINT("resumed_units", j->resumed));
    join_pump(j);
}

int kv_join_start(kv_join **out, uv_loop_t *loop, const kv_config *cfg, kv_sync *sync,
                  kv_metrics *metrics, const swim_member_id *self, const kv_join_env *env)
{
    kv_join *j = calloc(1, sizeof(*j));
    if (!j)
        return KV_ENOMEM;
    j->loop = loop;
    j->cfg = cfg;
    j->sync = sync;
    j->metrics = metrics;
    j->self = *self;
    j->env = *env;
    j->active = true;
    j->started_ms = uv_now(loop);
    if (join_path(cfg, j->path, sizeof(j->path)) != KV_OK) {
        free(j);
        return KV_ECONFIG;
    }
    uv_timer_init(loop, &j->retry);
    j->retry.data = j;
    *out = j;
    return KV_OK;
}

bool kv_join_active(const kv_join *j)
{
    return j && j->active;
}

void kv_join_get_progress(const kv_join *j, kv_join_progress *out)
{
    memset(out, 0, sizeof(*out));
    if (!j)
        return;
    out->joining = j->active;
    out->units = (uint32_t)j->n_units;
    out->units_done = (uint32_t)j->n_done;
    out->bytes = j->bytes;
    out->resumed_units = j->resumed;
}

void kv_join_publish_metrics(kv_join *j)
{
    kv_join_progress p;
    kv_join_get_progress(j, &p);
    kv_metrics *mx = j->metrics;
    kv_metrics_gauge(mx, "kv_join_active", "1 while this node streams its ranges to join.",
                     p.joining ? 1.0 : 0.0);
    kv_metrics_gauge(mx, "kv_join_units", "Units (source x hash slice) of the join's stream.",
                     (double)p.units);
    kv_metrics_gauge(mx, "kv_join_units_done", "Units of the join's stream finished.",
                     (double)p.units_done);
    kv_metrics_gauge(mx, "kv_join_units_resumed",
                     "Units found finished in the checkpoint when the join (re)started.",
                     (double)p.resumed_units);
    kv_metrics_counter_set(mx, "kv_join_bytes_total",
                           "Raw bytes streamed for the join (including before a restart).",
                           p.bytes);
    kv_metrics_counter_set(mx, "kv_join_unit_failures_total",
                           "Units of the join's stream that failed and were retried.", j->failures);
}

static void on_closed(uv_handle_t *h)
{
    kv_join *j = h->data;
    void (*cb)(void *) = j->close_cb;
    void *arg = j->close_arg;
    free(j);
    if (cb)
        cb(arg);
}

void kv_join_close(kv_join *j, void (*done)(void *arg), void *arg)
{
    j->close_cb = done;
    j->close_arg = arg;
    j->active = false;
    units_free(j);
    uv_close((uv_handle_t *)&j->retry, on_closed);
}
