/*
 * jscan.c — see jscan.h. Pure; any thread.
 */
#include "cli/jscan.h"

#include <string.h>

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* Past the JSON string at p (its opening quote); NULL if it does not end. */
static const char *skip_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return NULL;
}

/* Past one value at p (string, number, literal, array or object); NULL if broken. */
static const char *skip_value(const char *p, const char *end)
{
    if (p >= end)
        return NULL;
    if (*p == '"')
        return skip_string(p, end);
    if (*p != '[' && *p != '{') {
        const char *start = p;
        while (p < end && !strchr(",}] \t\r\n", *p))
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
        if (*p == '[' || *p == '{')
            depth++;
        else if (*p == ']' || *p == '}')
            depth--;
        p++;
        if (depth == 0)
            return p;
    }
    return NULL;
}

bool cli_jscan_member(const char *p, const char *end, const char *name, const char **v,
                      const char **vend)
{
    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return false;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}')
        return false;
    size_t nlen = strlen(name);
    for (;;) {
        p = skip_ws(p, end);
        if (p >= end || *p != '"')
            return false;
        const char *k = p + 1, *kend = skip_string(p, end);
        if (!kend)
            return false;
        p = skip_ws(kend, end);
        if (p >= end || *p != ':')
            return false;
        p = skip_ws(p + 1, end);
        const char *val = p;
        p = skip_value(p, end);
        if (!p)
            return false;
        if ((size_t)(kend - 1 - k) == nlen && memcmp(k, name, nlen) == 0) {
            *v = val;
            *vend = p;
            return true;
        }
        p = skip_ws(p, end);
        if (p >= end || *p != ',')
            return false;
        p++;
    }
}

bool cli_jscan_literal(const char *p, const char *end, const char *name, char *out, size_t cap)
{
    const char *v, *vend;
    if (!cli_jscan_member(p, end, name, &v, &vend) || v >= vend || *v == '"' || *v == '[' ||
        *v == '{')
        return false;
    size_t n = (size_t)(vend - v);
    if (n >= cap)
        return false;
    memcpy(out, v, n);
    out[n] = '\0';
    return true;
}

int cli_jscan_next(const char **it, const char *end, const char **elem, const char **eend)
{
    const char *p = *it;
    if (p >= end)
        return -1;
    if (*p == '[') {
        p = skip_ws(p + 1, end);
    } else if (*p == ',') {
        p = skip_ws(p + 1, end);
        if (p < end && *p == ']')
            return -1; /* a trailing comma */
    }
    if (p < end && *p == ']') {
        *it = p;
        return 0;
    }
    const char *e = skip_value(p, end);
    if (!e)
        return -1;
    const char *after = skip_ws(e, end);
    if (after >= end || (*after != ',' && *after != ']'))
        return -1;
    *elem = p;
    *eend = e;
    *it = after;
    return 1;
}
