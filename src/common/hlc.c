/*
 * hlc.c — the hybrid logical clock (see hlc.h). Pure functions over a caller-owned clock.
 */
#include "common/hlc.h"

void kv_hlc_init(kv_hlc *c, uint32_t node)
{
    c->last = 0;
    c->node = node;
}

kv_version kv_hlc_now(kv_hlc *c, uint64_t now_ms)
{
    uint64_t phys = now_ms << KV_HLC_LOGICAL_BITS;
    /* Either the wall clock moved past everything seen (logical counter restarts at 0),
     * or it did not and the counter ticks on from the highest timestamp seen. */
    uint64_t ts = phys > c->last ? phys : c->last + (c->last < UINT64_MAX);
    c->last = ts;
    return (kv_version){.ts = ts, .node = c->node};
}

bool kv_hlc_exhausted(const kv_hlc *c, uint64_t now_ms)
{
    return c->last == UINT64_MAX && (now_ms << KV_HLC_LOGICAL_BITS) <= c->last;
}

void kv_hlc_observe(kv_hlc *c, const kv_version *v, uint64_t now_ms)
{
    (void)now_ms;
    if (v->ts > c->last)
        c->last = v->ts;
}

uint64_t kv_hlc_ahead_ms(const kv_version *v, uint64_t now_ms)
{
    uint64_t ms = kv_hlc_ts_ms(v->ts);
    return ms > now_ms ? ms - now_ms : 0;
}
