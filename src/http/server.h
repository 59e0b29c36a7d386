/*
 * server.h — the HTTP/1.1 server of the client API, on libuv TCP and http-parser.
 *
 * Handles connections, parsing, keep-alive, pipelining (responses go out in request
 * order), limits (header bytes, body bytes, connections, idle and request timeouts) and
 * request metrics. It knows nothing of keys: each complete request is handed to the
 * handler, which answers now or later with kv_http_respond.
 *
 * Threading: loop thread only.
 */
#ifndef KV_HTTP_SERVER_H
#define KV_HTTP_SERVER_H

#include "common/buf.h"
#include "http/metrics.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct kv_http_server kv_http_server;

/* A field left at 0 takes its default: max_header 16 KiB, max_body 1 MiB,
 * max_connections 4096, idle_timeout_ms 60000, request_timeout_ms 10000,
 * max_pipeline 32. */
typedef struct kv_http_limits {
    uint32_t max_header;         /* bytes of request line + headers; over → 431 */
    uint64_t max_body;           /* bytes of body; over → 413 */
    uint32_t max_connections;    /* more → 503 and close */
    uint64_t idle_timeout_ms;    /* keep-alive connection with no request → closed */
    uint64_t request_timeout_ms; /* a started request not complete in time → 408, closed */
    uint32_t max_pipeline;       /* requests in flight per connection before reads pause */
} kv_http_limits;

/*
 * One parsed request. Owned by the server; valid from the handler call until
 * kv_http_respond is called for it (exactly once). If the client disconnects meanwhile
 * the request stays valid and the response is discarded.
 */
typedef struct kv_http_req {
    int method;       /* enum http_method from http_parser.h */
    const char *path; /* raw (still percent-encoded) path, NUL-terminated */
    size_t path_len;
    const char *query; /* raw query string without '?', NUL-terminated; "" if none */
    size_t query_len;
    const char *body;
    size_t body_len;
    uint64_t start_ns; /* uv_hrtime() when the request's first byte arrived */
    const char *route; /* metrics label; the handler sets it (static string) */
} kv_http_req;

/* Value of header name (case-insensitive) or NULL; *len gets its length (len may be
 * NULL). The value is NUL-terminated; with repeated headers, the first one. */
const char *kv_http_req_header(const kv_http_req *req, const char *name, size_t *len);

typedef struct kv_http_header {
    const char *name;
    const char *value;
} kv_http_header;

/*
 * Answer req, exactly once (a second answer aborts: the FIFO would be corrupt). Copies
 * everything it is given; req is invalid afterwards. content_type may be NULL for no
 * body. Content-Length, Date and Connection are added by the server; the body is left
 * out for HEAD, and body and Content-Length for 1xx, 204 and 304. A header whose name
 * or value holds CR or LF is dropped (logged). Responses go out in request order.
 */
void kv_http_respond(kv_http_req *req, int status, const char *content_type,
                     const kv_http_header *headers, int nheaders, const void *body, size_t len);

/* Answer with an application/problem+json body:
 *   {"type":"urn:kvstore:problem:<code>","title":...,"status":N,"code":"<code>","detail":...} */
void kv_http_respond_problem(kv_http_req *req, int status, const char *code, const char *detail);

/* The same, with extra response headers (e.g. Allow on a 405). */
void kv_http_respond_problem_headers(kv_http_req *req, int status, const char *code,
                                     const char *detail, const kv_http_header *headers,
                                     int nheaders);

/*
 * Append the problem+json body above to out (title from the code, detail JSON-escaped;
 * detail NULL → the title). For callers that build a response themselves. KV_OK or
 * KV_ENOMEM.
 */
int kv_http_problem_body(kv_buf *out, int status, const char *code, const char *detail);

typedef void (*kv_http_handler)(kv_http_req *req, void *arg);

/*
 * Listen on host:port (port 0 picks a free one; see kv_http_server_port). lim may be
 * NULL (all defaults). metrics may be NULL; the server records every response in it
 * (route "invalid" for answers the server gives itself), counts refusals in
 * kv_http_rejected_total{reason} and keeps the kv_http_connections gauge. handler is
 * called on the loop thread for each complete request, in request order per
 * connection. Sets SIGPIPE to ignored if it still has the default action (a client
 * resetting mid-write must not kill the process).
 * Errors: KV_EINVAL (bad address or port), KV_EIO (bind/listen failed: logged with
 * host, port and reason; the listener handle is released on the next run of the loop).
 */
int kv_http_server_start(kv_http_server **out, uv_loop_t *loop, const char *host, int port,
                         const kv_http_limits *lim, kv_http_handler handler, void *arg,
                         kv_metrics *metrics);

int kv_http_server_port(const kv_http_server *s);

/* Stop accepting new connections; requests in flight continue. */
void kv_http_server_stop_accepting(kv_http_server *s);

/* Requests handed to the handler and not yet responded to. */
size_t kv_http_server_inflight(const kv_http_server *s);

/*
 * Graceful close: stop accepting, stop reading new requests, wait until every in-flight
 * request is answered and written, close every connection and handle, free s, then call
 * done(arg) on the loop thread (never from inside this call; done may be NULL). Idle
 * connections and partly received requests are dropped at once; the last response on a
 * busy connection carries "Connection: close".
 */
void kv_http_server_close(kv_http_server *s, void (*done)(void *arg), void *arg);

#endif
