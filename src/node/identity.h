/*
 * identity.h — a node's identity, kept in its data directory: the node id (created once,
 * random 128 bits) and the incarnation (bumped on every start, so a restarted node comes
 * back with a higher one than any it announced before). kv_node_identity_load runs on the
 * main thread before the loop starts; kv_node_identity_store_incarnation on a worker
 * thread (both fsync).
 *
 * Files (each written as <name>.tmp, fsync, rename, fsync of the directory, so a crash
 * leaves either the old or the new content, never a torn one):
 *   <data_dir>/NODE_ID      32 lower-case hex digits and a newline
 *   <data_dir>/INCARNATION  a decimal number and a newline
 */
#ifndef KV_NODE_IDENTITY_H
#define KV_NODE_IDENTITY_H

#include <stdint.h>

#define KV_NODE_ID_BYTES 16

typedef struct kv_node_identity {
    uint8_t id[KV_NODE_ID_BYTES];
    char hex[2 * KV_NODE_ID_BYTES + 1]; /* id as lower-case hex, NUL-terminated */
    uint64_t incarnation;               /* this start's incarnation, >= 1 */
    uint64_t prev_incarnation;          /* what the file held before this start (0 = none) */
    int created;                        /* 1 if NODE_ID was created by this call */
} kv_node_identity;

/*
 * Load the identity from dir (which must exist), creating NODE_ID if it is missing, and
 * persist incarnation = previous + 1 before returning. A NODE_ID or INCARNATION file
 * that exists but does not hold what it should is an error (KV_ECORRUPT, with a log line
 * naming the file): the node refuses to start rather than silently become someone else.
 * Other failures: KV_EIO (logged). *out is written only on success.
 */
int kv_node_identity_load(const char *dir, kv_node_identity *out);

/*
 * Persist incarnation as <dir>/INCARNATION (temp + fsync + rename + fsync dir). Blocking:
 * call from a worker thread (uv_queue_work), never on the loop. KV_OK or KV_EIO (logged).
 */
int kv_node_identity_store_incarnation(const char *dir, uint64_t incarnation);

/* The 32-bit id the storage engine writes into versions: the first 4 id bytes, big
 * endian; never 0 (0 means "no node"). */
uint32_t kv_node_identity_short(const kv_node_identity *ident);

#endif
