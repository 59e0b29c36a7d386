/*
 * config.h — the one effective configuration of a kvstore process.
 *
 * Sources, highest precedence first: command-line flags, environment variables
 * DIST_KV__SECTION__KEY, the YAML file named by --config, built-in defaults. Every key
 * remembers where its value came from (for `kvstore config`). An unknown key, a value of
 * the wrong type or out of range, or an unreadable file is an error that names the key
 * and the source. Main thread only, before the loop starts; read-only afterwards.
 */
#ifndef KV_CONFIG_CONFIG_H
#define KV_CONFIG_CONFIG_H

#include "common/buf.h"
#include "common/log.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef enum kv_sync_mode {
    KV_SYNC_ALWAYS = 0,   /* acknowledge after fsync (group commit) */
    KV_SYNC_INTERVAL = 1, /* fsync every storage.sync_interval */
    KV_SYNC_NEVER = 2,    /* leave it to the OS (fsync only at shutdown) */
} kv_sync_mode;

/* How replica batches travel between nodes (replication.lane). */
typedef enum kv_repl_lane {
    KV_REPL_LANE_DIRECT = 0, /* loop-owned TCP (src/net/direct.h); nng for peers without it */
    KV_REPL_LANE_NNG = 1,    /* nng's replica lane only */
} kv_repl_lane;

typedef enum kv_cfg_source {
    KV_CFG_DEFAULT = 0,
    KV_CFG_FILE,
    KV_CFG_ENV,
    KV_CFG_FLAG,
} kv_cfg_source;

#define KV_CFG_STR_MAX 1024

typedef struct kv_config {
    /* server.* — client HTTP listener */
    char server_host[256];
    int server_port;
    /* cluster.* — peer listener (used by the membership issue) */
    char cluster_host[256];
    int cluster_port;
    char cluster_advertise[256];
    int cluster_data_port; /* replica data lane; 0 = a free port, advertised in gossip */
    char cluster_seeds[KV_CFG_STR_MAX]; /* comma-separated host:port list */
    /* cluster timing: SWIM with Lifeguard (DESIGN §6), memberlist's LAN defaults */
    uint64_t cluster_probe_interval_ms;    /* protocol period: one probe per period */
    uint64_t cluster_probe_timeout_ms;     /* direct ack wait before indirect probes */
    int cluster_indirect_probes;           /* members asked to probe on our behalf */
    int cluster_suspicion_mult;            /* suspicion timeout = mult * log10(N) * period */
    int cluster_retransmit_mult;           /* each update is piggybacked mult * log(N) times */
    uint64_t cluster_pushpull_interval_ms; /* full-state sync with one member; 0 = off */
    uint64_t cluster_leave_timeout_ms;     /* on SIGTERM: longest wait for the leave to spread */
    /* node.* */
    char node_name[128];
    char node_data_dir[KV_CFG_STR_MAX];
    /* storage.* */
    kv_sync_mode storage_sync;
    uint64_t storage_sync_interval_ms;
    uint64_t storage_segment_bytes;
    uint32_t storage_compaction_dead_ratio_milli; /* garbage fraction, in thousandths */
    uint64_t storage_compaction_min_bytes;
    uint64_t storage_compression_threshold; /* bytes; 0 = never compress */
    /* replication.* */
    int replication_n, replication_r, replication_w;
    bool replication_sloppy_quorum;       /* fallbacks count toward quorums (DESIGN §9) */
    uint64_t replication_timeout_ms;      /* quorum deadline of one request */
    bool replication_read_repair;         /* repair stale replicas found by reads */
    bool replication_batching;            /* one message per peer per loop turn */
    kv_repl_lane replication_lane;        /* direct TCP or nng */
    int replication_hints_max_count;      /* hints held at most */
    uint64_t replication_hints_max_bytes; /* hint bytes held at most */
    /* ring.* */
    int ring_tokens; /* virtual nodes per member */
    /* antientropy.*, streaming.* */
    bool cluster_leave_drain;         /* SIGTERM hands our ranges over first */
    uint64_t antientropy_interval_ms; /* between two tree comparisons; 0 = off */
    uint64_t antientropy_gc_grace_ms; /* tombstones younger than this are never purged */
    uint64_t streaming_rate;          /* bytes/s sent for pulls; 0 = unlimited */
    /* limits.* */
    uint32_t limits_max_key;            /* bytes, 1..1024 */
    uint64_t limits_max_value;          /* bytes */
    uint32_t limits_max_header;         /* bytes of request line + headers */
    uint32_t limits_max_connections;    /* concurrent client connections */
    uint64_t limits_idle_timeout_ms;    /* keep-alive idle connection cut-off */
    uint64_t limits_request_timeout_ms; /* a request must arrive whole within this */
    /* log.* */
    kv_log_level log_level;
    kv_log_format log_format;
    /* client.* */
    char client_server_url[512];
    uint64_t client_timeout_ms;

    /* Where each key's value came from; see kv_config_print. Private to config.c. */
    struct kv_cfg_origin {
        kv_cfg_source source;
        char where[KV_CFG_STR_MAX]; /* file path:line, env var name or flag */
    } origin[64];
} kv_config;

