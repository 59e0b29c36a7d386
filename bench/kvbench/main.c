/*
 * main.c — kvbench, the load generator: command line, target check, the load and run
 * phases with a live report each second, and the final outputs. Main thread; the load is
 * made by worker threads (worker.c).
 *
 * Exit status: 0 done; 1 the target could not be reached, or no operation succeeded;
 * 2 bad command line; 130 interrupted (the report of what ran is still printed).
 */
#include "bench.h"
#include "report.h"
#include "worker.h"

#include "client/url.h"
#include "kvstore/error.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t g_signalled;

static void on_signal(int sig)
{
    g_signalled = sig;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvbench [OPTIONS]\n"
            "\n"
            "Load generator for kvstore and, with the same workloads, Redis and etcd.\n"
            "\n"
            "target\n"
            "  -t, --target NAME       kvstore (default), redis or etcd\n"
            "  -u, --url URL[,URL...]  where to send requests; repeatable; requests are spread\n"
            "                          over all (kvstore, etcd). Defaults: kvstore\n"
            "                          http://127.0.0.1:8080, etcd http://127.0.0.1:2379, redis\n"
            "                          redis://127.0.0.1:6379 (one URL: the primary)\n"
            "      --redis-wait N      redis: follow every SET with WAIT N (replicas that must\n"
            "                          acknowledge; fewer counts as a wait_short error)\n"
            "      --redis-wait-timeout D  timeout of that WAIT (default 1s)\n"
            "\n"
            "workload\n"
            "  -w, --workload NAME     a (50%% read, 50%% update; default), b (95/5), c (read\n"
            "                          only), write (update only), custom (with --mix)\n"
            "      --mix SPEC          custom mix, e.g. read=70,update=20,delete=10 (adds to 100)\n"
            "  -k, --keys N            number of keys (default 10000; 10k, 1M accepted)\n"
            "      --key-size B        bytes per key (default 16)\n"
            "      --value-size B      bytes per value (default 100; 4KiB accepted)\n"
            "      --dist NAME         zipfian (YCSB's, theta 0.99; default) or uniform\n"
            "      --theta X           zipfian skew, 0 < X < 1 (default 0.99)\n"
            "      --no-load           skip the load phase (which first writes every key once)\n"
            "\n"
            "load model\n"
            "  -c, --connections C     concurrent connections (default 16)\n"
            "  -T, --threads T         worker threads, each with its own event loop (default 1)\n"
            "  -p, --pipeline D        requests in flight per connection (default 1)\n"
            "  -r, --rate R            open loop at R ops/s in total; latency counts from each\n"
            "                          request's intended start. Default: closed loop\n"
            "  -d, --duration D        measured time (default 10s); or\n"
            "  -n, --ops N             a number of measured operations instead\n"
            "      --warmup D          excluded from the figures (default 2s)\n"
            "      --timeout D         per request (default 5s)\n"
            "      --max-time D        hard bound on each phase (default 10m)\n"
            "      --seed N            random seed (default 1)\n"
            "\n"
            "output\n"
            "      --json              the report as one JSON object on stdout\n"
            "      --plot FILE.svg     throughput over time and the latency percentile curve\n"
            "                          (needs gnuplot; skipped with a message without it)\n"
            "  -q, --quiet             no live progress lines\n"
            "  -h, --help              this text\n"
            "      --version           print the version\n"
            "\n"
            "Durations take a unit: 500ms, 10s, 2m. Exit status: 0 done, 1 target unreachable\n"
            "or nothing succeeded, 2 bad arguments, 130 interrupted.\n"
            "\n"
            "examples\n"
            "  kvbench -u http://127.0.0.1:8080 -w b -c 64 -d 30s\n"
            "  kvbench -u http://n1:8080,http://n2:8080 --rate 20000 --json > out.json\n"
            "  kvbench -t redis -u redis://127.0.0.1:6379 -w a --plot redis.svg\n");
}

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kvbench: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'kvbench --help'.\n", stderr);
    exit(2);
}

