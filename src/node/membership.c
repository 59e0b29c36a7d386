/*
 * membership.c — the SWIM core driven by the node's loop (see membership.h). Loop thread
 * only; the two pieces of work that leave it (seed name resolution and the fsync of
 * INCARNATION) run on libuv's threadpool and report back through their callbacks.
 *
 * Design notes — the adapter loop:
 *   Inputs to the core are: the tick timer (armed after every input for
 *   swim_next_deadline), each message drained from the transport's inbox (decoded by
 *   src/net/wire.c first; what fails to decode is dropped and counted by reason and
 *   never reaches the core), the loop-lag timer, swim_join at start and swim_leave on
 *   SIGTERM. After every input the adapter drains the core's effects at once: sends are
 *   encoded and handed to the transport (probe lane for PING/ACK/PING_REQ/NACK, bulk lane
 *   for gossip and push-pull), JOIN sends are resolved afresh with uv_getaddrinfo and go
 *   to every address the seed name has, events become log lines (info for every state
 *   or ring change) and, for our own incarnation, an asynchronous fsync'ed write.
 *   Time: one monotonic millisecond clock, the loop's (uv_now after uv_update_time).
 *
 * Design notes — loop lag:
 *   A repeating 100 ms timer measures how late it fires (uv_hrtime against the previous
 *   firing). A loop stuck in a long callback, a CPU-starved process or one that was
 *   SIGSTOPped fires late; the lateness goes to swim_note_loop_lag, which makes the core
 *   distrust its own probe timeouts (Lifeguard's local health) instead of blaming peers.
 *
 * Design notes — leave:
 *   swim_leave marks us LEFT with a higher incarnation and sends the announcement; when
 *   the core reports LEAVE_DONE we wait a short grace (the messages are in nng's queues,
 *   and closing a socket discards what it has not written) and then report done; at the
 *   latest after cluster.leave_timeout. From then on inbound messages are ignored.
 */
#include "node/membership.h"
#include "repl/msg.h"

#include "common/log.h"
#include "kvstore/error.h"
#include "net/direct.h"
#include "net/transport.h"
#include "net/wire.h"
#include "swim/swim.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <inttypes.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MEMB_LAG_PERIOD_MS  100
#define MEMB_LEAVE_GRACE_MS 100
#define MEMB_SEED_ADDRS_MAX 8
#define MEMB_METRIC_DROPPED "kv_peer_messages_dropped_total"
#define MEMB_HELP_DROPPED                                                                          \
    "Peer messages dropped, by reason (malformed, bad_version, unknown_type, "                     \
    "out_of_bounds, rejected, inbox_full, send_queue_full, send_error)."

struct kv_membership {
    uv_loop_t *loop;
    const kv_config *cfg;
    const kv_node_identity *ident;
    kv_metrics *metrics;
    swim_t *core;
    kv_net *net;
    kv_direct *direct; /* replica data lane; NULL with replication.lane nng */
    char advertise[SWIM_ADDR_MAX + 1];
    char name[SWIM_NAME_MAX + 1];

    uv_timer_t tick;
    uv_timer_t lag;
    uv_timer_t leave_timer;
    uint64_t lag_last_hr;
    uint32_t lag_last_ms; /* lateness of the last lag timer firing */
    uint32_t lag_max_ms;  /* worst since the last metrics scrape */

    kv_wire_msg *rx; /* decode scratch: large, so on the heap */
    kv_buf tx;       /* encode scratch */

    /* Seeds as configured, split once. */
    char seeds_buf[KV_CFG_STR_MAX];
    const char *seeds[SWIM_MAX_SEEDS];
    size_t n_seeds;

    /* Leave and close. */
    bool leaving, leave_announced, leave_reported, stopped, closing;
    void (*leave_cb)(void *);
    void *leave_arg;
    void (*close_cb)(void *);
    void *close_arg;
    int pending; /* 1 while open, + handles, transport, resolver and fsync requests */

    /* INCARNATION persistence: one write at a time; the newest value wins. */
    uv_work_t inc_work;
    bool inc_busy;
    uint64_t inc_want, inc_writing, inc_stored;
    int inc_rc;

    /* Transport drop counters already published (kv_net keeps totals). */
    kv_net_stats net_seen;
    kv_direct_stats direct_seen;

    kv_membership_hooks hooks; /* replication layer */
    bool changed;              /* member table changed since on_change was last called */
    bool in_hook_owner_call;   /* inside kv_membership_set_ring: on_change waits */
};

/* One JOIN message on its way to a seed: the encoded bytes wait for the name to resolve. */
typedef struct memb_resolve {
    uv_getaddrinfo_t req;
    kv_membership *m;
    char seed[SWIM_SEED_MAX + 1];
    char port[8];
    size_t len;
    uint8_t data[]; /* the encoded message */
} memb_resolve;

static void memb_drain(kv_membership *m);
static void memb_on_leave_timer(uv_timer_t *t);

static uint64_t memb_now(kv_membership *m)
{
    uv_update_time(m->loop);
    return uv_now(m->loop);
}

static void memb_count_drop(kv_membership *m, const char *reason, uint64_t by)
{
    kv_metrics_count(m->metrics, MEMB_METRIC_DROPPED, MEMB_HELP_DROPPED, "reason", reason, by);
}

/* ---------- finishing close ---------- */

static void memb_free(kv_membership *m)
{
    void (*cb)(void *) = m->close_cb;
    void *arg = m->close_arg;
    swim_free(m->core);
    kv_wire_msg_free(m->rx);
    free(m->rx);
    kv_buf_free(&m->tx);
    free(m);
    if (cb)
        cb(arg);
}

