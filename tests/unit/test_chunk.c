/*
 * test_chunk.c — the record-chunk codec (src/repl/chunk.h): 1000 mixed records (1-byte and
 * 1024-byte keys, tombstones, expiries, empty values, a 1 MiB value) round-trip field for
 * field; compressible chunks shrink and incompressible ones travel stored; kv_chunk_add
 * refuses bad records and a chunk over KV_CHUNK_RAW_MAX and leaves raw unchanged;
 * kv_chunk_unpack refuses truncated or mismatched LZ4 payloads and bad records with a
 * reason, and survives flipped bytes and thousands of random payloads without a crash.
 */
#include "kvstore/error.h"
#include "repl/chunk.h"
#include "repl/msg.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

/* Checks inside bulk loops record only failures: ctest runs criterion with --full-stats,
 * which reports every passing assertion too. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            cr_assert_fail("%s (line %d)", #cond, __LINE__);                                       \
    } while (0)

#define MIB (1u << 20)

/* xorshift64: deterministic bytes, so a failure reproduces. */
static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

static void rnd_fill(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)rnd();
}

/* ---------- the mixed record set ---------- */

#define MIXED_N   1000
#define BIG_INDEX 500

static uint8_t g_key[KV_REPL_KEY_MAX];
static uint8_t *g_val; /* 1 MiB of patterned bytes */

static void setup(void)
{
    for (size_t i = 0; i < sizeof g_key; i++)
        g_key[i] = (uint8_t)(i * 7 + 1);
    g_val = malloc(MIB);
    cr_assert_not_null(g_val);
    for (size_t i = 0; i < MIB; i++)
        g_val[i] = (uint8_t)(i * 31 + (i >> 9));
}

static void teardown(void)
{
    free(g_val);
}

TestSuite(chunk, .init = setup, .fini = teardown);

/* Record i of the mixed set: every shape the contract allows, derived from i alone. */
static kv_chunk_rec mixed_rec(size_t i)
{
    kv_chunk_rec r = {.key = g_key + i % 7, .klen = 1 + i % 37};
    if (i % 3 == 0)
        r = (kv_chunk_rec){.key = g_key, .klen = KV_REPL_KEY_MAX};
    else if (i % 3 == 1)
        r = (kv_chunk_rec){.key = g_key + i % 251, .klen = 1};
    r.ver = (kv_version){.ts = (uint64_t)i << 16 | 0xabcd, .node = (uint32_t)(0xfffff000u + i)};
    if (i % 5 == 0) {
        r.tombstone = true; /* no value, no expiry */
    } else {
        r.expiry_ms = i % 4 == 0 ? 0 : UINT64_MAX - i;
        r.value = g_val + i;
        r.vlen = i % 11 == 0 ? 0 : i % 300;
    }
    if (i == BIG_INDEX) {
        r.tombstone = false;
        r.value = g_val;
        r.vlen = MIB;
    }
    return r;
}

static bool rec_equal(const kv_chunk_rec *a, const kv_chunk_rec *b)
{
    return a->klen == b->klen && memcmp(a->key, b->key, a->klen) == 0 && a->ver.ts == b->ver.ts &&
           a->ver.node == b->ver.node && a->tombstone == b->tombstone &&
           a->expiry_ms == b->expiry_ms && a->vlen == b->vlen &&
           (a->vlen == 0 || memcmp(a->value, b->value, a->vlen) == 0);
}

/* Walk accepted bytes with kv_chunk_next: how many records, and true when they end exactly
 * at raw_len. */
static size_t walk(const uint8_t *raw, size_t raw_len, bool *exact)
{
    size_t off = 0, n = 0;
    kv_chunk_rec r;
    while (n <= raw_len && kv_chunk_next(raw, raw_len, &off, &r))
        n++;
    *exact = off == raw_len;
    return n;
}

