# syntax=docker/dockerfile:1
# pgsidecar container image: a Rust build stage, then a small Debian runtime
# holding only the binary and the example config.
#
#   docker build -t pgsidecar .
#   docker run --rm -p 6432:6432 -p 9930:9930 \
#     -v "$PWD/pgsidecar.toml:/etc/pgsidecar/pgsidecar.toml:ro" pgsidecar
#
# Settings that differ per deployment can be set without a new file, e.g.
#   -e PGSIDECAR_CLUSTER_PRIMARY=db:5432 -e PGSIDECAR_CLUSTER_REPLICAS=r1:5432,r2:5432

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Cargo.toml names the test and bench targets, so their sources must exist
# for the manifest to load; only the binary is built.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=true \
    cargo build --release --locked --bin pgsidecar \
    && cp target/release/pgsidecar /usr/local/bin/pgsidecar

FROM debian:bookworm-slim
# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it.
RUN useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pgsidecar
# [cluster] state_file's default place; mount a volume here so that the
# primary's WAL timeline is remembered when the container is replaced.
RUN mkdir -p /var/lib/pgsidecar && chown 10001:10001 /var/lib/pgsidecar \
    && chmod 700 /var/lib/pgsidecar
COPY --from=build /usr/local/bin/pgsidecar /usr/local/bin/pgsidecar
COPY conf/pgsidecar.toml /etc/pgsidecar/pgsidecar.toml
# In a container the listeners must face the container's network, not its
# loopback; a mounted config still has these overridden unless unset.
ENV PGSIDECAR_CONFIG=/etc/pgsidecar/pgsidecar.toml \
    PGSIDECAR_PROXY_LISTEN=0.0.0.0:6432 \
    PGSIDECAR_HTTP_LISTEN=0.0.0.0:9930
USER 10001:10001
EXPOSE 6432 9930
# /healthz answers 200 while the process runs. The slim image has no curl:
# bash's /dev/tcp sends the request and the status line is checked.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9930 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# SIGINT is the shutdown signal pgsidecar handles gracefully in every build.
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/pgsidecar"]
CMD ["run"]
