/*
 * pct.h — percent-decoding (RFC 3986) of a key in a path segment or a query value: "%XX"
 * is the byte 0xXX, every other character (a '+' included) stands for itself. One decoder
 * for the node's /v1/kv/{key} path, the listing's query and the client's listing pages.
 * Pure; any thread.
 */
#ifndef KV_COMMON_PCT_H
#define KV_COMMON_PCT_H

#include <stddef.h>
#include <stdint.h>

/*
 * Decode src[0..n) into out (cap bytes); *len gets the decoded length. KV_OK; KV_EINVAL for
 * a '%' not followed by two hex digits (*bad_at, when not NULL, gets the '%''s offset);
 * KV_ETOOBIG when the result does not fit in cap. out may not hold src.
 */
int kv_pct_decode(const char *src, size_t n, uint8_t *out, size_t cap, size_t *len, size_t *bad_at);

#endif
