/* status.c — `kvtool status` (see status.h). */
#include "cli/status.h"

#include "cli/members.h"
#include "cli/ring.h"
#include "cli/table.h"

#include "client/jscan.h"
#include "client/json.h"
#include "common/buf.h"
#include "kvstore/error.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

typedef struct st_row {
    const cli_member *m;
    double owned; /* replica share; < 0 unknown */
    bool have;    /* figures read from the member */
    double keys, tombstones, live_bytes, disk_bytes;
    double stream_pct;            /* joining: percent of its stream done; < 0 when not joining */
    double gainers, gainers_done; /* leaving: members taking its ranges; gainers < 0 if not */
    char digest[17];
    char error[320]; /* room for the address and a reason */
} st_row;

/* Ask one member for its figures. */
static void st_ask(st_row *r, const kv_client_opts *opts)
{
    if (strcmp(r->m->state, "alive") != 0 && strcmp(r->m->state, "suspect") != 0) {
        snprintf(r->error, sizeof(r->error), "not asked: %s", r->m->state);
        return;
    }
    if (!r->m->http[0]) {
        snprintf(r->error, sizeof(r->error), "no client address in gossip (an older node?)");
        return;
    }
    char url[200]; /* "http://" + at most 175 bytes of address */
    snprintf(url, sizeof(url), "http://%s", r->m->http);
    kv_client *c;
    if (kv_client_new(&c, url, opts) != KV_OK) {
        snprintf(r->error, sizeof(r->error), "bad client address %s", r->m->http);
        return;
    }
    int status = 0;
    char *body = NULL;
    size_t blen = 0;
    int rc = kv_client_raw_get(c, CLI_STATUS_DIGEST_PATH, &status, &body, &blen);
    kv_client_free(c);
    if (rc != KV_OK) {
        snprintf(r->error, sizeof(r->error), "%s: %s", r->m->http, kv_strerror(rc));
    } else if (status != 200) {
        snprintf(r->error, sizeof(r->error), "%s answered %d", r->m->http, status);
    } else {
        const char *end = body + blen;
        r->have = kvc_jscan_number(body, end, "keys", 0, 1e18, &r->keys) &&
                  kvc_jscan_number(body, end, "tombstones", 0, 1e18, &r->tombstones) &&
                  kvc_jscan_number(body, end, "live_bytes", 0, 1e18, &r->live_bytes) &&
                  kvc_jscan_number(body, end, "disk_bytes", 0, 1e18, &r->disk_bytes) &&
                  kvc_json_str_field(body, blen, "root", r->digest, sizeof(r->digest));
        r->stream_pct = -1;
        r->gainers = -1;
        if (r->have && memmem(body, blen, "\"leaving\":true", 14) &&
            (!kvc_jscan_number(body, end, "gainers", 0, 1e6, &r->gainers) ||
             !kvc_jscan_number(body, end, "gainers_done", 0, 1e6, &r->gainers_done)))
            r->gainers = -1;
        if (r->have && memmem(body, blen, "\"joining\":true", 14) &&
            !kvc_jscan_number(body, end, "percent", 0, 100, &r->stream_pct))
            r->stream_pct = -1;
        if (!r->have)
            snprintf(r->error, sizeof(r->error), "%s: figures not understood", r->m->http);
        cli_table_sanitize(r->digest);
    }
    free(body);
}

static void st_bytes(char *out, size_t cap, double b)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        u++;
    }
    snprintf(out, cap, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
}

/* "s" as a JSON string (kv_buf_append_json_str escapes; the quotes are ours). */
static void st_jstr(kv_buf *j, const char *s)
{
    kv_buf_appends(j, "\"");
    kv_buf_append_json_str(j, s, strlen(s));
    kv_buf_appends(j, "\"");
}

