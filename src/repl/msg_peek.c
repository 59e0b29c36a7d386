/*
 * msg_peek.c — tell a replica batch from a SWIM message by its first bytes, without
 * decoding (membership calls this on every received peer message).
 */
#include "repl/msg.h"

bool kv_repl_is_batch(const uint8_t *data, size_t len)
{
    /* A batch is a definite-length array (major type 4, 0x80..0x9b) whose first item is
     * the unsigned integer KV_REPL_PROTO = 0x6b76, encoded in two bytes (0x19 hi lo). */
    if (len < 4 || (data[0] & 0xe0) != 0x80)
        return false;
    size_t off = 1;
    uint8_t info = data[0] & 0x1f;
    if (info >= 24 && info <= 27)
        off += (size_t)1 << (info - 24);
    else if (info > 27)
        return false;
    return len >= off + 3 && data[off] == 0x19 && data[off + 1] == (KV_REPL_PROTO >> 8) &&
           data[off + 2] == (KV_REPL_PROTO & 0xff);
}
