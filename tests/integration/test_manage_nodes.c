/*
 * test_manage_nodes.c — scripts/manage-nodes.sh with the local backend, run the way an
 * operator runs it, against real kvstore processes on 127.0.0.1.
 *
 * Shown here: `add --count 3` starts three nodes on the requested ports that list each
 * other alive in /v1/cluster/members by the time it returns; `list` shows them running
 * with the pids they run under; `remove --name` makes exactly that node leave with its
 * data (POST /v1/cluster/leave: it hands its ranges over and exits by itself, every key
 * written before still reads back through the others, its data dir is kept, the others
 * see it leave), `remove --name --no-leave` stops one with SIGTERM instead, `remove --all`
 * stops the rest and leaves no process behind; `add` into a cluster holding data returns
 * only once each new node has streamed its ranges and says it is `normal`; a pid file
 * naming a process that is not that node is never signalled; ports already in use, ports
 * past 65535 and a bare invocation are clear errors that start nothing.
 *
 * The nodes are started by the script, not by the harness, so they are not our children:
 * liveness is read from /proc (a dead node reparented to a PID 1 that does not reap stays
 * a zombie, which counts as gone). The fini hook runs `remove --all` and then SIGKILLs any
 * kvstore process still serving a directory under this test's tmpdir, so a failed test
 * leaves nothing behind. Every wait is bounded.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SCRIPT   KV_SOURCE_DIR "/scripts/manage-nodes.sh"
#define OFFSET   1000 /* --cluster-offset: peers just above the HTTP ports */
#define RUN_MS   120000
#define MAX_ROWS 16
#define NAME_CAP 32

static char g_tmp[256];
static pid_t g_child = -1; /* a non-kvstore process the stale-pid test must not kill */

/* ---------- processes, read from /proc ---------- */

/* True if pid exists and is not a zombie. */
static bool pid_running(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p != NULL && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X' && p[2] != '\0';
}

/* The NUL-separated command line of pid joined with spaces into out ("" if gone). */
static void pid_cmdline(pid_t pid, char *out, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    size_t n = fread(out, 1, cap - 1, f);
    fclose(f);
    for (size_t i = 0; i < n; i++)
        if (out[i] == '\0')
            out[i] = ' ';
    out[n] = '\0';
}

/* Wait until pid is gone (or a zombie). True if it went within timeout_ms. */
static bool pid_wait_gone(pid_t pid, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    while (pid_running(pid)) {
        if (th_now_ms() >= deadline)
            return false;
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return true;
}

/* SIGKILL every running `kvstore servenode` whose command line names a path in g_tmp. */
static void kill_leftovers(void)
{
    DIR *d = opendir("/proc");
    if (d == NULL || g_tmp[0] == '\0') {
        if (d)
            closedir(d);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end != '\0' || pid <= 0 || !pid_running((pid_t)pid))
            continue;
        char cmd[4096];
        pid_cmdline((pid_t)pid, cmd, sizeof cmd);
        if (strstr(cmd, "kvstore servenode") && strstr(cmd, g_tmp)) {
            fprintf(stderr, "test_manage_nodes: killing leftover node %ld: %s\n", pid, cmd);
            kill((pid_t)pid, SIGKILL);
        }
    }
    closedir(d);
}

/* ---------- running the script ---------- */

/*
 * Run manage-nodes.sh with --data-root g_tmp --bin <kvstore> and args (NULL-terminated).
 * out/err get stdout/stderr (caller frees; NULL to discard). Returns the exit status.
 */
