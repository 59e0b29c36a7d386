/*
 * swim.c — the SWIM + Lifeguard membership core (see swim.h for the contract).
 *
 * Sans-I/O: every function here runs on the caller's thread, takes time as an argument
 * and returns its effects through the outbox and the event queue. No globals.
 *
 * Design notes (the state machine)
 * --------------------------------
 * Members. A flat array of swim_mem (self at index 0), an open-addressing table from id
 * to index (holding each member's incarnation and state too, so redundant gossip is
 * dropped after one lookup), and the view digest kept up to date incrementally (a sum
 * of per-member hashes), so that push-pull can tell "same view" in O(1).
 *
 * Precedence of news about member M (SWIM): ALIVE(i) beats SUSPECT(j) and ALIVE(j) only
 * when i > j; SUSPECT(i) beats ALIVE(j) when i >= j; DEAD/LEFT(i) beat ALIVE/SUSPECT(j)
 * when i >= j. Only M raises its own incarnation: when it hears itself suspected or
 * declared dead at an incarnation >= its own, it refutes with a higher one. LEFT is never
 * refuted; a node that left and restarts comes back with a higher incarnation.
 *
 * Probing, one round per (scaled) probe interval:
 *   IDLE --probe_at--> PING target (round-robin over a shuffled list)
 *        --ack--> IDLE (health improves)
 *        --direct deadline--> PING_REQ to k members + a second direct PING
 *                             --ack via any--> IDLE
 *        --round deadline--> SUSPECT target (from self), health worsens unless the
 *                            relays answered with nacks (then our own network is fine).
 * A suspected member is pinged with the suspicion piggybacked first (Lifeguard's buddy
 * system), so it learns of it at once and can refute.
 *
 * Suspicion (Lifeguard): timeout starts at max = suspicion_max_mult * min and shrinks
 * logarithmically towards min = suspicion_mult * max(1, log10 N) * interval as k
 * independent confirmations (other members' suspicions) arrive; at the deadline the
 * member is declared DEAD (from self). A suspicion at a higher incarnation than the one
 * we hold is a new episode (the member refuted and we missed it): new timer.
 *
 * Local health (Lifeguard's awareness): a score 0..awareness_max-1; +1 for a failed
 * probe without nacks (+missing nacks), a refutation, or loop lag; -1 for a successful
 * probe. Probe interval and timeouts are multiplied by score + 1, so a starved node
 * slows its own accusations instead of flooding the cluster with false suspicions.
 * A tick that comes much later than the deadline asked for is loop lag too, and then
 * expired probe and suspicion timeouts wait a grace period, so that acks and
 * refutations already sitting in the adapter's inbox are processed before we conclude.
 *
 * Dissemination: one queue of updates, at most one per member (newer news replaces
 * older), kept in buckets by how often each was sent; a message takes the least-sent
 * first within its byte budget, and an update is dropped after
 * retransmit_mult * ceil(log10(N + 1)) sends. Updates ride on every probe message
 * (within max_msg_bytes), and on GOSSIP messages (within max_gossip_bytes: they travel
 * on the bulk lane) to gossip_nodes members every gossip_interval while any wait.
 * Repair: a member that gossips an older incarnation than ours (known for a gossip
 * interval or more) missed the newer news; it gets our record back at once. Without
 * that, the one node that never heard a refutation eventually declares the refuter
 * dead — the commonest false positive under heavy loss.
 *
 * Push-pull: every push_pull_interval (faster — every 2 probe intervals — while the
 * last exchange found the views different), a PUSH_PULL with our digest to one random
 * member; it answers with its whole state only if the digests differ, and we push ours
 * back (SWIM_PP_NO_REPLY) if after merging we still differ. So steady state costs a few
 * bytes, and a node that joined late or missed gossip catches up in one exchange.
 * Merged DEAD becomes SUSPECT (a peer's word is not enough to bury someone), as in
 * memberlist. Now and then the push-pull goes to a dead member instead, which heals
 * partitions: both sides refute and the two halves merge again.
 *
 * Join: PUSH_PULL(SWIM_PP_JOIN) with our state to every seed, retried with doubling
 * backoff and jitter until a reply (or someone else contacting us).
 *
 * Reaping: dead and left members are dropped after dead_reap_ms; their incarnation is
 * kept as a tombstone for tombstone_ms so stale ALIVE gossip cannot bring them back.
 */
#include "swim/swim.h"

#include "common/hex.h"
#include "kvstore/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SWIM_CONFIRM_MAX     16  /* suspicion confirmations tracked per member */
#define SWIM_RELAY_MAX       256 /* PING_REQ relays in flight */
#define SWIM_EVENT_MAX       65536
#define SWIM_BUCKETS         64 /* transmit-count buckets; limit is clamped below this */
#define SWIM_NONE            (-1)
#define SWIM_CORRECTIONS_MAX 4 /* records sent back to a sender that is behind */

/* ---------- random numbers: xoshiro256**, seeded with splitmix64 ---------- */

typedef struct swim_rng {
    uint64_t s[4];
} swim_rng;

static uint64_t swim_splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t swim_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t swim_rand(swim_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = swim_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = swim_rotl(s[3], 45);
    return result;
}

/* Uniform in [0, n); n > 0. The modulo bias is below 2^-40 for any n we use. */
static uint32_t swim_rand_below(swim_rng *r, uint32_t n)
{
    return (uint32_t)(swim_rand(r) % n);
}

/* ---------- internal types ---------- */

typedef struct swim_mem {
    swim_member pub;
    uint32_t slot;      /* its entry in the id table */
    uint64_t inc_since; /* when we learned its current incarnation */
    uint64_t hash;      /* this member's share of the view digest */
    int32_t bcast;      /* its entry in the broadcast queue, or SWIM_NONE */
    /* suspicion (state SUSPECT) */
    uint64_t susp_start;
    uint64_t susp_deadline;
    uint32_t susp_gen; /* matches the live timer-heap entry */
    uint32_t susp_k;   /* confirmations that bring the timeout to its minimum */
    uint32_t n_accusers;
    /* 32-bit hashes of the accusers' ids ([0] = the first): enough to tell distinct
     * ones apart, and a quarter of the memory — a view of 1,000 members is held by
     * every one of 1,000 simulated nodes */
    uint32_t accusers[SWIM_CONFIRM_MAX];
} swim_mem;

/* The id table holds copies of each member's incarnation and state next to its id, so
 * that the common case — gossip we already have — is settled with one memory access
 * (which matters when tests/sim holds a thousand views of a thousand members). */
typedef struct swim_slot {
    swim_member_id id;
    uint64_t inc;
    uint32_t idx1; /* member index + 1; 0 = empty */
    uint32_t state;
} swim_slot;

typedef struct swim_bc {
    swim_update u;
    uint32_t size; /* swim_update_wire_bound(&u) */
    uint32_t transmits;
    int32_t prev, next; /* bucket list links, or free-list link (next) */
} swim_bc;

typedef struct swim_tomb {
    swim_member_id id;
    uint64_t incarnation;
    uint64_t until_ms;
} swim_tomb;

typedef struct swim_relay {
    bool used;
    uint32_t gen;
    uint32_t my_seq;  /* seq of our PING to the target */
    uint32_t req_seq; /* seq of the requester's PING_REQ */
    char req_addr[SWIM_ADDR_MAX + 1];
} swim_relay;

enum { SWIM_T_SUSPECT = 1, SWIM_T_RELAY = 2 };

typedef struct swim_timer {
    uint64_t when;
    uint32_t kind, idx, gen;
} swim_timer;

/* A queued send: pointers are resolved from offsets at pop time, since the pools may
 * move while the input call is still adding to them. */
typedef struct swim_out {
    size_t to_off;
    swim_class cls;
    swim_msg msg;
    size_t upd_off, mem_off;
} swim_out;

typedef struct swim_probe {
    bool active;
    bool indirect_sent;
    swim_member_id target;
    uint32_t seq;
    uint64_t direct_deadline, round_deadline;
    uint32_t expected_nacks, nacks;
} swim_probe;

struct swim_t {
    swim_config cfg;
    swim_rng rng;
    swim_stats st;
    uint32_t seq;
    uint32_t gen;

    /* members */
    swim_mem *mem;
    size_t n_mem, cap_mem;
    swim_slot *ht; /* open addressing, linear probing, at most half full */
    size_t ht_cap;
    uint64_t digest_hash;
    size_t n_live;

    swim_tomb *tombs;
    size_t n_tombs, cap_tombs;

    /* probing */
    uint32_t *plist; /* member indices in probe order */
    size_t n_plist, cap_plist, ppos;
    swim_probe probe;
    uint64_t probe_at;
    int awareness;

    /* timers */
    swim_timer *heap;
    size_t n_heap, cap_heap;
    uint64_t armed;       /* the deadline we last told the caller about */
    uint64_t grace_until; /* after a stall: failures wait until then */
    uint64_t last_now;
    uint64_t reassert_at; /* swim_reassert's rate limit */
    /* records to send back to the sender of the message being processed, which is
     * behind on them (see swim_apply_update) */
    swim_update corr[SWIM_CORRECTIONS_MAX];
    uint32_t n_corr;
    bool started; /* the first input fixes where our clock stands */

    /* relays for PING_REQ */
    swim_relay relays[SWIM_RELAY_MAX];

    /* dissemination */
    swim_bc *bc;
    size_t n_bc, cap_bc;
    int32_t bc_free;
    int32_t bucket_head[SWIM_BUCKETS], bucket_tail[SWIM_BUCKETS];
    size_t bc_queued;
    uint64_t gossip_at;

    /* push-pull */
    uint64_t pp_at;
    uint32_t pp_seq;
    uint32_t pp_interval; /* current, adapts between 2 probe intervals and the configured */
    swim_member_id pp_peer;
    uint32_t pp_rounds;

    /* join */
    bool joined;
    bool joining;
    char seeds[SWIM_MAX_SEEDS][SWIM_SEED_MAX + 1];
    size_t n_seeds;
    uint32_t join_seq;
    uint32_t join_attempts;
    uint64_t join_at;

    /* leave */
    bool left;
    bool leave_done;
    uint64_t leave_done_at;

