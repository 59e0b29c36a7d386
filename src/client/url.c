/*
 * url.c — server URL parsing and key percent-encoding for the client (see url.h).
 * Pure functions; any thread.
 */
#include "client/url.h"

#include "kvstore/error.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool is_host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

static bool is_v6_char(char c)
{
    return (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || (c >= '0' && c <= '9') || c == ':' ||
           c == '.';
}

int kvc_url_parse(kvc_url *out, const char *url)
{
    static const char scheme[] = "http://";
    if (!url || strncasecmp(url, scheme, sizeof(scheme) - 1) != 0)
        return KV_EINVAL;
    const char *a = url + sizeof(scheme) - 1;
    size_t alen = strcspn(a, "/?#");
    if (alen == 0 || alen >= sizeof(out->authority))
        return KV_EINVAL;

    kvc_url u;
    memset(&u, 0, sizeof(u));
    memcpy(u.authority, a, alen);
    u.authority[alen] = '\0';

    const char *hp = a, *hend, *rest;
    if (*a == '[') {
        const char *close = memchr(a, ']', alen);
        if (!close || close == a + 1)
            return KV_EINVAL;
        for (const char *q = a + 1; q < close; q++)
            if (!is_v6_char(*q))
                return KV_EINVAL;
        hp = a + 1;
        hend = close;
        rest = close + 1;
    } else {
        hend = a;
        while (hend < a + alen && *hend != ':') {
            if (!is_host_char(*hend))
                return KV_EINVAL; /* includes '@' (user info), spaces, '%' */
            hend++;
        }
        rest = hend;
    }
    size_t hlen = (size_t)(hend - hp);
    if (hlen == 0 || hlen >= sizeof(u.host))
        return KV_EINVAL;
    memcpy(u.host, hp, hlen);
    u.host[hlen] = '\0';

    const char *aend = a + alen;
    if (rest == aend) {
        strcpy(u.port, "80");
    } else {
        if (*rest != ':')
            return KV_EINVAL;
        rest++;
        size_t plen = (size_t)(aend - rest);
        if (plen == 0 || plen > 5)
            return KV_EINVAL;
        unsigned port = 0;
        for (const char *q = rest; q < aend; q++) {
            if (*q < '0' || *q > '9')
                return KV_EINVAL;
            port = port * 10 + (unsigned)(*q - '0');
        }
        if (port < 1 || port > 65535)
            return KV_EINVAL;
        snprintf(u.port, sizeof(u.port), "%u", port);
    }
    *out = u;
    return KV_OK;
}

int kvc_path_escape(kv_buf *b, const void *p, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *s = p;
    int rc = kv_buf_reserve(b, n * 3);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        bool unreserved = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                          (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
        if (unreserved) {
            b->data[b->len++] = (char)c;
        } else {
            b->data[b->len++] = '%';
            b->data[b->len++] = hex[c >> 4];
            b->data[b->len++] = hex[c & 15];
        }
    }
    b->data[b->len] = '\0';
    return KV_OK;
}
