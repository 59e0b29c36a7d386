/*
 * worker.c — kvbench's load engine (see worker.h). Each worker thread owns one libuv loop,
 * its connections, its random generator and its statistics; the main thread only touches
 * a worker through its async handle, its atomic stop flag and its interval counters
 * (under the worker's mutex).
 *
 * Design notes — a connection's life
 *
 *   DOWN --connect--> CONNECTING --ok--> READY --EOF, error, timeout, bad reply--> CLOSING
 *     ^                   |                                                          |
 *     |                   +--refused / timed out: count a connect error---> CLOSING  |
 *     +------------- retry timer (0 after a working connection, 100 ms..1 s backoff  <+
 *                    after failed connects) unless the worker is shutting down
 *
 * A READY connection carries up to `pipeline` operations in a FIFO; replies come back in
 * order (HTTP/1.1 and RESP both promise that), so each reply belongs to the oldest
 * operation. When a connection ends, every operation still on it fails with the reason
 * (closed, timeout, protocol); nothing is resent, since the server may have acted on it.
 *
 * Design notes — when operations start
 *
 * - Closed loop (rate 0): a connection starts its next operation when a reply frees a
 *   slot. Latency runs from the moment the request is written.
 * - Open loop (rate R): operation k of a worker is due at t0 + offset + k * threads/R,
 *   whatever happened to earlier ones. A timerfd (nanosecond resolution, watched with
 *   uv_poll) wakes the loop at the next due time; a due operation goes out on any
 *   connection with a free slot, and waits (in the schedule, not in memory) when none has
 *   one. Latency runs from the due time, not the send time, so a server that stalls is
 *   charged for the whole queue it caused (no coordinated omission). Operations due
 *   before the end that could not start within a second after it are counted as missed.
 * - Warm-up: operations whose start falls in [t0, t0 + warmup) are counted apart and not
 *   recorded. Load phase: no warm-up; every key index i with i % threads == worker id is
 *   written once.
 * - Ending: a phase stops starting operations at the end of its duration, after its
 *   share of --ops, on kvb_run_stop, or at max_time; it then waits for in-flight replies
 *   (each bounded by the request timeout), closes every handle and leaves its loop.
 */
#include "worker.h"

#include "kvstore/error.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define WK_TICK_MS        50
#define WK_BACKOFF_MIN_MS 100
#define WK_BACKOFF_MAX_MS 1000
#define WK_READ_BUF       (64 * 1024)
#define WK_END_GRACE_NS   1000000000ull

uint64_t kvb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---------- statistics helpers ---------- */

void kvb_stats_init(kvb_stats *s)
{
    memset(s, 0, offsetof(kvb_stats, hist));
    s->first_ns = UINT64_MAX;
    for (int k = 0; k < KVB_OP_KINDS; k++)
        kvb_hist_init(&s->hist[k]);
    kvb_hist_init(&s->all);
}

void kvb_stats_merge(kvb_stats *dst, const kvb_stats *src)
{
    dst->sent += src->sent;
    dst->warmup_ops += src->warmup_ops;
    dst->warmup_fail += src->warmup_fail;
    for (int k = 0; k < KVB_OP_KINDS; k++) {
        dst->ok[k] += src->ok[k];
        dst->miss[k] += src->miss[k];
        dst->fail[k] += src->fail[k];
        kvb_hist_merge(&dst->hist[k], &src->hist[k]);
    }
    for (int e = 0; e < KVB_E_KINDS; e++)
        dst->errors[e] += src->errors[e];
    for (int c = 0; c < KVB_HTTP_CODES; c++)
        dst->http_status[c] += src->http_status[c];
    dst->missed += src->missed;
    if (src->first_ns < dst->first_ns)
        dst->first_ns = src->first_ns;
    if (src->last_ns > dst->last_ns)
        dst->last_ns = src->last_ns;
    kvb_hist_merge(&dst->all, &src->all);
}

