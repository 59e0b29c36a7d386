/*
 * msg.c — replica messages to and from CBOR (see msg.h for the format). Pure; any thread.
 *
 * Design notes. The writer appends each message as it comes, so the number of messages
 * is known only at kv_repl_batch_end: the message array's header is reserved as the
 * fixed-width form 0x9a + uint32 (big-endian) and patched at the end. CBOR allows any
 * width for a count, so the decoder takes whatever definite form arrives.
 *
 * The decoder never recurses on input and never sizes anything by a count it has not
 * checked against both a limit from msg.h and the bytes that are left. Trailing items a
 * newer peer appends (to the batch, a message or a LIST_ACK item) are skipped, but only
 * if they nest no deeper than the deepest field we know (a LIST_ACK's item list: an
 * array of arrays), so a hostile nest costs nothing but its bytes.
 *
 * The anti-entropy messages carry their lists of u64 (ranges, tree nodes, sums, have
 * digests: up to millions of them) as byte strings of packed big-endian values rather than
 * CBOR arrays: decoding one is a single length check and a pointer into the input, with no
 * per-element reads or allocation; only TREE's node indexes are walked, to bound them.
 */
#include "repl/msg.h"

#include "common/grow.h"
#include "kvstore/error.h"
#include "net/cbor.h"

#include <stdlib.h>
#include <string.h>

/* Fields of each message type, type and req_id included (indexed by kv_repl_type). */
static const uint8_t repl_fields[] = {
    [KV_REPL_WRITE] = 9,       [KV_REPL_WRITE_ACK] = 5, [KV_REPL_READ] = 3,  [KV_REPL_READ_ACK] = 8,
    [KV_REPL_LIST] = 7,        [KV_REPL_LIST_ACK] = 5,  [KV_REPL_TREE] = 5,  [KV_REPL_TREE_ACK] = 4,
    [KV_REPL_PULL] = 5,        [KV_REPL_PULL_DATA] = 7, [KV_REPL_PURGE] = 5, [KV_REPL_STREAM] = 3,
    [KV_REPL_STREAM_DONE] = 3,
};
#define REPL_BATCH_FIELDS 4
#define REPL_ITEM_FIELDS  5
/* Longest array we accept for a batch, a message or an item (extra items skipped). */
#define REPL_MAX_FIELDS 32
/* How deep a skipped trailing item may nest: an array of arrays, like a LIST_ACK's items. */
#define REPL_SKIP_DEPTH 2
/* The fewest bytes one message ([type, req_id]) and one LIST_ACK item
 * ([key(1 byte), hash, ts, node, flags]) can take: a count larger than the bytes left allow
 * is refused before anything is allocated for it. */
#define REPL_MSG_MIN_BYTES  3
#define REPL_ITEM_MIN_BYTES 7

/* The message-array header: 0x9a and a big-endian uint32, patched by kv_repl_batch_end. */
#define REPL_COUNT_HDR_LEN 5

/* PULL_DATA.raw_len at most: a chunk's raw size (KV_CHUNK_RAW_MAX in chunk.h, which this
 * codec does not depend on). */
#define REPL_RAW_MAX (64u << 20)
/* Bytes of one packed (lo, hi) range pair and of one packed u64. */
#define REPL_RANGE_BYTES 16u
#define REPL_U64_BYTES   8u

static bool repl_type_ok(uint64_t t)
{
    return t >= KV_REPL_WRITE && t <= KV_REPL_STREAM_DONE;
}

/* ---------- sizes ---------- */

/* Bytes of a CBOR head carrying v (an unsigned integer, or a length or count). */
static size_t repl_head_len(uint64_t v)
{
    if (v < 24)
        return 1;
    if (v <= UINT8_MAX)
        return 2;
    if (v <= UINT16_MAX)
        return 3;
    if (v <= UINT32_MAX)
        return 5;
    return 9;
}

static size_t repl_str_len(size_t n)
{
    return repl_head_len(n) + n;
}

