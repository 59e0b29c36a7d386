/*
 * fuzz_repl.c — libFuzzer target for the replica-message decoder (src/repl/msg.h): the
 * input is one nng message from a peer. kv_repl_batch_decode must either refuse it with
 * KV_ECORRUPT and a reason label, or return messages within every bound of msg.h whose
 * pointers lie inside the input. What decodes must also re-encode (the encoder accepts
 * whatever the decoder does), within kv_repl_msg_wire_bound, and decode again to the same
 * messages. Crashes, leaks, sanitizer reports and failed checks are findings.
 *
 * Single-threaded; no files, no logging. FUZZ_DUMP_SEED=FILE writes a valid batch of one
 * message of each type (how the seed corpus entry "mixed" was made).
 */
#include "kvstore/error.h"
#include "repl/msg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FZ_CHECK(cond, what)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_repl: check failed: %s (%s:%d)\n", what, __FILE__, __LINE__);    \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static bool inside(const uint8_t *p, size_t n, const uint8_t *lo, size_t len)
{
    return n == 0 || (p >= lo && p <= lo + len && n <= (size_t)(lo + len - p));
}

static void check_bounds(const kv_repl_batch *b, const uint8_t *data, size_t len)
{
    FZ_CHECK(b->n_msgs <= KV_REPL_BATCH_MAX, "n_msgs bound");
    FZ_CHECK(strlen(b->from_addr) <= SWIM_ADDR_MAX, "from_addr bound");
    for (uint32_t i = 0; i < b->n_msgs; i++) {
        const kv_repl_msg *m = &b->msgs[i];
        FZ_CHECK(m->type >= KV_REPL_WRITE && m->type <= KV_REPL_STREAM_DONE, "type");
        FZ_CHECK((unsigned)m->status <= KV_REPL_NOSPACE, "status");
        FZ_CHECK(m->klen <= KV_REPL_KEY_MAX && inside(m->key, m->klen, data, len), "key");
        FZ_CHECK(
            (m->type != KV_REPL_WRITE && m->type != KV_REPL_READ && m->type != KV_REPL_PURGE) ||
                m->klen >= 1,
            "non-empty key");
        FZ_CHECK(m->vlen <= KV_REPL_VALUE_MAX && inside(m->value, m->vlen, data, len), "value");
        FZ_CHECK(!(m->flags & KV_REPL_F_TOMBSTONE) || m->vlen == 0, "tombstone without value");
        FZ_CHECK(m->limit <= KV_REPL_LIST_MAX, "limit");
        FZ_CHECK(m->cursor_klen <= KV_REPL_KEY_MAX &&
                     inside(m->cursor_key, m->cursor_klen, data, len),
                 "cursor");
        FZ_CHECK(m->n_items <= KV_REPL_LIST_MAX, "n_items");
        FZ_CHECK(m->type == KV_REPL_LIST_ACK || m->n_items == 0, "items only on LIST_ACK");
        FZ_CHECK(m->n_ranges <= KV_REPL_RANGES_MAX &&
                     inside(m->ranges, m->n_ranges * 16, data, len),
                 "ranges");
        FZ_CHECK(m->n_u64s <= KV_REPL_U64S_MAX && inside(m->u64s, m->n_u64s * 8, data, len),
                 "u64s");
        FZ_CHECK(m->raw_len <= (64u << 20), "raw_len");
        if (m->type == KV_REPL_TREE) {
            FZ_CHECK(m->level <= KV_REPL_LEVEL_MAX, "level");
            FZ_CHECK(m->n_u64s || m->level <= KV_REPL_ALL_LEVEL_MAX, "all nodes of a level");
            for (size_t k = 0; k < m->n_u64s; k++)
                FZ_CHECK(kv_repl_u64_at(m->u64s, k) < (1ull << m->level), "node index");
        }
        for (uint32_t k = 0; k < m->n_items; k++) {
            const kv_repl_item *it = &m->items[k];
            FZ_CHECK(it->klen >= 1 && it->klen <= KV_REPL_KEY_MAX &&
                         inside(it->key, it->klen, data, len),
                     "item key");
        }
    }
}

