/*
 * report.c — kvbench's final outputs (see report.h): the human table, the JSON document
 * and the gnuplot-drawn SVG. Main thread only, after every worker has been joined.
 */
#include "report.h"

#include "common/buf.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MS(ns) ((double)(ns) / 1e6)

double kvb_stats_seconds(const kvb_stats *s)
{
    if (s->seconds > 0)
        return s->seconds;
    if (s->first_ns == UINT64_MAX || s->last_ns <= s->first_ns)
        return 0.0;
    return (double)(s->last_ns - s->first_ns) / 1e9;
}

static double per_second(uint64_t n, double seconds)
{
    return seconds > 0 ? (double)n / seconds : 0.0;
}

static const double kvb_pcts[] = {50.0, 90.0, 99.0, 99.9};
static const char *kvb_pct_names[] = {"p50", "p90", "p99", "p99_9"};
#define NPCTS (sizeof kvb_pcts / sizeof kvb_pcts[0])

static void mix_text(const kvb_mix *m, char *out, size_t cap)
{
    snprintf(out, cap, "read %u%%, update %u%%, delete %u%%", m->pct[KVB_OP_READ],
             m->pct[KVB_OP_UPDATE], m->pct[KVB_OP_DELETE]);
}

/* Failed operations by kind: "timeout 1, http_503 2" or "none" (connect errors are
 * attempts, not operations, and are reported apart). */
static void errors_text(const kvb_stats *s, kv_buf *b)
{
    size_t start = b->len;
    for (int e = 0; e < KVB_E_KINDS; e++) {
        if (e == KVB_E_HTTP) {
            for (int c = 0; c < KVB_HTTP_CODES; c++)
                if (s->http_status[c])
                    kv_buf_printf(b, "%shttp_%d %" PRIu64, b->len > start ? ", " : "", c,
                                  s->http_status[c]);
            continue;
        }
        if (s->errors[e] && e != KVB_E_CONNECT)
            kv_buf_printf(b, "%s%s %" PRIu64, b->len > start ? ", " : "",
                          kvb_errkind_name((kvb_errkind)e), s->errors[e]);
    }
    if (b->len == start)
        kv_buf_appends(b, "none");
}

static void table_row(FILE *f, const char *name, uint64_t n, double secs, const kvb_hist *h)
{
    fprintf(f, "%-8s %10" PRIu64 " %10.0f %8.3f", name, n, per_second(n, secs),
            MS(kvb_hist_mean(h)));
    for (size_t i = 0; i < NPCTS; i++)
        fprintf(f, " %8.3f", MS(kvb_hist_percentile(h, kvb_pcts[i])));
    fprintf(f, " %9.3f\n", MS(h->count ? h->max : 0));
}

