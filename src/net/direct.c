/*
 * direct.c — the replica data lane over loop-owned TCP (see direct.h for why and the wire).
 *
 * Objects: a d_out per destination (key → host, data port, queue, back-off) with at most
 * one d_conn (the outgoing uv_tcp_t and its write in flight); a d_in per accepted
 * connection (read buffer, frame parser). A d_conn outlives its d_out when the route
 * changes or d closes: it is "orphaned" (owner NULL), closes, and frees itself in its
 * close callback. d counts its open handles and name lookups; close completes at zero.
 */
#include "net/direct.h"

#include "net/addr.h"

#include "common/buf.h"
#include "common/log.h"
#include "kvstore/error.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define D_HELLO         "KVDATA1\n"
#define D_HELLO_LEN     8
#define D_KEY_MAX       300
#define D_NBUCKETS      64
#define D_BACKOFF_MIN   100
#define D_BACKOFF_MAX   2000
#define D_READ_MIN      (64u << 10)
#define D_READ_KEEP     (256u << 10) /* shrink a read buffer back to this after a big frame */
#define D_WARN_EVERY_MS 10000
#define D_MAX_INBOUND   1024 /* a cluster needs one per peer; beyond this is not a cluster */
#define D_CONNECT_TIMEOUT_MS                                                                       \
    3000 /* a firewall that drops SYNs would otherwise hold for minutes                            \
          */

typedef struct d_out d_out;

typedef struct d_conn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    uv_getaddrinfo_t gai;
    kv_direct *d;
    d_out *owner;   /* NULL once orphaned */
    bool has_tcp;   /* tcp initialised (closed through uv_close) */
    bool resolving; /* gai in flight */
    bool up;        /* connected, hello queued */
    bool writing;
    bool hello_sent;
    uint64_t started_ms; /* when the connect (or lookup) began */
    kv_buf inflight;     /* bytes of the write in flight */
    size_t inflight_frames;
    uint64_t inflight_payload; /* payload bytes of those frames (sent_bytes) */
    char rbuf[64];             /* outgoing connections carry nothing back: only EOF is expected */
} d_conn;

struct d_out {
    d_out *next;
    char key[D_KEY_MAX + 1];
    char host[D_KEY_MAX + 1];
    char port_str[8];
    int port;
    bool numeric;
    struct sockaddr_storage sa; /* when numeric */
    d_conn *conn;
    kv_buf q; /* frames waiting for the connection or the write in flight */
    size_t q_frames;
    uint64_t q_payload; /* payload bytes of those frames (a partial frame counts whole) */
    uint64_t last_used_ms;
    uint64_t backoff_ms, backoff_until_ms;
};

typedef struct d_in {
    uv_tcp_t tcp;
    kv_direct *d;
    struct d_in *prev, *next;
    uint8_t *buf;
    size_t cap, len;
    bool hello_ok;
    bool closing;
} d_in;

struct kv_direct {
    uv_loop_t *loop;
    kv_direct_opts opts;
    uv_tcp_t listener;
    uv_timer_t idle;
    int port;
    d_out *buckets[D_NBUCKETS];
    d_in *ins;
    kv_direct_stats st;
    int handles; /* open handles and lookups; close completes at 0 */
    bool closing;
    void (*done)(void *);
    void *done_arg;
    uint64_t warn_hello_ms, warn_frame_ms, warn_connect_ms, warn_conns_ms;
};

static void d_conn_fail(d_conn *c, bool connect_failed);
static void d_out_connect(kv_direct *d, d_out *o);

static uint64_t d_now(kv_direct *d)
{
    return uv_now(d->loop);
}

/* A warning at most every D_WARN_EVERY_MS per kind: bad input must not flood the log. */
static bool d_warn_due(kv_direct *d, uint64_t *last)
{
    uint64_t now = d_now(d);
    if (*last && now - *last < D_WARN_EVERY_MS)
        return false;
    *last = now ? now : 1;
    return true;
}

