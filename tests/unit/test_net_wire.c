/*
 * test_net_wire.c — the CBOR codec of peer messages (src/net/wire.h, src/net/cbor.h):
 * every message type round-trips field for field; malformed, truncated, oversized,
 * wrong-version and unknown-type input is refused with the right reason and never
 * crashes; random corruption of valid messages is always either refused or decoded
 * within bounds.
 */
#include "kvstore/error.h"
#include "net/cbor.h"
#include "net/wire.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static swim_node mknode(uint8_t idbyte, const char *name, const char *addr, uint64_t inc,
                        swim_state st, swim_ring_status ring)
{
    swim_node n;
    memset(&n, 0, sizeof(n));
    memset(n.id.b, idbyte, SWIM_ID_LEN);
    snprintf(n.name, sizeof(n.name), "%s", name);
    snprintf(n.addr, sizeof(n.addr), "%s", addr);
    n.incarnation = inc;
    n.state = st;
    n.ring = ring;
    return n;
}

static void assert_node_eq(const swim_node *a, const swim_node *b)
{
    cr_assert_eq(memcmp(a->id.b, b->id.b, SWIM_ID_LEN), 0);
    cr_assert_str_eq(a->name, b->name);
    cr_assert_str_eq(a->addr, b->addr);
    cr_assert_eq(a->incarnation, b->incarnation);
    cr_assert_eq(a->state, b->state);
    cr_assert_eq(a->ring, b->ring);
    cr_assert_eq(a->data_port, b->data_port);
    cr_assert_eq(a->http_port, b->http_port);
}

static kv_wire_msg *decode_ok(const kv_buf *b)
{
    kv_wire_msg *d = malloc(sizeof(*d));
    cr_assert_not_null(d);
    const char *why = NULL;
    int rc = kv_wire_decode((const uint8_t *)b->data, b->len, d, &why);
    cr_assert_eq(rc, KV_OK, "decode failed: %s", why ? why : "?");
    return d;
}

static const char *decode_fail(const void *p, size_t n)
{
    kv_wire_msg *d = malloc(sizeof(*d));
    cr_assert_not_null(d);
    const char *why = NULL;
    int rc = kv_wire_decode(p, n, d, &why);
    free(d);
    cr_assert_eq(rc, KV_ECORRUPT, "decode of bad input returned %d", rc);
    cr_assert_not_null(why);
    return why;
}

Test(wire, every_type_round_trips)
{
    swim_update ups[3];
    ups[0].node = mknode(1, "node-a", "10.0.0.1:7946", 7, SWIM_ALIVE, SWIM_RING_NORMAL);
    ups[0].node.data_port = 40001;
    ups[0].node.http_port = 8080;
    memset(ups[0].from.b, 1, SWIM_ID_LEN);
    ups[1].node =
        mknode(2, "ünïcode name", "[::1]:7000", UINT64_MAX, SWIM_SUSPECT, SWIM_RING_LEAVING);
    memset(ups[1].from.b, 9, SWIM_ID_LEN);
    ups[2].node = mknode(3, "", "h:1", 0, SWIM_LEFT, SWIM_RING_REMOVED);
    memset(ups[2].from.b, 3, SWIM_ID_LEN);
    swim_node members[2] = {
        mknode(4, "m4", "127.0.0.1:1", 1, SWIM_DEAD, SWIM_RING_JOINING),
        mknode(5, "m5", "127.0.0.1:2", 300, SWIM_ALIVE, SWIM_RING_NORMAL),
    };
    members[1].data_port = 65535;
    for (int t = SWIM_MSG_PING; t <= SWIM_MSG_PUSH_PULL_REPLY; t++) {
        swim_msg m;
        memset(&m, 0, sizeof(m));
        m.type = (swim_msg_type)t;
        memset(m.from.b, 0xab, SWIM_ID_LEN);
        m.seq = 0xfffffff0u + (uint32_t)t;
        memset(m.target.b, 0xcd, SWIM_ID_LEN);
        snprintf(m.target_addr, sizeof(m.target_addr), "target.example:7946");
        m.flags = SWIM_PP_JOIN;
        m.digest.count = 4096;
        m.digest.hash = 0x0123456789abcdefull;
        m.n_updates = 3;
        m.updates = ups;
        m.n_members = t >= SWIM_MSG_PUSH_PULL ? 2 : 0;
        m.members = t >= SWIM_MSG_PUSH_PULL ? members : NULL;

        kv_buf b = KV_BUF_INIT;
        cr_assert_eq(kv_wire_encode(&b, "192.168.1.20:7946", &m), KV_OK);
        kv_wire_msg *d = decode_ok(&b);
        cr_assert_eq(d->msg.type, m.type);
        cr_assert_str_eq(d->from_addr, "192.168.1.20:7946");
        cr_assert_eq(memcmp(d->msg.from.b, m.from.b, SWIM_ID_LEN), 0);
        cr_assert_eq(d->msg.seq, m.seq);
        cr_assert_eq(memcmp(d->msg.target.b, m.target.b, SWIM_ID_LEN), 0);
        cr_assert_str_eq(d->msg.target_addr, m.target_addr);
        cr_assert_eq(d->msg.flags, m.flags);
        cr_assert_eq(d->msg.digest.count, m.digest.count);
        cr_assert_eq(d->msg.digest.hash, m.digest.hash);
        cr_assert_eq(d->msg.n_updates, 3);
        for (int i = 0; i < 3; i++) {
            assert_node_eq(&d->msg.updates[i].node, &ups[i].node);
            cr_assert_eq(memcmp(d->msg.updates[i].from.b, ups[i].from.b, SWIM_ID_LEN), 0);
        }
        cr_assert_eq(d->msg.n_members, m.n_members);
        for (uint32_t i = 0; i < m.n_members; i++)
            assert_node_eq(&d->msg.members[i], &members[i]);
        kv_wire_msg_free(d);
        free(d);
        kv_buf_free(&b);
    }
}

