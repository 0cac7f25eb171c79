# Ferry's container image: one `ferry` binary, run as a non-root user.
# Build: docker build -t ferry:0.1.0 .   (see docs/operations.md)
FROM rust:1.95-bookworm AS build
# protoc: raft-rs's prost codec generates its message types at build time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ferry \
    && cp target/release/ferry /ferry

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/ferry --create-home ferry
COPY --from=build /ferry /usr/local/bin/ferry
USER 10001:10001
WORKDIR /var/lib/ferry
# Edge: QUIC relay 4433/udp, WHIP/WHEP and /metrics 8080/tcp. Voter: API 9000/tcp,
# raft 9001/udp. Gossip takes the port given by --gossip-listen (the chart: 7946/udp).
EXPOSE 4433/udp 8080/tcp 9000/tcp 9001/udp 7946/udp
ENTRYPOINT ["ferry"]
CMD ["--help"]
