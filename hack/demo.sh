#!/usr/bin/env bash
# The main job: build wgmesh, bring up a 3-node cluster on this machine (each node a
# network + mount namespace running the real `wgmesh agent`, behind a router that drops
# pod addresses, with test-apiserver as the API server), put 2 pods on every node with
# wgmesh-cni, and show and check step by step what wgmesh does: published keys, WireGuard
# handshakes, pods reaching each other across nodes with their own addresses, only
# WireGuard on the wire between nodes, SNAT to the internet, `wgmesh status`. Exits
# non-zero if a check fails; tears everything down at the end.
#
#   ./hack/demo.sh                   run the demo
#   ./hack/demo.sh --keep            keep the cluster afterwards (prints how to enter each
#                                    node and pod); Ctrl-C tears it down
#   ./hack/demo.sh dualstack [--keep]
#                                    the same 3 nodes on an IPv6-only underlay
#                                    (2001:db8::/32) with dual-stack pods (10.244.<i>.0/24
#                                    and fd00:10:244:<i>::/64): published IPv6 endpoints
#                                    and both pod CIDRs, pods reaching each other over
#                                    IPv4 and IPv6 with their own addresses, only
#                                    WireGuard over IPv6 on the wire, IPv6 egress
#                                    masqueraded to the node, the MTU (link - 80)
#   ./hack/demo.sh multicloud [--keep]
#                                    the multi-cloud demo: nodes a1, a2 (cloud-a), b1
#                                    (cloud-b), h1, h2 (two homes), each site behind its
#                                    NAT (1:1 without hairpin, port-preserving, symmetric),
#                                    on an internet that drops private addresses; checks
#                                    the published Node objects, the NATs, all 20 pod
#                                    pairs, only WireGuard between sites, cloud-a's pods
#                                    talking on its LAN; runs every step and says which
#                                    failed
#
# Needs root. Everything happens in namespaces it creates.
set -euo pipefail
cd "$(dirname "$0")/.."

./hack/install-deps.sh
cargo build --release --workspace --bins
exec ./target/release/wgmesh-testbed demo "$@"
