# syntax=docker/dockerfile:1
# One image with every binary (reservation, parking-lot, delivery, status, gateway,
# parkingctl) under /usr/local/bin; a Kubernetes Deployment picks one with `command`.
#   docker build -t parking-mesh:0.1.0 .
# The protos are compiled during the build by the proto crate (protox, pure Rust): no
# protoc. The run stage is distroless (glibc, CA certificates, no shell, no package
# manager) as user nonroot (65532), and the binaries write nothing outside the volumes the
# manifests mount, so a read-only root filesystem works.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry, git checkouts and target/ are cache mounts: rebuilds fetch and compile only
# what changed. target/ does not survive the RUN, so the binaries are copied out in it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && for bin in reservation parking-lot delivery status gateway parkingctl; do \
         cp "target/release/$bin" /out/; \
       done

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="parking-mesh" \
      org.opencontainers.image.description="parking-mesh services: reservation, parking-lot, delivery, status, gateway, parkingctl" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# gRPC: gateway 8080, reservation 50051, parking-lot 50052, delivery 50053, status 50054;
# Prometheus metrics: 9450 (gateway), 9451-9454.
EXPOSE 8080 50051 50052 50053 50054 9450 9451 9452 9453 9454
# The gateway by default; each Deployment's `command` names its binary.
ENTRYPOINT ["/usr/local/bin/gateway"]