static void d_maybe_done(kv_direct *d)
{
    if (!d->closing || d->handles > 0)
        return;
    void (*done)(void *) = d->done;
    void *arg = d->done_arg;
    free(d);
    if (done)
        done(arg);
}

static void d_on_handle_closed(uv_handle_t *h)
{
    kv_direct *d = h->data;
    d->handles--;
    d_maybe_done(d);
}

/* ---------- keys ---------- */

static uint32_t d_hash(const char *s)
{
    return kv_net_addr_hash(s) % D_NBUCKETS;
}

static d_out *d_out_find(const kv_direct *d, const char *key)
{
    for (d_out *o = d->buckets[d_hash(key)]; o; o = o->next)
        if (strcmp(o->key, key) == 0)
            return o;
    return NULL;
}

/* ---------- outgoing ---------- */

static void d_conn_closed(uv_handle_t *h)
{
    d_conn *c = h->data;
    kv_direct *d = c->d;
    kv_buf_free(&c->inflight);
    free(c);
    d->handles--;
    d_maybe_done(d);
}

/* Detach c from its destination and close it; it frees itself. */
static void d_conn_orphan(d_conn *c)
{
    if (c->owner) {
        if (c->owner->conn == c)
            c->owner->conn = NULL;
        c->owner = NULL;
    }
    if (c->has_tcp) {
        if (!uv_is_closing((uv_handle_t *)&c->tcp))
            uv_close((uv_handle_t *)&c->tcp, d_conn_closed);
    } else if (!c->resolving) {
        kv_buf_free(&c->inflight);
        kv_direct *d = c->d;
        free(c);
        d->handles--;
        d_maybe_done(d);
    }
    /* resolving: the lookup callback sees the orphan and frees it */
}

static void d_out_drop_queue(d_out *o, uint64_t *counter)
{
    *counter += o->q_frames;
    kv_buf_reset(&o->q);
    o->q_frames = 0;
    o->q_payload = 0;
}

static void d_on_write(uv_write_t *req, int status);

/* Move the queue into the write in flight (the hello first on a new connection). */
static void d_conn_start_write(d_conn *c)
{
    d_out *o = c->owner;
    if (!o || c->writing || !c->up || (o->q.len == 0 && c->hello_sent))
        return;
    kv_buf tmp = c->inflight;
    c->inflight = o->q;
    o->q = tmp;
    kv_buf_reset(&o->q);
    c->inflight_frames = o->q_frames;
    c->inflight_payload = o->q_payload;
    o->q_frames = 0;
    o->q_payload = 0;
    uv_buf_t bufs[2];
    unsigned n = 0;
    if (!c->hello_sent) {
        bufs[n++] = uv_buf_init((char *)D_HELLO, D_HELLO_LEN);
        c->hello_sent = true;
    }
    if (c->inflight.len)
        bufs[n++] = uv_buf_init(c->inflight.data, (unsigned)c->inflight.len);
    c->writing = true;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, n, d_on_write);
    if (rc != 0) {
        c->writing = false;
        d_conn_fail(c, false);
    }
}

static void d_on_write(uv_write_t *req, int status)
{
    d_conn *c = req->data;
    kv_direct *d = c->d;
    c->writing = false;
    if (status < 0) {
        if (c->owner)
            d_conn_fail(c, false);
        else
            kv_buf_reset(&c->inflight);
        return;
    }
    d->st.sent += c->inflight_frames;
    d->st.sent_bytes += c->inflight_payload;
    c->inflight_frames = 0;
    c->inflight_payload = 0;
    /* A burst grew this buffer (up to queue_max_bytes): give the memory back rather than
     * keep it for every peer forever. */
    if (c->inflight.cap > D_READ_KEEP)
        kv_buf_free(&c->inflight);
    else
        kv_buf_reset(&c->inflight);
    if (c->owner)
        d_conn_start_write(c);
}

