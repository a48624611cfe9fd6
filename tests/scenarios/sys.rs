//! Process plumbing only the scenario runner needs: a reaper that owns every child
//! status, the subreaper's last sweep, the run-id sweep, and a recorder for signals aimed
//! at the runner itself. What every suite needs (/proc, groups, flocks, signal names,
//! the monotonic clock) is in `testkit`.

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use testkit::mono_ns;
pub use testkit::proc::{cmdline, descendants, running as is_alive};
pub use testkit::signal::{describe_status, name as signal_name};

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
            if p.pgid != my_pgid && p.pgid == p.pid {
                testkit::kill_group(p.pgid, libc::SIGKILL);
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
    for p in testkit::proc::table() {
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
