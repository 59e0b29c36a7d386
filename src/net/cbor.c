/*
 * cbor.c — CBOR writer and defensive pull reader (see cbor.h). Pure; any thread.
 *
 * The reader drives libcbor's streaming decoder one item at a time: each call decodes
 * exactly one header (plus a definite string's bytes) and the callbacks below only note
 * what it was. Anything we never send — indefinite lengths, tags, floats, undefined,
 * break codes — is marked refused and becomes KV_ECORRUPT.
 */
#include "net/cbor.h"

#include "kvstore/error.h"

#include <cbor.h>
#include <string.h>

/* ---------- writer ---------- */

/* Append one encoded header: libcbor writes at most 9 bytes for any of them. */
#define CW_HEAD(w, call)                                                                           \
    do {                                                                                           \
        if ((w)->err)                                                                              \
            return;                                                                                \
        if (kv_buf_reserve((w)->out, 9)) {                                                         \
            (w)->err = KV_ENOMEM;                                                                  \
            return;                                                                                \
        }                                                                                          \
        unsigned char *dst_ = (unsigned char *)(w)->out->data + (w)->out->len;                     \
        size_t n_ = (call);                                                                        \
        if (n_ == 0) {                                                                             \
            (w)->err = KV_ENOMEM;                                                                  \
            return;                                                                                \
        }                                                                                          \
        (w)->out->len += n_;                                                                       \
        (w)->out->data[(w)->out->len] = '\0';                                                      \
    } while (0)

void kv_cbor_put_uint(kv_cbor_w *w, uint64_t v)
{
    CW_HEAD(w, cbor_encode_uint(v, dst_, 9));
}

void kv_cbor_put_bool(kv_cbor_w *w, bool v)
{
    CW_HEAD(w, cbor_encode_bool(v, dst_, 9));
}

void kv_cbor_put_array(kv_cbor_w *w, size_t count)
{
    CW_HEAD(w, cbor_encode_array_start(count, dst_, 9));
}

void kv_cbor_put_map(kv_cbor_w *w, size_t pairs)
{
    CW_HEAD(w, cbor_encode_map_start(pairs, dst_, 9));
}

void kv_cbor_put_bytes(kv_cbor_w *w, const void *p, size_t n)
{
    CW_HEAD(w, cbor_encode_bytestring_start(n, dst_, 9));
    if (n && kv_buf_append(w->out, p, n))
        w->err = KV_ENOMEM;
}

void kv_cbor_put_text(kv_cbor_w *w, const char *s, size_t n)
{
    CW_HEAD(w, cbor_encode_string_start(n, dst_, 9));
    if (n && kv_buf_append(w->out, s, n))
        w->err = KV_ENOMEM;
}

/* ---------- reader ---------- */

typedef struct cr_ctx {
    kv_cbor_item *it;
    bool refused;
} cr_ctx;

static void cr_set(void *c, kv_cbor_type t, uint64_t u)
{
    cr_ctx *x = c;
    x->it->type = t;
    x->it->u = u;
}
static void cr_u8(void *c, uint8_t v)
{
    cr_set(c, KV_CBOR_UINT, v);
}
static void cr_u16(void *c, uint16_t v)
{
    cr_set(c, KV_CBOR_UINT, v);
}
static void cr_u32(void *c, uint32_t v)
{
    cr_set(c, KV_CBOR_UINT, v);
}
static void cr_u64(void *c, uint64_t v)
{
    cr_set(c, KV_CBOR_UINT, v);
}
static void cr_n8(void *c, uint8_t v)
{
    cr_set(c, KV_CBOR_NEGINT, v);
}
static void cr_n16(void *c, uint16_t v)
{
    cr_set(c, KV_CBOR_NEGINT, v);
}
static void cr_n32(void *c, uint32_t v)
{
    cr_set(c, KV_CBOR_NEGINT, v);
}
static void cr_n64(void *c, uint64_t v)
{
    cr_set(c, KV_CBOR_NEGINT, v);
}
static void cr_bytes(void *c, cbor_data p, size_t n)
{
    cr_ctx *x = c;
    cr_set(c, KV_CBOR_BYTES, n);
    x->it->p = p;
    x->it->len = n;
}
static void cr_text(void *c, cbor_data p, size_t n)
{
    cr_ctx *x = c;
    cr_set(c, KV_CBOR_TEXT, n);
    x->it->p = p;
    x->it->len = n;
}
static void cr_array(void *c, size_t n)
{
    cr_set(c, KV_CBOR_ARRAY, n);
}
static void cr_map(void *c, size_t n)
{
    cr_set(c, KV_CBOR_MAP, n);
}
static void cr_bool(void *c, bool v)
{
    cr_set(c, KV_CBOR_BOOL, v ? 1 : 0);
}
static void cr_null(void *c)
{
    cr_set(c, KV_CBOR_NULL, 0);
}
static void cr_refuse(void *c)
{
    ((cr_ctx *)c)->refused = true;
}
static void cr_refuse_u64(void *c, uint64_t v)
{
    (void)v;
    cr_refuse(c);
}
static void cr_refuse_f(void *c, float v)
{
    (void)v;
    cr_refuse(c);
}
static void cr_refuse_d(void *c, double v)
{
    (void)v;
    cr_refuse(c);
}

/* Field names follow libcbor 0.8's struct, whose comments on the string pairs are swapped:
 * byte_string / string are the definite forms (with the bytes), *_start the indefinite. */
