/*
 * status.h — `kvtool status`: the cluster at a glance, one row per member.
 *
 * The server (client.server_url) gives the member list (with each member's client address,
 * told in gossip) and the ring (each member's share of the key space); then every live
 * member is asked for its own figures (GET /v1/cluster/digest: keys, tombstones, bytes, the
 * root of its anti-entropy tree). Main thread; blocking; one request at a time, each
 * bounded by the client's timeout.
 */
#ifndef KV_CLI_STATUS_H
#define KV_CLI_STATUS_H

#include "kvstore/client.h"

#include <stdbool.h>
#include <stdio.h>

#define CLI_STATUS_DIGEST_PATH "/v1/cluster/digest"

/*
 * Print the status table to out (or, with json, one object:
 * {"members":[{"name","state","ring_status","owned","http","keys","tombstones",
 * "live_bytes","disk_bytes","digest","error"},..]}). A member that cannot be asked gets
 * "?" cells (null in JSON) and its reason. KV_OK when printed — members that did not
 * answer are part of the answer — or the error of the server's member list (msg says why
 * for KV_EPROTO). opts: the timeout and body limit for the per-member requests.
 */
int cli_status_run(kv_client *c, const kv_client_opts *opts, bool json, FILE *out, char *msg,
                   size_t cap);

#endif
