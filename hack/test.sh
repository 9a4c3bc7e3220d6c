#!/usr/bin/env bash
# Runs every test of wgmesh: installs missing system packages, checks formatting and
# lints, then runs all tests of the workspace (unit, integration and end-to-end;
# many need root and real network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."

./hack/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Test binaries exec the workspace's own binaries (wgmesh-cni, test-apiserver, ...).
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi
