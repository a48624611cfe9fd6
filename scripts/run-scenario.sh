#!/bin/sh
# Run the scenarios whose name contains NAME by hand, print their full reports and keep
# their sandboxes (each report ends with the sandbox path and an env.sh to source).
#
#   scripts/run-scenario.sh signals/ignores-sigterm           # run, report, keep
#   scripts/run-scenario.sh --pause signals/ignores-sigterm   # stop before the upgrader runs
#
# With --pause the servers are up and the commands to poke at them are printed; press
# Enter (or touch <sandbox>/continue) to let the upgrader run.
set -eu
pause=0
if [ "${1:-}" = "--pause" ]; then
    pause=1
    shift
fi
if [ $# -lt 1 ]; then
    echo "usage: $0 [--pause] NAME   (e.g. signals/ignores-sigterm)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
export MM_SCENARIO_KEEP=1
if [ "$pause" = 1 ]; then
    export MM_SCENARIO_PAUSE=1
fi
exec cargo test --features scenarios --test scenarios -- "$1" --test-threads 1
