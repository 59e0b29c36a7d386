/*
 * test_swim.c — unit tests of the SWIM core (src/swim) driven by hand: one or two cores,
 * messages built and delivered by the test, virtual time. What they prove: incarnation
 * precedence and refutation, Lifeguard's shrinking suspicion timeout, graceful leave,
 * the retransmit limit, bounded message size, malformed input dropped, stale gossip
 * unable to revive a reaped member, the stall grace, repairs of members that missed news,
 * ring status in gossip, the CBOR codec within the core's size bounds, and same seed →
 * same output.
 */
#include "common/buf.h"
#include "kvstore/error.h"
#include "net/wire.h"
#include "swim/swim.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Hot-loop assertions: criterion --full-stats counts every assert that runs. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            cr_assert_fail(__VA_ARGS__);                                                           \
    } while (0)

#define T0 1000000u /* the adapter's clock need not start at 0 */

static swim_node mk_node(uint32_t i, uint64_t inc, swim_state st)
{
    swim_node n;
    memset(&n, 0, sizeof(n));
    n.id.b[0] = 0xab;
    n.id.b[12] = (uint8_t)(i >> 24);
    n.id.b[13] = (uint8_t)(i >> 16);
    n.id.b[14] = (uint8_t)(i >> 8);
    n.id.b[15] = (uint8_t)i;
    snprintf(n.name, sizeof(n.name), "node-%u", i);
    snprintf(n.addr, sizeof(n.addr), "10.0.%u.%u:7946", i / 256, i % 256);
    n.incarnation = inc;
    n.state = st;
    n.ring = SWIM_RING_NORMAL;
    return n;
}

static swim_t *mk_core(uint32_t self, uint64_t seed, const swim_config *cfg)
{
    swim_config def;
    swim_config_default(&def);
    swim_node me = mk_node(self, 0, SWIM_ALIVE);
    swim_t *s = swim_new(cfg ? cfg : &def, &me, seed);
    cr_assert_not_null(s);
    swim_tick(s, T0);
    return s;
}

/* Drop every pending send and event. */
static void drain(swim_t *s)
{
    swim_send snd;
    swim_event ev;
    while (swim_pop_send(s, &snd))
        ;
    while (swim_pop_event(s, &ev))
        ;
}

/* Tell s about members first..last (alive, incarnation 1) with a push-pull from `from`. */
static void add_members(swim_t *s, uint64_t now, uint32_t from, uint32_t first, uint32_t last)
{
    uint32_t n = last - first + 1;
    swim_node *ms = calloc(n, sizeof(*ms));
    for (uint32_t i = 0; i < n; i++)
        ms[i] = mk_node(first + i, 1, SWIM_ALIVE);
    swim_msg m = {.type = SWIM_MSG_PUSH_PULL, .seq = 7, .from = mk_node(from, 1, 0).id};
    m.n_members = n;
    m.members = ms;
    swim_node fn = mk_node(from, 1, SWIM_ALIVE);
    cr_assert_eq(swim_recv(s, now, fn.addr, &m), KV_OK);
    free(ms);
    drain(s);
}

/* Deliver one gossip item (as a GOSSIP message from member `from`). */
static void gossip(swim_t *s, uint64_t now, uint32_t from, swim_node about, uint32_t accuser)
{
    swim_update u = {.node = about, .from = mk_node(accuser, 0, 0).id};
    swim_msg m = {.type = SWIM_MSG_GOSSIP, .from = mk_node(from, 0, 0).id};
    m.n_updates = 1;
    m.updates = &u;
    cr_assert_eq(swim_recv(s, now, mk_node(from, 0, 0).addr, &m), KV_OK);
}

static const swim_member *member(swim_t *s, uint32_t i)
{
    swim_node n = mk_node(i, 0, 0);
    return swim_member_find(s, &n.id);
}

/* Advance s from `from` to `to`, ticking at every deadline, dropping its output. */
static void run(swim_t *s, uint64_t from, uint64_t to)
{
    uint64_t now = from;
    while (now < to) {
        uint64_t d = swim_next_deadline(s);
        now = d > now ? d : now + 1;
        if (now > to)
            now = to;
        swim_tick(s, now);
        drain(s);
    }
}

/* ---------- incarnation precedence ---------- */

Test(swim, incarnation_rules)
{
    swim_t *s = mk_core(0, 1, NULL);
    add_members(s, T0, 1, 1, 3);
    uint64_t now = T0 + 10;

    /* SUSPECT(i) beats ALIVE(i) */
    gossip(s, now, 2, mk_node(1, 1, SWIM_SUSPECT), 2);
    cr_assert_eq(member(s, 1)->node.state, SWIM_SUSPECT);
    /* ALIVE(i) does not clear SUSPECT(i); ALIVE(i+1) does */
    gossip(s, now, 2, mk_node(1, 1, SWIM_ALIVE), 1);
    cr_assert_eq(member(s, 1)->node.state, SWIM_SUSPECT);
    gossip(s, now, 2, mk_node(1, 2, SWIM_ALIVE), 1);
    cr_assert_eq(member(s, 1)->node.state, SWIM_ALIVE);
    cr_assert_eq(member(s, 1)->node.incarnation, 2);
    /* a stale ALIVE(1) changes nothing */
    gossip(s, now, 2, mk_node(1, 1, SWIM_ALIVE), 1);
    cr_assert_eq(member(s, 1)->node.incarnation, 2);
    /* a stale SUSPECT(1) is ignored */
    gossip(s, now, 2, mk_node(1, 1, SWIM_SUSPECT), 2);
    cr_assert_eq(member(s, 1)->node.state, SWIM_ALIVE);
    /* DEAD(i) beats ALIVE(i); ALIVE(i) cannot revive; ALIVE(i+1) can (a restart) */
    gossip(s, now, 2, mk_node(3, 1, SWIM_DEAD), 2);
    cr_assert_eq(member(s, 3)->node.state, SWIM_DEAD);
    gossip(s, now, 2, mk_node(3, 1, SWIM_ALIVE), 3);
    cr_assert_eq(member(s, 3)->node.state, SWIM_DEAD);
    gossip(s, now, 2, mk_node(3, 2, SWIM_ALIVE), 3);
    cr_assert_eq(member(s, 3)->node.state, SWIM_ALIVE);
    /* SUSPECT about an unknown member is ignored; ALIVE about one adds it */
    gossip(s, now, 2, mk_node(9, 4, SWIM_SUSPECT), 2);
    cr_assert_null(member(s, 9));
    gossip(s, now, 2, mk_node(9, 4, SWIM_ALIVE), 9);
    cr_assert_not_null(member(s, 9));
    cr_assert_eq(member(s, 9)->node.incarnation, 4);
    swim_free(s);
}

