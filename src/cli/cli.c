/*
 * cli.c — the client commands shared by `kvtool` and `kvstore client` (see cli.h): get,
 * put, delete, health, members, list and ring over the C client library. Main thread; blocking.
 *
 * Output contract (scripts rely on it, keep it stable):
 * - get writes the value's raw bytes to stdout and adds a newline only when stdout is a
 *   terminal, so `kvtool get KEY > FILE` is byte-exact.
 * - --json prints exactly one JSON object and a newline on stdout, for errors too
 *   ({"error":{"code","status","detail"}}); bytes that are not UTF-8 are base64 with an
 *   "encoding" (value) or "key_encoding" (key) member saying so. `list --all` prints one
 *   object per page, each on its own line (then the error object, if a page failed).
 * - Every failure also prints one line on stderr: "<prog>: <cmd> <key>: <reason>".
 * - Exit codes are the KV_EXIT_* values of cli.h.
 */
#include "cli/cli.h"

#include "cli/encode.h"
#include "cli/list.h"
#include "cli/members.h"
#include "cli/ring.h"
#include "cli/status.h"
#include "client/json.h"
#include "kvstore/client.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Flags a command accepts (besides --help). */
enum {
    CLI_F_JSON = 1 << 0,
    CLI_F_TTL = 1 << 1,
    CLI_F_FILE = 1 << 2,
    CLI_F_LIST = 1 << 3,   /* --limit, --cursor, --all */
    CLI_F_READQ = 1 << 4,  /* --consistency, -r N */
    CLI_F_WRITEQ = 1 << 5, /* --consistency, -w N */
};

typedef struct cli_args {
    bool json;
    bool help;
    uint64_t ttl_s;
    const char *file;
    uint32_t limit;     /* list: 0 = the server's default */
    const char *cursor; /* list */
    bool all;           /* list */
    /* get/put/delete: the quorum (kv_client_set_quorum); NULL / 0 = the server's default */
    const char *consistency;
    uint32_t r, w;
    const char *pos[2];
    int npos;
} cli_args;

typedef struct cli_ctx {
    const kv_config *cfg;
    const char *prog;
    const struct cli_cmd *cmd;
    cli_args a;
    kv_client *client;
} cli_ctx;

typedef struct cli_cmd {
    const char *name;
    const char *synopsis; /* arguments, for usage lines */
    const char *summary;
    const char *details; /* extra help text, may be NULL */
    unsigned flags;
    int min_pos, max_pos;
    int (*run)(cli_ctx *x);
} cli_cmd;

static int cmd_get(cli_ctx *x);
static int cmd_put(cli_ctx *x);
static int cmd_delete(cli_ctx *x);
static int cmd_health(cli_ctx *x);
static int cmd_members(cli_ctx *x);
static int cmd_list(cli_ctx *x);
static int cmd_ring(cli_ctx *x);
static int cmd_status(cli_ctx *x);
static int cmd_leave(cli_ctx *x);
static int cmd_remove(cli_ctx *x);

