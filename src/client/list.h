/*
 * list.h — reading one page of GET /v1/kv (key listing) into a kv_client_list_page. Used
 * by kv_client_list; separate so that tests can feed it canned bodies. Pure; any thread.
 */
#ifndef KV_CLIENT_LIST_H
#define KV_CLIENT_LIST_H

#include "kvstore/client.h"

#include <stddef.h>

/*
 * Parse json[0..len), a page {"keys":[{"key":"<percent-encoded>","version":".."},..],
 * "next_cursor":".."|null}, into a new page: keys percent-decoded, the cursor copied
 * (NULL for null or when absent), json itself copied into page->json. Members the page
 * does not know are skipped, so the server may add some. KV_OK and *out (free with
 * kv_client_list_page_free); KV_EPROTO when the body is not such a page (a key that is
 * empty, longer than KV_CLIENT_LIST_KEY_MAX bytes or badly encoded, a missing "keys",
 * a cursor that is not a string of URL-safe characters); KV_ENOMEM.
 */
int kvc_list_parse(const char *json, size_t len, kv_client_list_page **out);

#endif
