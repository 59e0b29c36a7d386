/*
 * compact.c — the storage engine's background work: a hint file for every sealed
 * segment, and compaction. One job at a time; the blocking parts (reading segments,
 * writing and fsyncing files, unlinking) run on the libuv threadpool, the parts that
 * touch the index run on the loop thread in slices of about a millisecond (the bg_idle
 * handle), so reads and writes are served throughout.
 *
 * ==== Design notes: compaction ====
 *
 * Inputs. Every sealed segment that holds garbage (size - header - live > 0) and has no
 * uncommitted writes (ALWAYS mode: not yet fsync'ed). The active segment is never an
 * input; if it holds garbage it is sealed first (a new active segment starts), so that
 * overwritten keys and purged tombstones in it are reclaimed too. A segment without
 * garbage holds only records the index points at, so leaving it out cannot leave an older
 * record of any key behind (see "dropping" below).
 *
 * 1. SNAPSHOT (loop, sliced). Walk the index arena once and collect, for every entry
 *    whose committed state points into an input, (entry ref, segment, offset) — the live
 *    records — marking those whose value expired or whose tombstone was purged.
 * 2. COPY (threadpool). Sort the items by (segment, offset), read each record from the
 *    mapped input, check its CRC, and append it to new segments (NNNNNNNNNN.seg.tmp, header
 *    flag "compacted", ids reserved up front) with a hint file each (.hint.tmp). Drop
 *    damaged records and — if the compaction is complete — expired values and purged
 *    tombstones. fdatasync every new file, rename them into place, fsync the directory.
 * 3. SWAP (loop, sliced). Add the new segments; for every item whose entry still points
 *    at the old location, point it at the new one (or, for a dropped record, remove the
 *    entry). An entry a write changed meanwhile keeps its newer location: its copy is
 *    garbage in the new segment. Entries with uncommitted writes have their committed
 *    state (the pending map) moved instead, so a rollback restores a valid location.
 * 4. DELETE (threadpool). Close and remove the old segments and their hints; fsync the
 *    directory.
 *
 * Crash safety: until step 2 renames them, new files are *.tmp (deleted at open); after
 * it they are complete and durable. A crash between 2 and 4 leaves old and new segments
 * both: open loads both, the copies carry the same versions as the originals, and the
 * next compaction removes the duplicates. Old segments go only after the index points
 * at the new ones, which are durable by then.
 *
 * Dropping. A dead record is always safe to drop: the key's newest record survives it.
 * An expired value or a purged tombstone is the key's newest record; dropping it (and its
 * index entry) is safe only if no older record of the key survives — which holds when
 * every segment with garbage is an input ("complete"): older records of a key are
 * garbage, and the active segment cannot hold any (a write there would have been newer).
 * An incomplete compaction (some segment with garbage had writes in flight) copies such
 * records instead and drops them next time.
 */
#include "store/internal.h"

#include "common/grow.h"
#include "common/log.h"
#include "kvstore/error.h"
#include "store/crc32c.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define IO_BUF_BYTES (1u << 20)

/* ---------- buffered file writer (threadpool side) ---------- */

typedef struct file_writer {
    int fd;
    uint8_t *buf;
    size_t len;
    uint64_t off; /* file offset of buf[0] */
    int err;      /* errno of the first failure */
} file_writer;

static int fw_open(file_writer *w, const char *path)
{
    memset(w, 0, sizeof(*w));
    w->fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0)
        return -errno;
    w->buf = malloc(IO_BUF_BYTES);
    if (!w->buf) {
        close(w->fd);
        w->fd = -1;
        return -ENOMEM;
    }
    return 0;
}

static void fw_flush(file_writer *w)
{
    if (w->err || !w->len)
        return;
    if (store_pwrite_all(w->fd, w->buf, w->len, w->off) != 0)
        w->err = errno;
    w->off += w->len;
    w->len = 0;
}

static void fw_write(file_writer *w, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n && !w->err) {
        if (w->len == IO_BUF_BYTES)
            fw_flush(w);
        size_t k = IO_BUF_BYTES - w->len < n ? IO_BUF_BYTES - w->len : n;
        memcpy(w->buf + w->len, b, k);
        w->len += k;
        b += k;
        n -= k;
    }
}

/* Write everything and fdatasync; the fd stays open. 0 or an errno. */
static int fw_finish(file_writer *w)
{
    fw_flush(w);
    if (!w->err && fdatasync(w->fd) != 0)
        w->err = errno;
    free(w->buf);
    w->buf = NULL;
    return w->err;
}

static void fw_abandon(file_writer *w)
{
    free(w->buf);
    w->buf = NULL;
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
}

/* A hint file being written: header placeholder, entries, then footer and real header. */
typedef struct hint_writer {
    file_writer fw;
    uint64_t count;
    uint32_t crc;
} hint_writer;

