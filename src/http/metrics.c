/*
 * metrics.c — the node's metrics registry and its Prometheus text rendering (see
 * metrics.h).
 *
 * Loop thread only: nothing here locks. The registry is small (a few routes × methods ×
 * statuses, a few counter families, a few gauges), so series live in flat arrays that
 * are searched linearly; observing a request allocates only the first time a new
 * (route, method, status) combination is seen.
 *
 * Rendering follows the text exposition format 0.0.4: every family gets its # HELP and
 * # TYPE lines once, its samples follow contiguously, label values escape backslash,
 * double quote and newline, and histograms print cumulative _bucket{le=...} lines up to
 * le="+Inf", then _sum and _count.
 */
#include "http/metrics.h"

#include "kvstore/error.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Upper bounds of the latency buckets in seconds: 100 µs .. 10 s, 1-2.5-5 steps. */
static const double hist_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                     0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
#define HIST_NB (sizeof(hist_bounds) / sizeof(hist_bounds[0]))

#define REQ_NAME  "kv_http_requests_total"
#define REQ_HELP  "HTTP requests answered, by route, method and status."
#define HIST_NAME "kv_http_request_duration_seconds"
#define HIST_HELP "Time from a request's first byte to its answer, by route."

typedef struct req_series {
    const char *route;
    const char *method;
    int status;
    uint64_t n;
} req_series;

typedef struct hist_series {
    const char *route;
    uint64_t buckets[HIST_NB]; /* per bucket, not cumulative; cumulated when rendered */
    uint64_t count;            /* includes observations above the last bound (+Inf) */
    double sum;
} hist_series;

typedef struct counter_series {
    char *value; /* copied label value; NULL for an unlabelled counter */
    uint64_t n;
} counter_series;

typedef struct counter_family {
    const char *name;
    const char *help;
    const char *label; /* label name, or NULL */
    counter_series *series;
    size_t n, cap;
} counter_family;

typedef struct gauge {
    const char *name;
    const char *help;
    double value;
} gauge;

struct kv_metrics {
    req_series *reqs;
    size_t nreqs, capreqs;
    hist_series *hists;
    size_t nhists, caphists;
    counter_family *families;
    size_t nfamilies, capfamilies;
    gauge *gauges;
    size_t ngauges, capgauges;
};

/* Grow a flat array to hold at least one more element. false on out of memory. */
static bool grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return true;
    size_t ncap = *cap ? *cap * 2 : 8;
    void *p = realloc(*arr, ncap * elem);
    if (!p)
        return false;
    *arr = p;
    *cap = ncap;
    return true;
}

/* Static strings usually arrive as the same pointer; strcmp covers equal copies. */
static bool same(const char *a, const char *b)
{
    if (a == b)
        return true;
    if (!a || !b)
        return false;
    return strcmp(a, b) == 0;
}

kv_metrics *kv_metrics_new(void)
{
    return calloc(1, sizeof(kv_metrics));
}

void kv_metrics_free(kv_metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nfamilies; i++) {
        for (size_t j = 0; j < m->families[i].n; j++)
            free(m->families[i].series[j].value);
        free(m->families[i].series);
    }
    free(m->families);
    free(m->reqs);
    free(m->hists);
    free(m->gauges);
    free(m);
}

void kv_metrics_observe_request(kv_metrics *m, const char *route, const char *method, int status,
                                double seconds)
{
    if (!m)
        return;
    if (!route)
        route = "invalid";
    if (!method)
        method = "UNKNOWN";

    req_series *rs = NULL;
    for (size_t i = 0; i < m->nreqs; i++) {
        req_series *s = &m->reqs[i];
        if (s->status == status && same(s->route, route) && same(s->method, method)) {
            rs = s;
            break;
        }
    }
    if (!rs && grow((void **)&m->reqs, &m->capreqs, m->nreqs, sizeof(*m->reqs))) {
        rs = &m->reqs[m->nreqs++];
        *rs = (req_series){.route = route, .method = method, .status = status};
    }
    if (rs)
        rs->n++;

    hist_series *hs = NULL;
    for (size_t i = 0; i < m->nhists; i++) {
        if (same(m->hists[i].route, route)) {
            hs = &m->hists[i];
            break;
        }
    }
    if (!hs && grow((void **)&m->hists, &m->caphists, m->nhists, sizeof(*m->hists))) {
        hs = &m->hists[m->nhists++];
        memset(hs, 0, sizeof(*hs));
        hs->route = route;
    }
    if (!hs)
        return;
    if (!(seconds >= 0)) /* negative or NaN: a clock oddity, count it as instant */
        seconds = 0;
    for (size_t b = 0; b < HIST_NB; b++) {
        if (seconds <= hist_bounds[b]) {
            hs->buckets[b]++;
            break;
        }
    }
    hs->count++;
    hs->sum += seconds;
}

