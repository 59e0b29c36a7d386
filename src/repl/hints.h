/*
 * hints.h — hinted handoff (DESIGN §9): writes meant for a replica that is down are kept
 * here durably, delivered when it is alive again, and dropped once it has acknowledged
 * them.
 *
 * Storage: a kv_store of its own in <node.data_dir>/hints (same engine, same sync mode as
 * the data), key = target member id (16 bytes) + the user key, stored with the write's
 * own version through store_apply — so a newer hint for the same key and target replaces
 * an older one, and a stale one is refused. The value holds the flags, the expiry and the
 * user value. Removing a delivered hint deletes it and purges the tombstone at once.
 *
 * Bounds and back-pressure: at most max_count hints and max_bytes of key+value bytes;
 * kv_hints_add beyond them refuses (KV_EUNAVAIL), and the caller counts the hint as
 * dropped — the write itself was acknowledged by W replicas, so nothing acknowledged is
 * lost; the replica catches up by read repair (and anti-entropy). Writes of hints waiting
 * for the disk are also bounded (max_pending); delivery keeps at most `window` WRITEs in
 * flight per target and waits retry_ms before retrying one that was not acknowledged.
 *
 * Delivery: the adapter says which members are alive (kv_hints_member_alive); for an
 * alive target with hints, the module walks its hints in bounded chunks (store_range,
 * off the hot path), sends each as a WRITE through io->send with a req_id that has
 * KV_REPL_REQ_HINT set, and on the WRITE_ACK (kv_hints_on_ack: OK or STALE — the replica
 * holds this version or a newer one) removes the hint, unless a newer hint for the same
 * key arrived meanwhile. The delivery decisions (what to send next, retries, windows)
 * are a sans-I/O core inside hints.c, unit-tested without a store.
 *
 * Threads: loop thread only, like the store.
 */
#ifndef KV_REPL_HINTS_H
#define KV_REPL_HINTS_H

#include "config/config.h"
#include "repl/msg.h"
#include "swim/swim.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct kv_hints kv_hints;

typedef struct kv_hints_io {
    /* Send msg (a WRITE with req_id set, no hint_for) to member `to`. KV_OK when queued;
     * any error: the module retries later. Pointers in msg are valid during the call. */
    int (*send)(void *arg, const swim_member_id *to, const kv_repl_msg *msg);
    void *arg;
} kv_hints_io;

typedef struct kv_hints_opts {
    const char *dir; /* the hints directory (created if missing) */
    kv_sync_mode sync;
    uint64_t sync_interval_ms;
    uint64_t max_value;   /* largest user value a hint may carry */
    uint32_t node_id;     /* for the hint store's own clock */
    uint64_t max_count;   /* hints held, at most (0 = 1,000,000) */
    uint64_t max_bytes;   /* key + value bytes held, at most (0 = 1 GiB) */
    uint32_t max_pending; /* hint writes waiting for the disk, at most (0 = 10,000) */
    uint32_t window;      /* deliveries in flight per target (0 = 64) */
    uint64_t retry_ms;    /* resend an unacknowledged delivery after this (0 = 2,000) */
    bool keep_none;       /* hinted handoff off: every kv_hints_add is refused (dropped,
                             counted); held hints are still delivered */
} kv_hints_opts;

/* Open (or create) the hint store; blocking, like store_open. KV_OK or the store's error. */
int kv_hints_open(kv_hints **out, uv_loop_t *loop, const kv_hints_opts *opts,
                  const kv_hints_io *io);

/*
 * Keep `write` (a WRITE message: key, ver, flags, expiry_ms, value; req_id and hint_for
 * ignored) for member `target`. KV_OK: accepted (durable per the sync mode; a later disk
 * failure is logged and counted); KV_EUNAVAIL: over a bound — not kept, counted in
 * dropped_full (or the disk refused it at once: counted in write_errors); KV_ETOOBIG /
 * KV_EINVAL for a write that cannot be a hint (also a version more than a day ahead);
 * KV_ECLOSED.
 */
int kv_hints_add(kv_hints *h, const swim_member_id *target, const kv_repl_msg *write);

/* kv_hints_add, and when it returns KV_OK, done(arg, status) later (on the loop, never
 * from inside this call) once the hint is as durable as the sync mode promises: KV_OK, or
 * the disk's error (KV_EIO, KV_ENOSPC). A sloppy-quorum fallback acknowledges the write
 * only then. */
int kv_hints_add_durable(kv_hints *h, const swim_member_id *target, const kv_repl_msg *write,
                         void (*done)(void *arg, int status), void *arg);

/* Liveness of a member as membership sees it (alive or suspect = true). Starts or stops
 * delivery to it. Call on every change; calling again with the same value is harmless. */
void kv_hints_member_alive(kv_hints *h, const swim_member_id *id, bool alive);

/* A WRITE_ACK whose req_id has KV_REPL_REQ_HINT set, from member `from`. */
void kv_hints_on_ack(kv_hints *h, const swim_member_id *from, const kv_repl_msg *ack);

/* Hints held for one target (0 if none). */
uint64_t kv_hints_count_for(kv_hints *h, const swim_member_id *target);

typedef struct kv_hints_stats {
    uint64_t count, bytes; /* held now */
    uint64_t added;        /* accepted by kv_hints_add */
    uint64_t dropped_full; /* refused: over a bound */
    uint64_t delivered;    /* acknowledged by their target and removed */
    uint64_t sent;         /* delivery WRITEs sent (retries included) */
    uint64_t write_errors; /* hint writes the disk refused */
    uint64_t targets;      /* members with hints held */
    uint64_t corrupt;      /* stored hints that did not parse: skipped, logged, removed */
} kv_hints_stats;
void kv_hints_get_stats(kv_hints *h, kv_hints_stats *out);

/* Stop delivering, close the store (fsync); done(arg) on the loop afterwards. */
void kv_hints_close(kv_hints *h, void (*done)(void *arg), void *arg);

#endif