static void st_json(FILE *out, const st_row *rows, size_t n)
{
    kv_buf j = KV_BUF_INIT;
    kv_buf_appends(&j, "{\"members\":[");
    for (size_t i = 0; i < n; i++) {
        const st_row *r = &rows[i];
        const cli_member *m = r->m;
        kv_buf_appends(&j, i ? ",{\"name\":" : "{\"name\":");
        st_jstr(&j, m->name);
        kv_buf_appends(&j, ",\"state\":");
        st_jstr(&j, m->state);
        kv_buf_appends(&j, ",\"ring_status\":");
        st_jstr(&j, m->ring);
        if (r->owned >= 0)
            kv_buf_printf(&j, ",\"owned\":%.6f", r->owned);
        else
            kv_buf_appends(&j, ",\"owned\":null");
        kv_buf_appends(&j, ",\"http\":");
        if (m->http[0])
            st_jstr(&j, m->http);
        else
            kv_buf_appends(&j, "null");
        if (r->have) {
            kv_buf_printf(&j,
                          ",\"keys\":%.0f,\"tombstones\":%.0f,\"live_bytes\":%.0f,"
                          "\"disk_bytes\":%.0f,\"digest\":\"%s\",\"error\":null",
                          r->keys, r->tombstones, r->live_bytes, r->disk_bytes, r->digest);
            if (r->stream_pct >= 0)
                kv_buf_printf(&j, ",\"join_percent\":%.1f", r->stream_pct);
            else
                kv_buf_appends(&j, ",\"join_percent\":null");
            if (r->gainers >= 0)
                kv_buf_printf(&j, ",\"leave\":{\"gainers\":%.0f,\"done\":%.0f}}", r->gainers,
                              r->gainers_done);
            else
                kv_buf_appends(&j, ",\"leave\":null}");
        } else {
            kv_buf_appends(&j, ",\"keys\":null,\"tombstones\":null,\"live_bytes\":null,"
                               "\"disk_bytes\":null,\"digest\":null,\"error\":");
            st_jstr(&j, r->error);
            kv_buf_appends(&j, ",\"join_percent\":null,\"leave\":null}");
        }
    }
    kv_buf_appends(&j, "]}\n");
    fwrite(j.data, 1, j.len, out);
    kv_buf_free(&j);
}

