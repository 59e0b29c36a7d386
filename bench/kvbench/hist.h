/*
 * hist.h — kvbench's latency histogram: log-bucketed counts in the manner of HdrHistogram,
 * with a relative error below 1% over the whole uint64_t range.
 *
 * Layout: values 0..255 each have an exact bucket; above that every power-of-two range
 * [2^k, 2^(k+1)) is split into 128 equal buckets, so a bucket's width is at most 1/128 of
 * its lowest value. A percentile is reported as the midpoint of its bucket (clamped to the
 * exact minimum and maximum), so the reported value is within 0.4% of a recorded one.
 * The count, sum, minimum and maximum are kept exactly.
 *
 * A kv_hist is plain memory (about 60 KiB) owned by its holder; not thread-safe — each
 * thread records into its own and the owner merges them (kvb_hist_merge).
 */
#ifndef KVB_HIST_H
#define KVB_HIST_H

#include <stdbool.h>
#include <stdint.h>

#define KVB_HIST_SUB_BITS 7                         /* 128 buckets per power of two */
#define KVB_HIST_SUB      (1u << KVB_HIST_SUB_BITS) /* 128 */
#define KVB_HIST_EXACT    (2u * KVB_HIST_SUB)       /* values below 256 are exact */
/* 256 exact buckets + 128 for each of the shifts 1..56 (msb 8..63). */
#define KVB_HIST_BUCKETS (KVB_HIST_EXACT + (64u - 8u) * KVB_HIST_SUB)

typedef struct kvb_hist {
    uint64_t count;
    uint64_t min; /* UINT64_MAX while empty */
    uint64_t max;
    double sum; /* for the mean; a double so it never overflows */
    uint64_t counts[KVB_HIST_BUCKETS];
} kvb_hist;

/* Empty h (also the way to reset it). */
void kvb_hist_init(kvb_hist *h);

/* Record one value (any uint64_t; kvbench records nanoseconds). */
void kvb_hist_record(kvb_hist *h, uint64_t v);

/* Add every count of src to dst. */
void kvb_hist_merge(kvb_hist *dst, const kvb_hist *src);

/*
 * The value at percentile p (0..100): the smallest recorded value v such that at least
 * ceil(p/100 * count) values are <= v, reported as the midpoint of v's bucket and clamped
 * to [min, max]. p <= 0 gives min, p >= 100 gives max. 0 when h is empty.
 */
uint64_t kvb_hist_percentile(const kvb_hist *h, double p);

/* Mean of the recorded values, 0 when empty. */
double kvb_hist_mean(const kvb_hist *h);

/* Bucket arithmetic, exposed for the unit test: the bucket of v and the range it covers. */
uint32_t kvb_hist_bucket(uint64_t v);
void kvb_hist_bucket_range(uint32_t b, uint64_t *lo, uint64_t *hi);

#endif