    /* effects */
    swim_out *out;
    size_t n_out, cap_out, out_pos;
    swim_update *upool;
    size_t n_upool, cap_upool;
    swim_node *npool;
    size_t n_npool, cap_npool;
    char *spool;
    size_t n_spool, cap_spool;

    swim_event *ev; /* ring buffer */
    size_t ev_cap, ev_head, ev_len;

    /* scratch for update selection */
    int32_t sel[SWIM_MAX_UPDATES];
};

/* ---------- small helpers ---------- */

static const char *const swim_state_names[] = {"alive", "suspect", "dead", "left"};
static const char *const swim_ring_names[] = {"joining", "normal", "leaving", "removed"};

const char *swim_state_name(swim_state st)
{
    return (unsigned)st <= SWIM_LEFT ? swim_state_names[st] : "unknown";
}

const char *swim_ring_status_name(swim_ring_status r)
{
    return (unsigned)r <= SWIM_RING_REMOVED ? swim_ring_names[r] : "unknown";
}

bool swim_id_equal(const swim_member_id *a, const swim_member_id *b)
{
    return memcmp(a->b, b->b, SWIM_ID_LEN) == 0;
}

bool swim_id_in(const swim_member_id *ids, uint32_t n, const swim_member_id *id)
{
    for (uint32_t i = 0; i < n; i++)
        if (swim_id_equal(&ids[i], id))
            return true;
    return false;
}

bool swim_id_is_zero(const swim_member_id *id)
{
    static const swim_member_id zero;
    return swim_id_equal(id, &zero);
}

void swim_id_to_hex(const swim_member_id *id, char out[2 * SWIM_ID_LEN + 1])
{
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < SWIM_ID_LEN; i++) {
        out[2 * i] = hx[id->b[i] >> 4];
        out[2 * i + 1] = hx[id->b[i] & 15];
    }
    out[2 * SWIM_ID_LEN] = '\0';
}

int swim_id_from_hex(const char *hex, swim_member_id *out)
{
    swim_member_id id;
    if (!hex || !out || strlen(hex) != 2 * SWIM_ID_LEN)
        return KV_EINVAL;
    for (int i = 0; i < SWIM_ID_LEN; i++) {
        int hi = kv_hexval(hex[2 * i]), lo = kv_hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return KV_EINVAL;
        id.b[i] = (uint8_t)(hi << 4 | lo);
    }
    *out = id;
    return KV_OK;
}

/* Bytes a CBOR text string of len bytes takes at most, header included. */
static size_t swim_tstr_bound(size_t len)
{
    return len + (len < 24 ? 1 : len < 256 ? 2 : 3);
}

size_t swim_node_wire_bound(const swim_node *n)
{
    return SWIM_UPDATE_WIRE_FIXED - 17 + swim_tstr_bound(strlen(n->name)) - 1 +
           swim_tstr_bound(strlen(n->addr)) - 1;
}

size_t swim_update_wire_bound(const swim_update *u)
{
    return SWIM_UPDATE_WIRE_FIXED + swim_tstr_bound(strlen(u->node.name)) - 1 +
           swim_tstr_bound(strlen(u->node.addr)) - 1;
}

size_t swim_msg_wire_bound(const swim_msg *m)
{
    size_t n = SWIM_MSG_WIRE_FIXED + strlen(m->target_addr);
    for (uint32_t i = 0; i < m->n_updates; i++)
        n += swim_update_wire_bound(&m->updates[i]);
    for (uint32_t i = 0; i < m->n_members; i++)
        n += swim_node_wire_bound(&m->members[i]);
    return n;
}

static uint64_t swim_load64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t swim_mix(uint64_t z)
{
    z = (z ^ (z >> 33)) * 0xff51afd7ed558ccdULL;
    z = (z ^ (z >> 33)) * 0xc4ceb9fe1a85ec53ULL;
    return z ^ (z >> 33);
}

/* A member's share of the digest: depends only on what every node agrees on. */
static uint64_t swim_node_hash(const swim_node *n)
{
    uint64_t h = swim_mix(swim_load64(n->id.b) ^ 0x5157494d00000001ULL);
    h = swim_mix(h ^ swim_load64(n->id.b + 8));
    h = swim_mix(h ^ n->incarnation);
    return swim_mix(h ^ ((uint64_t)n->state << 8 | (uint64_t)n->ring));
}

static uint32_t swim_id_hash32(const swim_member_id *id)
{
    return (uint32_t)swim_mix(swim_load64(id->b) ^ swim_load64(id->b + 8));
}

static bool swim_grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t nc = *cap ? *cap : 16;
    while (nc < need)
        nc *= 2;
    void *q = realloc(*p, nc * elem);
    if (!q)
        return false;
    *p = q;
    *cap = nc;
    return true;
}

