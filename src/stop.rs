//! Stage 3: stop processes. SIGTERM, then SIGKILL after the grace period, with
//! pidfds so a recycled pid is never hit and an exit (zombies included) is
//! seen the moment it happens. A process that ignores SIGTERM is killed at
//! once; a stopped one gets SIGCONT so it can act on the SIGTERM.

use std::time::Duration;

use serde::Serialize;

use crate::sys::{Pid, RunState, Via};

/// One process to stop, with the identity discovery proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopTarget {
    pub pid: Pid,
    pub start_ticks: u64,
    /// A label for reports ("server", "web UI", "child of 1234"…).
    pub role: String,
}

/// How a process's end was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Confirmed {
    /// The pidfd became readable (exit observed by the kernel).
    Pidfd,
    /// `/proc` no longer shows the same process (no pidfd available).
    Proc,
    /// It was already a zombie when we looked: dead, only unreaped.
    Zombie,
    /// It was gone before we could signal it.
    AlreadyGone,
}

/// What happened to one process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StopRecord {
    pub pid: Pid,
    pub role: String,
    /// Signals sent, in order ("SIGTERM", "SIGCONT", "SIGKILL").
    pub signals: Vec<&'static str>,
    pub via: Option<Via>,
    pub confirmed_by: Option<Confirmed>,
    /// From our first signal to this process until its exit was confirmed.
    pub after_ms: Option<f64>,
    /// Why SIGKILL was used, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalated: Option<String>,
    /// Set when the process could not be stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StopRecord {
    pub fn was_signalled(&self) -> bool {
        !self.signals.is_empty()
    }
    pub fn stopped(&self) -> bool {
        self.error.is_none()
    }
}

/// Everything the stop engine needs from the OS (the seam's signalling
/// trait); [`crate::sys::fake::FakeOs`] in unit tests.
pub use crate::sys::Signals as ProcessOps;

/// The real OS.
pub type RealOps = crate::sys::Real;

/// Timing knobs.
#[derive(Debug, Clone, Copy)]
pub struct StopConfig {
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// How long to wait for the exit after SIGKILL before calling it a failure
    /// (a process in uninterruptible sleep dies only when its I/O returns).
    pub kill_wait: Duration,
}

fn sig_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGKILL => "SIGKILL",
        libc::SIGCONT => "SIGCONT",
        _ => "signal",
    }
}

struct Live<H> {
    idx: usize,
    handle: H,
    signalled_at: Option<Duration>,
}

/// [`stop_all`] on the real OS, telling `ui` as it goes (`signalling` per
/// target, then `signalled`, `escalated` and `exited` per record): the
/// terminal's step lines and `--events` of the upgrade and of `reap`.
pub fn stop_all_reported(
    ui: &mut crate::ui::Ui,
    targets: &[StopTarget],
    cfg: StopConfig,
) -> Vec<StopRecord> {
    use serde_json::json;
    for t in targets {
        ui.event("signalling", json!({"pid": t.pid, "role": t.role}));
    }
    let recs = stop_all(&RealOps::default(), targets, cfg);
    for r in &recs {
        ui.event(
            "signalled",
            json!({"pid": r.pid, "signals": r.signals, "via": r.via}),
        );
        if r.escalated.is_some() {
            ui.event("escalated", json!({"pid": r.pid, "why": r.escalated}));
        }
        ui.event("exited", json!({"pid": r.pid, "confirmed_by": r.confirmed_by, "after_ms": r.after_ms, "error": r.error}));
    }
    recs
}

