/*
 * simbench.c — the membership benchmark: runs the SWIM core (src/swim) in the
 * deterministic simulator (tests/sim) for N = 10, 100, 1,000 and prints the table that
 * README "Membership" reports. Not a ctest (the N = 100 bounds are tests/sim/test_sim.c).
 *
 *   simbench [--nodes 10,100,1000] [--seed S] [--crashes 20] [--minutes 10] [--jobs J]
 *            [--quiet]
 *
 * One simulated cluster per N, 1 s protocol period (memberlist LAN defaults), one-way
 * delay 1-3 ms. It converges and its steady traffic is measured; then each of the
 * other phases runs on its own copy of that converged cluster (a forked child; --jobs
 * of them at once, default the number of CPUs up to 4):
 *   converge   node 0 starts alone; nodes 1..N-1 start spread over the first second and
 *              each names node 0 as its only seed; time from the first start until
 *              every node holds the same view with all N alive
 *   traffic    2 simulated minutes of steady state: messages and bytes sent per node
 *              per second (bytes as the node's CBOR codec encodes them, and the bound
 *              swim_msg_wire_bound that the core budgets with)
 *   crash      C times: crash a random node, time until every running node holds it
 *              dead; restart it (new incarnation, one seed), wait for the full view
 *   loss 5%    M simulated minutes at 5% message loss: false positives (a running node
 *              marked dead by anyone), suspicions of running nodes
 *   loss 20%   the same at 20% loss
 *   slow node  M minutes, no loss: one node stalls 3 s every 10 s (then gets its backlog
 *              and a loop-lag report): times it was marked dead, others marked dead
 *
 * Everything derives from --seed, so a run is reproducible.
 */
#include "common/buf.h"
#include "net/wire.h"
#include "sim.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct bench_opts {
    uint32_t nodes[8];
    size_t n_nodes;
    uint64_t seed;
    uint32_t crashes;
    uint32_t minutes;
    uint32_t jobs;
    bool quiet;
} bench_opts;

typedef struct bench_row {
    uint32_t n;
    double converge_s; /* < 0: did not converge */
    double msgs_per_node_s, bytes_per_node_s, cbor_per_node_s;
    double crash_median_s, crash_max_s;
    uint32_t crashes, crashes_undetected;
    uint64_t fp_5, marks_5, susp_5; /* false deaths, observers that held them, suspicions */
    uint64_t fp_20, marks_20, susp_20;
    uint64_t slow_dead, slow_others_dead, slow_suspected;
    double wall_s;
} bench_row;

static uint64_t bench_rng;

