//! Process plumbing the tests share, written once: `tests/` (the cli and real-memtomem
//! tests), fake-server's tests and the scenario runner all use it. A dev-dependency only:
//! nothing here ships.
//!
//! - [`proc`]: what `/proc` says of a process (state, parent, group, start time, command
//!   line), whether it runs, and the process tree;
//! - [`Group`]: a process group SIGKILLed when the guard drops, panics included;
//! - [`wait_until`] / [`wait_for`]: a readiness handshake with a deadline;
//! - [`signal`]: signal names and wait statuses spelled the way the suites spell them;
//! - [`flock`]: hold a BSD flock, test whether someone holds one, and who.

pub mod flock;
pub mod proc;
pub mod signal;

use std::time::{Duration, Instant};

/// CLOCK_MONOTONIC in nanoseconds: the clock every event log of the suite stamps with.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Polls `f` every 2 ms until it holds (true) or `within` has passed (false): the
/// readiness handshake for things announced through files, /proc or logs.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// [`wait_until`], panicking with `what` when the deadline passes.
pub fn wait_for(what: &str, within: Duration, f: impl FnMut() -> bool) {
    assert!(
        wait_until(within, f),
        "timed out after {within:?} waiting for {what}"
    );
}

/// A process group the test created (`process_group(0)`): every member is SIGKILLed when
/// the guard drops, on every path, panics included. Ids ≤ 1 are never signalled.
#[derive(Debug)]
pub struct Group(pub i32);

impl Group {
    /// Sends `sig` to every member now.
    pub fn signal(&self, sig: i32) {
        kill_group(self.0, sig);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        kill_group(self.0, libc::SIGKILL);
    }
}

/// `kill(-pgid, sig)`, never for a group id ≤ 1 (that would be "every process").
pub fn kill_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: signalling a process group the caller created.
        unsafe { libc::kill(-pgid, sig) };
    }
}