Test(swim, restart_starts_above_stored_incarnation)
{
    swim_config cfg;
    swim_config_default(&cfg);
    swim_node me = mk_node(0, 41, SWIM_ALIVE);
    swim_t *s = swim_new(&cfg, &me, 1);
    cr_assert_eq(swim_self(s)->node.incarnation, 42);
    swim_event ev;
    cr_assert(swim_pop_event(s, &ev));
    cr_assert_eq(ev.kind, SWIM_EV_SELF_INCARNATION);
    cr_assert_eq(ev.member.node.incarnation, 42);
    /* someone still holds an even newer incarnation of us (a lost bump): go above it */
    swim_tick(s, T0);
    drain(s);
    add_members(s, T0, 1, 1, 2);
    gossip(s, T0 + 1, 1, mk_node(0, 50, SWIM_ALIVE), 0);
    cr_assert_eq(swim_self(s)->node.incarnation, 51);
    swim_free(s);
}

/* ---------- refutation ---------- */

Test(swim, refutes_suspicion_and_death_with_higher_incarnation)
{
    swim_t *s = mk_core(0, 1, NULL);
    add_members(s, T0, 1, 1, 4);
    uint64_t inc = swim_self(s)->node.incarnation;

    gossip(s, T0 + 5, 1, mk_node(0, inc, SWIM_SUSPECT), 1);
    cr_assert_eq(swim_self(s)->node.incarnation, inc + 1);
    cr_assert_eq(swim_self(s)->node.state, SWIM_ALIVE);
    bool persisted = false;
    swim_event ev;
    while (swim_pop_event(s, &ev))
        persisted |= ev.kind == SWIM_EV_SELF_INCARNATION && ev.member.node.incarnation == inc + 1;
    cr_assert(persisted, "the adapter must be told to persist the new incarnation");

    /* the refutation rides on the next message we send */
    swim_tick(s, swim_next_deadline(s));
    swim_send snd;
    bool carried = false;
    while (swim_pop_send(s, &snd))
        for (uint32_t i = 0; i < snd.msg.n_updates; i++) {
            const swim_update *u = &snd.msg.updates[i];
            carried |= swim_id_equal(&u->node.id, &swim_self(s)->node.id) &&
                       u->node.state == SWIM_ALIVE && u->node.incarnation == inc + 1;
        }
    cr_assert(carried, "no ALIVE(inc+1) about ourselves in what we sent");

    /* an older accusation is not worth a new incarnation */
    gossip(s, T0 + 10, 2, mk_node(0, inc, SWIM_SUSPECT), 2);
    cr_assert_eq(swim_self(s)->node.incarnation, inc + 1);
    /* death is refuted too, above the accuser's number */
    gossip(s, T0 + 20, 2, mk_node(0, inc + 7, SWIM_DEAD), 2);
    cr_assert_eq(swim_self(s)->node.incarnation, inc + 8);
    cr_assert_eq(swim_self(s)->node.state, SWIM_ALIVE);
    swim_stats st;
    swim_get_stats(s, &st);
    cr_assert_eq(st.refutes, 2);
    cr_assert_gt(st.awareness, 0, "being suspected counts against our own health");
    swim_free(s);
}

/* ---------- Lifeguard suspicion ---------- */

static uint64_t time_to_dead(uint32_t n_accusers)
{
    swim_t *s = mk_core(0, 3, NULL);
    add_members(s, T0, 1, 1, 99); /* N = 100: min = 4 * 2 * 1 s = 8 s, max = 48 s */
    uint64_t start = T0 + 100;
    for (uint32_t a = 0; a < n_accusers; a++)
        gossip(s, start, 10 + a, mk_node(5, 1, SWIM_SUSPECT), 10 + a);
    drain(s);
    cr_assert_eq(member(s, 5)->node.state, SWIM_SUSPECT);
    uint64_t now = start;
    while (member(s, 5)->node.state == SWIM_SUSPECT && now < start + 100000) {
        uint64_t d = swim_next_deadline(s);
        now = d > now ? d : now + 1;
        swim_tick(s, now);
        drain(s);
        /* keep our own probes of member 5 from confirming: they would fail (nobody
         * answers here) and add our own suspicion */
    }
    cr_assert_eq(member(s, 5)->node.state, SWIM_DEAD);
    swim_free(s);
    return now - start;
}

Test(swim, suspicion_timeout_shrinks_with_confirmations)
{
    swim_t *s = mk_core(0, 1, NULL);
    add_members(s, T0, 1, 1, 99);
    cr_assert_eq(swim_live_count(s), 100);
    uint64_t lo = swim_suspicion_timeout_ms(s, 2), hi = swim_suspicion_timeout_ms(s, 0);
    cr_assert_eq(lo, 8000, "min = suspicion_mult 4 * log10(100) * 1 s");
    cr_assert_eq(hi, 48000, "max = 6 * min");
    uint64_t mid = swim_suspicion_timeout_ms(s, 1);
    cr_assert(mid < hi && mid > lo);
    cr_assert_eq(swim_suspicion_timeout_ms(s, 10), lo, "never below min");
    swim_free(s);

    /* one accuser: the core's own failed probes of member 5 may confirm (one more
     * accuser) — so the time is at most the 1-confirmation timeout; three accusers
     * (two confirmations) bring it down to min */
    uint64_t t1 = time_to_dead(1), t3 = time_to_dead(3);
    cr_assert_geq(t3, 8000);
    cr_assert_leq(t3, 8100, "with k confirmations the timeout is min (took %llu ms)",
                  (unsigned long long)t3);
    cr_assert_gt(t1, t3 + 5000, "fewer confirmations, longer wait (%llu vs %llu ms)",
                 (unsigned long long)t1, (unsigned long long)t3);
}