static int mn(char **out, char **err, const char *const *args)
{
    const char *argv[40];
    int a = 0;
    argv[a++] = SCRIPT;
    argv[a++] = "--data-root";
    argv[a++] = g_tmp;
    argv[a++] = "--bin";
    argv[a++] = th_bin("kvstore");
    for (int i = 0; args && args[i] && a < 39; i++)
        argv[a++] = args[i];
    argv[a] = NULL;
    char *o = NULL, *e = NULL;
    int rc = th_run(argv, NULL, NULL, 0, &o, &e, RUN_MS);
    if (rc != 0)
        cr_log_info("manage-nodes.sh exit %d\nstdout:\n%s\nstderr:\n%s", rc, o ? o : "",
                    e ? e : "");
    if (out)
        *out = o;
    else
        free(o);
    if (err)
        *err = e;
    else
        free(e);
    return rc;
}

typedef struct row {
    char name[NAME_CAP];
    pid_t pid; /* 0 when the table says "-" */
    char http[64];
    char peer[64];
    char state[16];
} row;

/* `list`, parsed: the rows after the header. Returns the number of rows. */
static int list_rows(row *rows, int cap)
{
    char *out = NULL;
    cr_assert_eq(mn(&out, NULL, (const char *const[]){"list", NULL}), 0, "list failed");
    int n = 0;
    char *save = NULL;
    bool header = true;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (header) {
            cr_assert(strncmp(line, "NAME", 4) == 0, "list header: %s", line);
            header = false;
            continue;
        }
        if (line[0] == '(') /* "(no nodes under ...)" */
            continue;
        cr_assert_lt(n, cap);
        row *r = &rows[n];
        char pid[16];
        cr_assert_eq(
            sscanf(line, "%31s %15s %63s %63s %15s", r->name, pid, r->http, r->peer, r->state), 5,
            "list line: %s", line);
        r->pid = strcmp(pid, "-") == 0 ? 0 : (pid_t)atoi(pid);
        n++;
    }
    free(out);
    return n;
}

static const row *row_find(const row *rows, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(rows[i].name, name) == 0)
            return &rows[i];
    return NULL;
}

static int count_state(const row *rows, int n, const char *state)
{
    int c = 0;
    for (int i = 0; i < n; i++)
        c += strcmp(rows[i].state, state) == 0;
    return c;
}

/* ---------- ports ---------- */

static bool port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

/*
 * A start port P such that P..P+count-1 and the peers P+OFFSET.. are free. Below the
 * ephemeral range (32768+), where th_free_port and outgoing connections take theirs.
 */
static int free_range(int count)
{
    unsigned seed = (unsigned)getpid() ^ (unsigned)th_now_ms();
    for (int attempt = 0; attempt < 200; attempt++) {
        int p = 20000 + (int)(rand_r(&seed) % 10000u);
        bool ok = true;
        for (int i = 0; i < count && ok; i++)
            ok = port_free(p + i) && port_free(p + i + OFFSET);
        if (ok)
            return p;
    }
    cr_assert_fail("no free port range found");
    return -1;
}

/*
 * add --count count on a free range (another process may take a port between our check
 * and the script's: then try another range, a few times), with node_args (NULL-terminated,
 * may be NULL) after `--` for kvstore. Returns the start port.
 */
static int add_nodes_with(int count, char **out, const char *const *node_args)
{
    char cnt[16], start[16], off[16];
    snprintf(cnt, sizeof cnt, "%d", count);
    snprintf(off, sizeof off, "%d", OFFSET);
    for (int attempt = 0; attempt < 4; attempt++) {
        int p = free_range(count);
        snprintf(start, sizeof start, "%d", p);
        char *err = NULL;
        *out = NULL;
        const char *args[24] = {
            "add",       "--count", cnt, "--port-start", start, "--cluster-offset", off,
            "--timeout", "60",      NULL};
        if (node_args) {
            int a = 9;
            args[a++] = "--";
            for (int i = 0; node_args[i] && a < 23; i++)
                args[a++] = node_args[i];
            args[a] = NULL;
        }
        int rc = mn(out, &err, args);
        bool clash = rc != 0 && err && strstr(err, "in use");
        free(err);
        if (rc == 0)
            return p;
        free(*out);
        *out = NULL;
        cr_assert(clash, "add --count %d --port-start %d failed (exit %d)", count, p, rc);
    }
    cr_assert_fail("add: ports kept being taken");
    return -1;
}

