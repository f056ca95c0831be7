# Rafka broker image, built from source. This is the file `docker compose up` uses by default.
#
#   docker build -t rafka:latest .
#   docker build --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12 -t rafka:latest .
#
# Both base images are build arguments. The runtime stage has no RUN step, so any image that
# provides glibc and libgcc_s compatible with the builder's works as RUNTIME_IMAGE, shell or
# not. Machines without a registry use docker/Dockerfile.prebuilt instead (see
# docker/README-section.md).

ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
COPY . .
# The data directory is prepared here, owned by the unprivileged user the broker runs as, so
# that the runtime stage needs no shell to create it. Named volumes mounted there inherit the
# ownership on first use.
RUN cargo build --release --locked -p rafka-broker -p rafka-client --bins \
 && mkdir -p /rootfs/usr/local/bin /rootfs/var/lib/rafka \
 && install -m 0755 target/release/rafka-broker target/release/rafka /rootfs/usr/local/bin/ \
 && strip /rootfs/usr/local/bin/rafka-broker /rootfs/usr/local/bin/rafka \
 && chown 10001:10001 /rootfs/var/lib/rafka

FROM ${RUNTIME_IMAGE}
COPY --from=builder /rootfs/ /
# Inside the container the broker listens on every interface with the contract's ports. The
# advertised address is what clients are told to dial: the default suits
# `docker run -p 7092:7092`; a multi-broker setup gives each broker its own (see
# docker-compose.yml). Logs go to `docker logs`, not a terminal: no colour codes.
ENV NO_COLOR=1 \
    RAFKA_DATA_DIR=/var/lib/rafka \
    RAFKA_LISTEN=0.0.0.0:7092 \
    RAFKA_ADVERTISE=127.0.0.1:7092 \
    RAFKA_PEER_LISTEN=0.0.0.0:7093 \
    RAFKA_METRICS_LISTEN=0.0.0.0:9644
USER 10001:10001
WORKDIR /var/lib/rafka
VOLUME ["/var/lib/rafka"]
EXPOSE 7092 7093 9644
HEALTHCHECK --interval=3s --timeout=5s --start-period=10s --retries=10 \
    CMD ["rafka", "--bootstrap", "127.0.0.1:7092", "topic", "list"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["rafka-broker"]
