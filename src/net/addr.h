/*
 * addr.h — peer addresses ("host:port") shared by the nng transport and the data lane.
 */
#ifndef KV_NET_ADDR_H
#define KV_NET_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Is addr a peer address: "host:port" with a non-empty host, a decimal port of at most 5
 * digits and at most 65535, no spaces, control bytes or '/', shorter than max bytes? When
 * host is not NULL, the host part (brackets of an IPv6 literal removed) is copied into
 * host[0..cap) and a host that does not fit, or an unbalanced bracket, is refused.
 */
bool kv_net_addr_split(const char *addr, size_t max, char *host, size_t cap);

/* FNV-1a of a NUL-terminated string: the bucket hash of per-peer tables. */
uint32_t kv_net_addr_hash(const char *s);

#endif
