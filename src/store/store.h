/*
 * store.h — the embedded storage engine: append-only segments with a CRC per record, an
 * in-memory index (key -> location, version, expiry), hint files for fast restart,
 * background compaction, LZ4 for large values, and three durability modes.
 *
 * Threading: every function here is called on the loop thread that opened the store.
 * Blocking work (fsync, compaction, hint files, deleting segments) runs on the libuv
 * threadpool and its completion comes back to the loop; completion callbacks always run
 * on the loop thread and never from inside the call that started the operation.
 *
 * Durability: with KV_SYNC_ALWAYS a write's callback fires only after the record is
 * fsync'ed (group commit: writes that arrive while an fsync runs share the next one), and
 * a read sees a write only once it is durable. With KV_SYNC_INTERVAL / KV_SYNC_NEVER the
 * record is buffered in memory and written with one write(2) per loop iteration (or when
 * the buffer fills); the callback fires after that write(2); reads see the write at once
 * (from the buffer until it is written). A timer fsyncs every interval (INTERVAL). If the
 * write(2) or fsync fails, the writes it covered fail (KV_ENOSPC / KV_EIO), are cut off
 * the log and become invisible again. store_close fsyncs in every mode.
 *
 * Reads go through read-only shared mappings of the segment files (no system call per
 * read). The store owns its directory: a segment truncated by someone else while the
 * store is open can crash the process (SIGBUS) instead of reading as damaged.
 *
 * Versions (common/hlc.h): store_put/store_delete assign a fresh version from the store's
 * hybrid logical clock; store_apply writes a version chosen by the caller (replication)
 * only if it is newer than what the store holds. The clock merges every version it sees
 * (records on disk at open, store_apply arguments), so assigned versions always win over
 * everything already stored.
 */
#ifndef KV_STORE_STORE_H
#define KV_STORE_STORE_H

#include "common/buf.h"
#include "common/hlc.h"
#include "config/config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct kv_store kv_store;

/* kv_version (hybrid-logical-clock timestamp + node id) is defined in common/hlc.h. */

typedef struct kv_store_opts {
    const char *dir; /* data directory; created if missing */
    kv_sync_mode sync;
    uint64_t sync_interval_ms; /* KV_SYNC_INTERVAL period */
    uint64_t segment_bytes;    /* rotate the active segment past this size */
    uint32_t max_key;          /* keys longer are refused with KV_ETOOBIG */
    uint64_t max_value;        /* values longer are refused with KV_ETOOBIG */
    uint32_t node_id;          /* goes into every version this store assigns */
    /* Values of at least this many bytes are stored LZ4-compressed when that saves
     * space (transparent to readers). 0 = default (1 KiB); UINT32_MAX = never compress. */
    uint32_t compression_threshold;
    /* Automatic compaction starts when the segments hold at least compaction_min_bytes
     * and at least compaction_dead_ratio of those bytes are garbage (overwritten or
     * deleted records, expired values, purged tombstones). 0 = defaults (0.4, 64 MiB); a
     * ratio above 1 turns automatic compaction off (store_compact still works). */
    double compaction_dead_ratio;
    uint64_t compaction_min_bytes;
    /* Keep an anti-entropy hash tree (src/ae/merkle.h) of 2^merkle_depth leaves current
     * on every change of the index — writes, deletes, rollbacks of failed writes, purges,
     * compaction's drops, recovery at open. 0 = no tree. Every present item counts
     * (tombstones and values whose expiry has passed too, until compaction drops them);
     * purged tombstones do not. */
    unsigned merkle_depth;
} kv_store_opts;

typedef struct kv_store_stats {
    uint64_t keys;       /* live keys (not deleted, not expired at last look) */
    uint64_t live_bytes; /* key + value bytes of live keys */
    uint64_t disk_bytes; /* total size of all segments */
    uint64_t segments;
    uint64_t puts, deletes, gets;
    uint64_t corrupt_records; /* damaged records skipped or truncated (open, compaction) */
    uint64_t truncated_bytes; /* torn-tail bytes removed on open */
    uint64_t write_errors;    /* writes refused because disk I/O failed */
    uint64_t fsyncs;          /* fsync rounds (one round covers a whole commit group) */
    uint64_t sync_errors;     /* fsync rounds that failed */
    uint64_t corrupt_reads;   /* store_get found the bytes on disk damaged */
    /* added with the production engine (issue 3) */
    uint64_t entries;         /* keys in the index: live + tombstones + expired */
    uint64_t tombstones;      /* index entries that are tombstones (not purged) */
    uint64_t dead_bytes;      /* garbage bytes in segments (what compaction reclaims) */
    uint64_t index_bytes;     /* memory held by the index (table + entries + keys) */
    uint64_t applies_stale;   /* store_apply calls refused: a newer version was stored */
    uint64_t applies_refused; /* store_apply calls refused: version > 24 h in the future */
    uint64_t purges;          /* tombstones forgotten by store_purge */
    uint64_t expired_dropped; /* expired records dropped by compaction */
    uint64_t compactions;     /* compactions finished */
    uint64_t compaction_errors;
    uint64_t compact_bytes_in; /* segment bytes read / written by compactions */
    uint64_t compact_bytes_out;
    uint64_t compressed_puts;  /* values stored LZ4-compressed */
    uint64_t hint_segments;    /* at the last open: segments loaded from hint files */
    uint64_t scanned_segments; /* at the last open: segments scanned record by record */
    uint64_t bad_hints;        /* hint files rejected (corrupt / stale) at open */
    uint64_t open_records;     /* records (or hint entries) read at the last open */
    double open_seconds;       /* how long the last open took to build the index */
} kv_store_stats;

