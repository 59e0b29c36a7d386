/*
 * cluster.c — a cluster of real kvstore processes for tests, and a small /v1/kv client.
 * See cluster.h.
 */
#include "cluster.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TH_CLUSTER_START_MS 15000
#define TH_CLUSTER_POLL_MS  20

static void tc_nap_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void th_cluster_init(th_cluster *c, int n)
{
    memset(c, 0, sizeof *c);
    if (n < 1 || n > TH_CLUSTER_MAX) {
        fprintf(stderr, "cluster: %d nodes is out of range (1..%d)\n", n, TH_CLUSTER_MAX);
        abort();
    }
    c->n = n;
    th_tmpdir(c->dir, sizeof c->dir);
}

void th_cluster_fini(th_cluster *c)
{
    th_kill_all();
    if (c->dir[0])
        th_tmpdir_remove(c->dir);
    c->dir[0] = '\0';
}

bool th_cluster_running(th_cluster *c, int i)
{
    return c->started[i] && th_node_alive(&c->node[i]);
}

/* ---------- member views ---------- */

typedef struct tc_member {
    char name[64];
    char state[16];
    char ring[16]; /* ring_status */
    double incarnation;
} tc_member;

typedef struct tc_view {
    int n;
    tc_member m[2 * TH_CLUSTER_MAX];
} tc_view;

/* GET /v1/cluster/members and parse its member objects (flat objects in one array). */
static bool tc_fetch_view(const th_node *node, tc_view *v)
{
    memset(v, 0, sizeof *v);
    th_resp r;
    if (th_http(node->port, "GET", "/v1/cluster/members", NULL, 0, &r) != 0)
        return false;
    bool ok = r.status == 200;
    const char *p = ok ? strstr(r.body, "\"members\":[") : NULL;
    if (p == NULL)
        ok = false;
    while (p && v->n < 2 * TH_CLUSTER_MAX) {
        const char *o = strchr(p, '{'), *e = o ? strchr(o, '}') : NULL;
        if (!o || !e)
            break;
        char obj[512];
        snprintf(obj, sizeof obj, "%.*s", (int)(e - o + 1), o);
        tc_member *m = &v->m[v->n++];
        if (!th_json_str(obj, "name", m->name, sizeof m->name) ||
            !th_json_str(obj, "state", m->state, sizeof m->state) ||
            !th_json_str(obj, "ring_status", m->ring, sizeof m->ring) ||
            !th_json_num(obj, "incarnation", &m->incarnation))
            ok = false;
        p = e + 1;
    }
    th_resp_free(&r);
    return ok;
}

static const tc_member *tc_view_find(const tc_view *v, const char *name)
{
    for (int i = 0; i < v->n; i++)
        if (strcmp(v->m[i].name, name) == 0)
            return &v->m[i];
    return NULL;
}

static void tc_name(int i, char *out, size_t cap)
{
    snprintf(out, cap, "n%d", i);
}

/* Highest incarnation of node i that any running node reports (0 if none knows it). */
static double tc_max_incarnation(th_cluster *c, int i)
{
    char name[16];
    tc_name(i, name, sizeof name);
    double best = 0;
    for (int j = 0; j < c->n; j++) {
        tc_view v;
        if (j == i || !th_cluster_running(c, j) || !tc_fetch_view(&c->node[j], &v))
            continue;
        const tc_member *m = tc_view_find(&v, name);
        if (m && m->incarnation > best)
            best = m->incarnation;
    }
    return best;
}

/* ---------- starting and stopping ---------- */