/// Stop every target concurrently: signal all, then wait on all at once, so
/// eight servers cost one grace period, not eight.
pub fn stop_all<O: ProcessOps>(
    ops: &O,
    targets: &[StopTarget],
    cfg: StopConfig,
) -> Vec<StopRecord> {
    let mut records: Vec<StopRecord> = targets
        .iter()
        .map(|t| StopRecord {
            pid: t.pid,
            role: t.role.clone(),
            signals: vec![],
            via: None,
            confirmed_by: None,
            after_ms: None,
            escalated: None,
            error: None,
        })
        .collect();
    let mut live: Vec<Live<O::Handle>> = Vec::new();

    for (idx, t) in targets.iter().enumerate() {
        let rec = &mut records[idx];
        // Defence in depth: the plan never hands these over.
        if crate::proof::never_signalled(t.pid, &[]) {
            rec.error = Some(format!(
                "refusing to signal pid {}: pid ≤ 1 or mm-upgrade itself",
                t.pid
            ));
            continue;
        }
        let handle = match ops.open(t.pid, t.start_ticks) {
            Ok(Some(h)) => h,
            Ok(None) => {
                rec.confirmed_by = Some(Confirmed::AlreadyGone);
                continue;
            }
            Err(e) => {
                rec.error = Some(format!("cannot open pid {}: {e}", t.pid));
                continue;
            }
        };
        rec.via = Some(ops.via(&handle));
        match ops.state(&handle) {
            None => {
                rec.confirmed_by = Some(Confirmed::AlreadyGone);
                continue;
            }
            Some(RunState::Zombie) => {
                // Dead already; waiting on it would only wait for its parent.
                rec.confirmed_by = Some(Confirmed::Zombie);
                rec.after_ms = Some(0.0);
                continue;
            }
            Some(state) => {
                let ignores_term = ops.ignores(&handle, libc::SIGTERM);
                let start = ops.now();
                let send = |sig: i32, rec: &mut StopRecord| -> bool {
                    match ops.signal(&handle, sig) {
                        Ok(true) => {
                            rec.signals.push(sig_name(sig));
                            true
                        }
                        Ok(false) => false,
                        Err(e) => {
                            rec.error = Some(format!(
                                "cannot signal pid {}: {e}. Stop the process manually and retry.",
                                t.pid
                            ));
                            false
                        }
                    }
                };
                if !send(libc::SIGTERM, rec) {
                    if rec.error.is_none() {
                        rec.confirmed_by = Some(Confirmed::AlreadyGone);
                    }
                    continue;
                }
                if ignores_term {
                    // Waiting out the grace would only add downtime.
                    rec.escalated = Some("SIGTERM is ignored (SigIgn)".into());
                    send(libc::SIGKILL, rec);
                } else if state == RunState::Stopped {
                    send(libc::SIGCONT, rec);
                }
                live.push(Live {
                    idx,
                    handle,
                    signalled_at: Some(start),
                });
            }
        }
    }

    let begin = ops.now();
    wait_phase(ops, &mut live, &mut records, begin + cfg.grace);
    for l in &live {
        let rec = &mut records[l.idx];
        if rec.signals.contains(&"SIGKILL") {
            continue;
        }
        rec.escalated = Some(format!(
            "still running after the {:.1}s grace period",
            cfg.grace.as_secs_f64()
        ));
        match ops.signal(&l.handle, libc::SIGKILL) {
            Ok(true) => rec.signals.push("SIGKILL"),
            Ok(false) => {}
            Err(e) => rec.error = Some(format!("cannot SIGKILL pid {}: {e}", rec.pid)),
        }
    }
    let kill_deadline = ops.now() + cfg.kill_wait;
    wait_phase(ops, &mut live, &mut records, kill_deadline);
    for l in &live {
        let rec = &mut records[l.idx];
        if rec.error.is_none() {
            rec.error = Some(format!(
                "pid {} did not exit within {:.1}s of SIGKILL (uninterruptible sleep?)",
                rec.pid,
                cfg.kill_wait.as_secs_f64()
            ));
        }
    }
    records
}

