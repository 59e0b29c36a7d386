/*
 * transport.h — the nng adapter for peer messages (DESIGN §4, §6): one listener on the
 * peer port, outgoing connections per peer in two lanes, and an inbox that hands every
 * received message to the loop thread. It moves opaque byte strings; what they mean is
 * the caller's business (src/net/wire.h encodes SWIM messages).
 *
 * Threads: every function here is called on the loop thread. nng completes receives on
 * its own threads; those callbacks only append the message to the inbox (a mutex-guarded
 * queue) and wake the loop with uv_async_send; the loop drains the whole inbox and calls
 * on_recv for each message, in arrival order.
 *
 * Design notes — sockets, lanes and ports:
 *   Receiving: one nng PULL socket listens on cluster.host:cluster.port. Every message a
 *   node sends arrives there, whoever sent it and on whichever lane.
 *   Sending: for each destination address there are two PUSH sockets, each with its own
 *   dialer and so its own TCP connection: the PROBE lane (ping, ack, ping-req, nack —
 *   small, latency-critical) and the BULK lane (push-pull full-state sync, join, and
 *   later replica traffic). A 1 MiB push-pull message being written on the bulk
 *   connection therefore never sits in front of a ping: TCP orders bytes per connection,
 *   and the probe lane has a connection of its own. One port keeps deployment simple
 *   (one port to open, one cluster.advertise); two connections keep the lanes apart.
 *   Sends never block: a message goes to the socket's send queue (probe lane 64, bulk 16
 *   messages) or straight to its connection; a full queue (the peer is down or not
 *   reading) drops the message and counts it. Dialers connect in the background and
 *   retry with backoff (100 ms .. 2 s); a socket that carried nothing for a minute is
 *   closed, so a large cluster does not keep a connection to every member forever.
 *   Limits: a received message over max_msg bytes makes nng drop that connection; the
 *   inbox holds at most inbox_max messages / inbox_max_bytes bytes, beyond which new
 *   messages are dropped and counted (the loop is not keeping up — better to lose a
 *   gossip message than to grow without bound).
 */
#ifndef KV_NET_TRANSPORT_H
#define KV_NET_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct kv_net kv_net;

typedef enum kv_net_lane {
    KV_NET_LANE_PROBE = 0, /* failure detection: never queued behind bulk data */
    KV_NET_LANE_BULK = 1,  /* full-state sync, join, large payloads */
    KV_NET_LANE_REPL = 2,  /* replica batches to peers without a data lane (net/direct.h) */
} kv_net_lane;

/* One received message: data[0..len) is valid only during the call. Loop thread. */
typedef void (*kv_net_recv_fn)(void *arg, const uint8_t *data, size_t len);

typedef struct kv_net_opts {
    const char *host;       /* address to bind, e.g. "0.0.0.0" or "127.0.0.1" */
    int port;               /* 1..65535, or 0 for a free port (see kv_net_port) */
    size_t max_msg;         /* largest message accepted; 0 = 8 MiB */
    size_t inbox_max;       /* messages waiting for the loop; 0 = 8192 */
    size_t inbox_max_bytes; /* bytes waiting for the loop; 0 = 64 MiB */
    uint64_t idle_close_ms; /* close outgoing sockets unused this long; 0 = 60 s */
    kv_net_recv_fn on_recv;
    void *arg;
} kv_net_opts;

/* Counters since open. Drops: inbox_full (loop behind), send_queue_full (peer down or
 * slow), send_error (bad address, out of memory). */
typedef struct kv_net_stats {
    uint64_t received, received_bytes;
    uint64_t sent, sent_bytes;
    uint64_t dropped_inbox_full;
    uint64_t dropped_send_queue_full;
    uint64_t dropped_send_error;
    uint64_t peers_open; /* destinations with open sockets now */
} kv_net_stats;

/*
 * Listen on opts->host:opts->port and start receiving. KV_OK, KV_EINVAL (bad opts),
 * KV_EIO (bind failed; logged, with "address already in use" when it is), KV_ENOMEM.
 * *out is owned by the caller until kv_net_close completes.
 */
int kv_net_open(kv_net **out, uv_loop_t *loop, const kv_net_opts *opts);

/* The port actually bound (differs from opts->port only when that was 0). */
int kv_net_port(const kv_net *n);

/*
 * Queue data[0..len) for addr ("host:port"; host a name, IPv4 or [IPv6]) on lane. Never
 * blocks; copies the bytes. KV_OK when queued or handed to the connection (delivery is
 * not guaranteed: the peer may be down), KV_EUNAVAIL when the lane's queue for addr is
 * full (dropped, counted), KV_EINVAL for a malformed address or a message over max_msg,
 * KV_ECLOSED after kv_net_close, KV_ENOMEM.
 */
int kv_net_send(kv_net *n, const char *addr, kv_net_lane lane, const void *data, size_t len);

void kv_net_get_stats(const kv_net *n, kv_net_stats *out);

/*
 * Stop receiving (messages still in the inbox are discarded), close every socket, and
 * call done(arg) on the loop thread once the loop handles are closed; then free n's
 * memory. Messages queued for sending may be lost. Must not be called twice.
 */
void kv_net_close(kv_net *n, void (*done)(void *arg), void *arg);

#endif
