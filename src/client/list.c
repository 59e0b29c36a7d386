/*
 * list.c — reading a key-listing page (see list.h). Pure; any thread.
 *
 * The body comes from the network: every step checks the end of input, nesting is only
 * counted (never recursed into), and anything that is not a page is KV_EPROTO rather than
 * a half-filled result. The scanning is client/jscan.h's and string members are decoded by
 * kvc_json_str_field; this file only finds the "keys" array, walks its objects and tells a
 * null cursor from a string one.
 */
#include "client/list.h"

#include "client/jscan.h"
#include "client/json.h"
#include "common/hex.h"
#include "common/pct.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* A cursor is 16 + 1 + 2 * 1024 characters today; leave room for a future format. */
#define LIST_CURSOR_MAX 4096

static bool url_safe(const char *s)
{
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_' || c == '~'))
            return false;
    }
    return true;
}

void kv_client_list_page_free(kv_client_list_page *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nkeys; i++)
        free(p->keys[i].key);
    free(p->keys);
    free(p->next_cursor);
    free(p->json);
    free(p);
}

/* One key object at [o, oend) into k. KV_OK, KV_EPROTO, KV_ENOMEM. */
static int parse_key(const char *o, const char *oend, char *enc, size_t enc_cap,
                     kv_client_list_key *k)
{
    size_t olen = (size_t)(oend - o);
    if (!kvc_json_str_field(o, olen, "key", enc, enc_cap))
        return KV_EPROTO;
    size_t elen = strlen(enc);
    if (elen == 0 || elen >= enc_cap - 1) /* empty, or possibly cut short */
        return KV_EPROTO;
    uint8_t raw[KV_CLIENT_LIST_KEY_MAX];
    size_t klen = 0;
    if (kv_pct_decode(enc, elen, raw, sizeof(raw), &klen, NULL) != KV_OK || klen == 0)
        return KV_EPROTO;
    if (!kvc_json_str_field(o, olen, "version", k->version, sizeof(k->version)))
        return KV_EPROTO;
    k->key = malloc((size_t)klen + 1);
    if (!k->key)
        return KV_ENOMEM;
    memcpy(k->key, raw, (size_t)klen);
    k->key[klen] = '\0';
    k->klen = (size_t)klen;
    return KV_OK;
}

int kvc_list_parse(const char *json, size_t len, kv_client_list_page **out)
{
    if (!json || !out)
        return KV_EINVAL;
    const char *end = json + len, *arr, *arrend;
    /* One whole object and nothing after it: a cut-off body is not a shorter page. */
    const char *start = kvc_jscan_skip_ws(json, end), *objend = kvc_jscan_skip_value(start, end);
    if (start >= end || *start != '{' || !objend || kvc_jscan_skip_ws(objend, end) != end)
        return KV_EPROTO;
    if (!kvc_jscan_member(json, end, "keys", &arr, &arrend) || *arr != '[')
        return KV_EPROTO;
    kv_client_list_page *pg = calloc(1, sizeof(*pg));
    /* a percent-encoded key is at most three characters a byte; +2 tells a cut-off */
    size_t enc_cap = 3 * KV_CLIENT_LIST_KEY_MAX + 2;
    char *enc = malloc(enc_cap > LIST_CURSOR_MAX + 2 ? enc_cap : LIST_CURSOR_MAX + 2);
    int rc = pg && enc ? KV_OK : KV_ENOMEM;
    size_t cap = 0;
    const char *it = arr, *o, *oend;
    int more = 0;
    while (rc == KV_OK && (more = kvc_jscan_next(&it, arrend, &o, &oend)) == 1) {
        if (*o != '{') {
            rc = KV_EPROTO;
            break;
        }
        if (pg->nkeys == cap) {
            size_t ncap = cap ? 2 * cap : 16;
            kv_client_list_key *nk = realloc(pg->keys, ncap * sizeof(*nk));
            if (!nk) {
                rc = KV_ENOMEM;
                break;
            }
            pg->keys = nk;
            cap = ncap;
        }
        kv_client_list_key *k = &pg->keys[pg->nkeys];
        memset(k, 0, sizeof(*k));
        rc = parse_key(o, oend, enc, enc_cap, k);
        if (rc != KV_OK)
            break;
        pg->nkeys++;
    }
    /* -1: an element not followed by ',' or ']', a missing element or a trailing comma */
    if (rc == KV_OK && more != 0)
        rc = KV_EPROTO;

    const char *cv, *cvend;
    if (rc == KV_OK && kvc_jscan_member(json, end, "next_cursor", &cv, &cvend) &&
        !((size_t)(cvend - cv) == 4 && memcmp(cv, "null", 4) == 0)) {
        if (*cv != '"' || !kvc_json_str_field(json, len, "next_cursor", enc, LIST_CURSOR_MAX + 2))
            rc = KV_EPROTO;
        else if (enc[0] == '\0' || strlen(enc) > LIST_CURSOR_MAX || !url_safe(enc))
            rc = KV_EPROTO;
        else if (!(pg->next_cursor = strdup(enc)))
            rc = KV_ENOMEM;
    }
    if (rc == KV_OK) {
        pg->json = malloc(len + 1);
        if (!pg->json) {
            rc = KV_ENOMEM;
        } else {
            memcpy(pg->json, json, len);
            pg->json[len] = '\0';
            pg->json_len = len;
        }
    }
    free(enc);
    if (rc != KV_OK) {
        kv_client_list_page_free(pg);
        return rc;
    }
    *out = pg;
    return KV_OK;
}
