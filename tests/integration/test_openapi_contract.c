/*
 * test_openapi_contract.c — holds a running node to api/openapi.yaml, the API contract.
 *
 * The spec is read with libyaml and every (path, method) operation in it is enumerated.
 * A table of request cases, keyed by operationId, sends real requests to a real
 * `kvstore servenode` on 127.0.0.1 and checks each answer against what the spec documents
 * for that operation: the status is one it lists, the Content-Type is the media type it
 * lists for that status (no body where it lists none), every required header is present
 * and matches its schema pattern, and problem+json bodies carry a code from the Problem
 * schema's enum with a matching type and status. The test fails when the spec has an
 * operation without a case (or a case names an operation the spec lacks), so the spec and
 * the tests cannot drift apart silently.
 *
 * Beyond the operations: each path's `x-other-methods` response (405 + Allow) is checked
 * with methods the path does not list, `info.x-unknown-route` with unknown paths, and the
 * BadRequest response with bytes that are not HTTP.
 *
 * Single-threaded test code (criterion runs each Test in its own process).
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <ctype.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <yaml.h>

/* ---------- the spec, as a libyaml document ---------- */

#define MAX_OPS   32
#define MAX_PATHS 16

typedef struct spec_op {
    char path[256];
    char method[16]; /* upper case, as on the wire */
    char op_id[128];
    yaml_node_t *responses; /* mapping: status → response (maybe a $ref) */
} spec_op;

typedef struct spec {
    yaml_document_t doc;
    bool loaded;
    spec_op ops[MAX_OPS];
    int nops;
} spec;

static spec g_spec;

static bool scalar_is(const yaml_node_t *n, const char *s)
{
    return n != NULL && n->type == YAML_SCALAR_NODE && n->data.scalar.length == strlen(s) &&
           memcmp(n->data.scalar.value, s, n->data.scalar.length) == 0;
}

