/*
 * config.c — the key registry and the loaders behind config.h: built-in defaults, the
 * YAML file (libyaml), DIST_KV__* environment variables and command-line flags, applied
 * in that order so that a later source overrides an earlier one. Main thread only, before
 * the loop starts; the result is read-only afterwards.
 *
 * Design notes. Every key is one row of keytab[]: its name, type, default (as text),
 * bounds or allowed values, the field of kv_config it lands in, and its help line. Every
 * source hands values over as text and they all go through the same parser (cfg_set), so
 * a default, a YAML scalar, an environment variable and a flag are checked the same way
 * and fail with the same kind of message: "<key>: <reason> (<source>)". The row index is
 * also the index into kv_config.origin[], which records where each value came from.
 * kv_config_load builds into a scratch kv_config and copies it out only on success.
 */
#include "config/config.h"

#include "kvstore/error.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

typedef enum cfg_type {
    T_STRING,
    T_INT,
    T_PORT,
    T_BOOL,
    T_DURATION, /* stored as milliseconds */
    T_SIZE,     /* stored as bytes */
    T_RATIO,    /* "0.4": a fraction 0..1, stored as thousandths */
    T_ENUM,     /* stored as the index into choices */
    T_LIST,     /* host:port items, stored comma-separated */
} cfg_type;

enum {
    CF_NONEMPTY = 1 << 0, /* string: must not be empty */
    CF_HOSTPORT = 1 << 1, /* string: empty or host:port */
    CF_HTTPURL = 1 << 2,  /* string: http://host[:port][/...] */
};

typedef struct cfg_key {
    const char *name; /* "section.key" */
    cfg_type type;
    const char *def;            /* default as text; parsed like any other source */
    uint64_t min, max;          /* numeric types: inclusive bounds */
    const char *const *choices; /* T_ENUM: NULL-terminated, in enum order */
    const char *alias;          /* extra flag name without the dashes, or NULL */
    unsigned flags;             /* CF_* */
    size_t off, size;           /* the field in kv_config */
    const char *help;
} cfg_key;

#define AT(f) .off = offsetof(kv_config, f), .size = sizeof(((kv_config *)0)->f)

#define MS_S   1000ull
#define MS_MIN (60 * MS_S)
#define MS_H   (60 * MS_MIN)
#define KIB    1024ull
#define MIB    (1024 * KIB)
#define GIB    (1024 * MIB)

/* Numeric fields are written by size (see num_store); enums must be int-sized for that. */
_Static_assert(sizeof(kv_sync_mode) == sizeof(uint32_t), "enum size");
_Static_assert(sizeof(kv_log_level) == sizeof(uint32_t), "enum size");
_Static_assert(sizeof(kv_log_format) == sizeof(uint32_t), "enum size");
_Static_assert(sizeof(int) == sizeof(uint32_t), "int size");
/* The choices below are listed in enum order. */
_Static_assert(KV_SYNC_ALWAYS == 0 && KV_SYNC_INTERVAL == 1 && KV_SYNC_NEVER == 2, "sync");
_Static_assert(KV_LOG_DEBUG == 0 && KV_LOG_INFO == 1 && KV_LOG_WARN == 2 && KV_LOG_ERROR == 3,
               "level");
_Static_assert(KV_LOG_TEXT == 0 && KV_LOG_JSON == 1, "format");
_Static_assert(sizeof(kv_repl_lane) == sizeof(uint32_t), "enum size");
_Static_assert(KV_REPL_LANE_DIRECT == 0 && KV_REPL_LANE_NNG == 1, "lane");

static const char *const sync_choices[] = {"always", "interval", "never", NULL};
static const char *const level_choices[] = {"debug", "info", "warn", "error", NULL};
static const char *const format_choices[] = {"text", "json", NULL};
static const char *const lane_choices[] = {"direct", "nng", NULL};

/*
 * The key registry. To add a key: add its field to kv_config, then one row here; the
 * loaders, `kvstore config` and `kvstore --help` pick it up.
 */