uint64_t kvb_stats_ops(const kvb_stats *s)
{
    uint64_t n = 0;
    for (int k = 0; k < KVB_OP_KINDS; k++)
        n += s->ok[k] + s->miss[k] + s->fail[k];
    return n;
}

uint64_t kvb_stats_failed(const kvb_stats *s)
{
    uint64_t n = 0;
    for (int k = 0; k < KVB_OP_KINDS; k++)
        n += s->fail[k];
    return n;
}

/* ---------- types ---------- */

typedef struct wk_op {
    uint64_t start_ns; /* latency counts from here (the due time in open loop) */
    uint64_t sent_ns;  /* when it was written: the request timeout counts from here */
    uint8_t kind;
    uint8_t replies_left;
    uint8_t outcome; /* worst so far (kvb_outcome) */
    uint8_t errkind;
    int http_status;
} wk_op;

typedef enum wk_state { WK_DOWN = 0, WK_CONNECTING, WK_READY, WK_CLOSING } wk_state;

typedef struct kvb_worker kvb_worker;

typedef struct wk_conn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_timer_t retry;
    kvb_worker *w;
    const kvb_endpoint *ep;
    wk_state state;
    uint64_t since_ns; /* when the connect started */
    uint64_t backoff_ms;
    bool failed_connect; /* the last attempt failed: back off before the next */
    wk_op *q;            /* in-flight FIFO, capacity cfg->pipeline */
    unsigned qhead, qlen;
    kvb_parser parser;
    int broken;       /* set during a parse: KVB_E_* + 1 to close with after the feed */
    bool close_after; /* the server said Connection: close */
    char rbuf[WK_READ_BUF];
} wk_conn;

typedef struct wk_write {
    uv_write_t req;
    size_t len;
    char data[];
} wk_write;

struct kvb_worker {
    const kvb_cfg *cfg;
    kvb_phase phase;
    unsigned id;
    pthread_t thread;
    bool thread_started;
    uv_loop_t loop;
    bool loop_ready;
    uv_async_t wake;
    uv_timer_t tick;
    uv_poll_t sched;
    int tfd;
    bool shutting;

    wk_conn *conns;
    unsigned nconns;
    unsigned rr;
    unsigned inflight;
    kvb_rng rng;
    kv_buf enc;

    uint64_t t0, warm_end, end_ns, hard_end; /* end_ns UINT64_MAX in ops mode */
    bool stopping;                           /* start nothing more */
    /* open loop */
    bool open;
    double interval_ns, offset_ns;
    uint64_t next_seq;
    /* --ops */
    uint64_t ops_share, measured_started;
    /* load */
    uint64_t load_next;

    atomic_bool stop_req;
    atomic_bool finished;

    kvb_stats *st; /* private to the worker until joined */
    pthread_mutex_t lock;
    uint64_t idone, ierr; /* interval counters, under lock */
    kvb_hist ihist;       /* under lock */
    char first_error[512];
};

struct kvb_run {
    kvb_worker *w;
    unsigned n;
};

/* ---------- forward declarations ---------- */

static void conn_connect(wk_conn *c);
static void conn_fail(wk_conn *c, kvb_errkind why);
static void conn_fill(wk_conn *c);
static void dispatch(kvb_worker *w);
static void maybe_finish(kvb_worker *w);

/* ---------- operation accounting ---------- */

static uint64_t due_at(const kvb_worker *w, uint64_t seq)
{
    return w->t0 + (uint64_t)(w->offset_ns + (double)seq * w->interval_ns);
}

static void note_error_text(kvb_worker *w, const char *fmt, const char *a, const char *b)
{
    if (w->first_error[0] == '\0')
        snprintf(w->first_error, sizeof w->first_error, fmt, a, b);
}

static void count_connect_error(kvb_worker *w)
{
    w->st->errors[KVB_E_CONNECT]++;
    pthread_mutex_lock(&w->lock);
    w->ierr++;
    pthread_mutex_unlock(&w->lock);
}

