/*
 * test_kvtool.c — the client CLI (`kvtool` and `kvstore client`) against a real node:
 * put/get/delete/health, the three ways to name the server (--server, env
 * DIST_KV__CLIENT__SERVER_URL, client.server_url in a --config file), values from an
 * argument, -f FILE and stdin, --json output, exit codes (0 ok, 1 server down, 2 usage,
 * 3 not found) and --help on every command.
 *
 * Each test starts its own node in a fresh temp dir and stops it by PID in fini.
 * Single-threaded.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static char g_tmp[256];
static char g_data[300];
static th_node g_node;

static void setup(void)
{
    th_tmpdir(g_tmp, sizeof g_tmp);
    snprintf(g_data, sizeof g_data, "%s/data", g_tmp);
    cr_assert_eq(th_node_start(&g_node, g_data, 0, NULL, NULL, 10000), 0, "node did not start");
}

static void teardown(void)
{
    th_kill_all();
    th_tmpdir_remove(g_tmp);
}

/* End of a test: a graceful stop, so a crash, a leak or a non-zero exit on SIGTERM fails
 * the test (fini cannot fail it; fini only cleans up). */
static void stop_clean(void)
{
    cr_assert(th_node_stop_clean(&g_node, 10000),
              "node did not shut down cleanly on SIGTERM (its log is above)");
}

TestSuite(kvtool, .init = setup, .fini = teardown, .timeout = 60);

typedef struct run_out {
    int rc;
    char *out;
    char *err;
} run_out;

/* Run binary ("kvtool" or "kvstore") with args (NULL-terminated). */
static run_out run(const char *bin, const char *const *args, const char *const *env, const char *in,
                   size_t inlen)
{
    const char *argv[32];
    int n = 0;
    argv[n++] = th_bin(bin);
    for (int i = 0; args[i] && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    run_out r;
    r.rc = th_run(argv, env, in, inlen, &r.out, &r.err, 15000);
    return r;
}

static void run_free(run_out *r)
{
    free(r->out);
    free(r->err);
}

/* stdout is exactly text, optionally followed by one newline. */
static bool out_is(const char *out, const char *text)
{
    size_t n = strlen(text);
    return strncmp(out, text, n) == 0 && (out[n] == '\0' || (out[n] == '\n' && out[n + 1] == '\0'));
}

static void expect_value_via_http(const char *path, const void *val, size_t vlen)
{
    th_resp r;
    cr_assert_eq(th_http(g_node.port, "GET", path, NULL, 0, &r), 0);
    cr_assert_eq(r.status, 200, "GET %s: %d", path, r.status);
    cr_assert_eq(r.body_len, vlen, "GET %s: %zu bytes, want %zu", path, r.body_len, vlen);
    cr_assert(memcmp(r.body, val, vlen) == 0, "GET %s: value differs", path);
    th_resp_free(&r);
}

Test(kvtool, put_and_get_through_server_flag)
{
    const char *put[] = {"--server", g_node.url, "put", "greeting", "hello", NULL};
    run_out r = run("kvtool", put, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "kvtool put: exit %d: %s", r.rc, r.err);
    run_free(&r);
    const char *get[] = {"--server", g_node.url, "get", "greeting", NULL};
    r = run("kvtool", get, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "kvtool get: exit %d: %s", r.rc, r.err);
    cr_assert(out_is(r.out, "hello"), "kvtool get printed '%s'", r.out);
    run_free(&r);
    /* Flags after the command work too. */
    const char *get2[] = {"get", "greeting", "--server", g_node.url, NULL};
    r = run("kvtool", get2, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "kvtool get KEY --server: exit %d: %s", r.rc, r.err);
    cr_assert(out_is(r.out, "hello"), "printed '%s'", r.out);
    run_free(&r);
    expect_value_via_http("/v1/kv/greeting", "hello", 5);
    stop_clean();
}

Test(kvtool, server_from_env)
{
    char env0[128];
    snprintf(env0, sizeof env0, "DIST_KV__CLIENT__SERVER_URL=%s", g_node.url);
    const char *env[] = {env0, NULL};
    const char *put[] = {"put", "greeting", "hello-env", NULL};
    run_out r = run("kvtool", put, env, NULL, 0);
    cr_assert_eq(r.rc, 0, "exit %d: %s", r.rc, r.err);
    run_free(&r);
    const char *get[] = {"get", "greeting", NULL};
    r = run("kvtool", get, env, NULL, 0);
    cr_assert_eq(r.rc, 0, "exit %d: %s", r.rc, r.err);
    cr_assert(out_is(r.out, "hello-env"), "printed '%s'", r.out);
    run_free(&r);
    stop_clean();
}

Test(kvtool, server_from_config_file_and_flag_wins)
{
    char path[400];
    snprintf(path, sizeof path, "%s/client.yaml", g_tmp);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "client:\n  server_url: %s\n  timeout: 5s\n", g_node.url);
    fclose(f);
    const char *put[] = {"--config", path, "put", "greeting", "hello-file", NULL};
    run_out r = run("kvtool", put, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "exit %d: %s", r.rc, r.err);
    run_free(&r);
    const char *get[] = {"--config", path, "get", "greeting", NULL};
    r = run("kvtool", get, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "exit %d: %s", r.rc, r.err);
    cr_assert(out_is(r.out, "hello-file"), "printed '%s'", r.out);
    run_free(&r);

    /* Env beats the file (a dead URL in env makes the same command fail), and a flag beats
     * both. */
    char dead[128], env0[160];
    snprintf(dead, sizeof dead, "http://127.0.0.1:%d", th_free_port());
    snprintf(env0, sizeof env0, "DIST_KV__CLIENT__SERVER_URL=%s", dead);
    const char *env[] = {env0, NULL};
    r = run("kvtool", get, env, NULL, 0);
    cr_assert_eq(r.rc, 1, "env (dead server) should beat the file: exit %d", r.rc);
    run_free(&r);
    const char *getf[] = {"--config", path, "--server", g_node.url, "get", "greeting", NULL};
    r = run("kvtool", getf, env, NULL, 0);
    cr_assert_eq(r.rc, 0, "--server should beat env and file: exit %d: %s", r.rc, r.err);
    run_free(&r);
    stop_clean();
}