/* clang-format off */
static const cfg_key keytab[] = {
    {.name = "server.host", .type = T_STRING, .def = "0.0.0.0", .alias = "host",
     .flags = CF_NONEMPTY, AT(server_host),
     .help = "address the client HTTP listener binds"},
    {.name = "server.port", .type = T_PORT, .def = "8080", .min = 0, .max = 65535,
     .alias = "port", AT(server_port),
     .help = "client HTTP listener port (0 = pick a free port)"},
    {.name = "cluster.host", .type = T_STRING, .def = "0.0.0.0", .flags = CF_NONEMPTY,
     AT(cluster_host),
     .help = "address the peer (nng) listener binds"},
    {.name = "cluster.port", .type = T_PORT, .def = "7946", .min = 1, .max = 65535,
     AT(cluster_port),
     .help = "peer (nng) listener port"},
    {.name = "cluster.advertise", .type = T_STRING, .def = "", .flags = CF_HOSTPORT,
     AT(cluster_advertise),
     .help = "host:port other nodes use to reach this one (empty = derived)"},
    {.name = "cluster.data_port", .type = T_PORT, .def = "0", .min = 0, .max = 65535,
     AT(cluster_data_port),
     .help = "replica data (TCP) port on cluster.host; 0 = a free port, told to peers by gossip"},
    {.name = "cluster.seeds", .type = T_LIST, .def = "", .alias = "seeds",
     AT(cluster_seeds),
     .help = "host:port list of nodes to join through (comma-separated in env and flags)"},
    {.name = "cluster.probe_interval", .type = T_DURATION, .def = "1s", .min = 10, .max = MS_MIN,
     AT(cluster_probe_interval_ms),
     .help = "SWIM protocol period: one member is probed per period"},
    {.name = "cluster.probe_timeout", .type = T_DURATION, .def = "500ms", .min = 1, .max = MS_MIN,
     AT(cluster_probe_timeout_ms),
     .help = "wait this long for an ack before probing indirectly (at most probe_interval)"},
    {.name = "cluster.indirect_probes", .type = T_INT, .def = "3", .min = 0, .max = 16,
     AT(cluster_indirect_probes),
     .help = "members asked to probe an unresponsive member on our behalf"},
    {.name = "cluster.suspicion_mult", .type = T_INT, .def = "4", .min = 1, .max = 100,
     AT(cluster_suspicion_mult),
     .help = "suspicion timeout = suspicion_mult * log10(members) * probe_interval (at least)"},
    {.name = "cluster.retransmit_mult", .type = T_INT, .def = "4", .min = 1, .max = 100,
     AT(cluster_retransmit_mult),
     .help = "each membership update is piggybacked retransmit_mult * log10(members+1) times"},
    {.name = "cluster.pushpull_interval", .type = T_DURATION, .def = "30s", .min = 0,
     .max = 24 * MS_H, AT(cluster_pushpull_interval_ms),
     .help = "full membership sync with one random member this often (0 = off)"},
    {.name = "cluster.leave_drain", .type = T_BOOL, .def = "false", .alias = "drain",
     AT(cluster_leave_drain),
     .help = "on SIGTERM, hand this node's ranges to their new owners before leaving (as kvtool leave); a second SIGTERM stops at once"},
    {.name = "cluster.leave_timeout", .type = T_DURATION, .def = "2s", .min = 0, .max = MS_MIN,
     AT(cluster_leave_timeout_ms),
     .help = "on SIGTERM, wait at most this long for the leave to reach other members"},
    {.name = "node.name", .type = T_STRING, .def = "", .alias = "name",
     AT(node_name),
     .help = "unique, human-readable node name (empty = host name + \"-\" + server.port)"},
    {.name = "node.data_dir", .type = T_STRING, .def = "./data", .alias = "data-dir",
     .flags = CF_NONEMPTY, AT(node_data_dir),
     .help = "directory for storage, node id, hints"},
    {.name = "storage.sync", .type = T_ENUM, .def = "interval", .choices = sync_choices,
     AT(storage_sync),
     .help = "when writes reach the disk: always (fsync before ack), interval, never"},
    {.name = "storage.sync_interval", .type = T_DURATION, .def = "100ms", .min = 1, .max = MS_H,
     AT(storage_sync_interval_ms),
     .help = "fsync period when storage.sync is interval"},
    {.name = "storage.segment_bytes", .type = T_SIZE, .def = "64MiB", .min = 4 * KIB, .max = GIB,
     AT(storage_segment_bytes),
     .help = "size at which a log segment is rotated"},
    {.name = "storage.compaction_dead_ratio", .type = T_RATIO, .def = "0.4", .min = 50,
     .max = 1000, AT(storage_compaction_dead_ratio_milli),
     .help = "compact when this fraction of the segment bytes is garbage (1 = practically never)"},
    {.name = "storage.compaction_min_bytes", .type = T_SIZE, .def = "64MiB", .min = 0,
     .max = 1024 * GIB, AT(storage_compaction_min_bytes),
     .help = "no automatic compaction while the segments hold less than this"},
    {.name = "storage.compression_threshold", .type = T_SIZE, .def = "1KiB", .min = 0,
     .max = GIB, AT(storage_compression_threshold),
     .help = "LZ4-compress values of at least this size when it saves space (0 = never)"},
    {.name = "replication.n", .type = T_INT, .def = "3", .min = 1, .max = 32,
     AT(replication_n),
     .help = "replicas per key"},
    {.name = "replication.r", .type = T_INT, .def = "2", .min = 1, .max = 32,
     AT(replication_r),
     .help = "default read quorum (at most replication.n)"},
    {.name = "replication.w", .type = T_INT, .def = "2", .min = 1, .max = 32,
     AT(replication_w),
     .help = "default write quorum (at most replication.n)"},
    {.name = "replication.sloppy_quorum", .type = T_BOOL, .def = "false",
     AT(replication_sloppy_quorum),
     .help = "let fallback nodes count toward quorums (weaker guarantees)"},
    {.name = "replication.timeout", .type = T_DURATION, .def = "2s", .min = 10, .max = MS_MIN,
     AT(replication_timeout_ms),
     .help = "a replicated read or write that has not reached its quorum by then fails (503)"},
    {.name = "replication.read_repair", .type = T_BOOL, .def = "true",
     AT(replication_read_repair),
     .help = "reads that find stale replicas bring them up to date"},
    {.name = "replication.hints_max_count", .type = T_INT, .def = "1000000", .min = 0,
     .max = 1000000000, AT(replication_hints_max_count),
     .help = "hints (writes kept for down replicas) held at most; beyond, hints are dropped (0 = keep none)"},
    {.name = "replication.hints_max_bytes", .type = T_SIZE, .def = "1GiB", .min = 0,
     .max = 1024 * GIB, AT(replication_hints_max_bytes),
     .help = "key + value bytes of hints held at most; beyond, hints are dropped (0 = keep none)"},
    {.name = "replication.batching", .type = T_BOOL, .def = "true",
     AT(replication_batching),
     .help = "send replica messages for one peer ready in the same loop turn as one message"},
    {.name = "replication.lane", .type = T_ENUM, .def = "direct", .choices = lane_choices,
     AT(replication_lane),
     .help = "replica traffic: direct (TCP on cluster.data_port, the fast path) or nng"},
    {.name = "ring.tokens", .type = T_INT, .def = "64", .min = 1, .max = 4096,
     AT(ring_tokens),
     .help = "tokens (virtual nodes) per member on the hash ring; same on every node"},
    {.name = "antientropy.interval", .type = T_DURATION, .def = "30s", .min = 0,
     .max = 24 * MS_H, AT(antientropy_interval_ms),
     .help = "how often a node compares its anti-entropy tree with the next replica it shares ranges with (0 = never)"},
    {.name = "antientropy.gc_grace", .type = T_DURATION, .def = "240h", .min = 0,
     .max = 24 * 365 * MS_H, AT(antientropy_gc_grace_ms),
     .help = "a tombstone is purged once every replica holds it and it is at least this old"},
    {.name = "streaming.rate", .type = T_SIZE, .def = "32MiB", .min = 0, .max = 64 * GIB,
     AT(streaming_rate),
     .help = "record bytes (uncompressed) per second a node sends at most for anti-entropy, joins, leaves and removals, all together (0 = no limit)"},
    {.name = "limits.max_key", .type = T_INT, .def = "1024", .min = 1, .max = 1024,
     AT(limits_max_key),
     .help = "largest key in bytes"},
    {.name = "limits.max_value", .type = T_SIZE, .def = "1MiB", .min = 1, .max = GIB,
     AT(limits_max_value),
     .help = "largest value in bytes"},
    {.name = "limits.max_header", .type = T_SIZE, .def = "16KiB", .min = KIB, .max = MIB,
     AT(limits_max_header),
     .help = "largest request line + headers in bytes"},
    {.name = "limits.max_connections", .type = T_INT, .def = "4096", .min = 1, .max = 1000000,
     AT(limits_max_connections),
     .help = "concurrent client connections"},
    {.name = "limits.idle_timeout", .type = T_DURATION, .def = "60s", .min = 1, .max = 24 * MS_H,
     AT(limits_idle_timeout_ms),
     .help = "close a keep-alive connection idle this long"},
    {.name = "limits.request_timeout", .type = T_DURATION, .def = "10s", .min = 1, .max = MS_H,
     AT(limits_request_timeout_ms),
     .help = "a request must arrive whole within this"},
    {.name = "log.level", .type = T_ENUM, .def = "info", .choices = level_choices,
     .alias = "log-level", AT(log_level),
     .help = "least severe level logged"},
    {.name = "log.format", .type = T_ENUM, .def = "text", .choices = format_choices,
     .alias = "log-format", AT(log_format),
     .help = "log line format"},
    {.name = "client.server_url", .type = T_STRING, .def = "http://127.0.0.1:8080",
     .alias = "server", .flags = CF_HTTPURL, AT(client_server_url),
     .help = "where client commands send requests"},
    {.name = "client.timeout", .type = T_DURATION, .def = "10s", .min = 1, .max = MS_H,
     AT(client_timeout_ms),
     .help = "client request timeout"},
};
/* clang-format on */