size_t kv_repl_msg_wire_bound(const kv_repl_msg *m)
{
    /* Exactly what kv_repl_batch_add appends for m (the encoder below mirrors it field for
     * field; the unit test checks the two agree). For a message the encoder refuses, the
     * figure means nothing, which is harmless: nothing is appended. */
    uint64_t t = (uint64_t)m->type;
    size_t n = 1 + repl_head_len(t) + repl_head_len(m->req_id);
    switch (m->type) {
    case KV_REPL_WRITE:
        n += repl_str_len(m->klen) + repl_head_len(m->ver.ts) + repl_head_len(m->ver.node) +
             repl_head_len(m->flags) + repl_head_len(m->expiry_ms) + repl_str_len(m->vlen) +
             repl_str_len(m->has_hint_for ? SWIM_ID_LEN : 0);
        break;
    case KV_REPL_WRITE_ACK:
        n += repl_head_len((uint64_t)m->status) + repl_head_len(m->ver.ts) +
             repl_head_len(m->ver.node);
        break;
    case KV_REPL_READ:
        n += repl_str_len(m->klen);
        break;
    case KV_REPL_PURGE:
        n += repl_str_len(m->klen) + repl_head_len(m->ver.ts) + repl_head_len(m->ver.node);
        break;
    case KV_REPL_READ_ACK:
        n += repl_head_len((uint64_t)m->status) + repl_head_len(m->ver.ts) +
             repl_head_len(m->ver.node) + repl_head_len(m->flags) + repl_head_len(m->expiry_ms) +
             repl_str_len(m->vlen);
        break;
    case KV_REPL_LIST:
        n += repl_str_len(m->klen) + repl_head_len(m->limit) + 1 +
             (m->has_cursor ? repl_head_len(m->cursor_hash) + repl_str_len(m->cursor_klen) : 1 + 1);
        break;
    case KV_REPL_LIST_ACK:
        n += repl_head_len((uint64_t)m->status) + 1 + repl_head_len(m->n_items);
        for (uint32_t i = 0; m->items && i < m->n_items; i++) {
            const kv_repl_item *it = &m->items[i];
            n += 1 + repl_str_len(it->klen) + repl_head_len(it->hash) + repl_head_len(it->ver.ts) +
                 repl_head_len(it->ver.node) + repl_head_len(it->flags);
        }
        break;
    case KV_REPL_TREE:
        n += repl_head_len(m->level) + repl_str_len(m->n_ranges * REPL_RANGE_BYTES) +
             repl_str_len(m->n_u64s * REPL_U64_BYTES);
        break;
    case KV_REPL_TREE_ACK:
        n += repl_head_len((uint64_t)m->status) + repl_str_len(m->n_u64s * REPL_U64_BYTES);
        break;
    case KV_REPL_PULL:
        n += repl_head_len(m->seq) + repl_str_len(m->n_ranges * REPL_RANGE_BYTES) +
             repl_str_len(m->n_u64s * REPL_U64_BYTES);
        break;
    case KV_REPL_STREAM:
        n += repl_str_len(m->n_ranges * REPL_RANGE_BYTES);
        break;
    case KV_REPL_STREAM_DONE:
        n += repl_head_len((uint64_t)m->status);
        break;
    case KV_REPL_PULL_DATA:
        n += repl_head_len((uint64_t)m->status) + repl_head_len(m->seq) + 1 +
             repl_head_len(m->raw_len) + repl_str_len(m->vlen);
        break;
    }
    return n;
}

/* ---------- encoding ---------- */

static void repl_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void kv_repl_batch_begin(kv_repl_batch_w *b, kv_buf *out, const swim_member_id *from_id,
                         const char *from_addr)
{
    b->out = out;
    b->count = 0;
    b->err = KV_OK;
    kv_buf_reset(out);
    size_t alen = from_addr ? strnlen(from_addr, SWIM_ADDR_MAX + 1) : 0;
    if (!from_addr || !from_id || alen > SWIM_ADDR_MAX) {
        b->err = KV_EINVAL;
        b->count_off = 0;
        return;
    }
    kv_cbor_w w = {.out = out, .err = KV_OK};
    kv_cbor_put_array(&w, REPL_BATCH_FIELDS);
    kv_cbor_put_uint(&w, KV_REPL_PROTO);
    kv_cbor_put_bytes(&w, from_id->b, SWIM_ID_LEN);
    kv_cbor_put_text(&w, from_addr, alen);
    b->count_off = out->len;
    uint8_t hdr[REPL_COUNT_HDR_LEN] = {0x9a, 0, 0, 0, 0};
    if (!w.err && kv_buf_append(out, hdr, sizeof hdr))
        w.err = KV_ENOMEM;
    b->err = w.err;
}

