/*
 * kvtool.c — the kvstore client CLI: `kvtool [global flags] <command> [flags] [args]`.
 * Main thread only.
 *
 * Config flags (--server, --config, --set, --client.timeout, ...) may appear anywhere;
 * kv_config_parse_args takes them out and the rest is the command for kv_cli_main (see
 * src/cli/cli.h for the commands, output and exit codes). Help works even when the
 * configuration is broken; a command on a bad configuration exits 2 with one line.
 */
#include "cli/cli.h"
#include "config/config.h"
#include "kvstore/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROG "kvtool"

/* True if the command line asks for help ("help ..." or -h/--help before any "--"). */
static bool wants_help(int argc, char **argv)
{
    if (strcmp(argv[0], "help") == 0)
        return true;
    for (int i = 0; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    return false;
}

int main(int argc, char **argv)
{
    char **rest = calloc((size_t)argc + 1, sizeof(*rest));
    if (!rest) {
        fprintf(stderr, PROG ": out of memory\n");
        return KV_EXIT_ERROR;
    }
    kv_cfg_args args;
    int nrest = 0;
    kv_buf err = KV_BUF_INIT;
    int status;
    if (kv_config_parse_args(argc - 1, argv + 1, &args, rest, &nrest, &err) != KV_OK) {
        fprintf(stderr, PROG ": %s\n", err.len ? err.data : "bad command line");
        status = KV_EXIT_USAGE;
        goto out;
    }

    /* A leading "--" only separates global flags from the command. */
    int first = (nrest > 0 && strcmp(rest[0], "--") == 0) ? 1 : 0;
    if (first >= nrest) {
        kv_cli_usage(stderr, PROG);
        status = KV_EXIT_USAGE;
        goto out;
    }
    if (strcmp(rest[first], "--version") == 0 || strcmp(rest[first], "version") == 0) {
        printf(PROG " %s\n", KV_VERSION);
        status = KV_EXIT_OK;
        goto out;
    }
    /* Help needs no configuration: `kvtool --help`, `kvtool help [cmd]` and
     * `kvtool <cmd> --help` work even when the configuration is broken. */
    if (strcmp(rest[first], "--help") == 0 || strcmp(rest[first], "-h") == 0) {
        kv_cli_usage(stdout, PROG);
        status = KV_EXIT_OK;
        goto out;
    }
    if (wants_help(nrest - first, rest + first)) {
        status = kv_cli_main(NULL, nrest - first, rest + first, PROG);
        goto out;
    }

    kv_config cfg;
    kv_buf_reset(&err);
    if (kv_config_load(&cfg, &args, environ, &err) != KV_OK) {
        fprintf(stderr, PROG ": %s\n", err.len ? err.data : "bad configuration");
        status = KV_EXIT_USAGE;
        goto out;
    }
    kv_log_setup(cfg.log_level, cfg.log_format, PROG);
    status = kv_cli_main(&cfg, nrest - first, rest + first, PROG);
out:
    fflush(stdout);
    kv_buf_free(&err);
    free(rest);
    return status;
}
