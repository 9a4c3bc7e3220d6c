#!/usr/bin/env bash
# Runs every test of wgmesh: installs missing system packages, checks formatting and
# lints, then runs all tests of the workspace (unit, integration and end-to-end;
# many need root and real network namespaces), each benchmark once in a short mode,
# and fuzzes the parsers (hack/fuzz.sh). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

# Most tests create network namespaces, links and nftables rules: without root they
# cannot run, and a run that skipped them would look green. Refuse instead.
if [[ $(id -u) -ne 0 ]]; then
  echo "hack/test.sh: must run as root (uid 0, not $(id -u)): the network and end-to-end" \
    "tests need network namespaces, links and nftables; e.g. sudo -E ./hack/test.sh" >&2
  exit 1
fi

./hack/install-deps.sh
# A from-scratch build gains nothing from incremental caches, which would add ~2 GB of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# A run from a clean checkout peaked at 4.7 GiB of disk (build output, fuzz build, test
# files). With less the linker dies mid-build (SIGBUS); say so before starting instead.
need_mib=5000
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
free_mib=$(df -Pm "$target_dir" | awk 'NR == 2 { print $4 }')
built_mib=$( (du -smc "$target_dir" fuzz/target 2>/dev/null || true) | awk 'END { print $1 + 0 }')
if (( free_mib + built_mib < need_mib )); then
  echo "hack/test.sh: only ${free_mib} MiB free for ${target_dir} (${built_mib} MiB already built);" \
    "a full run needs about ${need_mib} MiB" >&2
  exit 1
fi
cargo fmt --all --check
cargo fmt --manifest-path fuzz/Cargo.toml --check
cargo clippy --workspace --all-targets -- -D warnings
# fuzz/ is its own workspace (it builds only with cargo-fuzz's sanitizer flags); linted
# in the main target directory, which already holds most of what it checks.
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --target-dir target -- -D warnings
# Test binaries exec the workspace's own binaries (wgmesh-cni, test-apiserver, ...).
cargo build --workspace --bins
# The VM tests (tests/vm) share one VM per process: they run in one `cargo test`
# process of their own (about a minute: a 20-30 s boot, then the tests in parallel),
# not under nextest, which would boot a VM per test.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --exclude wgmesh-vm --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace --exclude wgmesh-vm --no-fail-fast
fi
cargo test -p wgmesh-vm --no-fail-fast
# Each benchmark once in a short mode, on the debug build: not a measurement (the
# README's figures come from full runs), but a benchmark that stopped working fails the
# run. bench-wireguard.sh without boringtun, which it would first build from crates.io.
cargo bench --profile dev -p wgmesh --bench mesh -- --smoke
cargo bench --profile dev -p wgmesh-cni --bench add_del -- --smoke
RUNS=1 BIN_DIR="$target_dir/debug" ./hack/bench-wireguard.sh 1 \
  veth wgmesh-wg wireguard-go pod-agent pod-wireguard-go
# Every scenario of the scale benchmark at 12 and 24 nodes (about 40 s).
BIN_DIR="$target_dir/debug" ./hack/bench-scale.sh --smoke >/dev/null
# Each parser's fuzz target for a bounded time; a crash fails the run.
./hack/fuzz.sh "${FUZZ_SECONDS:-60}"