static void memb_release(kv_membership *m)
{
    if (--m->pending == 0)
        memb_free(m);
}

static void memb_on_handle_closed(uv_handle_t *h)
{
    memb_release(h->data);
}

static void memb_on_net_closed(void *arg)
{
    memb_release(arg);
}

/* Where a member takes replica frames: its SWIM address, on the data port it advertised.
 * A member that is gone (or advertises none) loses its route; sends then use nng. */
static void memb_route(kv_membership *m, const swim_node *nd, bool forget)
{
    if (!m->direct || swim_id_equal(&nd->id, &swim_self(m->core)->node.id))
        return;
    int rc = kv_direct_set_route(m->direct, nd->addr, forget ? 0 : nd->data_port);
    if (rc != KV_OK && rc != KV_ECLOSED)
        kv_log_warn("cannot route replica traffic to a member", KV_STR("member", nd->name),
                    KV_STR("address", nd->addr), KV_INT("data_port", nd->data_port), KV_ERR(rc));
}

/* Frames from the data lane: replica batches, nothing else. */
static void memb_on_direct(void *arg, const uint8_t *data, size_t len)
{
    kv_membership *m = arg;
    if (m->closing)
        return;
    if (!kv_repl_is_batch(data, len)) {
        memb_count_drop(m, KV_WIRE_MALFORMED, 1);
        return;
    }
    if (m->hooks.on_repl)
        m->hooks.on_repl(m->hooks.arg, data, len);
}

/* ---------- INCARNATION persistence (threadpool) ---------- */

static void memb_inc_work(uv_work_t *w)
{
    kv_membership *m = w->data;
    m->inc_rc = kv_node_identity_store_incarnation(m->cfg->node_data_dir, m->inc_writing);
}

static void memb_inc_start(kv_membership *m);

static void memb_inc_done(uv_work_t *w, int status)
{
    kv_membership *m = w->data;
    m->inc_busy = false;
    if (status == 0 && m->inc_rc == KV_OK) {
        m->inc_stored = m->inc_writing;
        /* A newer one arrived meanwhile: write it too, even while closing — the leave's
         * incarnation is the one a restart must start above. */
        if (m->inc_want > m->inc_stored)
            memb_inc_start(m);
    } else {
        /* Not retried at once (a full disk would spin); the next change tries again. */
        kv_log_warn("cannot persist own incarnation; after a restart the node refutes stale "
                    "state about itself instead",
                    KV_UINT("incarnation", m->inc_writing));
    }
    memb_release(m);
}

static void memb_inc_start(kv_membership *m)
{
    if (m->inc_busy)
        return;
    m->inc_writing = m->inc_want;
    m->inc_work.data = m;
    if (uv_queue_work(m->loop, &m->inc_work, memb_inc_work, memb_inc_done) == 0) {
        m->inc_busy = true;
        m->pending++;
    }
}

/* ---------- sending ---------- */

static void memb_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    memb_resolve *r = req->data;
    kv_membership *m = r->m;
    if (m->closing) {
        uv_freeaddrinfo(res);
        free(r);
        memb_release(m);
        return;
    }
    if (status != 0) {
        kv_log_warn("cannot resolve seed; will retry", KV_STR("seed", r->seed),
                    KV_STR("reason", uv_strerror(status)));
    } else {
        char sent[MEMB_SEED_ADDRS_MAX][SWIM_ADDR_MAX + 1];
        int nsent = 0;
        for (struct addrinfo *a = res; a && nsent < MEMB_SEED_ADDRS_MAX; a = a->ai_next) {
            char host[INET6_ADDRSTRLEN], addr[SWIM_ADDR_MAX + 1];
            if (a->ai_family == AF_INET) {
                inet_ntop(AF_INET, &((struct sockaddr_in *)a->ai_addr)->sin_addr, host,
                          sizeof(host));
                snprintf(addr, sizeof(addr), "%s:%s", host, r->port);
            } else if (a->ai_family == AF_INET6) {
                inet_ntop(AF_INET6, &((struct sockaddr_in6 *)a->ai_addr)->sin6_addr, host,
                          sizeof(host));
                snprintf(addr, sizeof(addr), "[%s]:%s", host, r->port);
            } else {
                continue;
            }
            bool dup = false;
            for (int i = 0; i < nsent && !dup; i++)
                dup = strcmp(sent[i], addr) == 0;
            if (dup)
                continue;
            snprintf(sent[nsent++], sizeof(sent[0]), "%s", addr);
            int rc = kv_net_send(m->net, addr, KV_NET_LANE_BULK, r->data, r->len);
            kv_log_debug("join request sent to seed", KV_STR("seed", r->seed),
                         KV_STR("address", addr), KV_ERR(rc));
        }
    }
    uv_freeaddrinfo(res);
    free(r);
    memb_release(m);
}

/* Split "host:port" / "[v6]:port" into host and port. */
static bool memb_split_hostport(const char *s, char *host, size_t hcap, char *port, size_t pcap)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || !colon[1])
        return false;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (s[0] == '[') {
        if (hl < 3 || s[hl - 1] != ']')
            return false;
        h++;
        hl -= 2;
    }
    if (hl >= hcap || strlen(colon + 1) >= pcap)
        return false;
    memcpy(host, h, hl);
    host[hl] = '\0';
    snprintf(port, pcap, "%s", colon + 1);
    return true;
}

