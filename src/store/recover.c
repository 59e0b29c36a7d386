/*
 * recover.c — opening a store: list the store directory, load the index from hint files
 * where they are valid, scan the other segments record by record, repair a torn tail,
 * and make the layout we start from durable. Runs inside store_open on the caller's
 * thread, before the store serves (blocking by contract).
 *
 * Design notes. Segments are visited in id order and every record (or hint entry) goes
 * through load_apply, which keeps per key the highest version (ts, node) — so the order
 * of segments does not matter for correctness, and a segment duplicated by a compaction
 * that died before deleting its inputs just yields equal versions. A hint is used only if
 * it passes every check of store_hint_check and names this segment at exactly its
 * current size; otherwise the segment is scanned (and gets a fresh hint in the
 * background). Only the appendable segment — the newest one not written by compaction —
 * may have a torn tail (a crash mid-write): it is truncated at the last intact record.
 * In other segments a damaged record is skipped when its length still leads to an intact
 * record, else the rest of that segment is ignored; both are logged and counted.
 */
#include "store/internal.h"

#include "common/grow.h"
#include "common/log.h"
#include "kvstore/error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct rec_info {
    uint8_t type;
    uint32_t vlen;
    uint64_t ts;
    uint32_t node;
    uint64_t expiry;
} rec_info;

typedef struct load_ctx {
    uint64_t now;
    uint32_t last_node; /* one-entry cache of the node table */
    uint16_t last_node_ix;
    bool have_node;
    uint64_t max_ts;
    uint64_t records;
    uint64_t skipped_long_keys;
} load_ctx;

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

/* One record or hint entry into the index: it wins if its version is at least the one
 * held (equal versions are the same write, e.g. copied by compaction). */
static int load_apply(kv_store *s, load_ctx *lc, const uint8_t *key, size_t klen, const rec_info *r,
                      uint32_t seg, uint64_t off, uint64_t hash)
{
    lc->records++;
    if (r->ts > lc->max_ts)
        lc->max_ts = r->ts;
    if (klen > STORE_ENT_KEY_MAX) {
        lc->skipped_long_keys++;
        return KV_OK;
    }
    if (!lc->have_node || lc->last_node != r->node) {
        int rc = store_index_node_ix(&s->index, r->node, &lc->last_node_ix);
        if (rc != KV_OK)
            return rc;
        lc->last_node = r->node;
        lc->have_node = true;
    }
    store_ent ns = {.seg = seg,
                    .off = (uint32_t)off,
                    .vlen = r->vlen,
                    .expiry_s = store_expiry_s(r->expiry),
                    .node_ix = lc->last_node_ix};
    store_ent_set_ts(&ns, r->ts);
    unsigned flags = r->type == STORE_REC_TOMBSTONE ? STORE_ENT_TOMB : 0;
    if (r->expiry && r->expiry <= lc->now)
        flags |= STORE_ENT_EXPIRED;

    uint32_t ref = store_index_find(&s->index, hash, key, klen);
    if (ref) {
        store_ent *e = store_index_ent(&s->index, ref);
        kv_version cur = {.ts = store_ent_ts(e), .node = store_index_node(&s->index, e->node_ix)};
        kv_version nv = {.ts = r->ts, .node = r->node};
        if (kv_version_cmp(&nv, &cur) >= 0)
            store_ent_assign(s, e, &ns, flags);
        return KV_OK;
    }
    store_ent_set_flags(&ns, flags);
    ref = store_index_insert(&s->index, hash, key, klen, &ns);
    if (!ref)
        return KV_ENOMEM;
    store_acct(s, store_index_ent(&s->index, ref), +1);
    return KV_OK;
}

/* ---------- hint files ---------- */

/* Map a whole file for one sequential pass, faulted in up front (one call instead of a
 * page fault every few pages). NULL on failure. */
static uint8_t *map_whole(int fd, uint64_t size)
{
    void *p = mmap(NULL, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED)
        return NULL;
    madvise(p, size, MADV_SEQUENTIAL);
    return p;
}

/* The record at e->off of the segment (mapped at base, seg_size bytes) is intact and is
 * the one the hint entry describes. */
static bool hint_matches(const uint8_t *base, uint64_t seg_size, const store_hint_ent *e)
{
    store_rec_hdr h;
    if (store_rec_parse(base + e->off, seg_size - e->off, &h) != STORE_REC_OK)
        return false;
    return h.type == e->type && h.flags == e->flags && h.klen == e->klen && h.vlen == e->vlen &&
           h.ts == e->ts && h.node == e->node && h.expiry == e->expiry &&
           memcmp(base + e->off + STORE_REC_HDR_LEN, e->key, e->klen) == 0;
}

