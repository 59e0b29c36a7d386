/*
 * keygen.h — what kvbench asks for: a seeded random generator, the key choosers (uniform,
 * and YCSB's scrambled zipfian with theta 0.99), the operation mix of each workload, and
 * the text of keys and values.
 *
 * Every object here is plain memory owned by its holder; none is thread-safe — each worker
 * thread has its own generator and chooser (a kvb_zipf is read-only after kvb_zipf_init and
 * may be shared).
 */
#ifndef KVB_KEYGEN_H
#define KVB_KEYGEN_H

#include <stddef.h>
#include <stdint.h>

/* ---------- random numbers: xoshiro256** seeded through splitmix64 ---------- */

typedef struct kvb_rng {
    uint64_t s[4];
} kvb_rng;

/* Seed r; equal seeds give equal sequences. */
void kvb_rng_seed(kvb_rng *r, uint64_t seed);
uint64_t kvb_rng_next(kvb_rng *r);
/* Uniform double in [0, 1). */
double kvb_rng_double(kvb_rng *r);
/* Uniform integer in [0, n) (n > 0), without modulo bias. */
uint64_t kvb_rng_below(kvb_rng *r, uint64_t n);

/* ---------- key choice ---------- */

typedef enum kvb_dist { KVB_DIST_UNIFORM = 0, KVB_DIST_ZIPFIAN = 1 } kvb_dist;

/*
 * The zipfian generator of Gray et al., "Quickly Generating Billion-Record Synthetic
 * Databases" (SIGMOD 1994), as YCSB uses it: item i of n is drawn with probability
 * proportional to 1/(i+1)^theta. Init costs O(n) (the zeta sum). Scrambling (as YCSB's
 * ScrambledZipfianGenerator does) maps rank i to an FNV-1a hash of i modulo n, so the hot
 * keys are spread over the key space instead of being keys 0, 1, 2...
 */
typedef struct kvb_zipf {
    uint64_t n;
    double theta, alpha, zetan, eta, half_pow_theta;
} kvb_zipf;

/* n >= 1, 0 < theta < 1. */
void kvb_zipf_init(kvb_zipf *z, uint64_t n, double theta);
/* Rank in [0, n): 0 is the most popular. */
uint64_t kvb_zipf_rank(const kvb_zipf *z, kvb_rng *r);
/* A key index in [0, n) under the scrambled distribution. */
uint64_t kvb_zipf_next(const kvb_zipf *z, kvb_rng *r);
/* sum_{i=1..n} 1/i^theta (exposed for tests). */
double kvb_zeta(uint64_t n, double theta);

/* A key index in [0, nkeys) under dist (z is used only for KVB_DIST_ZIPFIAN). */
uint64_t kvb_key_pick(kvb_dist dist, const kvb_zipf *z, uint64_t nkeys, kvb_rng *r);

/*
 * The text of key number idx: "k" followed by idx in decimal, zero-padded to exactly
 * key_size bytes (only [0-9a-z], so no URL encoding is needed anywhere). out must hold
 * key_size bytes (no NUL is written). key_size must be >= kvb_key_min_size(nkeys).
 */
void kvb_key_format(uint64_t idx, size_t key_size, char *out);
/* Smallest key_size that can name nkeys distinct keys. */
size_t kvb_key_min_size(uint64_t nkeys);

/* ---------- operations and workloads ---------- */

typedef enum kvb_op_kind {
    KVB_OP_READ = 0,
    KVB_OP_UPDATE = 1, /* a write to an existing key (YCSB's "update") */
    KVB_OP_DELETE = 2,
    KVB_OP_KINDS = 3,
} kvb_op_kind;

const char *kvb_op_name(kvb_op_kind k); /* "read", "update", "delete" */

/* Percentages of each kind; they add up to 100. */
typedef struct kvb_mix {
    unsigned pct[KVB_OP_KINDS];
} kvb_mix;

/*
 * The mix of a named workload: "a" (YCSB A: 50 read / 50 update), "b" (95/5), "c" (read
 * only), "write" (update only). KVB_OK-style: 0, or -1 for an unknown name ("custom" is
 * not named here: see kvb_mix_parse).
 */
int kvb_mix_named(const char *name, kvb_mix *out);

/*
 * Parse a custom mix "read=R,update=W,delete=D" (any subset, any order; "write" is accepted
 * for "update"; the given percentages must add up to 100). 0, or -1 with a reason in why.
 */
int kvb_mix_parse(const char *s, kvb_mix *out, char *why, size_t whycap);

/* Draw an operation kind from the mix. */
kvb_op_kind kvb_mix_pick(const kvb_mix *m, kvb_rng *r);

#endif