void kvb_report_table(FILE *f, const kvb_report *r)
{
    const kvb_cfg *cfg = r->cfg;
    const kvb_stats *s = r->run;
    char mix[96];
    mix_text(&cfg->mix, mix, sizeof mix);
    fprintf(f, "kvbench — %s at %s", kvb_target_name(cfg->proto.target), cfg->eps[0].url);
    if (cfg->neps > 1)
        fprintf(f, " and %zu more", cfg->neps - 1);
    if (cfg->proto.redis_wait)
        fprintf(f, " (SET + WAIT %u)", cfg->proto.redis_wait);
    fprintf(f, "\nworkload %s (%s); %" PRIu64 " keys of %zu B, values of %zu B, %s", cfg->workload,
            mix, cfg->nkeys, cfg->key_size, cfg->value_size,
            cfg->dist == KVB_DIST_ZIPFIAN ? "zipfian" : "uniform");
    if (cfg->dist == KVB_DIST_ZIPFIAN)
        fprintf(f, " (theta %.2f)", cfg->theta);
    if (cfg->rate > 0)
        fprintf(f, "\nopen loop at %.0f ops/s", cfg->rate);
    else
        fprintf(f, "\nclosed loop");
    fprintf(f, ", %u connections, %u thread%s, pipeline %u; warm-up %.1f s, ", cfg->conns,
            cfg->threads, cfg->threads == 1 ? "" : "s", cfg->pipeline, cfg->warmup_ns / 1e9);
    if (cfg->ops)
        fprintf(f, "%" PRIu64 " measured ops\n", cfg->ops);
    else
        fprintf(f, "measured %.1f s\n", cfg->duration_ns / 1e9);
    if (r->load) {
        double ls = kvb_stats_seconds(r->load);
        uint64_t ln = kvb_stats_ops(r->load);
        fprintf(f, "load: %" PRIu64 " writes in %.2f s (%.0f ops/s), %" PRIu64 " failed\n", ln, ls,
                per_second(ln, ls), kvb_stats_failed(r->load));
    }
    double secs = kvb_stats_seconds(s);
    fprintf(f, "\n%-8s %10s %10s %8s %8s %8s %8s %8s %9s\n", "op", "count", "ops/s", "mean", "p50",
            "p90", "p99", "p99.9", "max");
    for (int k = 0; k < KVB_OP_KINDS; k++) {
        uint64_t n = s->ok[k] + s->miss[k];
        if (n || s->fail[k])
            table_row(f, kvb_op_name((kvb_op_kind)k), n, secs, &s->hist[k]);
    }
    table_row(f, "all", s->all.count, secs, &s->all);
    fprintf(f, "(latencies in ms, of successful operations; ops/s over %.2f s)\n", secs);
    kv_buf eb = KV_BUF_INIT;
    errors_text(s, &eb);
    fprintf(f, "\nthroughput %.0f ops/s; %" PRIu64 " ops measured, %" PRIu64 " failed (%s)\n",
            per_second(s->all.count, secs), kvb_stats_ops(s), kvb_stats_failed(s), eb.data);
    kv_buf_free(&eb);
    if (s->errors[KVB_E_CONNECT])
        fprintf(f, "connect errors: %" PRIu64 " failed attempts (kvbench retries with backoff)\n",
                s->errors[KVB_E_CONNECT]);
    if (s->ok[KVB_OP_READ] + s->miss[KVB_OP_READ])
        fprintf(f, "reads: %" PRIu64 " found, %" PRIu64 " not found\n", s->ok[KVB_OP_READ],
                s->miss[KVB_OP_READ]);
    fprintf(f, "warm-up: %" PRIu64 " ops (%" PRIu64 " failed), not in the figures above\n",
            s->warmup_ops, s->warmup_fail);
    if (s->missed)
        fprintf(f,
                "WARNING: %" PRIu64 " operations were due but never started: the target (or "
                "kvbench) could not keep up with %.0f ops/s on %u connections\n",
                s->missed, cfg->rate, cfg->conns);
    if (r->first_error && r->first_error[0])
        fprintf(f, "first connection error: %s\n", r->first_error);
    if (r->interrupted)
        fprintf(f, "INTERRUPTED: the figures cover the run up to the signal\n");
}

/* ---------- JSON ---------- */

static void json_hist(kv_buf *b, const kvb_hist *h)
{
    kv_buf_printf(b, "{\"count\":%" PRIu64 ",\"min\":%.6f,\"mean\":%.6f", h->count,
                  MS(h->count ? h->min : 0), MS(kvb_hist_mean(h)));
    for (size_t i = 0; i < NPCTS; i++)
        kv_buf_printf(b, ",\"%s\":%.6f", kvb_pct_names[i], MS(kvb_hist_percentile(h, kvb_pcts[i])));
    kv_buf_printf(b, ",\"max\":%.6f}", MS(h->count ? h->max : 0));
}

static void json_errors(kv_buf *b, const kvb_stats *s)
{
    kv_buf_appends(b, "{");
    bool first = true;
    for (int e = 0; e < KVB_E_KINDS; e++) {
        if (e == KVB_E_HTTP)
            continue;
        kv_buf_printf(b, "%s\"%s\":%" PRIu64, first ? "" : ",", kvb_errkind_name((kvb_errkind)e),
                      s->errors[e]);
        first = false;
    }
    for (int c = 0; c < KVB_HTTP_CODES; c++)
        if (s->http_status[c])
            kv_buf_printf(b, ",\"http_%d\":%" PRIu64, c, s->http_status[c]);
    kv_buf_appends(b, "}");
}