static const cli_cmd cli_cmds[] = {
    {"get", "KEY", "print the value stored under KEY",
     "The value's raw bytes go to stdout; a newline is added only when stdout is a\n"
     "terminal, so `%s get KEY > FILE` writes exactly the stored bytes.\n"
     "With --json: {\"key\":..,\"value\":..,\"etag\":..}; a value that is not UTF-8 is\n"
     "base64 and the object has \"encoding\":\"base64\".\n"
     "-r N or --consistency one|quorum|all: how many replicas must answer (default\n"
     "replication.r); exit 4 when that many cannot.\n",
     CLI_F_JSON | CLI_F_READQ, 1, 1, cmd_get},
    {"put", "KEY [VALUE]", "store VALUE (or -f FILE, or stdin) under KEY",
     "The value is VALUE, or the contents of FILE with -f FILE, or all of stdin when\n"
     "neither is given (binary-safe; `-f -` also reads stdin).\n"
     "With --json: {\"key\":..,\"etag\":..}.\n"
     "-w N or --consistency one|quorum|all: how many replicas must acknowledge (default\n"
     "replication.w); exit 4 when that many cannot.\n",
     CLI_F_JSON | CLI_F_TTL | CLI_F_FILE | CLI_F_WRITEQ, 1, 2, cmd_put},
    {"delete", "KEY", "delete KEY (succeeds whether or not it exists)",
     "With --json: {\"key\":..,\"deleted\":true}.\n"
     "-w N or --consistency one|quorum|all: how many replicas must acknowledge (default\n"
     "replication.w); exit 4 when that many cannot.\n",
     CLI_F_JSON | CLI_F_WRITEQ, 1, 1, cmd_delete},
    {"health", "", "check the server's /healthz and /readyz",
     "Exit 0 when both answer 200, 4 when the server is not ready (503), 1 otherwise.\n"
     "With --json: {\"server\":..,\"healthz\":{\"http_status\":..,\"status\":..},"
     "\"readyz\":{..}}.\n",
     CLI_F_JSON, 0, 0, cmd_health},
    {"members", "", "list the cluster's members as the server sees them",
     "A table: NAME, ADDRESS (host:port of its peer listener), STATE (alive, suspect,\n"
     "dead, left), INCARNATION, RING (joining, normal, leaving, removed) and SINCE (when\n"
     "the server saw the state change, UTC); '*' marks the server itself.\n"
     "With --json: the server's JSON, "
     "{\"node_id\":..,\"members\":[{\"name\":..,\"state\":..},..]}\n"
     "(see GET /v1/cluster/members in api/openapi.yaml).\n",
     CLI_F_JSON, 0, 0, cmd_members},
    {"list", "[PREFIX]", "list the keys that start with PREFIX (all keys without one)",
     "One key per line, its bytes as stored (control bytes, backslashes and bytes that\n"
     "are not UTF-8 printed as \\xNN). Keys come in the cluster's listing order (by ring\n"
     "hash, not alphabetical), each once; deleted and expired keys are not listed.\n"
     "One page (--limit keys, default 100) unless --all, which follows the pages to the\n"
     "end; --cursor C continues after a page (C is the page's next_cursor).\n"
     "With --json: each page as the server sends it, one per line:\n"
     "{\"keys\":[{\"key\":<percent-encoded>,\"version\":..},..],\"next_cursor\":..|null}\n"
     "(see GET /v1/kv in api/openapi.yaml).\n",
     CLI_F_JSON | CLI_F_LIST, 0, 1, cmd_list},
    {"ring", "", "show each member's share of the key space on the hash ring",
     "A table: NAME, ADDRESS, PRIMARY (the share of keys the member is first in the\n"
     "preference list for), REPLICA (the share it holds a copy of, with N replicas),\n"
     "both in percent, and TOKENS (its points on the ring); '*' marks the server itself.\n"
     "With --json: the server's JSON, {\"node_id\":..,\"replicas\":N,\"members\":\n"
     "[{\"name\":..,\"primary_share\":..,\"replica_share\":..},..]}\n"
     "(see GET /v1/cluster/ring in api/openapi.yaml).\n",
     CLI_F_JSON, 0, 0, cmd_ring},
    {"status", "", "show every member's state, share of the key space, keys, bytes and digest",
     "Asks the server for the members and the ring, then every live member for its own\n"
     "figures (at the client address it told in gossip). A table: NAME, STATE, RING (its\n"
     "place in data placement), OWNED (the share of the key space it holds a copy of),\n"
     "KEYS, TOMBSTONES, BYTES (live key + value bytes), STREAM (a joining member's\n"
     "stream in percent, or a leaving member's hand-over) and DIGEST (the root of its\n"
     "anti-entropy tree: members holding the same ranges and the same data show the same\n"
     "digest). A member that could not be asked shows '?' and the reason below the table.\n"
     "With --json: {\"members\":[{\"name\":..,\"state\":..,\"ring_status\":..,\"owned\":..,\n"
     "\"http\":..,\"keys\":..,\"tombstones\":..,\"live_bytes\":..,\"disk_bytes\":..,\n"
     "\"digest\":..,\"error\":..,\"join_percent\":..,\"leave\":{\"gainers\":..,\"done\":..}},..]}\n"
     "(null where a member did not answer, or is not joining / leaving).\n",
     CLI_F_JSON, 0, 0, cmd_status},
    {"leave", "", "make the server's node leave the cluster, handing its data over first",
     "The node (the one --server names) turns `leaving`: it keeps serving while it asks\n"
     "the members that gain its ranges to stream them from it, then leaves the cluster\n"
     "and exits. Returns at once (exit 0); follow it with `%s status` or the node's log.\n"
     "Exit 1 when the node is still joining (it can leave once normal), 4 when it is\n"
     "not ready. With --json: the server's answer, {\"status\":\"leaving\",..}.\n",
     CLI_F_JSON, 0, 0, cmd_leave},
    {"remove", "NODE", "remove a dead member for good; its data is copied from the others",
     "NODE is the member's name (as `%s members` shows). It must be dead (stopped or\n"
     "crashed, and seen dead by the cluster): a live node should leave instead, handing\n"
     "its data over (`leave`). The member is gossiped as left and leaves the ring; the\n"
     "members that gain its ranges copy them from the replicas that remain. A removed\n"
     "node must not come back with its old data directory. Exit 1 when there is no such\n"
     "member or it is not dead. With --json: the server's answer.\n",
     CLI_F_JSON, 1, 1, cmd_remove},
};

#define CLI_NCMDS (sizeof(cli_cmds) / sizeof(cli_cmds[0]))

/* ---- usage -------------------------------------------------------------------------- */

