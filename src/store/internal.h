/*
 * internal.h — the storage engine's private state, shared by its parts:
 *   store.c    writes (buffer, group commit, rollback), reads, meta/purge/range, close
 *   recover.c  open: directory listing, hint files, segment scans, torn-tail repair
 *   compact.c  background jobs: hint files for sealed segments, compaction
 * Nothing outside src/store includes this. Loop thread only, except the fields the
 * threadpool workers are documented to touch (store_sync, the job structs in compact.c).
 */
#ifndef KV_STORE_INTERNAL_H
#define KV_STORE_INTERNAL_H

#include "common/hlc.h"
#include "store/format.h"
#include "store/index.h"
#include "store/store.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#define STORE_DEFAULT_SEGMENT_BYTES (64ull << 20)
#define STORE_DEFAULT_INTERVAL_MS   100
#define STORE_DEFAULT_COMPRESS      1024u
#define STORE_DEFAULT_DEAD_RATIO    0.4
#define STORE_DEFAULT_MIN_BYTES     (64ull << 20)
#define STORE_WBUF_BYTES            (256u << 10) /* write buffer (grows for big records) */
#define STORE_MAINT_MS              100          /* expiry sweep + compaction check */
#define STORE_SWEEP_PER_TICK        8192         /* entries examined per maintenance tick */
#define STORE_CHUNK_NS              1000000ull   /* loop-side chunks stop after ~1 ms */

typedef struct store_seg {
    uint32_t id;
    int fd;
    uint64_t size;    /* logical end: where the next record goes (incl. buffered bytes) */
    uint64_t flushed; /* bytes written to the file; < size only for the active segment */
    uint64_t live;    /* bytes of records the index points at (not expired / purged) */
    uint32_t pending; /* uncommitted writes with records here (ALWAYS: not yet fsync'ed) */
    bool compacted;   /* written by compaction (header flag) */
    bool busy;        /* input of the running compaction */
    bool dirty;       /* written since the last fsync of it started */
    uint8_t *map;     /* read-only shared mapping of the file for reads (NULL: pread) */
    size_t maplen;    /* bytes mapped; reads past it (or past `flushed`) use pread */
} store_seg;

/* One write (or refused apply) between its call and its callback. Ring buffer entry. */
typedef struct store_op {
    store_write_cb cb;
    void *arg;
    kv_version ver;
    int status;
    uint32_t ref; /* entry written, 0 if nothing was written (refused apply) */
} store_op;

/* ALWAYS mode only, parallel to the op ring: what the commit / rollback needs. */
typedef struct store_opx {
    uint32_t seg; /* where the record went (0: nothing written) */
    uint32_t off;
    store_ent state; /* the entry's fixed fields as this write set them */
} store_opx;

/* An entry with uncommitted writes: its state as of the last commit point. */
typedef struct pend_item {
    uint32_t ref;   /* 0 = empty slot */
    uint32_t count; /* uncommitted writes of this entry */
    bool absent;    /* the key did not exist at the commit point */
    store_ent state;
} pend_item;

typedef struct pend_map {
    pend_item *v;
    size_t cap, n; /* cap: power of two */
} pend_map;

typedef struct fd_vec {
    int *v;
    size_t n, cap;
} fd_vec;

/* The one fsync that may be running. Only fds/dirfd/err are touched by the worker. */
typedef struct store_sync {
    uv_work_t req;
    kv_store *owner;
    fd_vec fds;       /* dup'ed descriptors of rotated segments (closed after), + active */
    size_t owned;     /* the first `owned` fds are dups the sync closes */
    int dirfd;        /* -1: the directory needs no fsync */
    int err;          /* errno of the first failure, 0 if all succeeded */
    int inject_err;   /* test hook (store_debug_fail_next_sync) */
    uint64_t covered; /* ops with seq < covered are made durable by this sync */
    bool stale;       /* its writes were failed meanwhile: ignore the result */
} store_sync;

typedef struct store_job store_job;               /* compact.c */
typedef struct store_compaction store_compaction; /* compact.c */

struct kv_store {
    uv_loop_t *loop;
    struct kv_merkle *merkle; /* anti-entropy tree, NULL without one (see store_acct) */
    kv_sync_mode mode;
    uint32_t node_id;
    uint32_t max_key;
    uint64_t max_value;
    uint64_t seg_bytes;
    uint64_t interval_ms;
    uint32_t compress_min;
    double dead_ratio;
    uint64_t compact_min_bytes;

