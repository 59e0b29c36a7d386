/*
 * test_client_list.c — the client library's reading of a key-listing page (GET /v1/kv)
 * against canned bodies: keys percent-decoded to their bytes, versions, a string or null
 * next_cursor, unknown members skipped, and everything that is not a page refused
 * (KV_EPROTO) instead of half-read. The request side is in test_client.c.
 */
#include "client/list.h"
#include "kvstore/client.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

static kv_client_list_page *parse_ok(const char *json)
{
    kv_client_list_page *p = NULL;
    int rc = kvc_list_parse(json, strlen(json), &p);
    cr_assert_eq(rc, KV_OK, "%s: %s", json, kv_strerror(rc));
    cr_assert_not_null(p);
    cr_expect_eq(p->json_len, strlen(json));
    cr_expect_str_eq(p->json, json, "the raw page is kept for --json");
    return p;
}

Test(client_list, reads_keys_versions_and_cursor)
{
    kv_client_list_page *p =
        parse_ok("{\"keys\":[{\"key\":\"a%20b%2F%00%FF:@\",\"version\":\"1732700000123.42\"},"
                 "{\"key\":\"plain\",\"version\":\"5.1\"}],"
                 "\"next_cursor\":\"00ff00ff00ff00ff-706c61696e\"}");
    cr_assert_eq(p->nkeys, 2);
    cr_expect_eq(p->keys[0].klen, 8);
    cr_expect_eq(memcmp(p->keys[0].key, "a b/\0\xff:@", 8), 0);
    cr_expect_eq(p->keys[0].key[8], '\0', "NUL-terminated for convenience");
    cr_expect_str_eq(p->keys[0].version, "1732700000123.42");
    cr_expect_str_eq(p->keys[1].key, "plain");
    cr_expect_str_eq(p->keys[1].version, "5.1");
    cr_assert_not_null(p->next_cursor);
    cr_expect_str_eq(p->next_cursor, "00ff00ff00ff00ff-706c61696e");
    kv_client_list_page_free(p);
}

Test(client_list, null_cursor_empty_pages_and_unknown_members)
{
    kv_client_list_page *p = parse_ok("{\"keys\":[],\"next_cursor\":null}");
    cr_expect_eq(p->nkeys, 0);
    cr_expect_null(p->next_cursor, "null: the listing is complete");
    kv_client_list_page_free(p);

    /* a page of deleted keys: empty, and the listing goes on */
    p = parse_ok(" { \"next_cursor\" : \"0000000000000001-61\" , \"keys\" : [ ] } ");
    cr_expect_eq(p->nkeys, 0);
    cr_expect_str_eq(p->next_cursor, "0000000000000001-61");
    kv_client_list_page_free(p);

    /* members the client does not know (a later server) are skipped, in the page and in
     * each key; JSON escapes in strings are decoded before the percent-encoding */
    p = parse_ok("{\"count\":1,\"keys\":[{\"ttl\":{\"s\":[1,2]},\"version\":\"9.9\","
                 "\"key\":\"\\u0041%42\"}],\"extra\":\"}]\"}");
    cr_assert_eq(p->nkeys, 1);
    cr_expect_str_eq(p->keys[0].key, "AB");
    cr_expect_null(p->next_cursor, "absent cursor: complete");
    kv_client_list_page_free(p);
}

Test(client_list, longest_key_fits)
{
    size_t n = 3 * KV_CLIENT_LIST_KEY_MAX;
    char *json = malloc(n + 100);
    strcpy(json, "{\"keys\":[{\"key\":\"");
    for (size_t i = 0; i < KV_CLIENT_LIST_KEY_MAX; i++)
        strcat(json, "%00");
    strcat(json, "\",\"version\":\"1.1\"}],\"next_cursor\":null}");
    kv_client_list_page *p = parse_ok(json);
    cr_assert_eq(p->nkeys, 1);
    cr_expect_eq(p->keys[0].klen, KV_CLIENT_LIST_KEY_MAX);
    kv_client_list_page_free(p);
    /* one byte more is not a key */
    char *big = malloc(n + 110);
    strcpy(big, "{\"keys\":[{\"key\":\"x");
    strcat(big, json + strlen("{\"keys\":[{\"key\":\""));
    kv_client_list_page *q = (kv_client_list_page *)1;
    cr_expect_eq(kvc_list_parse(big, strlen(big), &q), KV_EPROTO);
    cr_expect_eq(q, (kv_client_list_page *)1, "out written on failure");
    free(big);
    free(json);
}

Test(client_list, what_is_not_a_page_is_refused)
{
    static const char *bad[] = {
        "",
        "[]",
        "{}",
        "{\"keys\":{}}",
        "{\"keys\":[}",
        "{\"keys\":[{\"key\":\"a\",\"version\":\"1.1\"}",
        "{\"keys\":[{\"key\":\"a\",\"version\":\"1.1\"},]}",
        "{\"keys\":[{\"key\":\"a\",\"version\":\"1.1\"} {\"key\":\"b\",\"version\":\"1.1\"}]}",
        "{\"keys\":[\"a\"]}",
        "{\"keys\":[{\"version\":\"1.1\"}]}",
        "{\"keys\":[{\"key\":\"\",\"version\":\"1.1\"}]}",
        "{\"keys\":[{\"key\":\"a%\",\"version\":\"1.1\"}]}",
        "{\"keys\":[{\"key\":\"a%zz\",\"version\":\"1.1\"}]}",
        "{\"keys\":[{\"key\":\"a\"}]}",
        "{\"keys\":[{\"key\":1,\"version\":\"1.1\"}]}",
        "{\"keys\":[],\"next_cursor\":5}",
        "{\"keys\":[],\"next_cursor\":\"\"}",
        "{\"keys\":[],\"next_cursor\":\"a b\"}",
        "{\"keys\":[],\"next_cursor\":\"a&limit=1\"}",
        "{\"keys\":[],\"next_cursor\":\"unterminated}",
        "{\"keys\":[{\"key\":\"a\",\"version\":\"1.1\"}],\"next_cursor\":null",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        kv_client_list_page *p = NULL;
        cr_expect_eq(kvc_list_parse(bad[i], strlen(bad[i]), &p), KV_EPROTO, "accepted: %s", bad[i]);
        cr_expect_null(p);
    }
}
