/*
 * test_repl_msg.c — the CBOR codec of replica messages (src/repl/msg.h): every message
 * type round-trips field for field with edge values; a batch holds up to KV_REPL_BATCH_MAX
 * mixed messages and refuses one more; the encoder refuses fields over their bounds and
 * leaves the batch intact; the decoder refuses truncated, malformed, oversized and
 * trailing input with a reason and never crashes; kv_repl_msg_wire_bound is the exact
 * encoded size; kv_repl_is_batch tells a batch from a SWIM message. The last test prints
 * the cost of encoding and decoding one typical WRITE (a figure, not an assertion).
 */
#include "kvstore/error.h"
#include "net/cbor.h"
#include "net/wire.h"
#include "repl/msg.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ADDR "127.0.0.1:7001"

/* Checks inside bulk loops record only failures: ctest runs criterion with --full-stats,
 * which reports every passing assertion too, and millions of them take minutes. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            cr_assert_fail("%s (line %d)", #cond, __LINE__);                                       \
    } while (0)
#define CHECK_EQ(a, b) CHECK((a) == (b))

static swim_member_id mkid(uint8_t b)
{
    swim_member_id id;
    memset(id.b, b, SWIM_ID_LEN);
    return id;
}

static uint8_t g_key[KV_REPL_KEY_MAX];
static uint8_t g_val[256];

static void init_bytes(void)
{
    for (size_t i = 0; i < sizeof g_key; i++)
        g_key[i] = (uint8_t)(i * 7 + 1);
    for (size_t i = 0; i < sizeof g_val; i++)
        g_val[i] = (uint8_t)(255 - i);
}

TestSuite(repl_msg, .init = init_bytes);

static kv_repl_msg mk_write(size_t klen, size_t vlen, uint32_t flags, bool hint)
{
    kv_repl_msg m;
    memset(&m, 0, sizeof m);
    m.type = KV_REPL_WRITE;
    m.req_id = 42;
    m.key = g_key;
    m.klen = klen;
    m.ver = (kv_version){.ts = 123456789, .node = 7};
    m.flags = flags;
    m.expiry_ms = 1700000000000ull;
    m.value = vlen ? g_val : NULL;
    m.vlen = vlen;
    m.has_hint_for = hint;
    if (hint)
        m.hint_for = mkid(0xab);
    return m;
}

/* Add m and check the buffer grew by exactly kv_repl_msg_wire_bound(m). */
static void add_ok(kv_repl_batch_w *w, const kv_repl_msg *m)
{
    size_t before = w->out->len;
    int rc = kv_repl_batch_add(w, m);
    if (rc != KV_OK)
        cr_assert_fail("add of type %d returned %d", (int)m->type, rc);
    if (w->out->len - before != kv_repl_msg_wire_bound(m))
        cr_assert_fail("type %d: wrote %zu bytes, bound says %zu", (int)m->type,
                       w->out->len - before, kv_repl_msg_wire_bound(m));
}

static void encode(kv_buf *out, const kv_repl_msg *msgs, size_t n)
{
    kv_repl_batch_w w;
    swim_member_id from = mkid(0x11);
    kv_repl_batch_begin(&w, out, &from, ADDR);
    size_t bound = KV_REPL_BATCH_WIRE_FIXED;
    for (size_t i = 0; i < n; i++) {
        add_ok(&w, &msgs[i]);
        bound += kv_repl_msg_wire_bound(&msgs[i]);
    }
    CHECK_EQ(kv_repl_batch_end(&w), KV_OK);
    cr_assert_leq(out->len, bound);
}

static void decode_ok(const kv_buf *b, kv_repl_batch *out)
{
    const char *why = NULL;
    int rc = kv_repl_batch_decode((const uint8_t *)b->data, b->len, out, &why);
    cr_assert_eq(rc, KV_OK, "decode failed: %d %s", rc, why ? why : "?");
}

static const char *decode_fail(const void *p, size_t n)
{
    kv_repl_batch out;
    const char *why = NULL;
    int rc = kv_repl_batch_decode(p, n, &out, &why);
    if (rc != KV_ECORRUPT)
        cr_assert_fail("decode of %zu bad bytes returned %d", n, rc);
    CHECK(why && (strcmp(why, KV_REPL_MALFORMED) == 0 || strcmp(why, KV_REPL_OUT_OF_BOUNDS) == 0));
    CHECK(out.msgs == NULL && out.items == NULL);
    return why;
}

static void assert_bytes_eq(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    if (alen != blen)
        cr_assert_fail("length %zu != %zu", alen, blen);
    if (alen)
        CHECK(memcmp(a, b, alen) == 0);
}

/* n packed u64s equal value by value (read back with kv_repl_u64_at, as receivers do). */
static void assert_u64s_eq(const uint8_t *a, const uint8_t *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(kv_repl_u64_at(a, i), kv_repl_u64_at(e, i));
}

/* The fields of TREE, TREE_ACK, PULL and PULL_DATA. */
static void assert_sync_eq(const kv_repl_msg *a, const kv_repl_msg *e)
{
    switch (e->type) {
    case KV_REPL_TREE:
        CHECK_EQ(a->level, e->level);
        CHECK_EQ(a->n_ranges, e->n_ranges);
        assert_u64s_eq(a->ranges, e->ranges, 2 * e->n_ranges);
        CHECK_EQ(a->n_u64s, e->n_u64s);
        assert_u64s_eq(a->u64s, e->u64s, e->n_u64s);
        break;
    case KV_REPL_TREE_ACK:
        CHECK_EQ(a->status, e->status);
        CHECK_EQ(a->n_ranges, 0);
        CHECK_EQ(a->n_u64s, e->n_u64s);
        assert_u64s_eq(a->u64s, e->u64s, e->n_u64s);
        break;
    case KV_REPL_PULL:
        CHECK_EQ(a->seq, e->seq);
        CHECK_EQ(a->n_ranges, e->n_ranges);
        assert_u64s_eq(a->ranges, e->ranges, 2 * e->n_ranges);
        CHECK_EQ(a->n_u64s, e->n_u64s);
        assert_u64s_eq(a->u64s, e->u64s, e->n_u64s);
        break;
    case KV_REPL_PULL_DATA:
        CHECK_EQ(a->status, e->status);
        CHECK_EQ(a->seq, e->seq);
        CHECK_EQ(a->last, e->last);
        CHECK_EQ(a->raw_len, e->raw_len);
        assert_bytes_eq(a->value, a->vlen, e->value, e->vlen);
        break;
    default:
        cr_assert_fail("not a sync message: type %d", (int)e->type);
    }
}

static void assert_msg_eq(const kv_repl_msg *a, const kv_repl_msg *e)
{
    CHECK_EQ(a->type, e->type);
    CHECK_EQ(a->req_id, e->req_id);
    switch (e->type) {
    case KV_REPL_WRITE:
        assert_bytes_eq(a->key, a->klen, e->key, e->klen);
        CHECK_EQ(a->ver.ts, e->ver.ts);
        CHECK_EQ(a->ver.node, e->ver.node);
        CHECK_EQ(a->flags, e->flags);
        CHECK_EQ(a->expiry_ms, e->expiry_ms);
        assert_bytes_eq(a->value, a->vlen, e->value, e->vlen);
        CHECK_EQ(a->has_hint_for, e->has_hint_for);
        if (e->has_hint_for)
            CHECK_EQ(memcmp(a->hint_for.b, e->hint_for.b, SWIM_ID_LEN), 0);
        break;
    case KV_REPL_WRITE_ACK:
        CHECK_EQ(a->status, e->status);
        CHECK_EQ(a->ver.ts, e->ver.ts);
        CHECK_EQ(a->ver.node, e->ver.node);
        break;
    case KV_REPL_READ:
        assert_bytes_eq(a->key, a->klen, e->key, e->klen);
        break;
    case KV_REPL_READ_ACK:
        CHECK_EQ(a->status, e->status);
        CHECK_EQ(a->ver.ts, e->ver.ts);
        CHECK_EQ(a->ver.node, e->ver.node);
        CHECK_EQ(a->flags, e->flags);
        CHECK_EQ(a->expiry_ms, e->expiry_ms);
        assert_bytes_eq(a->value, a->vlen, e->value, e->vlen);
        break;
    case KV_REPL_PURGE:
        assert_bytes_eq(a->key, a->klen, e->key, e->klen);
        CHECK_EQ(a->ver.ts, e->ver.ts);
        CHECK_EQ(a->ver.node, e->ver.node);
        break;
    case KV_REPL_STREAM:
        CHECK_EQ(a->n_ranges, e->n_ranges);
        assert_u64s_eq(a->ranges, e->ranges, 2 * e->n_ranges);
        break;
    case KV_REPL_STREAM_DONE:
        CHECK_EQ(a->status, e->status);
        break;
    case KV_REPL_LIST:
        assert_bytes_eq(a->key, a->klen, e->key, e->klen);
        CHECK_EQ(a->limit, e->limit);
        CHECK_EQ(a->has_cursor, e->has_cursor);
        if (e->has_cursor) {
            CHECK_EQ(a->cursor_hash, e->cursor_hash);
            assert_bytes_eq(a->cursor_key, a->cursor_klen, e->cursor_key, e->cursor_klen);
        } else {
            CHECK_EQ(a->cursor_hash, 0);
            CHECK_EQ(a->cursor_klen, 0);
        }
        break;
    case KV_REPL_LIST_ACK:
        CHECK_EQ(a->status, e->status);
        CHECK_EQ(a->truncated, e->truncated);
        CHECK_EQ(a->n_items, e->n_items);
        for (uint32_t i = 0; i < e->n_items; i++) {
            const kv_repl_item *x = &a->items[i], *y = &e->items[i];
            assert_bytes_eq(x->key, x->klen, y->key, y->klen);
            CHECK_EQ(x->hash, y->hash);
            CHECK_EQ(x->ver.ts, y->ver.ts);
            CHECK_EQ(x->ver.node, y->ver.node);
            CHECK_EQ(x->flags, y->flags);
        }
        break;
    case KV_REPL_TREE:
    case KV_REPL_TREE_ACK:
    case KV_REPL_PULL:
    case KV_REPL_PULL_DATA:
        assert_sync_eq(a, e);
        break;
    }
}

