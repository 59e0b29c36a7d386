/*
 * server.c — the HTTP/1.1 server of the client API (see server.h), on libuv TCP and
 * http-parser.
 *
 * Threading: loop thread only. Every function here, every libuv callback and the
 * handler run on the thread that runs the loop given to kv_http_server_start.
 *
 * Design notes — one connection
 *
 *   Bytes read from the socket go through one http_parser (HTTP_REQUEST). Each request
 *   is built in an http_req while it is parsed (c->cur); on_message_complete moves it to
 *   the tail of the connection's FIFO and hands it to the handler. The FIFO holds every
 *   request whose response has not been written yet, in request order, in states
 *
 *     RQ_HANDLER  handed to the handler, not answered yet
 *     RQ_READY    answered; response bytes formatted, waiting for its turn
 *     RQ_WRITING  part of the uv_write in flight (always a prefix of the FIFO)
 *
 *   flush() writes the READY prefix of the FIFO (several responses in one uv_write) and
 *   stops at the first request still at the handler, so answers given out of order wait
 *   until everything before them is out. Problems found by the server itself (parse
 *   error, limits, timeouts, too many connections) become a READY entry at the tail:
 *   earlier pipelined requests still get their answers first, then the error, then the
 *   connection closes.
 *
 *   Flow control: when the FIFO holds max_pipeline requests or more than
 *   WRITE_HIGH_WATER bytes wait to be written, on_message_complete pauses the parser;
 *   bytes already read but not parsed are kept in c->pending and reading stops. A write
 *   completion resumes: unpause, parse pending, read again.
 *
 *   Closing: read_done means no more requests will be parsed (Connection: close,
 *   HTTP/1.0, EOF, an error, the server closing). The response that is last in the FIFO
 *   when read_done is set carries "Connection: close". After it is written the
 *   connection shuts down its sending side and lingers (reading and discarding) until
 *   the client closes or LINGER_MS pass, so a client still sending (a refused body, more
 *   pipelined requests) gets our response instead of a reset. An idle keep-alive
 *   connection, a read error or a failed write close at once (conn_close_now).
 *
 *   Lifetime: a connection holds one reference per open handle (socket, timer) and one
 *   per request at the handler, and is freed when the count reaches zero. A client that
 *   disconnects while a request is at the handler therefore leaves the request valid;
 *   kv_http_respond on it records the metrics, discards the output and drops the last
 *   reference.
 *
 *   Timer (one per connection, re-armed after every event by conn_arm): a started
 *   request must complete by its deadline (408); a connection with nothing in flight is
 *   closed after idle_timeout_ms; a write that makes no progress for idle_timeout_ms
 *   closes the connection; a lingering connection is closed after LINGER_MS.
 */
#include "http/server.h"

#include "common/log.h"
#include "kvstore/error.h"

#include <http_parser.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define READ_BUF_SIZE    (64 * 1024)   /* shared by all connections of a server */
#define WRITE_HIGH_WATER (1024 * 1024) /* unwritten response bytes before reads pause */
#define MAX_BATCH        16            /* responses per uv_write */
#define LINGER_MS        1000          /* wait for the client's FIN after our last answer */
#define POOL_MAX         4             /* request objects kept per connection for reuse */
#define KEEP_BUF_CAP     (64 * 1024)   /* larger per-request buffers are freed on reuse */

#define DEFAULT_MAX_HEADER      (16 * 1024)
#define DEFAULT_MAX_BODY        (1024 * 1024)
#define DEFAULT_MAX_CONNECTIONS 4096
#define DEFAULT_IDLE_MS         60000
#define DEFAULT_REQUEST_MS      10000
#define DEFAULT_MAX_PIPELINE    32

#define REJECTED_NAME "kv_http_rejected_total"
#define REJECTED_HELP "Requests and connections refused by the HTTP server, by reason."
#define CONNS_NAME    "kv_http_connections"
#define CONNS_HELP    "Open client HTTP connections."

typedef enum rq_state {
    RQ_PARSING = 0,
    RQ_HANDLER,
    RQ_READY,
    RQ_WRITING,
    RQ_DISCARDED, /* answered after its connection died; freed with the connection */
} rq_state;

typedef enum hdr_state { HS_NONE = 0, HS_FIELD, HS_VALUE } hdr_state;

/* Offsets into http_req.head: the buffer may move while headers are still arriving. */
typedef struct hdr_ent {
    uint32_t name_off, name_len;
    uint32_t val_off, val_len;
} hdr_ent;

typedef struct http_conn http_conn;

typedef struct http_req {
    kv_http_req pub; /* first: kv_http_req * converts back to http_req * */
    http_conn *c;
    struct http_req *next;
    rq_state state;
    bool keep_alive;   /* the connection may carry another request after this one */
    bool close_after;  /* decided by flush: the connection closes after this response */
    bool method_known; /* the request line got as far as the URL */
    bool head_method;  /* HEAD: the response carries no body */
    bool headers_done; /* later header callbacks are chunked trailers: not stored */
    hdr_state hs;
    uint32_t url_len;   /* the URL occupies head[0, url_len) */
    uint64_t raw_bytes; /* request line + header bytes seen, checked against max_header */
    kv_buf head;        /* URL, then "name\0value\0" per header, then "path\0query\0" */
    hdr_ent *hdrs;
    uint32_t nhdrs, caphdrs;
    kv_buf body;
    kv_buf out_head; /* status line and headers, without Connection and the blank line */
    kv_buf out_body;
} http_req;

typedef enum timer_kind { T_NONE = 0, T_IDLE, T_REQUEST, T_WRITE, T_LINGER } timer_kind;

