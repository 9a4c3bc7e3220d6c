#!/usr/bin/env bash
# Throughput of userspace WireGuard implementations, side by side, on this machine.
#
# Two network namespaces joined by a veth (192.0.2.1 <-> 192.0.2.2); for each
# implementation both ends run it, configured with wg(8), tunnel addresses 10.244.0.1/2;
# then one TCP stream of iperf3 for DURATION seconds through the tunnel. A plain veth run
# gives the reference. Needs root, iperf3, wg, wireguard-go; builds wgmesh-wg in release
# mode and installs boringtun-cli under target/bench-tools (cached for later runs).
#
# Usage: [RUNS=n] hack/bench-wireguard.sh [DURATION] [IMPL...]
#   IMPL among: veth wgmesh-wg wireguard-go boringtun (default: all)
#   RUNS (default 1): rounds over all implementations, interleaved; the median is shown.

set -euo pipefail

DURATION=${1:-10}
RUNS=${RUNS:-1}
shift || true
IMPLS=("$@")
[[ ${#IMPLS[@]} -gt 0 ]] || IMPLS=(veth wgmesh-wg wireguard-go boringtun)

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=$ROOT/target/bench-tools
TAG=wgb$$
NS_A=${TAG}a
NS_B=${TAG}b
IF_A=${TAG}x
IF_B=${TAG}y
PIDS=()

[[ $(id -u) -eq 0 ]] || { echo "bench-wireguard: needs root" >&2; exit 1; }
for tool in iperf3 wg wireguard-go python3; do
	command -v "$tool" >/dev/null || { echo "bench-wireguard: $tool is missing" >&2; exit 1; }
done

cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	ip netns del "$NS_A" 2>/dev/null || true
	ip netns del "$NS_B" 2>/dev/null || true
	rm -f "/var/run/wireguard/$IF_A.sock" "/var/run/wireguard/$IF_B.sock"
}
trap cleanup EXIT

# Anything else using the CPU skews the numbers: say so with the results.
LOAD=$(cut -d' ' -f1 /proc/loadavg)
if python3 -c "import sys; sys.exit(0 if float('$LOAD') > 0.5 else 1)"; then
	echo "bench-wireguard: warning: load average is $LOAD before starting; results will be noisy" >&2
fi

echo "== building wgmesh-wg (release)" >&2
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin wgmesh-wg
WGMESH_WG=$ROOT/target/release/wgmesh-wg

BORINGTUN=$TOOLS/boringtun/bin/boringtun-cli
if [[ " ${IMPLS[*]} " == *" boringtun "* && ! -x $BORINGTUN ]]; then
	echo "== installing boringtun-cli into $TOOLS/boringtun (once)" >&2
	cargo install --quiet boringtun-cli --root "$TOOLS/boringtun"
fi

setup_underlay() {
	ip netns add "$NS_A"
	ip netns add "$NS_B"
	ip link add "${TAG}va" netns "$NS_A" type veth peer name "${TAG}vb" netns "$NS_B"
	ip -n "$NS_A" addr add 192.0.2.1/24 dev "${TAG}va"
	ip -n "$NS_B" addr add 192.0.2.2/24 dev "${TAG}vb"
	for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
	ip -n "$NS_A" link set "${TAG}va" up
	ip -n "$NS_B" link set "${TAG}vb" up
}

# start_impl IMPL NS IFNAME: runs the implementation in the foreground, in the background.
start_impl() {
	local impl=$1 ns=$2 ifname=$3
	case $impl in
	wgmesh-wg) ip netns exec "$ns" "$WGMESH_WG" -f "$ifname" 2>/dev/null & ;;
	wireguard-go) ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 wireguard-go -f "$ifname" >/dev/null 2>&1 & ;;
	boringtun) ip netns exec "$ns" env WG_SUDO=1 "$BORINGTUN" -f --disable-drop-privileges "$ifname" >/dev/null 2>&1 & ;;
	esac
	PIDS+=($!)
	for _ in $(seq 100); do
		[[ -S /var/run/wireguard/$ifname.sock ]] && ip netns exec "$ns" wg show "$ifname" >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	echo "bench-wireguard: $impl did not come up" >&2
	return 1
}

setup_tunnel() {
	local impl=$1 ka kb
	ka=$(wg genkey)
	kb=$(wg genkey)
	start_impl "$impl" "$NS_A" "$IF_A"
	start_impl "$impl" "$NS_B" "$IF_B"
	ip netns exec "$NS_A" wg set "$IF_A" private-key <(echo "$ka") listen-port 51820 \
		peer "$(echo "$kb" | wg pubkey)" endpoint 192.0.2.2:51821 allowed-ips 10.244.0.2/32
	ip netns exec "$NS_B" wg set "$IF_B" private-key <(echo "$kb") listen-port 51821 \
		peer "$(echo "$ka" | wg pubkey)" endpoint 192.0.2.1:51820 allowed-ips 10.244.0.1/32
	ip -n "$NS_A" addr add 10.244.0.1/24 dev "$IF_A"
	ip -n "$NS_B" addr add 10.244.0.2/24 dev "$IF_B"
	ip -n "$NS_A" link set "$IF_A" mtu 1420 up
	ip -n "$NS_B" link set "$IF_B" mtu 1420 up
}

# measure TARGET: Mbit/s received over one TCP stream.
measure() {
	local target=$1 json
	ip netns exec "$NS_B" iperf3 -s -1 -B "$target" >/dev/null 2>&1 &
	local server=$!
	sleep 0.3
	ip netns exec "$NS_A" ping -c 1 -W 2 "$target" >/dev/null 2>&1 || true
	json=$(ip netns exec "$NS_A" iperf3 -c "$target" -t "$DURATION" -J 2>/dev/null || true)
	wait "$server" 2>/dev/null || true
	python3 -c 'import json,sys
try: print("%.0f" % (json.loads(sys.stdin.read())["end"]["sum_received"]["bits_per_second"]/1e6))
except Exception: print(0)' <<<"$json"
}

declare -A RESULT
for round in $(seq "$RUNS"); do
	for impl in "${IMPLS[@]}"; do
		cleanup
		PIDS=()
		setup_underlay
		if [[ $impl == veth ]]; then
			mbits=$(measure 192.0.2.2)
		else
			setup_tunnel "$impl"
			mbits=$(measure 10.244.0.2)
		fi
		RESULT[$impl]="${RESULT[$impl]:-} $mbits"
		echo "== round $round, $impl: $mbits Mbit/s" >&2
	done
done

echo
echo "one TCP stream, ${DURATION}s, $RUNS round(s), $(nproc) cores, kernel $(uname -r), load before start $LOAD"
printf '%-14s %10s %18s %16s %10s\n' implementation "Mbit/s" "(each round)" "vs wireguard-go" "vs veth"
for impl in "${IMPLS[@]}"; do
	python3 - "$impl" "${RESULT[$impl]}" "${RESULT[wireguard-go]:-}" "${RESULT[veth]:-}" <<'EOF'
import statistics, sys
impl = sys.argv[1]
runs, wg, veth = (list(map(float, a.split())) for a in sys.argv[2:5])
med = lambda xs: statistics.median(xs) if xs else 0.0
v, w, e = med(runs), med(wg), med(veth)
ratio = lambda a, b: "%.2f" % (a / b) if b else "-"
each = "/".join("%.0f" % r for r in runs)
print("%-14s %10.0f %18s %16s %10s" % (impl, v, each, ratio(v, w), ratio(v, e)))
EOF
done