int th_cluster_start_node(th_cluster *c, int i)
{
    char dir[400], name[16], cport[16];
    snprintf(dir, sizeof dir, "%s/n%d", c->dir, i);
    tc_name(i, name, sizeof name);
    bool restart = c->started[i];
    if (restart && th_node_alive(&c->node[i])) {
        fprintf(stderr, "cluster: n%d is still running; not started again\n", i);
        return -1;
    }
    /* A seed: node 0 for a first start, any other running node for a restart. */
    const char *seed = NULL;
    if (restart) {
        for (int j = 0; j < c->n && !seed; j++)
            if (j != i && th_cluster_running(c, j))
                seed = c->node[j].peer_addr;
        c->inc_floor[i] = tc_max_incarnation(c, i);
    } else if (i > 0 && c->started[0]) {
        seed = c->node[0].peer_addr;
    }
    int http_port = restart ? c->node[i].port : 0;
    snprintf(cport, sizeof cport, "%d", restart ? c->node[i].cluster_port : 0);

    const char *argv[96];
    int a = 0;
    argv[a++] = "--name";
    argv[a++] = name;
    argv[a++] = "--cluster.probe_interval";
    argv[a++] = "200ms";
    argv[a++] = "--cluster.probe_timeout";
    argv[a++] = "100ms";
    argv[a++] = "--cluster.pushpull_interval";
    argv[a++] = "2s";
    if (seed) {
        argv[a++] = "--seeds";
        argv[a++] = seed;
    }
    if (restart) {
        argv[a++] = "--cluster.port";
        argv[a++] = cport;
    }
    for (int k = 0; c->args && c->args[k] && a < 94; k++)
        argv[a++] = c->args[k];
    for (int k = 0; c->node_args[i] && c->node_args[i][k] && a < 94; k++)
        argv[a++] = c->node_args[i][k];
    argv[a] = NULL;
    if (th_node_start(&c->node[i], dir, http_port, argv, c->node_env[i], TH_CLUSTER_START_MS) !=
        0) {
        fprintf(stderr, "cluster: n%d did not start\n", i);
        return -1;
    }
    c->started[i] = true;
    return 0;
}

int th_cluster_start(th_cluster *c, int timeout_ms)
{
    for (int i = 0; i < c->n; i++)
        if (th_cluster_start_node(c, i) != 0)
            return -1;
    if (th_cluster_wait_settled(c, timeout_ms) < 0) {
        th_cluster_dump(c, NULL, 30);
        return -1;
    }
    /* Right after the nodes finished joining, writes also go to the read ring before the
     * last join for a few protocol periods (extra copies that tests counting copies
     * would see): start from a steady ring. */
    int64_t deadline = th_now_ms() + timeout_ms;
    for (int i = 0; i < c->n; i++)
        while (th_cluster_running(c, i) &&
               th_metric(c->node[i].port, "kv_ring_grace_active", NULL) != 0 &&
               th_now_ms() < deadline)
            usleep(20000);
    return 0;
}

void th_cluster_kill9(th_cluster *c, int i)
{
    th_node_kill9(&c->node[i]);
}

int th_cluster_stop(th_cluster *c, int i)
{
    return th_node_stop(&c->node[i], 10000);
}

/* ---------- waiting for views ---------- */

/* Does every running node's view match the processes? (See th_cluster_wait_settled.) */
static bool tc_settled(th_cluster *c)
{
    bool running[TH_CLUSTER_MAX];
    for (int i = 0; i < c->n; i++)
        running[i] = th_cluster_running(c, i);
    for (int obs = 0; obs < c->n; obs++) {
        if (!running[obs])
            continue;
        tc_view v;
        if (!tc_fetch_view(&c->node[obs], &v))
            return false;
        for (int i = 0; i < c->n; i++) {
            char name[16];
            tc_name(i, name, sizeof name);
            const tc_member *m = tc_view_find(&v, name);
            if (running[i]) {
                /* alive, and done joining (a fresh node streams its ranges first) */
                if (!m || strcmp(m->state, "alive") != 0 || m->incarnation <= c->inc_floor[i] ||
                    (!c->allow_joining && strcmp(m->ring, "normal") != 0))
                    return false;
            } else if (c->started[i]) {
                if (m && strcmp(m->state, "dead") != 0 && strcmp(m->state, "left") != 0)
                    return false;
            }
        }
    }
    return true;
}

