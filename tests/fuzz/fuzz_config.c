/*
 * fuzz_config.c — libFuzzer target for the configuration file loader: arbitrary bytes as
 * the YAML file given with --config. kv_config_load must either build a configuration or
 * return KV_ECONFIG with a one-line message naming the problem; never crash, leak, or
 * return anything else. The input is written to a file because that is the only way the
 * loader takes a file (libyaml reads it with yaml_parser_set_input_file).
 *
 * Single-threaded. The environment is not consulted (envp NULL), so the result depends on
 * the bytes alone.
 */
#include "common/buf.h"
#include "config/config.h"
#include "kvstore/error.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_path[300];

static void fz_cleanup(void)
{
    unlink(g_path);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    if (!g_path[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(g_path, sizeof g_path, "%s/kvfuzz-config-%d.yaml", base, (int)getpid());
        atexit(fz_cleanup);
    }
    FILE *f = fopen(g_path, "wb");
    if (!f)
        abort();
    if (size && fwrite(data, 1, size, f) != size)
        abort();
    fclose(f);

    kv_cfg_args args;
    memset(&args, 0, sizeof args);
    args.config_file = g_path;
    kv_config cfg;
    kv_buf err = {0};
    int rc = kv_config_load(&cfg, &args, NULL, &err);
    if (rc != KV_OK && rc != KV_ECONFIG) {
        fprintf(stderr, "fuzz_config: kv_config_load returned %d\n", rc);
        abort();
    }
    if (rc == KV_ECONFIG && (err.len == 0 || !err.data)) {
        fprintf(stderr, "fuzz_config: KV_ECONFIG without a message\n");
        abort();
    }
    kv_buf_free(&err);
    return 0;
}
