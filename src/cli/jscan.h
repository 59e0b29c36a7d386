/*
 * jscan.h — a small scanner for the JSON objects the server answers with, enough for the
 * CLI's tables (kvtool ring): find a top-level member of an object, read a number or
 * literal member as text, and step through the elements of an array. Not a validator:
 * anything it does not understand reads as "not found". Pure; any thread.
 *
 * String members are read with kvc_json_str_field (client/json.h), which decodes escapes.
 * Inputs need not be NUL-terminated: every function takes [p, end).
 */
#ifndef KV_CLI_JSCAN_H
#define KV_CLI_JSCAN_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The value of the top-level member `name` of the object at [p, end) (leading white space
 * allowed): [*v, *vend). False if p is not an object, has no such member, or is broken
 * before it.
 */
bool cli_jscan_member(const char *p, const char *end, const char *name, const char **v,
                      const char **vend);

/*
 * A number or literal member ("3", "0.25", "true") of the object at [p, end) as text in
 * out (cap bytes, NUL-terminated). False if absent, a string/array/object, or too long.
 */
bool cli_jscan_literal(const char *p, const char *end, const char *name, char *out, size_t cap);

/*
 * Iterate an array: start with *it = the array's '[' (as returned by cli_jscan_member).
 * Each call sets [*elem, *eend) to the next element and returns 1, returns 0 at the end
 * of the array, or -1 if it is broken. end bounds the array.
 */
int cli_jscan_next(const char **it, const char *end, const char **elem, const char **eend);

#endif