static void usage_config(FILE *out)
{
    fprintf(out, "\nglobal flags:\n"
                 "  --server URL           server to talk to (client.server_url)\n"
                 "  --config FILE          YAML configuration file\n"
                 "  --set KEY=VALUE        any configuration key, e.g. --set client.timeout=2s\n"
                 "\nconfiguration, highest first:\n"
                 "  1. flags: --server URL, --client.server_url URL, --client.timeout DURATION\n"
                 "  2. environment: DIST_KV__CLIENT__SERVER_URL, DIST_KV__CLIENT__TIMEOUT\n"
                 "  3. the YAML file given by --config:  client: {server_url: ..., timeout: 10s}\n"
                 "  4. defaults: client.server_url http://127.0.0.1:8080, client.timeout 10s\n"
                 "  limits.max_value (default 1MiB) bounds the size of a value `get` accepts.\n");
}

static void usage_exit_codes(FILE *out)
{
    fprintf(out, "\nexit codes:\n"
                 "  0  success\n"
                 "  1  error (network, timeout, server error, request rejected)\n"
                 "  2  bad command line or configuration\n"
                 "  3  the key does not exist\n"
                 "  4  server unavailable: not ready, no quorum (503) or out of space (507)\n");
}

void kv_cli_usage(FILE *out, const char *prog)
{
    fprintf(out, "usage: %s [global flags] <command> [flags] [args]\n\ncommands:\n", prog);
    for (size_t i = 0; i < CLI_NCMDS; i++) {
        char line[64];
        snprintf(line, sizeof(line), "%s %s", cli_cmds[i].name, cli_cmds[i].synopsis);
        fprintf(out, "  %-20s %s\n", line, cli_cmds[i].summary);
    }
    fprintf(out,
            "\ncommand flags:\n"
            "  --json                 machine-readable output on stdout (errors too)\n"
            "  --ttl SECONDS          put: the key expires after SECONDS\n"
            "  -f, --file FILE        put: read the value from FILE ('-' for stdin)\n"
            "  --limit N              list: keys per page, 1..1000 (default 100)\n"
            "  --all                  list: follow the pages until the listing ends\n"
            "  --cursor C             list: continue after the page whose next_cursor is C\n"
            "  --consistency LEVEL    get/put/delete: one, quorum or all replicas must answer\n"
            "  -r N                   get: N replicas must answer (1..replication.n)\n"
            "  -w N                   put/delete: N replicas must acknowledge\n"
            "  -h, --help             help for a command: %s <command> --help\n"
            "  --                     end of flags (for keys that start with '-')\n"
            "\noutput: get writes the raw value bytes, plus a newline only when stdout is "
            "a\nterminal, so `%s get KEY > FILE` is byte-exact.\n",
            prog, prog);
    usage_config(out);
    usage_exit_codes(out);
}

static void usage_cmd(FILE *out, const char *prog, const cli_cmd *cmd)
{
    fprintf(out, "usage: %s %s [flags]%s%s\n\n%s.\n", prog, cmd->name, cmd->synopsis[0] ? " " : "",
            cmd->synopsis, cmd->summary);
    if (cmd->details) {
        fputc('\n', out);
        fprintf(out, cmd->details, prog);
    }
    fprintf(out, "\nflags:\n");
    if (cmd->flags & CLI_F_JSON)
        fprintf(out, "  --json                 machine-readable output on stdout\n");
    if (cmd->flags & CLI_F_TTL)
        fprintf(out, "  --ttl SECONDS          the key expires after SECONDS (positive integer)\n");
    if (cmd->flags & CLI_F_FILE)
        fprintf(out, "  -f, --file FILE        read the value from FILE ('-' for stdin)\n");
    if (cmd->flags & CLI_F_LIST)
        fprintf(out, "  --limit N              keys per page, 1..1000 (default 100)\n"
                     "  --all                  follow the pages until the listing ends\n"
                     "  --cursor C             continue after the page whose next_cursor is C\n");
    if (cmd->flags & (CLI_F_READQ | CLI_F_WRITEQ))
        fprintf(out, "  --consistency LEVEL    one, quorum or all of the key's replicas must %s\n",
                (cmd->flags & CLI_F_READQ) ? "answer" : "acknowledge");
    if (cmd->flags & CLI_F_READQ)
        fprintf(out,
                "  -r, --r N              N replicas must answer (1..replication.n; wins over\n"
                "                         --consistency)\n");
    if (cmd->flags & CLI_F_WRITEQ)
        fprintf(out,
                "  -w, --w N              N replicas must acknowledge (1..replication.n; wins\n"
                "                         over --consistency)\n");
    fprintf(out, "  -h, --help             show this help\n"
                 "  --                     end of flags\n");
    usage_config(out);
    usage_exit_codes(out);
}

static int usage_error(const char *prog, const cli_cmd *cmd, const char *fmt, const char *arg)
{
    fprintf(stderr, "%s: ", prog);
    if (cmd)
        fprintf(stderr, "%s: ", cmd->name);
    fprintf(stderr, fmt, arg);
    if (cmd)
        fprintf(stderr, " (see `%s %s --help`)\n", prog, cmd->name);
    else
        fprintf(stderr, " (see `%s --help`)\n", prog);
    return KV_EXIT_USAGE;
}

/* ---- argument parsing --------------------------------------------------------------- */

