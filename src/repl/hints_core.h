/*
 * hints_core.h — the sans-I/O delivery core of hinted handoff (DESIGN §5): which hints to
 * send to which target next, windows, retries and back-off, and when a target's hints are
 * all delivered. Internal to src/repl/hints.c (which implements it and owns the store and
 * the loop); declared here so tests/unit/test_hints.c can drive the decisions without a
 * store or a network.
 *
 * Design notes. Each target with hints goes through passes: a pass walks the whole hint
 * store once (the shell reads it in chunks and offers each hint of this target with
 * hc_offer while a window slot is free). A slot holds one delivery: it is SENT (waiting
 * for its ack until due_ms) or WAIT (to be sent again at due_ms). An OK or STALE ack
 * frees the slot and tells the shell to remove the hint; an error ack, a failed send or
 * no ack by due_ms keeps the slot and resends it after the target's back-off, which
 * starts at retry_ms, doubles on each failure up to max_backoff_ms and falls back to
 * retry_ms on the next success. A slot never gives up while the target is alive, so a
 * failing target holds at most `window` hints in flight and scans nothing new.
 *
 * A pass ends when the walk is done, no slot is used and no removal is pending. Then:
 * no hints counted → the target is finished; a pass that found none of the target's
 * hints and saw no add meanwhile → the count had drifted, it is 0 (finished); a pass
 * that made progress (removed some, or saw adds) → a new pass at once; otherwise a new
 * pass after the back-off (something refuses to be removed; never a tight loop).
 *
 * A target going down frees its slots (their late acks are ignored: unknown req_id) and
 * ends the pass; going alive again starts a new one. All times are the caller's `now`
 * (ms, monotonic). Loop thread only.
 */
#ifndef KV_REPL_HINTS_CORE_H
#define KV_REPL_HINTS_CORE_H

#include "common/hlc.h"
#include "repl/msg.h"
#include "store/store.h"
#include "swim/swim.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum hc_slot_state {
    HC_SLOT_FREE = 0,
    HC_SLOT_SENT, /* sent; waiting for the ack until due_ms */
    HC_SLOT_WAIT, /* to be (re)sent at due_ms */
} hc_slot_state;

typedef struct hc_slot {
    hc_slot_state state;
    uint64_t req_id; /* of the last send: KV_REPL_REQ_HINT | a 62-bit counter */
    uint64_t due_ms;
    uint32_t tries; /* sends so far */
    kv_version ver; /* the hint's version as last read (updated by the shell on reload) */
    uint8_t *key;   /* the user key (malloc'ed, owned by the slot) */
    size_t klen;
} hc_slot;

typedef struct hc_target {
    swim_member_id id;
    uint64_t count; /* hints held for this target (exact: the shell reports every change) */
    bool alive;
    bool in_pass;          /* a pass is under way (or waiting for next_pass_ms) */
    bool scan_done;        /* this pass has walked the whole store */
    bool dirty;            /* a hint for this target was added or replaced since the pass began */
    bool session;          /* a delivery session (start .. finish, for the logs) is open */
    uint64_t next_pass_ms; /* in_pass && scan not started: start walking at this time */
    uint64_t found;        /* this pass: hints of this target seen (offered or bad) */
    uint64_t removed;      /* this pass: hints removed after an ack */
    uint32_t removing;     /* removals started and not finished (shell's bookkeeping) */
    uint32_t inflight;     /* used slots */
    uint64_t backoff_ms;
    uint64_t session_delivered;
    uint64_t session_start_ns; /* the shell's, for the finish log */
    store_cursor cur;          /* the shell's walk; zeroed by the core at each pass start */
    hc_slot *slots;            /* window entries */
} hc_target;

typedef struct hc_core {
    uint32_t window;
    uint64_t retry_ms, max_backoff_ms;
    uint64_t next_req;
    hc_target **targets; /* each malloc'ed: pointers stay valid */
    size_t n, cap;
} hc_core;