Test(chunk, mixed_records_round_trip)
{
    kv_buf raw = KV_BUF_INIT, out = KV_BUF_INIT, scratch = KV_BUF_INIT;
    size_t expect_len = 0;
    for (size_t i = 0; i < MIXED_N; i++) {
        kv_chunk_rec r = mixed_rec(i);
        expect_len += kv_chunk_rec_size(&r);
        CHECK(kv_chunk_add(&raw, &r) == KV_OK);
    }
    cr_assert_eq(raw.len, expect_len, "kv_chunk_rec_size matches what kv_chunk_add appends");

    cr_assert_eq(kv_chunk_pack((uint8_t *)raw.data, raw.len, &out), KV_OK);
    cr_assert_lt(out.len, raw.len, "patterned records compress");
    size_t count = 0;
    const char *why = NULL;
    cr_assert_eq(kv_chunk_unpack(raw.len, (uint8_t *)out.data, out.len, &scratch, &count, &why),
                 KV_OK, "why: %s", why ? why : "-");
    cr_assert_eq(count, MIXED_N);
    cr_assert_eq(scratch.len, raw.len);
    cr_assert(memcmp(scratch.data, raw.data, raw.len) == 0);

    size_t off = 0, n = 0;
    kv_chunk_rec got;
    while (kv_chunk_next((uint8_t *)scratch.data, scratch.len, &off, &got)) {
        kv_chunk_rec want = mixed_rec(n);
        if (!rec_equal(&got, &want))
            cr_assert_fail("record %zu differs after the round trip", n);
        n++;
    }
    cr_assert_eq(n, MIXED_N);
    cr_assert_eq(off, scratch.len);
    kv_buf_free(&raw);
    kv_buf_free(&out);
    kv_buf_free(&scratch);
}

Test(chunk, tombstone_expiry_is_written_as_zero)
{
    kv_buf raw = KV_BUF_INIT, out = KV_BUF_INIT, scratch = KV_BUF_INIT;
    kv_chunk_rec r = {.key = g_key, .klen = 3, .ver = {7, 9}, .tombstone = true, .expiry_ms = 42};
    cr_assert_eq(kv_chunk_add(&raw, &r), KV_OK);
    cr_assert_eq(kv_chunk_pack((uint8_t *)raw.data, raw.len, &out), KV_OK);
    size_t count = 0;
    const char *why = NULL;
    cr_assert_eq(kv_chunk_unpack(raw.len, (uint8_t *)out.data, out.len, &scratch, &count, &why),
                 KV_OK);
    size_t off = 0;
    kv_chunk_rec got;
    cr_assert(kv_chunk_next((uint8_t *)scratch.data, scratch.len, &off, &got));
    cr_assert(got.tombstone);
    cr_assert_eq(got.expiry_ms, 0);
    cr_assert_eq(got.vlen, 0);
    kv_buf_free(&raw);
    kv_buf_free(&out);
    kv_buf_free(&scratch);
}

Test(chunk, compressible_data_shrinks)
{
    kv_buf raw = KV_BUF_INIT, out = KV_BUF_INIT, scratch = KV_BUF_INIT;
    static uint8_t val[4096];
    memset(val, 'x', sizeof val);
    for (size_t i = 0; i < 200; i++) {
        kv_chunk_rec r = {
            .key = (const uint8_t *)"user:0000", .klen = 9, .value = val, .vlen = sizeof val};
        CHECK(kv_chunk_add(&raw, &r) == KV_OK);
    }
    cr_assert_eq(kv_chunk_pack((uint8_t *)raw.data, raw.len, &out), KV_OK);
    cr_assert_lt(out.len * 20, raw.len, "%zu bytes packed into %zu", raw.len, out.len);
    size_t count = 0;
    const char *why = NULL;
    cr_assert_eq(kv_chunk_unpack(raw.len, (uint8_t *)out.data, out.len, &scratch, &count, &why),
                 KV_OK);
    cr_assert_eq(count, 200);
    cr_assert(memcmp(scratch.data, raw.data, raw.len) == 0);
    kv_buf_free(&raw);
    kv_buf_free(&out);
    kv_buf_free(&scratch);
}

Test(chunk, incompressible_data_is_stored)
{
    kv_buf raw = KV_BUF_INIT, out = KV_BUF_INIT, scratch = KV_BUF_INIT;
    uint8_t *val = malloc(64 * 1024);
    cr_assert_not_null(val);
    rnd_fill(val, 64 * 1024);
    uint8_t key[16];
    rnd_fill(key, sizeof key);
    kv_chunk_rec r = {
        .key = key, .klen = sizeof key, .ver = {1, 2}, .value = val, .vlen = 64 * 1024};
    cr_assert_eq(kv_chunk_add(&raw, &r), KV_OK);
    cr_assert_eq(kv_chunk_pack((uint8_t *)raw.data, raw.len, &out), KV_OK);
    cr_assert_eq(out.len, raw.len, "random bytes travel stored");
    cr_assert(memcmp(out.data, raw.data, raw.len) == 0);
    size_t count = 0;
    const char *why = NULL;
    cr_assert_eq(kv_chunk_unpack(raw.len, (uint8_t *)out.data, out.len, &scratch, &count, &why),
                 KV_OK);
    cr_assert_eq(count, 1);
    size_t off = 0;
    kv_chunk_rec got;
    cr_assert(kv_chunk_next((uint8_t *)scratch.data, scratch.len, &off, &got));
    cr_assert(rec_equal(&got, &r));
    free(val);
    kv_buf_free(&raw);
    kv_buf_free(&out);
    kv_buf_free(&scratch);
}