static int hw_open(hint_writer *h, const char *path)
{
    memset(h, 0, sizeof(*h));
    int rc = fw_open(&h->fw, path);
    if (rc == 0) {
        uint8_t zero[STORE_HINT_HDR_LEN] = {0};
        fw_write(&h->fw, zero, sizeof(zero));
    }
    return rc;
}

static void hw_add(hint_writer *h, const store_hint_ent *e, const void *key)
{
    uint8_t b[STORE_HINT_ENT_LEN];
    store_hint_ent_encode(b, e);
    h->crc = store_crc32c(h->crc, b, sizeof(b));
    h->crc = store_crc32c(h->crc, key, e->klen);
    fw_write(&h->fw, b, sizeof(b));
    fw_write(&h->fw, key, e->klen);
    h->count++;
}

/* Footer, header, fdatasync, close. 0 or an errno. */
static int hw_finish(hint_writer *h, uint32_t seg_id, uint64_t seg_size)
{
    uint8_t foot[STORE_HINT_FOOT_LEN], hdr[STORE_HINT_HDR_LEN];
    store_hint_foot_encode(foot, h->count, h->crc);
    fw_write(&h->fw, foot, sizeof(foot));
    fw_flush(&h->fw);
    store_hint_hdr_encode(
        hdr, &(store_hint_hdr){.seg_id = seg_id, .seg_size = seg_size, .count = h->count});
    if (!h->fw.err && store_pwrite_all(h->fw.fd, hdr, sizeof(hdr), 0) != 0)
        h->fw.err = errno;
    int err = fw_finish(&h->fw);
    close(h->fw.fd);
    h->fw.fd = -1;
    return err;
}

static void entry_of(store_hint_ent *e, const store_rec_hdr *h, uint64_t off)
{
    *e = (store_hint_ent){.type = h->type,
                          .flags = h->flags,
                          .klen = h->klen,
                          .off = (uint32_t)off,
                          .vlen = h->vlen,
                          .node = h->node,
                          .ts = h->ts,
                          .expiry = h->expiry};
}

/* ---------- jobs: hint files and deleting segments ---------- */

enum { JOB_HINT = 1, JOB_DELETE };

struct store_job {
    uv_work_t req;
    kv_store *s;
    int kind;
    int err; /* errno */
    /* JOB_HINT */
    uint32_t seg_id;
    int fd;
    uint64_t size;
    uint64_t entries;
    /* JOB_DELETE: segments already out of the index and the segment table; the worker
     * unmaps and closes them (unmapping costs TLB shootdowns: not on the loop) and
     * removes their files */
    uint32_t *ids;
    int *fds;
    uint8_t **maps;
    size_t *maplens;
    size_t nids;
};

static void hint_work(uv_work_t *req)
{
    store_job *j = req->data;
    kv_store *s = j->s; /* only s->path and s->dirfd: fixed while the store is open */
    /* A hint must never describe bytes that are not durable. */
    if (fdatasync(j->fd) != 0) {
        j->err = errno;
        return;
    }
    if (j->size <= STORE_SEG_HDR_LEN)
        return; /* nothing to describe; scanning it costs nothing */
    uint8_t *base = mmap(NULL, j->size, PROT_READ, MAP_SHARED, j->fd, 0);
    if (base == MAP_FAILED) {
        j->err = errno;
        return;
    }
    madvise(base, j->size, MADV_SEQUENTIAL);
    char tmp[PATH_MAX], fin[PATH_MAX];
    store_seg_name(tmp, sizeof(tmp), s->path, j->seg_id, ".hint.tmp");
    store_seg_name(fin, sizeof(fin), s->path, j->seg_id, ".hint");
    hint_writer hw;
    int rc = hw_open(&hw, tmp);
    if (rc != 0) {
        j->err = -rc;
        munmap(base, j->size);
        return;
    }
    /* The same walk as a scan at open (recover.c), so the hint says exactly what a scan
     * would load: skip a damaged record if its length leads to an intact one, else stop. */
    uint64_t pos = STORE_SEG_HDR_LEN;
    while (pos < j->size) {
        store_rec_hdr h;
        store_rec_status st = store_rec_parse(base + pos, j->size - pos, &h);
        if (st == STORE_REC_OK) {
            store_hint_ent e;
            entry_of(&e, &h, pos);
            hw_add(&hw, &e, base + pos + STORE_REC_HDR_LEN);
            pos += store_rec_len(&h);
            continue;
        }
        if (st == STORE_REC_BADCRC) {
            uint64_t next = pos + store_rec_len(&h);
            store_rec_hdr nh;
            if (next < j->size &&
                store_rec_parse(base + next, j->size - next, &nh) == STORE_REC_OK) {
                pos = next;
                continue;
            }
        }
        break;
    }
    munmap(base, j->size);
    j->entries = hw.count;
    int err = hw_finish(&hw, j->seg_id, j->size);
    if (!err && rename(tmp, fin) != 0)
        err = errno;
    if (!err && fsync(s->dirfd) != 0)
        err = errno;
    if (err) {
        unlink(tmp);
        j->err = err;
    }
}