/*
 * Open (or create) the store in opts->dir, scanning every segment to rebuild the index.
 * A torn or corrupt tail of the last segment is truncated with a warning log line; a
 * corrupt record elsewhere is skipped and counted. Blocking (runs before the node serves).
 * On success *out owns the store; free it with store_close.
 */
int store_open(kv_store **out, uv_loop_t *loop, const kv_store_opts *opts);

/*
 * Look key up. On success copies the value into *val (reset first) and, if ver is not
 * NULL, writes its version. KV_ENOTFOUND when absent, deleted or expired; KV_EIO or
 * KV_ECORRUPT if the bytes on disk cannot be read back intact (never returns corrupt
 * data).
 */
int store_get(kv_store *s, const void *key, size_t klen, kv_buf *val, kv_version *ver);

/* Completion of a put/delete/apply: status KV_OK (ver = the version written), KV_EIO /
 * KV_ENOSPC if the record could not be made durable (the write is then not visible), or
 * for store_apply KV_ESTALE (ver = the newer-or-equal version the store holds). */
typedef void (*store_write_cb)(void *arg, int status, const kv_version *ver);

/*
 * Write key=val with a fresh version. expiry_ms is a wall-clock deadline in ms since the
 * epoch, 0 for none. Returns KV_OK and later calls cb exactly once; or returns an error
 * now (KV_ETOOBIG, KV_EINVAL, KV_ECLOSED, KV_EIO, KV_ENOSPC, KV_ENOMEM) and never calls
 * cb. KV_EIO now also when the clock cannot assign a version newer than one stored (a
 * record at the maximum timestamp: see kv_hlc_exhausted). A disk error found when the
 * buffered record is written (or fsync'ed) comes through cb instead. The bytes are copied; the
 * caller's buffers are free to reuse on return.
 */
int store_put(kv_store *s, const void *key, size_t klen, const void *val, size_t vlen,
              uint64_t expiry_ms, store_write_cb cb, void *arg);

/* Write a tombstone for key (whether or not it exists). Same contract as store_put. */
int store_delete(kv_store *s, const void *key, size_t klen, store_write_cb cb, void *arg);

/*
 * Conditional write with a caller-chosen version (replication's write path): store the
 * value (or, with tombstone, a tombstone; val/vlen/expiry_ms are then ignored) under
 * version *ver only if *ver is newer than the version the store holds for key — values,
 * tombstones, expired values and purged-but-not-yet-compacted tombstones all count. The
 * store's clock merges *ver either way.
 *
 * Returns KV_OK and later calls cb exactly once with: KV_OK (ver = *ver, written); or
 * KV_ESTALE (ver = the stored version, which is >= *ver; nothing written); or KV_EIO /
 * KV_ENOSPC as for store_put. Immediate errors as for store_put (cb not called), plus
 * KV_EINVAL when *ver runs more than KV_HLC_MAX_AHEAD_MS ahead of this node's wall clock
 * (logged, counted in applies_refused): merging it would put every later local write
 * behind a forged or far-future version. The
 * decision is made against every earlier write, including ones still waiting for their
 * write(2)/fsync, so two applies of the same key resolve in version order.
 */
int store_apply(kv_store *s, const void *key, size_t klen, const void *val, size_t vlen,
                uint64_t expiry_ms, const kv_version *ver, bool tombstone, store_write_cb cb,
                void *arg);

/* What the store holds for one key, without reading the value. */
typedef struct kv_store_meta {
    kv_version ver;
    uint64_t expiry_ms; /* 0 = never */
    uint32_t vlen;      /* value length as stored (compressed length if compressed) */
    bool tombstone;     /* "deleted at version ver" */
    bool expired;       /* a value whose expiry has passed (reads as absent) */
} kv_store_meta;

/*
 * The newest version the store holds for key: a value, an expired value or a tombstone
 * (meta->tombstone: deleted at meta->ver). KV_OK and *meta; KV_ENOTFOUND if the store
 * holds nothing for key (never written, purged, or dropped by compaction). Memory only —
 * never touches the disk. Under KV_SYNC_ALWAYS a write not yet durable is not reported.
 */
