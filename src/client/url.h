/*
 * url.h — the two pieces of URL handling the client needs: parsing the server URL
 * (http://host[:port][/path]) and percent-encoding a key into a path segment. Pure
 * functions; any thread.
 */
#ifndef KV_CLIENT_URL_H
#define KV_CLIENT_URL_H

#include "common/buf.h"

#include <stddef.h>

typedef struct kvc_url {
    char host[256];      /* name or address to resolve; IPv6 literals without brackets */
    char port[6];        /* decimal, 1..65535; "80" when the URL has none */
    char authority[272]; /* host[:port] as written in the URL, for the Host header */
} kvc_url;

/*
 * Parse "http://host[:port][/path]" (scheme case-insensitive). host is an IPv4 literal, a
 * DNS name (letters, digits, '-', '.', '_') or a bracketed IPv6 literal. Anything from the
 * first '/', '?' or '#' after the authority is accepted and ignored. KV_OK, or KV_EINVAL
 * for another scheme, user info, an empty or malformed host, or a port outside 1..65535;
 * out is written only on success.
 */
int kvc_url_parse(kvc_url *out, const char *url);

/*
 * Append p[0..n) to b percent-encoded for use as one path segment: every byte outside the
 * unreserved set A-Z a-z 0-9 - . _ ~ becomes %XX (upper-case hex), so '/', '%', '?', '#',
 * spaces, NULs and non-ASCII bytes survive any key. KV_OK or KV_ENOMEM.
 */
int kvc_path_escape(kv_buf *b, const void *p, size_t n);

#endif
