/*
 * err.c — descriptions and stable names for kv_err. Any thread.
 */
#include "kvstore/error.h"

static const struct {
    int code;
    const char *name;
    const char *text;
} errtab[] = {
    {KV_OK, "ok", "success"},
    {KV_ENOMEM, "out_of_memory", "out of memory"},
    {KV_EINVAL, "invalid_argument", "invalid argument"},
    {KV_ENOTFOUND, "not_found", "not found"},
    {KV_EIO, "io_error", "input/output error"},
    {KV_ECORRUPT, "corrupt", "data failed validation"},
    {KV_ETOOBIG, "too_large", "over the size limit"},
    {KV_ENOSPC, "no_space", "no space left on device"},
    {KV_ELOCKED, "locked", "data directory is in use by another process"},
    {KV_ECONFIG, "bad_config", "bad configuration"},
    {KV_ECONNECT, "connect_failed", "could not connect to server"},
    {KV_ETIMEDOUT, "timeout", "timed out"},
    {KV_EPROTO, "protocol_error", "protocol error"},
    {KV_ECLOSED, "closed", "closed or shutting down"},
    {KV_EUNAVAIL, "unavailable", "service unavailable"},
    {KV_ESERVER, "server_error", "server error"},
    {KV_EBADREQ, "bad_request", "request rejected by server"},
    {KV_EEXIST, "exists", "already exists"},
    {KV_ESTALE, "stale_version", "a newer or equal version is already stored"},
};

const char *kv_strerror(int err)
{
    for (unsigned i = 0; i < sizeof(errtab) / sizeof(errtab[0]); i++)
        if (errtab[i].code == err)
            return errtab[i].text;
    return "unknown error";
}

const char *kv_errname(int err)
{
    for (unsigned i = 0; i < sizeof(errtab) / sizeof(errtab[0]); i++)
        if (errtab[i].code == err)
            return errtab[i].name;
    return "unknown";
}
