/*
 * ring.h — `kvtool ring`: the table printed from GET /v1/cluster/ring. Pure formatting
 * over the response body; any thread.
 */
#ifndef KV_CLI_RING_H
#define KV_CLI_RING_H

#include <stdbool.h>
#include <stdio.h>

#define CLI_RING_PATH "/v1/cluster/ring"

/*
 * Print body (the JSON of GET /v1/cluster/ring, len bytes) to out as a table with the
 * columns NAME, ADDRESS, PRIMARY, REPLICA, TOKENS — one row per member in the server's
 * order, shares as percentages with one decimal, the answering node marked with '*' —
 * and a line saying what the columns mean (with the replica count N). Text from the
 * server is printed safely (control bytes replaced). Returns 0, or -1 if the body is not
 * the expected JSON (nothing printed).
 */
int cli_ring_print_table(const char *body, size_t len, FILE *out);

/* One member of GET /v1/cluster/ring, as cli_ring_parse reads it (names sanitized for a
 * terminal). */
typedef struct cli_ring_member {
    char name[256]; /* 64 bytes of name, room for escapes decoded to U+FFFD */
    char address[256];
    double primary, replica; /* shares in [0, 1] */
    unsigned long tokens;
    bool self;
} cli_ring_member;

/* Parse a ring body: *rows (malloc'ed, caller frees), *nrows, *replicas. 0, or -1 when the
 * body is not understood (nothing allocated then). */
int cli_ring_parse(const char *body, size_t len, cli_ring_member **rows, size_t *nrows,
                   double *replicas);

#endif
