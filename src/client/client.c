/*
 * client.c — the kvstore C client library (see include/kvstore/client.h): blocking
 * HTTP/1.1 over one keep-alive TCP connection, responses parsed by http-parser. A
 * kv_client belongs to one thread at a time.
 *
 * Design notes
 * - Every call has one deadline (now + timeout) that covers connect, send, receive and
 *   the single retry. The socket is non-blocking and every wait is a poll() bounded by
 *   what is left of the deadline, so a silent server costs exactly the timeout.
 * - Stale keep-alive connections: before reusing the socket we peek whether the server
 *   already closed it; if so we reconnect without counting a retry. The server can still
 *   close in the gap before our request lands, so a reused connection that fails to send
 *   (EPIPE, ECONNRESET) or ends before the first response byte is reopened and the
 *   request is sent once more. Once any response byte arrived we never resend: the server
 *   may have acted on the request.
 * - When a send fails we still try to read a response: a server may answer an oversized
 *   upload early (413) and close, and that answer is more useful than "broken pipe".
 * - Responses are bounded (KV_CLIENT_MAX_HEADER of head, max_body of body) so a broken or
 *   hostile server cannot make the client allocate without limit.
 */
#include "kvstore/client.h"

#include "client/json.h"
#include "client/list.h"
#include "client/url.h"
#include "common/buf.h"
#include "common/log.h"

#include <errno.h>
#include <http_parser.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Internal result of one attempt: the connection ended before any response byte. */
#define KVC_STALE 1

struct kv_client {
    kvc_url url;
    uint64_t timeout_ms;
    uint64_t max_body;
    int fd; /* -1 when not connected */
    kv_client_error err;
    /* kv_client_set_quorum: "" = not sent; 0 = not sent */
    char consistency[8];
    uint32_t r, w;
};

/* One response being parsed. */
typedef struct kvc_resp {
    int status;
    kv_buf body;
    char etag[128];
    char ctype[128];
    uint64_t max_body;
    /* header callback state: http-parser may split a name or value across reads */
    char hname[32];
    size_t hname_len;
    bool hname_long; /* longer than any name we care about */
    char hval[128];
    size_t hval_len;
    bool in_value;
    bool headers_done;
    bool complete;
    bool too_big;      /* body over max_body */
    bool head_too_big; /* status line + headers over KV_CLIENT_MAX_HEADER */
    size_t head_bytes;
    bool keep_alive;
} kvc_resp;

/* ---- time and errors ---------------------------------------------------------------- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void err_clear(kv_client *c)
{
    memset(&c->err, 0, sizeof(c->err));
}

static int err_set(kv_client *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int err_set(kv_client *c, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err.detail, sizeof(c->err.detail), fmt, ap);
    va_end(ap);
    kv_log_debug("kv client call failed", KV_STR("server", c->url.authority),
                 KV_STR("err", kv_errname(rc)), KV_STR("detail", c->err.detail));
    return rc;
}

static void conn_close(kv_client *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

/*
 * Wait until fd is ready for events or the deadline passes. KV_OK, KV_ETIMEDOUT, or
 * KV_ECONNECT if poll itself fails. POLLERR/POLLHUP count as ready: the following
 * send/recv reports what happened.
 */
static int wait_fd(int fd, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = now_ms();
        if (now >= deadline)
            return KV_ETIMEDOUT;
        uint64_t left = deadline - now;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, left > INT32_MAX ? INT32_MAX : (int)left);
        if (n > 0)
            return KV_OK;
        if (n < 0 && errno != EINTR)
            return KV_ECONNECT;
    }
}

/* ---- connecting ---------------------------------------------------------------------- */

