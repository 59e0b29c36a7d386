/*
 * harness.c — helpers for integration tests that run real kvstore/kvtool processes on
 * 127.0.0.1 and talk to them over plain sockets, as a client would (see harness.h).
 *
 * Every wait is a loop on a condition with a deadline (poll(2) on a socket, or a short
 * poll interval on a process or a log file); nothing sleeps and hopes. Called from the
 * test's thread; the pid registry and the pools below are guarded by one mutex so helper
 * threads in a test may also use the socket functions.
 */
#include "harness.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define TH_POLL_MS  20
#define TH_MAX_PIDS 64

static pthread_mutex_t th_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t th_pids[TH_MAX_PIDS];
static int th_log_seq;

/* Tests write to sockets the server may already have closed; an error return is what
 * they want to see, not a SIGPIPE that kills the test process. Children get SIG_DFL back
 * before exec (an ignored signal would otherwise stay ignored across execve). */
__attribute__((constructor)) static void th_init(void)
{
    signal(SIGPIPE, SIG_IGN);
}

int64_t th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void th_nap_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---------------------------------------------------------------- temp dirs */

void th_tmpdir(char *out, size_t cap)
{
    const char *base = getenv("TMPDIR");
    if (base == NULL || base[0] == '\0')
        base = "/tmp";
    snprintf(out, cap, "%s/kvtest-XXXXXX", base);
    if (mkdtemp(out) == NULL) {
        fprintf(stderr, "harness: mkdtemp(%s): %s\n", out, strerror(errno));
        abort();
    }
}

static int th_rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void th_tmpdir_remove(const char *path)
{
    if (path == NULL || path[0] == '\0')
        return;
    nftw(path, th_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void th_mkdir_p(const char *path)
{
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(tmp, 0755);
            *p = '/';
        }
    }
    mkdir(tmp, 0755);
}

/* ---------------------------------------------------------------- ports, sockets */

int th_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

int th_connect(int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int th_send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Wait until fd is readable or the deadline passes. 1 readable, 0 timeout, -1 error. */
static int th_wait_readable(int fd, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - th_now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int rc = poll(&p, 1, (int)left);
        if (rc > 0)
            return 1;
        if (rc < 0 && errno != EINTR)
            return -1;
        if (rc == 0)
            return 0;
    }
}

bool th_wait_closed(int fd, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    char scratch[4096];
    for (;;) {
        if (th_wait_readable(fd, deadline) != 1)
            return false;
        ssize_t n = recv(fd, scratch, sizeof scratch, MSG_DONTWAIT);
        if (n == 0)
            return true;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return true; /* reset counts as closed */
    }
}

/* ---------------------------------------------------------------- responses */

void th_resp_free(th_resp *r)
{
    if (r == NULL)
        return;
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* Case-insensitive lookup of a header in a raw header block (status line first). */
static bool th_hdr_lookup(const char *headers, const char *name, char *out, size_t cap)
{
    size_t nlen = strlen(name);
    const char *line = strstr(headers, "\r\n");
    while (line != NULL) {
        line += 2;
        if (strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *end = strstr(v, "\r\n");
            size_t vlen = end ? (size_t)(end - v) : strlen(v);
            while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
                vlen--;
            if (out != NULL && cap > 0) {
                size_t c = vlen < cap - 1 ? vlen : cap - 1;
                memcpy(out, v, c);
                out[c] = '\0';
            }
            return true;
        }
        line = strstr(line, "\r\n");
    }
    return false;
}

bool th_resp_header(const th_resp *r, const char *name, char *out, size_t cap)
{
    if (r == NULL || r->headers == NULL)
        return false;
    return th_hdr_lookup(r->headers, name, out, cap);
}

/* Receive exactly len bytes into dst before the deadline. 0, or -1 on EOF/error/timeout. */
static int th_recv_exact(int fd, char *dst, size_t len, int64_t deadline)
{
    while (len > 0) {
        if (th_wait_readable(fd, deadline) != 1)
            return -1;
        ssize_t n = recv(fd, dst, len, MSG_DONTWAIT);
        if (n == 0)
            return -1;
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                continue;
            return -1;
        }
        dst += n;
        len -= (size_t)n;
    }
    return 0;
}

