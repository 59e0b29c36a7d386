/*
 * client.h — the kvstore C client library: blocking HTTP/1.1 calls to one node's client
 * API, over one keep-alive connection that is reopened when the server closes it.
 *
 * A kv_client is not thread-safe: use one per thread. Every call returns KV_OK or a
 * negative kv_err (see error.h); out-parameters are written only on success. Memory the
 * library hands out is freed by the caller with the matching _free function.
 */
#ifndef KVSTORE_CLIENT_H
#define KVSTORE_CLIENT_H

#include "kvstore/error.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kv_client kv_client;

typedef struct kv_client_opts {
    uint64_t timeout_ms; /* per call: connect + send + receive; 0 = 10 s */
    /*
     * Largest response body accepted (a value, or a /metrics page); 0 = 1 MiB, the
     * server's default limits.max_value. A server that sends more (or more than 64 KiB of
     * status line and headers) fails the call with KV_EPROTO and the connection is closed.
     */
    uint64_t max_body;
} kv_client_opts;

#define KV_CLIENT_DEFAULT_TIMEOUT_MS 10000
#define KV_CLIENT_DEFAULT_MAX_BODY   (1024 * 1024)
#define KV_CLIENT_MAX_HEADER         (64 * 1024)

/* What the server said about a failed call, for messages (may be empty strings). */
typedef struct kv_client_error {
    int http_status;  /* 0 when no response was received */
    char code[64];    /* problem+json "code", e.g. "key_too_long" */
    char detail[512]; /* problem+json "detail", or a transport error text */
} kv_client_error;

/*
 * Create a client for server_url, "http://host[:port][/path]": host is an IPv4 literal,
 * "localhost", a DNS name (resolved with getaddrinfo on each connect) or a bracketed IPv6
 * literal; the port defaults to 80; the path is ignored. Does not connect yet. KV_EINVAL
 * for any other URL (https, user info, bad port), KV_ENOMEM. opts may be NULL (defaults).
 * *out is owned by the caller and released with kv_client_free.
 *
 * Behaviour of every call: one keep-alive TCP connection (TCP_NODELAY) is kept between
 * calls. If the server closed it meanwhile (the request fails to send, or the connection
 * ends before any byte of the response arrives), the call reconnects and sends the
 * request once more; a call never resends after part of a response was received. The
 * whole call (connect, send, receive and that one retry) must finish within
 * opts->timeout_ms or fails with KV_ETIMEDOUT and the connection is closed; only host name
 * resolution (getaddrinfo) is not bounded by it. Connection failures (refused,
 * unresolvable host, reset while sending) are KV_ECONNECT.
 *
 * Server answers map to: 2xx → KV_OK; 404 with problem code "key_not_found" on a key GET
 * → KV_ENOTFOUND; 503 → KV_EUNAVAIL; 507 → KV_ENOSPC; other 4xx → KV_EBADREQ; other 5xx
 * → KV_ESERVER; anything else unexpected → KV_EPROTO. kv_client_last_error then carries
 * the HTTP status and the problem+json "code" and "detail".
 */
int kv_client_new(kv_client **out, const char *server_url, const kv_client_opts *opts);
void kv_client_free(kv_client *c);

/*
 * Details of the last failed call on c (all zero / empty after a successful one). The
 * pointer stays valid until kv_client_free; its contents change with the next call.
 */
const kv_client_error *kv_client_last_error(const kv_client *c);

/*
 * GET key (any bytes, klen 1..limits.max_key; percent-encoded on the wire). On KV_OK *val
 * (malloc'ed, caller frees with free(); NUL-terminated for convenience, not counted in
 * *vlen) and *vlen hold the value, and if etag is not NULL the version from the ETag header
 * is copied into it without the surrounding double quotes, e.g. 1732700000123.42
 * (etag_cap bytes, NUL-terminated, truncated if longer; "" if the server sent none; 64
 * bytes is plenty). KV_ENOTFOUND if the key does not exist, KV_EINVAL for klen 0.
 */
int kv_client_get(kv_client *c, const void *key, size_t klen, char **val, size_t *vlen, char *etag,
                  size_t etag_cap);

/*
 * PUT key=val (val may be NULL when vlen is 0); ttl_s > 0 makes the key expire after that
 * many seconds (sent as ?ttl=N), 0 for none. etag as in kv_client_get (may be NULL): the
 * version the server wrote.
 */
int kv_client_put(kv_client *c, const void *key, size_t klen, const void *val, size_t vlen,
                  uint64_t ttl_s, char *etag, size_t etag_cap);

/* DELETE key. Succeeds whether or not the key existed (the server writes a tombstone). */
int kv_client_delete(kv_client *c, const void *key, size_t klen);

