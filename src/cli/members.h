/*
 * members.h — `kvtool members`: the table printed from GET /v1/cluster/members. Pure
 * formatting over the response body; any thread.
 */
#ifndef KV_CLI_MEMBERS_H
#define KV_CLI_MEMBERS_H

#include <stdbool.h>
#include <stdio.h>

#define CLI_MEMBERS_PATH "/v1/cluster/members"

/*
 * Print body (the JSON of GET /v1/cluster/members, len bytes) to out as a table with the
 * columns NAME, ADDRESS, STATE, INCARNATION, RING, SINCE — one row per member, the
 * answering node marked with '*' — and a summary line of the counts by state. Text from
 * the server is printed safely (control bytes replaced). Returns 0, or -1 if the body is
 * not the expected JSON (nothing printed).
 */
int cli_members_print_table(const char *body, size_t len, FILE *out);

/* One member of GET /v1/cluster/members, as cli_members_parse reads it (strings sanitized
 * for a terminal; "-" for a missing ring status or since, "" for a missing http). */
typedef struct cli_member {
    char name[160];
    char address[160];
    char http[176]; /* host:port of its client API, "" when it did not say */
    char state[16];
    char incarnation[24];
    char ring[16];
    char since[40];
    bool self;
} cli_member;

/* Parse a members body: *rows (malloc'ed, caller frees), *nrows. 0, or -1 when the body is
 * not understood (nothing allocated then). */
int cli_members_parse(const char *body, size_t len, cli_member **rows, size_t *nrows);

#endif
