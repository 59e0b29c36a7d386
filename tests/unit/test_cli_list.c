/*
 * test_cli_list.c — `kvtool list` (src/cli/list.c) against a scripted HTTP server in a
 * thread of the test (127.0.0.1): one page or all of them, keys printed safely one per
 * line, --json pages one per line, the --cursor and --limit it sends, and the guards that
 * stop a listing that does not make progress. Every wait in the server is a poll()
 * bounded in time.
 */
#include "cli/list.h"
#include "kvstore/client.h"

#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_STEPS 8

typedef struct srv {
    int lfd, port;
    const char *bodies[MAX_STEPS]; /* page answered to request i, cyclically */
    int nbodies;
    char reqs[MAX_STEPS][512]; /* request lines */
    int nreq;
    pthread_t th;
} srv;

/* Read until the end of the request head; false on EOF, error or 5 s of silence. */
static bool read_head(int fd, char *line, size_t cap)
{
    char buf[4096];
    size_t len = 0;
    while (len < sizeof(buf) - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 5000) <= 0)
            return false;
        ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (n <= 0)
            return false;
        len += (size_t)n;
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end) {
            char *eol = strstr(buf, "\r\n");
            size_t l = (size_t)(eol - buf) < cap - 1 ? (size_t)(eol - buf) : cap - 1;
            memcpy(line, buf, l);
            line[l] = '\0';
            return true;
        }
    }
    return false;
}

static void *srv_main(void *arg)
{
    srv *s = arg;
    struct pollfd p = {.fd = s->lfd, .events = POLLIN};
    if (poll(&p, 1, 5000) <= 0)
        return NULL;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    for (int i = 0; i < 10000; i++) {
        char line[512];
        if (!read_head(fd, line, sizeof(line)))
            break;
        if (s->nreq < MAX_STEPS)
            snprintf(s->reqs[s->nreq], sizeof(s->reqs[0]), "%s", line);
        const char *body = s->bodies[s->nreq % s->nbodies];
        s->nreq++;
        char resp[8192];
        int n = snprintf(resp, sizeof(resp),
                         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\n\r\n%s",
                         strlen(body), body);
        if (send(fd, resp, (size_t)n, MSG_NOSIGNAL) != n)
            break;
    }
    close(fd);
    return NULL;
}