static void json_phase(kv_buf *b, const kvb_stats *s)
{
    double secs = kvb_stats_seconds(s);
    kv_buf_printf(b,
                  "{\"sent\":%" PRIu64 ",\"warmup_ops\":%" PRIu64 ",\"warmup_failed\":%" PRIu64
                  ",\"ops\":%" PRIu64 ",\"ok\":%" PRIu64 ",\"failed\":%" PRIu64
                  ",\"missed\":%" PRIu64 ",\"seconds\":%.6f,\"throughput\":%.3f",
                  s->sent, s->warmup_ops, s->warmup_fail, kvb_stats_ops(s), s->all.count,
                  kvb_stats_failed(s), s->missed, secs, per_second(s->all.count, secs));
    kv_buf_appends(b, ",\"by_op\":{");
    for (int k = 0; k < KVB_OP_KINDS; k++)
        kv_buf_printf(
            b, "%s\"%s\":{\"ok\":%" PRIu64 ",\"not_found\":%" PRIu64 ",\"failed\":%" PRIu64 "}",
            k ? "," : "", kvb_op_name((kvb_op_kind)k), s->ok[k], s->miss[k], s->fail[k]);
    kv_buf_appends(b, "},\"errors\":");
    json_errors(b, s);
    kv_buf_appends(b, ",\"latency_ms\":{\"all\":");
    json_hist(b, &s->all);
    for (int k = 0; k < KVB_OP_KINDS; k++) {
        if (s->hist[k].count == 0)
            continue;
        kv_buf_printf(b, ",\"%s\":", kvb_op_name((kvb_op_kind)k));
        json_hist(b, &s->hist[k]);
    }
    kv_buf_appends(b, "}}");
}

void kvb_report_json(FILE *f, const kvb_report *r)
{
    const kvb_cfg *cfg = r->cfg;
    kv_buf b = KV_BUF_INIT;
    kv_buf_printf(&b, "{\"tool\":\"kvbench\",\"version\":\"%s\",\"target\":\"%s\",\"urls\":[",
                  KV_VERSION, kvb_target_name(cfg->proto.target));
    for (size_t i = 0; i < cfg->neps; i++) {
        kv_buf_appends(&b, i ? ",\"" : "\"");
        kv_buf_append_json_str(&b, cfg->eps[i].url, strlen(cfg->eps[i].url));
        kv_buf_appends(&b, "\"");
    }
    kv_buf_printf(&b,
                  "],\"redis_wait\":%u,\"workload\":\"%s\",\"mix\":{\"read\":%u,\"update\":%u,"
                  "\"delete\":%u},\"keys\":%" PRIu64 ",\"key_size\":%zu,\"value_size\":%zu,"
                  "\"distribution\":\"%s\",\"theta\":%.2f,\"mode\":\"%s\",\"rate\":%.3f,"
                  "\"connections\":%u,\"threads\":%u,\"pipeline\":%u,\"warmup_s\":%.3f,"
                  "\"duration_s\":%.3f,\"ops_limit\":%" PRIu64 ",\"timeout_s\":%.3f,"
                  "\"seed\":%" PRIu64 ",\"interrupted\":%s",
                  cfg->proto.redis_wait, cfg->workload, cfg->mix.pct[KVB_OP_READ],
                  cfg->mix.pct[KVB_OP_UPDATE], cfg->mix.pct[KVB_OP_DELETE], cfg->nkeys,
                  cfg->key_size, cfg->value_size,
                  cfg->dist == KVB_DIST_ZIPFIAN ? "zipfian" : "uniform", cfg->theta,
                  cfg->rate > 0 ? "open" : "closed", cfg->rate, cfg->conns, cfg->threads,
                  cfg->pipeline, cfg->warmup_ns / 1e9, cfg->duration_ns / 1e9, cfg->ops,
                  cfg->timeout_ns / 1e9, cfg->seed, r->interrupted ? "true" : "false");
    uint64_t total = r->run->sent + (r->load ? r->load->sent : 0);
    kv_buf_printf(&b, ",\"requests_sent\":%" PRIu64 ",\"load\":", total);
    if (r->load)
        json_phase(&b, r->load);
    else
        kv_buf_appends(&b, "null");
    kv_buf_appends(&b, ",\"run\":");
    json_phase(&b, r->run);
    kv_buf_appends(&b, ",\"first_error\":\"");
    if (r->first_error)
        kv_buf_append_json_str(&b, r->first_error, strlen(r->first_error));
    kv_buf_appends(&b, "\",\"timeline\":[");
    for (size_t i = 0; i < r->nticks; i++) {
        const kvb_tick *t = &r->ticks[i];
        kv_buf_printf(&b,
                      "%s{\"t\":%.3f,\"warmup\":%s,\"ops\":%" PRIu64 ",\"errors\":%" PRIu64
                      ",\"p50_ms\":%.6f,\"p99_ms\":%.6f,\"max_ms\":%.6f}",
                      i ? "," : "", t->t, t->warmup ? "true" : "false", t->done, t->errors,
                      MS(t->p50_ns), MS(t->p99_ns), MS(t->max_ns));
    }
    kv_buf_appends(&b, "]}\n");
    fwrite(b.data, 1, b.len, f);
    kv_buf_free(&b);
}

/* ---------- plot ---------- */