fn wait_phase<O: ProcessOps>(
    ops: &O,
    live: &mut Vec<Live<O::Handle>>,
    records: &mut [StopRecord],
    deadline: Duration,
) {
    loop {
        let now = ops.now();
        let mut i = 0;
        while i < live.len() {
            if ops.exited(&live[i].handle) {
                let l = live.swap_remove(i);
                let rec = &mut records[l.idx];
                rec.confirmed_by = Some(match ops.via(&l.handle) {
                    Via::Pidfd => Confirmed::Pidfd,
                    Via::Kill => Confirmed::Proc,
                });
                rec.after_ms = l
                    .signalled_at
                    .map(|s| (now.saturating_sub(s)).as_secs_f64() * 1000.0);
            } else {
                i += 1;
            }
        }
        if live.is_empty() || now >= deadline {
            return;
        }
        let handles: Vec<&O::Handle> = live.iter().map(|l| &l.handle).collect();
        ops.wait_any(&handles, deadline - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{FakeOs, FakeProc};
    use crate::sys::Clock;

    fn proc(term_ms: Option<u64>) -> FakeProc {
        FakeProc::new(1).on_term(term_ms.map(Duration::from_millis))
    }

    fn target(pid: Pid) -> StopTarget {
        StopTarget {
            pid,
            start_ticks: 1,
            role: "server".into(),
        }
    }

    const CFG: StopConfig = StopConfig {
        grace: Duration::from_secs(5),
        kill_wait: Duration::from_secs(2),
    };

    #[test]
    fn cooperative_server_gets_only_sigterm() {
        let f = FakeOs::new();
        f.add(100, proc(Some(8)));
        let r = stop_all(&f, &[target(100)], CFG);
        assert_eq!(r[0].signals, vec!["SIGTERM"]);
        assert_eq!(r[0].confirmed_by, Some(Confirmed::Pidfd));
        assert_eq!(r[0].after_ms, Some(8.0));
        assert!(r[0].stopped());
    }

    #[test]
    fn stubborn_server_is_killed_after_grace() {
        let f = FakeOs::new();
        f.add(100, proc(None));
        let r = stop_all(&f, &[target(100)], CFG);
        assert_eq!(r[0].signals, vec!["SIGTERM", "SIGKILL"]);
        assert!(r[0].escalated.as_deref().unwrap().contains("grace"));
        assert_eq!(r[0].after_ms, Some(5001.0));
    }

    #[test]
    fn ignored_sigterm_is_escalated_without_waiting() {
        let f = FakeOs::new();
        f.add(100, proc(None).ignores(libc::SIGTERM));
        let r = stop_all(&f, &[target(100)], CFG);
        assert_eq!(r[0].signals, vec!["SIGTERM", "SIGKILL"]);
        assert!(r[0].after_ms.unwrap() < 50.0, "{:?}", r[0].after_ms);
        assert!(r[0].escalated.as_deref().unwrap().contains("SigIgn"));
    }

    #[test]
    fn zombie_is_not_signalled_or_waited_on() {
        let f = FakeOs::new();
        f.add(100, proc(None).state(RunState::Zombie));
        let r = stop_all(&f, &[target(100)], CFG);
        assert!(r[0].signals.is_empty());
        assert_eq!(r[0].confirmed_by, Some(Confirmed::Zombie));
        assert_eq!(f.now(), Duration::ZERO);
    }

    #[test]
    fn stopped_process_gets_sigcont_after_sigterm() {
        let f = FakeOs::new();
        f.add(100, proc(Some(5)).state(RunState::Stopped));
        let r = stop_all(&f, &[target(100)], CFG);
        assert_eq!(r[0].signals, vec!["SIGTERM", "SIGCONT"]);
        assert!(r[0].after_ms.unwrap() < 50.0);
    }

    #[test]
    fn vanished_target_is_not_signalled() {
        let f = FakeOs::new();
        let r = stop_all(&f, &[target(100)], CFG);
        assert!(r[0].signals.is_empty());
        assert_eq!(r[0].confirmed_by, Some(Confirmed::AlreadyGone));
        assert!(f.log().is_empty());
    }

    #[test]
    fn many_servers_share_one_grace_period() {
        let f = FakeOs::new();
        for pid in 100..108 {
            f.add(pid, proc(None));
        }
        let targets: Vec<_> = (100..108).map(target).collect();
        let r = stop_all(&f, &targets, CFG);
        assert!(r.iter().all(|r| r.signals == vec!["SIGTERM", "SIGKILL"]));
        // One grace period in all, not eight.
        assert!(f.now() < Duration::from_secs(6), "{:?}", f.now());
    }

    #[test]
    fn pid_one_and_ourselves_are_never_signalled_whatever_the_plan_says() {
        let f = FakeOs::new();
        let me = std::process::id() as Pid;
        for pid in [1, me] {
            f.add(pid, proc(Some(1)));
        }
        let r = stop_all(&f, &[target(1), target(me)], CFG);
        assert!(r.iter().all(|r| r.signals.is_empty() && r.error.is_some()));
        assert!(f.log().is_empty());
    }

    #[test]
    fn survivor_of_sigkill_is_an_error() {
        let f = FakeOs::new();
        f.add(100, proc(None).survives_kill());
        let r = stop_all(&f, &[target(100)], CFG);
        assert!(r[0].error.as_deref().unwrap().contains("did not exit"));
    }
}
