#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each (default 20 s; an hour by
# hand: SECONDS_PER_TARGET=3600). Corpora start from fuzz/seeds/<target> (committed,
# built from tests/data); new inputs go to a scratch copy, so a run leaves the tree clean.
# A crash stops the script with the reproducer under fuzz/artifacts/<target>/.
#
#   bash scripts/fuzz.sh                 # all targets, 20 s each
#   SECONDS_PER_TARGET=600 bash scripts/fuzz.sh fhirpath view_definition
#   RUNS_PER_TARGET=200000 FUZZ_SEED=1 bash scripts/fuzz.sh  # what CI runs: a fixed number
#                                        # of inputs from a fixed seed, so a rerun is the same run
#
# Needs a nightly toolchain (cargo fuzz builds with -Zsanitizer) and cargo-fuzz; both are
# installed when missing. RSS is capped at 2 GiB per target and each input at 1 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
secs="${SECONDS_PER_TARGET:-20}"
runs="${RUNS_PER_TARGET:-}"
if [ -n "$runs" ]; then
  budget=(-runs="$runs" -seed="${FUZZ_SEED:-1}")
  what="$runs inputs (seed ${FUZZ_SEED:-1})"
else
  budget=(-max_total_time="$secs")
  what="${secs}s"
fi

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cd fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -O
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  cp -r "seeds/$t/." "$scratch/$t/" 2>/dev/null || true
  echo "fuzz: $t for $what"
  rc=0
  cargo +nightly fuzz run -O "$t" "$scratch/$t" -- \
    "${budget[@]}" -rss_limit_mb=2048 -max_len=1048576 -timeout=10 \
    -print_final_stats=1 >"$scratch/$t.log" 2>&1 || rc=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)' "$scratch/$t.log" || true
  if [ "$rc" -ne 0 ]; then
    echo "fuzz: $t failed (exit $rc); the reproducer is under fuzz/artifacts/$t/:" >&2
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$scratch/$t.log" >&2 || tail -20 "$scratch/$t.log" >&2
    exit 1
  fi
done
echo "fuzz: ${#targets[@]} targets, $what each, no crash"
