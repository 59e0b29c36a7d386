/*
 * test_histogram.c — kvbench's latency histogram and key generators: percentiles of known
 * distributions (uniform, exponential, a bimodal mix) within 1% of the exact values, the
 * bucket layout's error bound over the whole uint64_t range, merging, and the zipfian
 * chooser's skew (YCSB's theta 0.99). Single-threaded.
 */
#include "hist.h"
#include "keygen.h"
#include "proto.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TH_CHECK(cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond))                                                                               \
            cr_assert_fail(__VA_ARGS__);                                                           \
    } while (0)

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Exact percentile by the same definition: the ceil(p*n)-th smallest value. */
static uint64_t exact_pct(const uint64_t *sorted, size_t n, double p)
{
    if (p <= 0)
        return sorted[0];
    size_t rank = (size_t)ceil(p / 100.0 * (double)n);
    if (rank == 0)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

static void check_against_exact(uint64_t *vals, size_t n, const char *what)
{
    kvb_hist *h = malloc(sizeof *h);
    cr_assert_not_null(h);
    kvb_hist_init(h);
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        kvb_hist_record(h, vals[i]);
        sum += (double)vals[i];
    }
    qsort(vals, n, sizeof *vals, cmp_u64);
    static const double ps[] = {1, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        double want = (double)exact_pct(vals, n, ps[i]);
        double got = (double)kvb_hist_percentile(h, ps[i]);
        double err = want > 0 ? fabs(got - want) / want : fabs(got);
        cr_expect(err <= 0.01, "%s: p%g = %.0f, exact %.0f (error %.3f%%)", what, ps[i], got, want,
                  err * 100);
    }
    cr_expect_eq(h->count, n, "%s: count", what);
    cr_expect_eq(kvb_hist_percentile(h, 0), vals[0], "%s: p0 is the exact minimum", what);
    cr_expect_eq(kvb_hist_percentile(h, 100), vals[n - 1], "%s: p100 is the exact maximum", what);
    cr_expect(fabs(kvb_hist_mean(h) - sum / (double)n) <= 1e-9 * sum / (double)n + 1e-9, "%s: mean",
              what);
    free(h);
}

Test(histogram, uniform_1_to_1e6)
{
    size_t n = 1000000;
    uint64_t *v = malloc(n * sizeof *v);
    cr_assert_not_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = i + 1;
    check_against_exact(v, n, "uniform 1..1e6");
    free(v);
}

Test(histogram, exponential_latencies)
{
    /* Latency-like: 200 us mean exponential, in nanoseconds, from a seeded generator. */
    size_t n = 500000;
    uint64_t *v = malloc(n * sizeof *v);
    cr_assert_not_null(v);
    kvb_rng r;
    kvb_rng_seed(&r, 42);
    for (size_t i = 0; i < n; i++)
        v[i] = (uint64_t)(-log(1.0 - kvb_rng_double(&r)) * 200000.0) + 1000;
    check_against_exact(v, n, "exponential");
    free(v);
}

Test(histogram, bimodal_with_far_tail)
{
    /* 99% around 1 ms, 1% around 2 s: the tail percentiles must land in the right mode. */
    size_t n = 200000;
    uint64_t *v = malloc(n * sizeof *v);
    cr_assert_not_null(v);
    kvb_rng r;
    kvb_rng_seed(&r, 7);
    for (size_t i = 0; i < n; i++) {
        double base = (i % 100 == 0) ? 2e9 : 1e6;
        v[i] = (uint64_t)(base * (0.5 + kvb_rng_double(&r)));
    }
    check_against_exact(v, n, "bimodal");
    free(v);
}

