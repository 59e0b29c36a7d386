/*
 * ring.c — the consistent-hash ring (see ring.h). Pure; a built ring is immutable, so any
 * number of threads may read it at once.
 *
 * Design notes:
 * - Members are sorted by id once, so a member index is a stable name for a member on
 *   every node that built the ring from the same member set, and a tie between two
 *   equal token values can be broken by member index (equivalent to breaking it by id).
 * - Tokens are one sorted array of (value, member index) pairs. The owner token of a
 *   hash is found by binary search (first value > hash); a walk then steps clockwise,
 *   skipping members already met. The walk's "seen" set lives on the caller's stack
 *   (a bitmap up to RING_BITMAP_MAX members, a scan of the output beyond), because the
 *   ring itself must stay read-only for concurrent readers.
 * - Shares and the diff work on whole ranges: the preference list is the same for every
 *   hash between two consecutive token values, so one walk per range (or per elementary
 *   interval of two rings' merged boundaries) is exact. Range lengths are summed as
 *   128-bit integers (two 64-bit words) so a member's share is exact before the final
 *   division by 2^64.
 */
#include "ring/ring.h"

#include "common/hash.h"
#include "kvstore/error.h"

#include <stdlib.h>
#include <string.h>

typedef struct ring_token {
    uint64_t value;
    uint32_t member; /* index into kv_ring.members */
} ring_token;

struct kv_ring {
    size_t nmembers;
    uint32_t tokens;         /* per member */
    size_t ntokens;          /* nmembers * tokens */
    kv_ring_member *members; /* sorted by id */
    ring_token *tok;         /* sorted by (value, member) */
};

/* Walks over rings of up to this many members track "seen" with a stack bitmap. */
#define RING_BITMAP_MAX 4096

/* ---- build ------------------------------------------------------------------------- */

static int cmp_member(const void *a, const void *b)
{
    const kv_ring_member *x = a, *y = b;
    return memcmp(x->id.b, y->id.b, SWIM_ID_LEN);
}

static int cmp_token(const void *a, const void *b)
{
    const ring_token *x = a, *y = b;
    if (x->value != y->value)
        return x->value < y->value ? -1 : 1;
    /* member indices follow id order, so this is the header's "ties by member id" */
    return x->member < y->member ? -1 : x->member > y->member;
}

static uint64_t token_value(const swim_member_id *id, uint32_t i)
{
    uint8_t in[SWIM_ID_LEN + 4];
    memcpy(in, id->b, SWIM_ID_LEN);
    in[SWIM_ID_LEN + 0] = (uint8_t)(i);
    in[SWIM_ID_LEN + 1] = (uint8_t)(i >> 8);
    in[SWIM_ID_LEN + 2] = (uint8_t)(i >> 16);
    in[SWIM_ID_LEN + 3] = (uint8_t)(i >> 24);
    /* Aligned to whole anti-entropy tree leaves (ring.h, "Alignment"). */
    return kv_ring_hash(in, sizeof(in)) & ~((UINT64_C(1) << (64 - KV_RING_ALIGN_BITS)) - 1);
}

int kv_ring_build(kv_ring **out, const kv_ring_member *members, size_t n, uint32_t tokens)
{
    if (!out || tokens < 1 || tokens > KV_RING_TOKENS_MAX || (n > 0 && !members) ||
        n > UINT32_MAX || n > SIZE_MAX / tokens / sizeof(ring_token))
        return KV_EINVAL;
    kv_ring *r = calloc(1, sizeof(*r));
    if (!r)
        return KV_ENOMEM;
    r->nmembers = n;
    r->tokens = tokens;
    r->ntokens = n * tokens;
    if (n > 0) {
        r->members = malloc(n * sizeof(*r->members));
        r->tok = malloc(r->ntokens * sizeof(*r->tok));
        if (!r->members || !r->tok) {
            kv_ring_free(r);
            return KV_ENOMEM;
        }
        memcpy(r->members, members, n * sizeof(*members));
        qsort(r->members, n, sizeof(*r->members), cmp_member);
        for (size_t i = 0; i < n; i++) {
            /* the copies come from the network: always terminated, whatever was sent */
            r->members[i].name[SWIM_NAME_MAX] = '\0';
            r->members[i].addr[SWIM_ADDR_MAX] = '\0';
            if (i > 0 && cmp_member(&r->members[i - 1], &r->members[i]) == 0) {
                kv_ring_free(r);
                return KV_EINVAL;
            }
        }
        size_t k = 0;
        for (size_t m = 0; m < n; m++)
            for (uint32_t t = 0; t < tokens; t++) {
                r->tok[k].value = token_value(&r->members[m].id, t);
                r->tok[k].member = (uint32_t)m;
                k++;
            }
        qsort(r->tok, r->ntokens, sizeof(*r->tok), cmp_token);
    }
    *out = r;
    return KV_OK;
}

void kv_ring_free(kv_ring *r)
{
    if (!r)
        return;
    free(r->members);
    free(r->tok);
    free(r);
}

/* ---- queries ----------------------------------------------------------------------- */

