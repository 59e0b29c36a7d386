/*
 * buf.h — a growable byte buffer. Not thread-safe; owned by whoever holds it.
 *
 * A kv_buf owns its memory; kv_buf_free releases it. data is always NUL-terminated
 * after any append (the NUL is not counted in len) so text can be used as a C string.
 */
#ifndef KV_COMMON_BUF_H
#define KV_COMMON_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct kv_buf {
    char *data;
    size_t len;
    size_t cap;
} kv_buf;

#define KV_BUF_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

/* Ensure room for extra more bytes (plus the NUL). KV_OK or KV_ENOMEM. */
int kv_buf_reserve(kv_buf *b, size_t extra);
int kv_buf_append(kv_buf *b, const void *p, size_t n);
int kv_buf_appends(kv_buf *b, const char *s);
int kv_buf_printf(kv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append s as the body of a JSON string (no surrounding quotes), escaping as needed. */
int kv_buf_append_json_str(kv_buf *b, const char *s, size_t n);
/* Drop the first n bytes. */
void kv_buf_consume(kv_buf *b, size_t n);
void kv_buf_reset(kv_buf *b);
void kv_buf_free(kv_buf *b);
/* Hand the memory to the caller (who frees it with free()); b becomes empty. */
char *kv_buf_steal(kv_buf *b, size_t *len);

#endif
