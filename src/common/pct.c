/* pct.c — see pct.h. */
#include "common/pct.h"

#include "common/hex.h"
#include "kvstore/error.h"

int kv_pct_decode(const char *src, size_t n, uint8_t *out, size_t cap, size_t *len, size_t *bad_at)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)src[i];
        if (c == '%') {
            int hi = n - i >= 3 ? kv_hexval(src[i + 1]) : -1;
            int lo = n - i >= 3 ? kv_hexval(src[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                if (bad_at)
                    *bad_at = i;
                return KV_EINVAL;
            }
            c = (uint8_t)(hi << 4 | lo);
            i += 2;
        }
        if (o == cap)
            return KV_ETOOBIG;
        out[o++] = c;
    }
    *len = o;
    return KV_OK;
}