static void memb_send_join(kv_membership *m, const char *seed, const kv_buf *msg)
{
    memb_resolve *r = calloc(1, sizeof(*r) + msg->len);
    if (!r) {
        memb_count_drop(m, "send_error", 1);
        return;
    }
    char host[SWIM_SEED_MAX + 1];
    if (!memb_split_hostport(seed, host, sizeof(host), r->port, sizeof(r->port))) {
        kv_log_warn("seed is not host:port", KV_STR("seed", seed));
        free(r);
        return;
    }
    r->m = m;
    snprintf(r->seed, sizeof(r->seed), "%s", seed);
    r->len = msg->len;
    memcpy(r->data, msg->data, msg->len);
    r->req.data = r;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* Resolved on the threadpool, afresh for every attempt: a seed's name (a Docker
     * service, DNS round robin) may point somewhere else by now. */
    int rc = uv_getaddrinfo(m->loop, &r->req, memb_on_resolved, host, r->port, &hints);
    if (rc != 0) {
        kv_log_warn("cannot resolve seed; will retry", KV_STR("seed", seed),
                    KV_STR("reason", uv_strerror(rc)));
        free(r);
        return;
    }
    m->pending++;
}

static void memb_send(kv_membership *m, const swim_send *s)
{
    kv_buf_reset(&m->tx);
    int rc = kv_wire_encode(&m->tx, m->advertise, &s->msg);
    if (rc != KV_OK) {
        /* The core produced something the wire cannot carry: a bug, not peer input. */
        kv_log_warn("cannot encode peer message", KV_INT("type", s->msg.type), KV_ERR(rc));
        memb_count_drop(m, "send_error", 1);
        return;
    }
    if (s->cls == SWIM_CLASS_JOIN) {
        memb_send_join(m, s->to, &m->tx);
        return;
    }
    kv_net_lane lane = s->cls == SWIM_CLASS_PROBE ? KV_NET_LANE_PROBE : KV_NET_LANE_BULK;
    rc = kv_net_send(m->net, s->to, lane, m->tx.data, m->tx.len);
    if (rc != KV_OK && kv_log_enabled(KV_LOG_DEBUG))
        kv_log_debug("peer message not sent", KV_STR("to", s->to), KV_INT("type", s->msg.type),
                     KV_ERR(rc));
}

/* ---------- events ---------- */

static void memb_id_short(const swim_member_id *id, char *out)
{
    char hex[2 * SWIM_ID_LEN + 1];
    swim_id_to_hex(id, hex);
    memcpy(out, hex, 8);
    out[8] = '\0';
}

static void memb_event(kv_membership *m, const swim_event *ev)
{
    const swim_node *nd = &ev->member.node;
    char id[9];
    memb_id_short(&nd->id, id);
    switch (ev->kind) {
    case SWIM_EV_MEMBER_ADDED:
        m->changed = true;
        memb_route(m, nd, false);
        kv_log_info("member added", KV_STR("member", nd->name), KV_STR("id", id),
                    KV_STR("address", nd->addr), KV_STR("state", swim_state_name(nd->state)),
                    KV_UINT("incarnation", nd->incarnation),
                    KV_STR("ring", swim_ring_status_name(nd->ring)));
        break;
    case SWIM_EV_MEMBER_UPDATED:
        m->changed = true;
        memb_route(m, nd, false);
        if (ev->old_state != nd->state) {
            /* The line operators grep for: who, old → new, at which incarnation. */
            char change[32];
            snprintf(change, sizeof(change), "%s->%s", swim_state_name(ev->old_state),
                     swim_state_name(nd->state));
            kv_log_info("member state changed", KV_STR("member", nd->name), KV_STR("id", id),
                        KV_STR("address", nd->addr), KV_STR("change", change),
                        KV_STR("from", swim_state_name(ev->old_state)),
                        KV_STR("to", swim_state_name(nd->state)),
                        KV_UINT("incarnation", nd->incarnation),
                        KV_UINT("old_incarnation", ev->old_incarnation));
        }
        if (ev->old_ring != nd->ring)
            kv_log_info("member ring status changed", KV_STR("member", nd->name), KV_STR("id", id),
                        KV_STR("from", swim_ring_status_name(ev->old_ring)),
                        KV_STR("to", swim_ring_status_name(nd->ring)),
                        KV_UINT("incarnation", nd->incarnation));
        if (ev->old_state == nd->state && ev->old_ring == nd->ring)
            kv_log_debug("member updated", KV_STR("member", nd->name), KV_STR("id", id),
                         KV_STR("address", nd->addr), KV_UINT("incarnation", nd->incarnation),
                         KV_UINT("old_incarnation", ev->old_incarnation));
        break;
    case SWIM_EV_MEMBER_REAPED:
        m->changed = true;
        memb_route(m, nd, true);
        kv_log_info("member forgotten", KV_STR("member", nd->name), KV_STR("id", id),
                    KV_STR("state", swim_state_name(nd->state)),
                    KV_UINT("incarnation", nd->incarnation));
        break;
    case SWIM_EV_SELF_INCARNATION:
        /* inc_want is the highest incarnation we have asked to persist (at start: the one
         * INCARNATION already holds). */
        if (nd->incarnation > m->inc_want) {
            kv_log_info("own incarnation changed", KV_UINT("incarnation", nd->incarnation),
                        KV_UINT("old_incarnation", m->inc_want),
                        KV_STR("state", swim_state_name(nd->state)));
            m->inc_want = nd->incarnation;
            memb_inc_start(m);
        }
        break;
    case SWIM_EV_JOINED:
        kv_log_info("joined the cluster", KV_UINT("members", swim_member_count(m->core)),
                    KV_UINT("incarnation", nd->incarnation));
        break;
    case SWIM_EV_LEAVE_DONE:
        if (m->leaving && !m->leave_announced) {
            m->leave_announced = true;
            /* Let nng write what is queued before anyone closes the sockets. */
            uint64_t grace = swim_member_count(m->core) > 1 ? MEMB_LEAVE_GRACE_MS : 0;
            uv_timer_stop(&m->leave_timer);
            uv_timer_start(&m->leave_timer, memb_on_leave_timer, grace, 0);
        }
        break;
    }
}