/* Connect one address within the deadline: KV_OK (fd in *out), KV_ETIMEDOUT or an errno. */
static int connect_one(const struct addrinfo *ai, uint64_t deadline, int *out, int *sys_err)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        *sys_err = errno;
        return KV_ECONNECT;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno != EINPROGRESS && errno != EINTR) {
            *sys_err = errno;
            close(fd);
            return KV_ECONNECT;
        }
        int rc = wait_fd(fd, POLLOUT, deadline);
        if (rc != KV_OK) {
            *sys_err = rc == KV_ETIMEDOUT ? ETIMEDOUT : errno;
            close(fd);
            return rc;
        }
        int soerr = 0;
        socklen_t slen = sizeof(soerr);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &slen) != 0)
            soerr = errno;
        if (soerr != 0) {
            *sys_err = soerr;
            close(fd);
            return KV_ECONNECT;
        }
    }
    /* Requests are small and latency-bound; do not let Nagle hold them back. */
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    *out = fd;
    return KV_OK;
}

static int conn_open(kv_client *c, uint64_t deadline)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int g = getaddrinfo(c->url.host, c->url.port, &hints, &res);
    if (g != 0)
        return err_set(c, KV_ECONNECT, "resolve %s: %s", c->url.host,
                       g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
    int rc = KV_ECONNECT, sys_err = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        rc = connect_one(ai, deadline, &c->fd, &sys_err);
        if (rc == KV_OK || rc == KV_ETIMEDOUT)
            break;
    }
    freeaddrinfo(res);
    if (rc == KV_ETIMEDOUT)
        return err_set(c, rc, "connect to %s: timed out", c->url.authority);
    if (rc != KV_OK)
        return err_set(c, rc, "connect to %s: %s", c->url.authority,
                       sys_err ? strerror(sys_err) : "no address");
    return KV_OK;
}

/*
 * True if the idle keep-alive connection still looks usable: nothing to read (the server
 * sends nothing unasked, so readable means EOF, a reset or garbage).
 */
static bool conn_idle_ok(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0)
        return true;
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* ---- sending ----------------------------------------------------------------------- */

/* Send head then body. KV_OK, KVC_STALE (peer closed/reset), KV_ETIMEDOUT, KV_ECONNECT. */
static int send_all(kv_client *c, const kv_buf *head, const void *body, size_t blen,
                    uint64_t deadline, int *sys_err)
{
    struct iovec iov[2] = {{head->data, head->len}, {(void *)body, body ? blen : 0}};
    int niov = 2, first = 0;
    while (first < niov) {
        if (iov[first].iov_len == 0) {
            first++;
            continue;
        }
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov[first];
        msg.msg_iovlen = (size_t)(niov - first);
        /* MSG_NOSIGNAL: a closed peer is an error to handle, not a SIGPIPE. */
        ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                int rc = wait_fd(c->fd, POLLOUT, deadline);
                if (rc != KV_OK)
                    return rc;
                continue;
            }
            *sys_err = errno;
            return (errno == EPIPE || errno == ECONNRESET) ? KVC_STALE : KV_ECONNECT;
        }
        size_t left = (size_t)n;
        while (first < niov && left >= iov[first].iov_len) {
            left -= iov[first].iov_len;
            iov[first].iov_len = 0;
            first++;
        }
        if (first < niov) {
            iov[first].iov_base = (char *)iov[first].iov_base + left;
            iov[first].iov_len -= left;
        }
    }
    return KV_OK;
}

/* ---- receiving --------------------------------------------------------------------- */

static void header_done(kvc_resp *r)
{
    if (!r->in_value)
        return;
    r->hval[r->hval_len] = '\0';
    if (!r->hname_long) {
        r->hname[r->hname_len] = '\0';
        if (strcasecmp(r->hname, "ETag") == 0)
            snprintf(r->etag, sizeof(r->etag), "%s", r->hval);
        else if (strcasecmp(r->hname, "Content-Type") == 0)
            snprintf(r->ctype, sizeof(r->ctype), "%s", r->hval);
    }
    r->in_value = false;
    r->hname_len = 0;
    r->hname_long = false;
    r->hval_len = 0;
}

/* Count the head as it is parsed; checked once the head is complete. */
static int on_status(http_parser *p, const char *at, size_t len)
{
    kvc_resp *r = p->data;
    r->head_bytes += len;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    kvc_resp *r = p->data;
    r->head_bytes += len + 4; /* ": " and CRLF, roughly */
    header_done(r);
    if (r->hname_len + len >= sizeof(r->hname)) {
        r->hname_long = true;
        return 0;
    }
    memcpy(r->hname + r->hname_len, at, len);
    r->hname_len += len;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    kvc_resp *r = p->data;
    r->head_bytes += len;
    r->in_value = true;
    /* Values we keep are short; a longer one is truncated (and then unused). */
    size_t room = sizeof(r->hval) - 1 - r->hval_len;
    if (len > room)
        len = room;
    memcpy(r->hval + r->hval_len, at, len);
    r->hval_len += len;
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    kvc_resp *r = p->data;
    header_done(r);
    r->status = (int)p->status_code;
    r->headers_done = true;
    if (r->head_bytes > KV_CLIENT_MAX_HEADER) {
        r->head_too_big = true;
        return -1;
    }
    /* Without a Content-Length http-parser leaves the field at 0 or ULLONG_MAX; chunked
     * and read-until-close bodies are bounded in on_body instead. */
    if (!(p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX &&
        p->content_length > r->max_body) {
        r->too_big = true;
        return -1;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    kvc_resp *r = p->data;
    if (len > r->max_body - r->body.len) {
        r->too_big = true;
        return -1;
    }
    return kv_buf_append(&r->body, at, len) == KV_OK ? 0 : -1;
}

static int on_message_complete(http_parser *p)
{
    kvc_resp *r = p->data;
    if (r->status >= 100 && r->status < 200) {
        /* An interim answer (100 Continue): the real one follows on the same stream. */
        r->headers_done = false;
        r->head_bytes = 0;
        r->status = 0;
        r->etag[0] = r->ctype[0] = '\0';
        return 0;
    }
    r->complete = true;
    r->keep_alive = http_should_keep_alive(p) != 0;
    /* One request, one response: stop here even if more bytes follow. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void resp_reset(kvc_resp *r, uint64_t max_body)
{
    kv_buf_free(&r->body);
    memset(r, 0, sizeof(*r));
    r->max_body = max_body;
}

/*
 * Read one response. KV_OK (r->complete), KVC_STALE (the connection ended before any
 * byte), KV_ETIMEDOUT, KV_EPROTO (malformed, truncated or over a bound), KV_ENOMEM.
 */
static int recv_response(kv_client *c, kvc_resp *r, uint64_t deadline)
{
    http_parser p;
    http_parser_init(&p, HTTP_RESPONSE);
    p.data = r;
    char buf[16384];
    size_t total = 0;
    for (;;) {
        int rc = wait_fd(c->fd, POLLIN, deadline);
        if (rc == KV_ETIMEDOUT)
            return err_set(c, rc, "no complete response from %s within %" PRIu64 " ms",
                           c->url.authority, c->timeout_ms);
        if (rc != KV_OK)
            return err_set(c, rc, "poll: %s", strerror(errno));
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            if (total == 0 && errno == ECONNRESET)
                return KVC_STALE;
            return err_set(c, KV_EPROTO, "connection to %s lost mid-response: %s", c->url.authority,
                           strerror(errno));
        }
        if (n == 0) {
            if (total == 0)
                return KVC_STALE;
            /* EOF ends a body that has neither length nor chunking. */
            http_parser_execute(&p, &parser_settings, NULL, 0);
            if (r->complete) {
                r->keep_alive = false;
                return KV_OK;
            }
            return err_set(c, KV_EPROTO, "%s closed the connection mid-response", c->url.authority);
        }
        total += (size_t)n;
        size_t used = http_parser_execute(&p, &parser_settings, buf, (size_t)n);
        if (r->too_big)
            return err_set(c, KV_EPROTO, "response body from %s is over %" PRIu64 " bytes",
                           c->url.authority, r->max_body);
        if (r->complete) {
            if (used < (size_t)n)
                r->keep_alive = false; /* bytes nobody asked for: do not reuse */
            return KV_OK;
        }
        enum http_errno he = HTTP_PARSER_ERRNO(&p);
        if (r->head_too_big || he == HPE_HEADER_OVERFLOW ||
            (!r->headers_done && total > KV_CLIENT_MAX_HEADER))
            return err_set(c, KV_EPROTO, "response head from %s is over %d bytes", c->url.authority,
                           KV_CLIENT_MAX_HEADER);
        if (he != HPE_OK) {
            if (he == HPE_CB_body && !r->too_big)
                return err_set(c, KV_ENOMEM, "out of memory reading the response");
            return err_set(c, KV_EPROTO, "malformed response from %s: %s", c->url.authority,
                           http_errno_description(he));
        }
    }
}

/* ---- one request ------------------------------------------------------------------- */

/*
 * Send method target with body and read the response into r, reconnecting once for a
 * stale keep-alive connection (see the design notes). Transport errors only; r->status
 * holds whatever the server answered.
 */
static int do_request(kv_client *c, const char *method, const char *target, const void *body,
                      size_t blen, bool has_body, kvc_resp *r)
{
    uint64_t deadline = now_ms() + c->timeout_ms;
    kv_buf head = KV_BUF_INIT;
    int rc = kv_buf_printf(&head, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: kvstore-client/%s\r\n",
                           method, target, c->url.authority, KV_VERSION);
    if (rc == KV_OK && has_body)
        rc = kv_buf_printf(
            &head, "Content-Type: application/octet-stream\r\nContent-Length: %zu\r\n", blen);
    if (rc == KV_OK)
        rc = kv_buf_appends(&head, "\r\n");
    if (rc != KV_OK) {
        kv_buf_free(&head);
        return err_set(c, KV_ENOMEM, "out of memory");
    }

    for (int attempt = 0;; attempt++) {
        bool reused = c->fd >= 0;
        if (reused && !conn_idle_ok(c->fd)) {
            conn_close(c); /* closed while idle: a plain reconnect, not a retry */
            reused = false;
        }
        if (c->fd < 0 && (rc = conn_open(c, deadline)) != KV_OK)
            break;

        resp_reset(r, c->max_body);
        int sys_err = 0;
        int src = send_all(c, &head, body, has_body ? blen : 0, deadline, &sys_err);
        if (src == KV_ETIMEDOUT) {
            rc = err_set(c, src, "sending the request to %s timed out", c->url.authority);
            break;
        }
        if (src == KV_ECONNECT) {
            rc = err_set(c, src, "send to %s: %s", c->url.authority, strerror(sys_err));
            break;
        }
        rc = recv_response(c, r, deadline);
        if (rc == KVC_STALE) {
            conn_close(c);
            if (reused && attempt == 0) {
                kv_log_debug("kv client: keep-alive connection was closed, reconnecting",
                             KV_STR("server", c->url.authority));
                continue;
            }
            if (src == KVC_STALE)
                rc = err_set(c, KV_ECONNECT, "send to %s: %s", c->url.authority, strerror(sys_err));
            else
                rc = err_set(c, KV_EPROTO, "%s closed the connection without responding",
                             c->url.authority);
            break;
        }
        if (rc == KV_OK && !r->keep_alive)
            conn_close(c);
        break;
    }
    if (rc != KV_OK)
        conn_close(c); /* the stream is in an unknown state */
    kv_buf_free(&head);
    return rc;
}

/* Fill last_error from a non-2xx response and map it to a kv_err (see client.h). */
static int status_error(kv_client *c, const kvc_resp *r, bool key_get)
{
    c->err.http_status = r->status;
    if (r->body.len)
        kvc_json_str_field(r->body.data, r->body.len, "code", c->err.code, sizeof(c->err.code));
    if (!r->body.len || !kvc_json_str_field(r->body.data, r->body.len, "detail", c->err.detail,
                                            sizeof(c->err.detail)))
        snprintf(c->err.detail, sizeof(c->err.detail), "server answered HTTP %d", r->status);
    int rc;
    if (r->status == 404 && key_get && strcmp(c->err.code, "key_not_found") == 0)
        rc = KV_ENOTFOUND;
    else if (r->status == 503)
        rc = KV_EUNAVAIL;
    else if (r->status == 507)
        rc = KV_ENOSPC;
    else if (r->status >= 400 && r->status < 500)
        rc = KV_EBADREQ;
    else if (r->status >= 500 && r->status < 600)
        rc = KV_ESERVER;
    else
        rc = KV_EPROTO;
    if (rc == KV_EPROTO)
        snprintf(c->err.detail, sizeof(c->err.detail), "unexpected HTTP status %d from %s",
                 r->status, c->url.authority);
    kv_log_debug("kv client call failed", KV_STR("server", c->url.authority),
                 KV_INT("status", r->status), KV_STR("code", c->err.code),
                 KV_STR("detail", c->err.detail));
    return rc;
}

/* Copy the ETag header without W/ and the surrounding quotes. */
static void copy_etag(const kvc_resp *r, char *etag, size_t cap)
{
    if (!etag || cap == 0)
        return;
    const char *s = r->etag;
    if (strncmp(s, "W/", 2) == 0)
        s += 2;
    size_t n = strlen(s);
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"') {
        s++;
        n -= 2;
    }
    if (n >= cap)
        n = cap - 1;
    memcpy(etag, s, n);
    etag[n] = '\0';
}

/* Append "?name=value" or "&name=value" (value URL-safe) to b. */
static int query_add(kv_buf *b, bool *first, const char *name, const char *value)
{
    int rc = kv_buf_printf(b, "%c%s=%s", *first ? '?' : '&', name, value);
    *first = false;
    return rc;
}

/*
 * Build "/v1/kv/<escaped key>[?ttl=N][&consistency=C][&r=N | &w=N]" into b: r goes only on
 * a GET and w only on a write, because the server reads r for GETs and w otherwise.
 */
static int key_target(const kv_client *c, kv_buf *b, const char *method, const void *key,
                      size_t klen, uint64_t ttl_s)
{
    bool read = strcmp(method, "GET") == 0;
    bool first = true;
    char num[24];
    int rc = kv_buf_appends(b, "/v1/kv/");
    if (rc == KV_OK)
        rc = kvc_path_escape(b, key, klen);
    if (rc == KV_OK && ttl_s > 0) {
        snprintf(num, sizeof(num), "%" PRIu64, ttl_s);
        rc = query_add(b, &first, "ttl", num);
    }
    if (rc == KV_OK && c->consistency[0])
        rc = query_add(b, &first, "consistency", c->consistency);
    uint32_t need = read ? c->r : c->w;
    if (rc == KV_OK && need > 0) {
        snprintf(num, sizeof(num), "%" PRIu32, need);
        rc = query_add(b, &first, read ? "r" : "w", num);
    }
    return rc;
}

/*
 * One key request: validate, send, map the status. On KV_OK r holds the response (the
 * caller frees r->body).
 */
static int key_call(kv_client *c, const char *method, const void *key, size_t klen, uint64_t ttl_s,
                    const void *val, size_t vlen, bool has_body, kvc_resp *r)
{
    memset(r, 0, sizeof(*r));
    if (!c)
        return KV_EINVAL;
    err_clear(c);
    if (!key || klen == 0)
        return err_set(c, KV_EINVAL, "the key is empty");
    if (has_body && !val && vlen > 0)
        return err_set(c, KV_EINVAL, "value is NULL");
    kv_buf target = KV_BUF_INIT;
    if (key_target(c, &target, method, key, klen, ttl_s) != KV_OK) {
        kv_buf_free(&target);
        return err_set(c, KV_ENOMEM, "out of memory");
    }
    int rc = do_request(c, method, target.data, val, vlen, has_body, r);
    kv_buf_free(&target);
    if (rc == KV_OK && (r->status < 200 || r->status > 299))
        rc = status_error(c, r, strcmp(method, "GET") == 0);
    if (rc != KV_OK)
        kv_buf_free(&r->body);
    return rc;
}

/* ---- public API -------------------------------------------------------------------- */

int kv_client_new(kv_client **out, const char *server_url, const kv_client_opts *opts)
{
    if (!out)
        return KV_EINVAL;
    kvc_url u;
    if (kvc_url_parse(&u, server_url) != KV_OK)
        return KV_EINVAL;
    kv_client *c = calloc(1, sizeof(*c));
    if (!c)
        return KV_ENOMEM;
    c->url = u;
    c->fd = -1;
    c->timeout_ms = opts && opts->timeout_ms ? opts->timeout_ms : KV_CLIENT_DEFAULT_TIMEOUT_MS;
    c->max_body = opts && opts->max_body ? opts->max_body : KV_CLIENT_DEFAULT_MAX_BODY;
    *out = c;
    return KV_OK;
}

void kv_client_free(kv_client *c)
{
    if (!c)
        return;
    conn_close(c);
    free(c);
}

const kv_client_error *kv_client_last_error(const kv_client *c)
{
    return &c->err;
}

int kv_client_get(kv_client *c, const void *key, size_t klen, char **val, size_t *vlen, char *etag,
                  size_t etag_cap)
{
    if (!val || !vlen)
        return KV_EINVAL;
    kvc_resp r;
    int rc = key_call(c, "GET", key, klen, 0, NULL, 0, false, &r);
    if (rc != KV_OK)
        return rc;
    if (!r.body.data && kv_buf_reserve(&r.body, 0) != KV_OK)
        return err_set(c, KV_ENOMEM, "out of memory");
    r.body.data[r.body.len] = '\0';
    copy_etag(&r, etag, etag_cap);
    *val = kv_buf_steal(&r.body, vlen);
    return KV_OK;
}

int kv_client_put(kv_client *c, const void *key, size_t klen, const void *val, size_t vlen,
                  uint64_t ttl_s, char *etag, size_t etag_cap)
{
    kvc_resp r;
    int rc = key_call(c, "PUT", key, klen, ttl_s, val, vlen, true, &r);
    if (rc != KV_OK)
        return rc;
    copy_etag(&r, etag, etag_cap);
    kv_buf_free(&r.body);
    return KV_OK;
}

int kv_client_delete(kv_client *c, const void *key, size_t klen)
{
    kvc_resp r;
    int rc = key_call(c, "DELETE", key, klen, 0, NULL, 0, false, &r);
    if (rc != KV_OK)
        return rc;
    kv_buf_free(&r.body);
    return KV_OK;
}

int kv_client_set_quorum(kv_client *c, const kv_client_quorum *q)
{
    if (!c)
        return KV_EINVAL;
    const char *level = q && q->consistency ? q->consistency : "";
    if (*level && strcmp(level, "one") != 0 && strcmp(level, "quorum") != 0 &&
        strcmp(level, "all") != 0)
        return KV_EINVAL;
    snprintf(c->consistency, sizeof(c->consistency), "%s", level);
    c->r = q ? q->r : 0;
    c->w = q ? q->w : 0;
    return KV_OK;
}

static int raw_request(kv_client *c, const char *method, const char *path, int *status, char **body,
                       size_t *blen);

int kv_client_raw_get(kv_client *c, const char *path, int *status, char **body, size_t *blen)
{
    return raw_request(c, "GET", path, status, body, blen);
}

int kv_client_raw_post(kv_client *c, const char *path, int *status, char **body, size_t *blen)
{
    return raw_request(c, "POST", path, status, body, blen);
}

static int raw_request(kv_client *c, const char *method, const char *path, int *status, char **body,
                       size_t *blen)
{
    if (!c || !path || !status || !body)
        return KV_EINVAL;
    err_clear(c);
    if (path[0] != '/')
        return err_set(c, KV_EINVAL, "path must start with '/'");
    for (const unsigned char *p = (const unsigned char *)path; *p; p++)
        if (*p <= 0x20 || *p == 0x7f)
            return err_set(c, KV_EINVAL, "path contains a space or control character");
    kvc_resp r;
    memset(&r, 0, sizeof(r));
    int rc = do_request(c, method, path, NULL, 0, false, &r);
    if (rc != KV_OK) {
        kv_buf_free(&r.body);
        return rc;
    }
    if (r.status < 200 || r.status > 299)
        (void)status_error(c, &r, false);
    if (!r.body.data && kv_buf_reserve(&r.body, 0) != KV_OK)
        return err_set(c, KV_ENOMEM, "out of memory");
    r.body.data[r.body.len] = '\0';
    *status = r.status;
    *body = kv_buf_steal(&r.body, blen);
    return KV_OK;
}

int kv_client_list(kv_client *c, const void *prefix, size_t plen, uint32_t limit,
                   const char *cursor, kv_client_list_page **out)
{
    if (!c || !out || (plen && !prefix))
        return KV_EINVAL;
    err_clear(c);
    if (limit > KV_CLIENT_LIST_MAX_LIMIT)
        return err_set(c, KV_EINVAL, "limit %" PRIu32 " is over %d", limit,
                       KV_CLIENT_LIST_MAX_LIMIT);
    if (plen > KV_CLIENT_LIST_KEY_MAX)
        return err_set(c, KV_EINVAL, "the prefix is longer than a key can be (%d bytes)",
                       KV_CLIENT_LIST_KEY_MAX);
    kv_buf target = KV_BUF_INIT;
    int rc = kv_buf_appends(&target, "/v1/kv?prefix=");
    if (rc == KV_OK)
        rc = kvc_path_escape(&target, prefix, plen);
    if (rc == KV_OK && limit > 0)
        rc = kv_buf_printf(&target, "&limit=%" PRIu32, limit);
    if (rc == KV_OK && cursor && *cursor) {
        /* opaque, URL-safe as the server made it; escaped anyway so that no caller's
         * string can break the request line */
        rc = kv_buf_appends(&target, "&cursor=");
        if (rc == KV_OK)
            rc = kvc_path_escape(&target, cursor, strlen(cursor));
    }
    if (rc != KV_OK) {
        kv_buf_free(&target);
        return err_set(c, KV_ENOMEM, "out of memory");
    }
    /* A page of 1000 long binary keys is about 3 MiB: more than a value bound may allow. */
    uint64_t saved = c->max_body;
    if (c->max_body < KV_CLIENT_LIST_MAX_BODY)
        c->max_body = KV_CLIENT_LIST_MAX_BODY;
    kvc_resp r;
    memset(&r, 0, sizeof(r));
    rc = do_request(c, "GET", target.data, NULL, 0, false, &r);
    c->max_body = saved;
    kv_buf_free(&target);
    if (rc == KV_OK && (r.status < 200 || r.status > 299))
        rc = status_error(c, &r, false);
    if (rc == KV_OK) {
        rc = kvc_list_parse(r.body.data ? r.body.data : "", r.body.len, out);
        if (rc == KV_EPROTO)
            err_set(c, rc, "the answer from %s is not a key listing page", c->url.authority);
        else if (rc != KV_OK)
            err_set(c, rc, "out of memory");
    }
    kv_buf_free(&r.body);
    return rc;
}