/*
 * The connection failed (connect_failed: it never came up) or broke: what was queued is
 * lost, counted; a failed connect starts the back-off. The destination stays routable.
 */
static void d_conn_fail(d_conn *c, bool connect_failed)
{
    kv_direct *d = c->d;
    d_out *o = c->owner;
    if (o) {
        if (connect_failed) {
            d->st.connect_failures++;
            o->backoff_ms = o->backoff_ms ? (o->backoff_ms * 2 > D_BACKOFF_MAX ? D_BACKOFF_MAX
                                                                               : o->backoff_ms * 2)
                                          : D_BACKOFF_MIN;
            o->backoff_until_ms = d_now(d) + o->backoff_ms;
            d_out_drop_queue(o, &d->st.dropped_unreachable);
        } else {
            d->st.dropped_conn_lost += c->inflight_frames;
            d_out_drop_queue(o, &d->st.dropped_conn_lost);
        }
        if (c->up)
            d->st.conns_out--;
    }
    c->inflight_frames = 0;
    c->up = false;
    d_conn_orphan(c);
}

static void d_conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    d_conn *c = h->data;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

/* The peer sends nothing back on our connection; a read result is EOF or an error. */
static void d_conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    d_conn *c = s->data;
    if (nread == 0 || !c->owner)
        return;
    if (nread < 0) {
        kv_log_debug("replica data connection closed by the peer", KV_STR("peer", c->owner->key),
                     KV_STR("reason", uv_strerror((int)nread)));
        d_conn_fail(c, false);
    }
    /* nread > 0: unexpected bytes; ignored */
}

static void d_on_connect(uv_connect_t *req, int status)
{
    d_conn *c = req->data;
    kv_direct *d = c->d;
    if (!c->owner)
        return; /* orphaned while connecting: already closing */
    d_out *o = c->owner;
    if (status < 0) {
        if (d_warn_due(d, &d->warn_connect_ms))
            kv_log_warn("cannot connect to a peer's replica data port", KV_STR("peer", o->key),
                        KV_INT("data_port", o->port), KV_STR("reason", uv_strerror(status)));
        d_conn_fail(c, true);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_tcp_keepalive(&c->tcp, 1, 30);
    c->up = true;
    o->backoff_ms = 0;
    d->st.conns_out++;
    uv_read_start((uv_stream_t *)&c->tcp, d_conn_alloc, d_conn_read);
    d_conn_start_write(c);
}

static void d_conn_dial(d_conn *c, const struct sockaddr *sa)
{
    kv_direct *d = c->d;
    int rc = uv_tcp_init(d->loop, &c->tcp);
    if (rc == 0) {
        c->has_tcp = true;
        c->tcp.data = c;
        c->creq.data = c;
        c->wreq.data = c;
        rc = uv_tcp_connect(&c->creq, &c->tcp, sa, d_on_connect);
    }
    if (rc != 0) {
        if (c->owner && d_warn_due(d, &d->warn_connect_ms))
            kv_log_warn("cannot connect to a peer's replica data port",
                        KV_STR("peer", c->owner->key), KV_STR("reason", uv_strerror(rc)));
        d_conn_fail(c, true);
    }
}

static void d_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    d_conn *c = req->data;
    c->resolving = false;
    if (!c->owner) {
        uv_freeaddrinfo(res);
        d_conn_orphan(c);
        return;
    }
    if (status < 0 || !res) {
        kv_direct *d = c->d;
        if (d_warn_due(d, &d->warn_connect_ms))
            kv_log_warn("cannot resolve a peer's address", KV_STR("peer", c->owner->key),
                        KV_STR("reason", uv_strerror(status)));
        uv_freeaddrinfo(res);
        d_conn_fail(c, true);
        return;
    }
    /* An IPv4 answer first: the default listener (cluster.host 0.0.0.0) is IPv4 only, and a
     * name like localhost may list ::1 first. */
    const struct addrinfo *pick = res;
    for (const struct addrinfo *ai = res; ai; ai = ai->ai_next)
        if (ai->ai_family == AF_INET) {
            pick = ai;
            break;
        }
    d_conn_dial(c, pick->ai_addr);
    uv_freeaddrinfo(res);
}