static const struct cbor_callbacks cr_callbacks = {
    .uint8 = cr_u8,
    .uint16 = cr_u16,
    .uint32 = cr_u32,
    .uint64 = cr_u64,
    .negint8 = cr_n8,
    .negint16 = cr_n16,
    .negint32 = cr_n32,
    .negint64 = cr_n64,
    .byte_string = cr_bytes,
    .byte_string_start = cr_refuse,
    .string = cr_text,
    .string_start = cr_refuse,
    .array_start = cr_array,
    .indef_array_start = cr_refuse,
    .map_start = cr_map,
    .indef_map_start = cr_refuse,
    .tag = cr_refuse_u64,
    .float2 = cr_refuse_f,
    .float4 = cr_refuse_f,
    .float8 = cr_refuse_d,
    .undefined = cr_refuse,
    .null = cr_null,
    .boolean = cr_bool,
    .indef_break = cr_refuse,
};

void kv_cbor_reader_init(kv_cbor_r *r, const void *data, size_t len)
{
    r->data = data;
    r->len = len;
    r->off = 0;
}

int kv_cbor_next(kv_cbor_r *r, kv_cbor_item *it)
{
    if (r->off >= r->len)
        return KV_ECORRUPT;
    kv_cbor_item tmp;
    memset(&tmp, 0, sizeof(tmp));
    tmp.type = (kv_cbor_type)-1;
    cr_ctx x = {.it = &tmp, .refused = false};
    struct cbor_decoder_result res =
        cbor_stream_decode(r->data + r->off, r->len - r->off, &cr_callbacks, &x);
    if (res.status != CBOR_DECODER_FINISHED || x.refused || res.read == 0 ||
        tmp.type == (kv_cbor_type)-1)
        return KV_ECORRUPT;
    r->off += res.read;
    /* Every element needs at least one byte (a map pair two): a count that cannot fit is a
     * lie, and refusing it here keeps callers from sizing anything by it. */
    if (tmp.type == KV_CBOR_ARRAY && tmp.u > r->len - r->off)
        return KV_ECORRUPT;
    if (tmp.type == KV_CBOR_MAP && tmp.u > (r->len - r->off) / 2)
        return KV_ECORRUPT;
    *it = tmp;
    return KV_OK;
}

static int cr_expect(kv_cbor_r *r, kv_cbor_type t, kv_cbor_item *it)
{
    int rc = kv_cbor_next(r, it);
    if (rc != KV_OK)
        return rc;
    return it->type == t ? KV_OK : KV_ECORRUPT;
}

int kv_cbor_get_uint(kv_cbor_r *r, uint64_t max, uint64_t *out)
{
    kv_cbor_item it;
    int rc = cr_expect(r, KV_CBOR_UINT, &it);
    if (rc != KV_OK || it.u > max)
        return KV_ECORRUPT;
    *out = it.u;
    return KV_OK;
}

int kv_cbor_get_bool(kv_cbor_r *r, bool *out)
{
    kv_cbor_item it;
    if (cr_expect(r, KV_CBOR_BOOL, &it) != KV_OK)
        return KV_ECORRUPT;
    *out = it.u != 0;
    return KV_OK;
}

int kv_cbor_get_array(kv_cbor_r *r, uint64_t max, size_t *count)
{
    kv_cbor_item it;
    if (cr_expect(r, KV_CBOR_ARRAY, &it) != KV_OK || it.u > max)
        return KV_ECORRUPT;
    *count = (size_t)it.u;
    return KV_OK;
}

int kv_cbor_get_map(kv_cbor_r *r, uint64_t max, size_t *pairs)
{
    kv_cbor_item it;
    if (cr_expect(r, KV_CBOR_MAP, &it) != KV_OK || it.u > max)
        return KV_ECORRUPT;
    *pairs = (size_t)it.u;
    return KV_OK;
}

int kv_cbor_get_bytes(kv_cbor_r *r, size_t min, size_t max, const uint8_t **p, size_t *n)
{
    kv_cbor_item it;
    if (cr_expect(r, KV_CBOR_BYTES, &it) != KV_OK || it.len < min || it.len > max)
        return KV_ECORRUPT;
    *p = it.p;
    *n = it.len;
    return KV_OK;
}

int kv_cbor_get_text(kv_cbor_r *r, size_t max, const char **p, size_t *n)
{
    kv_cbor_item it;
    if (cr_expect(r, KV_CBOR_TEXT, &it) != KV_OK || it.len > max)
        return KV_ECORRUPT;
    *p = (const char *)it.p;
    *n = it.len;
    return KV_OK;
}

#define CR_MAX_DEPTH 8

int kv_cbor_skip(kv_cbor_r *r)
{
    /* pending[d] = items still to read at depth d; iterative, so input cannot recurse us. */
    uint64_t pending[CR_MAX_DEPTH + 1];
    int depth = 0;
    pending[0] = 1;
    while (depth >= 0) {
        if (pending[depth] == 0) {
            depth--;
            continue;
        }
        pending[depth]--;
        kv_cbor_item it;
        if (kv_cbor_next(r, &it) != KV_OK)
            return KV_ECORRUPT;
        if (it.type == KV_CBOR_ARRAY || it.type == KV_CBOR_MAP) {
            if (depth == CR_MAX_DEPTH)
                return KV_ECORRUPT;
            pending[++depth] = it.type == KV_CBOR_MAP ? 2 * it.u : it.u;
        }
    }
    return KV_OK;
}
