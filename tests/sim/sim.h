/*
 * sim.h — a deterministic discrete-event simulator of a network of SWIM cores
 * (src/swim), for tests/sim and simbench.
 *
 * Virtual time in ms; one priority queue (time, then insertion order) of message
 * deliveries, core timers and slow-node stalls; every random choice from one seeded
 * generator. The same config, seed and sequence of calls give the same run, bit for bit
 * (sim_trace_hash proves it). The network: per-message loss, delay + uniform jitter,
 * partitions (a group per node; messages between groups are dropped), one-way blocks
 * between groups, crashes (a node stops; messages to it vanish), restarts (a new core
 * with the same id and a higher incarnation, joining through seeds) and slow nodes (the
 * node processes nothing for stall_ms every period_ms; then it is ticked — late, as a
 * stuck event loop would be — gets its backlog of messages, and a loop-lag report).
 *
 * Node i has the address "n<i>:7946" and the name "node-<i>". Single-threaded.
 */
#ifndef KV_TESTS_SIM_H
#define KV_TESTS_SIM_H

#include "swim/swim.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sim_t sim_t;

typedef struct sim_config {
    uint32_t n;         /* nodes (all created stopped; see sim_start) */
    uint64_t seed;      /* everything random derives from it */
    double loss;        /* probability that a message is dropped, 0..1 */
    uint32_t delay_ms;  /* one-way delay ... */
    uint32_t jitter_ms; /* ... plus uniform [0, jitter_ms] */
    swim_config swim;   /* every core's configuration */
} sim_config;

/* Defaults: memberlist LAN timings, 1 ms + [0, 2] ms delay, no loss. */
void sim_config_default(sim_config *c, uint32_t n, uint64_t seed);

sim_t *sim_new(const sim_config *c);
void sim_free(sim_t *s);

uint64_t sim_now(const sim_t *s);

/* Run every event with time <= t_ms; afterwards now = t_ms. */
void sim_run_until(sim_t *s, uint64_t t_ms);

/* Start (or restart, after sim_crash) node i now and make it join through the given
 * seed nodes (none: it starts alone and waits to be found). A restart reuses the id and
 * passes the last incarnation the node announced, as the node's data directory would. */
void sim_start(sim_t *s, uint32_t i, const uint32_t *seeds, size_t n_seeds);

/* Crash node i: it stops at once, messages to it are lost. */
void sim_crash(sim_t *s, uint32_t i);

/* Graceful leave of node i (swim_leave); it stops after SWIM_EV_LEAVE_DONE. */
void sim_leave(sim_t *s, uint32_t i);

bool sim_running(const sim_t *s, uint32_t i);
uint32_t sim_running_count(const sim_t *s);

/* Network faults. group[i] for every node (NULL = all in group 0). */
void sim_partition(sim_t *s, const uint8_t *group);
/* Put node i in group g (0..7) without changing which group pairs are blocked. */
void sim_set_group(sim_t *s, uint32_t i, uint8_t g);
/* Drop everything from group a to group b (one way) while on. Groups are 0..7. */
void sim_block(sim_t *s, uint8_t from_group, uint8_t to_group, bool on);
/* Back to one group, no blocks. */
void sim_heal(sim_t *s);
void sim_set_loss(sim_t *s, double loss);

/* Node i stalls for stall_ms every period_ms, the first stall starting at first_ms
 * (absolute). period_ms 0 ends it after the current stall. */
void sim_set_slow(sim_t *s, uint32_t i, uint64_t first_ms, uint32_t period_ms, uint32_t stall_ms);

/* ---------- observation ---------- */

swim_t *sim_core(const sim_t *s, uint32_t i); /* NULL when not running */

/* Running nodes that hold node j as DEAD (or LEFT). */
uint32_t sim_dead_count(const sim_t *s, uint32_t j);

/* False positives so far: a running node marked DEAD by a running node (it was alive). */
uint64_t sim_false_positives(const sim_t *s);
/* Episodes: times a running node went from held dead by nobody to held dead by someone
 * (one false death, however many nodes then heard of it). */
uint64_t sim_false_deaths(const sim_t *s);
/* ... of which about node j. */
uint64_t sim_false_positives_about(const sim_t *s, uint32_t j);
/* Times node j went into SUSPECT in anyone's view while it was running. */
uint64_t sim_suspicions_about(const sim_t *s, uint32_t j);
/* First-hand suspicions: sum of swim_stats.suspicions over all cores, stopped ones too
 * (one per failed probe that turned an alive member suspect). */
uint64_t sim_accusations(const sim_t *s);

/* Every running node holds the same view (digest), in which exactly the running nodes
 * are members and all ALIVE. */
bool sim_converged(const sim_t *s);

/* Messages and bytes (swim_msg_wire_bound) sent by running nodes so far, totals. */
typedef struct sim_traffic {
    uint64_t msgs, bytes;
    uint64_t probe_msgs, gossip_msgs, state_msgs;
    uint64_t node_ms; /* sum over nodes of time running: per-node rates divide by this */
} sim_traffic;
void sim_get_traffic(const sim_t *s, sim_traffic *out);

/* A hash of every delivery and timer so far (time, nodes, message type and seq). */
uint64_t sim_trace_hash(const sim_t *s);

/* Called for every event a core emits (after the simulator's own bookkeeping). */
typedef void (*sim_event_fn)(sim_t *s, uint32_t node, const swim_event *ev, void *user);
void sim_on_event(sim_t *s, sim_event_fn fn, void *user);

/* Called for every message a node sends (before loss and partitions are applied). */
typedef void (*sim_send_fn)(sim_t *s, uint32_t node, const swim_send *snd, void *user);
void sim_on_send(sim_t *s, sim_send_fn fn, void *user);

/* Node index of a member id, or -1 if it is not one of ours. */
int sim_node_of(const sim_t *s, const swim_member_id *id);

#endif
