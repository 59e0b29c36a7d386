/*
 * proto.c — request encoders and reply parsers for kvbench's targets (see proto.h).
 * Pure functions plus per-connection parser state; any thread, one parser per thread.
 *
 * Design notes
 * - HTTP replies go through http-parser in HTTP_RESPONSE mode, which also handles
 *   pipelined replies arriving in one read, chunked bodies, and "Connection: close".
 *   Bodies are dropped, except the first bytes of an etcd range reply, which tell a hit
 *   ("kvs" present) from a miss (etcd leaves empty fields out of its JSON).
 * - RESP replies are read from a buffer: a reply is parsed only once all its bytes are
 *   there. When a bulk string's header says how long it is, rneed remembers the total
 *   so a large value arriving in many reads is not re-parsed from the start each time.
 */
#include "proto.h"

#include "kvstore/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *kvb_target_name(kvb_target t)
{
    switch (t) {
    case KVB_TARGET_KVSTORE:
        return "kvstore";
    case KVB_TARGET_ETCD:
        return "etcd";
    case KVB_TARGET_REDIS:
        return "redis";
    }
    return "?";
}

const char *kvb_errkind_name(kvb_errkind k)
{
    static const char *names[KVB_E_KINDS] = {"connect", "timeout", "closed",    "protocol",
                                             "http",    "redis",   "wait_short"};
    return (unsigned)k < KVB_E_KINDS ? names[k] : "?";
}

unsigned kvb_proto_replies(const kvb_proto_cfg *pc, kvb_op_kind op)
{
    if (pc->target == KVB_TARGET_REDIS && op == KVB_OP_UPDATE && pc->redis_wait > 0)
        return 2;
    return 1;
}

/* ---------- encoders ---------- */

int kvb_base64_append(kv_buf *b, const void *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t outlen = (n + 2) / 3 * 4;
    if (kv_buf_reserve(b, outlen) != KV_OK)
        return KV_ENOMEM;
    const unsigned char *s = p;
    char *o = b->data + b->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)s[i + 1] << 8;
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    b->len += outlen;
    b->data[b->len] = '\0';
    return KV_OK;
}

static int resp_bulk(kv_buf *b, const char *s, size_t n)
{
    if (kv_buf_printf(b, "$%zu\r\n", n) != KV_OK || kv_buf_append(b, s, n) != KV_OK ||
        kv_buf_append(b, "\r\n", 2) != KV_OK)
        return KV_ENOMEM;
    return KV_OK;
}

static int encode_redis(const kvb_proto_cfg *pc, kvb_op_kind op, const char *key, size_t klen,
                        const char *val, size_t vlen, kv_buf *out)
{
    int rc = KV_OK;
    switch (op) {
    case KVB_OP_READ:
        rc = kv_buf_appends(out, "*2\r\n$3\r\nGET\r\n");
        break;
    case KVB_OP_UPDATE:
        rc = kv_buf_appends(out, "*3\r\n$3\r\nSET\r\n");
        break;
    case KVB_OP_DELETE:
    default:
        rc = kv_buf_appends(out, "*2\r\n$3\r\nDEL\r\n");
        break;
    }
    if (rc == KV_OK)
        rc = resp_bulk(out, key, klen);
    if (rc == KV_OK && op == KVB_OP_UPDATE)
        rc = resp_bulk(out, val, vlen);
    if (rc == KV_OK && op == KVB_OP_UPDATE && pc->redis_wait > 0) {
        char n[16], t[16];
        int nl = snprintf(n, sizeof n, "%u", pc->redis_wait);
        int tl = snprintf(t, sizeof t, "%u", pc->redis_wait_timeout);
        rc = kv_buf_appends(out, "*3\r\n$4\r\nWAIT\r\n");
        if (rc == KV_OK)
            rc = resp_bulk(out, n, (size_t)nl);
        if (rc == KV_OK)
            rc = resp_bulk(out, t, (size_t)tl);
    }
    return rc;
}