/* ---------- driving the core ---------- */

static void memb_on_tick(uv_timer_t *t);

/* After every input: hand out the sends, log the events, re-arm the tick timer. */
static void memb_drain(kv_membership *m)
{
    swim_send s;
    while (swim_pop_send(m->core, &s))
        memb_send(m, &s);
    swim_event ev;
    while (swim_pop_event(m->core, &ev))
        memb_event(m, &ev);
    if (m->changed && m->hooks.on_change && !m->closing && !m->in_hook_owner_call) {
        m->changed = false;
        m->hooks.on_change(m->hooks.arg);
    }
    if (m->stopped || m->closing)
        return;
    uint64_t now = uv_now(m->loop), at = swim_next_deadline(m->core);
    uv_timer_start(&m->tick, memb_on_tick, at > now ? at - now : 0, 0);
}

static void memb_on_tick(uv_timer_t *t)
{
    kv_membership *m = t->data;
    if (m->stopped || m->closing)
        return;
    swim_tick(m->core, memb_now(m));
    memb_drain(m);
}

static void memb_on_lag(uv_timer_t *t)
{
    kv_membership *m = t->data;
    uint64_t now = uv_hrtime();
    uint64_t expected = m->lag_last_hr + (uint64_t)MEMB_LAG_PERIOD_MS * 1000000u;
    uint64_t late_ms = now > expected ? (now - expected) / 1000000u : 0;
    m->lag_last_hr = now;
    m->lag_last_ms = late_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)late_ms;
    if (m->lag_last_ms > m->lag_max_ms)
        m->lag_max_ms = m->lag_last_ms;
    if (m->stopped || m->closing)
        return;
    swim_note_loop_lag(m->core, m->lag_last_ms);
    memb_drain(m);
}

static void memb_on_recv(void *arg, const uint8_t *data, size_t len)
{
    kv_membership *m = arg;
    if (!m->closing && kv_repl_is_batch(data, len)) {
        /* Replica traffic flows on while a leave spreads: requests in flight finish. */
        if (m->hooks.on_repl)
            m->hooks.on_repl(m->hooks.arg, data, len);
        return;
    }
    if (m->stopped || m->closing)
        return; /* left: we answer nobody any more */
    const char *why = NULL;
    int rc = kv_wire_decode(data, len, m->rx, &why);
    if (rc != KV_OK) {
        const char *reason = rc == KV_ENOMEM ? "out_of_memory" : why;
        memb_count_drop(m, reason, 1);
        kv_log_debug("peer message dropped", KV_STR("reason", reason), KV_UINT("bytes", len));
        return;
    }
    rc = swim_recv(m->core, memb_now(m), m->rx->from_addr, &m->rx->msg);
    if (rc != KV_OK) {
        memb_count_drop(m, "rejected", 1);
        kv_log_debug("peer message dropped", KV_STR("reason", "rejected"),
                     KV_STR("from", m->rx->from_addr), KV_INT("type", m->rx->msg.type), KV_ERR(rc));
    }
    kv_wire_msg_free(m->rx);
    memb_drain(m);
}

/* ---------- start ---------- */

static bool memb_is_wildcard(const char *host)
{
    return !*host || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0 ||
           strcmp(host, "[::]") == 0;
}

/* The first IPv4 address of an interface that is up and not loopback; false if none. */
static bool memb_first_ipv4(char *out, size_t cap)
{
    struct ifaddrs *ifs;
    if (getifaddrs(&ifs) != 0)
        return false;
    bool found = false;
    for (struct ifaddrs *i = ifs; i && !found; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP) ||
            (i->ifa_flags & IFF_LOOPBACK))
            continue;
        found = inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, out,
                          (socklen_t)cap) != NULL;
    }
    freeifaddrs(ifs);
    return found;
}

static int memb_derive_advertise(kv_membership *m, int port)
{
    const kv_config *cfg = m->cfg;
    const char *why = "cluster.advertise";
    if (cfg->cluster_advertise[0]) {
        if (strlen(cfg->cluster_advertise) > SWIM_ADDR_MAX)
            goto too_long;
        memcpy(m->advertise, cfg->cluster_advertise, strlen(cfg->cluster_advertise) + 1);
        return KV_OK;
    }
    char host[256];
    if (!memb_is_wildcard(cfg->cluster_host)) {
        snprintf(host, sizeof(host), "%s", cfg->cluster_host);
        why = "cluster.host";
    } else if (memb_first_ipv4(host, sizeof(host))) {
        why = "first non-loopback interface address";
    } else {
        snprintf(host, sizeof(host), "127.0.0.1");
        why = "loopback: no other interface address";
    }
    bool v6 = strchr(host, ':') != NULL && host[0] != '[';
    int n = snprintf(m->advertise, sizeof(m->advertise), v6 ? "[%s]:%d" : "%s:%d", host, port);
    if (n < 0 || n > SWIM_ADDR_MAX)
        goto too_long;
    kv_log_debug("advertise address derived", KV_STR("advertise", m->advertise),
                 KV_STR("from", why));
    return KV_OK;
too_long:
    kv_log_error("the advertise address is too long for membership messages", KV_STR("source", why),
                 KV_INT("max_bytes", SWIM_ADDR_MAX));
    return KV_ECONFIG;
}

