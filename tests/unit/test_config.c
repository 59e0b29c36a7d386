/*
 * test_config.c — the configuration as a user sees it: defaults, a YAML file, DIST_KV__*
 * variables and flags in that order of precedence, where each value came from, and one
 * clear error line (naming the key and the source) for every kind of mistake.
 *
 * Every test passes its environment explicitly and writes its files under its own
 * mkdtemp directory, removed at the end.
 */
#include "config/config.h"
#include "kvstore/error.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_dir[256];
static char g_files[8][512];
static int g_nfiles;

static void setup(void)
{
    snprintf(g_dir, sizeof(g_dir), "%s/kvcfg-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert_not_null(mkdtemp(g_dir));
    g_nfiles = 0;
}

static void teardown(void)
{
    for (int i = 0; i < g_nfiles; i++)
        unlink(g_files[i]);
    rmdir(g_dir);
}

TestSuite(config, .init = setup, .fini = teardown);

/* Write text to <tmpdir>/name; returns the path (static storage, valid for the test). */
static const char *write_file(const char *name, const char *text)
{
    cr_assert_lt(g_nfiles, 8);
    char *path = g_files[g_nfiles++];
    snprintf(path, sizeof(g_files[0]), "%s/%s", g_dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

typedef struct result {
    int rc;
    kv_config cfg;
    char err[2048];
    char *rest[32];
    int nrest;
} result;

/* Run parse_args + load on a NULL-terminated argv (without program name) and envp. */
static result *run(const char *const *argv, char **envp)
{
    static result r;
    memset(&r, 0, sizeof(r));
    int argc = 0;
    while (argv && argv[argc])
        argc++;
    kv_cfg_args args;
    kv_buf err = KV_BUF_INIT;
    r.rc = kv_config_parse_args(argc, (char **)argv, &args, r.rest, &r.nrest, &err);
    if (r.rc == KV_OK)
        r.rc = kv_config_load(&r.cfg, &args, envp, &err);
    snprintf(r.err, sizeof(r.err), "%s", err.data ? err.data : "");
    kv_buf_free(&err);
    return &r;
}

static void assert_origin(const kv_config *cfg, const char *key, kv_cfg_source src,
                          const char *where)
{
    kv_cfg_source s;
    const char *w;
    cr_assert_eq(kv_config_origin(cfg, key, &s, &w), KV_OK, "no key %s", key);
    cr_assert_eq(s, src, "%s: source %d, want %d", key, (int)s, (int)src);
    cr_assert_str_eq(w, where, "%s: where '%s', want '%s'", key, w, where);
}

/* The error happened, is a config error, and its one line names all of needles. */
static void assert_error(const result *r, const char *n1, const char *n2, const char *n3)
{
    cr_assert_eq(r->rc, KV_ECONFIG, "rc %d, err '%s'", r->rc, r->err);
    cr_assert_null(strchr(r->err, '\n'), "more than one line: '%s'", r->err);
    const char *needles[] = {n1, n2, n3};
    for (int i = 0; i < 3; i++)
        if (needles[i])
            cr_assert(strstr(r->err, needles[i]), "'%s' not in '%s'", needles[i], r->err);
}

static char *print_config(const kv_config *cfg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    kv_config_print(cfg, f);
    fclose(f);
    return text;
}

/* The line of `kvstore config` output for key. */
static void print_line(const char *text, const char *key, char *out, size_t cap)
{
    char prefix[128];
    snprintf(prefix, sizeof(prefix), "%s = ", key);
    const char *p = text;
    while (p && *p) {
        if (strncmp(p, prefix, strlen(prefix)) == 0) {
            size_t n = strcspn(p, "\n");
            snprintf(out, cap, "%.*s", (int)n, p);
            return;
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    cr_assert_fail("no line for %s in:\n%s", key, text);
}

Test(config, defaults)
{
    const char *argv[] = {NULL};
    result *r = run(argv, NULL);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    kv_config *c = &r->cfg;
    cr_assert_str_eq(c->server_host, "0.0.0.0");
    cr_assert_eq(c->server_port, 8080);
    cr_assert_str_eq(c->cluster_host, "0.0.0.0");
    cr_assert_eq(c->cluster_port, 7946);
    cr_assert_str_eq(c->cluster_seeds, "");
    cr_assert_str_eq(c->node_data_dir, "./data");
    cr_assert_eq(c->storage_sync, KV_SYNC_INTERVAL);
    cr_assert_eq(c->storage_sync_interval_ms, 100);
    cr_assert_eq(c->storage_segment_bytes, 64ull << 20);
    cr_assert_eq(c->replication_n, 3);
    cr_assert_eq(c->replication_r, 2);
    cr_assert_eq(c->replication_w, 2);
    cr_assert_eq(c->replication_sloppy_quorum, false);
    cr_assert_eq(c->limits_max_key, 1024);
    cr_assert_eq(c->limits_max_value, 1u << 20);
    cr_assert_eq(c->limits_max_header, 16u << 10);
    cr_assert_eq(c->limits_max_connections, 4096);
    cr_assert_eq(c->limits_idle_timeout_ms, 60000);
    cr_assert_eq(c->limits_request_timeout_ms, 10000);
    cr_assert_eq(c->log_level, KV_LOG_INFO);
    cr_assert_eq(c->log_format, KV_LOG_TEXT);
    cr_assert_str_eq(c->client_server_url, "http://127.0.0.1:8080");
    cr_assert_eq(c->client_timeout_ms, 10000);
    assert_origin(c, "server.port", KV_CFG_DEFAULT, "");

    char host[256], want[300];
    cr_assert_eq(gethostname(host, sizeof(host)), 0);
    host[255] = '\0';
    snprintf(want, sizeof(want), "%s-8080", host);
    cr_assert_str_eq(c->node_name, want);

    /* kv_config_defaults gives the same thing without any source. */
    kv_config d;
    kv_config_defaults(&d);
    cr_assert_eq(d.server_port, 8080);
    cr_assert_str_eq(d.node_name, want);
    cr_assert_str_eq(kv_sync_mode_name(d.storage_sync), "interval");
}

Test(config, yaml_file_values)
{
    const char *path = write_file("kv.yaml", "# a node\n"
                                             "server:\n"
                                             "  host: 127.0.0.1\n"
                                             "  port: 9000\n"
                                             "node: {name: n1, data_dir: /var/lib/kv}\n"
                                             "storage:\n"
                                             "  sync: always\n"
                                             "  sync_interval: 250ms\n"
                                             "  segment_bytes: 8MiB\n"
                                             "replication: {n: 5, r: 3, w: \"3\"}\n"
                                             "log.level: debug\n"
                                             "client:\n"
                                             "  server_url: http://10.0.0.1:9000\n");
    const char *argv[] = {"--config", path, NULL};
    result *r = run(argv, NULL);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    kv_config *c = &r->cfg;
    cr_assert_str_eq(c->server_host, "127.0.0.1");
    cr_assert_eq(c->server_port, 9000);
    cr_assert_str_eq(c->node_name, "n1");
    cr_assert_str_eq(c->node_data_dir, "/var/lib/kv");
    cr_assert_eq(c->storage_sync, KV_SYNC_ALWAYS);
    cr_assert_eq(c->storage_sync_interval_ms, 250);
    cr_assert_eq(c->storage_segment_bytes, 8ull << 20);
    cr_assert_eq(c->replication_n, 5);
    cr_assert_eq(c->replication_w, 3);
    cr_assert_eq(c->log_level, KV_LOG_DEBUG);
    cr_assert_str_eq(c->client_server_url, "http://10.0.0.1:9000");

    char where[600];
    snprintf(where, sizeof(where), "%s:4", path);
    assert_origin(c, "server.port", KV_CFG_FILE, where);
    snprintf(where, sizeof(where), "%s:11", path);
    assert_origin(c, "log.level", KV_CFG_FILE, where);
    assert_origin(c, "log.format", KV_CFG_DEFAULT, "");
}

Test(config, empty_file_and_empty_section_are_fine)
{
    const char *empty = write_file("empty.yaml", "");
    const char *argv[] = {"--config", empty, NULL};
    cr_assert_eq(run(argv, NULL)->rc, KV_OK);
    const char *sect = write_file("sect.yaml", "server:\nlog: {format: json}\n");
    const char *argv2[] = {"--config=", NULL, NULL};
    char arg[600];
    snprintf(arg, sizeof(arg), "--config=%s", sect);
    argv2[0] = arg;
    result *r = run(argv2, NULL);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    cr_assert_eq(r->cfg.log_format, KV_LOG_JSON);
}

Test(config, env_overrides_file)
{
    const char *path = write_file("kv.yaml", "server:\n  port: 9000\n  host: 127.0.0.1\n");
    char *envp[] = {"HOME=/nowhere", "DIST_KV__SERVER__PORT=9100",
                    "DIST_KV__client__Server_Url=http://example:1", "DIST_KVX=ignored", NULL};
    const char *argv[] = {"--config", path, NULL};
    result *r = run(argv, envp);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    cr_assert_eq(r->cfg.server_port, 9100);
    cr_assert_str_eq(r->cfg.server_host, "127.0.0.1"); /* the file still counts */
    cr_assert_str_eq(r->cfg.client_server_url, "http://example:1");
    assert_origin(&r->cfg, "server.port", KV_CFG_ENV, "DIST_KV__SERVER__PORT");
    assert_origin(&r->cfg, "client.server_url", KV_CFG_ENV, "DIST_KV__client__Server_Url");
}

Test(config, flag_overrides_env)
{
    char *envp[] = {"DIST_KV__SERVER__PORT=9100", "DIST_KV__LOG__LEVEL=warn", NULL};
    const char *argv[] = {"servenode",         "--port", "9200", "--set", "log.level=error",
                          "--server.host=::1", NULL};
    result *r = run(argv, envp);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    cr_assert_eq(r->cfg.server_port, 9200);
    cr_assert_eq(r->cfg.log_level, KV_LOG_ERROR);
    cr_assert_str_eq(r->cfg.server_host, "::1");
    assert_origin(&r->cfg, "server.port", KV_CFG_FLAG, "--port");
    assert_origin(&r->cfg, "log.level", KV_CFG_FLAG, "--set log.level");
    assert_origin(&r->cfg, "server.host", KV_CFG_FLAG, "--server.host");
    cr_assert_eq(r->nrest, 1);
    cr_assert_str_eq(r->rest[0], "servenode");

    /* The later of two flags for one key wins. */
    const char *argv2[] = {"--port", "1", "--server.port", "2", NULL};
    r = run(argv2, NULL);
    cr_assert_eq(r->cfg.server_port, 2);
}

Test(config, print_shows_value_and_source)
{
    const char *path = write_file("kv.yaml", "storage:\n  sync: never\n");
    char *envp[] = {"DIST_KV__SERVER__PORT=9000", NULL};
    const char *argv[] = {"--config", path, "--log-format", "json", NULL};
    result *r = run(argv, envp);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    char *text = print_config(&r->cfg);
    char line[1200], want[700];

    print_line(text, "server.port", line, sizeof(line));
    cr_assert(strstr(line, "= 9000 "), "%s", line);
    cr_assert(strstr(line, "# env DIST_KV__SERVER__PORT"), "%s", line);

    print_line(text, "storage.sync", line, sizeof(line));
    snprintf(want, sizeof(want), "# file %s:2", path);
    cr_assert(strstr(line, "= never "), "%s", line);
    cr_assert(strstr(line, want), "%s", line);

    print_line(text, "log.format", line, sizeof(line));
    cr_assert(strstr(line, "= json ") && strstr(line, "# flag --log-format"), "%s", line);

    print_line(text, "limits.max_value", line, sizeof(line));
    cr_assert(strstr(line, "= 1MiB ") && strstr(line, "# default"), "%s", line);

    /* Sources line up in one column. */
    const char *a = strstr(text, "server.port"), *b = strstr(text, "storage.sync ");
    cr_assert_eq(strchr(a, '#') - a, strchr(b, '#') - b);
    free(text);
}

Test(config, node_name_follows_port)
{
    const char *argv[] = {"--port", "9300", NULL};
    result *r = run(argv, NULL);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    size_t n = strlen(r->cfg.node_name);
    cr_assert(n > 5 && strcmp(r->cfg.node_name + n - 5, "-9300") == 0, "%s", r->cfg.node_name);

    const char *argv2[] = {"--name", "alpha", "--port", "9300", NULL};
    r = run(argv2, NULL);
    cr_assert_str_eq(r->cfg.node_name, "alpha");
}

Test(config, aliases)
{
    const char *argv[] = {"--host",   "127.0.0.2",  "--port",      "0",       "--data-dir",
                          "/tmp/d1",  "--name",     "n7",          "--seeds", "a:1,b:2",
                          "--server", "http://h:3", "--log-level", "debug",   "--log-format=json",
                          NULL};
    result *r = run(argv, NULL);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    cr_assert_str_eq(r->cfg.server_host, "127.0.0.2");
    cr_assert_eq(r->cfg.server_port, 0); /* 0 = pick a free port */
    cr_assert_str_eq(r->cfg.node_data_dir, "/tmp/d1");
    cr_assert_str_eq(r->cfg.node_name, "n7");
    cr_assert_str_eq(r->cfg.cluster_seeds, "a:1,b:2");
    cr_assert_str_eq(r->cfg.client_server_url, "http://h:3");
    cr_assert_eq(r->cfg.log_level, KV_LOG_DEBUG);
    cr_assert_eq(r->cfg.log_format, KV_LOG_JSON);
    assert_origin(&r->cfg, "node.data_dir", KV_CFG_FLAG, "--data-dir");
    cr_assert_eq(r->nrest, 0);
}

Test(config, args_split_and_rest)
{
    const char *argv[] = {"client", "put",  "--ttl", "60",     "k", "--port", "1234",
                          "-f",     "file", "--",    "--port", "x", NULL};
    result *r = run(argv, NULL);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    cr_assert_eq(r->cfg.server_port, 1234);
    const char *want[] = {"client", "put", "--ttl", "60", "k", "-f", "file", "--", "--port", "x"};
    cr_assert_eq(r->nrest, 10);
    for (int i = 0; i < 10; i++)
        cr_assert_str_eq(r->rest[i], want[i]);
}

Test(config, durations_and_sizes)
{
    const char *argv[] = {"--set", "storage.sync_interval=250ms", "--set", "limits.idle_timeout=2s",
                          "--set", "limits.request_timeout=1m",   "--set", "client.timeout=1m30s",
                          "--set", "storage.segment_bytes=64MiB", "--set", "limits.max_header=1KiB",
                          "--set", "limits.max_value=4096",       NULL};
    result *r = run(argv, NULL);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    cr_assert_eq(r->cfg.storage_sync_interval_ms, 250);
    cr_assert_eq(r->cfg.limits_idle_timeout_ms, 2000);
    cr_assert_eq(r->cfg.limits_request_timeout_ms, 60000);
    cr_assert_eq(r->cfg.client_timeout_ms, 90000);
    cr_assert_eq(r->cfg.storage_segment_bytes, 64ull * 1024 * 1024);
    cr_assert_eq(r->cfg.limits_max_header, 1024);
    cr_assert_eq(r->cfg.limits_max_value, 4096);

    /* A bare integer is milliseconds for durations, bytes for sizes; MB is decimal. */
    char *envp[] = {"DIST_KV__STORAGE__SYNC_INTERVAL=1500", "DIST_KV__LIMITS__MAX_VALUE=2MB", NULL};
    r = run(NULL, envp);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    cr_assert_eq(r->cfg.storage_sync_interval_ms, 1500);
    cr_assert_eq(r->cfg.limits_max_value, 2000000);

    char *bad_d[] = {"DIST_KV__STORAGE__SYNC_INTERVAL=5x", NULL};
    assert_error(run(NULL, bad_d), "storage.sync_interval", "'5x' is not a duration",
                 "env DIST_KV__STORAGE__SYNC_INTERVAL");
    char *bad_s[] = {"DIST_KV__STORAGE__SEGMENT_BYTES=64 parsecs", NULL};
    assert_error(run(NULL, bad_s), "storage.segment_bytes", "is not a size",
                 "env DIST_KV__STORAGE__SEGMENT_BYTES");
    char *small[] = {"DIST_KV__STORAGE__SEGMENT_BYTES=100", NULL};
    assert_error(run(NULL, small), "storage.segment_bytes", "out of range", "4KiB");
}

Test(config, booleans)
{
    const char *path = write_file("b.yaml", "replication:\n  sloppy_quorum: true\n");
    const char *argv[] = {"--config", path, NULL};
    result *r = run(argv, NULL);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    cr_assert_eq(r->cfg.replication_sloppy_quorum, true);

    char *envp[] = {"DIST_KV__REPLICATION__SLOPPY_QUORUM=no", NULL};
    r = run(argv, envp);
    cr_assert_eq(r->cfg.replication_sloppy_quorum, false);

    char *bad[] = {"DIST_KV__REPLICATION__SLOPPY_QUORUM=maybe", NULL};
    assert_error(run(NULL, bad), "replication.sloppy_quorum", "not a boolean",
                 "env DIST_KV__REPLICATION__SLOPPY_QUORUM");
}

Test(config, seeds_from_env_and_yaml_sequence)
{
    char *envp[] = {"DIST_KV__CLUSTER__SEEDS= tasks.kv:7946, 10.0.0.2:7946,", NULL};
    result *r = run(NULL, envp);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    cr_assert_str_eq(r->cfg.cluster_seeds, "tasks.kv:7946,10.0.0.2:7946");

    const char *path = write_file("seeds.yaml", "cluster:\n"
                                                "  seeds:\n"
                                                "    - a.example:7946\n"
                                                "    - \"[::1]:7947\"\n");
    const char *argv[] = {"--config", path, NULL};
    r = run(argv, NULL);
    cr_assert_eq(r->rc, KV_OK, "%s", r->err);
    cr_assert_str_eq(r->cfg.cluster_seeds, "a.example:7946,[::1]:7947");

    const char *flow = write_file("flow.yaml", "cluster: {seeds: [x:1, y:2]}\n");
    const char *argv2[] = {"--config", flow, NULL};
    r = run(argv2, NULL);
    cr_assert_str_eq(r->cfg.cluster_seeds, "x:1,y:2");

    char *bad[] = {"DIST_KV__CLUSTER__SEEDS=a:1,nohostport", NULL};
    assert_error(run(NULL, bad), "cluster.seeds", "'nohostport'", "env DIST_KV__CLUSTER__SEEDS");
}

/* ---- every kind of error: KV_ECONFIG, one line, key and source named ---- */

Test(config, error_unknown_key_in_file)
{
    const char *path = write_file("x.yaml", "server:\n  port: 1\n  prot: 2\n");
    const char *argv[] = {"--config", path, NULL};
    char where[600];
    snprintf(where, sizeof(where), "(file %s:3)", path);
    assert_error(run(argv, NULL), "unknown key 'server.prot'", where, NULL);

    const char *sect = write_file("y.yaml", "sever:\n  port: 1\n");
    const char *argv2[] = {"--config", sect, NULL};
    snprintf(where, sizeof(where), "(file %s:2)", sect);
    assert_error(run(argv2, NULL), "unknown key 'sever.port'", where, NULL);
}

Test(config, error_unknown_key_in_env_and_flags)
{
    char *envp[] = {"DIST_KV__SERVER__PROT=1", NULL};
    assert_error(run(NULL, envp), "unknown key 'server.prot'", "env DIST_KV__SERVER__PROT", NULL);
    char *nosep[] = {"DIST_KV__PORT=1", NULL};
    assert_error(run(NULL, nosep), "unknown key", "env DIST_KV__PORT", NULL);

    const char *argv[] = {"--set", "server.prot=1", NULL};
    assert_error(run(argv, NULL), "unknown key 'server.prot'", "flag --set", NULL);
    const char *argv2[] = {"--server.prot", "1", NULL};
    assert_error(run(argv2, NULL), "unknown key 'server.prot'", "flag --server.prot", NULL);
}

Test(config, error_wrong_type)
{
    char *envp[] = {"DIST_KV__SERVER__PORT=abc", NULL};
    assert_error(run(NULL, envp), "server.port: 'abc' is not an integer",
                 "(env DIST_KV__SERVER__PORT)", NULL);

    const char *path = write_file("t.yaml", "limits:\n  max_connections: lots\n");
    const char *argv[] = {"--config", path, NULL};
    char where[600];
    snprintf(where, sizeof(where), "(file %s:2)", path);
    assert_error(run(argv, NULL), "limits.max_connections", "not an integer", where);

    const char *seq = write_file("s.yaml", "server:\n  port: [1, 2]\n");
    const char *argv2[] = {"--config", seq, NULL};
    assert_error(run(argv2, NULL), "server.port", "expected a single value", "s.yaml:2");

    const char *argv3[] = {"--replication.n=three", NULL};
    assert_error(run(argv3, NULL), "replication.n", "not an integer", "flag --replication.n");
}

Test(config, error_out_of_range)
{
    const char *argv[] = {"--port", "70000", NULL};
    assert_error(run(argv, NULL), "server.port", "out of range", "flag --port");
    const char *argv2[] = {"--port", "-1", NULL};
    assert_error(run(argv2, NULL), "server.port", "out of range", "flag --port");
    /* 0 means "pick a free port" for server.port only. */
    const char *argv3[] = {"--cluster.port", "0", NULL};
    assert_error(run(argv3, NULL), "cluster.port", "out of range (1..65535)",
                 "flag --cluster.port");
    char *envp[] = {"DIST_KV__LIMITS__MAX_KEY=2048", NULL};
    assert_error(run(NULL, envp), "limits.max_key", "out of range (1..1024)",
                 "env DIST_KV__LIMITS__MAX_KEY");
}

Test(config, error_bad_enum_lists_allowed_values)
{
    char *envp[] = {"DIST_KV__STORAGE__SYNC=sometimes", NULL};
    assert_error(run(NULL, envp), "storage.sync", "always, interval, never",
                 "env DIST_KV__STORAGE__SYNC");
    const char *argv[] = {"--log-level", "loud", NULL};
    assert_error(run(argv, NULL), "log.level", "debug, info, warn, error", "flag --log-level");
}

Test(config, error_missing_file)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/nope.yaml", g_dir);
    const char *argv[] = {"--config", path, NULL};
    assert_error(run(argv, NULL), "nope.yaml", "No such file or directory", "--config");
    const char *argv2[] = {"--config", g_dir, NULL};
    assert_error(run(argv2, NULL), "Is a directory", NULL, NULL);
}

Test(config, error_yaml_syntax_names_line)
{
    const char *path = write_file("bad.yaml", "server:\n  port: 9000\n prot: 1\n");
    const char *argv[] = {"--config", path, NULL};
    char where[600];
    snprintf(where, sizeof(where), "(file %s:3)", path);
    assert_error(run(argv, NULL), "YAML syntax error", where, NULL);

    const char *flow = write_file("flow.yaml", "server: {port: 1\n");
    const char *argv2[] = {"--config", flow, NULL};
    assert_error(run(argv2, NULL), "YAML syntax error", "flow.yaml:", NULL);
}

Test(config, error_cross_key_quorum)
{
    const char *argv[] = {"--set", "replication.n=1", NULL};
    assert_error(run(argv, NULL), "replication.r", "greater than replication.n",
                 "flag --set replication.n");
    const char *argv2[] = {"--set", "replication.n=5", "--set", "replication.w=5", NULL};
    cr_assert_eq(run(argv2, NULL)->rc, KV_OK);
}

Test(config, error_flag_without_value)
{
    const char *argv[] = {"--port", NULL};
    assert_error(run(argv, NULL), "server.port", "missing value", "flag --port");
    const char *argv2[] = {"--config", NULL};
    assert_error(run(argv2, NULL), "config", "flag --config", NULL);
    const char *argv3[] = {"--set", "storage.sync", NULL};
    assert_error(run(argv3, NULL), "KEY=VALUE", "flag --set", NULL);
}

Test(config, error_leaves_config_untouched)
{
    kv_config cfg;
    memset(&cfg, 0x5a, sizeof(cfg));
    kv_cfg_args args = {0};
    char *envp[] = {"DIST_KV__SERVER__PORT=abc", NULL};
    kv_buf err = KV_BUF_INIT;
    cr_assert_eq(kv_config_load(&cfg, &args, envp, &err), KV_ECONFIG);
    cr_assert_eq(cfg.server_port, 0x5a5a5a5a);
    kv_buf_free(&err);
}

Test(config, duplicate_key_in_file)
{
    const char *path = write_file("dup.yaml", "server:\n  port: 1\n  port: 2\n");
    const char *argv[] = {"--config", path, NULL};
    assert_error(run(argv, NULL), "server.port", "duplicate", "dup.yaml:3");
}

Test(config, reference_lists_every_key_with_env_name)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    kv_config_print_reference(f);
    fclose(f);
    kv_config d;
    kv_config_defaults(&d);
    char *printed = print_config(&d);
    /* every key `kvstore config` knows appears in the reference, with its env name */
    int keys = 0;
    for (char *line = printed; line && *line; keys++) {
        char key[128], env[160];
        cr_assert_eq(sscanf(line, "%127s", key), 1);
        cr_assert(strstr(text, key), "%s missing from reference", key);
        snprintf(env, sizeof(env), "DIST_KV__");
        for (const char *c = key; *c; c++) {
            size_t n = strlen(env);
            if (*c == '.')
                snprintf(env + n, sizeof(env) - n, "__");
            else
                snprintf(env + n, sizeof(env) - n, "%c", (*c >= 'a' && *c <= 'z') ? *c - 32 : *c);
        }
        cr_assert(strstr(text, env), "%s missing from reference", env);
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    cr_assert_geq(keys, 20);
    cr_assert(strstr(text, "64MiB") && strstr(text, "--port"));
    free(text);
    free(printed);
}
