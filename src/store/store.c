/*
 * store.c — the embedded storage engine (contract in store.h): the write path (record
 * encoding, LZ4, the write buffer, group commit, rollback of failed writes), the read
 * path, meta / purge / range enumeration, stats and close. Opening lives in recover.c,
 * hint files and compaction in compact.c; their shared state is in internal.h.
 *
 * Threading: every entry point runs on the loop thread that opened the store. Work done
 * elsewhere: fdatasync/fsync on the libuv threadpool (sync_work), which sees nothing but
 * a private list of file descriptors and returns in sync_after; the jobs of compact.c.
 *
 * ==== On-disk format, version 1 ====
 *
 * <data_dir>/store/NNNNNNNNNN.seg, NNNNNNNNNN = the segment id in 10 decimal digits
 * (ids only grow), and beside a segment optionally NNNNNNNNNN.hint (format.h). Files
 * being written by a background job end in .tmp until they are complete and durable;
 * open deletes leftover .tmp files. All integers are little-endian, field by field.
 *
 * Segment header, 32 bytes:
 *   0  u32 magic 0x4753564B (the bytes "KVSG")
 *   4  u16 format version (1)       a reader refuses segments of a newer version
 *   6  u16 header length (32)       records start here
 *   8  u64 segment id               equals the file name's number
 *  16  u64 created, ms since epoch  informational
 *  24  u32 flags                    bit 0: written by compaction; others reserved, 0
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
 * ==== Design notes: the write path ====
 *
 * A write is an op in a ring (FIFO) with an absolute sequence number. store_put encodes
 * the record into the write buffer (the bytes of the active segment past its `flushed`
 * offset), updates the index at once, and pushes its op. Once per loop iteration (the
 * idle handle; or earlier when the buffer fills or the segment rotates) the buffer goes
 * to the file with one pwrite(2) — that is what makes a million puts per second
 * possible. An op is *committed* when its record is written (NEVER, INTERVAL) or written
 * and covered by a completed fsync (ALWAYS: group commit; writes arriving while an fsync
 * runs share the next one). Callbacks run in op order once committed, from the idle
 * handle or the fsync completion, never inside the call that started the write.
 *
 * Visibility and rollback. The index always holds the newest state of every key, so a
 * conditional write (store_apply) is decided against every earlier write, committed or
 * not. An entry with uncommitted writes carries STORE_ENT_PENDING, and the pending map
 * keeps its state as of the last commit point ("absent" for a key that did not exist).
 * NEVER/INTERVAL reads see the newest state — unflushed records are read from the write
 * buffer. ALWAYS reads see the committed state, so nothing is visible before it is
 * durable. If a write(2) or fsync fails, every uncommitted op fails (a suffix of the log):
 * the segments are cut back to where the first of them began, the pending map restores
 * every touched entry, and the ops complete with KV_ENOSPC / KV_EIO. So nothing
 * unacknowledged stays visible or comes back after a restart, and the next write simply
 * tries again (writes resume when space returns). A refused apply (KV_ESTALE) is an op
 * without a record: it completes in order with the writes before it, and fails with them.
 *
 * Accounting. Each segment knows how many of its bytes the index points at (`live`);
 * everything else — overwritten or deleted records, expired values, purged tombstones,
 * damaged records — is garbage, which is what triggers and guides compaction.
 *
 * Reads. store_get finds the entry, reads the record (from the write buffer, or pread —
 * the page cache has it), checks CRC, key and version against the index, and decodes LZ4.
 */
#include "store/internal.h"

#include "ae/merkle.h"
#include "common/grow.h"
#include "common/hash.h"
#include "common/log.h"
#include "kvstore/error.h"
#include "store/crc32c.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <lz4.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static void idle_cb(uv_idle_t *h);
static void start_sync(kv_store *s);

/* ---------- small helpers ---------- */

uint64_t store_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int store_errno_to_kv(int e)
{
    if (e == ENOSPC || e == EDQUOT)
        return KV_ENOSPC;
    if (e == ENOMEM)
        return KV_ENOMEM;
    return KV_EIO;
}

store_seg *store_find_seg(kv_store *s, uint32_t id)
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

store_seg *store_active(kv_store *s)
{
    /* The active segment is nearly always the last one (compaction outputs only briefly
     * sort after it). */
    store_seg *last = &s->segs[s->nsegs - 1];
    if (last->id == s->active_id)
        return last;
    store_seg *a = store_find_seg(s, s->active_id);
    assert(a);
    return a;
}

void store_seg_name(char *out, size_t cap, const char *dir, uint32_t id, const char *suffix)
{
    snprintf(out, cap, "%s/%010u%s", dir, id, suffix);
}

static int segs_reserve(kv_store *s, size_t n)
{
    store_seg *p = kv_grow(s->segs, &s->capsegs, s->nsegs + n, sizeof(*p), 16);
    if (!p)
        return KV_ENOMEM;
    s->segs = p;
    return KV_OK;
}

int store_segs_insert(kv_store *s, const store_seg *seg)
{
    if (segs_reserve(s, 1) != KV_OK)
        return KV_ENOMEM;
    size_t i = s->nsegs;
    while (i > 0 && s->segs[i - 1].id > seg->id) {
        s->segs[i] = s->segs[i - 1];
        i--;
    }
    s->segs[i] = *seg;
    s->nsegs++;
    return KV_OK;
}

void store_segs_remove(kv_store *s, uint32_t id)
{
    store_seg *g = store_find_seg(s, id);
    if (!g)
        return;
    size_t i = (size_t)(g - s->segs);
    memmove(&s->segs[i], &s->segs[i + 1], (s->nsegs - i - 1) * sizeof(*g));
    s->nsegs--;
}

