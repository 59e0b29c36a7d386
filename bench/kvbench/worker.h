/*
 * worker.h — kvbench's load engine: a phase (load or run) is driven by one or more worker
 * threads, each running its own libuv loop over its share of the connections. The main
 * thread starts a phase, samples it once a second, may ask it to stop, and joins it.
 *
 * Every function here is for the main thread; the workers never call back into it.
 */
#ifndef KVB_WORKER_H
#define KVB_WORKER_H

#include "bench.h"

typedef struct kvb_run kvb_run;

/* One second's worth of the workers' interval counters, drained by kvb_run_sample. */
typedef struct kvb_sample {
    uint64_t done;   /* operations completed since the last sample, any outcome */
    uint64_t errors; /* failed operations and connect errors since the last sample */
    kvb_hist hist;   /* latencies of the successful ones */
} kvb_sample;

/*
 * Start phase with cfg (borrowed; must outlive the run). t0 is the phase's start on the
 * kvb_now_ns clock: the warm-up, the duration, the open-loop schedule and max_time count
 * from it. KV_OK, KV_ENOMEM, or KV_EIO if a thread or loop could not be created.
 */
int kvb_run_start(kvb_run **out, const kvb_cfg *cfg, kvb_phase phase, uint64_t t0);

/* Move the counters gathered since the last call into *s (which is overwritten). */
void kvb_run_sample(kvb_run *r, kvb_sample *s);

/* True once every worker has finished (issued all it will and drained its replies). */
bool kvb_run_finished(kvb_run *r);

/* Ask every worker to stop starting operations; in-flight ones finish or time out. */
void kvb_run_stop(kvb_run *r);

/*
 * Wait for every worker and add their statistics into *st. first_error gets the first
 * connection error text any worker saw ("" if none). Call once.
 */
void kvb_run_join(kvb_run *r, kvb_stats *st, char *first_error, size_t cap);

void kvb_run_free(kvb_run *r);

#endif
