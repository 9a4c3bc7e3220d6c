#!/usr/bin/env bash
# Fuzzes wgmesh's parsers: every cargo-fuzz target of fuzz/ (libFuzzer, AddressSanitizer)
# for SECONDS each (default 60), starting from the committed seeds in fuzz/corpus/<target>/.
# Installs cargo-fuzz if missing. Exits non-zero if any target crashes, printing the
# crashing input and the command that reproduces it, and also when any target of
# fuzz/fuzz_targets/ did not run (not listed by cargo fuzz, or no input executed).
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

# Every file of fuzz/fuzz_targets/ is a target, and `cargo fuzz list` must name exactly
# those: a target missing from fuzz/Cargo.toml, or a listing that failed or printed
# nothing, would otherwise fuzz nothing and pass.
mapfile -t targets < <(find fuzz/fuzz_targets -maxdepth 1 -name '*.rs' -printf '%f\n' | sed 's/\.rs$//' | sort)
if ((${#targets[@]} == 0)); then
  echo "no fuzz targets in fuzz/fuzz_targets/" >&2
  exit 1
fi
listed=$(cargo fuzz list | sort)
if [[ $listed != "$(printf '%s\n' "${targets[@]}")" ]]; then
  echo "cargo fuzz list does not name exactly the targets of fuzz/fuzz_targets/ (< files, > listed):" >&2
  diff <(printf '%s\n' "${targets[@]}") <(echo "$listed") >&2 || true
  exit 1
fi

failed=()
not_run=()
for target in "${targets[@]}"; do
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
    continue
  fi
  # A clean exit is not enough: the target must have executed inputs.
  executed=$(sed -n 's/^stat::number_of_executed_units: *\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
  if ((${executed:-0} == 0)); then
    tail -n 20 "$log" >&2
    echo "FAILED: $target exited cleanly but executed no input" >&2
    not_run+=("$target")
  fi
done

echo "fuzzing done in $((SECONDS - start)) s: ${#targets[@]} targets"
if ((${#failed[@]})); then
  echo "failed (crash or error): ${failed[*]}" >&2
fi
if ((${#not_run[@]})); then
  echo "did not run: ${not_run[*]}" >&2
fi
if ((${#failed[@]} + ${#not_run[@]})); then
  exit 1
fi