/* What a target needs next (hc_next). */
typedef enum hc_action {
    HC_IDLE = 0, /* nothing now: waiting for acks, a retry time, or no hints/not alive */
    HC_SCAN,     /* read the next chunk of its walk and hc_offer its hints */
    HC_RESEND,   /* *slot is due: reload its hint and send it again (then hc_sent) */
    HC_FINISHED, /* the target has no hints left: the delivery session ended (log it) */
} hc_action;

/* What an ack means (hc_on_ack). */
typedef enum hc_ack_result {
    HC_ACK_IGNORE = 0, /* unknown, late or misrouted: nothing to do */
    HC_ACK_REMOVE,     /* delivered: remove the hint if still at a version <= *upto */
    HC_ACK_RETRY,      /* refused: the slot is resent after the back-off */
} hc_ack_result;

/* Zero state; window 0 → 64, retry_ms 0 → 2,000, max_backoff_ms < retry_ms → retry_ms. */
void hc_init(hc_core *c, uint32_t window, uint64_t retry_ms, uint64_t max_backoff_ms);
/* Free every target and slot. */
void hc_fini(hc_core *c);

/* The target with this id, or NULL. */
hc_target *hc_find(hc_core *c, const swim_member_id *id);
/* The target with this id, created (not alive, no hints) if missing; NULL on ENOMEM. */
hc_target *hc_get(hc_core *c, const swim_member_id *id);

/* Liveness changed (or was repeated). Down: slots freed, pass ended. Up: a pass starts
 * when the target has hints. */
void hc_set_alive(hc_core *c, hc_target *t, bool alive, uint64_t now);
/* A hint for t became held (count + 1); starts a pass if t is alive and idle. */
void hc_added(hc_core *c, hc_target *t, uint64_t now);
/* A held hint for t was replaced by a newer version (the count is unchanged): the pass
 * must not end as "nothing changed"; starts a pass if t is alive, idle and has hints. */
void hc_touched(hc_core *c, hc_target *t, uint64_t now);
/* A hint for t is no longer held (count - 1, never below 0). */
void hc_removed(hc_core *c, hc_target *t);

/* The next thing t needs at `now`. HC_RESEND sets *slot. HC_FINISHED is returned once per
 * session (t->session is cleared). */
hc_action hc_next(hc_core *c, hc_target *t, uint64_t now, hc_slot **slot);

/* During HC_SCAN: a hint of t found by the walk (t->found + 1). Takes a free slot (key
 * copied, a new req_id, state SENT) and returns it for the shell to load and send, or NULL
 * when the window is full or memory ran out (the hint waits for a later pass). */
hc_slot *hc_offer(hc_core *c, hc_target *t, uint64_t now, const void *key, size_t klen,
                  const kv_version *ver);
/* True when t has a free window slot. */
bool hc_has_room(const hc_core *c, const hc_target *t);
/* The shell tried to send slot (ok = io->send accepted it): arms the ack deadline, or
 * schedules a retry after the back-off. Gives the slot a fresh req_id when it is resent. */
void hc_sent(hc_core *c, hc_target *t, hc_slot *s, uint64_t now, bool ok);
/* The shell found nothing to send for slot (the hint is gone or unreadable): free it. */
void hc_drop(hc_core *c, hc_target *t, hc_slot *s);

/*
 * A WRITE_ACK for hint delivery from `from`. HC_ACK_REMOVE: *t, *key and *klen (a copy owned
 * by the caller: free() it) and *upto (the newest version the target now holds) say which
 * hint to remove; the slot is already free. HC_ACK_RETRY / HC_ACK_IGNORE: nothing for the
 * caller to do.
 */
hc_ack_result hc_on_ack(hc_core *c, uint64_t now, const swim_member_id *from,
                        const kv_repl_msg *ack, hc_target **t, uint8_t **key, size_t *klen,
                        kv_version *upto);

/* The earliest time some target needs attention (a slot due, a pass to start), or
 * UINT64_MAX. Targets needing a scan now return `now`. */
uint64_t hc_next_due(const hc_core *c, uint64_t now);

#endif
