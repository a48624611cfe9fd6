#!/usr/bin/env bash
# Benchmarks (issue 5): mm-upgrade against memtomem's own `mm upgrade`, side by side.
#
# Usage: bench/run.sh [--runs N] [--real-runs N] [--no-write] [--rows a,b,...]
#   --runs N       alternating runs per row (default 7)
#   --real-runs N  real-uv downtime runs (default 5; 0 skips the real install rows)
#   --no-write     print the table only; do not update BENCHMARKS.md
#   --rows LIST    only these rows: cooperative,cooperative-rollback,ignore-sigterm,zombie,eight,discovery
#
# Builds the release binaries, prepares uv + a warm cache (scripts/memtomem-env.sh),
# installs memtomem==0.6.12 (theirs: `mm`) into a scratch tool dir, then runs
# bench/bench.py, which prints the table and rewrites the generated section of
# BENCHMARKS.md. Needs python3 >= 3.11. Takes about 3-5 minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

target=${CARGO_TARGET_DIR:-$ROOT/target}
echo "[bench] cargo build --release --workspace (target: $target)" >&2
cargo build --release --workspace --quiet
eval "$(bash scripts/memtomem-env.sh)"

py=$(command -v python3 || true)
if [[ -z "$py" ]] || ! "$py" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  py=$UV_PYTHON # memtomem's 3.12
fi
exec "$py" "$ROOT/bench/bench.py" --ours "$target/release/mm-upgrade" \
  --fake "$target/release/fake-server" "$@"