static int add_nodes(int count, char **out)
{
    return add_nodes_with(count, out, NULL);
}

/* The line of add's NAME URL PEER PID table for name (add prints progress lines that
 * name the nodes too, before the table). NULL if absent. */
static const char *add_row(const char *out, const char *name)
{
    size_t nl = strlen(name);
    for (const char *line = out; line && *line;
         line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, name, nl) == 0 && line[nl] == ' ')
            return line;
    return NULL;
}

/* ---------- views ---------- */

/* Number of members node `port` reports in state `state`, and whether `name` is among
 * them (name NULL: don't care). -1 if /v1/cluster/members did not answer. */
static int members_in_state(int port, const char *state, const char *name, bool *has_name)
{
    th_resp r;
    if (th_http(port, "GET", "/v1/cluster/members", NULL, 0, &r) != 0)
        return -1;
    int n = -1;
    if (has_name)
        *has_name = false;
    const char *p = r.status == 200 ? strstr(r.body, "\"members\":[") : NULL;
    if (p)
        n = 0;
    for (int guard = 0; p && guard < 64; guard++) {
        const char *o = strchr(p, '{'), *e = o ? strchr(o, '}') : NULL;
        if (!o || !e)
            break;
        char obj[512], nm[64], st[16];
        snprintf(obj, sizeof obj, "%.*s", (int)(e - o + 1), o);
        if (th_json_str(obj, "state", st, sizeof st) && strcmp(st, state) == 0) {
            n++;
            if (name && has_name && th_json_str(obj, "name", nm, sizeof nm) &&
                strcmp(nm, name) == 0)
                *has_name = true;
        }
        p = e + 1;
    }
    th_resp_free(&r);
    return n;
}

/* The ring status node `port` reports for itself ("self":true) in /v1/cluster/members,
 * copied into out; false if it did not answer or has no such entry. */
static bool self_ring_status(int port, char *out, size_t cap)
{
    th_resp r;
    if (th_http(port, "GET", "/v1/cluster/members", NULL, 0, &r) != 0)
        return false;
    bool found = false;
    const char *p = r.status == 200 ? strstr(r.body, "\"members\":[") : NULL;
    for (int guard = 0; p && !found && guard < 64; guard++) {
        const char *o = strchr(p, '{'), *e = o ? strchr(o, '}') : NULL;
        if (!o || !e)
            break;
        char obj[512];
        snprintf(obj, sizeof obj, "%.*s", (int)(e - o + 1), o);
        found = strstr(obj, "\"self\":true") != NULL && th_json_str(obj, "ring_status", out, cap);
        p = e + 1;
    }
    th_resp_free(&r);
    return found;
}

/* PUT key=value through node `port` at the default quorum; the HTTP status. */
static int put_key(int port, const char *key, const char *value)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/kv/%s", key);
    th_resp r;
    if (th_http(port, "PUT", path, value, strlen(value), &r) != 0)
        return -1;
    int status = r.status;
    th_resp_free(&r);
    return status;
}

/* GET key through node `port` at the default quorum: true if it answers 200 with value. */
static bool key_reads(int port, const char *key, const char *value)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/kv/%s", key);
    th_resp r;
    if (th_http(port, "GET", path, NULL, 0, &r) != 0)
        return false;
    bool ok =
        r.status == 200 && r.body_len == strlen(value) && memcmp(r.body, value, r.body_len) == 0;
    if (!ok)
        cr_log_info("GET %s on port %d: %d %.*s", key, port, r.status, (int)r.body_len, r.body);
    th_resp_free(&r);
    return ok;
}

/* True if the node's log under g_tmp contains needle. */
static bool node_log_has(const char *name, const char *needle)
{
    th_node log = {0};
    snprintf(log.log_path, sizeof log.log_path, "%.200s/%.31s/node.log", g_tmp, name);
    char *text = th_log_read(&log);
    bool has = text && strstr(text, needle) != NULL;
    free(text);
    return has;
}