static uint64_t bench_rand(void)
{
    uint64_t z = (bench_rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Run until the view converges or `limit_ms` passes; returns the time it took (ms) or
 * UINT64_MAX. Checks every 50 ms of simulated time. */
static uint64_t run_until_converged(sim_t *s, uint64_t limit_ms)
{
    uint64_t t0 = sim_now(s);
    for (uint64_t t = t0; t <= t0 + limit_ms; t += 50) {
        sim_run_until(s, t);
        if (sim_converged(s))
            return t - t0;
    }
    return UINT64_MAX;
}

/* Real encoded sizes: every message of the traffic phase through the node's CBOR codec
 * (src/net/wire.c), with the sender's address as the envelope would carry it. */
typedef struct cbor_count {
    kv_buf buf;
    uint64_t bytes, msgs, errors;
} cbor_count;

static void count_cbor(sim_t *s, uint32_t node, const swim_send *snd, void *user)
{
    cbor_count *c = user;
    char from[32];
    snprintf(from, sizeof(from), "n%u:7946", node);
    c->buf.len = 0;
    if (kv_wire_encode(&c->buf, from, &snd->msg) != 0) {
        c->errors++;
        return;
    }
    c->bytes += c->buf.len;
    c->msgs++;
}

static void log_phase(const bench_opts *o, uint32_t n, const char *what, double secs)
{
    if (o->quiet)
        return;
    if (secs < 0)
        fprintf(stderr, "simbench: N=%u %s\n", n, what);
    else
        fprintf(stderr, "simbench: N=%u %s done in %.1f s\n", n, what, secs);
}

/* ---------- the phases after convergence, each from the same converged cluster ---------- */

enum { PH_CRASH, PH_LOSS5, PH_LOSS20, PH_SLOW, PH_COUNT };
static const char *const phase_names[PH_COUNT] = {"crashes", "loss 5%", "loss 20%", "slow node"};

static void phase_crashes(const bench_opts *o, sim_t *s, uint32_t n, bench_row *row)
{
    double *det = calloc(o->crashes ? o->crashes : 1, sizeof(*det));
    uint32_t ndet = 0;
    for (uint32_t k = 0; k < o->crashes; k++) {
        uint32_t victim = 1 + (uint32_t)(bench_rand() % (n - 1));
        sim_crash(s, victim);
        uint64_t tc = sim_now(s), t;
        bool seen = false;
        for (t = tc; t <= tc + 180000; t += 10) {
            sim_run_until(s, t);
            if (sim_dead_count(s, victim) >= sim_running_count(s)) {
                seen = true;
                break;
            }
        }
        if (seen)
            det[ndet++] = (double)(t - tc) / 1000.0;
        else
            row->crashes_undetected++;
        row->crashes++;
        sim_run_until(s, sim_now(s) + 2000);
        uint32_t seed = victim == 1 ? 2 : 1;
        sim_start(s, victim, &seed, 1);
        run_until_converged(s, 300000);
        sim_run_until(s, sim_now(s) + 5000);
    }
    if (ndet) {
        qsort(det, ndet, sizeof(*det), cmp_double);
        row->crash_median_s = ndet % 2 ? det[ndet / 2] : (det[ndet / 2 - 1] + det[ndet / 2]) / 2.0;
        row->crash_max_s = det[ndet - 1];
    }
    free(det);
}

static void phase_loss(const bench_opts *o, sim_t *s, double loss, uint64_t *fp, uint64_t *marks,
                       uint64_t *susp)
{
    uint64_t fp0 = sim_false_deaths(s), mk0 = sim_false_positives(s);
    uint64_t su0 = sim_accusations(s);
    sim_set_loss(s, loss);
    sim_run_until(s, sim_now(s) + (uint64_t)o->minutes * 60000);
    sim_set_loss(s, 0);
    *fp = sim_false_deaths(s) - fp0;
    *marks = sim_false_positives(s) - mk0;
    *susp = sim_accusations(s) - su0;
}

static void phase_slow(const bench_opts *o, sim_t *s, uint32_t n, bench_row *row)
{
    uint32_t slow = n / 2;
    uint64_t fp0 = sim_false_positives(s), fps0 = sim_false_positives_about(s, slow);
    swim_stats st0, st1;
    swim_get_stats(sim_core(s, slow), &st0);
    sim_set_slow(s, slow, sim_now(s) + 1000, 10000, 3000);
    sim_run_until(s, sim_now(s) + (uint64_t)o->minutes * 60000);
    sim_set_slow(s, slow, 0, 0, 0);
    /* counted as observers that held someone dead: 0 / 0 means nobody, anywhere */
    row->slow_dead = sim_false_positives_about(s, slow) - fps0;
    row->slow_others_dead = (sim_false_positives(s) - fp0) - row->slow_dead;
    swim_get_stats(sim_core(s, slow), &st1);
    row->slow_suspected = st1.refutes - st0.refutes;
}

static void run_phase(const bench_opts *o, sim_t *s, uint32_t n, int ph, bench_row *row)
{
    switch (ph) {
    case PH_CRASH:
        phase_crashes(o, s, n, row);
        break;
    case PH_LOSS5:
        phase_loss(o, s, 0.05, &row->fp_5, &row->marks_5, &row->susp_5);
        break;
    case PH_LOSS20:
        phase_loss(o, s, 0.20, &row->fp_20, &row->marks_20, &row->susp_20);
        break;
    case PH_SLOW:
        phase_slow(o, s, n, row);
        break;
    }
}

/* Copy what phase ph measured from src into dst. */
static void merge_phase(int ph, bench_row *dst, const bench_row *src)
{
    switch (ph) {
    case PH_CRASH:
        dst->crash_median_s = src->crash_median_s;
        dst->crash_max_s = src->crash_max_s;
        dst->crashes = src->crashes;
        dst->crashes_undetected = src->crashes_undetected;
        break;
    case PH_LOSS5:
        dst->fp_5 = src->fp_5;
        dst->marks_5 = src->marks_5;
        dst->susp_5 = src->susp_5;
        break;
    case PH_LOSS20:
        dst->fp_20 = src->fp_20;
        dst->marks_20 = src->marks_20;
        dst->susp_20 = src->susp_20;
        break;
    case PH_SLOW:
        dst->slow_dead = src->slow_dead;
        dst->slow_others_dead = src->slow_others_dead;
        dst->slow_suspected = src->slow_suspected;
        break;
    }
}

/*
 * Run the phases, each on its own copy of the converged cluster: in forked children
 * (copy-on-write, so the copies cost nothing until they diverge), up to --jobs at a
 * time, each sending its row back through a pipe. The results do not depend on --jobs:
 * every phase starts from the same state with the same random stream.
 */
static void run_phases(const bench_opts *o, sim_t *s, uint32_t n, bench_row *row)
{
    struct {
        pid_t pid;
        int fd;
        double t0;
    } kids[PH_COUNT];
    int running = 0, next = 0;
    uint64_t rng0 = bench_rng;
    fflush(stdout);
    fflush(stderr);
    while (next < PH_COUNT || running > 0) {
        while (next < PH_COUNT && running < (int)(o->jobs ? o->jobs : 1)) {
            int ph = next++;
            double t0 = wall_now();
            int fds[2] = {-1, -1};
            pid_t pid = -1;
            if (pipe(fds) == 0)
                pid = fork();
            if (pid == 0) {
                close(fds[0]);
                bench_row r;
                memset(&r, 0, sizeof(r));
                bench_rng = rng0 + (uint64_t)ph;
                run_phase(o, s, n, ph, &r);
                ssize_t w = write(fds[1], &r, sizeof(r));
                _exit(w == (ssize_t)sizeof(r) ? 0 : 1);
            }
            if (pid < 0) {
                /* no fork: run it here, on s itself, and let the cluster settle before
                 * the next phase (the figures then differ slightly from a forked run) */
                if (fds[0] >= 0) {
                    close(fds[0]);
                    close(fds[1]);
                }
                log_phase(o, n, phase_names[ph], -1);
                bench_row r;
                memset(&r, 0, sizeof(r));
                bench_rng = rng0 + (uint64_t)ph;
                run_phase(o, s, n, ph, &r);
                merge_phase(ph, row, &r);
                run_until_converged(s, 300000);
                log_phase(o, n, phase_names[ph], wall_now() - t0);
                continue;
            }
            close(fds[1]);
            log_phase(o, n, phase_names[ph], -1);
            kids[ph].pid = pid;
            kids[ph].fd = fds[0];
            kids[ph].t0 = t0;
            running++;
        }
        if (running == 0)
            break;
        int status;
        pid_t done = wait(&status);
        if (done < 0)
            break;
        for (int ph = 0; ph < PH_COUNT; ph++) {
            if (ph >= next || kids[ph].pid != done)
                continue;
            bench_row r;
            ssize_t got = read(kids[ph].fd, &r, sizeof(r));
            close(kids[ph].fd);
            kids[ph].pid = 0;
            running--;
            if (got != (ssize_t)sizeof(r) || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "simbench: phase %s failed\n", phase_names[ph]);
                exit(1);
            }
            merge_phase(ph, row, &r);
            log_phase(o, n, phase_names[ph], wall_now() - kids[ph].t0);
        }
    }
}

static void bench_one(const bench_opts *o, uint32_t n, bench_row *row)
{
    double w0 = wall_now(), t0 = w0;
    memset(row, 0, sizeof(*row));
    row->n = n;
    sim_config cfg;
    sim_config_default(&cfg, n, o->seed ^ n);
    sim_t *s = sim_new(&cfg);
    if (!s) {
        fprintf(stderr, "simbench: out of memory\n");
        exit(1);
    }

    /* converge from one seed */
    log_phase(o, n, "converge", -1);
    uint32_t seed0 = 0;
    sim_start(s, 0, NULL, 0);
    for (uint32_t i = 1; i < n; i++) {
        sim_run_until(s, (uint64_t)i * 1000 / n);
        sim_start(s, i, &seed0, 1);
    }
    uint64_t c = run_until_converged(s, 300000);
    row->converge_s = c == UINT64_MAX ? -1 : (double)sim_now(s) / 1000.0;
    log_phase(o, n, "converge", wall_now() - t0);

    /* steady-state traffic: let the join wave's gossip run out first */
    t0 = wall_now();
    log_phase(o, n, "traffic", -1);
    sim_run_until(s, sim_now(s) + 60000);
    sim_traffic a, b;
    cbor_count cc = {.buf = KV_BUF_INIT};
    sim_on_send(s, count_cbor, &cc);
    sim_get_traffic(s, &a);
    sim_run_until(s, sim_now(s) + 120000);
    sim_get_traffic(s, &b);
    sim_on_send(s, NULL, NULL);
    kv_buf_free(&cc.buf);
    if (cc.errors)
        fprintf(stderr, "simbench: the codec refused %" PRIu64 " messages\n", cc.errors);
    double node_s = (double)(b.node_ms - a.node_ms) / 1000.0;
    row->msgs_per_node_s = (double)(b.msgs - a.msgs) / node_s;
    row->bytes_per_node_s = (double)(b.bytes - a.bytes) / node_s;
    row->cbor_per_node_s = (double)cc.bytes / node_s;
    log_phase(o, n, "traffic", wall_now() - t0);

    run_phases(o, s, n, row);
    sim_free(s);
    row->wall_s = wall_now() - w0;
}

static void fmt_fp(char *out, size_t cap, uint64_t deaths, uint64_t marks, uint64_t susp)
{
    if (deaths == 0)
        snprintf(out, cap, "0 (%" PRIu64 " suspicions, all refuted)", susp);
    else
        snprintf(out, cap,
                 "%" PRIu64 " (held dead by %" PRIu64 " nodes in all; %" PRIu64 " suspicions)",
                 deaths, marks, susp);
}

static void print_table(const bench_opts *o, const bench_row *rows, size_t n)
{
    printf("simbench: seed %" PRIu64 ", 1 s protocol period, memberlist LAN defaults, "
           "one-way delay 1-3 ms; %u crashes, %u-minute loss and slow-node runs\n\n",
           o->seed, o->crashes, o->minutes);
    printf("| N | converge from 1 seed | crash known everywhere: median / max | "
           "false positives, 5%% loss | false positives, 20%% loss | msgs / node / s | "
           "bytes / node / s (CBOR; bound) | slow node: declared dead / others declared "
           "dead | wall time |\n");
    printf("|---:|---:|---:|---|---|---:|---:|---|---:|\n");
    for (size_t i = 0; i < n; i++) {
        const bench_row *r = &rows[i];
        char conv[32], crash[64], f5[96], f20[96];
        if (r->converge_s < 0)
            snprintf(conv, sizeof(conv), "not in 300 s");
        else
            snprintf(conv, sizeof(conv), "%.1f s", r->converge_s);
        snprintf(crash, sizeof(crash), "%.1f s / %.1f s", r->crash_median_s, r->crash_max_s);
        if (r->crashes_undetected)
            snprintf(crash + strlen(crash), sizeof(crash) - strlen(crash), " (%u of %u undetected)",
                     r->crashes_undetected, r->crashes);
        fmt_fp(f5, sizeof(f5), r->fp_5, r->marks_5, r->susp_5);
        fmt_fp(f20, sizeof(f20), r->fp_20, r->marks_20, r->susp_20);
        printf("| %u | %s | %s | %s | %s | %.2f | %.0f; %.0f | %" PRIu64 " / %" PRIu64
               " (it refuted %" PRIu64 " suspicions) | %.1f s |\n",
               r->n, conv, crash, f5, f20, r->msgs_per_node_s, r->cbor_per_node_s,
               r->bytes_per_node_s, r->slow_dead, r->slow_others_dead, r->slow_suspected,
               r->wall_s);
    }
}

static int parse_nodes(bench_opts *o, const char *arg)
{
    o->n_nodes = 0;
    const char *p = arg;
    while (*p && o->n_nodes < 8) {
        char *end;
        unsigned long v = strtoul(p, &end, 10);
        if (end == p || v < 3 || v > SWIM_MAX_MEMBERS)
            return -1;
        o->nodes[o->n_nodes++] = (uint32_t)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return o->n_nodes ? 0 : -1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: simbench [--nodes 10,100,1000] [--seed S] [--crashes C] [--minutes M] "
            "[--jobs J] [--quiet]\n"
            "Simulates SWIM clusters (tests/sim) and prints the membership table of "
            "README \"Membership\".\n"
            "  --nodes    cluster sizes, comma-separated, 3..%d (default 10,100,1000)\n"
            "  --seed     random seed; the same seed gives the same table (default 1)\n"
            "  --crashes  crash/restart cycles per size (default 20)\n"
            "  --minutes  simulated minutes per loss and slow-node run (default 10)\n"
            "  --jobs     phases run at once, each in a forked copy of the cluster\n"
            "             (default: CPUs, at most 4; the figures do not depend on it)\n"
            "  --quiet    no progress lines on stderr\n",
            SWIM_MAX_MEMBERS);
}

int main(int argc, char **argv)
{
    bench_opts o = {
        .nodes = {10, 100, 1000}, .n_nodes = 3, .seed = 1, .crashes = 20, .minutes = 10};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--quiet")) {
            o.quiet = true;
        } else if (!strcmp(a, "--nodes") && v) {
            if (parse_nodes(&o, v) != 0) {
                fprintf(stderr, "simbench: bad --nodes '%s'\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--seed") && v) {
            o.seed = strtoull(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--crashes") && v) {
            o.crashes = (uint32_t)strtoul(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--jobs") && v) {
            o.jobs = (uint32_t)strtoul(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--minutes") && v) {
            o.minutes = (uint32_t)strtoul(v, NULL, 10);
            i++;
        } else {
            fprintf(stderr, "simbench: unknown argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    bench_rng = o.seed;
    bench_row rows[8];
    for (size_t i = 0; i < o.n_nodes; i++)
        bench_one(&o, o.nodes[i], &rows[i]);
    print_table(&o, rows, o.n_nodes);
    return 0;
}