static void delete_work(uv_work_t *req)
{
    store_job *j = req->data;
    kv_store *s = j->s;
    for (size_t i = 0; i < j->nids; i++) {
        if (j->maps[i])
            munmap(j->maps[i], j->maplens[i]);
        close(j->fds[i]);
    }
    for (size_t i = 0; i < j->nids; i++) {
        char nm[PATH_MAX];
        store_seg_name(nm, sizeof(nm), s->path, j->ids[i], ".hint");
        unlink(nm);
        store_seg_name(nm, sizeof(nm), s->path, j->ids[i], ".seg");
        if (unlink(nm) != 0 && errno != ENOENT && !j->err)
            j->err = errno;
    }
    if (fsync(s->dirfd) != 0 && !j->err)
        j->err = errno;
}

static void comp_after_delete(kv_store *s, int err);

static void job_after(uv_work_t *req, int status)
{
    store_job *j = req->data;
    kv_store *s = j->s;
    s->job = NULL;
    int err = status == 0 ? j->err : ECANCELED;
    if (j->kind == JOB_HINT) {
        store_seg *g = store_find_seg(s, j->seg_id);
        if (err) {
            kv_log_warn("cannot write a hint file; the segment will be scanned at open",
                        KV_UINT("segment", j->seg_id), KV_STR("reason", strerror(err)));
        } else if (g && g->flushed == j->size) {
            g->dirty = false; /* the job fsynced it */
        }
    } else {
        comp_after_delete(s, err);
    }
    free(j->ids);
    free(j->fds);
    free(j->maps);
    free(j->maplens);
    free(j);
    if (s->closing)
        store_kick(s);
    else
        store_bg_kick(s);
}

static void run_job(kv_store *s, store_job *j, uv_work_cb work)
{
    j->s = s;
    j->req.data = j;
    s->job = j;
    int rc = uv_queue_work(s->loop, &j->req, work, job_after);
    if (rc != 0) {
        /* Cannot happen with a live loop; treat like a failed job. */
        j->err = EIO;
        job_after(&j->req, 0);
    }
}

void store_bg_queue_hint(kv_store *s, uint32_t seg_id)
{
    for (size_t i = 0; i < s->hintq_n; i++)
        if (s->hintq[i] == seg_id)
            return;
    uint32_t *p = kv_grow(s->hintq, &s->hintq_cap, s->hintq_n + 1, sizeof(*p), 16);
    if (!p)
        return; /* no hint then: the segment is scanned at open */
    s->hintq = p;
    s->hintq[s->hintq_n++] = seg_id;
}

/* ---------- compaction ---------- */

enum { CP_WAIT = 0, CP_SNAPSHOT, CP_COPY, CP_SWAP, CP_DELETE, CP_DONE };

#define CJ_FORGOTTEN 0x01 /* expired or purged at snapshot time */
#define CJ_DROPPED   0x02 /* not copied */
#define CJ_CORRUPT   0x04 /* not copied: damaged */

typedef struct cj_item {
    uint32_t ref, seg, off;
    uint32_t new_seg, new_off;
    uint32_t flags;
} cj_item;

typedef struct cj_in {
    uint32_t id;
    int fd;
    uint64_t size;
} cj_in;

typedef struct cj_out {
    uint32_t id;
    int fd;
    uint64_t size;
} cj_out;

struct store_compaction {
    uv_work_t req;
    kv_store *s;
    int phase;
    cj_in *in;
    size_t nin;
    cj_item *items;
    size_t n, cap;
    uint64_t walk_pos, walk_end;
    size_t swap_pos;
    uint32_t id_next, id_end; /* reserved output ids [id_next, id_end) */
    cj_out *out;
    size_t nout, capout;
    uint64_t now_ms;
    uint64_t seg_bytes;
    bool complete;
    atomic_int abort;
    int err;     /* errno (worker) */
    int end_err; /* CP_DONE: the kv_err to report from the idle handle */
    uint64_t records_in;
    kv_compact_stats st;
    uint64_t t0;
    store_compact_cb cb;
    void *arg;
};

static void bg_idle_cb(uv_idle_t *h);

static void comp_free(store_compaction *c)
{
    free(c->in);
    free(c->items);
    free(c->out);
    free(c);
}

static void unmark_inputs(kv_store *s, store_compaction *c)
{
    for (size_t i = 0; i < c->nin; i++) {
        store_seg *g = store_find_seg(s, c->in[i].id);
        if (g)
            g->busy = false;
    }
}

