/*
 * store.h — the embedded storage engine (v1): append-only segments with a CRC per record,
 * an in-memory index rebuilt on open, and three durability modes.
 *
 * Threading: every function here is called on the loop thread that opened the store.
 * fsync runs on the libuv threadpool and its completion comes back to the loop; write
 * completion callbacks always run on the loop thread and never from inside the call that
 * started the write.
 *
 * Durability: with KV_SYNC_ALWAYS a put/delete callback fires only after the record is
 * fsync'ed (group commit: writes that arrive while an fsync runs share the next one);
 * with KV_SYNC_INTERVAL after write(2), with a timer fsyncing every interval; with
 * KV_SYNC_NEVER after write(2). store_close fsyncs in every mode.
 */
#ifndef KV_STORE_STORE_H
#define KV_STORE_STORE_H

#include "common/buf.h"
#include "config/config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct kv_store kv_store;

/* A record's version: hybrid-logical-clock timestamp plus the writing node's id. Totally
 * ordered by (ts, node). v1 assigns ts from a per-store clock that never goes backwards. */
typedef struct kv_version {
    uint64_t ts;
    uint32_t node;
} kv_version;

typedef struct kv_store_opts {
    const char *dir; /* data directory; created if missing */
    kv_sync_mode sync;
    uint64_t sync_interval_ms; /* KV_SYNC_INTERVAL period */
    uint64_t segment_bytes;    /* rotate the active segment past this size */
    uint32_t max_key;          /* keys longer are refused with KV_ETOOBIG */
    uint64_t max_value;        /* values longer are refused with KV_ETOOBIG */
    uint32_t node_id;          /* goes into every version this store assigns */
} kv_store_opts;

typedef struct kv_store_stats {
    uint64_t keys;       /* live keys (not deleted, not expired at last look) */
    uint64_t live_bytes; /* key + value bytes of live keys */
    uint64_t disk_bytes; /* total size of all segments */
    uint64_t segments;
    uint64_t puts, deletes, gets;
    uint64_t corrupt_records; /* records skipped or truncated on open */
    uint64_t truncated_bytes; /* torn-tail bytes removed on open */
    uint64_t write_errors;    /* writes refused because disk I/O failed */
    uint64_t fsyncs;          /* fsync rounds (one round covers a whole commit group) */
    uint64_t sync_errors;     /* fsync rounds that failed */
    uint64_t corrupt_reads;   /* store_get found the bytes on disk damaged */
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

/* Completion of a put/delete: status KV_OK (ver = the version written), or KV_EIO /
 * KV_ENOSPC if the record could not be made durable (the write is then not visible). */
typedef void (*store_write_cb)(void *arg, int status, const kv_version *ver);

/*
 * Write key=val. expiry_ms is a wall-clock deadline in ms since the epoch, 0 for none.
 * Returns KV_OK and later calls cb exactly once; or returns an error now (KV_ETOOBIG,
 * KV_EINVAL, KV_ECLOSED, KV_EIO, KV_ENOSPC) and never calls cb. The bytes are copied;
 * the caller's buffers are free to reuse on return.
 */
int store_put(kv_store *s, const void *key, size_t klen, const void *val, size_t vlen,
              uint64_t expiry_ms, store_write_cb cb, void *arg);

/* Write a tombstone for key (whether or not it exists). Same contract as store_put. */
int store_delete(kv_store *s, const void *key, size_t klen, store_write_cb cb, void *arg);

void store_stats(const kv_store *s, kv_store_stats *out);

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
