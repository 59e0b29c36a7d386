/*
 * json.c — tolerant extraction of one string member from a JSON object (see json.h).
 * Pure functions; any thread.
 *
 * The scanner walks the top-level object member by member. Values it does not need
 * (numbers, literals, nested objects and arrays) are skipped by bracket counting that
 * respects strings, so a "code" inside a nested object or inside a string never matches.
 * Every step checks the end of input: the body comes from the network.
 */
#include "client/json.h"

#include "common/hex.h"

#include <stdint.h>
#include <string.h>

typedef struct scan {
    const char *p;
    const char *end;
} scan;

static void skip_ws(scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* Skip a string starting at the opening quote; false if unterminated. */
static bool skip_string(scan *s)
{
    s->p++; /* opening quote */
    while (s->p < s->end) {
        char c = *s->p++;
        if (c == '\\') {
            if (s->p >= s->end)
                return false;
            s->p++;
        } else if (c == '"') {
            return true;
        }
    }
    return false;
}

/* Skip any value (string, number, literal, object, array); false on malformed input. */
static bool skip_value(scan *s)
{
    skip_ws(s);
    if (s->p >= s->end)
        return false;
    if (*s->p == '"')
        return skip_string(s);
    if (*s->p == '{' || *s->p == '[') {
        int depth = 0;
        while (s->p < s->end) {
            char c = *s->p;
            if (c == '"') {
                if (!skip_string(s))
                    return false;
                continue;
            }
            if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (--depth == 0) {
                    s->p++;
                    return true;
                }
            }
            s->p++;
        }
        return false;
    }
    /* number or literal: up to the next delimiter */
    const char *start = s->p;
    while (s->p < s->end && *s->p != ',' && *s->p != '}' && *s->p != ']' && *s->p != ' ' &&
           *s->p != '\t' && *s->p != '\n' && *s->p != '\r')
        s->p++;
    return s->p > start;
}

static bool read_hex4(scan *s, uint32_t *out)
{
    if (s->end - s->p < 4)
        return false;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = kv_hexval(s->p[i]);
        if (h < 0)
            return false;
        v = v << 4 | (uint32_t)h;
    }
    s->p += 4;
    *out = v;
    return true;
}

/* Output sink that never writes past cap-1 and never splits a UTF-8 sequence; out == NULL
 * only checks the input. */
typedef struct sink {
    char *out;
    size_t cap;
    size_t len;
    bool full;
} sink;

static void sink_put(sink *k, const char *b, size_t n)
{
    if (k->full || !k->out)
        return;
    if (k->len + n + 1 > k->cap) {
        k->full = true;
        return;
    }
    memcpy(k->out + k->len, b, n);
    k->len += n;
}

static void sink_cp(sink *k, uint32_t cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xc0 | cp >> 6);
        b[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xe0 | cp >> 12);
        b[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        b[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        b[0] = (char)(0xf0 | cp >> 18);
        b[1] = (char)(0x80 | (cp >> 12 & 0x3f));
        b[2] = (char)(0x80 | (cp >> 6 & 0x3f));
        b[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    sink_put(k, b, n);
}

/* Decode the string at s->p (opening quote) into k; false if malformed. */
static bool decode_string(scan *s, sink *k)
{
    s->p++;
    while (s->p < s->end) {
        const char *run = s->p;
        while (s->p < s->end && *s->p != '"' && *s->p != '\\')
            s->p++;
        /* Copied one UTF-8 character at a time, so that truncation never splits one. */
        for (const char *q = run; q < s->p;) {
            size_t n = 1;
            unsigned char c = (unsigned char)*q;
            if (c >= 0xf0)
                n = 4;
            else if (c >= 0xe0)
                n = 3;
            else if (c >= 0xc0)
                n = 2;
            if (n > (size_t)(s->p - q))
                n = (size_t)(s->p - q);
            sink_put(k, q, n);
            q += n;
        }
        if (s->p >= s->end)
            return false;
        if (*s->p == '"') {
            s->p++;
            return true;
        }
        s->p++; /* backslash */
        if (s->p >= s->end)
            return false;
        char e = *s->p++;
        switch (e) {
        case '"':
        case '\\':
        case '/':
            sink_put(k, &e, 1);
            break;
        case 'b':
            sink_put(k, "\b", 1);
            break;
        case 'f':
            sink_put(k, "\f", 1);
            break;
        case 'n':
            sink_put(k, "\n", 1);
            break;
        case 'r':
            sink_put(k, "\r", 1);
            break;
        case 't':
            sink_put(k, "\t", 1);
            break;
        case 'u': {
            uint32_t cp;
            if (!read_hex4(s, &cp))
                return false;
            if (cp >= 0xd800 && cp < 0xdc00) {
                /* high surrogate: needs a following \uDC00..DFFF */
                uint32_t lo;
                scan save = *s;
                if (s->end - s->p >= 2 && s->p[0] == '\\' && s->p[1] == 'u') {
                    s->p += 2;
                    if (read_hex4(s, &lo) && lo >= 0xdc00 && lo < 0xe000) {
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    } else {
                        *s = save;
                        cp = 0xfffd;
                    }
                } else {
                    cp = 0xfffd;
                }
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                cp = 0xfffd;
            }
            sink_cp(k, cp);
            break;
        }
        default:
            return false;
        }
    }
    return false;
}

bool kvc_json_str_field(const char *json, size_t len, const char *name, char *out, size_t cap)
{
    if (!json || !name)
        return false;
    scan s = {json, json + len};
    size_t nlen = strlen(name);
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{')
        return false;
    s.p++;
    for (;;) {
        skip_ws(&s);
        if (s.p >= s.end || *s.p != '"')
            return false; /* "}" (end of object) or garbage */
        /* Compare the raw key; problem+json keys never need escapes. */
        const char *kstart = s.p + 1;
        if (!skip_string(&s))
            return false;
        bool match = (size_t)(s.p - 1 - kstart) == nlen && memcmp(kstart, name, nlen) == 0;
        skip_ws(&s);
        if (s.p >= s.end || *s.p != ':')
            return false;
        s.p++;
        skip_ws(&s);
        if (match && s.p < s.end && *s.p == '"') {
            /* Check the whole string first: out is written only on success. */
            scan check = s;
            sink none = {NULL, 0, 0, false};
            if (!decode_string(&check, &none))
                return false;
            if (cap) {
                sink k = {out, cap, 0, false};
                decode_string(&s, &k);
                out[k.len] = '\0';
            }
            return true;
        }
        if (!skip_value(&s))
            return false;
        skip_ws(&s);
        if (s.p >= s.end)
            return false;
        if (*s.p == ',') {
            s.p++;
            continue;
        }
        return false; /* "}" or garbage: not found */
    }
}
