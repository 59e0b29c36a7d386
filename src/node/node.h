/*
 * node.h — wiring of one kvstore node: the libuv loop, the data-directory lock, the
 * storage engine, the HTTP API and signal handling. Main thread.
 */
#ifndef KV_NODE_NODE_H
#define KV_NODE_NODE_H

#include "config/config.h"

/*
 * Run a node with cfg until SIGINT/SIGTERM: lock node.data_dir (a second process on the
 * same directory fails with a clear error), open the store, listen on server.host:port,
 * log the addresses, serve. On a signal: stop accepting, finish in-flight requests, sync
 * and close storage. Returns the process exit status (0 on a clean shutdown, 1 on a
 * startup error, which has been logged).
 */
int kv_node_main(const kv_config *cfg);

#endif