static bool is_help(const char *a)
{
    return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

/* A positive decimal number of seconds, without sign, spaces or suffix. */
static bool parse_ttl(const char *s, uint64_t *out)
{
    if (!*s)
        return false;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    if (v == 0)
        return false;
    *out = v;
    return true;
}

/* A replica count for -r / -w: a whole number from 1 to 1000 (the server checks it against
 * replication.n and says so). */
static bool parse_count(const char *s, uint32_t *out)
{
    uint32_t v = 0;
    if (!*s)
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > 100)
            return false;
        v = v * 10 + (uint32_t)(*s - '0');
    }
    if (v == 0 || v > 1000)
        return false;
    *out = v;
    return true;
}

/*
 * Parse a command's arguments (argv after the command name). Flags may come before or
 * after positional arguments; "--" ends flags. Returns KV_EXIT_OK or prints a usage error
 * and returns KV_EXIT_USAGE. --help wins over every other problem.
 */
static int parse_args(cli_ctx *x, int argc, char **argv)
{
    const cli_cmd *cmd = x->cmd;
    cli_args *a = &x->a;
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--") == 0)
            break;
        else if (is_help(argv[i]))
            a->help = true;
    if (a->help)
        return KV_EXIT_OK;

    bool flags_done = false;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (!flags_done && strcmp(arg, "--") == 0) {
            flags_done = true;
            continue;
        }
        if (flags_done || arg[0] != '-' || arg[1] == '\0') {
            if (a->npos >= cmd->max_pos)
                return usage_error(x->prog, cmd, "unexpected argument '%s'", arg);
            a->pos[a->npos++] = arg;
            continue;
        }
        /* --name=value or --name value for flags with a value */
        const char *eq = strchr(arg, '=');
        size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
        bool is_ttl = nlen == 5 && strncmp(arg, "--ttl", 5) == 0;
        bool is_file = (nlen == 2 && strncmp(arg, "-f", 2) == 0) ||
                       (nlen == 6 && strncmp(arg, "--file", 6) == 0);
        if (strcmp(arg, "--json") == 0 && (cmd->flags & CLI_F_JSON)) {
            a->json = true;
            continue;
        }
        bool is_limit = nlen == 7 && strncmp(arg, "--limit", 7) == 0;
        bool is_cursor = nlen == 8 && strncmp(arg, "--cursor", 8) == 0;
        if (strcmp(arg, "--all") == 0 && (cmd->flags & CLI_F_LIST)) {
            a->all = true;
            continue;
        }
        bool is_cons = nlen == 13 && strncmp(arg, "--consistency", 13) == 0;
        bool is_r =
            (nlen == 2 && strncmp(arg, "-r", 2) == 0) || (nlen == 3 && strncmp(arg, "--r", 3) == 0);
        bool is_w =
            (nlen == 2 && strncmp(arg, "-w", 2) == 0) || (nlen == 3 && strncmp(arg, "--w", 3) == 0);
        /* The server reads r on a GET and w on a write: a mixed-up flag would be silently
         * ignored there, so say so here. */
        if (is_r && (cmd->flags & CLI_F_WRITEQ))
            return usage_error(x->prog, cmd, "%s",
                               "-r is for reads (get); a write takes -w N or --consistency");
        if (is_w && (cmd->flags & CLI_F_READQ))
            return usage_error(x->prog, cmd, "%s",
                               "-w is for writes (put, delete); get takes -r N or --consistency");
        if (((is_cons || is_r) && (cmd->flags & CLI_F_READQ)) ||
            ((is_cons || is_w) && (cmd->flags & CLI_F_WRITEQ))) {
            const char *val = eq ? eq + 1 : NULL;
            if (!val) {
                if (i + 1 >= argc)
                    return usage_error(x->prog, cmd, "flag %s needs a value", arg);
                val = argv[++i];
            }
            if (is_cons) {
                if (strcmp(val, "one") != 0 && strcmp(val, "quorum") != 0 &&
                    strcmp(val, "all") != 0)
                    return usage_error(x->prog, cmd,
                                       "--consistency must be one, quorum or all, not '%s'", val);
                a->consistency = val;
            } else if (!parse_count(val, is_r ? &a->r : &a->w)) {
                return usage_error(x->prog, cmd,
                                   is_r ? "-r needs a whole number of replicas (1..replication.n), "
                                          "not '%s'"
                                        : "-w needs a whole number of replicas (1..replication.n), "
                                          "not '%s'",
                                   val);
            }
            continue;
        }
        if ((is_limit || is_cursor) && (cmd->flags & CLI_F_LIST)) {
            const char *val = eq ? eq + 1 : NULL;
            if (!val) {
                if (i + 1 >= argc)
                    return usage_error(x->prog, cmd, "flag %s needs a value", arg);
                val = argv[++i];
            }
            if (is_limit && !cli_list_parse_limit(val, &a->limit))
                return usage_error(x->prog, cmd,
                                   "--limit needs a whole number from 1 to 1000, not '%s'", val);
            if (is_cursor)
                a->cursor = val;
            continue;
        }
        if ((is_ttl && (cmd->flags & CLI_F_TTL)) || (is_file && (cmd->flags & CLI_F_FILE))) {
            const char *val = eq ? eq + 1 : NULL;
            if (!val) {
                if (i + 1 >= argc)
                    return usage_error(x->prog, cmd, "flag %s needs a value", arg);
                val = argv[++i];
            }
            if (is_ttl && !parse_ttl(val, &a->ttl_s))
                return usage_error(x->prog, cmd,
                                   "--ttl needs a positive whole number of seconds, not '%s'", val);
            if (is_file) {
                if (!*val)
                    return usage_error(x->prog, cmd, "%s", "-f needs a file name");
                a->file = val;
            }
            continue;
        }
        return usage_error(x->prog, cmd, "unknown flag '%s'", arg);
    }
    if (a->npos < cmd->min_pos)
        return usage_error(x->prog, cmd, "%s", "missing KEY");
    if (cmd->min_pos > 0 && a->pos[0][0] == '\0')
        return usage_error(x->prog, cmd, "%s", "the key must not be empty");
    if (a->file && a->npos > 1)
        return usage_error(x->prog, cmd, "%s",
                           "give the value as an argument or with -f, not both");
    return KV_EXIT_OK;
}

