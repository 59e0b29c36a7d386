/*
 * identity.c — NODE_ID and INCARNATION in the data directory (see identity.h). The
 * writes fsync: main thread before the loop starts, or a worker thread.
 */
#include "node/identity.h"

#include "common/hex.h"
#include "common/log.h"
#include "kvstore/error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

/* Both files are tiny; anything bigger is not ours. */
#define IDENT_FILE_MAX 64

/* Read path into buf (NUL-terminated). 1 read, 0 missing, KV_EIO / KV_ECORRUPT (logged). */
static int ident_read(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        kv_log_error("cannot open identity file", KV_STR("path", path),
                     KV_STR("reason", strerror(errno)));
        return KV_EIO;
    }
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            kv_log_error("cannot read identity file", KV_STR("path", path),
                         KV_STR("reason", strerror(errno)));
            close(fd);
            return KV_EIO;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == cap - 1) {
            close(fd);
            kv_log_error("identity file is too large to be ours", KV_STR("path", path));
            return KV_ECORRUPT;
        }
    }
    close(fd);
    buf[len] = '\0';
    return 1;
}

/* fsync the directory so a rename inside it is durable. */
static int ident_sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Replace dir/name with text: write name.tmp, fsync, rename, fsync dir. KV_OK or KV_EIO. */
static int ident_write(const char *dir, const char *name, const char *text)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path) ||
        snprintf(tmp, sizeof(tmp), "%s/%s.tmp", dir, name) >= (int)sizeof(tmp)) {
        kv_log_error("data directory path is too long", KV_STR("data_dir", dir));
        return KV_EIO;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        goto fail;
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            close(fd);
            goto fail;
        }
        off += (size_t)n;
    }
    if (fsync(fd) != 0) {
        close(fd);
        goto fail;
    }
    close(fd);
    if (rename(tmp, path) != 0 || ident_sync_dir(dir) != 0)
        goto fail;
    return KV_OK;
fail:
    kv_log_error("cannot write identity file", KV_STR("path", path),
                 KV_STR("reason", strerror(errno)));
    unlink(tmp);
    return KV_EIO;
}

/* Parse "<32 hex>\n?" into id. */
static bool ident_parse_id(const char *s, uint8_t *id)
{
    size_t n = strlen(s);
    if (n > 0 && s[n - 1] == '\n')
        n--;
    if (n != 2 * KV_NODE_ID_BYTES)
        return false;
    for (size_t i = 0; i < KV_NODE_ID_BYTES; i++) {
        int hi = kv_hexval(s[2 * i]), lo = kv_hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        id[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

/* Parse "<decimal>\n?" (no sign, no spaces, at most 2^63). */
static bool ident_parse_inc(const char *s, uint64_t *out)
{
    size_t n = strlen(s);
    if (n > 0 && s[n - 1] == '\n')
        n--;
    if (n == 0 || n > 19)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v >= (UINT64_C(1) << 63))
        return false;
    *out = v;
    return true;
}

static void ident_hex(const uint8_t *id, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < KV_NODE_ID_BYTES; i++) {
        out[2 * i] = digits[id[i] >> 4];
        out[2 * i + 1] = digits[id[i] & 15];
    }
    out[2 * KV_NODE_ID_BYTES] = '\0';
}

static int ident_random(uint8_t *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(p + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

int kv_node_identity_load(const char *dir, kv_node_identity *out)
{
    kv_node_identity id;
    memset(&id, 0, sizeof(id));
    char path[PATH_MAX], buf[IDENT_FILE_MAX];

    snprintf(path, sizeof(path), "%s/NODE_ID", dir);
    int rc = ident_read(path, buf, sizeof(buf));
    if (rc < 0)
        return rc;
    if (rc == 1) {
        if (!ident_parse_id(buf, id.id)) {
            kv_log_error("NODE_ID does not hold a node id (32 hex digits); refusing to start "
                         "under another identity — restore it, or delete it to give this data "
                         "directory a new id",
                         KV_STR("path", path));
            return KV_ECORRUPT;
        }
    } else {
        if (ident_random(id.id, sizeof(id.id)) != 0) {
            kv_log_error("cannot get random bytes for a node id",
                         KV_STR("reason", strerror(errno)));
            return KV_EIO;
        }
        char text[2 * KV_NODE_ID_BYTES + 2];
        ident_hex(id.id, text);
        strcat(text, "\n");
        if ((rc = ident_write(dir, "NODE_ID", text)) != KV_OK)
            return rc;
        id.created = 1;
    }
    ident_hex(id.id, id.hex);

    snprintf(path, sizeof(path), "%s/INCARNATION", dir);
    rc = ident_read(path, buf, sizeof(buf));
    if (rc < 0)
        return rc;
    if (rc == 1 && !ident_parse_inc(buf, &id.prev_incarnation)) {
        kv_log_error("INCARNATION does not hold a number; fix or delete it (the node then "
                     "refutes any stale state about itself with a higher incarnation)",
                     KV_STR("path", path));
        return KV_ECORRUPT;
    }
    id.incarnation = id.prev_incarnation + 1;
    char text[32];
    snprintf(text, sizeof(text), "%" PRIu64 "\n", id.incarnation);
    if ((rc = ident_write(dir, "INCARNATION", text)) != KV_OK)
        return rc;
    *out = id;
    return KV_OK;
}

int kv_node_identity_store_incarnation(const char *dir, uint64_t incarnation)
{
    char text[32];
    snprintf(text, sizeof(text), "%" PRIu64 "\n", incarnation);
    return ident_write(dir, "INCARNATION", text);
}

uint32_t kv_node_identity_short(const kv_node_identity *ident)
{
    uint32_t v = (uint32_t)ident->id[0] << 24 | (uint32_t)ident->id[1] << 16 |
                 (uint32_t)ident->id[2] << 8 | (uint32_t)ident->id[3];
    return v ? v : 1;
}