#define NKEYS ((int)(sizeof(keytab) / sizeof(keytab[0])))
_Static_assert(sizeof(keytab) / sizeof(keytab[0]) <=
                   sizeof(((kv_config *)0)->origin) / sizeof(((kv_config *)0)->origin[0]),
               "kv_config.origin[] too small for the key table");

#define ENV_PREFIX "DIST_KV__"

/* ---- small helpers ---- */

static int key_find(const char *name, size_t n)
{
    for (int i = 0; i < NKEYS; i++)
        if (strlen(keytab[i].name) == n && strncasecmp(keytab[i].name, name, n) == 0)
            return i;
    return -1;
}

static int key_find_flag(const char *name, size_t n)
{
    int i = key_find(name, n);
    if (i >= 0)
        return i;
    for (i = 0; i < NKEYS; i++)
        if (keytab[i].alias && strlen(keytab[i].alias) == n &&
            strncmp(keytab[i].alias, name, n) == 0)
            return i;
    return -1;
}

/* True if some key is "<section>.<...>". */
static bool section_known(const char *section, size_t n)
{
    for (int i = 0; i < NKEYS; i++)
        if (strncasecmp(keytab[i].name, section, n) == 0 && keytab[i].name[n] == '.')
            return true;
    return false;
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void num_store(kv_config *cfg, const cfg_key *k, uint64_t v)
{
    char *p = (char *)cfg + k->off;
    if (k->size == sizeof(uint64_t)) {
        memcpy(p, &v, sizeof(v));
    } else if (k->size == sizeof(uint32_t)) {
        /* int, uint32_t and int-sized enum fields; bounds keep v within INT_MAX */
        assert(v <= INT32_MAX);
        uint32_t u = (uint32_t)v;
        memcpy(p, &u, sizeof(u));
    } else if (k->size == sizeof(bool)) {
        bool b = v != 0;
        memcpy(p, &b, sizeof(b));
    } else {
        assert(!"unsupported field size in keytab");
    }
}

static uint64_t num_load(const kv_config *cfg, const cfg_key *k)
{
    const char *p = (const char *)cfg + k->off;
    if (k->size == sizeof(uint64_t)) {
        uint64_t v;
        memcpy(&v, p, sizeof(v));
        return v;
    }
    if (k->size == sizeof(uint32_t)) {
        uint32_t u;
        memcpy(&u, p, sizeof(u));
        return u;
    }
    bool b;
    memcpy(&b, p, sizeof(b));
    return b;
}

/* Unsigned decimal, digits only, no overflow. */
static bool parse_digits(const char *s, size_t n, uint64_t *out)
{
    if (n == 0)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool mul_add(uint64_t *acc, uint64_t n, uint64_t mult)
{
    if (mult && n > UINT64_MAX / mult)
        return false;
    if (*acc > UINT64_MAX - n * mult)
        return false;
    *acc += n * mult;
    return true;
}

/* "250ms", "10s", "2m", "1h", "1m30s", or a bare integer of milliseconds. */
static bool parse_duration(const char *s, uint64_t *out)
{
    size_t len = strlen(s);
    if (parse_digits(s, len, out))
        return true;
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"ms", 1}, {"s", MS_S}, {"m", MS_MIN}, {"h", MS_H}};
    uint64_t total = 0;
    const char *p = s;
    if (*p == '\0')
        return false;
    while (*p) {
        size_t nd = 0;
        while (isdigit((unsigned char)p[nd]))
            nd++;
        uint64_t n;
        if (!parse_digits(p, nd, &n))
            return false;
        p += nd;
        size_t nu = 0;
        while (isalpha((unsigned char)p[nu]))
            nu++;
        uint64_t mult = 0;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
            if (strlen(units[i].unit) == nu && strncasecmp(units[i].unit, p, nu) == 0)
                mult = units[i].ms;
        if (!mult || !mul_add(&total, n, mult))
            return false;
        p += nu;
    }
    *out = total;
    return true;
}

/* "64MiB", "1KiB", "1GB" (decimal), "512B" or a bare integer of bytes. */
static bool parse_size(const char *s, uint64_t *out)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {{"", 1},
                 {"b", 1},
                 {"kib", KIB},
                 {"mib", MIB},
                 {"gib", GIB},
                 {"tib", 1024 * GIB},
                 {"kb", 1000},
                 {"mb", 1000000},
                 {"gb", 1000000000},
                 {"tb", 1000000000000ull}};
    size_t nd = 0;
    while (isdigit((unsigned char)s[nd]))
        nd++;
    uint64_t n;
    if (!parse_digits(s, nd, &n))
        return false;
    const char *u = s + nd;
    while (*u == ' ')
        u++;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(units[i].unit, u) == 0) {
            uint64_t v = 0;
            if (!mul_add(&v, n, units[i].mult))
                return false;
            *out = v;
            return true;
        }
    }
    return false;
}