static void d_out_connect(kv_direct *d, d_out *o)
{
    d_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->d = d;
    c->owner = o;
    c->started_ms = d_now(d);
    o->conn = c;
    d->handles++;
    if (o->numeric) {
        d_conn_dial(c, (const struct sockaddr *)&o->sa);
        return;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    c->gai.data = c;
    c->resolving = true;
    int rc = uv_getaddrinfo(d->loop, &c->gai, d_on_resolved, o->host, o->port_str, &hints);
    if (rc != 0) {
        c->resolving = false;
        d_conn_fail(c, true);
    }
}

/* ---------- incoming ---------- */

static void d_in_closed(uv_handle_t *h)
{
    d_in *in = h->data;
    kv_direct *d = in->d;
    if (in->prev)
        in->prev->next = in->next;
    else
        d->ins = in->next;
    if (in->next)
        in->next->prev = in->prev;
    free(in->buf);
    free(in);
    d->handles--;
    d_maybe_done(d);
}

static void d_in_close(d_in *in)
{
    if (in->closing)
        return;
    in->closing = true;
    in->d->st.conns_in--;
    uv_close((uv_handle_t *)&in->tcp, d_in_closed);
}

static uint32_t d_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/*
 * Room for the next read: at least D_READ_MIN; for a large frame, up to the rest of it but
 * never more than what has already arrived — the buffer doubles with the data, so a header
 * that announces 8 MiB and sends nothing costs 64 KiB, not 8 MiB.
 */
static void d_in_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    d_in *in = h->data;
    size_t want = D_READ_MIN;
    if (in->hello_ok && in->len >= 4) {
        size_t need = 4 + (size_t)d_be32(in->buf);
        if (need <= 4 + in->d->opts.max_msg && need > in->len && need - in->len > want)
            want = need - in->len < in->len ? need - in->len : in->len;
        if (want < D_READ_MIN)
            want = D_READ_MIN;
    }
    if (in->cap - in->len < want) {
        size_t cap = in->len + want;
        uint8_t *nb = realloc(in->buf, cap);
        if (!nb) {
            *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
            return;
        }
        in->buf = nb;
        in->cap = cap;
    }
    *buf = uv_buf_init((char *)in->buf + in->len, (unsigned)(in->cap - in->len));
}

static void d_in_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    d_in *in = s->data;
    kv_direct *d = in->d;
    if (nread == 0 || in->closing)
        return;
    if (nread < 0) {
        if (nread != UV_EOF)
            kv_log_debug("replica data connection error",
                         KV_STR("reason", uv_strerror((int)nread)));
        d_in_close(in);
        return;
    }
    in->len += (size_t)nread;
    size_t pos = 0;
    if (!in->hello_ok) {
        size_t n = in->len < D_HELLO_LEN ? in->len : D_HELLO_LEN;
        if (memcmp(in->buf, D_HELLO, n) != 0) {
            d->st.bad_hello++;
            if (d_warn_due(d, &d->warn_hello_ms))
                kv_log_warn("replica data port: a connection did not start with the hello; "
                            "closed (is something other than a kvstore node connecting?)");
            d_in_close(in);
            return;
        }
        if (in->len < D_HELLO_LEN)
            return;
        in->hello_ok = true;
        pos = D_HELLO_LEN;
    }
    while (!d->closing && !in->closing && in->len - pos >= 4) {
        uint32_t flen = d_be32(in->buf + pos);
        if (flen == 0 || flen > d->opts.max_msg) {
            d->st.bad_frame++;
            if (d_warn_due(d, &d->warn_frame_ms))
                kv_log_warn("replica data port: frame length out of range; connection closed",
                            KV_UINT("length", flen), KV_UINT("max", d->opts.max_msg));
            d_in_close(in);
            return;
        }
        if (in->len - pos - 4 < flen)
            break;
        d->st.received++;
        d->st.received_bytes += flen;
        d->opts.on_recv(d->opts.arg, in->buf + pos + 4, flen);
        pos += 4 + (size_t)flen;
    }
    if (in->closing)
        return;
    if (pos) {
        memmove(in->buf, in->buf + pos, in->len - pos);
        in->len -= pos;
    }
    if (in->cap > D_READ_KEEP && in->len < D_READ_KEEP / 2) {
        uint8_t *nb = realloc(in->buf, D_READ_KEEP);
        if (nb) {
            in->buf = nb;
            in->cap = D_READ_KEEP;
        }
    }
}