Test(swim, suspicion_scales_with_log_n)
{
    swim_t *s = mk_core(0, 1, NULL);
    add_members(s, T0, 1, 1, 9);
    cr_assert_eq(swim_suspicion_timeout_ms(s, 100), 4000, "N=10: 4 * 1 * 1 s");
    add_members(s, T0 + 1, 1, 10, 999);
    cr_assert_eq(swim_suspicion_timeout_ms(s, 100), 12000, "N=1000: 4 * 3 * 1 s");
    swim_free(s);
}

/* ---------- probing ---------- */

/* Run one probe round of s with nobody answering; returns the target's index. */
static uint32_t probe_unanswered(swim_t *s, uint64_t *now, uint32_t *n_pingreq)
{
    uint32_t target = UINT32_MAX;
    *n_pingreq = 0;
    for (int step = 0; step < 50; step++) {
        uint64_t d = swim_next_deadline(s);
        *now = d > *now ? d : *now + 1;
        swim_tick(s, *now);
        swim_send snd;
        while (swim_pop_send(s, &snd)) {
            if (snd.msg.type == SWIM_MSG_PING && target == UINT32_MAX)
                target = snd.msg.target.b[15];
            if (snd.msg.type == SWIM_MSG_PING_REQ)
                (*n_pingreq)++;
        }
        drain(s);
        if (target != UINT32_MAX && member(s, target)->node.state == SWIM_SUSPECT)
            return target;
    }
    return target;
}

Test(swim, failed_probe_goes_indirect_then_suspects)
{
    swim_t *s = mk_core(0, 5, NULL);
    add_members(s, T0, 1, 1, 9);
    uint64_t now = T0;
    uint32_t preq;
    uint32_t target = probe_unanswered(s, &now, &preq);
    cr_assert_neq(target, UINT32_MAX);
    cr_assert_eq(preq, 3, "k = 3 indirect probes");
    cr_assert_eq(member(s, target)->node.state, SWIM_SUSPECT);
    swim_stats st;
    swim_get_stats(s, &st);
    cr_assert_eq(st.probes_failed, 1);
    cr_assert_eq(st.awareness, 3, "no nacks from 3 relays: our own network is in doubt");
    swim_free(s);
}

Test(swim, ack_and_nack_paths)
{
    swim_t *s = mk_core(0, 5, NULL);
    add_members(s, T0, 1, 1, 9);
    uint64_t now = T0;
    swim_send snd;
    uint32_t seq = 0, target = 0;
    char to[SWIM_ADDR_MAX + 1] = "";
    /* first ping */
    for (int i = 0; i < 10 && !seq; i++) {
        uint64_t d = swim_next_deadline(s);
        now = d > now ? d : now + 1;
        swim_tick(s, now);
        while (swim_pop_send(s, &snd))
            if (snd.msg.type == SWIM_MSG_PING) {
                seq = snd.msg.seq;
                target = snd.msg.target.b[15];
                snprintf(to, sizeof(to), "%s", snd.to);
                cr_assert_eq(snd.cls, SWIM_CLASS_PROBE);
            }
    }
    cr_assert_neq(seq, 0);
    cr_assert_str_eq(to, mk_node(target, 0, 0).addr);
    /* answered: no suspicion */
    swim_msg ack = {.type = SWIM_MSG_ACK, .seq = seq, .from = mk_node(target, 0, 0).id};
    cr_assert_eq(swim_recv(s, now + 3, to, &ack), KV_OK);
    drain(s);
    run(s, now + 3, now + 900);
    cr_assert_eq(member(s, target)->node.state, SWIM_ALIVE);

    /* as a relay: PING_REQ -> our PING to the target -> its ACK -> ACK to the requester */
    swim_msg req = {.type = SWIM_MSG_PING_REQ,
                    .seq = 777,
                    .from = mk_node(1, 0, 0).id,
                    .target = mk_node(2, 0, 0).id};
    snprintf(req.target_addr, sizeof(req.target_addr), "%s", mk_node(2, 0, 0).addr);
    now += 1000;
    cr_assert_eq(swim_recv(s, now, mk_node(1, 0, 0).addr, &req), KV_OK);
    uint32_t relay_seq = 0;
    while (swim_pop_send(s, &snd))
        if (snd.msg.type == SWIM_MSG_PING) {
            relay_seq = snd.msg.seq;
            cr_assert_str_eq(snd.to, mk_node(2, 0, 0).addr);
        }
    cr_assert_neq(relay_seq, 0);
    swim_msg ack2 = {.type = SWIM_MSG_ACK, .seq = relay_seq, .from = mk_node(2, 0, 0).id};
    cr_assert_eq(swim_recv(s, now + 2, mk_node(2, 0, 0).addr, &ack2), KV_OK);
    bool fwd = false;
    while (swim_pop_send(s, &snd))
        if (snd.msg.type == SWIM_MSG_ACK && snd.msg.seq == 777)
            fwd = !strcmp(snd.to, mk_node(1, 0, 0).addr);
    cr_assert(fwd, "the ack is forwarded to the requester with its seq");

    /* a relay whose target stays silent answers NACK before the requester gives up */
    req.seq = 778;
    now += 1000;
    cr_assert_eq(swim_recv(s, now, mk_node(1, 0, 0).addr, &req), KV_OK);
    drain(s);
    bool nacked = false;
    uint64_t t = now;
    while (!nacked && t < now + 1000) {
        uint64_t d = swim_next_deadline(s);
        t = d > t ? d : t + 1;
        swim_tick(s, t);
        while (swim_pop_send(s, &snd))
            if (snd.msg.type == SWIM_MSG_NACK && snd.msg.seq == 778)
                nacked = true;
    }
    cr_assert(nacked);
    cr_assert_lt(t - now, 500, "nack within the probe timeout (%llu ms)",
                 (unsigned long long)(t - now));
    swim_free(s);
}