size_t kv_ring_member_count(const kv_ring *r)
{
    return r->nmembers;
}

uint32_t kv_ring_tokens(const kv_ring *r)
{
    return r->tokens;
}

const kv_ring_member *kv_ring_member_at(const kv_ring *r, size_t i)
{
    return i < r->nmembers ? &r->members[i] : NULL;
}

long kv_ring_find(const kv_ring *r, const swim_member_id *id)
{
    size_t lo = 0, hi = r->nmembers;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = memcmp(r->members[mid].id.b, id->b, SWIM_ID_LEN);
        if (c == 0)
            return (long)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

bool kv_ring_equal(const kv_ring *a, const kv_ring *b)
{
    if (a->nmembers != b->nmembers || a->tokens != b->tokens)
        return false;
    for (size_t i = 0; i < a->nmembers; i++)
        if (memcmp(a->members[i].id.b, b->members[i].id.b, SWIM_ID_LEN) != 0)
            return false;
    return true;
}

/* Index of the owner token of hash: the first token with value > hash, wrapping to 0. */
static size_t owner_token(const kv_ring *r, uint64_t hash)
{
    size_t lo = 0, hi = r->ntokens;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->tok[mid].value <= hash)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo == r->ntokens ? 0 : lo;
}

/* The walk from token index start (see kv_ring_walk). */
static size_t walk_from(const kv_ring *r, size_t start, size_t want, uint32_t *out)
{
    size_t goal = want < r->nmembers ? want : r->nmembers;
    if (goal == 0)
        return 0;
    uint64_t seen[RING_BITMAP_MAX / 64];
    bool bitmap = r->nmembers <= RING_BITMAP_MAX;
    if (bitmap)
        memset(seen, 0, (r->nmembers + 63) / 64 * sizeof(seen[0]));
    size_t k = 0, t = start;
    /* Every member owns a token, so a full turn always meets goal members. */
    for (size_t step = 0; step < r->ntokens && k < goal; step++) {
        uint32_t m = r->tok[t].member;
        bool dup = false;
        if (bitmap) {
            dup = (seen[m / 64] >> (m % 64)) & 1;
            seen[m / 64] |= (uint64_t)1 << (m % 64);
        } else {
            for (size_t j = 0; j < k && !dup; j++)
                dup = out[j] == m;
        }
        if (!dup)
            out[k++] = m;
        if (++t == r->ntokens)
            t = 0;
    }
    return k;
}

size_t kv_ring_walk(const kv_ring *r, uint64_t hash, size_t want, uint32_t *out)
{
    if (r->ntokens == 0 || want == 0)
        return 0;
    return walk_from(r, owner_token(r, hash), want, out);
}

size_t kv_ring_range_count(const kv_ring *r)
{
    return r->ntokens;
}

void kv_ring_range_at(const kv_ring *r, size_t k, uint64_t *lo, uint64_t *hi)
{
    if (k >= r->ntokens) {
        *lo = *hi = 0;
        return;
    }
    *hi = r->tok[k].value;
    *lo = r->tok[k == 0 ? r->ntokens - 1 : k - 1].value;
}

/* ---- shares ------------------------------------------------------------------------ */

/* A 128-bit unsigned sum of range lengths. */
typedef struct ring_u128 {
    uint64_t hi, lo;
} ring_u128;

static void u128_add(ring_u128 *a, uint64_t v)
{
    a->lo += v;
    if (a->lo < v)
        a->hi++;
}

/* A sum of lengths as a fraction of the 2^64 key space. */
static double u128_fraction(const ring_u128 *a)
{
    return (double)((long double)a->hi + (long double)a->lo / 18446744073709551616.0L);
}

/*
 * Add the length of range k to the members of its preference list of size n: sums[m]
 * for every m (sums != NULL), or only *one_sum for member `one`. A single token owns the
 * whole ring (2^64, which does not fit a word: counted as 2^64 - 1 plus 1).
 */
static void share_ranges(const kv_ring *r, size_t n, ring_u128 *sums, uint32_t one,
                         ring_u128 *one_sum, uint32_t *list)
{
    for (size_t k = 0; k < r->ntokens; k++) {
        uint64_t lo, hi;
        kv_ring_range_at(r, k, &lo, &hi);
        bool whole = r->ntokens == 1;
        uint64_t len = hi - lo; /* wraps correctly for k = 0 */
        if (!whole && len == 0)
            continue;
        size_t got = walk_from(r, k, n, list);
        for (size_t j = 0; j < got; j++) {
            ring_u128 *acc = sums ? &sums[list[j]] : list[j] == one ? one_sum : NULL;
            if (!acc)
                continue;
            if (whole) {
                u128_add(acc, UINT64_MAX);
                u128_add(acc, 1);
            } else {
                u128_add(acc, len);
            }
        }
    }
}