/* True if the peer has already closed (EOF readable right now, nothing else queued). */
static bool th_peer_closed_now(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        return true;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        return true;
    return false;
}

/*
 * The header block is read without consuming any byte past its end: peek at what is
 * queued, look for CRLFCRLF in (what we hold + the peek), and take only up to it. When it
 * is not there yet, everything queued belongs to this header block, so take it all and
 * wait for more. That keeps pipelined responses intact without a per-fd buffer.
 */
static int th_read_head(int fd, char **out, size_t *outlen, int64_t deadline)
{
    size_t cap = 4096, len = 0;
    char *h = malloc(cap);
    if (h == NULL)
        return -1;
    for (;;) {
        if (th_wait_readable(fd, deadline) != 1)
            goto fail;
        if (cap - len < 2048) {
            cap *= 2;
            char *nh = realloc(h, cap);
            if (nh == NULL)
                goto fail;
            h = nh;
        }
        ssize_t n = recv(fd, h + len, cap - len - 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0)
            goto fail;
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                continue;
            goto fail;
        }
        size_t start = len >= 3 ? len - 3 : 0;
        size_t total = len + (size_t)n;
        size_t take = (size_t)n;
        bool done = false;
        for (size_t i = start; i + 4 <= total; i++) {
            if (memcmp(h + i, "\r\n\r\n", 4) == 0) {
                take = i + 4 - len;
                done = true;
                break;
            }
        }
        /* Consume exactly `take` bytes (already in our buffer from the peek). */
        size_t got = 0;
        while (got < take) {
            ssize_t m = recv(fd, h + len + got, take - got, MSG_DONTWAIT);
            if (m <= 0) {
                if (m < 0 && (errno == EAGAIN || errno == EINTR))
                    continue;
                goto fail;
            }
            got += (size_t)m;
        }
        len += take;
        h[len] = '\0';
        if (done) {
            *out = h;
            *outlen = len;
            return 0;
        }
    }
fail:
    free(h);
    return -1;
}

static int th_read_chunked(int fd, char **body, size_t *blen, int64_t deadline)
{
    size_t cap = 4096, len = 0;
    char *b = malloc(cap);
    if (b == NULL)
        return -1;
    for (;;) {
        char line[128];
        size_t ll = 0;
        /* chunk-size line, byte by byte: it is short */
        for (;;) {
            if (ll + 1 >= sizeof line || th_recv_exact(fd, line + ll, 1, deadline) != 0)
                goto fail;
            ll++;
            if (ll >= 2 && line[ll - 2] == '\r' && line[ll - 1] == '\n')
                break;
        }
        line[ll] = '\0';
        size_t csz = strtoul(line, NULL, 16);
        if (csz == 0) {
            /* trailers until an empty line */
            char last4[4] = {'\r', '\n', 0, 0};
            int have = 2;
            for (;;) {
                char c;
                if (th_recv_exact(fd, &c, 1, deadline) != 0)
                    goto fail;
                memmove(last4, last4 + 1, 3);
                last4[3] = c;
                have++;
                if (have >= 4 && memcmp(last4, "\r\n\r\n", 4) == 0)
                    break;
            }
            b[len] = '\0';
            *body = b;
            *blen = len;
            return 0;
        }
        if (len + csz + 3 > cap) {
            while (len + csz + 3 > cap)
                cap *= 2;
            char *nb = realloc(b, cap);
            if (nb == NULL)
                goto fail;
            b = nb;
        }
        char crlf[2];
        if (th_recv_exact(fd, b + len, csz, deadline) != 0 ||
            th_recv_exact(fd, crlf, 2, deadline) != 0)
            goto fail;
        len += csz;
    }
fail:
    free(b);
    return -1;
}

