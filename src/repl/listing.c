/*
 * listing.c — key listing across the cluster (see listing.h): the query parser, the
 * node-local scan behind LIST and the coordinator's merge of the answers into one page.
 * The scan runs on the loop thread that owns the store; the rest is pure.
 *
 * Design notes
 * - Order is (ring hash, key bytes): the store has no sorted index, so every scan visits
 *   every entry anyway and the ring hash costs nothing extra (store_range computes it).
 * - The scan keeps only the smallest `limit` matches in a bounded max-heap: memory is
 *   O(limit) whatever the store holds. A match that does not fit (bigger than the heap's
 *   top, or evicting it) makes the answer truncated.
 * - The merge keeps every item of every answer (members × limit at most), sorts once
 *   when rendering and takes the newest version of each key. It may only speak for keys
 *   up to the bound — the smallest last key among truncated answers — because a
 *   truncated member may hold newer versions (tombstones included) beyond what it sent.
 * - Progress: every item the merge accepts is strictly after the request's cursor, and a
 *   page's next_cursor is an accepted item (the last one the page covered), so a client
 *   following next_cursor moves forward by at least one key per page, even when a page
 *   shows no keys because everything it covered was deleted.
 */
#include "repl/listing.h"

#include "common/hex.h"
#include "common/pct.h"
#include "common/log.h"
#include "kvstore/error.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- order ------------------------------------------------------------------------- */

/* <0, 0, >0 as (ha, ka) sorts before, equal to, after (hb, kb). */
static int key_cmp(uint64_t ha, const uint8_t *ka, size_t la, uint64_t hb, const uint8_t *kb,
                   size_t lb)
{
    if (ha != hb)
        return ha < hb ? -1 : 1;
    size_t n = la < lb ? la : lb;
    int c = n ? memcmp(ka, kb, n) : 0;
    if (c != 0)
        return c < 0 ? -1 : 1;
    return la < lb ? -1 : (la > lb ? 1 : 0);
}

/* One key held by a scan or a merge; key is malloc'ed. */
typedef struct list_ent {
    uint64_t hash;
    uint8_t *key;
    size_t klen;
    size_t kcap;
    kv_version ver;
    uint32_t flags;
} list_ent;

static int ent_cmp(const list_ent *a, const list_ent *b)
{
    return key_cmp(a->hash, a->key, a->klen, b->hash, b->key, b->klen);
}

static int ent_qsort_cmp(const void *pa, const void *pb)
{
    return ent_cmp(pa, pb);
}

/* (hash, key) ascending, then newest version first: the first of a run is the winner. */
static int ent_qsort_cmp_newest(const void *pa, const void *pb)
{
    const list_ent *a = pa, *b = pb;
    int c = ent_cmp(a, b);
    if (c != 0)
        return c;
    return -kv_version_cmp(&a->ver, &b->ver);
}

/* Copy key into e, reusing its buffer when large enough. KV_OK or KV_ENOMEM. */
static int ent_set_key(list_ent *e, const void *key, size_t klen)
{
    if (e->kcap < klen) {
        uint8_t *k = realloc(e->key, klen);
        if (!k)
            return KV_ENOMEM;
        e->key = k;
        e->kcap = klen;
    }
    memcpy(e->key, key, klen);
    e->klen = klen;
    return KV_OK;
}

/* True if the key matches prefix p and sorts after the cursor (if any). */
static bool wanted(const uint8_t *prefix, size_t plen, bool has_cursor, uint64_t ch,
                   const uint8_t *ck, size_t cklen, uint64_t hash, const uint8_t *key, size_t klen)
{
    if (klen < plen || (plen && memcmp(key, prefix, plen) != 0))
        return false;
    return !has_cursor || key_cmp(hash, key, klen, ch, ck, cklen) > 0;
}

/* ---- query ------------------------------------------------------------------------- */

/* The cursor text: 16 hex digits of the hash, '-', the key's bytes in hex (2..2048). */
static bool parse_cursor(const uint8_t *s, size_t n, kv_list_params *p)
{
    if (n < 16 + 1 + 2 || s[16] != '-' || (n - 17) % 2 != 0 || (n - 17) / 2 > KV_REPL_KEY_MAX)
        return false;
    uint64_t h = 0;
    for (size_t i = 0; i < 16; i++) {
        int v = kv_hexval((char)s[i]);
        if (v < 0)
            return false;
        h = h << 4 | (uint64_t)v;
    }
    size_t klen = (n - 17) / 2;
    for (size_t i = 0; i < klen; i++) {
        int hi = kv_hexval((char)s[17 + 2 * i]), lo = kv_hexval((char)s[18 + 2 * i]);
        if (hi < 0 || lo < 0)
            return false;
        p->cursor_key[i] = (uint8_t)(hi << 4 | lo);
    }
    p->cursor_hash = h;
    p->cursor_klen = klen;
    p->has_cursor = true;
    return true;
}