static void d_drop_closed(uv_handle_t *h)
{
    kv_direct *d = h->data;
    free(h);
    d->handles--;
    d_maybe_done(d);
}

static void d_on_connection(uv_stream_t *server, int status)
{
    kv_direct *d = server->data;
    if (status < 0 || d->closing) {
        kv_log_debug("replica data port: accept failed", KV_STR("reason", uv_strerror(status)));
        return;
    }
    d_in *in = d->st.conns_in < D_MAX_INBOUND ? calloc(1, sizeof(*in)) : NULL;
    if (!in) {
        /* Accept and close at once: leaving it in the backlog would wake us forever. */
        uv_tcp_t *drop = malloc(sizeof(*drop));
        if (drop && uv_tcp_init(d->loop, drop) == 0) {
            d->handles++;
            drop->data = d;
            (void)uv_accept(server, (uv_stream_t *)drop);
            uv_close((uv_handle_t *)drop, d_drop_closed);
        } else {
            free(drop);
        }
        d->st.refused_conns++;
        if (d_warn_due(d, &d->warn_conns_ms))
            kv_log_warn("replica data port: too many inbound connections; refusing",
                        KV_UINT("open", d->st.conns_in), KV_UINT("max", D_MAX_INBOUND));
        return;
    }
    in->d = d;
    if (uv_tcp_init(d->loop, &in->tcp) != 0) {
        free(in);
        return;
    }
    in->tcp.data = in;
    d->handles++;
    in->next = d->ins;
    if (d->ins)
        d->ins->prev = in;
    d->ins = in;
    d->st.conns_in++;
    if (uv_accept(server, (uv_stream_t *)&in->tcp) != 0) {
        d_in_close(in);
        return;
    }
    uv_tcp_nodelay(&in->tcp, 1);
    uv_tcp_keepalive(&in->tcp, 1, 30);
    uv_read_start((uv_stream_t *)&in->tcp, d_in_alloc, d_in_read);
}

/* ---------- idle connections ---------- */

static void d_on_idle(uv_timer_t *t)
{
    kv_direct *d = t->data;
    uint64_t now = d_now(d);
    for (int b = 0; b < D_NBUCKETS; b++)
        for (d_out *o = d->buckets[b]; o; o = o->next) {
            d_conn *c = o->conn;
            if (c && !c->up && now - c->started_ms >= D_CONNECT_TIMEOUT_MS) {
                if (d_warn_due(d, &d->warn_connect_ms))
                    kv_log_warn("cannot connect to a peer's replica data port: timed out",
                                KV_STR("peer", o->key), KV_INT("data_port", o->port),
                                KV_UINT("timeout_ms", D_CONNECT_TIMEOUT_MS));
                d_conn_fail(c, true);
                continue;
            }
            if (c && c->up && !c->writing && o->q.len == 0 &&
                now - o->last_used_ms >= d->opts.idle_close_ms) {
                kv_log_debug("closing idle replica data connection", KV_STR("peer", o->key));
                d->st.conns_out--;
                c->up = false;
                d_conn_orphan(c);
            }
        }
}

