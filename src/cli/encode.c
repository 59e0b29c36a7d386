/*
 * encode.c — UTF-8 validation, base64 and JSON members for CLI output (see encode.h).
 * Pure functions; any thread.
 */
#include "cli/encode.h"

#include "kvstore/error.h"

#include <stdint.h>

/* Length (1..4) of the well-formed UTF-8 character at s, or 0 if there is none. */
static size_t utf8_char(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t min, cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        min = 0x80;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        min = 0x800;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        min = 0x10000;
        cp = c & 0x07;
    } else {
        return 0; /* continuation byte, overlong lead (c0, c1) or beyond U+10FFFF */
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

bool cli_utf8_valid(const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_char(s + i, n - i);
        if (l == 0)
            return false;
        i += l;
    }
    return true;
}

int cli_base64(kv_buf *b, const void *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *s = p;
    int rc = kv_buf_reserve(b, (n + 2) / 3 * 4);
    if (rc)
        return rc;
    char *o = b->data + b->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[v >> 12 & 63];
        *o++ = tab[v >> 6 & 63];
        *o++ = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        *o++ = tab[v >> 18];
        *o++ = tab[v >> 12 & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        *o++ = tab[v >> 18];
        *o++ = tab[v >> 12 & 63];
        *o++ = tab[v >> 6 & 63];
        *o++ = '=';
    }
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
    return KV_OK;
}

int cli_json_bytes(kv_buf *b, const char *name, const void *p, size_t n, const char *enc_name)
{
    int rc = kv_buf_printf(b, "\"%s\":\"", name);
    if (rc)
        return rc;
    bool text = cli_utf8_valid(p, n);
    rc = text ? kv_buf_append_json_str(b, p, n) : cli_base64(b, p, n);
    if (rc)
        return rc;
    if (text)
        return kv_buf_appends(b, "\"");
    return kv_buf_printf(b, "\",\"%s\":\"base64\"", enc_name);
}

void cli_print_safe(FILE *f, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_char(s + i, n - i);
        if (l == 1 && (s[i] < 0x20 || s[i] == 0x7f || s[i] == '\\'))
            l = 0;
        if (l == 0) {
            fprintf(f, "\\x%02x", s[i]);
            i++;
        } else {
            fwrite(s + i, 1, l, f);
            i += l;
        }
    }
}
