/*
 * list.c — `kvtool list` (see list.h): pages of GET /v1/kv through kv_client_list,
 * printed one key per line or as the server's JSON. Main thread; blocking.
 *
 * Every page either moves the cursor forward or ends the listing (the server promises
 * it); the loop still refuses a cursor that comes back unchanged and stops after
 * max_pages, so a broken server cannot keep it running forever.
 */
#include "cli/list.h"

#include "cli/encode.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

bool cli_list_parse_limit(const char *s, uint32_t *out)
{
    if (!s || !*s || strlen(s) > 4)
        return false;
    uint32_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (uint32_t)(*s - '0');
    }
    if (v < 1 || v > KV_CLIENT_LIST_MAX_LIMIT)
        return false;
    *out = v;
    return true;
}

static void print_page(const kv_client_list_page *p, bool json, FILE *out)
{
    if (json) {
        fwrite(p->json, 1, p->json_len, out);
        fputc('\n', out);
        return;
    }
    for (size_t i = 0; i < p->nkeys; i++) {
        cli_print_safe(out, p->keys[i].key, p->keys[i].klen);
        fputc('\n', out);
    }
}

int cli_list_run(kv_client *c, const cli_list_opts *o, FILE *out, FILE *hint, char *msg,
                 size_t msg_cap)
{
    uint64_t max_pages = o->max_pages ? o->max_pages : CLI_LIST_MAX_PAGES;
    char *cursor = o->cursor && *o->cursor ? strdup(o->cursor) : NULL;
    if (o->cursor && *o->cursor && !cursor)
        return KV_ENOMEM;
    int rc = KV_OK;
    for (uint64_t pages = 0;; pages++) {
        if (pages == max_pages) {
            snprintf(msg, msg_cap,
                     "stopped after %" PRIu64 " pages: the listing did not end (keys written "
                     "faster than they are listed?)",
                     max_pages);
            rc = KV_EPROTO;
            break;
        }
        kv_client_list_page *p = NULL;
        rc = kv_client_list(c, o->prefix, o->plen, o->limit, cursor, &p);
        if (rc != KV_OK)
            break;
        print_page(p, o->json, out);
        if (p->next_cursor && cursor && strcmp(p->next_cursor, cursor) == 0) {
            snprintf(msg, msg_cap, "the server answered with the cursor it was sent; stopping");
            kv_client_list_page_free(p);
            rc = KV_EPROTO;
            break;
        }
        free(cursor);
        cursor = p->next_cursor; /* taken over from the page */
        p->next_cursor = NULL;
        kv_client_list_page_free(p);
        if (!cursor || !o->all)
            break;
    }
    if (rc == KV_OK && cursor && hint)
        fprintf(hint, "more keys follow: add --cursor %s (or --all)\n", cursor);
    free(cursor);
    return rc;
}
