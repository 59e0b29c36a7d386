/*
 * direct.h — the replica data lane: length-prefixed frames over plain TCP connections that
 * the loop thread owns (libuv), beside nng, which keeps gossip and failure detection.
 *
 * Why not nng for replica traffic (DESIGN §1 names nng for node-to-node messages): every
 * nng message crosses threads several times — the caller's msgq, nng's task threads, its
 * poller, the receiver's task threads, then our inbox and a uv_async wake-up. Under a
 * quorum-write load on this 2-core machine that cost most of the CPU: perf showed ~70 % of
 * the nodes' samples in the kernel (futex wake-ups and context switches), 40 % on nng's task
 * threads, 12 % of the loop thread in nng_sendmsg; our own code was under 10 %. Replica
 * batches are the hot path (two per write at every coordinator), so they travel here: a
 * write is one writev on the loop thread, a read is one read callback on the peer's loop
 * thread, and nothing else wakes up. Gossip stays on nng (small, infrequent; its probe lane
 * must not queue behind data). A peer that advertises no data port is reached over nng, so
 * `replication.lane: nng` (or an older peer) still works. bench/README.md has the figures.
 *
 * Addressing: a destination is named by the member's nng address ("host:port", its SWIM
 * address) — the key replication already uses — and reached at that host on the data port
 * the member advertised in gossip (kv_direct_set_route). The port may be chosen by the
 * kernel (cluster.data_port 0, the default): gossip carries it, so nothing is derived from
 * another port, and contiguous port ranges for local clusters never collide.
 *
 * Wire: a connection starts with the 8-byte hello "KVDATA1\n"; then frames, each a 4-byte
 * big-endian length and that many bytes. A wrong hello or a frame over max_msg closes that
 * connection, counted and logged (rate-limited); the listener carries on. Frames from one
 * sender arrive in the order sent, each once, unless the connection breaks (then the
 * unsent ones are lost: replica traffic is retried by its own timeouts and hints).
 *
 * Sending never blocks. With the connection up and nothing queued, a frame is written at
 * once (uv_try_write, no copy); the rest of a partial write, and frames sent while a write
 * is in flight or the connection is being made, are queued up to queue_max_bytes per
 * destination (queued plus in flight); beyond that a frame is dropped (KV_EUNAVAIL,
 * counted). A receiver's buffer grows with the bytes that actually arrive, not with the
 * length a frame header announces; at most 1024 inbound connections are kept (more are
 * closed at once, counted). A failed connect
 * (or one not done within 3 s: a firewall that drops packets would otherwise hold it for
 * minutes) drops what was queued and backs off (100 ms doubling to 2 s) before the next attempt; a
 * send during back-off is dropped and counted. Outgoing connections idle for
 * idle_close_ms are closed. TCP_NODELAY on every connection.
 *
 * Threads: every function is called on the loop thread; on_recv runs there too.
 */
#ifndef KV_NET_DIRECT_H
#define KV_NET_DIRECT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct kv_direct kv_direct;

/* One received frame: data[0..len) is valid only during the call. */
typedef void (*kv_direct_recv_fn)(void *arg, const uint8_t *data, size_t len);

typedef struct kv_direct_opts {
    const char *host;       /* address to bind, e.g. "0.0.0.0" or "127.0.0.1" (numeric) */
    int port;               /* 0..65535; 0 = a free port (see kv_direct_port) */
    size_t max_msg;         /* largest frame sent or accepted; 0 = 8 MiB */
    size_t queue_max_bytes; /* per destination, bytes waiting to be written; 0 = 64 MiB */
    uint64_t idle_close_ms; /* close outgoing connections unused this long; 0 = 60 s */
    kv_direct_recv_fn on_recv;
    void *arg;
} kv_direct_opts;

/* Counters since open, and connections now. */
typedef struct kv_direct_stats {
    uint64_t received, received_bytes; /* frames delivered to on_recv */
    uint64_t sent, sent_bytes;         /* frames handed to the kernel */
    uint64_t dropped_queue_full;       /* send refused: queue_max_bytes reached */
    uint64_t dropped_unreachable;      /* queued or sent during back-off, then lost */
    uint64_t dropped_conn_lost;        /* queued frames lost when a connection broke */
    uint64_t connect_failures;         /* connects (or name lookups) that failed */
    uint64_t bad_hello;                /* inbound connections closed: wrong hello */
    uint64_t bad_frame;                /* inbound connections closed: frame over max_msg */
    uint64_t refused_conns;            /* inbound connections refused: 1024 already open */
    uint64_t conns_in, conns_out;      /* open now */
} kv_direct_stats;

/*
 * Listen on opts->host:opts->port. KV_OK, KV_EINVAL (bad opts: host not numeric, port out
 * of range, no on_recv), KV_EIO (bind/listen failed; logged, says "address already in use"
 * when it is), KV_ENOMEM. *out belongs to the caller until kv_direct_close completes.
 */
int kv_direct_open(kv_direct **out, uv_loop_t *loop, const kv_direct_opts *opts);

/* The port actually bound (differs from opts->port only when that was 0). */
int kv_direct_port(const kv_direct *d);

/*
 * Where the member known by key ("host:port", host a name, IPv4 or [IPv6]) takes frames:
 * key's host, data_port. data_port 0 forgets the route. A changed port closes the old
 * outgoing connection (its queued frames are dropped and counted). KV_OK, KV_EINVAL
 * (malformed key, port out of range), KV_ENOMEM, KV_ECLOSED.
 */
int kv_direct_set_route(kv_direct *d, const char *key, int data_port);

/* Whether key has a route (kv_direct_send would not answer KV_ENOTFOUND). */
int kv_direct_has_route(const kv_direct *d, const char *key);

/*
 * Send data[0..len) as one frame to key's route. KV_OK when written or queued (delivery
 * is not guaranteed: a connect that fails at once drops it, counted), KV_ENOTFOUND when key
 * has no route (the caller may use nng), KV_EUNAVAIL when dropped (queue full, the
 * destination in connect back-off, or the connection broke during the write; counted), KV_EINVAL
 * when len is 0 or over max_msg, KV_ECLOSED after kv_direct_close, KV_ENOMEM.
 */
int kv_direct_send(kv_direct *d, const char *key, const void *data, size_t len);

void kv_direct_get_stats(const kv_direct *d, kv_direct_stats *out);

/*
 * Stop listening, close every connection (queued frames are lost), call done(arg) on the
 * loop thread once every handle is closed, then free d. Must not be called twice.
 */
void kv_direct_close(kv_direct *d, void (*done)(void *arg), void *arg);

#endif
