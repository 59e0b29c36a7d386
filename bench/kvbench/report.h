/*
 * report.h — kvbench's outputs once a run is over: the human table, the --json document
 * and the --plot SVG (drawn by gnuplot when it is installed). Main thread only.
 */
#ifndef KVB_REPORT_H
#define KVB_REPORT_H

#include "bench.h"

#include <stdio.h>

typedef struct kvb_report {
    const kvb_cfg *cfg;
    const kvb_stats *load; /* NULL when there was no load phase */
    const kvb_stats *run;
    const kvb_tick *ticks; /* the run phase, one per second (the last may be partial) */
    size_t nticks;
    bool interrupted;        /* stopped by SIGINT/SIGTERM before the end */
    const char *first_error; /* first connection error text, "" if none */
} kvb_report;

/* Seconds over which the measured operations of s ran (first start to last reply). */
double kvb_stats_seconds(const kvb_stats *s);

/* The human summary: setup, load, a latency table per operation kind, errors. */
void kvb_report_table(FILE *f, const kvb_report *r);

/* The same as one JSON object (documented in bench/README.md), then a newline. */
void kvb_report_json(FILE *f, const kvb_report *r);

/*
 * Draw svg_path: throughput per second over the run, and the latency percentile curve.
 * 0 when drawn; 1 when gnuplot is not installed (a message is printed; nothing drawn);
 * -1 when gnuplot failed (message printed).
 */
int kvb_report_plot(const kvb_report *r, const char *svg_path);

#endif
