/*
 * buf.c — growable byte buffer (see buf.h).
 */
#include "common/buf.h"

#include "kvstore/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kv_buf_reserve(kv_buf *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->len)
        return KV_ENOMEM;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return KV_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p)
        return KV_ENOMEM;
    b->data = p;
    b->cap = cap;
    return KV_OK;
}

int kv_buf_append(kv_buf *b, const void *p, size_t n)
{
    int rc = kv_buf_reserve(b, n);
    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return KV_OK;
}

int kv_buf_appends(kv_buf *b, const char *s)
{
    return kv_buf_append(b, s, strlen(s));
}

int kv_buf_printf(kv_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return KV_EINVAL;
    int rc = kv_buf_reserve(b, (size_t)n);
    if (rc)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return KV_OK;
}

int kv_buf_append_json_str(kv_buf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int rc;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            rc = kv_buf_append(b, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            rc = kv_buf_printf(b, "\\u%04x", c);
        } else {
            rc = kv_buf_append(b, &s[i], 1);
        }
        if (rc)
            return rc;
    }
    return KV_OK;
}

void kv_buf_consume(kv_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void kv_buf_reset(kv_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void kv_buf_free(kv_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *kv_buf_steal(kv_buf *b, size_t *len)
{
    char *p = b->data;
    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
