/*
 * hist.c — log-bucketed latency histogram (see hist.h for the layout and error bound).
 * No global state; safe from any thread on distinct histograms.
 */
#include "hist.h"

#include <string.h>

void kvb_hist_init(kvb_hist *h)
{
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

uint32_t kvb_hist_bucket(uint64_t v)
{
    if (v < KVB_HIST_EXACT)
        return (uint32_t)v;
    /* msb >= 8. Shift v right until it lands in [128, 256): those top 8 bits pick one of
     * 128 equal sub-buckets of the power-of-two range that holds v. */
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - KVB_HIST_SUB_BITS; /* >= 1 */
    uint64_t top = v >> shift;                /* 128..255 */
    return KVB_HIST_EXACT + (shift - 1u) * KVB_HIST_SUB + (uint32_t)(top - KVB_HIST_SUB);
}

void kvb_hist_bucket_range(uint32_t b, uint64_t *lo, uint64_t *hi)
{
    if (b < KVB_HIST_EXACT) {
        *lo = *hi = b;
        return;
    }
    uint32_t rel = b - KVB_HIST_EXACT;
    unsigned shift = rel / KVB_HIST_SUB + 1u;
    uint64_t top = (uint64_t)(rel % KVB_HIST_SUB) + KVB_HIST_SUB;
    *lo = top << shift;
    /* The very last bucket ends at UINT64_MAX; (top+1) << shift would wrap to 0. */
    *hi = (shift == 56u && top == 255u) ? UINT64_MAX : ((top + 1u) << shift) - 1u;
}

void kvb_hist_record(kvb_hist *h, uint64_t v)
{
    h->counts[kvb_hist_bucket(v)]++;
    h->count++;
    h->sum += (double)v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void kvb_hist_merge(kvb_hist *dst, const kvb_hist *src)
{
    if (src->count == 0)
        return;
    for (uint32_t i = 0; i < KVB_HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t kvb_hist_percentile(const kvb_hist *h, double p)
{
    if (h->count == 0)
        return 0;
    if (p <= 0.0)
        return h->min;
    if (p >= 100.0)
        return h->max;
    double want_d = p / 100.0 * (double)h->count;
    uint64_t want = (uint64_t)want_d;
    if ((double)want < want_d)
        want++; /* ceil */
    if (want == 0)
        want = 1;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < KVB_HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= want) {
            uint64_t lo, hi;
            kvb_hist_bucket_range(i, &lo, &hi);
            uint64_t mid = lo + (hi - lo) / 2u;
            if (mid < h->min)
                mid = h->min;
            if (mid > h->max)
                mid = h->max;
            return mid;
        }
    }
    return h->max; /* unreachable while counts sum to count */
}

double kvb_hist_mean(const kvb_hist *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}
