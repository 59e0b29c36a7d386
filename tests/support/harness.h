/*
 * harness.h — helpers for tests that run real kvstore processes on 127.0.0.1 and talk to
 * them as a client would. Every wait has a deadline; nothing sleeps and hopes.
 *
 * KV_BIN_DIR (build dir holding kvstore and kvtool) and KV_SOURCE_DIR are compile-time
 * definitions from CMake.
 */
#ifndef KV_TESTS_HARNESS_H
#define KV_TESTS_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Assert inside hot loops: criterion records every passing cr_assert (costly with
 * --full-stats over thousands of iterations), so only the failure goes through it.
 * Needs <criterion/criterion.h> in the test file.
 */
#define TH_CHECK(cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond))                                                                               \
            cr_assert_fail(__VA_ARGS__);                                                           \
    } while (0)

typedef struct th_node {
    pid_t pid;
    int port;           /* client HTTP port */
    char url[64];       /* "http://127.0.0.1:PORT" */
    int cluster_port;   /* peer (nng) port on 127.0.0.1 */
    char peer_addr[32]; /* "127.0.0.1:CLUSTER_PORT", for other nodes' --seeds */
    char data_dir[256]; /* owned by the test; removed by th_tmpdir_remove */
    char log_path[300]; /* the node's stderr goes here */
    /* Set when the harness has reaped the process (th_node_alive/stop/kill9). */
    bool exited;
    int exit_status; /* exit code, or -1 if it died by a signal */
    int term_signal; /* the signal it died by, 0 if it exited */
} th_node;

/* A fresh temporary directory under $TMPDIR (or /tmp); path written into out. */
void th_tmpdir(char *out, size_t cap);
/* rm -rf path. */
void th_tmpdir_remove(const char *path);

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int th_free_port(void);

/*
 * Start `kvstore servenode` with data_dir and port (0 = pick a free one), plus extra
 * arguments (NULL-terminated list, may be NULL) and extra environment entries
 * ("K=V", NULL-terminated, may be NULL), with stderr to n->log_path. Waits until
 * /healthz answers 200 or timeout_ms passes. Returns 0, or -1 if the process exited or
 * did not become healthy (the log is printed to stderr).
 *
 * Details: the command line is `kvstore servenode --server.host 127.0.0.1 --port P
 * --cluster.host 127.0.0.1 --cluster.port C --data-dir D --log-level debug EXTRA...`
 * (extra args come last, so they win). C is a free port picked for each start, unless
 * extra_args has its own --cluster.port (then that one is used and recorded in
 * n->cluster_port). data_dir
 * is created if missing. The log is <data_dir>/node.<seq>.log (one file per start, so a
 * restart gets a fresh log; removing the data dir removes it). The
 * inherited environment is stripped of DIST_KV__* so tests are hermetic; extra_env is
 * added on top ("NAME" without '=' removes NAME). The child gets PR_SET_PDEATHSIG so a
 * test killed by its timeout does not leave a node behind. When a picked port (HTTP port
 * 0, or the cluster port) was taken meanwhile and the node fails to start, other ports are
 * tried.
 */
int th_node_start(th_node *n, const char *data_dir, int port, const char *const *extra_args,
                  const char *const *extra_env, int timeout_ms);

/* Send SIGTERM and wait for exit (up to timeout_ms, then SIGKILL). Returns the exit status,
 * or -1 if it had to be killed or died by a signal. */
int th_node_stop(th_node *n, int timeout_ms);

/* kill -9 and reap. */
void th_node_kill9(th_node *n);

/* True if the process is still running. */
bool th_node_alive(th_node *n);

/* Wait until the node's log contains needle (or timeout). */
bool th_log_wait(const th_node *n, const char *needle, int timeout_ms);

/* The node's whole log (malloc'ed, NUL-terminated; "" if unreadable). Caller frees. */
char *th_log_read(const th_node *n);

/* True if the node's log has no AddressSanitizer / LeakSanitizer / UBSan report. */
bool th_log_sanitizer_clean(const th_node *n);

/*
 * For fini hooks: if n was started and is still running, stop it with SIGTERM (up to
 * timeout_ms) and return true only if it exited 0 and its log has no sanitizer report;
 * prints the log otherwise. Returns true when there was nothing to stop.
 */
bool th_node_stop_clean(th_node *n, int timeout_ms);

/* Wait for the process to exit by itself (no signal sent). True if it exited in time;
 * n->exit_status then holds the status. */
bool th_node_wait_exit(th_node *n, int timeout_ms);

/*
 * Stop (SIGKILL and reap) every node started by th_node_start in this process that is
 * still running. For criterion .fini hooks: cleanup even when an assertion failed.
 */
