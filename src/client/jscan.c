/*
 * jscan.c — see jscan.h. Pure; any thread.
 *
 * The one JSON scanner of the client library and the CLI (the listing page reader,
 * kvtool members and kvtool ring all use it); kvc_json_str_field decodes strings.
 */
#include "client/jscan.h"

#include <stdlib.h>
#include <string.h>

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

const char *kvc_jscan_skip_ws(const char *p, const char *end)
{
    while (p < end && is_ws(*p))
        p++;
    return p;
}

/* Past the JSON string at p (its opening quote); NULL if it, or an escape, does not end. */
static const char *skip_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\') {
            p++;
            if (p >= end)
                return NULL;
        } else if (*p == '"') {
            return p + 1;
        }
    }
    return NULL;
}

const char *kvc_jscan_skip_value(const char *p, const char *end)
{
    if (p >= end)
        return NULL;
    if (*p == '"')
        return skip_string(p, end);
    if (*p != '[' && *p != '{') {
        /* A number or literal: up to the next delimiter; an empty one is broken. */
        const char *start = p;
        while (p < end && *p != ',' && *p != '}' && *p != ']' && !is_ws(*p))
            p++;
        return p > start ? p : NULL;
    }
    /* Nesting depth is bounded by the input length; strings are skipped whole. */
    size_t depth = 0;
    while (p < end) {
        if (*p == '"') {
            p = skip_string(p, end);
            if (!p)
                return NULL;
            continue;
        }
        if (*p == '[' || *p == '{') {
            depth++;
        } else if (*p == ']' || *p == '}') {
            if (--depth == 0)
                return p + 1;
        }
        p++;
    }
    return NULL;
}

bool kvc_jscan_member(const char *p, const char *end, const char *name, const char **v,
                      const char **vend)
{
    p = kvc_jscan_skip_ws(p, end);
    if (p >= end || *p != '{')
        return false;
    size_t nlen = strlen(name);
    p++;
    /* Each member consumes input, so the loop ends by end at the latest. */
    for (;;) {
        p = kvc_jscan_skip_ws(p, end);
        if (p >= end || *p != '"')
            return false; /* "}" (an empty object or the end) or garbage: not found */
        const char *k = p + 1, *kend = skip_string(p, end);
        if (!kend)
            return false;
        p = kvc_jscan_skip_ws(kend, end);
        if (p >= end || *p != ':')
            return false;
        const char *val = kvc_jscan_skip_ws(p + 1, end);
        p = kvc_jscan_skip_value(val, end);
        if (!p)
            return false;
        if ((size_t)(kend - 1 - k) == nlen && memcmp(k, name, nlen) == 0) {
            *v = val;
            *vend = p;
            return true;
        }
        p = kvc_jscan_skip_ws(p, end);
        if (p >= end || *p != ',')
            return false;
        p++;
    }
}

bool kvc_jscan_literal(const char *p, const char *end, const char *name, char *out, size_t cap)
{
    const char *v, *vend;
    if (!kvc_jscan_member(p, end, name, &v, &vend) || v >= vend || *v == '"' || *v == '[' ||
        *v == '{')
        return false;
    size_t n = (size_t)(vend - v);
    /* A NUL inside would end the text early: "3\0x" must not read as 3. */
    if (n >= cap || memchr(v, '\0', n))
        return false;
    memcpy(out, v, n);
    out[n] = '\0';
    return true;
}

int kvc_jscan_next(const char **it, const char *end, const char **elem, const char **eend)
{
    const char *p = *it;
    if (p >= end)
        return -1;
    if (*p == '[') {
        p = kvc_jscan_skip_ws(p + 1, end);
    } else if (*p == ',') {
        p = kvc_jscan_skip_ws(p + 1, end);
        if (p < end && *p == ']')
            return -1; /* a trailing comma */
    }
    if (p < end && *p == ']') {
        *it = p;
        return 0;
    }
    const char *e = kvc_jscan_skip_value(p, end);
    if (!e)
        return -1;
    const char *after = kvc_jscan_skip_ws(e, end);
    if (after >= end || (*after != ',' && *after != ']'))
        return -1;
    *elem = p;
    *eend = e;
    *it = after;
    return 1;
}

bool kvc_jscan_number(const char *p, const char *end, const char *name, double lo, double hi,
                      double *out)
{
    char text[40], *stop;
    if (!kvc_jscan_literal(p, end, name, text, sizeof(text)))
        return false;
    double v = strtod(text, &stop);
    if (*stop != '\0' || stop == text || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}