/* "0.4", ".25", "1", "0.125" → thousandths (at most three decimals). */
static bool parse_ratio(const char *s, uint64_t *out)
{
    size_t nd = 0;
    while (isdigit((unsigned char)s[nd]))
        nd++;
    uint64_t whole = 0, frac = 0;
    if (nd > 1 || (nd == 1 && s[0] != '0' && s[0] != '1'))
        return false;
    if (nd == 1)
        whole = (uint64_t)(s[0] - '0');
    const char *p = s + nd;
    if (*p == '.') {
        p++;
        int k = 0;
        for (; isdigit((unsigned char)p[k]); k++) {
            if (k >= 3)
                return false;
            frac = frac * 10 + (uint64_t)(p[k] - '0');
        }
        if (k == 0 && nd == 0)
            return false;
        for (int m = k; m < 3; m++)
            frac *= 10;
        p += k;
    } else if (nd == 0) {
        return false;
    }
    if (*p)
        return false;
    *out = whole * 1000 + frac;
    return true;
}

static bool parse_bool(const char *s, uint64_t *out)
{
    static const char *const t[] = {"true", "yes", "on", "1"};
    static const char *const f[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, t[i]) == 0) {
            *out = 1;
            return true;
        }
        if (strcasecmp(s, f[i]) == 0) {
            *out = 0;
            return true;
        }
    }
    return false;
}

static void fmt_duration(char *out, size_t cap, uint64_t ms)
{
    if (ms && ms % MS_H == 0)
        snprintf(out, cap, "%lluh", (unsigned long long)(ms / MS_H));
    else if (ms && ms % MS_MIN == 0)
        snprintf(out, cap, "%llum", (unsigned long long)(ms / MS_MIN));
    else if (ms && ms % MS_S == 0)
        snprintf(out, cap, "%llus", (unsigned long long)(ms / MS_S));
    else
        snprintf(out, cap, "%llums", (unsigned long long)ms);
}

static void fmt_size(char *out, size_t cap, uint64_t b)
{
    if (b && b % GIB == 0)
        snprintf(out, cap, "%lluGiB", (unsigned long long)(b / GIB));
    else if (b && b % MIB == 0)
        snprintf(out, cap, "%lluMiB", (unsigned long long)(b / MIB));
    else if (b && b % KIB == 0)
        snprintf(out, cap, "%lluKiB", (unsigned long long)(b / KIB));
    else
        snprintf(out, cap, "%llu", (unsigned long long)b);
}

static void fmt_num(const cfg_key *k, char *out, size_t cap, uint64_t v)
{
    if (k->type == T_DURATION)
        fmt_duration(out, cap, v);
    else if (k->type == T_SIZE)
        fmt_size(out, cap, v);
    else if (k->type == T_RATIO)
        snprintf(out, cap, "%g", (double)v / 1000.0);
    else
        snprintf(out, cap, "%llu", (unsigned long long)v);
}

/* "host:port" with a non-empty host (IPv6 in brackets) and a port 1..65535. */
static bool valid_hostport(const char *s, size_t n)
{
    const char *colon = NULL;
    for (size_t i = 0; i < n; i++) {
        if (isspace((unsigned char)s[i]) || iscntrl((unsigned char)s[i]) || s[i] == ',')
            return false;
        if (s[i] == ':')
            colon = s + i;
    }
    if (!colon || colon == s)
        return false;
    size_t hl = (size_t)(colon - s);
    if (s[0] == '[') {
        if (hl < 3 || s[hl - 1] != ']')
            return false;
    } else if (memchr(s, ':', hl)) {
        return false; /* a bare IPv6 address needs brackets */
    }
    uint64_t port;
    if (!parse_digits(colon + 1, n - hl - 1, &port))
        return false;
    return port >= 1 && port <= 65535;
}

static bool valid_http_url(const char *s)
{
    if (strncasecmp(s, "http://", 7) != 0)
        return false;
    const char *h = s + 7;
    return *h && *h != '/' && *h != ':' && !strpbrk(h, " \t");
}

/* ---- sources and error lines ---- */

static const char *source_kind(kv_cfg_source s)
{
    switch (s) {
    case KV_CFG_FILE:
        return "file";
    case KV_CFG_ENV:
        return "env";
    case KV_CFG_FLAG:
        return "flag";
    case KV_CFG_DEFAULT:
        break;
    }
    return "default";
}

/* "(file x.yaml:3)", "(env DIST_KV__SERVER__PORT)", "(flag --port)", "(default)" */
static void source_desc(char *out, size_t cap, kv_cfg_source s, const char *where)
{
    if (s == KV_CFG_DEFAULT || !where || !*where)
        snprintf(out, cap, "%s", source_kind(s));
    else
        snprintf(out, cap, "%s %s", source_kind(s), where);
}

