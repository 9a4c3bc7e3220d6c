#!/usr/bin/env bash
# The scale benchmark: one real wgmesh agent (node0 of a testbed) against a swarm of
# emulated nodes (tests/swarm), through the scenarios of issue #17, printing one table.
#
# Steady state at each cluster size (agent RSS and CPU at idle, `wg show wgmesh0`, route
# and nftables rule counts); then at the largest size: a node joining, irrelevant Node
# updates (churn: agent CPU and kernel writes), handshake storms (the agent restarting;
# every other node restarting), one TCP stream with 1 and with N-1 peers configured, and
# what the API server sends to K watching agents per Node update and per relist. Every
# scenario also checks that all emulated pods still answer through the agent; a failed
# check fails the run (a missed goal only shows in the table).
#
# Needs root, iperf3, wg, nft; builds the workspace's binaries in release mode.
#
# Usage: hack/bench-scale.sh [wgmesh-swarm options]
#   e.g. --sizes 100,300,1000 --watchers 50 --churn-seconds 20 (the defaults), or
#   --smoke: every scenario at a tiny size, for moments (a check, not a measurement).
#   BIN_DIR: use the binaries there (wgmesh, wgmesh-cni, test-apiserver, wgmesh-swarm)
#   instead of building, e.g. target/debug for a smoke run.
#
# The table goes to stdout (Markdown); progress and the agents' logs of a failure go to
# stderr.

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)

[[ $(id -u) -eq 0 ]] || { echo "bench-scale: needs root (network namespaces)" >&2; exit 1; }
for tool in iperf3 wg nft nsenter curl; do
	command -v "$tool" >/dev/null || { echo "bench-scale: $tool is missing (hack/install-deps.sh)" >&2; exit 1; }
done

if [[ -n ${BIN_DIR:-} ]]; then
	BIN_DIR=$(cd "$BIN_DIR" && pwd)
	echo "== using the binaries in $BIN_DIR" >&2
else
	BIN_DIR=$ROOT/target/release
	echo "== building the workspace's binaries (release)" >&2
	cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" \
		-p wgmesh -p wgmesh-cni -p test-apiserver -p wgmesh-swarm --bins
fi

# Anything else using the CPU skews the numbers: say so with the results.
LOAD=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$LOAD" 'BEGIN { exit !(l > 0.5) }'; then
	echo "bench-scale: warning: load average is $LOAD before starting; results will be noisy" >&2
fi

exec "$BIN_DIR/wgmesh-swarm" "$@"
