/*
 * msg.h — replica messages between nodes (DESIGN §9) and their CBOR encoding. Pure
 * functions; any thread (the node calls them on its loop thread).
 *
 * A replica message travels inside a BATCH: every message the node has ready for one
 * peer in one loop turn goes out as one nng message (DESIGN: batching). On the wire:
 *
 *   batch   = [KV_REPL_PROTO, from_id (16-byte bytes), from_addr (text), [msg...]]
 *   msg     = [type, req_id, ...fields by position, see below]
 *
 * KV_REPL_PROTO is chosen so that it can never be a SWIM protocol version (SWIM messages
 * are [SWIM_PROTOCOL_VERSION, ...]): the receiver looks at the first item of the outer
 * array to tell the two apart (kv_repl_is_batch).
 *
 *   WRITE      [1, req_id, key, ts, node, flags, expiry_ms, value, hint_for]
 *   WRITE_ACK  [2, req_id, status, ts, node]
 *   READ       [3, req_id, key]
 *   READ_ACK   [4, req_id, status, ts, node, flags, expiry_ms, value]
 *   LIST       [5, req_id, prefix, limit, has_cursor, cursor_hash, cursor_key]
 *   LIST_ACK   [6, req_id, status, truncated, [[key, hash, ts, node, flags]...]]
 *   TREE       [7, req_id, level, ranges, nodes]
 *   TREE_ACK   [8, req_id, status, sums]
 *   PULL       [9, req_id, seq, ranges, have]
 *   PULL_DATA  [10, req_id, status, seq, last, raw_len, payload]
 *   PURGE      [11, req_id, key, ts, node]
 *   STREAM     [12, req_id, ranges]
 *   STREAM_DONE [13, req_id, status]
 *
 * Anti-entropy and streaming (DESIGN §11; src/node/sync.c):
 *   TREE asks a replica for its anti-entropy tree (src/ae/merkle.h) restricted to hash
 *   ranges: for each node index of `nodes` at `level` (all 2^level nodes when `nodes` is
 *   empty), the sum of the leaves inside both that node and `ranges`. TREE_ACK answers
 *   the sums in the same order; status KV_REPL_ERROR (no sums) when the replica keeps no
 *   tree or cannot answer.
 *   PULL asks a replica for its records in `ranges`, one chunk (src/repl/chunk.h) per
 *   PULL: seq 0 opens a pull (ranges; have = item digests the asker already holds, which
 *   the replica skips), seq k > 0 acknowledges chunk k-1 as applied and asks for chunk k
 *   (ranges/have empty). PULL_DATA answers chunk seq; last is true on the final one.
 *   status KV_REPL_ERROR on a PULL_DATA means the pull is unknown (the replica restarted
 *   or timed it out): start it again.
 *   PURGE tells a replica of key that the sender purged its tombstone at version (ts,
 *   node) after seeing every replica hold it (src/node/sync.c): the receiver may forget
 *   its own tombstone if it is not newer (store_purge). No answer.
 *   STREAM asks a member to pull `ranges` from the sender (a leaving node hands its
 *   ranges to their new owners: node/leave.c); STREAM_DONE answers once that pull ended,
 *   status KV_REPL_OK when every record was applied, KV_REPL_ERROR otherwise.
 * ranges, nodes, sums and have are byte strings of packed big-endian u64 values (ranges:
 * lo, hi pairs, [lo, hi) as in store_range), read with kv_repl_u64_at.
 *
 * Fields: key 1..KV_REPL_KEY_MAX bytes; value a byte string (empty for tombstones);
 * ts/node a kv_version; flags KV_REPL_F_*; hint_for a 16-byte id or an empty byte string;
 * status a kv_repl_status. Decoding is defensive: types, counts, lengths and enums are
 * checked against the bounds below and against the bytes left; anything else is refused
 * with a reason (a metric label) and the whole batch is dropped. A decoder accepts longer
 * msg arrays than it knows (extra trailing items skipped) so fields can be appended later.
 */
#ifndef KV_REPL_MSG_H
#define KV_REPL_MSG_H

