/*
 * swim.h — the membership protocol core: SWIM with the Lifeguard extensions, sans-I/O.
 *
 * The core decides who is in the cluster and in what state; it never touches the
 * network, the clock or the disk. The adapter (src/node, over nng) feeds it inputs —
 * swim_tick, swim_recv, swim_join, swim_leave, swim_note_loop_lag, swim_set_ring_status —
 * each with the current time in milliseconds of one monotonic clock, and after each input
 * drains its effects: messages to send (swim_pop_send), membership events
 * (swim_pop_event) and the time of the next timer (swim_next_deadline). Randomness comes
 * only from the generator seeded in swim_new, so the same seed and the same inputs give
 * the same outputs: tests/sim runs a thousand cores in one process, reproducibly.
 *
 * Threads: a swim_t is not thread-safe; it belongs to the one thread that calls it (the
 * node's loop thread; in tests/sim, the simulator). Different swim_t are independent.
 *
 * Anchor: HashiCorp memberlist's LAN defaults (probe every 1 s, 500 ms probe timeout,
 * 3 indirect probes, suspicion multiplier 4 over log10(N), retransmit multiplier 4,
 * push-pull every 30 s) and Lifeguard (local health multiplier, dynamic suspicion with
 * independent confirmations, nacks from indirect probers, buddy system).
 *
 * Wire: the structs below are the messages; the CBOR codec (the adapter's side) encodes
 * every field listed for a message type, under SWIM_PROTOCOL_VERSION. The bounds
 * (SWIM_MAX_UPDATES, SWIM_MAX_MEMBERS, string lengths) are part of the protocol: a decoder
 * rejects a message over them and never hands it to swim_recv. swim_recv validates again
 * (it treats its input as outside input) and drops what is malformed with KV_EPROTO.
 */
#ifndef KV_SWIM_SWIM_H
#define KV_SWIM_SWIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------- protocol constants (shared by the core and the codec) ---------- */

#define SWIM_PROTOCOL_VERSION 1

#define SWIM_ID_LEN    16  /* a member id: 16 opaque bytes (random, made once per data dir) */
#define SWIM_NAME_MAX  64  /* member name: at most 64 bytes of text, NUL not counted */
#define SWIM_ADDR_MAX  96  /* member address "host:port": at most 96 bytes, NUL not counted */
#define SWIM_SEED_MAX  255 /* a seed "host:port" as configured (may be a DNS name) */
#define SWIM_MAX_SEEDS 16  /* seeds per swim_join */

/* Gossip items piggybacked on one message, at most. On probe-lane messages the byte
 * budget (swim_config.max_msg_bytes) usually limits them to fewer; a GOSSIP message
 * (max_gossip_bytes) may carry all 64, about 5 KB. */
#define SWIM_MAX_UPDATES 64

/* Members in one push-pull state transfer, and in the member table, at most. A core
 * ignores new members beyond this (counted in swim_stats.members_refused). */
#define SWIM_MAX_MEMBERS 4096

/*
 * Encoded-size bounds the codec must stay within (the core budgets messages with them;
 * tests/sim counts bytes with them). They assume the compact encoding: each struct an
 * array of its fields, integers in their shortest form, ids as 16-byte byte strings,
 * strings as text strings. An update costs at most SWIM_UPDATE_WIRE_FIXED bytes plus the
 * lengths of its name and address; a message's envelope (version, type, sender id,
 * sender address, seq, target, target address, flags, digest, array headers) at most
 * SWIM_MSG_WIRE_FIXED plus the length of target_addr.
 */
#define SWIM_UPDATE_WIRE_FIXED 66
#define SWIM_MSG_WIRE_FIXED    (96 + SWIM_ADDR_MAX)

/* ---------- members ---------- */

typedef struct swim_member_id {
    uint8_t b[SWIM_ID_LEN];
} swim_member_id;

/* Liveness, as SWIM sees it. Ordered by precedence at equal incarnation. */
typedef enum swim_state {
    SWIM_ALIVE = 0,
    SWIM_SUSPECT = 1,
    SWIM_DEAD = 2,
    SWIM_LEFT = 3, /* left on purpose (graceful leave); never refuted */
} swim_state;

/* Ring status: where the member stands in data placement (DESIGN §11). Independent of
 * liveness; the member itself sets it (swim_set_ring_status) and it travels with its
 * alive announcements. */