Test(histogram, bucket_error_bound_over_the_whole_range)
{
    /* Every bucket's width is at most 1/128 of its lowest value, and buckets tile the
     * range without gaps. */
    uint64_t prev_hi = 0;
    for (uint32_t b = 0; b < KVB_HIST_BUCKETS; b++) {
        uint64_t lo, hi;
        kvb_hist_bucket_range(b, &lo, &hi);
        if (b > 0)
            TH_CHECK(lo == prev_hi + 1, "bucket %u starts at %llu, previous ended at %llu", b,
                     (unsigned long long)lo, (unsigned long long)prev_hi);
        TH_CHECK(hi >= lo, "bucket %u empty", b);
        if (lo >= KVB_HIST_EXACT)
            TH_CHECK((double)(hi - lo + 1) / (double)lo <= 1.0 / 128.0 + 1e-12,
                     "bucket %u too wide", b);
        TH_CHECK(kvb_hist_bucket(lo) == b && kvb_hist_bucket(hi) == b, "bucket %u round trip", b);
        prev_hi = hi;
    }
    cr_assert_eq(prev_hi, UINT64_MAX, "the last bucket ends at UINT64_MAX");
}

Test(histogram, merge_equals_recording_together)
{
    kvb_hist *a = malloc(sizeof *a), *b = malloc(sizeof *b), *all = malloc(sizeof *all);
    cr_assert(a && b && all);
    kvb_hist_init(a);
    kvb_hist_init(b);
    kvb_hist_init(all);
    kvb_rng r;
    kvb_rng_seed(&r, 3);
    for (int i = 0; i < 100000; i++) {
        uint64_t v = kvb_rng_below(&r, 10000000);
        kvb_hist_record(i % 2 ? a : b, v);
        kvb_hist_record(all, v);
    }
    kvb_hist_merge(a, b);
    cr_assert_eq(a->count, all->count);
    cr_assert_eq(a->min, all->min);
    cr_assert_eq(a->max, all->max);
    cr_assert(memcmp(a->counts, all->counts, sizeof a->counts) == 0);
    free(a);
    free(b);
    free(all);
}

Test(histogram, empty_and_single)
{
    kvb_hist *h = malloc(sizeof *h);
    cr_assert_not_null(h);
    kvb_hist_init(h);
    cr_assert_eq(kvb_hist_percentile(h, 50), 0);
    cr_assert_eq(kvb_hist_mean(h), 0.0);
    kvb_hist_record(h, 123456789);
    cr_assert_eq(kvb_hist_percentile(h, 50), 123456789, "one value: every percentile is it");
    cr_assert_eq(kvb_hist_percentile(h, 99.9), 123456789);
    kvb_hist_record(h, UINT64_MAX);
    cr_assert_eq(kvb_hist_percentile(h, 100), UINT64_MAX);
    free(h);
}

Test(keygen, zipfian_is_skewed_like_ycsb)
{
    /* theta 0.99 over 1000 keys: rank 0 has probability 1/zeta(1000) (about 13%), and the
     * top 10 ranks together about 39%. */
    kvb_zipf z;
    kvb_zipf_init(&z, 1000, 0.99);
    kvb_rng r;
    kvb_rng_seed(&r, 11);
    int n = 200000, top0 = 0, top10 = 0;
    for (int i = 0; i < n; i++) {
        uint64_t k = kvb_zipf_rank(&z, &r);
        TH_CHECK(k < 1000, "rank %llu out of range", (unsigned long long)k);
        top0 += k == 0;
        top10 += k < 10;
    }
    double p0 = 1.0 / kvb_zeta(1000, 0.99);
    double p10 = 0;
    for (int i = 1; i <= 10; i++)
        p10 += 1.0 / pow(i, 0.99);
    p10 /= kvb_zeta(1000, 0.99);
    cr_expect(fabs((double)top0 / n - p0) < 0.01, "rank 0: %.4f, expected %.4f", (double)top0 / n,
              p0);
    cr_expect(fabs((double)top10 / n - p10) < 0.02, "top 10: %.4f, expected %.4f",
              (double)top10 / n, p10);
    /* Scrambled picks stay in range and hit every key eventually. */
    for (int i = 0; i < 10000; i++)
        TH_CHECK(kvb_zipf_next(&z, &r) < 1000, "scrambled pick out of range");
}