/* node.name, cut at a UTF-8 character boundary to what gossip carries. */
static void memb_name(kv_membership *m)
{
    const char *name = m->cfg->node_name;
    size_t n = strlen(name);
    if (n > SWIM_NAME_MAX) {
        n = SWIM_NAME_MAX;
        while (n > 0 && ((unsigned char)name[n] & 0xc0) == 0x80)
            n--;
        kv_log_warn("node.name is longer than membership carries; others see it shortened",
                    KV_STR("name", name), KV_INT("max_bytes", SWIM_NAME_MAX));
    }
    memcpy(m->name, name, n);
    m->name[n] = '\0';
}

static void memb_split_seeds(kv_membership *m)
{
    snprintf(m->seeds_buf, sizeof(m->seeds_buf), "%s", m->cfg->cluster_seeds);
    char *save = NULL;
    for (char *s = strtok_r(m->seeds_buf, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
        if (!*s)
            continue;
        if (m->n_seeds == SWIM_MAX_SEEDS || strlen(s) > SWIM_SEED_MAX) {
            kv_log_warn("seed ignored: more than the seeds membership takes, or too long",
                        KV_STR("seed", s), KV_INT("max_seeds", SWIM_MAX_SEEDS));
            continue;
        }
        m->seeds[m->n_seeds++] = s;
    }
}

static uint64_t memb_random_seed(void)
{
    uint64_t v = uv_hrtime() ^ ((uint64_t)getpid() << 32);
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        uint64_t r;
        if (fread(&r, sizeof(r), 1, f) == 1)
            v ^= r;
        fclose(f);
    }
    return v;
}

int kv_membership_start(kv_membership **out, uv_loop_t *loop, const kv_config *cfg,
                        const kv_node_identity *ident, kv_metrics *metrics, int http_port,
                        bool joining)
{
    kv_membership *m = calloc(1, sizeof(*m));
    if (!m)
        return KV_ENOMEM;
    m->loop = loop;
    m->cfg = cfg;
    m->ident = ident;
    m->metrics = metrics;
    m->inc_want = m->inc_stored = ident->incarnation;
    m->rx = calloc(1, sizeof(*m->rx));
    if (!m->rx) {
        free(m);
        return KV_ENOMEM;
    }
    memb_name(m);
    memb_split_seeds(m);

    kv_net_opts no = {
        .host = cfg->cluster_host,
        .port = cfg->cluster_port,
        .on_recv = memb_on_recv,
        .arg = m,
        /* a replica batch carries whole values: room for the largest one */
        .max_msg = cfg->limits_max_value + (1u << 20) > (8u << 20)
                       ? (size_t)cfg->limits_max_value + (1u << 20)
                       : (8u << 20),
    };
    int rc = kv_net_open(&m->net, loop, &no);
    if (rc != KV_OK) {
        free(m->rx);
        free(m);
        return rc;
    }
    int port = kv_net_port(m->net);
    rc = memb_derive_advertise(m, port);
    if (rc == KV_OK && cfg->replication_lane == KV_REPL_LANE_DIRECT) {
        kv_direct_opts dopt = {
            .host = cfg->cluster_host,
            .port = cfg->cluster_data_port,
            .max_msg = no.max_msg,
            .on_recv = memb_on_direct,
            .arg = m,
        };
        rc = kv_direct_open(&m->direct, loop, &dopt);
        if (rc != KV_OK) {
            m->direct = NULL;
            kv_log_error("cannot open the replica data lane", KV_STR("host", cfg->cluster_host),
                         KV_INT("data_port", cfg->cluster_data_port), KV_ERR(rc));
        }
    }

    swim_config sc;
    swim_config_default(&sc);
    sc.probe_interval_ms = (uint32_t)cfg->cluster_probe_interval_ms;
    sc.probe_timeout_ms = (uint32_t)cfg->cluster_probe_timeout_ms;
    sc.indirect_checks = (uint32_t)cfg->cluster_indirect_probes;
    sc.suspicion_mult = (uint32_t)cfg->cluster_suspicion_mult;
    sc.retransmit_mult = (uint32_t)cfg->cluster_retransmit_mult;
    sc.push_pull_interval_ms = (uint32_t)cfg->cluster_pushpull_interval_ms;

    swim_node self;
    memset(&self, 0, sizeof(self));
    memcpy(self.id.b, ident->id, SWIM_ID_LEN);
    snprintf(self.name, sizeof(self.name), "%s", m->name);
    snprintf(self.addr, sizeof(self.addr), "%s", m->advertise);
    /* The last incarnation this id used; the core starts above it (and INCARNATION on
     * disk already holds the one above, written before we got here). */
    self.incarnation = ident->prev_incarnation;
    self.ring = joining ? SWIM_RING_JOINING : SWIM_RING_NORMAL;
    self.data_port = m->direct ? (uint16_t)kv_direct_port(m->direct) : 0;
    self.http_port = http_port > 0 && http_port <= 65535 ? (uint16_t)http_port : 0;
    if (rc == KV_OK) {
        m->core = swim_new(&sc, &self, memb_random_seed());
        if (!m->core) {
            kv_log_error("cannot create the membership core (bad cluster timing?)",
                         KV_UINT("probe_interval_ms", sc.probe_interval_ms),
                         KV_UINT("probe_timeout_ms", sc.probe_timeout_ms));
            rc = KV_ECONFIG;
        }
    }
    if (rc != KV_OK) {
        /* Nothing else is running yet: close the transport and hand it to the loop. */
        m->closing = true;
        m->pending = 1;
        if (m->direct) {
            m->pending++;
            kv_direct_close(m->direct, memb_on_net_closed, m);
        }
        kv_net_close(m->net, memb_on_net_closed, m);
        return rc;
    }

    m->pending = 1; /* released by kv_membership_close */
    uv_timer_init(loop, &m->tick);
    uv_timer_init(loop, &m->lag);
    uv_timer_init(loop, &m->leave_timer);
    m->tick.data = m->lag.data = m->leave_timer.data = m;
    m->lag_last_hr = uv_hrtime();
    uv_timer_start(&m->lag, memb_on_lag, MEMB_LAG_PERIOD_MS, MEMB_LAG_PERIOD_MS);

    /* Every drop reason shows in /metrics from the start, at 0. */
    static const char *const reasons[] = {
        KV_WIRE_MALFORMED, KV_WIRE_BAD_VERSION, KV_WIRE_UNKNOWN_TYPE, KV_WIRE_OUT_OF_BOUNDS,
        "rejected",        "inbox_full",        "send_queue_full",    "send_error"};
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        memb_count_drop(m, reasons[i], 0);

    char idshort[9];
    memb_id_short(&self.id, idshort);
    kv_log_info("cluster listening", KV_STR("host", cfg->cluster_host), KV_INT("port", port),
                KV_INT("data_port", self.data_port), KV_STR("advertise", m->advertise),
                KV_STR("id", idshort), KV_UINT("probe_interval_ms", sc.probe_interval_ms),
                KV_UINT("suspicion_timeout_ms", swim_suspicion_timeout_ms(m->core, 0)));
    if (m->n_seeds) {
        rc = swim_join(m->core, memb_now(m), m->seeds, m->n_seeds);
        if (rc != KV_OK)
            kv_log_warn("cannot join through the seeds", KV_STR("seeds", cfg->cluster_seeds),
                        KV_ERR(rc));
        else
            kv_log_info("joining the cluster", KV_STR("seeds", cfg->cluster_seeds));
    } else {
        kv_log_info("no cluster.seeds: waiting for other members to join us");
    }
    memb_drain(m);
    *out = m;
    return KV_OK;
}