/* ---- output ------------------------------------------------------------------------- */

static int exit_code(int rc)
{
    switch (rc) {
    case KV_OK:
        return KV_EXIT_OK;
    case KV_ENOTFOUND:
        return KV_EXIT_NOTFOUND;
    case KV_EUNAVAIL:
    case KV_ENOSPC:
        return KV_EXIT_UNAVAIL;
    case KV_EINVAL:
        return KV_EXIT_USAGE;
    default:
        return KV_EXIT_ERROR;
    }
}

/* Write a finished JSON object and a newline to stdout. */
static int emit_json(kv_buf *j)
{
    if (kv_buf_appends(j, "}\n") != KV_OK)
        return KV_ENOMEM;
    fwrite(j->data, 1, j->len, stdout);
    return KV_OK;
}

/*
 * Report a failed call: one line on stderr, and the error object on stdout with --json.
 * what is the text after the command name (the key, or NULL). Returns the exit code.
 */
static int fail(cli_ctx *x, const char *what, int rc, const char *detail)
{
    const kv_client_error *e = x->client ? kv_client_last_error(x->client) : NULL;
    if (!detail)
        detail = e && e->detail[0] ? e->detail : kv_strerror(rc);
    const char *code = e && e->code[0] ? e->code : kv_errname(rc);
    int status = e ? e->http_status : 0;

    fprintf(stderr, "%s: %s", x->prog, x->cmd->name);
    if (what) {
        /* Keys can be 1 KiB of anything: show a safe, bounded prefix. */
        size_t n = strlen(what);
        fputc(' ', stderr);
        cli_print_safe(stderr, what, n > 64 ? 64 : n);
        if (n > 64)
            fputs("...", stderr);
    }
    fputs(": ", stderr);
    if (rc == KV_ENOTFOUND) {
        fputs("key not found", stderr);
    } else {
        cli_print_safe(stderr, detail, strlen(detail));
        if (e && e->code[0])
            fprintf(stderr, " (%s, HTTP %d)", e->code, status);
    }
    fputc('\n', stderr);

    if (x->a.json) {
        kv_buf j = KV_BUF_INIT;
        kv_buf_appends(&j, "{\"error\":{\"code\":\"");
        kv_buf_append_json_str(&j, code, strlen(code));
        kv_buf_printf(&j, "\",\"status\":%d,\"detail\":\"", status);
        /* detail is text from the server or strerror: keep the JSON valid regardless */
        if (cli_utf8_valid(detail, strlen(detail)))
            kv_buf_append_json_str(&j, detail, strlen(detail));
        kv_buf_appends(&j, "\"}");
        emit_json(&j);
        kv_buf_free(&j);
    }
    return exit_code(rc);
}

/* Flush stdout; a failed write (disk full, closed pipe) is an error, not silence. */
static int finish(cli_ctx *x, const char *what)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "writing to stdout failed: %s", strerror(errno));
        x->a.json = false; /* stdout is what failed */
        return fail(x, what, KV_EIO, msg);
    }
    return KV_EXIT_OK;
}

/* ---- input -------------------------------------------------------------------------- */

/* Read all of fd into b (binary-safe). KV_OK, KV_EIO (errno set) or KV_ENOMEM. */
static int read_all(int fd, kv_buf *b)
{
    for (;;) {
        int rc = kv_buf_reserve(b, 65536);
        if (rc)
            return rc;
        ssize_t n = read(fd, b->data + b->len, b->cap - b->len - 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return KV_EIO;
        }
        if (n == 0)
            break;
        b->len += (size_t)n;
    }
    b->data[b->len] = '\0';
    return KV_OK;
}

