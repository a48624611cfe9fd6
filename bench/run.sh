#!/usr/bin/env bash
# Benchmarks (issues 5 and 9): mm-upgrade against memtomem's own `mm upgrade`, side by side.
#
# Usage: bench/run.sh [--runs N] [--real-runs N] [--mcp-runs N] [--no-write] [--rows a,b,...]
#   --runs N       alternating runs per synthetic row (default 7)
#   --real-runs N  real-uv runs each (default 5; 0 skips the real install rows)
#   --mcp-runs N   respawning-MCP-host runs each (default 5; 0 skips them)
#   --no-write     print the block only; do not update BENCHMARKS.md
#   --rows LIST    only these synthetic rows: cooperative,ignore-sigterm,zombie,eight,discovery,
#                  many,many-stores (`--rows none`: no synthetic row)
#
# The 88-server rows (many, many-stores; bench/many.py) have a generated block of their own
# in BENCHMARKS.md. Only them, in about 2 minutes:
#   bash bench/run.sh --rows many,many-stores --real-runs 0 --mcp-runs 0 --runs 5
#
# Builds the release binaries (mm-upgrade, fake-server, fake-uv), prepares uv + a warm
# cache (scripts/memtomem-env.sh), then runs bench/bench.py, which installs memtomem into
# scratch tool dirs, prints the block and rewrites the generated section of BENCHMARKS.md.
# The synthetic rows use fake-uv as uv for both tools; the real and MCP-host rows use
# real uv 0.13.9 and real memtomem 0.6.11 -> 0.6.12 (the MCP host, bench/mcp_host.py,
# runs with the python of a memtomem 0.6.12 tool env, which has the `mcp` SDK).
# Needs python3 >= 3.11. Takes about 10-15 minutes with the defaults.
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
  --fake "$target/release/fake-server" --fake-uv "$target/release/fake-uv" "$@"