/*
 * wire.c — SWIM messages to and from CBOR (see wire.h for the format). Pure; any thread.
 */
#include "net/wire.h"

#include "kvstore/error.h"
#include "net/cbor.h"

#include <stdlib.h>
#include <string.h>

#define WIRE_MSG_FIELDS    11
#define WIRE_NODE_FIELDS   6 /* required; a 7th (data port) and 8th (HTTP port) are optional */
#define WIRE_UPDATE_FIELDS 2
#define WIRE_DIGEST_FIELDS 2
/* Longest array we accept for a struct (extra trailing fields are skipped). */
#define WIRE_MAX_FIELDS 32

/* ---------- encoding ---------- */

static void wire_put_id(kv_cbor_w *w, const swim_member_id *id)
{
    kv_cbor_put_bytes(w, id->b, SWIM_ID_LEN);
}

static void wire_put_str(kv_cbor_w *w, const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n > max) {
        w->err = KV_EINVAL;
        return;
    }
    kv_cbor_put_text(w, s, n);
}

static void wire_put_node(kv_cbor_w *w, const swim_node *n)
{
    if ((unsigned)n->state > SWIM_LEFT || (unsigned)n->ring > SWIM_RING_REMOVED) {
        w->err = KV_EINVAL;
        return;
    }
    kv_cbor_put_array(w, WIRE_NODE_FIELDS + 2);
    wire_put_id(w, &n->id);
    wire_put_str(w, n->name, SWIM_NAME_MAX);
    wire_put_str(w, n->addr, SWIM_ADDR_MAX);
    kv_cbor_put_uint(w, n->incarnation);
    kv_cbor_put_uint(w, (uint64_t)n->state);
    kv_cbor_put_uint(w, (uint64_t)n->ring);
    kv_cbor_put_uint(w, n->data_port);
    kv_cbor_put_uint(w, n->http_port);
}

int kv_wire_encode(kv_buf *out, const char *from_addr, const swim_msg *m)
{
    if (m->n_updates > SWIM_MAX_UPDATES || m->n_members > SWIM_MAX_MEMBERS ||
        (m->n_updates && !m->updates) || (m->n_members && !m->members))
        return KV_EINVAL;
    size_t start = out->len;
    kv_cbor_w w = {.out = out, .err = KV_OK};
    kv_cbor_put_array(&w, WIRE_MSG_FIELDS);
    kv_cbor_put_uint(&w, SWIM_PROTOCOL_VERSION);
    kv_cbor_put_uint(&w, (uint64_t)m->type);
    wire_put_id(&w, &m->from);
    wire_put_str(&w, from_addr, SWIM_ADDR_MAX);
    kv_cbor_put_uint(&w, m->seq);
    wire_put_id(&w, &m->target);
    wire_put_str(&w, m->target_addr, SWIM_ADDR_MAX);
    kv_cbor_put_uint(&w, m->flags);
    kv_cbor_put_array(&w, WIRE_DIGEST_FIELDS);
    kv_cbor_put_uint(&w, m->digest.count);
    kv_cbor_put_uint(&w, m->digest.hash);
    kv_cbor_put_array(&w, m->n_updates);
    for (uint32_t i = 0; i < m->n_updates && !w.err; i++) {
        kv_cbor_put_array(&w, WIRE_UPDATE_FIELDS);
        wire_put_node(&w, &m->updates[i].node);
        wire_put_id(&w, &m->updates[i].from);
    }
    kv_cbor_put_array(&w, m->n_members);
    for (uint32_t i = 0; i < m->n_members && !w.err; i++)
        wire_put_node(&w, &m->members[i]);
    if (w.err) {
        out->len = start; /* leave nothing half-written behind */
        if (out->data)
            out->data[start] = '\0';
        return w.err;
    }
    return KV_OK;
}

/* ---------- decoding ---------- */

/* Decoder state: the reader and the reason of the first failure. */
typedef struct wire_dec {
    kv_cbor_r r;
    const char *why;
} wire_dec;

static int wire_fail(wire_dec *d, const char *why)
{
    if (!d->why)
        d->why = why;
    return KV_ECORRUPT;
}