/*
 * Load seg's entries from its hint file. The hint spares parsing the segment, not
 * checking it: every record's CRC is still verified (one sequential pass over the
 * mapped segment, cheap next to the index work), so a record damaged in the middle of a
 * segment is skipped with a log line and a counter exactly as a scan would. KV_OK, or
 * KV_ECORRUPT if the hint cannot be used (the caller scans the segment instead; nothing
 * was applied), or KV_ENOMEM.
 */
static int load_hint(kv_store *s, load_ctx *lc, store_seg *seg, uint64_t seg_size)
{
    /* A mapping of its own for the check, dropped afterwards: the pages it touches are
     * not kept in the process (the read mapping of the segment stays untouched). */
    uint8_t *base = seg_size ? map_whole(seg->fd, seg_size) : NULL;
    if (!base)
        return KV_ECORRUPT; /* cannot check the records: scan instead */
    char name[PATH_MAX];
    store_seg_name(name, sizeof(name), s->path, seg->id, ".hint");
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        munmap(base, seg_size);
        return KV_ECORRUPT;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || sb.st_size < STORE_HINT_HDR_LEN + STORE_HINT_FOOT_LEN) {
        close(fd);
        munmap(base, seg_size);
        return KV_ECORRUPT;
    }
    size_t n = (size_t)sb.st_size;
    uint8_t *p = map_whole(fd, n);
    close(fd);
    if (!p) {
        munmap(base, seg_size);
        return KV_ECORRUPT;
    }
    int rc = KV_ECORRUPT;
    store_hint_hdr h;
    store_hint_status hs = store_hint_check(p, n, &h);
    if (hs != STORE_HINT_OK || h.seg_id != seg->id || h.seg_size != seg_size)
        goto out;
    /* Room for every entry up front: no rehash while loading. */
    size_t key_bytes = n - STORE_HINT_HDR_LEN - STORE_HINT_FOOT_LEN - h.count * STORE_HINT_ENT_LEN;
    rc = store_index_reserve(&s->index, (size_t)h.count, key_bytes);
    if (rc != KV_OK)
        goto out;
    /* In batches: hash a few entries and prefetch their buckets first, so the cache
     * misses of the table overlap instead of queueing one behind the other. */
    enum { BATCH = 16 };
    store_hint_ent e[BATCH];
    uint64_t hash[BATCH];
    size_t pos = 0;
    for (;;) {
        int k = 0;
        while (k < BATCH && store_hint_next(p, n, &pos, &e[k])) {
            hash[k] = store_index_hash(&s->index, e[k].key, e[k].klen);
            store_index_prefetch(&s->index, hash[k]);
            k++;
        }
        for (int i = 0; i < k; i++) {
            if (!hint_matches(base, seg_size, &e[i])) {
                kv_log_warn("skipped corrupt record", KV_UINT("segment", seg->id),
                            KV_UINT("offset", e[i].off), KV_STR("found_by", "hint"));
                s->st.corrupt_records++;
                continue;
            }
            rec_info r = {.type = e[i].type,
                          .vlen = e[i].vlen,
                          .ts = e[i].ts,
                          .node = e[i].node,
                          .expiry = e[i].expiry};
            rc = load_apply(s, lc, e[i].key, e[i].klen, &r, seg->id, e[i].off, hash[i]);
            if (rc != KV_OK)
                goto out;
        }
        if (k < BATCH)
            break;
    }
    rc = KV_OK;
out:
    munmap(p, n);
    munmap(base, seg_size);
    return rc;
}

/* ---------- scanning ---------- */

static int truncate_tail(kv_store *s, store_seg *seg, uint64_t at, uint64_t size)
{
    if (ftruncate(seg->fd, (off_t)at) != 0 || fsync(seg->fd) != 0) {
        int e = errno;
        kv_log_error("cannot truncate torn segment tail", KV_UINT("segment", seg->id),
                     KV_UINT("offset", at), KV_STR("reason", strerror(e)));
        return store_errno_to_kv(e);
    }
    kv_log_warn("truncated torn segment tail", KV_UINT("segment", seg->id), KV_UINT("offset", at),
                KV_UINT("bytes", size - at));
    s->st.corrupt_records++;
    s->st.truncated_bytes += size - at;
    return KV_OK;
}

/*
 * Scan one segment into the index. last: it is the appendable segment, whose tail may be
 * torn by a crash. *bad_header is set when the header could not be trusted (the caller
 * then starts a fresh active segment instead of appending to this one).
 */