typedef enum swim_ring_status {
    SWIM_RING_JOINING = 0,
    SWIM_RING_NORMAL = 1,
    SWIM_RING_LEAVING = 2,
    SWIM_RING_REMOVED = 3,
} swim_ring_status;

/*
 * A member's record as gossiped. name and addr are NUL-terminated; an address is what
 * other members use to reach it (cluster.advertise), "host:port".
 */
typedef struct swim_node {
    swim_member_id id;
    char name[SWIM_NAME_MAX + 1];
    char addr[SWIM_ADDR_MAX + 1];
    uint64_t incarnation; /* bumped only by the member itself; higher wins */
    swim_state state;
    swim_ring_status ring;
    /* Port of the member's replica data lane (src/net/direct.h) on addr's host; 0 = none
     * (reach it over nng). Set by the member itself; travels with its alive updates. */
    uint16_t data_port;
    /* Port of the member's client HTTP API on addr's host (what `kvtool status` asks each
     * member); 0 = unknown. Set by the member itself, like data_port. */
    uint16_t http_port;
} swim_node;

/* A member as this core knows it (swim_member_at, events). */
typedef struct swim_member {
    swim_node node;
    uint64_t since_ms;      /* when state last changed, in the caller's clock */
    uint32_t confirmations; /* SUSPECT: independent suspicions seen so far */
} swim_member;

/* ---------- messages ---------- */

typedef enum swim_msg_type {
    SWIM_MSG_PING = 1,            /* probe: answer ACK (same seq) if target is you */
    SWIM_MSG_ACK = 2,             /* answer to PING, or forwarded for a PING_REQ (same seq) */
    SWIM_MSG_PING_REQ = 3,        /* please probe target at target_addr; answer ACK or NACK */
    SWIM_MSG_NACK = 4,            /* Lifeguard: I relayed your PING_REQ but target did not answer */
    SWIM_MSG_GOSSIP = 5,          /* updates only; no answer */
    SWIM_MSG_PUSH_PULL = 6,       /* state sync request (digest, maybe members); see flags */
    SWIM_MSG_PUSH_PULL_REPLY = 7, /* answer to PUSH_PULL (same seq) */
} swim_msg_type;

/* swim_msg.flags for PUSH_PULL */
#define SWIM_PP_JOIN     0x1u /* sent to a seed by a joining node: always answer with state */
#define SWIM_PP_NO_REPLY 0x2u /* a push only (members attached): merge, do not answer */

/*
 * A digest of a member table: the number of members and an order-independent 64-bit
 * hash of every member's (id, incarnation, state, ring). Two cores with equal digests
 * hold the same view, so a periodic push-pull sends the digest first and whole states
 * only when the views differ: steady-state sync costs O(1) bytes, not O(N).
 */
typedef struct swim_digest {
    uint32_t count;
    uint64_t hash;
} swim_digest;

/*
 * One gossip item. node.state says what it announces: ALIVE (with the member's name,
 * address, ring status — how members learn of each other), SUSPECT, DEAD or LEFT.
 * from: SUSPECT — the member that suspects (Lifeguard counts distinct ones); DEAD — the
 * member that declared it; ALIVE/LEFT — the member itself.
 */
typedef struct swim_update {
    swim_node node;
    swim_member_id from;
} swim_update;

/*
 * A peer message. Which fields mean something depends on type:
 *
 *   every type        from (sender's id), updates[0..n_updates) (piggybacked gossip)
 *   PING              seq, target (the id the sender expects to reach)
 *   ACK, NACK         seq (of the PING or PING_REQ answered)
 *   PING_REQ          seq, target, target_addr
 *   GOSSIP            —
 *   PUSH_PULL         seq, flags, digest, members[0..n_members) (may be empty)
 *   PUSH_PULL_REPLY   seq, digest, members[0..n_members) (empty when digests matched)
 *
 * The sender's own address is not in the struct: the adapter puts its advertise address
 * in the envelope and passes the received one to swim_recv as from_addr.
 *
 * Answers go to the requester's address with the request's seq: PING → ACK; PING_REQ →
 * exactly one ACK or NACK (unless the relay dies); PUSH_PULL → PUSH_PULL_REPLY unless
 * SWIM_PP_NO_REPLY. An adapter on REQ/REP may deliver such an answer as the reply on the
 * request's context by matching (address, seq, type); everything else is one-way.
 *
 * Pointers: in a message from swim_pop_send they point into the core and stay valid
 * until the next input call on that core (or swim_free). In swim_recv they are the
 * caller's and are read only during the call.
 */