/* A few messages of every type with edge values; items is filled for the LIST_ACKs. */
static size_t edge_messages(kv_repl_msg *m, kv_repl_item *items, size_t n_items_room)
{
    size_t n = 0;
    /* WRITE: 1-byte key with empty value; max key; tombstone; hint_for; max integers. */
    m[n++] = mk_write(1, 0, 0, false);
    m[n++] = mk_write(KV_REPL_KEY_MAX, sizeof g_val, 0, false);
    m[n++] = mk_write(5, 0, KV_REPL_F_TOMBSTONE, true);
    m[n] = mk_write(16, 100, KV_REPL_F_EXPIRED, true);
    m[n].req_id = UINT64_MAX;
    m[n].ver = (kv_version){.ts = UINT64_MAX, .node = UINT32_MAX};
    m[n].expiry_ms = UINT64_MAX;
    n++;
    m[n] = mk_write(3, 0, UINT32_MAX, false); /* every flag bit, tombstone included */
    m[n].req_id = KV_REPL_REQ_HINT | 5;
    n++;

    for (int s = KV_REPL_OK; s <= KV_REPL_NOSPACE; s++) {
        memset(&m[n], 0, sizeof m[n]);
        m[n].type = KV_REPL_WRITE_ACK;
        m[n].req_id = (uint64_t)s * 1000;
        m[n].status = (kv_repl_status)s;
        m[n].ver = (kv_version){.ts = s == KV_REPL_NOSPACE ? UINT64_MAX : (uint64_t)s,
                                .node = s == KV_REPL_NOSPACE ? UINT32_MAX : 0};
        n++;
    }

    memset(&m[n], 0, sizeof m[n]);
    m[n].type = KV_REPL_READ;
    m[n].req_id = 0;
    m[n].key = g_key;
    m[n].klen = KV_REPL_KEY_MAX;
    n++;
    memset(&m[n], 0, sizeof m[n]);
    m[n].type = KV_REPL_READ;
    m[n].req_id = 24;
    m[n].key = g_key + 9;
    m[n].klen = 1;
    n++;

    memset(&m[n], 0, sizeof m[n]);
    m[n].type = KV_REPL_READ_ACK;
    m[n].req_id = 77;
    m[n].status = KV_REPL_OK;
    m[n].ver = (kv_version){.ts = 99, .node = 3};
    m[n].flags = 0;
    m[n].expiry_ms = 0;
    m[n].value = g_val;
    m[n].vlen = sizeof g_val;
    n++;
    memset(&m[n], 0, sizeof m[n]);
    m[n].type = KV_REPL_READ_ACK;
    m[n].req_id = UINT64_MAX;
    m[n].status = KV_REPL_NOTFOUND;
    n++;
    memset(&m[n], 0, sizeof m[n]);
    m[n].type = KV_REPL_READ_ACK;
    m[n].status = KV_REPL_OK;
    m[n].flags = KV_REPL_F_TOMBSTONE;
    m[n].ver = (kv_version){.ts = UINT64_MAX, .node = UINT32_MAX};
    m[n].expiry_ms = UINT64_MAX;
    n++;

    memset(&m[n], 0, sizeof m[n]); /* LIST: empty prefix, no cursor */
    m[n].type = KV_REPL_LIST;
    m[n].req_id = KV_REPL_REQ_LIST | 1;
    m[n].limit = KV_REPL_LIST_MAX;
    n++;
    memset(&m[n], 0, sizeof m[n]); /* LIST: max prefix, a cursor */
    m[n].type = KV_REPL_LIST;
    m[n].req_id = KV_REPL_REQ_LIST | 2;
    m[n].key = g_key;
    m[n].klen = KV_REPL_KEY_MAX;
    m[n].limit = 0;
    m[n].has_cursor = true;
    m[n].cursor_hash = UINT64_MAX;
    m[n].cursor_key = g_key + 3;
    m[n].cursor_klen = KV_REPL_KEY_MAX - 3;
    n++;
    memset(&m[n], 0, sizeof m[n]); /* LIST: cursor fields set but has_cursor false */
    m[n].type = KV_REPL_LIST;
    m[n].key = g_key;
    m[n].klen = 2;
    m[n].limit = 10;
    m[n].cursor_hash = 555;
    m[n].cursor_key = g_key;
    m[n].cursor_klen = 4;
    n++;

    /* LIST_ACK: none, then two with items (the second checks the decoder's fix-up). */
    memset(&m[n], 0, sizeof m[n]);
    m[n].type = KV_REPL_LIST_ACK;
    m[n].req_id = KV_REPL_REQ_LIST | 3;
    m[n].status = KV_REPL_OK;
    n++;
    cr_assert_geq(n_items_room, 300);
    for (size_t i = 0; i < 300; i++) {
        /* Short keys (the truncation test decodes every prefix), and one of the longest. */
        items[i].key = i == 7 ? g_key : g_key + (i % 100);
        items[i].klen = i == 7 ? KV_REPL_KEY_MAX : 1 + (i * 13) % 40;
        items[i].hash = i == 0 ? UINT64_MAX : i * 0x9e3779b97f4a7c15ull;
        items[i].ver = (kv_version){.ts = i == 1 ? UINT64_MAX : i, .node = (uint32_t)i * 3};
        items[i].flags = i % 3 == 0 ? KV_REPL_F_TOMBSTONE : (i % 3 == 1 ? KV_REPL_F_EXPIRED : 0);
    }
    memset(&m[n], 0, sizeof m[n]);
    m[n].type = KV_REPL_LIST_ACK;
    m[n].status = KV_REPL_OK;
    m[n].truncated = true;
    m[n].n_items = 200;
    m[n].items = items;
    n++;
    memset(&m[n], 0, sizeof m[n]);
    m[n].type = KV_REPL_LIST_ACK;
    m[n].status = KV_REPL_ERROR;
    m[n].n_items = 100;
    m[n].items = items + 200;
    n++;
    return n;
}

#define EDGE_ROOM 64

Test(repl_msg, every_type_round_trips_with_edge_values)
{
    kv_repl_msg msgs[EDGE_ROOM];
    kv_repl_item items[300];
    size_t n = edge_messages(msgs, items, 300);
    kv_buf b = KV_BUF_INIT;
    encode(&b, msgs, n);
    cr_assert(kv_repl_is_batch((const uint8_t *)b.data, b.len));

    kv_repl_batch d;
    decode_ok(&b, &d);
    swim_member_id from = mkid(0x11);
    cr_assert_eq(memcmp(d.from_id.b, from.b, SWIM_ID_LEN), 0);
    cr_assert_str_eq(d.from_addr, ADDR);
    cr_assert_eq(d.n_msgs, n);
    for (size_t i = 0; i < n; i++)
        assert_msg_eq(&d.msgs[i], &msgs[i]);
    /* Pointers point into the input, not copies. */
    const uint8_t *lo = (const uint8_t *)b.data, *hi = lo + b.len;
    cr_assert(d.msgs[1].key >= lo && d.msgs[1].key + d.msgs[1].klen <= hi);
    kv_repl_batch_free(&d);
    kv_repl_batch_free(&d); /* twice is harmless */
    kv_buf_free(&b);
}

Test(repl_msg, an_empty_batch_round_trips)
{
    kv_buf b = KV_BUF_INIT;
    encode(&b, NULL, 0);
    cr_assert_leq(b.len, KV_REPL_BATCH_WIRE_FIXED);
    kv_repl_batch d;
    decode_ok(&b, &d);
    cr_assert_eq(d.n_msgs, 0);
    cr_assert_null(d.msgs);
    kv_repl_batch_free(&d);

    /* The longest address still fits in the fixed overhead. */
    char addr[SWIM_ADDR_MAX + 1];
    memset(addr, 'a', SWIM_ADDR_MAX);
    addr[SWIM_ADDR_MAX] = '\0';
    kv_repl_batch_w w;
    swim_member_id id = mkid(1);
    kv_repl_batch_begin(&w, &b, &id, addr);
    cr_assert_eq(kv_repl_batch_end(&w), KV_OK);
    cr_assert_eq(b.len, KV_REPL_BATCH_WIRE_FIXED);
    decode_ok(&b, &d);
    cr_assert_str_eq(d.from_addr, addr);
    kv_repl_batch_free(&d);
    kv_buf_free(&b);
}