/*
 * How many replicas a key request needs (the server's ?r=, ?w= and ?consistency= query
 * parameters; see the Replication section of the README). Zero / NULL fields are not sent,
 * so the server's defaults (replication.r, replication.w) apply.
 */
typedef struct kv_client_quorum {
    const char *consistency; /* "one", "quorum", "all", or NULL */
    uint32_t r;              /* GET: replicas that must answer (1..replication.n); 0 = unset */
    uint32_t w;              /* PUT, DELETE: replicas that must acknowledge; 0 = unset */
} kv_client_quorum;

/*
 * Set the quorum for the following kv_client_get, kv_client_put and kv_client_delete calls
 * on c (not for listing or kv_client_raw_get): r is sent as ?r=N on GETs only, w as ?w=N on
 * PUTs and DELETEs only, consistency on all three (the server lets r / w win over it). q is
 * copied; NULL goes back to the server's defaults. KV_EINVAL (c unchanged) for a
 * consistency other than one, quorum or all. The server checks r and w against
 * replication.n: a value over it fails the call with KV_EBADREQ (problem code
 * invalid_query). A quorum that cannot be reached fails the call with KV_EUNAVAIL.
 */
int kv_client_set_quorum(kv_client *c, const kv_client_quorum *q);

/*
 * GET path (e.g. "/healthz", "/readyz", "/metrics"; must start with '/' and contain no
 * spaces or control characters, else KV_EINVAL). On KV_OK *status gets the HTTP status
 * and *body (malloc'ed, NUL-terminated, caller frees with free()) and *blen the body — for
 * any status the server returned; errors are only transport failures (KV_ECONNECT,
 * KV_ETIMEDOUT, KV_EPROTO). blen may be NULL. After a non-2xx answer kv_client_last_error
 * also holds the status and any problem+json code and detail, for messages.
 */
int kv_client_raw_get(kv_client *c, const char *path, int *status, char **body, size_t *blen);

/* As kv_client_raw_get, with POST and no body (e.g. "/v1/cluster/leave"). */
int kv_client_raw_post(kv_client *c, const char *path, int *status, char **body, size_t *blen);

/* ---- key listing: GET /v1/kv?prefix=&limit=&cursor= ---- */

#define KV_CLIENT_LIST_MAX_LIMIT 1000       /* keys per page, at most (the server's bound) */
#define KV_CLIENT_LIST_KEY_MAX   1024       /* bytes in a key, at most */
#define KV_CLIENT_LIST_MAX_BODY  (4u << 20) /* a page is accepted up to this size */

/* One listed key. */
typedef struct kv_client_list_key {
    char *key;        /* the key's bytes (malloc'ed; NUL-terminated, not counted in klen) */
    size_t klen;      /* 1..KV_CLIENT_LIST_KEY_MAX */
    char version[64]; /* newest version, as in the ETag without quotes: "<ts>.<node>" */
} kv_client_list_key;

/* One page of a listing; owned by the caller, freed with kv_client_list_page_free. */
typedef struct kv_client_list_page {
    kv_client_list_key *keys; /* in listing order: (ring hash, key bytes), not alphabetical */
    size_t nkeys;
    /* Where the next page starts (opaque, URL-safe, NUL-terminated); NULL when the listing
     * is complete. A page may hold fewer than limit keys — even none, when everything it
     * covered was deleted — and still have a next_cursor: follow it until it is NULL. */
    char *next_cursor;
    char *json; /* the page as the server sent it (NUL-terminated), for --json output */
    size_t json_len;
} kv_client_list_page;

/*
 * Fetch one page of the keys that start with prefix[0..plen) (any bytes; plen 0 = all
 * keys), at most limit of them (1..KV_CLIENT_LIST_MAX_LIMIT; 0 = the server's default,
 * 100), starting after cursor (a previous page's next_cursor; NULL or "" for the first
 * page). Each key that exists during the whole listing is listed exactly once, with its
 * newest version; deleted and expired keys are not listed. The page body may be up to
 * KV_CLIENT_LIST_MAX_BODY whatever opts->max_body says. KV_OK and *out; KV_EINVAL for a
 * limit over the bound or plen over KV_CLIENT_LIST_KEY_MAX; KV_EBADREQ when the server
 * refuses the query (a bad cursor: last_error says which parameter); KV_EUNAVAIL when it
 * cannot reach enough members (503); KV_EPROTO when the answer is not a page; the usual
 * transport errors (see kv_client_new).
 */
int kv_client_list(kv_client *c, const void *prefix, size_t plen, uint32_t limit,
                   const char *cursor, kv_client_list_page **out);

/* Free a page from kv_client_list (NULL is fine). */
void kv_client_list_page_free(kv_client_list_page *p);

#ifdef __cplusplus
}
#endif
#endif