static const char *scalar(const yaml_node_t *n)
{
    return n != NULL && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* Value of key in mapping m, without following $ref; NULL if m is not a mapping or lacks it. */
static yaml_node_t *map_get_raw(yaml_document_t *d, yaml_node_t *m, const char *key)
{
    if (m == NULL || m->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        if (scalar_is(yaml_document_get_node(d, p->key), key))
            return yaml_document_get_node(d, p->value);
    }
    return NULL;
}

/* Follow local "$ref: '#/a/b'" links (JSON pointer, ~0 and ~1 escapes) until a node that is
 * not a reference. NULL for a dangling or non-local reference. */
static yaml_node_t *resolve(yaml_document_t *d, yaml_node_t *n)
{
    for (int hops = 0; n != NULL && hops < 16; hops++) {
        const char *ref = scalar(map_get_raw(d, n, "$ref"));
        if (ref == NULL)
            return n;
        if (strncmp(ref, "#/", 2) != 0)
            return NULL;
        n = yaml_document_get_root_node(d);
        const char *p = ref + 2;
        while (n != NULL && *p) {
            char seg[256];
            size_t k = 0;
            for (; *p && *p != '/' && k + 1 < sizeof seg; p++) {
                if (p[0] == '~' && p[1] == '1') {
                    seg[k++] = '/';
                    p++;
                } else if (p[0] == '~' && p[1] == '0') {
                    seg[k++] = '~';
                    p++;
                } else {
                    seg[k++] = *p;
                }
            }
            seg[k] = '\0';
            if (*p == '/')
                p++;
            n = map_get_raw(d, n, seg);
        }
    }
    return NULL;
}

static yaml_node_t *map_get(yaml_document_t *d, yaml_node_t *m, const char *key)
{
    return resolve(d, map_get_raw(d, resolve(d, m), key));
}

static yaml_node_t *spec_root(void)
{
    return yaml_document_get_root_node(&g_spec.doc);
}

static const char *const k_http_methods[] = {"get",     "put",  "post",  "delete",
                                             "options", "head", "patch", "trace"};

static void spec_load(void)
{
    const char *file = KV_SOURCE_DIR "/api/openapi.yaml";
    FILE *f = fopen(file, "rb");
    cr_assert_not_null(f, "cannot open %s", file);
    yaml_parser_t parser;
    cr_assert(yaml_parser_initialize(&parser));
    yaml_parser_set_input_file(&parser, f);
    int ok = yaml_parser_load(&parser, &g_spec.doc);
    if (!ok)
        cr_log_error("%s:%zu: %s", file, parser.problem_mark.line + 1,
                     parser.problem ? parser.problem : "parse error");
    yaml_parser_delete(&parser);
    fclose(f);
    cr_assert(ok, "api/openapi.yaml is not valid YAML");
    g_spec.loaded = true;
    yaml_document_t *d = &g_spec.doc;
    cr_assert_not_null(spec_root(), "api/openapi.yaml is empty");

    yaml_node_t *paths = map_get(d, spec_root(), "paths");
    cr_assert(paths != NULL && paths->type == YAML_MAPPING_NODE, "spec has no paths mapping");
    for (yaml_node_pair_t *p = paths->data.mapping.pairs.start; p < paths->data.mapping.pairs.top;
         p++) {
        const char *path = scalar(yaml_document_get_node(d, p->key));
        yaml_node_t *item = resolve(d, yaml_document_get_node(d, p->value));
        cr_assert_not_null(path);
        for (size_t m = 0; m < sizeof k_http_methods / sizeof k_http_methods[0]; m++) {
            yaml_node_t *op = map_get(d, item, k_http_methods[m]);
            if (op == NULL)
                continue;
            cr_assert_lt(g_spec.nops, MAX_OPS, "more operations than the test expects");
            spec_op *o = &g_spec.ops[g_spec.nops++];
            snprintf(o->path, sizeof o->path, "%s", path);
            for (size_t i = 0; k_http_methods[m][i] && i + 1 < sizeof o->method; i++)
                o->method[i] = (char)toupper((unsigned char)k_http_methods[m][i]);
            const char *id = scalar(map_get(d, op, "operationId"));
            cr_assert_not_null(id, "%s %s has no operationId", o->method, path);
            snprintf(o->op_id, sizeof o->op_id, "%s", id);
            o->responses = map_get(d, op, "responses");
            cr_assert(o->responses != NULL && o->responses->type == YAML_MAPPING_NODE,
                      "%s has no responses", id);
        }
    }
    cr_assert_gt(g_spec.nops, 0, "spec has no operations");
}

static void spec_free(void)
{
    if (g_spec.loaded)
        yaml_document_delete(&g_spec.doc);
    memset(&g_spec, 0, sizeof g_spec);
}

static const spec_op *spec_find_op(const char *op_id)
{
    for (int i = 0; i < g_spec.nops; i++) {
        if (strcmp(g_spec.ops[i].op_id, op_id) == 0)
            return &g_spec.ops[i];
    }
    return NULL;
}

/* Is code one of the Problem schema's enum values? */
static bool spec_problem_code_known(const char *code)
{
    yaml_document_t *d = &g_spec.doc;
    yaml_node_t *s = map_get(d, spec_root(), "components");
    s = map_get(d, s, "schemas");
    s = map_get(d, s, "Problem");
    s = map_get(d, s, "properties");
    yaml_node_t *e = map_get(d, map_get(d, s, "code"), "enum");
    cr_assert(e != NULL && e->type == YAML_SEQUENCE_NODE, "Problem.code has no enum");
    for (yaml_node_item_t *it = e->data.sequence.items.start; it < e->data.sequence.items.top;
         it++) {
        if (scalar_is(yaml_document_get_node(d, *it), code))
            return true;
    }
    return false;
}

/* ---------- a small JSON object reader (problem documents and probe bodies are flat; a
 * nested array or object is kept as its raw text, to be read the same way) ---------- */

typedef struct json_field {
    char key[32];
    char val[512]; /* string value unescaped (\uXXXX kept as is), or the literal's text */
    bool is_str;
    const char *raw; /* nested array/object: its text in the body (raw_len bytes), else NULL */
    size_t raw_len;
} json_field;

static const char *json_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* Read a JSON string at p (at the opening quote) into out; returns the byte after the
 * closing quote, or NULL. */
static const char *json_str(const char *p, const char *end, char *out, size_t cap)
{
    if (p >= end || *p != '"')
        return NULL;
    size_t k = 0;
    for (p++; p < end && *p != '"'; p++) {
        char c = *p;
        if (c == '\\') {
            if (++p >= end)
                return NULL;
            c = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p;
        } else if ((unsigned char)c < 0x20) {
            return NULL;
        }
        if (k + 1 < cap)
            out[k++] = c;
    }
    if (p >= end)
        return NULL;
    out[k] = '\0';
    return p + 1;
}

/* Skip one balanced array or object at p ('[' or '{'); returns the byte after it, or NULL. */
static const char *json_skip_nested(const char *p, const char *end)
{
    int depth = 0;
    char scratch[2];
    while (p < end) {
        if (*p == '"') {
            p = json_str(p, end, scratch, sizeof scratch);
            if (p == NULL)
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

/* Parse body as one JSON object of scalars (nested values kept raw). Returns the number of
 * fields, or -1 if it is not such an object. */
static int json_flat(const char *body, size_t len, json_field *f, int max)
{
    const char *p = body, *end = body + len;
    int n = 0;
    p = json_ws(p, end);
    if (p >= end || *p++ != '{')
        return -1;
    p = json_ws(p, end);
    if (p < end && *p == '}')
        return json_ws(p + 1, end) == end ? 0 : -1;
    for (;;) {
        if (n >= max)
            return -1;
        json_field *jf = &f[n++];
        p = json_str(json_ws(p, end), end, jf->key, sizeof jf->key);
        if (p == NULL)
            return -1;
        p = json_ws(p, end);
        if (p >= end || *p++ != ':')
            return -1;
        p = json_ws(p, end);
        jf->raw = NULL;
        jf->raw_len = 0;
        if (p < end && *p == '"') {
            jf->is_str = true;
            p = json_str(p, end, jf->val, sizeof jf->val);
            if (p == NULL)
                return -1;
        } else if (p < end && (*p == '[' || *p == '{')) {
            const char *start = p;
            p = json_skip_nested(p, end);
            if (p == NULL)
                return -1;
            jf->raw = start;
            jf->raw_len = (size_t)(p - start);
            snprintf(jf->val, sizeof jf->val, "%s", *start == '[' ? "<array>" : "<object>");
            jf->is_str = false;
        } else {
            size_t k = 0;
            while (p < end && (isalnum((unsigned char)*p) || *p == '-' || *p == '+' || *p == '.')) {
                if (k + 1 < sizeof jf->val)
                    jf->val[k++] = *p;
                p++;
            }
            if (k == 0)
                return -1; /* junk */
            jf->val[k] = '\0';
            jf->is_str = false;
        }
        p = json_ws(p, end);
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p < end && *p == '}')
            return json_ws(p + 1, end) == end ? n : -1;
        return -1;
    }
}

static const json_field *json_get(const json_field *f, int n, const char *key)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(f[i].key, key) == 0)
            return &f[i];
    }
    return NULL;
}