typedef struct swim_msg {
    swim_msg_type type;
    swim_member_id from;
    uint32_t seq;
    swim_member_id target;
    char target_addr[SWIM_ADDR_MAX + 1];
    uint32_t flags;
    swim_digest digest;
    uint32_t n_updates; /* <= SWIM_MAX_UPDATES */
    const swim_update *updates;
    uint32_t n_members; /* <= SWIM_MAX_MEMBERS */
    const swim_node *members;
} swim_msg;

/* Traffic class, so that the adapter can keep probes off the connections that carry
 * bulk state (DESIGN §6: failure detection never queues behind bulk data). */
typedef enum swim_class {
    SWIM_CLASS_PROBE = 0,  /* PING, ACK, PING_REQ, NACK: small, latency-critical */
    SWIM_CLASS_GOSSIP = 1, /* GOSSIP, PUSH_PULL, PUSH_PULL_REPLY between members */
    SWIM_CLASS_JOIN = 2,   /* PUSH_PULL to a seed: to is a configured seed; resolve it
                              afresh (DNS may have changed) and dial anew */
} swim_class;

/* One message to send (swim_pop_send). */
typedef struct swim_send {
    const char *to; /* "host:port"; valid like msg's pointers */
    swim_class cls;
    swim_msg msg;
} swim_send;

/* ---------- events ---------- */

typedef enum swim_event_kind {
    SWIM_EV_MEMBER_ADDED = 1,     /* a member became known (first time, or again after a reap) */
    SWIM_EV_MEMBER_UPDATED = 2,   /* its state, ring status, name or address changed */
    SWIM_EV_MEMBER_REAPED = 3,    /* a dead or left member was forgotten (dropped from the list) */
    SWIM_EV_SELF_INCARNATION = 4, /* own incarnation changed: persist member.node.incarnation
                                     before announcing anything else (restart relies on it) */
    SWIM_EV_JOINED = 5,           /* first contact: a seed answered, or a member found us */
    SWIM_EV_LEAVE_DONE = 6,       /* after swim_leave: the announcement went out; safe to stop */
} swim_event_kind;

typedef struct swim_event {
    swim_event_kind kind;
    swim_member member;   /* the member after the change (self for SELF_*, JOINED, LEAVE_DONE) */
    swim_state old_state; /* UPDATED: before the change */
    swim_ring_status old_ring;
    uint64_t old_incarnation;
} swim_event;

/* ---------- configuration ---------- */

/*
 * Timing and sizes; swim_config_default fills memberlist's LAN values. Times in ms.
 * Probe interval and probe timeout are stretched by the local health multiplier
 * (1 + awareness score, the score capped at awareness_max - 1).
 */
typedef struct swim_config {
    uint32_t probe_interval_ms;     /* 1000: one probe per period */
    uint32_t probe_timeout_ms;      /* 500: direct ack wait before indirect probes */
    uint32_t indirect_checks;       /* 3: members asked to probe on our behalf (k) */
    uint32_t suspicion_mult;        /* 4: min suspicion = mult * max(1, log10 N) * interval */
    uint32_t suspicion_max_mult;    /* 6: suspicion starts at max_mult * min, shrinks */
    uint32_t retransmit_mult;       /* 4: each update sent mult * ceil(log10(N + 1)) times */
    uint32_t gossip_interval_ms;    /* 200: dedicated gossip messages, when updates wait */
    uint32_t gossip_nodes;          /* 3: members per gossip round */
    uint32_t gossip_to_dead_ms;     /* 30000: keep gossiping to the newly dead this long */
    uint32_t push_pull_interval_ms; /* 30000: full-state sync with one random member */
    uint32_t awareness_max;         /* 8: local health multiplier ceiling */
    uint32_t loop_lag_threshold_ms; /* 200: lag at or above this counts against our health */
    uint32_t max_msg_bytes;         /* 1400: encoded size budget of a probe-lane message
                                       (PING, ACK, PING_REQ, NACK), piggyback included */
    uint32_t max_gossip_bytes;      /* 8192: ... of a GOSSIP message (bulk lane; at most
                                       SWIM_MAX_UPDATES items, about 5 KB, in practice) */
    uint32_t join_retry_min_ms;     /* 1000: first join retry after this, then doubling */
    uint32_t join_retry_max_ms;     /* 10000: ... up to this (with jitter) */
    uint32_t dead_reap_ms;          /* 86400000: dead/left members dropped after this */
    uint32_t tombstone_ms;          /* 86400000: a reaped member's incarnation kept this
                                       much longer, so stale gossip cannot revive it */
} swim_config;

/* Fill c with the defaults above. */
void swim_config_default(swim_config *c);

/* ---------- statistics (for /metrics and tests) ---------- */

typedef struct swim_stats {
    uint64_t msgs_sent, msgs_recv;
    uint64_t msgs_invalid; /* dropped by swim_recv as malformed (KV_EPROTO) */
    uint64_t msgs_ignored; /* well-formed but not for us (wrong target id, stale seq) */
    uint64_t probes, probes_failed, indirect_probes, nacks_recv;
    uint64_t suspicions; /* members this core put into SUSPECT */
    uint64_t deaths;     /* members this core declared DEAD on a suspicion timeout */
    uint64_t refutes;    /* own incarnation bumps to refute suspicion or death */
    uint64_t push_pulls, push_pull_full; /* exchanges started, of which moved whole states */
    uint64_t updates_sent;               /* gossip items sent */
    uint64_t members_refused;            /* new members ignored at SWIM_MAX_MEMBERS */
    uint64_t corrections;                /* newer records sent back to a sender that was behind */
    uint64_t loop_stalls;                /* late ticks and loop-lag reports over the threshold */
    uint64_t effects_dropped;            /* sends not drained before the next input call */
    uint32_t awareness;                  /* local health score now: 0 = healthy */
    uint32_t queued;                     /* updates waiting in the dissemination queue now */
} swim_stats;

/* ---------- the core ---------- */

typedef struct swim_t swim_t;

/*
 * A new core for the member self (id, name, addr, ring status; self->incarnation is the
 * last incarnation this id used — stored by the adapter — and the core starts above it;
 * state is ignored). cfg is copied; seed seeds the random generator. The core starts
 * alone, not joined. NULL on bad arguments (empty name or address, zero interval...) or
 * out of memory.
 */
swim_t *swim_new(const swim_config *cfg, const swim_node *self, uint64_t seed);

/* Free everything; borrowed pointers from the core die. NULL is fine. */
void swim_free(swim_t *s);

/*
 * Inputs. now_ms is monotonic, never decreasing across calls. Each input first discards
 * sends left undrained by the previous one (swim_stats.effects_dropped), so drain
 * swim_pop_send after every input.
 */

/* Run every timer due at now_ms. Call at swim_next_deadline or later; early is harmless.
 * A tick far later than the deadline is taken as event-loop lag (see swim_note_loop_lag):
 * expired probe and suspicion timeouts then wait a moment so that messages already
 * received — the ack that arrived while the loop was stuck — are processed first. */
void swim_tick(swim_t *s, uint64_t now_ms);

/*
 * A message received from the member whose advertised address is from_addr (from the
 * envelope). KV_OK; KV_EPROTO if the message is malformed (bad type or state, counts
 * over the bounds, unterminated strings) — dropped and counted, the core unchanged;
 * KV_EINVAL for NULL arguments.
 */
int swim_recv(swim_t *s, uint64_t now_ms, const char *from_addr, const swim_msg *msg);

/*
 * Join a cluster through seeds ("host:port", names allowed; the adapter resolves them on
 * every send of class SWIM_CLASS_JOIN). Sends a PUSH_PULL with SWIM_PP_JOIN to every
 * seed; retries with exponential backoff and jitter until one answers or another member
 * contacts us (then SWIM_EV_JOINED). A seed that is this node itself just never answers.
 * A new call replaces the seed list. KV_OK; KV_EINVAL if n_seeds is 0 or over
 * SWIM_MAX_SEEDS or a seed is empty or too long.
 */
int swim_join(swim_t *s, uint64_t now_ms, const char *const *seeds, size_t n_seeds);

