/*
 * cbor.h — the CBOR primitives peer messages are built from: a writer that appends
 * items to a kv_buf, and a defensive pull reader over bytes from the network. Both use
 * libcbor (its encoders, and its streaming decoder as the tokenizer). Pure; any thread,
 * one reader or writer per thread.
 *
 * The reader never allocates and never recurses on input: it hands out one item header
 * at a time and the caller checks that each is the type it expects, that every count and
 * length is within the caller's bound and within the bytes that are left. Indefinite
 * lengths, tags, floats and simple values other than true/false/null are refused
 * (our encoder never produces them). Byte and text strings are returned as pointers into
 * the input, valid as long as it is.
 */
#ifndef KV_NET_CBOR_H
#define KV_NET_CBOR_H

#include "common/buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- writer: each call appends one item; the first failure sticks in w->err ---- */

typedef struct kv_cbor_w {
    kv_buf *out;
    int err; /* KV_OK or KV_ENOMEM */
} kv_cbor_w;

void kv_cbor_put_uint(kv_cbor_w *w, uint64_t v);
void kv_cbor_put_bool(kv_cbor_w *w, bool v);
void kv_cbor_put_array(kv_cbor_w *w, size_t count); /* then count items */
void kv_cbor_put_map(kv_cbor_w *w, size_t pairs);   /* then 2 * pairs items */
void kv_cbor_put_bytes(kv_cbor_w *w, const void *p, size_t n);
void kv_cbor_put_text(kv_cbor_w *w, const char *s, size_t n);

/* ---- reader ---- */

typedef enum kv_cbor_type {
    KV_CBOR_UINT,
    KV_CBOR_NEGINT, /* value is -1 - u */
    KV_CBOR_BYTES,
    KV_CBOR_TEXT,
    KV_CBOR_ARRAY, /* u = element count */
    KV_CBOR_MAP,   /* u = pair count */
    KV_CBOR_BOOL,  /* u = 0 or 1 */
    KV_CBOR_NULL,
} kv_cbor_type;

typedef struct kv_cbor_item {
    kv_cbor_type type;
    uint64_t u;
    const uint8_t *p; /* BYTES, TEXT: into the input */
    size_t len;
} kv_cbor_item;

typedef struct kv_cbor_r {
    const uint8_t *data;
    size_t len, off;
} kv_cbor_r;

void kv_cbor_reader_init(kv_cbor_r *r, const void *data, size_t len);

/*
 * Read the next item header (and the bytes of a string). KV_OK, or KV_ECORRUPT for
 * truncated input, malformed CBOR or a refused kind of item. An array or map count is
 * refused when it cannot fit in the bytes that are left (each element takes at least one
 * byte), so a count can be used to bound a loop or an allocation only after the caller's
 * own limit check.
 */
int kv_cbor_next(kv_cbor_r *r, kv_cbor_item *it);

/* Typed reads: KV_ECORRUPT unless the next item has the type and is within the bound. */
int kv_cbor_get_uint(kv_cbor_r *r, uint64_t max, uint64_t *out);
int kv_cbor_get_bool(kv_cbor_r *r, bool *out);
int kv_cbor_get_array(kv_cbor_r *r, uint64_t max, size_t *count);
int kv_cbor_get_map(kv_cbor_r *r, uint64_t max, size_t *pairs);
int kv_cbor_get_bytes(kv_cbor_r *r, size_t min, size_t max, const uint8_t **p, size_t *n);
int kv_cbor_get_text(kv_cbor_r *r, size_t max, const char **p, size_t *n);

/* Skip one whole item (nested up to 8 levels: deeper is KV_ECORRUPT). For unknown map
 * keys, so newer peers can add fields. */
int kv_cbor_skip(kv_cbor_r *r);

/* Bytes not read yet. */
static inline size_t kv_cbor_left(const kv_cbor_r *r)
{
    return r->len - r->off;
}

#endif