/* ---------- API ---------- */

int kv_direct_open(kv_direct **out, uv_loop_t *loop, const kv_direct_opts *opts)
{
    if (!out || !loop || !opts || !opts->host || !opts->on_recv || opts->port < 0 ||
        opts->port > 65535)
        return KV_EINVAL;
    struct sockaddr_storage sa;
    if (uv_ip4_addr(opts->host, opts->port, (struct sockaddr_in *)&sa) != 0 &&
        uv_ip6_addr(opts->host, opts->port, (struct sockaddr_in6 *)&sa) != 0)
        return KV_EINVAL;
    kv_direct *d = calloc(1, sizeof(*d));
    if (!d)
        return KV_ENOMEM;
    d->loop = loop;
    d->opts = *opts;
    if (!d->opts.max_msg)
        d->opts.max_msg = 8u << 20;
    if (d->opts.max_msg > UINT32_MAX)
        d->opts.max_msg = UINT32_MAX;
    if (!d->opts.queue_max_bytes)
        d->opts.queue_max_bytes = 64u << 20;
    if (!d->opts.idle_close_ms)
        d->opts.idle_close_ms = 60000;
    uv_tcp_init(loop, &d->listener);
    d->listener.data = d;
    int rc = uv_tcp_bind(&d->listener, (const struct sockaddr *)&sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&d->listener, 256, d_on_connection);
    if (rc != 0) {
        kv_log_error("cannot listen on the replica data port", KV_STR("host", opts->host),
                     KV_INT("port", opts->port), KV_STR("reason", uv_strerror(rc)));
        d->closing = true;
        d->handles = 1;
        uv_close((uv_handle_t *)&d->listener, d_on_handle_closed);
        return KV_EIO;
    }
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    uv_tcp_getsockname(&d->listener, (struct sockaddr *)&bound, &blen);
    d->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                          : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    uv_timer_init(loop, &d->idle);
    d->idle.data = d;
    uint64_t every = d->opts.idle_close_ms / 2 < 1000 ? d->opts.idle_close_ms / 2 : 1000;
    uv_timer_start(&d->idle, d_on_idle, every ? every : 1, every ? every : 1);
    uv_unref((uv_handle_t *)&d->idle);
    d->handles = 2;
    *out = d;
    return KV_OK;
}

int kv_direct_port(const kv_direct *d)
{
    return d->port;
}

int kv_direct_set_route(kv_direct *d, const char *key, int data_port)
{
    if (!d || !key || data_port < 0 || data_port > 65535)
        return KV_EINVAL;
    if (d->closing)
        return KV_ECLOSED;
    char host[D_KEY_MAX + 1];
    if (!kv_net_addr_split(key, D_KEY_MAX + 1, host, sizeof(host)))
        return KV_EINVAL;
    uint32_t b = d_hash(key);
    d_out **pp = &d->buckets[b];
    while (*pp && strcmp((*pp)->key, key) != 0)
        pp = &(*pp)->next;
    d_out *o = *pp;
    if (o && o->port == data_port)
        return KV_OK;
    if (o) {
        /* A new port (the member restarted) or none: the old connection goes. */
        if (o->conn) {
            d_conn *c = o->conn;
            d_conn_fail(c, false);
        }
        d_out_drop_queue(o, &d->st.dropped_conn_lost);
        if (data_port == 0) {
            *pp = o->next;
            kv_buf_free(&o->q);
            free(o);
            return KV_OK;
        }
    } else {
        if (data_port == 0)
            return KV_OK;
        o = calloc(1, sizeof(*o));
        if (!o)
            return KV_ENOMEM;
        snprintf(o->key, sizeof(o->key), "%s", key);
        snprintf(o->host, sizeof(o->host), "%s", host);
        o->next = d->buckets[b];
        d->buckets[b] = o;
    }
    o->port = data_port;
    snprintf(o->port_str, sizeof(o->port_str), "%d", data_port);
    o->numeric = uv_ip4_addr(o->host, data_port, (struct sockaddr_in *)&o->sa) == 0 ||
                 uv_ip6_addr(o->host, data_port, (struct sockaddr_in6 *)&o->sa) == 0;
    o->backoff_ms = o->backoff_until_ms = 0;
    return KV_OK;
}