/* An operation is over (replied, or failed with its connection). */
static void op_finish(kvb_worker *w, const wk_op *op, uint64_t now)
{
    kvb_stats *st = w->st;
    bool measured = w->phase == KVB_PHASE_LOAD || op->start_ns >= w->warm_end;
    uint64_t lat = now > op->start_ns ? now - op->start_ns : 0;
    bool failed = op->outcome == KVB_FAIL;
    w->inflight--;
    if (measured) {
        if (failed) {
            st->fail[op->kind]++;
            st->errors[op->errkind]++;
            if (op->errkind == KVB_E_HTTP && op->http_status > 0 &&
                op->http_status < KVB_HTTP_CODES)
                st->http_status[op->http_status]++;
        } else {
            if (op->outcome == KVB_MISS)
                st->miss[op->kind]++;
            else
                st->ok[op->kind]++;
            kvb_hist_record(&st->hist[op->kind], lat);
            kvb_hist_record(&st->all, lat);
        }
        if (op->start_ns < st->first_ns)
            st->first_ns = op->start_ns;
        if (now > st->last_ns)
            st->last_ns = now;
    } else {
        st->warmup_ops++;
        if (failed)
            st->warmup_fail++;
    }
    pthread_mutex_lock(&w->lock);
    w->idone++;
    if (failed)
        w->ierr++;
    else
        kvb_hist_record(&w->ihist, lat);
    pthread_mutex_unlock(&w->lock);
}

/* Whether an operation due at `when` may still start (now is the real time). */
static bool want_more(kvb_worker *w, uint64_t when, uint64_t now)
{
    if (w->stopping)
        return false;
    if (now >= w->hard_end || atomic_load_explicit(&w->stop_req, memory_order_relaxed)) {
        w->stopping = true;
        return false;
    }
    if (w->phase == KVB_PHASE_LOAD) {
        if (w->load_next >= w->cfg->nkeys) {
            w->stopping = true;
            return false;
        }
        return true;
    }
    /* An open loop may still start operations that were due before the end for a short
     * grace period (a late timer wake-up or a brief stall at the very end is then charged
     * as latency); past that, whatever is left counts as missed. */
    uint64_t stop_at = w->end_ns;
    if (w->open && stop_at != UINT64_MAX)
        stop_at += WK_END_GRACE_NS;
    if (now >= stop_at) {
        w->stopping = true;
        return false;
    }
    if (when >= w->end_ns)
        return false;
    if (w->ops_share && when >= w->warm_end && w->measured_started >= w->ops_share) {
        w->stopping = true;
        return false;
    }
    return true;
}

/* Open loop: operations that were due before the end but never started. */
static void count_missed(kvb_worker *w, uint64_t now)
{
    if (!w->open || w->phase != KVB_PHASE_RUN)
        return;
    uint64_t limit = now < w->end_ns ? now : w->end_ns;
    uint64_t missed = 0;
    while (due_at(w, w->next_seq) < limit) {
        if (due_at(w, w->next_seq) >= w->warm_end) {
            if (w->ops_share && w->measured_started + missed >= w->ops_share)
                break;
            missed++;
        }
        w->next_seq++;
    }
    w->st->missed += missed;
}

/* ---------- writing ---------- */

static void on_write(uv_write_t *req, int status)
{
    wk_write *wr = (wk_write *)req;
    wk_conn *c = req->data;
    free(wr);
    if (status < 0 && status != UV_ECANCELED && c->state == WK_READY) {
        note_error_text(c->w, "write to %s: %s", c->ep->url, uv_strerror(status));
        conn_fail(c, KVB_E_CLOSED);
    }
}

/* Write bytes on c: try the socket directly, queue what did not fit. 0 or -1. */
static int conn_write(wk_conn *c, const char *p, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int rc = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (rc == UV_EAGAIN || rc == UV_ENOSYS)
        rc = 0;
    if (rc < 0)
        return -1;
    if ((size_t)rc == n)
        return 0;
    size_t rest = n - (size_t)rc;
    wk_write *wr = malloc(sizeof *wr + rest);
    if (!wr)
        return -1;
    memcpy(wr->data, p + rc, rest);
    wr->len = rest;
    wr->req.data = c;
    b = uv_buf_init(wr->data, (unsigned)rest);
    if (uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        free(wr);
        return -1;
    }
    return 0;
}

