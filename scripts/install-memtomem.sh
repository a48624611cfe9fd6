#!/usr/bin/env bash
# Install memtomem==VERSION into scratch uv tool dirs, from the warm cache that
# scripts/memtomem-env.sh prepared (offline first; online only as a fallback).
#
# Usage: scripts/install-memtomem.sh TOOL_DIR BIN_DIR VERSION [EXTRA_UV_ARGS...]
#   e.g. scripts/install-memtomem.sh "$T/tools" "$T/bin" 0.6.11
#        scripts/install-memtomem.sh "$T/tools" "$T/bin" 0.6.12 --reinstall
# Prints on stdout one line: "installed memtomem==VERSION in S.SSS s (offline|online)".
# uv's own output goes to stderr. HOME is left as the caller set it (uv does not
# write to HOME when UV_TOOL_DIR/UV_TOOL_BIN_DIR/UV_CACHE_DIR are set).
# Needs MM_TEST_UV, UV_CACHE_DIR, UV_PYTHON from scripts/memtomem-env.sh; if
# MM_TEST_UV is unset it sources "$MM_TEST_CACHE/env.sh" (running the setup if needed).
# MM_TEST_OFFLINE_ONLY=1: fail instead of falling back to an online install.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
tool_dir=$1 bin_dir=$2 version=$3
shift 3
if [[ -z "${MM_TEST_UV:-}" ]]; then
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
  eval "$("$here/memtomem-env.sh")"
fi
[[ -x "$MM_TEST_UV" ]] || { echo "install-memtomem: MM_TEST_UV=$MM_TEST_UV is not executable; run scripts/memtomem-env.sh" >&2; exit 1; }
export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1
mkdir -p "$tool_dir" "$bin_dir"
export UV_TOOL_DIR=$tool_dir UV_TOOL_BIN_DIR=$bin_dir

t0=$(date +%s%N)
mode=offline
if ! "$MM_TEST_UV" tool install --offline "$@" "memtomem==$version" >&2; then
  if [[ "${MM_TEST_OFFLINE_ONLY:-0}" == 1 ]]; then
    echo "install-memtomem: offline install of memtomem==$version failed (cache $UV_CACHE_DIR not warm?)" >&2
    exit 1
  fi
  echo "install-memtomem: offline install failed; retrying online" >&2
  mode=online
  "$MM_TEST_UV" tool install --refresh "$@" "memtomem==$version" >&2 \
    || { echo "install-memtomem: uv tool install memtomem==$version failed" >&2; exit 1; }
fi
t1=$(date +%s%N)
ns=$((t1 - t0))
printf 'installed memtomem==%s in %d.%03d s (%s)\n' "$version" $((ns / 1000000000)) $(((ns / 1000000) % 1000)) "$mode"
