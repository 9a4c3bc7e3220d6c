#!/usr/bin/env bash
# Installs the Debian packages wgmesh's tests, benchmarks and demo use, if missing.
# Needs root. Rust (cargo) must already be installed.
set -euo pipefail

packages=(
  iproute2 iputils-ping procps util-linux   # ip, ping, sysctl, nsenter
  nftables iptables                          # packet filtering (portmap uses iptables)
  tcpdump iperf3 curl graphviz ethtool       # captures, throughput, `wgmesh graph` rendering, offloads
  wireguard-tools wireguard-go               # wg, wg-quick, the reference userspace WireGuard
  containernetworking-plugins                # reference bridge, host-local, portmap in /usr/lib/cni
  podman runc busybox-static                 # a real CNI runtime and a tiny static rootfs
  kubectl                                    # a real Kubernetes client for test-apiserver
  python3-venv shellcheck                    # manifest validation (kubernetes-validate, CEL) and script lint
  qemu-system-x86 linux-image-amd64          # the test VM (tests/vm): Debian's kernel, with wireguard.ko, under TCG
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # No recommends: wireguard-tools would pull in a kernel image.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
