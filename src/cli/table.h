/*
 * table.h — the little helpers kvtool's tables (members, ring) share: make a server's
 * text safe to print, measure it, pad it to a column. Pure; any thread.
 */
#ifndef KV_CLI_TABLE_H
#define KV_CLI_TABLE_H

#include <stdbool.h>
#include <stdio.h>

/* Control bytes would break the table (or the terminal): show them as '?'. */
static inline void cli_table_sanitize(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

/* Display width of UTF-8 text: one column per character (good enough for names). */
static inline int cli_table_width(const char *s)
{
    int w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            w++;
    return w;
}

/* Print s in a column w characters wide, left- or right-aligned. */
static inline void cli_table_pad(FILE *out, const char *s, int w, bool right)
{
    int n = cli_table_width(s);
    if (!right)
        fputs(s, out);
    for (int i = n; i < w; i++)
        fputc(' ', out);
    if (right)
        fputs(s, out);
}

#endif