Test(swim, ping_for_someone_else_is_not_acked)
{
    swim_t *s = mk_core(0, 5, NULL);
    swim_msg ping = {.type = SWIM_MSG_PING,
                     .seq = 5,
                     .from = mk_node(1, 0, 0).id,
                     .target = mk_node(77, 0, 0).id};
    cr_assert_eq(swim_recv(s, T0 + 1, mk_node(1, 0, 0).addr, &ping), KV_OK);
    swim_send snd;
    cr_assert_not(swim_pop_send(s, &snd), "a node that took over an address does not answer "
                                          "for the old owner");
    ping.target = swim_self(s)->node.id;
    cr_assert_eq(swim_recv(s, T0 + 2, mk_node(1, 0, 0).addr, &ping), KV_OK);
    cr_assert(swim_pop_send(s, &snd));
    cr_assert_eq(snd.msg.type, SWIM_MSG_ACK);
    cr_assert_eq(snd.msg.seq, 5);
    cr_assert_str_eq(snd.to, mk_node(1, 0, 0).addr);
    swim_free(s);
}

/* ---------- local health ---------- */

Test(swim, local_health_stretches_probe_interval)
{
    swim_t *s = mk_core(0, 5, NULL);
    add_members(s, T0, 1, 1, 9);
    swim_stats st;
    swim_get_stats(s, &st);
    cr_assert_eq(st.awareness, 0);
    swim_note_loop_lag(s, 50); /* under the threshold */
    swim_get_stats(s, &st);
    cr_assert_eq(st.awareness, 0);
    for (int i = 0; i < 20; i++)
        swim_note_loop_lag(s, 1500);
    swim_get_stats(s, &st);
    cr_assert_eq(st.awareness, 7, "capped at awareness_max - 1");

    /* the gap between two pings is now 8 probe intervals */
    uint64_t now = T0, first = 0, second = 0;
    uint32_t first_seq = 0;
    while (!second && now < T0 + 60000) {
        uint64_t d = swim_next_deadline(s);
        now = d > now ? d : now + 1;
        swim_tick(s, now);
        swim_send snd;
        while (swim_pop_send(s, &snd)) {
            /* a probe round's second ping (at the direct timeout) has the same seq */
            if (snd.msg.type != SWIM_MSG_PING || snd.msg.seq == first_seq)
                continue;
            if (!first) {
                first = now;
                first_seq = snd.msg.seq;
            } else if (!second) {
                second = now;
            }
        }
    }
    cr_assert_geq(second - first, 7000, "gap %llu ms", (unsigned long long)(second - first));
    swim_free(s);
}

Test(swim, late_tick_waits_for_the_backlog)
{
    /* The loop was stuck for 3 s with our probe out: the ack is in the inbox, but the
     * timer runs first. The core must not conclude before the backlog is processed. */
    swim_t *s = mk_core(0, 9, NULL);
    add_members(s, T0, 1, 1, 9);
    uint64_t now = T0;
    swim_send snd;
    uint32_t seq = 0, target = 0;
    while (!seq) {
        uint64_t d = swim_next_deadline(s);
        now = d > now ? d : now + 1;
        swim_tick(s, now);
        while (swim_pop_send(s, &snd))
            if (snd.msg.type == SWIM_MSG_PING) {
                seq = snd.msg.seq;
                target = snd.msg.target.b[15];
            }
    }
    now += 3000; /* stall */
    swim_tick(s, now);
    drain(s);
    swim_msg ack = {.type = SWIM_MSG_ACK, .seq = seq, .from = mk_node(target, 0, 0).id};
    cr_assert_eq(swim_recv(s, now, mk_node(target, 0, 0).addr, &ack), KV_OK);
    drain(s);
    run(s, now, now + 200);
    cr_assert_eq(member(s, target)->node.state, SWIM_ALIVE);
    swim_stats st;
    swim_get_stats(s, &st);
    cr_assert_eq(st.probes_failed, 0);
    cr_assert_eq(st.loop_stalls, 1);
    swim_free(s);
}

/* ---------- leave ---------- */

Test(swim, graceful_leave)
{
    swim_t *a = mk_core(0, 1, NULL), *b = mk_core(1, 2, NULL);
    add_members(a, T0, 1, 1, 5);
    add_members(b, T0, 0, 0, 0);
    add_members(b, T0, 2, 2, 5);
    uint64_t inc = swim_self(a)->node.incarnation;
    swim_leave(a, T0 + 10);
    cr_assert_eq(swim_self(a)->node.state, SWIM_LEFT);
    cr_assert_eq(swim_self(a)->node.incarnation, inc + 1);
    /* the LEFT announcement goes out at once, to several members */
    swim_send snd;
    int sent = 0;
    while (swim_pop_send(a, &snd)) {
        bool has_left = false;
        for (uint32_t i = 0; i < snd.msg.n_updates; i++)
            has_left |= snd.msg.updates[i].node.state == SWIM_LEFT;
        cr_assert(has_left);
        if (!strcmp(snd.to, mk_node(1, 0, 0).addr))
            cr_assert_eq(swim_recv(b, T0 + 11, mk_node(0, 0, 0).addr, &snd.msg), KV_OK);
        sent++;
    }
    cr_assert_geq(sent, 3);
    /* LEAVE_DONE follows within one gossip interval */
    bool done = false;
    uint64_t now = T0 + 10;
    swim_event ev;
    while (!done && now < T0 + 2000) {
        while (swim_pop_event(a, &ev))
            done |= ev.kind == SWIM_EV_LEAVE_DONE;
        uint64_t d = swim_next_deadline(a);
        now = d > now ? d : now + 1;
        swim_tick(a, now);
        while (swim_pop_send(a, &snd))
            ;
    }
    while (swim_pop_event(a, &ev))
        done |= ev.kind == SWIM_EV_LEAVE_DONE;
    cr_assert(done);
    cr_assert_lt(now - (T0 + 10), 1000);
    /* suspicion and death of someone who left are ignored; LEFT is not refuted */
    swim_node left = swim_self(a)->node;
    if (member(b, 0)->node.state != SWIM_LEFT) /* a may not have picked b above */
        gossip(b, T0 + 12, 2, left, 0);
    cr_assert_eq(member(b, 0)->node.state, SWIM_LEFT);
    gossip(b, T0 + 13, 2, mk_node(0, inc + 1, SWIM_SUSPECT), 2);
    gossip(b, T0 + 13, 2, mk_node(0, inc + 1, SWIM_DEAD), 2);
    cr_assert_eq(member(b, 0)->node.state, SWIM_LEFT);
    gossip(a, T0 + 14, 2, mk_node(0, inc + 1, SWIM_SUSPECT), 2);
    cr_assert_eq(swim_self(a)->node.state, SWIM_LEFT, "a leaving node does not refute");
    cr_assert_eq(swim_set_ring_status(a, T0 + 15, SWIM_RING_NORMAL), KV_ECLOSED);
    swim_free(a);
    swim_free(b);
}