Test(kvtool, kvstore_client_is_the_same_cli)
{
    const char *put[] = {"client",   "put",      "greeting", "hi-from-kvstore",
                         "--server", g_node.url, NULL};
    run_out r = run("kvstore", put, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "kvstore client put: exit %d: %s", r.rc, r.err);
    run_free(&r);
    const char *get[] = {"client", "get", "greeting", "--server", g_node.url, NULL};
    r = run("kvstore", get, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "kvstore client get: exit %d: %s", r.rc, r.err);
    cr_assert(out_is(r.out, "hi-from-kvstore"), "printed '%s'", r.out);
    run_free(&r);
    const char *miss[] = {"--server", g_node.url, "client", "get", "nope", NULL};
    r = run("kvstore", miss, NULL, NULL, 0);
    cr_assert_eq(r.rc, 3, "kvstore client get of a missing key: exit %d", r.rc);
    run_free(&r);
    stop_clean();
}

Test(kvtool, missing_key_exits_3)
{
    const char *get[] = {"--server", g_node.url, "get", "no-such-key", NULL};
    run_out r = run("kvtool", get, NULL, NULL, 0);
    cr_assert_eq(r.rc, 3, "exit %d, want 3", r.rc);
    cr_assert_str_eq(r.out, "", "printed a value for a missing key: %s", r.out);
    cr_assert(r.err[0] != '\0', "no message on stderr");
    run_free(&r);

    const char *getj[] = {"--server", g_node.url, "get", "no-such-key", "--json", NULL};
    r = run("kvtool", getj, NULL, NULL, 0);
    cr_assert_eq(r.rc, 3, "--json: exit %d, want 3", r.rc);
    cr_assert(r.out[0] == '{' && strstr(r.out, "key_not_found"), "--json error output: %s", r.out);
    run_free(&r);
    stop_clean();
}

Test(kvtool, server_down_exits_1_with_message)
{
    char dead[128];
    snprintf(dead, sizeof dead, "http://127.0.0.1:%d", th_free_port());
    const char *cmds[][6] = {
        {"--server", dead, "get", "greeting", NULL},
        {"--server", dead, "put", "greeting", "x", NULL},
        {"--server", dead, "delete", "greeting", NULL},
        {"--server", dead, "health", NULL},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        run_out r = run("kvtool", cmds[i], NULL, NULL, 0);
        cr_assert_eq(r.rc, 1, "kvtool %s with the server down: exit %d, want 1", cmds[i][2], r.rc);
        cr_assert(r.err[0] != '\0', "kvtool %s: no message on stderr", cmds[i][2]);
        cr_assert(strstr(r.err, "127.0.0.1") != NULL || strcasestr(r.err, "connect") != NULL ||
                      strcasestr(r.err, "refused") != NULL,
                  "kvtool %s: message does not say what failed: %s", cmds[i][2], r.err);
        run_free(&r);
    }
    stop_clean();
}