/*
 * Check a JSON object (body[0..len)) against an object schema: every required property is
 * present, has the const or one of the enum values the schema gives, is a string when the
 * schema says string and not one otherwise; array properties whose items are object
 * schemas have each element checked the same way (two levels deep at most). Returns the
 * number of failed expectations.
 */
static int check_json_object(const char *what, yaml_node_t *schema, const char *body, size_t len,
                             int depth)
{
    yaml_document_t *d = &g_spec.doc;
    int fails = 0;
    json_field f[24];
    int n = json_flat(body, len, f, 24);
    if (n < 0) {
        cr_expect(false, "%s: not a JSON object: %.*s", what, (int)len, body);
        return 1;
    }
    yaml_node_t *req = map_get(d, schema, "required");
    yaml_node_t *props = map_get(d, schema, "properties");
    if (req == NULL || req->type != YAML_SEQUENCE_NODE)
        return 0;
    for (yaml_node_item_t *it = req->data.sequence.items.start; it < req->data.sequence.items.top;
         it++) {
        const char *pn = scalar(yaml_document_get_node(d, *it));
        const json_field *jf = pn ? json_get(f, n, pn) : NULL;
        if (jf == NULL) {
            cr_expect(false, "%s: body lacks required property '%s'", what, pn ? pn : "?");
            fails++;
            continue;
        }
        yaml_node_t *ps = map_get(d, props, pn);
        const char *type = scalar(map_get(d, ps, "type"));
        const char *cv = scalar(map_get(d, ps, "const"));
        if (cv != NULL && strcmp(cv, jf->val) != 0) {
            cr_expect(false, "%s: property %s is '%s', spec says '%s'", what, pn, jf->val, cv);
            fails++;
        }
        if (type != NULL && (strcmp(type, "string") == 0) != jf->is_str) {
            cr_expect(false, "%s: property %s is %s a string, spec says type %s", what, pn,
                      jf->is_str ? "" : "not", type);
            fails++;
        }
        yaml_node_t *en = map_get(d, ps, "enum");
        if (en != NULL && en->type == YAML_SEQUENCE_NODE) {
            bool ok = false;
            for (yaml_node_item_t *e = en->data.sequence.items.start;
                 e < en->data.sequence.items.top; e++)
                ok = ok || scalar_is(yaml_document_get_node(d, *e), jf->val);
            if (!ok) {
                cr_expect(false, "%s: property %s is '%s', not one of the spec's enum", what, pn,
                          jf->val);
                fails++;
            }
        }
        yaml_node_t *items = map_get(d, ps, "items");
        if (type != NULL && strcmp(type, "array") == 0 && jf->raw && jf->raw[0] == '[' &&
            items != NULL && depth < 2) {
            const char *p = jf->raw + 1, *end = jf->raw + jf->raw_len - 1;
            for (p = json_ws(p, end); p < end; p = json_ws(p, end)) {
                const char *q = *p == '{' ? json_skip_nested(p, end) : NULL;
                if (q == NULL) {
                    cr_expect(false, "%s: %s holds something other than objects", what, pn);
                    return fails + 1;
                }
                char sub[256];
                snprintf(sub, sizeof sub, "%.200s: %s[]", what, pn);
                fails += check_json_object(sub, items, p, (size_t)(q - p), depth + 1);
                p = json_ws(q, end);
                if (p < end && *p == ',')
                    p++;
            }
        }
    }
    return fails;
}

/* ---------- checking one answer against one documented response set ---------- */

/* Compare a Content-Type header with a spec media type key. The type/subtype must match
 * (case-insensitive); every parameter the spec names (e.g. version=0.0.4) must be present;
 * extra parameters (charset) are allowed. */
static bool media_type_matches(const char *spec_mt, const char *actual)
{
    char want[128], got[256];
    size_t k = 0;
    for (const char *p = spec_mt; *p && k + 1 < sizeof want; p++) {
        if (*p != ' ')
            want[k++] = (char)tolower((unsigned char)*p);
    }
    want[k] = '\0';
    k = 0;
    for (const char *p = actual; *p && k + 1 < sizeof got; p++) {
        if (*p != ' ' && *p != '\t')
            got[k++] = (char)tolower((unsigned char)*p);
    }
    got[k] = '\0';
    size_t wt = strcspn(want, ";"), gt = strcspn(got, ";");
    if (wt != gt || memcmp(want, got, wt) != 0)
        return false;
    /* each ";param" of want must appear among got's parameters */
    char *save = NULL;
    for (char *prm = strtok_r(want + wt, ";", &save); prm; prm = strtok_r(NULL, ";", &save)) {
        bool found = false;
        char gcopy[256];
        snprintf(gcopy, sizeof gcopy, "%s", got + gt);
        char *save2 = NULL;
        for (char *g = strtok_r(gcopy, ";", &save2); g; g = strtok_r(NULL, ";", &save2)) {
            if (strcmp(g, prm) == 0)
                found = true;
        }
        if (!found)
            return false;
    }
    return true;
}