/* ---------- dissemination ---------- */

Test(swim, retransmit_limit)
{
    /* N = 100: limit = retransmit_mult 4 * ceil(log10(101)) = 12 */
    swim_t *s = mk_core(0, 1, NULL);
    add_members(s, T0, 1, 1, 99);
    gossip(s, T0 + 1, 1, mk_node(42, 2, SWIM_ALIVE), 42); /* news: 42 has a new incarnation */
    drain(s);
    uint32_t times = 0;
    uint64_t now = T0 + 1;
    while (now < T0 + 60000) {
        uint64_t d = swim_next_deadline(s);
        now = d > now ? d : now + 1;
        swim_tick(s, now);
        swim_send snd;
        while (swim_pop_send(s, &snd)) {
            for (uint32_t i = 0; i < snd.msg.n_updates; i++)
                if (snd.msg.updates[i].node.id.b[15] == 42 &&
                    snd.msg.updates[i].node.incarnation == 2)
                    times++;
            /* answer pings so nobody gets suspected (that would be more news) */
            if (snd.msg.type == SWIM_MSG_PING) {
                swim_msg ack = {.type = SWIM_MSG_ACK, .seq = snd.msg.seq, .from = snd.msg.target};
                char to[SWIM_ADDR_MAX + 1];
                snprintf(to, sizeof(to), "%s", snd.to);
                swim_send more;
                while (swim_pop_send(s, &more))
                    for (uint32_t i = 0; i < more.msg.n_updates; i++)
                        if (more.msg.updates[i].node.id.b[15] == 42 &&
                            more.msg.updates[i].node.incarnation == 2)
                            times++;
                swim_recv(s, now + 1, to, &ack);
                drain(s);
                break;
            }
        }
    }
    cr_assert_eq(times, 12, "sent %u times", times);
    swim_free(s);
}

Test(swim, messages_stay_within_byte_budget)
{
    /* 1,000 members and a burst of news about all of them: every probe and gossip
     * message stays under max_msg_bytes and SWIM_MAX_UPDATES; news still flows */
    swim_config cfg;
    swim_config_default(&cfg);
    swim_t *s = mk_core(0, 1, &cfg);
    add_members(s, T0, 1, 1, 999);
    uint64_t now = T0 + 1;
    for (uint32_t i = 1; i < 1000; i++)
        gossip(s, now, 1, mk_node(i, 2, SWIM_ALIVE), i);
    drain(s);
    uint64_t msgs = 0, items = 0;
    while (now < T0 + 5000) {
        uint64_t d = swim_next_deadline(s);
        now = d > now ? d : now + 1;
        swim_tick(s, now);
        swim_send snd;
        while (swim_pop_send(s, &snd)) {
            if (snd.msg.type == SWIM_MSG_PUSH_PULL || snd.msg.type == SWIM_MSG_PUSH_PULL_REPLY)
                continue;
            size_t sz = swim_msg_wire_bound(&snd.msg);
            /* probe-lane messages stay under max_msg_bytes; GOSSIP (bulk lane) under
             * max_gossip_bytes */
            if (snd.msg.type == SWIM_MSG_GOSSIP)
                CHECK(sz <= cfg.max_gossip_bytes, "gossip message of %zu bytes", sz);
            else
                CHECK(sz <= cfg.max_msg_bytes, "probe message of %zu bytes", sz);
            CHECK(snd.msg.type == SWIM_MSG_GOSSIP || snd.cls == SWIM_CLASS_PROBE, "lane");
            CHECK(snd.msg.n_updates <= SWIM_MAX_UPDATES, "too many updates");
            msgs++;
            items += snd.msg.n_updates;
        }
    }
    cr_assert_gt(msgs, 10);
    cr_assert_gt(items / msgs, 8, "messages carry news (%llu items in %llu msgs)",
                 (unsigned long long)items, (unsigned long long)msgs);
    swim_free(s);
}

/* ---------- push-pull ---------- */