/* ---------- suite ---------- */

static void setup(void)
{
    th_tmpdir(g_tmp, sizeof g_tmp);
    g_child = -1;
}

static void teardown(void)
{
    char *out = NULL;
    const char *argv[] = {SCRIPT,  "--data-root",    g_tmp, "remove",
                          "--all", "--stop-timeout", "10",  NULL};
    th_run(argv, NULL, NULL, 0, &out, NULL, 60000);
    free(out);
    kill_leftovers();
    if (g_child > 0) {
        kill(g_child, SIGKILL);
        waitpid(g_child, NULL, 0);
        g_child = -1;
    }
    th_kill_all();
    th_tmpdir_remove(g_tmp);
}

TestSuite(manage_nodes, .init = setup, .fini = teardown, .timeout = 240);

Test(manage_nodes, add_list_remove_one_then_all)
{
    char *out = NULL;
    int p = add_nodes(3, &out);
    char names[3][NAME_CAP];
    pid_t pids[3];
    for (int i = 0; i < 3; i++) {
        snprintf(names[i], sizeof names[i], "node%d", p + i);
        /* add prints "NAME URL PEER PID" per node. */
        const char *line = add_row(out, names[i]);
        cr_assert_not_null(line, "add output lacks %s:\n%s", names[i], out);
        char nm[NAME_CAP], url[64], peer[64], want_url[64], want_peer[64];
        int pid = 0;
        cr_assert_eq(sscanf(line, "%31s %63s %63s %d", nm, url, peer, &pid), 4, "%s", line);
        snprintf(want_url, sizeof want_url, "http://127.0.0.1:%d", p + i);
        snprintf(want_peer, sizeof want_peer, "127.0.0.1:%d", p + i + OFFSET);
        cr_assert_str_eq(url, want_url);
        cr_assert_str_eq(peer, want_peer);
        pids[i] = (pid_t)pid;
        cr_assert(pid_running(pids[i]), "%s: pid %d is not running", names[i], pid);
    }
    free(out);

    /* list: three running, with the pids add printed. */
    row rows[MAX_ROWS];
    int n = list_rows(rows, MAX_ROWS);
    cr_assert_eq(n, 3, "list shows %d nodes", n);
    cr_assert_eq(count_state(rows, n, "running"), 3);
    for (int i = 0; i < 3; i++) {
        const row *r = row_find(rows, n, names[i]);
        cr_assert_not_null(r, "list lacks %s", names[i]);
        cr_assert_eq(r->pid, pids[i], "%s: list pid %d, add said %d", names[i], (int)r->pid,
                     (int)pids[i]);
        char cmd[4096];
        pid_cmdline(pids[i], cmd, sizeof cmd);
        cr_assert(strstr(cmd, "kvstore servenode") != NULL, "pid %d runs: %s", (int)pids[i], cmd);
    }

    /* Every node lists all three alive: add only returns once that holds. */
    for (int i = 0; i < 3; i++) {
        int alive = members_in_state(p + i, "alive", NULL, NULL);
        cr_assert_eq(alive, 3, "%s sees %d alive members", names[i], alive);
    }

    /* Keys written through the first node before anyone leaves. */
    enum { NKEYS = 60 };
    char key[32], val[48];
    for (int k = 0; k < NKEYS; k++) {
        snprintf(key, sizeof key, "mn-key-%d", k);
        snprintf(val, sizeof val, "value-%d-of-the-three", k);
        cr_assert_eq(put_key(p, key, val), 204, "PUT %s", key);
    }

    /* remove --name the middle one: it is asked to leave, hands its ranges over and exits
     * by itself (no SIGTERM); the other two stay. */
    char *err = NULL;
    cr_assert_eq(mn(&out, &err, (const char *const[]){"remove", "--name", names[1], NULL}), 0);
    cr_assert(strstr(out, "handed its data over and left the cluster") != NULL,
              "remove did not report the hand-over:\n%s\nstderr:\n%s", out, err);
    cr_assert(strstr(out, "stopping pid") == NULL && strstr(err, "warning") == NULL,
              "remove fell back to SIGTERM:\n%s\nstderr:\n%s", out, err);
    free(out);
    free(err);
    cr_assert(pid_wait_gone(pids[1], 1000), "%s (pid %d) still runs after remove", names[1],
              (int)pids[1]);
    cr_assert(node_log_has(names[1], "every range handed over"),
              "%s's log does not say it handed its ranges over", names[1]);
    n = list_rows(rows, MAX_ROWS);
    cr_assert_eq(count_state(rows, n, "running"), 2);
    const row *gone = row_find(rows, n, names[1]);
    cr_assert_not_null(gone, "a removed node is still listed (its data is kept)");
    cr_assert_str_eq(gone->state, "stopped");
    cr_assert(pid_running(pids[0]) && pid_running(pids[2]));
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s/pid", g_tmp, names[1]);
    cr_assert_neq(stat(path, &st), 0, "pid file of a removed node remains");
    snprintf(path, sizeof path, "%s/%s/NODE_ID", g_tmp, names[1]);
    cr_assert_eq(stat(path, &st), 0, "remove without --purge deleted the node's data");

    /* Every key still reads back through each remaining node (default quorum). */
    for (int k = 0; k < NKEYS; k++) {
        snprintf(key, sizeof key, "mn-key-%d", k);
        snprintf(val, sizeof val, "value-%d-of-the-three", k);
        cr_assert(key_reads(p, key, val), "%s lost through %s", key, names[0]);
        cr_assert(key_reads(p + 2, key, val), "%s lost through %s", key, names[2]);
    }

    /* The leave is announced: the others see it `left`, not dead after a timeout. */
    int64_t deadline = th_now_ms() + 30000;
    for (;;) {
        bool l0 = false, l2 = false;
        int a0 = members_in_state(p, "left", names[1], &l0);
        int a2 = members_in_state(p + 2, "left", names[1], &l2);
        if (a0 >= 1 && a2 >= 1 && l0 && l2)
            break;
        cr_assert_lt(th_now_ms(), deadline, "the others never saw %s leave", names[1]);
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }

    /* remove --all: nothing runs, no process is left. */
    cr_assert_eq(mn(&out, NULL, (const char *const[]){"remove", "--all", NULL}), 0);
    free(out);
    for (int i = 0; i < 3; i++)
        cr_assert(pid_wait_gone(pids[i], 1000), "%s (pid %d) still runs after remove --all",
                  names[i], (int)pids[i]);
    n = list_rows(rows, MAX_ROWS);
    cr_assert_eq(n, 3);
    cr_assert_eq(count_state(rows, n, "running"), 0);
    for (int i = 0; i < 3; i++) {
        cr_assert(port_free(p + i), "HTTP port %d still taken", p + i);
        /* A clean SIGTERM exit: the log ends with "stopped" and (sanitizer builds) no
         * report. */
        th_node log = {0};
        snprintf(log.log_path, sizeof log.log_path, "%.200s/%.31s/node.log", g_tmp, names[i]);
        cr_assert(th_log_sanitizer_clean(&log), "sanitizer report in %s", log.log_path);
        char *text = th_log_read(&log);
        bool stopped = strstr(text, "msg=stopped") != NULL;
        free(text);
        cr_assert(stopped, "%s did not log a clean stop", names[i]);
    }

    /* remove --all --purge deletes the directories. */
    cr_assert_eq(mn(NULL, NULL, (const char *const[]){"remove", "--all", "--purge", NULL}), 0);
    n = list_rows(rows, MAX_ROWS);
    cr_assert_eq(n, 0, "purged nodes are still listed");
}

