//! Scenario suite: one test per `scenarios/<area>/<name>.toml` (see scenarios/README.md).
//!
//! `cargo test --features scenarios` runs them all; `cargo test --features scenarios --
//! ignores-sigterm` runs the ones whose name contains that text.
//!
//! Every scenario runs in its own child process (this same binary, re-executed with
//! `MM_SCENARIO_INNER`), which is the subreaper of everything it starts, so scenarios
//! running in parallel threads never see each other's processes, and nothing outlives a
//! scenario. Hostile scenarios (pid files naming 0, -1 or 1) run inside their own pid
//! namespace (`unshare --pid --fork --mount-proc`) when available.
//!
//! Environment:
//! - `MM_SCENARIO_UPGRADER="<command>"`: differential mode, run another upgrader (e.g.
//!   memtomem's `mm upgrade`) and print a pass/fail table instead of failing.
//! - `MM_SCENARIO_TABLE=<file>`: also write that table (markdown) to a file.
//! - `MM_SCENARIO_KEEP=1`: keep every sandbox (paths are printed); `MM_SCENARIO_KEEP_FAILED=1`
//!   keeps only failed ones. `MM_SCENARIO_PAUSE=1`: stop before the upgrader runs and print
//!   the commands to poke at the live sandbox (use with `--nocapture` and one scenario;
//!   see `scripts/run-scenario.sh`).
//! - `MM_SCENARIO_TIME_SCALE=3`: stretch every runner deadline (slow machines).
//! - `MM_SCENARIO_BIN_DIR`: where `fake-server`, `fake-uv` and `fake-host` are (default: built with cargo).
//! - `MM_SCENARIO_MM_UPGRADE`: the mm-upgrade binary (default: this package's).
//! - `MM_SCENARIO_HOSTILE=direct`: run hostile scenarios without a pid namespace.
//! - `MM_SCENARIO_VERBOSE=1`: print every scenario's report, passed ones too.
//!
//! Linux only: the runner is the subreaper of everything a scenario starts
//! (`PR_SET_CHILD_SUBREAPER`), ties its children to itself with
//! `PR_SET_PDEATHSIG`, reads `/proc` and runs hostile scenarios in pid
//! namespaces.

#[cfg(target_os = "linux")]
#[path = "scenarios/model/mod.rs"]
mod model;
#[cfg(target_os = "linux")]
#[path = "scenarios/runner/mod.rs"]
mod runner;
#[cfg(target_os = "linux")]
#[path = "scenarios/suite.rs"]
mod suite;
#[cfg(target_os = "linux")]
#[path = "scenarios/sys.rs"]
mod sys;

#[cfg(target_os = "linux")]
fn main() {
    suite::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("scenarios: Linux only (the runner is a subreaper that reads /proc); none run");
}
