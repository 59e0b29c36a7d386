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
} kv_client_opts;

/* What the server said about a failed call, for messages (may be empty strings). */
typedef struct kv_client_error {
    int http_status;   /* 0 when no response was received */
    char code[64];     /* problem+json "code", e.g. "key_too_long" */
    char detail[512];  /* problem+json "detail", or a transport error text */
} kv_client_error;

/*
 * Create a client for server_url ("http://host:port", path ignored). Does not connect
 * yet. KV_EINVAL for a URL that is not http://host[:port]. opts may be NULL.
 */
int kv_client_new(kv_client **out, const char *server_url, const kv_client_opts *opts);
void kv_client_free(kv_client *c);

/* Details of the last failed call on c; valid until the next call. */
const kv_client_error *kv_client_last_error(const kv_client *c);

/*
 * GET key. On KV_OK *val (malloc'ed, caller frees with free(); NUL-terminated for
 * convenience, not counted in *vlen) and *vlen hold the value, and if etag is not NULL
 * the version from ETag is copied into it (etag_cap bytes, NUL-terminated).
 * KV_ENOTFOUND for 404.
 */
int kv_client_get(kv_client *c, const void *key, size_t klen, char **val, size_t *vlen,
                  char *etag, size_t etag_cap);

/* PUT key=val; ttl_s 0 for none. etag as in kv_client_get (may be NULL). */
int kv_client_put(kv_client *c, const void *key, size_t klen, const void *val, size_t vlen,
                  uint64_t ttl_s, char *etag, size_t etag_cap);

/* DELETE key. Succeeds whether or not the key existed. */
int kv_client_delete(kv_client *c, const void *key, size_t klen);

/*
 * GET path (e.g. "/healthz", "/readyz", "/metrics"). On KV_OK *status gets the HTTP status
 * and *body (malloc'ed, NUL-terminated, caller frees) the body — for any status the server
 * returned; errors are only transport failures.
 */
int kv_client_raw_get(kv_client *c, const char *path, int *status, char **body, size_t *blen);

#ifdef __cplusplus
}
#endif
#endif
