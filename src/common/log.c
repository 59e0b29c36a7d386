/*
 * log.c — structured logger (see log.h). Any thread.
 */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static kv_log_level g_level = KV_LOG_INFO;
static kv_log_format g_format = KV_LOG_TEXT;
static char g_name[128] = "kvstore";

static const char *level_names[] = {"debug", "info", "warn", "error"};

void kv_log_setup(kv_log_level level, kv_log_format format, const char *node_name)
{
    g_level = level;
    g_format = format;
    if (node_name)
        snprintf(g_name, sizeof(g_name), "%s", node_name);
}

int kv_log_level_parse(const char *s, kv_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (kv_log_level)i;
            return 0;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *out = KV_LOG_WARN;
        return 0;
    }
    return -1;
}

int kv_log_format_parse(const char *s, kv_log_format *out)
{
    if (strcmp(s, "text") == 0)
        *out = KV_LOG_TEXT;
    else if (strcmp(s, "json") == 0)
        *out = KV_LOG_JSON;
    else
        return -1;
    return 0;
}

bool kv_log_enabled(kv_log_level level)
{
    return level >= g_level;
}

typedef struct line {
    char buf[4096];
    size_t len;
} line;

static void put(line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(line *l, const char *fmt, ...)
{
    if (l->len >= sizeof(l->buf) - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->buf + l->len, sizeof(l->buf) - l->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        l->len += (size_t)n < sizeof(l->buf) - l->len ? (size_t)n : sizeof(l->buf) - 1 - l->len;
}

static void putc_(line *l, char c)
{
    if (l->len < sizeof(l->buf) - 1)
        l->buf[l->len++] = c;
}

/* JSON string body (no quotes): escape quotes, backslashes and control bytes. */
static void put_json_str(line *l, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            putc_(l, '\\');
            putc_(l, (char)c);
        } else if (c < 0x20) {
            put(l, "\\u%04x", c);
        } else {
            putc_(l, (char)c);
        }
    }
}

/* logfmt value: bare when safe, otherwise quoted with escapes. */
static void put_text_str(line *l, const char *s)
{
    bool bare = *s != '\0';
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f) {
            bare = false;
            break;
        }
    }
    if (bare) {
        put(l, "%s", s);
        return;
    }
    putc_(l, '"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            putc_(l, '\\');
            putc_(l, (char)c);
        } else if (c == '\n') {
            put(l, "\\n");
        } else if (c < 0x20 || c == 0x7f) {
            put(l, "\\x%02x", c);
        } else {
            putc_(l, (char)c);
        }
    }
    putc_(l, '"');
}

static void put_value(line *l, const kv_attr *a, bool json)
{
    switch (a->type) {
    case KV_ATTR_STR:
        if (json) {
            putc_(l, '"');
            put_json_str(l, a->v.s ? a->v.s : "");
            putc_(l, '"');
        } else {
            put_text_str(l, a->v.s ? a->v.s : "");
        }
        break;
    case KV_ATTR_INT:
        put(l, "%lld", (long long)a->v.i);
        break;
    case KV_ATTR_UINT:
        put(l, "%llu", (unsigned long long)a->v.u);
        break;
    case KV_ATTR_FLOAT:
        put(l, "%.6g", a->v.f);
        break;
    case KV_ATTR_BOOL:
        put(l, "%s", a->v.b ? "true" : "false");
        break;
    case KV_ATTR_NONE:
        put(l, json ? "null" : "\"\"");
        break;
    }
}

void kv_log_emit(kv_log_level level, const char *msg, const kv_attr *attrs, int n)
{
    line l;
    l.len = 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char tbuf[64];
    snprintf(tbuf, sizeof(tbuf), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    const char *lv = level_names[level < 0 || level > 3 ? 1 : level];
    bool json = g_format == KV_LOG_JSON;
    if (json) {
        put(&l, "{\"time\":\"%s\",\"level\":\"%s\",\"node\":\"", tbuf, lv);
        put_json_str(&l, g_name);
        put(&l, "\",\"msg\":\"");
        put_json_str(&l, msg);
        putc_(&l, '"');
    } else {
        put(&l, "time=%s level=%s node=", tbuf, lv);
        put_text_str(&l, g_name);
        put(&l, " msg=");
        put_text_str(&l, msg);
    }
    for (int i = 1; i < n; i++) {
        const kv_attr *a = &attrs[i];
        if (!a->key)
            continue;
        if (json) {
            put(&l, ",\"");
            put_json_str(&l, a->key);
            put(&l, "\":");
        } else {
            put(&l, " %s=", a->key);
        }
        put_value(&l, a, json);
    }
    if (json)
        putc_(&l, '}');
    /* Room for the newline is always kept by put()/putc_(). */
    l.buf[l.len++] = '\n';
    ssize_t off = 0;
    while ((size_t)off < l.len) {
        ssize_t w = write(STDERR_FILENO, l.buf + off, l.len - (size_t)off);
        if (w <= 0)
            break;
        off += w;
    }
}
