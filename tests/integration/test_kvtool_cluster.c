/*
 * test_kvtool_cluster.c — the `kvtool` binary against a real 3-node cluster on 127.0.0.1
 * (issue 6), asserting only on what a user of the tool sees: stdout, stderr and the exit
 * code.
 *
 * Shown here: a value put through one node is printed by `get` through each other node;
 * `ring` names every node and its --json shares add up (primary to 1, replica to N = 3);
 * `list --all` through a third node prints exactly the live keys, once each, also when
 * `--limit 3` makes it follow many pages, and `list PREFIX` only the ones under PREFIX;
 * `members` shows 3 alive. With 2 of the 3 nodes killed (-9), `get` at the default quorum
 * exits 4 and says on stderr that the replicas / quorum were missing, while
 * `--consistency one` and `-r 1` still print the value through the survivor, `-r 2` and a
 * `-w 2` delete exit 4, and a `--consistency one` put is readable back at `-r 1`; the same
 * through `kvstore client`.
 *
 * Each test starts its own cluster; fini kills every node (th_cluster_fini → th_kill_all)
 * and removes the data. Single-threaded.
 */
#include "cluster.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static th_cluster g_c;

/* A short replication.timeout so a quorum that cannot be reached fails within a second. */
static const char *const g_args[] = {"--replication.timeout", "1s", NULL};

static void setup(void)
{
    memset(&g_c, 0, sizeof g_c);
}

static void teardown(void)
{
    th_cluster_fini(&g_c);
}

TestSuite(kvtool_cluster, .init = setup, .fini = teardown, .timeout = 90);

static void start_cluster(void)
{
    th_cluster_init(&g_c, 3);
    g_c.args = g_args;
    cr_assert_eq(th_cluster_start(&g_c, 20000), 0, "3 nodes did not start and converge");
}

typedef struct run_out {
    int rc;
    char *out;
    char *err;
} run_out;

/* Run `kvtool --server <node via's URL> ARGS...` (args NULL-terminated). */
static run_out kvtool(int via, const char *const *args)
{
    const char *argv[24];
    int n = 0;
    argv[n++] = th_bin("kvtool");
    argv[n++] = "--server";
    argv[n++] = g_c.node[via].url;
    for (int i = 0; args[i]; i++) {
        cr_assert_lt(n, 23, "too many arguments");
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    run_out r;
    r.rc = th_run(argv, NULL, NULL, 0, &r.out, &r.err, 20000);
    return r;
}

#define KVTOOL(via, ...) kvtool((via), (const char *const[]){__VA_ARGS__, NULL})

static void run_free(run_out *r)
{
    free(r->out);
    free(r->err);
}

/* The command as a string, for messages. */
static const char *show(const char *const *args)
{
    static char buf[512];
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; args[i] && len < sizeof buf - 1; i++)
        len += (size_t)snprintf(buf + len, sizeof buf - len, "%s%s", i ? " " : "", args[i]);
    return buf;
}

/* `kvtool get KEY [flags]` through via prints exactly value (no newline: stdout is a pipe). */
static void get_prints(int via, const char *const *args, const char *value)
{
    run_out r = kvtool(via, args);
    TH_CLUSTER_CHECK(&g_c, r.rc == 0 && strcmp(r.out, value) == 0,
                     "kvtool %s through n%d: exit %d, stdout '%s', stderr '%s' (want exit 0 and "
                     "'%s')",
                     show(args), via, r.rc, r.out, r.err, value);
    run_free(&r);
}

/* The command exits 4 (unavailable) and says on stderr that the quorum was not reached. */
static void unavailable(int via, const char *const *args)
{
    int64_t t0 = th_now_ms();
    run_out r = kvtool(via, args);
    int64_t ms = th_now_ms() - t0;
    bool says = strstr(r.err, "replicas") != NULL && strstr(r.err, "quorum") != NULL &&
                strstr(r.err, "unavailable") != NULL && strstr(r.err, "HTTP 503") != NULL;
    TH_CLUSTER_CHECK(&g_c, r.rc == 4 && says && r.out[0] == '\0',
                     "kvtool %s through n%d: exit %d, stdout '%s', stderr '%s' (want exit 4 and "
                     "a line about replicas and the quorum)",
                     show(args), via, r.rc, r.out, r.err);
    /* replication.timeout is 1 s: never a hang up to the client's own 10 s timeout */
    cr_assert_lt(ms, 5000, "kvtool %s took %lld ms to fail", show(args), (long long)ms);
    run_free(&r);
}