/* End the compaction (any phase before SWAP) with err; nothing changed on disk. */
static void comp_end(kv_store *s, store_compaction *c, int kverr)
{
    unmark_inputs(s, c);
    s->comp = NULL;
    uv_idle_stop(&s->bg_idle);
    if (kverr != KV_OK && kverr != KV_ECLOSED) {
        s->st.compaction_errors++;
        s->comp_backoff_until = store_wall_ms() + 10000; /* automatic retry in 10 s */
    }
    c->st.seconds = (double)(uv_hrtime() - c->t0) / 1e9;
    if (c->cb)
        c->cb(c->arg, kverr, &c->st);
    comp_free(c);
    if (s->closing)
        store_kick(s);
}

static uint64_t seg_garbage(const kv_store *s, const store_seg *g)
{
    if (g->size <= STORE_SEG_HDR_LEN)
        return g->id != s->active_id; /* an empty sealed segment: worth removing */
    uint64_t used = g->size - STORE_SEG_HDR_LEN;
    return used > g->live ? used - g->live : 0;
}

/* End from the idle handle, not from inside the call that started the compaction. */
static void comp_end_later(kv_store *s, store_compaction *c, int kverr)
{
    c->phase = CP_DONE;
    c->end_err = kverr;
    uv_idle_start(&s->bg_idle, bg_idle_cb);
}

/* Choose inputs and start the snapshot. */
static void comp_begin(kv_store *s, store_compaction *c)
{
    c->in = calloc(s->nsegs + 1, sizeof(*c->in));
    c->capout = 2 * (s->nsegs + 1) + 4;
    c->out = calloc(c->capout, sizeof(*c->out));
    if (!c->in || !c->out) {
        comp_end_later(s, c, KV_ENOMEM);
        return;
    }
    /* Garbage in the active segment (an overwritten key, a purged tombstone) can only be
     * reclaimed once it is sealed: start a new active segment first. */
    store_seg *a = store_active(s);
    if (a->size > STORE_SEG_HDR_LEN && seg_garbage(s, a) && !s->closing)
        (void)store_rotate(s); /* on failure (a full disk) compact what is sealed */
    c->complete = true;
    for (size_t i = 0; i < s->nsegs; i++) {
        store_seg *g = &s->segs[i];
        if (g->id == s->active_id || !seg_garbage(s, g))
            continue;
        if (g->pending || g->busy) {
            c->complete = false;
            continue;
        }
        c->in[c->nin++] = (cj_in){.id = g->id, .fd = g->fd, .size = g->flushed};
        g->busy = true;
        c->st.segments_in++;
        c->st.bytes_in += g->flushed;
    }
    if (c->nin == 0) {
        comp_end_later(s, c, KV_OK);
        return;
    }
    /* Output ids: never more outputs than inputs plus one per input that a record could
     * not share (records never split), plus slack; checked by the worker anyway. */
    c->id_next = s->next_id;
    c->id_end = s->next_id + (uint32_t)(2 * c->nin + 4);
    if (c->id_end <= s->next_id) {
        comp_end_later(s, c, KV_EIO);
        return;
    }
    s->next_id = c->id_end;
    c->walk_pos = 0;
    c->walk_end = store_index_end(&s->index);
    c->now_ms = store_wall_ms();
    c->seg_bytes = s->seg_bytes;
    c->phase = CP_SNAPSHOT;
    kv_log_info("compaction started", KV_UINT("segments", c->nin), KV_UINT("bytes", c->st.bytes_in),
                KV_BOOL("complete", c->complete));
    uv_idle_start(&s->bg_idle, bg_idle_cb);
}

static int items_push(store_compaction *c, const cj_item *it)
{
    cj_item *p = kv_grow(c->items, &c->cap, c->n + 1, sizeof(*p), 4096);
    if (!p)
        return KV_ENOMEM;
    c->items = p;
    c->items[c->n++] = *it;
    return KV_OK;
}

static void copy_work(uv_work_t *req);
static void copy_after(uv_work_t *req, int status);

