//! A scripted OS for unit tests: a process table, open files with what the
//! OS shows of their locks, signal behaviour, a virtual clock, and a log of
//! every signal sent and every sleep. Nothing real is signalled or waited
//! for; files (pid files, runtime dirs) stay real, in temp dirs.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    Clock, FileId, Files, LockSeen, Mapping, OpenFile, Pid, ProcStat, Processes, RunState, Signals,
    Via,
};

/// One scripted process.
#[derive(Debug, Clone)]
pub struct FakeProc {
    pub ppid: Pid,
    pub pgrp: Pid,
    pub state: RunState,
    pub start: u64,
    pub uid: Option<u32>,
    pub argv: Vec<String>,
    pub exe: Option<FileId>,
    pub cwd: Option<PathBuf>,
    pub ignored: u64,
    pub maps: Vec<Mapping>,
    /// Has a controlling terminal (`None`: not told).
    pub tty: Option<bool>,
    /// Files it has open, and what the OS shows of each one's lock.
    pub open: Vec<(FileId, LockSeen)>,
    /// Exits this long after SIGTERM (`None`: not on SIGTERM).
    pub exits_after_term: Option<Duration>,
    pub survives_kill: bool,
    dies_at: Option<Duration>,
}

impl FakeProc {
    /// A live process of `uid` started at `start`, child of pid 1, that
    /// exits 1 ms after SIGTERM.
    pub fn new(start: u64) -> FakeProc {
        FakeProc {
            ppid: 1,
            pgrp: 1,
            state: RunState::Live,
            start,
            uid: Some(super::euid()),
            argv: vec![],
            exe: None,
            cwd: None,
            ignored: 0,
            maps: vec![],
            tty: None,
            open: vec![],
            exits_after_term: Some(Duration::from_millis(1)),
            survives_kill: false,
            dies_at: None,
        }
    }
    pub fn argv(mut self, argv: &[&str]) -> FakeProc {
        self.argv = argv.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn exe(mut self, id: FileId) -> FakeProc {
        self.exe = Some(id);
        self
    }
    pub fn child_of(mut self, ppid: Pid) -> FakeProc {
        self.ppid = ppid;
        self
    }
    pub fn holds(mut self, id: FileId, lock: LockSeen) -> FakeProc {
        self.open.push((id, lock));
        self
    }
    pub fn state(mut self, state: RunState) -> FakeProc {
        self.state = state;
        self
    }
    pub fn uid(mut self, uid: u32) -> FakeProc {
        self.uid = Some(uid);
        self
    }
    pub fn maps(mut self, path: &str, deleted: bool) -> FakeProc {
        self.maps.push(Mapping {
            path: path.into(),
            deleted,
            inode: 1,
        });
        self
    }
    pub fn tty(mut self, tty: bool) -> FakeProc {
        self.tty = Some(tty);
        self
    }
    pub fn ignores(mut self, sig: i32) -> FakeProc {
        self.ignored |= super::sig_bit(sig);
        self
    }
    /// Exit `after` SIGTERM, or never (`None`).
    pub fn on_term(mut self, after: Option<Duration>) -> FakeProc {
        self.exits_after_term = after;
        self
    }
    pub fn survives_kill(mut self) -> FakeProc {
        self.survives_kill = true;
        self
    }
}

/// What the code under test did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Signal {
        pid: Pid,
        sig: &'static str,
        at: Duration,
    },
    Sleep(Duration),
}

/// The scripted OS.
#[derive(Default)]
pub struct FakeOs {
    procs: RefCell<BTreeMap<Pid, FakeProc>>,
    clock: Cell<Duration>,
    log: RefCell<Vec<Call>>,
    /// Runs on every sleep, after the clock moved (the world changing
    /// while discovery waits).
    on_sleep: RefCell<Option<SleepHook>>,
}

type SleepHook = Box<dyn FnMut(&FakeOs)>;

/// Start-time ticks per second of the fake clock; start time 0 is the
/// fake boot, at wall time [`FAKE_BOOT_WALL`].
pub const FAKE_HZ: u64 = 100;
pub const FAKE_BOOT_WALL: f64 = 1_800_000_000.0;

fn sig_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGKILL => "SIGKILL",
        libc::SIGCONT => "SIGCONT",
        _ => "signal",
    }
}

impl FakeOs {
    pub fn new() -> FakeOs {
        FakeOs::default()
    }
    pub fn add(&self, pid: Pid, p: FakeProc) {
        self.procs.borrow_mut().insert(pid, p);
    }
    pub fn remove(&self, pid: Pid) {
        self.procs.borrow_mut().remove(&pid);
    }
    pub fn set_now(&self, t: Duration) {
        self.clock.set(t);
    }
    pub fn log(&self) -> Vec<Call> {
        self.log.borrow().clone()
    }
    /// The signals sent, as `(pid, name)`.
    pub fn signals(&self) -> Vec<(Pid, &'static str)> {
        self.log
            .borrow()
            .iter()
            .filter_map(|c| match c {
                Call::Signal { pid, sig, .. } => Some((*pid, *sig)),
                Call::Sleep(_) => None,
            })
            .collect()
    }
    pub fn on_sleep(&self, f: impl FnMut(&FakeOs) + 'static) {
        *self.on_sleep.borrow_mut() = Some(Box::new(f));
    }
    /// Gone (exited and reaped) at the current time.
    fn gone(&self, pid: Pid) -> bool {
        let now = self.clock.get();
        self.procs
            .borrow()
            .get(&pid)
            .is_none_or(|p| p.dies_at.is_some_and(|d| d <= now))
    }
    fn dead(&self, pid: Pid) -> bool {
        self.gone(pid)
            || self
                .procs
                .borrow()
                .get(&pid)
                .is_some_and(|p| p.state == RunState::Zombie)
    }
    fn with<T>(&self, pid: Pid, f: impl FnOnce(&FakeProc) -> T) -> Option<T> {
        if self.gone(pid) {
            return None;
        }
        self.procs.borrow().get(&pid).map(f)
    }
}