static int fail_at(kv_buf *err, kv_cfg_source src, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Append "<formatted reason> (<source>)" to err; returns KV_ECONFIG. */
static int fail_at(kv_buf *err, kv_cfg_source src, const char *where, const char *fmt, ...)
{
    char msg[1024], desc[KV_CFG_STR_MAX + 16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    source_desc(desc, sizeof(desc), src, where);
    if (err)
        kv_buf_printf(err, "%s (%s)", msg, desc);
    return KV_ECONFIG;
}

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    size_t i = 0;
    while (isspace((unsigned char)s[i]))
        i++;
    if (i)
        memmove(s, s + i, n - i + 1);
}

/*
 * Normalize a host:port list ("a:1, b:2," → "a:1,b:2") into out, checking every item.
 * On a bad item, writes it to bad and returns false.
 */
static bool list_normalize(const char *in, char *out, size_t cap, char *bad, size_t badcap,
                           bool *toolong)
{
    size_t o = 0;
    *toolong = false;
    const char *p = in;
    while (*p) {
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        size_t n = (size_t)(b - a);
        if (n) {
            if (!valid_hostport(a, n)) {
                snprintf(bad, badcap, "%.*s", (int)(n > 200 ? 200 : n), a);
                return false;
            }
            if (o + n + 2 > cap) {
                *toolong = true;
                return false;
            }
            if (o)
                out[o++] = ',';
            memcpy(out + o, a, n);
            o += n;
        }
        p = *end ? end + 1 : end;
    }
    out[o] = '\0';
    return true;
}

/*
 * Parse text as the value of keytab[idx] and store it in cfg with its origin. On a bad
 * value appends "<key>: <reason> (<source>)" to err and returns KV_ECONFIG.
 */
static int cfg_set(kv_config *cfg, int idx, const char *text, kv_cfg_source src, const char *where,
                   kv_buf *err)
{
    const cfg_key *k = &keytab[idx];
    char val[KV_CFG_STR_MAX + 1];
    if (strlen(text) > KV_CFG_STR_MAX)
        return fail_at(err, src, where, "%s: value is too long (%zu bytes)", k->name, strlen(text));
    copy_str(val, sizeof(val), text);
    if (k->type != T_STRING)
        trim(val);
    for (const char *c = val; *c; c++)
        if (iscntrl((unsigned char)*c))
            return fail_at(err, src, where, "%s: value contains a control character", k->name);

    uint64_t v = 0;
    char shown[128];
    snprintf(shown, sizeof(shown), "'%.100s%s'", val, strlen(val) > 100 ? "..." : "");
    switch (k->type) {
    case T_STRING: {
        char *dst = (char *)cfg + k->off;
        if (strlen(val) >= k->size)
            return fail_at(err, src, where, "%s: value is too long (at most %zu bytes)", k->name,
                           k->size - 1);
        if ((k->flags & CF_NONEMPTY) && !*val)
            return fail_at(err, src, where, "%s: must not be empty", k->name);
        if ((k->flags & CF_HOSTPORT) && *val && !valid_hostport(val, strlen(val)))
            return fail_at(err, src, where, "%s: %s is not host:port", k->name, shown);
        if ((k->flags & CF_HTTPURL) && !valid_http_url(val))
            return fail_at(err, src, where, "%s: %s is not an http:// URL", k->name, shown);
        copy_str(dst, k->size, val);
        break;
    }
    case T_LIST: {
        char norm[KV_CFG_STR_MAX], bad[256];
        bool toolong;
        if (!list_normalize(val, norm, k->size < sizeof(norm) ? k->size : sizeof(norm), bad,
                            sizeof(bad), &toolong)) {
            if (toolong)
                return fail_at(err, src, where, "%s: list is too long (at most %zu bytes)", k->name,
                               k->size - 1);
            return fail_at(err, src, where, "%s: item '%s' is not host:port", k->name, bad);
        }
        copy_str((char *)cfg + k->off, k->size, norm);
        break;
    }
    case T_INT:
    case T_PORT:
    case T_DURATION:
    case T_SIZE:
    case T_RATIO: {
        bool ok;
        const char *what;
        if (k->type == T_RATIO) {
            ok = parse_ratio(val, &v);
            what = "a fraction (e.g. 0.4)";
        } else if (k->type == T_DURATION) {
            ok = parse_duration(val, &v);
            what = "a duration (e.g. 250ms, 10s, 2m, 1h, or milliseconds)";
        } else if (k->type == T_SIZE) {
            ok = parse_size(val, &v);
            what = "a size (e.g. 4096, 16KiB, 64MiB)";
        } else {
            ok = parse_digits(val, strlen(val), &v);
            what = "an integer";
        }
        bool negative = !ok && val[0] == '-' && parse_digits(val + 1, strlen(val + 1), &v);
        char lo[32], hi[32];
        fmt_num(k, lo, sizeof(lo), k->min);
        fmt_num(k, hi, sizeof(hi), k->max);
        if (!ok && !negative)
            return fail_at(err, src, where, "%s: %s is not %s", k->name, shown, what);
        if (negative || v < k->min || v > k->max) {
            if (k->type == T_PORT && k->min == 0)
                return fail_at(err, src, where,
                               "%s: %s is out of range (%s..%s; 0 picks a free port)", k->name,
                               shown, lo, hi);
            return fail_at(err, src, where, "%s: %s is out of range (%s..%s)", k->name, shown, lo,
                           hi);
        }
        num_store(cfg, k, v);
        break;
    }
    case T_BOOL:
        if (!parse_bool(val, &v))
            return fail_at(err, src, where, "%s: %s is not a boolean (true or false)", k->name,
                           shown);
        num_store(cfg, k, v);
        break;
    case T_ENUM: {
        int found = -1;
        for (int i = 0; k->choices[i]; i++)
            if (strcasecmp(k->choices[i], val) == 0)
                found = i;
        if (found < 0) {
            char allowed[256] = "";
            for (int i = 0; k->choices[i]; i++) {
                if (i)
                    strncat(allowed, ", ", sizeof(allowed) - strlen(allowed) - 1);
                strncat(allowed, k->choices[i], sizeof(allowed) - strlen(allowed) - 1);
            }
            return fail_at(err, src, where, "%s: %s is not one of: %s", k->name, shown, allowed);
        }
        num_store(cfg, k, (uint64_t)found);
        break;
    }
    }
    cfg->origin[idx].source = src;
    copy_str(cfg->origin[idx].where, sizeof(cfg->origin[idx].where), where ? where : "");
    return KV_OK;
}

static void derive_node_name(kv_config *cfg)
{
    char host[256];
    if (gethostname(host, sizeof(host)) != 0 || !host[0])
        copy_str(host, sizeof(host), "kvstore");
    host[sizeof(host) - 1] = '\0';
    snprintf(cfg->node_name, sizeof(cfg->node_name), "%.100s-%d", host, cfg->server_port);
}

void kv_config_defaults(kv_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (int i = 0; i < NKEYS; i++) {
        int rc = cfg_set(cfg, i, keytab[i].def, KV_CFG_DEFAULT, "", NULL);
        assert(rc == KV_OK && "keytab default does not parse");
        (void)rc;
    }
    derive_node_name(cfg);
}

/* ---- YAML file ---- */

typedef struct yaml_ctx {
    kv_config *cfg;
    const char *path;
    yaml_document_t *doc;
    int seen_line[sizeof(((kv_config *)0)->origin) / sizeof(((kv_config *)0)->origin[0])];
    kv_buf *err;
} yaml_ctx;

static int node_line(const yaml_node_t *n)
{
    return (int)n->start_mark.line + 1;
}

static void file_where(char *out, size_t cap, const char *path, int line)
{
    snprintf(out, cap, "%s:%d", path, line);
}

static bool scalar_is_null(const yaml_node_t *n)
{
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = (const char *)n->data.scalar.value;
    return !*s || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
           strcmp(s, "NULL") == 0;
}

/* Apply the value node v to keytab[idx]; line is the line of its key. */
static int yaml_apply(yaml_ctx *y, int idx, const yaml_node_t *v, int line)
{
    const cfg_key *k = &keytab[idx];
    char where[KV_CFG_STR_MAX];
    file_where(where, sizeof(where), y->path, line);
    if (y->seen_line[idx])
        return fail_at(y->err, KV_CFG_FILE, where, "%s: duplicate key (first set at line %d)",
                       k->name, y->seen_line[idx]);
    y->seen_line[idx] = line;

    if (v->type == YAML_SCALAR_NODE) {
        const char *s = scalar_is_null(v) ? "" : (const char *)v->data.scalar.value;
        return cfg_set(y->cfg, idx, s, KV_CFG_FILE, where, y->err);
    }
    if (v->type == YAML_SEQUENCE_NODE && k->type == T_LIST) {
        kv_buf joined = KV_BUF_INIT;
        int rc = KV_OK;
        for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
             it++) {
            yaml_node_t *item = yaml_document_get_node(y->doc, *it);
            if (!item || item->type != YAML_SCALAR_NODE ||
                strchr((char *)item->data.scalar.value, ',')) {
                char iw[KV_CFG_STR_MAX];
                file_where(iw, sizeof(iw), y->path, item ? node_line(item) : line);
                rc = fail_at(y->err, KV_CFG_FILE, iw,
                             "%s: every item of the list must be one host:port", k->name);
                break;
            }
            if ((joined.len && kv_buf_appends(&joined, ",") != KV_OK) ||
                kv_buf_appends(&joined, (const char *)item->data.scalar.value) != KV_OK) {
                rc = KV_ENOMEM;
                break;
            }
        }
        if (rc == KV_OK)
            rc = cfg_set(y->cfg, idx, joined.data ? joined.data : "", KV_CFG_FILE, where, y->err);
        kv_buf_free(&joined);
        return rc;
    }
    return fail_at(y->err, KV_CFG_FILE, where, "%s: expected a single value, not a %s", k->name,
                   v->type == YAML_MAPPING_NODE ? "mapping" : "list");
}

