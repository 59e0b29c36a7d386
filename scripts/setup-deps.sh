#!/usr/bin/env bash
# setup-deps.sh — install the Debian packages kvstore needs, and only those not installed yet.
#
#   ./scripts/setup-deps.sh            build and run: compiler, cmake, the libraries, curl
#   ./scripts/setup-deps.sh --test     also Node.js and npm (for the OpenAPI linter), clang
#                                      with its libFuzzer runtime (for the fuzz tests), and
#                                      faketime (cluster tests with skewed clocks)
#
# Runs `apt-get update` only when a package is missing and apt does not know it yet (or
# the install fails on stale lists). Non-interactive: safe without a terminal (CI). Needs
# root, or sudo when something must be installed.
set -euo pipefail

# Why each one is needed is in the README ("Dependencies").
PKGS=(build-essential cmake pkg-config libuv1-dev libnng-dev liblz4-dev libcbor-dev
    libcriterion-dev libhttp-parser-dev libyaml-dev curl)
# Only for the tests: the fuzz targets (tests/fuzz) are built with clang -fsanitize=fuzzer;
# cluster tests run nodes under faketime for clock skew.
TEST_PKGS=(clang libclang-rt-14-dev faketime)

with_node=0
for arg in "$@"; do
    case "$arg" in
    --test) with_node=1 ;;
    -h | --help)
        sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "setup-deps.sh: unknown argument '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for p in "${PKGS[@]}"; do
    installed "$p" || missing+=("$p")
done
if [[ $with_node == 1 ]]; then
    for p in "${TEST_PKGS[@]}"; do
        installed "$p" || missing+=("$p")
    done
    # Judge by the commands, not the package names: Node.js from another source (which
    # bundles npm) is fine, and adding Debian's npm next to it would conflict.
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
fi

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "setup-deps: all Debian packages present"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-deps: missing ${missing[*]}, and apt-get is not available (kvstore is built on Debian 12)" >&2
    exit 1
fi
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "setup-deps: missing ${missing[*]}; run as root (or install sudo)" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q --no-install-recommends -o Dpkg::Use-Pty=0)

# apt only knows a package after `apt-get update` has fetched the lists at least once.
need_update=0
for p in "${missing[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [[ -z $cand || $cand == "(none)" ]]; then
        need_update=1
        break
    fi
done

echo "setup-deps: installing ${missing[*]}"
if [[ $need_update == 1 ]]; then
    "${SUDO[@]}" apt-get update -q
fi
if ! "${SUDO[@]}" apt-get install "${APT_OPTS[@]}" "${missing[@]}"; then
    # Lists can be stale (a package version that the mirror no longer has): refresh once.
    echo "setup-deps: install failed; refreshing package lists and retrying" >&2
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install "${APT_OPTS[@]}" "${missing[@]}"
fi
echo "setup-deps: done"
