# syntax=docker/dockerfile:1
# sluice as a container: a release build on Debian bookworm, run as a non-root user.
#   docker build -t sluice .
#   docker run -p 6432:6432 -p 8067:8067 -v $PWD/sluice.toml:/etc/sluice/sluice.toml sluice
# The image listens on all interfaces (SLUICE_LISTEN / SLUICE_METRICS_LISTEN below); any
# other key can be overridden the same way, e.g. -e SLUICE_CLUSTERS__MAIN__HOST=db.internal.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and build artifacts between builds; the binary is
# copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sluice \
    && install -D -m 0755 target/release/sluice /out/sluice

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sluice
COPY --from=build /out/sluice /usr/local/bin/sluice
COPY config/sluice.example.toml /etc/sluice/sluice.toml
ENV SLUICE_LISTEN=0.0.0.0:6432 \
    SLUICE_METRICS_LISTEN=0.0.0.0:8067
USER sluice
EXPOSE 6432 8067
STOPSIGNAL SIGTERM
ENTRYPOINT ["sluice", "--config", "/etc/sluice/sluice.toml"]