static bool repl_key_ok(const uint8_t *p, size_t n, size_t min)
{
    return n >= min && n <= KV_REPL_KEY_MAX && (p || n == 0);
}

/* Every TREE node index fits its level: index < 2^level (level already checked). */
static bool repl_nodes_ok(const uint8_t *nodes, size_t n, uint32_t level)
{
    uint64_t end = 1ull << level;
    for (size_t i = 0; i < n; i++)
        if (kv_repl_u64_at(nodes, i) >= end)
            return false;
    return true;
}

/* The packed ranges and u64s of TREE, TREE_ACK and PULL: within their counts, with bytes. */
static bool repl_packed_ok(const kv_repl_msg *m)
{
    return m->n_ranges <= KV_REPL_RANGES_MAX && (m->ranges || m->n_ranges == 0) &&
           m->n_u64s <= KV_REPL_U64S_MAX && (m->u64s || m->n_u64s == 0);
}

/* What kv_repl_batch_add refuses with KV_EINVAL: anything the decoder would refuse. */
static bool repl_msg_valid(const kv_repl_msg *m)
{
    if (!repl_type_ok((uint64_t)m->type))
        return false;
    bool ack = m->type == KV_REPL_WRITE_ACK || m->type == KV_REPL_READ_ACK ||
               m->type == KV_REPL_LIST_ACK || m->type == KV_REPL_TREE_ACK ||
               m->type == KV_REPL_PULL_DATA;
    if (ack && (unsigned)m->status > KV_REPL_NOSPACE)
        return false;
    switch (m->type) {
    case KV_REPL_WRITE:
    case KV_REPL_READ_ACK:
        if (m->type == KV_REPL_WRITE && !repl_key_ok(m->key, m->klen, 1))
            return false;
        if (m->vlen > KV_REPL_VALUE_MAX || (m->vlen && !m->value))
            return false;
        /* A tombstone carries no value: a record that is both is a caller's bug. */
        if ((m->flags & KV_REPL_F_TOMBSTONE) && m->vlen)
            return false;
        return true;
    case KV_REPL_READ:
    case KV_REPL_PURGE:
        return repl_key_ok(m->key, m->klen, 1);
    case KV_REPL_LIST:
        return repl_key_ok(m->key, m->klen, 0) && m->limit <= KV_REPL_LIST_MAX &&
               (!m->has_cursor || repl_key_ok(m->cursor_key, m->cursor_klen, 0));
    case KV_REPL_LIST_ACK:
        if (m->n_items > KV_REPL_LIST_MAX || (m->n_items && !m->items))
            return false;
        for (uint32_t i = 0; i < m->n_items; i++)
            if (!repl_key_ok(m->items[i].key, m->items[i].klen, 1))
                return false;
        return true;
    case KV_REPL_WRITE_ACK:
        return true;
    case KV_REPL_TREE:
        /* All nodes of a level (nodes empty) only up to KV_REPL_ALL_LEVEL_MAX: the answer
         * has 2^level sums. */
        return repl_packed_ok(m) && m->level <= KV_REPL_LEVEL_MAX &&
               (m->n_u64s || m->level <= KV_REPL_ALL_LEVEL_MAX) &&
               repl_nodes_ok(m->u64s, m->n_u64s, m->level);
    case KV_REPL_TREE_ACK:
        return m->n_u64s <= KV_REPL_U64S_MAX && (m->u64s || m->n_u64s == 0);
    case KV_REPL_PULL:
    case KV_REPL_STREAM:
        return repl_packed_ok(m);
    case KV_REPL_STREAM_DONE:
        return true;
    case KV_REPL_PULL_DATA:
        return m->vlen <= KV_REPL_VALUE_MAX && (m->value || m->vlen == 0) &&
               m->raw_len <= REPL_RAW_MAX;
    }
    return false;
}

