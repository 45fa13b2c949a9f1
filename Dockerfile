# The dcache image: dcache-node (the entrypoint, what DistributedCache pods run),
# dcache-operator (the chart's Deployment runs it by command) and the dcache CLI.
#   make image            # docker build -t dcache/dcache:<version> .

# Build: the release binaries, exactly as Cargo.lock pins the dependencies.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY protocol protocol
COPY node node
COPY client client
COPY operator operator
RUN cargo build --release --locked -p dcache-node -p dcache-operator -p dcache-client \
    && mkdir -p /out \
    && cp target/release/dcache-node target/release/dcache-operator target/release/dcache /out/

# Run: glibc and libgcc only (no shell, no package manager), as the distroless
# image's nonroot user 65532, which the operator's pod security contexts also ask for.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="dcache" \
      org.opencontainers.image.description="A Kubernetes-native distributed in-memory cache: dcache-node, dcache-operator and the dcache CLI" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/dcache"
COPY --from=build /out/dcache-node /out/dcache-operator /out/dcache /usr/local/bin/
USER 65532:65532
# The cache API and metrics; the Raft endpoint; the Redis protocol (the ports the
# operator configures).
EXPOSE 7000 7100 6379
ENTRYPOINT ["/usr/local/bin/dcache-node"]
