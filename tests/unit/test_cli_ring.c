/*
 * test_cli_ring.c — the `kvtool ring` table (src/cli/ring.c): what a user reads for the
 * JSON the node answers GET /v1/cluster/ring with (made here by kv_ring_json from a real
 * ring, so the two stay in step), text from the server printed safely, and bodies that
 * are not the expected JSON refused with nothing printed.
 */
#include "cli/ring.h"
#include "common/buf.h"
#include "kvstore/error.h"
#include "ring/ring.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Render body; returns the printed text (malloc'ed) and the function's result in *rc. */
static char *render(const char *body, int *rc)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    *rc = cli_ring_print_table(body, strlen(body), f);
    cr_assert_eq(fclose(f), 0);
    return text;
}

/* The line of text that starts with prefix, copied into line. */
static bool line_starting(const char *text, const char *prefix, char *line, size_t cap)
{
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, prefix, strlen(prefix)) == 0) {
            size_t n = strcspn(p, "\n");
            snprintf(line, cap, "%.*s", (int)n, p);
            return true;
        }
    }
    return false;
}

Test(cli_ring, table_from_a_real_ring)
{
    kv_ring_member m[3];
    memset(m, 0, sizeof(m));
    static const char *const names[] = {"gamma", "alpha", "beta"};
    for (int i = 0; i < 3; i++) {
        memset(m[i].id.b, 0x11 * (i + 1), SWIM_ID_LEN);
        snprintf(m[i].name, sizeof(m[i].name), "%s", names[i]);
        snprintf(m[i].addr, sizeof(m[i].addr), "127.0.0.1:%d", 9000 + i);
    }
    kv_ring *r = NULL;
    cr_assert_eq(kv_ring_build(&r, m, 3, 64), KV_OK);
    kv_buf json = KV_BUF_INIT;
    cr_assert_eq(kv_ring_json(r, 2, &m[2].id, &json), KV_OK);
    int rc;
    char *t = render(json.data, &rc);
    cr_assert_eq(rc, 0);

    char line[256];
    cr_assert(line_starting(t, "NAME", line, sizeof(line)), "%s", t);
    cr_assert_not_null(strstr(line, "ADDRESS"));
    cr_assert(strstr(line, "PRIMARY") < strstr(line, "REPLICA") &&
              strstr(line, "REPLICA") < strstr(line, "TOKENS"));
    /* rows in name order, the answering node (beta) starred, shares as percentages */
    const char *a = strstr(t, "\nalpha "), *b = strstr(t, "\nbeta *"), *g = strstr(t, "\ngamma ");
    cr_assert(a && b && g && a < b && b < g, "%s", t);
    for (int i = 0; i < 3; i++) {
        long at = kv_ring_find(r, &m[i].id);
        char primary[16], replica[16];
        snprintf(primary, sizeof(primary), "%.1f%%", 100.0 * kv_ring_share(r, (size_t)at, 1));
        snprintf(replica, sizeof(replica), "%.1f%%", 100.0 * kv_ring_share(r, (size_t)at, 2));
        cr_assert(line_starting(t, names[i], line, sizeof(line)), "%s", t);
        const char *p = strstr(line, primary), *q = strstr(line, replica);
        cr_assert(p && q && p < q, "row '%s' lacks %s then %s", line, primary, replica);
        cr_assert_not_null(strstr(line, m[i].addr));
        cr_assert(strlen(line) > 2 && strcmp(line + strlen(line) - 2, "64") == 0, "%s", line);
    }
    cr_assert_not_null(strstr(t, "3 members"));
    cr_assert_not_null(strstr(t, "N = 2"));
    free(t);
    kv_buf_free(&json);
    kv_ring_free(r);
}

Test(cli_ring, control_bytes_from_the_server_are_not_printed)
{
    const char *body = "{\"node_id\":\"00\",\"replicas\":3,\"tokens_per_member\":8,\"members\":["
                       "{\"id\":\"01\",\"name\":\"evil\\u001b[2J\",\"address\":\"a\\nb:1\","
                       "\"tokens\":8,\"primary_share\":1.000000,\"replica_share\":1.000000,"
                       "\"self\":false}]}";
    int rc;
    char *t = render(body, &rc);
    cr_assert_eq(rc, 0);
    cr_assert_null(strchr(t, '\x1b'));
    cr_assert_not_null(strstr(t, "evil?[2J"), "%s", t);
    cr_assert_not_null(strstr(t, "a?b:1"), "%s", t);
    cr_assert_not_null(strstr(t, "100.0%"), "%s", t);
    free(t);
}

Test(cli_ring, unexpected_bodies_are_refused_without_output)
{
    static const char *const bad[] = {
        "",
        "[]",
        "{\"replicas\":3}",
        "{\"replicas\":3,\"members\":{}}",
        "{\"members\":[]}",
        /* a share that is not a fraction */
        "{\"replicas\":3,\"members\":[{\"name\":\"a\",\"address\":\"b\",\"tokens\":8,"
        "\"primary_share\":1.5,\"replica_share\":0.5,\"self\":true}]}",
        /* a share that is text */
        "{\"replicas\":3,\"members\":[{\"name\":\"a\",\"address\":\"b\",\"tokens\":8,"
        "\"primary_share\":\"0.5\",\"replica_share\":0.5,\"self\":true}]}",
        /* a missing field */
        "{\"replicas\":3,\"members\":[{\"name\":\"a\",\"tokens\":8,"
        "\"primary_share\":0.5,\"replica_share\":0.5,\"self\":true}]}",
        /* truncated */
        "{\"replicas\":3,\"members\":[{\"name\":\"a\",\"address\":\"b\",\"tokens\":8,",
        /* a trailing comma in the array */
        "{\"replicas\":3,\"members\":[{\"name\":\"a\",\"address\":\"b\",\"tokens\":8,"
        "\"primary_share\":0.5,\"replica_share\":0.5,\"self\":true},]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc;
        char *t = render(bad[i], &rc);
        cr_assert_eq(rc, -1, "body %zu accepted: %s", i, bad[i]);
        cr_assert_str_eq(t, "", "body %zu printed something", i);
        free(t);
    }
    /* an empty ring is a table with no rows */
    int rc;
    char *t =
        render("{\"node_id\":\"00\",\"replicas\":3,\"tokens_per_member\":64,\"members\":[]}", &rc);
    cr_assert_eq(rc, 0);
    cr_assert_not_null(strstr(t, "NAME"));
    cr_assert_not_null(strstr(t, "0 members"));
    free(t);
}
