/*
 * metrics.h — the node's metrics registry, rendered in the Prometheus text format.
 *
 * Request counters by route, method and status; latency histograms by route; named
 * counters for errors (bad requests by reason, dropped connections, ...). Gauges that
 * belong to other modules (keys and bytes stored) are appended by the caller of
 * kv_metrics_render. Loop thread only.
 */
#ifndef KV_HTTP_METRICS_H
#define KV_HTTP_METRICS_H

#include "common/buf.h"

#include <stdint.h>

typedef struct kv_metrics kv_metrics;

kv_metrics *kv_metrics_new(void);
void kv_metrics_free(kv_metrics *m);

/*
 * One answered HTTP request: counts kv_http_requests_total{route,method,status} and
 * observes kv_http_request_duration_seconds{route}, a histogram with fixed buckets
 * 0.0001, 0.00025, 0.0005, 0.001, ... 2.5, 5, 10 seconds and +Inf. route and method
 * are static strings (kept by pointer); route NULL counts as "invalid".
 */
void kv_metrics_observe_request(kv_metrics *m, const char *route, const char *method, int status,
                                double seconds);

/*
 * Add by to the counter name{label="value"} (name and label static strings, value copied).
 * label may be NULL for an unlabelled counter. help is the HELP text (static), used the
 * first time the counter is seen.
 */
void kv_metrics_count(kv_metrics *m, const char *name, const char *help, const char *label,
                      const char *value, uint64_t by);

/*
 * Set the unlabelled counter name to value: for totals another module keeps itself
 * (kv_store_fsyncs_total, ...), so they render with # TYPE counter. name and help are
 * static strings.
 */
void kv_metrics_counter_set(kv_metrics *m, const char *name, const char *help, uint64_t value);

/* Set a gauge (unlabelled). name and help are static strings. */
void kv_metrics_gauge(kv_metrics *m, const char *name, const char *help, double value);

/*
 * Append the whole registry in Prometheus text exposition format 0.0.4 to out: request
 * counters, duration histograms, then counters and gauges in the order first seen, each
 * family with its # HELP and # TYPE lines. A caller appending more families (store
 * gauges) must use other names. KV_OK, KV_EINVAL, or KV_ENOMEM.
 */
int kv_metrics_render(const kv_metrics *m, kv_buf *out);

#endif