Test(swim, push_pull_sends_state_only_when_views_differ)
{
    swim_t *a = mk_core(0, 1, NULL), *b = mk_core(1, 2, NULL);
    add_members(a, T0, 1, 1, 5);
    add_members(b, T0, 0, 0, 5);
    /* b learned a's real incarnation from the push-pull above; so did a for b */
    swim_digest da = swim_view_digest(a), db = swim_view_digest(b);
    cr_assert_eq(da.count, 6);
    cr_assert_eq(db.count, 6);
    swim_msg pp = {
        .type = SWIM_MSG_PUSH_PULL, .seq = 9, .from = swim_self(a)->node.id, .digest = da};
    cr_assert_eq(swim_recv(b, T0 + 1, mk_node(0, 0, 0).addr, &pp), KV_OK);
    swim_send snd;
    cr_assert(swim_pop_send(b, &snd));
    cr_assert_eq(snd.msg.type, SWIM_MSG_PUSH_PULL_REPLY);
    cr_assert_eq(snd.msg.seq, 9);
    if (da.hash == db.hash)
        cr_assert_eq(snd.msg.n_members, 0, "same view: digest only");
    else
        cr_assert_eq(snd.msg.n_members, 6, "different views: whole state");
    /* now make them differ for sure */
    gossip(b, T0 + 2, 2, mk_node(3, 5, SWIM_ALIVE), 3);
    drain(b);
    cr_assert_eq(swim_recv(b, T0 + 3, mk_node(0, 0, 0).addr, &pp), KV_OK);
    cr_assert(swim_pop_send(b, &snd));
    cr_assert_eq(snd.msg.n_members, 6);
    swim_free(a);
    swim_free(b);
}

/* ---------- reaping ---------- */

Test(swim, reaped_member_is_not_revived_by_stale_gossip)
{
    swim_config cfg;
    swim_config_default(&cfg);
    cfg.dead_reap_ms = 5000;
    cfg.tombstone_ms = 60000;
    swim_t *s = mk_core(0, 1, &cfg);
    add_members(s, T0, 1, 1, 3);
    gossip(s, T0 + 1, 1, mk_node(3, 4, SWIM_DEAD), 1);
    cr_assert_eq(member(s, 3)->node.state, SWIM_DEAD);
    bool reaped = false;
    uint64_t now = T0 + 1;
    swim_event ev;
    while (!reaped && now < T0 + 30000) {
        uint64_t d = swim_next_deadline(s);
        now = d > now ? d : now + 1;
        swim_tick(s, now);
        /* keep 1 and 2 alive: answer every ping */
        swim_send snd;
        while (swim_pop_send(s, &snd))
            if (snd.msg.type == SWIM_MSG_PING) {
                swim_msg ack = {.type = SWIM_MSG_ACK, .seq = snd.msg.seq, .from = snd.msg.target};
                char to[SWIM_ADDR_MAX + 1];
                snprintf(to, sizeof(to), "%s", snd.to);
                drain(s);
                swim_recv(s, now, to, &ack);
                break;
            }
        drain(s);
        (void)ev;
        reaped = member(s, 3) == NULL;
    }
    cr_assert(reaped, "dead member not reaped");
    cr_assert_eq(swim_member_count(s), 3);
    gossip(s, now + 1, 1, mk_node(3, 4, SWIM_ALIVE), 3);
    cr_assert_null(member(s, 3), "stale ALIVE(4) must not bring back a member dead at 4");
    gossip(s, now + 2, 1, mk_node(3, 5, SWIM_ALIVE), 3);
    cr_assert_not_null(member(s, 3), "a restart (higher incarnation) comes back");
    swim_free(s);
}

/* ---------- outside input ---------- */

Test(swim, malformed_messages_are_dropped)
{
    swim_t *s = mk_core(0, 1, NULL);
    add_members(s, T0, 1, 1, 3);
    swim_digest before = swim_view_digest(s);
    swim_msg m = {.type = (swim_msg_type)99};
    cr_assert_eq(swim_recv(s, T0 + 1, "x:1", &m), KV_EPROTO);
    m.type = SWIM_MSG_GOSSIP;
    m.n_updates = SWIM_MAX_UPDATES + 1;
    swim_update *many = calloc(SWIM_MAX_UPDATES + 1, sizeof(*many));
    m.updates = many;
    cr_assert_eq(swim_recv(s, T0 + 1, "x:1", &m), KV_EPROTO);
    m.n_updates = 1;
    many[0].node = mk_node(2, 9, SWIM_ALIVE);
    many[0].node.state = (swim_state)7;
    cr_assert_eq(swim_recv(s, T0 + 1, "x:1", &m), KV_EPROTO);
    many[0].node = mk_node(2, 9, SWIM_ALIVE);
    memset(many[0].node.name, 'a', sizeof(many[0].node.name)); /* no NUL */
    cr_assert_eq(swim_recv(s, T0 + 1, "x:1", &m), KV_EPROTO);
    m.n_updates = 0;
    m.n_members = 3;
    m.members = NULL;
    cr_assert_eq(swim_recv(s, T0 + 1, "x:1", &m), KV_EPROTO);
    m.n_members = 0;
    cr_assert_eq(swim_recv(s, T0 + 1, "", &m), KV_EPROTO);
    cr_assert_eq(swim_recv(s, T0 + 1, NULL, &m), KV_EINVAL);
    swim_stats st;
    swim_get_stats(s, &st);
    cr_assert_eq(st.msgs_invalid, 6);
    swim_digest after = swim_view_digest(s);
    cr_assert_eq(before.hash, after.hash, "a dropped message changes nothing");
    free(many);
    swim_free(s);
}

Test(swim, bad_arguments)
{
    swim_config cfg;
    swim_config_default(&cfg);
    swim_node me = mk_node(0, 0, SWIM_ALIVE);
    me.addr[0] = '\0';
    cr_assert_null(swim_new(&cfg, &me, 1));
    me = mk_node(0, 0, SWIM_ALIVE);
    cfg.probe_interval_ms = 0;
    cr_assert_null(swim_new(&cfg, &me, 1));
    swim_t *s = mk_core(0, 1, NULL);
    const char *seeds[1] = {""};
    cr_assert_eq(swim_join(s, T0, seeds, 1), KV_EINVAL);
    cr_assert_eq(swim_join(s, T0, seeds, 0), KV_EINVAL);
    cr_assert_eq(swim_set_ring_status(s, T0, (swim_ring_status)9), KV_EINVAL);
    swim_member_id id;
    cr_assert_eq(swim_id_from_hex("zz", &id), KV_EINVAL);
    char hex[33];
    swim_id_to_hex(&swim_self(s)->node.id, hex);
    cr_assert_eq(swim_id_from_hex(hex, &id), KV_OK);
    cr_assert(swim_id_equal(&id, &swim_self(s)->node.id));
    swim_free(s);
}

