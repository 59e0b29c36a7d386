/*
 * store.c — the embedded storage engine, v1 (contract in store.h): append-only segment
 * files with a CRC on every record, an in-memory hash index rebuilt by scanning the
 * segments on open, and the three durability modes with group commit.
 *
 * Threading: every entry point runs on the loop thread that opened the store. The only
 * work done elsewhere is fdatasync/fsync on the libuv threadpool (sync_work), which sees
 * nothing but a private list of file descriptors; its result comes back to the loop in
 * sync_after. store_open and the scan it does are blocking, by contract (the node opens
 * its store before it serves).
 *
 * ==== On-disk format, version 1 ====
 *
 * <data_dir>/store/NNNNNNNNNN.seg, NNNNNNNNNN = the segment id in 10 decimal digits
 * (1, 2, 3, ...; ids only grow). All integers are little-endian, encoded field by field.
 *
 * Segment header, 32 bytes:
 *   0  u32 magic 0x4753564B (the bytes "KVSG")
 *   4  u16 format version (1)       a reader refuses segments of a newer version
 *   6  u16 header length (32)       records start here
 *   8  u64 segment id               equals the file name's number
 *  16  u64 created, ms since epoch  informational
 *  24  u32 flags                    reserved, 0
 *  28  u32 CRC-32C of bytes 0..28
 *
 * Records follow back to back, each a 40-byte header, the key, then the value:
 *   0  u32 CRC-32C of header bytes 4..40, key and value
 *   4  u8  type                     1 = put, 2 = tombstone (0 never valid: zeroed
 *                                   space reads as corrupt)
 *   5  u8  flags                    bit 0: value is an LZ4 block (raw length at 12);
 *                                   bits 1..7 reserved, 0
 *   6  u16 key length               1..65535
 *   8  u32 value length as stored   0 for tombstones
 *  12  u32 value length decoded     == stored length unless bit 0 of flags is set
 *  16  u64 version timestamp        HLC: wall-clock ms << 16 | logical counter
 *  24  u32 version node id
 *  28  u32 reserved, 0
 *  32  u64 expiry, ms since epoch   0 = never
 *  40  key bytes, then value bytes
 *
 * Room for what comes later without a format break: compaction rewrites live records
 * into new segments and writes a hint file per segment beside it (NNNNNNNNNN.hint: key,
 * offset, length, version, expiry, type — enough to fill the index without reading the
 * segment); TTL is the expiry field; LZ4 is flag bit 0 with the decoded length at byte
 * 12 (this build already reads such records); range enumeration by token hashes the key
 * held in the index. Anything that changes the meaning of existing bytes bumps the
 * format version, which older builds refuse instead of misreading.
 *
 * ==== Design notes ====
 *
 * Writes. A put encodes the 40-byte header, computes the CRC, and appends header, key and
 * value with one pwritev(2) at the active segment's end, on the loop thread: records are
 * small (a value is at most limits.max_value, 1 MiB by default) and the write lands in
 * the page cache, so it costs microseconds; the slow part, fsync, is on the threadpool.
 * Explicit offsets (not O_APPEND) let a failed or partial write be cut back with
 * ftruncate and the next write land exactly where the log ends. The segment rotates
 * before a record would take it past segment_bytes.
 *
 * Visibility and completion. NEVER / INTERVAL: the index is updated right after the
 * write(2) and the callback is queued for the next loop iteration (an idle handle runs
 * the queue), so a callback never runs inside store_put. ALWAYS: the record waits in
 * `waiting`; if no fsync is running one starts, covering everything written so far
 * (`inflight`); writes arriving meanwhile wait for the next. When an fsync completes
 * every write it covered goes into the index and gets its callback, then the next fsync
 * starts if anything waits. So one fsync serves any number of concurrent writes. If an
 * fsync fails, the covered writes and everything written after them (a suffix of the
 * log) fail with KV_EIO and are cut off the files, so nothing unacknowledged is ever
 * visible or comes back from a later fsync.
 *
 * Open. Segments are scanned in id order; every record's CRC is checked. The index keeps,
 * per key, the record with the highest version (ts, node); tombstones stay in the index
 * so that a later replication layer can see "deleted at version V". A bad record is
 * skipped if its lengths are plausible and the record after it is intact (a flipped
 * byte); otherwise the last segment is truncated there (a torn tail: the process or
 * machine died mid-write) and any other segment is read up to that point. The store's
 * clock restarts above the highest timestamp seen, so versions never go backwards.
 *
 * Reads. store_get finds the entry and preads the record (the write already happened,
 * so the page cache has it even for the active segment), then checks the CRC, the key
 * and the version against the index before handing out the value.
 */
#include "store/store.h"

#include "common/hash.h"
#include "common/log.h"
#include "kvstore/error.h"
#include "store/crc32c.h"
#include "store/format.h"
#include "store/index.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <lz4.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define STORE_DEFAULT_SEGMENT_BYTES (64ull << 20)
#define STORE_DEFAULT_INTERVAL_MS   100

typedef struct store_seg {
    uint32_t id;
    int fd;
    uint64_t size; /* where the next record goes; bytes of the file we stand behind */
    bool dirty;    /* written since the last fsync of it started */
} store_seg;

/* One put/delete between its write(2) and its callback. */
typedef struct store_op store_op;
struct store_op {
    store_op *next;
    store_write_cb cb;
    void *arg;
    int status;
    kv_version ver;
    /* ALWAYS mode: the index update to make once the record is durable. */
    store_loc loc;
    uint8_t *key; /* heap copy, adopted by the index or freed */
    uint32_t klen;
    uint32_t hash;
};

typedef struct op_list {
    store_op *head, *tail;
    size_t n;
} op_list;

typedef struct fd_vec {
    int *v;
    size_t n, cap;
} fd_vec;

/* The one fsync that may be running. Only fds/dirfd/err are touched by the worker. */
typedef struct store_sync {
    uv_work_t req;
    kv_store *owner; /* loop side only */
    fd_vec fds;
    int dirfd;      /* -1: the directory needs no fsync */
    int err;        /* errno of the first failure, 0 if all succeeded */
    int inject_err; /* test hook: report this errno (store_debug_fail_next_sync) */
} store_sync;

struct kv_store {
    uv_loop_t *loop;
    kv_sync_mode mode;
    uint32_t node_id;
    uint32_t max_key;
    uint64_t max_value;
    uint64_t seg_bytes;
    uint64_t interval_ms;