int kv_repl_batch_add(kv_repl_batch_w *b, const kv_repl_msg *m)
{
    if (b->err)
        return b->err;
    if (!repl_msg_valid(m))
        return KV_EINVAL;
    if (b->count >= KV_REPL_BATCH_MAX)
        return KV_ETOOBIG;
    kv_buf *out = b->out;
    size_t start = out->len;
    /* One reservation up front (plus the writer's 9-byte head slack): the appends below
     * then never reallocate. */
    if (kv_buf_reserve(out, kv_repl_msg_wire_bound(m) + 9))
        return KV_ENOMEM;
    kv_cbor_w w = {.out = out, .err = KV_OK};
    kv_cbor_put_array(&w, repl_fields[m->type]);
    kv_cbor_put_uint(&w, (uint64_t)m->type);
    kv_cbor_put_uint(&w, m->req_id);
    switch (m->type) {
    case KV_REPL_WRITE:
        kv_cbor_put_bytes(&w, m->key, m->klen);
        kv_cbor_put_uint(&w, m->ver.ts);
        kv_cbor_put_uint(&w, m->ver.node);
        kv_cbor_put_uint(&w, m->flags);
        kv_cbor_put_uint(&w, m->expiry_ms);
        kv_cbor_put_bytes(&w, m->value, m->vlen);
        kv_cbor_put_bytes(&w, m->hint_for.b, m->has_hint_for ? SWIM_ID_LEN : 0);
        break;
    case KV_REPL_WRITE_ACK:
        kv_cbor_put_uint(&w, (uint64_t)m->status);
        kv_cbor_put_uint(&w, m->ver.ts);
        kv_cbor_put_uint(&w, m->ver.node);
        break;
    case KV_REPL_READ:
        kv_cbor_put_bytes(&w, m->key, m->klen);
        break;
    case KV_REPL_PURGE:
        kv_cbor_put_bytes(&w, m->key, m->klen);
        kv_cbor_put_uint(&w, m->ver.ts);
        kv_cbor_put_uint(&w, m->ver.node);
        break;
    case KV_REPL_READ_ACK:
        kv_cbor_put_uint(&w, (uint64_t)m->status);
        kv_cbor_put_uint(&w, m->ver.ts);
        kv_cbor_put_uint(&w, m->ver.node);
        kv_cbor_put_uint(&w, m->flags);
        kv_cbor_put_uint(&w, m->expiry_ms);
        kv_cbor_put_bytes(&w, m->value, m->vlen);
        break;
    case KV_REPL_LIST:
        kv_cbor_put_bytes(&w, m->key, m->klen);
        kv_cbor_put_uint(&w, m->limit);
        kv_cbor_put_bool(&w, m->has_cursor);
        /* Without a cursor its fields are written as zero so the encoding is canonical. */
        kv_cbor_put_uint(&w, m->has_cursor ? m->cursor_hash : 0);
        kv_cbor_put_bytes(&w, m->cursor_key, m->has_cursor ? m->cursor_klen : 0);
        break;
    case KV_REPL_LIST_ACK:
        kv_cbor_put_uint(&w, (uint64_t)m->status);
        kv_cbor_put_bool(&w, m->truncated);
        kv_cbor_put_array(&w, m->n_items);
        for (uint32_t i = 0; i < m->n_items && !w.err; i++) {
            const kv_repl_item *it = &m->items[i];
            kv_cbor_put_array(&w, REPL_ITEM_FIELDS);
            kv_cbor_put_bytes(&w, it->key, it->klen);
            kv_cbor_put_uint(&w, it->hash);
            kv_cbor_put_uint(&w, it->ver.ts);
            kv_cbor_put_uint(&w, it->ver.node);
            kv_cbor_put_uint(&w, it->flags);
        }
        break;
    case KV_REPL_TREE:
        kv_cbor_put_uint(&w, m->level);
        kv_cbor_put_bytes(&w, m->ranges, m->n_ranges * REPL_RANGE_BYTES);
        kv_cbor_put_bytes(&w, m->u64s, m->n_u64s * REPL_U64_BYTES);
        break;
    case KV_REPL_TREE_ACK:
        kv_cbor_put_uint(&w, (uint64_t)m->status);
        kv_cbor_put_bytes(&w, m->u64s, m->n_u64s * REPL_U64_BYTES);
        break;
    case KV_REPL_PULL:
        kv_cbor_put_uint(&w, m->seq);
        kv_cbor_put_bytes(&w, m->ranges, m->n_ranges * REPL_RANGE_BYTES);
        kv_cbor_put_bytes(&w, m->u64s, m->n_u64s * REPL_U64_BYTES);
        break;
    case KV_REPL_STREAM:
        kv_cbor_put_bytes(&w, m->ranges, m->n_ranges * REPL_RANGE_BYTES);
        break;
    case KV_REPL_STREAM_DONE:
        kv_cbor_put_uint(&w, (uint64_t)m->status);
        break;
    case KV_REPL_PULL_DATA:
        kv_cbor_put_uint(&w, (uint64_t)m->status);
        kv_cbor_put_uint(&w, m->seq);
        kv_cbor_put_bool(&w, m->last);
        kv_cbor_put_uint(&w, m->raw_len);
        kv_cbor_put_bytes(&w, m->value, m->vlen);
        break;
    }
    if (w.err) {
        out->len = start; /* the batch stays as it was */
        out->data[start] = '\0';
        return w.err;
    }
    b->count++;
    return KV_OK;
}