Test(manage_nodes, extends_a_running_cluster_and_never_signals_a_stranger)
{
    /* The first node holds data and sends it slowly (streaming.rate is the sender's), so a
     * node joining it needs seconds to stream its ranges: longer than joining the
     * membership takes. */
    char *out = NULL;
    int p = add_nodes_with(1, &out, (const char *const[]){"--streaming.rate", "256KiB", NULL});
    free(out);
    char first[NAME_CAP];
    snprintf(first, sizeof first, "node%d", p);
    enum { NKEYS = 500, VLEN = 1000 };
    unsigned seed = (unsigned)th_now_ms();
    char key[32], val[VLEN + 1];
    for (int k = 0; k < NKEYS; k++) {
        snprintf(key, sizeof key, "big-%d", k);
        for (int c = 0; c < VLEN; c++) /* hex noise: LZ4 barely shrinks it */
            val[c] = "0123456789abcdef"[rand_r(&seed) % 16u];
        val[VLEN] = '\0';
        cr_assert_eq(put_key(p, key, val), 204, "PUT %s", key);
    }

    /* A second add joins the running node: seeds come from its pid file. */
    char start[16], off[16];
    int q = -1;
    for (int attempt = 0; attempt < 200 && q < 0; attempt++) {
        int c = p + 10 + attempt * 3;
        if (port_free(c) && port_free(c + 1) && port_free(c + OFFSET) && port_free(c + 1 + OFFSET))
            q = c;
    }
    cr_assert_gt(q, 0);
    snprintf(start, sizeof start, "%d", q);
    snprintf(off, sizeof off, "%d", OFFSET);
    cr_assert_eq(mn(&out, NULL,
                    (const char *const[]){"add", "--count", "2", "--port-start", start,
                                          "--cluster-offset", off, NULL}),
                 0);
    /* add returned only once each new node finished streaming: it says so, each says it
     * is normal itself, and each holds every key (with nothing written meanwhile, only
     * the stream brought them). */
    for (int i = 0; i < 2; i++) {
        char want[96], rs[16];
        snprintf(want, sizeof want, "node%d: ring status normal", q + i);
        cr_assert(strstr(out, want) != NULL, "add did not report %s:\n%s", want, out);
        cr_assert(self_ring_status(q + i, rs, sizeof rs), "node%d: no members answer", q + i);
        cr_assert_str_eq(rs, "normal", "node%d is %s right after add returned", q + i, rs);
        th_resp d;
        double keys = -1;
        cr_assert_eq(th_http(q + i, "GET", "/v1/cluster/digest", NULL, 0, &d), 0);
        cr_assert(d.status == 200 && th_json_num(d.body, "keys", &keys), "%s", d.body);
        th_resp_free(&d);
        cr_assert_eq((int)keys, NKEYS, "node%d holds %d of %d keys after add", q + i, (int)keys,
                     NKEYS);
    }
    free(out);
    const int ports[3] = {p, q, q + 1};
    for (int i = 0; i < 3; i++) {
        int port = ports[i];
        int alive = members_in_state(port, "alive", NULL, NULL);
        cr_assert_eq(alive, 3, "node on port %d sees %d alive members", port, alive);
    }

    /* The first node's pid file now names a process that is not a kvstore node (a pid
     * reused after a crash): list calls it dead, remove must not signal it. */
    row rows[MAX_ROWS];
    int n = list_rows(rows, MAX_ROWS);
    const row *r = row_find(rows, n, first);
    cr_assert_not_null(r);
    pid_t node_pid = r->pid;
    /* A child that execs at once: nothing of this process (criterion, nng) runs in it. */
    g_child = fork();
    if (g_child == 0) {
        execl("/bin/sleep", "sleep", "300", (char *)NULL);
        _exit(127);
    }
    cr_assert_gt(g_child, 0);
    char path[512];
    snprintf(path, sizeof path, "%s/%s/pid", g_tmp, first);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "%d\n", (int)g_child);
    fclose(f);
    n = list_rows(rows, MAX_ROWS);
    r = row_find(rows, n, first);
    cr_assert_str_eq(r->state, "dead");
    cr_assert_eq(count_state(rows, n, "running"), 2);
    cr_assert_eq(mn(&out, NULL, (const char *const[]){"remove", "--name", first, NULL}), 0);
    cr_assert(strstr(out, "stale") != NULL, "remove did not say the pid file was stale:\n%s", out);
    free(out);
    cr_assert(pid_running(g_child), "remove signalled a process that is not a kvstore node");
    cr_assert(pid_running(node_pid), "the real node behind the stale pid file was stopped");
    /* That node is now unmanaged: stop it ourselves (it is not our child). */
    kill(node_pid, SIGTERM);
    cr_assert(pid_wait_gone(node_pid, 20000));

    /* remove --name --no-leave: SIGTERM at once, no hand-over asked for. */
    char second[NAME_CAP];
    snprintf(second, sizeof second, "node%d", q);
    r = row_find(rows, n, second);
    cr_assert_not_null(r);
    pid_t second_pid = r->pid;
    cr_assert_eq(
        mn(&out, NULL, (const char *const[]){"remove", "--name", second, "--no-leave", NULL}), 0);
    cr_assert(strstr(out, "stopping pid") != NULL && strstr(out, "asking it to leave") == NULL,
              "--no-leave did not stop with SIGTERM:\n%s", out);
    free(out);
    cr_assert(pid_wait_gone(second_pid, 1000));
    cr_assert(!node_log_has(second, "every range handed over"), "%s handed over anyway", second);

    cr_assert_eq(mn(NULL, NULL, (const char *const[]){"remove", "--all", NULL}), 0);
    n = list_rows(rows, MAX_ROWS);
    cr_assert_eq(count_state(rows, n, "running"), 0);
}