    char *path; /* <dir>/store */
    int dirfd;
    store_seg *segs; /* sorted by id; the last one is the active segment */
    size_t nsegs, capsegs;

    store_index index;
    uint64_t last_ts; /* highest version timestamp seen or assigned */

    op_list waiting;  /* ALWAYS: written, not yet covered by an fsync */
    op_list inflight; /* ALWAYS: covered by the running fsync */
    op_list done;     /* completions to deliver on the next loop iteration */
    size_t unapplied; /* ops in waiting + inflight (each may insert one key) */

    bool sync_running;
    store_sync sync;
    fd_vec rotated; /* segments rotated out while dirty, for the next fsync */
    bool dir_dirty; /* a segment was created since the last directory fsync */

    uv_timer_t timer;
    uv_idle_t idle;
    int handles_open;

    bool write_failing;  /* in a streak of write errors (log once per streak) */
    int inject_sync_err; /* test hook for the next fsync round */
    bool closing, tearing_down;
    void (*close_done)(void *arg);
    void *close_arg;

    uint8_t *rbuf; /* store_get scratch: record header + key, or a compressed value */
    size_t rcap;
    kv_store_stats st;
};

/* ---------- small helpers ---------- */

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int errno_to_kv(int e)
{
    if (e == ENOSPC || e == EDQUOT)
        return KV_ENOSPC;
    if (e == ENOMEM)
        return KV_ENOMEM;
    return KV_EIO;
}

static int version_cmp(uint64_t ts_a, uint32_t node_a, uint64_t ts_b, uint32_t node_b)
{
    if (ts_a != ts_b)
        return ts_a < ts_b ? -1 : 1;
    if (node_a != node_b)
        return node_a < node_b ? -1 : 1;
    return 0;
}

/* HLC-like clock: physical ms in the upper bits, a logical counter in the low 16 bits.
 * Strictly increasing, even if the wall clock steps back. */
static kv_version next_version(kv_store *s)
{
    uint64_t phys = wall_ms() << 16;
    uint64_t ts = s->last_ts + 1 > phys ? s->last_ts + 1 : phys;
    s->last_ts = ts;
    return (kv_version){.ts = ts, .node = s->node_id};
}

static void list_push(op_list *l, store_op *op)
{
    op->next = NULL;
    if (l->tail)
        l->tail->next = op;
    else
        l->head = op;
    l->tail = op;
    l->n++;
}

/* Take the whole list, leaving l empty. */
static store_op *list_take(op_list *l)
{
    store_op *h = l->head;
    l->head = l->tail = NULL;
    l->n = 0;
    return h;
}

static void list_append(op_list *dst, op_list *src)
{
    if (!src->head)
        return;
    if (dst->tail)
        dst->tail->next = src->head;
    else
        dst->head = src->head;
    dst->tail = src->tail;
    dst->n += src->n;
    src->head = src->tail = NULL;
    src->n = 0;
}

static int fd_vec_reserve(fd_vec *v, size_t n)
{
    if (v->n + n <= v->cap)
        return KV_OK;
    size_t cap = v->cap ? v->cap : 4;
    while (cap < v->n + n)
        cap *= 2;
    int *p = realloc(v->v, cap * sizeof(*p));
    if (!p)
        return KV_ENOMEM;
    v->v = p;
    v->cap = cap;
    return KV_OK;
}

static store_seg *active_seg(kv_store *s)
{
    return &s->segs[s->nsegs - 1];
}

