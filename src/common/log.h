/*
 * log.h — structured logging to stderr.
 *
 * Every line carries time, level, the node's name, a message and typed key=value
 * attributes; the format is text (logfmt) or JSON (one object per line). Safe from any
 * thread: a line is formatted into a local buffer and written with one write(2).
 *
 *   kv_log_info("http listening", KV_STR("addr", "127.0.0.1"), KV_INT("port", 8080));
 */
#ifndef KV_COMMON_LOG_H
#define KV_COMMON_LOG_H

#include <stdbool.h>
#include <stdint.h>

typedef enum kv_log_level {
    KV_LOG_DEBUG = 0,
    KV_LOG_INFO = 1,
    KV_LOG_WARN = 2,
    KV_LOG_ERROR = 3,
} kv_log_level;

typedef enum kv_log_format {
    KV_LOG_TEXT = 0,
    KV_LOG_JSON = 1,
} kv_log_format;

typedef enum kv_attr_type {
    KV_ATTR_NONE = 0,
    KV_ATTR_STR,
    KV_ATTR_INT,
    KV_ATTR_UINT,
    KV_ATTR_FLOAT,
    KV_ATTR_BOOL,
} kv_attr_type;

typedef struct kv_attr {
    const char *key;
    kv_attr_type type;
    union {
        const char *s;
        int64_t i;
        uint64_t u;
        double f;
        bool b;
    } v;
} kv_attr;

#define KV_STR(k, val)   ((kv_attr){.key = (k), .type = KV_ATTR_STR, .v.s = (val)})
#define KV_INT(k, val)   ((kv_attr){.key = (k), .type = KV_ATTR_INT, .v.i = (int64_t)(val)})
#define KV_UINT(k, val)  ((kv_attr){.key = (k), .type = KV_ATTR_UINT, .v.u = (uint64_t)(val)})
#define KV_FLOAT(k, val) ((kv_attr){.key = (k), .type = KV_ATTR_FLOAT, .v.f = (double)(val)})
#define KV_BOOL(k, val)  ((kv_attr){.key = (k), .type = KV_ATTR_BOOL, .v.b = (val)})
#define KV_ERR(e)        KV_STR("err", kv_strerror(e))

/* Configure the process-wide logger. name is copied. Call before threads start. */
void kv_log_setup(kv_log_level level, kv_log_format format, const char *node_name);

/* Parse "debug|info|warn|error" / "text|json"; 0 on success, -1 if unknown. */
int kv_log_level_parse(const char *s, kv_log_level *out);
int kv_log_format_parse(const char *s, kv_log_format *out);

bool kv_log_enabled(kv_log_level level);

/* Emit one line. attrs[0] is a placeholder that is skipped; n counts it. */
void kv_log_emit(kv_log_level level, const char *msg, const kv_attr *attrs, int n);

#define KV_LOG_(lvl, msg, ...)                                                                     \
    do {                                                                                           \
        if (kv_log_enabled(lvl))                                                                   \
            kv_log_emit((lvl), (msg), (kv_attr[]){{0}, __VA_ARGS__},                               \
                        (int)(sizeof((kv_attr[]){{0}, __VA_ARGS__}) / sizeof(kv_attr)));           \
    } while (0)

#define kv_log_debug(msg, ...) KV_LOG_(KV_LOG_DEBUG, msg, __VA_ARGS__)
#define kv_log_info(msg, ...)  KV_LOG_(KV_LOG_INFO, msg, __VA_ARGS__)
#define kv_log_warn(msg, ...)  KV_LOG_(KV_LOG_WARN, msg, __VA_ARGS__)
#define kv_log_error(msg, ...) KV_LOG_(KV_LOG_ERROR, msg, __VA_ARGS__)

#endif