void kv_metrics_count(kv_metrics *m, const char *name, const char *help, const char *label,
                      const char *value, uint64_t by)
{
    if (!m || !name)
        return;
    counter_family *f = NULL;
    for (size_t i = 0; i < m->nfamilies; i++) {
        if (same(m->families[i].name, name)) {
            f = &m->families[i];
            break;
        }
    }
    if (!f) {
        if (!grow((void **)&m->families, &m->capfamilies, m->nfamilies, sizeof(*m->families)))
            return;
        f = &m->families[m->nfamilies++];
        *f = (counter_family){.name = name, .help = help, .label = label};
    }
    /* The family's label name is fixed by its first use. */
    const char *v = f->label ? (value ? value : "") : NULL;
    for (size_t i = 0; i < f->n; i++) {
        if (same(f->series[i].value, v)) {
            f->series[i].n += by;
            return;
        }
    }
    if (!grow((void **)&f->series, &f->cap, f->n, sizeof(*f->series)))
        return;
    char *copy = NULL;
    if (v) {
        copy = strdup(v);
        if (!copy)
            return;
    }
    f->series[f->n++] = (counter_series){.value = copy, .n = by};
}

void kv_metrics_counter_set(kv_metrics *m, const char *name, const char *help, uint64_t value)
{
    if (!m || !name)
        return;
    /* Make sure the series exists, then overwrite its value. */
    kv_metrics_count(m, name, help, NULL, NULL, 0);
    for (size_t i = 0; i < m->nfamilies; i++) {
        counter_family *f = &m->families[i];
        if (!same(f->name, name))
            continue;
        for (size_t j = 0; j < f->n; j++) {
            if (f->series[j].value == NULL) {
                f->series[j].n = value;
                return;
            }
        }
    }
}

void kv_metrics_gauge(kv_metrics *m, const char *name, const char *help, double value)
{
    if (!m || !name)
        return;
    for (size_t i = 0; i < m->ngauges; i++) {
        if (same(m->gauges[i].name, name)) {
            m->gauges[i].value = value;
            return;
        }
    }
    if (!grow((void **)&m->gauges, &m->capgauges, m->ngauges, sizeof(*m->gauges)))
        return;
    m->gauges[m->ngauges++] = (gauge){.name = name, .help = help, .value = value};
}

/* ---- rendering ---- */

/* HELP text escapes backslash and newline; label values also escape the double quote. */
static int put_escaped(kv_buf *out, const char *s, bool quote)
{
    if (!s)
        return KV_OK;
    const char *run = s;
    for (const char *p = s;; p++) {
        const char *esc = NULL;
        if (*p == '\\')
            esc = "\\\\";
        else if (*p == '\n')
            esc = "\\n";
        else if (quote && *p == '"')
            esc = "\\\"";
        else if (*p != '\0')
            continue;
        int rc = kv_buf_append(out, run, (size_t)(p - run));
        if (rc)
            return rc;
        if (!esc)
            return KV_OK;
        rc = kv_buf_appends(out, esc);
        if (rc)
            return rc;
        run = p + 1;
    }
}

static int put_header(kv_buf *out, const char *name, const char *help, const char *type)
{
    int rc = kv_buf_printf(out, "# HELP %s ", name);
    if (!rc)
        rc = put_escaped(out, help ? help : name, false);
    if (!rc)
        rc = kv_buf_printf(out, "\n# TYPE %s %s\n", name, type);
    return rc;
}

/* Shortest of %.15g / %.17g that reads back as the same double; Prometheus spellings
 * for the special values. */
static int put_double(kv_buf *out, double v)
{
    if (isnan(v))
        return kv_buf_appends(out, "NaN");
    if (isinf(v))
        return kv_buf_appends(out, v > 0 ? "+Inf" : "-Inf");
    char tmp[40];
    snprintf(tmp, sizeof(tmp), "%.15g", v);
    if (strtod(tmp, NULL) != v)
        snprintf(tmp, sizeof(tmp), "%.17g", v);
    return kv_buf_appends(out, tmp);
}