static int scan_segment(kv_store *s, load_ctx *lc, store_seg *seg, bool last, bool *bad_header)
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
            seg->size = seg->flushed = size;
            return KV_OK;
        }
        if (size > 0) {
            int rc = truncate_tail(s, seg, 0, size);
            if (rc != KV_OK)
                return rc;
        }
        uint8_t hdr[STORE_SEG_HDR_LEN];
        store_seg_hdr_encode(hdr, &(store_seg_hdr){.id = seg->id, .created_ms = store_wall_ms()});
        if (store_pwrite_all(seg->fd, hdr, sizeof(hdr), 0) != 0 || fsync(seg->fd) != 0) {
            kv_log_error("cannot write segment header", KV_UINT("segment", seg->id),
                         KV_STR("reason", strerror(errno)));
            return KV_EIO;
        }
        seg->size = seg->flushed = STORE_SEG_HDR_LEN;
        return KV_OK;
    }

    uint8_t *base = map_whole(seg->fd, size);
    if (!base) {
        kv_log_error("cannot map segment", KV_UINT("segment", seg->id),
                     KV_STR("reason", strerror(errno)));
        return KV_EIO;
    }
    /* One sequential pass over the file. */

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
        if (st == STORE_REC_OK && pos + store_rec_len(&h) <= UINT32_MAX) {
            rec_info r = {
                .type = h.type, .vlen = h.vlen, .ts = h.ts, .node = h.node, .expiry = h.expiry};
            const uint8_t *key = base + pos + STORE_REC_HDR_LEN;
            rc = load_apply(s, lc, key, h.klen, &r, seg->id, pos,
                            store_index_hash(&s->index, key, h.klen));
            if (rc != KV_OK)
                break;
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
    seg->size = seg->flushed = last ? size : (uint64_t)sb.st_size;
    return rc;
}

/* ---------- the directory ---------- */

typedef struct dir_list {
    uint32_t *segs, *hints;
    size_t nsegs, nhints, capsegs, caphints;
} dir_list;

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int push_id(uint32_t **v, size_t *n, size_t *cap, uint32_t id)
{
    uint32_t *p = kv_grow(*v, cap, *n + 1, sizeof(*p), 16);
    if (!p)
        return KV_ENOMEM;
    *v = p;
    (*v)[(*n)++] = id;
    return KV_OK;
}

/* "NNNNNNNNNN<suffix>" with a non-zero 32-bit id → the id, else 0. */
static uint32_t parse_name(const char *nm, const char *suffix)
{
    size_t sl = strlen(suffix);
    if (strlen(nm) != 10 + sl || strcmp(nm + 10, suffix) != 0)
        return 0;
    for (int i = 0; i < 10; i++)
        if (nm[i] < '0' || nm[i] > '9')
            return 0;
    unsigned long long id = strtoull(nm, NULL, 10);
    return id > UINT32_MAX ? 0 : (uint32_t)id;
}

/* Segment and hint ids, sorted; leftovers of interrupted background jobs (*.tmp) are
 * deleted. */
