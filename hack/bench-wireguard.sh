#!/usr/bin/env bash
# Throughput, CPU per gigabyte and latency of userspace WireGuard implementations, side by
# side, on this machine.
#
# Point to point: two network namespaces joined by a veth (192.0.2.1 <-> 192.0.2.2); for
# each implementation both ends run it, configured with wg(8), tunnel addresses
# 10.244.0.1/2, MTU 1420; then the median of 50 idle pings and one TCP stream of iperf3
# for DURATION seconds through the tunnel. A plain veth run gives the reference. With the
# suffix -v6 (wgmesh-wg-v6, wireguard-go-v6, veth-v6...) the same runs over an IPv6-only
# veth (2001:db8::1 <-> 2001:db8::2): only the underlay's family changes (the tunnel
# still carries IPv4, MTU 1420), so the -v6 rows show what the IPv6 underlay costs; each
# is compared with wireguard-go-v6, and the end says how the IPv6 ratio of wgmesh-wg
# compares with its IPv4 one.
#
# Pod to pod: a 2-node testbed (tests/testbed: nodes behind a router, pods on bridges,
# the agents' nftables) with a pod on each node, the same ping and iperf3 from one pod to
# the other. pod-agent is the agents' own data plane; pod-wireguard-go (pod-wgmesh-wg)
# runs wireguard-go (wgmesh-wg) in place of the agents on the same nodes, same interface
# name, MTU, endpoints and routes. Each pod run builds a fresh cluster. With the suffix
# -v6 (pod-agent-v6...) the cluster has dual-stack pods over an IPv6 underlay (the
# testbed's `dualstack` layout; iperf3 between the pods' IPv4 addresses).
#
# CPU: utime+stime of the implementation's processes on both ends (/proc/PID/stat)
# across the transfer, divided by the gigabytes (1e9 bytes) received. It includes the
# kernel work done in those processes' system calls (TUN writes run the receiving
# stack), so compare implementations, not absolute numbers. veth has no process.
#
# Needs root, iperf3, wg, wireguard-go; builds the workspace in release mode and installs
# boringtun-cli under target/bench-tools (cached for later runs).
#
# Usage: [RUNS=n] hack/bench-wireguard.sh [DURATION] [IMPL...]
#   IMPL among: veth wgmesh-wg wireguard-go boringtun kernel pod-agent pod-wireguard-go
#   pod-wgmesh-wg, each also with -v6 (default: veth wgmesh-wg wireguard-go boringtun
#   wgmesh-wg-v6 wireguard-go-v6 pod-agent pod-wireguard-go). `kernel` is the kernel's
#   WireGuard (wireguard.ko; this machine's kernel has none): on a machine with the
#   module, `RUNS=3 hack/bench-wireguard.sh 10 kernel wgmesh-wg wireguard-go` compares
#   the kernel, wgmesh's userspace data plane and wireguard-go in one run. Its CPU is
#   not measured (it runs in softirqs and kernel threads, no process of its own).
#   RUNS (default 1): rounds over all implementations, interleaved; medians are shown.
#   WGMESH_OFFLOADS=off in the environment is passed on to wgmesh-wg (not to the agents).
#   PERF_DIR: also record a system-wide profile (perf record -a -g, cpu-clock) of the
#   middle of each point-to-point transfer of the first round into PERF_DIR/IMPL.data.
#   BIN_DIR: use the binaries there (wgmesh, wgmesh-wg, wgmesh-cni, test-apiserver,
#   wgmesh-testbed) instead of building; e.g. a copy of an earlier build, for "before".
#
# Exits non-zero when a measurement failed (no bytes through iperf3, no ping answered, an
# implementation missing from a round), so a smoke run (hack/test.sh: the debug binaries,
# 1 s, one round) fails when the benchmark stopped working.

set -euo pipefail