/* Split out into lines (the last one may lack '\n'); the pointers point into out. */
static int lines(char *out, char **line, int cap)
{
    int n = 0;
    for (char *p = out; *p;) {
        char *nl = strchr(p, '\n');
        cr_assert_lt(n, cap, "more than %d lines of output: %s", cap, out);
        line[n++] = p;
        if (!nl)
            break;
        *nl = '\0';
        p = nl + 1;
    }
    return n;
}

#define MAXKEYS 64

/* `kvtool list ARGS` through via prints each of want[0..nwant) exactly once and nothing else
 * (in any order: the listing order is the ring's). */
static void list_prints(int via, const char *const *args, const char *const *want, int nwant)
{
    run_out r = kvtool(via, args);
    TH_CLUSTER_CHECK(&g_c, r.rc == 0, "kvtool %s through n%d: exit %d, stderr '%s'", show(args),
                     via, r.rc, r.err);
    char *copy = strdup(r.out);
    char *line[MAXKEYS + 8];
    int n = lines(copy, line, MAXKEYS + 8);
    int seen[MAXKEYS] = {0};
    for (int i = 0; i < n; i++) {
        int j = 0;
        while (j < nwant && strcmp(line[i], want[j]) != 0)
            j++;
        cr_assert_lt(j, nwant, "kvtool %s through n%d printed '%s', which it should not:\n%s",
                     show(args), via, line[i], r.out);
        seen[j]++;
    }
    for (int j = 0; j < nwant; j++)
        cr_assert_eq(seen[j], 1, "kvtool %s through n%d printed '%s' %d times (want once):\n%s",
                     show(args), via, want[j], seen[j], r.out);
    cr_assert_eq(n, nwant, "kvtool %s: %d lines, want %d", show(args), n, nwant);
    free(copy);
    run_free(&r);
}

/* Sum every number that follows `"name":` in json; *count gets how many there were. */
static double json_sum(const char *json, const char *name, int *count)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", name);
    double sum = 0;
    *count = 0;
    for (const char *p = json; (p = strstr(p, pat)) != NULL; p += strlen(pat)) {
        sum += strtod(p + strlen(pat), NULL);
        (*count)++;
    }
    return sum;
}