Test(repl_msg, a_list_ack_of_list_max_items_round_trips)
{
    kv_repl_item *items = calloc(KV_REPL_LIST_MAX + 1, sizeof *items);
    cr_assert_not_null(items);
    for (size_t i = 0; i <= KV_REPL_LIST_MAX; i++) {
        items[i].key = g_key + (i % 512);
        items[i].klen = 1 + i % 64;
        items[i].hash = i * 31;
        items[i].ver = (kv_version){.ts = i << 16, .node = (uint32_t)i};
    }
    kv_repl_msg m;
    memset(&m, 0, sizeof m);
    m.type = KV_REPL_LIST_ACK;
    m.n_items = KV_REPL_LIST_MAX;
    m.items = items;
    kv_buf b = KV_BUF_INIT;
    encode(&b, &m, 1);
    kv_repl_batch d;
    decode_ok(&b, &d);
    cr_assert_eq(d.n_msgs, 1);
    assert_msg_eq(&d.msgs[0], &m);
    kv_repl_batch_free(&d);

    /* One more is refused by the encoder. */
    kv_repl_batch_w w;
    swim_member_id id = mkid(1);
    kv_repl_batch_begin(&w, &b, &id, ADDR);
    m.n_items = KV_REPL_LIST_MAX + 1;
    cr_assert_eq(kv_repl_batch_add(&w, &m), KV_EINVAL);
    kv_buf_free(&b);
    free(items);
}

Test(repl_msg, a_batch_of_batch_max_mixed_messages_round_trips_and_one_more_is_refused)
{
    kv_repl_msg edge[EDGE_ROOM];
    kv_repl_item items[300];
    size_t ne = edge_messages(edge, items, 300);
    kv_repl_msg *msgs = calloc(KV_REPL_BATCH_MAX, sizeof *msgs);
    cr_assert_not_null(msgs);
    kv_buf b = KV_BUF_INIT;
    kv_repl_batch_w w;
    swim_member_id id = mkid(2);
    kv_repl_batch_begin(&w, &b, &id, ADDR);
    for (size_t i = 0; i < KV_REPL_BATCH_MAX; i++) {
        msgs[i] = edge[i % ne];
        msgs[i].req_id = i;
        add_ok(&w, &msgs[i]);
    }
    size_t len = b.len;
    cr_assert_eq(kv_repl_batch_add(&w, &edge[0]), KV_ETOOBIG);
    cr_assert_eq(b.len, len, "a refused add left bytes behind");
    cr_assert_eq(kv_repl_batch_end(&w), KV_OK);

    kv_repl_batch d;
    decode_ok(&b, &d);
    cr_assert_eq(d.n_msgs, KV_REPL_BATCH_MAX);
    for (size_t i = 0; i < KV_REPL_BATCH_MAX; i++)
        assert_msg_eq(&d.msgs[i], &msgs[i]);
    kv_repl_batch_free(&d);
    kv_buf_free(&b);
    free(msgs);
}

Test(repl_msg, add_refuses_fields_over_their_bounds_and_leaves_the_batch_intact)
{
    kv_repl_item bad_item = {.key = g_key, .klen = 0};
    kv_repl_item long_item = {.key = g_key, .klen = KV_REPL_KEY_MAX + 1};
    kv_repl_msg bad[20];
    size_t n = 0;
    bad[n] = mk_write(0, 0, 0, false); /* empty key */
    n++;
    bad[n] = mk_write(KV_REPL_KEY_MAX + 1, 0, 0, false);
    n++;
    bad[n] = mk_write(4, 0, 0, false);
    bad[n].vlen = (size_t)KV_REPL_VALUE_MAX + 1; /* refused before anything is read */
    n++;
    bad[n] = mk_write(4, 10, KV_REPL_F_TOMBSTONE, false); /* a tombstone with a value */
    n++;
    bad[n] = mk_write(4, 0, 0, false);
    bad[n].key = NULL; /* a length without bytes */
    n++;
    bad[n] = mk_write(4, 0, 0, false);
    bad[n].type = (kv_repl_type)0;
    n++;
    bad[n] = mk_write(4, 0, 0, false);
    bad[n].type = (kv_repl_type)14; /* one past KV_REPL_STREAM_DONE */
    n++;
    bad[n] = mk_write(4, 0, 0, false);
    bad[n].type = KV_REPL_READ;
    bad[n].klen = 0;
    n++;
    bad[n] = mk_write(4, 0, 0, false);
    bad[n].type = KV_REPL_WRITE_ACK;
    bad[n].status = (kv_repl_status)(KV_REPL_NOSPACE + 1);
    n++;
    bad[n] = mk_write(4, 0, 0, false);
    bad[n].type = KV_REPL_READ_ACK;
    bad[n].status = (kv_repl_status)99;
    n++;
    bad[n] = mk_write(4, 0, 0, false);
    bad[n].type = KV_REPL_LIST;
    bad[n].limit = KV_REPL_LIST_MAX + 1;
    n++;
    bad[n] = mk_write(KV_REPL_KEY_MAX + 1, 0, 0, false);
    bad[n].type = KV_REPL_LIST; /* prefix too long */
    n++;
    bad[n] = mk_write(4, 0, 0, false);
    bad[n].type = KV_REPL_LIST;
    bad[n].has_cursor = true;
    bad[n].cursor_key = g_key;
    bad[n].cursor_klen = KV_REPL_KEY_MAX + 1;
    n++;
    memset(&bad[n], 0, sizeof bad[n]);
    bad[n].type = KV_REPL_LIST_ACK;
    bad[n].n_items = 1;
    bad[n].items = &bad_item;
    n++;
    memset(&bad[n], 0, sizeof bad[n]);
    bad[n].type = KV_REPL_LIST_ACK;
    bad[n].n_items = 1;
    bad[n].items = &long_item;
    n++;
    memset(&bad[n], 0, sizeof bad[n]);
    bad[n].type = KV_REPL_LIST_ACK;
    bad[n].n_items = 3; /* items missing */
    n++;
    memset(&bad[n], 0, sizeof bad[n]);
    bad[n].type = KV_REPL_LIST_ACK;
    bad[n].status = (kv_repl_status)6;
    n++;

    kv_buf b = KV_BUF_INIT;
    kv_repl_batch_w w;
    swim_member_id id = mkid(3);
    kv_repl_batch_begin(&w, &b, &id, ADDR);
    kv_repl_msg good = mk_write(8, 8, 0, false);
    add_ok(&w, &good);
    size_t len = b.len;
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(kv_repl_batch_add(&w, &bad[i]), KV_EINVAL, "bad message %zu accepted", i);
        cr_assert_eq(b.len, len);
    }
    add_ok(&w, &good);
    cr_assert_eq(kv_repl_batch_end(&w), KV_OK);
    kv_repl_batch d;
    decode_ok(&b, &d);
    cr_assert_eq(d.n_msgs, 2);
    kv_repl_batch_free(&d);

    /* An address over SWIM_ADDR_MAX spoils the whole batch. */
    char addr[SWIM_ADDR_MAX + 2];
    memset(addr, 'a', sizeof addr - 1);
    addr[sizeof addr - 1] = '\0';
    kv_repl_batch_begin(&w, &b, &id, addr);
    cr_assert_eq(kv_repl_batch_add(&w, &good), KV_EINVAL);
    cr_assert_eq(kv_repl_batch_end(&w), KV_EINVAL);
    kv_buf_free(&b);
}

/* ---------- hand-made input for the decoder ---------- */

/* [PROTO, id, addr, [ (nmsgs announced) ... */
static void raw_head(kv_cbor_w *w, uint64_t proto, size_t nmsgs)
{
    swim_member_id id = mkid(5);
    kv_cbor_put_array(w, 4);
    kv_cbor_put_uint(w, proto);
    kv_cbor_put_bytes(w, id.b, SWIM_ID_LEN);
    kv_cbor_put_text(w, ADDR, strlen(ADDR));
    kv_cbor_put_array(w, nmsgs);
}

/* A WRITE with the given key length, node and hint length. */
static void raw_write(kv_cbor_w *w, size_t klen, uint64_t node, size_t hlen)
{
    kv_cbor_put_array(w, 9);
    kv_cbor_put_uint(w, KV_REPL_WRITE);
    kv_cbor_put_uint(w, 1);
    kv_cbor_put_bytes(w, g_key, klen);
    kv_cbor_put_uint(w, 10);
    kv_cbor_put_uint(w, node);
    kv_cbor_put_uint(w, 0);
    kv_cbor_put_uint(w, 0);
    kv_cbor_put_bytes(w, g_val, 3);
    kv_cbor_put_bytes(w, g_val, hlen);
}

static const char *fail_buf(kv_buf *b)
{
    const char *why = decode_fail(b->data, b->len);
    kv_buf_reset(b);
    return why;
}

Test(repl_msg, decode_refuses_every_truncation_of_a_valid_batch)
{
    kv_repl_msg msgs[EDGE_ROOM];
    kv_repl_item items[300];
    size_t n = edge_messages(msgs, items, 300);
    kv_buf b = KV_BUF_INIT;
    encode(&b, msgs, n);
    for (size_t cut = 0; cut < b.len; cut++) {
        /* A copy of exactly cut bytes, so ASan sees any read past the end. */
        uint8_t *p = malloc(cut ? cut : 1);
        cr_assert_not_null(p);
        memcpy(p, b.data, cut);
        decode_fail(p, cut);
        free(p);
    }
    kv_buf_free(&b);
}