static bool find_in_path(const char *name, char *out, size_t cap)
{
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *colon = strchr(path, ':');
        size_t n = colon ? (size_t)(colon - path) : strlen(path);
        if (n > 0 && (size_t)snprintf(out, cap, "%.*s/%s", (int)n, path, name) < cap &&
            access(out, X_OK) == 0)
            return true;
        path += n;
        if (*path == ':')
            path++;
    }
    return false;
}

int kvb_report_plot(const kvb_report *r, const char *svg_path)
{
    char gnuplot[512];
    if (!find_in_path("gnuplot", gnuplot, sizeof gnuplot)) {
        fprintf(stderr,
                "kvbench: gnuplot is not installed; --plot %s skipped "
                "(apt-get install gnuplot-nox)\n",
                svg_path);
        return 1;
    }
    char dir[] = "/tmp/kvbench-plot-XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "kvbench: --plot: cannot create a temporary directory: %s\n",
                strerror(errno));
        return -1;
    }
    char tl[64], pc[64], gp[64];
    snprintf(tl, sizeof tl, "%s/timeline.dat", dir);
    snprintf(pc, sizeof pc, "%s/percentiles.dat", dir);
    snprintf(gp, sizeof gp, "%s/plot.gp", dir);
    int rc = -1;
    FILE *f = fopen(tl, "w");
    if (f) {
        fprintf(f, "# t ops_per_s p50_ms p99_ms warmup\n");
        double prev = 0;
        for (size_t i = 0; i < r->nticks; i++) {
            const kvb_tick *t = &r->ticks[i];
            double span = t->t - prev;
            prev = t->t;
            fprintf(f, "%.3f %.3f %.6f %.6f %d\n", t->t, span > 0 ? (double)t->done / span : 0,
                    MS(t->p50_ns), MS(t->p99_ns), t->warmup ? 1 : 0);
        }
        fclose(f);
    }
    f = fopen(pc, "w");
    if (f) {
        /* The HdrHistogram-style curve: x = 1/(1-p) on a log axis spreads the tail. */
        const kvb_hist *h = &r->run->all;
        fprintf(f, "# percentile one_over_1_minus_p latency_ms\n");
        for (int k = 0; k <= 50; k++) {
            double p = 100.0 * (1.0 - pow(10.0, -k / 10.0));
            if (h->count && 100.0 - p < 100.0 / (double)h->count)
                break;
            fprintf(f, "%.5f %.3f %.6f\n", p, 1.0 / (1.0 - p / 100.0),
                    MS(kvb_hist_percentile(h, p)));
        }
        fclose(f);
    }
    f = fopen(gp, "w");
    if (f) {
        const kvb_cfg *cfg = r->cfg;
        fprintf(f, "set terminal svg size 900,900 dynamic font 'sans,11'\n");
        fprintf(f, "set output '%s'\n", svg_path);
        fprintf(f, "set multiplot layout 2,1 title 'kvbench: %s, workload %s, %s'\n",
                kvb_target_name(cfg->proto.target), cfg->workload,
                cfg->rate > 0 ? "open loop" : "closed loop");
        fprintf(f, "set grid\nset key top left\n");
        fprintf(f, "set title 'throughput'\nset xlabel 'seconds'\nset ylabel 'ops/s'\n"
                   "set xrange [0:*]\nset yrange [0:*]\n");
        fprintf(f,
                "plot '%s' using 1:($5==0?$2:1/0) with linespoints title 'measured', "
                "'' using 1:($5==1?$2:1/0) with linespoints title 'warm-up'\n",
                tl);
        fprintf(f, "set title 'latency by percentile (measured operations)'\n"
                   "set logscale x\nset xlabel 'percentile'\nset ylabel 'ms'\n"
                   "set xtics ('0' 1, '90' 10, '99' 100, '99.9' 1000, '99.99' 10000, "
                   "'99.999' 100000)\n");
        fprintf(f, "plot '%s' using 2:3 with lines lw 2 title 'latency'\n", pc);
        fprintf(f, "unset multiplot\n");
        fclose(f);
        pid_t pid = fork();
        if (pid == 0) {
            execl(gnuplot, "gnuplot", gp, (char *)NULL);
            _exit(127);
        }
        int status = 0;
        if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
            WEXITSTATUS(status) == 0)
            rc = 0;
        else
            fprintf(stderr, "kvbench: gnuplot failed; --plot %s not written (script: %s)\n",
                    svg_path, gp);
    }
    if (rc == 0) {
        unlink(tl);
        unlink(pc);
        unlink(gp);
        rmdir(dir);
    }
    return rc;
}