Test(kvtool_cluster, put_get_ring_list_and_members_across_nodes)
{
    start_cluster();

    /* put through n0, get through n1 and n2 */
    run_out r = KVTOOL(0, "put", "greeting", "hello, cluster");
    TH_CLUSTER_CHECK(&g_c, r.rc == 0 && strcmp(r.out, "OK\n") == 0,
                     "kvtool put through n0: exit %d, stdout '%s', stderr '%s'", r.rc, r.out,
                     r.err);
    run_free(&r);
    for (int via = 1; via < 3; via++)
        get_prints(via, (const char *const[]){"get", "greeting", NULL}, "hello, cluster");

    /* ring: the table names every node; --json shares add up */
    for (int via = 0; via < 3; via++) {
        r = KVTOOL(via, "ring");
        TH_CLUSTER_CHECK(&g_c, r.rc == 0, "kvtool ring through n%d: exit %d, stderr '%s'", via,
                         r.rc, r.err);
        for (int i = 0; i < 3; i++) {
            char name[8];
            snprintf(name, sizeof name, "\nn%d", i);
            cr_assert(strstr(r.out, name) != NULL, "kvtool ring through n%d does not list n%d:\n%s",
                      via, i, r.out);
        }
        cr_assert(strstr(r.out, "3 members, N = 3 replicas") != NULL,
                  "kvtool ring through n%d:\n%s", via, r.out);
        run_free(&r);

        r = KVTOOL(via, "ring", "--json");
        TH_CLUSTER_CHECK(&g_c, r.rc == 0, "kvtool ring --json through n%d: exit %d, stderr '%s'",
                         via, r.rc, r.err);
        int np = 0, nr = 0;
        double primary = json_sum(r.out, "primary_share", &np);
        double replica = json_sum(r.out, "replica_share", &nr);
        cr_assert(np == 3 && nr == 3 && primary > 0.999 && primary < 1.001 && replica > 2.999 &&
                      replica < 3.001,
                  "kvtool ring --json through n%d: %d/%d members, primary shares sum %g (want 1), "
                  "replica shares sum %g (want 3):\n%s",
                  via, np, nr, primary, replica, r.out);
        run_free(&r);
    }

    /* 25 keys under alpha/ and 5 under beta/, written through rotating nodes; alpha/07 is
     * deleted again */
    static char keys[MAXKEYS][16];
    const char *all[MAXKEYS], *alpha[MAXKEYS];
    int nall = 0, nalpha = 0;
    for (int i = 0; i < 30; i++) {
        char val[16];
        if (i < 25)
            snprintf(keys[i], sizeof keys[i], "alpha/%02d", i);
        else
            snprintf(keys[i], sizeof keys[i], "beta/%d", i - 25);
        snprintf(val, sizeof val, "v%d", i);
        r = KVTOOL(i % 3, "put", keys[i], val);
        TH_CLUSTER_CHECK(&g_c, r.rc == 0, "kvtool put %s through n%d: exit %d, stderr '%s'",
                         keys[i], i % 3, r.rc, r.err);
        run_free(&r);
    }
    r = KVTOOL(1, "delete", "alpha/07");
    TH_CLUSTER_CHECK(&g_c, r.rc == 0 && strcmp(r.out, "OK\n") == 0,
                     "kvtool delete alpha/07 through n1: exit %d, stdout '%s', stderr '%s'", r.rc,
                     r.out, r.err);
    run_free(&r);
    for (int i = 0; i < 30; i++) {
        if (i == 7)
            continue;
        all[nall++] = keys[i];
        if (i < 25)
            alpha[nalpha++] = keys[i];
    }
    all[nall++] = "greeting";

    list_prints(2, (const char *const[]){"list", "--all", NULL}, all, nall);
    list_prints(2, (const char *const[]){"list", "alpha/", "--all", NULL}, alpha, nalpha);
    list_prints(2, (const char *const[]){"list", "beta/", NULL}, all + 24, 5);
    /* 3 keys a page: --all follows about 10 pages and still prints each key once */
    list_prints(2, (const char *const[]){"list", "--limit", "3", "--all", NULL}, all, nall);
    list_prints(0, (const char *const[]){"list", "alpha/", "--limit=3", "--all", NULL}, alpha,
                nalpha);

    /* It really paged: --json prints one page per line, at least 30 / 3 of them. */
    r = KVTOOL(2, "list", "--limit", "3", "--all", "--json");
    TH_CLUSTER_CHECK(&g_c, r.rc == 0, "kvtool list --limit 3 --all --json: exit %d, stderr '%s'",
                     r.rc, r.err);
    int pages = 0;
    for (const char *p = r.out; (p = strstr(p, "\"next_cursor\"")) != NULL; p++)
        pages++;
    cr_assert_geq(pages, (nall + 2) / 3, "kvtool list --limit 3 --all --json: %d pages:\n%s", pages,
                  r.out);
    run_free(&r);

    /* Without --all, one page of at most 3 keys, each a live one. */
    r = KVTOOL(2, "list", "--limit", "3");
    TH_CLUSTER_CHECK(&g_c, r.rc == 0, "kvtool list --limit 3: exit %d, stderr '%s'", r.rc, r.err);
    char *line[8];
    int n = lines(r.out, line, 8);
    cr_assert(n >= 1 && n <= 3, "kvtool list --limit 3 printed %d keys", n);
    for (int i = 0; i < n; i++) {
        int j = 0;
        while (j < nall && strcmp(line[i], all[j]) != 0)
            j++;
        cr_assert_lt(j, nall, "kvtool list --limit 3 printed '%s'", line[i]);
    }
    run_free(&r);

    /* members: every node sees 3 alive */
    for (int via = 0; via < 3; via++) {
        r = KVTOOL(via, "members");
        TH_CLUSTER_CHECK(&g_c, r.rc == 0, "kvtool members through n%d: exit %d, stderr '%s'", via,
                         r.rc, r.err);
        cr_assert(strstr(r.out, "3 members: 3 alive, 0 suspect, 0 dead, 0 left") != NULL,
                  "kvtool members through n%d:\n%s", via, r.out);
        run_free(&r);
    }

    for (int i = 0; i < 3; i++)
        cr_expect(th_node_stop_clean(&g_c.node[i], 10000), "n%d did not stop cleanly", i);
}

