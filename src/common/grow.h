/*
 * grow.h — the one way a growable array gets more room. Pure; any thread (the array's
 * owner's).
 */
#ifndef KV_COMMON_GROW_H
#define KV_COMMON_GROW_H

#include <stdint.h>
#include <stdlib.h>

/*
 * Room for at least `need` elements of `elem` bytes in arr (which has *cap now): returns
 * arr itself when it is big enough, else a reallocated array whose capacity doubles from
 * max(*cap, first) until it fits, and updates *cap. Returns NULL on overflow or when
 * realloc fails; arr and *cap are then untouched (arr still owned by the caller).
 */
static inline void *kv_grow(void *arr, size_t *cap, size_t need, size_t elem, size_t first)
{
    if (need <= *cap && arr)
        return arr;
    size_t c = *cap > first ? *cap : first;
    while (c < need) {
        if (c > SIZE_MAX / 2)
            return NULL;
        c *= 2;
    }
    if (elem && c > SIZE_MAX / elem)
        return NULL;
    void *p = realloc(arr, c * elem);
    if (p)
        *cap = c;
    return p;
}

#endif
