/* addr.c — see addr.h. */
#include "net/addr.h"

#include <stdlib.h>
#include <string.h>

bool kv_net_addr_split(const char *addr, size_t max, char *host, size_t cap)
{
    size_t len = strlen(addr);
    if (len == 0 || len >= max)
        return false;
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || colon[1] == '\0' || strlen(colon + 1) > 5)
        return false;
    for (const char *c = colon + 1; *c; c++)
        if (*c < '0' || *c > '9')
            return false;
    if (atoi(colon + 1) > 65535)
        return false;
    for (const char *c = addr; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == '/' || (unsigned char)*c == 0x7f)
            return false;
    if (!host)
        return true;
    const char *h = addr;
    size_t hl = (size_t)(colon - addr);
    if (h[0] == '[') {
        if (hl < 3 || h[hl - 1] != ']')
            return false;
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= cap)
        return false;
    memcpy(host, h, hl);
    host[hl] = '\0';
    return true;
}

uint32_t kv_net_addr_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}
