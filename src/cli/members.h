/*
 * members.h — `kvtool members`: the table printed from GET /v1/cluster/members. Pure
 * formatting over the response body; any thread.
 */
#ifndef KV_CLI_MEMBERS_H
#define KV_CLI_MEMBERS_H

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

#endif
