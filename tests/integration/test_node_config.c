/*
 * test_node_config.c — configuration through the real `kvstore` binary: `kvstore config`
 * shows the winner and its source for a YAML file + DIST_KV__ env + flags; every kind of
 * bad configuration makes both `kvstore config` and `kvstore servenode` exit non-zero
 * with a message naming the key and the source, and no node starts; good values reach
 * the running node.
 *
 * Each test works in a fresh temp dir; fini kills leftover processes by PID and removes it.
 * Single-threaded.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_tmp[256];

static void setup(void)
{
    th_tmpdir(g_tmp, sizeof g_tmp);
}

static void teardown(void)
{
    th_kill_all();
    th_tmpdir_remove(g_tmp);
}

TestSuite(node_config, .init = setup, .fini = teardown, .timeout = 60);

/* Write text to <tmp>/name; path into out. */
static void write_file(const char *name, const char *text, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", g_tmp, name);
    FILE *f = fopen(out, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

/* Run `kvstore ARGS...` (args NULL-terminated, after the binary). */
static int kvstore(const char *const *args, const char *const *env, char **out, char **err)
{
    const char *argv[64];
    int n = 0;
    argv[n++] = th_bin("kvstore");
    for (int i = 0; args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return th_run(argv, env, NULL, 0, out, err, 10000);
}

/*
 * The line of `kvstore config` output for key: "key = value  # source". Copies the value
 * and the source text (after "# ") out; false if the key is not printed.
 */
static bool config_line(const char *out, const char *key, char *val, size_t vcap, char *src,
                        size_t scap)
{
    size_t klen = strlen(key);
    for (const char *line = out; line && *line;
         line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, key, klen) != 0 || strncmp(line + klen, " = ", 3) != 0)
            continue;
        const char *v = line + klen + 3;
        const char *eol = strchr(v, '\n');
        if (eol == NULL)
            eol = v + strlen(v);
        const char *hash = strstr(v, "  # ");
        if (hash == NULL || hash > eol)
            hash = eol;
        const char *vend = hash;
        while (vend > v && vend[-1] == ' ')
            vend--;
        snprintf(val, vcap, "%.*s", (int)(vend - v), v);
        if (hash < eol) {
            const char *s = hash + 4;
            snprintf(src, scap, "%.*s", (int)(eol - s), s);
        } else {
            snprintf(src, scap, "%s", "");
        }
        return true;
    }
    return false;
}

static void expect_line(const char *out, const char *key, const char *want_val,
                        const char *want_src)
{
    char val[1100], src[1100];
    cr_assert(config_line(out, key, val, sizeof val, src, sizeof src),
              "`kvstore config` does not print %s:\n%s", key, out);
    if (want_val)
        cr_assert_str_eq(val, want_val, "%s = '%s', want '%s'", key, val, want_val);
    cr_assert(strncmp(src, want_src, strlen(want_src)) == 0, "%s source '%s', want '%s...'", key,
              src, want_src);
}

Test(node_config, precedence_flags_over_env_over_file_over_defaults)
{
    char path[400];
    write_file("kv.yaml",
               "server:\n"
               "  port: 1111\n"
               "  host: 10.1.2.3\n"
               "node:\n"
               "  name: file-name\n"
               "storage:\n"
               "  sync: never\n"
               "  sync_interval: 250ms\n"
               "log:\n"
               "  level: warn\n"
               "limits:\n"
               "  max_value: 2MiB\n",
               path, sizeof path);
    const char *env[] = {"DIST_KV__SERVER__PORT=2222", "DIST_KV__NODE__NAME=env-name",
                         "DIST_KV__LOG__LEVEL=error", "DIST_KV__LIMITS__IDLE_TIMEOUT=2m", NULL};
    const char *args[] = {"config", "--config",    path,    "--port",
                          "3333",   "--log-level", "debug", NULL};
    char *out, *err;
    int rc = kvstore(args, env, &out, &err);
    cr_assert_eq(rc, 0, "kvstore config failed (%d): %s", rc, err);

    char want[600];
    expect_line(out, "server.port", "3333", "flag --port");
    expect_line(out, "log.level", "debug", "flag --log-level");
    expect_line(out, "node.name", "env-name", "env DIST_KV__NODE__NAME");
    snprintf(want, sizeof want, "file %s:3", path);
    expect_line(out, "server.host", "10.1.2.3", want);
    snprintf(want, sizeof want, "file %s", path);
    expect_line(out, "storage.sync", "never", want);
    expect_line(out, "limits.max_value", NULL, want);
    expect_line(out, "storage.sync_interval", NULL, want);
    expect_line(out, "limits.idle_timeout", NULL, "env DIST_KV__LIMITS__IDLE_TIMEOUT");
    expect_line(out, "limits.max_key", "1024", "default");
    expect_line(out, "client.server_url", "http://127.0.0.1:8080", "default");
    expect_line(out, "limits.max_connections", "4096", "default");
    free(out);
    free(err);
}

Test(node_config, every_flag_form_beats_env)
{
    const char *env[] = {"DIST_KV__SERVER__PORT=2222", NULL};
    const char *forms[][4] = {
        {"config", "--server.port", "4444", NULL},
        {"config", "--server.port=4444", NULL, NULL},
        {"config", "--set", "server.port=4444", NULL},
        {"config", "--port=4444", NULL, NULL},
    };
    for (size_t i = 0; i < sizeof forms / sizeof *forms; i++) {
        char *out, *err, val[64], src[256];
        int rc = kvstore(forms[i], env, &out, &err);
        cr_assert_eq(rc, 0, "form %zu (%s): exit %d: %s", i, forms[i][1], rc, err);
        cr_assert(config_line(out, "server.port", val, sizeof val, src, sizeof src));
        cr_assert_str_eq(val, "4444", "form %s gave %s", forms[i][1], val);
        cr_assert(strncmp(src, "flag", 4) == 0, "form %s: source %s", forms[i][1], src);
        free(out);
        free(err);
    }
    /* Env alone beats the default. */
    const char *args[] = {"config", NULL};
    char *out, *err, val[64], src[256];
    cr_assert_eq(kvstore(args, env, &out, &err), 0);
    cr_assert(config_line(out, "server.port", val, sizeof val, src, sizeof src));
    cr_assert_str_eq(val, "2222");
    cr_assert_str_eq(src, "env DIST_KV__SERVER__PORT");
    free(out);
    free(err);
}

/* One bad configuration and what its error must name. */
typedef struct bad_case {
    const char *what;
    const char *yaml;       /* file contents, or NULL for no --config */
    const char *env[3];     /* extra env entries */
    const char *flags[5];   /* extra flags */
    const char *needles[3]; /* must all appear in stderr; "@FILE" stands for the path */
} bad_case;

static const bad_case bad_cases[] = {
    {"unknown key in file", "server:\n  prot: 1\n", {NULL}, {NULL}, {"server.prot", "@FILE"}},
    {"unknown section in file", "serverr:\n  port: 1\n", {NULL}, {NULL}, {"serverr", "@FILE"}},
    {"unknown key in env", NULL, {"DIST_KV__SERVER__PROT=1"}, {NULL}, {"DIST_KV__SERVER__PROT"}},
    {"unknown dotted flag", NULL, {NULL}, {"--server.prot", "1"}, {"server.prot", "flag"}},
    {"wrong type in file", "server:\n  port: abc\n", {NULL}, {NULL}, {"server.port", "@FILE"}},
    {"wrong type in env",
     NULL,
     {"DIST_KV__SERVER__PORT=abc"},
     {NULL},
     {"server.port", "DIST_KV__SERVER__PORT"}},
    {"wrong type in flag", NULL, {NULL}, {"--port", "abc"}, {"server.port", "--port"}},
    {"port out of range (flag)", NULL, {NULL}, {"--port", "70000"}, {"server.port", "--port"}},
    {"port out of range (file)",
     "server:\n  port: 65536\n",
     {NULL},
     {NULL},
     {"server.port", "@FILE"}},
    {"negative port (env)",
     NULL,
     {"DIST_KV__SERVER__PORT=-1"},
     {NULL},
     {"server.port", "DIST_KV__SERVER__PORT"}},
    {"bad enum in file",
     "storage:\n  sync: sometimes\n",
     {NULL},
     {NULL},
     {"storage.sync", "@FILE", "sometimes"}},
    {"bad enum in env",
     NULL,
     {"DIST_KV__STORAGE__SYNC=sometimes"},
     {NULL},
     {"storage.sync", "DIST_KV__STORAGE__SYNC"}},
    {"bad log level flag", NULL, {NULL}, {"--log-level", "loud"}, {"log.level", "--log-level"}},
    {"bad duration",
     "limits:\n  idle_timeout: 5 parsecs\n",
     {NULL},
     {NULL},
     {"limits.idle_timeout", "@FILE"}},
    {"bad size",
     "storage:\n  segment_bytes: lots\n",
     {NULL},
     {NULL},
     {"storage.segment_bytes", "@FILE"}},
    {"section given a scalar", "server: 5\n", {NULL}, {NULL}, {"server", "@FILE"}},
    {"yaml syntax error", "server:\n  port: [1, 2\n", {NULL}, {NULL}, {"@FILE"}},
    {"yaml tab indentation", "server:\n\tport: 1\n", {NULL}, {NULL}, {"@FILE"}},
};

static void needles_in(const char *text, const bad_case *c, const char *path, const char *ctx)
{
    for (int k = 0; k < 3 && c->needles[k]; k++) {
        const char *n = strcmp(c->needles[k], "@FILE") == 0 ? path : c->needles[k];
        cr_assert(strstr(text, n) != NULL, "%s (%s): message does not mention '%s': %s", c->what,
                  ctx, n, text);
    }
}

static void run_bad(const bad_case *c, int idx)
{
    char path[400] = "", name[32];
    snprintf(name, sizeof name, "bad%d.yaml", idx);
    if (c->yaml)
        write_file(name, c->yaml, path, sizeof path);

    /* `kvstore config` refuses it. */
    const char *args[16];
    int a = 0;
    args[a++] = "config";
    if (c->yaml) {
        args[a++] = "--config";
        args[a++] = path;
    }
    for (int i = 0; c->flags[i]; i++)
        args[a++] = c->flags[i];
    args[a] = NULL;
    char *out, *err;
    int rc = kvstore(args, c->env, &out, &err);
    cr_assert(rc > 0, "%s: kvstore config exit %d, want non-zero (stdout: %s)", c->what, rc, out);
    needles_in(err, c, path, "kvstore config");
    free(out);
    free(err);

    /* `kvstore servenode` refuses it and nothing starts. */
    int port = th_free_port();
    char ps[16], data[400];
    snprintf(ps, sizeof ps, "%d", port);
    snprintf(data, sizeof data, "%s/data%d", g_tmp, idx);
    a = 0;
    args[a++] = "servenode";
    args[a++] = "--server.host";
    args[a++] = "127.0.0.1";
    args[a++] = "--data-dir";
    args[a++] = data;
    bool flag_port = false;
    for (int i = 0; c->flags[i]; i++)
        flag_port |= strcmp(c->flags[i], "--port") == 0;
    if (!flag_port) {
        args[a++] = "--port";
        args[a++] = ps;
    }
    if (c->yaml) {
        args[a++] = "--config";
        args[a++] = path;
    }
    for (int i = 0; c->flags[i]; i++)
        args[a++] = c->flags[i];
    args[a] = NULL;
    int64_t t0 = th_now_ms();
    rc = kvstore(args, c->env, &out, &err);
    cr_assert_neq(rc, -1, "%s: servenode still running after 10 s", c->what);
    cr_assert(rc > 0, "%s: servenode exit %d, want non-zero", c->what, rc);
    cr_assert_lt(th_now_ms() - t0, 5000, "%s: servenode took long to refuse", c->what);
    needles_in(err, c, path, "servenode");
    free(out);
    free(err);
    int fd = th_connect(port, 500);
    cr_assert_lt(fd, 0, "%s: something listens on port %d", c->what, port);
    char lock[450];
    snprintf(lock, sizeof lock, "%s/LOCK", data);
    struct stat st;
    cr_assert_neq(stat(lock, &st), 0, "%s: the node locked its data dir before failing", c->what);
}

Test(node_config, bad_configuration_is_refused_with_key_and_source)
{
    for (size_t i = 0; i < sizeof bad_cases / sizeof *bad_cases; i++)
        run_bad(&bad_cases[i], (int)i);
}

Test(node_config, missing_config_file_is_refused)
{
    char path[400];
    snprintf(path, sizeof path, "%s/does-not-exist.yaml", g_tmp);
    const char *args[] = {"config", "--config", path, NULL};
    char *out, *err;
    int rc = kvstore(args, NULL, &out, &err);
    cr_assert(rc > 0, "exit %d for a missing file", rc);
    cr_assert(strstr(err, path) != NULL, "message does not name the file: %s", err);
    free(out);
    free(err);

    int port = th_free_port();
    char ps[16], data[400];
    snprintf(ps, sizeof ps, "%d", port);
    snprintf(data, sizeof data, "%s/data", g_tmp);
    const char *sargs[] = {"servenode", "--config", path, "--port", ps, "--data-dir", data, NULL};
    rc = kvstore(sargs, NULL, &out, &err);
    cr_assert(rc > 0, "servenode exit %d for a missing file", rc);
    cr_assert(strstr(err, path) != NULL, "servenode message does not name the file: %s", err);
    cr_assert_lt(th_connect(port, 500), 0, "something listens after a config error");
    free(out);
    free(err);
}

Test(node_config, unknown_command_and_arguments_are_refused)
{
    const char *a1[] = {"no-such-command", NULL};
    const char *a2[] = {"servenode", "--no-such-flag", NULL};
    const char *a3[] = {"servenode", "stray", NULL};
    const char *const *cases[] = {a1, a2, a3};
    for (int i = 0; i < 3; i++) {
        char *out, *err;
        int rc = kvstore(cases[i], NULL, &out, &err);
        cr_assert(rc > 0, "`kvstore %s %s` exit %d, want non-zero", cases[i][0],
                  cases[i][1] ? cases[i][1] : "", rc);
        cr_assert(err[0] != '\0', "no message for `kvstore %s`", cases[i][0]);
        free(out);
        free(err);
    }
}

Test(node_config, help_and_version)
{
    const char *h[] = {"--help", NULL};
    char *out, *err;
    cr_assert_eq(kvstore(h, NULL, &out, &err), 0);
    cr_assert(strstr(out, "servenode") && strstr(out, "config"), "--help: %s", out);
    free(out);
    free(err);
    const char *v[] = {"version", NULL};
    cr_assert_eq(kvstore(v, NULL, &out, &err), 0);
    cr_assert(strstr(out, KV_VERSION) != NULL, "version prints %s", out);
    free(out);
    free(err);
    /* Help works even when the configuration is broken. */
    const char *hb[] = {"servenode", "--help", NULL};
    const char *env[] = {"DIST_KV__SERVER__PORT=abc", NULL};
    cr_assert_eq(kvstore(hb, env, &out, &err), 0, "servenode --help with a bad env: %s", err);
    free(out);
    free(err);
}

Test(node_config, configuration_reaches_the_running_node)
{
    char path[400], data[400];
    write_file("node.yaml",
               "limits:\n"
               "  max_value: 16\n"
               "node:\n"
               "  name: yaml-named-node\n",
               path, sizeof path);
    snprintf(data, sizeof data, "%s/data", g_tmp);
    const char *args[] = {"--config", path, NULL};
    const char *env[] = {"DIST_KV__LIMITS__MAX_KEY=8", NULL};
    th_node n;
    cr_assert_eq(th_node_start(&n, data, 0, args, env, 10000), 0);

    th_resp r;
    char why[300];
    cr_assert_eq(th_http(n.port, "PUT", "/v1/kv/12345678", "0123456789abcdef", 16, &r), 0);
    cr_assert_eq(r.status, 204, "8-byte key, 16-byte value: %d %s", r.status, r.body);
    th_resp_free(&r);
    cr_assert_eq(th_http(n.port, "PUT", "/v1/kv/123456789", "v", 1, &r), 0);
    cr_assert(th_is_problem(&r, 414, "key_too_long", why, sizeof why),
              "env limits.max_key=8 not applied: %s", why);
    th_resp_free(&r);
    cr_assert_eq(th_http(n.port, "PUT", "/v1/kv/k", "0123456789abcdefX", 17, &r), 0);
    cr_assert(th_is_problem(&r, 413, "value_too_large", why, sizeof why),
              "file limits.max_value=16 not applied: %s", why);
    th_resp_free(&r);
    cr_assert(th_log_wait(&n, "yaml-named-node", 2000), "log lines do not carry node.name");
    cr_assert_eq(th_node_stop(&n, 10000), 0);

    /* JSON logs: every line of the log is a JSON object. */
    const char *jargs[] = {"--log-format", "json", NULL};
    cr_assert_eq(th_node_start(&n, data, 0, jargs, NULL, 10000), 0);
    cr_assert_eq(th_node_stop(&n, 10000), 0);
    char *log = th_log_read(&n);
    int lines = 0;
    for (char *save = NULL, *l = strtok_r(log, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        size_t len = strlen(l);
        cr_assert(l[0] == '{' && l[len - 1] == '}', "log line is not JSON: %s", l);
        lines++;
    }
    cr_assert_gt(lines, 0, "empty JSON log");
    free(log);
}