static int yaml_walk(yaml_ctx *y, const yaml_node_t *root)
{
    char where[KV_CFG_STR_MAX];
    if (root->type != YAML_MAPPING_NODE) {
        file_where(where, sizeof(where), y->path, node_line(root));
        return fail_at(y->err, KV_CFG_FILE, where,
                       "the config file must be a mapping of sections (e.g. server: {port: 8080})");
    }
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        yaml_node_t *kn = yaml_document_get_node(y->doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(y->doc, p->value);
        if (!kn || !vn)
            continue;
        int line = node_line(kn);
        file_where(where, sizeof(where), y->path, line);
        if (kn->type != YAML_SCALAR_NODE)
            return fail_at(y->err, KV_CFG_FILE, where, "keys must be plain names");
        const char *sec = (const char *)kn->data.scalar.value;
        size_t seclen = strlen(sec);

        /* A dotted top-level key ("server.port: 8080") names the key directly. */
        if (strchr(sec, '.')) {
            int idx = key_find(sec, seclen);
            if (idx < 0)
                return fail_at(y->err, KV_CFG_FILE, where, "unknown key '%.200s'", sec);
            int rc = yaml_apply(y, idx, vn, line);
            if (rc != KV_OK)
                return rc;
            continue;
        }
        bool known = section_known(sec, seclen);
        if (vn->type == YAML_SCALAR_NODE && scalar_is_null(vn) && known)
            continue; /* "server:" with nothing under it */
        if (vn->type != YAML_MAPPING_NODE) {
            if (!known)
                return fail_at(y->err, KV_CFG_FILE, where, "unknown key '%.200s'", sec);
            return fail_at(y->err, KV_CFG_FILE, where,
                           "'%.200s' is a section: expected a mapping of its keys", sec);
        }
        for (yaml_node_pair_t *q = vn->data.mapping.pairs.start; q < vn->data.mapping.pairs.top;
             q++) {
            yaml_node_t *skn = yaml_document_get_node(y->doc, q->key);
            yaml_node_t *svn = yaml_document_get_node(y->doc, q->value);
            if (!skn || !svn)
                continue;
            int sline = node_line(skn);
            file_where(where, sizeof(where), y->path, sline);
            if (skn->type != YAML_SCALAR_NODE)
                return fail_at(y->err, KV_CFG_FILE, where, "keys must be plain names");
            char full[512];
            snprintf(full, sizeof(full), "%.200s.%.200s", sec,
                     (const char *)skn->data.scalar.value);
            int idx = key_find(full, strlen(full));
            if (idx < 0)
                return fail_at(y->err, KV_CFG_FILE, where, "unknown key '%s'", full);
            int rc = yaml_apply(y, idx, svn, sline);
            if (rc != KV_OK)
                return rc;
        }
    }
    return KV_OK;
}

static int yaml_syntax_error(const yaml_parser_t *ps, const char *path, kv_buf *err)
{
    char where[KV_CFG_STR_MAX];
    if (ps->error == YAML_MEMORY_ERROR)
        return KV_ENOMEM;
    if (ps->error == YAML_READER_ERROR) {
        snprintf(where, sizeof(where), "%s, byte %zu", path, ps->problem_offset);
        return fail_at(err, KV_CFG_FILE, where, "YAML read error: %s",
                       ps->problem ? ps->problem : "unreadable input");
    }
    file_where(where, sizeof(where), path, (int)ps->problem_mark.line + 1);
    if (ps->context)
        return fail_at(err, KV_CFG_FILE, where, "YAML syntax error: %s (%s at line %d)",
                       ps->problem ? ps->problem : "invalid YAML", ps->context,
                       (int)ps->context_mark.line + 1);
    return fail_at(err, KV_CFG_FILE, where, "YAML syntax error: %s",
                   ps->problem ? ps->problem : "invalid YAML");
}

static int load_file(kv_config *cfg, const char *path, kv_buf *err)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    int e = errno;
    if (f && fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        f = NULL;
        e = EISDIR;
    }
    if (!f)
        return fail_at(err, KV_CFG_FLAG, "--config", "cannot read config file '%s': %s", path,
                       strerror(e));

    yaml_parser_t ps;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&ps)) {
        fclose(f);
        return KV_ENOMEM;
    }
    yaml_parser_set_input_file(&ps, f);
    int rc = KV_OK;
    if (!yaml_parser_load(&ps, &doc)) {
        rc = yaml_syntax_error(&ps, path, err);
    } else {
        yaml_node_t *root = yaml_document_get_root_node(&doc);
        if (root) {
            yaml_ctx *y = calloc(1, sizeof(*y));
            if (!y) {
                rc = KV_ENOMEM;
            } else {
                y->cfg = cfg;
                y->path = path;
                y->doc = &doc;
                y->err = err;
                rc = yaml_walk(y, root);
                free(y);
            }
            /* A second document would be silently ignored; refuse it instead. */
            if (rc == KV_OK) {
                yaml_document_t doc2;
                if (!yaml_parser_load(&ps, &doc2)) {
                    rc = yaml_syntax_error(&ps, path, err);
                } else {
                    yaml_node_t *r2 = yaml_document_get_root_node(&doc2);
                    if (r2) {
                        char where[KV_CFG_STR_MAX];
                        file_where(where, sizeof(where), path, node_line(r2));
                        rc = fail_at(err, KV_CFG_FILE, where,
                                     "the config file must hold one YAML document");
                    }
                    yaml_document_delete(&doc2);
                }
            }
        }
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&ps);
    fclose(f);
    return rc;
}