/* A struct: an array of at least min fields; *extra gets how many to skip at its end. */
static int wire_struct(wire_dec *d, size_t min, size_t *extra)
{
    size_t n;
    if (kv_cbor_get_array(&d->r, WIRE_MAX_FIELDS, &n) != KV_OK || n < min)
        return wire_fail(d, KV_WIRE_MALFORMED);
    *extra = n - min;
    return KV_OK;
}

static int wire_skip(wire_dec *d, size_t extra)
{
    for (size_t i = 0; i < extra; i++)
        if (kv_cbor_skip(&d->r) != KV_OK)
            return wire_fail(d, KV_WIRE_MALFORMED);
    return KV_OK;
}

static int wire_get_id(wire_dec *d, swim_member_id *id)
{
    const uint8_t *p;
    size_t n;
    if (kv_cbor_get_bytes(&d->r, SWIM_ID_LEN, SWIM_ID_LEN, &p, &n) != KV_OK)
        return wire_fail(d, KV_WIRE_MALFORMED);
    memcpy(id->b, p, SWIM_ID_LEN);
    return KV_OK;
}

/*
 * A text string of at most max bytes into out (NUL-terminated). name = true allows any
 * byte but NUL and control characters (names are UTF-8 for people); false allows only
 * printable ASCII without spaces (addresses).
 */
static int wire_get_str(wire_dec *d, char *out, size_t max, bool name)
{
    kv_cbor_item it;
    if (kv_cbor_next(&d->r, &it) != KV_OK || it.type != KV_CBOR_TEXT)
        return wire_fail(d, KV_WIRE_MALFORMED);
    if (it.len > max)
        return wire_fail(d, KV_WIRE_OUT_OF_BOUNDS);
    for (size_t i = 0; i < it.len; i++) {
        uint8_t c = it.p[i];
        bool ok = name ? (c >= 0x20 && c != 0x7f) : (c > 0x20 && c < 0x7f);
        if (!ok)
            return wire_fail(d, KV_WIRE_OUT_OF_BOUNDS);
    }
    memcpy(out, it.p, it.len);
    out[it.len] = '\0';
    return KV_OK;
}

static int wire_get_uint(wire_dec *d, uint64_t max, uint64_t *v)
{
    kv_cbor_item it;
    if (kv_cbor_next(&d->r, &it) != KV_OK || it.type != KV_CBOR_UINT)
        return wire_fail(d, KV_WIRE_MALFORMED);
    if (it.u > max)
        return wire_fail(d, KV_WIRE_OUT_OF_BOUNDS);
    *v = it.u;
    return KV_OK;
}

static int wire_get_node(wire_dec *d, swim_node *n)
{
    size_t extra;
    uint64_t inc, state, ring, data_port = 0, http_port = 0;
    memset(n, 0, sizeof(*n));
    if (wire_struct(d, WIRE_NODE_FIELDS, &extra) || wire_get_id(d, &n->id) ||
        wire_get_str(d, n->name, SWIM_NAME_MAX, true) ||
        wire_get_str(d, n->addr, SWIM_ADDR_MAX, false) || wire_get_uint(d, UINT64_MAX, &inc) ||
        wire_get_uint(d, SWIM_LEFT, &state) || wire_get_uint(d, SWIM_RING_REMOVED, &ring) ||
        (extra > 0 && wire_get_uint(d, UINT16_MAX, &data_port)) ||
        (extra > 1 && wire_get_uint(d, UINT16_MAX, &http_port)) ||
        wire_skip(d, extra > 2 ? extra - 2 : 0))
        return KV_ECORRUPT;
    n->data_port = (uint16_t)data_port;
    n->http_port = (uint16_t)http_port;
    n->incarnation = inc;
    n->state = (swim_state)state;
    n->ring = (swim_ring_status)ring;
    return KV_OK;
}

/* A list header: an array of at most max items. */
static int wire_list(wire_dec *d, uint64_t max, size_t *count)
{
    kv_cbor_item it;
    if (kv_cbor_next(&d->r, &it) != KV_OK || it.type != KV_CBOR_ARRAY)
        return wire_fail(d, KV_WIRE_MALFORMED);
    if (it.u > max)
        return wire_fail(d, KV_WIRE_OUT_OF_BOUNDS);
    *count = (size_t)it.u;
    return KV_OK;
}