impl Processes for FakeOs {
    fn pids(&self) -> Vec<Pid> {
        let pids: Vec<Pid> = self.procs.borrow().keys().copied().collect();
        pids.into_iter().filter(|p| !self.gone(*p)).collect()
    }
    fn stat(&self, pid: Pid) -> Option<ProcStat> {
        self.with(pid, |p| ProcStat {
            pid,
            ppid: p.ppid,
            pgrp: p.pgrp,
            session: 1,
            state: p.state,
            start_ticks: p.start,
            comm: p
                .argv
                .first()
                .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
                .unwrap_or_default(),
            uid: p.uid,
        })
    }
    fn cmdline(&self, pid: Pid) -> Vec<String> {
        self.with(pid, |p| p.argv.clone()).unwrap_or_default()
    }
    fn exe(&self, pid: Pid) -> Option<FileId> {
        self.with(pid, |p| p.exe).flatten()
    }
    fn cwd(&self, pid: Pid) -> Option<PathBuf> {
        self.with(pid, |p| p.cwd.clone()).flatten()
    }
    fn ignored(&self, pid: Pid) -> Option<u64> {
        self.with(pid, |p| p.ignored)
    }
    fn maps(&self, pid: Pid) -> Vec<Mapping> {
        self.with(pid, |p| p.maps.clone()).unwrap_or_default()
    }
    fn has_tty(&self, pid: Pid) -> Option<bool> {
        self.with(pid, |p| p.tty).flatten()
    }
}

impl Files for FakeOs {
    fn open_files(&self, pid: Pid, id: FileId) -> Vec<OpenFile> {
        self.with(pid, |p| {
            p.open
                .iter()
                .enumerate()
                .filter(|(_, (f, _))| *f == id)
                .map(|(fd, (_, lock))| OpenFile {
                    pid,
                    fd: fd as i32 + 3,
                    lock: *lock,
                })
                .collect()
        })
        .unwrap_or_default()
    }
}

impl Clock for FakeOs {
    fn now(&self) -> Duration {
        self.clock.get()
    }
    fn sleep(&self, d: Duration) {
        self.log.borrow_mut().push(Call::Sleep(d));
        self.clock.set(self.clock.get() + d);
        let hook = self.on_sleep.borrow_mut().take();
        if let Some(mut f) = hook {
            f(self);
            let mut slot = self.on_sleep.borrow_mut();
            if slot.is_none() {
                *slot = Some(f);
            }
        }
    }
    /// The fake boot is at clock 0 minus 1000 s: start times of scripted
    /// processes are small numbers in the past.
    fn start_now(&self) -> u64 {
        1000 * FAKE_HZ + (self.clock.get().as_millis() as u64 * FAKE_HZ) / 1000
    }
    fn start_unit_secs(&self) -> f64 {
        1.0 / FAKE_HZ as f64
    }
    fn start_origin_wall_secs(&self) -> f64 {
        FAKE_BOOT_WALL
    }
}

impl Signals for FakeOs {
    type Handle = Pid;
    fn open(&self, pid: Pid, start: u64) -> io::Result<Option<Pid>> {
        Ok(self
            .with(pid, |p| p.start == start)
            .unwrap_or(false)
            .then_some(pid))
    }
    fn state(&self, h: &Pid) -> Option<RunState> {
        self.with(*h, |p| p.state)
    }
    fn ignores(&self, h: &Pid, sig: i32) -> bool {
        self.with(*h, |p| p.ignored & super::sig_bit(sig) != 0)
            .unwrap_or(false)
    }
    fn signal(&self, h: &Pid, sig: i32) -> io::Result<bool> {
        if self.dead(*h) {
            return Ok(false);
        }
        let now = self.clock.get();
        self.log.borrow_mut().push(Call::Signal {
            pid: *h,
            sig: sig_name(sig),
            at: now,
        });
        let mut procs = self.procs.borrow_mut();
        let p = procs.get_mut(h).expect("signalled a scripted process");
        let ignores = p.ignored & super::sig_bit(sig) != 0;
        match sig {
            libc::SIGTERM if !ignores && p.state != RunState::Stopped => {
                if let Some(d) = p.exits_after_term {
                    p.dies_at = Some(now + d);
                }
            }
            libc::SIGCONT => {
                p.state = RunState::Live;
                if let Some(d) = p.exits_after_term {
                    p.dies_at = Some(now + d);
                }
            }
            libc::SIGKILL if !p.survives_kill => p.dies_at = Some(now + Duration::from_millis(1)),
            _ => {}
        }
        Ok(true)
    }
    fn exited(&self, h: &Pid) -> bool {
        self.dead(*h)
    }
    fn via(&self, _: &Pid) -> Via {
        Via::Pidfd
    }
    /// Jump the virtual clock to the earliest exit or the timeout.
    fn wait_any(&self, hs: &[&Pid], timeout: Duration) {
        let now = self.clock.get();
        let next = hs
            .iter()
            .filter_map(|h| self.procs.borrow().get(*h).and_then(|p| p.dies_at))
            .filter(|d| *d > now)
            .min()
            .unwrap_or(now + timeout)
            .min(now + timeout);
        self.clock.set(next);
    }
}
