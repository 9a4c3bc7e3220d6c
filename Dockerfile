# syntax=docker/dockerfile:1
#
# The wgmesh image: the node agent `wgmesh`, the standalone userspace WireGuard
# `wgmesh-wg`, and the CNI plugins that the DaemonSet's install-cni init container
# copies onto the node (`wgmesh-cni`, the reference `portmap`). Nothing is fetched at
# run time. From the repository root:
#
#   docker build -t wgmesh:dev .
#
# BuildKit (Docker >= 23's default builder) is needed for the cache mounts.

# Builder and runtime share one Debian release, so the glibc the binaries link against
# is the one they run with.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---- build: release binaries of the workspace -------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Only what cargo reads, so edits to docs, manifests or scripts do not rebuild.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY cni-plugin cni-plugin
COPY tests tests
# wgmesh and wgmesh-wg run in the image. wgmesh-cni runs on the node, exec'd by the
# node's container runtime with the node's libraries: it is linked statically
# (crt-static, for the target only, not for build scripts) so that it runs whatever
# the node's C library. The registry and target/ are cache mounts: rebuilds are
# incremental; the binaries are copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eux; \
    triple="$(uname -m)-unknown-linux-gnu"; \
    cargo build --release --locked -p wgmesh --bins; \
    RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --release --locked --target "$triple" -p wgmesh-cni --bins; \
    mkdir -p /out; \
    cp target/release/wgmesh target/release/wgmesh-wg "target/$triple/release/wgmesh-cni" /out/

# ---- portmap: the reference plugin, from Debian's package ---------------------------
FROM ${DEBIAN_IMAGE} AS cni-plugins
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends containernetworking-plugins; \
    rm -rf /var/lib/apt/lists/*

# ---- runtime ------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE}
# nftables: the agent runs `nft -j`. wireguard-tools: `wg show wgmesh0` through the
# agent's UAPI socket (no recommends: they would pull kernel modules). Then everything
# a running container never reads: apt lists, docs (but the copyright files), man
# pages, locales, logs.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends nftables wireguard-tools; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old \
      /var/log/apt /var/log/dpkg.log /var/log/alternatives.log \
      /usr/share/man /usr/share/info /usr/share/locale /usr/share/lintian; \
    find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete; \
    find /usr/share/doc -mindepth 1 -type d -empty -delete; \
    nft --version; wg --version
# The plugins the install-cni init container copies to the node's /opt/cni/bin.
COPY --from=cni-plugins /usr/lib/cni/portmap /opt/wgmesh/cni/portmap
COPY --from=build /out/wgmesh-cni /opt/wgmesh/cni/wgmesh-cni
COPY --from=build /out/wgmesh /out/wgmesh-wg /usr/local/bin/
RUN ln -s /opt/wgmesh/cni/wgmesh-cni /usr/local/bin/wgmesh-cni \
    && wgmesh --version && wgmesh-wg --help >/dev/null

# Root, and no USER: the agent needs CAP_NET_ADMIN in the node's network namespace
# (the DaemonSet grants it NET_ADMIN and NET_RAW only, not privileged).
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="wgmesh" \
      org.opencontainers.image.description="Kubernetes pod network over an encrypted WireGuard full mesh: node agent, userspace WireGuard, CNI plugin" \
      org.opencontainers.image.source="https://github.com/wgmesh/wgmesh" \
      org.opencontainers.image.url="https://github.com/wgmesh/wgmesh" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# WireGuard (UDP) and the agent's metrics/health endpoints.
EXPOSE 51820/udp 9474/tcp
ENTRYPOINT ["/usr/local/bin/wgmesh"]
CMD ["--help"]