/* One slice of the snapshot walk. */
static void snapshot_step(kv_store *s, store_compaction *c)
{
    uint64_t t_end = uv_hrtime() + STORE_CHUNK_NS;
    uint32_t last_id = 0;
    bool last_busy = false;
    for (int n = 0; c->walk_pos < c->walk_end; n++) {
        if ((n & 1023) == 1023 && uv_hrtime() >= t_end)
            return;
        uint32_t ref = store_index_next(&s->index, &c->walk_pos);
        if (!ref)
            break;
        const store_ent *e = store_index_ent(&s->index, ref);
        const store_ent *st = e;
        if (store_ent_flags(e) & STORE_ENT_PENDING) {
            const pend_item *pi = store_pend_find(s, ref);
            if (!pi || pi->absent)
                continue;
            st = &pi->state;
        }
        if (st->seg != last_id) {
            store_seg *g = store_find_seg(s, st->seg);
            last_id = st->seg;
            last_busy = g && g->busy;
        }
        if (!last_busy)
            continue;
        unsigned f = store_ent_flags(st);
        cj_item it = {.ref = ref, .seg = st->seg, .off = st->off};
        if ((f & (STORE_ENT_EXPIRED | STORE_ENT_PURGED)) || store_ent_expired(st, c->now_ms))
            it.flags = CJ_FORGOTTEN;
        if (items_push(c, &it) != KV_OK) {
            comp_end(s, c, KV_ENOMEM);
            return;
        }
    }
    /* Walk done: copy on the threadpool. */
    uv_idle_stop(&s->bg_idle);
    c->phase = CP_COPY;
    c->req.data = c;
    if (uv_queue_work(s->loop, &c->req, copy_work, copy_after) != 0)
        comp_end(s, c, KV_EIO);
}