int kv_direct_has_route(const kv_direct *d, const char *key)
{
    return d && key && !d->closing && d_out_find(d, key) != NULL;
}

int kv_direct_send(kv_direct *d, const char *key, const void *data, size_t len)
{
    if (!d || !key || (!data && len))
        return KV_EINVAL;
    if (d->closing)
        return KV_ECLOSED;
    if (len == 0 || len > d->opts.max_msg)
        return KV_EINVAL;
    d_out *o = d_out_find(d, key);
    if (!o)
        return KV_ENOTFOUND;
    uint64_t now = d_now(d);
    o->last_used_ms = now;
    uint8_t hdr[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                      (uint8_t)len};
    d_conn *c = o->conn;
    if (!c && o->backoff_until_ms > now) {
        d->st.dropped_unreachable++;
        return KV_EUNAVAIL;
    }
    size_t skip = 0; /* bytes of hdr+data already written */
    if (c && c->up && !c->writing && o->q.len == 0) {
        /* The common case: straight to the kernel, no copy. */
        uv_buf_t bufs[2] = {uv_buf_init((char *)hdr, 4), uv_buf_init((char *)data, (unsigned)len)};
        int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, 2);
        if (n == (int)(4 + len)) {
            d->st.sent++;
            d->st.sent_bytes += len;
            return KV_OK;
        }
        if (n < 0 && n != UV_EAGAIN) {
            d->st.dropped_conn_lost++;
            d_conn_fail(c, false);
            return KV_EUNAVAIL;
        }
        skip = n > 0 ? (size_t)n : 0;
    } else if (o->q.len + (c ? c->inflight.len : 0) + 4 + len > d->opts.queue_max_bytes) {
        d->st.dropped_queue_full++;
        return KV_EUNAVAIL;
    }
    /* Queue what is left of the frame (all of it, or the tail of a partial write). */
    int rc = KV_OK;
    if (skip < 4)
        rc = kv_buf_append(&o->q, hdr + skip, 4 - skip);
    if (rc == KV_OK)
        rc = kv_buf_append(&o->q, (const uint8_t *)data + (skip > 4 ? skip - 4 : 0),
                           len - (skip > 4 ? skip - 4 : 0));
    if (rc != KV_OK) {
        if (skip) { /* half a frame is on the wire: the stream cannot continue */
            d->st.dropped_conn_lost++;
            d_conn_fail(c, false);
        }
        return KV_ENOMEM;
    }
    o->q_frames++;
    o->q_payload += len;
    if (!o->conn)
        d_out_connect(d, o);
    else
        d_conn_start_write(o->conn);
    return KV_OK;
}

void kv_direct_get_stats(const kv_direct *d, kv_direct_stats *out)
{
    *out = d->st;
}

void kv_direct_close(kv_direct *d, void (*done)(void *arg), void *arg)
{
    d->closing = true;
    d->done = done;
    d->done_arg = arg;
    for (int b = 0; b < D_NBUCKETS; b++) {
        d_out *o = d->buckets[b];
        while (o) {
            d_out *next = o->next;
            if (o->conn) {
                if (o->conn->up)
                    d->st.conns_out--;
                o->conn->up = false;
                d_conn_orphan(o->conn);
            }
            kv_buf_free(&o->q);
            free(o);
            o = next;
        }
        d->buckets[b] = NULL;
    }
    for (d_in *in = d->ins; in; in = in->next)
        d_in_close(in);
    uv_close((uv_handle_t *)&d->listener, d_on_handle_closed);
    uv_close((uv_handle_t *)&d->idle, d_on_handle_closed);
}