/* ---- environment ---- */

static int load_env(kv_config *cfg, char **envp, kv_buf *err)
{
    const size_t plen = strlen(ENV_PREFIX);
    for (char **e = envp; e && *e; e++) {
        if (strncmp(*e, ENV_PREFIX, plen) != 0)
            continue;
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        char var[256];
        size_t vlen = (size_t)(eq - *e);
        snprintf(var, sizeof(var), "%.*s", (int)(vlen < 255 ? vlen : 255), *e);

        /* DIST_KV__SECTION__KEY → section.key (the key itself may hold single '_') */
        char name[256];
        const char *body = var + plen;
        const char *sep = strstr(body, "__");
        if (sep)
            snprintf(name, sizeof(name), "%.*s.%s", (int)(sep - body), body, sep + 2);
        else
            snprintf(name, sizeof(name), "%s", body);
        for (char *c = name; *c; c++)
            *c = (char)tolower((unsigned char)*c);
        int idx = sep ? key_find(name, strlen(name)) : -1;
        if (idx < 0)
            return fail_at(err, KV_CFG_ENV, var, "unknown key '%s'", name);
        int rc = cfg_set(cfg, idx, eq + 1, KV_CFG_ENV, var, err);
        if (rc != KV_OK)
            return rc;
    }
    return KV_OK;
}

/* ---- flags ---- */

int kv_config_parse_args(int argc, char **argv, kv_cfg_args *args, char **rest, int *nrest,
                         kv_buf *err)
{
    kv_cfg_args a;
    memset(&a, 0, sizeof(a));
    int nr = 0;
    const int maxflags = (int)(sizeof(a.flags) / sizeof(a.flags[0]));

    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0) {
            while (i < argc)
                rest[nr++] = argv[i++];
            break;
        }
        if (strncmp(arg, "--", 2) != 0) {
            rest[nr++] = argv[i];
            continue;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);

        bool is_config = nlen == 6 && strncmp(name, "config", 6) == 0;
        bool is_set = nlen == 3 && strncmp(name, "set", 3) == 0;
        int idx = (is_config || is_set) ? -1 : key_find_flag(name, nlen);
        if (!is_config && !is_set && idx < 0) {
            const char *dot = memchr(name, '.', nlen);
            if (dot && section_known(name, (size_t)(dot - name)))
                return fail_at(err, KV_CFG_FLAG, arg, "unknown key '%.*s'", (int)nlen, name);
            rest[nr++] = argv[i]; /* a command's own flag */
            continue;
        }

        char flag[80];
        snprintf(flag, sizeof(flag), "--%.*s", (int)(nlen < 70 ? nlen : 70), name);
        const char *value;
        uint64_t b;
        if (eq) {
            value = eq + 1;
        } else if (idx >= 0 && keytab[idx].type == T_BOOL &&
                   (i + 1 >= argc || !parse_bool(argv[i + 1], &b))) {
            value = "true"; /* a bare boolean flag: --drain */
        } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
            value = argv[++i];
        } else if (is_config) {
            return fail_at(err, KV_CFG_FLAG, flag, "missing config file name");
        } else if (is_set) {
            return fail_at(err, KV_CFG_FLAG, flag, "missing KEY=VALUE");
        } else {
            return fail_at(err, KV_CFG_FLAG, flag, "%s: missing value", keytab[idx].name);
        }

        if (is_config) {
            if (!*value)
                return fail_at(err, KV_CFG_FLAG, flag, "missing config file name");
            a.config_file = value;
            continue;
        }
        if (a.nflags == maxflags)
            return fail_at(err, KV_CFG_FLAG, flag, "too many configuration flags (at most %d)",
                           maxflags);
        if (is_set) {
            const char *kv_eq = strchr(value, '=');
            if (!kv_eq)
                return fail_at(err, KV_CFG_FLAG, flag, "expected KEY=VALUE, got '%.200s'", value);
            idx = key_find(value, (size_t)(kv_eq - value));
            if (idx < 0)
                return fail_at(err, KV_CFG_FLAG, flag, "unknown key '%.*s'",
                               (int)(kv_eq - value > 200 ? 200 : kv_eq - value), value);
            snprintf(a.flags[a.nflags].where, sizeof(a.flags[a.nflags].where), "--set %s",
                     keytab[idx].name);
            value = kv_eq + 1;
        } else {
            copy_str(a.flags[a.nflags].where, sizeof(a.flags[a.nflags].where), flag);
        }
        a.flags[a.nflags].key = keytab[idx].name;
        a.flags[a.nflags].value = value;
        a.nflags++;
    }
    *args = a;
    *nrest = nr;
    return KV_OK;
}

/* ---- loading ---- */

static int cross_check(const kv_config *cfg, kv_buf *err)
{
    static const char *const quorum[] = {"replication.r", "replication.w"};
    int in = key_find("replication.n", strlen("replication.n"));
    for (int q = 0; q < 2; q++) {
        int iq = key_find(quorum[q], strlen(quorum[q]));
        uint64_t v = num_load(cfg, &keytab[iq]), n = num_load(cfg, &keytab[in]);
        if (v > n) {
            /* Either key may be the mistake: name both sources. */
            char qdesc[KV_CFG_STR_MAX + 16], ndesc[KV_CFG_STR_MAX + 16];
            source_desc(qdesc, sizeof(qdesc), cfg->origin[iq].source, cfg->origin[iq].where);
            source_desc(ndesc, sizeof(ndesc), cfg->origin[in].source, cfg->origin[in].where);
            if (err)
                kv_buf_printf(err,
                              "%s: %llu is greater than replication.n = %llu (%s from %s, "
                              "replication.n from %s)",
                              quorum[q], (unsigned long long)v, (unsigned long long)n, quorum[q],
                              qdesc, ndesc);
            return KV_ECONFIG;
        }
    }
    /* A probe that may outlive its period would overlap the next one. */
    if (cfg->cluster_probe_timeout_ms > cfg->cluster_probe_interval_ms) {
        int it = key_find("cluster.probe_timeout", strlen("cluster.probe_timeout"));
        char desc[KV_CFG_STR_MAX + 16];
        source_desc(desc, sizeof(desc), cfg->origin[it].source, cfg->origin[it].where);
        if (err)
            kv_buf_printf(err,
                          "cluster.probe_timeout: %llums is longer than cluster.probe_interval "
                          "(%llums) (%s)",
                          (unsigned long long)cfg->cluster_probe_timeout_ms,
                          (unsigned long long)cfg->cluster_probe_interval_ms, desc);
        return KV_ECONFIG;
    }
    return KV_OK;
}