int kv_repl_batch_end(kv_repl_batch_w *b)
{
    if (b->err)
        return b->err;
    repl_put_be32((uint8_t *)b->out->data + b->count_off + 1, b->count);
    return KV_OK;
}

/* ---------- decoding ---------- */

/* Decoder state: the reader, the reason of the first failure, the items gathered. */
typedef struct repl_dec {
    kv_cbor_r r;
    const char *why;
    kv_repl_item *items;
    size_t n_items, cap_items;
} repl_dec;

static int repl_fail(repl_dec *d, const char *why)
{
    if (!d->why)
        d->why = why;
    return KV_ECORRUPT;
}

/* An array of at least min and at most REPL_MAX_FIELDS items; *extra = count - min. */
static int repl_struct(repl_dec *d, size_t min, size_t *extra)
{
    kv_cbor_item it;
    if (kv_cbor_next(&d->r, &it) != KV_OK || it.type != KV_CBOR_ARRAY || it.u < min)
        return repl_fail(d, KV_REPL_MALFORMED);
    if (it.u > REPL_MAX_FIELDS)
        return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
    *extra = (size_t)it.u - min;
    return KV_OK;
}

/* Skip `extra` items, each nesting at most REPL_SKIP_DEPTH arrays or maps deep. Iterative:
 * pending[k] = items still to read at depth k. */
static int repl_skip(repl_dec *d, size_t extra)
{
    uint64_t pending[REPL_SKIP_DEPTH + 1];
    int depth = 0;
    pending[0] = extra;
    while (depth >= 0) {
        if (pending[depth] == 0) {
            depth--;
            continue;
        }
        pending[depth]--;
        kv_cbor_item it;
        if (kv_cbor_next(&d->r, &it) != KV_OK)
            return repl_fail(d, KV_REPL_MALFORMED);
        if (it.type == KV_CBOR_ARRAY || it.type == KV_CBOR_MAP) {
            if (depth == REPL_SKIP_DEPTH)
                return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
            /* kv_cbor_next bounded the count by the bytes left, so 2 * u cannot wrap. */
            pending[++depth] = it.type == KV_CBOR_MAP ? 2 * it.u : it.u;
        }
    }
    return KV_OK;
}

static int repl_get_uint(repl_dec *d, uint64_t max, uint64_t *v)
{
    kv_cbor_item it;
    if (kv_cbor_next(&d->r, &it) != KV_OK || it.type != KV_CBOR_UINT)
        return repl_fail(d, KV_REPL_MALFORMED);
    if (it.u > max)
        return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
    *v = it.u;
    return KV_OK;
}

static int repl_get_u32(repl_dec *d, uint32_t *v)
{
    uint64_t u;
    if (repl_get_uint(d, UINT32_MAX, &u))
        return KV_ECORRUPT;
    *v = (uint32_t)u;
    return KV_OK;
}

static int repl_get_bool(repl_dec *d, bool *v)
{
    kv_cbor_item it;
    if (kv_cbor_next(&d->r, &it) != KV_OK || it.type != KV_CBOR_BOOL)
        return repl_fail(d, KV_REPL_MALFORMED);
    *v = it.u != 0;
    return KV_OK;
}

static int repl_get_bytes(repl_dec *d, size_t min, size_t max, const uint8_t **p, size_t *n)
{
    kv_cbor_item it;
    if (kv_cbor_next(&d->r, &it) != KV_OK || it.type != KV_CBOR_BYTES)
        return repl_fail(d, KV_REPL_MALFORMED);
    if (it.len < min || it.len > max)
        return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
    *p = it.p;
    *n = it.len;
    return KV_OK;
}