int store_get_meta(kv_store *s, const void *key, size_t klen, kv_store_meta *meta);

/*
 * Forget key's tombstone if it is not newer than *upto (replication calls this once every
 * replica has the tombstone and gc_grace has passed; DESIGN §8). KV_OK: forgotten —
 * store_get_meta and store_range no longer report it, and the next compaction that covers
 * its segment drops it from disk (until then a restart brings it back; purging is
 * idempotent). KV_ENOTFOUND: nothing held for key. KV_EEXIST: the key holds a value, a
 * newer tombstone, or a write still in flight — nothing changed. Never touches the disk.
 * A later store_apply with a version not newer than the purged tombstone is still refused
 * (KV_ESTALE) until compaction has dropped it.
 */
int store_purge(kv_store *s, const void *key, size_t klen, const kv_version *upto);

/* ---------- range enumeration (anti-entropy, streaming) ---------- */

/* One key reported by store_range. key is borrowed: valid only during the callback. */
typedef struct kv_store_item {
    const void *key;
    size_t klen;
    uint64_t hash; /* kv_ring_hash(key) (common/hash.h) */
    kv_version ver;
    uint64_t expiry_ms; /* 0 = never */
    bool tombstone;
    bool expired;
} kv_store_item;

/* Where an enumeration stands. Zero-initialise to start; opaque otherwise. */
typedef struct store_cursor {
    uint64_t pos;
    uint64_t reserved;
    bool done; /* set once every entry has been visited */
} store_cursor;

/*
 * Enumerate keys whose ring hash (kv_ring_hash) lies in [lo, hi) — the range wraps
 * around when lo >= hi, and lo == hi means the whole ring — in bounded chunks: each call
 * examines at most max_visit index entries (0 = 4096) and stops after about a
 * millisecond, calling fn(arg, item) for each matching key (values, tombstones and
 * expired values; purged tombstones are skipped), then returns KV_OK with *cur advanced;
 * cur->done is set when the enumeration is complete. fn runs inside the call (it is an
 * iterator, not a completion) and must not write to the store; returning false stops the
 * chunk early (the cursor resumes after the last reported key). Between calls the store
 * may change freely: every key present during the whole enumeration is reported exactly
 * once; keys written or purged meanwhile may or may not be. Under KV_SYNC_ALWAYS a write
 * not yet durable is reported with the version it replaces (or not at all).
 */
typedef bool (*store_range_fn)(void *arg, const kv_store_item *item);
int store_range(kv_store *s, uint64_t lo, uint64_t hi, store_cursor *cur, size_t max_visit,
                store_range_fn fn, void *arg);

/* ---------- compaction ---------- */

typedef struct kv_compact_stats {
    uint32_t segments_in, segments_out;
    uint64_t bytes_in, bytes_out; /* segment bytes removed / written */
    uint64_t records_kept;        /* live records copied */
    uint64_t records_dropped;     /* garbage records not copied */
    uint64_t expired_dropped;     /* of those: expired values and purged tombstones */
    double seconds;               /* from start to old segments deleted */
} kv_compact_stats;

typedef void (*store_compact_cb)(void *arg, int status, const kv_compact_stats *st);

/*
 * Compact now, whatever the thresholds: rewrite the live records of every immutable
 * segment that holds garbage into new segments (each with a hint file), make them
 * durable, point the index at them (a write made meanwhile wins), then delete the old
 * segments. Runs on the threadpool; reads and writes go on. Returns KV_OK and calls cb
 * exactly once when done (KV_OK, or the error that stopped it — the old segments then
 * stay and nothing is lost); KV_EEXIST if a compaction is already running; KV_ECLOSED.
 * Automatic compaction (see kv_store_opts) uses the same machinery.
 */
int store_compact(kv_store *s, store_compact_cb cb, void *arg);

/* True while a compaction (automatic or store_compact) is running. */
bool store_compacting(const kv_store *s);

void store_stats(const kv_store *s, kv_store_stats *out);

/* The anti-entropy tree kept by the store (kv_store_opts.merkle_depth), NULL without one.
 * Valid until store_close; read it on the loop thread. */
const struct kv_merkle *store_merkle(const kv_store *s);

/*
 * Stop taking writes (new ones fail with KV_ECLOSED), let in-flight fsyncs finish, fsync
 * and close every file, close the store's libuv handles and free the store; then call
 * done(arg) on the loop thread (never from inside store_close). Writes still waiting for
 * durability get their callback first (KV_OK once synced). The caller keeps running the
 * loop until done fires.
 */
void store_close(kv_store *s, void (*done)(void *arg), void *arg);

/*
 * Test hook (fault injection): the next fsync round reports errno err as if the disk had
 * failed, after really syncing. Lets tests prove that failed durable writes are reported,
 * invisible and cut off the log. Not for production code.
 */
void store_debug_fail_next_sync(kv_store *s, int err);

#endif
