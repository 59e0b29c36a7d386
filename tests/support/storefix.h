/*
 * storefix.h — the fixture shared by the storage engine's unit tests (test_store*.c): a
 * fresh mkdtemp directory for the store's files, a private libuv loop, and a loop runner
 * that waits for a condition with a deadline.
 *
 * One fixture per test process (criterion runs each Test in a process of its own), set up
 * in the suite's .init and torn down in its .fini. Everything runs on the test's thread,
 * the one that runs the loop. Failures are criterion assertions.
 */
#ifndef KV_TESTS_STOREFIX_H
#define KV_TESTS_STOREFIX_H

#include "store/store.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct storefix {
    char dir[256];   /* the test's directory; removed with everything in it by storefix_fini */
    uv_loop_t loop;  /* the loop the store under test runs on */
    uv_timer_t tick; /* 5 ms ticker while a wait runs: no loop turn blocks for longer */
} storefix;

/*
 * Create "$TMPDIR/kvstore-test-<tag>-XXXXXX" (/tmp without TMPDIR) as f->dir, and initialise
 * f->loop and f->tick. Asserts on failure.
 */
void storefix_init(storefix *f, const char *tag);

/*
 * Close the ticker and run the loop until nothing is left; expects uv_loop_close to succeed
 * ("loop still has handles": whatever the test opened must be closed by now). Leaves the
 * directory in place.
 */
void storefix_close_loop(storefix *f);

/* storefix_close_loop, then rm -rf f->dir. */
void storefix_fini(storefix *f);

/* Start / stop the 5 ms ticker, for a test that turns the loop itself. */
void storefix_tick_start(storefix *f);
void storefix_tick_stop(storefix *f);

/*
 * Run f->loop until cond(arg) holds or timeout_ms of wall time passed (the ticker bounds each
 * loop turn); returns cond(arg).
 */
bool storefix_run_until(storefix *f, bool (*cond)(void *arg), void *arg, int timeout_ms);

/* A cond for storefix_run_until: *(bool *)arg. */
bool storefix_flag_set(void *arg);

/* What store_compact reported to storefix_compact_cb (arg: a zeroed storefix_compaction). */
typedef struct storefix_compaction {
    bool done; /* the callback ran: a cond for storefix_run_until(f, storefix_flag_set, &c.done) */
    int status;
    kv_compact_stats st;
} storefix_compaction;

/* A store_compact_cb that records its outcome in the storefix_compaction at arg. */
void storefix_compact_cb(void *arg, int status, const kv_compact_stats *st);

/* Wall-clock time in milliseconds since the epoch (the clock expiry times are given in). */
uint64_t storefix_now_ms(void);

#endif /* KV_TESTS_STOREFIX_H */