/* ---------- join ---------- */

Test(swim, join_retries_with_backoff_until_a_seed_answers)
{
    swim_t *s = mk_core(0, 1, NULL);
    const char *seeds[2] = {"seed-a:7946", "seed-b:7946"};
    cr_assert_eq(swim_join(s, T0, seeds, 2), KV_OK);
    uint64_t now = T0, attempts[6];
    int n = 0;
    swim_send snd;
    while (n < 6 && now < T0 + 120000) {
        bool sent = false;
        while (swim_pop_send(s, &snd))
            if (snd.msg.type == SWIM_MSG_PUSH_PULL && (snd.msg.flags & SWIM_PP_JOIN)) {
                cr_assert_eq(snd.cls, SWIM_CLASS_JOIN);
                cr_assert_geq(snd.msg.n_members, 1, "the joiner sends its own record");
                sent = true;
            }
        if (sent)
            attempts[n++] = now;
        uint64_t d = swim_next_deadline(s);
        now = d > now ? d : now + 1;
        swim_tick(s, now);
    }
    cr_assert_eq(n, 6);
    /* doubling from 1 s to 10 s, +-10% */
    cr_assert_geq(attempts[1] - attempts[0], 900);
    cr_assert_leq(attempts[1] - attempts[0], 1100);
    cr_assert_geq(attempts[2] - attempts[1], 1800);
    cr_assert_geq(attempts[5] - attempts[4], 9000);
    cr_assert_leq(attempts[5] - attempts[4], 11000);
    cr_assert_not(swim_is_joined(s));

    /* a seed answers the current attempt */
    swim_t *seed = mk_core(7, 2, NULL);
    uint32_t join_seq = 0;
    const swim_node *me = &swim_self(s)->node;
    swim_node mine = *me;
    /* trigger one more attempt and pass it to the seed */
    while (!join_seq) {
        uint64_t d = swim_next_deadline(s);
        now = d > now ? d : now + 1;
        swim_tick(s, now);
        while (swim_pop_send(s, &snd))
            if (snd.msg.flags & SWIM_PP_JOIN) {
                join_seq = snd.msg.seq;
                swim_recv(seed, now, mine.addr, &snd.msg);
                break;
            }
    }
    cr_assert_not_null(swim_member_find(seed, &mine.id), "the seed learned the joiner");
    bool replied = false;
    while (swim_pop_send(seed, &snd))
        if (snd.msg.type == SWIM_MSG_PUSH_PULL_REPLY) {
            cr_assert_str_eq(snd.to, mine.addr);
            cr_assert_eq(snd.msg.seq, join_seq);
            cr_assert_eq(swim_recv(s, now + 1, swim_self(seed)->node.addr, &snd.msg), KV_OK);
            replied = true;
        }
    cr_assert(replied);
    cr_assert(swim_is_joined(s));
    cr_assert_not_null(swim_member_find(s, &swim_self(seed)->node.id));
    swim_event ev;
    bool joined_ev = false;
    while (swim_pop_event(s, &ev))
        joined_ev |= ev.kind == SWIM_EV_JOINED;
    cr_assert(joined_ev);
    swim_free(seed);
    swim_free(s);
}

/* ---------- determinism ---------- */

static uint64_t trace_of(uint64_t seed)
{
    swim_t *s = mk_core(0, seed, NULL);
    add_members(s, T0, 1, 1, 30);
    uint64_t h = 1469598103934665603ULL, now = T0;
    for (int i = 0; i < 300; i++) {
        uint64_t d = swim_next_deadline(s);
        now = d > now ? d : now + 1;
        swim_tick(s, now);
        swim_send snd;
        while (swim_pop_send(s, &snd)) {
            const unsigned char *p = (const unsigned char *)snd.to;
            for (; *p; p++)
                h = (h ^ *p) * 1099511628211ULL;
            h = (h ^ snd.msg.type ^ ((uint64_t)snd.msg.seq << 8) ^ (now << 20)) * 1099511628211ULL;
        }
        drain(s);
    }
    swim_free(s);
    return h;
}

Test(swim, same_seed_same_trace)
{
    cr_assert_eq(trace_of(11), trace_of(11));
    cr_assert_neq(trace_of(11), trace_of(12));
}

/* ---------- repairs ---------- */

Test(swim, sender_that_missed_a_refutation_is_corrected)
{
    swim_t *s = mk_core(0, 1, NULL);
    add_members(s, T0, 1, 1, 9);
    gossip(s, T0 + 10, 1, mk_node(3, 5, SWIM_ALIVE), 3); /* 3 refuted: incarnation 5 */
    drain(s);

    /* news crossing (we learned 5 a moment ago): no correction */
    gossip(s, T0 + 20, 2, mk_node(3, 4, SWIM_SUSPECT), 2);
    swim_send snd;
    bool fixed = false;
    while (swim_pop_send(s, &snd))
        fixed |= snd.msg.type == SWIM_MSG_GOSSIP && !strcmp(snd.to, mk_node(2, 0, 0).addr);
    cr_assert_not(fixed);

    /* member 2 is still gossiping the old suspicion a second later: it missed the
     * refutation, so it gets our record back at once */
    gossip(s, T0 + 1100, 2, mk_node(3, 4, SWIM_SUSPECT), 2);
    while (swim_pop_send(s, &snd)) {
        if (snd.msg.type != SWIM_MSG_GOSSIP || strcmp(snd.to, mk_node(2, 0, 0).addr) != 0)
            continue;
        cr_assert_geq(snd.msg.n_updates, 1);
        const swim_update *u = &snd.msg.updates[0];
        cr_assert_eq(u->node.id.b[15], 3);
        cr_assert_eq(u->node.state, SWIM_ALIVE);
        cr_assert_eq(u->node.incarnation, 5);
        fixed = true;
    }
    cr_assert(fixed, "no correction sent to the member that is behind");
    swim_stats st;
    swim_get_stats(s, &st);
    cr_assert_eq(st.corrections, 1);
    swim_free(s);
}