const char *kv_membership_advertise(const kv_membership *m)
{
    return m->advertise;
}

const swim_member_id *kv_membership_self_id(const kv_membership *m)
{
    return &swim_self(m->core)->node.id;
}

const swim_t *kv_membership_core(const kv_membership *m)
{
    return m->core;
}

void kv_membership_set_hooks(kv_membership *m, const kv_membership_hooks *h)
{
    m->hooks = *h;
}

int kv_membership_send_repl(kv_membership *m, const char *addr, const void *data, size_t len)
{
    if (m->closing)
        return KV_ECLOSED;
    if (m->direct) {
        /* KV_EUNAVAIL: the lane cannot take it now (the data port unreachable — maybe only
         * it is firewalled — or its queue full). nng may still get it there, and a replica
         * message may arrive by either path: versions and request ids decide, not order. */
        int rc = kv_direct_send(m->direct, addr, data, len);
        if (rc != KV_ENOTFOUND && rc != KV_EUNAVAIL)
            return rc;
    }
    return kv_net_send(m->net, addr, KV_NET_LANE_REPL, data, len);
}

/* ---------- views ---------- */

static int memb_cmp_name(const void *a, const void *b)
{
    const swim_member *x = *(const swim_member *const *)a, *y = *(const swim_member *const *)b;
    int c = strcmp(x->node.name, y->node.name);
    return c ? c : memcmp(x->node.id.b, y->node.id.b, SWIM_ID_LEN);
}

/* RFC 3339 UTC with milliseconds for a moment given in the loop's clock. */
static void memb_wall_time(kv_membership *m, uint64_t mono_ms, char *out, size_t cap)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now_wall = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    uint64_t now_mono = uv_now(m->loop);
    int64_t wall = now_wall - (int64_t)(now_mono > mono_ms ? now_mono - mono_ms : 0);
    time_t secs = (time_t)(wall / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char base[32];
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, cap, "%s.%03dZ", base, (int)(wall % 1000));
}

static void memb_json_str(kv_buf *b, const char *key, const char *val)
{
    kv_buf_printf(b, "\"%s\":\"", key);
    kv_buf_append_json_str(b, val, strlen(val));
    kv_buf_appends(b, "\"");
}

/* "http":"host:port" (the member's client API: its SWIM host, its HTTP port) or null. */
static void memb_json_http(kv_buf *out, const swim_node *nd)
{
    const char *colon = strrchr(nd->addr, ':');
    if (!nd->http_port || !colon) {
        kv_buf_appends(out, "\"http\":null,");
        return;
    }
    char http[SWIM_ADDR_MAX + 8];
    snprintf(http, sizeof(http), "%.*s:%u", (int)(colon - nd->addr), nd->addr,
             (unsigned)nd->http_port);
    memb_json_str(out, "http", http);
    kv_buf_appends(out, ",");
}

int kv_membership_members_json(kv_membership *m, kv_buf *out)
{
    uv_update_time(m->loop);
    size_t n = swim_member_count(m->core);
    const swim_member **v = calloc(n ? n : 1, sizeof(*v));
    if (!v)
        return KV_ENOMEM;
    for (size_t i = 0; i < n; i++)
        v[i] = swim_member_at(m->core, i);
    qsort(v, n, sizeof(*v), memb_cmp_name);
    const swim_member *self = swim_self(m->core);

    kv_buf_appends(out, "{");
    memb_json_str(out, "node_id", m->ident->hex);
    kv_buf_appends(out, ",");
    memb_json_str(out, "name", self->node.name);
    kv_buf_appends(out, ",");
    memb_json_str(out, "address", m->advertise);
    kv_buf_printf(out, ",\"joined\":%s,\"members\":[", swim_is_joined(m->core) ? "true" : "false");
    for (size_t i = 0; i < n; i++) {
        const swim_node *nd = &v[i]->node;
        char hex[2 * SWIM_ID_LEN + 1], since[40];
        swim_id_to_hex(&nd->id, hex);
        memb_wall_time(m, v[i]->since_ms, since, sizeof(since));
        kv_buf_appends(out, i ? ",{" : "{");
        memb_json_str(out, "id", hex);
        kv_buf_appends(out, ",");
        memb_json_str(out, "name", nd->name);
        kv_buf_appends(out, ",");
        memb_json_str(out, "address", nd->addr);
        kv_buf_appends(out, ",");
        memb_json_http(out, nd);
        memb_json_str(out, "state", swim_state_name(nd->state));
        kv_buf_printf(out, ",\"incarnation\":%" PRIu64 ",", nd->incarnation);
        memb_json_str(out, "ring_status", swim_ring_status_name(nd->ring));
        kv_buf_appends(out, ",");
        memb_json_str(out, "since", since);
        kv_buf_printf(out, ",\"self\":%s}", v[i] == self ? "true" : "false");
    }
    int rc = kv_buf_appends(out, "]}");
    free(v);
    return rc == KV_OK ? KV_OK : KV_ENOMEM;
}