static int query_error(kv_buf *err, const char *msg)
{
    if (err) {
        kv_buf_reset(err);
        kv_buf_appends(err, msg);
    }
    return KV_EINVAL;
}

int kv_list_parse_query(const char *q, size_t qlen, kv_list_params *out, kv_buf *err)
{
    if (!out || (!q && qlen))
        return query_error(err, "bad query string");
    /* Parsed into a local copy: out is written only on success. */
    kv_list_params *p = calloc(1, sizeof(*p));
    uint8_t *tmp = malloc(2 * KV_REPL_KEY_MAX + 17);
    if (!p || !tmp) {
        free(p);
        free(tmp);
        return KV_ENOMEM;
    }
    p->limit = KV_LIST_DEFAULT_LIMIT;
    bool seen_prefix = false, seen_limit = false, seen_cursor = false;
    const char *msg = NULL;
    char msgbuf[128];
    size_t i = 0;
    while (i < qlen && !msg) {
        size_t end = i;
        while (end < qlen && q[end] != '&')
            end++;
        const char *name = q + i, *eq = memchr(name, '=', end - i);
        size_t nlen = eq ? (size_t)(eq - name) : end - i;
        const char *val = eq ? eq + 1 : q + end;
        size_t vlen = (size_t)(q + end - val);
        i = end + 1;
        size_t at = 0, dlen = 0;
        if (nlen == 6 && memcmp(name, "prefix", 6) == 0) {
            if (seen_prefix) {
                msg = "prefix: given more than once";
                break;
            }
            seen_prefix = true;
            int rc = kv_pct_decode(val, vlen, p->prefix, sizeof(p->prefix), &p->plen, &at);
            if (rc == KV_EINVAL) {
                snprintf(
                    msgbuf, sizeof(msgbuf),
                    "prefix: bad percent-encoding at character %zu of its value (a '%%' must be "
                    "followed by two hex digits)",
                    at + 1);
                msg = msgbuf;
            } else if (rc == KV_ETOOBIG) {
                msg = "prefix: longer than the longest key (1024 bytes)";
            }
        } else if (nlen == 5 && memcmp(name, "limit", 5) == 0) {
            if (seen_limit) {
                msg = "limit: given more than once";
                break;
            }
            seen_limit = true;
            uint64_t v = 0;
            bool ok = vlen > 0 && vlen <= 10;
            for (size_t k = 0; ok && k < vlen; k++) {
                if (val[k] < '0' || val[k] > '9')
                    ok = false;
                else
                    v = v * 10 + (uint64_t)(val[k] - '0');
            }
            if (!ok || v < 1 || v > KV_LIST_MAX_LIMIT)
                msg = "limit: must be a whole number from 1 to 1000";
            else
                p->limit = (uint32_t)v;
        } else if (nlen == 6 && memcmp(name, "cursor", 6) == 0) {
            if (seen_cursor) {
                msg = "cursor: given more than once";
                break;
            }
            seen_cursor = true;
            /* Empty means "from the start", so a client loop may always send cursor=. */
            int rc = kv_pct_decode(val, vlen, tmp, 2 * KV_REPL_KEY_MAX + 17, &dlen, &at);
            if (rc != KV_OK || (dlen > 0 && !parse_cursor(tmp, dlen, p)))
                msg = "cursor: not a cursor returned by this API (pass next_cursor unchanged)";
        }
        /* anything else (r=, consistency=, ...) is not ours: ignored */
    }
    free(tmp);
    if (msg) {
        free(p);
        return query_error(err, msg);
    }
    *out = *p;
    free(p);
    return KV_OK;
}

/* ---- the node-local scan ----------------------------------------------------------- */

struct kv_list_scan {
    uint8_t prefix[KV_REPL_KEY_MAX];
    size_t plen;
    uint32_t limit;
    bool has_cursor;
    uint64_t cursor_hash;
    uint8_t cursor_key[KV_REPL_KEY_MAX];
    size_t cursor_klen;

    store_cursor cur;
    list_ent *heap; /* max-heap by (hash, key) while scanning; sorted ascending after */
    uint32_t n, cap;
    bool truncated;
    bool done;
    int err;
    kv_repl_item *items; /* the result, pointing into heap */
};