Test(kvtool, value_from_file_and_stdin)
{
    /* Binary file with NUL bytes. */
    unsigned char bin[3000];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (unsigned char)(i * 29 + 1);
    bin[0] = 0;
    bin[1500] = 0;
    char path[400];
    snprintf(path, sizeof path, "%s/value.bin", g_tmp);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fwrite(bin, 1, sizeof bin, f);
    fclose(f);
    const char *putf[] = {"--server", g_node.url, "put", "from-file", "-f", path, NULL};
    run_out r = run("kvtool", putf, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "put -f: exit %d: %s", r.rc, r.err);
    run_free(&r);
    expect_value_via_http("/v1/kv/from-file", bin, sizeof bin);

    const char *puts_[] = {"--server", g_node.url, "put", "from-stdin", NULL};
    const char in[] = "line one\nline two\n";
    r = run("kvtool", puts_, NULL, in, sizeof in - 1);
    cr_assert_eq(r.rc, 0, "put from stdin: exit %d: %s", r.rc, r.err);
    run_free(&r);
    expect_value_via_http("/v1/kv/from-stdin", in, sizeof in - 1);

    const char *putd[] = {"--server", g_node.url, "put", "from-dash", "-f", "-", NULL};
    r = run("kvtool", putd, NULL, (const char *)bin, sizeof bin);
    cr_assert_eq(r.rc, 0, "put -f -: exit %d: %s", r.rc, r.err);
    run_free(&r);
    expect_value_via_http("/v1/kv/from-dash", bin, sizeof bin);

    /* A missing file is a clear error, and nothing is written. */
    char nofile[400];
    snprintf(nofile, sizeof nofile, "%s/nope.bin", g_tmp);
    const char *putn[] = {"--server", g_node.url, "put", "nofile", "-f", nofile, NULL};
    r = run("kvtool", putn, NULL, NULL, 0);
    cr_assert_neq(r.rc, 0, "put -f of a missing file exited 0");
    cr_assert(strstr(r.err, nofile) != NULL, "message does not name the file: %s", r.err);
    run_free(&r);
    th_resp h;
    cr_assert_eq(th_http(g_node.port, "GET", "/v1/kv/nofile", NULL, 0, &h), 0);
    cr_assert_eq(h.status, 404);
    th_resp_free(&h);
    stop_clean();
}

Test(kvtool, keys_with_special_bytes_are_encoded)
{
    const char *put[] = {"--server", g_node.url, "put", "a/b c?d#e%f", "odd", NULL};
    run_out r = run("kvtool", put, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "exit %d: %s", r.rc, r.err);
    run_free(&r);
    expect_value_via_http("/v1/kv/a%2Fb%20c%3Fd%23e%25f", "odd", 3);
    const char *get[] = {"--server", g_node.url, "get", "a/b c?d#e%f", NULL};
    r = run("kvtool", get, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0);
    cr_assert(out_is(r.out, "odd"), "printed '%s'", r.out);
    run_free(&r);
    const char *utf[] = {"--server", g_node.url, "put", "cl\xc3\xa9", "accent", NULL};
    r = run("kvtool", utf, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0);
    run_free(&r);
    expect_value_via_http("/v1/kv/cl%C3%A9", "accent", 6);
    stop_clean();
}

Test(kvtool, json_output)
{
    const char *put[] = {"--server", g_node.url, "--json", "put", "greeting", "hello", NULL};
    run_out r = run("kvtool", put, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "exit %d: %s", r.rc, r.err);
    char s[256];
    size_t n = strlen(r.out);
    cr_assert(n >= 2 && r.out[0] == '{' && r.out[n - 1] == '\n' && r.out[n - 2] == '}',
              "put --json is not one JSON object line: %s", r.out);
    cr_assert(th_json_str(r.out, "key", s, sizeof s) && strcmp(s, "greeting") == 0, "%s", r.out);
    cr_assert(th_json_str(r.out, "etag", s, sizeof s) && s[0] != '\0', "no etag: %s", r.out);
    run_free(&r);

    const char *get[] = {"--server", g_node.url, "get", "greeting", "--json", NULL};
    r = run("kvtool", get, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0);
    n = strlen(r.out);
    cr_assert(n >= 2 && r.out[0] == '{' && r.out[n - 2] == '}', "get --json: %s", r.out);
    cr_assert(th_json_str(r.out, "key", s, sizeof s) && strcmp(s, "greeting") == 0, "%s", r.out);
    cr_assert(th_json_str(r.out, "value", s, sizeof s) && strcmp(s, "hello") == 0, "%s", r.out);
    cr_assert(th_json_str(r.out, "etag", s, sizeof s) && s[0] != '\0', "%s", r.out);
    run_free(&r);

    const char *del[] = {"--server", g_node.url, "delete", "greeting", "--json", NULL};
    r = run("kvtool", del, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0);
    cr_assert(r.out[0] == '{' && strstr(r.out, "\"deleted\"") && strstr(r.out, "true"),
              "delete --json: %s", r.out);
    run_free(&r);

    const char *health[] = {"--server", g_node.url, "health", "--json", NULL};
    r = run("kvtool", health, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "health --json exit %d: %s", r.rc, r.err);
    cr_assert(r.out[0] == '{' && strstr(r.out, "\"healthz\""), "health --json: %s", r.out);
    run_free(&r);
    stop_clean();
}

