/*
 * test_kvbench.c — kvbench against a real node, briefly (a few seconds per test):
 * its --json report accounts for every request it sent (checked against the node's own
 * kv_http_requests_total), open-loop mode holds the rate it was given (a behaviour check
 * with a wide tolerance, not a speed test), a target that is down gives a clear message
 * and a non-zero exit at once, a target that dies mid-run ends the run on time with the
 * failures counted, and bad arguments exit 2 with a message.
 *
 * Each test starts its own node in a fresh temp dir and stops it by PID. Single-threaded.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static char g_tmp[256];
static char g_data[300];
static th_node g_node;

static void setup(void)
{
    th_tmpdir(g_tmp, sizeof g_tmp);
    snprintf(g_data, sizeof g_data, "%s/data", g_tmp);
}

static void teardown(void)
{
    th_kill_all();
    th_tmpdir_remove(g_tmp);
}

TestSuite(kvbench, .init = setup, .fini = teardown, .timeout = 120);

static void start_node(void)
{
    cr_assert_eq(th_node_start(&g_node, g_data, 0, NULL, NULL, 10000), 0, "node did not start");
}

typedef struct run_out {
    int rc;
    char *out;
    char *err;
} run_out;

/* Run kvbench with args (NULL-terminated); 60 s is far beyond any run here. */
static run_out kvbench(const char *const *args)
{
    const char *argv[48];
    int n = 0;
    argv[n++] = th_bin("kvbench");
    for (int i = 0; args[i] && n < 47; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    run_out r;
    r.rc = th_run(argv, NULL, NULL, 0, &r.out, &r.err, 60000);
    return r;
}

static void run_free(run_out *r)
{
    free(r->out);
    free(r->err);
}

/* A number inside the object that follows "section": (e.g. "run"), then within the
 * sub-object "sub" if not NULL. Fails the test when absent. */
static double jnum(const char *json, const char *section, const char *sub, const char *name)
{
    char pat[64];
    const char *p = json;
    if (section) {
        snprintf(pat, sizeof pat, "\"%s\":{", section);
        p = strstr(json, pat);
        cr_assert_not_null(p, "no \"%s\" object in the report: %s", section, json);
    }
    if (sub) {
        snprintf(pat, sizeof pat, "\"%s\":{", sub);
        p = strstr(p, pat);
        cr_assert_not_null(p, "no \"%s\" object in the report", sub);
    }
    double v;
    cr_assert(th_json_num(p, name, &v), "no \"%s\" in the report: %s", name, p);
    return v;
}

static double requests_total(void)
{
    double v = th_metric(g_node.port, "kv_http_requests_total", NULL);
    cr_assert(v >= 0, "GET /metrics failed");
    return v;
}

Test(kvbench, json_report_counts_every_request_the_node_saw)
{
    start_node();
    /* What one GET /metrics adds to the counter between two reads of it. */
    double m1 = requests_total();
    double m2 = requests_total();
    double per_fetch = m2 - m1;

    const char *args[] = {"--url",      g_node.url, "--workload",
                          "custom",     "--mix",    "read=60,update=30,delete=10",
                          "--keys",     "500",      "--connections",
                          "4",          "--warmup", "500ms",
                          "--duration", "2s",       "--json",
                          "--quiet",    NULL};
    run_out r = kvbench(args);
    cr_assert_eq(r.rc, 0, "kvbench exit %d: %s", r.rc, r.err);
    double after = requests_total();

    double sent = jnum(r.out, NULL, NULL, "requests_sent");
    double load_ops = jnum(r.out, "load", NULL, "ops");
    double load_sent = jnum(r.out, "load", NULL, "sent");
    double run_sent = jnum(r.out, "run", NULL, "sent");
    double run_ops = jnum(r.out, "run", NULL, "ops");
    double run_ok = jnum(r.out, "run", NULL, "ok");
    double run_failed = jnum(r.out, "run", NULL, "failed");
    double warm = jnum(r.out, "run", NULL, "warmup_ops");

    cr_expect_eq(load_ops, 500, "the load phase writes every key once: %.0f", load_ops);
    cr_expect_eq(load_sent, 500);
    cr_expect_eq(sent, load_sent + run_sent, "requests_sent is the sum of both phases");
    cr_expect_eq(run_failed, 0, "no failures against a healthy node: %s", r.out);
    cr_expect_eq(run_ops + warm, run_sent,
                 "every request sent in the run is reported (%.0f measured + %.0f warm-up "
                 "vs %.0f sent)",
                 run_ops, warm, run_sent);
    cr_expect(run_ops > 0, "something was measured");
    /* By kind: ok + not_found + failed add up to the measured operations, and every kind
     * of the mix was exercised. */
    double sum = 0;
    const char *kinds[] = {"read", "update", "delete"};
    for (int i = 0; i < 3; i++) {
        double ok = jnum(r.out, "run", kinds[i], "ok");
        double nf = jnum(r.out, "run", kinds[i], "not_found");
        double f = jnum(r.out, "run", kinds[i], "failed");
        cr_expect(ok + nf > 0, "no %s was done", kinds[i]);
        sum += ok + nf + f;
    }
    cr_expect_eq(sum, run_ops, "by-kind counts add up to the measured operations");
    double lat_count = jnum(r.out, "run", "all", "count");
    cr_expect_eq(lat_count, run_ok, "one latency per successful operation");
    cr_expect(jnum(r.out, "run", "all", "p50") > 0, "a p50 was measured");
    /* The node counted exactly what kvbench says it sent (plus our /metrics read). */
    cr_expect_eq(after - m2, sent + per_fetch,
                 "node counted %.0f requests, kvbench reports %.0f sent", after - m2 - per_fetch,
                 sent);
    run_free(&r);
    cr_assert(th_node_stop_clean(&g_node, 10000), "node did not stop cleanly");
}

Test(kvbench, open_loop_holds_its_rate)
{
    start_node();
    const char *args[] = {"--url",     g_node.url, "--rate",   "1000",  "--connections", "8",
                          "--keys",    "1000",     "--warmup", "500ms", "--duration",    "2s",
                          "--no-load", "--json",   "--quiet",  NULL};
    run_out r = kvbench(args);
    cr_assert_eq(r.rc, 0, "kvbench exit %d: %s", r.rc, r.err);
    cr_assert(strstr(r.out, "\"mode\":\"open\"") != NULL, "%s", r.out);
    double thr = jnum(r.out, "run", NULL, "throughput");
    double ops = jnum(r.out, "run", NULL, "ops");
    double missed = jnum(r.out, "run", NULL, "missed");
    /* 1000 ops/s for 2 s is 2000 operations on schedule; a light load for any machine, so
     * the schedule is met (the band is wide: this is about behaviour, not speed). */
    cr_expect(thr > 900 && thr < 1100, "open loop at 1000 ops/s measured %.1f ops/s", thr);
    cr_expect(ops > 1800 && ops < 2200, "%.0f operations in 2 s at 1000 ops/s", ops);
    cr_expect_eq(missed, 0, "no operation fell behind the schedule");
    run_free(&r);
    cr_assert(th_node_stop_clean(&g_node, 10000), "node did not stop cleanly");
}

Test(kvbench, target_down_is_reported_at_once)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", th_free_port());
    const char *args[] = {"--url", url, "--duration", "30s", "--quiet", NULL};
    int64_t t0 = th_now_ms();
    run_out r = kvbench(args);
    int64_t took = th_now_ms() - t0;
    cr_expect_eq(r.rc, 1, "exit %d, want 1", r.rc);
    cr_expect(strstr(r.err, "cannot connect") && strstr(r.err, url),
              "stderr names the problem and the URL: %s", r.err);
    cr_expect(took < 10000, "took %lld ms: not retried forever", (long long)took);
    run_free(&r);
}