/* The value for put: the argument, -f FILE, or stdin. Returns an exit code. */
static int read_value(cli_ctx *x, kv_buf *val)
{
    const char *key = x->a.pos[0];
    if (x->a.npos > 1)
        return kv_buf_appends(val, x->a.pos[1]) == KV_OK ? KV_EXIT_OK
                                                         : fail(x, key, KV_ENOMEM, NULL);
    const char *file = x->a.file;
    int fd = STDIN_FILENO;
    if (file && strcmp(file, "-") != 0) {
        fd = open(file, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            char msg[KV_CFG_STR_MAX + 64];
            snprintf(msg, sizeof(msg), "cannot open '%s': %s", file, strerror(errno));
            return fail(x, key, KV_EIO, msg);
        }
    } else if (isatty(STDIN_FILENO)) {
        fprintf(stderr, "%s: reading the value from stdin (end with Ctrl-D)\n", x->prog);
    }
    int rc = read_all(fd, val);
    int saved = errno;
    if (fd != STDIN_FILENO)
        close(fd);
    if (rc != KV_OK) {
        char msg[KV_CFG_STR_MAX + 64];
        snprintf(msg, sizeof(msg), "cannot read %s%s%s: %s", file ? "'" : "",
                 file && strcmp(file, "-") != 0 ? file : "stdin", file ? "'" : "",
                 rc == KV_ENOMEM ? "out of memory" : strerror(saved));
        return fail(x, key, rc, msg);
    }
    return KV_EXIT_OK;
}

/* ---- commands ----------------------------------------------------------------------- */

/* Start a JSON object with the "key" member. */
static void json_key(kv_buf *j, const char *key)
{
    kv_buf_appends(j, "{");
    cli_json_bytes(j, "key", key, strlen(key), "key_encoding");
}

static int cmd_get(cli_ctx *x)
{
    const char *key = x->a.pos[0];
    char *val = NULL;
    size_t vlen = 0;
    char etag[128];
    int rc = kv_client_get(x->client, key, strlen(key), &val, &vlen, etag, sizeof(etag));
    if (rc == KV_EPROTO && strstr(kv_client_last_error(x->client)->detail, "response body")) {
        /* The bound comes from our own configuration: say which key raises it. */
        char msg[700];
        snprintf(msg, sizeof(msg), "%s; raise limits.max_value to accept larger values",
                 kv_client_last_error(x->client)->detail);
        return fail(x, key, rc, msg);
    }
    if (rc != KV_OK)
        return fail(x, key, rc, NULL);
    if (x->a.json) {
        kv_buf j = KV_BUF_INIT;
        json_key(&j, key);
        kv_buf_appends(&j, ",");
        cli_json_bytes(&j, "value", val, vlen, "encoding");
        kv_buf_appends(&j, ",\"etag\":\"");
        kv_buf_append_json_str(&j, etag, strlen(etag));
        kv_buf_appends(&j, "\"");
        rc = emit_json(&j);
        kv_buf_free(&j);
    } else {
        fwrite(val, 1, vlen, stdout);
        if (isatty(STDOUT_FILENO))
            fputc('\n', stdout);
    }
    free(val);
    if (rc != KV_OK)
        return fail(x, key, rc, NULL);
    return finish(x, key);
}

static int cmd_put(cli_ctx *x)
{
    const char *key = x->a.pos[0];
    kv_buf val = KV_BUF_INIT;
    int ec = read_value(x, &val);
    if (ec != KV_EXIT_OK) {
        kv_buf_free(&val);
        return ec;
    }
    char etag[128];
    int rc = kv_client_put(x->client, key, strlen(key), val.data, val.len, x->a.ttl_s, etag,
                           sizeof(etag));
    kv_buf_free(&val);
    if (rc != KV_OK)
        return fail(x, key, rc, NULL);
    if (x->a.json) {
        kv_buf j = KV_BUF_INIT;
        json_key(&j, key);
        kv_buf_appends(&j, ",\"etag\":\"");
        kv_buf_append_json_str(&j, etag, strlen(etag));
        kv_buf_appends(&j, "\"");
        emit_json(&j);
        kv_buf_free(&j);
    } else {
        printf("OK\n");
    }
    return finish(x, key);
}

static int cmd_delete(cli_ctx *x)
{
    const char *key = x->a.pos[0];
    int rc = kv_client_delete(x->client, key, strlen(key));
    if (rc != KV_OK)
        return fail(x, key, rc, NULL);
    if (x->a.json) {
        kv_buf j = KV_BUF_INIT;
        json_key(&j, key);
        kv_buf_appends(&j, ",\"deleted\":true");
        emit_json(&j);
        kv_buf_free(&j);
    } else {
        printf("OK\n");
    }
    return finish(x, key);
}

typedef struct probe {
    int http_status;
    char status[64]; /* body "status", else problem "code", else "HTTP n" */
    char detail[256];
} probe;

static int health_probe(cli_ctx *x, const char *path, probe *p)
{
    int status = 0;
    char *body = NULL;
    size_t blen = 0;
    int rc = kv_client_raw_get(x->client, path, &status, &body, &blen);
    if (rc != KV_OK)
        return rc;
    memset(p, 0, sizeof(*p));
    p->http_status = status;
    if (!kvc_json_str_field(body, blen, "status", p->status, sizeof(p->status)) &&
        !kvc_json_str_field(body, blen, "code", p->status, sizeof(p->status)))
        snprintf(p->status, sizeof(p->status), "HTTP %d", status);
    kvc_json_str_field(body, blen, "detail", p->detail, sizeof(p->detail));
    free(body);
    return KV_OK;
}

