/*
 * members.c — the `kvtool members` table (see members.h). Pure; any thread.
 *
 * The body is read with the client library's small scanner (client/jscan.h) rather than
 * a JSON library: it finds the top-level "members" array, splits it into its objects
 * (strings and nesting respected) and reads each object's fields with kvc_json_str_field
 * and kvc_jscan_literal. Anything unexpected makes the whole body "not understood" rather
 * than a half-printed table.
 */
#include "cli/members.h"

#include "cli/table.h"

#include "client/jscan.h"
#include "client/json.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MEMBERS_MAX 65536

int cli_members_parse(const char *body, size_t len, cli_member **rows_out, size_t *nrows)
{
    const char *end = body + len, *arr, *arrend, *obj, *oend;
    if (!kvc_jscan_member(body, end, "members", &arr, &arrend) || *arr != '[')
        return -1;
    size_t cap = 16, n = 0;
    cli_member *rows = calloc(cap, sizeof(*rows));
    if (!rows)
        return -1;
    const char *it = arr;
    int more;
    while ((more = kvc_jscan_next(&it, arrend, &obj, &oend)) == 1) {
        if (*obj != '{' || n == MEMBERS_MAX)
            goto bad;
        if (n == cap) {
            cli_member *nr = realloc(rows, 2 * cap * sizeof(*rows));
            if (!nr)
                goto bad;
            rows = nr;
            cap *= 2;
        }
        cli_member *r = &rows[n++];
        memset(r, 0, sizeof(*r));
        size_t ol = (size_t)(oend - obj);
        char self[8] = "";
        if (!kvc_json_str_field(obj, ol, "name", r->name, sizeof(r->name)) ||
            !kvc_json_str_field(obj, ol, "address", r->address, sizeof(r->address)) ||
            !kvc_json_str_field(obj, ol, "state", r->state, sizeof(r->state)) ||
            !kvc_jscan_literal(obj, oend, "incarnation", r->incarnation, sizeof(r->incarnation)))
            goto bad;
        if (!kvc_json_str_field(obj, ol, "ring_status", r->ring, sizeof(r->ring)))
            snprintf(r->ring, sizeof(r->ring), "-");
        if (!kvc_json_str_field(obj, ol, "since", r->since, sizeof(r->since)))
            snprintf(r->since, sizeof(r->since), "-");
        if (!kvc_json_str_field(obj, ol, "http", r->http, sizeof(r->http)))
            r->http[0] = '\0'; /* null or absent: an older node */
        r->self =
            kvc_jscan_literal(obj, oend, "self", self, sizeof(self)) && strcmp(self, "true") == 0;
        cli_table_sanitize(r->name);
        cli_table_sanitize(r->address);
        cli_table_sanitize(r->state);
        cli_table_sanitize(r->ring);
        cli_table_sanitize(r->since);
        cli_table_sanitize(r->http);
    }
    if (more != 0)
        goto bad; /* an element not followed by ',' or ']', or a trailing comma */
    *rows_out = rows;
    *nrows = n;
    return 0;
bad:
    free(rows);
    return -1;
}

int cli_members_print_table(const char *body, size_t len, FILE *out)
{
    cli_member *rows;
    size_t n;
    if (cli_members_parse(body, len, &rows, &n) != 0)
        return -1;
    static const char *const head[] = {"NAME", "ADDRESS", "STATE", "INCARNATION", "RING", "SINCE"};
    int w[6];
    for (int c = 0; c < 6; c++)
        w[c] = (int)strlen(head[c]);
    size_t count[5] = {0};
    static const char *const states[] = {"alive", "suspect", "dead", "left"};
    for (size_t i = 0; i < n; i++) {
        const cli_member *r = &rows[i];
        const char *cols[6] = {r->name, r->address, r->state, r->incarnation, r->ring, r->since};
        for (int c = 0; c < 6; c++) {
            int cw = cli_table_width(cols[c]) + (c == 0 && r->self ? 2 : 0);
            if (cw > w[c])
                w[c] = cw;
        }
        size_t s = 0;
        while (s < 4 && strcmp(r->state, states[s]) != 0)
            s++;
        count[s]++;
    }
    for (int c = 0; c < 6; c++) {
        if (c < 5)
            cli_table_pad(out, head[c], w[c] + 2, false);
        else
            fputs(head[c], out);
    }
    fputc('\n', out);
    for (size_t i = 0; i < n; i++) {
        const cli_member *r = &rows[i];
        char name[170];
        snprintf(name, sizeof(name), "%s%s", r->name, r->self ? " *" : "");
        const char *cols[6] = {name, r->address, r->state, r->incarnation, r->ring, r->since};
        for (int c = 0; c < 5; c++)
            cli_table_pad(out, cols[c], w[c] + 2, false);
        fputs(cols[5], out);
        fputc('\n', out);
    }
    fprintf(out, "\n%zu members: %zu alive, %zu suspect, %zu dead, %zu left", n, count[0], count[1],
            count[2], count[3]);
    if (count[4])
        fprintf(out, ", %zu other", count[4]);
    fprintf(out, "; * = the node that answered\n");
    free(rows);
    return 0;
}