Test(repl_msg, decode_refuses_malformed_and_out_of_bounds_input)
{
    kv_buf b = KV_BUF_INIT;
    kv_cbor_w w = {.out = &b, .err = KV_OK};

    /* Sanity: the hand-made valid batch decodes. */
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_write(&w, 4, 9, 16);
    kv_repl_batch d;
    decode_ok(&b, &d);
    cr_assert(d.msgs[0].has_hint_for);
    kv_repl_batch_free(&d);
    kv_buf_reset(&b);

    /* Wrong protocol number (a SWIM version, a neighbour of ours). */
    raw_head(&w, 1, 1);
    raw_write(&w, 4, 9, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);
    raw_head(&w, KV_REPL_PROTO + 1, 1);
    raw_write(&w, 4, 9, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);

    /* Not an array; an outer array too short. */
    kv_cbor_put_map(&w, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);
    kv_cbor_put_array(&w, 3);
    kv_cbor_put_uint(&w, KV_REPL_PROTO);
    kv_cbor_put_bytes(&w, g_key, SWIM_ID_LEN);
    kv_cbor_put_text(&w, "a", 1);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);

    /* from_id of 15 bytes; from_addr as bytes; from_addr too long or with a space. */
    kv_cbor_put_array(&w, 4);
    kv_cbor_put_uint(&w, KV_REPL_PROTO);
    kv_cbor_put_bytes(&w, g_key, SWIM_ID_LEN - 1);
    kv_cbor_put_text(&w, "a", 1);
    kv_cbor_put_array(&w, 0);
    fail_buf(&b);
    kv_cbor_put_array(&w, 4);
    kv_cbor_put_uint(&w, KV_REPL_PROTO);
    kv_cbor_put_bytes(&w, g_key, SWIM_ID_LEN);
    kv_cbor_put_bytes(&w, "a", 1);
    kv_cbor_put_array(&w, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);
    char addr[SWIM_ADDR_MAX + 1];
    memset(addr, 'a', sizeof addr);
    kv_cbor_put_array(&w, 4);
    kv_cbor_put_uint(&w, KV_REPL_PROTO);
    kv_cbor_put_bytes(&w, g_key, SWIM_ID_LEN);
    kv_cbor_put_text(&w, addr, sizeof addr);
    kv_cbor_put_array(&w, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    kv_cbor_put_array(&w, 4);
    kv_cbor_put_uint(&w, KV_REPL_PROTO);
    kv_cbor_put_bytes(&w, g_key, SWIM_ID_LEN);
    kv_cbor_put_text(&w, "a b", 3);
    kv_cbor_put_array(&w, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);

    /* Key over KV_REPL_KEY_MAX; empty key for WRITE and for READ. */
    static uint8_t bigkey[KV_REPL_KEY_MAX + 1];
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 3);
    kv_cbor_put_uint(&w, KV_REPL_READ);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_bytes(&w, bigkey, sizeof bigkey);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_write(&w, 0, 9, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 3);
    kv_cbor_put_uint(&w, KV_REPL_READ);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_bytes(&w, g_key, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    /* The key as text rather than bytes. */
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 3);
    kv_cbor_put_uint(&w, KV_REPL_READ);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_text(&w, "key", 3);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);

    /* node over uint32; hint_for neither 0 nor 16 bytes, nor more. */
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_write(&w, 4, (uint64_t)UINT32_MAX + 1, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_write(&w, 4, 1, 5);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_write(&w, 4, 1, 17);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);

    /* Unknown types 0 and 14, a negative type, a type as text. */
    uint64_t types[] = {0, 14, 1000};
    for (size_t i = 0; i < 3; i++) {
        raw_head(&w, KV_REPL_PROTO, 1);
        kv_cbor_put_array(&w, 3);
        kv_cbor_put_uint(&w, types[i]);
        kv_cbor_put_uint(&w, 1);
        kv_cbor_put_bytes(&w, g_key, 4);
        cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    }
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 3);
    kv_cbor_put_text(&w, "3", 1);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_bytes(&w, g_key, 4);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);
    const uint8_t negtype[] = {0x84, 0x19, 0x6b, 0x76, 0x50, 1,    2,    3,    4,  5,
                               6,    7,    8,    9,    10,   11,   12,   13,   14, 15,
                               16,   0x61, 'a',  0x81, 0x83, 0x22, 0x01, 0x41, 'k'};
    cr_assert_str_eq(decode_fail(negtype, sizeof negtype), KV_REPL_MALFORMED);

    /* A message array shorter than its type needs. */
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 4);
    kv_cbor_put_uint(&w, KV_REPL_WRITE_ACK);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, KV_REPL_OK);
    kv_cbor_put_uint(&w, 5);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);

    /* Status out of range; a bool as a uint; a tombstone with a value. */
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 5);
    kv_cbor_put_uint(&w, KV_REPL_WRITE_ACK);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, KV_REPL_NOSPACE + 1);
    kv_cbor_put_uint(&w, 5);
    kv_cbor_put_uint(&w, 5);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 5);
    kv_cbor_put_uint(&w, KV_REPL_LIST_ACK);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, KV_REPL_OK);
    kv_cbor_put_uint(&w, 1); /* truncated must be a bool */
    kv_cbor_put_array(&w, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 8);
    kv_cbor_put_uint(&w, KV_REPL_READ_ACK);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, KV_REPL_OK);
    kv_cbor_put_uint(&w, 5);
    kv_cbor_put_uint(&w, 5);
    kv_cbor_put_uint(&w, KV_REPL_F_TOMBSTONE);
    kv_cbor_put_uint(&w, 0);
    kv_cbor_put_bytes(&w, g_val, 1);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);

    /* LIST limit over KV_REPL_LIST_MAX; LIST_ACK items over it; an item with an empty key. */
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 7);
    kv_cbor_put_uint(&w, KV_REPL_LIST);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_bytes(&w, g_key, 0);
    kv_cbor_put_uint(&w, KV_REPL_LIST_MAX + 1);
    kv_cbor_put_bool(&w, false);
    kv_cbor_put_uint(&w, 0);
    kv_cbor_put_bytes(&w, g_key, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 5);
    kv_cbor_put_uint(&w, KV_REPL_LIST_ACK);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, KV_REPL_OK);
    kv_cbor_put_bool(&w, false);
    kv_cbor_put_array(&w, KV_REPL_LIST_MAX + 1);
    for (size_t i = 0; i <= KV_REPL_LIST_MAX; i++) {
        kv_cbor_put_array(&w, 5);
        kv_cbor_put_bytes(&w, g_key, 1);
        for (int k = 0; k < 4; k++)
            kv_cbor_put_uint(&w, 0);
    }
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 5);
    kv_cbor_put_uint(&w, KV_REPL_LIST_ACK);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, KV_REPL_OK);
    kv_cbor_put_bool(&w, false);
    kv_cbor_put_array(&w, 2);
    for (size_t i = 0; i < 2; i++) {
        kv_cbor_put_array(&w, 5);
        kv_cbor_put_bytes(&w, g_key, 1 - i); /* the first is fine, the second empty */
        for (int k = 0; k < 4; k++)
            kv_cbor_put_uint(&w, 0);
    }
    kv_cbor_put_bytes(&w, g_key, 8); /* (so the bytes left could hold two valid items) */
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);

    /* More messages than KV_REPL_BATCH_MAX, every one of them valid. */
    raw_head(&w, KV_REPL_PROTO, KV_REPL_BATCH_MAX + 1);
    for (size_t i = 0; i <= KV_REPL_BATCH_MAX; i++) {
        kv_cbor_put_array(&w, 3);
        kv_cbor_put_uint(&w, KV_REPL_READ);
        kv_cbor_put_uint(&w, i);
        kv_cbor_put_bytes(&w, g_key, 1);
    }
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);

    /* Counts larger than the input: messages, items, a key's length. */
    raw_head(&w, KV_REPL_PROTO, 100);
    kv_cbor_put_array(&w, 3);
    kv_cbor_put_uint(&w, KV_REPL_READ);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_bytes(&w, g_key, 100);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 5);
    kv_cbor_put_uint(&w, KV_REPL_LIST_ACK);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, KV_REPL_OK);
    kv_cbor_put_bool(&w, false);
    kv_cbor_put_array(&w, 5000);
    kv_cbor_put_bytes(&w, g_val, 200);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);
    const uint8_t longkey[] = {0x84, 0x19, 0x6b, 0x76, 0x50, 1,    2,    3,    4,    5,    6,
                               7,    8,    9,    10,   11,   12,   13,   14,   15,   16,   0x61,
                               'a',  0x81, 0x83, 0x03, 0x01, 0x5a, 0xff, 0xff, 0xff, 0xff, 'k'};
    cr_assert_str_eq(decode_fail(longkey, sizeof longkey), KV_REPL_MALFORMED);

    /* Trailing bytes after a valid batch; two batches back to back. */
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_write(&w, 4, 9, 0);
    kv_cbor_put_uint(&w, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);
    raw_head(&w, KV_REPL_PROTO, 0);
    raw_head(&w, KV_REPL_PROTO, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);

    /* Indefinite lengths, tags and floats are refused by the reader. */
    const uint8_t indef[] = {0x9f, 0x19, 0x6b, 0x76, 0xff};
    decode_fail(indef, sizeof indef);
    const uint8_t tagged[] = {0x84, 0xc0, 0x19, 0x6b, 0x76};
    decode_fail(tagged, sizeof tagged);

    cr_assert_eq(w.err, KV_OK);
    kv_buf_free(&b);
}