static void tc_print_views(th_cluster *c)
{
    for (int i = 0; i < c->n; i++) {
        tc_view v;
        if (!th_cluster_running(c, i)) {
            fprintf(stderr, "n%d: not running\n", i);
            continue;
        }
        if (!tc_fetch_view(&c->node[i], &v)) {
            fprintf(stderr, "n%d: no view\n", i);
            continue;
        }
        char line[1024] = "";
        for (int j = 0; j < v.n; j++) {
            char one[128];
            snprintf(one, sizeof one, " %s=%s/%g/%s", v.m[j].name, v.m[j].state, v.m[j].incarnation,
                     v.m[j].ring);
            strncat(line, one, sizeof line - strlen(line) - 1);
        }
        fprintf(stderr, "n%d (port %d) sees:%s\n", i, c->node[i].port, line);
    }
}

int64_t th_cluster_wait_settled(th_cluster *c, int timeout_ms)
{
    int64_t t0 = th_now_ms(), deadline = t0 + timeout_ms;
    for (;;) {
        if (tc_settled(c))
            return th_now_ms() - t0;
        if (th_now_ms() >= deadline) {
            fprintf(stderr, "cluster: views did not settle within %d ms\n", timeout_ms);
            tc_print_views(c);
            return -1;
        }
        tc_nap_ms(TH_CLUSTER_POLL_MS);
    }
}

/* ---------- diagnostics ---------- */

/* Print the last `lines` lines of log that pass the filter: above debug level when needle
 * is NULL, containing needle otherwise. */
static void tc_print_tail(const char *log, const char *needle, int lines, const char *prefix)
{
    /* Walk backwards collecting start offsets of matching lines. */
    size_t len = strlen(log);
    const char **picked = calloc((size_t)lines + 1, sizeof *picked);
    size_t *lens = calloc((size_t)lines + 1, sizeof *lens);
    if (picked == NULL || lens == NULL) {
        free(picked);
        free(lens);
        return;
    }
    int got = 0;
    size_t end = len;
    while (end > 0 && got < lines) {
        size_t start = end;
        while (start > 0 && log[start - 1] != '\n')
            start--;
        size_t l = end - start;
        if (l > 0 && log[start + l - 1] == '\n')
            l--;
        char *line = strndup(log + start, l);
        bool keep = line != NULL && l > 0 &&
                    (needle ? strstr(line, needle) != NULL
                            : strstr(line, "level=debug") == NULL &&
                                  strstr(line, "\"level\":\"debug\"") == NULL);
        free(line);
        if (keep) {
            picked[got] = log + start;
            lens[got] = l;
            got++;
        }
        end = start > 0 ? start - 1 : 0;
        if (start == 0)
            break;
    }
    for (int k = got - 1; k >= 0; k--)
        fprintf(stderr, "%s%.*s\n", prefix, (int)lens[k], picked[k]);
    free(picked);
    free(lens);
}

void th_cluster_dump(th_cluster *c, const char *needle, int lines)
{
    fprintf(stderr, "==== cluster state (%d nodes) ====\n", c->n);
    tc_print_views(c);
    for (int i = 0; i < c->n; i++) {
        if (!c->started[i])
            continue;
        char prefix[16];
        snprintf(prefix, sizeof prefix, "n%d| ", i);
        char *log = th_log_read(&c->node[i]);
        fprintf(stderr, "---- n%d %s (pid %d, %s) last %d lines above debug ----\n", i,
                c->node[i].log_path, (int)c->node[i].pid,
                th_node_alive(&c->node[i]) ? "running" : "not running", lines);
        tc_print_tail(log, NULL, lines, prefix);
        if (needle) {
            fprintf(stderr, "---- n%d last %d lines with \"%s\" ----\n", i, lines, needle);
            tc_print_tail(log, needle, lines, prefix);
        }
        free(log);
    }
    fprintf(stderr, "==== end of cluster state ====\n");
}

