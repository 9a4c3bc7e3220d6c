#!/usr/bin/env bash
# A local kind cluster networked by wgmesh: one control-plane node, two workers, no
# default CNI, the image built from this checkout.
#
#   hack/kind.sh up                      create the cluster (if missing), build and load
#                                        the image, apply the manifests, wait until ready
#   hack/kind.sh test                    smoke test: pods on two nodes talk, wg lists peers,
#                                        the admission policy confines each agent
#   hack/kind.sh down                    delete the cluster
#   hack/kind.sh render-config           print the kind cluster config
#   hack/kind.sh render-manifests IMAGE  print manifests/wgmesh.yaml with IMAGE
#
# up/test/down need docker, kind (>= 0.23, for Kubernetes >= 1.30 node images) and
# kubectl. render-* need only bash and sed.
# Settings (environment): KIND_CLUSTER_NAME (wgmesh), IMAGE (wgmesh:dev),
# KIND_NODE_IMAGE (kind's default node image; must be Kubernetes >= 1.30).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cluster=${KIND_CLUSTER_NAME:-wgmesh}
image=${IMAGE:-wgmesh:dev}
# The pod range of the cluster: kind's podSubnet and the manifest's cluster-cidr.
pod_subnet=10.244.0.0/16
ns=wgmesh-system
smoke_ns=wgmesh-smoke

die() {
  echo "kind.sh: $*" >&2
  exit 1
}

render_config() {
  cat <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  # wgmesh is the pod network: kind must not install kindnet.
  disableDefaultCNI: true
  podSubnet: ${pod_subnet}
nodes:
  - role: control-plane
  - role: worker
  - role: worker
EOF
}

# The manifests with every wgmesh image reference replaced by $1.
render_manifests() {
  local img=$1
  [[ $img =~ ^[A-Za-z0-9][A-Za-z0-9._/:@-]*$ ]] || die "not an image reference: '$img'"
  grep -q "cluster-cidr: \"${pod_subnet}\"" "$repo/manifests/wgmesh.yaml" ||
    die "manifests/wgmesh.yaml: cluster-cidr is not ${pod_subnet} (kind's podSubnet)"
  sed -E "s#^([[:space:]]*image:[[:space:]]*)ghcr\.io/wgmesh/wgmesh:[^[:space:]]+#\1${img}#" \
    "$repo/manifests/wgmesh.yaml"
}

need() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || die "$t not found"
  done
}

kctl() {
  kubectl --context "kind-${cluster}" "$@"
}

up() {
  need docker kind kubectl
  if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    local args=(--name "$cluster" --config -)
    [[ -n ${KIND_NODE_IMAGE:-} ]] && args+=(--image "$KIND_NODE_IMAGE")
    render_config | kind create cluster "${args[@]}"
  fi
  local minor
  minor=$(kctl get --raw /version | sed -nE 's/.*"minor": *"([0-9]+).*/\1/p')
  ((minor >= 30)) || die "Kubernetes 1.${minor}: wgmesh needs >= 1.30 (set KIND_NODE_IMAGE)"

  docker build -t "$image" \
    --build-arg VERSION="$(git -C "$repo" describe --tags --always --dirty 2>/dev/null || echo dev)" \
    --build-arg REVISION="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)" \
    "$repo"
  kind load docker-image "$image" --name "$cluster"

  local existed=false
  kctl -n "$ns" get ds/wgmesh >/dev/null 2>&1 && existed=true
  render_manifests "$image" | kctl apply -f -
  # A rebuilt image under the same tag: restart the agents on it.
  if $existed; then kctl -n "$ns" rollout restart ds/wgmesh; fi
  kctl -n "$ns" rollout status ds/wgmesh --timeout=300s
  kctl wait --for=condition=Ready nodes --all --timeout=300s
  kctl get nodes -o wide
}

# The name of the wgmesh agent pod on node $1.
agent_pod() {
  kctl -n "$ns" get pods -l app.kubernetes.io/component=agent \
    --field-selector "spec.nodeName=$1" -o jsonpath='{.items[0].metadata.name}'
}

