/*
 * cli.h — the client commands shared by `kvtool` and `kvstore client` (get, put, delete,
 * health, ...). Main thread; blocking.
 */
#ifndef KV_CLI_CLI_H
#define KV_CLI_CLI_H

#include "config/config.h"

/* Exit codes, documented in `--help` and the README. */
enum {
    KV_EXIT_OK = 0,
    KV_EXIT_ERROR = 1,    /* server or network error */
    KV_EXIT_USAGE = 2,    /* bad command line or configuration */
    KV_EXIT_NOTFOUND = 3, /* the key does not exist */
    KV_EXIT_UNAVAIL = 4,  /* server reachable but not able to serve (503, 507) */
};

/*
 * Run one client command. argv[0] is the command name ("get", "put", ...), followed by
 * its arguments and flags (config flags already removed by kv_config_parse_args). prog is
 * how the user invoked us ("kvtool" or "kvstore client"), for messages and help. Returns
 * a KV_EXIT_* code.
 *
 * cfg supplies client.server_url, client.timeout and limits.max_value (the largest value
 * `get` accepts). cfg may be NULL when argv only asks for help ("help [CMD]", -h/--help),
 * so that help works on a broken configuration; a real command without cfg is a usage
 * error. Flags before the command: --json (applies to the command) and -h/--help.
 *
 * Output contract: see the header comment of cli.c and kv_cli_usage (get writes raw bytes,
 * a newline only on a terminal; --json prints one object on stdout, errors included; a
 * failure prints one line "<prog>: <cmd> <key>: <reason>" on stderr).
 */
int kv_cli_main(const kv_config *cfg, int argc, char **argv, const char *prog);

/* Print the client usage (commands, flags, exit codes) for prog. */
void kv_cli_usage(FILE *out, const char *prog);

#endif