static int repl_get_status(repl_dec *d, kv_repl_status *s)
{
    uint64_t v;
    if (repl_get_uint(d, KV_REPL_NOSPACE, &v))
        return KV_ECORRUPT;
    *s = (kv_repl_status)v;
    return KV_OK;
}

static int repl_get_version(repl_dec *d, kv_version *v)
{
    if (repl_get_uint(d, UINT64_MAX, &v->ts) || repl_get_u32(d, &v->node))
        return KV_ECORRUPT;
    return KV_OK;
}

/* value (and flags, read before it): a tombstone must carry no value. */
static int repl_get_value(repl_dec *d, kv_repl_msg *m)
{
    if (repl_get_bytes(d, 0, KV_REPL_VALUE_MAX, &m->value, &m->vlen))
        return KV_ECORRUPT;
    if ((m->flags & KV_REPL_F_TOMBSTONE) && m->vlen)
        return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
    return KV_OK;
}

static int repl_get_items(repl_dec *d, kv_repl_msg *m)
{
    kv_cbor_item it;
    if (kv_cbor_next(&d->r, &it) != KV_OK || it.type != KV_CBOR_ARRAY)
        return repl_fail(d, KV_REPL_MALFORMED);
    if (it.u > KV_REPL_LIST_MAX)
        return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
    if (it.u > kv_cbor_left(&d->r) / REPL_ITEM_MIN_BYTES)
        return repl_fail(d, KV_REPL_MALFORMED); /* more items than the bytes could hold */
    size_t n = (size_t)it.u;
    if (n) {
        kv_repl_item *p = kv_grow(d->items, &d->cap_items, d->n_items + n, sizeof(*p), 64);
        if (!p)
            return KV_ENOMEM;
        d->items = p;
    }
    for (size_t i = 0; i < n; i++) {
        kv_repl_item *x = &d->items[d->n_items + i];
        size_t extra;
        memset(x, 0, sizeof(*x));
        if (repl_struct(d, REPL_ITEM_FIELDS, &extra) ||
            repl_get_bytes(d, 1, KV_REPL_KEY_MAX, &x->key, &x->klen) ||
            repl_get_uint(d, UINT64_MAX, &x->hash) || repl_get_version(d, &x->ver) ||
            repl_get_u32(d, &x->flags) || repl_skip(d, extra))
            return KV_ECORRUPT;
    }
    /* items points into d->items, which may still move: kv_repl_batch_decode sets it. */
    d->n_items += n;
    m->n_items = (uint32_t)n;
    return KV_OK;
}

/* A byte string of packed units of `unit` bytes, at most max of them: *p, *count. A length
 * that is not a whole number of units is out of bounds, like any other bad length. */
static int repl_get_packed(repl_dec *d, size_t unit, size_t max, const uint8_t **p, size_t *count)
{
    size_t n;
    if (repl_get_bytes(d, 0, max * unit, p, &n))
        return KV_ECORRUPT;
    if (n % unit)
        return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
    *count = n / unit;
    if (!n)
        *p = NULL;
    return KV_OK;
}

static int repl_get_ranges(repl_dec *d, kv_repl_msg *m)
{
    return repl_get_packed(d, REPL_RANGE_BYTES, KV_REPL_RANGES_MAX, &m->ranges, &m->n_ranges);
}

static int repl_get_u64s(repl_dec *d, kv_repl_msg *m)
{
    return repl_get_packed(d, REPL_U64_BYTES, KV_REPL_U64S_MAX, &m->u64s, &m->n_u64s);
}

static int repl_get_tree(repl_dec *d, kv_repl_msg *m)
{
    uint64_t level;
    if (repl_get_uint(d, KV_REPL_LEVEL_MAX, &level) || repl_get_ranges(d, m) || repl_get_u64s(d, m))
        return KV_ECORRUPT;
    m->level = (uint32_t)level;
    /* No node list asks for all 2^level sums: only for small levels. */
    if (!m->n_u64s && m->level > KV_REPL_ALL_LEVEL_MAX)
        return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
    if (!repl_nodes_ok(m->u64s, m->n_u64s, m->level))
        return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
    return KV_OK;
}

