/*
 * sim.c — the deterministic SWIM network simulator (see sim.h). Single-threaded.
 *
 * Design notes
 * ------------
 * One binary heap of events ordered by (time, insertion number), so equal times keep
 * their order and a run is reproducible. Event kinds: a message delivery, a core's timer
 * (each node has at most one live timer; re-arming bumps a generation and older heap
 * entries are skipped), the start and end of a slow node's stall.
 *
 * After every input to a core the simulator drains it: sends become deliveries (loss,
 * partitions and blocks decided at send time, crashes at delivery time — a message to a
 * node that is down vanishes), events update the bookkeeping (who holds whom as dead,
 * false positives, the last incarnation each node announced), and the core's next
 * deadline becomes its timer.
 *
 * A message in flight is a deep copy (the core's pointers die at its next input). A node
 * that is stalled queues deliveries in a backlog; when the stall ends it is ticked first
 * (late, as a libuv loop runs timers before I/O), then gets the backlog in arrival order,
 * then a loop-lag report.
 */
#include "sim.h"

#include <assert.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------- random numbers (the simulator's own; cores have theirs) ---------- */

static uint64_t sim_mix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* ---------- types ---------- */

enum { SIM_EV_DELIVER = 1, SIM_EV_TIMER, SIM_EV_STALL_BEGIN, SIM_EV_STALL_END };

typedef struct sim_ev {
    uint64_t t;
    uint64_t order;
    uint32_t kind;
    uint32_t node;
    uint32_t arg; /* DELIVER: packet slot */
    uint32_t gen; /* TIMER, STALL_*: generation */
} sim_ev;

typedef struct sim_pkt {
    uint32_t from, to;
    swim_msg msg;
    swim_update *upd;
    swim_node *mem;
    int32_t next_free;
} sim_pkt;

typedef struct sim_node {
    swim_t *core;
    bool running, stalled, stop_after_drain;
    uint8_t group;
    uint32_t timer_gen;
    uint64_t timer_at;
    swim_member_id id;
    char addr[24];
    char name[24];
    uint64_t last_inc;  /* last incarnation announced (what the data dir would hold) */
    uint64_t start_inc; /* the incarnation of the current life */
    uint32_t lives;
    uint64_t started_at;
    /* slow node */
    uint32_t slow_period, slow_stall, slow_gen;
    uint32_t *backlog;
    size_t n_backlog, cap_backlog;
    /* bookkeeping about this node as a member */
    uint32_t dead_count;
    uint64_t fp_about, susp_about;
} sim_node;

struct sim_t {
    sim_config cfg;
    uint64_t rng;
    uint64_t now;
    uint64_t order;
    sim_node *nodes;
    uint32_t n_running;

    sim_ev *heap;
    size_t n_heap, cap_heap;

    sim_pkt *pkts;
    size_t n_pkts, cap_pkts;
    int32_t pkt_free;

    bool blocked[8][8];
    uint64_t fps;
    uint64_t false_deaths;
    sim_traffic traffic;
    uint64_t node_ms_done;     /* running time of lives that ended */
    uint64_t accusations_done; /* swim_stats.suspicions of cores that stopped */
    uint64_t trace;

    sim_event_fn on_event;
    void *on_event_user;
    sim_send_fn on_send;
    void *on_send_user;
};

static void *sim_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "sim: out of memory\n");
        abort();
    }
    return q;
}

static uint64_t sim_rand(sim_t *s)
{
    return sim_mix(&s->rng);
}

static double sim_rand01(sim_t *s)
{
    return (double)(sim_rand(s) >> 11) * (1.0 / 9007199254740992.0);
}

static void sim_trace(sim_t *s, uint64_t a, uint64_t b)
{
    uint64_t x = s->trace ^ a ^ (b * 0x9e3779b97f4a7c15ULL);
    s->trace = sim_mix(&x);
}

/* ---------- event heap ---------- */

static bool sim_ev_less(const sim_ev *a, const sim_ev *b)
{
    return a->t < b->t || (a->t == b->t && a->order < b->order);
}

