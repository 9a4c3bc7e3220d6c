#!/usr/bin/env bash
# The main job, for now: build wgmesh-cni, put two pods (network namespaces) on a node
# bridge with it, show them pinging each other, then clean up. Everything happens in
# namespaces this script creates (a "node" and two pods), never in the root namespace.
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

./hack/install-deps.sh
cargo build --release --workspace --bins
plugin=$PWD/target/release/wgmesh-cni

id=$$
node=wgm-demo-node-$id
pods=(wgm-demo-pod-a-$id wgm-demo-pod-b-$id)
data=$(mktemp -d)
conf=$(cat <<JSON
{"cniVersion":"1.1.0","name":"wgmesh","type":"wgmesh-cni","bridge":"wgmesh-br","mtu":1420,
 "subnets":["10.244.1.0/24"],"dataDir":"$data"}
JSON
)

cni() { # cni COMMAND POD
  ip netns exec "$node" env CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/run/netns/$2" \
    CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni "$plugin" <<<"$conf"
}

cleanup() {
  for p in "${pods[@]}"; do cni DEL "$p" >/dev/null 2>&1 || true; ip netns del "$p" 2>/dev/null || true; done
  ip netns del "$node" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

ip netns add "$node"
for p in "${pods[@]}"; do ip netns add "$p"; done

declare -A addr
for p in "${pods[@]}"; do
  step "CNI ADD $p (wgmesh-cni, as a container runtime calls it)"
  result=$(cni ADD "$p")
  echo "$result"
  addr[$p]=$(sed -E 's/.*"address":"([0-9.]+)\/.*/\1/' <<<"$result")
done

step "node: bridge wgmesh-br with the gateway, one veth per pod"
ip -n "$node" -br addr show wgmesh-br
ip -n "$node" -br link show master wgmesh-br

a=${pods[0]} b=${pods[1]}
step "$a (${addr[$a]}) pings $b (${addr[$b]})"
ip netns exec "$a" ping -c 3 -W 1 "${addr[$b]}"
step "$b (${addr[$b]}) pings $a (${addr[$a]})"
ip netns exec "$b" ping -c 3 -W 1 "${addr[$a]}"

step "CNI DEL both pods: addresses return to the pool"
for p in "${pods[@]}"; do cni DEL "$p"; done
ls "$data/wgmesh"
echo
echo "demo OK"