Test(swim, suspicion_at_higher_incarnation_restarts_the_timer)
{
    swim_t *s = mk_core(0, 3, NULL);
    add_members(s, T0, 1, 1, 99); /* N = 100: min 8 s */
    uint64_t t0 = T0 + 100;
    for (uint32_t a = 0; a < 3; a++)
        gossip(s, t0, 10 + a, mk_node(5, 1, SWIM_SUSPECT), 10 + a);
    drain(s);
    run(s, t0, t0 + 6000);
    cr_assert_eq(member(s, 5)->node.state, SWIM_SUSPECT);
    /* member 5 refuted (we missed it) and is suspected again at incarnation 2: that is a
     * new suspicion with its own timeout, not the 2 s left of the old one */
    gossip(s, t0 + 6000, 20, mk_node(5, 2, SWIM_SUSPECT), 20);
    cr_assert_eq(member(s, 5)->node.incarnation, 2);
    cr_assert_eq(member(s, 5)->since_ms, t0 + 6000);
    run(s, t0 + 6000, t0 + 9000);
    cr_assert_eq(member(s, 5)->node.state, SWIM_SUSPECT, "died on the stale episode's timer");
    swim_free(s);
}

/* ---------- ring status ---------- */

Test(swim, ring_status_travels_with_alive_and_is_an_event)
{
    swim_t *a = mk_core(0, 1, NULL), *b = mk_core(1, 2, NULL);
    add_members(a, T0, 1, 1, 1);
    add_members(b, T0, 0, 0, 0);
    uint64_t inc = swim_self(a)->node.incarnation;
    cr_assert_eq(swim_set_ring_status(a, T0 + 1, SWIM_RING_LEAVING), KV_OK);
    cr_assert_eq(swim_self(a)->node.ring, SWIM_RING_LEAVING);
    cr_assert_eq(swim_self(a)->node.incarnation, inc + 1, "a ring change is a new incarnation");
    /* the next message a sends to b carries it */
    uint64_t now = T0 + 1;
    bool delivered = false;
    while (!delivered && now < T0 + 5000) {
        uint64_t d = swim_next_deadline(a);
        now = d > now ? d : now + 1;
        swim_tick(a, now);
        swim_send snd;
        while (swim_pop_send(a, &snd))
            if (!strcmp(snd.to, mk_node(1, 0, 0).addr) && snd.msg.n_updates > 0) {
                drain(b);
                cr_assert_eq(swim_recv(b, now, mk_node(0, 0, 0).addr, &snd.msg), KV_OK);
                delivered = true;
                break;
            }
    }
    cr_assert(delivered);
    const swim_member *m = swim_member_find(b, &swim_self(a)->node.id);
    cr_assert_eq(m->node.ring, SWIM_RING_LEAVING);
    swim_event ev;
    bool seen = false;
    while (swim_pop_event(b, &ev))
        seen |= ev.kind == SWIM_EV_MEMBER_UPDATED && ev.old_ring == SWIM_RING_NORMAL &&
                ev.member.node.ring == SWIM_RING_LEAVING;
    cr_assert(seen, "the ring sees the change as an event");
    swim_free(a);
    swim_free(b);
}

/* ---------- the codec keeps within the core's size bounds ---------- */

Test(swim, cbor_codec_stays_within_wire_bounds)
{
    /* the core budgets messages with swim_msg_wire_bound; the node's codec
     * (src/net/wire.c) must never produce more. Worst cases: longest strings, largest
     * numbers. */
    swim_update ups[SWIM_MAX_UPDATES];
    swim_node nodes[8];
    for (int i = 0; i < SWIM_MAX_UPDATES; i++) {
        swim_node n = mk_node((uint32_t)i, UINT64_MAX - (uint64_t)i, (swim_state)(i % 4));
        memset(n.name, 'n', SWIM_NAME_MAX);
        n.name[SWIM_NAME_MAX] = '\0';
        memset(n.addr, 'a', SWIM_ADDR_MAX);
        n.addr[SWIM_ADDR_MAX] = '\0';
        n.ring = (swim_ring_status)(i % 4);
        ups[i].node = n;
        ups[i].from = mk_node((uint32_t)i + 1, 0, 0).id;
        if (i < 8)
            nodes[i] = n;
    }
    char from_addr[SWIM_ADDR_MAX + 1];
    memset(from_addr, 'f', SWIM_ADDR_MAX);
    from_addr[SWIM_ADDR_MAX] = '\0';
    for (int type = SWIM_MSG_PING; type <= SWIM_MSG_PUSH_PULL_REPLY; type++) {
        for (uint32_t nu = 0; nu <= SWIM_MAX_UPDATES; nu += 16) {
            swim_msg m = {.type = (swim_msg_type)type,
                          .seq = UINT32_MAX,
                          .flags = 3,
                          .digest = {UINT32_MAX, UINT64_MAX}};
            m.from = mk_node(99, 0, 0).id;
            m.target = mk_node(98, 0, 0).id;
            memset(m.target_addr, 't', SWIM_ADDR_MAX);
            m.n_updates = nu;
            m.updates = ups;
            if (type == SWIM_MSG_PUSH_PULL || type == SWIM_MSG_PUSH_PULL_REPLY) {
                m.n_members = 8;
                m.members = nodes;
            }
            kv_buf b = KV_BUF_INIT;
            cr_assert_eq(kv_wire_encode(&b, from_addr, &m), KV_OK);
            CHECK(b.len <= swim_msg_wire_bound(&m), "type %d with %u updates: %zu > %zu bytes",
                  type, nu, b.len, swim_msg_wire_bound(&m));
            kv_buf_free(&b);
        }
    }
}