int th_read_resp(int fd, th_resp *r, int timeout_ms)
{
    memset(r, 0, sizeof *r);
    int64_t deadline = th_now_ms() + timeout_ms;
    char *head = NULL;
    size_t hlen = 0;
    for (;;) {
        if (th_read_head(fd, &head, &hlen, deadline) != 0)
            return -1;
        int status = 0;
        if (sscanf(head, "HTTP/1.%*d %d", &status) != 1) {
            free(head);
            return -1;
        }
        if (status >= 100 && status < 200 && status != 101) {
            free(head); /* interim response (100 Continue): the real one follows */
            continue;
        }
        r->status = status;
        break;
    }
    r->headers = head;

    char v[64];
    bool has_cl = th_hdr_lookup(head, "Content-Length", v, sizeof v);
    char te[64] = "";
    th_hdr_lookup(head, "Transfer-Encoding", te, sizeof te);
    if (has_cl) {
        size_t cl = strtoull(v, NULL, 10);
        r->body = malloc(cl + 1);
        if (r->body == NULL || th_recv_exact(fd, r->body, cl, deadline) != 0) {
            th_resp_free(r);
            return -1;
        }
        r->body[cl] = '\0';
        r->body_len = cl;
    } else if (strcasestr(te, "chunked") != NULL) {
        if (th_read_chunked(fd, &r->body, &r->body_len, deadline) != 0) {
            th_resp_free(r);
            return -1;
        }
    } else if (r->status == 204 || r->status == 304) {
        r->body = calloc(1, 1);
    } else {
        /* Body delimited by close. */
        size_t cap = 4096, len = 0;
        char *b = malloc(cap);
        for (;;) {
            if (b == NULL || th_wait_readable(fd, deadline) != 1) {
                free(b);
                th_resp_free(r);
                return -1;
            }
            if (cap - len < 1024) {
                cap *= 2;
                char *nb = realloc(b, cap);
                if (nb == NULL) {
                    free(b);
                    th_resp_free(r);
                    return -1;
                }
                b = nb;
            }
            ssize_t n = recv(fd, b + len, cap - len - 1, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                break;
            if (n > 0)
                len += (size_t)n;
        }
        b[len] = '\0';
        r->body = b;
        r->body_len = len;
        r->closed = true;
    }
    if (r->body == NULL) {
        th_resp_free(r);
        return -1;
    }
    char conn[64];
    if (th_hdr_lookup(head, "Connection", conn, sizeof conn) && strcasestr(conn, "close"))
        r->closed = true;
    if (!r->closed && th_peer_closed_now(fd))
        r->closed = true;
    return 0;
}

int th_http_raw(int port, const void *req, size_t len, th_resp *r, int timeout_ms)
{
    memset(r, 0, sizeof *r);
    int fd = th_connect(port, timeout_ms);
    if (fd < 0)
        return -1;
    int rc = -1;
    if (th_send_all(fd, req, len) == 0)
        rc = th_read_resp(fd, r, timeout_ms);
    close(fd);
    return rc;
}

char *th_fmt_req(const char *method, const char *path, const void *body, size_t blen, size_t *len)
{
    bool with_len = body != NULL || strcmp(method, "PUT") == 0 || strcmp(method, "POST") == 0;
    size_t cap = strlen(method) + strlen(path) + blen + 128;
    char *buf = malloc(cap);
    if (buf == NULL)
        abort();
    int n;
    if (with_len)
        n = snprintf(buf, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %zu\r\n\r\n",
                     method, path, body ? blen : 0);
    else
        n = snprintf(buf, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", method, path);
    if (body != NULL && blen > 0)
        memcpy(buf + n, body, blen);
    *len = (size_t)n + (body ? blen : 0);
    return buf;
}

int th_http(int port, const char *method, const char *path, const void *body, size_t blen,
            th_resp *r)
{
    size_t len;
    char *req = th_fmt_req(method, path, body, blen, &len);
    int rc = th_http_raw(port, req, len, r, 5000);
    free(req);
    return rc;
}

double th_metric(int port, const char *name, const char *labels)
{
    th_resp r;
    if (th_http(port, "GET", "/metrics", NULL, 0, &r) != 0)
        return -1;
    if (r.status != 200) {
        th_resp_free(&r);
        return -1;
    }
    /* Split the wanted labels once: each `k="v"` must appear inside the sample's {...}. */
    char want[8][128];
    int nwant = 0;
    if (labels != NULL) {
        const char *p = labels;
        while (*p && nwant < 8) {
            const char *q = p;
            bool inq = false;
            while (*q && (inq || *q != ',')) {
                if (*q == '"')
                    inq = !inq;
                q++;
            }
            size_t l = (size_t)(q - p);
            if (l > 0 && l < sizeof want[0]) {
                memcpy(want[nwant], p, l);
                want[nwant][l] = '\0';
                nwant++;
            }
            p = *q ? q + 1 : q;
        }
    }
    double sum = 0;
    size_t nlen = strlen(name);
    char *save = NULL;
    for (char *line = strtok_r(r.body, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#' || strncmp(line, name, nlen) != 0)
            continue;
        char *rest = line + nlen;
        char *lbl = NULL, *lend = rest;
        if (*rest == '{') {
            lbl = rest;
            lend = strchr(rest, '}');
            if (lend == NULL)
                continue;
            lend++;
        } else if (*rest != ' ') {
            continue; /* a longer metric name with this prefix */
        }
        bool ok = true;
        for (int i = 0; i < nwant && ok; i++) {
            char *hit = lbl ? strstr(lbl, want[i]) : NULL;
            if (hit == NULL || hit > lend)
                ok = false;
            else if (hit[-1] != '{' && hit[-1] != ',')
                ok = false; /* "route" must not match "xroute" */
        }
        if (ok)
            sum += strtod(lend, NULL);
    }
    th_resp_free(&r);
    return sum;
}

void th_pct_encode(const void *key, size_t klen, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *k = key;
    size_t o = 0;
    for (size_t i = 0; i < klen && o + 4 <= cap; i++) {
        unsigned char c = k[i];
        if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    if (cap > 0)
        out[o < cap ? o : cap - 1] = '\0';
}

long th_raise_nofile(long want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    if ((long)rl.rlim_cur < want) {
        rlim_t target = (rlim_t)want;
        if (rl.rlim_max != RLIM_INFINITY && target > rl.rlim_max)
            target = rl.rlim_max;
        rl.rlim_cur = target;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return (long)rl.rlim_cur;
}

/* ---------------------------------------------------------------- processes */

const char *th_bin(const char *name)
{
    static char pool[8][512];
    static int next;
    pthread_mutex_lock(&th_lock);
    char *out = pool[next];
    next = (next + 1) % 8;
    pthread_mutex_unlock(&th_lock);
    snprintf(out, sizeof pool[0], "%s/%s", KV_BIN_DIR, name);
    return out;
}

/* environ without DIST_KV__*, with extra on top ("K=V" adds/replaces, "K" removes).
 * Returned array and strings are malloc'ed; only used in a child just before exec or
 * freed by th_env_free. */
static char **th_env_build(const char *const *extra)
{
    size_t n = 0, ne = 0;
    while (environ[n])
        n++;
    if (extra)
        while (extra[ne])
            ne++;
    char **env = calloc(n + ne + 1, sizeof *env);
    if (env == NULL)
        abort();
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(environ[i], "DIST_KV__", 9) == 0)
            continue;
        size_t klen = strcspn(environ[i], "=");
        bool overridden = false;
        for (size_t j = 0; j < ne; j++) {
            size_t ek = strcspn(extra[j], "=");
            if (ek == klen && strncmp(extra[j], environ[i], klen) == 0)
                overridden = true;
        }
        if (!overridden)
            env[o++] = strdup(environ[i]);
    }
    for (size_t j = 0; j < ne; j++)
        if (strchr(extra[j], '=') != NULL)
            env[o++] = strdup(extra[j]);
    env[o] = NULL;
    return env;
}

static void th_env_free(char **env)
{
    for (size_t i = 0; env[i]; i++)
        free(env[i]);
    free(env);
}

static void th_pid_add(pid_t pid)
{
    pthread_mutex_lock(&th_lock);
    for (int i = 0; i < TH_MAX_PIDS; i++) {
        if (th_pids[i] == 0) {
            th_pids[i] = pid;
            break;
        }
    }
    pthread_mutex_unlock(&th_lock);
}

static void th_pid_del(pid_t pid)
{
    pthread_mutex_lock(&th_lock);
    for (int i = 0; i < TH_MAX_PIDS; i++)
        if (th_pids[i] == pid)
            th_pids[i] = 0;
    pthread_mutex_unlock(&th_lock);
}

/* In a forked child: die with the test process, default signals, no inherited mask. */
static void th_child_setup(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

static void th_record_status(th_node *n, int st)
{
    n->exited = true;
    n->exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    n->term_signal = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
    th_pid_del(n->pid);
}

bool th_node_alive(th_node *n)
{
    if (n->pid <= 0 || n->exited)
        return false;
    int st;
    pid_t r = waitpid(n->pid, &st, WNOHANG);
    if (r == n->pid) {
        th_record_status(n, st);
        return false;
    }
    return r == 0;
}

bool th_node_wait_exit(th_node *n, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        if (!th_node_alive(n))
            return true;
        if (th_now_ms() >= deadline)
            return false;
        th_nap_ms(5);
    }
}

/* Say why a node's stop failed and show the end of its log (sanitizer reports included):
 * a failed stop is otherwise only a number in the test's assertion. */
static void th_node_print_end(const th_node *n, const char *what)
{
    fprintf(stderr, "==== node pid %d %s (exit status %d, signal %d); end of %s ====\n",
            (int)n->pid, what, n->exit_status, n->term_signal, n->log_path);
    char *log = th_log_read(n);
    size_t len = strlen(log), start = len;
    for (int lines = 0; start > 0 && lines <= 60; start--)
        lines += log[start - 1] == '\n';
    fputs(log + start, stderr);
    fprintf(stderr, "==== end of node log ====\n");
    free(log);
}

int th_node_stop(th_node *n, int timeout_ms)
{
    if (n->pid <= 0)
        return -1;
    if (n->exited)
        return n->exit_status;
    kill(n->pid, SIGTERM);
    if (th_node_wait_exit(n, timeout_ms)) {
        if (n->exit_status != 0)
            th_node_print_end(n, "did not exit 0 on SIGTERM");
        return n->exit_status;
    }
    th_node_print_end(n, "did not exit within the timeout after SIGTERM; killed");
    th_node_kill9(n);
    return -1;
}

void th_node_kill9(th_node *n)
{
    if (n->pid <= 0 || n->exited)
        return;
    kill(n->pid, SIGKILL);
    int st;
    while (waitpid(n->pid, &st, 0) < 0 && errno == EINTR) {
    }
    th_record_status(n, st);
    n->exit_status = -1;
}

void th_kill_all(void)
{
    pid_t pids[TH_MAX_PIDS];
    pthread_mutex_lock(&th_lock);
    memcpy(pids, th_pids, sizeof pids);
    memset(th_pids, 0, sizeof th_pids);
    pthread_mutex_unlock(&th_lock);
    for (int i = 0; i < TH_MAX_PIDS; i++) {
        if (pids[i] > 0) {
            kill(pids[i], SIGKILL);
            while (waitpid(pids[i], NULL, 0) < 0 && errno == EINTR) {
            }
        }
    }
}

char *th_log_read(const th_node *n)
{
    FILE *f = fopen(n->log_path, "rb");
    if (f == NULL)
        return strdup("");
    size_t cap = 8192, len = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf != NULL && (got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (cap - len < 1024) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
            }
            buf = nb;
        }
    }
    fclose(f);
    if (buf == NULL)
        return strdup("");
    buf[len] = '\0';
    return buf;
}

bool th_log_wait(const th_node *n, const char *needle, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        char *log = th_log_read(n);
        bool hit = strstr(log, needle) != NULL;
        free(log);
        if (hit)
            return true;
        if (th_now_ms() >= deadline)
            return false;
        th_nap_ms(TH_POLL_MS);
    }
}

