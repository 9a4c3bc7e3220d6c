#!/usr/bin/env bash
# Fuzzes wgmesh's parsers: every cargo-fuzz target of fuzz/ (libFuzzer, AddressSanitizer)
# for SECONDS each (default 60), starting from the committed seeds in fuzz/corpus/<target>/.
# Installs cargo-fuzz if missing. Exits non-zero if any target crashes, printing the
# crashing input and the command that reproduces it.
#
#   hack/fuzz.sh [SECONDS]
#
# Works on stable Rust: RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z sanitizer flags.
# FUZZ_SANITIZER=none builds without AddressSanitizer (still coverage-guided).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS per target, default 60]" >&2
  exit 2
fi
sanitizer=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1
cargo_fuzz_version=0.13.2

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz $cargo_fuzz_version"
  cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi

# cargo fuzz build|run with the sanitizer, before any `--` (which starts libFuzzer's own flags).
fuzz() { cargo fuzz "$1" --sanitizer "$sanitizer" "${@:2}"; }

start=$SECONDS
fuzz build
echo "fuzz targets built in $((SECONDS - start)) s"

# libFuzzer writes the inputs it finds into the first corpus directory: a temporary one,
# so the committed seeds (second, only read) stay as they are.
work=$(mktemp -d "${TMPDIR:-/tmp}/wgmesh-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

failed=()
for target in $(cargo fuzz list); do
  seeds=fuzz/corpus/$target
  artifacts=fuzz/artifacts/$target
  mkdir -p "$work/$target" "$artifacts"
  # Anything already in artifacts/ is from an earlier run: report only what this one finds.
  before=$(find "$artifacts" -type f | sort)
  log=$work/$target.log
  echo "fuzzing $target for $seconds s (seeds: $seeds)"
  status=0
  fuzz run "$target" "$work/$target" "$seeds" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|^#[0-9]+.*DONE' "$log" | sed "s/^/  $target: /" || true
  if ((status != 0)); then
    tail -n 40 "$log" >&2
    crash=$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | tail -n 1)
    echo "FAILED: $target (exit status $status)" >&2
    if [[ -n $crash ]]; then
      echo "  crashing input: $crash" >&2
      echo "  reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $sanitizer $target $crash" >&2
    fi
    failed+=("$target")
  fi
done

echo "fuzzing done in $((SECONDS - start)) s"
if ((${#failed[@]})); then
  echo "crashed: ${failed[*]}" >&2
  exit 1
fi