double kv_ring_share(const kv_ring *r, size_t i, size_t n)
{
    if (i >= r->nmembers || n == 0)
        return 0.0;
    if (n > r->nmembers)
        n = r->nmembers;
    uint32_t stack[64];
    uint32_t *list = n <= 64 ? stack : malloc(n * sizeof(*list));
    if (!list)
        return 0.0; /* out of memory: nothing sensible to report, and no error channel */
    ring_u128 sum = {0, 0};
    share_ranges(r, n, NULL, (uint32_t)i, &sum, list);
    if (list != stack)
        free(list);
    return u128_fraction(&sum);
}

int kv_ring_shares(const kv_ring *r, size_t n, double *out)
{
    if (n == 0)
        return KV_EINVAL;
    if (r->nmembers == 0)
        return KV_OK;
    if (n > r->nmembers)
        n = r->nmembers;
    ring_u128 *sums = calloc(r->nmembers, sizeof(*sums));
    uint32_t *list = malloc(n * sizeof(*list));
    if (!sums || !list) {
        free(sums);
        free(list);
        return KV_ENOMEM;
    }
    share_ranges(r, n, sums, 0, NULL, list);
    for (size_t i = 0; i < r->nmembers; i++)
        out[i] = u128_fraction(&sums[i]);
    free(sums);
    free(list);
    return KV_OK;
}

/* ---- diff -------------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The preference list (ids) of hash on r, into ids[0..); returns its length. */
static uint32_t pref_ids(const kv_ring *r, uint64_t hash, size_t n, uint32_t *scratch,
                         swim_member_id *ids)
{
    size_t k = kv_ring_walk(r, hash, n, scratch);
    for (size_t j = 0; j < k; j++)
        ids[j] = r->members[scratch[j]].id;
    return (uint32_t)k;
}

static bool same_lists(const kv_ring_move *a, const kv_ring_move *b)
{
    return a->n_from == b->n_from && a->n_to == b->n_to &&
           memcmp(a->from, b->from, a->n_from * sizeof(a->from[0])) == 0 &&
           memcmp(a->to, b->to, a->n_to * sizeof(a->to[0])) == 0;
}

int kv_ring_diff(const kv_ring *old_ring, const kv_ring *new_ring, size_t n, kv_ring_move **out,
                 size_t *count)
{
    if (!old_ring || !new_ring || !out || !count || n < 1 || n > KV_RING_DIFF_MAX_N)
        return KV_EINVAL;
    /* The boundaries where either ring's lists can change: every token of both. */
    size_t nb = old_ring->ntokens + new_ring->ntokens;
    if (nb == 0) {
        *out = NULL;
        *count = 0;
        return KV_OK;
    }
    uint64_t *b = malloc(nb * sizeof(*b));
    if (!b)
        return KV_ENOMEM;
    for (size_t i = 0; i < old_ring->ntokens; i++)
        b[i] = old_ring->tok[i].value;
    for (size_t i = 0; i < new_ring->ntokens; i++)
        b[old_ring->ntokens + i] = new_ring->tok[i].value;
    qsort(b, nb, sizeof(*b), cmp_u64);
    size_t u = 0;
    for (size_t i = 0; i < nb; i++)
        if (u == 0 || b[i] != b[u - 1])
            b[u++] = b[i];

    size_t cap = 16, nm = 0;
    kv_ring_move *mv = malloc(cap * sizeof(*mv));
    if (!mv) {
        free(b);
        return KV_ENOMEM;
    }
    uint32_t scratch[KV_RING_DIFF_MAX_N];
    kv_ring_move cur;
    /*
     * Elementary interval j is [b[j-1], b[j]) (j = 0 wraps from the last boundary; with a
     * single boundary it is the whole ring, lo == hi). No token of either ring lies
     * strictly inside, so both lists are constant on it: evaluate them at lo.
     */
    for (size_t j = 0; j < u; j++) {
        memset(&cur, 0, sizeof(cur));
        cur.lo = b[j == 0 ? u - 1 : j - 1];
        cur.hi = b[j];
        cur.n_from = pref_ids(old_ring, cur.lo, n, scratch, cur.from);
        cur.n_to = pref_ids(new_ring, cur.lo, n, scratch, cur.to);
        if (cur.n_from == cur.n_to &&
            memcmp(cur.from, cur.to, cur.n_from * sizeof(cur.from[0])) == 0)
            continue;
        if (nm > 0 && mv[nm - 1].hi == cur.lo && same_lists(&mv[nm - 1], &cur)) {
            mv[nm - 1].hi = cur.hi;
            continue;
        }
        if (nm == cap) {
            kv_ring_move *grown = realloc(mv, 2 * cap * sizeof(*mv));
            if (!grown) {
                free(mv);
                free(b);
                return KV_ENOMEM;
            }
            mv = grown;
            cap *= 2;
        }
        mv[nm++] = cur;
    }
    free(b);
    /* The last move may continue into the first across the top of the ring. */
    if (nm > 1 && mv[nm - 1].hi == mv[0].lo && same_lists(&mv[nm - 1], &mv[0])) {
        mv[0].lo = mv[nm - 1].lo;
        nm--;
    }
    if (nm == 0) {
        free(mv);
        mv = NULL;
    }
    *out = mv;
    *count = nm;
    return KV_OK;
}
