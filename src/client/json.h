/*
 * json.h — a tiny, tolerant reader for one string field of a JSON object, enough to pull
 * "code" and "detail" out of a problem+json body or "status" out of /healthz, without a
 * JSON library. Not a validator: it reads what it can and reports "not found" for
 * anything it does not understand. Pure function; any thread.
 *
 * Used by the client library (src/client) and the CLI (src/cli), which depends on it.
 */
#ifndef KV_CLIENT_JSON_H
#define KV_CLIENT_JSON_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Find the member `name` of the top-level object in json[0..len) whose value is a string,
 * decode its escapes (\uXXXX to UTF-8; lone surrogates become U+FFFD) and copy it into out
 * (cap bytes, always NUL-terminated when cap > 0, truncated at a UTF-8 character boundary
 * if it does not fit). Members of nested objects and arrays are not matched, nor are
 * strings that merely contain the name. Returns true if found; out is written only then.
 * json need not be NUL-terminated.
 */
bool kvc_json_str_field(const char *json, size_t len, const char *name, char *out, size_t cap);

#endif
