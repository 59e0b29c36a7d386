/*
 * ring.c — the `kvtool ring` table (see ring.h). Pure; any thread.
 *
 * The body is read whole before anything is printed: a member with a missing field or a
 * share that is not a number in [0, 1] makes the body "not understood" rather than a
 * half-printed table.
 */
#include "cli/ring.h"

#include "cli/table.h"

#include "client/jscan.h"
#include "client/json.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define RING_ROWS_MAX 65536

static bool parse_row(const char *obj, const char *end, cli_ring_member *r)
{
    size_t ol = (size_t)(end - obj);
    char self[8];
    double tokens;
    if (!kvc_json_str_field(obj, ol, "name", r->name, sizeof(r->name)) ||
        !kvc_json_str_field(obj, ol, "address", r->address, sizeof(r->address)) ||
        !kvc_jscan_number(obj, end, "primary_share", 0, 1, &r->primary) ||
        !kvc_jscan_number(obj, end, "replica_share", 0, 1, &r->replica) ||
        !kvc_jscan_number(obj, end, "tokens", 0, 1e9, &tokens) ||
        !kvc_jscan_literal(obj, end, "self", self, sizeof(self)))
        return false;
    r->tokens = (unsigned long)tokens;
    r->self = strcmp(self, "true") == 0;
    cli_table_sanitize(r->name);
    cli_table_sanitize(r->address);
    return true;
}

int cli_ring_parse(const char *body, size_t len, cli_ring_member **rows_out, size_t *nrows,
                   double *replicas)
{
    const char *end = body + len, *arr, *arrend, *obj, *oend;
    if (!kvc_jscan_number(body, end, "replicas", 1, 1e6, replicas) ||
        !kvc_jscan_member(body, end, "members", &arr, &arrend) || *arr != '[')
        return -1;
    size_t cap = 16, n = 0;
    cli_ring_member *rows = malloc(cap * sizeof(*rows));
    if (!rows)
        return -1;
    const char *it = arr;
    int more;
    while ((more = kvc_jscan_next(&it, arrend, &obj, &oend)) == 1) {
        if (*obj != '{' || n == RING_ROWS_MAX)
            goto bad;
        if (n == cap) {
            cli_ring_member *grown = realloc(rows, 2 * cap * sizeof(*rows));
            if (!grown)
                goto bad;
            rows = grown;
            cap *= 2;
        }
        memset(&rows[n], 0, sizeof(rows[n]));
        if (!parse_row(obj, oend, &rows[n]))
            goto bad;
        n++;
    }
    if (more != 0)
        goto bad;
    *rows_out = rows;
    *nrows = n;
    return 0;
bad:
    free(rows);
    return -1;
}

int cli_ring_print_table(const char *body, size_t len, FILE *out)
{
    cli_ring_member *rows;
    size_t n;
    double replicas;
    if (cli_ring_parse(body, len, &rows, &n, &replicas) != 0)
        return -1;
    enum { NCOL = 5 };
    static const char *const head[NCOL] = {"NAME", "ADDRESS", "PRIMARY", "REPLICA", "TOKENS"};
    char(*cells)[NCOL][280] = calloc(n ? n : 1, sizeof(*cells));
    if (!cells) {
        free(rows);
        return -1;
    }
    int w[NCOL];
    for (int c = 0; c < NCOL; c++)
        w[c] = (int)strlen(head[c]);
    for (size_t i = 0; i < n; i++) {
        const cli_ring_member *r = &rows[i];
        snprintf(cells[i][0], sizeof(cells[i][0]), "%s%s", r->name, r->self ? " *" : "");
        snprintf(cells[i][1], sizeof(cells[i][1]), "%s", r->address);
        snprintf(cells[i][2], sizeof(cells[i][2]), "%.1f%%", 100.0 * r->primary);
        snprintf(cells[i][3], sizeof(cells[i][3]), "%.1f%%", 100.0 * r->replica);
        snprintf(cells[i][4], sizeof(cells[i][4]), "%lu", r->tokens);
        for (int c = 0; c < NCOL; c++)
            if (cli_table_width(cells[i][c]) > w[c])
                w[c] = cli_table_width(cells[i][c]);
    }
    /* Text columns left-aligned, numbers right-aligned under their heading. */
    for (int c = 0; c < NCOL; c++) {
        cli_table_pad(out, head[c], w[c], c >= 2);
        fputs(c + 1 < NCOL ? "  " : "\n", out);
    }
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < NCOL; c++) {
            cli_table_pad(out, cells[i][c], w[c], c >= 2);
            fputs(c + 1 < NCOL ? "  " : "\n", out);
        }
    fprintf(out,
            "\n%zu members, N = %.0f replicas; * = the node that answered\n"
            "PRIMARY: share of the keys a node is first for; REPLICA: share it holds a copy of\n",
            n, replicas);
    free(cells);
    free(rows);
    return 0;
}
