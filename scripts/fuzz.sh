#!/usr/bin/env bash
# Fuzzes sensei's parsers of untrusted input: every cargo-fuzz target in fuzz/ for SECONDS each
# (default 60), one after the other, then one summary line per target. Fails if any target
# finds a crash (a panic, a broken contract, an input over the memory limit or one that takes
# longer than the time limit); the input that caused it is in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [--grow] [SECONDS] [TARGET...]
#
#   --grow   keep what fuzzing finds: new inputs go into the committed corpus fuzz/corpus/<target>,
#            which is then minimised with `cargo fuzz cmin`. Without it, new inputs go to
#            fuzz/target/new-corpus/<target> (git-ignored) and the committed corpus is only read.
#   TARGET   jsonl, labels, npy, npz, config; all of them when none is named.
#
# Environment: FUZZ_SANITIZER (default none, see below), FUZZ_RSS_LIMIT_MB (default 2048),
# FUZZ_TIMEOUT (seconds one input may take, default 10), CARGO_BUILD_JOBS (default 1: the build
# compiles sensei and all its dependencies with coverage instrumentation, which is long; one job
# leaves a core for other work).
#
# Toolchain: cargo-fuzz needs nightly rustc flags (-Cpasses=sancov-module, -Zsanitizer=...).
# When rustup has a nightly toolchain this runs `cargo +nightly fuzz`, which is what was checked
# on the development machine (nightly 1.97.0 2026-05-19, cargo-fuzz 0.13.2). Without nightly it
# falls back to the pinned stable toolchain with RUSTC_BOOTSTRAP=1, which makes stable rustc
# accept the nightly flags: with 1.95.0 that built a cargo-fuzz target (libfuzzer-sys 0.4.13)
# and libFuzzer found the crash planted in it. It is not what rustc promises to support, so
# prefer installing nightly: `rustup toolchain install nightly --profile minimal`.
#
# Sanitizer: none by default. sensei's parsers and the crates they use on untrusted bytes
# (serde_json, toml, zip, miniz_oxide) are safe Rust on those paths, so AddressSanitizer would
# find nothing that a panic does not, at about half the executions per second. libFuzzer still
# catches panics, overflows (the targets are built with debug assertions and overflow checks),
# memory blow-ups and hangs. FUZZ_SANITIZER=address builds with it.
set -euo pipefail

readonly CARGO_FUZZ_VERSION=0.13.2
readonly ALL_TARGETS=(jsonl labels npy npz config)

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz_dir=$root/fuzz

grow=false
if [[ ${1:-} == --grow ]]; then
    grow=true
    shift
fi
seconds=60
if [[ ${1:-} =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
if (($# > 0)); then
    targets=("$@")
else
    targets=("${ALL_TARGETS[@]}")
fi
for target in "${targets[@]}"; do
    if [[ ! -f $fuzz_dir/fuzz_targets/$target.rs ]]; then
        echo "fuzz.sh: no fuzz target '$target'; expected one of: ${ALL_TARGETS[*]}" >&2
        exit 2
    fi
done

if ! cargo fuzz --version 2>/dev/null | grep -q "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo_fuzz=(cargo +nightly fuzz)
    toolchain="nightly ($(rustup run nightly rustc --version))"
else
    export RUSTC_BOOTSTRAP=1
    cargo_fuzz=(cargo fuzz)
    toolchain="$(cd "$root" && rustc --version) with RUSTC_BOOTSTRAP=1"
fi
sanitizer=${FUZZ_SANITIZER:-none}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
echo "fuzz.sh: ${#targets[@]} target(s), ${seconds}s each, $toolchain, sanitizer $sanitizer" >&2

cd "$fuzz_dir"
"${cargo_fuzz[@]}" build --sanitizer "$sanitizer" >&2

logs=$fuzz_dir/target/fuzz-logs
mkdir -p "$logs"
summaries=()
failed=0
for target in "${targets[@]}"; do
    corpus=$fuzz_dir/corpus/$target
    mkdir -p "$corpus" "$fuzz_dir/artifacts/$target"
    if $grow; then
        dirs=("$corpus")
    else
        # libFuzzer writes new inputs into the first directory and only reads the others.
        new=$fuzz_dir/target/new-corpus/$target
        mkdir -p "$new"
        dirs=("$new" "$corpus")
    fi
    before=$(find "$fuzz_dir/artifacts/$target" -type f | wc -l)
    log=$logs/$target.log
    echo "fuzz.sh: $target for ${seconds}s (log: $log)" >&2
    status=0
    "${cargo_fuzz[@]}" run --sanitizer "$sanitizer" "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" \
        -timeout="${FUZZ_TIMEOUT:-10}" \
        -rss_limit_mb="${FUZZ_RSS_LIMIT_MB:-2048}" \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    after=$(find "$fuzz_dir/artifacts/$target" -type f | wc -l)
    crashes=$((after - before))
    if ((status != 0 && crashes == 0)); then
        # A failure that left no input behind (a build error, a killed run) still fails.
        crashes=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    stats=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n 1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$stats")
    features=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$stats")
    units=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$stats")
    if $grow && ((crashes == 0)); then
        "${cargo_fuzz[@]}" cmin --sanitizer "$sanitizer" "$target" "$corpus" >>"$log" 2>&1
        units="$(find "$corpus" -type f | wc -l) after cmin"
    fi
    summary="$target: ${execs:-?} execs in ${seconds}s (${rate:-?}/s), cov ${cov:-?}, ft ${features:-?}, corpus ${units:-?}, crashes $crashes"
    if ((crashes > 0)); then
        failed=1
        summary+=" -- see $log and fuzz/artifacts/$target/"
        grep -E 'panicked at|^SUMMARY|Test unit written to' "$log" >&2 || true
    fi
    summaries+=("$summary")
done

printf '%s\n' "${summaries[@]}"
exit "$failed"