/* Start one operation on c (READY, with a free slot), due at start_ns. */
static void op_start(wk_conn *c, uint64_t start_ns, uint64_t now)
{
    kvb_worker *w = c->w;
    const kvb_cfg *cfg = w->cfg;
    kvb_op_kind kind;
    uint64_t idx;
    if (w->phase == KVB_PHASE_LOAD) {
        kind = KVB_OP_UPDATE;
        idx = w->load_next;
        w->load_next += cfg->threads;
    } else {
        kind = kvb_mix_pick(&cfg->mix, &w->rng);
        idx = kvb_key_pick(cfg->dist, &cfg->zipf, cfg->nkeys, &w->rng);
        if (start_ns >= w->warm_end)
            w->measured_started++;
    }
    char key[1100];
    kvb_key_format(idx, cfg->key_size, key);
    const char *val = cfg->values + kvb_rng_below(&w->rng, KVB_VALUE_SLACK);

    wk_op *op = &c->q[(c->qhead + c->qlen) % cfg->pipeline];
    memset(op, 0, sizeof *op);
    op->start_ns = start_ns;
    op->sent_ns = now;
    op->kind = (uint8_t)kind;
    op->replies_left = (uint8_t)kvb_proto_replies(&cfg->proto, kind);
    op->outcome = KVB_OK;
    c->qlen++;
    w->inflight++;
    w->st->sent++;

    kv_buf_reset(&w->enc);
    if (kvb_proto_encode(&cfg->proto, c->ep->host, kind, key, cfg->key_size, val, cfg->value_size,
                         &w->enc) != KV_OK ||
        conn_write(c, w->enc.data, w->enc.len) != 0) {
        note_error_text(w, "write to %s: %s", c->ep->url, "failed");
        conn_fail(c, KVB_E_CLOSED);
    }
}

/* Closed loop: keep c's pipeline full while the phase wants more. */
static void conn_fill(wk_conn *c)
{
    kvb_worker *w = c->w;
    while (c->state == WK_READY && !c->close_after && !c->broken && c->qlen < w->cfg->pipeline) {
        uint64_t now = kvb_now_ns();
        if (!want_more(w, now, now))
            break;
        op_start(c, now, now);
    }
}

static wk_conn *free_conn(kvb_worker *w)
{
    for (unsigned i = 0; i < w->nconns; i++) {
        wk_conn *c = &w->conns[(w->rr + i) % w->nconns];
        if (c->state == WK_READY && !c->close_after && !c->broken && c->qlen < w->cfg->pipeline) {
            w->rr = (w->rr + i + 1) % w->nconns;
            return c;
        }
    }
    return NULL;
}