    char *path; /* <dir>/store */
    int dirfd;
    store_seg *segs; /* sorted by id; compaction outputs may sort after the active one */
    size_t nsegs, capsegs;
    uint32_t active_id;
    uint32_t next_id; /* next segment id to hand out */

    store_index index;
    kv_hlc clock;

    /* write buffer: bytes of the active segment from its `flushed` offset on */
    uint8_t *wbuf;
    size_t wlen, wcap;
    uint8_t *zbuf; /* LZ4 scratch */
    size_t zcap;

    /* ops ring: seq numbers are absolute; ops[head] has seq seq_head */
    store_op *ops;
    store_opx *opx; /* ALWAYS only */
    size_t ops_cap, ops_head, ops_n;
    uint64_t seq_head, seq_flushed, seq_synced;
    pend_map pend;

    bool sync_running;
    store_sync sync;
    fd_vec rotated; /* dup'ed fds of segments rotated out while dirty */
    bool dir_dirty;

    uv_timer_t timer;  /* INTERVAL fsync */
    uv_timer_t maint;  /* expiry sweep, compaction trigger */
    uv_idle_t idle;    /* flush + deliver completions once per loop iteration */
    uv_idle_t bg_idle; /* drives loop-side compaction chunks */
    int handles_open;
    uint64_t sweep_pos;

    /* background jobs (compact.c): one at a time */
    store_job *job;         /* running hint / delete job, or NULL */
    store_compaction *comp; /* running compaction, or NULL */
    uint32_t *hintq;        /* sealed segments waiting for a hint file */
    size_t hintq_n, hintq_cap;
    uint64_t comp_backoff_until; /* after a failed compaction, wait (loop ms) */

    bool write_failing;  /* in a streak of write errors (log once per streak) */
    int inject_sync_err; /* test hook for the next fsync round */
    bool closing, tearing_down;
    bool close_hinted; /* close wrote (or tried) the active segment's hint */
    void (*close_done)(void *arg);
    void *close_arg;

    uint8_t *rbuf; /* read scratch */
    size_t rcap;
    kv_store_stats st;
};

/* ---- shared helpers (store.c) ---- */
uint64_t store_wall_ms(void);
int store_errno_to_kv(int e);
store_seg *store_find_seg(kv_store *s, uint32_t id);
store_seg *store_active(kv_store *s);
void store_seg_name(char *out, size_t cap, const char *dir, uint32_t id, const char *suffix);
int store_segs_insert(kv_store *s, const store_seg *seg); /* keeps segs sorted */
void store_segs_remove(kv_store *s, uint32_t id);
int store_pwrite_all(int fd, const void *p, size_t n, uint64_t off);
/* Map segment g for reading, len bytes (rounded up to pages; the file may grow into
 * it). Without a mapping reads fall back to pread. */
void store_seg_map(kv_store *s, store_seg *g, uint64_t len);
void store_seg_unmap(store_seg *g);
/* Count (sign +1) or uncount (-1) a state in the stats and its segment's live bytes. */
void store_acct(kv_store *s, const store_ent *st, int sign);
/* Give entry e the fixed fields of st (keeping its key length) and flags, accounting. */
void store_ent_assign(kv_store *s, store_ent *e, const store_ent *st, unsigned flags);
/* Create segment id (header written, not fsync'ed). */
int store_seg_create(kv_store *s, uint32_t id, store_seg *out);
/* Whether the state is expired at now_ms (by its whole-second expiry). */
bool store_ent_expired(const store_ent *st, uint64_t now_ms);
pend_item *store_pend_find(kv_store *s, uint32_t ref);
/* Start a new active segment (flushing the buffer first). */
int store_rotate(kv_store *s);
/* Run the idle handle: flush, deliver completions, drive a close. */
void store_kick(kv_store *s);

/* ---- recover.c ---- */
int store_recover(kv_store *s);

/* ---- compact.c ---- */
void store_bg_kick(kv_store *s); /* start the next background job if idle */
void store_bg_queue_hint(kv_store *s, uint32_t seg_id);
void store_maybe_compact(kv_store *s); /* thresholds check (maintenance timer) */
bool store_bg_busy(const kv_store *s);
/* Start a hint job for seg_id now if nothing runs (close: the active segment). */
bool store_bg_hint_now(kv_store *s, uint32_t seg_id);
void store_bg_close(kv_store *s); /* closing: abort / finish what runs */
void store_bg_free(kv_store *s);

#endif