Test(kvbench, target_dying_mid_run_ends_on_time_with_errors_counted)
{
    start_node();
    /* kvbench runs in the background (report to a file) while we kill its target. */
    char out_path[400];
    snprintf(out_path, sizeof out_path, "%s/report.json", g_tmp);
    const char *argv[] = {
        th_bin("kvbench"), "--url", g_node.url,  "--keys", "200",    "--warmup", "0",
        "--duration",      "3s",    "--timeout", "1s",     "--json", "--quiet",  NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, out_path, O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int64_t t0 = th_now_ms();
    cr_assert_eq(posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);

    /* Once the node has answered a good number of requests, the run is under way. */
    int64_t deadline = th_now_ms() + 10000;
    while (th_now_ms() < deadline && requests_total() < 2000)
        usleep(20 * 1000);
    th_node_kill9(&g_node);

    int st = 0;
    pid_t got = 0;
    deadline = t0 + 3000 + 5000; /* the duration plus the request timeout and slack */
    while ((got = waitpid(pid, &st, WNOHANG)) == 0 && th_now_ms() < deadline)
        usleep(20 * 1000);
    if (got == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        cr_assert_fail("kvbench did not end within 8 s of a 3 s run against a dead target");
    }
    cr_expect(WIFEXITED(st) && (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 1), "exit status %d",
              st);
    FILE *f = fopen(out_path, "r");
    cr_assert_not_null(f);
    char *json = calloc(1, 1 << 20);
    cr_assert_not_null(json);
    size_t n = fread(json, 1, (1 << 20) - 1, f);
    fclose(f);
    cr_assert(n > 0, "no report written");
    double connect = jnum(json, "run", "errors", "connect");
    cr_expect(connect > 0, "reconnect attempts to a dead node are counted");
    char first[256];
    cr_expect(th_json_str(json, "first_error", first, sizeof first) && first[0],
              "first_error says what went wrong");
    free(json);
}

Test(kvbench, bad_arguments_exit_2_with_a_message)
{
    static const char *const cases[][4] = {
        {"--rate", "fast", NULL, "--rate"},      {"--duration", "10", NULL, "unit"},
        {"--workload", "z", NULL, "--workload"}, {"--workload", "custom", NULL, "--mix"},
        {"--mix", "read=50", NULL, "100"},       {"--target", "mysql", NULL, "--target"},
        {"--bogus", NULL, NULL, "--bogus"},      {"--keys", "100000", "--key-size=3", "--key-size"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *args[4] = {cases[i][0], cases[i][1], cases[i][1] ? cases[i][2] : NULL, NULL};
        run_out r = kvbench(args);
        cr_expect_eq(r.rc, 2, "%s %s: exit %d", cases[i][0], cases[i][1] ? cases[i][1] : "", r.rc);
        cr_expect(strstr(r.err, cases[i][3]) != NULL, "%s: message '%s' does not mention %s",
                  cases[i][0], r.err, cases[i][3]);
        run_free(&r);
    }
    const char *help[] = {"--help", NULL};
    run_out r = kvbench(help);
    cr_expect_eq(r.rc, 0);
    cr_expect(strstr(r.out, "--rate") && strstr(r.out, "--plot"), "help lists the options");
    run_free(&r);
}