static void sched_arm(kvb_worker *w, uint64_t at)
{
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    its.it_value.tv_sec = (time_t)(at / 1000000000ull);
    its.it_value.tv_nsec = (long)(at % 1000000000ull);
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
        its.it_value.tv_nsec = 1;
    timerfd_settime(w->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* Open loop: start every operation that is due and has a connection; arm the timer. */
static void dispatch(kvb_worker *w)
{
    if (!w->open || w->shutting)
        return;
    for (;;) {
        uint64_t now = kvb_now_ns();
        uint64_t due = due_at(w, w->next_seq);
        if (!want_more(w, due, now))
            break;
        if (due > now) {
            sched_arm(w, due);
            break;
        }
        wk_conn *c = free_conn(w);
        if (!c)
            break; /* a reply will free a slot and call us again */
        w->next_seq++;
        op_start(c, due, now);
    }
}

/* ---------- replies ---------- */

static void on_reply(void *ctx, const kvb_reply *r)
{
    wk_conn *c = ctx;
    kvb_worker *w = c->w;
    if (c->broken || c->state != WK_READY)
        return;
    if (c->qlen == 0) {
        c->broken = KVB_E_PROTOCOL + 1; /* a reply nobody asked for */
        return;
    }
    wk_op *op = &c->q[c->qhead];
    unsigned idx = kvb_proto_replies(&w->cfg->proto, op->kind) - op->replies_left;
    kvb_errkind kind = KVB_E_PROTOCOL;
    kvb_outcome o = kvb_proto_judge(&w->cfg->proto, op->kind, idx, r, &kind);
    if (o > op->outcome) {
        op->outcome = (uint8_t)o;
        if (o == KVB_FAIL) {
            op->errkind = (uint8_t)kind;
            op->http_status = r->http_status;
        }
    }
    if (r->http_close)
        c->close_after = true;
    if (--op->replies_left > 0)
        return;
    wk_op done = *op;
    c->qhead = (c->qhead + 1) % w->cfg->pipeline;
    c->qlen--;
    op_finish(w, &done, kvb_now_ns());
    if (w->open)
        dispatch(w);
    else
        conn_fill(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    wk_conn *c = h->data;
    *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    wk_conn *c = s->data;
    if (c->state != WK_READY)
        return;
    if (nread > 0) {
        if (kvb_parser_feed(&c->parser, buf->base, (size_t)nread, on_reply, c) != 0 && !c->broken)
            c->broken = KVB_E_PROTOCOL + 1;
    } else if (nread < 0) {
        if (nread == UV_EOF)
            (void)kvb_parser_feed(&c->parser, NULL, 0, on_reply, c);
        else
            note_error_text(c->w, "read from %s: %s", c->ep->url, uv_strerror((int)nread));
        if (!c->broken)
            c->broken = KVB_E_CLOSED + 1;
    }
    if (c->broken)
        conn_fail(c, (kvb_errkind)(c->broken - 1));
    else if (c->close_after)
        conn_fail(c, KVB_E_CLOSED);
    maybe_finish(c->w);
}

/* ---------- connection life ---------- */

static void on_retry(uv_timer_t *t)
{
    wk_conn *c = t->data;
    if (!c->w->shutting && !c->w->stopping)
        conn_connect(c);
    maybe_finish(c->w);
}

static void on_conn_closed(uv_handle_t *h)
{
    wk_conn *c = h->data;
    kvb_worker *w = c->w;
    c->state = WK_DOWN;
    if (w->shutting || w->stopping) {
        maybe_finish(w);
        return;
    }
    uint64_t delay = 0;
    if (c->failed_connect) {
        delay = c->backoff_ms;
        c->backoff_ms =
            c->backoff_ms * 2 > WK_BACKOFF_MAX_MS ? WK_BACKOFF_MAX_MS : c->backoff_ms * 2;
    }
    uv_timer_start(&c->retry, on_retry, delay, 0);
}

/* End c: fail what is in flight with `why`, close the socket; on_conn_closed reconnects. */
static void conn_fail(wk_conn *c, kvb_errkind why)
{
    kvb_worker *w = c->w;
    if (c->state == WK_CLOSING || c->state == WK_DOWN)
        return;
    uint64_t now = kvb_now_ns();
    c->state = WK_CLOSING;
    while (c->qlen > 0) {
        wk_op op = c->q[c->qhead];
        c->qhead = (c->qhead + 1) % w->cfg->pipeline;
        c->qlen--;
        op.outcome = KVB_FAIL;
        op.errkind = (uint8_t)why;
        op_finish(w, &op, now);
    }
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    /* The other connections may take what this one cannot. */
    dispatch(w);
}

static void on_connect(uv_connect_t *req, int status)
{
    wk_conn *c = req->data;
    kvb_worker *w = c->w;
    if (status == UV_ECANCELED || c->state != WK_CONNECTING)
        return;
    if (status < 0) {
        count_connect_error(w);
        note_error_text(w, "cannot connect to %s: %s", c->ep->url, uv_strerror(status));
        c->failed_connect = true;
        c->state = WK_CLOSING;
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        return;
    }
    c->state = WK_READY;
    c->failed_connect = false;
    c->backoff_ms = WK_BACKOFF_MIN_MS;
    c->broken = 0;
    c->close_after = false;
    kvb_parser_reset(&c->parser);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        conn_fail(c, KVB_E_CLOSED);
        return;
    }
    if (w->open)
        dispatch(w);
    else
        conn_fill(c);
    maybe_finish(w);
}

static void conn_connect(wk_conn *c)
{
    kvb_worker *w = c->w;
    if (uv_tcp_init(&w->loop, &c->tcp) != 0) {
        count_connect_error(w);
        return;
    }
    c->tcp.data = c;
    c->creq.data = c;
    c->state = WK_CONNECTING;
    c->since_ns = kvb_now_ns();
    uv_tcp_nodelay(&c->tcp, 1);
    int rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&c->ep->addr, on_connect);
    if (rc != 0) {
        count_connect_error(w);
        note_error_text(w, "cannot connect to %s: %s", c->ep->url, uv_strerror(rc));
        c->failed_connect = true;
        c->state = WK_CLOSING;
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    }
}

/* ---------- worker life ---------- */

static void close_if_open(uv_handle_t *h)
{
    if (h->loop && !uv_is_closing(h))
        uv_close(h, NULL);
}

static void shutdown_worker(kvb_worker *w)
{
    if (w->shutting)
        return;
    w->shutting = true;
    for (unsigned i = 0; i < w->nconns; i++) {
        wk_conn *c = &w->conns[i];
        uv_timer_stop(&c->retry);
        close_if_open((uv_handle_t *)&c->retry);
        if (c->state == WK_READY || c->state == WK_CONNECTING) {
            c->state = WK_CLOSING;
            uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        }
    }
    close_if_open((uv_handle_t *)&w->tick);
    /* w->wake stays open (it is unref'ed, so it does not hold the loop): the main thread
     * may still send to it; worker_free closes it after the join. */
    if (w->open)
        close_if_open((uv_handle_t *)&w->sched);
}

/* Leave once nothing is in flight and nothing more will start. */
static void maybe_finish(kvb_worker *w)
{
    if (w->shutting || w->inflight > 0)
        return;
    uint64_t now = kvb_now_ns();
    bool more = w->open ? want_more(w, due_at(w, w->next_seq), now) : want_more(w, now, now);
    if (more)
        return;
    count_missed(w, now);
    shutdown_worker(w);
}

static void on_tick(uv_timer_t *t)
{
    kvb_worker *w = t->data;
    uint64_t now = kvb_now_ns();
    for (unsigned i = 0; i < w->nconns; i++) {
        wk_conn *c = &w->conns[i];
        if (c->state == WK_READY && c->qlen > 0 &&
            now - c->q[c->qhead].sent_ns > w->cfg->timeout_ns) {
            conn_fail(c, KVB_E_TIMEOUT);
        } else if (c->state == WK_CONNECTING && now - c->since_ns > w->cfg->timeout_ns) {
            count_connect_error(w);
            note_error_text(w, "cannot connect to %s: %s", c->ep->url, "timed out");
            c->failed_connect = true;
            c->state = WK_CLOSING;
            uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        }
    }
    if (w->open)
        dispatch(w);
    else {
        /* A closed loop with every connection idle (all were down) restarts here. */
        for (unsigned i = 0; i < w->nconns && !w->stopping; i++)
            conn_fill(&w->conns[i]);
    }
    (void)want_more(w, now, now); /* notices the end of the duration and max_time */
    if (w->stopping && w->inflight > 0 && now >= w->hard_end + w->cfg->timeout_ns) {
        /* Past every bound: fail what is left rather than wait. */
        for (unsigned i = 0; i < w->nconns; i++)
            if (w->conns[i].state == WK_READY)
                conn_fail(&w->conns[i], KVB_E_TIMEOUT);
    }
    maybe_finish(w);
}

static void on_sched(uv_poll_t *p, int status, int events)
{
    kvb_worker *w = p->data;
    uint64_t expirations;
    ssize_t n = read(w->tfd, &expirations, sizeof expirations);
    (void)n; /* EAGAIN when a dispatch re-armed it meanwhile: nothing to do */
    dispatch(w);
    maybe_finish(w);
}

static void on_wake(uv_async_t *a)
{
    kvb_worker *w = a->data;
    (void)want_more(w, UINT64_MAX, kvb_now_ns()); /* sees stop_req */
    maybe_finish(w);
}

static void *worker_main(void *arg)
{
    kvb_worker *w = arg;
    uv_timer_init(&w->loop, &w->tick);
    w->tick.data = w;
    uv_timer_start(&w->tick, on_tick, WK_TICK_MS, WK_TICK_MS);
    if (w->open) {
        uv_poll_init(&w->loop, &w->sched, w->tfd);
        w->sched.data = w;
        uv_poll_start(&w->sched, UV_READABLE, on_sched);
    }
    for (unsigned i = 0; i < w->nconns; i++) {
        wk_conn *c = &w->conns[i];
        uv_timer_init(&w->loop, &c->retry);
        c->retry.data = c;
        conn_connect(c);
    }
    if (w->open)
        dispatch(w);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    atomic_store(&w->finished, true);
    return NULL;
}

static void worker_free(kvb_worker *w)
{
    if (w->loop_ready) {
        /* Every other handle is closed once uv_run returned. */
        uv_close((uv_handle_t *)&w->wake, NULL);
        uv_run(&w->loop, UV_RUN_NOWAIT);
        uv_loop_close(&w->loop);
    }
    for (unsigned i = 0; i < w->nconns; i++) {
        kvb_parser_fini(&w->conns[i].parser);
        free(w->conns[i].q);
    }
    free(w->conns);
    kv_buf_free(&w->enc);
    if (w->tfd >= 0)
        close(w->tfd);
    free(w->st);
    pthread_mutex_destroy(&w->lock);
}

int kvb_run_start(kvb_run **out, const kvb_cfg *cfg, kvb_phase phase, uint64_t t0)
{
    kvb_run *r = calloc(1, sizeof *r);
    if (!r)
        return KV_ENOMEM;
    r->n = cfg->threads;
    r->w = calloc(r->n, sizeof *r->w);
    if (!r->w) {
        free(r);
        return KV_ENOMEM;
    }
    int rc = KV_OK;
    for (unsigned t = 0; t < r->n && rc == KV_OK; t++) {
        kvb_worker *w = &r->w[t];
        w->cfg = cfg;
        w->phase = phase;
        w->id = t;
        w->tfd = -1;
        pthread_mutex_init(&w->lock, NULL);
        kvb_hist_init(&w->ihist);
        w->st = malloc(sizeof *w->st);
        if (!w->st) {
            rc = KV_ENOMEM;
            break;
        }
        kvb_stats_init(w->st);
        kvb_rng_seed(&w->rng, cfg->seed * 1000003u + t * 7919u + (uint64_t)phase);
        w->t0 = t0;
        w->hard_end = t0 + cfg->max_time_ns;
        if (phase == KVB_PHASE_LOAD) {
            w->warm_end = t0;
            w->end_ns = UINT64_MAX;
            w->load_next = t;
        } else {
            w->warm_end = t0 + cfg->warmup_ns;
            w->end_ns = cfg->duration_ns ? w->warm_end + cfg->duration_ns : UINT64_MAX;
            if (cfg->ops) {
                w->ops_share = cfg->ops / r->n + (t < cfg->ops % r->n ? 1 : 0);
                if (w->ops_share == 0)
                    w->stopping = true;
            }
            if (cfg->rate > 0) {
                w->open = true;
                w->interval_ns = 1e9 * (double)r->n / cfg->rate;
                w->offset_ns = 1e9 * (double)t / cfg->rate;
            }
        }
        /* Connections t, t+threads, ... of the cfg->conns; connection i talks to
         * endpoint i % neps, so every endpoint gets its share. */
        unsigned nc = cfg->conns / r->n + (t < cfg->conns % r->n ? 1 : 0);
        w->nconns = nc;
        w->conns = calloc(nc ? nc : 1, sizeof *w->conns);
        if (!w->conns) {
            rc = KV_ENOMEM;
            break;
        }
        for (unsigned i = 0; i < nc; i++) {
            wk_conn *c = &w->conns[i];
            c->w = w;
            c->ep = &cfg->eps[(t + i * r->n) % cfg->neps];
            c->backoff_ms = WK_BACKOFF_MIN_MS;
            c->q = calloc(cfg->pipeline, sizeof *c->q);
            if (!c->q) {
                rc = KV_ENOMEM;
                break;
            }
            kvb_parser_init(&c->parser, cfg->proto.target);
        }
        if (rc != KV_OK)
            break;
        if (w->open) {
            w->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
            if (w->tfd < 0) {
                rc = KV_EIO;
                break;
            }
        }
        if (uv_loop_init(&w->loop) != 0) {
            rc = KV_EIO;
            break;
        }
        w->loop_ready = true;
        uv_async_init(&w->loop, &w->wake, on_wake);
        w->wake.data = w;
        uv_unref((uv_handle_t *)&w->wake);
    }
    for (unsigned t = 0; t < r->n && rc == KV_OK; t++) {
        if (pthread_create(&r->w[t].thread, NULL, worker_main, &r->w[t]) != 0) {
            rc = KV_EIO;
            break;
        }
        r->w[t].thread_started = true;
    }
    if (rc != KV_OK) {
        kvb_run_stop(r);
        kvb_run_join(r, NULL, NULL, 0);
        kvb_run_free(r);
        return rc;
    }
    *out = r;
    return KV_OK;
}

void kvb_run_sample(kvb_run *r, kvb_sample *s)
{
    s->done = s->errors = 0;
    kvb_hist_init(&s->hist);
    for (unsigned t = 0; t < r->n; t++) {
        kvb_worker *w = &r->w[t];
        pthread_mutex_lock(&w->lock);
        s->done += w->idone;
        s->errors += w->ierr;
        kvb_hist_merge(&s->hist, &w->ihist);
        w->idone = w->ierr = 0;
        kvb_hist_init(&w->ihist);
        pthread_mutex_unlock(&w->lock);
    }
}

bool kvb_run_finished(kvb_run *r)
{
    for (unsigned t = 0; t < r->n; t++)
        if (r->w[t].thread_started && !atomic_load(&r->w[t].finished))
            return false;
    return true;
}

void kvb_run_stop(kvb_run *r)
{
    for (unsigned t = 0; t < r->n; t++) {
        kvb_worker *w = &r->w[t];
        atomic_store(&w->stop_req, true);
        if (w->loop_ready && w->thread_started)
            uv_async_send(&w->wake);
    }
}

void kvb_run_join(kvb_run *r, kvb_stats *st, char *first_error, size_t cap)
{
    if (first_error && cap)
        first_error[0] = '\0';
    for (unsigned t = 0; t < r->n; t++) {
        kvb_worker *w = &r->w[t];
        if (w->thread_started) {
            pthread_join(w->thread, NULL);
            w->thread_started = false;
        }
        if (st && w->st)
            kvb_stats_merge(st, w->st);
        if (first_error && cap && first_error[0] == '\0' && w->first_error[0])
            snprintf(first_error, cap, "%s", w->first_error);
    }
}

void kvb_run_free(kvb_run *r)
{
    if (!r)
        return;
    for (unsigned t = 0; t < r->n; t++)
        worker_free(&r->w[t]);
    free(r->w);
    free(r);
}
