#!/usr/bin/env bash
# run.sh — build one libFuzzer target with clang (if needed) and run it for a bounded time.
# ctest calls it for every tests/fuzz/fuzz_*.c; run it by hand the same way:
#
#   tests/fuzz/run.sh SOURCE_DIR FUZZ_BUILD_DIR TARGET SECONDS [libFuzzer flags...]
#   tests/fuzz/run.sh . build/fuzz fuzz_segment 600          # a longer session
#
# The fuzz build is a separate CMake build of the project with -DCMAKE_C_COMPILER=clang
# -DKV_FUZZ=ON in FUZZ_BUILD_DIR (configured once, then built incrementally; a lock file
# serialises parallel ctest runs). Inputs are read from the committed seed corpus
# tests/fuzz/corpus/TARGET and from FUZZ_BUILD_DIR/corpus-TARGET, where new interesting
# inputs are kept between runs; a crashing input is written to FUZZ_BUILD_DIR/artifacts/.
#
# Exit status: 0 no finding, 1 a finding or a build failure, 77 skipped (clang, or its
# libFuzzer runtime from libclang-rt-14-dev, is not installed). KV_FUZZ_CC picks the
# compiler (default clang).
set -euo pipefail

if [[ $# -lt 4 ]]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
src=$(cd "$1" && pwd)
bld=$2
target=$3
secs=$4
shift 4

cc=${KV_FUZZ_CC:-clang}
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "fuzz: SKIPPED: $cc not found; install clang and libclang-rt-14-dev" \
        "(scripts/setup-deps.sh --test does)"
    exit 77
fi
mkdir -p "$bld"
bld=$(cd "$bld" && pwd)

# Can this clang link a fuzzer? (Debian ships the runtime separately.)
probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n)\n{ (void)d; (void)n; return 0; }\n' \
    >"$probe_dir/p.c"
if ! "$cc" -fsanitize=fuzzer,address "$probe_dir/p.c" -o "$probe_dir/p" 2>"$probe_dir/err"; then
    echo "fuzz: SKIPPED: $cc cannot link -fsanitize=fuzzer (install libclang-rt-14-dev):"
    head -n 3 "$probe_dir/err"
    exit 77
fi

# Configure once, build incrementally; one build at a time.
exec 9>"$bld/.lock"
flock 9
if [[ ! -f $bld/CMakeCache.txt ]]; then
    if ! cmake -S "$src" -B "$bld" -DCMAKE_C_COMPILER="$cc" -DKV_FUZZ=ON \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$bld/configure.log" 2>&1; then
        cat "$bld/configure.log"
        rm -f "$bld/CMakeCache.txt"
        echo "fuzz: configuring the clang fuzz build failed" >&2
        exit 1
    fi
fi
build() {
    cmake --build "$bld" --target "$target" -j"$(nproc 2>/dev/null || echo 2)" \
        >"$bld/build-$target.log" 2>&1
}
# A target added since the last configure is unknown to the build tool: configure again.
if ! build && ! { cmake "$bld" >>"$bld/configure.log" 2>&1 && build; }; then
    cat "$bld/build-$target.log"
    echo "fuzz: building $target failed" >&2
    exit 1
fi
flock -u 9

work="$bld/corpus-$target"
seeds="$src/tests/fuzz/corpus/$target"
mkdir -p "$work" "$bld/artifacts"
corpora=("$work")
[[ -d $seeds ]] && corpora+=("$seeds")

echo "fuzz: $target for ${secs}s (corpus: ${corpora[*]})"
# Leak checks on, crashes and leaks are findings; -timeout catches hangs of one input.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
set +e
"$bld/$target" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$bld/artifacts/$target-" "$@" "${corpora[@]}" 2>"$bld/$target.log"
rc=$?
set -e
# The log is long (one line per new input); show the end, or all of it on a finding.
if [[ $rc -ne 0 ]]; then
    cat "$bld/$target.log"
    echo "fuzz: $target FOUND A PROBLEM (exit $rc); the input is in $bld/artifacts/" >&2
    exit 1
fi
tail -n 15 "$bld/$target.log"
echo "fuzz: $target: no finding in ${secs}s"
