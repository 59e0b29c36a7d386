/*
 * test_metrics.c — the metrics registry (src/http/metrics.c) renders valid Prometheus
 * text format 0.0.4: HELP and TYPE once per family, cumulative histogram buckets ending
 * in +Inf with _sum and _count, escaped label values.
 */
#include "http/metrics.h"
#include "kvstore/error.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *render(kv_metrics *m)
{
    kv_buf out = KV_BUF_INIT;
    cr_assert(kv_metrics_render(m, &out) == KV_OK);
    cr_assert(out.data);
    return out.data;
}

static int count_occurrences(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* The value of the sample line that starts with prefix (a metric name with labels). */
static double sample(const char *text, const char *prefix)
{
    size_t pl = strlen(prefix);
    for (const char *line = text; line && *line;) {
        if (strncmp(line, prefix, pl) == 0 && line[pl] == ' ')
            return strtod(line + pl + 1, NULL);
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    cr_assert_fail("no sample %s in:\n%s", prefix, text);
    return -1;
}

Test(metrics, request_counters_and_help_type_lines)
{
    kv_metrics *m = kv_metrics_new();
    kv_metrics_observe_request(m, "kv", "GET", 200, 0.001);
    kv_metrics_observe_request(m, "kv", "GET", 200, 0.002);
    kv_metrics_observe_request(m, "kv", "PUT", 204, 0.003);
    kv_metrics_observe_request(m, "healthz", "GET", 200, 0.0);
    char *t = render(m);
    cr_assert_eq(count_occurrences(t, "# HELP kv_http_requests_total "), 1);
    cr_assert_eq(count_occurrences(t, "# TYPE kv_http_requests_total counter\n"), 1);
    cr_assert_eq(count_occurrences(t, "# TYPE kv_http_request_duration_seconds histogram\n"), 1);
    cr_assert_eq(sample(t, "kv_http_requests_total{route=\"kv\",method=\"GET\",status=\"200\"}"),
                 2);
    cr_assert_eq(sample(t, "kv_http_requests_total{route=\"kv\",method=\"PUT\",status=\"204\"}"),
                 1);
    cr_assert_eq(
        sample(t, "kv_http_requests_total{route=\"healthz\",method=\"GET\",status=\"200\"}"), 1);
    /* HELP precedes TYPE precedes the samples of the family */
    const char *help = strstr(t, "# HELP kv_http_requests_total");
    const char *type = strstr(t, "# TYPE kv_http_requests_total");
    const char *first = strstr(t, "kv_http_requests_total{");
    cr_assert(help < type && type < first);
    /* every line ends with a newline, and the text does too */
    cr_assert_eq(t[strlen(t) - 1], '\n');
    free(t);
    kv_metrics_free(m);
}

Test(metrics, histogram_buckets_are_cumulative)
{
    kv_metrics *m = kv_metrics_new();
    double obs[] = {0.00005, 0.0003, 0.004, 0.004, 0.2, 3.0, 99.0};
    double sum = 0;
    for (size_t i = 0; i < sizeof(obs) / sizeof(obs[0]); i++) {
        kv_metrics_observe_request(m, "kv", "GET", 200, obs[i]);
        sum += obs[i];
    }
    char *t = render(m);
    const char *p = "kv_http_request_duration_seconds_bucket{route=\"kv\",le=\"";
    char key[200];
    snprintf(key, sizeof(key), "%s0.0001\"}", p);
    cr_assert_eq(sample(t, key), 1);
    snprintf(key, sizeof(key), "%s0.0005\"}", p);
    cr_assert_eq(sample(t, key), 2);
    snprintf(key, sizeof(key), "%s0.005\"}", p);
    cr_assert_eq(sample(t, key), 4);
    snprintf(key, sizeof(key), "%s0.25\"}", p);
    cr_assert_eq(sample(t, key), 5);
    snprintf(key, sizeof(key), "%s5\"}", p);
    cr_assert_eq(sample(t, key), 6);
    snprintf(key, sizeof(key), "%s10\"}", p);
    cr_assert_eq(sample(t, key), 6);
    snprintf(key, sizeof(key), "%s+Inf\"}", p);
    cr_assert_eq(sample(t, key), 7);
    cr_assert_eq(sample(t, "kv_http_request_duration_seconds_count{route=\"kv\"}"), 7);
    double got = sample(t, "kv_http_request_duration_seconds_sum{route=\"kv\"}");
    cr_assert(got > sum - 1e-9 && got < sum + 1e-9, "sum %g want %g", got, sum);

    /* Walk every bucket line in order: counts never decrease, +Inf comes last. */
    double prev = -1;
    int nb = 0;
    const char *line = strstr(t, p);
    const char *last = NULL;
    while (line && strncmp(line, p, strlen(p)) == 0) {
        const char *sp = strchr(line, ' ');
        double v = strtod(sp + 1, NULL);
        cr_assert(v >= prev, "bucket counts decrease at %.60s", line);
        prev = v;
        nb++;
        last = line;
        line = strchr(line, '\n') + 1;
    }
    cr_assert(nb >= 10);
    cr_assert(strncmp(last + strlen(p), "+Inf\"}", 6) == 0);
    free(t);
    kv_metrics_free(m);
}

Test(metrics, labelled_and_plain_counters)
{
    kv_metrics *m = kv_metrics_new();
    kv_metrics_count(m, "kv_http_rejected_total", "Refused, by reason.", "reason", "malformed", 1);
    kv_metrics_count(m, "kv_http_rejected_total", "ignored later", "reason", "malformed", 2);
    kv_metrics_count(m, "kv_http_rejected_total", NULL, "reason", "timeout", 0);
    kv_metrics_count(m, "kv_store_fsyncs_total", "Fsyncs.", NULL, NULL, 5);
    char *t = render(m);
    cr_assert(strstr(t, "# HELP kv_http_rejected_total Refused, by reason.\n"), "%s", t);
    cr_assert(strstr(t, "# TYPE kv_http_rejected_total counter\n"));
    cr_assert_eq(sample(t, "kv_http_rejected_total{reason=\"malformed\"}"), 3);
    cr_assert_eq(sample(t, "kv_http_rejected_total{reason=\"timeout\"}"), 0);
    cr_assert(strstr(t, "# TYPE kv_store_fsyncs_total counter\nkv_store_fsyncs_total 5\n"), "%s",
              t);
    cr_assert_eq(count_occurrences(t, "# TYPE kv_http_rejected_total"), 1);
    free(t);
    kv_metrics_free(m);
}

Test(metrics, counter_set_mirrors_a_total)
{
    kv_metrics *m = kv_metrics_new();
    kv_metrics_counter_set(m, "kv_store_fsyncs_total", "fsync calls made.", 7);
    kv_metrics_counter_set(m, "kv_store_fsyncs_total", "fsync calls made.", 9);
    char *t = render(m);
    cr_assert(strstr(t, "# HELP kv_store_fsyncs_total fsync calls made.\n"
                        "# TYPE kv_store_fsyncs_total counter\n"
                        "kv_store_fsyncs_total 9\n"),
              "%s", t);
    free(t);
    kv_metrics_free(m);
}

Test(metrics, label_values_and_help_are_escaped)
{
    kv_metrics *m = kv_metrics_new();
    kv_metrics_count(m, "odd_total", "Help with \\ and\nnewline \"quoted\".", "v", "a\\b\"c\nd", 1);
    char *t = render(m);
    cr_assert(strstr(t, "odd_total{v=\"a\\\\b\\\"c\\nd\"} 1\n"), "%s", t);
    /* HELP escapes backslash and newline but keeps quotes */
    cr_assert(strstr(t, "# HELP odd_total Help with \\\\ and\\nnewline \"quoted\".\n"), "%s", t);
    free(t);
    kv_metrics_free(m);
}

Test(metrics, gauges)
{
    kv_metrics *m = kv_metrics_new();
    kv_metrics_gauge(m, "kv_http_connections", "Open connections.", 3);
    kv_metrics_gauge(m, "kv_http_connections", "Open connections.", 2);
    kv_metrics_gauge(m, "kv_store_live_bytes", "Live bytes.", 1234567890123.0);
    kv_metrics_gauge(m, "ratio", "A fraction.", 0.1);
    char *t = render(m);
    cr_assert(strstr(t, "# HELP kv_http_connections Open connections.\n"
                        "# TYPE kv_http_connections gauge\n"
                        "kv_http_connections 2\n"),
              "%s", t);
    cr_assert(strstr(t, "kv_store_live_bytes 1234567890123\n"), "%s", t);
    cr_assert(strstr(t, "ratio 0.1\n"), "%s", t);
    free(t);
    kv_metrics_free(m);
}

Test(metrics, empty_registry_renders_families)
{
    kv_metrics *m = kv_metrics_new();
    char *t = render(m);
    cr_assert(strstr(t, "# TYPE kv_http_requests_total counter\n"));
    cr_assert(strstr(t, "# TYPE kv_http_request_duration_seconds histogram\n"));
    free(t);
    kv_metrics_free(m);
    kv_metrics_free(NULL);
}
