# A static `signpost` binary on a small Debian base that carries `nft`
# (the proxy's data planes program the kernel through it).
#   docker build -t ghcr.io/signpost-dev/signpost:v0.1.0 .
# This project's build machine has no Docker engine; the image is not built
# in CI here (the binary it holds is the one every test runs).
FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p signpost --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/signpost /signpost

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /signpost /usr/local/bin/signpost
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/signpost"]