static int encode_etcd(const char *host, kvb_op_kind op, const char *key, size_t klen,
                       const char *val, size_t vlen, kv_buf *out, kv_buf *body)
{
    const char *path = op == KVB_OP_READ     ? "/v3/kv/range"
                       : op == KVB_OP_UPDATE ? "/v3/kv/put"
                                             : "/v3/kv/deleterange";
    if (kv_buf_appends(body, "{\"key\":\"") != KV_OK || kvb_base64_append(body, key, klen) != KV_OK)
        return KV_ENOMEM;
    if (op == KVB_OP_UPDATE && (kv_buf_appends(body, "\",\"value\":\"") != KV_OK ||
                                kvb_base64_append(body, val, vlen) != KV_OK))
        return KV_ENOMEM;
    if (kv_buf_appends(body, "\"}") != KV_OK)
        return KV_ENOMEM;
    if (kv_buf_printf(out,
                      "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      path, host, body->len) != KV_OK ||
        kv_buf_append(out, body->data, body->len) != KV_OK)
        return KV_ENOMEM;
    return KV_OK;
}

int kvb_proto_encode(const kvb_proto_cfg *pc, const char *host, kvb_op_kind op, const char *key,
                     size_t klen, const char *val, size_t vlen, kv_buf *out)
{
    switch (pc->target) {
    case KVB_TARGET_REDIS:
        return encode_redis(pc, op, key, klen, val, vlen, out);
    case KVB_TARGET_ETCD: {
        kv_buf body = KV_BUF_INIT;
        int rc = encode_etcd(host, op, key, klen, val, vlen, out, &body);
        kv_buf_free(&body);
        return rc;
    }
    case KVB_TARGET_KVSTORE:
    default:
        break;
    }
    const char *method = op == KVB_OP_READ ? "GET" : op == KVB_OP_UPDATE ? "PUT" : "DELETE";
    if (kv_buf_printf(out, "%s /v1/kv/%.*s HTTP/1.1\r\nHost: %s\r\n", method, (int)klen, key,
                      host) != KV_OK)
        return KV_ENOMEM;
    if (op == KVB_OP_UPDATE) {
        if (kv_buf_printf(out, "Content-Length: %zu\r\n\r\n", vlen) != KV_OK ||
            kv_buf_append(out, val, vlen) != KV_OK)
            return KV_ENOMEM;
        return KV_OK;
    }
    return kv_buf_append(out, "\r\n", 2);
}

/* ---------- HTTP replies ---------- */

static int on_message_begin(http_parser *hp)
{
    kvb_parser *p = hp->data;
    memset(&p->cur, 0, sizeof p->cur);
    p->peek_len = 0;
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t len)
{
    kvb_parser *p = hp->data;
    if (p->target == KVB_TARGET_ETCD && p->peek_len < sizeof p->peek - 1) {
        size_t n = sizeof p->peek - 1 - p->peek_len;
        if (n > len)
            n = len;
        memcpy(p->peek + p->peek_len, at, n);
        p->peek_len += n;
        p->peek[p->peek_len] = '\0';
    }
    return 0;
}

static int on_message_complete(http_parser *hp)
{
    kvb_parser *p = hp->data;
    p->cur.http_status = (int)hp->status_code;
    p->cur.http_close = !http_should_keep_alive(hp);
    /* etcd's range reply is {"header":{...},"kvs":[...],"count":"1"}: the header holds
     * four numbers (two ids of up to 20 digits), so "kvs" starts within the first ~150
     * bytes we kept; a miss has no "kvs" member at all. */
    p->cur.etcd_has_kvs = p->peek_len > 0 && (strstr(p->peek, "\"kvs\"") != NULL);
    if (p->cb)
        p->cb(p->ctx, &p->cur);
    return 0;
}

static const http_parser_settings kvb_http_settings = {
    .on_message_begin = on_message_begin,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---------- RESP replies ---------- */

/* Parse one RESP value at s[0..n). Returns bytes consumed (> 0), 0 if incomplete (*need
 * then holds a lower bound on the total bytes required), or -1 if malformed. */
static long resp_parse(const char *s, size_t n, kvb_reply *r, size_t *need, int depth)
{
    if (depth > 8)
        return -1;
    const char *nl = n >= 3 ? memchr(s, '\n', n) : NULL;
    if (!nl) {
        if (n > 4096)
            return -1; /* no line is that long in the replies we ask for */
        *need = n + 1;
        return 0;
    }
    size_t line = (size_t)(nl - s) + 1; /* includes \r\n */
    if (line < 3 || s[line - 2] != '\r')
        return -1;
    char type = s[0];
    if (depth == 0) {
        r->resp_type = type;
        r->resp_nil = false;
        r->resp_int = 0;
    }
    switch (type) {
    case '+':
    case '-':
        return (long)line;
    case ':':
    case '$':
    case '*': {
        char num[24];
        size_t nlen = line - 3;
        if (nlen == 0 || nlen >= sizeof num)
            return -1;
        memcpy(num, s + 1, nlen);
        num[nlen] = '\0';
        char *end;
        long long v = strtoll(num, &end, 10);
        if (*end != '\0')
            return -1;
        if (type == ':') {
            if (depth == 0)
                r->resp_int = v;
            return (long)line;
        }
        if (v < 0) {
            if (depth == 0)
                r->resp_nil = true;
            return (long)line;
        }
        if (type == '$') {
            size_t total = line + (size_t)v + 2;
            if ((unsigned long long)v > (1ull << 30))
                return -1;
            if (n < total) {
                *need = total;
                return 0;
            }
            if (s[total - 2] != '\r' || s[total - 1] != '\n')
                return -1;
            return (long)total;
        }
        size_t off = line;
        for (long long i = 0; i < v; i++) {
            long c = resp_parse(s + off, n - off, r, need, depth + 1);
            if (c <= 0) {
                if (c == 0)
                    *need += off;
                return c;
            }
            off += (size_t)c;
        }
        return (long)off;
    }
    default:
        return -1;
    }
}

static int resp_feed(kvb_parser *p, const char *data, size_t len)
{
    if (len == 0)
        return 0;
    if (kv_buf_append(&p->rbuf, data, len) != KV_OK)
        return -1;
    if (p->rbuf.len < p->rneed)
        return 0;
    size_t off = 0;
    int rc = 0;
    while (off < p->rbuf.len) {
        kvb_reply r;
        memset(&r, 0, sizeof r);
        size_t need = 0;
        long c = resp_parse(p->rbuf.data + off, p->rbuf.len - off, &r, &need, 0);
        if (c < 0) {
            rc = -1;
            break;
        }
        if (c == 0) {
            p->rneed = need; /* counted from off, which becomes 0 after the consume */
            break;
        }
        off += (size_t)c;
        p->rneed = 0;
        if (p->cb)
            p->cb(p->ctx, &r);
    }
    kv_buf_consume(&p->rbuf, off);
    return rc;
}

/* ---------- parser ---------- */

void kvb_parser_init(kvb_parser *p, kvb_target t)
{
    memset(p, 0, sizeof *p);
    p->target = t;
    kvb_parser_reset(p);
}

void kvb_parser_reset(kvb_parser *p)
{
    if (p->target != KVB_TARGET_REDIS) {
        http_parser_init(&p->hp, HTTP_RESPONSE);
        p->hp.data = p;
    }
    kv_buf_reset(&p->rbuf);
    p->rneed = 0;
    p->peek_len = 0;
}

void kvb_parser_fini(kvb_parser *p)
{
    kv_buf_free(&p->rbuf);
}

int kvb_parser_feed(kvb_parser *p, const char *data, size_t len, kvb_reply_cb cb, void *ctx)
{
    p->cb = cb;
    p->ctx = ctx;
    int rc;
    if (p->target == KVB_TARGET_REDIS) {
        rc = resp_feed(p, data, len);
    } else {
        size_t n = http_parser_execute(&p->hp, &kvb_http_settings, data, len);
        rc = (p->hp.http_errno != HPE_OK || n != len) ? -1 : 0;
    }
    p->cb = NULL;
    p->ctx = NULL;
    return rc;
}

/* ---------- judging ---------- */

kvb_outcome kvb_proto_judge(const kvb_proto_cfg *pc, kvb_op_kind op, unsigned idx,
                            const kvb_reply *r, kvb_errkind *kind)
{
    switch (pc->target) {
    case KVB_TARGET_REDIS:
        if (r->resp_type == '-') {
            *kind = KVB_E_REDIS;
            return KVB_FAIL;
        }
        if (idx == 1) { /* WAIT: how many replicas acknowledged */
            if (r->resp_type != ':') {
                *kind = KVB_E_PROTOCOL;
                return KVB_FAIL;
            }
            if (r->resp_int < (int64_t)pc->redis_wait) {
                *kind = KVB_E_WAIT;
                return KVB_FAIL;
            }
            return KVB_OK;
        }
        if (op == KVB_OP_READ) {
            if (r->resp_type != '$') {
                *kind = KVB_E_PROTOCOL;
                return KVB_FAIL;
            }
            return r->resp_nil ? KVB_MISS : KVB_OK;
        }
        if ((op == KVB_OP_UPDATE && r->resp_type != '+') ||
            (op == KVB_OP_DELETE && r->resp_type != ':')) {
            *kind = KVB_E_PROTOCOL;
            return KVB_FAIL;
        }
        return KVB_OK;
    case KVB_TARGET_ETCD:
        if (r->http_status != 200) {
            *kind = KVB_E_HTTP;
            return KVB_FAIL;
        }
        if (op == KVB_OP_READ && !r->etcd_has_kvs)
            return KVB_MISS;
        return KVB_OK;
    case KVB_TARGET_KVSTORE:
    default:
        if (op == KVB_OP_READ && r->http_status == 404)
            return KVB_MISS;
        if (r->http_status < 200 || r->http_status > 299) {
            *kind = KVB_E_HTTP;
            return KVB_FAIL;
        }
        return KVB_OK;
    }
}