struct http_conn {
    kv_http_server *srv;
    http_conn *prev, *next; /* srv->conns */
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_write_t creq; /* "100 Continue" */
    uv_shutdown_t sreq;
    http_parser parser;
    int refs;
    http_req *cur;           /* request being parsed */
    http_req *qhead, *qtail; /* FIFO of requests not yet written */
    uint32_t nqueue;
    uint32_t nwriting; /* FIFO prefix in the write in flight */
    http_req *pool;    /* reusable request objects */
    uint32_t npool;
    size_t out_bytes;      /* formatted response bytes not yet written */
    kv_buf pending;        /* read but unparsed bytes while paused */
    uint64_t cur_deadline; /* loop time (ms) by which c->cur must be complete */
    uint64_t last_active;  /* loop time the connection last became idle */
    uint64_t write_since;  /* loop time the write in flight started */
    timer_kind tkind;
    uint64_t tdue;
    int fail_status; /* set by a parser callback that refuses the request */
    bool counted;    /* counts toward srv->nconns */
    bool reading;    /* uv_read_start is active */
    bool paused;     /* flow control stopped reading */
    bool read_done;  /* no more requests will be parsed */
    bool parsing;    /* inside http_parser_execute */
    bool writing;
    bool cont_writing;
    bool eof;
    bool lingering;
    bool dead; /* handles are closing */
};

typedef enum listener_state { LS_NONE = 0, LS_OPEN, LS_CLOSING, LS_CLOSED } listener_state;

struct kv_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    listener_state ls;
    uv_timer_t finish; /* closed last; its close callback frees the server */
    bool finishing;
    kv_http_limits lim;
    kv_http_handler handler;
    void *arg;
    kv_metrics *metrics;
    int port;
    http_conn *conns;
    size_t nconns;
    size_t inflight;
    bool closing;
    void (*done)(void *arg);
    void *done_arg;
    kv_buf scratch; /* problem+json bodies are built here */
    time_t date_sec;
    char date[40];
    char readbuf[READ_BUF_SIZE];
};

static const char CONN_KEEP[] = "Connection: keep-alive\r\n\r\n";
static const char CONN_CLOSE[] = "Connection: close\r\n\r\n";
static const char CONTINUE_100[] = "HTTP/1.1 100 Continue\r\n\r\n";

static void conn_close_now(http_conn *c);
static void conn_close_graceful(http_conn *c);
static void conn_arm(http_conn *c);
static void conn_flush(http_conn *c);
static void conn_feed(http_conn *c, const char *data, size_t len, bool from_pending);
static void server_maybe_done(kv_http_server *s);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* ---- metrics helpers ---- */

static void count_rejected(kv_http_server *s, const char *reason)
{
    if (s->metrics)
        kv_metrics_count(s->metrics, REJECTED_NAME, REJECTED_HELP, "reason", reason, 1);
}

static void set_conn_gauge(kv_http_server *s)
{
    if (s->metrics)
        kv_metrics_gauge(s->metrics, CONNS_NAME, CONNS_HELP, (double)s->nconns);
}

/* ---- request objects ---- */

static void buf_trim(kv_buf *b)
{
    if (b->cap > KEEP_BUF_CAP)
        kv_buf_free(b);
    else
        kv_buf_reset(b);
}

static void req_destroy(http_req *r)
{
    kv_buf_free(&r->head);
    kv_buf_free(&r->body);
    kv_buf_free(&r->out_head);
    kv_buf_free(&r->out_body);
    free(r->hdrs);
    free(r);
}

/* A clean request object, reused from the connection's pool when possible. */
static http_req *req_get(http_conn *c)
{
    http_req *r = c->pool;
    if (r) {
        c->pool = r->next;
        c->npool--;
    } else {
        r = calloc(1, sizeof(*r));
        if (!r)
            return NULL;
    }
    r->pub = (kv_http_req){.method = -1, .path = "", .query = "", .body = ""};
    r->pub.start_ns = uv_hrtime();
    r->c = c;
    r->next = NULL;
    r->state = RQ_PARSING;
    r->keep_alive = r->close_after = r->method_known = false;
    r->head_method = r->headers_done = false;
    r->hs = HS_NONE;
    r->url_len = 0;
    r->raw_bytes = 0;
    r->nhdrs = 0;
    kv_buf_reset(&r->head);
    kv_buf_reset(&r->body);
    kv_buf_reset(&r->out_head);
    kv_buf_reset(&r->out_body);
    return r;
}

static void req_put(http_conn *c, http_req *r)
{
    if (c->dead || c->npool >= POOL_MAX) {
        req_destroy(r);
        return;
    }
    buf_trim(&r->head);
    buf_trim(&r->body);
    buf_trim(&r->out_head);
    buf_trim(&r->out_body);
    if (r->caphdrs > 64) {
        free(r->hdrs);
        r->hdrs = NULL;
        r->caphdrs = 0;
    }
    r->next = c->pool;
    c->pool = r;
    c->npool++;
}

static void queue_push(http_conn *c, http_req *r)
{
    r->next = NULL;
    if (c->qtail)
        c->qtail->next = r;
    else
        c->qhead = r;
    c->qtail = r;
    c->nqueue++;
}

static http_req *queue_pop(http_conn *c)
{
    http_req *r = c->qhead;
    if (!r)
        return NULL;
    c->qhead = r->next;
    if (!c->qhead)
        c->qtail = NULL;
    c->nqueue--;
    r->next = NULL;
    return r;
}

/* ---- connection lifetime ---- */

static void conn_uncount(http_conn *c)
{
    if (!c->counted)
        return;
    c->counted = false;
    c->srv->nconns--;
    set_conn_gauge(c->srv);
}

static void conn_free(http_conn *c)
{
    kv_http_server *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    http_req *r;
    while ((r = queue_pop(c)) != NULL)
        req_destroy(r);
    while ((r = c->pool) != NULL) {
        c->pool = r->next;
        req_destroy(r);
    }
    if (c->cur)
        req_destroy(c->cur);
    kv_buf_free(&c->pending);
    free(c);
    server_maybe_done(s);
}