Test(repl_msg, newer_peers_may_append_fields_but_not_deep_nests)
{
    kv_buf b = KV_BUF_INIT;
    kv_cbor_w w = {.out = &b, .err = KV_OK};
    swim_member_id id = mkid(5);

    /* Extra items on the batch, on a message and on a LIST_ACK item; the message's extra
     * is an array of arrays (as deep as a known field). */
    kv_cbor_put_array(&w, 6);
    kv_cbor_put_uint(&w, KV_REPL_PROTO);
    kv_cbor_put_bytes(&w, id.b, SWIM_ID_LEN);
    kv_cbor_put_text(&w, ADDR, strlen(ADDR));
    kv_cbor_put_array(&w, 2);
    kv_cbor_put_array(&w, 5);
    kv_cbor_put_uint(&w, KV_REPL_READ);
    kv_cbor_put_uint(&w, 8);
    kv_cbor_put_bytes(&w, "abc", 3);
    kv_cbor_put_array(&w, 2);
    kv_cbor_put_array(&w, 1);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_map(&w, 1);
    kv_cbor_put_text(&w, "k", 1);
    kv_cbor_put_bool(&w, true);
    kv_cbor_put_text(&w, "newer", 5);
    kv_cbor_put_array(&w, 6);
    kv_cbor_put_uint(&w, KV_REPL_LIST_ACK);
    kv_cbor_put_uint(&w, 9);
    kv_cbor_put_uint(&w, KV_REPL_OK);
    kv_cbor_put_bool(&w, true);
    kv_cbor_put_array(&w, 1);
    kv_cbor_put_array(&w, 6);
    kv_cbor_put_bytes(&w, "xy", 2);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, 2);
    kv_cbor_put_uint(&w, 3);
    kv_cbor_put_uint(&w, 4);
    kv_cbor_put_bytes(&w, "extra", 5);
    kv_cbor_put_uint(&w, UINT64_MAX);
    kv_cbor_put_uint(&w, 17);
    kv_cbor_put_array(&w, 0);
    cr_assert_eq(w.err, KV_OK);
    kv_repl_batch d;
    decode_ok(&b, &d);
    cr_assert_eq(d.n_msgs, 2);
    cr_assert_eq(d.msgs[0].type, KV_REPL_READ);
    assert_bytes_eq(d.msgs[0].key, d.msgs[0].klen, (const uint8_t *)"abc", 3);
    cr_assert_eq(d.msgs[1].type, KV_REPL_LIST_ACK);
    cr_assert_eq(d.msgs[1].n_items, 1);
    cr_assert(d.msgs[1].truncated);
    assert_bytes_eq(d.msgs[1].items[0].key, d.msgs[1].items[0].klen, (const uint8_t *)"xy", 2);
    cr_assert_eq(d.msgs[1].items[0].flags, 4);
    kv_repl_batch_free(&d);
    kv_buf_reset(&b);

    /* An extra item three arrays deep is refused; so is a nest of 10,000 (no recursion). */
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 4);
    kv_cbor_put_uint(&w, KV_REPL_READ);
    kv_cbor_put_uint(&w, 8);
    kv_cbor_put_bytes(&w, "abc", 3);
    kv_cbor_put_array(&w, 1);
    kv_cbor_put_array(&w, 1);
    kv_cbor_put_array(&w, 1);
    kv_cbor_put_uint(&w, 1);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 4);
    kv_cbor_put_uint(&w, KV_REPL_READ);
    kv_cbor_put_uint(&w, 8);
    kv_cbor_put_bytes(&w, "abc", 3);
    for (int i = 0; i < 10000; i++)
        kv_cbor_put_array(&w, 1);
    kv_cbor_put_uint(&w, 1);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);

    /* More than 32 fields in a message is out of bounds. */
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 33);
    kv_cbor_put_uint(&w, KV_REPL_READ);
    kv_cbor_put_uint(&w, 8);
    kv_cbor_put_bytes(&w, "abc", 3);
    for (int i = 0; i < 30; i++)
        kv_cbor_put_uint(&w, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    kv_buf_free(&b);
}

Test(repl_msg, the_message_array_count_may_come_in_any_definite_width)
{
    /* Our encoder always writes 0x9a + uint32; a shortest-form 0x81 must decode too. */
    kv_buf b = KV_BUF_INIT;
    kv_cbor_w w = {.out = &b, .err = KV_OK};
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_write(&w, 4, 9, 0);
    kv_repl_batch d;
    decode_ok(&b, &d);
    cr_assert_eq(d.n_msgs, 1);
    cr_assert_eq(d.msgs[0].ver.node, 9);
    kv_repl_batch_free(&d);
    kv_buf_free(&b);
}

Test(repl_msg, is_batch_tells_batches_from_swim_messages_and_garbage)
{
    kv_buf b = KV_BUF_INIT;
    encode(&b, NULL, 0);
    cr_assert(kv_repl_is_batch((const uint8_t *)b.data, b.len));
    kv_repl_msg m = mk_write(16, 100, 0, false);
    encode(&b, &m, 1);
    cr_assert(kv_repl_is_batch((const uint8_t *)b.data, b.len));

    swim_msg s;
    memset(&s, 0, sizeof s);
    s.type = SWIM_MSG_PING;
    s.seq = 0x6b76; /* nothing else in a SWIM message fools it either */
    kv_buf_reset(&b);
    cr_assert_eq(kv_wire_encode(&b, ADDR, &s), KV_OK);
    cr_assert_not(kv_repl_is_batch((const uint8_t *)b.data, b.len));

    const uint8_t junk[][6] = {
        {0}, {0x84, 0x18, 0x6b, 0x76, 0, 0}, {0x19, 0x6b, 0x76, 0x84, 0, 0}, {0xff, 0xff, 0xff}};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        cr_assert_not(kv_repl_is_batch(junk[i], sizeof junk[i]));
    cr_assert_not(kv_repl_is_batch((const uint8_t *)"", 0));
    const uint8_t three[] = {0x84, 0x19, 0x6b};
    cr_assert_not(kv_repl_is_batch(three, sizeof three));
    kv_buf_free(&b);
}