/*
 * Split argv into config flags and the rest.
 *
 * Recognised anywhere in argv: --config FILE, --set KEY=VALUE, --KEY VALUE or --KEY=VALUE
 * for every config key (e.g. --server.port 9000), and the aliases --port (server.port),
 * --host (server.host), --data-dir (node.data_dir), --name (node.name), --seeds
 * (cluster.seeds), --server (client.server_url), --log-level, --log-format. Everything
 * else (commands, their own flags, positional arguments, anything after "--") is copied,
 * in order, into rest (caller-provided, at least argc entries); *nrest gets the count.
 * An alias or key flag missing its value → KV_ECONFIG with a message in err.
 *
 * Details: argv[0] is not special (pass argv + 1 to skip the program name). A "--" stops
 * flag parsing; the "--" itself is copied into rest too, so the command's own parser still
 * sees where positional arguments begin. Unknown flags are not errors (commands have their
 * own), except a dotted one inside a config section (--server.prot) or an unknown key in
 * --set, which are KV_ECONFIG. A later flag for the same key wins. Values are only checked
 * by kv_config_load. Error text is appended to err; args, rest and *nrest are written only
 * on success.
 */
typedef struct kv_cfg_args {
    const char *config_file; /* borrowed from argv; NULL if not given */
    int nflags;
    struct {
        const char *key;   /* canonical "section.key", static storage */
        const char *value; /* borrowed from argv */
        char where[64];    /* how it was given, e.g. "--port" */
    } flags[64];
} kv_cfg_args;

int kv_config_parse_args(int argc, char **argv, kv_cfg_args *args, char **rest, int *nrest,
                         kv_buf *err);

/*
 * Build the effective configuration: defaults, then args->config_file (if any), then
 * environ (DIST_KV__*), then args' flags. On error returns KV_ECONFIG and writes one line
 * naming the key and the source into err, e.g.
 *   "server.port: 'abc' is not an integer (env DIST_KV__SERVER__PORT)".
 * envp may be NULL (ignore the environment). args may be NULL (no file, no flags). cfg is
 * written only on success. A node.name left empty is derived as host name + "-" + port.
 * Cross-key checks: replication.r and replication.w must not exceed replication.n.
 */
int kv_config_load(kv_config *cfg, const kv_cfg_args *args, char **envp, kv_buf *err);

/* Defaults only (never fails). node.name is derived from the host name and server.port. */
void kv_config_defaults(kv_config *cfg);

/* Print every key, its effective value and its source, one per line ("key = value  # src"). */
void kv_config_print(const kv_config *cfg, FILE *out);

/*
 * Print the key reference for --help, generated from the key table: for every key its
 * type, default, environment variable, flags and a one-line description.
 */
void kv_config_print_reference(FILE *out);

/*
 * Where key ("section.key") got its value in cfg: *source, and *where (borrowed from cfg:
 * the file "path:line", the env variable name or the flag; "" for defaults). KV_OK, or
 * KV_EINVAL if there is no such key. Either out-pointer may be NULL.
 */
int kv_config_origin(const kv_config *cfg, const char *key, kv_cfg_source *source,
                     const char **where);

const char *kv_sync_mode_name(kv_sync_mode m);

/* How long news (a member's new ring status) takes to reach every member by gossip, as
 * this node waits for it: ten protocol periods (cluster.probe_interval), at least 1 s.
 * A joining or leaving node waits this long before it streams, and writes keep reaching
 * the previous read ring this long after a join finished. */
static inline uint64_t kv_config_gossip_spread_ms(const kv_config *cfg)
{
    uint64_t ms = 10 * cfg->cluster_probe_interval_ms;
    return ms > 1000 ? ms : 1000;
}

#endif