Test(keygen, keys_and_mixes)
{
    char k[16];
    kvb_key_format(42, 8, k);
    cr_assert(memcmp(k, "k0000042", 8) == 0, "%.8s", k);
    cr_assert_eq(kvb_key_min_size(10000), 5);
    cr_assert_eq(kvb_key_min_size(1), 2);
    kvb_mix m;
    char why[128];
    cr_assert_eq(kvb_mix_named("b", &m), 0);
    cr_assert(m.pct[KVB_OP_READ] == 95 && m.pct[KVB_OP_UPDATE] == 5);
    cr_assert_eq(kvb_mix_parse("read=70,write=20,delete=10", &m, why, sizeof why), 0, "%s", why);
    cr_assert(m.pct[0] == 70 && m.pct[1] == 20 && m.pct[2] == 10);
    cr_assert_eq(kvb_mix_parse("read=70,update=20", &m, why, sizeof why), -1);
    cr_assert(strstr(why, "90") != NULL, "%s", why);
    cr_assert_eq(kvb_mix_parse("scan=100", &m, why, sizeof why), -1);
}

typedef struct replies {
    kvb_reply r[8];
    int n;
} replies;

static void collect(void *ctx, const kvb_reply *r)
{
    replies *rs = ctx;
    if (rs->n < 8)
        rs->r[rs->n++] = *r;
}

Test(proto, resp_replies_split_anywhere)
{
    const char *wire = "+OK\r\n$5\r\nhello\r\n$-1\r\n:2\r\n-ERR no\r\n*2\r\n$1\r\na\r\n:1\r\n";
    size_t len = strlen(wire);
    for (size_t cut = 1; cut < len; cut++) {
        kvb_parser p;
        kvb_parser_init(&p, KVB_TARGET_REDIS);
        replies rs = {.n = 0};
        cr_assert_eq(kvb_parser_feed(&p, wire, cut, collect, &rs), 0);
        cr_assert_eq(kvb_parser_feed(&p, wire + cut, len - cut, collect, &rs), 0);
        TH_CHECK(rs.n == 6, "cut %zu: %d replies", cut, rs.n);
        TH_CHECK(rs.r[0].resp_type == '+' && rs.r[1].resp_type == '$' && !rs.r[1].resp_nil &&
                     rs.r[2].resp_nil && rs.r[3].resp_int == 2 && rs.r[4].resp_type == '-' &&
                     rs.r[5].resp_type == '*',
                 "cut %zu: wrong replies", cut);
        kvb_parser_fini(&p);
    }
    kvb_parser p;
    kvb_parser_init(&p, KVB_TARGET_REDIS);
    replies rs = {.n = 0};
    cr_assert_eq(kvb_parser_feed(&p, "?what\r\n", 7, collect, &rs), -1, "not RESP");
    kvb_parser_fini(&p);
}

Test(proto, http_pipelined_replies_and_judging)
{
    const char *wire = "HTTP/1.1 204 No Content\r\nETag: \"1.1\"\r\n\r\n"
                       "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"
                       "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                       "Connection: close\r\n\r\n";
    kvb_parser p;
    kvb_parser_init(&p, KVB_TARGET_KVSTORE);
    replies rs = {.n = 0};
    cr_assert_eq(kvb_parser_feed(&p, wire, strlen(wire), collect, &rs), 0);
    cr_assert_eq(rs.n, 3);
    kvb_proto_cfg pc = {.target = KVB_TARGET_KVSTORE};
    kvb_errkind k;
    cr_assert_eq(kvb_proto_judge(&pc, KVB_OP_UPDATE, 0, &rs.r[0], &k), KVB_OK);
    cr_assert_eq(kvb_proto_judge(&pc, KVB_OP_READ, 0, &rs.r[1], &k), KVB_MISS);
    cr_assert_eq(kvb_proto_judge(&pc, KVB_OP_READ, 0, &rs.r[2], &k), KVB_FAIL);
    cr_assert_eq(k, KVB_E_HTTP);
    cr_assert(rs.r[2].http_close);
    kvb_parser_fini(&p);

    kv_buf b = KV_BUF_INIT;
    cr_assert_eq(kvb_base64_append(&b, "k0001", 5), 0);
    cr_assert_str_eq(b.data, "azAwMDE=");
    kv_buf_free(&b);
}