static void health_json(kv_buf *j, const char *name, const probe *p)
{
    kv_buf_printf(j, ",\"%s\":{\"http_status\":%d,\"status\":\"", name, p->http_status);
    kv_buf_append_json_str(j, p->status, strlen(p->status));
    kv_buf_appends(j, "\"");
    if (p->detail[0]) {
        kv_buf_appends(j, ",\"detail\":\"");
        kv_buf_append_json_str(j, p->detail, strlen(p->detail));
        kv_buf_appends(j, "\"");
    }
    kv_buf_appends(j, "}");
}

static void health_line(const char *name, const probe *p)
{
    printf("%-8s ", name);
    cli_print_safe(stdout, p->status, strlen(p->status));
    if (p->http_status < 200 || p->http_status > 299)
        printf(" (HTTP %d)", p->http_status);
    if (p->detail[0]) {
        fputs(": ", stdout);
        cli_print_safe(stdout, p->detail, strlen(p->detail));
    }
    fputc('\n', stdout);
}

static int cmd_health(cli_ctx *x)
{
    probe h, r;
    int rc = health_probe(x, "/healthz", &h);
    if (rc == KV_OK)
        rc = health_probe(x, "/readyz", &r);
    if (rc != KV_OK)
        return fail(x, NULL, rc, NULL);
    const char *url = x->cfg->client_server_url;
    if (x->a.json) {
        kv_buf j = KV_BUF_INIT;
        kv_buf_appends(&j, "{\"server\":\"");
        kv_buf_append_json_str(&j, url, strlen(url));
        kv_buf_appends(&j, "\"");
        health_json(&j, "healthz", &h);
        health_json(&j, "readyz", &r);
        emit_json(&j);
        kv_buf_free(&j);
    } else {
        printf("%-8s %s\n", "server", url);
        health_line("healthz", &h);
        health_line("readyz", &r);
    }
    int ec = finish(x, NULL);
    if (ec != KV_EXIT_OK)
        return ec;
    bool h_ok = h.http_status >= 200 && h.http_status <= 299;
    bool r_ok = r.http_status >= 200 && r.http_status <= 299;
    if (h_ok && r_ok)
        return KV_EXIT_OK;
    if ((h_ok || h.http_status == 503) && (r_ok || r.http_status == 503))
        return KV_EXIT_UNAVAIL;
    return KV_EXIT_ERROR;
}

/* GET path (a JSON object): printed as it is with --json, else as a table by print; what
 * names the object in the error for a body print cannot read. */
static int cmd_show_json(cli_ctx *x, const char *path,
                         int (*print)(const char *body, size_t len, FILE *out), const char *what)
{
    int status = 0;
    char *body = NULL;
    size_t blen = 0;
    int rc = kv_client_raw_get(x->client, path, &status, &body, &blen);
    if (rc != KV_OK)
        return fail(x, NULL, rc, NULL);
    if (status != 200) {
        free(body);
        return fail(x, NULL, status == 503 ? KV_EUNAVAIL : KV_ESERVER, NULL);
    }
    if (x->a.json) {
        fwrite(body, 1, blen, stdout); /* already one JSON object */
        fputc('\n', stdout);
    } else if (print(body, blen, stdout) != 0) {
        free(body);
        char msg[120];
        snprintf(msg, sizeof(msg), "the server's %s is not in the expected format", what);
        return fail(x, NULL, KV_EPROTO, msg);
    }
    free(body);
    return finish(x, NULL);
}

static int cmd_members(cli_ctx *x)
{
    return cmd_show_json(x, CLI_MEMBERS_PATH, cli_members_print_table, "member list");
}

static int cmd_ring(cli_ctx *x)
{
    return cmd_show_json(x, CLI_RING_PATH, cli_ring_print_table, "ring");
}

static int cmd_status(cli_ctx *x)
{
    kv_client_opts opts = {
        .timeout_ms = x->cfg->client_timeout_ms,
        .max_body = x->cfg->limits_max_value,
    };
    char msg[200] = "";
    int rc = cli_status_run(x->client, &opts, x->a.json, stdout, msg, sizeof(msg));
    if (rc != KV_OK)
        return fail(x, NULL, rc, msg[0] ? msg : NULL);
    return finish(x, NULL);
}

static int cmd_leave(cli_ctx *x)
{
    int status = 0;
    char *body = NULL;
    size_t blen = 0;
    int rc = kv_client_raw_post(x->client, "/v1/cluster/leave", &status, &body, &blen);
    if (rc != KV_OK)
        return fail(x, NULL, rc, NULL);
    if (status != 202) {
        free(body);
        return fail(x, NULL, status == 503 ? KV_EUNAVAIL : KV_ESERVER, NULL);
    }
    if (x->a.json)
        printf("%s\n", body);
    else
        printf("%s is leaving: its ranges go to their new owners first, then it exits\n",
               x->cfg->client_server_url);
    free(body);
    return finish(x, NULL);
}