void th_kill_all(void);

/* Connect a TCP socket to 127.0.0.1:port (blocking, with SO_RCVTIMEO of timeout_ms).
 * Returns fd or -1. */
int th_connect(int port, int timeout_ms);

/* Write all of buf. 0 or -1. (MSG_NOSIGNAL: a peer that closed gives -1, not SIGPIPE.) */
int th_send_all(int fd, const void *buf, size_t len);

/* Wait until the peer closes fd (EOF or reset) within timeout_ms, discarding any bytes that
 * arrive meanwhile. True if it closed in time. */
bool th_wait_closed(int fd, int timeout_ms);

/*
 * A parsed HTTP response read from a socket. Caller frees with th_resp_free.
 */
typedef struct th_resp {
    int status;
    char *headers; /* raw header block, NUL-terminated */
    char *body;    /* NUL-terminated, body_len bytes */
    size_t body_len;
    bool closed; /* server closed the connection after this response */
} th_resp;

/* Read one full response (Content-Length bodies) from fd within timeout_ms. 0 or -1
 * (timeout, EOF before a full response). Never reads past the end of this response, so
 * pipelined responses can be read one after another from the same fd. A response with
 * neither Content-Length nor chunked encoding is read until EOF. r->closed is set when
 * the response says "Connection: close" or the peer has already closed. */
int th_read_resp(int fd, th_resp *r, int timeout_ms);
void th_resp_free(th_resp *r);
/* Value of a response header (case-insensitive), copied into out; false if absent. */
bool th_resp_header(const th_resp *r, const char *name, char *out, size_t cap);

/* One request on a fresh connection: send raw bytes, read one response. 0 or -1. */
int th_http_raw(int port, const void *req, size_t len, th_resp *r, int timeout_ms);

/* Convenience: method path with optional body on a fresh connection (5 s timeout). A body
 * (even empty, for PUT) is sent with Content-Length. */
int th_http(int port, const char *method, const char *path, const void *body, size_t blen,
            th_resp *r);

/* Format a request "METHOD path HTTP/1.1" with Host, Content-Length when body != NULL or
 * the method is PUT/POST, and the body, into a malloc'ed buffer; *len gets its length. */
char *th_fmt_req(const char *method, const char *path, const void *body, size_t blen, size_t *len);

/*
 * Fetch /metrics and return the sum of every sample of metric `name` whose label set
 * contains each of the comma-separated `k="v"` pairs in labels (NULL or "" = all samples).
 * For a histogram pass the full sample name (e.g. "..._count"). 0 when no sample
 * matches; -1 when /metrics could not be fetched.
 */
double th_metric(int port, const char *name, const char *labels);

/* Percent-encode every byte of key except unreserved ones (A-Z a-z 0-9 - . _ ~) into out
 * (cap >= 3*klen+1). */
void th_pct_encode(const void *key, size_t klen, char *out, size_t cap);

/*
 * Tiny JSON look-ups for assertions (not a parser): find "name" as an object key anywhere
 * in json and copy its string value (escapes kept as written) / read its number. False if
 * absent or of another type.
 */
bool th_json_str(const char *json, const char *name, char *out, size_t cap);
bool th_json_num(const char *json, const char *name, double *out);

/*
 * True if r is a problem+json answer with this status and code: Content-Type
 * application/problem+json, body fields "status" = status, "code" = code, "type" =
 * "urn:kvstore:problem:<code>", "title" present. Otherwise false and a reason in why.
 */
bool th_is_problem(const th_resp *r, int status, const char *code, char *why, size_t cap);

/* Monotonic milliseconds, for deadlines. */
int64_t th_now_ms(void);

/* Raise RLIMIT_NOFILE to at least want (up to the hard limit). Returns the new soft limit. */
long th_raise_nofile(long want);

/*
 * Run a command (argv NULL-terminated) with extra env entries, capture stdout and stderr
 * (malloc'ed, NUL-terminated; pass NULL to discard), optional stdin bytes. Returns the exit
 * status, or -1 on a signal/timeout (timeout_ms).
 *
 * argv[0] is a path (use th_bin). The environment is handled as in th_node_start
 * (DIST_KV__* stripped, extra_env on top). stdin is closed after stdin_data is written
 * (stdin_data NULL: empty stdin).
 */
int th_run(const char *const *argv, const char *const *extra_env, const char *stdin_data,
           size_t stdin_len, char **out, char **err, int timeout_ms);

/* Path of a built binary: th_bin("kvstore") → KV_BIN_DIR "/kvstore". Static buffer per call
 * site is not needed: returns a pointer into a small rotating pool. */
const char *th_bin(const char *name);

#endif