static void swim_copy_str(char *dst, size_t dstsz, const char *src)
{
    size_t n = strnlen(src, dstsz - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ---------- configuration ---------- */

void swim_config_default(swim_config *c)
{
    memset(c, 0, sizeof(*c));
    c->probe_interval_ms = 1000;
    c->probe_timeout_ms = 500;
    c->indirect_checks = 3;
    c->suspicion_mult = 4;
    c->suspicion_max_mult = 6;
    c->retransmit_mult = 4;
    c->gossip_interval_ms = 200;
    c->gossip_nodes = 3;
    c->gossip_to_dead_ms = 30000;
    c->push_pull_interval_ms = 30000;
    c->awareness_max = 8;
    c->loop_lag_threshold_ms = 200;
    c->max_msg_bytes = 1400;
    c->max_gossip_bytes = 8192;
    c->join_retry_min_ms = 1000;
    c->join_retry_max_ms = 10000;
    c->dead_reap_ms = 86400000u;
    c->tombstone_ms = 86400000u;
}

static bool swim_config_valid(const swim_config *c)
{
    return c->probe_interval_ms > 0 && c->probe_timeout_ms > 0 &&
           c->probe_timeout_ms <= c->probe_interval_ms && c->suspicion_mult > 0 &&
           c->suspicion_max_mult >= 1 && c->retransmit_mult > 0 && c->gossip_interval_ms > 0 &&
           c->push_pull_interval_ms > 0 && c->awareness_max >= 1 &&
           c->max_msg_bytes >= SWIM_MSG_WIRE_FIXED + SWIM_ADDR_MAX + 256 &&
           c->max_gossip_bytes >= c->max_msg_bytes && c->join_retry_min_ms > 0 &&
           c->join_retry_max_ms >= c->join_retry_min_ms;
}

/* ---------- effects: events ---------- */

static void swim_emit(swim_t *s, swim_event_kind kind, const swim_mem *m, const swim_node *old)
{
    if (s->ev_len == s->ev_cap) {
        if (s->ev_cap >= SWIM_EVENT_MAX) {
            /* drop the oldest: a consumer that never drains must not grow us forever */
            s->ev_head = (s->ev_head + 1) % s->ev_cap;
            s->ev_len--;
        } else {
            size_t nc = s->ev_cap ? s->ev_cap * 2 : 64;
            swim_event *ne = malloc(nc * sizeof(*ne));
            if (!ne)
                return;
            for (size_t i = 0; i < s->ev_len; i++)
                ne[i] = s->ev[(s->ev_head + i) % s->ev_cap];
            free(s->ev);
            s->ev = ne;
            s->ev_cap = nc;
            s->ev_head = 0;
        }
    }
    swim_event *e = &s->ev[(s->ev_head + s->ev_len) % s->ev_cap];
    memset(e, 0, sizeof(*e));
    e->kind = kind;
    e->member = m->pub;
    if (old) {
        e->old_state = old->state;
        e->old_ring = old->ring;
        e->old_incarnation = old->incarnation;
    } else {
        e->old_state = m->pub.node.state;
        e->old_ring = m->pub.node.ring;
        e->old_incarnation = m->pub.node.incarnation;
    }
    s->ev_len++;
}

/* ---------- effects: sends ---------- */

static size_t swim_push_str(swim_t *s, const char *str)
{
    size_t n = strlen(str) + 1;
    if (!swim_grow((void **)&s->spool, &s->cap_spool, s->n_spool + n, 1))
        return SIZE_MAX;
    memcpy(s->spool + s->n_spool, str, n);
    s->n_spool += n;
    return s->n_spool - n;
}

/* Queue msg to `to`. Updates already appended to upool from upd_off (n = msg->n_updates),
 * members from mem_off. Returns false (and counts nothing) on out-of-memory. */
static bool swim_queue(swim_t *s, const char *to, swim_class cls, const swim_msg *msg,
                       size_t upd_off, size_t mem_off)
{
    size_t to_off = swim_push_str(s, to);
    if (to_off == SIZE_MAX ||
        !swim_grow((void **)&s->out, &s->cap_out, s->n_out + 1, sizeof(*s->out)))
        return false;
    swim_out *o = &s->out[s->n_out++];
    o->to_off = to_off;
    o->cls = cls;
    o->msg = *msg;
    o->msg.updates = NULL;
    o->msg.members = NULL;
    o->upd_off = upd_off;
    o->mem_off = mem_off;
    s->st.msgs_sent++;
    s->st.updates_sent += msg->n_updates;
    return true;
}

static void swim_reset_effects(swim_t *s)
{
    if (s->out_pos < s->n_out)
        s->st.effects_dropped += s->n_out - s->out_pos;
    s->n_out = s->out_pos = 0;
    s->n_upool = s->n_npool = s->n_spool = 0;
    if (s->bc_queued == 0 && s->cap_bc > 256) {
        /* the queue ran dry after a burst (a join wave): give the pool back */
        free(s->bc);
        s->bc = NULL;
        s->n_bc = s->cap_bc = 0;
        s->bc_free = SWIM_NONE;
    }
    if (s->cap_npool > 256) {
        /* whole states are rare after convergence: do not hold one per core forever */
        free(s->npool);
        s->npool = NULL;
        s->cap_npool = 0;
    }
}

/* ---------- members: lookup ---------- */

static void swim_ht_put(swim_t *s, uint32_t i)
{
    swim_mem *m = &s->mem[i];
    size_t j = swim_id_hash32(&m->pub.node.id) & (s->ht_cap - 1);
    while (s->ht[j].idx1)
        j = (j + 1) & (s->ht_cap - 1);
    s->ht[j].id = m->pub.node.id;
    s->ht[j].inc = m->pub.node.incarnation;
    s->ht[j].state = m->pub.node.state;
    s->ht[j].idx1 = i + 1;
    m->slot = (uint32_t)j;
}

static void swim_ht_rebuild(swim_t *s)
{
    size_t need = 16;
    while (need < s->n_mem * 2 + 2)
        need *= 2;
    if (need != s->ht_cap) {
        swim_slot *nh = malloc(need * sizeof(*nh));
        if (!nh)
            abort(); /* cannot keep the table consistent without it; a broken invariant */
        free(s->ht);
        s->ht = nh;
        s->ht_cap = need;
    }
    memset(s->ht, 0, s->ht_cap * sizeof(*s->ht));
    for (size_t i = 0; i < s->n_mem; i++)
        swim_ht_put(s, (uint32_t)i);
}

static const swim_slot *swim_find_slot(const swim_t *s, const swim_member_id *id)
{
    size_t j = swim_id_hash32(id) & (s->ht_cap - 1);
    while (s->ht[j].idx1) {
        if (swim_id_equal(&s->ht[j].id, id))
            return &s->ht[j];
        j = (j + 1) & (s->ht_cap - 1);
    }
    return NULL;
}

static int32_t swim_find_idx(const swim_t *s, const swim_member_id *id)
{
    const swim_slot *sl = swim_find_slot(s, id);
    return sl ? (int32_t)sl->idx1 - 1 : SWIM_NONE;
}

static swim_mem *swim_find(swim_t *s, const swim_member_id *id)
{
    int32_t i = swim_find_idx(s, id);
    return i == SWIM_NONE ? NULL : &s->mem[i];
}

static bool swim_is_live(swim_state st)
{
    return st == SWIM_ALIVE || st == SWIM_SUSPECT;
}

/* Every change of a member's (incarnation, state, ring) goes through here, so the digest
 * and the live count stay exact. */
static void swim_set_node(swim_t *s, swim_mem *m, uint64_t inc, swim_state st, swim_ring_status r)
{
    if (swim_is_live(m->pub.node.state))
        s->n_live--;
    s->digest_hash -= m->hash;
    if (inc != m->pub.node.incarnation || m->hash == 0)
        m->inc_since = s->last_now;
    m->pub.node.incarnation = inc;
    m->pub.node.state = st;
    m->pub.node.ring = r;
    s->ht[m->slot].inc = inc;
    s->ht[m->slot].state = st;
    m->hash = swim_node_hash(&m->pub.node);
    s->digest_hash += m->hash;
    if (swim_is_live(st))
        s->n_live++;
}

/* ---------- timers ---------- */

static bool swim_heap_less(const swim_timer *a, const swim_timer *b)
{
    return a->when < b->when;
}

static void swim_heap_push(swim_t *s, swim_timer t)
{
    if (!swim_grow((void **)&s->heap, &s->cap_heap, s->n_heap + 1, sizeof(*s->heap)))
        abort(); /* a lost timer would silently stop failure detection */
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!swim_heap_less(&t, &s->heap[p]))
            break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = t;
}

static void swim_heap_pop(swim_t *s)
{
    swim_timer last = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && swim_heap_less(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!swim_heap_less(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n)
        s->heap[i] = last;
}

static bool swim_timer_live(const swim_t *s, const swim_timer *t)
{
    if (t->kind == SWIM_T_SUSPECT)
        return t->idx < s->n_mem && s->mem[t->idx].pub.node.state == SWIM_SUSPECT &&
               s->mem[t->idx].susp_gen == t->gen;
    return t->idx < SWIM_RELAY_MAX && s->relays[t->idx].used && s->relays[t->idx].gen == t->gen;
}

/* ---------- Lifeguard: local health and suspicion timeouts ---------- */

static uint32_t swim_health_mult(const swim_t *s)
{
    return (uint32_t)s->awareness + 1;
}

static void swim_health_add(swim_t *s, int delta)
{
    int v = s->awareness + delta;
    int hi = (int)s->cfg.awareness_max - 1;
    s->awareness = v < 0 ? 0 : v > hi ? hi : v;
}

static uint64_t swim_scaled(const swim_t *s, uint32_t ms)
{
    return (uint64_t)ms * swim_health_mult(s);
}

static uint64_t swim_susp_min(const swim_t *s)
{
    double n = (double)(s->n_live > 0 ? s->n_live : 1);
    double scale = log10(n);
    if (scale < 1.0)
        scale = 1.0;
    return (uint64_t)(s->cfg.suspicion_mult * scale * s->cfg.probe_interval_ms);
}

static uint32_t swim_susp_k(const swim_t *s)
{
    int k = (int)s->cfg.suspicion_mult - 2;
    if ((int)s->n_live - 2 < k)
        k = (int)s->n_live - 2;
    if (k < 0)
        k = 0;
    if (k > SWIM_CONFIRM_MAX - 1)
        k = SWIM_CONFIRM_MAX - 1;
    return (uint32_t)k;
}

static uint64_t swim_susp_timeout(const swim_t *s, uint32_t k, uint32_t c)
{
    uint64_t lo = swim_susp_min(s);
    uint64_t hi = lo * s->cfg.suspicion_max_mult;
    if (k == 0 || c >= k)
        return lo;
    double frac = log((double)c + 1.0) / log((double)k + 1.0);
    double t = (double)hi - frac * (double)(hi - lo);
    return t < (double)lo ? lo : (uint64_t)t;
}

uint64_t swim_suspicion_timeout_ms(const swim_t *s, uint32_t confirmations)
{
    return swim_susp_timeout(s, swim_susp_k(s), confirmations);
}

static void swim_susp_arm(swim_t *s, swim_mem *m)
{
    uint32_t c = m->n_accusers ? m->n_accusers - 1 : 0;
    m->pub.confirmations = c;
    m->susp_deadline = m->susp_start + swim_susp_timeout(s, m->susp_k, c);
    m->susp_gen = ++s->gen;
    swim_heap_push(
        s, (swim_timer){m->susp_deadline, SWIM_T_SUSPECT, (uint32_t)(m - s->mem), m->susp_gen});
}

/* ---------- dissemination queue ---------- */

static uint32_t swim_retransmit_limit(const swim_t *s)
{
    double n = (double)s->n_live + 1.0;
    uint32_t lim = s->cfg.retransmit_mult * (uint32_t)ceil(log10(n));
    if (lim < 1)
        lim = 1;
    return lim >= SWIM_BUCKETS ? SWIM_BUCKETS - 1 : lim;
}

static void swim_bucket_unlink(swim_t *s, int32_t i)
{
    swim_bc *b = &s->bc[i];
    uint32_t t = b->transmits;
    if (b->prev != SWIM_NONE)
        s->bc[b->prev].next = b->next;
    else
        s->bucket_head[t] = b->next;
    if (b->next != SWIM_NONE)
        s->bc[b->next].prev = b->prev;
    else
        s->bucket_tail[t] = b->prev;
    b->prev = b->next = SWIM_NONE;
}

static void swim_bucket_push(swim_t *s, int32_t i, bool at_head)
{
    swim_bc *b = &s->bc[i];
    uint32_t t = b->transmits;
    if (at_head) {
        b->prev = SWIM_NONE;
        b->next = s->bucket_head[t];
        if (b->next != SWIM_NONE)
            s->bc[b->next].prev = i;
        else
            s->bucket_tail[t] = i;
        s->bucket_head[t] = i;
    } else {
        b->next = SWIM_NONE;
        b->prev = s->bucket_tail[t];
        if (b->prev != SWIM_NONE)
            s->bc[b->prev].next = i;
        else
            s->bucket_head[t] = i;
        s->bucket_tail[t] = i;
    }
}

/* Take entry i out of the queue (its member's bcast link is the caller's business). */
static void swim_bc_unqueue(swim_t *s, int32_t i)
{
    swim_bucket_unlink(s, i);
    s->bc[i].next = s->bc_free;
    s->bc_free = i;
    s->bc_queued--;
}

static void swim_bc_release(swim_t *s, int32_t i)
{
    swim_mem *m = swim_find(s, &s->bc[i].u.node.id);
    if (m && m->bcast == i)
        m->bcast = SWIM_NONE;
    swim_bc_unqueue(s, i);
}

/* Queue news about m (its current record) with the given from; replaces older news. */
static void swim_broadcast(swim_t *s, swim_mem *m, const swim_member_id *from)
{
    int32_t i = m->bcast;
    if (i != SWIM_NONE) {
        swim_bucket_unlink(s, i);
    } else {
        if (s->bc_free != SWIM_NONE) {
            i = s->bc_free;
            s->bc_free = s->bc[i].next;
        } else {
            if (!swim_grow((void **)&s->bc, &s->cap_bc, s->n_bc + 1, sizeof(*s->bc)))
                return; /* news lost to OOM; push-pull heals it */
            i = (int32_t)s->n_bc++;
        }
        s->bc_queued++;
        m->bcast = i;
    }
    swim_bc *b = &s->bc[i];
    b->u.node = m->pub.node;
    b->u.from = *from;
    b->size = (uint32_t)swim_update_wire_bound(&b->u);
    b->transmits = 0;
    swim_bucket_push(s, i, true);
}

/* Append up to `budget` bytes of updates (least-sent first) to upool; returns how many.
 * first[0..n_first) go in front (the buddy-system suspicion, corrections) and are not
 * counted as transmissions of the queue. */
static uint32_t swim_take_updates(swim_t *s, size_t budget, const swim_update *first,
                                  uint32_t n_first)
{
    uint32_t n = 0, nsel = 0;
    size_t base = s->n_upool;
    if (!swim_grow((void **)&s->upool, &s->cap_upool, s->n_upool + SWIM_MAX_UPDATES,
                   sizeof(*s->upool)))
        return 0;
    for (uint32_t f = 0; f < n_first && n < SWIM_MAX_UPDATES; f++) {
        size_t sz = swim_update_wire_bound(&first[f]);
        if (sz <= budget) {
            s->upool[base + n++] = first[f];
            budget -= sz;
        }
    }
    uint32_t limit = swim_retransmit_limit(s);
    int skipped = 0;
    for (uint32_t t = 0; t < SWIM_BUCKETS && n < SWIM_MAX_UPDATES; t++) {
        for (int32_t i = s->bucket_head[t]; i != SWIM_NONE && n < SWIM_MAX_UPDATES;
             i = s->bc[i].next) {
            if (budget < SWIM_UPDATE_WIRE_FIXED)
                goto done;
            const swim_update *u = &s->bc[i].u;
            bool dup = false;
            for (uint32_t f = 0; f < n_first; f++)
                dup |= swim_id_equal(&u->node.id, &first[f].node.id);
            if (dup)
                continue;
            size_t sz = s->bc[i].size;
            if (sz > budget) {
                if (++skipped > 8)
                    goto done;
                continue;
            }
            budget -= sz;
            s->upool[base + n++] = *u;
            s->sel[nsel++] = i;
        }
    }
done:
    for (uint32_t j = 0; j < nsel; j++) {
        int32_t i = s->sel[j];
        swim_bucket_unlink(s, i);
        s->bc[i].transmits++;
        if (s->bc[i].transmits >= limit) {
            /* bucket_unlink already done; put it in a bucket so release can unlink */
            swim_bucket_push(s, i, false);
            swim_bc_release(s, i);
        } else {
            swim_bucket_push(s, i, false);
        }
    }
    s->n_upool += n;
    return n;
}

/* Queue a small message (not a state transfer) with piggybacked updates. */
static void swim_send_small(swim_t *s, const char *to, swim_class cls, swim_msg *msg,
                            const swim_update *first, uint32_t n_first)
{
    size_t fixed = SWIM_MSG_WIRE_FIXED + strlen(msg->target_addr);
    /* probe-lane messages stay small so nothing delays them; GOSSIP messages ride the
     * bulk lane and may carry more, which is what keeps dissemination ahead of the news
     * when loss makes a large cluster suspect (and refute) many members at once */
    size_t cap = msg->type == SWIM_MSG_GOSSIP ? s->cfg.max_gossip_bytes : s->cfg.max_msg_bytes;
    size_t budget = cap > fixed ? cap - fixed : 0;
    size_t off = s->n_upool;
    msg->from = s->mem[0].pub.node.id;
    msg->n_updates = swim_take_updates(s, budget, first, n_first);
    msg->n_members = 0;
    swim_queue(s, to, cls, msg, off, 0);
}

/* Queue a state transfer (PUSH_PULL or its reply): our whole table, or none. */
static void swim_send_state(swim_t *s, const char *to, swim_class cls, swim_msg *msg, bool full)
{
    size_t off = s->n_npool;
    msg->from = s->mem[0].pub.node.id;
    msg->digest.count = (uint32_t)s->n_mem;
    msg->digest.hash = s->digest_hash;
    msg->n_updates = 0;
    msg->n_members = 0;
    if (full) {
        if (!swim_grow((void **)&s->npool, &s->cap_npool, s->n_npool + s->n_mem, sizeof(*s->npool)))
            return;
        for (size_t i = 0; i < s->n_mem; i++)
            s->npool[s->n_npool++] = s->mem[i].pub.node;
        msg->n_members = (uint32_t)s->n_mem;
        s->st.push_pull_full++;
    }
    swim_queue(s, to, cls, msg, 0, off);
}

/* ---------- members: add, reap ---------- */

static void swim_plist_insert_random(swim_t *s, uint32_t idx)
{
    if (!swim_grow((void **)&s->plist, &s->cap_plist, s->n_plist + 1, sizeof(*s->plist)))
        return;
    /* a new member lands at a random place, so it is probed within one sweep, not last */
    size_t pos = s->n_plist ? swim_rand_below(&s->rng, (uint32_t)s->n_plist + 1) : 0;
    memmove(&s->plist[pos + 1], &s->plist[pos], (s->n_plist - pos) * sizeof(*s->plist));
    s->plist[pos] = idx;
    s->n_plist++;
    if (pos < s->ppos)
        s->ppos++;
}

static const swim_tomb *swim_tomb_find(const swim_t *s, const swim_member_id *id)
{
    for (size_t i = 0; i < s->n_tombs; i++)
        if (swim_id_equal(&s->tombs[i].id, id))
            return &s->tombs[i];
    return NULL;
}

static swim_mem *swim_add(swim_t *s, uint64_t now, const swim_node *n)
{
    if (s->n_mem >= SWIM_MAX_MEMBERS) {
        s->st.members_refused++;
        return NULL;
    }
    if (!swim_grow((void **)&s->mem, &s->cap_mem, s->n_mem + 1, sizeof(*s->mem)))
        return NULL;
    swim_mem *m = &s->mem[s->n_mem++];
    memset(m, 0, sizeof(*m));
    m->pub.node = *n;
    m->pub.node.state = SWIM_DEAD; /* so swim_set_node counts it right */
    m->pub.since_ms = now;
    m->bcast = SWIM_NONE;
    m->hash = 0;
    if (s->n_mem * 2 + 2 > s->ht_cap)
        swim_ht_rebuild(s);
    else
        swim_ht_put(s, (uint32_t)(s->n_mem - 1));
    swim_set_node(s, m, n->incarnation, n->state, n->ring);
    swim_plist_insert_random(s, (uint32_t)(s->n_mem - 1));
    swim_emit(s, SWIM_EV_MEMBER_ADDED, m, NULL);
    return m;
}

static void swim_plist_rebuild(swim_t *s)
{
    s->n_plist = 0;
    if (!swim_grow((void **)&s->plist, &s->cap_plist, s->n_mem, sizeof(*s->plist)))
        return;
    for (size_t i = 1; i < s->n_mem; i++)
        if (swim_is_live(s->mem[i].pub.node.state))
            s->plist[s->n_plist++] = (uint32_t)i;
    for (size_t i = s->n_plist; i > 1; i--) {
        size_t j = swim_rand_below(&s->rng, (uint32_t)i);
        uint32_t t = s->plist[i - 1];
        s->plist[i - 1] = s->plist[j];
        s->plist[j] = t;
    }
    s->ppos = 0;
}

/* Forget dead and left members past dead_reap_ms, keeping a tombstone of each. */
static void swim_reap(swim_t *s, uint64_t now)
{
    size_t w = 0;
    for (size_t i = 0; i < s->n_tombs; i++)
        if (s->tombs[i].until_ms > now)
            s->tombs[w++] = s->tombs[i];
    s->n_tombs = w;

    bool changed = false;
    for (size_t i = 1; i < s->n_mem;) {
        swim_mem *m = &s->mem[i];
        if (swim_is_live(m->pub.node.state) || now - m->pub.since_ms < s->cfg.dead_reap_ms) {
            i++;
            continue;
        }
        if (swim_grow((void **)&s->tombs, &s->cap_tombs, s->n_tombs + 1, sizeof(*s->tombs)))
            s->tombs[s->n_tombs++] =
                (swim_tomb){m->pub.node.id, m->pub.node.incarnation, now + s->cfg.tombstone_ms};
        swim_emit(s, SWIM_EV_MEMBER_REAPED, m, NULL);
        if (m->bcast != SWIM_NONE) {
            /* the id table is stale while members move: no lookups in here */
            swim_bc_unqueue(s, m->bcast);
            m->bcast = SWIM_NONE;
        }
        s->digest_hash -= m->hash;
        s->mem[i] = s->mem[s->n_mem - 1];
        s->n_mem--;
        changed = true;
        if (i < s->n_mem && s->mem[i].pub.node.state == SWIM_SUSPECT)
            swim_susp_arm(s, &s->mem[i]); /* its timer entry pointed at the old index */
    }
    if (changed) {
        swim_ht_rebuild(s);
        swim_plist_rebuild(s);
    }
}

/* Pick up to k distinct members (not self, not `except`) that satisfy ok(); out gets
 * indices. Random probing first, a sweep from a random start if that comes up short. */
typedef bool (*swim_pick_fn)(const swim_t *s, const swim_mem *m, uint64_t now);

static size_t swim_pick(swim_t *s, uint64_t now, size_t k, swim_pick_fn ok,
                        const swim_member_id *except, uint32_t *out)
{
    size_t n = 0;
    if (s->n_mem <= 1 || k == 0)
        return 0;
    uint32_t cand = (uint32_t)s->n_mem - 1;
    for (size_t tries = 0; tries < 4 * k + 8 && n < k; tries++) {
        uint32_t i = 1 + swim_rand_below(&s->rng, cand);
        const swim_mem *m = &s->mem[i];
        if (!ok(s, m, now) || (except && swim_id_equal(&m->pub.node.id, except)))
            continue;
        bool dup = false;
        for (size_t j = 0; j < n; j++)
            dup |= out[j] == i;
        if (!dup)
            out[n++] = i;
    }
    if (n < k) {
        uint32_t start = swim_rand_below(&s->rng, cand);
        for (uint32_t d = 0; d < cand && n < k; d++) {
            uint32_t i = 1 + (start + d) % cand;
            const swim_mem *m = &s->mem[i];
            if (!ok(s, m, now) || (except && swim_id_equal(&m->pub.node.id, except)))
                continue;
            bool dup = false;
            for (size_t j = 0; j < n; j++)
                dup |= out[j] == i;
            if (!dup)
                out[n++] = i;
        }
    }
    return n;
}

static bool swim_ok_alive(const swim_t *s, const swim_mem *m, uint64_t now)
{
    return m->pub.node.state == SWIM_ALIVE;
}

static bool swim_ok_gossip(const swim_t *s, const swim_mem *m, uint64_t now)
{
    swim_state st = m->pub.node.state;
    return swim_is_live(st) ||
           (st == SWIM_DEAD && now - m->pub.since_ms < s->cfg.gossip_to_dead_ms);
}

static bool swim_ok_dead(const swim_t *s, const swim_mem *m, uint64_t now)
{
    return m->pub.node.state == SWIM_DEAD;
}

/* ---------- applying news ---------- */

typedef enum swim_origin {
    SWIM_FROM_GOSSIP = 0, /* a piggybacked update: rebroadcast what is news */
    SWIM_FROM_STATE = 1,  /* a push-pull state: only the sender's own record and bad news
                             are rebroadcast — the rest is old news the sender has */
} swim_origin;

static void swim_self_changed(swim_t *s, uint64_t old_inc)
{
    swim_mem *me = &s->mem[0];
    if (me->pub.node.incarnation != old_inc)
        swim_emit(s, SWIM_EV_SELF_INCARNATION, me, NULL);
}

/* Raise our incarnation above `accused` and announce that we are alive. */
static void swim_refute(swim_t *s, uint64_t accused)
{
    swim_mem *me = &s->mem[0];
    uint64_t old = me->pub.node.incarnation;
    uint64_t inc = (accused > old ? accused : old) + 1;
    swim_set_node(s, me, inc, SWIM_ALIVE, me->pub.node.ring);
    s->st.refutes++;
    swim_health_add(s, 1); /* being suspected hints that we are the slow one */
    swim_self_changed(s, old);
    swim_broadcast(s, me, &me->pub.node.id);
}

/*
 * The sender of the message being processed gossiped an older incarnation of member m
 * than ours. If we have known the newer one for a while (so this is not just two
 * pieces of news crossing), the sender missed it — the one node that never heard a
 * refutation is the one that declares the refuter dead — so we send it our record back
 * (swim_recv does, after the message). Suspicions are not sent this way: they would
 * count as confirmations in our name.
 */
static void swim_note_stale(swim_t *s, uint64_t now, const swim_slot *sl)
{
    if (s->n_corr >= SWIM_CORRECTIONS_MAX || sl->state == SWIM_SUSPECT)
        return;
    const swim_mem *m = &s->mem[sl->idx1 - 1];
    if (sl->idx1 != 1 && now - m->inc_since < s->cfg.gossip_interval_ms)
        return;
    for (uint32_t i = 0; i < s->n_corr; i++)
        if (swim_id_equal(&s->corr[i].node.id, &m->pub.node.id))
            return;
    swim_update *c = &s->corr[s->n_corr++];
    c->node = m->pub.node;
    c->from = sl->state == SWIM_DEAD ? s->mem[0].pub.node.id : m->pub.node.id;
}

/* An accusation of us at an incarnation we already refuted is still going around, so
 * some members missed the refutation: send our record around again (at most once per
 * probe interval — stale copies arrive in bursts). */
static void swim_reassert(swim_t *s, uint64_t now)
{
    if (s->left || now < s->reassert_at)
        return;
    s->reassert_at = now + s->cfg.probe_interval_ms;
    swim_broadcast(s, &s->mem[0], &s->mem[0].pub.node.id);
}

static void swim_mark_joined(swim_t *s)
{
    if (s->joined)
        return;
    s->joined = true;
    s->joining = false;
    swim_emit(s, SWIM_EV_JOINED, &s->mem[0], NULL);
}

static void swim_apply_alive(swim_t *s, uint64_t now, const swim_node *n, bool rebroadcast)
{
    if (swim_id_equal(&n->id, &s->mem[0].pub.node.id)) {
        swim_mem *me = &s->mem[0];
        if (s->left)
            return;
        /* someone knows a newer incarnation of us than we do (we restarted without
         * knowing it, or our own bump was lost): go above it */
        if (n->incarnation > me->pub.node.incarnation)
            swim_refute(s, n->incarnation);
        return;
    }
    if (n->addr[0] == '\0' || n->name[0] == '\0')
        return; /* cannot use it; a well-behaved peer never sends this */
    swim_mem *m = swim_find(s, &n->id);
    if (!m) {
        const swim_tomb *t = swim_tomb_find(s, &n->id);
        if (t && n->incarnation <= t->incarnation)
            return;
        swim_node nn = *n;
        nn.state = SWIM_ALIVE;
        m = swim_add(s, now, &nn);
        if (!m)
            return;
        swim_mark_joined(s);
        if (rebroadcast)
            swim_broadcast(s, m, &n->id);
        return;
    }
    if (n->incarnation <= m->pub.node.incarnation)
        return;
    swim_node old = m->pub.node;
    swim_copy_str(m->pub.node.name, sizeof(m->pub.node.name), n->name);
    swim_copy_str(m->pub.node.addr, sizeof(m->pub.node.addr), n->addr);
    m->pub.node.data_port = n->data_port;
    m->pub.node.http_port = n->http_port;
    swim_set_node(s, m, n->incarnation, SWIM_ALIVE, n->ring);
    if (old.state != SWIM_ALIVE)
        m->pub.since_ms = now;
    m->pub.confirmations = 0;
    m->n_accusers = 0;
    if (old.state != SWIM_ALIVE || old.ring != n->ring || strcmp(old.addr, n->addr) != 0 ||
        strcmp(old.name, n->name) != 0 || old.data_port != n->data_port ||
        old.http_port != n->http_port)
        swim_emit(s, SWIM_EV_MEMBER_UPDATED, m, &old);
    if (old.state == SWIM_DEAD || old.state == SWIM_LEFT) {
        /* back from the dead: probe it again */
        swim_plist_insert_random(s, (uint32_t)(m - s->mem));
    }
    if (rebroadcast)
        swim_broadcast(s, m, &n->id);
}

/* Returns true if a new independent confirmation was recorded. */
static bool swim_confirm(swim_t *s, swim_mem *m, const swim_member_id *from)
{
    uint32_t h = swim_id_hash32(from);
    for (uint32_t i = 0; i < m->n_accusers; i++)
        if (m->accusers[i] == h)
            return false;
    if (m->n_accusers >= SWIM_CONFIRM_MAX || m->n_accusers > m->susp_k)
        return false; /* already at the minimum timeout; more changes nothing */
    m->accusers[m->n_accusers++] = h;
    swim_susp_arm(s, m);
    return true;
}

static void swim_apply_suspect(swim_t *s, uint64_t now, const swim_member_id *id, uint64_t inc,
                               const swim_member_id *from)
{
    if (swim_id_equal(id, &s->mem[0].pub.node.id)) {
        if (!s->left && inc >= s->mem[0].pub.node.incarnation)
            swim_refute(s, inc);
        return;
    }
    swim_mem *m = swim_find(s, id);
    if (!m || inc < m->pub.node.incarnation)
        return;
    swim_state st = m->pub.node.state;
    if (st == SWIM_DEAD || st == SWIM_LEFT)
        return;
    if (st == SWIM_SUSPECT && inc == m->pub.node.incarnation) {
        if (swim_confirm(s, m, from))
            swim_broadcast(s, m, from);
        return;
    }
    /* a new suspicion — or one at a higher incarnation than the one we hold, which
     * means the member refuted meanwhile (we missed it) and is suspected anew: that
     * episode gets its own full timeout, not what is left of the stale one */
    swim_node old = m->pub.node;
    swim_set_node(s, m, inc, SWIM_SUSPECT, m->pub.node.ring);
    m->pub.since_ms = now;
    m->susp_start = now;
    m->susp_k = swim_susp_k(s);
    m->n_accusers = 1;
    m->accusers[0] = swim_id_hash32(from);
    swim_susp_arm(s, m);
    if (old.state != SWIM_SUSPECT)
        swim_emit(s, SWIM_EV_MEMBER_UPDATED, m, &old);
    swim_broadcast(s, m, from);
}

static void swim_apply_dead(swim_t *s, uint64_t now, const swim_member_id *id, uint64_t inc,
                            const swim_member_id *from, swim_state st)
{
    if (swim_id_equal(id, &s->mem[0].pub.node.id)) {
        if (!s->left && inc >= s->mem[0].pub.node.incarnation)
            swim_refute(s, inc);
        return;
    }
    swim_mem *m = swim_find(s, id);
    if (!m || inc < m->pub.node.incarnation)
        return;
    swim_state cur = m->pub.node.state;
    if (cur == SWIM_LEFT)
        return;
    if (cur == SWIM_DEAD && st == SWIM_DEAD) {
        if (inc > m->pub.node.incarnation)
            swim_set_node(s, m, inc, SWIM_DEAD, m->pub.node.ring);
        return;
    }
    swim_node old = m->pub.node;
    swim_set_node(s, m, inc, st, m->pub.node.ring);
    m->pub.since_ms = now;
    m->pub.confirmations = 0;
    m->n_accusers = 0;
    swim_emit(s, SWIM_EV_MEMBER_UPDATED, m, &old);
    swim_broadcast(s, m, from);
}

static void swim_apply_update(swim_t *s, uint64_t now, const swim_update *u)
{
    /* most gossip is news we already have: drop it after one look at the member */
    const swim_slot *m = swim_find_slot(s, &u->node.id);
    if (m) {
        uint64_t inc = u->node.incarnation;
        if (inc < m->inc) {
            if (m->idx1 == 1 && u->node.state != SWIM_ALIVE)
                swim_reassert(s, now); /* someone still holds an old accusation of us */
            swim_note_stale(s, now, m);
            return;
        }
        if (inc == m->inc && u->node.state != SWIM_SUSPECT &&
            (u->node.state == SWIM_ALIVE || u->node.state == (swim_state)m->state))
            return;
    }
    switch (u->node.state) {
    case SWIM_ALIVE:
        swim_apply_alive(s, now, &u->node, true);
        break;
    case SWIM_SUSPECT:
        swim_apply_suspect(s, now, &u->node.id, u->node.incarnation, &u->from);
        break;
    case SWIM_DEAD:
    case SWIM_LEFT:
        swim_apply_dead(s, now, &u->node.id, u->node.incarnation, &u->from, u->node.state);
        break;
    }
}

/* Merge a peer's state (push-pull). The sender's own record is its authoritative news;
 * its SUSPECT and DEAD verdicts become suspicions of ours — in our own name, so that a
 * state transfer never counts as an independent confirmation (each sync would otherwise
 * shorten every running suspicion); LEFT is final. Returns how many members were new. */
static size_t swim_merge_state(swim_t *s, uint64_t now, const swim_msg *msg)
{
    size_t before = s->n_mem;
    for (uint32_t i = 0; i < msg->n_members; i++) {
        const swim_node *n = &msg->members[i];
        bool is_sender = swim_id_equal(&n->id, &msg->from);
        switch (n->state) {
        case SWIM_ALIVE:
            swim_apply_alive(s, now, n, is_sender);
            break;
        case SWIM_SUSPECT:
        case SWIM_DEAD:
            swim_apply_suspect(s, now, &n->id, n->incarnation, &s->mem[0].pub.node.id);
            break;
        case SWIM_LEFT:
            if (!swim_find(s, &n->id) && !swim_id_equal(&n->id, &s->mem[0].pub.node.id)) {
                /* learn a member that already left, so our views match */
                const swim_tomb *t = swim_tomb_find(s, &n->id);
                if ((!t || n->incarnation > t->incarnation) && n->addr[0] && n->name[0])
                    swim_add(s, now, n);
            } else {
                swim_apply_dead(s, now, &n->id, n->incarnation, &n->id, SWIM_LEFT);
            }
            break;
        }
    }
    return s->n_mem > before ? s->n_mem - before : 0;
}

/* ---------- probing ---------- */

static void swim_probe_done(swim_t *s)
{
    s->probe.active = false;
}

static const swim_mem *swim_probe_target(swim_t *s)
{
    for (size_t tries = 0; tries <= s->n_plist + 1; tries++) {
        if (s->ppos >= s->n_plist) {
            swim_plist_rebuild(s);
            if (s->n_plist == 0)
                return NULL;
        }
        uint32_t i = s->plist[s->ppos++];
        if (i < s->n_mem && i != 0 && swim_is_live(s->mem[i].pub.node.state))
            return &s->mem[i];
    }
    return NULL;
}

static void swim_probe_start(swim_t *s, uint64_t now)
{
    s->probe_at = now + swim_scaled(s, s->cfg.probe_interval_ms);
    if (s->left)
        return;
    if (s->ppos >= s->n_plist)
        swim_reap(s, now); /* once per sweep is plenty */
    const swim_mem *t = swim_probe_target(s);
    if (!t)
        return;
    swim_probe *p = &s->probe;
    p->active = true;
    p->indirect_sent = false;
    p->target = t->pub.node.id;
    p->seq = ++s->seq;
    p->direct_deadline = now + swim_scaled(s, s->cfg.probe_timeout_ms);
    p->round_deadline = now + swim_scaled(s, s->cfg.probe_interval_ms);
    p->expected_nacks = p->nacks = 0;
    s->st.probes++;

    swim_msg msg = {.type = SWIM_MSG_PING, .seq = p->seq, .target = t->pub.node.id};
    swim_update buddy;
    const swim_update *first = NULL;
    if (t->pub.node.state == SWIM_SUSPECT) {
        /* Lifeguard's buddy system: tell the suspect first, so it can refute now */
        buddy.node = t->pub.node;
        buddy.from = s->mem[0].pub.node.id;
        first = &buddy;
    }
    char to[SWIM_ADDR_MAX + 1];
    memcpy(to, t->pub.node.addr, sizeof(to));
    swim_send_small(s, to, SWIM_CLASS_PROBE, &msg, first, first ? 1 : 0);
}

static void swim_probe_indirect(swim_t *s, uint64_t now)
{
    swim_probe *p = &s->probe;
    p->indirect_sent = true;
    swim_mem *t = swim_find(s, &p->target);
    if (!t || !swim_is_live(t->pub.node.state)) {
        swim_probe_done(s);
        return;
    }
    uint32_t idx[16];
    size_t k = s->cfg.indirect_checks < 16 ? s->cfg.indirect_checks : 16;
    size_t n = swim_pick(s, now, k, swim_ok_alive, &p->target, idx);
    char taddr[SWIM_ADDR_MAX + 1];
    memcpy(taddr, t->pub.node.addr, sizeof(taddr));
    for (size_t i = 0; i < n; i++) {
        swim_msg msg = {.type = SWIM_MSG_PING_REQ, .seq = p->seq, .target = p->target};
        memcpy(msg.target_addr, taddr, sizeof(taddr));
        char to[SWIM_ADDR_MAX + 1];
        memcpy(to, s->mem[idx[i]].pub.node.addr, sizeof(to));
        swim_send_small(s, to, SWIM_CLASS_PROBE, &msg, NULL, 0);
    }
    p->expected_nacks = (uint32_t)n;
    s->st.indirect_probes += n;
    /* and a second direct ping (memberlist sends a TCP ping here): one lost message
     * should not be enough to suspect anyone, and every suspicion is news that all N
     * members must hear — and the suspect must refute */
    swim_msg ping = {.type = SWIM_MSG_PING, .seq = p->seq, .target = p->target};
    swim_update buddy;
    const swim_update *first = NULL;
    if (t->pub.node.state == SWIM_SUSPECT) {
        buddy.node = t->pub.node;
        buddy.from = s->mem[0].pub.node.id;
        first = &buddy;
    }
    swim_send_small(s, taddr, SWIM_CLASS_PROBE, &ping, first, first ? 1 : 0);
}

static void swim_probe_fail(swim_t *s, uint64_t now)
{
    swim_probe *p = &s->probe;
    s->st.probes_failed++;
    /* Lifeguard: relays that answered with nacks show our own network works, so the
     * failure is the target's; missing nacks (or no relays at all) count against us */
    if (p->expected_nacks == 0)
        swim_health_add(s, 1);
    else if (p->nacks < p->expected_nacks)
        swim_health_add(s, (int)(p->expected_nacks - p->nacks));
    swim_member_id target = p->target;
    swim_probe_done(s);
    swim_mem *t = swim_find(s, &target);
    if (t && swim_is_live(t->pub.node.state)) {
        if (t->pub.node.state == SWIM_ALIVE)
            s->st.suspicions++;
        swim_apply_suspect(s, now, &target, t->pub.node.incarnation, &s->mem[0].pub.node.id);
    }
}

/* ---------- timers ---------- */

static void swim_relay_nack(swim_t *s, uint32_t i)
{
    swim_relay *r = &s->relays[i];
    swim_msg msg = {.type = SWIM_MSG_NACK, .seq = r->req_seq};
    char to[SWIM_ADDR_MAX + 1];
    memcpy(to, r->req_addr, sizeof(to));
    r->used = false;
    swim_send_small(s, to, SWIM_CLASS_PROBE, &msg, NULL, 0);
}

static void swim_suspect_expired(swim_t *s, uint64_t now, swim_mem *m)
{
    swim_node old = m->pub.node;
    swim_set_node(s, m, m->pub.node.incarnation, SWIM_DEAD, m->pub.node.ring);
    m->pub.since_ms = now;
    m->pub.confirmations = 0;
    m->n_accusers = 0;
    s->st.deaths++;
    swim_emit(s, SWIM_EV_MEMBER_UPDATED, m, &old);
    swim_broadcast(s, m, &s->mem[0].pub.node.id);
}

static void swim_gossip_round(swim_t *s, uint64_t now)
{
    s->gossip_at = now + s->cfg.gossip_interval_ms;
    if (s->bc_queued == 0)
        return;
    uint32_t idx[16];
    size_t k = s->cfg.gossip_nodes < 16 ? s->cfg.gossip_nodes : 16;
    size_t n = swim_pick(s, now, k, swim_ok_gossip, NULL, idx);
    for (size_t i = 0; i < n && s->bc_queued > 0; i++) {
        swim_msg msg = {.type = SWIM_MSG_GOSSIP};
        char to[SWIM_ADDR_MAX + 1];
        memcpy(to, s->mem[idx[i]].pub.node.addr, sizeof(to));
        swim_send_small(s, to, SWIM_CLASS_GOSSIP, &msg, NULL, 0);
    }
}

static uint32_t swim_pp_fast(const swim_t *s)
{
    uint32_t f = 2 * s->cfg.probe_interval_ms;
    return f < s->cfg.push_pull_interval_ms ? f : s->cfg.push_pull_interval_ms;
}

static uint64_t swim_jitter(swim_t *s, uint64_t ms)
{
    /* +-10%: keeps a cluster that started together from syncing in lockstep */
    uint64_t span = ms / 5;
    return ms - ms / 10 + (span ? swim_rand(&s->rng) % (span + 1) : 0);
}

static void swim_push_pull_round(swim_t *s, uint64_t now)
{
    s->pp_at = now + swim_jitter(s, s->pp_interval);
    if (s->left)
        return;
    uint32_t idx[1];
    size_t n = 0;
    s->pp_rounds++;
    /* every fourth round, try a dead member: heals partitions that outlived gossip */
    if (s->pp_rounds % 4 == 0)
        n = swim_pick(s, now, 1, swim_ok_dead, NULL, idx);
    if (n == 0)
        n = swim_pick(s, now, 1, swim_ok_alive, NULL, idx);
    if (n == 0)
        return;
    swim_mem *m = &s->mem[idx[0]];
    s->pp_seq = ++s->seq;
    s->pp_peer = m->pub.node.id;
    s->st.push_pulls++;
    swim_msg msg = {.type = SWIM_MSG_PUSH_PULL, .seq = s->pp_seq};
    char to[SWIM_ADDR_MAX + 1];
    memcpy(to, m->pub.node.addr, sizeof(to));
    swim_send_state(s, to, SWIM_CLASS_GOSSIP, &msg, false);
}

static void swim_join_attempt(swim_t *s, uint64_t now)
{
    s->join_seq = ++s->seq;
    for (size_t i = 0; i < s->n_seeds; i++) {
        swim_msg msg = {.type = SWIM_MSG_PUSH_PULL, .seq = s->join_seq, .flags = SWIM_PP_JOIN};
        swim_send_state(s, s->seeds[i], SWIM_CLASS_JOIN, &msg, true);
    }
    uint64_t d = s->cfg.join_retry_min_ms;
    for (uint32_t i = 0; i < s->join_attempts && d < s->cfg.join_retry_max_ms; i++)
        d *= 2;
    if (d > s->cfg.join_retry_max_ms)
        d = s->cfg.join_retry_max_ms;
    s->join_attempts++;
    s->join_at = now + swim_jitter(s, d);
}

static uint64_t swim_compute_deadline(swim_t *s)
{
    /* drop stale heap entries so the top is a real deadline */
    while (s->n_heap && !swim_timer_live(s, &s->heap[0]))
        swim_heap_pop(s);
    uint64_t d = s->probe_at;
    if (s->probe.active) {
        uint64_t pd = s->probe.indirect_sent ? s->probe.round_deadline : s->probe.direct_deadline;
        if (pd < d)
            d = pd;
    }
    if (s->bc_queued && s->gossip_at < d)
        d = s->gossip_at;
    if (!s->left && s->pp_at < d)
        d = s->pp_at;
    if (s->joining && s->join_at < d)
        d = s->join_at;
    if (s->left && !s->leave_done && s->leave_done_at < d)
        d = s->leave_done_at;
    if (s->n_heap && s->heap[0].when < d)
        d = s->heap[0].when;
    if (s->grace_until > s->last_now && d < s->grace_until) {
        /* judgments are on hold until then; other timers ran in this tick */
        d = s->grace_until;
    }
    /* a deadline that has already passed (a confirmation shortened a suspicion) means
     * "now": never report one in the past, or a tick would look late — a stall */
    return d > s->last_now ? d : s->last_now;
}

/* Common prologue of every input. */
static void swim_input_begin(swim_t *s, uint64_t now)
{
    swim_reset_effects(s);
    if (!s->started) {
        /* swim_new does not know the caller's clock: its schedule counts from 0 */
        s->started = true;
        s->probe_at += now;
        s->gossip_at += now;
        s->pp_at += now;
        s->mem[0].pub.since_ms = now;
        s->armed = swim_compute_deadline(s);
        s->last_now = now;
    }
    if (now > s->last_now)
        s->last_now = now;
}

static void swim_input_end(swim_t *s)
{
    s->armed = swim_compute_deadline(s);
}

void swim_tick(swim_t *s, uint64_t now)
{
    if (!s)
        return;
    swim_input_begin(s, now);
    if (now > s->armed + s->cfg.loop_lag_threshold_ms) {
        /* woken far too late: the loop was stuck. Whatever arrived meanwhile is still
         * in the inbox, so failures wait a moment for it. */
        s->st.loop_stalls++;
        swim_health_add(s, 1);
        uint64_t grace = s->cfg.probe_timeout_ms / 10 + 1;
        s->grace_until = now + grace;
    }
    bool judge = now >= s->grace_until;

    /* relays and suspicions */
    while (s->n_heap) {
        swim_timer t = s->heap[0];
        if (!swim_timer_live(s, &t)) {
            swim_heap_pop(s);
            continue;
        }
        if (t.when > now)
            break;
        if (t.kind == SWIM_T_SUSPECT && !judge)
            break;
        swim_heap_pop(s);
        if (t.kind == SWIM_T_RELAY)
            swim_relay_nack(s, t.idx);
        else
            swim_suspect_expired(s, now, &s->mem[t.idx]);
    }

    if (s->probe.active && judge) {
        if (!s->probe.indirect_sent && now >= s->probe.direct_deadline)
            swim_probe_indirect(s, now);
        if (s->probe.active && s->probe.indirect_sent && now >= s->probe.round_deadline)
            swim_probe_fail(s, now);
    }
    if (!s->probe.active && now >= s->probe_at)
        swim_probe_start(s, now);
    if (now >= s->gossip_at)
        swim_gossip_round(s, now);
    if (!s->left && now >= s->pp_at)
        swim_push_pull_round(s, now);
    if (s->joining && now >= s->join_at)
        swim_join_attempt(s, now);
    if (s->left && !s->leave_done && now >= s->leave_done_at) {
        s->leave_done = true;
        swim_emit(s, SWIM_EV_LEAVE_DONE, &s->mem[0], NULL);
    }
    swim_input_end(s);
}

/* ---------- receiving ---------- */

static bool swim_str_ok(const char *p, size_t cap)
{
    return memchr(p, '\0', cap) != NULL;
}

static bool swim_node_ok(const swim_node *n)
{
    return swim_str_ok(n->name, sizeof(n->name)) && swim_str_ok(n->addr, sizeof(n->addr)) &&
           (unsigned)n->state <= SWIM_LEFT && (unsigned)n->ring <= SWIM_RING_REMOVED;
}

static bool swim_msg_ok(const swim_msg *m)
{
    if (m->type < SWIM_MSG_PING || m->type > SWIM_MSG_PUSH_PULL_REPLY)
        return false;
    if (m->n_updates > SWIM_MAX_UPDATES || (m->n_updates && !m->updates))
        return false;
    if (m->n_members > SWIM_MAX_MEMBERS || (m->n_members && !m->members))
        return false;
    if (!swim_str_ok(m->target_addr, sizeof(m->target_addr)))
        return false;
    if (m->type == SWIM_MSG_PING_REQ && m->target_addr[0] == '\0')
        return false;
    for (uint32_t i = 0; i < m->n_updates; i++)
        if (!swim_node_ok(&m->updates[i].node))
            return false;
    for (uint32_t i = 0; i < m->n_members; i++)
        if (!swim_node_ok(&m->members[i]))
            return false;
    return true;
}

static int32_t swim_relay_find(const swim_t *s, uint32_t my_seq)
{
    for (int32_t i = 0; i < SWIM_RELAY_MAX; i++)
        if (s->relays[i].used && s->relays[i].my_seq == my_seq)
            return i;
    return SWIM_NONE;
}

static void swim_on_ping_req(swim_t *s, uint64_t now, const char *from_addr, const swim_msg *msg)
{
    int32_t slot = SWIM_NONE;
    for (int32_t i = 0; i < SWIM_RELAY_MAX; i++)
        if (!s->relays[i].used) {
            slot = i;
            break;
        }
    if (slot == SWIM_NONE) {
        s->st.msgs_ignored++; /* flooded with relay requests: let them time out */
        return;
    }
    swim_relay *r = &s->relays[slot];
    r->used = true;
    r->gen = ++s->gen;
    r->my_seq = ++s->seq;
    r->req_seq = msg->seq;
    swim_copy_str(r->req_addr, sizeof(r->req_addr), from_addr);
    /* nack a little before the requester's own deadline, so it arrives in time to count */
    uint64_t nack_at = now + swim_scaled(s, s->cfg.probe_timeout_ms) * 4 / 5;
    swim_heap_push(s, (swim_timer){nack_at, SWIM_T_RELAY, (uint32_t)slot, r->gen});
    swim_msg ping = {.type = SWIM_MSG_PING, .seq = r->my_seq, .target = msg->target};
    char to[SWIM_ADDR_MAX + 1];
    memcpy(to, msg->target_addr, sizeof(to));
    swim_send_small(s, to, SWIM_CLASS_PROBE, &ping, NULL, 0);
}

static void swim_on_ack(swim_t *s, const swim_msg *msg)
{
    if (s->probe.active && msg->seq == s->probe.seq) {
        swim_health_add(s, -1);
        swim_probe_done(s);
        return;
    }
    int32_t r = swim_relay_find(s, msg->seq);
    if (r == SWIM_NONE) {
        s->st.msgs_ignored++; /* late: the probe is over */
        return;
    }
    swim_msg ack = {.type = SWIM_MSG_ACK, .seq = s->relays[r].req_seq};
    char to[SWIM_ADDR_MAX + 1];
    memcpy(to, s->relays[r].req_addr, sizeof(to));
    s->relays[r].used = false;
    swim_send_small(s, to, SWIM_CLASS_PROBE, &ack, NULL, 0);
}

static bool swim_same_view_as(const swim_t *s, const swim_digest *d)
{
    return d->count == s->n_mem && d->hash == s->digest_hash;
}

static void swim_on_push_pull(swim_t *s, uint64_t now, const char *from_addr, const swim_msg *msg)
{
    bool same = swim_same_view_as(s, &msg->digest);
    swim_merge_state(s, now, msg);
    if (msg->flags & SWIM_PP_JOIN) {
        /* the joiner's record was in its state; if not, it is not joinable */
        swim_mark_joined(s);
    }
    if (msg->flags & SWIM_PP_NO_REPLY)
        return;
    swim_msg reply = {.type = SWIM_MSG_PUSH_PULL_REPLY, .seq = msg->seq};
    bool full = (msg->flags & SWIM_PP_JOIN) || !same || msg->n_members > 0;
    swim_send_state(s, from_addr, SWIM_CLASS_GOSSIP, &reply, full);
}

static void swim_on_push_pull_reply(swim_t *s, uint64_t now, const char *from_addr,
                                    const swim_msg *msg)
{
    bool for_join = s->join_seq != 0 && msg->seq == s->join_seq;
    bool for_pp = s->pp_seq != 0 && msg->seq == s->pp_seq;
    if (!for_join && !for_pp) {
        s->st.msgs_ignored++;
        return;
    }
    size_t added = swim_merge_state(s, now, msg);
    if (for_join) {
        swim_mark_joined(s);
        s->join_seq = 0;
        /* others joined at the same time through other paths: compare notes soon */
        s->pp_interval = swim_pp_fast(s);
        uint64_t at = now + swim_jitter(s, s->pp_interval);
        if (at < s->pp_at)
            s->pp_at = at;
        return;
    }
    s->pp_seq = 0;
    if (added > 0 || (msg->n_members > 0 && msg->digest.count < s->n_mem)) {
        /* one of us lacked members: a join wave is still spreading, sync again soon */
        s->pp_interval = swim_pp_fast(s);
    } else {
        /* same members (states may differ — gossip handles those): back off towards the
         * configured interval, so loss and churn do not turn into whole-state traffic */
        uint32_t next = s->pp_interval * 2;
        s->pp_interval = next < s->cfg.push_pull_interval_ms ? next : s->cfg.push_pull_interval_ms;
    }
    if (msg->n_members > 0 && !swim_same_view_as(s, &msg->digest)) {
        /* we know something the peer does not: push it (no answer wanted) */
        swim_msg push = {.type = SWIM_MSG_PUSH_PULL, .seq = ++s->seq, .flags = SWIM_PP_NO_REPLY};
        swim_send_state(s, from_addr, SWIM_CLASS_GOSSIP, &push, true);
    }
}

int swim_recv(swim_t *s, uint64_t now, const char *from_addr, const swim_msg *msg)
{
    if (!s || !msg || !from_addr)
        return KV_EINVAL;
    swim_input_begin(s, now);
    if (!swim_msg_ok(msg) || strnlen(from_addr, SWIM_ADDR_MAX + 1) > SWIM_ADDR_MAX ||
        from_addr[0] == '\0') {
        s->st.msgs_invalid++;
        swim_input_end(s);
        return KV_EPROTO;
    }
    s->st.msgs_recv++;
    if (swim_id_equal(&msg->from, &s->mem[0].pub.node.id)) {
        s->st.msgs_ignored++; /* our own join to ourselves as a seed */
        swim_input_end(s);
        return KV_OK;
    }
    s->n_corr = 0;
    for (uint32_t i = 0; i < msg->n_updates; i++)
        swim_apply_update(s, now, &msg->updates[i]);
    if (s->n_corr > 0) {
        swim_msg fix = {.type = SWIM_MSG_GOSSIP};
        swim_update corr[SWIM_CORRECTIONS_MAX];
        uint32_t n = s->n_corr;
        memcpy(corr, s->corr, n * sizeof(*corr));
        s->n_corr = 0;
        s->st.corrections++;
        swim_send_small(s, from_addr, SWIM_CLASS_GOSSIP, &fix, corr, n);
    }

    switch (msg->type) {
    case SWIM_MSG_PING:
        if (!swim_id_is_zero(&msg->target) &&
            !swim_id_equal(&msg->target, &s->mem[0].pub.node.id)) {
            /* meant for a previous owner of our address */
            s->st.msgs_ignored++;
            break;
        }
        {
            swim_msg ack = {.type = SWIM_MSG_ACK, .seq = msg->seq};
            swim_send_small(s, from_addr, SWIM_CLASS_PROBE, &ack, NULL, 0);
        }
        break;
    case SWIM_MSG_ACK:
        swim_on_ack(s, msg);
        break;
    case SWIM_MSG_PING_REQ:
        swim_on_ping_req(s, now, from_addr, msg);
        break;
    case SWIM_MSG_NACK:
        if (s->probe.active && msg->seq == s->probe.seq) {
            s->probe.nacks++;
            s->st.nacks_recv++;
        } else {
            s->st.msgs_ignored++;
        }
        break;
    case SWIM_MSG_GOSSIP:
        break;
    case SWIM_MSG_PUSH_PULL:
        swim_on_push_pull(s, now, from_addr, msg);
        break;
    case SWIM_MSG_PUSH_PULL_REPLY:
        swim_on_push_pull_reply(s, now, from_addr, msg);
        break;
    }
    swim_input_end(s);
    return KV_OK;
}

/* ---------- other inputs ---------- */

int swim_join(swim_t *s, uint64_t now, const char *const *seeds, size_t n_seeds)
{
    if (!s || !seeds || n_seeds == 0 || n_seeds > SWIM_MAX_SEEDS)
        return KV_EINVAL;
    for (size_t i = 0; i < n_seeds; i++)
        if (!seeds[i] || !seeds[i][0] || strlen(seeds[i]) > SWIM_SEED_MAX)
            return KV_EINVAL;
    swim_input_begin(s, now);
    for (size_t i = 0; i < n_seeds; i++)
        swim_copy_str(s->seeds[i], sizeof(s->seeds[i]), seeds[i]);
    s->n_seeds = n_seeds;
    if (!s->left) {
        s->joining = true;
        s->joined = false;
        s->join_attempts = 0;
        swim_join_attempt(s, now);
    }
    swim_input_end(s);
    return KV_OK;
}

void swim_leave(swim_t *s, uint64_t now)
{
    if (!s)
        return;
    swim_input_begin(s, now);
    if (s->left) {
        swim_input_end(s);
        return;
    }
    swim_mem *me = &s->mem[0];
    swim_node old = me->pub.node;
    s->left = true;
    s->joining = false;
    swim_probe_done(s);
    swim_set_node(s, me, old.incarnation + 1, SWIM_LEFT, old.ring);
    me->pub.since_ms = now;
    swim_self_changed(s, old.incarnation);
    swim_emit(s, SWIM_EV_MEMBER_UPDATED, me, &old);
    swim_broadcast(s, me, &me->pub.node.id);
    /* tell a few members right away; gossip rounds carry it on */
    uint32_t idx[16];
    size_t k = 2 * (s->cfg.gossip_nodes ? s->cfg.gossip_nodes : 1);
    size_t n = swim_pick(s, now, k < 16 ? k : 16, swim_ok_alive, NULL, idx);
    swim_update bye = {.node = me->pub.node, .from = me->pub.node.id};
    for (size_t i = 0; i < n; i++) {
        swim_msg msg = {.type = SWIM_MSG_GOSSIP};
        char to[SWIM_ADDR_MAX + 1];
        memcpy(to, s->mem[idx[i]].pub.node.addr, sizeof(to));
        /* in every one of these, whatever the queue's retransmit count says */
        swim_send_small(s, to, SWIM_CLASS_GOSSIP, &msg, &bye, 1);
    }
    s->leave_done = false;
    s->leave_done_at = n ? now + s->cfg.gossip_interval_ms : now;
    if (n == 0) {
        s->leave_done = true;
        swim_emit(s, SWIM_EV_LEAVE_DONE, me, NULL);
    }
    swim_input_end(s);
}

void swim_note_loop_lag(swim_t *s, uint32_t lag_ms)
{
    if (!s || lag_ms < s->cfg.loop_lag_threshold_ms)
        return;
    s->st.loop_stalls++;
    swim_health_add(s, 1);
}

int swim_set_ring_status(swim_t *s, uint64_t now, swim_ring_status ring)
{
    if (!s || (unsigned)ring > SWIM_RING_REMOVED)
        return KV_EINVAL;
    if (s->left)
        return KV_ECLOSED;
    swim_input_begin(s, now);
    swim_mem *me = &s->mem[0];
    if (me->pub.node.ring != ring) {
        swim_node old = me->pub.node;
        swim_set_node(s, me, old.incarnation + 1, me->pub.node.state, ring);
        swim_self_changed(s, old.incarnation);
        swim_emit(s, SWIM_EV_MEMBER_UPDATED, me, &old);
        swim_broadcast(s, me, &me->pub.node.id);
    }
    swim_input_end(s);
    return KV_OK;
}

int swim_remove_member(swim_t *s, uint64_t now, const swim_member_id *id)
{
    if (!s || !id || swim_id_equal(id, &s->mem[0].pub.node.id))
        return KV_ENOTFOUND;
    swim_mem *m = swim_find(s, id);
    if (!m)
        return KV_ENOTFOUND;
    if (m->pub.node.state == SWIM_LEFT)
        return KV_EEXIST;
    if (m->pub.node.state != SWIM_DEAD)
        return KV_EUNAVAIL;
    swim_input_begin(s, now);
    swim_apply_dead(s, now, id, m->pub.node.incarnation, &s->mem[0].pub.node.id, SWIM_LEFT);
    swim_input_end(s);
    return KV_OK;
}

/* ---------- outputs and queries ---------- */

bool swim_pop_send(swim_t *s, swim_send *out)
{
    if (!s || !out || s->out_pos >= s->n_out)
        return false;
    const swim_out *o = &s->out[s->out_pos++];
    out->to = s->spool + o->to_off;
    out->cls = o->cls;
    out->msg = o->msg;
    out->msg.updates = o->msg.n_updates ? s->upool + o->upd_off : NULL;
    out->msg.members = o->msg.n_members ? s->npool + o->mem_off : NULL;
    return true;
}

bool swim_pop_event(swim_t *s, swim_event *out)
{
    if (!s || !out || s->ev_len == 0)
        return false;
    *out = s->ev[s->ev_head];
    s->ev_head = (s->ev_head + 1) % s->ev_cap;
    s->ev_len--;
    if (s->ev_len == 0 && s->ev_cap > 256) {
        /* a burst (a whole state merged) is over: do not keep its buffer */
        free(s->ev);
        s->ev = NULL;
        s->ev_cap = s->ev_head = 0;
    }
    return true;
}

uint64_t swim_next_deadline(const swim_t *s)
{
    return s->armed;
}

size_t swim_member_count(const swim_t *s)
{
    return s->n_mem;
}

const swim_member *swim_member_at(const swim_t *s, size_t i)
{
    return i < s->n_mem ? &s->mem[i].pub : NULL;
}

const swim_member *swim_member_find(const swim_t *s, const swim_member_id *id)
{
    int32_t i = swim_find_idx(s, id);
    return i == SWIM_NONE ? NULL : &s->mem[i].pub;
}

const swim_member *swim_self(const swim_t *s)
{
    return &s->mem[0].pub;
}

size_t swim_live_count(const swim_t *s)
{
    return s->n_live;
}

swim_digest swim_view_digest(const swim_t *s)
{
    return (swim_digest){(uint32_t)s->n_mem, s->digest_hash};
}

bool swim_is_joined(const swim_t *s)
{
    return s->joined;
}

void swim_get_stats(const swim_t *s, swim_stats *out)
{
    *out = s->st;
    out->awareness = (uint32_t)s->awareness;
    out->queued = (uint32_t)s->bc_queued;
}

/* ---------- lifecycle ---------- */

swim_t *swim_new(const swim_config *cfg, const swim_node *self, uint64_t seed)
{
    if (!cfg || !self || !swim_config_valid(cfg) || !swim_node_ok(self) || !self->name[0] ||
        !self->addr[0] || (unsigned)self->ring > SWIM_RING_REMOVED)
        return NULL;
    swim_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->cfg = *cfg;
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        s->rng.s[i] = swim_splitmix(&x);
    s->seq = (uint32_t)swim_rand(&s->rng);
    s->bc_free = SWIM_NONE;
    for (int i = 0; i < SWIM_BUCKETS; i++)
        s->bucket_head[i] = s->bucket_tail[i] = SWIM_NONE;
    swim_ht_rebuild(s);

    swim_node me = *self;
    me.state = SWIM_ALIVE;
    me.incarnation = self->incarnation + 1;
    if (!swim_add(s, 0, &me)) {
        swim_free(s);
        return NULL;
    }
    s->n_plist = 0; /* never probe ourselves */
    s->ev_len = 0;  /* no "added" event for self */
    swim_emit(s, SWIM_EV_SELF_INCARNATION, &s->mem[0], NULL);

    s->pp_interval = cfg->push_pull_interval_ms;
    /* first probe and sync at random offsets, so nodes started together spread out */
    s->probe_at = swim_rand(&s->rng) % cfg->probe_interval_ms;
    s->gossip_at = swim_rand(&s->rng) % cfg->gossip_interval_ms;
    s->pp_at = swim_jitter(s, cfg->push_pull_interval_ms);
    s->armed = swim_compute_deadline(s);
    return s;
}

void swim_free(swim_t *s)
{
    if (!s)
        return;
    free(s->mem);
    free(s->ht);
    free(s->tombs);
    free(s->plist);
    free(s->heap);
    free(s->bc);
    free(s->out);
    free(s->upool);
    free(s->npool);
    free(s->spool);
    free(s->ev);
    free(s);
}