/*
 * Leave gracefully: bump the incarnation, mark self LEFT and announce it to a few members
 * at once (and in gossip). SWIM_EV_LEAVE_DONE follows one gossip interval
 * later (at once if no member is alive); then stop calling the core. Idempotent.
 */
void swim_leave(swim_t *s, uint64_t now_ms);

/* The adapter measured event-loop lag of lag_ms (e.g. a repeating timer's lateness). At
 * or above swim_config.loop_lag_threshold_ms it counts against local health. */
void swim_note_loop_lag(swim_t *s, uint32_t lag_ms);

/* Change own ring status; bumps the incarnation and gossips it. KV_OK, KV_EINVAL for a
 * bad status, KV_ECLOSED after swim_leave. */
int swim_set_ring_status(swim_t *s, uint64_t now_ms, swim_ring_status ring);

/*
 * Remove a dead member for good (an operator's `kvtool remove`): mark it LEFT at its
 * current incarnation, as if it had left itself, and gossip that (LEFT wins over DEAD at
 * an equal incarnation everywhere). Only a member this core holds DEAD: KV_OK;
 * KV_ENOTFOUND (unknown, or ourselves); KV_EEXIST (already left); KV_EUNAVAIL (alive or
 * suspect: it must be seen dead first). If the member comes back later with a higher
 * incarnation it is a member again.
 */
int swim_remove_member(swim_t *s, uint64_t now_ms, const swim_member_id *id);

/* ---------- outputs ---------- */

/* Pop the next message to send into *out; false when none is left. out's pointers are
 * valid until the next input call. */
bool swim_pop_send(swim_t *s, swim_send *out);

/* Pop the next membership event (copied); false when none. Events are kept across input
 * calls (up to 65536; older ones dropped beyond that) — drain them anyway. */
bool swim_pop_event(swim_t *s, swim_event *out);

/* When swim_tick must next be called, in now_ms terms; never earlier than the last
 * input's now_ms (a deadline already due is reported as that "now"). */
uint64_t swim_next_deadline(const swim_t *s);

/* ---------- queries (borrowed pointers: valid until the next input call) ---------- */

/* Members known, self included (dead and left ones too, until reaped). */
size_t swim_member_count(const swim_t *s);
const swim_member *swim_member_at(const swim_t *s, size_t i);
const swim_member *swim_member_find(const swim_t *s, const swim_member_id *id);
const swim_member *swim_self(const swim_t *s);

/* Members alive or suspect, self included: the N in the log(N) formulas. */
size_t swim_live_count(const swim_t *s);

/* This core's view digest (what PUSH_PULL sends). Equal digests = same view. */
swim_digest swim_view_digest(const swim_t *s);

/* Whether swim_join has succeeded (or another member found us). */
bool swim_is_joined(const swim_t *s);

/* Current suspicion timeout for a newly suspected member, with no confirmations, and
 * at the minimum (all confirmations), in ms — for docs, logs and tests. */
uint64_t swim_suspicion_timeout_ms(const swim_t *s, uint32_t confirmations);

void swim_get_stats(const swim_t *s, swim_stats *out);

/* ---------- helpers ---------- */

const char *swim_state_name(swim_state st);            /* "alive", "suspect", "dead", "left" */
const char *swim_ring_status_name(swim_ring_status r); /* "joining", "normal", ... */
bool swim_id_equal(const swim_member_id *a, const swim_member_id *b);
/* Is id one of ids[0..n)? */
bool swim_id_in(const swim_member_id *ids, uint32_t n, const swim_member_id *id);
bool swim_id_is_zero(const swim_member_id *id);
/* Lower-case hex, 32 characters plus NUL into out[33]. */
void swim_id_to_hex(const swim_member_id *id, char out[2 * SWIM_ID_LEN + 1]);
/* Parse 32 hex digits. KV_OK or KV_EINVAL. */
int swim_id_from_hex(const char *hex, swim_member_id *out);

/* Encoded-size bounds (see SWIM_UPDATE_WIRE_FIXED): what the codec may use at most. */
size_t swim_update_wire_bound(const swim_update *u);
size_t swim_node_wire_bound(const swim_node *n);
size_t swim_msg_wire_bound(const swim_msg *m);

#endif