/* The data lane keeps totals; the labelled counter takes increments. */
static void memb_count_direct(kv_membership *m, const char *help, const char *reason,
                              uint64_t total, uint64_t *seen)
{
    kv_metrics_count(m->metrics, "kv_data_frames_dropped_total", help, "reason", reason,
                     total - *seen);
    *seen = total;
}

void kv_membership_publish_metrics(kv_membership *m)
{
    kv_metrics *mx = m->metrics;
    kv_net_stats ns;
    kv_net_get_stats(m->net, &ns);
    /* The transport keeps totals; the labelled counter takes increments. */
    memb_count_drop(m, "inbox_full", ns.dropped_inbox_full - m->net_seen.dropped_inbox_full);
    memb_count_drop(m, "send_queue_full",
                    ns.dropped_send_queue_full - m->net_seen.dropped_send_queue_full);
    memb_count_drop(m, "send_error", ns.dropped_send_error - m->net_seen.dropped_send_error);
    m->net_seen = ns;
    kv_metrics_counter_set(mx, "kv_peer_messages_received_total",
                           "Peer messages received on the cluster port.", ns.received);
    kv_metrics_counter_set(mx, "kv_peer_received_bytes_total", "Bytes of peer messages received.",
                           ns.received_bytes);
    kv_metrics_counter_set(mx, "kv_peer_messages_sent_total",
                           "Peer messages handed to a connection or its send queue.", ns.sent);
    kv_metrics_counter_set(mx, "kv_peer_sent_bytes_total", "Bytes of peer messages sent.",
                           ns.sent_bytes);
    kv_metrics_gauge(mx, "kv_peer_destinations", "Peer addresses with open outgoing sockets.",
                     (double)ns.peers_open);
    if (m->direct) {
        kv_direct_stats ds;
        kv_direct_get_stats(m->direct, &ds);
        const char *hd = "Replica frames the data lane lost, by reason (queue_full: the "
                         "destination's queue was full; unreachable: it could not be "
                         "connected; conn_lost: the connection broke).";
        memb_count_direct(m, hd, "queue_full", ds.dropped_queue_full,
                          &m->direct_seen.dropped_queue_full);
        memb_count_direct(m, hd, "unreachable", ds.dropped_unreachable,
                          &m->direct_seen.dropped_unreachable);
        memb_count_direct(m, hd, "conn_lost", ds.dropped_conn_lost,
                          &m->direct_seen.dropped_conn_lost);
        kv_metrics_counter_set(mx, "kv_data_frames_received_total",
                               "Replica frames received on the data lane.", ds.received);
        kv_metrics_counter_set(mx, "kv_data_frames_sent_total",
                               "Replica frames written to data lane connections.", ds.sent);
        kv_metrics_counter_set(mx, "kv_data_received_bytes_total",
                               "Payload bytes received on the data lane.", ds.received_bytes);
        kv_metrics_counter_set(mx, "kv_data_sent_bytes_total",
                               "Payload bytes written on the data lane.", ds.sent_bytes);
        kv_metrics_counter_set(mx, "kv_data_connect_failures_total",
                               "Data lane connects (or name lookups) that failed.",
                               ds.connect_failures);
        kv_metrics_counter_set(mx, "kv_data_bad_hello_total",
                               "Inbound data lane connections closed: no kvstore hello.",
                               ds.bad_hello);
        kv_metrics_counter_set(mx, "kv_data_bad_frame_total",
                               "Inbound data lane connections closed: frame length out of range.",
                               ds.bad_frame);
        kv_metrics_counter_set(mx, "kv_data_refused_connections_total",
                               "Inbound data lane connections refused: 1024 already open.",
                               ds.refused_conns);
        kv_metrics_gauge(mx, "kv_data_connections_in", "Inbound data lane connections open.",
                         (double)ds.conns_in);
        kv_metrics_gauge(mx, "kv_data_connections_out", "Outgoing data lane connections open.",
                         (double)ds.conns_out);
    }

    size_t count[4] = {0, 0, 0, 0};
    for (size_t i = 0, n = swim_member_count(m->core); i < n; i++) {
        unsigned st = (unsigned)swim_member_at(m->core, i)->node.state;
        if (st < 4)
            count[st]++;
    }
    kv_metrics_gauge(mx, "kv_cluster_members_alive", "Members alive (self included).",
                     (double)count[SWIM_ALIVE]);
    kv_metrics_gauge(mx, "kv_cluster_members_suspect", "Members suspected of having failed.",
                     (double)count[SWIM_SUSPECT]);
    kv_metrics_gauge(mx, "kv_cluster_members_dead", "Members declared dead (not yet forgotten).",
                     (double)count[SWIM_DEAD]);
    kv_metrics_gauge(mx, "kv_cluster_members_left", "Members that left (not yet forgotten).",
                     (double)count[SWIM_LEFT]);

    swim_stats st;
    swim_get_stats(m->core, &st);
    kv_metrics_gauge(mx, "kv_cluster_local_health",
                     "Lifeguard local health score (0 = healthy; higher stretches timeouts).",
                     (double)st.awareness);
    kv_metrics_gauge(mx, "kv_cluster_loop_lag_seconds",
                     "Worst event-loop lag measured since the previous scrape.",
                     (double)m->lag_max_ms / 1000.0);
    m->lag_max_ms = m->lag_last_ms;
    kv_metrics_counter_set(mx, "kv_swim_probes_total", "Probes started.", st.probes);
    kv_metrics_counter_set(mx, "kv_swim_probes_failed_total",
                           "Probes that got no ack, directly or indirectly.", st.probes_failed);
    kv_metrics_counter_set(mx, "kv_swim_indirect_probes_total", "Indirect probes requested.",
                           st.indirect_probes);
    kv_metrics_counter_set(mx, "kv_swim_suspicions_total", "Members this node suspected.",
                           st.suspicions);
    kv_metrics_counter_set(mx, "kv_swim_deaths_total",
                           "Members this node declared dead on a suspicion timeout.", st.deaths);
    kv_metrics_counter_set(mx, "kv_swim_refutes_total",
                           "Own incarnation bumps to refute a suspicion or death.", st.refutes);
    kv_metrics_counter_set(mx, "kv_swim_push_pulls_total", "Push-pull state syncs started.",
                           st.push_pulls);
    kv_metrics_counter_set(mx, "kv_swim_loop_stalls_total",
                           "Late ticks and loop-lag reports over the threshold.", st.loop_stalls);
}

