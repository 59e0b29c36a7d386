/*
 * encode.h — the byte encodings the CLI prints: UTF-8 validation, base64 and JSON string
 * members that fall back to base64 for bytes that are not text. Pure functions; any
 * thread.
 */
#ifndef KV_CLI_ENCODE_H
#define KV_CLI_ENCODE_H

#include "common/buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* True if p[0..n) is well-formed UTF-8 (no overlong forms, surrogates or > U+10FFFF). */
bool cli_utf8_valid(const void *p, size_t n);

/* Append p[0..n) as standard base64 with '=' padding. KV_OK or KV_ENOMEM. */
int cli_base64(kv_buf *b, const void *p, size_t n);

/*
 * Append the JSON object member "name":"<p as a JSON string>" when p is valid UTF-8, else
 * "name":"<base64>","<enc_name>":"base64". No leading comma. KV_OK or KV_ENOMEM.
 */
int cli_json_bytes(kv_buf *b, const char *name, const void *p, size_t n, const char *enc_name);

/*
 * Write s[0..n) to f for a one-line human message: printable ASCII and valid UTF-8 as is,
 * other bytes (control characters, newlines, broken UTF-8) as \xNN, so that a key or a
 * server's text cannot break the line or the terminal.
 */
void cli_print_safe(FILE *f, const void *s, size_t n);

#endif