#include "common/buf.h"
#include "common/hlc.h"
#include "swim/swim.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_REPL_PROTO         0x6b76 /* "kv": never a SWIM protocol version */
#define KV_REPL_KEY_MAX       1024
#define KV_REPL_BATCH_MAX     4096  /* messages in one batch, at most */
#define KV_REPL_LIST_MAX      10000 /* items in one LIST_ACK, and LIST.limit, at most */
#define KV_REPL_VALUE_MAX     (64u << 20)
#define KV_REPL_RANGES_MAX    (1u << 18) /* (lo, hi) pairs in one TREE or PULL */
#define KV_REPL_U64S_MAX      (1u << 21) /* nodes, sums or have digests in one message */
#define KV_REPL_LEVEL_MAX     20         /* TREE.level (KV_MERKLE_MAX_DEPTH) */
#define KV_REPL_ALL_LEVEL_MAX 12         /* TREE with empty nodes: level at most this */

/* Request ids: the adapter routes an ACK to whoever sent the request by the top bits of
 * req_id: 0 — the coordinator; KV_REPL_REQ_HINT — hint delivery; KV_REPL_REQ_LIST — key
 * listing. Each owner makes ids unique within its own space. */
#define KV_REPL_REQ_HINT (1ull << 63)
#define KV_REPL_REQ_LIST (1ull << 62)
#define KV_REPL_REQ_SYNC (3ull << 62) /* anti-entropy and streaming (TREE, PULL) */
#define KV_REPL_REQ_MASK (3ull << 62)

typedef enum kv_repl_type {
    KV_REPL_WRITE = 1,
    KV_REPL_WRITE_ACK = 2,
    KV_REPL_READ = 3,
    KV_REPL_READ_ACK = 4,
    KV_REPL_LIST = 5,
    KV_REPL_LIST_ACK = 6,
    KV_REPL_TREE = 7,
    KV_REPL_TREE_ACK = 8,
    KV_REPL_PULL = 9,
    KV_REPL_PULL_DATA = 10,
    KV_REPL_PURGE = 11,
    KV_REPL_STREAM = 12,
    KV_REPL_STREAM_DONE = 13,
} kv_repl_type;

/* Answer status. */
typedef enum kv_repl_status {
    KV_REPL_OK = 0,       /* WRITE: stored (ver = the version written); READ: found */
    KV_REPL_STALE = 1,    /* WRITE: refused, the replica holds ver (>= the one sent) */
    KV_REPL_NOTFOUND = 2, /* READ: the replica holds nothing for the key */
    KV_REPL_ERROR = 3,    /* the replica failed (disk error, full, refused version, ...) */
    KV_REPL_FULL = 4,     /* WRITE with hint_for: the fallback's hint store is full */
    KV_REPL_NOSPACE = 5,  /* WRITE: the replica's data device is full */
} kv_repl_status;

#define KV_REPL_F_TOMBSTONE 0x1u /* the record is a delete */
#define KV_REPL_F_EXPIRED   0x2u /* READ_ACK / LIST_ACK: a value whose TTL has passed */

/*
 * One decoded or to-be-encoded message. Pointers (key, value, prefix, cursor_key, items)
 * point into the decoded input or the caller's memory; nothing is owned.
 */
typedef struct kv_repl_item {
    const uint8_t *key;
    size_t klen;
    uint64_t hash;
    kv_version ver;
    uint32_t flags;
} kv_repl_item;

typedef struct kv_repl_msg {
    kv_repl_type type;
    uint64_t req_id;
    kv_repl_status status; /* *_ACK */
    const uint8_t *key;    /* WRITE, READ, PURGE; LIST: prefix (may be empty) */
    size_t klen;
    kv_version ver;     /* WRITE, WRITE_ACK, READ_ACK, PURGE */
    uint32_t flags;     /* WRITE, READ_ACK */
    uint64_t expiry_ms; /* WRITE, READ_ACK: 0 = never */
    const uint8_t *value;
    size_t vlen;
    bool has_hint_for; /* WRITE: store as a hint for hint_for (sloppy quorum fallback) */
    swim_member_id hint_for;
    /* LIST */
    uint32_t limit;
    bool has_cursor;
    uint64_t cursor_hash;
    const uint8_t *cursor_key;
    size_t cursor_klen;
    /* LIST_ACK */
    bool truncated; /* the replica stopped at limit: keys beyond the last may exist */
    uint32_t n_items;
    const kv_repl_item *items; /* decode: points into kv_repl_batch.items */
    /* TREE, TREE_ACK, PULL, PULL_DATA */
    uint32_t level;        /* TREE: 0..KV_REPL_LEVEL_MAX */
    uint32_t seq;          /* PULL, PULL_DATA */
    bool last;             /* PULL_DATA */
    uint32_t raw_len;      /* PULL_DATA: the chunk's raw length (value/vlen = payload) */
    const uint8_t *ranges; /* TREE, PULL: n_ranges packed (lo, hi) pairs, 16 bytes each */
    size_t n_ranges;
    const uint8_t *u64s; /* TREE: nodes; TREE_ACK: sums; PULL: have; 8 bytes each */
    size_t n_u64s;
} kv_repl_msg;