static void sim_push(sim_t *s, uint64_t t, uint32_t kind, uint32_t node, uint32_t arg, uint32_t gen)
{
    if (s->n_heap == s->cap_heap) {
        s->cap_heap = s->cap_heap ? s->cap_heap * 2 : 1024;
        s->heap = sim_xrealloc(s->heap, s->cap_heap * sizeof(*s->heap));
    }
    sim_ev e = {t, s->order++, kind, node, arg, gen};
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!sim_ev_less(&e, &s->heap[p]))
            break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = e;
}

static sim_ev sim_pop(sim_t *s)
{
    sim_ev top = s->heap[0];
    sim_ev last = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && sim_ev_less(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!sim_ev_less(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n)
        s->heap[i] = last;
    return top;
}

/* ---------- packets ---------- */

static uint32_t sim_pkt_alloc(sim_t *s)
{
    if (s->pkt_free >= 0) {
        uint32_t i = (uint32_t)s->pkt_free;
        s->pkt_free = s->pkts[i].next_free;
        return i;
    }
    if (s->n_pkts == s->cap_pkts) {
        s->cap_pkts = s->cap_pkts ? s->cap_pkts * 2 : 1024;
        s->pkts = sim_xrealloc(s->pkts, s->cap_pkts * sizeof(*s->pkts));
    }
    return (uint32_t)s->n_pkts++;
}

static void sim_pkt_free(sim_t *s, uint32_t i)
{
    sim_pkt *p = &s->pkts[i];
    free(p->upd);
    free(p->mem);
    p->upd = NULL;
    p->mem = NULL;
    p->next_free = s->pkt_free;
    s->pkt_free = (int32_t)i;
}

/* "n<i>:7946" -> i, or -1 */
static int sim_parse_addr(const sim_t *s, const char *a)
{
    if (a[0] != 'n')
        return -1;
    char *end;
    unsigned long v = strtoul(a + 1, &end, 10);
    if (end == a + 1 || strcmp(end, ":7946") != 0 || v >= s->cfg.n)
        return -1;
    return (int)v;
}

/* ---------- draining a core ---------- */

static void sim_stop_node(sim_t *s, uint32_t i);

static void sim_bookkeep(sim_t *s, uint32_t obs, const swim_event *ev)
{
    sim_node *o = &s->nodes[obs];
    int j = sim_node_of(s, &ev->member.node.id);
    if (ev->kind == SWIM_EV_SELF_INCARNATION) {
        o->last_inc = ev->member.node.incarnation;
        return;
    }
    if (ev->kind == SWIM_EV_LEAVE_DONE) {
        o->stop_after_drain = true;
        return;
    }
    if (j < 0 || (uint32_t)j == obs)
        return;
    sim_node *m = &s->nodes[j];
    swim_state now_st = ev->member.node.state;
    bool was_dead = false, is_dead = false;
    switch (ev->kind) {
    case SWIM_EV_MEMBER_ADDED:
        is_dead = now_st >= SWIM_DEAD;
        break;
    case SWIM_EV_MEMBER_UPDATED:
        was_dead = ev->old_state >= SWIM_DEAD;
        is_dead = now_st >= SWIM_DEAD;
        break;
    case SWIM_EV_MEMBER_REAPED:
        was_dead = true;
        break;
    default:
        return;
    }
    if (!was_dead && is_dead)
        m->dead_count++;
    if (was_dead && !is_dead)
        m->dead_count--;
    /* news about the current life of a running node */
    bool current = m->running && ev->member.node.incarnation >= m->start_inc;
    if (ev->kind == SWIM_EV_MEMBER_UPDATED && current) {
        if (now_st == SWIM_SUSPECT && ev->old_state != SWIM_SUSPECT)
            m->susp_about++;
        if (now_st == SWIM_DEAD && ev->old_state != SWIM_DEAD) {
            m->fp_about++;
            s->fps++;
            if (m->dead_count == 1)
                s->false_deaths++; /* the first to hold it dead: a new episode */
        }
    }
}

static void sim_drain(sim_t *s, uint32_t i)
{
    sim_node *n = &s->nodes[i];
    swim_send snd;
    while (swim_pop_send(n->core, &snd)) {
        size_t bytes = swim_msg_wire_bound(&snd.msg);
        s->traffic.msgs++;
        s->traffic.bytes += bytes;
        if (snd.cls == SWIM_CLASS_PROBE)
            s->traffic.probe_msgs++;
        else if (snd.msg.type == SWIM_MSG_GOSSIP)
            s->traffic.gossip_msgs++;
        else
            s->traffic.state_msgs++;
        if (s->on_send)
            s->on_send(s, i, &snd, s->on_send_user);
        int to = sim_parse_addr(s, snd.to);
        if (to < 0)
            continue;
        if (s->cfg.loss > 0 && sim_rand01(s) < s->cfg.loss)
            continue;
        if (s->blocked[n->group][s->nodes[to].group])
            continue;
        uint32_t slot = sim_pkt_alloc(s);
        sim_pkt *p = &s->pkts[slot];
        p->from = i;
        p->to = (uint32_t)to;
        p->msg = snd.msg;
        p->upd = NULL;
        p->mem = NULL;
        if (snd.msg.n_updates) {
            p->upd = sim_xrealloc(NULL, snd.msg.n_updates * sizeof(*p->upd));
            memcpy(p->upd, snd.msg.updates, snd.msg.n_updates * sizeof(*p->upd));
        }
        if (snd.msg.n_members) {
            p->mem = sim_xrealloc(NULL, snd.msg.n_members * sizeof(*p->mem));
            memcpy(p->mem, snd.msg.members, snd.msg.n_members * sizeof(*p->mem));
        }
        p->msg.updates = p->upd;
        p->msg.members = p->mem;
        uint64_t d = s->cfg.delay_ms;
        if (s->cfg.jitter_ms)
            d += sim_rand(s) % (s->cfg.jitter_ms + 1);
        sim_push(s, s->now + d, SIM_EV_DELIVER, (uint32_t)to, slot, 0);
    }
    swim_event ev;
    while (swim_pop_event(n->core, &ev)) {
        sim_bookkeep(s, i, &ev);
        if (s->on_event)
            s->on_event(s, i, &ev, s->on_event_user);
    }
    if (n->stop_after_drain) {
        sim_stop_node(s, i);
        return;
    }
    uint64_t d = swim_next_deadline(n->core);
    if (d <= s->now)
        d = s->now + 1; /* a core that wants "now" again would spin the loop */
    if (d != n->timer_at) {
        n->timer_at = d;
        n->timer_gen++;
        sim_push(s, d, SIM_EV_TIMER, i, 0, n->timer_gen);
    }
}

/* ---------- node lifecycle ---------- */

static void sim_forget_views_of(sim_t *s, uint32_t i)
{
    /* a stopped node holds no views: take back its dead verdicts */
    swim_t *c = s->nodes[i].core;
    for (size_t k = 0; k < swim_member_count(c); k++) {
        const swim_member *m = swim_member_at(c, k);
        int j = sim_node_of(s, &m->node.id);
        if (j >= 0 && (uint32_t)j != i && m->node.state >= SWIM_DEAD)
            s->nodes[j].dead_count--;
    }
}

static void sim_stop_node(sim_t *s, uint32_t i)
{
    sim_node *n = &s->nodes[i];
    if (!n->running)
        return;
    sim_forget_views_of(s, i);
    swim_stats st;
    swim_get_stats(n->core, &st);
    s->accusations_done += st.suspicions;
    swim_free(n->core);
    n->core = NULL;
    n->running = false;
    n->stalled = false;
    n->stop_after_drain = false;
    n->timer_gen++;
    n->slow_gen++;
    n->slow_period = 0;
    for (size_t k = 0; k < n->n_backlog; k++)
        sim_pkt_free(s, n->backlog[k]);
    n->n_backlog = 0;
    s->n_running--;
    s->node_ms_done += s->now - n->started_at;
}

void sim_start(sim_t *s, uint32_t i, const uint32_t *seeds, size_t n_seeds)
{
    assert(i < s->cfg.n);
    sim_node *n = &s->nodes[i];
    if (n->running)
        return;
    swim_node self;
    memset(&self, 0, sizeof(self));
    self.id = n->id;
    snprintf(self.name, sizeof(self.name), "%s", n->name);
    snprintf(self.addr, sizeof(self.addr), "%s", n->addr);
    self.incarnation = n->last_inc;
    self.ring = SWIM_RING_NORMAL;
    uint64_t x = s->cfg.seed ^ ((uint64_t)i << 32) ^ n->lives;
    n->core = swim_new(&s->cfg.swim, &self, sim_mix(&x));
    if (!n->core) {
        fprintf(stderr, "sim: swim_new failed (bad config?)\n");
        abort();
    }
    n->lives++;
    n->running = true;
    n->stalled = false;
    n->started_at = s->now;
    n->start_inc = swim_self(n->core)->node.incarnation;
    n->timer_at = 0;
    s->n_running++;
    swim_tick(n->core, s->now);
    if (n_seeds) {
        const char *addrs[SWIM_MAX_SEEDS];
        size_t k = n_seeds < SWIM_MAX_SEEDS ? n_seeds : SWIM_MAX_SEEDS;
        sim_drain(s, i);
        for (size_t j = 0; j < k; j++)
            addrs[j] = s->nodes[seeds[j]].addr;
        swim_join(n->core, s->now, addrs, k);
    }
    sim_drain(s, i);
}

void sim_crash(sim_t *s, uint32_t i)
{
    sim_stop_node(s, i);
}

void sim_leave(sim_t *s, uint32_t i)
{
    sim_node *n = &s->nodes[i];
    if (!n->running || n->stalled)
        return;
    swim_leave(n->core, s->now);
    sim_drain(s, i);
}

bool sim_running(const sim_t *s, uint32_t i)
{
    return s->nodes[i].running;
}

uint32_t sim_running_count(const sim_t *s)
{
    return s->n_running;
}

/* ---------- the loop ---------- */

static void sim_deliver(sim_t *s, uint32_t slot)
{
    sim_pkt *p = &s->pkts[slot];
    sim_node *n = &s->nodes[p->to];
    if (!n->running) {
        sim_pkt_free(s, slot);
        return;
    }
    if (n->stalled) {
        if (n->n_backlog == n->cap_backlog) {
            n->cap_backlog = n->cap_backlog ? n->cap_backlog * 2 : 64;
            n->backlog = sim_xrealloc(n->backlog, n->cap_backlog * sizeof(*n->backlog));
        }
        n->backlog[n->n_backlog++] = slot;
        return;
    }
    sim_trace(s, s->now,
              ((uint64_t)p->from << 40) ^ ((uint64_t)p->to << 16) ^ p->msg.type ^
                  ((uint64_t)p->msg.seq << 8));
    uint32_t to = p->to;
    int rc = swim_recv(n->core, s->now, s->nodes[p->from].addr, &p->msg);
    if (rc != 0) {
        fprintf(stderr, "sim: core refused a message from a core (%d)\n", rc);
        abort();
    }
    sim_pkt_free(s, slot);
    sim_drain(s, to);
}

static void sim_stall_end(sim_t *s, uint32_t i)
{
    sim_node *n = &s->nodes[i];
    n->stalled = false;
    /* timers first, as a libuv loop would run them, then the I/O that piled up */
    swim_tick(n->core, s->now);
    sim_drain(s, i);
    size_t k = 0;
    while (n->running && k < n->n_backlog) {
        uint32_t slot = n->backlog[k++];
        sim_pkt *p = &s->pkts[slot];
        int rc = swim_recv(n->core, s->now, s->nodes[p->from].addr, &p->msg);
        (void)rc;
        sim_pkt_free(s, slot);
        sim_drain(s, i);
    }
    for (; k < n->n_backlog; k++)
        sim_pkt_free(s, n->backlog[k]);
    n->n_backlog = 0;
    if (!n->running)
        return;
    swim_note_loop_lag(n->core, n->slow_stall);
    sim_drain(s, i);
}

void sim_run_until(sim_t *s, uint64_t t)
{
    while (s->n_heap && s->heap[0].t <= t) {
        sim_ev e = sim_pop(s);
        s->now = e.t;
        sim_node *n = &s->nodes[e.node];
        switch (e.kind) {
        case SIM_EV_DELIVER:
            sim_deliver(s, e.arg);
            break;
        case SIM_EV_TIMER:
            if (!n->running || n->stalled || e.gen != n->timer_gen)
                break;
            sim_trace(s, s->now, e.node);
            n->timer_at = 0;
            swim_tick(n->core, s->now);
            sim_drain(s, e.node);
            break;
        case SIM_EV_STALL_BEGIN:
            if (!n->running || e.gen != n->slow_gen)
                break;
            n->stalled = true;
            sim_push(s, s->now + n->slow_stall, SIM_EV_STALL_END, e.node, 0, e.gen);
            break;
        case SIM_EV_STALL_END:
            if (!n->running || e.gen != n->slow_gen)
                break;
            sim_stall_end(s, e.node);
            if (n->running && n->slow_period > n->slow_stall)
                sim_push(s, s->now - n->slow_stall + n->slow_period, SIM_EV_STALL_BEGIN, e.node, 0,
                         n->slow_gen);
            break;
        }
    }
    if (t > s->now)
        s->now = t;
}

/* ---------- faults ---------- */

void sim_partition(sim_t *s, const uint8_t *group)
{
    for (uint32_t i = 0; i < s->cfg.n; i++)
        s->nodes[i].group = group ? (uint8_t)(group[i] & 7) : 0;
    for (int a = 0; a < 8; a++)
        for (int b = 0; b < 8; b++)
            s->blocked[a][b] = a != b;
}

void sim_set_group(sim_t *s, uint32_t i, uint8_t g)
{
    s->nodes[i].group = g & 7;
}

void sim_block(sim_t *s, uint8_t a, uint8_t b, bool on)
{
    s->blocked[a & 7][b & 7] = on;
}

void sim_heal(sim_t *s)
{
    for (uint32_t i = 0; i < s->cfg.n; i++)
        s->nodes[i].group = 0;
    memset(s->blocked, 0, sizeof(s->blocked));
}

void sim_set_loss(sim_t *s, double loss)
{
    s->cfg.loss = loss;
}

void sim_set_slow(sim_t *s, uint32_t i, uint64_t first_ms, uint32_t period_ms, uint32_t stall_ms)
{
    sim_node *n = &s->nodes[i];
    n->slow_period = period_ms;
    n->slow_stall = stall_ms;
    n->slow_gen++;
    if (stall_ms > 0)
        sim_push(s, first_ms > s->now ? first_ms : s->now, SIM_EV_STALL_BEGIN, i, 0, n->slow_gen);
}

/* ---------- observation ---------- */

swim_t *sim_core(const sim_t *s, uint32_t i)
{
    return s->nodes[i].running ? s->nodes[i].core : NULL;
}

uint32_t sim_dead_count(const sim_t *s, uint32_t j)
{
    return s->nodes[j].dead_count;
}

uint64_t sim_false_positives(const sim_t *s)
{
    return s->fps;
}

uint64_t sim_false_deaths(const sim_t *s)
{
    return s->false_deaths;
}

uint64_t sim_false_positives_about(const sim_t *s, uint32_t j)
{
    return s->nodes[j].fp_about;
}

uint64_t sim_suspicions_about(const sim_t *s, uint32_t j)
{
    return s->nodes[j].susp_about;
}

uint64_t sim_accusations(const sim_t *s)
{
    uint64_t sum = s->accusations_done;
    for (uint32_t i = 0; i < s->cfg.n; i++) {
        if (!s->nodes[i].running)
            continue;
        swim_stats st;
        swim_get_stats(s->nodes[i].core, &st);
        sum += st.suspicions;
    }
    return sum;
}

bool sim_converged(const sim_t *s)
{
    bool first = true;
    swim_digest d0 = {0, 0};
    for (uint32_t i = 0; i < s->cfg.n; i++) {
        const sim_node *n = &s->nodes[i];
        if (!n->running)
            continue;
        swim_digest d = swim_view_digest(n->core);
        if (d.count != s->n_running || swim_live_count(n->core) != s->n_running)
            return false;
        if (first) {
            d0 = d;
            first = false;
        } else if (d.hash != d0.hash || d.count != d0.count) {
            return false;
        }
    }
    if (first)
        return true;
    /* same digest everywhere and the right count: check one view names exactly the
     * running nodes, all alive */
    for (uint32_t i = 0; i < s->cfg.n; i++) {
        if (!s->nodes[i].running)
            continue;
        swim_t *c = s->nodes[i].core;
        for (size_t k = 0; k < swim_member_count(c); k++) {
            const swim_member *m = swim_member_at(c, k);
            int j = sim_node_of(s, &m->node.id);
            if (j < 0 || !s->nodes[j].running || m->node.state != SWIM_ALIVE)
                return false;
        }
        break;
    }
    return true;
}

void sim_get_traffic(const sim_t *s, sim_traffic *out)
{
    *out = s->traffic;
    uint64_t ms = s->node_ms_done;
    for (uint32_t i = 0; i < s->cfg.n; i++)
        if (s->nodes[i].running)
            ms += s->now - s->nodes[i].started_at;
    out->node_ms = ms;
}

uint64_t sim_trace_hash(const sim_t *s)
{
    return s->trace;
}

void sim_on_event(sim_t *s, sim_event_fn fn, void *user)
{
    s->on_event = fn;
    s->on_event_user = user;
}

void sim_on_send(sim_t *s, sim_send_fn fn, void *user)
{
    s->on_send = fn;
    s->on_send_user = user;
}

int sim_node_of(const sim_t *s, const swim_member_id *id)
{
    uint32_t v =
        (uint32_t)id->b[0] << 24 | (uint32_t)id->b[1] << 16 | (uint32_t)id->b[2] << 8 | id->b[3];
    if (v >= s->cfg.n || !swim_id_equal(&s->nodes[v].id, id))
        return -1;
    return (int)v;
}

uint64_t sim_now(const sim_t *s)
{
    return s->now;
}

/* ---------- lifecycle ---------- */

void sim_config_default(sim_config *c, uint32_t n, uint64_t seed)
{
    memset(c, 0, sizeof(*c));
    c->n = n;
    c->seed = seed;
    c->loss = 0;
    c->delay_ms = 1;
    c->jitter_ms = 2;
    swim_config_default(&c->swim);
}

sim_t *sim_new(const sim_config *c)
{
    /* whole-state messages are ~200 KB: keep them on the heap rather than mmap/munmap
     * per message (glibc), which costs more than the simulation itself */
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    sim_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->cfg = *c;
    s->rng = c->seed ^ 0x53494d5349ULL;
    s->pkt_free = -1;
    s->nodes = calloc(c->n ? c->n : 1, sizeof(*s->nodes));
    if (!s->nodes) {
        free(s);
        return NULL;
    }
    for (uint32_t i = 0; i < c->n; i++) {
        sim_node *n = &s->nodes[i];
        /* first four bytes: the index (sim_node_of); the rest random */
        n->id.b[0] = (uint8_t)(i >> 24);
        n->id.b[1] = (uint8_t)(i >> 16);
        n->id.b[2] = (uint8_t)(i >> 8);
        n->id.b[3] = (uint8_t)i;
        uint64_t r1 = sim_rand(s), r2 = sim_rand(s);
        memcpy(n->id.b + 4, &r1, 8);
        memcpy(n->id.b + 12, &r2, 4);
        snprintf(n->addr, sizeof(n->addr), "n%u:7946", i);
        snprintf(n->name, sizeof(n->name), "node-%u", i);
    }
    return s;
}

void sim_free(sim_t *s)
{
    if (!s)
        return;
    for (uint32_t i = 0; i < s->cfg.n; i++) {
        swim_free(s->nodes[i].core);
        free(s->nodes[i].backlog);
    }
    for (size_t i = 0; i < s->n_pkts; i++) {
        free(s->pkts[i].upd);
        free(s->pkts[i].mem);
    }
    free(s->pkts);
    free(s->heap);
    free(s->nodes);
    free(s);
}