Test(repl_msg, random_corruption_never_crashes_and_what_decodes_is_in_bounds)
{
    kv_repl_msg msgs[EDGE_ROOM];
    kv_repl_item items[300];
    size_t n = edge_messages(msgs, items, 300);
    kv_buf b = KV_BUF_INIT;
    encode(&b, msgs, n);
    uint8_t *p = malloc(b.len);
    cr_assert_not_null(p);
    uint64_t x = 0x2545f4914f6cdd1dull;
    int decoded = 0;
    for (int round = 0; round < 3000; round++) {
        memcpy(p, b.data, b.len);
        int flips = 1 + round % 4;
        for (int f = 0; f < flips; f++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t at = (size_t)(x % b.len);
            p[at] ^= (uint8_t)(1u << ((x >> 32) % 8));
        }
        kv_repl_batch d;
        const char *why = NULL;
        int rc = kv_repl_batch_decode(p, b.len, &d, &why);
        CHECK(rc == KV_OK || rc == KV_ECORRUPT);
        if (rc != KV_OK)
            continue;
        decoded++;
        CHECK(d.n_msgs <= KV_REPL_BATCH_MAX);
        for (uint32_t i = 0; i < d.n_msgs; i++) {
            const kv_repl_msg *m = &d.msgs[i];
            CHECK(m->type >= KV_REPL_WRITE && m->type <= KV_REPL_STREAM_DONE);
            CHECK(m->klen <= KV_REPL_KEY_MAX);
            CHECK((unsigned)m->status <= KV_REPL_NOSPACE);
            CHECK(m->n_items <= KV_REPL_LIST_MAX);
            if (m->klen)
                CHECK(m->key >= p && m->key + m->klen <= p + b.len);
            if (m->vlen)
                CHECK(m->value >= p && m->value + m->vlen <= p + b.len);
        }
        kv_repl_batch_free(&d);
    }
    cr_log_info("%d of 3000 corrupted batches still decoded", decoded);
    free(p);
    kv_buf_free(&b);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

Test(repl_msg, cost_of_a_typical_write)
{
    /* A figure for the replication hot path, not an assertion: one WRITE (16-byte key,
     * 100-byte value) encoded into a batch of its own, then decoded and freed. The machine
     * is shared, so the best of three runs of each loop is printed. */
    kv_repl_msg m = mk_write(16, 100, 0, false);
    kv_buf b = KV_BUF_INIT;
    swim_member_id id = mkid(4);
    const int rounds = 100000;
    volatile uint64_t sink = 0;
    double enc = 1e9, dec = 1e9;
    for (int run = 0; run < 3; run++) {
        double t0 = now_s();
        for (int r = 0; r < rounds; r++) {
            kv_repl_batch_w w;
            kv_repl_batch_begin(&w, &b, &id, ADDR);
            m.req_id = (uint64_t)r;
            kv_repl_batch_add(&w, &m);
            kv_repl_batch_end(&w);
            sink += b.len;
        }
        double t1 = now_s();
        for (int r = 0; r < rounds; r++) {
            kv_repl_batch d;
            if (kv_repl_batch_decode((const uint8_t *)b.data, b.len, &d, NULL) == KV_OK) {
                sink += d.msgs[0].req_id;
                kv_repl_batch_free(&d);
            }
        }
        double t2 = now_s();
        enc = t1 - t0 < enc ? t1 - t0 : enc;
        dec = t2 - t1 < dec ? t2 - t1 : dec;
    }
    kv_repl_batch d;
    decode_ok(&b, &d);
    assert_msg_eq(&d.msgs[0], &m);
    kv_repl_batch_free(&d);
    fprintf(stderr,
            "repl_msg: WRITE (16 B key, 100 B value; %zu B on the wire as a 1-message batch): "
            "encode %.0f ns + decode/free %.0f ns = %.0f ns\n",
            b.len, enc / rounds * 1e9, dec / rounds * 1e9, (enc + dec) / rounds * 1e9);
    (void)sink;
    kv_buf_free(&b);
}

/* ---------- anti-entropy and streaming: TREE, TREE_ACK, PULL, PULL_DATA ---------- */

/* Packed contents the sync messages point at (malloc'ed by sync_data_init). */
typedef struct sync_data {
    uint8_t *ranges;  /* RANGES pairs, ascending, the last one ending at 2^64 (hi 0) */
    uint8_t *nodes;   /* NODES indexes at level 16, the last one 2^16 - 1 */
    uint8_t *sums;    /* SUMS sums, edge values included */
    uint8_t *have;    /* HAVE digests */
    uint8_t *payload; /* PAYLOAD bytes */
} sync_data;

#define SYNC_RANGES  300
#define SYNC_NODES   4096
#define SYNC_SUMS    4096
#define SYNC_HAVE    10000
#define SYNC_PAYLOAD (1u << 20)

static void sync_data_init(sync_data *sd)
{
    sd->ranges = malloc(SYNC_RANGES * 16);
    sd->nodes = malloc(SYNC_NODES * 8);
    sd->sums = malloc(SYNC_SUMS * 8);
    sd->have = malloc(SYNC_HAVE * 8);
    sd->payload = malloc(SYNC_PAYLOAD);
    cr_assert(sd->ranges && sd->nodes && sd->sums && sd->have && sd->payload);
    for (size_t i = 0; i < SYNC_RANGES; i++) {
        uint64_t lo = (uint64_t)i << 48;
        kv_repl_u64_put(sd->ranges, 2 * i, lo);
        kv_repl_u64_put(sd->ranges, 2 * i + 1, i == SYNC_RANGES - 1 ? 0 : lo + (1ull << 47));
    }
    for (size_t i = 0; i < SYNC_NODES; i++)
        kv_repl_u64_put(sd->nodes, i, i == SYNC_NODES - 1 ? 0xffff : (i * 13) % 0x10000);
    for (size_t i = 0; i < SYNC_SUMS; i++)
        kv_repl_u64_put(sd->sums, i, i == 0 ? UINT64_MAX : i * 0x9e3779b97f4a7c15ull);
    for (size_t i = 0; i < SYNC_HAVE; i++)
        kv_repl_u64_put(sd->have, i, (i + 1) * 0xc2b2ae3d27d4eb4full);
    for (size_t i = 0; i < SYNC_PAYLOAD; i++)
        sd->payload[i] = (uint8_t)(i * 31 + (i >> 11));
}

static void sync_data_free(sync_data *sd)
{
    free(sd->ranges);
    free(sd->nodes);
    free(sd->sums);
    free(sd->have);
    free(sd->payload);
}

/* One of each sync type as a node would send it, scaled down by `scale` (1 = the
 * realistic sizes above; larger divides every count, for the mutation test). */
static size_t sync_messages(kv_repl_msg *m, const sync_data *sd, size_t scale)
{
    size_t n = 0;
    memset(m, 0, 11 * sizeof *m);
    m[n].type = KV_REPL_TREE; /* the top of the tree: all nodes of a level */
    m[n].req_id = KV_REPL_REQ_SYNC | 1;
    m[n].level = KV_REPL_ALL_LEVEL_MAX;
    m[n].ranges = sd->ranges;
    m[n].n_ranges = SYNC_RANGES / scale;
    n++;
    m[n].type = KV_REPL_TREE; /* chosen nodes deeper down */
    m[n].req_id = KV_REPL_REQ_SYNC | 2;
    m[n].level = 16;
    m[n].ranges = sd->ranges;
    m[n].n_ranges = SYNC_RANGES / scale;
    m[n].u64s = sd->nodes + (SYNC_NODES - SYNC_NODES / scale) * 8; /* keeps 0xffff */
    m[n].n_u64s = SYNC_NODES / scale;
    n++;
    m[n].type = KV_REPL_TREE_ACK;
    m[n].req_id = KV_REPL_REQ_SYNC | 1;
    m[n].status = KV_REPL_OK;
    m[n].u64s = sd->sums;
    m[n].n_u64s = SYNC_SUMS / scale;
    n++;
    m[n].type = KV_REPL_PULL; /* opening a pull */
    m[n].req_id = KV_REPL_REQ_SYNC | 3;
    m[n].seq = 0;
    m[n].ranges = sd->ranges;
    m[n].n_ranges = SYNC_RANGES / scale;
    m[n].u64s = sd->have;
    m[n].n_u64s = SYNC_HAVE / scale;
    n++;
    m[n].type = KV_REPL_PULL; /* acknowledging chunk 6 */
    m[n].req_id = KV_REPL_REQ_SYNC | 3;
    m[n].seq = 7;
    n++;
    m[n].type = KV_REPL_PULL_DATA; /* a compressed chunk */
    m[n].req_id = KV_REPL_REQ_SYNC | 3;
    m[n].status = KV_REPL_OK;
    m[n].seq = 7;
    m[n].raw_len = 3 * (SYNC_PAYLOAD / scale);
    m[n].value = sd->payload;
    m[n].vlen = SYNC_PAYLOAD / scale;
    n++;
    m[n].type = KV_REPL_PULL_DATA; /* the last chunk, stored as raw bytes */
    m[n].req_id = UINT64_MAX;
    m[n].status = KV_REPL_OK;
    m[n].seq = UINT32_MAX;
    m[n].last = true;
    m[n].raw_len = 100;
    m[n].value = sd->payload;
    m[n].vlen = 100;
    n++;
    m[n].type = KV_REPL_PULL_DATA; /* the pull is unknown: start again */
    m[n].req_id = KV_REPL_REQ_SYNC | 9;
    m[n].status = KV_REPL_ERROR;
    m[n].seq = 2;
    n++;
    m[n].type = KV_REPL_PURGE; /* a tombstone purged everywhere */
    m[n].key = sd->payload;
    m[n].klen = KV_REPL_KEY_MAX;
    m[n].ver = (kv_version){.ts = UINT64_MAX - 5, .node = UINT32_MAX};
    n++;
    m[n].type = KV_REPL_STREAM; /* a leaving node hands its ranges over */
    m[n].req_id = KV_REPL_REQ_SYNC | 11;
    m[n].ranges = sd->ranges;
    m[n].n_ranges = SYNC_RANGES / scale;
    n++;
    m[n].type = KV_REPL_STREAM_DONE;
    m[n].req_id = KV_REPL_REQ_SYNC | 11;
    m[n].status = KV_REPL_ERROR;
    n++;
    return n;
}

static bool inside_buf(const uint8_t *p, size_t n, const uint8_t *lo, size_t len)
{
    return n == 0 || (p >= lo && p + n <= lo + len);
}

Test(repl_msg, sync_messages_round_trip_with_realistic_contents)
{
    sync_data sd;
    sync_data_init(&sd);
    kv_repl_msg msgs[11];
    size_t n = sync_messages(msgs, &sd, 1);
    kv_buf b = KV_BUF_INIT;
    encode(&b, msgs, n); /* each message exactly its wire bound; the batch within the sum */
    kv_repl_batch d;
    decode_ok(&b, &d);
    cr_assert_eq(d.n_msgs, n);
    for (size_t i = 0; i < n; i++)
        assert_msg_eq(&d.msgs[i], &msgs[i]);

    /* Spot checks of what a receiver reads, and the pointers point into the input. */
    const uint8_t *lo = (const uint8_t *)b.data;
    const kv_repl_msg *t = &d.msgs[1];
    cr_assert_eq(t->n_ranges, SYNC_RANGES);
    cr_assert_eq(kv_repl_u64_at(t->ranges, 2 * (SYNC_RANGES - 1)), (uint64_t)299 << 48);
    cr_assert_eq(kv_repl_u64_at(t->ranges, 2 * SYNC_RANGES - 1), 0);
    cr_assert_eq(kv_repl_u64_at(t->u64s, SYNC_NODES - 1), 0xffff);
    cr_assert(inside_buf(t->ranges, t->n_ranges * 16, lo, b.len));
    cr_assert(inside_buf(t->u64s, t->n_u64s * 8, lo, b.len));
    cr_assert_eq(d.msgs[0].level, KV_REPL_ALL_LEVEL_MAX);
    cr_assert_eq(d.msgs[0].n_u64s, 0);
    cr_assert_eq(kv_repl_u64_at(d.msgs[2].u64s, 0), UINT64_MAX);
    cr_assert_eq(d.msgs[3].n_u64s, SYNC_HAVE);
    cr_assert_eq(kv_repl_u64_at(d.msgs[3].u64s, SYNC_HAVE - 1), SYNC_HAVE * 0xc2b2ae3d27d4eb4full);
    cr_assert(inside_buf(d.msgs[3].u64s, SYNC_HAVE * 8, lo, b.len));
    cr_assert_eq(d.msgs[4].n_ranges, 0);
    cr_assert_eq(d.msgs[4].n_u64s, 0);
    cr_assert_eq(d.msgs[5].vlen, SYNC_PAYLOAD);
    cr_assert_eq(d.msgs[5].raw_len, 3 * SYNC_PAYLOAD);
    cr_assert(inside_buf(d.msgs[5].value, SYNC_PAYLOAD, lo, b.len));
    cr_assert(d.msgs[6].last);
    cr_assert_not(d.msgs[5].last);
    cr_assert_eq(d.msgs[7].status, KV_REPL_ERROR);
    cr_assert_eq(d.msgs[7].vlen, 0);
    kv_repl_batch_free(&d);

    /* The largest counts the bounds allow round-trip too, within their wire bound. */
    size_t big = (size_t)KV_REPL_U64S_MAX * 8;
    uint8_t *u = calloc(1, big);
    cr_assert_not_null(u);
    kv_repl_u64_put(u, KV_REPL_U64S_MAX - 1, (1ull << KV_REPL_LEVEL_MAX) - 1);
    kv_repl_msg m[2];
    memset(m, 0, sizeof m);
    m[0].type = KV_REPL_TREE;
    m[0].level = KV_REPL_LEVEL_MAX;
    m[0].ranges = u;
    m[0].n_ranges = KV_REPL_RANGES_MAX;
    m[0].u64s = u;
    m[0].n_u64s = KV_REPL_U64S_MAX;
    m[1].type = KV_REPL_PULL_DATA;
    m[1].raw_len = 64u << 20;
    m[1].value = u;
    m[1].vlen = big;
    encode(&b, m, 2);
    decode_ok(&b, &d);
    cr_assert_eq(d.n_msgs, 2);
    assert_msg_eq(&d.msgs[0], &m[0]);
    assert_msg_eq(&d.msgs[1], &m[1]);
    kv_repl_batch_free(&d);
    free(u);
    kv_buf_free(&b);
    sync_data_free(&sd);
}

Test(repl_msg, add_refuses_sync_fields_over_their_bounds_and_leaves_the_batch_intact)
{
    uint8_t nodes[16], buf[16];
    memset(buf, 0, sizeof buf);
    kv_repl_u64_put(nodes, 0, 3);
    kv_repl_u64_put(nodes, 1, 4); /* one past the last node at level 2 */
    kv_repl_msg bad[16];
    memset(bad, 0, sizeof bad);
    size_t n = 0;
    bad[n].type = KV_REPL_TREE;
    bad[n].level = KV_REPL_LEVEL_MAX + 1;
    bad[n].u64s = buf;
    bad[n].n_u64s = 1;
    n++;
    bad[n].type = KV_REPL_TREE; /* all nodes of a level too deep for that */
    bad[n].level = KV_REPL_ALL_LEVEL_MAX + 1;
    n++;
    bad[n].type = KV_REPL_TREE;
    bad[n].level = 2;
    bad[n].u64s = nodes;
    bad[n].n_u64s = 2;
    n++;
    bad[n].type = KV_REPL_TREE; /* node 2^20 at the deepest level */
    bad[n].level = KV_REPL_LEVEL_MAX;
    kv_repl_u64_put(buf, 1, 1ull << KV_REPL_LEVEL_MAX);
    bad[n].u64s = buf + 8;
    bad[n].n_u64s = 1;
    n++;
    bad[n].type = KV_REPL_TREE;
    bad[n].u64s = buf;
    bad[n].n_u64s = (size_t)KV_REPL_U64S_MAX + 1; /* refused before anything is read */
    n++;
    bad[n].type = KV_REPL_TREE;
    bad[n].ranges = buf;
    bad[n].n_ranges = (size_t)KV_REPL_RANGES_MAX + 1;
    n++;
    bad[n].type = KV_REPL_TREE; /* a count without bytes */
    bad[n].n_ranges = 1;
    n++;
    bad[n].type = KV_REPL_TREE_ACK;
    bad[n].u64s = buf;
    bad[n].n_u64s = (size_t)KV_REPL_U64S_MAX + 1;
    n++;
    bad[n].type = KV_REPL_TREE_ACK;
    bad[n].status = (kv_repl_status)(KV_REPL_NOSPACE + 1);
    n++;
    bad[n].type = KV_REPL_PULL;
    bad[n].u64s = buf;
    bad[n].n_u64s = (size_t)KV_REPL_U64S_MAX + 1;
    n++;
    bad[n].type = KV_REPL_PULL;
    bad[n].ranges = buf;
    bad[n].n_ranges = (size_t)KV_REPL_RANGES_MAX + 1;
    n++;
    bad[n].type = KV_REPL_PULL;
    bad[n].n_u64s = 2; /* a count without bytes */
    n++;
    bad[n].type = KV_REPL_PULL_DATA;
    bad[n].raw_len = (64u << 20) + 1;
    n++;
    bad[n].type = KV_REPL_PULL_DATA;
    bad[n].value = buf;
    bad[n].vlen = (size_t)KV_REPL_VALUE_MAX + 1;
    n++;
    bad[n].type = KV_REPL_PULL_DATA;
    bad[n].status = (kv_repl_status)99;
    n++;
    bad[n].type = KV_REPL_PULL_DATA;
    bad[n].vlen = 5; /* a length without bytes */
    n++;
    cr_assert_leq(n, sizeof bad / sizeof bad[0]);

    kv_buf b = KV_BUF_INIT;
    kv_repl_batch_w w;
    swim_member_id id = mkid(3);
    kv_repl_batch_begin(&w, &b, &id, ADDR);
    kv_repl_msg good;
    memset(&good, 0, sizeof good);
    good.type = KV_REPL_TREE;
    good.level = 2;
    good.u64s = nodes;
    good.n_u64s = 1; /* node 3: the last one at level 2 */
    add_ok(&w, &good);
    size_t len = b.len;
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(kv_repl_batch_add(&w, &bad[i]), KV_EINVAL, "bad message %zu accepted", i);
        cr_assert_eq(b.len, len);
    }
    add_ok(&w, &good);
    cr_assert_eq(kv_repl_batch_end(&w), KV_OK);
    kv_repl_batch d;
    decode_ok(&b, &d);
    cr_assert_eq(d.n_msgs, 2);
    cr_assert_eq(kv_repl_u64_at(d.msgs[1].u64s, 0), 3);
    kv_repl_batch_free(&d);
    kv_buf_free(&b);
}