static int wire_decode_body(wire_dec *d, kv_wire_msg *out)
{
    swim_msg *m = &out->msg;
    size_t extra, dextra, n;
    uint64_t v;

    if (wire_struct(d, 2, &extra))
        return KV_ECORRUPT;
    /* Version and type first, so a newer peer's message is refused as such, whatever
     * shape the rest has. */
    if (wire_get_uint(d, UINT64_MAX, &v))
        return KV_ECORRUPT;
    if (v != SWIM_PROTOCOL_VERSION)
        return wire_fail(d, KV_WIRE_BAD_VERSION);
    if (wire_get_uint(d, UINT64_MAX, &v))
        return KV_ECORRUPT;
    if (v < SWIM_MSG_PING || v > SWIM_MSG_PUSH_PULL_REPLY)
        return wire_fail(d, KV_WIRE_UNKNOWN_TYPE);
    m->type = (swim_msg_type)v;
    if (extra < WIRE_MSG_FIELDS - 2)
        return wire_fail(d, KV_WIRE_MALFORMED);
    extra -= WIRE_MSG_FIELDS - 2;

    if (wire_get_id(d, &m->from) || wire_get_str(d, out->from_addr, SWIM_ADDR_MAX, false))
        return KV_ECORRUPT;
    if (wire_get_uint(d, UINT32_MAX, &v))
        return KV_ECORRUPT;
    m->seq = (uint32_t)v;
    if (wire_get_id(d, &m->target) || wire_get_str(d, m->target_addr, SWIM_ADDR_MAX, false))
        return KV_ECORRUPT;
    if (wire_get_uint(d, UINT32_MAX, &v))
        return KV_ECORRUPT;
    m->flags = (uint32_t)v;

    if (wire_struct(d, WIRE_DIGEST_FIELDS, &dextra) || wire_get_uint(d, UINT32_MAX, &v))
        return KV_ECORRUPT;
    m->digest.count = (uint32_t)v;
    if (wire_get_uint(d, UINT64_MAX, &v) || wire_skip(d, dextra))
        return KV_ECORRUPT;
    m->digest.hash = v;

    if (wire_list(d, SWIM_MAX_UPDATES, &n))
        return KV_ECORRUPT;
    for (size_t i = 0; i < n; i++) {
        size_t uextra;
        if (wire_struct(d, WIRE_UPDATE_FIELDS, &uextra) ||
            wire_get_node(d, &out->updates[i].node) || wire_get_id(d, &out->updates[i].from) ||
            wire_skip(d, uextra))
            return KV_ECORRUPT;
    }
    m->n_updates = (uint32_t)n;
    m->updates = n ? out->updates : NULL;

    if (wire_list(d, SWIM_MAX_MEMBERS, &n))
        return KV_ECORRUPT;
    if (n) {
        /* n is bounded by SWIM_MAX_MEMBERS and by the bytes left (kv_cbor_next). */
        out->members = calloc(n, sizeof(*out->members));
        if (!out->members)
            return KV_ENOMEM;
        for (size_t i = 0; i < n; i++)
            if (wire_get_node(d, &out->members[i]))
                return KV_ECORRUPT;
    }
    m->n_members = (uint32_t)n;
    m->members = out->members;

    if (wire_skip(d, extra))
        return KV_ECORRUPT;
    if (kv_cbor_left(&d->r) != 0)
        return wire_fail(d, KV_WIRE_MALFORMED); /* one message per frame, nothing after it */
    return KV_OK;
}

int kv_wire_decode(const uint8_t *data, size_t len, kv_wire_msg *out, const char **reason)
{
    memset(out, 0, sizeof(*out));
    wire_dec d = {.why = NULL};
    kv_cbor_reader_init(&d.r, data, len);
    int rc = wire_decode_body(&d, out);
    if (rc != KV_OK) {
        kv_wire_msg_free(out);
        if (reason)
            *reason = d.why ? d.why : KV_WIRE_MALFORMED;
        return rc == KV_ENOMEM ? KV_ENOMEM : KV_ECORRUPT;
    }
    return KV_OK;
}

void kv_wire_msg_free(kv_wire_msg *m)
{
    free(m->members);
    m->members = NULL;
    m->msg.members = NULL;
    m->msg.n_members = 0;
}