int store_pwrite_all(int fd, const void *p, size_t n, uint64_t off)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = pwrite(fd, b, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (w == 0) {
            errno = ENOSPC;
            return -1;
        }
        b += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

void store_seg_map(kv_store *s, store_seg *g, uint64_t len)
{
    (void)s;
    long pg = sysconf(_SC_PAGESIZE);
    size_t n = (size_t)((len + (uint64_t)pg - 1) / (uint64_t)pg * (uint64_t)pg);
    if (n == 0)
        return;
    void *p = mmap(NULL, n, PROT_READ, MAP_SHARED, g->fd, 0);
    if (p == MAP_FAILED)
        return; /* reads use pread */
    g->map = p;
    g->maplen = n;
}

void store_seg_unmap(store_seg *g)
{
    if (g->map)
        munmap(g->map, g->maplen);
    g->map = NULL;
    g->maplen = 0;
}

static int pread_all(int fd, void *p, size_t n, uint64_t off)
{
    uint8_t *b = p;
    while (n) {
        ssize_t r = pread(fd, b, n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return KV_EIO;
        }
        if (r == 0)
            return KV_ECORRUPT; /* the file is shorter than the index says */
        b += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return KV_OK;
}

static int fd_vec_reserve(fd_vec *v, size_t n)
{
    int *p = kv_grow(v->v, &v->cap, v->n + n, sizeof(*p), 4);
    if (!p)
        return KV_ENOMEM;
    v->v = p;
    return KV_OK;
}

static kv_version ent_version(const kv_store *s, const store_ent *e)
{
    return (kv_version){.ts = store_ent_ts(e), .node = store_index_node(&s->index, e->node_ix)};
}

bool store_ent_expired(const store_ent *st, uint64_t now_ms)
{
    return st->expiry_s && (uint64_t)st->expiry_s * 1000u <= now_ms;
}

/* ---------- accounting ---------- */

/* The anti-entropy digest of an entry's item (0: none — a purged tombstone). key: the
 * index entry's key bytes. */
static uint64_t merkle_digest(kv_store *s, const uint8_t *key, uint32_t klen, const store_ent *st)
{
    unsigned f = store_ent_flags(st);
    if (f & STORE_ENT_PURGED)
        return 0;
    kv_version v = {.ts = store_ent_ts(st), .node = store_index_node(&s->index, st->node_ix)};
    return kv_merkle_item_digest(key, klen, &v, (f & STORE_ENT_TOMB) != 0);
}

/* The tree follows an entry's item from old_d to new_d (0 = absent). */
static void merkle_move(kv_store *s, const uint8_t *key, uint32_t klen, uint64_t old_d,
                        uint64_t new_d)
{
    if (old_d != new_d)
        kv_merkle_update(s->merkle, kv_ring_hash(key, klen), old_d != 0, old_d, new_d != 0, new_d);
}

static void acct_counts(kv_store *s, const store_ent *st, int sign);

/* Every entry enters (+1) and leaves (-1) the index's accounting here (inserts, removals,
 * rollbacks, recovery) or in store_ent_assign (changes) — which is why the tree follows
 * these two. */
void store_acct(kv_store *s, const store_ent *st, int sign)
{
    if (s->merkle) {
        uint64_t d = merkle_digest(s, st->key, store_ent_klen(st), st);
        merkle_move(s, st->key, store_ent_klen(st), sign > 0 ? 0 : d, sign > 0 ? d : 0);
    }
    acct_counts(s, st, sign);
}

static void acct_counts(kv_store *s, const store_ent *st, int sign)
{
    unsigned f = store_ent_flags(st);
    if (!(f & (STORE_ENT_EXPIRED | STORE_ENT_PURGED))) {
        store_seg *g = store_find_seg(s, st->seg);
        if (g) {
            uint64_t len = store_ent_rec_len(st);
            if (sign > 0)
                g->live += len;
            else
                g->live -= len;
        }
    }
    if (!(f & (STORE_ENT_TOMB | STORE_ENT_EXPIRED | STORE_ENT_PURGED))) {
        uint64_t bytes = store_ent_klen(st) + (uint64_t)st->vlen;
        if (sign > 0) {
            s->st.keys++;
            s->st.live_bytes += bytes;
        } else {
            s->st.keys--;
            s->st.live_bytes -= bytes;
        }
    }
    if ((f & STORE_ENT_TOMB) && !(f & STORE_ENT_PURGED)) {
        if (sign > 0)
            s->st.tombstones++;
        else
            s->st.tombstones--;
    }
}

/* Give entry e the fixed fields of st (keeping its key length), with flags. */
void store_ent_assign(kv_store *s, store_ent *e, const store_ent *st, unsigned flags)
{
    /* One tree update for the change, none when only the location or a flag that does not
     * change the item moved (commits clear PENDING, compaction moves records). */
    const unsigned item_flags = STORE_ENT_TOMB | STORE_ENT_PURGED;
    bool changed = s->merkle && (store_ent_ts(e) != store_ent_ts(st) || e->node_ix != st->node_ix ||
                                 (store_ent_flags(e) & item_flags) != (flags & item_flags));
    uint64_t old_d = changed ? merkle_digest(s, e->key, store_ent_klen(e), e) : 0;
    acct_counts(s, e, -1);
    uint16_t kf = e->kf;
    *e = *st;
    e->kf = kf;
    store_ent_set_flags(e, flags);
    acct_counts(s, e, +1);
    if (changed)
        merkle_move(s, e->key, store_ent_klen(e), old_d,
                    merkle_digest(s, e->key, store_ent_klen(e), e));
}

/* Mark a committed entry's value expired (it stays in the index until compaction). */
static void ent_mark_expired(kv_store *s, store_ent *e)
{
    store_ent_assign(s, e, e, store_ent_flags(e) | STORE_ENT_EXPIRED);
}

/* ---------- pending map: entry ref -> state at the last commit point ---------- */

static size_t pend_home(uint32_t ref, size_t cap)
{
    return (size_t)(((uint64_t)ref * 0x9E3779B97F4A7C15ull) >> 32) & (cap - 1);
}

pend_item *store_pend_find(kv_store *s, uint32_t ref)
{
    if (!s->pend.cap)
        return NULL;
    size_t mask = s->pend.cap - 1;
    for (size_t i = pend_home(ref, s->pend.cap);; i = (i + 1) & mask) {
        if (s->pend.v[i].ref == ref)
            return &s->pend.v[i];
        if (s->pend.v[i].ref == 0)
            return NULL;
    }
}

/* Room for n more items (at most half full). */
static int pend_reserve(kv_store *s, size_t n)
{
    if ((s->pend.n + n) * 2 <= s->pend.cap)
        return KV_OK;
    size_t cap = s->pend.cap ? s->pend.cap : 64;
    while ((s->pend.n + n) * 2 > cap)
        cap *= 2;
    pend_item *v = calloc(cap, sizeof(*v));
    if (!v)
        return KV_ENOMEM;
    for (size_t i = 0; i < s->pend.cap; i++) {
        if (!s->pend.v[i].ref)
            continue;
        size_t j = pend_home(s->pend.v[i].ref, cap);
        while (v[j].ref)
            j = (j + 1) & (cap - 1);
        v[j] = s->pend.v[i];
    }
    free(s->pend.v);
    s->pend.v = v;
    s->pend.cap = cap;
    return KV_OK;
}

/* A new item for ref (not present; room reserved). */
static pend_item *pend_add(kv_store *s, uint32_t ref)
{
    size_t mask = s->pend.cap - 1;
    size_t i = pend_home(ref, s->pend.cap);
    while (s->pend.v[i].ref)
        i = (i + 1) & mask;
    s->pend.v[i].ref = ref;
    s->pend.n++;
    return &s->pend.v[i];
}

/* Remove an item (backward-shift deletion keeps probe chains intact). */
static void pend_remove(kv_store *s, pend_item *it)
{
    size_t mask = s->pend.cap - 1;
    size_t i = (size_t)(it - s->pend.v);
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (s->pend.v[j].ref == 0)
            break;
        size_t k = pend_home(s->pend.v[j].ref, s->pend.cap);
        /* Move j back into the hole at i unless its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            s->pend.v[i] = s->pend.v[j];
            i = j;
        }
    }
    s->pend.v[i].ref = 0;
    s->pend.n--;
}

/* Forget every item (after clearing what they stand for). Keeps the memory: a write
 * may have reserved room in it before flushing the buffer. */
static void pend_reset(kv_store *s)
{
    if (s->pend.n)
        memset(s->pend.v, 0, s->pend.cap * sizeof(*s->pend.v));
    s->pend.n = 0;
}

/* Give back the memory of a map a burst grew (idle only: no write is half-way). */
static void pend_shrink(kv_store *s)
{
    if (s->pend.n == 0 && s->pend.cap > 4096) {
        free(s->pend.v);
        s->pend.v = NULL;
        s->pend.cap = 0;
    }
}

/* ---------- the op ring ---------- */

static int ops_reserve(kv_store *s, size_t n)
{
    if (s->ops_n + n <= s->ops_cap)
        return KV_OK;
    size_t cap = s->ops_cap ? s->ops_cap * 2 : 256;
    while (cap < s->ops_n + n)
        cap *= 2;
    store_op *ops = malloc(cap * sizeof(*ops));
    store_opx *opx = s->mode == KV_SYNC_ALWAYS ? malloc(cap * sizeof(*opx)) : NULL;
    if (!ops || (s->mode == KV_SYNC_ALWAYS && !opx)) {
        free(ops);
        free(opx);
        return KV_ENOMEM;
    }
    /* Unwrap into the new arrays, oldest first. */
    for (size_t k = 0; k < s->ops_n; k++) {
        size_t from = (s->ops_head + k) & (s->ops_cap - 1);
        ops[k] = s->ops[from];
        if (opx)
            opx[k] = s->opx[from];
    }
    free(s->ops);
    free(s->opx);
    s->ops = ops;
    s->opx = opx;
    s->ops_cap = cap;
    s->ops_head = 0;
    return KV_OK;
}

static uint64_t seq_end(const kv_store *s)
{
    return s->seq_head + s->ops_n;
}

static size_t op_slot(const kv_store *s, uint64_t seq)
{
    return (s->ops_head + (size_t)(seq - s->seq_head)) & (s->ops_cap - 1);
}

/* Append an op (room reserved). Its opx, in ALWAYS mode, is zeroed. */
static store_op *op_push(kv_store *s, size_t *slot_out)
{
    size_t slot = (s->ops_head + s->ops_n) & (s->ops_cap - 1);
    s->ops_n++;
    if (s->opx)
        memset(&s->opx[slot], 0, sizeof(s->opx[slot]));
    if (slot_out)
        *slot_out = slot;
    return &s->ops[slot];
}

static void kick(kv_store *s)
{
    uv_idle_start(&s->idle, idle_cb);
}

void store_kick(kv_store *s)
{
    kick(s);
}

/* The sequence number below which ops are committed (their callbacks may run). */
static uint64_t commit_point(const kv_store *s)
{
    return s->mode == KV_SYNC_ALWAYS ? s->seq_synced : s->seq_flushed;
}

/* Run the callbacks of committed ops, oldest first. Only from the idle handle or the
 * fsync completion. A callback may write (the ring may move) or close the store. */
static void deliver(kv_store *s)
{
    while (s->ops_n && s->seq_head < commit_point(s)) {
        store_op op = s->ops[s->ops_head];
        s->ops_head = (s->ops_head + 1) & (s->ops_cap - 1);
        s->ops_n--;
        s->seq_head++;
        if (op.cb)
            op.cb(op.arg, op.status, &op.ver);
    }
}

/* ---------- commit and rollback ---------- */

/* NEVER/INTERVAL: everything written is committed. */
static void commit_flushed(kv_store *s)
{
    for (size_t i = 0; s->pend.n && i < s->pend.cap; i++) {
        pend_item *it = &s->pend.v[i];
        if (!it->ref)
            continue;
        store_ent *e = store_index_ent(&s->index, it->ref);
        store_ent_set_flags(e, store_ent_flags(e) & ~(unsigned)STORE_ENT_PENDING);
    }
    pend_reset(s);
    store_active(s)->pending = 0;
}

/* ALWAYS: ops with seq < upto are durable. */
static void commit_synced(kv_store *s, uint64_t upto)
{
    for (uint64_t q = s->seq_synced; q < upto; q++) {
        size_t slot = op_slot(s, q);
        const store_op *op = &s->ops[slot];
        const store_opx *x = &s->opx[slot];
        if (op->ref) {
            pend_item *it = store_pend_find(s, op->ref);
            assert(it && it->count > 0);
            if (--it->count == 0) {
                store_ent *e = store_index_ent(&s->index, op->ref);
                store_ent_set_flags(e, store_ent_flags(e) & ~(unsigned)STORE_ENT_PENDING);
                pend_remove(s, it);
            } else {
                it->absent = false;
                it->state = x->state;
            }
        }
        if (x->seg) {
            store_seg *g = store_find_seg(s, x->seg);
            if (g && g->pending)
                g->pending--;
        }
    }
    s->seq_synced = upto;
}

/* Cut segment g back to `to` bytes (failed writes). */
static void cut_segment(kv_store *s, store_seg *g, uint64_t to)
{
    if (g->size <= to)
        return;
    if (g->flushed > to) {
        if (ftruncate(g->fd, (off_t)to) != 0)
            kv_log_error("cannot cut failed writes off a segment", KV_UINT("segment", g->id),
                         KV_UINT("offset", to), KV_STR("reason", strerror(errno)));
        g->flushed = to;
        g->dirty = true;
        if (g->id != s->active_id)
            store_bg_queue_hint(s, g->id); /* a hint written for it no longer matches */
    }
    s->st.disk_bytes -= g->size - to;
    g->size = to;
}

/*
 * A write(2) or fsync failed: fail every uncommitted op (a suffix of the log) with
 * status, cut their records off the segments, discard the write buffer and restore every
 * entry they touched. Their callbacks run later (idle), never from here.
 */
static void fail_uncommitted(kv_store *s, int status)
{
    uint64_t from = commit_point(s), end = seq_end(s);

    /* 1. The log: everything from the first failed record on goes. */
    store_seg *a = store_active(s);
    uint32_t cut_seg = a->id;
    uint64_t cut_off = a->flushed;
    if (s->mode == KV_SYNC_ALWAYS) {
        for (uint64_t q = from; q < end; q++) {
            const store_opx *x = &s->opx[op_slot(s, q)];
            if (x->seg) {
                cut_seg = x->seg;
                cut_off = x->off;
                break;
            }
        }
    }
    s->wlen = 0;
    for (size_t i = 0; i < s->nsegs; i++) {
        store_seg *g = &s->segs[i];
        if (g->compacted && g->id != cut_seg)
            continue; /* compaction output: not part of the write log */
        if (g->id == cut_seg)
            cut_segment(s, g, cut_off);
        else if (g->id > cut_seg)
            cut_segment(s, g, STORE_SEG_HDR_LEN);
        g->pending = 0;
    }

    /* 2. The index: every touched entry back to its committed state. */
    for (size_t i = 0; s->pend.n && i < s->pend.cap; i++) {
        pend_item *it = &s->pend.v[i];
        if (!it->ref)
            continue;
        store_ent *e = store_index_ent(&s->index, it->ref);
        if (it->absent) {
            store_acct(s, e, -1);
            store_index_remove(&s->index, it->ref);
        } else {
            store_ent_assign(s, e, &it->state,
                             store_ent_flags(&it->state) & ~(unsigned)STORE_ENT_PENDING);
        }
    }
    pend_reset(s);

    /* 3. The ops: all fail, and are ready to be told so. */
    for (uint64_t q = from; q < end; q++) {
        store_op *op = &s->ops[op_slot(s, q)];
        if (op->ref)
            s->st.write_errors++;
        op->status = status;
        op->ref = 0;
    }
    s->seq_flushed = s->seq_synced = end;
    if (s->mode == KV_SYNC_ALWAYS && s->sync_running)
        s->sync.stale = true;
    kick(s);
}

/* Write the buffer with one pwrite(2). On failure everything uncommitted fails. */
static int flush_buffer(kv_store *s)
{
    if (s->wlen) {
        store_seg *a = store_active(s);
        if (store_pwrite_all(a->fd, s->wbuf, s->wlen, a->flushed) != 0) {
            int e = errno;
            int rc = store_errno_to_kv(e);
            /* A partial write would break the log: cut back to where it started. */
            if (ftruncate(a->fd, (off_t)a->flushed) != 0)
                kv_log_error("cannot cut back a failed write", KV_UINT("segment", a->id),
                             KV_UINT("offset", a->flushed), KV_STR("reason", strerror(errno)));
            if (!s->write_failing)
                kv_log_error("segment write failed", KV_UINT("segment", a->id),
                             KV_STR("reason", strerror(e)), KV_ERR(rc));
            s->write_failing = true;
            fail_uncommitted(s, rc);
            return rc;
        }
        if (s->write_failing) {
            kv_log_info("segment writes succeed again", KV_UINT("segment", a->id));
            s->write_failing = false;
        }
        a->flushed += s->wlen;
        a->dirty = true;
        s->wlen = 0;
    }
    s->seq_flushed = seq_end(s);
    if (s->mode != KV_SYNC_ALWAYS)
        commit_flushed(s);
    return KV_OK;
}

/* ---------- durability: fsync on the threadpool ---------- */

static bool needs_sync(kv_store *s)
{
    if (s->rotated.n || s->dir_dirty || store_active(s)->dirty)
        return true;
    for (size_t i = 0; s->closing && i < s->nsegs; i++)
        if (s->segs[i].dirty)
            return true;
    return false;
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

static void sync_after(uv_work_t *req, int status)
{
    kv_store *s = ((store_sync *)req->data)->owner;
    int err = status == 0 ? s->sync.err : EIO;
    s->sync_running = false;
    for (size_t i = 0; i < s->sync.owned; i++)
        close(s->sync.fds.v[i]);
    s->sync.fds.n = 0;
    s->sync.owned = 0;
    s->sync.inject_err = 0;
    s->st.fsyncs++;

    if (s->sync.stale) {
        s->sync.stale = false; /* its writes already failed */
    } else if (err != 0) {
        s->st.sync_errors++;
        kv_log_error(
            "fsync of store files failed", KV_STR("reason", strerror(err)),
            KV_UINT("writes_failed", s->mode == KV_SYNC_ALWAYS ? seq_end(s) - s->seq_synced : 0));
        if (s->mode == KV_SYNC_ALWAYS)
            fail_uncommitted(s, store_errno_to_kv(err)); /* ENOSPC at writeback: 507 */
    } else if (s->mode == KV_SYNC_ALWAYS) {
        commit_synced(s, s->sync.covered);
    }
    deliver(s);
    if (s->mode == KV_SYNC_ALWAYS && (s->seq_flushed > s->seq_synced || s->wlen))
        kick(s);
    if (s->closing)
        kick(s);
    store_bg_kick(s);
}

/* Start an fsync of everything written so far. Loop thread; no fsync may be running. */
static void start_sync(kv_store *s)
{
    assert(!s->sync_running);
    store_seg *a = store_active(s);
    /* Swap vectors: the rotated list (dups the sync closes) becomes the worker's list;
     * seg_rotate keeps a spare slot for the active segment's fd. */
    fd_vec tmp = s->sync.fds;
    s->sync.fds = s->rotated;
    tmp.n = 0;
    s->rotated = tmp;
    s->sync.owned = s->sync.fds.n;
    if (s->closing) {
        /* The final fsync also covers sealed segments nobody synced yet (NEVER mode). */
        for (size_t i = 0; i < s->nsegs; i++) {
            store_seg *g = &s->segs[i];
            if (g == a || !g->dirty)
                continue;
            if (fd_vec_reserve(&s->sync.fds, 2) != KV_OK)
                break;
            s->sync.fds.v[s->sync.fds.n++] = g->fd;
            g->dirty = false;
        }
    }
    if (a->dirty) {
        if (s->sync.fds.n == s->sync.fds.cap && fd_vec_reserve(&s->sync.fds, 1) != KV_OK) {
            /* Cannot grow a tiny vector: sync the active segment right here instead. */
            if (fdatasync(a->fd) != 0)
                s->sync.inject_err = errno;
        } else {
            s->sync.fds.v[s->sync.fds.n++] = a->fd;
        }
        a->dirty = false;
    }
    s->sync.dirfd = s->dir_dirty ? s->dirfd : -1;
    s->dir_dirty = false;
    if (!s->sync.inject_err)
        s->sync.inject_err = s->inject_sync_err;
    s->inject_sync_err = 0;
    s->sync.covered = s->seq_flushed;
    s->sync.stale = false;
    s->sync_running = true;
    s->sync.req.data = &s->sync;
    s->sync.owner = s;
    int rc = uv_queue_work(s->loop, &s->sync.req, sync_work, sync_after);
    assert(rc == 0);
    (void)rc;
}

static void timer_cb(uv_timer_t *h)
{
    kv_store *s = h->data;
    if (!s->sync_running && needs_sync(s))
        start_sync(s);
}

/* ---------- segments ---------- */

/* Create segment id with its header; not fsync'ed (the caller marks it dirty). Logs only
 * the first failure of a streak of write errors (a full disk fails every rotation). */
int store_seg_create(kv_store *s, uint32_t id, store_seg *out)
{
    char name[PATH_MAX];
    store_seg_name(name, sizeof(name), s->path, id, ".seg");
    int fd = open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        if (!s->write_failing)
            kv_log_error("cannot create segment", KV_STR("path", name),
                         KV_STR("reason", strerror(e)));
        return store_errno_to_kv(e);
    }
    uint8_t hdr[STORE_SEG_HDR_LEN];
    store_seg_hdr_encode(hdr, &(store_seg_hdr){.id = id, .created_ms = store_wall_ms()});
    if (store_pwrite_all(fd, hdr, sizeof(hdr), 0) != 0) {
        int e = errno;
        if (!s->write_failing)
            kv_log_error("cannot write segment header", KV_STR("path", name),
                         KV_STR("reason", strerror(e)));
        close(fd);
        unlink(name);
        return store_errno_to_kv(e);
    }
    *out = (store_seg){
        .id = id, .fd = fd, .size = STORE_SEG_HDR_LEN, .flushed = STORE_SEG_HDR_LEN, .dirty = true};
    /* Mapped to its full future size: the file grows into the mapping. */
    store_seg_map(s, out, s->seg_bytes);
    return KV_OK;
}

/* Start a new active segment (store_open uses it too). The buffer is written first; the
 * old segment, if written since its last fsync, is queued for the next fsync (as a dup,
 * so that compaction may close the segment meanwhile); the directory needs one too. The
 * sealed segment gets a hint file in the background. */
int store_rotate(kv_store *s)
{
    int rc = flush_buffer(s);
    if (rc != KV_OK)
        return rc;
    rc = segs_reserve(s, 1);
    if (rc == KV_OK)
        rc = fd_vec_reserve(&s->rotated, 2); /* +1 so start_sync can add the active fd */
    if (rc != KV_OK)
        return rc;
    if (s->next_id == UINT32_MAX)
        return KV_EIO;
    store_seg seg;
    rc = store_seg_create(s, s->next_id, &seg);
    if (rc != KV_OK) {
        s->st.write_errors++;
        s->write_failing = true;
        return rc;
    }
    s->next_id++;
    store_seg *old = store_active(s);
    uint32_t old_id = old->id;
    /* NEVER: a sealed segment stays dirty; its hint job or the final fsync at close
     * syncs it. Otherwise the next fsync round must cover its tail. */
    if (old->dirty && s->mode != KV_SYNC_NEVER) {
        int dfd = dup(old->fd);
        if (dfd >= 0)
            s->rotated.v[s->rotated.n++] = dfd;
        else if (fdatasync(old->fd) != 0)
            kv_log_error("cannot sync a rotated segment", KV_UINT("segment", old_id),
                         KV_STR("reason", strerror(errno)));
        old->dirty = false;
    }
    rc = store_segs_insert(s, &seg); /* cannot fail: reserved */
    assert(rc == KV_OK);
    s->active_id = seg.id;
    s->dir_dirty = true;
    s->st.disk_bytes += STORE_SEG_HDR_LEN;
    store_bg_queue_hint(s, old_id);
    return KV_OK;
}

/* ---------- writes ---------- */

static int wbuf_reserve(kv_store *s, size_t n)
{
    uint8_t *p = kv_grow(s->wbuf, &s->wcap, n, 1, STORE_WBUF_BYTES);
    if (!p)
        return KV_ENOMEM;
    s->wbuf = p;
    return KV_OK;
}

/* Put a record into the write buffer of the active segment (rotating and flushing as
 * needed). Returns where it will live. */
static int append_record(kv_store *s, const uint8_t *hdr, const void *key, size_t klen,
                         const void *val, size_t vlen, uint32_t *seg_id, uint64_t *off)
{
    size_t len = STORE_REC_HDR_LEN + klen + vlen;
    store_seg *a = store_active(s);
    if (a->size > STORE_SEG_HDR_LEN && a->size + len > s->seg_bytes) {
        int rc = store_rotate(s);
        if (rc != KV_OK)
            return rc;
        a = store_active(s);
    }
    if (s->wlen + len > s->wcap) {
        int rc = flush_buffer(s);
        if (rc != KV_OK)
            return rc;
        rc = wbuf_reserve(s, len);
        if (rc != KV_OK)
            return rc;
        a = store_active(s);
    }
    uint8_t *p = s->wbuf + s->wlen;
    memcpy(p, hdr, STORE_REC_HDR_LEN);
    memcpy(p + STORE_REC_HDR_LEN, key, klen);
    if (vlen)
        memcpy(p + STORE_REC_HDR_LEN + klen, val, vlen);
    *seg_id = a->id;
    *off = a->size;
    a->size += len;
    s->wlen += len;
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
    if (ops_reserve(s, 1) != KV_OK)
        return KV_ENOMEM;

    uint64_t now = store_wall_ms();
    uint64_t hash = store_index_hash(&s->index, key, klen);
    uint32_t ref = store_index_find(&s->index, hash, key, klen);
    if (given && kv_hlc_ahead_ms(given, now) > KV_HLC_MAX_AHEAD_MS) {
        s->st.applies_refused++;
        kv_log_warn("conditional write refused: its version is too far in the future",
                    KV_UINT("version_ts", given->ts), KV_UINT("version_node", given->node),
                    KV_UINT("ahead_ms", kv_hlc_ahead_ms(given, now)));
        return KV_EINVAL;
    }
    if (!given && kv_hlc_exhausted(&s->clock, now)) {
        /* A stored version carries the largest timestamp there is: any version assigned
         * now would lose to it, so the write would be acknowledged and then vanish. */
        s->st.write_errors++;
        kv_log_error("write refused: the version clock is exhausted by a stored version "
                     "at the maximum timestamp");
        return KV_EIO;
    }
    if (given) {
        kv_hlc_observe(&s->clock, given, now);
        if (ref) {
            kv_version cur = ent_version(s, store_index_ent(&s->index, ref));
            if (kv_version_cmp(given, &cur) <= 0) {
                store_op *op = op_push(s, NULL);
                *op = (store_op){.cb = cb, .arg = arg, .ver = cur, .status = KV_ESTALE};
                s->st.applies_stale++;
                kick(s);
                return KV_OK;
            }
        }
    }
    kv_version ver = given ? *given : kv_hlc_now(&s->clock, now);
    uint16_t node_ix;
    if (store_index_node_ix(&s->index, ver.node, &node_ix) != KV_OK)
        return KV_ENOMEM;

    /* LZ4 only when it saves space; the reader goes by the record's flag. */
    const void *sval = val;
    size_t svlen = type == STORE_REC_PUT ? vlen : 0;
    uint8_t rflags = 0;
    if (type == STORE_REC_PUT && vlen >= s->compress_min && vlen > 0) {
        size_t bound = (size_t)LZ4_compressBound((int)vlen);
        if (bound > s->zcap) {
            uint8_t *z = realloc(s->zbuf, bound);
            if (z) {
                s->zbuf = z;
                s->zcap = bound;
            }
        }
        if (bound <= s->zcap) {
            int c = LZ4_compress_default(val, (char *)s->zbuf, (int)vlen, (int)s->zcap);
            if (c > 0 && (size_t)c < vlen) {
                sval = s->zbuf;
                svlen = (size_t)c;
                rflags = STORE_REC_F_LZ4;
            }
        }
    }
    /* Take every allocation the index update needs before writing, so that once the
     * record is in the log nothing can keep it from becoming visible. */
    if (!ref && store_index_reserve(&s->index, 1, klen) != KV_OK)
        return KV_ENOMEM;
    if (pend_reserve(s, 1) != KV_OK)
        return KV_ENOMEM;

    store_rec_hdr h = {
        .type = type,
        .flags = rflags,
        .klen = (uint16_t)klen,
        .vlen = (uint32_t)svlen,
        .raw_vlen = type == STORE_REC_PUT ? (uint32_t)vlen : 0,
        .ts = ver.ts,
        .node = ver.node,
        .expiry = type == STORE_REC_PUT ? expiry_ms : 0,
    };
    uint8_t hdr[STORE_REC_HDR_LEN];
    store_rec_encode(hdr, &h, key, sval);
    uint32_t seg_id;
    uint64_t off;
    int rc = append_record(s, hdr, key, klen, sval, svlen, &seg_id, &off);
    if (rc != KV_OK)
        return rc;
    /* append_record may have failed and rolled back earlier writes (a full buffer that
     * could not be written): the key may be gone from the index since we looked. */
    ref = store_index_find(&s->index, hash, key, klen);

    store_ent ns = {.seg = seg_id,
                    .off = (uint32_t)off,
                    .vlen = (uint32_t)svlen,
                    .expiry_s = store_expiry_s(h.expiry),
                    .node_ix = node_ix};
    store_ent_set_ts(&ns, ver.ts);
    unsigned flags = type == STORE_REC_TOMBSTONE ? STORE_ENT_TOMB : 0;
    if (h.expiry && h.expiry <= now)
        flags |= STORE_ENT_EXPIRED;
    if (ref) {
        store_ent *e = store_index_ent(&s->index, ref);
        pend_item *it;
        if (store_ent_flags(e) & STORE_ENT_PENDING) {
            it = store_pend_find(s, ref);
        } else {
            it = pend_add(s, ref);
            it->absent = false;
            it->count = 0;
            it->state = *e;
        }
        it->count++;
        store_ent_assign(s, e, &ns, flags | STORE_ENT_PENDING);
    } else {
        store_ent_set_flags(&ns, flags | STORE_ENT_PENDING);
        ref = store_index_insert(&s->index, hash, key, klen, &ns);
        assert(ref); /* room was reserved */
        store_acct(s, store_index_ent(&s->index, ref), +1);
        pend_item *it = pend_add(s, ref);
        it->absent = true;
        it->count = 1;
    }
    store_seg *g = store_find_seg(s, seg_id);
    g->pending++;
    if (type == STORE_REC_PUT)
        s->st.puts++;
    else
        s->st.deletes++;
    if (rflags)
        s->st.compressed_puts++;

    size_t slot;
    store_op *op = op_push(s, &slot);
    *op = (store_op){.cb = cb, .arg = arg, .ver = ver, .status = KV_OK, .ref = ref};
    if (s->opx) {
        store_opx *x = &s->opx[slot];
        x->seg = seg_id;
        x->off = (uint32_t)off;
        x->state = ns;
        x->state.kf = store_index_ent(&s->index, ref)->kf;
        store_ent_set_flags(&x->state, flags);
    }
    kick(s);
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

/* ---------- reads ---------- */

static int rbuf_reserve(kv_store *s, size_t n)
{
    uint8_t *p = kv_grow(s->rbuf, &s->rcap, n, 1, 4096);
    if (!p)
        return KV_ENOMEM;
    s->rbuf = p;
    return KV_OK;
}

/*
 * The state a reader sees for entry ref: the newest one, or under ALWAYS the committed
 * one. Returns false if there is none (a key whose only writes are not yet durable).
 */
static bool visible_state(kv_store *s, uint32_t ref, store_ent *out)
{
    const store_ent *e = store_index_ent(&s->index, ref);
    if (s->mode == KV_SYNC_ALWAYS && (store_ent_flags(e) & STORE_ENT_PENDING)) {
        const pend_item *it = store_pend_find(s, ref);
        assert(it);
        if (it->absent)
            return false;
        *out = it->state;
        return true;
    }
    *out = *e;
    return true;
}

/*
 * The len bytes of segment g at off, for reading: from the write buffer if not written
 * yet, from the segment's mapping (no system call: they cost microseconds on some
 * virtual machines), else read into the scratch buffer. *rc is KV_OK, KV_ECORRUPT (the
 * segment is shorter than that) or KV_EIO/KV_ENOMEM; NULL unless KV_OK. The pointer is
 * valid until the next write or read.
 */
static const uint8_t *seg_bytes(kv_store *s, store_seg *g, uint64_t off, size_t len, int *rc)
{
    *rc = KV_OK;
    if (g->id == s->active_id && off >= g->flushed) {
        if (off + len > g->flushed + s->wlen) {
            *rc = KV_ECORRUPT;
            return NULL;
        }
        return s->wbuf + (off - g->flushed);
    }
    if (off + len > g->flushed) {
        *rc = KV_ECORRUPT;
        return NULL;
    }
    if (g->map && off + len <= g->maplen)
        return g->map + off;
    *rc = rbuf_reserve(s, len);
    if (*rc == KV_OK)
        *rc = pread_all(g->fd, s->rbuf, len, off);
    return *rc == KV_OK ? s->rbuf : NULL;
}

static int read_corrupt(kv_store *s, uint32_t seg, uint64_t off, const char *why)
{
    kv_log_error("corrupt record on read", KV_UINT("segment", seg), KV_UINT("offset", off),
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
    uint64_t hash = store_index_hash(&s->index, key, klen);
    uint32_t ref = store_index_find(&s->index, hash, key, klen);
    store_ent st;
    if (!ref || !visible_state(s, ref, &st))
        return KV_ENOTFOUND;
    unsigned f = store_ent_flags(&st);
    if (f & (STORE_ENT_TOMB | STORE_ENT_EXPIRED | STORE_ENT_PURGED))
        return KV_ENOTFOUND;
    if (st.expiry_s && store_ent_expired(&st, store_wall_ms())) {
        store_ent *e = store_index_ent(&s->index, ref);
        if (!(store_ent_flags(e) & STORE_ENT_PENDING))
            ent_mark_expired(s, e);
        return KV_ENOTFOUND;
    }
    store_seg *g = store_find_seg(s, st.seg);
    if (!g) {
        kv_log_error("index names a missing segment", KV_UINT("segment", st.seg));
        return KV_EIO;
    }
    size_t len = STORE_REC_HDR_LEN + klen + st.vlen;
    int rc;
    const uint8_t *rec = seg_bytes(s, g, st.off, len, &rc);
    if (rc == KV_ECORRUPT)
        return read_corrupt(s, g->id, st.off, "segment shorter than the index says");
    if (rc != KV_OK) {
        kv_log_error("segment read failed", KV_UINT("segment", g->id), KV_UINT("offset", st.off),
                     KV_STR("reason", strerror(errno)));
        return rc;
    }
    /* Ask for every cache line of the record at once: their misses overlap. */
    for (size_t o = 64; o < len && o < 512; o += 64)
        __builtin_prefetch(rec + o);
    store_rec_hdr h;
    store_rec_hdr_decode(rec, &h);
    if (!store_rec_hdr_plausible(&h, rec) || h.klen != klen || h.vlen != st.vlen ||
        h.type != STORE_REC_PUT || h.ts != store_ent_ts(&st) ||
        h.node != store_index_node(&s->index, st.node_ix))
        return read_corrupt(s, g->id, st.off, "header does not match the index");
    const uint8_t *rkey = rec + STORE_REC_HDR_LEN;
    const uint8_t *rval = rkey + klen;
    if (store_rec_crc(rec, rkey, klen, rval, h.vlen) != h.crc)
        return read_corrupt(s, g->id, st.off, "crc mismatch");
    if (memcmp(rkey, key, klen) != 0)
        return read_corrupt(s, g->id, st.off, "key does not match the index");
    /* The index keeps expiry in whole seconds; the record has the exact millisecond. */
    if (h.expiry && h.expiry <= store_wall_ms())
        return KV_ENOTFOUND;

    kv_buf_reset(val);
    rc = kv_buf_reserve(val, h.raw_vlen);
    if (rc != KV_OK)
        return rc;
    if (h.flags & STORE_REC_F_LZ4) {
        int n = LZ4_decompress_safe((const char *)rval, val->data, (int)h.vlen, (int)h.raw_vlen);
        if (n < 0 || (uint32_t)n != h.raw_vlen) {
            val->len = 0;
            return read_corrupt(s, g->id, st.off, "lz4 block does not decode");
        }
    } else if (h.vlen) {
        memcpy(val->data, rval, h.vlen);
    }
    val->len = h.raw_vlen;
    val->data[val->len] = '\0';
    if (ver) {
        ver->ts = h.ts;
        ver->node = h.node;
    }
    return KV_OK;
}

int store_get_meta(kv_store *s, const void *key, size_t klen, kv_store_meta *meta)
{
    if (!s || !meta || !key || klen == 0)
        return KV_EINVAL;
    if (klen > s->max_key)
        return KV_ETOOBIG;
    uint64_t hash = store_index_hash(&s->index, key, klen);
    uint32_t ref = store_index_find(&s->index, hash, key, klen);
    store_ent st;
    if (!ref || !visible_state(s, ref, &st))
        return KV_ENOTFOUND;
    unsigned f = store_ent_flags(&st);
    if (f & STORE_ENT_PURGED)
        return KV_ENOTFOUND;
    uint64_t now = store_wall_ms();
    uint64_t expiry = 0;
    bool expired = (f & STORE_ENT_EXPIRED) != 0;
    if (st.expiry_s) {
        /* The exact expiry is in the record header; read it (40 bytes). */
        store_seg *g = store_find_seg(s, st.seg);
        store_rec_hdr h = {0};
        int rc = KV_EIO;
        const uint8_t *hb = g ? seg_bytes(s, g, st.off, STORE_REC_HDR_LEN, &rc) : NULL;
        if (hb)
            store_rec_hdr_decode(hb, &h);
        if (rc == KV_OK && h.ts == store_ent_ts(&st)) {
            expiry = h.expiry;
            expired = expired || (h.expiry && h.expiry <= now);
        } else {
            expiry = (uint64_t)st.expiry_s * 1000u;
            expired = expired || store_ent_expired(&st, now);
        }
    }
    *meta = (kv_store_meta){
        .ver = {.ts = store_ent_ts(&st), .node = store_index_node(&s->index, st.node_ix)},
        .expiry_ms = expiry,
        .vlen = st.vlen,
        .tombstone = (f & STORE_ENT_TOMB) != 0,
        .expired = expired,
    };
    return KV_OK;
}

int store_purge(kv_store *s, const void *key, size_t klen, const kv_version *upto)
{
    if (!s || !upto || !key || klen == 0)
        return KV_EINVAL;
    if (klen > s->max_key)
        return KV_ETOOBIG;
    uint64_t hash = store_index_hash(&s->index, key, klen);
    uint32_t ref = store_index_find(&s->index, hash, key, klen);
    if (!ref)
        return KV_ENOTFOUND;
    store_ent *e = store_index_ent(&s->index, ref);
    unsigned f = store_ent_flags(e);
    if (f & STORE_ENT_PURGED)
        return KV_ENOTFOUND;
    if ((f & STORE_ENT_PENDING) || !(f & STORE_ENT_TOMB))
        return KV_EEXIST;
    kv_version v = ent_version(s, e);
    if (kv_version_cmp(&v, upto) > 0)
        return KV_EEXIST;
    store_ent_assign(s, e, e, f | STORE_ENT_PURGED);
    s->st.purges++;
    return KV_OK;
}

/* ---------- range enumeration ---------- */

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
    if (cur->done)
        return KV_OK;
    if (max_visit == 0)
        max_visit = 4096;
    uint64_t pos = cur->pos;
    uint64_t now = store_wall_ms();
    uint64_t t_end = uv_hrtime() + STORE_CHUNK_NS;
    for (size_t n = 0; n < max_visit; n++) {
        if ((n & 255) == 255 && uv_hrtime() >= t_end)
            break;
        uint32_t ref = store_index_next(&s->index, &pos);
        if (!ref) {
            cur->done = true;
            break;
        }
        store_ent st;
        if (!visible_state(s, ref, &st) || (store_ent_flags(&st) & STORE_ENT_PURGED))
            continue;
        const store_ent *e = store_index_ent(&s->index, ref);
        size_t klen = store_ent_klen(e);
        uint64_t h = kv_ring_hash(e->key, klen);
        if (!hash_in_range(h, lo, hi))
            continue;
        unsigned f = store_ent_flags(&st);
        kv_store_item it = {
            .key = e->key,
            .klen = klen,
            .hash = h,
            .ver = {.ts = store_ent_ts(&st), .node = store_index_node(&s->index, st.node_ix)},
            .expiry_ms = (uint64_t)st.expiry_s * 1000u,
            .tombstone = (f & STORE_ENT_TOMB) != 0,
            .expired = (f & STORE_ENT_EXPIRED) || store_ent_expired(&st, now),
        };
        if (!fn(arg, &it))
            break;
    }
    cur->pos = pos;
    return KV_OK;
}

/* ---------- maintenance: expiry sweep, compaction trigger ---------- */

static void maint_cb(uv_timer_t *h)
{
    kv_store *s = h->data;
    if (s->closing)
        return;
    /* Expired values are found lazily by reads; this sweep finds the rest, a bounded
     * slice per tick, so their bytes count as garbage for compaction. */
    uint64_t now = store_wall_ms();
    uint64_t pos = s->sweep_pos;
    for (int n = 0; n < STORE_SWEEP_PER_TICK; n++) {
        uint32_t ref = store_index_next(&s->index, &pos);
        if (!ref) {
            pos = 0;
            break;
        }
        store_ent *e = store_index_ent(&s->index, ref);
        unsigned f = store_ent_flags(e);
        if (!(f & (STORE_ENT_PENDING | STORE_ENT_EXPIRED | STORE_ENT_TOMB)) &&
            store_ent_expired(e, now))
            ent_mark_expired(s, e);
    }
    s->sweep_pos = pos;
    store_maybe_compact(s);
}

/* ---------- stats ---------- */

const struct kv_merkle *store_merkle(const kv_store *s)
{
    return s->merkle;
}

void store_stats(const kv_store *s, kv_store_stats *out)
{
    *out = s->st;
    uint64_t dead = 0;
    for (size_t i = 0; i < s->nsegs; i++) {
        const store_seg *g = &s->segs[i];
        uint64_t used = g->size > STORE_SEG_HDR_LEN ? g->size - STORE_SEG_HDR_LEN : 0;
        dead += used > g->live ? used - g->live : 0;
    }
    out->dead_bytes = dead;
    out->segments = s->nsegs;
    out->entries = s->index.count;
    out->index_bytes = store_index_bytes(&s->index) + s->pend.cap * sizeof(pend_item);
}

/* ---------- open / close ---------- */

static void free_store(kv_store *s)
{
    store_bg_free(s);
    for (size_t i = 0; i < s->nsegs; i++) {
        store_seg_unmap(&s->segs[i]);
        if (s->segs[i].fd >= 0)
            close(s->segs[i].fd);
    }
    for (size_t i = 0; i < s->rotated.n; i++)
        close(s->rotated.v[i]);
    if (s->dirfd >= 0)
        close(s->dirfd);
    store_index_fini(&s->index);
    kv_merkle_free(s->merkle);
    free(s->segs);
    free(s->rotated.v);
    free(s->sync.fds.v);
    free(s->ops);
    free(s->opx);
    free(s->pend.v);
    free(s->wbuf);
    free(s->zbuf);
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
    s->max_key = opts->max_key < STORE_ENT_KEY_MAX ? opts->max_key : STORE_ENT_KEY_MAX;
    s->max_value = opts->max_value < STORE_VALUE_MAX_HARD ? opts->max_value : STORE_VALUE_MAX_HARD;
    s->seg_bytes = opts->segment_bytes ? opts->segment_bytes : STORE_DEFAULT_SEGMENT_BYTES;
    if (s->seg_bytes > (3ull << 30))
        s->seg_bytes = 3ull << 30; /* record offsets are 32-bit */
    s->interval_ms = opts->sync_interval_ms ? opts->sync_interval_ms : STORE_DEFAULT_INTERVAL_MS;
    s->compress_min =
        opts->compression_threshold ? opts->compression_threshold : STORE_DEFAULT_COMPRESS;
    s->dead_ratio =
        opts->compaction_dead_ratio > 0 ? opts->compaction_dead_ratio : STORE_DEFAULT_DEAD_RATIO;
    s->compact_min_bytes =
        opts->compaction_min_bytes ? opts->compaction_min_bytes : STORE_DEFAULT_MIN_BYTES;
    kv_hlc_init(&s->clock, s->node_id);

    uint64_t seed;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed))
        seed = uv_hrtime() ^ ((uint64_t)getpid() << 32);
    store_index_init(&s->index, seed);
    if (opts->merkle_depth) {
        s->merkle = kv_merkle_new(opts->merkle_depth);
        if (!s->merkle) {
            free_store(s);
            return opts->merkle_depth > KV_MERKLE_MAX_DEPTH ? KV_EINVAL : KV_ENOMEM;
        }
    }

    int rc = KV_OK;
    size_t plen = strlen(opts->dir) + sizeof("/store");
    s->path = malloc(plen);
    if (!s->path || fd_vec_reserve(&s->rotated, 2) != KV_OK ||
        fd_vec_reserve(&s->sync.fds, 2) != KV_OK || wbuf_reserve(s, STORE_WBUF_BYTES) != KV_OK ||
        ops_reserve(s, 1) != KV_OK) {
        rc = KV_ENOMEM;
        goto fail;
    }
    snprintf(s->path, plen, "%s/store", opts->dir);
    rc = store_recover(s);
    if (rc != KV_OK)
        goto fail;

    /* Nothing below can fail: from here on the store owns libuv handles and can only
     * be released through store_close. */
    uv_idle_init(loop, &s->idle);
    uv_idle_init(loop, &s->bg_idle);
    uv_timer_init(loop, &s->timer);
    uv_timer_init(loop, &s->maint);
    s->idle.data = s->bg_idle.data = s->timer.data = s->maint.data = s;
    s->handles_open = 4;
    if (s->mode == KV_SYNC_INTERVAL) {
        uv_timer_start(&s->timer, timer_cb, s->interval_ms, s->interval_ms);
        /* A background flush alone must not keep the loop running. */
        uv_unref((uv_handle_t *)&s->timer);
    }
    uv_timer_start(&s->maint, maint_cb, STORE_MAINT_MS, STORE_MAINT_MS);
    uv_unref((uv_handle_t *)&s->maint);
    *out = s;
    store_bg_kick(s); /* hint files for segments that lack them */
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

/* Drive the close: write the buffer, deliver completions, finish fsyncs (one final one in
 * every mode) and background jobs, then release handles. Runs from the idle handle,
 * never inside store_close. */
static void close_step(kv_store *s)
{
    if (s->tearing_down)
        return;
    if (s->wlen || s->seq_flushed < seq_end(s))
        flush_buffer(s);
    deliver(s);
    if (s->ops_n && s->mode != KV_SYNC_ALWAYS)
        return; /* more callbacks to run on the next iteration */
    if (s->sync_running || store_bg_busy(s)) {
        uv_idle_stop(&s->idle); /* their completions kick the idle handle again */
        return;
    }
    if (needs_sync(s) || s->ops_n) {
        uv_idle_stop(&s->idle);
        start_sync(s);
        return;
    }
    if (s->hintq_n) {
        store_bg_kick(s);
        if (store_bg_busy(s)) {
            uv_idle_stop(&s->idle);
            return;
        }
    }
    if (!s->close_hinted) {
        /* Everything is durable: a hint for the active segment makes the next open load
         * it without a scan (open removes it before appending). */
        s->close_hinted = true;
        if (store_bg_hint_now(s, s->active_id)) {
            uv_idle_stop(&s->idle);
            return;
        }
    }
    s->tearing_down = true;
    uv_idle_stop(&s->idle);
    uv_idle_stop(&s->bg_idle);
    uv_timer_stop(&s->timer);
    uv_timer_stop(&s->maint);
    uv_close((uv_handle_t *)&s->idle, handle_closed);
    uv_close((uv_handle_t *)&s->bg_idle, handle_closed);
    uv_close((uv_handle_t *)&s->timer, handle_closed);
    uv_close((uv_handle_t *)&s->maint, handle_closed);
}

static void idle_cb(uv_idle_t *h)
{
    kv_store *s = h->data;
    if (s->wlen || s->seq_flushed < seq_end(s))
        flush_buffer(s);
    if (s->mode == KV_SYNC_ALWAYS && !s->sync_running && s->seq_flushed > s->seq_synced) {
        if (needs_sync(s))
            start_sync(s);
        else
            commit_synced(s, s->seq_flushed); /* e.g. only refused applies: nothing to sync */
    }
    deliver(s);
    if (s->closing) {
        close_step(s);
        return;
    }
    if (!s->wlen && s->seq_flushed == seq_end(s) && s->seq_head == commit_point(s)) {
        pend_shrink(s);
        uv_idle_stop(&s->idle);
    }
}

void store_close(kv_store *s, void (*done)(void *arg), void *arg)
{
    assert(s && !s->closing);
    s->closing = true;
    s->close_done = done;
    s->close_arg = arg;
    uv_timer_stop(&s->timer);
    uv_timer_stop(&s->maint);
    store_bg_close(s);
    kick(s);
}

void store_debug_fail_next_sync(kv_store *s, int err)
{
    s->inject_sync_err = err;
}