/* Hand-made sync messages: [7, 1, level, ranges, nodes] and friends, lengths in bytes. */
static void raw_tree(kv_cbor_w *w, uint64_t level, size_t ranges_len, const uint8_t *nodes,
                     size_t nodes_len)
{
    kv_cbor_put_array(w, 5);
    kv_cbor_put_uint(w, KV_REPL_TREE);
    kv_cbor_put_uint(w, 1);
    kv_cbor_put_uint(w, level);
    kv_cbor_put_bytes(w, g_val, ranges_len);
    kv_cbor_put_bytes(w, nodes, nodes_len);
}

static void raw_tree_ack(kv_cbor_w *w, uint64_t status, size_t sums_len)
{
    kv_cbor_put_array(w, 4);
    kv_cbor_put_uint(w, KV_REPL_TREE_ACK);
    kv_cbor_put_uint(w, 1);
    kv_cbor_put_uint(w, status);
    kv_cbor_put_bytes(w, g_val, sums_len);
}

static void raw_pull_data(kv_cbor_w *w, uint64_t status, uint64_t raw_len, size_t plen)
{
    kv_cbor_put_array(w, 7);
    kv_cbor_put_uint(w, KV_REPL_PULL_DATA);
    kv_cbor_put_uint(w, 1);
    kv_cbor_put_uint(w, status);
    kv_cbor_put_uint(w, 4);
    kv_cbor_put_bool(w, true);
    kv_cbor_put_uint(w, raw_len);
    kv_cbor_put_bytes(w, g_val, plen);
}