static store_seg *find_seg(kv_store *s, uint32_t id)
{
    size_t lo = 0, hi = s->nsegs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->segs[mid].id == id)
            return &s->segs[mid];
        if (s->segs[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static void seg_name(char *out, size_t cap, const char *dir, uint32_t id)
{
    snprintf(out, cap, "%s/%010u.seg", dir, id);
}

static int pwrite_all(int fd, const void *p, size_t n, uint64_t off)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = pwrite(fd, b, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        b += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

/* pwritev until everything is written; -1 with errno on the first failure. iov is
 * modified. */
static int pwritev_all(int fd, struct iovec *iov, int cnt, uint64_t off)
{
    while (cnt > 0) {
        if (iov->iov_len == 0) {
            iov++;
            cnt--;
            continue;
        }
        ssize_t w = pwritev(fd, iov, cnt, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        off += (uint64_t)w;
        size_t left = (size_t)w;
        while (cnt > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

/* preadv until everything is read. KV_OK, KV_EIO, or KV_ECORRUPT if the file ends
 * first (it is shorter than the index says). iov is modified. */
static int preadv_all(int fd, struct iovec *iov, int cnt, uint64_t off)
{
    while (cnt > 0) {
        if (iov->iov_len == 0) {
            iov++;
            cnt--;
            continue;
        }
        ssize_t r = preadv(fd, iov, cnt, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return KV_EIO;
        }
        if (r == 0)
            return KV_ECORRUPT;
        off += (uint64_t)r;
        size_t left = (size_t)r;
        while (cnt > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return KV_OK;
}

static int mkdir_p(const char *path)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(buf))
        return -1;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        buf[i] = c;
    }
    return 0;
}

/* ---------- index maintenance ---------- */

static bool loc_live(const store_loc *l)
{
    return !(l->flags & (STORE_LOC_TOMBSTONE | STORE_LOC_EXPIRED));
}

static void live_add(kv_store *s, store_entry *e, uint64_t now)
{
    if (e->loc.expiry && e->loc.expiry <= now)
        e->loc.flags |= STORE_LOC_EXPIRED;
    if (loc_live(&e->loc)) {
        s->st.keys++;
        s->st.live_bytes += e->klen + e->loc.vlen;
    }
}

static void live_sub(kv_store *s, const store_entry *e)
{
    if (loc_live(&e->loc)) {
        s->st.keys--;
        s->st.live_bytes -= e->klen + e->loc.vlen;
    }
}

/*
 * Make loc the key's entry unless the index already holds a newer version. owned is a
 * heap copy of the key that the index adopts for a new entry (freed otherwise); with
 * owned NULL a copy is made when needed. KV_OK or KV_ENOMEM (nothing changed).
 */
static int index_apply(kv_store *s, uint32_t hash, const uint8_t *key, size_t klen, uint8_t *owned,
                       const store_loc *loc, uint64_t now)
{
    store_entry *e = store_index_find(&s->index, hash, key, klen);
    if (e) {
        free(owned);
        if (version_cmp(loc->ts, loc->node, e->loc.ts, e->loc.node) < 0)
            return KV_OK;
        live_sub(s, e);
        e->loc = *loc;
        live_add(s, e, now);
        return KV_OK;
    }
    uint8_t *k = owned;
    if (!k) {
        k = malloc(klen);
        if (!k)
            return KV_ENOMEM;
        memcpy(k, key, klen);
    }
    e = store_index_insert(&s->index, hash, k, klen, loc);
    if (!e) {
        free(k);
        return KV_ENOMEM;
    }
    live_add(s, e, now);
    return KV_OK;
}

static store_loc loc_from(const store_rec_hdr *h, uint32_t seg, uint64_t off)
{
    return (store_loc){
        .ts = h->ts,
        .node = h->node,
        .expiry = h->expiry,
        .off = off,
        .seg = seg,
        .rec_len = (uint32_t)store_rec_len(h),
        .vlen = h->vlen,
        .flags = h->type == STORE_REC_TOMBSTONE ? STORE_LOC_TOMBSTONE : 0,
    };
}

/* ---------- segments ---------- */

static int segs_reserve(kv_store *s, size_t n)
{
    if (s->nsegs + n <= s->capsegs)
        return KV_OK;
    size_t cap = s->capsegs ? s->capsegs * 2 : 16;
    while (cap < s->nsegs + n)
        cap *= 2;
    store_seg *p = realloc(s->segs, cap * sizeof(*p));
    if (!p)
        return KV_ENOMEM;
    s->segs = p;
    s->capsegs = cap;
    return KV_OK;
}

/* Create segment id with its header; not fsync'ed (the caller marks it dirty). Logs only
 * the first failure of a streak of write errors (a full disk fails every rotation). */
static int seg_create(kv_store *s, uint32_t id, store_seg *out)
{
    char name[PATH_MAX];
    seg_name(name, sizeof(name), s->path, id);
    int fd = open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        if (!s->write_failing)
            kv_log_error("cannot create segment", KV_STR("path", name),
                         KV_STR("reason", strerror(e)));
        return errno_to_kv(e);
    }
    uint8_t hdr[STORE_SEG_HDR_LEN];
    store_seg_hdr_encode(hdr, &(store_seg_hdr){.id = id, .created_ms = wall_ms()});
    if (pwrite_all(fd, hdr, sizeof(hdr), 0) != 0) {
        int e = errno;
        if (!s->write_failing)
            kv_log_error("cannot write segment header", KV_STR("path", name),
                         KV_STR("reason", strerror(e)));
        close(fd);
        unlink(name);
        return errno_to_kv(e);
    }
    *out = (store_seg){.id = id, .fd = fd, .size = STORE_SEG_HDR_LEN, .dirty = true};
    return KV_OK;
}

/* Start a new active segment. The old one, if written since its last fsync, is queued for
 * the next fsync; the directory needs one too (a new name appeared). */
static int seg_rotate(kv_store *s)
{
    int rc = segs_reserve(s, 1);
    if (rc == KV_OK)
        rc = fd_vec_reserve(&s->rotated, 2); /* +1 so start_sync can add the active fd */
    if (rc != KV_OK)
        return rc;
    store_seg *old = active_seg(s);
    if (old->id == UINT32_MAX)
        return KV_EIO;
    store_seg seg;
    rc = seg_create(s, old->id + 1, &seg);
    if (rc != KV_OK)
        return rc;
    if (old->dirty) {
        s->rotated.v[s->rotated.n++] = old->fd;
        old->dirty = false;
    }
    s->segs[s->nsegs++] = seg;
    s->dir_dirty = true;
    s->st.segments++;
    s->st.disk_bytes += STORE_SEG_HDR_LEN;
    return KV_OK;
}

/* ---------- open: scanning ---------- */

static int truncate_tail(kv_store *s, store_seg *seg, uint64_t at, uint64_t size)
{
    if (ftruncate(seg->fd, (off_t)at) != 0 || fsync(seg->fd) != 0) {
        int e = errno;
        kv_log_error("cannot truncate torn segment tail", KV_UINT("segment", seg->id),
                     KV_UINT("offset", at), KV_STR("reason", strerror(e)));
        return errno_to_kv(e);
    }
    kv_log_warn("truncated torn segment tail", KV_UINT("segment", seg->id), KV_UINT("offset", at),
                KV_UINT("bytes", size - at));
    s->st.corrupt_records++;
    s->st.truncated_bytes += size - at;
    return KV_OK;
}

/*
 * Scan one segment into the index. last: it is the newest segment, whose tail may be
 * torn by a crash. *bad_header is set when the header could not be trusted (the caller
 * then starts a fresh active segment instead of appending to this one).
 */
static int scan_segment(kv_store *s, store_seg *seg, bool last, uint64_t now, bool *bad_header)
{
    struct stat sb;
    if (fstat(seg->fd, &sb) != 0) {
        kv_log_error("cannot stat segment", KV_UINT("segment", seg->id),
                     KV_STR("reason", strerror(errno)));
        return KV_EIO;
    }
    uint64_t size = (uint64_t)sb.st_size;
    *bad_header = false;

    if (size < STORE_SEG_HDR_LEN) {
        /* Died while creating the file. If it is the newest, rewrite its header and use
         * it; an older one holds nothing and is left alone. */
        if (!last) {
            kv_log_warn("segment shorter than its header, ignored", KV_UINT("segment", seg->id),
                        KV_UINT("bytes", size));
            s->st.corrupt_records++;
            seg->size = size;
            return KV_OK;
        }
        if (size > 0) {
            int rc = truncate_tail(s, seg, 0, size);
            if (rc != KV_OK)
                return rc;
        }
        uint8_t hdr[STORE_SEG_HDR_LEN];
        store_seg_hdr_encode(hdr, &(store_seg_hdr){.id = seg->id, .created_ms = wall_ms()});
        if (pwrite_all(seg->fd, hdr, sizeof(hdr), 0) != 0 || fsync(seg->fd) != 0) {
            kv_log_error("cannot write segment header", KV_UINT("segment", seg->id),
                         KV_STR("reason", strerror(errno)));
            return KV_EIO;
        }
        seg->size = STORE_SEG_HDR_LEN;
        return KV_OK;
    }

    uint8_t *base = mmap(NULL, size, PROT_READ, MAP_SHARED, seg->fd, 0);
    if (base == MAP_FAILED) {
        kv_log_error("cannot map segment", KV_UINT("segment", seg->id),
                     KV_STR("reason", strerror(errno)));
        return KV_EIO;
    }
    /* One sequential pass over the file. */
    madvise(base, size, MADV_SEQUENTIAL);

    store_seg_hdr sh;
    switch (store_seg_hdr_decode(base, size, &sh)) {
    case STORE_SEG_HDR_OK:
        if (sh.id != seg->id)
            kv_log_warn("segment header names another id", KV_UINT("segment", seg->id),
                        KV_UINT("header_id", sh.id));
        break;
    case STORE_SEG_HDR_NEWER:
        kv_log_error("segment written by a newer format version; refusing to open",
                     KV_UINT("segment", seg->id), KV_UINT("version", sh.version),
                     KV_UINT("supported", STORE_FORMAT_VERSION));
        munmap(base, size);
        return KV_ECORRUPT;
    default:
        /* Records carry their own CRCs, so they can still be read. */
        kv_log_warn("corrupt segment header; reading its records anyway",
                    KV_UINT("segment", seg->id));
        s->st.corrupt_records++;
        *bad_header = true;
        break;
    }

    int rc = KV_OK;
    uint64_t pos = STORE_SEG_HDR_LEN;
    while (pos < size) {
        store_rec_hdr h;
        store_rec_status st = store_rec_parse(base + pos, size - pos, &h);
        if (st == STORE_REC_OK) {
            store_loc loc = loc_from(&h, seg->id, pos);
            const uint8_t *key = base + pos + STORE_REC_HDR_LEN;
            uint32_t hash = store_index_hash(&s->index, key, h.klen);
            rc = index_apply(s, hash, key, h.klen, NULL, &loc, now);
            if (rc != KV_OK)
                break;
            if (h.ts > s->last_ts)
                s->last_ts = h.ts;
            pos += store_rec_len(&h);
            continue;
        }
        if (st == STORE_REC_BADCRC) {
            /* A damaged record whose length still leads to an intact one: skip it. */
            uint64_t next = pos + store_rec_len(&h);
            store_rec_hdr nh;
            if (next < size && store_rec_parse(base + next, size - next, &nh) == STORE_REC_OK) {
                kv_log_warn("skipped corrupt record", KV_UINT("segment", seg->id),
                            KV_UINT("offset", pos), KV_UINT("bytes", next - pos));
                s->st.corrupt_records++;
                pos = next;
                continue;
            }
        }
        if (last) {
            rc = truncate_tail(s, seg, pos, size);
            if (rc == KV_OK)
                size = pos;
        } else {
            kv_log_warn("corrupt record; ignoring the rest of the segment",
                        KV_UINT("segment", seg->id), KV_UINT("offset", pos),
                        KV_UINT("bytes", size - pos));
            s->st.corrupt_records++;
        }
        break;
    }
    munmap(base, (size_t)sb.st_size);
    seg->size = last ? size : (uint64_t)sb.st_size;
    return rc;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The ids of NNNNNNNNNN.seg files in the store directory, sorted. */
static int list_segments(kv_store *s, uint32_t **ids_out, size_t *n_out)
{
    DIR *d = opendir(s->path);
    if (!d) {
        kv_log_error("cannot read store directory", KV_STR("path", s->path),
                     KV_STR("reason", strerror(errno)));
        return KV_EIO;
    }
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    int rc = KV_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (strlen(nm) != 14 || strcmp(nm + 10, ".seg") != 0)
            continue;
        bool digits = true;
        for (int i = 0; i < 10; i++)
            digits = digits && nm[i] >= '0' && nm[i] <= '9';
        if (!digits)
            continue;
        unsigned long long id = strtoull(nm, NULL, 10);
        if (id == 0 || id > UINT32_MAX)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            uint32_t *p = realloc(ids, cap * sizeof(*p));
            if (!p) {
                rc = KV_ENOMEM;
                break;
            }
            ids = p;
        }
        ids[n++] = (uint32_t)id;
    }
    closedir(d);
    if (rc != KV_OK) {
        free(ids);
        return rc;
    }
    if (n)
        qsort(ids, n, sizeof(*ids), cmp_u32);
    *ids_out = ids;
    *n_out = n;
    return KV_OK;
}

static int load_segments(kv_store *s)
{
    uint32_t *ids = NULL;
    size_t n = 0;
    int rc = list_segments(s, &ids, &n);
    if (rc != KV_OK)
        return rc;
    rc = segs_reserve(s, n + 1);
    uint64_t now = wall_ms();
    bool last_bad = false;
    for (size_t i = 0; rc == KV_OK && i < n; i++) {
        bool last = i + 1 == n;
        char name[PATH_MAX];
        seg_name(name, sizeof(name), s->path, ids[i]);
        /* Only the newest segment is ever appended to or truncated. */
        int fd = open(name, (last ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        if (fd < 0) {
            kv_log_error("cannot open segment", KV_STR("path", name),
                         KV_STR("reason", strerror(errno)));
            rc = KV_EIO;
            break;
        }
        store_seg *seg = &s->segs[s->nsegs++];
        *seg = (store_seg){.id = ids[i], .fd = fd};
        rc = scan_segment(s, seg, last, now, &last_bad);
        s->st.disk_bytes += seg->size;
    }
    free(ids);
    if (rc != KV_OK)
        return rc;
    s->st.segments = s->nsegs;

    if (s->nsegs == 0) {
        store_seg seg;
        rc = seg_create(s, 1, &seg);
        if (rc != KV_OK)
            return rc;
        s->segs[s->nsegs++] = seg;
        s->st.segments = 1;
        s->st.disk_bytes += STORE_SEG_HDR_LEN;
        s->dir_dirty = true;
    } else if (last_bad || active_seg(s)->size >= s->seg_bytes) {
        rc = seg_rotate(s);
        if (rc != KV_OK)
            return rc;
    }
    /* Make the layout we start from durable before taking writes. */
    store_seg *a = active_seg(s);
    if (a->dirty && fdatasync(a->fd) != 0)
        rc = KV_EIO;
    for (size_t i = 0; rc == KV_OK && i < s->rotated.n; i++)
        if (fdatasync(s->rotated.v[i]) != 0)
            rc = KV_EIO;
    if (rc == KV_OK && s->dir_dirty && fsync(s->dirfd) != 0)
        rc = KV_EIO;
    if (rc != KV_OK) {
        kv_log_error("cannot sync store files", KV_STR("path", s->path),
                     KV_STR("reason", strerror(errno)));
        return rc;
    }
    a->dirty = false;
    s->rotated.n = 0;
    s->dir_dirty = false;
    return KV_OK;
}

/* ---------- durability ---------- */

static void idle_cb(uv_idle_t *h);

/* Queue a completion for the next loop iteration. */
static void complete_later(kv_store *s, store_op *op)
{
    list_push(&s->done, op);
    uv_idle_start(&s->idle, idle_cb);
}

static bool needs_sync(kv_store *s)
{
    return s->waiting.n || s->rotated.n || s->dir_dirty || active_seg(s)->dirty;
}

static void sync_work(uv_work_t *req)
{
    store_sync *sy = req->data;
    sy->err = 0;
    for (size_t i = 0; i < sy->fds.n; i++)
        if (fdatasync(sy->fds.v[i]) != 0 && sy->err == 0)
            sy->err = errno;
    if (sy->dirfd >= 0 && fsync(sy->dirfd) != 0 && sy->err == 0)
        sy->err = errno;
    if (sy->inject_err && sy->err == 0)
        sy->err = sy->inject_err;
}

static void sync_after(uv_work_t *req, int status);

/* Start an fsync of everything written so far. Loop thread; no fsync may be running. */
static void start_sync(kv_store *s)
{
    assert(!s->sync_running);
    store_seg *a = active_seg(s);
    /* Swap buffers: the rotated list becomes the worker's list, so no allocation here
     * (seg_rotate keeps a spare slot for the active segment's fd). */
    fd_vec tmp = s->sync.fds;
    s->sync.fds = s->rotated;
    tmp.n = 0;
    s->rotated = tmp;
    if (a->dirty) {
        assert(s->sync.fds.n < s->sync.fds.cap);
        s->sync.fds.v[s->sync.fds.n++] = a->fd;
        a->dirty = false;
    }
    s->sync.dirfd = s->dir_dirty ? s->dirfd : -1;
    s->dir_dirty = false;
    s->sync.inject_err = s->inject_sync_err;
    s->inject_sync_err = 0;
    list_append(&s->inflight, &s->waiting);
    s->sync_running = true;
    s->sync.req.data = &s->sync;
    s->sync.owner = s;
    int rc = uv_queue_work(s->loop, &s->sync.req, sync_work, sync_after);
    assert(rc == 0);
    (void)rc;
}

/*
 * An fsync failed while ALWAYS-mode writes were pending: fail all of them (the covered
 * ones and those written after, together a suffix of the log) and cut them off the
 * files so that they can neither be served nor reappear after a restart.
 */
static void fail_pending(kv_store *s, int status)
{
    list_append(&s->inflight, &s->waiting);
    store_op *ops = list_take(&s->inflight);
    if (!ops)
        return;
    /* ops[0] is the oldest: everything from it on goes. */
    for (size_t i = 0; i < s->nsegs; i++) {
        store_seg *seg = &s->segs[i];
        uint64_t to;
        if (seg->id == ops->loc.seg)
            to = ops->loc.off;
        else if (seg->id > ops->loc.seg)
            to = STORE_SEG_HDR_LEN;
        else
            continue;
        if (seg->size <= to)
            continue;
        if (ftruncate(seg->fd, (off_t)to) != 0) {
            kv_log_error("cannot cut failed writes off a segment", KV_UINT("segment", seg->id),
                         KV_UINT("offset", to), KV_STR("reason", strerror(errno)));
            continue;
        }
        s->st.disk_bytes -= seg->size - to;
        seg->size = to;
        seg->dirty = true;
    }
    while (ops) {
        store_op *next = ops->next;
        free(ops->key);
        s->unapplied--;
        s->st.write_errors++;
        if (ops->cb)
            ops->cb(ops->arg, status, &ops->ver);
        free(ops);
        ops = next;
    }
}

static void sync_after(uv_work_t *req, int status)
{
    kv_store *s = ((store_sync *)req->data)->owner;
    int err = status == 0 ? s->sync.err : EIO;
    s->sync_running = false;
    s->sync.fds.n = 0;
    s->st.fsyncs++;

    if (err != 0) {
        s->st.sync_errors++;
        kv_log_error("fsync of store files failed", KV_STR("reason", strerror(err)),
                     KV_UINT("writes_failed", s->inflight.n + s->waiting.n));
        fail_pending(s, KV_EIO);
    } else {
        /* Everything covered is durable: make it visible first, then tell the writers,
         * so a callback that reads sees its whole group. */
        store_op *ops = list_take(&s->inflight);
        uint64_t now = wall_ms();
        for (store_op *op = ops; op; op = op->next) {
            int rc = index_apply(s, op->hash, op->key, op->klen, op->key, &op->loc, now);
            assert(rc == KV_OK); /* room was reserved by the put */
            (void)rc;
            op->key = NULL;
            s->unapplied--;
        }
        while (ops) {
            store_op *next = ops->next;
            if (ops->cb)
                ops->cb(ops->arg, KV_OK, &ops->ver);
            free(ops);
            ops = next;
        }
    }
    if (!s->sync_running && s->waiting.n)
        start_sync(s);
    if (s->closing)
        uv_idle_start(&s->idle, idle_cb);
}

static void timer_cb(uv_timer_t *h)
{
    kv_store *s = h->data;
    if (!s->sync_running && needs_sync(s))
        start_sync(s);
}

/* ---------- writes ---------- */

static int append_record(kv_store *s, struct iovec *iov, int cnt, size_t len, uint32_t *seg_id,
                         uint64_t *off)
{
    store_seg *a = active_seg(s);
    int rc = KV_OK;
    if (a->size > STORE_SEG_HDR_LEN && a->size + len > s->seg_bytes)
        rc = seg_rotate(s);
    if (rc == KV_OK) {
        a = active_seg(s);
        if (pwritev_all(a->fd, iov, cnt, a->size) != 0) {
            int e = errno;
            rc = errno_to_kv(e);
            /* A partial record would break the log: cut back to where it started. */
            if (ftruncate(a->fd, (off_t)a->size) != 0)
                kv_log_error("cannot cut back a failed write", KV_UINT("segment", a->id),
                             KV_UINT("offset", a->size), KV_STR("reason", strerror(errno)));
            if (!s->write_failing)
                kv_log_error("segment write failed", KV_UINT("segment", a->id),
                             KV_STR("reason", strerror(e)), KV_ERR(rc));
        }
    }
    if (rc != KV_OK) {
        s->st.write_errors++;
        s->write_failing = true;
        return rc;
    }
    if (s->write_failing) {
        kv_log_info("segment writes succeed again", KV_UINT("segment", a->id));
        s->write_failing = false;
    }
    *seg_id = a->id;
    *off = a->size;
    a->size += len;
    a->dirty = true;
    s->st.disk_bytes += len;
    return KV_OK;
}

static int store_write(kv_store *s, uint8_t type, const void *key, size_t klen, const void *val,
                       size_t vlen, uint64_t expiry_ms, const kv_version *given, store_write_cb cb,
                       void *arg)
{
    if (!s || (!key && klen))
        return KV_EINVAL;
    if (s->closing)
        return KV_ECLOSED;
    if (klen == 0 || (!val && vlen))
        return KV_EINVAL;
    if (klen > s->max_key || vlen > s->max_value)
        return KV_ETOOBIG;

    uint32_t hash = store_index_hash(&s->index, key, klen);
    store_op *op = calloc(1, sizeof(*op));
    if (!op)
        return KV_ENOMEM;
    if (given) {
        if (given->ts > s->last_ts)
            s->last_ts = given->ts;
        store_entry *cur = store_index_find(&s->index, hash, key, klen);
        if (cur && version_cmp(given->ts, given->node, cur->loc.ts, cur->loc.node) <= 0) {
            op->cb = cb;
            op->arg = arg;
            op->status = KV_ESTALE;
            op->ver = (kv_version){.ts = cur->loc.ts, .node = cur->loc.node};
            s->st.applies_stale++;
            complete_later(s, op);
            return KV_OK;
        }
    }
    /* Take every allocation the index update can need before writing, so that once the
     * record is on disk nothing can stop it from becoming visible. */
    uint8_t *kcopy = NULL;
    bool need_key = s->mode == KV_SYNC_ALWAYS || !store_index_find(&s->index, hash, key, klen);
    if (need_key) {
        kcopy = malloc(klen);
        if (!kcopy || store_index_reserve(&s->index, s->unapplied + 1) != KV_OK) {
            free(kcopy);
            free(op);
            return KV_ENOMEM;
        }
        memcpy(kcopy, key, klen);
    }

    kv_version ver = given ? *given : next_version(s);
    store_rec_hdr h = {
        .type = type,
        .klen = (uint16_t)klen,
        .vlen = (uint32_t)vlen,
        .raw_vlen = (uint32_t)vlen,
        .ts = ver.ts,
        .node = ver.node,
        .expiry = type == STORE_REC_PUT ? expiry_ms : 0,
    };
    uint8_t hdr[STORE_REC_HDR_LEN];
    store_rec_encode(hdr, &h, key, val);
    struct iovec iov[3] = {
        {.iov_base = hdr, .iov_len = sizeof(hdr)},
        {.iov_base = (void *)key, .iov_len = klen},
        {.iov_base = (void *)val, .iov_len = vlen},
    };
    uint32_t seg_id;
    uint64_t off;
    int rc = append_record(s, iov, vlen ? 3 : 2, store_rec_len(&h), &seg_id, &off);
    if (rc != KV_OK) {
        free(kcopy);
        free(op);
        return rc;
    }
    if (type == STORE_REC_PUT)
        s->st.puts++;
    else
        s->st.deletes++;

    op->cb = cb;
    op->arg = arg;
    op->status = KV_OK;
    op->ver = ver;
    store_loc loc = loc_from(&h, seg_id, off);
    if (s->mode == KV_SYNC_ALWAYS) {
        op->loc = loc;
        op->key = kcopy;
        op->klen = (uint32_t)klen;
        op->hash = hash;
        s->unapplied++;
        list_push(&s->waiting, op);
        if (!s->sync_running)
            start_sync(s);
        return KV_OK;
    }
    rc = index_apply(s, hash, key, klen, kcopy, &loc, wall_ms());
    assert(rc == KV_OK); /* key copy and table room were taken above */
    complete_later(s, op);
    return KV_OK;
}

int store_put(kv_store *s, const void *key, size_t klen, const void *val, size_t vlen,
              uint64_t expiry_ms, store_write_cb cb, void *arg)
{
    return store_write(s, STORE_REC_PUT, key, klen, val, vlen, expiry_ms, NULL, cb, arg);
}

int store_delete(kv_store *s, const void *key, size_t klen, store_write_cb cb, void *arg)
{
    return store_write(s, STORE_REC_TOMBSTONE, key, klen, NULL, 0, 0, NULL, cb, arg);
}

int store_apply(kv_store *s, const void *key, size_t klen, const void *val, size_t vlen,
                uint64_t expiry_ms, const kv_version *ver, bool tombstone, store_write_cb cb,
                void *arg)
{
    if (!ver)
        return KV_EINVAL;
    if (tombstone)
        return store_write(s, STORE_REC_TOMBSTONE, key, klen, NULL, 0, 0, ver, cb, arg);
    return store_write(s, STORE_REC_PUT, key, klen, val, vlen, expiry_ms, ver, cb, arg);
}

int store_get_meta(kv_store *s, const void *key, size_t klen, kv_store_meta *meta)
{
    if (!s || !meta || !key || klen == 0)
        return KV_EINVAL;
    uint32_t hash = store_index_hash(&s->index, key, klen);
    store_entry *e = store_index_find(&s->index, hash, key, klen);
    if (!e || (e->loc.flags & STORE_LOC_PURGED))
        return KV_ENOTFOUND;
    *meta = (kv_store_meta){
        .ver = {.ts = e->loc.ts, .node = e->loc.node},
        .expiry_ms = e->loc.expiry,
        .vlen = e->loc.vlen,
        .tombstone = (e->loc.flags & STORE_LOC_TOMBSTONE) != 0,
        .expired = e->loc.expiry && e->loc.expiry <= wall_ms(),
    };
    return KV_OK;
}

int store_purge(kv_store *s, const void *key, size_t klen, const kv_version *upto)
{
    if (!s || !upto || !key || klen == 0)
        return KV_EINVAL;
    uint32_t hash = store_index_hash(&s->index, key, klen);
    store_entry *e = store_index_find(&s->index, hash, key, klen);
    if (!e || (e->loc.flags & STORE_LOC_PURGED))
        return KV_ENOTFOUND;
    if (!(e->loc.flags & STORE_LOC_TOMBSTONE) ||
        version_cmp(e->loc.ts, e->loc.node, upto->ts, upto->node) > 0)
        return KV_EEXIST;
    e->loc.flags |= STORE_LOC_PURGED;
    s->st.purges++;
    return KV_OK;
}

static bool hash_in_range(uint64_t h, uint64_t lo, uint64_t hi)
{
    if (lo == hi)
        return true;
    if (lo < hi)
        return h >= lo && h < hi;
    return h >= lo || h < hi;
}

int store_range(kv_store *s, uint64_t lo, uint64_t hi, store_cursor *cur, size_t max_visit,
                store_range_fn fn, void *arg)
{
    if (!s || !cur || !fn)
        return KV_EINVAL;
    if (max_visit == 0)
        max_visit = 4096;
    /* Interim: the cursor is a slot number (stable until the table grows). */
    size_t pos = (size_t)cur->pos;
    uint64_t now = wall_ms();
    for (size_t n = 0; n < max_visit; n++) {
        store_entry *e = store_index_next(&s->index, &pos);
        if (!e) {
            cur->done = true;
            break;
        }
        if (e->loc.flags & STORE_LOC_PURGED)
            continue;
        uint64_t h = kv_ring_hash(e->key, e->klen);
        if (!hash_in_range(h, lo, hi))
            continue;
        kv_store_item it = {
            .key = e->key,
            .klen = e->klen,
            .hash = h,
            .ver = {.ts = e->loc.ts, .node = e->loc.node},
            .expiry_ms = e->loc.expiry,
            .tombstone = (e->loc.flags & STORE_LOC_TOMBSTONE) != 0,
            .expired = e->loc.expiry && e->loc.expiry <= now,
        };
        if (!fn(arg, &it))
            break;
    }
    cur->pos = pos;
    return KV_OK;
}

/* Interim: compaction is not implemented yet; completes at once with nothing done. */
typedef struct compact_stub {
    uv_idle_t idle;
    store_compact_cb cb;
    void *arg;
} compact_stub;

static void compact_stub_closed(uv_handle_t *h)
{
    free(h->data);
}

static void compact_stub_run(uv_idle_t *h)
{
    compact_stub *c = h->data;
    kv_compact_stats st = {0};
    uv_idle_stop(h);
    if (c->cb)
        c->cb(c->arg, KV_OK, &st);
    uv_close((uv_handle_t *)h, compact_stub_closed);
}

int store_compact(kv_store *s, store_compact_cb cb, void *arg)
{
    if (!s)
        return KV_EINVAL;
    if (s->closing)
        return KV_ECLOSED;
    compact_stub *c = calloc(1, sizeof(*c));
    if (!c)
        return KV_ENOMEM;
    c->cb = cb;
    c->arg = arg;
    uv_idle_init(s->loop, &c->idle);
    c->idle.data = c;
    uv_idle_start(&c->idle, compact_stub_run);
    return KV_OK;
}

bool store_compacting(const kv_store *s)
{
    (void)s;
    return false;
}

/* ---------- reads ---------- */

static int rbuf_reserve(kv_store *s, size_t n)
{
    if (n <= s->rcap)
        return KV_OK;
    size_t cap = s->rcap ? s->rcap : 4096;
    while (cap < n)
        cap *= 2;
    uint8_t *p = realloc(s->rbuf, cap);
    if (!p)
        return KV_ENOMEM;
    s->rbuf = p;
    s->rcap = cap;
    return KV_OK;
}

static int read_corrupt(kv_store *s, const store_seg *seg, const store_loc *loc, const char *why)
{
    kv_log_error("corrupt record on read", KV_UINT("segment", seg->id), KV_UINT("offset", loc->off),
                 KV_STR("problem", why));
    s->st.corrupt_reads++;
    return KV_ECORRUPT;
}

int store_get(kv_store *s, const void *key, size_t klen, kv_buf *val, kv_version *ver)
{
    if (!s || !val || (!key && klen) || klen == 0)
        return KV_EINVAL;
    if (klen > s->max_key)
        return KV_ETOOBIG;
    s->st.gets++;
    uint32_t hash = store_index_hash(&s->index, key, klen);
    store_entry *e = store_index_find(&s->index, hash, key, klen);
    if (!e || (e->loc.flags & STORE_LOC_TOMBSTONE))
        return KV_ENOTFOUND;
    if (e->loc.expiry && e->loc.expiry <= wall_ms()) {
        live_sub(s, e);
        e->loc.flags |= STORE_LOC_EXPIRED;
        return KV_ENOTFOUND;
    }
    const store_loc loc = e->loc;
    store_seg *seg = find_seg(s, loc.seg);
    if (!seg) {
        kv_log_error("index names a missing segment", KV_UINT("segment", loc.seg));
        return KV_EIO;
    }
    size_t head = STORE_REC_HDR_LEN + klen;
    bool lz4 = false;
    int rc = rbuf_reserve(s, head);
    if (rc != KV_OK)
        return rc;

    /* Read header + key into scratch and the value straight into the caller's buffer;
     * compressed values go to scratch first. We cannot know the flags before reading, so
     * read as stored, then decode if needed. */
    kv_buf_reset(val);
    rc = kv_buf_reserve(val, loc.vlen);
    if (rc != KV_OK)
        return rc;
    struct iovec iov[2] = {
        {.iov_base = s->rbuf, .iov_len = head},
        {.iov_base = val->data, .iov_len = loc.vlen},
    };
    rc = preadv_all(seg->fd, iov, loc.vlen ? 2 : 1, loc.off);
    if (rc == KV_ECORRUPT)
        return read_corrupt(s, seg, &loc, "segment shorter than the index says");
    if (rc != KV_OK) {
        kv_log_error("segment read failed", KV_UINT("segment", seg->id), KV_UINT("offset", loc.off),
                     KV_STR("reason", strerror(errno)));
        return rc;
    }
    store_rec_hdr h;
    store_rec_hdr_decode(s->rbuf, &h);
    if (!store_rec_hdr_plausible(&h, s->rbuf) || h.klen != klen || h.vlen != loc.vlen ||
        h.type != STORE_REC_PUT || h.ts != loc.ts || h.node != loc.node)
        return read_corrupt(s, seg, &loc, "header does not match the index");
    if (store_rec_crc(s->rbuf, s->rbuf + STORE_REC_HDR_LEN, klen, val->data, h.vlen) != h.crc)
        return read_corrupt(s, seg, &loc, "crc mismatch");
    if (memcmp(s->rbuf + STORE_REC_HDR_LEN, key, klen) != 0)
        return read_corrupt(s, seg, &loc, "key does not match the index");
    lz4 = h.flags & STORE_REC_F_LZ4;

    if (lz4) {
        /* Rare path (written by later versions for large values): move the block aside
         * and decode into the caller's buffer. */
        rc = rbuf_reserve(s, h.vlen);
        if (rc != KV_OK)
            return rc;
        memcpy(s->rbuf, val->data, h.vlen);
        rc = kv_buf_reserve(val, h.raw_vlen);
        if (rc != KV_OK)
            return rc;
        int n = LZ4_decompress_safe((const char *)s->rbuf, val->data, (int)h.vlen, (int)h.raw_vlen);
        if (n < 0 || (uint32_t)n != h.raw_vlen)
            return read_corrupt(s, seg, &loc, "lz4 block does not decode");
        val->len = h.raw_vlen;
    } else {
        val->len = h.vlen;
    }
    val->data[val->len] = '\0';
    if (ver) {
        ver->ts = h.ts;
        ver->node = h.node;
    }
    return KV_OK;
}

void store_stats(const kv_store *s, kv_store_stats *out)
{
    *out = s->st;
}

/* ---------- open / close ---------- */

static void free_store(kv_store *s)
{
    for (size_t i = 0; i < s->nsegs; i++)
        if (s->segs[i].fd >= 0)
            close(s->segs[i].fd);
    if (s->dirfd >= 0)
        close(s->dirfd);
    store_index_fini(&s->index);
    free(s->segs);
    free(s->rotated.v);
    free(s->sync.fds.v);
    free(s->rbuf);
    free(s->path);
    free(s);
}

int store_open(kv_store **out, uv_loop_t *loop, const kv_store_opts *opts)
{
    if (!out || !loop || !opts || !opts->dir || !opts->dir[0] || opts->max_key == 0)
        return KV_EINVAL;
    if (opts->sync != KV_SYNC_ALWAYS && opts->sync != KV_SYNC_INTERVAL &&
        opts->sync != KV_SYNC_NEVER)
        return KV_EINVAL;
    kv_store *s = calloc(1, sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    s->dirfd = -1;
    s->loop = loop;
    s->mode = opts->sync;
    s->node_id = opts->node_id;
    s->max_key = opts->max_key < STORE_KEY_MAX_HARD ? opts->max_key : STORE_KEY_MAX_HARD;
    s->max_value = opts->max_value < STORE_VALUE_MAX_HARD ? opts->max_value : STORE_VALUE_MAX_HARD;
    s->seg_bytes = opts->segment_bytes ? opts->segment_bytes : STORE_DEFAULT_SEGMENT_BYTES;
    s->interval_ms = opts->sync_interval_ms ? opts->sync_interval_ms : STORE_DEFAULT_INTERVAL_MS;

    uint64_t seed;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed))
        seed = uv_hrtime() ^ ((uint64_t)getpid() << 32);
    store_index_init(&s->index, seed);

    int rc = KV_OK;
    size_t plen = strlen(opts->dir) + sizeof("/store");
    s->path = malloc(plen);
    if (!s->path) {
        rc = KV_ENOMEM;
        goto fail;
    }
    snprintf(s->path, plen, "%s/store", opts->dir);
    struct stat sb;
    bool fresh = stat(s->path, &sb) != 0;
    if (mkdir_p(s->path) != 0) {
        int e = errno;
        kv_log_error("cannot create store directory", KV_STR("path", s->path),
                     KV_STR("reason", strerror(e)));
        rc = errno_to_kv(e);
        goto fail;
    }
    s->dirfd = open(s->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dirfd < 0) {
        kv_log_error("cannot open store directory", KV_STR("path", s->path),
                     KV_STR("reason", strerror(errno)));
        rc = KV_EIO;
        goto fail;
    }
    if (fresh) {
        /* A new store directory: make its name durable in the data directory too. */
        int pfd = open(opts->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (pfd >= 0) {
            fsync(pfd);
            close(pfd);
        }
    }
    rc = fd_vec_reserve(&s->rotated, 2);
    if (rc == KV_OK)
        rc = fd_vec_reserve(&s->sync.fds, 2);
    if (rc == KV_OK)
        rc = load_segments(s);
    if (rc != KV_OK)
        goto fail;

    /* Nothing below can fail: from here on the store owns libuv handles and can only
     * be released through store_close. */
    uv_idle_init(loop, &s->idle);
    uv_timer_init(loop, &s->timer);
    s->idle.data = s->timer.data = s;
    s->handles_open = 2;
    if (s->mode == KV_SYNC_INTERVAL) {
        uv_timer_start(&s->timer, timer_cb, s->interval_ms, s->interval_ms);
        /* A background flush alone must not keep the loop running. */
        uv_unref((uv_handle_t *)&s->timer);
    }
    if (s->st.corrupt_records)
        kv_log_warn("store opened with damage repaired or skipped",
                    KV_UINT("corrupt_records", s->st.corrupt_records),
                    KV_UINT("truncated_bytes", s->st.truncated_bytes));
    *out = s;
    return KV_OK;

fail:
    free_store(s);
    return rc;
}

static void handle_closed(uv_handle_t *h)
{
    kv_store *s = h->data;
    if (--s->handles_open > 0)
        return;
    void (*done)(void *) = s->close_done;
    void *arg = s->close_arg;
    free_store(s);
    if (done)
        done(arg);
}

/* Drive the close: deliver completions, finish fsyncs (one final one in every mode),
 * then release handles. Runs from the idle handle, never inside store_close. */
static void close_step(kv_store *s)
{
    if (s->tearing_down || s->done.n)
        return;
    if (s->sync_running) {
        uv_idle_stop(&s->idle); /* sync_after restarts it; no busy wait meanwhile */
        return;
    }
    if (needs_sync(s)) {
        uv_idle_stop(&s->idle);
        start_sync(s);
        return;
    }
    s->tearing_down = true;
    uv_idle_stop(&s->idle);
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->idle, handle_closed);
    uv_close((uv_handle_t *)&s->timer, handle_closed);
}

static void idle_cb(uv_idle_t *h)
{
    kv_store *s = h->data;
    store_op *ops = list_take(&s->done);
    while (ops) {
        store_op *next = ops->next;
        if (ops->cb)
            ops->cb(ops->arg, ops->status, &ops->ver);
        free(ops);
        ops = next;
    }
    if (s->closing)
        close_step(s);
    else if (!s->done.n)
        uv_idle_stop(&s->idle);
}

void store_close(kv_store *s, void (*done)(void *arg), void *arg)
{
    assert(s && !s->closing);
    s->closing = true;
    s->close_done = done;
    s->close_arg = arg;
    uv_timer_stop(&s->timer);
    uv_idle_start(&s->idle, idle_cb);
}

void store_debug_fail_next_sync(kv_store *s, int err)
{
    s->inject_sync_err = err;
}