static bool same_bytes(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

static bool same_msg(const kv_repl_msg *a, const kv_repl_msg *b)
{
    if (a->type != b->type || a->req_id != b->req_id || a->status != b->status ||
        !same_bytes(a->key, a->klen, b->key, b->klen) || a->ver.ts != b->ver.ts ||
        a->ver.node != b->ver.node || a->flags != b->flags || a->expiry_ms != b->expiry_ms ||
        !same_bytes(a->value, a->vlen, b->value, b->vlen) || a->has_hint_for != b->has_hint_for ||
        (a->has_hint_for && memcmp(a->hint_for.b, b->hint_for.b, SWIM_ID_LEN) != 0) ||
        a->limit != b->limit || a->has_cursor != b->has_cursor ||
        a->cursor_hash != b->cursor_hash ||
        !same_bytes(a->cursor_key, a->cursor_klen, b->cursor_key, b->cursor_klen) ||
        a->truncated != b->truncated || a->n_items != b->n_items || a->level != b->level ||
        a->seq != b->seq || a->last != b->last || a->raw_len != b->raw_len ||
        !same_bytes(a->ranges, a->n_ranges * 16, b->ranges, b->n_ranges * 16) ||
        !same_bytes(a->u64s, a->n_u64s * 8, b->u64s, b->n_u64s * 8))
        return false;
    for (uint32_t k = 0; k < a->n_items; k++) {
        const kv_repl_item *x = &a->items[k], *y = &b->items[k];
        if (!same_bytes(x->key, x->klen, y->key, y->klen) || x->hash != y->hash ||
            x->ver.ts != y->ver.ts || x->ver.node != y->ver.node || x->flags != y->flags)
            return false;
    }
    return true;
}

static void dump_seed(const char *path)
{
    static const uint8_t key[] = "user:42";
    static const uint8_t val[] = "a value of some bytes";
    kv_repl_item items[2] = {
        {.key = key, .klen = 7, .hash = 99, .ver = {5, 1}, .flags = 0},
        {.key = key, .klen = 4, .hash = 100, .ver = {6, 2}, .flags = KV_REPL_F_TOMBSTONE},
    };
    uint8_t packed[4 * 8];
    for (size_t i = 0; i < 4; i++)
        kv_repl_u64_put(packed, i, i * 5 + 1); /* ranges [1, 6), [11, 16); nodes 1, 6, 11, 16 */
    kv_repl_msg m[11];
    memset(m, 0, sizeof m);
    m[0] = (kv_repl_msg){.type = KV_REPL_WRITE,
                         .req_id = 1,
                         .key = key,
                         .klen = 7,
                         .ver = {1ull << 40, 3},
                         .expiry_ms = 1000,
                         .value = val,
                         .vlen = sizeof val - 1,
                         .has_hint_for = true};
    memset(m[0].hint_for.b, 7, SWIM_ID_LEN);
    m[1] = (kv_repl_msg){
        .type = KV_REPL_WRITE_ACK, .req_id = 1, .status = KV_REPL_STALE, .ver = {1ull << 41, 4}};
    m[2] = (kv_repl_msg){.type = KV_REPL_READ, .req_id = 2, .key = key, .klen = 7};
    m[3] = (kv_repl_msg){
        .type = KV_REPL_READ_ACK, .req_id = 2, .ver = {9, 9}, .value = val, .vlen = 5};
    m[4] = (kv_repl_msg){.type = KV_REPL_LIST,
                         .req_id = KV_REPL_REQ_LIST | 3,
                         .key = key,
                         .klen = 5,
                         .limit = 100,
                         .has_cursor = true,
                         .cursor_hash = 77,
                         .cursor_key = key,
                         .cursor_klen = 7};
    m[5] = (kv_repl_msg){.type = KV_REPL_LIST_ACK,
                         .req_id = KV_REPL_REQ_LIST | 3,
                         .truncated = true,
                         .n_items = 2,
                         .items = items};
    m[6] = (kv_repl_msg){.type = KV_REPL_TREE,
                         .req_id = KV_REPL_REQ_SYNC | 4,
                         .level = 5,
                         .ranges = packed,
                         .n_ranges = 2,
                         .u64s = packed,
                         .n_u64s = 4};
    m[7] = (kv_repl_msg){
        .type = KV_REPL_TREE_ACK, .req_id = KV_REPL_REQ_SYNC | 4, .u64s = packed, .n_u64s = 3};
    m[8] = (kv_repl_msg){.type = KV_REPL_PULL,
                         .req_id = KV_REPL_REQ_SYNC | 5,
                         .ranges = packed,
                         .n_ranges = 1,
                         .u64s = packed,
                         .n_u64s = 2};
    m[9] = (kv_repl_msg){.type = KV_REPL_PULL_DATA,
                         .req_id = KV_REPL_REQ_SYNC | 5,
                         .seq = 1,
                         .last = true,
                         .raw_len = 40,
                         .value = val,
                         .vlen = sizeof val - 1};
    m[10] = (kv_repl_msg){
        .type = KV_REPL_PURGE, .key = key, .klen = 7, .ver = {.ts = 1ull << 40, .node = 3}};
    kv_buf out = KV_BUF_INIT;
    kv_repl_batch_w w;
    swim_member_id id;
    memset(id.b, 0x5a, SWIM_ID_LEN);
    kv_repl_batch_begin(&w, &out, &id, "127.0.0.1:7001");
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
        FZ_CHECK(kv_repl_batch_add(&w, &m[i]) == KV_OK, "seed add");
    FZ_CHECK(kv_repl_batch_end(&w) == KV_OK, "seed end");
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(out.data, 1, out.len, f);
        fclose(f);
    }
    kv_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool dumped;
    if (!dumped) {
        dumped = true;
        const char *seed = getenv("FUZZ_DUMP_SEED");
        if (seed)
            dump_seed(seed);
    }

    kv_repl_batch b;
    const char *why = NULL;
    int rc = kv_repl_batch_decode(data, size, &b, &why);
    if (rc == KV_ENOMEM)
        return 0;
    if (rc != KV_OK) {
        FZ_CHECK(rc == KV_ECORRUPT, "decode returns KV_OK, KV_ECORRUPT or KV_ENOMEM");
        FZ_CHECK(
            why && (strcmp(why, KV_REPL_MALFORMED) == 0 || strcmp(why, KV_REPL_OUT_OF_BOUNDS) == 0),
            "a refusal names a reason");
        FZ_CHECK(b.msgs == NULL && b.items == NULL && b.n_msgs == 0, "nothing to free");
        return 0;
    }
    check_bounds(&b, data, size);

    /* Re-encode: everything decoded is something the encoder takes. */
    kv_buf out = KV_BUF_INIT;
    kv_repl_batch_w w;
    kv_repl_batch_begin(&w, &out, &b.from_id, b.from_addr);
    size_t bound = KV_REPL_BATCH_WIRE_FIXED;
    for (uint32_t i = 0; i < b.n_msgs; i++) {
        size_t before = out.len;
        rc = kv_repl_batch_add(&w, &b.msgs[i]);
        if (rc == KV_ENOMEM)
            goto done;
        FZ_CHECK(rc == KV_OK, "a decoded message re-encodes");
        FZ_CHECK(out.len - before == kv_repl_msg_wire_bound(&b.msgs[i]), "wire bound is exact");
        bound += kv_repl_msg_wire_bound(&b.msgs[i]);
    }
    FZ_CHECK(kv_repl_batch_end(&w) == KV_OK, "batch end");
    FZ_CHECK(out.len <= bound, "batch within the bounds");
    FZ_CHECK(kv_repl_is_batch((const uint8_t *)out.data, out.len), "is_batch on our own batch");

    kv_repl_batch b2;
    rc = kv_repl_batch_decode((const uint8_t *)out.data, out.len, &b2, &why);
    if (rc == KV_ENOMEM)
        goto done;
    FZ_CHECK(rc == KV_OK, "a re-encoded batch decodes");
    FZ_CHECK(memcmp(b2.from_id.b, b.from_id.b, SWIM_ID_LEN) == 0, "from_id survives");
    FZ_CHECK(strcmp(b2.from_addr, b.from_addr) == 0, "from_addr survives");
    FZ_CHECK(b2.n_msgs == b.n_msgs, "message count survives");
    for (uint32_t i = 0; i < b.n_msgs; i++)
        FZ_CHECK(same_msg(&b.msgs[i], &b2.msgs[i]), "messages survive a round trip");
    kv_repl_batch_free(&b2);
done:
    kv_buf_free(&out);
    kv_repl_batch_free(&b);
    return 0;
}