/* ---------- argument parsing ---------- */

static uint64_t parse_count(const char *opt, const char *s, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)s[0]))
        die_usage("%s: expected a whole number, got '%s'", opt, s);
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t mult = 1;
    if (*end == 'k' || *end == 'K')
        mult = 1000, end++;
    else if (*end == 'M')
        mult = 1000000, end++;
    else if (*end == 'G')
        mult = 1000000000, end++;
    if (errno || *end != '\0' || (v && mult > UINT64_MAX / v))
        die_usage("%s: expected a whole number (10000, 10k, 1M), got '%s'", opt, s);
    v *= mult;
    if (v < min || v > max)
        die_usage("%s: %s is out of range %" PRIu64 "..%" PRIu64, opt, s, min, max);
    return v;
}

static uint64_t parse_size(const char *opt, const char *s, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)s[0]))
        die_usage("%s: expected a size in bytes, got '%s'", opt, s);
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t mult = 1;
    if (strcmp(end, "KiB") == 0)
        mult = 1024;
    else if (strcmp(end, "MiB") == 0)
        mult = 1024 * 1024;
    else if (*end != '\0' && strcmp(end, "B") != 0)
        die_usage("%s: expected bytes (100, 4KiB, 1MiB), got '%s'", opt, s);
    if (errno || v > max / mult || v * mult < min)
        die_usage("%s: %s is out of range %" PRIu64 "..%" PRIu64 " bytes", opt, s, min, max);
    return v * mult;
}

static uint64_t parse_duration(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)s[0]) && s[0] != '.')
        die_usage("%s: expected a duration such as 500ms, 10s or 2m, got '%s'", opt, s);
    double v = strtod(s, &end);
    double mult;
    if (strcmp(end, "ms") == 0)
        mult = 1e6;
    else if (strcmp(end, "s") == 0)
        mult = 1e9;
    else if (strcmp(end, "m") == 0)
        mult = 60e9;
    else if (strcmp(end, "h") == 0)
        mult = 3600e9;
    else if (*end == '\0' && v == 0)
        mult = 0;
    else
        die_usage("%s: '%s' needs a unit: 500ms, 10s, 2m or 1h", opt, s);
    if (errno || !(v >= 0) || v * mult > 86400e9 * 7)
        die_usage("%s: '%s' is out of range (0 to 7 days)", opt, s);
    return (uint64_t)(v * mult);
}

static double parse_double(const char *opt, const char *s, double min_excl, double max_excl)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v > min_excl) || !(v < max_excl))
        die_usage("%s: expected a number above %g and below %g, got '%s'", opt, min_excl, max_excl,
                  s);
    return v;
}

/* Resolve one URL into ep; for redis "redis://host:port" and "host:port" are accepted. */
static void add_endpoint(kvb_cfg *cfg, size_t *cap, const char *url)
{
    if (cfg->neps == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        cfg->eps = realloc(cfg->eps, *cap * sizeof *cfg->eps);
        if (!cfg->eps) {
            fprintf(stderr, "kvbench: out of memory\n");
            exit(1);
        }
    }
    kvb_endpoint *ep = &cfg->eps[cfg->neps];
    memset(ep, 0, sizeof *ep);
    if (strlen(url) >= sizeof ep->url)
        die_usage("--url: '%.40s...' is too long", url);
    snprintf(ep->url, sizeof ep->url, "%s", url);
    char as_http[320];
    if (cfg->proto.target == KVB_TARGET_REDIS) {
        if (strncasecmp(url, "redis://", 8) == 0)
            snprintf(as_http, sizeof as_http, "http://%s", url + 8);
        else if (strstr(url, "://"))
            die_usage("--url %s: a redis URL is redis://HOST:PORT", url);
        else
            snprintf(as_http, sizeof as_http, "http://%s", url);
    } else {
        snprintf(as_http, sizeof as_http, "%s", url);
    }
    kvc_url u;
    if (kvc_url_parse(&u, as_http) != KV_OK)
        die_usage("--url: '%s' is not a URL of the form %s", url,
                  cfg->proto.target == KVB_TARGET_REDIS ? "redis://HOST:PORT" : "http://HOST:PORT");
    if (cfg->proto.target == KVB_TARGET_REDIS && !strchr(u.authority, ':') && u.authority[0] != '[')
        snprintf(u.port, sizeof u.port, "6379");
    snprintf(ep->host, sizeof ep->host, "%s", u.authority);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(u.host, u.port, &hints, &res);
    if (rc != 0 || !res) {
        fprintf(stderr, "kvbench: cannot resolve %s: %s\n", url, gai_strerror(rc));
        exit(1);
    }
    memcpy(&ep->addr, res->ai_addr, res->ai_addrlen);
    ep->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    cfg->neps++;
}