static int list_dir(kv_store *s, dir_list *dl)
{
    DIR *d = opendir(s->path);
    if (!d) {
        kv_log_error("cannot read store directory", KV_STR("path", s->path),
                     KV_STR("reason", strerror(errno)));
        return KV_EIO;
    }
    int rc = KV_OK;
    bool removed = false;
    struct dirent *de;
    while (rc == KV_OK && (de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        size_t l = strlen(nm);
        uint32_t id;
        if ((id = parse_name(nm, ".seg")) != 0) {
            rc = push_id(&dl->segs, &dl->nsegs, &dl->capsegs, id);
        } else if ((id = parse_name(nm, ".hint")) != 0) {
            rc = push_id(&dl->hints, &dl->nhints, &dl->caphints, id);
        } else if (l > 4 && strcmp(nm + l - 4, ".tmp") == 0) {
            if (unlinkat(s->dirfd, nm, 0) == 0) {
                kv_log_info("removed an unfinished file of an interrupted background job",
                            KV_STR("file", nm));
                removed = true;
            }
        }
    }
    closedir(d);
    if (rc != KV_OK)
        return rc;
    if (dl->nsegs)
        qsort(dl->segs, dl->nsegs, sizeof(uint32_t), cmp_u32);
    if (dl->nhints)
        qsort(dl->hints, dl->nhints, sizeof(uint32_t), cmp_u32);
    if (removed)
        s->dir_dirty = true;
    return KV_OK;
}

static bool has_id(const uint32_t *v, size_t n, uint32_t id)
{
    return n && bsearch(&id, v, n, sizeof(*v), cmp_u32) != NULL;
}

static void remove_hint(kv_store *s, uint32_t id)
{
    char nm[32];
    store_seg_name(nm, sizeof(nm), ".", id, ".hint");
    if (unlinkat(s->dirfd, nm + 2, 0) == 0)
        s->dir_dirty = true;
}

int store_recover(kv_store *s)
{
    uint64_t t0 = uv_hrtime();
    struct stat sb;
    bool fresh = stat(s->path, &sb) != 0;
    if (mkdir_p(s->path) != 0) {
        int e = errno;
        kv_log_error("cannot create store directory", KV_STR("path", s->path),
                     KV_STR("reason", strerror(e)));
        return store_errno_to_kv(e);
    }
    s->dirfd = open(s->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dirfd < 0) {
        kv_log_error("cannot open store directory", KV_STR("path", s->path),
                     KV_STR("reason", strerror(errno)));
        return KV_EIO;
    }
    if (fresh) {
        /* A new store directory: make its name durable in the data directory too. */
        char parent[PATH_MAX];
        snprintf(parent, sizeof(parent), "%s", s->path);
        char *slash = strrchr(parent, '/');
        if (slash) {
            *slash = '\0';
            int pfd = open(parent[0] ? parent : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (pfd >= 0) {
                fsync(pfd);
                close(pfd);
            }
        }
    }

    dir_list dl = {0};
    int rc = list_dir(s, &dl);
    if (rc != KV_OK)
        goto out;
    if (dl.nsegs) {
        store_seg *p = realloc(s->segs, (dl.nsegs + 2) * sizeof(*p));
        if (!p) {
            rc = KV_ENOMEM;
            goto out;
        }
        s->segs = p;
        s->capsegs = dl.nsegs + 2;
    }

    /* Open every segment and read its header: compaction outputs are never appended to,
     * so the appendable segment is the newest one that is not one. */
    uint32_t appendable = 0;
    for (size_t i = 0; i < dl.nsegs; i++) {
        char name[PATH_MAX];
        store_seg_name(name, sizeof(name), s->path, dl.segs[i], ".seg");
        int fd = open(name, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            kv_log_error("cannot open segment", KV_STR("path", name),
                         KV_STR("reason", strerror(errno)));
            rc = KV_EIO;
            goto out;
        }
        store_seg *g = &s->segs[s->nsegs++];
        *g = (store_seg){.id = dl.segs[i], .fd = fd};
        uint8_t hb[STORE_SEG_HDR_LEN];
        store_seg_hdr h;
        if (pread(fd, hb, sizeof(hb), 0) == (ssize_t)sizeof(hb) &&
            store_seg_hdr_decode(hb, sizeof(hb), &h) == STORE_SEG_HDR_OK)
            g->compacted = (h.flags & STORE_SEG_F_COMPACTED) != 0;
        if (!g->compacted)
            appendable = g->id;
    }

    /* Room in the index for every key the hint files list, before loading any: growing
     * the table on the way would rehash everything loaded so far, again and again. */
    uint64_t hinted = 0, hinted_keys = 0;
    for (size_t i = 0; i < dl.nhints; i++) {
        char nm[32];
        store_seg_name(nm, sizeof(nm), ".", dl.hints[i], ".hint");
        int hfd = openat(s->dirfd, nm + 2, O_RDONLY | O_CLOEXEC);
        uint8_t hb[STORE_HINT_HDR_LEN];
        if (hfd < 0)
            continue;
        if (pread(hfd, hb, sizeof(hb), 0) == (ssize_t)sizeof(hb) && fstat(hfd, &sb) == 0) {
            uint64_t count = store_rd64(hb + 24);
            uint64_t body = (uint64_t)sb.st_size > STORE_HINT_HDR_LEN + STORE_HINT_FOOT_LEN
                                ? (uint64_t)sb.st_size - STORE_HINT_HDR_LEN - STORE_HINT_FOOT_LEN
                                : 0;
            if (store_rd32(hb) == STORE_HINT_MAGIC && count <= body / STORE_HINT_ENT_LEN) {
                hinted += count;
                hinted_keys += body - count * STORE_HINT_ENT_LEN;
            }
        }
        close(hfd);
    }
    if (hinted && store_index_reserve(&s->index, (size_t)hinted, (size_t)hinted_keys) != KV_OK) {
        rc = KV_ENOMEM;
        goto out;
    }

    load_ctx lc = {.now = store_wall_ms()};
    bool appendable_bad = false;
    for (size_t i = 0; i < s->nsegs; i++) {
        store_seg *g = &s->segs[i];
        bool last = g->id == appendable;
        if (fstat(g->fd, &sb) != 0) {
            rc = KV_EIO;
            goto out;
        }
        if (has_id(dl.hints, dl.nhints, g->id)) {
            uint64_t fsz = (uint64_t)sb.st_size;
            rc = load_hint(s, &lc, g, fsz);
            if (rc == KV_OK) {
                g->size = g->flushed = fsz;
                store_seg_map(s, g, last && fsz < s->seg_bytes ? s->seg_bytes : fsz);
                s->st.hint_segments++;
                s->st.disk_bytes += g->size;
                /* Written at the last clean close; we are about to append, so it goes. */
                if (last)
                    remove_hint(s, g->id);
                continue;
            }
            if (rc != KV_ECORRUPT)
                goto out; /* out of memory: the hint was fine */
            /* Rejected before any entry was applied (load_hint checks it whole). */
            s->st.bad_hints++;
            kv_log_warn("hint file rejected; scanning its segment instead",
                        KV_UINT("segment", g->id));
            remove_hint(s, g->id);
        }
        bool bad = false;
        rc = scan_segment(s, &lc, g, last, &bad);
        if (rc != KV_OK)
            goto out;
        store_seg_map(s, g, last && g->size < s->seg_bytes ? s->seg_bytes : g->size);
        if (last)
            appendable_bad = bad;
        s->st.scanned_segments++;
        s->st.disk_bytes += g->size;
        if (!last)
            store_bg_queue_hint(s, g->id); /* the next open need not scan it */
    }
    if (lc.skipped_long_keys)
        kv_log_warn("records with keys longer than this build supports were ignored",
                    KV_UINT("records", lc.skipped_long_keys),
                    KV_UINT("max_key", STORE_ENT_KEY_MAX));
    kv_hlc_observe(&s->clock, &(kv_version){.ts = lc.max_ts}, lc.now);
    s->next_id = s->nsegs ? s->segs[s->nsegs - 1].id + 1 : 1;
    if (s->nsegs && s->next_id == 0) {
        rc = KV_EIO;
        goto out;
    }

    /* Hints for segments that are gone: leftovers, remove. */
    for (size_t i = 0; i < dl.nhints; i++)
        if (!store_find_seg(s, dl.hints[i]))
            remove_hint(s, dl.hints[i]);

    if (!appendable) {
        /* No segment at all, or only compaction outputs: start a fresh one. */
        store_seg seg;
        rc = store_seg_create(s, s->next_id, &seg);
        if (rc != KV_OK)
            goto out;
        s->next_id++;
        rc = store_segs_insert(s, &seg);
        if (rc != KV_OK) {
            close(seg.fd);
            goto out;
        }
        s->active_id = seg.id;
        s->st.disk_bytes += STORE_SEG_HDR_LEN;
        s->dir_dirty = true;
    } else {
        s->active_id = appendable;
        store_seg *a = store_find_seg(s, appendable);
        if (appendable_bad || a->size >= s->seg_bytes) {
            rc = store_rotate(s);
            if (rc != KV_OK)
                goto out;
        }
    }

    /* Make the layout we start from durable before taking writes. */
    store_seg *a = store_active(s);
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
        goto out;
    }
    a->dirty = false;
    for (size_t i = 0; i < s->rotated.n; i++)
        close(s->rotated.v[i]);
    s->rotated.n = 0;
    s->dir_dirty = false;

    double secs = (double)(uv_hrtime() - t0) / 1e9;
    s->st.open_seconds = secs;
    s->st.open_records = lc.records;
    kv_log_info("storage index loaded", KV_UINT("keys", s->st.keys),
                KV_UINT("entries", s->index.count), KV_UINT("records", lc.records),
                KV_UINT("segments", s->nsegs), KV_UINT("from_hints", s->st.hint_segments),
                KV_UINT("scanned", s->st.scanned_segments), KV_FLOAT("seconds", secs),
                KV_FLOAT("keys_per_s", secs > 0 ? (double)s->index.count / secs : 0.0));
    if (s->st.corrupt_records)
        kv_log_warn("store opened with damage repaired or skipped",
                    KV_UINT("corrupt_records", s->st.corrupt_records),
                    KV_UINT("truncated_bytes", s->st.truncated_bytes));
out:
    free(dl.segs);
    free(dl.hints);
    return rc;
}
