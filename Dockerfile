# syntax=docker/dockerfile:1
#
# One image, three binaries: logrelay-relay (default entrypoint), logrelay-agent, logrelay (CLI).
#
#   relay:  docker run ghcr.io/example/logrelay:0.1.0 ...
#   agent:  docker run --entrypoint /usr/local/bin/logrelay-agent ghcr.io/example/logrelay:0.1.0 ...
#           (in Kubernetes: `command: ["/usr/local/bin/logrelay-agent"]`, see deploy/agent-daemonset.yaml)
#
# The container must run with a read-only root filesystem (`readOnlyRootFilesystem: true`,
# `docker run --read-only`): neither the relay nor the agent writes to disk.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The agent is built with the `k8s` feature (pod metadata and annotated scrape targets from the
# Kubernetes API, enabled at run time by --kube-pods).
# Only the cargo registry/git caches are cache mounts; target/ stays in the layer so the
# final stage can COPY the binaries out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo build --release --locked --features logrelay-agent/k8s \
        -p logrelay-agent -p logrelay-relay -p logrelay

# distroless/cc: glibc + libgcc + CA certificates, no shell; the :nonroot tag defaults to uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/logrelay-relay /usr/local/bin/logrelay-relay
COPY --from=builder /src/target/release/logrelay-agent /usr/local/bin/logrelay-agent
COPY --from=builder /src/target/release/logrelay       /usr/local/bin/logrelay
USER 65532:65532
# 4433/udp: QUIC from agents; 8080/tcp: WebSocket sessions; 9600/tcp: relay admin (/metrics, /healthz, /readyz).
EXPOSE 4433/udp 8080/tcp 9600/tcp
ENTRYPOINT ["/usr/local/bin/logrelay-relay"]
