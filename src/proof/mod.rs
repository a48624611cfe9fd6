//! Whom we may signal: every rule that lets mm-upgrade send a signal to a
//! process, in one place. Discovery ([`crate::discover`]) gathers the facts,
//! this module decides; [`crate::plan`], [`crate::stop`] and
//! [`crate::verify`] only ever act on what it proved.
//!
//! | rule | a process may be signalled when | Linux evidence | macOS evidence | never enough |
//! |---|---|---|---|---|
//! | **(a) lock** | it holds the lock of a memtomem pid file (or presence marker) | the `lock:` line of `/proc/<pid>/fdinfo/<fd>` shows a FLOCK on that very open file (device and inode) | it has that very file (device and inode) open while the lock is contended, and the payload names it | the payload's pid alone; `/proc/locks` (names the process that took the lock, not who holds it now); a file with a second hard link |
//! | **(b) installation** | it runs this installation's own interpreter on one of this installation's entry points | argv\[0\] is `<env>/bin/python*`, `/proc/<pid>/exe` is the file that path leads to, and Python runs `-m memtomem…` or a script that resolves to an entry point of uv's receipt in `<env>/bin` | the same, with the executable from `proc_pidpath` | an argument or a mapping that merely names a file inside the env; an installation path that is not absolute or not verified (a real directory holding uv's receipt) |
//!
//! Whatever the proof:
//! - never pid ≤ 1, never mm-upgrade itself or one of its ancestors
//!   ([`never_signalled`]), never a process group, never a process by name;
//! - a pid file or marker that is a link, a FIFO, not a regular file or has
//!   a second hard link is unverifiable: refused, never signalled, never
//!   removed;
//! - transient states (a pid file that vanished between `lstat` and `open`
//!   or was replaced during the probe, a payload naming a live process that
//!   no longer holds the lock, a holder in mid-exit, a marker changing hands)
//!   get a bounded settle-and-retry ([`SETTLE`], 1.55 s in all); only what
//!   stays unverifiable is refused, and the run names it;
//! - every process found says which installation it runs ([`origin`]):
//!   this one (rule (b)), another (memtomem under another environment's
//!   Python: a `uvx --from memtomem[…]==V` cache env, a project's `.venv`
//!   under `uv run --directory`), or unknown. Another installation's lock
//!   holder is stopped by rule (a) — it holds the store — and named in a
//!   warning (its client, if it pins a version, starts that version again);
//!   without a lock it is never stopped as ours.
//!
//! One job per file: this one holds the rules every proof shares,
//! `installation.rs` rule (b) (which installation is ours and what proves a
//! process runs it), `shapes.rs` which installation a process runs,
//! `python.rs` how a Python command line says what it runs.

mod installation;
mod python;
mod shapes;

use std::time::Duration;

use crate::sys::{LockSeen, OpenFile, Pid};

pub use installation::{runs_entry_point, Installation};
pub use python::{python_launch, PyLaunch};
pub use shapes::{origin, Origin};

/// The settle-and-retry schedule for transient states: 50, 100, 200 ms as
/// upstream (contract §4.5), then 400 and 800 ms, because a server with a
/// marker may wait up to 0.5 s for a pid lock its predecessor still holds.
pub const SETTLE: [Duration; 5] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// Never a target, whatever a file or the process table says: pid ≤ 1
/// (0 and negatives address process groups, 1 is init), mm-upgrade itself
/// and its ancestors (`protected`).
pub fn never_signalled(pid: Pid, protected: &[Pid]) -> bool {
    pid <= 1 || pid == std::process::id() as Pid || protected.contains(&pid)
}

/// An instance discovery may hand to the stop stage: a verified process,
/// no problem attached, and the proof recorded (rule (a) or (b)).
pub fn proven(i: &crate::discover::Instance) -> bool {
    i.pid.is_some_and(|p| p > 1) && i.problem.is_none() && !i.evidence.is_empty()
}

/// Rule (a): does a process hold the lock of a pid file (or marker), given
/// its open files naming the file's inode? Where the OS shows the lock
/// (Linux: the fdinfo lock line) that decides. Where it does not (macOS),
/// the process must have that very file open while the lock is contended
/// (`contended`), and the payload (or marker name) must name it
/// (`named`). The file's single link was checked by the probe.
pub fn holds_lock(open: &[OpenFile], contended: bool, named: bool) -> bool {
    open.iter().any(|o| match o.lock {
        LockSeen::Flock(_) => true,
        LockSeen::None => false,
        LockSeen::Unknown => contended && named,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_signalled_covers_groups_init_ourselves_and_ancestors() {
        for pid in [-4242, -1, 0, 1, std::process::id() as Pid] {
            assert!(never_signalled(pid, &[]), "{pid}");
        }
        assert!(never_signalled(77, &[77]));
        assert!(!never_signalled(77, &[78]));
    }
}