/* Connect to every endpoint once (bounded by timeout) so a target that is down is
 * reported at once instead of after a run of connect errors. 0 or -1 (message printed). */
static int preflight(const kvb_cfg *cfg, uint64_t timeout_ns)
{
    int timeout_ms = (int)(timeout_ns / 1000000u);
    if (timeout_ms <= 0 || timeout_ms > 5000)
        timeout_ms = 5000;
    for (size_t i = 0; i < cfg->neps; i++) {
        const kvb_endpoint *ep = &cfg->eps[i];
        int fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            fprintf(stderr, "kvbench: socket: %s\n", strerror(errno));
            return -1;
        }
        int err = 0;
        if (connect(fd, (const struct sockaddr *)&ep->addr, ep->addrlen) != 0) {
            err = errno;
            if (err == EINPROGRESS) {
                struct pollfd p = {.fd = fd, .events = POLLOUT};
                int n = poll(&p, 1, timeout_ms);
                if (n == 0) {
                    err = ETIMEDOUT;
                } else {
                    socklen_t len = sizeof err;
                    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                        err = errno;
                }
            }
        }
        close(fd);
        if (err) {
            fprintf(stderr, "kvbench: cannot connect to %s target at %s: %s\n",
                    kvb_target_name(cfg->proto.target), ep->url, strerror(err));
            return -1;
        }
    }
    return 0;
}

/* ---------- phases ---------- */

typedef struct ticks {
    kvb_tick *v;
    size_t n, cap;
} ticks;

static void progress(bool tty, bool quiet, const char *label, double t, double span,
                     const kvb_sample *s, bool warm, bool final)
{
    if (quiet)
        return;
    double rate = span > 0 ? (double)s->done / span : 0;
    char line[200];
    snprintf(line, sizeof line,
             "kvbench: %-4s [%4.0fs] %9.0f ops/s  p50 %7.3f ms  p99 %7.3f ms  max %8.3f ms  "
             "errors %" PRIu64 "%s",
             label, t, rate, kvb_hist_percentile(&s->hist, 50) / 1e6,
             kvb_hist_percentile(&s->hist, 99) / 1e6, s->hist.count ? s->hist.max / 1e6 : 0.0,
             s->errors, warm ? "  (warm-up)" : "");
    if (tty)
        fprintf(stderr, "\r\033[K%s%s", line, final ? "\n" : "");
    else
        fprintf(stderr, "%s\n", line);
    fflush(stderr);
}

/*
 * Run one phase to its end with a progress line each second; stats get the phase's
 * figures, tl (may be NULL) one tick per second. Returns true if a signal stopped it.
 */
