/*
 * members.c — the `kvtool members` table (see members.h). Pure; any thread.
 *
 * The body is read with a small scanner rather than a JSON library: it finds the
 * top-level "members" array, splits it into its objects (strings and nesting respected)
 * and reads each object's fields with kvc_json_str_field and a number reader. Anything
 * unexpected makes the whole body "not understood" rather than a half-printed table.
 */
#include "cli/members.h"

#include "client/json.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MEMBERS_MAX 65536

typedef struct member_row {
    char name[160];
    char address[160];
    char state[16];
    char incarnation[24];
    char ring[16];
    char since[40];
    bool self;
} member_row;

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* Past the JSON string starting at p (the opening quote); NULL if it does not end. */
static const char *skip_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return NULL;
}

/* Past one JSON value at p (string, number, literal, array or object); NULL if broken. */
static const char *skip_value(const char *p, const char *end)
{
    if (p >= end)
        return NULL;
    if (*p == '"')
        return skip_string(p, end);
    if (*p != '[' && *p != '{') {
        while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n')
            p++;
        return p;
    }
    int depth = 0;
    while (p < end) {
        if (*p == '"') {
            p = skip_string(p, end);
            if (!p)
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

/* The value of the top-level member `name` of the object at [p, end): *vp and *vend. */
static bool find_member(const char *p, const char *end, const char *name, const char **vp,
                        const char **vend)
{
    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return false;
    p++;
    size_t nlen = strlen(name);
    for (;;) {
        p = skip_ws(p, end);
        if (p >= end || *p != '"')
            return false;
        const char *k = p + 1, *kend = skip_string(p, end);
        if (!kend)
            return false;
        p = skip_ws(kend, end);
        if (p >= end || *p != ':')
            return false;
        p = skip_ws(p + 1, end);
        const char *v = p;
        p = skip_value(p, end);
        if (!p)
            return false;
        if ((size_t)(kend - 1 - k) == nlen && memcmp(k, name, nlen) == 0) {
            *vp = v;
            *vend = p;
            return true;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        return false;
    }
}

/* A number or literal member as text ("3", "true"). */
static bool literal_field(const char *obj, size_t len, const char *name, char *out, size_t cap)
{
    const char *v, *vend;
    if (!find_member(obj, obj + len, name, &v, &vend) || v >= vend || *v == '"' || *v == '[' ||
        *v == '{')
        return false;
    size_t n = (size_t)(vend - v);
    if (n >= cap)
        return false;
    memcpy(out, v, n);
    out[n] = '\0';
    return true;
}

/* Control bytes would break the table (or the terminal): show them as '?'. */
static void sanitize(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

/* Display width of UTF-8 text: one column per character (good enough for names). */
static int width(const char *s)
{
    int w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            w++;
    return w;
}

static void pad(FILE *out, const char *s, int w)
{
    fputs(s, out);
    for (int i = width(s); i < w; i++)
        fputc(' ', out);
}

static int parse_rows(const char *body, size_t len, member_row **rows_out, size_t *nrows)
{
    const char *end = body + len, *arr, *arrend;
    if (!find_member(body, end, "members", &arr, &arrend) || *arr != '[')
        return -1;
    size_t cap = 16, n = 0;
    member_row *rows = calloc(cap, sizeof(*rows));
    if (!rows)
        return -1;
    const char *p = skip_ws(arr + 1, arrend);
    while (p < arrend && *p != ']') {
        const char *obj = p, *oend = skip_value(p, arrend);
        if (*obj != '{' || !oend || n == MEMBERS_MAX)
            goto bad;
        if (n == cap) {
            member_row *nr = realloc(rows, 2 * cap * sizeof(*rows));
            if (!nr)
                goto bad;
            rows = nr;
            cap *= 2;
        }
        member_row *r = &rows[n++];
        memset(r, 0, sizeof(*r));
        size_t ol = (size_t)(oend - obj);
        char self[8] = "";
        if (!kvc_json_str_field(obj, ol, "name", r->name, sizeof(r->name)) ||
            !kvc_json_str_field(obj, ol, "address", r->address, sizeof(r->address)) ||
            !kvc_json_str_field(obj, ol, "state", r->state, sizeof(r->state)) ||
            !literal_field(obj, ol, "incarnation", r->incarnation, sizeof(r->incarnation)))
            goto bad;
        if (!kvc_json_str_field(obj, ol, "ring_status", r->ring, sizeof(r->ring)))
            snprintf(r->ring, sizeof(r->ring), "-");
        if (!kvc_json_str_field(obj, ol, "since", r->since, sizeof(r->since)))
            snprintf(r->since, sizeof(r->since), "-");
        r->self = literal_field(obj, ol, "self", self, sizeof(self)) && strcmp(self, "true") == 0;
        sanitize(r->name);
        sanitize(r->address);
        sanitize(r->state);
        sanitize(r->ring);
        sanitize(r->since);
        p = skip_ws(oend, arrend);
        if (p < arrend && *p == ',')
            p = skip_ws(p + 1, arrend);
    }
    *rows_out = rows;
    *nrows = n;
    return 0;
bad:
    free(rows);
    return -1;
}

int cli_members_print_table(const char *body, size_t len, FILE *out)
{
    member_row *rows;
    size_t n;
    if (parse_rows(body, len, &rows, &n) != 0)
        return -1;
    static const char *const head[] = {"NAME", "ADDRESS", "STATE", "INCARNATION", "RING", "SINCE"};
    int w[6];
    for (int c = 0; c < 6; c++)
        w[c] = (int)strlen(head[c]);
    size_t count[5] = {0};
    static const char *const states[] = {"alive", "suspect", "dead", "left"};
    for (size_t i = 0; i < n; i++) {
        const member_row *r = &rows[i];
        const char *cols[6] = {r->name, r->address, r->state, r->incarnation, r->ring, r->since};
        for (int c = 0; c < 6; c++) {
            int cw = width(cols[c]) + (c == 0 && r->self ? 2 : 0);
            if (cw > w[c])
                w[c] = cw;
        }
        size_t s = 0;
        while (s < 4 && strcmp(r->state, states[s]) != 0)
            s++;
        count[s]++;
    }
    for (int c = 0; c < 6; c++) {
        if (c < 5)
            pad(out, head[c], w[c] + 2);
        else
            fputs(head[c], out);
    }
    fputc('\n', out);
    for (size_t i = 0; i < n; i++) {
        const member_row *r = &rows[i];
        char name[170];
        snprintf(name, sizeof(name), "%s%s", r->name, r->self ? " *" : "");
        const char *cols[6] = {name, r->address, r->state, r->incarnation, r->ring, r->since};
        for (int c = 0; c < 5; c++)
            pad(out, cols[c], w[c] + 2);
        fputs(cols[5], out);
        fputc('\n', out);
    }
    fprintf(out, "\n%zu members: %zu alive, %zu suspect, %zu dead, %zu left", n, count[0], count[1],
            count[2], count[3]);
    if (count[4])
        fprintf(out, ", %zu other", count[4]);
    fprintf(out, "; * = the node that answered\n");
    free(rows);
    return 0;
}
