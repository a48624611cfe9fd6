//! The operating-system seam. Everything that asks the kernel about
//! processes, open files and locks, sends signals, waits for exits, reads a
//! clock or runs a bounded child goes through here, and only this module
//! contains `unsafe`. The decisions stay in shared code ([`crate::proof`],
//! [`crate::discover`], [`crate::stop`]…), which sees the OS through a few
//! small traits:
//!
//! | trait | what | Linux ([`linux`]) | macOS (`macos`) |
//! |---|---|---|---|
//! | [`Processes`] | the process table: state, parent, start time, owner, argv, executable, working directory, ignored signals, mappings | `/proc/<pid>/{stat,status,cmdline,exe,cwd,maps}` | `sysinfo` (table, argv, executable, cwd), `kinfo_proc` (`p_stat`, `p_starttime` in µs, `p_sigignore`), `proc_pidinfo(PROC_PIDTBSDINFO)` (parent, group, owner), `proc_pidpath` |
//! | [`Files`] | which processes have a given file open, and what the OS shows of their lock | `/proc/<pid>/fd` + the `lock:` lines of fdinfo | `proc_pidinfo(PROC_PIDLISTFDS)` + `proc_pidfdinfo(PROC_PIDFDVNODEPATHINFO)`; the lock itself is not visible ([`LockSeen::Unknown`]) |
//! | [`Signals`] | a handle on one process that a recycled pid cannot fool, signals, exit waiting | pidfds (`pidfd_open`, `pidfd_send_signal`, `poll`) | `kill` after a start-time check, kqueue `EVFILT_PROC`/`NOTE_EXIT` |
//! | [`Clock`] | monotonic time, sleeping, "now" in process start-time units | `CLOCK_BOOTTIME` in clock ticks | wall clock in µs (`p_starttime`'s unit) |
//! | [`Bounded`] | a child process bounded in time: wait for its exit without reaping, kill its group | pidfd (`waitid(WNOWAIT)` fallback) | kqueue `NOTE_EXIT` |
//!
//! [`fake`] (tests) is a scripted process table with a call log and a
//! virtual clock, so discovery, stop, clean, verify and status are unit
//! tested without real processes. Everything read from the kernel is
//! untrusted data: parsed, never executed; a process's environment is never
//! read.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[cfg(test)]
pub mod fake;
#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "macos")]
pub mod macos;
mod posix;

pub use posix::{
    catch_signals, cloexec, die_with_parent, euid, fault_point, kill_group, monotonic_ns,
    poll_readable, read_byte, try_flock, unlock, wait_any_fd, write_lock_pid,
};

#[cfg(target_os = "linux")]
pub use linux::{ChildWaiter, Linux as Real, ProcHandle};
#[cfg(target_os = "macos")]
pub use macos::{ChildWaiter, Macos as Real, ProcHandle};

/// A process id as the kernel reports it.
pub type Pid = i32;

/// The scheduler state, reduced to what matters for stopping a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Running, sleeping, disk sleep, idle…
    Live,
    /// Stopped by a signal or a tracer; SIGTERM stays pending until SIGCONT.
    Stopped,
    /// Exited; only its parent's `wait` is missing. Dead for our purposes.
    Zombie,
}

/// What the process table says about one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: Pid,
    pub ppid: Pid,
    pub pgrp: Pid,
    pub session: Pid,
    pub state: RunState,
    /// Start time in the OS's start-time unit (Linux: clock ticks since
    /// boot; macOS: µs since the epoch); with the pid it names one process.
    pub start_ticks: u64,
    pub comm: String,
    /// The owner (effective uid), when the OS shows it.
    pub uid: Option<u32>,
}

/// A mapped file of a process (Linux: `/proc/<pid>/maps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub path: String,
    pub deleted: bool,
    pub inode: u64,
}

/// The kind of a BSD flock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Write,
    Read,
}

/// What the OS shows of the lock an open file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockSeen {
    /// It holds a flock (Linux: a `lock:` line of its fdinfo).
    Flock(LockKind),
    /// It holds none.
    None,
    /// The OS does not tell (macOS).
    Unknown,
}

/// A process that has a given file open, and what is known of its lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFile {
    pub pid: Pid,
    pub fd: i32,
    pub lock: LockSeen,
}