/* ---------- leave and close ---------- */

static void memb_on_leave_timer(uv_timer_t *t)
{
    kv_membership *m = t->data;
    if (m->leave_reported)
        return;
    if (!m->leave_announced)
        kv_log_warn("leave not confirmed within cluster.leave_timeout; others may see this node "
                    "dead instead of left",
                    KV_UINT("leave_timeout_ms", m->cfg->cluster_leave_timeout_ms));
    else
        kv_log_info("left the cluster",
                    KV_UINT("incarnation", swim_self(m->core)->node.incarnation));
    m->leave_reported = true;
    m->stopped = true;
    uv_timer_stop(&m->tick);
    if (m->leave_cb)
        m->leave_cb(m->leave_arg);
}

int kv_membership_remove(kv_membership *m, const char *name)
{
    if (m->leaving || m->closing)
        return KV_ECLOSED;
    const swim_member *found = NULL;
    for (size_t i = 0; i < swim_member_count(m->core) && !found; i++) {
        const swim_member *x = swim_member_at(m->core, i);
        if (strcmp(x->node.name, name) == 0)
            found = x;
    }
    if (!found)
        return KV_ENOTFOUND;
    swim_member_id id = found->node.id;
    int rc = swim_remove_member(m->core, memb_now(m), &id);
    if (rc == KV_OK) {
        kv_log_warn("member removed by an operator: its ranges go to the remaining replicas",
                    KV_STR("member", name));
        memb_drain(m);
    }
    return rc;
}

int kv_membership_set_ring(kv_membership *m, swim_ring_status ring)
{
    if (m->leaving || m->closing)
        return KV_ECLOSED;
    const swim_member *me = swim_member_find(m->core, kv_membership_self_id(m));
    swim_ring_status old = me ? me->node.ring : SWIM_RING_NORMAL;
    int rc = swim_set_ring_status(m->core, memb_now(m), ring);
    if (rc == KV_OK && old != ring)
        kv_log_info("ring status changed", KV_STR("from", swim_ring_status_name(old)),
                    KV_STR("to", swim_ring_status_name(ring)));
    m->in_hook_owner_call = true;
    memb_drain(m);
    m->in_hook_owner_call = false;
    return rc;
}

void kv_membership_leave(kv_membership *m, void (*done)(void *arg), void *arg)
{
    m->leave_cb = done;
    m->leave_arg = arg;
    if (m->leaving)
        return;
    m->leaving = true;
    kv_log_info("leaving the cluster", KV_UINT("members", swim_member_count(m->core)));
    /* The timeout first: LEAVE_DONE may arrive during the drain below and replace it. */
    uv_timer_start(&m->leave_timer, memb_on_leave_timer, m->cfg->cluster_leave_timeout_ms, 0);
    swim_leave(m->core, memb_now(m));
    memb_drain(m);
}

void kv_membership_close(kv_membership *m, void (*done)(void *arg), void *arg)
{
    m->close_cb = done;
    m->close_arg = arg;
    m->closing = true;
    m->stopped = true;
    /* Requests in flight (name resolution, the INCARNATION write) are already counted in
     * pending and release it from their callbacks. */
    m->pending += 4; /* three timers and the transport */
    uv_timer_stop(&m->tick);
    uv_timer_stop(&m->lag);
    uv_timer_stop(&m->leave_timer);
    uv_close((uv_handle_t *)&m->tick, memb_on_handle_closed);
    uv_close((uv_handle_t *)&m->lag, memb_on_handle_closed);
    uv_close((uv_handle_t *)&m->leave_timer, memb_on_handle_closed);
    if (m->direct) {
        m->pending++;
        kv_direct_close(m->direct, memb_on_net_closed, m);
        m->direct = NULL;
    }
    kv_net_close(m->net, memb_on_net_closed, m);
    memb_release(m); /* the reference kv_membership_start took */
}