Test(kvtool, delete_then_get_is_not_found)
{
    const char *put[] = {"--server", g_node.url, "put", "doomed", "x", NULL};
    run_out r = run("kvtool", put, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0);
    run_free(&r);
    const char *del[] = {"--server", g_node.url, "delete", "doomed", NULL};
    r = run("kvtool", del, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "delete: exit %d: %s", r.rc, r.err);
    run_free(&r);
    const char *get[] = {"--server", g_node.url, "get", "doomed", NULL};
    r = run("kvtool", get, NULL, NULL, 0);
    cr_assert_eq(r.rc, 3, "get after delete: exit %d", r.rc);
    run_free(&r);
    /* Deleting again is fine (idempotent). */
    r = run("kvtool", del, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "second delete: exit %d: %s", r.rc, r.err);
    run_free(&r);
    stop_clean();
}

Test(kvtool, health)
{
    const char *health[] = {"--server", g_node.url, "health", NULL};
    run_out r = run("kvtool", health, NULL, NULL, 0);
    cr_assert_eq(r.rc, 0, "health: exit %d: %s", r.rc, r.err);
    cr_assert(strcasestr(r.out, "ok") != NULL, "health output: %s", r.out);
    run_free(&r);
    stop_clean();
}

Test(kvtool, help_on_every_command_mentions_exit_codes)
{
    const char *cases[][4] = {
        {"kvtool", "--help", NULL, NULL},       {"kvtool", "get", "--help", NULL},
        {"kvtool", "put", "--help", NULL},      {"kvtool", "delete", "--help", NULL},
        {"kvtool", "health", "--help", NULL},   {"kvstore", "client", "--help", NULL},
        {"kvstore", "client", "get", "--help"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *args[4] = {cases[i][1], cases[i][2], cases[i][3], NULL};
        run_out r = run(cases[i][0], args, NULL, NULL, 0);
        cr_assert_eq(r.rc, 0, "%s %s %s: exit %d: %s", cases[i][0], cases[i][1],
                     cases[i][2] ? cases[i][2] : "", r.rc, r.err);
        const char *text = r.out[0] ? r.out : r.err;
        /* The exit codes section, with 3 for a missing key. */
        const char *ex = strcasestr(text, "exit");
        const char *three = ex ? strstr(ex, "3") : NULL;
        cr_assert(three != NULL && (strcasestr(three, "not found") != NULL ||
                                    strcasestr(three, "not exist") != NULL ||
                                    strcasestr(three, "missing") != NULL),
                  "%s %s %s: help does not document the exit codes:\n%s", cases[i][0], cases[i][1],
                  cases[i][2] ? cases[i][2] : "", text);
        run_free(&r);
    }
    stop_clean();
}

Test(kvtool, usage_errors_exit_2)
{
    const char *cases[][6] = {
        {"--server", g_node.url, "get", NULL},           /* missing key */
        {"--server", g_node.url, "frobnicate", NULL},    /* unknown command */
        {"--server", g_node.url, "get", "k", "--bogus"}, /* unknown flag */
        {"--server", "not a url", "get", "k", NULL},     /* bad server URL */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        run_out r = run("kvtool", cases[i], NULL, NULL, 0);
        cr_assert_eq(r.rc, 2, "case %zu (%s %s): exit %d, want 2: %s", i, cases[i][2],
                     cases[i][3] ? cases[i][3] : "", r.rc, r.err);
        cr_assert(r.err[0] != '\0', "case %zu: no message", i);
        run_free(&r);
    }
    const char *none[] = {NULL};
    run_out r = run("kvtool", none, NULL, NULL, 0);
    cr_assert_eq(r.rc, 2, "kvtool with no command: exit %d", r.rc);
    run_free(&r);
    stop_clean();
}