kv_list_scan *kv_list_scan_new(const kv_repl_msg *m)
{
    if (!m)
        return NULL;
    kv_list_scan *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    /* LIST's bounds are checked by the decoder; clamp anyway so a bad caller cannot make
     * an answer that is truncated yet empty (the merge refuses those). */
    s->plen = m->klen <= KV_REPL_KEY_MAX ? m->klen : KV_REPL_KEY_MAX;
    if (s->plen)
        memcpy(s->prefix, m->key, s->plen);
    s->limit = m->limit < 1 ? 1 : (m->limit > KV_REPL_LIST_MAX ? KV_REPL_LIST_MAX : m->limit);
    if (m->has_cursor && m->cursor_klen <= KV_REPL_KEY_MAX) {
        s->has_cursor = true;
        s->cursor_hash = m->cursor_hash;
        s->cursor_klen = m->cursor_klen;
        if (m->cursor_klen)
            memcpy(s->cursor_key, m->cursor_key, m->cursor_klen);
    }
    return s;
}

static void heap_swap(list_ent *a, list_ent *b)
{
    list_ent t = *a;
    *a = *b;
    *b = t;
}

static void heap_up(list_ent *h, uint32_t i)
{
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (ent_cmp(&h[parent], &h[i]) >= 0)
            break;
        heap_swap(&h[parent], &h[i]);
        i = parent;
    }
}

static void heap_down(list_ent *h, uint32_t n, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, big = i;
        if (l < n && ent_cmp(&h[l], &h[big]) > 0)
            big = l;
        if (r < n && ent_cmp(&h[r], &h[big]) > 0)
            big = r;
        if (big == i)
            return;
        heap_swap(&h[i], &h[big]);
        i = big;
    }
}

static bool scan_fn(void *arg, const kv_store_item *it)
{
    kv_list_scan *s = arg;
    const uint8_t *key = it->key;
    if (!wanted(s->prefix, s->plen, s->has_cursor, s->cursor_hash, s->cursor_key, s->cursor_klen,
                it->hash, key, it->klen))
        return true;
    uint32_t flags = it->tombstone ? KV_REPL_F_TOMBSTONE : (it->expired ? KV_REPL_F_EXPIRED : 0);
    if (s->n == s->limit) {
        /* Full: one more match than fits, whichever of the two is dropped. */
        s->truncated = true;
        if (key_cmp(it->hash, key, it->klen, s->heap[0].hash, s->heap[0].key, s->heap[0].klen) >= 0)
            return true;
        list_ent *top = &s->heap[0];
        if (ent_set_key(top, key, it->klen) != KV_OK) {
            s->err = KV_ENOMEM;
            return false;
        }
        top->hash = it->hash;
        top->ver = it->ver;
        top->flags = flags;
        heap_down(s->heap, s->n, 0);
        return true;
    }
    if (s->n == s->cap) {
        uint32_t ncap = s->cap ? s->cap * 2 : 64;
        if (ncap > s->limit)
            ncap = s->limit;
        list_ent *nh = realloc(s->heap, (size_t)ncap * sizeof(*nh));
        if (!nh) {
            s->err = KV_ENOMEM;
            return false;
        }
        s->heap = nh;
        s->cap = ncap;
    }
    list_ent *e = &s->heap[s->n];
    memset(e, 0, sizeof(*e));
    if (ent_set_key(e, key, it->klen) != KV_OK) {
        s->err = KV_ENOMEM;
        return false;
    }
    e->hash = it->hash;
    e->ver = it->ver;
    e->flags = flags;
    s->n++;
    heap_up(s->heap, s->n - 1);
    return true;
}

int kv_list_scan_step(kv_list_scan *s, kv_store *st, bool *done)
{
    if (!s || !st || !done)
        return KV_EINVAL;
    if (s->err)
        return s->err;
    if (s->done) {
        *done = true;
        return KV_OK;
    }
    /* Only hashes at or after the cursor's can hold keys after it: [cursor_hash, 2^64),
     * which store_range spells (cursor_hash, 0) — and (0, 0) is the whole ring. */
    uint64_t lo = s->has_cursor ? s->cursor_hash : 0;
    int rc = store_range(st, lo, 0, &s->cur, 0, scan_fn, s);
    if (rc == KV_OK && s->err)
        rc = s->err;
    if (rc != KV_OK)
        return rc;
    if (s->cur.done) {
        if (s->n) {
            qsort(s->heap, s->n, sizeof(*s->heap), ent_qsort_cmp);
            s->items = calloc(s->n, sizeof(*s->items));
            if (!s->items) {
                s->err = KV_ENOMEM;
                return KV_ENOMEM;
            }
        }
        for (uint32_t i = 0; i < s->n; i++)
            s->items[i] = (kv_repl_item){.key = s->heap[i].key,
                                         .klen = s->heap[i].klen,
                                         .hash = s->heap[i].hash,
                                         .ver = s->heap[i].ver,
                                         .flags = s->heap[i].flags};
        s->done = true;
    }
    *done = s->done;
    return KV_OK;
}