int kv_config_load(kv_config *cfg, const kv_cfg_args *args, char **envp, kv_buf *err)
{
    kv_config *c = malloc(sizeof(*c));
    if (!c)
        return KV_ENOMEM;
    kv_config_defaults(c);
    int rc = KV_OK;
    if (args && args->config_file)
        rc = load_file(c, args->config_file, err);
    if (rc == KV_OK)
        rc = load_env(c, envp, err);
    for (int i = 0; rc == KV_OK && args && i < args->nflags; i++) {
        int idx =
            args->flags[i].key ? key_find(args->flags[i].key, strlen(args->flags[i].key)) : -1;
        if (idx < 0)
            rc = fail_at(err, KV_CFG_FLAG, args->flags[i].where, "unknown key '%s'",
                         args->flags[i].key ? args->flags[i].key : "(null)");
        else
            rc = cfg_set(c, idx, args->flags[i].value ? args->flags[i].value : "", KV_CFG_FLAG,
                         args->flags[i].where, err);
    }
    if (rc == KV_OK) {
        int in = key_find("node.name", strlen("node.name"));
        /* An explicitly empty name means "derive it", like the default. */
        if (c->origin[in].source == KV_CFG_DEFAULT || !c->node_name[0])
            derive_node_name(c);
        rc = cross_check(c, err);
    }
    if (rc == KV_OK)
        memcpy(cfg, c, sizeof(*c));
    free(c);
    return rc;
}

/* ---- printing ---- */

static void value_text(const kv_config *cfg, const cfg_key *k, char *out, size_t cap)
{
    switch (k->type) {
    case T_STRING:
    case T_LIST: {
        const char *s = (const char *)cfg + k->off;
        snprintf(out, cap, "%s", *s ? s : "\"\"");
        break;
    }
    case T_BOOL:
        snprintf(out, cap, "%s", num_load(cfg, k) ? "true" : "false");
        break;
    case T_ENUM: {
        uint64_t v = num_load(cfg, k);
        int n = 0;
        while (k->choices[n])
            n++;
        snprintf(out, cap, "%s", v < (uint64_t)n ? k->choices[v] : "?");
        break;
    }
    default:
        fmt_num(k, out, cap, num_load(cfg, k));
    }
}

void kv_config_print(const kv_config *cfg, FILE *out)
{
    char left[NKEYS][KV_CFG_STR_MAX + 64];
    int width = 0;
    for (int i = 0; i < NKEYS; i++) {
        char v[KV_CFG_STR_MAX + 8];
        value_text(cfg, &keytab[i], v, sizeof(v));
        int n = snprintf(left[i], sizeof(left[i]), "%s = %s", keytab[i].name, v);
        if (n > width && n <= 60)
            width = n;
    }
    for (int i = 0; i < NKEYS; i++) {
        char desc[KV_CFG_STR_MAX + 16];
        source_desc(desc, sizeof(desc), cfg->origin[i].source, cfg->origin[i].where);
        if (strcmp(keytab[i].name, "node.name") == 0 && cfg->origin[i].source == KV_CFG_DEFAULT)
            snprintf(desc, sizeof(desc), "default (<hostname>-<server.port>)");
        fprintf(out, "%-*s  # %s\n", width, left[i], desc);
    }
}

static void env_name(const char *key, char *out, size_t cap)
{
    snprintf(out, cap, "%s", ENV_PREFIX);
    size_t o = strlen(out);
    for (const char *c = key; *c && o + 2 < cap; c++) {
        if (*c == '.') {
            out[o++] = '_';
            out[o++] = '_';
        } else {
            out[o++] = (char)toupper((unsigned char)*c);
        }
    }
    out[o] = '\0';
}

static const char *type_name(const cfg_key *k, char *buf, size_t cap)
{
    switch (k->type) {
    case T_STRING:
        return k->flags & CF_HOSTPORT ? "host:port" : k->flags & CF_HTTPURL ? "url" : "string";
    case T_INT:
        return "int";
    case T_PORT:
        return "port";
    case T_BOOL:
        return "bool";
    case T_DURATION:
        return "duration";
    case T_SIZE:
        return "size";
    case T_RATIO:
        return "ratio";
    case T_LIST:
        return "list";
    case T_ENUM:
        buf[0] = '\0';
        for (int i = 0; k->choices[i]; i++) {
            if (i)
                strncat(buf, "|", cap - strlen(buf) - 1);
            strncat(buf, k->choices[i], cap - strlen(buf) - 1);
        }
        return buf;
    }
    return "?";
}

void kv_config_print_reference(FILE *out)
{
    fprintf(out, "  %-26s %-20s %-22s %s\n", "KEY", "TYPE", "DEFAULT", "ENVIRONMENT");
    for (int i = 0; i < NKEYS; i++) {
        const cfg_key *k = &keytab[i];
        char tbuf[128], env[128], def[64];
        env_name(k->name, env, sizeof(env));
        if (strcmp(k->name, "node.name") == 0)
            snprintf(def, sizeof(def), "<hostname>-<port>");
        else if (strcmp(k->name, "cluster.advertise") == 0)
            snprintf(def, sizeof(def), "derived");
        else
            snprintf(def, sizeof(def), "%s", *k->def ? k->def : "\"\"");
        fprintf(out, "  %-26s %-20s %-22s %s\n", k->name, type_name(k, tbuf, sizeof(tbuf)), def,
                env);
        fprintf(out, "      %s; flag --%s%s%s\n", k->help, k->name, k->alias ? " or --" : "",
                k->alias ? k->alias : "");
    }
}

int kv_config_origin(const kv_config *cfg, const char *key, kv_cfg_source *source,
                     const char **where)
{
    int idx = key ? key_find(key, strlen(key)) : -1;
    if (idx < 0)
        return KV_EINVAL;
    if (source)
        *source = cfg->origin[idx].source;
    if (where)
        *where = cfg->origin[idx].where;
    return KV_OK;
}

const char *kv_sync_mode_name(kv_sync_mode m)
{
    if ((unsigned)m < 3)
        return sync_choices[m];
    return "unknown";
}