static int repl_get_pull_data(repl_dec *d, kv_repl_msg *m)
{
    uint64_t raw_len;
    if (repl_get_status(d, &m->status) || repl_get_u32(d, &m->seq) || repl_get_bool(d, &m->last) ||
        repl_get_uint(d, REPL_RAW_MAX, &raw_len) ||
        repl_get_bytes(d, 0, KV_REPL_VALUE_MAX, &m->value, &m->vlen))
        return KV_ECORRUPT;
    m->raw_len = (uint32_t)raw_len;
    return KV_OK;
}

static int repl_get_msg(repl_dec *d, kv_repl_msg *m)
{
    size_t extra;
    uint64_t type;
    if (repl_struct(d, 2, &extra) || repl_get_uint(d, UINT64_MAX, &type) ||
        repl_get_uint(d, UINT64_MAX, &m->req_id))
        return KV_ECORRUPT;
    if (!repl_type_ok(type))
        return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
    m->type = (kv_repl_type)type;
    size_t want = repl_fields[type] - 2u;
    if (extra < want)
        return repl_fail(d, KV_REPL_MALFORMED);
    extra -= want;

    const uint8_t *hint;
    size_t hlen;
    switch (m->type) {
    case KV_REPL_WRITE:
        if (repl_get_bytes(d, 1, KV_REPL_KEY_MAX, &m->key, &m->klen) ||
            repl_get_version(d, &m->ver) || repl_get_u32(d, &m->flags) ||
            repl_get_uint(d, UINT64_MAX, &m->expiry_ms) || repl_get_value(d, m) ||
            repl_get_bytes(d, 0, SWIM_ID_LEN, &hint, &hlen))
            return KV_ECORRUPT;
        if (hlen != 0 && hlen != SWIM_ID_LEN)
            return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
        m->has_hint_for = hlen == SWIM_ID_LEN;
        if (m->has_hint_for)
            memcpy(m->hint_for.b, hint, SWIM_ID_LEN);
        break;
    case KV_REPL_WRITE_ACK:
        if (repl_get_status(d, &m->status) || repl_get_version(d, &m->ver))
            return KV_ECORRUPT;
        break;
    case KV_REPL_READ:
        if (repl_get_bytes(d, 1, KV_REPL_KEY_MAX, &m->key, &m->klen))
            return KV_ECORRUPT;
        break;
    case KV_REPL_PURGE:
        if (repl_get_bytes(d, 1, KV_REPL_KEY_MAX, &m->key, &m->klen) ||
            repl_get_version(d, &m->ver))
            return KV_ECORRUPT;
        break;
    case KV_REPL_READ_ACK:
        if (repl_get_status(d, &m->status) || repl_get_version(d, &m->ver) ||
            repl_get_u32(d, &m->flags) || repl_get_uint(d, UINT64_MAX, &m->expiry_ms) ||
            repl_get_value(d, m))
            return KV_ECORRUPT;
        break;
    case KV_REPL_LIST: {
        uint64_t limit;
        if (repl_get_bytes(d, 0, KV_REPL_KEY_MAX, &m->key, &m->klen) ||
            repl_get_uint(d, KV_REPL_LIST_MAX, &limit) || repl_get_bool(d, &m->has_cursor) ||
            repl_get_uint(d, UINT64_MAX, &m->cursor_hash) ||
            repl_get_bytes(d, 0, KV_REPL_KEY_MAX, &m->cursor_key, &m->cursor_klen))
            return KV_ECORRUPT;
        m->limit = (uint32_t)limit;
        if (!m->has_cursor) {
            m->cursor_hash = 0;
            m->cursor_key = NULL;
            m->cursor_klen = 0;
        }
        break;
    }
    case KV_REPL_LIST_ACK: {
        int rc;
        if (repl_get_status(d, &m->status) || repl_get_bool(d, &m->truncated))
            return KV_ECORRUPT;
        if ((rc = repl_get_items(d, m)) != KV_OK)
            return rc;
        break;
    }
    case KV_REPL_TREE:
        if (repl_get_tree(d, m))
            return KV_ECORRUPT;
        break;
    case KV_REPL_TREE_ACK:
        if (repl_get_status(d, &m->status) || repl_get_u64s(d, m))
            return KV_ECORRUPT;
        break;
    case KV_REPL_PULL:
        if (repl_get_u32(d, &m->seq) || repl_get_ranges(d, m) || repl_get_u64s(d, m))
            return KV_ECORRUPT;
        break;
    case KV_REPL_PULL_DATA:
        if (repl_get_pull_data(d, m))
            return KV_ECORRUPT;
        break;
    case KV_REPL_STREAM:
        if (repl_get_ranges(d, m))
            return KV_ECORRUPT;
        break;
    case KV_REPL_STREAM_DONE:
        if (repl_get_status(d, &m->status))
            return KV_ECORRUPT;
        break;
    }
    return repl_skip(d, extra);
}