void kv_list_scan_result(const kv_list_scan *s, const kv_repl_item **items, uint32_t *n,
                         bool *truncated)
{
    bool ok = s && s->done;
    if (items)
        *items = ok ? s->items : NULL;
    if (n)
        *n = ok ? s->n : 0;
    if (truncated)
        *truncated = ok && s->truncated;
}

void kv_list_scan_free(kv_list_scan *s)
{
    if (!s)
        return;
    for (uint32_t i = 0; i < s->n; i++)
        free(s->heap[i].key);
    free(s->heap);
    free(s->items);
    free(s);
}

/* ---- the coordinator's merge ------------------------------------------------------- */

struct kv_list_merge {
    kv_list_params p;
    list_ent *ents; /* every accepted item of every answer */
    size_t n, cap;
    bool truncated; /* some answer was truncated: the page ends at the bound */
    uint64_t bound_hash;
    uint8_t bound_key[KV_REPL_KEY_MAX];
    size_t bound_klen;
};

kv_list_merge *kv_list_merge_new(const kv_list_params *p)
{
    if (!p)
        return NULL;
    kv_list_merge *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->p = *p;
    if (m->p.limit < 1)
        m->p.limit = 1;
    if (m->p.plen > KV_REPL_KEY_MAX)
        m->p.plen = KV_REPL_KEY_MAX;
    if (m->p.cursor_klen > KV_REPL_KEY_MAX)
        m->p.has_cursor = false;
    return m;
}

int kv_list_merge_add(kv_list_merge *m, const kv_repl_item *items, uint32_t n, bool truncated)
{
    if (!m || (n && !items))
        return KV_EINVAL;
    const kv_list_params *p = &m->p;
    /* Validate first so that a refused answer leaves the merge unchanged. */
    const kv_repl_item *last = NULL;
    size_t ok = 0;
    for (uint32_t i = 0; i < n; i++) {
        const kv_repl_item *it = &items[i];
        if (!it->key || it->klen == 0 || it->klen > KV_REPL_KEY_MAX ||
            !wanted(p->prefix, p->plen, p->has_cursor, p->cursor_hash, p->cursor_key,
                    p->cursor_klen, it->hash, it->key, it->klen))
            continue;
        ok++;
        if (!last || key_cmp(it->hash, it->key, it->klen, last->hash, last->key, last->klen) > 0)
            last = it;
    }
    if (ok < n)
        kv_log_warn("key listing: a member answered with keys outside the request; ignored",
                    KV_UINT("ignored", n - ok), KV_UINT("items", n));
    /* "Stopped at the limit" with nothing to show for it cannot come from a correct
     * member, and there is no bound to vouch up to: page on it and no progress is made. */
    if (truncated && !last)
        return KV_EPROTO;
    if (m->n + ok > m->cap) {
        size_t ncap = m->cap ? m->cap : 64;
        while (ncap < m->n + ok)
            ncap *= 2;
        list_ent *ne = realloc(m->ents, ncap * sizeof(*ne));
        if (!ne)
            return KV_ENOMEM;
        m->ents = ne;
        m->cap = ncap;
    }
    size_t start = m->n;
    for (uint32_t i = 0; i < n; i++) {
        const kv_repl_item *it = &items[i];
        if (!it->key || it->klen == 0 || it->klen > KV_REPL_KEY_MAX ||
            !wanted(p->prefix, p->plen, p->has_cursor, p->cursor_hash, p->cursor_key,
                    p->cursor_klen, it->hash, it->key, it->klen))
            continue;
        list_ent *e = &m->ents[m->n];
        memset(e, 0, sizeof(*e));
        if (ent_set_key(e, it->key, it->klen) != KV_OK) {
            while (m->n > start)
                free(m->ents[--m->n].key);
            return KV_ENOMEM;
        }
        e->hash = it->hash;
        e->ver = it->ver;
        e->flags = it->flags;
        m->n++;
    }
    if (truncated && (!m->truncated || key_cmp(last->hash, last->key, last->klen, m->bound_hash,
                                               m->bound_key, m->bound_klen) < 0)) {
        m->truncated = true;
        m->bound_hash = last->hash;
        memcpy(m->bound_key, last->key, last->klen);
        m->bound_klen = last->klen;
    }
    return KV_OK;
}