double th_cluster_metric_sum(th_cluster *c, int skip, const char *name, const char *labels)
{
    double sum = 0;
    for (int i = 0; i < c->n; i++) {
        if (i == skip || !th_cluster_running(c, i))
            continue;
        double v = th_metric(c->node[i].port, name, labels);
        if (v < 0)
            return -1;
        sum += v;
    }
    return sum;
}

/* ---------- the /v1/kv client ---------- */

void th_kv_resp_free(th_kv_resp *r)
{
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
}

bool th_kv_parse_version(const char *s, uint64_t *ts, uint32_t *node)
{
    if (*s == '"')
        s++;
    char *end;
    errno = 0;
    unsigned long long t = strtoull(s, &end, 10);
    if (end == s || *end != '.' || errno != 0)
        return false;
    const char *p = end + 1;
    unsigned long long nd = strtoull(p, &end, 10);
    if (end == p || errno != 0 || nd > UINT32_MAX || (*end != '\0' && *end != '"'))
        return false;
    *ts = (uint64_t)t;
    *node = (uint32_t)nd;
    return true;
}

int th_kv_version_cmp(uint64_t ts_a, uint32_t node_a, uint64_t ts_b, uint32_t node_b)
{
    if (ts_a != ts_b)
        return ts_a < ts_b ? -1 : 1;
    if (node_a != node_b)
        return node_a < node_b ? -1 : 1;
    return 0;
}

/* Format the request for /v1/kv/<key>?query into a malloc'ed buffer. */
static char *tc_fmt(const char *method, const char *key, const char *query, const void *body,
                    size_t blen, size_t *len)
{
    size_t klen = strlen(key);
    size_t cap = 3 * klen + 1 + (query ? strlen(query) : 0) + 16;
    char *path = malloc(cap);
    if (path == NULL)
        abort();
    strcpy(path, "/v1/kv/");
    th_pct_encode(key, klen, path + 7, cap - 7);
    if (query && *query) {
        strcat(path, "?");
        strcat(path, query);
    }
    bool put = strcmp(method, "PUT") == 0;
    char *req = th_fmt_req(method, path, put ? (body ? body : "") : NULL, put ? blen : 0, len);
    free(path);
    return req;
}

/* Move a th_resp into a th_kv_resp. */
static void tc_fill(th_kv_resp *out, th_resp *r)
{
    out->status = r->status;
    out->body = r->body;
    out->body_len = r->body_len;
    r->body = NULL;
    if (th_resp_header(r, "ETag", out->etag, sizeof out->etag))
        out->has_version = th_kv_parse_version(out->etag, &out->ts, &out->node);
    th_resp_header(r, "Content-Type", out->content_type, sizeof out->content_type);
    th_resp_free(r);
}

static void tc_empty(th_kv_resp *out)
{
    memset(out, 0, sizeof *out);
    out->body = strdup("");
    if (out->body == NULL)
        abort();
}

int th_kv_request(int port, const char *method, const char *key, const char *query,
                  const void *body, size_t blen, int timeout_ms, th_kv_resp *out)
{
    memset(out, 0, sizeof *out);
    size_t len;
    char *req = tc_fmt(method, key, query, body, blen, &len);
    th_resp r;
    int64_t t0 = th_now_ms();
    int rc = th_http_raw(port, req, len, &r, timeout_ms);
    int64_t took = th_now_ms() - t0;
    free(req);
    if (rc != 0) {
        tc_empty(out);
        out->ms = took;
        return -1;
    }
    tc_fill(out, &r);
    out->ms = took;
    return 0;
}

int th_kv_get(const th_node *n, const char *key, const char *query, th_kv_resp *out)
{
    return th_kv_request(n->port, "GET", key, query, NULL, 0, 10000, out);
}

int th_kv_put(const th_node *n, const char *key, const char *value, const char *query,
              th_kv_resp *out)
{
    return th_kv_request(n->port, "PUT", key, query, value, strlen(value), 10000, out);
}

int th_kv_delete(const th_node *n, const char *key, const char *query, th_kv_resp *out)
{
    return th_kv_request(n->port, "DELETE", key, query, NULL, 0, 10000, out);
}

