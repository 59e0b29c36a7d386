/*
 * proto.h — the wire side of kvbench's three targets, sans I/O: encode one operation
 * into request bytes, feed received bytes to a parser that reports each complete reply,
 * and judge a reply (ok, a read miss, or an error of some kind).
 *
 *   kvstore  HTTP/1.1: GET|PUT|DELETE /v1/kv/KEY
 *   etcd     v3 JSON gateway: POST /v3/kv/range|put|deleterange, base64 key and value
 *   redis    RESP: GET, SET (optionally followed by WAIT n ms), DEL
 *
 * Not thread-safe; a parser belongs to one connection. Responses are parsed with
 * http-parser (HTTP) and a small incremental RESP reader; bodies are not kept.
 */
#ifndef KVB_PROTO_H
#define KVB_PROTO_H

#include "common/buf.h"
#include "keygen.h"

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum kvb_target { KVB_TARGET_KVSTORE = 0, KVB_TARGET_ETCD, KVB_TARGET_REDIS } kvb_target;

const char *kvb_target_name(kvb_target t);

/* Error kinds counted by kvbench (HTTP statuses are counted separately, by code). */
typedef enum kvb_errkind {
    KVB_E_CONNECT = 0, /* could not connect (refused, unreachable) */
    KVB_E_TIMEOUT,     /* no reply within --timeout; the connection is then reopened */
    KVB_E_CLOSED,      /* the connection ended with the request still waiting */
    KVB_E_PROTOCOL,    /* the reply could not be parsed; the connection is reopened */
    KVB_E_HTTP,        /* a non-success HTTP status (counted by code as http_NNN) */
    KVB_E_REDIS,       /* a RESP error reply (-ERR ...) */
    KVB_E_WAIT,        /* Redis WAIT answered fewer replicas than asked for */
    KVB_E_KINDS,
} kvb_errkind;

const char *kvb_errkind_name(kvb_errkind k); /* "connect", "timeout", ... */

/* How requests are written, fixed for a run. */
typedef struct kvb_proto_cfg {
    kvb_target target;
    unsigned redis_wait;         /* > 0: every SET is followed by WAIT redis_wait ... */
    unsigned redis_wait_timeout; /* ... with this timeout in ms */
} kvb_proto_cfg;

/* Number of replies one operation of this kind gets (SET + WAIT gets 2). */
unsigned kvb_proto_replies(const kvb_proto_cfg *pc, kvb_op_kind op);

/*
 * Append the request(s) for op on key (klen bytes; only [0-9a-z] so nothing is escaped)
 * with value val/vlen (updates only) to out. host is the Host header value (HTTP only).
 * KV_OK or KV_ENOMEM.
 */
int kvb_proto_encode(const kvb_proto_cfg *pc, const char *host, kvb_op_kind op, const char *key,
                     size_t klen, const char *val, size_t vlen, kv_buf *out);

/* One parsed reply, before judging. */
typedef struct kvb_reply {
    int http_status;   /* HTTP targets */
    bool http_close;   /* the server will close the connection after this reply */
    bool etcd_has_kvs; /* etcd range: the body holds a "kvs" member (the key exists) */
    char resp_type;    /* Redis: '+', '-', ':', '$', '*' */
    bool resp_nil;     /* Redis: $-1 / *-1 */
    int64_t resp_int;  /* Redis ':' value */
} kvb_reply;

typedef void (*kvb_reply_cb)(void *ctx, const kvb_reply *r);

typedef struct kvb_parser {
    kvb_target target;
    /* HTTP */
    http_parser hp;
    kvb_reply cur;
    char peek[256]; /* the first bytes of an etcd body, to look for "kvs" */
    size_t peek_len;
    /* RESP */
    kv_buf rbuf;
    size_t rneed; /* don't try to parse before rbuf holds this many bytes */
    /* during kvb_parser_feed */
    kvb_reply_cb cb;
    void *ctx;
} kvb_parser;

void kvb_parser_init(kvb_parser *p, kvb_target t);
/* Forget any partial reply (after a reconnect). */
void kvb_parser_reset(kvb_parser *p);
void kvb_parser_fini(kvb_parser *p);

/*
 * Feed received bytes (len 0 means the peer closed: completes an HTTP response that is
 * delimited by the end of the connection). cb runs once per complete reply, in order.
 * 0, or -1 when the bytes are not the protocol (the connection must be closed).
 */
int kvb_parser_feed(kvb_parser *p, const char *data, size_t len, kvb_reply_cb cb, void *ctx);

/* How an operation ended. */
typedef enum kvb_outcome { KVB_OK = 0, KVB_MISS = 1, KVB_FAIL = 2 } kvb_outcome;

/*
 * Judge reply number idx (0-based) of an op. On KVB_FAIL *kind says which error (and for
 * KVB_E_HTTP the status is r->http_status).
 */
kvb_outcome kvb_proto_judge(const kvb_proto_cfg *pc, kvb_op_kind op, unsigned idx,
                            const kvb_reply *r, kvb_errkind *kind);

/* Base64 (standard alphabet, padded) of p[0..n) appended to b. KV_OK or KV_ENOMEM. */
int kvb_base64_append(kv_buf *b, const void *p, size_t n);

#endif