Test(manage_nodes, refuses_bad_requests_and_starts_nothing)
{
    char *out = NULL, *err = NULL;

    /* No arguments: the usage text, exit 2. */
    const char *bare[] = {SCRIPT, NULL};
    cr_assert_eq(th_run(bare, NULL, NULL, 0, &out, &err, RUN_MS), 2);
    cr_assert(strstr(err, "add --count N --port-start P") != NULL, "no usage text:\n%s", err);
    free(out);
    free(err);
    const char *help[] = {SCRIPT, "--help", NULL};
    cr_assert_eq(th_run(help, NULL, NULL, 0, &out, &err, RUN_MS), 0);
    cr_assert(strstr(out, "remove --name NAME") && strstr(out, "--backend"), "%s", out);
    free(out);
    free(err);

    /* Peer ports past 65535. */
    cr_assert_eq(
        mn(&out, &err, (const char *const[]){"add", "--count", "3", "--port-start", "60000", NULL}),
        1);
    cr_assert(strstr(err, "65535") != NULL, "%s", err);
    free(out);
    free(err);

    /* A port in use: nothing starts. */
    int p = free_range(2);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)(p + 1)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(fd, 4), 0);
    char start[16], off[16];
    snprintf(start, sizeof start, "%d", p);
    snprintf(off, sizeof off, "%d", OFFSET);
    cr_assert_eq(mn(&out, &err,
                    (const char *const[]){"add", "--count", "2", "--port-start", start,
                                          "--cluster-offset", off, NULL}),
                 1);
    close(fd);
    cr_assert(strstr(err, "in use") != NULL, "%s", err);
    free(out);
    free(err);
    row rows[MAX_ROWS];
    cr_assert_eq(count_state(rows, list_rows(rows, MAX_ROWS), "running"), 0);
    cr_assert(port_free(p), "a node was started although the batch was refused");

    /* remove of a name that does not exist. */
    cr_assert_eq(mn(&out, &err, (const char *const[]){"remove", "--name", "node1", NULL}), 1);
    cr_assert(strstr(err, "no node named") != NULL, "%s", err);
    free(out);
    free(err);
}
