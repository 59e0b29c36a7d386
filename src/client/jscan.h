/*
 * jscan.h — a small scanner for the JSON objects the server answers with: skip a value,
 * find a top-level member of an object, read a number or literal member as text, and step
 * through the elements of an array. Enough for the client's key-listing pages and the
 * CLI's tables (kvtool members, kvtool ring), without a JSON library. Not a validator:
 * anything it does not understand reads as "not found" or "broken". Pure; any thread.
 *
 * The input comes from the network: every step checks the end of input, nesting is only
 * counted (never recursed into). Inputs need not be NUL-terminated: every function takes
 * [p, end). String members are read with kvc_json_str_field (client/json.h), which
 * decodes escapes.
 */
#ifndef KV_CLIENT_JSCAN_H
#define KV_CLIENT_JSCAN_H

#include <stdbool.h>
#include <stddef.h>

/* p moved past any JSON white space (space, tab, CR, LF), at most to end. */
const char *kvc_jscan_skip_ws(const char *p, const char *end);

/*
 * Past the one value that starts at p (a string, number, literal, array or object; no
 * leading white space). NULL if p is at end, the value is empty (a literal of no
 * characters) or it does not end before end (an unterminated string, an escape cut off,
 * unbalanced brackets).
 */
const char *kvc_jscan_skip_value(const char *p, const char *end);

/*
 * The value of the top-level member `name` of the object at [p, end) (leading white space
 * allowed): [*v, *vend). False if p is not an object, has no such member, or is broken
 * before it. The key is compared raw (no escapes decoded).
 */
bool kvc_jscan_member(const char *p, const char *end, const char *name, const char **v,
                      const char **vend);

/*
 * A number or literal member ("3", "0.25", "true") of the object at [p, end) as text in
 * out (cap bytes, NUL-terminated). False if absent, a string/array/object, holds a NUL
 * byte, or does not fit.
 */
bool kvc_jscan_literal(const char *p, const char *end, const char *name, char *out, size_t cap);

/* The number member `name` of the object at p, when it is a plain number in [lo, hi]. */
bool kvc_jscan_number(const char *p, const char *end, const char *name, double lo, double hi,
                      double *out);

/*
 * Iterate an array: start with *it = the array's '[' (as returned by kvc_jscan_member).
 * Each call sets [*elem, *eend) to the next element and returns 1, returns 0 at the
 * array's ']' (and again if called once more), or -1 if it is broken: an element that is
 * not followed by ',' or ']', a missing element or a trailing comma. end bounds the array.
 */
int kvc_jscan_next(const char **it, const char *end, const char **elem, const char **eend);

#endif