static void conn_unref(http_conn *c)
{
    if (--c->refs == 0)
        conn_free(c);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    conn_unref(h->data);
}

static void stop_reading(http_conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    /* One buffer per server is enough: on_read consumes (parses or copies) every byte
     * before libuv reads from another socket. */
    http_conn *c = h->data;
    *buf = uv_buf_init(c->srv->readbuf, sizeof(c->srv->readbuf));
}

static void start_reading(http_conn *c)
{
    if (c->reading || c->dead)
        return;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc) {
        kv_log_debug("http read start failed", KV_STR("err", uv_strerror(rc)));
        conn_close_now(c);
        return;
    }
    c->reading = true;
}

/* Drop the socket at once; responses not yet written are lost. */
static void conn_close_now(http_conn *c)
{
    if (c->dead)
        return;
    c->dead = true;
    c->reading = false;
    conn_uncount(c);
    /* c->cur and c->pending may be in use by a parser call up the stack (a handler
     * that answered synchronously and failed): conn_free releases them. */
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    http_conn *c = req->handle->data;
    if (status < 0 && !c->dead)
        conn_close_now(c);
}

static void on_timer(uv_timer_t *t);

/* Everything is answered: send FIN, then read and discard until the client closes. */
static void conn_close_graceful(http_conn *c)
{
    if (c->dead || c->lingering)
        return;
    c->read_done = true;
    c->paused = false;
    if (c->eof) {
        conn_close_now(c);
        return;
    }
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        conn_close_now(c);
        return;
    }
    c->lingering = true;
    conn_uncount(c);
    start_reading(c);
    if (c->dead)
        return;
    c->tkind = T_LINGER;
    c->tdue = uv_now(c->srv->loop) + LINGER_MS;
    uv_timer_start(&c->timer, on_timer, LINGER_MS, 0);
}

/* ---- responses ---- */

static const char *reason_phrase(int status)
{
    if (status >= 100 && status <= 599) {
        const char *r = http_status_str((enum http_status)status);
        if (r && r[0] != '<')
            return r;
    }
    return "Unknown";
}

static void refresh_date(kv_http_server *s)
{
    static const char *days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    if (now == s->date_sec && s->date[0])
        return;
    struct tm tm;
    gmtime_r(&now, &tm);
    snprintf(s->date, sizeof(s->date), "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7],
             tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
             tm.tm_sec);
    s->date_sec = now;
}

/* Header names and values come from our own code, but a CR or LF in one would let a
 * value (say, an echoed key) split the response: such a header is dropped. */
static bool header_safe(const char *s)
{
    return s && strpbrk(s, "\r\n") == NULL;
}

