/*
 * main.c — the `kvstore` binary: global config flags, then one command (servenode,
 * config, version, client, help). Main thread only.
 *
 * Config flags may appear anywhere on the command line (kv_config_parse_args takes them
 * out); what remains is the command and its own arguments. Help and version work even
 * when the configuration is broken; every other command loads it first and exits 2 with
 * one line on stderr if it is bad, so nothing starts on a bad configuration.
 */
#include "cli/cli.h"
#include "config/config.h"
#include "kvstore/error.h"
#include "node/node.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROG "kvstore"

static const char *const cmd_help[][2] = {
    {"servenode", "run a node until SIGINT or SIGTERM"},
    {"config", "print the effective configuration and where each value came from"},
    {"version", "print the version"},
    {"client", "client commands: get, put, delete, list, health, members, ring "
               "(see `kvstore client --help`)"},
    {"help", "show this help, or `kvstore help COMMAND` for one command"},
};

static void usage_short(FILE *out)
{
    fprintf(out, "usage: " PROG " [global flags] <command> [args]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(cmd_help) / sizeof(cmd_help[0]); i++)
        fprintf(out, "  %-10s %s\n", cmd_help[i][0], cmd_help[i][1]);
}

static void usage_flags(FILE *out)
{
    fprintf(out,
            "\nglobal flags (anywhere on the command line; flags > env > file > defaults):\n"
            "  --config FILE        YAML configuration file, e.g. server: {port: 8080}\n"
            "  --set KEY=VALUE      set any configuration key, e.g. --set storage.sync=always\n"
            "  --KEY VALUE          the same, e.g. --server.port 9000 or --log.level=debug\n"
            "  --port, --host       server.port, server.host\n"
            "  --data-dir, --name   node.data_dir, node.name\n"
            "  --seeds LIST         cluster.seeds (comma-separated host:port)\n"
            "  --server URL         client.server_url\n"
            "  --log-level, --log-format\n"
            "                       log.level, log.format\n"
            "  -h, --help           show help\n"
            "  --version            print the version\n"
            "\nenvironment: DIST_KV__SECTION__KEY=value for any key, e.g. "
            "DIST_KV__SERVER__PORT=9000\n");
}

static void usage_full(FILE *out)
{
    usage_short(out);
    usage_flags(out);
    fprintf(out, "\nconfiguration keys (durations: 250ms, 10s, 2m, 1h or milliseconds; "
                 "sizes: 4096, 16KiB, 64MiB):\n");
    kv_config_print_reference(out);
    fprintf(out, "\nexit status: 0 ok, 1 runtime error, 2 bad command line or configuration\n");
}

static int usage_command(const char *cmd, FILE *out)
{
    if (strcmp(cmd, "servenode") == 0) {
        fprintf(out, "usage: " PROG " servenode [global flags]\n\n"
                     "Run a node: lock node.data_dir, open the store, serve the HTTP API on\n"
                     "server.host:server.port and peer traffic on cluster.host:cluster.port,\n"
                     "join the cluster through cluster.seeds (if any), until SIGINT or SIGTERM;\n"
                     "then announce the leave to the cluster and shut down cleanly.\n");
    } else if (strcmp(cmd, "config") == 0) {
        fprintf(out, "usage: " PROG " config [global flags]\n\n"
                     "Print every configuration key, its effective value and its source\n"
                     "(default, file PATH:LINE, env VAR or flag --FLAG).\n");
    } else if (strcmp(cmd, "version") == 0) {
        fprintf(out, "usage: " PROG " version\n\nPrint the version.\n");
    } else if (strcmp(cmd, "client") == 0) {
        kv_cli_usage(out, PROG " client");
        return 0;
    } else if (strcmp(cmd, "help") == 0) {
        usage_full(out);
        return 0;
    } else {
        fprintf(stderr, PROG ": unknown command '%s' (see `" PROG " --help`)\n", cmd);
        return 2;
    }
    usage_flags(out);
    return 0;
}

static bool is_help(const char *a)
{
    return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

/* Load the configuration or print why not. */
static int load_config(kv_config *cfg, const kv_cfg_args *args)
{
    kv_buf err = KV_BUF_INIT;
    int rc = kv_config_load(cfg, args, environ, &err);
    if (rc != KV_OK)
        fprintf(stderr, PROG ": %s\n", err.len ? err.data : kv_strerror(rc));
    kv_buf_free(&err);
    return rc;
}

/* Commands without arguments of their own refuse leftovers (likely a typo'd flag). */
static int no_extra_args(const char *cmd, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            continue;
        fprintf(stderr, PROG " %s: unexpected argument '%s' (see `" PROG " %s --help`)\n", cmd,
                argv[i], cmd);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    char **rest = calloc((size_t)argc + 1, sizeof(*rest));
    if (!rest) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    kv_cfg_args args;
    int nrest = 0;
    kv_buf err = KV_BUF_INIT;
    if (kv_config_parse_args(argc - 1, argv + 1, &args, rest, &nrest, &err) != KV_OK) {
        fprintf(stderr, PROG ": %s\n", err.data ? err.data : "bad command line");
        kv_buf_free(&err);
        free(rest);
        return 2;
    }
    kv_buf_free(&err);

    /* A leading "--" only separates global flags from the command. */
    int first = (nrest > 0 && strcmp(rest[0], "--") == 0) ? 1 : 0;
    int status;
    if (first >= nrest) {
        usage_short(stderr);
        fprintf(stderr, "\nsee `" PROG " --help` for flags and configuration keys\n");
        status = 2;
        goto out;
    }
    const char *cmd = rest[first];
    int cargc = nrest - first - 1;
    char **cargv = rest + first + 1;

    if (is_help(cmd)) {
        usage_full(stdout);
        status = 0;
        goto out;
    }
    if (strcmp(cmd, "help") == 0) {
        status = cargc > 0 ? usage_command(cargv[0], stdout) : (usage_full(stdout), 0);
        goto out;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf(PROG " %s\n", KV_VERSION);
        status = 0;
        goto out;
    }
    if (cmd[0] == '-') {
        fprintf(stderr, PROG ": unknown flag '%s' (see `" PROG " --help`)\n", cmd);
        status = 2;
        goto out;
    }
    bool known = false;
    for (size_t i = 0; i < sizeof(cmd_help) / sizeof(cmd_help[0]); i++)
        known = known || strcmp(cmd, cmd_help[i][0]) == 0;
    if (!known) {
        fprintf(stderr, PROG ": unknown command '%s' (see `" PROG " --help`)\n", cmd);
        status = 2;
        goto out;
    }

    /* `<command> --help`; for client only directly after "client" (its subcommands have
     * their own help). */
    bool want_help = false;
    for (int i = 0; i < cargc && strcmp(cargv[i], "--") != 0; i++)
        want_help = want_help || is_help(cargv[i]);
    if (strcmp(cmd, "client") == 0) {
        if (cargc == 0) {
            kv_cli_usage(stderr, PROG " client");
            status = 2;
            goto out;
        }
        want_help = is_help(cargv[0]) || strcmp(cargv[0], "help") == 0;
    }
    if (want_help) {
        status = usage_command(cmd, stdout);
        goto out;
    }

    kv_config cfg;
    if (strcmp(cmd, "servenode") == 0) {
        if ((status = no_extra_args(cmd, cargc, cargv)) != 0)
            goto out;
        if (load_config(&cfg, &args) != KV_OK) {
            status = 2;
            goto out;
        }
        kv_log_setup(cfg.log_level, cfg.log_format, cfg.node_name);
        status = kv_node_main(&cfg);
    } else if (strcmp(cmd, "config") == 0) {
        if ((status = no_extra_args(cmd, cargc, cargv)) != 0)
            goto out;
        if (load_config(&cfg, &args) != KV_OK) {
            status = 2;
            goto out;
        }
        kv_config_print(&cfg, stdout);
        status = 0;
    } else { /* client */
        if (load_config(&cfg, &args) != KV_OK) {
            status = 2;
            goto out;
        }
        status = kv_cli_main(&cfg, cargc, cargv, PROG " client");
    }
out:
    fflush(stdout);
    free(rest);
    return status;
}