Test(wire, a_full_state_of_4096_members_round_trips_and_4097_is_refused)
{
    swim_node *ms = calloc(SWIM_MAX_MEMBERS + 1, sizeof(*ms));
    cr_assert_not_null(ms);
    for (int i = 0; i <= SWIM_MAX_MEMBERS; i++) {
        char name[32], addr[32];
        snprintf(name, sizeof(name), "node-%d", i);
        snprintf(addr, sizeof(addr), "10.0.%d.%d:7946", i / 256, i % 256);
        ms[i] = mknode((uint8_t)i, name, addr, (uint64_t)i, SWIM_ALIVE, SWIM_RING_NORMAL);
    }
    swim_msg m;
    memset(&m, 0, sizeof(m));
    m.type = SWIM_MSG_PUSH_PULL_REPLY;
    m.n_members = SWIM_MAX_MEMBERS;
    m.members = ms;
    kv_buf b = KV_BUF_INIT;
    cr_assert_eq(kv_wire_encode(&b, "a:1", &m), KV_OK);
    kv_wire_msg *d = decode_ok(&b);
    cr_assert_eq(d->msg.n_members, SWIM_MAX_MEMBERS);
    assert_node_eq(&d->msg.members[4095], &ms[4095]);
    kv_wire_msg_free(d);
    free(d);

    /* The encoder refuses to go over the bound; a hand-made message that does is refused
     * by the decoder. */
    m.n_members = SWIM_MAX_MEMBERS + 1;
    kv_buf_reset(&b);
    cr_assert_eq(kv_wire_encode(&b, "a:1", &m), KV_EINVAL);
    cr_assert_eq(b.len, 0);
    m.n_members = SWIM_MAX_MEMBERS;
    cr_assert_eq(kv_wire_encode(&b, "a:1", &m), KV_OK);
    /* Patch the member array header 0x99 0x10 0x00 (4096) to 4097 and add one more node. */
    char *hdr = NULL;
    for (size_t i = 0; i + 2 < b.len; i++)
        if ((uint8_t)b.data[i] == 0x99 && (uint8_t)b.data[i + 1] == 0x10 && b.data[i + 2] == 0) {
            hdr = b.data + i;
            break;
        }
    cr_assert_not_null(hdr);
    hdr[2] = 1;
    kv_buf extra = KV_BUF_INIT;
    swim_msg one;
    memset(&one, 0, sizeof(one));
    one.type = SWIM_MSG_PUSH_PULL;
    one.n_members = 1;
    one.members = &ms[SWIM_MAX_MEMBERS];
    cr_assert_eq(kv_wire_encode(&extra, "a:1", &one), KV_OK);
    /* the node is the tail of `extra` after its member header 0x81 */
    size_t node_len = 0;
    for (size_t i = extra.len; i-- > 0;)
        if ((uint8_t)extra.data[i] == 0x81) {
            node_len = extra.len - i - 1;
            break;
        }
    cr_assert_gt(node_len, 0);
    kv_buf_append(&b, extra.data + extra.len - node_len, node_len);
    cr_assert_str_eq(decode_fail(b.data, b.len), KV_WIRE_OUT_OF_BOUNDS);
    kv_buf_free(&extra);
    kv_buf_free(&b);
    free(ms);
}