static bool run_phase(const kvb_cfg *cfg, kvb_phase phase, bool quiet, kvb_stats *stats, ticks *tl,
                      char *first_error, size_t cap)
{
    const char *label = phase == KVB_PHASE_LOAD ? "load" : "run";
    bool tty = isatty(STDERR_FILENO);
    uint64_t t0 = kvb_now_ns();
    kvb_run *run = NULL;
    int rc = kvb_run_start(&run, cfg, phase, t0);
    if (rc != KV_OK) {
        fprintf(stderr, "kvbench: cannot start the %s phase: %s\n", label, kv_strerror(rc));
        exit(1);
    }
    kvb_sample *s = malloc(sizeof *s);
    if (!s) {
        fprintf(stderr, "kvbench: out of memory\n");
        exit(1);
    }
    bool stopped = false, interrupted = false;
    uint64_t stop_ns = UINT64_MAX;
    uint64_t last = t0, next = t0 + 1000000000ull;
    uint64_t warm_end = phase == KVB_PHASE_RUN ? t0 + cfg->warmup_ns : t0;
    for (;;) {
        bool fin = kvb_run_finished(run);
        uint64_t now = kvb_now_ns();
        if (now >= next || fin) {
            kvb_run_sample(run, s);
            double t = (double)(now - t0) / 1e9;
            double span = (double)(now - last) / 1e9;
            bool warm = now - (now - last) / 2 < warm_end;
            progress(tty, quiet, label, t, span, s, warm, fin);
            if (tl && (s->done || !fin)) {
                if (tl->n == tl->cap) {
                    tl->cap = tl->cap ? tl->cap * 2 : 64;
                    tl->v = realloc(tl->v, tl->cap * sizeof *tl->v);
                    if (!tl->v) {
                        fprintf(stderr, "kvbench: out of memory\n");
                        exit(1);
                    }
                }
                kvb_tick *k = &tl->v[tl->n++];
                k->t = t;
                k->warmup = warm;
                k->done = s->done;
                k->errors = s->errors;
                k->p50_ns = kvb_hist_percentile(&s->hist, 50);
                k->p99_ns = kvb_hist_percentile(&s->hist, 99);
                k->max_ns = s->hist.count ? s->hist.max : 0;
            }
            last = now;
            while (next <= now)
                next += 1000000000ull;
        }
        if (fin)
            break;
        if (g_signalled && !stopped) {
            kvb_run_stop(run);
            stopped = interrupted = true;
            stop_ns = kvb_now_ns();
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kvb_run_join(run, stats, first_error, cap);
    if (phase == KVB_PHASE_RUN && cfg->duration_ns) {
        /* Throughput is over the whole measured time, including seconds in which the
         * target answered nothing. */
        uint64_t end = warm_end + cfg->duration_ns;
        if (interrupted && stop_ns < end)
            end = stop_ns;
        stats->seconds = end > warm_end ? (double)(end - warm_end) / 1e9 : 0.0;
    }
    kvb_run_free(run);
    free(s);
    return interrupted;
}

/* ---------- main ---------- */

enum {
    OPT_MIX = 256,
    OPT_KEY_SIZE,
    OPT_VALUE_SIZE,
    OPT_DIST,
    OPT_THETA,
    OPT_NO_LOAD,
    OPT_WARMUP,
    OPT_TIMEOUT,
    OPT_MAX_TIME,
    OPT_SEED,
    OPT_JSON,
    OPT_PLOT,
    OPT_VERSION,
    OPT_REDIS_WAIT,
    OPT_REDIS_WAIT_TIMEOUT,
};

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"target", required_argument, NULL, 't'},
        {"url", required_argument, NULL, 'u'},
        {"workload", required_argument, NULL, 'w'},
        {"mix", required_argument, NULL, OPT_MIX},
        {"keys", required_argument, NULL, 'k'},
        {"key-size", required_argument, NULL, OPT_KEY_SIZE},
        {"value-size", required_argument, NULL, OPT_VALUE_SIZE},
        {"dist", required_argument, NULL, OPT_DIST},
        {"theta", required_argument, NULL, OPT_THETA},
        {"no-load", no_argument, NULL, OPT_NO_LOAD},
        {"connections", required_argument, NULL, 'c'},
        {"threads", required_argument, NULL, 'T'},
        {"pipeline", required_argument, NULL, 'p'},
        {"rate", required_argument, NULL, 'r'},
        {"duration", required_argument, NULL, 'd'},
        {"ops", required_argument, NULL, 'n'},
        {"warmup", required_argument, NULL, OPT_WARMUP},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"max-time", required_argument, NULL, OPT_MAX_TIME},
        {"seed", required_argument, NULL, OPT_SEED},
        {"json", no_argument, NULL, OPT_JSON},
        {"plot", required_argument, NULL, OPT_PLOT},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION},
        {"redis-wait", required_argument, NULL, OPT_REDIS_WAIT},
        {"redis-wait-timeout", required_argument, NULL, OPT_REDIS_WAIT_TIMEOUT},
        {NULL, 0, NULL, 0},
    };
    kvb_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.proto.target = KVB_TARGET_KVSTORE;
    cfg.proto.redis_wait_timeout = 1000;
    snprintf(cfg.workload, sizeof cfg.workload, "a");
    cfg.dist = KVB_DIST_ZIPFIAN;
    cfg.theta = 0.99;
    cfg.nkeys = 10000;
    cfg.key_size = 16;
    cfg.value_size = 100;
    cfg.conns = 16;
    cfg.threads = 1;
    cfg.pipeline = 1;
    cfg.warmup_ns = 2000000000ull;
    cfg.duration_ns = 10000000000ull;
    cfg.timeout_ns = 5000000000ull;
    cfg.max_time_ns = 600000000000ull;
    cfg.load = true;
    cfg.seed = 1;
    const char *urls[64];
    size_t nurls = 0;
    const char *mix = NULL, *plot = NULL;
    bool json = false, quiet = false, have_duration = false, have_ops = false;
    bool have_key_size = false;

    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":t:u:w:k:c:T:p:r:d:n:qh", longopts, NULL)) != -1) {
        switch (ch) {
        case 't':
            if (strcmp(optarg, "kvstore") == 0)
                cfg.proto.target = KVB_TARGET_KVSTORE;
            else if (strcmp(optarg, "redis") == 0)
                cfg.proto.target = KVB_TARGET_REDIS;
            else if (strcmp(optarg, "etcd") == 0)
                cfg.proto.target = KVB_TARGET_ETCD;
            else
                die_usage("--target: '%s' is not one of kvstore, redis, etcd", optarg);
            break;
        case 'u':
            if (nurls == sizeof urls / sizeof urls[0])
                die_usage("--url: too many (at most %zu)", sizeof urls / sizeof urls[0]);
            urls[nurls++] = optarg;
            break;
        case 'w':
            if (strcmp(optarg, "custom") != 0 && kvb_mix_named(optarg, &cfg.mix) != 0)
                die_usage("--workload: '%s' is not one of a, b, c, write, custom", optarg);
            snprintf(cfg.workload, sizeof cfg.workload, "%s", optarg);
            break;
        case OPT_MIX:
            mix = optarg;
            break;
        case 'k':
            cfg.nkeys = parse_count("--keys", optarg, 1, 1000000000ull);
            break;
        case OPT_KEY_SIZE:
            cfg.key_size = parse_size("--key-size", optarg, 2, 1024);
            have_key_size = true;
            break;
        case OPT_VALUE_SIZE:
            cfg.value_size = parse_size("--value-size", optarg, 0, 64ull * 1024 * 1024);
            break;
        case OPT_DIST:
            if (strcmp(optarg, "zipfian") == 0)
                cfg.dist = KVB_DIST_ZIPFIAN;
            else if (strcmp(optarg, "uniform") == 0)
                cfg.dist = KVB_DIST_UNIFORM;
            else
                die_usage("--dist: '%s' is not one of zipfian, uniform", optarg);
            break;
        case OPT_THETA:
            cfg.theta = parse_double("--theta", optarg, 0.0, 1.0);
            break;
        case OPT_NO_LOAD:
            cfg.load = false;
            break;
        case 'c':
            cfg.conns = (unsigned)parse_count("--connections", optarg, 1, 100000);
            break;
        case 'T':
            cfg.threads = (unsigned)parse_count("--threads", optarg, 1, 256);
            break;
        case 'p':
            cfg.pipeline = (unsigned)parse_count("--pipeline", optarg, 1, 1024);
            break;
        case 'r':
            cfg.rate = parse_double("--rate", optarg, 0.0, 1e9);
            break;
        case 'd':
            cfg.duration_ns = parse_duration("--duration", optarg);
            if (cfg.duration_ns == 0)
                die_usage("--duration: must be above 0");
            have_duration = true;
            break;
        case 'n':
            cfg.ops = parse_count("--ops", optarg, 1, UINT64_MAX / 2);
            have_ops = true;
            break;
        case OPT_WARMUP:
            cfg.warmup_ns = parse_duration("--warmup", optarg);
            break;
        case OPT_TIMEOUT:
            cfg.timeout_ns = parse_duration("--timeout", optarg);
            if (cfg.timeout_ns < 1000000u)
                die_usage("--timeout: must be at least 1ms");
            break;
        case OPT_MAX_TIME:
            cfg.max_time_ns = parse_duration("--max-time", optarg);
            if (cfg.max_time_ns < 1000000u)
                die_usage("--max-time: must be at least 1ms");
            break;
        case OPT_SEED:
            cfg.seed = parse_count("--seed", optarg, 0, UINT64_MAX);
            break;
        case OPT_JSON:
            json = true;
            break;
        case OPT_PLOT:
            if (!*optarg || strpbrk(optarg, "'\n\r"))
                die_usage("--plot: '%s' is not a usable file name", optarg);
            plot = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case OPT_VERSION:
            printf("kvbench %s\n", KV_VERSION);
            return 0;
        case OPT_REDIS_WAIT:
            cfg.proto.redis_wait = (unsigned)parse_count("--redis-wait", optarg, 0, 64);
            break;
        case OPT_REDIS_WAIT_TIMEOUT: {
            uint64_t ns = parse_duration("--redis-wait-timeout", optarg);
            cfg.proto.redis_wait_timeout = (unsigned)(ns / 1000000u);
            if (cfg.proto.redis_wait_timeout == 0)
                die_usage("--redis-wait-timeout: must be at least 1ms");
            break;
        }
        case ':':
            die_usage("%s needs a value", argv[optind - 1]);
        default:
            if (optopt)
                die_usage("unknown option '-%c'", optopt);
            die_usage("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        die_usage("unexpected argument '%s' (every setting is an option)", argv[optind]);

    /* Cross-checks. */
    if (have_duration && have_ops)
        die_usage("give --duration or --ops, not both");
    if (have_ops)
        cfg.duration_ns = 0;
    if (mix) {
        char why[160];
        if (strcmp(cfg.workload, "a") == 0 || strcmp(cfg.workload, "custom") == 0)
            snprintf(cfg.workload, sizeof cfg.workload, "custom");
        else
            die_usage("--mix goes with --workload custom, not '%s'", cfg.workload);
        if (kvb_mix_parse(mix, &cfg.mix, why, sizeof why) != 0)
            die_usage("--mix: %s", why);
    } else if (strcmp(cfg.workload, "custom") == 0) {
        die_usage("--workload custom needs --mix, e.g. --mix read=80,update=15,delete=5");
    } else {
        kvb_mix_named(cfg.workload, &cfg.mix);
    }
    size_t min_key = kvb_key_min_size(cfg.nkeys);
    if (cfg.key_size < min_key) {
        if (have_key_size)
            die_usage("--key-size %zu is too small for %" PRIu64 " keys (needs %zu)", cfg.key_size,
                      cfg.nkeys, min_key);
        cfg.key_size = min_key;
    }
    if (cfg.proto.redis_wait && cfg.proto.target != KVB_TARGET_REDIS)
        die_usage("--redis-wait goes with --target redis");
    if (cfg.threads > cfg.conns)
        die_usage("--threads %u is more than --connections %u (each thread needs one)", cfg.threads,
                  cfg.conns);
    if (nurls == 0) {
        urls[nurls++] = cfg.proto.target == KVB_TARGET_REDIS  ? "redis://127.0.0.1:6379"
                        : cfg.proto.target == KVB_TARGET_ETCD ? "http://127.0.0.1:2379"
                                                              : "http://127.0.0.1:8080";
    }
    size_t epcap = 0;
    for (size_t i = 0; i < nurls; i++) {
        char *copy = strdup(urls[i]);
        if (!copy)
            return 1;
        for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok;
             tok = strtok_r(NULL, ",", &save))
            if (*tok)
                add_endpoint(&cfg, &epcap, tok);
        free(copy);
    }
    if (cfg.neps == 0)
        die_usage("--url: no URL given");
    if (cfg.proto.target == KVB_TARGET_REDIS && cfg.neps > 1)
        die_usage("--url: give redis one URL, the primary (replication is measured with "
                  "--redis-wait)");

    /* Values: random letters and digits, so every target stores them as they are. */
    cfg.values = malloc(cfg.value_size + KVB_VALUE_SLACK);
    if (!cfg.values)
        return 1;
    kvb_rng vr;
    kvb_rng_seed(&vr, cfg.seed ^ 0x5eedull);
    static const char alnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    for (size_t i = 0; i < cfg.value_size + KVB_VALUE_SLACK; i++)
        cfg.values[i] = alnum[kvb_rng_below(&vr, sizeof alnum - 1)];
    if (cfg.dist == KVB_DIST_ZIPFIAN)
        kvb_zipf_init(&cfg.zipf, cfg.nkeys, cfg.theta);

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND; /* a second ^C ends kvbench at once */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    if (preflight(&cfg, cfg.timeout_ns) != 0) {
        free(cfg.values);
        free(cfg.eps);
        return 1;
    }

    kvb_stats *load = NULL, *runst = malloc(sizeof *runst);
    if (!runst)
        return 1;
    kvb_stats_init(runst);
    char err_load[512] = "", err_run[512] = "";
    bool interrupted = false;
    if (cfg.load) {
        load = malloc(sizeof *load);
        if (!load)
            return 1;
        kvb_stats_init(load);
        interrupted = run_phase(&cfg, KVB_PHASE_LOAD, quiet, load, NULL, err_load, sizeof err_load);
    }
    ticks tl = {NULL, 0, 0};
    if (!interrupted)
        interrupted = run_phase(&cfg, KVB_PHASE_RUN, quiet, runst, &tl, err_run, sizeof err_run);

    kvb_report rep = {
        .cfg = &cfg,
        .load = load,
        .run = runst,
        .ticks = tl.v,
        .nticks = tl.n,
        .interrupted = interrupted,
        .first_error = err_run[0] ? err_run : err_load,
    };
    if (json)
        kvb_report_json(stdout, &rep);
    else
        kvb_report_table(stdout, &rep);
    fflush(stdout);
    if (plot && kvb_report_plot(&rep, plot) == 0 && !quiet)
        fprintf(stderr, "kvbench: plot written to %s\n", plot);

    int status = 0;
    if (interrupted)
        status = 130;
    else if (runst->all.count == 0 && (kvb_stats_failed(runst) || runst->errors[KVB_E_CONNECT])) {
        fprintf(stderr, "kvbench: no operation succeeded%s%s\n", rep.first_error[0] ? ": " : "",
                rep.first_error);
        status = 1;
    }
    free(tl.v);
    free(load);
    free(runst);
    free(cfg.values);
    free(cfg.eps);
    return status;
}
