#!/usr/bin/env bash
# Run the lib unit tests and the CLI integration tests (tests/cli.rs and its
# siblings tests/cli_*.rs) N times in a row (default 20) and stop at the first
# failure, naming the iteration. For flakes that depend on which tests share
# a process (issue 11: a flock inherited by a sibling test's fork). Not run
# in CI.
#
# Usage:
#   scripts/stress-tests.sh            # 20 iterations
#   scripts/stress-tests.sh 100        # 100 iterations
#   scripts/stress-tests.sh 50 --test-threads 32   # extra args go to every test binary
#
# The test binaries (and fake-server) are built once, then run directly, so
# an edit made while this runs does not rebuild anything mid-stress.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${1:-20}
[[ $# -gt 0 ]] && shift
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "stress-tests: N must be a positive integer, got '$N'" >&2; exit 2; }

log() { printf '[stress %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

TARGETS=(--lib)
for f in tests/cli.rs tests/cli_*.rs; do
  if [[ -f $f ]]; then TARGETS+=(--test "$(basename "$f" .rs)"); fi
done
log "building the test binaries (${TARGETS[*]}) and fake-server"
cargo build -q -p fake-server --bins
mapfile -t BINS < <(
  cargo test -q "${TARGETS[@]}" --no-run --message-format=json 2>/dev/null |
    grep '"profile":{[^}]*"test":true' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 |
    sort -u
)
want=$((${#TARGETS[@]} / 2 + 1))
[[ ${#BINS[@]} -eq $want ]] || { log "expected $want test binaries, found ${#BINS[@]}: ${BINS[*]:-none}"; exit 1; }

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/mm-stress.XXXXXX")
log "$N iterations of: ${BINS[*]##*/} (logs in $LOGS)"
start=$(date +%s)
for ((i = 1; i <= N; i++)); do
  t0=$(date +%s%N)
  for bin in "${BINS[@]}"; do
    out="$LOGS/${bin##*/}.$i.log"
    if ! "$bin" "$@" >"$out" 2>&1; then
      echo "FAILED at iteration $i of $N: ${bin##*/}" >&2
      grep -E '^(test .*FAILED|---- )|panicked at' "$out" >&2 || tail -n 40 "$out" >&2
      echo "full log: $out" >&2
      exit 1
    fi
    passed=$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$out")
    rm -f "$out"
    printf -v "n_${bin//[^a-zA-Z0-9]/_}" '%s' "$passed"
  done
  log "iteration $i/$N ok ($(( ($(date +%s%N) - t0) / 1000000 )) ms)"
done
counts=()
for bin in "${BINS[@]}"; do
  var="n_${bin//[^a-zA-Z0-9]/_}"
  counts+=("${bin##*/}: ${!var} tests")
done
rmdir "$LOGS"
echo "all $N iterations passed in $(($(date +%s) - start)) s ($(IFS=,; echo "${counts[*]}" | sed 's/,/, /g'))"