static void st_table(FILE *out, const st_row *rows, size_t n)
{
    enum { NCOL = 9 };
    static const char *const head[NCOL] = {"NAME",       "STATE", "RING",   "OWNED", "KEYS",
                                           "TOMBSTONES", "BYTES", "STREAM", "DIGEST"};
    char(*cells)[NCOL][200] = calloc(n ? n : 1, sizeof(*cells));
    if (!cells)
        return;
    int w[NCOL];
    for (int c = 0; c < NCOL; c++)
        w[c] = (int)strlen(head[c]);
    size_t asked = 0, agree = 0;
    const char *first = NULL;
    for (size_t i = 0; i < n; i++) {
        const st_row *r = &rows[i];
        snprintf(cells[i][0], sizeof(cells[i][0]), "%s%s", r->m->name, r->m->self ? " *" : "");
        snprintf(cells[i][1], sizeof(cells[i][1]), "%s", r->m->state);
        snprintf(cells[i][2], sizeof(cells[i][2]), "%s", r->m->ring);
        if (r->owned >= 0)
            snprintf(cells[i][3], sizeof(cells[i][3]), "%.1f%%", 100.0 * r->owned);
        else
            snprintf(cells[i][3], sizeof(cells[i][3]), "?");
        if (r->have) {
            snprintf(cells[i][4], sizeof(cells[i][4]), "%.0f", r->keys);
            snprintf(cells[i][5], sizeof(cells[i][5]), "%.0f", r->tombstones);
            st_bytes(cells[i][6], sizeof(cells[i][6]), r->live_bytes);
            if (r->stream_pct >= 0)
                snprintf(cells[i][7], sizeof(cells[i][7]), "join %.0f%%", r->stream_pct);
            else if (r->gainers >= 0)
                snprintf(cells[i][7], sizeof(cells[i][7]), "leave %.0f/%.0f", r->gainers_done,
                         r->gainers);
            else
                snprintf(cells[i][7], sizeof(cells[i][7]), "-");
            snprintf(cells[i][8], sizeof(cells[i][8]), "%s", r->digest);
            asked++;
            if (!first)
                first = r->digest;
            agree += strcmp(first, r->digest) == 0;
        } else {
            for (int c = 4; c < NCOL; c++)
                snprintf(cells[i][c], sizeof(cells[i][c]), "?");
        }
        for (int c = 0; c < NCOL; c++)
            if (cli_table_width(cells[i][c]) > w[c])
                w[c] = cli_table_width(cells[i][c]);
    }
    for (int c = 0; c < NCOL; c++) {
        cli_table_pad(out, head[c], w[c], c >= 3 && c <= 6);
        fputs(c + 1 < NCOL ? "  " : "\n", out);
    }
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < NCOL; c++) {
            cli_table_pad(out, cells[i][c], w[c], c >= 3 && c <= 6);
            fputs(c + 1 < NCOL ? "  " : "\n", out);
        }
    fprintf(out, "\n%zu members, %zu answered; * = the node that answered the member list\n", n,
            asked);
    fprintf(out, "OWNED: share of the key space it holds a copy of; BYTES: live key + value "
                 "bytes; STREAM: a joining member's stream (percent done) or a leaving one's "
                 "hand-over (members that took its ranges / members taking them)\n");
    if (asked > 1)
        fprintf(out,
                "DIGEST: %s (equal digests mean equal data between members that hold the same "
                "ranges, e.g. all of them when N = members)\n",
                agree == asked ? "all equal" : "not all equal");
    for (size_t i = 0; i < n; i++)
        if (!rows[i].have)
            fprintf(out, "%s: %s\n", rows[i].m->name, rows[i].error);
    free(cells);
}

int cli_status_run(kv_client *c, const kv_client_opts *opts, bool json, FILE *out, char *msg,
                   size_t cap)
{
    int status = 0;
    char *body = NULL;
    size_t blen = 0;
    int rc = kv_client_raw_get(c, CLI_MEMBERS_PATH, &status, &body, &blen);
    if (rc != KV_OK)
        return rc;
    if (status != 200) {
        free(body);
        return status == 503 ? KV_EUNAVAIL : KV_ESERVER;
    }
    cli_member *mem = NULL;
    size_t nm = 0;
    if (cli_members_parse(body, blen, &mem, &nm) != 0) {
        free(body);
        snprintf(msg, cap, "the server's member list is not in the expected format");
        return KV_EPROTO;
    }
    free(body);

    /* The ring gives the shares; without it the table still shows everything else. */
    cli_ring_member *ring = NULL;
    size_t nr = 0;
    double replicas = 0;
    body = NULL;
    if (kv_client_raw_get(c, CLI_RING_PATH, &status, &body, &blen) != KV_OK || status != 200 ||
        cli_ring_parse(body, blen, &ring, &nr, &replicas) != 0) {
        ring = NULL;
        nr = 0;
    }
    free(body);

    st_row *rows = calloc(nm ? nm : 1, sizeof(*rows));
    if (!rows) {
        free(mem);
        free(ring);
        return KV_ENOMEM;
    }
    for (size_t i = 0; i < nm; i++) {
        rows[i].m = &mem[i];
        rows[i].owned = -1;
        for (size_t k = 0; k < nr; k++)
            if (strcmp(ring[k].name, mem[i].name) == 0)
                rows[i].owned = ring[k].replica;
        st_ask(&rows[i], opts);
    }
    if (json)
        st_json(out, rows, nm);
    else
        st_table(out, rows, nm);
    free(rows);
    free(mem);
    free(ring);
    return KV_OK;
}