/*
 * Check r against the response set `responses` (a mapping status → response, as in an
 * operation) or, when responses is NULL, against the single response `one`. what names
 * the case in messages. Returns the number of failed expectations.
 */
static int check_answer(const char *what, yaml_node_t *responses, yaml_node_t *one,
                        const th_resp *r)
{
    yaml_document_t *d = &g_spec.doc;
    int fails = 0;
#define FAIL(...)                                                                                  \
    do {                                                                                           \
        cr_expect(false, __VA_ARGS__);                                                             \
        fails++;                                                                                   \
    } while (0)

    yaml_node_t *resp = one;
    if (responses != NULL) {
        char st[16], range[16];
        snprintf(st, sizeof st, "%d", r->status);
        snprintf(range, sizeof range, "%dXX", r->status / 100);
        resp = map_get(d, responses, st);
        if (resp == NULL)
            resp = map_get(d, responses, range);
        if (resp == NULL)
            resp = map_get(d, responses, "default");
        if (resp == NULL) {
            FAIL("%s: status %d is not documented for this operation", what, r->status);
            return fails;
        }
    }
    cr_assert_not_null(resp, "%s: the spec's response does not resolve", what);

    /* media type */
    char ctype[256] = "";
    bool has_ctype = th_resp_header(r, "Content-Type", ctype, sizeof ctype);
    yaml_node_t *content = map_get(d, resp, "content");
    const char *mt = NULL;
    if (content == NULL || content->type != YAML_MAPPING_NODE ||
        content->data.mapping.pairs.start == content->data.mapping.pairs.top) {
        if (has_ctype)
            FAIL("%s: status %d documents no body but Content-Type is '%s'", what, r->status,
                 ctype);
        if (r->body_len != 0)
            FAIL("%s: status %d documents no body but %zu bytes came", what, r->status,
                 r->body_len);
    } else if (!has_ctype) {
        FAIL("%s: status %d has no Content-Type", what, r->status);
    } else {
        for (yaml_node_pair_t *p = content->data.mapping.pairs.start;
             p < content->data.mapping.pairs.top; p++) {
            const char *k = scalar(yaml_document_get_node(d, p->key));
            if (k != NULL && media_type_matches(k, ctype))
                mt = k;
        }
        if (mt == NULL)
            FAIL("%s: status %d Content-Type '%s' is not a documented media type", what, r->status,
                 ctype);
    }

    /* headers the spec marks required, and their patterns */
    yaml_node_t *hdrs = map_get(d, resp, "headers");
    if (hdrs != NULL && hdrs->type == YAML_MAPPING_NODE) {
        for (yaml_node_pair_t *p = hdrs->data.mapping.pairs.start; p < hdrs->data.mapping.pairs.top;
             p++) {
            const char *name = scalar(yaml_document_get_node(d, p->key));
            yaml_node_t *h = resolve(d, yaml_document_get_node(d, p->value));
            if (name == NULL || h == NULL)
                continue;
            char val[512];
            if (!th_resp_header(r, name, val, sizeof val)) {
                if (scalar_is(map_get(d, h, "required"), "true"))
                    FAIL("%s: status %d lacks documented header %s", what, r->status, name);
                continue;
            }
            const char *pat = scalar(map_get(d, map_get(d, h, "schema"), "pattern"));
            if (pat != NULL) {
                regex_t re;
                cr_assert_eq(regcomp(&re, pat, REG_EXTENDED | REG_NOSUB), 0,
                             "header %s pattern '%s' does not compile", name, pat);
                if (regexec(&re, val, 0, NULL, 0) != 0)
                    FAIL("%s: header %s '%s' does not match '%s'", what, name, val, pat);
                regfree(&re);
            }
        }
    }

    /* bodies: problem documents in full, other JSON by its schema's required properties */
    if (mt != NULL && strstr(mt, "json") != NULL) {
        json_field f[16];
        int n = json_flat(r->body, r->body_len, f, 16);
        if (n < 0) {
            FAIL("%s: body is not a flat JSON object: %.*s", what, (int)r->body_len, r->body);
        } else if (strcmp(mt, "application/problem+json") == 0) {
            const json_field *code = json_get(f, n, "code"), *type = json_get(f, n, "type");
            const json_field *status = json_get(f, n, "status"), *title = json_get(f, n, "title");
            const json_field *detail = json_get(f, n, "detail");
            if (!code || !code->is_str || !type || !type->is_str || !status || status->is_str ||
                !title || !title->is_str || !detail || !detail->is_str) {
                FAIL("%s: problem lacks type/title/status/code/detail: %.*s", what,
                     (int)r->body_len, r->body);
            } else {
                char want_type[600];
                snprintf(want_type, sizeof want_type, "urn:kvstore:problem:%s", code->val);
                if (!spec_problem_code_known(code->val))
                    FAIL("%s: problem code '%s' is not in the Problem.code enum", what, code->val);
                if (strcmp(type->val, want_type) != 0)
                    FAIL("%s: problem type '%s', want '%s'", what, type->val, want_type);
                if (atoi(status->val) != r->status)
                    FAIL("%s: problem status %s but HTTP status %d", what, status->val, r->status);
            }
        } else {
            yaml_node_t *schema = map_get(d, map_get(d, content, mt), "schema");
            fails += check_json_object(what, schema, r->body, r->body_len, 0);
        }
    }
#undef FAIL
    return fails;
}