static int put_label(kv_buf *out, const char *name, const char *value, bool first)
{
    int rc = kv_buf_printf(out, "%s%s=\"", first ? "" : ",", name);
    if (!rc)
        rc = put_escaped(out, value, true);
    if (!rc)
        rc = kv_buf_append(out, "\"", 1);
    return rc;
}

static int render_requests(const kv_metrics *m, kv_buf *out)
{
    int rc = put_header(out, REQ_NAME, REQ_HELP, "counter");
    for (size_t i = 0; !rc && i < m->nreqs; i++) {
        const req_series *s = &m->reqs[i];
        char status[16];
        snprintf(status, sizeof(status), "%d", s->status);
        rc = kv_buf_appends(out, REQ_NAME "{");
        if (!rc)
            rc = put_label(out, "route", s->route, true);
        if (!rc)
            rc = put_label(out, "method", s->method, false);
        if (!rc)
            rc = put_label(out, "status", status, false);
        if (!rc)
            rc = kv_buf_printf(out, "} %llu\n", (unsigned long long)s->n);
    }
    return rc;
}

static int render_histograms(const kv_metrics *m, kv_buf *out)
{
    int rc = put_header(out, HIST_NAME, HIST_HELP, "histogram");
    for (size_t i = 0; !rc && i < m->nhists; i++) {
        const hist_series *h = &m->hists[i];
        uint64_t cum = 0;
        for (size_t b = 0; !rc && b <= HIST_NB; b++) {
            char le[40];
            if (b < HIST_NB) {
                cum += h->buckets[b];
                snprintf(le, sizeof(le), "%g", hist_bounds[b]);
            } else {
                cum = h->count;
                snprintf(le, sizeof(le), "+Inf");
            }
            rc = kv_buf_appends(out, HIST_NAME "_bucket{");
            if (!rc)
                rc = put_label(out, "route", h->route, true);
            if (!rc)
                rc = put_label(out, "le", le, false);
            if (!rc)
                rc = kv_buf_printf(out, "} %llu\n", (unsigned long long)cum);
        }
        if (!rc)
            rc = kv_buf_appends(out, HIST_NAME "_sum{");
        if (!rc)
            rc = put_label(out, "route", h->route, true);
        if (!rc)
            rc = kv_buf_appends(out, "} ");
        if (!rc)
            rc = put_double(out, h->sum);
        if (!rc)
            rc = kv_buf_appends(out, "\n" HIST_NAME "_count{");
        if (!rc)
            rc = put_label(out, "route", h->route, true);
        if (!rc)
            rc = kv_buf_printf(out, "} %llu\n", (unsigned long long)h->count);
    }
    return rc;
}

static int render_counters(const kv_metrics *m, kv_buf *out)
{
    int rc = KV_OK;
    for (size_t i = 0; !rc && i < m->nfamilies; i++) {
        const counter_family *f = &m->families[i];
        rc = put_header(out, f->name, f->help, "counter");
        for (size_t j = 0; !rc && j < f->n; j++) {
            rc = kv_buf_appends(out, f->name);
            if (!rc && f->label) {
                rc = kv_buf_append(out, "{", 1);
                if (!rc)
                    rc = put_label(out, f->label, f->series[j].value, true);
                if (!rc)
                    rc = kv_buf_append(out, "}", 1);
            }
            if (!rc)
                rc = kv_buf_printf(out, " %llu\n", (unsigned long long)f->series[j].n);
        }
    }
    return rc;
}

static int render_gauges(const kv_metrics *m, kv_buf *out)
{
    int rc = KV_OK;
    for (size_t i = 0; !rc && i < m->ngauges; i++) {
        const gauge *g = &m->gauges[i];
        rc = put_header(out, g->name, g->help, "gauge");
        if (!rc)
            rc = kv_buf_printf(out, "%s ", g->name);
        if (!rc)
            rc = put_double(out, g->value);
        if (!rc)
            rc = kv_buf_append(out, "\n", 1);
    }
    return rc;
}

int kv_metrics_render(const kv_metrics *m, kv_buf *out)
{
    if (!m || !out)
        return KV_EINVAL;
    int rc = render_requests(m, out);
    if (!rc)
        rc = render_histograms(m, out);
    if (!rc)
        rc = render_counters(m, out);
    if (!rc)
        rc = render_gauges(m, out);
    return rc;
}
