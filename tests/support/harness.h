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

typedef struct th_node {
    pid_t pid;
    int port;             /* client HTTP port */
    char url[64];         /* "http://127.0.0.1:PORT" */
    char data_dir[256];   /* owned by the test; removed by th_tmpdir_remove */
    char log_path[300];   /* the node's stderr goes here */
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

/* Connect a TCP socket to 127.0.0.1:port (blocking, with SO_RCVTIMEO of timeout_ms).
 * Returns fd or -1. */
int th_connect(int port, int timeout_ms);

/* Write all of buf. 0 or -1. */
int th_send_all(int fd, const void *buf, size_t len);

/*
 * A parsed HTTP response read from a socket. Caller frees with th_resp_free.
 */
typedef struct th_resp {
    int status;
    char *headers;      /* raw header block, NUL-terminated */
    char *body;         /* NUL-terminated, body_len bytes */
    size_t body_len;
    bool closed;        /* server closed the connection after this response */
} th_resp;

/* Read one full response (Content-Length bodies) from fd within timeout_ms. 0 or -1
 * (timeout, EOF before a full response). */
int th_read_resp(int fd, th_resp *r, int timeout_ms);
void th_resp_free(th_resp *r);
/* Value of a response header (case-insensitive), copied into out; false if absent. */
bool th_resp_header(const th_resp *r, const char *name, char *out, size_t cap);

/* One request on a fresh connection: send raw bytes, read one response. 0 or -1. */
int th_http_raw(int port, const void *req, size_t len, th_resp *r, int timeout_ms);

/* Convenience: method path with optional body on a fresh connection. */
int th_http(int port, const char *method, const char *path, const void *body, size_t blen,
            th_resp *r);

/*
 * Run a command (argv NULL-terminated) with extra env entries, capture stdout and stderr
 * (malloc'ed, NUL-terminated; pass NULL to discard), optional stdin bytes. Returns the exit
 * status, or -1 on a signal/timeout (timeout_ms).
 */
int th_run(const char *const *argv, const char *const *extra_env, const char *stdin_data,
           size_t stdin_len, char **out, char **err, int timeout_ms);

/* Path of a built binary: th_bin("kvstore") → KV_BIN_DIR "/kvstore". Static buffer per call
 * site is not needed: returns a pointer into a small rotating pool. */
const char *th_bin(const char *name);

#endif