/* The i-th packed big-endian u64 of p (ranges: lo of pair k is 2k, hi 2k+1). */
static inline uint64_t kv_repl_u64_at(const uint8_t *p, size_t i)
{
    p += i * 8;
    return (uint64_t)p[0] << 56 | (uint64_t)p[1] << 48 | (uint64_t)p[2] << 40 |
           (uint64_t)p[3] << 32 | (uint64_t)p[4] << 24 | (uint64_t)p[5] << 16 |
           (uint64_t)p[6] << 8 | (uint64_t)p[7];
}

/* Store v big-endian at p + 8 * i (building the packed strings to send). */
static inline void kv_repl_u64_put(uint8_t *p, size_t i, uint64_t v)
{
    p += i * 8;
    for (int k = 7; k >= 0; k--) {
        p[k] = (uint8_t)v;
        v >>= 8;
    }
}

/* ---- encoding: a batch is built message by message into one buffer ---- */

typedef struct kv_repl_batch_w {
    kv_buf *out;
    size_t count_off; /* where the message-array header goes */
    uint32_t count;
    int err;
} kv_repl_batch_w;

/* Start a batch in out (reset first) from this node. */
void kv_repl_batch_begin(kv_repl_batch_w *b, kv_buf *out, const swim_member_id *from_id,
                         const char *from_addr);
/* Append one message. KV_OK, KV_EINVAL (a field over its bound), KV_ETOOBIG (batch full),
 * KV_ENOMEM. On failure the batch is unchanged. */
int kv_repl_batch_add(kv_repl_batch_w *b, const kv_repl_msg *m);
/* Finish: out holds the whole encoded batch. KV_OK or the first error. */
int kv_repl_batch_end(kv_repl_batch_w *b);

/* ---- decoding ---- */

/* True when data looks like a replica batch (its first item is KV_REPL_PROTO), false
 * for anything else (a SWIM message, garbage). Cheap; does not validate the rest. */
bool kv_repl_is_batch(const uint8_t *data, size_t len);

typedef struct kv_repl_batch {
    swim_member_id from_id;
    char from_addr[SWIM_ADDR_MAX + 1];
    uint32_t n_msgs;
    kv_repl_msg *msgs;   /* malloc'ed, n_msgs entries */
    kv_repl_item *items; /* malloc'ed, all LIST_ACK items of the batch */
} kv_repl_batch;

/* Why a batch was refused: the reason label of kv_peer_messages_dropped_total. */
#define KV_REPL_MALFORMED     "repl_malformed"
#define KV_REPL_OUT_OF_BOUNDS "repl_out_of_bounds"

/*
 * Decode data[0..len) into *out. Pointers in the messages point into data, which must
 * outlive their use. KV_OK; KV_ECORRUPT with *reason a KV_REPL_* label (out holds nothing
 * to free); KV_ENOMEM.
 */
int kv_repl_batch_decode(const uint8_t *data, size_t len, kv_repl_batch *out, const char **reason);
void kv_repl_batch_free(kv_repl_batch *b);

/* Encoded size of m at most (for deciding when to start a new batch). */
size_t kv_repl_msg_wire_bound(const kv_repl_msg *m);
/* Bytes of a batch besides its messages, at most: a batch of messages m1..mk takes at most
 * KV_REPL_BATCH_WIRE_FIXED + the sum of kv_repl_msg_wire_bound(mi). */
#define KV_REPL_BATCH_WIRE_FIXED (1 + 3 + 1 + SWIM_ID_LEN + 2 + SWIM_ADDR_MAX + 5)

#endif
