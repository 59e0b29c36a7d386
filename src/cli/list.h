/*
 * list.h — `kvtool list [PREFIX] [--limit N] [--cursor C] [--all]`: key listing over
 * kv_client_list. Main thread; blocking.
 */
#ifndef KV_CLI_LIST_H
#define KV_CLI_LIST_H

#include "kvstore/client.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* --all stops with an error after this many pages (a listing that never ends: keys
 * written faster than they are listed, or a server that does not move on). */
#define CLI_LIST_MAX_PAGES 1000000u

typedef struct cli_list_opts {
    const char *prefix; /* bytes; may be empty */
    size_t plen;
    uint32_t limit;     /* keys per page; 0 = the server's default */
    const char *cursor; /* start after this (a next_cursor); NULL = from the start */
    bool all;           /* follow next_cursor until the listing ends */
    bool json;          /* print the pages' JSON, one page per line */
    uint64_t max_pages; /* 0 = CLI_LIST_MAX_PAGES */
} cli_list_opts;

/*
 * Run the listing and print to out: one key per line (its bytes, printed safely: control
 * bytes, backslashes and broken UTF-8 as \xNN), or with json each page's JSON as the
 * server sent it on its own line. Without all, one page; when more keys follow, a hint
 * naming the cursor goes to hint (may be NULL). Returns KV_OK, the failing call's kv_err
 * (kv_client_last_error(c) tells more), or KV_EPROTO with a message in msg (msg_cap
 * bytes) when the server does not make progress or the page bound is reached.
 */
int cli_list_run(kv_client *c, const cli_list_opts *o, FILE *out, FILE *hint, char *msg,
                 size_t msg_cap);

/* Parse a --limit value: a whole number 1..KV_CLIENT_LIST_MAX_LIMIT. */
bool cli_list_parse_limit(const char *s, uint32_t *out);

#endif