void th_kv_conn_init(th_kv_conn *c, int port)
{
    c->port = port;
    c->fd = -1;
}

void th_kv_conn_close(th_kv_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

int th_kv_conn_request(th_kv_conn *c, const char *method, const char *key, const char *query,
                       const void *body, size_t blen, int timeout_ms, th_kv_resp *out)
{
    memset(out, 0, sizeof *out);
    size_t len;
    char *req = tc_fmt(method, key, query, body, blen, &len);
    int64_t t0 = th_now_ms();
    if (c->fd < 0)
        c->fd = th_connect(c->port, timeout_ms);
    th_resp r;
    int rc = -1;
    if (c->fd >= 0 && th_send_all(c->fd, req, len) == 0)
        rc = th_read_resp(c->fd, &r, timeout_ms);
    int64_t took = th_now_ms() - t0;
    free(req);
    if (rc != 0) {
        th_kv_conn_close(c);
        tc_empty(out);
        out->ms = took;
        return -1;
    }
    if (r.closed)
        th_kv_conn_close(c);
    tc_fill(out, &r);
    out->ms = took;
    return 0;
}

/* ---------- listing ---------- */

void th_kv_list_free(th_kv_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->keys[i]);
        free(l->versions[i]);
    }
    free(l->keys);
    free(l->versions);
    memset(l, 0, sizeof *l);
}

/* Copy the JSON string starting at p (just after its opening quote) into a malloc'ed
 * string, escapes kept as written; *endp gets the position after the closing quote. */
static char *tc_json_strdup(const char *p, const char **endp)
{
    const char *q = p;
    while (*q && *q != '"') {
        if (*q == '\\' && q[1])
            q++;
        q++;
    }
    if (*q != '"')
        return NULL;
    *endp = q + 1;
    return strndup(p, (size_t)(q - p));
}

static int tc_list_add(th_kv_list *l, char *key, char *version)
{
    char **nk = realloc(l->keys, (l->n + 1) * sizeof *nk);
    if (nk == NULL)
        return -1;
    l->keys = nk;
    char **nv = realloc(l->versions, (l->n + 1) * sizeof *nv);
    if (nv == NULL)
        return -1;
    l->versions = nv;
    l->keys[l->n] = key;
    l->versions[l->n] = version;
    l->n++;
    return 0;
}

/* Parse one page's keys into l; *cursor gets next_cursor (malloc'ed) or NULL. */
static int tc_parse_page(const char *body, th_kv_list *l, char **cursor, char *why, size_t cap)
{
    *cursor = NULL;
    const char *p = strstr(body, "\"keys\":[");
    if (p == NULL) {
        snprintf(why, cap, "page without \"keys\": %.300s", body);
        return -1;
    }
    p += strlen("\"keys\":[");
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\n')
            p++;
        if (*p == ']')
            break;
        if (*p != '{') {
            snprintf(why, cap, "unexpected listing element: %.200s", p);
            return -1;
        }
        const char *e = strchr(p, '}');
        if (e == NULL) {
            snprintf(why, cap, "unterminated listing element: %.200s", p);
            return -1;
        }
        char obj[4096];
        snprintf(obj, sizeof obj, "%.*s", (int)(e - p + 1), p);
        const char *kp = strstr(obj, "\"key\":\""), *vp = strstr(obj, "\"version\":\"");
        const char *end;
        char *key = kp ? tc_json_strdup(kp + 7, &end) : NULL;
        char *version = vp ? tc_json_strdup(vp + 11, &end) : NULL;
        if (key == NULL || version == NULL) {
            free(key);
            free(version);
            snprintf(why, cap, "listing element without key or version: %.300s", obj);
            return -1;
        }
        if (tc_list_add(l, key, version) != 0) {
            free(key);
            free(version);
            snprintf(why, cap, "out of memory");
            return -1;
        }
        p = e + 1;
    }
    const char *c = strstr(p, "\"next_cursor\":");
    if (c == NULL) {
        snprintf(why, cap, "page without next_cursor: %.300s", body);
        return -1;
    }
    c += strlen("\"next_cursor\":");
    while (*c == ' ')
        c++;
    if (*c == '"') {
        const char *end;
        *cursor = tc_json_strdup(c + 1, &end);
        if (*cursor == NULL) {
            snprintf(why, cap, "bad next_cursor: %.200s", c);
            return -1;
        }
    } else if (strncmp(c, "null", 4) != 0) {
        snprintf(why, cap, "next_cursor neither a string nor null: %.200s", c);
        return -1;
    }
    return 0;
}