Test(kvtool_cluster, two_of_three_killed_quorum_fails_consistency_one_still_reads)
{
    start_cluster();

    /* -w 3: every replica holds the value before the put returns, so the survivor has it */
    run_out r = KVTOOL(0, "put", "k", "survives", "-w", "3");
    TH_CLUSTER_CHECK(&g_c, r.rc == 0 && strcmp(r.out, "OK\n") == 0,
                     "kvtool put k -w 3 through n0: exit %d, stdout '%s', stderr '%s'", r.rc, r.out,
                     r.err);
    run_free(&r);
    get_prints(2, (const char *const[]){"get", "k", "--consistency", "all", NULL}, "survives");

    th_cluster_kill9(&g_c, 0);
    th_cluster_kill9(&g_c, 1);

    /* Right away (the survivor may not know yet) and after it saw them dead. */
    for (int round = 0; round < 2; round++) {
        unavailable(2, (const char *const[]){"get", "k", NULL});
        unavailable(2, (const char *const[]){"get", "k", "-r", "2", NULL});
        unavailable(2, (const char *const[]){"get", "k", "--consistency", "quorum", NULL});
        get_prints(2, (const char *const[]){"get", "k", "--consistency", "one", NULL}, "survives");
        get_prints(2, (const char *const[]){"get", "k", "-r", "1", NULL}, "survives");
        get_prints(2, (const char *const[]){"get", "k", "--r=1", "--consistency", "all", NULL},
                   "survives");
        if (round == 0)
            cr_assert_geq(th_cluster_wait_settled(&g_c, 20000), 0, "n2 did not see n0 and n1 dead");
    }

    /* `kvstore client` is the same tool: the same flags pass through. */
    const char *const kc_one[] = {th_bin("kvstore"), "client", "--server",
                                  g_c.node[2].url,   "get",    "k",
                                  "--consistency",   "one",    NULL};
    const char *const kc_def[] = {
        th_bin("kvstore"), "client", "--server", g_c.node[2].url, "get", "k", NULL};
    r.rc = th_run(kc_one, NULL, NULL, 0, &r.out, &r.err, 20000);
    cr_assert(r.rc == 0 && strcmp(r.out, "survives") == 0,
              "kvstore client get k --consistency one: exit %d, stdout '%s', stderr '%s'", r.rc,
              r.out, r.err);
    run_free(&r);
    r.rc = th_run(kc_def, NULL, NULL, 0, &r.out, &r.err, 20000);
    cr_assert(r.rc == 4 && strstr(r.err, "quorum") != NULL,
              "kvstore client get k: exit %d, stdout '%s', stderr '%s' (want exit 4)", r.rc, r.out,
              r.err);
    run_free(&r);

    r = KVTOOL(2, "members");
    cr_assert(r.rc == 0 && strstr(r.out, "1 alive, 0 suspect, 2 dead") != NULL,
              "kvtool members through the survivor: exit %d:\n%s", r.rc, r.out);
    run_free(&r);

    /* Writes: the default W=2 and -w 2 fail, a --consistency one write is readable at r=1. */
    unavailable(2, (const char *const[]){"put", "k", "lost", NULL});
    unavailable(2, (const char *const[]){"delete", "k", "-w", "2", NULL});
    r = KVTOOL(2, "put", "k2", "one is enough", "--consistency", "one");
    TH_CLUSTER_CHECK(&g_c, r.rc == 0 && strcmp(r.out, "OK\n") == 0,
                     "kvtool put k2 --consistency one through n2: exit %d, stdout '%s', stderr "
                     "'%s'",
                     r.rc, r.out, r.err);
    run_free(&r);
    get_prints(2, (const char *const[]){"get", "k2", "-r", "1", NULL}, "one is enough");

    /* A quorum above replication.n is the user's mistake (exit 1, the server says why), and a
     * level the tool does not know is a usage error (exit 2) before any request. */
    r = KVTOOL(2, "get", "k", "-r", "4");
    cr_assert(r.rc == 1 && strstr(r.err, "invalid_query") != NULL,
              "kvtool get k -r 4: exit %d, stderr '%s'", r.rc, r.err);
    run_free(&r);
    r = KVTOOL(2, "get", "k", "--consistency", "most");
    cr_assert(r.rc == 2 && strstr(r.err, "one, quorum or all") != NULL,
              "kvtool get k --consistency most: exit %d, stderr '%s'", r.rc, r.err);
    run_free(&r);

    cr_expect(th_node_stop_clean(&g_c.node[2], 10000), "n2 did not stop cleanly");
}

