/*
 * listing.h — key listing across the cluster: GET /v1/kv?prefix=P&limit=L&cursor=C
 * (DESIGN §12). Pure parts plus the node-local scan; the adapter (replication.c) sends a
 * LIST to every alive member, feeds each answer into a merge and renders the page.
 *
 * Order: keys are listed in (ring hash, key bytes) order — the order a scan of the ring
 * gives cheaply — so a page is "the first `limit` live keys with prefix P after the
 * cursor". The cursor is the (hash, key) of the last key the page covered, rendered as an
 * opaque URL-safe string; pages never repeat or skip a key that exists during the whole
 * listing.
 *
 * Each member answers with its first `limit` matching keys after the cursor — values,
 * tombstones and expired values alike, each with its version — and whether it stopped at
 * the limit (truncated). The merge keeps, for each key, the newest version any member
 * reported; a key whose newest version is a tombstone or an expired value is hidden. It
 * can vouch only for keys up to the smallest "last key" among truncated answers (beyond
 * it a truncated member may hold keys it did not send); the page ends there, and the next
 * cursor continues from it. A page may thus hold fewer than `limit` keys (tombstones fill
 * it) and still have a next cursor; a listing ends when next_cursor is absent.
 */
#ifndef KV_REPL_LISTING_H
#define KV_REPL_LISTING_H

#include "common/buf.h"
#include "repl/msg.h"
#include "store/store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_LIST_DEFAULT_LIMIT 100
#define KV_LIST_MAX_LIMIT     1000

/* Parsed query of GET /v1/kv. Pointers are into `storage` inside the struct. */
typedef struct kv_list_params {
    uint8_t prefix[KV_REPL_KEY_MAX];
    size_t plen;
    uint32_t limit;
    bool has_cursor;
    uint64_t cursor_hash;
    uint8_t cursor_key[KV_REPL_KEY_MAX];
    size_t cursor_klen;
} kv_list_params;

/*
 * Parse the raw query string (without '?'; may be empty): prefix (percent-encoded bytes,
 * default empty = all keys), limit (1..KV_LIST_MAX_LIMIT, default KV_LIST_DEFAULT_LIMIT),
 * cursor (as rendered by a page). Unknown parameters are ignored (r=, consistency=...).
 * KV_OK, or KV_EINVAL with a one-line reason in err naming the parameter.
 *
 * Details: '+' is a literal plus (as in a key's path segment; spaces are %20); an empty
 * cursor ("cursor=") means the first page; prefix, limit or cursor given twice is an
 * error. The cursor is opaque to clients: today it is 16 lower-case hex digits of the
 * ring hash, '-', and the key's bytes in hex (URL-safe, at most 2065 characters) — the
 * (hash, key) of the last key the page covered; either case of hex is accepted.
 */
int kv_list_parse_query(const char *q, size_t qlen, kv_list_params *out, kv_buf *err);

/* ---- node-local scan (the replica side of LIST) ---- */

typedef struct kv_list_scan kv_list_scan;

/* A scan for the LIST message m (prefix, limit, cursor; all copied). A limit outside
 * 1..KV_REPL_LIST_MAX is clamped into it. NULL when out of memory. */
kv_list_scan *kv_list_scan_new(const kv_repl_msg *m);
/* Examine one bounded chunk of the store (store_range: about a millisecond). Sets *done
 * once the whole store has been examined. KV_OK or the store's error. */
int kv_list_scan_step(kv_list_scan *s, kv_store *st, bool *done);
/* After done: the matching keys in (hash, key) order, at most limit, and truncated.
 * Pointers valid until kv_list_scan_free. */
void kv_list_scan_result(const kv_list_scan *s, const kv_repl_item **items, uint32_t *n,
                         bool *truncated);
void kv_list_scan_free(kv_list_scan *s);

/* ---- the coordinator's merge ---- */

typedef struct kv_list_merge kv_list_merge;

kv_list_merge *kv_list_merge_new(const kv_list_params *p);
/* One member's answer (a LIST_ACK's items and truncated flag). Copies what it keeps.
 * Items need not be sorted; items that do not match the prefix or are not after the
 * cursor (a confused member) are ignored with a log line. KV_OK, KV_ENOMEM, or KV_EPROTO
 * for a truncated answer without a usable item (it vouches for nothing, so paging on it
 * would make no progress: treat that member as failed); a refused answer changes nothing. */
int kv_list_merge_add(kv_list_merge *m, const kv_repl_item *items, uint32_t n, bool truncated);
/*
 * Render the page into out (reset first):
 *   {"keys":[{"key":"<key>","version":"<ts>.<node>"},...],"next_cursor":"<c>"|null}
 * key is the key's bytes percent-encoded the way a path segment of /v1/kv/{key} takes
 * them (unreserved characters and ":@!$&'()*+,;=" kept as they are, everything else %XX),
 * so that a client can paste it into a URL; version matches the ETag format (without the
 * quotes). KV_OK, KV_ENOMEM.
 */
int kv_list_merge_render(kv_list_merge *m, kv_buf *out);
void kv_list_merge_free(kv_list_merge *m);

#endif