static int repl_decode_body(repl_dec *d, kv_repl_batch *out)
{
    size_t extra;
    uint64_t proto;
    if (repl_struct(d, REPL_BATCH_FIELDS, &extra) || repl_get_uint(d, UINT64_MAX, &proto))
        return KV_ECORRUPT;
    if (proto != KV_REPL_PROTO)
        return repl_fail(d, KV_REPL_MALFORMED);

    const uint8_t *id;
    size_t idlen;
    if (repl_get_bytes(d, SWIM_ID_LEN, SWIM_ID_LEN, &id, &idlen))
        return KV_ECORRUPT;
    memcpy(out->from_id.b, id, SWIM_ID_LEN);

    /* The address is printable ASCII without spaces, as SWIM's wire codec insists. */
    kv_cbor_item it;
    if (kv_cbor_next(&d->r, &it) != KV_OK || it.type != KV_CBOR_TEXT)
        return repl_fail(d, KV_REPL_MALFORMED);
    if (it.len > SWIM_ADDR_MAX)
        return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
    for (size_t i = 0; i < it.len; i++)
        if (it.p[i] <= 0x20 || it.p[i] >= 0x7f)
            return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
    memcpy(out->from_addr, it.p, it.len);
    out->from_addr[it.len] = '\0';

    if (kv_cbor_next(&d->r, &it) != KV_OK || it.type != KV_CBOR_ARRAY)
        return repl_fail(d, KV_REPL_MALFORMED);
    if (it.u > KV_REPL_BATCH_MAX)
        return repl_fail(d, KV_REPL_OUT_OF_BOUNDS);
    if (it.u > kv_cbor_left(&d->r) / REPL_MSG_MIN_BYTES)
        return repl_fail(d, KV_REPL_MALFORMED); /* more messages than the bytes could hold */
    size_t n = (size_t)it.u;
    if (n) {
        out->msgs = calloc(n, sizeof(*out->msgs));
        if (!out->msgs)
            return KV_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        int rc = repl_get_msg(d, &out->msgs[i]);
        if (rc != KV_OK)
            return rc;
    }
    out->n_msgs = (uint32_t)n;

    if (repl_skip(d, extra))
        return KV_ECORRUPT;
    if (kv_cbor_left(&d->r) != 0)
        return repl_fail(d, KV_REPL_MALFORMED); /* one batch per nng message, nothing after */

    /* The items array has stopped moving: point each LIST_ACK at its run, in order. */
    out->items = d->items;
    d->items = NULL;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        kv_repl_msg *m = &out->msgs[i];
        if (m->type == KV_REPL_LIST_ACK) {
            m->items = m->n_items ? out->items + off : NULL;
            off += m->n_items;
        }
    }
    return KV_OK;
}

int kv_repl_batch_decode(const uint8_t *data, size_t len, kv_repl_batch *out, const char **reason)
{
    memset(out, 0, sizeof(*out));
    repl_dec d;
    memset(&d, 0, sizeof(d));
    kv_cbor_reader_init(&d.r, data, len);
    int rc = repl_decode_body(&d, out);
    if (rc != KV_OK) {
        free(d.items);
        kv_repl_batch_free(out);
        if (rc == KV_ENOMEM)
            return KV_ENOMEM;
        if (reason)
            *reason = d.why ? d.why : KV_REPL_MALFORMED;
        return KV_ECORRUPT;
    }
    return KV_OK;
}

void kv_repl_batch_free(kv_repl_batch *b)
{
    free(b->msgs);
    free(b->items);
    b->msgs = NULL;
    b->items = NULL;
    b->n_msgs = 0;
}