/// Identity of a file for before/after comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// How a signal was delivered, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    Pidfd,
    Kill,
}

/// The process table.
pub trait Processes {
    /// Every pid the OS lists.
    fn pids(&self) -> Vec<Pid>;
    fn stat(&self, pid: Pid) -> Option<ProcStat>;
    /// argv (lossy UTF-8); empty when unreadable.
    fn cmdline(&self, pid: Pid) -> Vec<String>;
    /// The identity of the executable it runs.
    fn exe(&self, pid: Pid) -> Option<FileId>;
    fn cwd(&self, pid: Pid) -> Option<PathBuf>;
    /// Signals whose disposition is "ignore", bit `sig - 1`.
    fn ignored(&self, pid: Pid) -> Option<u64>;
    /// Mapped files (empty where the OS does not tell).
    fn maps(&self, pid: Pid) -> Vec<Mapping>;
    /// Whether it has a controlling terminal (`None`: the OS does not tell),
    /// to recognise an interactive shell as a terminal host ([`crate::hosts`]).
    fn has_tty(&self, _pid: Pid) -> Option<bool> {
        None
    }
    /// Every listed process whose executable can be seen, with its
    /// identity: the scan's prefilter (rule (b) needs the executable to be
    /// one of the installation's interpreters).
    fn executables(&self) -> Vec<(Pid, FileId)> {
        self.pids()
            .into_iter()
            .filter_map(|p| Some((p, self.exe(p)?)))
            .collect()
    }
    /// Every listed process with an argument that contains `needle`.
    fn mentioning(&self, needle: &str) -> Vec<Pid> {
        self.pids()
            .into_iter()
            .filter(|&p| self.cmdline(p).iter().any(|a| a.contains(needle)))
            .collect()
    }
    /// One pass over the table.
    fn table(&self) -> Vec<ProcStat> {
        self.pids()
            .into_iter()
            .filter_map(|p| self.stat(p))
            .collect()
    }
}

/// Open-file and lock evidence for a path.
pub trait Files {
    /// The open files of `pid` that name the inode `id`, with their locks.
    fn open_files(&self, pid: Pid, id: FileId) -> Vec<OpenFile>;
}

/// Time.
pub trait Clock {
    /// Monotonic time since an arbitrary epoch.
    fn now(&self) -> Duration;
    fn sleep(&self, d: Duration);
    /// Now, in the unit and origin of [`ProcStat::start_ticks`], so "started
    /// after the install" is compared on one clock.
    fn start_now(&self) -> u64;
    /// Seconds per start-time unit.
    fn start_unit_secs(&self) -> f64;
    /// Wall-clock seconds (Unix time) of start time 0.
    fn start_origin_wall_secs(&self) -> f64;
    /// Wall-clock seconds of a start time.
    fn start_wall_secs(&self, start: u64) -> f64 {
        self.start_origin_wall_secs() + start as f64 * self.start_unit_secs()
    }
}

/// Everything discovery and status read.
pub trait Os: Processes + Files + Clock {}
impl<T: Processes + Files + Clock> Os for T {}

/// Signalling with exit waiting, on handles a recycled pid cannot fool.
pub trait Signals: Clock {
    type Handle;
    /// A handle on `pid` if it is still the process that started at
    /// `start`; `Ok(None)` when it is gone.
    fn open(&self, pid: Pid, start: u64) -> io::Result<Option<Self::Handle>>;
    fn state(&self, h: &Self::Handle) -> Option<RunState>;
    fn ignores(&self, h: &Self::Handle, sig: i32) -> bool;
    /// Send `sig`; `Ok(false)` when the process was already gone.
    fn signal(&self, h: &Self::Handle, sig: i32) -> io::Result<bool>;
    /// Has it exited (zombies included)?
    fn exited(&self, h: &Self::Handle) -> bool;
    fn via(&self, h: &Self::Handle) -> Via;
    /// Block until one of `hs` exits or `timeout` passes.
    fn wait_any(&self, hs: &[&Self::Handle], timeout: Duration);
}

/// A started child, waited for without being reaped (so `Child::wait` still
/// reaps it), bounded in time.
pub trait Bounded {
    /// Wait at most `timeout` (in slices, checking `abort`) for the exit.
    fn wait_exit(&self, timeout: Duration, abort: &dyn Fn() -> bool) -> bool;
}