/* Characters a path segment of /v1/kv/{key} takes as they are (RFC 3986 pchar minus
 * pct-encoded): unreserved and the sub-delims plus ':' and '@'. */
static bool pchar_plain(uint8_t c)
{
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("-._~:@!$&'()*+,;=", c) != NULL;
}

static int render_key(kv_buf *out, const uint8_t *k, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    int rc = kv_buf_reserve(out, 3 * n);
    if (rc != KV_OK)
        return rc;
    for (size_t i = 0; i < n; i++) {
        if (pchar_plain(k[i])) {
            out->data[out->len++] = (char)k[i];
        } else {
            out->data[out->len++] = '%';
            out->data[out->len++] = hex[k[i] >> 4];
            out->data[out->len++] = hex[k[i] & 15];
        }
    }
    out->data[out->len] = '\0';
    return KV_OK;
}

static int render_cursor(kv_buf *out, const list_ent *e)
{
    static const char hex[] = "0123456789abcdef";
    int rc = kv_buf_printf(out, "\"%016" PRIx64 "-", e->hash);
    if (rc == KV_OK)
        rc = kv_buf_reserve(out, 2 * e->klen + 1);
    if (rc != KV_OK)
        return rc;
    for (size_t i = 0; i < e->klen; i++) {
        out->data[out->len++] = hex[e->key[i] >> 4];
        out->data[out->len++] = hex[e->key[i] & 15];
    }
    out->data[out->len++] = '"';
    out->data[out->len] = '\0';
    return KV_OK;
}

int kv_list_merge_render(kv_list_merge *m, kv_buf *out)
{
    if (!m || !out)
        return KV_EINVAL;
    kv_buf_reset(out);
    if (m->n > 1)
        qsort(m->ents, m->n, sizeof(*m->ents), ent_qsort_cmp_newest);
    int rc = kv_buf_appends(out, "{\"keys\":[");
    uint32_t shown = 0;
    const list_ent *covered = NULL; /* the last key (shown or hidden) this page speaks for */
    bool more = false;              /* a live key after `covered` is known */
    for (size_t i = 0; i < m->n && rc == KV_OK;) {
        const list_ent *e = &m->ents[i];
        if (m->truncated &&
            key_cmp(e->hash, e->key, e->klen, m->bound_hash, m->bound_key, m->bound_klen) > 0)
            break; /* beyond what every truncated member sent */
        /* The run of e's key, newest first. Equal newest versions are the same write as
         * seen by different members; if one of them already counts it expired (clocks
         * differ by a little), hide it. */
        uint32_t flags = e->flags;
        size_t j = i + 1;
        for (; j < m->n && ent_cmp(&m->ents[j], e) == 0; j++)
            if (kv_version_cmp(&m->ents[j].ver, &e->ver) == 0)
                flags |= m->ents[j].flags;
        bool live = (flags & (KV_REPL_F_TOMBSTONE | KV_REPL_F_EXPIRED)) == 0;
        if (live) {
            if (shown == m->p.limit) {
                more = true;
                break;
            }
            if (shown)
                rc = kv_buf_appends(out, ",");
            if (rc == KV_OK)
                rc = kv_buf_appends(out, "{\"key\":\"");
            if (rc == KV_OK)
                rc = render_key(out, e->key, e->klen);
            if (rc == KV_OK)
                rc = kv_buf_printf(out, "\",\"version\":\"%" PRIu64 ".%" PRIu32 "\"}", e->ver.ts,
                                   e->ver.node);
            shown++;
        }
        covered = e;
        i = j;
    }
    if (rc == KV_OK)
        rc = kv_buf_appends(out, "],\"next_cursor\":");
    /* With a truncated answer the page ends at the bound — itself an item, so `covered`
     * is set; otherwise the page ends early only when a live key did not fit. */
    if (rc == KV_OK && (more || m->truncated) && covered)
        rc = render_cursor(out, covered);
    else if (rc == KV_OK)
        rc = kv_buf_appends(out, "null");
    if (rc == KV_OK)
        rc = kv_buf_appends(out, "}");
    return rc;
}

void kv_list_merge_free(kv_list_merge *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++)
        free(m->ents[i].key);
    free(m->ents);
    free(m);
}