DURATION=${1:-10}
RUNS=${RUNS:-1}
shift || true
IMPLS=("$@")
[[ ${#IMPLS[@]} -gt 0 ]] ||
	IMPLS=(veth wgmesh-wg wireguard-go boringtun wgmesh-wg-v6 wireguard-go-v6 pod-agent pod-wireguard-go)

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
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
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

# Pod data planes by underlay: POD_PLANES over IPv4, POD_PLANES6 over IPv6.
POD_PLANES=()
POD_PLANES6=()
for impl in "${IMPLS[@]}"; do
	case $impl in
	pod-*-v6) impl=${impl#pod-} && POD_PLANES6+=("${impl%-v6}") ;;
	pod-*) POD_PLANES+=("${impl#pod-}") ;;
	esac
done

if [[ -n ${BIN_DIR:-} ]]; then
	BIN_DIR=$(cd "$BIN_DIR" && pwd)
	echo "== using the binaries in $BIN_DIR" >&2
else
	BIN_DIR=$ROOT/target/release
	echo "== building the workspace (release)" >&2
	if [[ ${#POD_PLANES[@]} -gt 0 || ${#POD_PLANES6[@]} -gt 0 ]]; then
		cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --workspace --bins
	else
		cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin wgmesh-wg
	fi
fi
WGMESH_WG=$BIN_DIR/wgmesh-wg
TESTBED=$BIN_DIR/wgmesh-testbed

BORINGTUN=$TOOLS/boringtun/bin/boringtun-cli
if [[ " ${IMPLS[*]} " =~ " boringtun"(-v6)?" " && ! -x $BORINGTUN ]]; then
	echo "== installing boringtun-cli into $TOOLS/boringtun (once)" >&2
	cargo install --quiet boringtun-cli --root "$TOOLS/boringtun"
fi

# The underlay's addresses of the two ends (set by setup_underlay).
UNDERLAY_A=192.0.2.1
UNDERLAY_B=192.0.2.2

# setup_underlay 4|6: the two namespaces and the veth between them, with IPv4 or IPv6
# addresses (IPv6 without duplicate address detection: usable at once).
setup_underlay() {
	local family=$1
	ip netns add "$NS_A"
	ip netns add "$NS_B"
	ip link add "${TAG}va" netns "$NS_A" type veth peer name "${TAG}vb" netns "$NS_B"
	if [[ $family == 6 ]]; then
		UNDERLAY_A=2001:db8::1
		UNDERLAY_B=2001:db8::2
		ip -n "$NS_A" addr add "$UNDERLAY_A/64" dev "${TAG}va" nodad
		ip -n "$NS_B" addr add "$UNDERLAY_B/64" dev "${TAG}vb" nodad
	else
		UNDERLAY_A=192.0.2.1
		UNDERLAY_B=192.0.2.2
		ip -n "$NS_A" addr add "$UNDERLAY_A/24" dev "${TAG}va"
		ip -n "$NS_B" addr add "$UNDERLAY_B/24" dev "${TAG}vb"
	fi
	for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
	ip -n "$NS_A" link set "${TAG}va" up
	ip -n "$NS_B" link set "${TAG}vb" up
}

# endpoint ADDRESS PORT: ADDRESS:PORT, in brackets for IPv6.
endpoint() {
	if [[ $1 == *:* ]]; then echo "[$1]:$2"; else echo "$1:$2"; fi
}

# start_impl IMPL NS IFNAME: runs the implementation in the foreground, in the background.
# `ip netns exec` and `env` exec, so $! is the implementation's own pid.
start_impl() {
	local impl=$1 ns=$2 ifname=$3
	case $impl in
	kernel)
		ip -n "$ns" link add "$ifname" type wireguard || {
			echo "bench-wireguard: this kernel has no WireGuard (no wireguard.ko)" >&2
			return 1
		}
		return 0
		;;
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
		peer "$(echo "$kb" | wg pubkey)" endpoint "$(endpoint "$UNDERLAY_B" 51821)" \
		allowed-ips 10.244.0.2/32
	ip netns exec "$NS_B" wg set "$IF_B" private-key <(echo "$kb") listen-port 51821 \
		peer "$(echo "$ka" | wg pubkey)" endpoint "$(endpoint "$UNDERLAY_A" 51820)" \
		allowed-ips 10.244.0.1/32
	ip -n "$NS_A" addr add 10.244.0.1/24 dev "$IF_A"
	ip -n "$NS_B" addr add 10.244.0.2/24 dev "$IF_B"
	ip -n "$NS_A" link set "$IF_A" mtu 1420 up
	ip -n "$NS_B" link set "$IF_B" mtu 1420 up
}

# cpu_ticks PID...: utime+stime of the processes, in clock ticks.
cpu_ticks() {
	local total=0 pid f
	for pid in "$@"; do
		# Fields after the ")" closing the command name: state is 1, utime 12, stime 13.
		f=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null || echo "")
		[[ -n $f ]] || continue
		total=$((total + $(echo "$f" | cut -d' ' -f12) + $(echo "$f" | cut -d' ' -f13)))
	done
	echo "$total"
}

# median_rtt TARGET: median of 50 pings, in ms.
median_rtt() {
	ip netns exec "$NS_A" ping -n -c 50 -i 0.02 "$1" 2>/dev/null |
		python3 -c 'import re,statistics,sys
t=[float(m) for m in re.findall(r"time=([0-9.]+)", sys.stdin.read())]
print("%.3f" % statistics.median(t) if t else "nan")'
}

# measure TARGET PID...: prints "Mbit/s bytes cpu_seconds rtt_ms" for one TCP stream.
measure() {
	local target=$1 json server t0 t1 rtt
	shift
	ip netns exec "$NS_B" iperf3 -s -1 -B "$target" >/dev/null 2>&1 &
	server=$!
	sleep 0.3
	for _ in $(seq 20); do ip netns exec "$NS_A" ping -c 1 -W 1 "$target" >/dev/null 2>&1 && break; done
	rtt=$(median_rtt "$target")
	local perf=""
	if [[ -n ${PERF_DIR:-} && $round == 1 ]]; then
		mkdir -p "$PERF_DIR"
		(sleep 1; perf record -q -a -g -e cpu-clock -F 999 -o "$PERF_DIR/$impl.data" \
			-- sleep $((DURATION > 3 ? DURATION - 2 : 1)) >/dev/null 2>&1) &
		perf=$!
	fi
	t0=$(cpu_ticks "$@")
	json=$(ip netns exec "$NS_A" iperf3 -c "$target" -t "$DURATION" -J 2>/dev/null || true)
	t1=$(cpu_ticks "$@")
	[[ -z $perf ]] || wait "$perf" 2>/dev/null || true
	wait "$server" 2>/dev/null || true
	python3 -c 'import json,sys
hz, t0, t1, rtt = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
try:
    r = json.loads(sys.stdin.read())["end"]["sum_received"]
    print("%.0f %d %.2f %s" % (r["bits_per_second"]/1e6, r["bytes"], (t1-t0)/hz, rtt))
except Exception:
    print("0 0 0 %s" % rtt)' "$(getconf CLK_TCK)" "$t0" "$t1" "$rtt" <<<"$json"
}

# pod_round LAYOUT SUFFIX PLANE...: the pod data planes of one round, each on a fresh
# testbed of LAYOUT (ipv4, dualstack); each result named pod-PLANE then SUFFIX.
pod_round() {
	local layout=$1 suffix=$2 planes
	shift 2
	planes=$(IFS=,; echo "$*")
	"$TESTBED" bench --seconds "$DURATION" --layout "$layout" --data-planes "$planes" |
		python3 -c 'import json,sys
suffix = sys.argv[1]
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"): continue
    m = json.loads(line)
    print("pod-%s%s %.0f %d %.2f %.3f" % (m["impl"], suffix, m["mbits"], m["bytes"], m["cpu_s"], m["rtt_ms"]))' "$suffix"
}

declare -A MBITS BYTES CPU RTT
FAILED=()
record() {
	local impl=$1 mbits=$2 bytes=$3 cpu=$4 rtt=$5
	MBITS[$impl]="${MBITS[$impl]:-} $mbits"
	BYTES[$impl]="${BYTES[$impl]:-} $bytes"
	CPU[$impl]="${CPU[$impl]:-} $cpu"
	RTT[$impl]="${RTT[$impl]:-} $rtt"
	echo "== round $round, $impl: $mbits Mbit/s, $cpu CPU s for $bytes bytes, RTT $rtt ms" >&2
	if [[ $bytes == 0 || $rtt == nan ]]; then
		echo "bench-wireguard: round $round, $impl: the measurement failed (no bytes through iperf3 or no ping answered)" >&2
		FAILED+=("$impl")
	fi
}

for round in $(seq "$RUNS"); do
	for impl in "${IMPLS[@]}"; do
		[[ $impl == pod-* ]] && continue
		cleanup
		PIDS=()
		base=${impl%-v6}
		if [[ $base == "$impl" ]]; then setup_underlay 4; else setup_underlay 6; fi
		if [[ $base == veth ]]; then
			read -r mbits bytes cpu rtt < <(measure "$UNDERLAY_B")
		else
			setup_tunnel "$base"
			read -r mbits bytes cpu rtt < <(measure 10.244.0.2 "${PIDS[@]}")
		fi
		record "$impl" "$mbits" "$bytes" "$cpu" "$rtt"
	done
	cleanup
	PIDS=()
	if [[ ${#POD_PLANES[@]} -gt 0 ]]; then
		while read -r impl mbits bytes cpu rtt; do
			record "$impl" "$mbits" "$bytes" "$cpu" "$rtt"
		done < <(pod_round ipv4 "" "${POD_PLANES[@]}")
	fi
	if [[ ${#POD_PLANES6[@]} -gt 0 ]]; then
		while read -r impl mbits bytes cpu rtt; do
			record "$impl" "$mbits" "$bytes" "$cpu" "$rtt"
		done < <(pod_round dualstack -v6 "${POD_PLANES6[@]}")
	fi
done

echo
echo "one TCP stream, ${DURATION}s, $RUNS round(s), $(nproc) cores, kernel $(uname -r), load before start $LOAD"
echo "medians of the rounds; ratios against wireguard-go on the same path and underlay family"
echo "(pod-* against pod-wireguard-go, *-v6 against wireguard-go-v6 over the IPv6 underlay)"
printf '%-17s %9s %20s %9s %11s %9s %9s\n' implementation "Mbit/s" "(each round)" "vs wg-go" "CPU s/GB" "RTT ms" "RTT/wg-go"
# reference IMPL: what IMPL is compared with (the same path and underlay family).
reference() {
	local ref=wireguard-go
	[[ $1 == pod-* ]] && ref=pod-wireguard-go
	[[ $1 == *-v6 ]] && ref=$ref-v6
	echo "$ref"
}

for impl in "${IMPLS[@]}"; do
	ref=$(reference "$impl")
	python3 - "$impl" "${MBITS[$impl]:-}" "${BYTES[$impl]:-}" "${CPU[$impl]:-}" "${RTT[$impl]:-}" \
		"${MBITS[$ref]:-}" "${RTT[$ref]:-}" <<'EOF'
import math, statistics, sys
impl = sys.argv[1]
mbits, nbytes, cpu, rtt, ref_mbits, ref_rtt = (
    [float(x) for x in a.split() if x != "nan"] for a in sys.argv[2:8])
med = lambda xs: statistics.median(xs) if xs else 0.0
v, w = med(mbits), med(ref_mbits)
# CPU per GB from each round, then the median.
per_gb = [c / (b / 1e9) for c, b in zip(cpu, nbytes) if b > 0]
cpu_gb = "%.2f" % med(per_gb) if per_gb and impl.removesuffix("-v6") not in ("veth", "kernel") else "-"
r, rw = med(rtt), med(ref_rtt)
ratio = lambda a, b: "%.2f" % (a / b) if b else "-"
each = "/".join("%.0f" % x for x in mbits)
print("%-17s %9.0f %20s %9s %11s %9.3f %9s" % (impl, v, each, ratio(v, w), cpu_gb, r, ratio(r, rw)))
EOF
done

# The IPv6 underlay against the IPv4 one: each ratio to wireguard-go over its own family,
# and the IPv6 ratio as a share of the IPv4 one (issue #15 asks for within 10%).
for impl in wgmesh-wg pod-agent pod-wgmesh-wg; do
	[[ -n ${MBITS[$impl]:-} && -n ${MBITS[$impl-v6]:-} ]] || continue
	ref=$(reference "$impl")
	python3 - "$impl" "${MBITS[$impl]}" "${MBITS[$ref]:-}" "${MBITS[$impl-v6]}" \
		"${MBITS[$ref-v6]:-}" <<'EOF'
import statistics, sys
impl = sys.argv[1]
v4, ref4, v6, ref6 = ([float(x) for x in a.split()] for a in sys.argv[2:6])
med = lambda xs: statistics.median(xs) if xs else 0.0
if med(ref4) and med(ref6) and med(v4):
    r4, r6 = med(v4) / med(ref4), med(v6) / med(ref6)
    print("%s vs wireguard-go: %.2f over an IPv4 underlay, %.2f over IPv6: the IPv6 ratio is %.0f%% of the IPv4 one"
          % (impl, r4, r6, 100 * r6 / r4))
EOF
done

# Every implementation measured in every round (a pod round that failed records nothing).
for impl in "${IMPLS[@]}"; do
	measured=$(wc -w <<<"${MBITS[$impl]:-}")
	if ((measured != RUNS)); then
		echo "bench-wireguard: $impl was measured in $measured of $RUNS rounds" >&2
		FAILED+=("$impl")
	fi
done

# Where the CPU went in each profile (system-wide, both ends and iperf3): kernel vs user
# space, ChaCha20-Poly1305, payload copies, idle. Full reports: perf report -i FILE.
if [[ -n ${PERF_DIR:-} ]] && command -v perf >/dev/null; then
	echo
	echo "profiles in $PERF_DIR (% of samples):"
	for data in "$PERF_DIR"/*.data; do
		[[ -e $data ]] || continue
		perf report -i "$data" --no-children --sort sym --stdio -g none 2>/dev/null |
			awk -v name="$(basename "$data" .data)" '
			/^#/ || !/%/ { next }
			{ p = $1; sub("%", "", p)
			  if ($2 == "[k]") k += p; else u += p
			  if ($0 ~ /chacha|poly1305/) c += p
			  if ($0 ~ /copy_(to|from)_iter|memmove|memcpy/) cp += p
			  if ($0 ~ /safe_halt|cpu_idle|intel_idle/) idle += p }
			END { printf "  %-17s kernel %5.1f  user %5.1f  crypto %5.1f  copies %5.1f  idle %5.1f\n", name, k, u, c, cp, idle }'
	done
fi

if ((${#FAILED[@]})); then
	echo "bench-wireguard: failed measurements: ${FAILED[*]}" >&2
	exit 1
fi