/// The OS this binary runs on.
pub fn real() -> &'static Real {
    static REAL: std::sync::OnceLock<Real> = std::sync::OnceLock::new();
    REAL.get_or_init(Real::default)
}

/// Bit for `sig` in a signal mask.
pub fn sig_bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// All descendants of `root` in `table`, parents before children.
pub fn descendants(table: &[ProcStat], root: Pid) -> Vec<ProcStat> {
    let mut out: Vec<ProcStat> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for st in table.iter().filter(|s| s.ppid == p) {
            if st.pid != root && !out.iter().any(|o| o.pid == st.pid) {
                out.push(st.clone());
                frontier.push(st.pid);
            }
        }
    }
    out
}

/// Our own pid and every ancestor up to init: processes we must never signal.
pub fn self_and_ancestors_in<P: Processes + ?Sized>(os: &P) -> Vec<Pid> {
    let me = std::process::id() as Pid;
    let mut out = vec![me];
    let mut cur = me;
    for _ in 0..4096 {
        match os.stat(cur) {
            Some(st) if st.ppid > 0 && !out.contains(&st.ppid) => {
                out.push(st.ppid);
                cur = st.ppid;
            }
            _ => break,
        }
    }
    out
}

/// [`self_and_ancestors_in`] the real OS.
pub fn self_and_ancestors() -> Vec<Pid> {
    self_and_ancestors_in(real())
}

/// Start reading the process table on threads (Linux): the executables,
/// and the processes whose argv mentions `needle`, for the next
/// [`Processes::executables`] and [`Processes::mentioning`] on the real OS
/// to take. An upgrade's first scans then run while uv answers `uv tool dir`.
pub fn read_ahead(needle: Option<&'static str>) {
    #[cfg(target_os = "linux")]
    real().read_ahead(needle);
    #[cfg(not(target_os = "linux"))]
    let _ = needle;
}

/// Drop what [`read_ahead`] read and no pass took, so that every later
/// pass reads the table afresh.
pub fn discard_read_ahead() {
    #[cfg(target_os = "linux")]
    real().discard_read_ahead();
}

/// Now in start-time units on the real clock (see [`Clock::start_now`]).
pub fn boot_ticks_now() -> u64 {
    real().start_now()
}

/// Every process among `pids` with an open file on `id` that the OS shows
/// holding a flock on it.
pub fn flock_holders<F: Files + ?Sized>(os: &F, pids: &[Pid], id: FileId) -> Vec<OpenFile> {
    pids.iter()
        .flat_map(|&pid| os.open_files(pid, id))
        .filter(|o| matches!(o.lock, LockSeen::Flock(_)))
        .collect()
}

/// Exchange two directory entries atomically (`renameat2(RENAME_EXCHANGE)`;
/// `renamex_np(RENAME_SWAP)` on macOS). Both must exist, on one filesystem.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    let flags = libc::RENAME_EXCHANGE;
    #[cfg(target_os = "macos")]
    let flags = 0x2; // RENAME_SWAP
    posix::rename_with(a, b, flags as libc::c_uint)
}

/// Rename that never replaces an existing entry (`RENAME_NOREPLACE`; on
/// macOS `RENAME_EXCL`).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    let flags = libc::RENAME_NOREPLACE;
    #[cfg(target_os = "macos")]
    let flags = 0x4; // RENAME_EXCL
    posix::rename_with(from, to, flags as libc::c_uint)
}

/// Resolve a program on `PATH` the way a shell would.
pub fn which(program: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    std::env::split_paths(path_var?)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_and_parent_are_protected() {
        let protected = self_and_ancestors();
        assert_eq!(protected[0], std::process::id() as Pid);
        assert!(protected.contains(&(nix::unistd::getppid().as_raw())));
    }

    #[test]
    fn descendants_come_parents_first() {
        let st = |pid, ppid| ProcStat {
            pid,
            ppid,
            pgrp: pid,
            session: 1,
            state: RunState::Live,
            start_ticks: 1,
            comm: "x".into(),
            uid: None,
        };
        let table = [st(10, 1), st(11, 10), st(12, 11), st(13, 1)];
        let d: Vec<Pid> = descendants(&table, 10).iter().map(|s| s.pid).collect();
        assert_eq!(d, vec![11, 12]);
    }
}