/* ---------- kv_chunk_add and kv_chunk_pack refusals ---------- */

Test(chunk, add_refuses_bad_records_leaving_raw_unchanged)
{
    kv_buf raw = KV_BUF_INIT;
    kv_chunk_rec ok = {.key = g_key, .klen = 5, .value = g_val, .vlen = 10};
    cr_assert_eq(kv_chunk_add(&raw, &ok), KV_OK);
    size_t len = raw.len;
    uint8_t before[64];
    cr_assert_leq(len, sizeof before);
    memcpy(before, raw.data, len);

    kv_chunk_rec bad[] = {
        {.key = g_key, .klen = 0},
        {.key = g_key, .klen = KV_REPL_KEY_MAX + 1},
        {.key = g_key, .klen = 4, .tombstone = true, .value = g_val, .vlen = 1},
        {.key = g_key, .klen = 4, .value = g_val, .vlen = (size_t)KV_REPL_VALUE_MAX + 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(kv_chunk_add(&raw, &bad[i]), KV_EINVAL, "bad record %zu", i);
        cr_assert_eq(raw.len, len, "bad record %zu changed raw", i);
        cr_assert(memcmp(raw.data, before, len) == 0);
    }
    kv_buf_free(&raw);
}

/* Fill a chunk to exactly KV_CHUNK_RAW_MAX with 8 MiB values, see one more byte refused,
 * and round-trip the full-size chunk. About 150 MiB at the peak. */
Test(chunk, add_refuses_past_raw_max, .timeout = 60)
{
    const size_t vbig = 8 * MIB;
    uint8_t *val = calloc(1, vbig);
    cr_assert_not_null(val);
    kv_buf raw = KV_BUF_INIT;
    kv_chunk_rec r = {.key = g_key, .klen = 1, .value = val, .vlen = vbig};
    size_t added = 0;
    int rc;
    while ((rc = kv_chunk_add(&raw, &r)) == KV_OK && added < 100)
        added++;
    cr_assert_eq(rc, KV_ETOOBIG);
    cr_assert_eq(added, KV_CHUNK_RAW_MAX / kv_chunk_rec_size(&r));
    size_t len = raw.len;
    cr_assert_eq(len, added * kv_chunk_rec_size(&r), "a refused add leaves raw unchanged");

    /* A record of exactly the room left fits; after it not even the smallest one does. */
    r.vlen = KV_CHUNK_RAW_MAX - len - kv_chunk_rec_size(&(kv_chunk_rec){.klen = 1});
    cr_assert_eq(kv_chunk_add(&raw, &r), KV_OK);
    cr_assert_eq(raw.len, KV_CHUNK_RAW_MAX);
    kv_chunk_rec tiny = {.key = g_key, .klen = 1};
    cr_assert_eq(kv_chunk_add(&raw, &tiny), KV_ETOOBIG);
    cr_assert_eq(raw.len, KV_CHUNK_RAW_MAX);

    kv_buf out = KV_BUF_INIT, scratch = KV_BUF_INIT;
    cr_assert_eq(kv_chunk_pack((uint8_t *)raw.data, raw.len + 1, &out), KV_EINVAL);
    cr_assert_eq(kv_chunk_pack((uint8_t *)raw.data, raw.len, &out), KV_OK);
    size_t count = 0;
    const char *why = NULL;
    cr_assert_eq(kv_chunk_unpack(raw.len, (uint8_t *)out.data, out.len, &scratch, &count, &why),
                 KV_OK);
    cr_assert_eq(count, added + 1);
    cr_assert(memcmp(scratch.data, raw.data, raw.len) == 0);
    free(val);
    kv_buf_free(&raw);
    kv_buf_free(&out);
    kv_buf_free(&scratch);
}

Test(chunk, pack_refuses_empty)
{
    kv_buf out = KV_BUF_INIT;
    uint8_t b = 1;
    cr_assert_eq(kv_chunk_pack(&b, 0, &out), KV_EINVAL);
    kv_buf_free(&out);
}

/* ---------- kv_chunk_unpack refusals ---------- */

/* A small compressible chunk of 50 records in raw, packed into out. */
static void small_chunk(kv_buf *raw, kv_buf *out)
{
    for (size_t i = 0; i < 50; i++) {
        kv_chunk_rec r = {.key = g_key, .klen = 8, .ver = {i, 1}, .value = g_val, .vlen = 100};
        CHECK(kv_chunk_add(raw, &r) == KV_OK);
    }
    cr_assert_eq(kv_chunk_pack((uint8_t *)raw->data, raw->len, out), KV_OK);
    cr_assert_lt(out->len, raw->len);
}

/* unpack's answer for (raw_len, payload); on KV_ECORRUPT the reason must be set and the
 * scratch left empty. */
static int unpack_rc(size_t raw_len, const void *payload, size_t plen, const char **why_out)
{
    kv_buf scratch = KV_BUF_INIT;
    size_t count = 12345;
    const char *why = NULL;
    int rc = kv_chunk_unpack(raw_len, payload, plen, &scratch, &count, &why);
    if (rc == KV_ECORRUPT) {
        CHECK(why != NULL && why[0] != '\0');
        CHECK(scratch.len == 0);
        CHECK(count == 12345);
    }
    if (why_out)
        *why_out = why;
    kv_buf_free(&scratch);
    return rc;
}

Test(chunk, unpack_refuses_bad_lengths)
{
    kv_buf raw = KV_BUF_INIT, out = KV_BUF_INIT;
    small_chunk(&raw, &out);
    const char *why;
    cr_assert_eq(unpack_rc(0, out.data, out.len, NULL), KV_EINVAL);
    cr_assert_eq(unpack_rc((size_t)KV_CHUNK_RAW_MAX + 1, out.data, out.len, NULL), KV_EINVAL);
    /* The LZ4 block decodes to raw.len bytes, never one more or one less. */
    cr_assert_eq(unpack_rc(raw.len + 1, out.data, out.len, &why), KV_ECORRUPT);
    cr_assert_eq(unpack_rc(raw.len - 1, out.data, out.len, &why), KV_ECORRUPT);
    /* Truncated LZ4 payloads, every length short of the whole. */
    for (size_t n = 0; n < out.len; n++)
        CHECK(unpack_rc(raw.len, out.data, n, NULL) == KV_ECORRUPT);
    /* A payload longer than raw_len is neither stored nor packed by kv_chunk_pack. */
    cr_assert_eq(unpack_rc(out.len - 1, out.data, out.len, &why), KV_ECORRUPT);
    cr_assert_eq(unpack_rc(raw.len, out.data, out.len, NULL), KV_OK);
    kv_buf_free(&raw);
    kv_buf_free(&out);
}

/* One stored record with a field overwritten; the offsets follow the layout in chunk.h
 * for a 4-byte key: klen 0, key 2, ts 6, node 14, flags 18, expiry 19, vlen 27, value 31. */
static void bad_record(uint8_t *p, size_t at, const uint8_t *bytes, size_t n, const char *want)
{
    kv_buf raw = KV_BUF_INIT;
    kv_chunk_rec r = {.key = g_key, .klen = 4, .value = g_val, .vlen = 6};
    cr_assert_eq(kv_chunk_add(&raw, &r), KV_OK);
    cr_assert_eq(raw.len, 37);
    memcpy(p, raw.data, raw.len);
    memcpy(p + at, bytes, n);
    const char *why = NULL;
    cr_assert_eq(unpack_rc(raw.len, p, raw.len, &why), KV_ECORRUPT, "want %s", want);
    cr_assert_str_eq(why, want);
    kv_buf_free(&raw);
}

Test(chunk, unpack_refuses_bad_records)
{
    uint8_t p[64];
    bad_record(p, 0, (const uint8_t[]){0, 0}, 2, "bad key length");
    bad_record(p, 0, (const uint8_t[]){0x04, 0x01}, 2, "bad key length"); /* 1025 */
    bad_record(p, 0, (const uint8_t[]){0, 30}, 2, "truncated record");
    bad_record(p, 18, (const uint8_t[]){0x02}, 1, "bad flags");
    bad_record(p, 18, (const uint8_t[]){0x81}, 1, "bad flags");
    bad_record(p, 18, (const uint8_t[]){0x01}, 1, "bad tombstone"); /* with a value */
    bad_record(p, 30, (const uint8_t[]){7}, 1, "truncated record");
    bad_record(p, 27, (const uint8_t[]){0xff, 0xff, 0xff, 0xff}, 4, "bad value length");

    /* A tombstone with an expiry. */
    uint8_t t[64];
    kv_buf raw = KV_BUF_INIT;
    kv_chunk_rec r = {.key = g_key, .klen = 4, .tombstone = true};
    cr_assert_eq(kv_chunk_add(&raw, &r), KV_OK);
    memcpy(t, raw.data, raw.len);
    t[26] = 1;
    const char *why = NULL;
    cr_assert_eq(unpack_rc(raw.len, t, raw.len, &why), KV_ECORRUPT);
    cr_assert_str_eq(why, "bad tombstone");

    /* A good record followed by a few stray bytes: the whole chunk is refused. */
    memcpy(t, raw.data, raw.len);
    memset(t + raw.len, 0, 5);
    cr_assert_eq(unpack_rc(raw.len + 5, t, raw.len + 5, &why), KV_ECORRUPT);
    cr_assert_str_eq(why, "truncated record");
    kv_buf_free(&raw);
}

/* Whatever unpack accepts must be whole records that kv_chunk_next walks to the end. */
static void unpack_survives(size_t raw_len, const uint8_t *payload, size_t plen, size_t *ok)
{
    kv_buf scratch = KV_BUF_INIT;
    size_t count = 0;
    const char *why = NULL;
    int rc = kv_chunk_unpack(raw_len, payload, plen, &scratch, &count, &why);
    CHECK(rc == KV_OK || rc == KV_ECORRUPT || (rc == KV_EINVAL && raw_len == 0));
    if (rc == KV_OK) {
        bool exact = false;
        CHECK(scratch.len == raw_len);
        CHECK(walk((uint8_t *)scratch.data, scratch.len, &exact) == count);
        CHECK(exact);
        (*ok)++;
    } else if (rc == KV_ECORRUPT) {
        CHECK(why != NULL);
    }
    kv_buf_free(&scratch);
}

Test(chunk, flipped_bytes_never_crash)
{
    kv_buf raw = KV_BUF_INIT, out = KV_BUF_INIT;
    small_chunk(&raw, &out);
    uint8_t *p = malloc(raw.len);
    cr_assert_not_null(p);
    size_t ok = 0, lz4_trials = 0;
    /* Every byte of the LZ4 block, flipped three ways. */
    for (size_t i = 0; i < out.len; i++) {
        for (unsigned m = 1; m <= 0x80; m <<= 3) {
            memcpy(p, out.data, out.len);
            p[i] ^= (uint8_t)m;
            unpack_survives(raw.len, p, out.len, &ok);
            lz4_trials++;
        }
    }
    /* Every byte of the raw records sent stored. */
    size_t stored_ok = 0;
    for (size_t i = 0; i < raw.len; i++) {
        memcpy(p, raw.data, raw.len);
        p[i] ^= 0x41;
        unpack_survives(raw.len, p, raw.len, &stored_ok);
    }
    cr_assert_lt(ok, lz4_trials, "some flips must be refused");
    /* Flipping key, version, expiry or value bytes keeps a valid chunk; length bytes do
     * not: both outcomes must occur. */
    cr_assert_gt(stored_ok, 0);
    cr_assert_lt(stored_ok, raw.len);
    free(p);
    kv_buf_free(&raw);
    kv_buf_free(&out);
}

Test(chunk, random_payloads_never_crash)
{
    uint8_t *p = malloc(4096);
    cr_assert_not_null(p);
    size_t ok = 0;
    for (int i = 0; i < 2000; i++) {
        size_t n = rnd() % 4097;
        rnd_fill(p, n);
        unpack_survives(n, p, n, &ok); /* "stored" */
        size_t raw_len = 1 + rnd() % 65536;
        if (raw_len == n)
            raw_len++;
        unpack_survives(raw_len, p, n, &ok); /* "LZ4" */
    }
    free(p);
}