Test(repl_msg, decode_refuses_malformed_and_out_of_bounds_sync_messages)
{
    kv_buf b = KV_BUF_INIT;
    kv_cbor_w w = {.out = &b, .err = KV_OK};
    uint8_t nodes[16];
    kv_repl_u64_put(nodes, 0, 0xfffff); /* the last node at level 20 */
    kv_repl_u64_put(nodes, 1, 7);

    /* Sanity: the hand-made valid messages decode. */
    raw_head(&w, KV_REPL_PROTO, 4);
    raw_tree(&w, KV_REPL_LEVEL_MAX, 32, nodes, 16);
    raw_tree_ack(&w, KV_REPL_NOSPACE, 16);
    raw_pull_data(&w, KV_REPL_ERROR, 64u << 20, 3);
    kv_cbor_put_array(&w, 5);
    kv_cbor_put_uint(&w, KV_REPL_PULL);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, UINT32_MAX);
    kv_cbor_put_bytes(&w, g_val, 16);
    kv_cbor_put_bytes(&w, g_val, 0);
    kv_repl_batch d;
    decode_ok(&b, &d);
    cr_assert_eq(d.n_msgs, 4);
    cr_assert_eq(d.msgs[0].level, KV_REPL_LEVEL_MAX);
    cr_assert_eq(d.msgs[0].n_ranges, 2);
    cr_assert_eq(d.msgs[0].n_u64s, 2);
    cr_assert_eq(kv_repl_u64_at(d.msgs[0].u64s, 0), 0xfffff);
    cr_assert_eq(d.msgs[1].n_u64s, 2);
    cr_assert_eq(d.msgs[2].raw_len, 64u << 20);
    cr_assert_eq(d.msgs[2].vlen, 3); /* raw_len need not be at least the payload's */
    cr_assert_eq(d.msgs[3].seq, UINT32_MAX);
    cr_assert_eq(d.msgs[3].n_ranges, 1);
    kv_repl_batch_free(&d);
    kv_buf_reset(&b);

    /* ranges of 17 bytes; sums of 9; have of 12. */
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_tree(&w, 3, 17, nodes + 8, 8);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_tree_ack(&w, KV_REPL_OK, 9);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 5);
    kv_cbor_put_uint(&w, KV_REPL_PULL);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, 0);
    kv_cbor_put_bytes(&w, g_val, 16);
    kv_cbor_put_bytes(&w, g_val, 12);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);

    /* level 21; all nodes at level 13; node 2^20 at level 20; node 7 at level 2. */
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_tree(&w, KV_REPL_LEVEL_MAX + 1, 16, nodes + 8, 8);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_tree(&w, KV_REPL_ALL_LEVEL_MAX + 1, 16, nodes, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    uint8_t far[8];
    kv_repl_u64_put(far, 0, 1ull << KV_REPL_LEVEL_MAX);
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_tree(&w, KV_REPL_LEVEL_MAX, 16, far, 8);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_tree(&w, 2, 16, nodes, 16); /* the first node is over, too */
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);

    /* Unknown status on TREE_ACK and PULL_DATA; raw_len over 64 MiB. */
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_tree_ack(&w, KV_REPL_NOSPACE + 1, 8);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_pull_data(&w, 1000, 10, 3);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_pull_data(&w, KV_REPL_OK, (64u << 20) + 1, 3);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    raw_pull_data(&w, KV_REPL_OK, UINT64_MAX, 3);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);

    /* More ranges than KV_REPL_RANGES_MAX (every byte present). */
    size_t over = ((size_t)KV_REPL_RANGES_MAX + 1) * 16;
    uint8_t *zeros = calloc(1, over);
    cr_assert_not_null(zeros);
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 5);
    kv_cbor_put_uint(&w, KV_REPL_PULL);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, 0);
    kv_cbor_put_bytes(&w, zeros, over);
    kv_cbor_put_bytes(&w, zeros, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    free(zeros);

    /* Wrong shapes: a message array too short for its type; ranges as an array; last as
     * an integer; seq over uint32 (out of bounds); level as bytes. */
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 6);
    kv_cbor_put_uint(&w, KV_REPL_PULL_DATA);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, KV_REPL_OK);
    kv_cbor_put_uint(&w, 0);
    kv_cbor_put_bool(&w, false);
    kv_cbor_put_uint(&w, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 5);
    kv_cbor_put_uint(&w, KV_REPL_TREE);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_array(&w, 2);
    kv_cbor_put_uint(&w, 0);
    kv_cbor_put_uint(&w, 0);
    kv_cbor_put_bytes(&w, g_val, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 7);
    kv_cbor_put_uint(&w, KV_REPL_PULL_DATA);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, KV_REPL_OK);
    kv_cbor_put_uint(&w, 0);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, 0);
    kv_cbor_put_bytes(&w, g_val, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 5);
    kv_cbor_put_uint(&w, KV_REPL_PULL);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_uint(&w, (uint64_t)UINT32_MAX + 1);
    kv_cbor_put_bytes(&w, g_val, 0);
    kv_cbor_put_bytes(&w, g_val, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);
    raw_head(&w, KV_REPL_PROTO, 1);
    kv_cbor_put_array(&w, 5);
    kv_cbor_put_uint(&w, KV_REPL_TREE);
    kv_cbor_put_uint(&w, 1);
    kv_cbor_put_bytes(&w, g_val, 1);
    kv_cbor_put_bytes(&w, g_val, 0);
    kv_cbor_put_bytes(&w, g_val, 0);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_MALFORMED);

    /* A bad message after good ones refuses the whole batch. */
    raw_head(&w, KV_REPL_PROTO, 2);
    raw_tree_ack(&w, KV_REPL_OK, 16);
    raw_tree_ack(&w, KV_REPL_OK, 15);
    cr_assert_str_eq(fail_buf(&b), KV_REPL_OUT_OF_BOUNDS);

    cr_assert_eq(w.err, KV_OK);
    kv_buf_free(&b);
}

Test(repl_msg, decode_refuses_every_truncation_of_a_sync_batch)
{
    sync_data sd;
    sync_data_init(&sd);
    kv_repl_msg msgs[11];
    size_t n = sync_messages(msgs, &sd, 100); /* 3 ranges, 40 nodes, 100 have, 10 KiB */
    kv_buf b = KV_BUF_INIT;
    encode(&b, msgs, n);
    for (size_t cut = 0; cut < b.len; cut++) {
        /* A copy of exactly cut bytes, so ASan sees any read past the end. */
        uint8_t *q = malloc(cut ? cut : 1);
        cr_assert_not_null(q);
        memcpy(q, b.data, cut);
        decode_fail(q, cut);
        free(q);
    }
    kv_buf_free(&b);
    sync_data_free(&sd);
}

/* What a decoded sync message must satisfy whatever the input was. */
static void check_sync_in_bounds(const kv_repl_msg *m, const uint8_t *p, size_t len)
{
    CHECK(m->type >= KV_REPL_WRITE && m->type <= KV_REPL_STREAM_DONE);
    CHECK((unsigned)m->status <= KV_REPL_NOSPACE);
    CHECK(m->n_ranges <= KV_REPL_RANGES_MAX && inside_buf(m->ranges, m->n_ranges * 16, p, len));
    CHECK(m->n_u64s <= KV_REPL_U64S_MAX && inside_buf(m->u64s, m->n_u64s * 8, p, len));
    CHECK(m->vlen <= KV_REPL_VALUE_MAX && inside_buf(m->value, m->vlen, p, len));
    CHECK(m->raw_len <= (64u << 20));
    if (m->type == KV_REPL_TREE) {
        CHECK(m->level <= KV_REPL_LEVEL_MAX);
        CHECK(m->n_u64s || m->level <= KV_REPL_ALL_LEVEL_MAX);
        for (size_t i = 0; i < m->n_u64s; i++)
            CHECK(kv_repl_u64_at(m->u64s, i) < (1ull << m->level));
    }
}

Test(repl_msg, random_mutations_of_a_sync_batch_never_crash_and_what_decodes_is_in_bounds)
{
    sync_data sd;
    sync_data_init(&sd);
    kv_repl_msg msgs[11];
    /* Small contents, so most mutations land on heads and lengths rather than payload. */
    size_t n = sync_messages(msgs, &sd, 1000);
    msgs[5].vlen = 40;
    kv_buf b = KV_BUF_INIT;
    encode(&b, msgs, n);
    /* Mutations stay inside a copy of exactly the encoded length (ASan sees overreads). */
    uint8_t *p = malloc(b.len);
    cr_assert_not_null(p);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    int decoded = 0, rounds = 5000;
    for (int round = 0; round < rounds; round++) {
        memcpy(p, b.data, b.len);
        int edits = 1 + round % 5;
        for (int f = 0; f < edits; f++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t at = (size_t)(x % b.len);
            switch ((x >> 40) % 3) {
            case 0: /* flip a bit */
                p[at] ^= (uint8_t)(1u << ((x >> 32) % 8));
                break;
            case 1: /* an arbitrary byte */
                p[at] = (uint8_t)(x >> 48);
                break;
            default: /* an interesting one: a small uint, a head of each width, a bool */
                p[at] = (const uint8_t[]){
                    0x00, 0x07, 0x0a, 0x15, 0x18, 0x19, 0x1a, 0x1b,
                    0x40, 0x48, 0x50, 0x58, 0x5a, 0x80, 0x85, 0xf5}[(x >> 52) % 16];
                break;
            }
        }
        kv_repl_batch d;
        const char *why = NULL;
        int rc = kv_repl_batch_decode(p, b.len, &d, &why);
        CHECK(rc == KV_OK || rc == KV_ECORRUPT);
        if (rc != KV_OK) {
            CHECK(why &&
                  (strcmp(why, KV_REPL_MALFORMED) == 0 || strcmp(why, KV_REPL_OUT_OF_BOUNDS) == 0));
            CHECK(d.msgs == NULL && d.items == NULL);
            continue;
        }
        decoded++;
        CHECK(d.n_msgs <= KV_REPL_BATCH_MAX);
        for (uint32_t i = 0; i < d.n_msgs; i++)
            check_sync_in_bounds(&d.msgs[i], p, b.len);
        /* What decodes is something the encoder takes, within its wire bound. */
        kv_buf out = KV_BUF_INIT;
        kv_repl_batch_w w;
        kv_repl_batch_begin(&w, &out, &d.from_id, d.from_addr);
        for (uint32_t i = 0; i < d.n_msgs; i++) {
            size_t before = out.len;
            CHECK_EQ(kv_repl_batch_add(&w, &d.msgs[i]), KV_OK);
            CHECK(out.len - before <= kv_repl_msg_wire_bound(&d.msgs[i]));
        }
        CHECK_EQ(kv_repl_batch_end(&w), KV_OK);
        kv_buf_free(&out);
        kv_repl_batch_free(&d);
    }
    cr_log_info("%d of %d mutated sync batches still decoded", decoded, rounds);
    cr_assert_gt(decoded, 0, "no mutation kept a batch valid: the test tests nothing");
    free(p);
    kv_buf_free(&b);
    sync_data_free(&sd);
}