/* Code of a problem+json answer ("" if none), for comparing with a case's expectation. */
static void problem_code(const th_resp *r, char *out, size_t cap)
{
    json_field f[16];
    int n = json_flat(r->body, r->body_len, f, 16);
    const json_field *c = n > 0 ? json_get(f, n, "code") : NULL;
    const char *v = c ? c->val : "";
    size_t l = strnlen(v, cap - 1);
    memcpy(out, v, l);
    out[l] = '\0';
}

/* ---------- the node under test ---------- */

static th_node g_node;
static char g_dir[256];

/* Small limits so the limit cases are cheap: values over 4 KiB get 413, and a request that
 * has not arrived whole after 500 ms gets 408. Keys keep the default 1024-byte limit. */
static const char *const k_node_env[] = {"DIST_KV__LIMITS__MAX_VALUE=4096",
                                         "DIST_KV__LIMITS__REQUEST_TIMEOUT=500ms", NULL};
#define SMALL_MAX_VALUE 4096

static void node_up(void)
{
    spec_load();
    th_tmpdir(g_dir, sizeof g_dir);
    cr_assert_eq(th_node_start(&g_node, g_dir, 0, NULL, k_node_env, 15000), 0,
                 "kvstore servenode did not become healthy");
    /* /readyz may say 503 for a moment after /healthz is up: wait for it with a deadline. */
    int64_t deadline = th_now_ms() + 10000;
    for (;;) {
        th_resp r;
        int rc = th_http(g_node.port, "GET", "/readyz", NULL, 0, &r);
        int st = rc == 0 ? r.status : -1;
        if (rc == 0)
            th_resp_free(&r);
        if (st == 200)
            break;
        cr_assert_lt(th_now_ms(), deadline, "/readyz never answered 200 (last status %d)", st);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void node_down(void)
{
    if (g_node.pid > 0)
        th_node_stop(&g_node, 10000);
    th_kill_all();
    if (g_dir[0])
        th_tmpdir_remove(g_dir);
    spec_free();
}

static void spec_only_up(void)
{
    spec_load();
}

/* ---------- the cases ---------- */

/* Request builders for cases whose bytes are not a plain "METHOD target + body". */
static char *req_long_key(const char *method, size_t *len)
{
    /* 1025 bytes after decoding: one over limits.max_key. */
    char path[1100] = "/v1/kv/";
    memset(path + 7, 'k', 1025);
    path[7 + 1025] = '\0';
    return th_fmt_req(method, path, NULL, 0, len);
}

static char *req_put_long_key(size_t *len)
{
    return req_long_key("PUT", len);
}

static char *req_get_long_key(size_t *len)
{
    return req_long_key("GET", len);
}

static char *req_delete_long_key(size_t *len)
{
    return req_long_key("DELETE", len);
}

/* Exactly 1024 bytes after decoding but 3072 on the wire: the limit is on decoded bytes. */
static char *req_max_key(const char *method, const char *body, size_t *len)
{
    char path[8 + 3 * 1024 + 1] = "/v1/kv/";
    for (int i = 0; i < 1024; i++)
        memcpy(path + 7 + 3 * i, "%6B", 3);
    path[7 + 3 * 1024] = '\0';
    return th_fmt_req(method, path, body, body ? strlen(body) : 0, len);
}

static char *req_put_max_key(size_t *len)
{
    return req_max_key("PUT", "max", len);
}

static char *req_get_max_key(size_t *len)
{
    return req_max_key("GET", NULL, len);
}

static char *req_big_value(size_t *len)
{
    static char body[SMALL_MAX_VALUE + 1];
    memset(body, 'v', sizeof body);
    return th_fmt_req("PUT", "/v1/kv/big", body, sizeof body, len);
}

static char *req_big_headers(size_t *len)
{
    /* 20 KiB of headers, over the default limits.max_header of 16 KiB. */
    size_t fill = 20 * 1024;
    const char *head = "GET /v1/kv/greeting HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: ";
    char *buf = malloc(strlen(head) + fill + 8);
    cr_assert_not_null(buf);
    size_t n = strlen(head);
    memcpy(buf, head, n);
    memset(buf + n, 'h', fill);
    n += fill;
    memcpy(buf + n, "\r\n\r\n", 4);
    *len = n + 4;
    return buf;
}

static char *req_partial(size_t *len)
{
    /* The header block never ends: the node must give up after limits.request_timeout. */
    static const char part[] = "GET /v1/kv/greeting HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    *len = sizeof part - 1;
    char *buf = malloc(sizeof part);
    cr_assert_not_null(buf);
    memcpy(buf, part, sizeof part);
    return buf;
}

static char *req_put_big_headers(size_t *len)
{
    size_t fill = 20 * 1024;
    const char *head = "PUT /v1/kv/greeting HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n"
                       "X-Filler: ";
    char *buf = malloc(strlen(head) + fill + 8);
    cr_assert_not_null(buf);
    size_t n = strlen(head);
    memcpy(buf, head, n);
    memset(buf + n, 'h', fill);
    n += fill;
    memcpy(buf + n, "\r\n\r\nx", 5);
    *len = n + 5;
    return buf;
}

static char *req_put_partial_body(size_t *len)
{
    /* Headers complete, body 3 of 10 bytes: the body, too, must arrive in time. */
    static const char part[] =
        "PUT /v1/kv/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\nabc";
    *len = sizeof part - 1;
    char *buf = malloc(sizeof part);
    cr_assert_not_null(buf);
    memcpy(buf, part, sizeof part);
    return buf;
}

typedef struct contract_case {
    const char *op_id;           /* the operation whose responses document the answer */
    const char *what;            /* for messages */
    const char *method, *target; /* plain request (target = path + query) ... */
    const char *body;            /* ... with this body (NULL: none) */
    char *(*build)(size_t *len); /* ... or these raw bytes instead */
    int status;                  /* the status this request must get */
    const char *code;            /* problem code it must carry, or NULL */
    const char *want_body;       /* exact body it must carry, or NULL */
} contract_case;

/* In order: later cases rely on the writes of earlier ones. */
static const contract_case k_cases[] = {
    {"putKey", "put a value", "PUT", "/v1/kv/greeting", "hello", NULL, 204, NULL, NULL},
    {"putKey", "put under a percent-encoded key", "PUT", "/v1/kv/user%2F42%20name", "x", NULL, 204,
     NULL, NULL},
    {"putKey", "put with a ttl", "PUT", "/v1/kv/ttl-key?ttl=60", "t", NULL, 204, NULL, NULL},
    {"putKey", "put an empty value", "PUT", "/v1/kv/empty", "", NULL, 204, NULL, NULL},
    {"putKey", "put under a 1024-byte key sent percent-encoded", NULL, NULL, NULL, req_put_max_key,
     204, NULL, NULL},
    {"putKey", "put with a ttl that is not a number", "PUT", "/v1/kv/ttl-key?ttl=abc", "t", NULL,
     400, "invalid_query", NULL},
    {"putKey", "put with ttl=0", "PUT", "/v1/kv/ttl-key?ttl=0", "t", NULL, 400, "invalid_query",
     NULL},
    {"putKey", "put under a 1025-byte key", NULL, NULL, NULL, req_put_long_key, 414, "key_too_long",
     NULL},
    {"putKey", "put a value over limits.max_value", NULL, NULL, NULL, req_big_value, 413,
     "value_too_large", NULL},
    {"putKey", "put with 20 KiB of headers", NULL, NULL, NULL, req_put_big_headers, 431,
     "headers_too_large", NULL},
    {"putKey", "a put whose body never finishes arriving", NULL, NULL, NULL, req_put_partial_body,
     408, "request_timeout", NULL},
    {"putKey", "put under a badly encoded key", "PUT", "/v1/kv/bad%G1", "x", NULL, 400,
     "invalid_key", NULL},

    {"getKey", "get a value", "GET", "/v1/kv/greeting", NULL, NULL, 200, NULL, "hello"},
    {"getKey", "get under a percent-encoded key", "GET", "/v1/kv/user%2F42%20name", NULL, NULL, 200,
     NULL, "x"},
    {"getKey", "get a value with a ttl", "GET", "/v1/kv/ttl-key", NULL, NULL, 200, NULL, "t"},
    {"getKey", "get an empty value", "GET", "/v1/kv/empty", NULL, NULL, 200, NULL, ""},
    {"getKey", "get under a 1024-byte key", NULL, NULL, NULL, req_get_max_key, 200, NULL, "max"},
    {"getKey", "get a key never written", "GET", "/v1/kv/never-written", NULL, NULL, 404,
     "key_not_found", NULL},
    {"getKey", "get under a badly encoded key", "GET", "/v1/kv/%zz", NULL, NULL, 400, "invalid_key",
     NULL},
    {"getKey", "get the empty key", "GET", "/v1/kv/", NULL, NULL, 400, "invalid_key", NULL},
    {"getKey", "get under a 1025-byte key", NULL, NULL, NULL, req_get_long_key, 414, "key_too_long",
     NULL},
    {"getKey", "get with 20 KiB of headers", NULL, NULL, NULL, req_big_headers, 431,
     "headers_too_large", NULL},
    {"getKey", "a get that never finishes arriving", NULL, NULL, NULL, req_partial, 408,
     "request_timeout", NULL},

    {"deleteKey", "delete a value", "DELETE", "/v1/kv/greeting", NULL, NULL, 204, NULL, NULL},
    {"deleteKey", "delete it again", "DELETE", "/v1/kv/greeting", NULL, NULL, 204, NULL, NULL},
    {"getKey", "get a deleted key", "GET", "/v1/kv/greeting", NULL, NULL, 404, "key_not_found",
     NULL},
    {"deleteKey", "delete a key never written", "DELETE", "/v1/kv/never-written", NULL, NULL, 204,
     NULL, NULL},
    {"deleteKey", "delete under a badly encoded key", "DELETE", "/v1/kv/%4", NULL, NULL, 400,
     "invalid_key", NULL},
    {"deleteKey", "delete under a 1025-byte key", NULL, NULL, NULL, req_delete_long_key, 414,
     "key_too_long", NULL},

    {"getHealth", "liveness", "GET", "/healthz", NULL, NULL, 200, NULL, NULL},
    {"getReady", "readiness", "GET", "/readyz", NULL, NULL, 200, NULL, NULL},
    {"getMetrics", "metrics", "GET", "/metrics", NULL, NULL, 200, NULL, NULL},
    {"getClusterMembers", "cluster members (a node alone)", "GET", "/v1/cluster/members", NULL,
     NULL, 200, NULL, NULL},
    {"getClusterRing", "cluster ring (a node alone)", "GET", "/v1/cluster/ring", NULL, NULL, 200,
     NULL, NULL},
    {"getClusterDigest", "anti-entropy digest", "GET", "/v1/cluster/digest", NULL, NULL, 200, NULL,
     NULL},
    {"listKeys", "list keys with a prefix", "GET", "/v1/kv?prefix=user%2F&limit=10", NULL, NULL,
     200, NULL, NULL},
    {"listKeys", "list with limit=0", "GET", "/v1/kv?limit=0", NULL, NULL, 400, "invalid_query",
     NULL},
    {"listKeys", "list with a cursor no page gave", "GET", "/v1/kv?cursor=nope", NULL, NULL, 400,
     "invalid_query", NULL},
    {"postClusterRemove", "remove a member that does not exist", "POST",
     "/v1/cluster/remove?node=nobody", NULL, NULL, 404, "member_not_found", NULL},
    {"postClusterRemove", "remove without naming a member", "POST", "/v1/cluster/remove", NULL,
     NULL, 400, "invalid_query", NULL},
    /* last: the node leaves the cluster and exits (alone, it has nothing to hand over) */
    {"postClusterLeave", "leave the cluster", "POST", "/v1/cluster/leave", NULL, NULL, 202, NULL,
     NULL},
};
#define NCASES (sizeof k_cases / sizeof k_cases[0])

/* Send one request (raw bytes) on a fresh connection; cr-fails if nothing came back. */
static bool exchange(const char *what, const char *req, size_t len, th_resp *r)
{
    /* 5 s is far above the 500 ms request timeout the slowest case waits for. */
    int rc = th_http_raw(g_node.port, req, len, r, 5000);
    cr_expect_eq(rc, 0, "%s: no complete response from the node", what);
    return rc == 0;
}

/* ---------- tests ---------- */

Test(openapi_contract, every_operation_has_a_case, .init = spec_only_up, .fini = spec_free)
{
    for (int i = 0; i < g_spec.nops; i++) {
        bool found = false;
        for (size_t c = 0; c < NCASES; c++) {
            if (strcmp(k_cases[c].op_id, g_spec.ops[i].op_id) == 0)
                found = true;
        }
        cr_expect(found, "operation %s (%s %s) has no test case in test_openapi_contract.c",
                  g_spec.ops[i].op_id, g_spec.ops[i].method, g_spec.ops[i].path);
    }
    for (size_t c = 0; c < NCASES; c++) {
        cr_expect_not_null(spec_find_op(k_cases[c].op_id),
                           "case '%s' names operation %s, which api/openapi.yaml lacks",
                           k_cases[c].what, k_cases[c].op_id);
    }
}

Test(openapi_contract, every_operation_answers_as_documented, .init = node_up, .fini = node_down,
     .timeout = 120)
{
    int got_status[NCASES];
    for (size_t c = 0; c < NCASES; c++) {
        got_status[c] = 0;
        const contract_case *k = &k_cases[c];
        const spec_op *op = spec_find_op(k->op_id);
        cr_assert_not_null(op, "unknown operation %s", k->op_id);
        char what[512];
        snprintf(what, sizeof what, "%s [%s %s]", k->what, op->op_id, op->path);

        size_t len;
        char *req = k->build ? k->build(&len)
                             : th_fmt_req(k->method, k->target, k->body,
                                          k->body ? strlen(k->body) : 0, &len);
        th_resp r;
        bool got = exchange(what, req, len, &r);
        free(req);
        if (!got)
            continue;
        got_status[c] = r.status;

        cr_expect_eq(r.status, k->status, "%s: status %d, want %d; body: %.*s", what, r.status,
                     k->status, (int)r.body_len, r.body);
        check_answer(what, op->responses, NULL, &r);
        if (k->code != NULL) {
            char code[64];
            problem_code(&r, code, sizeof code);
            cr_expect_str_eq(code, k->code, "%s: problem code '%s', want '%s'", what, code,
                             k->code);
        }
        if (k->want_body != NULL) {
            size_t wl = strlen(k->want_body);
            cr_expect(r.body_len == wl && memcmp(r.body, k->want_body, wl) == 0,
                      "%s: body '%.*s', want '%s'", what, (int)r.body_len, r.body, k->want_body);
        }
        th_resp_free(&r);
    }
    /* The last case made the node leave the cluster: it exits by itself, and cleanly. */
    cr_expect(th_node_wait_exit(&g_node, 15000) && g_node.exit_status == 0,
              "the node did not leave and exit 0 after the last case (exit status %d)",
              g_node.exit_status);

    /* Documented statuses no case reaches (disk full, I/O errors, shutdown races, too many
     * connections): listed so the gap is visible, not failed. */
    yaml_document_t *d = &g_spec.doc;
    for (int i = 0; i < g_spec.nops; i++) {
        const spec_op *op = &g_spec.ops[i];
        for (yaml_node_pair_t *p = op->responses->data.mapping.pairs.start;
             p < op->responses->data.mapping.pairs.top; p++) {
            const char *st = scalar(yaml_document_get_node(d, p->key));
            bool reached = false;
            for (size_t c = 0; c < NCASES && st; c++) {
                if (strcmp(k_cases[c].op_id, op->op_id) == 0 && got_status[c] == atoi(st))
                    reached = true;
            }
            if (!reached)
                cr_log_info("%s: documented status %s not exercised here", op->op_id,
                            st ? st : "?");
        }
    }
}

/* Methods a path does not list get its x-other-methods response: 405, a problem and an
 * Allow header naming exactly the methods the spec lists for the path. */
Test(openapi_contract, unlisted_methods_get_405_with_allow, .init = node_up, .fini = node_down,
     .timeout = 60)
{
    yaml_document_t *d = &g_spec.doc;
    yaml_node_t *paths = map_get(d, spec_root(), "paths");
    int checked = 0;
    for (yaml_node_pair_t *p = paths->data.mapping.pairs.start; p < paths->data.mapping.pairs.top;
         p++) {
        const char *path = scalar(yaml_document_get_node(d, p->key));
        yaml_node_t *item = resolve(d, yaml_document_get_node(d, p->value));
        yaml_node_t *other = map_get(d, item, "x-other-methods");
        cr_expect_not_null(other, "path %s does not document other methods (x-other-methods)",
                           path);
        if (other == NULL)
            continue;

        /* A concrete target: every {param} becomes "k". */
        char target[256];
        size_t k = 0;
        for (const char *s = path; *s && k + 2 < sizeof target; s++) {
            if (*s == '{') {
                target[k++] = 'k';
                while (*s && *s != '}')
                    s++;
                if (!*s)
                    break;
            } else {
                target[k++] = *s;
            }
        }
        target[k] = '\0';

        static const char *const probe[] = {"POST", "PATCH", "PUT", "DELETE"};
        for (size_t m = 0; m < sizeof probe / sizeof probe[0]; m++) {
            char lower[16];
            size_t i = 0;
            for (; probe[m][i]; i++)
                lower[i] = (char)tolower((unsigned char)probe[m][i]);
            lower[i] = '\0';
            if (map_get(d, item, lower) != NULL)
                continue; /* listed: covered by the operation cases */

            char what[300];
            snprintf(what, sizeof what, "%s %s (not listed)", probe[m], target);
            size_t len;
            char *req = th_fmt_req(probe[m], target, "x", 1, &len);
            th_resp r;
            bool got = exchange(what, req, len, &r);
            free(req);
            if (!got)
                continue;
            checked++;
            cr_expect_eq(r.status, 405, "%s: status %d, want 405", what, r.status);
            if (r.status == 405)
                check_answer(what, NULL, other, &r);

            /* Allow must name exactly the listed methods. */
            char allow[128] = "";
            th_resp_header(&r, "Allow", allow, sizeof allow);
            int listed = 0, named = 0;
            for (size_t hm = 0; hm < sizeof k_http_methods / sizeof k_http_methods[0]; hm++) {
                if (map_get(d, item, k_http_methods[hm]) == NULL)
                    continue;
                listed++;
                char up[16];
                size_t j = 0;
                for (; k_http_methods[hm][j]; j++)
                    up[j] = (char)toupper((unsigned char)k_http_methods[hm][j]);
                up[j] = '\0';
                char copy[128];
                snprintf(copy, sizeof copy, "%s", allow);
                char *save = NULL;
                for (char *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
                    if (strcmp(t, up) == 0)
                        named++;
                }
            }
            int tokens = 0;
            char copy[128];
            snprintf(copy, sizeof copy, "%s", allow);
            char *save = NULL;
            for (char *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
                tokens++;
            cr_expect(named == listed && tokens == listed,
                      "%s: Allow '%s' does not name exactly the %d methods the spec lists", what,
                      allow, listed);
            th_resp_free(&r);
        }
    }
    cr_expect_gt(checked, 0, "no unlisted method was probed");
}

/* Paths that are no route get info.x-unknown-route (404 route_not_found); bytes that are not
 * HTTP get the BadRequest response (400 bad_request). */
Test(openapi_contract, unknown_routes_and_garbage, .init = node_up, .fini = node_down,
     .timeout = 60)
{
    yaml_document_t *d = &g_spec.doc;
    yaml_node_t *unknown = map_get(d, map_get(d, spec_root(), "info"), "x-unknown-route");
    cr_assert_not_null(unknown, "info.x-unknown-route is not documented");

    static const char *const targets[][2] = {
        {"GET", "/nope"}, {"GET", "/v1/kvs"}, {"POST", "/v1/nope"}, {"GET", "/v2/kv/a"}};
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        char what[128];
        snprintf(what, sizeof what, "%s %s (unknown route)", targets[i][0], targets[i][1]);
        th_resp r;
        size_t len;
        char *req = th_fmt_req(targets[i][0], targets[i][1], NULL, 0, &len);
        bool got = exchange(what, req, len, &r);
        free(req);
        if (!got)
            continue;
        cr_expect_eq(r.status, 404, "%s: status %d, want 404", what, r.status);
        check_answer(what, NULL, unknown, &r);
        char code[64];
        problem_code(&r, code, sizeof code);
        cr_expect_str_eq(code, "route_not_found", "%s: code '%s'", what, code);
        th_resp_free(&r);
    }

    yaml_node_t *bad =
        map_get(d, map_get(d, map_get(d, spec_root(), "components"), "responses"), "BadRequest");
    cr_assert_not_null(bad, "components.responses.BadRequest is not documented");
    static const char garbage[] = "THIS IS NOT HTTP\x01\x02\r\n\r\n";
    th_resp r;
    if (exchange("garbage", garbage, sizeof garbage - 1, &r)) {
        cr_expect_eq(r.status, 400, "garbage: status %d, want 400", r.status);
        check_answer("garbage", NULL, bad, &r);
        char code[64];
        problem_code(&r, code, sizeof code);
        cr_expect_str_eq(code, "bad_request", "garbage: code '%s'", code);
        th_resp_free(&r);
    }
    cr_expect(th_node_alive(&g_node), "the node died on garbage");
}