/* Decimal digits of v into out (no NUL); returns their count. */
static size_t fmt_uint(char *out, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* "name: value\r\n", or " value\r\n" (the status line's end) when name is NULL. */
static int header_line(kv_buf *o, const char *name, const char *value)
{
    size_t nl = name ? strlen(name) : 0, vl = strlen(value);
    int rc = kv_buf_reserve(o, nl + vl + 4);
    if (rc)
        return rc;
    if (name) {
        memcpy(o->data + o->len, name, nl);
        o->len += nl;
        o->data[o->len++] = ':';
    }
    o->data[o->len++] = ' ';
    memcpy(o->data + o->len, value, vl);
    o->len += vl;
    o->data[o->len++] = '\r';
    o->data[o->len++] = '\n';
    o->data[o->len] = '\0';
    return KV_OK;
}

static int format_response(http_req *r, int status, const char *content_type,
                           const kv_http_header *headers, int nheaders, const void *body,
                           size_t len)
{
    kv_http_server *s = r->c->srv;
    /* 1xx, 204 and 304 never have a body (RFC 9110 §6.4.1); 1xx and 204 must not
     * carry Content-Length, and on a 304 it would describe a body not sent. */
    bool no_body_status = (status >= 100 && status < 200) || status == 204 || status == 304;
    kv_buf *o = &r->out_head;
    kv_buf_reset(o);
    kv_buf_reset(&r->out_body);
    refresh_date(s);
    /* Appends, not printf: this runs once per response and printf showed in profiles. */
    char num[24];
    int rc = kv_buf_appends(o, "HTTP/1.1 ");
    if (!rc)
        rc = kv_buf_append(o, num, fmt_uint(num, (unsigned)status));
    if (!rc)
        rc = header_line(o, NULL, reason_phrase(status));
    if (!rc)
        rc = header_line(o, "Date", s->date);
    if (!rc && content_type && header_safe(content_type))
        rc = header_line(o, "Content-Type", content_type);
    for (int i = 0; !rc && i < nheaders; i++) {
        if (!header_safe(headers[i].name) || !header_safe(headers[i].value)) {
            kv_log_warn("http response header dropped: CR or LF in it",
                        KV_STR("name", headers[i].name ? headers[i].name : "(null)"));
            continue;
        }
        rc = header_line(o, headers[i].name, headers[i].value);
    }
    if (!rc && !no_body_status) {
        num[fmt_uint(num, len)] = '\0';
        rc = header_line(o, "Content-Length", num);
    }
    if (!rc && !no_body_status && !r->head_method && len)
        rc = kv_buf_append(&r->out_body, body, len);
    return rc;
}

/* Record the answer and queue its bytes; the FIFO order decides when they are written. */
static void req_answer(http_req *r, int status, const char *content_type,
                       const kv_http_header *headers, int nheaders, const void *body, size_t len)
{
    http_conn *c = r->c;
    kv_http_server *s = c->srv;
    if (s->metrics) {
        const char *method =
            r->method_known ? http_method_str((enum http_method)r->pub.method) : "UNKNOWN";
        double secs = (double)(uv_hrtime() - r->pub.start_ns) / 1e9;
        kv_metrics_observe_request(s->metrics, r->pub.route ? r->pub.route : "invalid", method,
                                   status, secs);
    }
    if (c->dead) {
        r->state = RQ_DISCARDED;
        return;
    }
    if (format_response(r, status, content_type, headers, nheaders, body, len) != KV_OK) {
        kv_log_error("http response dropped: out of memory", KV_INT("status", status));
        r->state = RQ_DISCARDED;
        conn_close_now(c);
        return;
    }
    r->state = RQ_READY;
    c->out_bytes += r->out_head.len + r->out_body.len;
    /* Inside the parser, conn_feed flushes once at the end: pipelined answers given
     * synchronously then leave in one write. */
    if (!c->parsing) {
        conn_flush(c);
        conn_arm(c);
    }
}

static const struct {
    const char *code;
    const char *title;
} problem_titles[] = {
    {"bad_request", "Bad request"},
    {"invalid_key", "Invalid key"},
    {"invalid_query", "Invalid query"},
    {"key_too_long", "Key too long"},
    {"key_not_found", "Key not found"},
    {"route_not_found", "Route not found"},
    {"method_not_allowed", "Method not allowed"},
    {"request_timeout", "Request timeout"},
    {"value_too_large", "Value too large"},
    {"headers_too_large", "Headers too large"},
    {"too_many_connections", "Too many connections"},
    {"not_ready", "Not ready"},
    {"shutting_down", "Shutting down"},
    {"insufficient_storage", "Insufficient storage"},
    {"io_error", "I/O error"},
    {"internal", "Internal error"},
};

int kv_http_problem_body(kv_buf *out, int status, const char *code, const char *detail)
{
    if (!code)
        code = "internal";
    const char *title = NULL;
    for (size_t i = 0; i < sizeof(problem_titles) / sizeof(problem_titles[0]); i++) {
        if (strcmp(problem_titles[i].code, code) == 0) {
            title = problem_titles[i].title;
            break;
        }
    }
    if (!title)
        title = reason_phrase(status);
    if (!detail)
        detail = title;
    int rc = kv_buf_appends(out, "{\"type\":\"urn:kvstore:problem:");
    if (!rc)
        rc = kv_buf_append_json_str(out, code, strlen(code));
    if (!rc)
        rc = kv_buf_appends(out, "\",\"title\":\"");
    if (!rc)
        rc = kv_buf_append_json_str(out, title, strlen(title));
    if (!rc)
        rc = kv_buf_printf(out, "\",\"status\":%d,\"code\":\"", status);
    if (!rc)
        rc = kv_buf_append_json_str(out, code, strlen(code));
    if (!rc)
        rc = kv_buf_appends(out, "\",\"detail\":\"");
    if (!rc)
        rc = kv_buf_append_json_str(out, detail, strlen(detail));
    if (!rc)
        rc = kv_buf_appends(out, "\"}");
    return rc;
}

static void req_answer_problem(http_req *r, int status, const char *code, const char *detail,
                               const kv_http_header *headers, int nheaders)
{
    kv_buf *b = &r->c->srv->scratch;
    kv_buf_reset(b);
    if (kv_http_problem_body(b, status, code, detail) != KV_OK)
        kv_buf_reset(b); /* out of memory: an empty body still carries the status */
    req_answer(r, status, "application/problem+json", headers, nheaders, b->data ? b->data : "",
               b->len);
}

static http_req *req_of(kv_http_req *req)
{
    http_req *r = (http_req *)req;
    if (r->state != RQ_HANDLER) {
        /* Answering twice (or a request the server never handed out) is a bug in the
         * caller that would corrupt the FIFO: stop here rather than later. */
        kv_log_error("http: kv_http_respond on a request that is not awaiting an answer",
                     KV_INT("state", r->state));
        abort();
    }
    return r;
}

static void handler_done(http_req *r)
{
    r->c->srv->inflight--;
    conn_unref(r->c); /* may free c (and r) if the client has gone */
}

void kv_http_respond(kv_http_req *req, int status, const char *content_type,
                     const kv_http_header *headers, int nheaders, const void *body, size_t len)
{
    http_req *r = req_of(req);
    req_answer(r, status, content_type, headers, nheaders, body, len);
    handler_done(r);
}

void kv_http_respond_problem(kv_http_req *req, int status, const char *code, const char *detail)
{
    kv_http_respond_problem_headers(req, status, code, detail, NULL, 0);
}

void kv_http_respond_problem_headers(kv_http_req *req, int status, const char *code,
                                     const char *detail, const kv_http_header *headers,
                                     int nheaders)
{
    http_req *r = req_of(req);
    req_answer_problem(r, status, code, detail, headers, nheaders);
    handler_done(r);
}

/* The server refuses: an error answer queued after every earlier request, then close. */
static void conn_fail(http_conn *c, int status, const char *code, const char *detail,
                      const char *reason)
{
    if (c->dead)
        return;
    count_rejected(c->srv, reason);
    stop_reading(c);
    c->read_done = true;
    c->paused = false;
    kv_buf_reset(&c->pending);
    http_req *r = c->cur;
    c->cur = NULL;
    if (!r)
        r = req_get(c);
    if (!r) {
        conn_close_now(c);
        return;
    }
    r->keep_alive = false;
    r->pub.route = NULL;
    queue_push(c, r);
    req_answer_problem(r, status, code, detail, NULL, 0);
}

static void on_write(uv_write_t *w, int status)
{
    http_conn *c = w->handle->data;
    bool close = false;
    c->writing = false;
    for (uint32_t i = 0; i < c->nwriting; i++) {
        http_req *r = queue_pop(c);
        c->out_bytes -= r->out_head.len + r->out_body.len;
        close |= r->close_after;
        req_put(c, r);
    }
    c->nwriting = 0;
    if (c->dead)
        return;
    if (status < 0) {
        kv_log_debug("http write failed", KV_STR("err", uv_strerror(status)));
        conn_close_now(c);
        return;
    }
    if (close) {
        conn_close_graceful(c);
        return;
    }
    if (c->nqueue == 0)
        c->last_active = uv_now(c->srv->loop);
    conn_flush(c);
    if (!c->writing && c->nqueue == 0 && c->read_done) {
        conn_close_graceful(c);
        return;
    }
    /* Resume reading if flow control had stopped it and the backlog has drained. */
    kv_http_server *s = c->srv;
    if (c->paused && !c->read_done && c->nqueue < s->lim.max_pipeline &&
        c->out_bytes < WRITE_HIGH_WATER) {
        c->paused = false;
        http_parser_pause(&c->parser, 0);
        if (c->pending.len)
            conn_feed(c, c->pending.data, c->pending.len, true);
        if (c->dead || c->lingering)
            return;
        if (!c->paused && !c->read_done)
            start_reading(c);
    }
    conn_arm(c);
}

/* Write the READY prefix of the FIFO, several responses in one uv_write. */
static void conn_flush(http_conn *c)
{
    if (c->writing || c->dead || c->lingering)
        return;
    uv_buf_t bufs[MAX_BATCH * 3];
    int nb = 0;
    uint32_t n = 0;
    for (http_req *r = c->qhead; r && r->state == RQ_READY && n < MAX_BATCH; r = r->next) {
        bool last = !r->keep_alive || (c->read_done && r->next == NULL);
        r->close_after = last;
        r->state = RQ_WRITING;
        n++;
        bufs[nb++] = uv_buf_init(r->out_head.data, (unsigned)r->out_head.len);
        if (last)
            bufs[nb++] = uv_buf_init((char *)CONN_CLOSE, sizeof(CONN_CLOSE) - 1);
        else
            bufs[nb++] = uv_buf_init((char *)CONN_KEEP, sizeof(CONN_KEEP) - 1);
        if (r->out_body.len)
            bufs[nb++] = uv_buf_init(r->out_body.data, (unsigned)r->out_body.len);
        if (last)
            break;
    }
    if (n == 0)
        return;
    c->nwriting = n;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, (unsigned)nb, on_write);
    if (rc) {
        kv_log_debug("http write failed", KV_STR("err", uv_strerror(rc)));
        conn_close_now(c); /* the WRITING entries are freed with the connection */
        return;
    }
    c->writing = true;
    c->write_since = uv_now(c->srv->loop);
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *t)
{
    http_conn *c = t->data;
    timer_kind k = c->tkind;
    c->tkind = T_NONE;
    if (c->dead)
        return;
    switch (k) {
    case T_REQUEST:
        kv_log_debug("http request timed out",
                     KV_UINT("timeout_ms", c->srv->lim.request_timeout_ms));
        conn_fail(c, 408, "request_timeout", "the request was not complete in time", "timeout");
        break;
    case T_IDLE:
        count_rejected(c->srv, "idle_closed");
        conn_close_now(c);
        break;
    case T_WRITE:
        kv_log_debug("http write stalled; closing", KV_UINT("pending_bytes", c->out_bytes));
        count_rejected(c->srv, "timeout");
        conn_close_now(c);
        break;
    case T_LINGER:
        conn_close_now(c);
        break;
    case T_NONE:
        break;
    }
}

static void conn_arm(http_conn *c)
{
    if (c->dead || c->lingering)
        return;
    const kv_http_limits *lim = &c->srv->lim;
    timer_kind k;
    uint64_t due;
    if (c->cur && c->reading && !c->read_done) {
        k = T_REQUEST;
        due = c->cur_deadline;
    } else if (c->writing) {
        k = T_WRITE;
        due = c->write_since + lim->idle_timeout_ms;
    } else if (c->nqueue == 0 && !c->cur && !c->read_done) {
        k = T_IDLE;
        due = c->last_active + lim->idle_timeout_ms;
    } else {
        /* Requests at the handler: it answers (or the server's close waits for it). */
        if (c->tkind != T_NONE)
            uv_timer_stop(&c->timer);
        c->tkind = T_NONE;
        return;
    }
    if (k == c->tkind && due == c->tdue)
        return;
    uint64_t now = uv_now(c->srv->loop);
    c->tkind = k;
    c->tdue = due;
    uv_timer_start(&c->timer, on_timer, due > now ? due - now : 0, 0);
}

/* ---- parser callbacks ---- */

static int refuse(http_conn *c, int status)
{
    c->fail_status = status;
    return -1;
}

static int count_raw(http_conn *c, http_req *r, size_t n)
{
    r->raw_bytes += n;
    if (r->raw_bytes > c->srv->lim.max_header)
        return refuse(c, 431);
    return 0;
}

static int on_message_begin(http_parser *p)
{
    http_conn *c = p->data;
    if (c->dead || c->read_done)
        return -1;
    http_req *r = req_get(c);
    if (!r)
        return refuse(c, -1);
    c->cur = r;
    c->cur_deadline = uv_now(c->srv->loop) + c->srv->lim.request_timeout_ms;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    http_conn *c = p->data;
    http_req *r = c->cur;
    if (!r)
        return -1;
    if (!r->method_known) {
        r->method_known = true;
        r->pub.method = p->method;
        /* method, two spaces, "HTTP/1.1", CRLF */
        if (count_raw(c, r, strlen(http_method_str((enum http_method)p->method)) + 12))
            return -1;
    }
    if (count_raw(c, r, len))
        return -1;
    if (kv_buf_append(&r->head, at, len))
        return refuse(c, -1);
    r->url_len += (uint32_t)len;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    http_conn *c = p->data;
    http_req *r = c->cur;
    if (!r)
        return -1;
    if (r->headers_done) /* a chunked trailer: bounded, not stored */
        return count_raw(c, r, len + 4);
    if (r->hs != HS_FIELD) {
        if (r->hs == HS_VALUE && kv_buf_append(&r->head, "", 1))
            return refuse(c, -1);
        if (r->nhdrs == r->caphdrs) {
            uint32_t ncap = r->caphdrs ? r->caphdrs * 2 : 16;
            hdr_ent *h = realloc(r->hdrs, ncap * sizeof(*h));
            if (!h)
                return refuse(c, -1);
            r->hdrs = h;
            r->caphdrs = ncap;
        }
        r->hdrs[r->nhdrs++] = (hdr_ent){.name_off = (uint32_t)r->head.len};
        r->hs = HS_FIELD;
        if (count_raw(c, r, 4)) /* ": " and CRLF */
            return -1;
    }
    if (count_raw(c, r, len))
        return -1;
    if (kv_buf_append(&r->head, at, len))
        return refuse(c, -1);
    r->hdrs[r->nhdrs - 1].name_len += (uint32_t)len;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    http_conn *c = p->data;
    http_req *r = c->cur;
    if (!r)
        return -1;
    if (r->headers_done)
        return count_raw(c, r, len);
    if (r->hs != HS_VALUE) {
        if (r->hs != HS_FIELD) /* the parser gives a name before every value */
            return -1;
        if (kv_buf_append(&r->head, "", 1))
            return refuse(c, -1);
        r->hdrs[r->nhdrs - 1].val_off = (uint32_t)r->head.len;
        r->hs = HS_VALUE;
    }
    if (count_raw(c, r, len))
        return -1;
    if (kv_buf_append(&r->head, at, len))
        return refuse(c, -1);
    r->hdrs[r->nhdrs - 1].val_len += (uint32_t)len;
    return 0;
}

/* Split the URL into path and query (origin-form, or the path of an absolute-form URL)
 * and store both NUL-terminated after the headers. */
static int split_url(http_req *r)
{
    const char *u = r->head.data ? r->head.data : "";
    size_t ulen = r->url_len;
    size_t poff = 0, plen = ulen, qoff = 0, qlen = 0;
    if (ulen > 0 && u[0] == '/') {
        const char *hash = memchr(u, '#', ulen);
        if (hash)
            ulen = (size_t)(hash - u);
        const char *q = memchr(u, '?', ulen);
        plen = q ? (size_t)(q - u) : ulen;
        if (q) {
            qoff = plen + 1;
            qlen = ulen - qoff;
        }
    } else if (ulen > 0 && ulen <= UINT16_MAX) {
        struct http_parser_url pu;
        http_parser_url_init(&pu);
        if (http_parser_parse_url(u, ulen, r->pub.method == HTTP_CONNECT, &pu) == 0) {
            if (pu.field_set & (1 << UF_PATH)) {
                poff = pu.field_data[UF_PATH].off;
                plen = pu.field_data[UF_PATH].len;
            }
            if (pu.field_set & (1 << UF_QUERY)) {
                qoff = pu.field_data[UF_QUERY].off;
                qlen = pu.field_data[UF_QUERY].len;
            }
        }
    }
    /* Copy through a temporary offset: appending may move head.data. */
    size_t path_at = r->head.len;
    if (kv_buf_reserve(&r->head, plen + qlen + 2))
        return KV_ENOMEM;
    u = r->head.data;
    kv_buf_append(&r->head, u + poff, plen);
    kv_buf_append(&r->head, "", 1);
    size_t query_at = r->head.len;
    kv_buf_append(&r->head, u + qoff, qlen);
    kv_buf_append(&r->head, "", 1);
    r->pub.path = r->head.data + path_at;
    r->pub.path_len = plen;
    r->pub.query = r->head.data + query_at;
    r->pub.query_len = qlen;
    return KV_OK;
}

static void on_continue_written(uv_write_t *w, int status)
{
    http_conn *c = w->handle->data;
    c->cont_writing = false;
}

static int on_headers_complete(http_parser *p)
{
    http_conn *c = p->data;
    http_req *r = c->cur;
    if (!r)
        return -1;
    const kv_http_limits *lim = &c->srv->lim;
    if (r->hs == HS_FIELD) {
        /* a name with no value callback: give it an empty value */
        if (kv_buf_append(&r->head, "", 1))
            return refuse(c, -1);
        r->hdrs[r->nhdrs - 1].val_off = (uint32_t)r->head.len;
    }
    if (r->hs != HS_NONE && kv_buf_append(&r->head, "", 1))
        return refuse(c, -1);
    r->hs = HS_NONE;
    r->headers_done = true;
    if (count_raw(c, r, 2))
        return -1;
    r->pub.method = p->method;
    r->method_known = true;
    r->head_method = p->method == HTTP_HEAD;
    if (split_url(r))
        return refuse(c, -1);

    bool has_length = (p->flags & F_CONTENTLENGTH) != 0;
    if (has_length && p->content_length > lim->max_body)
        return refuse(c, 413);
    if (has_length && p->content_length > 0 && kv_buf_reserve(&r->body, p->content_length))
        return refuse(c, -1);

    /* Expect: 100-continue — say "go on" only when nothing is queued before this
     * request, or the interim answer would land amid earlier responses. Otherwise the
     * client sends the body after its own timeout, which is also correct. */
    size_t elen;
    const char *expect = kv_http_req_header(&r->pub, "expect", &elen);
    bool has_body = has_length ? p->content_length > 0 : (p->flags & F_CHUNKED) != 0;
    if (expect && has_body && elen == 12 && strncasecmp(expect, "100-continue", 12) == 0 &&
        p->http_major == 1 && p->http_minor >= 1 && c->nqueue == 0 && !c->writing &&
        !c->cont_writing) {
        uv_buf_t b = uv_buf_init((char *)CONTINUE_100, sizeof(CONTINUE_100) - 1);
        if (uv_write(&c->creq, (uv_stream_t *)&c->tcp, &b, 1, on_continue_written) == 0)
            c->cont_writing = true;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    http_conn *c = p->data;
    http_req *r = c->cur;
    if (!r)
        return -1;
    if (len > c->srv->lim.max_body - r->body.len)
        return refuse(c, 413);
    if (kv_buf_append(&r->body, at, len))
        return refuse(c, -1);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    http_conn *c = p->data;
    kv_http_server *s = c->srv;
    http_req *r = c->cur;
    if (!r)
        return -1;
    c->cur = NULL;
    r->keep_alive = http_should_keep_alive(p) && !p->upgrade && !s->closing;
    if (!r->keep_alive)
        c->read_done = true;
    r->pub.body = r->body.data ? r->body.data : "";
    r->pub.body_len = r->body.len;
    r->state = RQ_HANDLER;
    queue_push(c, r);
    c->refs++;
    s->inflight++;
    s->handler(&r->pub, s->arg);
    /* Stop parsing here if nothing more should be read from this connection, or if
     * the backlog is full; conn_feed keeps the unparsed rest for later. */
    if (c->dead || c->read_done) {
        http_parser_pause(p, 1);
    } else if (c->nqueue >= s->lim.max_pipeline || c->out_bytes >= WRITE_HIGH_WATER) {
        c->paused = true;
        http_parser_pause(p, 1);
    }
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- reading ---- */

static void conn_parse_error(http_conn *c, enum http_errno e)
{
    int st = c->fail_status;
    if (st < 0) {
        kv_log_error("http: out of memory while parsing; closing connection",
                     KV_INT("queued", c->nqueue));
        conn_close_now(c);
        return;
    }
    if (st == 0 && e == HPE_HEADER_OVERFLOW)
        st = 431;
    if (st == 431) {
        conn_fail(c, 431, "headers_too_large", "request line and headers exceed the limit",
                  "headers_too_large");
    } else if (st == 413) {
        conn_fail(c, 413, "value_too_large", "request body exceeds the limit", "body_too_large");
    } else {
        kv_log_debug("http malformed request", KV_STR("err", http_errno_name(e)));
        conn_fail(c, 400, "bad_request", http_errno_description(e), "malformed");
    }
}

static void conn_feed(http_conn *c, const char *data, size_t len, bool from_pending)
{
    c->parsing = true;
    size_t n = http_parser_execute(&c->parser, &parser_settings, data, len);
    c->parsing = false;
    if (c->dead)
        return;
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e == HPE_PAUSED) {
        stop_reading(c);
        if (c->read_done || n >= len) {
            if (from_pending || c->read_done)
                kv_buf_reset(&c->pending);
        } else if (from_pending) {
            kv_buf_consume(&c->pending, n);
        } else if (kv_buf_append(&c->pending, data + n, len - n)) {
            kv_log_error("http: out of memory buffering a pipeline; closing connection",
                         KV_UINT("bytes", len - n));
            conn_close_now(c);
            return;
        }
    } else {
        if (from_pending)
            kv_buf_reset(&c->pending);
        if (e != HPE_OK) {
            conn_parse_error(c, e);
            return;
        }
        if (c->parser.upgrade) {
            /* What follows is not HTTP; answer what came before it and close. */
            stop_reading(c);
            c->read_done = true;
        }
    }
    conn_flush(c);
    if (!c->dead && !c->writing && c->nqueue == 0 && c->read_done) {
        conn_close_graceful(c);
        return;
    }
    conn_arm(c);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    http_conn *c = st->data;
    if (c->dead || nread == 0)
        return;
    if (nread < 0) {
        if (nread != UV_EOF || c->lingering) {
            conn_close_now(c);
            return;
        }
        /* The client finished sending: answer what is complete, drop a partial
         * request, then close. */
        c->eof = true;
        stop_reading(c);
        c->read_done = true;
        c->paused = false;
        kv_buf_reset(&c->pending);
        if (c->cur) {
            req_put(c, c->cur);
            c->cur = NULL;
        }
        if (c->nqueue == 0 && !c->writing)
            conn_close_now(c);
        else
            conn_arm(c);
        return;
    }
    if (c->lingering || c->read_done)
        return;
    conn_feed(c, buf->base, (size_t)nread, false);
}

/* ---- accepting ---- */

static void on_connection(uv_stream_t *ls, int status)
{
    kv_http_server *s = ls->data;
    if (status < 0) {
        kv_log_warn("http accept failed", KV_STR("err", uv_strerror(status)));
        return;
    }
    http_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        kv_log_error("http: out of memory accepting a connection",
                     KV_UINT("connections", s->nconns));
        return;
    }
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->refs = 2;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    int rc = uv_accept(ls, (uv_stream_t *)&c->tcp);
    if (rc) {
        kv_log_warn("http accept failed", KV_STR("err", uv_strerror(rc)));
        conn_close_now(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->last_active = uv_now(s->loop);
    if (s->nconns >= s->lim.max_connections) {
        kv_log_debug("http connection refused: too many connections",
                     KV_UINT("limit", s->lim.max_connections));
        conn_fail(c, 503, "too_many_connections", "the server has too many open connections",
                  "too_many_connections");
        return;
    }
    c->counted = true;
    s->nconns++;
    set_conn_gauge(s);
    start_reading(c);
    conn_arm(c);
}

/* ---- server ---- */

static void on_finish_closed(uv_handle_t *h)
{
    kv_http_server *s = h->data;
    void (*done)(void *) = s->done;
    void *arg = s->done_arg;
    kv_buf_free(&s->scratch);
    free(s);
    if (done)
        done(arg);
}

static void server_maybe_done(kv_http_server *s)
{
    if (!s->closing || s->finishing || s->conns || s->ls == LS_CLOSING || s->ls == LS_OPEN)
        return;
    s->finishing = true;
    uv_close((uv_handle_t *)&s->finish, on_finish_closed);
}

static void on_listener_closed(uv_handle_t *h)
{
    kv_http_server *s = h->data;
    s->ls = LS_CLOSED;
    server_maybe_done(s);
}

static int resolve(const char *host, int port, struct sockaddr_storage *ss)
{
    char h[256];
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        snprintf(h, sizeof(h), "%.*s", (int)(hl - 2), host + 1);
    } else {
        snprintf(h, sizeof(h), "%s", host);
    }
    memset(ss, 0, sizeof(*ss));
    if (uv_ip4_addr(h, port, (struct sockaddr_in *)ss) == 0)
        return KV_OK;
    if (uv_ip6_addr(h, port, (struct sockaddr_in6 *)ss) == 0)
        return KV_OK;
    /* A name such as "localhost": resolved once, at start. */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(h, NULL, &hints, &res) != 0 || !res)
        return KV_EINVAL;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return KV_OK;
}

int kv_http_server_start(kv_http_server **out, uv_loop_t *loop, const char *host, int port,
                         const kv_http_limits *lim, kv_http_handler handler, void *arg,
                         kv_metrics *metrics)
{
    if (!out || !loop || !handler || port < 0 || port > 65535)
        return KV_EINVAL;
    if (!host || !host[0])
        host = "0.0.0.0";
    struct sockaddr_storage ss;
    if (resolve(host, port, &ss) != KV_OK) {
        kv_log_error("http: bad listen address", KV_STR("host", host), KV_INT("port", port));
        return KV_EINVAL;
    }
    /* libuv writes with writev(2): a peer that resets the connection mid-write would
     * kill the process with SIGPIPE. Ignore it unless someone installed a handler. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);

    kv_http_server *s = calloc(1, sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    s->loop = loop;
    s->handler = handler;
    s->arg = arg;
    s->metrics = metrics;
    if (lim)
        s->lim = *lim;
    if (!s->lim.max_header)
        s->lim.max_header = DEFAULT_MAX_HEADER;
    if (!s->lim.max_body)
        s->lim.max_body = DEFAULT_MAX_BODY;
    if (!s->lim.max_connections)
        s->lim.max_connections = DEFAULT_MAX_CONNECTIONS;
    if (!s->lim.idle_timeout_ms)
        s->lim.idle_timeout_ms = DEFAULT_IDLE_MS;
    if (!s->lim.request_timeout_ms)
        s->lim.request_timeout_ms = DEFAULT_REQUEST_MS;
    if (!s->lim.max_pipeline)
        s->lim.max_pipeline = DEFAULT_MAX_PIPELINE;

    uv_timer_init(loop, &s->finish);
    s->finish.data = s;
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->ls = LS_OPEN;
    int rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    if (rc == 0) {
        struct sockaddr_storage name;
        int nlen = sizeof(name);
        rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&name, &nlen);
        if (rc == 0)
            s->port = ntohs(name.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&name)->sin6_port
                                                       : ((struct sockaddr_in *)&name)->sin_port);
    }
    if (rc) {
        kv_log_error("http: cannot listen", KV_STR("host", host), KV_INT("port", port),
                     KV_STR("err", uv_strerror(rc)));
        /* The handles are freed by their close callbacks on the next loop run. */
        s->closing = true;
        s->ls = LS_CLOSING;
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return KV_EIO;
    }
    if (metrics) {
        static const char *reasons[] = {"malformed", "headers_too_large",    "body_too_large",
                                        "timeout",   "too_many_connections", "idle_closed"};
        for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
            kv_metrics_count(metrics, REJECTED_NAME, REJECTED_HELP, "reason", reasons[i], 0);
        set_conn_gauge(s);
    }
    kv_log_info("http listening", KV_STR("host", host), KV_INT("port", s->port));
    *out = s;
    return KV_OK;
}

