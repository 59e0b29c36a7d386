/*
 * bench.h — kvbench's run configuration and the statistics a run produces, shared by the
 * load engine (worker.c) and the reports (report.c). Plain data; the configuration is
 * written by main before any worker starts and is read-only afterwards.
 */
#ifndef KVB_BENCH_H
#define KVB_BENCH_H

#include "hist.h"
#include "keygen.h"
#include "proto.h"

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Values are slices of one random buffer this much longer than a value, at a random
 * offset, so successive writes do not all carry the same bytes. */
#define KVB_VALUE_SLACK 64

typedef struct kvb_endpoint {
    char url[300];  /* as given on the command line */
    char host[272]; /* host[:port], for the Host header */
    struct sockaddr_storage addr;
    socklen_t addrlen;
} kvb_endpoint;

typedef struct kvb_cfg {
    kvb_proto_cfg proto;
    kvb_endpoint *eps;
    size_t neps;
    char workload[16]; /* "a", "b", "c", "write" or "custom" */
    kvb_mix mix;
    kvb_dist dist;
    double theta;
    kvb_zipf zipf; /* initialised when dist is zipfian */
    uint64_t nkeys;
    size_t key_size, value_size;
    char *values; /* value_size + KVB_VALUE_SLACK random letters and digits */
    unsigned conns, threads, pipeline;
    double rate;          /* ops/s over all threads; 0 = closed loop */
    uint64_t warmup_ns;   /* excluded from results */
    uint64_t duration_ns; /* measured time (0 when ops is set) */
    uint64_t ops;         /* measured operations (0 when duration is set) */
    uint64_t timeout_ns;  /* per request */
    uint64_t max_time_ns; /* hard bound on each phase */
    bool load;            /* write every key before the run */
    uint64_t seed;
} kvb_cfg;

typedef enum kvb_phase { KVB_PHASE_LOAD = 0, KVB_PHASE_RUN = 1 } kvb_phase;

#define KVB_HTTP_CODES 600

/*
 * What one phase did. "Measured" operations are those whose (intended) start fell after
 * the warm-up; the load phase has no warm-up. Latencies are recorded for measured
 * operations that succeeded (ok or a read miss), in nanoseconds.
 */
typedef struct kvb_stats {
    uint64_t sent;        /* operations written to a socket, warm-up included */
    uint64_t warmup_ops;  /* completed (in any way) with a start inside the warm-up */
    uint64_t warmup_fail; /* ... of which failed */
    uint64_t ok[KVB_OP_KINDS], miss[KVB_OP_KINDS], fail[KVB_OP_KINDS]; /* measured */
    uint64_t errors[KVB_E_KINDS];         /* measured failures by kind; connect: all attempts */
    uint64_t http_status[KVB_HTTP_CODES]; /* measured KVB_E_HTTP failures by status */
    uint64_t missed;   /* open loop: due before the end but never started (overload) */
    uint64_t first_ns; /* earliest measured start (monotonic ns), UINT64_MAX if none */
    uint64_t last_ns;  /* latest measured completion */
    /* The measured window in seconds, set by main after the phase: the duration (or the
     * part of it before a stop); first start to last reply for --ops and the load. */
    double seconds;
    kvb_hist hist[KVB_OP_KINDS];
    kvb_hist all;
} kvb_stats;

/* Empty s (histograms included). */
void kvb_stats_init(kvb_stats *s);
/* Add src into dst. */
void kvb_stats_merge(kvb_stats *dst, const kvb_stats *src);
/* Measured operations, any outcome. */
uint64_t kvb_stats_ops(const kvb_stats *s);
/* Measured failures, any kind (connect attempts are not operations and not counted). */
uint64_t kvb_stats_failed(const kvb_stats *s);

/* One second of the run as the live report and the plot see it (all phases' ops). */
typedef struct kvb_tick {
    double t;        /* seconds since the phase started, at the end of this second */
    bool warmup;     /* the second lies (mostly) in the warm-up */
    uint64_t done;   /* operations completed in this second, any outcome */
    uint64_t errors; /* ... of which failed (plus connect errors) */
    uint64_t p50_ns, p99_ns, max_ns; /* of successful ones */
} kvb_tick;

/* Monotonic clock in nanoseconds (CLOCK_MONOTONIC, the clock every deadline uses). */
uint64_t kvb_now_ns(void);

#endif