smoke() {
  need kubectl
  local nodes workers
  mapfile -t nodes < <(kctl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
  mapfile -t workers < <(kctl get nodes -l '!node-role.kubernetes.io/control-plane' \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
  ((${#workers[@]} >= 2)) || die "need two worker nodes, found ${#workers[@]}"

  echo "== every node: wgmesh annotations and NetworkUnavailable=False (WgmeshReady)"
  local n
  for n in "${nodes[@]}"; do
    local key reason
    key=$(kctl get node "$n" -o jsonpath='{.metadata.annotations.wgmesh\.io/public-key}')
    reason=$(kctl get node "$n" \
      -o jsonpath='{.status.conditions[?(@.type=="NetworkUnavailable")].reason}')
    echo "$n: public-key=${key:-<none>} NetworkUnavailable reason=${reason:-<none>}"
    [[ -n $key && $reason == WgmeshReady ]] || die "node $n is not set up by wgmesh"
  done

  echo "== two pods on different nodes"
  kctl create namespace "$smoke_ns" --dry-run=client -o yaml | kctl apply -f -
  local i
  for i in 0 1; do
    kctl -n "$smoke_ns" apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: pod-$i
spec:
  nodeSelector:
    kubernetes.io/hostname: ${workers[$i]}
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: busybox:1.36
      command: ["sh", "-c", "echo pod-$i > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"]
EOF
  done
  kctl -n "$smoke_ns" wait --for=condition=Ready pod/pod-0 pod/pod-1 --timeout=180s
  local ip0 ip1
  ip0=$(kctl -n "$smoke_ns" get pod pod-0 -o jsonpath='{.status.podIP}')
  ip1=$(kctl -n "$smoke_ns" get pod pod-1 -o jsonpath='{.status.podIP}')
  echo "pod-0 ${ip0} on ${workers[0]}, pod-1 ${ip1} on ${workers[1]}"
  [[ $ip0 == 10.244.* && $ip1 == 10.244.* ]] || die "pod IPs outside ${pod_subnet}"

  echo "== pod-0 -> pod-1 and back: ping, HTTP"
  kctl -n "$smoke_ns" exec pod-0 -- ping -c 3 -W 2 "$ip1"
  kctl -n "$smoke_ns" exec pod-1 -- ping -c 3 -W 2 "$ip0"
  [[ $(kctl -n "$smoke_ns" exec pod-0 -- wget -qO- -T 5 "http://${ip1}:8080/") == pod-1 ]] ||
    die "HTTP pod-0 -> pod-1 failed"
  [[ $(kctl -n "$smoke_ns" exec pod-1 -- wget -qO- -T 5 "http://${ip0}:8080/") == pod-0 ]] ||
    die "HTTP pod-1 -> pod-0 failed"

  echo "== wg show wgmesh0 in the agent on ${workers[0]}"
  local agent show peers
  agent=$(agent_pod "${workers[0]}")
  show=$(kctl -n "$ns" exec "$agent" -c agent -- wg show wgmesh0)
  echo "$show"
  peers=$(grep -c '^peer:' <<<"$show" || true)
  ((peers == ${#nodes[@]} - 1)) || die "wgmesh0 has $peers peers, expected $((${#nodes[@]} - 1))"

  echo "== admission policy: the agent's token may change only its own Node"
  policy_check "$agent" "${workers[0]}" "${workers[1]}"

  kctl delete namespace "$smoke_ns" --wait=false
  echo "smoke test passed"
}

# Patches (server-side dry run: admission runs, nothing is stored) with a token of
# the agent's service account bound to the agent pod on node $2, as the agent's own is.
policy_check() {
  local agent=$1 own=$2 other=$3 tmp token server
  tmp=$(mktemp -d)
  token=$(kctl -n "$ns" create token wgmesh --bound-object-kind Pod --bound-object-name "$agent" --duration 10m)
  server=$(kctl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
  kctl config view --raw --minify \
    -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$tmp/ca.crt"
  # Only the token: no client certificate from the kind kubeconfig.
  as_agent() {
    kubectl --kubeconfig=/dev/null --server="$server" --certificate-authority="$tmp/ca.crt" \
      --token="$token" "$@"
  }
  local ep
  ep=$(kctl get node "$own" -o jsonpath='{.metadata.annotations.wgmesh\.io/endpoint}')
  as_agent patch node "$own" --dry-run=server --type=merge \
    -p "{\"metadata\":{\"annotations\":{\"wgmesh.io/endpoint\":\"${ep}\",\"wgmesh.io/pod-cidrs\":\"x\"}}}" >/dev/null ||
    die "the agent may not change its own node's annotations"
  echo "own node ${own}: allowed"
  local p out kind name patch
  for p in \
    "node $other {\"metadata\":{\"annotations\":{\"wgmesh.io/endpoint\":\"192.0.2.1:51820\"}}}" \
    "node $own {\"metadata\":{\"annotations\":{\"wgmesh.io/force-endpoint\":\"192.0.2.1:51820\"}}}" \
    "node $own {\"metadata\":{\"labels\":{\"example.com/steal\":\"workloads\"}}}"; do
    read -r kind name patch <<<"$p"
    if out=$(as_agent patch "$kind" "$name" --dry-run=server --type=merge -p "$patch" 2>&1); then
      die "admission policy let the agent patch $name with $patch"
    fi
    grep -q "ValidatingAdmissionPolicy" <<<"$out" || die "unexpected error: $out"
    echo "denied as expected: $name $patch"
  done
  rm -rf "$tmp"
}

down() {
  need kind
  kind delete cluster --name "$cluster"
}

case ${1:-} in
  up) up ;;
  test) smoke ;;
  down) down ;;
  render-config) render_config ;;
  render-manifests)
    [[ $# -eq 2 ]] || die "usage: $0 render-manifests IMAGE"
    render_manifests "$2"
    ;;
  *)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
    ;;
esac
