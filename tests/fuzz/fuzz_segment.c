/*
 * fuzz_segment.c — libFuzzer target for segment recovery: arbitrary bytes become a segment
 * file, and the storage engine must open the directory without crashing, leaking or
 * serving a value that is not intact on disk, and must then still take a write that
 * survives a close and a reopen.
 *
 * Input: byte 0 picks the layout, the rest (P) is the fuzzed file:
 *   layout % 3 == 0: P is 0000000001.seg, the only (newest) segment: torn-tail repair;
 *   layout % 3 == 1: P is 0000000001.seg, followed by a valid 0000000002.seg: an older
 *                    segment, which is never truncated;
 *   layout % 3 == 2: a valid 0000000001.seg, then P as 0000000002.seg.
 * The valid segment holds three records built with the engine's codec (store/format.h).
 *
 * Per input: store_open (sync never, on tmpfs when /dev/shm exists so fsync is cheap);
 * store_get of every key that appears in any record header plausible at any offset of the
 * files (and each answer checked: KV_OK only with bytes equal to an intact record of that
 * key and version); store_put of a probe key; read it back; store_close; reopen; read the
 * probe back; close (fz_check_store in store_fuzz.h). A broken promise aborts (a
 * finding). Logging is off unless FUZZ_LOG=1. Single-threaded apart from the libuv
 * threadpool the store uses for fsync.
 */
#include "store_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int layout = data[0] % 3;
    const uint8_t *p = data + 1;
    size_t n = size - 1;

    fz_reset_dir();
    uint8_t good[512];
    size_t glen;
    fz_file files[2];
    int nfiles = 0;
    if (layout == 0) {
        write_file("0000000001.seg", p, n);
        files[nfiles++] = (fz_file){p, n};
    } else if (layout == 1) {
        write_file("0000000001.seg", p, n);
        glen = valid_segment(2, good, sizeof good);
        write_file("0000000002.seg", good, glen);
        files[nfiles++] = (fz_file){p, n};
        files[nfiles++] = (fz_file){good, glen};
    } else {
        glen = valid_segment(1, good, sizeof good);
        write_file("0000000001.seg", good, glen);
        write_file("0000000002.seg", p, n);
        files[nfiles++] = (fz_file){good, glen};
        files[nfiles++] = (fz_file){p, n};
    }
    fz_check_store(files, nfiles);
    return 0;
}