static int cmp_item(const void *a, const void *b)
{
    const cj_item *x = a, *y = b;
    if (x->seg != y->seg)
        return x->seg < y->seg ? -1 : 1;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Threadpool: steps 2 of the design notes. Touches only c and the input fds. */
static void copy_work(uv_work_t *req)
{
    store_compaction *c = req->data;
    kv_store *s = c->s; /* s->path, s->dirfd only */
    if (c->n > 1)
        qsort(c->items, c->n, sizeof(*c->items), cmp_item);

    file_writer sw = {.fd = -1};
    hint_writer hw = {.fw = {.fd = -1}};
    bool open_out = false;
    int err = 0;
    size_t it_i = 0;
    for (size_t k = 0; k < c->nin && !err; k++) {
        cj_in *in = &c->in[k];
        uint8_t *base = NULL;
        if (in->size > STORE_SEG_HDR_LEN) {
            base = mmap(NULL, in->size, PROT_READ, MAP_SHARED, in->fd, 0);
            if (base == MAP_FAILED) {
                err = errno;
                break;
            }
            madvise(base, in->size, MADV_SEQUENTIAL);
            /* Count the records this segment holds (headers only), for the stats. */
            uint64_t pos = STORE_SEG_HDR_LEN;
            while (pos + STORE_REC_HDR_LEN <= in->size) {
                store_rec_hdr h;
                store_rec_hdr_decode(base + pos, &h);
                if (!store_rec_hdr_plausible(&h, base + pos) || store_rec_len(&h) > in->size - pos)
                    break;
                c->records_in++;
                pos += store_rec_len(&h);
            }
        }
        for (; it_i < c->n && c->items[it_i].seg == in->id && !err; it_i++) {
            cj_item *it = &c->items[it_i];
            if ((it_i & 4095) == 0 && atomic_load(&c->abort)) {
                err = ECANCELED;
                break;
            }
            store_rec_hdr h;
            if (!base || it->off >= in->size ||
                store_rec_parse(base + it->off, in->size - it->off, &h) != STORE_REC_OK) {
                it->flags |= CJ_DROPPED | CJ_CORRUPT;
                continue;
            }
            bool forgotten = (it->flags & CJ_FORGOTTEN) ||
                             (h.type == STORE_REC_PUT && h.expiry && h.expiry <= c->now_ms);
            if (forgotten && c->complete) {
                it->flags |= CJ_DROPPED;
                c->st.expired_dropped++;
                continue;
            }
            size_t len = store_rec_len(&h);
            cj_out *o = open_out ? &c->out[c->nout - 1] : NULL;
            if (o && o->size > STORE_SEG_HDR_LEN && o->size + len > c->seg_bytes) {
                /* Finish this output: segment, then its hint. */
                int e1 = fw_finish(&sw);
                int e2 = hw_finish(&hw, o->id, o->size);
                err = e1 ? e1 : e2;
                open_out = false;
                o = NULL;
                if (err)
                    break;
            }
            if (!o) {
                if (c->id_next >= c->id_end || c->nout == c->capout) {
                    err = ENOSPC; /* more outputs than reserved: give up cleanly */
                    break;
                }
                o = &c->out[c->nout++];
                *o = (cj_out){.id = c->id_next++, .fd = -1, .size = STORE_SEG_HDR_LEN};
                char nm[PATH_MAX];
                store_seg_name(nm, sizeof(nm), s->path, o->id, ".seg.tmp");
                int rc = fw_open(&sw, nm);
                if (rc == 0) {
                    o->fd = sw.fd;
                    store_seg_name(nm, sizeof(nm), s->path, o->id, ".hint.tmp");
                    rc = hw_open(&hw, nm);
                    if (rc != 0) {
                        free(sw.buf); /* o->fd is closed by the cleanup below */
                        sw.buf = NULL;
                    }
                }
                if (rc != 0) {
                    err = -rc;
                    break;
                }
                open_out = true;
                uint8_t sh[STORE_SEG_HDR_LEN];
                store_seg_hdr_encode(sh, &(store_seg_hdr){.id = o->id,
                                                          .created_ms = c->now_ms,
                                                          .flags = STORE_SEG_F_COMPACTED});
                fw_write(&sw, sh, sizeof(sh));
            }
            fw_write(&sw, base + it->off, len);
            store_hint_ent e;
            entry_of(&e, &h, o->size);
            hw_add(&hw, &e, base + it->off + STORE_REC_HDR_LEN);
            it->new_seg = o->id;
            it->new_off = (uint32_t)o->size;
            o->size += len;
            c->st.records_kept++;
            if (sw.err)
                err = sw.err;
        }
        if (base)
            munmap(base, in->size);
    }
    if (!err && open_out) {
        cj_out *o = &c->out[c->nout - 1];
        int e1 = fw_finish(&sw);
        int e2 = hw_finish(&hw, o->id, o->size);
        err = e1 ? e1 : e2;
        open_out = false;
    }
    if (open_out) {
        /* Stopped half-way through an output: its descriptor is closed below. */
        free(sw.buf);
        sw.buf = NULL;
        fw_abandon(&hw.fw);
    }
    /* Into place: segment first, then its hint (a hint without its segment is ignored). */
    for (size_t i = 0; !err && i < c->nout; i++) {
        char a[PATH_MAX], b[PATH_MAX];
        store_seg_name(a, sizeof(a), s->path, c->out[i].id, ".seg.tmp");
        store_seg_name(b, sizeof(b), s->path, c->out[i].id, ".seg");
        if (rename(a, b) != 0) {
            err = errno;
            break;
        }
        store_seg_name(a, sizeof(a), s->path, c->out[i].id, ".hint.tmp");
        store_seg_name(b, sizeof(b), s->path, c->out[i].id, ".hint");
        if (rename(a, b) != 0)
            unlink(a); /* no hint: the segment is scanned at open */
    }
    if (!err && fsync(s->dirfd) != 0)
        err = errno;
    if (err) {
        /* Leave no trace: nothing points at the outputs. */
        for (size_t i = 0; i < c->nout; i++) {
            char nm[PATH_MAX];
            const char *suffix[] = {".seg.tmp", ".hint.tmp", ".seg", ".hint"};
            for (int k = 0; k < 4; k++) {
                store_seg_name(nm, sizeof(nm), s->path, c->out[i].id, suffix[k]);
                unlink(nm);
            }
            if (c->out[i].fd >= 0)
                close(c->out[i].fd);
            c->out[i].fd = -1;
        }
        c->nout = 0;
    }
    c->err = err;
}

static void copy_after(uv_work_t *req, int status)
{
    store_compaction *c = req->data;
    kv_store *s = c->s;
    int err = status == 0 ? c->err : ECANCELED;
    if (err) {
        int kverr = err == ECANCELED ? KV_ECLOSED : store_errno_to_kv(err);
        if (err != ECANCELED)
            kv_log_error("compaction failed; old segments kept", KV_STR("reason", strerror(err)),
                         KV_ERR(kverr));
        comp_end(s, c, kverr);
        return;
    }
    /* Adopt the outputs (their fds were opened read-write; they are never written again). */
    for (size_t i = 0; i < c->nout; i++) {
        store_seg g = {.id = c->out[i].id,
                       .fd = c->out[i].fd,
                       .size = c->out[i].size,
                       .flushed = c->out[i].size,
                       .compacted = true};
        store_seg_map(s, &g, g.size);
        if (store_segs_insert(s, &g) != KV_OK) {
            store_seg_unmap(&g);
            /* Out of memory for a tiny array: drop the outputs; the inputs stay valid. */
            for (size_t k = i; k < c->nout; k++)
                close(c->out[k].fd);
            for (size_t k = 0; k < i; k++) {
                store_seg *o = store_find_seg(s, c->out[k].id);
                if (o)
                    store_seg_unmap(o);
                store_segs_remove(s, c->out[k].id);
                close(c->out[k].fd);
            }
            kv_log_error("compaction failed; old segments kept", KV_ERR(KV_ENOMEM));
            comp_end(s, c, KV_ENOMEM);
            return;
        }
        s->st.disk_bytes += g.size;
        c->st.segments_out++;
        c->st.bytes_out += g.size;
    }
    c->phase = CP_SWAP;
    c->swap_pos = 0;
    if (s->closing) {
        /* Finish at once: the close waits for this. */
        while (c->phase == CP_SWAP)
            bg_idle_cb(&s->bg_idle);
    } else {
        uv_idle_start(&s->bg_idle, bg_idle_cb);
    }
}

/* Point one item's entry at its new place (or drop it). */
static void swap_item(kv_store *s, store_compaction *c, const cj_item *it)
{
    store_ent *e = store_index_ent(&s->index, it->ref);
    unsigned f = store_ent_flags(e);
    if (f & STORE_ENT_FREE)
        return;
    if (f & STORE_ENT_PENDING) {
        pend_item *pi = store_pend_find(s, it->ref);
        if (!pi || pi->absent || pi->state.seg != it->seg || pi->state.off != it->off)
            return;
        if (it->flags & CJ_DROPPED) {
            pi->absent = true;
        } else {
            pi->state.seg = it->new_seg;
            pi->state.off = it->new_off;
        }
        return;
    }
    if (e->seg != it->seg || e->off != it->off)
        return; /* written meanwhile: the newer location wins */
    if (it->flags & CJ_DROPPED) {
        if (it->flags & CJ_CORRUPT) {
            kv_log_error("compaction found a damaged record; its key is gone",
                         KV_UINT("segment", it->seg), KV_UINT("offset", it->off));
            s->st.corrupt_records++;
        } else {
            s->st.expired_dropped++;
        }
        store_acct(s, e, -1);
        store_index_remove(&s->index, it->ref);
        return;
    }
    store_ent moved = *e;
    moved.seg = it->new_seg;
    moved.off = it->new_off;
    store_ent_assign(s, e, &moved, f);
    (void)c;
}

static void start_delete(kv_store *s, store_compaction *c)
{
    store_job *j = calloc(1, sizeof(*j));
    bool ok = j && (j->ids = malloc(c->nin * sizeof(*j->ids))) &&
              (j->fds = malloc(c->nin * sizeof(*j->fds))) &&
              (j->maps = malloc(c->nin * sizeof(*j->maps))) &&
              (j->maplens = malloc(c->nin * sizeof(*j->maplens)));
    size_t nids = 0;
    for (size_t i = 0; i < c->nin; i++) {
        store_seg *g = store_find_seg(s, c->in[i].id);
        if (!g)
            continue;
        s->st.disk_bytes -= g->size;
        if (ok) {
            j->ids[nids] = g->id;
            j->fds[nids] = g->fd;
            j->maps[nids] = g->map;
            j->maplens[nids] = g->maplen;
            nids++;
        } else {
            store_seg_unmap(g);
            close(g->fd);
        }
        store_segs_remove(s, c->in[i].id);
    }
    c->phase = CP_DELETE;
    if (!ok) {
        /* Cannot even queue the unlinks: the files stay and open sorts them out (their
         * records are older or equal copies). */
        if (j) {
            free(j->ids);
            free(j->fds);
            free(j->maps);
            free(j->maplens);
        }
        free(j);
        comp_after_delete(s, ENOMEM);
        store_kick(s);
        return;
    }
    j->kind = JOB_DELETE;
    j->nids = nids;
    run_job(s, j, delete_work);
}

static void comp_after_delete(kv_store *s, int err)
{
    store_compaction *c = s->comp;
    if (!c)
        return;
    if (err)
        kv_log_warn("cannot remove compacted segments; open will skip their duplicates",
                    KV_STR("reason", strerror(err)));
    s->comp = NULL;
    c->st.records_dropped =
        c->records_in > c->st.records_kept ? c->records_in - c->st.records_kept : 0;
    c->st.seconds = (double)(uv_hrtime() - c->t0) / 1e9;
    s->st.compactions++;
    s->st.compact_bytes_in += c->st.bytes_in;
    s->st.compact_bytes_out += c->st.bytes_out;
    kv_log_info("compaction finished", KV_UINT("segments_in", c->st.segments_in),
                KV_UINT("segments_out", c->st.segments_out), KV_UINT("bytes_in", c->st.bytes_in),
                KV_UINT("bytes_out", c->st.bytes_out), KV_UINT("records_kept", c->st.records_kept),
                KV_UINT("records_dropped", c->st.records_dropped),
                KV_UINT("expired_dropped", c->st.expired_dropped),
                KV_FLOAT("seconds", c->st.seconds));
    if (c->cb)
        c->cb(c->arg, KV_OK, &c->st);
    comp_free(c);
}

static void swap_step(kv_store *s, store_compaction *c)
{
    uint64_t t_end = uv_hrtime() + STORE_CHUNK_NS;
    while (c->swap_pos < c->n) {
        swap_item(s, c, &c->items[c->swap_pos++]);
        if ((c->swap_pos & 1023) == 0 && uv_hrtime() >= t_end && !s->closing)
            return;
    }
    uv_idle_stop(&s->bg_idle);
    start_delete(s, c);
}

static void bg_idle_cb(uv_idle_t *h)
{
    kv_store *s = h->data;
    store_compaction *c = s->comp;
    if (!c) {
        uv_idle_stop(h);
        return;
    }
    if (c->phase == CP_SNAPSHOT)
        snapshot_step(s, c);
    else if (c->phase == CP_SWAP)
        swap_step(s, c);
    else if (c->phase == CP_DONE)
        comp_end(s, c, c->end_err);
    else
        uv_idle_stop(h);
}

/* ---------- scheduling ---------- */

bool store_bg_busy(const kv_store *s)
{
    return s->job != NULL || s->comp != NULL;
}

void store_bg_kick(kv_store *s)
{
    if (s->job)
        return;
    if (s->comp && !s->closing) {
        if (s->comp->phase == CP_WAIT)
            comp_begin(s, s->comp);
        return;
    }
    while (s->hintq_n) {
        uint32_t id = s->hintq[0];
        store_seg *g = store_find_seg(s, id);
        if (g && g->id != s->active_id && g->pending)
            return; /* its writes are not durable yet: after the next fsync */
        memmove(s->hintq, s->hintq + 1, (s->hintq_n - 1) * sizeof(*s->hintq));
        s->hintq_n--;
        if (!g || g->id == s->active_id || g->busy || g->flushed < STORE_SEG_HDR_LEN)
            continue;
        store_job *j = calloc(1, sizeof(*j));
        if (!j)
            return;
        j->kind = JOB_HINT;
        j->seg_id = id;
        j->fd = g->fd;
        j->size = g->flushed;
        run_job(s, j, hint_work);
        return;
    }
}

bool store_bg_hint_now(kv_store *s, uint32_t seg_id)
{
    store_seg *g = store_find_seg(s, seg_id);
    if (s->job || s->comp || !g || g->flushed <= STORE_SEG_HDR_LEN)
        return false;
    store_job *j = calloc(1, sizeof(*j));
    if (!j)
        return false;
    j->kind = JOB_HINT;
    j->seg_id = seg_id;
    j->fd = g->fd;
    j->size = g->flushed;
    run_job(s, j, hint_work);
    return true;
}

static int comp_new(kv_store *s, store_compact_cb cb, void *arg)
{
    store_compaction *c = calloc(1, sizeof(*c));
    if (!c)
        return KV_ENOMEM;
    c->s = s;
    c->cb = cb;
    c->arg = arg;
    c->t0 = uv_hrtime();
    atomic_init(&c->abort, 0);
    c->phase = CP_WAIT;
    s->comp = c;
    if (!s->job)
        comp_begin(s, c); /* else store_bg_kick begins it when the running job ends */
    return KV_OK;
}

int store_compact(kv_store *s, store_compact_cb cb, void *arg)
{
    if (!s)
        return KV_EINVAL;
    if (s->closing)
        return KV_ECLOSED;
    if (s->comp)
        return KV_EEXIST;
    return comp_new(s, cb, arg);
}

bool store_compacting(const kv_store *s)
{
    return s && s->comp != NULL;
}

void store_maybe_compact(kv_store *s)
{
    if (s->closing || s->comp || s->dead_ratio > 1.0)
        return;
    if (store_wall_ms() < s->comp_backoff_until)
        return;
    uint64_t total = 0, garbage = 0, candidate = 0;
    for (size_t i = 0; i < s->nsegs; i++) {
        const store_seg *g = &s->segs[i];
        uint64_t gb = seg_garbage(s, g);
        total += g->size;
        garbage += gb;
        if (g->id != s->active_id && gb && !g->pending)
            candidate += gb;
    }
    if (total < s->compact_min_bytes || !candidate)
        return;
    if ((double)garbage < s->dead_ratio * (double)total)
        return;
    comp_new(s, NULL, NULL);
}

void store_bg_close(kv_store *s)
{
    /* Queued hint files are still written (close waits for them: a sealed segment's
     * hint takes one pass over it); a compaction stops as early as it safely can. */
    store_compaction *c = s->comp;
    if (!c)
        return;
    switch (c->phase) {
    case CP_WAIT:
    case CP_SNAPSHOT:
        comp_end(s, c, KV_ECLOSED);
        break;
    case CP_DONE:
        comp_end(s, c, c->end_err);
        break;
    case CP_COPY:
        atomic_store(&c->abort, 1);
        break;
    case CP_SWAP:
        while (s->comp == c && c->phase == CP_SWAP)
            swap_step(s, c);
        break;
    default:
        break;
    }
}

void store_bg_free(kv_store *s)
{
    free(s->hintq);
    s->hintq = NULL;
    s->hintq_n = s->hintq_cap = 0;
}