int kv_http_server_port(const kv_http_server *s)
{
    return s ? s->port : -1;
}

void kv_http_server_stop_accepting(kv_http_server *s)
{
    if (!s || s->ls != LS_OPEN)
        return;
    s->ls = LS_CLOSING;
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
}

size_t kv_http_server_inflight(const kv_http_server *s)
{
    return s ? s->inflight : 0;
}

void kv_http_server_close(kv_http_server *s, void (*done)(void *arg), void *arg)
{
    if (!s || s->closing)
        return;
    s->closing = true;
    s->done = done;
    s->done_arg = arg;
    kv_http_server_stop_accepting(s);
    for (http_conn *c = s->conns; c; c = c->next) {
        /* conn_close_now only starts closing handles; c stays on the list until its
         * close callbacks run, so iterating on is safe. */
        if (c->dead || c->lingering)
            continue;
        stop_reading(c);
        c->read_done = true;
        c->paused = false;
        kv_buf_reset(&c->pending);
        if (c->cur) {
            req_put(c, c->cur);
            c->cur = NULL;
        }
        if (c->nqueue == 0 && !c->writing) {
            conn_close_now(c);
            continue;
        }
        if (!c->parsing) {
            conn_flush(c);
            conn_arm(c);
        }
    }
    server_maybe_done(s);
}

const char *kv_http_req_header(const kv_http_req *req, const char *name, size_t *len)
{
    const http_req *r = (const http_req *)req;
    size_t nlen = strlen(name);
    for (uint32_t i = 0; i < r->nhdrs; i++) {
        const hdr_ent *h = &r->hdrs[i];
        if (h->name_len == nlen && strncasecmp(r->head.data + h->name_off, name, nlen) == 0) {
            if (len)
                *len = h->val_len;
            return r->head.data + h->val_off;
        }
    }
    return NULL;
}
