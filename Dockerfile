# syntax=docker/dockerfile:1.7
# Pulse: one image, one binary; the compose file picks the subcommand per service.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Dependencies and build outputs live in cache mounts: a rebuild after a code
# change recompiles only Pulse's own crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pulse \
 && cp target/release/pulse /usr/local/bin/pulse

FROM debian:bookworm-slim
# libssl3 and zlib1g: librdkafka's TLS/SASL and gzip (the build links them dynamically).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /app pulse
COPY --from=build /usr/local/bin/pulse /usr/local/bin/pulse
COPY pulse.toml /app/pulse.toml
COPY grafana /app/grafana
USER pulse
WORKDIR /app
ENV PULSE_SPEC=/app/pulse.toml \
    PULSE_LOG=info
ENTRYPOINT ["pulse"]
CMD ["--help"]