static int cmd_remove(cli_ctx *x)
{
    const char *name = x->a.pos[0];
    char path[256];
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '_' || *c == '.'))
            return fail(x, name, KV_EINVAL, "a member name has only letters, digits, - _ .");
    if (!*name || strlen(name) > 128)
        return fail(x, name, KV_EINVAL, "a member name has 1 to 128 characters");
    snprintf(path, sizeof(path), "/v1/cluster/remove?node=%s", name);
    int status = 0;
    char *body = NULL;
    size_t blen = 0;
    int rc = kv_client_raw_post(x->client, path, &status, &body, &blen);
    if (rc != KV_OK)
        return fail(x, name, rc, NULL);
    if (status != 200) {
        free(body);
        return fail(x, name, status == 503 ? KV_EUNAVAIL : KV_EBADREQ, NULL);
    }
    if (x->a.json)
        printf("%s\n", body);
    else
        printf("%s removed: the members that gain its ranges copy them from the others\n", name);
    free(body);
    return finish(x, NULL);
}

static int cmd_list(cli_ctx *x)
{
    const char *prefix = x->a.npos > 0 ? x->a.pos[0] : "";
    cli_list_opts o = {
        .prefix = prefix,
        .plen = strlen(prefix),
        .limit = x->a.limit,
        .cursor = x->a.cursor,
        .all = x->a.all,
        .json = x->a.json,
    };
    char msg[200] = "";
    /* "more keys follow" is for people; scripts read next_cursor from --json */
    FILE *hint = !x->a.json && isatty(STDERR_FILENO) ? stderr : NULL;
    int rc = cli_list_run(x->client, &o, stdout, hint, msg, sizeof(msg));
    if (rc != KV_OK)
        return fail(x, x->a.npos > 0 ? prefix : NULL, rc, msg[0] ? msg : NULL);
    return finish(x, NULL);
}

/* ---- entry point -------------------------------------------------------------------- */

static const cli_cmd *find_cmd(const char *name)
{
    for (size_t i = 0; i < CLI_NCMDS; i++)
        if (strcmp(cli_cmds[i].name, name) == 0)
            return &cli_cmds[i];
    return NULL;
}

int kv_cli_main(const kv_config *cfg, int argc, char **argv, const char *prog)
{
    /* Flags before the command: --json applies to the command, --help is global help. */
    bool json = false;
    int i = 0;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (is_help(argv[i])) {
            kv_cli_usage(stdout, prog);
            return KV_EXIT_OK;
        } else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else {
            return usage_error(prog, NULL, "unknown flag '%s'", argv[i]);
        }
    }
    if (i >= argc) {
        kv_cli_usage(stderr, prog);
        return KV_EXIT_USAGE;
    }
    const char *name = argv[i];
    if (strcmp(name, "help") == 0) {
        const cli_cmd *c = i + 1 < argc ? find_cmd(argv[i + 1]) : NULL;
        if (i + 1 < argc && !c)
            return usage_error(prog, NULL, "unknown command '%s'", argv[i + 1]);
        if (c)
            usage_cmd(stdout, prog, c);
        else
            kv_cli_usage(stdout, prog);
        return KV_EXIT_OK;
    }
    const cli_cmd *cmd = find_cmd(name);
    if (!cmd)
        return usage_error(prog, NULL, "unknown command '%s'", name);

    cli_ctx x;
    memset(&x, 0, sizeof(x));
    x.cfg = cfg;
    x.prog = prog;
    x.cmd = cmd;
    int ec = parse_args(&x, argc - i - 1, argv + i + 1);
    if (ec != KV_EXIT_OK)
        return ec;
    if (x.a.help) {
        usage_cmd(stdout, prog, cmd);
        return KV_EXIT_OK;
    }
    x.a.json = x.a.json || json;
    if (!cfg)
        return usage_error(prog, cmd, "%s", "no configuration");

    kv_client_opts opts = {
        .timeout_ms = cfg->client_timeout_ms,
        .max_body = cfg->limits_max_value,
    };
    int rc = kv_client_new(&x.client, cfg->client_server_url, &opts);
    if (rc != KV_OK) {
        fprintf(stderr, "%s: client.server_url '", prog);
        cli_print_safe(stderr, cfg->client_server_url, strlen(cfg->client_server_url));
        fprintf(stderr, "' is not a valid server URL (expected http://host[:port])\n");
        return rc == KV_EINVAL ? KV_EXIT_USAGE : KV_EXIT_ERROR;
    }
    kv_client_quorum q = {.consistency = x.a.consistency, .r = x.a.r, .w = x.a.w};
    if (kv_client_set_quorum(x.client, &q) != KV_OK) {
        kv_client_free(x.client); /* parse_args let only valid levels through */
        return usage_error(prog, cmd, "%s", "bad --consistency");
    }
    ec = cmd->run(&x);
    kv_client_free(x.client);
    return ec;
}
