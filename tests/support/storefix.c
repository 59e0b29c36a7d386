/*
 * storefix.c — the storage engine tests' fixture (storefix.h): a mkdtemp directory, a
 * private loop with a ticker, and waits with deadlines.
 */
#include "storefix.h"

#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

void storefix_init(storefix *f, const char *tag)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof(f->dir), "%s/kvstore-test-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
    cr_assert_not_null(mkdtemp(f->dir), "mkdtemp: %s", strerror(errno));
    cr_assert_eq(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->tick);
}

void storefix_close_loop(storefix *f)
{
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    cr_expect_eq(uv_loop_close(&f->loop), 0, "loop still has handles");
}

void storefix_fini(storefix *f)
{
    storefix_close_loop(f);
    th_tmpdir_remove(f->dir);
}

void storefix_tick_start(storefix *f)
{
    uv_timer_start(&f->tick, tick_cb, 5, 5);
}

void storefix_tick_stop(storefix *f)
{
    uv_timer_stop(&f->tick);
}

bool storefix_run_until(storefix *f, bool (*cond)(void *arg), void *arg, int timeout_ms)
{
    uint64_t deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000u;
    storefix_tick_start(f);
    while (!cond(arg) && uv_hrtime() < deadline)
        uv_run(&f->loop, UV_RUN_ONCE);
    storefix_tick_stop(f);
    return cond(arg);
}

bool storefix_flag_set(void *arg)
{
    return *(bool *)arg;
}

void storefix_compact_cb(void *arg, int status, const kv_compact_stats *st)
{
    storefix_compaction *c = arg;
    c->done = true;
    c->status = status;
    if (st)
        c->st = *st;
}

uint64_t storefix_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