static void encode_ping(kv_buf *b)
{
    swim_msg m;
    memset(&m, 0, sizeof(m));
    m.type = SWIM_MSG_PING;
    m.seq = 42;
    cr_assert_eq(kv_wire_encode(b, "127.0.0.1:7946", &m), KV_OK);
}

Test(wire, refuses_garbage_with_a_reason)
{
    static const uint8_t empty[1] = {0};
    cr_assert_str_eq(decode_fail(empty, 0), KV_WIRE_MALFORMED);
    cr_assert_str_eq(decode_fail("hello, world", 12), KV_WIRE_MALFORMED);
    static const uint8_t not_array[] = {0xa1, 0x01, 0x02};
    cr_assert_str_eq(decode_fail(not_array, sizeof(not_array)), KV_WIRE_MALFORMED);
    /* an array that claims 2^32 elements in 5 bytes */
    static const uint8_t huge[] = {0x9a, 0xff, 0xff, 0xff, 0xff, 0x01};
    cr_assert_str_eq(decode_fail(huge, sizeof(huge)), KV_WIRE_MALFORMED);
    /* indefinite-length array, tags, floats */
    static const uint8_t indef[] = {0x9f, 0x01, 0x01, 0xff};
    cr_assert_str_eq(decode_fail(indef, sizeof(indef)), KV_WIRE_MALFORMED);
    static const uint8_t tagged[] = {0x82, 0xc1, 0x01, 0x01};
    cr_assert_str_eq(decode_fail(tagged, sizeof(tagged)), KV_WIRE_MALFORMED);
    /* (padded: an array must not claim more elements than there are bytes left) */
    static const uint8_t version2[] = {0x8b, 0x02, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    cr_assert_str_eq(decode_fail(version2, sizeof(version2)), KV_WIRE_BAD_VERSION);
    static const uint8_t type99[] = {0x8b, 0x01, 0x18, 0x63, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    cr_assert_str_eq(decode_fail(type99, sizeof(type99)), KV_WIRE_UNKNOWN_TYPE);
    static const uint8_t type0[] = {0x8b, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    cr_assert_str_eq(decode_fail(type0, sizeof(type0)), KV_WIRE_UNKNOWN_TYPE);

    /* every strict prefix of a valid message is refused */
    kv_buf b = KV_BUF_INIT;
    encode_ping(&b);
    for (size_t n = 0; n < b.len; n++)
        decode_fail(b.data, n);
    /* and so is a valid message with a byte after it */
    kv_buf_append(&b, "\x00", 1);
    cr_assert_str_eq(decode_fail(b.data, b.len), KV_WIRE_MALFORMED);
    kv_buf_free(&b);
}

Test(wire, refuses_fields_out_of_bounds)
{
    swim_update up;
    up.node = mknode(1, "n", "a:1", 1, SWIM_ALIVE, SWIM_RING_NORMAL);
    memset(up.from.b, 1, SWIM_ID_LEN);
    swim_msg m;
    memset(&m, 0, sizeof(m));
    m.type = SWIM_MSG_GOSSIP;
    m.n_updates = 1;
    m.updates = &up;
    kv_buf b = KV_BUF_INIT;
    cr_assert_eq(kv_wire_encode(&b, "a:1", &m), KV_OK);
    /* the update's state is the byte after the incarnation 0x01; find "a:1" (0x63 'a' ':'
     * '1') of the node, then incarnation 0x01, state 0x00, ring 0x01 */
    char *st = memmem(b.data + 40, b.len - 40,
                      "\x63"
                      "a:1\x01\x00\x01",
                      7);
    cr_assert_not_null(st);
    st[5] = 4; /* state 4 does not exist */
    cr_assert_str_eq(decode_fail(b.data, b.len), KV_WIRE_OUT_OF_BOUNDS);
    st[5] = 0;
    st[6] = 9; /* ring 9 neither */
    cr_assert_str_eq(decode_fail(b.data, b.len), KV_WIRE_OUT_OF_BOUNDS);
    st[6] = 1;
    st[2] = '\n'; /* a control byte in an address */
    cr_assert_str_eq(decode_fail(b.data, b.len), KV_WIRE_OUT_OF_BOUNDS);
    kv_buf_free(&b);

    /* a sender address over SWIM_ADDR_MAX cannot be encoded */
    char longaddr[SWIM_ADDR_MAX + 8];
    memset(longaddr, 'x', sizeof(longaddr) - 1);
    longaddr[sizeof(longaddr) - 1] = '\0';
    cr_assert_eq(kv_wire_encode(&b, longaddr, &m), KV_EINVAL);
    kv_buf_free(&b);
}

Test(wire, newer_peers_may_append_fields)
{
    kv_buf b = KV_BUF_INIT;
    encode_ping(&b);
    /* 11 fields → 12: bump the header and append one more item (a map with a string). */
    cr_assert_eq((uint8_t)b.data[0], 0x8b);
    b.data[0] = (char)0x8c;
    kv_buf_append(&b, "\xa1\x61k\x82\x01\x02", 6);
    kv_wire_msg *d = decode_ok(&b);
    cr_assert_eq(d->msg.type, SWIM_MSG_PING);
    cr_assert_eq(d->msg.seq, 42);
    kv_wire_msg_free(d);
    free(d);
    kv_buf_free(&b);
}

/* A GOSSIP carrying one update whose node advertises data port 0x1234 (encoded 19 12 34)
 * and HTTP port 0x2345 (19 23 45, right after it). */
static void encode_ping_with_port(kv_buf *b, size_t *hdr_at, size_t *port_at)
{
    swim_update up;
    memset(&up, 0, sizeof(up));
    up.node = mknode(1, "n", "127.0.0.1:7000", 5, SWIM_ALIVE, SWIM_RING_NORMAL);
    up.node.data_port = 0x1234;
    up.node.http_port = 0x2345;
    swim_msg m;
    memset(&m, 0, sizeof(m));
    m.type = SWIM_MSG_GOSSIP;
    m.n_updates = 1;
    m.updates = &up;
    cr_assert_eq(kv_wire_encode(b, "127.0.0.1:7946", &m), KV_OK);
    const uint8_t *p = (const uint8_t *)b->data;
    *hdr_at = *port_at = 0;
    for (size_t i = 0; i + 2 < b->len; i++) {
        if (p[i] == 0x88 && !*hdr_at)
            *hdr_at = i; /* the node: an array of 8 fields */
        if (p[i] == 0x19 && p[i + 1] == 0x12 && p[i + 2] == 0x34)
            *port_at = i;
    }
    cr_assert(*hdr_at && *port_at > *hdr_at, "node fields not found in the encoding");
}

Test(wire, a_node_from_a_peer_without_a_data_port_decodes_with_port_0)
{
    kv_buf b = KV_BUF_INIT;
    size_t hdr, port;
    encode_ping_with_port(&b, &hdr, &port);
    kv_wire_msg *d = decode_ok(&b);
    cr_assert_eq(d->msg.updates[0].node.data_port, 0x1234);
    cr_assert_eq(d->msg.updates[0].node.http_port, 0x2345);
    kv_wire_msg_free(d);
    free(d);
    /* The same node as an older peer sends it: 6 fields, no ports. */
    cr_assert_eq((uint8_t)b.data[port + 3], 0x19);
    b.data[hdr] = (char)0x86;
    memmove(b.data + port, b.data + port + 6, b.len - port - 6);
    b.len -= 6;
    d = decode_ok(&b);
    cr_assert_eq(d->msg.updates[0].node.data_port, 0);
    cr_assert_eq(d->msg.updates[0].node.http_port, 0);
    cr_assert_eq(d->msg.updates[0].node.incarnation, 5);
    kv_wire_msg_free(d);
    free(d);
    kv_buf_free(&b);
}

Test(wire, a_data_port_over_65535_is_refused)
{
    kv_buf b = KV_BUF_INIT;
    size_t hdr, port;
    encode_ping_with_port(&b, &hdr, &port);
    /* 0x1234 → 0x0001_0000 (five bytes: 1a 00 01 00 00) */
    uint8_t big[5] = {0x1a, 0x00, 0x01, 0x00, 0x00};
    kv_buf out = KV_BUF_INIT;
    kv_buf_append(&out, b.data, port);
    kv_buf_append(&out, big, sizeof(big));
    kv_buf_append(&out, b.data + port + 3, b.len - port - 3);
    cr_assert_str_eq(decode_fail(out.data, out.len), KV_WIRE_OUT_OF_BOUNDS);
    kv_buf_free(&out);
    kv_buf_free(&b);
}

Test(wire, random_corruption_never_crashes)
{
    swim_node members[8];
    for (int i = 0; i < 8; i++)
        members[i] = mknode((uint8_t)i, "member", "127.0.0.1:7000", (uint64_t)i * 1000,
                            (swim_state)(i % 4), (swim_ring_status)(i % 4));
    swim_update ups[4];
    for (int i = 0; i < 4; i++) {
        ups[i].node = members[i];
        memset(ups[i].from.b, i, SWIM_ID_LEN);
    }
    swim_msg m;
    memset(&m, 0, sizeof(m));
    m.type = SWIM_MSG_PUSH_PULL;
    m.n_updates = 4;
    m.updates = ups;
    m.n_members = 8;
    m.members = members;
    kv_buf b = KV_BUF_INIT;
    cr_assert_eq(kv_wire_encode(&b, "127.0.0.1:7946", &m), KV_OK);

    kv_wire_msg *d = malloc(sizeof(*d));
    cr_assert_not_null(d);
    uint8_t *copy = malloc(b.len);
    uint32_t rng = 12345;
    int refused = 0, accepted = 0;
    for (int round = 0; round < 20000; round++) {
        memcpy(copy, b.data, b.len);
        int flips = 1 + round % 4;
        for (int f = 0; f < flips; f++) {
            rng = rng * 1103515245u + 12345u;
            size_t at = (rng >> 8) % b.len;
            rng = rng * 1103515245u + 12345u;
            copy[at] = (uint8_t)(rng >> 16);
        }
        rng = rng * 1103515245u + 12345u;
        size_t len = round % 3 == 0 ? (rng >> 8) % (b.len + 1) : b.len;
        const char *why = NULL;
        int rc = kv_wire_decode(copy, len, d, &why);
        if (rc == KV_OK) {
            accepted++;
            if (d->msg.n_updates > SWIM_MAX_UPDATES || d->msg.n_members > SWIM_MAX_MEMBERS ||
                strlen(d->from_addr) > SWIM_ADDR_MAX || (unsigned)d->msg.type < 1 ||
                (unsigned)d->msg.type > 7)
                cr_assert_fail("decoded out of bounds in round %d", round);
            kv_wire_msg_free(d);
        } else {
            refused++;
            if (rc != KV_ECORRUPT || why == NULL)
                cr_assert_fail("round %d: rc %d", round, rc);
        }
    }
    cr_assert_gt(refused, 0);
    cr_log_info("random corruption: %d refused, %d still valid", refused, accepted);
    free(copy);
    free(d);
    kv_buf_free(&b);
}

/* The core budgets messages with swim.h's wire bounds: the encoding must stay within them,
 * at the extremes of every field. */
Test(wire, encodings_stay_within_the_cores_wire_bounds)
{
    char name[SWIM_NAME_MAX + 1], addr[SWIM_ADDR_MAX + 1];
    memset(name, 'n', SWIM_NAME_MAX);
    name[SWIM_NAME_MAX] = '\0';
    memset(addr, 'a', SWIM_ADDR_MAX - 6);
    snprintf(addr + SWIM_ADDR_MAX - 6, 7, ":65535");
    static swim_update ups[SWIM_MAX_UPDATES];
    static swim_node members[100];
    for (int i = 0; i < SWIM_MAX_UPDATES; i++) {
        ups[i].node = mknode((uint8_t)i, i % 2 ? name : "", i % 3 ? addr : "h:1",
                             i % 2 ? UINT64_MAX : 0, SWIM_LEFT, SWIM_RING_REMOVED);
        memset(ups[i].from.b, 0xff, SWIM_ID_LEN);
    }
    for (int i = 0; i < 100; i++)
        members[i] =
            mknode((uint8_t)i, name, addr, UINT64_MAX - (uint64_t)i, SWIM_DEAD, SWIM_RING_LEAVING);
    for (int variant = 0; variant < 4; variant++) {
        swim_msg m;
        memset(&m, 0, sizeof(m));
        m.type = variant == 3 ? SWIM_MSG_PUSH_PULL_REPLY : SWIM_MSG_PING_REQ;
        memset(m.from.b, 0xff, SWIM_ID_LEN);
        memset(m.target.b, 0xff, SWIM_ID_LEN);
        m.seq = UINT32_MAX;
        m.flags = UINT32_MAX;
        m.digest.count = UINT32_MAX;
        m.digest.hash = UINT64_MAX;
        snprintf(m.target_addr, sizeof(m.target_addr), "%s", variant == 0 ? "" : addr);
        m.n_updates = variant == 0 ? 0 : variant == 1 ? 1 : SWIM_MAX_UPDATES;
        m.updates = ups;
        m.n_members = variant == 3 ? 100 : 0;
        m.members = members;
        kv_buf b = KV_BUF_INIT;
        cr_assert_eq(kv_wire_encode(&b, addr, &m), KV_OK);
        size_t bound = swim_msg_wire_bound(&m);
        cr_assert_leq(b.len, bound, "variant %d: encoded %zu bytes, the core budgets %zu", variant,
                      b.len, bound);
        kv_buf_free(&b);
    }
}
