/*
 * wire.h — the CBOR encoding of SWIM peer messages (src/swim/swim.h) on the wire.
 * Pure functions; any thread (the node calls them on its loop thread).
 *
 * Format (SWIM_PROTOCOL_VERSION 1). Every message is one CBOR array, fields by position,
 * integers in their shortest form, ids as 16-byte byte strings, names and addresses as
 * text strings:
 *
 *   message = [version, type, from, from_addr, seq, target, target_addr, flags,
 *              digest, [update...], [node...]]
 *   digest  = [count, hash]
 *   update  = [node, from]
 *   node    = [id, name, addr, incarnation, state, ring]
 *
 * Every field is always present (a PING has an empty member list, an ACK a zero target);
 * the fixed layout keeps the decoder simple and the size within swim.h's wire bounds.
 * A decoder accepts arrays longer than these (and skips the extra trailing items), so a
 * later revision can append fields without a version bump; a different version number is
 * a message this node cannot read and is dropped.
 *
 * Decoding is defensive: every item's type, every count and length is checked against
 * swim.h's bounds and against the bytes that are left; strings must be free of NUL and
 * control bytes; enums must be in range; nothing may follow the message. Anything else
 * is refused with a reason that names a metric label.
 */
#ifndef KV_NET_WIRE_H
#define KV_NET_WIRE_H

#include "common/buf.h"
#include "swim/swim.h"

#include <stddef.h>
#include <stdint.h>

/* A decoded message: msg's pointers point into this struct (updates) or to memory it owns
 * (members); release with kv_wire_msg_free. */
typedef struct kv_wire_msg {
    swim_msg msg;
    char from_addr[SWIM_ADDR_MAX + 1];
    swim_update updates[SWIM_MAX_UPDATES];
    swim_node *members; /* malloc'ed when the message carries members */
} kv_wire_msg;

/* Why a message was refused: the label of kv_peer_messages_dropped_total{reason}. */
#define KV_WIRE_MALFORMED     "malformed"     /* not CBOR, wrong item types, trailing bytes */
#define KV_WIRE_BAD_VERSION   "bad_version"   /* protocol version we do not speak */
#define KV_WIRE_UNKNOWN_TYPE  "unknown_type"  /* message type we do not know */
#define KV_WIRE_OUT_OF_BOUNDS "out_of_bounds" /* a count, length or enum over its bound */

/*
 * Append the encoding of m, sent by the node whose advertise address is from_addr, to out.
 * KV_OK, KV_EINVAL (a field out of bounds: a bug in the caller), KV_ENOMEM.
 */
int kv_wire_encode(kv_buf *out, const char *from_addr, const swim_msg *m);

/*
 * Decode data[0..len) into *out (which the caller provides; it is large — keep it off
 * small stacks). KV_OK, or KV_ECORRUPT with *reason set to one of the KV_WIRE_* labels
 * (static strings); on failure out holds nothing to free. KV_ENOMEM if the member list
 * cannot be allocated.
 */
int kv_wire_decode(const uint8_t *data, size_t len, kv_wire_msg *out, const char **reason);

/* Release what kv_wire_decode allocated. Safe on a zeroed struct. */
void kv_wire_msg_free(kv_wire_msg *m);

#endif