static kv_client *start(srv *s)
{
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(s->lfd, 4), 0);
    socklen_t alen = sizeof(a);
    cr_assert_eq(getsockname(s->lfd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
    cr_assert_eq(pthread_create(&s->th, NULL, srv_main, s), 0);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", s->port);
    kv_client_opts o = {.timeout_ms = 3000};
    kv_client *c = NULL;
    cr_assert_eq(kv_client_new(&c, url, &o), KV_OK);
    return c;
}

static void stop(srv *s, kv_client *c)
{
    kv_client_free(c); /* closes the connection: the server thread sees EOF */
    pthread_join(s->th, NULL);
    close(s->lfd);
}

/* Run the listing into a string. */
static int run(kv_client *c, const cli_list_opts *o, char **out, char **hint, char *msg)
{
    size_t olen, hlen;
    FILE *f = open_memstream(out, &olen);
    FILE *h = open_memstream(hint, &hlen);
    int rc = cli_list_run(c, o, f, h, msg, 200);
    fclose(f);
    fclose(h);
    return rc;
}

#define PAGE1                                                                                      \
    "{\"keys\":[{\"key\":\"a%0Ab\",\"version\":\"1.1\"},{\"key\":\"%5C%FF\",\"version\":\"1.1\"}]" \
    ",\"next_cursor\":\"0000000000000001-61\"}"
#define PAGE2 "{\"keys\":[],\"next_cursor\":\"0000000000000002-62\"}"
#define PAGE3 "{\"keys\":[{\"key\":\"caf%C3%A9\",\"version\":\"2.1\"}],\"next_cursor\":null}"

Test(cli_list, one_page_prints_keys_safely_and_hints_at_more, .timeout = 20)
{
    srv s = {.bodies = {PAGE1}, .nbodies = 1};
    kv_client *c = start(&s);
    cli_list_opts o = {.prefix = "p/", .plen = 2, .limit = 2};
    char *out, *hint, msg[200] = "";
    cr_assert_eq(run(c, &o, &out, &hint, msg), KV_OK, "%s", msg);
    stop(&s, c);
    cr_expect_str_eq(out, "a\\x0ab\n\\x5c\\xff\n", "newline, backslash and 0xff escaped");
    cr_expect_str_eq(hint, "more keys follow: add --cursor 0000000000000001-61 (or --all)\n");
    cr_expect_eq(s.nreq, 1);
    cr_expect_str_eq(s.reqs[0], "GET /v1/kv?prefix=p%2F&limit=2 HTTP/1.1");
    free(out);
    free(hint);
}

Test(cli_list, all_follows_the_cursor_to_the_end, .timeout = 20)
{
    srv s = {.bodies = {PAGE1, PAGE2, PAGE3}, .nbodies = 3};
    kv_client *c = start(&s);
    cli_list_opts o = {.cursor = "0000000000000000-30", .all = true};
    char *out, *hint, msg[200] = "";
    cr_assert_eq(run(c, &o, &out, &hint, msg), KV_OK, "%s", msg);
    stop(&s, c);
    cr_expect_str_eq(out, "a\\x0ab\n\\x5c\\xff\ncafé\n");
    cr_expect_str_eq(hint, "", "the listing ended: nothing more to hint at");
    cr_assert_eq(s.nreq, 3);
    cr_expect_str_eq(s.reqs[0], "GET /v1/kv?prefix=&cursor=0000000000000000-30 HTTP/1.1");
    cr_expect_str_eq(s.reqs[1], "GET /v1/kv?prefix=&cursor=0000000000000001-61 HTTP/1.1");
    cr_expect_str_eq(s.reqs[2], "GET /v1/kv?prefix=&cursor=0000000000000002-62 HTTP/1.1");
    free(out);
    free(hint);
}

Test(cli_list, json_prints_each_page_on_its_own_line, .timeout = 20)
{
    srv s = {.bodies = {PAGE2, PAGE3}, .nbodies = 2};
    kv_client *c = start(&s);
    cli_list_opts o = {.all = true, .json = true};
    char *out, *hint, msg[200] = "";
    cr_assert_eq(run(c, &o, &out, &hint, msg), KV_OK, "%s", msg);
    stop(&s, c);
    cr_expect_str_eq(out, PAGE2 "\n" PAGE3 "\n");
    free(out);
    free(hint);
}

Test(cli_list, a_listing_that_does_not_move_on_is_stopped, .timeout = 20)
{
    /* the same cursor back: stopped at once */
    srv s = {.bodies = {PAGE2}, .nbodies = 1};
    kv_client *c = start(&s);
    cli_list_opts o = {.all = true, .cursor = "0000000000000002-62"};
    char *out, *hint, msg[200] = "";
    cr_expect_eq(run(c, &o, &out, &hint, msg), KV_EPROTO);
    stop(&s, c);
    cr_expect(strstr(msg, "cursor it was sent") != NULL, "%s", msg);
    cr_expect_eq(s.nreq, 1);
    free(out);
    free(hint);

    /* a cursor that changes every page but never ends: stopped at the page bound */
    srv s2 = {.bodies = {PAGE1, PAGE2}, .nbodies = 2};
    c = start(&s2);
    cli_list_opts o2 = {.all = true, .max_pages = 5};
    msg[0] = '\0';
    cr_expect_eq(run(c, &o2, &out, &hint, msg), KV_EPROTO);
    stop(&s2, c);
    cr_expect(strstr(msg, "stopped after 5 pages") != NULL, "%s", msg);
    cr_expect_eq(s2.nreq, 5);
    free(out);
    free(hint);
}

Test(cli_list, limit_bounds)
{
    uint32_t v = 0;
    cr_expect(cli_list_parse_limit("1", &v) && v == 1);
    cr_expect(cli_list_parse_limit("1000", &v) && v == 1000);
    cr_expect_not(cli_list_parse_limit("0", &v));
    cr_expect_not(cli_list_parse_limit("1001", &v));
    cr_expect_not(cli_list_parse_limit("abc", &v));
    cr_expect_not(cli_list_parse_limit("", &v));
    cr_expect_not(cli_list_parse_limit("-1", &v));
    cr_expect_not(cli_list_parse_limit("00010", &v));
}