/* Count occurrences of needle in s. */
static int count_of(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

Test(kvtool_cluster, status_shows_every_member_and_a_dead_one_as_unanswered)
{
    start_cluster();
    char key[16], val[16];
    for (int i = 0; i < 30; i++) {
        snprintf(key, sizeof key, "st%02d", i);
        snprintf(val, sizeof val, "v%d", i);
        run_out p = KVTOOL(i % 3, "put", key, val);
        cr_assert_eq(p.rc, 0, "put %s: %s", key, p.err);
        run_free(&p);
    }
    run_out d = KVTOOL(1, "delete", "st07");
    cr_assert_eq(d.rc, 0, "delete: %s", d.err);
    run_free(&d);

    /* Every member answers with the same figures once the third replicas have them
     * (W=2: polled with a deadline). */
    int64_t deadline = th_now_ms() + 15000;
    run_out s = {0};
    for (;;) {
        s = KVTOOL(2, "status", "--json");
        cr_assert_eq(s.rc, 0, "kvtool status --json: rc %d: %s", s.rc, s.err);
        if ((count_of(s.out, "\"keys\":29,") == 3 && count_of(s.out, "\"tombstones\":1,") == 3) ||
            th_now_ms() > deadline)
            break;
        run_free(&s);
    }
    cr_assert_eq(count_of(s.out, "\"name\":"), 3, "3 members: %s", s.out);
    cr_assert_eq(count_of(s.out, "\"keys\":29,"), 3, "29 keys on each: %s", s.out);
    cr_assert_eq(count_of(s.out, "\"tombstones\":1,"), 3, "1 tombstone on each: %s", s.out);
    cr_assert_eq(count_of(s.out, "\"owned\":1.000000"), 3, "N = 3 on 3 nodes: %s", s.out);
    cr_assert_eq(count_of(s.out, "\"error\":null"), 3, "%s", s.out);
    const char *dg = strstr(s.out, "\"digest\":\"");
    cr_assert_not_null(dg);
    char digest[32];
    snprintf(digest, sizeof digest, "%.28s", dg); /* "digest":"<16 hex>" */
    cr_assert_eq(count_of(s.out, digest), 3, "one digest on every member: %s", s.out);
    run_free(&s);

    run_out t = KVTOOL(0, "status");
    cr_assert_eq(t.rc, 0, "kvtool status: %s", t.err);
    cr_assert(strstr(t.out, "NAME") && strstr(t.out, "DIGEST") && strstr(t.out, "all equal"),
              "table: %s", t.out);
    cr_assert(strstr(t.out, "3 members, 3 answered"), "%s", t.out);
    run_free(&t);

    /* A member that is dead is listed, not asked, and the command still succeeds. */
    th_cluster_kill9(&g_c, 2);
    TH_CLUSTER_CHECK(&g_c, th_cluster_wait_settled(&g_c, 15000) >= 0, "n2 not seen dead");
    run_out u = KVTOOL(0, "status", "--json");
    cr_assert_eq(u.rc, 0, "kvtool status with a dead member: rc %d: %s", u.rc, u.err);
    cr_assert_eq(count_of(u.out, "\"state\":\"dead\""), 1, "%s", u.out);
    cr_assert_eq(count_of(u.out, "\"keys\":null"), 1, "%s", u.out);
    cr_assert_eq(count_of(u.out, "\"error\":\"not asked: dead\""), 1, "%s", u.out);
    run_free(&u);
}