static void th_dump_log(const th_node *n)
{
    char *log = th_log_read(n);
    fprintf(stderr, "---- %s (pid %d) ----\n%s---- end of log ----\n", n->log_path, (int)n->pid,
            log);
    free(log);
}

/* The --cluster.port the caller passes in extra_args (last one wins), or 0. */
static int th_extra_cluster_port(const char *const *extra_args)
{
    int port = 0;
    for (int i = 0; extra_args && extra_args[i]; i++) {
        if (strcmp(extra_args[i], "--cluster.port") == 0 && extra_args[i + 1])
            port = atoi(extra_args[i + 1]);
        else if (strncmp(extra_args[i], "--cluster.port=", 15) == 0)
            port = atoi(extra_args[i] + 15);
    }
    return port;
}

static int th_node_spawn(th_node *n, const char *data_dir, int port, const char *const *extra_args,
                         const char *const *extra_env)
{
    char portstr[16], cportstr[16];
    int cport = th_extra_cluster_port(extra_args);
    if (cport == 0)
        cport = th_free_port();
    snprintf(portstr, sizeof portstr, "%d", port);
    snprintf(cportstr, sizeof cportstr, "%d", cport);
    const char *argv[96];
    int a = 0;
    argv[a++] = th_bin("kvstore");
    argv[a++] = "servenode";
    argv[a++] = "--server.host";
    argv[a++] = "127.0.0.1";
    argv[a++] = "--port";
    argv[a++] = portstr;
    /* Every node has a peer port now: a free one each, so nodes never collide on 7946. */
    argv[a++] = "--cluster.host";
    argv[a++] = "127.0.0.1";
    argv[a++] = "--cluster.port";
    argv[a++] = cportstr;
    argv[a++] = "--data-dir";
    argv[a++] = data_dir;
    argv[a++] = "--log-level";
    argv[a++] = "debug";
    for (int i = 0; extra_args && extra_args[i] && a < 95; i++)
        argv[a++] = extra_args[i];
    argv[a] = NULL;

    pthread_mutex_lock(&th_lock);
    int seq = ++th_log_seq;
    pthread_mutex_unlock(&th_lock);
    memset(n, 0, sizeof *n);
    n->port = port;
    snprintf(n->url, sizeof n->url, "http://127.0.0.1:%d", port);
    n->cluster_port = cport;
    snprintf(n->peer_addr, sizeof n->peer_addr, "127.0.0.1:%d", cport);
    snprintf(n->data_dir, sizeof n->data_dir, "%s", data_dir);
    snprintf(n->log_path, sizeof n->log_path, "%s/node.%d.log", data_dir, seq);

    int logfd = open(n->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (logfd < 0) {
        fprintf(stderr, "harness: open %s: %s\n", n->log_path, strerror(errno));
        return -1;
    }
    char **env = th_env_build(extra_env);
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        th_child_setup(parent);
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        execve(argv[0], (char *const *)argv, env);
        dprintf(2, "harness: execve %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    th_env_free(env);
    close(logfd);
    if (pid < 0)
        return -1;
    n->pid = pid;
    th_pid_add(pid);
    return 0;
}

int th_node_start(th_node *n, const char *data_dir, int port, const char *const *extra_args,
                  const char *const *extra_env, int timeout_ms)
{
    th_mkdir_p(data_dir);
    bool cluster_port_picked = th_extra_cluster_port(extra_args) == 0;
    int attempts = port == 0 || cluster_port_picked ? 3 : 1;
    for (int attempt = 0; attempt < attempts; attempt++) {
        int p = port != 0 ? port : th_free_port();
        if (th_node_spawn(n, data_dir, p, extra_args, extra_env) != 0)
            return -1;
        int64_t deadline = th_now_ms() + timeout_ms;
        for (;;) {
            if (!th_node_alive(n))
                break;
            th_resp r;
            if (th_http(p, "GET", "/healthz", NULL, 0, &r) == 0) {
                int st = r.status;
                th_resp_free(&r);
                if (st == 200)
                    return 0;
            }
            if (th_now_ms() >= deadline) {
                fprintf(stderr, "harness: node on port %d not healthy after %d ms\n", p,
                        timeout_ms);
                th_dump_log(n);
                th_node_kill9(n);
                return -1;
            }
            th_nap_ms(TH_POLL_MS);
        }
        /* The process exited. A port grabbed by someone else in between is worth a retry. */
        char *log = th_log_read(n);
        bool in_use = strcasestr(log, "address already in use") != NULL ||
                      strcasestr(log, "EADDRINUSE") != NULL;
        free(log);
        if (!(in_use && attempt + 1 < attempts)) {
            fprintf(stderr, "harness: node exited with status %d during start\n", n->exit_status);
            th_dump_log(n);
            return -1;
        }
    }
    return -1;
}

/* ---------------------------------------------------------------- th_run */

int th_run(const char *const *argv, const char *const *extra_env, const char *stdin_data,
           size_t stdin_len, char **out, char **err, int timeout_ms)
{
    if (out)
        *out = NULL;
    if (err)
        *err = NULL;
    int pin[2], pout[2], perr[2];
    if (pipe2(pin, O_CLOEXEC) != 0)
        return -1;
    if (pipe2(pout, O_CLOEXEC) != 0) {
        close(pin[0]);
        close(pin[1]);
        return -1;
    }
    if (pipe2(perr, O_CLOEXEC) != 0) {
        close(pin[0]);
        close(pin[1]);
        close(pout[0]);
        close(pout[1]);
        return -1;
    }
    char **env = th_env_build(extra_env);
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        th_child_setup(parent);
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        execve(argv[0], (char *const *)argv, env);
        dprintf(2, "harness: execve %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    th_env_free(env);
    close(pin[0]);
    close(pout[1]);
    close(perr[1]);
    if (pid < 0) {
        close(pin[1]);
        close(pout[0]);
        close(perr[0]);
        return -1;
    }
    th_pid_add(pid);

    fcntl(pin[1], F_SETFL, O_NONBLOCK);
    char *bufs[2] = {NULL, NULL};
    size_t lens[2] = {0, 0}, caps[2] = {0, 0};
    int fds[2] = {pout[0], perr[0]};
    int infd = pin[1];
    size_t inoff = 0;
    if (stdin_data == NULL || stdin_len == 0) {
        close(infd);
        infd = -1;
    }
    int64_t deadline = th_now_ms() + timeout_ms;
    bool timed_out = false;
    while (fds[0] >= 0 || fds[1] >= 0 || infd >= 0) {
        struct pollfd p[3];
        int np = 0, idx[3];
        for (int i = 0; i < 2; i++) {
            if (fds[i] >= 0) {
                p[np] = (struct pollfd){.fd = fds[i], .events = POLLIN};
                idx[np++] = i;
            }
        }
        if (infd >= 0) {
            p[np] = (struct pollfd){.fd = infd, .events = POLLOUT};
            idx[np++] = 2;
        }
        int64_t left = deadline - th_now_ms();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        int rc = poll(p, (nfds_t)np, (int)left);
        if (rc < 0 && errno != EINTR)
            break;
        for (int k = 0; k < np && rc > 0; k++) {
            if (p[k].revents == 0)
                continue;
            int i = idx[k];
            if (i == 2) {
                ssize_t w = write(infd, stdin_data + inoff, stdin_len - inoff);
                if (w > 0)
                    inoff += (size_t)w;
                if ((w < 0 && errno != EAGAIN && errno != EINTR) || inoff >= stdin_len) {
                    close(infd);
                    infd = -1;
                }
                continue;
            }
            if (caps[i] - lens[i] < 4096) {
                caps[i] = caps[i] ? caps[i] * 2 : 8192;
                char *nb = realloc(bufs[i], caps[i]);
                if (nb == NULL)
                    abort();
                bufs[i] = nb;
            }
            ssize_t got = read(fds[i], bufs[i] + lens[i], caps[i] - lens[i] - 1);
            if (got > 0) {
                lens[i] += (size_t)got;
            } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                close(fds[i]);
                fds[i] = -1;
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (infd >= 0)
        close(infd);

    int st = 0;
    if (timed_out) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    } else {
        /* Output closed; the process may still be exiting. */
        for (;;) {
            pid_t r = waitpid(pid, &st, WNOHANG);
            if (r == pid)
                break;
            if (th_now_ms() >= deadline) {
                timed_out = true;
                kill(pid, SIGKILL);
                waitpid(pid, &st, 0);
                break;
            }
            th_nap_ms(2);
        }
    }
    th_pid_del(pid);

    for (int i = 0; i < 2; i++) {
        char **dst = i == 0 ? out : err;
        if (bufs[i] == NULL)
            bufs[i] = calloc(1, 1);
        else
            bufs[i][lens[i]] = '\0';
        if (dst)
            *dst = bufs[i];
        else
            free(bufs[i]);
    }
    if (timed_out || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

/* ---------------------------------------------------------------- JSON look-ups */

/* Position just after `"name"` followed by optional spaces and a colon, or NULL. */
static const char *th_json_find(const char *json, const char *name)
{
    size_t nlen = strlen(name);
    for (const char *p = json; (p = strchr(p, '"')) != NULL; p++) {
        if (strncmp(p + 1, name, nlen) != 0 || p[1 + nlen] != '"')
            continue;
        const char *q = p + 2 + nlen;
        while (isspace((unsigned char)*q))
            q++;
        if (*q != ':')
            continue;
        q++;
        while (isspace((unsigned char)*q))
            q++;
        return q;
    }
    return NULL;
}

bool th_json_str(const char *json, const char *name, char *out, size_t cap)
{
    const char *v = json ? th_json_find(json, name) : NULL;
    if (v == NULL || *v != '"')
        return false;
    v++;
    size_t o = 0;
    while (*v && *v != '"') {
        if (*v == '\\' && v[1] != '\0') {
            if (o + 1 < cap)
                out[o++] = *v;
            v++;
        }
        if (o + 1 < cap)
            out[o++] = *v;
        v++;
    }
    if (*v != '"')
        return false;
    if (cap > 0)
        out[o] = '\0';
    return true;
}

bool th_json_num(const char *json, const char *name, double *out)
{
    const char *v = json ? th_json_find(json, name) : NULL;
    if (v == NULL)
        return false;
    char *end;
    double d = strtod(v, &end);
    if (end == v)
        return false;
    *out = d;
    return true;
}

bool th_is_problem(const th_resp *r, int status, const char *code, char *why, size_t cap)
{
    char ct[128] = "", got[128] = "", type[160] = "", want_type[160];
    double num = 0;
    if (r->status != status) {
        snprintf(why, cap, "status %d, want %d (body: %.200s)", r->status, status,
                 r->body ? r->body : "");
        return false;
    }
    if (!th_resp_header(r, "Content-Type", ct, sizeof ct) ||
        strncasecmp(ct, "application/problem+json", 24) != 0) {
        snprintf(why, cap, "Content-Type '%s', want application/problem+json", ct);
        return false;
    }
    if (!th_json_str(r->body, "code", got, sizeof got) || strcmp(got, code) != 0) {
        snprintf(why, cap, "code '%s', want '%s' (body: %.200s)", got, code, r->body);
        return false;
    }
    if (!th_json_num(r->body, "status", &num) || (int)num != status) {
        snprintf(why, cap, "body status %g, want %d (body: %.200s)", num, status, r->body);
        return false;
    }
    snprintf(want_type, sizeof want_type, "urn:kvstore:problem:%s", code);
    if (!th_json_str(r->body, "type", type, sizeof type) || strcmp(type, want_type) != 0) {
        snprintf(why, cap, "type '%s', want '%s'", type, want_type);
        return false;
    }
    if (!th_json_str(r->body, "title", got, sizeof got)) {
        snprintf(why, cap, "no title (body: %.200s)", r->body);
        return false;
    }
    return true;
}

bool th_log_sanitizer_clean(const th_node *n)
{
    char *log = th_log_read(n);
    bool dirty = strstr(log, "ERROR: AddressSanitizer") != NULL ||
                 strstr(log, "ERROR: LeakSanitizer") != NULL ||
                 strstr(log, "runtime error:") != NULL;
    free(log);
    return !dirty;
}

bool th_node_stop_clean(th_node *n, int timeout_ms)
{
    if (n->pid <= 0 || n->exited)
        return true;
    int st = th_node_stop(n, timeout_ms);
    bool ok = st == 0 && th_log_sanitizer_clean(n);
    if (!ok) {
        fprintf(stderr, "harness: node pid %d ended with status %d on SIGTERM\n", (int)n->pid, st);
        th_dump_log(n);
    }
    return ok;
}
