/*
 * error.h — the one error enum of kvstore, shared by the node, the client library and
 * the tools. Functions return KV_OK (0) or a negative kv_err; out-parameters are written
 * only on success. Safe from any thread.
 */
#ifndef KVSTORE_ERROR_H
#define KVSTORE_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kv_err {
    KV_OK = 0,
    KV_ENOMEM = -1,     /* out of memory */
    KV_EINVAL = -2,     /* invalid argument (caller's mistake) */
    KV_ENOTFOUND = -3,  /* key does not exist (or was deleted / expired) */
    KV_EIO = -4,        /* read or write on a file failed */
    KV_ECORRUPT = -5,   /* bytes on disk or the wire failed validation */
    KV_ETOOBIG = -6,    /* key, value, header or message over its limit */
    KV_ENOSPC = -7,     /* no space left on the data device */
    KV_ELOCKED = -8,    /* data directory in use by another process */
    KV_ECONFIG = -9,    /* bad configuration */
    KV_ECONNECT = -10,  /* could not connect to the server */
    KV_ETIMEDOUT = -11, /* operation timed out */
    KV_EPROTO = -12,    /* peer spoke something other than the protocol */
    KV_ECLOSED = -13,   /* object is closed or shutting down */
    KV_EUNAVAIL = -14,  /* service unavailable (not ready, quorum not reached) */
    KV_ESERVER = -15,   /* server answered with an error (5xx) */
    KV_EBADREQ = -16,   /* server rejected the request (4xx other than 404) */
    KV_EEXIST = -17,    /* already exists */
    KV_ESTALE = -18,    /* conditional write refused: a newer or equal version is stored */
} kv_err;

/* A static, human-readable description of err; never NULL. */
const char *kv_strerror(int err);

/* A stable, machine-readable name for err ("not_found", "io_error", ...); never NULL. */
const char *kv_errname(int err);

#ifdef __cplusplus
}
#endif
#endif
