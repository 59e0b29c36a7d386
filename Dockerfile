# kvstore node image: a Debian 12 build stage, and a small runtime stage with only the
# shared libraries the binaries load, running as a non-root user.
#
#   docker build -t kvstore .
#   docker run -p 8080:8080 -v kvdata:/var/lib/kvstore/data kvstore
#
# Any setting can be given as DIST_KV__SECTION__KEY, e.g. -e DIST_KV__STORAGE__SYNC=always.

FROM debian:12 AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config libuv1-dev libnng-dev liblz4-dev libcbor-dev \
        libcriterion-dev libhttp-parser-dev libyaml-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release \
    && cmake --build /build -j"$(nproc)" --target kvstore kvtool \
    && strip /build/kvstore /build/kvtool

FROM debian:12-slim AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# Runtime halves of the -dev packages above (libnng1 brings mbedtls for tls+tcp://), and
# curl for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libuv1 libnng1 liblz4-1 libcbor0.8 libhttp-parser2.9 libyaml-0-2 curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kvstore \
    && useradd --system --uid 10001 --gid kvstore --home-dir /var/lib/kvstore \
        --shell /usr/sbin/nologin kvstore \
    && mkdir -p /var/lib/kvstore/data \
    && chown -R kvstore:kvstore /var/lib/kvstore
COPY --from=build /build/kvstore /build/kvtool /usr/local/bin/

USER kvstore:kvstore
WORKDIR /var/lib/kvstore
# Listen on every interface inside the container (the default elsewhere is fine too, but
# say it explicitly: the image is useless on loopback only).
ENV DIST_KV__SERVER__HOST=0.0.0.0 \
    DIST_KV__SERVER__PORT=8080 \
    DIST_KV__NODE__DATA_DIR=/var/lib/kvstore/data \
    DIST_KV__CLUSTER__DATA_PORT=7947
VOLUME ["/var/lib/kvstore/data"]
# 8080: client HTTP API; 7946: membership gossip (cluster.port, nng); 7947: replica data
# (cluster.data_port, fixed here so that firewalls and port maps can name it).
EXPOSE 8080 7946 7947
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:${DIST_KV__SERVER__PORT}/healthz" || exit 1
# SIGTERM (docker stop) makes the node finish in-flight requests and sync its data.
STOPSIGNAL SIGTERM
CMD ["kvstore", "servenode"]