int th_kv_list_all(int port, const char *prefix, int limit, int max_pages, th_kv_list *out,
                   char *why, size_t cap)
{
    memset(out, 0, sizeof *out);
    char *cursor = NULL;
    char epfx[400];
    th_pct_encode(prefix, strlen(prefix), epfx, sizeof epfx);
    for (;;) {
        if (out->pages >= max_pages) {
            snprintf(why, cap, "more than %d pages", max_pages);
            free(cursor);
            return -1;
        }
        char path[1200];
        int n = snprintf(path, sizeof path, "/v1/kv?prefix=%s&limit=%d", epfx, limit);
        if (cursor) {
            char ecur[700];
            th_pct_encode(cursor, strlen(cursor), ecur, sizeof ecur);
            snprintf(path + n, sizeof path - (size_t)n, "&cursor=%s", ecur);
        }
        free(cursor);
        cursor = NULL;
        th_resp r;
        size_t rlen;
        char *req = th_fmt_req("GET", path, NULL, 0, &rlen);
        int rc = th_http_raw(port, req, rlen, &r, 10000);
        free(req);
        if (rc != 0) {
            snprintf(why, cap, "GET %s: no answer", path);
            return -1;
        }
        out->pages++;
        if (r.status != 200) {
            snprintf(why, cap, "GET %s: status %d: %.300s", path, r.status, r.body);
            th_resp_free(&r);
            return -1;
        }
        int prc = tc_parse_page(r.body, out, &cursor, why, cap);
        th_resp_free(&r);
        if (prc != 0)
            return -1;
        if (cursor == NULL)
            return 0;
    }
}

bool th_cluster_digest(th_cluster *c, int i, th_digest *d)
{
    th_resp r;
    memset(d, 0, sizeof *d);
    if (th_http(c->node[i].port, "GET", "/v1/cluster/digest", NULL, 0, &r) != 0)
        return false;
    bool ok = r.status == 200 && th_json_str(r.body, "root", d->root, sizeof d->root) &&
              th_json_num(r.body, "keys", &d->keys) &&
              th_json_num(r.body, "tombstones", &d->tombstones) &&
              th_json_num(r.body, "depth", &d->depth) && strlen(d->root) == 16;
    th_resp_free(&r);
    return ok;
}

bool th_cluster_roots_agree(th_cluster *c, int timeout_ms, th_digest *out, char *why, size_t cap)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        th_digest d[TH_CLUSTER_MAX];
        bool same = true;
        int first = -1;
        for (int i = 0; i < c->n && same; i++) {
            if (!th_cluster_running(c, i))
                continue;
            if (!th_cluster_digest(c, i, &d[i])) {
                snprintf(why, cap, "n%d: no digest", i);
                same = false;
            } else if (first < 0) {
                first = i;
            } else if (strcmp(d[i].root, d[first].root) != 0 || d[i].keys != d[first].keys) {
                snprintf(why, cap,
                         "n%d root %s keys %g tombstones %g, n%d root %s keys %g "
                         "tombstones %g",
                         first, d[first].root, d[first].keys, d[first].tombstones, i, d[i].root,
                         d[i].keys, d[i].tombstones);
                same = false;
            }
        }
        if (same && first >= 0) {
            *out = d[first];
            return true;
        }
        if (th_now_ms() >= deadline)
            return false;
        usleep(10000);
    }
}
