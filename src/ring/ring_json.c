/*
 * ring_json.c — the ring as GET /v1/cluster/ring's JSON (kv_ring_json, see ring.h).
 * Pure; any thread that may read the ring.
 */
#include "ring/ring.h"

#include "kvstore/error.h"

#include <stdlib.h>
#include <string.h>

/*
 * Length of the well-formed UTF-8 sequence at s[0..n), or 0 if it is not one (overlong
 * forms, surrogates and values past U+10FFFF are not well-formed).
 */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf; /* bounds of the second byte */
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

/* "key":"value" with value escaped; bytes that are not UTF-8 become U+FFFD. */
static int json_str(kv_buf *b, const char *key, const char *val)
{
    int rc = kv_buf_printf(b, "\"%s\":\"", key);
    const unsigned char *s = (const unsigned char *)val;
    size_t n = strlen(val), i = 0;
    while (rc == KV_OK && i < n) {
        size_t run = i, len;
        while (run < n && (len = utf8_seq(s + run, n - run)) > 0)
            run += len;
        if (run > i)
            rc = kv_buf_append_json_str(b, val + i, run - i);
        if (rc == KV_OK && run < n) {
            rc = kv_buf_appends(b, "\\ufffd");
            run++;
        }
        i = run;
    }
    return rc ? rc : kv_buf_appends(b, "\"");
}

typedef struct json_row {
    const kv_ring_member *m;
    size_t index;
} json_row;

static int cmp_row(const void *a, const void *b)
{
    const json_row *x = a, *y = b;
    int c = strcmp(x->m->name, y->m->name);
    return c ? c : memcmp(x->m->id.b, y->m->id.b, SWIM_ID_LEN);
}

int kv_ring_json(const kv_ring *r, size_t n, const swim_member_id *self, kv_buf *out)
{
    if (!r || !self || !out || n == 0)
        return KV_EINVAL;
    size_t count = kv_ring_member_count(r);
    size_t alloc = count ? count : 1;
    json_row *rows = calloc(alloc, sizeof(*rows));
    double *primary = calloc(alloc, sizeof(*primary));
    double *replica = calloc(alloc, sizeof(*replica));
    int rc = rows && primary && replica ? KV_OK : KV_ENOMEM;
    if (rc == KV_OK)
        rc = kv_ring_shares(r, 1, primary);
    if (rc == KV_OK)
        rc = kv_ring_shares(r, n, replica);
    if (rc != KV_OK)
        goto done;
    for (size_t i = 0; i < count; i++) {
        rows[i].m = kv_ring_member_at(r, i);
        rows[i].index = i;
    }
    qsort(rows, count, sizeof(*rows), cmp_row);

    char hex[2 * SWIM_ID_LEN + 1];
    swim_id_to_hex(self, hex);
    rc = kv_buf_printf(out,
                       "{\"node_id\":\"%s\",\"replicas\":%zu,\"tokens_per_member\":%u,"
                       "\"members\":[",
                       hex, n, (unsigned)kv_ring_tokens(r));
    for (size_t i = 0; i < count && rc == KV_OK; i++) {
        const kv_ring_member *m = rows[i].m;
        swim_id_to_hex(&m->id, hex);
        rc = kv_buf_printf(out, "%s{\"id\":\"%s\",", i ? "," : "", hex);
        if (rc == KV_OK)
            rc = json_str(out, "name", m->name);
        if (rc == KV_OK)
            rc = kv_buf_appends(out, ",");
        if (rc == KV_OK)
            rc = json_str(out, "address", m->addr);
        if (rc == KV_OK)
            rc = kv_buf_printf(out,
                               ",\"tokens\":%u,\"primary_share\":%.6f,\"replica_share\":%.6f,"
                               "\"self\":%s}",
                               (unsigned)kv_ring_tokens(r), primary[rows[i].index],
                               replica[rows[i].index],
                               memcmp(m->id.b, self->b, SWIM_ID_LEN) == 0 ? "true" : "false");
    }
    if (rc == KV_OK)
        rc = kv_buf_appends(out, "]}");
done:
    free(rows);
    free(primary);
    free(replica);
    return rc;
}
