//! Process plumbing for the scenario runner: a reaper that owns every child status, the
//! process table read from /proc, flocks, signal names, and a recorder for signals aimed
//! at the runner itself.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `MM_SCENARIO_TIME_SCALE` (default 1): multiplies every deadline the runner uses.
pub fn time_scale() -> f64 {
    std::env::var("MM_SCENARIO_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0)
}

pub fn scaled(secs: f64) -> Duration {
    Duration::from_secs_f64(secs * time_scale())
}

pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        _ => return format!("SIG{sig}"),
    };
    name.to_string()
}

/// Describe a wait status the way scenarios spell outcomes: `exited(N)` or `killed(SIGX)`.
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited({})", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed({})", signal_name(libc::WTERMSIG(status)))
    } else {
        format!("status({status})")
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Reaped {
    pub status: i32,
    pub mono_ns: u64,
}

/// Owns `waitpid(-1)` for the whole (inner) runner process: every child — spawned
/// directly or re-parented to us as the subreaper — is reaped at once, so that no
/// process the upgrader stops lingers as a zombie of ours, and its status is kept.
pub struct Reaper {
    map: Mutex<HashMap<i32, Reaped>>,
    cv: Condvar,
}

impl Reaper {
    pub fn start() -> Arc<Reaper> {
        let r = Arc::new(Reaper {
            map: Mutex::new(HashMap::new()),
            cv: Condvar::new(),
        });
        let r2 = r.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || loop {
                let mut status = 0;
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
                if pid > 0 {
                    let mut m = r2.map.lock().unwrap();
                    m.insert(
                        pid,
                        Reaped {
                            status,
                            mono_ns: mono_ns(),
                        },
                    );
                    r2.cv.notify_all();
                } else {
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
            .expect("spawn reaper thread");
        r
    }

    pub fn get(&self, pid: i32) -> Option<Reaped> {
        self.map.lock().unwrap().get(&pid).copied()
    }

    pub fn all(&self) -> HashMap<i32, Reaped> {
        self.map.lock().unwrap().clone()
    }

    /// Wait until `pid` is reaped or the deadline passes.
    pub fn wait(&self, pid: i32, deadline: Instant) -> Option<Reaped> {
        let mut m = self.map.lock().unwrap();
        loop {
            if let Some(r) = m.get(&pid) {
                return Some(*r);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let (g, _) = self
                .cv
                .wait_timeout(m, (deadline - now).min(Duration::from_millis(50)))
                .unwrap();
            m = g;
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub state: char,
}

pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rfind(')')?;
    let fields: Vec<&str> = stat[after + 1..].split_whitespace().collect();
    Some(ProcInfo {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
    })
}

/// Alive and not a zombie.
pub fn is_alive(pid: i32) -> bool {
    matches!(proc_info(pid), Some(p) if p.state != 'Z' && p.state != 'X')
}

pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

pub fn process_table() -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter_map(proc_info)
        .collect()
}

/// Every live (non-zombie) descendant of `root`, by ppid links.
pub fn descendants(root: i32) -> Vec<ProcInfo> {
    let table = process_table();
    let mut by_parent: BTreeMap<i32, Vec<&ProcInfo>> = BTreeMap::new();
    for p in &table {
        by_parent.entry(p.ppid).or_default().push(p);
    }
    let mut out = vec![];
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some(kids) = by_parent.get(&pid) {
            for k in kids {
                stack.push(k.pid);
                if k.state != 'Z' && k.state != 'X' {
                    out.push((*k).clone());
                }
            }
        }
    }
    out
}

pub fn set_subreaper() -> bool {
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 }
}

/// Kill every descendant of this process (SIGKILL, groups included) and wait until the
/// reaper has collected them, up to `limit`.
pub fn kill_all_descendants(limit: Duration) {
    let me = std::process::id() as i32;
    let my_pgid = unsafe { libc::getpgrp() };
    let deadline = Instant::now() + limit;
    loop {
        let live = descendants(me);
        if live.is_empty() {
            break;
        }
        for p in &live {
            if p.pgid > 1 && p.pgid != my_pgid && p.pgid == p.pid {
                unsafe { libc::kill(-p.pgid, libc::SIGKILL) };
            }
            unsafe {
                libc::kill(p.pid, libc::SIGCONT);
                libc::kill(p.pid, libc::SIGKILL);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILL every process whose environment carries `MM_SCENARIO_RUN_ID=<run_id>` or
/// `<run_id>/<anything>` (processes that escaped every other containment layer).
pub fn sweep_run_id(run_id: &str) -> Vec<i32> {
    let needle = format!("MM_SCENARIO_RUN_ID={run_id}");
    let me = std::process::id() as i32;
    let mut killed = vec![];
    for p in process_table() {
        if p.pid == me || p.state == 'Z' {
            continue;
        }
        if let Ok(env) = fs::read(format!("/proc/{}/environ", p.pid)) {
            let sub = format!("{needle}/");
            if env
                .split(|c| *c == 0)
                .any(|v| v == needle.as_bytes() || v.starts_with(sub.as_bytes()))
            {
                unsafe { libc::kill(p.pid, libc::SIGKILL) };
                killed.push(p.pid);
            }
        }
    }
    killed
}

/// Hold an exclusive BSD flock on `path` (created if needed). The lock lives as long as
/// the returned file (and any descriptor duplicated from it).
pub fn flock_file(path: &Path) -> std::io::Result<fs::File> {
    let f = fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

// ---- signals aimed at the runner itself -------------------------------------------

const SLOTS: usize = 64;
static REC_SIG: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
static REC_PID: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
static REC_N: AtomicUsize = AtomicUsize::new(0);

extern "C" fn record_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let i = REC_N.fetch_add(1, Ordering::SeqCst);
    if i < SLOTS {
        REC_SIG[i].store(sig, Ordering::SeqCst);
        let pid = if info.is_null() {
            0
        } else {
            unsafe { (*info).si_pid() }
        };
        REC_PID[i].store(pid, Ordering::SeqCst);
    }
}

/// Catch (and record, instead of dying from) the signals an upgrader might wrongly aim at
/// its ancestors. Handlers are reset on exec, so children are unaffected.
pub fn install_signal_recorder() {
    for sig in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGCONT,
        libc::SIGALRM,
    ] {
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = record_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// (signal, sender pid) pairs received so far.
pub fn recorded_signals() -> Vec<(i32, i32)> {
    let n = REC_N.load(Ordering::SeqCst).min(SLOTS);
    (0..n)
        .map(|i| {
            (
                REC_SIG[i].load(Ordering::SeqCst),
                REC_PID[i].load(Ordering::SeqCst),
            )
        })
        .collect()
}

/// Format `n` as decimal into `buf` without allocating (safe between fork and exec).
pub fn fmt_pid(n: i32, buf: &mut [u8; 24]) -> &[u8] {
    let mut i = buf.len();
    let neg = n < 0;
    let mut v = (n as i64).unsigned_abs();
    if v == 0 {
        i -= 1;
        buf[i] = b'0';
    }
    while v > 0 {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}
